//! Addressing: which text in an incoming message is a command for the bot.
//!
//! Each front end has its own convention. In chat (IRC, Matrix) a line is for the bot when it
//! starts with the prefix (`!retrigger ...`) or the bot's name (`shepherd: ...`). In a GitLab
//! comment, every line that starts with `@<bot>` is a command, except in code (fenced, indented
//! or an inline span) and quotes, so pasting an earlier command or a log never runs it again.
//! On the console every line is a command. The result borrows from the message; the address is
//! stripped and the command text trimmed.

/// The kind of front end a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Frontend {
    /// `shepherd console`: every non-empty line is a command.
    Console,
    /// IRC and Matrix: one line, addressed by prefix or name.
    Chat,
    /// A GitLab note: `@<bot>` lines outside code and quotes.
    GitLabComment,
}

/// How the bot is addressed (from the `[bot]` configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing<'a> {
    /// The bot's name (IRC nick, Matrix display name, GitLab username), matched ignoring case.
    pub bot_name: &'a str,
    /// The chat command prefix, e.g. `!`.
    pub prefix: &'a str,
    /// The bot's own id on a network that has one people mention (Matrix: `@shepherd:example.org`):
    /// in chat a line may also start with it, followed by `:`, `,` or white space.
    pub user_id: Option<&'a str>,
}

/// Returns the command texts addressed to the bot in `message`, in order, address stripped.
///
/// - Console: each non-empty trimmed line; a leading prefix or `name:` is stripped if present.
/// - Chat: the first line, if it starts with the prefix directly followed by a letter (`!retrigger`,
///   not `!!!`) or with the name followed by `:` or `,` (`shepherd: ping`, `shepherd:ping`,
///   `@shepherd: ping`; not `shepherd::x`), or with the bot's `user_id` (`@shepherd:example.org: ping`,
///   `@shepherd:example.org ping`).
///   Leading quoted lines (`> ...`, Matrix's reply fallback) and blank lines are skipped first.
/// - GitLabComment: every line starting with `@name` followed by whitespace, end of line, or `:`/`,`
///   (`@shepherdx` is someone else), outside fenced (```` ``` ````, `~~~`) and indented code blocks,
///   blockquotes (`>` lines and GitLab's `>>>` blocks) and inline code spans.
///
/// A name address with nothing after it yields `""` (so the user gets the "empty command" reply).
pub fn addressed<'m>(frontend: Frontend, message: &'m str, addr: &Addressing) -> Vec<&'m str> {
    match frontend {
        Frontend::Console => message
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(|l| {
                strip_name(l, addr.bot_name)
                    .or_else(|| nonempty(addr.prefix).and_then(|p| l.strip_prefix(p)))
                    .map_or(l, str::trim)
            })
            .collect(),
        Frontend::Chat => message
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('>'))
            .and_then(|l| {
                addr.user_id
                    .and_then(|id| strip_user_id(l, id))
                    .or_else(|| {
                        // Where users have ids, `@shepherd:other.org ping` names someone else.
                        strip_name(l, addr.bot_name).filter(|rest| {
                            addr.user_id.is_none()
                                || !l.starts_with('@')
                                || rest.is_empty()
                                || rest.starts_with(char::is_whitespace)
                        })
                    })
                    .or_else(|| strip_chat_prefix(l, addr.prefix))
            })
            .map(str::trim)
            .into_iter()
            .collect(),
        Frontend::GitLabComment => gitlab_commands(message, addr.bot_name),
    }
}

fn nonempty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

/// `name:` / `name,` (optionally `@name`), ignoring case; returns the rest.
fn strip_name<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    let rest = strip_at_name(line.strip_prefix('@').unwrap_or(line), name)?;
    let rest = rest.strip_prefix(':').or_else(|| rest.strip_prefix(','))?;
    // `shepherd: ping` and `shepherd:ping`, but not `shepherd::module`.
    (rest.is_empty() || rest.starts_with(|c: char| c.is_whitespace() || c.is_alphabetic()))
        .then_some(rest)
}

/// `name` at the start of `s`, ignoring ASCII case.
fn strip_at_name<'l>(s: &'l str, name: &str) -> Option<&'l str> {
    let head = s.get(..name.len())?;
    (!name.is_empty() && head.eq_ignore_ascii_case(name)).then(|| s.get(name.len()..))?
}

/// A user id (`@bot:server`) at the start, ignoring case, followed by `:`, `,`, white space or
/// the end; returns the rest.
fn strip_user_id<'l>(line: &'l str, id: &str) -> Option<&'l str> {
    let rest = strip_at_name(line, id)?;
    let rest = rest
        .strip_prefix(':')
        .or_else(|| rest.strip_prefix(','))
        .unwrap_or(rest);
    (rest.is_empty() || rest.starts_with(char::is_whitespace)).then_some(rest)
}

/// The prefix followed directly by a letter (so `!!!` or `! wow` are not commands).
fn strip_chat_prefix<'l>(line: &'l str, prefix: &str) -> Option<&'l str> {
    let rest = line.strip_prefix(nonempty(prefix)?)?;
    rest.starts_with(|c: char| c.is_alphabetic())
        .then_some(rest)
}

/// `@name` at the start of a comment line, followed by whitespace, end, or `:`/`,`.
fn strip_mention<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    let rest = strip_at_name(line.strip_prefix('@')?, name)?;
    let rest = rest
        .strip_prefix(':')
        .or_else(|| rest.strip_prefix(','))
        .unwrap_or(rest);
    (rest.is_empty() || rest.starts_with(char::is_whitespace)).then(|| rest.trim())
}

/// Width of the leading indentation (a tab counts as 4) and the line without it.
fn indentation(line: &str) -> (usize, &str) {
    let mut width = 0;
    for (i, c) in line.char_indices() {
        match c {
            ' ' => width += 1,
            '\t' => width += 4,
            _ => return (width, line.get(i..).unwrap_or("")),
        }
    }
    (width, "")
}

/// A fence opening: at least three backticks or tildes (a backtick fence's info has no backtick).
fn opening_fence(text: &str) -> Option<(char, usize)> {
    let c = text.chars().next().filter(|c| matches!(c, '`' | '~'))?;
    let len = text.chars().take_while(|x| *x == c).count();
    let info = text.get(len..).unwrap_or("");
    (len >= 3 && !(c == '`' && info.contains('`'))).then_some((c, len))
}

fn closes_fence(text: &str, fence: (char, usize)) -> bool {
    let (c, len) = fence;
    let run = text.chars().take_while(|x| *x == c).count();
    run >= len && text.get(run..).is_some_and(|r| r.trim().is_empty())
}

/// Byte ranges of inline code spans in a paragraph (a run of n backticks up to the next run of
/// exactly n; an unmatched run is literal text).
fn code_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let run_at = |i: usize| bytes.iter().skip(i).take_while(|b| **b == b'`').count();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes.get(i) != Some(&b'`') {
            i += 1;
            continue;
        }
        let open = run_at(i);
        let mut j = i + open;
        let mut close = None;
        while j < bytes.len() {
            if bytes.get(j) == Some(&b'`') {
                let run = run_at(j);
                if run == open {
                    close = Some(j + run);
                    break;
                }
                j += run;
            } else {
                j += 1;
            }
        }
        match close {
            Some(end) => {
                spans.push((i, end));
                i = end;
            }
            None => i += open,
        }
    }
    spans
}

fn gitlab_commands<'m>(message: &'m str, name: &str) -> Vec<&'m str> {
    let mut out = Vec::new();
    let mut fence: Option<(char, usize)> = None;
    let mut in_multiline_quote = false;
    // The current paragraph: lines with their offsets in `message`.
    let mut paragraph: Vec<(usize, &'m str)> = Vec::new();
    let mut offset = 0;
    for raw in message.split_inclusive('\n') {
        let start = offset;
        offset += raw.len();
        let line = raw.trim_end_matches(['\n', '\r']);
        let (indent, text) = indentation(line);
        if let Some(f) = fence {
            if indent <= 3 && closes_fence(text, f) {
                fence = None;
            }
            continue;
        }
        if in_multiline_quote {
            in_multiline_quote = text.trim_end() != ">>>";
            continue;
        }
        if text.is_empty() {
            flush(message, &mut paragraph, name, &mut out);
            continue;
        }
        if indent >= 4 {
            // A paragraph continuation or an indented code block: never a command.
            if !paragraph.is_empty() {
                paragraph.push((start, ""));
            }
            continue;
        }
        if let Some(f) = opening_fence(text) {
            flush(message, &mut paragraph, name, &mut out);
            fence = Some(f);
            continue;
        }
        if text.trim_end() == ">>>" {
            flush(message, &mut paragraph, name, &mut out);
            in_multiline_quote = true;
            continue;
        }
        if text.starts_with('>') {
            flush(message, &mut paragraph, name, &mut out);
            continue;
        }
        paragraph.push((start + (line.len() - text.len()), text));
    }
    flush(message, &mut paragraph, name, &mut out);
    out
}

/// Emits the commands of a finished paragraph: its `@name` lines that do not start inside a code span.
fn flush<'m>(
    message: &'m str,
    paragraph: &mut Vec<(usize, &'m str)>,
    name: &str,
    out: &mut Vec<&'m str>,
) {
    let Some(&(first, _)) = paragraph.first() else {
        return;
    };
    let end = paragraph.last().map_or(first, |(s, l)| s + l.len());
    let spans = code_spans(message.get(first..end).unwrap_or(""));
    for (start, text) in paragraph.drain(..) {
        let at = start - first;
        let in_code = spans.iter().any(|(s, e)| *s < at && at < *e);
        if in_code {
            continue;
        }
        if let Some(command) = strip_mention(text, name) {
            out.push(command);
        }
    }
}
