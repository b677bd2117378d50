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
