//! `bench_alerts`: shepherd's Alertmanager relay against the peer, the Debian package
//! `alertmanager-irc-relay` (0.4), in one run (issue 5's benchmark).
//!
//! Every relay is measured the same way: a fresh ngIRCd (throttling off, `Throttle::Off`) per
//! run, a human client in `#alerts`, and the relay configured to say every alert there: shepherd
//! (`shepherd serve`, release build) on a fresh SQLite file and on a fresh PostgreSQL database,
//! `[alerts] default_targets = ["irc:#alerts"]`, shipped `[queue]` settings and templates, and
//! IRC pacing that holds no line back (`flood_burst = 100000`, `flood_rate = 100000`); the peer
//! with its defaults (one PRIVMSG per alert, `Alert <name> on <instance> is <status>`). The
//! payloads are the same bytes for both: Alertmanager version 4 notifications of one firing
//! alert each, every alert its own `alertname`, in the shape captured from Alertmanager 0.25
//! (`payload-firing.json` of the test bed, embedded), with `Authorization: Bearer` (the peer
//! ignores it). shepherd answers 200 after the notification is committed to its store; the
//! peer answers 200 after putting the alert in an in-memory channel (2,048 entries; when it is
//! full the alert is dropped and still answered 200).
//!
//! Phases (`bench_alerts all` runs them in this order, each relay after the other):
//! - `ingest` (issue 5, items 1 and 3): `clients` concurrent keep-alive HTTP/1.1 clients POST
//!   `notifications` notifications; 2xx answers per second of wall time, p50/p99/max of one
//!   POST; then up to `drain` seconds for every alert to reach IRC. Memory in the same run:
//!   VmRSS 3 s after the relay joined (idle), the highest VmRSS sampled every 10 ms during the
//!   POSTs, and VmHWM after the last answer. Before the relays, the store's own floor
//!   (`bench_alerts/floor.rs`): one writer committing `clients` notification rows per
//!   transaction, nothing else — the most a durable relay on that store can answer.
//! - `latency` (item 2): POST -> the line at the IRC client, one notification at a time: first
//!   `spaced` notifications each `gap_ms` after the previous line arrived (slower than the
//!   peer's own pacing), after `idle` seconds of quiet; then `latency` notifications back to
//!   back (each as soon as the previous line arrived).
//! - `restart` (item 4): `burst` notifications, ngIRCd killed (and the relay's connection cut
//!   by a proxy) after the first half and restarted after the second; alert lines counted
//!   before and after, until all were seen, `quiet` seconds passed without a new line once the
//!   relay was back, or it was not back `rejoin` seconds after the restart, or `wait` seconds
//!   passed. After the warm-up every relay idles `idle` seconds first, so the peer starts the
//!   burst with its full flood allowance. (The peer 0.4.2 does not come back: with a backlog at
//!   the disconnect it deadlocks, and without one it cannot register on ngIRCd again;
//!   `peer_user_fix=1` runs it a second time with the latter worked around in transit, see
//!   `bench_alerts/cut.rs`.)
//!
//! - `storm` (issue 12): one notification carrying `storm_alerts` alerts; the relay's memory
//!   idle, sampled from the POST until its lines about it came and 3 s after, and at the end.
//!
//! Run after `cargo build --release -p shepherd-bot -p shepherd-tests`:
//! `./target/release/bench_alerts all` (or `ingest`, `latency`, `restart`), with options as
//! `key=value`: `clients=8 notifications=2000 drain=60 latency=50 spaced=20 gap_ms=3000
//! idle=12 burst=200 wait=600 quiet=30 rejoin=120 peer_user_fix=0 storm_alerts=10000
//! relays=sqlite,postgres,peer`.

#[path = "bench_alerts/cut.rs"]
mod cut;
#[path = "bench_alerts/floor.rs"]
mod floor;
#[path = "bench_alerts/ingest.rs"]
mod ingest;
#[path = "bench_alerts/latency.rs"]
mod latency;
#[path = "bench_alerts/relay.rs"]
mod relay;
#[path = "bench_alerts/restart.rs"]
mod restart;
#[path = "bench_alerts/storm.rs"]
mod storm;

use std::time::Duration;

use relay::{FLOOD_BURST, FLOOD_RATE, RelayKind, mib, ms, secs};
use shepherd_tests::harness::{Backend, postgres_admin_url};

struct Options {
    clients: usize,
    notifications: usize,
    drain: Duration,
    latency: usize,
    spaced: usize,
    gap: Duration,
    idle: Duration,
    burst: usize,
    wait: Duration,
    quiet: Duration,
    rejoin: Duration,
    peer_user_fix: bool,
    storm_alerts: usize,
    relays: Vec<RelayKind>,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let mut o = Options {
            clients: 8,
            notifications: 2000,
            drain: Duration::from_secs(60),
            latency: 50,
            spaced: 20,
            gap: Duration::from_millis(3000),
            idle: Duration::from_secs(12),
            burst: 200,
            wait: Duration::from_secs(600),
            quiet: Duration::from_secs(30),
            rejoin: Duration::from_secs(120),
            peer_user_fix: false,
            storm_alerts: 10_000,
            relays: vec![
                RelayKind::Shepherd(Backend::Sqlite),
                RelayKind::Shepherd(Backend::Postgres),
                RelayKind::Peer,
            ],
        };
        for arg in args {
            let Some((key, value)) = arg.split_once('=') else {
                usage(&format!("not key=value: {arg}"));
            };
            let number = || -> u64 {
                value
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("{key} wants a number, not {value:?}")))
            };
            match key {
                "clients" => o.clients = number().max(1) as usize,
                "notifications" => o.notifications = number() as usize,
                "drain" => o.drain = Duration::from_secs(number()),
                "latency" => o.latency = number() as usize,
                "spaced" => o.spaced = number() as usize,
                "gap_ms" => o.gap = Duration::from_millis(number()),
                "idle" => o.idle = Duration::from_secs(number()),
                "burst" => o.burst = number() as usize,
                "wait" => o.wait = Duration::from_secs(number()),
                "quiet" => o.quiet = Duration::from_secs(number()),
                "rejoin" => o.rejoin = Duration::from_secs(number()),
                "peer_user_fix" => o.peer_user_fix = number() != 0,
                "storm_alerts" => o.storm_alerts = number().max(1) as usize,
                "relays" => {
                    o.relays = value
                        .split(',')
                        .map(|w| {
                            RelayKind::parse(w).unwrap_or_else(|| {
                                usage(&format!("unknown relay {w:?} (sqlite, postgres, peer)"))
                            })
                        })
                        .collect()
                }
                _ => usage(&format!("unknown option {key}")),
            }
        }
        o
    }
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "{problem}\nusage: bench_alerts [all|ingest|latency|restart|storm] [clients=8] \
         [notifications=2000] [drain=60] [latency=50] [spaced=20] [gap_ms=3000] [idle=12] \
         [burst=200] [wait=600] [quiet=30] [rejoin=120] [peer_user_fix=0] [storm_alerts=10000] \
         [relays=sqlite,postgres,peer]"
    );
    std::process::exit(2)
}

/// One line of a command's output, or "unknown".
fn first_line_of(cmd: &str, args: &[&str]) -> String {
    std::process::Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .and_then(|o| {
            let text = String::from_utf8_lossy(&o.stdout).into_owned();
            text.lines().next().map(str::to_string)
        })
        .filter(|l| !l.trim().is_empty())
        .unwrap_or_else(|| "unknown".into())
}

async fn postgres_version() -> String {
    sqlx::any::install_default_drivers();
    let Ok(mut conn) =
        <sqlx::AnyConnection as sqlx::Connection>::connect(&postgres_admin_url()).await
    else {
        return "unreachable".into();
    };
    sqlx::query_scalar::<_, String>("SHOW server_version")
        .fetch_one(&mut conn)
        .await
        .unwrap_or_else(|_| "unknown".into())
}

async fn print_machine() {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown", |(_, m)| m.trim());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_gib = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    println!(
        "Machine: {cpus} CPUs (`nproc`), {model}, {mem_gib:.1} GiB; {}; PostgreSQL {}; \
         alertmanager-irc-relay {}.",
        first_line_of("ngircd", &["--version"])
            .split('-')
            .next()
            .unwrap_or("ngIRCd"),
        postgres_version().await,
        first_line_of(
            "dpkg-query",
            &["-W", "-f=${Version}", "alertmanager-irc-relay"]
        ),
    );
    println!(
        "shepherd: IRC pacing flood_burst = {FLOOD_BURST}, flood_rate = {FLOOD_RATE} (no line \
         held back); shipped [queue] settings (4 workers, poll 250 ms) and templates; log filter \
         `info,shepherd_core=debug` (the harness's). Peer: its defaults (goirc's own pacing, \
         not configurable).\n"
    );
}

fn opt_secs(d: Option<Duration>) -> String {
    d.map_or_else(|| "—".into(), secs)
}

fn print_ingest(results: &[ingest::IngestResult]) {
    let Some(first) = results.first() else {
        return;
    };
    println!(
        "## Webhook ingestion: {} notifications, {} concurrent keep-alive clients\n",
        first.notifications, first.clients
    );
    println!(
        "| relay | answered 2xx (other, no answer) | per second | p50 ms | p99 ms | max ms | \
         what a 2xx means | alert lines on IRC at the last answer | distinct alert lines on IRC \
         (last one after) |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let other: usize = r.statuses.values().sum::<usize>() - r.count_2xx();
        let means = match r.kind {
            RelayKind::Shepherd(_) => "committed to the store (durable)",
            RelayKind::Peer => "put in an in-memory buffer (lost on exit)",
        };
        println!(
            "| {} | {} ({other}, {}) | **{:.0}** | {} | {} | {} | {means} | {} | {} of {} ({}; waited up to {} after the last answer) |",
            r.kind.label(),
            r.count_2xx(),
            r.errors.len(),
            r.per_second(),
            ms(r.latency.p50),
            ms(r.latency.p99),
            ms(r.latency.max),
            r.lines_at_last_answer,
            r.lines_after_wait,
            r.notifications,
            opt_secs(r.last_line_at),
            secs(r.drain_wait),
        );
    }
    println!();
    for r in results {
        let statuses: Vec<String> = r
            .statuses
            .iter()
            .map(|(s, n)| format!("{n} x {s}"))
            .collect();
        let mut notes = vec![format!("answers: {}", statuses.join(", "))];
        if r.count_5xx() > 0 {
            notes.push(format!("{} x 5xx", r.count_5xx()));
        }
        if let Some(e) = r.errors.first() {
            notes.push(format!("{} without an answer (first: {e})", r.errors.len()));
        }
        if let Some(d) = r.peer_dropped {
            notes.push(format!("alerts the peer dropped after answering 200: {d}"));
        }
        if let Some(u) = r.unprocessed {
            notes.push(format!(
                "stored notifications not processed at the end: {u}"
            ));
        }
        if let (Some(p), Some(d)) = (r.processed_after, r.delivered_after) {
            notes.push(format!(
                "from the first POST, the last notification processed after {} and the last \
                 line marked delivered after {}",
                secs(p),
                secs(d)
            ));
        }
        if let Some(g) = &r.groups
            && g.commits > 0.0
        {
            notes.push(format!(
                "group writer: {:.0} writes in {:.0} commits ({:.1} per commit), {:.3} ms from \
                 taking a group to its commit on average, {:.3} ms of it waiting to start",
                g.writes,
                g.commits,
                g.writes / g.commits,
                g.commit_seconds / g.commits * 1000.0,
                g.wait_seconds / g.commits * 1000.0
            ));
        }
        if let RelayKind::Shepherd(_) = r.kind {
            notes.push(format!(
                "WARN/ERROR log lines: {}/{}",
                r.warnings, r.log_errors
            ));
        }
        println!("- {}: {}", r.kind.label(), notes.join("; "));
    }
    println!();
    println!("## Alert lines on IRC\n");
    println!(
        "| relay | distinct lines | duplicates | in each client's order | first line after | last line after | \
         lines/s, first POST to last line | lines/s, first line to last |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for r in results {
        let rate = |v: Option<f64>| v.map_or_else(|| "—".into(), |v| format!("{v:.0}"));
        println!(
            "| {} | {} of {} | {} | {} | {} | {} | **{}** | {} |",
            r.kind.label(),
            r.lines_after_wait,
            r.notifications,
            r.duplicates,
            if r.in_order { "yes" } else { "no" },
            opt_secs(r.first_line_at),
            opt_secs(r.last_line_at),
            rate(r.end_to_end_lines_per_second()),
            rate(r.sustained_lines_per_second()),
        );
    }
    println!();
    println!("## Memory (VmRSS)\n");
    println!(
        "| relay | idle (3 s after joining) | peak sampled during the POSTs | VmHWM after the last answer |"
    );
    println!("|---|---|---|---|");
    for r in results {
        println!(
            "| {} | {} | {} | {} |",
            r.kind.label(),
            mib(r.rss_idle_kib),
            mib(r.rss_peak_sampled_kib),
            mib(r.hwm_kib)
        );
    }
    println!();
}

fn print_floor(results: &[floor::FloorResult]) {
    let Some(first) = results.first() else {
        return;
    };
    println!(
        "## The store's own floor: one writer, nothing but INSERT and COMMIT of notification rows\n"
    );
    println!(
        "| store | {} rows per commit: rows/s | commits/s | one row per commit: rows/s |",
        first.clients
    );
    println!("|---|---|---|---|");
    for r in results {
        println!(
            "| {} | **{:.0}** | {:.0} | {:.0} |",
            match r.backend {
                Backend::Sqlite => "SQLite (WAL, synchronous = FULL)",
                Backend::Postgres => "PostgreSQL",
            },
            r.grouped_per_second(),
            r.grouped_per_second() / r.clients as f64,
            r.single_per_second(),
        );
        if let Some(direct) = r.direct_per_second() {
            println!(
                "| SQLite through rusqlite (one connection, prepared INSERT per row: shepherd's group writer's engine) | **{direct:.0}** | {:.0} | |",
                direct / r.clients as f64
            );
        }
    }
    println!();
}

fn print_storm(results: &[storm::StormResult]) {
    let Some(first) = results.first() else {
        return;
    };
    println!(
        "## One notification of {} alerts ({:.1} MiB of JSON)\n",
        first.alerts,
        first.body_bytes as f64 / 1024.0 / 1024.0
    );
    println!(
        "| relay | answer | answered after | first line after | lines | VmRSS idle | peak sampled | \
         3 s after the first line | VmHWM |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in results {
        println!(
            "| {} | {} | {} | {} | {} | {} | **{}** | {} | {} |",
            r.kind.label(),
            match &r.status {
                Ok(s) => s.to_string(),
                Err(e) => format!("no answer ({e})"),
            },
            secs(r.answered),
            opt_secs(r.first_line),
            r.lines,
            mib(r.rss_idle_kib),
            mib(r.rss_peak_sampled_kib),
            mib(r.rss_after_kib),
            mib(r.hwm_kib),
        );
    }
    println!();
}

fn print_latency(results: &[latency::LatencyResult]) {
    let Some(first) = results.first() else {
        return;
    };
    println!("## Webhook -> IRC line, one notification at a time (ms)\n");
    println!(
        "| relay | series | n | POST answered p50 | line at the client p50 | p99 | max | missing | peer's flood sleeps |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in results {
        for (name, s) in [
            (
                format!("spaced: {} ms after the previous line", r.gap.as_millis()),
                &r.spaced,
            ),
            ("back to back".to_string(), &r.back_to_back),
        ] {
            println!(
                "| {} | {name} | {} | {} | **{}** | {} | {} | {} | {} |",
                r.kind.label(),
                s.line.n,
                ms(s.answered.p50),
                ms(s.line.p50),
                ms(s.line.p99),
                ms(s.line.max),
                s.missing,
                s.flood_sleeps.map_or_else(|| "—".into(), |n| n.to_string()),
            );
        }
    }
    println!(
        "\nFloor on the same ngIRCd: two plain clients, line out -> answer in, 200 times: p50 {} ms, p99 {} ms. Back-to-back series took: {}.\n",
        ms(first.irc_floor.p50),
        ms(first.irc_floor.p99),
        results
            .iter()
            .map(|r| format!("{} {}", r.kind.label(), secs(r.back_to_back.took)))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn print_restart(results: &[restart::RestartResult]) {
    let Some(first) = results.first() else {
        return;
    };
    println!(
        "## Loss across an IRC server restart: {} notifications, ngIRCd killed after {} and restarted after the rest\n",
        first.burst,
        first.burst / 2
    );
    println!(
        "| relay | answered 2xx | alerts seen before the cut | after the restart | distinct | duplicates | **lost** | back in the channel | last alert line | ended by |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        println!(
            "| {}{} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} |",
            r.kind.label(),
            if r.fix_user {
                ", `USER ~` fixed in transit"
            } else {
                ""
            },
            r.answered_2xx,
            r.before,
            r.after,
            r.distinct,
            r.duplicates,
            r.lost(),
            opt_secs(r.rejoined_after),
            opt_secs(r.last_line_after),
            r.ended_by,
        );
    }
    println!(
        "\nTimes are from the moment the proxy let the relay reach the restarted server. The wait \
         ended when every alert had been seen, when nothing new came for {} once the relay was \
         back in the channel, when the relay was not back in the channel after {}, or after {}.\n",
        secs(first.bounds.quiet),
        secs(first.bounds.rejoin),
        secs(first.bounds.wait)
    );
    for r in results {
        let mut notes = Vec::new();
        if !r.other_answers.is_empty() {
            notes.push(format!("other answers: {}", r.other_answers.join(", ")));
        }
        if let Some(u) = r.undelivered {
            notes.push(format!("undelivered in the outbox at the end: {u}"));
        }
        if let Some((send, handling)) = r.peer_errors {
            notes.push(format!(
                "peer counters: irc_send_msg_errors {send}, webhook_alert_handling_errors {handling}"
            ));
        }
        if let RelayKind::Shepherd(_) = r.kind {
            notes.push(format!(
                "WARN/ERROR log lines: {}/{}",
                r.warnings, r.log_errors
            ));
        }
        if !notes.is_empty() {
            let variant = if r.fix_user { ", `USER ~` fixed" } else { "" };
            println!("- {}{variant}: {}", r.kind.label(), notes.join("; "));
        }
    }
    println!();
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mode, rest) = match args.first().map(String::as_str) {
        Some(m @ ("all" | "ingest" | "latency" | "restart" | "storm")) => {
            (m.to_string(), &args[1..])
        }
        Some(a) if a.contains('=') => ("all".to_string(), &args[..]),
        None => ("all".to_string(), &args[..]),
        Some(other) => usage(&format!("unknown mode {other}")),
    };
    let o = Options::parse(rest);
    print_machine().await;

    let mut ingests = Vec::new();
    let mut latencies = Vec::new();
    let mut restarts = Vec::new();
    let mut storms = Vec::new();
    if mode == "all" || mode == "ingest" {
        let mut floors = Vec::new();
        for &kind in &o.relays {
            if let RelayKind::Shepherd(backend) = kind {
                floors.push(floor::run(backend, o.clients, o.notifications).await);
            }
        }
        print_floor(&floors);
        for &kind in &o.relays {
            ingests.push(ingest::run(kind, o.clients, o.notifications, o.drain).await);
        }
        print_ingest(&ingests);
    }
    if mode == "all" || mode == "latency" {
        for &kind in &o.relays {
            latencies.push(latency::run(kind, o.latency, o.spaced, o.gap, o.idle).await);
        }
        print_latency(&latencies);
    }
    if mode == "all" || mode == "restart" {
        let bounds = restart::Bounds {
            wait: o.wait,
            quiet: o.quiet,
            rejoin: o.rejoin,
        };
        for &kind in &o.relays {
            restarts.push(restart::run(kind, false, o.burst, o.idle, bounds).await);
            if kind == RelayKind::Peer && o.peer_user_fix {
                restarts.push(restart::run(kind, true, o.burst, o.idle, bounds).await);
            }
        }
        print_restart(&restarts);
    }
    if mode == "all" || mode == "storm" {
        for &kind in &o.relays {
            storms.push(storm::run(kind, o.storm_alerts).await);
        }
        print_storm(&storms);
    }
}
