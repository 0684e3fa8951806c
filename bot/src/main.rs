//! `shepherd`: the ChatOps service for CI/CD operations.
//!
//! `serve` runs everything configured (HTTP server, workers, watcher, console chat on
//! stdin); `console` is the same bot with the terminal as its only chat, exiting after EOF
//! once all its work has reported; `config check` validates and prints the effective
//! configuration with secrets redacted.

mod alerts;
mod app;
mod console;
mod dispatch;
mod frontend;
mod gitlab;
mod herder_check;
mod http;
mod irc;
mod limits;
mod matrix;
mod memory;
mod safe_text;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shepherd_config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

use crate::app::App;
use crate::console::ConsoleFrontend;

#[derive(Parser)]
#[command(
    name = "shepherd",
    version,
    about = "ChatOps for CI/CD: pipelines, retriggers, deploys and alerts from chat"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run everything configured: HTTP server, workers, watcher and console chat.
    Serve {
        /// Configuration file (default: $SHEPHERD_CONFIG, else config/shepherd.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The bot with the terminal as its chat: one command per line, replies on stdout.
    Console {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Also serve HTTP (metrics, health) on http.listen.
        #[arg(long)]
        http: bool,
    },
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCmd,
    },
    /// The durable work queue.
    Queue {
        #[command(subcommand)]
        command: QueueCmd,
    },
    /// Replies and notifications waiting for (or given up on by) the front ends.
    Outbox {
        #[command(subcommand)]
        command: OutboxCmd,
    },
    /// The herder: retries of jobs that failed for known infrastructure reasons.
    Herder {
        #[command(subcommand)]
        command: HerderCmd,
    },
}

#[derive(Subcommand)]
enum HerderCmd {
    /// Show which matcher a job matches and what the herder would do; changes nothing.
    Check {
        /// The job's web URL (`<gitlab>/<group>/<project>/-/jobs/<id>`).
        #[arg(long)]
        job_url: String,
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum OutboxCmd {
    /// List messages a front end gave up on after their last send attempt, newest first.
    Parked {
        #[arg(long)]
        config: Option<PathBuf>,
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum QueueCmd {
    /// List requests parked as dead after their last attempt, newest first.
    Dead {
        #[arg(long)]
        config: Option<PathBuf>,
        /// How many to show.
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Validate the configuration and print it with secrets redacted.
    Check {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    memory::tune();
    // Several TLS users (GitLab client, IRC) share rustls, and more than one crypto backend
    // is compiled in: choose one for the whole process before anyone connects.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shepherd: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(cli));
    // A blocking read of stdin may still be pending; it must not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_millis(500));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("shepherd: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn load(path: Option<PathBuf>) -> anyhow::Result<Config> {
    let path = path.unwrap_or_else(shepherd_config::default_path);
    let config = shepherd_config::load(&path)?;
    Ok(config)
}

/// Directives added to every log filter that does not name these crates itself: matrix-sdk logs
/// each sync request at info, a missing key backup at warn on every sync, and every 404 of an
/// account-data lookup at error, which would drown shepherd's own lines (shepherd logs the Matrix
/// connection's life and every failed send itself).
const QUIET_LIBRARIES: &[(&str, &str)] = &[
    ("matrix_sdk", "matrix_sdk=warn,matrix_sdk::http_client=off"),
    (
        "matrix_sdk_crypto",
        "matrix_sdk_crypto=warn,matrix_sdk_crypto::backups=error",
    ),
    ("matrix_sdk_base", "matrix_sdk_base=warn"),
];

fn log_filter(directives: &str) -> Option<EnvFilter> {
    let mut text = directives.to_string();
    for (name, quiet) in QUIET_LIBRARIES {
        let named = directives
            .split(',')
            .any(|d| d.trim().split(['=', ':', '[']).next() == Some(name));
        if !named {
            text.push(',');
            text.push_str(quiet);
        }
    }
    EnvFilter::try_new(text).ok()
}

fn init_logging(config: &Config) {
    let filter = std::env::var("SHEPHERD_LOG")
        .ok()
        .and_then(|f| log_filter(&f))
        .or_else(|| log_filter(&config.log.filter))
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Libraries that log through the `log` crate reach tracing through this bridge — except the
    // IRC library, which logs every raw line it sends (PASS, AUTHENTICATE, NickServ IDENTIFY
    // included): it never reaches the log, whatever the filter lets through. shepherd logs the
    // IRC connection's life itself.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match config.log.format {
        LogFormat::Json => tracing::subscriber::set_global_default(builder.json().finish()),
        LogFormat::Text => tracing::subscriber::set_global_default(builder.finish()),
    };
    {
        use tracing_log::AsLog;
        let _ = tracing_log::LogTracer::builder()
            .ignore_crate("irc")
            .with_max_level(tracing_subscriber::filter::LevelFilter::current().as_log())
            .init();
    }
    for w in config.warnings() {
        tracing::warn!("config: {w}");
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Cmd::Config {
            command: ConfigCmd::Check { config },
        } => {
            let config = load(config)?;
            app::preflight(&config)?;
            for w in config.warnings() {
                eprintln!("warning: {w}");
            }
            print!("{}", config.redacted_toml());
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Queue {
            command: QueueCmd::Dead { config, limit },
        } => {
            let config = load(config)?;
            let store = shepherd_core::store::Store::connect(config.store.url.expose()).await?;
            let counts = app::dead_items(&store, limit).await?;
            print!("{counts}");
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Outbox {
            command: OutboxCmd::Parked { config, limit },
        } => {
            let config = load(config)?;
            let store = shepherd_core::store::Store::connect(config.store.url.expose()).await?;
            let listed = app::parked_messages(&store, limit).await?;
            print!("{listed}");
            store.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Herder {
            command: HerderCmd::Check { job_url, config },
        } => {
            let config = load(config)?;
            app::preflight(&config)?;
            print!("{}", herder_check::check(&config, &job_url).await?);
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Serve { config } => {
            let config = load(config)?;
            init_logging(&config);
            serve(config).await
        }
        Cmd::Console { config, http } => {
            let config = load(config)?;
            init_logging(&config);
            console(config, http).await
        }
    }
}

fn spawn_http(app: &mut App) {
    let state = http::HttpState {
        metrics: app.metrics.clone(),
        store: app.store.clone(),
        reference: Arc::new(app.registry.reference(
            &app.services.policy,
            &app.services.address,
            &app.services.frontends,
        )),
        alert_hooks: app.config.alerts.as_ref().map(|a| {
            alerts::AlertHookState::new(
                a.webhook_token().map(|s| s.expose()),
                a.webhook_username.clone(),
                a.max_body_bytes,
                app.queue.clone(),
                app.metrics.clone(),
            )
        }),
        say: alerts::SayState::new(
            app.config.http.api_token().map(|s| s.expose()),
            app.outbox.clone(),
            Arc::new(app.config.clone()),
        ),
        gitlab_hooks: app.config.gitlab_comments.as_ref().map(|c| {
            gitlab::hooks::HookState::new(
                c.webhook_secret().map(|s| s.expose()),
                c.max_body_bytes,
                app.queue.clone(),
                app.metrics.clone(),
            )
        }),
    };
    let settings = http::ServerSettings {
        listen: app.config.http.listen,
        header_timeout: app.config.http.header_timeout(),
        body_timeout: app.config.http.body_timeout(),
        max_connections: usize::try_from(app.config.http.max_connections).unwrap_or(usize::MAX),
    };
    let listen = settings.listen;
    let rx = app.shutdown_rx();
    let stop = app.shutdown.clone();
    app.tasks.spawn(async move {
        if let Err(e) = http::serve(settings, state, rx).await {
            tracing::error!(error = %e, %listen, "http: server failed; shutting down");
            let _ = stop.send(true);
        }
    });
}

async fn serve(config: Config) -> anyhow::Result<ExitCode> {
    let front_ends = frontend::configured(&config)?;
    let mut app = App::start(config, frontend::declared(&front_ends)).await?;
    // Fail early and clearly when the port is taken.
    let probe = tokio::net::TcpListener::bind(app.config.http.listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {}", app.config.http.listen))?;
    drop(probe);
    spawn_http(&mut app);
    app.spawn_front_ends(front_ends);
    let mut stopped = app.shutdown_rx();
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        _ = stopped.wait_for(|s| *s) => {}
    }
    app.stop().await;
    Ok(ExitCode::SUCCESS)
}

/// The console as the only chat: the other front ends are declared (their rooms keep their
/// capabilities) but not run.
async fn console(config: Config, with_http: bool) -> anyhow::Result<ExitCode> {
    let front_ends = frontend::configured(&config)?;
    let mut app = App::start(config, frontend::declared(&front_ends)).await?;
    if with_http {
        spawn_http(&mut app);
    }
    let console = Arc::new(ConsoleFrontend::new(&app.config).console(&app.context()));
    let deliver = {
        let c = console.clone();
        let rx = app.shutdown_rx();
        tokio::spawn(async move { c.deliver(rx).await })
    };
    let work = async {
        console.read_stdin().await?;
        console.drain().await;
        Ok::<(), shepherd_core::store::StoreError>(())
    };
    tokio::select! {
        r = work => r?,
        _ = shutdown_signal() => tracing::info!("interrupted"),
    }
    app.stop().await;
    let _ = deliver.await;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
