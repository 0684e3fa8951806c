//! Bad input gets a clear answer and changes nothing: no request stored, no GitLab call,
//! no crash. Refusals are audited. A bad configuration stops shepherd before it touches
//! anything, naming the key.

use std::time::Duration;

use shepherd_tests::gitlab::GitLabDouble;
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore, shepherd_bin};
use shepherd_tests::on_both_stores;

const WAIT: Duration = Duration::from_secs(30);

async fn garbage(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let config = ShepherdConfig::new(&store, &gitlab);
    let mut bot = Shepherd::console(&config).await;
    let long = format!("retrigger 1 x={}", "y".repeat(20_000));
    let cases: Vec<(&[u8], &str)> = vec![
        (b"retriger 12", "did you mean `retrigger`?"),
        (b"frobnicate", "unknown command `frobnicate`"),
        (
            b"retrigger group/project/pipelines/abc",
            "is not a pipeline reference",
        ),
        (
            b"retrigger https://gitlab.example/g/p/-/merge_requests/3",
            "is not a pipeline reference",
        ),
        (b"retrigger", "retrigger"),
        (b"retrigger 12 msg=\"never closed", "never closed"),
        (b"retrigger 12 [a=1 b=2", "["),
        (b"retrigger 12 a=1 a=2", "`a`"),
        (b"silence alertname=x for forever", "silence"),
        (b"\xff\xfe retrigger \xc3", "unknown command"),
        (b"deploy kernel-webhooks group/project!4", "is not enabled"),
    ];
    for (line, _) in &cases {
        let mut bytes = line.to_vec();
        bytes.push(b'\n');
        bot.send_bytes(&bytes).await;
    }
    bot.send(&long).await;
    bot.send("ping").await;
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success(), "{}", bot.stderr());
    let lines = bot.lines();
    // One reply per line, in order, each the expected kind of answer, and all pointing on.
    assert_eq!(lines.len(), cases.len() + 2, "{}", lines.join("\n"));
    for ((input, expected), reply) in cases.iter().zip(&lines) {
        assert!(
            reply.contains(expected),
            "{:?} -> {reply:?} (expected {expected:?})",
            String::from_utf8_lossy(input)
        );
        assert!(!reply.contains('\n'));
        assert!(
            reply.contains("help") || reply.contains("not enabled"),
            "points to help: {reply}"
        );
    }
    // Still alive, and the 20,000-byte line was a valid command: queued, then answered by a
    // worker (after the inline `pong`): GitLab has no pipeline 1.
    let rest = &lines[cases.len()..];
    assert!(rest.iter().any(|l| l == "pong"), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.starts_with("GitLab says pipeline 1 of") && l.contains("not found")),
        "{rest:?}"
    );

    assert_eq!(
        store.count("SELECT COUNT(*) FROM requests").await,
        1,
        "only the long valid line"
    );
    assert!(
        gitlab
            .requests()
            .iter()
            .all(|r| r.path.ends_with("/pipelines/1") || r.path.contains("/pipelines/1/")),
        "GitLab saw only the valid command: {:?}",
        gitlab.requests()
    );
    assert!(gitlab.pipelines_created().is_empty());
}
on_both_stores!(
    malformed_commands_get_a_clear_reply_and_store_nothing,
    garbage
);

/// A line far longer than any command (here 32 MiB with no newline until the end, as from
/// `/dev/zero`) is read to its end without being kept: a refusal naming its size, nothing
/// stored, memory not grown by the line, and the next command answered.
async fn overlong(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let config = ShepherdConfig::new(&store, &gitlab);
    let mut bot = Shepherd::console(&config).await;
    bot.send("ping").await;
    bot.expect_line("pong", WAIT).await;
    let pid = bot.pid().expect("running");
    let (_, hwm_before) = shepherd_tests::measure::rss_kib(pid).expect("rss");
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..32 {
        bot.send_bytes(&chunk).await;
    }
    bot.send_bytes(b"\n").await;
    bot.send("ping").await;
    assert!(
        bot.wait_for(WAIT, |l| l.len() == 3).await,
        "{:?}",
        bot.lines()
    );
    let (_, hwm_after) = shepherd_tests::measure::rss_kib(pid).expect("rss");
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success(), "{}", bot.stderr());
    let lines = bot.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[1].starts_with("that line was 33554432 bytes long; a command is at most 65536 bytes"),
        "{}",
        lines[1]
    );
    assert_eq!(lines[2], "pong");
    // The line was not kept: the peak grew by far less than its 32 MiB.
    assert!(
        hwm_after.saturating_sub(hwm_before) < 8 * 1024,
        "peak RSS grew from {hwm_before} KiB to {hwm_after} KiB"
    );
    assert_eq!(store.count("SELECT COUNT(*) FROM requests").await, 0);
    assert!(gitlab.requests().is_empty(), "{:?}", gitlab.requests());
}
on_both_stores!(
    a_line_too_long_for_a_command_is_refused_unkept_and_the_next_is_answered,
    overlong
);

async fn unauthorized(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let old = gitlab.add_pipeline("g/p", "main", "success", &[]);
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.identity = "console:mallory".into();
    let mut bot = Shepherd::console(&config).await;
    bot.send(&format!("retrigger {}", old.web_url)).await;
    bot.send(&format!("cancel {}", old.web_url)).await;
    bot.send("whoami").await;
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success());
    let lines = bot.lines();
    assert_eq!(lines.len(), 3, "{lines:?}");
    assert!(
        lines[0].starts_with("sorry, you may not use `retrigger`"),
        "{}",
        lines[0]
    );
    assert!(lines[0].contains("admins or developers"), "{}", lines[0]);
    assert!(
        lines[0].contains("console:mallory is not a known identity"),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("sorry, you may not use `cancel`"),
        "{}",
        lines[1]
    );
    assert!(lines[2].contains("you are console:mallory"), "{}", lines[2]);
    assert!(!lines[2].contains("retrigger"), "{}", lines[2]);

    assert_eq!(store.count("SELECT COUNT(*) FROM requests").await, 0);
    assert_eq!(
        store
            .count(
                "SELECT COUNT(*) FROM audit WHERE outcome = 'refused' AND identity = 'console:mallory'"
            )
            .await,
        2
    );
    assert!(gitlab.requests().is_empty(), "{:?}", gitlab.requests());
}
on_both_stores!(unauthorized_identity_is_refused_and_audited, unauthorized);

async fn rate_limited(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let old = gitlab.add_pipeline("g/p", "main", "success", &[]);
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.production = false;
    config.rate_limits = "per_identity_per_minute = 3".into();
    let mut bot = Shepherd::console(&config).await;
    for _ in 0..3 {
        bot.send("ping").await;
    }
    bot.send(&format!("retrigger {}", old.web_url)).await;
    bot.send("ping").await;
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success());
    let lines = bot.lines();
    assert_eq!(lines[..3], ["pong", "pong", "pong"], "{lines:?}");
    // Told once; the line after it is dropped without another word.
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert!(
        lines[3].starts_with("slow down") && lines[3].contains("`retrigger` was not run"),
        "{lines:?}"
    );
    assert_eq!(store.count("SELECT COUNT(*) FROM requests").await, 0);
    assert!(gitlab.requests().is_empty());
}
on_both_stores!(
    commands_over_the_rate_limit_are_refused_and_not_stored,
    rate_limited
);

async fn run_cli(args: &[&str], config: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shepherd.toml");
    std::fs::write(&path, config).expect("write config");
    let mut cmd = tokio::process::Command::new(shepherd_bin());
    cmd.args(args)
        .arg("--config")
        .arg(&path)
        .current_dir(dir.path())
        .env_remove("SHEPHERD_CONFIG")
        .stdin(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(WAIT, cmd.output())
        .await
        .expect("shepherd answers in time")
        .expect("run shepherd");
    let leftover: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().to_string())
        .filter(|n| n != "shepherd.toml")
        .collect();
    assert!(
        leftover.is_empty(),
        "nothing created on a bad start: {leftover:?}"
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[tokio::test]
async fn a_bad_config_fails_at_start_naming_the_key() {
    let cases = [
        ("[queue]\nmax_attempts = \"many\"\n", "queue.max_attempts"),
        ("[gitlab]\nurll = \"https://x\"\n", "gitlab.urll"),
        ("[store]\nurl = \"mysql://db\"\n", "store.url"),
        ("[http]\nlisten = \"nowhere\"\n", "http.listen"),
        ("[permissions]\nretriger = [\"admins\"]\n", "retriger"),
        ("production = \n", "TOML"),
        // The herder: a pattern that does not compile, an unknown action, a delay that does
        // not parse, and no way to receive Job Hooks.
        (
            "[gitlab_comments]\nwebhook_secret_env = \"H\"\n[herder]\nprojects = [\"g/p\"]\n[[herder.matchers]]\nname = \"m\"\naction = \"retry\"\nmessages = [\"/oom(/i\"]\n",
            "herder.matchers[0].messages[0]",
        ),
        (
            "[gitlab_comments]\nwebhook_secret_env = \"H\"\n[herder]\nprojects = [\"g/p\"]\n[[herder.matchers]]\nname = \"m\"\naction = \"reboot\"\n",
            "herder.matchers",
        ),
        (
            "[gitlab_comments]\nwebhook_secret_env = \"H\"\n[herder]\nprojects = [\"g/p\"]\n[[herder.matchers]]\nname = \"m\"\naction = \"retry\"\nretry_delays = [\"1 fortnight\"]\n",
            "herder.matchers[0].retry_delays[0]",
        ),
        (
            "[herder]\nprojects = [\"g/p\"]\n",
            "needs [gitlab_comments]",
        ),
    ];
    for (config, key) in cases {
        for sub in [&["config", "check"][..], &["console"][..]] {
            let (code, stdout, stderr) = run_cli(sub, config, &[]).await;
            assert_eq!(code, 2, "{sub:?} with {config:?}: {stderr}");
            assert!(stderr.contains(key), "{sub:?} {config:?}: {stderr}");
            assert!(stdout.is_empty(), "{stdout}");
        }
    }
    let (code, _, stderr) = run_cli(
        &["config", "check"],
        "",
        &[("SHEPHERD_GITLAB_URL", "https://typo")],
    )
    .await;
    assert_eq!(code, 2);
    assert!(stderr.contains("SHEPHERD_GITLAB_URL"), "{stderr}");
}

#[tokio::test]
async fn config_check_redacts_secrets_and_applies_env_overrides() {
    let config = "[gitlab]\ntoken_env = \"MY_TOKEN\"\n[store]\nurl = \"sqlite://x.db\"\n";
    let (code, stdout, stderr) = run_cli(
        &["config", "check"],
        config,
        &[
            ("MY_TOKEN", "glpat-supersecret"),
            ("SHEPHERD_GITLAB__URL", "https://gitlab.example.org"),
            ("SHEPHERD_QUEUE__MAX_ATTEMPTS", "3"),
        ],
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert!(!stdout.contains("supersecret") && !stderr.contains("supersecret"));
    assert!(stdout.contains("<redacted>"), "{stdout}");
    assert!(stdout.contains("https://gitlab.example.org"), "{stdout}");
    assert!(stdout.contains("max_attempts = 3"), "{stdout}");
}

#[tokio::test]
async fn the_shipped_config_is_valid() {
    let shipped = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/shepherd.toml"),
    )
    .expect("shipped config");
    let (code, stdout, stderr) = run_cli(&["config", "check"], &shipped, &[]).await;
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("production = false"), "{stdout}");
    assert!(stdout.contains("sqlite://shepherd.db"), "{stdout}");
}
