//! Crash test: SIGKILL the registry while many clients push, restart it on
//! the same data directory, or let a standby on the same directory take
//! over, and check that everything it acknowledged is intact and nothing
//! partial is visible.
//!
//! Each round runs concurrent clients (monolithic and chunked blob uploads,
//! manifest PUTs by tag and by digest, tag overwrites, deletes,
//! re-creations) and kills the server with SIGKILL after a random delay,
//! mid-flight. Every request is recorded in a ledger with the time it was
//! sent and, if it got a 2xx, the time the answer arrived. Then, through
//! the server that serves the directory next, each blob, manifest and tag
//! is checked against what the ledger allows: an acknowledged write may
//! only be missing if a delete could have come after it, whatever is
//! visible must be exactly what some write sent, and the blobs a manifest
//! names are there unless deleted. The store directory is walked too:
//! every file under `blobs/` must hash to its name and `tmp/` and `pins/`
//! must be empty. Upload sessions the clients knew of must be resumable
//! from where the bytes on disk end (or unknown, `BLOB_UPLOAD_UNKNOWN`, if
//! their final PUT was in flight), and finishing them must give the blob.
//! Content that was in flight at the kill, and a sample of what was
//! acknowledged, must push again cleanly.
//!
//! - The first test restarts the killed server on the directory.
//! - The failover tests run two servers on one directory: the clients write
//!   to the active one, the SIGKILL goes to it, the standby takes over
//!   (`/readyz` polled and timed), the killed one comes back as the new
//!   standby, the verification runs through the new active and the clients
//!   go on there. `berth registry serve` (plain HTTP, no auth), and a
//!   shorter run of `berth serve` (HTTPS, tokens, local users: the tokens
//!   the dead active issued work on the new one, and its refresh token
//!   gets new ones there). `BERTH_FAULT_ROUNDS=<n>` sets the number of
//!   takeovers (`berth serve`: a quarter) for a longer run.
//!
//! A manifest DELETE by digest cut short by the kill must not leave tags
//! listed that no longer resolve; the last test widens that window on
//! purpose (it found the defect once: tags used to be removed after the
//! revision).
//!
//! `CRASH_SEED=<u64>` replays a run's random choices (timing still varies).

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::berth::{Berth, header};
use common::rng::Rng;

const ROUNDS: usize = 8;
const CLIENTS: usize = 16;
const REPOS: [&str; 3] = ["crash/alpha", "crash/beta", "crash/gamma/deep"];
/// Tags every client of a repository writes and deletes: their PUTs race.
const SHARED_TAGS: [&str; 3] = ["latest", "stable", "v1"];
/// Kill delay after the clients start, in ms.
const KILL_MIN_MS: u64 = 40;
const KILL_MAX_MS: u64 = 700;
/// Parallel requests while verifying.
const VERIFY_PARALLEL: usize = 8;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

// ---------------------------------------------------------------- content

fn content(seed: u64, len: u64) -> Vec<u8> {
    Rng(seed).bytes(len as usize)
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data).as_ref())
}

/// A blob the test can regenerate from its seed.
#[derive(Clone, Debug)]
struct BlobRef {
    seed: u64,
    len: u64,
    digest: String,
    /// Pushed by every client, never deleted.
    shared: bool,
}

impl BlobRef {
    fn new(seed: u64, len: u64, shared: bool) -> Self {
        BlobRef {
            seed,
            len,
            digest: format!("sha256:{}", sha256_hex(&content(seed, len))),
            shared,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        content(self.seed, self.len)
    }
}

/// Blobs every client pushes into its repository (dedup, concurrent
/// identical uploads): empty, tiny, and one of a MiB.
fn shared_pool() -> &'static [BlobRef] {
    static POOL: std::sync::OnceLock<Vec<BlobRef>> = std::sync::OnceLock::new();
    POOL.get_or_init(|| {
        [(0, 0), (1, 1), (2, 3), (3, 100), (4, 4096), (5, 1 << 20)]
            .iter()
            .map(|&(s, l)| BlobRef::new(0xC0FFEE + s, l, true))
            .collect()
    })
}

/// Sizes from a few bytes to several MiB, mostly small.
fn random_len(rng: &mut Rng) -> u64 {
    match rng.range(0, 100) {
        0..35 => rng.range(8, 256),
        35..70 => rng.range(256, 64 << 10),
        70..92 => rng.range(64 << 10, 1 << 20),
        _ => rng.range(1 << 20, 6 << 20),
    }
}

fn manifest_json(config: &BlobRef, layers: &[BlobRef], nonce: &str) -> Vec<u8> {
    let desc = |b: &BlobRef, t: &str| serde_json::json!({"mediaType": t, "digest": b.digest, "size": b.len});
    let v = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(config, "application/vnd.oci.image.config.v1+json"),
        "layers": layers.iter().map(|l| desc(l, "application/vnd.oci.image.layer.v1.tar+gzip")).collect::<Vec<_>>(),
        "annotations": {"org.example.crash.nonce": nonce},
    });
    serde_json::to_vec(&v).unwrap()
}

// ----------------------------------------------------------------- ledger

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    BlobPut {
        repo: usize,
        digest: String,
    },
    BlobDel {
        repo: usize,
        digest: String,
    },
    ManPut {
        repo: usize,
        digest: String,
        tag: Option<String>,
    },
    ManDel {
        repo: usize,
        digest: String,
    },
    TagDel {
        repo: usize,
        tag: String,
    },
}

/// One write request: sent at `start`, answered 2xx at `end` (ns since t0).
#[derive(Clone, Debug)]
struct Op {
    kind: Kind,
    round: usize,
    /// `None` for requests made by the verifier.
    client: Option<usize>,
    start: u64,
    end: Option<u64>,
}

impl Op {
    fn acked(&self) -> bool {
        self.end.is_some()
    }

    /// Might have taken effect after `t`.
    fn maybe_after(&self, t: u64) -> bool {
        self.end.is_none_or(|e| e > t)
    }

    /// Certainly took effect after `t` (acknowledged, sent after `t`).
    fn surely_after(&self, t: Option<u64>) -> bool {
        self.acked() && t.is_some_and(|t| self.start > t)
    }

    fn describe(&self) -> String {
        format!(
            "{:?} round {} client {:?} sent {:.3}s {}",
            self.kind,
            self.round,
            self.client,
            self.start as f64 / 1e9,
            match self.end {
                Some(e) => format!("ACKED {:.3}s", e as f64 / 1e9),
                None => "not acknowledged".into(),
            }
        )
    }
}

#[derive(Clone, Debug)]
struct Inflight {
    from: u64,
    to: u64,
    /// The finishing PUT (which may commit and remove the session).
    put: bool,
}

/// A chunked upload session a client created (POST acknowledged).
#[derive(Clone, Debug)]
struct Session {
    repo: usize,
    /// `/v2/<name>/blobs/uploads/<id>`
    path: String,
    id: String,
    blob: BlobRef,
    /// Bytes acknowledged by the last PATCH.
    acked: u64,
    inflight: Option<Inflight>,
    done: bool,
    round: usize,
}

struct Ledger {
    t0: Instant,
    ops: Vec<Op>,
    blobs: HashMap<String, BlobRef>,
    manifests: HashMap<String, Vec<u8>>,
    sessions: Vec<Session>,
    errors: Vec<String>,
}

impl Ledger {
    fn now(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }
}

type Shared = Arc<Mutex<Ledger>>;

fn lock(l: &Shared) -> std::sync::MutexGuard<'_, Ledger> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

// ----------------------------------------------------------------- client

/// The client stops (server gone, or an error already recorded).
struct Stop;

struct Ctx {
    http: reqwest::Client,
    base: String,
    ledger: Shared,
    stop: AtomicBool,
    round: usize,
    root: PathBuf,
}

impl Ctx {
    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn error(&self, msg: String) {
        lock(&self.ledger).errors.push(msg);
    }

    fn begin(&self, client: Option<usize>, kind: Kind) -> usize {
        let mut l = lock(&self.ledger);
        let start = l.now();
        l.ops.push(Op {
            kind,
            round: self.round,
            client,
            start,
            end: None,
        });
        l.ops.len() - 1
    }

    fn ack(&self, op: usize) {
        let mut l = lock(&self.ledger);
        let now = l.now();
        l.ops[op].end = Some(now);
    }

    /// Sends a request unless the round is over; a transport error before
    /// the kill is recorded as a failure.
    async fn send(
        &self,
        what: &str,
        rb: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, Stop> {
        match rb.send().await {
            Ok(r) => Ok(r),
            Err(e) => {
                if !self.stopped() {
                    self.error(format!("{what}: transport error before the kill: {e}"));
                }
                Err(Stop)
            }
        }
    }

    /// Checks the status; anything else is recorded as a failure.
    async fn expect(
        &self,
        what: &str,
        resp: reqwest::Response,
        ok: &[u16],
    ) -> Result<reqwest::Response, Stop> {
        if ok.contains(&resp.status().as_u16()) {
            return Ok(resp);
        }
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        self.error(format!("{what}: unexpected {status}: {body}"));
        Err(Stop)
    }
}

#[derive(Clone, Debug)]
struct Man {
    digest: String,
    bytes: Vec<u8>,
    deps: Vec<String>,
}

/// What one client knows; carried over rounds.
struct Client {
    id: usize,
    repo: usize,
    rng: Rng,
    counter: u64,
    /// Blobs acknowledged in the repository and not deleted since.
    live: Vec<BlobRef>,
    deleted: Vec<BlobRef>,
    manifests: Vec<Man>,
    deleted_manifests: Vec<Man>,
    tags: Vec<String>,
}

impl Client {
    fn new(id: usize, seed: u64) -> Self {
        Client {
            id,
            repo: id % REPOS.len(),
            rng: Rng(seed ^ (id as u64 + 1).wrapping_mul(0x1234_5678_9ABC_DEF1)),
            counter: 0,
            live: Vec::new(),
            deleted: Vec::new(),
            manifests: Vec::new(),
            deleted_manifests: Vec::new(),
            tags: Vec::new(),
        }
    }

    fn fresh_blob(&mut self) -> BlobRef {
        let len = random_len(&mut self.rng);
        BlobRef::new(self.rng.next(), len, false)
    }

    fn make_live(&mut self, b: BlobRef) {
        if !self.live.iter().any(|x| x.digest == b.digest) {
            self.live.push(b);
        }
    }

    fn deps_live(&self, m: &Man) -> bool {
        m.deps
            .iter()
            .all(|d| self.live.iter().any(|b| &b.digest == d))
    }

    fn name(&self) -> &'static str {
        REPOS[self.repo]
    }
}

async fn run_client(ctx: Arc<Ctx>, mut c: Client) -> Client {
    while !ctx.stopped() {
        if step(&ctx, &mut c).await.is_err() {
            break;
        }
    }
    c
}

async fn step(ctx: &Ctx, c: &mut Client) -> Result<(), Stop> {
    if c.live.len() < 2 {
        let b = c.fresh_blob();
        return push_monolithic(ctx, c, b).await;
    }
    match c.rng.range(0, 100) {
        0..20 => {
            let b = c.fresh_blob();
            push_monolithic(ctx, c, b).await
        }
        20..26 => {
            let pool = shared_pool();
            let b = pool[c.rng.pick(pool.len())].clone();
            push_monolithic(ctx, c, b).await
        }
        26..30 => {
            let b = c.live[c.rng.pick(c.live.len())].clone();
            push_monolithic(ctx, c, b).await
        }
        30..50 => push_chunked(ctx, c).await,
        50..68 => put_new_manifest(ctx, c).await,
        68..78 => overwrite_tag(ctx, c).await,
        78..84 => delete_blob(ctx, c).await,
        84..90 => delete_manifest(ctx, c).await,
        90..95 => delete_tag(ctx, c).await,
        _ => recreate(ctx, c).await,
    }
}

async fn push_monolithic(ctx: &Ctx, c: &mut Client, b: BlobRef) -> Result<(), Stop> {
    if ctx.stopped() {
        return Err(Stop);
    }
    lock(&ctx.ledger).blobs.insert(b.digest.clone(), b.clone());
    let url = ctx.url(&format!(
        "/v2/{}/blobs/uploads/?digest={}",
        c.name(),
        b.digest
    ));
    let op = ctx.begin(
        Some(c.id),
        Kind::BlobPut {
            repo: c.repo,
            digest: b.digest.clone(),
        },
    );
    let what = format!(
        "client {} monolithic push of {} ({} bytes)",
        c.id, b.digest, b.len
    );
    let resp = ctx.send(&what, ctx.http.post(url).body(b.bytes())).await?;
    let resp = ctx.expect(&what, resp, &[201]).await?;
    ctx.ack(op);
    if header(&resp, "docker-content-digest") != b.digest {
        ctx.error(format!("{what}: wrong Docker-Content-Digest"));
        return Err(Stop);
    }
    c.make_live(b);
    Ok(())
}

/// POST, a few PATCHes, PUT; now and then abandoned midway so that a
/// session is left for the next restart to resume.
async fn push_chunked(ctx: &Ctx, c: &mut Client) -> Result<(), Stop> {
    let b = c.fresh_blob();
    let data = b.bytes();
    let abandon = c.rng.chance(12);
    let pieces = c.rng.range(1, 6).min(b.len.max(1));
    let mut cuts: BTreeSet<u64> = (1..pieces).map(|_| c.rng.range(1, b.len.max(2))).collect();
    cuts.insert(b.len);
    // The last piece goes with the PUT half of the time.
    let last_in_put = c.rng.chance(50);
    if ctx.stopped() {
        return Err(Stop);
    }
    lock(&ctx.ledger).blobs.insert(b.digest.clone(), b.clone());
    let what = format!(
        "client {} chunked push of {} ({} bytes)",
        c.id, b.digest, b.len
    );
    let resp = ctx
        .send(
            &what,
            ctx.http
                .post(ctx.url(&format!("/v2/{}/blobs/uploads/", c.name()))),
        )
        .await?;
    let resp = ctx.expect(&what, resp, &[202]).await?;
    let path = header(&resp, "location");
    let id = header(&resp, "docker-upload-uuid");
    if !path.starts_with("/v2/") || !path.ends_with(&id) || id.is_empty() {
        ctx.error(format!("{what}: bad Location {path:?} / upload id {id:?}"));
        return Err(Stop);
    }
    let sess = {
        let mut l = lock(&ctx.ledger);
        l.sessions.push(Session {
            repo: c.repo,
            path: path.clone(),
            id,
            blob: b.clone(),
            acked: 0,
            inflight: None,
            done: false,
            round: ctx.round,
        });
        l.sessions.len() - 1
    };
    let mut at = 0u64;
    let cuts: Vec<u64> = cuts.into_iter().collect();
    for (i, &end) in cuts.iter().enumerate() {
        let last = i + 1 == cuts.len();
        if last && last_in_put {
            break;
        }
        if ctx.stopped() {
            return Err(Stop);
        }
        if end == at {
            continue;
        }
        lock(&ctx.ledger).sessions[sess].inflight = Some(Inflight {
            from: at,
            to: end,
            put: false,
        });
        let rb = ctx
            .http
            .patch(ctx.url(&path))
            .header("content-range", format!("{}-{}", at, end - 1))
            .header("content-type", "application/octet-stream")
            .body(data[at as usize..end as usize].to_vec());
        let resp = ctx.send(&what, rb).await?;
        let resp = ctx.expect(&what, resp, &[202]).await?;
        let range = header(&resp, "range");
        if range != format!("0-{}", end - 1) {
            ctx.error(format!(
                "{what}: PATCH {at}-{} answered Range {range:?}",
                end - 1
            ));
            return Err(Stop);
        }
        at = end;
        let mut l = lock(&ctx.ledger);
        l.sessions[sess].acked = at;
        l.sessions[sess].inflight = None;
        drop(l);
        if abandon && !last {
            // Left for the restart to find; the client forgets it.
            return Ok(());
        }
    }
    if ctx.stopped() {
        return Err(Stop);
    }
    lock(&ctx.ledger).sessions[sess].inflight = Some(Inflight {
        from: at,
        to: b.len,
        put: true,
    });
    let op = ctx.begin(
        Some(c.id),
        Kind::BlobPut {
            repo: c.repo,
            digest: b.digest.clone(),
        },
    );
    let mut rb = ctx
        .http
        .put(ctx.url(&format!("{path}?digest={}", b.digest)));
    if at < b.len {
        rb = rb
            .header("content-range", format!("{}-{}", at, b.len - 1))
            .header("content-type", "application/octet-stream")
            .body(data[at as usize..].to_vec());
    }
    let resp = ctx.send(&what, rb).await?;
    ctx.expect(&what, resp, &[201]).await?;
    ctx.ack(op);
    let mut l = lock(&ctx.ledger);
    l.sessions[sess].done = true;
    l.sessions[sess].inflight = None;
    drop(l);
    c.make_live(b);
    Ok(())
}

async fn put_manifest(ctx: &Ctx, c: &mut Client, m: &Man, tag: Option<String>) -> Result<(), Stop> {
    if ctx.stopped() {
        return Err(Stop);
    }
    lock(&ctx.ledger)
        .manifests
        .insert(m.digest.clone(), m.bytes.clone());
    let reference = tag.clone().unwrap_or_else(|| m.digest.clone());
    let what = format!("client {} manifest PUT {} as {reference}", c.id, m.digest);
    let op = ctx.begin(
        Some(c.id),
        Kind::ManPut {
            repo: c.repo,
            digest: m.digest.clone(),
            tag,
        },
    );
    let rb = ctx
        .http
        .put(ctx.url(&format!("/v2/{}/manifests/{reference}", c.name())))
        .header("content-type", OCI_MANIFEST)
        .body(m.bytes.clone());
    let resp = ctx.send(&what, rb).await?;
    if resp.status() != 201 {
        // Evidence: what the server and the disk say about each blob.
        let mut ev = String::new();
        for d in &m.deps {
            let r = ctx
                .http
                .head(ctx.url(&format!("/v2/{}/blobs/{d}", c.name())))
                .send()
                .await
                .map(|r| r.status().as_u16());
            let hex = &d[7..];
            let link = ctx
                .root
                .join(format!("repositories/{}/_layers/sha256/{hex}", c.name()));
            let file = ctx.root.join(format!("blobs/sha256/{}/{hex}", &hex[..2]));
            ev += &format!(
                "\n      dep {d}: HEAD {r:?}, link exists {}, blob file exists {}",
                link.exists(),
                file.exists()
            );
        }
        ctx.error(format!(
            "{what}: unexpected {}: {}{ev}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        ));
        return Err(Stop);
    }
    ctx.ack(op);
    if header(&resp, "docker-content-digest") != m.digest {
        ctx.error(format!("{what}: wrong Docker-Content-Digest"));
        return Err(Stop);
    }
    Ok(())
}

fn choose_tag(c: &mut Client, new: bool) -> Option<String> {
    match c.rng.range(0, 100) {
        0..45 => Some(SHARED_TAGS[c.rng.pick(SHARED_TAGS.len())].to_owned()),
        45..65 if !new && !c.tags.is_empty() => Some(c.tags[c.rng.pick(c.tags.len())].clone()),
        45..85 => {
            c.counter += 1;
            let t = format!("c{}-{}", c.id, c.counter);
            c.tags.push(t.clone());
            Some(t)
        }
        _ => None,
    }
}

async fn put_new_manifest(ctx: &Ctx, c: &mut Client) -> Result<(), Stop> {
    let config = c.live[c.rng.pick(c.live.len())].clone();
    let layers: Vec<BlobRef> = (0..c.rng.range(1, 4))
        .map(|_| c.live[c.rng.pick(c.live.len())].clone())
        .collect();
    c.counter += 1;
    let nonce = format!("client-{}-{}-{}", c.id, c.counter, c.rng.next());
    let bytes = manifest_json(&config, &layers, &nonce);
    let m = Man {
        digest: format!("sha256:{}", sha256_hex(&bytes)),
        bytes,
        deps: std::iter::once(&config)
            .chain(&layers)
            .map(|b| b.digest.clone())
            .collect(),
    };
    let tag = choose_tag(c, true);
    put_manifest(ctx, c, &m, tag).await?;
    c.manifests.push(m);
    Ok(())
}

async fn overwrite_tag(ctx: &Ctx, c: &mut Client) -> Result<(), Stop> {
    if c.manifests.is_empty() {
        return put_new_manifest(ctx, c).await;
    }
    // Only manifests whose blobs are all still linked can be pushed again.
    let ok: Vec<usize> = (0..c.manifests.len())
        .filter(|&i| c.deps_live(&c.manifests[i]))
        .collect();
    if ok.is_empty() {
        return put_new_manifest(ctx, c).await;
    }
    let m = c.manifests[ok[c.rng.pick(ok.len())]].clone();
    let tag = choose_tag(c, false);
    put_manifest(ctx, c, &m, tag).await
}

async fn delete(ctx: &Ctx, c: &Client, kind: Kind, path: String, ok: &[u16]) -> Result<(), Stop> {
    if ctx.stopped() {
        return Err(Stop);
    }
    let what = format!("client {} DELETE {path}", c.id);
    let op = ctx.begin(Some(c.id), kind);
    let resp = ctx.send(&what, ctx.http.delete(ctx.url(&path))).await?;
    ctx.expect(&what, resp, ok).await?;
    ctx.ack(op);
    Ok(())
}

async fn delete_blob(ctx: &Ctx, c: &mut Client) -> Result<(), Stop> {
    let own: Vec<usize> = (0..c.live.len()).filter(|&i| !c.live[i].shared).collect();
    if own.len() < 3 {
        return push_chunked(ctx, c).await;
    }
    let b = c.live.remove(own[c.rng.pick(own.len())]);
    c.deleted.push(b.clone());
    let kind = Kind::BlobDel {
        repo: c.repo,
        digest: b.digest.clone(),
    };
    delete(
        ctx,
        c,
        kind,
        format!("/v2/{}/blobs/{}", c.name(), b.digest),
        &[202],
    )
    .await
}

async fn delete_manifest(ctx: &Ctx, c: &mut Client) -> Result<(), Stop> {
    if c.manifests.len() < 2 {
        return put_new_manifest(ctx, c).await;
    }
    let m = c.manifests.remove(c.rng.pick(c.manifests.len()));
    c.deleted_manifests.push(m.clone());
    let kind = Kind::ManDel {
        repo: c.repo,
        digest: m.digest.clone(),
    };
    let path = format!("/v2/{}/manifests/{}", c.name(), m.digest);
    delete(ctx, c, kind, path, &[202]).await
}

async fn delete_tag(ctx: &Ctx, c: &mut Client) -> Result<(), Stop> {
    let tag = if c.tags.is_empty() || c.rng.chance(50) {
        SHARED_TAGS[c.rng.pick(SHARED_TAGS.len())].to_owned()
    } else {
        c.tags[c.rng.pick(c.tags.len())].clone()
    };
    let kind = Kind::TagDel {
        repo: c.repo,
        tag: tag.clone(),
    };
    // A tag may already be gone (deleted by another client, or with its
    // manifest): 404 is an answer too, and says the tag is absent.
    let path = format!("/v2/{}/manifests/{tag}", c.name());
    delete(ctx, c, kind, path, &[202, 404]).await
}

async fn recreate(ctx: &Ctx, c: &mut Client) -> Result<(), Stop> {
    if !c.deleted_manifests.is_empty() && c.rng.chance(50) {
        let i = c.rng.pick(c.deleted_manifests.len());
        let m = c.deleted_manifests[i].clone();
        if c.deps_live(&m) {
            c.deleted_manifests.remove(i);
            let tag = choose_tag(c, false);
            put_manifest(ctx, c, &m, tag).await?;
            c.manifests.push(m);
            return Ok(());
        }
    }
    if c.deleted.is_empty() {
        return push_chunked(ctx, c).await;
    }
    let b = c.deleted.remove(c.rng.pick(c.deleted.len()));
    push_monolithic(ctx, c, b).await
}

// ------------------------------------------------------------ verification

#[derive(Default, Debug)]
struct Stats {
    blobs_present: usize,
    blobs_absent: usize,
    manifests_present: usize,
    manifests_absent: usize,
    tags_present: usize,
    tags_absent: usize,
    acked_checked: usize,
    files_walked: usize,
    bytes_walked: u64,
    sessions_resumed: usize,
    sessions_unknown: usize,
    repushed: usize,
    dangling_tags: usize,
    /// Blobs named by the manifests present, checked.
    references_checked: usize,
}

/// The config and layer digests an image manifest names.
fn references(manifest: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(manifest).unwrap_or_default();
    std::iter::once(&v["config"])
        .chain(v["layers"].as_array().into_iter().flatten())
        .filter_map(|d| d["digest"].as_str().map(str::to_owned))
        .collect()
}

/// Whether a register (blob link, manifest revision) may be present: some
/// create is not certainly followed by a delete.
fn present_allowed(creates: &[&Op], deletes: &[&Op]) -> bool {
    creates
        .iter()
        .any(|c| !deletes.iter().any(|d| d.surely_after(c.end)))
}

/// An acknowledged create that no delete can explain the absence of.
fn absence_loss<'a>(creates: &[&'a Op], deletes: &[&Op]) -> Option<&'a Op> {
    creates
        .iter()
        .copied()
        .find(|c| c.acked() && !deletes.iter().any(|d| d.maybe_after(c.start)))
}

fn history(ops: &[&Op]) -> String {
    ops.iter()
        .map(|o| format!("\n      {}", o.describe()))
        .collect()
}

fn log(msg: &str) {
    // Straight to stderr, past the test harness's capture: the evidence
    // shows in every run's output.
    let _ = writeln!(std::io::stderr(), "{msg}");
}

struct Fetched {
    status: u16,
    body: Vec<u8>,
    digest_header: String,
}

/// GETs every path, `VERIFY_PARALLEL` at a time.
async fn fetch_all(
    http: &reqwest::Client,
    base: &str,
    paths: Vec<String>,
) -> HashMap<String, Fetched> {
    let sem = Arc::new(tokio::sync::Semaphore::new(VERIFY_PARALLEL));
    let mut set = tokio::task::JoinSet::new();
    for path in paths {
        let (http, url, sem) = (http.clone(), format!("{base}{path}"), sem.clone());
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.unwrap();
            let resp = http
                .get(&url)
                .header("accept", OCI_MANIFEST)
                .send()
                .await
                .unwrap_or_else(|e| panic!("GET {url} after the kill: {e}"));
            let status = resp.status().as_u16();
            let digest_header = header(&resp, "docker-content-digest");
            let body = resp
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("GET {url} after the kill, body: {e}"))
                .to_vec();
            (
                path,
                Fetched {
                    status,
                    body,
                    digest_header,
                },
            )
        });
    }
    let mut out = HashMap::new();
    while let Some(r) = set.join_next().await {
        let (path, f) = r.unwrap();
        out.insert(path, f);
    }
    out
}

/// Every file under `blobs/` hashes to its name; `tmp/` and `pins/` are
/// empty (the server that opened the store cleared what the killed one
/// left, and nothing is in flight); tag and revision files are whole.
fn walk_store(root: &Path, stats: &mut Stats, problems: &mut Vec<String>) {
    for scratch in ["tmp", "pins"] {
        let left: Vec<_> = std::fs::read_dir(root.join(scratch))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        if !left.is_empty() {
            problems.push(format!("{scratch}/ is not empty after the kill: {left:?}"));
        }
    }
    fn files(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                files(&e.path(), out);
            } else {
                out.push(e.path());
            }
        }
    }
    let mut blobs = Vec::new();
    files(&root.join("blobs"), &mut blobs);
    for path in blobs {
        let rel = path.strip_prefix(root.join("blobs")).unwrap();
        let parts: Vec<&str> = rel.iter().map(|p| p.to_str().unwrap()).collect();
        let data = std::fs::read(&path).unwrap();
        stats.files_walked += 1;
        stats.bytes_walked += data.len() as u64;
        let ok = parts.len() == 3
            && parts[0] == "sha256"
            && parts[2].len() == 64
            && parts[1] == &parts[2][..2]
            && sha256_hex(&data) == parts[2];
        if !ok {
            problems.push(format!(
                "PARTIAL OR FOREIGN BLOB FILE blobs/{} ({} bytes, sha256 {})",
                rel.display(),
                data.len(),
                sha256_hex(&data)
            ));
        }
    }
    let mut repo_files = Vec::new();
    files(&root.join("repositories"), &mut repo_files);
    for path in repo_files {
        let s = path.to_string_lossy();
        let data = std::fs::read(&path).unwrap();
        if s.contains("/_manifests/tags/") {
            let ok = data.len() == 71
                && data.starts_with(b"sha256:")
                && data[7..].iter().all(|b| b.is_ascii_hexdigit());
            if !ok {
                problems.push(format!(
                    "partial tag file {s}: {:?}",
                    String::from_utf8_lossy(&data)
                ));
            }
        } else if s.contains("/_manifests/revisions/") && data != OCI_MANIFEST.as_bytes() {
            problems.push(format!(
                "partial revision file {s}: {:?}",
                String::from_utf8_lossy(&data)
            ));
        }
    }
}

/// Checks the store and every blob, manifest and tag the ledger knows
/// against what it allows. Returns problems (empty: no loss).
async fn verify(ctx: &Ctx, root: &Path, stats: &mut Stats) -> Vec<String> {
    let mut problems = Vec::new();
    walk_store(root, stats, &mut problems);
    let (ops, blobs, manifests) = {
        let l = lock(&ctx.ledger);
        (l.ops.clone(), l.blobs.clone(), l.manifests.clone())
    };
    stats.acked_checked = ops.iter().filter(|o| o.acked()).count();

    // Registers: (repo, digest) -> (creates, deletes).
    type Reg<'a> = BTreeMap<(usize, String), (Vec<&'a Op>, Vec<&'a Op>)>;
    let mut blob_reg: Reg = BTreeMap::new();
    let mut man_reg: Reg = BTreeMap::new();
    for op in &ops {
        match &op.kind {
            Kind::BlobPut { repo, digest } => blob_reg
                .entry((*repo, digest.clone()))
                .or_default()
                .0
                .push(op),
            Kind::BlobDel { repo, digest } => blob_reg
                .entry((*repo, digest.clone()))
                .or_default()
                .1
                .push(op),
            Kind::ManPut { repo, digest, .. } => man_reg
                .entry((*repo, digest.clone()))
                .or_default()
                .0
                .push(op),
            Kind::ManDel { repo, digest } => man_reg
                .entry((*repo, digest.clone()))
                .or_default()
                .1
                .push(op),
            Kind::TagDel { .. } => {}
        }
    }

    let blob_deleted: BTreeSet<(usize, String)> = blob_reg
        .iter()
        .filter(|(_, (_, deletes))| !deletes.is_empty())
        .map(|(k, _)| k.clone())
        .collect();

    // Blobs: those pushed, and those the manifests name.
    let mut paths: BTreeSet<String> = blob_reg
        .keys()
        .map(|(r, d)| format!("/v2/{}/blobs/{d}", REPOS[*r]))
        .collect();
    for (r, d) in man_reg.keys() {
        for dep in references(&manifests[d]) {
            paths.insert(format!("/v2/{}/blobs/{dep}", REPOS[*r]));
        }
    }
    let blob_got = fetch_all(&ctx.http, &ctx.base, paths.into_iter().collect()).await;
    for ((r, d), (creates, deletes)) in &blob_reg {
        let f = &blob_got[&format!("/v2/{}/blobs/{d}", REPOS[*r])];
        let all: Vec<&Op> = creates.iter().chain(deletes).copied().collect();
        let want = &blobs[d];
        match f.status {
            200 => {
                stats.blobs_present += 1;
                if f.body.len() as u64 != want.len
                    || format!("sha256:{}", sha256_hex(&f.body)) != *d
                {
                    problems.push(format!(
                        "blob {d} in {} served {} bytes with sha256 {} (want {} bytes){}",
                        REPOS[*r],
                        f.body.len(),
                        sha256_hex(&f.body),
                        want.len,
                        history(&all)
                    ));
                } else if !present_allowed(creates, deletes) {
                    problems.push(format!(
                        "blob {d} in {} is back after an acknowledged delete{}",
                        REPOS[*r],
                        history(&all)
                    ));
                }
            }
            404 => {
                stats.blobs_absent += 1;
                if let Some(c) = absence_loss(creates, deletes) {
                    problems.push(format!(
                        "LOST BLOB {d} ({} bytes) in {}: acknowledged by {}{}",
                        want.len,
                        REPOS[*r],
                        c.describe(),
                        history(&all)
                    ));
                }
            }
            s => problems.push(format!(
                "blob {d} in {}: GET answered {s}{}",
                REPOS[*r],
                history(&all)
            )),
        }
    }

    // Manifests by digest.
    let paths = man_reg
        .keys()
        .map(|(r, d)| format!("/v2/{}/manifests/{d}", REPOS[*r]))
        .collect();
    let got = fetch_all(&ctx.http, &ctx.base, paths).await;
    for ((r, d), (creates, deletes)) in &man_reg {
        let f = &got[&format!("/v2/{}/manifests/{d}", REPOS[*r])];
        let all: Vec<&Op> = creates.iter().chain(deletes).copied().collect();
        match f.status {
            200 => {
                stats.manifests_present += 1;
                // What it references is there, whole, unless deleted.
                for dep in references(&manifests[d]) {
                    stats.references_checked += 1;
                    let b = &blob_got[&format!("/v2/{}/blobs/{dep}", REPOS[*r])];
                    let deleted = blob_deleted.contains(&(*r, dep.clone()));
                    if b.status == 200 && format!("sha256:{}", sha256_hex(&b.body)) != dep {
                        problems.push(format!(
                            "manifest {d} in {}: its blob {dep} serves other bytes",
                            REPOS[*r]
                        ));
                    } else if b.status != 200 && !deleted {
                        problems.push(format!(
                            "MANIFEST {d} in {} REFERENCES A MISSING BLOB {dep} (GET {}), never deleted{}",
                            REPOS[*r],
                            b.status,
                            history(&all)
                        ));
                    }
                }
                if f.body != manifests[d] {
                    problems.push(format!(
                        "manifest {d} in {} served other bytes: {:?}{}",
                        REPOS[*r],
                        String::from_utf8_lossy(&f.body),
                        history(&all)
                    ));
                } else if !present_allowed(creates, deletes) {
                    problems.push(format!(
                        "manifest {d} in {} is back after an acknowledged delete{}",
                        REPOS[*r],
                        history(&all)
                    ));
                }
            }
            404 => {
                stats.manifests_absent += 1;
                if let Some(c) = absence_loss(creates, deletes) {
                    problems.push(format!(
                        "LOST MANIFEST {d} in {}: acknowledged by {}{}",
                        REPOS[*r],
                        c.describe(),
                        history(&all)
                    ));
                }
            }
            s => problems.push(format!(
                "manifest {d} in {}: GET answered {s}{}",
                REPOS[*r],
                history(&all)
            )),
        }
    }

    // Tags: every tag any op touched, plus whatever the listing shows.
    let mut listed: BTreeSet<(usize, String)> = BTreeSet::new();
    for (r, name) in REPOS.iter().enumerate() {
        let resp = ctx
            .http
            .get(format!("{}/v2/{name}/tags/list", ctx.base))
            .send()
            .await
            .unwrap();
        match resp.status().as_u16() {
            200 => {
                let v: serde_json::Value =
                    serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap();
                for t in v["tags"].as_array().into_iter().flatten() {
                    listed.insert((r, t.as_str().unwrap().to_owned()));
                }
            }
            404 => {}
            s => problems.push(format!("tags/list of {name} answered {s}")),
        }
    }
    let mut tag_ops: BTreeMap<(usize, String), Vec<&Op>> = BTreeMap::new();
    for op in &ops {
        match &op.kind {
            Kind::ManPut {
                repo, tag: Some(t), ..
            }
            | Kind::TagDel { repo, tag: t } => {
                tag_ops.entry((*repo, t.clone())).or_default().push(op)
            }
            _ => {}
        }
    }
    for key in &listed {
        tag_ops.entry(key.clone()).or_default();
    }
    let paths = tag_ops
        .keys()
        .map(|(r, t)| format!("/v2/{}/manifests/{t}", REPOS[*r]))
        .collect();
    let got = fetch_all(&ctx.http, &ctx.base, paths).await;
    for ((r, t), tops) in &tag_ops {
        let f = &got[&format!("/v2/{}/manifests/{t}", REPOS[*r])];
        // Values ever written to the tag, and the manifest deletes of those.
        let value = |o: &Op| match &o.kind {
            Kind::ManPut { digest, .. } => Some(digest.clone()),
            _ => None,
        };
        let values: BTreeSet<String> = tops.iter().filter_map(|o| value(o)).collect();
        let man_dels: Vec<&Op> = ops
            .iter()
            .filter(|o| matches!(&o.kind, Kind::ManDel { repo, digest } if repo == r && values.contains(digest)))
            .collect();
        let all: Vec<&Op> = tops.iter().chain(&man_dels).copied().collect();
        let is_listed = listed.contains(&(*r, t.clone()));
        match f.status {
            200 => {
                stats.tags_present += 1;
                let m = &f.digest_header;
                // Some PUT of m to t not certainly overridden after it.
                let ok = tops.iter().any(|p| {
                    value(p).as_ref() == Some(m)
                        && !all.iter().any(|y| {
                            y.surely_after(p.end)
                                && match &y.kind {
                                    Kind::ManPut { digest, .. } => digest != m,
                                    Kind::TagDel { .. } => true,
                                    Kind::ManDel { digest, .. } => digest == m,
                                    _ => false,
                                }
                        })
                });
                if manifests.get(m) != Some(&f.body)
                    || format!("sha256:{}", sha256_hex(&f.body)) != *m
                {
                    problems.push(format!(
                        "tag {t} in {} resolves to {m} with wrong or unknown bytes{}",
                        REPOS[*r],
                        history(&all)
                    ));
                } else if !ok {
                    problems.push(format!(
                        "tag {t} in {} resolves to {m}, which no acknowledged-latest PUT allows{}",
                        REPOS[*r],
                        history(&all)
                    ));
                }
                if !is_listed {
                    problems.push(format!(
                        "tag {t} in {} resolves but is not listed",
                        REPOS[*r]
                    ));
                }
            }
            404 => {
                stats.tags_absent += 1;
                let lost = tops.iter().find(|p| {
                    let Some(m) = value(p) else { return false };
                    p.acked()
                        && !all.iter().any(|y| {
                            y.maybe_after(p.start)
                                && match &y.kind {
                                    Kind::TagDel { .. } => true,
                                    Kind::ManDel { digest, .. } => {
                                        *digest == m
                                            || tops.iter().any(|q| {
                                                value(q).as_ref() == Some(digest)
                                                    && q.maybe_after(p.start)
                                            })
                                    }
                                    _ => false,
                                }
                        })
                });
                if let Some(p) = lost {
                    problems.push(format!(
                        "LOST TAG {t} in {}: acknowledged by {}{}",
                        REPOS[*r],
                        p.describe(),
                        history(&all)
                    ));
                }
                if is_listed {
                    // Listed but unresolvable: a tag pointing at nothing.
                    stats.dangling_tags += 1;
                    problems.push(format!(
                        "DANGLING TAG {t} in {} is listed but does not resolve{}",
                        REPOS[*r],
                        history(&all)
                    ));
                }
            }
            s => problems.push(format!(
                "tag {t} in {}: GET answered {s}{}",
                REPOS[*r],
                history(&all)
            )),
        }
    }
    problems
}

/// Resumes (and finishes) every upload session a client knew of, or checks
/// that it may be unknown. Runs after [`verify`].
async fn resume_sessions(ctx: &Ctx, root: &Path, stats: &mut Stats, rng: &mut Rng) -> Vec<String> {
    let mut problems = Vec::new();
    let open: Vec<(usize, Session)> = lock(&ctx.ledger)
        .sessions
        .iter()
        .cloned()
        .enumerate()
        .filter(|(_, s)| !s.done)
        .collect();
    for (i, s) in open {
        let what = format!(
            "upload session {} ({} of {} bytes acknowledged, in flight {:?}, round {})",
            s.id, s.acked, s.blob.len, s.inflight, s.round
        );
        lock(&ctx.ledger).sessions[i].done = true;
        let resp = ctx.http.get(ctx.url(&s.path)).send().await.unwrap();
        match resp.status().as_u16() {
            204 => {}
            404 => {
                stats.sessions_unknown += 1;
                let body = resp.text().await.unwrap_or_default();
                if !s.inflight.as_ref().is_some_and(|f| f.put) {
                    problems.push(format!("LOST UPLOAD: {what} is unknown after the kill"));
                } else if !body.contains("\"BLOB_UPLOAD_UNKNOWN\"") {
                    problems.push(format!("{what}: 404 without BLOB_UPLOAD_UNKNOWN: {body}"));
                }
                continue;
            }
            st => {
                problems.push(format!("{what}: status GET answered {st}"));
                continue;
            }
        }
        let range = header(&resp, "range");
        let disk = std::fs::read(root.join("uploads").join(&s.id).join("data")).unwrap_or_default();
        let size = disk.len() as u64;
        let want_range = format!("0-{}", size.saturating_sub(1));
        let max = match &s.inflight {
            Some(f) if f.from == s.acked => f.to,
            _ => s.acked,
        };
        let data = s.blob.bytes();
        if range != want_range {
            problems.push(format!("{what}: Range {range:?} but {size} bytes on disk"));
            continue;
        }
        if size < s.acked || size > max {
            problems.push(format!(
                "{what}: {size} bytes on disk, expected {}..={max}",
                s.acked
            ));
            continue;
        }
        if disk[..] != data[..size as usize] {
            problems.push(format!("{what}: bytes on disk are not the content sent"));
            continue;
        }
        // Finish from where it stands, by PATCH then PUT or by PUT alone.
        let rest = data[size as usize..].to_vec();
        if !rest.is_empty() && rng.chance(50) {
            let resp = ctx
                .http
                .patch(ctx.url(&s.path))
                .header("content-range", format!("{}-{}", size, s.blob.len - 1))
                .body(rest)
                .send()
                .await
                .unwrap();
            if resp.status() != 202 {
                problems.push(format!("{what}: resuming PATCH answered {}", resp.status()));
                continue;
            }
        } else if !rest.is_empty() {
            let op = ctx.begin(
                None,
                Kind::BlobPut {
                    repo: s.repo,
                    digest: s.blob.digest.clone(),
                },
            );
            let resp = ctx
                .http
                .put(ctx.url(&format!("{}?digest={}", s.path, s.blob.digest)))
                .header("content-range", format!("{}-{}", size, s.blob.len - 1))
                .body(rest)
                .send()
                .await
                .unwrap();
            if resp.status() != 201 {
                problems.push(format!("{what}: resuming PUT answered {}", resp.status()));
                continue;
            }
            ctx.ack(op);
            stats.sessions_resumed += 1;
            problems.extend(check_blob(ctx, s.repo, &s.blob).await);
            continue;
        }
        let op = ctx.begin(
            None,
            Kind::BlobPut {
                repo: s.repo,
                digest: s.blob.digest.clone(),
            },
        );
        let resp = ctx
            .http
            .put(ctx.url(&format!("{}?digest={}", s.path, s.blob.digest)))
            .send()
            .await
            .unwrap();
        if resp.status() != 201 {
            problems.push(format!("{what}: finishing PUT answered {}", resp.status()));
            continue;
        }
        ctx.ack(op);
        stats.sessions_resumed += 1;
        problems.extend(check_blob(ctx, s.repo, &s.blob).await);
    }
    problems
}

async fn check_blob(ctx: &Ctx, repo: usize, b: &BlobRef) -> Option<String> {
    let resp = ctx
        .http
        .get(ctx.url(&format!("/v2/{}/blobs/{}", REPOS[repo], b.digest)))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.bytes().await.unwrap();
    (status != 200
        || body.len() as u64 != b.len
        || format!("sha256:{}", sha256_hex(&body)) != b.digest)
        .then(|| {
            format!(
                "blob {} in {} after push: {status}, {} bytes (want {})",
                b.digest,
                REPOS[repo],
                body.len(),
                b.len
            )
        })
}

/// Pushes again what was in flight at the kill (and a sample of older
/// content): it must go through and read back whole.
async fn repush(ctx: &Ctx, round: usize, stats: &mut Stats, rng: &mut Rng) -> Vec<String> {
    let mut problems = Vec::new();
    let (ops, blobs, manifests) = {
        let l = lock(&ctx.ledger);
        (l.ops.clone(), l.blobs.clone(), l.manifests.clone())
    };
    let mut todo: Vec<Kind> = ops
        .iter()
        .filter(|o| o.round == round && o.client.is_some() && !o.acked())
        .map(|o| o.kind.clone())
        .collect();
    let acked_blobs: Vec<&Op> = ops
        .iter()
        .filter(|o| o.acked() && matches!(o.kind, Kind::BlobPut { .. }))
        .collect();
    for _ in 0..4.min(acked_blobs.len()) {
        todo.push(acked_blobs[rng.pick(acked_blobs.len())].kind.clone());
    }
    // Acknowledged manifests whose blobs no one ever deleted (else the PUT
    // would rightly answer MANIFEST_BLOB_UNKNOWN).
    let blob_deleted: BTreeSet<(usize, &String)> = ops
        .iter()
        .filter_map(|o| match &o.kind {
            Kind::BlobDel { repo, digest } => Some((*repo, digest)),
            _ => None,
        })
        .collect();
    let acked_manifests: Vec<&Op> = ops
        .iter()
        .filter(|o| match &o.kind {
            Kind::ManPut { repo, digest, .. } if o.acked() => references(&manifests[digest])
                .iter()
                .all(|dep| !blob_deleted.contains(&(*repo, dep))),
            _ => false,
        })
        .collect();
    for _ in 0..2.min(acked_manifests.len()) {
        todo.push(
            acked_manifests[rng.pick(acked_manifests.len())]
                .kind
                .clone(),
        );
    }
    for kind in todo {
        match &kind {
            Kind::BlobPut { repo, digest } => {
                let b = &blobs[digest];
                let op = ctx.begin(None, kind.clone());
                let resp = ctx
                    .http
                    .post(ctx.url(&format!(
                        "/v2/{}/blobs/uploads/?digest={digest}",
                        REPOS[*repo]
                    )))
                    .body(b.bytes())
                    .send()
                    .await
                    .unwrap();
                if resp.status() != 201 {
                    problems.push(format!(
                        "re-push of {digest} ({} bytes) to {} answered {}: {}",
                        b.len,
                        REPOS[*repo],
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    ));
                    continue;
                }
                ctx.ack(op);
                stats.repushed += 1;
                problems.extend(check_blob(ctx, *repo, b).await);
            }
            Kind::ManPut { repo, digest, .. } => {
                let op = ctx.begin(
                    None,
                    Kind::ManPut {
                        repo: *repo,
                        digest: digest.clone(),
                        tag: None,
                    },
                );
                let url = ctx.url(&format!("/v2/{}/manifests/{digest}", REPOS[*repo]));
                let resp = ctx
                    .http
                    .put(&url)
                    .header("content-type", OCI_MANIFEST)
                    .body(manifests[digest].clone())
                    .send()
                    .await
                    .unwrap();
                if resp.status() != 201 {
                    problems.push(format!(
                        "re-push of manifest {digest} to {} answered {}: {}",
                        REPOS[*repo],
                        resp.status(),
                        resp.text().await.unwrap_or_default()
                    ));
                    continue;
                }
                ctx.ack(op);
                stats.repushed += 1;
                let resp = ctx
                    .http
                    .get(&url)
                    .header("accept", OCI_MANIFEST)
                    .send()
                    .await
                    .unwrap();
                if resp.status() != 200 || resp.bytes().await.unwrap() != manifests[digest] {
                    problems.push(format!(
                        "manifest {digest} does not read back after re-push"
                    ));
                }
            }
            _ => {}
        }
    }
    problems
}

/// The ledger's history of every digest `text` names.
fn related(l: &Ledger, text: &str) -> String {
    let mut out = String::new();
    let mut seen = BTreeSet::new();
    for (i, _) in text.match_indices("sha256:") {
        let Some(d) = text.get(i..i + 71) else {
            continue;
        };
        if !seen.insert(d.to_owned()) {
            continue;
        }
        out += &format!(
            "\n  {d} ({} ops, {} manifests):",
            l.ops.len(),
            l.manifests.len()
        );
        for op in &l.ops {
            let (Kind::BlobPut { digest, .. }
            | Kind::BlobDel { digest, .. }
            | Kind::ManPut { digest, .. }
            | Kind::ManDel { digest, .. }) = &op.kind
            else {
                continue;
            };
            let refers = l
                .manifests
                .get(digest)
                .is_some_and(|m| String::from_utf8_lossy(m).contains(d));
            if digest == d || refers {
                out += &format!("\n      {}", op.describe());
            }
        }
        for s in l.sessions.iter().filter(|s| s.blob.digest == d) {
            out += &format!("\n      {s:?}");
        }
    }
    out
}

type Log = Arc<Mutex<Vec<String>>>;

fn fail(round: usize, what: &str, problems: &[String], logs: &[(&str, &Log)]) -> ! {
    let mut tails = String::new();
    for (name, log) in logs {
        let lines = log.lock().unwrap_or_else(|p| p.into_inner());
        tails += &format!("\n{name} server log (last lines, newest first):");
        for l in lines.iter().rev().take(30) {
            tails += &format!("\n    {l}");
        }
    }
    panic!(
        "round {round}, {what}: {} problem(s):\n  - {}{tails}",
        problems.len(),
        problems.join("\n  - "),
    );
}

fn seed(what: &str) -> u64 {
    let seed: u64 = std::env::var("CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    log(&format!(
        "{what}: seed {seed} (CRASH_SEED={seed} to replay the choices)"
    ));
    seed
}

// ----------------------------------------------------------------- rounds

/// The clients, their ledger and the running totals, carried from round to
/// round: across restarts of one server, or across takeovers.
struct Workload {
    root: PathBuf,
    ledger: Shared,
    rng: Rng,
    clients: Vec<Client>,
    totals: Totals,
}

/// What the checks after the kills found, added up.
#[derive(Default, Clone, Copy)]
struct Totals {
    /// Rounds verified after their kill.
    rounds: usize,
    acked: usize,
    dangling: usize,
    resumed: usize,
    unknown: usize,
    repushed: usize,
    references: usize,
}

impl std::ops::AddAssign for Totals {
    fn add_assign(&mut self, o: Totals) {
        self.rounds += o.rounds;
        self.acked += o.acked;
        self.dangling += o.dangling;
        self.resumed += o.resumed;
        self.unknown += o.unknown;
        self.repushed += o.repushed;
        self.references += o.references;
    }
}

impl Totals {
    /// `N rounds, M acknowledged writes, all verified after every <after>, losses 0, ...`
    fn summary(&self, after: &str) -> String {
        format!(
            "{} rounds, {} acknowledged writes, all verified after every {after}, losses 0, dangling tags {}, \
             upload sessions resumed {} / cleanly unknown {}, re-pushed {}, manifest blob references checked {}",
            self.rounds,
            self.acked,
            self.dangling,
            self.resumed,
            self.unknown,
            self.repushed,
            self.references
        )
    }
}

impl Workload {
    fn new(seed: u64, root: &Path) -> Self {
        Workload {
            root: root.to_owned(),
            ledger: Arc::new(Mutex::new(Ledger {
                t0: Instant::now(),
                ops: Vec::new(),
                blobs: HashMap::new(),
                manifests: HashMap::new(),
                sessions: Vec::new(),
                errors: Vec::new(),
            })),
            rng: Rng(seed),
            clients: (0..CLIENTS).map(|i| Client::new(i, seed)).collect(),
            totals: Totals::default(),
        }
    }

    /// Requests of round `round` go to `base` through `http`.
    fn ctx(&self, round: usize, base: String, http: reqwest::Client) -> Arc<Ctx> {
        Arc::new(Ctx {
            http,
            base,
            ledger: self.ledger.clone(),
            stop: AtomicBool::new(false),
            round,
            root: self.root.clone(),
        })
    }

    /// Runs every client against `ctx` for a random time, then raises the
    /// stop flag and calls `kill`, which takes the server (process `pid`)
    /// down mid-flight; waits for the clients and checks that none of
    /// their requests failed before. Returns the delay (ms) and what `kill`
    /// returned.
    async fn run<T>(&mut self, ctx: &Arc<Ctx>, pid: u32, kill: impl FnOnce() -> T) -> (u64, T) {
        let mut tasks = Vec::new();
        for c in self.clients.drain(..) {
            tasks.push(tokio::spawn(run_client(ctx.clone(), c)));
        }
        let delay = self.rng.range(KILL_MIN_MS, KILL_MAX_MS + 1);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        ctx.stop.store(true, Ordering::SeqCst);
        let killed = kill();
        for t in tasks {
            self.clients.push(t.await.unwrap());
        }
        let errors = std::mem::take(&mut lock(&ctx.ledger).errors);
        assert!(
            errors.is_empty(),
            "round {}: requests failed before the kill (pid {pid}):\n  - {}\nledger of the digests named:{}",
            ctx.round,
            errors.join("\n  - "),
            related(&lock(&ctx.ledger), &errors.join(" "))
        );
        (delay, killed)
    }

    /// Through `ctx` (the restarted server, or the new active), checks what
    /// the kill that ended round `cut` left: every acknowledged write, the
    /// store's files, the upload sessions (resumed and finished, or
    /// unknown), and pushes again what was in flight plus a sample of what
    /// was acknowledged. Logs the round's line, `after` naming the event
    /// (`restart`, `takeover`) and `extra` appended; or returns the problems.
    async fn check(
        &mut self,
        ctx: &Ctx,
        cut: usize,
        after: &str,
        extra: &str,
    ) -> Result<(), Vec<String>> {
        let t = Instant::now();
        let mut stats = Stats::default();
        let mut problems = verify(ctx, &self.root, &mut stats).await;
        problems.extend(resume_sessions(ctx, &self.root, &mut stats, &mut self.rng).await);
        problems.extend(repush(ctx, cut, &mut stats, &mut self.rng).await);
        if !problems.is_empty() {
            return Err(problems);
        }
        let l = lock(&ctx.ledger);
        let prev: Vec<&Op> = l
            .ops
            .iter()
            .filter(|o| o.round == cut && o.client.is_some())
            .collect();
        let acked = prev.iter().filter(|o| o.acked()).count();
        self.totals += Totals {
            rounds: 1,
            acked,
            dangling: stats.dangling_tags,
            resumed: stats.sessions_resumed,
            unknown: stats.sessions_unknown,
            repushed: stats.repushed,
            references: stats.references_checked,
        };
        log(&format!(
            "round {cut}: {} writes sent, {acked} acknowledged, {} in flight at the kill | verified after {after} in {:.1} s: \
             {} acknowledged writes so far; blobs {} present / {} absent, manifests {} / {}, tags {} / {}; \
             {} blob references of manifests; {} blob files ({:.1} MiB) hash to their names, tmp/ and pins/ empty; \
             sessions resumed {} / unknown {}; re-pushed {}; dangling tags {}; losses 0{extra}",
            prev.len(),
            prev.len() - acked,
            t.elapsed().as_secs_f64(),
            stats.acked_checked,
            stats.blobs_present,
            stats.blobs_absent,
            stats.manifests_present,
            stats.manifests_absent,
            stats.tags_present,
            stats.tags_absent,
            stats.references_checked,
            stats.files_walked,
            stats.bytes_walked as f64 / (1 << 20) as f64,
            stats.sessions_resumed,
            stats.sessions_unknown,
            stats.repushed,
            stats.dangling_tags,
        ));
        Ok(())
    }
}

fn plain_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigkill_during_concurrent_pushes_loses_nothing() {
    let seed = seed("crash test");
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let mut work = Workload::new(seed, &root);
    let started = Instant::now();
    for round in 0..=ROUNDS {
        let berth = Berth::start(&root);
        let ctx = work.ctx(round, berth.url(), plain_client());
        // What the previous kill left.
        if round > 0
            && let Err(problems) = work.check(&ctx, round - 1, "restart", "").await
        {
            fail(
                round,
                "after restart",
                &problems,
                &[("restarted", &berth.log)],
            );
        }
        if round == ROUNDS {
            let status = berth.terminate();
            assert!(status.success(), "berth exit status {status}");
            break;
        }
        // Concurrent pushes, then SIGKILL mid-flight.
        let pid = berth.pid();
        let (delay, ()) = work.run(&ctx, pid, move || berth.kill()).await;
        log(&format!(
            "round {round}: SIGKILL to pid {pid} after {delay} ms"
        ));
    }
    log(&format!(
        "crash test: {}, {:.1} s",
        work.totals.summary("restart"),
        started.elapsed().as_secs_f64()
    ));
}

// --------------------------------------------------------------- failover

/// Takeovers of the plain-HTTP registry (`berth registry serve --auth
/// none`); `BERTH_FAULT_ROUNDS` sets another count.
const FAILOVER_ROUNDS: usize = 24;
/// Takeovers of `berth serve` (HTTPS, tokens, local users); with
/// `BERTH_FAULT_ROUNDS`, a quarter of it.
const FAILOVER_ROUNDS_SERVE: usize = 6;
/// Takeovers on one data directory, at most.
const FAILOVER_EPOCH: usize = 24;
/// From the SIGKILL to the standby's `/readyz` 200, at most.
const TAKEOVER_BOUND: Duration = Duration::from_secs(10);
/// The `client_id` of the workload's token requests.
const TOKEN_CLIENT_ID: &str = "berth-crash-test";

fn fault_rounds(default: usize, divisor: usize) -> usize {
    std::env::var("BERTH_FAULT_ROUNDS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .map_or(default, |n| (n / divisor).max(1))
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `berth registry serve --auth none --tls off`
    Registry,
    /// `berth serve`: HTTPS with the certificate it generates, tokens
    /// from its token service, the local users file.
    Serve,
}

impl Mode {
    fn start(self, root: &Path, standby: bool) -> Berth {
        let flags = ["--auth", "none"];
        match (self, standby) {
            (Mode::Registry, false) => Berth::start_registry(root, &flags),
            (Mode::Registry, true) => Berth::start_registry_standby(root, &flags),
            (Mode::Serve, false) => Berth::start_all(root, "127.0.0.1", &[], &[]),
            (Mode::Serve, true) => Berth::start_all_standby(root, "127.0.0.1", &[], &[]),
        }
    }

    fn base(self, b: &Berth) -> String {
        match self {
            Mode::Registry => b.url(),
            Mode::Serve => b.https_url(),
        }
    }

    /// A client for the servers on `root`: trusting the CA berth
    /// generated there (`Serve`), sending `token` if any.
    fn client(self, root: &Path, token: Option<&str>) -> reqwest::Client {
        let mut b = reqwest::Client::builder().timeout(Duration::from_secs(30));
        if self == Mode::Serve {
            let pem = std::fs::read(root.join("tls/ca.crt")).unwrap();
            b = b
                .tls_built_in_root_certs(false)
                .add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
        }
        if let Some(t) = token {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(
                reqwest::header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
            b = b.default_headers(h);
        }
        b.build().unwrap()
    }
}

/// `POST /token` on the token service at `addr` with `grant` (the
/// password or refresh-token form fields), for every repository of the
/// workload; returns the access token and the refresh token if any.
async fn token(
    http: &reqwest::Client,
    addr: &str,
    grant: &[(&str, &str)],
) -> (String, Option<String>) {
    let mut form: Vec<(&str, String)> = grant.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
    form.push(("service", "berth-registry".into()));
    form.push(("client_id", TOKEN_CLIENT_ID.into()));
    for r in REPOS {
        form.push(("scope", format!("repository:{r}:pull,push,delete")));
    }
    let resp = http
        .post(format!("https://{addr}/token"))
        .form(&form)
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    assert_eq!(status, 200, "token from {addr}: {body}");
    (
        body["token"].as_str().unwrap().to_owned(),
        body["refresh_token"].as_str().map(str::to_owned),
    )
}

/// Polls `url` (a standby's `/readyz`) until it answers 200; returns the
/// time since `since` and how many probes failed at the transport level.
async fn wait_ready(http: reqwest::Client, url: String, since: Instant) -> (Duration, usize) {
    let mut transport_errors = 0;
    loop {
        match http.get(&url).send().await {
            Ok(r) if r.status() == 200 => return (since.elapsed(), transport_errors),
            Ok(r) => assert_eq!(r.status(), 503, "{url} while taking over"),
            Err(_) => transport_errors += 1,
        }
        assert!(
            since.elapsed() < TAKEOVER_BOUND,
            "{url}: no takeover within {TAKEOVER_BOUND:?} of the SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Process ids of the processes whose command line names `root`.
fn processes_on(root: &Path) -> Vec<u32> {
    let needle = root.as_os_str().as_encoded_bytes();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| c.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `rounds` takeovers, [`FAILOVER_EPOCH`] at most on one data directory
/// (then a fresh one: the verification reads everything the directory
/// holds after every takeover, so its cost grows with the rounds).
async fn failover(mode: Mode, rounds: usize, name: &str) {
    let seed = seed(name);
    let started = Instant::now();
    let mut totals = Totals::default();
    let mut takeovers = Vec::new();
    let mut berth_ms = Vec::new();
    let mut rng = Rng(seed);
    let mut done = 0;
    while done < rounds {
        let n = (rounds - done).min(FAILOVER_EPOCH);
        let epoch = failover_epoch(mode, n, rng.next()).await;
        totals += epoch.totals;
        takeovers.extend(epoch.takeovers);
        berth_ms.extend(epoch.berth_ms);
        done += n;
    }
    assert_eq!(totals.rounds, rounds);
    takeovers.sort();
    berth_ms.sort_by(f64::total_cmp);
    log(&format!(
        "{name}: {}; takeover (SIGKILL to /readyz 200) median {:.1} ms, max {:.1} ms, min {:.1} ms \
         (berth's own lock to serving: median {} ms, max {} ms); {} data directories; nothing left running; {:.1} s",
        totals.summary("takeover"),
        millis(takeovers[takeovers.len() / 2]),
        millis(*takeovers.last().unwrap()),
        millis(takeovers[0]),
        berth_ms
            .get(berth_ms.len() / 2)
            .map_or("?".into(), |m| m.to_string()),
        berth_ms.last().map_or("?".into(), |m| m.to_string()),
        rounds.div_ceil(FAILOVER_EPOCH),
        started.elapsed().as_secs_f64()
    ));
}

struct Epoch {
    totals: Totals,
    takeovers: Vec<Duration>,
    /// What the new actives logged: `took over: serving ms=...`.
    berth_ms: Vec<f64>,
}

/// Two servers on a new data directory, the clients writing to the active
/// one; SIGKILL the active at a random moment; poll the standby's
/// `/readyz` until it has taken over (timed); start the killed one again,
/// as the standby of the new active; verify everything through the new
/// active (with `Serve`, with the token the dead active issued); the
/// clients go on against the new active, with a token its own token
/// service issued for the refresh token the first active issued. Again
/// and again, `rounds` times; then both stop (SIGTERM, exit 0) and no
/// process is left on the directory.
async fn failover_epoch(mode: Mode, rounds: usize, seed: u64) -> Epoch {
    log(&format!("a new data directory: {rounds} takeovers"));
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let mut work = Workload::new(seed, &root);
    let mut active = mode.start(&root, false);
    let mut standby = mode.start(&root, true);
    // A standby prepares what it can ahead (a bcrypt hash, for `Serve`):
    // one killed soon after it started takes over later.
    let mut standby_since = Instant::now();
    let probe = mode.client(&root, None);
    // Serve: one password login, on the first active; later tokens come
    // from the refresh token it issued, at whichever server is active.
    let mut refresh = None;
    let mut http = match mode {
        Mode::Registry => mode.client(&root, None),
        Mode::Serve => {
            let password = active.admin_password();
            let grant = [
                ("grant_type", "password"),
                ("username", "admin"),
                ("password", password.as_str()),
                ("access_type", "offline"),
            ];
            let (access, rt) = token(&probe, active.identity_addr.as_ref().unwrap(), &grant).await;
            refresh = Some(rt.expect("a refresh token for access_type=offline"));
            mode.client(&root, Some(&access))
        }
    };
    let mut takeovers = Vec::new();
    let mut berth_ms = Vec::new();
    for round in 0..rounds {
        // The standby stands by, and says who holds the directory.
        let r = probe
            .get(format!("{}/readyz", mode.base(&standby)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "round {round}: standby /readyz");
        assert_eq!(r.text().await.unwrap(), "standby");
        assert!(
            standby.wait_for_log(
                &format!("holder=\"pid {} ", active.pid()),
                Duration::from_secs(5)
            ),
            "round {round}: the standby does not name the active (pid {}) as the holder: {:?}",
            active.pid(),
            standby.log.lock().unwrap()
        );

        // Concurrent pushes to the active; SIGKILL mid-flight; time the
        // standby's takeover.
        let ctx = work.ctx(round, mode.base(&active), http.clone());
        let pid = active.pid();
        let dead_log = active.log.clone();
        let readyz = format!("{}/readyz", mode.base(&standby));
        let p = probe.clone();
        let (delay, (standing_by, ready)) = work
            .run(&ctx, pid, move || {
                let killed = Instant::now();
                let standing_by = killed - standby_since;
                active.kill();
                (standing_by, tokio::spawn(wait_ready(p, readyz, killed)))
            })
            .await;
        let (took, probe_errors) = ready.await.unwrap();
        takeovers.push(took);
        // The standby is the active now; the killed one comes back as its
        // standby.
        active = standby;
        let own = active.log.lock().unwrap().iter().find_map(|l| {
            let rest = l.split("took over: serving").nth(1)?;
            rest.split("ms=")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        });
        if let Some(ms) = own {
            berth_ms.push(ms);
        }
        standby = mode.start(&root, true);
        standby_since = Instant::now();

        // Everything through the new active; the clients' old token, from
        // the dead active.
        let vctx = work.ctx(round + 1, mode.base(&active), http.clone());
        let extra = format!(
            " | SIGKILL to pid {pid} after {delay} ms, pid {} ready (/readyz 200) {:.1} ms later \
             (berth: lock to serving {}; it stood by for {:.1} s){}",
            active.pid(),
            millis(took),
            own.map_or("?".into(), |ms| format!("{ms} ms")),
            standing_by.as_secs_f64(),
            if probe_errors > 0 {
                format!(", {probe_errors} probes failed")
            } else {
                String::new()
            }
        );
        if let Err(problems) = work.check(&vctx, round, "takeover", &extra).await {
            fail(
                round + 1,
                "after takeover",
                &problems,
                &[("new active", &active.log), ("killed", &dead_log)],
            );
        }
        // The clients switch to the new active, with a token from it.
        if let Some(rt) = &refresh {
            let grant = [
                ("grant_type", "refresh_token"),
                ("refresh_token", rt.as_str()),
            ];
            let (access, _) = token(&probe, active.identity_addr.as_ref().unwrap(), &grant).await;
            http = mode.client(&root, Some(&access));
        }
    }
    if mode == Mode::Serve {
        // A password login at the last active (its own bcrypt check).
        let password = active.admin_password();
        let grant = [
            ("grant_type", "password"),
            ("username", "admin"),
            ("password", password.as_str()),
        ];
        token(&probe, active.identity_addr.as_ref().unwrap(), &grant).await;
    }
    let pids = [active.pid(), standby.pid()];
    let status = standby.terminate();
    assert!(status.success(), "standby exit status {status}");
    let status = active.terminate();
    assert!(status.success(), "active exit status {status}");
    let left = processes_on(&root);
    assert!(
        left.is_empty(),
        "still running on {}: {left:?} (last: {pids:?})",
        root.display()
    );
    assert_eq!(work.totals.rounds, rounds);
    Epoch {
        totals: work.totals,
        takeovers,
        berth_ms,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_sigkill_of_the_active_the_standby_takes_over_loses_nothing() {
    failover(
        Mode::Registry,
        fault_rounds(FAILOVER_ROUNDS, 1),
        "failover test (berth registry serve)",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failover_of_berth_serve_with_tokens_loses_nothing() {
    failover(
        Mode::Serve,
        fault_rounds(FAILOVER_ROUNDS_SERVE, 4),
        "failover test (berth serve, HTTPS, tokens)",
    )
    .await;
}

/// The window the main test only now and then hits, made wide: a manifest
/// DELETE by digest removes the revision, then scans every tag file of the
/// repository for tags to remove; thousands of unrelated tags make that scan
/// long, and the server is killed while workers delete. A DELETE cut short
/// must not leave a tag that is listed but resolves to nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn interrupted_manifest_delete_leaves_no_dangling_tag() {
    const STATIC_TAGS: usize = 4000;
    const TAGS: usize = 4;
    const WORKERS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("data");
    let repo = "crash/deletes";
    let mut rng = Rng(rand::random());
    let config = BlobRef::new(rng.next(), 64, false);
    for round in 0..5 {
        let berth = Berth::start(&root);
        let base = berth.url();
        let http = reqwest::Client::new();
        if round == 0 {
            let resp = http
                .post(format!(
                    "{base}/v2/{repo}/blobs/uploads/?digest={}",
                    config.digest
                ))
                .body(config.bytes())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201);
            let bytes = manifest_json(&config, std::slice::from_ref(&config), "static");
            let resp = http
                .put(format!("{base}/v2/{repo}/manifests/static"))
                .header("content-type", OCI_MANIFEST)
                .body(bytes)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 201);
            // Many more tags on the same manifest, written straight into
            // the documented layout (pushing them would take long).
            let tags = root.join(format!("repositories/{repo}/_manifests/tags"));
            let target = std::fs::read(tags.join("static")).unwrap();
            for i in 0..STATIC_TAGS {
                std::fs::write(tags.join(format!("static-{i}")), &target).unwrap();
            }
        }
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WORKERS {
            let (http, base, stop, config) =
                (http.clone(), base.clone(), stop.clone(), config.clone());
            let mut rng = Rng(rng.next());
            tasks.push(tokio::spawn(async move {
                let mut deletes = 0;
                while !stop.load(Ordering::SeqCst) {
                    let nonce = format!("r{round}-w{w}-{}", rng.next());
                    let bytes = manifest_json(&config, std::slice::from_ref(&config), &nonce);
                    let digest = format!("sha256:{}", sha256_hex(&bytes));
                    for k in 0..TAGS {
                        let url = format!("{base}/v2/{repo}/manifests/w{w}-{k}");
                        let put = http
                            .put(url)
                            .header("content-type", OCI_MANIFEST)
                            .body(bytes.clone());
                        match put.send().await {
                            Ok(r) if r.status() == 201 => {}
                            Ok(r) => panic!("tag PUT answered {}", r.status()),
                            Err(_) => return deletes,
                        }
                    }
                    let del = http.delete(format!("{base}/v2/{repo}/manifests/{digest}"));
                    match del.send().await {
                        Ok(r) if r.status() == 202 => deletes += 1,
                        Ok(r) => panic!("manifest DELETE answered {}", r.status()),
                        Err(_) => return deletes,
                    }
                }
                deletes
            }));
        }
        let delay = rng.range(200, 600);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        stop.store(true, Ordering::SeqCst);
        berth.kill();
        let mut deletes = 0;
        for t in tasks {
            deletes += t.await.unwrap();
        }

        let berth = Berth::start(&root);
        let base = berth.url();
        let mut dangling = Vec::new();
        let mut listed = 0;
        for w in 0..WORKERS {
            for k in 0..TAGS {
                let t = format!("w{w}-{k}");
                let file = root.join(format!("repositories/{repo}/_manifests/tags/{t}"));
                let Ok(target) = std::fs::read_to_string(&file) else {
                    continue;
                };
                listed += 1;
                let r = http
                    .get(format!("{base}/v2/{repo}/manifests/{t}"))
                    .header("accept", OCI_MANIFEST)
                    .send()
                    .await
                    .unwrap();
                if r.status() != 200 {
                    let revision = root.join(format!(
                        "repositories/{repo}/_manifests/revisions/sha256/{}",
                        target.trim_start_matches("sha256:")
                    ));
                    dangling.push(format!(
                        "tag {t} -> {target}: GET {}, revision file exists: {}",
                        r.status(),
                        revision.exists()
                    ));
                }
            }
        }
        log(&format!(
            "dangling-tag probe, round {round}: killed after {delay} ms, {deletes} deletes \
             acknowledged, {listed} worker tags on disk, {} dangling",
            dangling.len()
        ));
        if !dangling.is_empty() {
            let resp = http
                .get(format!("{base}/v2/{repo}/tags/list?n=5000"))
                .send()
                .await
                .unwrap();
            let body = resp.text().await.unwrap();
            let first = dangling[0].split(' ').nth(1).unwrap().to_owned();
            panic!(
                "round {round}: after the restart these tags exist but do not resolve (a manifest \
                 DELETE cut short removed the revision, not yet the tags):\n  {}\n\
                 tags/list names {first}: {}",
                dangling.join("\n  "),
                body.contains(&format!("\"{first}\""))
            );
        }
        drop(berth);
    }
}
