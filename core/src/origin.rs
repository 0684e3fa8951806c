//! Where a request came from and where its replies go: a front end and a room within it.
//!
//! Rooms are named the same way everywhere (alert routes, `POST /api/v1/say`, the outbox):
//! `irc:#ops`, `matrix:!roomid`, `gitlab:group/project!12`, `console:console`.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Origin {
    pub frontend: String,
    pub room: String,
    /// Who to address in the room (the asker's nick in an IRC channel); not part of the
    /// room's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addressee: Option<String>,
}

impl Origin {
    pub fn new(frontend: impl Into<String>, room: impl Into<String>) -> Self {
        Self {
            frontend: frontend.into(),
            room: room.into(),
            addressee: None,
        }
    }

    /// The same room, addressed to someone.
    pub fn addressed_to(mut self, addressee: impl Into<String>) -> Self {
        self.addressee = Some(addressee.into());
        self
    }

    /// Rebuilds an origin from its stored columns.
    pub fn from_columns(frontend: String, room: String, addressee: Option<String>) -> Self {
        Self {
            frontend,
            room,
            addressee,
        }
    }

    /// A GitLab merge request's comment thread: `gitlab:group/project!12`.
    pub fn merge_request(project: &str, iid: u64) -> Self {
        Self::new("gitlab", format!("{project}!{iid}"))
    }

    /// The project and iid of a merge request's room, if this is one.
    pub fn as_merge_request(&self) -> Option<(&str, u64)> {
        if self.frontend != "gitlab" {
            return None;
        }
        let (project, iid) = self.room.rsplit_once('!')?;
        let iid = iid.parse().ok()?;
        (!project.is_empty()).then_some((project, iid))
    }

    /// Parses `frontend:room`; the room may itself contain colons (`matrix:!a:b`). No network
    /// names a room with white space or control characters in it, and a room is written into
    /// protocol lines (`PRIVMSG <room> :...`), so such a target is refused here, where targets
    /// come in from configuration and from `POST /api/v1/say`.
    pub fn parse(target: &str) -> Option<Self> {
        let (frontend, room) = target.split_once(':')?;
        let frontend_ok = !frontend.is_empty()
            && frontend
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        (frontend_ok && shepherd_config::is_room_name(room)).then(|| Self::new(frontend, room))
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.frontend, self.room)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_targets() {
        let o = Origin::parse("matrix:!abc:example.org").expect("valid");
        assert_eq!(o.frontend, "matrix");
        assert_eq!(o.room, "!abc:example.org");
        assert_eq!(o.to_string(), "matrix:!abc:example.org");
        assert_eq!(Origin::parse("irc:"), None);
        assert_eq!(Origin::parse("nocolon"), None);
        // Nothing that would end or extend a protocol line.
        for bad in [
            "irc:#ops\r\nQUIT :bye",
            "irc:#ops\nJOIN #x",
            "irc:#ops :text",
            "irc:#o\u{0}ps",
            "irc:#o\u{7}ps",
            "irc:#o\u{85}ps",
            "IRC:#ops",
            "i rc:#ops",
        ] {
            assert_eq!(Origin::parse(bad), None, "{bad:?}");
        }
        assert!(Origin::parse("email:ops@example.org").is_some());
        assert!(Origin::parse("matrix:#ops:example.org").is_some());
    }

    #[test]
    fn merge_request_rooms_round_trip() {
        let o = Origin::merge_request("group/sub/project", 12);
        assert_eq!(o.to_string(), "gitlab:group/sub/project!12");
        assert_eq!(o.as_merge_request(), Some(("group/sub/project", 12)));
        assert_eq!(Origin::new("irc", "#ops").as_merge_request(), None);
        assert_eq!(Origin::new("gitlab", "g/p!x").as_merge_request(), None);
    }
}
