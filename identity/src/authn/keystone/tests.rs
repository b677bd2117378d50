//! The authenticator against an in-process fake Keystone (axum on
//! 127.0.0.1:0): parsing, caching, HMAC keying, timeouts, fallback to the
//! cache, service token renewal.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::*;

#[derive(Default)]
struct Fake {
    service_logins: AtomicUsize,
    user_auths: AtomicUsize,
    reads: AtomicUsize,
    /// The service token Keystone currently accepts.
    valid_service_token: Mutex<String>,
    /// Every answer waits this long.
    delay: Mutex<Duration>,
    /// Service token lifetime in seconds.
    service_lifetime: Mutex<i64>,
}

type Shared = Arc<Fake>;

fn user_json(id: &str, name: &str, domain_id: &str, domain_name: &str) -> Value {
    json!({"id": id, "name": name, "domain": {"id": domain_id, "name": domain_name},
        "password_expires_at": null})
}

fn created(token: &str, body: Value) -> Response {
    (
        StatusCode::CREATED,
        [("x-subject-token", token.to_owned())],
        Json(body),
    )
        .into_response()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"error": {"code": 401, "title": "Unauthorized"}})),
    )
        .into_response()
}

async fn delay(fake: &Fake) {
    let d = *fake.delay.lock().unwrap();
    if !d.is_zero() {
        tokio::time::sleep(d).await;
    }
}

async fn issue(State(fake): State<Shared>, Json(req): Json<Value>) -> Response {
    delay(&fake).await;
    let identity = &req["auth"]["identity"];
    let scope = &req["auth"]["scope"];
    if identity["methods"] == json!(["application_credential"]) {
        fake.user_auths.fetch_add(1, Ordering::SeqCst);
        let ac = &identity["application_credential"];
        let (project, roles) = match (ac["id"].as_str(), ac["secret"].as_str()) {
            (Some("ac-team"), Some("s1")) => (
                json!({"id": "p-team", "name": "team", "domain": {"id": "default", "name": "Default"}}),
                json!([{"id": "r-reader", "name": "reader"}]),
            ),
            (Some("ac-admin"), Some("s2")) => (
                json!({"id": "p-admin", "name": "admin", "domain": {"id": "default", "name": "Default"}}),
                json!([{"id": "r-admin", "name": "admin"}]),
            ),
            (Some("ac-team" | "ac-admin"), _) => return unauthorized(),
            _ => {
                return (StatusCode::NOT_FOUND, Json(json!({"error": {"code": 404}})))
                    .into_response();
            }
        };
        if !scope.is_null() {
            return unauthorized();
        }
        return created(
            "ac-token",
            json!({"token": {"methods": ["application_credential"],
                "user": user_json("u-alice", "alice", "default", "Default"),
                "project": project, "roles": roles,
                "application_credential": {"id": ac["id"], "name": "x", "restricted": true},
                "issued_at": "2026-11-28T06:00:00.000000Z",
                "expires_at": "2026-11-28T07:00:00.000000Z"}}),
        );
    }
    let user = &identity["password"]["user"];
    let login = (
        user["name"].as_str().unwrap_or(""),
        user["domain"]["id"]
            .as_str()
            .map(|d| format!("id:{d}"))
            .or_else(|| user["domain"]["name"].as_str().map(|d| format!("name:{d}")))
            .unwrap_or_default(),
        user["password"].as_str().unwrap_or(""),
    );
    if scope == &json!({"system": {"all": true}}) {
        if (login.0, login.1.as_str(), login.2) != ("svc", "id:default", "svcpw") {
            return unauthorized();
        }
        let n = fake.service_logins.fetch_add(1, Ordering::SeqCst) + 1;
        let token = format!("svc-token-{n}");
        *fake.valid_service_token.lock().unwrap() = token.clone();
        let lifetime = *fake.service_lifetime.lock().unwrap();
        let issued = 1_795_848_761i64;
        let expires = issued + lifetime;
        let stamp = |t: i64| {
            // Seconds since 2026-11-28T00:00:00Z (1_795_824_000), same day.
            let s = t - 1_795_824_000;
            format!(
                "2026-11-28T{:02}:{:02}:{:02}.000000Z",
                s / 3600,
                s % 3600 / 60,
                s % 60
            )
        };
        return created(
            &token,
            json!({"token": {"methods": ["password"],
                "user": user_json("u-svc", "svc", "default", "Default"),
                "system": {"all": true}, "roles": [{"id": "r-reader", "name": "reader"}],
                "issued_at": stamp(issued), "expires_at": stamp(expires)}}),
        );
    }
    fake.user_auths.fetch_add(1, Ordering::SeqCst);
    if scope != &json!("unscoped") {
        return (StatusCode::BAD_REQUEST, "expected an unscoped request").into_response();
    }
    let user = match (login.0, login.1.as_str(), login.2) {
        ("alice", "id:default", "pw") => user_json("u-alice", "alice", "default", "Default"),
        ("bob", "name:Corp", "pw") => user_json("u-bob", "bob", "d-corp", "Corp"),
        ("carol", "id:default", "pw") => user_json("u-carol", "carol", "default", "Default"),
        _ => return unauthorized(),
    };
    created(
        "user-token",
        json!({"token": {"methods": ["password"], "user": user,
            "issued_at": "2026-11-28T06:00:00.000000Z",
            "expires_at": "2026-11-28T07:00:00.000000Z"}}),
    )
}

/// Checks (and counts) a read with the service token.
fn authorized(fake: &Fake, headers: &HeaderMap) -> bool {
    fake.reads.fetch_add(1, Ordering::SeqCst);
    let valid = fake.valid_service_token.lock().unwrap().clone();
    headers
        .get("x-auth-token")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| !valid.is_empty() && t == valid)
}

fn assignment(project: (&str, &str, &str), role: &str) -> Value {
    json!({"scope": {"project": {"id": project.0, "name": project.1,
            "domain": {"id": project.2, "name": "D"}}},
        "user": {"id": "u", "name": "n", "domain": {"id": "default", "name": "Default"}},
        "role": {"id": format!("r-{role}"), "name": role}})
}

async fn role_assignments(
    State(fake): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    delay(&fake).await;
    if !authorized(&fake, &headers) {
        return unauthorized();
    }
    assert!(q.contains_key("effective") && q.contains_key("include_names"));
    let list = match q.get("user.id").map(String::as_str) {
        Some("u-alice") => vec![
            assignment(("p-team", "team", "default"), "member"),
            assignment(("p-admin", "admin", "default"), "admin"),
            json!({"scope": {"system": {"all": true}}, "role": {"id": "r-reader", "name": "reader"}}),
            json!({"scope": {"domain": {"id": "default"}}, "role": {"id": "r-admin", "name": "admin"}}),
        ],
        Some("u-bob") => vec![
            assignment(("p-team", "team", "default"), "reader"),
            // "admin" in another domain is no admin project.
            assignment(("p-admin2", "admin", "d-corp"), "admin"),
            assignment(("p-ops", "ops", "d-corp"), "manager"),
        ],
        _ => vec![],
    };
    Json(json!({"role_assignments": list})).into_response()
}

async fn projects(State(fake): State<Shared>, headers: HeaderMap) -> Response {
    delay(&fake).await;
    if !authorized(&fake, &headers) {
        return unauthorized();
    }
    Json(json!({"projects": [
        {"id": "p-team2", "name": "team", "domain_id": "d-corp", "tags": [], "is_domain": false},
        {"id": "p-team", "name": "team", "domain_id": "default", "tags": ["registry-public"], "is_domain": false},
        {"id": "p-admin", "name": "admin", "domain_id": "default", "tags": [], "is_domain": false},
    ], "links": {}}))
    .into_response()
}

async fn user(State(fake): State<Shared>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if !authorized(&fake, &headers) {
        return unauthorized();
    }
    match id.as_str() {
        "u-alice" => Json(json!({"user": {"id": "u-alice", "name": "alice",
            "domain_id": "default", "enabled": true}}))
        .into_response(),
        "u-dis" => Json(json!({"user": {"id": "u-dis", "name": "dis",
            "domain_id": "default", "enabled": false}}))
        .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn domain(
    State(fake): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if !authorized(&fake, &headers) {
        return unauthorized();
    }
    match id.as_str() {
        "default" => Json(json!({"domain": {"id": "default", "name": "Default", "enabled": true}}))
            .into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

/// Serves a fake Keystone; returns its state and base URL.
async fn serve() -> (Shared, String) {
    let fake: Shared = Arc::new(Fake::default());
    *fake.service_lifetime.lock().unwrap() = 3600;
    let app = Router::new()
        .route("/v3/auth/tokens", post(issue))
        .route("/v3/role_assignments", get(role_assignments))
        .route("/v3/projects", get(projects))
        .route("/v3/users/{id}", get(user))
        .route("/v3/domains/{id}", get(domain))
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (fake, format!("http://{addr}"))
}

fn config(url: &str) -> KeystoneConfig {
    KeystoneConfig {
        url: url.to_owned(),
        service_username: "svc".into(),
        service_password: "svcpw".into(),
        timeout: Duration::from_millis(500),
        connect_timeout: Duration::from_millis(300),
        ..KeystoneConfig::default()
    }
}

fn pw(user: &str, password: &str) -> Credentials {
    Credentials::from_basic(user, password)
}

fn roles(identity: &Identity, project: &str) -> Vec<String> {
    identity
        .projects
        .iter()
        .find(|p| p.name == project)
        .map(|p| p.roles.iter().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn password_login_reads_projects_and_roles() {
    let (fake, url) = serve().await;
    let ks = KeystoneAuthenticator::new(config(&url)).unwrap();
    let alice = ks.authenticate(&pw("alice", "pw")).await.unwrap();
    assert_eq!(
        (
            alice.user_id.as_str(),
            alice.username.as_str(),
            alice.domain.as_str()
        ),
        ("u-alice", "alice", "Default")
    );
    assert_eq!(alice.method, Method::Password);
    let names: Vec<&str> = alice.projects.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["admin", "team"], "project scopes only, sorted");
    assert_eq!(roles(&alice, "team"), ["member", "reader"]);
    assert_eq!(roles(&alice, "admin"), ["admin", "member", "reader"]);
    assert!(alice.admin, "admin on the admin project");

    // name@Domain: the domain by name; "admin" of another domain is no
    // admin project; manager implies member and reader.
    let bob = ks.authenticate(&pw("bob@Corp", "pw")).await.unwrap();
    assert_eq!(bob.domain, "Corp");
    assert!(!bob.admin);
    assert_eq!(roles(&bob, "team"), ["reader"]);
    assert_eq!(roles(&bob, "ops"), ["manager", "member", "reader"]);
    // The default domain's id after @ is the default domain.
    assert_eq!(
        ks.authenticate(&pw("alice@default", "pw"))
            .await
            .unwrap()
            .user_id,
        "u-alice"
    );
    // No assignments: no projects.
    let carol = ks.authenticate(&pw("carol", "pw")).await.unwrap();
    assert!(carol.projects.is_empty() && !carol.admin);
    assert_eq!(
        fake.service_logins.load(Ordering::SeqCst),
        1,
        "one service token for all"
    );
}

#[tokio::test]
async fn wrong_or_unknown_is_invalid_and_not_cached() {
    let (fake, url) = serve().await;
    let ks = KeystoneAuthenticator::new(config(&url)).unwrap();
    for creds in [
        pw("alice", "nope"),
        pw("nobody", "pw"),
        pw("alice@Nowhere", "pw"),
    ] {
        assert!(matches!(
            ks.authenticate(&creds).await,
            Err(AuthnError::Invalid)
        ));
    }
    assert_eq!(fake.user_auths.load(Ordering::SeqCst), 3);
    assert!(matches!(
        ks.authenticate(&pw("alice", "nope")).await,
        Err(AuthnError::Invalid)
    ));
    assert_eq!(
        fake.user_auths.load(Ordering::SeqCst),
        4,
        "failures are not cached"
    );
    // An empty password never reaches Keystone.
    assert!(matches!(
        ks.authenticate(&pw("alice", "")).await,
        Err(AuthnError::Invalid)
    ));
    assert_eq!(fake.user_auths.load(Ordering::SeqCst), 4);
    assert_eq!(ks.cache.len(), 0);
}

#[tokio::test]
async fn second_check_comes_from_the_cache() {
    let (fake, url) = serve().await;
    let ks = KeystoneAuthenticator::new(config(&url)).unwrap();
    let first = ks.authenticate(&pw("alice", "pw")).await.unwrap();
    let (auths, reads) = (
        fake.user_auths.load(Ordering::SeqCst),
        fake.reads.load(Ordering::SeqCst),
    );
    let second = ks.authenticate(&pw("alice", "pw")).await.unwrap();
    assert_eq!(first, second);
    assert_eq!(fake.user_auths.load(Ordering::SeqCst), auths);
    assert_eq!(fake.reads.load(Ordering::SeqCst), reads);
    // Another password for the same account is no cache hit.
    assert!(matches!(
        ks.authenticate(&pw("alice", "pw2")).await,
        Err(AuthnError::Invalid)
    ));
    assert_eq!(fake.user_auths.load(Ordering::SeqCst), auths + 1);
    // The same holds for application credentials.
    let ac = Credentials::from_basic("applicationcredential-ac-team", "s1");
    ks.authenticate(&ac).await.unwrap();
    ks.authenticate(&ac).await.unwrap();
    assert_eq!(fake.user_auths.load(Ordering::SeqCst), auths + 2);
    let wrong = Credentials::from_basic("applicationcredential-ac-team", "s2");
    assert!(matches!(
        ks.authenticate(&wrong).await,
        Err(AuthnError::Invalid)
    ));
}

#[tokio::test]
async fn cache_entries_end_after_the_ttl() {
    let (fake, url) = serve().await;
    let ks = KeystoneAuthenticator::new(KeystoneConfig {
        cache_ttl: Duration::from_millis(200),
        ..config(&url)
    })
    .unwrap();
    ks.authenticate(&pw("alice", "pw")).await.unwrap();
    ks.authenticate(&pw("alice", "pw")).await.unwrap();
    assert_eq!(fake.user_auths.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    ks.authenticate(&pw("alice", "pw")).await.unwrap();
    assert_eq!(fake.user_auths.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn cache_keys_are_hmacs_not_secrets() {
    let (_fake, url) = serve().await;
    let a = KeystoneAuthenticator::new(config(&url)).unwrap();
    let b = KeystoneAuthenticator::new(config(&url)).unwrap();
    a.authenticate(&pw("alice", "pw")).await.unwrap();
    let account = "5:alice:id:default";
    let k = a.cache.key("password", account, "pw");
    assert!(a.cache.get(&k).is_some(), "stored under the HMAC");
    assert_ne!(
        k,
        b.cache.key("password", account, "pw"),
        "per-process random key"
    );
    assert!(!k.windows(2).any(|w| w == b"pw"), "no plaintext in the key");
}

#[tokio::test]
async fn application_credential_is_its_project_and_roles_only() {
    let (_fake, url) = serve().await;
    let ks = KeystoneAuthenticator::new(config(&url)).unwrap();
    let id = ks
        .authenticate(&Credentials::from_basic(
            "applicationcredential-ac-team",
            "s1",
        ))
        .await
        .unwrap();
    assert_eq!(
        id.method,
        Method::ApplicationCredential {
            id: "ac-team".into()
        }
    );
    assert_eq!(
        id.projects,
        vec![ProjectRoles {
            id: "p-team".into(),
            name: "team".into(),
            roles: ["reader".to_owned()].into()
        }]
    );
    assert!(!id.admin, "alice is an admin, her reader credential is not");
    let admin = ks
        .authenticate(&Credentials::from_basic(
            "applicationcredential-ac-admin",
            "s2",
        ))
        .await
        .unwrap();
    assert!(admin.admin);
    assert_eq!(roles(&admin, "admin"), ["admin", "member", "reader"]);
    // Unknown id: Keystone's 404 is an authentication failure.
    assert!(matches!(
        ks.authenticate(&Credentials::from_basic("applicationcredential-nope", "x"))
            .await,
        Err(AuthnError::Invalid)
    ));
}

#[tokio::test]
async fn admin_users_from_configuration() {
    let (_fake, url) = serve().await;
    let ks = KeystoneAuthenticator::new(KeystoneConfig {
        admin_users: vec!["bob@Corp".into(), "u-carol".into()],
        ..config(&url)
    })
    .unwrap();
    assert!(ks.authenticate(&pw("bob@Corp", "pw")).await.unwrap().admin);
    assert!(ks.authenticate(&pw("carol", "pw")).await.unwrap().admin);
    // Not through an application credential (alice is no admin user, but the
    // rule is the same: only the credential's roles count).
    let ks = KeystoneAuthenticator::new(KeystoneConfig {
        admin_users: vec!["alice".into()],
        admin_roles: vec!["nothing".into()],
        ..config(&url)
    })
    .unwrap();
    assert!(ks.authenticate(&pw("alice", "pw")).await.unwrap().admin);
    let ac = Credentials::from_basic("applicationcredential-ac-admin", "s2");
    assert!(!ks.authenticate(&ac).await.unwrap().admin);
}

#[tokio::test]
async fn slow_keystone_is_unavailable_within_the_timeout() {
    let (fake, url) = serve().await;
    let ks = KeystoneAuthenticator::new(config(&url)).unwrap();
    ks.authenticate(&pw("alice", "pw")).await.unwrap();
    *fake.delay.lock().unwrap() = Duration::from_secs(5);
    let started = Instant::now();
    let r = ks.authenticate(&pw("bob@Corp", "pw")).await;
    let took = started.elapsed();
    assert!(matches!(r, Err(AuthnError::Unavailable(_))), "{r:?}");
    assert!(took < Duration::from_millis(900), "took {took:?}");
    // The cached identity still works.
    let started = Instant::now();
    assert_eq!(
        ks.authenticate(&pw("alice", "pw")).await.unwrap().user_id,
        "u-alice"
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    // Unavailability is not cached either.
    *fake.delay.lock().unwrap() = Duration::ZERO;
    assert!(ks.authenticate(&pw("bob@Corp", "pw")).await.is_ok());
}

#[tokio::test]
async fn unreachable_keystone_is_unavailable() {
    // A port nothing listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let ks = KeystoneAuthenticator::new(config(&url)).unwrap();
    let started = Instant::now();
    let r = ks.authenticate(&pw("alice", "pw")).await;
    assert!(matches!(r, Err(AuthnError::Unavailable(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_millis(900));
    assert!(matches!(
        ks.projects().await,
        Err(AuthnError::Unavailable(_))
    ));
}

#[tokio::test]
async fn service_token_is_reused_and_renewed_on_401() {
    let (fake, url) = serve().await;
    let ks = KeystoneAuthenticator::new(config(&url)).unwrap();
    ks.authenticate(&pw("alice", "pw")).await.unwrap();
    ks.authenticate(&pw("bob@Corp", "pw")).await.unwrap();
    ks.projects().await.unwrap();
    assert_eq!(fake.service_logins.load(Ordering::SeqCst), 1);
    // Keystone forgets the token (revoked, keys rotated): one 401, a new
    // token, and the read succeeds.
    *fake.valid_service_token.lock().unwrap() = "something else".into();
    ks.authenticate(&pw("carol", "pw")).await.unwrap();
    assert_eq!(fake.service_logins.load(Ordering::SeqCst), 2);
    ks.reauthorize("u-alice").await.unwrap();
    assert_eq!(fake.service_logins.load(Ordering::SeqCst), 2);
}

/// Role assignments are reused for `roles_ttl` by the next password logins
/// of the same user; the password itself is checked every time.
#[tokio::test]
async fn role_assignments_are_reused_for_roles_ttl() {
    let (fake, url) = serve().await;
    for (roles_ttl, reads) in [(Duration::from_secs(30), 1), (Duration::ZERO, 3)] {
        let before = (
            fake.user_auths.load(Ordering::SeqCst),
            fake.reads.load(Ordering::SeqCst),
        );
        let ks = KeystoneAuthenticator::new(KeystoneConfig {
            cache_ttl: Duration::ZERO,
            roles_ttl,
            ..config(&url)
        })
        .unwrap();
        let first = ks.authenticate(&pw("alice", "pw")).await.unwrap();
        for _ in 0..2 {
            assert_eq!(ks.authenticate(&pw("alice", "pw")).await.unwrap(), first);
        }
        assert!(matches!(
            ks.authenticate(&pw("alice", "wrong")).await,
            Err(AuthnError::Invalid)
        ));
        assert_eq!(
            fake.user_auths.load(Ordering::SeqCst) - before.0,
            4,
            "password checked each time"
        );
        assert_eq!(
            fake.reads.load(Ordering::SeqCst) - before.1,
            reads,
            "roles_ttl {roles_ttl:?}"
        );
    }
}

#[tokio::test]
async fn service_token_renewed_before_it_expires() {
    let (fake, url) = serve().await;
    // A 2 s lifetime: renewed halfway, after 1 s.
    *fake.service_lifetime.lock().unwrap() = 2;
    let ks = KeystoneAuthenticator::new(KeystoneConfig {
        cache_ttl: Duration::ZERO,
        roles_ttl: Duration::ZERO,
        ..config(&url)
    })
    .unwrap();
    ks.authenticate(&pw("alice", "pw")).await.unwrap();
    ks.authenticate(&pw("alice", "pw")).await.unwrap();
    assert_eq!(fake.service_logins.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ks.authenticate(&pw("alice", "pw")).await.unwrap();
    assert_eq!(fake.service_logins.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn refused_service_account_is_unavailable_not_invalid() {
    let (_fake, url) = serve().await;
    let ks = KeystoneAuthenticator::new(KeystoneConfig {
        service_password: "wrong".into(),
        ..config(&url)
    })
    .unwrap();
    assert!(matches!(
        ks.authenticate(&pw("alice", "pw")).await,
        Err(AuthnError::Unavailable(_))
    ));
}

#[tokio::test]
async fn project_directory() {
    let (fake, url) = serve().await;
    let ks = KeystoneAuthenticator::new(KeystoneConfig {
        projects_ttl: Duration::from_millis(200),
        projects_max_stale: Duration::from_millis(300),
        ..config(&url)
    })
    .unwrap();
    let dir = ks.projects().await.unwrap();
    let keys: Vec<&str> = dir.keys().map(String::as_str).collect();
    assert_eq!(keys, ["admin", "team", "team@d-corp"]);
    assert_eq!(
        dir["team"].id, "p-team",
        "the default domain's gets the name"
    );
    assert_eq!(dir["team"].tags, ["registry-public"]);
    assert_eq!(dir["team@d-corp"].name, "team");
    let reads = fake.reads.load(Ordering::SeqCst);
    ks.projects().await.unwrap();
    assert_eq!(fake.reads.load(Ordering::SeqCst), reads, "cached");
    tokio::time::sleep(Duration::from_millis(250)).await;
    ks.projects().await.unwrap();
    assert_eq!(fake.reads.load(Ordering::SeqCst), reads + 1, "refreshed");
    // Keystone slow: the stale directory serves for a while, then fails.
    *fake.delay.lock().unwrap() = Duration::from_secs(5);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(ks.projects().await.unwrap().len(), 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    assert!(matches!(
        ks.projects().await,
        Err(AuthnError::Unavailable(_))
    ));
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "no second wait for Keystone right after a failure"
    );
}

#[tokio::test]
async fn reauthorize_users() {
    let (_fake, url) = serve().await;
    let ks = KeystoneAuthenticator::new(config(&url)).unwrap();
    let alice = ks.reauthorize("u-alice").await.unwrap();
    assert_eq!(alice.method, Method::RefreshToken);
    assert_eq!(alice.domain, "Default");
    assert!(alice.admin);
    assert_eq!(roles(&alice, "team"), ["member", "reader"]);
    for gone in ["u-dis", "u-nobody", ""] {
        assert!(
            matches!(ks.reauthorize(gone).await, Err(AuthnError::Invalid)),
            "{gone}"
        );
    }
}

#[test]
fn implied_roles() {
    let r = |roles: &[&str]| -> Vec<String> {
        with_implied(roles.iter().copied()).into_iter().collect()
    };
    assert_eq!(r(&["admin"]), ["admin", "member", "reader"]);
    assert_eq!(r(&["manager"]), ["manager", "member", "reader"]);
    assert_eq!(r(&["member"]), ["member", "reader"]);
    assert_eq!(r(&["reader"]), ["reader"]);
    assert_eq!(r(&["Member"]), ["Member", "reader"]);
    assert_eq!(r(&["service", "_member_"]), ["_member_", "service"]);
}

#[test]
fn configuration() {
    let c: KeystoneConfig = serde_json::from_value(json!({
        "url": "https://ks.example:5000/v3/",
        "service_username": "svc", "service_password": "hunter2",
        "timeout_secs": 1.5, "cache_ttl_secs": 10
    }))
    .unwrap();
    assert_eq!(c.timeout, Duration::from_millis(1500));
    assert_eq!(c.cache_ttl, Duration::from_secs(10));
    assert_eq!(c.connect_timeout, Duration::from_secs(2));
    assert_eq!(c.projects_ttl, Duration::from_secs(30));
    assert_eq!(c.admin_project, "admin");
    assert_eq!(c.user_domain_id, "default");
    assert!(!format!("{c:?}").contains("hunter2"));
    let ks = KeystoneAuthenticator::new(c).unwrap();
    assert!(!format!("{ks:?}").contains("hunter2"));
    assert!(
        serde_json::from_value::<KeystoneConfig>(json!({"bogus": 1})).is_err(),
        "unknown fields refused"
    );
    let err = KeystoneAuthenticator::new(KeystoneConfig {
        url: "ftp://x".into(),
        ..KeystoneConfig::default()
    })
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("url") && err.contains("service_username"),
        "{err}"
    );
}

/// A server that answers the first request on each connection (keeping it
/// alive) and closes the connection, unanswered, on the second: what a
/// server closing an idle connection just as a request reuses it looks
/// like. Returns the base URL and the number of connections accepted.
async fn closing_server() -> (String, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Read the first request (headers and Content-Length body).
                let request = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let text = String::from_utf8_lossy(&buf).to_string();
                    if let Some(end) = text.find("\r\n\r\n") {
                        let len = text[..end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if buf.len() >= end + 4 + len {
                            break text;
                        }
                    }
                };
                let (status, extra, body) = if request.starts_with("POST") {
                    (
                        "201 Created",
                        "X-Subject-Token: svc-token\r\n",
                        json!({"token": {"user": user_json("u-svc", "svc", "default", "Default"),
                            "issued_at": "2026-11-28T06:00:00Z",
                            "expires_at": "2026-11-28T07:00:00Z"}}),
                    )
                } else {
                    (
                        "200 OK",
                        "",
                        json!({"projects": [{"id": "p1", "name": "one", "domain_id": "default", "tags": ["t"]}]}),
                    )
                };
                let body = body.to_string();
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
                // Wait for the next request on this connection, then drop it
                // unanswered.
                let _ = sock.read(&mut chunk).await;
            });
        }
    });
    (url, connections)
}

#[tokio::test]
async fn a_connection_closed_under_a_request_is_retried_once() {
    let (url, connections) = closing_server().await;
    let ks = KeystoneAuthenticator::new(config(&url)).unwrap();
    // The service token (first request on connection 1), then the project
    // list: second request on connection 1, dropped, and retried on a new
    // connection.
    let dir = ks.projects().await.unwrap();
    assert_eq!(dir["one"].tags, ["t"]);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
}
