//! The token service end to end: `berth identity serve` (the real binary)
//! against a real Keystone, exercised through `/token` as clients use it.
//! Every namespace rule is checked by the access a token carries.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::berth::Berth;
use common::keystone::{Admin, DEFAULT_DOMAIN_ID, Keystone, UserLogin, unique};
use serde_json::Value;

/// Keystone revokes to the second.
const REVOCATION_SETTLE: Duration = Duration::from_millis(1100);

struct Setup {
    ks: Keystone,
    admin: Admin,
    berth: Berth,
    _dir: tempfile::TempDir,
    http: reqwest::Client,
}

async fn setup(extra_env: &[(&str, &str)]) -> Setup {
    let ks = Keystone::start();
    let admin = ks.admin();
    let svc = admin.create_service_account().await;
    let dir = tempfile::tempdir().unwrap();
    let mut envs = ks.berth_env(&svc).to_vec();
    envs.extend_from_slice(&[
        ("BERTH_KEYSTONE_CACHE_TTL", "1"),
        ("BERTH_KEYSTONE_PROJECTS_TTL", "1"),
        ("BERTH_TOKEN_SERVICE", "berth-test"),
        ("BERTH_TOKEN_ISSUER", "berth-test-issuer"),
    ]);
    envs.extend_from_slice(extra_env);
    let berth = Berth::start_identity(&dir.path().join("data"), &envs);
    Setup {
        ks,
        admin,
        berth,
        _dir: dir,
        http: reqwest::Client::new(),
    }
}

/// The claims of a JWT (its signature is checked by the endpoint tests and
/// by Docker Distribution in identity/tests).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).expect("jwt payload");
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&raw).expect("claims json")
}

/// Actions granted on `kind:name`, sorted.
fn granted(claims: &Value, name: &str) -> Vec<String> {
    let mut out: Vec<String> = claims["access"]
        .as_array()
        .expect("access")
        .iter()
        .filter(|a| a["name"] == name)
        .flat_map(|a| a["actions"].as_array().cloned().unwrap_or_default())
        .map(|a| a.as_str().unwrap().to_owned())
        .collect();
    out.sort();
    out
}

impl Setup {
    async fn token_get(&self, user: Option<(&str, &str)>, scopes: &[&str]) -> reqwest::Response {
        let mut q: Vec<(&str, &str)> = vec![("service", "berth-test")];
        q.extend(scopes.iter().map(|s| ("scope", *s)));
        let mut req = self
            .http
            .get(format!("{}/token", self.berth.url()))
            .query(&q);
        if let Some((u, p)) = user {
            req = req.basic_auth(u, Some(p));
        }
        req.send().await.unwrap()
    }

    /// `POST /token` with a form (the OAuth2 form of the protocol).
    async fn token_post(&self, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}/token", self.berth.url()))
            .form(form)
            .send()
            .await
            .unwrap()
    }

    /// Claims of a token `user` gets for `scopes` (asserting 200).
    async fn grant(&self, user: &UserLogin, scopes: &[&str]) -> Value {
        let resp = self
            .token_get(Some((&user.name, &user.password)), scopes)
            .await;
        assert_eq!(resp.status(), 200, "token for {}", user.name);
        let body: Value = resp.json().await.unwrap();
        claims(body["token"].as_str().unwrap())
    }

    async fn user(&self) -> UserLogin {
        self.admin.new_user("u").await
    }
}

#[tokio::test]
async fn namespaces_and_roles_through_the_token_endpoint() {
    let s = setup(&[]).await;
    let (alice, bob) = (s.user().await, s.user().await);

    // The seed: users may only modify what is theirs.
    let own = format!("repository:{}/app:pull,push,delete", alice.name);
    let c = s.grant(&alice, &[&own]).await;
    assert_eq!(c["iss"], "berth-test-issuer");
    assert_eq!(c["aud"], "berth-test");
    assert_eq!(c["sub"], alice.name.as_str());
    assert!(c["exp"].is_i64() && c["nbf"].is_i64() && c["iat"].is_i64());
    assert_eq!(
        granted(&c, &format!("{}/app", alice.name)),
        ["delete", "pull", "push"]
    );
    let c = s.grant(&bob, &[&own]).await;
    assert!(
        granted(&c, &format!("{}/app", alice.name)).is_empty(),
        "bob got access to alice's namespace: {c}"
    );
    let testimage = format!("repository:{}/testimage:push", bob.name);
    let c = s.grant(&alice, &[&testimage]).await;
    assert!(granted(&c, &format!("{}/testimage", bob.name)).is_empty());

    // Project roles.
    let project = unique("team");
    let pid = s
        .admin
        .create_project(&project, DEFAULT_DOMAIN_ID, &[])
        .await;
    let (member, reader, padmin) = (s.user().await, s.user().await, s.user().await);
    s.admin
        .assign_project_role(&member.id, &pid, "member")
        .await;
    s.admin
        .assign_project_role(&reader.id, &pid, "reader")
        .await;
    s.admin.assign_project_role(&padmin.id, &pid, "admin").await;
    let all = format!("repository:{project}/app:pull,push,delete");
    let repo = format!("{project}/app");
    assert_eq!(
        granted(&s.grant(&member, &[&all]).await, &repo),
        ["pull", "push"]
    );
    assert_eq!(granted(&s.grant(&reader, &[&all]).await, &repo), ["pull"]);
    assert_eq!(
        granted(&s.grant(&padmin, &[&all]).await, &repo),
        ["delete", "pull", "push"]
    );
    assert!(granted(&s.grant(&bob, &[&all]).await, &repo).is_empty());

    // Several scope parameters, and several scopes in one parameter.
    let two = format!("repository:{project}/a:pull repository:{project}/b:push");
    let c = s
        .grant(&member, &[&two, &format!("repository:{project}/c:pull")])
        .await;
    assert_eq!(granted(&c, &format!("{project}/a")), ["pull"]);
    assert_eq!(granted(&c, &format!("{project}/b")), ["push"]);
    assert_eq!(granted(&c, &format!("{project}/c")), ["pull"]);

    // public/: everyone reads, only administrators write.
    let public = "repository:public/base:pull,push,delete";
    assert_eq!(
        granted(&s.grant(&bob, &[public]).await, "public/base"),
        ["pull"]
    );
    let (admin_user, admin_pw) = s.ks.admin_credentials();
    let resp = s
        .token_get(
            Some((admin_user, admin_pw)),
            &[public, "registry:catalog:*"],
        )
        .await;
    let c = claims(
        resp.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(granted(&c, "public/base"), ["delete", "pull", "push"]);
    assert_eq!(granted(&c, "catalog"), ["*"]);
    let c = s.grant(&bob, &["registry:catalog:*"]).await;
    assert!(granted(&c, "catalog").is_empty());

    // Sharing managed in Keystone: registry-public and registry-pull=<other>.
    let shared = unique("shared");
    let sid = s
        .admin
        .create_project(&shared, DEFAULT_DOMAIN_ID, &[])
        .await;
    let scope = format!("repository:{shared}/x:pull,push");
    let repo = format!("{shared}/x");
    assert!(granted(&s.grant(&member, &[&scope]).await, &repo).is_empty());
    s.admin
        .add_project_tag(&sid, &format!("registry-pull={project}"))
        .await;
    // The project directory is cached (1 s here): wait for the tag.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = granted(&s.grant(&member, &[&scope]).await, &repo);
        if got == ["pull"] {
            break;
        }
        assert!(got.is_empty(), "shared project granted {got:?}");
        assert!(
            Instant::now() < deadline,
            "registry-pull tag never took effect"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(granted(&s.grant(&bob, &[&scope]).await, &repo).is_empty());
    let open = unique("open");
    s.admin
        .create_project(&open, DEFAULT_DOMAIN_ID, &["registry-public"])
        .await;
    let scope = format!("repository:{open}/x:pull,push");
    let deadline = Instant::now() + Duration::from_secs(10);
    while granted(&s.grant(&bob, &[&scope]).await, &format!("{open}/x")) != ["pull"] {
        assert!(
            Instant::now() < deadline,
            "registry-public never took effect"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Anonymous users get nothing unless configured.
    let resp = s.token_get(None, &[&scope]).await;
    assert_eq!(resp.status(), 200);
    let c = claims(
        resp.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap(),
    );
    assert!(granted(&c, &format!("{open}/x")).is_empty());
    // A login with no scope gets a token with empty access.
    let c = s.grant(&alice, &[]).await;
    assert_eq!(c["access"], serde_json::json!([]));
}

#[tokio::test]
async fn credentials_refresh_tokens_and_revocation() {
    let s = setup(&[]).await;
    let alice = s.user().await;
    let project = unique("ci");
    let pid = s
        .admin
        .create_project(&project, DEFAULT_DOMAIN_ID, &[])
        .await;
    s.admin.assign_project_role(&alice.id, &pid, "member").await;
    let scope = format!("repository:{project}/app:pull,push");
    let repo = format!("{project}/app");

    // Wrong password: 401 with a JSON error.
    let resp = s.token_get(Some((&alice.name, "wrong")), &[&scope]).await;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "UNAUTHORIZED");

    // An application credential with the reader role: pull only, on its
    // project only; nothing in the user's own namespace.
    let ac = s
        .admin
        .create_application_credential(&alice, &pid, &["reader"], None)
        .await;
    let ac_user = format!("applicationcredential-{}", ac.id);
    let own = format!("repository:{}/x:pull,push", alice.name);
    let resp = s
        .token_get(Some((&ac_user, &ac.secret)), &[&scope, &own])
        .await;
    assert_eq!(resp.status(), 200);
    let c = claims(
        resp.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(granted(&c, &repo), ["pull"]);
    assert!(granted(&c, &format!("{}/x", alice.name)).is_empty());
    // Revoked: refused once the cache entry (1 s here) has ended.
    s.admin.delete_application_credential(&alice, &ac.id).await;
    tokio::time::sleep(REVOCATION_SETTLE).await;
    let resp = s.token_get(Some((&ac_user, &ac.secret)), &[&scope]).await;
    assert_eq!(
        resp.status(),
        401,
        "revoked application credential still works"
    );

    // Refresh tokens: POST password with access_type=offline, then refresh.
    let form = [
        ("grant_type", "password"),
        ("username", alice.name.as_str()),
        ("password", alice.password.as_str()),
        ("service", "berth-test"),
        ("client_id", "docker"),
        ("access_type", "offline"),
        ("scope", scope.as_str()),
    ];
    let resp = s.token_post(&form).await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    let refresh = body["refresh_token"]
        .as_str()
        .expect("refresh_token")
        .to_owned();
    assert!(body["issued_at"].is_string() && body["expires_in"].is_u64());
    let refresh_form = [
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("service", "berth-test"),
        ("client_id", "docker"),
        ("scope", scope.as_str()),
    ];
    let resp = s.token_post(&refresh_form).await;
    assert_eq!(resp.status(), 200);
    let c = claims(
        resp.json::<Value>().await.unwrap()["token"]
            .as_str()
            .unwrap(),
    );
    assert_eq!(granted(&c, &repo), ["pull", "push"]);

    // A disabled user: neither the password nor the refresh token works.
    s.admin.disable_user(&alice.id).await;
    tokio::time::sleep(REVOCATION_SETTLE).await;
    let resp = s
        .token_get(Some((&alice.name, &alice.password)), &[&scope])
        .await;
    assert_eq!(resp.status(), 401, "disabled user still logs in");
    let resp = s.token_post(&refresh_form).await;
    assert_eq!(
        resp.status(),
        401,
        "disabled user's refresh token still works"
    );
}

#[tokio::test]
async fn rate_limits_and_keystone_outage() {
    let s = setup(&[("BERTH_KEYSTONE_CACHE_TTL", "60")]).await;
    let (carol, dave) = (s.user().await, s.user().await);
    let scope = format!("repository:{}/x:pull", carol.name);

    // Five failures, then 429 even with the right password.
    for _ in 0..5 {
        let resp = s.token_get(Some((&dave.name, "nope")), &[]).await;
        assert_eq!(resp.status(), 401);
    }
    let resp = s.token_get(Some((&dave.name, &dave.password)), &[]).await;
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["errors"][0]["code"], "TOOMANYREQUESTS");

    // carol logs in (cached for 60 s), then Keystone stops.
    assert_eq!(
        s.token_get(Some((&carol.name, &carol.password)), &[&scope])
            .await
            .status(),
        200
    );
    s.ks.stop();
    let started = Instant::now();
    let eve = unique("eve");
    let resp = s.token_get(Some((&eve, "whatever")), &[]).await;
    assert_eq!(resp.status(), 503, "Keystone down must be a clear 503");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "503 took {:?}",
        started.elapsed()
    );
    let body: Value = resp.json().await.unwrap();
    assert!(body["errors"][0]["message"].is_string());
    // A cached identity keeps working.
    let resp = s
        .token_get(Some((&carol.name, &carol.password)), &[&scope])
        .await;
    assert_eq!(
        resp.status(),
        200,
        "cached identity refused while Keystone is down"
    );
}
