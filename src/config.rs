//! berth's configuration: one TOML file, every key also a `BERTH_*`
//! environment variable, the main ones also flags.
//!
//! [`KEYS`] is the single description of every key: its section, type,
//! default and documentation. Loading layers the defaults, the file, the
//! environment and the flags, in that order of precedence (later wins),
//! checks each value against its key's type as it goes and collects every
//! problem instead of stopping at the first, so that `berth config check`
//! can report them all at once. The typed [`Config`] is deserialised from
//! the merged table only when there is no problem.
//!
//! Environment names are `BERTH_<SECTION>_<KEY>` upper-cased
//! (`[registry] listen` is `BERTH_REGISTRY_LISTEN`; top-level keys have no
//! section: `BERTH_DATA_DIR`). Lists are comma-separated there. Secrets are
//! never configuration values: they come from files named by `*_file`
//! keys, or from `BERTH_KEYSTONE_PASSWORD`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The type of a key's value.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Str,
    /// A file or directory path.
    Path,
    /// An `http` or `https` URL.
    Url,
    Bool,
    /// An integer in `min..=max`.
    Int {
        min: i64,
        max: i64,
    },
    /// A whole number of seconds.
    Secs,
    /// A socket address, `IP:PORT` (IPv6 in brackets).
    Addr,
    /// A list of strings (comma-separated in the environment).
    List,
    /// One of the given words.
    Choice(&'static [&'static str]),
}

impl Kind {
    fn describe(&self) -> String {
        match self {
            Kind::Str => "string".into(),
            Kind::Path => "path".into(),
            Kind::Url => "URL".into(),
            Kind::Bool => "boolean".into(),
            Kind::Int { min, max } => format!("integer {min}..{max}"),
            Kind::Secs => "seconds".into(),
            Kind::Addr => "address".into(),
            Kind::List => "list of strings".into(),
            Kind::Choice(words) => words.join(" | "),
        }
    }
}

/// One configuration key.
#[derive(Debug)]
pub struct Key {
    /// `""` for top-level keys.
    pub section: &'static str,
    pub name: &'static str,
    pub kind: Kind,
    /// The default as a TOML literal; `None` when the key is unset by
    /// default (what that means is in `doc`).
    pub default: Option<&'static str>,
    pub doc: &'static str,
}

impl Key {
    /// `section.name`, or `name` at the top level.
    pub fn path(&self) -> String {
        if self.section.is_empty() {
            self.name.to_owned()
        } else {
            format!("{}.{}", self.section, self.name)
        }
    }

    /// `BERTH_SECTION_NAME`
    pub fn env(&self) -> String {
        let mut s = String::from("BERTH_");
        if !self.section.is_empty() {
            s.push_str(&self.section.to_ascii_uppercase());
            s.push('_');
        }
        s.push_str(&self.name.to_ascii_uppercase());
        s
    }
}

const U32: Kind = Kind::Int {
    min: 0,
    max: u32::MAX as i64,
};

macro_rules! key {
    ($section:literal, $name:literal, $kind:expr, $default:expr, $doc:literal) => {
        Key {
            section: $section,
            name: $name,
            kind: $kind,
            default: $default,
            doc: $doc,
        }
    };
}

/// The sections, in documentation order.
pub const SECTIONS: &[(&str, &str)] = &[
    ("", "Top level"),
    (
        "tls",
        "HTTPS for both services. By default berth generates a CA and a server certificate in `<data_dir>/tls` on first start.",
    ),
    ("registry", "The registry service (OCI Distribution API)."),
    (
        "gc",
        "Garbage collection of what no tag reaches: scheduled inside `berth serve` and `berth registry serve`, and the defaults of `berth gc`. See docs/storage.md.",
    ),
    (
        "token",
        "The token contract between the token service and the registry.",
    ),
    ("identity", "The token service."),
    (
        "keystone",
        "OpenStack Keystone, used when `keystone.url` (or `OS_AUTH_URL`) is set.",
    ),
    (
        "local",
        "The embedded users file, used when no Keystone is configured.",
    ),
    (
        "server",
        "The serving process (`berth serve`, `berth registry serve`, `berth identity serve`): pid file and shutdown. See [Standby and takeover](#standby-and-takeover).",
    ),
];

/// Every configuration key.
pub const KEYS: &[Key] = &[
    key!(
        "",
        "data_dir",
        Kind::Path,
        Some("\"/var/lib/berth\""),
        "Directory holding all state: blobs, repositories, upload sessions, signing keys, refresh tokens, certificates, the users file."
    ),
    key!(
        "tls",
        "mode",
        Kind::Choice(&["on", "off"]),
        Some("\"on\""),
        "`on`: HTTPS (TLS 1.2 and 1.3 only); `off`: plain HTTP, for tests or behind a TLS-terminating proxy."
    ),
    key!(
        "tls",
        "cert_file",
        Kind::Path,
        None,
        "PEM certificate chain to serve instead of the generated one (needs `key_file`)."
    ),
    key!(
        "tls",
        "key_file",
        Kind::Path,
        None,
        "PEM private key of `cert_file`."
    ),
    key!(
        "tls",
        "names",
        Kind::List,
        Some("[]"),
        "Extra host names and IP addresses for the generated certificate, besides the host name, `localhost`, `127.0.0.1` and `::1`."
    ),
    key!(
        "registry",
        "listen",
        Kind::Addr,
        Some("\"0.0.0.0:9001\""),
        "Address of the registry; port 0 picks a free port (the log says which)."
    ),
    key!(
        "registry",
        "auth",
        Kind::Choice(&["token", "none"]),
        Some("\"token\""),
        "`token`: clients need a token from the token service; `none`: anyone who can connect may push, pull and delete."
    ),
    key!(
        "registry",
        "max_manifest_size",
        Kind::Int {
            min: 1024,
            max: 1 << 30
        },
        Some("4194304"),
        "Largest manifest accepted, in bytes."
    ),
    key!(
        "registry",
        "upload_max_age",
        Kind::Secs,
        Some("86400"),
        "Upload sessions idle this long are removed."
    ),
    key!(
        "gc",
        "interval",
        Kind::Secs,
        Some("0"),
        "Run a garbage collection in the serving process every this many seconds; 0: never (run `berth gc` instead)."
    ),
    key!(
        "gc",
        "grace",
        Kind::Secs,
        Some("3600"),
        "Keep unreachable content stored or used (checked, pulled, mounted) within this many seconds: longer than the slowest push takes between uploading a blob and pushing the manifest that needs it."
    ),
    key!(
        "gc",
        "delete_untagged",
        Kind::Bool,
        Some("false"),
        "Also remove manifests no tag reaches (never a child of a tagged index or a referrer of a reachable manifest)."
    ),
    key!(
        "token",
        "realm",
        Kind::Url,
        None,
        "Where clients get tokens (the challenge's `realm`). Unset: the host the client used to reach the registry, on the token service's port, `https` unless `tls.mode` is `off`."
    ),
    key!(
        "token",
        "service",
        Kind::Str,
        Some("\"berth-registry\""),
        "The registry's service name: the tokens' audience (`aud`)."
    ),
    key!(
        "token",
        "issuer",
        Kind::Str,
        Some("\"berth-token-service\""),
        "The tokens' issuer (`iss`)."
    ),
    key!(
        "token",
        "jwks_url",
        Kind::Url,
        None,
        "`berth registry serve` alone: URL of the token service's key set (`/.well-known/jwks.json`). `berth serve` reads its own keys."
    ),
    key!(
        "token",
        "jwks_file",
        Kind::Path,
        None,
        "`berth registry serve` alone: a file holding the key set, instead of `jwks_url`."
    ),
    key!(
        "token",
        "lifetime",
        Kind::Secs,
        Some("300"),
        "Lifetime of issued tokens."
    ),
    key!(
        "token",
        "algorithm",
        Kind::Choice(&["RS256", "ES256"]),
        Some("\"RS256\""),
        "Algorithm of new signing keys."
    ),
    key!(
        "token",
        "key_publish_delay",
        Kind::Secs,
        Some("60"),
        "How long a new signing key is published before it signs."
    ),
    key!(
        "identity",
        "listen",
        Kind::Addr,
        Some("\"0.0.0.0:9002\""),
        "Address of the token service; port 0 picks a free port."
    ),
    key!(
        "identity",
        "backend",
        Kind::Choice(&["auto", "local", "keystone"]),
        Some("\"auto\""),
        "Who checks passwords: `keystone`, `local` (the users file), or `auto`: Keystone when `keystone.url` or `OS_AUTH_URL` is set, else local."
    ),
    key!(
        "identity",
        "admin_users",
        Kind::List,
        Some("[]"),
        "More registry administrators: user ids, `name@domain` or bare names."
    ),
    key!(
        "identity",
        "anonymous_pull_public",
        Kind::Bool,
        Some("false"),
        "Let clients without credentials pull from projects tagged `registry-public`."
    ),
    key!(
        "identity",
        "audit_log",
        Kind::Path,
        None,
        "Audit log file (JSON lines). Unset: audit records go to the log."
    ),
    key!(
        "identity",
        "refresh_token_lifetime",
        Kind::Secs,
        Some("604800"),
        "Lifetime of refresh tokens (`docker login` keeps one)."
    ),
    key!(
        "identity",
        "login_failures_per_account",
        U32,
        Some("5"),
        "Failed logins per account within the window before 429 (0: no limit)."
    ),
    key!(
        "identity",
        "login_failures_per_address",
        U32,
        Some("20"),
        "Failed logins per client address within the window before 429 (0: no limit)."
    ),
    key!(
        "identity",
        "login_failure_window",
        Kind::Secs,
        Some("60"),
        "The rate-limiting window."
    ),
    key!(
        "keystone",
        "url",
        Kind::Url,
        None,
        "Keystone v3 URL (`https://keystone.example:5000/v3`). Unset: `OS_AUTH_URL`, with `OS_USERNAME`, `OS_PASSWORD` and `OS_USER_DOMAIN_ID`/`OS_USER_DOMAIN_NAME` as the service account."
    ),
    key!(
        "keystone",
        "username",
        Kind::Str,
        None,
        "berth's service account; it needs the `reader` role on the system."
    ),
    key!(
        "keystone",
        "password_file",
        Kind::Path,
        None,
        "File holding the service account's password (or set `BERTH_KEYSTONE_PASSWORD`)."
    ),
    key!(
        "keystone",
        "service_domain_id",
        Kind::Str,
        Some("\"default\""),
        "Domain id of the service account."
    ),
    key!(
        "keystone",
        "user_domain_id",
        Kind::Str,
        Some("\"default\""),
        "Domain id of users who log in without `@domain`."
    ),
    key!(
        "keystone",
        "admin_project",
        Kind::Str,
        Some("\"admin\""),
        "Project whose `admin_roles` make a registry administrator."
    ),
    key!(
        "keystone",
        "admin_project_domain_id",
        Kind::Str,
        Some("\"default\""),
        "Domain id of the admin project."
    ),
    key!(
        "keystone",
        "admin_roles",
        Kind::List,
        Some("[\"admin\"]"),
        "Roles on the admin project that make a registry administrator."
    ),
    key!(
        "keystone",
        "ca_file",
        Kind::Path,
        None,
        "PEM certificates to trust for Keystone, besides the system's."
    ),
    key!(
        "keystone",
        "timeout",
        Kind::Secs,
        Some("5"),
        "How long a Keystone check may take before the token service answers 503."
    ),
    key!(
        "keystone",
        "cache_ttl",
        Kind::Secs,
        Some("60"),
        "How long a successful credential check is reused (stored as a keyed hash only)."
    ),
    key!(
        "keystone",
        "projects_ttl",
        Kind::Secs,
        Some("30"),
        "How long the project directory (names, tags) is reused."
    ),
    key!(
        "keystone",
        "roles_ttl",
        Kind::Secs,
        Some("30"),
        "How long a user's role assignments are reused by their next password logins (the password is checked every time)."
    ),
    key!(
        "local",
        "users_file",
        Kind::Path,
        None,
        "The users file (bcrypt hashes). Unset: `<data_dir>/identity/users.toml`; created on first start with user `admin`, whose password goes to `<data_dir>/admin.password`."
    ),
    key!(
        "local",
        "cache_ttl",
        Kind::Secs,
        Some("60"),
        "How long a successful password check is reused (stored as a keyed hash only)."
    ),
    key!(
        "server",
        "pid_file",
        Kind::Path,
        None,
        "Write the process id here once serving or standing by (atomically); removed on a clean exit. Not inside `data_dir`. Unset: no pid file."
    ),
    key!(
        "server",
        "shutdown_grace",
        Kind::Secs,
        Some("30"),
        "On SIGTERM or SIGINT: how long requests in flight may take to finish before the process exits anyway."
    ),
];

/// Environment variables that start with `BERTH_` but are no key.
const OTHER_ENV: &[&str] = &[
    "BERTH_CONFIG",
    "BERTH_LOG",
    "BERTH_LOG_FORMAT",
    "BERTH_KEYSTONE_PASSWORD",
];

pub fn find_key(path: &str) -> Option<&'static Key> {
    KEYS.iter().find(|k| k.path() == path)
}

/// Where a value came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    Default,
    File(PathBuf),
    Env(String),
    Flag(String),
    /// An OpenStack `OS_*` variable.
    OpenStack(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Default => f.write_str("default"),
            Origin::File(p) => write!(f, "{}", p.display()),
            Origin::Env(v) | Origin::OpenStack(v) => write!(f, "environment {v}"),
            Origin::Flag(v) => write!(f, "flag {v}"),
        }
    }
}

/// Everything the layers contribute: the configuration file, the
/// environment and the flags (`section.key` -> raw value, with the flag's
/// name for messages).
pub struct Sources {
    pub file: Option<PathBuf>,
    pub env: BTreeMap<String, String>,
    pub flags: Vec<(String, String, String)>,
}

impl Sources {
    /// The process environment's `BERTH_*` and `OS_*` variables.
    pub fn from_process(file: Option<PathBuf>) -> Sources {
        let env = std::env::vars()
            .filter(|(k, _)| k.starts_with("BERTH_") || k.starts_with("OS_"))
            .collect();
        Sources {
            file,
            env,
            flags: Vec::new(),
        }
    }

    /// Adds a flag's value for `key` (a `section.key` path from [`KEYS`]).
    pub fn flag(&mut self, key: &str, flag: &str, value: impl Into<String>) {
        self.flags
            .push((key.to_owned(), flag.to_owned(), value.into()));
    }
}

/// A loaded, checked configuration.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    /// Not fatal: unknown `BERTH_*` variables and the like.
    pub warnings: Vec<String>,
    /// The merged table (for `berth config show`).
    pub table: toml::Table,
    pub origins: BTreeMap<String, Origin>,
}

/// Every problem found, each naming the key and where its value came from.
#[derive(Debug)]
pub struct Problems(pub Vec<String>);

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} configuration problem{}:",
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.0 {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Problems {}

/// Layers the sources over the defaults and checks the result.
pub fn load(sources: &Sources) -> Result<Loaded, Problems> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let mut merged: BTreeMap<String, toml::Value> = BTreeMap::new();
    let mut origins = BTreeMap::new();

    for key in KEYS {
        if let Some(lit) = key.default {
            match parse_literal(lit) {
                Some(v) => {
                    merged.insert(key.path(), v);
                    origins.insert(key.path(), Origin::Default);
                }
                None => problems.push(format!("internal: bad default for {}", key.path())),
            }
        }
    }

    if let Some(path) = &sources.file {
        read_file(path, &mut merged, &mut origins, &mut problems);
    }

    for key in KEYS {
        let var = key.env();
        if let Some(raw) = sources.env.get(&var) {
            let origin = Origin::Env(var.clone());
            match from_str(key, raw) {
                Ok(v) => {
                    merged.insert(key.path(), v);
                    origins.insert(key.path(), origin);
                }
                Err(e) => problems.push(format!("{var}: {e}")),
            }
        }
    }
    for var in sources.env.keys() {
        if var.starts_with("BERTH_")
            && !OTHER_ENV.contains(&var.as_str())
            && !KEYS.iter().any(|k| &k.env() == var)
        {
            warnings.push(format!(
                "{var} is set but is no configuration key (ignored)"
            ));
        }
    }

    for (path, flag, raw) in &sources.flags {
        let Some(key) = find_key(path) else {
            problems.push(format!("{flag}: unknown key `{path}`"));
            continue;
        };
        match from_str(key, raw) {
            Ok(v) => {
                merged.insert(key.path(), v);
                origins.insert(key.path(), Origin::Flag(flag.clone()));
            }
            Err(e) => problems.push(format!("{flag}: {e}")),
        }
    }

    openstack_fallback(&sources.env, &mut merged, &mut origins);

    let table = nest(&merged);
    let config: Option<Config> = if problems.is_empty() {
        match toml::Value::Table(table.clone()).try_into() {
            Ok(c) => Some(c),
            Err(e) => {
                problems.push(format!("internal: {e}"));
                None
            }
        }
    } else {
        None
    };
    if let Some(config) = &config {
        check(config, &sources.env, &origins, &mut problems);
    }
    match config {
        Some(config) if problems.is_empty() => Ok(Loaded {
            config,
            warnings,
            table,
            origins,
        }),
        _ => Err(Problems(problems)),
    }
}

fn parse_literal(lit: &str) -> Option<toml::Value> {
    let t: toml::Table = toml::from_str(&format!("v = {lit}")).ok()?;
    t.get("v").cloned()
}

fn read_file(
    path: &Path,
    merged: &mut BTreeMap<String, toml::Value>,
    origins: &mut BTreeMap<String, Origin>,
    problems: &mut Vec<String>,
) {
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("{shown}: cannot read: {e}"));
            return;
        }
    };
    let table: toml::Table = match toml::from_str(&text) {
        Ok(t) => t,
        Err(e) => {
            problems.push(format!("{shown}: not valid TOML: {}", e.message()));
            return;
        }
    };
    let sections: Vec<&str> = SECTIONS.iter().map(|(s, _)| *s).collect();
    let mut entries = Vec::new();
    for (name, value) in &table {
        match value {
            toml::Value::Table(inner) if sections.contains(&name.as_str()) => {
                entries.extend(inner.iter().map(|(k, v)| (format!("{name}.{k}"), v)));
            }
            toml::Value::Table(_) => problems.push(format!("{shown}: unknown section `[{name}]`")),
            _ => entries.push((name.clone(), value)),
        }
    }
    for (key_path, value) in entries {
        let Some(key) = find_key(&key_path) else {
            problems.push(format!("{shown}: unknown key `{key_path}`"));
            continue;
        };
        match check_value(key, value) {
            Ok(()) => {
                merged.insert(key_path.clone(), value.clone());
                origins.insert(key_path, Origin::File(path.to_owned()));
            }
            Err(e) => problems.push(format!("{shown}: `{key_path}`: {e}")),
        }
    }
}

/// Checks a value from the file against its key's type.
fn check_value(key: &Key, value: &toml::Value) -> Result<(), String> {
    use toml::Value as V;
    let want = || {
        format!(
            "expected {}, found {}",
            key.kind.describe(),
            value.type_str()
        )
    };
    match (&key.kind, value) {
        (Kind::Str, V::String(_)) => Ok(()),
        (Kind::Path, V::String(s)) if s.is_empty() => Err("empty path".into()),
        (Kind::Path, V::String(_)) => Ok(()),
        (Kind::Url, V::String(s)) => check_url(s),
        (Kind::Addr, V::String(s)) => s
            .parse::<SocketAddr>()
            .map(|_| ())
            .map_err(|_| format!("`{s}` is no IP:PORT address (IPv6 in brackets)")),
        (Kind::Choice(words), V::String(s)) if words.contains(&s.as_str()) => Ok(()),
        (Kind::Choice(words), V::String(s)) => {
            Err(format!("`{s}` is not one of {}", words.join(", ")))
        }
        (Kind::Bool, V::Boolean(_)) => Ok(()),
        (Kind::Int { min, max }, V::Integer(i)) if (*min..=*max).contains(i) => Ok(()),
        (Kind::Int { min, max }, V::Integer(i)) => Err(format!("{i} is outside {min}..={max}")),
        (Kind::Secs, V::Integer(i)) if *i >= 0 => Ok(()),
        (Kind::Secs, V::Integer(i)) => Err(format!("{i} seconds is negative")),
        (Kind::List, V::Array(items)) if items.iter().all(|v| v.is_str()) => Ok(()),
        _ => Err(want()),
    }
}

fn check_url(s: &str) -> Result<(), String> {
    match reqwest::Url::parse(s) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err(format!("`{s}` is not an http(s) URL")),
        Err(e) => Err(format!("`{s}` is not a URL: {e}")),
    }
}

/// Parses a raw (environment or flag) value as `key`'s type.
fn from_str(key: &Key, raw: &str) -> Result<toml::Value, String> {
    use toml::Value as V;
    let value = match key.kind {
        Kind::Str | Kind::Path | Kind::Url | Kind::Addr | Kind::Choice(_) => {
            V::String(raw.to_owned())
        }
        Kind::Bool => match raw.to_ascii_lowercase().as_str() {
            "true" | "1" | "yes" | "on" => V::Boolean(true),
            "false" | "0" | "no" | "off" => V::Boolean(false),
            _ => return Err(format!("`{raw}` is not a boolean (true or false)")),
        },
        Kind::Int { .. } | Kind::Secs => match raw.trim().parse::<i64>() {
            Ok(i) => V::Integer(i),
            Err(_) => return Err(format!("`{raw}` is not a whole number")),
        },
        Kind::List => V::Array(
            raw.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| V::String(s.to_owned()))
                .collect(),
        ),
    };
    check_value(key, &value)?;
    Ok(value)
}

/// Without `keystone.url`, the OpenStack variables of an `openrc` file
/// configure Keystone and its service account.
fn openstack_fallback(
    env: &BTreeMap<String, String>,
    merged: &mut BTreeMap<String, toml::Value>,
    origins: &mut BTreeMap<String, Origin>,
) {
    if merged.contains_key("keystone.url") {
        return;
    }
    let Some(url) = env.get("OS_AUTH_URL").filter(|u| !u.is_empty()) else {
        return;
    };
    let mut sets = vec![("keystone.url", "OS_AUTH_URL", url.clone())];
    if !merged.contains_key("keystone.username")
        && let Some(user) = env.get("OS_USERNAME")
    {
        sets.push(("keystone.username", "OS_USERNAME", user.clone()));
    }
    if origins.get("keystone.service_domain_id") == Some(&Origin::Default) {
        if let Some(id) = env.get("OS_USER_DOMAIN_ID") {
            sets.push((
                "keystone.service_domain_id",
                "OS_USER_DOMAIN_ID",
                id.clone(),
            ));
        } else if env
            .get("OS_USER_DOMAIN_NAME")
            .is_some_and(|name| name.eq_ignore_ascii_case("default"))
        {
            sets.push((
                "keystone.service_domain_id",
                "OS_USER_DOMAIN_NAME",
                "default".into(),
            ));
        }
    }
    for (key, var, value) in sets {
        merged.insert(key.to_owned(), toml::Value::String(value));
        origins.insert(key.to_owned(), Origin::OpenStack(var.to_owned()));
    }
}

/// `{"a.b": v}` -> `{a = {b = v}}`
fn nest(flat: &BTreeMap<String, toml::Value>) -> toml::Table {
    let mut out = toml::Table::new();
    for (section, _) in SECTIONS.iter().filter(|(s, _)| !s.is_empty()) {
        out.insert(
            (*section).to_owned(),
            toml::Value::Table(toml::Table::new()),
        );
    }
    for (path, value) in flat {
        match path.split_once('.') {
            Some((section, key)) => {
                if let Some(toml::Value::Table(t)) = out.get_mut(section) {
                    t.insert(key.to_owned(), value.clone());
                }
            }
            None => {
                out.insert(path.clone(), value.clone());
            }
        }
    }
    out
}

/// Checks across keys: what each value means together with the others.
fn check(
    c: &Config,
    env: &BTreeMap<String, String>,
    origins: &BTreeMap<String, Origin>,
    problems: &mut Vec<String>,
) {
    let from = |key: &str| {
        origins
            .get(key)
            .map(|o| format!(" (from {o})"))
            .unwrap_or_default()
    };
    match (&c.tls.cert_file, &c.tls.key_file) {
        (Some(_), None) => problems.push(format!(
            "tls.cert_file{} needs tls.key_file",
            from("tls.cert_file")
        )),
        (None, Some(_)) => problems.push(format!(
            "tls.key_file{} needs tls.cert_file",
            from("tls.key_file")
        )),
        _ => {}
    }
    if c.tls.mode == TlsMode::On {
        for name in &c.tls.names {
            if !valid_san(name) {
                problems.push(format!(
                    "tls.names{}: `{name}` is neither a host name nor an IP address",
                    from("tls.names")
                ));
            }
        }
    }
    if c.token.jwks_url.is_some() && c.token.jwks_file.is_some() {
        problems.push("token.jwks_url and token.jwks_file are both set: choose one".into());
    }
    if c.registry.listen == c.identity.listen && c.registry.listen.port() != 0 {
        problems.push(format!(
            "registry.listen and identity.listen are both {}",
            c.registry.listen
        ));
    }
    if c.token.lifetime == 0 {
        problems.push("token.lifetime must be at least 1 second".into());
    }
    match c.identity_backend() {
        Backend::Keystone => {
            if c.keystone.url.is_none() {
                problems.push(
                    "identity.backend is keystone but no Keystone is configured: set keystone.url (BERTH_KEYSTONE_URL) or OS_AUTH_URL"
                        .into(),
                );
            }
            if c.keystone.username.is_none() {
                problems.push(
                    "Keystone needs berth's service account: set keystone.username (BERTH_KEYSTONE_USERNAME) or OS_USERNAME"
                        .into(),
                );
            }
            let has_password = c.keystone.password_file.is_some()
                || env.contains_key("BERTH_KEYSTONE_PASSWORD")
                || (origins.get("keystone.url") == Some(&Origin::OpenStack("OS_AUTH_URL".into()))
                    && env.contains_key("OS_PASSWORD"));
            if !has_password {
                problems.push(
                    "Keystone needs the service account's password: set keystone.password_file (BERTH_KEYSTONE_PASSWORD_FILE) or BERTH_KEYSTONE_PASSWORD"
                        .into(),
                );
            }
            if let Some(file) = &c.keystone.password_file
                && !file.is_file()
            {
                problems.push(format!(
                    "keystone.password_file{}: {} is not a readable file",
                    from("keystone.password_file"),
                    file.display()
                ));
            }
            if origins.get("keystone.url") == Some(&Origin::OpenStack("OS_AUTH_URL".into()))
                && origins.get("keystone.service_domain_id") == Some(&Origin::Default)
                && env
                    .get("OS_USER_DOMAIN_NAME")
                    .is_some_and(|n| !n.eq_ignore_ascii_case("default"))
            {
                problems.push(
                    "OS_USER_DOMAIN_NAME names a domain other than Default: set OS_USER_DOMAIN_ID or keystone.service_domain_id (a domain id)"
                        .into(),
                );
            }
        }
        Backend::Local | Backend::Auto => {}
    }
    if let Some(pid_file) = &c.server.pid_file
        && pid_file.starts_with(&c.data_dir)
    {
        problems.push(format!(
            "server.pid_file{}: {} is inside data_dir: a standby must not write there",
            from("server.pid_file"),
            pid_file.display()
        ));
    }
    for (key, path) in [
        ("tls.cert_file", c.tls.cert_file.as_ref()),
        ("tls.key_file", c.tls.key_file.as_ref()),
        ("keystone.ca_file", c.keystone.ca_file.as_ref()),
        ("token.jwks_file", c.token.jwks_file.as_ref()),
    ] {
        if let Some(path) = path
            && !path.is_file()
        {
            problems.push(format!(
                "{key}{}: {} is not a readable file",
                from(key),
                path.display()
            ));
        }
    }
}

/// A DNS name or an IP address usable as a subject alternative name.
fn valid_san(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

// ---- the typed configuration ----

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub data_dir: PathBuf,
    pub tls: Tls,
    pub registry: Registry,
    pub gc: Gc,
    pub token: Token,
    pub identity: Identity,
    pub keystone: Keystone,
    pub local: Local,
    pub server: Server,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    On,
    Off,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    pub mode: TlsMode,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub names: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    Token,
    None,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Registry {
    pub listen: SocketAddr,
    pub auth: AuthMode,
    pub max_manifest_size: usize,
    pub upload_max_age: u64,
}

/// `[gc]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Gc {
    pub interval: u64,
    pub grace: u64,
    pub delete_untagged: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
pub enum Algorithm {
    RS256,
    ES256,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Token {
    pub realm: Option<String>,
    pub service: String,
    pub issuer: String,
    pub jwks_url: Option<String>,
    pub jwks_file: Option<PathBuf>,
    pub lifetime: u64,
    pub algorithm: Algorithm,
    pub key_publish_delay: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Auto,
    Local,
    Keystone,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub listen: SocketAddr,
    pub backend: Backend,
    pub admin_users: Vec<String>,
    pub anonymous_pull_public: bool,
    pub audit_log: Option<PathBuf>,
    pub refresh_token_lifetime: u64,
    pub login_failures_per_account: u32,
    pub login_failures_per_address: u32,
    pub login_failure_window: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Keystone {
    pub url: Option<String>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub service_domain_id: String,
    pub user_domain_id: String,
    pub admin_project: String,
    pub admin_project_domain_id: String,
    pub admin_roles: Vec<String>,
    pub ca_file: Option<PathBuf>,
    pub timeout: u64,
    pub cache_ttl: u64,
    pub projects_ttl: u64,
    pub roles_ttl: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Local {
    pub users_file: Option<PathBuf>,
    pub cache_ttl: u64,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub pid_file: Option<PathBuf>,
    pub shutdown_grace: u64,
}

impl Config {
    /// The backend `auto` resolves to.
    pub fn identity_backend(&self) -> Backend {
        match self.identity.backend {
            Backend::Auto if self.keystone.url.is_some() => Backend::Keystone,
            Backend::Auto => Backend::Local,
            other => other,
        }
    }

    /// `<data_dir>/identity/users.toml` unless configured.
    pub fn users_file(&self) -> PathBuf {
        self.local
            .users_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("identity").join("users.toml"))
    }

    /// `<data_dir>/admin.password`
    pub fn admin_password_file(&self) -> PathBuf {
        self.data_dir.join("admin.password")
    }
}

/// docs/configuration.md's reference section: every key with its type,
/// default and environment variable.
pub fn reference_markdown() -> String {
    let mut out = String::new();
    for (section, title) in SECTIONS {
        if section.is_empty() {
            out.push_str(&format!("### {title}\n\n"));
        } else {
            out.push_str(&format!("### `[{section}]`\n\n{title}\n\n"));
        }
        out.push_str("| key | type | default | environment | meaning |\n");
        out.push_str("| --- | --- | --- | --- | --- |\n");
        for key in KEYS.iter().filter(|k| k.section == *section) {
            out.push_str(&format!(
                "| `{}` | {} | {} | `{}` | {} |\n",
                key.name,
                key.kind.describe().replace('|', "\\|"),
                key.default
                    .map(|d| format!("`{d}`"))
                    .unwrap_or_else(|| "unset".into()),
                key.env(),
                key.doc
            ));
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(file: Option<&str>, env: &[(&str, &str)]) -> (Sources, Option<tempfile::TempDir>) {
        let dir = file.map(|_| tempfile::tempdir().unwrap());
        let path = dir.as_ref().map(|d| d.path().join("berth.toml"));
        if let (Some(p), Some(text)) = (&path, file) {
            std::fs::write(p, text).unwrap();
        }
        (
            Sources {
                file: path,
                env: env
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                flags: Vec::new(),
            },
            dir,
        )
    }

    #[test]
    fn defaults_load_and_mean_the_embedded_all_in_one() {
        let (s, _d) = sources(None, &[]);
        let c = load(&s).unwrap().config;
        assert_eq!(c.registry.listen.port(), 9001);
        assert_eq!(c.identity.listen.port(), 9002);
        assert_eq!(c.tls.mode, TlsMode::On);
        assert_eq!(c.registry.auth, AuthMode::Token);
        assert_eq!(c.identity_backend(), Backend::Local);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/berth"));
        assert_eq!(
            c.users_file(),
            PathBuf::from("/var/lib/berth/identity/users.toml")
        );
    }

    #[test]
    fn every_key_has_an_env_name_and_a_distinct_path() {
        let mut seen = std::collections::BTreeSet::new();
        for k in KEYS {
            assert!(seen.insert(k.env()), "{}", k.env());
            assert!(k.env().starts_with("BERTH_"));
            assert!(SECTIONS.iter().any(|(s, _)| *s == k.section));
        }
        assert_eq!(
            find_key("registry.listen").unwrap().env(),
            "BERTH_REGISTRY_LISTEN"
        );
        assert_eq!(find_key("data_dir").unwrap().env(), "BERTH_DATA_DIR");
    }

    #[test]
    fn layers_file_then_env_then_flags() {
        let (mut s, _d) = sources(
            Some(
                "data_dir = \"/srv/a\"\n[registry]\nlisten = \"127.0.0.1:7000\"\nauth = \"none\"\n",
            ),
            &[("BERTH_REGISTRY_LISTEN", "127.0.0.1:7001")],
        );
        let c = load(&s).unwrap().config;
        assert_eq!(c.data_dir, PathBuf::from("/srv/a"));
        assert_eq!(c.registry.listen.port(), 7001, "env beats file");
        assert_eq!(c.registry.auth, AuthMode::None, "file beats default");
        s.flag("registry.listen", "--listen", "127.0.0.1:7002");
        let loaded = load(&s).unwrap();
        assert_eq!(loaded.config.registry.listen.port(), 7002, "flag beats env");
        assert_eq!(
            loaded.origins["registry.listen"],
            Origin::Flag("--listen".into())
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let (mut s, _d) = sources(
            Some(
                "colour = 1\n[registry]\nlisten = \"nowhere\"\nauth = \"maybe\"\nfoo = 2\n[tls]\nnames = [1]\n[nope]\nx = 1\n",
            ),
            &[
                ("BERTH_IDENTITY_ANONYMOUS_PULL_PUBLIC", "perhaps"),
                ("BERTH_TOKEN_LIFETIME", "five"),
            ],
        );
        s.flag("identity.listen", "--identity-listen", "9002");
        let p = load(&s).unwrap_err().0;
        let all = p.join("\n");
        for want in [
            "unknown key `colour`",
            "`registry.listen`",
            "`registry.auth`",
            "unknown key `registry.foo`",
            "`tls.names`",
            "unknown section `[nope]`",
            "BERTH_IDENTITY_ANONYMOUS_PULL_PUBLIC",
            "BERTH_TOKEN_LIFETIME",
            "--identity-listen",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
        assert_eq!(p.len(), 9, "{all}");
    }

    #[test]
    fn syntax_errors_are_problems_not_panics() {
        let (s, _d) = sources(Some("[registry\nlisten = "), &[]);
        let p = load(&s).unwrap_err().0;
        assert!(p[0].contains("not valid TOML"), "{p:?}");
    }

    #[test]
    fn cross_key_checks() {
        let (s, _d) = sources(
            Some(
                "[tls]\ncert_file = \"/nonexistent/c.pem\"\nnames = [\"bad name!\"]\n[identity]\nbackend = \"keystone\"\n",
            ),
            &[],
        );
        let all = load(&s).unwrap_err().0.join("\n");
        for want in [
            "needs tls.key_file",
            "bad name!",
            "no Keystone is configured",
            "service account",
            "password",
            "/nonexistent/c.pem is not a readable file",
        ] {
            assert!(all.contains(want), "missing {want:?} in:\n{all}");
        }
    }

    #[test]
    fn server_keys_and_the_pid_file_outside_the_data_directory() {
        let (s, _d) = sources(None, &[]);
        let c = load(&s).unwrap().config;
        assert_eq!(c.server.shutdown_grace, 30);
        assert_eq!(c.server.pid_file, None);
        let (s, _d) = sources(
            None,
            &[
                ("BERTH_SERVER_PID_FILE", "/run/berth/berth.pid"),
                ("BERTH_SERVER_SHUTDOWN_GRACE", "5"),
            ],
        );
        let c = load(&s).unwrap().config;
        assert_eq!(
            c.server.pid_file,
            Some(PathBuf::from("/run/berth/berth.pid"))
        );
        assert_eq!(c.server.shutdown_grace, 5);
        let (s, _d) = sources(
            None,
            &[
                ("BERTH_DATA_DIR", "/srv/berth"),
                ("BERTH_SERVER_PID_FILE", "/srv/berth/berth.pid"),
            ],
        );
        let all = load(&s).unwrap_err().0.join("\n");
        assert!(all.contains("server.pid_file"), "{all}");
    }

    #[test]
    fn openstack_variables_configure_keystone() {
        let (s, _d) = sources(
            None,
            &[
                ("OS_AUTH_URL", "http://127.0.0.1:5000/v3"),
                ("OS_USERNAME", "berth"),
                ("OS_PASSWORD", "pw"),
                ("OS_USER_DOMAIN_NAME", "Default"),
            ],
        );
        let loaded = load(&s).unwrap();
        let c = loaded.config;
        assert_eq!(c.identity_backend(), Backend::Keystone);
        assert_eq!(c.keystone.url.as_deref(), Some("http://127.0.0.1:5000/v3"));
        assert_eq!(c.keystone.username.as_deref(), Some("berth"));
        // BERTH_KEYSTONE_URL wins over OS_AUTH_URL.
        let (s, _d) = sources(
            None,
            &[
                ("OS_AUTH_URL", "http://a:5000/v3"),
                ("BERTH_KEYSTONE_URL", "http://b:5000/v3"),
                ("BERTH_KEYSTONE_USERNAME", "svc"),
                ("BERTH_KEYSTONE_PASSWORD", "pw"),
            ],
        );
        let c = load(&s).unwrap().config;
        assert_eq!(c.keystone.url.as_deref(), Some("http://b:5000/v3"));
    }

    #[test]
    fn unknown_berth_variables_warn() {
        let (s, _d) = sources(
            None,
            &[("BERTH_REGISTY_LISTEN", "x"), ("BERTH_LOG", "debug")],
        );
        let w = load(&s).unwrap().warnings;
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("BERTH_REGISTY_LISTEN"));
    }

    #[test]
    fn garbage_collection_is_off_by_default() {
        let (s, _d) = sources(None, &[]);
        let c = load(&s).unwrap().config;
        assert_eq!(
            (c.gc.interval, c.gc.grace, c.gc.delete_untagged),
            (0, 3600, false)
        );
        let (s, _d) = sources(
            Some("[gc]\ninterval = 600\ndelete_untagged = true\n"),
            &[("BERTH_GC_GRACE", "60")],
        );
        let c = load(&s).unwrap().config;
        assert_eq!(
            (c.gc.interval, c.gc.grace, c.gc.delete_untagged),
            (600, 60, true)
        );
    }

    #[test]
    fn env_lists_and_booleans() {
        let (s, _d) = sources(
            None,
            &[
                ("BERTH_TLS_NAMES", "registry.example, 10.0.0.5,"),
                ("BERTH_IDENTITY_ANONYMOUS_PULL_PUBLIC", "yes"),
            ],
        );
        let c = load(&s).unwrap().config;
        assert_eq!(c.tls.names, ["registry.example", "10.0.0.5"]);
        assert!(c.identity.anonymous_pull_public);
    }

    #[test]
    fn the_documentation_lists_every_key() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/configuration.md"
        ))
        .unwrap();
        let reference = reference_markdown();
        assert!(
            doc.contains(&reference),
            "docs/configuration.md is out of date: run `berth config reference` and paste its output into the reference section"
        );
    }
}
