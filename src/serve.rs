//! Runs the services: sets up TLS, opens the store, starts background
//! housekeeping, and serves; [`crate::standby::run`] binds the sockets,
//! holds the data directory's lock (standing by while another instance
//! holds it) and shuts down cleanly on SIGTERM or SIGINT. `berth serve`
//! runs the registry and the token service in one process; `berth registry
//! serve` runs the registry alone.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::extract::Request;
use axum::response::Response;
use berth_identity::keys::KeyStore;
use berth_registry::auth::{KeySet, Verifier};
use berth_registry::storage::FsStore;
use berth_registry::{KeyRefetch, Realm, Registry, RegistryConfig, TokenAuth};
use tokio::net::TcpListener;

use crate::config::{AuthMode, Config, TlsMode};
use crate::exit::{Exit, ExitKind};
use crate::standby::{self, Active, Listen};
use crate::tls;

/// `berth serve`: the registry and the token service, one process.
pub async fn all(cfg: Config) -> anyhow::Result<()> {
    let prepared = crate::identity::prepare(&cfg);
    // The registry last: its line in the log says the process is up.
    let listen = [
        Listen {
            name: "token service",
            addr: cfg.identity.listen,
        },
        Listen {
            name: "registry",
            addr: cfg.registry.listen,
        },
    ];
    standby::run(&cfg, "berth serve", &listen, |addrs| {
        activate_all(&cfg, addrs, prepared)
    })
    .await
}

/// `berth serve` once it holds the data directory.
async fn activate_all(
    cfg: &Config,
    addrs: Vec<SocketAddr>,
    prepared: crate::identity::Prepared,
) -> anyhow::Result<Active> {
    let [identity_addr, registry_addr] = addrs[..] else {
        anyhow::bail!("internal: two listeners expected");
    };
    let tls = tls_setup(cfg)?;
    let (service, keys) = crate::identity::token_service(cfg, prepared)
        .await
        .exit_with(Exit::Io)?;
    let registry = open_registry(cfg).await?;
    let auth = match cfg.registry.auth {
        AuthMode::None => None,
        AuthMode::Token => {
            Some(in_process_auth(cfg, keys, identity_addr.port()).exit_with(Exit::Io)?)
        }
    };
    tokio::spawn(janitor(registry.clone()));
    crate::gc::schedule(cfg, &registry);
    let routers = vec![
        berth_identity::http::router(service),
        berth_registry::router_with_auth(registry, auth.clone()),
    ];
    let certificate = tls.as_ref().map(|t| t.certificate.clone());
    let cfg = cfg.clone();
    let announce = move || {
        announce_auth(&cfg, registry_addr, auth.as_deref());
        if let Some(tls) = &tls {
            tls.announce(&cfg, &[registry_addr.port(), identity_addr.port()]);
        }
        tracing::info!(addr = %identity_addr, service = %cfg.token.service, issuer = %cfg.token.issuer, "token service listening");
        tracing::info!(addr = %registry_addr, data_dir = %cfg.data_dir.display(), "registry listening");
    };
    Ok(Active {
        routers,
        certificate,
        announce: Box::new(announce),
    })
}

/// `berth registry serve`: the registry alone; with `registry.auth =
/// "token"` it trusts the key set at `token.jwks_url` or `token.jwks_file`.
pub async fn registry_alone(cfg: Config) -> anyhow::Result<()> {
    let listen = [Listen {
        name: "registry",
        addr: cfg.registry.listen,
    }];
    standby::run(&cfg, "berth registry serve", &listen, |addrs| {
        activate_registry(&cfg, addrs)
    })
    .await
}

/// `berth registry serve` once it holds the data directory.
async fn activate_registry(cfg: &Config, addrs: Vec<SocketAddr>) -> anyhow::Result<Active> {
    let [addr] = addrs[..] else {
        anyhow::bail!("internal: one listener expected");
    };
    let tls = tls_setup(cfg)?;
    let registry = open_registry(cfg).await?;
    let auth = match cfg.registry.auth {
        AuthMode::None => None,
        AuthMode::Token => Some(remote_auth(cfg).await?),
    };
    tokio::spawn(janitor(registry.clone()));
    crate::gc::schedule(cfg, &registry);
    let routers = vec![berth_registry::router_with_auth(registry, auth.clone())];
    let certificate = tls.as_ref().map(|t| t.certificate.clone());
    let cfg = cfg.clone();
    let announce = move || {
        announce_auth(&cfg, addr, auth.as_deref());
        if let Some(tls) = &tls {
            tls.announce(&cfg, &[addr.port()]);
        }
        tracing::info!(%addr, data_dir = %cfg.data_dir.display(), "registry listening");
    };
    Ok(Active {
        routers,
        certificate,
        announce: Box::new(announce),
    })
}

async fn open_registry(cfg: &Config) -> anyhow::Result<Arc<Registry>> {
    let data_dir = cfg.data_dir.clone();
    let store = tokio::task::spawn_blocking(move || FsStore::open(data_dir))
        .await
        .exit_with(Exit::Internal)?
        .with_context(|| format!("cannot open the data directory {}", cfg.data_dir.display()))
        .exit_with(Exit::Io)?;
    let config = RegistryConfig {
        max_manifest_size: cfg.registry.max_manifest_size,
        upload_max_age: Duration::from_secs(cfg.registry.upload_max_age),
    };
    Ok(Arc::new(Registry::new(Arc::new(store), config)))
}

fn announce_auth(cfg: &Config, addr: SocketAddr, auth: Option<&TokenAuth>) {
    match auth {
        None => tracing::warn!(
            %addr,
            "AUTHENTICATION IS DISABLED (registry.auth = none): anyone who can reach this address can push, pull and delete"
        ),
        Some(auth) => tracing::info!(
            %addr,
            realm = ?auth.realm(),
            service = %cfg.token.service,
            issuer = %cfg.token.issuer,
            "token authentication enabled"
        ),
    }
}

pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))
}

/// Where challenges send clients: `token.realm`, or the host the client
/// used on the token service's port.
fn realm(cfg: &Config, identity_port: u16) -> Realm {
    match &cfg.token.realm {
        Some(url) => Realm::Fixed(url.clone()),
        None => Realm::SameHost {
            scheme: match cfg.tls.mode {
                TlsMode::On => "https",
                TlsMode::Off => "http",
            },
            port: identity_port,
            fallback: cfg
                .tls
                .names
                .first()
                .cloned()
                .unwrap_or_else(|| tls::hostname().unwrap_or_else(|| "localhost".into())),
        },
    }
}

/// The all-in-one registry trusts the token service's keys directly.
fn in_process_auth(
    cfg: &Config,
    keys: Arc<KeyStore>,
    identity_port: u16,
) -> anyhow::Result<Arc<TokenAuth>> {
    let set = KeySet::from_jwks(&keys.jwks()).context("unusable signing keys")?;
    let verifier = Verifier::new(set, cfg.token.issuer.clone(), cfg.token.service.clone());
    // Keys rotated by `berth keys rotate` are read from the data directory.
    let refetch: KeyRefetch = Arc::new(move || {
        let keys = keys.clone();
        Box::pin(async move {
            if let Err(e) = keys.reload() {
                tracing::warn!(error = %e, "cannot reload the signing keys");
            }
            KeySet::from_jwks(&keys.jwks()).ok()
        })
    });
    Ok(Arc::new(
        TokenAuth::new(
            verifier,
            realm(cfg, identity_port),
            cfg.token.service.clone(),
        )
        .with_refetch(refetch),
    ))
}

/// Where the token service's key set comes from.
#[derive(Clone, Debug)]
enum JwksSource {
    Url(String, reqwest::Client),
    File(PathBuf),
}

impl JwksSource {
    async fn load(&self) -> anyhow::Result<KeySet> {
        let jwks: serde_json::Value = match self {
            JwksSource::Url(url, client) => client
                .get(url)
                .send()
                .await
                .and_then(reqwest::Response::error_for_status)
                .with_context(|| format!("cannot fetch the JWKS from {url}"))?
                .json()
                .await
                .with_context(|| format!("the JWKS at {url} is not JSON"))?,
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
            JwksSource::Url(url, _) => f.write_str(url),
            JwksSource::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// A client for the JWKS URL: the system's roots, plus berth's own CA
/// when the data directory has one (a token service with the generated
/// certificate).
fn jwks_client(cfg: &Config) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(10));
    let ca = cfg.data_dir.join("tls").join("ca.crt");
    if let Ok(pem) = std::fs::read(&ca) {
        let cert = reqwest::Certificate::from_pem(&pem)
            .with_context(|| format!("cannot use {}", ca.display()))?;
        builder = builder.add_root_certificate(cert);
    }
    Ok(builder.build()?)
}

/// `berth registry serve` with tokens: the verifier over the JWKS (read
/// now; again when a token names an unknown key).
async fn remote_auth(cfg: &Config) -> anyhow::Result<Arc<TokenAuth>> {
    let source = match (&cfg.token.jwks_url, &cfg.token.jwks_file) {
        (Some(url), None) => {
            JwksSource::Url(url.clone(), jwks_client(cfg).exit_with(Exit::Config)?)
        }
        (None, Some(path)) => JwksSource::File(path.clone()),
        _ => {
            return Err(anyhow::anyhow!(
                "the registry alone with registry.auth = token needs one of token.jwks_url \
                 (--token-jwks-url, BERTH_TOKEN_JWKS_URL) or token.jwks_file (--token-jwks-file, \
                 BERTH_TOKEN_JWKS_FILE)"
            ))
            .exit_with(Exit::Config);
        }
    };
    let keys = source.load().await.exit_with(match source {
        JwksSource::Url(..) => Exit::Unavailable,
        JwksSource::File(_) => Exit::Config,
    })?;
    tracing::info!(source = %source, keys = keys.len(), "loaded the token key set");
    let verifier = Verifier::new(keys, cfg.token.issuer.clone(), cfg.token.service.clone());
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
        TokenAuth::new(
            verifier,
            realm(cfg, cfg.identity.listen.port()),
            cfg.token.service.clone(),
        )
        .with_refetch(refetch),
    ))
}

/// TLS as configured: the certificate to serve, and the CA to tell users
/// about when berth generated it.
pub struct TlsSetup {
    pub certificate: Arc<rustls::sign::CertifiedKey>,
    generated: Option<tls::GeneratedTls>,
}

impl TlsSetup {
    /// Says where the CA is; on the start that created it, with the
    /// commands that make clients trust it.
    pub fn announce(&self, cfg: &Config, ports: &[u16]) {
        let Some(generated) = &self.generated else {
            return;
        };
        let ca = &generated.ca_cert;
        tracing::info!(
            ca = %ca.display(),
            names = %generated.names.join(","),
            not_after = %generated.not_after,
            issued_now = generated.cert_issued,
            "serving the certificate generated by berth"
        );
        if generated.ca_created {
            let host = cfg
                .tls
                .names
                .first()
                .cloned()
                .or_else(tls::hostname)
                .unwrap_or_else(|| "localhost".into());
            eprintln!("{}", tls::trust_instructions(ca, &host, ports));
        }
    }
}

/// `tls.mode = "on"`: the configured certificate, or the generated one.
pub fn tls_setup(cfg: &Config) -> anyhow::Result<Option<TlsSetup>> {
    if cfg.tls.mode == TlsMode::Off {
        tracing::warn!(
            "TLS is off (tls.mode = off): traffic, passwords and tokens included, is plain HTTP"
        );
        return Ok(None);
    }
    let (certificate, generated) = match (&cfg.tls.cert_file, &cfg.tls.key_file) {
        (Some(cert), Some(key)) => (tls::certified_key(cert, key).exit_with(Exit::Config)?, None),
        _ => {
            let names = tls::default_names(&cfg.tls.names);
            let dir = cfg.data_dir.join("tls");
            let generated = tls::ensure_self_signed(&dir, &names)
                .with_context(|| format!("cannot set up the certificate in {}", dir.display()))
                .exit_with(Exit::Io)?;
            let certificate =
                tls::certified_key(&generated.cert, &generated.key).exit_with(Exit::Io)?;
            (certificate, Some(generated))
        }
    };
    Ok(Some(TlsSetup {
        certificate,
        generated,
    }))
}

/// Serves `app` (a `Router`, or a service like one such as
/// [`crate::standby::Gate`]) on `listener`, over TLS when `tls` is given,
/// until `shutdown` completes; in-flight requests finish first.
pub async fn serve_router<S>(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: S,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    S: tower::Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    let make = axum::ServiceExt::<Request>::into_make_service_with_connect_info::<SocketAddr>(app);
    match tls {
        None => {
            axum::serve(tls::tcp_nodelay_listener(listener), make)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(config) => {
            axum::serve(
                tls::TlsListener::new(listener, config).with_connect_info(),
                make,
            )
            .with_graceful_shutdown(shutdown)
            .await
        }
    }
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

/// One shutdown for every server of the process: the first SIGTERM or
/// SIGINT stops them all.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

impl Shutdown {
    pub fn on_signals() -> Shutdown {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let signal = shutdown_signal();
        tokio::spawn(async move {
            signal.await;
            let _ = tx.send(true);
        });
        Shutdown(rx)
    }

    /// Completes when the process is asked to stop.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means the sender is gone: stop as well.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Installs the handlers now (a signal that comes before the returned
/// future is polled is not lost) and completes on the first SIGTERM or
/// SIGINT.
fn shutdown_signal() -> impl Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let handlers = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    );
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::warn!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT: shutting down"),
        }
    }
}
