//! Fixtures that drive REAL registry clients against a running berth: a test
//! image written without any daemon (an OCI layout from
//! `tests/fixtures/make_image.py`, and a `docker-archive` of it made by
//! skopeo), `skopeo`, `podman` with its own vfs storage, a private `dockerd`
//! per test (stopped by its PID, with the containerd it spawned), a private
//! `containerd` for `ctr`, and the PyPI `oras` package driven by
//! `tests/fixtures/oras_client.py`.
//!
//! Every required tool is looked up when a fixture is made; a missing one
//! FAILS the test with a message pointing at `scripts/install-test-deps`.
//! Every command runs with a time limit and is killed by its PID past it.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long one client command may take before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// The repository root (where `Cargo.toml`, `tests/` and `.venv/` are).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Finds an executable by name on `PATH` and in the usual system
/// directories; panics with a clear message when it is not installed.
pub fn tool(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let extra = [
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ];
    std::env::split_paths(&path)
        .chain(extra.iter().map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| {
            panic!(
                "required tool `{name}` is not installed (not on PATH nor in the system \
                 directories): run scripts/install-test-deps as root"
            )
        })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The outcome of a finished command.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub what: String,
}

impl Ran {
    /// Panics, with everything the command printed, unless it exited 0.
    pub fn ok(self) -> Ran {
        assert!(
            self.status.success(),
            "command failed ({}): {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.what,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Stdout parsed as JSON (panics with the text when it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("{}: stdout is not JSON ({e}): {}", self.what, self.stdout))
    }
}

/// Runs a command to completion within [`COMMAND_TIMEOUT`] (killing it by
/// its PID past that), capturing its output. Does not check the exit code.
pub fn run(cmd: &mut Command) -> Ran {
    run_with_input(cmd, None)
}

/// Like [`run`], with `input` written to the command's standard input
/// (then closed): a password for `login --password-stdin`, say.
pub fn run_input(cmd: &mut Command, input: &str) -> Ran {
    run_with_input(cmd, Some(input.as_bytes().to_vec()))
}

fn run_with_input(cmd: &mut Command, input: Option<Vec<u8>>) -> Ran {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A thread, so that a command that does not read cannot block us.
        std::thread::spawn(move || {
            use std::io::Write;
            let _ = stdin.write_all(&input);
        });
    }
    let out = reader(child.stdout.take().expect("stdout"));
    let err = reader(child.stderr.take().expect("stderr"));
    let deadline = Instant::now() + COMMAND_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for command") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "command timed out after {COMMAND_TIMEOUT:?}: {what}\n--- stderr\n{}",
                String::from_utf8_lossy(&err.join().unwrap_or_default())
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = String::from_utf8_lossy(&out.join().unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap_or_default()).into_owned();
    Ran {
        status,
        stdout,
        stderr,
        what,
    }
}

fn reader(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

/// Runs a command and panics unless it exits 0.
pub fn run_ok(cmd: &mut Command) -> Ran {
    run(cmd).ok()
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data);
    format!("sha256:{}", hex::encode(d.as_ref()))
}

fn json_file(path: &Path) -> serde_json::Value {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("parse {}: {e}", path.display()))
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("string").to_owned())
        .collect()
}

/// A small image in an OCI layout, written by `tests/fixtures/make_image.py`.
pub struct TestImage {
    /// The OCI layout directory.
    pub layout: PathBuf,
    /// Its `org.opencontainers.image.ref.name`.
    pub tag: String,
    pub manifest_digest: String,
    /// The manifest exactly as stored in the layout.
    pub manifest: Vec<u8>,
    pub config_digest: String,
    /// Compressed layer digests, as in the manifest.
    pub layer_digests: Vec<String>,
    /// Uncompressed layer digests (the config's `rootfs.diff_ids`).
    pub diff_ids: Vec<String>,
}

impl TestImage {
    /// Writes the image into the new directory `layout`; different seeds give
    /// different images, the same seed the same digests.
    pub fn build(layout: &Path, tag: &str, seed: &str) -> TestImage {
        let script = repo_root().join("tests/fixtures/make_image.py");
        let ran = run_ok(
            Command::new(tool("python3"))
                .arg(&script)
                .arg(layout)
                .arg(tag)
                .arg(seed),
        );
        let summary = ran.json();
        let (manifest_digest, manifest) = read_oci_layout(layout, tag);
        assert_eq!(summary["manifest"], manifest_digest.as_str());
        TestImage {
            layout: layout.to_owned(),
            tag: tag.to_owned(),
            manifest_digest,
            manifest,
            config_digest: summary["config"].as_str().expect("config").to_owned(),
            layer_digests: strings(&summary["layers"]),
            diff_ids: strings(&summary["diff_ids"]),
        }
    }

    /// `oci:LAYOUT:TAG`, the skopeo/podman transport reference.
    pub fn oci_ref(&self) -> String {
        format!("oci:{}:{}", self.layout.display(), self.tag)
    }

    /// Writes a `docker-archive` tar of this image, named `reference`
    /// (`name:tag`), for `docker load`; converted by skopeo.
    pub fn docker_archive(&self, skopeo: &Skopeo, file: &Path, reference: &str) {
        run_ok(skopeo.cmd().args([
            "copy",
            &self.oci_ref(),
            &format!("docker-archive:{}:{reference}", file.display()),
        ]));
        assert!(file.is_file(), "skopeo wrote no {}", file.display());
    }
}

/// Reads an OCI layout's `index.json` entry named `tag`; returns the
/// manifest digest and the manifest bytes, checking the blob's digest.
pub fn read_oci_layout(layout: &Path, tag: &str) -> (String, Vec<u8>) {
    let index = json_file(&layout.join("index.json"));
    let entry = index["manifests"]
        .as_array()
        .expect("index.json manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .unwrap_or_else(|| panic!("no {tag} in {}: {index}", layout.display()));
    let digest = entry["digest"].as_str().expect("digest").to_owned();
    let bytes = read_oci_blob(layout, &digest);
    assert_eq!(
        entry["size"].as_u64(),
        Some(bytes.len() as u64),
        "index size"
    );
    (digest, bytes)
}

/// Reads a blob of an OCI layout and checks that its content has `digest`.
pub fn read_oci_blob(layout: &Path, digest: &str) -> Vec<u8> {
    let (alg, hex) = digest.split_once(':').expect("algorithm:hex");
    let path = layout.join("blobs").join(alg).join(hex);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert_eq!(
        sha256_digest(&bytes),
        digest,
        "content of {}",
        path.display()
    );
    bytes
}

/// skopeo with a permissive signature policy of its own.
pub struct Skopeo {
    pub bin: PathBuf,
    policy: PathBuf,
}

impl Skopeo {
    /// `dir` receives the policy file.
    pub fn new(dir: &Path) -> Skopeo {
        let bin = tool("skopeo");
        std::fs::create_dir_all(dir).expect("skopeo dir");
        let policy = dir.join("policy.json");
        std::fs::write(
            &policy,
            r#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
        )
        .expect("write policy");
        Skopeo { bin, policy }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--policy").arg(&self.policy);
        c
    }
}

/// podman with vfs storage, root, runroot and tmpdir of its own.
pub struct Podman {
    pub bin: PathBuf,
    dir: PathBuf,
}

impl Podman {
    /// All of podman's state goes under `dir`.
    pub fn new(dir: &Path) -> Podman {
        let bin = tool("podman");
        for sub in ["root", "run", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).expect("podman dirs");
        }
        Podman {
            bin,
            dir: dir.to_owned(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--root")
            .arg(self.dir.join("root"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .arg("--tmpdir")
            .arg(self.dir.join("tmp"))
            .args([
                "--storage-driver",
                "vfs",
                "--cgroup-manager",
                "cgroupfs",
                "--events-backend",
                "none",
            ])
            .env("TMPDIR", self.dir.join("tmp"));
        c
    }
}

/// The PyPI `oras` package in `.venv/`, driven by
/// `tests/fixtures/oras_client.py`.
pub struct Oras {
    pub python: PathBuf,
    pub script: PathBuf,
}

impl Oras {
    pub fn new() -> Oras {
        let python = repo_root().join(".venv/bin/python");
        assert!(
            is_executable(&python),
            "{} is missing: run scripts/install-test-deps (it makes the venv with oras)",
            python.display()
        );
        let check = run(Command::new(&python).args(["-c", "import oras.provider"]));
        assert!(
            check.status.success(),
            "the PyPI package oras is not importable from {}: run scripts/install-test-deps\n{}",
            python.display(),
            check.stderr
        );
        Oras {
            python,
            script: repo_root().join("tests/fixtures/oras_client.py"),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.python);
        c.arg(&self.script);
        c
    }
}

/// A process as identified in /proc: PID plus start time (so that a reused
/// PID is never mistaken for it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    start: u64,
}

/// `(ppid, state, starttime)` from /proc/PID/stat.
fn proc_stat(pid: u32) -> Option<(u32, char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain anything.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((ppid, state, start))
}

impl Proc {
    pub fn of(pid: u32) -> Option<Proc> {
        proc_stat(pid).map(|(_, _, start)| Proc { pid, start })
    }

    /// Still running (not gone, not a zombie, not a new process with the
    /// same PID).
    pub fn alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((_, state, start)) if start == self.start && state != 'Z')
    }

    /// Its command line, for messages.
    pub fn cmdline(&self) -> String {
        std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        if self.alive() {
            let _ = Command::new("kill")
                .args([sig, &self.pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Waits until it is gone; returns whether it went within `limit`.
    fn wait_gone(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while self.alive() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }
}

/// Every process descended from `pid` (children, grandchildren, ...).
pub fn descendants(pid: u32) -> Vec<Proc> {
    let mut all: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            if let Some(p) = entry.file_name().to_str().and_then(|s| s.parse().ok())
                && let Some((ppid, _, _)) = proc_stat(p)
            {
                all.push((p, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(p, ppid) in &all {
            if ppid == parent
                && let Some(proc) = Proc::of(p)
            {
                found.push(proc);
                frontier.push(p);
            }
        }
    }
    found
}

/// Running processes whose command line mentions `needle` (a test's temp
/// directory, say): what a test left behind.
pub fn processes_mentioning(needle: &str) -> Vec<(u32, String)> {
    let me = std::process::id();
    let mut found = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if pid == me {
                continue;
            }
            if let Some(p) = Proc::of(pid)
                && p.alive()
            {
                let cmdline = p.cmdline();
                if cmdline.contains(needle) {
                    found.push((pid, cmdline));
                }
            }
        }
    }
    found
}

/// A private `dockerd` (with the containerd it starts) on a unix socket in
/// its own short temp directory, vfs storage, no networking set-up. Stopped
/// on drop: SIGTERM by PID, SIGKILL after a grace period, then any
/// descendant that outlived it is killed by PID too.
pub struct Dockerd {
    child: Child,
    proc: Proc,
    /// Short path under /tmp: unix socket paths are limited to 108 bytes.
    dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub docker: PathBuf,
    /// Descendants seen while running (containerd), killed on stop too.
    seen: Vec<Proc>,
    stopped: bool,
}

impl Dockerd {
    pub fn start() -> Dockerd {
        let dockerd = tool("dockerd");
        let docker = tool("docker");
        // containerd is started by dockerd from PATH: require it up front.
        tool("containerd");
        let dir = tempfile::Builder::new()
            .prefix("bd")
            .tempdir_in("/tmp")
            .expect("dockerd temp dir");
        let d = dir.path();
        let socket = d.join("s.sock");
        std::fs::create_dir_all(d.join("cfg")).expect("docker config dir");
        std::fs::write(d.join("daemon.json"), "{}").expect("daemon.json");
        let log = std::fs::File::create(d.join("dockerd.log")).expect("dockerd log");
        let child = Command::new(&dockerd)
            .arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args([
                "--storage-driver=vfs",
                "--iptables=false",
                "--ip6tables=false",
                "--bridge=none",
                "--ip-masq=false",
                "--ip-forward=false",
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", dockerd.display()));
        let proc = Proc::of(child.id()).expect("dockerd in /proc");
        let mut me = Dockerd {
            child,
            proc,
            dir,
            socket,
            docker,
            seen: Vec::new(),
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = me.child.try_wait().expect("wait dockerd") {
                panic!("dockerd exited ({status}) while starting:\n{}", me.log());
            }
            let info = run(me.cmd().args(["info", "--format", "{{.ServerVersion}}"]));
            if info.status.success() {
                break;
            }
            if Instant::now() > deadline {
                let log = me.log();
                drop(me);
                panic!("dockerd did not answer `docker info` within 60 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        me.note_descendants();
        me
    }

    /// The docker CLI talking to this daemon, with its own config dir.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(&self.docker);
        c.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .env("DOCKER_CONFIG", self.dir.path().join("cfg"))
            .env_remove("DOCKER_HOST")
            .env_remove("DOCKER_CONTEXT");
        c
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
    }

    /// Remembers the processes dockerd has started (containerd), so that
    /// they are stopped even if dockerd dies first.
    pub fn note_descendants(&mut self) {
        for p in descendants(self.proc.pid) {
            if !self.seen.contains(&p) {
                self.seen.push(p);
            }
        }
    }

    /// Stops dockerd and everything it started; returns the processes it
    /// stopped (all of them verified gone).
    pub fn stop(mut self) -> Vec<Proc> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Vec<Proc> {
        if self.stopped {
            return Vec::new();
        }
        self.stopped = true;
        self.note_descendants();
        let mut all = vec![self.proc];
        all.extend(self.seen.iter().copied());
        // Graceful first: dockerd stops its containerd on SIGTERM.
        self.proc.signal("-TERM");
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for p in &self.seen {
            if !p.wait_gone(Duration::from_secs(5)) {
                p.signal("-KILL");
                p.wait_gone(Duration::from_secs(5));
            }
        }
        all
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// A private containerd for `ctr`: its own root, state and sockets in a
/// short temp dir under /tmp, the CRI plugin off (the tests drive it with
/// `ctr`, not a kubelet), stopped by its PID. Registry trust comes from a
/// host directory of its own, laid out as `/etc/containerd/certs.d` is on a
/// node (see [`Containerd::trust`]).
pub struct Containerd {
    child: Child,
    proc: Proc,
    dir: tempfile::TempDir,
    socket: PathBuf,
    ctr: PathBuf,
    stopped: bool,
}

impl Containerd {
    pub fn start() -> Containerd {
        let containerd = tool("containerd");
        let ctr = tool("ctr");
        let dir = tempfile::Builder::new()
            .prefix("ct")
            .tempdir_in("/tmp")
            .expect("containerd temp dir");
        let d = dir.path();
        let socket = d.join("c.sock");
        std::fs::create_dir_all(d.join("hosts")).expect("hosts dir");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
                 disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                 [grpc]\n  address = \"{grpc}\"\n[ttrpc]\n  address = \"{ttrpc}\"\n\
                 [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
                root = d.join("root").display(),
                state = d.join("state").display(),
                grpc = socket.display(),
                ttrpc = d.join("t.sock").display(),
                opt = d.join("opt").display(),
            ),
        )
        .expect("containerd config");
        let log = std::fs::File::create(d.join("containerd.log")).expect("containerd log");
        let child = Command::new(&containerd)
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", containerd.display()));
        let proc = Proc::of(child.id()).expect("containerd in /proc");
        let mut me = Containerd {
            child,
            proc,
            dir,
            socket,
            ctr,
            stopped: false,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = me.child.try_wait().expect("wait containerd") {
                panic!("containerd exited ({status}) while starting:\n{}", me.log());
            }
            if run(me.ctr().arg("version")).status.success() {
                break;
            }
            if Instant::now() > deadline {
                let log = me.log();
                me.shutdown();
                panic!("containerd did not answer `ctr version` within 60 s:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        me
    }

    /// `ctr` talking to this containerd, in the namespace `berth-test`.
    pub fn ctr(&self) -> Command {
        let mut c = Command::new(&self.ctr);
        c.arg("--address")
            .arg(&self.socket)
            .args(["--namespace", "berth-test"])
            .env_remove("CONTAINERD_ADDRESS")
            .env_remove("CONTAINERD_NAMESPACE");
        c
    }

    /// The host directory to give `ctr` as `--hosts-dir` (on a node:
    /// `/etc/containerd/certs.d`, the CRI plugin's `config_path`).
    pub fn hosts_dir(&self) -> PathBuf {
        self.dir.path().join("hosts")
    }

    /// Writes `HOST:PORT/hosts.toml` into the host directory: HTTPS to the
    /// registry (containerd would speak plain HTTP to a loopback address
    /// otherwise), trusting `ca` (the system roots only when `None`).
    pub fn trust(&self, registry: &str, ca: Option<&Path>) {
        let dir = self.hosts_dir().join(registry);
        std::fs::create_dir_all(&dir).expect("host dir");
        // The registry as `server` and as its one `[host]` entry, both with
        // the CA: containerd 1.6 refuses a file without a `[host]` tree, and
        // falls back from the hosts to `server`.
        let ca = ca
            .map(|ca| format!("ca = \"{}\"\n", ca.display()))
            .unwrap_or_default();
        let toml = format!(
            "server = \"https://{registry}\"\n{ca}\n[host.\"https://{registry}\"]\n\
             capabilities = [\"pull\", \"resolve\", \"push\"]\n{ca}"
        );
        std::fs::write(dir.join("hosts.toml"), toml).expect("hosts.toml");
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Stops containerd (SIGTERM, then SIGKILL) and waits until it is gone.
    pub fn stop(mut self) -> Proc {
        self.shutdown();
        self.proc
    }

    fn shutdown(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.proc.signal("-TERM");
        if !self.proc.wait_gone(Duration::from_secs(20)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Panics unless a client command failed because it was not authorized
/// (not for any other reason, such as an unknown image or a TLS error).
pub fn refused(ran: Ran, what: &str) {
    assert!(
        !ran.status.success(),
        "{what} succeeded: {}\n{}",
        ran.what,
        ran.stdout
    );
    let err = ran.stderr.to_lowercase();
    assert!(
        err.contains("unauthorized")
            || err.contains("denied")
            || err.contains("insufficient_scope"),
        "{what} failed, but not for want of authorization:\n{}",
        ran.stderr
    );
    assert!(
        !err.contains("certificate") && !err.contains("x509"),
        "{what}: a TLS failure:\n{}",
        ran.stderr
    );
    eprintln!("refused, as it should be: {what}: {}", ran.stderr.trim());
}
