//! Wiring of the token service: `berth identity serve` and the `berth keys`
//! commands. The logic lives in `berth-identity`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use berth_identity::keys::{Algorithm, KeyOptions, KeyStore};

use crate::cli::{KeysArgs, SigningAlgorithm};

/// `<data-dir>/identity/keys`
pub fn keys_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("identity").join("keys")
}

pub fn key_options(args: &KeysArgs) -> KeyOptions {
    KeyOptions {
        algorithm: match args.token_algorithm {
            SigningAlgorithm::Rs256 => Algorithm::Rs256,
            SigningAlgorithm::Es256 => Algorithm::Es256,
        },
        publish_delay: Duration::from_secs(args.key_publish_delay),
        token_lifetime: Duration::from_secs(args.token_lifetime),
        ..KeyOptions::default()
    }
}

pub fn open_keys(args: &KeysArgs) -> anyhow::Result<Arc<KeyStore>> {
    let dir = keys_dir(&args.data_dir);
    let keys = KeyStore::open(&dir, key_options(args))
        .with_context(|| format!("cannot open the signing keys in {}", dir.display()))?;
    Ok(Arc::new(keys))
}

/// `berth keys rotate`
pub fn rotate(args: &KeysArgs) -> anyhow::Result<()> {
    let keys = open_keys(args)?;
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
pub fn export_bundle(args: &KeysArgs, out: Option<&Path>) -> anyhow::Result<()> {
    let bundle = open_keys(args)?.export_bundle();
    match out {
        Some(path) => std::fs::write(path, bundle)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => print!("{bundle}"),
    }
    Ok(())
}

/// `berth identity serve`
pub async fn serve(args: crate::cli::IdentityServe) -> anyhow::Result<()> {
    use berth_identity::audit::AuditLog;
    use berth_identity::authn::keystone::{KeystoneAuthenticator, KeystoneConfig};
    use berth_identity::http::{TokenService, router};
    use berth_identity::policy::PolicyConfig;
    use berth_identity::ratelimit::{RateLimitConfig, RateLimiter};
    use berth_identity::refresh::RefreshStore;
    use berth_identity::token::TokenIssuer;

    let crate::cli::TlsMode::Off = args.tls;
    let url = args
        .keystone_url
        .clone()
        .or_else(|| std::env::var("OS_AUTH_URL").ok())
        .context("no Keystone configured: set BERTH_KEYSTONE_URL (or OS_AUTH_URL)")?;
    let password = match (
        &args.keystone_password_file,
        std::env::var("BERTH_KEYSTONE_PASSWORD"),
    ) {
        (Some(file), _) => std::fs::read_to_string(file)
            .with_context(|| format!("cannot read {}", file.display()))?
            .trim_end_matches(['\r', '\n'])
            .to_owned(),
        (None, Ok(p)) => p,
        (None, Err(_)) => anyhow::bail!(
            "no password for the Keystone service account: set BERTH_KEYSTONE_PASSWORD or BERTH_KEYSTONE_PASSWORD_FILE"
        ),
    };
    let keystone = KeystoneAuthenticator::new(KeystoneConfig {
        url,
        user_domain_id: args.keystone_user_domain_id.clone(),
        service_username: args.keystone_username.clone(),
        service_password: password,
        service_domain_id: args.keystone_service_domain_id.clone(),
        admin_project: args.keystone_admin_project.clone(),
        admin_project_domain_id: args.keystone_admin_project_domain_id.clone(),
        admin_roles: args.admin_roles.clone(),
        admin_users: args.admin_users.clone(),
        timeout: Duration::from_secs(args.keystone_timeout),
        cache_ttl: Duration::from_secs(args.auth_cache_ttl),
        projects_ttl: Duration::from_secs(args.keystone_projects_ttl),
        roles_ttl: Duration::from_secs(args.keystone_roles_ttl),
        ..KeystoneConfig::default()
    })?;

    let keys = open_keys(&args.keys)?;
    let issuer = TokenIssuer::new(
        keys,
        args.token_issuer.clone(),
        args.token_service.clone(),
        Duration::from_secs(args.keys.token_lifetime),
    );
    let refresh_dir = args.keys.data_dir.join("identity").join("refresh");
    let refresh = RefreshStore::open(
        &refresh_dir,
        Duration::from_secs(args.refresh_token_lifetime),
    )
    .with_context(|| format!("cannot open {}", refresh_dir.display()))?;
    let audit = match &args.audit_log {
        Some(path) => AuditLog::open(path)
            .with_context(|| format!("cannot open the audit log {}", path.display()))?,
        None => AuditLog::tracing(),
    };
    let service = Arc::new(TokenService {
        backend: Arc::new(keystone),
        issuer: Arc::new(issuer),
        refresh,
        limiter: RateLimiter::new(RateLimitConfig {
            max_failures_per_account: args.login_failures_per_account,
            max_failures_per_ip: args.login_failures_per_address,
            window_secs: args.login_failure_window,
            ..RateLimitConfig::default()
        }),
        audit,
        policy: PolicyConfig {
            admin_users: args.admin_users.clone(),
            admin_roles: Vec::new(),
            anonymous_pull_public: args.anonymous_pull_public,
        },
        service: args.token_service.clone(),
    });

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    tracing::warn!(%addr, "TLS is off (--tls off): passwords cross the network in clear text");
    tracing::info!(%addr, service = %args.token_service, issuer = %args.token_issuer, "token service listening");
    axum::serve(
        listener,
        router(service).into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(crate::serve::shutdown_signal())
    .await?;
    tracing::info!("token service stopped");
    Ok(())
}
