//! Canary pipelines: prove a merge request's CI code on the reference pipelines before merging.
//!
//! Each configured project names its reference pipelines, one per tree: a listed pipeline id or
//! the latest successful pipeline of a branch. A canary run re-runs every reference with its own
//! variables, then the project's `variables` templates rendered for the merge request (MiniJinja:
//! `{{ mr.ref }}`, `{{ mr.clone_url }}`, ...), then the user's `k=v`, then the retrigger markers and
//! `SHEPHERD_REQUEST_ID` — each through [`Retrigger`], so every pipeline is created exactly once
//! even across crashes and ambiguous answers (its request id is `<run id>.<tree>`).
//!
//! The run and its pipelines are stored; watches with `canary_run` set feed status changes back
//! here ([`observe_in`]) instead of reporting one by one, and [`publish_in`] writes the summary to
//! the outbox under one slot (`canary:<run id>`), so a front end that can edit (a GitLab note)
//! keeps one message up to date while a chat room gets the first and the final table. Core keeps
//! the state; the wording is the plugins' ([`crate::watcher::Reporter::canary_summary`]).

use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;
use sqlx::{AnyConnection, Row};

use crate::effects;
use crate::frontend::FrontEnds;
use crate::gitlab::{GitLab, GitLabError, Job, Pipeline, PipelineQuery, PipelineStatus, Variable};
use crate::origin::Origin;
use crate::outbox;
use crate::retrigger::{Retrigger, RetriggerError, RetriggerOutcome, RetriggerRequest};
use crate::store::{Store, StoreError, now_ms};
use crate::watcher::Reporter;

/// References resolved and created at the same time (each is a few API calls).
const PARALLEL_REFERENCES: usize = 4;
const EFFECT_REFERENCE: &str = "canary:reference";

/// Where a reference pipeline comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReferenceSource {
    Pipeline(u64),
    /// The latest successful pipeline of this branch.
    LatestSuccessful(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub tree: String,
    pub project: String,
    pub source: ReferenceSource,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanaryProject {
    /// The project whose merge requests are tested.
    pub project: String,
    /// Variable name -> MiniJinja template.
    pub variables: Vec<(String, String)>,
    pub references: Vec<Reference>,
}

#[derive(Debug, Clone, Default)]
pub struct CanarySettings {
    pub projects: Vec<CanaryProject>,
}

impl CanarySettings {
    pub fn project(&self, project: &str) -> Option<&CanaryProject> {
        self.projects
            .iter()
            .find(|p| p.project.eq_ignore_ascii_case(project))
    }
}

/// What the variable templates see as `mr`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MrContext {
    pub iid: u64,
    pub url: String,
    /// The source project's path (a fork's, for an MR from a fork).
    pub project: String,
    pub project_url: String,
    pub clone_url: String,
    pub branch: String,
    pub sha: String,
    /// `refs/merge-requests/<iid>/head`: the MR's head, fetchable from the target project.
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub target_project: String,
    pub target_branch: String,
}

#[derive(Debug, Clone)]
pub struct CanaryRequest {
    /// The request id of the command; the run's id.
    pub request_id: String,
    pub requested_at: i64,
    /// The merge request's project and iid.
    pub project: String,
    pub iid: u64,
    pub overrides: Vec<(String, String)>,
    pub production: bool,
}

/// One reference of a run as it was started (or could not be).
#[derive(Debug, Clone, PartialEq)]
pub struct StartedRow {
    pub idx: usize,
    pub tree: String,
    pub ref_project: String,
    pub reference: Option<Pipeline>,
    pub pipeline: Option<Pipeline>,
    /// Why it could not be started (a reference that does not exist, a refused create).
    pub error: Option<String>,
}

/// A run to be recorded by the worker, in the transaction that completes the request.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRun {
    pub id: String,
    pub project: String,
    pub mr: MrContext,
    pub overrides: Vec<(String, String)>,
    pub rows: Vec<StartedRow>,
}

/// A non-production run: what would be created.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedRow {
    pub tree: String,
    pub ref_project: String,
    pub reference: Option<Pipeline>,
    pub variables: Vec<Variable>,
    pub error: Option<String>,
}

// Returned once per request; boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryOutcome {
    Started(NewRun),
    Would {
        mr: MrContext,
        rows: Vec<PlannedRow>,
    },
}

/// A retest to be recorded: rows of `run_id` that get new pipelines.
#[derive(Debug, Clone, PartialEq)]
pub struct Retest {
    pub run_id: String,
    pub rows: Vec<StartedRow>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum RetestOutcome {
    Started(Retest),
    /// Non-production: the trees that would be re-run.
    Would {
        run_id: String,
        trees: Vec<String>,
    },
    /// Nothing failed in the latest run.
    NothingFailed {
        run: Box<RunView>,
    },
}

/// A change a plugin hands to the worker to commit.
// Returned once per request; boxing would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryChange {
    New(NewRun),
    Retest(Retest),
}

/// A stored run, as the summary shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunView {
    pub id: String,
    pub project: String,
    pub mr_iid: u64,
    pub mr_url: String,
    pub head_sha: String,
    pub outdated_by: Option<String>,
    pub origin: Origin,
    pub identity: String,
    pub finished: bool,
    pub rows: Vec<RowView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RowView {
    pub idx: u32,
    pub tree: String,
    pub ref_project: String,
    pub ref_pipeline_id: Option<u64>,
    pub ref_web_url: Option<String>,
    pub pipeline_id: Option<u64>,
    pub web_url: Option<String>,
    /// GitLab's status, or `error` when the pipeline could not be started.
    pub status: String,
    pub duration_secs: Option<u64>,
    /// (name, web URL) of failed jobs, once finished.
    pub failed_jobs: Vec<(String, String)>,
    pub attempt: u32,
    pub error: Option<String>,
}

impl RowView {
    pub fn is_finished(&self) -> bool {
        is_finished_status(&self.status)
    }
    /// Failed for the verdict: failed, canceled, skipped or never started.
    pub fn is_failure(&self) -> bool {
        self.is_finished() && self.status != "success"
    }
}

impl RunView {
    pub fn all_finished(&self) -> bool {
        self.rows.iter().all(RowView::is_finished)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CanaryError {
    #[error("{project} has no canary configuration (no [[canary.projects]] entry for it)")]
    NotConfigured { project: String },
    #[error("merge request {project}!{iid} is {state}; only open merge requests are tested")]
    NotOpen {
        project: String,
        iid: u64,
        state: String,
    },
    #[error("{project}!{iid} has no canary run to {what}; ask for `test` first")]
    NoRun {
        project: String,
        iid: u64,
        what: &'static str,
    },
    #[error(
        "{project}!{iid} has new commits ({head}) since its last canary run tested {tested}; ask for `test` to test them all"
    )]
    Outdated {
        project: String,
        iid: u64,
        head: String,
        tested: String,
    },
    #[error("the variable template {name} cannot be rendered: {detail}")]
    Template { name: String, detail: String },
    #[error(transparent)]
    GitLab(#[from] GitLabError),
    #[error(transparent)]
    Retrigger(RetriggerError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl CanaryError {
    /// Worth another attempt later (the queue redelivers; created pipelines are recovered)?
    pub fn is_retryable(&self) -> bool {
        match self {
            CanaryError::GitLab(e) => e.is_retryable(),
            CanaryError::Retrigger(e) => e.is_retryable(),
            CanaryError::Store(_) => true,
            _ => false,
        }
    }
}

impl From<RetriggerError> for CanaryError {
    fn from(e: RetriggerError) -> Self {
        match e {
            RetriggerError::GitLab(g) => CanaryError::GitLab(g),
            RetriggerError::Store(s) => CanaryError::Store(s),
            other => CanaryError::Retrigger(other),
        }
    }
}

#[derive(Clone)]
pub struct Canary {
    gitlab: GitLab,
    store: Store,
    retrigger: Retrigger,
    settings: Arc<CanarySettings>,
}

impl Canary {
    /// Checks every template once, so a typo is a start-up error rather than a refused test.
    pub fn new(
        gitlab: GitLab,
        store: Store,
        retrigger: Retrigger,
        settings: CanarySettings,
    ) -> Result<Self, CanaryError> {
        let env = minijinja::Environment::new();
        for p in &settings.projects {
            for (name, template) in &p.variables {
                env.template_from_str(template)
                    .map_err(|e| CanaryError::Template {
                        name: format!("{} of {}", name, p.project),
                        detail: e.to_string(),
                    })?;
            }
        }
        Ok(Self {
            gitlab,
            store,
            retrigger,
            settings: Arc::new(settings),
        })
    }

    pub fn settings(&self) -> &CanarySettings {
        &self.settings
    }

    /// The merge request as the templates see it.
    pub async fn mr_context(&self, project: &str, iid: u64) -> Result<MrContext, CanaryError> {
        let mr = self.gitlab.merge_request(project, iid).await?;
        if mr.state != "opened" {
            return Err(CanaryError::NotOpen {
                project: project.to_string(),
                iid,
                state: mr.state,
            });
        }
        let source = self
            .gitlab
            .project(&mr.source_project_id.to_string())
            .await?;
        let target = if mr.target_project_id == mr.source_project_id {
            source.path_with_namespace.clone()
        } else {
            project.to_string()
        };
        Ok(MrContext {
            iid: mr.iid,
            url: mr.web_url,
            project: source.path_with_namespace,
            project_url: source.web_url,
            clone_url: source.http_url_to_repo,
            branch: mr.source_branch,
            sha: mr.sha,
            git_ref: format!("refs/merge-requests/{}/head", mr.iid),
            target_project: target,
            target_branch: mr.target_branch,
        })
    }

    /// Starts (or, after a crash, recovers) a canary run of every reference of the MR's project.
    pub async fn start(&self, req: &CanaryRequest) -> Result<CanaryOutcome, CanaryError> {
        let config = self
            .settings
            .project(&req.project)
            .ok_or_else(|| CanaryError::NotConfigured {
                project: req.project.clone(),
            })?
            .clone();
        let mr = self.mr_context(&req.project, req.iid).await?;
        let mut overrides = render_variables(&config, &mr)?;
        overrides.extend(req.overrides.iter().cloned());

        let indexed: Vec<(usize, Reference)> =
            config.references.iter().cloned().enumerate().collect();
        let results: Vec<Result<StartOrPlan, CanaryError>> = futures::stream::iter(indexed)
            .map(|(idx, reference)| {
                let overrides = overrides.clone();
                async move {
                    self.start_one(
                        &req.request_id,
                        req.requested_at,
                        idx,
                        &reference,
                        &overrides,
                        req.production,
                    )
                    .await
                }
            })
            .buffered(PARALLEL_REFERENCES)
            .collect()
            .await;
        let mut started = Vec::new();
        let mut planned = Vec::new();
        for r in results {
            match r? {
                StartOrPlan::Started(row) => started.push(row),
                StartOrPlan::Planned(row) => planned.push(row),
            }
        }
        if !req.production {
            return Ok(CanaryOutcome::Would { mr, rows: planned });
        }
        Ok(CanaryOutcome::Started(NewRun {
            id: req.request_id.clone(),
            project: req.project.clone(),
            mr,
            overrides: req.overrides.clone(),
            rows: started,
        }))
    }

    /// One reference: resolve it (remembered, so a redelivery re-runs the same pipeline) and
    /// re-run it. Errors that retrying cannot fix become the row's error; others end the attempt.
    async fn start_one(
        &self,
        run_id: &str,
        requested_at: i64,
        idx: usize,
        reference: &Reference,
        overrides: &[(String, String)],
        production: bool,
    ) -> Result<StartOrPlan, CanaryError> {
        let sub_id = format!("{run_id}.{}", reference.tree);
        let fail = |error: String, reference_pipeline: Option<Pipeline>| {
            if production {
                StartOrPlan::Started(StartedRow {
                    idx,
                    tree: reference.tree.clone(),
                    ref_project: reference.project.clone(),
                    reference: reference_pipeline,
                    pipeline: None,
                    error: Some(error),
                })
            } else {
                StartOrPlan::Planned(PlannedRow {
                    tree: reference.tree.clone(),
                    ref_project: reference.project.clone(),
                    reference: reference_pipeline,
                    variables: Vec::new(),
                    error: Some(error),
                })
            }
        };
        let ref_id = match self.resolve(&sub_id, reference).await {
            Ok(Some(id)) => id,
            Ok(None) => {
                let ReferenceSource::LatestSuccessful(branch) = &reference.source else {
                    return Ok(fail("no reference pipeline".to_string(), None));
                };
                return Ok(fail(
                    format!(
                        "no successful pipeline on branch {branch} of {}",
                        reference.project
                    ),
                    None,
                ));
            }
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => return Ok(fail(error_text(&e), None)),
        };
        let request = RetriggerRequest {
            request_id: sub_id,
            requested_at,
            project: reference.project.clone(),
            pipeline_id: ref_id,
            overrides: overrides.to_vec(),
            production,
        };
        match self.retrigger.run(&request).await {
            Ok(RetriggerOutcome::Created { old, new, .. }) => {
                Ok(StartOrPlan::Started(StartedRow {
                    idx,
                    tree: reference.tree.clone(),
                    ref_project: reference.project.clone(),
                    reference: Some(old),
                    pipeline: Some(new),
                    error: None,
                }))
            }
            Ok(RetriggerOutcome::WouldCreate { old, variables }) => {
                Ok(StartOrPlan::Planned(PlannedRow {
                    tree: reference.tree.clone(),
                    ref_project: reference.project.clone(),
                    reference: Some(old),
                    variables,
                    error: None,
                }))
            }
            Err(e) => {
                let e = CanaryError::from(e);
                if e.is_retryable() {
                    Err(e)
                } else {
                    Ok(fail(error_text(&e), None))
                }
            }
        }
    }

    /// The reference pipeline id, resolved once per sub-request.
    async fn resolve(
        &self,
        sub_id: &str,
        reference: &Reference,
    ) -> Result<Option<u64>, CanaryError> {
        match &reference.source {
            ReferenceSource::Pipeline(id) => Ok(Some(*id)),
            ReferenceSource::LatestSuccessful(branch) => {
                if let Some(v) = effects::get(&self.store, sub_id, EFFECT_REFERENCE).await?
                    && let Ok(id) = v.parse::<u64>()
                {
                    return Ok(Some(id));
                }
                let query = PipelineQuery {
                    git_ref: Some(branch.clone()),
                    status: Some(PipelineStatus::Success),
                    per_page: Some(1),
                    ..PipelineQuery::default()
                };
                let found = self.gitlab.pipelines(&reference.project, &query).await?;
                let Some(latest) = found.first() else {
                    return Ok(None);
                };
                effects::put(
                    &self.store,
                    sub_id,
                    EFFECT_REFERENCE,
                    &latest.id.to_string(),
                )
                .await?;
                // The first record wins: read back what a racing attempt may have chosen.
                let chosen = effects::get(&self.store, sub_id, EFFECT_REFERENCE)
                    .await?
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(latest.id);
                Ok(Some(chosen))
            }
        }
    }

    /// Re-runs the failed pipelines of the MR's latest run (Prow's `/retest`).
    pub async fn retest(&self, req: &CanaryRequest) -> Result<RetestOutcome, CanaryError> {
        let run = latest_run(&self.store, &req.project, req.iid)
            .await?
            .ok_or_else(|| CanaryError::NoRun {
                project: req.project.clone(),
                iid: req.iid,
                what: "retest",
            })?;
        let failed: Vec<&RowView> = run.rows.iter().filter(|r| r.is_failure()).collect();
        if failed.is_empty() {
            return Ok(RetestOutcome::NothingFailed { run: Box::new(run) });
        }
        let config = self
            .settings
            .project(&run.project)
            .ok_or_else(|| CanaryError::NotConfigured {
                project: run.project.clone(),
            })?
            .clone();
        let mr = self.mr_context(&req.project, req.iid).await?;
        if mr.sha != run.head_sha {
            return Err(CanaryError::Outdated {
                project: req.project.clone(),
                iid: req.iid,
                head: short_sha(&mr.sha).to_string(),
                tested: short_sha(&run.head_sha).to_string(),
            });
        }
        if !req.production {
            return Ok(RetestOutcome::Would {
                run_id: run.id.clone(),
                trees: failed.iter().map(|r| r.tree.clone()).collect(),
            });
        }
        let mut overrides = render_variables(&config, &mr)?;
        overrides.extend(stored_overrides(&self.store, &run.id).await?);
        let mut rows = Vec::new();
        for row in failed {
            let reference = config
                .references
                .iter()
                .find(|r| r.tree == row.tree)
                .cloned()
                .unwrap_or_else(|| Reference {
                    tree: row.tree.clone(),
                    project: row.ref_project.clone(),
                    source: ReferenceSource::Pipeline(row.ref_pipeline_id.unwrap_or(0)),
                });
            // Re-run the same reference the run used, when it had one.
            let reference = match row.ref_pipeline_id {
                Some(id) => Reference {
                    source: ReferenceSource::Pipeline(id),
                    ..reference
                },
                None => reference,
            };
            match self
                .start_one(
                    &req.request_id,
                    req.requested_at,
                    row.idx as usize,
                    &reference,
                    &overrides,
                    true,
                )
                .await?
            {
                StartOrPlan::Started(r) => rows.push(r),
                StartOrPlan::Planned(_) => {}
            }
        }
        Ok(RetestOutcome::Started(Retest {
            run_id: run.id,
            rows,
        }))
    }
}

enum StartOrPlan {
    Started(StartedRow),
    Planned(PlannedRow),
}

fn error_text(e: &CanaryError) -> String {
    match e {
        CanaryError::GitLab(g) => g.user_message(),
        other => other.to_string(),
    }
}

/// A stored row status that will not change any more: GitLab's finished statuses, or `error`
/// (never started).
pub fn is_finished_status(status: &str) -> bool {
    matches!(
        status,
        "success" | "failed" | "canceled" | "skipped" | "error"
    )
}

pub fn short_sha(sha: &str) -> &str {
    sha.get(..8).unwrap_or(sha)
}

/// The project's variable templates rendered for `mr`, in name order.
pub fn render_variables(
    config: &CanaryProject,
    mr: &MrContext,
) -> Result<Vec<(String, String)>, CanaryError> {
    let env = minijinja::Environment::new();
    let ctx = minijinja::context! { mr => minijinja::value::Serde(mr) };
    config
        .variables
        .iter()
        .map(|(name, template)| {
            let rendered = env
                .render_str(template, &ctx)
                .map_err(|e| CanaryError::Template {
                    name: name.clone(),
                    detail: e.to_string(),
                })?;
            Ok((name.clone(), rendered))
        })
        .collect()
}

async fn stored_overrides(
    store: &Store,
    run_id: &str,
) -> Result<Vec<(String, String)>, StoreError> {
    let row = sqlx::query("SELECT overrides FROM canary_runs WHERE id = $1")
        .bind(run_id)
        .fetch_optional(store.pool())
        .await?;
    let Some(row) = row else {
        return Ok(Vec::new());
    };
    let text: String = row.try_get("overrides")?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt {
        what: "canary overrides",
        detail: e.to_string(),
    })
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// Records a new run or a retest inside the worker's transaction; returns the run id. A
/// redelivered change is a no-op (the run and its rows are keyed by request id).
pub async fn apply_in(
    conn: &mut AnyConnection,
    change: &CanaryChange,
    origin: &Origin,
    identity: &str,
) -> Result<String, StoreError> {
    let now = now_ms();
    match change {
        CanaryChange::New(run) => {
            let overrides =
                serde_json::to_string(&run.overrides).map_err(|e| StoreError::Corrupt {
                    what: "canary overrides",
                    detail: e.to_string(),
                })?;
            let inserted = sqlx::query(
                "INSERT INTO canary_runs (id, project, mr_iid, mr_url, head_sha, overrides, frontend, room, \
                 addressee, identity, state, revision, created_at, updated_at, finished_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'running', 0, $11, $11, NULL) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&run.id)
            .bind(&run.project)
            .bind(to_i64(run.mr.iid))
            .bind(&run.mr.url)
            .bind(&run.mr.sha)
            .bind(&overrides)
            .bind(&origin.frontend)
            .bind(&origin.room)
            .bind(origin.addressee.as_deref())
            .bind(identity)
            .bind(now)
            .execute(&mut *conn)
            .await?;
            if inserted.rows_affected() == 1 {
                for row in &run.rows {
                    insert_row(conn, &run.id, row, now).await?;
                }
                // Pipelines found again after a crash may have finished already.
                settle_in(conn, &run.id).await?;
            }
            Ok(run.id.clone())
        }
        CanaryChange::Retest(retest) => {
            lock_run(conn, &retest.run_id, now).await?;
            for row in &retest.rows {
                let (pipeline_id, web_url, status) = row_columns(row);
                // Only rows that still hold a finished pipeline are replaced, so a redelivered
                // retest does not bump the attempt twice.
                sqlx::query(
                    "UPDATE canary_pipelines SET pipeline_id = $1, web_url = $2, status = $3, error = $4, \
                     duration_secs = NULL, failed_jobs = NULL, attempt = attempt + 1, updated_at = $5 \
                     WHERE run_id = $6 AND idx = $7 AND (pipeline_id IS NULL OR pipeline_id <> $8)",
                )
                .bind(pipeline_id)
                .bind(web_url)
                .bind(status)
                .bind(row.error.as_deref())
                .bind(now)
                .bind(&retest.run_id)
                .bind(to_i64(row.idx as u64))
                .bind(pipeline_id.unwrap_or(-1))
                .execute(&mut *conn)
                .await?;
            }
            sqlx::query(
                "UPDATE canary_runs SET state = 'running', finished_at = NULL, updated_at = $1 WHERE id = $2",
            )
            .bind(now)
            .bind(&retest.run_id)
            .execute(&mut *conn)
            .await?;
            settle_in(conn, &retest.run_id).await?;
            Ok(retest.run_id.clone())
        }
    }
}

/// A row's pipeline columns: id, link and status, or no pipeline and `error`.
fn row_columns(row: &StartedRow) -> (Option<i64>, Option<String>, String) {
    match &row.pipeline {
        Some(p) => (
            Some(to_i64(p.id)),
            Some(p.web_url.clone()),
            p.status.as_str().to_string(),
        ),
        None => (None, None, "error".to_string()),
    }
}

async fn insert_row(
    conn: &mut AnyConnection,
    run_id: &str,
    row: &StartedRow,
    now: i64,
) -> Result<(), StoreError> {
    let (pipeline_id, web_url, status) = row_columns(row);
    sqlx::query(
        "INSERT INTO canary_pipelines (run_id, idx, tree, ref_project, ref_pipeline_id, ref_web_url, \
         pipeline_id, web_url, status, error, attempt, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11) ON CONFLICT (run_id, idx) DO NOTHING",
    )
    .bind(run_id)
    .bind(to_i64(row.idx as u64))
    .bind(&row.tree)
    .bind(&row.ref_project)
    .bind(row.reference.as_ref().map(|p| to_i64(p.id)))
    .bind(row.reference.as_ref().map(|p| p.web_url.clone()))
    .bind(pipeline_id)
    .bind(web_url)
    .bind(status)
    .bind(row.error.as_deref())
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// What a watch learned about one of a run's pipelines.
pub struct Observation<'a> {
    pub pipeline_id: u64,
    pub status: &'a str,
    pub duration_secs: Option<u64>,
    pub failed_jobs: &'a [Job],
}

/// Applies a pipeline's new status to its run. Returns whether anything changed and whether
/// this change finished the run (true exactly once per finish). A finished status is final:
/// events processed out of order (a late `running` after `success`) never undo it.
pub async fn observe_in(
    conn: &mut AnyConnection,
    run_id: &str,
    obs: &Observation<'_>,
) -> Result<(bool, bool), StoreError> {
    let now = now_ms();
    lock_run(conn, run_id, now).await?;
    let failed = if obs.failed_jobs.is_empty() {
        None
    } else {
        let list: Vec<(String, String)> = obs
            .failed_jobs
            .iter()
            .map(|j| (j.name.clone(), j.web_url.clone()))
            .collect();
        serde_json::to_string(&list).ok()
    };
    let changed = sqlx::query(
        "UPDATE canary_pipelines SET status = $1, duration_secs = COALESCE($2, duration_secs), \
         failed_jobs = COALESCE($3, failed_jobs), updated_at = $4 \
         WHERE run_id = $5 AND pipeline_id = $6 AND ( \
           (status = $1 AND $2 IS NOT NULL AND duration_secs IS NULL) \
           OR (status <> $1 AND status NOT IN ('success', 'failed', 'canceled', 'skipped', 'error')))",
    )
    .bind(obs.status)
    .bind(obs.duration_secs.map(to_i64))
    .bind(failed)
    .bind(now)
    .bind(run_id)
    .bind(to_i64(obs.pipeline_id))
    .execute(&mut *conn)
    .await?
    .rows_affected()
        > 0;
    if !changed {
        return Ok((false, false));
    }
    let finished_now = settle_in(conn, run_id).await?;
    Ok((true, finished_now))
}

/// Serialises changes to one run: the first write takes the run's row lock, held until commit,
/// so two pipelines finishing at once cannot each miss the other's status (PostgreSQL's READ
/// COMMITTED gives every later statement a snapshot that includes what the previous holder
/// committed; SQLite serialises writers anyway).
async fn lock_run(conn: &mut AnyConnection, run_id: &str, now: i64) -> Result<(), StoreError> {
    sqlx::query("UPDATE canary_runs SET updated_at = $1 WHERE id = $2")
        .bind(now)
        .bind(run_id)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Marks the run done when every pipeline finished; true when this call did it.
async fn settle_in(conn: &mut AnyConnection, run_id: &str) -> Result<bool, StoreError> {
    let statuses: Vec<String> =
        sqlx::query_scalar("SELECT status FROM canary_pipelines WHERE run_id = $1")
            .bind(run_id)
            .fetch_all(&mut *conn)
            .await?;
    if !statuses.iter().all(|s| is_finished_status(s)) {
        return Ok(false);
    }
    let now = now_ms();
    let done = sqlx::query(
        "UPDATE canary_runs SET state = 'done', finished_at = $1, updated_at = $1 \
         WHERE id = $2 AND state = 'running'",
    )
    .bind(now)
    .bind(run_id)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(done == 1)
}

/// When [`publish_in`] writes to a room that cannot edit messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Everywhere (a new run, a retest, the final verdict).
    Always,
    /// Only where the summary is edited in place (progress).
    WhereEditable,
}

/// Writes the run's summary to its room under the slot `canary:<run id>`; returns whether a
/// message was written.
pub async fn publish_in(
    conn: &mut AnyConnection,
    run_id: &str,
    reporter: &dyn Reporter,
    frontends: &FrontEnds,
    when: Publish,
) -> Result<bool, StoreError> {
    // The revision bump locks the run first (see `lock_run`), then the view is read.
    let Some(revision): Option<i64> = sqlx::query_scalar(
        "UPDATE canary_runs SET revision = revision + 1 WHERE id = $1 RETURNING revision",
    )
    .bind(run_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(false);
    };
    let Some(view) = load_view(conn, run_id).await? else {
        return Ok(false);
    };
    if when == Publish::WhereEditable && !frontends.edits(&view.origin) {
        return Ok(false);
    }
    let text = reporter.canary_summary(&view);
    outbox::push_slot_in(
        conn,
        &view.origin,
        &text,
        &slot(run_id),
        &format!("canary:{run_id}:r{revision}"),
        Some(run_id),
    )
    .await?;
    Ok(true)
}

/// The outbox slot of a run's summary.
pub fn slot(run_id: &str) -> String {
    format!("canary:{run_id}")
}

/// Marks the MR's runs that tested another commit as outdated; returns their ids.
pub async fn mark_outdated_in(
    conn: &mut AnyConnection,
    project: &str,
    iid: u64,
    head_sha: &str,
) -> Result<Vec<String>, StoreError> {
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM canary_runs WHERE LOWER(project) = LOWER($1) AND mr_iid = $2 \
         AND head_sha <> $3 AND (outdated_by IS NULL OR outdated_by <> $3)",
    )
    .bind(project)
    .bind(to_i64(iid))
    .bind(head_sha)
    .fetch_all(&mut *conn)
    .await?;
    for id in &ids {
        sqlx::query("UPDATE canary_runs SET outdated_by = $1, updated_at = $2 WHERE id = $3")
            .bind(head_sha)
            .bind(now_ms())
            .bind(id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(ids)
}

/// The MR's most recent run.
pub async fn latest_run(
    store: &Store,
    project: &str,
    iid: u64,
) -> Result<Option<RunView>, StoreError> {
    let mut conn = store.pool().acquire().await?;
    let id: Option<String> = sqlx::query_scalar(
        "SELECT id FROM canary_runs WHERE LOWER(project) = LOWER($1) AND mr_iid = $2 \
         ORDER BY created_at DESC, id DESC LIMIT 1",
    )
    .bind(project)
    .bind(to_i64(iid))
    .fetch_optional(&mut *conn)
    .await?;
    match id {
        Some(id) => load_view(&mut conn, &id).await,
        None => Ok(None),
    }
}

/// A stored run with its pipelines.
pub async fn load_view(
    conn: &mut AnyConnection,
    run_id: &str,
) -> Result<Option<RunView>, StoreError> {
    let Some(run) = sqlx::query(
        "SELECT id, project, mr_iid, mr_url, head_sha, outdated_by, frontend, room, addressee, identity, state \
         FROM canary_runs WHERE id = $1",
    )
    .bind(run_id)
    .fetch_optional(&mut *conn)
    .await?
    else {
        return Ok(None);
    };
    let rows = sqlx::query(
        "SELECT idx, tree, ref_project, ref_pipeline_id, ref_web_url, pipeline_id, web_url, status, \
         duration_secs, failed_jobs, attempt, error FROM canary_pipelines WHERE run_id = $1 ORDER BY idx",
    )
    .bind(run_id)
    .fetch_all(&mut *conn)
    .await?;
    let rows = rows
        .iter()
        .map(|r| -> Result<RowView, StoreError> {
            let failed: Option<String> = r.try_get("failed_jobs")?;
            Ok(RowView {
                idx: u32::try_from(r.try_get::<i64, _>("idx")?).unwrap_or(0),
                tree: r.try_get("tree")?,
                ref_project: r.try_get("ref_project")?,
                ref_pipeline_id: r.try_get::<Option<i64>, _>("ref_pipeline_id")?.map(to_u64),
                ref_web_url: r.try_get("ref_web_url")?,
                pipeline_id: r.try_get::<Option<i64>, _>("pipeline_id")?.map(to_u64),
                web_url: r.try_get("web_url")?,
                status: r.try_get("status")?,
                duration_secs: r.try_get::<Option<i64>, _>("duration_secs")?.map(to_u64),
                failed_jobs: failed
                    .and_then(|f| serde_json::from_str(&f).ok())
                    .unwrap_or_default(),
                attempt: u32::try_from(r.try_get::<i64, _>("attempt")?).unwrap_or(1),
                error: r.try_get("error")?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let state: String = run.try_get("state")?;
    Ok(Some(RunView {
        id: run.try_get("id")?,
        project: run.try_get("project")?,
        mr_iid: to_u64(run.try_get("mr_iid")?),
        mr_url: run.try_get("mr_url")?,
        head_sha: run.try_get("head_sha")?,
        outdated_by: run.try_get("outdated_by")?,
        origin: Origin::from_columns(
            run.try_get("frontend")?,
            run.try_get("room")?,
            run.try_get("addressee")?,
        ),
        identity: run.try_get("identity")?,
        finished: state == "done",
        rows,
    }))
}

/// The running pipelines of the MR's runs, as (project, pipeline id).
pub async fn running_pipelines(
    store: &Store,
    project: &str,
    iid: u64,
) -> Result<Vec<(String, u64)>, StoreError> {
    let rows = sqlx::query(
        "SELECT p.ref_project, p.pipeline_id, p.status FROM canary_pipelines p \
         JOIN canary_runs r ON r.id = p.run_id \
         WHERE LOWER(r.project) = LOWER($1) AND r.mr_iid = $2 AND p.pipeline_id IS NOT NULL",
    )
    .bind(project)
    .bind(to_i64(iid))
    .fetch_all(store.pool())
    .await?;
    let mut out = Vec::new();
    for r in &rows {
        let status: String = r.try_get("status")?;
        if !is_finished_status(&status) {
            let id: Option<i64> = r.try_get("pipeline_id")?;
            if let Some(id) = id {
                out.push((r.try_get("ref_project")?, to_u64(id)));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mr() -> MrContext {
        MrContext {
            iid: 12,
            url: "https://gitlab.example/g/p/-/merge_requests/12".into(),
            project: "alice/p".into(),
            project_url: "https://gitlab.example/alice/p".into(),
            clone_url: "https://gitlab.example/alice/p.git".into(),
            branch: "fix".into(),
            sha: "0123456789abcdef".into(),
            git_ref: "refs/merge-requests/12/head".into(),
            target_project: "g/p".into(),
            target_branch: "main".into(),
        }
    }

    #[test]
    fn templates_see_every_placeholder() {
        let config = CanaryProject {
            project: "g/p".into(),
            variables: vec![
                ("A".into(), "{{ mr.clone_url }}@{{ mr.ref }}".into()),
                (
                    "B".into(),
                    "{{ mr.project }}:{{ mr.branch }}:{{ mr.sha }}:{{ mr.iid }}".into(),
                ),
                (
                    "C".into(),
                    "{{ mr.url }} {{ mr.project_url }} {{ mr.target_project }} {{ mr.target_branch }}"
                        .into(),
                ),
            ],
            references: vec![],
        };
        let vars = render_variables(&config, &mr()).expect("renders");
        assert_eq!(
            vars,
            vec![
                (
                    "A".to_string(),
                    "https://gitlab.example/alice/p.git@refs/merge-requests/12/head".to_string()
                ),
                (
                    "B".to_string(),
                    "alice/p:fix:0123456789abcdef:12".to_string()
                ),
                (
                    "C".to_string(),
                    "https://gitlab.example/g/p/-/merge_requests/12 https://gitlab.example/alice/p g/p main"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_broken_template_is_an_error_naming_the_variable() {
        let config = CanaryProject {
            project: "g/p".into(),
            variables: vec![("BAD".into(), "{{ mr.ref ".into())],
            references: vec![],
        };
        let err = render_variables(&config, &mr()).expect_err("does not render");
        assert!(err.to_string().contains("BAD"), "{err}");
    }
}
