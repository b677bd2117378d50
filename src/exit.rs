//! Exit statuses a service manager can act on. The servers (`berth serve`,
//! `berth registry serve`, `berth identity serve`) mark their start-up
//! errors with an [`Exit`] kind; `main` turns the kind into the process's
//! exit status, the `sysexits.h` value systemd also documents
//! (`systemd.exec(5)`, "BSD exit codes"). Unmarked errors exit 1, clap's
//! usage errors 2.
//!
//! | status | kind | meaning |
//! | --- | --- | --- |
//! | 0 | | stopped by SIGTERM or SIGINT (also a standby) |
//! | 1 | | any other failure (`berth config check` finding problems, ...) |
//! | 2 | | wrong command line |
//! | 69 | [`Exit::Unavailable`] | something needed at start is unavailable: an address in use, the JWKS URL |
//! | 70 | [`Exit::Internal`] | internal error: a task panicked, the runtime did not start |
//! | 73 | [`Exit::CantCreate`] | the data directory, its lock file or the pid file cannot be created, or the pid file names another live berth |
//! | 74 | [`Exit::Io`] | the data directory's contents cannot be read or written (store, keys, certificate, users file) |
//! | 78 | [`Exit::Config`] | the configuration is invalid (a service manager should not restart) |

use std::fmt;

/// What kind of failure stopped the process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// `EX_CONFIG` (78): the configuration is invalid.
    Config,
    /// `EX_UNAVAILABLE` (69): a resource needed at start is unavailable.
    Unavailable,
    /// `EX_SOFTWARE` (70): an internal error.
    Internal,
    /// `EX_CANTCREAT` (73): a file or directory berth needs cannot be
    /// created.
    CantCreate,
    /// `EX_IOERR` (74): the data directory cannot be read or written.
    Io,
}

impl Exit {
    /// The process exit status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Unavailable => 69,
            Exit::Internal => 70,
            Exit::CantCreate => 73,
            Exit::Io => 74,
            Exit::Config => 78,
        }
    }
}

/// An error marked with its [`Exit`] kind. It displays as the error it
/// wraps (its whole chain) and has no source of its own, so that messages
/// read the same with or without the mark.
#[derive(Debug)]
struct Marked {
    exit: Exit,
    error: anyhow::Error,
}

impl fmt::Display for Marked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}

impl std::error::Error for Marked {}

/// Marks the error of a `Result` with an [`Exit`] kind.
pub trait ExitKind<T> {
    /// The error, if any, exits with `exit` unless a mark closer to its
    /// cause says otherwise.
    fn exit_with(self, exit: Exit) -> anyhow::Result<T>;
}

impl<T, E: Into<anyhow::Error>> ExitKind<T> for Result<T, E> {
    fn exit_with(self, exit: Exit) -> anyhow::Result<T> {
        self.map_err(|e| {
            let error = e.into();
            if kind(&error).is_some() {
                // Already marked nearer its cause: keep that.
                error
            } else {
                anyhow::Error::new(Marked { exit, error })
            }
        })
    }
}

/// The [`Exit`] kind an error was marked with, if any. Marks never nest
/// ([`ExitKind::exit_with`] keeps an existing one), so the first is the one.
pub fn kind(error: &anyhow::Error) -> Option<Exit> {
    error
        .chain()
        .find_map(|e| e.downcast_ref::<Marked>().map(|m| m.exit))
}

/// The exit status for a failed command.
pub fn status(error: &anyhow::Error) -> u8 {
    kind(error).map_or(1, Exit::code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn marks_survive_context_and_read_the_same() {
        let e: Result<(), _> = Err(std::io::Error::other("disk on fire"));
        let e = e
            .context("cannot open the store")
            .exit_with(Exit::Io)
            .context("while taking over")
            .unwrap_err();
        assert_eq!(status(&e), 74);
        assert_eq!(
            format!("{e:#}"),
            "while taking over: cannot open the store: disk on fire"
        );
    }

    #[test]
    fn the_mark_nearest_the_cause_wins_and_unmarked_is_1() {
        let inner: anyhow::Result<()> = Err(anyhow::anyhow!("bad")).exit_with(Exit::Config);
        let e = inner.exit_with(Exit::Internal).unwrap_err();
        assert_eq!(status(&e), 78);
        assert_eq!(status(&anyhow::anyhow!("plain")), 1);
        for (exit, code) in [
            (Exit::Unavailable, 69),
            (Exit::Internal, 70),
            (Exit::CantCreate, 73),
            (Exit::Io, 74),
            (Exit::Config, 78),
        ] {
            assert_eq!(exit.code(), code);
        }
    }
}
