//! `berth pull-secret`: with the caller's OpenStack credentials, creates a
//! pull-only application credential for a project and prints the
//! Kubernetes Secret (or writes the Docker `config.json`) that uses it. The
//! logic is in [`berth_identity::pull_secret`]; this is the command line.

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context as _;
use berth_identity::openstack::{ClientConfig, Environment};
use berth_identity::pull_secret::{
    self, Issuer, PullCredential, PullRequest, SecretFormat, SecretMeta,
};
use clap::{Args, ValueEnum};

/// `berth pull-secret`.
#[derive(Args, Debug)]
pub struct PullSecretArgs {
    /// The project whose images the secret pulls: its name (in your
    /// project domain) or its id. You need a role on it that implies
    /// `reader` (`reader`, `member`, `admin`).
    #[arg(long)]
    pub project: String,
    /// The project's domain, a name or an id (default: your project domain
    /// from clouds.yaml or OS_PROJECT_DOMAIN_*, else `default`).
    #[arg(long)]
    pub project_domain: Option<String>,
    /// The Kubernetes namespace of the Secret (left out of it when not given).
    #[arg(long)]
    pub namespace: Option<String>,
    /// The registry as clients name it, `HOST[:PORT]`: the key of the
    /// Docker auth entry.
    #[arg(long, env = "BERTH_PUBLIC_REGISTRY")]
    pub registry: String,
    /// The Secret's name (default `berth-pull-<project>`).
    #[arg(long)]
    pub name: Option<String>,
    /// Lifetime of the application credential: seconds, or a number with
    /// s, m, h, d or w (`90d`, `12h`); `never` for none.
    #[arg(long, default_value = "90d")]
    pub expires_in: String,
    /// Output format of the Secret.
    #[arg(long, value_enum, default_value_t = Format::Yaml)]
    pub format: Format,
    /// Write a Docker `config.json` (mode 0600) to this path instead of
    /// printing a Secret.
    #[arg(long, conflicts_with_all = ["format", "name"])]
    pub output_config: Option<PathBuf>,
    /// Replace an existing `--output-config` file.
    #[arg(long, requires = "output_config")]
    pub force: bool,
}

/// Output formats of the Secret.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Yaml,
    Json,
}

/// Runs `berth pull-secret`.
pub async fn run(args: PullSecretArgs) -> anyhow::Result<()> {
    // Everything that can be checked is checked before a credential exists.
    let expiry = pull_secret::parse_expires_in(&args.expires_in)?;
    let registry = pull_secret::normalize_registry(&args.registry)?;
    if let Some(name) = &args.name {
        pull_secret::validate_secret_name(name)?;
    }
    if let Some(ns) = &args.namespace {
        pull_secret::validate_namespace(ns)?;
    }
    if let Some(path) = &args.output_config {
        pull_secret::check_output(path, args.force)?;
    }
    let config = ClientConfig::resolve(&Environment::from_process())?;
    tracing::debug!(source = %config.source, url = %config.identity_url, "OpenStack credentials");

    let issuer = Issuer::connect(&config, &args.project, args.project_domain.as_deref()).await?;
    let request = PullRequest {
        namespace: args.namespace.clone(),
        expiry,
    };
    let credential = issuer
        .create(&request, time::OffsetDateTime::now_utc())
        .await?;

    let written = deliver(&args, &registry, &credential);
    let target = match written {
        Ok(target) => target,
        Err(e) => {
            // The secret is lost: do not leave a credential nobody can use.
            let cleanup = match issuer.delete(&credential).await {
                Ok(()) => format!("application credential {} deleted again", credential.id),
                Err(d) => format!(
                    "application credential {} could not be deleted ({d}): delete it with \
                     `openstack application credential delete {}`",
                    credential.id, credential.id
                ),
            };
            return Err(e.context(cleanup));
        }
    };
    eprintln!(
        "berth: application credential {} ({}, role {}) for project {} ({}), expires {}; {target}",
        credential.id,
        credential.name,
        pull_secret::PULL_ROLE,
        credential.project_name,
        credential.project_id,
        credential.expires_text(),
    );
    Ok(())
}

/// Writes the Secret to standard output or the `config.json` to its file;
/// says what was done.
fn deliver(
    args: &PullSecretArgs,
    registry: &str,
    credential: &PullCredential,
) -> anyhow::Result<String> {
    if let Some(path) = &args.output_config {
        let config = format!("{:#}\n", pull_secret::docker_config(registry, credential));
        pull_secret::write_docker_config(path, &config, args.force)?;
        return Ok(format!("wrote {}", path.display()));
    }
    let meta = SecretMeta {
        name: args
            .name
            .clone()
            .unwrap_or_else(|| pull_secret::default_secret_name(&credential.project_name)),
        namespace: args.namespace.clone(),
        registry: registry.to_owned(),
    };
    let format = match args.format {
        Format::Yaml => SecretFormat::Yaml,
        Format::Json => SecretFormat::Json,
    };
    let text = pull_secret::render_secret(&meta, credential, format);
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the Secret to standard output")?;
    Ok(match &meta.namespace {
        Some(ns) => format!("Secret {ns}/{}", meta.name),
        None => format!("Secret {}", meta.name),
    })
}
