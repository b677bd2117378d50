//! Shared fixtures for the registry's HTTP tests: a registry served
//! in-process on an ephemeral loopback port over a temporary store, and
//! helpers to talk to it (reqwest, or raw HTTP/1.1 for paths a URL parser
//! would normalise).
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of the fixtures"
)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use berth_registry::storage::FsStore;
use berth_registry::{Registry, RegistryConfig};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// `sha256:<hex>` of `data`, computed independently of berth.
pub fn sha256(data: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    format!("sha256:{}", hex::encode(d.as_ref()))
}

/// `sha512:<hex>` of `data`.
pub fn sha512(data: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA512, data);
    format!("sha512:{}", hex::encode(d.as_ref()))
}

/// Deterministic pseudo-random bytes (xorshift), distinct per `seed`.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// The client the tests talk to a served registry with: redirects are
/// answers to check, not to follow.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// A registry served on `127.0.0.1:<ephemeral>` from a task of the test's
/// runtime. Stopped by [`Server::stop`], or with the runtime at the end of
/// the test.
pub struct Server {
    pub addr: SocketAddr,
    pub base: String,
    pub registry: Arc<Registry>,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves a registry over the store at `dir`.
    pub async fn start_at(dir: &Path, config: RegistryConfig) -> Server {
        let store = FsStore::open(dir).expect("open store");
        let registry = Arc::new(Registry::new(Arc::new(store), config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (tx, rx) = oneshot::channel::<()>();
        let app = berth_registry::router(registry.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .expect("serve");
        });
        Server {
            addr,
            base: format!("http://{addr}"),
            registry,
            client: http_client(),
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops serving: graceful shutdown (idle connections are closed),
    /// aborted if it takes more than a few seconds.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
            let _ = task.await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.req(Method::GET, path)
    }

    pub fn head(&self, path: &str) -> RequestBuilder {
        self.req(Method::HEAD, path)
    }

    pub fn put(&self, path: &str) -> RequestBuilder {
        self.req(Method::PUT, path)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.req(Method::POST, path)
    }

    pub fn patch(&self, path: &str) -> RequestBuilder {
        self.req(Method::PATCH, path)
    }

    pub fn delete(&self, path: &str) -> RequestBuilder {
        self.req(Method::DELETE, path)
    }

    /// Monolithic upload (`POST ?digest=`); returns the sha256 digest.
    pub async fn push_blob(&self, repo: &str, data: &[u8]) -> String {
        let digest = sha256(data);
        let resp = send(
            self.post(&format!("/v2/{repo}/blobs/uploads/?digest={digest}"))
                .body(data.to_vec()),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "push blob to {repo}");
        digest
    }

    /// Starts an upload session; returns its (relative) location.
    pub async fn start_upload(&self, repo: &str) -> String {
        let resp = send(self.post(&format!("/v2/{repo}/blobs/uploads/"))).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        header(&resp, "location").expect("upload Location")
    }

    /// `PUT`s a manifest; returns the response.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> Response {
        send(
            self.put(&format!("/v2/{repo}/manifests/{reference}"))
                .header("content-type", media_type)
                .body(body.to_vec()),
        )
        .await
    }

    /// `PUT`s a manifest that must be accepted; returns its digest.
    pub async fn push_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        body: &[u8],
    ) -> String {
        let resp = self.put_manifest(repo, reference, media_type, body).await;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "manifest {repo}:{reference} refused: {text}"
        );
        sha256(body)
    }

    /// Sends a hand-written HTTP/1.1 request (the path goes on the wire
    /// exactly as given).
    pub async fn raw(&self, method: &str, path: &str, body: &[u8]) -> RawResponse {
        raw_request(self.addr, method, path, &[], body).await
    }
}

/// A registry over a fresh temporary store, with the store's directory
/// nested a few levels deep so that an escape upwards stays inside `root`.
pub struct TestRegistry {
    pub root: tempfile::TempDir,
    pub store: PathBuf,
    pub srv: Server,
}

impl std::ops::Deref for TestRegistry {
    type Target = Server;
    fn deref(&self) -> &Server {
        &self.srv
    }
}

pub fn store_dir(root: &Path) -> PathBuf {
    root.join("a/b/c/store")
}

pub async fn start() -> TestRegistry {
    start_with(RegistryConfig::default()).await
}

pub async fn start_with(config: RegistryConfig) -> TestRegistry {
    let root = tempfile::tempdir().expect("tempdir");
    let store = store_dir(root.path());
    std::fs::create_dir_all(&store).expect("store dir");
    let srv = Server::start_at(&store, config).await;
    TestRegistry { root, store, srv }
}

/// Sends a request; transport errors fail the test.
pub async fn send(rb: RequestBuilder) -> Response {
    rb.send().await.expect("request failed")
}

pub fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().expect("ASCII header").to_owned())
}

/// Asserts a spec error response: status, JSON content type, and the code
/// of the first error. Returns the body.
pub async fn expect_error(resp: Response, status: StatusCode, code: &str) -> Value {
    let got = resp.status();
    let ct = header(&resp, "content-type");
    let text = resp.text().await.expect("error body");
    assert_eq!(got, status, "status (body: {text})");
    assert_eq!(
        ct.as_deref(),
        Some("application/json"),
        "error content type (body: {text})"
    );
    let v: Value = serde_json::from_str(&text).expect("JSON error body");
    assert_eq!(v["errors"][0]["code"], code, "error code in {text}");
    assert!(v["errors"][0]["message"].is_string(), "message in {text}");
    v
}

pub async fn json(resp: Response) -> Value {
    let text = resp.text().await.expect("body");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// A descriptor of `data` as `media_type`.
pub fn desc(media_type: &str, data: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": sha256(data), "size": data.len() })
}

/// An OCI image manifest (mediaType set) over a config and layers; `extra`
/// fields are merged in.
pub fn image_manifest(
    media_type: &str,
    config: Value,
    layers: Vec<Value>,
    extra: Value,
) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": config,
        "layers": layers,
    });
    merge(&mut m, extra);
    serde_json::to_vec_pretty(&m).expect("serialise manifest")
}

/// An index (OCI or Docker list) over `manifests`; `extra` merged in.
pub fn index_manifest(media_type: &str, manifests: Vec<Value>, extra: Value) -> Vec<u8> {
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "manifests": manifests,
    });
    merge(&mut m, extra);
    serde_json::to_vec(&m).expect("serialise index")
}

fn merge(m: &mut Value, extra: Value) {
    if let (Some(m), Value::Object(extra)) = (m.as_object_mut(), extra) {
        m.extend(extra);
    }
}

/// Pushes a config and one layer to `repo` and an OCI image manifest over
/// them under `reference`; returns (manifest bytes, digest).
pub async fn push_image(srv: &Server, repo: &str, reference: &str, seed: u64) -> (Vec<u8>, String) {
    let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":{seed}}}"#).into_bytes();
    let layer = bytes(1000 + seed as usize, seed);
    srv.push_blob(repo, &config).await;
    srv.push_blob(repo, &layer).await;
    let m = image_manifest(
        OCI_MANIFEST,
        desc(OCI_CONFIG, &config),
        vec![desc(OCI_LAYER, &layer)],
        json!({}),
    );
    let d = srv.push_manifest(repo, reference, OCI_MANIFEST, &m).await;
    (m, d)
}

/// Every path under `root`, relative to it.
pub fn tree(root: &Path) -> BTreeSet<PathBuf> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read_dir") {
            let path = entry.expect("dir entry").path();
            out.insert(path.strip_prefix(root).expect("under root").to_owned());
            if path.is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

/// Files under `dir` (recursively), relative to it; empty if `dir` is missing.
pub fn files(dir: &Path) -> BTreeSet<PathBuf> {
    if !dir.exists() {
        return BTreeSet::new();
    }
    tree(dir)
        .into_iter()
        .filter(|p| dir.join(p).is_file())
        .collect()
}

/// A response read off a raw connection.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// `errors[0].code` of a JSON error body.
    pub fn code(&self) -> String {
        let v: Value = serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "not a JSON error body ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        });
        v["errors"][0]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code in {v}"))
            .to_owned()
    }
}

/// Writes one HTTP/1.1 request by hand and reads the whole response
/// (`Connection: close`). `Content-Length` is the body's unless `headers`
/// declare one (to send less than declared).
pub async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> RawResponse {
    let mut conn = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
    {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    conn.write_all(req.as_bytes()).await.expect("write head");
    conn.write_all(body).await.expect("write body");
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf))
        .await
        .expect("response within 10 s")
        .expect("read response");
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("end of response head");
    let head = String::from_utf8(buf[..end].to_vec()).expect("ASCII head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = buf[end + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    RawResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size_str = std::str::from_utf8(&data[..eol]).expect("chunk size");
        let size = usize::from_str_radix(size_str.split(';').next().unwrap_or("").trim(), 16)
            .expect("hex chunk size");
        data = &data[eol + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}
