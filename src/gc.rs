//! `berth gc`: garbage collection beside a serving registry, and the
//! schedule that runs the same collection inside a serving process
//! (`gc.interval`). The collection itself is `berth_registry::gc`; see
//! docs/storage.md for what it keeps and why concurrent pushes are safe.
//!
//! `berth gc` opens the store without taking the serving instance's lock
//! and without clearing anything: its only writes are removals of old,
//! unreachable content. Collections take turns through `<data_dir>/gc.lock`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_registry::Registry;
use berth_registry::gc::{self, GcError, GcLock, GcOptions, GcReport};
use berth_registry::storage::FsStore;

use crate::cli::ConfigArgs;
use crate::config::Config;

/// `berth gc`
#[derive(clap::Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print what would be removed and how many bytes; change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove manifests no tag reaches (`gc.delete_untagged`); never
    /// a child of a tagged index or a referrer of a reachable manifest.
    #[arg(long)]
    pub delete_untagged: bool,
    /// Keep content stored or used within this many seconds (`gc.grace`,
    /// default 3600).
    #[arg(long, value_name = "SECONDS")]
    pub grace: Option<u64>,
}

/// Runs `berth gc`: one collection, its report on standard output.
pub async fn run(args: GcArgs) -> anyhow::Result<()> {
    let mut sources = args.config.sources();
    if args.delete_untagged {
        sources.flag("gc.delete_untagged", "--delete-untagged", "true");
    }
    if let Some(grace) = args.grace {
        sources.flag("gc.grace", "--grace", grace.to_string());
    }
    let loaded = crate::config::load(&sources)?;
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    let cfg = loaded.config;
    let data_dir = cfg.data_dir.clone();
    anyhow::ensure!(
        data_dir.join("blobs").is_dir(),
        "no registry store in {} (no blobs directory)",
        data_dir.display()
    );
    let options = options(&cfg, args.dry_run);
    let opts = options.clone();
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<GcReport> {
        let store = FsStore::attach(&data_dir)
            .with_context(|| format!("cannot open the store in {}", data_dir.display()))?;
        Ok(gc::run(&store, &GcLock::path_in(&data_dir), &opts)?)
    })
    .await??;
    for b in &report.broken {
        tracing::warn!("unreadable manifest skipped: {b}");
    }
    crate::cli::write_stdout(&render(&report, &options))?;
    anyhow::ensure!(
        report.errors.is_empty(),
        "{} removal(s) failed: {}",
        report.errors.len(),
        report.errors.join("; ")
    );
    Ok(())
}

/// The collection `cfg` asks for.
fn options(cfg: &Config, dry_run: bool) -> GcOptions {
    GcOptions {
        grace: Duration::from_secs(cfg.gc.grace),
        delete_untagged: cfg.gc.delete_untagged,
        dry_run,
    }
}

/// Starts the scheduled collection of a serving process when
/// `gc.interval` is not 0: one run per interval, each logged.
pub fn schedule(cfg: &Config, registry: &Arc<Registry>) {
    if cfg.gc.interval == 0 {
        return;
    }
    let interval = Duration::from_secs(cfg.gc.interval);
    let options = options(cfg, false);
    let lock = GcLock::path_in(&cfg.data_dir);
    let store = registry.store().clone();
    tracing::info!(
        interval_s = cfg.gc.interval,
        grace_s = cfg.gc.grace,
        delete_untagged = cfg.gc.delete_untagged,
        "scheduled garbage collection on"
    );
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(interval).await;
            let (store, lock, opts) = (store.clone(), lock.clone(), options.clone());
            match tokio::task::spawn_blocking(move || gc::run(&*store, &lock, &opts)).await {
                Ok(Ok(report)) => {
                    for b in &report.broken {
                        tracing::warn!("garbage collection: unreadable manifest skipped: {b}");
                    }
                    for e in &report.errors {
                        tracing::warn!("garbage collection: {e}");
                    }
                    tracing::info!(
                        manifests = report.manifests.len(),
                        blobs = report.blobs.len(),
                        bytes = report.bytes(),
                        links = report.links.len(),
                        repositories = report.repositories.len(),
                        kept_young = report.kept_young,
                        kept_touched = report.kept_touched,
                        errors = report.errors.len(),
                        elapsed_ms = report.elapsed.as_millis() as u64,
                        "garbage collection done"
                    );
                }
                Ok(Err(GcError::Busy(_))) => {
                    tracing::info!("garbage collection skipped: another one is running");
                }
                Ok(Err(e)) => tracing::warn!(error = %e, "garbage collection failed"),
                Err(e) => tracing::warn!(error = %e, "garbage collection failed"),
            }
        }
    });
}

/// `512 bytes`, `1572864 bytes, 1.5 MiB`
fn human(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = None;
    while value >= 1024.0 && unit.is_none_or(|u| u + 1 < UNITS.len()) {
        value /= 1024.0;
        unit = Some(unit.map_or(0, |u| u + 1));
    }
    match unit {
        None => format!("{bytes} bytes"),
        Some(u) => format!("{bytes} bytes, {value:.1} {}", UNITS[u]),
    }
}

/// The report as `berth gc` prints it: one line per removed object, then
/// the totals.
fn render(report: &GcReport, options: &GcOptions) -> String {
    let verb = if report.dry_run {
        "would remove"
    } else {
        "removed"
    };
    let mut out = String::new();
    for (repo, digest) in &report.manifests {
        let _ = writeln!(out, "{verb} manifest {repo}@{digest}");
    }
    for (digest, size) in &report.blobs {
        let _ = writeln!(out, "{verb} blob {digest} ({size} bytes)");
    }
    for (repo, digest) in &report.links {
        let _ = writeln!(out, "{verb} link {repo} -> {digest}");
    }
    for repo in &report.repositories {
        let _ = writeln!(out, "{verb} repository {repo}");
    }
    if report.recovered > 0 {
        let _ = writeln!(
            out,
            "put back {} object(s) an interrupted collection had set aside",
            report.recovered
        );
    }
    if report.stale_referrers > 0 {
        let _ = writeln!(
            out,
            "removed {} referrers entries an interrupted collection left",
            report.stale_referrers
        );
    }
    let _ = writeln!(
        out,
        "{}{verb} {} manifest(s), {} blob(s) ({}), {} link(s), {} repositories; \
         kept {} unreachable object(s) younger than the grace period ({} s) and {} in use \
         during the collection; {:.2} s",
        if report.dry_run { "dry run: " } else { "" },
        report.manifests.len(),
        report.blobs.len(),
        human(report.bytes()),
        report.links.len(),
        report.repositories.len(),
        report.kept_young,
        options.grace.as_secs(),
        report.kept_touched,
        report.elapsed.as_secs_f64(),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines() {
        let d: berth_registry::digest::Digest =
            format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        let report = GcReport {
            dry_run: true,
            manifests: vec![("lib/app".into(), d.clone())],
            blobs: vec![(d.clone(), 3 << 20)],
            links: vec![("lib/app".into(), d.clone())],
            repositories: vec!["old".into()],
            kept_young: 2,
            ..GcReport::default()
        };
        let text = render(&report, &GcOptions::default());
        assert!(
            text.contains(&format!("would remove manifest lib/app@{d}\n")),
            "{text}"
        );
        assert!(text.contains(&format!("would remove blob {d} (3145728 bytes)\n")));
        assert!(text.contains("would remove repository old\n"));
        assert!(
            text.contains("dry run: would remove 1 manifest(s), 1 blob(s) (3145728 bytes, 3.0 MiB), 1 link(s), 1 repositories; kept 2 unreachable object(s) younger than the grace period (3600 s)"),
            "{text}"
        );
        assert_eq!(human(512), "512 bytes");
        assert_eq!(human(1536), "1536 bytes, 1.5 KiB");
    }
}
