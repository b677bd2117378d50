//! `berth serve` with nothing configured: the secure all-in-one. HTTPS with
//! a generated CA on both ports, token authentication, the local users file
//! with a generated `admin` password, the realm following the host the
//! client used, and a clean stop on SIGTERM.

mod common;

use std::os::unix::fs::PermissionsExt;

use common::berth::{Berth, client_trusting};

fn port(addr: &str) -> &str {
    addr.rsplit(':').next().unwrap()
}

#[tokio::test]
async fn the_embedded_default_is_secure() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let b = Berth::start_all(&data, "127.0.0.1", &[], &[]);
    let identity = b.identity_addr.clone().unwrap();

    // Files: the CA and the admin password, private where they must be.
    let mode = |p: &str| {
        std::fs::metadata(data.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o777
    };
    assert_eq!(mode("admin.password"), 0o600);
    assert_eq!(mode("tls/ca.key"), 0o600);
    assert_eq!(mode("tls/server.key"), 0o600);
    assert_eq!(mode("identity/users.toml"), 0o600);
    let log = b.log.lock().unwrap().join("\n");
    assert!(log.contains("created the local user `admin`"), "{log}");
    assert!(
        log.contains("/etc/docker/certs.d/") && log.contains("/etc/containers/certs.d/"),
        "trust instructions printed: {log}"
    );
    let password = b.admin_password();
    assert!(password.len() >= 24);
    assert!(
        !log.contains(&password),
        "the password never reaches the log"
    );

    // Plain HTTP is not served; a client that does not trust the CA fails.
    let plain = reqwest::get(format!("http://{}/v2/", b.addr)).await;
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(
        untrusting
            .get(format!("{}/v2/", b.https_url()))
            .send()
            .await
            .is_err()
    );

    // The challenge sends clients to the host they used.
    let c = client_trusting(&b.ca_cert());
    for host in ["127.0.0.1", "localhost"] {
        let r = c
            .get(format!("https://{host}:{}/v2/", port(&b.addr)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        let challenge = r.headers()["www-authenticate"].to_str().unwrap();
        assert_eq!(
            challenge,
            format!(
                "Bearer realm=\"https://{host}:{}/token\",service=\"berth-registry\"",
                port(&identity)
            )
        );
    }

    // admin logs in with the generated password and gets a working token.
    let token_url = format!(
        "https://{identity}/token?service=berth-registry&scope=repository:admin/app:pull,push"
    );
    let wrong = c
        .get(&token_url)
        .basic_auth("admin", Some("not-the-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let token: serde_json::Value = c
        .get(&token_url)
        .basic_auth("admin", Some(&password))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = token["token"].as_str().unwrap();
    let r = c
        .get(format!("{}/v2/", b.https_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(format!("{}/v2/admin/app/blobs/uploads/", b.https_url()))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "admin may push to admin/app");

    let status = b.terminate();
    assert!(status.success(), "exit status {status}");

    // A second start reuses everything: same CA, same password, no new admin.
    let ca_before = std::fs::read(data.join("tls/ca.crt")).unwrap();
    let b = Berth::start_all(&data, "127.0.0.1", &[], &[]);
    assert_eq!(std::fs::read(b.ca_cert()).unwrap(), ca_before);
    assert_eq!(b.admin_password(), password);
    let log = b.log.lock().unwrap().join("\n");
    assert!(!log.contains("created the local user"), "{log}");
    assert!(
        !log.contains("/etc/docker/certs.d/"),
        "instructions once: {log}"
    );
    assert!(b.terminate().success());
}

/// `--tls off` is the explicit way to plain HTTP, and says so.
#[tokio::test]
async fn tls_off_is_plain_http_and_loud() {
    let dir = tempfile::tempdir().unwrap();
    let b = Berth::start_all(
        &dir.path().join("data"),
        "127.0.0.1",
        &["--tls", "off"],
        &[],
    );
    let r = reqwest::get(format!("{}/v2/", b.url())).await.unwrap();
    assert_eq!(r.status(), 401);
    let challenge = r.headers()["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.starts_with("Bearer realm=\"http://127.0.0.1:"),
        "{challenge}"
    );
    let log = b.log.lock().unwrap().join("\n");
    assert!(log.contains("TLS is off"), "{log}");
    assert!(!dir.path().join("data/tls").exists());
}

/// A configured certificate is served instead of a generated one.
#[tokio::test]
async fn a_configured_certificate_is_used() {
    let dir = tempfile::tempdir().unwrap();
    // Make a CA and certificate with openssl, as an operator would.
    let d = dir.path();
    let sh = |cmd: &str| {
        let ok = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .current_dir(d)
            .output()
            .unwrap();
        assert!(
            ok.status.success(),
            "{cmd}: {}",
            String::from_utf8_lossy(&ok.stderr)
        );
    };
    sh(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt -subj /CN=op-ca -days 2",
    );
    sh(
        "openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout srv.key -out srv.csr -subj /CN=localhost",
    );
    sh(
        "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > ext && openssl x509 -req -in srv.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out srv.crt -days 2 -extfile ext",
    );
    let cert = d.join("srv.crt");
    let key = d.join("srv.key");
    let b = Berth::start_all(
        &d.join("data"),
        "127.0.0.1",
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!d.join("data/tls").exists(), "nothing generated");
    let c = client_trusting(&d.join("ca.crt"));
    let r = c
        .get(format!("{}/v2/", b.https_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}
