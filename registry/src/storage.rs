//! The storage contract: what the registry needs from wherever content lives.
//!
//! [`Store`] is deliberately synchronous and object-safe: the filesystem
//! implementation is blocking I/O by nature, and the HTTP layer calls the
//! store from blocking tasks. An object-store implementation (S3, Swift) can
//! implement the same trait. Every implementation must pass the shared suite
//! in [`testsuite`].
//!
//! Durability contract: a method that returns `Ok` has made its effect
//! durable (on the filesystem store: file and directory fsynced). Hashing and
//! digest verification are done by the caller ([`crate::service`]); the store
//! moves bytes and names.
//!
//! Garbage collection ([`crate::gc`]) runs beside a serving registry, possibly
//! in another process. Its contract with the store: the registry records
//! interest in existing content ([`Store::blob_touch`],
//! [`Store::manifest_touch`]) by refreshing its modification time, and
//! announces the manifest it is storing ([`Store::pin`]); the collector lists
//! content with those times and removes an object only through
//! [`Store::blob_collect`] or [`Store::manifest_collect`], which keep it if it
//! was touched at or after the cutoff, atomically with respect to a
//! concurrent touch: the touch either lands first (the object stays) or
//! finds the object gone (the registry answers as for unknown content).

pub mod fs;
#[cfg(test)]
mod testsuite;

use std::io::{Read, Seek, Write};
use std::time::{Duration, SystemTime};

use crate::digest::Digest;
use crate::name::{RepoName, Tag};

pub use fs::FsStore;

/// Errors a store can return.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("not found")]
    NotFound,
    /// An upload's size differed from the offset a writer was opened at.
    #[error("upload offset mismatch: stored {stored}, requested {requested}")]
    OffsetMismatch { stored: u64, requested: u64 },
    #[error("no space left on the storage device")]
    NoSpace,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("storage I/O error: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::NotFound,
            std::io::ErrorKind::StorageFull => StoreError::NoSpace,
            _ => StoreError::Io(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An upload session's identifier: 32 lower-case hex digits.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct UploadId(String);

impl UploadId {
    pub fn new_random() -> Self {
        let v: u128 = rand::random();
        UploadId(format!("{v:032x}"))
    }

    pub fn parse(s: &str) -> Option<Self> {
        (s.len() == 32
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
        .then(|| UploadId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the store knows of an upload session.
#[derive(Clone, Debug)]
pub struct UploadInfo {
    /// Bytes received so far.
    pub size: u64,
    pub started: SystemTime,
}

/// A readable, seekable blob or upload body.
pub trait BlobRead: Read + Seek + Send {}
impl<T: Read + Seek + Send> BlobRead for T {}

/// Appends one chunk to an upload. Dropping it without `commit` rolls the
/// upload back to where the chunk started.
pub trait UploadWriter: Write + Send {
    /// Makes the chunk durable and returns the upload's new size.
    fn commit(self: Box<Self>) -> Result<u64>;
}

/// A manifest as stored: its media type and bytes.
#[derive(Clone, Debug)]
pub struct StoredManifest {
    pub media_type: String,
    pub content: Vec<u8>,
}

/// A stored blob as garbage collection lists it.
#[derive(Clone, Debug)]
pub struct BlobEntry {
    pub digest: Digest,
    pub size: u64,
    /// When it was stored or last touched ([`Store::blob_touch`]).
    pub modified: SystemTime,
}

/// A manifest revision of a repository as garbage collection lists it.
#[derive(Clone, Debug)]
pub struct RevisionEntry {
    pub digest: Digest,
    /// When it was stored or last touched ([`Store::manifest_touch`]).
    pub modified: SystemTime,
}

/// A record of a manifest being stored right now ([`Store::pin`]).
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct PinId(String);

impl PinId {
    /// A fresh random identifier: 32 lower-case hex digits.
    pub fn new_random() -> Self {
        PinId(format!("{:032x}", rand::random::<u128>()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where registry content lives. See the module doc for the contract.
pub trait Store: Send + Sync + 'static {
    // Blobs, shared by every repository.

    /// Size of a stored blob, or `None`.
    fn blob_size(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Opens a stored blob for reading; returns it with its size.
    fn blob_open(&self, digest: &Digest) -> Result<(Box<dyn BlobRead>, u64)>;
    /// The whole blob as immutable shared memory, when the store can map
    /// it: downloads then send it without copying it through user space.
    /// `None` means: read it with [`Store::blob_open`].
    fn blob_map(&self, _digest: &Digest) -> Result<Option<bytes::Bytes>> {
        Ok(None)
    }
    /// Removes a blob from the store (garbage collection only).
    fn blob_delete(&self, digest: &Digest) -> Result<bool>;

    // Repository links: which blobs a repository may serve.

    fn blob_link(&self, repo: &RepoName, digest: &Digest) -> Result<()>;
    fn blob_linked(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    fn blob_unlink(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;

    // Upload sessions.

    fn upload_create(&self, repo: &RepoName) -> Result<UploadId>;
    /// The session's state, or `None` if it does not exist for `repo`.
    fn upload_info(&self, repo: &RepoName, id: &UploadId) -> Result<Option<UploadInfo>>;
    /// Opens a writer appending at `offset`, which must equal the current size.
    fn upload_append(
        &self,
        repo: &RepoName,
        id: &UploadId,
        offset: u64,
    ) -> Result<Box<dyn UploadWriter>>;
    /// Reads back what an upload holds (to rebuild a hash after a restart).
    fn upload_read(&self, repo: &RepoName, id: &UploadId) -> Result<Box<dyn BlobRead>>;
    /// Turns a complete, verified upload into the blob `digest` and links it
    /// into `repo`. The caller has checked the digest and size.
    fn upload_commit(&self, repo: &RepoName, id: &UploadId, digest: &Digest) -> Result<()>;
    fn upload_cancel(&self, repo: &RepoName, id: &UploadId) -> Result<bool>;
    /// Removes sessions with no activity for `max_age`; returns their ids.
    fn uploads_purge(&self, max_age: Duration) -> Result<Vec<UploadId>>;

    // Manifests and tags.

    /// Stores a verified manifest: its content as a blob, its revision in
    /// `repo`, and a referrers entry when it has a subject.
    fn manifest_put(
        &self,
        repo: &RepoName,
        digest: &Digest,
        manifest: &StoredManifest,
        referrer: Option<(&Digest, &[u8])>,
    ) -> Result<()>;
    fn manifest_get(&self, repo: &RepoName, digest: &Digest) -> Result<Option<StoredManifest>>;
    fn manifest_exists(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    /// Removes a manifest revision, every tag pointing to it and its
    /// referrers entry (`subject`). Returns whether it existed.
    fn manifest_delete(
        &self,
        repo: &RepoName,
        digest: &Digest,
        subject: Option<&Digest>,
    ) -> Result<bool>;

    fn tag_get(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>>;
    fn tag_set(&self, repo: &RepoName, tag: &Tag, digest: &Digest) -> Result<()>;
    fn tag_delete(&self, repo: &RepoName, tag: &Tag) -> Result<bool>;
    /// Tags of `repo`, sorted; `None` when the repository does not exist.
    fn tags_list(&self, repo: &RepoName) -> Result<Option<Vec<String>>>;

    /// Descriptors (JSON) of the manifests in `repo` whose subject is `subject`.
    fn referrers(&self, repo: &RepoName, subject: &Digest) -> Result<Vec<Vec<u8>>>;

    /// Every repository, sorted.
    fn repositories(&self) -> Result<Vec<String>>;

    // Interest and garbage collection (see the module doc and `crate::gc`).

    /// The store's current time, in the clock that stamps modification
    /// times (on a filesystem, the kernel's file timestamps, which may lag
    /// the system clock by a tick).
    fn now(&self) -> Result<SystemTime> {
        Ok(SystemTime::now())
    }
    /// Records interest in a blob: sets its modification time to now. A
    /// blob that a collection in progress has set aside is put back.
    /// Returns its size, or `None` when the blob does not exist.
    fn blob_touch(&self, digest: &Digest) -> Result<Option<u64>>;
    /// Every stored blob.
    fn blobs(&self) -> Result<Vec<BlobEntry>>;
    /// Removes a blob unless it was modified at or after `cutoff`; a
    /// concurrent [`Store::blob_touch`] either keeps it or finds it gone.
    /// Returns the size removed, `None` when the blob stays (or was gone).
    fn blob_collect(&self, digest: &Digest, cutoff: SystemTime) -> Result<Option<u64>>;
    /// The blobs linked into `repo`.
    fn blob_links(&self, repo: &RepoName) -> Result<Vec<Digest>>;
    /// Removes `repo`'s link to `digest` if the blob does not exist; a blob
    /// committed meanwhile keeps its link. Returns whether the link went.
    fn blob_link_prune(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;

    /// Records interest in a manifest revision (as [`Store::blob_touch`]);
    /// returns whether it exists.
    fn manifest_touch(&self, repo: &RepoName, digest: &Digest) -> Result<bool>;
    /// The manifest revisions of `repo`.
    fn manifest_revisions(&self, repo: &RepoName) -> Result<Vec<RevisionEntry>>;
    /// Removes a manifest revision unless it was modified at or after
    /// `cutoff` (as [`Store::blob_collect`]), then its referrers entry
    /// under `subject`. Tags are not looked at: the caller collects
    /// untagged manifests only. Returns whether the revision went.
    fn manifest_collect(
        &self,
        repo: &RepoName,
        digest: &Digest,
        subject: Option<&Digest>,
        cutoff: SystemTime,
    ) -> Result<bool>;
    /// Removes referrers entries of `repo` whose manifest revision does not
    /// exist (left by an interrupted collection). Returns how many.
    fn referrers_prune(&self, repo: &RepoName) -> Result<usize>;
    /// Removes `repo` if it holds nothing (no tag, revision, link or
    /// referrers entry); a write racing with it is not lost.
    fn repository_prune(&self, repo: &RepoName) -> Result<bool>;

    /// Announces a manifest being stored (`record`: what it references, as
    /// `crate::gc` writes it) until [`Store::unpin`]; a collection that
    /// starts meanwhile keeps what the record names. Pins need not be
    /// durable: they matter only while the process that made them lives.
    fn pin(&self, record: &[u8]) -> Result<PinId>;
    fn unpin(&self, id: &PinId) -> Result<()>;
    /// The records of every current pin.
    fn pins(&self) -> Result<Vec<Vec<u8>>>;
    /// Puts back whatever an interrupted collection had set aside; returns
    /// how many objects. Called by a collection before it starts.
    fn gc_recover(&self) -> Result<usize>;
}
