//! Starts the real `berth` binary on an ephemeral loopback port and reads
//! the address it bound from its log.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

/// A running `berth registry serve`, killed (SIGKILL) when dropped unless
/// stopped before.
pub struct Berth {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    /// `berth serve`: the token service's address (`addr` is the registry's).
    pub identity_addr: Option<String>,
    /// Everything the process logged so far (collected in the background).
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Berth {
    /// Starts the registry alone, unauthenticated, plain HTTP, on `data_dir`.
    pub fn start(data_dir: &Path) -> Berth {
        Self::start_with(data_dir, &[])
    }

    pub fn start_with(data_dir: &Path, extra: &[&str]) -> Berth {
        let mut flags = vec!["--auth", "none"];
        flags.extend_from_slice(extra);
        Self::start_registry(data_dir, &flags)
    }

    /// Starts `berth registry serve` on an ephemeral loopback port, plain
    /// HTTP, with the caller's `--auth ...` and other flags.
    pub fn start_registry(data_dir: &Path, flags: &[&str]) -> Berth {
        let args = serve_args("registry", data_dir, flags);
        Self::spawn(data_dir, &args, &[], "registry listening addr=")
    }

    /// Starts `berth identity serve` on an ephemeral loopback port, plain
    /// HTTP, with `envs` (Keystone settings and the like).
    pub fn start_identity(data_dir: &Path, envs: &[(&str, &str)]) -> Berth {
        let args = serve_args("identity", data_dir, &[]);
        Self::spawn(data_dir, &args, envs, "token service listening addr=")
    }

    /// Starts `berth serve` (registry and token service in one process)
    /// on ephemeral loopback ports, over HTTPS with the certificate it
    /// generates in `<data_dir>/tls` unless `flags` say otherwise, with the
    /// caller's flags and environment (no Keystone: the local users file).
    /// `listen_ip` is `127.0.0.1` or `::1`.
    pub fn start_all(
        data_dir: &Path,
        listen_ip: &str,
        flags: &[&str],
        envs: &[(&str, &str)],
    ) -> Berth {
        Self::all_until(data_dir, listen_ip, flags, envs, "listening")
    }

    /// [`Berth::start_all`] on a data directory another instance holds:
    /// waits for it to stand by (`registry standby addr=...`).
    pub fn start_all_standby(
        data_dir: &Path,
        listen_ip: &str,
        flags: &[&str],
        envs: &[(&str, &str)],
    ) -> Berth {
        Self::all_until(data_dir, listen_ip, flags, envs, "standby")
    }

    /// [`Berth::start_registry`] on a data directory another instance
    /// holds: waits for it to stand by.
    pub fn start_registry_standby(data_dir: &Path, flags: &[&str]) -> Berth {
        let args = serve_args("registry", data_dir, flags);
        Self::spawn(data_dir, &args, &[], "registry standby addr=")
    }

    /// [`Berth::start_identity`] on a data directory another instance
    /// holds: waits for it to stand by.
    pub fn start_identity_standby(data_dir: &Path, envs: &[(&str, &str)]) -> Berth {
        let args = serve_args("identity", data_dir, &[]);
        Self::spawn(data_dir, &args, envs, "token service standby addr=")
    }

    /// Waits up to `timeout` for a log line containing `needle`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.log.lock().unwrap().iter().any(|l| l.contains(needle)) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// `berth serve` until its log says `registry <state> addr=` (`state`:
    /// `listening` or `standby`).
    fn all_until(
        data_dir: &Path,
        listen_ip: &str,
        flags: &[&str],
        envs: &[(&str, &str)],
        state: &str,
    ) -> Berth {
        let any_port = |ip: &str| {
            if ip.contains(':') {
                format!("[{ip}]:0")
            } else {
                format!("{ip}:0")
            }
        };
        let mut args: Vec<std::ffi::OsString> = vec!["serve".into(), "--data-dir".into()];
        args.push(data_dir.into());
        args.extend(["--registry-listen".into(), any_port(listen_ip).into()]);
        args.extend(["--identity-listen".into(), any_port(listen_ip).into()]);
        args.extend(flags.iter().map(Into::into));
        let marker = match state {
            "standby" => "registry standby addr=",
            _ => "registry listening addr=",
        };
        let mut berth = Self::spawn(data_dir, &args, envs, marker);
        // The token service reports its address before the registry does.
        let marker = format!("token service {state} addr=");
        berth.identity_addr = berth
            .log
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| l.split(&marker).nth(1))
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned);
        assert!(berth.identity_addr.is_some(), "no token service address");
        berth
    }

    /// `https://ADDR` of the registry.
    pub fn https_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA certificate berth generated (`<data_dir>/tls/ca.crt`).
    pub fn ca_cert(&self) -> PathBuf {
        self.data_dir.join("tls").join("ca.crt")
    }

    /// The generated password of the local `admin` (`<data_dir>/admin.password`).
    pub fn admin_password(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.password"))
            .expect("admin.password")
            .trim()
            .to_owned()
    }

    /// `berth keys export-bundle`: writes the PEM certificates of the
    /// signing keys under `data_dir` to `out`.
    pub fn export_bundle(data_dir: &Path, out: &Path) -> Command {
        let mut cmd = keys_command("export-bundle", data_dir);
        cmd.arg("--out").arg(out);
        cmd
    }

    /// `berth keys rotate` with a publish delay of `publish_delay` seconds
    /// (0: the new key signs at once); prints `new signing key KID ...`.
    pub fn rotate_keys(data_dir: &Path, publish_delay: u64) -> Command {
        let mut cmd = keys_command("rotate", data_dir);
        cmd.arg("--set")
            .arg(format!("token.key_publish_delay={publish_delay}"));
        cmd
    }

    /// Spawns the binary and waits for the log line `<marker><addr>`.
    fn spawn(
        data_dir: &Path,
        args: &[std::ffi::OsString],
        envs: &[(&str, &str)],
        marker: &'static str,
    ) -> Berth {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .envs(envs.iter().copied())
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth");
        let (log, rx) = collect_log(child.stderr.take().expect("stderr"), marker);
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "berth did not report its address: {:?}",
                    log.lock().unwrap()
                );
            }
        };
        Berth {
            child,
            addr,
            data_dir: data_dir.to_owned(),
            identity_addr: None,
            log,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Sends SIGTERM and waits for a clean exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.child.wait().expect("wait for berth")
    }
}

/// A reqwest client that trusts only `ca` (the CA berth generated, see
/// [`Berth::ca_cert`]).
pub fn client_trusting(ca: &Path) -> reqwest::Client {
    let pem = std::fs::read(ca).expect("read CA");
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
        .build()
        .expect("reqwest client")
}

/// The value of the response header `name` ("" when absent or not text).
pub fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Collects the lines of `stderr` (a berth process's log) in the background
/// and sends, once, the address in the first line `...<marker><addr> ...`.
pub fn collect_log(
    stderr: impl Read + Send + 'static,
    marker: &'static str,
) -> (Arc<Mutex<Vec<String>>>, mpsc::Receiver<String>) {
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line
                .split(marker)
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(addr.to_owned());
            }
            log2.lock().unwrap().push(line);
        }
    });
    (log, rx)
}

/// `berth keys SUBCOMMAND --data-dir DIR`
fn keys_command(subcommand: &str, data_dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(["keys", subcommand, "--data-dir"]).arg(data_dir);
    cmd
}

/// `berth <service> serve --listen 127.0.0.1:0 --tls off --data-dir DIR FLAGS...`
fn serve_args(service: &str, data_dir: &Path, flags: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = [
        service,
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--tls",
        "off",
        "--data-dir",
    ]
    .iter()
    .map(Into::into)
    .collect();
    args.push(data_dir.into());
    args.extend(flags.iter().map(Into::into));
    args
}

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
