//! The Matrix front end against a real Synapse: a matrix-sdk client plays the human, the real
//! `shepherd serve` is the bot, GitLab is the double.

use std::time::Duration;

use shepherd_tests::gitlab::{AutoFinish, GitLabDouble};
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore, metric_value};
use shepherd_tests::matrix_client::{Human, Seen};
use shepherd_tests::on_both_stores;
use shepherd_tests::synapse::Synapse;

const PROJECT: &str = "cki-project/pipeline-definition";
const WAIT: Duration = Duration::from_secs(30);
const BOT: &str = "@shepherd:localhost";
const BOT_PASSWORD: &str = "shepherd-bot-password-3e1f";

/// The `[matrix]` section for a bot in `rooms`, alice a known admin, and invites from alice
/// accepted.
fn matrix_section(
    synapse: &Synapse,
    store: &std::path::Path,
    rooms: &[&str],
    extra: &str,
) -> String {
    let rooms = rooms
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r##"[matrix]
homeserver = "{url}"
user = "{BOT}"
password_env = "TEST_MATRIX_PASSWORD"
store_path = "{store}"
rooms = [{rooms}]
autojoin = ["@alice:localhost"]
reconnect_max_secs = 2
sync_timeout_secs = 5
{extra}
[[people]]
name = "alice"
identities = ["matrix:@alice:localhost"]
groups = ["admins"]
"##,
        url = synapse.url(),
        store = store.display(),
    )
}

/// The bot's configuration on `synapse` for `rooms`, with its password; the returned folder holds
/// its Matrix store.
fn bot_config(
    store: &TestStore,
    gitlab: &GitLabDouble,
    synapse: &Synapse,
    rooms: &[&str],
    extra: &str,
) -> (ShepherdConfig, tempfile::TempDir) {
    let bot_store = tempfile::tempdir().expect("bot store");
    let mut config = ShepherdConfig::new(store, gitlab);
    config.extra = matrix_section(synapse, &bot_store.path().join("matrix"), rooms, extra);
    config
        .env
        .push(("TEST_MATRIX_PASSWORD".into(), BOT_PASSWORD.into()));
    (config, bot_store)
}

/// A Synapse with the bot's account and alice; alice's room (encrypted or not) with the bot
/// invited; the bot's config; and the bot's store folder.
struct Setup {
    synapse: Synapse,
    alice: Human,
    room: String,
    config: ShepherdConfig,
    _bot_store: tempfile::TempDir,
}

async fn setup(store: &TestStore, gitlab: &GitLabDouble, encrypted: bool, extra: &str) -> Setup {
    let synapse = Synapse::start().await;
    synapse.register("shepherd", BOT_PASSWORD).await;
    let alice = Human::new(&synapse, "alice").await;
    let room = alice.create_room(encrypted, &[BOT]).await;
    let (config, bot_store) = bot_config(store, gitlab, &synapse, &[&room], extra);
    Setup {
        synapse,
        alice,
        room,
        config,
        _bot_store: bot_store,
    }
}

/// The bot's reply to `event`.
fn reply_to<'a>(event: &'a str) -> impl Fn(&Seen) -> bool + 'a {
    move |s: &Seen| s.sender == BOT && s.in_reply_to() == Some(event)
}

async fn round_trip(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let old = gitlab.add_pipeline(PROJECT, "main", "success", &[("KERNEL", "6.12")]);
    gitlab.set_auto_finish(Some(AutoFinish::success_after_polls(1, 1)));
    let s = setup(&store, &gitlab, false, "").await;
    let bot = Shepherd::serve(&s.config).await;
    s.alice.wait_joined(&s.room, BOT, WAIT).await;

    let asked = s
        .alice
        .send(&s.room, &format!("shepherd: retrigger {} x=1", old.web_url))
        .await;
    let reply = s
        .alice
        .wait_for(WAIT, "the retrigger reply", reply_to(&asked))
        .await;
    let created = gitlab.pipelines_created();
    assert_eq!(created.len(), 1, "{}", bot.stderr());
    assert_eq!(created[0].variable("x"), Some("1"));
    assert_eq!(reply.msgtype(), "m.notice", "{}", reply.content);
    assert!(
        reply.body().contains("retriggered pipeline"),
        "{}",
        reply.content
    );
    assert!(
        reply.body().contains(&created[0].web_url),
        "{}",
        reply.content
    );
    let html = reply.content["formatted_body"].as_str().unwrap_or("");
    assert!(
        html.contains(&format!("<a href=\"{}\">", created[0].web_url)),
        "{html}"
    );
    assert_eq!(
        reply.content["m.mentions"]["user_ids"][0], "@alice:localhost",
        "the asker is mentioned"
    );
    let report = s
        .alice
        .wait_for(WAIT, "the final status", |m| {
            m.sender == BOT && m.body().contains("finished: success")
        })
        .await;
    assert_eq!(
        report.in_reply_to(),
        Some(asked.as_str()),
        "reported to whoever asked"
    );

    // The prefix and the bot's user id address it too; help shows Matrix's own addressing.
    let ping = s.alice.send(&s.room, "!ping").await;
    let pong = s.alice.wait_for(WAIT, "pong", reply_to(&ping)).await;
    assert_eq!(pong.body(), "pong");
    let help = s.alice.send(&s.room, &format!("{BOT}: help ping")).await;
    let help = s.alice.wait_for(WAIT, "help", reply_to(&help)).await;
    assert!(help.body().contains("`shepherd: ping`"), "{}", help.body());

    let metrics = bot.metrics_text().await;
    let value = |series: &str| metric_value(&metrics, series);
    assert_eq!(value("shepherd_matrix_connected "), Some(1.0), "{metrics}");
    assert!(
        value("shepherd_matrix_syncs_total{outcome=\"ok\"} ") >= Some(2.0),
        "{metrics}"
    );
    assert!(
        value("shepherd_matrix_sends_total{outcome=\"sent\"} ") >= Some(4.0),
        "{metrics}"
    );
    assert_eq!(
        value("shepherd_matrix_logins_total{outcome=\"logged_in\"} "),
        Some(1.0),
        "{metrics}"
    );
}
on_both_stores!(a_human_retriggers_from_a_room_and_hears_the_end, round_trip);

/// Someone the configuration does not know is refused, audited, and nothing is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_identity_is_refused_and_audited() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let old = gitlab.add_pipeline(PROJECT, "main", "success", &[]);
    let s = setup(&store, &gitlab, false, "").await;
    let mallory = Human::new(&s.synapse, "mallory").await;
    s.alice.invite(&s.room, &mallory.user_id).await;
    mallory
        .client
        .join_room_by_id(s.alice.room(&s.room).room_id())
        .await
        .expect("join");
    let _bot = Shepherd::serve(&s.config).await;
    s.alice.wait_joined(&s.room, BOT, WAIT).await;
    mallory.wait_joined(&s.room, &mallory.user_id, WAIT).await;

    let asked = mallory
        .send(&s.room, &format!("shepherd: retrigger {}", old.web_url))
        .await;
    let refusal = mallory.wait_for(WAIT, "a refusal", reply_to(&asked)).await;
    assert!(
        refusal
            .body()
            .contains("matrix:@mallory:localhost is not a known identity"),
        "{}",
        refusal.body()
    );
    assert!(gitlab.pipelines_created().is_empty());
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM audit WHERE identity = 'matrix:@mallory:localhost' AND outcome = 'refused'")
            .await,
        1
    );
}

/// In an encrypted room the bot reads the human's encrypted command and the human decrypts the
/// bot's encrypted reply — and after a kill -9 and a restart the bot is the same device: it still
/// decrypts new commands, and its replies still decrypt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_rooms_work_across_a_crash() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let s = setup(&store, &gitlab, true, "").await;
    let mut bot = Shepherd::serve(&s.config).await;
    s.alice.wait_joined(&s.room, BOT, WAIT).await;

    let asked = s.alice.send(&s.room, "shepherd: ping").await;
    let pong = s
        .alice
        .wait_for(WAIT, "an encrypted pong", reply_to(&asked))
        .await;
    assert!(pong.encrypted, "the reply was encrypted: {pong:?}");
    assert_eq!(
        pong.kind, "m.room.message",
        "and alice decrypted it: {pong:?}"
    );
    assert_eq!(pong.body(), "pong");
    let sent_encrypted = s
        .alice
        .seen()
        .into_iter()
        .any(|m| m.event_id == asked && m.encrypted);
    assert!(sent_encrypted, "alice's command went encrypted");
    let session = std::fs::read_to_string(s._bot_store.path().join("matrix/session.json"))
        .expect("the session is kept");

    bot.kill9().await;
    let bot = Shepherd::serve(&s.config).await;
    let asked = s.alice.send(&s.room, "!version").await;
    let version = s
        .alice
        .wait_for(WAIT, "a reply after the restart", reply_to(&asked))
        .await;
    assert!(
        version.encrypted && version.kind == "m.room.message",
        "{version:?}"
    );
    assert!(
        version.body().starts_with("shepherd "),
        "{}",
        version.body()
    );
    assert_eq!(
        std::fs::read_to_string(s._bot_store.path().join("matrix/session.json"))
            .expect("the session"),
        session,
        "the same device: no new login"
    );
    let metrics = bot.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "shepherd_matrix_logins_total{outcome=\"restored\"} "
        ),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "shepherd_matrix_decryption_failures_total "),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        bot.stderr().contains("session restored"),
        "{}",
        bot.stderr()
    );
}

/// Commands sent while the bot is down are answered once when it is back; a command answered
/// before the restart is not run again; one older than the catch-up window gets one reply saying
/// it was skipped, and what is sent after the start runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_run_missed_commands_once_and_skip_old_ones() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let mut s = setup(&store, &gitlab, false, "").await;
    let mut bot = Shepherd::serve(&s.config).await;
    s.alice.wait_joined(&s.room, BOT, WAIT).await;
    let before = s.alice.send(&s.room, "!ping").await;
    s.alice.wait_for(WAIT, "pong", reply_to(&before)).await;
    bot.kill9().await;

    let missed = s.alice.send(&s.room, "shepherd: version").await;
    let chatter = s.alice.send(&s.room, "the bot is down, isn't it?").await;
    let bot = Shepherd::serve(&s.config).await;
    let version = s
        .alice
        .wait_for(WAIT, "the missed command's reply", reply_to(&missed))
        .await;
    assert!(
        version.body().starts_with("shepherd "),
        "{}",
        version.body()
    );
    // Everything after it has been read once it answered; let one more sync pass.
    let after = s.alice.send(&s.room, "!ping").await;
    s.alice
        .wait_for(WAIT, "a live pong", reply_to(&after))
        .await;
    for event in [&before, &missed] {
        let replies = s.alice.seen().iter().filter(|m| reply_to(event)(m)).count();
        assert_eq!(replies, 1, "one answer to {event}");
    }
    assert!(!s.alice.seen().iter().any(|m| reply_to(&chatter)(m)));
    drop(bot);

    // A window of 0 minutes: what came while the bot was down is skipped, with a word.
    let old = s.alice.send(&s.room, "!ping").await;
    s.config
        .env
        .push(("SHEPHERD_MATRIX__CATCH_UP_MINUTES".into(), "0".into()));
    let bot = Shepherd::serve(&s.config).await;
    let skipped = s
        .alice
        .wait_for(WAIT, "the skipped reply", reply_to(&old))
        .await;
    assert!(
        skipped.body().starts_with("I did not run this"),
        "{}",
        skipped.body()
    );
    assert!(
        skipped.body().contains("older than 0 minutes"),
        "{}",
        skipped.body()
    );
    let live = s.alice.send(&s.room, "!ping").await;
    let pong = s.alice.wait_for(WAIT, "a live pong", reply_to(&live)).await;
    assert_eq!(pong.body(), "pong", "{}", bot.stderr());
    assert_eq!(
        s.alice.seen().iter().filter(|m| reply_to(&old)(m)).count(),
        1,
        "skipped once, never run"
    );
    assert_eq!(
        metric_value(
            &bot.metrics_text().await,
            "shepherd_matrix_commands_skipped_total "
        ),
        Some(1.0)
    );
}

const AM_TOKEN: &str = "am-token-matrix-7a2c";

/// The numbers of the alert lines (`AlertNNN`) the bot said in `room`, in the order they came;
/// a message may carry many lines.
fn alert_numbers(seen: &[Seen], room: &str) -> Vec<usize> {
    seen.iter()
        .filter(|m| m.sender == BOT && m.room == room)
        .flat_map(|m| m.body().lines().map(str::to_string).collect::<Vec<_>>())
        .filter_map(|line| {
            line.split("Alert")
                .nth(1)
                .and_then(|rest| rest.get(..3))
                .and_then(|n| n.parse().ok())
        })
        .collect()
}

fn alert_notification(i: usize) -> serde_json::Value {
    serde_json::json!({
        "receiver": "shepherd",
        "status": "firing",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": format!("Alert{i:03}"), "severity": "critical"},
            "annotations": {"summary": format!("alert number {i}")},
            "startsAt": "2026-11-25T07:47:20Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:9090/graph",
            "fingerprint": format!("fp{i}"),
        }],
        "groupLabels": {"alertname": format!("Alert{i:03}")},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://127.0.0.1:19093",
        "version": "4",
        "groupKey": format!("{{}}:{{alertname=\"Alert{i:03}\"}}"),
        "truncatedAlerts": 0
    })
}

/// Synapse killed and restarted while alert lines are queued: every line arrives, once, in
/// order, with the severity as HTML colour.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_lines_survive_a_homeserver_restart_in_order() {
    const N: usize = 40;
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let mut s = setup(&store, &gitlab, false, "").await;
    s.config.extra.push_str(&format!(
        "[alerts]\nwebhook_token_env = \"TEST_AM_TOKEN\"\ndefault_targets = [\"matrix:{}\"]\n",
        s.room
    ));
    s.config.env.push(("TEST_AM_TOKEN".into(), AM_TOKEN.into()));
    let bot = Shepherd::serve(&s.config).await;
    bot.wait_http(WAIT).await;
    s.alice.wait_joined(&s.room, BOT, WAIT).await;
    let client = reqwest::Client::new();
    let notify = |i: usize| {
        let client = client.clone();
        let url = format!("{}/hooks/alertmanager", bot.base_url());
        async move {
            let r = client
                .post(url)
                .bearer_auth(AM_TOKEN)
                .json(&alert_notification(i))
                .send()
                .await
                .expect("shepherd answers");
            assert_eq!(r.status().as_u16(), 200);
        }
    };
    for i in 0..N / 2 {
        notify(i).await;
    }
    s.synapse.kill().await;
    for i in N / 2..N {
        notify(i).await;
    }
    s.synapse.restart().await;

    let numbers = |seen: &[Seen]| alert_numbers(seen, &s.room);
    let all_arrived = s
        .alice
        .until(Duration::from_secs(60), |seen| numbers(seen).len() >= N)
        .await;
    let got = numbers(&s.alice.seen());
    assert!(
        all_arrived,
        "{} of {N} lines: {got:?}\n{}",
        got.len(),
        bot.stderr()
    );
    assert_eq!(got, (0..N).collect::<Vec<_>>(), "every line once, in order");
    let line = s
        .alice
        .messages_from(&s.room, BOT)
        .into_iter()
        .find(|m| m.body().contains("Alert000"))
        .expect("the first line");
    assert!(
        line.body().starts_with("[CRITICAL] Alert000"),
        "{}",
        line.body()
    );
    // A backlog is sent as messages of many lines, not one event per line.
    let messages = s.alice.messages_from(&s.room, BOT).len();
    assert!(messages < N, "{messages} messages for {N} lines");
    let html = line.content["formatted_body"].as_str().unwrap_or("");
    assert!(
        html.contains("data-mx-color=\"#ff0000\"") && html.contains("[CRITICAL]"),
        "{html}"
    );
    assert!(
        !line.body().contains('\u{3}'),
        "no mIRC codes in the plain body"
    );
    assert_eq!(
        line.content["m.mentions"],
        serde_json::json!({}),
        "alerts mention nobody"
    );
}

/// A canary asked for in a room: its summary is one message, edited in place (`m.replace`) as
/// the pipelines progress, until the verdict.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_summary_is_one_message_edited_in_place() {
    const PIPE_PROJECT: &str = "cki-project/cki-pipeline";
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let mainline = gitlab.add_pipeline(
        PIPE_PROJECT,
        "mainline",
        "success",
        &[("tree_name", "mainline")],
    );
    let rhel = gitlab.add_pipeline(PIPE_PROJECT, "rhel9", "success", &[("tree_name", "rhel9")]);
    let author = gitlab.add_user("alice");
    let mr = gitlab.add_mr(PROJECT, PROJECT, "fix-tests", author);
    let canary = format!(
        r#"
[[canary.projects]]
project = "{PROJECT}"
variables = {{ PIPELINE_DEFINITION_REF = "{{{{ mr.ref }}}}" }}
references = [
  {{ tree = "mainline", project = "{PIPE_PROJECT}", pipeline = {} }},
  {{ tree = "rhel9", project = "{PIPE_PROJECT}", pipeline = {} }},
]
"#,
        mainline.id, rhel.id
    );
    let s = setup(&store, &gitlab, false, "").await;
    let mut config = s.config.clone();
    config.extra.push_str(&canary);
    let bot = Shepherd::serve(&config).await;
    s.alice.wait_joined(&s.room, BOT, WAIT).await;

    s.alice
        .send(&s.room, &format!("shepherd: canary {PROJECT}!{mr}"))
        .await;
    let summary = s
        .alice
        .wait_for(WAIT, "the canary summary", |m| {
            m.sender == BOT && m.replaces().is_none() && m.body().starts_with("canary of")
        })
        .await;
    assert!(
        summary.body().contains("0 of 2 finished"),
        "{}",
        summary.body()
    );
    let created = gitlab.pipelines_created();
    assert_eq!(created.len(), 2, "{}", bot.stderr());
    gitlab.set_status(created[0].id, "running");
    gitlab.set_status(created[0].id, "success");
    let progress = s
        .alice
        .wait_for(WAIT, "an edit with progress", |m| {
            m.replaces() == Some(summary.event_id.as_str())
                && m.content["m.new_content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("1 of 2 finished"))
        })
        .await;
    assert_eq!(progress.sender, BOT);
    gitlab.set_status(created[1].id, "failed");
    let verdict = s
        .alice
        .wait_for(WAIT, "the verdict, as an edit", |m| {
            m.replaces() == Some(summary.event_id.as_str())
                && m.content["m.new_content"]["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("verdict: ❌ 1 of 2 failed"))
        })
        .await;
    let body = verdict.content["m.new_content"]["body"]
        .as_str()
        .unwrap_or("");
    assert!(
        body.contains(&format!("`shepherd: retest {PROJECT}!{mr}`")),
        "the retest hint is addressed as in Matrix: {body}"
    );
    let summaries = s
        .alice
        .messages_from(&s.room, BOT)
        .into_iter()
        .filter(|m| m.replaces().is_none() && m.body().starts_with("canary of"))
        .count();
    assert_eq!(
        summaries, 1,
        "one summary message; the rest are edits of it"
    );
}

/// What a homeserver or its users can send that is not a command: another bot's notice, a
/// 40 kB message, an empty address, a message with only formatting, an unknown event type, an
/// invite from someone outside `autojoin`. No crash, a clear reply where one is owed, and the bot
/// goes on answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_without_harm() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let s = setup(&store, &gitlab, false, "").await;
    let bob = Human::new(&s.synapse, "bob").await;
    let bobs_room = bob.create_room(false, &[]).await;
    let bot = Shepherd::serve(&s.config).await;
    s.alice.wait_joined(&s.room, BOT, WAIT).await;

    let notice = s
        .alice
        .send_content(
            &s.room,
            serde_json::json!({"msgtype": "m.notice", "body": "!ping"}),
        )
        .await;
    let huge = s
        .alice
        .send(&s.room, &format!("shepherd: {}", "x".repeat(40_000)))
        .await;
    let empty = s.alice.send(&s.room, "shepherd:").await;
    let formatted = s
        .alice
        .send_content(
            &s.room,
            serde_json::json!({"msgtype": "m.text", "body": "", "format": "org.matrix.custom.html", "formatted_body": "<b>!ping</b>"}),
        )
        .await;
    s.alice
        .send_event(
            &s.room,
            "org.example.weird",
            serde_json::json!({"body": "!ping", "junk": [1, {"x": null}]}),
        )
        .await;
    bob.invite(&bobs_room, BOT).await;

    let unknown = s
        .alice
        .wait_for(WAIT, "an answer to the 40 kB line", reply_to(&huge))
        .await;
    assert!(
        unknown.body().starts_with("unknown command"),
        "{}",
        unknown.body()
    );
    assert!(
        unknown.body().len() < 400,
        "the reply quotes a little of it: {}",
        unknown.body().len()
    );
    let told = s
        .alice
        .wait_for(WAIT, "an answer to the empty address", reply_to(&empty))
        .await;
    assert_eq!(told.body(), "empty command. Try `help`.");
    // Still answering, after all of that.
    let ping = s.alice.send(&s.room, "!ping").await;
    s.alice.wait_for(WAIT, "pong", reply_to(&ping)).await;
    for quiet in [&notice, &formatted] {
        assert!(
            !s.alice.seen().iter().any(|m| reply_to(quiet)(m)),
            "no answer to {quiet}"
        );
    }
    let bot_lines = s.alice.messages_from(&s.room, BOT).len();
    assert_eq!(
        bot_lines, 3,
        "answers to the 40 kB line, the empty address and the ping only"
    );
    // Bob's invite is refused: the bot leaves his room without joining.
    bob.wait_for(WAIT, "the bot refusing the invite", |m| {
        m.room == bobs_room
            && m.kind == "m.room.member"
            && m.sender == BOT
            && m.content["membership"] == "leave"
    })
    .await;
    assert!(
        !bob.seen()
            .iter()
            .any(|m| m.room == bobs_room && m.sender == BOT && m.content["membership"] == "join"),
        "never joined"
    );
    let metrics = bot.metrics_text().await;
    assert_eq!(
        metric_value(
            &metrics,
            "shepherd_matrix_invites_total{outcome=\"refused\"} "
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(!bot.stderr().contains("panicked"), "{}", bot.stderr());
}

/// A command in a thread is answered in that thread, in reply to it; a direct chat needs no
/// address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_and_direct_chats() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let s = setup(&store, &gitlab, false, "").await;
    let _bot = Shepherd::serve(&s.config).await;
    s.alice.wait_joined(&s.room, BOT, WAIT).await;
    let root = s.alice.send(&s.room, "deploy day, questions below").await;
    let asked = s
        .alice
        .send_content(
            &s.room,
            serde_json::json!({
                "msgtype": "m.text",
                "body": "!ping",
                "m.relates_to": {"rel_type": "m.thread", "event_id": root, "is_falling_back": true, "m.in_reply_to": {"event_id": root}},
            }),
        )
        .await;
    let pong = s
        .alice
        .wait_for(WAIT, "a reply in the thread", reply_to(&asked))
        .await;
    assert_eq!(
        pong.content["m.relates_to"]["rel_type"], "m.thread",
        "{}",
        pong.content
    );
    assert_eq!(pong.content["m.relates_to"]["event_id"], root.as_str());

    // A direct chat: alice makes one with the bot; every message there is for it.
    let mut request = matrix_sdk::ruma::api::client::room::create_room::v3::Request::new();
    request.is_direct = true;
    request.invite = vec![matrix_sdk::ruma::OwnedUserId::try_from(BOT).expect("bot id")];
    let dm = s
        .alice
        .client
        .create_room(request)
        .await
        .expect("a direct chat");
    let dm = dm.room_id().to_string();
    s.alice.wait_joined(&dm, BOT, WAIT).await;
    let asked = s.alice.send(&dm, "ping").await;
    let pong = s
        .alice
        .wait_for(WAIT, "a pong in the direct chat", reply_to(&asked))
        .await;
    assert_eq!(pong.body(), "pong");
}

const API_TOKEN: &str = "api-token-matrix-55d1";

/// `POST /api/v1/say` into `room`.
async fn say(bot: &Shepherd, room: &str, text: &str) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/say", bot.base_url()))
        .bearer_auth(API_TOKEN)
        .json(&serde_json::json!({"target": format!("matrix:{room}"), "text": text}))
        .send()
        .await
        .expect("shepherd answers");
    assert_eq!(
        r.status().as_u16(),
        202,
        "{}",
        r.text().await.unwrap_or_default()
    );
}

fn with_api_token(config: &mut ShepherdConfig) {
    config.env.push((
        "SHEPHERD_HTTP__API_TOKEN_ENV".into(),
        "TEST_API_TOKEN".into(),
    ));
    config.env.push(("TEST_API_TOKEN".into(), API_TOKEN.into()));
}

/// A wrong password, then a homeserver that is not there: each is a clear log line and retries
/// with backoff, never a crash; what was said meanwhile waits and arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_and_homeserver_failures_are_retried_and_lose_nothing() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let mut s = setup(&store, &gitlab, false, "").await;
    with_api_token(&mut s.config);
    let mut wrong = s.config.clone();
    wrong
        .env
        .push(("TEST_MATRIX_PASSWORD".into(), "not-the-password".into()));
    let bot = Shepherd::serve(&wrong).await;
    bot.wait_http(WAIT).await;
    say(&bot, &s.room, "said while the password was wrong").await;
    let retried = shepherd_tests::harness::until(WAIT, || {
        bot.stderr()
            .matches("login as @shepherd:localhost failed")
            .count()
            >= 2
    })
    .await;
    assert!(retried, "a clear line, retried:\n{}", bot.stderr());
    assert!(bot.stderr().contains("M_FORBIDDEN"), "{}", bot.stderr());
    bot.wait_http(WAIT).await; // still up
    drop(bot);
    let litter: Vec<String> = std::fs::read_dir(s._bot_store.path().join("matrix"))
        .expect("the store folder")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|name| name.starts_with("retired"))
        .collect();
    assert!(
        litter.is_empty(),
        "failed logins leave nothing behind: {litter:?}"
    );

    // The right password: the line said meanwhile arrives.
    let mut bot = Shepherd::serve(&s.config).await;
    s.alice
        .wait_for(WAIT, "the line said while the password was wrong", |m| {
            m.sender == BOT && m.body() == "said while the password was wrong"
        })
        .await;
    bot.kill9().await;

    // The homeserver away at start: the saved session waits for it.
    s.synapse.kill().await;
    let bot = Shepherd::serve(&s.config).await;
    bot.wait_http(WAIT).await;
    say(&bot, &s.room, "said while the homeserver was away").await;
    let retried = shepherd_tests::harness::until(WAIT, || {
        bot.stderr()
            .matches("matrix: cannot start a session; trying again")
            .count()
            >= 2
    })
    .await;
    assert!(retried, "{}", bot.stderr());
    s.synapse.restart().await;
    s.alice
        .wait_for(WAIT, "the line said while the homeserver was away", |m| {
            m.sender == BOT && m.body() == "said while the homeserver was away"
        })
        .await;
    let count = |text: &str| {
        s.alice
            .messages_from(&s.room, BOT)
            .iter()
            .filter(|m| m.body() == text)
            .count()
    };
    assert_eq!(count("said while the password was wrong"), 1);
    assert_eq!(count("said while the homeserver was away"), 1);
}

/// A homeserver that rate-limits the bot (429 M_LIMIT_EXCEEDED with retry_after_ms): every line
/// still arrives, once, in order. (Synapse holds a request a moment before it answers 429, so the
/// limit is strict enough here that holding does not suffice.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_honoured() {
    const N: usize = 5;
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let synapse = Synapse::start_with(shepherd_tests::synapse::RateLimit {
        per_second: 1.0,
        burst: 2,
    })
    .await;
    synapse.register("shepherd", BOT_PASSWORD).await;
    let alice = Human::new(&synapse, "alice").await;
    let room = alice.create_room(false, &[BOT]).await;
    let (mut config, _bot_store) = bot_config(&store, &gitlab, &synapse, &[&room], "");
    with_api_token(&mut config);
    let bot = Shepherd::serve(&config).await;
    bot.wait_http(WAIT).await;
    alice.wait_joined(&room, BOT, WAIT).await;
    let lines = |alice: &Human| -> Vec<String> {
        alice
            .messages_from(&room, BOT)
            .iter()
            .map(|m| m.body().to_string())
            .collect()
    };
    // One at a time (each a message of its own), faster than the limit allows.
    for i in 0..N {
        say(&bot, &room, &format!("line {i:02}")).await;
        let arrived = alice
            .until(Duration::from_secs(30), |_| lines(&alice).len() > i)
            .await;
        assert!(arrived, "{:?}\n{}", lines(&alice), bot.stderr());
    }
    let expected: Vec<String> = (0..N).map(|i| format!("line {i:02}")).collect();
    assert_eq!(lines(&alice), expected, "once each, in order");
    let limited = synapse
        .log()
        .lines()
        .filter(|l| l.contains("/send/m.room.message/shepherd.") && l.contains(" 429 "))
        .count();
    assert!(
        limited >= 1,
        "the homeserver did limit the bot:\n{}",
        synapse.log()
    );
}

/// A room named by its alias in `matrix.rooms` is joined (the bot is invited and the alias
/// resolved), and `say` to the alias reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_by_alias() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let synapse = Synapse::start().await;
    synapse.register("shepherd", BOT_PASSWORD).await;
    let alice = Human::new(&synapse, "alice").await;
    let mut request = matrix_sdk::ruma::api::client::room::create_room::v3::Request::new();
    request.room_alias_name = Some("ops".into());
    request.invite = vec![matrix_sdk::ruma::OwnedUserId::try_from(BOT).expect("bot id")];
    let room = alice
        .client
        .create_room(request)
        .await
        .expect("a room with an alias");
    let room = room.room_id().to_string();
    let (mut config, _bot_store) = bot_config(&store, &gitlab, &synapse, &["#ops:localhost"], "");
    // Invited by alice, who is not in `autojoin`: the configured room is joined all the same.
    config.extra = config
        .extra
        .replace("autojoin = [\"@alice:localhost\"]", "autojoin = []");
    with_api_token(&mut config);
    let bot = Shepherd::serve(&config).await;
    bot.wait_http(WAIT).await;
    let joined = alice
        .until(WAIT, |seen| {
            seen.iter()
                .any(|m| m.room == room && m.sender == BOT && m.content["membership"] == "join")
        })
        .await;
    assert!(joined, "the bot joined by alias:\n{}", bot.stderr());
    say(&bot, "#ops:localhost", "hello by alias").await;
    alice
        .wait_for(WAIT, "the line said to the alias", |m| {
            m.room == room && m.sender == BOT && m.body() == "hello by alias"
        })
        .await;
}

/// Killed with kill -9 in the middle of delivering an alert burst: after the restart every line
/// arrives, once, in order (a batch sent again is the same message under the same transaction
/// id, which the homeserver recognises).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_burst_repeats_and_loses_nothing() {
    const N: usize = 120;
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let mut s = setup(&store, &gitlab, false, "").await;
    s.config.extra.push_str(&format!(
        "[alerts]\nwebhook_token_env = \"TEST_AM_TOKEN\"\ndefault_targets = [\"matrix:{}\"]\nstorm_threshold = 1000\n",
        s.room
    ));
    s.config.env.push(("TEST_AM_TOKEN".into(), AM_TOKEN.into()));
    let mut bot = Shepherd::serve(&s.config).await;
    bot.wait_http(WAIT).await;
    s.alice.wait_joined(&s.room, BOT, WAIT).await;
    // Alertmanager's part: POST each notification until it is answered 200, again after a
    // failure (the bot dedups a repeated body).
    let url = format!("{}/hooks/alertmanager", bot.base_url());
    let poster = tokio::spawn(async move {
        let client = reqwest::Client::new();
        for i in 0..N {
            loop {
                let answered = client
                    .post(&url)
                    .bearer_auth(AM_TOKEN)
                    .json(&alert_notification(i))
                    .send()
                    .await;
                if answered.is_ok_and(|r| r.status().as_u16() == 200) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    });
    let numbers = |seen: &[Seen]| alert_numbers(seen, &s.room);
    // The first lines are through while notifications are still coming: kill it now.
    s.alice.until(WAIT, |seen| !numbers(seen).is_empty()).await;
    bot.kill9().await;
    let at_the_crash = numbers(&s.alice.seen()).len();
    assert!(
        at_the_crash < N,
        "the crash came after everything was delivered"
    );
    let bot = Shepherd::serve(&s.config).await;
    poster.await.expect("every notification answered 200");
    let all = s
        .alice
        .until(Duration::from_secs(60), |seen| numbers(seen).len() >= N)
        .await;
    let got = numbers(&s.alice.seen());
    assert!(all, "{} of {N}: {got:?}\n{}", got.len(), bot.stderr());
    // Let anything repeated show up before judging.
    s.alice.synced().await;
    let got = numbers(&s.alice.seen());
    assert_eq!(
        got,
        (0..N).collect::<Vec<_>>(),
        "every line once, in order ({at_the_crash} were through at the crash)"
    );
}
