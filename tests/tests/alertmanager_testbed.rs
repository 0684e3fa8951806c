//! Tests of the alerting test bed itself (`shepherd_tests::alertmanager`) against the real
//! servers: Alertmanager 0.25 posting webhooks to the recording receiver, its alert and silence
//! API, and the peer `alertmanager-irc-relay` posting into a channel on a real ngIRCd.
//! If these fail, the alert relay's tests and benchmarks cannot be trusted. Needs
//! `prometheus-alertmanager`, `alertmanager-irc-relay` and `ngircd` installed (scripts/test does).

use std::time::{Duration, Instant};

use shepherd_tests::alertmanager::{
    AlertSpec, Alertmanager, AlertmanagerOptions, IrcRelayPeer, Matcher, WebhookReceiver,
};
use shepherd_tests::irc_client::{IrcClient, unique_nick};
use shepherd_tests::ircd::{Ngircd, Throttle};

const WAIT: Duration = Duration::from_secs(15);

/// A webhook body captured from Alertmanager 0.25 (the test bed's `payload-firing.json`,
/// /work/shared/testbed/alertmanager/), kept here so the test runs where that folder is absent.
const PAYLOAD_FIRING: &str = r#"{
  "receiver": "webhook",
  "status": "firing",
  "alerts": [
    {
      "status": "firing",
      "labels": {
        "alertname": "DiskFull",
        "instance": "db1:9100",
        "job": "node",
        "severity": "critical"
      },
      "annotations": {
        "description": "Disk usage above 90%",
        "summary": "DiskFull is firing on db1"
      },
      "startsAt": "2026-11-25T07:47:20Z",
      "endsAt": "0001-01-01T00:00:00Z",
      "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=up",
      "fingerprint": "1751650d45bf7d6b"
    }
  ],
  "groupLabels": {
    "alertname": "DiskFull"
  },
  "commonLabels": {
    "alertname": "DiskFull",
    "instance": "db1:9100",
    "job": "node",
    "severity": "critical"
  },
  "commonAnnotations": {
    "description": "Disk usage above 90%",
    "summary": "DiskFull is firing on db1"
  },
  "externalURL": "http://127.0.0.1:19093",
  "version": "4",
  "groupKey": "{}/{alertname=~\".+\"}:{alertname=\"DiskFull\"}",
  "truncatedAlerts": 0
}"#;

fn disk_full() -> AlertSpec {
    AlertSpec::new("DiskFull")
        .label("instance", "db1:9100")
        .label("job", "node")
        .label("severity", "critical")
        .annotation("summary", "DiskFull is firing on db1")
        .annotation("description", "Disk usage above 90%")
        .generator_url("http://127.0.0.1:9090/graph?g0.expr=up")
}

#[tokio::test]
async fn alerts_reach_the_webhook_as_version_4_with_the_bearer_token_then_resolve() {
    let receiver = WebhookReceiver::start().await;
    let am = Alertmanager::start(&receiver.url(), Some("am-s3cret")).await;
    assert!(
        am.config_text().contains("type: Bearer"),
        "{}",
        am.config_text()
    );

    let alert = disk_full();
    let posted = Instant::now();
    am.post_alerts(std::slice::from_ref(&alert)).await;

    let listed = am.alerts().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].labels, alert.labels);
    assert_eq!(listed[0].status.state, "active");
    assert_eq!(listed[0].receivers[0].name, "webhook");

    let got = receiver.wait_for(1, WAIT).await;
    let first = &got[0];
    // group_wait is 1 s: the notification waits for it.
    let waited = first.at.saturating_duration_since(posted);
    assert!(
        waited >= Duration::from_millis(800),
        "the first webhook came after {waited:?}, before group_wait (1 s)"
    );
    assert_eq!(first.path, "/alerts");
    assert_eq!(first.authorization.as_deref(), Some("Bearer am-s3cret"));
    assert!(
        first
            .content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        first.content_type
    );
    let p = first.payload();
    assert_eq!(p.version, "4");
    assert_eq!(p.status, "firing");
    assert_eq!(p.receiver, "webhook");
    assert_eq!(p.external_url, am.url());
    assert_eq!(p.group_key, "{}:{alertname=\"DiskFull\"}");
    assert_eq!(p.truncated_alerts, 0);
    assert_eq!(
        p.group_labels.get("alertname").map(String::as_str),
        Some("DiskFull")
    );
    assert_eq!(p.common_labels, alert.labels);
    assert_eq!(p.common_annotations, alert.annotations);
    assert_eq!(p.alerts.len(), 1);
    let a = &p.alerts[0];
    assert_eq!(a.status, "firing");
    assert_eq!(a.labels, alert.labels);
    assert_eq!(a.annotations, alert.annotations);
    assert_eq!(a.generator_url, "http://127.0.0.1:9090/graph?g0.expr=up");
    assert_eq!(a.fingerprint, listed[0].fingerprint);
    // A firing alert has no end yet: Go's zero time.
    assert_eq!(a.ends_at.to_rfc3339(), "0001-01-01T00:00:00+00:00");

    am.resolve_alerts(std::slice::from_ref(&alert)).await;
    let got = receiver.wait_for(2, WAIT).await;
    assert_eq!(got.len(), 2, "{}", receiver.transcript());
    let second = &got[1];
    assert_eq!(second.authorization.as_deref(), Some("Bearer am-s3cret"));
    let r = second.payload();
    assert_eq!(r.version, "4");
    assert_eq!(r.status, "resolved");
    assert_eq!(r.group_key, p.group_key);
    assert_eq!(r.alerts.len(), 1);
    assert_eq!(r.alerts[0].status, "resolved");
    assert_eq!(r.alerts[0].labels, alert.labels);
    assert_eq!(r.alerts[0].fingerprint, a.fingerprint);
    assert_eq!(r.alerts[0].starts_at, a.starts_at);
    assert!(
        r.alerts[0].ends_at > r.alerts[0].starts_at,
        "{:?}",
        r.alerts[0]
    );
    assert!(
        am.alerts().await.is_empty(),
        "a resolved alert is no longer listed"
    );
}

#[tokio::test]
async fn routes_send_each_alert_to_its_receiver_with_its_own_credentials() {
    let receiver = WebhookReceiver::start().await;
    let options = AlertmanagerOptions::new(&receiver.url_for("/default"), None)
        .receiver("pager", &receiver.url_for("/pager"), Some("pager-token"))
        .route("pager", &["severity=\"critical\""], false)
        .group_by(&["alertname", "severity"]);
    let am = Alertmanager::start_with(options).await;

    am.post_alerts(&[
        disk_full(),
        AlertSpec::new("CertExpiring")
            .label("severity", "warning")
            .annotation("summary", "cert expires in 20 days"),
    ])
    .await;

    let got = receiver.wait_for(2, WAIT).await;
    let pager = receiver.received_at("/pager");
    let default = receiver.received_at("/default");
    assert_eq!(pager.len(), 1, "{}", receiver.transcript());
    assert_eq!(default.len(), 1, "{}", receiver.transcript());
    assert_eq!(got.len(), 2);

    assert_eq!(
        pager[0].authorization.as_deref(),
        Some("Bearer pager-token")
    );
    let p = pager[0].payload();
    assert_eq!(p.receiver, "pager");
    assert_eq!(p.alerts.len(), 1);
    assert_eq!(p.alerts[0].labels["alertname"], "DiskFull");
    assert_eq!(p.group_labels.len(), 2, "{:?}", p.group_labels);

    assert_eq!(
        default[0].authorization, None,
        "no token configured, no header"
    );
    let d = default[0].payload();
    assert_eq!(d.receiver, "webhook");
    assert_eq!(d.alerts.len(), 1);
    assert_eq!(d.alerts[0].labels["alertname"], "CertExpiring");
    assert_eq!(
        d.alerts[0].annotations["summary"],
        "cert expires in 20 days"
    );
}

#[tokio::test]
async fn a_silence_is_listed_suppresses_its_alert_and_expires() {
    let receiver = WebhookReceiver::start().await;
    let am = Alertmanager::start(&receiver.url(), None).await;
    assert!(am.silences().await.is_empty());

    let matchers = [
        Matcher::equal("alertname", "DiskFull"),
        Matcher::regex("instance", "db1:.*"),
    ];
    let before = chrono::Utc::now();
    let id = am
        .create_silence(
            &matchers,
            Duration::from_secs(3600),
            "irc:alice",
            "disk swap tonight",
        )
        .await;
    assert!(!id.is_empty());

    let silences = am.silences().await;
    assert_eq!(silences.len(), 1, "{silences:?}");
    let s = &silences[0];
    assert_eq!(s.id, id);
    assert_eq!(s.status.state, "active");
    assert_eq!(s.created_by, "irc:alice");
    assert_eq!(s.comment, "disk swap tonight");
    assert_eq!(s.matchers.len(), 2);
    assert!(s.matchers.contains(&matchers[0]), "{:?}", s.matchers);
    assert!(s.matchers.contains(&matchers[1]), "{:?}", s.matchers);
    let hour = (s.ends_at - s.starts_at).num_seconds();
    assert!((3590..=3600).contains(&hour), "silence lasts {hour} s");
    assert!(s.starts_at >= before - chrono::Duration::seconds(1));

    // An alert it matches is suppressed by it.
    am.post_alerts(&[disk_full()]).await;
    let alerts = am.alerts().await;
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0].status.state, "suppressed");
    assert_eq!(alerts[0].status.silenced_by, vec![id.clone()]);

    am.expire_silence(&id).await;
    let silences = am.silences().await;
    assert_eq!(silences.len(), 1, "an expired silence stays listed");
    assert_eq!(silences[0].id, id);
    assert_eq!(silences[0].status.state, "expired");
    assert!(silences[0].ends_at <= chrono::Utc::now());

    // With the silence gone the alert fires and is notified.
    let got = receiver.wait_for(1, WAIT).await;
    let p = got[0].payload();
    assert_eq!(p.status, "firing");
    assert_eq!(p.alerts[0].labels["alertname"], "DiskFull");
    let alerts = am.alerts().await;
    assert_eq!(alerts[0].status.state, "active");
    assert!(alerts[0].status.silenced_by.is_empty());
}

#[tokio::test]
async fn the_peer_relay_posts_a_webhook_body_into_the_channel() {
    let ircd = Ngircd::start(Throttle::Off).await;
    let mut watcher = IrcClient::connect(&ircd.addr(), &unique_nick("watch")).await;
    watcher.join("#ops").await;
    let nick = unique_nick("amrelay");
    let relay = IrcRelayPeer::start("127.0.0.1", ircd.port(), &nick, &["#ops"]).await;
    assert_eq!(relay.webhook_url("#ops"), format!("{}/ops", relay.url()));

    assert_eq!(relay.post_webhook("#ops", PAYLOAD_FIRING).await, 200);
    let m = watcher
        .expect_privmsg_from(&nick, "#ops", "DiskFull", WAIT)
        .await;
    assert_eq!(m.text(), "Alert DiskFull on db1:9100 is firing");

    // A body that is not JSON is refused, and nothing more is said.
    assert_eq!(relay.post_webhook("#ops", "not json").await, 422);
    let metrics = relay.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "irc_sent_msgs{ircchannel=\"#ops\"} 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn alertmanager_through_the_peer_relay_reaches_the_channel() {
    let ircd = Ngircd::start(Throttle::Off).await;
    let mut watcher = IrcClient::connect(&ircd.addr(), &unique_nick("watch")).await;
    watcher.join("#alerts").await;
    let nick = unique_nick("amrelay");
    let relay = IrcRelayPeer::start("127.0.0.1", ircd.port(), &nick, &["#alerts"]).await;
    let am = Alertmanager::start(&relay.webhook_url("#alerts"), None).await;

    let alert = disk_full();
    am.post_alerts(std::slice::from_ref(&alert)).await;
    watcher
        .expect_privmsg_from(
            &nick,
            "#alerts",
            "Alert DiskFull on db1:9100 is firing",
            WAIT,
        )
        .await;

    let since = watcher.received_len();
    am.resolve_alerts(std::slice::from_ref(&alert)).await;
    let resolved = watcher
        .next_matching(since, WAIT, |m| {
            m.command == "PRIVMSG" && m.is_message_from(&nick) && m.text().ends_with("is resolved")
        })
        .await;
    assert_eq!(
        resolved.map(|m| m.text().to_string()).as_deref(),
        Some("Alert DiskFull on db1:9100 is resolved"),
        "received:\n{}\n--- relay log ---\n{}\n--- alertmanager log ---\n{}",
        watcher.transcript(),
        relay.log(),
        am.log()
    );
}
