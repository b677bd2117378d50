//! `berth serve` over HTTPS with the certificate it generates, driven by
//! REAL clients that trust its CA the way each of them expects, logging in
//! with REAL Keystone passwords (one shared Keystone, users with unique
//! names), and with the embedded local `admin`:
//!
//! - docker (a private dockerd): the CA in `/etc/docker/certs.d/HOST:PORT/`
//!   (removed at the end), checked both ways: without it `docker login`
//!   fails on the certificate, with it login, push and pull work.
//! - podman: `--cert-dir` and `--authfile` on every command.
//! - skopeo: `login --authfile --cert-dir`, then `--dest-*`/`--src-*`.
//! - The embedded default: podman logs in as `admin` with the password
//!   from `admin.password`; a wrong password is refused.
//!
//! Each test also checks that a user cannot push into another user's
//! namespace (and that nothing arrived there), and that no process it
//! started is left running (berth, dockerd and its containerd, anything
//! naming the test's directories; the shared Keystone lives as long as the
//! test binary and dies with it).
//!
//! docker and loopback: dockerd treats every registry in 127.0.0.0/8 as
//! insecure (it speaks HTTPS there but checks no certificate), so trust is
//! tested on `[::1]`, which is not in that range: `docker login [::1]:PORT`
//! verifies the certificate against `/etc/docker/certs.d/[::1]:PORT/ca.crt`
//! (the directory is the registry's `host:port` verbatim, brackets
//! included: moby's `HostCertsDir`), and the test shows both outcomes. The
//! dockerd installed here (Debian's 20.10) cannot parse an image reference
//! whose registry is an IPv6 literal (`[::1]:PORT/ns/app:v1`: "invalid
//! reference format"; skopeo 1.9 and podman 4.3 refuse it too), so push and
//! pull go to a second `berth serve` on 127.0.0.1, over HTTPS but
//! unverified by docker (podman and skopeo verify it below). Tests talk to
//! loopback only. The test asserts the IPv6 refusal, so it says so when an
//! upgraded dockerd lifts it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::berth::{Berth, client_trusting};
use common::clients::{
    Dockerd, Podman, Skopeo, TestImage, descendants, processes_mentioning, read_oci_layout, run,
    run_input, run_ok,
};
use common::keystone::{Keystone, UserLogin, unique};

/// What every client prints when it does not trust the server's certificate.
const UNKNOWN_CA: &str = "x509: certificate signed by unknown authority";

/// The port of `host:port` or `[v6]:port`.
fn port_of(addr: &str) -> &str {
    addr.rsplit(':').next().expect("host:port")
}

/// berth's service account and two Keystone users, alice and bob (unique
/// names: their personal namespaces), in the shared Keystone.
async fn keystone_users() -> (&'static Keystone, UserLogin, UserLogin, UserLogin) {
    let ks = Keystone::shared();
    let admin = ks.admin();
    let svc = admin.create_service_account().await;
    let alice = admin.new_user("alice").await;
    let bob = admin.new_user("bob").await;
    (ks, svc, alice, bob)
}

/// `berth serve` (HTTPS, generated certificate) checking passwords with
/// Keystone through the service account `svc`.
fn berth_with_keystone(
    data: &Path,
    listen_ip: &str,
    flags: &[&str],
    ks: &Keystone,
    svc: &UserLogin,
) -> Berth {
    let b = Berth::start_all(data, listen_ip, flags, &ks.berth_env(svc));
    let log = b.log.lock().unwrap().join("\n");
    assert!(log.contains("identity backend: Keystone"), "{log}");
    assert!(
        !data.join("admin.password").exists(),
        "no local admin with Keystone"
    );
    b
}

/// `GET https://HOST/v2/` verifying the certificate: the challenge must
/// send the client to the token service on the host it used.
async fn assert_challenge(ca: &Path, host: &str, identity_port: &str) {
    let r = client_trusting(ca)
        .get(format!("https://{host}/v2/"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET https://{host}/v2/: {e:?}"));
    assert_eq!(r.status(), 401);
    let bare = &host[..host.len() - port_of(host).len() - 1];
    assert_eq!(
        r.headers()["www-authenticate"].to_str().unwrap(),
        format!("Bearer realm=\"https://{bare}:{identity_port}/token\",service=\"berth-registry\"")
    );
}

/// The CA installed for docker at `/etc/docker/certs.d/HOST:PORT/ca.crt`;
/// the directory is removed on drop. The port is ephemeral: the directory
/// must not exist before (it is never anyone else's).
struct DockerTrust {
    dir: PathBuf,
}

impl DockerTrust {
    fn install(registry: &str, ca: &Path) -> DockerTrust {
        let dir = Path::new("/etc/docker/certs.d").join(registry);
        assert!(!dir.exists(), "{} exists already", dir.display());
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let trust = DockerTrust { dir };
        std::fs::copy(ca, trust.dir.join("ca.crt")).expect("install ca.crt");
        trust
    }
}

impl Drop for DockerTrust {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Asserts that nothing whose command line names `dir` is still running.
fn assert_nothing_left(dir: &Path) {
    let left = processes_mentioning(&dir.display().to_string());
    assert!(left.is_empty(), "processes left running: {left:?}");
}

/// Stops berth (SIGTERM; it must exit cleanly, having started nothing that
/// outlives it).
fn stop_berth(b: Berth) {
    let pid = b.pid();
    assert!(descendants(pid).is_empty(), "berth started processes");
    let proc = common::clients::Proc::of(pid).expect("berth in /proc");
    let status = b.terminate();
    assert!(status.success(), "berth exited with {status}");
    assert!(!proc.alive());
}

/// A push refused for lack of rights (the registry's 401 with
/// `insufficient_scope`, which docker and containers/image report as
/// "denied"), not for TLS or a network failure.
fn assert_refused(ran: &common::clients::Ran) {
    assert!(!ran.status.success(), "succeeded: {}", ran.what);
    let out = format!("{}\n{}", ran.stdout, ran.stderr);
    assert!(
        out.contains("denied: requested access to the resource is denied"),
        "{} failed, but not for lack of rights:\n{}\n{}",
        ran.what,
        ran.stdout,
        ran.stderr
    );
}

#[tokio::test]
async fn docker_trusts_the_ca_in_certs_d_and_logs_in_with_a_keystone_password() {
    let tmp = tempfile::tempdir().unwrap();
    let (ks, svc, alice, bob) = keystone_users().await;
    let b6 = berth_with_keystone(&tmp.path().join("data6"), "::1", &[], ks, &svc);
    let b = berth_with_keystone(&tmp.path().join("data4"), "127.0.0.1", &[], ks, &svc);
    let v6 = b6.addr.clone();
    assert!(v6.starts_with("[::1]:"), "{v6}");
    let registry = b.addr.clone();
    // The certificate covers both, and the realm follows each host.
    assert_challenge(
        &b6.ca_cert(),
        &v6,
        port_of(b6.identity_addr.as_deref().unwrap()),
    )
    .await;
    assert_challenge(
        &b.ca_cert(),
        &registry,
        port_of(b.identity_addr.as_deref().unwrap()),
    )
    .await;

    let skopeo = Skopeo::new(&tmp.path().join("skopeo"));
    let image = TestImage::build(&tmp.path().join("oci"), "v1", "https-docker");
    let archive = tmp.path().join("image.tar");
    image.docker_archive(&skopeo, &archive, "e2e/loaded:v1");
    let dockerd = Dockerd::start();
    let docker_dir = dockerd.socket.parent().unwrap().to_owned();
    run_ok(
        dockerd
            .cmd()
            .args(["load", "-i", archive.to_str().unwrap()]),
    );
    let login = |host: &str, user: &UserLogin| {
        run_input(
            dockerd
                .cmd()
                .args(["login", "-u", &user.name, "--password-stdin", host]),
            &user.password,
        )
    };

    // [::1]: verified. Without the CA, login fails on the certificate ...
    let untrusted = login(&v6, &alice);
    assert!(!untrusted.status.success(), "login without the CA");
    assert!(
        untrusted.stderr.contains(UNKNOWN_CA),
        "{}",
        untrusted.stderr
    );
    // ... with it in /etc/docker/certs.d/[::1]:PORT/, alice logs in.
    let v6_trust = DockerTrust::install(&v6, &b6.ca_cert());
    let ok = login(&v6, &alice).ok();
    assert!(ok.stdout.contains("Login Succeeded"), "{}", ok.stdout);
    // This dockerd cannot name an image on an IPv6 literal (see the module doc).
    let v6_tag = run(dockerd.cmd().args([
        "tag",
        "e2e/loaded:v1",
        &format!("{v6}/{}/app:v1", alice.name),
    ]));
    assert!(
        !v6_tag.status.success() && v6_tag.stderr.contains("invalid reference format"),
        "dockerd now accepts an IPv6 registry in an image reference: push and pull over \
         [::1] directly in this test. {}",
        v6_tag.stderr
    );

    // 127.0.0.1: HTTPS, which docker does not verify there.
    login(&registry, &alice).ok();
    // docker keeps berth's refresh token, not the password.
    let config = std::fs::read_to_string(docker_dir.join("cfg/config.json")).unwrap();
    assert!(!config.contains(&alice.password), "{config}");
    let stored: serde_json::Value = serde_json::from_str(&config).unwrap();
    assert!(
        stored["auths"][&registry]["identitytoken"].is_string(),
        "{config}"
    );

    // alice pushes into her namespace, removes the image, pulls it back.
    let name = format!("{registry}/{}/app:v1", alice.name);
    run_ok(dockerd.cmd().args(["tag", "e2e/loaded:v1", &name]));
    let push = run_ok(dockerd.cmd().args(["push", &name]));
    let pushed = push
        .stdout
        .lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in docker push output: {}", push.stdout))
        .to_owned();
    run_ok(dockerd.cmd().args(["rmi", &name]));
    let pull = run_ok(dockerd.cmd().args(["pull", &name]));
    assert!(
        pull.stdout.contains(&format!("Digest: {pushed}")),
        "docker pull: {}",
        pull.stdout
    );
    let inspect = run_ok(dockerd.cmd().args(["image", "inspect", &name])).json();
    assert_eq!(
        inspect[0]["RepoDigests"],
        serde_json::json!([format!("{registry}/{}/app@{pushed}", alice.name)])
    );
    assert_eq!(inspect[0]["Id"], image.config_digest.as_str());

    // alice cannot push into bob's namespace, and nothing arrives there.
    let bobs = format!("{registry}/{}/app:v1", bob.name);
    run_ok(dockerd.cmd().args(["tag", "e2e/loaded:v1", &bobs]));
    assert_refused(&run(dockerd.cmd().args(["push", &bobs])));
    login(&registry, &bob).ok();
    run_ok(dockerd.cmd().args(["rmi", &bobs]));
    let missing = run(dockerd.cmd().args(["pull", &bobs]));
    assert!(!missing.status.success(), "pulled {bobs}");
    assert!(
        missing.stderr.contains("manifest unknown") || missing.stderr.contains("not found"),
        "{}",
        missing.stderr
    );

    let stopped = dockerd.stop();
    assert!(stopped.len() >= 2, "dockerd and containerd: {stopped:?}");
    for p in &stopped {
        assert!(!p.alive(), "still running: {p:?} {}", p.cmdline());
    }
    let dir = v6_trust.dir.clone();
    drop(v6_trust);
    assert!(!dir.exists(), "{} left behind", dir.display());
    stop_berth(b6);
    stop_berth(b);
    assert_nothing_left(tmp.path());
    assert_nothing_left(&docker_dir);
}

/// `DIR/ca.crt`: the directory `--cert-dir` names.
fn cert_dir(tmp: &Path, b: &Berth) -> PathBuf {
    let dir = tmp.join("certs");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(b.ca_cert(), dir.join("ca.crt")).unwrap();
    dir
}

/// Whether a containers `auth.json` holds credentials for `registry`.
fn has_auth(authfile: &Path, registry: &str) -> bool {
    std::fs::read(authfile)
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v["auths"][registry]["auth"].is_string())
}

/// Puts the test image into podman's storage (from its OCI layout, no
/// registry) and returns its image ID (the config digest's hex).
fn podman_load(podman: &Podman, tmp: &Path, image: &TestImage) -> String {
    // A relative path: podman names the image after it, and the temp dir's
    // name has capitals, which a repository name must not.
    let rel = image.layout.strip_prefix(tmp).expect("layout under tmp");
    let id = run_ok(podman.cmd().current_dir(tmp).args([
        "pull",
        "-q",
        &format!("oci:{}:{}", rel.display(), image.tag),
    ]));
    let hex = image.config_digest.trim_start_matches("sha256:").to_owned();
    assert_eq!(id.stdout.trim(), hex, "image ID is the config digest");
    hex
}

/// `podman login` to `registry` as `user`/`password` (from standard input),
/// with `--authfile` and, when given, `--cert-dir`.
fn podman_login(
    podman: &Podman,
    authfile: &Path,
    certs: Option<&Path>,
    registry: &str,
    user: &str,
    password: &str,
) -> common::clients::Ran {
    let mut cmd = podman.cmd();
    cmd.arg("login").arg("--authfile").arg(authfile);
    if let Some(dir) = certs {
        cmd.arg("--cert-dir").arg(dir);
    }
    cmd.args(["-u", user, "--password-stdin", registry]);
    run_input(&mut cmd, password)
}

/// `podman SUBCOMMAND --authfile F --cert-dir D ARGS...`
fn podman_with(
    podman: &Podman,
    subcommand: &str,
    authfile: &Path,
    certs: &Path,
    args: &[&str],
) -> Command {
    let mut cmd = podman.cmd();
    cmd.arg(subcommand)
        .arg("--authfile")
        .arg(authfile)
        .arg("--cert-dir")
        .arg(certs)
        .args(args);
    cmd
}

#[tokio::test]
async fn podman_trusts_a_cert_dir_and_logs_in_with_a_keystone_password() {
    let tmp = tempfile::tempdir().unwrap();
    let (ks, svc, alice, bob) = keystone_users().await;
    let b = berth_with_keystone(&tmp.path().join("data"), "127.0.0.1", &[], ks, &svc);
    let registry = b.addr.clone();
    let certs = cert_dir(tmp.path(), &b);
    let authfile = tmp.path().join("auth.json");
    let podman = Podman::new(&tmp.path().join("podman"));
    let image = TestImage::build(&tmp.path().join("oci"), "v1", "https-podman");

    // Without the CA, login fails on the certificate and stores nothing.
    let untrusted = podman_login(
        &podman,
        &authfile,
        None,
        &registry,
        &alice.name,
        &alice.password,
    );
    assert!(!untrusted.status.success(), "login without the CA");
    assert!(
        untrusted.stderr.contains(UNKNOWN_CA),
        "{}",
        untrusted.stderr
    );
    assert!(!has_auth(&authfile, &registry));
    let ok = podman_login(
        &podman,
        &authfile,
        Some(&certs),
        &registry,
        &alice.name,
        &alice.password,
    )
    .ok();
    assert!(ok.stdout.contains("Login Succeeded"), "{}", ok.stdout);
    assert!(has_auth(&authfile, &registry));

    // alice pushes into her namespace, removes every image, pulls it back.
    let id = podman_load(&podman, tmp.path(), &image);
    let name = format!("{registry}/{}/app:v1", alice.name);
    run_ok(podman.cmd().args(["tag", &id, &name]));
    let digestfile = tmp.path().join("pushed.digest");
    run_ok(&mut podman_with(
        &podman,
        "push",
        &authfile,
        &certs,
        &["--digestfile", digestfile.to_str().unwrap(), &name],
    ));
    let pushed = std::fs::read_to_string(&digestfile).unwrap();
    let pushed = pushed.trim();
    assert!(pushed.starts_with("sha256:"), "digest file: {pushed:?}");
    run_ok(podman.cmd().args(["rmi", "-a", "-f"]));
    run_ok(&mut podman_with(
        &podman,
        "pull",
        &authfile,
        &certs,
        &[&name],
    ));
    let inspect = run_ok(podman.cmd().args(["image", "inspect", &name])).json();
    assert_eq!(inspect[0]["Digest"], pushed, "{inspect}");
    assert_eq!(inspect[0]["Id"], id.as_str());

    // alice cannot push into bob's namespace, and nothing arrives there.
    let bobs = format!("{registry}/{}/app:v1", bob.name);
    run_ok(podman.cmd().args(["tag", &id, &bobs]));
    assert_refused(&run(&mut podman_with(
        &podman,
        "push",
        &authfile,
        &certs,
        &[&bobs],
    )));
    podman_login(
        &podman,
        &authfile,
        Some(&certs),
        &registry,
        &bob.name,
        &bob.password,
    )
    .ok();
    run_ok(podman.cmd().args(["rmi", &bobs]));
    let missing = run(&mut podman_with(
        &podman,
        "pull",
        &authfile,
        &certs,
        &[&bobs],
    ));
    assert!(!missing.status.success(), "pulled {bobs}");
    assert!(
        missing.stderr.contains("manifest unknown"),
        "{}",
        missing.stderr
    );

    stop_berth(b);
    assert_nothing_left(tmp.path());
}

/// `skopeo login --authfile F --cert-dir D` to `registry`.
fn skopeo_login(
    skopeo: &Skopeo,
    authfile: &Path,
    certs: &Path,
    registry: &str,
    user: &UserLogin,
) -> common::clients::Ran {
    let mut cmd = skopeo.cmd();
    cmd.arg("login")
        .arg("--authfile")
        .arg(authfile)
        .arg("--cert-dir")
        .arg(certs)
        .args(["-u", &user.name, "--password-stdin", registry]);
    run_input(&mut cmd, &user.password)
}

#[tokio::test]
async fn skopeo_logs_in_to_an_authfile_and_copies_both_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let (ks, svc, alice, bob) = keystone_users().await;
    let b = berth_with_keystone(&tmp.path().join("data"), "127.0.0.1", &[], ks, &svc);
    let registry = b.addr.clone();
    let certs = cert_dir(tmp.path(), &b);
    let certs_arg = certs.to_str().unwrap();
    let authfile = tmp.path().join("alice.json");
    let auth_arg = authfile.to_str().unwrap();
    let skopeo = Skopeo::new(&tmp.path().join("skopeo"));
    let image = TestImage::build(&tmp.path().join("oci"), "v1", "https-skopeo");
    let reference = format!("docker://{registry}/{}/app:v1", alice.name);

    // Keystone checks the password: a wrong one is refused, nothing stored.
    let wrong = UserLogin {
        password: format!("{}x", alice.password),
        ..alice.clone()
    };
    let refused = skopeo_login(&skopeo, &authfile, &certs, &registry, &wrong);
    assert!(!refused.status.success(), "login with a wrong password");
    assert!(
        refused.stderr.contains("invalid username/password"),
        "{}",
        refused.stderr
    );
    assert!(!has_auth(&authfile, &registry));
    let ok = skopeo_login(&skopeo, &authfile, &certs, &registry, &alice).ok();
    assert!(ok.stdout.contains("Login Succeeded"), "{}", ok.stdout);
    assert!(has_auth(&authfile, &registry));

    // Push with the authfile and the cert dir, byte for byte.
    run_ok(skopeo.cmd().args([
        "copy",
        "--preserve-digests",
        "--dest-authfile",
        auth_arg,
        "--dest-cert-dir",
        certs_arg,
        &image.oci_ref(),
        &reference,
    ]));
    let inspect = run_ok(skopeo.cmd().args([
        "inspect",
        "--authfile",
        auth_arg,
        "--cert-dir",
        certs_arg,
        &reference,
    ]))
    .json();
    assert_eq!(inspect["Digest"], image.manifest_digest.as_str());
    assert_eq!(inspect["Layers"], serde_json::json!(image.layer_digests));
    let raw = run_ok(skopeo.cmd().args([
        "inspect",
        "--raw",
        "--authfile",
        auth_arg,
        "--cert-dir",
        certs_arg,
        &reference,
    ]));
    assert_eq!(raw.stdout.as_bytes(), image.manifest.as_slice());

    // Pull back into a fresh OCI layout: the same digest.
    let back = tmp.path().join("back");
    run_ok(skopeo.cmd().args([
        "copy",
        "--preserve-digests",
        "--src-authfile",
        auth_arg,
        "--src-cert-dir",
        certs_arg,
        &reference,
        &format!("oci:{}:v1", back.display()),
    ]));
    assert_eq!(read_oci_layout(&back, "v1").0, image.manifest_digest);

    // Without the cert dir the same authfile gets nowhere.
    let untrusted = run(skopeo
        .cmd()
        .args(["inspect", "--authfile", auth_arg, &reference]));
    assert!(!untrusted.status.success(), "inspect without the CA");
    assert!(
        untrusted.stderr.contains(UNKNOWN_CA),
        "{}",
        untrusted.stderr
    );

    // alice cannot push into bob's namespace, and nothing arrives there.
    let bobs = format!("docker://{registry}/{}/app:v1", bob.name);
    assert_refused(&run(skopeo.cmd().args([
        "copy",
        "--dest-authfile",
        auth_arg,
        "--dest-cert-dir",
        certs_arg,
        &image.oci_ref(),
        &bobs,
    ])));
    let bob_auth = tmp.path().join("bob.json");
    skopeo_login(&skopeo, &bob_auth, &certs, &registry, &bob).ok();
    let missing = run(skopeo.cmd().args([
        "inspect",
        "--authfile",
        bob_auth.to_str().unwrap(),
        "--cert-dir",
        certs_arg,
        &bobs,
    ]));
    assert!(!missing.status.success(), "inspected {bobs}");
    assert!(
        missing.stderr.contains("manifest unknown"),
        "{}",
        missing.stderr
    );

    stop_berth(b);
    assert_nothing_left(tmp.path());
}

/// `berth users add NAME --password-stdin --data-dir DATA`
fn add_local_user(data: &Path, name: &str, password: &str) {
    run_input(
        Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["users", "add", name, "--password-stdin", "--data-dir"])
            .arg(data),
        password,
    )
    .ok();
}

#[tokio::test]
async fn the_embedded_admin_logs_in_with_podman_and_the_generated_password() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let b = Berth::start_all(&data, "127.0.0.1", &[], &[]);
    let registry = b.addr.clone();
    let certs = cert_dir(tmp.path(), &b);
    let authfile = tmp.path().join("auth.json");
    let podman = Podman::new(&tmp.path().join("podman"));
    let image = TestImage::build(&tmp.path().join("oci"), "v1", "https-admin");
    let password = b.admin_password();

    // A wrong password is refused (by the token service, over verified TLS).
    let wrong = podman_login(
        &podman,
        &authfile,
        Some(&certs),
        &registry,
        "admin",
        &format!("{password}x"),
    );
    assert!(!wrong.status.success(), "login with a wrong password");
    assert!(
        !wrong.stderr.contains("x509") && wrong.stderr.contains("invalid username/password"),
        "{}",
        wrong.stderr
    );
    assert!(!has_auth(&authfile, &registry));
    // The generated one works: admin pushes and pulls back.
    podman_login(
        &podman,
        &authfile,
        Some(&certs),
        &registry,
        "admin",
        &password,
    )
    .ok();
    let id = podman_load(&podman, tmp.path(), &image);
    let name = format!("{registry}/admin/app:v1");
    run_ok(podman.cmd().args(["tag", &id, &name]));
    let digestfile = tmp.path().join("pushed.digest");
    run_ok(&mut podman_with(
        &podman,
        "push",
        &authfile,
        &certs,
        &["--digestfile", digestfile.to_str().unwrap(), &name],
    ));
    let pushed = std::fs::read_to_string(&digestfile).unwrap();
    run_ok(podman.cmd().args(["rmi", "-a", "-f"]));
    run_ok(&mut podman_with(
        &podman,
        "pull",
        &authfile,
        &certs,
        &[&name],
    ));
    let inspect = run_ok(podman.cmd().args(["image", "inspect", &name])).json();
    assert_eq!(inspect[0]["Digest"], pushed.trim(), "{inspect}");
    assert_eq!(inspect[0]["Id"], id.as_str());

    // A second local user may push into their namespace, not into admin's.
    let dev_password = unique("pw");
    add_local_user(&data, "dev", &dev_password);
    podman_login(
        &podman,
        &authfile,
        Some(&certs),
        &registry,
        "dev",
        &dev_password,
    )
    .ok();
    let into_admin = format!("{registry}/admin/app:v2");
    run_ok(podman.cmd().args(["tag", &id, &into_admin]));
    assert_refused(&run(&mut podman_with(
        &podman,
        "push",
        &authfile,
        &certs,
        &[&into_admin],
    )));
    let own = format!("{registry}/dev/app:v1");
    run_ok(podman.cmd().args(["tag", &id, &own]));
    run_ok(&mut podman_with(
        &podman,
        "push",
        &authfile,
        &certs,
        &[&own],
    ));
    // Nothing arrived in admin's namespace.
    podman_login(
        &podman,
        &authfile,
        Some(&certs),
        &registry,
        "admin",
        &password,
    )
    .ok();
    run_ok(podman.cmd().args(["rmi", &into_admin]));
    let missing = run(&mut podman_with(
        &podman,
        "pull",
        &authfile,
        &certs,
        &[&into_admin],
    ));
    assert!(!missing.status.success(), "pulled {into_admin}");
    assert!(
        missing.stderr.contains("manifest unknown"),
        "{}",
        missing.stderr
    );

    stop_berth(b);
    assert_nothing_left(tmp.path());
}
