//! Token service measurements for the benchmark harness (`bench/identity`),
//! not a timed test: ignored by default, run with
//! `cargo test --release --test bench_identity -- --ignored --nocapture`.
//!
//! It prints one line `BENCH_IDENTITY {json}` with:
//! - `tokens_per_s`: `GET /token` for a cached identity, `wrk -t2 -c4` (four connections:
//!   more than five logins of one account at once wait for each other, see
//!   `identity/src/ratelimit.rs`, and four already keep both cores busy);
//! - `miss_ms` / `keystone_ms`: median latency of a token request that
//!   misses the credential cache (cache TTL 0; the user's role assignments
//!   cached, as they are for 30 s after a login) and of Keystone's own
//!   `POST /v3/auth/tokens` for the same user, measured alternately;
//! - `cold_miss_ms`: the same with no roles cache either (a first login).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::berth::Berth;
use common::keystone::{DEFAULT_DOMAIN_ID, Keystone, unique};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[tokio::test]
#[ignore = "benchmark: run by bench/identity"]
async fn token_service_benchmark() {
    let secs: u64 = std::env::var("BENCH_DURATION")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);
    let ks = Keystone::start();
    let admin = ks.admin();
    let svc = admin.create_service_account().await;
    let user = admin.new_user("bench").await;
    let project = unique("benchproj");
    let pid = admin.create_project(&project, DEFAULT_DOMAIN_ID, &[]).await;
    admin.assign_project_role(&user.id, &pid, "member").await;
    let dir = tempfile::tempdir().unwrap();
    let start = |ttl: &'static str, roles_ttl: &'static str| {
        Berth::start_identity(
            &dir.path().join("data"),
            &[
                &ks.berth_env(&svc)[..],
                &[
                    ("BERTH_KEYSTONE_CACHE_TTL", ttl),
                    ("BERTH_KEYSTONE_ROLES_TTL", roles_ttl),
                    ("BERTH_LOG", "warn"),
                    ("BERTH_IDENTITY_AUDIT_LOG", "/dev/null"),
                ],
            ]
            .concat(),
        )
    };
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("{}:{}", user.name, user.password));
    let scope = format!("repository:{project}/app:pull,push");

    // Cached identity: requests per second.
    let berth = start("3600", "30");
    let url = format!("{}/token?service=berth-registry&scope={scope}", berth.url());
    let http = reqwest::Client::new();
    let warm = http
        .get(&url)
        .header("authorization", format!("Basic {basic}"))
        .send()
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    let out = Command::new("wrk")
        .args(["-t2", "-c4", &format!("-d{secs}s"), "--latency", "-H"])
        .arg(format!("Authorization: Basic {basic}"))
        .arg(&url)
        .output()
        .expect("wrk (scripts/install-test-deps)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!text.contains("Non-2xx"), "wrk saw errors:\n{text}");
    let tokens_per_s: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in:\n{text}"));
    drop(berth);

    // Cache misses: berth's token request against Keystone's own check,
    // with the user's role assignments cached (the steady state: they are
    // reused for 30 s) and without (a user's first login).
    let body = serde_json::json!({"auth": {"identity": {"methods": ["password"],
        "password": {"user": {"name": user.name, "domain": {"id": DEFAULT_DOMAIN_ID},
        "password": user.password}}}}});
    let mut medians = Vec::new();
    for roles_ttl in ["30", "0"] {
        let berth = start("0", roles_ttl);
        let url = format!("{}/token?service=berth-registry&scope={scope}", berth.url());
        let (mut miss, mut direct) = (Vec::new(), Vec::new());
        for _ in 0..60 {
            let t = Instant::now();
            let r = http
                .get(&url)
                .header("authorization", format!("Basic {basic}"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            miss.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            let r = http
                .post(format!("{}/v3/auth/tokens?nocatalog", ks.url()))
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            direct.push(t.elapsed().as_secs_f64() * 1e3);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        medians.push((median(miss), median(direct)));
    }
    let result = serde_json::json!({
        "tokens_per_s": tokens_per_s,
        "miss_ms": medians[0].0,
        "keystone_ms": medians[0].1,
        "cold_miss_ms": medians[1].0,
    });
    println!("BENCH_IDENTITY {result}");
}
