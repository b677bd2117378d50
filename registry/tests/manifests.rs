//! Manifests over HTTP: every supported kind by tag and by digest, content
//! negotiation, validation against the repository's content, size limits,
//! deletion, and the referrers API.

mod common;

use berth_registry::RegistryConfig;
use common::*;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, HeaderMap, HeaderValue};
use serde_json::{Value, json};

/// Asserts GET and HEAD of `repo`/`reference` serve exactly `body` as
/// `media_type` with digest `digest`.
async fn assert_manifest(srv: &Server, repo: &str, reference: &str, media_type: &str, body: &[u8]) {
    let digest = sha256(body);
    let path = format!("/v2/{repo}/manifests/{reference}");
    let resp = send(srv.get(&path).header(ACCEPT, media_type)).await;
    assert_eq!(resp.status(), StatusCode::OK, "GET {path}");
    assert_eq!(header(&resp, "content-type").as_deref(), Some(media_type));
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest.clone()));
    assert_eq!(
        header(&resp, "content-length"),
        Some(body.len().to_string())
    );
    assert_eq!(header(&resp, "etag"), Some(format!("\"{digest}\"")));
    assert_eq!(&resp.bytes().await.unwrap()[..], body, "GET {path} bytes");

    let resp = send(srv.head(&path).header(ACCEPT, media_type)).await;
    assert_eq!(resp.status(), StatusCode::OK, "HEAD {path}");
    assert_eq!(header(&resp, "content-type").as_deref(), Some(media_type));
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest));
    assert_eq!(
        header(&resp, "content-length"),
        Some(body.len().to_string())
    );
    assert!(
        resp.bytes().await.unwrap().is_empty(),
        "HEAD {path} has a body"
    );
}

/// Pushes a Docker schema 2 image (config + layer); returns its bytes.
async fn docker_image(srv: &Server, repo: &str, seed: u64) -> Vec<u8> {
    let config = format!(r#"{{"architecture":"arm64","os":"linux","n":{seed}}}"#).into_bytes();
    let layer = bytes(500, seed);
    srv.push_blob(repo, &config).await;
    srv.push_blob(repo, &layer).await;
    image_manifest(
        DOCKER_MANIFEST,
        desc(DOCKER_CONFIG, &config),
        vec![desc(DOCKER_LAYER, &layer)],
        json!({}),
    )
}

fn platform(desc: &mut Value, arch: &str) {
    desc["platform"] = json!({ "architecture": arch, "os": "linux" });
}

#[tokio::test]
async fn oci_image_manifest_by_tag_and_digest() {
    let reg = start().await;
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let layers = [bytes(3000, 1), bytes(4000, 2)];
    reg.push_blob("lib/app", &config).await;
    for l in &layers {
        reg.push_blob("lib/app", l).await;
    }
    let m = image_manifest(
        OCI_MANIFEST,
        desc(OCI_CONFIG, &config),
        layers.iter().map(|l| desc(OCI_LAYER, l)).collect(),
        json!({ "annotations": { "org.example": "yes" } }),
    );
    let digest = sha256(&m);

    let resp = reg.put_manifest("lib/app", "v1", OCI_MANIFEST, &m).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(
        header(&resp, "location"),
        Some(format!("/v2/lib/app/manifests/{digest}"))
    );
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest.clone()));
    assert_eq!(header(&resp, "oci-subject"), None);

    assert_manifest(&reg, "lib/app", "v1", OCI_MANIFEST, &m).await;
    assert_manifest(&reg, "lib/app", &digest, OCI_MANIFEST, &m).await;
    // Without Accept: served as stored.
    let resp = send(reg.get("/v2/lib/app/manifests/v1")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "content-type").as_deref(), Some(OCI_MANIFEST));

    // PUT by digest, in another repository holding the same blobs.
    reg.push_blob("other", &config).await;
    for l in &layers {
        reg.push_blob("other", l).await;
    }
    let resp = reg.put_manifest("other", &digest, OCI_MANIFEST, &m).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), Some(digest.clone()));
    assert_manifest(&reg, "other", &digest, OCI_MANIFEST, &m).await;
    let tags = json(send(reg.get("/v2/other/tags/list")).await).await;
    assert_eq!(tags["tags"], json!([]), "a PUT by digest sets no tag");

    // Re-tagging moves the tag.
    let (m2, d2) = push_image(&reg, "lib/app", "v1", 9).await;
    assert_manifest(&reg, "lib/app", "v1", OCI_MANIFEST, &m2).await;
    assert_ne!(d2, digest);
    assert_manifest(&reg, "lib/app", &digest, OCI_MANIFEST, &m).await;
}

#[tokio::test]
async fn every_manifest_kind() {
    let reg = start().await;
    let repo = "kinds";

    // Docker schema 2.
    let docker = docker_image(&reg, repo, 1).await;
    let docker_d = reg
        .push_manifest(repo, "docker", DOCKER_MANIFEST, &docker)
        .await;
    assert_manifest(&reg, repo, "docker", DOCKER_MANIFEST, &docker).await;
    let docker2 = docker_image(&reg, repo, 2).await;
    let docker2_d = reg
        .push_manifest(repo, &sha256(&docker2), DOCKER_MANIFEST, &docker2)
        .await;

    // Docker manifest list over them.
    let mut a = desc(DOCKER_MANIFEST, &docker);
    platform(&mut a, "arm64");
    let mut b = desc(DOCKER_MANIFEST, &docker2);
    platform(&mut b, "amd64");
    let list = index_manifest(DOCKER_LIST, vec![a, b], json!({}));
    let list_d = reg.push_manifest(repo, "list", DOCKER_LIST, &list).await;
    assert_manifest(&reg, repo, "list", DOCKER_LIST, &list).await;
    assert_manifest(&reg, repo, &list_d, DOCKER_LIST, &list).await;

    // OCI image manifests and an OCI index over them.
    let (img1, img1_d) = push_image(&reg, repo, "img1", 3).await;
    let (img2, _) = push_image(&reg, repo, "img2", 4).await;
    let mut a = desc(OCI_MANIFEST, &img1);
    platform(&mut a, "amd64");
    let mut b = desc(OCI_MANIFEST, &img2);
    platform(&mut b, "s390x");
    let index = index_manifest(
        OCI_INDEX,
        vec![a, b],
        json!({ "annotations": { "k": "v" } }),
    );
    reg.push_manifest(repo, "index", OCI_INDEX, &index).await;
    assert_manifest(&reg, repo, "index", OCI_INDEX, &index).await;

    // An index of indexes.
    let nested = index_manifest(OCI_INDEX, vec![desc(OCI_INDEX, &index)], json!({}));
    reg.push_manifest(repo, "nested", OCI_INDEX, &nested).await;
    assert_manifest(&reg, repo, "nested", OCI_INDEX, &nested).await;

    // An artifact manifest: artifactType, the empty config, a subject.
    let empty = reg.push_blob(repo, b"{}").await;
    assert_eq!(
        empty,
        "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
    );
    let payload = b"signature payload".to_vec();
    reg.push_blob(repo, &payload).await;
    let artifact = image_manifest(
        OCI_MANIFEST,
        desc(OCI_EMPTY, b"{}"),
        vec![desc("application/vnd.example.sig.v1", &payload)],
        json!({
            "artifactType": "application/vnd.example.sig",
            "subject": desc(OCI_MANIFEST, &img1),
        }),
    );
    let resp = reg.put_manifest(repo, "sig", OCI_MANIFEST, &artifact).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "oci-subject"), Some(img1_d.clone()));
    assert_manifest(&reg, repo, "sig", OCI_MANIFEST, &artifact).await;

    // An artifact whose only layer is the empty descriptor.
    let bare = image_manifest(
        OCI_MANIFEST,
        desc(OCI_EMPTY, b"{}"),
        vec![desc(OCI_EMPTY, b"{}")],
        json!({ "artifactType": "application/vnd.example.note" }),
    );
    reg.push_manifest(repo, "note", OCI_MANIFEST, &bare).await;
    assert_manifest(&reg, repo, "note", OCI_MANIFEST, &bare).await;

    // Docker types by digest.
    assert_manifest(&reg, repo, &docker_d, DOCKER_MANIFEST, &docker).await;
    assert_manifest(&reg, repo, &docker2_d, DOCKER_MANIFEST, &docker2).await;

    // A manifest without a mediaType field takes the Content-Type's.
    let (cfg, layer) = (b"{\"c\":1}".to_vec(), bytes(10, 5));
    reg.push_blob(repo, &cfg).await;
    reg.push_blob(repo, &layer).await;
    let mut v: Value = serde_json::from_slice(&image_manifest(
        OCI_MANIFEST,
        desc(OCI_CONFIG, &cfg),
        vec![desc(OCI_LAYER, &layer)],
        json!({}),
    ))
    .unwrap();
    v.as_object_mut().unwrap().remove("mediaType");
    let plain = serde_json::to_vec(&v).unwrap();
    reg.push_manifest(repo, "plain", OCI_MANIFEST, &plain).await;
    assert_manifest(&reg, repo, "plain", OCI_MANIFEST, &plain).await;

    let tags = json(send(reg.get(&format!("/v2/{repo}/tags/list"))).await).await;
    assert_eq!(
        tags["tags"],
        json!([
            "docker", "img1", "img2", "index", "list", "nested", "note", "plain", "sig"
        ])
    );
}

#[tokio::test]
async fn content_negotiation_with_several_accept_headers() {
    let reg = start().await;
    let (m, _) = push_image(&reg, "r", "v1", 1).await;
    let docker = docker_image(&reg, "r", 2).await;
    reg.push_manifest("r", "d", DOCKER_MANIFEST, &docker).await;

    let mut accept = HeaderMap::new();
    for t in [DOCKER_MANIFEST, DOCKER_LIST, OCI_INDEX, OCI_MANIFEST] {
        accept.append(ACCEPT, HeaderValue::from_static(t));
    }
    for (tag, media_type, body) in [("v1", OCI_MANIFEST, &m), ("d", DOCKER_MANIFEST, &docker)] {
        let resp = send(
            reg.get(&format!("/v2/r/manifests/{tag}"))
                .headers(accept.clone()),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "{tag}");
        assert_eq!(header(&resp, "content-type").as_deref(), Some(media_type));
        assert_eq!(&resp.bytes().await.unwrap()[..], &body[..]);
        let resp = send(
            reg.head(&format!("/v2/r/manifests/{tag}"))
                .headers(accept.clone()),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "HEAD {tag}");
    }

    // Comma-separated lists with parameters, and wildcards.
    for a in [
        format!("{DOCKER_MANIFEST}, {OCI_MANIFEST};q=0.9"),
        "*/*".to_owned(),
        "application/*".to_owned(),
    ] {
        let resp = send(reg.get("/v2/r/manifests/v1").header(ACCEPT, &a)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{a}");
    }

    // None of the Accept headers matches: not served.
    let mut docker_only = HeaderMap::new();
    docker_only.append(ACCEPT, HeaderValue::from_static(DOCKER_MANIFEST));
    docker_only.append(ACCEPT, HeaderValue::from_static(DOCKER_LIST));
    let resp = send(reg.get("/v2/r/manifests/v1").headers(docker_only)).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn missing_references_are_manifest_blob_unknown() {
    let reg = start().await;
    let config = b"{\"os\":\"linux\"}".to_vec();
    let layer = bytes(1000, 1);
    let elsewhere = bytes(1000, 2);
    reg.push_blob("r", &config).await;
    reg.push_blob("r", &layer).await;
    // Stored, but linked in another repository only.
    reg.push_blob("other", &elsewhere).await;
    let missing = bytes(100, 3);

    let cases = [
        (
            desc(OCI_CONFIG, &missing),
            vec![desc(OCI_LAYER, &layer)],
            sha256(&missing),
        ),
        (
            desc(OCI_CONFIG, &config),
            vec![desc(OCI_LAYER, &missing)],
            sha256(&missing),
        ),
        (
            desc(OCI_CONFIG, &config),
            vec![desc(OCI_LAYER, &layer), desc(OCI_LAYER, &elsewhere)],
            sha256(&elsewhere),
        ),
    ];
    for (config_desc, layers, culprit) in cases {
        let m = image_manifest(OCI_MANIFEST, config_desc, layers, json!({}));
        let resp = reg.put_manifest("r", "v1", OCI_MANIFEST, &m).await;
        let v = expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
        assert_eq!(v["errors"][0]["detail"]["digest"], culprit.as_str());
        let resp = send(reg.get(&format!("/v2/r/manifests/{}", sha256(&m)))).await;
        expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }
    let resp = send(reg.get("/v2/r/manifests/v1")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    // A descriptor whose size is wrong.
    let mut bad_size = desc(OCI_LAYER, &layer);
    bad_size["size"] = json!(999);
    let m = image_manifest(
        OCI_MANIFEST,
        desc(OCI_CONFIG, &config),
        vec![bad_size],
        json!({}),
    );
    let resp = reg.put_manifest("r", "v1", OCI_MANIFEST, &m).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;

    // An index whose child is missing (or lives in another repository).
    let (img, _) = push_image(&reg, "r", "img", 4).await;
    let (other_img, _) = push_image(&reg, "other", "img", 5).await;
    let phantom = image_manifest(OCI_MANIFEST, desc(OCI_CONFIG, b"{}"), vec![], json!({}));
    for child in [&phantom, &other_img] {
        let index = index_manifest(
            OCI_INDEX,
            vec![desc(OCI_MANIFEST, &img), desc(OCI_MANIFEST, child)],
            json!({}),
        );
        let resp = reg.put_manifest("r", "idx", OCI_INDEX, &index).await;
        let v = expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
        assert_eq!(v["errors"][0]["detail"]["digest"], sha256(child).as_str());
    }
    let list = index_manifest(
        DOCKER_LIST,
        vec![desc(DOCKER_MANIFEST, &phantom)],
        json!({}),
    );
    let resp = reg.put_manifest("r", "list", DOCKER_LIST, &list).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    let resp = send(reg.get("/v2/r/manifests/idx")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

#[tokio::test]
async fn invalid_manifests_are_manifest_invalid() {
    let reg = start().await;
    let (m, _) = push_image(&reg, "r", "v1", 1).await;
    let mut schema1: Value = serde_json::from_slice(&m).unwrap();
    schema1["schemaVersion"] = json!(1);
    let mut schema3 = schema1.clone();
    schema3["schemaVersion"] = json!(3);
    let mut no_config: Value = serde_json::from_slice(&m).unwrap();
    no_config.as_object_mut().unwrap().remove("config");
    let mut bad_digest: Value = serde_json::from_slice(&m).unwrap();
    bad_digest["layers"][0]["digest"] = json!("sha256:nothex");
    let mut unknown_type: Value = serde_json::from_slice(&m).unwrap();
    unknown_type["mediaType"] = json!("application/vnd.example.unknown+json");

    let cases: Vec<(&str, Vec<u8>)> = vec![
        (OCI_MANIFEST, b"{".to_vec()),
        (OCI_MANIFEST, b"".to_vec()),
        (OCI_MANIFEST, b"[1,2]".to_vec()),
        (OCI_MANIFEST, b"not json at all".to_vec()),
        (OCI_MANIFEST, serde_json::to_vec(&schema1).unwrap()),
        (
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            br#"{"schemaVersion":1,"name":"r","tag":"v1","fsLayers":[]}"#.to_vec(),
        ),
        (OCI_MANIFEST, serde_json::to_vec(&schema3).unwrap()),
        (OCI_MANIFEST, serde_json::to_vec(&no_config).unwrap()),
        (OCI_MANIFEST, serde_json::to_vec(&bad_digest).unwrap()),
        (OCI_MANIFEST, serde_json::to_vec(&unknown_type).unwrap()),
        // The body's mediaType contradicts the Content-Type.
        (OCI_INDEX, m.clone()),
        (DOCKER_MANIFEST, m.clone()),
        (OCI_MANIFEST, index_manifest(OCI_INDEX, vec![], json!({}))),
    ];
    for (ct, body) in cases {
        let resp = reg.put_manifest("r", "bad", ct, &body).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    }
    let resp = send(reg.get("/v2/r/manifests/bad")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let tags = json(send(reg.get("/v2/r/tags/list")).await).await;
    assert_eq!(tags["tags"], json!(["v1"]));
}

#[tokio::test]
async fn put_by_wrong_digest_is_digest_invalid() {
    let reg = start().await;
    let (m, _) = push_image(&reg, "r", "v1", 1).await;
    let mut other = m.clone();
    other.push(b'\n');
    let wrong = sha256(&other);
    let resp = reg.put_manifest("r", &wrong, OCI_MANIFEST, &m).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let resp = send(reg.get(&format!("/v2/r/manifests/{wrong}"))).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    // A sha512 reference is checked as sha512.
    let resp = reg
        .put_manifest("r", &sha512(&other), OCI_MANIFEST, &m)
        .await;
    expect_error(resp, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let d512 = sha512(&m);
    let resp = reg.put_manifest("r", &d512, OCI_MANIFEST, &m).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "docker-content-digest"), Some(d512.clone()));
    let resp = send(reg.get(&format!("/v2/r/manifests/{d512}"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "docker-content-digest"), Some(d512));
}

#[tokio::test]
async fn manifest_size_limit() {
    let reg = start_with(RegistryConfig {
        max_manifest_size: 1024,
        ..RegistryConfig::default()
    })
    .await;
    let config = b"{}".to_vec();
    reg.push_blob("r", &config).await;
    let small = image_manifest(OCI_MANIFEST, desc(OCI_CONFIG, &config), vec![], json!({}));
    assert!(small.len() <= 1024);
    reg.push_manifest("r", "small", OCI_MANIFEST, &small).await;

    let big = image_manifest(
        OCI_MANIFEST,
        desc(OCI_CONFIG, &config),
        vec![],
        json!({ "annotations": { "padding": "x".repeat(2000) } }),
    );
    let resp = reg.put_manifest("r", "big", OCI_MANIFEST, &big).await;
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;

    // Without a Content-Length, the limit applies to the streamed body.
    let pieces: Vec<Result<Vec<u8>, std::io::Error>> =
        big.chunks(100).map(|c| Ok(c.to_vec())).collect();
    let resp = send(
        reg.put("/v2/r/manifests/big")
            .header("content-type", OCI_MANIFEST)
            .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                pieces,
            ))),
    )
    .await;
    expect_error(resp, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;

    let resp = send(reg.get("/v2/r/manifests/big")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    // Exactly at the limit is fine.
    let mut exact: Value = serde_json::from_slice(&small).unwrap();
    exact["annotations"] = json!({ "p": "" });
    let base_len = serde_json::to_vec(&exact).unwrap().len();
    exact["annotations"]["p"] = json!("y".repeat(1024 - base_len));
    let exact = serde_json::to_vec(&exact).unwrap();
    assert_eq!(exact.len(), 1024);
    reg.push_manifest("r", "exact", OCI_MANIFEST, &exact).await;
}

#[tokio::test]
async fn unknown_manifests_are_404() {
    let reg = start().await;
    push_image(&reg, "r", "v1", 1).await;
    let unknown = sha256(b"nothing");
    for path in [
        "/v2/r/manifests/v2".to_owned(),
        format!("/v2/r/manifests/{unknown}"),
        format!("/v2/r/manifests/{}", sha512(b"nothing")),
        "/v2/nope/manifests/v1".to_owned(),
    ] {
        let resp = send(reg.get(&path)).await;
        expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
        let resp = send(reg.head(&path)).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "HEAD {path}");
        assert!(resp.bytes().await.unwrap().is_empty());
        let resp = send(reg.delete(&path)).await;
        expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }
}

#[tokio::test]
async fn delete_by_tag_and_by_digest() {
    let reg = start().await;
    let (m, digest) = push_image(&reg, "r", "v1", 1).await;
    for tag in ["latest", "stable"] {
        reg.push_manifest("r", tag, OCI_MANIFEST, &m).await;
    }
    let (_, other) = push_image(&reg, "r", "other", 2).await;

    // Deleting a tag leaves the manifest and its other tags.
    let resp = send(reg.delete("/v2/r/manifests/v1")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let resp = send(reg.get("/v2/r/manifests/v1")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let resp = send(reg.delete("/v2/r/manifests/v1")).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_manifest(&reg, "r", &digest, OCI_MANIFEST, &m).await;
    assert_manifest(&reg, "r", "latest", OCI_MANIFEST, &m).await;
    let tags = json(send(reg.get("/v2/r/tags/list")).await).await;
    assert_eq!(tags["tags"], json!(["latest", "other", "stable"]));

    // Deleting by digest removes the manifest and every tag on it.
    let resp = send(reg.delete(&format!("/v2/r/manifests/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    for reference in [digest.as_str(), "latest", "stable"] {
        let resp = send(reg.get(&format!("/v2/r/manifests/{reference}"))).await;
        expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    }
    let resp = send(reg.delete(&format!("/v2/r/manifests/{digest}"))).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let tags = json(send(reg.get("/v2/r/tags/list")).await).await;
    assert_eq!(tags["tags"], json!(["other"]));
    let resp = send(reg.get(&format!("/v2/r/manifests/{other}"))).await;
    assert_eq!(resp.status(), StatusCode::OK);

    // It can be pushed again.
    reg.push_manifest("r", "v1", OCI_MANIFEST, &m).await;
    assert_manifest(&reg, "r", "v1", OCI_MANIFEST, &m).await;
}

/// Pushes an artifact referring to `subject`; returns (bytes, digest).
async fn push_referrer(
    srv: &Server,
    repo: &str,
    subject: &[u8],
    subject_type: &str,
    artifact_type: &str,
    n: u64,
) -> (Vec<u8>, String) {
    let payload = format!("payload {n}").into_bytes();
    srv.push_blob(repo, b"{}").await;
    srv.push_blob(repo, &payload).await;
    let m = image_manifest(
        OCI_MANIFEST,
        desc(OCI_EMPTY, b"{}"),
        vec![desc("application/octet-stream", &payload)],
        json!({
            "artifactType": artifact_type,
            "subject": desc(subject_type, subject),
            "annotations": { "n": n.to_string() },
        }),
    );
    let resp = srv.put_manifest(repo, &sha256(&m), OCI_MANIFEST, &m).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "oci-subject"), Some(sha256(subject)));
    let d = sha256(&m);
    (m, d)
}

async fn referrers(srv: &Server, path: &str) -> (Option<String>, Vec<Value>) {
    let resp = send(srv.get(path)).await;
    assert_eq!(resp.status(), StatusCode::OK, "{path}");
    assert_eq!(header(&resp, "content-type").as_deref(), Some(OCI_INDEX));
    let filters = header(&resp, "oci-filters-applied");
    let v = json(resp).await;
    assert_eq!(v["schemaVersion"], 2);
    assert_eq!(v["mediaType"], OCI_INDEX);
    let mut list = v["manifests"].as_array().expect("manifests array").clone();
    list.sort_by_key(|d| d["digest"].as_str().unwrap_or_default().to_owned());
    (filters, list)
}

#[tokio::test]
async fn referrers_api() {
    let reg = start().await;
    let (img, img_d) = push_image(&reg, "r", "v1", 1).await;
    let (sig, sig_d) = push_referrer(
        &reg,
        "r",
        &img,
        OCI_MANIFEST,
        "application/vnd.example.sig",
        1,
    )
    .await;
    let (sbom, sbom_d) = push_referrer(
        &reg,
        "r",
        &img,
        OCI_MANIFEST,
        "application/vnd.example.sbom",
        2,
    )
    .await;
    // An image manifest with a subject and no artifactType: the config's
    // media type is its artifact type.
    let config = b"{\"not\":\"empty\"}".to_vec();
    reg.push_blob("r", &config).await;
    let plain = image_manifest(
        OCI_MANIFEST,
        desc("application/vnd.example.config", &config),
        vec![],
        json!({ "subject": desc(OCI_MANIFEST, &img) }),
    );
    let resp = reg.put_manifest("r", "plain", OCI_MANIFEST, &plain).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "oci-subject"), Some(img_d.clone()));
    let plain_d = sha256(&plain);
    // A referrer of the signature (a chain), not of the image.
    let (_, chain_d) = push_referrer(
        &reg,
        "r",
        &sig,
        OCI_MANIFEST,
        "application/vnd.example.sig",
        3,
    )
    .await;

    let mut expected = vec![
        json!({
            "mediaType": OCI_MANIFEST,
            "digest": sig_d,
            "size": sig.len(),
            "artifactType": "application/vnd.example.sig",
            "annotations": { "n": "1" },
        }),
        json!({
            "mediaType": OCI_MANIFEST,
            "digest": sbom_d,
            "size": sbom.len(),
            "artifactType": "application/vnd.example.sbom",
            "annotations": { "n": "2" },
        }),
        json!({
            "mediaType": OCI_MANIFEST,
            "digest": plain_d,
            "size": plain.len(),
            "artifactType": "application/vnd.example.config",
        }),
    ];
    expected.sort_by_key(|d| d["digest"].as_str().unwrap().to_owned());
    let (filters, list) = referrers(&reg, &format!("/v2/r/referrers/{img_d}")).await;
    assert_eq!(filters, None);
    assert_eq!(list, expected);

    let (filters, list) = referrers(
        &reg,
        &format!("/v2/r/referrers/{img_d}?artifactType=application/vnd.example.sbom"),
    )
    .await;
    assert_eq!(filters.as_deref(), Some("artifactType"));
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], sbom_d.as_str());

    let (filters, list) = referrers(
        &reg,
        &format!("/v2/r/referrers/{img_d}?artifactType=application%2Fvnd.example.none"),
    )
    .await;
    assert_eq!(filters.as_deref(), Some("artifactType"));
    assert!(list.is_empty());

    let (_, list) = referrers(&reg, &format!("/v2/r/referrers/{sig_d}")).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], chain_d.as_str());

    // Referrers are per repository.
    reg.push_blob("other", b"{}").await;
    let (_, list) = referrers(&reg, &format!("/v2/other/referrers/{img_d}")).await;
    assert!(list.is_empty());

    // Unknown subject (and unknown repository): an empty index, 200.
    for path in [
        format!("/v2/r/referrers/{}", sha256(b"unknown")),
        format!("/v2/r/referrers/{}", sha512(b"unknown")),
        format!("/v2/nope/referrers/{img_d}"),
    ] {
        let resp = send(reg.get(&path)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&resp, "content-type").as_deref(), Some(OCI_INDEX));
        let v = json(resp).await;
        assert_eq!(
            v,
            json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [] }),
            "{path}"
        );
    }

    // Deleting a referrer removes it from the list.
    let resp = send(reg.delete(&format!("/v2/r/manifests/{sbom_d}"))).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let (_, list) = referrers(&reg, &format!("/v2/r/referrers/{img_d}")).await;
    let digests: Vec<&str> = list.iter().map(|d| d["digest"].as_str().unwrap()).collect();
    assert!(!digests.contains(&sbom_d.as_str()));
    assert_eq!(digests.len(), 2);
    // Deleting only a tag of a referrer does not.
    let resp = send(reg.delete("/v2/r/manifests/plain")).await;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let (_, list) = referrers(&reg, &format!("/v2/r/referrers/{img_d}")).await;
    assert_eq!(list.len(), 2);
}

#[tokio::test]
async fn referrer_may_be_pushed_before_its_subject() {
    let reg = start().await;
    let phantom = image_manifest(
        OCI_MANIFEST,
        desc(OCI_CONFIG, b"{\"x\":1}"),
        vec![],
        json!({}),
    );
    let subject = sha256(&phantom);
    let (_, sig_d) = push_referrer(
        &reg,
        "r",
        &phantom,
        OCI_MANIFEST,
        "application/vnd.example.sig",
        1,
    )
    .await;
    let (_, list) = referrers(&reg, &format!("/v2/r/referrers/{subject}")).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["digest"], sig_d.as_str());

    // An index can be a referrer too.
    let (img, _) = push_image(&reg, "r", "v1", 2).await;
    let index = index_manifest(
        OCI_INDEX,
        vec![desc(OCI_MANIFEST, &img)],
        json!({
            "artifactType": "application/vnd.example.bundle",
            "subject": desc(OCI_MANIFEST, &phantom),
        }),
    );
    let resp = reg.put_manifest("r", "bundle", OCI_INDEX, &index).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "oci-subject"), Some(subject.clone()));
    let (_, list) = referrers(
        &reg,
        &format!("/v2/r/referrers/{subject}?artifactType=application/vnd.example.bundle"),
    )
    .await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["mediaType"], OCI_INDEX);
    assert_eq!(list[0]["digest"], sha256(&index).as_str());
    assert_eq!(list[0]["size"], index.len());
}

#[tokio::test]
async fn invalid_tags_are_refused() {
    let reg = start().await;
    let (m, _) = push_image(&reg, "r", "v1", 1).await;
    let before = tree(&reg.store);
    let long = "a".repeat(129);
    for tag in [".hidden", "-dash", long.as_str(), "a%2fb", "t%00", "a+b"] {
        let resp = reg.put_manifest("r", tag, OCI_MANIFEST, &m).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
        let resp = send(reg.get(&format!("/v2/r/manifests/{tag}"))).await;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "GET {tag}");
    }
    assert_eq!(tree(&reg.store), before, "refused tags wrote nothing");
    // The longest and the odd-but-valid ones.
    for tag in ["a".repeat(128), "_x".into(), "V1.0-rc_1".into(), "0".into()] {
        reg.push_manifest("r", &tag, OCI_MANIFEST, &m).await;
        assert_manifest(&reg, "r", &tag, OCI_MANIFEST, &m).await;
    }
}

#[tokio::test]
async fn a_blob_is_not_a_manifest() {
    let reg = start().await;
    let digest = reg.push_blob("r", br#"{"schemaVersion":2}"#).await;
    let resp = send(reg.get(&format!("/v2/r/manifests/{digest}"))).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    let resp = send(reg.delete(&format!("/v2/r/manifests/{digest}"))).await;
    expect_error(resp, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    // Nor can an index name a blob as a child.
    let index = index_manifest(
        OCI_INDEX,
        vec![json!({ "mediaType": OCI_MANIFEST, "digest": digest, "size": 19 })],
        json!({}),
    );
    let resp = reg.put_manifest("r", "idx", OCI_INDEX, &index).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn content_type_parameters_are_ignored() {
    let reg = start().await;
    let (m, _) = push_image(&reg, "r", "v1", 1).await;
    let resp = reg
        .put_manifest("r", "v2", &format!("{OCI_MANIFEST}; charset=utf-8"), &m)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_manifest(&reg, "r", "v2", OCI_MANIFEST, &m).await;
    // A generic Content-Type: the body's mediaType decides.
    let resp = reg.put_manifest("r", "v3", "application/json", &m).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_manifest(&reg, "r", "v3", OCI_MANIFEST, &m).await;
}
