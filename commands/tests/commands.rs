//! Every command form parses to the exact `Command` expected, with and without an MR context.

use shepherd_commands::{
    COMMAND_NAMES, Command, DeploySource, MatchOp, Matcher, MrRef, ParseContext, PipelineRef,
    Target, Var, parse, usage,
};

fn plain(text: &str) -> Command {
    parse(text, &ParseContext::default()).unwrap_or_else(|e| panic!("{text}: {e:?}"))
}

fn mr_ctx() -> ParseContext {
    ParseContext::in_mr(MrRef {
        instance: None,
        project: Some("kernel/ark".into()),
        iid: 7,
    })
}

fn in_mr(text: &str) -> Command {
    parse(text, &mr_ctx()).unwrap_or_else(|e| panic!("{text}: {e:?}"))
}

fn var(k: &str, v: &str) -> Var {
    Var {
        key: k.into(),
        value: v.into(),
    }
}

fn pipe(project: Option<&str>, id: u64) -> PipelineRef {
    PipelineRef {
        instance: None,
        project: project.map(Into::into),
        id,
    }
}

fn mr(project: Option<&str>, iid: u64) -> MrRef {
    MrRef {
        instance: None,
        project: project.map(Into::into),
        iid,
    }
}

/// A reference pasted as a web URL keeps the instance it names.
fn on(instance: &str, mut p: PipelineRef) -> PipelineRef {
    p.instance = Some(instance.into());
    p
}

fn mr_on(instance: &str, mut m: MrRef) -> MrRef {
    m.instance = Some(instance.into());
    m
}

fn m(name: &str, op: MatchOp, value: &str) -> Matcher {
    Matcher {
        name: name.into(),
        op,
        value: value.into(),
    }
}

#[test]
fn simple_commands() {
    assert_eq!(plain("help"), Command::Help { topic: None });
    assert_eq!(
        plain("help Retrigger"),
        Command::Help {
            topic: Some("retrigger".into())
        }
    );
    assert_eq!(plain("ping"), Command::Ping);
    assert_eq!(plain("PING"), Command::Ping);
    assert_eq!(plain("Version"), Command::Version);
    assert_eq!(plain("whoami"), Command::Whoami);
}

#[test]
fn please_is_ignored_anywhere() {
    assert_eq!(plain("please ping"), Command::Ping);
    assert_eq!(plain("ping PLEASE"), Command::Ping);
    assert_eq!(
        plain("please retrigger please 42 please A=1 Please"),
        Command::Retrigger {
            pipeline: pipe(None, 42),
            overrides: vec![var("A", "1")],
        }
    );
    // Quoted, it is a value like any other.
    assert_eq!(
        plain(r#"help "please""#),
        Command::Help {
            topic: Some("please".into())
        }
    );
}

#[test]
fn retrigger_forms() {
    assert_eq!(
        plain(
            "retrigger https://gitlab.com/redhat/red-hat-ci-tools/kernel/cki-internal-pipelines/cki-trusted-contributors/-/pipelines/1234567 DEBUG=1 msg=\"a b\" [ARCH=x86_64 NAME=\"v 2\"]"
        ),
        Command::Retrigger {
            pipeline: on(
                "https://gitlab.com",
                pipe(
                    Some(
                        "redhat/red-hat-ci-tools/kernel/cki-internal-pipelines/cki-trusted-contributors"
                    ),
                    1234567
                )
            ),
            overrides: vec![
                var("DEBUG", "1"),
                var("msg", "a b"),
                var("ARCH", "x86_64"),
                var("NAME", "v 2"),
            ],
        }
    );
    // Overrides may come before the pipeline, and the order is kept.
    assert_eq!(
        plain("RETRIGGER [B=2] A=1 group/project/pipelines/9 _C="),
        Command::Retrigger {
            pipeline: pipe(Some("group/project"), 9),
            overrides: vec![var("B", "2"), var("A", "1"), var("_C", "")],
        }
    );
    assert_eq!(
        plain("retrigger 77"),
        Command::Retrigger {
            pipeline: pipe(None, 77),
            overrides: vec![],
        }
    );
    // Values keep `=` and escapes are resolved.
    assert_eq!(
        plain(r#"retrigger 1 URL=https://x/?a=b Q="say \"hi\"\\\n""#),
        Command::Retrigger {
            pipeline: pipe(None, 1),
            overrides: vec![var("URL", "https://x/?a=b"), var("Q", "say \"hi\"\\\n")],
        }
    );
}

#[test]
fn test_canary_retest() {
    assert_eq!(in_mr("test"), Command::Test { overrides: vec![] });
    assert_eq!(
        in_mr("test please [DEBUG=1] X=y"),
        Command::Test {
            overrides: vec![var("DEBUG", "1"), var("X", "y")]
        }
    );
    assert_eq!(
        plain("canary group/project!12 ARCH=s390x"),
        Command::Canary {
            mr: mr(Some("group/project"), 12),
            overrides: vec![var("ARCH", "s390x")],
        }
    );
    assert_eq!(
        in_mr("canary ARCH=s390x"),
        Command::Canary {
            mr: mr(Some("kernel/ark"), 7),
            overrides: vec![var("ARCH", "s390x")],
        }
    );
    assert_eq!(
        in_mr("canary !3"),
        Command::Canary {
            mr: mr(None, 3),
            overrides: vec![],
        }
    );
    assert_eq!(
        plain("retest https://gitlab.com/a/b/-/merge_requests/5"),
        Command::Retest {
            mr: mr_on("https://gitlab.com", mr(Some("a/b"), 5))
        }
    );
    assert_eq!(
        in_mr("retest"),
        Command::Retest {
            mr: mr(Some("kernel/ark"), 7)
        }
    );
}

#[test]
fn status_and_cancel() {
    assert_eq!(
        plain("status 55"),
        Command::Status {
            target: Target::Pipeline(pipe(None, 55))
        }
    );
    assert_eq!(
        plain("status g/p!4"),
        Command::Status {
            target: Target::Mr(mr(Some("g/p"), 4))
        }
    );
    assert_eq!(
        in_mr("status"),
        Command::Status {
            target: Target::Mr(mr(Some("kernel/ark"), 7))
        }
    );
    assert_eq!(
        plain("cancel https://gitlab.example.com/g/p/-/pipelines/8"),
        Command::Cancel {
            target: Target::Pipeline(on("https://gitlab.example.com", pipe(Some("g/p"), 8)))
        }
    );
    assert_eq!(
        in_mr("Cancel"),
        Command::Cancel {
            target: Target::Mr(mr(Some("kernel/ark"), 7))
        }
    );
}

#[test]
fn deploy_forms() {
    assert_eq!(
        plain("deploy web g/p!12 to staging"),
        Command::Deploy {
            service: "web".into(),
            source: DeploySource::Mr(mr(Some("g/p"), 12)),
            env: Some("staging".into()),
        }
    );
    assert_eq!(
        plain("deploy datawarehouse v1.2.3"),
        Command::Deploy {
            service: "datawarehouse".into(),
            source: DeploySource::Tag("v1.2.3".into()),
            env: None,
        }
    );
    assert_eq!(
        in_mr("deploy web TO production"),
        Command::Deploy {
            service: "web".into(),
            source: DeploySource::Mr(mr(Some("kernel/ark"), 7)),
            env: Some("production".into()),
        }
    );
    assert_eq!(
        plain("deploy web https://gitlab.com/g/p/-/merge_requests/3/diffs"),
        Command::Deploy {
            service: "web".into(),
            source: DeploySource::Mr(mr_on("https://gitlab.com", mr(Some("g/p"), 3))),
            env: None,
        }
    );
}

#[test]
fn rollback_and_deployments() {
    assert_eq!(
        plain("rollback web"),
        Command::Rollback {
            service: "web".into(),
            env: None,
            to: None
        }
    );
    assert_eq!(
        plain("rollback web in production to v1.2"),
        Command::Rollback {
            service: "web".into(),
            env: Some("production".into()),
            to: Some("v1.2".into())
        }
    );
    assert_eq!(
        plain("rollback web to mr-12-abc in staging"),
        Command::Rollback {
            service: "web".into(),
            env: Some("staging".into()),
            to: Some("mr-12-abc".into())
        }
    );
    assert_eq!(
        plain("deployments web"),
        Command::Deployments {
            service: "web".into(),
            env: None,
        }
    );
    assert_eq!(
        plain("deployments web in staging"),
        Command::Deployments {
            service: "web".into(),
            env: Some("staging".into()),
        }
    );
    let digest = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(
        plain(&format!(
            "rollback web to {}",
            digest.to_uppercase().replace("SHA256", "sha256")
        )),
        Command::Rollback {
            service: "web".into(),
            env: None,
            to: Some(digest.clone())
        }
    );
    assert_eq!(
        plain(&format!("deploy web {digest} to staging")),
        Command::Deploy {
            service: "web".into(),
            source: DeploySource::Digest(digest.clone()),
            env: Some("staging".into()),
        }
    );
}

#[test]
fn confirm_lock_unlock() {
    assert_eq!(
        plain("confirm K7M2QZ"),
        Command::Confirm {
            code: "k7m2qz".into()
        }
    );
    assert_eq!(
        plain("lock production release freeze until Monday"),
        Command::Lock {
            env: "production".into(),
            reason: Some("release freeze until Monday".into()),
        }
    );
    assert_eq!(
        plain("lock staging"),
        Command::Lock {
            env: "staging".into(),
            reason: None,
        }
    );
    assert_eq!(
        plain("unlock staging"),
        Command::Unlock {
            env: "staging".into()
        }
    );
    for bad in [
        "confirm",
        "confirm k7-m2",
        "confirm abc",
        "confirm k7m2qz extra",
        "lock",
        "unlock",
        "unlock a b",
        "deployments web at staging",
        "rollback web to sha256:abc",
    ] {
        let parsed = parse(bad, &ParseContext::default());
        assert!(parsed.is_err(), "{bad:?} should not parse: {parsed:?}");
    }
}

#[test]
fn alerts_silence_unsilence() {
    assert_eq!(plain("alerts"), Command::Alerts { filter: vec![] });
    assert_eq!(
        plain(
            r#"alerts severity=~"critical|page" env!=dev [team!~"infra.*"] alertname="Disk full""#
        ),
        Command::Alerts {
            filter: vec![
                m("severity", MatchOp::Regex, "critical|page"),
                m("env", MatchOp::NotEq, "dev"),
                m("team", MatchOp::NotRegex, "infra.*"),
                m("alertname", MatchOp::Eq, "Disk full"),
            ]
        }
    );
    assert_eq!(
        plain("silence alertname=DiskFull instance=~\"web-.*\" for 2h30m disk is being replaced"),
        Command::Silence {
            matchers: vec![
                m("alertname", MatchOp::Eq, "DiskFull"),
                m("instance", MatchOp::Regex, "web-.*"),
            ],
            duration_secs: 9000,
            duration_text: "2h30m".into(),
            reason: Some("disk is being replaced".into()),
        }
    );
    assert_eq!(
        plain("silence job=x FOR 1d"),
        Command::Silence {
            matchers: vec![m("job", MatchOp::Eq, "x")],
            duration_secs: 86400,
            duration_text: "1d".into(),
            reason: None,
        }
    );
    assert_eq!(
        plain(r#"silence a="" for 30m "maintenance window""#),
        Command::Silence {
            matchers: vec![m("a", MatchOp::Eq, "")],
            duration_secs: 1800,
            duration_text: "30m".into(),
            reason: Some("maintenance window".into()),
        }
    );
    assert_eq!(
        plain("unsilence 2d3c8a4e-1b7f-4b0e-9b39-0c1e5e8f3a11"),
        Command::Unsilence {
            id: "2d3c8a4e-1b7f-4b0e-9b39-0c1e5e8f3a11".into()
        }
    );
}

#[test]
fn names_and_usages() {
    let ctx = mr_ctx();
    let samples = [
        "help",
        "ping",
        "version",
        "whoami",
        "retrigger 1",
        "test",
        "canary",
        "retest",
        "status",
        "cancel",
        "deploy web v1",
        "rollback web",
        "deployments web",
        "confirm abcdef",
        "lock production",
        "unlock production",
        "alerts",
        "silence a=b for 1h",
        "unsilence abc",
        "herder",
        "failover beaker",
        "failback beaker",
        "failovers",
    ];
    let names: Vec<&str> = samples
        .iter()
        .map(|s| parse(s, &ctx).unwrap().name())
        .collect();
    assert_eq!(names, COMMAND_NAMES);
    assert_eq!(
        usage("retrigger"),
        Some("retrigger <pipeline> [key=value ...]")
    );
    assert_eq!(
        usage("SILENCE"),
        Some("silence <matcher ...> for <duration> [reason ...]")
    );
    assert_eq!(usage("nope"), None);
}

#[test]
fn serde_round_trip_and_shape() {
    let c = plain("retrigger g/p/pipelines/3 A=1");
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(
        json,
        r#"{"command":"retrigger","pipeline":{"project":"g/p","id":3},"overrides":[{"key":"A","value":"1"}]}"#
    );
    assert_eq!(serde_json::from_str::<Command>(&json).unwrap(), c);
    let s = plain("status !4");
    assert_eq!(
        serde_json::to_string(&s).unwrap(),
        r#"{"command":"status","target":{"mr":{"project":null,"iid":4}}}"#
    );
    for c in [
        Command::Ping,
        plain("silence a=~\"x\" for 1h why"),
        plain("deploy web v1 to prod"),
    ] {
        let back: Command = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}

#[test]
fn display_is_canonical_and_parses_back() {
    let ctx = mr_ctx();
    let cases = [
        (
            "please retrigger HTTPS://H/g/p/-/pipelines/3 B=\"x y\" [A=1]",
            "retrigger https://h/g/p/-/pipelines/3 B=\"x y\" A=1",
        ),
        (
            "canary http://h:8080/g/p/-/merge_requests/2/diffs K=\"\"",
            "canary http://h:8080/g/p/-/merge_requests/2 K=\"\"",
        ),
        (
            "retrigger g/p/-/pipelines/3 please",
            "retrigger g/p/pipelines/3",
        ),
        ("canary g/p!2", "canary g/p!2"),
        ("test", "test"),
        ("status", "status kernel/ark!7"),
        ("deploy web v1 to prod", "deploy web v1 to prod"),
        ("rollback web to v1 in prod", "rollback web in prod to v1"),
        ("alerts a=b", "alerts a=\"b\""),
        (
            "silence a!~b.* for 1h because \"it's\" fine",
            "silence a!~\"b.*\" for 1h \"because it's fine\"",
        ),
        ("help status", "help status"),
        ("herder", "herder"),
        (
            "herder HTTPS://H/g/p/-/jobs/5#L12",
            "herder https://h/g/p/-/jobs/5",
        ),
        ("herder g/sub/p/jobs/9", "herder g/sub/p/-/jobs/9"),
        ("failover beaker", "failover beaker"),
        ("failback beaker-2", "failback beaker-2"),
        ("failovers", "failovers"),
    ];
    for (input, canonical) in cases {
        let c = parse(input, &ctx).unwrap();
        assert_eq!(c.to_string(), canonical, "{input}");
        assert_eq!(parse(canonical, &ctx).unwrap(), c, "{canonical}");
    }
}

#[test]
fn herder_and_failover_commands() {
    assert_eq!(plain("herder"), Command::Herder { job: None });
    assert_eq!(
        plain("herder https://gitlab.example.com/cki/pipeline/-/jobs/123"),
        Command::Herder {
            job: Some(shepherd_commands::JobRef {
                instance: Some("https://gitlab.example.com".into()),
                project: "cki/pipeline".into(),
                id: 123,
            })
        }
    );
    assert_eq!(
        plain("failover beaker"),
        Command::Failover {
            switch: "beaker".into()
        }
    );
    assert_eq!(
        plain("failback beaker"),
        Command::Failback {
            switch: "beaker".into()
        }
    );
    assert_eq!(plain("failovers"), Command::Failovers);
    assert!(plain("failover x").is_mutating() && plain("failback x").is_mutating());
    assert!(!plain("failovers").is_mutating() && !plain("herder").is_mutating());
    for bad in [
        "herder 123",
        "herder g/p/-/pipelines/1",
        "herder https://h/g/p/-/jobs/0",
        "herder https://h/p/-/jobs/1",
        "herder g/p/-/jobs/1 extra",
        "failover",
        "failover a b",
        "failover -x",
        "failback",
        "failovers now",
    ] {
        assert!(parse(bad, &ParseContext::default()).is_err(), "{bad}");
    }
    assert_eq!(usage("failover"), Some("failover <switch>"));
    assert_eq!(usage("herder"), Some("herder [job url]"));
}
