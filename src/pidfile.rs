//! The pid file a service manager tracks a server by (`server.pid_file`,
//! `--pid-file`).
//!
//! - Checked at start: a file naming another live `berth` process stops
//!   this one (exit 73): two instances must not share a pid file, or the
//!   manager would watch the wrong one. A file naming a dead process, a
//!   process that is not berth (the pid was reused) or this very process (a
//!   container's pid 1 again) is stale and replaced.
//! - Written once the process serves or stands by, atomically (a temporary
//!   file in the same directory, renamed over), so that a reader never sees
//!   it empty.
//! - Removed when the process exits through its own code path (a clean
//!   stop, or a failure after it was written), if it still names this
//!   process. A killed process leaves it; the next start replaces it.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::exit::{Exit, ExitKind};

/// A pid file written by this process; removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
}

/// Fails if `path` names a live berth process other than this one.
pub fn check(path: &Path) -> anyhow::Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return Ok(());
    };
    if pid != std::process::id() && is_berth(pid) {
        return Err(anyhow::anyhow!(
            "the pid file {} names process {pid}, a running berth: give each instance its own pid file",
            path.display()
        ))
        .exit_with(Exit::CantCreate);
    }
    Ok(())
}

/// Whether process `pid` exists and runs a program named `berth`.
fn is_berth(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim_end() == "berth")
}

impl PidFile {
    /// Writes this process's id to `path`, atomically.
    pub fn write(path: &Path) -> anyhow::Result<PidFile> {
        write_atomically(path, &format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write the pid file {}", path.display()))
            .exit_with(Exit::CantCreate)?;
        Ok(PidFile {
            path: path.to_owned(),
        })
    }
}

/// `text` into `path` through a temporary file beside it, renamed over.
fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name().unwrap_or_default());
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = dir.join(tmp_name);
    let result = fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let ours = fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim().parse::<u32>().ok() == Some(std::process::id()));
        if ours && let Err(e) = fs::remove_file(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot remove the pid file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_atomically_removed_on_drop_only_if_ours() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.pid");
        let pid = PidFile::write(&path).unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            format!("{}\n", std::process::id())
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temp left");
        // Our own pid is no obstacle (a restarted container's pid 1).
        check(&path).unwrap();
        drop(pid);
        assert!(!path.exists());

        // Replaced by someone else: left alone.
        let pid = PidFile::write(&path).unwrap();
        fs::write(&path, "1\n").unwrap();
        drop(pid);
        assert!(path.exists());
    }

    #[test]
    fn stale_files_do_not_stop_a_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("berth.pid");
        check(&path).unwrap();
        fs::write(&path, "garbage").unwrap();
        check(&path).unwrap();
        // pid 1 is not berth (init, or this test's own container runtime).
        fs::write(&path, "1\n").unwrap();
        check(&path).unwrap();
        let err = PidFile::write(&dir.path().join("missing/berth.pid")).unwrap_err();
        assert_eq!(crate::exit::status(&err), 73);
    }
}
