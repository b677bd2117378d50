//! berth's namespace policy enforced at the registry, end to end: a real
//! Keystone, `berth serve` (the real binary: registry and token service in
//! one process, HTTPS with the CA it generates) and skopeo trusting that CA
//! through `--cert-dir`, logging in with Keystone passwords, no credentials,
//! or the Docker `config.json` that `berth pull-secret` writes.
//!
//! - The seed's rule: alice pushes `alice/app:v1`; bob can neither push
//!   `alice/app:v2`, nor delete `alice/app:v1`, its blobs or its manifest
//!   (raw `DELETE`s with a token he obtained: 401 `DENIED`,
//!   `insufficient_scope`), nor mount its blobs into his own repository,
//!   nor touch or finish her upload in progress; deleting his own copy of
//!   the same image takes nothing from her; nothing of hers changes. Only
//!   administrators list the catalog.
//! - Project roles: a member of P pushes `P/app:1` (and deeper names), a
//!   reader pulls it but cannot push, a user without a role cannot pull.
//! - Sharing: Q tagged `registry-public` is pulled by every authenticated
//!   user, pushed by none of them; S tagged `registry-pull=<P>` is pulled by
//!   P's members (and P's pull secret) and by nobody else; `public/` is
//!   pulled by every authenticated user and pushed by administrators only.
//!   Refused pushes leave no tag behind.
//! - Registry administrators (the `admin` role on Keystone's admin
//!   project: a user given it, and the bootstrap admin) delete alice's image
//!   and S's.
//! - A pull secret (an application credential with `reader` on P) pulls
//!   `P/app:1` and cannot push or delete.
//! - Anonymous clients pull Q (and nothing else, not even `public/`, and
//!   push nowhere) with `identity.anonymous_pull_public = true`, and nothing
//!   with the default.
//!
//! berth is started twice on one data directory: with anonymous pull of
//! public projects, then with the default. Everything is created in
//! Keystone before berth starts (its project directory is cached).

mod common;

use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::berth::{Berth, client_trusting};
use common::clients::{
    Proc, Ran, Skopeo, TestImage, processes_mentioning, read_oci_blob, refused, run,
};
use common::keystone::{DEFAULT_DOMAIN_ID, Keystone, UserLogin, unique};
use common::pull_secret::pull_auth_file;
use serde_json::{Value, json};

/// How a skopeo command authenticates.
#[derive(Clone, Copy)]
enum Auth<'a> {
    /// `user:password`
    Creds(&'a str),
    /// A Docker `config.json`.
    File(&'a Path),
    /// No credentials at all.
    Anonymous,
}

/// skopeo against one `berth serve`, trusting its CA through a cert dir
/// that holds only `ca.crt`, with a home of its own (no auth file of the
/// machine's counts).
struct Client {
    skopeo: Skopeo,
    certs: PathBuf,
    home: PathBuf,
    /// `HOST:PORT` of the registry.
    registry: String,
}

impl Client {
    fn new(dir: &Path, berth: &Berth) -> Client {
        let certs = dir.join("certs");
        std::fs::create_dir_all(&certs).unwrap();
        std::fs::copy(berth.ca_cert(), certs.join("ca.crt")).unwrap();
        let home = dir.join("home");
        std::fs::create_dir_all(home.join("run")).unwrap();
        Client {
            skopeo: Skopeo::new(&dir.join("skopeo")),
            certs,
            home,
            registry: berth.addr.clone(),
        }
    }

    /// `docker://HOST:PORT/<reference>`
    fn url(&self, reference: &str) -> String {
        format!("docker://{}/{reference}", self.registry)
    }

    /// skopeo SUBCOMMAND with the cert dir and `auth` given under `prefix`
    /// (`""`, `"src-"` or `"dest-"`).
    fn cmd(&self, subcommand: &str, prefix: &str, auth: Auth) -> std::process::Command {
        let mut c = self.skopeo.cmd();
        c.env("HOME", &self.home)
            .env("XDG_RUNTIME_DIR", self.home.join("run"))
            .env_remove("REGISTRY_AUTH_FILE")
            .env_remove("DOCKER_CONFIG")
            .arg(subcommand)
            .arg(format!("--{prefix}cert-dir"))
            .arg(&self.certs);
        match auth {
            Auth::Creds(creds) => {
                c.arg(format!("--{prefix}creds")).arg(creds);
            }
            Auth::File(file) => {
                c.arg(format!("--{prefix}authfile")).arg(file);
            }
            Auth::Anonymous => {
                c.arg(format!("--{prefix}no-creds"));
            }
        }
        c
    }

    /// Pushes `image` to `reference` (`repo:tag`), digests preserved.
    fn push(&self, auth: Auth, image: &TestImage, reference: &str) -> Ran {
        run(self.cmd("copy", "dest-", auth).args([
            "--preserve-digests",
            &image.oci_ref(),
            &self.url(reference),
        ]))
    }

    /// Pulls `reference` into a new OCI layout under `dir`; returns the
    /// outcome and the layout's path.
    fn pull(&self, auth: Auth, reference: &str, dir: &Path) -> (Ran, PathBuf) {
        let layout = dir.join(unique("pulled"));
        let ran = run(self.cmd("copy", "src-", auth).args([
            &self.url(reference),
            &format!("oci:{}:pulled", layout.display()),
        ]));
        (ran, layout)
    }

    /// `skopeo inspect --raw`: the manifest bytes.
    fn manifest(&self, auth: Auth, reference: &str) -> Ran {
        run(self
            .cmd("inspect", "", auth)
            .args(["--raw", &self.url(reference)]))
    }

    fn delete(&self, auth: Auth, reference: &str) -> Ran {
        run(self.cmd("delete", "", auth).arg(self.url(reference)))
    }

    fn tags(&self, auth: Auth, repository: &str) -> Ran {
        run(self.cmd("list-tags", "", auth).arg(self.url(repository)))
    }
}

/// Panics unless a client command succeeded.
fn allowed(ran: Ran, what: &str) -> Ran {
    assert!(
        ran.status.success(),
        "{what} was refused: {}\n--- stderr\n{}",
        ran.what,
        ran.stderr
    );
    ran
}

/// The OCI layout `layout` (as pulled) holds `image`'s manifest.
fn pulled_is(layout: &Path, image: &TestImage) {
    let (digest, manifest) = common::clients::read_oci_layout(layout, "pulled");
    assert_eq!(digest, image.manifest_digest);
    assert_eq!(manifest, image.manifest);
}

fn creds(user: &UserLogin) -> String {
    format!("{}:{}", user.name, user.password)
}

/// Talks to the registry's HTTP API directly, getting tokens as a client
/// does: the realm and service from the registry's challenge.
struct Raw {
    http: reqwest::Client,
    base: String,
    realm: String,
    service: String,
}

impl Raw {
    async fn new(berth: &Berth) -> Raw {
        let http = client_trusting(&berth.ca_cert());
        let base = berth.https_url();
        let r = http.get(format!("{base}/v2/")).send().await.unwrap();
        assert_eq!(r.status(), 401);
        let challenge = r.headers()["www-authenticate"].to_str().unwrap();
        let param = |name: &str| {
            challenge
                .split(&format!("{name}=\""))
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| panic!("no {name} in {challenge}"))
                .to_owned()
        };
        Raw {
            realm: param("realm"),
            service: param("service"),
            http,
            base,
        }
    }

    /// A token for `scopes` as `user` (anonymous when `None`); returns it
    /// with its decoded claims.
    async fn token(&self, user: Option<&UserLogin>, scopes: &[&str]) -> (String, Value) {
        let mut query = vec![("service", self.service.as_str())];
        query.extend(scopes.iter().map(|s| ("scope", *s)));
        let mut req = self.http.get(&self.realm).query(&query);
        if let Some(u) = user {
            req = req.basic_auth(&u.name, Some(&u.password));
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "token for {scopes:?}");
        let body: Value = r.json().await.unwrap();
        let jwt = body["token"].as_str().expect("token").to_owned();
        let payload = jwt.split('.').nth(1).expect("JWT payload");
        let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        (jwt, claims)
    }

    /// `method path` with `token`, to add a body or headers to.
    fn request(&self, method: reqwest::Method, path: &str, token: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token)
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
    ) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
        finish(self.request(method, path, token)).await
    }

    /// `method path` with `token` must be refused for want of access: 401,
    /// a challenge with `error="insufficient_scope"`, the code `DENIED`.
    async fn assert_denied(&self, method: reqwest::Method, path: &str, token: &str) {
        self.assert_denied_with(self.request(method.clone(), path, token), &method, path)
            .await;
    }

    /// Like [`Raw::assert_denied`], for a request with a body or headers.
    async fn assert_denied_with(
        &self,
        request: reqwest::RequestBuilder,
        method: &reqwest::Method,
        path: &str,
    ) {
        let (status, headers, body) = finish(request).await;
        let body = String::from_utf8_lossy(&body);
        assert_eq!(status, 401, "{method} {path}: {body}");
        let challenge = headers["www-authenticate"].to_str().unwrap();
        assert!(
            challenge.contains("error=\"insufficient_scope\""),
            "{method} {path}: {challenge}"
        );
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            body["errors"][0]["code"], "DENIED",
            "{method} {path}: {body}"
        );
    }
}

/// Sends a request; returns its status, headers and body.
async fn finish(request: reqwest::RequestBuilder) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = request.send().await.unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

#[tokio::test]
async fn the_registry_enforces_the_namespace_policy() {
    let t0 = Instant::now();
    let lap = |what: &str| eprintln!("{:>6.1} s  {what}", t0.elapsed().as_secs_f64());

    // Keystone: alice, bob; project P with m (member) and r (reader); Q
    // tagged registry-public and S shared with P, both kept by k (member);
    // o has no role anywhere.
    let ks = Keystone::start();
    let keystone_dir = ks.dir().to_owned();
    let admin = ks.admin();
    let svc = admin.create_service_account().await;
    let user = |prefix: &'static str| admin.new_user(prefix);
    let (alice, bob, m, r, k, o, boss) = (
        user("alice").await,
        user("bob").await,
        user("m").await,
        user("r").await,
        user("k").await,
        user("o").await,
        user("boss").await,
    );
    let p = unique("team");
    let q = unique("pub");
    let s = unique("shared");
    let p_id = admin.create_project(&p, DEFAULT_DOMAIN_ID, &[]).await;
    let q_id = admin
        .create_project(&q, DEFAULT_DOMAIN_ID, &["registry-public"])
        .await;
    let s_id = admin
        .create_project(&s, DEFAULT_DOMAIN_ID, &[&format!("registry-pull={p}")])
        .await;
    admin.assign_project_role(&m.id, &p_id, "member").await;
    admin.assign_project_role(&r.id, &p_id, "reader").await;
    admin.assign_project_role(&k.id, &q_id, "member").await;
    admin.assign_project_role(&k.id, &s_id, "member").await;
    // boss is a registry administrator by Keystone role: admin on the
    // admin project.
    let (_, projects) = admin
        .call(reqwest::Method::GET, "/projects?name=admin", None, &[200])
        .await;
    let admin_project = projects["projects"][0]["id"]
        .as_str()
        .expect("admin project");
    admin
        .assign_project_role(&boss.id, admin_project, "admin")
        .await;
    let (admin_name, admin_password) = ks.admin_credentials();
    let admin_creds = format!("{admin_name}:{admin_password}");
    lap("Keystone with users and projects");

    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("berth");
    let keystone_env = ks.berth_env(&svc);
    let mut env = keystone_env.to_vec();
    env.push(("BERTH_IDENTITY_ANONYMOUS_PULL_PUBLIC", "true"));
    let berth = Berth::start_all(&data, "127.0.0.1", &[], &env);
    let mut started: Vec<Proc> = Proc::of(berth.pid()).into_iter().collect();
    let c = Client::new(&tmp.path().join("client"), &berth);
    let raw = Raw::new(&berth).await;
    lap("berth serve, anonymous pull of public projects on");

    let image = |tag: &str, seed: &str| TestImage::build(&tmp.path().join(seed), tag, seed);
    let (alice_image, p_image, q_image, s_image) = (
        image("v1", "alice"),
        image("1", "p"),
        image("x", "q"),
        image("y", "s"),
    );
    let (alice_c, bob_c, m_c, r_c, k_c, o_c, boss_c) = (
        creds(&alice),
        creds(&bob),
        creds(&m),
        creds(&r),
        creds(&k),
        creds(&o),
        creds(&boss),
    );
    let (alice_a, bob_a, m_a, r_a, k_a, o_a) = (
        Auth::Creds(&alice_c),
        Auth::Creds(&bob_c),
        Auth::Creds(&m_c),
        Auth::Creds(&r_c),
        Auth::Creds(&k_c),
        Auth::Creds(&o_c),
    );
    let pulls = tmp.path().join("pulls");
    std::fs::create_dir_all(&pulls).unwrap();

    // 1. The seed's test. alice pushes alice/app:v1.
    let alice_repo = format!("{}/app", alice.name);
    let alice_v1 = format!("{alice_repo}:v1");
    allowed(c.push(alice_a, &alice_image, &alice_v1), "alice's push");
    let before = allowed(c.manifest(alice_a, &alice_v1), "alice's inspect").stdout;
    assert_eq!(before.as_bytes(), alice_image.manifest.as_slice());

    // bob can neither push alice/app:v2, nor delete alice/app:v1, nor pull it.
    refused(
        c.push(bob_a, &alice_image, &format!("{alice_repo}:v2")),
        "bob pushing alice/app:v2",
    );
    refused(c.delete(bob_a, &alice_v1), "bob deleting alice/app:v1");
    refused(c.manifest(bob_a, &alice_v1), "bob pulling alice/app:v1");

    // skopeo delete stops at the manifest GET it is refused; bob's own
    // DELETEs, with the token he gets for that scope, are refused by the
    // registry: the token service grants him nothing there.
    let scope = format!("repository:{alice_repo}:pull,push,delete");
    let (bob_token, claims) = raw.token(Some(&bob), &[&scope]).await;
    assert_eq!(claims["sub"], bob.name.as_str());
    assert_eq!(claims["access"], json!([]), "{claims}");
    let (alice_token, claims) = raw.token(Some(&alice), &[&scope]).await;
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": alice_repo, "actions": ["pull", "push", "delete"]}]),
        "alice is granted what bob is not"
    );
    let alice_blobs: Vec<&String> = alice_image
        .layer_digests
        .iter()
        .chain([&alice_image.config_digest])
        .collect();
    for digest in &alice_blobs {
        let path = format!("/v2/{alice_repo}/blobs/{digest}");
        raw.assert_denied(reqwest::Method::DELETE, &path, &bob_token)
            .await;
        raw.assert_denied(reqwest::Method::GET, &path, &bob_token)
            .await;
    }
    for reference in [alice_image.manifest_digest.as_str(), "v1"] {
        let path = format!("/v2/{alice_repo}/manifests/{reference}");
        raw.assert_denied(reqwest::Method::DELETE, &path, &bob_token)
            .await;
    }
    // A token for his own namespace is no better in alice's.
    let bob_repo = format!("{}/app", bob.name);
    let (bob_own, claims) = raw
        .token(Some(&bob), &[&format!("repository:{bob_repo}:*")])
        .await;
    assert_eq!(
        claims["access"][0]["actions"],
        json!(["pull", "push", "delete"])
    );
    raw.assert_denied(
        reqwest::Method::DELETE,
        &format!("/v2/{alice_repo}/blobs/{}", alice_blobs[0]),
        &bob_own,
    )
    .await;
    // Nor can he mount her blobs into his repository.
    let (bob_mount, _) = raw
        .token(
            Some(&bob),
            &[
                &format!("repository:{bob_repo}:pull,push"),
                &format!("repository:{alice_repo}:pull"),
            ],
        )
        .await;
    raw.assert_denied(
        reqwest::Method::POST,
        &format!(
            "/v2/{bob_repo}/blobs/uploads/?mount={}&from={alice_repo}",
            alice_blobs[0]
        ),
        &bob_mount,
    )
    .await;
    let (status, _, _) = raw
        .send(
            reqwest::Method::HEAD,
            &format!("/v2/{bob_repo}/blobs/{}", alice_blobs[0]),
            &bob_own,
        )
        .await;
    assert_eq!(status, 404, "alice's blob in bob's repository");
    // Nor can he touch her upload in progress, or finish it into his
    // repository (where he could read it).
    let (status, headers, _) = raw
        .send(
            reqwest::Method::POST,
            &format!("/v2/{alice_repo}/blobs/uploads/"),
            &alice_token,
        )
        .await;
    assert_eq!(status, 202, "alice starts an upload");
    let location = headers["location"].to_str().unwrap().to_owned();
    let upload_id = location.rsplit('/').next().unwrap().to_owned();
    let secret = format!("alice's draft {upload_id}").into_bytes();
    let secret_digest = common::clients::sha256_digest(&secret);
    let alice_upload = format!("/v2/{alice_repo}/blobs/uploads/{upload_id}");
    let (status, _, _) = finish(
        raw.request(reqwest::Method::PATCH, &alice_upload, &alice_token)
            .header("content-type", "application/octet-stream")
            .body(secret.clone()),
    )
    .await;
    assert_eq!(status, 202, "alice's PATCH");
    for method in [
        reqwest::Method::GET,
        reqwest::Method::PATCH,
        reqwest::Method::DELETE,
    ] {
        raw.assert_denied(method, &alice_upload, &bob_token).await;
    }
    let put = format!("{alice_upload}?digest={secret_digest}");
    raw.assert_denied(reqwest::Method::PUT, &put, &bob_token)
        .await;
    let (status, _, body) = raw
        .send(
            reqwest::Method::PUT,
            &format!("/v2/{bob_repo}/blobs/uploads/{upload_id}?digest={secret_digest}"),
            &bob_own,
        )
        .await;
    assert_eq!(
        status,
        404,
        "bob finishing alice's upload in his repository: {}",
        String::from_utf8_lossy(&body)
    );
    let (status, _, _) = raw
        .send(
            reqwest::Method::GET,
            &format!("/v2/{bob_repo}/blobs/{secret_digest}"),
            &bob_own,
        )
        .await;
    assert_eq!(status, 404, "alice's draft in bob's repository");
    let (status, _, _) = raw.send(reqwest::Method::PUT, &put, &alice_token).await;
    assert_eq!(status, 201, "alice finishes her upload");
    // The catalog is for administrators only.
    let (bob_catalog, claims) = raw.token(Some(&bob), &["registry:catalog:*"]).await;
    assert_eq!(claims["access"], json!([]), "{claims}");
    raw.assert_denied(reqwest::Method::GET, "/v2/_catalog", &bob_catalog)
        .await;
    // The same image pushed into his own repository is his to delete: the
    // blobs and the manifest go from his repository only.
    let bob_v1 = format!("{bob_repo}:v1");
    allowed(
        c.push(bob_a, &alice_image, &bob_v1),
        "bob's push of the same image",
    );
    allowed(c.delete(bob_a, &bob_v1), "bob's delete of his copy");
    for digest in &alice_blobs {
        let path = format!("/v2/{bob_repo}/blobs/{digest}");
        let (status, _, _) = raw.send(reqwest::Method::DELETE, &path, &bob_own).await;
        assert_eq!(status, 202, "DELETE {path} as bob");
        let (status, _, _) = raw.send(reqwest::Method::HEAD, &path, &bob_own).await;
        assert_eq!(status, 404, "HEAD {path} as bob after his delete");
    }

    // ... and nothing changed: the tag, the manifest, every blob.
    let tags = allowed(c.tags(alice_a, &alice_repo), "alice's list-tags").json();
    assert_eq!(tags["Tags"], json!(["v1"]));
    assert_eq!(
        allowed(c.manifest(alice_a, &alice_v1), "alice's inspect").stdout,
        before
    );
    for digest in &alice_blobs {
        let path = format!("/v2/{alice_repo}/blobs/{digest}");
        let (status, _, body) = raw.send(reqwest::Method::GET, &path, &alice_token).await;
        assert_eq!(status, 200, "GET {path} as alice");
        assert_eq!(body, read_oci_blob(&alice_image.layout, digest), "{digest}");
    }
    let (pulled, layout) = c.pull(alice_a, &alice_v1, &pulls);
    allowed(pulled, "alice's pull");
    pulled_is(&layout, &alice_image);
    lap("1. bob cannot touch alice's image");

    // 2. Project roles: m (member) pushes P/app:1; r (reader) pulls it and
    // cannot push; o (no role) cannot pull.
    let p_app = |tag: &str| format!("{p}/app:{tag}");
    allowed(c.push(m_a, &p_image, &p_app("1")), "member's push");
    for (auth, who) in [(m_a, "member"), (r_a, "reader")] {
        let (pulled, layout) = c.pull(auth, &p_app("1"), &pulls);
        allowed(pulled, &format!("{who}'s pull of P/app:1"));
        pulled_is(&layout, &p_image);
    }
    refused(c.push(r_a, &p_image, &p_app("2")), "reader's push");
    // Deeper names are in the same namespace.
    let p_nested = format!("{p}/group/app:1");
    allowed(c.push(m_a, &p_image, &p_nested), "member's push, nested");
    allowed(c.manifest(r_a, &p_nested), "reader's pull, nested");
    refused(
        c.push(r_a, &p_image, &format!("{p}/group/app:2")),
        "reader's push, nested",
    );
    refused(c.manifest(o_a, &p_nested), "pull without a role, nested");
    refused(c.manifest(o_a, &p_app("1")), "pull without a role on P");
    refused(
        c.push(o_a, &p_image, &p_app("2")),
        "push without a role on P",
    );
    lap("2. project roles");

    // 3. Q (registry-public): k pushes; every authenticated user pulls,
    // none pushes. S (registry-pull=P): P's members pull, nobody else.
    let q_x = format!("{q}/x:x");
    let s_y = format!("{s}/y:y");
    allowed(c.push(k_a, &q_image, &q_x), "Q's member's push");
    allowed(c.push(k_a, &s_image, &s_y), "S's member's push");
    for (auth, who) in [
        (o_a, "o"),
        (bob_a, "bob"),
        (r_a, "P's reader"),
        (alice_a, "alice"),
    ] {
        let (pulled, layout) = c.pull(auth, &q_x, &pulls);
        allowed(pulled, &format!("{who}'s pull of Q/x"));
        pulled_is(&layout, &q_image);
        refused(
            c.push(auth, &q_image, &format!("{q}/x:pushed")),
            &format!("{who}'s push to Q"),
        );
    }
    for (auth, who) in [(m_a, "P's member"), (r_a, "P's reader")] {
        let (pulled, layout) = c.pull(auth, &s_y, &pulls);
        allowed(pulled, &format!("{who}'s pull of S/y"));
        pulled_is(&layout, &s_image);
        refused(
            c.push(auth, &s_image, &format!("{s}/y:pushed")),
            &format!("{who}'s push to S"),
        );
    }
    for (auth, who) in [(o_a, "o"), (bob_a, "bob")] {
        refused(c.manifest(auth, &s_y), &format!("{who}'s pull of S/y"));
    }
    // The reserved `public/` namespace: administrators push, every
    // authenticated user pulls.
    let public = format!("public/{}:1", unique("base"));
    allowed(
        c.push(Auth::Creds(&admin_creds), &q_image, &public),
        "the admin's push to public/",
    );
    allowed(c.manifest(o_a, &public), "o's pull of public/");
    refused(
        c.push(o_a, &q_image, &format!("public/{}:1", unique("base"))),
        "o's push to public/",
    );
    refused(
        c.push(k_a, &q_image, &public.replace(":1", ":2")),
        "k's push to public/",
    );
    lap("3. public and shared projects, public/");

    // 6. A pull secret: an application credential with reader on P, in a
    // Docker config.json for this registry.
    let auth_file = pull_auth_file(&ks, &m, &p, &berth.addr, &tmp.path().join("pull-secret"));
    let secret = Auth::File(&auth_file);
    let (pulled, layout) = c.pull(secret, &p_app("1"), &pulls);
    allowed(pulled, "the pull secret's pull of P/app:1");
    pulled_is(&layout, &p_image);
    refused(
        c.push(secret, &p_image, &p_app("3")),
        "the pull secret's push",
    );
    refused(c.delete(secret, &p_app("1")), "the pull secret's delete");
    let (pulled, layout) = c.pull(secret, &s_y, &pulls);
    allowed(pulled, "the pull secret's pull of S/y (shared with P)");
    pulled_is(&layout, &s_image);
    refused(
        c.manifest(secret, &alice_v1),
        "the pull secret pulling alice's image",
    );
    lap("6. pull secret");

    // 5. Anonymous, with anonymous_pull_public: pulls Q/x, nothing else,
    // pushes nowhere.
    let (pulled, layout) = c.pull(Auth::Anonymous, &q_x, &pulls);
    allowed(pulled, "anonymous pull of Q/x");
    pulled_is(&layout, &q_image);
    refused(
        c.push(Auth::Anonymous, &q_image, &format!("{q}/x:anon")),
        "anonymous push to Q",
    );
    refused(
        c.manifest(Auth::Anonymous, &p_app("1")),
        "anonymous pull of P",
    );
    refused(
        c.manifest(Auth::Anonymous, &s_y),
        "anonymous pull of S (shared, not public)",
    );
    refused(
        c.manifest(Auth::Anonymous, &alice_v1),
        "anonymous pull of alice's image",
    );
    refused(
        c.manifest(Auth::Anonymous, &public),
        "anonymous pull of public/ (for authenticated users only)",
    );
    let (_, claims) = raw.token(None, &[&format!("repository:{q}/x:*")]).await;
    assert_eq!(
        claims["access"],
        json!([{"type": "repository", "name": format!("{q}/x"), "actions": ["pull"]}])
    );
    lap("5. anonymous pull of public projects, on");

    // Refused pushes left nothing behind.
    for (auth, repository, tag) in [
        (m_a, format!("{p}/app"), "1"),
        (k_a, format!("{q}/x"), "x"),
        (k_a, format!("{s}/y"), "y"),
    ] {
        let tags = allowed(c.tags(auth, &repository), "list-tags").json();
        assert_eq!(tags["Tags"], json!([tag]), "{repository}");
    }

    // 4. Administrators delete anything: boss (admin on the admin project)
    // deletes alice's image, the bootstrap admin S/y; the tags are gone.
    for (auth, reference, owner) in [
        (Auth::Creds(&boss_c), &alice_v1, alice_a),
        (Auth::Creds(&admin_creds), &s_y, k_a),
    ] {
        allowed(c.delete(auth, reference), &format!("deleting {reference}"));
        let gone = c.manifest(owner, reference);
        assert!(
            !gone.status.success() && gone.stderr.contains("manifest unknown"),
            "{reference} after the admin's delete: {}",
            gone.stderr
        );
        let repository = reference.rsplit_once(':').unwrap().0;
        let tags = allowed(c.tags(owner, repository), "list-tags").json();
        assert_eq!(tags["Tags"], json!([]), "{repository}");
    }
    let (status, _, _) = raw
        .send(
            reqwest::Method::HEAD,
            &format!("/v2/{alice_repo}/manifests/{}", alice_image.manifest_digest),
            &alice_token,
        )
        .await;
    assert_eq!(status, 404, "alice's manifest by digest after the delete");
    // ... and they list the catalog.
    let (boss_catalog, _) = raw.token(Some(&boss), &["registry:catalog:*"]).await;
    let (status, _, body) = raw
        .send(reqwest::Method::GET, "/v2/_catalog", &boss_catalog)
        .await;
    assert_eq!(status, 200, "the catalog as boss");
    let catalog: Value = serde_json::from_slice(&body).unwrap();
    for repository in [&alice_repo, &format!("{p}/app"), &format!("{q}/x")] {
        assert!(
            catalog["repositories"]
                .as_array()
                .unwrap()
                .contains(&json!(repository)),
            "{repository} in {catalog}"
        );
    }
    lap("4. administrators deleted alice's image and S/y");

    let status = berth.terminate();
    assert!(status.success(), "berth exit status {status}");

    // 5. The default: anonymous clients pull nothing, not even Q/x (which
    // is still there for authenticated users).
    let berth = Berth::start_all(&data, "127.0.0.1", &[], &keystone_env);
    started.extend(Proc::of(berth.pid()));
    lap("berth serve again, default configuration");
    let c = Client::new(&tmp.path().join("client2"), &berth);
    let (pulled, layout) = c.pull(o_a, &q_x, &pulls);
    allowed(pulled, "o's pull of Q/x");
    pulled_is(&layout, &q_image);
    refused(
        c.manifest(Auth::Anonymous, &q_x),
        "anonymous pull of Q/x, off",
    );
    let raw = Raw::new(&berth).await;
    let (_, claims) = raw.token(None, &[&format!("repository:{q}/x:pull")]).await;
    assert_eq!(claims["access"], json!([]), "{claims}");
    lap("5. anonymous pull of public projects, off");

    // Everything started is stopped, by PID.
    let status = berth.terminate();
    assert!(status.success(), "berth exit status {status}");
    drop(ks);
    for proc in &started {
        assert!(
            !proc.alive(),
            "still running: {} {}",
            proc.pid,
            proc.cmdline()
        );
    }
    for needle in [tmp.path(), keystone_dir.as_path()] {
        let left = processes_mentioning(&needle.display().to_string());
        assert!(left.is_empty(), "left running: {left:?}");
    }
    lap("all stopped");
}
