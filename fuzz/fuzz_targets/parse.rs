//! Fuzz target: addressing on every front end and parsing (with and without an MR context) must
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
    let contexts = [
        ParseContext::default(),
        ParseContext::in_mr(MrRef {
            instance: None,
            project: Some("group/project".into()),
            iid: 1,
        }),
    ];
    for frontend in [Frontend::Console, Frontend::Chat, Frontend::GitLabComment] {
        for text in addressed(frontend, message, &addr) {
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
