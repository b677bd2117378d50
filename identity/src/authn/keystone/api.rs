//! Keystone's v3 API as berth uses it: issuing tokens (users' checks and the
//! service account's own token), and reading role assignments, users,
//! domains and projects with the service account's system-scoped token.

use std::fmt;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::percent::encode;

/// What went wrong talking to Keystone.
#[derive(Debug)]
pub(super) enum ApiError {
    /// Keystone refused the credentials (401, or 404 for an unknown
    /// application credential, or 400 for a malformed one).
    Invalid,
    /// A looked-up object does not exist (404 on a read).
    NotFound,
    /// Unreachable, slow, or an unexpected answer.
    Unavailable(String),
}

/// A domain reference in an authentication request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum DomainRef {
    Id(String),
    Name(String),
}

impl DomainRef {
    fn to_json(&self) -> Value {
        match self {
            DomainRef::Id(id) => json!({ "id": id }),
            DomainRef::Name(name) => json!({ "name": name }),
        }
    }
}

/// A Keystone token, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Token(pub(super) String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

#[derive(Debug, Deserialize)]
pub(super) struct TokenResponse {
    pub(super) token: TokenBody,
}

#[derive(Debug, Deserialize)]
pub(super) struct TokenBody {
    pub(super) user: TokenUser,
    #[serde(default)]
    pub(super) project: Option<NamedInDomain>,
    #[serde(default)]
    pub(super) roles: Vec<Named>,
    #[serde(default)]
    pub(super) expires_at: Option<String>,
    #[serde(default)]
    pub(super) issued_at: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct TokenUser {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) domain: Named,
}

/// `{id, name}`; Keystone leaves out the name in some places.
#[derive(Clone, Debug, Deserialize)]
pub(super) struct Named {
    pub(super) id: String,
    #[serde(default)]
    pub(super) name: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub(super) struct NamedInDomain {
    pub(super) id: String,
    pub(super) name: String,
    #[serde(default)]
    pub(super) domain: Option<Named>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RoleAssignments {
    pub(super) role_assignments: Vec<RoleAssignment>,
}

#[derive(Debug, Deserialize)]
pub(super) struct RoleAssignment {
    #[serde(default)]
    pub(super) scope: AssignmentScope,
    pub(super) role: Named,
}

#[derive(Debug, Default, Deserialize)]
pub(super) struct AssignmentScope {
    #[serde(default)]
    pub(super) project: Option<NamedInDomain>,
}

#[derive(Debug, Deserialize)]
pub(super) struct UserResponse {
    pub(super) user: User,
}

#[derive(Debug, Deserialize)]
pub(super) struct User {
    pub(super) id: String,
    pub(super) name: String,
    pub(super) domain_id: String,
    #[serde(default = "yes")]
    pub(super) enabled: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct DomainResponse {
    pub(super) domain: Domain,
}

#[derive(Debug, Deserialize)]
pub(super) struct Domain {
    pub(super) name: String,
    #[serde(default = "yes")]
    pub(super) enabled: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct Projects {
    pub(super) projects: Vec<Project>,
    #[serde(default)]
    pub(super) truncated: bool,
}

#[derive(Debug, Deserialize)]
pub(super) struct Project {
    pub(super) id: String,
    pub(super) name: String,
    #[serde(default)]
    pub(super) domain_id: String,
    #[serde(default)]
    pub(super) tags: Vec<String>,
    #[serde(default)]
    pub(super) is_domain: bool,
}

fn yes() -> bool {
    true
}

/// The service account's token and when to replace it.
struct ServiceToken {
    token: Token,
    renew_at: Instant,
}

/// The service account's login (password redacted in `Debug`).
#[derive(Clone)]
pub(super) struct ServiceLogin {
    pub(super) username: String,
    pub(super) password: String,
    pub(super) domain: DomainRef,
}

impl fmt::Debug for ServiceLogin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServiceLogin")
            .field("username", &self.username)
            .field("domain", &self.domain)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A Keystone v3 endpoint and the service account to read it with.
pub(super) struct Api {
    http: reqwest::Client,
    /// `.../v3`, no trailing slash.
    v3: String,
    timeout: Duration,
    service: ServiceLogin,
    service_token: tokio::sync::Mutex<Option<ServiceToken>>,
}

impl Api {
    pub(super) fn new(
        http: reqwest::Client,
        v3: String,
        timeout: Duration,
        service: ServiceLogin,
    ) -> Api {
        Api {
            http,
            v3,
            timeout,
            service,
            service_token: tokio::sync::Mutex::new(None),
        }
    }

    fn transport(&self, e: reqwest::Error) -> ApiError {
        if e.is_timeout() {
            return ApiError::Unavailable(format!(
                "Keystone did not answer within {:?}",
                self.timeout
            ));
        }
        // reqwest's message names the URL, which holds no secret; the causes
        // (refused, reset, closed) are in the source chain.
        let mut why = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why.push_str(": ");
            why.push_str(&s.to_string());
            source = s.source();
        }
        if e.is_connect() {
            ApiError::Unavailable(format!("cannot connect to Keystone: {why}"))
        } else {
            ApiError::Unavailable(format!("Keystone request failed: {why}"))
        }
    }

    /// Sends `req`, once more if a kept-alive connection turned out closed
    /// (the server dropped it as the request went out: "connection closed
    /// before message completed", resets). Every request berth makes is safe
    /// to repeat; timeouts and refused connections are not retried.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ApiError> {
        let retry = req.try_clone();
        match req.send().await {
            Ok(resp) => Ok(resp),
            Err(e) if e.is_timeout() || e.is_connect() => Err(self.transport(e)),
            Err(e) => match retry {
                Some(again) => {
                    tracing::debug!(error = %e, "Keystone connection failed; retrying once");
                    again.send().await.map_err(|e| self.transport(e))
                }
                None => Err(self.transport(e)),
            },
        }
    }

    /// `POST /v3/auth/tokens?nocatalog` with `auth`: the token and its body.
    async fn issue(&self, auth: Value) -> Result<(Token, TokenBody), ApiError> {
        let resp = self
            .send(
                self.http
                    .post(format!("{}/auth/tokens?nocatalog", self.v3))
                    .json(&json!({ "auth": auth })),
            )
            .await?;
        let status = resp.status();
        match status {
            StatusCode::CREATED | StatusCode::OK => {}
            StatusCode::UNAUTHORIZED | StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST => {
                return Err(ApiError::Invalid);
            }
            _ => {
                return Err(ApiError::Unavailable(format!(
                    "Keystone answered {status} to an authentication"
                )));
            }
        }
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(|t| Token(t.to_owned()))
            .ok_or_else(|| ApiError::Unavailable("Keystone sent no X-Subject-Token".into()))?;
        let body: TokenResponse = resp
            .json()
            .await
            .map_err(|e| ApiError::Unavailable(format!("unexpected token body: {e}")))?;
        Ok((token, body.token))
    }

    /// Checks a user's password (an unscoped token, which is not kept).
    pub(super) async fn password(
        &self,
        name: &str,
        domain: &DomainRef,
        password: &str,
    ) -> Result<TokenBody, ApiError> {
        let auth = json!({
            "identity": {"methods": ["password"], "password": {"user": {
                "name": name, "domain": domain.to_json(), "password": password}}},
            "scope": "unscoped",
        });
        self.issue(auth).await.map(|(_, body)| body)
    }

    /// Checks an application credential: the token is scoped to its project
    /// with its roles.
    pub(super) async fn application_credential(
        &self,
        id: &str,
        secret: &str,
    ) -> Result<TokenBody, ApiError> {
        let auth = json!({
            "identity": {"methods": ["application_credential"],
                "application_credential": {"id": id, "secret": secret}},
        });
        self.issue(auth).await.map(|(_, body)| body)
    }

    /// The service account's token: the cached one, or a new one.
    async fn service_token(&self) -> Result<Token, ApiError> {
        let mut slot = self.service_token.lock().await;
        if let Some(t) = slot.as_ref()
            && Instant::now() < t.renew_at
        {
            return Ok(t.token.clone());
        }
        let auth = json!({
            "identity": {"methods": ["password"], "password": {"user": {
                "name": self.service.username, "domain": self.service.domain.to_json(),
                "password": self.service.password}}},
            "scope": {"system": {"all": true}},
        });
        let (token, body) = match self.issue(auth).await {
            Ok(t) => t,
            Err(ApiError::Invalid | ApiError::NotFound) => {
                tracing::error!(
                    user = %self.service.username,
                    "Keystone refused the service account (wrong password, or no role on the system?)"
                );
                return Err(ApiError::Unavailable(
                    "Keystone refused berth's service account".into(),
                ));
            }
            Err(e) => return Err(e),
        };
        let lifetime = match (body.issued_at.as_deref(), body.expires_at.as_deref()) {
            (Some(i), Some(e)) => match (parse_time(i), parse_time(e)) {
                (Some(i), Some(e)) if e > i => Duration::from_secs((e - i) as u64),
                _ => DEFAULT_SERVICE_TOKEN_LIFETIME,
            },
            _ => DEFAULT_SERVICE_TOKEN_LIFETIME,
        };
        // Renew shortly before it ends: a minute early, or halfway through a
        // short lifetime.
        let margin = (lifetime / 2).min(Duration::from_secs(60));
        *slot = Some(ServiceToken {
            token: token.clone(),
            renew_at: Instant::now() + (lifetime - margin),
        });
        tracing::debug!(?lifetime, "obtained a Keystone service token");
        Ok(token)
    }

    /// Forgets the service token if it is still `stale`.
    async fn drop_service_token(&self, stale: &Token) {
        let mut slot = self.service_token.lock().await;
        if slot.as_ref().is_some_and(|t| t.token == *stale) {
            *slot = None;
        }
    }

    /// `GET /v3{path}` with the service token; on a 401 the token is renewed
    /// once.
    async fn read<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        for attempt in 0..2 {
            let token = self.service_token().await?;
            let resp = self
                .send(
                    self.http
                        .get(format!("{}{path}", self.v3))
                        .header("x-auth-token", &token.0),
                )
                .await?;
            match resp.status() {
                StatusCode::OK => {
                    return resp
                        .json()
                        .await
                        .map_err(|e| ApiError::Unavailable(format!("unexpected answer: {e}")));
                }
                StatusCode::UNAUTHORIZED if attempt == 0 => {
                    tracing::debug!("Keystone refused the service token; renewing it");
                    self.drop_service_token(&token).await;
                }
                StatusCode::NOT_FOUND => return Err(ApiError::NotFound),
                StatusCode::FORBIDDEN => {
                    tracing::error!(
                        "Keystone forbids berth's service account to read {}: it needs the reader role on the system",
                        path.split('?').next().unwrap_or(path)
                    );
                    return Err(ApiError::Unavailable(
                        "berth's service account may not read Keystone".into(),
                    ));
                }
                status => {
                    return Err(ApiError::Unavailable(format!(
                        "Keystone answered {status} to a read"
                    )));
                }
            }
        }
        Err(ApiError::Unavailable(
            "Keystone refused a fresh service token".into(),
        ))
    }

    /// The user's effective role assignments, names included.
    pub(super) async fn role_assignments(
        &self,
        user_id: &str,
    ) -> Result<Vec<RoleAssignment>, ApiError> {
        let path = format!(
            "/role_assignments?user.id={}&effective&include_names",
            encode(user_id)
        );
        let r: RoleAssignments = self.read(&path).await?;
        Ok(r.role_assignments)
    }

    pub(super) async fn user(&self, user_id: &str) -> Result<User, ApiError> {
        let r: UserResponse = self.read(&format!("/users/{}", encode(user_id))).await?;
        Ok(r.user)
    }

    pub(super) async fn domain(&self, domain_id: &str) -> Result<Domain, ApiError> {
        let r: DomainResponse = self
            .read(&format!("/domains/{}", encode(domain_id)))
            .await?;
        Ok(r.domain)
    }

    pub(super) async fn projects(&self) -> Result<Vec<Project>, ApiError> {
        let r: Projects = self.read("/projects").await?;
        if r.truncated {
            tracing::warn!(
                "Keystone truncated the project list (list_limit): the project directory is incomplete"
            );
        }
        Ok(r.projects.into_iter().filter(|p| !p.is_domain).collect())
    }
}

/// When Keystone's token says nothing usable about its lifetime.
const DEFAULT_SERVICE_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// Keystone's timestamps (`2026-11-28T07:52:41.000000Z`, UTC) as seconds
/// since the epoch. Only differences are used, so the clock of this machine
/// never matters.
pub(super) fn parse_time(s: &str) -> Option<i64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let (date, time) = s.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let time = time.split('.').next()?;
    let mut t = time.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || hh > 23 || mm > 59 || ss > 60 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hh * 3600 + mm * 60 + ss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystone_times() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_time("2026-11-28T07:52:41.000000Z"),
            Some(1_795_852_361)
        );
        assert_eq!(parse_time("2000-03-01T00:00:00.5Z"), Some(951_868_800));
        assert_eq!(
            parse_time("2026-11-28T07:52:41.000000Z").zip(parse_time("2026-11-28T06:52:41Z")),
            Some((1_795_852_361, 1_795_848_761))
        );
        for bad in ["", "2026-11-28", "2026-13-01T00:00:00Z", "x-y-zT1:2:3Z"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn secrets_redacted() {
        let login = ServiceLogin {
            username: "svc".into(),
            password: "hunter2".into(),
            domain: DomainRef::Id("default".into()),
        };
        assert!(!format!("{login:?}").contains("hunter2"));
        assert!(!format!("{:?}", Token("gAAAA-secret".into())).contains("secret"));
    }
}
