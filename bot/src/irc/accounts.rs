//! Who is behind a nick: the services account, as IRC tells it.
//!
//! Sources, best first: the `account` message tag (IRCv3 `account-tag`, authoritative per
//! message), then what `extended-join` and `account-notify` said about a nick, then a WHOIS
//! (numeric 330). The cache is keyed by nick (case-insensitively) and forgets a nick when it
//! changes or quits, and lives only as long as one connection: a nick is never trusted
//! beyond what the server vouched for on this connection.

use std::collections::HashMap;

/// What is known about a nick's account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Account {
    LoggedIn(String),
    LoggedOut,
}

#[derive(Debug, Default)]
pub struct AccountCache {
    by_nick: HashMap<String, Account>,
}

fn key(nick: &str) -> String {
    nick.to_ascii_lowercase()
}

impl AccountCache {
    pub fn get(&self, nick: &str) -> Option<&Account> {
        self.by_nick.get(&key(nick))
    }

    /// Records an account; `*` (or empty) means logged out, as IRCv3 writes it.
    pub fn set(&mut self, nick: &str, account: &str) {
        let value = if account == "*" || account.is_empty() {
            Account::LoggedOut
        } else {
            Account::LoggedIn(account.to_string())
        };
        self.by_nick.insert(key(nick), value);
    }

    pub fn forget(&mut self, nick: &str) {
        self.by_nick.remove(&key(nick));
    }
}

/// The shepherd identity for a sender: `irc:<account>` when logged in, and for a nick
/// without an account an identity no `irc:` pattern can match.
pub fn identity(nick: &str, account: Option<&Account>) -> String {
    match account {
        Some(Account::LoggedIn(a)) => format!("irc:{a}"),
        // Nicks compare without case: `Mallory` and `mallory` are one sender (and one budget).
        _ => format!("irc-unidentified:{}", nick.to_ascii_lowercase()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nicks_are_case_insensitive_and_forgotten() {
        let mut c = AccountCache::default();
        c.set("Alice", "alice");
        assert_eq!(c.get("alice"), Some(&Account::LoggedIn("alice".into())));
        c.set("bob", "*");
        assert_eq!(c.get("BOB"), Some(&Account::LoggedOut));
        c.forget("ALICE");
        assert_eq!(c.get("alice"), None);
        assert_eq!(identity("Mallory", None), identity("mallory", None));
    }

    #[test]
    fn identities_never_come_from_a_bare_nick() {
        assert_eq!(
            identity("al", Some(&Account::LoggedIn("alice".into()))),
            "irc:alice"
        );
        assert_eq!(
            identity("alice", Some(&Account::LoggedOut)),
            "irc-unidentified:alice"
        );
        assert_eq!(identity("alice", None), "irc-unidentified:alice");
    }
}
