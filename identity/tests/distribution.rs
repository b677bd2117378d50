//! berth's tokens against a real Docker Distribution 2.8.2 (Debian package
//! `docker-registry`): the registry trusts the certificate bundle from
//! `KeyStore::export_bundle` and must accept berth's tokens, RS256 and
//! ES256, with exactly the access they grant, and refuse tokens from other
//! keys, expired ones and ones for another service.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use berth_auth::{Access, Action, Scope};
use berth_identity::keys::{Algorithm, KeyOptions, KeyStore};
use berth_identity::token::TokenIssuer;

const ISSUER: &str = "berth-test-issuer";
const SERVICE: &str = "berth-test-registry";

/// The `docker-registry` binary, or a failure that says how to get it.
fn docker_registry() -> PathBuf {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("docker-registry"))
            .find(|p| p.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "`docker-registry` (Docker Distribution 2.8, Debian package docker-registry) \
             is not installed: run scripts/install-test-deps"
        )
    })
}

/// A running Distribution; killed by PID when dropped.
struct Registry {
    child: Child,
    base: String,
    log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Starts Distribution on a free loopback port with token auth trusting
    /// `bundle`, and waits until it answers.
    async fn start(dir: &Path, bundle: &Path) -> Registry {
        let binary = docker_registry();
        // Distribution binds the address itself: pick a free port and
        // release it; retry if another process took it meanwhile.
        for attempt in 0..5 {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let config = dir.join(format!("config-{attempt}.yml"));
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\n\
                     log:\n  level: info\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {store}\n\
                     http:\n  addr: 127.0.0.1:{port}\n\
                     auth:\n  token:\n    realm: http://127.0.0.1:9/token\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {bundle}\n",
                    store = dir.join("store").display(),
                    bundle = bundle.display(),
                ),
            )
            .unwrap();
            let log = dir.join(format!("registry-{attempt}.log"));
            let out = std::fs::File::create(&log).unwrap();
            let child = Command::new(&binary)
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .unwrap();
            let mut registry = Registry {
                child,
                base: format!("http://127.0.0.1:{port}"),
                log,
            };
            let client = reqwest::Client::new();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Some(status) = registry.child.try_wait().unwrap() {
                    eprintln!(
                        "docker-registry exited ({status}) on attempt {attempt}:\n{}",
                        registry.log()
                    );
                    break;
                }
                if client
                    .get(format!("{}/v2/", registry.base))
                    .send()
                    .await
                    .is_ok()
                {
                    return registry;
                }
                assert!(
                    Instant::now() < deadline,
                    "docker-registry did not answer within 20 s:\n{}",
                    registry.log()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        panic!("docker-registry would not start");
    }

    async fn get(&self, path: &str, token: Option<&str>) -> (u16, String, String) {
        let mut req = reqwest::Client::new().get(format!("{}{path}", self.base));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let challenge = resp
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let body = resp.text().await.unwrap();
        (status, challenge, body)
    }
}

fn store(dir: &Path, alg: Algorithm) -> Arc<KeyStore> {
    let options = KeyOptions {
        algorithm: alg,
        // Rotated keys sign (almost) at once, so that a token of the new
        // key can be checked in the same run as one of the old key.
        publish_delay: Duration::ZERO,
        ..KeyOptions::default()
    };
    Arc::new(KeyStore::open(dir, options).unwrap())
}

fn issuer(keys: &Arc<KeyStore>, audience: &str) -> TokenIssuer {
    TokenIssuer::new(
        Arc::clone(keys),
        ISSUER.into(),
        audience.into(),
        Duration::from_secs(300),
    )
}

fn kid(token: &str) -> String {
    jsonwebtoken::decode_header(token).unwrap().kid.unwrap()
}

async fn distribution_accepts(alg: Algorithm) {
    let binary = docker_registry();
    let dir = tempfile::tempdir().unwrap();
    let keys = store(&dir.path().join("identity/keys"), alg);
    let tokens = issuer(&keys, SERVICE);
    let pull_foo_bar = vec![Access::from(&Scope::repository("foo/bar", &[Action::Pull]))];

    // A token of the first key, then a rotation: the registry started with
    // the bundle exported after it must accept tokens of both keys.
    let old_key = tokens.issue("alice", vec![]).unwrap().token;
    let rotation = keys.rotate(SystemTime::now()).unwrap();
    let pull = tokens
        .issue_at("alice", pull_foo_bar.clone(), rotation.activates)
        .unwrap()
        .token;
    assert_ne!(kid(&old_key), kid(&pull));
    assert_eq!(kid(&pull), rotation.kid);

    // Tokens the registry must refuse.
    let foreign_keys = store(&dir.path().join("foreign"), alg);
    let foreign = issuer(&foreign_keys, SERVICE)
        .issue("alice", pull_foo_bar.clone())
        .unwrap()
        .token;
    let expired = tokens
        .issue_at(
            "alice",
            pull_foo_bar.clone(),
            SystemTime::now() - Duration::from_secs(3600),
        )
        .unwrap()
        .token;
    let other_service = issuer(&keys, "another-registry")
        .issue_at("alice", pull_foo_bar.clone(), rotation.activates)
        .unwrap()
        .token;

    let bundle = dir.path().join("bundle.pem");
    let pem = keys.export_bundle();
    assert_eq!(pem.matches("BEGIN CERTIFICATE").count(), 2);
    std::fs::write(&bundle, pem).unwrap();

    let registry = Registry::start(dir.path(), &bundle).await;
    let context = |what: &str| format!("{alg} {what} ({}):\n{}", binary.display(), registry.log());

    // No token: a Bearer challenge.
    let (status, challenge, _) = registry.get("/v2/", None).await;
    assert_eq!(status, 401, "{}", context("no token"));
    assert!(challenge.starts_with("Bearer "), "{challenge}");
    assert!(
        challenge.contains(&format!("service=\"{SERVICE}\"")),
        "{challenge}"
    );

    // Valid tokens of both keys.
    let (status, _, body) = registry.get("/v2/", Some(&old_key)).await;
    assert_eq!(
        status,
        200,
        "{body} {}",
        context("token of the rotated-out key")
    );
    let (status, _, body) = registry.get("/v2/", Some(&pull)).await;
    assert_eq!(status, 200, "{body} {}", context("token of the new key"));

    // Granted access: authorized, the repository just does not exist.
    let (status, _, body) = registry.get("/v2/foo/bar/tags/list", Some(&pull)).await;
    assert_eq!(status, 404, "{body} {}", context("pull on foo/bar"));
    let errors: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(errors["errors"][0]["code"], "NAME_UNKNOWN", "{body}");

    // Access not granted: insufficient_scope.
    let (status, challenge, body) = registry.get("/v2/foo/other/tags/list", Some(&pull)).await;
    assert_eq!(status, 401, "{body} {}", context("pull on foo/other"));
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert!(
        challenge.contains("scope=\"repository:foo/other:pull\""),
        "{challenge}"
    );

    // Refused tokens.
    for (what, token) in [
        ("a key not in the bundle", &foreign),
        ("an expired token", &expired),
        ("a token for another service", &other_service),
    ] {
        let (status, challenge, body) = registry.get("/v2/", Some(token)).await;
        assert_eq!(status, 401, "{body} {}", context(what));
        assert!(challenge.contains("invalid_token"), "{what}: {challenge}");
        let (status, _, _) = registry.get("/v2/foo/bar/tags/list", Some(token)).await;
        assert_eq!(status, 401, "{}", context(what));
    }
    drop(registry);
}

#[tokio::test]
async fn distribution_2_8_accepts_rs256_tokens() {
    distribution_accepts(Algorithm::Rs256).await;
}

#[tokio::test]
async fn distribution_2_8_accepts_es256_tokens() {
    distribution_accepts(Algorithm::Es256).await;
}
