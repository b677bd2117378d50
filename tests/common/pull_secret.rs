//! Runs `berth pull-secret` as a user would: the real binary, given only
//! the OpenStack settings a test chooses (the test process's own `OS_*`
//! variables are removed), with its working and home directories in a
//! directory of the test's, so that no `clouds.yaml` of the machine counts.
//!
//! [`pull_auth_file`] is the one-call helper for tests that need pull
//! credentials for a client: it writes a Docker `config.json` (what
//! `skopeo --authfile` and `podman --authfile` read) and returns its path.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};

use super::keystone::{Keystone, UserLogin};

/// What a run printed.
pub struct PullSecretRun {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl PullSecretRun {
    /// Panics with the output unless the run succeeded.
    pub fn assert_ok(&self) -> &Self {
        assert!(
            self.status.success(),
            "berth pull-secret failed ({}):\n{}",
            self.status,
            self.stderr
        );
        self
    }

    /// Panics with the output unless the run failed.
    pub fn assert_failed(&self) -> &Self {
        assert!(
            !self.status.success(),
            "berth pull-secret should have failed:\n{}\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// The `OS_*` variables of an openrc file for `user` (domain by id, no
/// project: `--project` says which).
pub fn openrc(ks: &Keystone, user: &UserLogin) -> Vec<(String, String)> {
    [
        ("OS_AUTH_URL", ks.v3()),
        ("OS_USERNAME", user.name.clone()),
        ("OS_PASSWORD", user.password.clone()),
        ("OS_USER_DOMAIN_ID", user.domain_id.clone()),
        ("OS_IDENTITY_API_VERSION", "3".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect()
}

/// Runs `berth pull-secret ARGS` with `envs`, in `dir` (which becomes its
/// working directory and, under `home/`, its home).
pub fn run_pull_secret(dir: &Path, envs: &[(String, String)], args: &[&str]) -> PullSecretRun {
    let home = dir.join("home");
    std::fs::create_dir_all(&home).expect("create home");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.arg("pull-secret").args(args).current_dir(dir);
    for (k, _) in std::env::vars_os() {
        if k.to_str()
            .is_some_and(|k| k.starts_with("OS_") || k.starts_with("BERTH_"))
        {
            cmd.env_remove(&k);
        }
    }
    let out = cmd
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .expect("run berth pull-secret");
    PullSecretRun {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Creates a pull credential for `project` (a name in `user`'s domain, or
/// an id) as `user`, and writes the Docker `config.json` for `registry`
/// (`HOST:PORT`) into `dir`; returns its path. Panics on failure.
pub fn pull_auth_file(
    ks: &Keystone,
    user: &UserLogin,
    project: &str,
    registry: &str,
    dir: &Path,
) -> PathBuf {
    let path = dir.join(format!("pull-auth-{project}.json"));
    let mut env = openrc(ks, user);
    env.push(("OS_PROJECT_DOMAIN_ID".into(), user.domain_id.clone()));
    run_pull_secret(
        dir,
        &env,
        &[
            "--project",
            project,
            "--registry",
            registry,
            "--output-config",
            path.to_str().expect("UTF-8 path"),
        ],
    )
    .assert_ok();
    path
}
