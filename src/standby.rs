//! One writer per data directory: the lock, the standby that waits for it,
//! and the life of a server process around them ([`run`]).
//!
//! - A server holds an exclusive lock (`flock(2)`, through std's
//!   `File::lock`) on `<data_dir>/berth.lock` for as long as it lives. The
//!   kernel releases it when the process ends, however it ends, SIGKILL
//!   included; berth never releases it earlier, so no request cut short by
//!   the shutdown grace can still be writing when another instance starts.
//! - A second instance on the same directory finds the lock held and
//!   stands by. It binds its listeners and answers `GET /healthz` 200 `ok`,
//!   `GET /readyz` 503 `standby`, and everything else 503 in the registry's
//!   error format (`UNAVAILABLE`). It writes nothing in the data directory:
//!   it opens the existing lock file, and reads the certificate if there is
//!   one (else it serves a temporary one made in memory, see
//!   [`standby_certificate`]). Before it stands by it makes what needs no
//!   writing (the local backend's dummy password hash, the certificate).
//! - A thread blocks in `lock()`; the kernel wakes it as soon as the holder
//!   is gone, without polling. The process then does what an instance that
//!   found the lock free does at once: sets up the certificate, keys,
//!   users and store (everything that writes), and serves. The listeners
//!   stay bound: each is served by a [`Gate`], which dispatches to the
//!   standby's answers until the real router is set, then to that router
//!   (an atomic load and an `Arc` clone per request: some tens of
//!   nanoseconds, see the ignored test `gate_overhead`). `/readyz` becomes
//!   200 `ready`.
//! - SIGTERM or SIGINT stops accepting, lets requests in flight finish for
//!   up to `server.shutdown_grace` seconds, and exits 0 (after the grace,
//!   with a warning); a standby simply exits 0.

use std::convert::Infallible;
use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::Router;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tower::ServiceExt;
use tower::util::Oneshot;

use crate::config::{Config, TlsMode};
use crate::exit::{Exit, ExitKind};
use crate::pidfile::{self, PidFile};
use crate::serve::{Shutdown, serve_router};
use crate::tls;

/// The lock file's name in the data directory.
pub const LOCK_FILE: &str = "berth.lock";

/// A listener of a server: its name in the log and its address.
#[derive(Clone, Copy, Debug)]
pub struct Listen {
    /// `registry` or `token service`: the log says `<name> listening
    /// addr=...` once serving, `<name> standby addr=...` while standing by.
    pub name: &'static str,
    pub addr: SocketAddr,
}

/// What a server serves once it holds the lock.
pub struct Active {
    /// One router per [`Listen`], in the same order.
    pub routers: Vec<Router>,
    /// The certificate, with `tls.mode = "on"`.
    pub certificate: Option<Arc<CertifiedKey>>,
    /// Logs what the server serves; called once the routers answer.
    pub announce: Box<dyn FnOnce() + Send>,
}

/// Runs a server: binds `listen`, takes the data directory's lock (or
/// stands by until it can), calls `activate` with the bound addresses once
/// it holds the lock, serves what it returns until SIGTERM or SIGINT, and
/// writes the pid file meanwhile. `role` names the command in the lock file
/// (`berth serve`).
pub async fn run<F, Fut>(
    cfg: &Config,
    role: &str,
    listen: &[Listen],
    activate: F,
) -> anyhow::Result<()>
where
    F: FnOnce(Vec<SocketAddr>) -> Fut,
    Fut: Future<Output = anyhow::Result<Active>>,
{
    let shutdown = Shutdown::on_signals();
    if let Some(path) = &cfg.server.pid_file {
        pidfile::check(path)?;
    }
    let lock = DataLock::open(&cfg.data_dir)?;
    let mut listeners = Vec::new();
    for l in listen {
        listeners.push(
            crate::serve::bind(l.addr)
                .await
                .exit_with(Exit::Unavailable)?,
        );
    }
    let addrs = listeners
        .iter()
        .map(TcpListener::local_addr)
        .collect::<Result<Vec<_>, _>>()
        .exit_with(Exit::Unavailable)?;
    let gates: Vec<Gate> = listen.iter().map(|_| Gate::new(&cfg.data_dir)).collect();
    let grace = Duration::from_secs(cfg.server.shutdown_grace);

    let mut pid_file = None;
    let mut standby = None;
    let held = match lock.try_acquire(role)? {
        Attempt::Held(held) => held,
        Attempt::Busy(lock) => {
            let slot = match cfg.tls.mode {
                TlsMode::Off => None,
                TlsMode::On => Some(tls::CertSlot::new(standby_certificate(cfg)?)),
            };
            let servers = spawn_servers(listeners, slot.clone(), &gates, &shutdown)?;
            listeners = Vec::new();
            if let Some(path) = &cfg.server.pid_file {
                pid_file = Some(PidFile::write(path)?);
            }
            tracing::info!(
                data_dir = %cfg.data_dir.display(),
                holder = lock.holder().as_deref().unwrap_or("unknown"),
                "another berth instance holds the data directory: standing by until it releases it"
            );
            for (l, addr) in listen.iter().zip(&addrs) {
                tracing::info!(addr = %addr, "{} standby", l.name);
            }
            let since = Instant::now();
            let held = tokio::select! {
                held = lock.acquire(role) => held?,
                () = shutdown.wait() => {
                    finish(servers, grace).await?;
                    tracing::info!("stopped while standing by");
                    return Ok(());
                }
            };
            tracing::info!(
                waited_ms = since.elapsed().as_millis() as u64,
                "the lock is free: taking over"
            );
            standby = Some((servers, slot));
            held
        }
    };
    let taking_over = Instant::now();
    let active = activate(addrs).await?;
    anyhow::ensure!(
        active.routers.len() == gates.len(),
        "internal: {} routers for {} listeners",
        active.routers.len(),
        gates.len()
    );
    let servers = match standby {
        Some((servers, slot)) => {
            if let (Some(slot), Some(certificate)) = (slot, active.certificate) {
                slot.set(certificate);
            }
            for (gate, router) in gates.iter().zip(active.routers) {
                gate.activate(router);
            }
            tracing::info!(
                ms = taking_over.elapsed().as_millis() as u64,
                "took over: serving"
            );
            servers
        }
        None => {
            for (gate, router) in gates.iter().zip(active.routers) {
                gate.activate(router);
            }
            let slot = active.certificate.map(tls::CertSlot::new);
            spawn_servers(listeners, slot, &gates, &shutdown)?
        }
    };
    if pid_file.is_none()
        && let Some(path) = &cfg.server.pid_file
    {
        pid_file = Some(PidFile::write(path)?);
    }
    (active.announce)();
    held.keep_until_exit();
    shutdown.wait().await;
    finish(servers, grace).await?;
    tracing::info!("stopped");
    drop(pid_file);
    Ok(())
}

/// Serves each gate on its listener, over TLS with the certificate in
/// `slot` if there is one, until `shutdown`.
fn spawn_servers(
    listeners: Vec<TcpListener>,
    slot: Option<Arc<tls::CertSlot>>,
    gates: &[Gate],
    shutdown: &Shutdown,
) -> anyhow::Result<Vec<JoinHandle<std::io::Result<()>>>> {
    let config = slot
        .map(tls::server_config_with)
        .transpose()
        .exit_with(Exit::Internal)?;
    Ok(listeners
        .into_iter()
        .zip(gates)
        .map(|(listener, gate)| {
            tokio::spawn(serve_router(
                listener,
                config.clone(),
                gate.clone(),
                shutdown.wait(),
            ))
        })
        .collect())
}

/// Waits for the servers, which stop accepting at the shutdown and finish
/// the requests in flight, for at most `grace`.
async fn finish(
    servers: Vec<JoinHandle<std::io::Result<()>>>,
    grace: Duration,
) -> anyhow::Result<()> {
    let all = async {
        for server in servers {
            server
                .await
                .context("a server task failed")
                .exit_with(Exit::Internal)?
                .context("a server failed")
                .exit_with(Exit::Internal)?;
        }
        anyhow::Ok(())
    };
    match tokio::time::timeout(grace, all).await {
        Ok(result) => result,
        Err(_) => {
            tracing::warn!(
                grace_s = grace.as_secs(),
                "requests still in flight after the shutdown grace (server.shutdown_grace): exiting anyway"
            );
            Ok(())
        }
    }
}

/// The certificate a standby serves, read-only: the configured one, else
/// the one berth generated in `<data_dir>/tls` if both its files are there
/// and load, else a temporary self-signed one made in memory (the instance
/// holding the directory is still creating it; the standby cannot write
/// it). The real certificate replaces it at the takeover.
pub fn standby_certificate(cfg: &Config) -> anyhow::Result<Arc<CertifiedKey>> {
    if let (Some(cert), Some(key)) = (&cfg.tls.cert_file, &cfg.tls.key_file) {
        return tls::certified_key(cert, key).exit_with(Exit::Config);
    }
    let dir = cfg.data_dir.join("tls");
    let (cert, key) = (dir.join("server.crt"), dir.join("server.key"));
    if cert.exists() && key.exists() {
        match tls::certified_key(&cert, &key) {
            Ok(certified) => return Ok(certified),
            Err(e) => tracing::warn!(
                error = format!("{e:#}"),
                "cannot use the data directory's certificate while standing by"
            ),
        }
    }
    tracing::info!("no certificate to read yet: standing by with a temporary self-signed one");
    tls::ephemeral_certified_key().exit_with(Exit::Internal)
}

/// The lock file, open; not yet locked.
#[derive(Debug)]
pub struct DataLock {
    file: File,
    path: PathBuf,
}

/// The outcome of [`DataLock::try_acquire`].
#[derive(Debug)]
pub enum Attempt {
    /// This process holds the lock.
    Held(HeldLock),
    /// Another process holds it.
    Busy(DataLock),
}

/// The lock, held.
#[derive(Debug)]
pub struct HeldLock {
    file: File,
}

impl DataLock {
    /// Opens `<data_dir>/berth.lock`, creating the directory (mode 0700)
    /// and the file if missing. An existing file is neither truncated nor
    /// written.
    pub fn open(data_dir: &Path) -> anyhow::Result<DataLock> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .with_context(|| format!("cannot create the data directory {}", data_dir.display()))
            .exit_with(Exit::CantCreate)?;
        // A data directory made just now must survive a power loss with the
        // writes acknowledged in it: its entry in the parent is synced too
        // (cheap, once per start; harmless when it existed before).
        let parent = match data_dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::File::open(parent)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("cannot sync {}", parent.display()))
            .exit_with(Exit::Io)?;
        let path = data_dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot open the lock file {}", path.display()))
            .exit_with(Exit::CantCreate)?;
        Ok(DataLock { file, path })
    }

    /// Takes the lock if it is free.
    pub fn try_acquire(self, role: &str) -> anyhow::Result<Attempt> {
        match self.file.try_lock() {
            Ok(()) => Ok(Attempt::Held(HeldLock::new(self.file, role))),
            Err(TryLockError::WouldBlock) => Ok(Attempt::Busy(self)),
            Err(TryLockError::Error(e)) => Err(e)
                .with_context(|| format!("cannot lock {}", self.path.display()))
                .exit_with(Exit::Io),
        }
    }

    /// Who holds the lock, as the holder wrote it (`pid 123 (berth serve)`).
    pub fn holder(&self) -> Option<String> {
        let mut buf = [0u8; 256];
        let n = self.file.read_at(&mut buf, 0).ok()?;
        let text = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
        (!text.is_empty()).then_some(text)
    }

    /// Waits for the lock: a thread blocks in `flock`, which the kernel
    /// wakes as soon as the holder's descriptor closes (its process ended).
    pub async fn acquire(self, role: &str) -> anyhow::Result<HeldLock> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let DataLock { file, path } = self;
        std::thread::Builder::new()
            .name("berth-lock".into())
            .spawn(move || {
                let locked = file.lock().map(|()| file);
                // Nobody waits any more if the process is stopping.
                let _ = tx.send(locked);
            })
            .context("cannot start the lock thread")
            .exit_with(Exit::Internal)?;
        let file = rx
            .await
            .context("the lock thread ended")
            .exit_with(Exit::Internal)?
            .with_context(|| format!("cannot lock {}", path.display()))
            .exit_with(Exit::Io)?;
        Ok(HeldLock::new(file, role))
    }
}

impl HeldLock {
    /// The lock, with who holds it written into the file (for the log of a
    /// standby; nothing depends on it).
    fn new(file: File, role: &str) -> HeldLock {
        let text = format!("pid {} ({role})\n", std::process::id());
        let written = file
            .set_len(0)
            .and_then(|()| (&file).write_all(text.as_bytes()));
        if let Err(e) = written {
            tracing::debug!(error = %e, "cannot note the holder in the lock file");
        }
        HeldLock { file }
    }

    /// Keeps the lock until the process exits: the kernel releases it then,
    /// after every thread (blocking writes cut short by the shutdown grace
    /// included) is gone.
    pub fn keep_until_exit(self) {
        static HELD: OnceLock<File> = OnceLock::new();
        let _ = HELD.set(self.file);
    }
}

/// The service behind a listener: the standby's answers until
/// [`Gate::activate`] sets the real router, then that router, with
/// `/readyz` added.
#[derive(Clone)]
pub struct Gate(Arc<GateState>);

struct GateState {
    active: OnceLock<Router>,
    standby: Router,
}

impl Gate {
    /// A gate answering as a standby for `data_dir`.
    pub fn new(data_dir: &Path) -> Gate {
        let message = format!(
            "standby: another berth instance holds {}",
            data_dir.display()
        );
        let body = serde_json::json!({
            "errors": [{"code": "UNAVAILABLE", "message": message}]
        })
        .to_string();
        let standby = Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/readyz",
                get(|| async { (StatusCode::SERVICE_UNAVAILABLE, "standby") }),
            )
            .fallback(move || {
                let body = body.clone();
                async move {
                    (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [
                            (
                                header::CONTENT_TYPE,
                                HeaderValue::from_static("application/json"),
                            ),
                            (header::RETRY_AFTER, HeaderValue::from_static("1")),
                        ],
                        body,
                    )
                        .into_response()
                }
            });
        Gate(Arc::new(GateState {
            active: OnceLock::new(),
            standby,
        }))
    }

    /// Serves `router` (and `/readyz` 200 `ready`) from now on.
    pub fn activate(&self, router: Router) {
        let router = router.route("/readyz", get(|| async { "ready" }));
        if self.0.active.set(router).is_err() {
            tracing::warn!("internal: a gate was activated twice");
        }
    }
}

impl tower::Service<Request> for Gate {
    type Response = Response;
    type Error = Infallible;
    type Future = Oneshot<Router, Request>;

    fn poll_ready(&mut self, _cx: &mut TaskContext<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request) -> Self::Future {
        let router = self.0.active.get().unwrap_or(&self.0.standby).clone();
        router.oneshot(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use http_body_util::BodyExt;

    async fn fetch(router: &Router, path: &str) -> (StatusCode, String) {
        let response = router
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_gate_answers_as_a_standby_then_as_the_router() {
        let gate = Gate::new(Path::new("/srv/berth"));
        let front = Router::new().fallback_service(gate.clone());
        assert_eq!(
            fetch(&front, "/healthz").await,
            (StatusCode::OK, "ok".into())
        );
        assert_eq!(
            fetch(&front, "/readyz").await,
            (StatusCode::SERVICE_UNAVAILABLE, "standby".into())
        );
        let (status, body) = fetch(&front, "/v2/").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["errors"][0]["code"], "UNAVAILABLE");
        assert_eq!(
            json["errors"][0]["message"],
            "standby: another berth instance holds /srv/berth"
        );

        gate.activate(Router::new().route("/v2/", get(|| async { "{}" })));
        assert_eq!(
            fetch(&front, "/readyz").await,
            (StatusCode::OK, "ready".into())
        );
        assert_eq!(fetch(&front, "/v2/").await, (StatusCode::OK, "{}".into()));
        assert_eq!(fetch(&front, "/nope").await.0, StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_lock_is_exclusive_and_a_waiter_gets_it_when_the_holder_goes() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let Attempt::Held(held) = DataLock::open(&data).unwrap().try_acquire("first").unwrap()
        else {
            panic!("a fresh directory's lock is free");
        };
        let second = DataLock::open(&data).unwrap();
        let Attempt::Busy(second) = second.try_acquire("second").unwrap() else {
            panic!("the lock is held");
        };
        assert_eq!(
            second.holder().unwrap(),
            format!("pid {} (first)", std::process::id())
        );
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let waiter = runtime.spawn(async move { second.acquire("second").await });
        std::thread::sleep(Duration::from_millis(100));
        assert!(!waiter.is_finished(), "waits while the lock is held");
        let released = Instant::now();
        drop(held);
        let held = runtime.block_on(waiter).unwrap().unwrap();
        assert!(released.elapsed() < Duration::from_secs(1));
        let third = DataLock::open(&data).unwrap();
        assert!(matches!(
            third.try_acquire("third").unwrap(),
            Attempt::Busy(_)
        ));
        drop(held);
    }

    #[tokio::test]
    #[ignore = "a measurement: cargo test -p berth --bin berth gate_overhead -- --ignored --nocapture"]
    async fn gate_overhead() {
        let inner = Router::new().route("/v2/", get(|| async { "{}" }));
        let gate = Gate::new(Path::new("/d"));
        gate.activate(inner.clone());
        let n = 500_000u32;
        async fn time<S>(name: &str, service: &S, n: u32)
        where
            S: tower::Service<Request, Response = Response, Error = Infallible> + Clone,
        {
            let t = Instant::now();
            for _ in 0..n {
                let response = service
                    .clone()
                    .oneshot(Request::get("/v2/").body(Body::empty()).unwrap())
                    .await
                    .unwrap();
                assert_eq!(response.status(), StatusCode::OK);
            }
            println!(
                "{name}: {:.0} ns per request",
                t.elapsed().as_nanos() as f64 / f64::from(n)
            );
        }
        for _ in 0..3 {
            time("router", &inner, n).await;
            time("gate + router", &gate, n).await;
        }
    }
}
