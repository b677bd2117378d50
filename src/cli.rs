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

/// How clients are authenticated. Token authentication comes with the
/// identity service; until then only the explicit development mode exists.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// No authentication: anyone who can connect may push, pull and delete.
    None,
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
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            Command::Registry {
                command: RegistryCommand::Serve(args),
            } => crate::serve::registry(args).await,
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
