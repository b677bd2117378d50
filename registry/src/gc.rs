//! Online garbage collection: mark and sweep over a [`Store`] while the
//! registry goes on serving, in this process or another one.
//!
//! **Mark.** A manifest is reachable when a tag points to it, when a
//! reachable index lists it, or when its `subject` is reachable (a referrer:
//! signature, SBOM, attestation), in every repository. A reachable image
//! manifest keeps its config and layers; every reachable manifest keeps its
//! own content blob. Manifests that a push in progress announced
//! ([`Store::pin`]) and what they reference are reachable too.
//!
//! **Sweep.** Untagged manifests go only with
//! [`GcOptions::delete_untagged`], and never one that something surviving
//! still needs (a child of a tagged index, a referrer of a reachable
//! manifest, a child of an index that stays). Then blobs that nothing
//! surviving references go; then the repository links of blobs that are
//! gone; then repositories left empty. Nothing modified (stored or touched)
//! within the grace period before the collection started goes: every
//! client interest in existing content refreshes its time
//! ([`Store::blob_touch`]), so a client that checked that a blob exists and
//! then pushes a manifest referencing it within the grace period finds it.
//! Upload sessions are never looked at: their bytes become a blob, with a
//! fresh time, only when the upload completes.
//!
//! **Races.** Each removal goes through [`Store::blob_collect`] or
//! [`Store::manifest_collect`], which keep an object touched at or after
//! the cutoff, atomically with respect to a concurrent touch. A manifest
//! `PUT` touches everything it references before it stores anything and is
//! announced by a pin while it runs, so: a push whose pin existed when the
//! collection started is a root; a push that started later touches what it
//! references after the collection's start (which is at or after the
//! cutoff), so its objects stay, or its touch finds one gone and the push
//! fails cleanly (`MANIFEST_BLOB_UNKNOWN`, nothing stored); and a push that
//! finished before the collection looked at the tags is seen by the mark.
//! docs/storage.md walks through the cases.
//!
//! **Order and crashes.** References go before what they reference: an
//! index before the manifests it lists, a manifest revision before its
//! referrers entry is pruned and before blobs are looked at, blobs before
//! their repository links (a link whose blob is gone grants nothing: every
//! read checks both), and a repository only when it holds nothing. A crash
//! at any point leaves a consistent store; what a crashed collection had
//! set aside goes back at the next one ([`Store::gc_recover`]).

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::manifest::{self, ReferrerDescriptor, Requirement};
use crate::name::RepoName;
use crate::storage::{Store, StoreError};

/// The grace period when none is configured: one hour.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// What a collection does.
#[derive(Clone, Debug)]
pub struct GcOptions {
    /// Content modified (stored or touched) this recently is kept.
    pub grace: Duration,
    /// Also remove manifests that no tag reaches.
    pub delete_untagged: bool,
    /// Report what would go; change nothing.
    pub dry_run: bool,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: DEFAULT_GRACE,
            delete_untagged: false,
            dry_run: false,
        }
    }
}

/// What a collection removed (or, in a dry run, would remove).
#[derive(Clone, Debug, Default)]
pub struct GcReport {
    pub dry_run: bool,
    /// Manifest revisions: repository and digest.
    pub manifests: Vec<(String, Digest)>,
    /// Blobs and their sizes.
    pub blobs: Vec<(Digest, u64)>,
    /// Repository links of removed blobs.
    pub links: Vec<(String, Digest)>,
    /// Repositories left empty.
    pub repositories: Vec<String>,
    /// Unreachable blobs and manifests kept because they are younger than
    /// the grace period.
    pub kept_young: usize,
    /// Unreachable objects kept because a client touched them while the
    /// collection was removing them.
    pub kept_touched: usize,
    /// Objects an interrupted collection had set aside, put back.
    pub recovered: usize,
    /// Referrers entries left by an interrupted collection, removed.
    pub stale_referrers: usize,
    /// Stored manifests that cannot be read or parsed (skipped; what they
    /// reference is kept only if something else needs it).
    pub broken: Vec<String>,
    /// Removals that failed (the objects stay).
    pub errors: Vec<String>,
    pub elapsed: Duration,
}

impl GcReport {
    /// Bytes of the removed blobs.
    pub fn bytes(&self) -> u64 {
        self.blobs.iter().map(|(_, size)| size).sum()
    }
}

/// Why a collection could not run.
#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error("another garbage collection is running ({} is locked)", .0.display())]
    Busy(PathBuf),
    #[error("cannot lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The exclusive lock that makes collections take turns: held while it
/// lives, released by the operating system if the process dies.
#[derive(Debug)]
pub struct GcLock {
    _file: File,
}

impl GcLock {
    /// The lock file in a data directory.
    pub fn path_in(data_dir: &Path) -> PathBuf {
        data_dir.join("gc.lock")
    }

    /// Takes the lock at `path`, or fails at once with [`GcError::Busy`].
    pub fn acquire(path: &Path) -> Result<GcLock, GcError> {
        let lock_err = |source| GcError::Lock {
            path: path.to_owned(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(lock_err)?;
        match file.try_lock() {
            Ok(()) => Ok(GcLock { _file: file }),
            Err(std::fs::TryLockError::WouldBlock) => Err(GcError::Busy(path.to_owned())),
            Err(std::fs::TryLockError::Error(e)) => Err(lock_err(e)),
        }
    }
}

/// What a manifest `PUT` in progress references: the record of its pin.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct PinRecord {
    pub repo: String,
    /// The manifest being stored.
    pub manifest: Digest,
    /// Config and layers.
    pub blobs: Vec<Digest>,
    /// Child manifests (of an index).
    pub manifests: Vec<Digest>,
}

impl PinRecord {
    /// The record of `manifest`, stored in `repo`, with its requirements.
    pub fn new(repo: &RepoName, manifest: &Digest, requirements: &[Requirement]) -> PinRecord {
        let mut record = PinRecord {
            repo: repo.as_str().to_owned(),
            manifest: manifest.clone(),
            blobs: Vec::new(),
            manifests: Vec::new(),
        };
        for req in requirements {
            match req {
                Requirement::Blob { digest, .. } => record.blobs.push(digest.clone()),
                Requirement::Manifest { digest } => record.manifests.push(digest.clone()),
            }
        }
        record
    }
}

/// Runs one collection holding the lock at `lock`.
pub fn run(store: &dyn Store, lock: &Path, options: &GcOptions) -> Result<GcReport, GcError> {
    let _lock = GcLock::acquire(lock)?;
    collect(store, options)
}

/// One collection, without the lock: the caller makes sure it runs alone.
pub fn collect(store: &dyn Store, options: &GcOptions) -> Result<GcReport, GcError> {
    let started = Instant::now();
    let mut report = GcReport {
        dry_run: options.dry_run,
        ..GcReport::default()
    };
    if !options.dry_run {
        report.recovered = store.gc_recover()?;
    }
    // The start, in the store's clock, then the pins: a push whose pin is
    // not seen here touches what it needs after this instant.
    let start = store.now()?;
    let cutoff = start
        .checked_sub(options.grace)
        .unwrap_or(SystemTime::UNIX_EPOCH);

    let mut mark = Mark::new(store);
    for raw in store.pins()? {
        // A pin being written right now may read as nothing: its push
        // touches what it needs after `start`.
        let Ok(pin) = serde_json::from_slice::<PinRecord>(&raw) else {
            continue;
        };
        let Ok(repo) = RepoName::parse(&pin.repo) else {
            continue;
        };
        mark.blobs.insert(pin.manifest.clone());
        mark.blobs.extend(pin.blobs);
        mark.manifest(&repo, &pin.manifest)?;
        for child in &pin.manifests {
            mark.manifest(&repo, child)?;
        }
    }

    let mut repos = Vec::new();
    for name in store.repositories()? {
        if let Ok(repo) = RepoName::parse(&name) {
            repos.push(repo);
        }
    }
    for repo in &repos {
        for tag in store.tags_list(repo)?.unwrap_or_default() {
            let Ok(tag) = crate::name::Tag::parse(&tag) else {
                continue;
            };
            match store.tag_get(repo, &tag) {
                Ok(Some(digest)) => mark.manifest(repo, &digest)?,
                Ok(None) | Err(StoreError::NotFound) => {}
                Err(StoreError::Corrupt(e)) => mark.broken.push(format!("{repo}: {e}")),
                Err(e) => return Err(e.into()),
            }
        }
    }

    // Revisions: what survives, and (with delete_untagged) what goes.
    let mut revisions: HashMap<RepoName, Vec<Digest>> = HashMap::new();
    for repo in &repos {
        let listed = store.manifest_revisions(repo)?;
        let all = revisions.entry(repo.clone()).or_default();
        for rev in listed {
            if !options.delete_untagged {
                mark.manifest(repo, &rev.digest)?;
            } else if !mark.has(repo, &rev.digest) && rev.modified >= cutoff {
                report.kept_young += 1;
                mark.manifest(repo, &rev.digest)?;
            }
            all.push(rev.digest);
        }
    }
    if options.delete_untagged {
        for repo in &repos {
            let candidates: Vec<Digest> = revisions
                .get(repo)
                .map(|all| all.iter().filter(|d| !mark.has(repo, d)).cloned().collect())
                .unwrap_or_default();
            for (digest, subject) in removal_order(store, repo, candidates)? {
                // Kept by a manifest earlier in the order that stayed.
                if mark.has(repo, &digest) {
                    continue;
                }
                if options.dry_run {
                    report.manifests.push((repo.to_string(), digest));
                    continue;
                }
                match store.manifest_collect(repo, &digest, subject.as_ref(), cutoff) {
                    Ok(true) => report.manifests.push((repo.to_string(), digest)),
                    Ok(false) => {
                        report.kept_touched += 1;
                        mark.manifest(repo, &digest)?;
                    }
                    Err(e) => {
                        report.errors.push(format!("manifest {repo}@{digest}: {e}"));
                        mark.manifest(repo, &digest)?;
                    }
                }
            }
        }
    }

    // Blobs.
    for blob in store.blobs()? {
        if mark.blobs.contains(&blob.digest) {
            continue;
        }
        if blob.modified >= cutoff {
            report.kept_young += 1;
            continue;
        }
        if options.dry_run {
            report.blobs.push((blob.digest, blob.size));
            continue;
        }
        match store.blob_collect(&blob.digest, cutoff) {
            Ok(Some(size)) => report.blobs.push((blob.digest, size)),
            Ok(None) => report.kept_touched += 1,
            Err(e) => report.errors.push(format!("blob {}: {e}", blob.digest)),
        }
    }

    // Links of blobs that are gone (now, or by an earlier collection).
    let removed: HashSet<&Digest> = report.blobs.iter().map(|(d, _)| d).collect();
    let mut links = Vec::new();
    for repo in &repos {
        for digest in store.blob_links(repo)? {
            let gone = removed.contains(&digest) || store.blob_size(&digest)?.is_none();
            if !gone {
                continue;
            }
            if options.dry_run {
                links.push((repo.to_string(), digest));
                continue;
            }
            match store.blob_link_prune(repo, &digest) {
                Ok(true) => links.push((repo.to_string(), digest)),
                Ok(false) => {}
                Err(e) => report
                    .errors
                    .push(format!("link of {digest} in {repo}: {e}")),
            }
        }
    }
    report.links = links;

    // Referrers entries an interrupted collection left, then empty
    // repositories, the deepest first so that a parent can go after its
    // nested repositories.
    repos.sort_by_key(|r| std::cmp::Reverse(r.components().count()));
    for repo in &repos {
        if options.dry_run {
            if would_be_empty(store, repo, &report, revisions.get(repo))? {
                report.repositories.push(repo.to_string());
            }
            continue;
        }
        match store.referrers_prune(repo) {
            Ok(n) => report.stale_referrers += n,
            Err(e) => report.errors.push(format!("referrers of {repo}: {e}")),
        }
        match store.repository_prune(repo) {
            Ok(true) => report.repositories.push(repo.to_string()),
            Ok(false) => {}
            Err(e) => report.errors.push(format!("repository {repo}: {e}")),
        }
    }
    report.repositories.sort();
    report.broken = mark.broken;
    report.elapsed = started.elapsed();
    Ok(report)
}

/// Dry run: whether the collection would leave `repo` with nothing.
fn would_be_empty(
    store: &dyn Store,
    repo: &RepoName,
    report: &GcReport,
    revisions: Option<&Vec<Digest>>,
) -> Result<bool, StoreError> {
    if !store.tags_list(repo)?.unwrap_or_default().is_empty() {
        return Ok(false);
    }
    let name = repo.as_str();
    let gone_manifests: HashSet<&Digest> = report
        .manifests
        .iter()
        .filter(|(r, _)| r == name)
        .map(|(_, d)| d)
        .collect();
    if revisions.is_some_and(|all| all.iter().any(|d| !gone_manifests.contains(d))) {
        return Ok(false);
    }
    let gone_links: HashSet<&Digest> = report
        .links
        .iter()
        .filter(|(r, _)| r == name)
        .map(|(_, d)| d)
        .collect();
    Ok(store
        .blob_links(repo)?
        .iter()
        .all(|d| gone_links.contains(d)))
}

/// The candidates for removal, each with its subject, ordered so that a
/// manifest comes before those it keeps (an index before its children, a
/// subject before its referrers): when one turns out to be kept, what it
/// keeps has not been removed yet.
fn removal_order(
    store: &dyn Store,
    repo: &RepoName,
    candidates: Vec<Digest>,
) -> Result<Vec<(Digest, Option<Digest>)>, StoreError> {
    let set: HashSet<Digest> = candidates.iter().cloned().collect();
    let mut subjects = HashMap::new();
    let mut edges: HashMap<Digest, Vec<Digest>> = HashMap::new();
    for digest in &candidates {
        let mut kept = Vec::new();
        if let Some(m) = store.manifest_get(repo, digest).ok().flatten()
            && let Ok(parsed) = manifest::parse(Some(&m.media_type), &m.content)
        {
            subjects.insert(digest.clone(), parsed.subject);
            kept.extend(parsed.requirements.into_iter().filter_map(|r| match r {
                Requirement::Manifest { digest } => Some(digest),
                Requirement::Blob { .. } => None,
            }));
        }
        kept.extend(referrer_digests(store, repo, digest)?);
        kept.retain(|d| set.contains(d));
        edges.insert(digest.clone(), kept);
    }
    // Depth-first post-order, reversed: a topological order (any order
    // inside a cycle, which only a referrer listing its own subject as a
    // child can make).
    let mut done: HashSet<Digest> = HashSet::new();
    let mut post = Vec::with_capacity(candidates.len());
    for root in &candidates {
        if done.contains(root) {
            continue;
        }
        done.insert(root.clone());
        let mut stack = vec![(root.clone(), 0usize)];
        while let Some((node, next)) = stack.pop() {
            let children = edges.get(&node).map(Vec::as_slice).unwrap_or_default();
            if let Some(child) = children.get(next) {
                stack.push((node, next + 1));
                if done.insert(child.clone()) {
                    stack.push((child.clone(), 0));
                }
            } else {
                post.push(node);
            }
        }
    }
    post.reverse();
    Ok(post
        .into_iter()
        .map(|d| {
            let subject = subjects.get(&d).cloned().flatten();
            (d, subject)
        })
        .collect())
}

/// The digests of the manifests that name `subject` in `repo`.
fn referrer_digests(
    store: &dyn Store,
    repo: &RepoName,
    subject: &Digest,
) -> Result<Vec<Digest>, StoreError> {
    Ok(store
        .referrers(repo, subject)?
        .iter()
        .filter_map(|raw| serde_json::from_slice::<ReferrerDescriptor>(raw).ok())
        .map(|d| d.digest)
        .collect())
}

/// The mark phase's state: reachable manifest revisions and blobs.
struct Mark<'a> {
    store: &'a dyn Store,
    revisions: HashSet<(RepoName, Digest)>,
    blobs: HashSet<Digest>,
    broken: Vec<String>,
}

impl<'a> Mark<'a> {
    fn new(store: &'a dyn Store) -> Self {
        Mark {
            store,
            revisions: HashSet::new(),
            blobs: HashSet::new(),
            broken: Vec::new(),
        }
    }

    fn has(&self, repo: &RepoName, digest: &Digest) -> bool {
        self.revisions.contains(&(repo.clone(), digest.clone()))
    }

    /// Marks the manifest `digest` of `repo` and everything it keeps:
    /// its content, config and layers, children, and referrers.
    fn manifest(&mut self, repo: &RepoName, digest: &Digest) -> Result<(), StoreError> {
        let mut stack = vec![digest.clone()];
        while let Some(d) = stack.pop() {
            if !self.revisions.insert((repo.clone(), d.clone())) {
                continue;
            }
            match self.store.manifest_get(repo, &d) {
                Ok(Some(m)) => {
                    self.blobs.insert(d.clone());
                    match manifest::parse(Some(&m.media_type), &m.content) {
                        Ok(parsed) => {
                            for req in parsed.requirements {
                                match req {
                                    Requirement::Blob { digest, .. } => {
                                        self.blobs.insert(digest);
                                    }
                                    Requirement::Manifest { digest } => stack.push(digest),
                                }
                            }
                        }
                        Err(e) => self.broken.push(format!("{repo}@{d}: {e}")),
                    }
                }
                // Not stored (a tag or an index naming what was deleted).
                Ok(None) | Err(StoreError::NotFound) => {}
                Err(StoreError::Corrupt(e)) => self.broken.push(format!("{repo}@{d}: {e}")),
                // An I/O error must not let what this manifest needs go.
                Err(e) => return Err(e),
            }
            stack.extend(referrer_digests(self.store, repo, &d)?);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
