//! What one delivery round sends: which outbox messages, in which order, and which to park.
//!
//! - **Fair**: messages are taken round-robin across conversations (a room, and the person a
//!   message is addressed to in it), each conversation in its own order. Someone with a long
//!   list of replies waiting — or a storm of alert lines — holds a bystander's answer back by
//!   one line per turn, not by the whole list.
//! - **Small rounds**: a round ends after `max_lines` lines, so what arrives meanwhile gets its
//!   turn soon, since every round is acknowledged before the next is planned.
//! - **One message per round in a room that refused one**: a server's refusal names a room, not
//!   a line. After a refusal (a moderated channel, a colour filter) the room is `careful` for a
//!   while: its rounds hold one message each, so a refusal is that message's and the ones the
//!   server accepts beside it are not sent again. Elsewhere rounds hold as many as fit — the
//!   first refusal in a room may repeat the messages of that one round.
//! - **Suspects alone**: a message whose earlier send was refused or never acknowledged goes in
//!   a round of its own, so a bad one cannot fail the good ones beside it again; one that has
//!   used up its attempts is parked, and the messages behind it go on. So is one for a target no
//!   IRC line can name, or for a channel the bot is not configured to be in.
//! - **Closed rooms wait**: a room that cannot take messages now (not joined yet, kicked,
//!   waiting after a refusal) is skipped with everything in it, so its order holds; the caller
//!   leaves closed rooms out of the window it reads, so they never crowd out the open ones.

use std::collections::{HashMap, HashSet};

use shepherd_core::outbox::OutboxMessage;

use crate::safe_text::is_irc_target;

/// One message of a round with the IRC lines it becomes.
pub struct Outgoing<'a> {
    pub message: &'a OutboxMessage,
    pub lines: Vec<String>,
}

#[derive(Default)]
pub struct Plan<'a> {
    pub send: Vec<Outgoing<'a>>,
    /// Messages to give up on, with the reason.
    pub park: Vec<(&'a OutboxMessage, String)>,
}

/// The conversation a message belongs to: its room and its addressee, case-insensitively.
fn conversation(m: &OutboxMessage) -> (String, String) {
    (
        m.origin.room.to_ascii_lowercase(),
        m.origin
            .addressee
            .as_deref()
            .unwrap_or("")
            .to_ascii_lowercase(),
    )
}

/// `pending` (oldest first) reordered round-robin across conversations, each in its own order.
pub fn fair_order(pending: &[OutboxMessage]) -> Vec<&OutboxMessage> {
    let mut queues: Vec<Vec<&OutboxMessage>> = Vec::new();
    let mut index: HashMap<(String, String), usize> = HashMap::new();
    for m in pending {
        let i = *index.entry(conversation(m)).or_insert_with(|| {
            queues.push(Vec::new());
            queues.len() - 1
        });
        queues[i].push(m);
    }
    let mut out = Vec::with_capacity(pending.len());
    let longest = queues.iter().map(Vec::len).max().unwrap_or(0);
    for turn in 0..longest {
        out.extend(queues.iter().filter_map(|q| q.get(turn).copied()));
    }
    out
}

/// How rooms stand and what a round may hold.
pub struct Rules<'r> {
    /// Whether a room (lower case) takes messages now.
    pub open: &'r dyn Fn(&str) -> bool,
    /// Whether a room (lower case) refused a message lately: one message per round there.
    pub careful: &'r dyn Fn(&str) -> bool,
    /// Whether a channel (lower case) is one the bot is configured to join.
    pub configured: &'r dyn Fn(&str) -> bool,
    /// Lines in a round (a message is never split across rounds).
    pub max_lines: usize,
    pub max_attempts: u32,
}

/// Plans one round; `lines(m)` gives a message's IRC lines.
pub fn plan<'a>(
    pending: &'a [OutboxMessage],
    rules: &Rules<'_>,
    lines: impl Fn(&OutboxMessage) -> Vec<String>,
) -> Plan<'a> {
    let mut plan = Plan::default();
    let mut closed: HashSet<String> = HashSet::new();
    let mut in_round: HashSet<String> = HashSet::new();
    let mut line_count = 0;
    for m in fair_order(pending) {
        let room = m.origin.room.to_ascii_lowercase();
        if closed.contains(&room) {
            continue;
        }
        let addressee_ok = m.origin.addressee.as_deref().is_none_or(is_irc_target);
        if !is_irc_target(&m.origin.room) || !addressee_ok {
            plan.park
                .push((m, "not a valid IRC target (room or addressee)".to_string()));
            continue;
        }
        if super::is_channel(&room) && !(rules.configured)(&room) {
            plan.park
                .push((m, format!("{} is not one of irc.channels", m.origin.room)));
            continue;
        }
        if !(rules.open)(&room) || (in_round.contains(&room) && (rules.careful)(&room)) {
            // Closed, or careful and with its message in this round: the rest of it waits.
            closed.insert(room);
            continue;
        }
        if m.attempts >= rules.max_attempts {
            plan.park.push((
                m,
                format!("refused or not acknowledged {} times", m.attempts),
            ));
            continue;
        }
        let suspect = m.attempts > 0;
        if suspect && !plan.send.is_empty() {
            break;
        }
        let lines = lines(m);
        line_count += lines.len();
        in_round.insert(room);
        plan.send.push(Outgoing { message: m, lines });
        if suspect || line_count >= rules.max_lines {
            break;
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use super::*;
    use shepherd_core::Origin;

    fn msg(id: &str, room: &str, to: Option<&str>, attempts: u32) -> OutboxMessage {
        let origin = Origin::new("irc", room);
        OutboxMessage {
            id: id.into(),
            origin: match to {
                Some(n) => origin.addressed_to(n),
                None => origin,
            },
            body: format!("body {id}"),
            request_id: None,
            created_at: 0,
            slot: None,
            send_started_at: None,
            attempts,
        }
    }

    fn ids(plan: &Plan<'_>) -> Vec<String> {
        plan.send.iter().map(|o| o.message.id.clone()).collect()
    }

    fn one_line(m: &OutboxMessage) -> Vec<String> {
        vec![m.body.clone()]
    }

    fn rules<'r>(open: &'r dyn Fn(&str) -> bool, max_lines: usize) -> Rules<'r> {
        Rules {
            open,
            careful: &|room: &str| room == "#careful",
            configured: &|c: &str| c != "#elsewhere",
            max_lines,
            max_attempts: 3,
        }
    }

    const ALL_OPEN: &dyn Fn(&str) -> bool = &|_: &str| true;

    #[test]
    fn a_long_conversation_does_not_hold_a_bystander_back() {
        let mut pending: Vec<OutboxMessage> = (0..10)
            .map(|i| msg(&format!("flood{i}"), "#ops", Some("flooder"), 0))
            .collect();
        pending.push(msg("pong", "#ops", Some("bystander"), 0));
        pending.push(msg("alert", "#ops", None, 0));
        let order: Vec<&str> = fair_order(&pending).iter().map(|m| m.id.as_str()).collect();
        assert_eq!(&order[..4], ["flood0", "pong", "alert", "flood1"]);
        // Each conversation keeps its own order.
        let floods: Vec<&&str> = order.iter().filter(|i| i.starts_with("flood")).collect();
        assert!(floods.windows(2).all(|w| w[0] < w[1]), "{floods:?}");
    }

    #[test]
    fn a_round_ends_after_max_lines() {
        let pending: Vec<OutboxMessage> = (0..10)
            .map(|i| msg(&format!("m{i}"), &format!("#r{i}"), None, 0))
            .collect();
        let p = plan(&pending, &rules(ALL_OPEN, 4), one_line);
        assert_eq!(ids(&p), ["m0", "m1", "m2", "m3"]);
    }

    #[test]
    fn a_suspect_goes_alone_and_a_spent_one_is_parked() {
        let pending = vec![
            msg("a", "#a", None, 0),
            msg("suspect", "#b", None, 1),
            msg("c", "#c", None, 0),
        ];
        assert_eq!(ids(&plan(&pending, &rules(ALL_OPEN, 10), one_line)), ["a"]);
        let pending = vec![msg("suspect", "#b", None, 2), msg("c", "#c", None, 0)];
        assert_eq!(
            ids(&plan(&pending, &rules(ALL_OPEN, 10), one_line)),
            ["suspect"]
        );
        let pending = vec![msg("spent", "#b", None, 3), msg("c", "#c", None, 0)];
        let p = plan(&pending, &rules(ALL_OPEN, 10), one_line);
        assert_eq!(ids(&p), ["c"]);
        assert_eq!(p.park.len(), 1);
        assert_eq!(p.park[0].0.id, "spent");
    }

    #[test]
    fn closed_rooms_wait_whole_and_bad_targets_are_parked() {
        let pending = vec![
            msg("x1", "#closed", None, 0),
            msg("y", "#open", None, 0),
            msg("x2", "#closed", Some("n"), 0),
            msg("bad", "#a b", None, 0),
            msg("badnick", "#open", Some("a\r\nQUIT"), 0),
            msg("comma", "#a,#b", None, 0),
            msg("unjoinable", "#elsewhere", None, 0),
        ];
        // Bad targets are parked whether or not their room would be open.
        let only_open: &dyn Fn(&str) -> bool = &|room: &str| room == "#open";
        let p = plan(&pending, &rules(only_open, 10), one_line);
        assert_eq!(ids(&p), ["y"]);
        let parked: Vec<&str> = p.park.iter().map(|(m, _)| m.id.as_str()).collect();
        assert_eq!(parked, ["bad", "badnick", "comma", "unjoinable"]);
    }

    #[test]
    fn a_careful_room_gets_one_message_per_round() {
        let pending = vec![
            msg("c1", "#careful", None, 0),
            msg("c2", "#careful", Some("n"), 0),
            msg("b1", "#b", None, 0),
            msg("c3", "#careful", None, 0),
            msg("b2", "#b", None, 0),
        ];
        let p = plan(&pending, &rules(ALL_OPEN, 10), one_line);
        assert_eq!(ids(&p), ["c1", "b1", "b2"]);
    }
}
