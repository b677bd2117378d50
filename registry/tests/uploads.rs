//! Blob uploads over HTTP: monolithic, POST-then-PUT, chunked (with and
//! without Content-Range, with streamed bodies), session status and
//! cancellation, cross-repository mounts, digest checks, resumption after a
//! restart, stale-session purging and concurrency.

mod common;

use std::time::Duration;

use berth_registry::RegistryConfig;
use common::*;
use reqwest::{Body, StatusCode};

/// The `Range` an upload of `size` bytes reports.
fn range_of(size: usize) -> String {
    format!("0-{}", size.saturating_sub(1))
}

async fn upload_status(srv: &Server, location: &str) -> reqwest::Response {
    send(srv.get(location)).await
}

async fn assert_upload_size(srv: &Server, location: &str, size: usize) {
    let resp = upload_status(srv, location).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{location}");
    assert_eq!(header(&resp, "range"), Some(range_of(size)), "{location}");
}

async fn patch(
    srv: &Server,
    location: &str,
    range: Option<&str>,
    data: &[u8],
) -> reqwest::Response {
    let mut rb = srv
        .patch(location)
        .header("content-type", "application/octet-stream")
        .body(data.to_vec());
    if let Some(r) = range {
        rb = rb.header("content-range", r);
    }
    send(rb).await
}

fn join(location: &str, query: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}{query}")
}

/// Files under the store's `blobs/` directory.
fn stored_blobs(reg: &TestRegistry) -> std::collections::BTreeSet<std::path::PathBuf> {
    files(&reg.store.join("blobs"))
}

#[tokio::test]
async fn monolithic_post() {
    let reg = start().await;
    let data = bytes(100_000, 1);
    let digest = sha256(&data);
    let resp = send(
        reg.post(&format!("/v2/lib/app/blobs/uploads/?digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(data.clone()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        header(&resp, "location"),
        Some(format!("/v2/lib/app/blobs/{digest}"))
    );
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest.clone()));
    let location = header(&resp, "location").unwrap();
    let resp = send(reg.get(&location)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.unwrap() == data);
    // No session is left behind.
    assert!(files(&reg.store.join("uploads")).is_empty());

    // Again: the blob exists already, still 201.
    let resp = send(
        reg.post(&format!("/v2/lib/app/blobs/uploads/?digest={digest}"))
            .body(data.clone()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn monolithic_post_with_wrong_digest_stores_nothing() {
    let reg = start().await;
    let before = stored_blobs(&reg);
    let claimed = sha256(b"something else");
    let resp = send(
        reg.post(&format!("/v2/r/blobs/uploads/?digest={claimed}"))
            .body(b"actual content".to_vec()),
    )
    .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    for d in [claimed, sha256(b"actual content")] {
        let resp = send(reg.head(&format!("/v2/r/blobs/{d}"))).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(stored_blobs(&reg), before);
    assert!(files(&reg.store.join("uploads")).is_empty());
}

#[tokio::test]
async fn post_then_put_with_body() {
    let reg = start().await;
    let resp = send(reg.post("/v2/r/blobs/uploads/")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location").unwrap();
    assert!(location.starts_with("/v2/r/blobs/uploads/"), "{location}");
    let id = header(&resp, "docker-upload-uuid").unwrap();
    assert!(location.ends_with(&id));
    assert_eq!(header(&resp, "range").as_deref(), Some("0-0"));
    assert_upload_size(&reg, &location, 0).await;

    let data = bytes(5000, 2);
    let digest = sha256(&data);
    let resp = send(
        reg.put(&join(&location, &format!("digest={digest}")))
            .header("content-type", "application/octet-stream")
            .body(data.clone()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        header(&resp, "location"),
        Some(format!("/v2/r/blobs/{digest}"))
    );
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest.clone()));
    let resp = send(reg.get(&format!("/v2/r/blobs/{digest}"))).await;
    assert!(resp.bytes().await.unwrap() == data);

    // The finished session is gone.
    let resp = upload_status(&reg, &location).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;

    // The uploads endpoint without its trailing slash.
    let resp = send(reg.post("/v2/r/blobs/uploads")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location").unwrap();
    let resp = send(
        reg.put(&join(&location, &format!("digest={}", sha256(b"z"))))
            .body(&b"z"[..]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    // An empty digest parameter.
    let resp = send(reg.post("/v2/r/blobs/uploads/?digest=").body(&b"z"[..])).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn chunked_upload_with_content_range() {
    let reg = start().await;
    let data = bytes(30_000, 3);
    let digest = sha256(&data);
    let location = reg.start_upload("lib/app").await;

    // Without, with the `bytes=` prefix, and in the RFC form.
    let mut at = 0;
    for (n, range) in [
        (10_000, "0-9999".to_owned()),
        (5_000, "bytes=10000-14999".to_owned()),
        (7_000, "bytes 15000-21999/*".to_owned()),
    ] {
        let resp = patch(&reg, &location, Some(&range), &data[at..at + n]).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{range}");
        at += n;
        assert_eq!(header(&resp, "range"), Some(range_of(at)), "{range}");
        assert_eq!(header(&resp, "location"), Some(location.clone()));
        assert_eq!(header(&resp, "content-length").as_deref(), Some("0"));
        assert!(header(&resp, "docker-upload-uuid").is_some());
        assert_upload_size(&reg, &location, at).await;
    }
    // The closing PUT carries the last chunk.
    let resp = send(
        reg.put(&join(&location, &format!("digest={digest}")))
            .header("content-range", format!("{at}-{}", data.len() - 1))
            .body(data[at..].to_vec()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest.clone()));
    let resp = send(reg.get(&format!("/v2/lib/app/blobs/{digest}"))).await;
    assert!(resp.bytes().await.unwrap() == data);
}

#[tokio::test]
async fn chunked_upload_without_content_range_and_empty_put() {
    let reg = start().await;
    let data = bytes(12_345, 4);
    let digest = sha256(&data);
    let location = reg.start_upload("r").await;
    for (i, chunk) in data.chunks(4000).enumerate() {
        let resp = patch(&reg, &location, None, chunk).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        assert_eq!(
            header(&resp, "range"),
            Some(range_of((i * 4000 + chunk.len()).min(data.len())))
        );
    }
    let resp = send(reg.put(&join(&location, &format!("digest={digest}")))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = send(reg.get(&format!("/v2/r/blobs/{digest}"))).await;
    assert!(resp.bytes().await.unwrap() == data);
}

#[tokio::test]
async fn streamed_chunk_of_unknown_length() {
    let reg = start().await;
    let data = bytes((2 << 20) + 999, 5);
    let digest = sha256(&data);
    let location = reg.start_upload("r").await;

    let head = data[..1000].to_vec();
    let resp = patch(&reg, &location, Some("0-999"), &head).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    // The rest as a stream of uneven pieces: no Content-Length, so reqwest
    // sends `Transfer-Encoding: chunked`.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> = data[1000..]
        .chunks(65_537)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let resp = send(
        reg.patch(&location)
            .body(Body::wrap_stream(futures_util::stream::iter(pieces))),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "range"), Some(range_of(data.len())));

    let resp = send(reg.put(&join(&location, &format!("digest={digest}")))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = send(reg.head(&format!("/v2/r/blobs/{digest}"))).await;
    assert_eq!(
        header(&resp, "content-length"),
        Some(data.len().to_string())
    );

    // A streamed monolithic POST and a streamed closing PUT work too.
    let data = bytes(300_000, 6);
    let digest = sha256(&data);
    let stream = futures_util::stream::iter(
        data.chunks(10_000)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = send(
        reg.post(&format!("/v2/r/blobs/uploads/?digest={digest}"))
            .body(Body::wrap_stream(stream)),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = reg.start_upload("r").await;
    let stream = futures_util::stream::iter(
        data.chunks(7_000)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let resp = send(
        reg.put(&join(&location, &format!("digest={digest}")))
            .body(Body::wrap_stream(stream)),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn out_of_order_and_repeated_chunks_are_416() {
    let reg = start().await;
    let data = bytes(30, 7);
    let location = reg.start_upload("r").await;

    // Not starting at 0 on an empty upload.
    let resp = patch(&reg, &location, Some("5-9"), &data[5..10]).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "range").as_deref(), Some("0-0"));
    expect_error(
        resp,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "BLOB_UPLOAD_INVALID",
    )
    .await;

    let resp = patch(&reg, &location, Some("0-9"), &data[..10]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    // A gap.
    let resp = patch(&reg, &location, Some("20-29"), &data[20..]).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "range").as_deref(), Some("0-9"));
    expect_error(
        resp,
        StatusCode::RANGE_NOT_SATISFIABLE,
        "BLOB_UPLOAD_INVALID",
    )
    .await;

    // The same chunk again, and an overlapping one.
    for (range, chunk) in [("0-9", &data[..10]), ("bytes=5-14", &data[5..15])] {
        let resp = patch(&reg, &location, Some(range), chunk).await;
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{range}");
        assert_eq!(header(&resp, "range").as_deref(), Some("0-9"), "{range}");
        expect_error(
            resp,
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
        )
        .await;
    }
    // A range that ends before it starts.
    let resp = patch(&reg, &location, Some("10-5"), &data[..6]).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);

    // A closing PUT with an out-of-order final chunk.
    let digest = sha256(&data);
    let resp = send(
        reg.put(&join(&location, &format!("digest={digest}")))
            .header("content-range", "15-29")
            .body(data[15..].to_vec()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "range").as_deref(), Some("0-9"));

    // Nothing above changed the session; it completes normally.
    assert_upload_size(&reg, &location, 10).await;
    let resp = patch(&reg, &location, Some("10-29"), &data[10..]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = send(reg.put(&join(&location, &format!("digest={digest}")))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = send(reg.get(&format!("/v2/r/blobs/{digest}"))).await;
    assert!(resp.bytes().await.unwrap() == data);
}

#[tokio::test]
async fn chunk_length_must_match_its_content_range() {
    let reg = start().await;
    let location = reg.start_upload("r").await;
    let resp = patch(&reg, &location, Some("0-4"), b"hello").await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    // Shorter and longer than declared.
    for (range, body) in [
        ("5-14", &b"abc"[..]),
        ("5-6", &b"abcdef"[..]),
        ("bytes=5-1000", &b"x"[..]),
    ] {
        let resp = patch(&reg, &location, Some(range), body).await;
        let status = resp.status();
        assert!(status.is_client_error(), "{range}: {status}");
        expect_error(resp, StatusCode::BAD_REQUEST, "SIZE_INVALID").await;
        assert_upload_size(&reg, &location, 5).await;
    }
    // Also on the closing PUT: refused, nothing appended, nothing stored.
    let digest = sha256(b"helloabc");
    let resp = send(
        reg.put(&join(&location, &format!("digest={digest}")))
            .header("content-range", "5-9")
            .body(&b"abc"[..]),
    )
    .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "SIZE_INVALID").await;
    assert_upload_size(&reg, &location, 5).await;
    let resp = send(reg.head(&format!("/v2/r/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // Malformed ranges.
    for range in ["5", "a-b", "5-", "-5", "bytes=x-9"] {
        let resp = patch(&reg, &location, Some(range), b"abc").await;
        expect_error(resp, StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID").await;
    }

    let resp = patch(&reg, &location, Some("5-7"), b"abc").await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = send(reg.put(&join(&location, &format!("digest={digest}")))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn upload_status_and_cancel() {
    let reg = start().await;
    let location = reg.start_upload("lib/app").await;
    let resp = patch(&reg, &location, None, &bytes(777, 8)).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    let resp = upload_status(&reg, &location).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "range").as_deref(), Some("0-776"));
    assert_eq!(header(&resp, "location"), Some(location.clone()));
    let id = location.rsplit('/').next().unwrap();
    assert_eq!(header(&resp, "docker-upload-uuid").as_deref(), Some(id));

    let resp = send(reg.delete(&location)).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(
        !reg.store.join("uploads").join(id).exists(),
        "session data removed"
    );

    let resp = upload_status(&reg, &location).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let resp = send(reg.delete(&location)).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let resp = patch(&reg, &location, None, b"more").await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let digest = sha256(b"more");
    let resp = send(
        reg.put(&join(&location, &format!("digest={digest}")))
            .body(&b"more"[..]),
    )
    .await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let resp = send(reg.head(&format!("/v2/lib/app/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn unknown_and_garbage_upload_ids() {
    let reg = start().await;
    let digest = sha256(b"x");
    for id in [
        "0".repeat(32),
        "f".repeat(32),
        "0".repeat(31),
        "0".repeat(33),
        "A".repeat(32),
        "g".repeat(32),
        "not-an-upload".to_owned(),
        "..%2f..%2fblobs".to_owned(),
        "00000000-0000-0000-0000-000000000000".to_owned(),
    ] {
        let location = format!("/v2/r/blobs/uploads/{id}");
        for rb in [
            reg.get(&location),
            reg.patch(&location).body(&b"x"[..]),
            reg.put(&format!("{location}?digest={digest}"))
                .body(&b"x"[..]),
            reg.delete(&location),
        ] {
            let resp = send(rb).await;
            expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
        }
    }
    // Dot segments, sent as they are (a URL parser would resolve them).
    for id in ["..", "%2e%2e", ".", "%2E", "..%2f..%2f..%2fetc"] {
        let location = format!("/v2/r/blobs/uploads/{id}");
        for (method, path) in [
            ("GET", location.clone()),
            ("PATCH", location.clone()),
            ("PUT", format!("{location}?digest={digest}")),
            ("DELETE", location.clone()),
        ] {
            let resp = reg.raw(method, &path, b"x").await;
            assert_eq!(resp.status, 404, "{method} {path}");
            assert_eq!(resp.code(), "BLOB_UPLOAD_UNKNOWN", "{method} {path}");
        }
    }
    assert!(files(&reg.store.join("uploads")).is_empty());
    assert!(files(&reg.store.join("blobs")).is_empty());
    assert!(
        tree(&reg.store)
            .iter()
            .all(|p| !p.starts_with("repositories/r"))
    );
}

#[tokio::test]
async fn upload_ids_belong_to_their_repository() {
    let reg = start().await;
    let location = reg.start_upload("a").await;
    let resp = patch(&reg, &location, None, b"abc").await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = location.rsplit('/').next().unwrap();
    let digest = sha256(b"abcdef");

    for repo in ["b", "a/a", "aa"] {
        let other = format!("/v2/{repo}/blobs/uploads/{id}");
        for rb in [
            reg.get(&other),
            reg.patch(&other).body(&b"def"[..]),
            reg.put(&format!("{other}?digest={digest}"))
                .body(&b"def"[..]),
            reg.delete(&other),
        ] {
            let resp = send(rb).await;
            expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
        }
    }
    // Untouched in its own repository.
    assert_upload_size(&reg, &location, 3).await;
    let resp = send(
        reg.put(&join(&location, &format!("digest={digest}")))
            .body(&b"def"[..]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = send(reg.head(&format!("/v2/b/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cross_repository_mount() {
    let reg = start().await;
    let data = bytes(4096, 9);
    let digest = reg.push_blob("src/app", &data).await;

    let resp = send(reg.post(&format!(
        "/v2/dst/blobs/uploads/?mount={digest}&from=src/app"
    )))
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        header(&resp, "location"),
        Some(format!("/v2/dst/blobs/{digest}"))
    );
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest.clone()));
    let resp = send(reg.get(&format!("/v2/dst/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.bytes().await.unwrap() == data);
    // Mounting again is fine.
    let resp = send(reg.post(&format!(
        "/v2/dst/blobs/uploads/?mount={digest}&from=src/app"
    )))
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);

    // The source does not have the blob (or does not exist, or is not
    // named): 202 and an ordinary upload session.
    let other = bytes(2048, 10);
    let other_digest = sha256(&other);
    reg.push_blob("elsewhere", &other).await;
    for query in [
        format!("mount={other_digest}&from=src/app"),
        format!("mount={other_digest}&from=nope"),
        format!("mount={other_digest}"),
    ] {
        let resp = send(reg.post(&format!("/v2/dst/blobs/uploads/?{query}"))).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED, "{query}");
        let location = header(&resp, "location").expect("Location");
        assert!(location.starts_with("/v2/dst/blobs/uploads/"), "{location}");
        assert_eq!(header(&resp, "range").as_deref(), Some("0-0"));
        assert!(header(&resp, "docker-upload-uuid").is_some());
        let resp = send(reg.head(&format!("/v2/dst/blobs/{other_digest}"))).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "not mounted: {query}");

        let resp = patch(&reg, &location, Some("0-1023"), &other[..1024]).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
        let resp = send(
            reg.put(&join(&location, &format!("digest={other_digest}")))
                .body(other[1024..].to_vec()),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::CREATED, "{query}");
        let resp = send(reg.delete(&format!("/v2/dst/blobs/{other_digest}"))).await;
        assert_eq!(resp.status(), StatusCode::ACCEPTED);
    }

    // A blob unlinked from the source can no longer be mounted from it.
    let resp = send(reg.delete(&format!("/v2/src/app/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = send(reg.post(&format!(
        "/v2/third/blobs/uploads/?mount={digest}&from=src/app"
    )))
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
}

#[tokio::test]
async fn sha512_digests() {
    let reg = start().await;
    let data = bytes(70_000, 11);
    let digest = sha512(&data);

    let resp = send(
        reg.post(&format!("/v2/r/blobs/uploads/?digest={digest}"))
            .body(data.clone()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest.clone()));
    let resp = send(reg.get(&format!("/v2/r/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest.clone()));
    assert!(resp.bytes().await.unwrap() == data);

    // Chunked, with the final chunk on the PUT.
    let data = bytes(50_000, 12);
    let digest = sha512(&data);
    let location = reg.start_upload("r").await;
    let resp = patch(&reg, &location, Some("0-29999"), &data[..30_000]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = send(
        reg.put(&join(&location, &format!("digest={digest}")))
            .body(data[30_000..].to_vec()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = send(reg.get(&format!("/v2/r/blobs/{digest}"))).await;
    assert!(resp.bytes().await.unwrap() == data);
    // Its sha256 names nothing.
    let resp = send(reg.head(&format!("/v2/r/blobs/{}", sha256(&data)))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    // A wrong sha512.
    let location = reg.start_upload("r").await;
    let resp = send(
        reg.put(&join(&location, &format!("digest={}", sha512(b"other"))))
            .body(&b"content"[..]),
    )
    .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn wrong_digest_at_put_stores_nothing() {
    let reg = start().await;
    let data = bytes(20_000, 13);
    let before = stored_blobs(&reg);
    let location = reg.start_upload("r").await;
    let resp = patch(&reg, &location, Some("0-9999"), &data[..10_000]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let claimed = sha256(b"not this");
    let resp = send(
        reg.put(&join(&location, &format!("digest={claimed}")))
            .body(data[10_000..].to_vec()),
    )
    .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    for d in [claimed, sha256(&data)] {
        let resp = send(reg.head(&format!("/v2/r/blobs/{d}"))).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{d}");
    }
    assert_eq!(stored_blobs(&reg), before, "nothing stored");
}

#[tokio::test]
async fn put_without_digest_is_400() {
    let reg = start().await;
    let location = reg.start_upload("r").await;
    let resp = patch(&reg, &location, None, b"abc").await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = send(reg.put(&location).body(&b"def"[..])).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let resp = send(reg.put(&join(&location, "digest="))).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    // Nothing was appended; the session still completes.
    assert_upload_size(&reg, &location, 3).await;
    let resp = send(
        reg.put(&join(&location, &format!("digest={}", sha256(b"abcdef"))))
            .body(&b"def"[..]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn upload_resumes_after_a_restart() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("store");
    let data = bytes(3 << 20, 14);
    let digest = sha256(&data);
    let cut = (1 << 20) + 12_345;

    let srv = Server::start_at(&dir, RegistryConfig::default()).await;
    let location = srv.start_upload("lib/app").await;
    let resp = patch(
        &srv,
        &location,
        Some(&format!("0-{}", cut - 1)),
        &data[..cut],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    srv.stop().await;

    let srv = Server::start_at(&dir, RegistryConfig::default()).await;
    let resp = upload_status(&srv, &location).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "range"), Some(range_of(cut)));
    assert_eq!(header(&resp, "location"), Some(location.clone()));

    // A chunk that does not continue where the data ends is still refused.
    let resp = patch(&srv, &location, Some("0-9"), &data[..10]).await;
    assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&resp, "range"), Some(range_of(cut)));

    let mid = 2 << 20;
    let resp = patch(
        &srv,
        &location,
        Some(&format!("{cut}-{}", mid - 1)),
        &data[cut..mid],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&resp, "range"), Some(range_of(mid)));
    let resp = send(
        srv.put(&join(&location, &format!("digest={digest}")))
            .body(data[mid..].to_vec()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest.clone()));
    let resp = send(srv.get(&format!("/v2/lib/app/blobs/{digest}"))).await;
    assert!(resp.bytes().await.unwrap() == data);
    srv.stop().await;
}

#[tokio::test]
async fn stale_upload_sessions_are_purged() {
    // A tiny maximum age: an idle session is gone at the next purge.
    let reg = start_with(RegistryConfig {
        upload_max_age: Duration::from_millis(1),
        ..RegistryConfig::default()
    })
    .await;
    let stale = reg.start_upload("r").await;
    let resp = patch(&reg, &stale, None, b"old").await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(reg.registry.purge_uploads().await.unwrap(), 1);
    let resp = upload_status(&reg, &stale).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let resp = patch(&reg, &stale, None, b"more").await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let resp = send(reg.delete(&stale)).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert!(files(&reg.store.join("uploads")).is_empty());

    // Only idle sessions go: one last written an hour ago (its data file's
    // time set back, rather than waiting) and one in use now.
    let reg = start_with(RegistryConfig {
        upload_max_age: Duration::from_secs(60),
        ..RegistryConfig::default()
    })
    .await;
    let idle = reg.start_upload("r").await;
    let resp = patch(&reg, &idle, None, b"old").await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let active = reg.start_upload("r").await;
    let resp = patch(&reg, &active, None, b"new").await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let id = idle.rsplit('/').next().unwrap();
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(reg.store.join("uploads").join(id).join("data"))
        .unwrap()
        .set_modified(hour_ago)
        .unwrap();

    assert_eq!(reg.registry.purge_uploads().await.unwrap(), 1);
    let resp = upload_status(&reg, &idle).await;
    expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_upload_size(&reg, &active, 3).await;
    assert_eq!(reg.registry.purge_uploads().await.unwrap(), 0);
    let digest = sha256(b"newer");
    let resp = send(
        reg.put(&join(&active, &format!("digest={digest}")))
            .body(&b"er"[..]),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_of_different_blobs() {
    let reg = start().await;
    let mut tasks = Vec::new();
    for i in 0..16u64 {
        let srv_base = reg.base.clone();
        let client = reg.client.clone();
        tasks.push(tokio::spawn(async move {
            let data = bytes(200_000 + i as usize * 1000, 100 + i);
            let digest = sha256(&data);
            let repo = format!("repo{}", i % 4);
            let resp = client
                .post(format!("{srv_base}/v2/{repo}/blobs/uploads/"))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
            let location = header(&resp, "location").unwrap();
            let half = data.len() / 2;
            let resp = client
                .patch(format!("{srv_base}{location}"))
                .header("content-range", format!("0-{}", half - 1))
                .body(data[..half].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::ACCEPTED);
            let resp = client
                .put(format!("{srv_base}{location}?digest={digest}"))
                .body(data[half..].to_vec())
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::CREATED);
            (repo, digest, data)
        }));
    }
    for t in tasks {
        let (repo, digest, data) = t.await.unwrap();
        let resp = send(reg.get(&format!("/v2/{repo}/blobs/{digest}"))).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.bytes().await.unwrap() == data, "{repo} {digest}");
    }
    assert!(files(&reg.store.join("uploads")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_uploads_of_the_same_blob() {
    let reg = start().await;
    let data = bytes(500_000, 15);
    let digest = sha256(&data);
    let mut tasks = Vec::new();
    for i in 0..12 {
        let client = reg.client.clone();
        let url = format!(
            "{}/v2/repo{}/blobs/uploads/?digest={digest}",
            reg.base,
            i % 3
        );
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            client.post(url).body(data).send().await.unwrap().status()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::CREATED);
    }
    for repo in ["repo0", "repo1", "repo2"] {
        let resp = send(reg.get(&format!("/v2/{repo}/blobs/{digest}"))).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(resp.bytes().await.unwrap() == data);
    }
    assert_eq!(stored_blobs(&reg).len(), 1, "one copy of the content");
    assert!(files(&reg.store.join("uploads")).is_empty());
}

/// Concurrent chunks claiming the same offset: exactly one is appended, the
/// others get 416; the session is not corrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_at_the_same_offset() {
    let reg = start().await;
    let location = reg.start_upload("r").await;
    let chunks: Vec<Vec<u8>> = (0..6).map(|i| bytes(600_000, 200 + i)).collect();
    let mut tasks = Vec::new();
    for chunk in chunks.clone() {
        let client = reg.client.clone();
        let url = reg.url(&location);
        tasks.push(tokio::spawn(async move {
            let resp = client
                .patch(url)
                .header("content-range", format!("0-{}", chunk.len() - 1))
                .body(chunk)
                .send()
                .await
                .unwrap();
            (resp.status(), header(&resp, "range"))
        }));
    }
    let mut winner = None;
    for (i, t) in tasks.into_iter().enumerate() {
        let (status, range) = t.await.unwrap();
        assert_eq!(range, Some(range_of(600_000)), "chunk {i}");
        match status {
            StatusCode::ACCEPTED => {
                assert!(winner.is_none(), "two chunks accepted at offset 0");
                winner = Some(i);
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {}
            s => panic!("chunk {i}: unexpected {s}"),
        }
    }
    let winner = winner.expect("one chunk accepted");
    assert_upload_size(&reg, &location, 600_000).await;
    let digest = sha256(&chunks[winner]);
    let resp = send(reg.put(&join(&location, &format!("digest={digest}")))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = send(reg.get(&format!("/v2/r/blobs/{digest}"))).await;
    assert!(resp.bytes().await.unwrap() == chunks[winner]);
}

/// Concurrent chunks without Content-Range are appended one after the
/// other, whole: each response's Range tells where its chunk ended up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_patches_without_range_are_serialised() {
    let reg = start().await;
    let location = reg.start_upload("r").await;
    let chunks: Vec<Vec<u8>> = (0..8)
        .map(|i| bytes(300_000 + i as usize * 7_001, 300 + i))
        .collect();
    let mut tasks = Vec::new();
    for (i, chunk) in chunks.iter().cloned().enumerate() {
        let client = reg.client.clone();
        let url = reg.url(&location);
        tasks.push(tokio::spawn(async move {
            // Streamed in pieces so that the requests overlap in time.
            let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
                chunk.chunks(50_000).map(|c| Ok(c.to_vec())).collect();
            let resp = client
                .patch(url)
                .body(Body::wrap_stream(futures_util::stream::iter(pieces)))
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::ACCEPTED, "chunk {i}");
            let range = header(&resp, "range").unwrap();
            let end: usize = range.strip_prefix("0-").unwrap().parse().unwrap();
            (end + 1, i)
        }));
    }
    let mut ends = Vec::new();
    for t in tasks {
        ends.push(t.await.unwrap());
    }
    ends.sort();
    let mut expected = Vec::new();
    for (end, i) in &ends {
        expected.extend_from_slice(&chunks[*i]);
        assert_eq!(*end, expected.len(), "chunk {i} ended where it should");
    }
    assert_upload_size(&reg, &location, expected.len()).await;
    let digest = sha256(&expected);
    let resp = send(reg.put(&join(&location, &format!("digest={digest}")))).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = send(reg.get(&format!("/v2/r/blobs/{digest}"))).await;
    assert!(resp.bytes().await.unwrap() == expected);
}

/// Sends the head of a request declaring `declared` body bytes, then only
/// `body`, then ends its side of the connection; returns what the server
/// answered before closing its side (the handler has finished by then).
async fn cut_off_request(
    srv: &Server,
    method: &str,
    path: &str,
    range: Option<&str>,
    declared: usize,
    body: &[u8],
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let range = range
        .map(|r| format!("Content-Range: {r}\r\n"))
        .unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{range}Content-Length: {declared}\r\n\r\n",
        srv.addr
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(body).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("server closes the connection")
        .expect("read answer");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A chunk whose client goes away mid-body is rolled back entirely; the
/// session continues from where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunk_cut_off_by_the_client_is_rolled_back() {
    let reg = start().await;
    let data = bytes(3 << 20, 16);
    let digest = sha256(&data);
    let location = reg.start_upload("r").await;
    let resp = patch(&reg, &location, Some("0-99999"), &data[..100_000]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);

    // Without and with a Content-Range.
    for range in [None, Some("100000-3145727")] {
        let answer = cut_off_request(
            &reg,
            "PATCH",
            &location,
            range,
            (3 << 20) - 100_000,
            &data[100_000..(2 << 20)],
        )
        .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains("BLOB_UPLOAD_INVALID"), "{answer}");
        assert_upload_size(&reg, &location, 100_000).await;
    }

    // A cut-off closing PUT stores nothing and leaves the session as it was.
    let answer = cut_off_request(
        &reg,
        "PUT",
        &join(&location, &format!("digest={digest}")),
        None,
        data.len() - 100_000,
        &data[100_000..200_000],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_upload_size(&reg, &location, 100_000).await;
    let resp = send(reg.head(&format!("/v2/r/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);

    let resp = patch(
        &reg,
        &location,
        Some("100000-2999999"),
        &data[100_000..3_000_000],
    )
    .await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = send(
        reg.put(&join(&location, &format!("digest={digest}")))
            .body(data[3_000_000..].to_vec()),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let resp = send(reg.get(&format!("/v2/r/blobs/{digest}"))).await;
    assert!(resp.bytes().await.unwrap() == data);
}

/// A monolithic upload cut off by the client leaves no blob and no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monolithic_upload_cut_off_leaves_nothing() {
    let reg = start().await;
    let data = bytes(2 << 20, 17);
    let digest = sha256(&data);
    let answer = cut_off_request(
        &reg,
        "POST",
        &format!("/v2/r/blobs/uploads/?digest={digest}"),
        None,
        data.len(),
        &data[..(1 << 20)],
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(
        files(&reg.store.join("uploads")).is_empty(),
        "session left behind"
    );
    let resp = send(reg.head(&format!("/v2/r/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(stored_blobs(&reg).is_empty());
}

/// Two closing PUTs of one session: one creates the blob, the other finds
/// the session gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_closing_puts() {
    let reg = start().await;
    let data = bytes(1 << 20, 18);
    let digest = sha256(&data);
    let location = reg.start_upload("r").await;
    let resp = patch(&reg, &location, None, &data[..1000]).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let rb = reg
            .put(&join(&location, &format!("digest={digest}")))
            .body(data[1000..].to_vec());
        tasks.push(tokio::spawn(async move {
            let resp = rb.send().await.unwrap();
            let status = resp.status();
            (status, resp.text().await.unwrap())
        }));
    }
    let mut created = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            StatusCode::CREATED => created += 1,
            StatusCode::NOT_FOUND => assert!(body.contains("BLOB_UPLOAD_UNKNOWN"), "{body}"),
            s => panic!("unexpected {s}: {body}"),
        }
    }
    assert_eq!(created, 1);
    let resp = send(reg.get(&format!("/v2/r/blobs/{digest}"))).await;
    assert!(resp.bytes().await.unwrap() == data);
}

/// A cancel racing a chunk: whichever is first, the outcome is consistent.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_racing_a_chunk() {
    let reg = start().await;
    for round in 0..5 {
        let location = reg.start_upload("r").await;
        let data = bytes(4 << 20, 19 + round);
        let patch = reg.patch(&location).body(data);
        let cancel = reg.delete(&location);
        let (p, c) = tokio::join!(
            async move { patch.send().await.unwrap().status() },
            async move {
                tokio::time::sleep(Duration::from_millis(round * 3)).await;
                cancel.send().await.unwrap().status()
            }
        );
        assert_eq!(c, StatusCode::NO_CONTENT, "round {round}");
        assert!(
            p == StatusCode::ACCEPTED || p == StatusCode::NOT_FOUND,
            "round {round}: PATCH {p}"
        );
        let resp = upload_status(&reg, &location).await;
        expect_error(resp, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    }
    assert!(files(&reg.store.join("uploads")).is_empty());
}

/// A chunk refused before its body is read: hyper closes the connection
/// after the response, so the response must say `Connection: close` (else
/// a client reuses the connection and its next request fails).
#[tokio::test]
async fn refused_chunk_closes_the_connection_explicitly() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let reg = start().await;
    let location = reg.start_upload("r").await;
    let resp = patch(&reg, &location, None, b"abc").await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    assert_eq!(
        header(&resp, "connection"),
        None,
        "success keeps the connection"
    );

    let declared = (8 << 20).to_string();
    for (method, path, range) in [
        ("PATCH", location.clone(), "100-8388707"),
        (
            "PATCH",
            format!("/v2/r/blobs/uploads/{}", "0".repeat(32)),
            "0-8388607",
        ),
        ("PUT", join(&location, "digest=sha256:zz"), "3-8388610"),
    ] {
        // A keep-alive request: read the response head only.
        let mut conn = tokio::net::TcpStream::connect(reg.addr).await.unwrap();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Range: {range}\r\nContent-Length: {declared}\r\n\r\n"
        );
        conn.write_all(head.as_bytes()).await.unwrap();
        conn.write_all(&[0u8; 1000]).await.unwrap();
        let mut buf = Vec::new();
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let mut chunk = [0u8; 4096];
            let n = conn.read(&mut chunk).await.unwrap();
            assert!(n > 0, "{method} {path}: no response");
            buf.extend_from_slice(&chunk[..n]);
        }
        let text = String::from_utf8_lossy(&buf).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 4"), "{method} {path}: {text}");
        assert!(
            text.contains("\r\nconnection: close\r\n"),
            "{method} {path}: {text}"
        );
    }
    // Through reqwest: the refused chunks do not break the next requests.
    for _ in 0..5 {
        let resp = patch(&reg, &location, Some("0-2"), &bytes(3, 1)).await;
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        let resp = patch(&reg, &location, Some("10-2097161"), &bytes(2 << 20, 2)).await;
        assert_eq!(resp.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        assert_upload_size(&reg, &location, 3).await;
    }
}
