//! Pull secrets: a Keystone application credential that can only pull a
//! project's images, and the Docker `config.json` / Kubernetes
//! `kubernetes.io/dockerconfigjson` Secret that carries it.
//!
//! The flow ([`Issuer::connect`], [`Issuer::create`]):
//! 1. log in with the caller's credential ([`crate::openstack`]);
//! 2. password: list the projects the user may scope to, then rescope the
//!    token to the wanted project (by id when `--project` is one of their
//!    ids, else by name in the project domain); application credential:
//!    its token is already scoped, to its own project only, and Keystone
//!    lets only an unrestricted one create others;
//! 3. check that the token's roles include `reader` (what the new
//!    credential gets; `member` and `admin` imply it);
//! 4. `POST /v3/users/{id}/application_credentials` with the role `reader`
//!    and an expiry, Keystone generating the secret.
//!
//! berth's token service takes the username `applicationcredential-<id>`
//! with the secret as password for that credential
//! ([`crate::authn::Credentials::from_basic`]), and grants it pull on the
//! project's namespace, as the `reader` role allows. The secret appears only
//! in what is rendered for the caller, never in logs or `Debug`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::openstack::client::{
    AccessibleProject, ClientError, IdentityClient, Login, NewApplicationCredential, ScopedProject,
};
use crate::openstack::{ClientConfig, ConfigError, Credential, DomainRef, ProjectRef, Secret};

/// The role a pull credential gets.
pub const PULL_ROLE: &str = "reader";

/// The username prefix berth's token service reads as an application
/// credential.
pub const USERNAME_PREFIX: &str = "applicationcredential-";

/// The longest `--expires-in` (beyond it, say `never`).
const MAX_EXPIRY: Duration = Duration::from_secs(100 * 366 * 24 * 3600);

/// How many names a credential is tried with (see [`Issuer::create`]).
const NAME_ATTEMPTS: u32 = 5;

/// How many of the caller's projects an error message lists.
const LISTED_PROJECTS: usize = 20;

/// Why a pull secret could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PullSecretError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Keystone(#[from] ClientError),
    #[error("--expires-in {value:?}: {why}")]
    Expiry { value: String, why: String },
    #[error("{what} {value:?} is not a valid Kubernetes name: {why}")]
    InvalidName {
        what: &'static str,
        value: String,
        why: String,
    },
    #[error("--registry {value:?}: {why}")]
    InvalidRegistry { value: String, why: String },
    #[error(
        "Keystone refused the credentials of {who} from {source_desc}: wrong user name, \
         domain or password, or a disabled user? (Keystone: {message})"
    )]
    BadCredentials {
        who: String,
        source_desc: String,
        message: String,
    },
    #[error(
        "project {project:?} ({domain}): it does not exist, or you have no role on it. {}",
        list_projects(.available)
    )]
    ProjectNotAccessible {
        project: String,
        domain: String,
        available: Vec<AccessibleProject>,
    },
    #[error(
        "your application credential is for project {actual}, so it cannot act for {wanted:?}: \
         use credentials for that project"
    )]
    WrongProject { actual: String, wanted: String },
    #[error(
        "your credential is a restricted application credential, and Keystone lets those \
         create no other application credential: log in with your password (auth_type \
         password), or with an application credential created with --unrestricted"
    )]
    RestrictedApplicationCredential,
    #[error(
        "your roles on project {project} ({}) do not include {PULL_ROLE}, which the pull \
         credential gets: ask for {PULL_ROLE} or member on it",
        if .roles.is_empty() { "none".to_owned() } else { .roles.join(", ") }
    )]
    NoReaderRole { project: String, roles: Vec<String> },
    #[error("Keystone forbids you to create application credentials: {message}")]
    CreateForbidden { message: String },
    #[error("{} exists already: remove it, or give --force to replace it", .0.display())]
    OutputExists(PathBuf),
    #[error("cannot write {}: {cause}", .path.display())]
    Write {
        path: PathBuf,
        cause: std::io::Error,
    },
}

fn list_projects(projects: &[AccessibleProject]) -> String {
    if projects.is_empty() {
        return "You have a role on no project.".to_owned();
    }
    let mut listed: Vec<String> = projects
        .iter()
        .take(LISTED_PROJECTS)
        .map(|p| format!("{} (id {}, domain id {})", p.name, p.id, p.domain_id))
        .collect();
    if projects.len() > LISTED_PROJECTS {
        listed.push(format!("and {} more", projects.len() - LISTED_PROJECTS));
    }
    format!("Projects you have a role on: {}.", listed.join(", "))
}

/// How long the credential lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    Never,
    After(Duration),
}

/// Parses `--expires-in`: `never`, or a positive number of seconds with an
/// optional unit `s`, `m`, `h`, `d` or `w` (`90d`, `12h`, `3600`).
pub fn parse_expires_in(s: &str) -> Result<Expiry, PullSecretError> {
    let bad = |why: &str| PullSecretError::Expiry {
        value: s.to_owned(),
        why: why.to_owned(),
    };
    let t = s.trim();
    if t.eq_ignore_ascii_case("never") {
        return Ok(Expiry::Never);
    }
    let (digits, unit) = match t.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => t.split_at(i),
        None => (t, "s"),
    };
    let factor: u64 = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        _ => {
            return Err(bad(
                "expected `never` or a number with an optional unit s, m, h, d or w (e.g. 90d, 12h)",
            ));
        }
    };
    if digits.is_empty() {
        return Err(bad("a number is missing (e.g. 90d, 12h, 3600)"));
    }
    let n: u64 = digits.parse().map_err(|_| bad("the number is too large"))?;
    let secs = n
        .checked_mul(factor)
        .ok_or_else(|| bad("the number is too large"))?;
    if secs == 0 {
        return Err(bad("must be positive (or `never`)"));
    }
    let d = Duration::from_secs(secs);
    if d > MAX_EXPIRY {
        return Err(bad("more than 100 years: say `never`"));
    }
    Ok(Expiry::After(d))
}

/// `2026-07-01T12:00:00Z`.
pub fn format_time(t: OffsetDateTime) -> String {
    let t = t.replace_nanosecond(0).unwrap_or(t);
    t.format(&Rfc3339)
        .unwrap_or_else(|_| format!("{}", t.unix_timestamp()))
}

/// The credential's name: `berth-pull-<project>-<UTC timestamp>`.
pub fn credential_name(project_name: &str, now: OffsetDateTime) -> String {
    format!(
        "berth-pull-{project_name}-{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        u8::from(now.month()),
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

/// Checks a Kubernetes object name (a DNS-1123 subdomain).
pub fn validate_secret_name(name: &str) -> Result<(), PullSecretError> {
    let bad = |why: &str| PullSecretError::InvalidName {
        what: "--name",
        value: name.to_owned(),
        why: why.to_owned(),
    };
    if name.is_empty() || name.len() > 253 {
        return Err(bad("it must have 1 to 253 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
    {
        return Err(bad(
            "only lower-case letters, digits, '-' and '.' are allowed",
        ));
    }
    if !alnum_ends(name) {
        return Err(bad("it must start and end with a letter or digit"));
    }
    Ok(())
}

/// Checks a Kubernetes namespace (a DNS-1123 label).
pub fn validate_namespace(ns: &str) -> Result<(), PullSecretError> {
    let bad = |why: &str| PullSecretError::InvalidName {
        what: "--namespace",
        value: ns.to_owned(),
        why: why.to_owned(),
    };
    if ns.is_empty() || ns.len() > 63 {
        return Err(bad("it must have 1 to 63 characters"));
    }
    if !ns
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(bad("only lower-case letters, digits and '-' are allowed"));
    }
    if !alnum_ends(ns) {
        return Err(bad("it must start and end with a letter or digit"));
    }
    Ok(())
}

fn alnum_ends(s: &str) -> bool {
    let ok = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    ok(s.as_bytes().first()) && ok(s.as_bytes().last())
}

/// The default Secret name, `berth-pull-<project>`, made a valid name
/// (lower case; other characters become `-`).
pub fn default_secret_name(project_name: &str) -> String {
    let mut out = String::from("berth-pull-");
    for c in project_name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.truncate(253);
    while out.ends_with(|c: char| !c.is_ascii_alphanumeric()) {
        out.pop();
    }
    out
}

/// Normalises `--registry`: `HOST[:PORT]` (a scheme and a trailing `/` are
/// dropped), the key of the Docker `auths` entry.
pub fn normalize_registry(s: &str) -> Result<String, PullSecretError> {
    let bad = |why: &str| PullSecretError::InvalidRegistry {
        value: s.to_owned(),
        why: why.to_owned(),
    };
    let t = s.trim();
    let t = t
        .strip_prefix("https://")
        .or_else(|| t.strip_prefix("http://"))
        .unwrap_or(t);
    let t = t.trim_end_matches('/');
    if t.is_empty() {
        return Err(bad("expected HOST[:PORT]"));
    }
    if t.contains('/') {
        return Err(bad("expected HOST[:PORT], without a path"));
    }
    if t.chars()
        .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '@' | '?' | '#' | '"'))
    {
        return Err(bad("expected HOST[:PORT]"));
    }
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        // [IPv6]:port
        match rest.split_once(']') {
            Some((h, p)) if !h.is_empty() => (h, p.strip_prefix(':')),
            _ => return Err(bad("an IPv6 address needs its closing ']'")),
        }
    } else {
        match t.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (t, None),
        }
    };
    if host.is_empty() {
        return Err(bad("the host is missing"));
    }
    if let Some(p) = port
        && p.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(bad("the port must be a number from 1 to 65535"));
    }
    Ok(t.to_owned())
}

/// What `berth pull-secret` was asked for, besides the project.
#[derive(Clone, Debug)]
pub struct PullRequest {
    /// The Kubernetes namespace it is for (the credential's description).
    pub namespace: Option<String>,
    pub expiry: Expiry,
}

/// A created pull credential.
#[derive(Clone, Debug)]
pub struct PullCredential {
    pub id: String,
    pub name: String,
    pub secret: Secret,
    pub project_id: String,
    pub project_name: String,
    pub expires_at: Option<OffsetDateTime>,
}

impl PullCredential {
    /// The registry username: `applicationcredential-<id>`.
    pub fn username(&self) -> String {
        format!("{USERNAME_PREFIX}{}", self.id)
    }

    /// The expiry as text (`never` when it has none).
    pub fn expires_text(&self) -> String {
        self.expires_at
            .map_or_else(|| "never".to_owned(), format_time)
    }
}

/// A login scoped to the project, ready to create pull credentials.
#[derive(Debug)]
pub struct Issuer {
    client: IdentityClient,
    login: Login,
    project: ScopedProject,
}

/// Says who the credential is, for messages (never the secret).
fn who(credential: &Credential) -> String {
    match credential {
        Credential::Password { user, .. } => user.to_string(),
        Credential::ApplicationCredential { id: Some(id), .. } => {
            format!("application credential {id}")
        }
        Credential::ApplicationCredential { name, .. } => {
            format!("application credential {}", name.as_deref().unwrap_or(""))
        }
    }
}

/// The scope for `--project` (see the module doc): by id when it is the id
/// of one of `projects`, else by name in `domain_flag` (an id when one of
/// `projects` is in a domain of that id, else a name) or `default_domain`.
pub fn choose_scope(
    projects: &[AccessibleProject],
    wanted: &str,
    domain_flag: Option<&str>,
    default_domain: &DomainRef,
) -> ProjectRef {
    if projects.iter().any(|p| p.id == wanted) {
        return ProjectRef::Id(wanted.to_owned());
    }
    let domain = match domain_flag {
        Some(d) if projects.iter().any(|p| p.domain_id == d) => DomainRef::Id(d.to_owned()),
        Some(d) => DomainRef::Name(d.to_owned()),
        None => default_domain.clone(),
    };
    ProjectRef::Name {
        name: wanted.to_owned(),
        domain,
    }
}

impl Issuer {
    /// Logs in as `config` says and scopes to `project` (a name or an id;
    /// see the module doc). Fails with a clear error for refused
    /// credentials, an inaccessible project, a restricted application
    /// credential, or no `reader` role on the project.
    pub async fn connect(
        config: &ClientConfig,
        project: &str,
        project_domain: Option<&str>,
    ) -> Result<Issuer, PullSecretError> {
        let client = IdentityClient::new(config)?;
        let login = client
            .login(&config.credential)
            .await
            .map_err(|e| match e {
                ClientError::Unauthorized { message, .. } => PullSecretError::BadCredentials {
                    who: who(&config.credential),
                    source_desc: config.source.clone(),
                    message,
                },
                other => other.into(),
            })?;
        let scoped = match &config.credential {
            Credential::Password { .. } => {
                let projects = client.accessible_projects(&login.token).await?;
                let scope =
                    choose_scope(&projects, project, project_domain, &config.project_domain);
                match client.rescope(&login.token, &scope).await {
                    Ok(l) => l,
                    Err(ClientError::Unauthorized { .. }) => {
                        let domain = match &scope {
                            ProjectRef::Id(_) => "by id".to_owned(),
                            ProjectRef::Name { domain, .. } => format!("in {domain}"),
                        };
                        return Err(PullSecretError::ProjectNotAccessible {
                            project: project.to_owned(),
                            domain,
                            available: projects,
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            Credential::ApplicationCredential { .. } => {
                let actual = login
                    .project
                    .as_ref()
                    .ok_or_else(|| ClientError::BadAnswer {
                        what: "the login",
                        why: "an application credential's token without a project".into(),
                    })?;
                let domain_ok = project_domain.is_none_or(|d| {
                    actual.domain_id == d || actual.domain_name.as_deref() == Some(d)
                });
                if actual.id != project && !(actual.name == project && domain_ok) {
                    return Err(PullSecretError::WrongProject {
                        actual: format!("{} ({})", actual.name, actual.id),
                        wanted: project.to_owned(),
                    });
                }
                if login
                    .application_credential
                    .as_ref()
                    .is_none_or(|a| a.restricted)
                {
                    return Err(PullSecretError::RestrictedApplicationCredential);
                }
                login
            }
        };
        let project = scoped
            .project
            .clone()
            .ok_or_else(|| ClientError::BadAnswer {
                what: "the project scope",
                why: "a token without a project".into(),
            })?;
        if !scoped.roles.iter().any(|r| r == PULL_ROLE) {
            return Err(PullSecretError::NoReaderRole {
                project: format!("{} ({})", project.name, project.id),
                roles: scoped.roles.clone(),
            });
        }
        Ok(Issuer {
            client,
            login: scoped,
            project,
        })
    }

    /// The project the credentials are for.
    pub fn project(&self) -> &ScopedProject {
        &self.project
    }

    /// The caller's user id.
    pub fn user_id(&self) -> &str {
        &self.login.user_id
    }

    /// Creates a pull credential (role `reader`, expiring per `request`).
    pub async fn create(
        &self,
        request: &PullRequest,
        now: OffsetDateTime,
    ) -> Result<PullCredential, PullSecretError> {
        let now = now.replace_nanosecond(0).unwrap_or(now);
        let expires_at = match request.expiry {
            Expiry::Never => None,
            Expiry::After(d) => Some(
                time::Duration::try_from(d)
                    .ok()
                    .and_then(|d| now.checked_add(d))
                    .ok_or_else(|| PullSecretError::Expiry {
                        value: format!("{}s", d.as_secs()),
                        why: "too far in the future".into(),
                    })?,
            ),
        };
        let base_name = credential_name(&self.project.name, now);
        let mut new = NewApplicationCredential {
            name: base_name.clone(),
            description: format!(
                "berth pull secret for {} ({PULL_ROLE})",
                request.namespace.as_deref().unwrap_or(&self.project.name)
            ),
            roles: vec![PULL_ROLE.to_owned()],
            expires_at: expires_at.map(format_time),
        };
        // Names are unique per user: a second credential for the project in
        // the same second gets a suffix.
        let mut attempt = 1;
        let created = loop {
            match self
                .client
                .create_application_credential(&self.login.token, &self.login.user_id, &new)
                .await
            {
                Ok(c) => break c,
                Err(ClientError::Status { status: 409, .. }) if attempt < NAME_ATTEMPTS => {
                    attempt += 1;
                    new.name = format!("{base_name}-{attempt}");
                }
                Err(ClientError::Forbidden { message, .. }) => {
                    return Err(PullSecretError::CreateForbidden { message });
                }
                Err(e) => return Err(e.into()),
            }
        };
        tracing::debug!(id = %created.id, name = %created.name, "created an application credential");
        Ok(PullCredential {
            id: created.id,
            name: created.name,
            secret: created.secret,
            project_id: self.project.id.clone(),
            project_name: self.project.name.clone(),
            expires_at,
        })
    }

    /// Deletes a credential made by [`Issuer::create`] (when what carries it
    /// could not be written).
    pub async fn delete(&self, credential: &PullCredential) -> Result<(), PullSecretError> {
        self.client
            .delete_application_credential(&self.login.token, &self.login.user_id, &credential.id)
            .await?;
        Ok(())
    }
}

/// The Docker `config.json` (also Kubernetes' `.dockerconfigjson`) with one
/// entry for `registry`.
pub fn docker_config(registry: &str, credential: &PullCredential) -> Value {
    let username = credential.username();
    let password = credential.secret.expose();
    json!({"auths": {registry: {
        "username": username,
        "password": password,
        "auth": BASE64.encode(format!("{username}:{password}")),
    }}})
}

/// Output formats of the Secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretFormat {
    Yaml,
    Json,
}

/// The Kubernetes Secret's metadata.
#[derive(Clone, Debug)]
pub struct SecretMeta {
    pub name: String,
    pub namespace: Option<String>,
    /// The `auths` key (`HOST[:PORT]`).
    pub registry: String,
}

/// A tree of strings with its keys in the order they are written.
enum Node {
    Str(String),
    Map(Vec<(&'static str, Node)>),
}

impl Node {
    fn str(s: impl Into<String>) -> Node {
        Node::Str(s.into())
    }

    fn to_json(&self) -> Value {
        match self {
            Node::Str(s) => json!(s),
            Node::Map(entries) => Value::Object(
                entries
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.to_json()))
                    .collect(),
            ),
        }
    }

    /// Block YAML, `indent` spaces deep.
    fn to_yaml(&self, out: &mut String, indent: usize) {
        let Node::Map(entries) = self else { return };
        for (k, v) in entries {
            out.push_str(&" ".repeat(indent));
            out.push_str(&quote(k));
            out.push(':');
            match v {
                Node::Map(_) => {
                    out.push('\n');
                    v.to_yaml(out, indent + 2);
                }
                Node::Str(s) => {
                    out.push(' ');
                    out.push_str(&quote(s));
                    out.push('\n');
                }
            }
        }
    }
}

/// The Secret, in the order of a hand-written manifest.
fn secret_tree(meta: &SecretMeta, credential: &PullCredential) -> Node {
    let config = docker_config(&meta.registry, credential).to_string();
    let mut metadata = vec![("name", Node::str(&meta.name))];
    if let Some(ns) = &meta.namespace {
        metadata.push(("namespace", Node::str(ns)));
    }
    metadata.push((
        "labels",
        Node::Map(vec![
            ("app.kubernetes.io/managed-by", Node::str("berth")),
            ("berth.io/project-id", Node::str(&credential.project_id)),
            (
                "berth.io/application-credential-id",
                Node::str(&credential.id),
            ),
        ]),
    ));
    metadata.push((
        "annotations",
        Node::Map(vec![
            ("berth.io/project", Node::str(&credential.project_name)),
            ("berth.io/project-id", Node::str(&credential.project_id)),
            (
                "berth.io/application-credential-id",
                Node::str(&credential.id),
            ),
            (
                "berth.io/application-credential-name",
                Node::str(&credential.name),
            ),
            ("berth.io/expires-at", Node::str(credential.expires_text())),
            ("berth.io/registry", Node::str(&meta.registry)),
        ]),
    ));
    Node::Map(vec![
        ("apiVersion", Node::str("v1")),
        ("kind", Node::str("Secret")),
        ("metadata", Node::Map(metadata)),
        ("type", Node::str("kubernetes.io/dockerconfigjson")),
        (
            "data",
            Node::Map(vec![(
                ".dockerconfigjson",
                Node::str(BASE64.encode(config)),
            )]),
        ),
    ])
}

/// The Secret as a JSON value.
pub fn secret_value(meta: &SecretMeta, credential: &PullCredential) -> Value {
    secret_tree(meta, credential).to_json()
}

/// Renders the Secret. YAML is written by hand in a fixed order, every
/// string that is not a plain word double-quoted with JSON escapes (valid
/// YAML double-quoted scalars), so that no project name can change its
/// structure.
pub fn render_secret(
    meta: &SecretMeta,
    credential: &PullCredential,
    format: SecretFormat,
) -> String {
    let tree = secret_tree(meta, credential);
    match format {
        SecretFormat::Json => format!("{:#}\n", tree.to_json()),
        SecretFormat::Yaml => {
            let mut out = String::new();
            tree.to_yaml(&mut out, 0);
            out
        }
    }
}

/// A plain YAML scalar when it is a safe simple key or word, else a
/// double-quoted one.
fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'/' | b'-' | b'_'))
        && s.as_bytes()[0].is_ascii_alphabetic()
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        );
    if plain {
        s.to_owned()
    } else {
        Value::String(s.to_owned()).to_string()
    }
}

/// Fails when `path` exists and `force` is not given (checked before a
/// credential is made, so that none is made for nothing).
pub fn check_output(path: &Path, force: bool) -> Result<(), PullSecretError> {
    if !force && std::fs::symlink_metadata(path).is_ok() {
        return Err(PullSecretError::OutputExists(path.to_owned()));
    }
    Ok(())
}

/// Writes a Docker `config.json` readable by its owner only (0600): a new
/// file, or with `force` a replacement (written aside and renamed over).
pub fn write_docker_config(
    path: &Path,
    contents: &str,
    force: bool,
) -> Result<(), PullSecretError> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let write_err = |cause| PullSecretError::Write {
        path: path.to_owned(),
        cause,
    };
    let write_new = |p: &Path| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(p)?;
        f.write_all(contents.as_bytes())?;
        f.sync_all()
    };
    if !force {
        return write_new(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                PullSecretError::OutputExists(path.to_owned())
            } else {
                write_err(e)
            }
        });
    }
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config.json".into());
    let tmp = path.with_file_name(format!(".{file_name}.berth-{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = write_new(&tmp).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(write_err)
}

#[cfg(test)]
mod tests;
