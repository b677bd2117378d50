//! The token endpoint over real HTTP, in process: `router(...)` served on a
//! loopback port with connect info, driven with reqwest, in front of a fake
//! identity backend (a fixed user table and project directory, a switch that
//! makes it unavailable, call counters). Covers the protocol as docker,
//! podman, skopeo and containerd use it (GET with Basic credentials, the
//! OAuth2 POST form with password and refresh-token grants, chunked bodies,
//! several scopes), the policy as the endpoint applies it, errors, rate
//! limiting, the audit log and the JWKS.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use berth_identity::audit::AuditLog;
use berth_identity::authn::{
    AuthnError, AuthnFuture, Credentials, Identity, Method, ProjectDirectory, ProjectInfo,
    ProjectRoles,
};
use berth_identity::backend::{Backend, ProjectsFuture};
use berth_identity::http::{TokenService, router};
use berth_identity::keys::{Algorithm, KeyOptions, KeyStore};
use berth_identity::policy::PolicyConfig;
use berth_identity::ratelimit::{RateLimitConfig, RateLimiter};
use berth_identity::refresh::RefreshStore;
use berth_identity::token::TokenIssuer;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{DecodingKey, Validation};
use reqwest::StatusCode;
use serde_json::{Value, json};

const SERVICE: &str = "registry.test";
const ISSUER: &str = "berth-test-issuer";
const ALICE_PW: &str = "alice-secret-pw";
/// Has a colon and spaces: Basic splits at the first colon only.
const BOB_PW: &str = "bob:secret pw";
const AC_ID: &str = "ac0123";
const AC_SECRET: &str = "app-cred-secret-xyz";

// ---------------------------------------------------------------------------
// The fake backend

struct FakeUser {
    password: String,
    identity: Identity,
}

/// A fixed identity backend: users by name, application credentials by id,
/// a project directory, a switch to make it unavailable, and counters.
struct FakeBackend {
    users: HashMap<String, FakeUser>,
    app_creds: HashMap<String, (String, Identity)>,
    projects: Arc<ProjectDirectory>,
    /// `AuthnError::Unavailable` from every call while set.
    down: AtomicBool,
    /// User ids that `reauthorize` (and `authenticate`) refuse.
    disabled: Mutex<HashSet<String>>,
    /// How long `authenticate` takes, in milliseconds.
    latency_ms: AtomicU64,
    /// `authenticate` calls running now, and the most there ever were.
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    authenticate_calls: AtomicUsize,
    reauthorize_calls: AtomicUsize,
    projects_calls: AtomicUsize,
}

fn roles(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

fn project(id: &str, name: &str, tags: &[&str]) -> (String, ProjectInfo) {
    (
        name.to_owned(),
        ProjectInfo {
            id: id.to_owned(),
            name: name.to_owned(),
            tags: tags.iter().map(|s| s.to_string()).collect(),
        },
    )
}

impl FakeBackend {
    /// - alice: password `ALICE_PW`, member of `team`; owns the personal
    ///   namespace `alice/`.
    /// - bob: password `BOB_PW`, reader on `team`.
    /// - application credential `AC_ID` of alice's: reader on `team` only.
    /// - projects `team` and `pubproj` (tagged `registry-public`).
    fn new() -> FakeBackend {
        let team_member = ProjectRoles {
            id: "p-team".into(),
            name: "team".into(),
            roles: roles(&["member", "reader"]),
        };
        let team_reader = ProjectRoles {
            id: "p-team".into(),
            name: "team".into(),
            roles: roles(&["reader"]),
        };
        let alice = Identity {
            user_id: "u-alice".into(),
            username: "alice".into(),
            domain: "Default".into(),
            method: Method::Password,
            projects: vec![team_member],
            admin: false,
        };
        let bob = Identity {
            user_id: "u-bob".into(),
            username: "bob".into(),
            domain: "Default".into(),
            method: Method::Password,
            projects: vec![team_reader.clone()],
            admin: false,
        };
        let alice_ac = Identity {
            method: Method::ApplicationCredential { id: AC_ID.into() },
            projects: vec![team_reader],
            ..alice.clone()
        };
        let users = HashMap::from([
            (
                "alice".to_owned(),
                FakeUser {
                    password: ALICE_PW.into(),
                    identity: alice,
                },
            ),
            (
                "bob".to_owned(),
                FakeUser {
                    password: BOB_PW.into(),
                    identity: bob,
                },
            ),
        ]);
        let projects: ProjectDirectory = BTreeMap::from([
            project("p-team", "team", &[]),
            project("p-pub", "pubproj", &["registry-public"]),
        ]);
        FakeBackend {
            users,
            app_creds: HashMap::from([(AC_ID.to_owned(), (AC_SECRET.to_owned(), alice_ac))]),
            projects: Arc::new(projects),
            down: AtomicBool::new(false),
            disabled: Mutex::new(HashSet::new()),
            latency_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            authenticate_calls: AtomicUsize::new(0),
            reauthorize_calls: AtomicUsize::new(0),
            projects_calls: AtomicUsize::new(0),
        }
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    fn set_disabled(&self, user_id: &str, disabled: bool) {
        let mut set = self.disabled.lock().unwrap();
        if disabled {
            set.insert(user_id.to_owned());
        } else {
            set.remove(user_id);
        }
    }

    fn is_disabled(&self, user_id: &str) -> bool {
        self.disabled.lock().unwrap().contains(user_id)
    }

    fn authentications(&self) -> usize {
        self.authenticate_calls.load(Ordering::SeqCst)
    }

    fn reauthorizations(&self) -> usize {
        self.reauthorize_calls.load(Ordering::SeqCst)
    }

    fn check(&self, credentials: &Credentials) -> Result<Identity, AuthnError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(AuthnError::Unavailable("fake backend is down".into()));
        }
        let identity = match credentials {
            Credentials::Password {
                username,
                domain,
                password,
            } => {
                let user = self.users.get(username).ok_or(AuthnError::Invalid)?;
                let domain_ok = domain.as_deref().is_none_or(|d| d == "Default");
                if !domain_ok || user.password != *password {
                    return Err(AuthnError::Invalid);
                }
                user.identity.clone()
            }
            Credentials::ApplicationCredential { id, secret } => {
                let (s, identity) = self.app_creds.get(id).ok_or(AuthnError::Invalid)?;
                if s != secret {
                    return Err(AuthnError::Invalid);
                }
                identity.clone()
            }
        };
        if self.is_disabled(&identity.user_id) {
            return Err(AuthnError::Invalid);
        }
        Ok(identity)
    }
}

impl Backend for FakeBackend {
    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> AuthnFuture<'a> {
        self.authenticate_calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let latency = self.latency_ms.load(Ordering::SeqCst);
            if latency > 0 {
                tokio::time::sleep(Duration::from_millis(latency)).await;
            }
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.check(credentials)
        })
    }

    fn reauthorize<'a>(&'a self, user_id: &'a str) -> AuthnFuture<'a> {
        self.reauthorize_calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(AuthnError::Unavailable("fake backend is down".into()));
            }
            if self.is_disabled(user_id) {
                return Err(AuthnError::Invalid);
            }
            let user = self
                .users
                .values()
                .find(|u| u.identity.user_id == user_id)
                .ok_or(AuthnError::Invalid)?;
            Ok(Identity {
                method: Method::RefreshToken,
                ..user.identity.clone()
            })
        })
    }

    fn projects(&self) -> ProjectsFuture<'_> {
        self.projects_calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if self.down.load(Ordering::SeqCst) {
                return Err(AuthnError::Unavailable("fake backend is down".into()));
            }
            Ok(self.projects.clone())
        })
    }
}

// ---------------------------------------------------------------------------
// The audit capture

/// A writer appending to a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }

    /// Every line, parsed; each must be one JSON object ending in a newline.
    fn lines(&self) -> Vec<Value> {
        let text = self.text();
        assert!(text.is_empty() || text.ends_with('\n'), "{text}");
        text.lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
                assert!(v.is_object(), "{l}");
                v
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The server

struct Options {
    algorithm: Algorithm,
    policy: PolicyConfig,
    limits: RateLimitConfig,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            // ES256 keys are generated in no time; one test covers RS256.
            algorithm: Algorithm::Es256,
            policy: PolicyConfig::default(),
            limits: RateLimitConfig {
                max_failures_per_account: 0,
                max_failures_per_ip: 0,
                window_secs: 60,
                max_tracked: 1000,
            },
        }
    }
}

struct Harness {
    base: String,
    client: reqwest::Client,
    backend: Arc<FakeBackend>,
    audit: Captured,
    _dir: tempfile::TempDir,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn start(options: Options) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let keys = Arc::new(
        KeyStore::open(
            &dir.path().join("keys"),
            KeyOptions {
                algorithm: options.algorithm,
                ..KeyOptions::default()
            },
        )
        .unwrap(),
    );
    let issuer = TokenIssuer::new(
        keys,
        ISSUER.into(),
        SERVICE.into(),
        Duration::from_secs(300),
    );
    let backend = Arc::new(FakeBackend::new());
    let audit = Captured::default();
    let service = TokenService {
        backend: backend.clone(),
        issuer: Arc::new(issuer),
        refresh: RefreshStore::open(dir.path().join("refresh"), Duration::from_secs(3600)).unwrap(),
        limiter: RateLimiter::new(options.limits),
        audit: AuditLog::to_writer(audit.clone()),
        policy: options.policy,
        service: SERVICE.into(),
    };
    let app = router(Arc::new(service));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    Harness {
        base: format!("http://{addr}"),
        client,
        backend,
        audit,
        _dir: dir,
        server,
    }
}

/// A response, read whole.
struct Reply {
    status: StatusCode,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    fn ok(&self) -> &Self {
        assert_eq!(self.status, StatusCode::OK, "{}", self.body);
        self
    }

    fn token(&self) -> &str {
        self.body["token"].as_str().unwrap()
    }

    /// A Docker registry error: `{"errors":[{"code":..,"message":..}]}`.
    fn error_code(&self) -> &str {
        let errors = self.body["errors"].as_array().unwrap_or_else(|| {
            panic!("not an error body: {}", self.body);
        });
        assert_eq!(errors.len(), 1, "{}", self.body);
        assert!(errors[0]["message"].is_string(), "{}", self.body);
        errors[0]["code"].as_str().unwrap()
    }

    fn assert_error(&self, status: StatusCode, code: &str) {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.error_code(), code);
        assert!(
            self.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{:?}",
            self.headers
        );
        if status == StatusCode::UNAUTHORIZED {
            assert!(
                self.header("www-authenticate").is_some(),
                "401 without WWW-Authenticate"
            );
        }
    }
}

async fn reply(resp: reqwest::Response) -> Reply {
    let status = resp.status();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {status} {text:?}"))
    };
    Reply {
        status,
        headers,
        body,
    }
}

impl Harness {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `GET /token` with these query parameters and, if given, Basic
    /// credentials.
    async fn get(&self, params: &[(&str, &str)], basic: Option<(&str, &str)>) -> Reply {
        let mut req = self.client.get(self.url("/token")).query(params);
        if let Some((u, p)) = basic {
            req = req.basic_auth(u, Some(p));
        }
        reply(req.send().await.unwrap()).await
    }

    /// `GET /token` with a raw query string and Authorization header.
    async fn get_raw(&self, query: &str, authorization: Option<&str>) -> Reply {
        let mut req = self.client.get(self.url(&format!("/token?{query}")));
        if let Some(a) = authorization {
            req = req.header("authorization", a);
        }
        reply(req.send().await.unwrap()).await
    }

    /// `POST /token` with a form body.
    async fn post(&self, form: &[(&str, &str)]) -> Reply {
        let body = serde_urlencoded::to_string(form).unwrap();
        let resp = self
            .client
            .post(self.url("/token"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .unwrap();
        reply(resp).await
    }

    async fn jwks(&self) -> Reply {
        reply(
            self.client
                .get(self.url("/.well-known/jwks.json"))
                .send()
                .await
                .unwrap(),
        )
        .await
    }

    /// Verifies a token's signature with the JWKS key its `kid` names and
    /// its `iss`, `aud`, `exp`, `nbf`; returns the raw claims.
    async fn verify(&self, token: &str) -> Value {
        let header = jsonwebtoken::decode_header(token).unwrap();
        let kid = header.kid.clone().expect("the token names its key");
        let jwks = self.jwks().await;
        jwks.ok();
        let jwk = jwks.body["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid.as_str())
            .unwrap_or_else(|| panic!("kid {kid} not in the JWKS {}", jwks.body))
            .clone();
        let jwk: Jwk = serde_json::from_value(jwk).unwrap();
        let mut validation = Validation::new(header.alg);
        validation.set_audience(&[SERVICE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Value>(
            token,
            &DecodingKey::from_jwk(&jwk).unwrap(),
            &validation,
        )
        .unwrap_or_else(|e| panic!("token does not verify: {e}"));
        data.claims
    }

    /// The `access` claim of a verified token.
    async fn access(&self, token: &str) -> Value {
        self.verify(token).await["access"].clone()
    }
}

fn scope_params<'a>(scopes: &[&'a str]) -> Vec<(&'a str, &'a str)> {
    let mut params = vec![("service", SERVICE)];
    params.extend(scopes.iter().map(|s| ("scope", *s)));
    params
}

fn repo(name: &str, actions: &[&str]) -> Value {
    json!({ "type": "repository", "name": name, "actions": actions })
}

const ALICE: Option<(&str, &str)> = Some(("alice", ALICE_PW));
const BOB: Option<(&str, &str)> = Some(("bob", BOB_PW));

// ---------------------------------------------------------------------------
// GET /token

async fn check_basic_get(algorithm: Algorithm) {
    let h = start(Options {
        algorithm,
        ..Options::default()
    })
    .await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let r = h
        .get(&scope_params(&["repository:alice/app:pull,push"]), ALICE)
        .await;
    r.ok();
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    let body = r.body.as_object().unwrap();
    let token = r.token();
    assert_eq!(body["access_token"].as_str(), Some(token));
    assert!(body.get("refresh_token").is_none(), "{}", r.body);
    let expires_in = body["expires_in"].as_u64().expect("expires_in is a number");
    assert_eq!(expires_in, 300);
    let issued_at = body["issued_at"].as_str().expect("issued_at is a string");
    let issued_at =
        time::OffsetDateTime::parse(issued_at, &time::format_description::well_known::Rfc3339)
            .unwrap_or_else(|e| panic!("issued_at {issued_at:?} is not RFC 3339: {e}"));

    // The JWT: header, signature by the JWKS key of its kid, claims.
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(
        header.alg,
        match algorithm {
            Algorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::Es256 => jsonwebtoken::Algorithm::ES256,
        }
    );
    let claims = h.verify(token).await;
    assert_eq!(claims["iss"], ISSUER);
    assert!(claims["aud"].is_string(), "aud must be a string: {claims}");
    assert_eq!(claims["aud"], SERVICE);
    assert_eq!(claims["sub"], "alice");
    for k in ["exp", "nbf", "iat"] {
        assert!(claims[k].is_i64(), "{k} must be an integer: {claims}");
    }
    let iat = claims["iat"].as_i64().unwrap();
    assert!(
        iat >= before - 1 && iat <= before + 5,
        "iat {iat}, now {before}"
    );
    assert_eq!(claims["nbf"].as_i64(), Some(iat));
    assert_eq!(claims["exp"].as_i64(), Some(iat + expires_in as i64));
    assert_eq!(issued_at.unix_timestamp(), iat);
    assert!(claims["jti"].as_str().is_some_and(|j| !j.is_empty()));
    assert_eq!(
        claims["access"],
        json!([repo("alice/app", &["pull", "push"])])
    );
    assert_eq!(h.backend.authentications(), 1);
}

#[tokio::test]
async fn get_with_basic_credentials_es256() {
    check_basic_get(Algorithm::Es256).await;
}

#[tokio::test]
async fn get_with_basic_credentials_rs256() {
    check_basic_get(Algorithm::Rs256).await;
}

#[tokio::test]
async fn several_scopes_in_several_parameters_and_in_one() {
    let h = start(Options::default()).await;
    // A push with a cross-repository mount: two scope parameters.
    let r = h
        .get(
            &scope_params(&[
                "repository:alice/app:pull,push",
                "repository:team/base:pull",
            ]),
            ALICE,
        )
        .await;
    assert_eq!(
        h.access(r.ok().token()).await,
        json!([
            repo("alice/app", &["pull", "push"]),
            repo("team/base", &["pull"])
        ])
    );

    // containerd: several space-separated scopes in one parameter, encoded
    // as `+` (reqwest's query encoding) ...
    let r = h
        .get(
            &scope_params(&["repository:alice/app:pull repository:team/base:pull,push"]),
            ALICE,
        )
        .await;
    assert_eq!(
        h.access(r.ok().token()).await,
        json!([
            repo("alice/app", &["pull"]),
            repo("team/base", &["pull", "push"])
        ])
    );
    // ... and as `%20`, mixed with a second parameter; scopes for one
    // repository merge, in canonical order.
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("alice:{ALICE_PW}"))
    );
    let r = h
        .get_raw(
            &format!(
                "service={SERVICE}&scope=repository%3Aalice%2Fapp%3Apush%20repository:pubproj/img:pull\
                 &scope=repository:alice/app:pull"
            ),
            Some(&auth),
        )
        .await;
    assert_eq!(
        h.access(r.ok().token()).await,
        json!([
            repo("alice/app", &["pull", "push"]),
            repo("pubproj/img", &["pull"])
        ])
    );

    // POST, as containerd does it: grant_type=password with several
    // space-separated scopes.
    let r = h
        .post(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", ALICE_PW),
            ("service", SERVICE),
            ("client_id", "containerd-client"),
            (
                "scope",
                "repository:alice/app:pull,push repository:team/base:pull",
            ),
        ])
        .await;
    assert_eq!(
        h.access(r.ok().token()).await,
        json!([
            repo("alice/app", &["pull", "push"]),
            repo("team/base", &["pull"])
        ])
    );
    assert!(r.body.get("refresh_token").is_none(), "not offline");
}

#[tokio::test]
async fn scopes_beyond_what_is_allowed_are_intersected() {
    let h = start(Options::default()).await;
    // bob has nothing in alice's personal namespace: 200, nothing for it.
    let r = h
        .get(
            &scope_params(&["repository:alice/app:pull,push,delete"]),
            BOB,
        )
        .await;
    let claims = h.verify(r.ok().token()).await;
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["access"], json!([]));

    // bob reads team: pull only, of pull, push, delete.
    let r = h
        .get(
            &scope_params(&[
                "repository:team/x:pull,push,delete",
                "repository:alice/app:pull",
            ]),
            BOB,
        )
        .await;
    assert_eq!(
        h.access(r.ok().token()).await,
        json!([repo("team/x", &["pull"])])
    );

    // alice, member of team: pull and push, never delete; everything in
    // her own namespace (`*` is spelled out).
    let r = h
        .get(
            &scope_params(&["repository:team/x:*", "repository:alice/app:*"]),
            ALICE,
        )
        .await;
    assert_eq!(
        h.access(r.ok().token()).await,
        json!([
            repo("team/x", &["pull", "push"]),
            repo("alice/app", &["pull", "push", "delete"])
        ])
    );

    // Catalog is for administrators only; an unknown action is dropped; an
    // invalid repository name gets nothing.
    let r = h
        .get(
            &scope_params(&[
                "registry:catalog:*",
                "repository:alice/app:pull,frobnicate",
                "repository:Alice/App:pull",
            ]),
            ALICE,
        )
        .await;
    assert_eq!(
        h.access(r.ok().token()).await,
        json!([repo("alice/app", &["pull"])])
    );
}

#[tokio::test]
async fn login_without_scope_gets_a_token_with_no_access() {
    let h = start(Options::default()).await;
    // docker login: account, service, client_id; no scope.
    let r = h
        .get(
            &[
                ("account", "alice"),
                ("service", SERVICE),
                ("client_id", "docker"),
            ],
            ALICE,
        )
        .await;
    let claims = h.verify(r.ok().token()).await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["access"], json!([]));
    assert!(r.body.get("refresh_token").is_none());

    // No service at all, and an empty scope parameter, are accepted too.
    let r = h.get(&[("scope", "")], BOB).await;
    assert_eq!(h.access(r.ok().token()).await, json!([]));
    // A user@domain login name.
    let r = h
        .get(
            &scope_params(&["repository:team/a:pull"]),
            Some(("bob@Default", BOB_PW)),
        )
        .await;
    assert_eq!(
        h.access(r.ok().token()).await,
        json!([repo("team/a", &["pull"])])
    );
}

// ---------------------------------------------------------------------------
// Refresh tokens

#[tokio::test]
async fn post_password_grant_then_refresh_grant() {
    let h = start(Options::default()).await;
    let r = h
        .post(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", ALICE_PW),
            ("service", SERVICE),
            ("scope", "repository:alice/app:pull,push"),
            ("client_id", "docker"),
            ("access_type", "offline"),
        ])
        .await;
    r.ok();
    assert_eq!(r.body["access_token"].as_str(), Some(r.token()));
    assert!(r.body["expires_in"].is_u64());
    assert!(r.body["issued_at"].is_string());
    assert_eq!(
        h.access(r.token()).await,
        json!([repo("alice/app", &["pull", "push"])])
    );
    let refresh = r.body["refresh_token"]
        .as_str()
        .expect("access_type=offline gets a refresh token")
        .to_owned();
    assert_eq!(h.backend.authentications(), 1);
    assert_eq!(h.backend.reauthorizations(), 0);

    // Trade it for a new access token: the backend re-checks the user.
    let grant = |client_id: &'static str, scope: &'static str| {
        let refresh = refresh.clone();
        let h = &h;
        async move {
            h.post(&[
                ("grant_type", "refresh_token"),
                ("refresh_token", &refresh),
                ("client_id", client_id),
                ("service", SERVICE),
                ("scope", scope),
            ])
            .await
        }
    };
    let r = grant("docker", "repository:alice/app:pull repository:team/x:push").await;
    r.ok();
    let claims = h.verify(r.token()).await;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(
        claims["access"],
        json!([repo("alice/app", &["pull"]), repo("team/x", &["push"])])
    );
    assert_eq!(h.backend.reauthorizations(), 1);
    assert_eq!(h.backend.authentications(), 1, "no password needed");
    // It can be used again.
    grant("docker", "repository:alice/app:pull").await.ok();
    assert_eq!(h.backend.reauthorizations(), 2);

    // Another client_id: 401, the backend is not asked.
    grant("not-docker", "repository:alice/app:pull")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    grant("", "repository:alice/app:pull")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(h.backend.reauthorizations(), 2);
    // The right client_id still works.
    grant("docker", "").await.ok();
    assert_eq!(h.backend.reauthorizations(), 3);

    // A garbage refresh token: 401.
    h.post(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", "berth-rt-nonsense"),
        ("client_id", "docker"),
    ])
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");

    // The backend is down: 503, and the refresh token survives.
    h.backend.set_down(true);
    grant("docker", "")
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
    h.backend.set_down(false);
    grant("docker", "").await.ok();
    assert_eq!(h.backend.reauthorizations(), 5);

    // The user is disabled: 401, and the refresh token is revoked for good.
    h.backend.set_disabled("u-alice", true);
    grant("docker", "repository:alice/app:pull")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(h.backend.reauthorizations(), 6);
    h.backend.set_disabled("u-alice", false);
    grant("docker", "repository:alice/app:pull")
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(
        h.backend.reauthorizations(),
        6,
        "a revoked token never reaches the backend"
    );
    // The password still works.
    h.get(&scope_params(&["repository:alice/app:pull"]), ALICE)
        .await
        .ok();
}

#[tokio::test]
async fn chunked_post_body() {
    let h = start(Options::default()).await;
    // containers/image posts with a chunked body; split it mid-key and
    // mid-value.
    let body = serde_urlencoded::to_string([
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", ALICE_PW),
        ("service", SERVICE),
        ("scope", "repository:alice/app:pull,push"),
        ("client_id", "containers/image"),
        ("access_type", "offline"),
    ])
    .unwrap();
    let chunks: Vec<Result<Vec<u8>, io::Error>> =
        body.as_bytes().chunks(7).map(|c| Ok(c.to_vec())).collect();
    let resp = h
        .client
        .post(h.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let r = reply(resp).await;
    r.ok();
    assert_eq!(
        h.access(r.token()).await,
        json!([repo("alice/app", &["pull", "push"])])
    );
    let refresh = r.body["refresh_token"].as_str().unwrap().to_owned();

    // A chunked refresh grant too.
    let body = serde_urlencoded::to_string([
        ("grant_type", "refresh_token"),
        ("refresh_token", refresh.as_str()),
        ("client_id", "containers/image"),
        ("service", SERVICE),
        ("scope", "repository:alice/app:pull"),
    ])
    .unwrap();
    let chunks: Vec<Result<Vec<u8>, io::Error>> =
        body.as_bytes().chunks(5).map(|c| Ok(c.to_vec())).collect();
    let resp = h
        .client
        .post(h.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    let r = reply(resp).await;
    r.ok();
    assert_eq!(
        h.access(r.token()).await,
        json!([repo("alice/app", &["pull"])])
    );
}

#[tokio::test]
async fn get_offline_token_gets_a_refresh_token() {
    let h = start(Options::default()).await;
    let login = [
        ("account", "alice"),
        ("service", SERVICE),
        ("client_id", "docker"),
        ("offline_token", "true"),
    ];
    let r = h.get(&login, ALICE).await;
    r.ok();
    let refresh = r.body["refresh_token"]
        .as_str()
        .expect("offline_token=true gets a refresh token")
        .to_owned();
    assert_ne!(refresh, r.token());

    // Without offline_token, or with it false: none.
    let r = h.get(&login[..3], ALICE).await;
    assert!(r.ok().body.get("refresh_token").is_none(), "{}", r.body);
    let r = h
        .get(
            &[
                ("service", SERVICE),
                ("client_id", "docker"),
                ("offline_token", "false"),
            ],
            ALICE,
        )
        .await;
    assert!(r.ok().body.get("refresh_token").is_none(), "{}", r.body);

    // docker later posts the refresh token with its client_id.
    let r = h
        .post(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", "docker"),
            ("service", SERVICE),
            ("scope", "repository:alice/app:pull,push"),
        ])
        .await;
    assert_eq!(
        h.access(r.ok().token()).await,
        json!([repo("alice/app", &["pull", "push"])])
    );
}

#[tokio::test]
async fn application_credentials_never_get_refresh_tokens() {
    let h = start(Options::default()).await;
    let user = format!("applicationcredential-{AC_ID}");
    let r = h
        .get(
            &[
                ("service", SERVICE),
                ("client_id", "docker"),
                ("offline_token", "true"),
                ("scope", "repository:team/x:pull,push"),
                ("scope", "repository:alice/app:pull"),
            ],
            Some((&user, AC_SECRET)),
        )
        .await;
    r.ok();
    assert!(r.body.get("refresh_token").is_none(), "{}", r.body);
    // Its project and roles only: no push on team, no personal namespace.
    assert_eq!(
        h.access(r.token()).await,
        json!([repo("team/x", &["pull"])])
    );

    let r = h
        .post(&[
            ("grant_type", "password"),
            ("username", &user),
            ("password", AC_SECRET),
            ("service", SERVICE),
            ("client_id", "docker"),
            ("access_type", "offline"),
        ])
        .await;
    r.ok();
    assert!(r.body.get("refresh_token").is_none(), "{}", r.body);

    // A wrong secret: 401.
    h.get(&scope_params(&[]), Some((&user, "wrong")))
        .await
        .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
}

// ---------------------------------------------------------------------------
// Anonymous requests

#[tokio::test]
async fn anonymous_without_public_pull() {
    let h = start(Options::default()).await;
    let r = h
        .get(
            &scope_params(&["repository:pubproj/img:pull", "repository:team/x:pull"]),
            None,
        )
        .await;
    let claims = h.verify(r.ok().token()).await;
    assert_eq!(claims["access"], json!([]));
    assert_eq!(claims["sub"], "");
    assert_eq!(h.backend.authentications(), 0);
    // Anonymous is GET only... and never offline.
    let r = h
        .get(
            &[
                ("service", SERVICE),
                ("client_id", "docker"),
                ("offline_token", "true"),
            ],
            None,
        )
        .await;
    assert!(r.ok().body.get("refresh_token").is_none());
}

#[tokio::test]
async fn anonymous_with_public_pull() {
    let h = start(Options {
        policy: PolicyConfig {
            anonymous_pull_public: true,
            ..PolicyConfig::default()
        },
        ..Options::default()
    })
    .await;
    let r = h
        .get(
            &scope_params(&[
                "repository:pubproj/img:pull,push,delete",
                "repository:team/x:pull",
                "repository:public/x:pull",
                "registry:catalog:*",
            ]),
            None,
        )
        .await;
    assert_eq!(
        h.access(r.ok().token()).await,
        json!([repo("pubproj/img", &["pull"])])
    );
    assert_eq!(h.backend.authentications(), 0);
    // Authenticated users read registry-public projects too.
    let r = h
        .get(&scope_params(&["repository:pubproj/img:pull,push"]), BOB)
        .await;
    assert_eq!(
        h.access(r.ok().token()).await,
        json!([repo("pubproj/img", &["pull"])])
    );
    // A POST without any credentials is refused (there is no anonymous POST).
    h.post(&[
        ("service", SERVICE),
        ("scope", "repository:pubproj/img:pull"),
    ])
    .await
    .assert_error(StatusCode::BAD_REQUEST, "UNSUPPORTED");
}

// ---------------------------------------------------------------------------
// Errors

#[tokio::test]
async fn wrong_credentials_are_401() {
    let h = start(Options::default()).await;
    let scope = scope_params(&["repository:alice/app:pull"]);
    for creds in [
        ("alice", "wrong"),
        ("alice", ""),
        ("nobody", ALICE_PW),
        ("alice@OtherDomain", ALICE_PW),
        ("bob", "bob"), // BOB_PW up to its colon
    ] {
        let r = h.get(&scope, Some(creds)).await;
        r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        assert!(r.body.get("token").is_none());
    }
    // The POST form too.
    h.post(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "wrong"),
        ("service", SERVICE),
        ("client_id", "docker"),
    ])
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(h.backend.authentications(), 6);
}

#[tokio::test]
async fn malformed_authorization_is_401() {
    let h = start(Options::default()).await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let no_colon = format!("Basic {}", b64("alicealice-secret-pw"));
    let not_utf8 = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(b"alice:\xff\xfe")
    );
    for header in [
        "Basic",
        "Basic !!!not-base64!!!",
        no_colon.as_str(),
        not_utf8.as_str(),
        "Bearer some.jwt.token",
        "Digest username=\"alice\"",
        "garbage",
    ] {
        let r = h
            .get_raw(
                &format!("service={SERVICE}&scope=repository:alice/app:pull"),
                Some(header),
            )
            .await;
        r.assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    // The scheme is case-insensitive.
    let r = h
        .get_raw(
            &format!("service={SERVICE}&scope=repository:alice/app:pull"),
            Some(&format!("basic {}", b64(&format!("alice:{ALICE_PW}")))),
        )
        .await;
    assert_eq!(
        h.access(r.ok().token()).await,
        json!([repo("alice/app", &["pull"])])
    );
    assert_eq!(h.backend.authentications(), 1);
}

#[tokio::test]
async fn bad_requests_are_400() {
    let h = start(Options::default()).await;
    // Unknown grant_type, missing fields, no grant at all.
    for form in [
        vec![("grant_type", "client_credentials"), ("service", SERVICE)],
        vec![
            ("grant_type", "authorization_code"),
            ("code", "x"),
            ("client_id", "docker"),
        ],
        vec![("grant_type", "password"), ("username", "alice")],
        vec![("grant_type", "refresh_token"), ("client_id", "docker")],
        vec![("service", SERVICE)],
    ] {
        h.post(&form)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "UNSUPPORTED");
    }
    // Another service, GET and POST, even with the right password.
    h.get(
        &[
            ("service", "other.registry"),
            ("scope", "repository:alice/app:pull"),
        ],
        ALICE,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "UNSUPPORTED");
    h.get(&[("service", "other.registry")], None)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "UNSUPPORTED");
    h.post(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", ALICE_PW),
        ("service", "other.registry"),
        ("client_id", "docker"),
    ])
    .await
    .assert_error(StatusCode::BAD_REQUEST, "UNSUPPORTED");
    // Malformed scopes.
    for scope in [
        "nonsense",
        "repository:alice/app",
        "repository::pull",
        ":alice/app:pull",
        "repository:alice/app:pull garbage",
    ] {
        h.get(&scope_params(&[scope]), ALICE)
            .await
            .assert_error(StatusCode::BAD_REQUEST, "UNSUPPORTED");
        h.post(&[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", ALICE_PW),
            ("service", SERVICE),
            ("scope", scope),
        ])
        .await
        .assert_error(StatusCode::BAD_REQUEST, "UNSUPPORTED");
    }
    // A body that is not a form.
    let resp = h
        .client
        .post(h.url("/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(vec![b'a', b'=', 0xff, 0xfe])
        .send()
        .await
        .unwrap();
    reply(resp)
        .await
        .assert_error(StatusCode::BAD_REQUEST, "UNSUPPORTED");
    assert_eq!(
        h.backend.authentications(),
        0,
        "bad requests never reach the backend"
    );
}

// ---------------------------------------------------------------------------
// Rate limiting

#[tokio::test]
async fn failed_logins_rate_limit_the_account() {
    let h = start(Options {
        limits: RateLimitConfig {
            max_failures_per_account: 3,
            max_failures_per_ip: 0,
            window_secs: 60,
            max_tracked: 100,
        },
        ..Options::default()
    })
    .await;
    let scope = scope_params(&["repository:alice/app:pull"]);
    // Failures below the limit, then a success, clear the account.
    for _ in 0..2 {
        h.get(&scope, Some(("alice", "wrong")))
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    h.get(&scope, ALICE).await.ok();
    for _ in 0..3 {
        h.get(&scope, Some(("alice", "wrong")))
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    assert_eq!(h.backend.authentications(), 6);

    // Now even the right password is refused, without asking the backend.
    let r = h.get(&scope, ALICE).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    let retry: u64 = r
        .header("retry-after")
        .expect("429 carries Retry-After")
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "Retry-After {retry}");
    // Other spellings of the account, and the POST form, are limited too.
    h.get(&scope, Some(("ALICE", ALICE_PW)))
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    h.post(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", ALICE_PW),
        ("service", SERVICE),
    ])
    .await
    .assert_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    assert_eq!(h.backend.authentications(), 6, "the backend is not called");

    // Another account from the same address is not affected.
    h.get(&scope, BOB).await.ok();
    // Nor are anonymous requests.
    h.get(&scope, None).await.ok();
}

#[tokio::test]
async fn failed_logins_rate_limit_the_address() {
    let h = start(Options {
        limits: RateLimitConfig {
            max_failures_per_account: 0,
            max_failures_per_ip: 4,
            window_secs: 60,
            max_tracked: 100,
        },
        ..Options::default()
    })
    .await;
    let scope = scope_params(&["repository:team/x:pull"]);
    // Guessing at four different accounts from one address.
    for user in ["carol", "dave", "erin", "frank"] {
        h.get(&scope, Some((user, "guess")))
            .await
            .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    assert_eq!(h.backend.authentications(), 4);
    let r = h.get(&scope, BOB).await;
    r.assert_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    assert!(r.header("retry-after").is_some());
    assert_eq!(h.backend.authentications(), 4, "the backend is not called");
}

/// Concurrent guesses: each waits for the attempts in flight, so no more
/// than the limit reach the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_guesses_do_not_pass_the_limit() {
    let h = start(Options {
        limits: RateLimitConfig {
            max_failures_per_account: 3,
            max_failures_per_ip: 0,
            window_secs: 60,
            max_tracked: 100,
        },
        ..Options::default()
    })
    .await;
    h.backend.latency_ms.store(30, Ordering::SeqCst);
    let scope = scope_params(&["repository:alice/app:pull"]);
    let guesses = (0..20).map(|i| {
        let (h, scope) = (&h, &scope);
        async move {
            let pw = format!("guess-{i}");
            h.get(scope, Some(("alice", pw.as_str()))).await.status
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    let count = |s: StatusCode| statuses.iter().filter(|&&x| x == s).count();
    assert_eq!(h.backend.authentications(), 3, "{statuses:?}");
    assert_eq!(count(StatusCode::UNAUTHORIZED), 3, "{statuses:?}");
    assert_eq!(count(StatusCode::TOO_MANY_REQUESTS), 17, "{statuses:?}");
    assert!(h.backend.max_in_flight.load(Ordering::SeqCst) <= 3);
    assert_eq!(h.audit.lines().len(), 20);

    // The same from many accounts, against the per-address limit.
    let h = start(Options {
        limits: RateLimitConfig {
            max_failures_per_account: 0,
            max_failures_per_ip: 4,
            window_secs: 60,
            max_tracked: 100,
        },
        ..Options::default()
    })
    .await;
    h.backend.latency_ms.store(30, Ordering::SeqCst);
    let guesses = (0..20).map(|i| {
        let (h, scope) = (&h, &scope);
        async move {
            let user = format!("user{i}");
            h.get(scope, Some((user.as_str(), "guess"))).await.status
        }
    });
    let statuses = futures_util::future::join_all(guesses).await;
    assert_eq!(h.backend.authentications(), 4, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .all(|s| [StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(s))
    );
}

/// Concurrent logins with the right password all succeed: they wait for
/// each other rather than being refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_all_succeed() {
    let h = start(Options {
        limits: RateLimitConfig {
            max_failures_per_account: 3,
            max_failures_per_ip: 5,
            window_secs: 60,
            max_tracked: 100,
        },
        ..Options::default()
    })
    .await;
    h.backend.latency_ms.store(10, Ordering::SeqCst);
    let scope = scope_params(&["repository:alice/app:pull"]);
    let started = Instant::now();
    let logins = (0..24).map(|i| {
        let (h, scope) = (&h, &scope);
        async move {
            let who = if i % 2 == 0 { ALICE } else { BOB };
            h.get(scope, who).await.status
        }
    });
    let statuses = futures_util::future::join_all(logins).await;
    assert!(
        statuses.iter().all(|&s| s == StatusCode::OK),
        "{statuses:?}"
    );
    assert_eq!(h.backend.authentications(), 24);
    assert!(h.backend.max_in_flight.load(Ordering::SeqCst) <= 5);
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // A backend that is down ends attempts without counting them.
    h.backend.set_down(true);
    let failing = (0..10).map(|_| {
        let (h, scope) = (&h, &scope);
        async move { h.get(scope, ALICE).await.status }
    });
    let statuses = futures_util::future::join_all(failing).await;
    assert!(
        statuses
            .iter()
            .all(|&s| s == StatusCode::SERVICE_UNAVAILABLE),
        "{statuses:?}"
    );
    h.backend.set_down(false);
    h.get(&scope, ALICE).await.ok();
}

// ---------------------------------------------------------------------------
// The backend is down

#[tokio::test]
async fn backend_down_is_503_promptly() {
    let h = start(Options {
        limits: RateLimitConfig {
            max_failures_per_account: 2,
            max_failures_per_ip: 2,
            window_secs: 60,
            max_tracked: 100,
        },
        ..Options::default()
    })
    .await;
    h.backend.set_down(true);
    let scope = scope_params(&["repository:alice/app:pull"]);
    let started = Instant::now();
    for _ in 0..3 {
        h.get(&scope, ALICE)
            .await
            .assert_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
    }
    // Anonymous requests need the project directory.
    h.get(&scope, None)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
    h.post(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", ALICE_PW),
        ("service", SERVICE),
    ])
    .await
    .assert_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // An unavailable backend is not a failed login: back up, alice logs in.
    h.backend.set_down(false);
    let r = h.get(&scope, ALICE).await;
    assert_eq!(
        h.access(r.ok().token()).await,
        json!([repo("alice/app", &["pull"])])
    );
}

// ---------------------------------------------------------------------------
// The audit log

/// Checks the common shape of an audit line.
fn check_line(line: &Value, outcome: &str, http_method: &str) {
    assert_eq!(line["outcome"], outcome, "{line}");
    assert_eq!(line["client_ip"], "127.0.0.1", "{line}");
    assert_eq!(line["service"], SERVICE, "{line}");
    assert_eq!(line["http_method"], http_method, "{line}");
    let t = line["time"].as_str().unwrap();
    time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).unwrap();
    for key in [
        "account",
        "user_id",
        "username",
        "domain",
        "auth_method",
        "application_credential_id",
        "requested",
        "granted",
    ] {
        assert!(line.get(key).is_some(), "{key} missing: {line}");
    }
}

#[tokio::test]
async fn audit_one_line_per_request() {
    let h = start(Options {
        limits: RateLimitConfig {
            max_failures_per_account: 2,
            max_failures_per_ip: 0,
            window_secs: 60,
            max_tracked: 100,
        },
        ..Options::default()
    })
    .await;
    let mut secrets: Vec<String> = vec![ALICE_PW.into(), BOB_PW.into(), AC_SECRET.into()];
    let mut seen = 0;
    // The one line the last request wrote.
    let next = |seen: &mut usize| -> Value {
        let lines = h.audit.lines();
        assert_eq!(lines.len(), *seen + 1, "exactly one line per request");
        *seen += 1;
        lines.last().unwrap().clone()
    };

    // Granted, with less than asked.
    let r = h
        .get(
            &scope_params(&[
                "repository:alice/app:pull,push",
                "repository:team/x:pull,push,delete",
            ]),
            ALICE,
        )
        .await;
    secrets.push(r.ok().token().to_owned());
    let line = next(&mut seen);
    check_line(&line, "granted", "GET");
    assert_eq!(line["account"], "alice");
    assert_eq!(line["user_id"], "u-alice");
    assert_eq!(line["username"], "alice");
    assert_eq!(line["domain"], "Default");
    assert_eq!(line["auth_method"], "password");
    assert_eq!(
        line["requested"],
        json!([
            "repository:alice/app:pull,push",
            "repository:team/x:pull,push,delete"
        ])
    );
    assert_eq!(
        line["granted"],
        json!([
            repo("alice/app", &["pull", "push"]),
            repo("team/x", &["pull", "push"])
        ])
    );

    // Granted nothing is still granted.
    h.get(&scope_params(&["repository:alice/app:delete"]), BOB)
        .await
        .ok();
    let line = next(&mut seen);
    check_line(&line, "granted", "GET");
    assert_eq!(line["account"], "bob");
    assert_eq!(line["granted"], json!([]));

    // Invalid credentials.
    h.get(
        &scope_params(&["repository:alice/app:pull"]),
        Some(("alice", "wrong-guess-1")),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    secrets.push("wrong-guess-1".into());
    let line = next(&mut seen);
    check_line(&line, "invalid_credentials", "GET");
    assert_eq!(line["account"], "alice");
    assert_eq!(line["user_id"], Value::Null);
    assert_eq!(line["requested"], json!(["repository:alice/app:pull"]));
    assert_eq!(line["granted"], json!([]));
    h.post(&[
        ("grant_type", "password"),
        ("username", "alice"),
        ("password", "wrong-guess-2"),
        ("service", SERVICE),
    ])
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    secrets.push("wrong-guess-2".into());
    let line = next(&mut seen);
    check_line(&line, "invalid_credentials", "POST");
    assert_eq!(line["account"], "alice");

    // Rate limited.
    h.get(&scope_params(&["repository:alice/app:pull"]), ALICE)
        .await
        .assert_error(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    let line = next(&mut seen);
    check_line(&line, "rate_limited", "GET");
    assert_eq!(line["account"], "alice");
    assert_eq!(line["requested"], json!(["repository:alice/app:pull"]));

    // Unavailable.
    h.backend.set_down(true);
    h.get(&scope_params(&["repository:team/x:pull"]), BOB)
        .await
        .assert_error(StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
    h.backend.set_down(false);
    let line = next(&mut seen);
    check_line(&line, "unavailable", "GET");
    assert_eq!(line["account"], "bob");
    assert_eq!(line["requested"], json!(["repository:team/x:pull"]));

    // Denied: another service.
    h.get(
        &[
            ("service", "other.registry"),
            ("scope", "repository:team/x:pull"),
        ],
        BOB,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "UNSUPPORTED");
    let line = next(&mut seen);
    check_line(&line, "denied", "GET");
    assert_eq!(line["account"], "bob");
    assert_eq!(line["requested"], json!(["repository:team/x:pull"]));
    assert_eq!(line["granted"], json!([]));

    // Anonymous.
    h.get(&scope_params(&["repository:pubproj/x:pull"]), None)
        .await
        .ok();
    let line = next(&mut seen);
    check_line(&line, "granted", "GET");
    assert_eq!(line["account"], Value::Null);
    assert_eq!(line["user_id"], Value::Null);

    // An application credential.
    let ac_user = format!("applicationcredential-{AC_ID}");
    let r = h
        .get(
            &scope_params(&["repository:team/x:pull"]),
            Some((&ac_user, AC_SECRET)),
        )
        .await;
    secrets.push(r.ok().token().to_owned());
    let line = next(&mut seen);
    check_line(&line, "granted", "GET");
    assert_eq!(line["account"], ac_user);
    assert_eq!(line["auth_method"], "application_credential");
    assert_eq!(line["application_credential_id"], AC_ID);

    // A login with a refresh token, then its use.
    let r = h
        .post(&[
            ("grant_type", "password"),
            ("username", "bob"),
            ("password", BOB_PW),
            ("service", SERVICE),
            ("client_id", "docker"),
            ("access_type", "offline"),
        ])
        .await;
    r.ok();
    let refresh = r.body["refresh_token"].as_str().unwrap().to_owned();
    secrets.push(r.token().to_owned());
    secrets.push(refresh.clone());
    let line = next(&mut seen);
    check_line(&line, "granted", "POST");
    assert_eq!(line["account"], "bob");
    let r = h
        .post(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", "docker"),
            ("service", SERVICE),
            ("scope", "repository:team/x:pull"),
        ])
        .await;
    secrets.push(r.ok().token().to_owned());
    let line = next(&mut seen);
    check_line(&line, "granted", "POST");
    assert_eq!(line["account"], "bob");
    assert_eq!(line["auth_method"], "refresh_token");
    assert_eq!(line["granted"], json!([repo("team/x", &["pull"])]));
    // A refresh with the wrong client.
    h.post(&[
        ("grant_type", "refresh_token"),
        ("refresh_token", &refresh),
        ("client_id", "someone-else"),
    ])
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let line = next(&mut seen);
    check_line(&line, "invalid_credentials", "POST");

    // Requests refused before authentication are audited too.
    h.get_raw(
        &format!("service={SERVICE}&scope=repository:alice/app:pull"),
        Some("Basic !!!"),
    )
    .await
    .assert_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let line = next(&mut seen);
    check_line(&line, "invalid_credentials", "GET");
    assert_eq!(line["requested"], json!(["repository:alice/app:pull"]));
    h.get(
        &scope_params(&["nonsense repository:team/x:pull", "repository:team/y:push"]),
        BOB,
    )
    .await
    .assert_error(StatusCode::BAD_REQUEST, "UNSUPPORTED");
    let line = next(&mut seen);
    check_line(&line, "denied", "GET");
    // The scopes that parse are recorded.
    assert_eq!(
        line["requested"],
        json!(["repository:team/x:pull", "repository:team/y:push"])
    );
    assert_eq!(line["granted"], json!([]));
    h.post(&[
        ("grant_type", "client_credentials"),
        ("client_secret", "cs-secret"),
    ])
    .await
    .assert_error(StatusCode::BAD_REQUEST, "UNSUPPORTED");
    secrets.push("cs-secret".into());
    let line = next(&mut seen);
    check_line(&line, "denied", "POST");

    // JWKS and health are not token requests.
    h.jwks().await.ok();
    let health = h.client.get(h.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(h.audit.lines().len(), seen);

    // No line holds a password, a secret or a token.
    let text = h.audit.text();
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "{secret:?} in the audit log"
        );
    }
    let b64_alice = base64::engine::general_purpose::STANDARD.encode(format!("alice:{ALICE_PW}"));
    assert!(!text.contains(&b64_alice));
    assert!(!text.contains("berth-rt-"), "no refresh token");
    assert!(!text.contains("eyJ"), "no JWT");
}

// ---------------------------------------------------------------------------
// JWKS

#[tokio::test]
async fn jwks_publishes_the_signing_key() {
    let h = start(Options::default()).await;
    let r = h.jwks().await;
    r.ok();
    assert!(
        r.header("content-type")
            .is_some_and(|c| c.starts_with("application/json"))
    );
    let cache = r.header("cache-control").expect("Cache-Control");
    assert!(cache.contains("max-age="), "{cache}");
    let keys = r.body["keys"].as_array().unwrap();
    assert!(!keys.is_empty());
    for k in keys {
        assert!(k["kid"].is_string(), "{k}");
        assert!(k["kty"].is_string(), "{k}");
        assert!(k.get("d").is_none(), "a private key in the JWKS: {k}");
    }
    let token = h.get(&scope_params(&[]), ALICE).await;
    let kid = jsonwebtoken::decode_header(token.ok().token())
        .unwrap()
        .kid
        .unwrap();
    assert!(keys.iter().any(|k| k["kid"] == kid.as_str()));
    // And the token verifies with it.
    h.verify(token.token()).await;
    // A token from another key store does not verify with this JWKS.
    let other = start(Options::default()).await;
    let foreign = other.get(&scope_params(&[]), ALICE).await;
    let foreign_kid = jsonwebtoken::decode_header(foreign.ok().token())
        .unwrap()
        .kid
        .unwrap();
    assert!(!keys.iter().any(|k| k["kid"] == foreign_kid.as_str()));
}
