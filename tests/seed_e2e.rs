//! The seed's test with real parts: a real Keystone, `berth identity serve`
//! and `berth registry serve --auth token` (the real binaries), and skopeo
//! logging in with Keystone passwords. alice pushes `alice/app:v1`; bob can
//! neither push `alice/app:v2` nor delete or pull `alice/app:v1`, and his
//! attempts change nothing.

mod common;

use common::berth::Berth;
use common::clients::{Skopeo, TestImage, read_oci_layout, run, run_ok};
use common::keystone::Keystone;

#[tokio::test]
async fn users_may_only_modify_what_is_theirs() {
    let ks = Keystone::start();
    let admin = ks.admin();
    let svc = admin.create_service_account().await;
    let alice = admin.new_user("alice").await;
    let bob = admin.new_user("bob").await;
    let tmp = tempfile::tempdir().unwrap();
    let identity = Berth::start_identity(&tmp.path().join("identity"), &ks.berth_env(&svc));
    let realm = format!("{}/token", identity.url());
    let jwks = format!("{}/.well-known/jwks.json", identity.url());
    let registry = Berth::start_registry(
        &tmp.path().join("registry"),
        &[
            "--auth",
            "token",
            "--token-realm",
            &realm,
            "--token-jwks-url",
            &jwks,
        ],
    );

    let skopeo = Skopeo::new(&tmp.path().join("skopeo"));
    let image = TestImage::build(&tmp.path().join("oci"), "v1", "seed");
    let alice_creds = format!("{}:{}", alice.name, alice.password);
    let bob_creds = format!("{}:{}", bob.name, bob.password);
    let reference = |tag: &str| format!("docker://{}/{}/app:{tag}", registry.addr, alice.name);

    // Without credentials nothing is pushed.
    let anon = run(skopeo.cmd().args([
        "copy",
        "--dest-tls-verify=false",
        &image.oci_ref(),
        &reference("v0"),
    ]));
    assert!(!anon.status.success(), "anonymous push succeeded");

    // alice pushes alice/app:v1.
    run_ok(skopeo.cmd().args([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        "--dest-creds",
        &alice_creds,
        &image.oci_ref(),
        &reference("v1"),
    ]));
    let inspect = |creds: &str| {
        run(skopeo.cmd().args([
            "inspect",
            "--raw",
            "--tls-verify=false",
            "--creds",
            creds,
            &reference("v1"),
        ]))
    };
    assert_eq!(
        inspect(&alice_creds).ok().stdout.as_bytes(),
        image.manifest.as_slice()
    );

    // bob cannot push alice/app:v2, delete alice/app:v1, or even pull it.
    let push = run(skopeo.cmd().args([
        "copy",
        "--dest-tls-verify=false",
        "--dest-creds",
        &bob_creds,
        &image.oci_ref(),
        &reference("v2"),
    ]));
    assert!(!push.status.success(), "bob pushed into alice's namespace");
    let delete = run(skopeo.cmd().args([
        "delete",
        "--tls-verify=false",
        "--creds",
        &bob_creds,
        &reference("v1"),
    ]));
    assert!(!delete.status.success(), "bob deleted alice's image");
    assert!(
        !inspect(&bob_creds).status.success(),
        "bob pulled alice's image"
    );

    // ... and his attempts changed nothing.
    let tags = run_ok(skopeo.cmd().args([
        "list-tags",
        "--tls-verify=false",
        "--creds",
        &alice_creds,
        &format!("docker://{}/{}/app", registry.addr, alice.name),
    ]))
    .json();
    assert_eq!(tags["Tags"], serde_json::json!(["v1"]));
    assert_eq!(
        inspect(&alice_creds).ok().stdout.as_bytes(),
        image.manifest.as_slice()
    );

    // alice pulls it back, digests equal, and may delete it.
    let back = tmp.path().join("back");
    run_ok(skopeo.cmd().args([
        "copy",
        "--src-tls-verify=false",
        "--src-creds",
        &alice_creds,
        &reference("v1"),
        &format!("oci:{}:v1", back.display()),
    ]));
    assert_eq!(read_oci_layout(&back, "v1").0, image.manifest_digest);
    run_ok(skopeo.cmd().args([
        "delete",
        "--tls-verify=false",
        "--creds",
        &alice_creds,
        &reference("v1"),
    ]));
    assert!(
        !inspect(&alice_creds).status.success(),
        "deleted image still there"
    );
}
