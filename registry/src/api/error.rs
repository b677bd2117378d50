//! The one table from registry errors to HTTP statuses and the
//! distribution-spec error codes, and the spec's JSON error body.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::service::RegistryError;
use crate::storage::StoreError;

/// The distribution-spec error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    /// Not a spec code: an internal failure (Distribution's `UNKNOWN`).
    Unknown,
}

impl Code {
    /// The code's name, default status and message.
    pub fn info(self) -> (&'static str, StatusCode, &'static str) {
        use StatusCode as S;
        match self {
            Code::BlobUnknown => ("BLOB_UNKNOWN", S::NOT_FOUND, "blob unknown to registry"),
            Code::BlobUploadInvalid => {
                ("BLOB_UPLOAD_INVALID", S::BAD_REQUEST, "blob upload invalid")
            }
            Code::BlobUploadUnknown => (
                "BLOB_UPLOAD_UNKNOWN",
                S::NOT_FOUND,
                "blob upload unknown to registry",
            ),
            Code::DigestInvalid => (
                "DIGEST_INVALID",
                S::BAD_REQUEST,
                "provided digest did not match uploaded content",
            ),
            Code::ManifestBlobUnknown => (
                "MANIFEST_BLOB_UNKNOWN",
                S::BAD_REQUEST,
                "manifest references a manifest or blob unknown to registry",
            ),
            Code::ManifestInvalid => ("MANIFEST_INVALID", S::BAD_REQUEST, "manifest invalid"),
            Code::ManifestUnknown => (
                "MANIFEST_UNKNOWN",
                S::NOT_FOUND,
                "manifest unknown to registry",
            ),
            Code::NameInvalid => ("NAME_INVALID", S::BAD_REQUEST, "invalid repository name"),
            Code::NameUnknown => (
                "NAME_UNKNOWN",
                S::NOT_FOUND,
                "repository name not known to registry",
            ),
            Code::SizeInvalid => (
                "SIZE_INVALID",
                S::BAD_REQUEST,
                "provided length did not match content length",
            ),
            Code::Unauthorized => ("UNAUTHORIZED", S::UNAUTHORIZED, "authentication required"),
            Code::Denied => (
                "DENIED",
                S::FORBIDDEN,
                "requested access to the resource is denied",
            ),
            Code::Unsupported => (
                "UNSUPPORTED",
                S::METHOD_NOT_ALLOWED,
                "the operation is unsupported",
            ),
            Code::TooManyRequests => ("TOOMANYREQUESTS", S::TOO_MANY_REQUESTS, "too many requests"),
            Code::Unknown => ("UNKNOWN", S::INTERNAL_SERVER_ERROR, "unknown error"),
        }
    }
}

/// An error response: a spec code, its status (or an override) and details.
#[derive(Debug)]
pub struct ApiError {
    pub code: Code,
    pub status: StatusCode,
    pub message: String,
    pub detail: Option<serde_json::Value>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(code: Code) -> Self {
        let (_, status, message) = code.info();
        ApiError {
            code,
            status,
            message: message.to_owned(),
            detail: None,
            headers: Vec::new(),
        }
    }

    pub fn message(mut self, m: impl Into<String>) -> Self {
        self.message = m.into();
        self
    }

    pub fn status(mut self, s: StatusCode) -> Self {
        self.status = s;
        self
    }

    pub fn detail(mut self, d: serde_json::Value) -> Self {
        self.detail = Some(d);
        self
    }

    pub fn header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// 401 `UNAUTHORIZED`: no bearer token; `challenge` is the
    /// `WWW-Authenticate` value.
    pub fn unauthorized(challenge: HeaderValue) -> Self {
        ApiError::new(Code::Unauthorized).header(header::WWW_AUTHENTICATE, challenge)
    }

    /// 401 `UNAUTHORIZED`: a token that does not verify.
    pub fn invalid_token(challenge: HeaderValue) -> Self {
        ApiError::new(Code::Unauthorized)
            .message("authentication required: invalid token")
            .header(header::WWW_AUTHENTICATE, challenge)
    }

    /// 401 `DENIED`: a valid token without the access. Distribution answers
    /// 401 (not 403) so that clients fetch a token with the wider scope.
    pub fn insufficient_scope(challenge: HeaderValue) -> Self {
        ApiError::new(Code::Denied)
            .status(StatusCode::UNAUTHORIZED)
            .header(header::WWW_AUTHENTICATE, challenge)
    }
}

impl From<RegistryError> for ApiError {
    fn from(e: RegistryError) -> Self {
        use RegistryError as E;
        match e {
            E::BlobUnknown => ApiError::new(Code::BlobUnknown),
            E::UploadUnknown => ApiError::new(Code::BlobUploadUnknown),
            E::UploadInvalid(m) => ApiError::new(Code::BlobUploadInvalid).message(m),
            E::RangeInvalid { size } => {
                let range = if size == 0 {
                    "0-0".to_owned()
                } else {
                    format!("0-{}", size - 1)
                };
                let mut err = ApiError::new(Code::BlobUploadInvalid)
                    .status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .message(format!(
                        "chunk does not start at the end of the upload ({size} bytes)"
                    ));
                if let Ok(v) = HeaderValue::from_str(&range) {
                    err = err.header(header::RANGE, v);
                }
                err
            }
            E::DigestMismatch => ApiError::new(Code::DigestInvalid),
            E::DigestInvalid(m) => ApiError::new(Code::DigestInvalid).message(m),
            E::ManifestBlobUnknown(d) => ApiError::new(Code::ManifestBlobUnknown)
                .message(format!("manifest references unknown {d}"))
                .detail(serde_json::json!({ "digest": d.to_string() })),
            E::ManifestInvalid(m) => ApiError::new(Code::ManifestInvalid).message(m),
            E::ManifestUnknown => ApiError::new(Code::ManifestUnknown),
            E::ManifestTooLarge(limit) => ApiError::new(Code::SizeInvalid)
                .status(StatusCode::PAYLOAD_TOO_LARGE)
                .message(format!(
                    "manifest is larger than the limit of {limit} bytes"
                )),
            E::NameUnknown => ApiError::new(Code::NameUnknown),
            E::SizeInvalid(m) => ApiError::new(Code::SizeInvalid).message(m),
            E::Body(m) => ApiError::new(Code::BlobUploadInvalid)
                .message(format!("request body could not be read: {m}")),
            // No spec code fits: Distribution answers 500 `UNKNOWN`; 507
            // says what happened, and the write can be retried later.
            E::Store(StoreError::NoSpace) => {
                tracing::error!(
                    "storage full (ENOSPC): write refused; free space on the data directory's filesystem"
                );
                ApiError::new(Code::Unknown)
                    .status(StatusCode::INSUFFICIENT_STORAGE)
                    .message("the registry's storage is full: no space left for this write")
            }
            E::Store(StoreError::NotFound) => ApiError::new(Code::BlobUnknown),
            E::Store(e) => {
                tracing::error!(error = %e, "storage failure");
                ApiError::new(Code::Unknown).message("internal storage error")
            }
        }
    }
}

#[derive(Serialize)]
struct Body<'a> {
    errors: [Item<'a>; 1],
}

#[derive(Serialize)]
struct Item<'a> {
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::Value>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (code, _, _) = self.code.info();
        let body = Body {
            errors: [Item {
                code,
                message: &self.message,
                detail: self.detail.as_ref(),
            }],
        };
        let json = serde_json::to_vec(&body).unwrap_or_default();
        let mut resp = (
            self.status,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            json,
        )
            .into_response();
        for (k, v) in self.headers {
            resp.headers_mut().insert(k, v);
        }
        resp
    }
}
