//! A real Docker Distribution 2.8 (`docker-registry serve`, Debian package
//! `docker-registry`) with token authentication and filesystem storage, on
//! a free loopback port, killed by its PID when dropped.
//!
//! Distribution binds the address written in its configuration and cannot
//! report a port it chose, so the fixture asks the kernel for a free port,
//! releases it and starts Distribution on it; when another process took the
//! port meanwhile, Distribution exits with "address already in use" and the
//! fixture tries another. It is ready when `GET /v2/` on that port answers
//! 401 with a challenge naming this instance's realm (so a stranger that
//! took the port is never mistaken for it).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::clients::{Proc, tool};

/// How long Distribution may take to answer after it was started.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Ports tried before giving up.
const ATTEMPTS: u32 = 10;

/// Distribution's `auth.token` section.
#[derive(Clone, Debug)]
pub struct TokenAuth {
    /// The token endpoint clients are sent to.
    pub realm: String,
    /// The tokens' `aud`; also sent to the token service as `service`.
    pub service: String,
    /// The tokens' `iss`.
    pub issuer: String,
    /// PEM certificates of the keys that may sign tokens (read at start).
    pub rootcertbundle: PathBuf,
}

/// A running `docker-registry serve`.
pub struct Distribution {
    child: Option<Child>,
    /// Every process started, the running one last.
    started: Vec<Proc>,
    /// `127.0.0.1:PORT`
    pub addr: String,
    /// The filesystem storage's root directory.
    pub storage: PathBuf,
    dir: PathBuf,
    auth: TokenAuth,
    /// The log file of the running process.
    log: PathBuf,
}

impl Distribution {
    /// Starts Distribution with its configuration, logs and storage under
    /// the new directory `dir`, trusting tokens as `auth` says.
    pub fn start(dir: &Path, auth: TokenAuth) -> Distribution {
        std::fs::create_dir_all(dir).expect("distribution dir");
        let mut me = Distribution {
            child: None,
            started: Vec::new(),
            addr: String::new(),
            storage: dir.join("storage"),
            dir: dir.to_owned(),
            auth,
            log: PathBuf::new(),
        };
        me.launch(None);
        me
    }

    /// Stops it (SIGTERM, as a service manager would) and starts it again
    /// on the same port if it is still free, with the same configuration
    /// and storage: how Distribution re-reads its `rootcertbundle`.
    pub fn restart(&mut self) {
        let port = self.port();
        self.stop();
        self.launch(Some(port));
    }

    /// Every process started so far (restarts included), the running one
    /// last: for checking that they are gone.
    pub fn started(&self) -> &[Proc] {
        &self.started
    }

    pub fn port(&self) -> u16 {
        self.addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port")
    }

    /// The configuration file in use.
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("config.yml")
    }

    /// What the running (or last) process logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `config.yml` for `port`. Values are written as JSON strings, which
    /// YAML reads as double-quoted scalars.
    pub fn config(&self, port: u16) -> String {
        let q = |s: &str| serde_json::to_string(s).expect("quote");
        let path = |p: &Path| q(p.to_str().expect("UTF-8 path"));
        format!(
            "version: 0.1\n\
             log:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
             http:\n  addr: {addr}\n\
             auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {bundle}\n",
            storage = path(&self.storage),
            addr = q(&format!("127.0.0.1:{port}")),
            realm = q(&self.auth.realm),
            service = q(&self.auth.service),
            issuer = q(&self.auth.issuer),
            bundle = path(&self.auth.rootcertbundle),
        )
    }

    /// Starts a process on `preferred` (else a free port), retrying on
    /// other ports while the port turns out to be taken.
    fn launch(&mut self, preferred: Option<u16>) {
        let binary = tool("docker-registry");
        let mut port = preferred.unwrap_or_else(free_port);
        for _ in 0..ATTEMPTS {
            self.addr = format!("127.0.0.1:{port}");
            std::fs::write(self.config_path(), self.config(port)).expect("write config.yml");
            self.log = self
                .dir
                .join(format!("registry-{}.log", self.started.len() + 1));
            let out = std::fs::File::create(&self.log).expect("registry log");
            let mut cmd = Command::new(&binary);
            cmd.arg("serve")
                .arg(self.config_path())
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("log"))
                .stderr(out);
            // Distribution overrides its configuration with REGISTRY_*
            // variables: none may leak in from the test's environment.
            for (name, _) in std::env::vars_os() {
                if name.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(name);
                }
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start {}: {e}", binary.display()));
            self.started
                .push(Proc::of(child.id()).expect("docker-registry in /proc"));
            self.child = Some(child);
            match self.wait_ready() {
                Ready::Yes => return,
                Ready::PortTaken => {
                    eprintln!(
                        "docker-registry: port {port} was taken, trying another:\n{}",
                        self.log()
                    );
                    port = free_port();
                }
            }
        }
        panic!("docker-registry found no free port in {ATTEMPTS} attempts");
    }

    fn wait_ready(&mut self) -> Ready {
        let deadline = Instant::now() + START_TIMEOUT;
        let child = self.child.as_mut().expect("started");
        loop {
            if let Some(status) = child.try_wait().expect("wait for docker-registry") {
                self.child = None;
                let log = self.log();
                if log.contains("address already in use") {
                    return Ready::PortTaken;
                }
                panic!("docker-registry exited ({status}) while starting:\n{log}");
            }
            if answers_as(&self.addr, &self.auth.realm) {
                return Ready::Yes;
            }
            if Instant::now() > deadline {
                let log = self.log();
                self.kill();
                panic!("docker-registry did not answer within {START_TIMEOUT:?}:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM and a wait for the exit (SIGKILL after 10 s).
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.wait();
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Distribution {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("docker-registry at {} logged:\n{}", self.addr, self.log());
        }
        self.kill();
    }
}

enum Ready {
    Yes,
    PortTaken,
}

/// A port the kernel had free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Whether `GET /v2/` at `addr` answers 401 with a Bearer challenge whose
/// realm is `realm`.
fn answers_as(addr: &str, realm: &str) -> bool {
    let Ok(sock_addr) = addr.parse() else {
        return false;
    };
    let Ok(mut stream) = TcpStream::connect_timeout(&sock_addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let request = format!("GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split_whitespace().nth(1) == Some("401")
        && response.contains(&format!("Bearer realm=\"{realm}\""))
}
