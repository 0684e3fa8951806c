//! Tests of the IRC test bed itself against a real ngIRCd: the server harness
//! (`shepherd_tests::ircd`) and the client that plays the human (`shepherd_tests::irc_client`).
//! If these fail, the bot's IRC tests cannot be trusted. Needs `ngircd` installed
//! (`apt-get install -y ngircd`).

use std::time::Duration;

use shepherd_tests::irc_client::{IrcClient, Message, round_trip_floor, unique_nick};
use shepherd_tests::ircd::{Ngircd, Throttle};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const WAIT: Duration = Duration::from_secs(10);

fn names_in(msgs: &[Message], channel: &str) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.command == "353" && m.param(2) == Some(channel))
        .flat_map(|m| {
            m.text()
                .split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn two_clients_in_a_channel_exchange_privmsgs() {
    let server = Ngircd::start(Throttle::Off).await;
    let mut alice = IrcClient::connect(&server.addr(), "alice").await;
    let mut bob = IrcClient::connect(&server.addr(), "bob").await;
    alice.join("#ops").await;
    bob.join("#ops").await;

    alice.privmsg("#ops", "hello bob, build 42 is green").await;
    let m = bob
        .expect_privmsg_from("alice", "#ops", "build 42 is green", WAIT)
        .await;
    assert_eq!(m.params, vec!["#ops", "hello bob, build 42 is green"]);
    assert_eq!(m.nick.as_deref(), Some("alice"));

    bob.privmsg("#ops", "thanks alice").await;
    alice
        .expect_privmsg_from("bob", "#ops", "thanks alice", WAIT)
        .await;
    // The sender does not get its own channel line echoed back.
    assert!(alice.privmsgs_from("alice").is_empty());
    assert_eq!(bob.privmsgs_from("alice").len(), 1);

    alice.quit().await;
    bob.quit().await;
}

#[tokio::test]
async fn a_query_to_a_nick_arrives() {
    let server = Ngircd::start(Throttle::Off).await;
    let mut alice = IrcClient::connect(&server.addr(), "alice").await;
    let bob = IrcClient::connect(&server.addr(), "bob").await;

    alice.privmsg("bob", "psst, a private word").await;
    let m = bob
        .expect_privmsg_from("alice", "bob", "private word", WAIT)
        .await;
    assert_eq!(m.param(0), Some("bob"));

    alice.send_raw("NOTICE bob :a notice too").await;
    assert!(
        bob.wait_for(WAIT, |msgs| msgs
            .iter()
            .any(|m| m.command == "NOTICE" && m.text() == "a notice too"))
            .await,
        "no NOTICE; bob saw:\n{}",
        bob.transcript()
    );
    let from_alice: Vec<_> = bob
        .privmsgs_from("alice")
        .into_iter()
        .map(|m| (m.command, m.params))
        .collect();
    assert_eq!(
        from_alice,
        vec![
            (
                "PRIVMSG".to_string(),
                vec!["bob".to_string(), "psst, a private word".to_string()]
            ),
            (
                "NOTICE".to_string(),
                vec!["bob".to_string(), "a notice too".to_string()]
            ),
        ]
    );
}

#[tokio::test]
async fn the_channel_creator_can_kick_and_the_kicked_client_sees_it() {
    let server = Ngircd::start(Throttle::Off).await;
    let mut alice = IrcClient::connect(&server.addr(), "alice").await;
    let mut bob = IrcClient::connect(&server.addr(), "bob").await;
    alice.join("#ops").await;
    assert!(
        names_in(&alice.received(), "#ops").contains(&"@alice".to_string()),
        "the first joiner should be channel operator; alice saw:\n{}",
        alice.transcript()
    );
    bob.join("#ops").await;

    alice.send_raw("KICK #ops bob :out you go").await;
    let kick = bob
        .next_matching(0, WAIT, |m| m.command == "KICK")
        .await
        .unwrap_or_else(|| panic!("bob saw no KICK:\n{}", bob.transcript()));
    assert_eq!(kick.nick.as_deref(), Some("alice"));
    assert_eq!(kick.params, vec!["#ops", "bob", "out you go"]);

    // The server agrees bob is gone.
    let since = alice.received_len();
    alice.send_raw("NAMES #ops").await;
    let end = alice
        .next_matching(since, WAIT, |m| m.command == "366")
        .await;
    assert!(end.is_some(), "no NAMES reply:\n{}", alice.transcript());
    let names = names_in(&alice.received()[since..], "#ops");
    assert_eq!(names, vec!["@alice"]);
}

#[tokio::test]
async fn an_irc_operator_can_kick_without_being_channel_operator() {
    let server = Ngircd::start(Throttle::Off).await;
    let mut bob = IrcClient::connect(&server.addr(), "bob").await;
    let mut oper = IrcClient::connect(&server.addr(), "oper").await;
    bob.join("#ops").await;
    oper.join("#ops").await;
    oper.oper().await;
    assert!(
        names_in(&oper.received(), "#ops").contains(&"oper".to_string()),
        "oper should have joined without +o:\n{}",
        oper.transcript()
    );

    oper.send_raw("KICK #ops bob :by order of the operator")
        .await;
    let kick = bob
        .next_matching(0, WAIT, |m| m.command == "KICK")
        .await
        .unwrap_or_else(|| {
            panic!(
                "bob saw no KICK:\n{}\noper saw:\n{}",
                bob.transcript(),
                oper.transcript()
            )
        });
    assert_eq!(kick.nick.as_deref(), Some("oper"));
    assert_eq!(kick.param(1), Some("bob"));
}

#[tokio::test]
async fn killing_the_server_drops_clients_and_a_restart_accepts_them_on_the_same_port() {
    let mut server = Ngircd::start(Throttle::Off).await;
    let port = server.port();
    let alice = IrcClient::connect(&server.addr(), "alice").await;
    assert!(alice.is_connected());

    server.kill().await;
    assert!(
        alice.wait_disconnected(WAIT).await,
        "alice still connected after the kill"
    );
    let refused = IrcClient::try_connect(&server.addr(), "early", Duration::from_secs(2)).await;
    assert!(
        refused.is_err(),
        "a connection was accepted while the server was down"
    );

    server.restart().await;
    assert_eq!(server.port(), port, "the restart moved to another port");
    let mut alice = IrcClient::connect(&server.addr(), "alice").await;
    let mut bob = IrcClient::connect(&server.addr(), "bob").await;
    alice.join("#ops").await;
    bob.join("#ops").await;
    alice.privmsg("#ops", "back again").await;
    bob.expect_privmsg_from("alice", "#ops", "back again", WAIT)
        .await;

    // And once more through the convenience wrapper.
    server.stop_for(Duration::from_millis(200)).await;
    assert!(alice.wait_disconnected(WAIT).await);
    assert!(bob.wait_disconnected(WAIT).await);
    let carol = IrcClient::connect(&server.addr(), "carol").await;
    assert!(carol.is_connected());
    assert!(
        server.log().contains("ngircd killed"),
        "log:\n{}",
        server.log()
    );
}

/// On ngIRCd's stock limits a burst of 60 lines is queued and drained slowly (the server stops
/// reading a penalised client), not refused and not disconnected: all 60 arrive, in order, and a
/// line another client sends after the first of them has arrived overtakes the rest.
#[tokio::test]
async fn stock_throttle_spreads_a_burst_without_disconnecting() {
    const N: usize = 60;
    let server = Ngircd::start(Throttle::Stock).await;
    let mut flooder = IrcClient::connect(&server.addr(), "flooder").await;
    let mut watcher = IrcClient::connect(&server.addr(), "watcher").await;
    let mut other = IrcClient::connect(&server.addr(), "other").await;
    for c in [&mut flooder, &mut watcher, &mut other] {
        c.join("#flood").await;
    }

    let burst: String = (0..N)
        .map(|i| format!("PRIVMSG #flood :burst line {i}\r\n"))
        .collect();
    flooder.send_bytes(burst.as_bytes()).await;
    watcher
        .expect_privmsg_from("flooder", "#flood", "burst line 0", Duration::from_secs(30))
        .await;
    other.privmsg("#flood", "marker from another client").await;

    let done = watcher
        .wait_for(Duration::from_secs(120), |msgs| {
            msgs.iter().any(|m| {
                m.is_message_from("flooder") && m.text() == format!("burst line {}", N - 1)
            })
        })
        .await;
    assert!(
        done,
        "the burst did not drain; watcher saw:\n{}\nserver log:\n{}",
        watcher.transcript(),
        server.log()
    );

    let lines = watcher.privmsgs_from("flooder");
    let texts: Vec<&str> = lines.iter().map(Message::text).collect();
    let expected: Vec<String> = (0..N).map(|i| format!("burst line {i}")).collect();
    assert_eq!(texts, expected, "lost, duplicated or reordered lines");

    let received = watcher.received();
    let position = |pred: &dyn Fn(&Message) -> bool| received.iter().position(pred);
    let marker = position(&|m| m.is_message_from("other"))
        .expect("the marker from the other client arrived");
    let last = position(&|m| m.is_message_from("flooder") && m.text() == expected[N - 1])
        .expect("the last burst line arrived");
    assert!(
        marker < last,
        "the other client's line did not overtake the burst: the server did not throttle it"
    );

    assert!(flooder.is_connected(), "the flooder was disconnected");
    assert!(
        !flooder.received().iter().any(|m| m.command == "ERROR"),
        "the flooder got an ERROR:\n{}",
        flooder.transcript()
    );
    let spread = lines[N - 1].at.duration_since(lines[0].at);
    eprintln!("stock throttle: {N} lines drained over {spread:?}");
    // Still usable afterwards.
    flooder.privmsg("#flood", "still here").await;
    watcher
        .expect_privmsg_from("flooder", "#flood", "still here", Duration::from_secs(30))
        .await;
}

#[tokio::test]
async fn invalid_utf8_and_ctcp_pass_through_and_are_decoded_lossily() {
    let server = Ngircd::start(Throttle::Off).await;
    let mut alice = IrcClient::connect(&server.addr(), "alice").await;
    let bob = IrcClient::connect(&server.addr(), "bob").await;
    alice.send_bytes(b"PRIVMSG bob :caf\xe9 \xff end\r\n").await;
    let m = bob.expect_privmsg_from("alice", "bob", " end", WAIT).await;
    assert_eq!(m.text(), "caf\u{fffd} \u{fffd} end");

    alice.send_raw("PRIVMSG bob :\x01VERSION\x01").await;
    let m = bob
        .expect_privmsg_from("alice", "bob", "VERSION", WAIT)
        .await;
    assert_eq!(m.text(), "\x01VERSION\x01");
    assert!(alice.is_connected() && bob.is_connected());
}

#[tokio::test]
async fn round_trip_floor_measures_every_round() {
    let server = Ngircd::start(Throttle::Off).await;
    let mut samples = round_trip_floor(&server.addr(), 20).await;
    assert_eq!(samples.len(), 20);
    assert!(samples.iter().all(|d| *d > Duration::ZERO && *d < WAIT));
    samples.sort();
    eprintln!(
        "raw IRC round trip: min {:?}, median {:?}, max {:?}",
        samples[0], samples[10], samples[19]
    );
    // The two clients are gone again.
    let probe = IrcClient::connect(&server.addr(), &unique_nick("probe")).await;
    assert!(probe.is_connected());
}

/// The client answers server PINGs by itself (ngIRCd only PINGs after `PingTimeout` of silence,
/// so this uses a scripted server on a local socket).
#[tokio::test]
async fn the_client_answers_pings_automatically() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    let server = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.expect("accept");
        let (read, mut write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        let mut got = Vec::new();
        while got.len() < 2 {
            got.push(lines.next_line().await.expect("read").expect("a line"));
        }
        write
            .write_all(b":fake.server 001 pinged :Welcome\r\nPING :tok-123\r\n")
            .await
            .expect("write");
        let pong = lines.next_line().await.expect("read").expect("a PONG line");
        (got, pong)
    });
    let client = IrcClient::connect(&addr, "pinged").await;
    let (registration, pong) = server.await.expect("fake server");
    assert_eq!(registration[0], "NICK pinged");
    assert!(registration[1].starts_with("USER pinged "));
    assert_eq!(pong, "PONG :tok-123");
    assert!(client.received().iter().any(|m| m.command == "PING"));
}

/// With short ping times the real server PINGs an idle client, the client's automatic PONG
/// keeps it connected (a second PING comes instead of "Ping timeout").
#[tokio::test]
async fn the_server_pings_idle_clients_and_the_automatic_pong_keeps_them() {
    let server = Ngircd::start_with(
        Throttle::Off,
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .await;
    let idle = IrcClient::connect(&server.addr(), "idle").await;
    let pings = |msgs: &[Message]| msgs.iter().filter(|m| m.command == "PING").count();
    assert!(
        idle.wait_for(Duration::from_secs(15), |m| pings(m) >= 2)
            .await,
        "expected two PINGs (the second only comes if the first PONG counted); saw:\n{}\nserver log:\n{}",
        idle.transcript(),
        server.log()
    );
    assert!(idle.is_connected());
    assert!(!idle.received().iter().any(|m| m.command == "ERROR"));
}

/// A client that never answers is dropped with "Ping timeout" (what a hung bot would see).
#[tokio::test]
async fn the_server_drops_a_client_that_does_not_answer_pings() {
    let server = Ngircd::start_with(
        Throttle::Off,
        Duration::from_secs(2),
        Duration::from_secs(2),
    )
    .await;
    let stream = tokio::net::TcpStream::connect(server.addr())
        .await
        .expect("connect");
    let (read, mut write) = stream.into_split();
    write
        .write_all(b"NICK mute\r\nUSER mute 0 * :never answers\r\n")
        .await
        .expect("register");
    let mut lines = BufReader::new(read).lines();
    let mut seen = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(line)) = lines.next_line().await {
            seen.push(line);
        }
    })
    .await;
    assert!(closed.is_ok(), "still connected; saw:\n{}", seen.join("\n"));
    assert!(
        seen.iter().any(|l| l.starts_with("PING")),
        "no PING before the drop:\n{}",
        seen.join("\n")
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with("ERROR") && l.contains("Ping timeout")),
        "no ping-timeout ERROR:\n{}",
        seen.join("\n")
    );
}
