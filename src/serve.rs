//! Runs the services: binds sockets, opens the store, starts background
//! housekeeping and shuts down cleanly on SIGTERM or SIGINT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_registry::auth::{KeySet, Verifier};
use berth_registry::storage::FsStore;
use berth_registry::{KeyRefetch, Registry, RegistryConfig, TokenAuth};
use tokio::net::TcpListener;

use crate::cli::{AuthMode, RegistryServe, TlsMode};

pub async fn registry(args: RegistryServe) -> anyhow::Result<()> {
    let data_dir = args.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || FsStore::open(data_dir))
        .await?
        .with_context(|| format!("cannot open the data directory {}", args.data_dir.display()))?;
    let config = RegistryConfig {
        max_manifest_size: args.max_manifest_size,
        upload_max_age: Duration::from_secs(args.upload_max_age),
    };
    let registry = Arc::new(Registry::new(Arc::new(store), config));
    let auth = match args.auth {
        AuthMode::None => None,
        AuthMode::Token => Some(token_auth(&args).await?),
    };

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    match args.auth {
        AuthMode::None => tracing::warn!(
            %addr,
            "AUTHENTICATION IS DISABLED (--auth none): anyone who can reach this address can push, pull and delete"
        ),
        AuthMode::Token => tracing::info!(
            %addr,
            realm = args.token_realm.as_deref().unwrap_or(""),
            service = %args.token_service,
            issuer = %args.token_issuer,
            "token authentication enabled"
        ),
    }
    match args.tls {
        TlsMode::Off => tracing::warn!(%addr, "TLS is off (--tls off): traffic is plain HTTP"),
    }
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "registry listening");

    tokio::spawn(janitor(registry.clone()));
    axum::serve(listener, berth_registry::router_with_auth(registry, auth))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("registry stopped");
    Ok(())
}

/// Where the token service's key set comes from.
#[derive(Clone, Debug)]
enum JwksSource {
    Url(String),
    File(PathBuf),
}

impl JwksSource {
    async fn load(&self) -> anyhow::Result<KeySet> {
        let jwks: serde_json::Value = match self {
            JwksSource::Url(url) => {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(10))
                    .build()?;
                client
                    .get(url)
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .with_context(|| format!("cannot fetch the JWKS from {url}"))?
                    .json()
                    .await
                    .with_context(|| format!("the JWKS at {url} is not JSON"))?
            }
            JwksSource::File(path) => {
                let text = tokio::fs::read(path)
                    .await
                    .with_context(|| format!("cannot read the JWKS file {}", path.display()))?;
                serde_json::from_slice(&text)
                    .with_context(|| format!("the JWKS file {} is not JSON", path.display()))?
            }
        };
        KeySet::from_jwks(&jwks).with_context(|| format!("unusable JWKS from {self}"))
    }
}

impl std::fmt::Display for JwksSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwksSource::Url(url) => f.write_str(url),
            JwksSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// `--auth token`: the verifier over the JWKS (fetched now; refetched when
/// a token names an unknown key), the realm and the service.
async fn token_auth(args: &RegistryServe) -> anyhow::Result<Arc<TokenAuth>> {
    let realm = args
        .token_realm
        .clone()
        .context("--auth token needs --token-realm (BERTH_TOKEN_REALM)")?;
    let source = match (&args.token_jwks_url, &args.token_jwks_file) {
        (Some(url), None) => JwksSource::Url(url.clone()),
        (None, Some(path)) => JwksSource::File(path.clone()),
        _ => anyhow::bail!(
            "--auth token needs one of --token-jwks-url (BERTH_TOKEN_JWKS_URL) \
             or --token-jwks-file (BERTH_TOKEN_JWKS_FILE)"
        ),
    };
    let keys = source.load().await?;
    tracing::info!(source = %source, keys = keys.len(), "loaded the token key set");
    let verifier = Verifier::new(keys, args.token_issuer.clone(), args.token_service.clone());
    let refetch: KeyRefetch = Arc::new(move || {
        let source = source.clone();
        Box::pin(async move {
            match source.load().await {
                Ok(keys) => Some(keys),
                Err(e) => {
                    tracing::warn!(error = format!("{e:#}"), "cannot refetch the token key set");
                    None
                }
            }
        })
    });
    Ok(Arc::new(
        TokenAuth::new(verifier, realm, args.token_service.clone()).with_refetch(refetch),
    ))
}

/// Removes stale upload sessions at start and then periodically.
async fn janitor(registry: Arc<Registry>) {
    let max_age = registry.config().upload_max_age;
    let period = (max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(600));
    loop {
        match registry.purge_uploads().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(purged = n, "removed stale upload sessions"),
            Err(e) => tracing::warn!(error = %e, "purging stale uploads failed"),
        }
        tokio::time::sleep(period).await;
    }
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
}
