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

    /// Whether the front end edits a message in place when a newer one of the same slot comes
    /// (a GitLab note); elsewhere every message is a new line.
    pub fn can_edit(&self) -> bool {
        self.frontend == "gitlab"
    }

    /// Parses `frontend:room`; the room may itself contain colons (`matrix:!a:b`).
    pub fn parse(target: &str) -> Option<Self> {
        let (frontend, room) = target.split_once(':')?;
        if frontend.is_empty() || room.is_empty() {
            return None;
        }
        Some(Self::new(frontend, room))
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
    }

    #[test]
    fn merge_request_rooms_round_trip() {
        let o = Origin::merge_request("group/sub/project", 12);
        assert_eq!(o.to_string(), "gitlab:group/sub/project!12");
        assert_eq!(o.as_merge_request(), Some(("group/sub/project", 12)));
        assert!(o.can_edit());
        assert_eq!(Origin::new("irc", "#ops").as_merge_request(), None);
        assert_eq!(Origin::new("gitlab", "g/p!x").as_merge_request(), None);
    }
}
