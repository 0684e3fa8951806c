//! Phase 2: added latency from the webhook POST to the alert's line at an IRC client, one
//! notification at a time.

use std::time::{Duration, Instant};

use shepherd_tests::irc_client::round_trip_floor;

use super::relay::{
    RelayKind, Scene, Stats, alert_name, flood_sleeps, http_client, index_in, payload, post,
};

const WARM: &str = "AmWarm";
const SPACED: &str = "AmGap";
const BACK_TO_BACK: &str = "AmLat";

/// One series of sequential notifications.
pub struct Series {
    /// POST sent -> answer read.
    pub answered: Stats,
    /// POST sent -> the line read by the IRC client.
    pub line: Stats,
    /// Notifications whose line never came within the wait.
    pub missing: usize,
    /// The peer: how often its IRC library slept for its flood limit during the series.
    pub flood_sleeps: Option<usize>,
    pub took: Duration,
}

pub struct LatencyResult {
    pub kind: RelayKind,
    /// Each POSTed `gap` after the previous line arrived (below the peer's pacing).
    pub spaced: Series,
    /// Each POSTed as soon as the previous line arrived.
    pub back_to_back: Series,
    pub gap: Duration,
    /// The raw IRC round trip (client -> server -> client -> server -> client) on the same
    /// server, for scale.
    pub irc_floor: Stats,
}

async fn series(
    scene: &Scene,
    client: &reqwest::Client,
    prefix: &str,
    n: usize,
    gap: Duration,
    wait: Duration,
) -> Series {
    let nick = scene.relay.nick();
    let url = scene.relay.webhook_url();
    let sleeps_before = flood_sleeps(&scene.relay.log());
    let mut answered = Vec::with_capacity(n);
    let mut lines = Vec::with_capacity(n);
    let mut missing = 0;
    let began = Instant::now();
    for i in 0..n {
        if !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        let since = scene.human.received_len();
        let body = payload(&alert_name(prefix, i));
        let sent = Instant::now();
        match post(client, &url, body).await {
            Ok(status) if (200..300).contains(&status) => answered.push(sent.elapsed()),
            Ok(status) => eprintln!("[latency] {}: HTTP {status}", scene.relay.kind.label()),
            Err(e) => eprintln!("[latency] {}: {e}", scene.relay.kind.label()),
        }
        let line = scene
            .human
            .next_matching(since, wait, |m| {
                m.is_message_from(nick) && index_in(m.text(), prefix) == Some(i)
            })
            .await;
        match line {
            Some(m) => lines.push(m.at.saturating_duration_since(sent)),
            None => missing += 1,
        }
    }
    let took = began.elapsed();
    let flood = match scene.relay.kind {
        RelayKind::Peer => Some(flood_sleeps(&scene.relay.log()) - sleeps_before),
        RelayKind::Shepherd(_) => None,
    };
    Series {
        answered: Stats::of(answered),
        line: Stats::of(lines),
        missing,
        flood_sleeps: flood,
        took,
    }
}

pub async fn run(
    kind: RelayKind,
    back_to_back: usize,
    spaced: usize,
    gap: Duration,
    idle: Duration,
) -> LatencyResult {
    eprintln!(
        "[latency] {}: {spaced} spaced by {gap:?}, then {back_to_back} back to back",
        kind.label()
    );
    let scene = Scene::start(kind, None).await;
    let irc_floor = Stats::of(round_trip_floor(&scene.server.addr(), 200).await);
    let client = http_client();
    let wait = Duration::from_secs(60);
    // One notification first (connections, caches; the peer's first line after its start).
    let _ = series(&scene, &client, WARM, 1, Duration::ZERO, wait).await;
    // Let the peer's flood debt from registration, JOIN and the warm-up run off.
    tokio::time::sleep(idle).await;
    let spaced = series(&scene, &client, SPACED, spaced, gap, wait).await;
    let back_to_back = series(
        &scene,
        &client,
        BACK_TO_BACK,
        back_to_back,
        Duration::ZERO,
        wait,
    )
    .await;
    if let RelayKind::Shepherd(_) = kind {
        super::relay::log_problems(&format!("latency, {}", kind.label()), &scene.relay.log());
    }
    scene.stop("latency").await;
    LatencyResult {
        kind,
        spaced,
        back_to_back,
        gap,
        irc_floor,
    }
}
