//! Phase `storm` (issue 12): memory under one Alertmanager notification carrying `alerts`
//! alerts (a storm in one group). The relay's VmRSS is read 3 s after it joined (idle),
//! sampled every 10 ms from the POST until its first lines about the storm are on IRC and for
//! `SETTLE` after, and read once more at the end; VmHWM is the kernel's high-water mark.

use std::time::{Duration, Instant};

use super::relay::{
    PeakSampler, RelayKind, Scene, WAIT, http_client, post, relay_lines, rss_kib, storm_payload,
};

pub const PREFIX: &str = "AmStorm";
const SETTLE: Duration = Duration::from_secs(3);

pub struct StormResult {
    pub kind: RelayKind,
    pub alerts: usize,
    pub body_bytes: usize,
    pub status: Result<u16, String>,
    pub answered: Duration,
    /// From the POST to the relay's first line in the channel, and how many lines had come by
    /// the end of the settle time.
    pub first_line: Option<Duration>,
    pub lines: usize,
    pub rss_idle_kib: u64,
    pub rss_peak_sampled_kib: u64,
    pub rss_after_kib: u64,
    pub hwm_kib: u64,
}

pub async fn run(kind: RelayKind, alerts: usize) -> StormResult {
    eprintln!(
        "[storm] {}: one notification of {alerts} alerts",
        kind.label()
    );
    let (scene, pid, rss_idle_kib) = Scene::settled(kind).await;
    let nick = scene.relay.nick();
    let before = relay_lines(&scene.human.received(), nick).count();

    let body = storm_payload(PREFIX, alerts);
    let body_bytes = body.len();
    let sampler = PeakSampler::start(pid);
    let client = http_client();
    let sent = Instant::now();
    let status = post(&client, &scene.relay.webhook_url(), body).await;
    let answered = sent.elapsed();
    let seen = scene
        .human
        .wait_for(WAIT, |m| relay_lines(m, nick).count() > before)
        .await;
    let first_line = seen.then(|| {
        relay_lines(&scene.human.received(), nick)
            .nth(before)
            .map(|m| m.at.saturating_duration_since(sent))
    });
    tokio::time::sleep(SETTLE).await;
    let rss_peak_sampled_kib = sampler.stop().await;
    let (rss_after_kib, hwm_kib) = rss_kib(pid).unwrap_or((0, 0));
    let lines = relay_lines(&scene.human.received(), nick).count() - before;
    scene.stop("storm").await;
    StormResult {
        kind,
        alerts,
        body_bytes,
        status,
        answered,
        first_line: first_line.flatten(),
        lines,
        rss_idle_kib,
        rss_peak_sampled_kib,
        rss_after_kib,
        hwm_kib,
    }
}
