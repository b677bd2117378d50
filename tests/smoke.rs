//! The binary starts, reports its address, answers health and base checks,
//! and stops on SIGTERM with exit code 0.

mod common;

use common::berth::Berth;

#[tokio::test]
async fn starts_answers_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let b = Berth::start(&dir.path().join("data"));
    let health = reqwest::get(format!("{}/healthz", b.url())).await.unwrap();
    assert_eq!(health.status(), 200);
    let base = reqwest::get(format!("{}/v2/", b.url())).await.unwrap();
    assert_eq!(base.status(), 200);
    assert_eq!(
        base.headers()["docker-distribution-api-version"],
        "registry/2.0"
    );
    let log = b.log.lock().unwrap().join("\n");
    assert!(
        log.contains("AUTHENTICATION IS DISABLED"),
        "no loud warning in {log}"
    );
    let status = b.terminate();
    assert!(status.success(), "exit status {status}");
}

#[test]
fn flags_work_as_environment_variables() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["registry", "serve"])
        .env("BERTH_DATA_DIR", dir.path())
        .env("BERTH_REGISTRY_LISTEN", "127.0.0.1:0")
        .env("BERTH_REGISTRY_AUTH", "none")
        .env("BERTH_TLS_MODE", "off")
        .env("BERTH_REGISTRY_MAX_MANIFEST_SIZE", "not-a-number")
        .output()
        .unwrap();
    // The environment was read: the bad value is reported, by its variable.
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("BERTH_REGISTRY_MAX_MANIFEST_SIZE") && err.contains("not-a-number"),
        "{err}"
    );
}

/// `berth config check` reports every problem of a configuration at once,
/// each naming its key and source, and exits 1; a good one passes.
#[test]
fn config_check_reports_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.toml");
    std::fs::write(
        &file,
        "data_dir = \"/srv/berth\"\nlisten = \"x\"\n\n[registry]\nlisten = \"nowhere\"\nauth = \"maybe\"\n\n[tls]\ncert_file = \"/etc/c.pem\"\n\n[keystone]\nurl = \"ftp://k\"\n",
    )
    .unwrap();
    let check = |env: &[(&str, &str)]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["config", "check", "--config"])
            .arg(&file)
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = check(&[("BERTH_TOKEN_LIFETIME", "soon")]);
    assert_eq!(code, Some(1), "{out}");
    for want in [
        "unknown key `listen`",
        "`registry.listen`: `nowhere`",
        "`registry.auth`: `maybe`",
        "`keystone.url`: `ftp://k` is not an http(s) URL",
        "BERTH_TOKEN_LIFETIME: `soon`",
    ] {
        assert!(out.contains(want), "missing {want:?} in:\n{out}");
    }
    assert!(out.starts_with("5 configuration problems"), "{out}");

    std::fs::write(
        &file,
        "[registry]\nauth = \"none\"\n[tls]\nmode = \"off\"\n",
    )
    .unwrap();
    let (code, out) = check(&[]);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("configuration OK"), "{out}");
}

/// `berth keys export-bundle` and `berth keys rotate` on a data directory:
/// the first key is made on first use, a rotation publishes a second one,
/// and both are in the bundle a Distribution registry would trust.
#[test]
fn keys_rotate_and_export_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let berth = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["keys"])
            .args(args)
            .arg("--data-dir")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let certs = |pem: &str| pem.matches("-----BEGIN CERTIFICATE-----").count();
    let first = berth(&["export-bundle"]);
    assert_eq!(certs(&first), 1, "{first}");
    assert_eq!(
        berth(&["export-bundle"]),
        first,
        "keys are made once, then reused"
    );
    let rotated = berth(&["rotate"]);
    assert!(rotated.contains("published"), "{rotated}");
    let bundle_file = dir.path().join("bundle.pem");
    berth(&["export-bundle", "--out", bundle_file.to_str().unwrap()]);
    let bundle = std::fs::read_to_string(&bundle_file).unwrap();
    assert_eq!(certs(&bundle), 2, "{bundle}");
    assert!(bundle.contains(first.trim()), "the old key stays published");
    // Private keys stay private: 0600 files, never in the bundle.
    assert!(!bundle.contains("PRIVATE KEY"));
    for entry in std::fs::read_dir(dir.path().join("identity/keys")).unwrap() {
        let meta = entry.unwrap().metadata().unwrap();
        if meta.is_file() {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(meta.permissions().mode() & 0o077, 0);
        }
    }
}

/// A reader that goes away (`berth config show | head -1`) is no error:
/// the commands that print exit 0 instead of panicking on EPIPE.
#[test]
fn printing_into_a_closed_pipe_is_not_a_panic() {
    for args in [
        &["config", "show"][..],
        &["config", "reference"],
        &["--help"],
    ] {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env_remove("BERTH_CONFIG")
            .stdout(writer)
            .stderr(std::process::Stdio::piped())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert!(out.status.success(), "{args:?}: {} {err}", out.status);
    }
}
