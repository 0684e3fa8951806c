//! Deploying MR images end to end: the real `shepherd` binary, a real Distribution registry
//! (Debian's `docker-registry`) with images pushed through its API, the GitLab double for the
//! merge requests, SQLite and PostgreSQL.

use std::time::Duration;

use axum::http::Method;
use shepherd_tests::gitlab::{AutoFinish, FaultKind, GitLabDouble, NoteRecord, Pipeline, Route};
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore, metric_value, until};
use shepherd_tests::irc_client::human_and_bot;
use shepherd_tests::ircd::{Ngircd, Throttle};
use shepherd_tests::on_both_stores;
use shepherd_tests::registry::{FaultProxy, ImageKind, OCI_INDEX, TestRegistry};

const WAIT: Duration = Duration::from_secs(30);
const REPO: &str = "cki/pipeline-herder";
const MR_PROJECT: &str = "cki/cki-tools";
const SECRET: &str = "webhook-secret-deploy";

struct Env {
    gitlab: GitLabDouble,
    store: TestStore,
    registry: TestRegistry,
    config: ShepherdConfig,
    mr: u64,
    alice: u64,
    /// The MR's image (an OCI index), tagged mr-<iid>.
    mr_digest: String,
    /// What production and staging point at before the test (a Docker schema 2 image, v1).
    v1: String,
}

/// A registry with `v1` deployed to production and staging, and the MR's image pushed.
async fn setup(backend: Backend) -> Env {
    setup_with(backend, None, "").await
}

async fn setup_with(backend: Backend, registry_url: Option<&str>, deploy_extra: &str) -> Env {
    let gitlab = GitLabDouble::start().await;
    let store = TestStore::new(backend).await;
    let registry = TestRegistry::start().await;
    let alice = gitlab.add_user("alice");
    gitlab.add_member(MR_PROJECT, alice, 30);
    let mr = gitlab.add_mr(MR_PROJECT, MR_PROJECT, "faster-herder", alice);
    let mr_digest = registry
        .push_image(REPO, &format!("mr-{mr}"), ImageKind::OciIndex)
        .await;
    let v1 = registry
        .push_image(REPO, "v1", ImageKind::DockerManifest)
        .await;
    let (media_type, bytes) = registry.manifest(REPO, "v1").await.expect("v1");
    for tag in ["production", "staging"] {
        registry.put_manifest(REPO, tag, &media_type, &bytes).await;
    }
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = deploy_section(registry_url.unwrap_or(&registry.url()), deploy_extra);
    Env {
        gitlab,
        store,
        registry,
        config,
        mr,
        alice,
        mr_digest,
        v1,
    }
}

fn deploy_section(registry: &str, extra: &str) -> String {
    format!(
        r#"
[[people]]
name = "mallory"
identities = ["console:mallory"]
groups = ["developers"]

[[people]]
name = "root"
identities = ["console:root"]
groups = ["admins", "ops"]

[permissions]
deploy = ["admins", "developers"]
rollback = ["admins", "developers"]
confirm = ["admins", "developers"]
lock = ["admins", "developers"]
unlock = ["admins", "developers"]

[deploy]
registry = "{registry}"
registry_max_retries = 3
registry_retry_base_ms = 20
registry_retry_max_ms = 200
registry_timeout_ms = 2000
lock_breakers = ["ops"]
{extra}

[[deploy.services]]
name = "herder"
repository = "{REPO}"
mr_project = "{MR_PROJECT}"

[[deploy.environments]]
name = "production"
tag = "production"
confirm = true
groups = ["admins"]

[[deploy.environments]]
name = "staging"
tag = "staging"
"#
    )
}

impl Env {
    /// A console bot for `identity`.
    async fn console_as(&self, identity: &str) -> Shepherd {
        let mut config = self.config.clone();
        config.identity = identity.to_string();
        Shepherd::console(&config).await
    }

    async fn deployments(&self, state: &str) -> i64 {
        self.store
            .count(&format!(
                "SELECT COUNT(*) FROM deployments WHERE state = '{state}'"
            ))
            .await
    }
}

/// The code in a "needs confirmation" reply.
fn code_in(reply: &str) -> String {
    let at = reply
        .find("confirm ")
        .expect("a confirm command in the reply")
        + "confirm ".len();
    reply[at..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .collect()
}

async fn staging_production_confirmation_history_and_rollback(backend: Backend) {
    let env = setup(backend).await;
    let mut bot = env.console_as("console:tester").await;

    // Staging needs no confirmation; the index keeps its digest and media type.
    bot.send(&format!("deploy herder !{} to staging", env.mr))
        .await;
    let reply = bot.expect_line("deployed herder", WAIT).await;
    assert!(
        reply.contains(&env.v1) && reply.contains(&env.mr_digest),
        "{reply}"
    );
    let (media_type, _) = env
        .registry
        .manifest(REPO, "staging")
        .await
        .expect("staging");
    assert_eq!(media_type, OCI_INDEX);
    assert_eq!(
        env.registry.digest(REPO, "staging").await,
        Some(env.mr_digest.clone())
    );

    // Production (the default) asks first, with what would change and the MR.
    bot.send(&format!("deploy herder !{}", env.mr)).await;
    let ask = bot.expect_line("needs confirmation", WAIT).await;
    assert!(
        ask.contains(&env.v1) && ask.contains(&env.mr_digest),
        "{ask}"
    );
    assert!(ask.contains("alice"), "the MR's author is shown: {ask}");
    let code = code_in(&ask);
    assert_eq!(
        env.registry.digest(REPO, "production").await,
        Some(env.v1.clone())
    );

    bot.send("confirm zzzzzz").await;
    bot.expect_line("no deploy is waiting for the code zzzzzz", WAIT)
        .await;
    bot.send(&format!("confirm {code}")).await;
    let done = bot.expect_line("to production:", WAIT).await;
    assert!(done.contains(&env.mr_digest), "{done}");
    assert_eq!(
        env.registry.digest(REPO, "production").await,
        Some(env.mr_digest.clone())
    );
    let (media_type, _) = env
        .registry
        .manifest(REPO, "production")
        .await
        .expect("prod");
    assert_eq!(media_type, OCI_INDEX, "an index stays an index");
    bot.send(&format!("confirm {code}")).await;
    bot.expect_line("was already used", WAIT).await;

    // Rollback of production asks too, then restores the digest it had before.
    bot.send("rollback herder").await;
    let ask = bot
        .expect_line("roll herder in production back needs confirmation", WAIT)
        .await;
    bot.send(&format!("confirm {}", code_in(&ask))).await;
    bot.expect_line("rolled herder in production back", WAIT)
        .await;
    assert_eq!(
        env.registry.digest(REPO, "production").await,
        Some(env.v1.clone())
    );

    bot.send("deployments herder").await;
    bot.expect_line("latest deployments of herder", WAIT).await;
    assert!(
        bot.wait_for(WAIT, |lines| lines
            .iter()
            .filter(|l| l.contains(" by tester in "))
            .count()
            == 3)
            .await,
        "{:?}",
        bot.lines()
    );
    let history: Vec<String> = bot
        .lines()
        .into_iter()
        .filter(|l| l.contains(" by tester in "))
        .collect();
    assert!(
        history[0].contains("rollback") && history[0].contains("in production"),
        "{history:?}"
    );
    assert!(
        history[1].contains(&format!("deploy of !{}", env.mr))
            && history[1].contains("in production"),
        "{history:?}"
    );
    assert!(history[2].contains("in staging"), "{history:?}");

    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success(), "{}", bot.stderr());
    assert_eq!(env.deployments("done").await, 3);
    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM audit WHERE command = 'confirm' AND outcome = 'done'")
            .await,
        2
    );
    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM audit WHERE command = 'deploy' AND outcome = 'accepted' AND detail LIKE '%waiting for confirm%'")
            .await,
        1,
        "the production deploy's request for confirmation is audited"
    );
}
on_both_stores!(
    staging_production_confirmation_history_and_rollback,
    staging_production_confirmation_history_and_rollback
);

async fn codes_of_others_and_expired_codes_are_refused(backend: Backend) {
    let env = setup(backend).await;
    let mut tester = env.console_as("console:tester").await;
    tester.send("deploy herder v1 to production").await;
    tester.expect_line("already points at", WAIT).await;
    tester
        .send(&format!("deploy herder !{} to production", env.mr))
        .await;
    let code = code_in(&tester.expect_line("needs confirmation", WAIT).await);
    tester.close_stdin();
    assert!(tester.wait_exit(WAIT).await.success());

    // Someone else (even an admin) cannot confirm it.
    let mut root = env.console_as("console:root").await;
    root.send(&format!("confirm {code}")).await;
    root.expect_line(
        "was given to console:tester; only they can confirm it",
        WAIT,
    )
    .await;
    root.close_stdin();
    assert!(root.wait_exit(WAIT).await.success());
    assert_eq!(
        env.registry.digest(REPO, "production").await,
        Some(env.v1.clone())
    );

    // An expired code is refused, even to its owner.
    let pool = env.store.connect().await;
    sqlx::query("UPDATE deploy_confirmations SET expires_at = 1")
        .execute(&pool)
        .await
        .expect("expire");
    let mut tester = env.console_as("console:tester").await;
    tester.send(&format!("confirm {code}")).await;
    tester.expect_line("expired", WAIT).await;
    tester.close_stdin();
    assert!(tester.wait_exit(WAIT).await.success());
    assert_eq!(
        env.registry.digest(REPO, "production").await,
        Some(env.v1.clone())
    );
    assert_eq!(env.deployments("done").await, 0);
    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM audit WHERE command = 'confirm' AND outcome = 'refused'")
            .await,
        2
    );
}
on_both_stores!(
    codes_of_others_and_expired_codes_are_refused,
    codes_of_others_and_expired_codes_are_refused
);

async fn a_lock_holds_for_everyone_else_until_unlocked(backend: Backend) {
    let env = setup(backend).await;
    let mut tester = env.console_as("console:tester").await;
    tester.send("lock staging release freeze").await;
    tester
        .expect_line("locked staging (release freeze)", WAIT)
        .await;
    tester.close_stdin();
    assert!(tester.wait_exit(WAIT).await.success());

    // The lock is in the store: another process, another person, is refused.
    let mut mallory = env.console_as("console:mallory").await;
    mallory
        .send(&format!("deploy herder !{} to staging", env.mr))
        .await;
    let refused = mallory
        .expect_line("staging is locked by tester", WAIT)
        .await;
    assert!(refused.contains("release freeze"), "{refused}");
    mallory.send("rollback herder in staging to v1").await;
    mallory
        .expect_line("staging is locked by tester", WAIT)
        .await;
    mallory.send("unlock staging").await;
    mallory
        .expect_line("only they (or the groups ops) can unlock it", WAIT)
        .await;
    // Production is for admins only.
    mallory
        .send(&format!("deploy herder !{} to production", env.mr))
        .await;
    mallory
        .expect_line("deploying to production is for the groups admins", WAIT)
        .await;
    mallory.close_stdin();
    assert!(mallory.wait_exit(WAIT).await.success());
    assert_eq!(
        env.registry.digest(REPO, "staging").await,
        Some(env.v1.clone())
    );

    // The one who locked it can still deploy; then unlocks, and the others can again.
    let mut tester = env.console_as("console:tester").await;
    tester
        .send(&format!("deploy herder !{} to staging", env.mr))
        .await;
    tester.expect_line("to staging:", WAIT).await;
    tester.send("unlock staging").await;
    tester.expect_line("unlocked staging.", WAIT).await;
    tester.close_stdin();
    assert!(tester.wait_exit(WAIT).await.success());
    let mut mallory = env.console_as("console:mallory").await;
    mallory.send("rollback herder in staging").await;
    mallory
        .expect_line("rolled herder in staging back", WAIT)
        .await;
    mallory.close_stdin();
    assert!(mallory.wait_exit(WAIT).await.success());
    assert_eq!(
        env.registry.digest(REPO, "staging").await,
        Some(env.v1.clone())
    );
    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM audit WHERE outcome = 'refused' AND identity = 'console:mallory'")
            .await,
        4
    );
}
on_both_stores!(
    a_lock_holds_for_everyone_else_until_unlocked,
    a_lock_holds_for_everyone_else_until_unlocked
);

async fn bad_requests_change_nothing(backend: Backend) {
    let env = setup(backend).await;
    let mut bot = env.console_as("console:tester").await;
    for (line, expected) in [
        (
            "deploy nosuch v1 to staging",
            "there is no service \"nosuch\" to deploy (known: herder)",
        ),
        (
            "deploy herder v1 to moon",
            "there is no environment \"moon\" (known: production, staging)",
        ),
        (
            "deploy herder !999 to staging",
            "merge request cki/cki-tools!999 was not found",
        ),
        (
            "deploy herder other/project!1 to staging",
            "herder's merge requests are in cki/cki-tools, not other/project",
        ),
        (
            "deploy herder v9 to staging",
            "cki/pipeline-herder:v9 is not in the registry",
        ),
        (
            "rollback herder in staging",
            "no earlier deployment of herder in staging is recorded",
        ),
    ] {
        bot.send(line).await;
        bot.expect_line(expected, WAIT).await;
    }
    // An MR whose pipeline has not pushed its image.
    let bare = env
        .gitlab
        .add_mr(MR_PROJECT, MR_PROJECT, "no-image", env.alice);
    bot.send(&format!("deploy herder !{bare} to staging")).await;
    bot.expect_line(
        &format!("the image of !{bare} (cki/pipeline-herder:mr-{bare}) is not in the registry"),
        WAIT,
    )
    .await;
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success(), "{}", bot.stderr());
    for tag in ["production", "staging"] {
        assert_eq!(env.registry.digest(REPO, tag).await, Some(env.v1.clone()));
    }
    assert_eq!(env.store.count("SELECT COUNT(*) FROM deployments").await, 0);
    assert_eq!(
        env.store
            .count("SELECT COUNT(*) FROM deploy_confirmations")
            .await,
        0
    );
}
on_both_stores!(bad_requests_change_nothing, bad_requests_change_nothing);

async fn non_production_mode_says_what_it_would_do() {
    let mut env = setup(Backend::Sqlite).await;
    env.config.production = false;
    let mut bot = env.console_as("console:tester").await;
    bot.send(&format!("deploy herder !{} to production", env.mr))
        .await;
    let would = bot
        .expect_line(
            &format!(
                "would point production at {} (now {})",
                env.mr_digest, env.v1
            ),
            WAIT,
        )
        .await;
    assert!(would.contains("nothing was changed"), "{would}");
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success());
    assert_eq!(
        env.registry.digest(REPO, "production").await,
        Some(env.v1.clone())
    );
    assert_eq!(env.store.count("SELECT COUNT(*) FROM deployments").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_production_mode_writes_nothing() {
    non_production_mode_says_what_it_would_do().await;
}

/// Registry 5xx answers are retried; a registry that is down mid-deploy is waited for; a
/// registry that keeps failing leaves the tag where it was and the asker told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_faults_never_leave_a_half_done_deploy() {
    let mut registry_env = setup(Backend::Sqlite).await;
    let proxy = FaultProxy::start(&registry_env.registry.url()).await;
    registry_env.config.extra = deploy_section(&proxy.url(), "");
    registry_env.config.queue = "max_attempts = 3".into();
    let env = &mut registry_env;

    // Two 503s on the tag move: retried within the attempt.
    proxy.fail_next(Method::PUT, 503, 2);
    let mut bot = env.console_as("console:tester").await;
    bot.send(&format!("deploy herder !{} to staging", env.mr))
        .await;
    bot.expect_line("to staging:", WAIT).await;
    assert_eq!(proxy.failed(), 2);
    assert_eq!(
        env.registry.digest(REPO, "staging").await,
        Some(env.mr_digest.clone())
    );

    // The registry is down when the deploy comes, and back a little later.
    env.registry.stop().await;
    bot.send("rollback herder in staging").await;
    assert!(
        until(WAIT, || bot.stderr().contains("registry call failed")).await,
        "{}",
        bot.stderr()
    );
    env.registry.start_again().await;
    bot.expect_line("rolled herder in staging back", WAIT).await;
    assert_eq!(
        env.registry.digest(REPO, "staging").await,
        Some(env.v1.clone())
    );

    // A registry that answers 500 to every tag move: the deploy is given up, nothing moved.
    proxy.fail_next(Method::PUT, 500, 1000);
    bot.send(&format!("deploy herder !{} to staging", env.mr))
        .await;
    let given_up = bot.expect_line("was given up", WAIT).await;
    assert!(given_up.contains("registry is unavailable"), "{given_up}");
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success(), "{}", bot.stderr());
    assert_eq!(
        env.registry.digest(REPO, "staging").await,
        Some(env.v1.clone())
    );
    assert_eq!(env.deployments("done").await, 2);
    assert_eq!(
        env.deployments("started").await,
        1,
        "the last one never finished"
    );
}

/// A crash after the tag moved and before the deployment was recorded: the redelivered
/// request finds the started deployment, finishes it, and records it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_deploy_is_recorded_once() {
    let mut env = setup(Backend::Sqlite).await;
    env.config.queue = "max_attempts = 5".into();
    let mut bot = env.console_as("console:tester").await;
    bot.send(&format!("deploy herder !{} to staging", env.mr))
        .await;
    bot.expect_line("to staging:", WAIT).await;
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success());
    // Make the store look as a crash right after the PUT leaves it: the row started, the
    // request not done.
    let pool = env.store.connect().await;
    sqlx::query("UPDATE deployments SET state = 'started', finished_at = NULL")
        .execute(&pool)
        .await
        .expect("rewind");
    sqlx::query("UPDATE requests SET state = 'ready', lease_owner = NULL, lease_until = NULL, available_at = 0 WHERE kind = 'command'")
        .execute(&pool)
        .await
        .expect("rewind");
    let bot = env.console_as("console:tester").await;
    assert!(
        env.store
            .wait_count(
                "SELECT COUNT(*) FROM deployments WHERE state = 'done'",
                1,
                WAIT
            )
            .await,
        "{}",
        bot.stderr()
    );
    assert_eq!(env.store.count("SELECT COUNT(*) FROM deployments").await, 1);
    assert_eq!(
        env.registry.digest(REPO, "staging").await,
        Some(env.mr_digest.clone())
    );
}

/// A bot whose `[deploy]` logs in to `registry` as `shepherd` with `password`.
fn with_credentials(
    store: &TestStore,
    gitlab: &GitLabDouble,
    registry: &TestRegistry,
    password: &str,
) -> ShepherdConfig {
    let mut config = ShepherdConfig::new(store, gitlab);
    config.extra = deploy_section(
        &registry.url(),
        "registry_username = \"shepherd\"\nregistry_password_env = \"TEST_REGISTRY_PASSWORD\"",
    );
    config
        .env
        .push(("TEST_REGISTRY_PASSWORD".into(), password.into()));
    config
}

async fn deploy_v2_to_staging(config: &ShepherdConfig) {
    let mut bot = Shepherd::console(config).await;
    bot.send("deploy herder v2 to staging").await;
    bot.expect_line("to staging:", WAIT).await;
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success(), "{}", bot.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_htpasswd_auth() {
    let gitlab = GitLabDouble::start().await;
    let store = TestStore::new(Backend::Sqlite).await;
    let registry = TestRegistry::start_with_htpasswd("shepherd", "registry-pass-1").await;
    let v2 = registry
        .push_image(REPO, "v2", ImageKind::OciManifest)
        .await;
    let mut config = with_credentials(&store, &gitlab, &registry, "registry-pass-1");
    deploy_v2_to_staging(&config).await;
    assert_eq!(registry.digest(REPO, "staging").await, Some(v2.clone()));

    // A wrong password is a clear reply, and nothing moves.
    config.env = vec![("TEST_REGISTRY_PASSWORD".into(), "wrong-password-9".into())];
    registry
        .push_image(REPO, "v3", ImageKind::OciManifest)
        .await;
    let mut bot = Shepherd::console(&config).await;
    bot.send("deploy herder v3 to staging").await;
    bot.expect_line("the registry refused shepherd's credentials", WAIT)
        .await;
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success(), "{}", bot.stderr());
    assert_eq!(registry.digest(REPO, "staging").await, Some(v2));
}

/// In an MR comment the MR is implicit: `@shepherd deploy herder to production`, then
/// `@shepherd confirm <code>`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_and_confirm_from_merge_request_comments() {
    let mut env = setup(Backend::Postgres).await;
    env.config.extra.push_str(
        r#"
[[people]]
name = "alice"
identities = ["gitlab:alice"]
groups = ["admins"]

[gitlab_comments]
webhook_secret_env = "TEST_WEBHOOK_SECRET"
"#,
    );
    env.config
        .env
        .push(("TEST_WEBHOOK_SECRET".into(), SECRET.into()));
    let bot = Shepherd::serve(&env.config).await;
    bot.wait_http(WAIT).await;
    env.gitlab
        .set_webhook(&format!("{}/hooks/gitlab", bot.base_url()), SECRET);

    env.gitlab.comment(
        MR_PROJECT,
        env.mr,
        env.alice,
        "@shepherd deploy herder to production",
    );
    let ask = bot_note(&env, &bot, "needs confirmation").await;
    assert!(ask.body.contains("@shepherd confirm "), "{}", ask.body);
    let code = code_in(&ask.body);
    env.gitlab.comment(
        MR_PROJECT,
        env.mr,
        env.alice,
        &format!("@shepherd confirm {code}"),
    );
    bot_note(&env, &bot, "to production:").await;
    assert_eq!(
        env.registry.digest(REPO, "production").await,
        Some(env.mr_digest.clone())
    );
}

async fn bot_note(env: &Env, bot: &Shepherd, needle: &str) -> NoteRecord {
    let found = until(WAIT, || {
        env.gitlab
            .notes(MR_PROJECT, env.mr)
            .iter()
            .any(|n| n.author == "shepherd" && n.body.contains(needle))
    })
    .await;
    assert!(
        found,
        "no note with {needle:?}: {:#?}\n{}",
        env.gitlab.notes(MR_PROJECT, env.mr),
        bot.stderr()
    );
    env.gitlab
        .notes(MR_PROJECT, env.mr)
        .into_iter()
        .find(|n| n.author == "shepherd" && n.body.contains(needle))
        .expect("note")
}

const DEPLOY_PROJECT: &str = "cki/deployment-all";

/// An environment that deploys through a pipeline: `[[deploy.environments]] name = "mr"`.
fn with_pipeline_environment(env: &mut Env) {
    env.config.extra.push_str(&format!(
        r#"
[[deploy.environments]]
name = "mr"
pipeline = {{ project = "{DEPLOY_PROJECT}", ref = "main" }}
"#
    ));
    env.gitlab
        .add_pipeline(DEPLOY_PROJECT, "main", "success", &[("OLD", "1")]);
    env.gitlab
        .set_auto_finish(Some(AutoFinish::success_after_polls(1, 1)));
}

fn assert_deploy_pipeline(p: &Pipeline, image: &str) {
    assert_eq!(p.git_ref, "main");
    assert_eq!(p.variable("DEPLOY_SERVICE"), Some("herder"));
    assert_eq!(p.variable("DEPLOY_IMAGE"), Some(image));
    assert_eq!(p.variable("DEPLOY_ENVIRONMENT"), Some("mr"));
    assert!(p.variable("SHEPHERD_REQUEST_ID").is_some());
    assert_eq!(p.variables.len(), 4, "{:?}", p.variables);
}

/// One deploy pipeline with the right variables, watched and reported; a create that took effect
/// and then answered 502 is found, not repeated.
async fn a_pipeline_environment_runs_one_deploy_pipeline(backend: Backend) {
    let mut env = setup(backend).await;
    with_pipeline_environment(&mut env);
    let mut bot = env.console_as("console:tester").await;
    bot.send(&format!("deploy herder !{} to mr", env.mr)).await;
    let reply = bot.expect_line("with pipeline", WAIT).await;
    let created = env.gitlab.pipelines_created();
    assert_eq!(created.len(), 1, "{created:?}");
    assert_deploy_pipeline(&created[0], &format!("{REPO}@{}", env.mr_digest));
    assert!(reply.contains(&created[0].web_url), "{reply}");
    bot.expect_line(
        &format!(
            "pipeline {} of {DEPLOY_PROJECT} finished: success",
            created[0].id
        ),
        WAIT,
    )
    .await;

    env.gitlab
        .fail_next(Route::CreatePipeline, 1, FaultKind::CreateThenFail(502));
    bot.send("rollback herder in mr to v1").await;
    bot.expect_line("rolled herder in mr back with pipeline", WAIT)
        .await;
    let created = env.gitlab.pipelines_created();
    assert_eq!(
        created.len(),
        2,
        "the 502 after the create made no second one: {created:?}"
    );
    assert_deploy_pipeline(&created[1], &format!("{REPO}@{}", env.v1));
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success(), "{}", bot.stderr());
    assert_eq!(env.gitlab.pipelines_created().len(), 2);
    // Tags are not touched by a pipeline environment.
    assert_eq!(
        env.registry.digest(REPO, "staging").await,
        Some(env.v1.clone())
    );
    assert_eq!(
        env.store
            .count(
                "SELECT COUNT(*) FROM deployments WHERE state = 'done' AND pipeline_id IS NOT NULL"
            )
            .await,
        2
    );
}
on_both_stores!(
    a_pipeline_environment_runs_one_deploy_pipeline,
    a_pipeline_environment_runs_one_deploy_pipeline
);

/// kill -9 while GitLab holds the answer to a deploy pipeline's create that took effect: after
/// the restart, still one pipeline, and the asker gets the reply and the report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_the_deploy_pipeline_create_gives_one_pipeline() {
    let mut env = setup(Backend::Postgres).await;
    with_pipeline_environment(&mut env);
    let hold = env.gitlab.hold_creates();
    let mut first = env.console_as("console:tester").await;
    first
        .send(&format!("deploy herder !{} to mr", env.mr))
        .await;
    tokio::time::timeout(WAIT, hold.wait_reached())
        .await
        .expect("the create reached GitLab");
    first.kill9().await;
    hold.release();
    assert_eq!(env.gitlab.pipelines_created().len(), 1);

    let mut second = env.console_as("console:tester").await;
    second.close_stdin();
    second.expect_line("with pipeline", WAIT).await;
    let created = env.gitlab.pipelines_created();
    second
        .expect_line(
            &format!(
                "pipeline {} of {DEPLOY_PROJECT} finished: success",
                created[0].id
            ),
            WAIT,
        )
        .await;
    assert!(
        second.wait_exit(WAIT).await.success(),
        "{}",
        second.stderr()
    );
    let created = env.gitlab.pipelines_created();
    assert_eq!(created.len(), 1, "exactly one deploy pipeline: {created:?}");
    assert_deploy_pipeline(&created[0], &format!("{REPO}@{}", env.mr_digest));
    assert_eq!(
        env.gitlab
            .requests()
            .iter()
            .filter(|r| r.is(Route::CreatePipeline))
            .count(),
        1,
        "the redelivered deploy looked before creating"
    );
    assert_eq!(env.deployments("done").await, 1);
}

/// The same from IRC: a deploy asked in #ops is answered there and announced in #deploys;
/// the metrics count the deploy and the registry calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_from_irc_is_announced_and_counted() {
    let env = setup(Backend::Sqlite).await;
    let server = Ngircd::start(Throttle::Off).await;
    let mut config = env.config.clone();
    config.extra = format!(
        r##"
[irc]
server = "127.0.0.1"
port = {port}
tls = false
channels = ["#ops", "#deploys"]
flood_burst = 10
flood_rate = 50.0

[permissions]
deploy = ["*"]
rollback = ["*"]

[deploy]
registry = "{registry}"

[[deploy.services]]
name = "herder"
repository = "{REPO}"
mr_project = "{MR_PROJECT}"
announce = ["irc:#deploys", "irc:#ops"]

[[deploy.environments]]
name = "staging"
tag = "staging"
"##,
        port = server.port(),
        registry = env.registry.url(),
    );
    let (mut human, bot) = human_and_bot(&config, &server.addr(), &["#ops", "#deploys"]).await;
    human
        .privmsg("#ops", &format!("shepherd: deploy herder !{}", env.mr))
        .await;
    let reply = human
        .expect_privmsg_from("shepherd", "#ops", "deployed herder", WAIT)
        .await;
    assert!(reply.text().contains(&env.mr_digest), "{}", reply.text());
    let note = human
        .expect_privmsg_from("shepherd", "#deploys", "deployed herder", WAIT)
        .await;
    assert!(
        note.text().contains("irc-unidentified:human") && note.text().contains(&env.v1),
        "who and from are announced: {}",
        note.text()
    );
    assert_eq!(
        env.registry.digest(REPO, "staging").await,
        Some(env.mr_digest.clone())
    );
    // The asker's room got the reply, not the announcement as well.
    assert_eq!(
        human
            .privmsgs_from("shepherd")
            .iter()
            .filter(|m| m.param(0) == Some("#ops"))
            .count(),
        1,
        "{}",
        human.transcript()
    );

    let metrics = bot.metrics_text().await;
    let value = |series: &str| metric_value(&metrics, series);
    assert_eq!(
        value(
            r#"shepherd_deployments_total{environment="staging",outcome="done",service="herder"} "#
        ),
        Some(1.0),
        "{metrics}"
    );
    assert!(
        value(r#"shepherd_registry_requests_total{method="PUT",status="201"} "#) == Some(1.0),
        "{metrics}"
    );
    assert!(
        value(r#"shepherd_registry_requests_total{method="HEAD",status="200"} "#) >= Some(2.0),
        "{metrics}"
    );
}

/// A registry behind Bearer tokens (Distribution's `auth: token`): shepherd answers the challenge
/// by asking the realm for a token with its credentials, and deploys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_with_bearer_token_auth() {
    let gitlab = GitLabDouble::start().await;
    let store = TestStore::new(Backend::Sqlite).await;
    let registry = TestRegistry::start_with_token_auth("shepherd", "token-pass-1", &[REPO]).await;
    let v2 = registry.push_image(REPO, "v2", ImageKind::OciIndex).await;
    let config = with_credentials(&store, &gitlab, &registry, "token-pass-1");
    deploy_v2_to_staging(&config).await;
    assert_eq!(registry.digest(REPO, "staging").await, Some(v2));
    assert!(
        registry.tokens_issued() >= 1,
        "shepherd asked the realm for a token"
    );
    let (media_type, _) = registry.manifest(REPO, "staging").await.expect("staging");
    assert_eq!(media_type, OCI_INDEX);
}

/// A pipeline environment that needs confirmation: what it runs now is its last recorded
/// deployment, so a second deploy there is confirmed against that, not against a tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_confirmed_pipeline_environment_is_judged_by_its_history() {
    let mut env = setup(Backend::Sqlite).await;
    with_pipeline_environment(&mut env);
    env.config.extra.push_str(&format!(
        r#"
[[deploy.environments]]
name = "review"
pipeline = {{ project = "{DEPLOY_PROJECT}", ref = "main" }}
confirm = true
"#
    ));
    let mut bot = env.console_as("console:tester").await;
    for (source, n, from) in [
        (format!("!{}", env.mr), 1, "(no image)".to_string()),
        ("v1".to_string(), 2, env.mr_digest.clone()),
    ] {
        let seen = bot.lines().len();
        bot.send(&format!("deploy herder {source} to review")).await;
        assert!(
            bot.wait_for(WAIT, |l| l[seen..]
                .iter()
                .any(|l| l.contains("needs confirmation")))
                .await,
            "{:?}",
            bot.lines()
        );
        let ask = bot.lines()[seen..]
            .iter()
            .find(|l| l.contains("needs confirmation"))
            .cloned()
            .unwrap_or_default();
        assert!(ask.contains(&from), "from what it runs now: {ask}");
        let seen = bot.lines().len();
        bot.send(&format!("confirm {}", code_in(&ask))).await;
        assert!(
            bot.wait_for(WAIT, |l| l[seen..]
                .iter()
                .any(|l| l.contains("with pipeline")))
                .await,
            "{:?}\n{}",
            bot.lines(),
            bot.stderr()
        );
        assert_eq!(env.gitlab.pipelines_created().len(), n);
    }
    bot.close_stdin();
    assert!(bot.wait_exit(WAIT).await.success(), "{}", bot.stderr());
    let created = env.gitlab.pipelines_created();
    assert_eq!(created[1].variable("DEPLOY_ENVIRONMENT"), Some("review"));
    assert_eq!(
        created[1].variable("DEPLOY_IMAGE"),
        Some(format!("{REPO}@{}", env.v1).as_str())
    );
}
