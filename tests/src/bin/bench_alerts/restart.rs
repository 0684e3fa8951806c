//! Phase 4: loss across an IRC server restart in the middle of a burst.
//!
//! The relay reaches ngIRCd through a `Proxy`; the human watching the channel connects
//! directly. After the warm-up, the first half of the burst is POSTed (one client, one
//! notification after another, each answered); then the proxy is shut (every relay connection
//! cut, new ones refused) and ngIRCd is SIGKILLed; the second half is POSTed while IRC is gone;
//! ngIRCd is started again on the same port, the human reconnects and rejoins, and only then
//! is the proxy opened, so the relay cannot say anything the human is not there to see. Lines
//! are then awaited until every alert was seen, or nothing new came for `quiet` after the relay
//! was back in the channel, or the relay was not back in the channel `rejoin` after the proxy
//! opened, or `wait` passed since the proxy opened.

use std::time::{Duration, Instant};

use super::relay::{
    RelayKind, Scene, alert_name, count_lines, distinct, http_client, index_in, indices, joined,
    log_problems, payload, post, watcher,
};

const WARM: &str = "AmWarm";
const PREFIX: &str = "AmBurst";

/// When the wait after the restart ends (see the module's notes).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// At the latest this long after the proxy opened.
    pub wait: Duration,
    /// Once the relay is back in the channel, after this long without a new line.
    pub quiet: Duration,
    /// When the relay is not back in the channel this long after the proxy opened.
    pub rejoin: Duration,
}

pub struct RestartResult {
    pub kind: RelayKind,
    /// The proxy stripped `~` from the user name of `USER` lines (the peer's reconnection bug).
    pub fix_user: bool,
    pub burst: usize,
    pub answered_2xx: usize,
    pub other_answers: Vec<String>,
    /// Distinct alerts the human saw before the cut, after the restart, and in all.
    pub before: usize,
    pub after: usize,
    pub distinct: usize,
    /// Lines that named an alert already seen (in either session).
    pub duplicates: usize,
    /// From the proxy opening to the relay's JOIN, and to its last alert line.
    pub rejoined_after: Option<Duration>,
    pub last_line_after: Option<Duration>,
    pub ended_by: &'static str,
    pub bounds: Bounds,
    /// shepherd: IRC outbox messages still undelivered at the end.
    pub undelivered: Option<i64>,
    /// The peer's own error counters (`irc_send_msg_errors`, `webhook_alert_handling_errors`).
    pub peer_errors: Option<(f64, f64)>,
    pub warnings: usize,
    pub log_errors: usize,
}

impl RestartResult {
    pub fn lost(&self) -> usize {
        self.burst.saturating_sub(self.distinct)
    }
}

pub async fn run(
    kind: RelayKind,
    fix_user: bool,
    burst: usize,
    idle: Duration,
    bounds: Bounds,
) -> RestartResult {
    let Bounds {
        wait,
        quiet,
        rejoin,
    } = bounds;
    eprintln!(
        "[restart] {}{}: {burst} notifications, ngIRCd killed and restarted after {}",
        kind.label(),
        if fix_user {
            " (USER ~ fixed in transit)"
        } else {
            ""
        },
        burst / 2
    );
    let Scene {
        mut server,
        proxy,
        human: first,
        relay,
    } = Scene::start(kind, Some(fix_user)).await;
    let proxy = proxy.expect("a proxy");
    let nick = relay.nick();
    let url = relay.webhook_url();
    let client = http_client();

    // Warm-up: the relay is connected, joined and saying things.
    let since = first.received_len();
    let _ = post(&client, &url, payload(&alert_name(WARM, 0))).await;
    let warmed = first
        .next_matching(since, super::relay::WAIT, |m| {
            m.is_message_from(nick) && index_in(m.text(), WARM).is_some()
        })
        .await;
    assert!(
        warmed.is_some(),
        "{}: the warm-up alert never reached IRC:\n{}",
        kind.label(),
        relay.log()
    );

    // Let the peer's flood debt from registration, JOIN and the warm-up run off (every relay
    // idles as long), so the burst starts with its full allowance.
    tokio::time::sleep(idle).await;

    let bodies: Vec<Vec<u8>> = (0..burst)
        .map(|i| payload(&alert_name(PREFIX, i)))
        .collect();
    let mut answered_2xx = 0;
    let mut other_answers = Vec::new();
    let half = burst / 2;
    let mut bodies = bodies.into_iter();
    for (i, body) in bodies.by_ref().take(half).enumerate() {
        match post(&client, &url, body).await {
            Ok(s) if (200..300).contains(&s) => answered_2xx += 1,
            Ok(s) => other_answers.push(format!("#{i}: HTTP {s}")),
            Err(e) => other_answers.push(format!("#{i}: {e}")),
        }
    }
    proxy.shut();
    server.kill().await;
    for (i, body) in bodies.enumerate() {
        match post(&client, &url, body).await {
            Ok(s) if (200..300).contains(&s) => answered_2xx += 1,
            Ok(s) => other_answers.push(format!("#{}: HTTP {s}", half + i)),
            Err(e) => other_answers.push(format!("#{}: {e}", half + i)),
        }
    }
    server.restart().await;
    let second = watcher(&server).await;
    proxy.open();
    let reopened = Instant::now();
    let before_set = distinct(&indices(&first.received(), nick, PREFIX));

    // Await the rest.
    let deadline = reopened + wait;
    let mut last_count = 0;
    let mut last_change = reopened;
    let mut rejoined_after = None;
    let ended_by = loop {
        let msgs = second.received();
        let after = indices(&msgs, nick, PREFIX);
        let mut all = before_set.clone();
        all.extend(after.iter().copied());
        if all.len() >= burst {
            break "every alert seen";
        }
        if rejoined_after.is_none() && joined(&msgs, nick) {
            rejoined_after = Some(reopened.elapsed());
            last_change = Instant::now();
        }
        if after.len() != last_count {
            last_count = after.len();
            last_change = Instant::now();
        }
        let now = Instant::now();
        if rejoined_after.is_some() && now.saturating_duration_since(last_change) >= quiet {
            break "quiet";
        }
        if rejoined_after.is_none() && now.saturating_duration_since(reopened) >= rejoin {
            break "never back in the channel";
        }
        if now >= deadline {
            break "deadline";
        }
        let n = last_count;
        let _ = second
            .wait_for(
                Duration::from_secs(1).min(deadline.saturating_duration_since(now)),
                |m| {
                    count_lines(m, nick, PREFIX) != n
                        || (rejoined_after.is_none() && joined(m, nick))
                },
            )
            .await;
    };

    // shepherd marks a line delivered once the server's PONG behind it came: give the last
    // acknowledgements a moment (bounded) before counting what is still undelivered (and any
    // line said twice meanwhile).
    let mut undelivered = relay.undelivered().await;
    let settle = Instant::now() + Duration::from_secs(10);
    while undelivered.is_some_and(|n| n > 0) && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(100)).await;
        undelivered = relay.undelivered().await;
    }
    let first_lines = indices(&first.received(), nick, PREFIX);
    let second_msgs = second.received();
    let second_lines = indices(&second_msgs, nick, PREFIX);
    let after_set = distinct(&second_lines);
    let mut all = before_set.clone();
    all.extend(after_set.iter().copied());
    let duplicates = first_lines.len() + second_lines.len() - all.len();
    let last_line_after = super::relay::relay_lines(&second_msgs, nick)
        .filter(|m| index_in(m.text(), PREFIX).is_some())
        .map(|m| m.at.saturating_duration_since(reopened))
        .max();

    let peer_errors = match kind {
        RelayKind::Peer => Some((
            relay.metric_sum("irc_send_msg_errors").await,
            relay.metric_sum("webhook_alert_handling_errors").await,
        )),
        RelayKind::Shepherd(_) => None,
    };
    let (warnings, log_errors) = match kind {
        RelayKind::Shepherd(_) => log_problems(&format!("restart, {}", kind.label()), &relay.log()),
        RelayKind::Peer => (0, 0),
    };
    let phase = if fix_user {
        "restart-userfix"
    } else {
        "restart"
    };
    relay.save_log(phase, &[("ngircd", server.log())]);
    relay.stop().await;
    drop(first);
    drop(second);
    drop(proxy);
    drop(server);
    RestartResult {
        kind,
        fix_user,
        burst,
        answered_2xx,
        other_answers,
        before: before_set.len(),
        after: after_set.len(),
        distinct: all.len(),
        duplicates,
        rejoined_after,
        last_line_after,
        ended_by,
        bounds,
        undelivered,
        peer_errors,
        warnings,
        log_errors,
    }
}
