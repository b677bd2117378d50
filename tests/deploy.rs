//! The deployment files (deploy/) and docs/operations/high-availability.md,
//! held against the real binary and the documents they must agree with:
//!
//! - the example `/etc/berth/berth.toml` passes `berth config check`;
//! - the unit's `ExecStart` line, with that file, starts a real server
//!   (data directory and ports moved to a temporary place), which writes
//!   the pid file, answers the cluster drop-in's readiness command, and
//!   exits 0 on SIGTERM, removing the pid file;
//! - the statuses the unit does not restart are exactly the "no" rows of
//!   the exit status table in docs/configuration.md;
//! - the stop timeouts exceed the shutdown grace (unit, pacemaker);
//! - `systemd-analyze verify` accepts the unit with the cluster drop-in,
//!   and `systemd-sysusers --dry-run` the account (skipped, with a note,
//!   where the tools are missing);
//! - the shell scripts parse, and the SM script maps states as LSB says;
//! - the takeover figures the document quotes are docs/benchmarks.md's,
//!   and its links to deploy/ point at files that exist.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");
const UNIT: &str = "deploy/systemd/berth.service";
const DROP_IN: &str = "deploy/systemd/cluster/10-cluster.conf";
const CONFIG: &str = "deploy/systemd/berth.toml";
const HA_DOC: &str = "docs/operations/high-availability.md";

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The values of `key=` in a unit file, in order (comments skipped).
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
        .collect()
}

fn unit_value(text: &str, key: &str) -> String {
    let values = unit_values(text, key);
    assert_eq!(values.len(), 1, "{key}= once: {values:?}");
    values[0].clone()
}

/// A systemd time span in whole seconds (`45`, `45s`, `1min`).
fn seconds(span: &str) -> u64 {
    if let Some(min) = span.strip_suffix("min") {
        return min.trim().parse::<u64>().expect("minutes") * 60;
    }
    span.trim_end_matches('s')
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("not a time span: {span}"))
}

/// Whether `program` runs at all (found on PATH and executable).
fn have(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// The arguments of the unit's `ExecStart` after the binary, with the
/// configuration file's path replaced by the repository's example.
fn exec_start_args() -> Vec<String> {
    let unit = read(UNIT);
    let exec = unit_value(&unit, "ExecStart");
    let mut words = exec.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some("/usr/local/bin/berth"));
    let mut args: Vec<String> = words.collect();
    let at = args
        .iter()
        .position(|a| a == "--config")
        .expect("ExecStart names the configuration file with --config");
    assert_eq!(args[at + 1], "/etc/berth/berth.toml");
    args[at + 1] = repo(CONFIG).display().to_string();
    args
}

#[test]
fn the_example_configuration_passes_config_check() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BERTH)
        .args(["config", "check", "--config"])
        .arg(repo(CONFIG))
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .env_remove("BERTH_CONFIG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("configuration OK"), "{stdout}");
    assert!(!stdout.contains("warning"), "{stdout}");

    // The same flags as the unit's command line, for `config check`.
    let mut args = exec_start_args();
    assert_eq!(args.remove(0), "serve", "the unit runs `berth serve`");
    let out = Command::new(BERTH)
        .args(["config", "check"])
        .args(&args)
        .env_remove("BERTH_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn the_units_command_line_serves_with_the_example_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let pid_file = dir.path().join("berth.pid");
    let mut child = Command::new(BERTH)
        .args(exec_start_args())
        .arg("--data-dir")
        .arg(&data)
        .args(["--set", "registry.listen=127.0.0.1:0"])
        .args(["--set", "identity.listen=127.0.0.1:0"])
        .arg("--set")
        .arg(format!("server.pid_file={}", pid_file.display()))
        .env_remove("BERTH_CONFIG")
        .env("BERTH_LOG_FORMAT", "text")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();

    // The registry's address from the log.
    let (tx, rx) = mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.split("registry listening addr=").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(addr) => addr,
        Err(e) => {
            let _ = child.kill();
            panic!("berth did not serve with the example configuration: {e}");
        }
    };

    let written = std::fs::read_to_string(&pid_file).expect("the pid file is written");
    assert_eq!(written, format!("{pid}\n"));

    // The cluster drop-in's readiness command, on this server's port.
    let post = unit_value(&read(DROP_IN), "ExecStartPost");
    assert!(post.contains("127.0.0.1:9001"), "{post}");
    if have("curl") {
        let script = post
            .strip_prefix("/bin/sh -c '")
            .and_then(|s| s.strip_suffix('\''))
            .expect("ExecStartPost=/bin/sh -c '...'")
            .replace("127.0.0.1:9001", &addr);
        let status = Command::new("timeout")
            .args(["30", "/bin/sh", "-c", &script])
            .status()
            .unwrap();
        assert!(status.success(), "{script}: {status}");
    } else {
        eprintln!("note: curl not found, the drop-in's readiness command was not run");
    }

    let kill = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait());
    });
    let status = done_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("berth stops on SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!pid_file.exists(), "a clean stop removes the pid file");
}

#[test]
fn the_statuses_not_restarted_are_the_no_rows_of_the_exit_table() {
    let unit = read(UNIT);
    let prevent = unit_value(&unit, "RestartPreventExitStatus");
    let codes: BTreeSet<u8> = prevent
        .split_whitespace()
        .map(|c| c.parse().expect("a numeric status"))
        .collect();
    assert_eq!(unit_value(&unit, "Restart"), "on-failure");

    let doc = read("docs/configuration.md");
    let table = doc
        .split("**Exit statuses**")
        .nth(1)
        .expect("docs/configuration.md has the exit status table");
    let mut listed = BTreeSet::new();
    let mut not_restarted = BTreeSet::new();
    for row in table.lines().skip_while(|l| !l.starts_with('|')) {
        if !row.starts_with('|') {
            break;
        }
        let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
        let Ok(code) = cells[0].parse::<u8>() else {
            continue; // the header and its rule
        };
        listed.insert(code);
        if cells.last().is_some_and(|c| c.starts_with("no")) {
            not_restarted.insert(code);
        }
    }
    for code in &codes {
        assert!(listed.contains(code), "{code} is not in the exit table");
    }
    assert_eq!(codes, not_restarted, "RestartPreventExitStatus={prevent}");
    assert!(
        doc.contains(&format!("RestartPreventExitStatus={prevent}")),
        "docs/configuration.md suggests the unit's RestartPreventExitStatus"
    );
}

#[test]
fn the_stop_timeouts_exceed_the_shutdown_grace() {
    let config: toml::Table = read(CONFIG).parse().unwrap();
    let grace = config
        .get("server")
        .and_then(|s| s.get("shutdown_grace"))
        .and_then(toml::Value::as_integer)
        .map_or(30, |g| u64::try_from(g).unwrap());
    let unit = read(UNIT);
    let stop = seconds(&unit_value(&unit, "TimeoutStopSec"));
    // The process exits up to about a second after the grace.
    assert!(stop >= grace + 5, "TimeoutStopSec={stop}, grace {grace}");

    // Pacemaker waits for systemd's stop job: its timeout covers the unit's.
    for file in [
        "deploy/pacemaker/berth.crm",
        "deploy/pacemaker/berth.pcs.sh",
    ] {
        let text = read(file);
        let berth = text
            .split("p_berth systemd:berth")
            .nth(1)
            .unwrap_or_else(|| panic!("{file} runs berth as systemd:berth"));
        let timeout = berth
            .split("op stop timeout=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or_else(|| panic!("{file}: no stop timeout for berth"));
        assert!(seconds(timeout) > stop, "{file}: stop timeout {timeout}");
    }
}

#[test]
fn systemd_accepts_the_unit_the_drop_in_and_the_account() {
    if !have("systemd-analyze") {
        eprintln!("note: systemd-analyze not found: the unit was not verified");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // verify checks that the binary exists: point it at the one built.
    let unit = read(UNIT).replace("/usr/local/bin/berth", BERTH);
    std::fs::write(dir.path().join("berth.service"), unit).unwrap();
    std::fs::create_dir(dir.path().join("berth.service.d")).unwrap();
    std::fs::copy(
        repo(DROP_IN),
        dir.path().join("berth.service.d/10-cluster.conf"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join("berth.service"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Unknown keys and bad values are only warnings: fail on any line
    // about these files.
    let about_ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("berth.service") || l.contains("10-cluster.conf"))
        .collect();
    assert!(
        out.status.success() && about_ours.is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );

    if have("systemd-sysusers") {
        let root = tempfile::tempdir().unwrap();
        let out = Command::new("systemd-sysusers")
            .arg("--dry-run")
            .arg(format!("--root={}", root.path().display()))
            .arg(repo("deploy/systemd/sysusers.d/berth.conf"))
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{all}");
        assert!(all.contains("Creating user 'berth'"), "{all}");
    } else {
        eprintln!("note: systemd-sysusers not found: the account file was not checked");
    }
}

#[test]
fn the_scripts_parse_and_the_sm_script_speaks_lsb() {
    for script in [
        "deploy/pacemaker/berth.pcs.sh",
        "deploy/starlingx/berth.init",
    ] {
        let status = Command::new("sh")
            .arg("-n")
            .arg(repo(script))
            .status()
            .unwrap();
        assert!(status.success(), "{script} does not parse");
    }

    // A systemctl that logs its arguments, active or not as told.
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("systemctl");
    std::fs::write(
        &fake,
        "#!/bin/sh\necho \"$*\" >> \"$LOG\"\n[ \"$1\" = is-active ] && exit \"$ACTIVE\"\nexit 0\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let log = dir.path().join("log");
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let run = |arg: &str, active: &str| {
        Command::new(repo("deploy/starlingx/berth.init"))
            .arg(arg)
            .env("PATH", &path)
            .env("LOG", &log)
            .env("ACTIVE", active)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .code()
    };
    assert_eq!(run("start", "0"), Some(0));
    assert_eq!(run("stop", "0"), Some(0));
    assert_eq!(run("status", "0"), Some(0), "running: 0");
    assert_eq!(run("status", "3"), Some(3), "not running: 3");
    assert_eq!(run("bogus", "0"), Some(2), "bad argument: 2");
    let calls = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        calls,
        "start berth.service\nstop berth.service\nis-active --quiet berth.service\n\
         is-active --quiet berth.service\n"
    );
}

#[test]
fn the_document_quotes_the_benchmark_and_links_files_that_exist() {
    let bench = read("docs/benchmarks.md");
    let section = bench
        .split("<!-- takeover-bench:begin -->")
        .nth(1)
        .and_then(|s| s.split("<!-- takeover-bench:end -->").next())
        .expect("docs/benchmarks.md has the takeover section");
    let doc = read(HA_DOC);

    // "Measured <date> <time> UTC, berth `<commit>` ..."
    let measured = section
        .split("Measured ")
        .nth(1)
        .expect("the section says when it was measured");
    let date = measured.split_whitespace().next().unwrap();
    let commit = measured.split('`').nth(1).unwrap();
    for quoted in [date, commit] {
        assert!(
            doc.contains(quoted),
            "docs/benchmarks.md's takeover figures changed ({quoted}): update {HA_DOC}"
        );
    }
    let mut rows = 0;
    for line in section.lines().filter(|l| l.starts_with('|')) {
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 3 || cells[1].parse::<u64>().is_err() {
            continue;
        }
        let row = format!("| {} | {} | {} |", cells[0], cells[1], cells[2]);
        assert!(
            doc.contains(&row),
            "{HA_DOC} does not quote the benchmark's row {row}"
        );
        rows += 1;
    }
    assert_eq!(rows, 3, "the takeover table's rows");

    // Links into the repository resolve.
    let base = repo(HA_DOC).parent().unwrap().to_owned();
    let mut links = 0;
    for target in doc.split("](").skip(1) {
        let target = target.split(')').next().unwrap();
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        let file = target.split('#').next().unwrap();
        assert!(base.join(file).exists(), "{HA_DOC} links to {target}");
        links += 1;
    }
    assert!(links > 10, "{links} links");
    assert!(read("README.md").contains("docs/operations/high-availability.md"));
    assert!(read("docs/configuration.md").contains("operations/high-availability.md"));
}
