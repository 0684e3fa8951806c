//! The Matrix front end's benchmark, reported in BENCHMARKS.md (a real Synapse on loopback,
//! started by the bench, rate limits raised):
//!
//! - command round trip: a person's `!ping` sent -> the bot's reply received by that person's
//!   client, p50/p99 over N commands one after the other, in a plain and in an encrypted room;
//! - the floor, in the same run on the same Synapse: two plain clients answering each other
//!   (`ping i` sent -> the other client's `pong i` received), plain and encrypted;
//! - alert lines: M Alertmanager notifications POSTed to the bot (one alert each, routed to one
//!   room), lines per second from the first POST to the last line seen by the person, and each
//!   line's lag from its POST's answer to its arrival (p50/p99);
//! - idle memory (VmRSS) of `shepherd serve` with the Matrix front end on.
//!
//! Run: `cargo build --release -p shepherd-bot -p shepherd-tests --bins`, then
//! `./target/release/bench_matrix [commands] [alerts]` (defaults 500 and 2000). Needs the Synapse
//! venv of `scripts/test` (or `$SYNAPSE_VENV`).

use std::time::{Duration, Instant};

use shepherd_tests::gitlab::GitLabDouble;
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore};
use shepherd_tests::matrix_client::{Human, Seen};
use shepherd_tests::measure::{ms, percentile, print_row, rss_kib};
use shepherd_tests::synapse::Synapse;

const BOT: &str = "@shepherd:localhost";
const BOT_PASSWORD: &str = "bench-bot-password";
const AM_TOKEN: &str = "bench-am-token";
const WAIT: Duration = Duration::from_secs(60);

fn rss(bot: &Shepherd) -> u64 {
    bot.pid().and_then(rss_kib).map_or(0, |(rss, _)| rss)
}

/// The floor: `alice` writes `ping i`, `bob` answers `pong i` as soon as his client sees it.
async fn floor(alice: &Human, bob: &Human, room: &str, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        alice.send(room, &format!("ping {i}")).await;
        let ping = format!("ping {i}");
        let ok = bob
            .until(WAIT, |seen| {
                seen.iter()
                    .any(|m| m.room == room && m.sender == alice.user_id && m.body() == ping)
            })
            .await;
        assert!(ok, "bob never saw {ping}");
        bob.send(room, &format!("pong {i}")).await;
        let pong = format!("pong {i}");
        let got = alice
            .wait_for(WAIT, &pong, |m| {
                m.room == room && m.sender == bob.user_id && m.body() == pong
            })
            .await;
        samples.push(got.received_at.saturating_duration_since(started));
    }
    samples
}

/// `!ping` sent -> the bot's reply seen.
async fn bot_round_trip(alice: &Human, room: &str, n: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let asked = alice.send(room, "!ping").await;
        let reply = alice
            .wait_for(WAIT, "pong", |m: &Seen| {
                m.sender == BOT && m.in_reply_to() == Some(asked.as_str())
            })
            .await;
        samples.push(reply.received_at.saturating_duration_since(started));
    }
    samples
}

fn notification(i: usize) -> serde_json::Value {
    serde_json::json!({
        "receiver": "shepherd", "status": "firing", "version": "4",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": format!("Bench{i:05}"), "severity": "warning"},
            "annotations": {"summary": format!("bench alert {i}")},
            "startsAt": "2026-11-25T07:47:20Z", "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:9090/graph", "fingerprint": format!("b{i}"),
        }],
        "groupLabels": {"alertname": format!("Bench{i:05}")}, "commonLabels": {},
        "commonAnnotations": {}, "externalURL": "http://127.0.0.1:19093",
        "groupKey": format!("{{}}:{{alertname=\"Bench{i:05}\"}}"), "truncatedAlerts": 0
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let commands: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(500);
    let alerts: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2000);

    let synapse = Synapse::start().await;
    synapse.register("shepherd", BOT_PASSWORD).await;
    let alice = Human::new(&synapse, "alice").await;
    let bob = Human::new(&synapse, "bob").await;
    let plain = alice.create_room(false, &[BOT, &bob.user_id]).await;
    let encrypted = alice.create_room(true, &[BOT, &bob.user_id]).await;
    for room in [&plain, &encrypted] {
        bob.client
            .join_room_by_id(alice.room(room).room_id())
            .await
            .expect("bob joins");
    }

    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let bot_store = tempfile::tempdir().expect("bot store");
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = format!(
        r##"[matrix]
homeserver = "{url}"
user = "{BOT}"
password_env = "BENCH_MATRIX_PASSWORD"
store_path = "{store}"
rooms = ["{plain}", "{encrypted}"]
[alerts]
webhook_token_env = "BENCH_AM_TOKEN"
default_targets = ["matrix:{plain}"]
storm_threshold = 1000
dedup_window_minutes = 1
"##,
        url = synapse.url(),
        store = bot_store.path().join("matrix").display(),
    );
    config.rate_limits = "per_identity_per_minute = 100000\nper_room_per_minute = 100000".into();
    config
        .env
        .push(("BENCH_MATRIX_PASSWORD".into(), BOT_PASSWORD.into()));
    config.env.push(("BENCH_AM_TOKEN".into(), AM_TOKEN.into()));
    config.env.push(("SHEPHERD_LOG".into(), "warn".into()));
    let bot = Shepherd::serve(&config).await;
    bot.wait_http(WAIT).await;
    for room in [&plain, &encrypted] {
        alice.wait_joined(room, BOT, WAIT).await;
        bob.wait_joined(room, BOT, WAIT).await;
        alice.wait_joined(room, &bob.user_id, WAIT).await;
    }
    // Warm up every path once (key sharing in the encrypted room happens on the first message).
    bot_round_trip(&alice, &plain, 3).await;
    bot_round_trip(&alice, &encrypted, 3).await;
    floor(&alice, &bob, &plain, 3).await;
    floor(&alice, &bob, &encrypted, 3).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = rss(&bot);

    println!("## Command round trip on Synapse\n");
    println!("| path | n | p50 ms | p99 ms | max ms |\n|---|---|---|---|---|");
    print_row(
        "floor, plain room: `ping` sent -> other client's `pong` received",
        floor(&alice, &bob, &plain, commands).await,
    );
    print_row(
        "bot, plain room: `!ping` sent -> the bot's reply received",
        bot_round_trip(&alice, &plain, commands).await,
    );
    print_row(
        "floor, encrypted room",
        floor(&alice, &bob, &encrypted, commands).await,
    );
    print_row(
        "bot, encrypted room",
        bot_round_trip(&alice, &encrypted, commands).await,
    );

    // The floor for lines: a plain client sending lines one event each, one after the other.
    let floor_lines = alerts.min(300);
    let started_floor = Instant::now();
    for i in 0..floor_lines {
        bob.send(&plain, &format!("floor line {i}")).await;
    }
    let last_floor = format!("floor line {}", floor_lines - 1);
    alice
        .wait_for(Duration::from_secs(600), "the last floor line", |m| {
            m.sender == bob.user_id && m.body() == last_floor
        })
        .await;
    let floor_secs = started_floor.elapsed().as_secs_f64();

    // Alert lines into one room.
    let client = reqwest::Client::new();
    let url = format!("{}/hooks/alertmanager", bot.base_url());
    let mut answered = Vec::with_capacity(alerts);
    let started = Instant::now();
    let mut peak = idle;
    for i in 0..alerts {
        let r = client
            .post(&url)
            .bearer_auth(AM_TOKEN)
            .json(&notification(i))
            .send()
            .await
            .expect("shepherd answers");
        assert_eq!(r.status().as_u16(), 200);
        answered.push(Instant::now());
        if i % 100 == 0 {
            peak = peak.max(rss(&bot));
        }
    }
    let posted = started.elapsed();
    // Each alert line, with when the message carrying it arrived (a backlog is sent as messages
    // of many lines).
    let lines_of = |seen: &[Seen]| -> Vec<(usize, Instant)> {
        seen.iter()
            .filter(|m| m.sender == BOT && m.room == plain)
            .flat_map(|m| {
                m.body()
                    .lines()
                    .filter_map(|l| l.split("Bench").nth(1)?.get(..5)?.parse().ok())
                    .map(|n| (n, m.received_at))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let ok = alice
        .until(Duration::from_secs(600), |seen| {
            lines_of(seen).len() >= alerts
        })
        .await;
    assert!(ok, "not every alert line arrived:\n{}", bot.stderr());
    let lines = lines_of(&alice.seen());
    let messages = alice
        .seen()
        .iter()
        .filter(|m| m.sender == BOT && m.room == plain && m.body().contains("Bench"))
        .count();
    let last = lines.iter().map(|(_, at)| *at).max().expect("lines");
    let total = last.saturating_duration_since(started);
    let mut lags: Vec<Duration> = lines
        .iter()
        .filter_map(|(i, at)| Some(at.saturating_duration_since(*answered.get(*i)?)))
        .collect();
    lags.sort_unstable();
    let in_order = lines.windows(2).all(|w| w[0].0 < w[1].0);
    peak = peak.max(rss(&bot));
    println!("\n## Alert lines into one room\n");
    println!(
        "| notifications | POSTs took s | all lines in after s | lines/s | Matrix messages | lag p50 ms | lag p99 ms | in order, once |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {alerts} | {:.2} | {:.2} | {:.0} | {messages} | {} | {} | {} |",
        posted.as_secs_f64(),
        total.as_secs_f64(),
        alerts as f64 / total.as_secs_f64(),
        ms(percentile(&lags, 50.0)),
        ms(percentile(&lags, 99.0)),
        if in_order && lines.len() == alerts {
            "yes"
        } else {
            "NO"
        }
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = rss(&bot);
    println!(
        "\nFloor in the same run: a plain client sending {floor_lines} lines, one event each, one after the other: {:.0} lines/s.",
        floor_lines as f64 / floor_secs
    );
    println!("\n## Memory of `shepherd serve` with Matrix on (VmRSS)\n");
    println!(
        "| idle after start-up | highest sampled during the alerts | 5 s after the last line |"
    );
    println!("|---|---|---|");
    println!(
        "| {} MiB | {} MiB | {} MiB |",
        idle / 1024,
        peak / 1024,
        after / 1024
    );
    let problems = bot
        .stderr()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .count();
    eprintln!("shepherd logged {problems} warnings/errors");
}
