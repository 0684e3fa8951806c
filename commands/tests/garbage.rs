//! Property-style checks on generated input: nothing panics, errors stay inside the text and
//! reply in one line, and every parsed command's `Display` parses back to the same command.
//!
//! The generator is a fixed-seed xorshift over pieces that exercise the grammar (quotes,
//! escapes, brackets, references, keywords, markdown) mixed with arbitrary characters.

use shepherd_commands::{
    Addressing, COMMAND_NAMES, Frontend, MrRef, ParseContext, addressed, parse,
};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// What generated messages are made of, besides every command word (`COMMAND_NAMES`).
const PIECES: &[&str] = &[
    " ",
    " ",
    " ",
    "\t",
    "\n",
    "\r\n",
    "\"",
    "\\",
    "\\\"",
    "\\n",
    "\\q",
    "[",
    "]",
    "=",
    "!=",
    "=~",
    "!~",
    "!",
    "~",
    "/",
    "-",
    ".",
    "_",
    "`",
    "```",
    "~~~",
    ">",
    ">>>",
    "    ",
    "@shepherd ",
    "@shepherdx",
    "shepherd: ",
    "!",
    "please",
    "PLEASE",
    "to",
    "in",
    "for",
    "0",
    "1",
    "42",
    "99999999999999999999",
    "1h",
    "30m",
    "2h30m",
    "0s",
    "1d",
    "g/p",
    "group/sub/project",
    "/pipelines/",
    "/-/pipelines/",
    "/-/merge_requests/",
    "https://gitlab.com/",
    "!12",
    "A=1",
    "KEY=\"v 2\"",
    "[A=1 B=\"x\"]",
    "severity=~\"crit|page\"",
    "env!=dev",
    "é",
    "ü",
    "日本",
    "🐑",
    "\u{0}",
    "\u{200b}",
    "v1.2",
    "web",
    "prod",
];

fn garbage(rng: &mut XorShift) -> String {
    let pieces: Vec<&str> = PIECES.iter().chain(COMMAND_NAMES).copied().collect();
    let len = rng.below(24);
    let mut s = String::new();
    for _ in 0..len {
        if rng.below(5) == 0 {
            // An arbitrary scalar value, including control characters and far planes.
            let c = char::from_u32((rng.next() % 0x11_0000) as u32).unwrap_or('\u{fffd}');
            s.push(c);
        } else {
            s.push_str(pieces[rng.below(pieces.len())]);
        }
    }
    s
}

fn check(text: &str, ctx: &ParseContext, parsed: &mut usize) {
    match parse(text, ctx) {
        Ok(command) => {
            *parsed += 1;
            let canonical = command.to_string();
            assert_eq!(
                parse(&canonical, ctx).as_ref(),
                Ok(&command),
                "{text:?} displayed as {canonical:?}"
            );
            let json = serde_json::to_string(&command).unwrap();
            assert_eq!(
                serde_json::from_str::<shepherd_commands::Command>(&json).unwrap(),
                command
            );
        }
        Err(e) => {
            assert!(e.position <= text.len(), "{text:?}: {e:?}");
            let reply = e.reply(text);
            assert!(!reply.contains('\n'), "{text:?}: {reply:?}");
            assert!(reply.ends_with('.'), "{reply}");
            assert!(reply.contains("help"), "{reply}");
            // A reply for some other text must not panic either.
            let _ = e.reply("é");
        }
    }
}

#[test]
fn generated_input_never_panics_and_round_trips() {
    let addr = Addressing {
        bot_name: "shepherd",
        prefix: "!",
        user_id: None,
    };
    let contexts = [
        ParseContext::default(),
        ParseContext::in_mr(MrRef {
            instance: None,
            project: Some("g/p".into()),
            iid: 3,
        }),
    ];
    let mut rng = XorShift(0x5eed_cafe_f00d_d00d);
    let mut parsed = 0;
    for _ in 0..30_000 {
        let message = garbage(&mut rng);
        for frontend in [Frontend::Console, Frontend::Chat, Frontend::GitLabComment] {
            for text in addressed(frontend, &message, &addr) {
                assert!(message.contains(text));
                for ctx in &contexts {
                    check(text, ctx, &mut parsed);
                }
            }
        }
        for ctx in &contexts {
            check(&message, ctx, &mut parsed);
        }
    }
    // The generator must reach the success paths too, or the round-trip check proves nothing.
    assert!(parsed > 500, "only {parsed} commands parsed");
}

#[test]
fn pathological_shapes() {
    let ctx = ParseContext::default();
    let long_quote = format!("retrigger 1 A=\"{}", "x".repeat(100_000));
    let many_brackets = "[".repeat(10_000);
    let many_ticks = "`".repeat(10_000) + "\n@shepherd ping";
    let deep_path = format!("retrigger {}pipelines/1", "a/".repeat(10_000));
    for text in [
        long_quote.as_str(),
        many_brackets.as_str(),
        many_ticks.as_str(),
        deep_path.as_str(),
    ] {
        let _ = parse(text, &ctx);
        for frontend in [Frontend::Console, Frontend::Chat, Frontend::GitLabComment] {
            let addr = Addressing {
                bot_name: "shepherd",
                prefix: "!",
                user_id: None,
            };
            for t in addressed(frontend, text, &addr) {
                let _ = parse(t, &ctx).map_err(|e| e.reply(t));
            }
        }
    }
}
