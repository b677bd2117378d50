//! Command-line interface. Settings come from [`crate::config`]: a TOML
//! file (`--config`), `BERTH_*` environment variables, and the flags here,
//! which override both; `--set section.key=value` reaches every key.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{self, Loaded, Sources};
use crate::exit::{Exit, ExitKind};

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
    /// Run the registry (port 9001) and its token service (port 9002) in
    /// one process, over HTTPS with a generated certificate unless
    /// configured otherwise.
    Serve(Box<ServeArgs>),
    /// The registry service alone (OCI Distribution API).
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// The token service alone (Docker token authentication).
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// The token signing keys in the data directory.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Check or show the configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage the local users file (the embedded default, without Keystone).
    Users {
        #[command(subcommand)]
        command: crate::users::UsersCommand,
    },
    /// Create a pull-only Keystone application credential for a project,
    /// with your OpenStack credentials (OS_CLOUD or OS_*), and print the
    /// Kubernetes Secret (or write the Docker config.json) that uses it.
    PullSecret(Box<crate::pull_secret::PullSecretArgs>),
    /// Remove what no tag reaches (blobs, links, empty repositories;
    /// untagged manifests with --delete-untagged) while the registry
    /// serves; --dry-run to see what would go.
    Gc(Box<crate::gc::GcArgs>),
}

#[derive(Subcommand, Debug)]
enum RegistryCommand {
    /// Serve the registry API.
    Serve(Box<RegistryServeArgs>),
}

#[derive(Subcommand, Debug)]
enum IdentityCommand {
    /// Serve the token endpoint and the JWKS.
    Serve(Box<IdentityServeArgs>),
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Add a new signing key: published now, signing after the publish
    /// delay; keys whose tokens can no longer be valid are retired.
    Rotate(ConfigArgs),
    /// Write the PEM certificate bundle of every published key (what a
    /// Docker Distribution registry's `auth.token.rootcertbundle` needs).
    ExportBundle {
        #[command(flatten)]
        config: ConfigArgs,
        /// Write to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Load the configuration as `berth serve` would and report every
    /// problem at once; exit status 1 if there is any.
    Check(ConfigArgs),
    /// Print the effective configuration (TOML) with where each value
    /// came from.
    Show(ConfigArgs),
    /// Print the reference of every key (the table in docs/configuration.md).
    Reference,
}

/// Where the configuration comes from; every command that reads it has these.
#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// Configuration file (TOML).
    #[arg(long, env = "BERTH_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory holding all state (`data_dir`).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Set any key, e.g. `--set registry.auth=none` (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum OnOff {
    On,
    Off,
}

impl OnOff {
    fn as_str(self) -> &'static str {
        match self {
            OnOff::On => "on",
            OnOff::Off => "off",
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthFlag {
    /// Bearer tokens from the token service.
    Token,
    /// No authentication: anyone who can connect may push, pull and delete.
    None,
}

/// The flags every server has. Each server has `--tls` too, but its help
/// differs between `berth serve` and the single services, so each command
/// declares it and hands it to [`ServerArgs::sources`].
#[derive(Args, Debug, Clone)]
pub struct ServerArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Write the process id to this file once serving or standing by
    /// (`server.pid_file`); removed on a clean exit.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
}

impl ServerArgs {
    /// The configuration sources with `--pid-file` and the command's
    /// `--tls` applied.
    fn sources(&self, tls: Option<OnOff>) -> Sources {
        let mut s = self.config.sources();
        opt_path(&mut s, "server.pid_file", "--pid-file", &self.pid_file);
        opt(&mut s, "tls.mode", "--tls", &tls.map(OnOff::as_str));
        s
    }
}

/// `berth serve`
#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// HTTPS (`on`, the default) or plain HTTP (`off`) for both services (`tls.mode`).
    #[arg(long, value_enum)]
    pub tls: Option<OnOff>,
    /// Certificate chain to serve instead of the generated one (`tls.cert_file`).
    #[arg(long)]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (`tls.key_file`).
    #[arg(long)]
    pub tls_key: Option<PathBuf>,
    /// Address of the registry (`registry.listen`, default 0.0.0.0:9001).
    #[arg(long)]
    pub registry_listen: Option<SocketAddr>,
    /// Address of the token service (`identity.listen`, default 0.0.0.0:9002).
    #[arg(long)]
    pub identity_listen: Option<SocketAddr>,
    /// Keystone v3 URL (`keystone.url`); without it, the local users file.
    #[arg(long)]
    pub keystone_url: Option<String>,
}

/// `berth registry serve`
#[derive(Args, Debug)]
pub struct RegistryServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// `tls.mode`
    #[arg(long, value_enum)]
    pub tls: Option<OnOff>,
    /// `registry.listen`
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// `registry.auth`
    #[arg(long, value_enum)]
    pub auth: Option<AuthFlag>,
    /// `token.realm`: the token endpoint clients are sent to.
    #[arg(long)]
    pub token_realm: Option<String>,
    /// `token.jwks_url`: the token service's key set.
    #[arg(long)]
    pub token_jwks_url: Option<String>,
    /// `token.jwks_file`: a file holding the key set.
    #[arg(long)]
    pub token_jwks_file: Option<PathBuf>,
    /// `token.service`: this registry's name, the tokens' `aud`.
    #[arg(long)]
    pub token_service: Option<String>,
    /// `token.issuer`: the trusted `iss`.
    #[arg(long)]
    pub token_issuer: Option<String>,
}

/// `berth identity serve`
#[derive(Args, Debug)]
pub struct IdentityServeArgs {
    #[command(flatten)]
    pub server: ServerArgs,
    /// `tls.mode`
    #[arg(long, value_enum)]
    pub tls: Option<OnOff>,
    /// `identity.listen`
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// `keystone.url`
    #[arg(long)]
    pub keystone_url: Option<String>,
}

impl ConfigArgs {
    /// The file, the environment, `--data-dir` and `--set`.
    pub fn sources(&self) -> Sources {
        let mut s = Sources::from_process(self.config.clone());
        if let Some(d) = &self.data_dir {
            s.flag("data_dir", "--data-dir", d.to_string_lossy());
        }
        for kv in &self.set {
            match kv.split_once('=') {
                Some((k, v)) => s.flag(k.trim(), &format!("--set {}", k.trim()), v),
                None => s.flag("", &format!("--set {kv} (expected KEY=VALUE)"), ""),
            }
        }
        s
    }

    /// Loads and checks the configuration, logging its warnings.
    pub fn load(&self) -> anyhow::Result<Loaded> {
        load_logged(&self.sources())
    }
}

fn load_logged(sources: &Sources) -> anyhow::Result<Loaded> {
    let loaded = config::load(sources)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    Ok(loaded)
}

fn opt<T: ToString>(s: &mut Sources, key: &str, flag: &str, v: &Option<T>) {
    if let Some(v) = v {
        s.flag(key, flag, v.to_string());
    }
}

fn opt_path(s: &mut Sources, key: &str, flag: &str, v: &Option<PathBuf>) {
    opt(s, key, flag, &v.as_ref().map(|p| p.display().to_string()));
}

impl ServeArgs {
    fn load(&self) -> anyhow::Result<Loaded> {
        let mut s = self.server.sources(self.tls);
        opt_path(&mut s, "tls.cert_file", "--tls-cert", &self.tls_cert);
        opt_path(&mut s, "tls.key_file", "--tls-key", &self.tls_key);
        opt(
            &mut s,
            "registry.listen",
            "--registry-listen",
            &self.registry_listen,
        );
        opt(
            &mut s,
            "identity.listen",
            "--identity-listen",
            &self.identity_listen,
        );
        opt(&mut s, "keystone.url", "--keystone-url", &self.keystone_url);
        load_logged(&s)
    }
}

impl RegistryServeArgs {
    fn load(&self) -> anyhow::Result<Loaded> {
        let mut s = self.server.sources(self.tls);
        opt(&mut s, "registry.listen", "--listen", &self.listen);
        let auth = self.auth.map(|a| match a {
            AuthFlag::Token => "token",
            AuthFlag::None => "none",
        });
        opt(&mut s, "registry.auth", "--auth", &auth);
        opt(&mut s, "token.realm", "--token-realm", &self.token_realm);
        opt(
            &mut s,
            "token.jwks_url",
            "--token-jwks-url",
            &self.token_jwks_url,
        );
        opt_path(
            &mut s,
            "token.jwks_file",
            "--token-jwks-file",
            &self.token_jwks_file,
        );
        opt(
            &mut s,
            "token.service",
            "--token-service",
            &self.token_service,
        );
        opt(&mut s, "token.issuer", "--token-issuer", &self.token_issuer);
        load_logged(&s)
    }
}

impl IdentityServeArgs {
    fn load(&self) -> anyhow::Result<Loaded> {
        let mut s = self.server.sources(self.tls);
        opt(&mut s, "identity.listen", "--listen", &self.listen);
        opt(&mut s, "keystone.url", "--keystone-url", &self.keystone_url);
        load_logged(&s)
    }
}

impl Cli {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            // The servers' errors carry exit statuses a service manager
            // can act on (crate::exit).
            Command::Serve(args) => {
                crate::serve::all(args.load().exit_with(Exit::Config)?.config).await
            }
            Command::Registry {
                command: RegistryCommand::Serve(args),
            } => crate::serve::registry_alone(args.load().exit_with(Exit::Config)?.config).await,
            Command::Identity {
                command: IdentityCommand::Serve(args),
            } => crate::identity::serve_alone(args.load().exit_with(Exit::Config)?.config).await,
            Command::Keys {
                command: KeysCommand::Rotate(args),
            } => crate::identity::rotate(&args.load()?.config),
            Command::Keys {
                command: KeysCommand::ExportBundle { config, out },
            } => crate::identity::export_bundle(&config.load()?.config, out.as_deref()),
            Command::Config { command } => config_command(command),
            Command::Users { command } => crate::users::run(command),
            Command::PullSecret(args) => crate::pull_secret::run(*args).await,
            Command::Gc(args) => crate::gc::run(*args).await,
        }
    }
}

fn config_command(command: ConfigCommand) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let mut out = String::new();
    let result = match command {
        ConfigCommand::Check(args) => match config::load(&args.sources()) {
            Ok(loaded) => {
                for w in &loaded.warnings {
                    let _ = writeln!(out, "warning: {w}");
                }
                let _ = writeln!(
                    out,
                    "configuration OK ({})",
                    args.config
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|| "no file: defaults and environment".into())
                );
                Ok(())
            }
            Err(problems) => {
                let _ = write!(out, "{problems}");
                Err(anyhow::anyhow!(
                    "the configuration has {} problem(s)",
                    problems.0.len()
                ))
            }
        },
        ConfigCommand::Show(args) => {
            let loaded = config::load(&args.sources())?;
            for (section, _) in config::SECTIONS {
                let keys = config::KEYS.iter().filter(|k| k.section == *section);
                if !section.is_empty() {
                    let _ = writeln!(out, "\n[{section}]");
                }
                for key in keys {
                    let path = key.path();
                    let value = match path.split_once('.') {
                        Some((s, k)) => loaded.table.get(s).and_then(|t| t.get(k)),
                        None => loaded.table.get(&path),
                    };
                    let origin = loaded
                        .origins
                        .get(&path)
                        .map(ToString::to_string)
                        .unwrap_or_else(|| "unset".into());
                    let _ = match value {
                        Some(v) => writeln!(out, "{} = {v}  # {origin}", key.name),
                        None => writeln!(out, "# {} unset", key.name),
                    };
                }
            }
            Ok(())
        }
        ConfigCommand::Reference => {
            out.push_str(&config::reference_markdown());
            Ok(())
        }
    };
    write_stdout(&out)?;
    result
}

/// Writes `text` to standard output; a reader that went away (`| head`)
/// is not an error.
pub fn write_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
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
