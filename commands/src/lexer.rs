//! The tokenizer: splits a command text into arguments, with their byte spans.
//!
//! An argument is a run of pieces with no whitespace between them, each piece bare text or a
//! `"quoted string"` with backslash escapes, so `msg="a b"` is one argument whose value is
//! `msg=a b`. A `[ ... ]` bracket (CKI's form) holds several arguments; they are flattened into the
//! list with `in_bracket` set. Commands decide what an argument means (see `parser`), the
//! tokenizer only keeps enough to tell `key=value` written bare apart from `"key=value"` quoted.

use nom::branch::alt;
use nom::bytes::complete::{take_while, take_while1};
use nom::character::complete::char;
use nom::combinator::{map, value};
use nom::error::ErrorKind;
use nom::sequence::preceded;
use nom::{Err, IResult, Parser};

use crate::error::{ParseError, ParseErrorKind};

/// One argument of a command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Token {
    /// Byte offset of the first character in the parsed text.
    pub start: usize,
    /// The argument with quotes removed and escapes resolved.
    pub value: String,
    /// Length in bytes of the leading unquoted part of `value` (all of it for a bare word).
    pub bare_len: usize,
    /// Whether any part of the argument was quoted.
    pub quoted: bool,
    /// Whether the argument was written inside `[ ... ]`.
    pub in_bracket: bool,
}

impl Token {
    /// The leading unquoted part: where `key=` or a matcher operator must be written.
    pub fn bare_prefix(&self) -> &str {
        self.value.get(..self.bare_len).unwrap_or("")
    }

    /// A bare word (not quoted, not bracketed) equal to `word`, ignoring ASCII case.
    pub fn is_keyword(&self, word: &str) -> bool {
        !self.quoted && !self.in_bracket && self.value.eq_ignore_ascii_case(word)
    }
}

/// nom error that can carry one of our error kinds (for `Err::Failure`).
#[derive(Debug)]
struct LexError<'a> {
    input: &'a str,
    kind: Option<ParseErrorKind>,
}

impl<'a> nom::error::ParseError<&'a str> for LexError<'a> {
    fn from_error_kind(input: &'a str, _kind: ErrorKind) -> Self {
        LexError { input, kind: None }
    }

    fn append(_input: &'a str, _kind: ErrorKind, other: Self) -> Self {
        other
    }
}

type LResult<'a, O> = IResult<&'a str, O, LexError<'a>>;

fn fail<'a, O>(input: &'a str, kind: ParseErrorKind) -> LResult<'a, O> {
    Err(Err::Failure(LexError {
        input,
        kind: Some(kind),
    }))
}

/// A piece of an argument.
enum Piece<'a> {
    Bare(&'a str),
    Quoted(String),
}

fn bare(in_bracket: bool) -> impl FnMut(&str) -> LResult<'_, &str> {
    move |input| {
        take_while1(|c: char| !c.is_whitespace() && c != '"' && !(in_bracket && c == ']'))
            .parse(input)
    }
}

/// `"..."` with `\"`, `\\`, `\n`, `\t`; fails hard on an unknown escape or a missing `"`.
fn quoted(input: &str) -> LResult<'_, String> {
    let (mut rest, _) = char('"').parse(input)?;
    let mut out = String::new();
    loop {
        if let Ok((r, s)) = take_while1::<_, _, LexError>(|c| c != '"' && c != '\\').parse(rest) {
            out.push_str(s);
            rest = r;
        }
        if let Ok((r, _)) = char::<_, LexError>('"').parse(rest) {
            return Ok((r, out));
        }
        if rest.is_empty() {
            return fail(input, ParseErrorKind::UnclosedQuote);
        }
        let escape: LResult<'_, char> = preceded(
            char('\\'),
            alt((
                value('"', char('"')),
                value('\\', char('\\')),
                value('\n', char('n')),
                value('\t', char('t')),
            )),
        )
        .parse(rest);
        match escape {
            Ok((r, c)) => {
                out.push(c);
                rest = r;
            }
            Err(_) => return fail(rest, ParseErrorKind::BadEscape),
        }
    }
}

fn piece(in_bracket: bool) -> impl FnMut(&str) -> LResult<'_, Piece<'_>> {
    move |input| {
        alt((
            map(quoted, Piece::Quoted),
            map(bare(in_bracket), Piece::Bare),
        ))
        .parse(input)
    }
}

/// One argument (bare and quoted pieces glued together), without its start offset.
fn word(in_bracket: bool) -> impl FnMut(&str) -> LResult<'_, Token> {
    move |input| {
        let mut token = Token {
            start: 0,
            value: String::new(),
            bare_len: 0,
            quoted: false,
            in_bracket,
        };
        let (mut rest, first) = piece(in_bracket)(input)?;
        let mut next = Some(first);
        while let Some(p) = next.take() {
            match p {
                Piece::Bare(s) => {
                    token.value.push_str(s);
                    if !token.quoted {
                        token.bare_len = token.value.len();
                    }
                }
                Piece::Quoted(s) => {
                    token.quoted = true;
                    token.value.push_str(&s);
                }
            }
            match piece(in_bracket)(rest) {
                Ok((r, p)) => {
                    rest = r;
                    next = Some(p);
                }
                Err(Err::Error(_)) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((rest, token))
    }
}

fn spaces(input: &str) -> &str {
    take_while::<_, _, LexError>(char::is_whitespace)
        .parse(input)
        .map_or(input, |(rest, _)| rest)
}

/// Splits `text` into arguments. Offsets in the result and in errors are bytes into `text`.
pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, ParseError> {
    let offset = |rest: &str| text.len() - rest.len();
    let to_error = |e: Err<LexError>| match e {
        Err::Failure(LexError {
            input,
            kind: Some(kind),
        }) => ParseError::new(kind, offset(input)),
        // Cannot happen (every token start is non-empty and non-whitespace), but never panic.
        Err::Error(LexError { input, .. }) | Err::Failure(LexError { input, .. }) => {
            ParseError::new(ParseErrorKind::Empty, offset(input))
        }
        Err::Incomplete(_) => ParseError::new(ParseErrorKind::Empty, text.len()),
    };
    let mut tokens = Vec::new();
    let mut rest = spaces(text);
    while !rest.is_empty() {
        if let Ok((inner, _)) = char::<_, LexError>('[').parse(rest) {
            let open = rest;
            let mut inner = spaces(inner);
            loop {
                if let Ok((after, _)) = char::<_, LexError>(']').parse(inner) {
                    rest = after;
                    break;
                }
                if inner.is_empty() {
                    return Err(ParseError::new(
                        ParseErrorKind::UnclosedBracket,
                        offset(open),
                    ));
                }
                let start = offset(inner);
                let (after, mut token) = word(true)(inner).map_err(to_error)?;
                token.start = start;
                tokens.push(token);
                inner = spaces(after);
            }
        } else {
            let start = offset(rest);
            let (after, mut token) = word(false)(rest).map_err(to_error)?;
            token.start = start;
            tokens.push(token);
            rest = after;
        }
        rest = spaces(rest);
    }
    Ok(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<(usize, String, usize, bool, bool)> {
        tokenize(text)
            .unwrap()
            .into_iter()
            .map(|t| (t.start, t.value, t.bare_len, t.quoted, t.in_bracket))
            .collect()
    }

    #[test]
    fn words_quotes_and_brackets() {
        assert_eq!(
            values(r#"  retrigger  msg="a b" [K=v  K2="v 2"] "x\"y\\z\n" end"#),
            vec![
                (2, "retrigger".into(), 9, false, false),
                (13, "msg=a b".into(), 4, true, false),
                (24, "K=v".into(), 3, false, true),
                (29, "K2=v 2".into(), 3, true, true),
                (39, "x\"y\\z\n".into(), 0, true, false),
                (51, "end".into(), 3, false, false),
            ]
        );
    }

    #[test]
    fn glued_pieces_and_bracket_edges() {
        assert_eq!(
            values(r#"a"b"c [] [x]y"#),
            vec![
                (0, "abc".into(), 1, true, false),
                (10, "x".into(), 1, false, true),
                (12, "y".into(), 1, false, false),
            ]
        );
        assert_eq!(values("   "), vec![]);
    }

    #[test]
    fn errors_carry_positions() {
        let e = tokenize(r#"a "open"#).unwrap_err();
        assert_eq!((e.kind, e.position), (ParseErrorKind::UnclosedQuote, 2));
        let e = tokenize(r#"a "x\qy""#).unwrap_err();
        assert_eq!((e.kind, e.position), (ParseErrorKind::BadEscape, 4));
        let e = tokenize("a [K=1 K=2").unwrap_err();
        assert_eq!((e.kind, e.position), (ParseErrorKind::UnclosedBracket, 2));
        let e = tokenize(r#"[K="x]"#).unwrap_err();
        assert_eq!((e.kind, e.position), (ParseErrorKind::UnclosedQuote, 3));
        let e = tokenize(r#""x\"#).unwrap_err();
        assert_eq!((e.kind, e.position), (ParseErrorKind::BadEscape, 2));
    }
}
