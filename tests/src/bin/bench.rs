//! Benchmarks of the whole binary, reported in BENCHMARKS.md:
//!
//! - added latency from a console command to the GitLab request it causes (line written to
//!   shepherd's stdin -> the GitLab double receives `GET .../pipelines/:id`), p50/p99 over N
//!   commands, on SQLite and on PostgreSQL, with the reply latency beside it;
//! - the floor measured in the same run: a line through a `cat` process and back (the pipe
//!   and scheduling cost no bot can avoid);
//! - idle memory (RSS) of `shepherd serve`.
//!
//! - IRC (`bench irc [commands]`): the command round trip through a real ngIRCd with
//!   throttling off (a human's `!ping` out -> the bot's reply in), p50/p99, against the raw
//!   round trip of two plain clients on the same server (the floor); and on ngIRCd's stock
//!   flood limits, the delivery rate of a long reply at several configured pacing rates, and
//!   whether the bot was disconnected.
//!
//! - GitLab webhooks (`bench hooks [deliveries]`, default 5000): Note Hooks POSTed by 16
//!   concurrent keep-alive clients, answered 202 once stored, per second, with p50/p99 of the
//!   POST and the time until the workers processed every stored event; on SQLite and
//!   PostgreSQL, comments with and without a command; the floor is a minimal axum server that
//!   reads the body and answers 200 (`bench/hooks.rs`).
//! - Canary (`bench canary [refs]`, default 20): `@shepherd test` -> all reference pipelines
//!   created, first summary note, verdict, and the API calls spent watching the pipelines with
//!   Pipeline Hooks and with polling only (`bench/canary.rs`).
//! - Herder (`bench herder [jobs]`, default 1000): Job Hook -> retry request latency with a
//!   zero delay, and a burst of failed jobs: time until all are retried, API calls per job,
//!   the busiest minute against the budget (`bench/herder.rs`).
//!
//! Run: `./target/release/bench [commands]`, `./target/release/bench irc [commands]` (default
//! 1000), `./target/release/bench hooks [deliveries]` and `./target/release/bench canary [refs]`,
//! after `cargo build --release -p shepherd-bot -p shepherd-tests`. `hooks` and `canary` run
//! shepherd with the shipped `[queue]` settings; `BENCH_WORKERS=<n>` changes its worker count.

// A binary's root resolves modules beside itself; these live in `bench/`.
#[path = "bench/canary.rs"]
mod canary;
#[path = "bench/herder.rs"]
mod herder;
#[path = "bench/hooks.rs"]
mod hooks;

use std::time::{Duration, Instant};

use shepherd_tests::gitlab::{GitLabDouble, Route};
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore};
use shepherd_tests::irc_client::{IrcClient, Message, round_trip_floor};
use shepherd_tests::ircd::{Ngircd, Throttle};
use shepherd_tests::measure::{ms, percentile, rss_kib};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const PROJECT: &str = "cki-project/pipeline-definition";

/// The store's name in tables.
fn backend_label(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "SQLite",
        Backend::Postgres => "PostgreSQL",
    }
}

/// The shipped `[queue]` settings (`config/shepherd.toml`) as `SHEPHERD_*` overrides of the
/// harness's test settings (2 workers, 2 s leases, 50 ms retries), for benchmarks of load.
/// `BENCH_WORKERS` replaces the shipped 4 workers (to see what the workers' contention costs).
fn shipped_queue_env() -> Vec<(String, String)> {
    let workers = std::env::var("BENCH_WORKERS").unwrap_or_else(|_| "4".into());
    [
        ("SHEPHERD_QUEUE__WORKERS", workers.as_str()),
        ("SHEPHERD_QUEUE__LEASE_SECONDS", "60"),
        ("SHEPHERD_QUEUE__RETRY_BASE_MS", "1000"),
        ("SHEPHERD_QUEUE__RETRY_MAX_MS", "300000"),
        ("SHEPHERD_QUEUE__POLL_INTERVAL_MS", "250"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Counts shepherd's WARN and ERROR log lines, and prints each distinct message (without its
/// timestamp and fields) once to stderr, with how often it came.
fn log_problems(run: &str, stderr: &str) -> (usize, usize) {
    let mut seen: Vec<(String, usize)> = Vec::new();
    let (mut warnings, mut errors) = (0, 0);
    for line in stderr.lines() {
        let level = if line.contains(" WARN ") {
            warnings += 1;
            "WARN"
        } else if line.contains(" ERROR ") {
            errors += 1;
            "ERROR"
        } else {
            continue;
        };
        let message = line
            .split_once(level)
            .map(|(_, m)| m.trim())
            .unwrap_or(line);
        // `target: message key=value ...`: keep the target and the message.
        let short: String = message
            .split(" error=")
            .next()
            .unwrap_or(message)
            .chars()
            .take(160)
            .collect();
        let short = format!("{level} {short}");
        match seen.iter_mut().find(|(m, _)| *m == short) {
            Some((_, n)) => *n += 1,
            None => seen.push((short, 1)),
        }
    }
    for (m, n) in &seen {
        eprintln!("[{run}] {n}x {m}");
    }
    (warnings, errors)
}

struct Row {
    name: String,
    p50: Duration,
    p99: Duration,
    max: Duration,
}

/// A Markdown table of latency rows, in milliseconds.
fn print_latencies(rows: &[&Row]) {
    println!("| path | p50 | p99 | max |");
    println!("|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} |",
            r.name,
            ms(r.p50),
            ms(r.p99),
            ms(r.max)
        );
    }
}

fn row(name: &str, mut samples: Vec<Duration>) -> Row {
    samples.sort();
    Row {
        name: name.to_string(),
        p50: percentile(&samples, 50.0),
        p99: percentile(&samples, 99.0),
        max: samples.last().copied().unwrap_or_default(),
    }
}

/// Line -> first GitLab request, and line -> reply, for `n` sequential retriggers.
async fn command_latency(backend: Backend, n: usize) -> (Row, Row) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let olds: Vec<_> = (0..n)
        .map(|i| gitlab.add_pipeline(PROJECT, "main", "success", &[("I", &i.to_string())]))
        .collect();
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.rate_limits = "per_identity_per_minute = 1000000\nper_room_per_minute = 1000000".into();
    config.gitlab = "requests_per_minute = 1000000".into();
    // The watcher's polls would compete with the measured path; look far less often.
    config.watcher_poll_ms = 600_000;
    let mut bot = Shepherd::console(&config).await;
    // Warm up: connections, caches, first migrations-era queries.
    bot.send("ping").await;
    bot.expect_line("pong", Duration::from_secs(30)).await;

    let mut to_request = Vec::with_capacity(n);
    let mut to_reply = Vec::with_capacity(n);
    for (i, old) in olds.iter().enumerate() {
        let sent = Instant::now();
        bot.send(&format!("retrigger {} run={i}", old.id)).await;
        let id = old.id;
        let seen = gitlab
            .wait_for(
                move |reqs| {
                    reqs.iter()
                        .any(|r| r.is(Route::GetPipeline) && r.pipeline == Some(id))
                },
                Duration::from_secs(30),
            )
            .await;
        assert!(seen, "GitLab never saw command {i}");
        let arrived = gitlab
            .requests()
            .iter()
            .find(|r| r.is(Route::GetPipeline) && r.pipeline == Some(id))
            .map(|r| r.time)
            .expect("recorded");
        to_request.push(arrived.saturating_duration_since(sent));
        let needle = format!("retriggered pipeline {id} ");
        let ok = bot
            .wait_for(Duration::from_secs(30), |lines| {
                lines.iter().any(|l| l.contains(&needle))
            })
            .await;
        assert!(ok, "no reply to command {i}");
        to_reply.push(sent.elapsed());
    }
    bot.close_stdin();
    bot.kill9().await;
    let label = backend_label(backend);
    (
        row(
            &format!("console line -> GitLab request ({label})"),
            to_request,
        ),
        row(
            &format!("console line -> reply on stdout ({label})"),
            to_reply,
        ),
    )
}

/// The floor: a line through `cat` and back.
async fn pipe_floor(n: usize) -> Row {
    let mut child = tokio::process::Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("cat");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let sent = Instant::now();
        stdin
            .write_all(format!("retrigger {i} run={i}\n").as_bytes())
            .await
            .expect("write");
        stdin.flush().await.expect("flush");
        lines.next_line().await.expect("read").expect("a line");
        samples.push(sent.elapsed());
    }
    drop(stdin);
    let _ = child.wait().await;
    row("floor: line through `cat` and back", samples)
}

async fn idle_rss(backend: Backend) -> u64 {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let config = ShepherdConfig::new(&store, &gitlab);
    let mut bot = Shepherd::serve(&config).await;
    let url = format!("http://127.0.0.1:{}/readyz", config.http_port);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !client
        .get(&url)
        .send()
        .await
        .map(|r| r.status().is_success())
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "serve never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Idle means idle: let start-up settle before reading.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pid = bot.pid().expect("running");
    let (kb, _) = rss_kib(pid).expect("VmRSS");
    bot.kill9().await;
    kb
}

fn irc_config(
    store: &TestStore,
    gitlab: &GitLabDouble,
    port: u16,
    burst: u32,
    rate: f64,
) -> ShepherdConfig {
    let mut config = ShepherdConfig::new(store, gitlab);
    config.production = false;
    config.rate_limits = "per_identity_per_minute = 1000000\nper_room_per_minute = 1000000".into();
    config.extra = format!(
        "[irc]\nserver = \"127.0.0.1\"\nport = {port}\ntls = false\nchannels = [\"#bench\"]\n\
         flood_burst = {burst}\nflood_rate = {rate}\n[permissions]\nretrigger = [\"*\"]\n"
    );
    config
}

async fn bot_in_channel(
    config: &ShepherdConfig,
    server: &Ngircd,
    nick: &str,
) -> (IrcClient, Shepherd) {
    let mut human = IrcClient::connect(&server.addr(), nick).await;
    human.join("#bench").await;
    let bot = Shepherd::serve(config).await;
    let joined = human
        .wait_for(Duration::from_secs(30), |m: &[Message]| {
            m.iter()
                .any(|m| m.command == "JOIN" && m.nick.as_deref() == Some("shepherd"))
        })
        .await;
    assert!(joined, "the bot joined");
    (human, bot)
}

async fn irc_round_trip(n: usize) -> (Row, Row) {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let floor = round_trip_floor(&server.addr(), n).await;
    let config = irc_config(&store, &gitlab, server.port(), 1000, 100000.0);
    let (mut human, bot) = bot_in_channel(&config, &server, "human").await;
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let seen = human.received_len();
        let sent = Instant::now();
        human.privmsg("#bench", "!ping").await;
        let reply = human
            .next_matching(seen, Duration::from_secs(30), |m| {
                m.is_message_from("shepherd") && m.text() == "human: pong"
            })
            .await
            .expect("a pong");
        samples.push(reply.at.saturating_duration_since(sent));
    }
    drop(bot);
    (
        row(
            "floor: two plain clients, line out -> answer in (ngIRCd, throttling off)",
            floor,
        ),
        row(
            "`!ping` out -> bot's reply in (ngIRCd, throttling off)",
            samples,
        ),
    )
}

/// A reply of `lines` lines on stock flood limits at a configured rate: achieved lines/s
/// at the human, and whether the bot lost its connection.
async fn irc_delivery(rate: f64, lines: usize) -> (f64, usize, bool) {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let values: Vec<(String, String)> = (0..lines)
        .map(|i| (format!("V{i:03}"), "x".repeat(370)))
        .collect();
    let vars: Vec<(&str, &str)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let old = gitlab.add_pipeline("g/p", "main", "success", &vars);
    let server = Ngircd::start(Throttle::Stock).await;
    let config = irc_config(&store, &gitlab, server.port(), 4, rate);
    let (mut human, bot) = bot_in_channel(&config, &server, "reader").await;
    let seen = human.received_len();
    human
        .privmsg("#bench", &format!("!retrigger {}", old.web_url))
        .await;
    let done = human
        .wait_for(Duration::from_secs(150), |m: &[Message]| {
            m.iter()
                .skip(seen)
                .any(|m| m.is_message_from("shepherd") && m.text().contains("SHEPHERD_REQUEST_ID"))
        })
        .await;
    let got: Vec<Message> = human
        .received()
        .into_iter()
        .skip(seen)
        .filter(|m| m.is_message_from("shepherd"))
        .collect();
    let disconnected = !done || bot.stderr().contains("irc: disconnected");
    if disconnected {
        let tail = |s: String| {
            s.lines()
                .rev()
                .take(12)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect::<Vec<_>>()
                .join("\n")
        };
        eprintln!(
            "--- rate {rate}: reader ---\n{}\n--- bot ---\n{}",
            tail(human.transcript()),
            tail(bot.stderr())
        );
    }
    let rate_seen = match (got.first(), got.last()) {
        (Some(a), Some(b)) if got.len() > 1 => {
            (got.len() - 1) as f64 / b.at.saturating_duration_since(a.at).as_secs_f64()
        }
        _ => 0.0,
    };
    (rate_seen, got.len(), disconnected)
}

async fn irc_main(n: usize) {
    let (floor, rt) = irc_round_trip(n).await;
    println!("IRC: {n} sequential commands, times in ms\n");
    print_latencies(&[&floor, &rt]);
    println!("\nIRC delivery on ngIRCd's stock flood limits (burst 4), one reply of ~60 lines\n");
    println!(
        "| configured flood_rate (lines/s) | lines received | achieved lines/s | disconnected |"
    );
    println!("|---|---|---|---|");
    let rates: Vec<f64> = std::env::var("BENCH_IRC_RATES")
        .ok()
        .map(|v| v.split(',').filter_map(|r| r.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1.0, 2.0, 3.0, 4.0, 6.0]);
    for rate in rates {
        let (achieved, got, disconnected) = irc_delivery(rate, 60).await;
        println!(
            "| {rate} | {got} | {achieved:.2} | {} |",
            if disconnected { "yes" } else { "no" }
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_default();
    let count = |args: &[String], default: usize| {
        args.get(1).and_then(|a| a.parse().ok()).unwrap_or(default)
    };
    match mode.as_str() {
        "irc" => return irc_main(count(&args, 1000)).await,
        "hooks" => return hooks::main(count(&args, 5000)).await,
        "canary" => return canary::main(count(&args, 20)).await,
        "herder" => return herder::main(count(&args, 1000)).await,
        // The floor server of `bench hooks`, run as a child process.
        "hook-floor" => return hooks::floor_server().await,
        _ => {}
    }
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let floor = pipe_floor(n).await;
    let (sqlite_req, sqlite_reply) = command_latency(Backend::Sqlite, n).await;
    let (pg_req, pg_reply) = command_latency(Backend::Postgres, n).await;
    let rss_sqlite = idle_rss(Backend::Sqlite).await;
    let rss_pg = idle_rss(Backend::Postgres).await;

    println!("{n} sequential commands (`retrigger <id> run=<i>`, production mode), times in ms\n");
    print_latencies(&[&floor, &sqlite_req, &sqlite_reply, &pg_req, &pg_reply]);
    println!();
    println!("| idle `shepherd serve` | RSS |");
    println!("|---|---|");
    println!("| SQLite store | {:.1} MiB |", rss_sqlite as f64 / 1024.0);
    println!("| PostgreSQL store | {:.1} MiB |", rss_pg as f64 / 1024.0);
}
