//! Tests of loading as a whole: defaults, the shipped file, environment overrides, errors with key
//! paths, secrets and redaction. Each test writes its own file and passes its own variables; none
//! touches the process environment.

use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

use super::*;

fn file(text: &str) -> NamedTempFile {
    let mut f = NamedTempFile::new().expect("temp file");
    f.write_all(text.as_bytes()).expect("write");
    f
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn load_text(text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let f = file(text);
    load_from(f.path(), env(vars))
}

fn err(text: &str, vars: &[(&str, &str)]) -> String {
    match load_text(text, vars) {
        Ok(config) => panic!("expected an error, loaded {config:?}"),
        Err(e) => e.to_string(),
    }
}

fn shipped_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("shepherd.toml")
}

#[test]
fn empty_file_gives_every_default() {
    let c = load_text("", &[("USER", "alice")]).expect("load");
    assert!(!c.production);
    assert_eq!(c.bot.name, "shepherd");
    assert_eq!(c.bot.prefix, "!");
    assert_eq!(c.store.url.expose(), "sqlite://shepherd.db");
    assert!(c.store.is_sqlite());
    assert_eq!(c.queue.url.expose(), "store");
    assert!(c.queue.is_store());
    assert_eq!(
        (
            c.queue.max_attempts,
            c.queue.lease_seconds,
            c.queue.retry_base_ms,
            c.queue.retry_max_ms,
            c.queue.workers,
            c.queue.poll_interval_ms
        ),
        (8, 60, 1000, 300_000, 4, 250)
    );
    assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.gitlab.url.as_str(), "https://gitlab.com/");
    assert_eq!(c.gitlab.token_env, "GITLAB_TOKEN");
    assert_eq!(c.gitlab.token_file, None);
    assert_eq!(c.gitlab.default_project, None);
    assert_eq!(
        (
            c.gitlab.requests_per_minute,
            c.gitlab.timeout_ms,
            c.gitlab.max_retries,
            c.gitlab.retry_base_ms,
            c.gitlab.retry_max_ms
        ),
        (600, 10_000, 5, 500, 30_000)
    );
    assert!(c.retrigger.marker_variables.is_empty());
    assert_eq!(c.retrigger.lookback_minutes, 60);
    assert_eq!(c.watcher.poll_interval_ms, 30_000);
    assert_eq!(c.watcher.max_poll_interval_ms, 300_000);
    assert_eq!(c.console.identity(), "console:alice");
    assert_eq!(c.console.room, "console");
    assert!(c.people.is_empty());
    assert!(c.permissions.is_empty());
    assert_eq!(c.rate_limits.per_identity_per_minute, 30);
    assert_eq!(c.rate_limits.per_room_per_minute, 120);
    assert_eq!(c.log.filter, "info");
    assert_eq!(c.log.format, LogFormat::Text);
    assert!(c.irc.is_none() && c.gitlab_comments.is_none() && c.alerts.is_none());
    // GITLAB_TOKEN is not among the variables: no token, one warning.
    assert!(c.gitlab.token().is_none());
    assert_eq!(
        c.warnings(),
        [
            "gitlab.token: env GITLAB_TOKEN is not set (named by gitlab.token_env); continuing without it"
        ]
    );
}

#[test]
fn shipped_file_loads_with_the_documented_values() {
    let c = load_from(
        &shipped_path(),
        env(&[("USER", "bob"), ("GITLAB_TOKEN", "glpat-x")]),
    )
    .expect("the shipped config loads");
    assert!(!c.production);
    assert_eq!(c.store.url.expose(), "sqlite://shepherd.db");
    assert_eq!(c.queue.url.expose(), "store");
    assert_eq!(c.http.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.gitlab.url.as_str(), "https://gitlab.com/");
    assert_eq!(c.gitlab.token().map(Secret::expose), Some("glpat-x"));
    assert_eq!(
        c.retrigger
            .marker_variables
            .get("CKI_DEPLOYMENT_ENVIRONMENT")
            .map(String::as_str),
        Some("retrigger")
    );
    assert_eq!(
        c.people,
        [Person {
            name: "local".into(),
            identities: vec!["console:*".into()],
            groups: vec!["admins".into()],
        }]
    );
    let allowed = |command: &str| c.permissions.get(command).cloned().unwrap_or_default();
    for command in ["help", "ping", "version", "whoami", "status"] {
        assert_eq!(allowed(command), ["*"], "{command}");
    }
    for command in [
        "retrigger",
        "cancel",
        "canary",
        "test",
        "retest",
        "silence",
        "unsilence",
    ] {
        assert_eq!(allowed(command), ["admins", "developers"], "{command}");
    }
    for command in ["deploy", "rollback"] {
        assert_eq!(allowed(command), ["admins"], "{command}");
    }
    assert!(c.irc.is_none() && c.gitlab_comments.is_none() && c.alerts.is_none());
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn shipped_commented_sections_are_valid_when_uncommented() {
    let text = std::fs::read_to_string(shipped_path()).expect("read shipped");
    let marker = "# Front ends and features below";
    let (head, tail) = text.split_at(text.find(marker).expect("marker"));
    let uncommented: String = tail
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .filter(|l| l.starts_with('[') || l.contains(" = "))
        .map(|l| format!("{l}\n"))
        .collect();
    let c = load_text(&format!("{head}\n{uncommented}"), &[("USER", "u")]).expect("loads");
    let irc = c.irc.expect("irc");
    assert_eq!(irc.server, "irc.example.org");
    assert_eq!(irc.nick(), "shepherd");
    assert_eq!(irc.channels, ["#ops", "#kernel-ci", "#alerts"]);
    assert_eq!(irc.alternate_nicks(), ["shepherd_", "shepherd__"]);
    assert_eq!(irc.reply_with, crate::IrcReplyKind::Privmsg);
    assert_eq!((irc.flood_burst, irc.flood_rate), (4, 1.0));
    assert_eq!(irc.ping_interval_secs, 60);
    // The secret sources are named, their variables unset here: no secrets, no failure.
    assert!(irc.password().is_none() && irc.sasl_password().is_none());
    assert!(irc.channel_keys().is_empty());
    let matrix = c.matrix.expect("matrix");
    assert_eq!(matrix.user, "@shepherd:example.org");
    assert_eq!(matrix.rooms, ["!abcdef:example.org", "#ops:example.org"]);
    assert_eq!(matrix.catch_up_minutes, 10);
    assert_eq!(matrix.encrypt_for, MatrixEncryptFor::AllDevices);
    assert!(matrix.password().is_none());
    let comments = c.gitlab_comments.expect("gitlab_comments");
    assert_eq!(comments.min_access_level, AccessLevel::Developer);
    assert_eq!(comments.max_body_bytes, 2 * 1024 * 1024);
    assert_eq!(
        comments.min_access_level_for("CKI-Project/Pipeline-Definition"),
        AccessLevel::Maintainer
    );
    assert_eq!(
        comments.min_access_level_for("other/project"),
        AccessLevel::Developer
    );
    let canary = c
        .canary
        .project("cki-project/pipeline-definition")
        .expect("canary project");
    assert_eq!(canary.variables["PIPELINE_DEFINITION_REF"], "{{ mr.ref }}");
    assert_eq!(canary.references.len(), 2);
    assert_eq!(canary.references[0].branch.as_deref(), Some("mainline"));
    assert_eq!(canary.references[1].pipeline, Some(123456));
    let alerts = c.alerts.expect("alerts");
    assert_eq!(alerts.routes[0].targets, ["irc:#ops"]);
    assert_eq!(alerts.routes[0].matchers, [r#"severity=~"critical|page""#]);
    let deploy = c.deploy.expect("deploy");
    assert_eq!(deploy.registry.as_str(), "https://registry.example.org/");
    assert_eq!(deploy.confirm_timeout_seconds, 300);
    let herder = deploy.service("HERDER").expect("herder");
    assert_eq!(herder.mr_tag, "mr-{iid}");
    assert_eq!(herder.announce, ["irc:#ops"]);
    let production = deploy.environment(None).expect("the default environment");
    assert_eq!(production.name, "production");
    assert!(production.confirm);
    assert_eq!(production.groups, ["admins"]);
    assert_eq!(
        deploy
            .environment(Some("staging"))
            .and_then(|e| e.tag.clone()),
        Some("staging".into())
    );
    let mr = deploy.environment(Some("mr")).expect("mr");
    assert_eq!(
        mr.pipeline
            .as_ref()
            .map(|p| (p.project.as_str(), p.git_ref.as_str())),
        Some(("cki/deployment-all", "main"))
    );
    assert!(deploy.registry_password().is_none());
    let herder = c.herder.expect("herder");
    assert_eq!(herder.targets, ["irc:#ops"]);
    assert_eq!(herder.matchers[0].retry_delay(4).as_secs(), 15 * 60);
    assert_eq!(c.failover[0].project.as_deref(), Some("cki/pipeline"));
}

#[test]
fn deploy_sections_are_checked_key_by_key() {
    let base = |services: &str, environments: &str| {
        format!(
            "[deploy]\nregistry = \"ftp://r\"\nregistry_password_env = \"PW\"\nconfirm_timeout_seconds = 1\n{services}{environments}"
        )
    };
    let text = base(
        "[[deploy.services]]\nname = \"her der\"\nrepository = \"Cki/Herder\"\nmr_tag = \"mr {iid}\"\nannounce = [\"irc:#nowhere\"]\n[[deploy.services]]\nname = \"HER DER\"\nrepository = \"ok/repo\"\n",
        "[[deploy.environments]]\nname = \"prod\"\n[[deploy.environments]]\nname = \"x\"\ntag = \"-bad\"\npipeline = { project = \"p\", ref = \"\" }\n",
    );
    let e = load_text(&text, &[]).expect_err("refused");
    let shown = e.to_string();
    for key in [
        "deploy.registry",
        "deploy.registry_username",
        "deploy.confirm_timeout_seconds",
        "deploy.services[0].name",
        "deploy.services[0].repository",
        "deploy.services[0].mr_tag",
        "deploy.services[0].announce[0]",
        "deploy.services[1].name",
        "deploy.environments[0]",
        "deploy.environments[1]",
    ] {
        assert!(shown.contains(key), "{key} not named in:\n{shown}");
    }
    let empty = load_text(
        "[deploy]\nregistry = \"https://r\"\nservices = []\nenvironments = []\n",
        &[],
    )
    .expect_err("refused");
    let shown = empty.to_string();
    assert!(
        shown.contains("deploy.services") && shown.contains("deploy.environments"),
        "{shown}"
    );
}

#[test]
fn env_overrides_every_kind() {
    let c = load_text(
        "[gitlab]\nurl = \"https://file.example\"\n",
        &[
            ("SHEPHERD_PRODUCTION", "true"),
            ("SHEPHERD_GITLAB__URL", "https://env.example"),
            ("SHEPHERD_STORE__URL", "postgres://u@127.0.0.1/db"),
            ("SHEPHERD_QUEUE__MAX_ATTEMPTS", "3"),
            ("SHEPHERD_IRC__FLOOD_RATE", "2.5"),
            ("SHEPHERD_IRC__SERVER", "irc.example"),
            ("SHEPHERD_IRC__CHANNELS", "[\"#a\", \"#b\"]"),
            ("SHEPHERD_HTTP__LISTEN", "0.0.0.0:9000"),
            ("SHEPHERD_BOT__PREFIX", "\"1\""),
            ("SHEPHERD_RETRIGGER__MARKER_VARIABLES__CKI_X", "y"),
            ("SHEPHERD_PERMISSIONS__DEPLOY", "[\"ops\"]"),
            ("SHEPHERD_LOG__FORMAT", "json"),
            ("SHEPHERD_CONFIG", "/somewhere/else.toml"),
            ("SHEPHERD_LOG", "debug"),
        ],
    )
    .expect("load");
    assert!(c.production);
    assert_eq!(c.gitlab.url.as_str(), "https://env.example/");
    assert_eq!(c.store.url.expose(), "postgres://u@127.0.0.1/db");
    assert!(!c.store.is_sqlite());
    assert_eq!(c.queue.max_attempts, 3);
    let irc = c.irc.expect("irc from env");
    assert_eq!(irc.server, "irc.example");
    assert_eq!(irc.flood_rate, 2.5);
    assert_eq!(irc.channels, ["#a", "#b"]);
    assert_eq!(c.http.listen.to_string(), "0.0.0.0:9000");
    assert_eq!(c.bot.prefix, "1");
    assert_eq!(
        c.retrigger
            .marker_variables
            .get("CKI_X")
            .map(String::as_str),
        Some("y"),
        "names under marker_variables keep their case"
    );
    assert_eq!(
        c.permissions.get("deploy").cloned(),
        Some(vec!["ops".into()])
    );
    assert_eq!(c.log.format, LogFormat::Json);
}

#[test]
fn env_false_and_file_values() {
    let c = load_text("production = true\n", &[("SHEPHERD_PRODUCTION", "false")]).expect("load");
    assert!(!c.production);
}

#[test]
fn unknown_key_in_file_names_its_path_and_the_known_keys() {
    let f = file("[gitlab]\nurll = \"https://x\"\n");
    let e = load_from(f.path(), env(&[]))
        .expect_err("unknown key")
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}: unknown key `gitlab.urll` (expected one of: url, token_env, token_file, \
             default_project, requests_per_minute, timeout_ms, max_retries, retry_base_ms, \
             retry_max_ms); did you mean `gitlab.url`?",
            f.path().display()
        )
    );
    assert!(
        err("colour = 1\n", &[])
            .contains("unknown key `colour` (expected one of: production, bot,")
    );
    assert!(err("[[people]]\nname = \"x\"\nidentity = []\n", &[]).contains("unknown key `people[0].identity` (expected one of: name, identities, groups); did you mean `people[0].identities`?"));
}

#[test]
fn secret_value_in_file_is_refused_with_a_pointer() {
    let e = err("[gitlab]\ntoken = \"glpat-secret\"\n", &[]);
    assert!(
        e.contains("unknown key `gitlab.token`")
            && e.contains("secrets are never configuration values: set gitlab.token_env"),
        "{e}"
    );
    assert!(!e.contains("glpat-secret"), "{e}");
}

#[test]
fn unknown_shepherd_variable_is_an_error_naming_it() {
    let e = err("", &[("SHEPHERD_GITLAB_URL", "https://x")]);
    assert!(
        e.starts_with("environment SHEPHERD_GITLAB_URL: unknown key `gitlab_url`"),
        "{e}"
    );
    assert!(e.contains("did you mean SHEPHERD_GITLAB__URL?"), "{e}");

    let e = err("", &[("SHEPHERD_QUEUE__MAX_ATTEMPT", "3")]);
    assert!(
        e.starts_with("environment SHEPHERD_QUEUE__MAX_ATTEMPT: unknown key `queue.max_attempt`"),
        "{e}"
    );

    let e = err("", &[("SHEPHERD_GITLAB__", "x")]);
    assert!(
        e.starts_with("environment SHEPHERD_GITLAB__: not a configuration key"),
        "{e}"
    );
}

#[test]
fn variables_named_as_secret_sources_are_not_overrides() {
    let text = "[irc]\nserver = \"h\"\nsasl_password_env = \"SHEPHERD_MY_IRC_PASSWORD\"\n\
                [gitlab_comments]\nwebhook_secret_env = \"SHEPHERD_GITLAB_WEBHOOK_SECRET\"\n";
    let c = load_text(
        text,
        &[
            ("SHEPHERD_MY_IRC_PASSWORD", "pw"),
            ("SHEPHERD_GITLAB_WEBHOOK_SECRET", "hook"),
            // Named by an override instead of the file.
            ("SHEPHERD_ALERTS__WEBHOOK_TOKEN_ENV", "SHEPHERD_AM"),
            ("SHEPHERD_AM", "am"),
            // Conventional names are ignored even while their section is absent.
            ("SHEPHERD_ALERTMANAGER_TOKEN", "unused"),
        ],
    )
    .expect("load");
    let irc = c.irc.as_ref().expect("irc");
    assert_eq!(irc.sasl_password().map(Secret::expose), Some("pw"));
    let comments = c.gitlab_comments.as_ref().expect("comments");
    assert_eq!(comments.webhook_secret().map(Secret::expose), Some("hook"));
    let alerts = c.alerts.as_ref().expect("alerts from env");
    assert_eq!(alerts.webhook_token().map(Secret::expose), Some("am"));
}

#[test]
fn wrong_type_names_the_key_path_and_the_source() {
    let f = file("[queue]\nmax_attempts = \"x\"\n");
    let e = load_from(f.path(), env(&[]))
        .expect_err("wrong type")
        .to_string();
    assert_eq!(
        e,
        format!(
            "{}: queue.max_attempts: invalid type: found string \"x\", expected u32",
            f.path().display()
        )
    );

    let e = err("", &[("SHEPHERD_QUEUE__WORKERS", "many")]);
    assert_eq!(
        e,
        "environment SHEPHERD_QUEUE__WORKERS: queue.workers: invalid type: found string \"many\", \
         expected u32"
    );

    let e = err("[[people]]\nname = \"a\"\ngroups = \"admins\"\n", &[]);
    assert!(
        e.contains(": people[0].groups: invalid type: found string \"admins\""),
        "{e}"
    );

    let e = err("[log]\nformat = \"xml\"\n", &[]);
    assert!(
        e.ends_with(": log.format: unknown value \"xml\" (expected one of: text, json)"),
        "{e}"
    );

    let e = err("[irc]\nport = 1\n", &[]);
    assert!(
        e.ends_with(": irc.server: missing (this key is required in its section)"),
        "{e}"
    );
}

#[test]
fn bad_values_are_refused_with_what_was_expected() {
    let e = err("[store]\nurl = \"mysql://x\"\n", &[]);
    assert!(
        e.ends_with(
            ": store.url: \"mysql://x\" is not supported (expected sqlite:PATH or postgres://...)"
        ),
        "{e}"
    );
    let e = err("", &[("SHEPHERD_STORE__URL", "mysql://x")]);
    assert!(
        e.starts_with("environment SHEPHERD_STORE__URL: store.url: "),
        "{e}"
    );

    let e = err("[http]\nlisten = \"localhost:80\"\n", &[]);
    assert!(
        e.ends_with(
            ": http.listen: \"localhost:80\" is not valid: invalid socket address syntax \
             (expected IP:PORT such as 127.0.0.1:8080)"
        ),
        "{e}"
    );

    let e = err("[gitlab]\nurl = \"ftp://gitlab.example\"\n", &[]);
    assert!(
        e.ends_with(
            ": gitlab.url: \"ftp://gitlab.example/\" is not supported (expected an http:// or \
             https:// URL)"
        ),
        "{e}"
    );
    let e = err("[gitlab]\nurl = \"not a url\"\n", &[]);
    assert!(
        e.ends_with(": gitlab.url: relative URL without a base: \"not a url\" (expected an http:// or https:// URL)"),
        "{e}"
    );

    let e = err("[queue]\nworkers = 0\n", &[]);
    assert!(
        e.ends_with(": queue.workers: 0 is too small (expected at least 1)"),
        "{e}"
    );
    let e = err("[queue]\nmax_attempts = 0\n", &[]);
    assert!(
        e.ends_with(": queue.max_attempts: 0 is too small (expected at least 1)"),
        "{e}"
    );
    let e = err("[queue]\nurl = \"redis://x\"\n", &[]);
    assert!(
        e.contains(": queue.url: \"redis://x\" is not supported"),
        "{e}"
    );
    let e = err("[rate_limits]\nper_room_per_minute = 0\n", &[]);
    assert!(
        e.contains(": rate_limits.per_room_per_minute: 0 is too small"),
        "{e}"
    );
    let e = err("[[people]]\nname = \"a\"\nidentities = [\"alice\"]\n", &[]);
    assert!(
        e.contains(": people[0].identities[0]: \"alice\" does not start with a front end"),
        "{e}"
    );
    let e = err(
        "[alerts]\n[[alerts.routes]]\nmatchers = []\ntargets = [\"#ops\"]\n",
        &[],
    );
    assert!(
        e.contains(": alerts.routes[0].targets[0]: \"#ops\" is not a room"),
        "{e}"
    );
}

#[test]
fn canary_and_comment_settings_are_checked() {
    let canary = |reference: &str, variables: &str| {
        err(
            &format!(
                "[[canary.projects]]\nproject = \"g/p\"\nvariables = {{ {variables} }}\n\
                 [[canary.projects.references]]\ntree = \"mainline\"\nproject = \"g/pipes\"\n{reference}"
            ),
            &[],
        )
    };
    let e = canary("", "A = \"x\"");
    assert!(
        e.contains(": canary.projects[0].references[0]: needs exactly one of `pipeline`"),
        "{e}"
    );
    let e = canary("pipeline = 1\nbranch = \"main\"\n", "A = \"x\"");
    assert!(e.contains("needs exactly one of"), "{e}");
    let e = canary("pipeline = 1\n", "A = \"{{ mr.ref \"");
    assert!(
        e.contains(": canary.projects[0].variables.A: \"{{ mr.ref \" is not a valid template"),
        "{e}"
    );
    let e = canary("pipeline = 1\n", "\"not-a-name\" = \"x\"");
    assert!(
        e.contains("variables.not-a-name: is not a CI variable name"),
        "{e}"
    );
    let e = err(
        "[[canary.projects]]\nproject = \"nopath\"\nreferences = []\n",
        &[],
    );
    assert!(
        e.contains("canary.projects[0].project: \"nopath\" is not a project path")
            && e.contains("canary.projects[0].references: must list at least one"),
        "{e}"
    );
    let e = err(
        "[[canary.projects]]\nproject = \"g/p\"\nreferences = [\
         { tree = \"a\", project = \"g/x\", pipeline = 1 }, { tree = \"a\", project = \"g/x\", pipeline = 2 }]\n",
        &[],
    );
    assert!(
        e.contains("references[1].tree: \"a\" is listed twice"),
        "{e}"
    );
    let e = err("[gitlab_comments]\nmax_body_bytes = 10\n", &[]);
    assert!(
        e.contains("gitlab_comments.max_body_bytes: 10 is too small"),
        "{e}"
    );
    let e = err("[gitlab_comments]\nmin_access_level = \"admin\"\n", &[]);
    assert!(e.contains("gitlab_comments.min_access_level"), "{e}");
}

#[test]
fn several_validation_problems_are_reported_together() {
    let e = err("[queue]\nworkers = 0\nmax_attempts = 0\n", &[]);
    let lines: Vec<&str> = e.lines().collect();
    assert_eq!(lines.len(), 2, "{e}");
    assert!(
        lines[0].contains("queue.max_attempts") && lines[1].contains("queue.workers"),
        "{e}"
    );
}

#[test]
fn secret_from_env_and_from_file() {
    let c = load_text(
        "[gitlab]\ntoken_env = \"MY_TOKEN\"\n",
        &[("MY_TOKEN", "tok-env")],
    )
    .expect("load");
    assert_eq!(c.gitlab.token().map(Secret::expose), Some("tok-env"));
    assert!(c.warnings().is_empty());

    let secret = file("tok-file\n");
    let text = format!(
        "[gitlab]\ntoken_file = {:?}\n",
        secret.path().display().to_string()
    );
    let c = load_text(&text, &[("GITLAB_TOKEN", "ignored")]).expect("load");
    assert_eq!(
        c.gitlab.token().map(Secret::expose),
        Some("tok-file"),
        "the file wins and its trailing newline is removed"
    );
}

#[test]
fn absent_secret_variable_is_none_and_a_warning() {
    let c = load_text("[alerts]\nwebhook_token_env = \"AM_TOKEN\"\n", &[]).expect("load");
    assert!(
        c.alerts
            .as_ref()
            .and_then(AlertsConfig::webhook_token)
            .is_none()
    );
    assert!(
        c.warnings()
            .iter()
            .any(|w| w.starts_with("alerts.webhook_token: env AM_TOKEN is not set")),
        "{:?}",
        c.warnings()
    );
    assert!(
        c.redacted_toml()
            .contains("webhook_token = \"<unset: env AM_TOKEN is not set>\"")
    );
}

#[test]
fn unreadable_secret_file_names_key_and_file() {
    let e = err("[gitlab]\ntoken_file = \"/nonexistent/token\"\n", &[]);
    assert!(
        e.contains(": gitlab.token_file: cannot read secret file /nonexistent/token: "),
        "{e}"
    );
}

#[test]
fn secrets_never_appear_in_redacted_toml_or_debug() {
    let secret = file("file-secret-value\n");
    let text = format!(
        "[http]\napi_token_file = {:?}\n[irc]\nserver = \"h\"\nsasl_password_env = \"PW\"\n",
        secret.path().display().to_string()
    );
    let c = load_text(
        &text,
        &[
            ("GITLAB_TOKEN", "env-secret-value"),
            ("PW", "irc-secret-value"),
        ],
    )
    .expect("load");
    let shown = c.redacted_toml();
    let debug = format!("{c:?}");
    for value in ["file-secret-value", "env-secret-value", "irc-secret-value"] {
        assert!(!shown.contains(value), "{value} in {shown}");
        assert!(!debug.contains(value), "{value} in {debug}");
    }
    assert!(shown.contains("token = \"<redacted>\""), "{shown}");
    assert!(shown.contains("sasl_password = \"<redacted>\""), "{shown}");
    assert!(shown.contains("api_token = \"<redacted>\""), "{shown}");
    assert!(shown.contains("token_env = \"GITLAB_TOKEN\""), "{shown}");
    assert!(
        shown.contains("nick = \"shepherd\""),
        "effective values are shown: {shown}"
    );
}

#[test]
fn passwords_inside_urls_never_appear_in_redacted_toml_debug_or_errors() {
    let c = load_text(
        "[store]\nurl = \"postgres://shepherd:store-pw-1@127.0.0.1/db?sslpassword=store-pw-2\"\n\
         [queue]\nurl = \"amqp://guest:queue-pw-3@127.0.0.1:5672/%2f\"\n",
        &[],
    )
    .expect("load");
    assert_eq!(
        c.store.url.expose(),
        "postgres://shepherd:store-pw-1@127.0.0.1/db?sslpassword=store-pw-2"
    );
    let shown = c.redacted_toml();
    let debug = format!("{c:?}");
    for value in ["store-pw-1", "store-pw-2", "queue-pw-3"] {
        assert!(!shown.contains(value), "{value} in {shown}");
        assert!(!debug.contains(value), "{value} in {debug}");
    }
    assert!(
        shown.contains("url = \"amqp://guest:<redacted>@127.0.0.1:5672/%2f\""),
        "{shown}"
    );

    // Refused values are quoted in errors: redacted there too.
    let e = err("[store]\nurl = \"mysql://root:store-pw-4@db/x\"\n", &[]);
    assert!(
        e.contains("\"mysql://root:<redacted>@db/x\" is not supported"),
        "{e}"
    );
    let e = err("[queue]\nurl = \"redis://u:queue-pw-5@mq\"\n", &[]);
    assert!(!e.contains("queue-pw-5") && e.contains("queue.url"), "{e}");
    let e = err("[gitlab]\nurl = \"https://u:gitlab-pw-6@bad host/\"\n", &[]);
    assert!(
        !e.contains("gitlab-pw-6") && e.contains("gitlab.url"),
        "{e}"
    );
    // An API URL with credentials in it is refused, without repeating them.
    let e = err(
        "[gitlab]\nurl = \"https://root:gitlab-pw-7@gitlab.example/\"\n",
        &[],
    );
    assert!(
        e.contains("gitlab.url: must not contain a user name or password"),
        "{e}"
    );
    assert!(!e.contains("gitlab-pw-7"), "{e}");
    let e = err(
        "[alerts]\nalertmanager_url = \"http://am:am-pw-8@127.0.0.1:9093\"\n",
        &[],
    );
    assert!(
        !e.contains("am-pw-8") && e.contains("alerts.alertmanager_url"),
        "{e}"
    );
}

#[test]
fn redacted_toml_of_the_shipped_file_is_toml() {
    let c = load_from(&shipped_path(), env(&[("USER", "u")])).expect("load");
    let shown = c.redacted_toml();
    let table: toml::Table = shown.parse().expect("valid TOML");
    assert_eq!(
        table["gitlab"]["token"].as_str(),
        Some("<unset: env GITLAB_TOKEN is not set>")
    );
    assert_eq!(table["console"]["identity"].as_str(), Some("console:u"));
    assert_eq!(table["people"][0]["name"].as_str(), Some("local"));
}

#[test]
fn missing_file_names_the_path() {
    let e = load_from(Path::new("/nonexistent/shepherd.toml"), env(&[]))
        .expect_err("missing")
        .to_string();
    assert_eq!(
        e,
        "/nonexistent/shepherd.toml: configuration file not found (pass --config PATH or set \
         SHEPHERD_CONFIG)"
    );
}

#[test]
fn syntax_error_has_line_and_column() {
    let f = file("production = false\n[bot]\nname = \"x\nprefix = \"!\"\n");
    let e = load_from(f.path(), env(&[]))
        .expect_err("syntax")
        .to_string();
    let expected = format!("{}:3:10: TOML syntax error: ", f.path().display());
    assert!(e.starts_with(&expected), "{e}");

    let f = file("[queue]\nworkers = = 3\n");
    let e = load_from(f.path(), env(&[]))
        .expect_err("syntax")
        .to_string();
    assert!(e.starts_with(&format!("{}:2:", f.path().display())), "{e}");
}

#[test]
fn console_identity_and_irc_nick_defaults() {
    let c = load_text("[bot]\nname = \"herder\"\n[irc]\nserver = \"h\"\n", &[]).expect("load");
    assert_eq!(c.console.identity(), "console:unknown");
    assert_eq!(c.irc.as_ref().map(IrcConfig::nick), Some("herder"));
    let c = load_text("[console]\nidentity = \"console:root\"\n", &[("USER", "x")]).expect("load");
    assert_eq!(c.console.identity(), "console:root");
}

#[test]
fn default_path_is_the_shipped_file() {
    // Only meaningful when the test process has no SHEPHERD_CONFIG.
    if std::env::var_os("SHEPHERD_CONFIG").is_none() {
        assert_eq!(default_path(), PathBuf::from("config/shepherd.toml"));
    }
}

#[test]
fn channel_keys_parse_from_one_variable() {
    let keys = crate::parse_channel_keys(" #a=one, #b = two ,broken,#c=, =x");
    assert_eq!(keys.len(), 2, "{keys:?}");
    assert_eq!(keys.get("#a").map(String::as_str), Some("one"));
    assert_eq!(keys.get("#b").map(String::as_str), Some("two"));
}

#[test]
fn targets_must_be_rooms_a_configured_front_end_is_in() {
    let irc = "[irc]\nserver = \"h\"\nchannels = [\"#ops\"]\n";
    let e = err(
        &format!("{irc}[alerts]\ndefault_targets = [\"irc:#typo\"]\n"),
        &[],
    );
    assert!(
        e.contains(
            "alerts.default_targets[0]: \"irc:#typo\" #typo is not one of irc.channels (#ops)"
        ),
        "{e}"
    );
    let e = err("[alerts]\ndefault_targets = [\"irc:#ops\"]\n", &[]);
    assert!(e.contains("names IRC, but [irc] is not configured"), "{e}");
    let e = err("[alerts]\ndefault_targets = [\"gitlab:g/p!1\"]\n", &[]);
    assert!(e.contains("[gitlab_comments] is not configured"), "{e}");
    let e = err(
        "[alerts]\ndefault_targets = [\"matrix:!r:example.org\"]\n",
        &[],
    );
    assert!(
        e.contains("names Matrix, but [matrix] is not configured"),
        "{e}"
    );
    let matrix = "[matrix]\nhomeserver = \"http://127.0.0.1:8008\"\nuser = \"@bot:x\"\nrooms = [\"!r:example.org\", \"#ops:example.org\"]\n";
    let e = err(
        &format!("{matrix}[alerts]\ndefault_targets = [\"matrix:!other\"]\n"),
        &[],
    );
    assert!(e.contains("!other is not one of matrix.rooms"), "{e}");
    let e = err(
        &format!("{matrix}[alerts]\ndefault_targets = [\"matrix:@alice:x\"]\n"),
        &[],
    );
    assert!(e.contains("is not a Matrix room"), "{e}");
    load_text(
        &format!(
            "{matrix}[alerts]\ndefault_targets = [\"matrix:!r:example.org\", \"matrix:#OPS:example.org\"]\n"
        ),
        &[],
    )
    .expect("a room id and an alias (without case) of matrix.rooms");
    // Channels compare without case; a query (a nick) is always a place IRC can deliver to.
    load_text(
        &format!(
            "{irc}[alerts]\ndefault_targets = [\"irc:#OPS\", \"irc:alice\", \"console:console\"]\n"
        ),
        &[],
    )
    .expect("valid targets");
}

#[test]
fn matrix_section_defaults_secrets_and_mistakes() {
    let c = load_text(
        "[bot]\nname = \"herder\"\n[matrix]\nhomeserver = \"https://matrix.example.org\"\nuser = \"@herder:example.org\"\npassword_env = \"MX_PW\"\nrooms = [\"!abc:example.org\"]\nautojoin = [\"@*:example.org\"]\n",
        &[("MX_PW", "hunter2-matrix")],
    )
    .expect("load");
    let m = c.matrix.as_ref().expect("matrix section");
    assert_eq!(
        m.display_name(),
        "herder",
        "display name defaults to bot.name"
    );
    assert_eq!(m.catch_up_minutes, 10);
    assert_eq!(m.store_path, PathBuf::from("matrix-store"));
    assert_eq!(m.encrypt_for, MatrixEncryptFor::AllDevices);
    assert_eq!(m.password().map(Secret::expose), Some("hunter2-matrix"));
    let printed = c.redacted_toml();
    assert!(!printed.contains("hunter2-matrix"), "{printed}");
    assert!(printed.contains("[matrix]"), "{printed}");

    let e = err(
        "[matrix]\nhomeserver = \"ftp://x\"\nuser = \"shepherd\"\nrooms = [\"ops\", \"#noserver\"]\nautojoin = [\"alice\"]\nmax_message_bytes = 70000\n",
        &[],
    );
    for expected in [
        "matrix.homeserver",
        "matrix.user: \"shepherd\" is not a Matrix user id",
        "matrix.rooms[0]",
        "matrix.rooms[1]",
        "matrix.autojoin[0]",
        "matrix.max_message_bytes",
    ] {
        assert!(e.contains(expected), "{expected} missing from: {e}");
    }
}

const COMMENTS: &str = "[gitlab_comments]\nwebhook_secret_env = \"HOOK_SECRET\"\n";

#[test]
fn herder_and_failover_sections_load_with_their_defaults() {
    let text = format!(
        "{COMMENTS}[herder]\nprojects = [\"cki/pipeline\"]\n\
         [[herder.matchers]]\nname = \"runner-system-failure\"\naction = \"retry\"\n\
         failure_reason = [\"runner_system_failure\"]\nretry_delays = [\"1m\", \"5m\"]\n\
         [[herder.matchers]]\nname = \"oom\"\naction = \"report\"\nmessages = [\"/out of memory/i\"]\n\
         [[failover]]\nname = \"beaker\"\ngroup = \"cki\"\nvariables = {{ BEAKER_URL = \"https://beaker-2.example.org\" }}\n"
    );
    let c = load_text(&text, &[]).expect("loads");
    let herder = c.herder.expect("herder");
    assert_eq!(herder.trace_tail_bytes, 256 * 1024);
    let retry = &herder.matchers[0];
    assert_eq!(retry.action, crate::HerderAction::Retry);
    assert_eq!(
        (retry.job_status.as_slice(), retry.retry_limit),
        (&["failed".to_string()][..], 3)
    );
    assert_eq!(
        [1, 2, 3, 9].map(|n| retry.retry_delay(n).as_secs()),
        [60, 300, 300, 300],
        "the last delay repeats"
    );
    let report = &herder.matchers[1];
    assert_eq!(report.retry_delays, ["5m"]);
    assert_eq!(report.retry_delay(1).as_secs(), 300);
    assert_eq!(c.failover[0].group.as_deref(), Some("cki"));
    assert_eq!(
        c.failover[0].variables["BEAKER_URL"],
        "https://beaker-2.example.org"
    );
}

#[test]
fn herder_and_failover_mistakes_name_their_keys() {
    let shown = err(
        "[herder]\nprojects = [\"nogroup\"]\ntargets = [\"irc:#nowhere\"]\ntrace_tail_bytes = 10\n\
         [[herder.matchers]]\nname = \"a b\"\naction = \"retry\"\njob_status = []\nretry_delays = [\"soon\"]\n\
         [[herder.matchers]]\nname = \"A-B\"\naction = \"report\"\nretry_delays = []\nmessages = [\" \"]\n\
         [[herder.matchers]]\nname = \"a-b\"\naction = \"report\"\n\
         [[failover]]\nname = \"x\"\nproject = \"g/p\"\ngroup = \"g\"\nvariables = {}\n\
         [[failover]]\nname = \"X\"\nvariables = { \"BAD-NAME\" = \"1\" }\n",
        &[],
    );
    for key in [
        "herder:",
        "herder.projects[0]",
        "herder.targets[0]",
        "herder.trace_tail_bytes",
        "herder.matchers[0].name",
        "herder.matchers[0].job_status",
        "herder.matchers[0].retry_delays[0]",
        "herder.matchers[1].retry_delays",
        "herder.matchers[1].messages[0]",
        "herder.matchers[2].name",
        "failover[0]:",
        "failover[0].variables",
        "failover[1]:",
        "failover[1].name",
        "failover[1].variables.BAD-NAME",
    ] {
        assert!(shown.contains(key), "{key} not named in:\n{shown}");
    }
    assert!(shown.contains("\"soon\" is not a duration"), "{shown}");
    assert!(shown.contains("needs [gitlab_comments]"), "{shown}");

    let action = err(
        &format!(
            "{COMMENTS}[herder]\nprojects = [\"g/p\"]\n[[herder.matchers]]\nname = \"m\"\naction = \"reboot\"\n"
        ),
        &[],
    );
    assert!(
        action.contains("herder.matchers") && action.contains("reboot"),
        "{action}"
    );
}
