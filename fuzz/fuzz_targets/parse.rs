//! Fuzz target: addressing on every front end (Matrix's user-id address too) and parsing (with and without an MR context) must
//! never panic, and an error's reply must be one line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shepherd_commands::{Addressing, Frontend, MrRef, ParseContext, addressed, parse};

fuzz_target!(|data: &[u8]| {
    let Ok(message) = std::str::from_utf8(data) else {
        return;
    };
    let addr = Addressing {
        bot_name: "shepherd",
        prefix: "!",
        user_id: None,
    };
    // Matrix: the bot's user id addresses it too.
    let matrix = Addressing {
        user_id: Some("@shepherd:example.org"),
        ..addr
    };
    let contexts = [
        ParseContext::default(),
        ParseContext::in_mr(MrRef {
            instance: None,
            project: Some("group/project".into()),
            iid: 1,
        }),
    ];
    let ways = [
        (Frontend::Console, &addr),
        (Frontend::Chat, &addr),
        (Frontend::Chat, &matrix),
        (Frontend::GitLabComment, &addr),
    ];
    for (frontend, addr) in ways {
        for text in addressed(frontend, message, addr) {
            for ctx in &contexts {
                match parse(text, ctx) {
                    Ok(command) => {
                        let _ = command.to_string();
                    }
                    Err(e) => assert!(!e.reply(text).contains('\n')),
                }
            }
        }
    }
});
