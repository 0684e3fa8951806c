//! The deploy benchmark, reported in BENCHMARKS.md (a real Distribution registry on loopback,
//! started by the bench; shepherd on SQLite through its console):
//!
//! - command to tag moved: `deploy herder <a or b> to staging` typed -> the reply on stdout,
//!   which the bot writes only after the registry confirmed the tag move and the deployment was
//!   recorded; after each, the bench checks the tag really points at the image (not timed). N
//!   deploys one after the other, alternating two images so that every one moves the tag;
//! - the floor, in the same run against the same registry: the registry's own GET of the source
//!   manifest + PUT of the same bytes under the tag, N times, from one keep-alive HTTP client.
//!
//! Run: `cargo build --release -p shepherd-bot -p shepherd-tests --bins`, then
//! `./target/release/bench_deploy [n]` (default 300).

use std::time::{Duration, Instant};

use shepherd_tests::gitlab::GitLabDouble;
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore};
use shepherd_tests::measure::print_row;
use shepherd_tests::registry::{ImageKind, TestRegistry};

const REPO: &str = "bench/herder";
const WAIT: Duration = Duration::from_secs(60);
const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The registry's own GET + PUT of the same manifest, alternating the two sources.
async fn floor(registry: &TestRegistry, sources: &[&str; 2], n: usize) -> Vec<Duration> {
    let http = reqwest::Client::new();
    let base = format!("{}/v2/{REPO}/manifests", registry.url());
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let got = http
            .get(format!("{base}/{}", sources[i % 2]))
            .header("accept", ACCEPT_ALL)
            .send()
            .await
            .expect("GET manifest");
        let media_type = got
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let bytes = got.bytes().await.expect("manifest bytes");
        let put = http
            .put(format!("{base}/floor"))
            .header("content-type", media_type)
            .body(bytes)
            .send()
            .await
            .expect("PUT manifest");
        assert_eq!(put.status(), 201);
        samples.push(started.elapsed());
    }
    samples
}

async fn shepherd(
    bot: &mut Shepherd,
    registry: &TestRegistry,
    sources: &[&str; 2],
    digests: &[String; 2],
    n: usize,
) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let seen = bot.lines().len();
        let started = Instant::now();
        bot.send(&format!("deploy herder {} to staging", sources[i % 2]))
            .await;
        let ok = bot
            .wait_for(WAIT, |lines| {
                lines[seen..]
                    .iter()
                    .any(|l| l.starts_with("deployed herder"))
            })
            .await;
        let elapsed = started.elapsed();
        assert!(ok, "no reply to deploy {i}:\n{}", bot.stderr());
        samples.push(elapsed);
        assert_eq!(
            registry.digest(REPO, "staging").await.as_ref(),
            Some(&digests[i % 2]),
            "deploy {i} moved the tag"
        );
    }
    samples
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(300);
    let registry = TestRegistry::start().await;
    let a = registry.push_image(REPO, "a", ImageKind::OciIndex).await;
    let b = registry
        .push_image(REPO, "b", ImageKind::DockerManifest)
        .await;
    let sources = ["a", "b"];
    let digests = [a, b];

    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = format!(
        r#"
[deploy]
registry = "{}"

[[deploy.services]]
name = "herder"
repository = "{REPO}"

[[deploy.environments]]
name = "staging"
tag = "staging"
"#,
        registry.url()
    );
    // The bench is one person typing fast: lift the per-person limit it would meet.
    config.rate_limits = "per_identity_per_minute = 1000000\nper_room_per_minute = 1000000".into();
    let mut bot = Shepherd::console(&config).await;

    // Warm both paths (connections, the first migration-time caches).
    floor(&registry, &sources, 10).await;
    shepherd(&mut bot, &registry, &sources, &digests, 10).await;

    let floor_samples = floor(&registry, &sources, n).await;
    let bot_samples = shepherd(&mut bot, &registry, &sources, &digests, n).await;
    bot.close_stdin();
    let _ = bot.wait_exit(WAIT).await;

    println!("| path | n | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    print_row(
        "floor: the registry's GET of the source manifest + PUT under the tag",
        floor_samples,
    );
    print_row(
        "shepherd: `deploy herder <tag> to staging` typed -> reply (tag moved, recorded)",
        bot_samples,
    );
}
