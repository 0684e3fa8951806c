//! `bench hooks [deliveries]`: webhook ingestion of the real release `shepherd serve`.
//!
//! A fixed number of concurrent HTTP/1.1 keep-alive clients ([`CLIENTS`], each its own
//! connection, each sending its share of the deliveries one after another) POST GitLab Note
//! Hooks to `/hooks/gitlab` with GitLab's real headers. Every delivery is a distinct event: its
//! own note id, `Idempotency-Key`, `X-Gitlab-Event-UUID` and `X-Gitlab-Webhook-UUID`; the bodies
//! are the double's `note_hook_payload` (GitLab's documented shape), serialized before the
//! clock starts. Throughput counts the deliveries answered 202 (each one committed to the
//! store before its answer) per second of wall time from the first request to the last answer.
//!
//! Four shepherd runs: {SQLite, PostgreSQL} x {a comment without a command ("Looks good to
//! me"), a comment with a command ("@shepherd ping")}. For each run the bench also measures
//! how long until every stored event was processed by the workers (the last `gitlab-event`
//! request marked done, read from the store's `updated_at`) and, with the command, until every
//! `pong` reply was posted as a merge-request note (the double's arrival time of the last
//! `POST .../notes`): each command needs the commenter's access level from the members API
//! first, so the double knows the project, the merge request and the commenter (a Developer).
//!
//! The floor, measured in the same run with the same clients and payloads: a minimal axum
//! server (the workspace's axum, in a child process of this binary like shepherd is) that reads
//! the body and answers 200 without storing anything.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use shepherd_tests::gitlab::{GitLabDouble, NoteRecord, Route, User, VERSION, note_hook_payload};
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::Barrier;

use super::{Row, backend_label, log_problems, ms, row, shipped_queue_env};

/// Concurrent keep-alive clients.
pub const CLIENTS: usize = 16;
const SECRET: &str = "bench-webhook-secret-0123456789";
const MR_PROJECT: &str = "cki-project/pipeline-definition";
/// Note ids of the benchmark's comments start here (far from the double's own ids).
const FIRST_NOTE_ID: u64 = 10_000_000;

/// What each comment says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comment {
    NoCommand,
    Ping,
}

impl Comment {
    fn text(self) -> &'static str {
        match self {
            Comment::NoCommand => "Looks good to me",
            Comment::Ping => "@shepherd ping",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Comment::NoCommand => "no command",
            Comment::Ping => "`@shepherd ping`",
        }
    }
}

/// One webhook request, ready to send.
struct Delivery {
    body: Vec<u8>,
    idempotency_key: String,
    event_uuid: String,
    webhook_uuid: String,
}

/// A new random (version 4) UUID, as GitLab puts in its webhook headers.
fn uuid4() -> String {
    uuid::Builder::from_random_bytes(rand::random())
        .into_uuid()
        .to_string()
}

/// The project, merge request and commenter the comments are about.
struct Scene {
    gitlab: GitLabDouble,
    mr: shepherd_tests::gitlab::MergeRequest,
    author: User,
}

async fn scene() -> Scene {
    let gitlab = GitLabDouble::start().await;
    let alice = gitlab.add_user("alice");
    gitlab.add_member(MR_PROJECT, alice, 30);
    let iid = gitlab.add_mr(MR_PROJECT, MR_PROJECT, "fix-tests", alice);
    let mr = gitlab.mr(MR_PROJECT, iid).expect("the merge request");
    let author = User {
        id: alice,
        username: "alice".into(),
        name: "alice".into(),
    };
    Scene { gitlab, mr, author }
}

/// `n` distinct Note Hook deliveries saying `comment`, dealt round-robin to the clients.
fn deliveries(scene: &Scene, comment: Comment, n: usize) -> Vec<Vec<Delivery>> {
    let base = scene.gitlab.url();
    let mut per_client: Vec<Vec<Delivery>> = (0..CLIENTS).map(|_| Vec::new()).collect();
    for i in 0..n {
        let now = Utc::now();
        let note = NoteRecord {
            id: FIRST_NOTE_ID + i as u64,
            project_id: scene.mr.project_id,
            mr_iid: scene.mr.iid,
            noteable_id: scene.mr.id,
            author_id: scene.author.id,
            author: scene.author.username.clone(),
            body: comment.text().to_string(),
            created_at: now,
            updated_at: now,
            edits: 0,
        };
        let payload = note_hook_payload(&base, &scene.mr, &scene.author, &note, "create");
        per_client[i % CLIENTS].push(Delivery {
            body: serde_json::to_vec(&payload).expect("json"),
            idempotency_key: uuid4(),
            event_uuid: uuid4(),
            webhook_uuid: uuid4(),
        });
    }
    per_client
}

/// What the clients saw.
pub struct Load {
    pub wall: Duration,
    pub latency: Row,
    /// Answers by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Transport errors (no answer).
    pub errors: Vec<String>,
    /// When the first request was sent (monotonic, and Unix ms for the store's times).
    pub started: Instant,
    pub started_unix_ms: i64,
}

impl Load {
    pub fn count(&self, status: u16) -> usize {
        self.statuses.get(&status).copied().unwrap_or(0)
    }

    pub fn per_second(&self, status: u16) -> f64 {
        self.count(status) as f64 / self.wall.as_secs_f64()
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Sends every delivery to `url` from [`CLIENTS`] keep-alive clients at once. Each client first
/// opens its connection with `GET warm_url` (not timed).
async fn load(
    url: &str,
    warm_url: &str,
    instance: &str,
    per_client: Vec<Vec<Delivery>>,
    name: &str,
) -> Load {
    let barrier = Arc::new(Barrier::new(per_client.len() + 1));
    let mut tasks = Vec::new();
    for batch in per_client {
        let barrier = barrier.clone();
        let url = url.to_string();
        let warm_url = warm_url.to_string();
        let instance = instance.to_string();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(10))
                .build()
                .expect("HTTP client");
            let warm = client.get(&warm_url).send().await.expect("warm-up request");
            let _ = warm.bytes().await;
            barrier.wait().await;
            let mut samples = Vec::with_capacity(batch.len());
            let mut statuses: BTreeMap<u16, usize> = BTreeMap::new();
            let mut errors = Vec::new();
            for d in batch {
                let sent = Instant::now();
                let answer = client
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .header(reqwest::header::USER_AGENT, format!("GitLab/{VERSION}"))
                    .header("X-Gitlab-Event", "Note Hook")
                    .header("X-Gitlab-Token", SECRET)
                    .header("X-Gitlab-Instance", &instance)
                    .header("X-Gitlab-Webhook-UUID", d.webhook_uuid)
                    .header("X-Gitlab-Event-UUID", d.event_uuid)
                    .header("Idempotency-Key", d.idempotency_key)
                    .body(d.body)
                    .send()
                    .await;
                match answer {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        // Read the answer to its end, as GitLab does.
                        let _ = r.bytes().await;
                        samples.push(sent.elapsed());
                        *statuses.entry(status).or_default() += 1;
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            (samples, statuses, errors, Instant::now())
        }));
    }
    barrier.wait().await;
    let started = Instant::now();
    let started_unix_ms = unix_ms();
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
    Load {
        wall: last.saturating_duration_since(started),
        latency: row(name, samples),
        statuses,
        errors,
        started,
        started_unix_ms,
    }
}

/// `bench hook-floor`: the floor server. Prints its port on stdout, then serves until killed.
pub async fn floor_server() {
    use axum::body::Bytes;
    use axum::http::StatusCode;
    let app = axum::Router::new().fallback(|body: Bytes| async move {
        // Read, not stored: the body's length is the only thing looked at.
        std::hint::black_box(body.len());
        StatusCode::OK
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the floor server");
    let port = listener.local_addr().expect("address").port();
    println!("{port}");
    axum::serve(listener, app).await.expect("floor server");
}

/// The floor: the same load against the minimal axum server in a child process.
async fn floor(scene: &Scene, comment: Comment, n: usize) -> Load {
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("own path"))
        .arg("hook-floor")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the floor server");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let port: u16 = lines
        .next_line()
        .await
        .expect("read the floor's port")
        .and_then(|l| l.trim().parse().ok())
        .expect("the floor prints its port");
    let base = format!("http://127.0.0.1:{port}");
    let result = load(
        &format!("{base}/hooks/gitlab"),
        &format!("{base}/healthz"),
        &scene.gitlab.url(),
        deliveries(scene, comment, n),
        &format!("floor: minimal axum, read body, 200 ({})", comment.label()),
    )
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    result
}

/// The disk's floor: `n` sequential 4 KiB appends, each followed by `fdatasync`, in a file in
/// the temporary folder the SQLite stores live in (the least a durable commit costs there).
fn fsync_floor(n: usize) -> Row {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.path().join("fsync"))
        .expect("open");
    let block = [b'x'; 4096];
    let mut samples = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        file.write_all(&block).expect("write");
        file.sync_data().expect("fdatasync");
        samples.push(t.elapsed());
    }
    row(
        "floor: 4 KiB append + fdatasync, sequential, same disk",
        samples,
    )
}

/// One shepherd run.
pub struct Run {
    pub backend: Backend,
    pub comment: Comment,
    pub load: Load,
    /// Events stored (requests of kind `gitlab-event`).
    pub stored: i64,
    /// From the first request until the last stored event was done.
    pub drained: Option<Duration>,
    /// From the first request until the last reply note reached GitLab (with a command).
    pub replied: Option<Duration>,
    pub replies: usize,
    /// Items parked as dead, and items that needed more than one attempt.
    pub dead: i64,
    pub retried: i64,
    pub member_lookups: usize,
    /// Events processed per second while the POSTs went on, and over the last 500.
    pub rate_during: f64,
    pub rate_last: f64,
    pub warnings: usize,
    pub errors: usize,
}

async fn scalar(pool: &sqlx::AnyPool, sql: &str) -> Option<i64> {
    sqlx::query_scalar::<_, Option<i64>>(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn shepherd_run(backend: Backend, comment: Comment, n: usize) -> Run {
    let scene = scene().await;
    let store = TestStore::new(backend).await;
    let mut config = ShepherdConfig::new(&store, &scene.gitlab);
    // Thousands of comments by one person in seconds: lift the per-person and per-room limits
    // and the GitLab API budget, which would otherwise (rightly) refuse or pace them.
    config.rate_limits = "per_identity_per_minute = 1000000\nper_room_per_minute = 1000000".into();
    config.gitlab = "requests_per_minute = 1000000".into();
    config.extra = r#"
[[people]]
name = "gitlab-users"
identities = ["gitlab:*"]
groups = ["developers"]

[gitlab_comments]
webhook_secret_env = "BENCH_WEBHOOK_SECRET"
"#
    .into();
    config
        .env
        .push(("BENCH_WEBHOOK_SECRET".into(), SECRET.into()));
    config.env.extend(shipped_queue_env());
    let mut bot = Shepherd::serve(&config).await;
    bot.wait_http(Duration::from_secs(30)).await;
    let base = bot.base_url();
    let per_client = deliveries(&scene, comment, n);
    let name = format!("shepherd, {} ({})", backend_label(backend), comment.label());
    let load = load(
        &format!("{base}/hooks/gitlab"),
        &format!("{base}/healthz"),
        &scene.gitlab.url(),
        per_client,
        &name,
    )
    .await;
    let accepted = load.count(202) as i64;

    // Every accepted event processed: the last one's `updated_at` is when it was done.
    let pool = store.connect().await;
    let deadline = Instant::now() + Duration::from_secs(900);
    let mut drained = None;
    while Instant::now() < deadline {
        let done = scalar(
            &pool,
            "SELECT COUNT(*) FROM requests WHERE kind = 'gitlab-event' AND state = 'done'",
        )
        .await
        .unwrap_or(0);
        let dead = scalar(
            &pool,
            "SELECT COUNT(*) FROM requests WHERE kind = 'gitlab-event' AND state = 'dead'",
        )
        .await
        .unwrap_or(0);
        if done + dead >= accepted {
            let last = scalar(
                &pool,
                "SELECT MAX(updated_at) FROM requests WHERE kind = 'gitlab-event'",
            )
            .await
            .unwrap_or(load.started_unix_ms);
            drained = Some(Duration::from_millis(
                (last - load.started_unix_ms).max(0) as u64
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // How fast the workers went with the whole backlog waiting, and at the end.
    let done_at: Vec<i64> = sqlx::query_scalar(
        "SELECT updated_at FROM requests WHERE kind = 'gitlab-event' AND state = 'done' \
         ORDER BY updated_at",
    )
    .fetch_all(&pool)
    .await
    .expect("done times");
    let ingest_end = load.started_unix_ms + load.wall.as_millis() as i64;
    let during = done_at.iter().filter(|t| **t <= ingest_end).count();
    let rate_during = during as f64 / load.wall.as_secs_f64();
    let tail = done_at.len().min(500);
    let rate_last = match (done_at.last(), done_at.len().checked_sub(tail)) {
        (Some(last), Some(first)) if tail > 1 && *last > done_at[first] => {
            (tail - 1) as f64 * 1000.0 / (*last - done_at[first]) as f64
        }
        _ => 0.0,
    };
    // With a command: every reply posted as a note.
    let (mut replied, mut replies) = (None, 0);
    if comment == Comment::Ping {
        let want = accepted as usize;
        let ok = scene
            .gitlab
            .wait_for(
                |reqs| {
                    reqs.iter()
                        .filter(|r| r.is(Route::CreateNote) && r.status == Some(201))
                        .count()
                        >= want
                },
                Duration::from_secs(900),
            )
            .await;
        let requests = scene.gitlab.requests();
        let notes: Vec<_> = requests
            .iter()
            .filter(|r| r.is(Route::CreateNote) && r.status == Some(201))
            .collect();
        replies = notes.len();
        if ok {
            replied = notes
                .iter()
                .map(|r| r.time)
                .max()
                .map(|t| t.saturating_duration_since(load.started));
        }
    }
    let member_lookups = scene
        .gitlab
        .requests()
        .iter()
        .filter(|r| r.is(Route::GetMember))
        .count();
    let stored = scalar(
        &pool,
        "SELECT COUNT(*) FROM requests WHERE kind = 'gitlab-event'",
    )
    .await
    .unwrap_or(0);
    let dead = scalar(&pool, "SELECT COUNT(*) FROM requests WHERE state = 'dead'")
        .await
        .unwrap_or(0);
    let retried = scalar(&pool, "SELECT COUNT(*) FROM requests WHERE attempts > 1")
        .await
        .unwrap_or(0);
    pool.close().await;
    let (warnings, errors) = log_problems(&name, &bot.stderr());
    bot.kill9().await;
    Run {
        backend,
        comment,
        load,
        stored,
        drained,
        replied,
        replies,
        dead,
        retried,
        member_lookups,
        rate_during,
        rate_last,
        warnings,
        errors,
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.2} s", d.as_secs_f64()))
        .unwrap_or_else(|| "—".into())
}

fn statuses(load: &Load) -> String {
    let mut parts: Vec<String> = load
        .statuses
        .iter()
        .map(|(s, n)| format!("{n}×{s}"))
        .collect();
    if !load.errors.is_empty() {
        parts.push(format!("{}×no answer", load.errors.len()));
    }
    parts.join(", ")
}

pub async fn main(n: usize) {
    let scene = scene().await;
    let sizes: Vec<usize> = [Comment::NoCommand, Comment::Ping]
        .into_iter()
        .map(|c| deliveries(&scene, c, 1)[0][0].body.len())
        .collect();
    let floor_plain = floor(&scene, Comment::NoCommand, n).await;
    let floor_ping = floor(&scene, Comment::Ping, n).await;
    let disk = fsync_floor(2000);
    drop(scene);
    let mut runs = Vec::new();
    for backend in [Backend::Sqlite, Backend::Postgres] {
        for comment in [Comment::NoCommand, Comment::Ping] {
            runs.push(shepherd_run(backend, comment, n).await);
        }
    }

    println!(
        "{n} Note Hook deliveries per run ({} and {} bytes), {CLIENTS} concurrent keep-alive clients; \
         latency of one POST in ms\n",
        sizes[0], sizes[1]
    );
    println!("| server | answers | answered/s | p50 | p99 | max |");
    println!("|---|---|---|---|---|---|");
    for f in [&floor_plain, &floor_ping] {
        println!(
            "| {} | {} | {:.0} | {} | {} | {} |",
            f.latency.name,
            statuses(f),
            f.per_second(200),
            ms(f.latency.p50),
            ms(f.latency.p99),
            ms(f.latency.max)
        );
    }
    for r in &runs {
        println!(
            "| {} | {} | **{:.0}** (202) | {} | {} | {} |",
            r.load.latency.name,
            statuses(&r.load),
            r.load.per_second(202),
            ms(r.load.latency.p50),
            ms(r.load.latency.p99),
            ms(r.load.latency.max)
        );
    }
    println!(
        "\n{}: p50 {} ms, p99 {} ms, max {} ms",
        disk.name,
        ms(disk.p50),
        ms(disk.p99),
        ms(disk.max)
    );
    println!(
        "\nAfter the POSTs (times from the first POST; ingestion = the last 202)\n\n\
         | run | stored | ingestion | all events processed | processed/s: during ingestion, last 500 | all replies posted | member lookups | dead | retried | WARN/ERROR lines |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in &runs {
        println!(
            "| {} ({}) | {} | {} | {} | {:.0}, {:.0} | {} | {} | {} | {} | {}/{} |",
            backend_label(r.backend),
            r.comment.label(),
            r.stored,
            secs(Some(r.load.wall)),
            secs(r.drained),
            r.rate_during,
            r.rate_last,
            if r.comment == Comment::Ping {
                format!("{} ({} notes)", secs(r.replied), r.replies)
            } else {
                "—".into()
            },
            r.member_lookups,
            r.dead,
            r.retried,
            r.warnings,
            r.errors
        );
    }
    for r in &runs {
        if !r.load.errors.is_empty() {
            eprintln!(
                "{}: {} requests without an answer, e.g. {}",
                r.load.latency.name,
                r.load.errors.len(),
                r.load.errors[0]
            );
        }
    }
}
