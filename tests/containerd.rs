//! containerd, the runtime of Kubernetes nodes (StarlingX's among them), as
//! a client of `berth serve` over HTTPS with a real Keystone. It is driven
//! with `ctr`, containerd's own client: its resolver and token authorizer
//! are the ones the CRI plugin uses when the kubelet pulls with an
//! imagePullSecret's credentials.
//!
//! - Trust as on a node: a host directory (`/etc/containerd/certs.d` there,
//!   a temp dir here) with `HOST:PORT/hosts.toml`; without berth's CA in it
//!   the pull fails on the certificate, not on authorization.
//! - A project member pulls with her Keystone password: the image ctr
//!   records has the pushed manifest's digest, and it unpacks. She pushes
//!   with ctr too, and what arrives is byte for byte what ctr had.
//! - A pull secret made by `berth pull-secret` (a `reader` application
//!   credential): pulls, cannot push.
//! - A user without a role in the project can neither pull nor push; the
//!   refused pushes leave no tag behind.

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::berth::Berth;
use common::clients::{Containerd, Proc, Ran, Skopeo, TestImage, refused, run, run_ok};
use common::keystone::{DEFAULT_DOMAIN_ID, Keystone, UserLogin, unique};
use common::pull_secret::pull_auth_file;

/// `user:secret` of the only registry in a Docker `config.json`.
fn creds_in(auth_file: &Path, registry: &str) -> String {
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(auth_file).expect("read the auth file"))
            .expect("auth file JSON");
    let auth = config["auths"][registry]["auth"]
        .as_str()
        .unwrap_or_else(|| panic!("no auth for {registry} in {config}"));
    String::from_utf8(STANDARD.decode(auth).expect("base64")).expect("UTF-8")
}

fn password(user: &UserLogin) -> String {
    format!("{}:{}", user.name, user.password)
}

/// skopeo against the registry, trusting its CA through a cert dir.
struct SkopeoAt {
    skopeo: Skopeo,
    certs: PathBuf,
    registry: String,
}

impl SkopeoAt {
    fn push(&self, creds: &str, image: &TestImage, reference: &str) {
        run_ok(self.skopeo.cmd().args([
            "copy",
            "--dest-cert-dir",
            self.certs.to_str().expect("UTF-8"),
            "--dest-creds",
            creds,
            &image.oci_ref(),
            &format!("docker://{}/{reference}", self.registry),
        ]));
    }

    /// The manifest of `reference` exactly as the registry serves it.
    fn manifest(&self, creds: &str, reference: &str) -> Ran {
        run(self.skopeo.cmd().args([
            "inspect",
            "--raw",
            "--cert-dir",
            self.certs.to_str().expect("UTF-8"),
            "--creds",
            creds,
            &format!("docker://{}/{reference}", self.registry),
        ]))
    }
}

/// `ctr images pull` of `reference` with `creds`, unpacked with the native
/// snapshotter (overlayfs needs more than a test sandbox may allow).
fn ctr_pull(c: &Containerd, creds: &str, reference: &str) -> Ran {
    run(c
        .ctr()
        .args(["images", "pull", "--snapshotter", "native", "--hosts-dir"])
        .arg(c.hosts_dir())
        .args(["--user", creds, reference]))
}

fn ctr_push(c: &Containerd, creds: &str, reference: &str) -> Ran {
    run(c
        .ctr()
        .args(["images", "push", "--hosts-dir"])
        .arg(c.hosts_dir())
        .args(["--user", creds, reference]))
}

/// The digest `ctr images ls` records for `reference`.
fn ctr_digest(c: &Containerd, reference: &str) -> String {
    let ls = run_ok(c.ctr().args(["images", "ls"])).stdout;
    ls.lines()
        .find_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.first() == Some(&reference)).then(|| cols[2].to_owned())
        })
        .unwrap_or_else(|| panic!("{reference} not in `ctr images ls`:\n{ls}"))
}

fn pulled(ran: Ran, what: &str) {
    let ran = ran.ok();
    assert!(
        ran.stdout.contains("unpacking") && ran.stdout.contains("done"),
        "{what}: not unpacked:\n{}",
        ran.stdout
    );
}

#[tokio::test]
async fn containerd_pulls_and_pushes_with_keystone_credentials_and_pull_secrets() {
    let t0 = Instant::now();
    let lap = |what: &str| eprintln!("{:>6.1} s  {what}", t0.elapsed().as_secs_f64());

    // Keystone: project P with m (member); o has no role anywhere.
    let ks = Keystone::start();
    let admin = ks.admin();
    let svc = admin.create_service_account().await;
    let m = admin.new_user("m").await;
    let o = admin.new_user("o").await;
    let p = unique("team");
    let p_id = admin.create_project(&p, DEFAULT_DOMAIN_ID, &[]).await;
    admin.assign_project_role(&m.id, &p_id, "member").await;
    lap("Keystone with a project, a member and an outsider");

    let tmp = tempfile::tempdir().unwrap();
    let env = ks.berth_env(&svc);
    let berth = Berth::start_all(&tmp.path().join("berth"), "127.0.0.1", &[], &env);
    let berth_proc = Proc::of(berth.pid()).expect("berth running");
    let registry = berth.addr.clone();
    let certs = tmp.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(berth.ca_cert(), certs.join("ca.crt")).unwrap();
    let skopeo = SkopeoAt {
        skopeo: Skopeo::new(&tmp.path().join("skopeo")),
        certs,
        registry: registry.clone(),
    };
    let (m_pw, o_pw) = (password(&m), password(&o));
    let image = |tag: &str, seed: &str| TestImage::build(&tmp.path().join(seed), tag, seed);
    let (one, two) = (image("1", "ctr-one"), image("2", "ctr-two"));
    skopeo.push(&m_pw, &one, &format!("{p}/app:1"));
    skopeo.push(&m_pw, &two, &format!("{p}/app:2"));
    lap("berth serve; m pushed P/app:1 and P/app:2 with skopeo");

    let containerd = Containerd::start();
    let c = &containerd;
    let app = |tag: &str| format!("{registry}/{p}/app:{tag}");

    // Without berth's CA: a certificate error, before any authorization.
    c.trust(&registry, None);
    let ran = ctr_pull(c, &m_pw, &app("1"));
    assert!(!ran.status.success(), "pull without the CA succeeded");
    assert!(
        ran.stderr.contains("x509") || ran.stderr.contains("certificate"),
        "pull without the CA failed, but not on the certificate:\n{}",
        ran.stderr
    );
    c.trust(&registry, Some(&berth.ca_cert()));
    lap("no CA: x509 error");

    // m pulls with her Keystone password.
    pulled(ctr_pull(c, &m_pw, &app("1")), "m's pull of P/app:1");
    assert_eq!(ctr_digest(c, &app("1")), one.manifest_digest);
    lap("m pulled P/app:1 (digest as pushed, unpacked)");

    // o has no role in P: no pull, no push.
    refused(ctr_pull(c, &o_pw, &app("2")), "o's pull of P/app:2");
    run_ok(c.ctr().args(["images", "tag", &app("1"), &app("from-o")]));
    refused(ctr_push(c, &o_pw, &app("from-o")), "o's push to P");

    // The pull secret: a reader application credential on P.
    let auth_file = pull_auth_file(&ks, &m, &p, &registry, &tmp.path().join("pull-secret"));
    let secret = creds_in(&auth_file, &registry);
    pulled(ctr_pull(c, &secret, &app("2")), "the pull secret's pull");
    assert_eq!(ctr_digest(c, &app("2")), two.manifest_digest);
    run_ok(
        c.ctr()
            .args(["images", "tag", &app("2"), &app("from-secret")]),
    );
    refused(
        ctr_push(c, &secret, &app("from-secret")),
        "the pull secret's push",
    );
    lap("o refused; the pull secret pulled P/app:2 and could not push");

    // m pushes with ctr: the registry has exactly the manifest ctr had.
    run_ok(c.ctr().args(["images", "tag", &app("1"), &app("from-ctr")]));
    ctr_push(c, &m_pw, &app("from-ctr")).ok();
    let got = skopeo.manifest(&m_pw, &format!("{p}/app:from-ctr")).ok();
    assert_eq!(got.stdout.as_bytes(), one.manifest.as_slice());
    // The refused pushes left no tag.
    for tag in ["from-o", "from-secret"] {
        let ran = skopeo.manifest(&m_pw, &format!("{p}/app:{tag}"));
        assert!(
            !ran.status.success() && ran.stderr.to_lowercase().contains("manifest unknown"),
            "P/app:{tag} after a refused push: {}\n{}",
            ran.stdout,
            ran.stderr
        );
    }
    lap("m pushed P/app:from-ctr with ctr; refused pushes left nothing");

    // Everything this test started is stopped.
    let containerd_proc = containerd.stop();
    berth.kill();
    for proc in [containerd_proc, berth_proc] {
        assert!(!proc.alive(), "still running: {}", proc.cmdline());
    }
}
