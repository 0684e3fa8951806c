//! Durable at line rate: what the group commit, the batched alert lane and the recovery after a
//! crash promise, against the real binary, a real ngIRCd and both stores.
//!
//! - A group commit that fails answers every request in it 503 and stores none of them; what
//!   was answered 200 is stored; nothing is lost once the store works again.
//! - kill -9 in the middle of a burst of 10,000 webhooks (alerts and GitLab Note Hooks, 8
//!   clients): every delivery answered 2xx is stored and processed; the senders retry exactly
//!   the deliveries that got no answer; afterwards each is stored once, each alert line is
//!   stored once and said on IRC in arrival order, and the lane flows again at once.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shepherd_tests::gitlab::GitLabDouble;
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore};
use shepherd_tests::irc_client::{IrcClient, Message, joined};
use shepherd_tests::ircd::{Ngircd, Throttle};
use shepherd_tests::on_both_stores;

const WAIT: Duration = Duration::from_secs(60);
const BOT: &str = "shepherd";
const TOKEN: &str = "am-token-1";
const HOOK_SECRET: &str = "hook-secret-1";
const CLIENTS: usize = 8;

fn config(store: &TestStore, gitlab: &GitLabDouble, irc_port: u16) -> ShepherdConfig {
    let mut config = ShepherdConfig::new(store, gitlab);
    config.extra = format!(
        r##"[irc]
server = "127.0.0.1"
port = {irc_port}
tls = false
channels = ["#alerts"]
flood_burst = 100000
flood_rate = 100000.0
ping_interval_secs = 5
reconnect_max_secs = 1

[alerts]
webhook_token_env = "TEST_AM_TOKEN"
default_targets = ["irc:#alerts"]

[gitlab_comments]
webhook_secret_env = "TEST_WEBHOOK_SECRET"
"##
    );
    // A lease far longer than the test: only taking back what the killed process held lets
    // its leased items run again in time.
    config
        .env
        .push(("SHEPHERD_QUEUE__LEASE_SECONDS".into(), "600".into()));
    // Info lines per stored webhook are 10,000 lines of noise here.
    config.env.push((
        "SHEPHERD_LOG".into(),
        "warn,shepherd_bot::app=info,shepherd_core::queue=info".into(),
    ));
    config.env.push(("TEST_AM_TOKEN".into(), TOKEN.into()));
    config
        .env
        .push(("TEST_WEBHOOK_SECRET".into(), HOOK_SECRET.into()));
    config
}

/// A notification shaped like Alertmanager's (version 4) with one firing alert named `name`.
fn notification(name: &str) -> Value {
    json!({
        "receiver": "shepherd",
        "status": "firing",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": name, "instance": "db1:9100", "severity": "info"},
            "annotations": {"summary": format!("{name} is firing")},
            "startsAt": "2026-11-25T07:47:20Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://127.0.0.1:9090/graph?g0.expr=up",
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

/// A Note Hook for a plain comment (no command) with its own note id.
fn note_hook(n: usize) -> Value {
    json!({
        "object_kind": "note",
        "event_type": "note",
        "user": {"id": 7, "name": "Alice", "username": "alice", "avatar_url": null, "email": "[REDACTED]"},
        "project_id": 3,
        "project": {"id": 3, "name": "p", "path_with_namespace": "g/p", "web_url": "https://gitlab.example/g/p"},
        "object_attributes": {"id": 100_000 + n, "note": format!("Looks good to me ({n})"), "noteable_type": "MergeRequest", "system": false, "action": "create"},
        "merge_request": {"id": 99, "iid": 4}
    })
}

/// One delivery of the burst: an alert notification or a Note Hook.
#[derive(Clone)]
struct Delivery {
    n: usize,
    alert: bool,
    body: Vec<u8>,
}

impl Delivery {
    fn new(n: usize) -> Self {
        let alert = n.is_multiple_of(2);
        let body = if alert {
            notification(&alert_name(n))
        } else {
            note_hook(n)
        };
        Self {
            n,
            alert,
            body: serde_json::to_vec(&body).expect("json"),
        }
    }

    /// POSTs it; the status and body, or None when no answer came.
    async fn send(&self, client: &reqwest::Client, base: &str) -> Option<(u16, Value)> {
        let req = if self.alert {
            client
                .post(format!("{base}/hooks/alertmanager"))
                .header("Authorization", format!("Bearer {TOKEN}"))
        } else {
            client
                .post(format!("{base}/hooks/gitlab"))
                .header("X-Gitlab-Token", HOOK_SECRET)
                .header("X-Gitlab-Event", "Note Hook")
                .header("X-Gitlab-Event-UUID", format!("event-{}", self.n))
        };
        let r = req
            .header("Content-Type", "application/json")
            .body(self.body.clone())
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        let body = r.json().await.ok()?;
        Some((status, body))
    }
}

fn alert_name(n: usize) -> String {
    format!("Burst{n:05}")
}

fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

async fn human_in_alerts(addr: &str) -> IrcClient {
    let mut human = IrcClient::connect(addr, "human").await;
    human.join("#alerts").await;
    human
}

fn bot_lines(msgs: &[Message]) -> Vec<String> {
    msgs.iter()
        .filter(|m| {
            m.is_message_from(BOT)
                && m.param(0)
                    .is_some_and(|c| c.eq_ignore_ascii_case("#alerts"))
        })
        .map(|m| m.text().to_string())
        .collect()
}

/// The alert numbers in the bot's lines, in the order they were said.
fn said(human: &IrcClient) -> Vec<usize> {
    said_in(&human.received())
}

fn said_in(msgs: &[Message]) -> Vec<usize> {
    bot_lines(msgs)
        .iter()
        .filter_map(|l| burst_number(l))
        .collect()
}

/// The number in the first `Burst<nnnnn>` of a line or payload.
fn burst_number(text: &str) -> Option<usize> {
    text.split("Burst")
        .nth(1)
        .and_then(|rest| rest.get(..5))
        .and_then(|n| n.parse().ok())
}

async fn trigger_sql(store: &TestStore, backend: Backend, condition: &str) {
    let pool = store.connect().await;
    match backend {
        Backend::Sqlite => {
            sqlx::query("DROP TRIGGER IF EXISTS fail_inserts")
                .execute(&pool)
                .await
                .expect("drop");
            if !condition.is_empty() {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE TRIGGER fail_inserts BEFORE INSERT ON requests WHEN {condition} \
                     BEGIN SELECT RAISE(ABORT, 'forced failure (test)'); END"
                )))
                .execute(&pool)
                .await
                .expect("trigger");
            }
        }
        Backend::Postgres => {
            sqlx::query("DROP TRIGGER IF EXISTS fail_inserts ON requests")
                .execute(&pool)
                .await
                .expect("drop");
            if !condition.is_empty() {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE OR REPLACE FUNCTION fail_insert() RETURNS trigger AS $$ BEGIN \
                     IF {condition} THEN RAISE EXCEPTION 'forced failure (test)'; END IF; \
                     RETURN NEW; END $$ LANGUAGE plpgsql"
                )))
                .execute(&pool)
                .await
                .expect("function");
                sqlx::query(
                    "CREATE TRIGGER fail_inserts BEFORE INSERT ON requests \
                     FOR EACH ROW EXECUTE FUNCTION fail_insert()",
                )
                .execute(&pool)
                .await
                .expect("trigger");
            }
        }
    }
}

/// Sends `deliveries` from `CLIENTS` concurrent clients; the answers by delivery number.
async fn burst(base: &str, deliveries: &[Delivery]) -> HashMap<usize, Option<(u16, Value)>> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let mine: Vec<Delivery> = deliveries
            .iter()
            .skip(c)
            .step_by(CLIENTS)
            .cloned()
            .collect();
        let base = base.to_string();
        tasks.spawn(async move {
            let client = http_client();
            let mut out = Vec::new();
            for d in mine {
                out.push((d.n, d.send(&client, &base).await));
            }
            out
        });
    }
    let mut answers = HashMap::new();
    while let Some(done) = tasks.join_next().await {
        answers.extend(done.expect("client"));
    }
    answers
}

async fn stored(store: &TestStore, name: &str) -> i64 {
    store
        .count(&format!(
            "SELECT COUNT(*) FROM requests WHERE kind = 'alert-notification' \
             AND payload LIKE '%\"alertname\":\"{name}\"%'"
        ))
        .await
}

async fn failed_group_commit(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let human = human_in_alerts(&server.addr()).await;
    let bot = Shepherd::serve(&config(&store, &gitlab, server.port())).await;
    bot.wait_http(WAIT).await;
    assert!(human.wait_for(WAIT, joined(BOT, "#alerts")).await);

    // The store refuses every write ("disk full"): every request is answered 503, none stored.
    let condition = match backend {
        Backend::Sqlite => "1",
        Backend::Postgres => "TRUE",
    };
    trigger_sql(&store, backend, condition).await;
    let full: Vec<Delivery> = (0..64).map(|n| Delivery::new(n * 2)).collect();
    let answers = burst(&bot.base_url(), &full).await;
    for (n, answer) in &answers {
        assert_eq!(
            answer.as_ref().map(|a| a.0),
            Some(503),
            "delivery {n} while the store fails: {answer:?}"
        );
    }
    assert_eq!(
        store.count("SELECT COUNT(*) FROM requests").await,
        0,
        "nothing stored"
    );
    let failures = bot
        .metric("shepherd_store_group_commit_failures_total")
        .await
        .unwrap_or(0.0);
    assert!(failures >= 1.0, "failed groups are counted: {failures}");

    // One poisoned write in a group fails the group: whatever was answered 200 is stored,
    // whatever was answered 503 is not (no partial acknowledgement), and the poisoned ones are
    // never acknowledged.
    let poison = |n: usize| n.is_multiple_of(16);
    let poisoned: Vec<String> = (0..400)
        .step_by(2)
        .filter(|n| poison(*n))
        .map(alert_name)
        .collect();
    let condition = poisoned
        .iter()
        .map(|name| format!("NEW.payload LIKE '%{name}%'"))
        .collect::<Vec<_>>()
        .join(" OR ");
    trigger_sql(&store, backend, &condition).await;
    let mixed: Vec<Delivery> = (0..200).map(|n| Delivery::new(n * 2)).collect();
    let answers = burst(&bot.base_url(), &mixed).await;
    let mut retry = Vec::new();
    let mut shared_failure = 0;
    for d in &mixed {
        let name = alert_name(d.n);
        let answer = answers.get(&d.n).cloned().flatten();
        let in_store = stored(&store, &name).await;
        match answer {
            Some((200, body)) => {
                assert!(!poison(d.n), "{name} is poisoned and was acknowledged");
                assert_eq!(in_store, 1, "{name} was answered 200: {body}");
                let id = body["request"].as_str().expect("request id");
                assert_eq!(
                    store
                        .count(&format!("SELECT COUNT(*) FROM requests WHERE id = '{id}'"))
                        .await,
                    1
                );
            }
            Some((503, _)) => {
                assert_eq!(in_store, 0, "{name} was answered 503 but is stored");
                if !poison(d.n) {
                    shared_failure += 1;
                    retry.push(d.clone());
                }
            }
            other => panic!("{name}: unexpected answer {other:?}"),
        }
    }
    println!(
        "{shared_failure} clean notifications failed with a poisoned one in their group, of {}",
        mixed.len()
    );

    // The store works again: the senders retry what was refused, and everything is said once.
    trigger_sql(&store, backend, "").await;
    let answers = burst(&bot.base_url(), &retry).await;
    for d in &retry {
        assert_eq!(
            answers.get(&d.n).cloned().flatten().map(|a| a.0),
            Some(200),
            "retry of {}",
            d.n
        );
    }
    let expected: HashSet<usize> = mixed.iter().map(|d| d.n).filter(|n| !poison(*n)).collect();
    assert!(
        human
            .wait_for(WAIT, |m| said_in(m).into_iter().collect::<HashSet<_>>()
                == expected)
            .await,
        "every clean alert said: {} of {}\n{}",
        said(&human).len(),
        expected.len(),
        bot.stderr()
    );
    let lines = said(&human);
    assert_eq!(lines.len(), expected.len(), "none twice");
    // Every acknowledged notification was one write of a committed group.
    let writes = bot.metric("shepherd_store_group_writes_total").await;
    let commits = bot.metric("shepherd_store_group_commits_total").await;
    let committed = bot.metric("shepherd_store_group_size_count").await;
    assert!(
        writes.is_some_and(|w| w >= expected.len() as f64) && commits == committed,
        "writes {writes:?}, commits {commits:?}, sizes observed {committed:?}"
    );
}
on_both_stores!(
    a_failed_group_commit_answers_every_write_503_and_stores_none,
    failed_group_commit
);

async fn kill_in_a_burst(backend: Backend) {
    const TOTAL: usize = 10_000;
    const KILL_AFTER: usize = 3_000;
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let human = human_in_alerts(&server.addr()).await;
    let config = config(&store, &gitlab, server.port());
    let mut bot = Shepherd::serve(&config).await;
    bot.wait_http(WAIT).await;
    assert!(human.wait_for(WAIT, joined(BOT, "#alerts")).await);

    let deliveries: Arc<Vec<Delivery>> = Arc::new((0..TOTAL).map(Delivery::new).collect());
    let answered = Arc::new(AtomicUsize::new(0));
    // Each client sends its share until a delivery gets no answer (the process died); then it
    // stops and remembers where.
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let deliveries = deliveries.clone();
        let answered = answered.clone();
        let base = bot.base_url();
        tasks.spawn(async move {
            let client = http_client();
            let mut got: Vec<(usize, u16, Value)> = Vec::new();
            let mut unanswered: Vec<usize> = Vec::new();
            let mut rest: Vec<usize> = Vec::new();
            let mine: Vec<usize> = (c..TOTAL).step_by(CLIENTS).collect();
            for (k, &n) in mine.iter().enumerate() {
                match deliveries[n].send(&client, &base).await {
                    Some((status, body)) => {
                        got.push((n, status, body));
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    None => {
                        unanswered.push(n);
                        rest.extend(&mine[k + 1..]);
                        break;
                    }
                }
            }
            (got, unanswered, rest)
        });
    }
    let deadline = Instant::now() + WAIT;
    while answered.load(Ordering::Relaxed) < KILL_AFTER {
        assert!(Instant::now() < deadline, "the burst never got going");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bot.kill9().await;
    let mut first: Vec<(usize, u16, Value)> = Vec::new();
    let mut unanswered: Vec<usize> = Vec::new();
    let mut unsent: Vec<usize> = Vec::new();
    while let Some(done) = tasks.join_next().await {
        let (got, no_answer, rest) = done.expect("client");
        first.extend(got);
        unanswered.extend(no_answer);
        unsent.extend(rest);
    }
    // Everything answered 2xx before the crash is in the store.
    for (n, status, body) in &first {
        assert!(
            *status == 200 || *status == 202,
            "delivery {n}: {status} {body}"
        );
        let id = body["request"].as_str().expect("request id");
        assert_eq!(
            store
                .count(&format!("SELECT COUNT(*) FROM requests WHERE id = '{id}'"))
                .await,
            1,
            "delivery {n} was acknowledged before the crash but is not stored"
        );
    }
    let said_before = said(&human).len();
    assert_eq!(
        first.len() + unanswered.len() + unsent.len(),
        TOTAL,
        "every delivery is answered, unanswered or unsent"
    );

    // Restart; the senders retry exactly what got no answer, then send the rest.
    let restarted = Instant::now();
    let bot = Shepherd::serve(&config).await;
    bot.wait_http(WAIT).await;
    let lines_at_restart = said(&human).len();
    let again: Vec<Delivery> = unanswered
        .iter()
        .chain(&unsent)
        .map(|n| deliveries[*n].clone())
        .collect();
    // The lane flows again as soon as the new process is up: what the dead one held is taken
    // back at once (the lease would hold it for ten minutes here).
    let base = bot.base_url();
    let (later, flowing) = tokio::join!(burst(&base, &again), async {
        human
            .wait_for(WAIT, |m| bot_lines(m).len() > lines_at_restart)
            .await
            .then(|| restarted.elapsed())
    });
    let flowing = flowing.expect("alert lines flow again after the restart");
    let mut retried_duplicates = 0;
    for n in &unanswered {
        match later.get(n).cloned().flatten() {
            Some((status, body)) if status == 200 || status == 202 => {
                if body["status"] == "duplicate" {
                    // Stored by the killed process, which died before it could answer.
                    retried_duplicates += 1;
                }
            }
            other => panic!("retry of {n}: {other:?}"),
        }
    }
    for n in &unsent {
        let answer = later.get(n).cloned().flatten();
        assert!(
            answer
                .as_ref()
                .is_some_and(|(s, b)| (*s == 200 || *s == 202) && b["status"] != "duplicate"),
            "{n} was never sent before, so it is new: {answer:?}"
        );
    }

    // Each delivery stored once and processed; nothing parked.
    let done_sql = "SELECT COUNT(*) FROM requests WHERE state = 'done'";
    assert!(
        store.wait_count(done_sql, TOTAL as i64, WAIT).await,
        "every delivery processed: {} of {TOTAL}\n{}",
        store.count(done_sql).await,
        bot.stderr()
    );
    assert_eq!(
        store.count("SELECT COUNT(*) FROM requests").await,
        TOTAL as i64
    );
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM outbox WHERE dedup_key LIKE 'alert:%'")
            .await,
        (TOTAL / 2) as i64,
        "one line per alert, stored once"
    );

    // Said on IRC: every alert, in the order the store took them; repeats only for lines in
    // flight at the crash.
    let order: Vec<String> = sqlx::query_scalar(
        "SELECT payload FROM requests WHERE kind = 'alert-notification' ORDER BY created_at, id",
    )
    .fetch_all(&store.connect().await)
    .await
    .expect("order");
    let order: Vec<usize> = order.iter().filter_map(|p| burst_number(p)).collect();
    assert_eq!(order.len(), TOTAL / 2);
    assert!(
        human
            .wait_for(WAIT, |m| said_in(m)
                .into_iter()
                .collect::<HashSet<_>>()
                .len()
                == TOTAL / 2)
            .await,
        "every alert said: {} distinct of {}\n{}",
        said(&human).into_iter().collect::<HashSet<_>>().len(),
        TOTAL / 2,
        bot.stderr()
    );
    let lines = said(&human);
    let mut seen = HashSet::new();
    let mut firsts = Vec::new();
    for n in &lines {
        if seen.insert(*n) {
            firsts.push(*n);
        }
    }
    assert_eq!(firsts, order, "said in the order they were stored");
    let repeated = lines.len() - firsts.len();
    println!(
        "killed after {} answers ({} lines said); {} unanswered, {} of them stored before the crash; \
         a new line {:.2} s after the restart began; {repeated} lines said twice",
        first.len(),
        said_before,
        unanswered.len(),
        retried_duplicates,
        flowing.as_secs_f64(),
    );
    assert!(
        repeated <= 32,
        "repeats are bounded by what was in flight at the crash (one round): {repeated}"
    );
}
on_both_stores!(
    kill_9_in_a_burst_of_10000_webhooks_loses_nothing,
    kill_in_a_burst
);
