//! Fitting replies into IRC lines.
//!
//! An IRC line is at most 512 bytes with its CRLF, and the server relays ours with our full
//! prefix (`:nick!user@host `) in front, so the text of one PRIVMSG must leave room for both.
//! Long text is wrapped at a space when there is one in the last quarter of the budget,
//! otherwise cut — always on a UTF-8 character boundary. Newlines start new lines; empty
//! lines are dropped (IRC cannot send an empty message).

/// Bytes for the text of one `PRIVMSG <target> :<text>` from `nick`, leaving room for the
/// prefix the server adds (user name and host at their usual maximum lengths).
pub fn text_budget(nick: &str, target: &str) -> usize {
    const LINE: usize = 510; // 512 minus CRLF
    const USER_AND_HOST: usize = 1 + 10 + 1 + 64; // "!" user "@" host
    let prefix = 1 + nick.len() + USER_AND_HOST + 1; // ":" nick!user@host " "
    let command = "PRIVMSG ".len() + target.len() + " :".len();
    LINE.saturating_sub(prefix + command).max(32)
}

/// Splits `text` into IRC-sized lines of at most `budget` bytes each.
pub fn split_lines(text: &str, budget: usize) -> Vec<String> {
    let mut out = Vec::new();
    for line in text.split('\n') {
        let line = line.trim_end_matches('\r');
        let mut rest = line;
        while !rest.is_empty() {
            if rest.len() <= budget {
                out.push(rest.to_string());
                break;
            }
            let mut cut = budget;
            while !rest.is_char_boundary(cut) {
                cut -= 1;
            }
            // Prefer a word boundary in the last quarter of the budget.
            let soft = rest[..cut]
                .rfind(' ')
                .filter(|&i| i >= cut - cut / 4 && i > 0);
            let (head, tail) = match soft {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (&rest[..cut], &rest[cut..]),
            };
            out.push(head.to_string());
            rest = tail;
        }
    }
    out.retain(|l| !l.trim().is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_line_and_newlines_split() {
        assert_eq!(split_lines("hello", 400), vec!["hello"]);
        assert_eq!(split_lines("a\n\nb\r\nc", 400), vec!["a", "b", "c"]);
        assert!(split_lines("", 400).is_empty());
    }

    #[test]
    fn long_text_wraps_at_spaces_within_the_budget() {
        let words = "word ".repeat(200);
        let lines = split_lines(words.trim(), 100);
        assert!(lines.iter().all(|l| l.len() <= 100), "{lines:?}");
        assert_eq!(lines.join(" "), words.trim());
        assert!(
            lines
                .iter()
                .all(|l| !l.starts_with(' ') && !l.ends_with(' '))
        );
    }

    #[test]
    fn cuts_never_split_a_character() {
        let text = "é".repeat(300) + "日本".repeat(100).as_str(); // 2- and 3-byte characters, no spaces
        for budget in [32, 33, 100, 101, 399] {
            let lines = split_lines(&text, budget);
            assert!(lines.iter().all(|l| l.len() <= budget));
            assert_eq!(
                lines.concat(),
                text,
                "nothing lost or changed at budget {budget}"
            );
        }
    }

    #[test]
    fn the_budget_leaves_room_for_the_servers_prefix() {
        let budget = text_budget("shepherd", "#kernel-ci");
        let relayed = format!(
            ":shepherd!{}@{} PRIVMSG #kernel-ci :{}\r\n",
            "u".repeat(10),
            "h".repeat(64),
            "x".repeat(budget)
        );
        assert!(relayed.len() <= 512, "{}", relayed.len());
        assert!(budget > 350);
    }
}
