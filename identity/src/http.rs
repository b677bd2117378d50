//! The token service's HTTP edge: `GET /token` (Docker token
//! authentication), `POST /token` (its OAuth2 form: `grant_type=password`
//! and `grant_type=refresh_token`), `GET /.well-known/jwks.json` and
//! `GET /healthz`.
//!
//! Flow of a token request: parse the request, refuse it early when the
//! account or address is rate-limited, authenticate (Basic credentials,
//! form password, or a refresh token re-checked with the backend; a GET
//! without credentials is anonymous), list the projects, let
//! [`crate::policy::grant`] intersect what was asked with what is allowed,
//! sign, answer, audit. Every token request is audited once, including those
//! refused before authentication (malformed credentials, scope or form).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{Extensions, HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use berth_auth::{Access, Scope};
use serde::Serialize;

use crate::audit::{AuditEvent, AuditLog, Outcome};
use crate::authn::{AuthnError, Credentials, Identity, Method as AuthMethod};
use crate::backend::Backend;
use crate::policy::{self, PolicyConfig};
use crate::ratelimit::{Admission, RateLimiter};
use crate::refresh::RefreshStore;
use crate::token::TokenIssuer;

/// How long a login waits before asking the rate limiter again while
/// attempts for its account or address are in flight.
const BUSY_RETRY: std::time::Duration = std::time::Duration::from_millis(10);

/// Everything the token endpoint needs.
pub struct TokenService {
    pub backend: Arc<dyn Backend>,
    pub issuer: Arc<TokenIssuer>,
    pub refresh: RefreshStore,
    pub limiter: RateLimiter,
    pub audit: AuditLog,
    pub policy: PolicyConfig,
    /// The `service` (token audience) this endpoint issues for.
    pub service: String,
}

/// Builds the token service's router. Serve it with
/// `into_make_service_with_connect_info::<SocketAddr>()` so that rate
/// limiting and the audit log see client addresses.
pub fn router(service: Arc<TokenService>) -> Router {
    Router::new()
        .route("/token", get(token_get).post(token_post))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(service)
}

#[derive(Serialize)]
struct TokenResponse {
    token: String,
    access_token: String,
    expires_in: u64,
    issued_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refresh_token: Option<String>,
}

/// A failed token request, in the Docker registry error format.
struct TokenError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// Seconds, for `Retry-After` on 429.
    retry_after: Option<u64>,
}

impl TokenError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        TokenError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "UNSUPPORTED", message)
    }
}

impl IntoResponse for TokenError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "errors": [{ "code": self.code, "message": self.message }]
        });
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"berth\""),
            );
        }
        resp
    }
}

/// What a token request asks for, whichever form it came in.
struct TokenRequest {
    service: Option<String>,
    scopes: Vec<Scope>,
    client_id: String,
    offline: bool,
    grant: Grant,
}

enum Grant {
    Anonymous,
    Credentials(Credentials),
    Refresh(String),
}

/// The client's address, when the server was started with connect info.
fn client_ip(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

fn params_get<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Every `scope` parameter, each possibly holding several space-separated scopes.
fn scopes_of(params: &[(String, String)]) -> Result<Vec<Scope>, TokenError> {
    let mut out = Vec::new();
    for (_, v) in params.iter().filter(|(k, _)| k == "scope") {
        out.extend(Scope::parse_list(v).map_err(|e| TokenError::bad_request(e.to_string()))?);
    }
    Ok(out)
}

/// `Authorization: Basic` credentials, if any.
fn basic_credentials(headers: &HeaderMap) -> Result<Option<Credentials>, TokenError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let bad = || {
        TokenError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "malformed Authorization header",
        )
    };
    let value = value.to_str().map_err(|_| bad())?;
    let (scheme, encoded) = value.split_once(' ').ok_or_else(bad)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(bad());
    }
    use base64::Engine as _;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| bad())?;
    let decoded = String::from_utf8(decoded).map_err(|_| bad())?;
    let (user, password) = decoded.split_once(':').ok_or_else(bad)?;
    Ok(Some(Credentials::from_basic(user, password)))
}

async fn token_get(
    State(svc): State<Arc<TokenService>>,
    extensions: Extensions,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let ip = client_ip(&extensions);
    let request = (|| -> Result<TokenRequest, TokenError> {
        let grant = match basic_credentials(&headers)? {
            Some(c) => Grant::Credentials(c),
            None => Grant::Anonymous,
        };
        Ok(TokenRequest {
            service: params_get(&params, "service").map(str::to_owned),
            scopes: scopes_of(&params)?,
            client_id: params_get(&params, "client_id").unwrap_or("").to_owned(),
            offline: params_get(&params, "offline_token") == Some("true"),
            grant,
        })
    })();
    match request {
        Ok(r) => issue(&svc, r, ip, Method::GET).await,
        Err(e) => refuse(&svc, e, ip, Method::GET, &params),
    }
}

async fn token_post(
    State(svc): State<Arc<TokenService>>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ip = client_ip(&extensions);
    let params: Result<Vec<(String, String)>, _> = serde_urlencoded::from_bytes(&body);
    let request = (|| -> Result<TokenRequest, TokenError> {
        let params = params
            .as_ref()
            .map_err(|_| TokenError::bad_request("malformed form body"))?;
        let get = |k| params_get(params, k);
        let grant = match get("grant_type") {
            Some("password") => {
                let (Some(user), Some(password)) = (get("username"), get("password")) else {
                    return Err(TokenError::bad_request(
                        "username and password are required",
                    ));
                };
                Grant::Credentials(Credentials::from_basic(user, password))
            }
            Some("refresh_token") => {
                let token = get("refresh_token")
                    .ok_or_else(|| TokenError::bad_request("refresh_token is required"))?;
                Grant::Refresh(token.to_owned())
            }
            Some(other) => {
                return Err(TokenError::bad_request(format!(
                    "unsupported grant_type {other:?}"
                )));
            }
            None => match basic_credentials(&headers)? {
                Some(c) => Grant::Credentials(c),
                None => return Err(TokenError::bad_request("grant_type is required")),
            },
        };
        Ok(TokenRequest {
            service: get("service").map(str::to_owned),
            scopes: scopes_of(params)?,
            client_id: get("client_id").unwrap_or("").to_owned(),
            offline: get("access_type") == Some("offline"),
            grant,
        })
    })();
    match request {
        Ok(r) => issue(&svc, r, ip, Method::POST).await,
        Err(e) => {
            let params = params.as_deref().unwrap_or_default();
            refuse(&svc, e, ip, Method::POST, params)
        }
    }
}

/// Answers and audits a request refused before authentication: a malformed
/// `Authorization` header counts as invalid credentials, anything else
/// (malformed scope or form, unsupported grant) as denied. The audit line
/// lists the scopes that did parse.
fn refuse(
    svc: &TokenService,
    err: TokenError,
    ip: Option<IpAddr>,
    method: Method,
    params: &[(String, String)],
) -> Response {
    let requested: Vec<Scope> = params
        .iter()
        .filter(|(k, _)| k == "scope")
        .flat_map(|(_, v)| v.split_whitespace().filter_map(|s| Scope::parse(s).ok()))
        .collect();
    let mut event = AuditEvent::new(ip, &svc.service, &requested);
    event.method = Some(method.to_string());
    let outcome = if err.status == StatusCode::UNAUTHORIZED {
        Outcome::InvalidCredentials
    } else {
        Outcome::Denied
    };
    svc.audit.record(event.outcome(outcome));
    err.into_response()
}

async fn jwks(State(svc): State<Arc<TokenService>>) -> Response {
    let mut resp = axum::Json(svc.issuer.keys().jwks()).into_response();
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=30"),
    );
    resp
}

async fn issue(
    svc: &TokenService,
    req: TokenRequest,
    ip: Option<IpAddr>,
    method: Method,
) -> Response {
    let mut event = AuditEvent::new(ip, &svc.service, &req.scopes);
    let result = issue_inner(svc, &req, ip, &mut event).await;
    let (outcome, resp) = match result {
        Ok(body) => (Outcome::Granted, axum::Json(body).into_response()),
        Err((outcome, err)) => (outcome, err.into_response()),
    };
    event.method = Some(method.to_string());
    svc.audit.record(event.outcome(outcome));
    resp
}

async fn issue_inner(
    svc: &TokenService,
    req: &TokenRequest,
    ip: Option<IpAddr>,
    event: &mut AuditEvent,
) -> Result<TokenResponse, (Outcome, TokenError)> {
    if let Grant::Credentials(creds) = &req.grant {
        event.account = Some(creds.account());
    }
    if let Some(service) = &req.service
        && service != &svc.service
    {
        return Err((
            Outcome::Denied,
            TokenError::bad_request(format!(
                "this token service issues tokens for {:?}",
                svc.service
            )),
        ));
    }
    let unavailable = |e: AuthnError| {
        tracing::warn!(error = %e, "identity backend unavailable");
        (
            Outcome::Unavailable,
            TokenError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "the identity backend is unavailable; try again later",
            ),
        )
    };
    let invalid = || {
        (
            Outcome::InvalidCredentials,
            TokenError::new(
                StatusCode::UNAUTHORIZED,
                "UNAUTHORIZED",
                "invalid credentials",
            ),
        )
    };
    let identity: Option<Identity> = match &req.grant {
        Grant::Anonymous => None,
        Grant::Credentials(creds) => {
            let account = creds.account();
            // Attempts in flight count against the limit: while they could
            // reach it, wait for one to end (it may be a failure).
            let attempt = loop {
                match svc.limiter.begin(&account, ip) {
                    Admission::Go(attempt) => break attempt,
                    Admission::Busy => tokio::time::sleep(BUSY_RETRY).await,
                    Admission::Refused(wait) => {
                        let mut err = TokenError::new(
                            StatusCode::TOO_MANY_REQUESTS,
                            "TOOMANYREQUESTS",
                            "too many failed logins; try again later",
                        );
                        // Rounded up: a client retrying then is let through.
                        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                        err.retry_after = Some(secs.max(1));
                        return Err((Outcome::RateLimited, err));
                    }
                }
            };
            match svc.backend.authenticate(creds).await {
                Ok(id) => {
                    attempt.success();
                    Some(id)
                }
                Err(AuthnError::Invalid) => {
                    attempt.failure();
                    return Err(invalid());
                }
                // Not a failed login; dropping the attempt ends it.
                Err(e) => return Err(unavailable(e)),
            }
        }
        Grant::Refresh(token) => {
            let record = svc
                .refresh
                .redeem(token, &req.client_id)
                .map_err(|e| {
                    tracing::error!(error = %e, "refresh token store");
                    unavailable(AuthnError::Unavailable("refresh token store".into()))
                })?
                .ok_or_else(invalid)?;
            event.account = Some(record.username.clone());
            match svc.backend.reauthorize(&record.user_id).await {
                Ok(id) => Some(id),
                Err(AuthnError::Invalid) => {
                    let _ = svc.refresh.revoke(token);
                    return Err(invalid());
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
    };
    if let Some(id) = &identity {
        event.set_identity(id);
    }
    let projects = svc.backend.projects().await.map_err(unavailable)?;
    let access: Vec<Access> = policy::grant(identity.as_ref(), &projects, &svc.policy, &req.scopes);
    event.granted = access.clone();
    let subject = identity.as_ref().map(|i| i.username.as_str()).unwrap_or("");
    let issued = svc.issuer.issue(subject, access).map_err(|e| {
        tracing::error!(error = %e, "token signing failed");
        (
            Outcome::Unavailable,
            TokenError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "UNKNOWN",
                "token signing failed",
            ),
        )
    })?;
    let refresh_token = match (&req.grant, &identity) {
        (Grant::Credentials(_), Some(id)) if req.offline && id.method == AuthMethod::Password => {
            match svc
                .refresh
                .issue(&id.user_id, &id.username, &id.domain, &req.client_id)
            {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!(error = %e, "cannot store a refresh token");
                    None
                }
            }
        }
        _ => None,
    };
    Ok(TokenResponse {
        access_token: issued.token.clone(),
        token: issued.token,
        expires_in: issued.expires_in,
        issued_at: issued.issued_at,
        refresh_token,
    })
}
