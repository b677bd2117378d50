//! The registry's HTTP surface, end to end over loopback: the base and
//! health endpoints, routing (unknown endpoints, wrong methods, hostile
//! repository names), and the tag and catalog listings.
//!
//! Blobs, uploads and manifests have their own files next to this one.

mod common;

use common::*;
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test]
async fn base_endpoint_and_health() {
    let reg = start().await;
    for path in ["/v2/", "/v2"] {
        let resp = send(reg.get(path)).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(
            header(&resp, "docker-distribution-api-version").as_deref(),
            Some("registry/2.0")
        );
        assert_eq!(json(resp).await, json!({}));
    }
    let resp = send(reg.head("/v2/")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        header(&resp, "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );

    let resp = send(reg.get("/healthz")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await.unwrap(), "ok");

    // Errors carry the version header too.
    let resp = send(reg.get("/v2/nope/tags/list")).await;
    assert_eq!(
        header(&resp, "docker-distribution-api-version").as_deref(),
        Some("registry/2.0")
    );
    expect_error(resp, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
}

#[tokio::test]
async fn unknown_endpoints_are_404() {
    let reg = start().await;
    for path in [
        "/v2/a",
        "/v2/a/b",
        "/v2/a/unknown/x",
        "/v2/a/manifests/",
        "/v2/a/blobs/",
        "/v2/a/referrers/",
        "/v2/tags/list",
        "/v2/_catalog/x",
    ] {
        let resp = send(reg.get(path)).await;
        let v = expect_error(resp, StatusCode::NOT_FOUND, "UNSUPPORTED").await;
        assert!(v["errors"][0]["message"].as_str().is_some(), "{path}");
    }
    for path in ["/", "/v1/", "/healthz/x", "/v3/a/manifests/x"] {
        let resp = send(reg.get(path)).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn wrong_methods_are_405_unsupported() {
    let reg = start().await;
    let (_, digest) = push_image(&reg, "r", "v1", 1).await;
    let upload = reg.start_upload("r").await;
    let blob = format!("/v2/r/blobs/{digest}");
    let cases: Vec<(reqwest::Method, String)> = vec![
        (reqwest::Method::POST, "/v2/".into()),
        (reqwest::Method::PUT, "/v2/".into()),
        (reqwest::Method::DELETE, "/v2/_catalog".into()),
        (reqwest::Method::POST, "/v2/_catalog".into()),
        (reqwest::Method::PUT, "/v2/r/tags/list".into()),
        (reqwest::Method::DELETE, "/v2/r/tags/list".into()),
        (reqwest::Method::POST, "/v2/r/manifests/v1".into()),
        (reqwest::Method::PATCH, "/v2/r/manifests/v1".into()),
        (reqwest::Method::PUT, blob.clone()),
        (reqwest::Method::POST, blob.clone()),
        (reqwest::Method::PATCH, blob),
        (reqwest::Method::GET, "/v2/r/blobs/uploads/".into()),
        (reqwest::Method::PUT, "/v2/r/blobs/uploads/".into()),
        (reqwest::Method::DELETE, "/v2/r/blobs/uploads/".into()),
        (reqwest::Method::POST, upload.clone()),
        (reqwest::Method::HEAD, upload),
        (reqwest::Method::PUT, format!("/v2/r/referrers/{digest}")),
        (reqwest::Method::DELETE, format!("/v2/r/referrers/{digest}")),
    ];
    for (method, path) in cases {
        let resp = send(reg.req(method.clone(), &path)).await;
        if method == reqwest::Method::HEAD {
            assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
            continue;
        }
        let allow = header(&resp, "allow").unwrap_or_else(|| panic!("{method} {path}: no Allow"));
        let allowed: Vec<&str> = allow.split(',').map(str::trim).collect();
        assert!(
            !allowed.contains(&method.as_str()),
            "{method} {path}: Allow {allow}"
        );
        let v = expect_error(resp, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
        assert!(v["errors"][0]["message"].is_string(), "{method} {path}");
    }
    // RFC 9110: a 405 lists the methods the resource supports.
    for (path, allow) in [
        ("/v2/".to_owned(), "GET, HEAD"),
        ("/v2/_catalog".to_owned(), "GET"),
        ("/v2/r/tags/list".to_owned(), "GET"),
        ("/v2/r/manifests/v1".to_owned(), "GET, HEAD, PUT, DELETE"),
        (format!("/v2/r/blobs/{digest}"), "GET, HEAD, DELETE"),
        ("/v2/r/blobs/uploads/".to_owned(), "POST"),
        (
            format!("/v2/r/blobs/uploads/{}", "0".repeat(32)),
            "GET, PATCH, PUT, DELETE",
        ),
        (format!("/v2/r/referrers/{digest}"), "GET"),
    ] {
        let resp = send(reg.req(reqwest::Method::OPTIONS, &path)).await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(header(&resp, "allow").as_deref(), Some(allow), "{path}");
    }
    // Nothing above changed anything.
    let resp = send(reg.get("/v2/r/manifests/v1")).await;
    assert_eq!(resp.status(), StatusCode::OK);
}

/// Hostile names, sent byte for byte (a URL parser would resolve `..` and
/// `%2e%2e` before they reached the server).
#[tokio::test]
async fn hostile_names_are_refused_and_touch_nothing() {
    let reg = start().await;
    push_image(&reg, "ok", "v1", 2).await;
    let digest = sha256(b"x");
    let manifest = image_manifest(OCI_MANIFEST, desc(OCI_CONFIG, b"{}"), vec![], json!({}));
    let before = tree(reg.root.path());

    let names = [
        "..",
        "../..",
        "ok/..",
        "ok/../..",
        "../../../../../etc",
        "%2e%2e",
        "%2e%2e/%2e%2e",
        "ok/%2e%2e/%2e%2e",
        "%2E%2E",
        ".",
        "ok/.",
        ".hidden",
        "Upper",
        "ok/Upper",
        "a//b",
        "ok//",
        "_layers",
        "ok/_layers",
        "ok/_manifests",
        "ok/_manifests/tags",
        "_uploads",
        "ok/_referrers",
        "ok%2fevil",
        "a%00b",
        "a\\b",
        "-a",
        "a-",
        "a..b",
    ];
    for name in names {
        let mut cases = vec![
            ("GET", format!("/v2/{name}/tags/list"), Vec::new()),
            ("GET", format!("/v2/{name}/manifests/v1"), Vec::new()),
            ("PUT", format!("/v2/{name}/manifests/v1"), manifest.clone()),
            ("DELETE", format!("/v2/{name}/manifests/v1"), Vec::new()),
            ("GET", format!("/v2/{name}/blobs/{digest}"), Vec::new()),
            ("DELETE", format!("/v2/{name}/blobs/{digest}"), Vec::new()),
            ("POST", format!("/v2/{name}/blobs/uploads/"), Vec::new()),
            (
                "POST",
                format!("/v2/{name}/blobs/uploads/?digest={digest}"),
                b"x".to_vec(),
            ),
            (
                "POST",
                format!("/v2/{name}/blobs/uploads/?mount={digest}&from=ok"),
                Vec::new(),
            ),
            (
                "PATCH",
                format!("/v2/{name}/blobs/uploads/{}", "0".repeat(32)),
                b"x".to_vec(),
            ),
            ("GET", format!("/v2/{name}/referrers/{digest}"), Vec::new()),
        ];
        if !name.contains('\\') {
            cases.push(("HEAD", format!("/v2/{name}/manifests/v1"), Vec::new()));
        }
        for (method, path, body) in cases {
            let resp = reg.raw(method, &path, &body).await;
            assert_eq!(resp.status, 400, "{method} {path}: {resp:?}");
            if method != "HEAD" {
                assert_eq!(resp.code(), "NAME_INVALID", "{method} {path}");
            }
        }
    }
    // A hostile `from` of a mount.
    for from in ["..", "%2e%2e", "ok/..", "Upper", "_layers"] {
        let path = format!("/v2/ok/blobs/uploads/?mount={digest}&from={from}");
        let resp = reg.raw("POST", &path, b"").await;
        assert_eq!(resp.status, 400, "{path}");
        assert_eq!(resp.code(), "NAME_INVALID", "{path}");
    }

    assert_eq!(
        tree(reg.root.path()),
        before,
        "hostile requests changed the filesystem"
    );
    // Only the one legitimate repository exists.
    let v = json(send(reg.get("/v2/_catalog")).await).await;
    assert_eq!(v, json!({ "repositories": ["ok"] }));
}

#[tokio::test]
async fn tags_list_sorted_and_paginated() {
    let reg = start().await;
    let (m, _) = push_image(&reg, "lib/app", "v2", 3).await;
    for tag in ["latest", "v1", "a", "v10", "0.1", "b_c"] {
        reg.push_manifest("lib/app", tag, OCI_MANIFEST, &m).await;
    }
    let all = ["0.1", "a", "b_c", "latest", "v1", "v10", "v2"];

    let resp = send(reg.get("/v2/lib/app/tags/list")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "link"), None);
    assert_eq!(
        header(&resp, "content-type").as_deref(),
        Some("application/json")
    );
    assert_eq!(json(resp).await, json!({ "name": "lib/app", "tags": all }));

    // Follow the Link headers page by page.
    let mut path = "/v2/lib/app/tags/list?n=3".to_owned();
    let mut pages = Vec::new();
    loop {
        let resp = send(reg.get(&path)).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let link = header(&resp, "link");
        let v = json(resp).await;
        assert_eq!(v["name"], "lib/app");
        pages.push(v["tags"].clone());
        let Some(link) = link else { break };
        let (target, rel) = link.split_once("; ").expect("link format");
        assert_eq!(rel, "rel=\"next\"");
        path = target
            .strip_prefix('<')
            .and_then(|t| t.strip_suffix('>'))
            .expect("<target>")
            .to_owned();
        assert!(path.starts_with("/v2/lib/app/tags/list?"), "{path}");
    }
    assert_eq!(
        pages,
        vec![
            json!(["0.1", "a", "b_c"]),
            json!(["latest", "v1", "v10"]),
            json!(["v2"])
        ]
    );

    let resp = send(reg.get("/v2/lib/app/tags/list?n=2&last=b_c")).await;
    assert_eq!(
        header(&resp, "link").as_deref(),
        Some("</v2/lib/app/tags/list?n=2&last=v1>; rel=\"next\"")
    );
    assert_eq!(json(resp).await["tags"], json!(["latest", "v1"]));

    // `last` alone: everything after it, no Link.
    let resp = send(reg.get("/v2/lib/app/tags/list?last=v1")).await;
    assert_eq!(header(&resp, "link"), None);
    assert_eq!(json(resp).await["tags"], json!(["v10", "v2"]));

    // Exactly n left: no Link.
    let resp = send(reg.get("/v2/lib/app/tags/list?n=2&last=v1")).await;
    assert_eq!(header(&resp, "link"), None);
    assert_eq!(json(resp).await["tags"], json!(["v10", "v2"]));

    // n=0: an empty list and no Link (spec).
    let resp = send(reg.get("/v2/lib/app/tags/list?n=0")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "link"), None);
    assert_eq!(json(resp).await["tags"], json!([]));

    // Past the end.
    let resp = send(reg.get("/v2/lib/app/tags/list?n=5&last=zzz")).await;
    assert_eq!(json(resp).await["tags"], json!([]));

    let resp = send(reg.get("/v2/lib/app/tags/list?n=many")).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    for unknown in [
        "/v2/nope/tags/list",
        "/v2/lib/tags/list",
        "/v2/lib/app/x/tags/list",
    ] {
        let resp = send(reg.get(unknown)).await;
        expect_error(resp, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    }
}

/// The spec: "the tags MUST be in lexical order (i.e. case-insensitive
/// alphanumeric order)", and pages follow that order.
#[tokio::test]
async fn tags_are_ordered_case_insensitively() {
    let reg = start().await;
    let (m, _) = push_image(&reg, "r", "b", 1).await;
    for tag in ["C", "a", "B", "_x", "A", "c2", "Z9", "0"] {
        reg.push_manifest("r", tag, OCI_MANIFEST, &m).await;
    }
    let all = ["0", "_x", "A", "a", "B", "b", "C", "c2", "Z9"];
    let v = json(send(reg.get("/v2/r/tags/list")).await).await;
    assert_eq!(v["tags"], json!(all));

    let mut seen = Vec::new();
    let mut path = "/v2/r/tags/list?n=2".to_owned();
    loop {
        let resp = send(reg.get(&path)).await;
        let link = header(&resp, "link");
        let v = json(resp).await;
        let page = v["tags"].as_array().unwrap().clone();
        assert!(page.len() <= 2);
        seen.extend(page.into_iter().map(|t| t.as_str().unwrap().to_owned()));
        let Some(link) = link else { break };
        path = link[1..link.find('>').unwrap()].to_owned();
    }
    assert_eq!(seen, all);
    let v = json(send(reg.get("/v2/r/tags/list?last=a")).await).await;
    assert_eq!(v["tags"], json!(["B", "b", "C", "c2", "Z9"]));
}

#[tokio::test]
async fn catalog_paginated() {
    let reg = start().await;
    let repos = ["a", "b/c", "b/c/d", "d-e", "f.g/h", "z"];
    for r in repos {
        reg.push_blob(r, r.as_bytes()).await;
    }
    // An upload session alone does not create a repository.
    reg.start_upload("pending").await;

    let resp = send(reg.get("/v2/_catalog")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "link"), None);
    assert_eq!(json(resp).await, json!({ "repositories": repos }));

    let resp = send(reg.get("/v2/_catalog?n=2")).await;
    assert_eq!(
        header(&resp, "link").as_deref(),
        Some("</v2/_catalog?n=2&last=b/c>; rel=\"next\"")
    );
    assert_eq!(json(resp).await["repositories"], json!(["a", "b/c"]));

    let resp = send(reg.get("/v2/_catalog?n=2&last=b/c")).await;
    assert_eq!(
        header(&resp, "link").as_deref(),
        Some("</v2/_catalog?n=2&last=d-e>; rel=\"next\"")
    );
    assert_eq!(json(resp).await["repositories"], json!(["b/c/d", "d-e"]));

    let resp = send(reg.get("/v2/_catalog?n=2&last=d-e")).await;
    assert_eq!(header(&resp, "link"), None);
    assert_eq!(json(resp).await["repositories"], json!(["f.g/h", "z"]));

    let resp = send(reg.get("/v2/_catalog?last=b%2Fc%2Fd")).await;
    assert_eq!(
        json(resp).await["repositories"],
        json!(["d-e", "f.g/h", "z"])
    );

    let resp = send(reg.get("/v2/_catalog?n=0")).await;
    assert_eq!(header(&resp, "link"), None);
    assert_eq!(json(resp).await["repositories"], json!([]));
}

#[tokio::test]
async fn empty_catalog() {
    let reg = start().await;
    let resp = send(reg.get("/v2/_catalog")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(json(resp).await, json!({ "repositories": [] }));
}

#[tokio::test]
async fn name_length_limit() {
    let reg = start().await;
    // 255 characters, several components.
    let longest = format!("{}/{}", "a".repeat(127), "b".repeat(127));
    assert_eq!(longest.len(), 255);
    let digest = reg.push_blob(&longest, b"x").await;
    let resp = send(reg.get(&format!("/v2/{longest}/blobs/{digest}"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let v = json(send(reg.get("/v2/_catalog")).await).await;
    assert_eq!(v["repositories"], json!([longest]));

    let too_long = format!("{longest}c");
    let before = tree(reg.root.path());
    let resp = send(reg.post(&format!("/v2/{too_long}/blobs/uploads/"))).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    let resp = send(reg.get(&format!("/v2/{too_long}/tags/list"))).await;
    expect_error(resp, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    assert_eq!(tree(reg.root.path()), before);
}

#[tokio::test]
async fn malformed_query_strings() {
    let reg = start().await;
    reg.push_blob("r", b"x").await;
    for path in [
        "/v2/_catalog?n=-1",
        "/v2/_catalog?n=1.5",
        "/v2/r/tags/list?n=",
        "/v2/r/tags/list?n=99999999999999999999999",
    ] {
        let resp = send(reg.get(path)).await;
        expect_error(resp, StatusCode::BAD_REQUEST, "UNSUPPORTED").await;
    }
}
