//! The Keystone authenticator against a real Keystone (the fixture in
//! tests/common/keystone.rs): one shared instance for the binary, names made
//! unique per test, and an instance of its own for the test that stops it.

mod common;

use std::time::{Duration, Instant};

use berth_identity::authn::keystone::{KeystoneAuthenticator, KeystoneConfig};
use berth_identity::authn::{Authenticator, AuthnError, Credentials, Identity, Method};
use common::keystone::{Admin, DEFAULT_DOMAIN_ID, Keystone, UserLogin, unique};

/// Keystone revokes to the second: a change takes effect for tokens issued
/// from the next second on.
const REVOCATION_SETTLE: Duration = Duration::from_millis(1100);

async fn service_account(admin: &Admin) -> UserLogin {
    admin.create_service_account().await
}

fn authenticator(ks: &Keystone, svc: &UserLogin, cache_ttl: Duration) -> KeystoneAuthenticator {
    KeystoneAuthenticator::new(KeystoneConfig {
        url: ks.url().to_owned(),
        service_username: svc.name.clone(),
        service_password: svc.password.clone(),
        cache_ttl,
        ..KeystoneConfig::default()
    })
    .expect("authenticator")
}

async fn login(
    a: &KeystoneAuthenticator,
    user: &str,
    password: &str,
) -> Result<Identity, AuthnError> {
    a.authenticate(&Credentials::from_basic(user, password))
        .await
}

fn roles(identity: &Identity, project_id: &str) -> Vec<String> {
    identity
        .projects
        .iter()
        .find(|p| p.id == project_id)
        .map(|p| p.roles.iter().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn password_logins_in_default_and_named_domains() {
    let ks = Keystone::shared();
    let admin = ks.admin();
    let svc = service_account(&admin).await;
    let a = authenticator(ks, &svc, Duration::ZERO);

    let alice = admin
        .create_user(&unique("alice"), DEFAULT_DOMAIN_ID, "alice-pw")
        .await;
    let id = login(&a, &alice.name, "alice-pw").await.unwrap();
    assert_eq!(
        (
            id.user_id.as_str(),
            id.username.as_str(),
            id.domain.as_str()
        ),
        (alice.id.as_str(), alice.name.as_str(), "Default")
    );
    assert_eq!(id.method, Method::Password);
    assert!(id.projects.is_empty() && !id.admin);
    // The default domain by its id after @ too.
    let id = login(&a, &format!("{}@default", alice.name), "alice-pw")
        .await
        .unwrap();
    assert_eq!(id.user_id, alice.id);

    let domain_name = unique("corp");
    let domain_id = admin.create_domain(&domain_name).await;
    // The same user name in another domain is another user.
    let bob = admin.create_user(&alice.name, &domain_id, "bob-pw").await;
    let id = login(&a, &format!("{}@{domain_name}", bob.name), "bob-pw")
        .await
        .unwrap();
    assert_eq!(
        (id.user_id.as_str(), id.domain.as_str()),
        (bob.id.as_str(), domain_name.as_str())
    );
    // Without the domain, the name means the default domain's user.
    assert!(matches!(
        login(&a, &bob.name, "bob-pw").await,
        Err(AuthnError::Invalid)
    ));

    for (user, password) in [
        (alice.name.as_str(), "wrong"),
        (unique("nobody").as_str(), "alice-pw"),
        (
            &format!("{}@{}", alice.name, unique("nodomain")),
            "alice-pw",
        ),
    ] {
        assert!(
            matches!(login(&a, user, password).await, Err(AuthnError::Invalid)),
            "{user}"
        );
    }
}

#[tokio::test]
async fn project_roles_include_implied_roles_and_admin() {
    let ks = Keystone::shared();
    let admin = ks.admin();
    let svc = service_account(&admin).await;
    let a = authenticator(ks, &svc, Duration::ZERO);

    let user = admin
        .create_user(&unique("carol"), DEFAULT_DOMAIN_ID, "pw")
        .await;
    let mut projects = Vec::new();
    for role in ["member", "reader", "admin", "manager"] {
        let p = admin
            .create_project(&unique(role), DEFAULT_DOMAIN_ID, &[])
            .await;
        admin.assign_project_role(&user.id, &p, role).await;
        projects.push(p);
    }
    let id = login(&a, &user.name, "pw").await.unwrap();
    assert_eq!(id.projects.len(), 4);
    assert_eq!(roles(&id, &projects[0]), ["member", "reader"]);
    assert_eq!(roles(&id, &projects[1]), ["reader"]);
    assert_eq!(
        roles(&id, &projects[2]),
        ["admin", "manager", "member", "reader"]
    );
    assert_eq!(roles(&id, &projects[3]), ["manager", "member", "reader"]);
    assert!(!id.admin, "admin on some project is no registry admin");

    // admin on the admin project is.
    let (name, password) = ks.admin_credentials();
    let boss = login(&a, name, password).await.unwrap();
    assert!(boss.admin);
    assert!(
        boss.projects
            .iter()
            .any(|p| p.name == "admin" && p.roles.contains("admin") && p.roles.contains("reader"))
    );

    // Reauthorizing (refresh tokens) gives the same projects.
    let again = a.reauthorize(&user.id).await.unwrap();
    assert_eq!(again.projects, id.projects);
    assert_eq!(again.method, Method::RefreshToken);
}

#[tokio::test]
async fn disabled_user_and_changed_password_stop_working() {
    let ks = Keystone::shared();
    let admin = ks.admin();
    let svc = service_account(&admin).await;
    let cached = authenticator(ks, &svc, Duration::from_secs(1));
    let uncached = authenticator(ks, &svc, Duration::ZERO);

    let dave = admin
        .create_user(&unique("dave"), DEFAULT_DOMAIN_ID, "pw1")
        .await;
    login(&cached, &dave.name, "pw1").await.unwrap();
    admin.change_password(&dave.id, "pw2").await;
    tokio::time::sleep(REVOCATION_SETTLE).await;
    assert!(matches!(
        login(&uncached, &dave.name, "pw1").await,
        Err(AuthnError::Invalid)
    ));
    login(&uncached, &dave.name, "pw2").await.unwrap();
    // The cache entry (1 s) has ended by now.
    assert!(matches!(
        login(&cached, &dave.name, "pw1").await,
        Err(AuthnError::Invalid)
    ));

    let erin = admin
        .create_user(&unique("erin"), DEFAULT_DOMAIN_ID, "pw")
        .await;
    login(&cached, &erin.name, "pw").await.unwrap();
    admin.disable_user(&erin.id).await;
    // Still cached for up to the TTL...
    login(&cached, &erin.name, "pw").await.unwrap();
    tokio::time::sleep(REVOCATION_SETTLE).await;
    // ...and refused once the entry has ended.
    assert!(matches!(
        login(&cached, &erin.name, "pw").await,
        Err(AuthnError::Invalid)
    ));
    assert!(matches!(
        uncached.reauthorize(&erin.id).await,
        Err(AuthnError::Invalid)
    ));
}

#[tokio::test]
async fn application_credentials_are_their_project_and_roles_only() {
    let ks = Keystone::shared();
    let admin = ks.admin();
    let svc = service_account(&admin).await;
    let a = authenticator(ks, &svc, Duration::from_secs(1));

    let frank = admin
        .create_user(&unique("frank"), DEFAULT_DOMAIN_ID, "pw")
        .await;
    let team = admin
        .create_project(&unique("team"), DEFAULT_DOMAIN_ID, &[])
        .await;
    let other = admin
        .create_project(&unique("other"), DEFAULT_DOMAIN_ID, &[])
        .await;
    admin.assign_project_role(&frank.id, &team, "member").await;
    admin.assign_project_role(&frank.id, &other, "admin").await;
    let ac = admin
        .create_application_credential(&frank, &team, &["reader"], Some("2099-01-01T00:00:00"))
        .await;
    let creds = Credentials::from_basic(&format!("applicationcredential-{}", ac.id), &ac.secret);
    let id = a.authenticate(&creds).await.unwrap();
    assert_eq!(id.user_id, frank.id);
    assert_eq!(
        id.method,
        Method::ApplicationCredential { id: ac.id.clone() }
    );
    assert_eq!(id.projects.len(), 1, "{:?}", id.projects);
    assert_eq!(id.projects[0].id, team);
    assert_eq!(roles(&id, &team), ["reader"]);
    assert!(!id.admin);

    // Wrong secret, unknown id.
    let wrong = Credentials::from_basic(&format!("applicationcredential-{}", ac.id), "nope");
    assert!(matches!(
        a.authenticate(&wrong).await,
        Err(AuthnError::Invalid)
    ));
    let unknown = Credentials::from_basic("applicationcredential-0123456789abcdef", "x");
    assert!(matches!(
        a.authenticate(&unknown).await,
        Err(AuthnError::Invalid)
    ));

    // A member credential gets member and reader.
    let ac2 = admin
        .create_application_credential(&frank, &team, &["member"], None)
        .await;
    let id2 = a
        .authenticate(&Credentials::from_basic(
            &format!("applicationcredential-{}", ac2.id),
            &ac2.secret,
        ))
        .await
        .unwrap();
    assert_eq!(roles(&id2, &team), ["member", "reader"]);

    // Deleted: refused once the cache entry (1 s) has ended.
    admin.delete_application_credential(&frank, &ac.id).await;
    tokio::time::sleep(REVOCATION_SETTLE).await;
    assert!(matches!(
        a.authenticate(&creds).await,
        Err(AuthnError::Invalid)
    ));
}

#[tokio::test]
async fn project_directory_lists_projects_with_tags() {
    let ks = Keystone::shared();
    let admin = ks.admin();
    let svc = service_account(&admin).await;
    let name = unique("shared");
    let id = admin
        .create_project(&name, DEFAULT_DOMAIN_ID, &["registry-public"])
        .await;
    admin.add_project_tag(&id, "registry-pull=ops").await;
    admin.add_project_tag(&id, "temporary").await;
    admin.remove_project_tag(&id, "temporary").await;

    let a = authenticator(ks, &svc, Duration::ZERO);
    let dir = a.projects().await.unwrap();
    let p = &dir[&name];
    assert_eq!(p.id, id);
    let mut tags = p.tags.clone();
    tags.sort();
    assert_eq!(tags, ["registry-public", "registry-pull=ops"]);
    assert_eq!(dir["admin"].name, "admin");
}

#[tokio::test]
async fn keystone_stopped_is_unavailable_but_cached_identities_work() {
    let ks = Keystone::start();
    let admin = ks.admin();
    let svc = service_account(&admin).await;
    let alice = admin
        .create_user(&unique("alice"), DEFAULT_DOMAIN_ID, "pw")
        .await;
    let bob = admin
        .create_user(&unique("bob"), DEFAULT_DOMAIN_ID, "pw")
        .await;
    let a = KeystoneAuthenticator::new(KeystoneConfig {
        url: ks.url().to_owned(),
        service_username: svc.name.clone(),
        service_password: svc.password.clone(),
        timeout: Duration::from_secs(2),
        cache_ttl: Duration::from_secs(60),
        ..KeystoneConfig::default()
    })
    .unwrap();
    let before = login(&a, &alice.name, "pw").await.unwrap();
    a.projects().await.unwrap();

    ks.stop();
    let started = Instant::now();
    let r = login(&a, &bob.name, "pw").await;
    assert!(matches!(r, Err(AuthnError::Unavailable(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(2500));
    assert_eq!(login(&a, &alice.name, "pw").await.unwrap(), before);
    // A wrong password for a cached account is not served from the cache.
    assert!(matches!(
        login(&a, &alice.name, "other").await,
        Err(AuthnError::Unavailable(_))
    ));
    // The directory read a moment ago still serves.
    assert!(a.projects().await.is_ok());
}
