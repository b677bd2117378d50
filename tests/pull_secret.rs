//! `berth pull-secret` against a real Keystone (tests/common/keystone.rs):
//! the real binary with a user's OpenStack settings (openrc variables, or
//! clouds.yaml with secure.yaml) creates an application credential that has
//! only the `reader` role on the project and the asked expiry, and prints a
//! Secret (or writes a Docker config.json) that carries it; failures say
//! what is wrong; no secret ever reaches standard error.

mod common;

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::keystone::{Admin, DEFAULT_DOMAIN_ID, Keystone, UserLogin, unique};
use common::pull_secret::{PullSecretRun, openrc, pull_auth_file, run_pull_secret};
use serde_json::{Value, json};

const REGISTRY: &str = "registry.example:5000";

/// A project and a user with `role` on it (no role when `None`).
async fn user_and_project(admin: &Admin, role: Option<&str>) -> (UserLogin, String, String) {
    let project = unique("team");
    let project_id = admin.create_project(&project, DEFAULT_DOMAIN_ID, &[]).await;
    let user = admin.new_user("dev").await;
    if let Some(role) = role {
        admin.assign_project_role(&user.id, &project_id, role).await;
    }
    (user, project, project_id)
}

/// The `auths` entry for [`REGISTRY`] of a Docker config: (username, password).
fn auth_entry(config: &Value) -> (String, String) {
    let entry = &config["auths"][REGISTRY];
    let username = entry["username"].as_str().expect("username").to_owned();
    let password = entry["password"].as_str().expect("password").to_owned();
    let auth = BASE64
        .decode(entry["auth"].as_str().expect("auth"))
        .expect("auth is base64");
    assert_eq!(
        String::from_utf8(auth).unwrap(),
        format!("{username}:{password}")
    );
    (username, password)
}

/// The `.dockerconfigjson` of a Secret (as JSON), decoded.
fn docker_config_of(secret: &Value) -> Value {
    assert_eq!(secret["apiVersion"], "v1");
    assert_eq!(secret["kind"], "Secret");
    assert_eq!(secret["type"], "kubernetes.io/dockerconfigjson");
    let b64 = secret["data"][".dockerconfigjson"]
        .as_str()
        .expect(".dockerconfigjson");
    serde_json::from_slice(&BASE64.decode(b64).expect("base64")).expect("JSON")
}

/// Logs in with the application credential: the token's project and roles.
async fn app_cred_login(ks: &Keystone, id: &str, secret: &str) -> (String, Vec<String>) {
    let resp = reqwest::Client::new()
        .post(format!("{}/auth/tokens?nocatalog", ks.v3()))
        .json(
            &json!({"auth": {"identity": {"methods": ["application_credential"],
            "application_credential": {"id": id, "secret": secret}}}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201, "application credential login");
    let body: Value = resp.json().await.unwrap();
    let mut roles: Vec<String> = body["token"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    roles.sort();
    (
        body["token"]["project"]["id"].as_str().unwrap().to_owned(),
        roles,
    )
}

/// The user's application credentials, as Keystone lists them.
async fn app_creds(admin: &Admin, user: &UserLogin) -> Vec<Value> {
    let token = admin
        .user_token(&user.name, &user.domain_id, &user.password, None)
        .await;
    let (_, v) = admin
        .call_as(
            &token,
            reqwest::Method::GET,
            &format!("/users/{}/application_credentials", user.id),
            None,
            &[200],
        )
        .await;
    v["application_credentials"].as_array().unwrap().clone()
}

/// Seconds since the epoch of `2026-01-01T00:00:00[.000000][Z]`.
fn epoch_secs(s: &str) -> i64 {
    let s = s.trim_end_matches('Z');
    let (date, time) = s.split_once('T').expect("T");
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let t: Vec<i64> = time
        .split('.')
        .next()
        .unwrap()
        .split(':')
        .map(|p| p.parse().unwrap())
        .collect();
    let (y, m) = if d[1] <= 2 {
        (d[0] - 1, d[1] + 9)
    } else {
        (d[0], d[1] - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2]
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Neither the new secret nor the user's password on standard error.
fn assert_quiet_about_secrets(run: &PullSecretRun, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !run.stderr.contains(s),
            "a secret on standard error:\n{}",
            run.stderr
        );
    }
}

#[tokio::test]
async fn creates_a_reader_credential_and_prints_a_secret() {
    let ks = Keystone::shared();
    let admin = ks.admin();
    let (user, project, project_id) = user_and_project(&admin, Some("member")).await;
    let dir = tempfile::tempdir().unwrap();

    let before = now_secs();
    let mut env = openrc(ks, &user);
    // Debug logging too: still no secret on standard error.
    env.push(("BERTH_LOG".into(), "debug".into()));
    let run = run_pull_secret(
        dir.path(),
        &env,
        &[
            "--project",
            &project,
            "--namespace",
            "apps",
            "--registry",
            REGISTRY,
        ],
    );
    run.assert_ok();

    let secret: Value = serde_norway::from_str(&run.stdout).expect("the Secret is YAML");
    let md = &secret["metadata"];
    assert_eq!(md["name"], format!("berth-pull-{project}").as_str());
    assert_eq!(md["namespace"], "apps");
    assert_eq!(md["annotations"]["berth.io/project"], project.as_str());
    assert_eq!(md["labels"]["berth.io/project-id"], project_id.as_str());
    let (username, password) = auth_entry(&docker_config_of(&secret));
    let id = username
        .strip_prefix("applicationcredential-")
        .expect("username applicationcredential-<id>");
    assert_eq!(md["annotations"]["berth.io/application-credential-id"], id);
    assert_eq!(md["labels"]["berth.io/application-credential-id"], id);
    assert_quiet_about_secrets(&run, &[&password, &user.password]);
    assert!(
        run.stderr.contains(id) && run.stderr.contains(&project),
        "the summary names the credential and the project:\n{}",
        run.stderr
    );

    // Only `reader`, on the project, although the user is a member.
    let (scoped_to, roles) = app_cred_login(ks, id, &password).await;
    assert_eq!(scoped_to, project_id);
    assert_eq!(roles, ["reader"]);

    // Keystone has it with its name, description and a 90-day expiry.
    let creds = app_creds(&admin, &user).await;
    assert_eq!(creds.len(), 1, "{creds:?}");
    let ac = &creds[0];
    assert_eq!(ac["id"], id);
    assert_eq!(ac["project_id"], project_id.as_str());
    let name = ac["name"].as_str().unwrap();
    assert!(
        name.starts_with(&format!("berth-pull-{project}-")) && name.ends_with('Z'),
        "{name}"
    );
    assert_eq!(ac["description"], "berth pull secret for apps (reader)");
    let expires = epoch_secs(ac["expires_at"].as_str().expect("an expiry"));
    let after = now_secs();
    let ninety_days = 90 * 86_400;
    assert!(
        (before + ninety_days - 1..=after + ninety_days + 1).contains(&expires),
        "expires_at {} is not 90 days from now",
        ac["expires_at"]
    );
    let annotated = md["annotations"]["berth.io/expires-at"].as_str().unwrap();
    assert_eq!(epoch_secs(annotated), expires);
}

#[tokio::test]
async fn clouds_yaml_with_secure_yaml_and_a_project_id() {
    let ks = Keystone::shared();
    let admin = ks.admin();
    let (user, _project, project_id) = user_and_project(&admin, Some("reader")).await;
    let dir = tempfile::tempdir().unwrap();
    let clouds = dir.path().join("cfg/clouds.yaml");
    let secure = dir.path().join("cfg/secure.yaml");
    std::fs::create_dir_all(clouds.parent().unwrap()).unwrap();
    std::fs::write(
        &clouds,
        format!(
            "clouds:\n  test:\n    auth:\n      auth_url: {}\n      username: {}\n      \
             user_domain_name: Default\n      project_name: somewhere-else\n      \
             project_domain_id: default\n    region_name: RegionOne\n    \
             identity_api_version: 3\n",
            ks.url(),
            user.name
        ),
    )
    .unwrap();
    std::fs::write(
        &secure,
        format!(
            "clouds:\n  test:\n    auth:\n      password: {}\n",
            user.password
        ),
    )
    .unwrap();
    let env: Vec<(String, String)> = [
        ("OS_CLOUD", "test"),
        ("OS_CLIENT_CONFIG_FILE", clouds.to_str().unwrap()),
        ("OS_CLIENT_SECURE_FILE", secure.to_str().unwrap()),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    let before = now_secs();
    let run = run_pull_secret(
        dir.path(),
        &env,
        &[
            "--project",
            &project_id,
            "--registry",
            REGISTRY,
            "--expires-in",
            "12h",
            "--format",
            "json",
            "--name",
            "pull-creds",
        ],
    );
    run.assert_ok();
    let secret: Value = serde_json::from_str(&run.stdout).expect("the Secret is JSON");
    assert_eq!(secret["metadata"]["name"], "pull-creds");
    assert!(secret["metadata"].get("namespace").is_none());
    let (username, password) = auth_entry(&docker_config_of(&secret));
    let id = username.strip_prefix("applicationcredential-").unwrap();
    assert_quiet_about_secrets(&run, &[&password, &user.password]);

    let (scoped_to, roles) = app_cred_login(ks, id, &password).await;
    assert_eq!(
        (scoped_to.as_str(), roles),
        (project_id.as_str(), vec!["reader".to_owned()])
    );
    let creds = app_creds(&admin, &user).await;
    let expires = epoch_secs(creds[0]["expires_at"].as_str().unwrap());
    assert!(
        (before + 12 * 3600 - 1..=now_secs() + 12 * 3600 + 1).contains(&expires),
        "{}",
        creds[0]["expires_at"]
    );
    // Without a namespace, the description names the project.
    let project_name = secret["metadata"]["annotations"]["berth.io/project"]
        .as_str()
        .unwrap();
    assert_eq!(
        creds[0]["description"],
        format!("berth pull secret for {project_name} (reader)").as_str()
    );
}

#[tokio::test]
async fn no_role_on_the_project_is_a_clear_error() {
    let ks = Keystone::shared();
    let admin = ks.admin();
    let (user, project, _) = user_and_project(&admin, None).await;
    // A role elsewhere, so that the error can list it.
    let (other_user, other, other_id) = user_and_project(&admin, Some("member")).await;
    admin
        .assign_project_role(&user.id, &other_id, "member")
        .await;
    let _ = other_user;
    let dir = tempfile::tempdir().unwrap();
    let run = run_pull_secret(
        dir.path(),
        &openrc(ks, &user),
        &["--project", &project, "--registry", REGISTRY],
    );
    run.assert_failed();
    assert!(run.stdout.is_empty(), "{}", run.stdout);
    assert!(
        run.stderr.contains(&project) && run.stderr.contains("no role on it"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(&other),
        "lists the user's projects:\n{}",
        run.stderr
    );
    assert_quiet_about_secrets(&run, &[&user.password]);
    assert!(app_creds(&admin, &user).await.is_empty());

    // A project that does not exist at all: the same answer.
    let run = run_pull_secret(
        dir.path(),
        &openrc(ks, &user),
        &["--project", "no-such-project", "--registry", REGISTRY],
    );
    run.assert_failed();
    assert!(run.stderr.contains("no-such-project"), "{}", run.stderr);
}

#[tokio::test]
async fn wrong_password_and_unreachable_keystone_are_clear_errors() {
    let ks = Keystone::shared();
    let admin = ks.admin();
    let (user, project, _) = user_and_project(&admin, Some("member")).await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = openrc(ks, &user);
    env.retain(|(k, _)| k != "OS_PASSWORD");
    env.push(("OS_PASSWORD".into(), "not-the-password".into()));
    let run = run_pull_secret(
        dir.path(),
        &env,
        &["--project", &project, "--registry", REGISTRY],
    );
    run.assert_failed();
    assert!(
        run.stderr.contains("refused the credentials") && run.stderr.contains(&user.name),
        "{}",
        run.stderr
    );
    assert_quiet_about_secrets(&run, &["not-the-password"]);

    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut env = openrc(ks, &user);
    env.retain(|(k, _)| k != "OS_AUTH_URL");
    env.push(("OS_AUTH_URL".into(), format!("http://127.0.0.1:{port}/v3")));
    let run = run_pull_secret(
        dir.path(),
        &env,
        &["--project", &project, "--registry", REGISTRY],
    );
    run.assert_failed();
    assert!(
        run.stderr.contains("cannot reach Keystone"),
        "{}",
        run.stderr
    );

    // No credentials at all.
    let run = run_pull_secret(
        dir.path(),
        &[],
        &["--project", &project, "--registry", REGISTRY],
    );
    run.assert_failed();
    assert!(
        run.stderr.contains("no OpenStack credentials"),
        "{}",
        run.stderr
    );
    // OS_INSECURE is refused before anything is sent.
    let mut env = openrc(ks, &user);
    env.push(("OS_INSECURE".into(), "true".into()));
    let run = run_pull_secret(
        dir.path(),
        &env,
        &["--project", &project, "--registry", REGISTRY],
    );
    run.assert_failed();
    assert!(run.stderr.contains("OS_CACERT"), "{}", run.stderr);
    assert!(app_creds(&admin, &user).await.is_empty());
}

#[tokio::test]
async fn output_config_writes_a_private_auth_file() {
    let ks = Keystone::shared();
    let admin = ks.admin();
    let (user, project, project_id) = user_and_project(&admin, Some("member")).await;
    let dir = tempfile::tempdir().unwrap();

    let path = pull_auth_file(ks, &user, &project, REGISTRY, dir.path());
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let (username, password) = auth_entry(&config);
    let id = username.strip_prefix("applicationcredential-").unwrap();
    assert_eq!(app_cred_login(ks, id, &password).await.0, project_id);

    // It exists: refused before any credential is made; --force replaces it.
    let args = |force: bool| {
        let mut a = vec![
            "--project".to_owned(),
            project.clone(),
            "--registry".to_owned(),
            REGISTRY.to_owned(),
            "--output-config".to_owned(),
            path.to_str().unwrap().to_owned(),
        ];
        if force {
            a.push("--force".to_owned());
        }
        a
    };
    let run_with = |force: bool| {
        let a = args(force);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        run_pull_secret(dir.path(), &openrc(ks, &user), &a)
    };
    let run = run_with(false);
    run.assert_failed();
    assert!(run.stderr.contains("exists already"), "{}", run.stderr);
    assert_eq!(app_creds(&admin, &user).await.len(), 1);
    let run = run_with(true);
    run.assert_ok();
    assert!(
        run.stdout.is_empty(),
        "nothing on stdout with --output-config"
    );
    let config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let (_, new_password) = auth_entry(&config);
    assert_ne!(new_password, password);
    assert_quiet_about_secrets(&run, &[&new_password, &user.password]);
    assert_eq!(app_creds(&admin, &user).await.len(), 2);
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
}

#[tokio::test]
async fn application_credentials_as_the_callers_login() {
    let ks = Keystone::shared();
    let admin = ks.admin();
    let (user, project, project_id) = user_and_project(&admin, Some("member")).await;
    let dir = tempfile::tempdir().unwrap();
    let app_cred_env = |id: &str, secret: &str| -> Vec<(String, String)> {
        [
            ("OS_AUTH_URL", ks.v3()),
            ("OS_AUTH_TYPE", "v3applicationcredential".to_owned()),
            ("OS_APPLICATION_CREDENTIAL_ID", id.to_owned()),
            ("OS_APPLICATION_CREDENTIAL_SECRET", secret.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    };

    // A restricted one (Keystone's default) may not create others.
    let restricted = admin
        .create_application_credential(&user, &project_id, &["member"], None)
        .await;
    let run = run_pull_secret(
        dir.path(),
        &app_cred_env(&restricted.id, &restricted.secret),
        &["--project", &project, "--registry", REGISTRY],
    );
    run.assert_failed();
    assert!(run.stderr.contains("restricted"), "{}", run.stderr);
    assert_quiet_about_secrets(&run, &[&restricted.secret]);

    // An unrestricted one may, for its own project only.
    let token = admin
        .user_token(
            &user.name,
            &user.domain_id,
            &user.password,
            Some(&project_id),
        )
        .await;
    let (_, v) = admin
        .call_as(
            &token,
            reqwest::Method::POST,
            &format!("/users/{}/application_credentials", user.id),
            Some(json!({"application_credential": {
                "name": unique("unrestricted"), "roles": [{"name": "member"}],
                "unrestricted": true}})),
            &[201],
        )
        .await;
    let id = v["application_credential"]["id"].as_str().unwrap();
    let secret = v["application_credential"]["secret"].as_str().unwrap();
    let run = run_pull_secret(
        dir.path(),
        &app_cred_env(id, secret),
        &["--project", "another-project", "--registry", REGISTRY],
    );
    run.assert_failed();
    assert!(
        run.stderr.contains(&project),
        "names its project:\n{}",
        run.stderr
    );
    let run = run_pull_secret(
        dir.path(),
        &app_cred_env(id, secret),
        &[
            "--project",
            &project,
            "--registry",
            REGISTRY,
            "--expires-in",
            "never",
        ],
    );
    run.assert_ok();
    assert_quiet_about_secrets(&run, &[secret]);
    let made: Value = serde_norway::from_str(&run.stdout).unwrap();
    assert_eq!(
        made["metadata"]["annotations"]["berth.io/expires-at"],
        "never"
    );
    let (username, password) = auth_entry(&docker_config_of(&made));
    let new_id = username.strip_prefix("applicationcredential-").unwrap();
    assert_eq!(
        app_cred_login(ks, new_id, &password).await,
        (project_id.clone(), vec!["reader".to_owned()])
    );
    let creds = app_creds(&admin, &user).await;
    let new = creds.iter().find(|c| c["id"] == new_id).expect("listed");
    assert!(new["expires_at"].is_null(), "{new}");
}

#[test]
fn bad_arguments_fail_before_keystone() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens here: any request would fail differently.
    let env: Vec<(String, String)> = [
        ("OS_AUTH_URL", "http://127.0.0.1:9/v3"),
        ("OS_USERNAME", "u"),
        ("OS_PASSWORD", "p"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (args, expect) in [
        (vec!["--expires-in", "soon"], "--expires-in"),
        (vec!["--expires-in", "0"], "--expires-in"),
        (vec!["--namespace", "Bad_NS"], "--namespace"),
        (vec!["--name", "UPPER"], "--name"),
    ] {
        let mut all = vec!["--project", "p", "--registry", REGISTRY];
        all.extend(args);
        let run = run_pull_secret(dir.path(), &env, &all);
        run.assert_failed();
        assert!(run.stderr.contains(expect), "{all:?}: {}", run.stderr);
        assert!(!run.stderr.contains("cannot reach"), "{}", run.stderr);
    }
    let run = run_pull_secret(dir.path(), &env, &["--project", "p", "--registry", "a/b"]);
    run.assert_failed();
    assert!(run.stderr.contains("--registry"), "{}", run.stderr);
    // --registry is required (or BERTH_PUBLIC_REGISTRY).
    let run = run_pull_secret(dir.path(), &env, &["--project", "p"]);
    run.assert_failed();
    assert!(run.stderr.contains("--registry"), "{}", run.stderr);
    let existing = dir.path().join("exists.json");
    std::fs::write(&existing, "{}").unwrap();
    let run = run_pull_secret(
        dir.path(),
        &env,
        &[
            "--project",
            "p",
            "--registry",
            REGISTRY,
            "--output-config",
            existing.to_str().unwrap(),
        ],
    );
    run.assert_failed();
    assert!(run.stderr.contains("exists already"), "{}", run.stderr);
    assert!(Path::new(&existing).exists());
}

/// `YYYYMMDDTHHMMSSZ` of seconds since the epoch (UTC).
fn utc_stamp(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[tokio::test]
async fn a_name_taken_in_the_same_second_gets_a_suffix() {
    assert_eq!(utc_stamp(1_772_600_767), "20260304T050607Z");
    let ks = Keystone::shared();
    let admin = ks.admin();
    let (user, project, project_id) = user_and_project(&admin, Some("member")).await;
    let token = admin
        .user_token(
            &user.name,
            &user.domain_id,
            &user.password,
            Some(&project_id),
        )
        .await;
    // Take the names of this second and the next few.
    let now = now_secs();
    for s in now..now + 5 {
        admin
            .call_as(
                &token,
                reqwest::Method::POST,
                &format!("/users/{}/application_credentials", user.id),
                Some(json!({"application_credential": {
                    "name": format!("berth-pull-{project}-{}", utc_stamp(s)),
                    "roles": [{"name": "reader"}]}})),
                &[201],
            )
            .await;
    }
    let dir = tempfile::tempdir().unwrap();
    let run = run_pull_secret(
        dir.path(),
        &openrc(ks, &user),
        &["--project", &project, "--registry", REGISTRY],
    );
    run.assert_ok();
    let secret: Value = serde_norway::from_str(&run.stdout).unwrap();
    let name = secret["metadata"]["annotations"]["berth.io/application-credential-name"]
        .as_str()
        .unwrap();
    assert!(
        name.starts_with(&format!("berth-pull-{project}-")) && name.ends_with("Z-2"),
        "{name}"
    );
    assert_eq!(app_creds(&admin, &user).await.len(), 6);
}
