//! Text made safe for the network it is written to — the one place that decides which bytes a
//! front end may put on the wire.
//!
//! What shepherd says is built from text it does not control: alert summaries and labels from
//! monitored systems, `POST /api/v1/say` bodies, GitLab titles, job names and branch names,
//! variable values people typed. A NUL or a CR in any of them can end or corrupt a protocol line
//! (IRC), move a terminal's cursor (the console), or hide text in a note (GitLab). Each front
//! end passes every message through its function here just before it writes it:
//!
//! - [`irc`]: CR, CRLF, NEL and the Unicode line and paragraph separators become line breaks
//!   (the splitter then makes separate IRC lines of them); a tab becomes a space; the mIRC
//!   formatting codes (bold, colour, ...) stay, since shepherd's own templates use them; every
//!   other control character — NUL, the CTCP delimiter \x01, ESC, DEL, the C1 controls — is
//!   replaced by a visible stand-in, so the reader sees that something was there.
//! - [`plain`] (console, GitLab notes): the same, except tabs stay and formatting codes are
//!   shown as stand-ins too (they mean nothing there).
//!
//! Stand-ins are the Unicode "control pictures" (`␀` for NUL, `␛` for ESC, `␡` for DEL) and
//! U+FFFD for the C1 controls. Text without control characters is returned as it is, unallocated.

use std::borrow::Cow;

/// The mIRC formatting codes: bold, colour, hex colour, reset, monospace, reverse, italic,
/// strikethrough, underline.
const IRC_FORMATTING: &[char] = &[
    '\u{02}', '\u{03}', '\u{04}', '\u{0f}', '\u{11}', '\u{16}', '\u{1d}', '\u{1e}', '\u{1f}',
];

/// Line breaks other than `\n` that some sender may use: CR (alone or before LF), NEL, LINE
/// SEPARATOR, PARAGRAPH SEPARATOR.
fn is_other_break(c: char) -> bool {
    matches!(c, '\r' | '\u{85}' | '\u{2028}' | '\u{2029}')
}

fn needs_work(c: char) -> bool {
    c != '\n' && (c.is_control() || matches!(c, '\u{2028}' | '\u{2029}'))
}

/// The visible stand-in of a control character.
fn stand_in(c: char) -> char {
    match c {
        '\u{0}'..='\u{1f}' => char::from_u32(0x2400 + c as u32).unwrap_or('\u{fffd}'),
        '\u{7f}' => '\u{2421}',
        _ => '\u{fffd}',
    }
}

fn rewrite(text: &str, keep: impl Fn(char) -> Option<char>) -> Cow<'_, str> {
    if !text.chars().any(needs_work) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if is_other_break(c) {
            if c == '\r' && chars.peek() == Some(&'\n') {
                chars.next();
            }
            out.push('\n');
        } else if needs_work(c) {
            out.push(keep(c).unwrap_or_else(|| stand_in(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// A message as it may be written to IRC (before splitting it into lines at `\n`).
pub fn irc(text: &str) -> Cow<'_, str> {
    rewrite(text, |c| match c {
        '\t' => Some(' '),
        c if IRC_FORMATTING.contains(&c) => Some(c),
        _ => None,
    })
}

/// A message as it may be written to a terminal or into Markdown: line breaks are `\n`, tabs
/// stay, every other control character is shown as a stand-in.
pub fn plain(text: &str) -> Cow<'_, str> {
    rewrite(text, |c| (c == '\t').then_some('\t'))
}

/// A message as it may go into a GitLab note (Markdown): [`plain`], and then what GitLab would act
/// on made inert, since the text comes from elsewhere and the note is written with the bot's token:
/// - a line starting with `/` would be a quick action (`/merge`, `/approve`, `/close`): its slash
///   is escaped (`\/merge` shows as `/merge` and does nothing);
/// - `@all` and `@here` would notify everyone: a zero-width space after the `@` keeps the text
///   and drops the notification;
/// - an HTML comment opener is shown as text, so nothing can hide part of the note or imitate
///   the hidden marker that ends each of shepherd's notes.
pub fn markdown(text: &str) -> Cow<'_, str> {
    let text = plain(text);
    let inert = |t: &str| {
        !t.contains("<!--")
            && !t.contains("@all")
            && !t.contains("@here")
            && !t.lines().any(|l| l.trim_start().starts_with('/'))
    };
    if inert(&text) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for (i, line) in text.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let indent = line.len() - line.trim_start().len();
        let (lead, rest) = line.split_at(indent);
        out.push_str(lead);
        if rest.starts_with('/') {
            out.push('\\');
        }
        out.push_str(rest);
    }
    let out = out
        .replace("<!--", "&lt;!--")
        .replace("@all", "@\u{200b}all")
        .replace("@here", "@\u{200b}here");
    Cow::Owned(out)
}

/// Whether `name` may stand as the target of an IRC command: not empty, no white space, no
/// comma (a target list separator), no control character, and not starting with `:`.
pub fn is_irc_target(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with(':')
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_is_not_copied() {
        assert!(matches!(irc("all good: 100%"), Cow::Borrowed(_)));
        assert!(matches!(plain("line one\nline two"), Cow::Borrowed(_)));
    }

    #[test]
    fn irc_never_gets_a_byte_that_ends_or_corrupts_a_line() {
        let hostile = "a\0b\rc\r\nd\u{85}e\u{2028}f\u{1}ACTION x\u{1}\u{1b}[2Jg\u{7f}h\u{9b}i\tj";
        let safe = irc(hostile);
        assert_eq!(
            safe,
            "a\u{2400}b\nc\nd\ne\nf\u{2401}ACTION x\u{2401}\u{241b}[2Jg\u{2421}h\u{fffd}i j"
        );
        for line in safe.split('\n') {
            assert!(!line.chars().any(|c| c.is_control()), "{line:?}");
        }
    }

    #[test]
    fn irc_keeps_formatting_codes() {
        let coloured = "\u{2}\u{3}04CRITICAL\u{f} disk full \u{1d}now\u{1d}";
        assert_eq!(irc(coloured), coloured);
    }

    #[test]
    fn plain_text_keeps_tabs_and_shows_everything_else() {
        assert_eq!(plain("a\tb\r\nc"), "a\tb\nc");
        assert_eq!(plain("\u{1b}]0;owned\u{7}"), "\u{241b}]0;owned\u{2407}");
        assert_eq!(plain("\u{3}4red"), "\u{2403}4red");
        assert_eq!(plain("nul\0"), "nul\u{2400}");
    }

    #[test]
    fn markdown_cannot_run_quick_actions_or_notify_everyone() {
        assert_eq!(
            markdown("done\n/merge\n  /approve now\nnot /label here"),
            "done\n\\/merge\n  \\/approve now\nnot /label here"
        );
        assert_eq!(
            markdown("cc @all and @here"),
            "cc @\u{200b}all and @\u{200b}here"
        );
        assert_eq!(
            markdown("comment `@shepherd test`"),
            "comment `@shepherd test`"
        );
    }

    #[test]
    fn markdown_cannot_hide_text_or_forge_a_marker() {
        assert_eq!(
            markdown("title <!-- shepherd:abc --> x\0"),
            "title &lt;!-- shepherd:abc --> x\u{2400}"
        );
        assert!(matches!(markdown("plain **bold**"), Cow::Borrowed(_)));
    }

    #[test]
    fn every_control_character_is_handled() {
        for c in (0u32..0x110000)
            .filter_map(char::from_u32)
            .filter(|c| c.is_control())
        {
            let text = format!("x{c}y");
            let safe = irc(&text);
            assert!(
                safe.split('\n').all(|l| l
                    .chars()
                    .all(|c| !c.is_control() || IRC_FORMATTING.contains(&c))),
                "{c:?} -> {safe:?}"
            );
            let safe = plain(&text);
            assert!(
                safe.split('\n')
                    .all(|l| l.chars().all(|c| !c.is_control() || c == '\t')),
                "{c:?} -> {safe:?}"
            );
        }
    }

    #[test]
    fn irc_targets() {
        for ok in ["#ops", "&local", "alice", "nick[m]", "#c++"] {
            assert!(is_irc_target(ok), "{ok}");
        }
        for bad in ["", "#a b", "#a,#b", ":x", "#a\r\nQUIT", "a\0", "#a\u{7}"] {
            assert!(!is_irc_target(bad), "{bad:?}");
        }
    }
}
