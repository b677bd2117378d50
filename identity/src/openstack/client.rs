//! Keystone v3 as the caller's client: logging in with the caller's own
//! credential, the projects it may scope to, rescoping, and the caller's
//! application credentials. Errors keep Keystone's status and message
//! (which never hold a secret) so that callers can say what went wrong.

use std::fmt;
use std::time::Duration;

use reqwest::StatusCode;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::percent::encode;

use super::{ClientConfig, Credential, DomainRef, ProjectRef, Secret, UserRef};

/// How long one request to Keystone may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A Keystone token, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

/// What went wrong talking to Keystone. `what` names the request
/// ("authentication", "creating an application credential", ...);
/// `message` is Keystone's own explanation.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot read the CA file {}: {cause}", .path.display())]
    CaFile {
        path: std::path::PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot build the HTTP client: {0}")]
    Build(reqwest::Error),
    #[error("cannot reach Keystone at {url}: {why}")]
    Unreachable { url: String, why: String },
    #[error("Keystone refused {what} (401): {message}")]
    Unauthorized { what: &'static str, message: String },
    #[error("Keystone forbids {what} (403): {message}")]
    Forbidden { what: &'static str, message: String },
    #[error("Keystone found nothing for {what} (404): {message}")]
    NotFound { what: &'static str, message: String },
    #[error("Keystone refused {what} ({status}): {message}")]
    Status {
        what: &'static str,
        status: u16,
        message: String,
    },
    #[error("Keystone's answer to {what} is not what was expected: {why}")]
    BadAnswer { what: &'static str, why: String },
}

/// A project in a token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScopedProject {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    pub domain_name: Option<String>,
}

/// The application credential a token was issued for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenApplicationCredential {
    pub id: String,
    /// Restricted credentials (the default) may not create application
    /// credentials or trusts.
    pub restricted: bool,
}

/// A token and what Keystone says about it.
#[derive(Clone, Debug)]
pub struct Login {
    pub token: Token,
    pub user_id: String,
    pub user_name: String,
    pub project: Option<ScopedProject>,
    /// Role names on the project, implied roles included.
    pub roles: Vec<String>,
    pub application_credential: Option<TokenApplicationCredential>,
}

/// A project the caller may scope to (`GET /v3/auth/projects`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct AccessibleProject {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub domain_id: String,
}

/// What to create.
#[derive(Clone, Debug)]
pub struct NewApplicationCredential {
    pub name: String,
    pub description: String,
    /// Role names.
    pub roles: Vec<String>,
    /// `YYYY-MM-DDTHH:MM:SSZ`, or never.
    pub expires_at: Option<String>,
}

/// A created application credential; the secret is shown this once.
#[derive(Clone, Debug)]
pub struct ApplicationCredential {
    pub id: String,
    pub name: String,
    pub secret: Secret,
    pub project_id: Option<String>,
    pub expires_at: Option<String>,
    pub roles: Vec<String>,
}

#[derive(Deserialize)]
struct TokenResponse {
    token: TokenBody,
}

#[derive(Deserialize)]
struct TokenBody {
    user: IdName,
    #[serde(default)]
    project: Option<TokenProject>,
    #[serde(default)]
    roles: Vec<IdName>,
    #[serde(default)]
    application_credential: Option<TokenAppCred>,
}

#[derive(Deserialize)]
struct IdName {
    id: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct TokenProject {
    id: String,
    name: String,
    #[serde(default)]
    domain: Option<IdName>,
}

#[derive(Deserialize)]
struct TokenAppCred {
    id: String,
    #[serde(default = "restricted_default")]
    restricted: bool,
}

fn restricted_default() -> bool {
    true
}

#[derive(Deserialize)]
struct ProjectsResponse {
    projects: Vec<AccessibleProject>,
}

#[derive(Deserialize)]
struct AppCredResponse {
    application_credential: AppCredBody,
}

#[derive(Deserialize)]
struct AppCredBody {
    id: String,
    name: String,
    secret: String,
    #[serde(default)]
    project_id: Option<String>,
    #[serde(default)]
    expires_at: Option<String>,
    #[serde(default)]
    roles: Vec<IdName>,
}

/// Keystone's v3 API with the caller's credentials.
#[derive(Debug, Clone)]
pub struct IdentityClient {
    http: reqwest::Client,
    /// `.../v3`, no trailing slash.
    v3: String,
}

fn domain_json(d: &DomainRef) -> Value {
    match d {
        DomainRef::Id(id) => json!({ "id": id }),
        DomainRef::Name(name) => json!({ "name": name }),
    }
}

fn user_json(u: &UserRef) -> Value {
    match u {
        UserRef::Id(id) => json!({ "id": id }),
        UserRef::Name { name, domain } => json!({ "name": name, "domain": domain_json(domain) }),
    }
}

/// The `scope` of a token request for a project.
fn project_scope(p: &ProjectRef) -> Value {
    match p {
        ProjectRef::Id(id) => json!({ "project": { "id": id } }),
        ProjectRef::Name { name, domain } => {
            json!({ "project": { "name": name, "domain": domain_json(domain) } })
        }
    }
}

/// Keystone's `error.message`, or the start of the body.
async fn error_message(resp: reqwest::Response) -> String {
    let text = resp.text().await.unwrap_or_default();
    serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| text.chars().take(200).collect())
}

/// The answer's JSON body; one that does not parse is a `BadAnswer`.
async fn json_body<T: DeserializeOwned>(
    what: &'static str,
    resp: reqwest::Response,
) -> Result<T, ClientError> {
    resp.json().await.map_err(|e| ClientError::BadAnswer {
        what,
        why: e.to_string(),
    })
}

async fn status_error(what: &'static str, resp: reqwest::Response) -> ClientError {
    let status = resp.status();
    let message = error_message(resp).await;
    match status {
        StatusCode::UNAUTHORIZED => ClientError::Unauthorized { what, message },
        StatusCode::FORBIDDEN => ClientError::Forbidden { what, message },
        StatusCode::NOT_FOUND => ClientError::NotFound { what, message },
        s => ClientError::Status {
            what,
            status: s.as_u16(),
            message,
        },
    }
}

impl IdentityClient {
    /// An HTTP client for `config`'s Keystone (trusting its `cacert` too).
    /// Makes no request.
    pub fn new(config: &ClientConfig) -> Result<IdentityClient, ClientError> {
        let mut builder = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT)
            // A redirect would carry the password somewhere else.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.cacert {
            let pem = std::fs::read(path).map_err(|cause| ClientError::CaFile {
                path: path.clone(),
                cause,
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(ClientError::Build)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Ok(url) = reqwest::Url::parse(&config.identity_url)
            && url.scheme() == "http"
            && !matches!(url.host_str(), Some("localhost" | "127.0.0.1" | "[::1]"))
        {
            tracing::warn!(
                url = %config.identity_url,
                "Keystone's URL is plain http: the password and the new secret cross the network unencrypted"
            );
        }
        Ok(IdentityClient {
            http: builder.build().map_err(ClientError::Build)?,
            v3: config.identity_url.clone(),
        })
    }

    /// Keystone's v3 URL.
    pub fn url(&self) -> &str {
        &self.v3
    }

    fn transport(&self, e: reqwest::Error) -> ClientError {
        // The URL is in the message already.
        let e = e.without_url();
        let mut why = if e.is_timeout() {
            format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())
        } else {
            e.to_string()
        };
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            why.push_str(": ");
            why.push_str(&s.to_string());
            source = s.source();
        }
        ClientError::Unreachable {
            url: self.v3.clone(),
            why,
        }
    }

    /// `POST /v3/auth/tokens?nocatalog`.
    async fn issue(&self, what: &'static str, auth: Value) -> Result<Login, ClientError> {
        let resp = self
            .http
            .post(format!("{}/auth/tokens?nocatalog", self.v3))
            .json(&json!({ "auth": auth }))
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = resp.status();
        if status == StatusCode::NOT_FOUND || status == StatusCode::BAD_REQUEST {
            // An unknown application credential is a 404, a malformed one a
            // 400: to the caller, both are refused credentials.
            let message = error_message(resp).await;
            return Err(ClientError::Unauthorized { what, message });
        }
        if !status.is_success() {
            return Err(status_error(what, resp).await);
        }
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(|t| Token(t.to_owned()))
            .ok_or_else(|| ClientError::BadAnswer {
                what,
                why: "no X-Subject-Token header".into(),
            })?;
        let body: TokenResponse = json_body(what, resp).await?;
        let b = body.token;
        Ok(Login {
            token,
            user_id: b.user.id,
            user_name: b.user.name,
            project: b.project.map(|p| ScopedProject {
                id: p.id,
                name: p.name,
                domain_id: p.domain.as_ref().map(|d| d.id.clone()).unwrap_or_default(),
                domain_name: p.domain.map(|d| d.name).filter(|n| !n.is_empty()),
            }),
            roles: b.roles.into_iter().map(|r| r.name).collect(),
            application_credential: b
                .application_credential
                .map(|a| TokenApplicationCredential {
                    id: a.id,
                    restricted: a.restricted,
                }),
        })
    }

    /// Logs in with `credential`: unscoped for a password; an application
    /// credential's token is always scoped to its project.
    pub async fn login(&self, credential: &Credential) -> Result<Login, ClientError> {
        let auth = match credential {
            Credential::Password { user, password } => {
                let mut u = user_json(user);
                u["password"] = json!(password.expose());
                json!({
                    "identity": {"methods": ["password"], "password": {"user": u}},
                    "scope": "unscoped",
                })
            }
            Credential::ApplicationCredential {
                id,
                name,
                user,
                secret,
            } => {
                let mut ac = json!({ "secret": secret.expose() });
                if let Some(id) = id {
                    ac["id"] = json!(id);
                } else {
                    ac["name"] = json!(name);
                    if let Some(u) = user {
                        ac["user"] = user_json(u);
                    }
                }
                json!({
                    "identity": {"methods": ["application_credential"],
                        "application_credential": ac},
                })
            }
        };
        self.issue("the login", auth).await
    }

    /// A token scoped to `project`, from an unscoped `token`.
    pub async fn rescope(&self, token: &Token, project: &ProjectRef) -> Result<Login, ClientError> {
        let auth = json!({
            "identity": {"methods": ["token"], "token": {"id": token.0}},
            "scope": project_scope(project),
        });
        self.issue("the project scope", auth).await
    }

    /// The projects the token's user may scope to.
    pub async fn accessible_projects(
        &self,
        token: &Token,
    ) -> Result<Vec<AccessibleProject>, ClientError> {
        const WHAT: &str = "listing your projects";
        let resp = self
            .http
            .get(format!("{}/auth/projects", self.v3))
            .header("x-auth-token", &token.0)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            return Err(status_error(WHAT, resp).await);
        }
        let body: ProjectsResponse = json_body(WHAT, resp).await?;
        Ok(body.projects)
    }

    /// Creates an application credential for the token's user and project,
    /// letting Keystone generate the secret.
    pub async fn create_application_credential(
        &self,
        token: &Token,
        user_id: &str,
        new: &NewApplicationCredential,
    ) -> Result<ApplicationCredential, ClientError> {
        const WHAT: &str = "creating the application credential";
        let roles: Vec<Value> = new.roles.iter().map(|r| json!({ "name": r })).collect();
        let body = json!({"application_credential": {
            "name": new.name,
            "description": new.description,
            "roles": roles,
            "expires_at": new.expires_at,
        }});
        let resp = self
            .http
            .post(format!(
                "{}/users/{}/application_credentials",
                self.v3,
                encode(user_id)
            ))
            .header("x-auth-token", &token.0)
            .json(&body)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            return Err(status_error(WHAT, resp).await);
        }
        let body: AppCredResponse = json_body(WHAT, resp).await?;
        let ac = body.application_credential;
        Ok(ApplicationCredential {
            id: ac.id,
            name: ac.name,
            secret: Secret::new(ac.secret),
            project_id: ac.project_id,
            expires_at: ac.expires_at,
            roles: ac.roles.into_iter().map(|r| r.name).collect(),
        })
    }

    /// Deletes one of the token user's application credentials.
    pub async fn delete_application_credential(
        &self,
        token: &Token,
        user_id: &str,
        id: &str,
    ) -> Result<(), ClientError> {
        let resp = self
            .http
            .delete(format!(
                "{}/users/{}/application_credentials/{}",
                self.v3,
                encode(user_id),
                encode(id)
            ))
            .header("x-auth-token", &token.0)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        if !resp.status().is_success() {
            return Err(status_error("deleting the application credential", resp).await);
        }
        Ok(())
    }
}
