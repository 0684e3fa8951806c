//! Phase 1 and 3: webhook ingestion throughput with concurrent keep-alive clients, and the
//! relay's memory idle and under that load.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Barrier;

use super::relay::{
    RelayKind, Scene, Stats, alert_name, count_lines, distinct, http_client, indices, log_problems,
    payload, post, rss_kib,
};

pub const PREFIX: &str = "AmLoad";
/// How long the relay settles after joining before its idle memory is read.
const SETTLE: Duration = Duration::from_secs(3);
/// How often memory is sampled during the POSTs.
const SAMPLE_EVERY: Duration = Duration::from_millis(10);

pub struct IngestResult {
    pub kind: RelayKind,
    pub clients: usize,
    pub notifications: usize,
    pub wall: Duration,
    pub latency: Stats,
    pub statuses: BTreeMap<u16, usize>,
    pub errors: Vec<String>,
    pub rss_idle_kib: u64,
    /// Highest VmRSS sampled while the POSTs went on, and VmHWM right after the last answer.
    pub rss_peak_sampled_kib: u64,
    pub hwm_kib: u64,
    /// Alert lines on IRC when the last answer came.
    pub lines_at_last_answer: usize,
    /// Distinct alert lines on IRC at the end of the drain wait, and when the last one came
    /// (from the first request).
    pub lines_after_wait: usize,
    pub last_line_at: Option<Duration>,
    pub drain_wait: Duration,
    /// shepherd: from the first request until the last notification was processed (the lane
    /// wrote its line to the outbox) and until the last line was marked delivered (the
    /// server's PONG behind it came), from the store's times.
    pub processed_after: Option<Duration>,
    pub delivered_after: Option<Duration>,
    /// The peer: alerts it answered 2xx for but dropped (its buffer was full).
    pub peer_dropped: Option<f64>,
    /// shepherd: stored notifications not processed at the end, WARN and ERROR lines.
    pub unprocessed: Option<i64>,
    pub warnings: usize,
    pub log_errors: usize,
}

impl IngestResult {
    pub fn count_2xx(&self) -> usize {
        self.statuses
            .iter()
            .filter(|(s, _)| (200..300).contains(*s))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn count_5xx(&self) -> usize {
        self.statuses
            .iter()
            .filter(|(s, _)| **s >= 500)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn per_second(&self) -> f64 {
        self.count_2xx() as f64 / self.wall.as_secs_f64()
    }
}

pub async fn run(
    kind: RelayKind,
    clients: usize,
    notifications: usize,
    drain_wait: Duration,
) -> IngestResult {
    eprintln!(
        "[ingest] {}: {notifications} notifications from {clients} clients",
        kind.label()
    );
    let scene = Scene::start(kind, None).await;
    let nick = scene.relay.nick();
    let pid = scene.relay.pid().expect("the relay runs");
    tokio::time::sleep(SETTLE).await;
    let (rss_idle_kib, _) = rss_kib(pid).expect("the relay's /proc status");

    // Every body is built before the clock starts, dealt round-robin to the clients.
    let mut per_client: Vec<Vec<Vec<u8>>> = (0..clients).map(|_| Vec::new()).collect();
    for i in 0..notifications {
        per_client[i % clients].push(payload(&alert_name(PREFIX, i)));
    }
    let url = scene.relay.webhook_url();
    let warm_url = scene.relay.warm_url();

    let stop = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (stop, peak) = (stop.clone(), peak.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                if let Some((rss, _)) = rss_kib(pid) {
                    peak.fetch_max(rss, Ordering::SeqCst);
                }
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
        })
    };

    let barrier = Arc::new(Barrier::new(clients + 1));
    let mut tasks = Vec::new();
    for batch in per_client {
        let (barrier, url, warm_url) = (barrier.clone(), url.clone(), warm_url.clone());
        tasks.push(tokio::spawn(async move {
            let client = http_client();
            if let Ok(r) = client.get(&warm_url).send().await {
                let _ = r.bytes().await;
            }
            barrier.wait().await;
            let mut samples = Vec::with_capacity(batch.len());
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            let mut errors = Vec::new();
            for body in batch {
                let sent = Instant::now();
                match post(&client, &url, body).await {
                    Ok(status) => {
                        samples.push(sent.elapsed());
                        *statuses.entry(status).or_default() += 1;
                    }
                    Err(e) => errors.push(e),
                }
            }
            (samples, statuses, errors, Instant::now())
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let started_unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut samples = Vec::new();
    let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut last = started;
    for t in tasks {
        let (s, st, e, end) = t.await.expect("client task");
        samples.extend(s);
        for (k, v) in st {
            *statuses.entry(k).or_default() += v;
        }
        errors.extend(e);
        last = last.max(end);
    }
    let wall = last.saturating_duration_since(started);
    stop.store(true, Ordering::SeqCst);
    let _ = sampler.await;
    let (_, hwm_kib) = rss_kib(pid).unwrap_or((0, 0));
    let lines_at_last_answer = count_lines(&scene.human.received(), nick, PREFIX);

    // Then: how long until every alert is on IRC (bounded).
    let _ = scene
        .human
        .wait_for(drain_wait.saturating_sub(last.elapsed()), |m| {
            count_lines(m, nick, PREFIX) >= notifications
        })
        .await;
    let received = scene.human.received();
    let seen = indices(&received, nick, PREFIX);
    let last_line_at = super::relay::relay_lines(&received, nick)
        .filter(|m| super::relay::index_in(m.text(), PREFIX).is_some())
        .map(|m| m.at.saturating_duration_since(started))
        .max();

    let peer_dropped = match kind {
        RelayKind::Peer => Some(
            scene
                .relay
                .metric_sum("webhook_alert_handling_errors")
                .await,
        ),
        RelayKind::Shepherd(_) => None,
    };
    let unprocessed = scene.relay.unprocessed().await;
    let since_start = |t: Option<i64>| {
        t.map(|ms| Duration::from_millis(ms.saturating_sub(started_unix_ms).max(0) as u64))
    };
    let (processed_after, delivered_after) = match scene.relay.finished_at().await {
        Some((p, d)) => (since_start(p), since_start(d)),
        None => (None, None),
    };
    let (warnings, log_errors) = match kind {
        RelayKind::Shepherd(_) => {
            log_problems(&format!("ingest, {}", kind.label()), &scene.relay.log())
        }
        RelayKind::Peer => (0, 0),
    };
    scene.stop("ingest").await;
    IngestResult {
        kind,
        clients,
        notifications,
        wall,
        latency: Stats::of(samples),
        statuses,
        errors,
        rss_idle_kib,
        rss_peak_sampled_kib: peak.load(Ordering::SeqCst),
        hwm_kib,
        lines_at_last_answer,
        lines_after_wait: distinct(&seen).len(),
        last_line_at,
        drain_wait,
        processed_after,
        delivered_after,
        peer_dropped,
        unprocessed,
        warnings,
        log_errors,
    }
}
