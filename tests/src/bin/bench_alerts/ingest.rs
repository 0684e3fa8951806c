//! Phase 1 and 3: webhook ingestion throughput with concurrent keep-alive clients, and the
//! relay's memory idle and under that load.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::Barrier;

use super::relay::{
    PeakSampler, RelayKind, Scene, Stats, alert_name, count_lines, distinct, http_client, indices,
    log_problems, payload, post, rss_kib,
};

pub const PREFIX: &str = "AmLoad";

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
    /// When the first alert line came (from the first request).
    pub first_line_at: Option<Duration>,
    /// Alert lines said more than once, and whether every client's alerts came in the order
    /// that client sent them (each was answered before the next was sent, so that is the
    /// order the relay accepted them in).
    pub duplicates: usize,
    pub in_order: bool,
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
    /// shepherd: the group writer's commits, writes, and seconds in all (commit, and waiting to
    /// start), from its `shepherd_store_group_*` series at the end.
    pub groups: Option<Groups>,
}

pub struct Groups {
    pub commits: f64,
    pub writes: f64,
    pub commit_seconds: f64,
    pub wait_seconds: f64,
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

    /// Distinct alert lines per second from the first POST to the last line.
    pub fn end_to_end_lines_per_second(&self) -> Option<f64> {
        let last = self.last_line_at?;
        Some(self.lines_after_wait as f64 / last.as_secs_f64())
    }

    /// Lines per second from the first line to the last: the rate they were said at once flowing.
    pub fn sustained_lines_per_second(&self) -> Option<f64> {
        let span = self.last_line_at?.checked_sub(self.first_line_at?)?;
        (self.lines_after_wait > 1 && !span.is_zero())
            .then(|| (self.lines_after_wait - 1) as f64 / span.as_secs_f64())
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
    let (scene, pid, rss_idle_kib) = Scene::settled(kind).await;
    let nick = scene.relay.nick();

    // Every body is built before the clock starts, dealt round-robin to the clients.
    let mut per_client: Vec<Vec<Vec<u8>>> = (0..clients).map(|_| Vec::new()).collect();
    for i in 0..notifications {
        per_client[i % clients].push(payload(&alert_name(PREFIX, i)));
    }
    let url = scene.relay.webhook_url();
    let warm_url = scene.relay.warm_url();

    let sampler = PeakSampler::start(pid);

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
    let rss_peak_sampled_kib = sampler.stop().await;
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
    let arrivals: Vec<Duration> = super::relay::relay_lines(&received, nick)
        .filter(|m| super::relay::index_in(m.text(), PREFIX).is_some())
        .map(|m| m.at.saturating_duration_since(started))
        .collect();
    let last_line_at = arrivals.iter().copied().max();
    let first_line_at = arrivals.iter().copied().min();
    let duplicates = seen.len() - distinct(&seen).len();
    let in_order = in_client_order(&seen, clients);

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
    let groups = match kind {
        RelayKind::Shepherd(_) => Some(Groups {
            commits: scene
                .relay
                .metric_sum("shepherd_store_group_commits_total")
                .await,
            writes: scene
                .relay
                .metric_sum("shepherd_store_group_writes_total")
                .await,
            commit_seconds: scene
                .relay
                .metric_sum("shepherd_store_group_commit_seconds_sum")
                .await,
            wait_seconds: scene
                .relay
                .metric_sum("shepherd_store_group_turn_wait_seconds_sum")
                .await,
        }),
        RelayKind::Peer => None,
    };
    scene.stop("ingest").await;
    IngestResult {
        groups,
        kind,
        clients,
        notifications,
        wall,
        latency: Stats::of(samples),
        statuses,
        errors,
        rss_idle_kib,
        rss_peak_sampled_kib,
        hwm_kib,
        lines_at_last_answer,
        lines_after_wait: distinct(&seen).len(),
        last_line_at,
        first_line_at,
        duplicates,
        in_order,
        drain_wait,
        processed_after,
        delivered_after,
        peer_dropped,
        unprocessed,
        warnings,
        log_errors,
    }
}

/// Whether the alert numbers `seen` (in arrival order) keep each client's sending order: client
/// `c` sent `c`, `c + clients`, `c + 2 * clients`, ... one after the other.
fn in_client_order(seen: &[usize], clients: usize) -> bool {
    let mut last: Vec<Option<usize>> = vec![None; clients.max(1)];
    seen.iter().all(|&i| {
        let slot = &mut last[i % clients.max(1)];
        let ok = slot.is_none_or(|prev| prev < i);
        *slot = Some(i);
        ok
    })
}
