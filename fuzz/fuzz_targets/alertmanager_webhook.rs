//! Fuzz target: an Alertmanager webhook body as `POST /hooks/alertmanager` decodes it, then as
//! the alert lane relays it: routing, the dedup key, and the lines of every room (IRC and
//! elsewhere) from the shipped templates. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shepherd_core::{Formatting, Origin};
use shepherd_core::alerts::{Matcher, Notification, Route, Router, decode_notification};
use shepherd_plugins::alerts::{AlertFormatter, AlertWording};
use std::sync::OnceLock;

fn relay() -> &'static (Router, AlertFormatter, AlertFormatter) {
    static RELAY: OnceLock<(Router, AlertFormatter, AlertFormatter)> = OnceLock::new();
    RELAY.get_or_init(|| {
        let matcher = Matcher::parse(r#"severity=~"critical|page""#).expect("matcher");
        let router = Router {
            routes: vec![Route {
                matchers: vec![matcher],
                targets: vec![Origin::new("irc", "#ops"), Origin::new("matrix", "!r:x")],
                continue_matching: true,
            }],
            default_targets: vec![Origin::new("console", "console")],
        };
        let wording = |per_group| AlertWording {
            firing_template: shepherd_config::DEFAULT_FIRING_TEMPLATE.to_string(),
            resolved_template: shepherd_config::DEFAULT_RESOLVED_TEMPLATE.to_string(),
            per_group,
            group_template: shepherd_config::DEFAULT_GROUP_TEMPLATE.to_string(),
            storm_threshold: 5,
            storm_shown: 3,
        };
        let per_alert = AlertFormatter::new(&wording(false)).expect("templates");
        let per_group = AlertFormatter::new(&wording(true)).expect("templates");
        (router, per_alert, per_group)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok((stored, head)) = decode_notification(data) else {
        return;
    };
    // What was stored is what the lane reads, in full.
    let notification: Notification = stored
        .decode()
        .expect("a stored notification reads as one");
    assert_eq!(notification.alerts.len(), head.alerts.0);
    let _ = notification.content_key();
    let (router, per_alert, per_group) = relay();
    let (plan, _nowhere) = router.plan(&notification);
    for (_room, alerts) in &plan {
        // Every way a front end may show text.
        for formatting in [
            Formatting::Plain,
            Formatting::Mirc,
            Formatting::Markdown,
            Formatting::Html,
        ] {
            let _ = per_alert.lines(formatting, &notification, alerts);
            let _ = per_group.lines(formatting, &notification, alerts);
        }
    }
});
