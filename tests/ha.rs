//! Single writer and fast takeover, black box: the real binary on loopback.
//! A second instance on a data directory stands by (health yes, readiness
//! no, API 503, not one byte written there) and takes over when the
//! active one is killed or stopped, serving authenticated pulls of what
//! was pushed before; SIGTERM lets a slow upload finish within the grace
//! and exits 0; pid files; the exit statuses a service manager acts on.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::berth::{Berth, client_trusting};
use common::clients::sha256_digest;

/// Generous: the target (under 1 s) is measured by bench/takeover.
const TAKEOVER_BOUND: Duration = Duration::from_secs(5);

/// Every file and directory under `dir`: path -> (kind, size, mtime, mode).
fn listing(dir: &Path) -> BTreeMap<PathBuf, (bool, u64, std::time::SystemTime, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path.clone());
            }
            out.insert(
                path.strip_prefix(dir).unwrap().to_owned(),
                (
                    meta.is_dir(),
                    meta.len(),
                    meta.modified().unwrap(),
                    meta.permissions().mode(),
                ),
            );
        }
    }
    out
}

async fn token(c: &reqwest::Client, identity: &str, password: &str, scope: &str) -> String {
    let r = c
        .get(format!(
            "https://{identity}/token?service=berth-registry&scope={scope}"
        ))
        .basic_auth("admin", Some(password))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "token from {identity}");
    let body: serde_json::Value = r.json().await.unwrap();
    body["token"].as_str().unwrap().to_owned()
}

/// An image (config, one layer, manifest) pushed as `repo:tag`; returns
/// the manifest and the blobs by digest.
async fn push_image(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    repo: &str,
    tag: &str,
) -> (Vec<u8>, BTreeMap<String, Vec<u8>>) {
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
            .to_vec();
    let layer: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut blobs = BTreeMap::new();
    for blob in [&config, &layer] {
        let digest = sha256_digest(blob);
        let r = c
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .bearer_auth(token)
            .header("content-type", "application/octet-stream")
            .body(blob.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201, "push blob {digest}");
        blobs.insert(digest, blob.clone());
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256_digest(&config), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": sha256_digest(&layer), "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let r = c
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .bearer_auth(token)
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "push manifest");
    (manifest, blobs)
}

/// Pulls `repo:tag` and checks the manifest and every blob byte for byte.
async fn pull_and_verify(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    repo: &str,
    tag: &str,
    manifest: &[u8],
    blobs: &BTreeMap<String, Vec<u8>>,
) {
    let r = c
        .get(format!("{base}/v2/{repo}/manifests/{tag}"))
        .bearer_auth(token)
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.bytes().await.unwrap(), manifest);
    for (digest, data) in blobs {
        let r = c
            .get(format!("{base}/v2/{repo}/blobs/{digest}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{digest}");
        assert_eq!(&r.bytes().await.unwrap()[..], &data[..], "{digest}");
    }
}

async fn get(c: &reqwest::Client, url: &str) -> (u16, String) {
    let r = c.get(url).send().await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// What a standby answers on both ports of `berth serve`.
async fn assert_standby(c: &reqwest::Client, b: &Berth, data: &Path) {
    for addr in [&b.addr, b.identity_addr.as_ref().unwrap()] {
        assert_eq!(
            get(c, &format!("https://{addr}/healthz")).await,
            (200, "ok".into())
        );
        assert_eq!(
            get(c, &format!("https://{addr}/readyz")).await,
            (503, "standby".into())
        );
    }
    for url in [
        format!("https://{}/v2/", b.addr),
        format!("https://{}/v2/admin/app/manifests/v1", b.addr),
        format!(
            "https://{}/token?service=berth-registry",
            b.identity_addr.as_ref().unwrap()
        ),
    ] {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 503, "{url}");
        assert_eq!(r.headers()["retry-after"], "1");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["errors"][0]["code"], "UNAVAILABLE", "{url}");
        assert_eq!(
            body["errors"][0]["message"],
            format!("standby: another berth instance holds {}", data.display())
        );
    }
}

#[tokio::test]
async fn a_standby_writes_nothing_and_takes_over_when_the_active_is_killed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let active = Berth::start_all(&data, "127.0.0.1", &[], &[]);
    let c = client_trusting(&active.ca_cert());
    let password = active.admin_password();
    let scope = "repository:admin/app:pull,push";
    let old_token = token(&c, active.identity_addr.as_ref().unwrap(), &password, scope).await;
    let (manifest, blobs) =
        push_image(&c, &active.https_url(), &old_token, "admin/app", "v1").await;
    let r = c
        .get(format!("https://{}/readyz", active.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ready");

    // The standby: healthy, not ready, the API refused, nothing written.
    let before = listing(&data);
    let lock_before = std::fs::read(data.join("berth.lock")).unwrap();
    let standby = Berth::start_all_standby(&data, "127.0.0.1", &[], &[]);
    // It serves the data directory's certificate: the CA's clients trust it.
    assert_standby(&c, &standby, &data).await;
    let log = standby.log.lock().unwrap().join("\n");
    assert!(
        log.contains(&format!("holder=\"pid {} (berth serve)\"", active.pid())),
        "{log}"
    );
    assert!(!log.contains("temporary self-signed"), "{log}");
    assert_eq!(
        listing(&data),
        before,
        "the standby wrote in the data directory"
    );
    assert_eq!(std::fs::read(data.join("berth.lock")).unwrap(), lock_before);

    // SIGKILL the active: the standby serves a pull of what was pushed,
    // with the token the old instance issued and with one of its own.
    let killed = Instant::now();
    active.kill();
    let manifest_url = format!("{}/v2/admin/app/manifests/v1", standby.https_url());
    loop {
        let r = c
            .get(&manifest_url)
            .bearer_auth(&old_token)
            .header("accept", "application/vnd.oci.image.manifest.v1+json")
            .send()
            .await
            .unwrap();
        if r.status() == 200 {
            break;
        }
        assert_eq!(r.status(), 503);
        assert!(
            killed.elapsed() < TAKEOVER_BOUND,
            "no takeover within {TAKEOVER_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("takeover after SIGKILL: {:?}", killed.elapsed());
    let base = standby.https_url();
    pull_and_verify(&c, &base, &old_token, "admin/app", "v1", &manifest, &blobs).await;
    let new_token = token(
        &c,
        standby.identity_addr.as_ref().unwrap(),
        &password,
        scope,
    )
    .await;
    pull_and_verify(&c, &base, &new_token, "admin/app", "v1", &manifest, &blobs).await;
    for addr in [&standby.addr, standby.identity_addr.as_ref().unwrap()] {
        assert_eq!(
            get(&c, &format!("https://{addr}/readyz")).await,
            (200, "ready".into())
        );
    }
    assert!(standby.wait_for_log("took over: serving", Duration::from_secs(1)));
    // And it writes: a push after the takeover.
    push_image(&c, &base, &new_token, "admin/app", "v2").await;

    // The killed one comes back as the standby of the new active.
    let again = Berth::start_all_standby(&data, "127.0.0.1", &[], &[]);
    assert_standby(&c, &again, &data).await;
    let log = again.log.lock().unwrap().join("\n");
    assert!(
        log.contains(&format!("holder=\"pid {} (berth serve)\"", standby.pid())),
        "{log}"
    );
    assert!(standby.terminate().success());
    assert!(again.wait_for_log("registry listening", TAKEOVER_BOUND));
    pull_and_verify(
        &c,
        &again.https_url(),
        &new_token,
        "admin/app",
        "v1",
        &manifest,
        &blobs,
    )
    .await;
}

/// A standby that finds no certificate to read (the directory was locked
/// by something that did not create one) serves a temporary one, and
/// the real one after the takeover.
#[tokio::test]
async fn a_standby_without_a_certificate_serves_a_temporary_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A registry alone over plain HTTP holds the directory: no tls/ yet.
    let holder = Berth::start_registry(&data, &["--auth", "none"]);
    let standby = Berth::start_all_standby(&data, "127.0.0.1", &[], &[]);
    assert!(!data.join("tls").exists());
    let log = standby.log.lock().unwrap().join("\n");
    assert!(log.contains("temporary self-signed"), "{log}");
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .unwrap();
    assert_eq!(
        get(&insecure, &format!("https://{}/readyz", standby.addr)).await,
        (503, "standby".into())
    );
    holder.kill();
    // A first start: it makes the keys and the admin's bcrypt hash (slow in
    // a debug build), hence no takeover bound here.
    assert!(
        standby.wait_for_log("registry listening", Duration::from_secs(60)),
        "{:?}",
        standby.log.lock().unwrap()
    );
    let c = client_trusting(&standby.ca_cert());
    assert_eq!(
        get(&c, &format!("https://{}/readyz", standby.addr)).await,
        (200, "ready".into())
    );
}

/// `berth identity serve` stands by and takes over the same way.
#[tokio::test]
async fn the_token_service_alone_stands_by_too() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let active = Berth::start_identity(&data, &[]);
    let standby = Berth::start_identity_standby(&data, &[]);
    let c = reqwest::Client::new();
    assert_eq!(
        get(&c, &format!("{}/readyz", standby.url())).await,
        (503, "standby".into())
    );
    assert_eq!(
        get(&c, &format!("{}/.well-known/jwks.json", standby.url()))
            .await
            .0,
        503
    );
    let jwks = get(&c, &format!("{}/.well-known/jwks.json", active.url())).await;
    assert_eq!(jwks.0, 200);
    active.kill();
    assert!(standby.wait_for_log("token service listening", TAKEOVER_BOUND));
    assert_eq!(
        get(&c, &format!("{}/readyz", standby.url())).await,
        (200, "ready".into())
    );
    // The same keys: they live in the data directory.
    assert_eq!(
        get(&c, &format!("{}/.well-known/jwks.json", standby.url())).await,
        jwks
    );
}

fn pid_of(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[tokio::test]
async fn sigterm_hands_over_to_the_standby_and_pid_files_come_and_go() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let run = tmp.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let (pid_a, pid_b) = (run.join("a.pid"), run.join("b.pid"));
    let a = Berth::start_registry(
        &data,
        &["--auth", "none", "--pid-file", pid_a.to_str().unwrap()],
    );
    assert_eq!(pid_of(&pid_a), Some(a.pid()));
    let b = Berth::start_registry_standby(
        &data,
        &["--auth", "none", "--pid-file", pid_b.to_str().unwrap()],
    );
    assert_eq!(pid_of(&pid_b), Some(b.pid()), "written by a standby too");
    let c = reqwest::Client::new();
    assert_eq!(get(&c, &format!("{}/readyz", b.url())).await.0, 503);
    assert_eq!(get(&c, &format!("{}/v2/", b.url())).await.0, 503);

    let stopped = Instant::now();
    let status = a.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(!pid_a.exists(), "removed on a clean exit");
    assert!(b.wait_for_log("registry listening", TAKEOVER_BOUND));
    eprintln!("takeover after SIGTERM: {:?}", stopped.elapsed());
    assert_eq!(
        get(&c, &format!("{}/readyz", b.url())).await,
        (200, "ready".into())
    );
    assert_eq!(get(&c, &format!("{}/v2/", b.url())).await.0, 200);

    assert_eq!(b.terminate().code(), Some(0));
    assert!(!pid_b.exists());

    // A standby stopped before it took over exits 0 as well.
    let a = Berth::start_registry(&data, &["--auth", "none"]);
    let b = Berth::start_registry_standby(
        &data,
        &["--auth", "none", "--pid-file", pid_b.to_str().unwrap()],
    );
    assert_eq!(b.terminate().code(), Some(0));
    assert!(!pid_b.exists());
    assert_eq!(a.terminate().code(), Some(0));
}

/// Starts `PUT <upload>?digest=` of `body` on a raw connection, sending
/// the headers and the first `first` bytes; returns the connection.
async fn start_slow_put(b: &Berth, repo: &str, body: &[u8], first: usize) -> TcpStream {
    let r = reqwest::Client::new()
        .post(format!("{}/v2/{repo}/blobs/uploads/", b.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let path = location
        .strip_prefix(&b.url())
        .unwrap_or(&location)
        .to_owned();
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut stream = TcpStream::connect(&b.addr).unwrap();
    write!(
        stream,
        "PUT {path}{sep}digest={} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        sha256_digest(body),
        b.addr,
        body.len()
    )
    .unwrap();
    stream.write_all(&body[..first]).unwrap();
    stream.flush().unwrap();
    stream
}

fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn sigterm_lets_a_slow_upload_finish_within_the_grace() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut b = Berth::start_registry(
        &data,
        &["--auth", "none", "--set", "server.shutdown_grace=20"],
    );
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let mut stream = start_slow_put(&b, "ha/slow", &body, 1000).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sigterm(b.pid());
    assert!(b.wait_for_log("SIGTERM", Duration::from_secs(5)));
    // It stops accepting, but the upload goes on, slowly.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(&b.addr).is_err(),
        "still accepting after SIGTERM"
    );
    for chunk in body[1000..].chunks(100_000) {
        assert!(b.child.try_wait().unwrap().is_none(), "exited mid-upload");
        stream.write_all(chunk).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 201"), "{response}");
    let status = b.child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let log = b.log.lock().unwrap().join("\n");
    assert!(!log.contains("shutdown grace"), "{log}");
    drop(b);

    // What it acknowledged is there for the next instance.
    let b = Berth::start_registry(&data, &["--auth", "none"]);
    let r = reqwest::Client::new()
        .head(format!(
            "{}/v2/ha/slow/blobs/{}",
            b.url(),
            sha256_digest(&body)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn after_the_grace_a_stalled_request_does_not_hold_the_exit() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut b = Berth::start_registry(
        &data,
        &["--auth", "none", "--set", "server.shutdown_grace=1"],
    );
    let body = vec![7u8; 100_000];
    let _stalled = start_slow_put(&b, "ha/stalled", &body, 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = Instant::now();
    sigterm(b.pid());
    let status = loop {
        if let Some(status) = b.child.try_wait().unwrap() {
            break status;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "still running");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );
    assert!(b.wait_for_log("after the shutdown grace", Duration::from_secs(1)));
}

/// Runs berth with `args` to its exit (at most 30 s); returns the exit
/// status and standard error.
fn exit_of(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if t.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            panic!("berth {args:?} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (status.code(), err)
}

#[test]
fn exit_statuses_a_service_manager_can_act_on() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = |name: &str| tmp.path().join(name).to_str().unwrap().to_owned();
    let serve_on = |listen: &str, data: &str, extra: &[&str]| {
        let mut args = vec![
            "registry",
            "serve",
            "--listen",
            listen,
            "--tls",
            "off",
            "--auth",
            "none",
            "--data-dir",
        ];
        args.push(data);
        args.extend_from_slice(extra);
        args.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()
    };
    let serve = |data: &str, extra: &[&str]| serve_on("127.0.0.1:0", data, extra);
    let run = |args: Vec<String>| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        exit_of(&args)
    };

    // 78: the configuration is invalid (for every server).
    let (code, err) = run(serve(&dir("a"), &["--set", "registry.max_manifest_size=1"]));
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("registry.max_manifest_size"), "{err}");
    let (code, err) = exit_of(&[
        "serve",
        "--data-dir",
        &dir("a"),
        "--set",
        "server.shutdown_grace=-1",
    ]);
    assert_eq!(code, Some(78), "{err}");
    let (code, err) = exit_of(&["identity", "serve", "--set", "tls.mode=maybe"]);
    assert_eq!(code, Some(78), "{err}");

    // 73: the data directory cannot be created.
    std::fs::write(tmp.path().join("file"), "x").unwrap();
    let (code, err) = run(serve(&format!("{}/data", dir("file")), &[]));
    assert_eq!(code, Some(73), "{err}");
    assert!(err.contains("cannot create the data directory"), "{err}");

    // 74: its contents cannot be used (a file where the store's scratch
    // directory goes).
    std::fs::create_dir(tmp.path().join("broken")).unwrap();
    std::fs::write(tmp.path().join("broken/tmp"), "x").unwrap();
    let (code, err) = run(serve(&dir("broken"), &[]));
    assert_eq!(code, Some(74), "{err}");

    // 69: the address is in use.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = run(serve_on(&addr, &dir("b"), &[]));
    assert_eq!(code, Some(69), "{err}");
    assert!(err.contains("cannot listen"), "{err}");

    // 73: the pid file names another running berth.
    let pid_file = dir("berth.pid");
    let running = Berth::start_registry(
        &tmp.path().join("c"),
        &["--auth", "none", "--pid-file", &pid_file],
    );
    let (code, err) = run(serve(&dir("d"), &["--pid-file", &pid_file]));
    assert_eq!(code, Some(73), "{err}");
    assert!(err.contains("a running berth"), "{err}");
    assert_eq!(pid_of(Path::new(&pid_file)), Some(running.pid()));
    drop(running);
    // Killed, it left the file: stale, replaced.
    let again = Berth::start_registry(
        &tmp.path().join("c"),
        &["--auth", "none", "--pid-file", &pid_file],
    );
    assert_eq!(pid_of(Path::new(&pid_file)), Some(again.pid()));

    // 2: clap's usage errors.
    let (code, _) = exit_of(&["serve", "--no-such-flag"]);
    assert_eq!(code, Some(2));
}
