//! The alert relay against a real ngIRCd: notifications shaped exactly like the ones captured
//! from Alertmanager 0.25 (../shared/testbed/alertmanager/payload-*.json) are posted to the
//! real `shepherd serve`, which stores them, routes every alert and says it in the right
//! channels through the outbox — nothing lost when the IRC server goes away meanwhile.

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use shepherd_tests::gitlab::GitLabDouble;
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore};
use shepherd_tests::irc_client::{IrcClient, Message, joined};
use shepherd_tests::ircd::{Ngircd, Throttle};
use shepherd_tests::on_both_stores;
use shepherd_tests::proxy::Proxy;

const WAIT: Duration = Duration::from_secs(30);
const BOT: &str = "shepherd";
const TOKEN: &str = "am-token-1";
const API_TOKEN: &str = "api-token-1";

fn config(
    store: &TestStore,
    gitlab: &GitLabDouble,
    irc_port: u16,
    alerts_extra: &str,
) -> ShepherdConfig {
    let mut config = ShepherdConfig::new(store, gitlab);
    config.extra = format!(
        r##"[irc]
server = "127.0.0.1"
port = {irc_port}
tls = false
channels = ["#ops", "#db", "#alerts"]
flood_burst = 20
flood_rate = 100.0
ping_interval_secs = 5
reconnect_max_secs = 1

[alerts]
webhook_token_env = "TEST_AM_TOKEN"
webhook_username = "alertmanager"
default_targets = ["irc:#alerts"]
storm_threshold = 5
storm_shown = 3
{alerts_extra}

[[alerts.routes]]
matchers = ['severity=~"critical|page"']
targets = ["irc:#ops"]
continue = true

[[alerts.routes]]
matchers = ['team="db"']
targets = ["irc:#db"]
"##
    );
    config.env.push(("TEST_AM_TOKEN".into(), TOKEN.into()));
    config.env.push((
        "SHEPHERD_HTTP__API_TOKEN_ENV".into(),
        "TEST_API_TOKEN".into(),
    ));
    config.env.push(("TEST_API_TOKEN".into(), API_TOKEN.into()));
    config
}

fn alert(name: &str, status: &str, labels: &[(&str, &str)]) -> Value {
    let mut l = serde_json::Map::new();
    l.insert("alertname".into(), json!(name));
    l.insert("instance".into(), json!("db1:9100"));
    for (k, v) in labels {
        l.insert((*k).into(), json!(v));
    }
    json!({
        "status": status,
        "labels": l,
        "annotations": {"summary": format!("{name} is {status}"), "description": "from the test"},
        "startsAt": "2026-11-25T07:47:20Z",
        "endsAt": if status == "resolved" { "2026-11-25T08:00:00Z" } else { "0001-01-01T00:00:00Z" },
        "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=up",
        "fingerprint": format!("fp-{name}"),
    })
}

/// A notification shaped like Alertmanager's (version 4).
fn notification(status: &str, group: &str, alerts: Vec<Value>) -> Value {
    json!({
        "receiver": "shepherd",
        "status": status,
        "alerts": alerts,
        "groupLabels": {"alertname": group},
        "commonLabels": {"alertname": group},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:19093",
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{group}\"}}"),
        "truncatedAlerts": 0
    })
}

async fn post(bot: &Shepherd, auth: Option<String>, body: Vec<u8>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{}/hooks/alertmanager", bot.base_url()))
        .header("Content-Type", "application/json")
        .body(body);
    if let Some(a) = auth {
        req = req.header("Authorization", a);
    }
    let r = req.send().await.expect("shepherd answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn notify(bot: &Shepherd, body: &Value) -> (u16, Value) {
    post(
        bot,
        Some(format!("Bearer {TOKEN}")),
        serde_json::to_vec(body).expect("json"),
    )
    .await
}

/// The bot's lines in `channel`, from what a client received.
fn lines(msgs: &[Message], channel: &str) -> Vec<String> {
    msgs.iter()
        .filter(|m| {
            m.is_message_from(BOT) && m.param(0).is_some_and(|c| c.eq_ignore_ascii_case(channel))
        })
        .map(|m| m.text().to_string())
        .collect()
}

fn lines_in(human: &IrcClient, channel: &str) -> Vec<String> {
    lines(&human.received(), channel)
}

async fn human_in_every_channel(addr: &str) -> IrcClient {
    let mut human = IrcClient::connect(addr, "human").await;
    for c in ["#ops", "#db", "#alerts"] {
        human.join(c).await;
    }
    human
}

async fn wait_bot_joined(human: &IrcClient, bot: &Shepherd) {
    assert!(
        human.wait_for(WAIT, joined(BOT, "#alerts")).await,
        "the bot never joined:\n{}\n{}",
        human.transcript(),
        bot.stderr()
    );
}

async fn routed_alerts_reach_their_channels(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let human = human_in_every_channel(&server.addr()).await;
    let bot = Shepherd::serve(&config(&store, &gitlab, server.port(), "")).await;
    bot.wait_http(WAIT).await;
    wait_bot_joined(&human, &bot).await;

    let firing = notification(
        "firing",
        "Mixed",
        vec![
            alert(
                "DiskFull",
                "firing",
                &[("severity", "critical"), ("team", "db")],
            ),
            alert(
                "SlowQueries",
                "firing",
                &[("severity", "warning"), ("team", "db")],
            ),
            alert("CertExpiry", "firing", &[("severity", "info")]),
        ],
    );
    let (status, body) = notify(&bot, &firing).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "stored");
    assert!(
        human
            .wait_for(WAIT, |m| {
                lines(m, "#ops").len() == 1
                    && lines(m, "#db").len() == 2
                    && lines(m, "#alerts").len() == 1
            })
            .await,
        "{}\n{}",
        human.transcript(),
        bot.stderr()
    );
    let ops = lines_in(&human, "#ops");
    assert!(
        ops[0].starts_with("\u{2}\u{3}04[CRITICAL]\u{f} DiskFull on db1:9100: DiskFull is firing http://127.0.0.1:9090/graph"),
        "{:?}",
        ops[0]
    );
    assert!(
        ops[0].contains(
            "silence: http://127.0.0.1:19093/#/silences/new?filter=%7Balertname%3D%22DiskFull%22"
        ),
        "{:?}",
        ops[0]
    );
    let db = lines_in(&human, "#db");
    assert!(
        db[0].contains("DiskFull") && db[1].contains("\u{3}07[WARNING]\u{f} SlowQueries"),
        "{db:?}"
    );
    assert!(lines_in(&human, "#alerts")[0].contains("[INFO]\u{f} CertExpiry"));

    let resolved = notification(
        "resolved",
        "Mixed",
        vec![alert(
            "DiskFull",
            "resolved",
            &[("severity", "critical"), ("team", "db")],
        )],
    );
    assert_eq!(notify(&bot, &resolved).await.0, 200);
    assert!(
        human
            .wait_for(WAIT, |m| lines(m, "#ops").len() == 2
                && lines(m, "#db").len() == 3)
            .await,
        "{}",
        human.transcript()
    );
    assert!(
        lines_in(&human, "#ops")[1]
            .starts_with("\u{2}\u{3}03[RESOLVED]\u{f} DiskFull on db1:9100: DiskFull is resolved"),
        "{:?}",
        lines_in(&human, "#ops")
    );
    assert_eq!(
        bot.metric("shepherd_alerts_total{status=\"firing\"}").await,
        Some(3.0)
    );
    assert_eq!(
        bot.metric("shepherd_alerts_total{status=\"resolved\"}")
            .await,
        Some(1.0)
    );
    // Delivered means acknowledged by the server (its PONG), which may come after the human
    // saw the lines.
    assert!(
        store
            .wait_count(
                "SELECT COUNT(*) FROM outbox WHERE frontend = 'irc' AND delivered_at IS NULL",
                0,
                WAIT
            )
            .await
    );
    let delivered = bot
        .metric("shepherd_outbox_delivered_total{frontend=\"irc\"}")
        .await
        .unwrap_or(0.0);
    assert!(delivered >= 6.0, "{delivered}");
}
on_both_stores!(routing, routed_alerts_reach_their_channels);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_are_shown_once_and_storms_are_summarised() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let human = human_in_every_channel(&server.addr()).await;
    let bot = Shepherd::serve(&config(&store, &gitlab, server.port(), "")).await;
    bot.wait_http(WAIT).await;
    wait_bot_joined(&human, &bot).await;

    let a = alert("DiskFull", "firing", &[("severity", "info")]);
    let b = alert("DiskSlow", "firing", &[("severity", "info")]);
    let first = notification("firing", "Disk", vec![a.clone(), b.clone()]);
    assert_eq!(notify(&bot, &first).await.1["status"], "stored");
    // The same body again (a lost answer): acknowledged, not stored.
    assert_eq!(notify(&bot, &first).await.1["status"], "duplicate");
    // The same content in another order (Alertmanager's repeat_interval): stored, not shown.
    let repeat = notification("firing", "Disk", vec![b.clone(), a.clone()]);
    assert_eq!(notify(&bot, &repeat).await.1["status"], "stored");
    // A real change is shown.
    let more = notification(
        "firing",
        "Disk",
        vec![
            a.clone(),
            b.clone(),
            alert("DiskGone", "firing", &[("severity", "info")]),
        ],
    );
    assert_eq!(notify(&bot, &more).await.1["status"], "stored");
    assert!(
        store
            .wait_count(
                "SELECT COUNT(*) FROM requests WHERE kind = 'alert-notification' AND state = 'done'",
                3,
                WAIT
            )
            .await
    );
    assert!(
        human
            .wait_for(WAIT, |m| lines(m, "#alerts").len() == 5)
            .await,
        "{}",
        human.transcript()
    );
    assert_eq!(
        bot.metric("shepherd_alert_notifications_total{outcome=\"repeat\"}")
            .await,
        Some(1.0)
    );

    // 10,000 alerts in one notification: one summary line and the first three.
    let storm: Vec<Value> = (0..10_000)
        .map(|i| {
            alert(
                &format!("Storm{i:05}"),
                "firing",
                &[("severity", "critical")],
            )
        })
        .collect();
    let (status, body) = notify(&bot, &notification("firing", "Storm", storm)).await;
    assert_eq!(status, 200, "{body}");
    assert!(
        human.wait_for(WAIT, |m| lines(m, "#ops").len() == 4).await,
        "{}",
        human.transcript()
    );
    let ops = lines_in(&human, "#ops");
    assert!(
        ops[0].contains(
            "alert storm in {alertname=Storm}: 10000 firing, 0 resolved; the first 3 follow."
        ),
        "{:?}",
        ops[0]
    );
    assert!(ops[1].contains("Storm00000") && ops[3].contains("Storm00002"));
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM outbox WHERE frontend = 'irc' AND room = '#ops'")
            .await,
        4,
        "nothing else waits for #ops"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_notifications_are_refused_and_nothing_is_stored() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let bot = Shepherd::serve(&config(
        &store,
        &gitlab,
        server.port(),
        "max_body_bytes = 65536",
    ))
    .await;
    bot.wait_http(WAIT).await;
    let valid = serde_json::to_vec(&notification(
        "firing",
        "Disk",
        vec![alert("DiskFull", "firing", &[("severity", "critical")])],
    ))
    .expect("json");

    assert_eq!(post(&bot, None, valid.clone()).await.0, 401);
    assert_eq!(
        post(&bot, Some("Bearer wrong".into()), valid.clone())
            .await
            .0,
        401
    );
    let basic = |user: &str, pass: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
        )
    };
    assert_eq!(
        post(&bot, Some(basic("alertmanager", "wrong")), valid.clone())
            .await
            .0,
        401
    );
    assert_eq!(
        post(&bot, Some(basic("mallory", TOKEN)), valid.clone())
            .await
            .0,
        401
    );

    let auth = || Some(format!("Bearer {TOKEN}"));
    let truncated = valid[..valid.len() - 10].to_vec();
    let (status, body) = post(&bot, auth(), truncated).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap_or("").contains("not JSON"),
        "{body}"
    );
    let mut v3 = serde_json::from_slice::<Value>(&valid).expect("json");
    v3["version"] = json!("3");
    let (status, body) = post(&bot, auth(), serde_json::to_vec(&v3).expect("json")).await;
    assert_eq!(status, 400);
    assert!(
        body["error"]
            .as_str()
            .unwrap_or("")
            .contains("unsupported notification version \"3\""),
        "{body}"
    );
    let (status, _) = post(
        &bot,
        auth(),
        br#"{"version":"4","status":"firing"}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400, "no groupKey, no alerts");
    let huge: Vec<Value> = (0..1000)
        .map(|i| alert(&format!("A{i}"), "firing", &[]))
        .collect();
    let (status, _) = post(
        &bot,
        auth(),
        serde_json::to_vec(&notification("firing", "Big", huge)).expect("json"),
    )
    .await;
    assert_eq!(status, 413);
    assert_eq!(
        store.count("SELECT COUNT(*) FROM requests").await,
        0,
        "nothing stored"
    );

    // The right basic auth works.
    assert_eq!(
        post(&bot, Some(basic("alertmanager", TOKEN)), valid)
            .await
            .0,
        200
    );
    assert_eq!(
        bot.metric("shepherd_alert_notifications_total{outcome=\"unauthorized\"}")
            .await,
        Some(4.0)
    );
}

/// IRC goes away while 200 alerts arrive: all 200 are said after it is back, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_survive_an_irc_restart_in_order() {
    const N: usize = 200;
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let mut server = Ngircd::start(Throttle::Off).await;
    let proxy = Proxy::start(&server.addr()).await;
    let human = human_in_every_channel(&server.addr()).await;
    let bot = Shepherd::serve(&config(&store, &gitlab, proxy.port(), "")).await;
    bot.wait_http(WAIT).await;
    wait_bot_joined(&human, &bot).await;

    let body = |i: usize| {
        notification(
            "firing",
            &format!("G{i:03}"),
            vec![alert(
                &format!("Alert{i:03}"),
                "firing",
                &[("severity", "info")],
            )],
        )
    };
    for i in 0..N / 2 {
        assert_eq!(notify(&bot, &body(i)).await.0, 200);
    }
    proxy.shut();
    server.kill().await;
    for i in N / 2..N {
        assert_eq!(
            notify(&bot, &body(i)).await.0,
            200,
            "stored while IRC is down"
        );
    }
    server.restart().await;
    let human = human_in_every_channel(&server.addr()).await;
    proxy.open();
    wait_bot_joined(&human, &bot).await;

    let pool = store.connect().await;
    assert!(
        store
            .wait_count(
                "SELECT COUNT(*) FROM outbox WHERE frontend = 'irc' AND delivered_at IS NULL",
                0,
                WAIT
            )
            .await,
        "everything delivered:\n{}",
        bot.stderr()
    );
    // What the bot said before the restart went to the first session; the rest must arrive
    // now, each once, in the order the alerts came.
    let delivered_before: Vec<String> = sqlx::query_scalar(
        "SELECT body FROM outbox WHERE frontend = 'irc' ORDER BY created_at, id",
    )
    .fetch_all(&pool)
    .await
    .expect("outbox");
    assert_eq!(delivered_before.len(), N, "one line per alert, stored once");
    let got = lines_in(&human, "#alerts");
    let names: Vec<usize> = got
        .iter()
        .filter_map(|l| {
            l.split("Alert")
                .nth(1)
                .and_then(|rest| rest.get(..3))
                .and_then(|n| n.parse().ok())
        })
        .collect();
    assert!(
        !names.is_empty(),
        "lines after the restart: {}",
        human.transcript()
    );
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(names, sorted, "in order, none twice");
    assert_eq!(*names.last().unwrap_or(&0), N - 1, "up to the last alert");
    assert!(
        names.first().is_some_and(|first| *first <= N / 2),
        "everything from the cut on: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_services_say_things_in_rooms() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let human = human_in_every_channel(&server.addr()).await;
    let bot = Shepherd::serve(&config(&store, &gitlab, server.port(), "")).await;
    bot.wait_http(WAIT).await;
    wait_bot_joined(&human, &bot).await;
    let client = reqwest::Client::new();
    let say = |token: Option<&str>, key: Option<&str>, body: Value| {
        let mut r = client
            .post(format!("{}/api/v1/say", bot.base_url()))
            .json(&body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        r.send()
    };
    let ok = json!({"target": "irc:#ops", "text": "deploy of web 1.2 finished"});
    assert_eq!(
        say(None, None, ok.clone()).await.expect("answer").status(),
        401
    );
    assert_eq!(
        say(Some("wrong"), None, ok.clone())
            .await
            .expect("answer")
            .status(),
        401
    );
    let bad = say(
        Some(API_TOKEN),
        None,
        json!({"target": "matrix:!x:y", "text": "hi"}),
    )
    .await
    .expect("answer");
    assert_eq!(bad.status(), 400, "matrix is not enabled here");
    let empty = say(
        Some(API_TOKEN),
        None,
        json!({"target": "irc:#ops", "text": "  "}),
    )
    .await
    .expect("answer");
    assert_eq!(empty.status(), 400);
    let unknown_field = say(
        Some(API_TOKEN),
        None,
        json!({"room": "irc:#ops", "text": "x"}),
    )
    .await
    .expect("answer");
    assert_eq!(unknown_field.status(), 400);
    for _ in 0..2 {
        let r = say(Some(API_TOKEN), Some("deploy-42"), ok.clone())
            .await
            .expect("answer");
        assert_eq!(r.status(), 202);
    }
    assert!(human.wait_for(WAIT, |m| !lines(m, "#ops").is_empty()).await);
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM outbox WHERE frontend = 'irc' AND room = '#ops'")
            .await,
        1,
        "the retried call is said once"
    );
    assert_eq!(lines_in(&human, "#ops"), ["deploy of web 1.2 finished"]);
}

/// The real Alertmanager (group_wait 1s) posts to shepherd: each alert reaches the channel its
/// route names, as the template says, and its resolution follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_alertmanager_reaches_the_right_channels() {
    use shepherd_tests::alertmanager::{AlertSpec, Alertmanager};
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let human = human_in_every_channel(&server.addr()).await;
    let bot = Shepherd::serve(&config(&store, &gitlab, server.port(), "")).await;
    bot.wait_http(WAIT).await;
    wait_bot_joined(&human, &bot).await;
    let am = Alertmanager::start(
        &format!("{}/hooks/alertmanager", bot.base_url()),
        Some(TOKEN),
    )
    .await;

    let disk = AlertSpec::new("DiskFull")
        .label("severity", "critical")
        .label("instance", "db1:9100")
        .annotation("summary", "disk 95% full");
    let slow = AlertSpec::new("SlowQueries")
        .label("severity", "warning")
        .label("team", "db");
    am.post_alerts(&[disk.clone(), slow.clone()]).await;
    assert!(
        human
            .wait_for(WAIT, |m| lines(m, "#ops").len() == 1
                && lines(m, "#db").len() == 1)
            .await,
        "{}\n{}",
        human.transcript(),
        bot.stderr()
    );
    let ops = lines_in(&human, "#ops");
    assert!(
        ops[0].starts_with("\u{2}\u{3}04[CRITICAL]\u{f} DiskFull on db1:9100: disk 95% full"),
        "{ops:?}"
    );
    assert!(
        ops[0].contains(&format!("silence: {}/#/silences/new?filter=", am.url())),
        "{ops:?}"
    );
    assert!(lines_in(&human, "#db")[0].contains("[WARNING]\u{f} SlowQueries"));

    am.resolve_alerts(&[disk]).await;
    assert!(
        human.wait_for(WAIT, |m| lines(m, "#ops").len() == 2).await,
        "{}\n{}",
        human.transcript(),
        bot.stderr()
    );
    assert!(
        lines_in(&human, "#ops")[1].contains("[RESOLVED]\u{f} DiskFull on db1:9100"),
        "{:?}",
        lines_in(&human, "#ops")
    );
    assert_eq!(
        lines_in(&human, "#alerts").len(),
        0,
        "nothing fell to the default"
    );
}

/// `alerts`, `silence` and `unsilence` from IRC, against the real Alertmanager's API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_from_irc_reach_alertmanager() {
    use shepherd_tests::alertmanager::{AlertSpec, Alertmanager};
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let mut human = human_in_every_channel(&server.addr()).await;
    let mut config = config(&store, &gitlab, server.port(), "");
    let am = Alertmanager::start(
        &format!("http://127.0.0.1:{}/hooks/alertmanager", config.http_port),
        Some(TOKEN),
    )
    .await;
    // ngIRCd has no services: the human is irc-unidentified:human, so open the commands.
    config.extra = config.extra.replace(
        "[alerts]\n",
        &format!("[alerts]\nalertmanager_url = \"{}\"\n", am.url()),
    );
    config
        .extra
        .push_str("\n[permissions]\nsilence = [\"*\"]\nunsilence = [\"*\"]\n");
    let bot = Shepherd::serve(&config).await;
    bot.wait_http(WAIT).await;
    wait_bot_joined(&human, &bot).await;

    am.post_alerts(&[
        AlertSpec::new("DiskFull").label("severity", "critical"),
        AlertSpec::new("CpuHigh").label("severity", "critical"),
    ])
    .await;
    assert!(
        human.wait_for(WAIT, |m| lines(m, "#ops").len() == 2).await,
        "{}",
        human.transcript()
    );

    human
        .privmsg(
            "#ops",
            "shepherd: silence alertname=DiskFull for 1h disk swap",
        )
        .await;
    let reply = human
        .expect_privmsg_from(BOT, "#ops", "silenced alertname=\"DiskFull\" until", WAIT)
        .await;
    let id = reply
        .text()
        .split("silence ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the silence id")
        .to_string();
    let silences = am.silences().await;
    let s = silences
        .iter()
        .find(|s| s.id == id)
        .expect("listed by Alertmanager");
    assert_eq!(s.created_by, "irc-unidentified:human");
    assert!(
        s.comment.starts_with("disk swap [shepherd:"),
        "{}",
        s.comment
    );
    assert_eq!(s.status.state, "active");
    let lasts = s.ends_at - s.starts_at;
    assert!((3590..=3610).contains(&lasts.num_seconds()), "{lasts:?}");

    human
        .privmsg("#ops", "shepherd: alerts severity=critical")
        .await;
    let listed = human
        .expect_privmsg_from(BOT, "#ops", "1 alert(s) firing", WAIT)
        .await;
    assert!(
        !listed.text().contains("DiskFull"),
        "silenced alerts are not listed"
    );
    assert!(
        human
            .wait_for(WAIT, |m| lines(m, "#ops")
                .iter()
                .any(|l| l.contains("[CRITICAL] CpuHigh")))
            .await,
        "{}",
        human.transcript()
    );

    human
        .privmsg("#ops", &format!("shepherd: unsilence {id}"))
        .await;
    human
        .expect_privmsg_from(BOT, "#ops", &format!("silence {id} ended"), WAIT)
        .await;
    let expired = am.silences().await;
    assert_eq!(
        expired
            .iter()
            .find(|s| s.id == id)
            .map(|s| s.status.state.as_str()),
        Some("expired")
    );

    // Refusals: a silence that would match everything, an unknown silence.
    human
        .privmsg("#ops", "shepherd: silence alertname=~\".*\" for 1h")
        .await;
    human
        .expect_privmsg_from(BOT, "#ops", "would silence everything", WAIT)
        .await;
    human
        .privmsg(
            "#ops",
            "shepherd: unsilence 2b3c4d5e-0000-4000-8000-000000000000",
        )
        .await;
    human
        .expect_privmsg_from(BOT, "#ops", "has no silence 2b3c4d5e", WAIT)
        .await;
    assert_eq!(am.silences().await.len(), 1, "no other silence was created");
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM audit WHERE command IN ('silence', 'unsilence') AND outcome = 'done'")
            .await,
        2
    );
}

/// `lines = "group"`: one line per notification and room, however many alerts it carries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_lines_say_a_notification_once_per_room() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let human = human_in_every_channel(&server.addr()).await;
    let bot = Shepherd::serve(&config(&store, &gitlab, server.port(), "lines = \"group\"")).await;
    bot.wait_http(WAIT).await;
    wait_bot_joined(&human, &bot).await;
    let n = notification(
        "firing",
        "Disk",
        vec![
            alert(
                "DiskFull",
                "firing",
                &[("severity", "warning"), ("team", "db")],
            ),
            alert(
                "DiskSlow",
                "firing",
                &[("severity", "critical"), ("team", "db")],
            ),
            alert(
                "DiskGone",
                "firing",
                &[("severity", "warning"), ("team", "db")],
            ),
        ],
    );
    assert_eq!(notify(&bot, &n).await.0, 200);
    assert!(
        human
            .wait_for(WAIT, |m| lines(m, "#db").len() == 1
                && lines(m, "#ops").len() == 1)
            .await,
        "{}",
        human.transcript()
    );
    assert_eq!(
        lines_in(&human, "#db"),
        [
            "\u{2}\u{3}04[CRITICAL]\u{f} 3 alert(s) firing in {alertname=Disk}: DiskFull, DiskSlow, DiskGone http://127.0.0.1:19093/#/alerts"
        ]
    );
    assert!(
        lines_in(&human, "#ops")[0].contains("1 alert(s) firing in {alertname=Disk}: DiskSlow")
    );
}
