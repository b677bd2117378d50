//! The Keystone authenticator: checks passwords and application credentials
//! against OpenStack Keystone (v3) and describes the user's projects and
//! roles, read with a service account; also the project directory the
//! policy needs.
//!
//! - Password (`name`, or `name@domain` with a domain *name*): an unscoped
//!   token proves the password; the user's projects and roles come from
//!   `GET /v3/role_assignments?user.id=..&effective&include_names`, read
//!   with the service account's system-scoped token (the `reader` role on
//!   the system is enough).
//! - Application credential: its token is scoped to the credential's
//!   project with the credential's roles; that is all the identity gets.
//! - Implied roles are added (`admin` ⇒ `member` ⇒ `reader`, `manager` ⇒
//!   `member`), so that the answer does not depend on Keystone's implied
//!   role configuration.
//! - A registry administrator holds one of `admin_roles` on the admin
//!   project (name and domain), or is named in `admin_users` (not for
//!   application credentials, which are only what their own roles make
//!   them).
//! - Successful checks are cached for `cache_ttl` under an HMAC of the
//!   credentials (`authn::cache`); a disabled user or a deleted credential
//!   stops working when the entry ends. Failures are never cached. A check that
//!   needs Keystone fails with [`AuthnError::Unavailable`] within `timeout`,
//!   while cached identities keep working.
//! - The service token is kept until shortly before it expires, and renewed
//!   when Keystone refuses it.

mod api;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer};

use self::api::{Api, ApiError, DomainRef, NamedInDomain, ServiceLogin, TokenBody};
use crate::authn::cache::Cache;
use crate::authn::{
    Authenticator, AuthnError, AuthnFuture, Credentials, Identity, Method, ProjectDirectory,
    ProjectInfo, ProjectRoles,
};

/// Keystone settings from the configuration file. Durations are in seconds
/// (fractions allowed).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeystoneConfig {
    /// Keystone's base URL, with or without `/v3`
    /// (`https://keystone.example.org:5000`).
    pub url: String,
    /// The domain (id) of users who log in without `@domain`.
    pub user_domain_id: String,
    /// The service account that reads users, role assignments and projects:
    /// it needs the `reader` role on the system.
    pub service_username: String,
    pub service_password: String,
    /// The service account's domain (id).
    pub service_domain_id: String,
    /// The project whose `admin_roles` make a registry administrator.
    pub admin_project: String,
    /// The admin project's domain (id).
    pub admin_project_domain_id: String,
    /// Roles on the admin project that make a registry administrator.
    pub admin_roles: Vec<String>,
    /// Users who are registry administrators when they log in with a
    /// password: a user id, `name@domain` (domain name or id), or a bare
    /// name (any domain).
    pub admin_users: Vec<String>,
    /// PEM certificates to trust for Keystone, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Bound on a whole check against Keystone (every request it needs).
    #[serde(rename = "timeout_secs", deserialize_with = "secs")]
    pub timeout: Duration,
    #[serde(rename = "connect_timeout_secs", deserialize_with = "secs")]
    pub connect_timeout: Duration,
    /// How long a successful check is remembered.
    #[serde(rename = "cache_ttl_secs", deserialize_with = "secs")]
    pub cache_ttl: Duration,
    /// The most remembered checks.
    pub cache_max_entries: usize,
    /// How long the project directory is reused.
    #[serde(rename = "projects_ttl_secs", deserialize_with = "secs")]
    pub projects_ttl: Duration,
    /// How long a user's role assignments, read for a password login, are
    /// reused by the next password logins of that user (the password is
    /// still checked by Keystone every time the credential cache misses).
    /// A removed role stops counting at the latest after this long.
    #[serde(rename = "roles_ttl_secs", deserialize_with = "secs")]
    pub roles_ttl: Duration,
    /// How long past `projects_ttl` a directory may still serve while
    /// Keystone is unavailable.
    #[serde(rename = "projects_max_stale_secs", deserialize_with = "secs")]
    pub projects_max_stale: Duration,
}

impl Default for KeystoneConfig {
    fn default() -> Self {
        KeystoneConfig {
            url: String::new(),
            user_domain_id: "default".into(),
            service_username: String::new(),
            service_password: String::new(),
            service_domain_id: "default".into(),
            admin_project: "admin".into(),
            admin_project_domain_id: "default".into(),
            admin_roles: vec!["admin".into()],
            admin_users: Vec::new(),
            ca_file: None,
            timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            cache_ttl: Duration::from_secs(60),
            cache_max_entries: 10_000,
            projects_ttl: Duration::from_secs(30),
            roles_ttl: Duration::from_secs(30),
            projects_max_stale: Duration::from_secs(300),
        }
    }
}

impl fmt::Debug for KeystoneConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeystoneConfig")
            .field("url", &self.url)
            .field("user_domain_id", &self.user_domain_id)
            .field("service_username", &self.service_username)
            .field("service_password", &"<redacted>")
            .field("service_domain_id", &self.service_domain_id)
            .field("admin_project", &self.admin_project)
            .field("admin_project_domain_id", &self.admin_project_domain_id)
            .field("admin_roles", &self.admin_roles)
            .field("admin_users", &self.admin_users)
            .field("ca_file", &self.ca_file)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("cache_ttl", &self.cache_ttl)
            .field("cache_max_entries", &self.cache_max_entries)
            .field("projects_ttl", &self.projects_ttl)
            .field("roles_ttl", &self.roles_ttl)
            .field("projects_max_stale", &self.projects_max_stale)
            .finish()
    }
}

fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = f64::deserialize(d)?;
    Duration::try_from_secs_f64(s).map_err(serde::de::Error::custom)
}

/// Why the authenticator could not be built.
#[derive(Debug, thiserror::Error)]
pub enum KeystoneError {
    #[error("keystone: invalid configuration: {0}")]
    Config(String),
    #[error("keystone: cannot read the CA file {path}: {source}")]
    CaFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("keystone: cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("keystone: the system's random source failed")]
    Random,
}

/// The project directory as last read, and when; and when reading it last
/// failed.
#[derive(Default)]
struct DirectoryState {
    current: Option<(Arc<ProjectDirectory>, Instant)>,
    failed_at: Option<Instant>,
}

/// After a failed read of the project directory, callers within this time
/// get the stale directory (or the failure) at once rather than each
/// waiting for Keystone's timeout again.
const DIRECTORY_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Authenticates against Keystone (see the module doc).
pub struct KeystoneAuthenticator {
    config: KeystoneConfig,
    api: Api,
    cache: Cache,
    directory: tokio::sync::Mutex<DirectoryState>,
    /// Role assignments by user id, with when they were read.
    roles: std::sync::Mutex<HashMap<String, (Instant, UserRoles)>>,
}

/// A user's projects with their roles, and whether those roles make the
/// user an administrator.
type UserRoles = (Vec<ProjectRoles>, bool);

impl fmt::Debug for KeystoneAuthenticator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeystoneAuthenticator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KeystoneAuthenticator {
    /// Checks the configuration and builds the HTTP client (no request is
    /// made: Keystone may be down at start-up).
    pub fn new(config: KeystoneConfig) -> Result<KeystoneAuthenticator, KeystoneError> {
        let mut problems = Vec::new();
        match reqwest::Url::parse(&config.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
            Ok(_) => problems.push(format!("url {:?} is not an http(s) URL", config.url)),
            Err(e) => problems.push(format!("url {:?}: {e}", config.url)),
        }
        if config.service_username.is_empty() || config.service_password.is_empty() {
            problems.push("service_username and service_password are required".into());
        }
        for (name, value) in [
            ("user_domain_id", &config.user_domain_id),
            ("service_domain_id", &config.service_domain_id),
            ("admin_project", &config.admin_project),
            ("admin_project_domain_id", &config.admin_project_domain_id),
        ] {
            if value.is_empty() {
                problems.push(format!("{name} must not be empty"));
            }
        }
        if config.timeout.is_zero() || config.connect_timeout.is_zero() {
            problems.push("timeouts must be positive".into());
        }
        if !problems.is_empty() {
            return Err(KeystoneError::Config(problems.join("; ")));
        }

        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            // Never follow a redirect with the service account's token.
            .redirect(reqwest::redirect::Policy::none())
            // Servers close idle kept-alive connections after a few seconds
            // (gunicorn 2 s, Apache 5 s); reusing one just as it closes fails
            // the request. Drop ours first (and retry once, see `Api::send`).
            .pool_idle_timeout(Duration::from_secs(1))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|source| KeystoneError::CaFile {
                path: path.clone(),
                source,
            })?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build()?;

        let base = config.url.trim_end_matches('/');
        let v3 = if base.ends_with("/v3") {
            base.to_owned()
        } else {
            format!("{base}/v3")
        };
        let service = ServiceLogin {
            username: config.service_username.clone(),
            password: config.service_password.clone(),
            domain: DomainRef::Id(config.service_domain_id.clone()),
        };
        let api = Api::new(http, v3, config.timeout, service);
        let cache = Cache::new(config.cache_ttl, config.cache_max_entries)
            .map_err(|()| KeystoneError::Random)?;
        Ok(KeystoneAuthenticator {
            config,
            api,
            cache,
            directory: tokio::sync::Mutex::new(DirectoryState::default()),
            roles: std::sync::Mutex::new(HashMap::new()),
        })
    }

    /// The user's role assignments, from the short-lived roles cache or
    /// from Keystone (which keeps the login's latency close to Keystone's
    /// own password check: the assignments query costs more than it).
    async fn roles_of(&self, user_id: &str) -> Result<UserRoles, ApiError> {
        let ttl = self.config.roles_ttl;
        if !ttl.is_zero() {
            let roles = self.roles.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((read, cached)) = roles.get(user_id)
                && read.elapsed() < ttl
            {
                return Ok(cached.clone());
            }
        }
        let fresh = self.projects_of(user_id).await?;
        if !ttl.is_zero() {
            let mut roles = self.roles.lock().unwrap_or_else(|p| p.into_inner());
            if roles.len() >= self.config.cache_max_entries {
                roles.retain(|_, (read, _)| read.elapsed() < ttl);
            }
            if roles.len() < self.config.cache_max_entries {
                roles.insert(user_id.to_owned(), (Instant::now(), fresh.clone()));
            }
        }
        Ok(fresh)
    }

    /// The settings in use.
    pub fn config(&self) -> &KeystoneConfig {
        &self.config
    }

    /// Runs `f` against Keystone within the configured timeout.
    async fn bounded<T>(
        &self,
        f: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, AuthnError> {
        match tokio::time::timeout(self.config.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(ApiError::Invalid | ApiError::NotFound)) => Err(AuthnError::Invalid),
            Ok(Err(ApiError::Unavailable(why))) => {
                tracing::warn!(%why, "Keystone unavailable");
                Err(AuthnError::Unavailable(why))
            }
            Err(_) => {
                let why = format!("Keystone did not answer within {:?}", self.config.timeout);
                tracing::warn!(%why, "Keystone unavailable");
                Err(AuthnError::Unavailable(why))
            }
        }
    }

    async fn check(&self, credentials: &Credentials) -> Result<Identity, AuthnError> {
        let (kind, account, secret) = match credentials {
            Credentials::Password {
                username,
                domain,
                password,
            } => {
                let domain = self.user_domain(domain.as_deref());
                // Length-prefixed: no two (user, domain) pairs share a string.
                let account = match &domain {
                    DomainRef::Id(d) => format!("{}:{username}:id:{d}", username.len()),
                    DomainRef::Name(d) => format!("{}:{username}:name:{d}", username.len()),
                };
                ("password", account, password)
            }
            Credentials::ApplicationCredential { id, secret } => {
                ("application_credential", id.clone(), secret)
            }
        };
        if secret.is_empty() {
            return Err(AuthnError::Invalid);
        }
        let key = self.cache.key(kind, &account, secret);
        if let Some(identity) = self.cache.get(&key) {
            tracing::debug!(account = %credentials.account(), "Keystone check served from cache");
            return Ok(identity);
        }
        let result = match credentials {
            Credentials::Password {
                username,
                domain,
                password,
            } => {
                let domain = self.user_domain(domain.as_deref());
                self.bounded(self.password(username, &domain, password))
                    .await
            }
            Credentials::ApplicationCredential { id, secret } => {
                self.bounded(self.application_credential(id, secret)).await
            }
        };
        match &result {
            Ok(identity) => {
                tracing::debug!(account = %credentials.account(), user_id = %identity.user_id,
                    "Keystone accepted the credentials");
                self.cache.insert(key, identity.clone());
            }
            Err(AuthnError::Invalid) => {
                tracing::debug!(account = %credentials.account(), "Keystone refused the credentials");
            }
            Err(AuthnError::Unavailable(_)) => {}
        }
        result
    }

    /// How a login's domain is named in the request: the configured user
    /// domain by id, any other by name.
    fn user_domain(&self, domain: Option<&str>) -> DomainRef {
        match domain {
            None => DomainRef::Id(self.config.user_domain_id.clone()),
            Some(d) if d == self.config.user_domain_id => DomainRef::Id(d.to_owned()),
            Some(d) => DomainRef::Name(d.to_owned()),
        }
    }

    async fn password(
        &self,
        username: &str,
        domain: &DomainRef,
        password: &str,
    ) -> Result<Identity, ApiError> {
        let token = self.api.password(username, domain, password).await?;
        let (projects, admin_by_role) = self.roles_of(&token.user.id).await?;
        let domain_name = token
            .user
            .domain
            .name
            .clone()
            .unwrap_or_else(|| token.user.domain.id.clone());
        let admin = admin_by_role
            || self.named_admin(
                &token.user.id,
                &token.user.name,
                &domain_name,
                &token.user.domain.id,
            );
        Ok(Identity {
            user_id: token.user.id,
            username: token.user.name,
            domain: domain_name,
            method: Method::Password,
            projects,
            admin,
        })
    }

    async fn application_credential(&self, id: &str, secret: &str) -> Result<Identity, ApiError> {
        let token: TokenBody = self.api.application_credential(id, secret).await?;
        let Some(project) = token.project else {
            // A system- or domain-scoped credential: no project to act for.
            return Err(ApiError::Unavailable(
                "Keystone gave an application credential a token without a project".into(),
            ));
        };
        let roles = with_implied(token.roles.iter().filter_map(|r| r.name.as_deref()));
        let admin = self.is_admin_project(&project) && self.has_admin_role(&roles);
        Ok(Identity {
            user_id: token.user.id,
            username: token.user.name,
            domain: token
                .user
                .domain
                .name
                .unwrap_or_else(|| token.user.domain.id.clone()),
            method: Method::ApplicationCredential { id: id.to_owned() },
            projects: vec![ProjectRoles {
                id: project.id,
                name: project.name,
                roles,
            }],
            admin,
        })
    }

    /// The user's projects with their roles (implied ones added), sorted by
    /// name, and whether they make the user an administrator.
    async fn projects_of(&self, user_id: &str) -> Result<(Vec<ProjectRoles>, bool), ApiError> {
        let assignments = self.api.role_assignments(user_id).await?;
        let mut by_id: BTreeMap<String, (NamedInDomain, Vec<String>)> = BTreeMap::new();
        for a in assignments {
            let (Some(project), Some(role)) = (a.scope.project, a.role.name) else {
                continue;
            };
            by_id
                .entry(project.id.clone())
                .or_insert_with(|| (project, Vec::new()))
                .1
                .push(role);
        }
        let mut admin = false;
        let mut projects: Vec<ProjectRoles> = by_id
            .into_values()
            .map(|(project, roles)| {
                let roles = with_implied(roles.iter().map(String::as_str));
                if self.is_admin_project(&project) && self.has_admin_role(&roles) {
                    admin = true;
                }
                ProjectRoles {
                    id: project.id,
                    name: project.name,
                    roles,
                }
            })
            .collect();
        projects.sort_by(|a, b| a.name.cmp(&b.name).then_with(|| a.id.cmp(&b.id)));
        Ok((projects, admin))
    }

    fn is_admin_project(&self, p: &NamedInDomain) -> bool {
        p.name == self.config.admin_project
            && p.domain
                .as_ref()
                .is_some_and(|d| d.id == self.config.admin_project_domain_id)
    }

    fn has_admin_role(&self, roles: &BTreeSet<String>) -> bool {
        roles.iter().any(|r| {
            self.config
                .admin_roles
                .iter()
                .any(|a| a.eq_ignore_ascii_case(r))
        })
    }

    fn named_admin(&self, user_id: &str, name: &str, domain_name: &str, domain_id: &str) -> bool {
        self.config.admin_users.iter().any(|u| {
            u == user_id
                || u == name
                || u.split_once('@')
                    .is_some_and(|(n, d)| n == name && (d == domain_name || d == domain_id))
        })
    }

    /// The current identity of a user who logged in with a password before
    /// (refresh tokens): `Invalid` if the user or their domain is gone or
    /// disabled. Cached like a check.
    pub async fn reauthorize(&self, user_id: &str) -> Result<Identity, AuthnError> {
        if user_id.is_empty() {
            return Err(AuthnError::Invalid);
        }
        let key = self.cache.key("reauthorize", user_id, "");
        if let Some(identity) = self.cache.get(&key) {
            return Ok(identity);
        }
        let identity = self.bounded(self.reauthorize_uncached(user_id)).await?;
        self.cache.insert(key, identity.clone());
        Ok(identity)
    }

    async fn reauthorize_uncached(&self, user_id: &str) -> Result<Identity, ApiError> {
        let user = self.api.user(user_id).await?;
        if !user.enabled {
            return Err(ApiError::Invalid);
        }
        let domain = self.api.domain(&user.domain_id).await?;
        if !domain.enabled {
            return Err(ApiError::Invalid);
        }
        let (projects, admin_by_role) = self.projects_of(&user.id).await?;
        let admin =
            admin_by_role || self.named_admin(&user.id, &user.name, &domain.name, &user.domain_id);
        Ok(Identity {
            user_id: user.id,
            username: user.name,
            domain: domain.name,
            method: Method::RefreshToken,
            projects,
            admin,
        })
    }

    /// Every project with its tags, keyed by name (see
    /// [`build_directory`] for names in several domains). Reused for
    /// `projects_ttl`; while Keystone is unavailable the last directory
    /// serves for up to `projects_max_stale` more, then this fails (never
    /// an empty directory).
    pub async fn projects(&self) -> Result<Arc<ProjectDirectory>, AuthnError> {
        let mut state = self.directory.lock().await;
        let age = state.current.as_ref().map(|(_, fetched)| fetched.elapsed());
        if let (Some((directory, _)), Some(age)) = (&state.current, age)
            && age < self.config.projects_ttl
        {
            return Ok(directory.clone());
        }
        let recently_failed = state
            .failed_at
            .is_some_and(|t| t.elapsed() < DIRECTORY_RETRY_AFTER);
        let error = if recently_failed {
            AuthnError::Unavailable("Keystone failed to list the projects just now".into())
        } else {
            match self.bounded(self.api.projects()).await {
                Ok(projects) => {
                    let directory =
                        Arc::new(build_directory(projects, &self.config.user_domain_id));
                    state.current = Some((directory.clone(), Instant::now()));
                    state.failed_at = None;
                    return Ok(directory);
                }
                Err(AuthnError::Invalid) => {
                    AuthnError::Unavailable("Keystone did not list the projects".into())
                }
                Err(e) => e,
            }
        };
        state.failed_at = state
            .failed_at
            .filter(|_| recently_failed)
            .or(Some(Instant::now()));
        // Staleness is judged as of the call's start, not after the timeout.
        match (&state.current, age) {
            (Some((directory, _)), Some(age))
                if age < self.config.projects_ttl + self.config.projects_max_stale =>
            {
                tracing::warn!(?age, "serving a stale project directory");
                Ok(directory.clone())
            }
            _ => Err(error),
        }
    }
}

/// Keys the projects by name. Names are unique only within a domain: when
/// several domains have a project of one name, the one in `preferred_domain`
/// (else the first by domain id) is keyed by its bare name and the others
/// by `name@domain_id`. Every entry keeps its real name, so a policy that
/// compares names sees them all (and can call the name ambiguous).
fn build_directory(mut projects: Vec<api::Project>, preferred_domain: &str) -> ProjectDirectory {
    projects.sort_by(|a, b| {
        (a.domain_id != preferred_domain, &a.domain_id, &a.id).cmp(&(
            b.domain_id != preferred_domain,
            &b.domain_id,
            &b.id,
        ))
    });
    let mut directory = ProjectDirectory::new();
    for p in projects {
        let key = if directory.contains_key(&p.name) {
            format!("{}@{}", p.name, p.domain_id)
        } else {
            p.name.clone()
        };
        directory.insert(
            key,
            ProjectInfo {
                id: p.id,
                name: p.name,
                tags: p.tags,
            },
        );
    }
    directory
}

/// `roles` with the roles they imply: `admin` and `manager` imply `member`,
/// which implies `reader` (compared ASCII-case-insensitively).
fn with_implied<'a>(roles: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for role in roles {
        out.insert(role.to_owned());
        let implied: &[&str] = match role.to_ascii_lowercase().as_str() {
            "admin" | "manager" => &["member", "reader"],
            "member" => &["reader"],
            _ => &[],
        };
        for r in implied {
            if !out.iter().any(|have| have.eq_ignore_ascii_case(r)) {
                out.insert((*r).to_owned());
            }
        }
    }
    out
}

impl Authenticator for KeystoneAuthenticator {
    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> AuthnFuture<'a> {
        Box::pin(self.check(credentials))
    }
}
