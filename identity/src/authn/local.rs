//! The local users file: berth's embedded identity backend, used when no
//! Keystone is configured. A TOML file of users with bcrypt password hashes,
//! managed with `berth users` (the functions at the end of this module):
//!
//! ```toml
//! # berth local users: managed with `berth users`; hashes are bcrypt.
//! [[user]]
//! name = "admin"
//! password_hash = "$2b$12$..."
//! admin = true                                        # optional, default false
//! projects = { "team-a" = "member", "team-b" = "reader" } # optional
//! ```
//!
//! - Unknown keys, duplicate names, invalid names, roles other than
//!   `reader`, `member`, `admin`, and hashes that are not bcrypt make the
//!   whole file invalid. User and project names follow the rules of a
//!   repository name component (lower-case `[a-z0-9]` runs joined by `.`,
//!   `_`, `__` or `-`s), at most [`MAX_NAME_LEN`] bytes, and `public` is
//!   reserved (it is the public namespace). A user and a project may share a
//!   name; the namespace is then the project's (see [`crate::policy`]).
//! - The file is read at [`LocalUsers::open`] and read again when its
//!   metadata (size, modification and change times, inode) changes, looked
//!   at no more often than [`LocalOptions::reload_interval`] (the check runs
//!   on the login path: one `stat`). A file that becomes unreadable or
//!   invalid leaves the last good version in force, with a warning logged
//!   once per change. A new version also empties the credential cache, so a
//!   removed user or a changed password stops working at once.
//! - Logins: a password, for `name` or `name@local` ([`LOCAL_DOMAIN`]); any
//!   other domain and every application credential are refused without a
//!   hash check (the domain says nothing about which users exist). Names
//!   match exactly (they are lower case). Passwords longer than
//!   [`MAX_PASSWORD_LEN`] bytes are refused: bcrypt would ignore the rest.
//! - A password is checked with bcrypt on the blocking thread pool, at most
//!   as many at once as the machine has cores. An unknown user's password is
//!   checked against a dummy hash of the configured cost, so that a login's
//!   time does not tell whether the user exists. Successful checks are
//!   cached for [`LocalOptions::cache_ttl`] under an HMAC of the credentials
//!   (`authn::cache`), as for Keystone.
//! - The identity: user id `local:<name>`, domain `local`, the file's
//!   `admin` flag, and one [`ProjectRoles`] per project (id
//!   `local:<project>`) with the implied roles added (`admin` ⇒ `member` ⇒
//!   `reader`). The project directory is every project named in the file,
//!   without tags.
//! - Writes ([`ensure_admin`], [`set_user`], [`set_password`],
//!   [`remove_user`]) replace the file atomically (temp file, fsync, rename,
//!   fsync of the directory) with mode 0600, serialised by an advisory lock
//!   on `<file>.lock` beside it. The file is rewritten whole: comments other
//!   than the header are not kept; users keep their order.

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use serde::Deserialize;

use crate::authn::cache::Cache;
use crate::authn::{
    Authenticator, AuthnError, AuthnFuture, Credentials, Identity, Method, ProjectDirectory,
    ProjectInfo, ProjectRoles,
};
use crate::durable::{self, WriteError, parent_of};

/// The bcrypt cost for new hashes in production.
pub const DEFAULT_BCRYPT_COST: u32 = 12;
/// The domain of every local identity; `name@local` logs in as `name`.
pub const LOCAL_DOMAIN: &str = "local";
/// The prefix of local user and project ids (`local:<name>`).
pub const ID_PREFIX: &str = "local:";
/// The longest user or project name, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// The longest password bcrypt uses whole (it takes 72 bytes including a
/// terminating NUL).
pub const MAX_PASSWORD_LEN: usize = 71;
/// The user [`ensure_admin`] creates.
pub const ADMIN_USER: &str = "admin";
/// The first line of every file berth writes.
const HEADER: &str = "# berth local users: managed with `berth users`; hashes are bcrypt.\n";
/// Length of generated passwords: 32 alphanumerics, about 190 bits.
const GENERATED_PASSWORD_LEN: usize = 32;

/// A role on a project, as the file names it. Each implies the ones before
/// it: `admin` ⇒ `member` ⇒ `reader`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Pull.
    Reader,
    /// Pull and push.
    Member,
    /// Pull, push and delete.
    Admin,
}

impl Role {
    /// The role's name in the file and in an [`Identity`].
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    /// This role and the roles it implies, as an identity carries them.
    fn with_implied(self) -> BTreeSet<String> {
        [Role::Reader, Role::Member, Role::Admin]
            .into_iter()
            .filter(|r| *r <= self)
            .map(|r| r.as_str().to_owned())
            .collect()
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = LocalError;

    fn from_str(s: &str) -> Result<Role, LocalError> {
        match s {
            "reader" => Ok(Role::Reader),
            "member" => Ok(Role::Member),
            "admin" => Ok(Role::Admin),
            other => Err(LocalError::Role(other.to_owned())),
        }
    }
}

/// Settings of the local backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalOptions {
    /// How long a successful check is remembered (zero: never).
    pub cache_ttl: Duration,
    /// The most remembered checks.
    pub cache_max_entries: usize,
    /// The cost of the dummy hash unknown users are checked against: keep it
    /// the cost the file's hashes are made with (`berth users` uses the
    /// same setting), so that unknown and known users cost the same.
    pub bcrypt_cost: u32,
    /// How often, at most, the file's metadata is looked at for changes.
    pub reload_interval: Duration,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            cache_ttl: Duration::from_secs(60),
            cache_max_entries: 10_000,
            bcrypt_cost: DEFAULT_BCRYPT_COST,
            reload_interval: Duration::from_secs(1),
        }
    }
}

/// A user as `berth users list` shows it (no hash).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserSummary {
    /// The login name.
    pub name: String,
    /// Registry administrator.
    pub admin: bool,
    /// Project name -> role.
    pub projects: BTreeMap<String, Role>,
}

/// What [`ensure_admin`] created; the password is only in `password_file`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminCreated {
    /// The administrator's user name ([`ADMIN_USER`]).
    pub name: String,
    /// The users file created.
    pub users_file: PathBuf,
    /// The file holding the administrator's password.
    pub password_file: PathBuf,
}

/// Errors of the local users file and its management.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// (`cause` is part of the message, not a separate `source`, so that
    /// error chains do not print it twice.)
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    /// The file is not a valid users file.
    #[error("{}: {message}", path.display())]
    Invalid { path: PathBuf, message: String },
    #[error(
        "invalid name {0:?}: lower-case letters and digits, joined by '.', '_', '__' or '-'; at most {MAX_NAME_LEN} bytes; not \"public\""
    )]
    InvalidName(String),
    #[error("unknown role {0:?}: reader, member or admin")]
    Role(String),
    #[error("the password must be 1 to {MAX_PASSWORD_LEN} bytes long")]
    Password,
    #[error("bcrypt cost {0} is outside 4..=31")]
    Cost(u32),
    #[error("no user {0:?}")]
    NoSuchUser(String),
    #[error("bcrypt failed: {0}")]
    Hash(String),
    #[error("the system's random source failed")]
    Random,
}

impl From<WriteError> for LocalError {
    fn from(e: WriteError) -> Self {
        match e {
            WriteError::Random => LocalError::Random,
            WriteError::Io { path, source } => LocalError::Io {
                path,
                cause: source,
            },
        }
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> LocalError + '_ {
    move |cause| LocalError::Io {
        path: path.to_owned(),
        cause,
    }
}

/// Whether `name` may name a local user or project.
pub fn valid_name(name: &str) -> bool {
    name.len() <= MAX_NAME_LEN && name != "public" && crate::policy::valid_component(name)
}

/// One user of the file.
#[derive(Clone, PartialEq, Eq)]
struct UserRecord {
    name: String,
    password_hash: String,
    admin: bool,
    projects: BTreeMap<String, Role>,
}

impl fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UserRecord")
            .field("name", &self.name)
            .field("password_hash", &"<redacted>")
            .field("admin", &self.admin)
            .field("projects", &self.projects)
            .finish()
    }
}

impl UserRecord {
    fn summary(&self) -> UserSummary {
        UserSummary {
            name: self.name.clone(),
            admin: self.admin,
            projects: self.projects.clone(),
        }
    }

    fn identity(&self, method: Method) -> Identity {
        Identity {
            user_id: format!("{ID_PREFIX}{}", self.name),
            username: self.name.clone(),
            domain: LOCAL_DOMAIN.to_owned(),
            method,
            projects: self
                .projects
                .iter()
                .map(|(project, role)| ProjectRoles {
                    id: format!("{ID_PREFIX}{project}"),
                    name: project.clone(),
                    roles: role.with_implied(),
                })
                .collect(),
            admin: self.admin,
        }
    }
}

/// The file as written (serde's view; checked by [`Table::parse`]).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    user: Vec<RawUser>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: String,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    projects: BTreeMap<String, Role>,
}

/// A valid users file, in file order, with its lookups.
#[derive(Debug, Default)]
struct Table {
    users: Vec<UserRecord>,
    by_name: HashMap<String, usize>,
    directory: Arc<ProjectDirectory>,
}

/// Whether `hash` is a bcrypt hash bcrypt can check.
fn valid_hash(hash: &str) -> bool {
    hash.parse::<bcrypt::HashParts>()
        .is_ok_and(|p| (4..=31).contains(&p.get_cost()))
}

impl Table {
    /// Parses and checks a users file. Messages name users and lines, never
    /// a hash.
    fn parse(text: &str) -> Result<Table, String> {
        let raw: RawFile = toml::from_str(text).map_err(|e| match e.span() {
            Some(span) => {
                let before = text.get(..span.start).unwrap_or(text);
                let line = before.matches('\n').count() + 1;
                format!("line {line}: {}", e.message())
            }
            None => e.message().to_owned(),
        })?;
        let users = raw
            .user
            .into_iter()
            .map(|u| UserRecord {
                name: u.name,
                password_hash: u.password_hash,
                admin: u.admin,
                projects: u.projects,
            })
            .collect();
        Table::new(users)
    }

    fn new(users: Vec<UserRecord>) -> Result<Table, String> {
        let mut by_name = HashMap::new();
        let mut directory = ProjectDirectory::new();
        for (i, u) in users.iter().enumerate() {
            if !valid_name(&u.name) {
                return Err(LocalError::InvalidName(u.name.clone()).to_string());
            }
            if by_name.insert(u.name.clone(), i).is_some() {
                return Err(format!("user {:?} appears more than once", u.name));
            }
            if !valid_hash(&u.password_hash) {
                return Err(format!(
                    "user {:?}: password_hash is not a bcrypt hash",
                    u.name
                ));
            }
            for project in u.projects.keys() {
                if !valid_name(project) {
                    return Err(format!(
                        "user {:?}: {}",
                        u.name,
                        LocalError::InvalidName(project.clone())
                    ));
                }
                directory
                    .entry(project.clone())
                    .or_insert_with(|| ProjectInfo {
                        id: format!("{ID_PREFIX}{project}"),
                        name: project.clone(),
                        tags: Vec::new(),
                    });
            }
        }
        Ok(Table {
            users,
            by_name,
            directory: Arc::new(directory),
        })
    }

    fn get(&self, name: &str) -> Option<&UserRecord> {
        self.by_name.get(name).and_then(|&i| self.users.get(i))
    }

    /// The file's text. Every value is validated ASCII without quotes or
    /// backslashes, so plain TOML basic strings hold it as is.
    fn render(&self) -> String {
        let mut out = String::from(HEADER);
        for u in &self.users {
            out.push_str("\n[[user]]\n");
            out.push_str(&format!("name = \"{}\"\n", u.name));
            out.push_str(&format!("password_hash = \"{}\"\n", u.password_hash));
            if u.admin {
                out.push_str("admin = true\n");
            }
            if !u.projects.is_empty() {
                let entries: Vec<String> = u
                    .projects
                    .iter()
                    .map(|(p, r)| format!("\"{p}\" = \"{r}\""))
                    .collect();
                out.push_str(&format!("projects = {{ {} }}\n", entries.join(", ")));
            }
        }
        out
    }
}

/// What identifies a version of the file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(m: &fs::Metadata) -> Stamp {
        Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        }
    }
}

/// Reads and checks the file, with the stamp of the version read (taken
/// before reading: a change during the read shows at the next check).
fn load(path: &Path) -> Result<(Table, Stamp), LocalError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let stamp = Stamp::of(&f.metadata().map_err(io_err(path))?);
    let mut text = String::new();
    f.read_to_string(&mut text).map_err(io_err(path))?;
    let table = Table::parse(&text).map_err(|message| LocalError::Invalid {
        path: path.to_owned(),
        message,
    })?;
    Ok((table, stamp))
}

/// The version of the file in force.
struct Loaded {
    table: Arc<Table>,
    /// The version last looked at, good or bad (`None`: it could not be
    /// read), so a bad version is reported once.
    stamp: Option<Stamp>,
    checked: Instant,
    /// Counts good versions; part of the cache key.
    generation: u64,
}

/// The local users backend (see the module doc).
pub struct LocalUsers {
    path: PathBuf,
    options: LocalOptions,
    loaded: Mutex<Loaded>,
    cache: Cache,
    /// A hash of a random password at the configured cost, checked for
    /// unknown users.
    dummy_hash: String,
    /// Bounds concurrent bcrypt checks to the number of cores.
    bcrypt_slots: Arc<tokio::sync::Semaphore>,
    /// bcrypt checks run (for tests and, later, metrics).
    verifications: AtomicU64,
}

impl fmt::Debug for LocalUsers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalUsers")
            .field("path", &self.path)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The hash of a random password that unknown users' passwords are checked
/// against (see the module doc). Making it is one bcrypt hash at the
/// configured cost, a quarter of a second at cost 12: a process that opens
/// the users file later (a standby about to take over) makes it ahead.
#[derive(Clone)]
pub struct DummyHash {
    cost: u32,
    hash: String,
}

impl DummyHash {
    /// Hashes a random password at `cost` (4 to 31).
    pub fn new(cost: u32) -> Result<DummyHash, LocalError> {
        if !(4..=31).contains(&cost) {
            return Err(LocalError::Cost(cost));
        }
        let hash = bcrypt::hash(generate_password()?, cost)
            .map_err(|e| LocalError::Hash(e.to_string()))?;
        Ok(DummyHash { cost, hash })
    }

    /// The bcrypt cost it was made with.
    pub fn cost(&self) -> u32 {
        self.cost
    }
}

impl fmt::Debug for DummyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DummyHash")
            .field("cost", &self.cost)
            .finish_non_exhaustive()
    }
}

impl LocalUsers {
    /// Reads the users file (which must exist and be valid) and prepares the
    /// dummy hash (one bcrypt hash at the configured cost: a quarter of a
    /// second at cost 12).
    pub fn open(path: impl Into<PathBuf>, options: LocalOptions) -> Result<LocalUsers, LocalError> {
        let dummy = DummyHash::new(options.bcrypt_cost)?;
        Self::open_with(path, options, dummy)
    }

    /// [`LocalUsers::open`] with a dummy hash made ahead; one of another
    /// cost than `options.bcrypt_cost` is made again.
    pub fn open_with(
        path: impl Into<PathBuf>,
        options: LocalOptions,
        dummy: DummyHash,
    ) -> Result<LocalUsers, LocalError> {
        let path = path.into();
        if !(4..=31).contains(&options.bcrypt_cost) {
            return Err(LocalError::Cost(options.bcrypt_cost));
        }
        let (table, stamp) = load(&path)?;
        let dummy_hash = if dummy.cost == options.bcrypt_cost {
            dummy.hash
        } else {
            DummyHash::new(options.bcrypt_cost)?.hash
        };
        let cache = Cache::new(options.cache_ttl, options.cache_max_entries)
            .map_err(|()| LocalError::Random)?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        tracing::info!(path = %path.display(), users = table.users.len(), "local users file loaded");
        Ok(LocalUsers {
            path,
            options,
            loaded: Mutex::new(Loaded {
                table: Arc::new(table),
                stamp: Some(stamp),
                checked: Instant::now(),
                generation: 0,
            }),
            cache,
            dummy_hash,
            bcrypt_slots: Arc::new(tokio::sync::Semaphore::new(cores)),
            verifications: AtomicU64::new(0),
        })
    }

    /// The users file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The settings in use.
    pub fn options(&self) -> &LocalOptions {
        &self.options
    }

    /// The users as last loaded.
    pub fn users(&self) -> Vec<UserSummary> {
        self.current().0.users.iter().map(|u| u.summary()).collect()
    }

    /// The version in force and its generation, after reloading the file if
    /// it changed and `reload_interval` has passed since the last look.
    fn current(&self) -> (Arc<Table>, u64) {
        let mut loaded = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() >= self.options.reload_interval {
            loaded.checked = Instant::now();
            self.refresh(&mut loaded);
        }
        (loaded.table.clone(), loaded.generation)
    }

    fn refresh(&self, loaded: &mut Loaded) {
        let path = self.path.display();
        let stamp = match fs::metadata(&self.path) {
            Ok(m) => Stamp::of(&m),
            Err(e) => {
                if loaded.stamp.take().is_some() {
                    tracing::warn!(%path, error = %e,
                        "cannot read the local users file; keeping the last good version");
                }
                return;
            }
        };
        if loaded.stamp == Some(stamp) {
            return;
        }
        match load(&self.path) {
            Ok((table, stamp)) => {
                tracing::info!(%path, users = table.users.len(), "local users file reloaded");
                loaded.table = Arc::new(table);
                loaded.stamp = Some(stamp);
                loaded.generation += 1;
                self.cache.clear();
            }
            Err(e) => {
                tracing::warn!(%path, error = %e,
                    "the local users file is invalid; keeping the last good version");
                loaded.stamp = Some(stamp);
            }
        }
    }

    /// Checks `password` against `hash` with bcrypt on the blocking pool.
    /// False for a password bcrypt would truncate or a hash it refuses.
    async fn verify(&self, password: &str, hash: String) -> Result<bool, AuthnError> {
        let permit = self
            .bcrypt_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| AuthnError::Unavailable("password checks stopped".into()))?;
        self.verifications.fetch_add(1, Ordering::Relaxed);
        let password = password.to_owned();
        // The permit moves into the task: a cancelled login does not free
        // its slot while bcrypt still runs.
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            bcrypt::non_truncating_verify(password.as_bytes(), &hash).unwrap_or(false)
        })
        .await
        .map_err(|e| AuthnError::Unavailable(format!("password check failed: {e}")))
    }

    async fn check(&self, credentials: &Credentials) -> Result<Identity, AuthnError> {
        let (username, password) = match credentials {
            Credentials::Password {
                username,
                domain,
                password,
            } if domain.as_deref().is_none_or(|d| d == LOCAL_DOMAIN) => (username, password),
            Credentials::Password { .. } | Credentials::ApplicationCredential { .. } => {
                return Err(AuthnError::Invalid);
            }
        };
        if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
            return Err(AuthnError::Invalid);
        }
        let (table, generation) = self.current();
        // The generation in the key: a check that started before a reload
        // cannot fill the cache for the new version.
        let key = self
            .cache
            .key("password", &format!("{generation}:{username}"), password);
        if let Some(identity) = self.cache.get(&key) {
            tracing::debug!(account = %credentials.account(), "local check served from cache");
            return Ok(identity);
        }
        let user = table.get(username);
        let hash = user.map_or_else(|| self.dummy_hash.clone(), |u| u.password_hash.clone());
        let matches = self.verify(password, hash).await?;
        match user {
            Some(user) if matches => {
                let identity = user.identity(Method::Password);
                tracing::debug!(account = %credentials.account(), "local password accepted");
                self.cache.insert(key, identity.clone());
                Ok(identity)
            }
            _ => {
                tracing::debug!(account = %credentials.account(), "local password refused");
                Err(AuthnError::Invalid)
            }
        }
    }

    /// Checks credentials (see the module doc).
    pub async fn authenticate(&self, credentials: &Credentials) -> Result<Identity, AuthnError> {
        self.check(credentials).await
    }

    /// The current identity of `user_id` (`local:<name>`) for a refresh
    /// token: `Invalid` once the user is no longer in the file.
    pub async fn reauthorize(&self, user_id: &str) -> Result<Identity, AuthnError> {
        let name = user_id.strip_prefix(ID_PREFIX).ok_or(AuthnError::Invalid)?;
        let (table, _) = self.current();
        table
            .get(name)
            .map(|u| u.identity(Method::RefreshToken))
            .ok_or(AuthnError::Invalid)
    }

    /// Every project named in the file (no tags), keyed by name.
    pub async fn projects(&self) -> Result<Arc<ProjectDirectory>, AuthnError> {
        Ok(self.current().0.directory.clone())
    }
}

impl Authenticator for LocalUsers {
    fn authenticate<'a>(&'a self, credentials: &'a Credentials) -> AuthnFuture<'a> {
        Box::pin(self.check(credentials))
    }
}

// ---------------------------------------------------------------------------
// Management: what `berth users` and the first start of `berth serve` do.

/// A random password: [`GENERATED_PASSWORD_LEN`] letters and digits from
/// the system's random source (rejection sampling keeps them uniform).
pub fn generate_password() -> Result<String, LocalError> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    // The largest multiple of 62 that fits a byte: 248.
    let limit = (256 / ALPHABET.len() * ALPHABET.len()) as u8;
    let rng = SystemRandom::new();
    let mut out = String::with_capacity(GENERATED_PASSWORD_LEN);
    let mut buf = [0u8; 64];
    while out.len() < GENERATED_PASSWORD_LEN {
        rng.fill(&mut buf).map_err(|_| LocalError::Random)?;
        for &b in &buf {
            if b < limit && out.len() < GENERATED_PASSWORD_LEN {
                out.push(char::from(ALPHABET[usize::from(b) % ALPHABET.len()]));
            }
        }
    }
    Ok(out)
}

fn hash_password(password: &str, cost: u32) -> Result<String, LocalError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Err(LocalError::Password);
    }
    if !(4..=31).contains(&cost) {
        return Err(LocalError::Cost(cost));
    }
    bcrypt::non_truncating_hash(password, cost).map_err(|e| LocalError::Hash(e.to_string()))
}

fn fsync_dir(dir: &Path) -> Result<(), LocalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// An exclusive advisory lock on `<path>.lock`, held until dropped: one
/// writer of the users file at a time.
fn lock(path: &Path) -> Result<File, LocalError> {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    let lock_path = PathBuf::from(name);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&lock_path)
        .map_err(io_err(&lock_path))?;
    f.lock().map_err(io_err(&lock_path))?;
    Ok(f)
}

/// The users in the file at `path`; none when `missing_ok` and it does not
/// exist.
fn read_users(path: &Path, missing_ok: bool) -> Result<Vec<UserRecord>, LocalError> {
    match load(path) {
        Ok((table, _)) => Ok(table.users),
        Err(LocalError::Io { cause: source, .. })
            if missing_ok && source.kind() == io::ErrorKind::NotFound =>
        {
            Ok(Vec::new())
        }
        Err(e) => Err(e),
    }
}

/// Checks `users` as a file and writes it.
fn write_users(path: &Path, users: Vec<UserRecord>) -> Result<(), LocalError> {
    let table = Table::new(users).map_err(|message| LocalError::Invalid {
        path: path.to_owned(),
        message,
    })?;
    Ok(durable::replace_file(path, table.render().as_bytes())?)
}

fn check_names(name: &str, projects: &BTreeMap<String, Role>) -> Result<(), LocalError> {
    if let Some(bad) = std::iter::once(name)
        .chain(projects.keys().map(String::as_str))
        .find(|n| !valid_name(n))
    {
        return Err(LocalError::InvalidName(bad.to_owned()));
    }
    Ok(())
}

/// First start: when `users_file` does not exist, creates it with the
/// administrator [`ADMIN_USER`] and a generated password (32 letters and
/// digits, on one line), written to `password_file` (which must not exist;
/// mode 0600, fsynced with its directory, before the users file is
/// written). Returns what it created,
/// for the caller to log once; `None` when the users file exists (nothing is
/// touched). Both directories must exist.
pub fn ensure_admin(
    users_file: &Path,
    password_file: &Path,
    cost: u32,
) -> Result<Option<AdminCreated>, LocalError> {
    if users_file.try_exists().map_err(io_err(users_file))? {
        return Ok(None);
    }
    let _lock = lock(users_file)?;
    if users_file.try_exists().map_err(io_err(users_file))? {
        return Ok(None);
    }
    let password = generate_password()?;
    let password_hash = hash_password(&password, cost)?;
    // The password file is written before the users file: one without the
    // other is a first start that was killed half-way. Its password never
    // let anyone in (there was no users file), so it is replaced; refusing
    // to start would keep a standby from ever taking over.
    match fs::remove_file(password_file) {
        Ok(()) => {
            fsync_dir(parent_of(password_file))?;
            tracing::warn!(
                password_file = %password_file.display(),
                "replacing the admin password file of an interrupted first start"
            );
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(password_file)(e)),
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(password_file)
        .map_err(io_err(password_file))?;
    let written = f
        .write_all(format!("{password}\n").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(io_err(password_file))
        .and_then(|()| fsync_dir(parent_of(password_file)))
        .and_then(|()| {
            write_users(
                users_file,
                vec![UserRecord {
                    name: ADMIN_USER.to_owned(),
                    password_hash,
                    admin: true,
                    projects: BTreeMap::new(),
                }],
            )
        });
    if let Err(e) = written {
        // Leave nothing that would make the next start refuse.
        drop(f);
        let _ = fs::remove_file(password_file);
        return Err(e);
    }
    Ok(Some(AdminCreated {
        name: ADMIN_USER.to_owned(),
        users_file: users_file.to_owned(),
        password_file: password_file.to_owned(),
    }))
}

/// Adds user `name`, or replaces it (password, admin flag and projects),
/// creating the file if needed. Returns whether the user is new.
pub fn set_user(
    path: &Path,
    name: &str,
    password: &str,
    admin: bool,
    projects: &BTreeMap<String, Role>,
    cost: u32,
) -> Result<bool, LocalError> {
    check_names(name, projects)?;
    let password_hash = hash_password(password, cost)?;
    let record = UserRecord {
        name: name.to_owned(),
        password_hash,
        admin,
        projects: projects.clone(),
    };
    let _lock = lock(path)?;
    let mut users = read_users(path, true)?;
    let added = match users.iter_mut().find(|u| u.name == name) {
        Some(existing) => {
            *existing = record;
            false
        }
        None => {
            users.push(record);
            true
        }
    };
    write_users(path, users)?;
    Ok(added)
}

/// Changes the password of user `name`, keeping its flag and projects.
pub fn set_password(path: &Path, name: &str, password: &str, cost: u32) -> Result<(), LocalError> {
    let password_hash = hash_password(password, cost)?;
    let _lock = lock(path)?;
    let mut users = read_users(path, false)?;
    let user = users
        .iter_mut()
        .find(|u| u.name == name)
        .ok_or_else(|| LocalError::NoSuchUser(name.to_owned()))?;
    user.password_hash = password_hash;
    write_users(path, users)
}

/// Removes user `name`.
pub fn remove_user(path: &Path, name: &str) -> Result<(), LocalError> {
    let _lock = lock(path)?;
    let mut users = read_users(path, false)?;
    let before = users.len();
    users.retain(|u| u.name != name);
    if users.len() == before {
        return Err(LocalError::NoSuchUser(name.to_owned()));
    }
    write_users(path, users)
}

/// The users in the file, in file order.
pub fn list_users(path: &Path) -> Result<Vec<UserSummary>, LocalError> {
    Ok(read_users(path, false)?
        .iter()
        .map(UserRecord::summary)
        .collect())
}
