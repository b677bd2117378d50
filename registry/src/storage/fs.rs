//! The filesystem store: content on a local (or DRBD-replicated) filesystem.
//!
//! On-disk layout under the root directory:
//!
//! ```text
//! blobs/<alg>/<hex[0..2]>/<hex>                     blob content (also manifests)
//! repositories/<name>/_layers/<alg>/<hex>           empty: blob linked into <name>
//! repositories/<name>/_manifests/revisions/<alg>/<hex>   manifest media type
//! repositories/<name>/_manifests/tags/<tag>         digest the tag points to
//! repositories/<name>/_referrers/<alg>/<subject-hex>/<alg>-<hex>   referrer descriptor (JSON)
//! repositories/<name>/_manifests/trash/<alg>/<hex>       revision set aside by garbage collection
//! uploads/<id>/repo                                 repository the session belongs to
//! uploads/<id>/data                                 bytes received so far
//! trash/<alg>-<hex>                                 blob set aside by garbage collection
//! pins/<id>                                         manifest being stored (garbage collection)
//! tmp/                                              scratch for atomic writes
//! ```
//!
//! `<name>` is a validated repository name, so its components never begin
//! with `_` or `.`: the `_`-prefixed directories cannot collide with a
//! repository. Every path is built from validated types only
//! ([`RepoName`], [`Tag`], [`Digest`], [`UploadId`]).
//!
//! Durability: every file that becomes visible is written to `tmp/` (or is
//! an upload's own data file), fsynced, renamed into place, and its directory
//! fsynced, as is the parent of every directory created on the way. A crash
//! at any point leaves either the old state or the new one, never a partial
//! file under a final name.
//!
//! Garbage collection removes an object in three steps: rename it into a
//! trash directory, look at it again, then unlink it, or put it back if it
//! was touched meanwhile. A touch that finds the object missing looks in
//! the trash and puts it back itself; whichever rename or unlink comes
//! first wins, so an object is never both touched and removed. Objects an
//! interrupted collection left in the trash go back at the next one
//! ([`Store::gc_recover`]) or as soon as a client shows interest.
//! Directories that garbage collection removes (empty repositories) may
//! vanish under a concurrent write: writes into a repository re-create
//! their directory and retry.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{
    BlobEntry, BlobRead, PinId, Result, RevisionEntry, Store, StoreError, StoredManifest, UploadId,
    UploadInfo, UploadWriter,
};
use crate::digest::Digest;
use crate::name::{RepoName, Tag};

/// A [`Store`] rooted at a directory.
#[derive(Debug)]
pub struct FsStore {
    root: PathBuf,
}

impl FsStore {
    /// Opens (creating if needed) a store at `root` for serving, and clears
    /// scratch files and pins left by a previous process.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let store = Self::attach(root)?;
        for dir in [store.tmp_dir(), store.pins_dir()] {
            for entry in fs::read_dir(dir)? {
                let path = entry?.path();
                let _ = fs::remove_file(&path).or_else(|_| fs::remove_dir_all(&path));
            }
        }
        Ok(store)
    }

    /// Opens (creating if needed) a store at `root` that a server may be
    /// using at the same time (`berth gc`): unlike [`FsStore::open`], it
    /// clears nothing.
    pub fn attach(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        let store = FsStore { root };
        for dir in ["blobs", "repositories", "uploads", "tmp", "trash", "pins"] {
            mkdir_durable(&store.root.join(dir))?;
        }
        Ok(store)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    fn pins_dir(&self) -> PathBuf {
        self.root.join("pins")
    }

    fn blob_trash(&self, d: &Digest) -> PathBuf {
        self.root
            .join("trash")
            .join(format!("{}-{}", d.algorithm().as_str(), d.hex()))
    }

    fn revision_trash(&self, repo: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_manifests/trash")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(d.algorithm().as_str())
            .join(&d.hex()[..2])
            .join(d.hex())
    }

    fn repo_dir(&self, repo: &RepoName) -> PathBuf {
        let mut p = self.root.join("repositories");
        p.extend(repo.components());
        p
    }

    fn layer_link(&self, repo: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_layers")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn revision_path(&self, repo: &RepoName, d: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_manifests/revisions")
            .join(d.algorithm().as_str())
            .join(d.hex())
    }

    fn tags_dir(&self, repo: &RepoName) -> PathBuf {
        self.repo_dir(repo).join("_manifests/tags")
    }

    fn referrers_dir(&self, repo: &RepoName, subject: &Digest) -> PathBuf {
        self.repo_dir(repo)
            .join("_referrers")
            .join(subject.algorithm().as_str())
            .join(subject.hex())
    }

    fn upload_dir(&self, id: &UploadId) -> PathBuf {
        self.root.join("uploads").join(id.as_str())
    }

    /// The data file of `id` if the session exists and belongs to `repo`.
    fn upload_data(&self, repo: &RepoName, id: &UploadId) -> Result<Option<PathBuf>> {
        let dir = self.upload_dir(id);
        match fs::read_to_string(dir.join("repo")) {
            Ok(owner) if owner == repo.as_str() => {
                let data = dir.join("data");
                Ok(data.exists().then_some(data))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes `content` to `dest` atomically and durably.
    fn write_atomic(&self, dest: &Path, content: &[u8]) -> Result<()> {
        let tmp = TempFile::create(&self.tmp_dir())?;
        {
            let mut f = &tmp.file;
            f.write_all(content)?;
            f.sync_all()?;
        }
        tmp.persist(dest)
    }

    /// Creates an empty marker file durably (idempotent).
    fn touch_durable(&self, path: &Path) -> Result<()> {
        if path.exists() {
            return Ok(());
        }
        let parent = parent_of(path)?;
        in_directory(parent, || {
            OpenOptions::new().create(true).append(true).open(path)?;
            Ok(())
        })?;
        fsync_dir(parent)
    }

    /// Removes `subject`'s referrers entry for `digest` if the revision
    /// `digest` does not exist. A manifest stored meanwhile writes its
    /// revision before its entry: if the revision reappears after the
    /// entry went, the entry is written back.
    fn referrer_entry_prune(
        &self,
        repo: &RepoName,
        subject: &Digest,
        digest: &Digest,
    ) -> Result<bool> {
        let entry = self.referrers_dir(repo, subject).join(entry_name(digest));
        let revision = self.revision_path(repo, digest);
        if revision.exists() {
            return Ok(false);
        }
        let Some(content) = read_opt(&entry)? else {
            return Ok(false);
        };
        if !remove_durable(&entry)? {
            return Ok(false);
        }
        if revision.exists() {
            self.write_atomic(&entry, &content)?;
            return Ok(false);
        }
        Ok(true)
    }
}

/// `<alg>-<hex>`: a referrers entry's (and a trashed blob's) file name.
fn entry_name(d: &Digest) -> String {
    format!("{}-{}", d.algorithm().as_str(), d.hex())
}

/// Parses [`entry_name`].
fn parse_entry_name(name: &str) -> Option<Digest> {
    let (alg, hex) = name.split_once('-')?;
    format!("{alg}:{hex}").parse().ok()
}

/// Runs `op`, which creates something in `dir`, after creating `dir`; if
/// `dir` vanished in between (garbage collection removing an empty
/// repository), creates it again and retries.
fn in_directory<T>(dir: &Path, mut op: impl FnMut() -> Result<T>) -> Result<T> {
    let mut attempts = 0;
    loop {
        mkdir_durable(dir)?;
        match op() {
            Err(StoreError::NotFound) if attempts < 8 => attempts += 1,
            other => return other,
        }
    }
}

/// Sets `path`'s modification time to now; `false` if it does not exist.
fn touch_file(path: &Path) -> Result<bool> {
    use nix::errno::Errno;
    use nix::sys::stat::{UtimensatFlags, utimensat};
    use nix::sys::time::TimeSpec;
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    match utimensat(
        nix::fcntl::AT_FDCWD,
        path,
        &TimeSpec::UTIME_OMIT,
        &TimeSpec::UTIME_NOW,
        UtimensatFlags::FollowSymlink,
    ) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        // Files berth may not touch (another owner, a read-only mount):
        // serve them, but garbage collection's grace period then counts
        // from when they were stored.
        Err(e @ (Errno::EPERM | Errno::EACCES | Errno::EROFS)) => {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(path = %path.display(), error = %e, "cannot refresh a file's modification time; garbage collection's grace period counts from when content was stored");
            }
            Ok(path.exists())
        }
        Err(e) => Err(io::Error::from(e).into()),
    }
}

/// Touches `path`; if it is missing, takes it back from `trash` (where a
/// collection in progress put it) and touches it. Whether it exists.
fn touch_or_rescue(path: &Path, trash: &Path) -> Result<bool> {
    if touch_file(path)? {
        return Ok(true);
    }
    match fs::rename(trash, path) {
        Ok(()) => {
            // Durably back, as any commit: an answer may rest on it (an
            // upload of existing content, a manifest that needs it).
            fsync_dir(parent_of(path)?)?;
            touch_file(path)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Moves a set-aside object back (unless someone already did).
fn put_back(trash: &Path, path: &Path) -> Result<()> {
    let parent = parent_of(path)?;
    mkdir_durable(parent)?;
    match fs::rename(trash, path) {
        Ok(()) => fsync_dir(parent),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes `path` unless it was modified at or after `cutoff`: renames it
/// to `trash`, looks again, and unlinks it only if nobody touched it in
/// between (else puts it back). A concurrent [`touch_or_rescue`] either
/// touches it before the rename (seen here), or finds it gone and takes it
/// back from the trash before the unlink (the unlink then fails), or after
/// (and reports it missing). Returns the size removed.
fn collect_file(path: &Path, trash: &Path, cutoff: SystemTime) -> Result<Option<u64>> {
    let before = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if before.modified()? >= cutoff {
        return Ok(None);
    }
    let trash_dir = parent_of(trash)?;
    mkdir_durable(trash_dir)?;
    match fs::rename(path, trash) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let decided = (|| -> Result<Option<u64>> {
        fsync_dir(parent_of(path)?)?;
        fsync_dir(trash_dir)?;
        let after = match fs::metadata(trash) {
            Ok(m) => m,
            // Taken back by a touch.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let untouched = after.dev() == before.dev()
            && after.ino() == before.ino()
            && after.modified()? == before.modified()?
            && after.modified()? < cutoff;
        if !untouched {
            put_back(trash, path)?;
            return Ok(None);
        }
        match fs::remove_file(trash) {
            Ok(()) => {
                fsync_dir(trash_dir)?;
                Ok(Some(after.len()))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    })();
    if decided.is_err() {
        let _ = put_back(trash, path);
    }
    decided
}

/// Whether `dir` holds any file, at any depth.
fn has_file(dir: &Path) -> Result<bool> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    for entry in rd {
        let entry = entry?;
        if !entry.file_type()?.is_dir() || has_file(&entry.path())? {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Removes `dir` and the empty directories under it; `false` (leaving the
/// rest) as soon as one is not empty.
fn remove_empty_tree(dir: &Path) -> Result<bool> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e.into()),
    };
    for entry in rd {
        let entry = entry?;
        if !entry.file_type()?.is_dir() || !remove_empty_tree(&entry.path())? {
            return Ok(false);
        }
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::DirectoryNotEmpty => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Digests named `<dir>/<alg>/<hex>` (links, revisions), with metadata.
fn list_by_algorithm(dir: &Path) -> Result<Vec<(Digest, fs::Metadata)>> {
    let mut out = Vec::new();
    for alg in list_dir_names(dir)?.unwrap_or_default() {
        let sub = dir.join(&alg);
        for hex in list_dir_names(&sub)?.unwrap_or_default() {
            let Ok(digest) = format!("{alg}:{hex}").parse::<Digest>() else {
                continue;
            };
            match fs::metadata(sub.join(&hex)) {
                Ok(m) => out.push((digest, m)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(out)
}

fn parent_of(path: &Path) -> Result<&Path> {
    path.parent()
        .ok_or_else(|| StoreError::Corrupt(format!("{} has no parent", path.display())))
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// `create_dir_all`, fsyncing the parent of every directory it creates.
fn mkdir_durable(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let parent = parent_of(dir)?;
    mkdir_durable(parent)?;
    match fs::create_dir(dir) {
        Ok(()) => fsync_dir(parent),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Removes a file and fsyncs its directory; `false` if it did not exist.
fn remove_durable(path: &Path) -> Result<bool> {
    match fs::remove_file(path) {
        Ok(()) => {
            fsync_dir(parent_of(path)?)?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// A scratch file that is deleted on drop unless persisted.
struct TempFile {
    path: PathBuf,
    file: File,
    persisted: bool,
}

impl TempFile {
    fn create(dir: &Path) -> Result<Self> {
        let path = dir.join(format!("{:032x}", rand::random::<u128>()));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok(TempFile {
            path,
            file,
            persisted: false,
        })
    }

    /// Renames the (already fsynced) file to `dest` and fsyncs its directory.
    fn persist(mut self, dest: &Path) -> Result<()> {
        let parent = parent_of(dest)?;
        in_directory(parent, || Ok(fs::rename(&self.path, dest)?))?;
        self.persisted = true;
        fsync_dir(parent)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Blobs at least this large are served from a memory map.
const MAP_MIN: u64 = 1 << 20;

/// Bytes written between two requests to start writeback early.
const WRITEBACK_STEP: u64 = 1 << 20;

struct FsUploadWriter {
    file: File,
    start: u64,
    /// Bytes written so far, from `start`.
    written: u64,
    /// Bytes (from `start`) whose writeback has been started.
    flushed: u64,
    committed: bool,
}

impl FsUploadWriter {
    /// Starts writeback of what was written since the last call, without
    /// waiting for it, so that the fsync at commit has little left to do
    /// and the disk works while the network does. Failure is harmless: the
    /// commit's fsync is what makes the data durable.
    fn start_writeback(&mut self) {
        use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};
        // On Linux, DONTNEED starts writeback of the dirty pages of the
        // range without waiting, and drops only pages already clean.
        let from = self.start + self.flushed;
        let len = self.written - self.flushed;
        let _ = posix_fadvise(
            &self.file,
            i64::try_from(from).unwrap_or(i64::MAX),
            i64::try_from(len).unwrap_or(i64::MAX),
            PosixFadviseAdvice::POSIX_FADV_DONTNEED,
        );
        self.flushed = self.written;
    }
}

impl Write for FsUploadWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.flushed >= WRITEBACK_STEP {
            self.start_writeback();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl UploadWriter for FsUploadWriter {
    fn commit(mut self: Box<Self>) -> Result<u64> {
        self.file.sync_data()?;
        self.committed = true;
        Ok(self.file.metadata()?.len())
    }
}

impl Drop for FsUploadWriter {
    fn drop(&mut self) {
        if !self.committed {
            // Roll the unacknowledged chunk back.
            let _ = self.file.set_len(self.start);
        }
    }
}

fn read_opt(path: &Path) -> Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn list_dir_names(dir: &Path) -> Result<Option<Vec<String>>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let mut names = Vec::new();
    for entry in rd {
        if let Ok(name) = entry?.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(Some(names))
}

impl Store for FsStore {
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn blob_open(&self, digest: &Digest) -> Result<(Box<dyn BlobRead>, u64)> {
        let f = File::open(self.blob_path(digest))?;
        let len = f.metadata()?.len();
        Ok((Box::new(f), len))
    }

    fn blob_map(&self, digest: &Digest) -> Result<Option<bytes::Bytes>> {
        let file = File::open(self.blob_path(digest))?;
        if file.metadata()?.len() < MAP_MIN {
            return Ok(None);
        }
        // SAFETY: a mapping is unsound if the file changes underneath it.
        // Blob files never do: they are written under a temporary name,
        // fsynced, renamed into place and from then on only ever unlinked
        // (garbage collection), which leaves the mapping intact. An I/O error
        // of the device while a mapped page is read raises SIGBUS and ends
        // the process: on a replicated store that is a failover, which is
        // what a failing disk calls for anyway.
        #[expect(unsafe_code, reason = "zero-copy downloads of immutable blob files")]
        let map = unsafe { memmap2::Mmap::map(&file)? };
        let _ = map.advise(memmap2::Advice::Sequential);
        Ok(Some(bytes::Bytes::from_owner(map)))
    }

    fn blob_delete(&self, digest: &Digest) -> Result<bool> {
        remove_durable(&self.blob_path(digest))
    }

    fn blob_link(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        self.touch_durable(&self.layer_link(repo, digest))
    }

    fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self.layer_link(repo, digest).exists())
    }

    fn blob_unlink(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        remove_durable(&self.layer_link(repo, digest))
    }

    fn upload_create(&self, repo: &RepoName) -> Result<UploadId> {
        let id = UploadId::new_random();
        let dir = self.upload_dir(&id);
        mkdir_durable(&dir)?;
        let made = File::create(dir.join("data"))
            .and_then(|f| f.sync_all())
            .map_err(StoreError::from)
            .and_then(|()| self.write_atomic(&dir.join("repo"), repo.as_str().as_bytes()));
        if made.is_err() {
            // A full disk, typically: leave no half-made session behind.
            let _ = fs::remove_dir_all(&dir);
        }
        made.map(|()| id)
    }

    fn upload_info(&self, repo: &RepoName, id: &UploadId) -> Result<Option<UploadInfo>> {
        let Some(data) = self.upload_data(repo, id)? else {
            return Ok(None);
        };
        let size = fs::metadata(&data)?.len();
        let started = fs::metadata(self.upload_dir(id).join("repo"))?.modified()?;
        Ok(Some(UploadInfo { size, started }))
    }

    fn upload_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: u64,
    ) -> Result<Box<dyn UploadWriter>> {
        let data = self.upload_data(repo, id)?.ok_or(StoreError::NotFound)?;
        let mut file = OpenOptions::new().write(true).open(data)?;
        let stored = file.metadata()?.len();
        if stored != offset {
            return Err(StoreError::OffsetMismatch {
                stored,
                requested: offset,
            });
        }
        file.seek(SeekFrom::Start(offset))?;
        Ok(Box::new(FsUploadWriter {
            file,
            start: offset,
            written: 0,
            flushed: 0,
            committed: false,
        }))
    }

    fn upload_read(&self, repo: &RepoName, id: &UploadId) -> Result<Box<dyn BlobRead>> {
        let data = self.upload_data(repo, id)?.ok_or(StoreError::NotFound)?;
        Ok(Box::new(File::open(data)?))
    }

    fn upload_commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<()> {
        let data = self.upload_data(repo, id)?.ok_or(StoreError::NotFound)?;
        let dest = self.blob_path(digest);
        // An existing blob is touched: the client's interest protects it
        // from a collection until the manifest that needs it arrives.
        if self.blob_touch(digest)?.is_none() {
            // Its modification time is the last chunk's: make it now.
            touch_file(&data)?;
            File::open(&data)?.sync_all()?;
            let parent = parent_of(&dest)?;
            mkdir_durable(parent)?;
            fs::rename(&data, &dest)?;
            fsync_dir(parent)?;
        }
        self.blob_link(repo, digest)?;
        let _ = fs::remove_dir_all(self.upload_dir(id));
        Ok(())
    }

    fn upload_cancel(&self, repo: &RepoName, id: &UploadId) -> Result<bool> {
        if self.upload_data(repo, id)?.is_none() {
            return Ok(false);
        }
        fs::remove_dir_all(self.upload_dir(id))?;
        fsync_dir(&self.root.join("uploads"))?;
        Ok(true)
    }

    fn uploads_purge(&self, max_age: Duration) -> Result<Vec<UploadId>> {
        let dir = self.root.join("uploads");
        let now = SystemTime::now();
        let mut purged = Vec::new();
        for name in list_dir_names(&dir)?.unwrap_or_default() {
            let Some(id) = UploadId::parse(&name) else {
                continue;
            };
            let path = self.upload_dir(&id);
            // Last activity: the data file's mtime, else the session's.
            let modified = fs::metadata(path.join("data"))
                .or_else(|_| fs::metadata(&path))
                .and_then(|m| m.modified());
            let stale = match modified {
                Ok(t) => now.duration_since(t).unwrap_or_default() > max_age,
                Err(_) => true,
            };
            if stale && fs::remove_dir_all(&path).is_ok() {
                purged.push(id);
            }
        }
        Ok(purged)
    }

    fn manifest_put(
        &self,
        repo: &RepoName,
        digest: &Digest,
        manifest: &StoredManifest,
        referrer: Option<(&Digest, &[u8])>,
    ) -> Result<()> {
        let blob = self.blob_path(digest);
        if self.blob_touch(digest)?.is_none() {
            self.write_atomic(&blob, &manifest.content)?;
        }
        self.write_atomic(
            &self.revision_path(repo, digest),
            manifest.media_type.as_bytes(),
        )?;
        if let Some((subject, descriptor)) = referrer {
            let name = entry_name(digest);
            self.write_atomic(&self.referrers_dir(repo, subject).join(name), descriptor)?;
        }
        Ok(())
    }

    fn manifest_get(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>> {
        let Some(media_type) = read_opt(&self.revision_path(repo, digest))? else {
            return Ok(None);
        };
        let media_type = String::from_utf8(media_type)
            .map_err(|_| StoreError::Corrupt(format!("media type of {digest}")))?;
        let content = read_opt(&self.blob_path(digest))?
            .ok_or_else(|| StoreError::Corrupt(format!("manifest blob {digest} missing")))?;
        Ok(Some(StoredManifest {
            media_type,
            content,
        }))
    }

    fn manifest_exists(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        Ok(self.revision_path(repo, digest).exists())
    }

    fn manifest_delete(
        &self,
        repo: &RepoName,
        digest: &Digest,
        subject: Option<&Digest>,
    ) -> Result<bool> {
        // Tags and the referrers entry go first, the revision last: a crash
        // in between leaves an untagged manifest (a valid state that a
        // repeated DELETE completes), never a tag pointing at nothing.
        let revision = self.revision_path(repo, digest);
        if !revision.exists() {
            return Ok(false);
        }
        let tags = self.tags_dir(repo);
        let wanted = digest.to_string();
        for tag in list_dir_names(&tags)?.unwrap_or_default() {
            let path = tags.join(&tag);
            if read_opt(&path)?.is_some_and(|d| d == wanted.as_bytes()) {
                remove_durable(&path)?;
            }
        }
        if let Some(subject) = subject {
            let name = entry_name(digest);
            remove_durable(&self.referrers_dir(repo, subject).join(name))?;
        }
        remove_durable(&revision)
    }

    fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>> {
        let Some(raw) = read_opt(&self.tags_dir(repo).join(tag.as_str()))? else {
            return Ok(None);
        };
        let s = std::str::from_utf8(&raw).map_err(|_| StoreError::Corrupt(format!("tag {tag}")))?;
        s.parse()
            .map(Some)
            .map_err(|_| StoreError::Corrupt(format!("tag {tag}")))
    }

    fn tag_set(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()> {
        self.write_atomic(
            &self.tags_dir(repo).join(tag.as_str()),
            digest.to_string().as_bytes(),
        )
    }

    fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool> {
        remove_durable(&self.tags_dir(repo).join(tag.as_str()))
    }

    fn tags_list(&self, repo: &RepoName) -> Result<Option<Vec<String>>> {
        let dir = self.repo_dir(repo);
        if !dir.join("_manifests").is_dir() && !dir.join("_layers").is_dir() {
            return Ok(None);
        }
        let mut tags = list_dir_names(&self.tags_dir(repo))?.unwrap_or_default();
        tags.retain(|t| Tag::parse(t).is_ok());
        tags.sort();
        Ok(Some(tags))
    }

    fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Vec<u8>>> {
        let dir = self.referrers_dir(repo, subject);
        let mut names = list_dir_names(&dir)?.unwrap_or_default();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(v) = read_opt(&dir.join(name))? {
                out.push(v);
            }
        }
        Ok(out)
    }

    fn repositories(&self) -> Result<Vec<String>> {
        fn walk(dir: &Path, prefix: &str, out: &mut Vec<String>) -> Result<()> {
            let Some(names) = list_dir_names(dir)? else {
                return Ok(());
            };
            let is_repo = names.iter().any(|n| n == "_manifests" || n == "_layers");
            if is_repo && !prefix.is_empty() {
                out.push(prefix.to_owned());
            }
            for name in names {
                if name.starts_with('_') {
                    continue;
                }
                let full = if prefix.is_empty() {
                    name.clone()
                } else {
                    format!("{prefix}/{name}")
                };
                if RepoName::parse(&full).is_ok() && dir.join(&name).is_dir() {
                    walk(&dir.join(&name), &full, out)?;
                }
            }
            Ok(())
        }
        let mut out = Vec::new();
        walk(&self.root.join("repositories"), "", &mut out)?;
        out.sort();
        Ok(out)
    }

    fn now(&self) -> Result<SystemTime> {
        // A new file's timestamp: the clock the kernel stamps files with,
        // which lags the system clock by up to a scheduler tick.
        let tmp = TempFile::create(&self.tmp_dir())?;
        Ok(tmp.file.metadata()?.modified()?)
    }

    fn blob_touch(&self, digest: &Digest) -> Result<Option<u64>> {
        let (path, trash) = (self.blob_path(digest), self.blob_trash(digest));
        // A collection may set the blob aside between the touch and the
        // stat (it then puts it back, having seen the touch): try again.
        for _ in 0..3 {
            if !touch_or_rescue(&path, &trash)? {
                return Ok(None);
            }
            match fs::metadata(&path) {
                Ok(m) => return Ok(Some(m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(None)
    }

    fn blobs(&self) -> Result<Vec<BlobEntry>> {
        let dir = self.root.join("blobs");
        let mut out = Vec::new();
        for alg in list_dir_names(&dir)?.unwrap_or_default() {
            for shard in list_dir_names(&dir.join(&alg))?.unwrap_or_default() {
                let shard_dir = dir.join(&alg).join(&shard);
                for hex in list_dir_names(&shard_dir)?.unwrap_or_default() {
                    let Ok(digest) = format!("{alg}:{hex}").parse::<Digest>() else {
                        continue;
                    };
                    match fs::metadata(shard_dir.join(&hex)) {
                        Ok(m) => out.push(BlobEntry {
                            digest,
                            size: m.len(),
                            modified: m.modified()?,
                        }),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(out)
    }

    fn blob_collect(&self, digest: &Digest, cutoff: SystemTime) -> Result<Option<u64>> {
        collect_file(&self.blob_path(digest), &self.blob_trash(digest), cutoff)
    }

    fn blob_links(&self, repo: &RepoName) -> Result<Vec<Digest>> {
        let links = list_by_algorithm(&self.repo_dir(repo).join("_layers"))?;
        Ok(links.into_iter().map(|(d, _)| d).collect())
    }

    fn blob_link_prune(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        let (link, blob) = (self.layer_link(repo, digest), self.blob_path(digest));
        if !link.exists() || blob.exists() || !remove_durable(&link)? {
            return Ok(false);
        }
        // A commit renames the blob into place before it links it: if the
        // blob is back now, that link may have been the commit's.
        if blob.exists() {
            self.touch_durable(&link)?;
            return Ok(false);
        }
        Ok(true)
    }

    fn manifest_touch(&self, repo: &RepoName, digest: &Digest) -> Result<bool> {
        touch_or_rescue(
            &self.revision_path(repo, digest),
            &self.revision_trash(repo, digest),
        )
    }

    fn manifest_revisions(&self, repo: &RepoName) -> Result<Vec<RevisionEntry>> {
        let dir = self.repo_dir(repo).join("_manifests/revisions");
        list_by_algorithm(&dir)?
            .into_iter()
            .map(|(digest, m)| {
                Ok(RevisionEntry {
                    digest,
                    modified: m.modified()?,
                })
            })
            .collect()
    }

    fn manifest_collect(
        &self,
        repo: &RepoName,
        digest: &Digest,
        subject: Option<&Digest>,
        cutoff: SystemTime,
    ) -> Result<bool> {
        let (path, trash) = (
            self.revision_path(repo, digest),
            self.revision_trash(repo, digest),
        );
        if collect_file(&path, &trash, cutoff)?.is_none() {
            return Ok(false);
        }
        // The revision first, then its entry: an entry without its
        // revision is skipped by readers and pruned by the next collection.
        if let Some(subject) = subject {
            self.referrer_entry_prune(repo, subject, digest)?;
        }
        Ok(true)
    }

    fn referrers_prune(&self, repo: &RepoName) -> Result<usize> {
        let dir = self.repo_dir(repo).join("_referrers");
        let mut pruned = 0;
        for alg in list_dir_names(&dir)?.unwrap_or_default() {
            for subject_hex in list_dir_names(&dir.join(&alg))?.unwrap_or_default() {
                let Ok(subject) = format!("{alg}:{subject_hex}").parse::<Digest>() else {
                    continue;
                };
                let subject_dir = self.referrers_dir(repo, &subject);
                for name in list_dir_names(&subject_dir)?.unwrap_or_default() {
                    if let Some(digest) = parse_entry_name(&name)
                        && self.referrer_entry_prune(repo, &subject, &digest)?
                    {
                        pruned += 1;
                    }
                }
                // Best effort: a referrer stored meanwhile re-creates it.
                if fs::remove_dir(&subject_dir).is_ok() {
                    fsync_dir(&dir.join(&alg))?;
                }
            }
        }
        Ok(pruned)
    }

    fn repository_prune(&self, repo: &RepoName) -> Result<bool> {
        let dir = self.repo_dir(repo);
        // The repository's own directories; nested repositories are the
        // other subdirectories (their names never start with `_`).
        const OWN: [&str; 3] = ["_manifests", "_layers", "_referrers"];
        for sub in OWN {
            if has_file(&dir.join(sub))? {
                return Ok(false);
            }
        }
        for sub in OWN {
            // A write that lands meanwhile makes a directory non-empty and
            // stops the removal; one that finds its directory gone makes
            // it again (see `in_directory`).
            if !remove_empty_tree(&dir.join(sub))? {
                return Ok(false);
            }
        }
        // The repository's directory and the parents it leaves empty.
        let top = self.root.join("repositories");
        let mut current = dir;
        while current != top {
            let Ok(()) = fs::remove_dir(&current) else {
                break;
            };
            let parent = parent_of(&current)?.to_owned();
            fsync_dir(&parent)?;
            current = parent;
        }
        Ok(true)
    }

    fn pin(&self, record: &[u8]) -> Result<PinId> {
        let id = PinId::new_random();
        let path = self.pins_dir().join(id.as_str());
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .and_then(|mut f| f.write_all(record));
        if let Err(e) = written {
            let _ = fs::remove_file(&path);
            return Err(e.into());
        }
        Ok(id)
    }

    fn unpin(&self, id: &PinId) -> Result<()> {
        match fs::remove_file(self.pins_dir().join(id.as_str())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    fn pins(&self) -> Result<Vec<Vec<u8>>> {
        let dir = self.pins_dir();
        let mut out = Vec::new();
        for name in list_dir_names(&dir)?.unwrap_or_default() {
            if let Some(record) = read_opt(&dir.join(name))? {
                out.push(record);
            }
        }
        Ok(out)
    }

    fn gc_recover(&self) -> Result<usize> {
        let mut recovered = 0;
        let trash = self.root.join("trash");
        for name in list_dir_names(&trash)?.unwrap_or_default() {
            if let Some(digest) = parse_entry_name(&name) {
                put_back(&trash.join(&name), &self.blob_path(&digest))?;
                recovered += 1;
            }
        }
        for repo in self.repositories()? {
            let Ok(repo) = RepoName::parse(&repo) else {
                continue;
            };
            let dir = self.repo_dir(&repo).join("_manifests/trash");
            for (digest, _) in list_by_algorithm(&dir)? {
                put_back(
                    &self.revision_trash(&repo, &digest),
                    &self.revision_path(&repo, &digest),
                )?;
                recovered += 1;
            }
        }
        Ok(recovered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_store_suite() {
        let dirs = std::sync::Mutex::new(Vec::new());
        super::super::testsuite::run_all(&|| {
            let dir = tempfile::tempdir().unwrap();
            let store = FsStore::open(dir.path()).unwrap();
            dirs.lock().unwrap().push(dir);
            Box::new(store)
        });
    }

    #[test]
    fn large_blobs_are_mapped_small_ones_read() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let repo = RepoName::parse("r").unwrap();
        let put = |data: &[u8]| {
            let id = store.upload_create(&repo).unwrap();
            let mut w = store.upload_append(&repo, &id, 0).unwrap();
            w.write_all(data).unwrap();
            w.commit().unwrap();
            let d = Digest::sha256(data);
            store.upload_commit(&repo, &id, &d).unwrap();
            d
        };
        let small = put(b"small");
        assert!(store.blob_map(&small).unwrap().is_none());
        let big = vec![7u8; MAP_MIN as usize];
        let d = put(&big);
        let mapped = store.blob_map(&d).unwrap().expect("mapped");
        // Unlinking (garbage collection) leaves a live mapping intact.
        assert!(store.blob_delete(&d).unwrap());
        assert_eq!(mapped.as_ref(), big.as_slice());
        assert!(matches!(store.blob_map(&d), Err(StoreError::NotFound)));
    }

    #[test]
    fn open_clears_scratch_and_keeps_content() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let repo = RepoName::parse("r").unwrap();
        let id = store.upload_create(&repo).unwrap();
        std::fs::write(dir.path().join("tmp/leftover"), b"x").unwrap();
        drop(store);
        let store = FsStore::open(dir.path()).unwrap();
        assert!(!dir.path().join("tmp/leftover").exists());
        assert!(
            store.upload_info(&repo, &id).unwrap().is_some(),
            "uploads survive a restart"
        );
    }

    fn put(store: &FsStore, repo: &RepoName, data: &[u8]) -> Digest {
        let id = store.upload_create(repo).unwrap();
        let mut w = store.upload_append(repo, &id, 0).unwrap();
        w.write_all(data).unwrap();
        w.commit().unwrap();
        let d = Digest::sha256(data);
        store.upload_commit(repo, &id, &d).unwrap();
        d
    }

    /// Sets a file's modification time `secs` seconds back.
    fn age(path: &Path, secs: u64) {
        let t = SystemTime::now() - Duration::from_secs(secs);
        File::options()
            .write(true)
            .open(path)
            .unwrap()
            .set_modified(t)
            .unwrap();
    }

    /// What a collection interrupted after setting objects aside leaves:
    /// a client's interest takes them back, and so does the next
    /// collection.
    #[test]
    fn set_aside_objects_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let repo = RepoName::parse("r").unwrap();
        let (a, b) = (put(&store, &repo, b"a"), put(&store, &repo, b"b"));
        let m = StoredManifest {
            media_type: "t".into(),
            content: b"m".to_vec(),
        };
        let md = Digest::sha256(b"m");
        store.manifest_put(&repo, &md, &m, None).unwrap();
        let set_aside = |from: PathBuf, to: PathBuf| {
            fs::create_dir_all(to.parent().unwrap()).unwrap();
            fs::rename(from, to).unwrap();
        };
        set_aside(store.blob_path(&a), store.blob_trash(&a));
        set_aside(store.blob_path(&b), store.blob_trash(&b));
        set_aside(
            store.revision_path(&repo, &md),
            store.revision_trash(&repo, &md),
        );
        assert_eq!(store.blob_size(&a).unwrap(), None);
        assert!(!store.manifest_exists(&repo, &md).unwrap());
        // Interest takes `a` back.
        assert_eq!(store.blob_touch(&a).unwrap(), Some(1));
        assert!(!store.blob_trash(&a).exists());
        // A server restart leaves the trash to the collector.
        drop(store);
        let store = FsStore::open(dir.path()).unwrap();
        assert_eq!(store.gc_recover().unwrap(), 2);
        assert_eq!(store.blob_size(&b).unwrap(), Some(1));
        assert!(store.manifest_exists(&repo, &md).unwrap());
        assert_eq!(store.gc_recover().unwrap(), 0);
    }

    #[test]
    fn stale_referrers_entries_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let repo = RepoName::parse("r").unwrap();
        let subject = Digest::sha256(b"s");
        let (d1, d2) = (Digest::sha256(b"1"), Digest::sha256(b"2"));
        for (d, c) in [(&d1, b"1"), (&d2, b"2")] {
            let m = StoredManifest {
                media_type: "t".into(),
                content: c.to_vec(),
            };
            store
                .manifest_put(&repo, d, &m, Some((&subject, b"{}")))
                .unwrap();
        }
        // A collection interrupted between a revision and its entry.
        fs::remove_file(store.revision_path(&repo, &d1)).unwrap();
        assert_eq!(store.referrers(&repo, &subject).unwrap().len(), 2);
        assert_eq!(store.referrers_prune(&repo).unwrap(), 1);
        assert_eq!(store.referrers(&repo, &subject).unwrap().len(), 1);
        assert_eq!(store.referrers_prune(&repo).unwrap(), 0);
    }

    /// A touch racing with a collection of the same old blob: exactly one
    /// of them wins, and the blob exists afterwards if and only if the
    /// touch did.
    #[test]
    fn touch_and_collect_never_both_win() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(FsStore::open(dir.path()).unwrap());
        let repo = RepoName::parse("r").unwrap();
        let (mut touched, mut collected) = (0, 0);
        for i in 0..300u32 {
            let d = put(&store, &repo, &i.to_le_bytes());
            age(&store.blob_path(&d), 7200);
            let cutoff = SystemTime::now() - Duration::from_secs(3600);
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let (s, b, d2) = (store.clone(), barrier.clone(), d.clone());
            // The touch lands anywhere from before the collection's first
            // look to after its unlink.
            let delay = Duration::from_micros(u64::from(i % 30) * 20);
            let toucher = std::thread::spawn(move || {
                b.wait();
                let t = std::time::Instant::now();
                while t.elapsed() < delay {
                    std::hint::spin_loop();
                }
                s.blob_touch(&d2).unwrap()
            });
            barrier.wait();
            let removed = store.blob_collect(&d, cutoff).unwrap();
            let touch = toucher.join().unwrap();
            assert!(
                touch.is_some() != removed.is_some(),
                "round {i}: touch {touch:?}, collect {removed:?}"
            );
            assert_eq!(store.blob_size(&d).unwrap().is_some(), touch.is_some());
            assert!(!store.blob_trash(&d).exists());
            touched += usize::from(touch.is_some());
            collected += usize::from(removed.is_some());
        }
        eprintln!("touch won {touched} times, collection {collected}");
        assert_eq!(touched + collected, 300);
    }

    #[test]
    fn layout_is_as_documented() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let repo = RepoName::parse("lib/app").unwrap();
        let d = Digest::sha256(b"x");
        let m = StoredManifest {
            media_type: "t".into(),
            content: b"x".to_vec(),
        };
        store.manifest_put(&repo, &d, &m, None).unwrap();
        store
            .tag_set(&repo, &Tag::parse("v1").unwrap(), &d)
            .unwrap();
        store.blob_link(&repo, &d).unwrap();
        let h = d.hex();
        for p in [
            format!("blobs/sha256/{}/{h}", &h[..2]),
            format!("repositories/lib/app/_manifests/revisions/sha256/{h}"),
            format!("repositories/lib/app/_layers/sha256/{h}"),
            "repositories/lib/app/_manifests/tags/v1".to_owned(),
        ] {
            assert!(dir.path().join(&p).is_file(), "{p} missing");
        }
        assert_eq!(
            std::fs::read_to_string(dir.path().join("repositories/lib/app/_manifests/tags/v1"))
                .unwrap(),
            d.to_string()
        );
    }
}
