//! berth's token service in front of a real Docker Distribution 2.8.2 (the
//! Debian package `docker-registry`), the registry the original StarlingX
//! design integrated: a real Keystone, `berth identity serve` (the binary),
//! Distribution configured with the bundle `berth keys export-bundle` wrote,
//! and skopeo logging in with Keystone passwords. alice pushes and pulls in
//! her namespace; bob can neither push into it, pull from it nor delete in
//! it, and pushes in his own. After `berth keys rotate` Distribution refuses
//! the new key's tokens until it is restarted with a re-exported bundle.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::berth::Berth;
use common::clients::{
    Proc, Skopeo, TestImage, processes_mentioning, read_oci_layout, refused, run, run_ok,
};
use common::distribution::{Distribution, TokenAuth};
use common::keystone::{Keystone, UserLogin};

/// Distribution's `service` and `issuer`; berth is started with the same
/// values (they are also its defaults).
const SERVICE: &str = "berth-registry";
const ISSUER: &str = "berth-token-service";

/// The base64 DER of every certificate in a PEM bundle, in order.
fn pem_certificates(pem: &str) -> Vec<String> {
    pem.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .map(|block| {
            let body = block
                .split("-----END CERTIFICATE-----")
                .next()
                .expect("END CERTIFICATE");
            body.split_whitespace().collect()
        })
        .collect()
}

/// Asks the token service for a pull token as `user` and returns the JWT
/// header.
async fn token_header(identity: &Berth, user: &UserLogin, repository: &str) -> serde_json::Value {
    let response = reqwest::Client::new()
        .get(format!("{}/token", identity.url()))
        .query(&[
            ("service", SERVICE),
            ("scope", &format!("repository:{repository}:pull")),
        ])
        .basic_auth(&user.name, Some(&user.password))
        .send()
        .await
        .expect("GET /token");
    assert!(response.status().is_success(), "{}", response.status());
    let body: serde_json::Value = response.json().await.expect("token JSON");
    let jwt = body["token"].as_str().expect("token");
    let header = jwt.split('.').next().expect("JWT header");
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header).expect("base64url")).expect("JSON")
}

#[tokio::test]
async fn distribution_2_8_enforces_berths_tokens() {
    let t0 = Instant::now();
    let lap = |what: &str| eprintln!("{:>6.1} s  {what}", t0.elapsed().as_secs_f64());
    let ks = Keystone::start();
    let keystone_dir = ks.dir().to_owned();
    let admin = ks.admin();
    let svc = admin.create_service_account().await;
    let alice = admin.new_user("alice").await;
    let bob = admin.new_user("bob").await;
    lap("Keystone with alice and bob");

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("berth");
    let identity = Berth::start_identity(
        &data,
        &[
            &ks.berth_env(&svc)[..],
            &[
                ("BERTH_TOKEN_SERVICE", SERVICE),
                ("BERTH_TOKEN_ISSUER", ISSUER),
            ],
        ]
        .concat(),
    );

    // The bundle Distribution trusts: the certificate of berth's one key,
    // which is also what every token carries in `x5c`.
    let bundle = tmp.path().join("bundle.pem");
    run_ok(&mut Berth::export_bundle(&data, &bundle));
    let first_bundle = std::fs::read_to_string(&bundle).unwrap();
    assert!(!first_bundle.contains("PRIVATE"), "{first_bundle}");
    let first_certs = pem_certificates(&first_bundle);
    assert_eq!(first_certs.len(), 1, "{first_bundle}");
    let header = token_header(&identity, &alice, &format!("{}/app", alice.name)).await;
    assert_eq!(header["x5c"], serde_json::json!(first_certs), "{header}");
    let first_kid = header["kid"].as_str().expect("kid").to_owned();

    let mut registry = Distribution::start(
        &tmp.path().join("distribution"),
        TokenAuth {
            realm: format!("{}/token", identity.url()),
            service: SERVICE.into(),
            issuer: ISSUER.into(),
            rootcertbundle: bundle.clone(),
        },
    );
    lap("berth identity serve and docker-registry started");

    let skopeo = Skopeo::new(&tmp.path().join("skopeo"));
    let image = TestImage::build(&tmp.path().join("oci"), "v1", "distribution");
    let creds = |u: &UserLogin| format!("{}:{}", u.name, u.password);
    let (alice_creds, bob_creds) = (creds(&alice), creds(&bob));
    let reference =
        |registry: &Distribution, repo: &str| format!("docker://{}/{repo}", registry.addr);
    let alice_v1 = format!("{}/app:v1", alice.name);
    let push = |registry: &Distribution, creds: &str, repo: &str| {
        run(skopeo.cmd().args([
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            "--dest-creds",
            creds,
            &image.oci_ref(),
            &reference(registry, repo),
        ]))
    };
    let inspect = |registry: &Distribution, creds: &str, repo: &str| {
        run(skopeo.cmd().args([
            "inspect",
            "--tls-verify=false",
            "--creds",
            creds,
            &reference(registry, repo),
        ]))
    };
    let pull = |registry: &Distribution, creds: &str, repo: &str, dir: &Path| {
        run(skopeo.cmd().args([
            "copy",
            "--src-tls-verify=false",
            "--src-creds",
            creds,
            &reference(registry, repo),
            &format!("oci:{}:pulled", dir.display()),
        ]))
    };
    let delete = |registry: &Distribution, creds: &str, repo: &str| {
        run(skopeo.cmd().args([
            "delete",
            "--tls-verify=false",
            "--creds",
            creds,
            &reference(registry, repo),
        ]))
    };
    let tags = |registry: &Distribution, creds: &str, repo: &str| {
        run_ok(skopeo.cmd().args([
            "list-tags",
            "--tls-verify=false",
            "--creds",
            creds,
            &reference(registry, repo),
        ]))
        .json()["Tags"]
            .clone()
    };

    // Without credentials Distribution takes nothing.
    refused(
        run(skopeo.cmd().args([
            "copy",
            "--dest-tls-verify=false",
            &image.oci_ref(),
            &reference(&registry, &alice_v1),
        ])),
        "an anonymous push",
    );

    // alice pushes alice/app:v1 and pulls it back, digests equal.
    push(&registry, &alice_creds, &alice_v1).ok();
    let inspected = inspect(&registry, &alice_creds, &alice_v1).ok().json();
    assert_eq!(inspected["Digest"], image.manifest_digest.as_str());
    let back = tmp.path().join("alice-pulled");
    pull(&registry, &alice_creds, &alice_v1, &back).ok();
    assert_eq!(read_oci_layout(&back, "pulled").0, image.manifest_digest);
    lap("alice pushed and pulled");

    // bob may neither push into alice's namespace nor pull from it ...
    let alice_v2 = format!("{}/app:v2", alice.name);
    refused(
        push(&registry, &bob_creds, &alice_v2),
        "bob's push to alice/app:v2",
    );
    refused(
        pull(
            &registry,
            &bob_creds,
            &alice_v1,
            &tmp.path().join("bob-pulled"),
        ),
        "bob's pull of alice/app:v1",
    );
    refused(
        inspect(&registry, &bob_creds, &alice_v1),
        "bob's inspect of alice/app:v1",
    );
    // ... nor delete in it (the seed's test: "ensure that one user cannot
    // delete images from another user").
    refused(
        delete(&registry, &bob_creds, &alice_v1),
        "bob's delete of alice/app:v1",
    );
    // ... and his attempt left nothing behind, as Distribution sees it and
    // in its storage.
    let alice_app = format!("{}/app", alice.name);
    assert_eq!(
        tags(&registry, &alice_creds, &alice_app),
        serde_json::json!(["v1"])
    );
    let v2 = inspect(&registry, &alice_creds, &alice_v2);
    assert!(
        !v2.status.success() && v2.stderr.contains("manifest unknown"),
        "alice/app:v2 exists: {}",
        v2.stderr
    );
    let tag_dir = |tag: &str| {
        registry
            .storage
            .join("docker/registry/v2/repositories")
            .join(&alice_app)
            .join("_manifests/tags")
            .join(tag)
    };
    assert!(tag_dir("v1").is_dir(), "{}", tag_dir("v1").display());
    assert!(!tag_dir("v2").exists(), "{}", tag_dir("v2").display());

    // bob pushes in his own namespace.
    let bob_v1 = format!("{}/app:v1", bob.name);
    push(&registry, &bob_creds, &bob_v1).ok();
    let inspected = inspect(&registry, &bob_creds, &bob_v1).ok().json();
    assert_eq!(inspected["Digest"], image.manifest_digest.as_str());
    lap("bob refused in alice's namespace, at home in his");

    // Key rotation. The new key signs at once (no publish delay), and the
    // running server picks it up from the key directory by itself ...
    let rotated = run_ok(&mut Berth::rotate_keys(&data, 0)).stdout;
    let new_kid = rotated
        .split("new signing key ")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no kid in: {rotated}"))
        .to_owned();
    assert_ne!(new_kid, first_kid);
    let deadline = Instant::now() + Duration::from_secs(15);
    let new_header = loop {
        let header = token_header(&identity, &alice, &alice_app).await;
        if header["kid"] == new_kid.as_str() {
            break header;
        }
        assert!(
            Instant::now() < deadline,
            "still signing with the old key: {header}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // ... but Distribution read its bundle at start: the new key's tokens
    // are refused, even for alice in her own namespace.
    refused(
        inspect(&registry, &alice_creds, &alice_v1),
        "alice's inspect with a token of a key missing from the bundle",
    );
    let log = registry.log();
    assert!(
        log.contains("unable to verify certificate chain"),
        "Distribution refused the new key's token for another reason:\n{log}"
    );
    // Export again (old and new key) and restart Distribution: accepted.
    run_ok(&mut Berth::export_bundle(&data, &bundle));
    let second_bundle = std::fs::read_to_string(&bundle).unwrap();
    let second_certs = pem_certificates(&second_bundle);
    assert_eq!(second_certs.len(), 2, "{second_bundle}");
    assert!(second_certs.contains(&first_certs[0]), "old key dropped");
    assert_eq!(new_header["x5c"][0], second_certs[1].as_str());
    registry.restart();
    lap("rotated; refused until docker-registry restarted");
    let inspected = inspect(&registry, &alice_creds, &alice_v1).ok().json();
    assert_eq!(inspected["Digest"], image.manifest_digest.as_str());
    push(&registry, &alice_creds, &alice_v2).ok();
    assert_eq!(
        tags(&registry, &alice_creds, &alice_app),
        serde_json::json!(["v1", "v2"])
    );
    refused(
        push(&registry, &bob_creds, &format!("{}/app:v3", alice.name)),
        "bob's push to alice/app:v3 after the rotation",
    );
    // alice may delete her image (v1 and v2 are one manifest: both go).
    delete(&registry, &alice_creds, &alice_v2).ok();
    for tag in [&alice_v1, &alice_v2] {
        let gone = inspect(&registry, &alice_creds, tag);
        assert!(
            !gone.status.success() && gone.stderr.contains("manifest unknown"),
            "{tag} after the delete: {}",
            gone.stderr
        );
    }
    lap("new key accepted after the restart");

    // Everything started is stopped, by PID.
    let mut started = registry.started().to_vec();
    started.extend(Proc::of(identity.pid()));
    drop(registry);
    identity.terminate();
    drop(ks);
    for p in &started {
        assert!(!p.alive(), "still running: {} {}", p.pid, p.cmdline());
    }
    for needle in [tmp.path(), keystone_dir.as_path()] {
        let left = processes_mentioning(&needle.display().to_string());
        assert!(left.is_empty(), "left running: {left:?}");
    }
    lap("all stopped");
}
