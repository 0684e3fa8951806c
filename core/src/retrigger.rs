//! Retrigger: a new pipeline on the same ref as an old one, with the old one's variables,
//! the user's overrides and the configured marker variables — exactly once.
//!
//! GitLab has no idempotency keys, so the request id travels as the pipeline variable
//! `SHEPHERD_REQUEST_ID`. Before the first create we record "create started"; if a create
//! fails ambiguously (timeout, reset, 5xx after the body was sent), or a redelivered request
//! finds that record, we first look for our id among the ref's recent pipelines and only
//! create when it is not there. The created pipeline is recorded as an effect, so a
//! redelivery after that point does no GitLab write at all.

use std::time::Duration;

use crate::effects;
use crate::gitlab::{GitLab, GitLabError, Pipeline, PipelineQuery, Variable};
use crate::once::{self, CreateFailure, OnceError};
use crate::store::{Store, StoreError, now_ms};

/// The variable that carries shepherd's request id on every pipeline it creates.
pub const REQUEST_ID_VARIABLE: &str = "SHEPHERD_REQUEST_ID";

const EFFECT_CREATE_STARTED: &str = "retrigger:create-started";
const EFFECT_PIPELINE: &str = "retrigger:pipeline";

#[derive(Debug, Clone)]
pub struct RetriggerSettings {
    /// Variables that mark a pipeline as a retrigger; they win over old values and overrides.
    pub marker_variables: Vec<(String, String)>,
    /// How far back to look for our own pipeline after an ambiguous create.
    pub lookback: Duration,
    /// Creates tried within one attempt before giving the item back to the queue.
    pub create_attempts: u32,
}

#[derive(Debug, Clone)]
pub struct RetriggerRequest {
    pub request_id: String,
    /// When the request was first stored (Unix ms); bounds the search for our own pipeline.
    pub requested_at: i64,
    pub project: String,
    pub pipeline_id: u64,
    pub overrides: Vec<(String, String)>,
    /// Non-production mode: read everything, create nothing.
    pub production: bool,
}

// Short-lived, returned once per request: boxing a pipeline would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum RetriggerOutcome {
    Created {
        old: Pipeline,
        new: Pipeline,
        variables: Vec<Variable>,
        /// True when the pipeline had already been created by an earlier attempt.
        recovered: bool,
    },
    WouldCreate {
        old: Pipeline,
        variables: Vec<Variable>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum RetriggerError {
    #[error(transparent)]
    GitLab(#[from] GitLabError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("GitLab's answers to creating the pipeline were ambiguous {attempts} times in a row")]
    StillAmbiguous { attempts: u32 },
}

impl RetriggerError {
    /// Worth another attempt later (the queue will redeliver)?
    pub fn is_retryable(&self) -> bool {
        match self {
            RetriggerError::GitLab(e) => e.is_retryable(),
            RetriggerError::Store(_) | RetriggerError::StillAmbiguous { .. } => true,
        }
    }
}

#[derive(Clone)]
pub struct Retrigger {
    gitlab: GitLab,
    store: Store,
    settings: RetriggerSettings,
}

impl Retrigger {
    pub fn new(gitlab: GitLab, store: Store, settings: RetriggerSettings) -> Self {
        Self {
            gitlab,
            store,
            settings,
        }
    }

    pub async fn run(&self, req: &RetriggerRequest) -> Result<RetriggerOutcome, RetriggerError> {
        let old = self.gitlab.pipeline(&req.project, req.pipeline_id).await?;

        let recorded = effects::get(&self.store, &req.request_id, EFFECT_PIPELINE).await?;
        if let Some(recorded) = recorded
            && let Ok(id) = recorded.parse::<u64>()
        {
            let new = self.gitlab.pipeline(&req.project, id).await?;
            let variables = self.gitlab.pipeline_variables(&req.project, id).await?;
            return Ok(RetriggerOutcome::Created {
                old,
                new,
                variables,
                recovered: true,
            });
        }

        let old_vars = self
            .gitlab
            .pipeline_variables(&req.project, req.pipeline_id)
            .await?;
        let variables = merge_variables(
            &old_vars,
            &req.overrides,
            &self.settings.marker_variables,
            &req.request_id,
        );
        if !req.production {
            return Ok(RetriggerOutcome::WouldCreate { old, variables });
        }

        let (new, recovered) = self
            .create_marked(
                &req.request_id,
                req.requested_at,
                &req.project,
                &old.git_ref,
                &variables,
            )
            .await?;
        Ok(RetriggerOutcome::Created {
            old,
            new,
            variables,
            recovered,
        })
    }

    /// Creates a pipeline on `git_ref` with `variables` (which carry `SHEPHERD_REQUEST_ID =
    /// request_id`) exactly once: "create started" and then the pipeline are recorded as effects of
    /// the request, and [`once::create_once`] looks for the request id among the ref's recent
    /// pipelines after an ambiguous answer or a restart. True when an earlier attempt created it.
    pub async fn create_marked(
        &self,
        request_id: &str,
        requested_at: i64,
        project: &str,
        git_ref: &str,
        variables: &[Variable],
    ) -> Result<(Pipeline, bool), RetriggerError> {
        if let Some(recorded) = effects::get(&self.store, request_id, EFFECT_PIPELINE).await?
            && let Ok(id) = recorded.parse::<u64>()
        {
            return Ok((self.gitlab.pipeline(project, id).await?, true));
        }
        let started = effects::get(&self.store, request_id, EFFECT_CREATE_STARTED)
            .await?
            .is_some();
        if !started {
            effects::put(&self.store, request_id, EFFECT_CREATE_STARTED, "1").await?;
        }
        let created = once::create_once(
            "pipeline",
            started,
            self.settings.create_attempts,
            move || self.find_own(request_id, requested_at, project, git_ref),
            move || async move {
                self.gitlab
                    .create_pipeline(project, git_ref, variables)
                    .await
                    .map_err(|e| match e {
                        GitLabError::Ambiguous { detail, .. } => CreateFailure::Ambiguous(detail),
                        other => CreateFailure::Failed(RetriggerError::from(other)),
                    })
            },
        )
        .await
        .map_err(|e| match e {
            OnceError::Failed(e) => e,
            OnceError::StillAmbiguous { attempts, .. } => {
                RetriggerError::StillAmbiguous { attempts }
            }
        })?;
        let recovered = created.recovered();
        let new = created.into_inner();
        effects::put(
            &self.store,
            request_id,
            EFFECT_PIPELINE,
            &new.id.to_string(),
        )
        .await?;
        Ok((new, recovered))
    }

    /// Our pipeline among the ref's pipelines updated since shortly before the request.
    async fn find_own(
        &self,
        request_id: &str,
        requested_at: i64,
        project: &str,
        git_ref: &str,
    ) -> Result<Option<Pipeline>, RetriggerError> {
        let since_ms = requested_at.min(now_ms())
            - i64::try_from(self.settings.lookback.as_millis()).unwrap_or(i64::MAX / 2);
        let since = chrono::DateTime::from_timestamp_millis(since_ms).unwrap_or_default();
        let query = PipelineQuery {
            git_ref: Some(git_ref.to_string()),
            // GitLab marks pipelines made through the pipelines API as source "api".
            source: Some("api".to_string()),
            updated_after: Some(since),
            per_page: Some(100),
            ..PipelineQuery::default()
        };
        let candidates = self.gitlab.pipelines(project, &query).await?;
        for candidate in candidates {
            let vars = self
                .gitlab
                .pipeline_variables(project, candidate.id)
                .await?;
            let ours = vars
                .iter()
                .any(|v| v.key == REQUEST_ID_VARIABLE && v.value == request_id);
            if ours {
                let pipeline = self.gitlab.pipeline(project, candidate.id).await?;
                return Ok(Some(pipeline));
            }
        }
        Ok(None)
    }
}

/// Old variables in their order, then overrides, then markers (each replacing an existing
/// key in place or appending), and last our request id. An old pipeline's own
/// `SHEPHERD_REQUEST_ID` is never carried over.
pub fn merge_variables(
    old: &[Variable],
    overrides: &[(String, String)],
    markers: &[(String, String)],
    request_id: &str,
) -> Vec<Variable> {
    let mut out: Vec<Variable> = old
        .iter()
        .filter(|v| v.key != REQUEST_ID_VARIABLE)
        .cloned()
        .collect();
    for (key, value) in overrides.iter().chain(markers) {
        if key == REQUEST_ID_VARIABLE {
            continue;
        }
        match out.iter_mut().find(|v| &v.key == key) {
            Some(v) => v.value = value.clone(),
            None => out.push(Variable::env(key, value)),
        }
    }
    out.push(Variable::env(REQUEST_ID_VARIABLE, request_id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(vars: &[Variable]) -> Vec<(String, String)> {
        vars.iter()
            .map(|v| (v.key.clone(), v.value.clone()))
            .collect()
    }

    #[test]
    fn merge_keeps_order_applies_overrides_then_markers_then_id() {
        let old = vec![
            Variable::env("A", "1"),
            Variable::env("B", "2"),
            Variable::env(REQUEST_ID_VARIABLE, "old-request"),
            Variable::env("CKI_DEPLOYMENT_ENVIRONMENT", "production"),
        ];
        let overrides = vec![
            ("B".to_string(), "20".to_string()),
            ("C".to_string(), "3".to_string()),
            (
                "CKI_DEPLOYMENT_ENVIRONMENT".to_string(),
                "production".to_string(),
            ),
        ];
        let markers = vec![(
            "CKI_DEPLOYMENT_ENVIRONMENT".to_string(),
            "retrigger".to_string(),
        )];
        let merged = merge_variables(&old, &overrides, &markers, "req-1");
        assert_eq!(
            kv(&merged),
            vec![
                ("A".into(), "1".into()),
                ("B".into(), "20".into()),
                ("CKI_DEPLOYMENT_ENVIRONMENT".into(), "retrigger".into()),
                ("C".into(), "3".into()),
                (REQUEST_ID_VARIABLE.into(), "req-1".into()),
            ]
        );
    }

    #[test]
    fn a_user_cannot_forge_the_request_id() {
        let merged = merge_variables(
            &[],
            &[(REQUEST_ID_VARIABLE.to_string(), "forged".to_string())],
            &[],
            "req-2",
        );
        assert_eq!(
            kv(&merged),
            vec![(REQUEST_ID_VARIABLE.into(), "req-2".into())]
        );
    }
}
