//! The IRC front end against a real ngIRCd: a test client plays the human, the real
//! `shepherd serve` is the bot, GitLab is the double.

use std::time::Duration;

use shepherd_tests::gitlab::{AutoFinish, GitLabDouble};
use shepherd_tests::harness::{Backend, Shepherd, ShepherdConfig, TestStore, metric_value};
use shepherd_tests::irc_client::{IrcClient, human_and_bot, joined};
use shepherd_tests::ircd::{Ngircd, Throttle};
use shepherd_tests::on_both_stores;
use shepherd_tests::proxy::Proxy;

const PROJECT: &str = "cki-project/pipeline-definition";
const WAIT: Duration = Duration::from_secs(30);
const BOT: &str = "shepherd";

/// The `[irc]` section for a bot on `port`, plus permissions open to unidentified nicks
/// (ngIRCd has no services: nobody has an account here).
fn irc_section(port: u16, extra: &str) -> String {
    format!(
        r##"[irc]
server = "127.0.0.1"
port = {port}
tls = false
channels = ["#ops"]
flood_burst = 10
flood_rate = 50.0
ping_interval_secs = 5
regain_interval_secs = 1
rejoin_max_secs = 2
reconnect_max_secs = 2
{extra}
[permissions]
retrigger = ["*"]
cancel = ["*"]
"##
    )
}

async fn round_trip(backend: Backend) {
    let store = TestStore::new(backend).await;
    let gitlab = GitLabDouble::start().await;
    let old = gitlab.add_pipeline(PROJECT, "main", "success", &[("KERNEL", "6.12")]);
    gitlab.set_auto_finish(Some(AutoFinish::success_after_polls(1, 1)));
    let server = Ngircd::start(Throttle::Off).await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = irc_section(server.port(), "");
    let (mut human, bot) = human_and_bot(&config, &server.addr(), &["#ops"]).await;

    human
        .privmsg("#ops", &format!("{BOT}: retrigger {} x=1", old.web_url))
        .await;
    let reply = human
        .expect_privmsg_from(BOT, "#ops", "retriggered pipeline", WAIT)
        .await;
    let created = gitlab.pipelines_created();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].variable("x"), Some("1"));
    assert!(
        reply.text().starts_with("human: retriggered pipeline"),
        "{}",
        reply.text()
    );
    assert!(
        reply.text().contains(&created[0].web_url),
        "{}",
        reply.text()
    );
    let report = human
        .expect_privmsg_from(BOT, "#ops", "finished: success", WAIT)
        .await;
    assert!(
        report
            .text()
            .starts_with(&format!("human: pipeline {} of {PROJECT}", created[0].id)),
        "the end is reported to whoever asked: {}",
        report.text()
    );
    // The prefix form works too.
    human.privmsg("#ops", "!ping").await;
    human
        .expect_privmsg_from(BOT, "#ops", "human: pong", WAIT)
        .await;
    assert!(
        !bot.stderr().contains("irc: disconnected"),
        "{}",
        bot.stderr()
    );

    // IRC's own metrics.
    let metrics = reqwest::get(format!("http://127.0.0.1:{}/metrics", config.http_port))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    let value = |series: &str| metric_value(&metrics, series);
    assert_eq!(value("shepherd_irc_connected "), Some(1.0), "{metrics}");
    assert_eq!(
        value("shepherd_irc_reconnects_total "),
        Some(0.0),
        "{metrics}"
    );
    assert!(
        value("shepherd_irc_lines_sent_total ") >= Some(3.0),
        "{metrics}"
    );
    assert!(
        value("shepherd_irc_flood_delay_seconds_total ").is_some(),
        "{metrics}"
    );
    // Queued until the server acknowledges the last reply, which may be just after the
    // human saw it: only its presence is certain here.
    assert!(value("shepherd_irc_lines_queued ").is_some(), "{metrics}");
}
on_both_stores!(
    a_human_retriggers_from_a_channel_and_hears_the_end,
    round_trip
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_chatter_and_bad_input() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.production = false;
    config.extra = irc_section(server.port(), "");
    let (mut human, bot) = human_and_bot(&config, &server.addr(), &["#ops"]).await;

    // A query needs no prefix, and the reply comes back in the query.
    human.privmsg(BOT, "ping").await;
    let pong = human.expect_privmsg_from(BOT, "human", "pong", WAIT).await;
    assert_eq!(pong.text(), "pong");

    // Chatter, CTCP, notices and an empty address are not commands (the last gets told so).
    let before = human.privmsgs_from(BOT).len();
    human
        .privmsg("#ops", "hello everyone, shepherd is great")
        .await;
    human.privmsg(BOT, "\u{1}VERSION\u{1}").await;
    human.send_raw("NOTICE #ops :!ping").await;
    human.privmsg("#ops", &format!("{BOT}:")).await;
    let empty = human
        .expect_privmsg_from(BOT, "#ops", "empty command", WAIT)
        .await;
    assert!(
        empty.text().starts_with("human: empty command"),
        "{}",
        empty.text()
    );
    assert!(empty.text().contains("help"));

    // Invalid UTF-8 and an over-long line: no crash, clear answers.
    human
        .send_bytes(b"PRIVMSG #ops :!frobnicate \xff\xfe\xc3\r\n")
        .await;
    human
        .expect_privmsg_from(BOT, "#ops", "unknown command `frobnicate`", WAIT)
        .await;
    // The longest line a client may send (510 bytes) is longer than 512 once the server
    // relays it with the sender's prefix: the bot must take it in its stride.
    let head = "PRIVMSG #ops :!retrigger 1 x=";
    human
        .send_raw(&format!("{head}{}", "y".repeat(510 - head.len())))
        .await;
    human.privmsg("#ops", "!ping").await;
    human
        .expect_privmsg_from(BOT, "#ops", "human: pong", WAIT)
        .await;

    let said: Vec<String> = human.privmsgs_from(BOT)[before..]
        .iter()
        .filter(|m| m.command == "PRIVMSG")
        .map(|m| m.text().to_string())
        .collect();
    assert!(
        said.iter()
            .all(|t| !t.contains("hello everyone") && !t.contains("VERSION")),
        "{said:?}"
    );
    assert!(
        !said
            .iter()
            .any(|t| t == "human: pong" && said.iter().filter(|x| *x == t).count() > 1),
        "the NOTICE was not answered: {said:?}"
    );
    // The CTCP got the client library's NOTICE answer, not a command reply.
    assert!(
        human
            .privmsgs_from(BOT)
            .iter()
            .any(|m| m.command == "NOTICE" && m.text().contains("VERSION")),
        "{}",
        human.transcript()
    );
    assert!(
        !bot.stderr().contains("irc: disconnected"),
        "{}",
        bot.stderr()
    );
}

/// Replies produced while the server is down are delivered after it is back, once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_delivers_every_pending_line_once_in_order() {
    const N: usize = 5;
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let olds: Vec<_> = (0..N)
        .map(|i| gitlab.add_pipeline(PROJECT, "main", "success", &[("I", &i.to_string())]))
        .collect();
    let mut server = Ngircd::start(Throttle::Off).await;
    let proxy = Proxy::start(&server.addr()).await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = irc_section(proxy.port(), "");
    let (mut human, bot) = human_and_bot(&config, &server.addr(), &["#ops"]).await;

    for old in &olds {
        human
            .privmsg("#ops", &format!("!retrigger {}", old.id))
            .await;
    }
    assert!(
        human
            .wait_for(WAIT, |m| {
                m.iter()
                    .filter(|m| m.is_message_from(BOT) && m.text().contains("retriggered"))
                    .count()
                    == N
            })
            .await
    );
    // Replies count as delivered once the server acknowledged them (PONG): wait for that,
    // so what is pending below is only what the bot produces while cut off.
    let undelivered = "SELECT COUNT(*) FROM outbox WHERE frontend = 'irc' AND delivered_at IS NULL";
    assert!(
        store.wait_count(undelivered, 0, WAIT).await,
        "the replies were acknowledged"
    );
    // Down goes the network and the server; the pipelines finish meanwhile.
    proxy.shut();
    server.kill().await;
    for p in gitlab.pipelines_created() {
        gitlab.set_status(p.id, "success");
    }
    assert!(
        store.wait_count(undelivered, N as i64, WAIT).await,
        "the reports are waiting in the outbox"
    );

    // The server comes back; the human first, then the network for the bot.
    server.restart().await;
    let mut human = IrcClient::connect(&server.addr(), "human").await;
    human.join("#ops").await;
    proxy.open();
    assert!(
        human.wait_for(WAIT, joined(BOT, "#ops")).await,
        "{}",
        bot.stderr()
    );
    human.privmsg("#ops", "!ping").await;
    human
        .expect_privmsg_from(BOT, "#ops", "human: pong", WAIT)
        .await;

    let expected: Vec<String> = {
        let pool = store.connect().await;
        let bodies: Vec<String> = sqlx::query_scalar(
            "SELECT body FROM outbox WHERE frontend = 'irc' AND body LIKE '%finished%' ORDER BY created_at, id",
        )
        .fetch_all(&pool)
        .await
        .expect("outbox");
        bodies.into_iter().map(|b| format!("human: {b}")).collect()
    };
    let got: Vec<String> = human
        .privmsgs_from(BOT)
        .iter()
        .filter(|m| m.text().contains("finished"))
        .map(|m| m.text().to_string())
        .collect();
    assert_eq!(got.len(), N, "each report once:\n{}", human.transcript());
    assert_eq!(got, expected, "in the order they were produced");
    assert!(
        bot.stderr().contains("irc: disconnected"),
        "the bot did lose the server"
    );
    assert_eq!(store.count(undelivered).await, 0);
}

/// ngIRCd's stock flood limits: a 60-line reply arrives whole, in order, without a disconnect.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_reply_on_stock_flood_limits() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let values: Vec<(String, String)> = (0..60)
        .map(|i| (format!("V{i:02}"), format!("{i:02}").repeat(180)))
        .collect();
    let vars: Vec<(&str, &str)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let old = gitlab.add_pipeline(PROJECT, "main", "success", &vars);
    let server = Ngircd::start(Throttle::Stock).await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.production = false;
    config.extra = irc_section(server.port(), "")
        .replace("flood_burst = 10", "flood_burst = 4")
        .replace("flood_rate = 50.0", "flood_rate = 2.0");
    let (mut human, bot) = human_and_bot(&config, &server.addr(), &["#ops"]).await;

    human
        .privmsg("#ops", &format!("!retrigger {}", old.id))
        .await;
    let done = human
        .wait_for(Duration::from_secs(120), |m| {
            m.iter()
                .any(|m| m.is_message_from(BOT) && m.text().contains("SHEPHERD_REQUEST_ID"))
        })
        .await;
    assert!(done, "{}\n{}", human.transcript(), bot.stderr());
    let lines: Vec<String> = human
        .privmsgs_from(BOT)
        .iter()
        .map(|m| m.text().to_string())
        .collect();
    assert!(lines.len() >= 60, "{} lines", lines.len());
    // Lines break at spaces where they can and inside long values where they must.
    let text: String = lines.concat().chars().filter(|c| *c != ' ').collect();
    let mut at = 0;
    for (k, v) in &values {
        let needle = format!("{k}={v}");
        let found = text[at..].find(&needle).map(|i| i + at);
        assert!(found.is_some(), "{k} whole and in order");
        at = found.unwrap_or(at);
    }
    assert!(
        !bot.stderr().contains("irc: disconnected"),
        "{}",
        bot.stderr()
    );
    assert!(human.is_connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kicked_bot_rejoins_and_answers_by_notice_when_so_configured() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = irc_section(server.port(), "reply_with = \"notice\"");
    let (mut human, _bot) = human_and_bot(&config, &server.addr(), &["#ops"]).await;
    let seen = human.received_len();
    human
        .send_raw(&format!("KICK #ops {BOT} :out you go"))
        .await;
    let rejoined = human
        .next_matching(seen, WAIT, |m| {
            m.command == "JOIN" && m.nick.as_deref() == Some(BOT)
        })
        .await;
    assert!(rejoined.is_some(), "{}", human.transcript());
    let seen = human.received_len();
    human.privmsg("#ops", "!ping").await;
    let pong = human
        .next_matching(seen, WAIT, |m| m.is_message_from(BOT))
        .await
        .expect("an answer");
    assert_eq!(
        (pong.command.as_str(), pong.text()),
        ("NOTICE", "human: pong")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nick_collision_uses_the_alternate_then_regains() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let squatter = IrcClient::connect(&server.addr(), BOT).await;
    let mut human = IrcClient::connect(&server.addr(), "human").await;
    human.join("#ops").await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = irc_section(server.port(), "");
    let _bot = Shepherd::serve(&config).await;
    assert!(
        human.wait_for(WAIT, joined("shepherd_", "#ops")).await,
        "{}",
        human.transcript()
    );
    // Addressed by its configured name while on the alternate.
    human.privmsg("#ops", "shepherd: ping").await;
    let pong = human
        .expect_privmsg_from("shepherd_", "#ops", "human: pong", WAIT)
        .await;
    assert_eq!(pong.text(), "human: pong");

    squatter.quit().await;
    let regained = human
        .wait_for(WAIT, |m| {
            m.iter().any(|m| {
                m.command == "NICK" && m.nick.as_deref() == Some("shepherd_") && m.text() == BOT
            })
        })
        .await;
    assert!(regained, "{}", human.transcript());
    human.privmsg("#ops", "!ping").await;
    human
        .expect_privmsg_from(BOT, "#ops", "human: pong", WAIT)
        .await;
}

/// TLS (a self-signed certificate, accepted by configuration), a server password and a
/// channel with a key, all from secrets in the environment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_password_and_a_keyed_channel() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let tls_port = shepherd_tests::ircd::free_port();
    let server = Ngircd::start_configured(Throttle::Off, "\tPassword = server-pw\n", |dir| {
        let status = std::process::Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost", "-keyout"])
            .arg(dir.join("key.pem"))
            .arg("-out")
            .arg(dir.join("cert.pem"))
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(status.success(), "openssl made a certificate");
        for f in ["key.pem", "cert.pem"] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        format!(
            "[SSL]\n\tCertFile = {cert}\n\tKeyFile = {key}\n\tPorts = {tls_port}\n\
             [Channel]\n\tName = #secret\n\tModes = tnk\n\tKey = letmein\n",
            cert = dir.join("cert.pem").display(),
            key = dir.join("key.pem").display(),
        )
    })
    .await;
    let mut human = IrcClient::connect_with_password(&server.addr(), "human", "server-pw").await;
    human.send_raw("JOIN #secret letmein").await;
    assert!(
        human.wait_for(WAIT, joined("human", "#secret")).await,
        "{}",
        human.transcript()
    );

    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = irc_section(tls_port, "password_env = \"TEST_IRC_PASSWORD\"\nchannel_keys_env = \"TEST_IRC_KEYS\"\ntls_accept_invalid_certs = true")
        .replace("tls = false", "tls = true")
        .replace("channels = [\"#ops\"]", "channels = [\"#ops\", \"#secret\"]");
    config.env = vec![
        ("TEST_IRC_PASSWORD".into(), "server-pw".into()),
        ("TEST_IRC_KEYS".into(), "#secret=letmein".into()),
    ];
    let bot = Shepherd::serve(&config).await;
    assert!(
        human.wait_for(WAIT, joined(BOT, "#secret")).await,
        "{}\n{}\n{}",
        human.transcript(),
        bot.stderr(),
        server.log()
    );
    assert!(bot.stderr().contains("tls=true"), "{}", bot.stderr());
    human.privmsg("#secret", "!ping").await;
    human
        .expect_privmsg_from(BOT, "#secret", "human: pong", WAIT)
        .await;
    // Secrets stay secret.
    let (log, printed) = (bot.stderr(), human.transcript());
    assert!(
        !log.contains("server-pw") && !log.contains("letmein"),
        "{log}"
    );
    assert!(!printed.contains("server-pw"), "{printed}");
}

/// A server that stops answering (frozen, its sockets still open) is given up within two
/// ping intervals, and the bot is back as soon as it answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_detected_and_the_bot_comes_back() {
    let store = TestStore::new(Backend::Sqlite).await;
    let gitlab = GitLabDouble::start().await;
    let server = Ngircd::start(Throttle::Off).await;
    let mut config = ShepherdConfig::new(&store, &gitlab);
    config.extra = irc_section(server.port(), "");
    let (human, bot) = human_and_bot(&config, &server.addr(), &["#ops"]).await;
    drop(human);
    let pid = server.pid().expect("running").to_string();
    let signal = |sig: &str| {
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill {sig}");
    };
    signal("-STOP");
    let gave_up = async {
        loop {
            if bot.stderr().contains("no ping response") || bot.stderr().contains("did not finish")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let detected = tokio::time::timeout(WAIT, gave_up).await;
    signal("-CONT");
    assert!(
        detected.is_ok(),
        "the dead connection was noticed:\n{}",
        bot.stderr()
    );

    let mut human = IrcClient::connect(&server.addr(), "human2").await;
    human.join("#ops").await;
    let back = human
        .wait_for(Duration::from_secs(60), |msgs| {
            msgs.iter().any(|m| {
                (m.command == "JOIN" && m.nick.as_deref() == Some(BOT))
                    || (m.command == "353" && m.text().contains(BOT))
            })
        })
        .await;
    assert!(back, "{}\n{}", human.transcript(), bot.stderr());
    human.privmsg("#ops", "!ping").await;
    human
        .expect_privmsg_from(BOT, "#ops", "human2: pong", WAIT)
        .await;
}
