//! The audit log: one JSON line per token request, saying when, who, from
//! where, for which service, what was asked, what was granted and how it
//! ended.
//!
//! # Decisions
//!
//! - A line holds: `time` (RFC 3339, UTC, milliseconds; when the request
//!   arrived), `outcome` (`granted`, `denied`, `invalid_credentials`,
//!   `rate_limited`, `unavailable`), `account` (the login name as presented),
//!   `user_id`, `username` and `domain` (as Keystone has them, once
//!   authenticated), `auth_method` (`password`, `application_credential`,
//!   `refresh_token`), `application_credential_id`, `client_ip`, `service`,
//!   `http_method`, `requested` (scopes as `type:name:actions`) and `granted`
//!   (the token's `access` claim). Every key is always present (`null` when
//!   unknown), so that every line has the same shape.
//! - `granted` means a token was issued, possibly with less access than
//!   asked or none (the policy intersects); the `granted` list says what.
//! - No field can hold a password, secret or token: the event has none and
//!   is built from [`berth_auth::Scope`], [`berth_auth::Access`] and
//!   [`Identity`], which carry none. (A user who types a password into the
//!   user-name field puts it in `account`; nothing can tell.)
//! - With a file: lines are appended (`O_APPEND`, created with mode 0600:
//!   it holds user names and addresses); each line is serialised first and
//!   written with one `write_all` under a mutex, so lines of concurrent
//!   requests never interleave. Lines are not fsynced one by one (the cost
//!   would fall on every token); a crash may lose the last few.
//!   [`AuditLog::reopen`] reopens the path, for log rotation (wire it to
//!   SIGHUP).
//! - Without a file: each line is an INFO event of `tracing` target
//!   `berth::audit`, whose message is the JSON line.
//! - A failed write is reported with `tracing` at ERROR, carrying the line,
//!   so that the record is not lost; the request itself is not failed.
//! - JSON escapes control characters, so hostile scope names cannot forge
//!   lines.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use berth_auth::{Access, Scope};
use serde::{Deserialize, Serialize, Serializer};

use crate::authn::{Identity, Method};

/// The `tracing` target audit lines go to when no file is configured.
pub const TARGET: &str = "berth::audit";

/// How a token request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// A token was issued (its access may be less than asked, or empty).
    Granted,
    /// Refused for a reason other than the credentials (e.g. wrong service).
    Denied,
    InvalidCredentials,
    RateLimited,
    /// The identity backend (or token signing) failed.
    Unavailable,
}

/// One audit record. Built when a request arrives, filled in as it goes.
#[derive(Clone, Debug, Serialize)]
pub struct AuditEvent {
    #[serde(serialize_with = "serialize_time")]
    pub time: SystemTime,
    pub outcome: Outcome,
    /// The login name as presented (`alice@corp`,
    /// `applicationcredential-<id>`), or the refresh token's user name.
    pub account: Option<String>,
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub domain: Option<String>,
    pub auth_method: Option<String>,
    pub application_credential_id: Option<String>,
    pub client_ip: Option<IpAddr>,
    pub service: String,
    /// The HTTP method of the request.
    #[serde(rename = "http_method")]
    pub method: Option<String>,
    pub requested: Vec<String>,
    pub granted: Vec<Access>,
}

impl AuditEvent {
    /// A record of a request that just arrived; its outcome is `denied`
    /// until set.
    pub fn new(client_ip: Option<IpAddr>, service: &str, requested: &[Scope]) -> AuditEvent {
        AuditEvent {
            time: SystemTime::now(),
            outcome: Outcome::Denied,
            account: None,
            user_id: None,
            username: None,
            domain: None,
            auth_method: None,
            application_credential_id: None,
            client_ip,
            service: service.to_owned(),
            method: None,
            requested: requested.iter().map(ToString::to_string).collect(),
            granted: Vec::new(),
        }
    }

    /// Records who authenticated, and how.
    pub fn set_identity(&mut self, who: &Identity) {
        self.user_id = Some(who.user_id.clone());
        self.username = Some(who.username.clone());
        self.domain = Some(who.domain.clone());
        let (method, credential) = match &who.method {
            Method::Password => ("password", None),
            Method::ApplicationCredential { id } => ("application_credential", Some(id.clone())),
            Method::RefreshToken => ("refresh_token", None),
        };
        self.auth_method = Some(method.to_owned());
        self.application_credential_id = credential;
    }

    /// Sets the outcome.
    pub fn outcome(mut self, outcome: Outcome) -> AuditEvent {
        self.outcome = outcome;
        self
    }

    /// The record as one JSON line, newline included.
    fn to_line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).unwrap_or_else(|e| {
            // Nothing in an event can fail to serialise; say so if it does.
            format!(r#"{{"outcome":"audit_error","error":{:?}}}"#, e.to_string()).into_bytes()
        });
        line.push(b'\n');
        line
    }
}

fn serialize_time<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// `t` as RFC 3339 in UTC with milliseconds: `2024-02-29T12:34:56.500Z`.
/// Times before 1970 are written as the epoch.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days since 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of the 400-year era
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // from March 1st
    let mp = (5 * doy + 2) / 153; // month from March
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Audit settings from the configuration file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuditConfig {
    /// The file to append to; `None`: `tracing` target `berth::audit`.
    pub file: Option<PathBuf>,
}

enum Sink {
    Tracing,
    File { path: PathBuf, file: Mutex<File> },
    Writer(Mutex<Box<dyn Write + Send>>),
}

/// Where audit records go. Shared by all requests (`&self` everywhere).
pub struct AuditLog {
    sink: Sink,
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.append(true).create(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

impl AuditLog {
    /// Records go to `tracing` target [`TARGET`].
    pub fn tracing() -> AuditLog {
        AuditLog {
            sink: Sink::Tracing,
        }
    }

    /// Records are appended to the file at `path`, created if missing.
    pub fn open(path: impl Into<PathBuf>) -> io::Result<AuditLog> {
        let path = path.into();
        let file = open_append(&path)?;
        Ok(AuditLog {
            sink: Sink::File {
                path,
                file: Mutex::new(file),
            },
        })
    }

    /// As configured: the file if one is set, `tracing` otherwise.
    pub fn from_config(config: &AuditConfig) -> io::Result<AuditLog> {
        match &config.file {
            Some(path) => AuditLog::open(path.clone()),
            None => Ok(AuditLog::tracing()),
        }
    }

    /// Records are written to `writer` (tests, or a pipe).
    pub fn to_writer(writer: impl Write + Send + 'static) -> AuditLog {
        AuditLog {
            sink: Sink::Writer(Mutex::new(Box::new(writer))),
        }
    }

    /// Reopens the file (after log rotation moved it). No-op for the other
    /// sinks.
    pub fn reopen(&self) -> io::Result<()> {
        if let Sink::File { path, file } = &self.sink {
            let new = open_append(path)?;
            *file.lock().unwrap_or_else(|p| p.into_inner()) = new;
        }
        Ok(())
    }

    /// Writes one record.
    pub fn record(&self, event: AuditEvent) {
        let line = event.to_line();
        let result = match &self.sink {
            Sink::Tracing => {
                let text = String::from_utf8_lossy(&line);
                tracing::info!(target: TARGET, "{}", text.trim_end());
                Ok(())
            }
            Sink::File { file, .. } => file
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .write_all(&line),
            Sink::Writer(writer) => {
                let mut w = writer.lock().unwrap_or_else(|p| p.into_inner());
                w.write_all(&line).and_then(|()| w.flush())
            }
        };
        if let Err(e) = result {
            let text = String::from_utf8_lossy(&line);
            tracing::error!(target: TARGET, error = %e, "cannot write the audit log: {}", text.trim_end());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;

    use berth_auth::Action;

    use crate::authn::{Credentials, ProjectRoles};

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Shared {
        fn lines(&self) -> Vec<serde_json::Value> {
            let bytes = self.0.lock().unwrap().clone();
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.is_empty() || text.ends_with('\n'));
            text.lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    fn at_millis(ms: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(ms)
    }

    #[test]
    fn rfc3339_times() {
        for (ms, text) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (951_868_799_999, "2000-02-29T23:59:59.999Z"),
            (1_709_210_096_500, "2024-02-29T12:34:56.500Z"),
            (4_107_542_400_000, "2100-03-01T00:00:00.000Z"),
            (1_234_567_890_001, "2009-02-13T23:31:30.001Z"),
            (253_402_300_799_123, "9999-12-31T23:59:59.123Z"),
        ] {
            assert_eq!(rfc3339(at_millis(ms)), text, "{ms}");
        }
        assert_eq!(
            rfc3339(UNIX_EPOCH - Duration::from_secs(5)),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn rfc3339_days_are_consecutive() {
        // Walking day by day over four centuries never skips or repeats a
        // date, and months have their lengths.
        let mut prev = civil_from_days(0);
        assert_eq!(prev, (1970, 1, 1));
        for d in 1..146_097 * 2 {
            let cur = civil_from_days(d);
            let (y, m, day) = prev;
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            let next = if day < len {
                (y, m, day + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!(cur, next, "day {d}");
            prev = cur;
        }
    }

    fn identity(method: Method) -> Identity {
        Identity {
            user_id: "u-123".into(),
            username: "alice".into(),
            domain: "Default".into(),
            method,
            projects: vec![ProjectRoles {
                id: "p".into(),
                name: "team".into(),
                roles: BTreeSet::from(["member".to_owned()]),
            }],
            admin: false,
        }
    }

    #[test]
    fn a_granted_token_line() {
        let out = Shared::default();
        let log = AuditLog::to_writer(out.clone());
        let scopes =
            Scope::parse_list("repository:alice/app:pull,push registry:catalog:*").unwrap();
        let mut event = AuditEvent::new(
            Some("10.1.2.3".parse().unwrap()),
            "registry.example",
            &scopes,
        );
        event.time = at_millis(1_709_210_096_500);
        event.account = Some("alice".into());
        event.set_identity(&identity(Method::Password));
        event.method = Some("GET".into());
        event.granted = vec![Access::from(&Scope::repository(
            "alice/app",
            &[Action::Pull, Action::Push],
        ))];
        log.record(event.outcome(Outcome::Granted));
        let lines = out.lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(
            lines[0],
            serde_json::json!({
                "time": "2024-02-29T12:34:56.500Z",
                "outcome": "granted",
                "account": "alice",
                "user_id": "u-123",
                "username": "alice",
                "domain": "Default",
                "auth_method": "password",
                "application_credential_id": null,
                "client_ip": "10.1.2.3",
                "service": "registry.example",
                "http_method": "GET",
                "requested": ["repository:alice/app:pull,push", "registry:catalog:*"],
                "granted": [{"type": "repository", "name": "alice/app", "actions": ["pull", "push"]}],
            })
        );
    }

    #[test]
    fn outcomes_and_methods() {
        let out = Shared::default();
        let log = AuditLog::to_writer(out.clone());
        for outcome in [
            Outcome::Granted,
            Outcome::Denied,
            Outcome::InvalidCredentials,
            Outcome::RateLimited,
            Outcome::Unavailable,
        ] {
            log.record(AuditEvent::new(None, "s", &[]).outcome(outcome));
        }
        let names: Vec<_> = out.lines().iter().map(|l| l["outcome"].clone()).collect();
        assert_eq!(
            names,
            [
                "granted",
                "denied",
                "invalid_credentials",
                "rate_limited",
                "unavailable"
            ]
        );
        // Before anything is known: nulls, an empty grant, denied.
        let line = &out.lines()[1];
        assert_eq!(line["account"], serde_json::Value::Null);
        assert_eq!(line["client_ip"], serde_json::Value::Null);
        assert_eq!(line["granted"], serde_json::json!([]));

        let mut e = AuditEvent::new(None, "s", &[]);
        e.set_identity(&identity(Method::ApplicationCredential {
            id: "ac-9".into(),
        }));
        assert_eq!(e.auth_method.as_deref(), Some("application_credential"));
        assert_eq!(e.application_credential_id.as_deref(), Some("ac-9"));
        e.set_identity(&identity(Method::RefreshToken));
        assert_eq!(e.auth_method.as_deref(), Some("refresh_token"));
        assert_eq!(e.application_credential_id, None);
    }

    #[test]
    fn no_secrets_and_no_forged_lines() {
        let out = Shared::default();
        let log = AuditLog::to_writer(out.clone());
        let creds = Credentials::from_basic("applicationcredential-ac1", "s3cr3t-value");
        let hostile = Scope::repository("a\n{\"outcome\":\"granted\"}\u{2028}", &[Action::Pull]);
        let mut event = AuditEvent::new(Some("::1".parse().unwrap()), "s", &[hostile]);
        event.account = Some(creds.account());
        event.set_identity(&identity(Method::ApplicationCredential {
            id: "ac1".into(),
        }));
        log.record(event.outcome(Outcome::InvalidCredentials));
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        assert!(!text.contains("s3cr3t"));
        assert_eq!(text.matches('\n').count(), 1, "one line: {text}");
        assert_eq!(out.lines()[0]["outcome"], "invalid_credentials");
    }

    #[test]
    fn file_lines_never_interleave() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = Arc::new(AuditLog::open(&path).unwrap());
        let big = "x".repeat(10_000); // lines of 10 kB, several write(2) calls if split
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                let big = big.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        let mut e = AuditEvent::new(None, "s", &[]);
                        e.account = Some(format!("{t}-{i}-{big}"));
                        log.record(e.outcome(Outcome::Granted));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut seen = BTreeSet::new();
        for line in text.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(seen.insert(v["account"].as_str().unwrap().to_owned()));
        }
        assert_eq!(seen.len(), 800);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn appends_and_reopens_after_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, "{\"earlier\":true}\n").unwrap();
        let log = AuditLog::from_config(&AuditConfig {
            file: Some(path.clone()),
        })
        .unwrap();
        log.record(AuditEvent::new(None, "s", &[]).outcome(Outcome::Granted));
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
        // logrotate moves the file away; until reopened, lines follow it.
        let rotated = dir.path().join("audit.log.1");
        std::fs::rename(&path, &rotated).unwrap();
        log.record(AuditEvent::new(None, "s", &[]).outcome(Outcome::Denied));
        log.reopen().unwrap();
        log.record(AuditEvent::new(None, "s", &[]).outcome(Outcome::RateLimited));
        assert_eq!(
            std::fs::read_to_string(&rotated).unwrap().lines().count(),
            3
        );
        let fresh = std::fs::read_to_string(&path).unwrap();
        assert_eq!(fresh.lines().count(), 1);
        assert!(fresh.contains("rate_limited"));
    }

    #[test]
    fn tracing_sink_and_config() {
        assert_eq!(AuditConfig::default().file, None);
        let c: AuditConfig =
            serde_json::from_str(r#"{"file":"/var/log/berth/audit.log"}"#).unwrap();
        assert_eq!(
            c.file.as_deref(),
            Some(Path::new("/var/log/berth/audit.log"))
        );
        assert!(serde_json::from_str::<AuditConfig>(r#"{"path":"x"}"#).is_err());
        // No subscriber: recording must not fail or panic.
        let log = AuditLog::from_config(&AuditConfig::default()).unwrap();
        log.record(AuditEvent::new(None, "s", &[]).outcome(Outcome::Granted));
        log.reopen().unwrap();
    }

    #[test]
    fn unwritable_file_is_an_error_at_open() {
        let dir = tempfile::tempdir().unwrap();
        assert!(AuditLog::open(dir.path().join("missing/dir/audit.log")).is_err());
    }
}
