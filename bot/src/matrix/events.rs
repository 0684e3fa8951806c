//! What shepherd reads of a room event, and how it answers one.
//!
//! Events are read from their JSON with small lenient structs of our own instead of the full
//! typed model, so an event from a hostile or buggy client (a body that is not a string, an
//! unknown relation, a 40 kB message) is simply not a command rather than an error. Only
//! `m.room.message` events with `msgtype` `m.text` count: never `m.notice` (other bots, and
//! shepherd itself), never an edit (`m.replace`: a changed message is not a new command).
//!
//! A reply is addressed to the asker's event: the outbox origin's `addressee` holds a [`ReplyTo`]
//! (as JSON) — the event, its sender (mentioned, so they are notified) and the thread it was in.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// A text message someone wrote in a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TextMessage {
    pub event_id: String,
    pub sender: String,
    pub body: String,
    /// `origin_server_ts`, Unix milliseconds.
    pub sent_at: i64,
    /// The root of the thread it was written in.
    pub thread: Option<String>,
}

/// A room event as far as shepherd cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Text(TextMessage),
    /// Our own membership became `join`: what came before it in a timeline is the room's history.
    Joined,
    /// Anything else (notices, edits, state, reactions, unknown types).
    Other,
}

#[derive(Deserialize)]
struct RawEvent {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    event_id: Option<String>,
    #[serde(default)]
    sender: Option<String>,
    #[serde(default)]
    origin_server_ts: Option<Value>,
    #[serde(default)]
    state_key: Option<String>,
    #[serde(default)]
    content: Value,
    #[serde(default)]
    unsigned: Value,
}

/// Reads one timeline event (decrypted, when it was encrypted). `me` is the bot's user id.
pub fn read(json: &str, me: &str) -> Event {
    let Ok(raw) = serde_json::from_str::<RawEvent>(json) else {
        return Event::Other;
    };
    let content = &raw.content;
    if raw.kind == "m.room.member" {
        let membership = |c: &Value| {
            c.get("membership")
                .and_then(Value::as_str)
                .map(str::to_string)
        };
        // A join, not a change of name or avatar of a member already in.
        let joined = raw.state_key.as_deref() == Some(me)
            && membership(content).as_deref() == Some("join")
            && raw
                .unsigned
                .get("prev_content")
                .and_then(membership)
                .as_deref()
                != Some("join");
        return if joined { Event::Joined } else { Event::Other };
    }
    if raw.kind != "m.room.message" {
        return Event::Other;
    }
    let (Some(event_id), Some(sender)) = (raw.event_id, raw.sender) else {
        return Event::Other;
    };
    if sender == me || content.get("msgtype").and_then(Value::as_str) != Some("m.text") {
        return Event::Other;
    }
    let relation = content.get("m.relates_to");
    let rel_type = relation
        .and_then(|r| r.get("rel_type"))
        .and_then(Value::as_str);
    if rel_type == Some("m.replace") || content.get("m.new_content").is_some() {
        return Event::Other;
    }
    let Some(body) = content.get("body").and_then(Value::as_str) else {
        return Event::Other;
    };
    let thread = (rel_type == Some("m.thread"))
        .then(|| {
            relation
                .and_then(|r| r.get("event_id"))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .flatten();
    let sent_at = raw
        .origin_server_ts
        .as_ref()
        .and_then(Value::as_i64)
        .unwrap_or(0);
    Event::Text(TextMessage {
        event_id,
        sender,
        body: body.to_string(),
        sent_at,
        thread,
    })
}

/// The sender of our pending invite in a room's invite state, if there is one.
pub fn inviter<'a>(invite_state: impl IntoIterator<Item = &'a str>, me: &str) -> Option<String> {
    invite_state.into_iter().find_map(|json| {
        let raw: RawEvent = serde_json::from_str(json).ok()?;
        (raw.kind == "m.room.member"
            && raw.state_key.as_deref() == Some(me)
            && raw.content.get("membership").and_then(Value::as_str) == Some("invite"))
        .then_some(raw.sender)
        .flatten()
    })
}

/// Who and what a reply answers (kept as the outbox origin's `addressee`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyTo {
    /// The asker's event.
    pub event: String,
    /// The asker, mentioned so they are notified.
    pub sender: String,
    /// The thread the question was asked in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
}

impl ReplyTo {
    pub fn of(m: &TextMessage) -> Self {
        Self {
            event: m.event_id.clone(),
            sender: m.sender.clone(),
            thread: m.thread.clone(),
        }
    }

    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads an `addressee`; anything else (none, or written by something else) is no reply.
    pub fn decode(addressee: Option<&str>) -> Option<Self> {
        serde_json::from_str(addressee?).ok()
    }
}

/// The content of a new `m.notice`: plain body, HTML twin, the relation to the asker's event
/// (in its thread, when it came from one) and intentional mentions (the asker, or nobody).
pub fn notice(plain: &str, html: &str, reply: Option<&ReplyTo>) -> Value {
    let mut content = json!({
        "msgtype": "m.notice",
        "body": plain,
        "format": "org.matrix.custom.html",
        "formatted_body": html,
        "m.mentions": {},
    });
    if let Some(r) = reply {
        content["m.mentions"] = json!({ "user_ids": [r.sender] });
        content["m.relates_to"] = match &r.thread {
            Some(root) => json!({
                "rel_type": "m.thread",
                "event_id": root,
                "is_falling_back": false,
                "m.in_reply_to": { "event_id": r.event },
            }),
            None => json!({ "m.in_reply_to": { "event_id": r.event } }),
        };
    }
    content
}

/// The content of an edit (`m.replace`) that makes `original` say the new text.
pub fn edit(original: &str, plain: &str, html: &str) -> Value {
    json!({
        "msgtype": "m.notice",
        "body": format!("* {plain}"),
        "format": "org.matrix.custom.html",
        "formatted_body": format!("* {html}"),
        "m.mentions": {},
        "m.new_content": {
            "msgtype": "m.notice",
            "body": plain,
            "format": "org.matrix.custom.html",
            "formatted_body": html,
            "m.mentions": {},
        },
        "m.relates_to": { "rel_type": "m.replace", "event_id": original },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "@shepherd:localhost";

    fn text(content: Value) -> String {
        json!({
            "type": "m.room.message",
            "event_id": "$e1",
            "sender": "@alice:localhost",
            "origin_server_ts": 1_700_000_000_000_i64,
            "content": content,
        })
        .to_string()
    }

    #[test]
    fn text_messages_are_read_with_their_thread() {
        let e = read(
            &text(json!({"msgtype": "m.text", "body": "shepherd: ping",
                "m.relates_to": {"rel_type": "m.thread", "event_id": "$root"}})),
            ME,
        );
        assert_eq!(
            e,
            Event::Text(TextMessage {
                event_id: "$e1".into(),
                sender: "@alice:localhost".into(),
                body: "shepherd: ping".into(),
                sent_at: 1_700_000_000_000,
                thread: Some("$root".into()),
            })
        );
    }

    #[test]
    fn notices_edits_own_lines_and_junk_are_not_commands() {
        for content in [
            json!({"msgtype": "m.notice", "body": "!ping"}),
            json!({"msgtype": "m.text", "body": "* !ping", "m.new_content": {"body": "!ping"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}}),
            json!({"msgtype": "m.text", "body": 42}),
            json!({"msgtype": "m.text"}),
            json!({"msgtype": "m.image", "body": "!ping"}),
            json!("not an object"),
        ] {
            assert_eq!(read(&text(content.clone()), ME), Event::Other, "{content}");
        }
        let own = json!({"type": "m.room.message", "event_id": "$e", "sender": ME,
            "content": {"msgtype": "m.text", "body": "!ping"}});
        assert_eq!(read(&own.to_string(), ME), Event::Other);
        for junk in [
            "",
            "{",
            "[]",
            "{\"type\": 5}",
            "{\"type\": \"m.room.message\"}",
        ] {
            assert_eq!(read(junk, ME), Event::Other, "{junk:?}");
        }
    }

    #[test]
    fn our_join_marks_the_end_of_history() {
        let join = json!({"type": "m.room.member", "state_key": ME, "sender": ME,
            "event_id": "$j", "content": {"membership": "join"}});
        assert_eq!(read(&join.to_string(), ME), Event::Joined);
        let other = json!({"type": "m.room.member", "state_key": "@bob:x", "sender": "@bob:x",
            "event_id": "$j", "content": {"membership": "join"}});
        assert_eq!(read(&other.to_string(), ME), Event::Other);
        let renamed = json!({"type": "m.room.member", "state_key": ME, "sender": ME,
            "event_id": "$n", "content": {"membership": "join", "displayname": "shepherd"},
            "unsigned": {"prev_content": {"membership": "join"}}});
        assert_eq!(
            read(&renamed.to_string(), ME),
            Event::Other,
            "a rename is no join"
        );
    }

    #[test]
    fn the_inviter_is_the_sender_of_our_invite() {
        let state = [
            json!({"type": "m.room.create", "state_key": "", "sender": "@x:y", "content": {}})
                .to_string(),
            json!({"type": "m.room.member", "state_key": ME, "sender": "@alice:localhost",
                "content": {"membership": "invite"}})
            .to_string(),
        ];
        assert_eq!(
            inviter(state.iter().map(String::as_str), ME).as_deref(),
            Some("@alice:localhost")
        );
        assert_eq!(inviter(["{}", "junk"], ME), None);
    }

    #[test]
    fn replies_mention_the_asker_and_stay_in_the_thread() {
        let r = ReplyTo {
            event: "$q".into(),
            sender: "@alice:localhost".into(),
            thread: Some("$root".into()),
        };
        assert_eq!(ReplyTo::decode(Some(&r.encode())), Some(r.clone()));
        assert_eq!(ReplyTo::decode(Some("alice")), None);
        let c = notice("pong", "pong", Some(&r));
        assert_eq!(c["msgtype"], "m.notice");
        assert_eq!(c["m.mentions"]["user_ids"][0], "@alice:localhost");
        assert_eq!(c["m.relates_to"]["rel_type"], "m.thread");
        assert_eq!(c["m.relates_to"]["event_id"], "$root");
        assert_eq!(c["m.relates_to"]["m.in_reply_to"]["event_id"], "$q");
        let c = notice("alert", "alert", None);
        assert_eq!(c["m.mentions"], json!({}), "an alert line mentions nobody");
        assert!(c.get("m.relates_to").is_none());
        let e = edit("$first", "new", "<b>new</b>");
        assert_eq!(e["m.relates_to"]["rel_type"], "m.replace");
        assert_eq!(e["m.new_content"]["formatted_body"], "<b>new</b>");
    }
}
