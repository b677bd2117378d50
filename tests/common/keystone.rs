//! A real OpenStack Keystone (30.0.0, from `.keystone-venv/`, installed by
//! `scripts/install-keystone`) on an ephemeral loopback port, and an admin
//! client to populate it.
//!
//! Initialising a Keystone (`db_sync`, `fernet_setup`, `credential_setup`,
//! `bootstrap`) costs about 10 s, so it happens once into a template under
//! `CARGO_TARGET_TMPDIR`, keyed by a hash of the pins and this fixture's
//! configuration; every instance copies the database and key directories
//! and only starts gunicorn (about 2 s).
//!
//! Two ways to get one:
//! - [`Keystone::shared`]: one instance per test binary, for tests that use
//!   unique names ([`unique`]) and do not stop it. A static is never dropped,
//!   so gunicorn is tied to the test process with `PR_SET_PDEATHSIG`: it dies
//!   when the test binary exits, however it exits.
//! - [`Keystone::start`]: an instance of one's own, killed (its whole process
//!   group) when dropped or [`Keystone::stop`]ped.
//!
//! The admin client ([`Keystone::admin`]) is async (reqwest) and made per
//! test: a reqwest client must not outlive the tokio runtime it ran on.
//!
//! gunicorn runs one worker (the memory cache is per process) with four
//! threads, and the WSGI wrapper runs Keystone for one request at a time
//! (10-30 ms each): Keystone's SQLite transactions fail with "database is
//! locked" when two run at once (see [`WSGI`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};

/// The admin user bootstrap creates (domain `default`, project `admin`).
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PROJECT: &str = "admin";
pub const DEFAULT_DOMAIN_ID: &str = "default";
/// The default domain's name (its id is `default`).
pub const DEFAULT_DOMAIN_NAME: &str = "Default";

/// Bump to invalidate templates built by an older fixture.
const TEMPLATE_VERSION: &str = "3";

/// `keystone.conf`; `@DIR@` is the instance directory.
const CONF: &str = "\
[DEFAULT]
use_stderr = true
[database]
connection = sqlite:///@DIR@/keystone.db
[token]
provider = fernet
[fernet_tokens]
key_repository = @DIR@/fernet-keys
[fernet_receipts]
key_repository = @DIR@/fernet-keys
[credential]
key_repository = @DIR@/credential-keys
[identity]
password_hash_rounds = 4
[cache]
enabled = true
backend = dogpile.cache.memory
";

/// The WSGI module gunicorn serves. Keystone parses `sys.argv` with
/// oslo.config, so gunicorn's flags must go first. The worker asks to be
/// killed when the gunicorn master dies. Requests run one at a time:
/// Keystone's SQLite transactions read before they write (every first login
/// of a day writes `last_active_at`), and two at once fail with "database is
/// locked". The threads still read requests concurrently: gthread gives a
/// new connection's first bytes up to 5 s, and with one thread a client's
/// idle spare connection would stall every request for that long.
const WSGI: &str = "\
import ctypes, signal, sys, threading
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
sys.argv = sys.argv[:1]
from keystone.wsgi.api import application as keystone  # noqa: E402

_one_at_a_time = threading.Lock()


def application(environ, start_response):
    with _one_at_a_time:
        result = keystone(environ, start_response)
        try:
            return list(result)
        finally:
            if hasattr(result, 'close'):
                result.close()
";

/// Starts gunicorn in this Python process, which first asks to be killed
/// when the test process dies (`PR_SET_PDEATHSIG`; it is spawned by a thread
/// that lives as long as the process, see [`spawn`]).
const LAUNCH: &str = "\
import ctypes, os, signal, sys
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() != int(os.environ['BERTH_TEST_PID']):
    sys.exit('berth keystone fixture: the test process is gone')
from gunicorn.app.wsgiapp import run
sys.argv = ['gunicorn'] + sys.argv[1:]
sys.exit(run())
";

/// A running Keystone.
pub struct Keystone {
    /// `http://127.0.0.1:PORT` (no `/v3`).
    url: String,
    admin_password: String,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
    log: Arc<Mutex<Vec<String>>>,
}

/// The root of the virtualenv `scripts/install-keystone` makes.
fn venv() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join(".keystone-venv");
    assert!(
        venv.join("bin/gunicorn").exists() && venv.join("bin/keystone-manage").exists(),
        "no Keystone at {}: run scripts/install-keystone",
        venv.display()
    );
    venv
}

fn tmp_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

impl Keystone {
    /// One Keystone for the whole test binary, started on first use. Never
    /// stop it; use [`unique`] names so tests do not collide.
    pub fn shared() -> &'static Keystone {
        static SHARED: OnceLock<Keystone> = OnceLock::new();
        SHARED.get_or_init(Keystone::start)
    }

    /// A Keystone of one's own (about 2 s once the template exists),
    /// killed when dropped.
    pub fn start() -> Keystone {
        let template = template();
        sweep_stale_instances();
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let dir = tmp_root().join(format!(
            "keystone-run-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        make_private_dir(&dir);
        copy_state(&template.dir, &dir);
        write_conf(&dir);
        std::fs::write(dir.join("berth_keystone_wsgi.py"), WSGI).expect("write wsgi module");
        std::fs::write(dir.join("launch.py"), LAUNCH).expect("write launcher");

        let venv = venv();
        let mut cmd = Command::new(venv.join("bin/python"));
        cmd.arg(dir.join("launch.py"))
            .args([
                "--bind",
                "127.0.0.1:0",
                "--workers",
                "1",
                "--worker-class",
                "gthread",
                "--threads",
                "4",
                "--no-control-socket",
                "--graceful-timeout",
                "1",
                "--chdir",
            ])
            .arg(&dir)
            .arg("berth_keystone_wsgi:application")
            .env("OS_KEYSTONE_CONFIG_DIR", &dir)
            .env("BERTH_TEST_PID", std::process::id().to_string())
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = spawn(cmd);
        let stderr = child.stderr.take().expect("gunicorn stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let log2 = log.clone();
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .split("Listening at: http://127.0.0.1:")
                    .nth(1)
                    .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
                    .and_then(|p| p.parse::<u16>().ok())
                    && let Some(tx) = tx.take()
                {
                    let _ = tx.send(port);
                }
                let mut log = log2.lock().unwrap();
                if log.len() > 2000 {
                    log.drain(..1000);
                }
                log.push(line);
            }
        });
        let keystone = Keystone {
            url: String::new(),
            admin_password: template.admin_password.clone(),
            dir,
            child: Mutex::new(Some(child)),
            log,
        };
        let port = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(p) => p,
            Err(_) => panic!(
                "gunicorn did not report its port: {:?}",
                keystone.log.lock().unwrap()
            ),
        };
        let mut keystone = keystone;
        keystone.url = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http_get_ok(port, "/v3") {
            assert!(
                Instant::now() < deadline,
                "Keystone did not answer GET /v3: {:?}",
                keystone.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        keystone
    }

    /// `http://127.0.0.1:PORT`, what the authenticator is configured with.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its instance directory (in gunicorn's command line: what to look
    /// for when checking that it is gone).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `http://127.0.0.1:PORT/v3`
    pub fn v3(&self) -> String {
        format!("{}/v3", self.url)
    }

    /// The bootstrap admin: user `admin` in domain `default`, with `admin`
    /// on project `admin` and on the system.
    pub fn admin_credentials(&self) -> (&str, &str) {
        (ADMIN_USER, &self.admin_password)
    }

    /// The environment that has berth check passwords with this Keystone
    /// through the service account `svc`.
    pub fn berth_env<'a>(&'a self, svc: &'a UserLogin) -> [(&'static str, &'a str); 3] {
        [
            ("BERTH_KEYSTONE_URL", self.url()),
            ("BERTH_KEYSTONE_USERNAME", &svc.name),
            ("BERTH_KEYSTONE_PASSWORD", &svc.password),
        ]
    }

    /// An admin client (a fresh one per test: see the module doc).
    pub fn admin(&self) -> Admin {
        Admin::new(&self.v3(), &self.admin_password, self.log.clone())
    }

    /// What gunicorn and Keystone logged recently.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Kills gunicorn and its worker (the whole process group), now.
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            kill_group(child.id());
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Keystone {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            eprintln!(
                "Keystone at {} logged (last 60 lines):\n{}",
                self.url,
                log[log.len().saturating_sub(60)..].join("\n")
            );
        }
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// SIGKILL to the process group `pgid` (gunicorn is its group's leader).
fn kill_group(pgid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pgid}")])
        .stderr(Stdio::null())
        .status();
}

/// Spawns from a thread that lives as long as the process: the children's
/// `PR_SET_PDEATHSIG` fires when the thread that forked them ends, and test
/// threads (or tokio's blocking threads) end early.
fn spawn(cmd: Command) -> Child {
    type Job = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("keystone-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The senders live in a static: never reached, but park
                // rather than end the thread should it ever be.
                loop {
                    std::thread::park();
                }
            })
            .expect("spawner thread");
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    spawner
        .lock()
        .unwrap()
        .send((cmd, tx))
        .expect("spawner alive");
    rx.recv().expect("spawner reply").expect("spawn gunicorn")
}

/// A plain HTTP/1.0 GET; true on a 200.
fn http_get_ok(port: u16, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_secs(2),
    ) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") && &head[9..12] == b"200"
}

/// An initialised Keystone state (database, keys) to copy.
struct Template {
    dir: PathBuf,
    admin_password: String,
}

fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(|| {
        let constraints = std::fs::read(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/keystone-constraints.txt"),
        )
        .expect("read tests/keystone-constraints.txt");
        let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
        for part in [TEMPLATE_VERSION.as_bytes(), CONF.as_bytes(), &constraints] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let hash = hex::encode(&ctx.finish().as_ref()[..8]);
        let dir = tmp_root().join(format!("keystone-template-{hash}"));
        if !dir.join("ready").exists() {
            build_template(&dir);
        }
        let admin_password = std::fs::read_to_string(dir.join("admin-password"))
            .expect("read the template's admin password");
        Template {
            dir,
            admin_password,
        }
    })
}

/// Initialises a Keystone into `dir` (through a temporary sibling renamed
/// into place, so concurrent test binaries never see half a template).
fn build_template(dir: &Path) {
    let work = dir.with_extension(format!("tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    make_private_dir(&work);
    make_private_dir(&work.join("fernet-keys"));
    make_private_dir(&work.join("credential-keys"));
    write_conf(&work);
    let password: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();

    let venv = venv();
    let manage = |args: &[&str]| {
        let mut cmd = Command::new(venv.join("bin/keystone-manage"));
        cmd.arg("--config-file")
            .arg(work.join("keystone.conf"))
            .args(args)
            .env("OS_KEYSTONE_CONFIG_DIR", &work)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let user = whoami("-un");
    let group = whoami("-gn");
    // The key setups do not need the database: run them alongside.
    let keys: Vec<(String, Child)> = [["fernet_setup"], ["credential_setup"]]
        .iter()
        .map(|[what]| {
            let child = manage(&[what, "--keystone-user", &user, "--keystone-group", &group])
                .spawn()
                .expect("spawn keystone-manage");
            (what.to_string(), child)
        })
        .collect();
    run(manage(&["db_sync"]), "db_sync");
    run(
        manage(&[
            "bootstrap",
            "--bootstrap-password",
            &password,
            "--bootstrap-username",
            ADMIN_USER,
            "--bootstrap-project-name",
            ADMIN_PROJECT,
            "--bootstrap-region-id",
            "RegionOne",
        ]),
        "bootstrap",
    );
    for (what, child) in keys {
        let out = child.wait_with_output().expect("wait for keystone-manage");
        assert!(
            out.status.success(),
            "keystone-manage {what}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::write(work.join("admin-password"), &password).expect("write admin password");
    std::fs::write(work.join("ready"), b"").expect("write ready");
    if std::fs::rename(&work, dir).is_err() {
        // Another test binary finished first: use its template.
        let _ = std::fs::remove_dir_all(&work);
        assert!(
            dir.join("ready").exists(),
            "no template at {}",
            dir.display()
        );
    }
}

fn run(mut cmd: Command, what: &str) {
    let out = cmd.output().expect("run keystone-manage");
    assert!(
        out.status.success(),
        "keystone-manage {what}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn whoami(flag: &str) -> String {
    let out = Command::new("id").arg(flag).output().expect("run id");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn make_private_dir(dir: &Path) {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .expect("create private dir");
}

fn write_conf(dir: &Path) {
    let conf = CONF.replace("@DIR@", dir.to_str().expect("UTF-8 path"));
    std::fs::write(dir.join("keystone.conf"), conf).expect("write keystone.conf");
}

/// Copies the database and the key directories (modes kept).
fn copy_state(from: &Path, to: &Path) {
    std::fs::copy(from.join("keystone.db"), to.join("keystone.db")).expect("copy keystone.db");
    for keys in ["fernet-keys", "credential-keys"] {
        make_private_dir(&to.join(keys));
        for entry in std::fs::read_dir(from.join(keys)).expect("read key dir") {
            let entry = entry.expect("key dir entry");
            let dest = to.join(keys).join(entry.file_name());
            std::fs::copy(entry.path(), &dest).expect("copy key");
            std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o600))
                .expect("key mode");
        }
    }
}

/// Removes instance directories left by test processes that are gone (a
/// shared instance's directory is never dropped).
fn sweep_stale_instances() {
    let Ok(entries) = std::fs::read_dir(tmp_root()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("keystone-run-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// A name nobody else in this Keystone uses: `prefix-<random>`.
pub fn unique(prefix: &str) -> String {
    let suffix: String = rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(10)
        .map(char::from)
        .collect();
    format!("{prefix}-{}", suffix.to_ascii_lowercase())
}

/// A user's login, for the helpers that act as the user.
#[derive(Clone, Debug)]
pub struct UserLogin {
    pub id: String,
    pub name: String,
    pub domain_id: String,
    pub password: String,
}

/// A freshly created application credential (the secret is shown once).
#[derive(Clone, Debug)]
pub struct AppCredential {
    pub id: String,
    pub secret: String,
    pub project_id: String,
}

/// Keystone's admin API as the bootstrap admin (project-scoped to `admin`,
/// which the default policies accept for everything the tests need).
pub struct Admin {
    http: reqwest::Client,
    v3: String,
    password: String,
    token: tokio::sync::Mutex<Option<String>>,
    /// Keystone's log, quoted when a call fails.
    log: Arc<Mutex<Vec<String>>>,
}

impl Admin {
    fn new(v3: &str, password: &str, log: Arc<Mutex<Vec<String>>>) -> Admin {
        Admin {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("reqwest client"),
            v3: v3.to_owned(),
            password: password.to_owned(),
            token: tokio::sync::Mutex::new(None),
            log,
        }
    }

    /// The last lines Keystone logged, for failure messages.
    fn log_tail(&self) -> String {
        let log = self.log.lock().unwrap();
        log[log.len().saturating_sub(30)..].join("\n")
    }

    /// A token for `name` in domain `domain_id`: scoped to `project_id`, or
    /// unscoped.
    pub async fn user_token(
        &self,
        name: &str,
        domain_id: &str,
        password: &str,
        project_id: Option<&str>,
    ) -> String {
        let mut auth = json!({"identity": {"methods": ["password"], "password": {"user": {
            "name": name, "domain": {"id": domain_id}, "password": password}}}});
        if let Some(p) = project_id {
            auth["scope"] = json!({"project": {"id": p}});
        }
        let resp = self
            .http
            .post(format!("{}/auth/tokens?nocatalog", self.v3))
            .json(&json!({ "auth": auth }))
            .send()
            .await
            .expect("POST /auth/tokens");
        let status = resp.status();
        let token = resp
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match token {
            Some(t) if status.as_u16() == 201 => t,
            _ => panic!(
                "token for {name}: {status} {}\nKeystone log:\n{}",
                resp.text().await.unwrap_or_default(),
                self.log_tail()
            ),
        }
    }

    async fn token(&self) -> String {
        let mut t = self.token.lock().await;
        if t.is_none() {
            let token = self
                .user_token(ADMIN_USER, DEFAULT_DOMAIN_ID, &self.password, None)
                .await;
            // Scope to the admin project (its id is looked up unscoped).
            let projects: Value = self
                .http
                .get(format!("{}/auth/projects", self.v3))
                .header("x-auth-token", &token)
                .send()
                .await
                .expect("GET /auth/projects")
                .json()
                .await
                .expect("projects JSON");
            let admin_project = projects["projects"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["name"] == ADMIN_PROJECT))
                .and_then(|p| p["id"].as_str())
                .expect("admin project")
                .to_owned();
            *t = Some(
                self.user_token(
                    ADMIN_USER,
                    DEFAULT_DOMAIN_ID,
                    &self.password,
                    Some(&admin_project),
                )
                .await,
            );
        }
        t.clone().expect("admin token")
    }

    /// Sends `method path` with the admin token and `body`; panics unless the
    /// status is one of `ok`. Returns the JSON body (Null when empty).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        ok: &[u16],
    ) -> (u16, Value) {
        self.call_as(&self.token().await, method, path, body, ok)
            .await
    }

    /// Like [`Admin::call`] with another token.
    pub async fn call_as(
        &self,
        token: &str,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        ok: &[u16],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method.clone(), format!("{}{path}", self.v3))
            .header("x-auth-token", token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("Keystone request");
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        assert!(
            ok.contains(&status),
            "{method} {path}: {status} {text}\nKeystone log:\n{}",
            self.log_tail()
        );
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::Null)
        };
        (status, value)
    }

    /// Creates a domain; returns its id.
    pub async fn create_domain(&self, name: &str) -> String {
        let (_, v) = self
            .call(
                reqwest::Method::POST,
                "/domains",
                Some(json!({"domain": {"name": name, "enabled": true}})),
                &[201],
            )
            .await;
        id_of(&v, "domain")
    }

    /// Creates a project in `domain_id` with `tags`; returns its id.
    pub async fn create_project(&self, name: &str, domain_id: &str, tags: &[&str]) -> String {
        let (_, v) = self
            .call(
                reqwest::Method::POST,
                "/projects",
                Some(json!({"project": {"name": name, "domain_id": domain_id, "tags": tags}})),
                &[201],
            )
            .await;
        id_of(&v, "project")
    }

    /// Adds `tag` to a project (nothing when it has it already).
    pub async fn add_project_tag(&self, project_id: &str, tag: &str) {
        let path = format!("/projects/{project_id}/tags/{tag}");
        let (status, _) = self
            .call(reqwest::Method::GET, &path, None, &[204, 404])
            .await;
        if status == 404 {
            self.call(reqwest::Method::PUT, &path, None, &[201]).await;
        }
    }

    /// Removes `tag` from a project.
    pub async fn remove_project_tag(&self, project_id: &str, tag: &str) {
        let path = format!("/projects/{project_id}/tags/{tag}");
        self.call(reqwest::Method::DELETE, &path, None, &[204])
            .await;
    }

    /// Creates an enabled user; returns its login.
    pub async fn create_user(&self, name: &str, domain_id: &str, password: &str) -> UserLogin {
        let (_, v) = self
            .call(
                reqwest::Method::POST,
                "/users",
                Some(json!({"user": {"name": name, "domain_id": domain_id,
                    "password": password, "enabled": true}})),
                &[201],
            )
            .await;
        UserLogin {
            id: id_of(&v, "user"),
            name: name.to_owned(),
            domain_id: domain_id.to_owned(),
            password: password.to_owned(),
        }
    }

    /// Creates an enabled user in the default domain with a unique name
    /// (`prefix-<random>`, see [`unique`]) and a unique password.
    pub async fn new_user(&self, prefix: &str) -> UserLogin {
        self.create_user(&unique(prefix), DEFAULT_DOMAIN_ID, &unique("pw"))
            .await
    }

    /// The id of the role named `name`.
    pub async fn role_id(&self, name: &str) -> String {
        let (_, v) = self
            .call(
                reqwest::Method::GET,
                &format!("/roles?name={name}"),
                None,
                &[200],
            )
            .await;
        v["roles"][0]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no role {name}"))
            .to_owned()
    }

    /// Gives `user_id` the role `role` on a project.
    pub async fn assign_project_role(&self, user_id: &str, project_id: &str, role: &str) {
        let role = self.role_id(role).await;
        self.call(
            reqwest::Method::PUT,
            &format!("/projects/{project_id}/users/{user_id}/roles/{role}"),
            None,
            &[204],
        )
        .await;
    }

    /// Gives `user_id` the role `role` on the system (`all`).
    pub async fn assign_system_role(&self, user_id: &str, role: &str) {
        let role = self.role_id(role).await;
        self.call(
            reqwest::Method::PUT,
            &format!("/system/users/{user_id}/roles/{role}"),
            None,
            &[204],
        )
        .await;
    }

    /// A service account for the authenticator: a user in the default
    /// domain with `reader` on the system. Returns its login.
    pub async fn create_service_account(&self) -> UserLogin {
        let user = self.new_user("svc-berth").await;
        self.assign_system_role(&user.id, "reader").await;
        user
    }

    /// Disables a user. Tokens issued in the same second stay valid:
    /// sleep just over a second before expecting refusals.
    pub async fn disable_user(&self, user_id: &str) {
        self.call(
            reqwest::Method::PATCH,
            &format!("/users/{user_id}"),
            Some(json!({"user": {"enabled": false}})),
            &[200],
        )
        .await;
    }

    /// Sets a user's password (as the admin).
    pub async fn change_password(&self, user_id: &str, password: &str) {
        self.call(
            reqwest::Method::PATCH,
            &format!("/users/{user_id}"),
            Some(json!({"user": {"password": password}})),
            &[200],
        )
        .await;
    }

    /// Creates, as `user` with a token scoped to `project_id`, an
    /// application credential with `roles` (names) and an optional
    /// `expires_at` (`2030-01-01T00:00:00`).
    pub async fn create_application_credential(
        &self,
        user: &UserLogin,
        project_id: &str,
        roles: &[&str],
        expires_at: Option<&str>,
    ) -> AppCredential {
        let token = self
            .user_token(
                &user.name,
                &user.domain_id,
                &user.password,
                Some(project_id),
            )
            .await;
        let roles: Vec<Value> = roles.iter().map(|r| json!({"name": r})).collect();
        let (_, v) = self
            .call_as(
                &token,
                reqwest::Method::POST,
                &format!("/users/{}/application_credentials", user.id),
                Some(json!({"application_credential": {
                    "name": unique("appcred"), "roles": roles, "expires_at": expires_at}})),
                &[201],
            )
            .await;
        let ac = &v["application_credential"];
        AppCredential {
            id: ac["id"].as_str().expect("id").to_owned(),
            secret: ac["secret"].as_str().expect("secret").to_owned(),
            project_id: project_id.to_owned(),
        }
    }

    /// Deletes an application credential, as its user.
    pub async fn delete_application_credential(&self, user: &UserLogin, id: &str) {
        let token = self
            .user_token(&user.name, &user.domain_id, &user.password, None)
            .await;
        self.call_as(
            &token,
            reqwest::Method::DELETE,
            &format!("/users/{}/application_credentials/{id}", user.id),
            None,
            &[204],
        )
        .await;
    }
}

fn id_of(v: &Value, kind: &str) -> String {
    v[kind]["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no {kind} id in {v}"))
        .to_owned()
}
