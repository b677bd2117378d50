//! Mark and sweep on a filesystem store, with content pushed through the
//! registry service (so that pins and touches are the real ones).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::manifest::{OCI_INDEX, OCI_MANIFEST};
use crate::service::{Reference, Registry, RegistryConfig};
use crate::storage::FsStore;

struct Fixture {
    dir: tempfile::TempDir,
    store: Arc<FsStore>,
    reg: Registry,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FsStore::open(dir.path()).unwrap());
    let reg = Registry::new(store.clone(), RegistryConfig::default());
    Fixture { dir, store, reg }
}

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn body(data: &[u8]) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
    futures_util::stream::iter([Ok(Bytes::copy_from_slice(data))])
}

impl Fixture {
    async fn blob(&self, r: &str, data: &[u8]) -> (Digest, u64) {
        let d = Digest::sha256(data);
        self.reg
            .blob_put(&repo(r), &d, Some(data.len() as u64), body(data))
            .await
            .unwrap();
        (d, data.len() as u64)
    }

    async fn manifest(&self, r: &str, value: serde_json::Value, tag: Option<&str>) -> Digest {
        let raw = serde_json::to_vec(&value).unwrap();
        let d = Digest::sha256(&raw);
        let reference = match tag {
            Some(t) => Reference::Tag(crate::name::Tag::parse(t).unwrap()),
            None => Reference::Digest(d.clone()),
        };
        let (got, _) = self
            .reg
            .manifest_put(&repo(r), &reference, None, raw)
            .await
            .unwrap();
        assert_eq!(got, d);
        d
    }

    /// An image with a config and one layer per entry of `layers`; returns
    /// its digest and its blobs.
    async fn image(
        &self,
        r: &str,
        name: &str,
        layers: &[&[u8]],
        tag: Option<&str>,
    ) -> (Digest, Vec<Digest>) {
        self.artifact(r, name, layers, tag, None).await
    }

    async fn artifact(
        &self,
        r: &str,
        name: &str,
        layers: &[&[u8]],
        tag: Option<&str>,
        subject: Option<&Digest>,
    ) -> (Digest, Vec<Digest>) {
        let config = self.blob(r, format!("config of {name}").as_bytes()).await;
        let mut descs = Vec::new();
        let mut blobs = vec![config.0.clone()];
        for l in layers {
            let (d, size) = self.blob(r, l).await;
            descs.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d.to_string(), "size": size}));
            blobs.push(d);
        }
        let mut m = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0.to_string(), "size": config.1},
            "layers": descs,
        });
        if let Some(s) = subject {
            m["artifactType"] = json!("application/x-signature");
            m["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": s.to_string(), "size": 1});
        }
        let d = self.manifest(r, m, tag).await;
        (d, blobs)
    }

    async fn index(&self, r: &str, children: &[&Digest], tag: Option<&str>) -> Digest {
        let store = self.store.clone();
        let manifests: Vec<_> = children
            .iter()
            .map(|c| {
                let m = store.manifest_get(&repo(r), c).unwrap().unwrap();
                json!({"mediaType": m.media_type, "digest": c.to_string(), "size": m.content.len()})
            })
            .collect();
        self.manifest(
            r,
            json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
            tag,
        )
        .await
    }

    /// Makes everything stored so far two hours old.
    fn age(&self) {
        let t = SystemTime::now() - Duration::from_secs(7200);
        for top in ["blobs", "repositories"] {
            walk_files(&self.dir.path().join(top), &mut |p| {
                File::options()
                    .write(true)
                    .open(p)
                    .unwrap()
                    .set_modified(t)
                    .unwrap();
            });
        }
    }

    fn gc(&self, delete_untagged: bool) -> GcReport {
        self.gc_with(GcOptions {
            delete_untagged,
            ..GcOptions::default()
        })
    }

    fn gc_with(&self, options: GcOptions) -> GcReport {
        let lock = GcLock::path_in(self.dir.path());
        let report = run(&*self.store, &lock, &options).unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert!(report.broken.is_empty(), "{:?}", report.broken);
        report
    }

    fn has_blob(&self, d: &Digest) -> bool {
        self.store.blob_size(d).unwrap().is_some()
    }

    fn has_manifest(&self, r: &str, d: &Digest) -> bool {
        self.store.manifest_exists(&repo(r), d).unwrap()
    }

    /// Every file under the data directory (but the lock) with its size
    /// and time.
    fn snapshot(&self) -> BTreeMap<PathBuf, (u64, SystemTime)> {
        let mut out = BTreeMap::new();
        let lock = GcLock::path_in(self.dir.path());
        walk_files(self.dir.path(), &mut |p| {
            if p == lock {
                return;
            }
            let m = std::fs::metadata(p).unwrap();
            out.insert(p.to_owned(), (m.len(), m.modified().unwrap()));
        });
        out
    }
}

fn walk_files(dir: &Path, f: &mut dyn FnMut(&Path)) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk_files(&p, f);
        } else {
            f(&p);
        }
    }
}

fn sorted<T: Ord + Clone>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    v.sort();
    v
}

#[tokio::test]
async fn tagged_content_children_and_referrers_stay() {
    let f = fixture();
    let (app, app_blobs) = f.image("lib/app", "app", &[b"app layer"], Some("v1")).await;
    let (amd, amd_blobs) = f.image("lib/app", "amd64", &[b"amd64 layer"], None).await;
    let (arm, arm_blobs) = f.image("lib/app", "arm64", &[b"arm64 layer"], None).await;
    let index = f.index("lib/app", &[&amd, &arm], Some("multi")).await;
    // A signature of the tagged image, and one of an index child.
    let (sig, sig_blobs) = f
        .artifact("lib/app", "sig", &[b"sig"], None, Some(&app))
        .await;
    let (child_sig, child_sig_blobs) = f
        .artifact("lib/app", "child sig", &[b"child sig"], None, Some(&arm))
        .await;
    // A referrer of the signature: referrers are followed transitively.
    let (sig_sig, _) = f
        .artifact("lib/app", "sig of sig", &[], None, Some(&sig))
        .await;
    // Garbage: an untagged image and a lone blob.
    let (junk, junk_blobs) = f.image("lib/app", "junk", &[b"junk layer"], None).await;
    let (lone, lone_size) = f.blob("lib/app", b"lone blob").await;
    f.age();

    let report = f.gc(true);
    for d in [&app, &amd, &arm, &index, &sig, &child_sig, &sig_sig] {
        assert!(f.has_manifest("lib/app", d), "{d} went");
        assert!(f.has_blob(d));
    }
    for d in [app_blobs, amd_blobs, arm_blobs, sig_blobs, child_sig_blobs]
        .iter()
        .flatten()
    {
        assert!(f.has_blob(d), "{d} went");
    }
    assert!(!f.has_manifest("lib/app", &junk));
    let mut gone = junk_blobs.clone();
    gone.extend([junk.clone(), lone.clone()]);
    for d in &gone {
        assert!(!f.has_blob(d), "{d} stayed");
    }
    assert_eq!(report.manifests, vec![("lib/app".to_string(), junk)]);
    assert_eq!(
        sorted(
            &report
                .blobs
                .iter()
                .map(|(d, _)| d.clone())
                .collect::<Vec<_>>()
        ),
        sorted(&gone)
    );
    assert!(report.bytes() > lone_size);
    // The links of what went went too (a manifest's content has none);
    // the repository stays.
    assert_eq!(report.links.len(), gone.len() - 1);
    assert!(report.repositories.is_empty());
    assert!(!f.store.blob_linked(&repo("lib/app"), &lone).unwrap());

    // Nothing left to do.
    let again = f.gc(true);
    assert!(again.manifests.is_empty() && again.blobs.is_empty() && again.links.is_empty());
}

#[tokio::test]
async fn untagged_manifests_go_only_with_the_flag() {
    let f = fixture();
    let (kept, _) = f.image("r", "kept", &[b"kept"], Some("latest")).await;
    let (untagged, untagged_blobs) = f.image("r", "untagged", &[b"u"], None).await;
    let (lone, _) = f.blob("r", b"lone").await;
    f.age();

    let report = f.gc(false);
    assert!(report.manifests.is_empty());
    assert!(f.has_manifest("r", &untagged));
    for d in &untagged_blobs {
        assert!(f.has_blob(d), "an untagged manifest keeps its blobs");
    }
    assert_eq!(report.blobs.len(), 1);
    assert!(!f.has_blob(&lone));

    // Untagging by pushing another manifest to the tag.
    let (other, _) = f.image("r", "other", &[b"other"], Some("latest")).await;
    f.age();
    let report = f.gc(true);
    assert_eq!(
        sorted(&report.manifests),
        sorted(&[("r".to_string(), untagged), ("r".to_string(), kept.clone())])
    );
    assert!(f.has_manifest("r", &other));
    assert!(!f.has_manifest("r", &kept));
    for d in &untagged_blobs {
        assert!(!f.has_blob(d));
    }
}

#[tokio::test]
async fn children_of_a_tagged_index_are_never_removed() {
    let f = fixture();
    let (a, a_blobs) = f.image("r", "a", &[b"a"], None).await;
    let (b, _) = f.image("r", "b", &[b"b"], None).await;
    let (shared, shared_blobs) = f.image("r", "shared", &[b"shared"], None).await;
    // An index of an index: children are followed at any depth.
    let inner = f.index("r", &[&a, &shared], None).await;
    let outer = f.index("r", &[&inner], Some("nested")).await;
    let dropped = f.index("r", &[&b, &shared], Some("dropped")).await;
    f.age();
    f.gc(true);
    for d in [&a, &b, &shared, &inner, &outer, &dropped] {
        assert!(f.has_manifest("r", d));
    }

    // Untag `dropped`: it and `b` go, `shared` stays for `outer`.
    f.reg
        .manifest_delete(
            &repo("r"),
            &Reference::Tag(crate::name::Tag::parse("dropped").unwrap()),
        )
        .await
        .unwrap();
    let report = f.gc(true);
    assert_eq!(
        sorted(&report.manifests),
        sorted(&[("r".to_string(), dropped.clone()), ("r".to_string(), b)])
    );
    for d in [&a, &shared, &inner, &outer] {
        assert!(f.has_manifest("r", d));
    }
    for d in a_blobs.iter().chain(&shared_blobs) {
        assert!(f.has_blob(d));
    }
}

#[tokio::test]
async fn removal_order_puts_indexes_and_subjects_first() {
    let f = fixture();
    let (child, _) = f.image("r", "child", &[], None).await;
    let (sig, _) = f.artifact("r", "sig", &[], None, Some(&child)).await;
    let index = f.index("r", &[&child], None).await;
    let outer = f.index("r", &[&index], None).await;
    for candidates in [
        vec![sig.clone(), child.clone(), index.clone(), outer.clone()],
        vec![child.clone(), outer.clone(), sig.clone(), index.clone()],
    ] {
        let order: Vec<Digest> = removal_order(&*f.store, &repo("r"), candidates)
            .unwrap()
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        let pos = |d: &Digest| order.iter().position(|x| x == d).unwrap();
        assert!(pos(&outer) < pos(&index));
        assert!(pos(&index) < pos(&child));
        assert!(pos(&child) < pos(&sig));
    }
}

#[tokio::test]
async fn the_grace_period_keeps_young_and_touched_content() {
    let f = fixture();
    let (old, _) = f.blob("r", b"old").await;
    let (checked, _) = f.blob("r", b"checked by a client").await;
    let (mounted, _) = f.blob("r", b"mounted elsewhere").await;
    let (re_pushed, _) = f.blob("r", b"pushed again").await;
    let (old_child, old_child_blobs) = f.image("r", "old child", &[b"oc"], None).await;
    f.age();
    // Interest after the aging: HEAD, a mount, a completed upload.
    f.reg.blob_size(&repo("r"), &checked).await.unwrap();
    assert!(
        f.reg
            .blob_mount(&repo("s"), &repo("r"), &mounted)
            .await
            .unwrap()
    );
    f.blob("r", b"pushed again").await;
    // Young content: an unreferenced blob, an untagged manifest and an
    // untagged index whose (old) child must stay with it.
    let (young, _) = f.blob("r", b"young").await;
    let (young_image, young_blobs) = f.image("r", "young", &[b"y"], None).await;
    let young_index = f.index("r", &[&old_child], None).await;

    let report = f.gc(true);
    assert_eq!(
        report.blobs.iter().map(|(d, _)| d).collect::<Vec<_>>(),
        vec![&old]
    );
    assert!(report.manifests.is_empty());
    assert!(report.kept_young >= 5, "{report:?}");
    for d in [&checked, &mounted, &re_pushed, &young] {
        assert!(f.has_blob(d), "{d} went");
    }
    for d in young_blobs.iter().chain(&old_child_blobs) {
        assert!(f.has_blob(d));
    }
    assert!(f.has_manifest("r", &young_image));
    assert!(f.has_manifest("r", &young_index));
    assert!(f.has_manifest("r", &old_child));

    // With no grace at all, the same content goes.
    let report = f.gc_with(GcOptions {
        grace: Duration::ZERO,
        delete_untagged: true,
        dry_run: false,
    });
    assert_eq!(report.manifests.len(), 3);
    assert!(!f.has_blob(&young) && !f.has_blob(&checked));
    // `r` still has nothing tagged: it is gone, and `s` with it.
    assert_eq!(report.repositories, vec!["r", "s"]);
    assert!(f.store.repositories().unwrap().is_empty());
}

#[tokio::test]
async fn uploads_in_progress_are_left_alone() {
    let f = fixture();
    let r = repo("r");
    let (orphan, _) = f.blob("r", b"content of an orphan").await;
    let id = f.reg.upload_start(&r).await.unwrap();
    f.reg
        .upload_append(&r, &id, Some(0), None, body(b"content of "))
        .await
        .unwrap();
    let other = f.reg.upload_start(&r).await.unwrap();
    f.reg
        .upload_append(&r, &other, Some(0), None, body(b"never finished"))
        .await
        .unwrap();
    f.age();
    let report = f.gc(true);
    assert_eq!(report.blobs.len(), 1, "the orphan went");
    assert!(!f.has_blob(&orphan));
    assert_eq!(f.reg.upload_size(&r, &other).await.unwrap(), 14);
    // The session finishes into the blob the collection removed.
    f.reg
        .upload_finish(&r, &id, &orphan, Some(11), None, body(b"an orphan"))
        .await
        .unwrap();
    assert_eq!(f.reg.blob_size(&r, &orphan).await.unwrap(), 20);
    // Finished, the blob is young: kept until a grace period has passed.
    let report = f.gc(true);
    assert!(report.blobs.is_empty());
    assert!(f.has_blob(&orphan));
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_predicts_the_run() {
    let f = fixture();
    f.image("a", "kept", &[b"k"], Some("v1")).await;
    let (untagged, _) = f.image("a", "untagged", &[b"u"], None).await;
    let (sig, _) = f.artifact("a", "sig", &[], None, Some(&untagged)).await;
    f.blob("a", b"lone").await;
    f.blob("gone/entirely", b"only content").await;
    f.age();
    let before = f.snapshot();
    let dry = f.gc_with(GcOptions {
        dry_run: true,
        delete_untagged: true,
        ..GcOptions::default()
    });
    assert!(dry.dry_run);
    assert_eq!(f.snapshot(), before, "a dry run changed the store");
    assert_eq!(dry.manifests.len(), 2);
    assert!(dry.manifests.contains(&("a".into(), sig)));
    let real = f.gc(true);
    assert_eq!(sorted(&dry.manifests), sorted(&real.manifests));
    assert_eq!(sorted(&dry.blobs), sorted(&real.blobs));
    assert_eq!(sorted(&dry.links), sorted(&real.links));
    assert_eq!(dry.repositories, real.repositories);
    assert_eq!(real.repositories, vec!["gone/entirely"]);
    assert_eq!(dry.bytes(), real.bytes());
}

#[tokio::test]
async fn a_push_in_progress_keeps_what_it_references() {
    let f = fixture();
    let (a, _) = f.blob("r", b"layer of a push in progress").await;
    let (b, _) = f.blob("r", b"another").await;
    let (child, child_blobs) = f.image("r", "child", &[b"c"], None).await;
    f.age();
    let record = PinRecord {
        repo: "r".into(),
        manifest: Digest::sha256(b"the manifest being pushed"),
        blobs: vec![a.clone()],
        manifests: vec![child.clone()],
    };
    let pin = f.store.pin(&serde_json::to_vec(&record).unwrap()).unwrap();
    let report = f.gc(true);
    assert_eq!(
        report.blobs.iter().map(|(d, _)| d).collect::<Vec<_>>(),
        vec![&b]
    );
    assert!(f.has_blob(&a));
    assert!(f.has_manifest("r", &child));
    for d in &child_blobs {
        assert!(f.has_blob(d));
    }
    f.store.unpin(&pin).unwrap();
    let report = f.gc(true);
    assert_eq!(report.manifests, vec![("r".to_string(), child)]);
    assert!(!f.has_blob(&a));
}

#[tokio::test]
async fn interrupted_collections_leave_a_consistent_store() {
    let f = fixture();
    let r = repo("r");
    let (image, image_blobs) = f.image("r", "image", &[b"layer"], Some("v1")).await;
    let (sig, _) = f.artifact("r", "sig", &[], None, Some(&image)).await;
    let (lost, _) = f.blob("r", b"lost").await;
    let root = f.dir.path();
    let hex = |d: &Digest| d.hex().to_owned();
    // 1. Died after setting a layer aside (it had been touched, say).
    let layer = &image_blobs[1];
    let layer_path = root.join(format!("blobs/sha256/{}/{}", &hex(layer)[..2], hex(layer)));
    std::fs::rename(
        &layer_path,
        root.join(format!("trash/sha256-{}", hex(layer))),
    )
    .unwrap();
    // 2. Died between a revision and its referrers entry.
    std::fs::remove_file(root.join(format!(
        "repositories/r/_manifests/revisions/sha256/{}",
        hex(&sig)
    )))
    .unwrap();
    // 3. Died between a blob and its links.
    std::fs::remove_file(root.join(format!("blobs/sha256/{}/{}", &hex(&lost)[..2], hex(&lost))))
        .unwrap();

    // The registry serves consistently meanwhile.
    assert!(matches!(
        f.reg.blob_size(&r, &lost).await,
        Err(crate::service::RegistryError::BlobUnknown)
    ));
    assert!(f.reg.referrers(&r, &image, None).await.unwrap().is_empty());
    f.reg.blob_open(&r, layer).await.unwrap();
    assert!(layer_path.exists(), "a client's interest took it back");
    std::fs::rename(
        &layer_path,
        root.join(format!("trash/sha256-{}", hex(layer))),
    )
    .unwrap();

    // The next collection completes the work and puts back the rest.
    let report = f.gc(true);
    assert_eq!(report.recovered, 1);
    assert_eq!(report.stale_referrers, 1);
    assert_eq!(report.links, vec![("r".to_string(), lost)]);
    for d in &image_blobs {
        assert!(f.has_blob(d));
    }
    assert!(f.has_manifest("r", &image));
    assert!(
        std::fs::read_dir(root.join("trash"))
            .unwrap()
            .next()
            .is_none()
    );
}

#[test]
fn collections_take_turns() {
    let dir = tempfile::tempdir().unwrap();
    let path = GcLock::path_in(dir.path());
    let held = GcLock::acquire(&path).unwrap();
    let store = FsStore::open(dir.path()).unwrap();
    assert!(matches!(
        run(&store, &path, &GcOptions::default()),
        Err(GcError::Busy(_))
    ));
    drop(held);
    run(&store, &path, &GcOptions::default()).unwrap();
}
