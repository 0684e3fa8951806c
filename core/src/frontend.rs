//! What each front end can do, as the front end itself declares it.
//!
//! Core and the plugins never ask "which network is this room on?"; they ask the room's
//! [`Capabilities`]: can a message be edited in place (a canary summary is then one message,
//! updated as pipelines progress), how is text formatted there, how do people address the bot
//! (so help shows `!ping` on IRC, `shepherd: ping` in Matrix, `@shepherd ping` in a comment),
//! how long may a message be. The bot's wiring collects the declarations of the front ends it
//! runs into one [`FrontEnds`] table at start; a room of a front end that is not in it gets
//! [`Capabilities::unknown`] (plain text, no edits).

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::origin::Origin;

/// How a front end shows text, and so what the text written for it may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Formatting {
    /// Plain text (a terminal): no markup at all.
    Plain,
    /// Plain text that may carry mIRC formatting codes (bold, colours): IRC.
    Mirc,
    /// Markdown: GitLab notes (tables, links, code spans).
    Markdown,
    /// A plain body with an HTML twin: Matrix. Text for it is written like text for
    /// [`Formatting::Mirc`] (chat lines, inline formatting as mIRC codes, code in backticks); the
    /// front end turns the codes into HTML colour and weight and drops them from the plain body.
    Html,
}

impl Formatting {
    /// Whether text for this front end may carry colours and weight (as mIRC codes).
    pub fn colours(self) -> bool {
        matches!(self, Formatting::Mirc | Formatting::Html)
    }
}

/// How people address the bot on a front end, which is how help shows a command there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandStyle {
    /// Every line is a command (the console): `ping`.
    Bare,
    /// The command prefix: `!ping`.
    Prefix,
    /// The bot's name: `shepherd: ping`.
    Name,
    /// A mention at the start of a line: `@shepherd ping`.
    Mention,
}

/// What one front end can do.
#[derive(Debug, Clone, PartialEq)]
pub struct Capabilities {
    /// The front end's name: the `<front end>` of `<front end>:<room>` targets and origins.
    pub name: &'static str,
    /// A newer message of the same outbox slot replaces the earlier one in place.
    pub edits: bool,
    pub formatting: Formatting,
    pub style: CommandStyle,
    /// The longest message the network takes, in bytes (longer ones are split or cut by the
    /// front end); `None` when there is no practical limit.
    pub max_message_bytes: Option<usize>,
    /// Messages sent per second at most, when the front end paces itself (IRC's flood limits);
    /// `None` when it sends as fast as the network accepts.
    pub messages_per_second: Option<f64>,
}

impl Capabilities {
    /// What is assumed of a front end nobody declared: plain text, one message per line, no edits.
    pub fn unknown() -> Self {
        Self {
            name: "unknown",
            edits: false,
            formatting: Formatting::Plain,
            style: CommandStyle::Bare,
            max_message_bytes: None,
            messages_per_second: None,
        }
    }
}

/// The declarations of the front ends this process runs, by name. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct FrontEnds {
    by_name: Arc<BTreeMap<&'static str, Capabilities>>,
}

impl FrontEnds {
    pub fn new(declared: impl IntoIterator<Item = Capabilities>) -> Self {
        Self {
            by_name: Arc::new(declared.into_iter().map(|c| (c.name, c)).collect()),
        }
    }

    /// The capabilities of the front end named `name`, if it runs here.
    pub fn get(&self, name: &str) -> Option<&Capabilities> {
        self.by_name.get(name)
    }

    /// The capabilities of `origin`'s front end ([`Capabilities::unknown`] if it does not run here).
    pub fn of(&self, origin: &Origin) -> Capabilities {
        self.get(&origin.frontend)
            .cloned()
            .unwrap_or_else(Capabilities::unknown)
    }

    /// Whether messages in `origin`'s room are edited in place.
    pub fn edits(&self, origin: &Origin) -> bool {
        self.get(&origin.frontend).is_some_and(|c| c.edits)
    }

    /// The names of the declared front ends, in order.
    pub fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_name.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn declared(name: &'static str, edits: bool) -> Capabilities {
        Capabilities {
            name,
            edits,
            ..Capabilities::unknown()
        }
    }

    #[test]
    fn rooms_are_judged_by_their_front_ends_declaration() {
        let f = FrontEnds::new([declared("notes", true), declared("chat", false)]);
        assert!(f.edits(&Origin::new("notes", "g/p!1")));
        assert!(!f.edits(&Origin::new("chat", "#ops")));
        assert!(!f.edits(&Origin::new("elsewhere", "x")));
        assert_eq!(
            f.of(&Origin::new("elsewhere", "x")),
            Capabilities::unknown()
        );
        assert_eq!(f.names().collect::<Vec<_>>(), ["chat", "notes"]);
    }

    #[test]
    fn only_chat_formats_carry_colours() {
        assert!(Formatting::Mirc.colours());
        assert!(Formatting::Html.colours());
        assert!(!Formatting::Plain.colours());
        assert!(!Formatting::Markdown.colours());
    }
}
