//! Chat text as a Matrix message: a plain `body` and its HTML twin (`formatted_body`).
//!
//! What shepherd writes for a chat room is chat text (`Formatting::Html` in core): lines, code in
//! backticks, web links, and colour and weight as mIRC codes (an alert's `[CRITICAL]` tag). Here
//! the codes become HTML (`<font data-mx-color>`, `<b>`, ...) and leave the plain body, which is
//! what clients without HTML (and notifications) show. Everything else is escaped, so text from
//! outside (alert labels, variable values) can never add markup, and the room-wide `@room`
//! mention is made inert in both bodies (the messages also carry an empty `m.mentions`, which
//! tells current servers to notify nobody but the people it names).
//!
//! A message longer than the room's limit is cut at a line with a note of how much was left out,
//! so the event (both bodies together) stays under the homeserver's 64 KiB.

use crate::safe_text;

/// A message ready to send: the plain body and its HTML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    pub plain: String,
    pub html: String,
}

impl Rendered {
    /// Both bodies together, in bytes (what counts against the event size).
    pub fn bytes(&self) -> usize {
        self.plain.len() + self.html.len()
    }
}

/// Messages rendered one by one, as one message of their lines (what [`render`] makes of their
/// texts joined by line breaks, without cutting).
pub fn join(parts: impl IntoIterator<Item = Rendered>) -> Rendered {
    let (plain, html): (Vec<String>, Vec<String>) =
        parts.into_iter().map(|r| (r.plain, r.html)).unzip();
    Rendered {
        plain: plain.join("\n"),
        html: html.join("<br>\n"),
    }
}

/// The mIRC colour numbers as HTML colours (the 16 standard ones).
const COLOURS: [&str; 16] = [
    "#ffffff", "#000000", "#00007f", "#009300", "#ff0000", "#7f0000", "#9c009c", "#fc7f00",
    "#ffff00", "#00fc00", "#009393", "#00ffff", "#0000fc", "#ff00ff", "#7f7f7f", "#d2d2d2",
];

const BOLD: char = '\u{2}';
const COLOUR: char = '\u{3}';
const HEX_COLOUR: char = '\u{4}';
const RESET: char = '\u{f}';
const MONOSPACE: char = '\u{11}';
const REVERSE: char = '\u{16}';
const ITALIC: char = '\u{1d}';
const STRIKE: char = '\u{1e}';
const UNDERLINE: char = '\u{1f}';

/// The formatting in force at a point of a line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Style {
    bold: bool,
    italic: bool,
    underline: bool,
    strike: bool,
    monospace: bool,
    colour: Option<String>,
}

impl Style {
    fn open(&self, out: &mut String) {
        if let Some(c) = &self.colour {
            out.push_str(&format!("<font color=\"{c}\" data-mx-color=\"{c}\">"));
        }
        for (on, tag) in self.flags() {
            if on {
                out.push_str(&format!("<{tag}>"));
            }
        }
    }

    fn close(&self, out: &mut String) {
        for (on, tag) in self.flags().iter().rev() {
            if *on {
                out.push_str(&format!("</{tag}>"));
            }
        }
        if self.colour.is_some() {
            out.push_str("</font>");
        }
    }

    fn flags(&self) -> [(bool, &'static str); 5] {
        [
            (self.bold, "b"),
            (self.italic, "i"),
            (self.underline, "u"),
            (self.strike, "s"),
            (self.monospace, "code"),
        ]
    }
}

/// Reads the digits of a colour code after `\x03`: `fg[,bg]`, one or two digits each. Returns the
/// foreground colour, if there was one (no digits: colours off).
fn read_colour(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    let number = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>| {
        let mut n: Option<usize> = None;
        for _ in 0..2 {
            match chars.peek().and_then(|c| c.to_digit(10)) {
                Some(d) => {
                    n = Some(n.unwrap_or(0) * 10 + d as usize);
                    chars.next();
                }
                None => break,
            }
        }
        n
    };
    let fg = number(chars)?;
    if chars.peek() == Some(&',') {
        let mut ahead = chars.clone();
        ahead.next();
        if ahead.peek().is_some_and(char::is_ascii_digit) {
            chars.next();
            let _background = number(chars);
        }
    }
    COLOURS.get(fg).map(|c| (*c).to_string())
}

/// Reads `RRGGBB` after `\x04`.
fn read_hex_colour(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<String> {
    let ahead: String = chars.clone().take(6).collect();
    if ahead.len() == 6 && ahead.chars().all(|c| c.is_ascii_hexdigit()) {
        for _ in 0..6 {
            chars.next();
        }
        Some(format!("#{}", ahead.to_ascii_lowercase()))
    } else {
        None
    }
}

fn escape_into(out: &mut String, c: char) {
    match c {
        '&' => out.push_str("&amp;"),
        '<' => out.push_str("&lt;"),
        '>' => out.push_str("&gt;"),
        '"' => out.push_str("&quot;"),
        '\'' => out.push_str("&#39;"),
        c => out.push(c),
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        escape_into(&mut out, c);
    }
    out
}

/// The plain text of one line: formatting codes (and a colour's digits) removed.
fn strip_codes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            COLOUR => {
                let _ = read_colour(&mut chars);
            }
            HEX_COLOUR => {
                let _ = read_hex_colour(&mut chars);
            }
            BOLD | RESET | MONOSPACE | REVERSE | ITALIC | STRIKE | UNDERLINE => {}
            c => out.push(c),
        }
    }
    out
}

/// A web link starting at the front of `text`: `http(s)://` up to white space, without trailing
/// punctuation that usually ends a sentence.
fn link_len(text: &str) -> Option<usize> {
    if !(text.starts_with("https://") || text.starts_with("http://")) {
        return None;
    }
    let end = text
        .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '`'))
        .unwrap_or(text.len());
    let trimmed = text
        .get(..end)?
        .trim_end_matches(['.', ',', ';', ':', '!', '?', ')', ']', '\'']);
    let scheme = if text.starts_with("https://") { 8 } else { 7 };
    (trimmed.len() > scheme).then_some(trimmed.len())
}

/// One line of chat text (codes stripped) as HTML: escaped, code spans, links.
fn inline_html(text: &str, out: &mut String) {
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('`')
            && let Some(end) = after.find('`')
            && end > 0
        {
            out.push_str("<code>");
            out.push_str(&escape(&after[..end]));
            out.push_str("</code>");
            rest = &after[end + 1..];
            continue;
        }
        if let Some(n) = link_len(rest) {
            let url = escape(&rest[..n]);
            out.push_str(&format!("<a href=\"{url}\">{url}</a>"));
            rest = &rest[n..];
            continue;
        }
        let c = rest.chars().next().unwrap_or(' ');
        escape_into(out, c);
        rest = &rest[c.len_utf8()..];
    }
}

/// One line as HTML: formatting codes open and close tags (always well nested: every change
/// closes what is open and opens what is now in force), the text between them escaped.
fn line_html(line: &str) -> String {
    let mut out = String::with_capacity(line.len() + 16);
    let mut style = Style::default();
    let mut segment = String::new();
    let mut chars = line.chars().peekable();
    let flush = |segment: &mut String, style: &Style, out: &mut String| {
        if segment.is_empty() {
            return;
        }
        style.open(out);
        inline_html(segment, out);
        style.close(out);
        segment.clear();
    };
    while let Some(c) = chars.next() {
        let mut next = style.clone();
        match c {
            BOLD => next.bold = !next.bold,
            ITALIC => next.italic = !next.italic,
            UNDERLINE => next.underline = !next.underline,
            STRIKE => next.strike = !next.strike,
            MONOSPACE => next.monospace = !next.monospace,
            REVERSE => {}
            RESET => next = Style::default(),
            COLOUR => next.colour = read_colour(&mut chars),
            HEX_COLOUR => next.colour = read_hex_colour(&mut chars),
            c => {
                segment.push(c);
                continue;
            }
        }
        if next != style {
            flush(&mut segment, &style, &mut out);
            style = next;
        }
    }
    flush(&mut segment, &style, &mut out);
    out
}

/// `@room` would notify everyone in the room: a zero-width space keeps the text and drops that.
fn inert(line: &str) -> String {
    line.replace("@room", "@\u{200b}room")
}

/// Renders chat text as a Matrix message, cut to `max_bytes` for both bodies together.
pub fn render(text: &str, max_bytes: usize) -> Rendered {
    // Control characters other than the formatting codes become visible stand-ins, as on IRC.
    let safe = safe_text::irc(text);
    let lines: Vec<&str> = safe.split('\n').collect();
    let mut plain: Vec<String> = Vec::with_capacity(lines.len());
    let mut html: Vec<String> = Vec::with_capacity(lines.len());
    let mut used = 0;
    for (i, line) in lines.iter().enumerate() {
        let p = inert(&strip_codes(line));
        let h = inert(&line_html(line));
        // Room for the note that says how much was left out.
        let note_room = if i + 1 < lines.len() { 128 } else { 0 };
        if used + p.len() + h.len() + 6 + note_room > max_bytes && !plain.is_empty() {
            let note = format!("… ({} more lines not shown)", lines.len() - i);
            html.push(format!("<em>{}</em>", escape(&note)));
            plain.push(note);
            break;
        }
        if used + p.len() + h.len() + 6 > max_bytes {
            // A single line too long on its own: cut it (at a character boundary).
            let keep = max_bytes.saturating_sub(64) / 7;
            let cut: String = p.chars().take(keep).collect();
            html.push(format!("{}…", escape(&cut)));
            plain.push(format!("{cut}…"));
            continue;
        }
        used += p.len() + h.len() + 6;
        plain.push(p);
        html.push(h);
    }
    Rendered {
        plain: plain.join("\n"),
        html: html.join("<br>\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_becomes_html_colour_and_leaves_the_plain_body() {
        let r = render("\u{2}\u{3}04[CRITICAL]\u{f} DiskFull on db1", 30_000);
        assert_eq!(r.plain, "[CRITICAL] DiskFull on db1");
        assert_eq!(
            r.html,
            "<font color=\"#ff0000\" data-mx-color=\"#ff0000\"><b>[CRITICAL]</b></font> DiskFull on db1"
        );
    }

    #[test]
    fn outside_text_cannot_add_markup() {
        let r = render("<script>alert(1)</script> & \"q\" <b>x</b>", 30_000);
        assert_eq!(r.plain, "<script>alert(1)</script> & \"q\" <b>x</b>");
        assert_eq!(
            r.html,
            "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;q&quot; &lt;b&gt;x&lt;/b&gt;"
        );
    }

    #[test]
    fn code_links_and_lines() {
        let r = render(
            "pipeline 7 created: https://gitlab.example/g/p/-/pipelines/7.\nsee `help retrigger`",
            30_000,
        );
        assert_eq!(
            r.html,
            "pipeline 7 created: <a href=\"https://gitlab.example/g/p/-/pipelines/7\">https://gitlab.example/g/p/-/pipelines/7</a>.<br>\nsee <code>help retrigger</code>"
        );
        assert_eq!(
            r.plain,
            "pipeline 7 created: https://gitlab.example/g/p/-/pipelines/7.\nsee `help retrigger`"
        );
        // A link cannot break out of its attribute.
        let r = render("http://x/\"onmouseover=\"y", 30_000);
        assert!(!r.html.contains("\"onmouseover"), "{}", r.html);
    }

    #[test]
    fn unbalanced_codes_still_give_nested_tags() {
        let r = render("\u{2}bold \u{1d}both\u{2} italic", 30_000);
        assert_eq!(r.html, "<b>bold </b><b><i>both</i></b><i> italic</i>");
        let r = render("\u{3}99,99odd \u{3}x", 30_000);
        assert_eq!(r.html, "odd x");
        assert_eq!(r.plain, "odd x");
    }

    #[test]
    fn room_mentions_are_inert_and_control_bytes_visible() {
        let r = render("@room look\u{0}\u{1b}[2J", 30_000);
        assert_eq!(r.plain, "@\u{200b}room look\u{2400}\u{241b}[2J");
        assert!(r.html.starts_with("@\u{200b}room"));
    }

    #[test]
    fn joined_messages_read_like_one_text_of_their_lines() {
        let parts = ["\u{2}one\u{2} `a`", "two\nthree"];
        let joined = join(parts.iter().map(|t| render(t, 30_000)));
        assert_eq!(joined, render(&parts.join("\n"), 30_000));
    }

    #[test]
    fn long_messages_are_cut_under_the_limit() {
        let text: String = (0..5000).map(|i| format!("line {i}\n")).collect();
        let r = render(&text, 20_000);
        assert!(
            r.plain.len() + r.html.len() <= 20_000,
            "{}",
            r.plain.len() + r.html.len()
        );
        assert!(
            r.plain.ends_with("more lines not shown)"),
            "{}",
            &r.plain[r.plain.len() - 60..]
        );
        let one = "é".repeat(40_000);
        let r = render(&one, 20_000);
        assert!(r.plain.len() + r.html.len() <= 20_000);
        assert!(r.plain.ends_with('…'));
    }
}
