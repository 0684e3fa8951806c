//! A small, honest IRC client that plays the human in tests.
//!
//! Raw tokio `TcpStream`, one line per message: bytes are read up to `\n`, decoded lossily (so
//! invalid UTF-8 from the server never panics), and parsed by `parse_line` into tags (IRCv3
//! message tags, unescaped), prefix, command and parameters (RFC 1459). A background task reads,
//! answers the server's `PING`s with `PONG`, keeps every parsed message (`received()`), and wakes
//! waiters through a `Notify`: `wait_for` and the `expect_*` helpers never poll or sleep.
//!
//! Test helpers panic with what was seen (the received lines) when an expectation fails; the
//! client never unwraps anything that came from the network.
//!
//! `round_trip_floor` measures the raw IRC round trip (client A -> server -> B, B answers -> A):
//! the floor any bot reply time is compared with in benchmarks.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// One parsed IRC line.
#[derive(Debug, Clone)]
pub struct Message {
    /// IRCv3 message tags in order, values unescaped; an empty value (`a=`) is `None`, like `a`.
    pub tags: Vec<(String, Option<String>)>,
    /// The prefix without its `:` (`nick!user@host` or a server name).
    pub prefix: Option<String>,
    /// The nick part of a user prefix; `None` for a server prefix (a name with a `.` and no
    /// `!`/`@`) or no prefix.
    pub nick: Option<String>,
    /// The command in upper case (`PRIVMSG`, `001`, ...).
    pub command: String,
    /// Middle parameters, then the trailing one (without its `:`) if any.
    pub params: Vec<String>,
    /// The line as received, without the CR LF (lossily decoded).
    pub raw: String,
    /// When the line was read.
    pub at: Instant,
}

impl Message {
    /// Parameter `i`, if present.
    pub fn param(&self, i: usize) -> Option<&str> {
        self.params.get(i).map(String::as_str)
    }

    /// The last parameter (a PRIVMSG's text), or "".
    pub fn text(&self) -> &str {
        self.params.last().map(String::as_str).unwrap_or("")
    }

    /// The value of tag `key` (`Some(None)` for a tag without a value).
    pub fn tag(&self, key: &str) -> Option<Option<&str>> {
        self.tags
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_deref())
    }

    /// True for a PRIVMSG or NOTICE from `nick` (IRC nicks compare case-insensitively).
    pub fn is_message_from(&self, nick: &str) -> bool {
        matches!(self.command.as_str(), "PRIVMSG" | "NOTICE")
            && self
                .nick
                .as_deref()
                .is_some_and(|n| n.eq_ignore_ascii_case(nick))
    }
}

/// A `wait_for` predicate: `nick` has joined `channel` (both compared without case).
pub fn joined(nick: &str, channel: &str) -> impl Fn(&[Message]) -> bool + use<> {
    let (nick, channel) = (nick.to_string(), channel.to_string());
    move |msgs: &[Message]| {
        msgs.iter().any(|m| {
            m.command == "JOIN"
                && m.nick
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(&nick))
                && m.param(0).is_some_and(|c| c.eq_ignore_ascii_case(&channel))
        })
    }
}

/// A human who created (and so operates) `channels` on the IRC server at `server_addr`, and the
/// bot (`shepherd serve` with `config`) once it joined them all and answers HTTP.
pub async fn human_and_bot(
    config: &crate::harness::ShepherdConfig,
    server_addr: &str,
    channels: &[&str],
) -> (IrcClient, crate::harness::Shepherd) {
    const WAIT: Duration = Duration::from_secs(30);
    let mut human = IrcClient::connect(server_addr, "human").await;
    for c in channels {
        human.join(c).await;
    }
    let bot = crate::harness::Shepherd::serve(config).await;
    for c in channels {
        assert!(
            human.wait_for(WAIT, joined("shepherd", c)).await,
            "the bot never joined {c}:\n{}\n{}",
            human.transcript(),
            bot.stderr()
        );
    }
    bot.wait_http(WAIT).await;
    (human, bot)
}

/// Parses one IRC line (with or without the CR LF). `None` for an empty line or one without a
/// well-formed command.
pub fn parse_line(line: &str) -> Option<Message> {
    let at = Instant::now();
    let raw = line.trim_end_matches(['\r', '\n']);
    let mut rest = raw.trim_start_matches(' ');

    let mut tags = Vec::new();
    if let Some(r) = rest.strip_prefix('@') {
        let (t, r) = r.split_once(' ')?;
        tags = parse_tags(t);
        rest = r.trim_start_matches(' ');
    }

    let mut prefix = None;
    if let Some(r) = rest.strip_prefix(':') {
        let (p, r) = r.split_once(' ')?;
        if p.is_empty() {
            return None;
        }
        prefix = Some(p.to_string());
        rest = r.trim_start_matches(' ');
    }

    let (command, mut rest) = rest.split_once(' ').unwrap_or((rest, ""));
    if command.is_empty() || !command.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }

    let mut params = Vec::new();
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            break;
        }
        if let Some(trailing) = rest.strip_prefix(':') {
            params.push(trailing.to_string());
            break;
        }
        match rest.split_once(' ') {
            Some((p, r)) => {
                params.push(p.to_string());
                rest = r;
            }
            None => {
                params.push(rest.to_string());
                break;
            }
        }
    }

    let nick = prefix.as_deref().and_then(nick_of);
    Some(Message {
        tags,
        prefix,
        nick,
        command: command.to_ascii_uppercase(),
        params,
        raw: raw.to_string(),
        at,
    })
}

fn nick_of(prefix: &str) -> Option<String> {
    if let Some(end) = prefix.find(['!', '@']) {
        return (end > 0).then(|| prefix[..end].to_string());
    }
    // A bare name: a server if it has a dot, else a nick.
    (!prefix.contains('.')).then(|| prefix.to_string())
}

fn parse_tags(text: &str) -> Vec<(String, Option<String>)> {
    text.split(';')
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('=') {
            Some((k, v)) => {
                let v = unescape_tag_value(v);
                (k.to_string(), (!v.is_empty()).then_some(v))
            }
            None => (t.to_string(), None),
        })
        .collect()
}

/// IRCv3 tag value unescaping: `\:` `;`, `\s` space, `\\` `\`, `\r`, `\n`; any other escaped
/// character stands for itself and a trailing lone `\` is dropped.
fn unescape_tag_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some(':') => out.push(';'),
            Some('s') => out.push(' '),
            Some('r') => out.push('\r'),
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => {}
        }
    }
    out
}

/// State shared between the client and its reader task.
struct Shared {
    messages: Mutex<Vec<Message>>,
    changed: Notify,
    closed: AtomicBool,
    nick: Mutex<String>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Message>> {
        // A panicking waiter predicate must not make every later look panic too.
        self.messages.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One IRC connection, registered under a nick.
pub struct IrcClient {
    shared: Arc<Shared>,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    reader: JoinHandle<()>,
    addr: String,
}

/// How long `connect` and `join` wait for the server.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl IrcClient {
    /// Connects and registers (`NICK`, `USER`), waiting for `001`. Panics if that fails.
    pub async fn connect(addr: &str, nick: &str) -> IrcClient {
        IrcClient::try_connect(addr, nick, DEFAULT_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("IRC client {nick} could not connect to {addr}: {e:#}"))
    }

    /// Like `connect`, but an error instead of a panic (for tests of a server that is down).
    pub async fn try_connect(
        addr: &str,
        nick: &str,
        timeout: Duration,
    ) -> anyhow::Result<IrcClient> {
        IrcClient::try_connect_with_password(addr, nick, None, timeout).await
    }

    /// Connects to a server that wants a password (`PASS`).
    pub async fn connect_with_password(addr: &str, nick: &str, password: &str) -> IrcClient {
        IrcClient::try_connect_with_password(addr, nick, Some(password), DEFAULT_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("IRC client {nick} could not connect to {addr}: {e:#}"))
    }

    async fn try_connect_with_password(
        addr: &str,
        nick: &str,
        password: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<IrcClient> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| anyhow::anyhow!("TCP connect timed out"))??;
        stream.set_nodelay(true)?;
        let (read, write) = stream.into_split();
        let shared = Arc::new(Shared {
            messages: Mutex::new(Vec::new()),
            changed: Notify::new(),
            closed: AtomicBool::new(false),
            nick: Mutex::new(nick.to_string()),
        });
        let writer = Arc::new(tokio::sync::Mutex::new(write));
        let reader = tokio::spawn(read_loop(read, writer.clone(), shared.clone()));
        let client = IrcClient {
            shared,
            writer,
            reader,
            addr: addr.to_string(),
        };
        let pass = password
            .map(|p| format!("PASS {p}\r\n"))
            .unwrap_or_default();
        client
            .try_send_bytes(
                format!("{pass}NICK {nick}\r\nUSER {nick} 0 * :shepherd test client\r\n")
                    .as_bytes(),
            )
            .await?;
        let done = client
            .wait_for(timeout, |msgs| {
                msgs.iter().any(|m| {
                    matches!(
                        m.command.as_str(),
                        "001" | "ERROR" | "431" | "432" | "433" | "436" | "437" | "465"
                    )
                })
            })
            .await;
        let welcomed = client.received().iter().any(|m| m.command == "001");
        if done && welcomed {
            Ok(client)
        } else {
            anyhow::bail!(
                "no 001 welcome (connection {}); received:\n{}",
                if client.is_connected() {
                    "open"
                } else {
                    "closed"
                },
                client.transcript()
            )
        }
    }

    /// The current nick (follows the client's own `NICK` changes once the server confirms them).
    pub fn nick(&self) -> String {
        self.shared
            .nick
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The server address this client connected to.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Joins `channel` and waits for the end of its NAMES list (366), which follows the JOIN echo.
    /// Panics on a join error numeric or a timeout.
    pub async fn join(&mut self, channel: &str) {
        let since = self.received_len();
        self.send_raw(&format!("JOIN {channel}")).await;
        let reply = self
            .next_matching(since, DEFAULT_TIMEOUT, |m| {
                let about_channel = m.param(1).is_some_and(|c| c.eq_ignore_ascii_case(channel));
                about_channel
                    && matches!(
                        m.command.as_str(),
                        "366" | "403" | "405" | "471" | "473" | "474" | "475" | "476" | "477"
                    )
            })
            .await;
        match reply {
            Some(m) if m.command == "366" => {}
            Some(m) => panic!("{} could not join {channel}: {}", self.nick(), m.raw),
            None => panic!(
                "{} saw no 366 for {channel}; received:\n{}",
                self.nick(),
                self.transcript()
            ),
        }
    }

    /// Becomes an IRC operator (`OPER`, awaits 381). Panics if refused.
    pub async fn oper(&mut self) {
        let since = self.received_len();
        self.send_raw(&format!(
            "OPER {} {}",
            crate::ircd::OPER_NAME,
            crate::ircd::OPER_PASSWORD
        ))
        .await;
        let reply = self
            .next_matching(since, DEFAULT_TIMEOUT, |m| {
                matches!(m.command.as_str(), "381" | "464" | "491")
            })
            .await;
        match reply {
            Some(m) if m.command == "381" => {}
            other => panic!(
                "{} could not OPER ({:?}); received:\n{}",
                self.nick(),
                other.map(|m| m.raw),
                self.transcript()
            ),
        }
    }

    /// Sends `PRIVMSG target :text`. The text must be one line.
    pub async fn privmsg(&mut self, target: &str, text: &str) {
        assert!(
            !text.contains(['\r', '\n']),
            "privmsg text must be one line: {text:?}"
        );
        self.send_raw(&format!("PRIVMSG {target} :{text}")).await;
    }

    /// Sends `line` followed by CR LF, as is (KICK, NICK, MODE, CTCP, ...). Panics if the
    /// connection is gone.
    pub async fn send_raw(&mut self, line: &str) {
        self.send_bytes(format!("{line}\r\n").as_bytes()).await;
    }

    /// Sends `bytes` exactly (no CR LF added): invalid UTF-8, over-long lines, partial lines.
    /// Panics if the connection is gone.
    pub async fn send_bytes(&mut self, bytes: &[u8]) {
        if let Err(e) = self.try_send_bytes(bytes).await {
            panic!("{} could not send to {}: {e}", self.nick(), self.addr);
        }
    }

    /// Sends `bytes` exactly, returning the write error instead of panicking.
    pub async fn try_send_bytes(&self, bytes: &[u8]) -> std::io::Result<()> {
        let mut w = self.writer.lock().await;
        w.write_all(bytes).await?;
        w.flush().await
    }

    /// Everything parsed so far, in order.
    pub fn received(&self) -> Vec<Message> {
        self.shared.lock().clone()
    }

    /// How many messages were parsed so far (an index for `next_matching`).
    pub fn received_len(&self) -> usize {
        self.shared.lock().len()
    }

    /// False once the server closed the connection (or it failed).
    pub fn is_connected(&self) -> bool {
        !self.shared.closed.load(Ordering::SeqCst)
    }

    /// Waits until `pred` holds for the messages received so far; false after `timeout`, or as
    /// soon as the connection is closed with `pred` still false (nothing more can arrive).
    /// `pred` runs under this client's message lock: it must not call this client's methods.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Message]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if pred(&self.shared.lock()) {
                return true;
            }
            if self.shared.closed.load(Ordering::SeqCst) {
                return pred(&self.shared.lock());
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return pred(&self.shared.lock());
            }
        }
    }

    /// The first message at index `since` or later that satisfies `pred`, waiting up to `timeout`.
    pub async fn next_matching(
        &self,
        since: usize,
        timeout: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> Option<Message> {
        let found = self
            .wait_for(timeout, |msgs| msgs.iter().skip(since).any(&pred))
            .await;
        if !found {
            return None;
        }
        self.shared
            .lock()
            .iter()
            .skip(since)
            .find(|m| pred(m))
            .cloned()
    }

    /// Waits until the server closes the connection; false if it is still open after `timeout`.
    pub async fn wait_disconnected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.shared.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.is_connected() {
                return true;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return !self.is_connected();
            }
        }
    }

    /// Waits for a PRIVMSG from `nick` to `target` whose text contains `needle` and returns it;
    /// panics with everything received if none arrives within `timeout`.
    /// It searches everything received, not only what arrives after the call: for "a new one",
    /// use `next_matching(received_len(), ..)`.
    pub async fn expect_privmsg_from(
        &self,
        nick: &str,
        target: &str,
        needle: &str,
        timeout: Duration,
    ) -> Message {
        let pred = |m: &Message| {
            m.command == "PRIVMSG"
                && m.is_message_from(nick)
                && m.param(0).is_some_and(|t| t.eq_ignore_ascii_case(target))
                && m.params.len() >= 2
                && m.text().contains(needle)
        };
        match self.next_matching(0, timeout, pred).await {
            Some(m) => m,
            None => panic!(
                "{} saw no PRIVMSG from {nick} to {target} containing {needle:?} within {timeout:?} \
                 (connection {}); received:\n{}",
                self.nick(),
                if self.is_connected() {
                    "open"
                } else {
                    "closed"
                },
                self.transcript()
            ),
        }
    }

    /// PRIVMSG and NOTICE lines from `nick`, in order.
    pub fn privmsgs_from(&self, nick: &str) -> Vec<Message> {
        self.shared
            .lock()
            .iter()
            .filter(|m| m.is_message_from(nick))
            .cloned()
            .collect()
    }

    /// Every received line, one per line, for failure messages.
    pub fn transcript(&self) -> String {
        let msgs = self.shared.lock();
        let mut out = String::new();
        for m in msgs.iter() {
            out.push_str("  ");
            out.push_str(&m.raw);
            out.push('\n');
        }
        out
    }

    /// Sends `QUIT` and waits (briefly) for the server to close the connection.
    pub async fn quit(self) {
        if self.try_send_bytes(b"QUIT :test done\r\n").await.is_ok() {
            self.wait_disconnected(Duration::from_secs(5)).await;
        }
    }
}

impl Drop for IrcClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

async fn read_loop(
    read: OwnedReadHalf,
    writer: Arc<tokio::sync::Mutex<OwnedWriteHalf>>,
    shared: Arc<Shared>,
) {
    let mut reader = BufReader::new(read);
    let mut buf = Vec::with_capacity(1024);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        let line = String::from_utf8_lossy(&buf);
        let Some(msg) = parse_line(&line) else {
            continue;
        };
        if msg.command == "PING" {
            let pong = match msg.param(0) {
                Some(token) => format!("PONG :{token}\r\n"),
                None => "PONG\r\n".to_string(),
            };
            let mut w = writer.lock().await;
            let _ = w.write_all(pong.as_bytes()).await;
        }
        if msg.command == "NICK" {
            let mut nick = shared.nick.lock().unwrap_or_else(|e| e.into_inner());
            if let (Some(old), Some(new)) = (msg.nick.as_deref(), msg.param(0))
                && old.eq_ignore_ascii_case(&nick)
            {
                *nick = new.to_string();
            }
        }
        shared.lock().push(msg);
        shared.changed.notify_waiters();
    }
    shared.closed.store(true, Ordering::SeqCst);
    shared.changed.notify_waiters();
}

/// A nick no other call in this process returns: `prefix` + a counter (keep `prefix` short;
/// the test server allows 30 characters).
pub fn unique_nick(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(1);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// The raw IRC round-trip floor: two fresh clients A and B on the server at `addr`; `n` times,
/// sequentially, A sends a PRIVMSG to B, B answers A as soon as it sees it, and A records the
/// time from its line going out to the reply being read. Use a `Throttle::Off` server: on stock
/// limits it measures ngIRCd's flood penalties instead.
pub async fn round_trip_floor(addr: &str, n: usize) -> Vec<Duration> {
    let mut a = IrcClient::connect(addr, &unique_nick("rtta")).await;
    let mut b = IrcClient::connect(addr, &unique_nick("rttb")).await;
    let (a_nick, b_nick) = (a.nick(), b.nick());
    let mut samples = Vec::with_capacity(n);
    for i in 0..n {
        let (since_a, since_b) = (a.received_len(), b.received_len());
        let ping = format!("rtt {i}");
        let pong = format!("rtt {i} back");
        let t0 = Instant::now();
        a.privmsg(&b_nick, &ping).await;
        let got = b
            .next_matching(since_b, DEFAULT_TIMEOUT, |m| {
                m.command == "PRIVMSG" && m.is_message_from(&a_nick) && m.text() == ping
            })
            .await;
        assert!(
            got.is_some(),
            "round trip {i}: {b_nick} never got {ping:?}; received:\n{}",
            b.transcript()
        );
        b.privmsg(&a_nick, &pong).await;
        let reply = a
            .next_matching(since_a, DEFAULT_TIMEOUT, |m| {
                m.command == "PRIVMSG" && m.is_message_from(&b_nick) && m.text() == pong
            })
            .await
            .unwrap_or_else(|| {
                panic!(
                    "round trip {i}: {a_nick} never got {pong:?}; received:\n{}",
                    a.transcript()
                )
            });
        samples.push(reply.at.saturating_duration_since(t0));
    }
    a.quit().await;
    b.quit().await;
    samples
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prefix_command_params_and_trailing() {
        let m =
            parse_line(":alice!al@127.0.0.1 PRIVMSG #ops :hello there: world\r\n").expect("parses");
        assert_eq!(m.prefix.as_deref(), Some("alice!al@127.0.0.1"));
        assert_eq!(m.nick.as_deref(), Some("alice"));
        assert_eq!(m.command, "PRIVMSG");
        assert_eq!(m.params, vec!["#ops", "hello there: world"]);
        assert_eq!(m.text(), "hello there: world");
        assert_eq!(
            m.raw,
            ":alice!al@127.0.0.1 PRIVMSG #ops :hello there: world"
        );
        assert!(m.tags.is_empty());
    }

    #[test]
    fn server_prefix_has_no_nick_and_numerics_keep_their_params() {
        let m = parse_line(":irc.test.local 001 bob :Welcome to the Internet Relay Network bob")
            .expect("parses");
        assert_eq!(m.nick, None);
        assert_eq!(m.command, "001");
        assert_eq!(m.params[0], "bob");
        let m = parse_line(":irc.test.local 353 bob = #ops :@alice bob").expect("parses");
        assert_eq!(m.params, vec!["bob", "=", "#ops", "@alice bob"]);
    }

    #[test]
    fn no_prefix_no_trailing_extra_spaces_and_lower_case_command() {
        let m = parse_line("PING :irc.test.local").expect("parses");
        assert_eq!(m.prefix, None);
        assert_eq!(m.params, vec!["irc.test.local"]);
        let m = parse_line("mode   #ops  +o   alice").expect("parses");
        assert_eq!(m.command, "MODE");
        assert_eq!(m.params, vec!["#ops", "+o", "alice"]);
        let m = parse_line(":bob QUIT").expect("parses");
        assert_eq!(m.nick.as_deref(), Some("bob"));
        assert!(m.params.is_empty());
        let m = parse_line("PRIVMSG #ops :").expect("parses");
        assert_eq!(m.params, vec!["#ops", ""]);
    }

    #[test]
    fn parses_and_unescapes_message_tags() {
        let m = parse_line(
            "@time=2024-01-01T00:00:00.000Z;msgid=a\\:b\\sc\\\\d\\x;+draft/flag;empty=;trail=x\\ \
             :n!u@h PRIVMSG #c :hi",
        )
        .expect("parses");
        assert_eq!(m.tag("time"), Some(Some("2024-01-01T00:00:00.000Z")));
        assert_eq!(m.tag("msgid"), Some(Some("a;b c\\dx")));
        assert_eq!(m.tag("+draft/flag"), Some(None));
        assert_eq!(m.tag("empty"), Some(None));
        assert_eq!(m.tag("trail"), Some(Some("x")));
        assert_eq!(m.tag("absent"), None);
        assert_eq!(m.nick.as_deref(), Some("n"));
        assert_eq!(m.params, vec!["#c", "hi"]);
    }

    #[test]
    fn rejects_lines_without_a_command() {
        assert!(parse_line("").is_none());
        assert!(parse_line("\r\n").is_none());
        assert!(parse_line(":prefix.only").is_none());
        assert!(parse_line("@tags=only").is_none());
        assert!(parse_line(": PRIVMSG x :y").is_none());
        assert!(parse_line("PRIV#MSG x").is_none());
    }

    #[test]
    fn survives_invalid_utf8_after_lossy_decoding() {
        let bytes = b":eve!e@h PRIVMSG #ops :caf\xe9 \xff\xfe end\r\n";
        let line = String::from_utf8_lossy(bytes);
        let m = parse_line(&line).expect("parses");
        assert_eq!(m.command, "PRIVMSG");
        assert!(m.text().starts_with("caf\u{fffd}"));
        assert!(m.text().ends_with(" end"));
    }
}
