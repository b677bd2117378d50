//! Garbage collection while the registry serves, with the real binary.
//!
//! `collection_during_pushes_and_pulls`: `berth registry serve` on a
//! temporary directory; workers push images (fresh and shared layers, HEAD
//! before upload, cross-repository mounts, chunked uploads), indexes whose
//! children are pushed untagged, referrers of their tagged images; retag,
//! untag by pushing another manifest to a tag, delete tags and manifests,
//! push orphan blobs; and pull their own tagged images completely the whole
//! time (a tagged image must never lose anything), and others' images when
//! they can. Meanwhile `berth gc --grace 0 --delete-untagged` runs again
//! and again in another process. With no grace at all, a blob a worker
//! uploaded or checked may be collected before the manifest that needs it
//! arrives: the manifest `PUT` is then refused cleanly
//! (`MANIFEST_BLOB_UNKNOWN`, nothing stored) and the worker pushes again;
//! what must never happen is an acknowledged tag whose content is
//! incomplete. Each worker also keeps an upload session open through all
//! the collections and finishes it at the end. Then: every tag the workers
//! believe in exists and pulls completely (children, config, layers,
//! referrers, every digest checked), and after a last collection exactly
//! the reachable blobs remain on disk and bytes were reclaimed.
//!
//! `grace_period_protects_pushes_in_flight`: the same with `--grace 3`: a
//! push that took less than the grace period from its first blob check (or
//! upload) to its manifest is never refused, because every use of existing
//! content refreshes its time.
//!
//! `scheduled_collection_inside_serve`: `berth serve` with `gc.interval =
//! 1` removes an orphan blob and an untagged manifest by itself and logs
//! it; the tagged image still pulls.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::berth::{Berth, header};
use common::clients::sha256_digest;
use common::rng::Rng;
use serde_json::{Value, json};

const REPOS: [&str; 3] = ["gc/alpha", "gc/beta", "gc/gamma/deep"];
const WORKERS: usize = 6;
const TAGS_PER_WORKER: usize = 4;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const ACCEPT: &str =
    "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

#[derive(Clone)]
struct Blob {
    digest: String,
    data: Arc<Vec<u8>>,
}

impl Blob {
    fn new(data: Vec<u8>) -> Blob {
        Blob {
            digest: sha256_digest(&data),
            data: Arc::new(data),
        }
    }
}

/// Layers every worker uses, in every repository: deduplicated content,
/// mounted across repositories.
fn shared_pool() -> Vec<Blob> {
    (0..6u64)
        .map(|i| Blob::new(Rng(0xABCD + i).bytes(1000 + 40_000 * i as usize)))
        .collect()
}

/// A manifest the worker pushed.
#[derive(Clone)]
struct Pushed {
    digest: String,
    body: Vec<u8>,
    media_type: &'static str,
}

#[derive(Default)]
struct Stats {
    pushes: AtomicU64,
    refused: AtomicU64,
    /// Refused although the push took less than the grace period from its
    /// first blob check to its manifest: must never happen.
    refused_within_grace: AtomicU64,
    own_pulls: AtomicU64,
    other_pulls: AtomicU64,
    other_pulls_gone: AtomicU64,
    deletes: AtomicU64,
    mounts: AtomicU64,
}

/// A failed request the test cannot accept.
#[derive(Debug)]
struct Failure(String);

type Res<T> = Result<T, Failure>;

fn fail<T>(msg: impl Into<String>) -> Res<T> {
    Err(Failure(msg.into()))
}

/// A push the registry refused because something it referenced was
/// collected meanwhile: push again.
enum Push {
    Done,
    Refused,
}

struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(&self, what: &str, rb: reqwest::RequestBuilder) -> Res<reqwest::Response> {
        rb.send().await.map_err(|e| Failure(format!("{what}: {e}")))
    }

    async fn status(&self, what: &str, rb: reqwest::RequestBuilder, ok: &[u16]) -> Res<u16> {
        let resp = self.send(what, rb).await?;
        let status = resp.status().as_u16();
        if ok.contains(&status) {
            Ok(status)
        } else {
            let body = resp.text().await.unwrap_or_default();
            fail(format!("{what}: unexpected {status}: {body}"))
        }
    }

    /// Makes `blob` exist in `repo`: HEAD (the registry touches it), else
    /// a mount from `from`, else an upload (monolithic or chunked).
    async fn ensure_blob(
        &self,
        repo: &str,
        blob: &Blob,
        from: Option<&str>,
        chunked: bool,
        stats: &Stats,
    ) -> Res<()> {
        let what = format!("HEAD {repo} {}", blob.digest);
        let head = self
            .http
            .head(self.url(&format!("/v2/{repo}/blobs/{}", blob.digest)));
        if self.status(&what, head, &[200, 404]).await? == 200 {
            return Ok(());
        }
        if let Some(from) = from {
            let url = self.url(&format!(
                "/v2/{repo}/blobs/uploads/?mount={}&from={from}",
                blob.digest
            ));
            let resp = self.send("mount", self.http.post(url)).await?;
            match resp.status().as_u16() {
                201 => {
                    stats.mounts.fetch_add(1, Ordering::Relaxed);
                    return Ok(());
                }
                // Not mountable (gone there): the session it opened takes
                // the upload.
                202 => {
                    let location = location(&resp)?;
                    let url = self.url(&format!("{location}?digest={}", blob.digest));
                    let put = self.http.put(url).body(blob.data.to_vec());
                    self.status("PUT into the mount's session", put, &[201])
                        .await?;
                    return Ok(());
                }
                s => return fail(format!("mount: unexpected {s}")),
            }
        }
        if chunked && blob.data.len() > 2 {
            let post = self
                .send(
                    "POST upload",
                    self.http
                        .post(self.url(&format!("/v2/{repo}/blobs/uploads/"))),
                )
                .await?;
            let session = location(&post)?;
            let half = blob.data.len() / 2;
            let patch = self
                .http
                .patch(self.url(&session))
                .header("Content-Range", format!("0-{}", half - 1))
                .header("Content-Type", "application/octet-stream")
                .body(blob.data[..half].to_vec());
            let resp = self.send("PATCH", patch).await?;
            if resp.status().as_u16() != 202 {
                return fail(format!("PATCH: {}", resp.status()));
            }
            let session = location(&resp)?;
            let put = self
                .http
                .put(self.url(&format!("{session}?digest={}", blob.digest)))
                .header("Content-Range", format!("{half}-{}", blob.data.len() - 1))
                .body(blob.data[half..].to_vec());
            self.status("PUT final chunk", put, &[201]).await?;
            return Ok(());
        }
        let url = self.url(&format!("/v2/{repo}/blobs/uploads/?digest={}", blob.digest));
        self.status(
            "monolithic upload",
            self.http.post(url).body(blob.data.to_vec()),
            &[201],
        )
        .await?;
        Ok(())
    }

    /// PUTs a manifest; `Refused` when something it needs was collected.
    async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        m: &Pushed,
        stats: &Stats,
    ) -> Res<Push> {
        let url = self.url(&format!("/v2/{repo}/manifests/{reference}"));
        let rb = self
            .http
            .put(url)
            .header("Content-Type", m.media_type)
            .body(m.body.clone());
        let resp = self.send("PUT manifest", rb).await?;
        let status = resp.status().as_u16();
        let digest = header(&resp, "docker-content-digest");
        let body = resp.text().await.unwrap_or_default();
        match status {
            201 if digest == m.digest => {
                stats.pushes.fetch_add(1, Ordering::Relaxed);
                Ok(Push::Done)
            }
            400 if body.contains("MANIFEST_BLOB_UNKNOWN") => {
                stats.refused.fetch_add(1, Ordering::Relaxed);
                Ok(Push::Refused)
            }
            _ => fail(format!(
                "PUT manifest {repo}:{reference}: {status} {digest}: {body}"
            )),
        }
    }

    async fn get(&self, path: &str) -> Res<(u16, Vec<u8>, String)> {
        let rb = self.http.get(self.url(path)).header("Accept", ACCEPT);
        let resp = self.send(path, rb).await?;
        let status = resp.status().as_u16();
        let digest = header(&resp, "docker-content-digest");
        let body = resp
            .bytes()
            .await
            .map_err(|e| Failure(format!("GET {path}: body: {e}")))?;
        Ok((status, body.to_vec(), digest))
    }

    /// Pulls `reference` completely: the manifest, children of an index,
    /// config and layers, and referrers, each checked against its digest.
    /// Returns every digest reached. `Ok(None)` when something is missing
    /// (only acceptable for content someone else may be changing).
    async fn pull(&self, repo: &str, reference: &str) -> Res<Option<BTreeSet<String>>> {
        let mut reached = BTreeSet::new();
        let mut todo = vec![reference.to_owned()];
        while let Some(r) = todo.pop() {
            let (status, body, digest) = self.get(&format!("/v2/{repo}/manifests/{r}")).await?;
            if status == 404 {
                return Ok(None);
            }
            if status != 200 {
                return fail(format!("GET manifest {repo}:{r}: {status}"));
            }
            let actual = sha256_digest(&body);
            if actual != digest || (r.starts_with("sha256:") && r != actual) {
                return fail(format!(
                    "manifest {repo}:{r}: content {actual}, header {digest}"
                ));
            }
            if !reached.insert(actual.clone()) {
                continue;
            }
            let v: Value = serde_json::from_slice(&body)
                .map_err(|e| Failure(format!("manifest {repo}:{r}: {e}")))?;
            for child in v["manifests"].as_array().into_iter().flatten() {
                todo.push(child["digest"].as_str().unwrap_or_default().to_owned());
            }
            let blobs = v["layers"]
                .as_array()
                .into_iter()
                .flatten()
                .chain(v.get("config"));
            for b in blobs {
                let d = b["digest"].as_str().unwrap_or_default();
                let (status, data, _) = self.get(&format!("/v2/{repo}/blobs/{d}")).await?;
                if status == 404 {
                    return Ok(None);
                }
                if status != 200 || sha256_digest(&data) != d {
                    return fail(format!("blob {repo}@{d}: {status}, {} bytes", data.len()));
                }
                reached.insert(d.to_owned());
            }
            let (status, body, _) = self.get(&format!("/v2/{repo}/referrers/{actual}")).await?;
            if status != 200 {
                return fail(format!("referrers of {repo}@{actual}: {status}"));
            }
            let v: Value =
                serde_json::from_slice(&body).map_err(|e| Failure(format!("referrers: {e}")))?;
            for d in v["manifests"].as_array().into_iter().flatten() {
                todo.push(d["digest"].as_str().unwrap_or_default().to_owned());
            }
        }
        Ok(Some(reached))
    }

    async fn referrers(&self, repo: &str, subject: &str) -> Res<BTreeSet<String>> {
        let (status, body, _) = self.get(&format!("/v2/{repo}/referrers/{subject}")).await?;
        if status != 200 {
            return fail(format!("referrers of {subject}: {status}"));
        }
        let v: Value = serde_json::from_slice(&body).map_err(|e| Failure(e.to_string()))?;
        Ok(v["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["digest"].as_str().map(str::to_owned))
            .collect())
    }

    async fn tags(&self, repo: &str) -> Res<BTreeSet<String>> {
        let (status, body, _) = self.get(&format!("/v2/{repo}/tags/list")).await?;
        match status {
            404 => Ok(BTreeSet::new()),
            200 => {
                let v: Value = serde_json::from_slice(&body).map_err(|e| Failure(e.to_string()))?;
                Ok(v["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str().map(str::to_owned))
                    .collect())
            }
            s => fail(format!("tags of {repo}: {s}")),
        }
    }
}

fn location(resp: &reqwest::Response) -> Res<String> {
    match header(resp, "location") {
        l if l.is_empty() => fail(format!("no Location ({})", resp.status())),
        l => Ok(l),
    }
}

fn image_manifest(config: &Blob, layers: &[Blob], subject: Option<&Pushed>) -> Pushed {
    let desc =
        |b: &Blob, t: &str| json!({"mediaType": t, "digest": b.digest, "size": b.data.len()});
    let mut v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": desc(config, "application/vnd.oci.image.config.v1+json"),
        "layers": layers.iter().map(|l| desc(l, "application/vnd.oci.image.layer.v1.tar")).collect::<Vec<_>>(),
    });
    if let Some(s) = subject {
        v["artifactType"] = json!("application/vnd.example.signature");
        v["subject"] = json!({"mediaType": s.media_type, "digest": s.digest, "size": s.body.len()});
    }
    let body = serde_json::to_vec(&v).unwrap();
    Pushed {
        digest: sha256_digest(&body),
        body,
        media_type: OCI_MANIFEST,
    }
}

fn index_manifest(children: &[Pushed]) -> Pushed {
    let v = json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": children.iter().map(|c| json!({
            "mediaType": c.media_type, "digest": c.digest, "size": c.body.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        })).collect::<Vec<_>>(),
    });
    let body = serde_json::to_vec(&v).unwrap();
    Pushed {
        digest: sha256_digest(&body),
        body,
        media_type: OCI_INDEX,
    }
}

/// One worker: its repository, its tags and what it believes they hold.
struct Worker {
    id: usize,
    repo: &'static str,
    rng: Rng,
    pool: Vec<Blob>,
    /// tag -> manifest
    tags: BTreeMap<String, Pushed>,
    /// subject digest -> referrers pushed while it was tagged
    referrers: HashMap<String, BTreeSet<String>>,
    counter: u64,
    /// The collections' grace period.
    grace: Duration,
}

impl Worker {
    fn new(id: usize, repo: &'static str, grace: Duration) -> Worker {
        Worker {
            id,
            repo,
            rng: Rng(0x6C00 + id as u64),
            pool: shared_pool(),
            tags: BTreeMap::new(),
            referrers: HashMap::new(),
            counter: 0,
            grace,
        }
    }

    /// Counts a refusal of a push that started at `started`: with a grace
    /// period longer than the push took, what it checked or uploaded must
    /// have stayed. (The margin covers the store's clock, which lags.)
    fn refused(&self, stats: &Stats, started: Instant) {
        if started.elapsed() + Duration::from_millis(100) < self.grace {
            stats.refused_within_grace.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn tag_name(&mut self) -> String {
        format!("w{}-{}", self.id, self.rng.below(TAGS_PER_WORKER as u64))
    }

    fn fresh_blob(&mut self) -> Blob {
        let len = match self.rng.below(10) {
            0..5 => 1 + self.rng.below(2048),
            5..9 => 2048 + self.rng.below(64 << 10),
            _ => (64 << 10) + self.rng.below(512 << 10),
        } as usize;
        Blob::new(self.rng.bytes(len))
    }

    fn other_repo(&mut self) -> &'static str {
        let others: Vec<_> = REPOS.iter().filter(|r| **r != self.repo).collect();
        others[self.rng.below(others.len() as u64) as usize]
    }

    /// Records that `tag` now holds `m`; referrers of a manifest no tag
    /// holds any more are no longer expected.
    fn set_tag(&mut self, tag: String, m: Option<Pushed>) {
        match m {
            Some(m) => self.tags.insert(tag, m),
            None => self.tags.remove(&tag),
        };
        let held: BTreeSet<&str> = self.tags.values().map(|m| m.digest.as_str()).collect();
        self.referrers.retain(|s, _| held.contains(s.as_str()));
    }

    /// Pushes an image (its blobs first) under `reference`, again until
    /// the registry takes it.
    async fn push_image(
        &mut self,
        c: &Client,
        stats: &Stats,
        reference: Option<&str>,
        subject: Option<&Pushed>,
    ) -> Res<Pushed> {
        self.counter += 1;
        let config = Blob::new(
            format!(
                "{{\"worker\":{},\"n\":{},\"r\":{}}}",
                self.id,
                self.counter,
                self.rng.next()
            )
            .into_bytes(),
        );
        let mut layers = Vec::new();
        for _ in 0..1 + self.rng.below(3) {
            if self.rng.below(3) == 0 {
                let i = self.rng.below(self.pool.len() as u64) as usize;
                layers.push(self.pool[i].clone());
            } else {
                layers.push(self.fresh_blob());
            }
        }
        let m = image_manifest(&config, &layers, subject);
        let reference = reference.unwrap_or(&m.digest).to_owned();
        for _attempt in 0..50 {
            let started = Instant::now();
            for b in std::iter::once(&config).chain(&layers) {
                let from = (self.rng.below(4) == 0).then(|| self.other_repo());
                let chunked = self.rng.below(4) == 0;
                c.ensure_blob(self.repo, b, from, chunked, stats).await?;
            }
            if let Push::Done = c.put_manifest(self.repo, &reference, &m, stats).await? {
                return Ok(m);
            }
            self.refused(stats, started);
        }
        fail("a push refused 50 times in a row")
    }

    async fn step(&mut self, c: &Client, stats: &Stats) -> Res<()> {
        match self.rng.below(100) {
            0..25 => {
                let tag = self.tag_name();
                let m = self.push_image(c, stats, Some(&tag), None).await?;
                self.set_tag(tag, Some(m));
            }
            25..35 => {
                // An index: children pushed untagged, then the index.
                let tag = self.tag_name();
                'again: for _ in 0..50 {
                    let started = Instant::now();
                    let mut children = Vec::new();
                    for _ in 0..2 {
                        children.push(self.push_image(c, stats, None, None).await?);
                    }
                    let index = index_manifest(&children);
                    if let Push::Done = c.put_manifest(self.repo, &tag, &index, stats).await? {
                        self.set_tag(tag, Some(index));
                        break 'again;
                    }
                    self.refused(stats, started);
                }
            }
            35..43 => {
                // A signature of one of our tagged images.
                let Some(subject) = self.pick_tagged() else {
                    return Ok(());
                };
                let sig = self.push_image(c, stats, None, Some(&subject)).await?;
                self.referrers
                    .entry(subject.digest.clone())
                    .or_default()
                    .insert(sig.digest);
            }
            43..53 => {
                // Retag: what a tag of ours holds, under another one. It
                // is reachable: the registry must take it at once.
                let Some(m) = self.pick_tagged() else {
                    return Ok(());
                };
                let tag = self.tag_name();
                match c.put_manifest(self.repo, &tag, &m, stats).await? {
                    Push::Done => self.set_tag(tag, Some(m)),
                    Push::Refused => {
                        return fail(format!("retag of reachable {} refused", m.digest));
                    }
                }
            }
            53..58 => {
                let Some(tag) = self.tags.keys().next().cloned() else {
                    return Ok(());
                };
                let url = c.url(&format!("/v2/{}/manifests/{tag}", self.repo));
                c.status("DELETE tag", c.http.delete(url), &[202]).await?;
                stats.deletes.fetch_add(1, Ordering::Relaxed);
                self.set_tag(tag, None);
            }
            58..61 => {
                // Delete a manifest by digest: every tag of it goes.
                let Some(m) = self.pick_tagged() else {
                    return Ok(());
                };
                let url = c.url(&format!("/v2/{}/manifests/{}", self.repo, m.digest));
                c.status("DELETE manifest", c.http.delete(url), &[202])
                    .await?;
                stats.deletes.fetch_add(1, Ordering::Relaxed);
                let gone: Vec<String> = self
                    .tags
                    .iter()
                    .filter(|(_, v)| v.digest == m.digest)
                    .map(|(t, _)| t.clone())
                    .collect();
                for t in gone {
                    self.set_tag(t, None);
                }
            }
            61..70 => {
                // Orphans: uploaded, never referenced, sometimes deleted.
                let b = self.fresh_blob();
                c.ensure_blob(self.repo, &b, None, false, stats).await?;
                if self.rng.below(2) == 0 {
                    let url = c.url(&format!("/v2/{}/blobs/{}", self.repo, b.digest));
                    c.status("DELETE blob", c.http.delete(url), &[202, 404])
                        .await?;
                }
            }
            70..90 => {
                // Our own tagged images pull completely, always.
                let Some(tag) = self.tags.keys().nth(self.rng.below(4) as usize).cloned() else {
                    return Ok(());
                };
                let want = &self.tags[&tag];
                let Some(reached) = c.pull(self.repo, &tag).await? else {
                    return fail(format!(
                        "{}:{tag} ({}) does not pull completely",
                        self.repo, want.digest
                    ));
                };
                if !reached.contains(&want.digest) {
                    return fail(format!("{}:{tag} is not {}", self.repo, want.digest));
                }
                for r in self.referrers.get(&want.digest).into_iter().flatten() {
                    if !reached.contains(r) {
                        return fail(format!("referrer {r} of {}:{tag} missing", self.repo));
                    }
                }
                stats.own_pulls.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                // Someone's image in some repository: it may be retagged
                // or deleted while we pull; what arrives must be right.
                let repo = REPOS[self.rng.below(REPOS.len() as u64) as usize];
                let tags: Vec<String> = c.tags(repo).await?.into_iter().collect();
                if tags.is_empty() {
                    return Ok(());
                }
                let tag = &tags[self.rng.below(tags.len() as u64) as usize];
                match c.pull(repo, tag).await? {
                    Some(_) => stats.other_pulls.fetch_add(1, Ordering::Relaxed),
                    None => stats.other_pulls_gone.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
        Ok(())
    }

    fn pick_tagged(&mut self) -> Option<Pushed> {
        if self.tags.is_empty() {
            return None;
        }
        let i = self.rng.below(self.tags.len() as u64) as usize;
        self.tags.values().nth(i).cloned()
    }
}

/// `berth gc` once; returns the bytes it reclaimed, how many objects it
/// kept because clients used them while it ran, and its report's last line.
fn run_gc(data_dir: &Path, extra: &[&str]) -> (u64, u64, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["gc", "--data-dir"])
        .arg(data_dir)
        .args(extra)
        .env("BERTH_LOG", "warn")
        .output()
        .expect("run berth gc");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "berth gc failed: {stdout}\n{stderr}");
    assert!(!stderr.contains("WARN"), "berth gc warned: {stderr}");
    let summary = stdout.lines().last().unwrap_or_default().to_owned();
    let bytes = summary
        .split(" blob(s) (")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no byte count in {summary:?}"));
    let in_use = summary
        .split(" in use during")
        .next()
        .and_then(|r| r.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no in-use count in {summary:?}"));
    (bytes, in_use, summary)
}

/// Digests of the blobs on disk.
fn blobs_on_disk(data_dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for shard in std::fs::read_dir(data_dir.join("blobs/sha256")).unwrap() {
        for f in std::fs::read_dir(shard.unwrap().path()).unwrap() {
            out.insert(format!(
                "sha256:{}",
                f.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    out
}

/// No grace at all: pushes may be refused (and pushed again), nothing
/// acknowledged may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn collection_during_pushes_and_pulls() {
    let stats = scenario(0, Duration::from_secs(15)).await;
    assert_eq!(stats.refused_within_grace.load(Ordering::Relaxed), 0);
}

/// A grace period of 3 s, longer than any push here takes: a push that
/// checked or uploaded its blobs less than 3 s before its manifest is
/// never refused (what it used was touched), and the rest is as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn grace_period_protects_pushes_in_flight() {
    let stats = scenario(3, Duration::from_secs(10)).await;
    assert_eq!(
        stats.refused_within_grace.load(Ordering::Relaxed),
        0,
        "a push faster than the grace period was refused"
    );
}

/// Workers push and pull for `load` while `berth gc --grace GRACE
/// --delete-untagged` runs again and again; then everything is checked.
async fn scenario(grace: u64, load: Duration) -> Arc<Stats> {
    let grace_arg = grace.to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_owned();
    let berth = Berth::start(&data);
    let client = Arc::new(Client {
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap(),
        base: berth.url(),
    });
    let stats = Arc::new(Stats::default());

    // Upload sessions that stay open through every collection.
    let mut sessions = Vec::new();
    for (i, repo) in REPOS.iter().enumerate() {
        let blob = Blob::new(Rng(0x5E55 + i as u64).bytes(100_000));
        let post = client
            .send(
                "POST",
                client
                    .http
                    .post(client.url(&format!("/v2/{repo}/blobs/uploads/"))),
            )
            .await
            .unwrap();
        let loc = location(&post).unwrap();
        let patch = client
            .http
            .patch(client.url(&loc))
            .header("Content-Range", "0-49999")
            .body(blob.data[..50_000].to_vec());
        let resp = client.send("PATCH", patch).await.unwrap();
        assert_eq!(resp.status().as_u16(), 202);
        sessions.push((repo, location(&resp).unwrap(), blob));
    }

    // Collections, one after another, in another process.
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (stop, data, grace_arg) = (stop.clone(), data.clone(), grace_arg.clone());
        std::thread::spawn(move || {
            let (mut runs, mut bytes, mut in_use, mut slowest) = (0u64, 0, 0, Duration::ZERO);
            while !stop.load(Ordering::SeqCst) {
                let t = Instant::now();
                let (b, u, _) = run_gc(&data, &["--grace", &grace_arg, "--delete-untagged"]);
                slowest = slowest.max(t.elapsed());
                runs += 1;
                bytes += b;
                in_use += u;
                std::thread::sleep(Duration::from_millis(50));
            }
            (runs, bytes, in_use, slowest)
        })
    };

    let deadline = Instant::now() + load;
    let mut handles = Vec::new();
    for id in 0..WORKERS {
        let (c, s) = (client.clone(), stats.clone());
        let grace = Duration::from_secs(grace);
        handles.push(tokio::spawn(async move {
            let mut w = Worker::new(id, REPOS[id % REPOS.len()], grace);
            while Instant::now() < deadline {
                w.step(&c, &s).await?;
            }
            Ok::<Worker, Failure>(w)
        }));
    }
    let mut workers = Vec::new();
    let mut failures = Vec::new();
    for h in handles {
        match h.await.unwrap() {
            Ok(w) => workers.push(w),
            Err(Failure(f)) => failures.push(f),
        }
    }
    stop.store(true, Ordering::SeqCst);
    let (runs, mut reclaimed, in_use, slowest) = collector.join().unwrap();
    assert!(
        failures.is_empty(),
        "workers failed:\n{}",
        failures.join("\n")
    );

    // The sessions finish.
    for (repo, loc, blob) in &sessions {
        let put = client
            .http
            .put(client.url(&format!("{loc}?digest={}", blob.digest)))
            .header("Content-Range", "50000-99999")
            .body(blob.data[50_000..].to_vec());
        assert_eq!(
            client.status("finish session", put, &[201]).await.unwrap(),
            201
        );
        let head = client
            .http
            .head(client.url(&format!("/v2/{repo}/blobs/{}", blob.digest)));
        client.status("HEAD", head, &[200]).await.unwrap();
    }

    // Every tag the workers believe in, and only those, pulls completely.
    let verify = |client: Arc<Client>, workers: &Vec<Worker>| {
        let expected: Vec<(&str, String, Pushed, BTreeSet<String>)> = workers
            .iter()
            .flat_map(|w| {
                w.tags.iter().map(move |(t, m)| {
                    let refs = w.referrers.get(&m.digest).cloned().unwrap_or_default();
                    (w.repo, t.clone(), m.clone(), refs)
                })
            })
            .collect();
        let by_repo: BTreeMap<&str, BTreeSet<String>> =
            REPOS.iter().map(|r| (*r, BTreeSet::new())).collect();
        async move {
            let mut by_repo = by_repo;
            let mut reachable = BTreeSet::new();
            for (repo, tag, m, refs) in &expected {
                by_repo.get_mut(repo).unwrap().insert(tag.clone());
                let reached = client
                    .pull(repo, tag)
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("{repo}:{tag} ({}) does not pull", m.digest));
                assert!(
                    reached.contains(&m.digest),
                    "{repo}:{tag} is not {}",
                    m.digest
                );
                assert_eq!(&client.referrers(repo, &m.digest).await.unwrap(), refs);
                reachable.extend(reached);
            }
            for (repo, tags) in &by_repo {
                assert_eq!(&client.tags(repo).await.unwrap(), tags, "tags of {repo}");
            }
            (expected.len(), reachable)
        }
    };
    let (tagged, reachable) = verify(client.clone(), &workers).await;
    assert!(tagged > 0);

    // A last collection, with no grace: exactly what the tags reach
    // remains.
    let (last, _, summary) = run_gc(&data, &["--grace", "0", "--delete-untagged"]);
    reclaimed += last;
    let (_, reachable_after) = verify(client.clone(), &workers).await;
    assert_eq!(reachable, reachable_after);
    let on_disk = blobs_on_disk(&data);
    let extra: Vec<_> = on_disk.difference(&reachable).collect();
    let missing: Vec<_> = reachable.difference(&on_disk).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "on disk but unreachable: {extra:?}; reachable but not on disk: {missing:?}"
    );
    assert!(reclaimed > 0);
    // Repositories with tags are listed (one without may stay for links
    // to blobs other repositories still use).
    let (_, body, _) = client.get("/v2/_catalog").await.unwrap();
    let catalog: Value = serde_json::from_slice(&body).unwrap();
    let with_tags: BTreeSet<&str> = workers
        .iter()
        .filter(|w| !w.tags.is_empty())
        .map(|w| w.repo)
        .collect();
    let listed: BTreeSet<&str> = catalog["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(listed.is_superset(&with_tags), "{listed:?}");

    // Nothing set aside or pinned is left behind.
    for d in ["trash", "pins"] {
        assert!(
            std::fs::read_dir(data.join(d)).unwrap().next().is_none(),
            "{d} not empty"
        );
    }
    let s = &stats;
    eprintln!(
        "grace {grace} s, {load:?} of load, {WORKERS} workers: {} manifest pushes ({} refused \
         cleanly: content collected between upload or HEAD and the manifest; {} of them within \
         the grace period), {} mounts, {} deletes, {} own complete pulls, \
         {} others' pulls ({} found their tag moved or gone); {runs} collections (slowest {:.2?}; \
         {in_use} objects kept because a client used them during one), {reclaimed} bytes \
         reclaimed; {tagged} tags verified, {} blobs remain. Last: {summary}",
        s.pushes.load(Ordering::Relaxed),
        s.refused.load(Ordering::Relaxed),
        s.refused_within_grace.load(Ordering::Relaxed),
        s.mounts.load(Ordering::Relaxed),
        s.deletes.load(Ordering::Relaxed),
        s.own_pulls.load(Ordering::Relaxed),
        s.other_pulls.load(Ordering::Relaxed),
        s.other_pulls_gone.load(Ordering::Relaxed),
        slowest,
        on_disk.len(),
    );
    assert!(runs >= 5, "only {runs} collections ran");
    berth.kill();
    stats
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_collection_inside_serve() {
    let dir = tempfile::tempdir().unwrap();
    let berth = Berth::start_all(
        dir.path(),
        "127.0.0.1",
        &[
            "--tls",
            "off",
            "--set",
            "registry.auth=none",
            "--set",
            "gc.interval=1",
            "--set",
            "gc.grace=0",
            "--set",
            "gc.delete_untagged=true",
        ],
        &[],
    );
    let client = Client {
        http: reqwest::Client::new(),
        base: berth.url(),
    };
    let stats = Stats::default();
    let mut w = Worker::new(0, "sched/app", Duration::ZERO);
    let tagged = w
        .push_image(&client, &stats, Some("v1"), None)
        .await
        .unwrap();
    let untagged = w.push_image(&client, &stats, None, None).await.unwrap();
    let orphan = Blob::new(b"an orphan blob".to_vec());
    client
        .ensure_blob("sched/app", &orphan, None, false, &stats)
        .await
        .unwrap();

    let gone = |path: String| {
        let c = &client;
        async move { c.get(&path).await.unwrap().0 == 404 }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let orphan_gone = gone(format!("/v2/sched/app/blobs/{}", orphan.digest)).await;
        let untagged_gone = gone(format!("/v2/sched/app/manifests/{}", untagged.digest)).await;
        if orphan_gone && untagged_gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the scheduled collection did not remove them"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reached = client.pull("sched/app", "v1").await.unwrap().unwrap();
    assert!(reached.contains(&tagged.digest));
    let logged = berth.log.lock().unwrap().join("\n");
    assert!(
        logged.contains("scheduled garbage collection on"),
        "{logged}"
    );
    let run = logged
        .lines()
        .find(|l| l.contains("garbage collection done") && !l.contains("bytes=0"))
        .unwrap_or_else(|| panic!("no collection logged: {logged}"));
    eprintln!("{run}");
    berth.kill();
}
