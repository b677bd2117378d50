//! Durability on the real binary and a real filesystem, beyond process
//! kills (tests/crash.rs covers those):
//!
//! - `every_commit_is_fsynced_before_its_answer`: runs `berth registry
//!   serve` under `strace -f`, performs every kind of write over HTTP, one
//!   request at a time, and checks in the trace, request by request, the
//!   commit discipline of docs/storage.md: a file renamed into the store was
//!   fsynced after its last write, the directory it landed in is fsynced
//!   after the rename; a file or directory created or removed has its
//!   directory fsynced; an upload chunk is fsynced; all of it before the
//!   first byte of the answer reaches the client's socket. That is what
//!   makes an acknowledged write survive a power loss, not only a crash.
//! - `full_disk_gives_a_clear_error_and_no_corruption`: the data directory
//!   on a 16 MiB tmpfs (or a small loop-mounted ext4 image), pushed until
//!   full: 507 with a message saying the storage is full, an error log
//!   line naming ENOSPC, nothing partial visible, nothing left in `tmp/`,
//!   every acknowledged blob intact, a chunked upload whose chunk failed
//!   resumable at its last acknowledged offset; then space is freed and
//!   everything that failed pushes.

mod common;

use std::collections::HashMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::berth::{Berth, collect_log, header};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

// ------------------------------------------------------------------ helpers

/// Deterministic pseudo-random content (xorshift64*).
fn content(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    v.truncate(len);
    v
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

fn digest_of(data: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(data))
}

fn hex_of(digest: &str) -> &str {
    digest.strip_prefix("sha256:").expect("sha256 digest")
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("HTTP client")
}

/// The upload id at the end of an upload `Location`.
fn upload_id(location: &str) -> String {
    let id = location
        .split('?')
        .next()
        .and_then(|p| p.rsplit('/').next())
        .unwrap_or_default();
    assert_eq!(id.len(), 32, "upload location {location:?}");
    id.to_owned()
}

/// An OCI image manifest over `config` and `layers` (bytes), optionally an
/// artifact referring to `subject` (digest, size).
fn manifest(config: &[u8], layers: &[&[u8]], subject: Option<(&str, usize)>) -> Vec<u8> {
    let desc = |b: &[u8], t: &str| serde_json::json!({"mediaType": t, "digest": digest_of(b), "size": b.len()});
    let mut v = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(config, OCI_CONFIG),
        "layers": layers.iter().map(|l| desc(l, OCI_LAYER)).collect::<Vec<_>>(),
    });
    if let Some((digest, size)) = subject {
        v["artifactType"] = "application/vnd.example.signature".into();
        v["subject"] =
            serde_json::json!({"mediaType": OCI_MANIFEST, "digest": digest, "size": size});
    }
    serde_json::to_vec(&v).expect("manifest JSON")
}

/// Files under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in rd.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The direct children of the process `pid` (from /proc).
fn children_of(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in rd.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may contain spaces.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

// ------------------------------------------------------------ traced berth

/// The system calls the check needs: syncs, renames, creations, removals,
/// file writes, and the socket writes that carry the answers.
const TRACED: &str = "fsync,fdatasync,rename,renameat,renameat2,openat,mkdir,mkdirat,\
                      unlink,unlinkat,rmdir,write,writev,pwrite64,sendto,sendmsg";

/// `berth registry serve` under `strace -f`, writing its trace to a file.
/// Dropping it kills berth (by PID), then strace.
struct Traced {
    strace: Child,
    berth_pid: u32,
    addr: String,
    log: Arc<Mutex<Vec<String>>>,
}

impl Traced {
    fn start(data_dir: &Path, trace: &Path) -> Traced {
        let mut strace = Command::new("strace")
            .args(["-f", "-tt", "-s", "64", "-yy", "-e"])
            .arg(format!("trace={TRACED}"))
            .arg("-o")
            .arg(trace)
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_berth"))
            .args(["registry", "serve", "--auth", "none", "--tls", "off"])
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn strace (scripts/install-test-deps installs it)");
        let (log, rx) = collect_log(
            strace.stderr.take().expect("stderr"),
            "registry listening addr=",
        );
        let addr = rx.recv_timeout(Duration::from_secs(60));
        let berth_pid = children_of(strace.id()).first().copied();
        let (Ok(addr), Some(berth_pid)) = (addr, berth_pid) else {
            if let Some(pid) = children_of(strace.id()).first() {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            }
            let _ = strace.kill();
            let _ = strace.wait();
            panic!(
                "berth under strace did not start: {:?}",
                log.lock().unwrap()
            );
        };
        Traced {
            strace,
            berth_pid,
            addr,
            log,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGTERM to berth; waits for strace to finish writing the trace.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.berth_pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.strace.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("berth did not stop on SIGTERM");
    }
}

impl Drop for Traced {
    fn drop(&mut self) {
        if let Ok(None) = self.strace.try_wait() {
            let _ = Command::new("kill")
                .args(["-KILL", &self.berth_pid.to_string()])
                .status();
            let _ = self.strace.kill();
            let _ = self.strace.wait();
        }
    }
}

// ------------------------------------------------------------ trace parser

/// One completed system call: `entry` and `exit` are the trace lines where
/// it started and returned (the same line unless another thread's call was
/// printed in between). strace serialises the events of all threads, so
/// line order is the order in which calls began and returned.
#[derive(Debug)]
struct Call {
    name: String,
    args: Vec<String>,
    ret: String,
    entry: usize,
    exit: usize,
}

impl Call {
    fn ok(&self) -> bool {
        let n: String = self
            .ret
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '-')
            .collect();
        n.parse::<i64>().is_ok_and(|n| n >= 0)
    }
}

fn parse_trace(text: &str) -> Vec<Call> {
    let mut pending: HashMap<u32, (String, usize)> = HashMap::new();
    let mut calls = Vec::new();
    for (i, line) in text.lines().enumerate() {
        // `PID TIME CALL...`; strace pads the PID to a common width.
        let Some((pid, rest)) = line.trim_start().split_once(' ') else {
            continue;
        };
        let Some((_time, rest)) = rest.trim_start().split_once(' ') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let (full, entry) = if let Some(r) = rest.strip_prefix("<... ") {
            let Some((_, after)) = r.split_once(" resumed>") else {
                continue;
            };
            let Some((head, entry)) = pending.remove(&pid) else {
                continue;
            };
            (format!("{head}{after}"), entry)
        } else if let Some(head) = rest.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, (head.to_owned(), i));
            continue;
        } else {
            (rest.to_owned(), i)
        };
        let (Some(open), Some(close)) = (full.find('('), full.rfind(") = ")) else {
            continue;
        };
        if open > close {
            continue;
        }
        calls.push(Call {
            name: full[..open].to_owned(),
            args: split_args(&full[open + 1..close]),
            ret: full[close + 4..].to_owned(),
            entry,
            exit: i,
        });
    }
    calls
}

/// Splits strace's argument list at top-level commas.
fn split_args(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let (mut cur, mut depth, mut quoted, mut escaped) = (String::new(), 0i32, false, false);
    let mut prev = ' ';
    for c in s.chars() {
        if quoted {
            cur.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            '(' | '[' | '{' | '<' => depth += 1,
            // `->` inside `<TCP:[a->b]>` is not a closing bracket.
            '>' if prev == '-' => {}
            ')' | ']' | '}' | '>' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_owned());
                cur.clear();
                prev = c;
                continue;
            }
            _ => {}
        }
        cur.push(c);
        prev = c;
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

/// `12</a/b>` (or `AT_FDCWD</a>`): the path strace's `-y` printed.
fn fd_path(arg: &str) -> Option<&str> {
    let start = arg.find('<')?;
    let end = arg.rfind('>')?;
    (start < end).then(|| &arg[start + 1..end])
}

/// A quoted string argument.
fn str_arg(arg: &str) -> Option<&str> {
    arg.strip_prefix('"')?.split('"').next()
}

/// A path argument, resolved against its directory descriptor.
fn path_at(dirfd: Option<&str>, arg: &str) -> Option<PathBuf> {
    let p = Path::new(str_arg(arg)?);
    if p.is_absolute() {
        return Some(p.to_owned());
    }
    Some(Path::new(fd_path(dirfd?)?).join(p))
}

#[derive(Debug, Clone, PartialEq)]
enum Ev {
    /// fsync (`data_only`: fdatasync) of a file or directory.
    Sync {
        path: PathBuf,
        data_only: bool,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    /// `openat` with `O_CREAT`.
    Create {
        path: PathBuf,
    },
    Mkdir {
        path: PathBuf,
    },
    Remove {
        path: PathBuf,
    },
    /// Bytes written to a file.
    Write {
        path: PathBuf,
    },
    /// The first bytes of an HTTP answer to the client.
    Answer {
        status: u16,
    },
}

#[derive(Debug)]
struct Event {
    ev: Ev,
    entry: usize,
    exit: usize,
}

fn events(calls: &[Call], server: &str) -> Vec<Event> {
    let socket = format!("TCP:[{server}->");
    let mut out = Vec::new();
    for c in calls.iter().filter(|c| c.ok()) {
        let a = &c.args;
        let arg = |i: usize| a.get(i).map(String::as_str).unwrap_or_default();
        let ev = match c.name.as_str() {
            "fsync" | "fdatasync" => fd_path(arg(0)).map(|p| Ev::Sync {
                path: p.into(),
                data_only: c.name == "fdatasync",
            }),
            "rename" => path_at(None, arg(0))
                .zip(path_at(None, arg(1)))
                .map(|(from, to)| Ev::Rename { from, to }),
            "renameat" | "renameat2" => path_at(Some(arg(0)), arg(1))
                .zip(path_at(Some(arg(2)), arg(3)))
                .map(|(from, to)| Ev::Rename { from, to }),
            "openat" if arg(2).contains("O_CREAT") => {
                fd_path(&c.ret).map(|p| Ev::Create { path: p.into() })
            }
            "mkdir" => path_at(None, arg(0)).map(|path| Ev::Mkdir { path }),
            "mkdirat" => path_at(Some(arg(0)), arg(1)).map(|path| Ev::Mkdir { path }),
            "unlink" | "rmdir" => path_at(None, arg(0)).map(|path| Ev::Remove { path }),
            "unlinkat" => path_at(Some(arg(0)), arg(1)).map(|path| Ev::Remove { path }),
            "write" | "writev" | "pwrite64" | "sendto" | "sendmsg" => {
                let fd = fd_path(arg(0)).unwrap_or_default();
                if fd.starts_with(&socket) {
                    // The first string of the call: `"HTTP/1.1 201 ..."`.
                    let first = a[1..]
                        .iter()
                        .find_map(|x| x.find('"').map(|i| &x[i + 1..]))
                        .unwrap_or_default();
                    first
                        .strip_prefix("HTTP/1.1 ")
                        .and_then(|s| s.get(..3))
                        .and_then(|s| s.parse().ok())
                        .map(|status| Ev::Answer { status })
                } else if fd.starts_with('/') {
                    Some(Ev::Write { path: fd.into() })
                } else {
                    None
                }
            }
            _ => None,
        };
        if let Some(ev) = ev {
            out.push(Event {
                ev,
                entry: c.entry,
                exit: c.exit,
            });
        }
    }
    out.sort_by_key(|e| e.exit);
    out
}

// ---------------------------------------------------------- the discipline

/// What a request must be seen doing (paths relative to the data dir).
#[derive(Debug, Clone)]
enum Expect {
    RenameInto(String),
    Create(String),
    Mkdir(String),
    Remove(String),
    /// Chunk bytes written to (and synced in) this file.
    Write(String),
}

/// One request of the scenario and the status it got.
struct Step {
    label: String,
    status: u16,
    expect: Vec<Expect>,
}

#[derive(Default, Debug)]
struct Checked {
    renames: usize,
    creates: usize,
    mkdirs: usize,
    removes: usize,
    chunk_syncs: usize,
    dir_syncs: usize,
}

/// Checks the events of one request, those between the previous answer's
/// first byte (`lo`) and this one's (`answer`).
fn check_request(
    all: &[Event],
    lo: usize,
    answer: usize,
    root: &Path,
    step: &Step,
    problems: &mut Vec<String>,
) -> Checked {
    let rel = |p: &Path| -> Option<String> {
        p.strip_prefix(root)
            .ok()
            .map(|r| r.to_string_lossy().into_owned())
    };
    let under = |p: &Path, tops: &[&str]| {
        rel(p).is_some_and(|r| {
            tops.iter()
                .any(|t| r == *t || r.starts_with(&format!("{t}/")))
        })
    };
    let window: Vec<&Event> = all
        .iter()
        .filter(|e| e.entry > lo && e.entry < answer)
        .collect();
    let mut checked = Checked::default();
    let mut fail = |what: String| problems.push(format!("{}: {what}", step.label));
    // An fsync of `dir` that starts after line `after` and returns before
    // the answer.
    let dir_synced = |dir: &Path, after: usize| {
        window.iter().any(|e| {
            matches!(&e.ev, Ev::Sync { path, .. } if path == dir)
                && e.entry > after
                && e.exit < answer
        })
    };
    let parent = |p: &Path| p.parent().map(Path::to_owned).unwrap_or_default();
    // Removals of an upload's session are durable when the client asked
    // for them (DELETE); the removal of a completed upload's session is
    // not synced on purpose: if it comes back after a power loss it has no
    // data file, and is unknown to clients.
    let expected_removal = |p: &Path| {
        step.expect
            .iter()
            .any(|x| matches!(x, Expect::Remove(r) if rel(p).as_deref() == Some(r.as_str())))
    };
    const STORE: [&str; 3] = ["blobs", "repositories", "uploads"];

    for e in &window {
        match &e.ev {
            Ev::Rename { from, to } if under(to, &STORE) => {
                checked.renames += 1;
                // A file that garbage collection set aside (`trash/`,
                // `_manifests/trash/`) and a touch puts back was synced
                // when it was first committed.
                let set_aside = rel(from).is_some_and(|r| r.split('/').any(|c| c == "trash"));
                if !set_aside {
                    let synced = all.iter().rev().find(|s| {
                        matches!(&s.ev, Ev::Sync { path, .. } if path == from) && s.exit < e.entry
                    });
                    match synced {
                        None => fail(format!(
                            "{} renamed to {} without an fsync of the file",
                            from.display(),
                            to.display()
                        )),
                        Some(s) => {
                            let written_after = all.iter().any(|w| {
                                matches!(&w.ev, Ev::Write { path } if path == from)
                                    && w.entry > s.entry
                                    && w.entry < e.entry
                            });
                            if written_after {
                                fail(format!(
                                    "{} written after its last fsync, then renamed to {}",
                                    from.display(),
                                    to.display()
                                ));
                            }
                        }
                    }
                }
                if dir_synced(&parent(to), e.exit) {
                    checked.dir_syncs += 1;
                } else {
                    fail(format!(
                        "renamed into {} but {} not fsynced before the answer",
                        to.display(),
                        parent(to).display()
                    ));
                }
            }
            Ev::Create { path } if under(path, &STORE) => {
                checked.creates += 1;
                if dir_synced(&parent(path), e.exit) {
                    checked.dir_syncs += 1;
                } else {
                    fail(format!(
                        "created {} but its directory was not fsynced before the answer",
                        path.display()
                    ));
                }
            }
            Ev::Mkdir { path } if rel(path).is_some() => {
                checked.mkdirs += 1;
                if dir_synced(&parent(path), e.exit) {
                    checked.dir_syncs += 1;
                } else {
                    fail(format!(
                        "made directory {} but its parent was not fsynced before the answer",
                        path.display()
                    ));
                }
            }
            Ev::Remove { path }
                if under(path, &["blobs", "repositories"]) || expected_removal(path) =>
            {
                checked.removes += 1;
                if dir_synced(&parent(path), e.exit) {
                    checked.dir_syncs += 1;
                } else {
                    fail(format!(
                        "removed {} but its directory was not fsynced before the answer",
                        path.display()
                    ));
                }
            }
            _ => {}
        }
    }
    // Bytes written to a file of the store (an upload's chunks): synced
    // after the last write, before the answer. (Scratch files in tmp/ are
    // covered by the rename rule; pins/ is cleared at start-up.)
    let mut last_write: HashMap<&Path, usize> = HashMap::new();
    for e in &window {
        if let Ev::Write { path } = &e.ev
            && under(path, &STORE)
        {
            last_write.insert(path, e.exit);
        }
    }
    for (path, last) in last_write {
        let synced = window.iter().any(|s| {
            matches!(&s.ev, Ev::Sync { path: p, .. } if p == path)
                && s.entry > last
                && s.exit < answer
        });
        if synced {
            checked.chunk_syncs += 1;
        } else {
            fail(format!(
                "wrote to {} but did not fsync it before the answer",
                path.display()
            ));
        }
    }
    // The request did what it was expected to do (so that the rules above
    // were applied to something, and the windows line up).
    for x in &step.expect {
        let seen = window.iter().any(|e| match (x, &e.ev) {
            (Expect::RenameInto(r), Ev::Rename { to, .. }) => rel(to).as_deref() == Some(r),
            (Expect::Create(r), Ev::Create { path }) => rel(path).as_deref() == Some(r),
            (Expect::Mkdir(r), Ev::Mkdir { path }) => rel(path).as_deref() == Some(r),
            (Expect::Remove(r), Ev::Remove { path }) => rel(path).as_deref() == Some(r),
            (Expect::Write(r), Ev::Write { path }) => rel(path).as_deref() == Some(r),
            _ => false,
        });
        if !seen {
            fail(format!("expected {x:?} in the trace of this request"));
        }
    }
    checked
}

/// Runs the scenario's requests one at a time, recording each one's status.
struct Scenario {
    http: reqwest::Client,
    base: String,
    steps: Vec<Step>,
}

impl Scenario {
    async fn send(
        &mut self,
        label: &str,
        req: reqwest::RequestBuilder,
        want: u16,
        expect: Vec<Expect>,
    ) -> reqwest::header::HeaderMap {
        let resp = req.send().await.unwrap_or_else(|e| panic!("{label}: {e}"));
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.bytes().await.unwrap_or_default();
        assert_eq!(status, want, "{label}: {}", String::from_utf8_lossy(&body));
        self.steps.push(Step {
            label: label.to_owned(),
            status,
            expect,
        });
        headers
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// `POST` a new upload session; returns its id.
    async fn start_upload(&mut self, label: &str, repo: &str) -> String {
        let req = self
            .http
            .post(self.url(&format!("/v2/{repo}/blobs/uploads/")));
        let h = self.send(label, req, 202, Vec::new()).await;
        let location = h
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let id = upload_id(location);
        // Expectations known only now: the session's directory, data file
        // and owner file.
        if let Some(step) = self.steps.last_mut() {
            step.expect = vec![
                Expect::Mkdir(format!("uploads/{id}")),
                Expect::Create(format!("uploads/{id}/data")),
                Expect::RenameInto(format!("uploads/{id}/repo")),
            ];
        }
        id
    }

    async fn patch(&mut self, label: &str, repo: &str, id: &str, offset: usize, chunk: &[u8]) {
        let req = self
            .http
            .patch(self.url(&format!("/v2/{repo}/blobs/uploads/{id}")))
            .header("content-type", "application/octet-stream")
            .header(
                "content-range",
                format!("{offset}-{}", offset + chunk.len() - 1),
            )
            .body(chunk.to_vec());
        self.send(
            label,
            req,
            202,
            vec![Expect::Write(format!("uploads/{id}/data"))],
        )
        .await;
    }

    async fn put_manifest(
        &mut self,
        label: &str,
        repo: &str,
        reference: &str,
        body: &[u8],
        expect: Vec<Expect>,
    ) {
        let req = self
            .http
            .put(self.url(&format!("/v2/{repo}/manifests/{reference}")))
            .header("content-type", OCI_MANIFEST)
            .body(body.to_vec());
        self.send(label, req, 201, expect).await;
    }
}

fn blob_rel(digest: &str) -> String {
    let h = hex_of(digest);
    format!("blobs/sha256/{}/{h}", &h[..2])
}

fn link_rel(repo: &str, digest: &str) -> String {
    format!("repositories/{repo}/_layers/sha256/{}", hex_of(digest))
}

fn revision_rel(repo: &str, digest: &str) -> String {
    format!(
        "repositories/{repo}/_manifests/revisions/sha256/{}",
        hex_of(digest)
    )
}

fn tag_rel(repo: &str, tag: &str) -> String {
    format!("repositories/{repo}/_manifests/tags/{tag}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_commit_is_fsynced_before_its_answer() {
    let started = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap().join("data");
    let trace_file = dir.path().join("trace");
    let berth = Traced::start(&root, &trace_file);
    let mut s = Scenario {
        http: http_client(),
        base: berth.url(),
        steps: Vec::new(),
    };
    let (a, b) = ("durable/app", "durable/other");
    let blob1 = content(1, 3000);
    let blob2 = content(2, 70_000);
    // Larger than the server's write batch: several writes per chunk.
    let blob3 = content(3, (3 << 20) / 2 + 777);
    let blob4 = content(4, 200_000);
    let blob5 = content(5, 5000);
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let (d1, d2, d3, d4, dc) = (
        digest_of(&blob1),
        digest_of(&blob2),
        digest_of(&blob3),
        digest_of(&blob4),
        digest_of(&config),
    );

    let req = s.http.get(s.url("/v2/"));
    s.send("GET /v2/", req, 200, Vec::new()).await;

    // Monolithic upload in one POST.
    let req = s
        .http
        .post(s.url(&format!("/v2/{a}/blobs/uploads/?digest={d1}")))
        .body(blob1.clone());
    s.send(
        "monolithic POST ?digest=",
        req,
        201,
        vec![
            Expect::RenameInto(blob_rel(&d1)),
            Expect::Mkdir(format!("repositories/{a}")),
            Expect::Create(link_rel(a, &d1)),
        ],
    )
    .await;

    // Monolithic upload: POST, then PUT with the whole body.
    let id = s.start_upload("upload start (POST)", a).await;
    let req = s
        .http
        .put(s.url(&format!("/v2/{a}/blobs/uploads/{id}?digest={d2}")))
        .body(blob2.clone());
    s.send(
        "monolithic PUT ?digest=",
        req,
        201,
        vec![
            Expect::Write(format!("uploads/{id}/data")),
            Expect::RenameInto(blob_rel(&d2)),
            Expect::Create(link_rel(a, &d2)),
        ],
    )
    .await;

    // Chunked: two PATCHes, then a PUT without a body.
    let id = s.start_upload("chunked: POST", a).await;
    let cut = blob3.len() / 3 * 2;
    s.patch("chunked: PATCH 1", a, &id, 0, &blob3[..cut]).await;
    s.patch("chunked: PATCH 2", a, &id, cut, &blob3[cut..])
        .await;
    let req = s
        .http
        .put(s.url(&format!("/v2/{a}/blobs/uploads/{id}?digest={d3}")));
    s.send(
        "chunked: completing PUT",
        req,
        201,
        vec![
            Expect::RenameInto(blob_rel(&d3)),
            Expect::Create(link_rel(a, &d3)),
        ],
    )
    .await;

    // Chunked with the last chunk in the completing PUT.
    let id = s.start_upload("chunked, last chunk in PUT: POST", a).await;
    s.patch(
        "chunked, last chunk in PUT: PATCH",
        a,
        &id,
        0,
        &blob4[..1000],
    )
    .await;
    let req = s
        .http
        .put(s.url(&format!("/v2/{a}/blobs/uploads/{id}?digest={d4}")))
        .header("content-range", format!("1000-{}", blob4.len() - 1))
        .body(blob4[1000..].to_vec());
    s.send(
        "chunked, last chunk in PUT: PUT",
        req,
        201,
        vec![
            Expect::Write(format!("uploads/{id}/data")),
            Expect::RenameInto(blob_rel(&d4)),
            Expect::Create(link_rel(a, &d4)),
        ],
    )
    .await;

    // The config blob.
    let req = s
        .http
        .post(s.url(&format!("/v2/{a}/blobs/uploads/?digest={dc}")))
        .body(config.clone());
    s.send(
        "config blob",
        req,
        201,
        vec![Expect::RenameInto(blob_rel(&dc))],
    )
    .await;

    // Cross-repository mount into a new repository.
    let req = s
        .http
        .post(s.url(&format!("/v2/{b}/blobs/uploads/?mount={d1}&from={a}")));
    s.send(
        "cross-repository mount",
        req,
        201,
        vec![
            Expect::Mkdir(format!("repositories/{b}")),
            Expect::Create(link_rel(b, &d1)),
        ],
    )
    .await;

    // Upload of content the store already has: only the link is new.
    let req = s
        .http
        .post(s.url(&format!("/v2/{b}/blobs/uploads/?digest={d2}")))
        .body(blob2.clone());
    s.send(
        "upload of existing content",
        req,
        201,
        vec![Expect::Create(link_rel(b, &d2))],
    )
    .await;

    // Manifests: by tag, by digest, a tag overwrite, a referrer.
    let m1 = manifest(&config, &[&blob1, &blob2], None);
    let m2 = manifest(&config, &[&blob3, &blob4], None);
    let (dm1, dm2) = (digest_of(&m1), digest_of(&m2));
    s.put_manifest(
        "manifest PUT by tag",
        a,
        "v1",
        &m1,
        vec![
            Expect::RenameInto(blob_rel(&dm1)),
            Expect::RenameInto(revision_rel(a, &dm1)),
            Expect::RenameInto(tag_rel(a, "v1")),
        ],
    )
    .await;
    s.put_manifest(
        "manifest PUT by digest",
        a,
        &dm2,
        &m2,
        vec![
            Expect::RenameInto(blob_rel(&dm2)),
            Expect::RenameInto(revision_rel(a, &dm2)),
        ],
    )
    .await;
    s.put_manifest(
        "tag overwrite",
        a,
        "v1",
        &m2,
        vec![Expect::RenameInto(tag_rel(a, "v1"))],
    )
    .await;
    s.put_manifest(
        "second tag",
        a,
        "v2",
        &m1,
        vec![Expect::RenameInto(tag_rel(a, "v2"))],
    )
    .await;
    let m3 = manifest(&config, &[&blob1], Some((&dm1, m1.len())));
    let dm3 = digest_of(&m3);
    let referrer_rel = format!(
        "repositories/{a}/_referrers/sha256/{}/sha256-{}",
        hex_of(&dm1),
        hex_of(&dm3)
    );
    s.put_manifest(
        "referrers update (manifest with a subject)",
        a,
        &dm3,
        &m3,
        vec![
            Expect::RenameInto(blob_rel(&dm3)),
            Expect::RenameInto(revision_rel(a, &dm3)),
            Expect::RenameInto(referrer_rel.clone()),
        ],
    )
    .await;

    // Deletes.
    let req = s.http.delete(s.url(&format!("/v2/{a}/manifests/v1")));
    s.send(
        "tag DELETE",
        req,
        202,
        vec![Expect::Remove(tag_rel(a, "v1"))],
    )
    .await;
    let req = s.http.delete(s.url(&format!("/v2/{a}/manifests/{dm3}")));
    s.send(
        "manifest DELETE (referrer)",
        req,
        202,
        vec![
            Expect::Remove(referrer_rel),
            Expect::Remove(revision_rel(a, &dm3)),
        ],
    )
    .await;
    let req = s.http.delete(s.url(&format!("/v2/{a}/manifests/{dm1}")));
    s.send(
        "manifest DELETE (tagged)",
        req,
        202,
        vec![
            Expect::Remove(tag_rel(a, "v2")),
            Expect::Remove(revision_rel(a, &dm1)),
        ],
    )
    .await;
    let req = s.http.delete(s.url(&format!("/v2/{b}/blobs/{d1}")));
    s.send(
        "blob DELETE",
        req,
        202,
        vec![Expect::Remove(link_rel(b, &d1))],
    )
    .await;

    // An upload cancelled by the client.
    let id = s.start_upload("cancelled upload: POST", a).await;
    s.patch("cancelled upload: PATCH", a, &id, 0, &blob5).await;
    let req = s.http.delete(s.url(&format!("/v2/{a}/blobs/uploads/{id}")));
    s.send(
        "upload DELETE",
        req,
        204,
        vec![Expect::Remove(format!("uploads/{id}"))],
    )
    .await;

    // A blob that an interrupted garbage collection left set aside
    // (`trash/`, see registry/src/storage/fs.rs): an upload of the same
    // content puts it back, and answers 201 on the strength of it.
    std::fs::rename(
        root.join(blob_rel(&d2)),
        root.join("trash").join(format!("sha256-{}", hex_of(&d2))),
    )
    .unwrap();
    let req = s
        .http
        .post(s.url(&format!("/v2/{a}/blobs/uploads/?digest={d2}")))
        .body(blob2.clone());
    s.send(
        "upload of content set aside by garbage collection",
        req,
        201,
        vec![Expect::RenameInto(blob_rel(&d2))],
    )
    .await;
    // Likewise a manifest revision, put back by an index that needs it.
    let trash = root.join(format!("repositories/{a}/_manifests/trash/sha256"));
    std::fs::create_dir_all(&trash).unwrap();
    std::fs::rename(root.join(revision_rel(a, &dm2)), trash.join(hex_of(&dm2))).unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": dm2, "size": m2.len()}],
    }))
    .unwrap();
    let req = s
        .http
        .put(s.url(&format!("/v2/{a}/manifests/multi")))
        .header("content-type", OCI_INDEX)
        .body(index.clone());
    let di = digest_of(&index);
    s.send(
        "index PUT needing a manifest set aside by garbage collection",
        req,
        201,
        vec![
            Expect::RenameInto(revision_rel(a, &dm2)),
            Expect::RenameInto(blob_rel(&di)),
            Expect::RenameInto(revision_rel(a, &di)),
            Expect::RenameInto(tag_rel(a, "multi")),
        ],
    )
    .await;

    let requests_done = started.elapsed();
    let log = berth.log.clone();
    berth.stop();
    let text = std::fs::read_to_string(&trace_file).unwrap();
    let calls = parse_trace(&text);
    let server = s.base.trim_start_matches("http://").to_owned();
    let all = events(&calls, &server);
    let answers: Vec<(usize, u16)> = all
        .iter()
        .filter_map(|e| match e.ev {
            Ev::Answer { status } => Some((e.entry, status)),
            _ => None,
        })
        .collect();
    let statuses: Vec<u16> = answers.iter().map(|a| a.1).collect();
    let wanted: Vec<u16> = s.steps.iter().map(|st| st.status).collect();
    assert_eq!(
        statuses, wanted,
        "the answers in the trace do not line up with the requests"
    );
    let mut problems = Vec::new();
    let mut total = Checked::default();
    // The first request's window also holds the start-up, which answers
    // nothing: the scenario opens with a `GET /v2/` to absorb it.
    let mut lo = answers[0].0;
    for (step, (answer, _)) in s.steps.iter().zip(&answers).skip(1) {
        let c = check_request(&all, lo, *answer, &root, step, &mut problems);
        eprintln!(
            "{:<52} {} | renames {:>2}, creates {:>2}, mkdirs {:>2}, removes {:>2}, synced chunk files {}, directory fsyncs {:>2}",
            step.label,
            step.status,
            c.renames,
            c.creates,
            c.mkdirs,
            c.removes,
            c.chunk_syncs,
            c.dir_syncs
        );
        total.renames += c.renames;
        total.creates += c.creates;
        total.mkdirs += c.mkdirs;
        total.removes += c.removes;
        total.chunk_syncs += c.chunk_syncs;
        total.dir_syncs += c.dir_syncs;
        lo = *answer;
    }
    eprintln!(
        "{} requests, {} trace lines: {total:?}; requests {:.1?}, total {:.1?}",
        s.steps.len(),
        text.lines().count(),
        requests_done,
        started.elapsed()
    );
    assert!(
        problems.is_empty(),
        "commit discipline violated:\n  {}\nberth's log:\n{}",
        problems.join("\n  "),
        log.lock().unwrap().join("\n")
    );
}

// --------------------------------------------------------------- full disk

/// A small filesystem mounted for a test (tmpfs, else an ext4 image on a
/// loop device); unmounted, by its exact path, when dropped.
struct SmallFs {
    mnt: PathBuf,
    kind: &'static str,
    _dir: tempfile::TempDir,
}

impl SmallFs {
    /// `BERTH_TEST_SMALL_FS=ext4` skips tmpfs (to exercise the fallback).
    fn mount(mib: u64) -> Result<SmallFs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        let tmpfs = if std::env::var("BERTH_TEST_SMALL_FS").is_ok_and(|v| v == "ext4") {
            Err(std::io::Error::other("BERTH_TEST_SMALL_FS=ext4"))
        } else {
            Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
                .arg(&mnt)
                .output()
        };
        match tmpfs {
            Ok(o) if o.status.success() => {
                return Ok(SmallFs {
                    mnt,
                    kind: "tmpfs",
                    _dir: dir,
                });
            }
            _ => {}
        }
        let why_tmpfs = match tmpfs {
            Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_owned(),
            Err(e) => e.to_string(),
        };
        let img = dir.path().join("fs.img");
        let made = std::fs::File::create(&img)
            .and_then(|f| f.set_len(mib << 20))
            .map_err(|e| e.to_string())
            .and_then(|()| {
                let o = Command::new("mkfs.ext4")
                    .args(["-q", "-F", "-m", "0"])
                    .arg(&img)
                    .output()
                    .map_err(|e| e.to_string())?;
                o.status
                    .success()
                    .then_some(())
                    .ok_or_else(|| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            })
            .and_then(|()| {
                let o = Command::new("mount")
                    .args(["-o", "loop"])
                    .arg(&img)
                    .arg(&mnt)
                    .output()
                    .map_err(|e| e.to_string())?;
                o.status
                    .success()
                    .then_some(())
                    .ok_or_else(|| String::from_utf8_lossy(&o.stderr).trim().to_owned())
            });
        match made {
            Ok(()) => Ok(SmallFs {
                mnt,
                kind: "ext4 on a loop device",
                _dir: dir,
            }),
            Err(why_loop) => Err(format!(
                "cannot mount a small filesystem: tmpfs: {why_tmpfs}; loop-mounted ext4: {why_loop}"
            )),
        }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        for _ in 0..50 {
            match Command::new("umount").arg(&self.mnt).status() {
                Ok(s) if s.success() => return,
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        eprintln!("could not unmount {}", self.mnt.display());
    }
}

/// Appends to `path` until its filesystem is full; then shrinks it so that
/// `leave` bytes are free. Returns the file's size.
fn fill_leaving(path: &Path, leave: u64) -> u64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    // Big writes, then block-sized ones after a sync (ext4's delayed
    // allocation reserves more than it finally uses).
    let block = std::os::unix::fs::MetadataExt::blksize(&f.metadata().unwrap()) as usize;
    for size in [64 << 10, block, block] {
        let chunk = vec![0xA5u8; size];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
        let _ = f.sync_all();
    }
    let len = f.metadata().unwrap().len();
    assert!(
        len >= leave,
        "the filler is smaller than the space to leave"
    );
    f.set_len(len - leave).unwrap();
    f.sync_all().unwrap();
    len - leave
}

/// A refusal for lack of space: 507, the spec's error body, a message that
/// says what happened.
fn assert_storage_full(what: &str, status: u16, body: &[u8]) {
    let text = String::from_utf8_lossy(body);
    assert_eq!(status, 507, "{what}: {text}");
    let v: serde_json::Value =
        serde_json::from_slice(body).unwrap_or_else(|e| panic!("{what}: {e}: {text}"));
    assert_eq!(v["errors"][0]["code"], "UNKNOWN", "{what}: {text}");
    let message = v["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("storage is full"),
        "{what}: message {message:?}"
    );
}

/// The store is consistent: `tmp/` and `pins/` are empty, every blob file
/// hashes to its name, the only upload sessions are `sessions`, and every
/// blob in `acked` downloads intact.
async fn check_store(
    http: &reqwest::Client,
    base: &str,
    root: &Path,
    repo: &str,
    acked: &[(String, Vec<u8>)],
    sessions: &[&str],
) {
    let scratch = files_under(&root.join("tmp"));
    assert!(scratch.is_empty(), "tmp/ holds {scratch:?}");
    let pins = files_under(&root.join("pins"));
    assert!(pins.is_empty(), "pins/ holds {pins:?}");
    for f in files_under(&root.join("blobs")) {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        let data = std::fs::read(&f).unwrap();
        assert_eq!(sha256_hex(&data), name, "{} is corrupt", f.display());
    }
    let mut found: Vec<String> = std::fs::read_dir(root.join("uploads"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    found.sort();
    let mut want: Vec<String> = sessions.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert_eq!(found, want, "upload sessions on disk");
    for (digest, data) in acked {
        let resp = http
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "acknowledged blob {digest}");
        let got = resp.bytes().await.unwrap();
        assert!(got[..] == data[..], "acknowledged blob {digest} differs");
    }
}

async fn status_of(resp: reqwest::Response) -> (u16, Vec<u8>) {
    let status = resp.status().as_u16();
    (status, resp.bytes().await.unwrap_or_default().to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_gives_a_clear_error_and_no_corruption() {
    let started = Instant::now();
    let fs = match SmallFs::mount(16) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED full_disk_gives_a_clear_error_and_no_corruption: {why}");
            return;
        }
    };
    let mnt = fs.mnt.clone();
    // Space to give back after the disk first fills.
    let reserve = mnt.join("reserve");
    std::fs::write(&reserve, vec![0x5Au8; 3 << 20]).unwrap();
    let filler = mnt.join("filler");
    let root = mnt.join("data");
    let berth = Berth::start_registry(&root, &["--auth", "none"]);
    let (http, base) = (http_client(), berth.url());
    let repo = "full/disk";
    let blob_url = |d: &str| format!("{base}/v2/{repo}/blobs/{d}");
    let push_url = |d: &str| format!("{base}/v2/{repo}/blobs/uploads/?digest={d}");

    // 1. Monolithic pushes of 1.5 MiB blobs until the disk is full.
    let mut acked: Vec<(String, Vec<u8>)> = Vec::new();
    let mut refused = None;
    for i in 0..40 {
        let data = content(1000 + i, (3 << 20) / 2);
        let d = digest_of(&data);
        let resp = http
            .post(push_url(&d))
            .body(data.clone())
            .send()
            .await
            .unwrap_or_else(|e| panic!("push {i}: no answer: {e:?}"));
        match status_of(resp).await {
            (201, _) => acked.push((d, data)),
            (status, body) => {
                refused = Some((d, data, status, body));
                break;
            }
        }
    }
    let (refused_digest, refused_data, status, body) = refused.expect("the disk never filled");
    assert!(
        acked.len() >= 4,
        "only {} pushes before the disk filled",
        acked.len()
    );
    assert_storage_full("blob push on a full disk", status, &body);
    assert!(
        berth.wait_for_log("ENOSPC", Duration::from_secs(5)),
        "no log line names ENOSPC"
    );
    let line = berth
        .log
        .lock()
        .unwrap()
        .iter()
        .find(|l| l.contains("ENOSPC"))
        .cloned()
        .unwrap_or_default();
    assert!(
        line.contains("ERROR") || line.contains("WARN"),
        "ENOSPC logged below warn: {line}"
    );
    for method in [reqwest::Method::HEAD, reqwest::Method::GET] {
        let resp = http
            .request(method.clone(), blob_url(&refused_digest))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{method} of the refused blob");
    }
    check_store(&http, &base, &root, repo, &acked, &[]).await;
    eprintln!(
        "{}: {} blobs of 1.5 MiB acknowledged, then 507; nothing partial, all intact ({:.1?})",
        fs.kind,
        acked.len(),
        started.elapsed()
    );

    // 2. A chunked upload whose second chunk finds only 64 KiB free.
    std::fs::remove_file(&reserve).unwrap();
    let resp = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let location = header(&resp, "location");
    let id = upload_id(&location);
    let upload_url = format!("{base}/v2/{repo}/blobs/uploads/{id}");
    let chunked = content(2000, 2 << 20);
    let half = 1 << 20;
    let patch = |from: usize, to: usize| {
        http.patch(&upload_url)
            .header("content-type", "application/octet-stream")
            .header("content-range", format!("{from}-{}", to - 1))
            .body(chunked[from..to].to_vec())
    };
    let (status, body) = status_of(patch(0, half).send().await.unwrap()).await;
    assert_eq!(status, 202, "{}", String::from_utf8_lossy(&body));
    fill_leaving(&filler, 64 << 10);
    let (status, body) = status_of(patch(half, chunked.len()).send().await.unwrap()).await;
    assert_storage_full("PATCH on a full disk", status, &body);
    let resp = http.get(&upload_url).send().await.unwrap();
    assert_eq!(resp.status(), 204, "the session survives a failed PATCH");
    assert_eq!(
        header(&resp, "range"),
        format!("0-{}", half - 1),
        "the failed chunk is rolled back to the last acknowledged offset"
    );
    let on_disk = std::fs::metadata(root.join(format!("uploads/{id}/data")))
        .unwrap()
        .len();
    assert_eq!(
        on_disk, half as u64,
        "upload data file after the failed chunk"
    );

    // 3. A manifest PUT with two blocks free: room for its record for
    // garbage collection (pins/) and its content, not for its revision.
    // Then a blob push.
    let block = std::os::unix::fs::MetadataExt::blksize(&std::fs::metadata(&mnt).unwrap());
    fill_leaving(&filler, 2 * block);
    let manifest_body = {
        let layers: Vec<&[u8]> = acked[1..3].iter().map(|(_, d)| d.as_slice()).collect();
        manifest(&acked[0].1, &layers, None)
    };
    let manifest_digest = digest_of(&manifest_body);
    let put_manifest = || {
        http.put(format!("{base}/v2/{repo}/manifests/latest"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest_body.clone())
    };
    let (status, body) = status_of(put_manifest().send().await.unwrap()).await;
    assert_storage_full("manifest PUT on a full disk", status, &body);
    for reference in ["latest", manifest_digest.as_str()] {
        let resp = http
            .get(format!("{base}/v2/{repo}/manifests/{reference}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            404,
            "manifest {reference} after a refused PUT"
        );
    }
    let resp = http
        .post(push_url(&refused_digest))
        .body(refused_data.clone())
        .send()
        .await
        .unwrap();
    let (status, body) = status_of(resp).await;
    assert_storage_full("blob push on a full disk, again", status, &body);
    // A body much larger than what the server reads before it refuses:
    // the client still gets the answer, not a reset connection.
    let big = content(3000, 40 << 20);
    let resp = http
        .post(push_url(&digest_of(&big)))
        .body(big)
        .send()
        .await
        .unwrap_or_else(|e| panic!("40 MiB push on a full disk: no answer: {e:?}"));
    let (status, body) = status_of(resp).await;
    assert_storage_full("40 MiB push on a full disk", status, &body);
    // Not a byte free: a new upload session is refused, and leaves nothing.
    fill_leaving(&filler, 0);
    let resp = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    let (status, body) = status_of(resp).await;
    assert_storage_full("upload session start on a full disk", status, &body);
    check_store(&http, &base, &root, repo, &acked, &[&id]).await;
    eprintln!(
        "chunk refused and rolled back to {half}; manifest PUT and blob push refused; nothing partial ({:.1?})",
        started.elapsed()
    );

    // 4. Space freed: everything that failed goes through.
    std::fs::remove_file(&filler).unwrap();
    let (status, body) = status_of(patch(half, chunked.len()).send().await.unwrap()).await;
    assert_eq!(
        status,
        202,
        "PATCH resumed: {}",
        String::from_utf8_lossy(&body)
    );
    let chunked_digest = digest_of(&chunked);
    let resp = http
        .put(format!("{upload_url}?digest={chunked_digest}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "chunked upload completed");
    acked.push((chunked_digest, chunked.clone()));
    let resp = http
        .post(push_url(&refused_digest))
        .body(refused_data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        201,
        "the refused blob pushes once space is free"
    );
    acked.push((refused_digest, refused_data));
    let (status, body) = status_of(put_manifest().send().await.unwrap()).await;
    assert_eq!(
        status,
        201,
        "manifest PUT: {}",
        String::from_utf8_lossy(&body)
    );
    let resp = http
        .get(format!("{base}/v2/{repo}/manifests/latest"))
        .header("accept", OCI_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap()[..] == manifest_body[..]);
    check_store(&http, &base, &root, repo, &acked, &[]).await;
    eprintln!(
        "space freed: chunked upload resumed and completed, refused blob and manifest pushed; {} blobs intact ({:.1?})",
        acked.len(),
        started.elapsed()
    );
    drop(berth);
    drop(fs);
}

// ------------------------------------------------- the checker, on its own

/// The checker's verdicts on a hand-written trace: `answers` HTTP answers
/// of a server on 127.0.0.1:1 under a data dir `/r`; the first window is
/// skipped as in the real test.
fn verdicts(trace: &str) -> Vec<String> {
    let all = events(&parse_trace(trace), "127.0.0.1:1");
    let answers: Vec<usize> = all
        .iter()
        .filter(|e| matches!(e.ev, Ev::Answer { .. }))
        .map(|e| e.entry)
        .collect();
    let mut problems = Vec::new();
    for w in answers.windows(2) {
        let step = Step {
            label: "synthetic".into(),
            status: 201,
            expect: vec![Expect::RenameInto(
                "repositories/x/_manifests/tags/t".into(),
            )],
        };
        check_request(&all, w[0], w[1], Path::new("/r"), &step, &mut problems);
    }
    problems
}

/// A commit of a tag file (write, fsync, rename, answer) with
/// `before_rename` just before the rename and `between` between the rename
/// and the answer.
fn tag_commit(before_rename: &str, between: &str) -> String {
    let answer = |pid, status| {
        format!(
            "{pid} 10:00:00.000000 writev(7<TCP:[127.0.0.1:1->127.0.0.1:2]>, \
             [{{iov_base=\"HTTP/1.1 {status}\\r\\ncontent-length: 0\\r\\n\"..., iov_len=40}}], 1) = 40\n"
        )
    };
    [
        answer(101, "200 OK"),
        "100 10:00:00.000001 openat(AT_FDCWD</>, \"/r/tmp/aa\", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0666) = 5</r/tmp/aa>\n".into(),
        "100 10:00:00.000002 write(5</r/tmp/aa>, \"sha256:0\", 8) = 8\n".into(),
        "100 10:00:00.000003 fsync(5</r/tmp/aa> <unfinished ...>\n".into(),
        "101 10:00:00.000004 write(4<anon_inode:[eventfd]>, \"\\1\\0\\0\\0\\0\\0\\0\\0\", 8) = 8\n".into(),
        " 100 10:00:00.000005 <... fsync resumed>) = 0\n".into(),
        before_rename.into(),
        "100 10:00:00.000006 rename(\"/r/tmp/aa\", \"/r/repositories/x/_manifests/tags/t\") = 0\n".into(),
        between.into(),
        answer(101, "201 Created"),
    ]
    .concat()
}

#[test]
fn the_checker_flags_what_it_should() {
    let dir_sync = "100 10:00:00.000007 openat(AT_FDCWD</>, \"/r/repositories/x/_manifests/tags\", O_RDONLY|O_CLOEXEC) = 6</r/repositories/x/_manifests/tags>\n\
                    100 10:00:00.000008 fsync(6</r/repositories/x/_manifests/tags>) = 0\n";
    assert_eq!(verdicts(&tag_commit("", dir_sync)), Vec::<String>::new());
    // No directory fsync before the answer.
    let v = verdicts(&tag_commit("", ""));
    assert!(
        v.len() == 1 && v[0].contains("not fsynced before the answer"),
        "{v:?}"
    );
    // The directory fsynced only after the answer.
    let v = verdicts(&format!("{}{dir_sync}", tag_commit("", "")));
    assert!(
        v.len() == 1 && v[0].contains("not fsynced before the answer"),
        "{v:?}"
    );
    // Written after its fsync.
    let late = "100 10:00:00.000005 write(5</r/tmp/aa>, \"x\", 1) = 1\n";
    let v = verdicts(&tag_commit(late, dir_sync));
    assert!(
        v.len() == 1 && v[0].contains("written after its last fsync"),
        "{v:?}"
    );
    // Never fsynced: another file was.
    let v = verdicts(&tag_commit("", dir_sync).replace("fsync(5</r/tmp/aa>", "fsync(5</r/tmp/bb>"));
    assert!(
        v.len() == 1 && v[0].contains("without an fsync of the file"),
        "{v:?}"
    );
    // A failed rename is no commit (and the expected one is then missing).
    let v = verdicts(&tag_commit("", "").replace(
        "tags/t\") = 0",
        "tags/t\") = -1 ENOENT (No such file or directory)",
    ));
    assert!(
        v.len() == 1 && v[0].contains("expected RenameInto"),
        "{v:?}"
    );
}
