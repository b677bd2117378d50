//! The behaviour every [`Store`] implementation must show. Each
//! implementation's tests call [`run_all`] with a fresh, empty store.

use std::io::{Read, Write};
use std::time::Duration;

use super::*;

fn repo(s: &str) -> RepoName {
    RepoName::parse(s).unwrap()
}

fn put_blob(store: &dyn Store, r: &RepoName, data: &[u8]) -> Digest {
    let id = store.upload_create(r).unwrap();
    let mut w = store.upload_append(r, &id, 0).unwrap();
    w.write_all(data).unwrap();
    assert_eq!(w.commit().unwrap(), data.len() as u64);
    let d = Digest::sha256(data);
    store.upload_commit(r, &id, &d).unwrap();
    d
}

pub fn run_all(make: &dyn Fn() -> Box<dyn Store>) {
    blobs_are_shared_and_linked_per_repository(&*make());
    uploads_append_roll_back_and_resume(&*make());
    uploads_belong_to_their_repository(&*make());
    stale_uploads_are_purged(&*make());
    manifests_tags_and_referrers(&*make());
    catalog_lists_nested_repositories(&*make());
    blob_interest_and_collection(&*make());
    manifest_interest_and_collection(&*make());
    empty_repositories_are_pruned(&*make());
    pins_are_listed_until_removed(&*make());
}

/// Long enough for the store's clock to move past what was just stored
/// (file timestamps advance a scheduler tick at a time).
fn tick() {
    std::thread::sleep(Duration::from_millis(30));
}

fn modified(s: &dyn Store, d: &Digest) -> std::time::SystemTime {
    s.blobs()
        .unwrap()
        .into_iter()
        .find(|b| &b.digest == d)
        .map(|b| b.modified)
        .unwrap()
}

fn blob_interest_and_collection(s: &dyn Store) {
    let r = repo("gc/blobs");
    let before = s.now().unwrap();
    let (old, touched, again) = (
        put_blob(s, &r, b"old"),
        put_blob(s, &r, b"touched"),
        put_blob(s, &r, b"again"),
    );
    let mut listed: Vec<(Digest, u64)> = s
        .blobs()
        .unwrap()
        .into_iter()
        .map(|b| (b.digest, b.size))
        .collect();
    listed.sort();
    let mut want = vec![(old.clone(), 3), (touched.clone(), 7), (again.clone(), 5)];
    want.sort();
    assert_eq!(listed, want);
    assert!(modified(s, &old) >= before, "stamped in the store's clock");
    tick();
    let cutoff = s.now().unwrap();
    assert!(modified(s, &old) < cutoff);

    // Interest refreshes the time; the collection then keeps the blob.
    assert_eq!(s.blob_touch(&touched).unwrap(), Some(7));
    assert!(modified(s, &touched) >= cutoff);
    assert_eq!(s.blob_collect(&touched, cutoff).unwrap(), None);
    assert_eq!(s.blob_size(&touched).unwrap(), Some(7));
    // Committing content that exists is interest too.
    assert_eq!(put_blob(s, &r, b"again"), again);
    assert!(modified(s, &again) >= cutoff);
    assert_eq!(s.blob_collect(&again, cutoff).unwrap(), None);

    // An untouched old blob goes; touching it then finds nothing.
    assert_eq!(s.blob_collect(&old, cutoff).unwrap(), Some(3));
    assert_eq!(s.blob_size(&old).unwrap(), None);
    assert_eq!(s.blob_touch(&old).unwrap(), None);
    assert_eq!(s.blob_collect(&old, cutoff).unwrap(), None);

    // Links: only those of missing blobs are pruned.
    let mut links = s.blob_links(&r).unwrap();
    links.sort();
    let mut want = vec![old.clone(), touched.clone(), again.clone()];
    want.sort();
    assert_eq!(links, want);
    assert!(!s.blob_link_prune(&r, &touched).unwrap());
    assert!(s.blob_link_prune(&r, &old).unwrap());
    assert!(!s.blob_link_prune(&r, &old).unwrap());
    assert!(!s.blob_linked(&r, &old).unwrap());
    assert!(s.blob_linked(&r, &touched).unwrap());
    // Pushing the content again brings blob and link back.
    assert_eq!(put_blob(s, &r, b"old"), old);
    assert!(s.blob_linked(&r, &old).unwrap());
    assert_eq!(s.gc_recover().unwrap(), 0);
}

fn manifest_interest_and_collection(s: &dyn Store) {
    let r = repo("gc/manifests");
    let subject = Digest::sha256(b"the subject");
    let put = |content: &[u8], with_subject: bool| {
        let d = Digest::sha256(content);
        let m = StoredManifest {
            media_type: "application/x-test".into(),
            content: content.to_vec(),
        };
        let entry = format!("{{\"digest\":\"{d}\"}}");
        let referrer = with_subject.then_some((&subject, entry.as_bytes()));
        s.manifest_put(&r, &d, &m, referrer).unwrap();
        d
    };
    let (referrer, kept) = (put(b"referrer", true), put(b"kept", false));
    let mut listed: Vec<Digest> = s
        .manifest_revisions(&r)
        .unwrap()
        .into_iter()
        .map(|e| e.digest)
        .collect();
    listed.sort();
    let mut want = vec![referrer.clone(), kept.clone()];
    want.sort();
    assert_eq!(listed, want);
    assert!(s.manifest_revisions(&repo("gc/none")).unwrap().is_empty());
    tick();
    let cutoff = s.now().unwrap();
    assert!(s.manifest_touch(&r, &kept).unwrap());
    assert!(!s.manifest_touch(&r, &Digest::sha256(b"never")).unwrap());
    assert!(!s.manifest_collect(&r, &kept, None, cutoff).unwrap());
    assert!(s.manifest_exists(&r, &kept).unwrap());

    assert_eq!(s.referrers(&r, &subject).unwrap().len(), 1);
    assert!(
        s.manifest_collect(&r, &referrer, Some(&subject), cutoff)
            .unwrap()
    );
    assert!(!s.manifest_exists(&r, &referrer).unwrap());
    assert!(
        s.referrers(&r, &subject).unwrap().is_empty(),
        "its referrers entry went too"
    );
    assert!(
        !s.manifest_collect(&r, &referrer, Some(&subject), cutoff)
            .unwrap()
    );
    assert_eq!(s.referrers_prune(&r).unwrap(), 0);
    // The content blob is the blob phase's business.
    assert!(s.blob_size(&referrer).unwrap().is_some());
}

fn empty_repositories_are_pruned(s: &dyn Store) {
    let (parent, child, other) = (repo("p"), repo("p/q"), repo("p/r"));
    let d = put_blob(s, &parent, b"p");
    put_blob(s, &child, b"q");
    let content = br#"{"m":1}"#;
    let md = Digest::sha256(content);
    let m = StoredManifest {
        media_type: "application/x-test".into(),
        content: content.to_vec(),
    };
    s.manifest_put(&other, &md, &m, None).unwrap();
    let tag = Tag::parse("t").unwrap();
    s.tag_set(&other, &tag, &md).unwrap();
    for r in [&parent, &child, &other] {
        assert!(!s.repository_prune(r).unwrap(), "{r} holds something");
    }
    assert!(s.blob_unlink(&parent, &d).unwrap());
    assert!(s.repository_prune(&parent).unwrap());
    assert_eq!(s.repositories().unwrap(), vec!["p/q", "p/r"]);
    assert!(s.tags_list(&parent).unwrap().is_none());
    // A tag alone keeps a repository; so does a revision alone.
    assert!(s.tag_delete(&other, &tag).unwrap());
    assert!(!s.repository_prune(&other).unwrap());
    assert!(s.manifest_delete(&other, &md, None).unwrap());
    assert!(s.repository_prune(&other).unwrap());
    assert_eq!(s.repositories().unwrap(), vec!["p/q"]);
    // A pruned repository can be written again.
    s.blob_link(&parent, &d).unwrap();
    s.manifest_put(&other, &md, &m, None).unwrap();
    s.tag_set(&other, &tag, &md).unwrap();
    assert_eq!(s.repositories().unwrap(), vec!["p", "p/q", "p/r"]);
    assert_eq!(s.tag_get(&other, &tag).unwrap(), Some(md));
}

fn pins_are_listed_until_removed(s: &dyn Store) {
    assert!(s.pins().unwrap().is_empty());
    let a = s.pin(b"a").unwrap();
    let b = s.pin(b"b").unwrap();
    assert_ne!(a, b);
    let mut pins = s.pins().unwrap();
    pins.sort();
    assert_eq!(pins, vec![b"a".to_vec(), b"b".to_vec()]);
    s.unpin(&a).unwrap();
    s.unpin(&a).unwrap();
    assert_eq!(s.pins().unwrap(), vec![b"b".to_vec()]);
    s.unpin(&b).unwrap();
    assert!(s.pins().unwrap().is_empty());
}

fn blobs_are_shared_and_linked_per_repository(s: &dyn Store) {
    let (a, b) = (repo("a"), repo("b/c"));
    let d = put_blob(s, &a, b"hello");
    assert_eq!(s.blob_size(&d).unwrap(), Some(5));
    assert!(s.blob_linked(&a, &d).unwrap());
    assert!(!s.blob_linked(&b, &d).unwrap());
    let (mut r, len) = s.blob_open(&d).unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert_eq!((got.as_slice(), len), (&b"hello"[..], 5));
    // A store that maps blobs must map exactly their content.
    let big: Vec<u8> = (0..3 << 20).map(|i: u32| (i % 251) as u8).collect();
    let bd = put_blob(s, &a, &big);
    if let Some(mapped) = s.blob_map(&bd).unwrap() {
        assert_eq!(mapped.as_ref(), big.as_slice());
    }
    let (mut r, len) = s.blob_open(&bd).unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).unwrap();
    assert_eq!((got.len() as u64, got == big), (len, true));
    s.blob_link(&b, &d).unwrap();
    s.blob_link(&b, &d).unwrap(); // idempotent
    assert!(s.blob_linked(&b, &d).unwrap());
    assert!(s.blob_unlink(&a, &d).unwrap());
    assert!(!s.blob_unlink(&a, &d).unwrap());
    assert!(!s.blob_linked(&a, &d).unwrap());
    assert_eq!(
        s.blob_size(&d).unwrap(),
        Some(5),
        "unlink keeps the content"
    );
    // Committing the same content again is harmless.
    assert_eq!(put_blob(s, &a, b"hello"), d);
    assert!(s.blob_delete(&d).unwrap());
    assert_eq!(s.blob_size(&d).unwrap(), None);
    assert!(matches!(s.blob_open(&d), Err(StoreError::NotFound)));
}

fn uploads_append_roll_back_and_resume(s: &dyn Store) {
    let r = repo("up");
    let id = s.upload_create(&r).unwrap();
    assert_eq!(s.upload_info(&r, &id).unwrap().unwrap().size, 0);
    let mut w = s.upload_append(&r, &id, 0).unwrap();
    w.write_all(b"abc").unwrap();
    assert_eq!(w.commit().unwrap(), 3);
    // A chunk dropped before commit is rolled back.
    let mut w = s.upload_append(&r, &id, 3).unwrap();
    w.write_all(b"garbage").unwrap();
    drop(w);
    assert_eq!(s.upload_info(&r, &id).unwrap().unwrap().size, 3);
    // Writers must start at the end.
    assert!(matches!(
        s.upload_append(&r, &id, 1),
        Err(StoreError::OffsetMismatch {
            stored: 3,
            requested: 1
        })
    ));
    let mut w = s.upload_append(&r, &id, 3).unwrap();
    w.write_all(b"def").unwrap();
    w.commit().unwrap();
    let mut got = Vec::new();
    s.upload_read(&r, &id)
        .unwrap()
        .read_to_end(&mut got)
        .unwrap();
    assert_eq!(got, b"abcdef");
    let d = Digest::sha256(b"abcdef");
    s.upload_commit(&r, &id, &d).unwrap();
    assert!(
        s.upload_info(&r, &id).unwrap().is_none(),
        "committed session is gone"
    );
    assert!(s.blob_linked(&r, &d).unwrap());
    // Cancel.
    let id = s.upload_create(&r).unwrap();
    assert!(s.upload_cancel(&r, &id).unwrap());
    assert!(!s.upload_cancel(&r, &id).unwrap());
    assert!(s.upload_info(&r, &id).unwrap().is_none());
}

fn uploads_belong_to_their_repository(s: &dyn Store) {
    let (a, b) = (repo("owner"), repo("other"));
    let id = s.upload_create(&a).unwrap();
    assert!(s.upload_info(&b, &id).unwrap().is_none());
    assert!(s.upload_append(&b, &id, 0).is_err());
    assert!(!s.upload_cancel(&b, &id).unwrap());
    assert!(s.upload_info(&a, &id).unwrap().is_some());
    let unknown = UploadId::new_random();
    assert!(s.upload_info(&a, &unknown).unwrap().is_none());
}

fn stale_uploads_are_purged(s: &dyn Store) {
    let r = repo("stale");
    let id = s.upload_create(&r).unwrap();
    assert!(
        s.uploads_purge(Duration::from_secs(3600))
            .unwrap()
            .is_empty()
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        s.uploads_purge(Duration::from_millis(1)).unwrap(),
        vec![id.clone()]
    );
    assert!(s.upload_info(&r, &id).unwrap().is_none());
}

fn manifests_tags_and_referrers(s: &dyn Store) {
    let r = repo("m/n");
    assert!(s.tags_list(&r).unwrap().is_none());
    let content = br#"{"schemaVersion":2}"#.to_vec();
    let d = Digest::sha256(&content);
    let m = StoredManifest {
        media_type: "application/x-test".into(),
        content: content.clone(),
    };
    let subject = Digest::sha256(b"subject");
    s.manifest_put(&r, &d, &m, Some((&subject, b"{\"desc\":1}")))
        .unwrap();
    assert!(s.manifest_exists(&r, &d).unwrap());
    assert!(!s.manifest_exists(&repo("elsewhere"), &d).unwrap());
    let got = s.manifest_get(&r, &d).unwrap().unwrap();
    assert_eq!(
        (got.media_type.as_str(), got.content),
        ("application/x-test", content)
    );
    assert_eq!(
        s.referrers(&r, &subject).unwrap(),
        vec![b"{\"desc\":1}".to_vec()]
    );
    assert!(s.referrers(&r, &d).unwrap().is_empty());

    let (t1, t2) = (Tag::parse("v1").unwrap(), Tag::parse("A-latest").unwrap());
    s.tag_set(&r, &t1, &d).unwrap();
    s.tag_set(&r, &t2, &d).unwrap();
    assert_eq!(s.tag_get(&r, &t1).unwrap(), Some(d.clone()));
    assert_eq!(s.tags_list(&r).unwrap().unwrap(), vec!["A-latest", "v1"]);
    assert!(s.tag_delete(&r, &t2).unwrap());
    assert!(!s.tag_delete(&r, &t2).unwrap());
    assert!(
        s.manifest_exists(&r, &d).unwrap(),
        "deleting a tag keeps the manifest"
    );

    assert!(s.manifest_delete(&r, &d, Some(&subject)).unwrap());
    assert!(!s.manifest_delete(&r, &d, Some(&subject)).unwrap());
    assert!(s.manifest_get(&r, &d).unwrap().is_none());
    assert_eq!(
        s.tag_get(&r, &t1).unwrap(),
        None,
        "tags of a deleted manifest go"
    );
    assert!(s.referrers(&r, &subject).unwrap().is_empty());
    assert_eq!(s.tags_list(&r).unwrap(), Some(vec![]));
}

fn catalog_lists_nested_repositories(s: &dyn Store) {
    for name in ["zeta", "alpha/one", "alpha", "alpha/two/three"] {
        put_blob(s, &repo(name), name.as_bytes());
    }
    assert_eq!(
        s.repositories().unwrap(),
        vec!["alpha", "alpha/one", "alpha/two/three", "zeta"]
    );
}
