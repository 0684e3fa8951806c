//! The pipeline watcher: follows pipelines shepherd started until they finish, then reports.
//!
//! Watches live in the store, so a restart resumes them. Each watch is polled on its own
//! schedule — the configured interval, stretched while a pipeline stays unchanged, never
//! beyond the maximum — and every poll goes through the GitLab client's API budget. When a
//! pipeline finishes, the watcher fetches its failed jobs and hands everything to a
//! `Reporter` (the plugins own the wording: core never formats chat text), then writes the
//! report to the outbox and closes the watch in one transaction. The report's dedup key
//! makes it appear once even if two processes race.

use std::sync::Arc;
use std::time::Duration;

use sqlx::{AnyConnection, Row};
use tokio::sync::{Notify, watch};

use crate::canary::{self, Observation, Publish, RunView};
use crate::frontend::FrontEnds;
use crate::gitlab::{GitLab, GitLabError, Job, Pipeline};
use crate::metrics::Metrics;
use crate::origin::Origin;
use crate::outbox::{self, Outbox};
use crate::store::{Store, StoreError, new_id, now_ms};

#[derive(Debug, Clone)]
pub struct WatcherSettings {
    pub poll_interval: Duration,
    pub max_poll_interval: Duration,
    /// What the rooms' front ends can do (a canary's progress is published where it is edited in place).
    pub frontends: FrontEnds,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewWatch {
    pub request_id: String,
    pub project: String,
    pub pipeline_id: u64,
    pub web_url: String,
    pub origin: Origin,
    /// Set when the pipeline belongs to a canary run: its changes update the run's summary
    /// instead of being reported one by one.
    pub canary_run: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watch {
    pub id: String,
    pub request_id: String,
    pub project: String,
    pub pipeline_id: u64,
    pub web_url: String,
    pub origin: Origin,
    pub polls: u32,
    pub last_status: Option<String>,
    pub canary_run: Option<String>,
    /// A Pipeline Hook reported on this pipeline before.
    pub hook_seen: bool,
}

/// How a watch ended.
#[derive(Debug, Clone)]
pub enum WatchEnd {
    Finished {
        pipeline: Pipeline,
        failed_jobs: Vec<Job>,
    },
    /// GitLab no longer knows the pipeline (deleted), or refuses to show it.
    Lost { reason: String },
}

/// Turns the end of a watch, or a canary run's state, into the message its origin receives.
pub trait Reporter: Send + Sync {
    fn report(&self, watch: &Watch, end: &WatchEnd) -> String;
    /// The summary of a canary run (a table where it can be edited in place, lines elsewhere).
    fn canary_summary(&self, run: &RunView) -> String;
}

/// A pipeline's state, as a poll or a Pipeline Hook saw it.
#[derive(Debug, Clone)]
pub struct Observed {
    pub pipeline: Pipeline,
    /// Failed jobs, once the pipeline finished.
    pub failed_jobs: Vec<Job>,
}

/// Adds a watch inside the caller's transaction (a no-op if the same one exists).
pub async fn add_in(
    conn: &mut AnyConnection,
    w: &NewWatch,
    first_poll_at: i64,
) -> Result<(), StoreError> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO watches (id, request_id, project, pipeline_id, web_url, frontend, room, addressee, \
         state, polls, next_poll_at, created_at, canary_run) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'watching', 0, $9, $10, $11) \
         ON CONFLICT (request_id, project, pipeline_id) DO NOTHING",
    )
    .bind(new_id())
    .bind(&w.request_id)
    .bind(&w.project)
    .bind(i64::try_from(w.pipeline_id).unwrap_or(i64::MAX))
    .bind(&w.web_url)
    .bind(&w.origin.frontend)
    .bind(&w.origin.room)
    .bind(w.origin.addressee.as_deref())
    .bind(first_poll_at)
    .bind(now)
    .bind(w.canary_run.as_deref())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Records a pipeline shepherd started (status and cancel apply to these).
pub async fn record_pipeline_in(
    conn: &mut AnyConnection,
    project: &str,
    pipeline_id: u64,
    request_id: &str,
    identity: &str,
    web_url: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO pipelines (project, pipeline_id, request_id, identity, web_url, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (project, pipeline_id) DO NOTHING",
    )
    .bind(project)
    .bind(i64::try_from(pipeline_id).unwrap_or(i64::MAX))
    .bind(request_id)
    .bind(identity)
    .bind(web_url)
    .bind(now_ms())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Did shepherd start this pipeline? Returns who asked for it.
pub async fn started_by_shepherd(
    store: &Store,
    project: &str,
    pipeline_id: u64,
) -> Result<Option<String>, StoreError> {
    let row = sqlx::query("SELECT identity FROM pipelines WHERE project = $1 AND pipeline_id = $2")
        .bind(project)
        .bind(i64::try_from(pipeline_id).unwrap_or(i64::MAX))
        .fetch_optional(store.pool())
        .await?;
    Ok(match row {
        Some(r) => Some(r.try_get("identity")?),
        None => None,
    })
}

/// Watches still open for a front end.
pub async fn active_for(store: &Store, frontend: &str) -> Result<i64, StoreError> {
    let row =
        sqlx::query("SELECT COUNT(*) AS n FROM watches WHERE frontend = $1 AND state = 'watching'")
            .bind(frontend)
            .fetch_one(store.pool())
            .await?;
    Ok(row.try_get("n")?)
}

#[derive(Clone)]
pub struct Watcher {
    store: Store,
    gitlab: GitLab,
    outbox: Outbox,
    settings: WatcherSettings,
    reporter: Arc<dyn Reporter>,
    metrics: Arc<Metrics>,
    wake: Arc<Notify>,
}

impl Watcher {
    pub fn new(
        store: Store,
        gitlab: GitLab,
        outbox: Outbox,
        settings: WatcherSettings,
        reporter: Arc<dyn Reporter>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            store,
            gitlab,
            outbox,
            settings,
            reporter,
            metrics,
            wake: Arc::new(Notify::new()),
        }
    }

    /// Tells the loop a watch was added, so it recomputes when to poll next.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    pub fn settings(&self) -> &WatcherSettings {
        &self.settings
    }

    /// Polls due watches until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                return;
            }
            let pause = match self.poll_due().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::error!(error = %e, "watcher: store error; retrying");
                    self.settings.poll_interval
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => {}
            }
        }
    }

    /// The reporter that words reports and summaries.
    pub fn reporter(&self) -> &dyn Reporter {
        self.reporter.as_ref()
    }

    /// Polls every watch that is due; returns how long until the next one is.
    pub async fn poll_due(&self) -> Result<Duration, StoreError> {
        let now = now_ms();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {WATCH_COLUMNS} FROM watches WHERE state = 'watching' AND next_poll_at <= $1 \
             ORDER BY next_poll_at, id LIMIT 50"
        )))
        .bind(now)
        .fetch_all(self.store.pool())
        .await?;
        for row in &rows {
            let w = watch_from_row(row)?;
            self.poll_one(&w).await?;
        }
        let active = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(next_poll_at) AS next FROM watches WHERE state = 'watching'",
        )
        .fetch_one(self.store.pool())
        .await?;
        let n: i64 = active.try_get("n")?;
        self.metrics.watched_pipelines.set(n);
        let next: Option<i64> = active.try_get("next")?;
        Ok(match next {
            Some(t) => Duration::from_millis((t - now_ms()).clamp(10, 60_000) as u64),
            None => self.settings.max_poll_interval,
        })
    }

    async fn poll_one(&self, w: &Watch) -> Result<(), StoreError> {
        self.metrics
            .watch_updates
            .with_label_values(&["poll"])
            .inc();
        let observed = match self.gitlab.pipeline(&w.project, w.pipeline_id).await {
            Ok(p) if p.status.is_finished() => {
                match self
                    .gitlab
                    .pipeline_jobs(&w.project, w.pipeline_id, &["failed"])
                    .await
                {
                    Ok(failed_jobs) => Observed {
                        pipeline: p,
                        failed_jobs,
                    },
                    Err(e) if e.is_retryable() => {
                        tracing::warn!(watch = %w.id, error = %e, "watcher: jobs unavailable; will poll again");
                        self.reschedule(w, None).await?;
                        return Ok(());
                    }
                    Err(e) => {
                        tracing::warn!(watch = %w.id, error = %e, "watcher: cannot list failed jobs");
                        Observed {
                            pipeline: p,
                            failed_jobs: Vec::new(),
                        }
                    }
                }
            }
            Ok(p) => Observed {
                pipeline: p,
                failed_jobs: Vec::new(),
            },
            Err(e @ (GitLabError::NotFound { .. } | GitLabError::Forbidden { .. })) => {
                return self
                    .finish(
                        w,
                        &WatchEnd::Lost {
                            reason: e.user_message(),
                        },
                    )
                    .await;
            }
            Err(e) => {
                tracing::warn!(watch = %w.id, pipeline = w.pipeline_id, error = %e, "watcher: poll failed; will retry");
                self.reschedule(w, None).await?;
                return Ok(());
            }
        };
        self.apply(w, observed, false).await
    }

    /// A pipeline's state as a Pipeline Hook (or a Job Hook) reported it: every open watch of that
    /// pipeline is updated at once, without an API call. Polling stays as the fallback, at the
    /// longest interval, for events that never arrive. Returns how many watches it updated.
    pub async fn observe(&self, project: &str, observed: Observed) -> Result<usize, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {WATCH_COLUMNS} FROM watches WHERE pipeline_id = $1 AND state = 'watching'"
        )))
        .bind(i64::try_from(observed.pipeline.id).unwrap_or(i64::MAX))
        .fetch_all(self.store.pool())
        .await?;
        let mut n = 0;
        for row in &rows {
            let w = watch_from_row(row)?;
            // Pipeline ids are global in GitLab; the path check guards against a misconfigured
            // hook from another instance.
            if !w.project.eq_ignore_ascii_case(project) {
                continue;
            }
            self.metrics
                .watch_updates
                .with_label_values(&["hook"])
                .inc();
            self.apply(&w, observed.clone(), true).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Applies what was observed: a finished pipeline ends the watch (reported, or folded into
    /// its canary run), a new status of a canary pipeline updates the run's summary.
    async fn apply(
        &self,
        w: &Watch,
        observed: Observed,
        from_hook: bool,
    ) -> Result<(), StoreError> {
        let status = observed.pipeline.status.as_str().to_string();
        if observed.pipeline.status.is_finished() {
            return self
                .finish(
                    w,
                    &WatchEnd::Finished {
                        pipeline: observed.pipeline,
                        failed_jobs: observed.failed_jobs,
                    },
                )
                .await;
        }
        let changed = w.last_status.as_deref() != Some(status.as_str());
        if let (Some(run), true) = (&w.canary_run, changed) {
            let mut tx = self.store.begin().await?;
            let duration = observed.pipeline.duration.map(|d| d.max(0.0) as u64);
            let (updated, _) = canary::observe_in(
                &mut tx,
                run,
                &Observation {
                    pipeline_id: w.pipeline_id,
                    status: &status,
                    duration_secs: duration,
                    failed_jobs: &[],
                },
            )
            .await?;
            if updated {
                canary::publish_in(
                    &mut tx,
                    run,
                    self.reporter.as_ref(),
                    &self.settings.frontends,
                    Publish::WhereEditable,
                )
                .await?;
            }
            self.reschedule_in(&mut tx, w, Some(&status), from_hook)
                .await?;
            tx.commit().await?;
            self.outbox.wake();
            return Ok(());
        }
        let mut conn = self.store.pool().acquire().await?;
        self.reschedule_in(&mut conn, w, Some(&status), from_hook)
            .await
    }

    /// Ends a watch: its report (or its canary run's summary) and the closing, in one transaction.
    async fn finish(&self, w: &Watch, end: &WatchEnd) -> Result<(), StoreError> {
        let final_status = match end {
            WatchEnd::Finished { pipeline, .. } => pipeline.status.as_str().to_string(),
            WatchEnd::Lost { .. } => "lost".to_string(),
        };
        let mut tx = self.store.begin().await?;
        let closed = sqlx::query(
            "UPDATE watches SET state = 'done', last_status = $1, finished_at = $2, polls = polls + 1 \
             WHERE id = $3 AND state = 'watching'",
        )
        .bind(&final_status)
        .bind(now_ms())
        .bind(&w.id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if closed == 0 {
            // Another poll or hook closed it first; its report stands.
            tx.rollback().await?;
            return Ok(());
        }
        match &w.canary_run {
            Some(run) => {
                let (status, duration, failed): (&str, Option<u64>, &[Job]) = match end {
                    WatchEnd::Finished {
                        pipeline,
                        failed_jobs,
                    } => (
                        pipeline.status.as_str(),
                        pipeline.duration.map(|d| d.max(0.0) as u64),
                        failed_jobs,
                    ),
                    WatchEnd::Lost { .. } => ("canceled", None, &[]),
                };
                let (updated, finished_run) = canary::observe_in(
                    &mut tx,
                    run,
                    &Observation {
                        pipeline_id: w.pipeline_id,
                        status,
                        duration_secs: duration,
                        failed_jobs: failed,
                    },
                )
                .await?;
                if updated {
                    let when = if finished_run {
                        Publish::Always
                    } else {
                        Publish::WhereEditable
                    };
                    canary::publish_in(
                        &mut tx,
                        run,
                        self.reporter.as_ref(),
                        &self.settings.frontends,
                        when,
                    )
                    .await?;
                }
            }
            None => {
                let text = self.reporter.report(w, end);
                outbox::push_in(
                    &mut tx,
                    &w.origin,
                    &text,
                    Some(&format!("watch:{}:final", w.id)),
                    Some(&w.request_id),
                )
                .await?;
            }
        }
        tx.commit().await?;
        self.outbox.wake();
        tracing::info!(watch = %w.id, pipeline = w.pipeline_id, status = %final_status, "watcher: pipeline finished; reported");
        Ok(())
    }

    async fn reschedule(&self, w: &Watch, status: Option<&str>) -> Result<(), StoreError> {
        let mut conn = self.store.pool().acquire().await?;
        self.reschedule_in(&mut conn, w, status, false).await
    }

    /// Next poll: the base interval, stretched by 1.5x per unchanged poll, capped; after a hook
    /// event, the longest interval (events are flowing; the poll is only a safety net).
    async fn reschedule_in(
        &self,
        conn: &mut AnyConnection,
        w: &Watch,
        status: Option<&str>,
        from_hook: bool,
    ) -> Result<(), StoreError> {
        let unchanged = status.is_none() || status == w.last_status.as_deref();
        let base = self.settings.poll_interval.as_millis() as f64;
        let factor = if unchanged {
            1.5f64.powi(i32::try_from(w.polls.min(20)).unwrap_or(20))
        } else {
            1.0
        };
        let max = self.settings.max_poll_interval.as_millis() as f64;
        let delay = if from_hook || w.hook_seen {
            max as i64
        } else {
            (base * factor).min(max).max(1.0) as i64
        };
        let now = now_ms();
        sqlx::query(
            "UPDATE watches SET polls = polls + $1, next_poll_at = $2, last_status = COALESCE($3, last_status), \
             hook_at = COALESCE($4, hook_at) WHERE id = $5 AND state = 'watching'",
        )
        .bind(i64::from(!from_hook))
        .bind(now + delay)
        .bind(status)
        .bind(from_hook.then_some(now))
        .bind(&w.id)
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

const WATCH_COLUMNS: &str = "id, request_id, project, pipeline_id, web_url, frontend, room, addressee, \
     polls, last_status, canary_run, hook_at";

fn watch_from_row(row: &sqlx::any::AnyRow) -> Result<Watch, StoreError> {
    Ok(Watch {
        id: row.try_get("id")?,
        request_id: row.try_get("request_id")?,
        project: row.try_get("project")?,
        pipeline_id: u64::try_from(row.try_get::<i64, _>("pipeline_id")?).unwrap_or(0),
        web_url: row.try_get("web_url")?,
        origin: Origin::from_columns(
            row.try_get("frontend")?,
            row.try_get("room")?,
            row.try_get("addressee")?,
        ),
        polls: u32::try_from(row.try_get::<i64, _>("polls")?).unwrap_or(u32::MAX),
        last_status: row.try_get("last_status")?,
        canary_run: row.try_get("canary_run")?,
        hook_seen: row.try_get::<Option<i64>, _>("hook_at")?.is_some(),
    })
}
