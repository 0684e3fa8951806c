//! Identity from IRC services, never from the nick: shepherd against a real InspIRCd with
//! Atheme services. A user logged into an account may run a restricted command; the same
//! nick without the account is refused; the bot itself logs in with SASL.

use shepherd_tests::gitlab::GitLabDouble;
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore};
use shepherd_tests::services::{Message, RawClient, ServicesNet};

/// The services network with the bot's account `shepherd` registered, a store, the GitLab
/// double, and a config for a bot on that network.
async fn setup() -> (ServicesNet, TestStore, GitLabDouble, ShepherdConfig) {
    let net = ServicesNet::start().await;
    net.register_account("shepherd", "bot-secret-pw").await;
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let config = ShepherdConfig::new(&store, &gitlab);
    (net, store, gitlab, config)
}

/// The `[irc]` section for a bot on `net`, with `keys` added.
fn irc_section(net: &ServicesNet, keys: &str) -> String {
    format!(
        "[irc]\nserver = \"127.0.0.1\"\nport = {}\ntls = false\nchannels = [\"#ops\"]\n{keys}\n",
        net.port()
    )
}

/// A line from the bot (tags, if any, come before the prefix).
fn from_bot(line: &str, command: &str) -> bool {
    let m = Message::parse(line);
    m.nick() == Some("shepherd") && m.command == command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logged_in_account_may_and_the_bare_nick_may_not() {
    let (net, store, gitlab, mut config) = setup().await;
    net.register_account("alice", "alice-secret-pw").await;
    let old = gitlab.add_pipeline("g/p", "main", "success", &[]);
    config.production = false;
    let secrets = tempfile::tempdir().expect("tempdir");
    let sasl_file = secrets.path().join("sasl");
    std::fs::write(&sasl_file, "bot-secret-pw\n").expect("write secret");
    config.extra = irc_section(
        &net,
        &format!("sasl_password_file = \"{}\"", sasl_file.display()),
    ) + "[[people]]\nname = \"alice\"\nidentities = [\"irc:alice\"]\ngroups = [\"developers\"]\n";

    let caps = ["account-tag", "account-notify", "extended-join"];
    let mut alice = RawClient::connect_with(
        &net.addr(),
        "alice",
        &caps,
        Some(("alice", "alice-secret-pw")),
    )
    .await;
    assert_eq!(alice.sasl_result(), Some("903"));
    alice.send("JOIN #ops").await;
    let bot = Shepherd::serve(&config).await;
    alice.expect(|l| from_bot(l, "JOIN")).await;
    assert!(
        bot.stderr().contains("irc: SASL login succeeded"),
        "{}",
        bot.stderr()
    );

    alice
        .send(&format!("PRIVMSG #ops :!retrigger {}", old.web_url))
        .await;
    let yes = alice
        .expect(|l| from_bot(l, "PRIVMSG") && l.contains("PRIVMSG #ops :alice: "))
        .await;
    assert!(yes.contains("would retrigger pipeline"), "{yes}");
    alice.send("PRIVMSG #ops :!whoami").await;
    let who = alice
        .expect(|l| from_bot(l, "PRIVMSG") && l.contains("you are irc:alice"))
        .await;
    assert!(who.contains("developers"), "{who}");
    alice.quit().await;

    // The same nick, not logged in (Atheme here does not enforce nicks).
    let mut impostor = RawClient::connect_with(&net.addr(), "alice", &[], None).await;
    impostor.send("JOIN #ops").await;
    impostor
        .send(&format!("PRIVMSG #ops :!retrigger {}", old.web_url))
        .await;
    let no = impostor
        .expect(|l| from_bot(l, "PRIVMSG") && l.contains("PRIVMSG #ops :alice: "))
        .await;
    assert!(no.contains("sorry, you may not use `retrigger`"), "{no}");
    assert!(no.contains("irc-unidentified:alice"), "{no}");

    let audit = store
        .count("SELECT COUNT(*) FROM audit WHERE identity = 'irc-unidentified:alice' AND outcome = 'refused'")
        .await;
    assert_eq!(audit, 1);
    assert_eq!(
        store
            .count("SELECT COUNT(*) FROM audit WHERE identity = 'irc:alice' AND outcome = 'would'")
            .await,
        1
    );
    assert!(gitlab.pipelines_created().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bot_takes_its_registered_nick_back_from_a_squatter() {
    let (net, _store, _gitlab, mut config) = setup().await;
    config.extra = irc_section(
        &net,
        "sasl_password_env = \"TEST_SASL\"\nnickserv_password_env = \"TEST_SASL\"\nregain_interval_secs = 1",
    );
    config.env = vec![("TEST_SASL".into(), "bot-secret-pw".into())];
    let addr = net.addr();
    let (squatter, mut watcher) = tokio::join!(
        RawClient::connect_with(&addr, "shepherd", &[], None),
        RawClient::connect_with(&addr, "watcher", &[], None),
    );
    watcher.send("JOIN #ops").await;
    let bot = Shepherd::serve(&config).await;
    let joined = watcher
        .expect(|l| Message::parse(l).command == "JOIN" && l.contains("shepherd_!"))
        .await;
    assert!(joined.contains("#ops"), "{joined}");
    // GHOST disconnects the squatter; the bot takes the nick.
    let renamed = watcher
        .expect(|l| {
            let m = Message::parse(l);
            m.command == "NICK" && m.nick() == Some("shepherd_") && m.trailing() == "shepherd"
        })
        .await;
    assert!(!renamed.is_empty());
    drop(squatter);
    assert!(
        bot.stderr().contains("irc: SASL login succeeded"),
        "{}",
        bot.stderr()
    );
    assert!(!bot.stderr().contains("bot-secret-pw"), "{}", bot.stderr());
}

/// A failed SASL login is logged clearly and the bot carries on without an account; NickServ
/// IDENTIFY logs it in instead when a NickServ password is configured.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_failure_is_clear_and_nickserv_identify_logs_in() {
    let (net, _store, _gitlab, mut config) = setup().await;
    config.extra = irc_section(&net, "sasl_password_env = \"TEST_WRONG\"");
    config.env = vec![("TEST_WRONG".into(), "not-the-password".into())];
    let mut watcher = RawClient::connect_with(&net.addr(), "watcher", &[], None).await;
    watcher.send("JOIN #ops").await;
    let bot = Shepherd::serve(&config).await;
    watcher.expect(|l| from_bot(l, "JOIN")).await;
    assert!(
        bot.stderr().contains("irc: SASL login failed"),
        "{}",
        bot.stderr()
    );
    watcher.send("WHOIS shepherd").await;
    let end = watcher.expect(|l| Message::parse(l).command == "318").await;
    assert!(!end.is_empty());
    assert!(
        !watcher
            .lines()
            .iter()
            .any(|l| Message::parse(l).command == "330"),
        "not logged in: {}",
        watcher.transcript()
    );
    drop(bot);

    // Without SASL, with the NickServ password: IDENTIFY after registration.
    config.extra = config.extra.replace(
        "sasl_password_env = \"TEST_WRONG\"",
        "nickserv_password_env = \"TEST_NS\"",
    );
    config.env = vec![("TEST_NS".into(), "bot-secret-pw".into())];
    let bot = Shepherd::serve(&config).await;
    watcher.expect(|l| from_bot(l, "JOIN")).await;
    let identified = async {
        loop {
            watcher.send("WHOIS shepherd").await;
            if let Some(line) = watcher
                .wait_for(std::time::Duration::from_secs(2), |l| {
                    Message::parse(l).command == "330"
                })
                .await
            {
                return line;
            }
        }
    };
    let line = tokio::time::timeout(std::time::Duration::from_secs(30), identified)
        .await
        .unwrap_or_else(|_| panic!("IDENTIFY logged the bot in:\n{}", bot.stderr()));
    assert!(line.contains("shepherd"), "{line}");
    assert!(!bot.stderr().contains("bot-secret-pw"));
}
