//! The services testbed itself, proven with a raw client against real servers (InspIRCd 3 +
//! Atheme 7.2 from Debian's packages, started per test by `shepherd_tests::services`):
//! accounts can be registered; a client logs in with SASL PLAIN during registration or with
//! NickServ IDENTIFY, and a wrong password logs nobody in; a client that asked for
//! `account-tag account-notify extended-join` sees `account=<name>` on PRIVMSGs from a logged-in
//! user and no tag from a logged-out one (including the same nick after it logs out); WHOIS of a
//! logged-in user carries 330 with the account, and of a user on a registered nick who is not
//! logged in, none. These are the facts shepherd's IRC identity rules stand on.

use shepherd_tests::services::{self, Message, RawClient, ServicesNet};

const OBSERVER_CAPS: &[&str] = &["account-tag", "account-notify", "extended-join"];

fn is(line: &str, command: &str) -> bool {
    Message::parse(line).command == command
}

/// The NOTICE's text without formatting (Atheme writes account names in bold).
fn text(line: &str) -> String {
    services::plain_text(Message::parse(line).trailing())
}

fn nickserv_notice(line: &str) -> bool {
    let m = Message::parse(line);
    m.command == "NOTICE" && m.nick() == Some("NickServ")
}

/// The next PRIVMSG to `c` carrying `text`.
async fn privmsg_with(c: &mut RawClient, text: &str) -> Message {
    let line = c
        .expect(|l| {
            let m = Message::parse(l);
            m.command == "PRIVMSG" && m.trailing() == text
        })
        .await;
    Message::parse(&line)
}

/// WHOIS `target` from `c`: the account in 330, if any (checked between 311 and 318).
async fn whois_account(c: &mut RawClient, target: &str) -> Option<String> {
    c.send(&format!("WHOIS {target}")).await;
    c.expect(|l| is(l, "311")).await;
    let mut account = None;
    loop {
        let line = c
            .expect(|l| matches!(Message::parse(l).command.as_str(), "330" | "318"))
            .await;
        let m = Message::parse(&line);
        if m.command == "318" {
            return account;
        }
        assert_eq!(m.params[1], target, "330 for someone else: {line}");
        account = Some(m.params[2].clone());
    }
}

#[tokio::test]
async fn starts_and_an_account_can_be_registered() {
    let net = ServicesNet::start().await;
    eprintln!(
        "services testbed ready in {:?} at {}",
        net.startup_time(),
        net.addr()
    );
    net.register_account("alice", "alice-secret").await;

    // NickServ knows the account now, and not one that was never registered.
    let addr = net.addr();
    let (mut c, mut again) = tokio::join!(
        RawClient::connect(&addr, "checker"),
        RawClient::connect(&addr, "alice")
    );
    c.send("PRIVMSG NickServ :INFO alice").await;
    let info = c.expect(nickserv_notice).await;
    assert!(
        text(&info).contains("Information on alice"),
        "INFO alice: {info}\n{}",
        c.transcript()
    );
    c.expect(|l| nickserv_notice(l) && text(l).contains("End of Info"))
        .await;
    c.send("PRIVMSG NickServ :INFO nobody").await;
    let info = c.expect(nickserv_notice).await;
    assert!(
        text(&info).contains("is not registered"),
        "INFO nobody: {info}"
    );

    // Registering the same account again is refused.
    again
        .send("PRIVMSG NickServ :REGISTER other-secret alice@example.com")
        .await;
    let reply = again
        .expect(|l| nickserv_notice(l) && text(l).contains("already registered"))
        .await;
    assert!(
        text(&reply).contains("alice is already registered"),
        "second REGISTER: {reply}"
    );
}

#[tokio::test]
async fn sasl_plain_logs_in_during_registration() {
    let net = ServicesNet::start().await;
    net.register_account("bob", "bob-secret").await;

    // (Each registration takes InspIRCd about a second: the clients connect side by side.)
    let addr = net.addr();
    let (mut ok, mut bad, nobody) = tokio::join!(
        RawClient::connect_with(&addr, "bobsasl", &[], Some(("bob", "bob-secret"))),
        RawClient::connect_with(&addr, "bobfake", &[], Some(("bob", "wrong"))),
        RawClient::connect_with(&addr, "ghost", &[], Some(("nobody", "x"))),
    );

    // Right password: 903 before 001, 900 names the account, and the server agrees afterwards.
    assert_eq!(ok.sasl_result(), Some("903"), "{}", ok.transcript());
    let lines = ok.lines();
    let pos = |cmd: &str| lines.iter().position(|l| is(l, cmd));
    let (logged_in, welcome) = (pos("900").expect("900 RPL_LOGGEDIN"), pos("001").unwrap());
    assert!(
        logged_in < welcome,
        "900 must come during registration\n{}",
        ok.transcript()
    );
    assert_eq!(
        Message::parse(&lines[logged_in]).params[2],
        "bob",
        "{}",
        lines[logged_in]
    );
    assert_eq!(
        whois_account(&mut ok, "bobsasl").await.as_deref(),
        Some("bob")
    );

    // Wrong password: 904, no 900, and the client is registered without an account.
    assert_eq!(bad.sasl_result(), Some("904"), "{}", bad.transcript());
    assert!(
        !bad.lines().iter().any(|l| is(l, "900")),
        "{}",
        bad.transcript()
    );
    assert_eq!(whois_account(&mut bad, "bobfake").await, None);

    // Unknown account: refused too.
    assert_eq!(nobody.sasl_result(), Some("904"), "{}", nobody.transcript());
}

#[tokio::test]
async fn nickserv_identify_logs_in() {
    let net = ServicesNet::start().await;
    net.register_account("carol", "carol-secret").await;

    // Wrong password first: refused, not logged in.
    let mut c = RawClient::connect(&net.addr(), "carolnick").await;
    c.send("PRIVMSG NickServ :IDENTIFY carol wrong").await;
    let reply = c.expect(nickserv_notice).await;
    assert!(text(&reply).contains("Invalid password"), "{reply}");
    assert!(
        !c.lines().iter().any(|l| is(l, "900")),
        "{}",
        c.transcript()
    );
    assert_eq!(whois_account(&mut c, "carolnick").await, None);

    // Right password: 900 with the account and NickServ's confirmation; WHOIS agrees.
    // (NickServ's notice and the server's 900 may come in either order.)
    c.send("PRIVMSG NickServ :IDENTIFY carol carol-secret")
        .await;
    let logged_in = c.wait_seen(services::LINE_TIMEOUT, |l| is(l, "900")).await;
    let logged_in =
        Message::parse(&logged_in.unwrap_or_else(|| panic!("no 900\n{}", c.transcript())));
    assert_eq!(logged_in.params[2], "carol");
    let reply = c.expect(nickserv_notice).await;
    assert!(
        text(&reply).contains("You are now identified for carol"),
        "{reply}"
    );
    assert_eq!(
        whois_account(&mut c, "carolnick").await.as_deref(),
        Some("carol")
    );
}

#[tokio::test]
async fn account_tag_marks_logged_in_senders_only() {
    let net = ServicesNet::start().await;
    net.register_account("dave", "dave-secret").await;

    let addr = net.addr();
    let (mut observer, dave, mut mallory) = tokio::join!(
        RawClient::connect_with(&addr, "observer", OBSERVER_CAPS, None),
        RawClient::connect_with(&addr, "dave", &[], Some(("dave", "dave-secret"))),
        RawClient::connect(&addr, "mallory"),
    );
    for cap in OBSERVER_CAPS {
        assert!(
            observer.caps().iter().any(|c| c == cap),
            "{cap} not ACKed: {:?}",
            observer.caps()
        );
    }
    observer.send("JOIN #ops").await;
    observer.expect(|l| is(l, "366")).await;

    // Logged in with SASL: every PRIVMSG (private and channel) carries account=dave.
    assert_eq!(dave.sasl_result(), Some("903"));
    dave.send("PRIVMSG observer :hello from dave").await;
    assert_eq!(
        privmsg_with(&mut observer, "hello from dave")
            .await
            .tag("account"),
        Some("dave")
    );

    // extended-join: the JOIN names the account.
    dave.send("JOIN #ops").await;
    let join = Message::parse(&observer.expect(|l| is(l, "JOIN")).await);
    assert_eq!(join.nick(), Some("dave"));
    assert_eq!(
        join.params.get(1).map(String::as_str),
        Some("dave"),
        "extended-join account: {join:?}"
    );
    dave.send("PRIVMSG #ops :channel hello").await;
    assert_eq!(
        privmsg_with(&mut observer, "channel hello")
            .await
            .tag("account"),
        Some("dave")
    );

    // Not logged in: no tag (and extended-join says `*`).
    mallory.send("PRIVMSG observer :hello from mallory").await;
    assert_eq!(
        privmsg_with(&mut observer, "hello from mallory")
            .await
            .tag("account"),
        None
    );
    mallory.send("JOIN #ops").await;
    let join = Message::parse(&observer.expect(|l| is(l, "JOIN")).await);
    assert_eq!(
        join.params.get(1).map(String::as_str),
        Some("*"),
        "{join:?}"
    );

    // account-notify: mallory identifies as dave in the shared channel -> ACCOUNT dave, and the
    // tag follows; after LOGOUT -> ACCOUNT *, and the same nick's messages are untagged again.
    mallory
        .send("PRIVMSG NickServ :IDENTIFY dave dave-secret")
        .await;
    mallory.expect(|l| is(l, "900")).await;
    let account = Message::parse(&observer.expect(|l| is(l, "ACCOUNT")).await);
    assert_eq!(
        (account.nick(), account.params[0].as_str()),
        (Some("mallory"), "dave")
    );
    mallory.send("PRIVMSG #ops :now identified").await;
    assert_eq!(
        privmsg_with(&mut observer, "now identified")
            .await
            .tag("account"),
        Some("dave")
    );

    mallory.send("PRIVMSG NickServ :LOGOUT").await;
    let account = Message::parse(&observer.expect(|l| is(l, "ACCOUNT")).await);
    assert_eq!(
        (account.nick(), account.params[0].as_str()),
        (Some("mallory"), "*")
    );
    mallory.send("PRIVMSG #ops :logged out now").await;
    assert_eq!(
        privmsg_with(&mut observer, "logged out now")
            .await
            .tag("account"),
        None
    );
}

#[tokio::test]
async fn whois_reports_the_account_of_logged_in_users_only() {
    let net = ServicesNet::start().await;
    net.register_account("erin", "erin-secret").await;

    let addr = net.addr();
    let (mut asker, erin, impostor) = tokio::join!(
        RawClient::connect(&addr, "asker"),
        RawClient::connect_with(&addr, "erin_work", &[], Some(("erin", "erin-secret"))),
        RawClient::connect(&addr, "erin"),
    );
    assert_eq!(erin.sasl_result(), Some("903"));

    // Logged in under another nick: 330 names the account, not the nick.
    assert_eq!(
        whois_account(&mut asker, "erin_work").await.as_deref(),
        Some("erin")
    );

    // The account's own nick, used by someone not logged in: no 330 (Atheme here enforces no
    // nick protection, exactly the case where trusting the nick would be wrong).
    assert_eq!(whois_account(&mut asker, impostor.nick()).await, None);
}
