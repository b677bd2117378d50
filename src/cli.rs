//! Command-line interface. Every flag can also be given as a `BERTH_*`
//! environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "berth",
    version,
    about = "A private OCI registry for OpenStack clouds"
)]
pub struct Cli {
    /// Log output format.
    #[arg(long, global = true, env = "BERTH_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// The registry service (OCI Distribution API).
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// The token service (Docker token authentication against Keystone).
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// The token signing keys in the data directory.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand, Debug)]
enum IdentityCommand {
    /// Serve the token endpoint and the JWKS.
    Serve(Box<IdentityServe>),
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Add a new signing key: published now, signing after the publish
    /// delay; keys whose tokens can no longer be valid are retired.
    Rotate(KeysArgs),
    /// Write the PEM certificate bundle of every published key (what a
    /// Docker Distribution registry's `auth.token.rootcertbundle` needs).
    ExportBundle {
        #[command(flatten)]
        keys: KeysArgs,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// Where the keys are and how they are made.
#[derive(Args, Debug, Clone)]
pub struct KeysArgs {
    /// Directory holding all state; keys are in `<data-dir>/identity/keys`.
    #[arg(long, env = "BERTH_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Algorithm of new keys.
    #[arg(long, env = "BERTH_TOKEN_ALGORITHM", value_enum, default_value_t = SigningAlgorithm::Rs256)]
    pub token_algorithm: SigningAlgorithm,
    /// Seconds a new key is published before it signs.
    #[arg(long, env = "BERTH_KEY_PUBLISH_DELAY", default_value_t = 60)]
    pub key_publish_delay: u64,
    /// Lifetime of issued tokens, in seconds (keys outlive their tokens).
    #[arg(long, env = "BERTH_TOKEN_LIFETIME", default_value_t = 300)]
    pub token_lifetime: u64,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum SigningAlgorithm {
    Rs256,
    Es256,
}

/// `berth identity serve`.
#[derive(Args, Debug)]
pub struct IdentityServe {
    #[command(flatten)]
    pub keys: KeysArgs,
    /// Address to listen on; port 0 picks a free port (the log says which).
    #[arg(long, env = "BERTH_IDENTITY_LISTEN", default_value = "0.0.0.0:9002")]
    pub listen: SocketAddr,
    /// TLS mode.
    #[arg(long, env = "BERTH_TLS", value_enum)]
    pub tls: TlsMode,
    /// The tokens' issuer (`iss`); the registry must expect the same.
    #[arg(
        long,
        env = "BERTH_TOKEN_ISSUER",
        default_value = "berth-token-service"
    )]
    pub token_issuer: String,
    /// The registry service the tokens are for (`aud`, the `service` parameter).
    #[arg(long, env = "BERTH_TOKEN_SERVICE", default_value = "berth-registry")]
    pub token_service: String,
    /// Keystone v3 URL, e.g. `http://keystone:5000/v3`. Falls back to `OS_AUTH_URL`.
    #[arg(long, env = "BERTH_KEYSTONE_URL")]
    pub keystone_url: Option<String>,
    /// berth's own Keystone service account (needs `reader` on the system).
    #[arg(long, env = "BERTH_KEYSTONE_USERNAME")]
    pub keystone_username: String,
    /// File holding the service account's password (or set `BERTH_KEYSTONE_PASSWORD`).
    #[arg(long, env = "BERTH_KEYSTONE_PASSWORD_FILE")]
    pub keystone_password_file: Option<PathBuf>,
    /// Domain id of the service account.
    #[arg(
        long,
        env = "BERTH_KEYSTONE_SERVICE_DOMAIN_ID",
        default_value = "default"
    )]
    pub keystone_service_domain_id: String,
    /// Domain id of users who log in without `@domain`.
    #[arg(long, env = "BERTH_KEYSTONE_USER_DOMAIN_ID", default_value = "default")]
    pub keystone_user_domain_id: String,
    /// Project whose `admin` role makes a registry administrator.
    #[arg(long, env = "BERTH_KEYSTONE_ADMIN_PROJECT", default_value = "admin")]
    pub keystone_admin_project: String,
    /// Domain id of the admin project.
    #[arg(
        long,
        env = "BERTH_KEYSTONE_ADMIN_PROJECT_DOMAIN_ID",
        default_value = "default"
    )]
    pub keystone_admin_project_domain_id: String,
    /// Seconds a successful Keystone check is cached (keyed hash only).
    #[arg(long, env = "BERTH_AUTH_CACHE_TTL", default_value_t = 60)]
    pub auth_cache_ttl: u64,
    /// Seconds the Keystone project directory (names, tags) is reused.
    #[arg(long, env = "BERTH_KEYSTONE_PROJECTS_TTL", default_value_t = 30)]
    pub keystone_projects_ttl: u64,
    /// Seconds a user's Keystone role assignments are reused by their next
    /// password logins (the password itself is checked every time).
    #[arg(long, env = "BERTH_KEYSTONE_ROLES_TTL", default_value_t = 30)]
    pub keystone_roles_ttl: u64,
    /// Seconds a Keystone request may take before berth answers 503.
    #[arg(long, env = "BERTH_KEYSTONE_TIMEOUT", default_value_t = 5)]
    pub keystone_timeout: u64,
    /// More registry administrators, by user name (comma-separated).
    #[arg(long, env = "BERTH_ADMIN_USERS", value_delimiter = ',')]
    pub admin_users: Vec<String>,
    /// Roles on the admin project that make a registry administrator.
    #[arg(
        long,
        env = "BERTH_ADMIN_ROLES",
        value_delimiter = ',',
        default_value = "admin"
    )]
    pub admin_roles: Vec<String>,
    /// Let anonymous clients pull projects tagged `registry-public`.
    #[arg(long, env = "BERTH_ANONYMOUS_PULL_PUBLIC", default_value_t = false)]
    pub anonymous_pull_public: bool,
    /// Audit log file (JSON lines); without it, the log gets the records.
    #[arg(long, env = "BERTH_AUDIT_LOG")]
    pub audit_log: Option<PathBuf>,
    /// Lifetime of refresh tokens, in seconds.
    #[arg(long, env = "BERTH_REFRESH_TOKEN_LIFETIME", default_value_t = 7 * 24 * 3600)]
    pub refresh_token_lifetime: u64,
    /// Failed logins per account within the window before 429.
    #[arg(long, env = "BERTH_LOGIN_FAILURES_PER_ACCOUNT", default_value_t = 5)]
    pub login_failures_per_account: u32,
    /// Failed logins per client address within the window before 429.
    #[arg(long, env = "BERTH_LOGIN_FAILURES_PER_ADDRESS", default_value_t = 20)]
    pub login_failures_per_address: u32,
    /// The rate-limiting window, in seconds.
    #[arg(long, env = "BERTH_LOGIN_FAILURE_WINDOW", default_value_t = 60)]
    pub login_failure_window: u64,
}

#[derive(Subcommand, Debug)]
enum RegistryCommand {
    /// Serve the registry API.
    Serve(RegistryServe),
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// How clients are authenticated.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// No authentication: anyone who can connect may push, pull and delete.
    None,
    /// Bearer tokens from the token service (Docker token authentication),
    /// verified against its JWKS.
    Token,
}

/// Transport security. HTTPS arrives with the all-in-one `berth serve`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum TlsMode {
    /// Plain HTTP.
    Off,
}

#[derive(Args, Debug)]
pub struct RegistryServe {
    /// Directory holding all registry state (blobs, repositories, uploads).
    #[arg(long, env = "BERTH_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port (the log says which).
    #[arg(long, env = "BERTH_REGISTRY_LISTEN", default_value = "0.0.0.0:9001")]
    pub listen: SocketAddr,
    /// Authentication mode.
    #[arg(long, env = "BERTH_REGISTRY_AUTH", value_enum)]
    pub auth: AuthMode,
    /// TLS mode.
    #[arg(long, env = "BERTH_TLS", value_enum)]
    pub tls: TlsMode,
    /// Largest manifest accepted, in bytes.
    #[arg(long, env = "BERTH_MAX_MANIFEST_SIZE", default_value_t = 4 << 20)]
    pub max_manifest_size: usize,
    /// Upload sessions idle for this many seconds are removed.
    #[arg(long, env = "BERTH_UPLOAD_MAX_AGE", default_value_t = 24 * 3600)]
    pub upload_max_age: u64,
    /// `--auth token`: the token endpoint clients are sent to (the
    /// challenge's `realm`), e.g. `https://registry.example/token`.
    #[arg(long, env = "BERTH_TOKEN_REALM", required_if_eq("auth", "token"))]
    pub token_realm: Option<String>,
    /// `--auth token`: this registry's service name (the tokens' `aud`).
    #[arg(long, env = "BERTH_TOKEN_SERVICE", default_value = "berth-registry")]
    pub token_service: String,
    /// `--auth token`: the trusted token issuer (`iss`).
    #[arg(
        long,
        env = "BERTH_TOKEN_ISSUER",
        default_value = "berth-token-service"
    )]
    pub token_issuer: String,
    /// `--auth token`: URL of the token service's JWKS, fetched at start
    /// and again when a token names an unknown key.
    #[arg(long, env = "BERTH_TOKEN_JWKS_URL", conflicts_with = "token_jwks_file")]
    pub token_jwks_url: Option<String>,
    /// `--auth token`: a file holding the JWKS (instead of a URL), read
    /// at start and again when a token names an unknown key.
    #[arg(long, env = "BERTH_TOKEN_JWKS_FILE")]
    pub token_jwks_file: Option<PathBuf>,
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Registry {
                command: RegistryCommand::Serve(args),
            } => crate::serve::registry(args).await,
            Command::Identity {
                command: IdentityCommand::Serve(args),
            } => crate::identity::serve(*args).await,
            Command::Keys {
                command: KeysCommand::Rotate(args),
            } => crate::identity::rotate(&args),
            Command::Keys {
                command: KeysCommand::ExportBundle { keys, out },
            } => crate::identity::export_bundle(&keys, out.as_deref()),
        }
    }
}

pub fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
