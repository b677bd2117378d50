//! Blob reads over HTTP: headers, ranges, conditional requests, per-repository
//! visibility, deletion and digest validation.

mod common;

use common::*;
use reqwest::StatusCode;

#[tokio::test]
async fn head_and_get_headers() {
    let reg = start().await;
    // Several of the service's write batches and of the download chunks.
    let data = bytes((3 << 20) + 17, 7);
    let digest = reg.push_blob("lib/app", &data).await;
    let path = format!("/v2/lib/app/blobs/{digest}");
    let etag = format!("\"{digest}\"");

    let resp = send(reg.head(&path)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "content-length"),
        Some(data.len().to_string())
    );
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest.clone()));
    assert_eq!(header(&resp, "etag"), Some(etag.clone()));
    assert!(resp.bytes().await.unwrap().is_empty(), "HEAD has no body");

    let resp = send(reg.get(&path)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "content-length"),
        Some(data.len().to_string())
    );
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest.clone()));
    assert_eq!(header(&resp, "etag"), Some(etag));
    assert_eq!(
        header(&resp, "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
    let got = resp.bytes().await.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "content differs");

    // An empty blob.
    let digest = reg.push_blob("lib/app", b"").await;
    let resp = send(reg.get(&format!("/v2/lib/app/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-length").as_deref(), Some("0"));
    assert!(resp.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn range_requests() {
    let reg = start().await;
    let data = bytes(1000, 8);
    let digest = reg.push_blob("r", &data).await;
    let path = format!("/v2/r/blobs/{digest}");

    for (range, start, end) in [
        ("bytes=0-0", 0, 0),
        ("bytes=10-19", 10, 19),
        ("bytes=990-2000", 990, 999),
        ("bytes=500-", 500, 999),
        ("bytes=999-", 999, 999),
        ("bytes=-10", 990, 999),
        ("bytes=-1000", 0, 999),
        ("bytes=-5000", 0, 999),
    ] {
        let resp = send(reg.get(&path).header("range", range)).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&resp, "content-range"),
            Some(format!("bytes {start}-{end}/1000")),
            "{range}"
        );
        assert_eq!(
            header(&resp, "content-length"),
            Some((end - start + 1).to_string()),
            "{range}"
        );
        assert_eq!(header(&resp, "docker-content-digest"), Some(digest.clone()));
        let got = resp.bytes().await.unwrap();
        assert!(got == data[start..=end], "{range}: wrong bytes");
    }

    for range in [
        "bytes=1000-",
        "bytes=5000-6000",
        "bytes=-0",
        "bytes=1000-1000",
    ] {
        let resp = send(reg.get(&path).header("range", range)).await;
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(
            header(&resp, "content-range").as_deref(),
            Some("bytes */1000"),
            "{range}"
        );
        // The spec defines no code for this; it is still a spec error body.
        let v = json(resp).await;
        assert!(v["errors"][0]["code"].is_string(), "{range}: {v}");
    }

    // A range on an empty blob can never be satisfied.
    let empty = reg.push_blob("r", b"").await;
    let resp = send(
        reg.get(&format!("/v2/r/blobs/{empty}"))
            .header("range", "bytes=0-"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "content-range").as_deref(), Some("bytes */0"));

    // Several ranges: the whole blob.
    let resp = send(reg.get(&path).header("range", "bytes=0-1,5-6")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-range"), None);
    assert_eq!(resp.bytes().await.unwrap().len(), 1000);

    // Not a byte range: the whole blob.
    let resp = send(reg.get(&path).header("range", "items=0-1")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.bytes().await.unwrap().len(), 1000);
}

/// Blobs of 1 MiB and more are served from a memory map: the same ranges
/// must give the same bytes there.
#[tokio::test]
async fn range_requests_on_large_blobs() {
    let reg = start().await;
    let size = (2 << 20) + 5;
    let data = bytes(size, 9);
    let digest = reg.push_blob("big", &data).await;
    let path = format!("/v2/big/blobs/{digest}");
    let last = size - 1;
    for (range, start, end) in [
        ("bytes=0-0".to_owned(), 0, 0),
        (
            format!("bytes={}-{}", 1 << 20, (1 << 20) + 99),
            1 << 20,
            (1 << 20) + 99,
        ),
        ("bytes=-7".to_owned(), size - 7, last),
        (format!("bytes={}-", last - 3), last - 3, last),
        (format!("bytes=5-{}", size * 2), 5, last),
    ] {
        let resp = send(reg.get(&path).header("range", &range)).await;
        assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(
            header(&resp, "content-range"),
            Some(format!("bytes {start}-{end}/{size}")),
            "{range}"
        );
        let got = resp.bytes().await.unwrap();
        assert!(got == data[start..=end], "{range}: wrong bytes");
    }
    let resp = send(reg.get(&path).header("range", format!("bytes={size}-"))).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    let got = send(reg.get(&path)).await.bytes().await.unwrap();
    assert!(got == data, "whole large blob differs");
}

#[tokio::test]
async fn if_none_match() {
    let reg = start().await;
    let digest = reg.push_blob("r", b"cached").await;
    let path = format!("/v2/r/blobs/{digest}");
    let etag = format!("\"{digest}\"");

    for tag in [
        etag.clone(),
        format!("\"sha256:{}\", {etag}", "0".repeat(64)),
        "*".into(),
    ] {
        let resp = send(reg.get(&path).header("if-none-match", &tag)).await;
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "{tag}");
        assert_eq!(header(&resp, "etag"), Some(etag.clone()));
        assert!(resp.bytes().await.unwrap().is_empty());
        let resp = send(reg.head(&path).header("if-none-match", &tag)).await;
        assert_eq!(resp.status(), StatusCode::NOT_MODIFIED, "HEAD {tag}");
    }
    let resp = send(
        reg.get(&path)
            .header("if-none-match", format!("\"sha256:{}\"", "0".repeat(64))),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(&resp.bytes().await.unwrap()[..], b"cached");
}

#[tokio::test]
async fn blobs_are_visible_only_where_linked() {
    let reg = start().await;
    let digest = reg.push_blob("a", b"private to a").await;
    assert_eq!(
        send(reg.get(&format!("/v2/a/blobs/{digest}")))
            .await
            .status(),
        StatusCode::OK
    );
    for repo in ["b", "a/b", "aa"] {
        let resp = send(reg.get(&format!("/v2/{repo}/blobs/{digest}"))).await;
        expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
        let resp = send(reg.head(&format!("/v2/{repo}/blobs/{digest}"))).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert!(resp.bytes().await.unwrap().is_empty());
        let resp = send(reg.delete(&format!("/v2/{repo}/blobs/{digest}"))).await;
        expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    }
    let unknown = sha256(b"never pushed");
    let resp = send(reg.get(&format!("/v2/a/blobs/{unknown}"))).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;

    // A manifest is stored as content, but is not a blob of the repository.
    let (_, manifest) = push_image(&reg, "a", "v1", 3).await;
    let resp = send(reg.get(&format!("/v2/a/blobs/{manifest}"))).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn delete_unlinks_from_one_repository() {
    let reg = start().await;
    let data = b"shared layer";
    let digest = reg.push_blob("a", data).await;
    reg.push_blob("b", data).await;

    let resp = send(reg.delete(&format!("/v2/a/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    let resp = send(reg.get(&format!("/v2/a/blobs/{digest}"))).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let resp = send(reg.head(&format!("/v2/a/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let resp = send(reg.delete(&format!("/v2/a/blobs/{digest}"))).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;

    // Still served where it is still linked.
    let resp = send(reg.get(&format!("/v2/b/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(&resp.bytes().await.unwrap()[..], data);
}

#[tokio::test]
async fn invalid_digests_are_400_digest_invalid() {
    let reg = start().await;
    reg.push_blob("r", b"x").await;
    let upload = reg.start_upload("r").await;
    let bad = [
        "nocolon".to_owned(),
        "sha256:".to_owned(),
        "sha256:zz".to_owned(),
        format!("sha256:{}", "a".repeat(63)),
        format!("sha256:{}", "a".repeat(65)),
        format!("sha256:{}", "A".repeat(64)),
        format!("sha512:{}", "a".repeat(64)),
        format!("md5:{}", "a".repeat(32)),
        format!("SHA256:{}", "a".repeat(64)),
        format!("sha256:{}%2f", "a".repeat(63)),
        "sha256:%2e%2e".to_owned(),
        ":".to_owned(),
    ];
    for d in &bad {
        for rb in [
            reg.get(&format!("/v2/r/blobs/{d}")),
            reg.delete(&format!("/v2/r/blobs/{d}")),
            reg.get(&format!("/v2/r/referrers/{d}")),
            reg.post(&format!("/v2/r/blobs/uploads/?digest={d}"))
                .body("x"),
            reg.post(&format!("/v2/r/blobs/uploads/?mount={d}&from=r")),
            reg.put(&format!("{upload}?digest={d}")),
        ] {
            let resp = send(rb).await;
            expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
        }
        let resp = send(reg.head(&format!("/v2/r/blobs/{d}"))).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "HEAD {d}");
    }
    // Manifest references that look like digests are validated as digests.
    for d in bad.iter().filter(|d| d.contains(':')) {
        let resp = send(reg.get(&format!("/v2/r/manifests/{d}"))).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    }
    // The session survived every refused PUT.
    let resp = send(reg.get(&upload)).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

/// A link whose content is gone (e.g. collected) is an unknown blob, not an
/// internal error.
#[tokio::test]
async fn linked_blob_with_missing_content() {
    let reg = start().await;
    let digest = reg.push_blob("r", b"soon gone").await;
    let hex = digest.strip_prefix("sha256:").unwrap();
    std::fs::remove_file(reg.store.join(format!("blobs/sha256/{}/{hex}", &hex[..2]))).unwrap();
    let resp = send(reg.get(&format!("/v2/r/blobs/{digest}"))).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    let resp = send(reg.head(&format!("/v2/r/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    // Cannot be mounted elsewhere either.
    let resp = send(reg.post(&format!("/v2/s/blobs/uploads/?mount={digest}&from=r"))).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    // Pushing it again restores it.
    reg.push_blob("r", b"soon gone").await;
    let resp = send(reg.get(&format!("/v2/r/blobs/{digest}"))).await;
    assert_eq!(&resp.bytes().await.unwrap()[..], b"soon gone");
}
