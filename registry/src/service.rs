//! Registry logic between the HTTP edge and the store: upload sessions with
//! streaming hashing, digest and size verification, manifest validation
//! against the repository's content, tags, referrers and catalog paging.
//!
//! No HTTP types here. Store calls are blocking and run on tokio's blocking
//! pool; request bodies are streamed to the store through a bounded channel
//! and hashed on the way, so memory per upload is bounded
//! ([`UPLOAD_BATCH`] x [`UPLOAD_QUEUE`]) whatever the blob size.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::fmt::Display;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::digest::{Algorithm, Digest, Hasher};
use crate::gc;
use crate::manifest::{self, ManifestError, ReferrerDescriptor, Requirement};
use crate::name::{RepoName, Tag};
use crate::storage::{BlobRead, Store, StoreError, StoredManifest, UploadId};

/// Bytes gathered before a batch goes to the writer thread.
pub const UPLOAD_BATCH: usize = 1 << 20;
/// Batches in flight between the socket and the disk per upload.
pub const UPLOAD_QUEUE: usize = 4;

/// Errors of registry operations; the HTTP edge maps each to a spec code.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("blob upload unknown to registry")]
    UploadUnknown,
    #[error("blob upload invalid: {0}")]
    UploadInvalid(String),
    /// A chunk did not start where the upload ends.
    #[error("chunk out of order: the upload holds {size} bytes")]
    RangeInvalid { size: u64 },
    #[error("provided digest did not match uploaded content")]
    DigestMismatch,
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    #[error("manifest references unknown {0}")]
    ManifestBlobUnknown(Digest),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest unknown to registry")]
    ManifestUnknown,
    #[error("manifest is larger than the limit of {0} bytes")]
    ManifestTooLarge(usize),
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("size invalid: {0}")]
    SizeInvalid(String),
    #[error("request body could not be read: {0}")]
    Body(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<ManifestError> for RegistryError {
    fn from(e: ManifestError) -> Self {
        RegistryError::ManifestInvalid(e.to_string())
    }
}

type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// A blob's content as the store hands it out.
pub enum BlobData {
    /// Shared immutable memory (a memory map): sent without copying.
    Mapped(Bytes),
    /// A reader, streamed a chunk at a time.
    Reader(Box<dyn BlobRead>),
}

/// Registry settings.
#[derive(Clone, Debug)]
pub struct RegistryConfig {
    /// Largest manifest accepted, in bytes.
    pub max_manifest_size: usize,
    /// Upload sessions idle for longer than this are removed.
    pub upload_max_age: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            max_manifest_size: 4 << 20,
            upload_max_age: Duration::from_secs(24 * 3600),
        }
    }
}

/// Where a manifest `PUT`, `GET` or `DELETE` points.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

impl Reference {
    pub fn parse(s: &str) -> Result<Self> {
        if s.contains(':') {
            s.parse()
                .map(Reference::Digest)
                .map_err(|e| RegistryError::DigestInvalid(e.to_string()))
        } else {
            Tag::parse(s)
                .map(Reference::Tag)
                .map_err(|_| RegistryError::ManifestInvalid(format!("invalid tag {s:?}")))
        }
    }
}

/// A page of a sorted listing.
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    /// Set when more items follow the last one returned.
    pub next_last: Option<String>,
}

fn paginate(all: Vec<String>, n: Option<usize>, last: Option<&str>) -> Page {
    paginate_by(all, n, last, str::cmp)
}

/// Tags in the spec's order: lexical, case-insensitive ("A", "a", "B"),
/// ties broken byte-wise so that the order is total and `last` unambiguous.
fn tag_order(a: &str, b: &str) -> Ordering {
    fn fold(s: &str) -> impl Iterator<Item = u8> + '_ {
        s.bytes().map(|c| c.to_ascii_lowercase())
    }
    fold(a).cmp(fold(b)).then_with(|| a.cmp(b))
}

/// A page of `all` (sorted by `order`): up to `n` items after `last`.
fn paginate_by(
    all: Vec<String>,
    n: Option<usize>,
    last: Option<&str>,
    order: fn(&str, &str) -> Ordering,
) -> Page {
    let mut iter = all
        .into_iter()
        .filter(|i| last.is_none_or(|l| order(i, l) == Ordering::Greater));
    match n {
        None => Page {
            items: iter.collect(),
            next_last: None,
        },
        Some(n) => {
            let items: Vec<String> = iter.by_ref().take(n).collect();
            let more = n > 0 && iter.next().is_some();
            let next_last = if more { items.last().cloned() } else { None };
            Page { items, next_last }
        }
    }
}

/// The cached hash of an upload's bytes so far. The store's data is the
/// truth; this saves re-reading it, and is rebuilt from it after a restart.
struct HashState {
    size: u64,
    hasher: Hasher,
}

type Session = Arc<tokio::sync::Mutex<Option<HashState>>>;
type SessionGuard = tokio::sync::OwnedMutexGuard<Option<HashState>>;

/// The registry: operations on top of a [`Store`].
pub struct Registry {
    store: Arc<dyn Store>,
    config: RegistryConfig,
    sessions: Mutex<HashMap<UploadId, Session>>,
}

/// Runs a blocking store call on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| RegistryError::Store(StoreError::Io(std::io::Error::other(e))))?
}

enum WriteMsg {
    Data(Vec<Bytes>),
    Commit,
}

/// Hashes everything `reader` yields.
fn hash_reader(mut reader: Box<dyn BlobRead>, algorithm: Algorithm) -> Result<(Hasher, u64)> {
    let mut hasher = Hasher::new(algorithm);
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf).map_err(StoreError::from)?;
        if n == 0 {
            return Ok((hasher, size));
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
}

impl Registry {
    pub fn new(store: Arc<dyn Store>, config: RegistryConfig) -> Self {
        Registry {
            store,
            config,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn session(&self, id: &UploadId) -> Session {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(id.clone()).or_default().clone()
    }

    fn forget_session(&self, id: &UploadId) {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(id);
    }

    /// Locks the session of an existing upload; returns the guard and the
    /// upload's size. An unknown id leaves no entry in the session map.
    async fn lock_session(&self, repo: &RepoName, id: &UploadId) -> Result<(SessionGuard, u64)> {
        let session = self.session(id);
        let guard = session.clone().lock_owned().await;
        match self.upload_size(repo, id).await {
            Ok(size) => Ok((guard, size)),
            Err(e) => {
                drop(guard);
                let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
                // Held by the map and by us only: nobody is using it, and
                // nobody can take it while the map is locked.
                if map.get(id).is_some_and(|s| Arc::ptr_eq(s, &session))
                    && Arc::strong_count(&session) == 2
                {
                    map.remove(id);
                }
                Err(e)
            }
        }
    }

    /// Removes stale upload sessions; returns how many.
    pub async fn purge_uploads(&self) -> Result<usize> {
        let store = self.store.clone();
        let max_age = self.config.upload_max_age;
        let purged = blocking(move || Ok(store.uploads_purge(max_age)?)).await?;
        for id in &purged {
            self.forget_session(id);
        }
        Ok(purged.len())
    }

    // ---- blobs ----

    /// Size of a blob linked into `repo`. A client asking is interested in
    /// the blob: it is touched, so that garbage collection keeps it for a
    /// grace period (see [`crate::gc`]).
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> Result<u64> {
        let (store, repo, digest) = (self.store.clone(), repo.clone(), digest.clone());
        blocking(move || {
            if !store.blob_linked(&repo, &digest)? {
                return Err(RegistryError::BlobUnknown);
            }
            store.blob_touch(&digest)?.ok_or(RegistryError::BlobUnknown)
        })
        .await
    }

    /// Opens a blob linked into `repo` for reading; returns it with its size.
    pub async fn blob_open(&self, repo: &RepoName, digest: &Digest) -> Result<(BlobData, u64)> {
        let (store, repo, digest) = (self.store.clone(), repo.clone(), digest.clone());
        blocking(move || {
            if !store.blob_linked(&repo, &digest)? || store.blob_touch(&digest)?.is_none() {
                return Err(RegistryError::BlobUnknown);
            }
            let opened = match store.blob_map(&digest) {
                Ok(Some(bytes)) => {
                    let len = bytes.len() as u64;
                    Ok((BlobData::Mapped(bytes), len))
                }
                Ok(None) => store
                    .blob_open(&digest)
                    .map(|(r, len)| (BlobData::Reader(r), len)),
                Err(e) => Err(e),
            };
            match opened {
                Err(StoreError::NotFound) => Err(RegistryError::BlobUnknown),
                r => Ok(r?),
            }
        })
        .await
    }

    /// Unlinks a blob from `repo` (the content goes at garbage collection).
    pub async fn blob_delete(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let (store, repo, digest) = (self.store.clone(), repo.clone(), digest.clone());
        blocking(move || {
            if store.blob_unlink(&repo, &digest)? {
                Ok(())
            } else {
                Err(RegistryError::BlobUnknown)
            }
        })
        .await
    }

    /// Links a blob of `from` into `repo`; `false` when it cannot be
    /// mounted. The blob is touched (see [`Registry::blob_size`]).
    pub async fn blob_mount(
        &self,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> Result<bool> {
        let (store, repo, from, digest) = (
            self.store.clone(),
            repo.clone(),
            from.clone(),
            digest.clone(),
        );
        blocking(move || {
            if !store.blob_linked(&from, &digest)? || store.blob_touch(&digest)?.is_none() {
                return Ok(false);
            }
            store.blob_link(&repo, &digest)?;
            Ok(true)
        })
        .await
    }

    // ---- uploads ----

    pub async fn upload_start(&self, repo: &RepoName) -> Result<UploadId> {
        let (store, repo) = (self.store.clone(), repo.clone());
        blocking(move || Ok(store.upload_create(&repo)?)).await
    }

    /// Bytes an upload holds so far.
    pub async fn upload_size(&self, repo: &RepoName, id: &UploadId) -> Result<u64> {
        let (store, repo, id) = (self.store.clone(), repo.clone(), id.clone());
        blocking(move || {
            store
                .upload_info(&repo, &id)?
                .map(|i| i.size)
                .ok_or(RegistryError::UploadUnknown)
        })
        .await
    }

    /// The cached hash state if it matches `size`, else rebuilt from the store.
    async fn hash_state(
        &self,
        repo: &RepoName,
        id: &UploadId,
        cached: Option<HashState>,
        size: u64,
    ) -> Result<Hasher> {
        if let Some(state) = cached.filter(|s| s.size == size) {
            return Ok(state.hasher);
        }
        let (store, repo, id) = (self.store.clone(), repo.clone(), id.clone());
        let (hasher, read) =
            blocking(move || hash_reader(store.upload_read(&repo, &id)?, Algorithm::Sha256))
                .await?;
        if read != size {
            return Err(RegistryError::UploadInvalid(
                "upload changed while hashing".into(),
            ));
        }
        Ok(hasher)
    }

    /// Appends a chunk to an upload. `start` is the chunk's first byte
    /// offset when the client said it (`Content-Range`), `len` its length
    /// when known. Returns the upload's new size.
    pub async fn upload_append<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        len: Option<u64>,
        body: S,
    ) -> Result<u64>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: Display,
    {
        let (mut guard, hasher, new_size) = self.write_body(repo, id, start, len, body).await?;
        *guard = Some(HashState {
            size: new_size,
            hasher,
        });
        Ok(new_size)
    }

    /// Completes an upload: appends `body` (if any), verifies `digest`
    /// against everything received, and commits the blob.
    pub async fn upload_finish<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        start: Option<u64>,
        len: Option<u64>,
        body: S,
    ) -> Result<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: Display,
    {
        let (guard, hasher, _) = self.write_body(repo, id, start, len, body).await?;
        let actual = match digest.algorithm() {
            Algorithm::Sha256 => hasher.finish(),
            other => {
                let (store, r, i) = (self.store.clone(), repo.clone(), id.clone());
                blocking(move || Ok(hash_reader(store.upload_read(&r, &i)?, other)?.0.finish()))
                    .await?
            }
        };
        let (store, repo, id2, digest) =
            (self.store.clone(), repo.clone(), id.clone(), digest.clone());
        let result = blocking(move || {
            if actual != digest {
                store.upload_cancel(&repo, &id2)?;
                return Err(RegistryError::DigestMismatch);
            }
            store.upload_commit(&repo, &id2, &digest)?;
            Ok(())
        })
        .await;
        drop(guard);
        self.forget_session(id);
        result
    }

    /// Monolithic upload of a blob whose digest is known in advance.
    pub async fn blob_put<S, E>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        len: Option<u64>,
        body: S,
    ) -> Result<()>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: Display,
    {
        let id = self.upload_start(repo).await?;
        let result = self.upload_finish(repo, &id, digest, None, len, body).await;
        if result.is_err() {
            let _ = self.upload_cancel(repo, &id).await;
        }
        result
    }

    pub async fn upload_cancel(&self, repo: &RepoName, id: &UploadId) -> Result<()> {
        let session = self.session(id);
        let _guard = session.lock().await;
        let (store, r, i) = (self.store.clone(), repo.clone(), id.clone());
        let existed = blocking(move || Ok(store.upload_cancel(&r, &i)?)).await;
        self.forget_session(id);
        if existed? {
            Ok(())
        } else {
            Err(RegistryError::UploadUnknown)
        }
    }

    /// Locks the upload's session, checks that the chunk starts where the
    /// upload ends (`start`, when the client said where), and streams `body`
    /// onto the end, hashing it on the way. Returns the session's lock, the
    /// hash of everything the upload holds and its new size. The chunk is
    /// durable when this returns `Ok`, and rolled back if anything fails.
    ///
    /// The session's lock travels with the writer to the disk thread and
    /// comes back when the writer is done: should this future be dropped
    /// half-way (client gone), the lock is released only after the partial
    /// chunk has been rolled back, so no other request can interleave.
    async fn write_body<S, E>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        len: Option<u64>,
        mut body: S,
    ) -> Result<(SessionGuard, Hasher, u64)>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
        E: Display,
    {
        let (mut guard, offset) = self.lock_session(repo, id).await?;
        if start.is_some_and(|s| s != offset) {
            return Err(RegistryError::RangeInvalid { size: offset });
        }
        let mut hasher = self.hash_state(repo, id, guard.take(), offset).await?;
        let (store, r, i) = (self.store.clone(), repo.clone(), id.clone());
        let (tx, mut rx) = mpsc::channel::<WriteMsg>(UPLOAD_QUEUE);
        let disk = tokio::task::spawn_blocking(move || -> (SessionGuard, Result<u64>) {
            let mut writer = match store.upload_append(&r, &i, offset) {
                Ok(w) => w,
                Err(StoreError::OffsetMismatch { stored, .. }) => {
                    return (guard, Err(RegistryError::RangeInvalid { size: stored }));
                }
                Err(StoreError::NotFound) => return (guard, Err(RegistryError::UploadUnknown)),
                Err(e) => return (guard, Err(e.into())),
            };
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    WriteMsg::Data(batch) => {
                        for chunk in batch {
                            if let Err(e) = writer.write_all(&chunk) {
                                drop(writer); // rolls back before the lock goes
                                return (guard, Err(StoreError::from(e).into()));
                            }
                        }
                    }
                    WriteMsg::Commit => {
                        let result = writer.commit().map_err(RegistryError::from);
                        return (guard, result);
                    }
                }
            }
            // The sender went away without committing: roll back, then unlock.
            drop(writer);
            (guard, Err(RegistryError::Body("upload aborted".into())))
        });

        // Hashing runs on its own thread once a body is larger than one
        // batch, so that receiving, hashing and writing overlap.
        let mut hashing: Option<(mpsc::Sender<Vec<Bytes>>, tokio::task::JoinHandle<Hasher>)> = None;
        let mut received = 0u64;
        let mut batch = Vec::new();
        let mut batch_len = 0usize;
        let feed: Result<()> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| RegistryError::Body(e.to_string()))?;
                received += chunk.len() as u64;
                if len.is_some_and(|l| received > l) {
                    return Err(RegistryError::SizeInvalid(
                        "more bytes than the declared range".into(),
                    ));
                }
                batch_len += chunk.len();
                batch.push(chunk);
                if batch_len >= UPLOAD_BATCH {
                    batch_len = 0;
                    let (htx, _) = hashing.get_or_insert_with(|| {
                        let mut h = hasher.clone();
                        let (htx, mut hrx) = mpsc::channel::<Vec<Bytes>>(UPLOAD_QUEUE);
                        let task = tokio::task::spawn_blocking(move || {
                            while let Some(batch) = hrx.blocking_recv() {
                                for chunk in &batch {
                                    h.update(chunk);
                                }
                            }
                            h
                        });
                        (htx, task)
                    });
                    let batch = std::mem::take(&mut batch);
                    if htx.send(batch.clone()).await.is_err()
                        || tx.send(WriteMsg::Data(batch)).await.is_err()
                    {
                        // The disk side failed; its error is reported
                        // below. Read the rest of the body first: a client
                        // still sending would otherwise meet a reset
                        // connection instead of the answer (507 on a full
                        // disk).
                        while let Some(Ok(_)) = body.next().await {}
                        return Ok(());
                    }
                }
            }
            if len.is_some_and(|l| received != l) {
                return Err(RegistryError::SizeInvalid(format!(
                    "received {received} bytes, the range declared {}",
                    len.unwrap_or_default()
                )));
            }
            match hashing.take() {
                Some((htx, task)) => {
                    if !batch.is_empty() && htx.send(batch.clone()).await.is_err() {
                        return Ok(());
                    }
                    drop(htx);
                    hasher = task.await.map_err(|e| {
                        RegistryError::Store(StoreError::Io(std::io::Error::other(e)))
                    })?;
                }
                None => {
                    for chunk in &batch {
                        hasher.update(chunk);
                    }
                }
            }
            if !batch.is_empty() && tx.send(WriteMsg::Data(batch)).await.is_err() {
                return Ok(());
            }
            let _ = tx.send(WriteMsg::Commit).await;
            Ok(())
        }
        .await;
        drop(tx);
        let disk = disk
            .await
            .map_err(|e| RegistryError::Store(StoreError::Io(std::io::Error::other(e))));
        feed?;
        let (guard, written) = disk?;
        let new_size = written?;
        if new_size != offset + received {
            return Err(RegistryError::Store(StoreError::Corrupt(format!(
                "upload {} is {new_size} bytes, expected {}",
                id.as_str(),
                offset + received
            ))));
        }
        Ok((guard, hasher, new_size))
    }

    // ---- manifests ----

    /// Validates and stores a manifest under `reference`. Returns its digest
    /// and subject.
    pub async fn manifest_put(
        &self,
        repo: &RepoName,
        reference: &Reference,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<(Digest, Option<Digest>)> {
        if body.len() > self.config.max_manifest_size {
            return Err(RegistryError::ManifestTooLarge(
                self.config.max_manifest_size,
            ));
        }
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &body);
                if &actual != d {
                    return Err(RegistryError::DigestMismatch);
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256(&body),
        };
        let parsed = manifest::parse(content_type, &body)?;
        let referrer = match &parsed.subject {
            Some(subject) => {
                let desc = ReferrerDescriptor {
                    media_type: parsed.media_type.clone(),
                    digest: digest.clone(),
                    size: body.len() as u64,
                    artifact_type: parsed.artifact_type.clone(),
                    annotations: parsed.annotations.clone(),
                };
                let json = serde_json::to_vec(&desc)
                    .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
                Some((subject.clone(), json))
            }
            None => None,
        };
        let subject = parsed.subject.clone();
        let pin = serde_json::to_vec(&gc::PinRecord::new(repo, &digest, &parsed.requirements))
            .map_err(|e| RegistryError::ManifestInvalid(e.to_string()))?;
        let (store, repo, reference, d) = (
            self.store.clone(),
            repo.clone(),
            reference.clone(),
            digest.clone(),
        );
        blocking(move || {
            // Announced while it is being stored, so that a garbage
            // collection starting meanwhile keeps what it references; and
            // everything it references is touched before anything is
            // stored (see crate::gc).
            let pin = store.pin(&pin)?;
            let stored =
                Self::store_manifest(&*store, &repo, &reference, &d, parsed, body, referrer);
            if let Err(e) = store.unpin(&pin) {
                tracing::warn!(error = %e, pin = pin.as_str(), "cannot remove a manifest's pin");
            }
            stored
        })
        .await?;
        Ok((digest, subject))
    }

    /// Checks that what a manifest references exists (touching it), then
    /// stores the manifest and its tag.
    fn store_manifest(
        store: &dyn Store,
        repo: &RepoName,
        reference: &Reference,
        d: &Digest,
        parsed: manifest::Parsed,
        body: Vec<u8>,
        referrer: Option<(Digest, Vec<u8>)>,
    ) -> Result<()> {
        for req in &parsed.requirements {
            match req {
                Requirement::Blob { digest, size } => {
                    if !store.blob_linked(repo, digest)? {
                        return Err(RegistryError::ManifestBlobUnknown(digest.clone()));
                    }
                    match store.blob_touch(digest)? {
                        None => return Err(RegistryError::ManifestBlobUnknown(digest.clone())),
                        Some(actual) if actual != *size => {
                            return Err(RegistryError::ManifestInvalid(format!(
                                "descriptor of {digest} says {size} bytes, the blob has {actual}"
                            )));
                        }
                        Some(_) => {}
                    }
                }
                Requirement::Manifest { digest } => {
                    if !store.manifest_touch(repo, digest)? {
                        return Err(RegistryError::ManifestBlobUnknown(digest.clone()));
                    }
                }
            }
        }
        let stored = StoredManifest {
            media_type: parsed.media_type,
            content: body,
        };
        let referrer = referrer.as_ref().map(|(s, j)| (s, j.as_slice()));
        store.manifest_put(repo, d, &stored, referrer)?;
        if let Reference::Tag(tag) = reference {
            store.tag_set(repo, tag, d)?;
        }
        Ok(())
    }

    pub async fn manifest_get(
        &self,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<(Digest, StoredManifest)> {
        let (store, repo, reference) = (self.store.clone(), repo.clone(), reference.clone());
        blocking(move || {
            let digest = match reference {
                Reference::Digest(d) => d,
                Reference::Tag(t) => store
                    .tag_get(&repo, &t)?
                    .ok_or(RegistryError::ManifestUnknown)?,
            };
            let m = store
                .manifest_get(&repo, &digest)?
                .ok_or(RegistryError::ManifestUnknown)?;
            Ok((digest, m))
        })
        .await
    }

    /// Deletes a tag, or a manifest (with its tags) by digest.
    pub async fn manifest_delete(&self, repo: &RepoName, reference: &Reference) -> Result<()> {
        let (store, repo, reference) = (self.store.clone(), repo.clone(), reference.clone());
        blocking(move || {
            let existed = match reference {
                Reference::Tag(t) => store.tag_delete(&repo, &t)?,
                Reference::Digest(d) => {
                    let subject = store
                        .manifest_get(&repo, &d)?
                        .and_then(|m| manifest::parse(Some(&m.media_type), &m.content).ok())
                        .and_then(|p| p.subject);
                    store.manifest_delete(&repo, &d, subject.as_ref())?
                }
            };
            if existed {
                Ok(())
            } else {
                Err(RegistryError::ManifestUnknown)
            }
        })
        .await
    }

    // ---- listings ----

    pub async fn tags(
        &self,
        repo: &RepoName,
        n: Option<usize>,
        last: Option<String>,
    ) -> Result<Page> {
        let (store, repo) = (self.store.clone(), repo.clone());
        blocking(move || {
            let mut all = store.tags_list(&repo)?.ok_or(RegistryError::NameUnknown)?;
            all.sort_by(|a, b| tag_order(a, b));
            Ok(paginate_by(all, n, last.as_deref(), tag_order))
        })
        .await
    }

    pub async fn catalog(&self, n: Option<usize>, last: Option<String>) -> Result<Page> {
        let store = self.store.clone();
        blocking(move || Ok(paginate(store.repositories()?, n, last.as_deref()))).await
    }

    /// Descriptors of the manifests in `repo` that refer to `subject`,
    /// optionally only those of `artifact_type`.
    pub async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        artifact_type: Option<String>,
    ) -> Result<Vec<ReferrerDescriptor>> {
        let (store, repo, subject) = (self.store.clone(), repo.clone(), subject.clone());
        blocking(move || {
            let mut out = Vec::new();
            for raw in store.referrers(&repo, &subject)? {
                let Ok(desc) = serde_json::from_slice::<ReferrerDescriptor>(&raw) else {
                    tracing::warn!(repo = %repo, subject = %subject, "unreadable referrer entry skipped");
                    continue;
                };
                if artifact_type.as_ref().is_some_and(|t| desc.artifact_type.as_ref() != Some(t)) {
                    continue;
                }
                if store.manifest_exists(&repo, &desc.digest)? {
                    out.push(desc);
                }
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn pagination() {
        let all = s(&["a", "b", "c", "d"]);
        assert_eq!(paginate(all.clone(), None, None).items, all);
        let p = paginate(all.clone(), Some(2), None);
        assert_eq!(
            p,
            Page {
                items: s(&["a", "b"]),
                next_last: Some("b".into())
            }
        );
        let p = paginate(all.clone(), Some(2), Some("b"));
        assert_eq!(
            p,
            Page {
                items: s(&["c", "d"]),
                next_last: None
            }
        );
        let p = paginate(all.clone(), Some(10), Some("a"));
        assert_eq!(p.items, s(&["b", "c", "d"]));
        assert_eq!(
            paginate(all.clone(), Some(0), None).items,
            Vec::<String>::new()
        );
        assert_eq!(paginate(all, None, Some("zz")).items, Vec::<String>::new());
    }

    /// Requests for unknown upload ids must not grow the session map.
    #[tokio::test]
    async fn unknown_uploads_leave_no_session() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::storage::FsStore::open(dir.path()).unwrap();
        let reg = Registry::new(Arc::new(store), RegistryConfig::default());
        let repo = RepoName::parse("r").unwrap();
        let other = RepoName::parse("other").unwrap();
        let known = reg.upload_start(&repo).await.unwrap();
        let body =
            || futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"x"))]);
        let digest = Digest::sha256(b"x");
        for _ in 0..10 {
            let id = UploadId::new_random();
            assert!(matches!(
                reg.upload_append(&repo, &id, None, None, body()).await,
                Err(RegistryError::UploadUnknown)
            ));
            assert!(matches!(
                reg.upload_finish(&repo, &id, &digest, None, None, body())
                    .await,
                Err(RegistryError::UploadUnknown)
            ));
        }
        assert!(
            reg.upload_cancel(&repo, &UploadId::new_random())
                .await
                .is_err()
        );
        // A session used under the wrong repository.
        assert!(
            reg.upload_append(&other, &known, None, None, body())
                .await
                .is_err()
        );
        assert_eq!(reg.sessions.lock().unwrap().len(), 0);
        // The real session still works, and is cached while in use.
        assert_eq!(
            reg.upload_append(&repo, &known, Some(0), Some(1), body())
                .await
                .unwrap(),
            1
        );
        assert_eq!(reg.sessions.lock().unwrap().len(), 1);
        reg.upload_finish(
            &repo,
            &known,
            &digest,
            None,
            None,
            futures_util::stream::empty::<Result<Bytes, std::io::Error>>(),
        )
        .await
        .unwrap();
        assert_eq!(reg.sessions.lock().unwrap().len(), 0);
    }

    #[test]
    fn references() {
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        assert!(matches!(
            Reference::parse(&format!("sha256:{}", "a".repeat(64))),
            Ok(Reference::Digest(_))
        ));
        assert!(matches!(
            Reference::parse("sha256:zz"),
            Err(RegistryError::DigestInvalid(_))
        ));
        assert!(Reference::parse("../x").is_err());
    }
}
