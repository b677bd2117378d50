//! `docker-compose.test.yml` and the two Dockerfiles, checked as far as a
//! machine without access to Docker Hub allows (the images cannot be built
//! here):
//!
//! - the file's structure: services, loopback-only ports, the health
//!   dependency, volumes, secrets;
//! - the berth service's `environment`, run through the real binary's
//!   `berth config check` with exactly those variables (secret paths
//!   pointed at the repository's demo secret files): a `BERTH_*` name or
//!   value berth does not understand fails;
//! - `docker-compose config -q` (Debian's v1) and `docker compose config -q`
//!   (v2), whichever is installed;
//! - the Dockerfiles, statically;
//! - the Keystone image's entrypoint, run here against the tests' Keystone
//!   venv with the compose file's settings, then `berth serve` with the
//!   berth service's settings: the demo user logs in and may push.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_norway::Value;

const COMPOSE_FILE: &str = "docker-compose.test.yml";

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn compose() -> Value {
    serde_norway::from_str(&read(COMPOSE_FILE)).expect("docker-compose.test.yml is YAML")
}

fn service<'a>(compose: &'a Value, name: &str) -> &'a Value {
    compose["services"]
        .get(name)
        .unwrap_or_else(|| panic!("no service `{name}` in {COMPOSE_FILE}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|i| i.as_str().expect("a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A service's `environment`, a mapping or a list of `NAME=VALUE`.
fn environment(service: &Value) -> BTreeMap<String, String> {
    let env = &service["environment"];
    let mut out = BTreeMap::new();
    if let Some(map) = env.as_mapping() {
        for (k, v) in map {
            let k = k.as_str().expect("variable name").to_owned();
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                other => panic!(
                    "{k}: use a string, not {other:?} (compose rejects booleans, null takes the host's value)"
                ),
            };
            out.insert(k, v);
        }
    } else if let Some(list) = env.as_sequence() {
        for item in list {
            let item = item.as_str().expect("NAME=VALUE");
            let (k, v) = item
                .split_once('=')
                .unwrap_or_else(|| panic!("`{item}`: no value (it would come from the host)"));
            out.insert(k.to_owned(), v.to_owned());
        }
    } else {
        panic!("the service has no environment");
    }
    out
}

/// `/run/secrets/NAME` -> the repository file of the secret a service
/// mounts there.
fn secret_files(compose: &Value, service: &Value) -> BTreeMap<String, PathBuf> {
    let mut out = BTreeMap::new();
    for entry in service["secrets"].as_sequence().into_iter().flatten() {
        let (source, target) = match entry {
            Value::String(s) => (s.clone(), s.clone()),
            other => {
                let source = other["source"].as_str().expect("secret source").to_owned();
                let target = other["target"].as_str().unwrap_or(&source).to_owned();
                (source, target)
            }
        };
        let file = compose["secrets"][source.as_str()]["file"]
            .as_str()
            .unwrap_or_else(|| panic!("secret `{source}` has no top-level `file`"));
        let path = root().join(file);
        assert!(
            path.is_file(),
            "secret `{source}`: no file {}",
            path.display()
        );
        let mount = if target.starts_with('/') {
            target
        } else {
            format!("/run/secrets/{target}")
        };
        out.insert(mount, path);
    }
    out
}

/// The service's environment with every mounted secret's path replaced by
/// the repository file; a `/run/secrets/` path the service does not mount
/// is an error.
fn environment_with_secrets(compose: &Value, name: &str) -> BTreeMap<String, String> {
    let service = service(compose, name);
    let secrets = secret_files(compose, service);
    let mut env = environment(service);
    for (k, v) in env.iter_mut() {
        if v.starts_with("/run/secrets/") {
            let file = secrets.get(v.as_str()).unwrap_or_else(|| {
                panic!("{name}: {k}={v}, but the service mounts no such secret")
            });
            *v = file.to_str().expect("UTF-8 path").to_owned();
        }
    }
    env
}

/// `berth config check` with exactly `env`: Ok(its output) when it passes
/// without a warning.
fn config_check(env: &BTreeMap<String, String>) -> Result<String, String> {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["config", "check"])
        .env_clear()
        .envs(env)
        .output()
        .expect("run berth config check");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success()
        && text.contains("configuration OK")
        && !text.lines().any(|l| l.starts_with("warning:"))
    {
        Ok(text)
    } else {
        Err(text)
    }
}

#[test]
fn services_ports_volumes_and_dependencies() {
    let c = compose();
    let names: Vec<&str> = c["services"]
        .as_mapping()
        .expect("services")
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(names, ["keystone", "berth"]);

    let keystone = service(&c, "keystone");
    let berth = service(&c, "berth");
    assert_eq!(
        keystone["build"]["dockerfile"].as_str(),
        Some("deploy/keystone/Dockerfile")
    );
    assert_eq!(berth["build"]["dockerfile"].as_str(), Some("Dockerfile"));
    for s in [keystone, berth] {
        assert_eq!(s["build"]["context"].as_str(), Some("."));
        // Built here, never pulled: an `image:` name could be pulled from
        // a public hub instead.
        assert!(s.get("image").is_none(), "no `image:` with `build:`");
    }

    // Published on loopback only; Keystone not at all.
    assert_eq!(
        strings(&berth["ports"]),
        ["127.0.0.1:9001:9001", "127.0.0.1:9002:9002"]
    );
    assert!(keystone.get("ports").is_none(), "Keystone is not published");

    // berth starts once Keystone is healthy, which it is only when its
    // accounts exist (the entrypoint serves on KEYSTONE_LISTEN last).
    assert_eq!(
        berth["depends_on"]["keystone"]["condition"].as_str(),
        Some("service_healthy")
    );
    let test = strings(&keystone["healthcheck"]["test"]);
    assert_eq!(test.first().map(String::as_str), Some("CMD"));
    assert!(
        test.iter().any(|a| a.contains("http://127.0.0.1:5000/v3")),
        "{test:?}"
    );

    // The data directories are named volumes.
    let env = environment(berth);
    assert_eq!(env["BERTH_DATA_DIR"], "/var/lib/berth");
    assert_eq!(strings(&berth["volumes"]), ["berth-data:/var/lib/berth"]);
    assert_eq!(
        strings(&keystone["volumes"]),
        ["keystone-data:/var/lib/keystone"]
    );
    for v in ["berth-data", "keystone-data"] {
        assert!(c["volumes"].get(v).is_some(), "top-level volume {v}");
    }

    // berth reaches Keystone on the compose network, with the account the
    // entrypoint creates and the same password secret.
    assert_eq!(env["BERTH_KEYSTONE_URL"], "http://keystone:5000/v3");
    assert_eq!(env["BERTH_TLS_NAMES"], "localhost,127.0.0.1");
    let kenv = environment(keystone);
    assert_eq!(env["BERTH_KEYSTONE_USERNAME"], kenv["KEYSTONE_BERTH_USER"]);
    let berth_secrets = secret_files(&c, berth);
    let keystone_secrets = secret_files(&c, keystone);
    let berth_pw = &berth_secrets[env["BERTH_KEYSTONE_PASSWORD_FILE"].as_str()];
    let keystone_pw = &keystone_secrets[kenv["KEYSTONE_BERTH_PASSWORD_FILE"].as_str()];
    assert_eq!(berth_pw, keystone_pw);
    assert!(
        keystone_secrets.contains_key(kenv["KEYSTONE_ADMIN_PASSWORD_FILE"].as_str()),
        "the admin password is a secret"
    );
    // Readable by the images' non-root users (bind-mounted as they are).
    for file in berth_secrets.values().chain(keystone_secrets.values()) {
        let mode = std::fs::metadata(file).unwrap().permissions().mode();
        assert!(
            mode & 0o004 != 0,
            "{} is not world-readable",
            file.display()
        );
    }

    // The demo passwords say what they are.
    let text = read(COMPOSE_FILE);
    assert!(text.contains("DEMO ONLY"), "demo passwords are marked");
}

#[test]
fn the_berth_environment_passes_berth_config_check() {
    let env = environment_with_secrets(&compose(), "berth");
    assert!(env.keys().all(|k| k.starts_with("BERTH_")), "{env:?}");
    if let Err(out) = config_check(&env) {
        panic!("berth config check with the berth service's environment {env:?}:\n{out}");
    }
}

/// The check above would catch a mistake: a misspelt name warns, a bad
/// value or a missing secret file fails.
#[test]
fn config_check_catches_names_values_and_files_berth_does_not_accept() {
    let env = environment_with_secrets(&compose(), "berth");
    let mutate = |k: &str, v: Option<&str>| {
        let mut e = env.clone();
        match v {
            Some(v) => e.insert(k.to_owned(), v.to_owned()),
            None => e.remove(k),
        };
        e
    };
    let mut typo = mutate("BERTH_KEYSTONE_USERNAME", None);
    typo.insert("BERTH_KEYSTONE_USER_NAME".into(), "berth".into());
    for (what, bad) in [
        ("a misspelt name", typo),
        ("a bad value", mutate("BERTH_TLS_NAMES", Some("local host"))),
        (
            "a bad URL",
            mutate("BERTH_KEYSTONE_URL", Some("keystone:5000")),
        ),
        (
            "a missing file",
            mutate("BERTH_KEYSTONE_PASSWORD_FILE", Some("/run/secrets/nope")),
        ),
    ] {
        assert!(config_check(&bad).is_err(), "{what} passed: {bad:?}");
    }
}

/// Docker Compose's own validation, with whichever Compose is installed
/// (`scripts/install-test-deps` installs Debian's `docker-compose`, v1).
#[test]
fn docker_compose_validates_the_file() {
    let file = root().join(COMPOSE_FILE);
    let mut ran = Vec::new();
    let candidates: [(&str, &[&str]); 2] = [("docker-compose", &[]), ("docker", &["compose"])];
    for (program, prefix) in candidates {
        let available = Command::new(program)
            .args(prefix)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !available {
            continue;
        }
        let out = Command::new(program)
            .args(prefix)
            .arg("-f")
            .arg(&file)
            .args(["config", "-q"])
            .current_dir(root())
            .output()
            .expect("run compose");
        let shown = format!("{program} {}", prefix.join(" "));
        assert!(
            out.status.success(),
            "{shown} config -q: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        ran.push(shown.trim().to_owned());
    }
    if ran.is_empty() {
        eprintln!(
            "NOTE: neither `docker-compose` nor `docker compose` is installed: {COMPOSE_FILE} not validated by Compose"
        );
    } else {
        eprintln!("{COMPOSE_FILE} validated by: {}", ran.join(", "));
    }
}

/// A Dockerfile's instructions, continuation lines joined, comments dropped.
fn instructions(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read(path).lines() {
        let line = line.trim();
        if line.starts_with('#') || (line.is_empty() && current.is_empty()) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                current.push_str(part.trim());
                current.push(' ');
            }
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

fn has(instructions: &[String], wanted: &str) -> bool {
    instructions.iter().any(|i| i == wanted)
}

/// The sources of `COPY` instructions (not `--from`) exist and are not
/// excluded by `.dockerignore` (the build context is the repository root).
fn assert_copy_sources_exist(path: &str, instructions: &[String]) {
    let ignored = read(".dockerignore");
    let ignored: Vec<&str> = ignored
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for i in instructions.iter().filter(|i| i.starts_with("COPY ")) {
        let words: Vec<&str> = i.split_whitespace().skip(1).collect();
        if words.iter().any(|w| w.starts_with("--from")) {
            continue;
        }
        for src in &words[..words.len() - 1] {
            if *src == "." {
                continue;
            }
            assert!(
                root().join(src).exists(),
                "{path}: COPY {src}: no such file"
            );
            let first = src.split('/').next().unwrap();
            assert!(
                !ignored.contains(&first),
                "{path}: COPY {src} is excluded by .dockerignore"
            );
        }
    }
}

#[test]
fn the_dockerfiles() {
    let berth = instructions("Dockerfile");
    for wanted in [
        "FROM rust:1-bookworm AS build",
        "FROM debian:bookworm-slim",
        "USER berth",
        "VOLUME /var/lib/berth",
        "EXPOSE 9001 9002",
        r#"ENTRYPOINT ["berth"]"#,
        r#"CMD ["serve"]"#,
    ] {
        assert!(
            has(&berth, wanted),
            "Dockerfile: no `{wanted}` in {berth:#?}"
        );
    }
    assert!(
        berth
            .iter()
            .any(|i| i.starts_with("RUN cargo build --release --locked --bin berth")),
        "Dockerfile builds the binary, locked"
    );
    assert!(
        berth
            .iter()
            .any(|i| i.starts_with("RUN apt-get") && i.contains("ca-certificates")),
        "the runtime image has CA certificates (Keystone over https)"
    );
    // Not root from the last USER on.
    let last_user = berth.iter().rfind(|i| i.starts_with("USER ")).unwrap();
    assert!(!matches!(last_user.as_str(), "USER root" | "USER 0"));
    assert_copy_sources_exist("Dockerfile", &berth);

    let keystone = instructions("deploy/keystone/Dockerfile");
    assert_eq!(keystone[0], "FROM python:3.11-slim-bookworm");
    assert!(has(&keystone, "USER keystone"), "{keystone:#?}");
    assert!(has(&keystone, "VOLUME /var/lib/keystone"));
    assert!(has(
        &keystone,
        r#"ENTRYPOINT ["/opt/berth-keystone/entrypoint.sh"]"#
    ));
    // The same Keystone as the tests': the pins of scripts/install-keystone
    // and its constraints file.
    let pip = keystone
        .iter()
        .find(|i| i.contains("pip install"))
        .expect("pip install");
    assert!(
        pip.contains("--only-binary=:all:")
            && pip.contains("-c /opt/berth-keystone/keystone-constraints.txt"),
        "{pip}"
    );
    assert!(has(
        &keystone,
        "COPY tests/keystone-constraints.txt /opt/berth-keystone/keystone-constraints.txt"
    ));
    let install = read("scripts/install-keystone");
    let reqs = install
        .lines()
        .find_map(|l| l.strip_prefix("REQS=("))
        .and_then(|l| l.strip_suffix(')'))
        .expect("REQS in scripts/install-keystone");
    let constraints = read("tests/keystone-constraints.txt");
    for req in reqs.split_whitespace() {
        assert!(pip.contains(req), "the image installs {req}: {pip}");
        assert!(
            constraints.lines().any(|l| l == req),
            "constraints pin {req}"
        );
    }
    assert_copy_sources_exist("deploy/keystone/Dockerfile", &keystone);
    let mode = std::fs::metadata(root().join("deploy/keystone/entrypoint.sh"))
        .unwrap()
        .permissions()
        .mode();
    assert!(mode & 0o111 != 0, "entrypoint.sh is executable");

    let ignored = read(".dockerignore");
    for dir in ["target", ".venv", ".keystone-venv", ".git"] {
        assert!(ignored.lines().any(|l| l == dir), ".dockerignore: {dir}");
    }
}

/// A free loopback port (free when asked: good enough for a test).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A process group killed when dropped.
struct Group {
    child: Child,
    log: PathBuf,
}

impl Drop for Group {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "{} (last 60 lines):\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The Keystone image's entrypoint (with the tests' venv instead of the
/// image's) and `berth serve`, both with the compose file's settings; only
/// addresses and directories differ. The demo user logs in through berth
/// and may push to `demo/...`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keystone_entrypoint_and_berth_with_the_compose_settings() {
    let venv = root().join(".keystone-venv/bin");
    assert!(
        venv.join("keystone-manage").exists() && venv.join("gunicorn").exists(),
        "no Keystone at {}: run scripts/install-keystone",
        venv.display()
    );
    let c = compose();
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let v3 = format!("http://127.0.0.1:{port}/v3");

    let mut kenv = environment_with_secrets(&c, "keystone");
    let demo_user = kenv["KEYSTONE_DEMO_USER"].clone();
    let demo_password = kenv["KEYSTONE_DEMO_PASSWORD"].clone();
    let demo_project = kenv["KEYSTONE_DEMO_PROJECT"].clone();
    let path = format!(
        "{}:{}",
        venv.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    for (k, v) in [
        ("KEYSTONE_DATA_DIR", tmp.path().join("keystone")),
        ("KEYSTONE_LISTEN", format!("127.0.0.1:{port}").into()),
        ("KEYSTONE_SETUP_PORT", free_port().to_string().into()),
        // bcrypt cost 4 instead of 12: the test's only shortcut.
        ("KEYSTONE_PASSWORD_HASH_ROUNDS", "4".into()),
        ("PATH", path.clone().into()),
    ] {
        kenv.insert(k.into(), v.to_str().unwrap().to_owned());
    }
    let log = tmp.path().join("keystone.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut keystone = Group {
        child: Command::new(root().join("deploy/keystone/entrypoint.sh"))
            .env_clear()
            .envs(&kenv)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .expect("run deploy/keystone/entrypoint.sh"),
        log,
    };
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Ok(r) = http.get(&v3).send().await
            && r.status() == 200
        {
            break;
        }
        if let Ok(Some(status)) = keystone.child.try_wait() {
            panic!("the entrypoint exited: {status}");
        }
        assert!(Instant::now() < deadline, "Keystone did not come up");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let log = std::fs::read_to_string(&keystone.log).unwrap();
    assert!(log.contains("setup: done"), "{log}");

    // The compose healthcheck's own command, on this port.
    let test = strings(&service(&c, "keystone")["healthcheck"]["test"]);
    let status = Command::new(&test[1])
        .args(
            test[2..]
                .iter()
                .map(|a| a.replace("127.0.0.1:5000", &format!("127.0.0.1:{port}"))),
        )
        .env("PATH", &path)
        .status()
        .unwrap();
    assert!(status.success(), "the healthcheck fails: {test:?}");

    // berth with the berth service's environment and the image's command.
    let mut benv = environment_with_secrets(&c, "berth");
    for (k, v) in [
        ("BERTH_DATA_DIR", tmp.path().join("berth")),
        ("BERTH_KEYSTONE_URL", v3.clone().into()),
        ("BERTH_REGISTRY_LISTEN", "127.0.0.1:0".into()),
        ("BERTH_IDENTITY_LISTEN", "127.0.0.1:0".into()),
    ] {
        benv.insert(k.into(), v.to_str().unwrap().to_owned());
    }
    let (berth, registry_port, token_port) = start_berth(&benv, tmp.path());
    let _berth = berth;

    let ca = std::fs::read(tmp.path().join("berth/tls/ca.crt")).expect("berth's CA");
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .resolve("localhost", ([127, 0, 0, 1], 0).into())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let repo = format!("{demo_project}/hello");
    let resp = https
        .get(format!("https://localhost:{token_port}/token"))
        .query(&[
            ("service", "berth-registry"),
            ("scope", &format!("repository:{repo}:pull,push")),
        ])
        .basic_auth(&demo_user, Some(&demo_password))
        .send()
        .await
        .expect("GET /token");
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let body: serde_json::Value = resp.json().await.unwrap();
    let token = body["token"].as_str().expect("token");
    let claims: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": repo, "actions": ["pull", "push"]}]),
        "{claims}"
    );
    let v2 = https
        .get(format!("https://localhost:{registry_port}/v2/"))
        .bearer_auth(token)
        .send()
        .await
        .expect("GET /v2/");
    assert_eq!(v2.status(), 200);
    drop(keystone);
}

/// `berth serve` with `env` only; returns it and its registry and token
/// service ports (from its log).
fn start_berth(env: &BTreeMap<String, String>, dir: &Path) -> (Group, u16, u16) {
    let log = dir.join("berth.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("serve")
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .expect("run berth serve");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    let log2 = log.clone();
    std::thread::spawn(move || {
        let mut file = std::fs::File::create(log2).unwrap();
        let port = |line: &str, marker: &str| {
            line.split(marker)
                .nth(1)?
                .split_whitespace()
                .next()?
                .rsplit(':')
                .next()?
                .parse::<u16>()
                .ok()
        };
        let (mut registry, mut token, mut tx) = (None, None, Some(tx));
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = writeln!(file, "{line}");
            registry = registry.or(port(&line, "registry listening addr="));
            token = token.or(port(&line, "token service listening addr="));
            if let (Some(r), Some(t)) = (registry, token)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send((r, t));
            }
        }
    });
    let group = Group { child, log };
    let Ok((registry, token)) = rx.recv_timeout(Duration::from_secs(60)) else {
        panic!("berth serve did not report its addresses");
    };
    (group, registry, token)
}
