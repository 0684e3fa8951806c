//! Every error kind: its position and the exact reply line the user sees.

use shepherd_commands::{MrRef, ParseContext, ParseError, ParseErrorKind, parse};

fn err(text: &str) -> ParseError {
    parse(text, &ParseContext::default()).expect_err(text)
}

fn reply(text: &str) -> String {
    err(text).reply(text)
}

fn err_in_mr(text: &str) -> ParseError {
    parse(
        text,
        &ParseContext::in_mr(MrRef {
            instance: None,
            project: None,
            iid: 1,
        }),
    )
    .expect_err(text)
}

#[test]
fn empty() {
    for text in ["", "   ", "please", " PLEASE please "] {
        let e = err(text);
        assert_eq!(e.kind, ParseErrorKind::Empty);
        assert_eq!(e.position, 0);
        assert_eq!(e.reply(text), "empty command. Try `help`.");
    }
}

#[test]
fn unknown_command() {
    let e = err("please retriger 1");
    assert_eq!(
        e.kind,
        ParseErrorKind::UnknownCommand {
            word: "retriger".into(),
            did_you_mean: Some("retrigger".into())
        }
    );
    assert_eq!(e.position, 7);
    assert_eq!(
        e.reply("please retriger 1"),
        "unknown command `retriger` — did you mean `retrigger`? Try `help`."
    );
    assert_eq!(
        reply("frobnicate x"),
        "unknown command `frobnicate`. Try `help`."
    );
    // A quoted or bracketed first word is never a command.
    assert_eq!(
        err("\"ping\"").kind,
        ParseErrorKind::UnknownCommand {
            word: "ping".into(),
            did_you_mean: Some("ping".into())
        }
    );
}

#[test]
fn missing_argument() {
    let e = err("retrigger A=1");
    assert_eq!(
        e.kind,
        ParseErrorKind::MissingArgument {
            command: "retrigger",
            argument: "<pipeline>",
            usage: "retrigger <pipeline> [key=value ...]"
        }
    );
    assert_eq!(e.position, 13);
    assert_eq!(
        e.reply("retrigger A=1"),
        "retrigger: missing <pipeline> (usage: `retrigger <pipeline> [key=value ...]`). See `help retrigger`."
    );
    assert_eq!(
        reply("canary"),
        "canary: missing <mr> (usage: `canary <mr> [key=value ...]`). See `help canary`."
    );
    assert_eq!(
        reply("status"),
        "status: missing <pipeline or mr> (usage: `status <pipeline or mr>`). See `help status`."
    );
    assert_eq!(
        reply("deploy web"),
        "deploy: missing <mr, tag or digest> (usage: `deploy <service> <mr, tag or digest> [to <env>]`). See `help deploy`."
    );
    assert_eq!(
        reply("deploy to prod"),
        "deploy: missing <service> (usage: `deploy <service> <mr, tag or digest> [to <env>]`). See `help deploy`."
    );
    assert_eq!(
        reply("deploy web v1 to"),
        "deploy: missing <env> (usage: `deploy <service> <mr, tag or digest> [to <env>]`). See `help deploy`."
    );
    assert_eq!(
        reply("rollback web to"),
        "rollback: missing <tag or digest> (usage: `rollback <service> [in <env>] [to <tag or digest>]`). See `help rollback`."
    );
    assert_eq!(
        reply("silence for 1h"),
        "silence: missing <matcher> (usage: `silence <matcher ...> for <duration> [reason ...]`). See `help silence`."
    );
    assert_eq!(err("silence for 1h").position, 8);
    assert_eq!(
        reply("silence a=b"),
        "silence: missing for <duration> (usage: `silence <matcher ...> for <duration> [reason ...]`). See `help silence`."
    );
    assert_eq!(
        reply("silence a=b for"),
        "silence: missing <duration> (usage: `silence <matcher ...> for <duration> [reason ...]`). See `help silence`."
    );
    assert_eq!(
        reply("unsilence"),
        "unsilence: missing <silence id> (usage: `unsilence <silence id>`). See `help unsilence`."
    );
    assert_eq!(
        reply("deployments"),
        "deployments: missing <service> (usage: `deployments <service> [in <env>]`). See `help deployments`."
    );
}

#[test]
fn bad_value() {
    let text = "retrigger pipelines/abc";
    let e = err(text);
    assert_eq!(
        e.kind,
        ParseErrorKind::BadValue {
            argument: "pipeline reference",
            value: "pipelines/abc".into(),
            expected: "a pipeline URL, group/project/pipelines/ID or an ID"
        }
    );
    assert_eq!(e.position, 10);
    assert_eq!(e.command, Some("retrigger"));
    assert_eq!(
        e.reply(text),
        "retrigger: `pipelines/abc` at column 11 is not a pipeline reference (expected a pipeline URL, group/project/pipelines/ID or an ID). See `help retrigger`."
    );
    assert_eq!(
        reply("retrigger 1 1BAD=x"),
        "retrigger: `1BAD=x` at column 13 is not a variable override (expected KEY=value, KEY made of letters, digits and _ and not starting with a digit). See `help retrigger`."
    );
    assert_eq!(
        reply("retrigger 1 [A=1 nope]"),
        "retrigger: `nope` at column 18 is not a variable override (expected KEY=value, KEY made of letters, digits and _ and not starting with a digit). See `help retrigger`."
    );
    assert_eq!(
        reply("canary 12"),
        "canary: `12` at column 8 is not a merge request reference (expected a merge request URL, group/project!IID or !IID). See `help canary`."
    );
    assert_eq!(
        reply("status x/y"),
        "status: `x/y` at column 8 is not a pipeline or merge request reference (expected a pipeline URL, group/project/pipelines/ID, an ID, a merge request URL, group/project!IID or !IID). See `help status`."
    );
    assert_eq!(
        reply("deploy web/x v1"),
        "deploy: `web/x` at column 8 is not a service name (expected letters, digits, '.', '_' and '-', starting with a letter or digit). See `help deploy`."
    );
    assert_eq!(
        reply("deploy web v1 to pr/od"),
        "deploy: `pr/od` at column 18 is not an environment name (expected letters, digits, '.', '_' and '-', starting with a letter or digit). See `help deploy`."
    );
    assert_eq!(
        reply("deploy web -v1"),
        "deploy: `-v1` at column 12 is not a merge request, image tag or digest (expected a merge request (URL, group/project!IID or !IID), an image tag or a digest (sha256:...)). See `help deploy`."
    );
    assert_eq!(
        reply("alerts severity"),
        "alerts: `severity` at column 8 is not a matcher (expected a label matcher like severity=critical, env!=dev or alertname=~\"Disk.*\"). See `help alerts`."
    );
    assert_eq!(
        reply("silence a=b 1h"),
        "silence: `1h` at column 13 is not a matcher (expected a label matcher; a duration goes after `for`, as in `silence alertname=DiskFull for 1h`). See `help silence`."
    );
    for d in ["0s", "500ms", "soon", "-1h"] {
        let text = format!("silence a=b for {d}");
        assert_eq!(
            reply(&text),
            format!(
                "silence: `{d}` at column 17 is not a duration (expected a duration of at least one second like 30m, 2h30m or 1d). See `help silence`."
            )
        );
    }
    assert_eq!(
        reply("unsilence abc_def"),
        "unsilence: `abc_def` at column 11 is not a silence id (expected the silence's id, as shown by `silence`). See `help unsilence`."
    );
    // Columns count characters, not bytes.
    assert_eq!(
        reply("retrigger \"é\" ü"),
        "retrigger: `é` at column 11 is not a pipeline reference (expected a pipeline URL, group/project/pipelines/ID or an ID). See `help retrigger`."
    );
}

#[test]
fn unexpected_argument() {
    let e = err("ping now");
    assert_eq!(
        e.kind,
        ParseErrorKind::UnexpectedArgument {
            command: "ping",
            argument: "now".into()
        }
    );
    assert_eq!(e.position, 5);
    assert_eq!(
        e.reply("ping now"),
        "ping: unexpected argument `now` at column 6 (usage: `ping`). See `help ping`."
    );
    assert_eq!(
        reply("retrigger 1 2"),
        "retrigger: unexpected argument `2` at column 13 (usage: `retrigger <pipeline> [key=value ...]`). See `help retrigger`."
    );
    assert_eq!(
        reply("rollback web at prod"),
        "rollback: unexpected argument `at` at column 14 (usage: `rollback <service> [in <env>] [to <tag or digest>]`). See `help rollback`."
    );
    assert_eq!(
        reply("status [A=1]"),
        "status: unexpected argument `A=1` at column 9 (usage: `status <pipeline or mr>`). See `help status`."
    );
    assert_eq!(
        reply("help a b"),
        "help: unexpected argument `b` at column 8 (usage: `help [command]`). See `help help`."
    );
    assert_eq!(
        err_in_mr("test !2").kind,
        ParseErrorKind::UnexpectedArgument {
            command: "test",
            argument: "!2".into()
        }
    );
}

#[test]
fn duplicate_arg() {
    let text = "retrigger 1 A=1 [B=2 A=3]";
    let e = err(text);
    assert_eq!(e.kind, ParseErrorKind::DuplicateArg { key: "A".into() });
    assert_eq!(e.position, 21);
    assert_eq!(
        e.reply(text),
        "retrigger: `A` is given twice (again at column 22); give it once. See `help retrigger`."
    );
    // Keys are case-sensitive, like GitLab variables.
    assert!(parse("retrigger 1 a=1 A=2", &ParseContext::default()).is_ok());
    assert_eq!(
        reply("rollback web in a in b"),
        "rollback: `in` is given twice (again at column 19); give it once. See `help rollback`."
    );
}

#[test]
fn unclosed_quote_bracket_and_bad_escape() {
    let text = "retrigger 1 MSG=\"hello";
    let e = err(text);
    assert_eq!(
        (e.kind.clone(), e.position, e.command),
        (ParseErrorKind::UnclosedQuote, 16, Some("retrigger"))
    );
    assert_eq!(
        e.reply(text),
        "retrigger: the quote `\"` at column 17 is never closed; end the value with `\"` (write `\\\"` for a quote inside). See `help retrigger`."
    );
    let text = "retrigger 1 [A=1 B=2";
    let e = err(text);
    assert_eq!(
        (e.kind.clone(), e.position),
        (ParseErrorKind::UnclosedBracket, 12)
    );
    assert_eq!(
        e.reply(text),
        "retrigger: the bracket `[` at column 13 is never closed; end the list with `]`. See `help retrigger`."
    );
    let text = r#"retrigger 1 A="x\q""#;
    let e = err(text);
    assert_eq!(
        (e.kind.clone(), e.position),
        (ParseErrorKind::BadEscape, 16)
    );
    assert_eq!(
        e.reply(text),
        "retrigger: unknown escape `\\q` at column 17 in quoted text (use `\\\"`, `\\\\`, `\\n` or `\\t`). See `help retrigger`."
    );
    // Before a command word is known, the reply points to `help`.
    let text = "\"oops";
    assert_eq!(
        err(text).reply(text),
        "the quote `\"` at column 1 is never closed; end the value with `\"` (write `\\\"` for a quote inside). Try `help`."
    );
}

#[test]
fn needs_merge_request() {
    let e = err("please test A=1");
    assert_eq!(
        e.kind,
        ParseErrorKind::NeedsMergeRequest { command: "test" }
    );
    assert_eq!(e.position, 7);
    assert_eq!(
        e.reply("please test A=1"),
        "`test` only works in a merge request comment; elsewhere use `canary <mr> [key=value ...]`. See `help canary`."
    );
}

#[test]
fn display_of_errors() {
    assert_eq!(
        err("ping x").to_string(),
        "ping: unexpected argument `x` (at byte 5)"
    );
    assert_eq!(err("").to_string(), "empty command (at byte 0)");
}

#[test]
fn reply_survives_a_mismatched_input() {
    // `reply` is given the wrong text: no panic, still one line.
    let e = err("retrigger \"ééé\"");
    let r = e.reply("é");
    assert!(r.starts_with("retrigger: `ééé` at column 2 "), "{r}");
    let e = err("unknown\nword");
    assert!(!e.reply("").contains('\n'));
}
