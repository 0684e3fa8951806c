//! Wiring: from a validated configuration to running services.
//!
//! Opens the store (running migrations), builds the GitLab client, the policy, the plugin
//! registry and the shared `Services`, and starts the workers, the watcher and the metrics
//! refresher. `serve` and `console` differ only in which front ends and servers they add.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use shepherd_config::{AlertLines, AlertsConfig, Config};
use shepherd_core::alerts::{Alertmanager, AlertmanagerSettings, Matcher, Route, Router};
use shepherd_core::audit::AuditLog;
use shepherd_core::canary::{Canary, CanaryProject, CanarySettings, Reference, ReferenceSource};
use shepherd_core::deploy::Deployer;
use shepherd_core::gitlab::{GitLab, GitLabSettings};
use shepherd_core::metrics::Metrics;
use shepherd_core::outbox::Outbox;
use shepherd_core::policy::{PersonSpec, Policy};
use shepherd_core::queue::{Queue, QueueSettings};
use shepherd_core::registry::{Registry as ImageRegistry, RegistrySettings};
use shepherd_core::retrigger::{Retrigger, RetriggerSettings};
use shepherd_core::store::Store;
use shepherd_core::watcher::{Watcher, WatcherSettings};
use shepherd_core::{FrontEnds, Origin};
use shepherd_plugins::alerts::{AlertFormatter, AlertWording};
use shepherd_plugins::{BotAddress, PipelineReporter, Registry, Services};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::alerts::AlertRelay;
use crate::dispatch::Dispatcher;
use crate::frontend::{Context as FrontEndContext, FrontEnd};
use crate::gitlab::events::GitLabEvents;
use crate::worker::Worker;

pub struct App {
    pub config: Config,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    pub queue: Queue,
    pub outbox: Outbox,
    pub registry: Arc<Registry>,
    pub services: Arc<Services>,
    pub dispatcher: Arc<Dispatcher>,
    pub tasks: JoinSet<()>,
    pub shutdown: watch::Sender<bool>,
}

/// The GitLab client's settings from `[gitlab]`.
pub fn gitlab_settings(config: &Config) -> GitLabSettings {
    GitLabSettings {
        base_url: config.gitlab.url.clone(),
        token: config.gitlab.token().map(|s| s.expose().to_string()),
        timeout: config.gitlab.timeout(),
        max_retries: config.gitlab.max_retries,
        retry_base: config.gitlab.retry_base(),
        retry_max: config.gitlab.retry_max(),
        requests_per_minute: config.gitlab.requests_per_minute,
    }
}

/// Everything `serve` would refuse in a configuration before it connects anywhere — the commands
/// permissions name, the queue, alert matchers and templates, canary templates, identity
/// patterns, the front ends' own settings. `shepherd config check` and `App::start` both call
/// this, so they judge a configuration alike. (Canary templates and everything else the config
/// crate can judge alone it checks while loading.)
pub fn preflight(config: &Config) -> anyhow::Result<()> {
    check_permissions(config)?;
    check_queue(config)?;
    policy_of(config, &Registry::new())?;
    if let Some(a) = &config.alerts {
        let metrics = Arc::new(Metrics::new().context("creating metrics")?);
        alert_relay(a, metrics, FrontEnds::default())?;
    }
    if let Some(h) = &config.herder {
        // The herder's patterns, judged where they are compiled.
        shepherd_core::herder::Herder::new(h)?;
    }
    crate::frontend::configured(config)?;
    Ok(())
}

fn check_queue(config: &Config) -> anyhow::Result<()> {
    if !config.queue.is_store() {
        bail!(
            "queue.url: `{}` — only the embedded queue (`store`) is available in this version",
            config.queue.url
        );
    }
    Ok(())
}

/// The people and the permission table in force (the configuration's, and each built command's
/// defaults where it names none).
fn policy_of(config: &Config, registry: &Registry) -> anyhow::Result<Policy> {
    let permissions: BTreeMap<String, Vec<String>> =
        registry.effective_permissions(&config.permissions);
    let people: Vec<PersonSpec> = config
        .people
        .iter()
        .map(|p| PersonSpec {
            name: p.name.clone(),
            identities: p.identities.clone(),
            groups: p.groups.clone(),
        })
        .collect();
    Ok(Policy::new(&people, permissions)?)
}

/// Checks what the config crate cannot know: that permissions name real commands.
fn check_permissions(config: &Config) -> anyhow::Result<()> {
    let unknown: Vec<&String> = config
        .permissions
        .keys()
        .filter(|k| !shepherd_commands::COMMAND_NAMES.contains(&k.as_str()))
        .collect();
    if !unknown.is_empty() {
        bail!(
            "permissions: unknown command(s) {} (expected one of: {})",
            unknown
                .iter()
                .map(|s| format!("`{s}`"))
                .collect::<Vec<_>>()
                .join(", "),
            shepherd_commands::COMMAND_NAMES.join(", ")
        );
    }
    Ok(())
}

impl App {
    /// Starts the shared services; `frontends` are the declarations of the front ends that may
    /// run (see `frontend::configured`).
    pub async fn start(config: Config, frontends: FrontEnds) -> anyhow::Result<Self> {
        preflight(&config)?;
        let metrics = Arc::new(Metrics::new().context("creating metrics")?);
        let store = Store::connect(config.store.url.expose()).await?;
        tracing::info!(backend = ?store.backend(), "store ready (migrations applied)");
        if let Some(h) = &config.herder {
            tracing::info!(
                projects = h.projects.len(),
                matchers = h.matchers.len(),
                production = config.production,
                "herder: judging the Job Hooks of its projects"
            );
        }
        store
            .register_metrics(metrics.registry())
            .context("registering the store's metrics")?;

        let gitlab = GitLab::new(gitlab_settings(&config), metrics.clone())?;

        let registry = Arc::new(Registry::new());
        let policy = Arc::new(policy_of(&config, &registry)?);

        let queue = Queue::new(
            store.clone(),
            QueueSettings {
                max_attempts: config.queue.max_attempts,
                lease: config.queue.lease(),
                retry_base: config.queue.retry_base(),
                retry_max: config.queue.retry_max(),
                lanes: vec![crate::alerts::NOTIFICATION_KIND.to_string()],
            },
            metrics.clone(),
        );
        let outbox = Outbox::new(store.clone());
        let audit = AuditLog::new(store.clone());
        let retrigger = Retrigger::new(
            gitlab.clone(),
            store.clone(),
            RetriggerSettings {
                marker_variables: config
                    .retrigger
                    .marker_variables
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                lookback: config.retrigger.lookback(),
                create_attempts: 3,
            },
        );
        let canary = Canary::new(
            gitlab.clone(),
            store.clone(),
            retrigger.clone(),
            canary_settings(&config),
        )
        .context("canary.projects")?;
        let address = BotAddress::new(config.bot.name.clone(), config.bot.prefix.clone());
        let reporter = Arc::new(PipelineReporter::new(address.clone(), frontends.clone()));
        let herder = match &config.herder {
            Some(h) => Some(Arc::new(shepherd_core::herder::Herder::new(h)?)),
            None => None,
        };
        let services = Arc::new(Services {
            production: config.production,
            address,
            frontends: frontends.clone(),
            default_project: config.gitlab.default_project.clone(),
            gitlab: gitlab.clone(),
            store: store.clone(),
            retrigger: retrigger.clone(),
            canary,
            alertmanager: alertmanager_client(&config)?,
            deploy: deployer(&config, &gitlab, &retrigger, &store, &metrics)?,
            herder: herder.clone(),
            failovers: (!config.failover.is_empty()).then(|| {
                shepherd_core::failover::Failovers::new(
                    config.failover.clone(),
                    gitlab.clone(),
                    store.clone(),
                )
            }),
            policy: policy.clone(),
            registry: registry.clone(),
            reporter: reporter.clone(),
            started_at: Instant::now(),
        });
        let watcher = Watcher::new(
            store.clone(),
            gitlab,
            outbox.clone(),
            WatcherSettings {
                poll_interval: config.watcher.poll_interval(),
                max_poll_interval: config.watcher.max_poll_interval(),
                frontends: frontends.clone(),
            },
            reporter,
            metrics.clone(),
        );
        let dispatcher = Arc::new(Dispatcher::new(
            registry.clone(),
            services.clone(),
            queue.clone(),
            outbox.clone(),
            audit.clone(),
            metrics.clone(),
            config.rate_limits.per_identity_per_minute,
            config.rate_limits.per_room_per_minute,
        ));

        let events = Arc::new(GitLabEvents {
            dispatcher: dispatcher.clone(),
            services: services.clone(),
            watcher: watcher.clone(),
            outbox: outbox.clone(),
            comments: config.gitlab_comments.clone(),
            herder,
            metrics: metrics.clone(),
        });

        let relay = match &config.alerts {
            Some(a) => Some(Arc::new(alert_relay(
                a,
                metrics.clone(),
                frontends.clone(),
            )?)),
            None => None,
        };

        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let worker = |name: String, lane: Option<&'static str>| Worker {
            name,
            queue: queue.clone(),
            outbox: outbox.clone(),
            audit: audit.clone(),
            registry: registry.clone(),
            services: services.clone(),
            watcher: watcher.clone(),
            metrics: metrics.clone(),
            poll_interval: config.queue.poll_interval(),
            events: events.clone(),
            alerts: relay.clone(),
            lane,
        };
        // What a predecessor killed on this host still held is taken back now, not when its
        // leases run out: the alert lane would stand still behind it until then.
        let me = Holder::me();
        match queue.reclaim(|owner| me.outlived(owner)).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(items = n, "queue: leases of a process that is gone ended"),
            Err(e) => {
                tracing::warn!(error = %e, "queue: cannot look for leases of processes that are gone")
            }
        }
        for n in 0..config.queue.workers {
            let w = worker(me.owner(&format!("w{n}")), None);
            tasks.spawn(w.run(shutdown_rx.clone()));
        }
        if relay.is_some() {
            // Alert notifications, one at a time in the order they came.
            let w = worker(me.owner("alerts"), Some(crate::alerts::NOTIFICATION_KIND));
            tasks.spawn(w.run(shutdown_rx.clone()));
        }
        tasks.spawn(watcher.clone().run(shutdown_rx.clone()));
        {
            let queue = queue.clone();
            let outbox_for_metrics = outbox.clone();
            let metrics_for_outbox = metrics.clone();
            let names: Vec<&'static str> = frontends.names().collect();
            let mut rx = shutdown_rx.clone();
            tasks.spawn(async move {
                loop {
                    if let Err(e) = queue.refresh_metrics().await {
                        tracing::warn!(error = %e, "metrics: cannot read queue counts");
                    }
                    match outbox_for_metrics.pending_by_frontend().await {
                        Ok(counts) => {
                            for &frontend in &names {
                                let n = counts
                                    .iter()
                                    .find(|(f, _)| f == frontend)
                                    .map_or(0, |(_, n)| *n);
                                metrics_for_outbox
                                    .outbox_pending
                                    .with_label_values(&[frontend])
                                    .set(n);
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "metrics: cannot read outbox counts"),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        _ = rx.changed() => return,
                    }
                }
            });
        }

        {
            // Rate-limit state of senders not heard from lately, pruned every minute.
            let dispatcher = dispatcher.clone();
            let mut rx = shutdown_rx.clone();
            tasks.spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(crate::limits::WARN_WINDOW) => dispatcher.prune_limits(),
                        _ = rx.changed() => return,
                    }
                }
            });
        }

        {
            // Retention: what is finished and old is deleted, hourly.
            let store = store.clone();
            let keep = Duration::from_secs(config.queue.retention_days.saturating_mul(86_400));
            let mut rx = shutdown_rx.clone();
            tasks.spawn(async move {
                loop {
                    let before = shepherd_core::store::now_ms()
                        - i64::try_from(keep.as_millis()).unwrap_or(i64::MAX / 2);
                    match shepherd_core::store::prune(&store, before).await {
                        Ok(p) if p != shepherd_core::store::Pruned::default() => {
                            tracing::info!(
                                requests = p.requests,
                                outbox = p.outbox,
                                watches = p.watches,
                                effects = p.effects,
                                alert_notices = p.alert_notices,
                                herder_actions = p.herder_actions,
                                "retention: old finished rows deleted"
                            );
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "retention: cannot prune the store"),
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
                        _ = rx.changed() => return,
                    }
                }
            });
        }

        if !config.production {
            tracing::info!("non-production mode: writes to GitLab are described, not made");
        }
        Ok(Self {
            config,
            store,
            metrics,
            queue,
            outbox,
            registry,
            services,
            dispatcher,
            tasks,
            shutdown,
        })
    }

    /// What a front end may use while it runs.
    pub fn context(&self) -> Arc<FrontEndContext> {
        Arc::new(FrontEndContext::new(self.dispatcher.clone()))
    }

    /// Runs `front_ends` until shutdown; one that cannot start stops the process (it would
    /// otherwise leave its rooms silent while everything looks up).
    pub fn spawn_front_ends(&mut self, front_ends: Vec<Box<dyn FrontEnd>>) {
        let ctx = self.context();
        for fe in front_ends {
            let name = fe.capabilities().name;
            let rx = self.shutdown_rx();
            let stop = self.shutdown.clone();
            let ctx = ctx.clone();
            self.tasks.spawn(async move {
                if let Err(e) = fe.run(ctx, rx).await {
                    tracing::error!(
                        front_end = name,
                        error = format!("{e:#}"),
                        "front end failed to start; shutting down"
                    );
                    let _ = stop.send(true);
                }
            });
        }
    }

    pub fn shutdown_rx(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Stops the background tasks, letting in-flight work finish for a short while.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        let drained = tokio::time::timeout(Duration::from_secs(10), async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            tracing::warn!("shutdown: some tasks did not stop in time; aborting them");
            self.tasks.abort_all();
        }
        self.store.close().await;
    }
}

/// The dead items as a table, for `shepherd queue dead`.
pub async fn dead_items(store: &Store, limit: i64) -> anyhow::Result<String> {
    let items = shepherd_core::queue::dead_items(store, limit).await?;
    let mut out = format!("{} dead request(s)\n", items.len());
    for d in items {
        let when = chrono::DateTime::from_timestamp_millis(d.created_at)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default();
        out.push_str(&format!(
            "{}  {}  {}  {}  {}  attempts={}  {}\n",
            d.id,
            when,
            d.kind,
            d.origin,
            d.identity,
            d.attempts,
            crate::safe_text::plain(&d.last_error.unwrap_or_default())
        ));
    }
    Ok(out)
}

/// The parked outbox messages as a table, for `shepherd outbox parked`. Bodies are shown on one
/// line, made safe for a terminal.
pub async fn parked_messages(store: &Store, limit: i64) -> anyhow::Result<String> {
    let parked = Outbox::new(store.clone()).parked(limit).await?;
    let mut out = format!("{} parked message(s)\n", parked.len());
    let when = |ms: i64| {
        chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
            .unwrap_or_default()
    };
    for p in parked {
        let body = crate::safe_text::plain(&p.body).replace('\n', " / ");
        out.push_str(&format!(
            "{}  {}  {}  attempts={}  {}\n    {}\n",
            p.id,
            when(p.parked_at),
            p.origin,
            p.attempts,
            crate::safe_text::plain(&p.reason),
            body
        ));
    }
    Ok(out)
}

/// The Alertmanager API client, when `alerts.alertmanager_url` is set; it retries like the
/// GitLab client (the `[gitlab]` timeout and retry settings).
fn alertmanager_client(config: &Config) -> anyhow::Result<Option<Alertmanager>> {
    let Some(url) = config
        .alerts
        .as_ref()
        .and_then(|a| a.alertmanager_url.clone())
    else {
        return Ok(None);
    };
    Ok(Some(Alertmanager::new(AlertmanagerSettings {
        url,
        timeout: config.gitlab.timeout(),
        max_retries: config.gitlab.max_retries,
        retry_base: config.gitlab.retry_base(),
        retry_max: config.gitlab.retry_max(),
    })?))
}

/// The deploy service, when `[deploy]` is configured.
fn deployer(
    config: &Config,
    gitlab: &GitLab,
    retrigger: &Retrigger,
    store: &Store,
    metrics: &Arc<Metrics>,
) -> anyhow::Result<Option<Deployer>> {
    let Some(d) = &config.deploy else {
        return Ok(None);
    };
    let registry = ImageRegistry::new(
        RegistrySettings {
            base_url: d.registry.clone(),
            username: d.registry_username.clone(),
            password: d.registry_password().map(|p| p.expose().to_string()),
            timeout: d.registry_timeout(),
            max_retries: d.registry_max_retries,
            retry_base: d.registry_retry_base(),
            retry_max: d.registry_retry_max(),
        },
        metrics.clone(),
    )
    .context("deploy.registry")?;
    Ok(Some(Deployer::new(
        registry,
        gitlab.clone(),
        retrigger.clone(),
        store.clone(),
        d.clone(),
        metrics.clone(),
    )))
}

/// The `[alerts]` routes and wording; a matcher Alertmanager would not accept is an error
/// naming its key.
fn alert_relay(
    a: &AlertsConfig,
    metrics: Arc<Metrics>,
    frontends: FrontEnds,
) -> anyhow::Result<AlertRelay> {
    let mut routes = Vec::new();
    for (i, r) in a.routes.iter().enumerate() {
        let mut matchers = Vec::new();
        for (j, m) in r.matchers.iter().enumerate() {
            matchers.push(
                Matcher::parse(m).with_context(|| format!("alerts.routes[{i}].matchers[{j}]"))?,
            );
        }
        routes.push(Route {
            matchers,
            targets: r.targets.iter().filter_map(|t| Origin::parse(t)).collect(),
            continue_matching: r.continue_matching,
        });
    }
    let formatter = AlertFormatter::new(&AlertWording {
        firing_template: a.firing_template.clone(),
        resolved_template: a.resolved_template.clone(),
        per_group: a.lines == AlertLines::Group,
        group_template: a.group_template.clone(),
        storm_threshold: a.storm_threshold,
        storm_shown: a.storm_shown,
    })?;
    Ok(AlertRelay {
        router: Router {
            routes,
            default_targets: a
                .default_targets
                .iter()
                .filter_map(|t| Origin::parse(t))
                .collect(),
        },
        formatter,
        frontends,
        dedup_window_ms: i64::try_from(a.dedup_window_minutes.saturating_mul(60_000))
            .unwrap_or(i64::MAX),
        metrics,
    })
}

/// The `[canary]` section as core's settings (validated by the config crate).
fn canary_settings(config: &Config) -> CanarySettings {
    CanarySettings {
        projects: config
            .canary
            .projects
            .iter()
            .map(|p| CanaryProject {
                project: p.project.clone(),
                variables: p
                    .variables
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                references: p
                    .references
                    .iter()
                    .map(|r| Reference {
                        tree: r.tree.clone(),
                        project: r.project.clone(),
                        source: match (&r.pipeline, &r.branch) {
                            (Some(id), _) => ReferenceSource::Pipeline(*id),
                            (None, Some(branch)) => {
                                ReferenceSource::LatestSuccessful(branch.clone())
                            }
                            (None, None) => ReferenceSource::Pipeline(0),
                        },
                    })
                    .collect(),
            })
            .collect(),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .filter(|h| !h.is_empty() && !h.contains('/'))
        .unwrap_or_else(|| "shepherd".to_string())
}

/// Who holds a lease: `host/pid/instance/worker`. The instance (random per process) tells this
/// process from an earlier one with the same pid (in a container shepherd is always pid 1).
struct Holder {
    host: String,
    pid: u32,
    instance: String,
    comm: Option<String>,
}

impl Holder {
    fn me() -> Self {
        Self {
            host: hostname(),
            pid: std::process::id(),
            instance: uuid::Uuid::now_v7().simple().to_string()[24..].to_string(),
            comm: comm_of("self"),
        }
    }

    fn owner(&self, worker: &str) -> String {
        format!("{}/{}/{}/{worker}", self.host, self.pid, self.instance)
    }

    /// Whether `owner` was a process on this host that is gone: its pid is not running, or runs
    /// another program, or is this process under an earlier instance. Holders elsewhere (or
    /// named the old way) are never judged: their leases run out as before.
    fn outlived(&self, owner: &str) -> bool {
        let mut parts = owner.splitn(4, '/');
        let (Some(host), Some(pid), Some(instance), Some(_)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            return false;
        };
        if host != self.host {
            return false;
        }
        if pid == self.pid {
            return instance != self.instance;
        }
        match comm_of(&pid.to_string()) {
            None => true,
            Some(comm) => self.comm.as_ref().is_some_and(|mine| *mine != comm),
        }
    }
}

/// The program name of a process (`/proc/<pid>/comm`), `None` when it does not exist.
fn comm_of(pid: &str) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|c| c.trim().to_string())
}

#[cfg(test)]
mod holder_tests {
    use super::*;

    #[test]
    fn only_holders_on_this_host_that_are_gone_are_outlived() {
        let me = Holder::me();
        assert!(!me.outlived(&me.owner("w0")), "this process is alive");
        let earlier = format!("{}/{}/00000000/w0", me.host, me.pid);
        assert!(
            me.outlived(&earlier),
            "an earlier instance under this pid is gone"
        );
        let elsewhere = format!("{}-other/{}/00000000/w0", me.host, me.pid);
        assert!(
            !me.outlived(&elsewhere),
            "another host's holders are not judged"
        );
        assert!(
            !me.outlived("shepherd-12-w0"),
            "the old owner format is not judged"
        );

        let mut child = std::process::Command::new("true").spawn().expect("spawn");
        let dead = child.id();
        child.wait().expect("wait");
        assert!(
            me.outlived(&format!("{}/{dead}/abcdef01/w0", me.host)),
            "a pid that no longer runs is gone"
        );
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn");
        let running = other.id();
        assert!(
            me.outlived(&format!("{}/{running}/abcdef01/w0", me.host)),
            "a pid that runs another program is gone"
        );
        let _ = other.kill();
        let _ = other.wait();
    }
}
