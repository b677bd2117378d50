//! The `berth` binary: command line, configuration and process wiring.
//! The registry and identity crates hold the logic; this only connects them
//! to sockets, signals and the data directory.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod cli;
mod config;
mod exit;
mod gc;
mod identity;
mod pidfile;
mod pull_secret;
mod serve;
mod standby;
mod tls;
mod users;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let log_format = cli.log_format;
    cli::init_tracing(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("berth: cannot start the async runtime: {e}");
            return std::process::ExitCode::from(exit::Exit::Internal.code());
        }
    };
    let result = runtime.block_on(cli.run());
    // A server that stopped after its shutdown grace may leave blocking
    // work behind; the process exits anyway (which is what a kill does too:
    // every write is crash-safe).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Once: in the JSON log for machines, else as a plain line.
            match log_format {
                cli::LogFormat::Json => tracing::error!("{e:#}"),
                cli::LogFormat::Text => eprintln!("berth: {e:#}"),
            }
            std::process::ExitCode::from(exit::status(&e))
        }
    }
}
