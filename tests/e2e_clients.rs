//! End-to-end tests with REAL clients (skopeo, podman, the docker CLI with a
//! private dockerd, the PyPI oras package) against the real `berth` binary.
//! Each test starts its own berth on loopback with its own temp dirs, checks
//! digests and contents both through the clients and with plain HTTP, and
//! leaves no process running. The tools come from scripts/install-test-deps;
//! a missing tool fails the test.

mod common;

use std::path::Path;

use common::berth::Berth;
use common::clients::{
    Dockerd, Oras, Podman, Skopeo, TestImage, processes_mentioning, read_oci_blob, read_oci_layout,
    run, run_ok, sha256_digest,
};
use serde_json::Value;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// A plain HTTP response, read whole.
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

async fn get(url: &str, accept: &[&str]) -> Resp {
    let mut req = reqwest::Client::new().get(url);
    for a in accept {
        req = req.header("Accept", *a);
    }
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    let body = r.bytes().await.expect("body").to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

/// GETs a manifest (any image manifest type) and checks that the
/// registry's digest header matches the content; returns the bytes.
async fn get_manifest(b: &Berth, repo: &str, reference: &str) -> (String, Vec<u8>) {
    let url = format!("{}/v2/{repo}/manifests/{reference}", b.url());
    let r = get(&url, &[OCI_MANIFEST, DOCKER_MANIFEST, OCI_INDEX]).await;
    assert_eq!(
        r.status,
        200,
        "GET {url}: {}",
        String::from_utf8_lossy(&r.body)
    );
    let digest = sha256_digest(&r.body);
    assert_eq!(
        r.header("docker-content-digest"),
        Some(digest.as_str()),
        "GET {url}: digest header vs content"
    );
    (digest, r.body)
}

/// GETs a blob and checks its content against its digest.
async fn get_blob(b: &Berth, repo: &str, digest: &str) -> Vec<u8> {
    let url = format!("{}/v2/{repo}/blobs/{digest}", b.url());
    let r = get(&url, &[]).await;
    assert_eq!(r.status, 200, "GET {url}");
    assert_eq!(sha256_digest(&r.body), digest, "content of {url}");
    r.body
}

async fn tags(b: &Berth, repo: &str) -> (u16, Vec<String>) {
    let r = get(&format!("{}/v2/{repo}/tags/list", b.url()), &[]).await;
    if r.status != 200 {
        return (r.status, Vec::new());
    }
    let mut t: Vec<String> = r.json()["tags"]
        .as_array()
        .map(|a| a.iter().map(|s| s.as_str().unwrap().to_owned()).collect())
        .unwrap_or_default();
    t.sort();
    (r.status, t)
}

fn digests_of(manifest: &Value) -> (String, Vec<String>) {
    let config = manifest["config"]["digest"]
        .as_str()
        .expect("config digest")
        .to_owned();
    let layers = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_owned())
        .collect();
    (config, layers)
}

/// Asserts that nothing started by the test (anything whose command line
/// names its temp dir) is still running.
fn assert_nothing_left(dir: &Path) {
    let left = processes_mentioning(&dir.display().to_string());
    assert!(left.is_empty(), "processes left running: {left:?}");
}

#[tokio::test]
async fn skopeo_copy_inspect_list_tags_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Berth::start(&tmp.path().join("data"));
    let skopeo = Skopeo::new(&tmp.path().join("skopeo"));
    let image = TestImage::build(&tmp.path().join("oci"), "v1", "skopeo");
    let repo = "e2e/skopeo";
    let dest = |tag: &str| format!("docker://{}/{repo}:{tag}", b.addr);

    // Push twice (two tags); --preserve-digests makes skopeo fail rather
    // than silently convert.
    for tag in ["v1", "v2"] {
        run_ok(skopeo.cmd().args([
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &image.oci_ref(),
            &dest(tag),
        ]));
    }

    // What the registry serves is exactly what was pushed.
    let (digest, bytes) = get_manifest(&b, repo, "v1").await;
    assert_eq!(digest, image.manifest_digest);
    assert_eq!(bytes, image.manifest);
    assert_eq!(
        get_manifest(&b, repo, &image.manifest_digest).await.1,
        image.manifest
    );
    let config = get_blob(&b, repo, &image.config_digest).await;
    assert_eq!(config, read_oci_blob(&image.layout, &image.config_digest));
    for layer in &image.layer_digests {
        let served = get_blob(&b, repo, layer).await;
        assert_eq!(served, read_oci_blob(&image.layout, layer));
    }

    // skopeo inspect: digest and layers; --raw is the manifest byte for byte.
    let inspect = run_ok(
        skopeo
            .cmd()
            .args(["inspect", "--tls-verify=false", &dest("v1")]),
    )
    .json();
    assert_eq!(inspect["Digest"], image.manifest_digest.as_str());
    let layers: Vec<&str> = inspect["Layers"]
        .as_array()
        .expect("Layers")
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(layers, image.layer_digests);
    let raw = run_ok(
        skopeo
            .cmd()
            .args(["inspect", "--raw", "--tls-verify=false", &dest("v2")]),
    );
    assert_eq!(raw.stdout.as_bytes(), image.manifest.as_slice());
    let raw_config = run_ok(skopeo.cmd().args([
        "inspect",
        "--config",
        "--raw",
        "--tls-verify=false",
        &dest("v1"),
    ]));
    assert_eq!(
        sha256_digest(raw_config.stdout.as_bytes()),
        image.config_digest
    );

    // list-tags
    let listed = run_ok(skopeo.cmd().args([
        "list-tags",
        "--tls-verify=false",
        &format!("docker://{}/{repo}", b.addr),
    ]))
    .json();
    let mut listed_tags: Vec<&str> = listed["Tags"]
        .as_array()
        .expect("Tags")
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    listed_tags.sort();
    assert_eq!(listed_tags, ["v1", "v2"]);

    // Registry to registry, into another repository (skopeo tries a
    // cross-repository mount first): the same manifest, blobs readable there.
    run_ok(skopeo.cmd().args([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        "--dest-tls-verify=false",
        &dest("v1"),
        &format!("docker://{}/e2e/skopeo-copy:v1", b.addr),
    ]));
    let (copied, _) = get_manifest(&b, "e2e/skopeo-copy", "v1").await;
    assert_eq!(copied, image.manifest_digest);
    for blob in image.layer_digests.iter().chain([&image.config_digest]) {
        get_blob(&b, "e2e/skopeo-copy", blob).await;
    }

    // Copy back into a fresh OCI layout: same manifest, config and layers.
    let back = tmp.path().join("back");
    run_ok(skopeo.cmd().args([
        "copy",
        "--preserve-digests",
        "--src-tls-verify=false",
        &dest("v1"),
        &format!("oci:{}:pulled", back.display()),
    ]));
    let (back_digest, back_manifest) = read_oci_layout(&back, "pulled");
    assert_eq!(back_digest, image.manifest_digest);
    assert_eq!(back_manifest, image.manifest);
    let (config_digest, layer_digests) =
        digests_of(&serde_json::from_slice(&back_manifest).unwrap());
    assert_eq!(config_digest, image.config_digest);
    assert_eq!(layer_digests, image.layer_digests);
    read_oci_blob(&back, &config_digest);
    for layer in &layer_digests {
        assert_eq!(
            read_oci_blob(&back, layer),
            read_oci_blob(&image.layout, layer)
        );
    }

    // Delete by digest: the manifest is gone, by digest and by its tags.
    run_ok(skopeo.cmd().args([
        "delete",
        "--tls-verify=false",
        &format!("docker://{}/{repo}@{}", b.addr, image.manifest_digest),
    ]));
    let url = format!("{}/v2/{repo}/manifests/{}", b.url(), image.manifest_digest);
    assert_eq!(get(&url, &[OCI_MANIFEST]).await.status, 404, "GET {url}");
    for tag in ["v1", "v2"] {
        let url = format!("{}/v2/{repo}/manifests/{tag}", b.url());
        assert_eq!(get(&url, &[OCI_MANIFEST]).await.status, 404, "GET {url}");
    }
    let (_, left) = tags(&b, repo).await;
    assert!(left.is_empty(), "tags left after delete: {left:?}");
    let inspect_deleted = run(skopeo
        .cmd()
        .args(["inspect", "--tls-verify=false", &dest("v1")]));
    assert!(
        !inspect_deleted.status.success(),
        "skopeo inspect after delete: {}",
        inspect_deleted.stdout
    );

    drop(b);
    assert_nothing_left(tmp.path());
}

#[tokio::test]
async fn podman_push_and_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Berth::start(&tmp.path().join("data"));
    let podman = Podman::new(&tmp.path().join("podman"));
    let image = TestImage::build(&tmp.path().join("oci"), "v1", "podman");
    let config_hex = image.config_digest.trim_start_matches("sha256:");
    let name = format!("{}/e2e/podman:v1", b.addr);

    // Into podman's own storage straight from the OCI layout (no registry).
    // A relative path: podman names the image after it, and the temp dir's
    // name has capitals, which a repository name must not.
    let id = run_ok(podman.cmd().current_dir(tmp.path()).args([
        "pull",
        "-q",
        &format!("oci:oci:{}", image.tag),
    ]));
    assert_eq!(
        id.stdout.trim(),
        config_hex,
        "image ID is the config digest"
    );
    run_ok(podman.cmd().args(["tag", config_hex, &name]));

    let digestfile = tmp.path().join("pushed.digest");
    run_ok(podman.cmd().args([
        "push",
        "--tls-verify=false",
        "--digestfile",
        digestfile.to_str().unwrap(),
        &name,
    ]));
    let pushed = std::fs::read_to_string(&digestfile).unwrap();
    let pushed = pushed.trim();
    assert!(pushed.starts_with("sha256:"), "digest file: {pushed:?}");

    // The registry serves, under the tag, the manifest podman pushed, with
    // our config and layers whose blobs match their digests.
    let (digest, bytes) = get_manifest(&b, "e2e/podman", "v1").await;
    assert_eq!(digest, pushed);
    let (config, layers) = digests_of(&serde_json::from_slice(&bytes).unwrap());
    assert_eq!(config, image.config_digest);
    assert_eq!(layers.len(), image.layer_digests.len());
    for layer in &layers {
        get_blob(&b, "e2e/podman", layer).await;
    }

    // Remove every local image, pull back from berth.
    run_ok(podman.cmd().args(["rmi", "-a", "-f"]));
    let listed = run_ok(podman.cmd().args(["images", "-q"]));
    assert_eq!(listed.stdout.trim(), "", "images left after rmi");
    run_ok(podman.cmd().args(["pull", "--tls-verify=false", &name]));
    let inspect = run_ok(podman.cmd().args(["image", "inspect", &name])).json();
    let img = &inspect[0];
    assert_eq!(img["Digest"], pushed, "pulled digest: {img}");
    assert_eq!(img["Id"], config_hex);
    let repo_digests = img["RepoDigests"].to_string();
    assert!(
        repo_digests.contains(&format!("{}/e2e/podman@{pushed}", b.addr)),
        "RepoDigests {repo_digests}"
    );
    let diff_ids: Vec<&str> = img["RootFS"]["Layers"]
        .as_array()
        .expect("RootFS.Layers")
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert_eq!(diff_ids, image.diff_ids, "uncompressed layers");

    drop(b);
    assert_nothing_left(tmp.path());
}

#[tokio::test]
async fn docker_load_push_rmi_pull() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Berth::start(&tmp.path().join("data"));
    let skopeo = Skopeo::new(&tmp.path().join("skopeo"));
    let image = TestImage::build(&tmp.path().join("oci"), "v1", "docker");
    let archive = tmp.path().join("image.tar");
    image.docker_archive(&skopeo, &archive, "e2e/loaded:v1");
    let dockerd = Dockerd::start();
    let docker_dir = dockerd.socket.parent().unwrap().to_owned();
    let name = format!("{}/e2e/docker:v1", b.addr);

    let loaded = run_ok(
        dockerd
            .cmd()
            .args(["load", "-i", archive.to_str().unwrap()]),
    );
    assert!(
        loaded.stdout.contains("e2e/loaded:v1"),
        "docker load: {}",
        loaded.stdout
    );
    run_ok(dockerd.cmd().args(["tag", "e2e/loaded:v1", &name]));
    let push = run_ok(dockerd.cmd().args(["push", &name]));
    // "v1: digest: sha256:... size: N"
    let pushed = push
        .stdout
        .lines()
        .find_map(|l| l.split("digest: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .unwrap_or_else(|| panic!("no digest in docker push output: {}", push.stdout))
        .to_owned();

    let (digest, bytes) = get_manifest(&b, "e2e/docker", "v1").await;
    assert_eq!(digest, pushed);
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    let (config, layers) = digests_of(&manifest);
    assert_eq!(config, image.config_digest, "docker keeps the image config");
    assert_eq!(layers.len(), image.layer_digests.len());
    for layer in &layers {
        get_blob(&b, "e2e/docker", layer).await;
    }

    // The same image into a second repository: docker tries a
    // cross-repository mount of the layer; the result must be identical.
    let second = format!("{}/e2e/docker-second:v1", b.addr);
    run_ok(dockerd.cmd().args(["tag", &name, &second]));
    let push2 = run_ok(dockerd.cmd().args(["push", &second]));
    assert!(
        push2.stdout.contains(&format!("digest: {pushed} ")),
        "second push: {}",
        push2.stdout
    );
    for blob in layers.iter().chain([&config]) {
        get_blob(&b, "e2e/docker-second", blob).await;
    }

    run_ok(dockerd.cmd().args(["rmi", &name, &second, "e2e/loaded:v1"]));
    let gone = run(dockerd.cmd().args(["image", "inspect", &name]));
    assert!(!gone.status.success(), "image still present after rmi");

    let pull = run_ok(dockerd.cmd().args(["pull", &name]));
    assert!(
        pull.stdout.contains(&format!("Digest: {pushed}")),
        "docker pull: {}",
        pull.stdout
    );
    let repo_digests =
        run_ok(
            dockerd
                .cmd()
                .args(["inspect", "--format", "{{json .RepoDigests}}", &name]),
        )
        .json();
    assert_eq!(
        repo_digests,
        serde_json::json!([format!("{}/e2e/docker@{pushed}", b.addr)])
    );
    let inspect = run_ok(dockerd.cmd().args(["image", "inspect", &name])).json();
    assert_eq!(inspect[0]["Id"], image.config_digest.as_str());
    assert_eq!(
        inspect[0]["RootFS"]["Layers"],
        serde_json::json!(image.diff_ids)
    );

    // Pull by digest too.
    let by_digest = format!("{}/e2e/docker@{pushed}", b.addr);
    run_ok(dockerd.cmd().args(["pull", &by_digest]));

    let stopped = dockerd.stop();
    assert!(
        stopped.len() >= 2,
        "expected dockerd and its containerd, stopped {stopped:?}"
    );
    for p in &stopped {
        assert!(
            !p.alive(),
            "still running after stop: {p:?} {}",
            p.cmdline()
        );
    }
    drop(b);
    assert_nothing_left(tmp.path());
    assert_nothing_left(&docker_dir);
}

#[tokio::test]
async fn oras_artifact_with_subject_and_referrers() {
    let tmp = tempfile::tempdir().unwrap();
    let b = Berth::start(&tmp.path().join("data"));
    let skopeo = Skopeo::new(&tmp.path().join("skopeo"));
    let oras = Oras::new();
    let image = TestImage::build(&tmp.path().join("oci"), "v1", "oras");
    let repo = "e2e/oras";
    run_ok(skopeo.cmd().args([
        "copy",
        "--preserve-digests",
        "--dest-tls-verify=false",
        &image.oci_ref(),
        &format!("docker://{}/{repo}:v1", b.addr),
    ]));

    // The artifact: a file with some bytes that are not all text.
    let work = tmp.path().join("artifact");
    std::fs::create_dir_all(&work).unwrap();
    let content: Vec<u8> = (0..50_000u32)
        .flat_map(|i| (i.wrapping_mul(2_654_435_761)).to_le_bytes())
        .collect();
    std::fs::write(work.join("sbom.bin"), &content).unwrap();
    let layer_type = "application/vnd.berth.test.sbom";
    let artifact_type = "application/vnd.berth.test.config.v1+json";
    let pushed = run_ok(oras.cmd().current_dir(&work).args([
        "push",
        &b.addr,
        &format!("{repo}:sbom"),
        "sbom.bin",
        layer_type,
        artifact_type,
        OCI_MANIFEST,
        &image.manifest_digest,
        &image.manifest.len().to_string(),
    ]))
    .json();
    assert_eq!(pushed["status"], 201, "{pushed}");
    let artifact_digest = pushed["digest"].as_str().expect("digest").to_owned();

    // The artifact manifest as stored: subject and layer.
    let (digest, bytes) = get_manifest(&b, repo, "sbom").await;
    assert_eq!(digest, artifact_digest);
    let manifest: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(
        manifest["subject"]["digest"],
        image.manifest_digest.as_str()
    );
    assert_eq!(manifest["layers"][0]["digest"], sha256_digest(&content));
    assert_eq!(manifest["layers"][0]["mediaType"], layer_type);

    // Referrers of the image list the artifact.
    let url = format!("{}/v2/{repo}/referrers/{}", b.url(), image.manifest_digest);
    let r = get(&url, &[]).await;
    assert_eq!(r.status, 200, "GET {url}");
    assert!(
        r.header("content-type")
            .unwrap_or("")
            .starts_with(OCI_INDEX),
        "content-type {:?}",
        r.header("content-type")
    );
    let index = r.json();
    let listed = index["manifests"].as_array().expect("manifests");
    assert_eq!(listed.len(), 1, "{index}");
    assert_eq!(listed[0]["digest"], artifact_digest.as_str());
    assert_eq!(listed[0]["mediaType"], OCI_MANIFEST);
    assert_eq!(listed[0]["size"], bytes.len());
    assert_eq!(listed[0]["artifactType"], artifact_type);
    assert_eq!(
        listed[0]["annotations"]["org.opencontainers.image.description"],
        "berth e2e"
    );

    // Filtering by artifactType, when the registry says it applied it.
    let other = get(&format!("{url}?artifactType=application/x-other"), &[]).await;
    assert_eq!(other.status, 200);
    if other
        .header("oci-filters-applied")
        .is_some_and(|f| f.contains("artifactType"))
    {
        assert_eq!(other.json()["manifests"], serde_json::json!([]));
    }

    // Pull it back with oras, by digest: the same bytes.
    let out = tmp.path().join("pulled");
    let pulled = run_ok(oras.cmd().args([
        "pull",
        &b.addr,
        &format!("{repo}@{artifact_digest}"),
        out.to_str().unwrap(),
    ]))
    .json();
    assert_eq!(
        pulled["files"].as_array().map(Vec::len),
        Some(1),
        "{pulled}"
    );
    assert_eq!(std::fs::read(out.join("sbom.bin")).unwrap(), content);

    drop(b);
    assert_nothing_left(tmp.path());
}
