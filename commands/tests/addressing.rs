//! Addressing rules per front end: what counts as a command for the bot, and what must not.

use shepherd_commands::{Addressing, Frontend, addressed};

const ADDR: Addressing = Addressing {
    bot_name: "shepherd",
    prefix: "!",
    user_id: None,
};

fn chat(message: &str) -> Vec<&str> {
    addressed(Frontend::Chat, message, &ADDR)
}

fn console(message: &str) -> Vec<&str> {
    addressed(Frontend::Console, message, &ADDR)
}

fn gitlab(message: &str) -> Vec<&str> {
    addressed(Frontend::GitLabComment, message, &ADDR)
}

#[test]
fn console_lines() {
    assert_eq!(
        console("ping\n\n   retrigger 1 A=2  \n!status 3\nshepherd: whoami\nShepherd, version\n"),
        vec!["ping", "retrigger 1 A=2", "status 3", "whoami", "version"]
    );
    assert_eq!(console(""), Vec::<&str>::new());
    assert_eq!(console(" \n\t\n"), Vec::<&str>::new());
    assert_eq!(console("shepherd:"), vec![""]);
}

#[test]
fn chat_prefix_and_name() {
    assert_eq!(chat("!retrigger 123 A=1"), vec!["retrigger 123 A=1"]);
    assert_eq!(chat("  !ping  "), vec!["ping"]);
    assert_eq!(chat("shepherd: ping"), vec!["ping"]);
    assert_eq!(chat("SHEPHERD, status 4"), vec!["status 4"]);
    assert_eq!(chat("@shepherd: ping"), vec!["ping"]);
    assert_eq!(chat("shepherd:"), vec![""]);
    assert_eq!(chat("shepherd:ping"), vec!["ping"]);
    // Not for us.
    for text in [
        "ping",
        "hello shepherd: ping",
        "shepherd ping",
        "shepherdx: ping",
        "shepherd::ping",
        "shepherd:/ping",
        "!!!",
        "! ping",
        "!1",
        "",
        "> !ping",
    ] {
        assert_eq!(chat(text), Vec::<&str>::new(), "{text:?}");
    }
    // Only the first line counts; Matrix reply fallbacks are skipped.
    assert_eq!(chat("!ping\n!version"), vec!["ping"]);
    assert_eq!(
        chat("> <@alice:example.org> !retrigger 1\n\nshepherd: status 2"),
        vec!["status 2"]
    );
    assert_eq!(chat("hi\n!ping"), Vec::<&str>::new());
}

#[test]
fn chat_with_other_prefix_and_no_prefix() {
    let addr = Addressing {
        bot_name: "bot",
        prefix: ".",
        user_id: None,
    };
    assert_eq!(addressed(Frontend::Chat, ".ping", &addr), vec!["ping"]);
    assert_eq!(
        addressed(Frontend::Chat, "!ping", &addr),
        Vec::<&str>::new()
    );
    let no_prefix = Addressing {
        bot_name: "bot",
        prefix: "",
        user_id: None,
    };
    assert_eq!(
        addressed(Frontend::Chat, "ping", &no_prefix),
        Vec::<&str>::new()
    );
    assert_eq!(
        addressed(Frontend::Chat, "bot: ping", &no_prefix),
        vec!["ping"]
    );
    let no_name = Addressing {
        bot_name: "",
        prefix: "!",
        user_id: None,
    };
    assert_eq!(
        addressed(Frontend::Chat, ": ping", &no_name),
        Vec::<&str>::new()
    );
}

#[test]
fn gitlab_several_commands_in_order() {
    let note = "Thanks!\n\n@shepherd retrigger 1 A=1\n@Shepherd test [DEBUG=1]\r\nsome text\n@shepherd\n  @shepherd: ping\n";
    assert_eq!(
        gitlab(note),
        vec!["retrigger 1 A=1", "test [DEBUG=1]", "", "ping"]
    );
}

#[test]
fn gitlab_not_us_and_not_at_line_start() {
    assert_eq!(
        gitlab(
            "@shepherdx retrigger 1\n@shepherd.bot ping\ncc @shepherd ping\n@other ping\n- @shepherd ping"
        ),
        Vec::<&str>::new()
    );
}

#[test]
fn gitlab_ignores_fenced_code() {
    let note = "```\n@shepherd retrigger 1\n```\n@shepherd ping\n~~~~ text\n@shepherd cancel 2\n~~~\n@shepherd still in code\n~~~~\n@shepherd version";
    assert_eq!(gitlab(note), vec!["ping", "version"]);
    // A longer closing fence closes; an unclosed fence hides the rest.
    assert_eq!(gitlab("```\n@shepherd a\n`````\n@shepherd b"), vec!["b"]);
    assert_eq!(gitlab("@shepherd a\n```rust\n@shepherd b\n"), vec!["a"]);
    // Inline code on one line is not a fence.
    assert_eq!(gitlab("```x``` \n@shepherd ping"), vec!["ping"]);
}

#[test]
fn gitlab_ignores_indented_code_and_quotes() {
    let note = "    @shepherd retrigger 1\n\t@shepherd retrigger 2\n> @shepherd retrigger 3\n  > @shepherd retrigger 4\n>>>\n@shepherd retrigger 5\n>>>\n@shepherd ping";
    assert_eq!(gitlab(note), vec!["ping"]);
    // Up to three spaces of indentation is still a paragraph line.
    assert_eq!(gitlab("   @shepherd ping"), vec!["ping"]);
}

#[test]
fn gitlab_ignores_inline_code_spans() {
    // A span opened on one line and closed on a later one hides the lines in between.
    let note = "Run `\n@shepherd retrigger 1\n` to retry.\n@shepherd ping";
    assert_eq!(gitlab(note), vec!["ping"]);
    let note = "Use ``code with ` inside\n@shepherd retrigger 1``\n@shepherd version";
    assert_eq!(gitlab(note), vec!["version"]);
    // An unmatched backtick is literal, so the next line is a command.
    assert_eq!(gitlab("it's a ` tick\n@shepherd ping"), vec!["ping"]);
    // A blank line ends the paragraph: spans never cross it.
    assert_eq!(gitlab("open `\n\n@shepherd ping\n`"), vec!["ping"]);
    // On one line, inline code is not at the line start anyway.
    assert_eq!(
        gitlab("`@shepherd retrigger 1`\n@shepherd ping"),
        vec!["ping"]
    );
}

#[test]
fn chat_lines_may_start_with_the_bots_user_id() {
    let addr = Addressing {
        bot_name: "shepherd",
        prefix: "!",
        user_id: Some("@shepherd:example.org"),
    };
    for (line, expected) in [
        ("@shepherd:example.org: ping", Some("ping")),
        ("@shepherd:example.org ping", Some("ping")),
        (
            "@Shepherd:Example.org, help retrigger",
            Some("help retrigger"),
        ),
        ("@shepherd:example.org:", Some("")),
        ("@shepherd:example.orgx ping", None),
        ("@shepherd:example.org.evil ping", None),
        ("@other:example.org: ping", None),
        ("shepherd: ping", Some("ping")),
        ("!ping", Some("ping")),
    ] {
        let got = addressed(Frontend::Chat, line, &addr);
        assert_eq!(got.first().copied(), expected, "{line:?}");
    }
}
