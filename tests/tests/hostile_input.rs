//! Hostile input: nothing anyone sends can silence, flood or crash shepherd. The real
//! `shepherd serve` against a real ngIRCd (stock flood limits where they matter), the GitLab
//! double, and raw TCP clients playing a slowloris.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shepherd_tests::gitlab::{AutoFinish, FaultKind, GitLabDouble, Route, RouteMatcher};
use shepherd_tests::harness::{
    Backend, Shepherd, ShepherdConfig, TestStore, metric_value, shepherd_bin,
};
use shepherd_tests::irc_client::{IrcClient, human_and_bot};
use shepherd_tests::ircd::{Ngircd, Throttle};
use shepherd_tests::on_both_stores;
use shepherd_tests::proxy::Proxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const WAIT: Duration = Duration::from_secs(30);
const BOT: &str = "shepherd";
const AM_TOKEN: &str = "hostile-am-token-1";
const API_TOKEN: &str = "hostile-api-token-1";
const PROJECT: &str = "cki-project/pipeline-definition";

/// `[irc]` (joining `channels`), `[alerts]` routing everything to #ops, and the say API.
fn config(
    store: &TestStore,
    gitlab: &GitLabDouble,
    irc_port: u16,
    channels: &str,
    irc_extra: &str,
) -> ShepherdConfig {
    let mut config = ShepherdConfig::new(store, gitlab);
    config.extra = format!(
        r##"[irc]
server = "127.0.0.1"
port = {irc_port}
tls = false
channels = [{channels}]
ping_interval_secs = 5
reconnect_max_secs = 1
{irc_extra}

[alerts]
webhook_token_env = "TEST_AM_TOKEN"
default_targets = ["irc:#ops"]

[permissions]
retrigger = ["*"]
"##
    );
    config.env.push(("TEST_AM_TOKEN".into(), AM_TOKEN.into()));
    config.env.push((
        "SHEPHERD_HTTP__API_TOKEN_ENV".into(),
        "TEST_API_TOKEN".into(),
    ));
    config.env.push(("TEST_API_TOKEN".into(), API_TOKEN.into()));
    config
}

/// The bot's lines (PRIVMSG or NOTICE from any of its nicks) to `target`.
fn bot_lines(human: &IrcClient, target: &str) -> Vec<String> {
    human
        .received()
        .iter()
        .filter(|m| {
            matches!(m.command.as_str(), "PRIVMSG" | "NOTICE")
                && m.nick
                    .as_deref()
                    .is_some_and(|n| n.to_ascii_lowercase().starts_with(BOT))
                && m.param(0).is_some_and(|t| t.eq_ignore_ascii_case(target))
        })
        .map(|m| m.text().to_string())
        .collect()
}

async fn wait_line(human: &IrcClient, target: &str, needle: &str, timeout: Duration) -> String {
    let found = human
        .wait_for(timeout, |msgs| {
            msgs.iter().any(|m| {
                matches!(m.command.as_str(), "PRIVMSG" | "NOTICE")
                    && m.nick
                        .as_deref()
                        .is_some_and(|n| n.to_ascii_lowercase().starts_with(BOT))
                    && m.param(0).is_some_and(|t| t.eq_ignore_ascii_case(target))
                    && m.text().contains(needle)
            })
        })
        .await;
    assert!(
        found,
        "no line with {needle:?} to {target} within {timeout:?}:\n{}",
        human.transcript()
    );
    bot_lines(human, target)
        .into_iter()
        .find(|l| l.contains(needle))
        .unwrap_or_default()
}

async fn say(bot: &Shepherd, target: &str, text: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/say", bot.base_url()))
        .bearer_auth(API_TOKEN)
        .json(&json!({"target": target, "text": text}))
        .send()
        .await
        .expect("shepherd answers");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// An Alertmanager notification (version 4) with one firing alert.
fn notification(name: &str, summary: &str) -> Value {
    json!({
        "receiver": "shepherd",
        "status": "firing",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": name, "severity": "critical", "instance": "db1:9100"},
            "annotations": {"summary": summary},
            "startsAt": "2026-11-25T07:47:20Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:9090/graph",
            "fingerprint": format!("fp-{name}"),
        }],
        "groupLabels": {"alertname": name},
        "commonLabels": {"alertname": name},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:19093",
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"{name}\"}}"),
        "truncatedAlerts": 0
    })
}

async fn notify(bot: &Shepherd, body: &Value) -> u16 {
    reqwest::Client::new()
        .post(format!("{}/hooks/alertmanager", bot.base_url()))
        .bearer_auth(AM_TOKEN)
        .json(body)
        .send()
        .await
        .expect("shepherd answers")
        .status()
        .as_u16()
}

/// No control character but the mIRC formatting codes.
fn clean(line: &str) -> bool {
    line.chars().all(|c| {
        !c.is_control()
            || matches!(
                c,
                '\u{02}'
                    | '\u{03}'
                    | '\u{04}'
                    | '\u{0f}'
                    | '\u{11}'
                    | '\u{16}'
                    | '\u{1d}'
                    | '\u{1e}'
                    | '\u{1f}'
            )
    })
}

fn assert_never_reconnected(bot: &Shepherd, metrics: &str) {
    assert_eq!(
        metric_value(metrics, "shepherd_irc_reconnects_total"),
        Some(0.0),
        "{}",
        bot.stderr()
    );
    assert!(
        !bot.stderr().contains("irc: disconnected"),
        "{}",
        bot.stderr()
    );
}

/// NUL, CR, LF and other control characters in say text, an alert summary, a GitLab job name
/// that reaches a report, and a retrigger override typed on IRC: every line arrives made safe,
/// the lines after it arrive, and the bot never reconnects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_from_every_source_reach_irc_made_safe() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let old = gitlab.add_pipeline(PROJECT, "main", "success", &[]);
    gitlab.set_auto_finish(Some(AutoFinish::failed_after_polls(
        1,
        1,
        "build\0\r\nQUIT :pwned\u{1}VERSION\u{1}",
    )));
    let server = Ngircd::start(Throttle::Off).await;
    let config = config(
        &store,
        &gitlab,
        server.port(),
        "\"#ops\"",
        "flood_burst = 20\nflood_rate = 100.0\nmax_lines_per_message = 30",
    );
    let (mut human, bot) = human_and_bot(&config, &server.addr(), &["#ops"]).await;

    // `say` text from another service.
    let (status, _) = say(
        &bot,
        "irc:#ops",
        "say-1 a\0b\rsay-2 c\r\nsay-3 d\u{1}ACTION e\u{1b}[2J f\u{7}g\u{7f}",
    )
    .await;
    assert_eq!(status, 202);
    let l1 = wait_line(&human, "#ops", "say-1", WAIT).await;
    assert_eq!(l1, "say-1 a\u{2400}b");
    wait_line(&human, "#ops", "say-2 c", WAIT).await;
    let l3 = wait_line(&human, "#ops", "say-3", WAIT).await;
    assert_eq!(l3, "say-3 d\u{2401}ACTION e\u{241b}[2J f\u{2407}g\u{2421}");

    // An alert summary from a monitored system.
    assert_eq!(
        notify(&bot, &notification("DiskFull", "alert-1 x\0y\r\nalert-2 z")).await,
        200
    );
    let alert = wait_line(&human, "#ops", "alert-1", WAIT).await;
    // The alert template keeps an alert on one line: its CR LF became a space, the NUL a stand-in.
    assert!(
        alert.contains("alert-1 x\u{2400}y") && alert.contains("alert-2 z"),
        "{alert}"
    );

    // An override typed on IRC with a CTCP delimiter, an ESC and a bell in it, and a quoted
    // one whose escape makes a newline: the reply echoes them, made safe. The pipeline fails
    // in a job whose name carries NUL, CR LF and a CTCP request: the report names it, made safe.
    human
        .privmsg(
            "#ops",
            &format!(
                "{BOT}: retrigger {} NOTE=a\u{1}b\u{1b}c\u{7} LINES=\"one\\nQUIT :bye\"",
                old.web_url
            ),
        )
        .await;
    let reply = wait_line(&human, "#ops", "retriggered pipeline", WAIT).await;
    let created = gitlab.pipelines_created();
    assert_eq!(created.len(), 1, "{}", human.transcript());
    assert_eq!(created[0].variable("NOTE"), Some("a\u{1}b\u{1b}c\u{7}"));
    assert_eq!(created[0].variable("LINES"), Some("one\nQUIT :bye"));
    let report = wait_line(&human, "#ops", "finished: failed", WAIT).await;
    assert!(report.contains("build\u{2400}"), "{report}");

    // A message of a hundred lines takes max_lines_per_message (30) lines, the last saying so.
    let long: String = (0..100).map(|i| format!("long-{i:03}\n")).collect();
    assert_eq!(say(&bot, "irc:#ops", &long).await.0, 202);
    let note = wait_line(&human, "#ops", "more lines not shown", WAIT).await;
    assert_eq!(note, "… (71 more lines not shown)");
    let shown = bot_lines(&human, "#ops")
        .iter()
        .filter(|l| l.starts_with("long-"))
        .count();
    assert_eq!(shown, 29);

    // The line after all of that arrives, and nothing made the bot reconnect or quit.
    let (status, _) = say(&bot, "irc:#ops", "after-all").await;
    assert_eq!(status, 202);
    wait_line(&human, "#ops", "after-all", WAIT).await;
    let all = bot_lines(&human, "#ops");
    for line in &all {
        assert!(clean(line), "a control character reached IRC: {line:?}");
    }
    assert!(
        all.iter()
            .any(|l| l.contains("QUIT :bye") || l.contains("QUIT :pwned")),
        "the would-be commands arrive as text: {all:?}\n{reply}"
    );
    let m = bot.metrics_text().await;
    assert_never_reconnected(&bot, &m);
    assert_eq!(metric_value(&m, "shepherd_irc_connected"), Some(1.0));
    human.quit().await;
}

/// 300 junk lines in 10 s from one nick, at the safe default pacing (4 lines, then 1 a second):
/// at most the limit's worth of replies plus one "slow down", and a bystander's ping is
/// answered within seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_junk_flood_gets_the_limit_and_one_slow_down_and_a_bystander_is_answered() {
    const LIMIT: u32 = 10;
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let mut config = config(&store, &gitlab, server.port(), "\"#ops\"", "");
    config.rate_limits = format!("per_identity_per_minute = {LIMIT}");
    let (human, bot) = human_and_bot(&config, &server.addr(), &["#ops"]).await;
    let mut flooder = IrcClient::connect(&server.addr(), "mallory").await;
    flooder.join("#ops").await;
    let mut bystander = IrcClient::connect(&server.addr(), "bob").await;
    bystander.join("#ops").await;

    let started = Instant::now();
    let junk = [
        "!xyzzy",
        "!retrigger",
        "shepherd: \"unclosed",
        "!help nope nope",
        "!silence",
    ];
    let mut tick = tokio::time::interval(Duration::from_millis(1000));
    for second in 0..10 {
        tick.tick().await;
        let batch: String = (0..30)
            .map(|i| format!("PRIVMSG #ops :{} {second}-{i}\r\n", junk[i % junk.len()]))
            .collect();
        flooder.send_bytes(batch.as_bytes()).await;
        if second == 1 {
            bystander.privmsg("#ops", "!ping").await;
        }
    }
    // The bystander is answered while the flooder's replies are still being paced out.
    // At most one round of the flooder's replies (4 lines at 1 a second) comes first.
    let pong = bystander
        .next_matching(0, Duration::from_secs(10), |m| {
            m.is_message_from(BOT) && m.text() == "bob: pong"
        })
        .await;
    assert!(
        pong.is_some(),
        "the bystander's ping was not answered:\n{}",
        bystander.transcript()
    );
    let flood_secs = started.elapsed().as_secs_f64();

    // Every line has been handled and every reply delivered.
    let handled = |m: &str| {
        m.lines()
            .filter(|l| l.starts_with("shepherd_commands_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>()
    };
    let deadline = Instant::now() + WAIT * 2;
    loop {
        let m = bot.metrics_text().await;
        let pending = store
            .count("SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL")
            .await;
        if handled(&m) >= 301.0 && pending == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "not all handled: {m}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let to_flooder: Vec<String> = bot_lines(&human, "#ops")
        .into_iter()
        .filter(|l| l.starts_with("mallory: "))
        .collect();
    let slow_downs = to_flooder
        .iter()
        .filter(|l| l.contains("slow down"))
        .count();
    assert_eq!(slow_downs, 1, "{to_flooder:#?}");
    // The bucket holds LIMIT and refills LIMIT a minute while the flood goes on.
    let allowed = f64::from(LIMIT) + (flood_secs / 60.0 * f64::from(LIMIT)).ceil() + 1.0;
    assert!(
        (to_flooder.len() - slow_downs) as f64 <= allowed,
        "{} replies to 300 junk lines (allowed {allowed}): {to_flooder:#?}",
        to_flooder.len()
    );
    let m = bot.metrics_text().await;
    assert!(
        metric_value(&m, "shepherd_rate_limited_total{scope=\"identity\"}").unwrap_or(0.0)
            >= 300.0 - allowed,
        "{m}"
    );
    flooder.quit().await;
    bystander.quit().await;
}

/// A CTCP flood on stock ngIRCd limits: a few answers, paced; the bot stays connected and a
/// bystander's ping is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ctcp_flood_is_answered_within_its_limit_and_holds_nothing_back() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Stock).await;
    // The bot's default pacing (4 lines, then one a second) and CTCP limit (6 a minute).
    let config = config(&store, &gitlab, server.port(), "\"#ops\"", "");
    let (_human, bot) = human_and_bot(&config, &server.addr(), &["#ops"]).await;
    let mut flooders = Vec::new();
    for i in 0..6 {
        let mut f = IrcClient::connect(&server.addr(), &format!("ctcp{i}")).await;
        f.join("#ops").await;
        flooders.push(f);
    }
    let mut bystander = IrcClient::connect(&server.addr(), "bob").await;
    bystander.join("#ops").await;

    let started = Instant::now();
    for f in &mut flooders {
        let burst: String = (0..20)
            .map(|i| {
                if i % 2 == 0 {
                    "PRIVMSG shepherd :\u{1}VERSION\u{1}\r\n".to_string()
                } else {
                    format!("PRIVMSG #ops :\u{1}PING {i}\u{1}\r\n")
                }
            })
            .collect();
        f.send_bytes(burst.as_bytes()).await;
    }
    bystander.privmsg("#ops", "!ping").await;
    let pong = bystander
        .next_matching(0, Duration::from_secs(15), |m| {
            m.is_message_from(BOT) && m.text() == "bob: pong"
        })
        .await;
    assert!(
        pong.is_some(),
        "the bystander's ping was held up:\n{}",
        bystander.transcript()
    );

    // Wait until the server has let all 120 requests through to the bot.
    let seen = |m: &str| {
        ["answered", "limited", "ignored"]
            .iter()
            .filter_map(|o| metric_value(m, &format!("shepherd_irc_ctcp_total{{outcome=\"{o}\"}}")))
            .sum::<f64>()
    };
    let deadline = Instant::now() + WAIT * 2;
    let m = loop {
        let m = bot.metrics_text().await;
        if seen(&m) >= 120.0 {
            break m;
        }
        assert!(Instant::now() < deadline, "{m}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let answered = metric_value(&m, "shepherd_irc_ctcp_total{outcome=\"answered\"}").unwrap_or(0.0);
    // A burst of 3, then 6 a minute.
    let allowed = 3.0 + (started.elapsed().as_secs_f64() / 10.0).ceil() + 1.0;
    assert!(
        answered >= 1.0 && answered <= allowed,
        "{answered} answered:\n{m}"
    );
    // What the flooders got back is what the metric says, and each answer went to its sender.
    let mut replies = 0;
    for f in &flooders {
        for msg in f.privmsgs_from(BOT) {
            if msg.param(0).is_some_and(|t| t.eq_ignore_ascii_case("#ops")) {
                continue; // the channel's conversation (the bystander's pong)
            }
            assert_eq!(msg.command, "NOTICE", "{}", msg.raw);
            assert!(msg.text().starts_with('\u{1}'), "{}", msg.raw);
            assert!(
                msg.param(0)
                    .is_some_and(|t| t.eq_ignore_ascii_case(&f.nick()))
            );
            replies += 1;
        }
    }
    assert!(replies as f64 <= answered, "{replies} > {answered}");
    assert_never_reconnected(&bot, &m);
    for f in flooders {
        f.quit().await;
    }
}

/// A message the server refuses (a moderated channel): tried again a bounded number of times,
/// then parked — kept, counted, listed — and the messages behind it go on.
async fn refused_message_is_parked(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let config = config(
        &store,
        &gitlab,
        server.port(),
        "\"#ops\", \"#quiet\"",
        "flood_burst = 20\nflood_rate = 100.0\nmax_send_attempts = 3",
    );
    let (mut human, bot) = human_and_bot(&config, &server.addr(), &["#ops", "#quiet"]).await;
    human.send_raw("MODE #quiet +m").await;
    assert!(
        human
            .wait_for(WAIT, |msgs| msgs
                .iter()
                .any(|m| m.command == "MODE" && m.param(1) == Some("+m")))
            .await
    );

    assert_eq!(say(&bot, "irc:#quiet", "refused-1").await.0, 202);
    assert_eq!(say(&bot, "irc:#ops", "after-1").await.0, 202);
    wait_line(&human, "#ops", "after-1", WAIT).await;
    assert!(
        store
            .wait_count(
                "SELECT COUNT(*) FROM outbox WHERE body = 'refused-1' AND parked_at IS NOT NULL AND attempts = 3",
                1,
                WAIT
            )
            .await,
        "{}",
        bot.stderr()
    );
    let m = bot.metrics_text().await;
    assert_eq!(
        metric_value(&m, "shepherd_outbox_parked_total{frontend=\"irc\"}"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric_value(&m, "shepherd_irc_messages_refused_total"),
        Some(3.0),
        "{m}"
    );
    assert!(
        bot.stderr().contains("giving up on a message"),
        "{}",
        bot.stderr()
    );

    // The room takes messages again once the server does.
    human.send_raw("MODE #quiet -m").await;
    assert!(
        human
            .wait_for(WAIT, |msgs| msgs
                .iter()
                .any(|m| m.command == "MODE" && m.param(1) == Some("-m")))
            .await
    );
    assert_eq!(say(&bot, "irc:#quiet", "heard-2").await.0, 202);
    wait_line(&human, "#quiet", "heard-2", WAIT).await;
    assert!(
        !bot_lines(&human, "#quiet")
            .iter()
            .any(|l| l.contains("refused-1"))
    );

    // `shepherd outbox parked` lists it with the server's reason.
    let out = tokio::process::Command::new(shepherd_bin())
        .args(["outbox", "parked", "--config"])
        .arg(bot.dir.path().join("shepherd.toml"))
        .env("TEST_GITLAB_TOKEN", gitlab.token())
        .env_remove("SHEPHERD_CONFIG")
        .env_remove("SHEPHERD_BIN")
        .output()
        .await
        .expect("run shepherd outbox parked");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{listed}");
    assert!(listed.starts_with("1 parked message(s)"), "{listed}");
    assert!(
        listed.contains("irc:#quiet") && listed.contains("refused-1"),
        "{listed}"
    );
    assert!(
        listed.contains("attempts=3") && listed.contains("404"),
        "{listed}"
    );
    assert_never_reconnected(&bot, &m);
    human.quit().await;
}
on_both_stores!(
    a_refused_message_is_retried_then_parked_and_the_rest_go_on,
    refused_message_is_parked
);

/// A message after which the server goes silent (as ngIRCd did after a NUL byte): the bot
/// reconnects, tries it again on its own, parks it after the last attempt, and every message
/// behind it arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_after_which_the_server_goes_silent_is_parked_and_the_rest_go_on() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let proxy = Proxy::start_poisoned(&server.addr(), "POISON-LINE").await;
    let config = config(
        &store,
        &gitlab,
        proxy.port(),
        "\"#ops\"",
        "flood_burst = 20\nflood_rate = 100.0\nmax_send_attempts = 3",
    );
    let (human, bot) = human_and_bot(&config, &server.addr(), &["#ops"]).await;
    assert_eq!(say(&bot, "irc:#ops", "before-1").await.0, 202);
    wait_line(&human, "#ops", "before-1", WAIT).await;

    assert_eq!(say(&bot, "irc:#ops", "POISON-LINE here").await.0, 202);
    assert_eq!(say(&bot, "irc:#ops", "after-1").await.0, 202);
    assert_eq!(say(&bot, "irc:#ops", "after-2").await.0, 202);
    // Each attempt costs a silent connection: two PING intervals, then a reconnect.
    wait_line(&human, "#ops", "after-2", Duration::from_secs(120)).await;
    assert!(
        store
            .wait_count(
                "SELECT COUNT(*) FROM outbox WHERE body = 'POISON-LINE here' AND parked_at IS NOT NULL",
                1,
                Duration::from_secs(90)
            )
            .await,
        "{}",
        bot.stderr()
    );
    assert_eq!(proxy.poisoned(), 3, "tried exactly max_send_attempts times");
    let lines = bot_lines(&human, "#ops");
    assert!(lines.iter().any(|l| l == "after-1"), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("POISON-LINE")),
        "{lines:?}"
    );
    // The human may read the last line a moment before the bot has its acknowledgement.
    assert!(
        store
            .wait_count(
                "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL AND parked_at IS NULL",
                0,
                WAIT
            )
            .await
    );
    let m = bot.metrics_text().await;
    assert_eq!(
        metric_value(&m, "shepherd_outbox_parked_total{frontend=\"irc\"}"),
        Some(1.0),
        "{m}"
    );
}

/// GitLab notes: a note that keeps failing on one merge request holds back only that MR's
/// notes (in order), never the other MRs'; one GitLab refuses for good is parked, and the notes
/// behind it on the same MR go on.
async fn notes_per_mr(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let author = gitlab.add_user("alice");
    let project = "g/p";
    let (a, b, c) = (
        gitlab.add_mr(project, project, "fix-a", author),
        gitlab.add_mr(project, project, "fix-b", author),
        gitlab.add_mr(project, project, "fix-c", author),
    );
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = "[gitlab_comments]\nwebhook_secret_env = \"TEST_WEBHOOK_SECRET\"\n".into();
    config.env.push((
        "TEST_WEBHOOK_SECRET".into(),
        "hostile-webhook-secret".into(),
    ));
    config.env.push((
        "SHEPHERD_HTTP__API_TOKEN_ENV".into(),
        "TEST_API_TOKEN".into(),
    ));
    config.env.push(("TEST_API_TOKEN".into(), API_TOKEN.into()));
    let bot = Shepherd::serve(&config).await;
    bot.wait_http(WAIT).await;

    let on_a: &'static str = Box::leak(format!("/merge_requests/{a}/notes").into_boxed_str());
    let on_c: &'static str = Box::leak(format!("/merge_requests/{c}/notes").into_boxed_str());
    gitlab.fail_next(
        RouteMatcher::RouteAt(Route::CreateNote, on_a),
        1_000,
        FaultKind::Status(503),
    );
    gitlab.fail_next(
        RouteMatcher::RouteAt(Route::CreateNote, on_c),
        1,
        FaultKind::Status(403),
    );
    for (iid, text) in [
        (a, "held-1"),
        (a, "held-2"),
        (b, "other-1"),
        (c, "refused-1"),
        (c, "after-refused"),
    ] {
        assert_eq!(
            say(&bot, &format!("gitlab:{project}!{iid}"), text).await.0,
            202
        );
    }
    let has = |notes: &[shepherd_tests::gitlab::NoteRecord], text: &str| {
        notes.iter().any(|n| n.body.starts_with(text))
    };
    assert!(
        gitlab
            .wait_notes(project, b, |n| has(n, "other-1"), WAIT)
            .await,
        "another MR's note waited for the failing one:\n{}",
        bot.stderr()
    );
    assert!(
        gitlab
            .wait_notes(project, c, |n| has(n, "after-refused"), WAIT)
            .await,
        "{}",
        bot.stderr()
    );
    assert!(!has(&gitlab.notes(project, c), "refused-1"));
    assert!(gitlab.notes(project, a).is_empty());
    assert!(
        store
            .wait_count(
                "SELECT COUNT(*) FROM outbox WHERE body = 'refused-1' AND parked_at IS NOT NULL",
                1,
                WAIT
            )
            .await
    );

    // GitLab takes MR a's notes again: both arrive, in order.
    gitlab.clear_scripted();
    assert!(
        gitlab
            .wait_notes(project, a, |n| n.len() == 2, Duration::from_secs(90))
            .await,
        "{}",
        bot.stderr()
    );
    let notes = gitlab.notes(project, a);
    assert!(notes[0].body.starts_with("held-1") && notes[1].body.starts_with("held-2"));
    let m = bot.metrics_text().await;
    assert_eq!(
        metric_value(&m, "shepherd_outbox_parked_total{frontend=\"gitlab\"}"),
        Some(1.0),
        "{m}"
    );
}
on_both_stores!(
    a_failing_note_holds_back_only_its_merge_request,
    notes_per_mr
);

/// Targets that would end or extend a protocol line are refused at the door.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn say_refuses_targets_that_are_not_room_names() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let config = config(&store, &gitlab, server.port(), "\"#ops\"", "");
    let bot = Shepherd::serve(&config).await;
    bot.wait_http(WAIT).await;
    for target in [
        "irc:#ops\r\nQUIT :bye",
        "irc:#ops :x",
        "irc:#o\u{0}ps",
        "irc:#ops,#other",
        "irc:#not-joined",
        "matrix:!room:example.org",
    ] {
        let (status, body) = say(&bot, target, "hello").await;
        assert_eq!(status, 400, "{target:?}: {body}");
    }
    assert!(
        say(&bot, "irc:#not-joined", "x").await.1["error"]
            .as_str()
            .is_some_and(|e| e.contains("is not one of the bot's channels")),
    );
    // A channel named in another case is the same channel.
    assert_eq!(say(&bot, "irc:#OPS", "hello").await.0, 202);
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM outbox WHERE room <> '#OPS'")
            .await,
        0,
        "nothing refused was stored"
    );
}

/// A pipeline or MR URL of another GitLab gets a clear refusal and no API call.
async fn foreign_urls(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let ours = gitlab.add_pipeline(PROJECT, "main", "success", &[]);
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.production = false;
    let mut bot = Shepherd::console(&config).await;
    let other_port = gitlab.addr().port().wrapping_add(1);
    bot.send(&format!(
        "retrigger https://gitlab.evil.example/{PROJECT}/-/pipelines/{} x=1",
        ours.id
    ))
    .await;
    bot.send(&format!(
        "status http://127.0.0.1:{other_port}/{PROJECT}/-/pipelines/{}",
        ours.id
    ))
    .await;
    bot.send(&format!(
        "canary https://gitlab.evil.example/{PROJECT}/-/merge_requests/3"
    ))
    .await;
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success());
    // Queued commands run on several workers: the replies come in any order.
    let lines = bot.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    let refused_from = |instance: &str| {
        lines
            .iter()
            .filter(|l| {
                l.starts_with(&format!("that URL is on {instance}, "))
                    && l.contains(&format!("I work with the GitLab at {}", gitlab.url()))
            })
            .count()
    };
    assert_eq!(refused_from("https://gitlab.evil.example"), 2, "{lines:?}");
    assert_eq!(
        refused_from(&format!("http://127.0.0.1:{other_port}")),
        1,
        "{lines:?}"
    );
    assert!(gitlab.requests().is_empty(), "{:?}", gitlab.requests());
}
on_both_stores!(urls_of_another_gitlab_are_refused, foreign_urls);

/// IRC passwords (NickServ IDENTIFY here: ngIRCd without a server password refuses PASS) stay
/// out of the log even at the trace level,
/// where the IRC library traces every raw line it sends. (The harness checks the log for every
/// configured secret when the process is dropped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn irc_passwords_stay_out_of_a_trace_log() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let mut config = config(
        &store,
        &gitlab,
        server.port(),
        "\"#ops\"",
        "flood_burst = 20\nflood_rate = 100.0\nnickserv_password_env = \"TEST_NICKSERV\"",
    );
    config
        .env
        .push(("TEST_NICKSERV".into(), "nickserv-pass-8b2e".into()));
    config.env.push(("SHEPHERD_LOG".into(), "trace".into()));
    let (mut human, bot) = human_and_bot(&config, &server.addr(), &["#ops"]).await;
    human.privmsg("#ops", "!ping").await;
    wait_line(&human, "#ops", "human: pong", WAIT).await;
    let log = bot.stderr();
    assert!(log.contains(" DEBUG "), "the filter let everything through");
    assert!(
        !log.contains("nickserv-pass-8b2e"),
        "the NickServ password is in the log"
    );
}

/// Passwords inside the store and queue URLs are printed by no command and no log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_inside_urls_are_never_printed() {
    let pg = shepherd_tests::harness::postgres_admin_url();
    let mut store_url = url::Url::parse(&pg).expect("postgres url");
    // PostgreSQL here trusts 127.0.0.1: any password connects, and none may be shown.
    store_url
        .set_password(Some("store-password-7f3a"))
        .expect("password");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shepherd.toml");
    let write = |queue: &str| {
        std::fs::write(&path, format!("[store]\nurl = \"{store_url}\"\n{queue}"))
            .expect("write config");
    };
    let run = |args: &[&str]| {
        let mut cmd = std::process::Command::new(shepherd_bin());
        cmd.args(args)
            .arg("--config")
            .arg(&path)
            .env_remove("SHEPHERD_CONFIG")
            .env_remove("SHEPHERD_BIN")
            .stdin(std::process::Stdio::null());
        let output = cmd.output().expect("run shepherd");
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + String::from_utf8_lossy(&output.stderr).as_ref();
        (output.status.success(), text)
    };
    write("");
    let (ok, out) = run(&["config", "check"]);
    assert!(ok, "{out}");
    assert!(out.contains("<redacted>"), "{out}");
    // A queue this version cannot use: `config check` and `serve` both refuse it, naming the
    // URL without its password.
    write("[queue]\nurl = \"amqp://guest:queue-password-9c1e@127.0.0.1:5672/%2f\"\n");
    let (check_ok, check) = run(&["config", "check"]);
    let (serve_ok, err) = run(&["serve"]);
    for (ok, text) in [(check_ok, &check), (serve_ok, &err)] {
        assert!(!ok, "{text}");
        assert!(
            text.contains("queue.url") && text.contains("guest:<redacted>@"),
            "{text}"
        );
    }
    let out = out + check.as_str();
    for secret in ["store-password-7f3a", "queue-password-9c1e"] {
        assert!(!out.contains(secret), "{out}");
        assert!(!err.contains(secret), "{err}");
    }

    // And a whole run on that store: the harness checks the log for the password.
    let store = TestStore::new(Backend::Postgres).await;
    let gitlab = GitLabDouble::start().await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    let mut url = url::Url::parse(&store.url).expect("store url");
    url.set_password(Some("store-password-7f3a"))
        .expect("password");
    config.store_url = url.to_string();
    assert!(
        config
            .secrets()
            .contains(&"store-password-7f3a".to_string())
    );
    let mut bot = Shepherd::console(&config).await;
    bot.send("ping").await;
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success());
    assert_eq!(bot.lines(), ["pong"]);
}

/// Opens a connection that sends the start of a request and then nothing.
async fn half_open(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    s.write_all(b"POST /hooks/alertmanager HTTP/1.1\r\nHost: shepherd\r\nX-Slow: ")
        .await
        .expect("write");
    s
}

/// Resolves when the server closes `s` (EOF or reset).
async fn closed(mut s: TcpStream) -> Instant {
    let mut buf = [0u8; 512];
    loop {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return Instant::now(),
            Ok(_) => {}
        }
    }
}

/// A slowloris of 200 half-open connections: health checks and webhooks are answered
/// meanwhile, the half-open connections are closed after the header timeout, and a body that
/// trickles in too slowly gets 408.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_neither_silences_the_server_nor_holds_it() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let mut config = config(
        &store,
        &gitlab,
        server.port(),
        "\"#ops\"",
        "flood_burst = 20\nflood_rate = 100.0",
    );
    config.http = "header_timeout_secs = 2\nbody_timeout_secs = 2".into();
    let (human, bot) = human_and_bot(&config, &server.addr(), &["#ops"]).await;
    let port = config.http_port;

    let mut slow = Vec::new();
    for _ in 0..200 {
        slow.push(half_open(port).await);
    }
    // Others are served meanwhile.
    let health = reqwest::get(format!("{}/healthz", bot.base_url()))
        .await
        .expect("healthz");
    assert_eq!(health.status(), 200);
    assert_eq!(
        notify(&bot, &notification("DuringSlowloris", "still relayed")).await,
        200
    );
    wait_line(&human, "#ops", "still relayed", WAIT).await;

    // Every half-open connection is closed by the server.
    let closings = futures_join_all(slow.into_iter().map(closed)).await;
    assert_eq!(closings.len(), 200);

    // A body that stops half-way: 408 once the body deadline passes.
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let head = format!(
        "POST /api/v1/say HTTP/1.1\r\nHost: shepherd\r\nAuthorization: Bearer {API_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{{\"target\":"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let mut answer = String::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_string(&mut answer)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    let m = bot.metrics_text().await;
    assert!(
        metric_value(
            &m,
            "shepherd_http_connections_closed_total{reason=\"header_timeout\"}"
        )
        .unwrap_or(0.0)
            >= 200.0,
        "{m}"
    );
}

/// At `max_connections`, a new client waits until a slot frees — which the header timeout
/// guarantees — instead of the server taking connections without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.http = "header_timeout_secs = 2\nmax_connections = 4".into();
    let bot = Shepherd::serve(&config).await;
    bot.wait_http(WAIT).await;
    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(half_open(config.http_port).await);
    }
    let url = format!("{}/healthz", bot.base_url());
    let r = reqwest::get(url).await.expect("healthz");
    assert_eq!(r.status().as_u16(), 200);
    // The server frees a slot by closing a connection before it takes the next one, so by the
    // time the answer is here at least one of the four has been closed (its FIN was sent
    // before the answer). Without the cap, all four would still be open for their 2 s.
    let mut freed = 0;
    for s in &slow {
        if was_closed(s) {
            freed += 1;
        }
    }
    assert!(
        freed >= 1,
        "answered while all four slots were held: the cap did not hold"
    );
}

/// True when the server has closed `s` (EOF or reset already arrived), without waiting.
fn was_closed(s: &TcpStream) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match s.try_read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// Clients that send requests and never read the answers: the server's writes stall, and the
/// write timeout frees their slots, so others are served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_do_not_hold_the_server() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.http = "header_timeout_secs = 2\nbody_timeout_secs = 2\nmax_connections = 2".into();
    let bot = Shepherd::serve(&config).await;
    bot.wait_http(WAIT).await;
    // Enough pipelined requests for megabytes of answers: more than the socket buffers hold.
    let requests = "GET /help HTTP/1.1\r\nHost: shepherd\r\n\r\n".repeat(3000);
    let mut readers_that_never_read = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", config.http_port))
            .await
            .expect("connect");
        // The server may stop reading them too, once its writes stall: do not wait for that.
        let _ =
            tokio::time::timeout(Duration::from_secs(5), s.write_all(requests.as_bytes())).await;
        readers_that_never_read.push(s);
    }
    let health = reqwest::Client::new()
        .get(format!("{}/healthz", bot.base_url()))
        .timeout(WAIT)
        .send()
        .await
        .expect("healthz answered once a stalled connection was cut");
    assert_eq!(health.status(), 200);
    let m = bot.metrics_text().await;
    assert!(
        metric_value(
            &m,
            "shepherd_http_connections_closed_total{reason=\"write_timeout\"}"
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{m}"
    );
    drop(readers_that_never_read);
}

/// Awaits every future (the tests crate has no `futures` dependency).
async fn futures_join_all<F: std::future::Future + Send + 'static>(
    fs: impl Iterator<Item = F>,
) -> Vec<F::Output>
where
    F::Output: Send + 'static,
{
    let handles: Vec<_> = fs.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(
            tokio::time::timeout(WAIT, h)
                .await
                .expect("in time")
                .expect("task"),
        );
    }
    out
}
