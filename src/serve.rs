//! Runs the services: binds sockets, opens the store, starts background
//! housekeeping and shuts down cleanly on SIGTERM or SIGINT.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_registry::storage::FsStore;
use berth_registry::{Registry, RegistryConfig};
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

    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    match args.auth {
        AuthMode::None => tracing::warn!(
            %addr,
            "AUTHENTICATION IS DISABLED (--auth none): anyone who can reach this address can push, pull and delete"
        ),
    }
    match args.tls {
        TlsMode::Off => tracing::warn!(%addr, "TLS is off (--tls off): traffic is plain HTTP"),
    }
    tracing::info!(%addr, data_dir = %args.data_dir.display(), "registry listening");

    tokio::spawn(janitor(registry.clone()));
    axum::serve(listener, berth_registry::router(registry))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    tracing::info!("registry stopped");
    Ok(())
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
