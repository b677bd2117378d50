//! The HTTP edge: one axum router for the OCI Distribution v1.1 API.
//!
//! `/v2/{*rest}` is parsed once into an [`route::Endpoint`] and dispatched on
//! endpoint and method; every failure becomes the spec's JSON error through
//! [`error::ApiError`]. Handlers only translate HTTP to [`Registry`] calls.
//!
//! With a [`token::TokenAuth`] ([`router_with_auth`]), every `/v2` request
//! must carry a bearer token granting its access, checked after the
//! endpoint is parsed and before the handler reads the body (a refused
//! request's small body is read and dropped, see `discard_body`).

pub mod error;
pub mod route;
pub mod token;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, Version, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use self::error::{ApiError, Code};
use self::route::{Endpoint, RouteError};
use self::token::TokenAuth;
use crate::digest::Digest;
use crate::manifest::{self, OCI_INDEX};
use crate::name::RepoName;
use crate::service::{BlobData, Page, Reference, Registry};
use crate::storage::{BlobRead, UploadId};

type ApiResult = Result<Response, ApiError>;

/// Builds the registry's router, without authentication.
pub fn router(registry: Arc<Registry>) -> Router {
    router_with_auth(registry, None)
}

/// Builds the registry's router; with `auth`, every `/v2` request needs a
/// bearer token granting its access (`/healthz` stays open).
pub fn router_with_auth(registry: Arc<Registry>, auth: Option<Arc<TokenAuth>>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v2", any(dispatch))
        .route("/v2/", any(dispatch))
        .route("/v2/{*rest}", any(dispatch))
        .with_state(AppState { registry, auth })
}

/// What every request handler shares.
#[derive(Clone)]
struct AppState {
    registry: Arc<Registry>,
    auth: Option<Arc<TokenAuth>>,
}

const API_VERSION: HeaderValue = HeaderValue::from_static("registry/2.0");
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
const DOCKER_UPLOAD_UUID: &str = "docker-upload-uuid";
const OCI_SUBJECT: &str = "oci-subject";
const OCI_FILTERS_APPLIED: &str = "oci-filters-applied";
/// Size of the reads that feed a blob download.
const DOWNLOAD_CHUNK: usize = 256 << 10;

async fn dispatch(
    State(state): State<AppState>,
    method: Method,
    version: Version,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || content_length(&headers).is_some_and(|l| l > 0);
    let rest = uri.path().strip_prefix("/v2").unwrap_or("");
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let route = route::parse(rest);
    let refused = match &state.auth {
        Some(auth) => auth
            .check(route.as_ref().ok(), &method, &uri, &headers)
            .await
            .err(),
        None => None,
    };
    let (result, unread) = match (refused, route) {
        (None, Ok(ep)) => (
            handle(&state.registry, ep, &method, &uri, &headers, body).await,
            // A handler's error may come before or during its reading.
            has_body,
        ),
        // Refused by the token check, or else the path did not parse.
        (refused, route) => {
            let err = refused.unwrap_or_else(|| match route {
                Err(RouteError::NameInvalid) => ApiError::new(Code::NameInvalid),
                // `Err(NotFound)`; `Ok` cannot get here unrefused.
                _ => ApiError::new(Code::Unsupported)
                    .status(StatusCode::NOT_FOUND)
                    .message("no such endpoint"),
            });
            let limit = state.registry.config().max_manifest_size as u64;
            (
                Err(err),
                has_body && !discard_body(body, &headers, limit).await,
            )
        }
    };
    let mut resp = result.unwrap_or_else(IntoResponse::into_response);
    resp.headers_mut()
        .insert("docker-distribution-api-version", API_VERSION);
    if version <= Version::HTTP_11 && unread && !resp.status().is_success() {
        // Refused before its body was read: hyper closes the connection
        // after the response. Say so, or the client reuses the connection
        // and its next request fails.
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

/// How long a refused request's body may take to arrive for [`discard_body`].
const DISCARD_TIME: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads and drops the body of a request refused before any handler saw it
/// (a missing token, a name that is no repository), if it is at most
/// `limit` bytes (the largest manifest) and arrives within
/// [`DISCARD_TIME`]; returns whether all of it was read. A client that
/// sends a small body while waiting for the answer (containerd 1.6 pushes a
/// manifest through a pipe and reports "read/write on closed pipe" instead
/// of a 401 that arrives first) then gets the answer on a connection that
/// stays open. A larger body, a blob upload, is not read: the connection
/// closes after the answer. Nor is one the client holds back until told to
/// go on (`Expect: 100-continue`): reading it would ask for it.
async fn discard_body(body: Body, headers: &HeaderMap, limit: u64) -> bool {
    let waits = headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if waits || content_length(headers).is_some_and(|l| l > limit) {
        return false;
    }
    let read_all = async {
        let mut stream = body.into_data_stream();
        let mut read = 0u64;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(chunk) => read += chunk.len() as u64,
                Err(_) => return false,
            }
            if read > limit {
                return false;
            }
        }
        true
    };
    tokio::time::timeout(DISCARD_TIME, read_all)
        .await
        .unwrap_or(false)
}

/// 405, with the `Allow` header RFC 9110 requires.
fn not_allowed(allow: &'static str) -> ApiError {
    ApiError::new(Code::Unsupported)
        .message("method not allowed on this endpoint")
        .header(header::ALLOW, HeaderValue::from_static(allow))
}

/// The methods an endpoint supports.
fn allowed(ep: &Endpoint) -> &'static str {
    match ep {
        Endpoint::Base => "GET, HEAD",
        Endpoint::Catalog | Endpoint::Tags { .. } | Endpoint::Referrers { .. } => "GET",
        Endpoint::Manifest { .. } => "GET, HEAD, PUT, DELETE",
        Endpoint::Blob { .. } => "GET, HEAD, DELETE",
        Endpoint::Uploads { .. } => "POST",
        Endpoint::Upload { .. } => "GET, PATCH, PUT, DELETE",
    }
}

async fn handle(
    reg: &Registry,
    ep: Endpoint,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let q = Params::from_uri(uri)?;
    let allow = allowed(&ep);
    match (ep, method.clone()) {
        (Endpoint::Base, Method::GET | Method::HEAD) => {
            Ok(json_response(StatusCode::OK, b"{}".to_vec()))
        }
        (Endpoint::Catalog, Method::GET) => {
            let page = reg.catalog(q.n()?, q.get("last")).await?;
            Ok(listing("/v2/_catalog", None, page, q.n()?))
        }
        (Endpoint::Tags { name }, Method::GET) => {
            let page = reg.tags(&name, q.n()?, q.get("last")).await?;
            let path = format!("/v2/{name}/tags/list");
            Ok(listing(&path, Some(&name), page, q.n()?))
        }
        (Endpoint::Manifest { name, reference }, m) => {
            let reference = Reference::parse(&reference)?;
            match m {
                Method::GET | Method::HEAD => {
                    manifest_get(reg, &name, &reference, headers, m == Method::HEAD).await
                }
                Method::PUT => manifest_put(reg, &name, &reference, headers, body).await,
                Method::DELETE => {
                    reg.manifest_delete(&name, &reference).await?;
                    Ok(StatusCode::ACCEPTED.into_response())
                }
                _ => Err(not_allowed(allow)),
            }
        }
        (Endpoint::Blob { name, digest }, m) => {
            let digest = parse_digest(&digest)?;
            match m {
                Method::GET | Method::HEAD => {
                    blob_get(reg, &name, &digest, headers, m == Method::HEAD).await
                }
                Method::DELETE => {
                    reg.blob_delete(&name, &digest).await?;
                    Ok(StatusCode::ACCEPTED.into_response())
                }
                _ => Err(not_allowed(allow)),
            }
        }
        (Endpoint::Uploads { name }, Method::POST) => {
            upload_start(reg, &name, &q, headers, body).await
        }
        (Endpoint::Upload { name, id }, m) => {
            let id = UploadId::parse(&id).ok_or_else(|| ApiError::new(Code::BlobUploadUnknown))?;
            match m {
                Method::GET => {
                    let size = reg.upload_size(&name, &id).await?;
                    Ok(upload_accepted(&name, &id, size, StatusCode::NO_CONTENT))
                }
                Method::PATCH => {
                    let (start, len) = content_range(headers)?;
                    let size = reg
                        .upload_append(&name, &id, start, len, body.into_data_stream())
                        .await?;
                    Ok(upload_accepted(&name, &id, size, StatusCode::ACCEPTED))
                }
                Method::PUT => {
                    let digest = q.get("digest").ok_or_else(|| {
                        ApiError::new(Code::DigestInvalid).message("digest parameter missing")
                    })?;
                    let digest = parse_digest(&digest)?;
                    let (start, len) = content_range(headers)?;
                    reg.upload_finish(&name, &id, &digest, start, len, body.into_data_stream())
                        .await?;
                    Ok(blob_created(&name, &digest))
                }
                Method::DELETE => {
                    reg.upload_cancel(&name, &id).await?;
                    Ok(StatusCode::NO_CONTENT.into_response())
                }
                _ => Err(not_allowed(allow)),
            }
        }
        (Endpoint::Referrers { name, digest }, Method::GET) => {
            let digest = parse_digest(&digest)?;
            let filter = q.get("artifactType");
            let descs = reg.referrers(&name, &digest, filter.clone()).await?;
            let index = serde_json::json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": descs,
            });
            let mut resp = json_response(
                StatusCode::OK,
                serde_json::to_vec(&index).unwrap_or_default(),
            );
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static(OCI_INDEX));
            if filter.is_some() {
                resp.headers_mut().insert(
                    OCI_FILTERS_APPLIED,
                    HeaderValue::from_static("artifactType"),
                );
            }
            Ok(resp)
        }
        _ => Err(not_allowed(allow)),
    }
}

/// Query parameters, decoded.
struct Params(Vec<(String, String)>);

impl Params {
    fn from_uri(uri: &Uri) -> Result<Self, ApiError> {
        Query::<Vec<(String, String)>>::try_from_uri(uri)
            .map(|q| Params(q.0))
            .map_err(|_| {
                ApiError::new(Code::Unsupported)
                    .status(StatusCode::BAD_REQUEST)
                    .message("malformed query string")
            })
    }

    fn get(&self, key: &str) -> Option<String> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    fn n(&self) -> Result<Option<usize>, ApiError> {
        self.get("n")
            .map(|v| {
                v.parse().map_err(|_| {
                    ApiError::new(Code::Unsupported)
                        .status(StatusCode::BAD_REQUEST)
                        .message("pagination parameter n is not a number")
                })
            })
            .transpose()
    }
}

fn parse_digest(s: &str) -> Result<Digest, ApiError> {
    s.parse().map_err(|e: crate::digest::DigestError| {
        ApiError::new(Code::DigestInvalid).message(format!("invalid digest: {e}"))
    })
}

fn hv(s: &str) -> HeaderValue {
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

fn listing(path: &str, name: Option<&RepoName>, page: Page, n: Option<usize>) -> Response {
    let body = match name {
        Some(name) => serde_json::json!({ "name": name.as_str(), "tags": page.items }),
        None => serde_json::json!({ "repositories": page.items }),
    };
    let mut resp = json_response(
        StatusCode::OK,
        serde_json::to_vec(&body).unwrap_or_default(),
    );
    if let (Some(last), Some(n)) = (page.next_last, n) {
        let link = format!("<{path}?n={n}&last={last}>; rel=\"next\"");
        resp.headers_mut().insert(header::LINK, hv(&link));
    }
    resp
}

fn upload_location(name: &RepoName, id: &UploadId) -> HeaderValue {
    hv(&format!("/v2/{name}/blobs/uploads/{}", id.as_str()))
}

fn upload_accepted(name: &RepoName, id: &UploadId, size: u64, status: StatusCode) -> Response {
    let range = if size == 0 {
        "0-0".to_owned()
    } else {
        format!("0-{}", size - 1)
    };
    let mut resp = status.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, upload_location(name, id));
    h.insert(header::RANGE, hv(&range));
    h.insert(DOCKER_UPLOAD_UUID, hv(id.as_str()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

fn blob_created(name: &RepoName, digest: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, hv(&format!("/v2/{name}/blobs/{digest}")));
    h.insert(DOCKER_CONTENT_DIGEST, hv(&digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

/// `Content-Range: [bytes=]<start>-<end>` of a chunk: its start and length.
fn content_range(headers: &HeaderMap) -> Result<(Option<u64>, Option<u64>), ApiError> {
    let Some(v) = headers.get(header::CONTENT_RANGE) else {
        return Ok((None, None));
    };
    let bad = || ApiError::new(Code::BlobUploadInvalid).message("malformed Content-Range");
    let s = v.to_str().map_err(|_| bad())?.trim();
    let s = s
        .strip_prefix("bytes=")
        .or_else(|| s.strip_prefix("bytes "))
        .unwrap_or(s);
    let s = s.split('/').next().unwrap_or(s);
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let start: u64 = a.trim().parse().map_err(|_| bad())?;
    let end: u64 = b.trim().parse().map_err(|_| bad())?;
    if end < start {
        return Err(ApiError::new(Code::BlobUploadInvalid)
            .status(StatusCode::RANGE_NOT_SATISFIABLE)
            .message("Content-Range ends before it starts"));
    }
    Ok((Some(start), Some(end - start + 1)))
}

async fn upload_start(
    reg: &Registry,
    name: &RepoName,
    q: &Params,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    if let Some(mount) = q.get("mount") {
        let digest = parse_digest(&mount)?;
        if let Some(from) = q.get("from") {
            let from = RepoName::parse(&from)
                .map_err(|_| ApiError::new(Code::NameInvalid).message("invalid from repository"))?;
            if reg.blob_mount(name, &from, &digest).await? {
                return Ok(blob_created(name, &digest));
            }
        }
        let id = reg.upload_start(name).await?;
        return Ok(upload_accepted(name, &id, 0, StatusCode::ACCEPTED));
    }
    if let Some(digest) = q.get("digest") {
        let digest = parse_digest(&digest)?;
        let len = content_length(headers);
        reg.blob_put(name, &digest, len, body.into_data_stream())
            .await?;
        return Ok(blob_created(name, &digest));
    }
    let id = reg.upload_start(name).await?;
    Ok(upload_accepted(name, &id, 0, StatusCode::ACCEPTED))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

async fn manifest_put(
    reg: &Registry,
    name: &RepoName,
    reference: &Reference,
    headers: &HeaderMap,
    body: Body,
) -> ApiResult {
    let limit = reg.config().max_manifest_size;
    if content_length(headers).is_some_and(|l| l > limit as u64) {
        return Err(crate::service::RegistryError::ManifestTooLarge(limit).into());
    }
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            ApiError::new(Code::ManifestInvalid)
                .message(format!("request body could not be read: {e}"))
        })?;
        if buf.len() + chunk.len() > limit {
            return Err(crate::service::RegistryError::ManifestTooLarge(limit).into());
        }
        buf.extend_from_slice(&chunk);
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let (digest, subject) = reg.manifest_put(name, reference, content_type, buf).await?;
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::LOCATION,
        hv(&format!("/v2/{name}/manifests/{digest}")),
    );
    h.insert(DOCKER_CONTENT_DIGEST, hv(&digest.to_string()));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    if let Some(subject) = subject {
        h.insert(OCI_SUBJECT, hv(&subject.to_string()));
    }
    Ok(resp)
}

async fn manifest_get(
    reg: &Registry,
    name: &RepoName,
    reference: &Reference,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult {
    let (digest, m) = reg.manifest_get(name, reference).await?;
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok());
    if !manifest::accepted(accept, &m.media_type) {
        return Err(ApiError::new(Code::ManifestUnknown).message(format!(
            "manifest is {}, which the Accept header does not include",
            m.media_type
        )));
    }
    let etag = format!("\"{digest}\"");
    let len = m.content.len();
    let body = if head {
        Body::empty()
    } else {
        Body::from(m.content)
    };
    let mut resp = (StatusCode::OK, body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(&m.media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(DOCKER_CONTENT_DIGEST, hv(&digest.to_string()));
    h.insert(header::ETAG, hv(&etag));
    Ok(resp)
}

/// A parsed `Range: bytes=...` request against a blob of `size` bytes:
/// `Ok(None)` for no (or an ignorable) range, `Err(())` when unsatisfiable.
fn byte_range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(s) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = s.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None); // multiple ranges: serve the whole blob
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Ok(None);
    };
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(n), size - 1)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end: u64 = if b.is_empty() {
            u64::MAX
        } else {
            b.parse().map_err(|_| ())?
        };
        if start >= size || end < start {
            return Err(());
        }
        (start, end.min(size - 1))
    };
    Ok(Some(range))
}

async fn blob_get(
    reg: &Registry,
    name: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult {
    let etag = format!("\"{digest}\"");
    let (reader, size) = if head {
        (None, reg.blob_size(name, digest).await?)
    } else {
        let (r, s) = reg.blob_open(name, digest).await?;
        (Some(r), s)
    };
    if headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
    {
        let mut resp = StatusCode::NOT_MODIFIED.into_response();
        resp.headers_mut().insert(header::ETAG, hv(&etag));
        resp.headers_mut()
            .insert(DOCKER_CONTENT_DIGEST, hv(&digest.to_string()));
        return Ok(resp);
    }
    let (status, start, len) = match byte_range(headers, size) {
        Ok(None) => (StatusCode::OK, 0, size),
        Ok(Some((a, b))) => (StatusCode::PARTIAL_CONTENT, a, b - a + 1),
        Err(()) => {
            return Err(ApiError::new(Code::BlobUnknown)
                .status(StatusCode::RANGE_NOT_SATISFIABLE)
                .message("requested range not satisfiable")
                .header(header::CONTENT_RANGE, hv(&format!("bytes */{size}"))));
        }
    };
    let body = match reader {
        Some(BlobData::Mapped(bytes)) => {
            // Both bounds are within the blob: byte_range clamps to its size.
            let (a, b) = (start as usize, (start + len) as usize);
            Body::from(bytes.slice(a..b))
        }
        Some(BlobData::Reader(r)) => Body::from_stream(read_stream(r, start, len)),
        None => Body::empty(),
    };
    let mut resp = (status, body).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(DOCKER_CONTENT_DIGEST, hv(&digest.to_string()));
    h.insert(header::ETAG, hv(&etag));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            hv(&format!("bytes {start}-{}/{size}", start + len - 1)),
        );
    }
    Ok(resp)
}

/// Streams `len` bytes of `reader` from `start`, read on a blocking thread
/// a chunk at a time through a small bounded queue.
fn read_stream(
    mut reader: Box<dyn BlobRead>,
    start: u64,
    len: u64,
) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Seek, SeekFrom};
        if let Err(e) = reader.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut left = len;
        while left > 0 {
            let want = left.min(DOWNLOAD_CHUNK as u64) as usize;
            let mut buf = vec![0u8; want];
            let msg = match reader.read(&mut buf) {
                Ok(0) => Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "blob shorter than its size",
                )),
                Ok(n) => {
                    buf.truncate(n);
                    left -= n as u64;
                    Ok(Bytes::from(buf))
                }
                Err(e) => Err(e),
            };
            let failed = msg.is_err();
            if tx.blocking_send(msg).is_err() || failed {
                return;
            }
        }
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}
