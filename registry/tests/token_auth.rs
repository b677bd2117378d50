//! `--auth token` over real HTTP: tokens minted by berth-identity's
//! KeyStore/TokenIssuer are enforced per operation; refused requests get a
//! Bearer challenge and write nothing; forged, expired and misaddressed
//! tokens are `invalid_token`; an unknown key triggers a (rate-limited)
//! refetch of the key set.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use berth_auth::{Access, Action, Scope};
use berth_identity::keys::{KeyOptions, KeyStore};
use berth_identity::token::{DEFAULT_TOKEN_LIFETIME, TokenIssuer};
use berth_registry::auth::{KeySet, Verifier};
use berth_registry::storage::FsStore;
use berth_registry::{KeyRefetch, Registry, RegistryConfig, TokenAuth};
use common::{
    OCI_CONFIG, OCI_LAYER, OCI_MANIFEST, bytes, desc, files, header, http_client, image_manifest,
};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};

const ISS: &str = "berth-identity";
const AUD: &str = "registry.test";
const REALM: &str = "https://auth.test/token";

const PULL: &[Action] = &[Action::Pull];
const PUSH: &[Action] = &[Action::Pull, Action::Push];
const DELETE: &[Action] = &[Action::Delete];

/// A token service (key store and issuer) in a tempdir.
struct Issuer {
    _dir: tempfile::TempDir,
    keys: Arc<KeyStore>,
    issuer: TokenIssuer,
}

fn issuer(iss: &str, aud: &str) -> Issuer {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = Arc::new(KeyStore::open(dir.path(), KeyOptions::default()).expect("key store"));
    let issuer = TokenIssuer::new(keys.clone(), iss.into(), aud.into(), DEFAULT_TOKEN_LIFETIME);
    Issuer {
        _dir: dir,
        keys,
        issuer,
    }
}

impl Issuer {
    fn token(&self, grants: &[(&str, &[Action])]) -> String {
        let access = grants
            .iter()
            .map(|(name, actions)| Access::from(&Scope::repository(name, actions)))
            .collect();
        self.issuer.issue("alice", access).expect("issue").token
    }

    fn catalog_token(&self) -> String {
        let access = vec![Access {
            kind: "registry".into(),
            name: "catalog".into(),
            actions: vec!["*".into()],
        }];
        self.issuer.issue("admin", access).expect("issue").token
    }

    /// Signs arbitrary claims with the current signing key.
    fn sign(&self, claims: &Value) -> String {
        self.keys
            .signing_key()
            .expect("signing key")
            .sign(claims)
            .expect("sign")
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn claims(iss: &str, aud: &str, exp: i64, name: &str) -> Value {
    json!({"iss": iss, "sub": "alice", "aud": aud, "exp": exp, "nbf": exp - 300,
        "iat": exp - 300, "jti": "j",
        "access": [{"type": "repository", "name": name, "actions": ["pull", "push"]}]})
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

/// A registry with `--auth token`, served in-process on loopback.
struct Server {
    _root: tempfile::TempDir,
    store: PathBuf,
    base: String,
    client: reqwest::Client,
    issuer: Issuer,
    refetches: Arc<AtomicUsize>,
    /// What the refetch callback returns.
    published: Arc<Mutex<Value>>,
}

async fn start() -> Server {
    let issuer = issuer(ISS, AUD);
    let jwks = issuer.keys.jwks();
    let root = tempfile::tempdir().expect("tempdir");
    let store = root.path().join("store");
    std::fs::create_dir_all(&store).expect("store dir");
    let registry = Arc::new(Registry::new(
        Arc::new(FsStore::open(&store).expect("open store")),
        RegistryConfig::default(),
    ));
    let verifier = Verifier::new(KeySet::from_jwks(&jwks).expect("key set"), ISS, AUD);
    let refetches = Arc::new(AtomicUsize::new(0));
    let published = Arc::new(Mutex::new(jwks));
    let refetch: KeyRefetch = {
        let refetches = refetches.clone();
        let published = published.clone();
        Arc::new(move || {
            refetches.fetch_add(1, Ordering::SeqCst);
            let jwks = published.lock().expect("published").clone();
            Box::pin(async move { KeySet::from_jwks(&jwks).ok() })
        })
    };
    let auth = Arc::new(TokenAuth::new(verifier, REALM, AUD).with_refetch(refetch));
    let app = berth_registry::router_with_auth(registry, Some(auth));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("serve");
    });
    Server {
        _root: root,
        store,
        base: format!("http://{addr}"),
        client: http_client(),
        issuer,
        refetches,
        published,
    }
}

impl Server {
    fn req(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let rb = self.client.request(method, url);
        match token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    fn written(&self) -> BTreeSet<PathBuf> {
        files(&self.store)
    }

    /// POST, PATCH, PUT of one blob with `token`: the final response.
    async fn push_blob_chunked(&self, repo: &str, data: &[u8], token: &str) -> Response {
        let resp = send(self.req(
            Method::POST,
            &format!("/v2/{repo}/blobs/uploads/"),
            Some(token),
        ))
        .await;
        if resp.status() != StatusCode::ACCEPTED {
            return resp;
        }
        let location = header(&resp, "location").expect("location");
        let resp = send(
            self.req(Method::PATCH, &location, Some(token))
                .header("content-type", "application/octet-stream")
                .body(data.to_vec()),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let location = header(&resp, "location").expect("location");
        let sep = if location.contains('?') { '&' } else { '?' };
        let digest = common::sha256(data);
        send(self.req(
            Method::PUT,
            &format!("{location}{sep}digest={digest}"),
            Some(token),
        ))
        .await
    }

    /// Pushes a config, a layer and a manifest to `repo:tag`.
    async fn push_image(&self, repo: &str, tag: &str, token: &str) -> Vec<u8> {
        let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
        let layer = bytes(5000, 7);
        for blob in [&config, &layer] {
            let resp = self.push_blob_chunked(repo, blob, token).await;
            assert_eq!(resp.status(), StatusCode::CREATED);
        }
        let m = image_manifest(
            OCI_MANIFEST,
            desc(OCI_CONFIG, &config),
            vec![desc(OCI_LAYER, &layer)],
            json!({}),
        );
        let resp = send(
            self.req(
                Method::PUT,
                &format!("/v2/{repo}/manifests/{tag}"),
                Some(token),
            )
            .header("content-type", OCI_MANIFEST)
            .body(m.clone()),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        m
    }
}

async fn send(rb: RequestBuilder) -> Response {
    rb.send().await.expect("request failed")
}

fn challenge(scope: Option<&str>, error: Option<&str>) -> String {
    let mut c = format!("Bearer realm=\"{REALM}\",service=\"{AUD}\"");
    if let Some(s) = scope {
        c.push_str(&format!(",scope=\"{s}\""));
    }
    if let Some(e) = error {
        c.push_str(&format!(",error=\"{e}\""));
    }
    c
}

/// Asserts a 401 with `code` and exactly `challenge` in `WWW-Authenticate`.
async fn expect_401(resp: Response, code: &str, challenge: &str) {
    let www = header(&resp, "www-authenticate");
    common::expect_error(resp, StatusCode::UNAUTHORIZED, code).await;
    assert_eq!(www.as_deref(), Some(challenge));
}

#[tokio::test]
async fn push_and_pull_with_the_right_token() {
    let srv = start().await;
    let push = srv.issuer.token(&[("alice/app", PUSH)]);
    let m = srv.push_image("alice/app", "v1", &push).await;
    let pull = srv.issuer.token(&[("alice/app", PULL)]);
    let resp = send(srv.req(Method::GET, "/v2/alice/app/manifests/v1", Some(&pull))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.expect("body").to_vec(), m);
    let layer = bytes(5000, 7);
    let path = format!("/v2/alice/app/blobs/{}", common::sha256(&layer));
    let resp = send(srv.req(Method::GET, &path, Some(&pull))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.expect("body").to_vec(), layer);
    let resp = send(srv.req(Method::HEAD, &path, Some(&pull))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = send(srv.req(Method::GET, "/v2/alice/app/tags/list", Some(&pull))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // `/v2/` needs only a valid token, whatever it grants.
    let resp = send(srv.req(Method::GET, "/v2/", Some(&pull))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // Monolithic POST ?digest=.
    let data = bytes(300, 9);
    let resp = send(
        srv.req(
            Method::POST,
            &format!(
                "/v2/alice/app/blobs/uploads/?digest={}",
                common::sha256(&data)
            ),
            Some(&push),
        )
        .body(data),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    // /healthz stays open.
    let resp = send(srv.req(Method::GET, "/healthz", None)).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn no_token_gets_the_challenge() {
    let srv = start().await;
    let resp = send(srv.req(Method::GET, "/v2/", None)).await;
    expect_401(resp, "UNAUTHORIZED", &challenge(None, None)).await;
    let resp = send(srv.req(Method::GET, "/v2/alice/app/manifests/v1", None)).await;
    expect_401(
        resp,
        "UNAUTHORIZED",
        &challenge(Some("repository:alice/app:pull"), None),
    )
    .await;
    let data = bytes(1000, 1);
    let resp = send(
        srv.req(
            Method::POST,
            &format!(
                "/v2/alice/app/blobs/uploads/?digest={}",
                common::sha256(&data)
            ),
            None,
        )
        .body(data),
    )
    .await;
    // The small body was read: the connection stays open.
    assert_eq!(header(&resp, "connection"), None);
    expect_401(
        resp,
        "UNAUTHORIZED",
        &challenge(Some("repository:alice/app:pull,push"), None),
    )
    .await;
    let resp = send(srv.req(Method::DELETE, "/v2/alice/app/manifests/v1", None)).await;
    expect_401(
        resp,
        "UNAUTHORIZED",
        &challenge(Some("repository:alice/app:delete"), None),
    )
    .await;
    let resp = send(srv.req(Method::GET, "/v2/_catalog", None)).await;
    expect_401(
        resp,
        "UNAUTHORIZED",
        &challenge(Some("registry:catalog:*"), None),
    )
    .await;
    // Not a bearer token.
    let resp = send(
        srv.req(Method::GET, "/v2/", None)
            .basic_auth("alice", Some("secret")),
    )
    .await;
    expect_401(resp, "UNAUTHORIZED", &challenge(None, None)).await;
    // A path that is no endpoint needs a valid token too.
    let resp = send(srv.req(Method::GET, "/v2/nothing", None)).await;
    expect_401(resp, "UNAUTHORIZED", &challenge(None, None)).await;
    assert!(srv.written().is_empty(), "{:?}", srv.written());
}

/// A request refused before any handler read its body: a small body (up to
/// the largest manifest) is read first, however slowly it comes within the
/// limit, and the answer follows on a connection that stays open; a larger
/// one is not read, and the answer says `Connection: close`.
#[tokio::test]
async fn refused_small_bodies_are_read_before_the_answer() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let srv = start().await;
    let addr = srv.base.trim_start_matches("http://").to_owned();
    let manifest = image_manifest(OCI_MANIFEST, desc(OCI_CONFIG, b"{}"), vec![], json!({}));
    let put = format!(
        "PUT /v2/alice/app/manifests/v1 HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: {OCI_MANIFEST}\r\nContent-Length: {}\r\n\r\n",
        manifest.len()
    );
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    conn.write_all(put.as_bytes()).await.unwrap();
    let (first, rest) = manifest.split_at(manifest.len() / 2);
    conn.write_all(first).await.unwrap();
    // No answer while the body is still coming...
    let mut buf = vec![0u8; 64 << 10];
    let early = tokio::time::timeout(Duration::from_millis(300), conn.read(&mut buf)).await;
    assert!(early.is_err(), "answered before the body was complete");
    conn.write_all(rest).await.unwrap();
    // ... then the 401, without `Connection: close`.
    let n = conn.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    // The same connection serves the next request.
    conn.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let n = conn.read(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // A client waiting for `100 Continue` is not asked for its body: the
    // answer comes at once.
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let waiting = put.replace("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n");
    conn.write_all(waiting.as_bytes()).await.unwrap();
    let n = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut buf))
        .await
        .expect("an answer without the body")
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]).to_lowercase();
    assert!(head.starts_with("http/1.1 401"), "{head}");
    assert!(head.contains("connection: close"), "{head}");

    // Larger than a manifest may be: not read, and the connection closes.
    let big = bytes(5 << 20, 9);
    let resp = send(
        srv.req(Method::PUT, "/v2/alice/app/manifests/v1", None)
            .header("content-type", OCI_MANIFEST)
            .body(big),
    )
    .await;
    assert_eq!(header(&resp, "connection").as_deref(), Some("close"));
    expect_401(
        resp,
        "UNAUTHORIZED",
        &challenge(Some("repository:alice/app:pull,push"), None),
    )
    .await;
    assert!(srv.written().is_empty(), "{:?}", srv.written());
}

#[tokio::test]
async fn a_token_for_another_repository_writes_nothing() {
    let srv = start().await;
    let other = srv.issuer.token(&[("bob/app", PUSH)]);
    let data = bytes(2000, 3);
    let digest = common::sha256(&data);
    let resp = send(
        srv.req(
            Method::POST,
            &format!("/v2/alice/app/blobs/uploads/?digest={digest}"),
            Some(&other),
        )
        .body(data.clone()),
    )
    .await;
    assert_eq!(header(&resp, "connection"), None);
    expect_401(
        resp,
        "DENIED",
        &challenge(
            Some("repository:alice/app:pull,push"),
            Some("insufficient_scope"),
        ),
    )
    .await;
    let resp = srv.push_blob_chunked("alice/app", &data, &other).await;
    expect_401(
        resp,
        "DENIED",
        &challenge(
            Some("repository:alice/app:pull,push"),
            Some("insufficient_scope"),
        ),
    )
    .await;
    let resp = send(
        srv.req(Method::PUT, "/v2/alice/app/manifests/v1", Some(&other))
            .header("content-type", OCI_MANIFEST)
            .body(b"{}".to_vec()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(srv.written().is_empty(), "{:?}", srv.written());
    let resp = send(srv.req(
        Method::GET,
        &format!("/v2/alice/app/blobs/{digest}"),
        Some(&other),
    ))
    .await;
    expect_401(
        resp,
        "DENIED",
        &challenge(
            Some("repository:alice/app:pull"),
            Some("insufficient_scope"),
        ),
    )
    .await;
}

#[tokio::test]
async fn pull_only_cannot_push_or_delete() {
    let srv = start().await;
    let push = srv.issuer.token(&[("alice/app", PUSH)]);
    srv.push_image("alice/app", "v1", &push).await;
    let before = srv.written();
    let pull = srv.issuer.token(&[("alice/app", PULL)]);
    let data = bytes(700, 4);
    let resp = srv.push_blob_chunked("alice/app", &data, &pull).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = send(srv.req(Method::DELETE, "/v2/alice/app/manifests/v1", Some(&pull))).await;
    expect_401(
        resp,
        "DENIED",
        &challenge(
            Some("repository:alice/app:delete"),
            Some("insufficient_scope"),
        ),
    )
    .await;
    // Push access is no delete access either.
    let resp = send(srv.req(Method::DELETE, "/v2/alice/app/manifests/v1", Some(&push))).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(srv.written(), before);
    let resp = send(srv.req(Method::GET, "/v2/alice/app/manifests/v1", Some(&pull))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    // With delete, the delete goes through (or is refused by the
    // registry's own policy, but not by auth).
    let del = srv.issuer.token(&[("alice/app", DELETE)]);
    let resp = send(srv.req(Method::DELETE, "/v2/alice/app/manifests/v1", Some(&del))).await;
    assert_ne!(resp.status(), StatusCode::UNAUTHORIZED);
}

/// Tokens that must all be `invalid_token`.
fn forged_tokens(srv: &Server) -> Vec<(&'static str, String)> {
    let name = "alice/app";
    let good = srv.issuer.token(&[(name, PUSH)]);
    let parts: Vec<&str> = good.split('.').collect();
    let key = srv.issuer.keys.signing_key().expect("signing key");
    let mut out = vec![
        (
            "expired",
            srv.issuer.sign(&claims(ISS, AUD, now() - 3600, name)),
        ),
        (
            "wrong aud",
            srv.issuer
                .sign(&claims(ISS, "other.registry", now() + 300, name)),
        ),
        (
            "wrong iss",
            srv.issuer.sign(&claims("evil", AUD, now() + 300, name)),
        ),
    ];
    // alg: none, with and without the original signature.
    let none = b64(
        &serde_json::to_vec(&json!({"alg": "none", "typ": "JWT", "kid": key.kid()})).expect("json"),
    );
    out.push(("alg none", format!("{none}.{}.", parts[1])));
    out.push((
        "alg none, signed",
        format!("{none}.{}.{}", parts[1], parts[2]),
    ));
    // HS256 with the public key (its JWK and certificate) as the secret.
    for secret in [
        serde_json::to_vec(&key.jwk()).expect("json"),
        key.certificate_pem().as_bytes().to_vec(),
    ] {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(key.kid().to_owned());
        let token = jsonwebtoken::encode(
            &header,
            &claims(ISS, AUD, now() + 300, name),
            &jsonwebtoken::EncodingKey::from_secret(&secret),
        )
        .expect("encode");
        out.push(("hs256 with the public key", token));
    }
    // Signed by a key the registry does not know (same iss and aud).
    let stranger = issuer(ISS, AUD);
    out.push(("unknown kid", stranger.token(&[(name, PUSH)])));
    // The access claim widened after signing.
    let mut body: Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).expect("b64")).expect("claims");
    body["access"][0]["actions"] = json!(["*"]);
    let widened = b64(&serde_json::to_vec(&body).expect("json"));
    out.push((
        "tampered access",
        format!("{}.{widened}.{}", parts[0], parts[2]),
    ));
    out.push(("garbage", "not.a.token".to_owned()));
    out
}

#[tokio::test]
async fn forged_and_misaddressed_tokens_are_invalid() {
    let srv = start().await;
    let data = bytes(1500, 5);
    let digest = common::sha256(&data);
    for (what, token) in forged_tokens(&srv) {
        let resp = send(
            srv.req(
                Method::POST,
                &format!("/v2/alice/app/blobs/uploads/?digest={digest}"),
                Some(&token),
            )
            .body(data.clone()),
        )
        .await;
        let www = header(&resp, "www-authenticate");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {text}");
        assert!(text.contains("UNAUTHORIZED"), "{what}: {text}");
        assert_eq!(
            www.as_deref(),
            Some(
                challenge(
                    Some("repository:alice/app:pull,push"),
                    Some("invalid_token")
                )
                .as_str()
            ),
            "{what}"
        );
        let resp = send(srv.req(Method::DELETE, "/v2/alice/app/manifests/v1", Some(&token))).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
        let resp = send(srv.req(Method::GET, "/v2/", Some(&token))).await;
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}");
    }
    assert!(srv.written().is_empty(), "{:?}", srv.written());
}

#[tokio::test]
async fn unknown_keys_refetch_the_key_set_at_most_every_five_seconds() {
    let srv = start().await;
    let stranger = issuer(ISS, AUD);
    let token = stranger.token(&[("alice/app", PULL)]);
    let resp = send(srv.req(Method::GET, "/v2/", Some(&token))).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(srv.refetches.load(Ordering::SeqCst), 1);
    // Within 5 s, an unknown key does not refetch again.
    let resp = send(srv.req(Method::GET, "/v2/", Some(&token))).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(srv.refetches.load(Ordering::SeqCst), 1);
    // Known keys never refetch.
    let own = srv.issuer.token(&[("alice/app", PULL)]);
    let resp = send(srv.req(Method::GET, "/v2/", Some(&own))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(srv.refetches.load(Ordering::SeqCst), 1);
    // The token service publishes the new key; after 5 s it is fetched.
    *srv.published.lock().expect("published") = stranger.keys.jwks();
    tokio::time::sleep(Duration::from_millis(5100)).await;
    let resp = send(srv.req(Method::GET, "/v2/alice/app/tags/list", Some(&token))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert_eq!(srv.refetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_mount_needs_pull_on_the_source() {
    let srv = start().await;
    let base = srv.issuer.token(&[("bob/base", PUSH)]);
    let data = bytes(4000, 6);
    let digest = common::sha256(&data);
    let resp = srv.push_blob_chunked("bob/base", &data, &base).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let before = srv.written();
    let path = format!("/v2/alice/app/blobs/uploads/?mount={digest}&from=bob/base");
    let only_target = srv.issuer.token(&[("alice/app", PUSH)]);
    let resp = send(srv.req(Method::POST, &path, Some(&only_target))).await;
    expect_401(
        resp,
        "DENIED",
        &challenge(
            Some("repository:alice/app:pull,push repository:bob/base:pull"),
            Some("insufficient_scope"),
        ),
    )
    .await;
    assert_eq!(srv.written(), before);
    let both = srv.issuer.token(&[("alice/app", PUSH), ("bob/base", PULL)]);
    let resp = send(srv.req(Method::POST, &path, Some(&both))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = send(srv.req(
        Method::HEAD,
        &format!("/v2/alice/app/blobs/{digest}"),
        Some(&both),
    ))
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_catalog_needs_registry_catalog() {
    let srv = start().await;
    let push = srv.issuer.token(&[("alice/app", PUSH)]);
    srv.push_image("alice/app", "v1", &push).await;
    let resp = send(srv.req(Method::GET, "/v2/_catalog", Some(&push))).await;
    expect_401(
        resp,
        "DENIED",
        &challenge(Some("registry:catalog:*"), Some("insufficient_scope")),
    )
    .await;
    let admin = srv.issuer.catalog_token();
    let resp = send(srv.req(Method::GET, "/v2/_catalog", Some(&admin))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v: Value = resp.json().await.expect("json");
    assert_eq!(v["repositories"], json!(["alice/app"]));
}

#[tokio::test]
async fn an_upload_continues_with_a_fresh_token() {
    let srv = start().await;
    let first = srv.issuer.token(&[("alice/app", PUSH)]);
    let resp = send(srv.req(Method::POST, "/v2/alice/app/blobs/uploads/", Some(&first))).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location").expect("location");
    let data = bytes(3000, 8);
    let resp = send(
        srv.req(Method::PATCH, &location, Some(&first))
            .body(data[..1000].to_vec()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location").expect("location");
    // A fresh token (another jti, same grant) continues and finishes it.
    let fresh = srv.issuer.token(&[("alice/app", PUSH)]);
    assert_ne!(first, fresh);
    let resp = send(
        srv.req(Method::PATCH, &location, Some(&fresh))
            .body(data[1000..].to_vec()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location").expect("location");
    let sep = if location.contains('?') { '&' } else { '?' };
    let digest = common::sha256(&data);
    // Without a token, the session cannot be finished.
    let finish = format!("{location}{sep}digest={digest}");
    let resp = send(srv.req(Method::PUT, &finish, None)).await;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = send(srv.req(Method::PUT, &finish, Some(&fresh))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = send(srv.req(
        Method::GET,
        &format!("/v2/alice/app/blobs/{digest}"),
        Some(&fresh),
    ))
    .await;
    assert_eq!(resp.bytes().await.expect("body").to_vec(), data);
}
