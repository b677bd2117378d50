//! Wiring of the token service: building it from the configuration (with
//! Keystone or the local users file behind it), `berth identity serve`, and
//! the `berth keys` commands. The logic lives in `berth-identity`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use std::os::unix::fs::DirBuilderExt;

use anyhow::Context;
use berth_identity::authn::local::{self, DummyHash, LocalError, LocalOptions, LocalUsers};
use berth_identity::backend::Backend;
use berth_identity::http::TokenService;
use berth_identity::keys::{Algorithm, KeyOptions, KeyStore};

use crate::config::{self, Config};
use crate::exit::{Exit, ExitKind};
use crate::standby::{Active, Listen};

/// `<data-dir>/identity/keys`
pub fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity").join("keys")
}

pub fn key_options(cfg: &Config) -> KeyOptions {
    KeyOptions {
        algorithm: match cfg.token.algorithm {
            config::Algorithm::RS256 => Algorithm::Rs256,
            config::Algorithm::ES256 => Algorithm::Es256,
        },
        publish_delay: Duration::from_secs(cfg.token.key_publish_delay),
        token_lifetime: Duration::from_secs(cfg.token.lifetime),
        ..KeyOptions::default()
    }
}

pub fn open_keys(cfg: &Config) -> anyhow::Result<Arc<KeyStore>> {
    let dir = keys_dir(&cfg.data_dir);
    let keys = KeyStore::open(&dir, key_options(cfg))
        .with_context(|| format!("cannot open the signing keys in {}", dir.display()))?;
    Ok(Arc::new(keys))
}

/// `berth keys rotate`
pub fn rotate(cfg: &Config) -> anyhow::Result<()> {
    let keys = open_keys(cfg)?;
    let rotation = keys.rotate(SystemTime::now())?;
    let activates = rotation
        .activates
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    println!(
        "new signing key {} published; it signs in {} s",
        rotation.kid,
        activates.as_secs()
    );
    for kid in rotation.retired {
        println!("retired key {kid}");
    }
    Ok(())
}

/// `berth keys export-bundle`
pub fn export_bundle(cfg: &Config, out: Option<&Path>) -> anyhow::Result<()> {
    let bundle = open_keys(cfg)?.export_bundle();
    match out {
        Some(path) => std::fs::write(path, bundle)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => crate::cli::write_stdout(&bundle)?,
    }
    Ok(())
}

/// What the token service makes before it holds the data directory (none of
/// it writes): the local backend's dummy password hash, a quarter of a
/// second of bcrypt that a standby spends while it waits rather than when
/// it takes over.
pub struct Prepared {
    dummy: Option<tokio::task::JoinHandle<Result<DummyHash, LocalError>>>,
}

/// Starts making what [`Prepared`] holds, on the blocking pool.
pub fn prepare(cfg: &Config) -> Prepared {
    let dummy = (cfg.identity_backend() != config::Backend::Keystone).then(|| {
        let cost = LocalOptions::default().bcrypt_cost;
        tokio::task::spawn_blocking(move || DummyHash::new(cost))
    });
    Prepared { dummy }
}

/// The token service of `cfg` and its signing keys (which the all-in-one
/// registry trusts directly).
pub async fn token_service(
    cfg: &Config,
    prepared: Prepared,
) -> anyhow::Result<(Arc<TokenService>, Arc<KeyStore>)> {
    use berth_identity::audit::AuditLog;
    use berth_identity::policy::PolicyConfig;
    use berth_identity::ratelimit::{RateLimitConfig, RateLimiter};
    use berth_identity::refresh::RefreshStore;
    use berth_identity::token::TokenIssuer;

    let backend = backend(cfg, prepared).await?;
    let keys = open_keys(cfg)?;
    let issuer = TokenIssuer::new(
        keys.clone(),
        cfg.token.issuer.clone(),
        cfg.token.service.clone(),
        Duration::from_secs(cfg.token.lifetime),
    );
    let refresh_dir = cfg.data_dir.join("identity").join("refresh");
    let refresh = RefreshStore::open(
        &refresh_dir,
        Duration::from_secs(cfg.identity.refresh_token_lifetime),
    )
    .with_context(|| format!("cannot open {}", refresh_dir.display()))?;
    let audit = match &cfg.identity.audit_log {
        Some(path) => AuditLog::open(path)
            .with_context(|| format!("cannot open the audit log {}", path.display()))
            .exit_with(Exit::CantCreate)?,
        None => AuditLog::tracing(),
    };
    let service = Arc::new(TokenService {
        backend,
        issuer: Arc::new(issuer),
        refresh,
        limiter: RateLimiter::new(RateLimitConfig {
            max_failures_per_account: cfg.identity.login_failures_per_account,
            max_failures_per_ip: cfg.identity.login_failures_per_address,
            window_secs: cfg.identity.login_failure_window,
            ..RateLimitConfig::default()
        }),
        audit,
        policy: PolicyConfig {
            admin_users: cfg.identity.admin_users.clone(),
            admin_roles: Vec::new(),
            anonymous_pull_public: cfg.identity.anonymous_pull_public,
        },
        service: cfg.token.service.clone(),
    });
    Ok((service, keys))
}

/// Keystone when configured, else the local users file (created with an
/// `admin` account on first start).
async fn backend(cfg: &Config, prepared: Prepared) -> anyhow::Result<Arc<dyn Backend>> {
    match cfg.identity_backend() {
        config::Backend::Keystone => keystone(cfg).exit_with(Exit::Config),
        _ => local(cfg, prepared).await,
    }
}

fn keystone(cfg: &Config) -> anyhow::Result<Arc<dyn Backend>> {
    use berth_identity::authn::keystone::{KeystoneAuthenticator, KeystoneConfig};
    let k = &cfg.keystone;
    let url = k
        .url
        .clone()
        .context("no Keystone configured: set keystone.url (BERTH_KEYSTONE_URL) or OS_AUTH_URL")?;
    let username = k
        .username
        .clone()
        .context("keystone.username (BERTH_KEYSTONE_USERNAME) is not set")?;
    let password = match &k.password_file {
        Some(file) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        None => std::env::var("BERTH_KEYSTONE_PASSWORD")
            .or_else(|_| std::env::var("OS_PASSWORD"))
            .context(
                "no password for the Keystone service account: set BERTH_KEYSTONE_PASSWORD or keystone.password_file",
            )?,
    };
    let keystone = KeystoneAuthenticator::new(KeystoneConfig {
        url: url.clone(),
        user_domain_id: k.user_domain_id.clone(),
        service_username: username,
        service_password: password,
        service_domain_id: k.service_domain_id.clone(),
        admin_project: k.admin_project.clone(),
        admin_project_domain_id: k.admin_project_domain_id.clone(),
        admin_roles: k.admin_roles.clone(),
        admin_users: cfg.identity.admin_users.clone(),
        ca_file: k.ca_file.clone(),
        timeout: Duration::from_secs(k.timeout),
        cache_ttl: Duration::from_secs(k.cache_ttl),
        projects_ttl: Duration::from_secs(k.projects_ttl),
        roles_ttl: Duration::from_secs(k.roles_ttl),
        ..KeystoneConfig::default()
    })?;
    tracing::info!(url = %url, "identity backend: Keystone");
    Ok(Arc::new(keystone))
}

async fn local(cfg: &Config, prepared: Prepared) -> anyhow::Result<Arc<dyn Backend>> {
    let users_file = cfg.users_file();
    let password_file = cfg.admin_password_file();
    let options = LocalOptions {
        cache_ttl: Duration::from_secs(cfg.local.cache_ttl),
        ..LocalOptions::default()
    };
    let cost = options.bcrypt_cost;
    for dir in [users_file.parent(), password_file.parent()]
        .into_iter()
        .flatten()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let (users, pw) = (users_file.clone(), password_file.clone());
    let created = tokio::task::spawn_blocking(move || local::ensure_admin(&users, &pw, cost))
        .await?
        .with_context(|| format!("cannot create the users file {}", users_file.display()))?;
    if created.is_some() {
        tracing::warn!(
            users_file = %users_file.display(),
            password_file = %password_file.display(),
            "created the local user `admin`; its password is in the password file (readable by this account only)"
        );
    }
    let users = match prepared.dummy {
        Some(made) => match made.await {
            Ok(Ok(dummy)) => LocalUsers::open_with(&users_file, options, dummy),
            Ok(Err(e)) => Err(e),
            Err(e) => return Err(e).context("making the dummy password hash"),
        },
        None => LocalUsers::open(&users_file, options),
    }
    .with_context(|| format!("cannot read the users file {}", users_file.display()))?;
    tracing::info!(users_file = %users_file.display(), "identity backend: local users file");
    Ok(Arc::new(users))
}

/// `berth identity serve`
pub async fn serve_alone(cfg: Config) -> anyhow::Result<()> {
    let prepared = prepare(&cfg);
    let listen = [Listen {
        name: "token service",
        addr: cfg.identity.listen,
    }];
    crate::standby::run(&cfg, "berth identity serve", &listen, |addrs| {
        activate_alone(&cfg, addrs, prepared)
    })
    .await
}

/// `berth identity serve` once it holds the data directory.
async fn activate_alone(
    cfg: &Config,
    addrs: Vec<SocketAddr>,
    prepared: Prepared,
) -> anyhow::Result<Active> {
    let [addr] = addrs[..] else {
        anyhow::bail!("internal: one listener expected");
    };
    let tls = crate::serve::tls_setup(cfg)?;
    let (service, _keys) = token_service(cfg, prepared).await.exit_with(Exit::Io)?;
    let certificate = tls.as_ref().map(|t| t.certificate.clone());
    let cfg = cfg.clone();
    let announce = move || {
        if let Some(tls) = &tls {
            tls.announce(&cfg, &[addr.port()]);
        }
        tracing::info!(%addr, service = %cfg.token.service, issuer = %cfg.token.issuer, "token service listening");
    };
    Ok(Active {
        routers: vec![berth_identity::http::router(service)],
        certificate,
        announce: Box::new(announce),
    })
}
