//! Starts the real `berth` binary on an ephemeral loopback port and reads
//! the address it bound from its log.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A running `berth registry serve`, killed (SIGKILL) when dropped unless
/// stopped before.
pub struct Berth {
    pub child: Child,
    pub addr: String,
    pub data_dir: PathBuf,
    /// Everything the process logged so far (collected in the background).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
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
        let stderr = child.stderr.take().expect("stderr");
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
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
