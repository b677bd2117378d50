//! The OpenStack client side: finding the caller's credentials the way the
//! `openstack` CLI does, and talking to Keystone with them ([`client`]).
//! berth's own tools use this (`berth pull-secret`); the token service does
//! not (it checks other people's credentials, see [`crate::authn`]).
//!
//! Where credentials come from ([`ClientConfig::resolve`]):
//! - `OS_CLOUD` names a cloud in `clouds.yaml`, searched as openstacksdk
//!   does: `OS_CLIENT_CONFIG_FILE`, then `clouds.yaml` (or `.yml`, `.json`)
//!   in the current directory, `~/.config/openstack` (and
//!   `$XDG_CONFIG_HOME/openstack`), `/etc/xdg/openstack`, `/etc/openstack`;
//!   the first file found wins. A `secure.yaml` found the same way
//!   (`OS_CLIENT_SECURE_FILE` first) is merged over it, key by key.
//! - `OS_*` variables that are set override the cloud's values, as the
//!   `openstack` CLI's options (whose defaults they are) do, so that e.g.
//!   `OS_PASSWORD` can supply a password kept out of `clouds.yaml`. A
//!   variable replaces its pair too: `OS_USERNAME` drops the file's
//!   `user_id`, `OS_PROJECT_DOMAIN_NAME` its `project_domain_id`.
//! - Without `OS_CLOUD`, the `OS_*` variables alone (an openrc file).
//! - Domains default as the `openstack` CLI does: `user_domain_*`, else
//!   `domain_*`, else `default_domain` (`OS_DEFAULT_DOMAIN`, an id), else the
//!   id `default`; the same for the project domain.
//! - `auth_type` `password`/`v3password` (the default) or
//!   `v3applicationcredential`. Keystone v3 only.
//! - `OS_INSECURE` (or `verify: false`, `insecure: true`) is refused, not
//!   ignored: the tools send a password to Keystone and receive new secrets
//!   from it, and a check silently skipped would hand both to whoever sits
//!   in between. `OS_CACERT` (`cacert`) names a CA to trust instead.

pub mod client;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use serde_norway::Value;

/// A secret string (password, application credential secret), redacted in
/// `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself, for the one place that must send or write it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// A Keystone domain, by id or by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainRef {
    Id(String),
    Name(String),
}

impl fmt::Display for DomainRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainRef::Id(id) => write!(f, "domain id {id}"),
            DomainRef::Name(name) => write!(f, "domain {name}"),
        }
    }
}

/// A Keystone user, by id or by name in a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

impl fmt::Display for UserRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserRef::Id(id) => write!(f, "user id {id}"),
            UserRef::Name { name, domain } => write!(f, "user {name} ({domain})"),
        }
    }
}

/// A Keystone project, by id or by name in a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProjectRef {
    Id(String),
    Name { name: String, domain: DomainRef },
}

/// The caller's credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credential {
    /// `auth_type: password` (`v3password`).
    Password { user: UserRef, password: Secret },
    /// `auth_type: v3applicationcredential`: by id, or by name and user.
    ApplicationCredential {
        id: Option<String>,
        name: Option<String>,
        user: Option<UserRef>,
        secret: Secret,
    },
}

/// What the environment gives: the variables, the current directory, the
/// home directory and the system-wide configuration directories. Tests
/// build one; the binary takes the process's ([`Environment::from_process`]).
#[derive(Clone, Debug, Default)]
pub struct Environment {
    pub vars: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub home: Option<PathBuf>,
    /// Searched after the user's directory, in order
    /// (`/etc/xdg/openstack`, `/etc/openstack`).
    pub system_dirs: Vec<PathBuf>,
}

impl Environment {
    /// The process's environment (variables that are not UTF-8 are left out).
    pub fn from_process() -> Environment {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .collect::<BTreeMap<_, _>>();
        let home = vars
            .get("HOME")
            .filter(|h| !h.is_empty())
            .map(PathBuf::from);
        Environment {
            cwd: std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
            home,
            vars,
            system_dirs: vec![
                PathBuf::from("/etc/xdg/openstack"),
                PathBuf::from("/etc/openstack"),
            ],
        }
    }

    /// A variable, when set and not empty (openrc files often set unused
    /// ones to "").
    pub fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    /// Where a `clouds.yaml` (`stem` "clouds") or `secure.yaml` ("secure")
    /// is looked for, in order; `override_var` names a file to look at first.
    pub fn config_candidates(&self, stem: &str, override_var: &str) -> Vec<PathBuf> {
        let mut dirs = vec![self.cwd.clone()];
        if let Some(home) = &self.home {
            dirs.push(home.join(".config/openstack"));
        }
        if let Some(xdg) = self.var("XDG_CONFIG_HOME").map(PathBuf::from)
            && xdg.is_absolute()
        {
            dirs.push(xdg.join("openstack"));
        }
        dirs.extend(self.system_dirs.iter().cloned());
        let mut out: Vec<PathBuf> = self
            .var(override_var)
            .map(PathBuf::from)
            .into_iter()
            .collect();
        for dir in dirs {
            for ext in ["yaml", "yml", "json"] {
                let p = dir.join(format!("{stem}.{ext}"));
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }
}

/// Why the caller's credentials could not be worked out.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "no OpenStack credentials: set OS_CLOUD to a cloud of your clouds.yaml, or \
         OS_AUTH_URL, OS_USERNAME and OS_PASSWORD (source your openrc file)"
    )]
    NoCredentials,
    #[error("OS_CLOUD is {cloud:?} but there is no clouds.yaml (looked for {})", list_paths(.searched))]
    NoCloudsFile {
        cloud: String,
        searched: Vec<PathBuf>,
    },
    #[error("no cloud {cloud:?} in {} (it has: {})", .file.display(), if .known.is_empty() { "none".to_owned() } else { .known.join(", ") })]
    UnknownCloud {
        cloud: String,
        file: PathBuf,
        known: Vec<String>,
    },
    #[error("cannot read {}: {cause}", .path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("cannot parse {}: {message}", .path.display())]
    Parse { path: PathBuf, message: String },
    #[error("{what} is missing from {source_desc}")]
    Missing {
        what: &'static str,
        source_desc: String,
    },
    #[error("{setting} is {value:?}: {why}")]
    Invalid {
        setting: &'static str,
        value: String,
        why: String,
    },
    #[error(
        "{setting} asks to skip TLS certificate checks: refused, since this sends your \
         password to Keystone and receives a new secret from it; give Keystone's CA \
         with OS_CACERT (or `cacert` in clouds.yaml) instead"
    )]
    Insecure { setting: String },
    #[error(
        "auth_type {0:?} is not supported: use password (v3password) or \
         v3applicationcredential"
    )]
    UnsupportedAuthType(String),
}

fn list_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The caller's OpenStack client configuration, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Keystone's v3 API (`https://keystone.example:5000/v3`, no trailing slash).
    pub identity_url: String,
    pub credential: Credential,
    /// The project the configuration names, if any (tools may take their
    /// own: `berth pull-secret --project`).
    pub project: Option<ProjectRef>,
    /// The domain of projects named without one.
    pub project_domain: DomainRef,
    /// PEM certificates to trust for Keystone, besides the system's.
    pub cacert: Option<PathBuf>,
    /// Where the settings came from, for messages.
    pub source: String,
}

/// The `OS_*` variables and the `clouds.yaml` keys they set, in order of
/// precedence. Keys of one group (non-zero) are alternatives: a variable
/// for one replaces the file's values for all (see the module doc).
const AUTH_VARS: &[(&str, &str, u8)] = &[
    ("OS_AUTH_URL", "auth_url", 0),
    ("OS_USERNAME", "username", 1),
    ("OS_USER_ID", "user_id", 1),
    ("OS_PASSWORD", "password", 0),
    ("OS_USER_DOMAIN_NAME", "user_domain_name", 2),
    ("OS_USER_DOMAIN_ID", "user_domain_id", 2),
    ("OS_PROJECT_NAME", "project_name", 3),
    ("OS_PROJECT_ID", "project_id", 3),
    ("OS_TENANT_NAME", "project_name", 3),
    ("OS_TENANT_ID", "project_id", 3),
    ("OS_PROJECT_DOMAIN_NAME", "project_domain_name", 4),
    ("OS_PROJECT_DOMAIN_ID", "project_domain_id", 4),
    ("OS_DOMAIN_NAME", "domain_name", 5),
    ("OS_DOMAIN_ID", "domain_id", 5),
    (
        "OS_APPLICATION_CREDENTIAL_ID",
        "application_credential_id",
        6,
    ),
    (
        "OS_APPLICATION_CREDENTIAL_NAME",
        "application_credential_name",
        6,
    ),
    (
        "OS_APPLICATION_CREDENTIAL_SECRET",
        "application_credential_secret",
        0,
    ),
];

/// The `OS_*` variables for settings outside `auth`.
const TOP_VARS: &[(&str, &str)] = &[
    ("OS_AUTH_TYPE", "auth_type"),
    ("OS_CACERT", "cacert"),
    ("OS_INSECURE", "insecure"),
    ("OS_DEFAULT_DOMAIN", "default_domain"),
    ("OS_IDENTITY_API_VERSION", "identity_api_version"),
];

/// Settings as flat strings: the cloud's `auth` keys and its other keys.
#[derive(Debug, Default)]
struct Settings {
    auth: BTreeMap<String, String>,
    top: BTreeMap<String, String>,
}

impl Settings {
    fn auth(&self, key: &str) -> Option<&str> {
        self.auth
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }

    fn top(&self, key: &str) -> Option<&str> {
        self.top
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

impl ClientConfig {
    /// Works out the caller's credentials from `env` (see the module doc).
    pub fn resolve(env: &Environment) -> Result<ClientConfig, ConfigError> {
        let (mut settings, source) = match env.var("OS_CLOUD") {
            Some(cloud) => {
                let (settings, file) = cloud_settings(env, cloud)?;
                (settings, format!("cloud {cloud:?} in {}", file.display()))
            }
            None => {
                if env.var("OS_AUTH_URL").is_none() {
                    return Err(ConfigError::NoCredentials);
                }
                (
                    Settings::default(),
                    "the OS_* environment variables".to_owned(),
                )
            }
        };
        // The first variable of a group clears the file's keys of that group;
        // of two aliases (OS_PROJECT_NAME, OS_TENANT_NAME) the first wins.
        let mut from_env = BTreeSet::new();
        let mut cleared = BTreeSet::new();
        for &(var, key, group) in AUTH_VARS {
            if let Some(v) = env.var(var) {
                if group != 0 && cleared.insert(group) {
                    for (_, k, _) in AUTH_VARS.iter().filter(|(_, _, g)| *g == group) {
                        settings.auth.remove(*k);
                    }
                }
                if from_env.insert(key) {
                    settings.auth.insert(key.to_owned(), v.to_owned());
                }
            }
        }
        for &(var, key) in TOP_VARS {
            if let Some(v) = env.var(var) {
                settings.top.insert(key.to_owned(), v.to_owned());
            }
        }
        from_settings(&settings, source)
    }
}

/// The first file of `candidates` that exists.
fn first_existing(candidates: &[PathBuf]) -> Option<&PathBuf> {
    candidates.iter().find(|p| p.is_file())
}

fn read_yaml(path: &Path) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|cause| ConfigError::Read {
        path: path.to_owned(),
        cause,
    })?;
    serde_norway::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// `clouds.<cloud>` of a parsed file, if there.
fn cloud_entry<'a>(doc: &'a Value, cloud: &str) -> Option<&'a Value> {
    doc.get("clouds").and_then(|c| c.get(cloud))
}

/// The named cloud's settings from `clouds.yaml` with `secure.yaml` merged
/// over it, and the path of the `clouds.yaml`.
fn cloud_settings(env: &Environment, cloud: &str) -> Result<(Settings, PathBuf), ConfigError> {
    let candidates = env.config_candidates("clouds", "OS_CLIENT_CONFIG_FILE");
    let Some(file) = first_existing(&candidates).cloned() else {
        return Err(ConfigError::NoCloudsFile {
            cloud: cloud.to_owned(),
            searched: candidates,
        });
    };
    let clouds = read_yaml(&file)?;
    let secure_candidates = env.config_candidates("secure", "OS_CLIENT_SECURE_FILE");
    let secure = match first_existing(&secure_candidates) {
        Some(p) => Some(read_yaml(p)?),
        None => None,
    };
    let base = cloud_entry(&clouds, cloud);
    let over = secure.as_ref().and_then(|s| cloud_entry(s, cloud));
    let merged = match (base, over) {
        (None, None) => {
            let known = clouds
                .get("clouds")
                .and_then(Value::as_mapping)
                .map(|m| {
                    m.keys()
                        .filter_map(|k| k.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            return Err(ConfigError::UnknownCloud {
                cloud: cloud.to_owned(),
                file,
                known,
            });
        }
        (Some(b), None) => b.clone(),
        (None, Some(o)) => o.clone(),
        (Some(b), Some(o)) => {
            let mut b = b.clone();
            merge(&mut b, o);
            b
        }
    };
    let mut settings = Settings::default();
    if let Some(map) = merged.as_mapping() {
        for (k, v) in map {
            let Some(k) = k.as_str() else { continue };
            if k == "auth" {
                if let Some(auth) = v.as_mapping() {
                    for (ak, av) in auth {
                        if let (Some(ak), Some(av)) = (ak.as_str(), scalar(av)) {
                            settings.auth.insert(ak.to_owned(), av);
                        }
                    }
                }
            } else if let Some(v) = scalar(v) {
                settings.top.insert(k.to_owned(), v);
            }
        }
    }
    Ok((settings, file))
}

/// Deep merge: mappings key by key, anything else replaced.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(existing) => merge(existing, v),
                    None => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// A scalar as a string (`identity_api_version: 3`, `verify: false`).
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn parse_bool(setting: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(ConfigError::Invalid {
            setting,
            value: v.to_owned(),
            why: "not a boolean".into(),
        }),
    }
}

/// Keystone's v3 URL from an `auth_url` with or without `/v3`.
fn identity_url(auth_url: &str) -> Result<String, ConfigError> {
    let invalid = |why: String| ConfigError::Invalid {
        setting: "auth_url",
        value: auth_url.to_owned(),
        why,
    };
    match reqwest::Url::parse(auth_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
        Ok(_) => return Err(invalid("not an http(s) URL".into())),
        Err(e) => return Err(invalid(e.to_string())),
    }
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v2.0") {
        return Err(invalid(
            "Keystone v2.0 is not supported: use the v3 URL".into(),
        ));
    }
    Ok(if base.ends_with("/v3") {
        base.to_owned()
    } else {
        format!("{base}/v3")
    })
}

/// The domain from `<prefix>domain_id`/`_name`, else `domain_id`/`_name`,
/// else `default_domain`, else the id `default`.
fn domain(s: &Settings, prefix: &str) -> DomainRef {
    if let Some(id) = s.auth(&format!("{prefix}domain_id")) {
        DomainRef::Id(id.to_owned())
    } else if let Some(name) = s.auth(&format!("{prefix}domain_name")) {
        DomainRef::Name(name.to_owned())
    } else if let Some(id) = s.auth("domain_id") {
        DomainRef::Id(id.to_owned())
    } else if let Some(name) = s.auth("domain_name") {
        DomainRef::Name(name.to_owned())
    } else {
        DomainRef::Id(s.top("default_domain").unwrap_or("default").to_owned())
    }
}

fn from_settings(s: &Settings, source: String) -> Result<ClientConfig, ConfigError> {
    let missing = |what: &'static str| ConfigError::Missing {
        what,
        source_desc: source.clone(),
    };
    if let Some(v) = s.top("identity_api_version")
        && v != "3"
        && !v.starts_with("3.")
    {
        return Err(ConfigError::Invalid {
            setting: "identity_api_version",
            value: v.to_owned(),
            why: "only Keystone v3 is supported".into(),
        });
    }
    if let Some(v) = s.top("insecure")
        && parse_bool("insecure (OS_INSECURE)", v)?
    {
        return Err(ConfigError::Insecure {
            setting: format!("insecure (OS_INSECURE) = {v}"),
        });
    }
    let mut cacert = s.top("cacert").map(PathBuf::from);
    if let Some(v) = s.top("verify") {
        match v.to_ascii_lowercase().as_str() {
            "false" | "0" | "no" | "off" => {
                return Err(ConfigError::Insecure {
                    setting: format!("verify = {v}"),
                });
            }
            "true" | "1" | "yes" | "on" => {}
            // keystoneauth takes a CA bundle path in `verify` too.
            _ => cacert = cacert.or_else(|| Some(PathBuf::from(v))),
        }
    }

    let auth_url = s
        .auth("auth_url")
        .ok_or_else(|| missing("auth_url (OS_AUTH_URL)"))?;
    let identity_url = identity_url(auth_url)?;

    let user = match (s.auth("user_id"), s.auth("username")) {
        (Some(id), _) => Some(UserRef::Id(id.to_owned())),
        (None, Some(name)) => Some(UserRef::Name {
            name: name.to_owned(),
            domain: domain(s, "user_"),
        }),
        (None, None) => None,
    };
    let auth_type = s.top("auth_type").map(str::to_ascii_lowercase);
    let app_cred = match auth_type.as_deref() {
        None => s.auth("application_credential_secret").is_some() && s.auth("password").is_none(),
        Some("password" | "v3password") => false,
        Some("v3applicationcredential" | "applicationcredential") => true,
        Some(other) => return Err(ConfigError::UnsupportedAuthType(other.to_owned())),
    };
    let credential = if app_cred {
        let secret = s.auth("application_credential_secret").ok_or_else(|| {
            missing("application_credential_secret (OS_APPLICATION_CREDENTIAL_SECRET)")
        })?;
        let id = s.auth("application_credential_id").map(str::to_owned);
        let name = s.auth("application_credential_name").map(str::to_owned);
        if id.is_none() && (name.is_none() || user.is_none()) {
            return Err(missing(
                "application_credential_id (OS_APPLICATION_CREDENTIAL_ID), or its name and user",
            ));
        }
        Credential::ApplicationCredential {
            id,
            name,
            user,
            secret: Secret::new(secret),
        }
    } else {
        let user = user.ok_or_else(|| missing("username or user_id (OS_USERNAME, OS_USER_ID)"))?;
        let password = s
            .auth("password")
            .ok_or_else(|| missing("password (OS_PASSWORD)"))?;
        Credential::Password {
            user,
            password: Secret::new(password),
        }
    };
    let project_domain = domain(s, "project_");
    let project = match (s.auth("project_id"), s.auth("project_name")) {
        (Some(id), _) => Some(ProjectRef::Id(id.to_owned())),
        (None, Some(name)) => Some(ProjectRef::Name {
            name: name.to_owned(),
            domain: project_domain.clone(),
        }),
        (None, None) => None,
    };
    Ok(ClientConfig {
        identity_url,
        credential,
        project,
        project_domain,
        cacert,
        source,
    })
}

#[cfg(test)]
mod tests;
