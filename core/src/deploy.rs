//! Deploys and rollbacks of container images: an environment is a tag of the service's
//! repository, and deploying points that tag at the source's digest by putting the source's
//! manifest (its exact bytes and media type) under the tag.
//!
//! Safety, in the order it is checked: the service and environment exist, the asker is in the
//! environment's `groups`, the environment is not locked by someone else, the image exists.
//! An environment with `confirm = true` first stores the plan under a short code; only the same
//! person's `confirm <code>` before it expires carries it out, and only if the environment still
//! points where it did when the plan was shown.
//!
//! Exactly once: a deployment row is written as `started` (with its from and to digests) before
//! the tag is moved, keyed by the request that carries it out. A crash or a redelivery finds the
//! row and finishes the same deployment — moving a tag to the digest it already has is a no-op —
//! and records it once.

use std::fmt;
use std::sync::Arc;

use rand::Rng;
use serde::{Deserialize, Serialize};
use shepherd_config::{DeployConfig, DeployEnvironment, DeployPipeline, DeployService};
use sqlx::Row;

use crate::gitlab::{GitLab, GitLabError, Variable};
use crate::metrics::Metrics;
use crate::policy::Principal;
use crate::registry::{Registry, RegistryError};
use crate::retrigger::{REQUEST_ID_VARIABLE, Retrigger, RetriggerError};
use crate::store::{Store, StoreError, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Deploy,
    Rollback,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deploy => "deploy",
            Kind::Rollback => "rollback",
        }
    }
}

/// The merge request an image comes from, as shown before a production deploy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MrInfo {
    pub project: String,
    pub iid: u64,
    pub title: String,
    pub author: Option<String>,
    pub web_url: String,
}

/// What a deploy or rollback will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub kind: Kind,
    pub service: String,
    pub environment: String,
    pub repository: String,
    /// The environment's tag (empty for a pipeline environment).
    pub tag: String,
    /// A pipeline environment: the deploy pipeline to run instead of moving a tag.
    #[serde(default)]
    pub pipeline: Option<DeployPipeline>,
    /// What was asked for: `!12`, a tag, a digest, or `previous`.
    pub source: String,
    /// What the tag pointed at when the plan was made (`None`: the tag did not exist); for a
    /// pipeline environment, what its last recorded deployment deployed.
    pub from_digest: Option<String>,
    pub to_digest: String,
    pub mr: Option<MrInfo>,
}

/// Where `deploy` takes the image from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source<'a> {
    /// A merge request of the service's `mr_project` (`project` when the reference names one).
    Mr {
        project: Option<&'a str>,
        iid: u64,
    },
    Tag(&'a str),
    Digest(&'a str),
    /// A rollback without a version: the digest the environment had before its last deployment.
    Previous,
}

pub struct Request<'a> {
    pub request_id: &'a str,
    pub who: &'a Principal,
    pub kind: Kind,
    pub service: &'a str,
    pub environment: Option<&'a str>,
    pub source: Source<'a>,
    /// Non-production mode: read everything, write nothing.
    pub production: bool,
}

/// How a request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The tag now points at the plan's digest (or its deploy pipeline was created), recorded
    /// (`recovered`: by an earlier attempt).
    Done {
        plan: Plan,
        recovered: bool,
        pipeline: Option<StartedPipeline>,
    },
    /// The tag already pointed there: nothing to do, nothing recorded.
    AlreadyThere { plan: Plan },
    /// Non-production mode: what would have happened.
    Would { plan: Plan },
    /// Waiting for `confirm <code>` until `expires_at` (Unix ms).
    Confirm {
        plan: Plan,
        code: String,
        expires_at: i64,
    },
}

/// The deploy pipeline a pipeline environment's deployment ran.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartedPipeline {
    pub project: String,
    pub id: u64,
    pub web_url: String,
}

/// The variables a deploy pipeline gets, besides `SHEPHERD_REQUEST_ID`.
pub const DEPLOY_VARIABLES: [&str; 3] = ["DEPLOY_SERVICE", "DEPLOY_IMAGE", "DEPLOY_ENVIRONMENT"];

/// A lock on an environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lock {
    pub environment: String,
    pub identity: String,
    pub person: Option<String>,
    pub reason: Option<String>,
    pub locked_at: i64,
}

/// A recorded deployment, for `deployments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployment {
    pub id: String,
    pub kind: Kind,
    pub service: String,
    pub environment: String,
    pub source: String,
    pub from_digest: Option<String>,
    pub to_digest: String,
    pub identity: String,
    pub person: Option<String>,
    pub finished_at: i64,
}

/// Why a request is refused; the plugin words it. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    UnknownService {
        name: String,
        known: Vec<String>,
    },
    UnknownEnvironment {
        name: String,
        known: Vec<String>,
    },
    NotInGroups {
        environment: String,
        groups: Vec<String>,
    },
    Locked(Lock),
    NoMrProject {
        service: String,
    },
    OtherProject {
        service: String,
        given: String,
        expected: String,
    },
    ImageMissing {
        repository: String,
        reference: String,
        mr: Option<u64>,
    },
    NothingDeployed {
        service: String,
        environment: String,
        tag: String,
    },
    NoPrevious {
        service: String,
        environment: String,
    },
    UnknownCode {
        code: String,
    },
    CodeUsed {
        code: String,
    },
    CodeExpired {
        code: String,
        expired_at: i64,
    },
    CodeNotYours {
        code: String,
        identity: String,
    },
    /// The environment moved since the plan was shown.
    Moved {
        plan: Box<Plan>,
        now: Option<String>,
    },
    NotLocked {
        environment: String,
    },
    /// `unlock` of someone else's lock by someone not in `lock_breakers`.
    NotYourLock {
        lock: Lock,
        breakers: Vec<String>,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("refused: {0:?}")]
    Refused(Box<Refusal>),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    GitLab(#[from] GitLabError),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Creating the deploy pipeline failed (retryable when GitLab may answer later).
    #[error(transparent)]
    Pipeline(#[from] RetriggerError),
}

impl From<sqlx::Error> for DeployError {
    fn from(e: sqlx::Error) -> Self {
        DeployError::Store(StoreError::Sql(e))
    }
}

impl DeployError {
    /// Worth another attempt later (the queue redelivers, and the deployment row makes it safe).
    pub fn is_retryable(&self) -> bool {
        match self {
            DeployError::Refused(_) => false,
            DeployError::Registry(e) => e.is_retryable(),
            DeployError::GitLab(e) => e.is_retryable(),
            DeployError::Store(_) => true,
            DeployError::Pipeline(e) => e.is_retryable(),
        }
    }
}

fn refuse<T>(r: Refusal) -> Result<T, DeployError> {
    Err(DeployError::Refused(Box::new(r)))
}

#[derive(Clone)]
pub struct Deployer {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    gitlab: GitLab,
    retrigger: Retrigger,
    store: Store,
    config: DeployConfig,
    metrics: Arc<Metrics>,
}

impl fmt::Debug for Deployer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deployer").finish_non_exhaustive()
    }
}

/// Letters and digits that cannot be mistaken for one another.
const CODE_ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyz23456789";
const CODE_LENGTH: usize = 6;

impl Deployer {
    pub fn new(
        registry: Registry,
        gitlab: GitLab,
        retrigger: Retrigger,
        store: Store,
        config: DeployConfig,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry,
                gitlab,
                retrigger,
                store,
                config,
                metrics,
            }),
        }
    }

    pub fn config(&self) -> &DeployConfig {
        &self.inner.config
    }

    /// `deploy` or `rollback`: checks, plans, and carries out (or asks for confirmation).
    pub async fn request(&self, req: &Request<'_>) -> Result<Step, DeployError> {
        let result = self.request_inner(req).await;
        self.count(req.service, req.environment, &result);
        result
    }

    async fn request_inner(&self, req: &Request<'_>) -> Result<Step, DeployError> {
        let service = self.service(req.service)?;
        let env = self.environment(req.environment)?;
        // A redelivery of a request that already started its deployment finishes it.
        if let Some(plan) = self.started_plan(req.request_id).await? {
            return self.execute(req.request_id, req.who, plan).await;
        }
        self.check_allowed(req.who, env).await?;
        if let Some((plan, code, expires_at)) = self.confirmation_of(req.request_id).await? {
            return Ok(Step::Confirm {
                plan,
                code,
                expires_at,
            });
        }
        let plan = self.plan(service, env, req).await?;
        if plan.from_digest.as_deref() == Some(plan.to_digest.as_str()) {
            return Ok(Step::AlreadyThere { plan });
        }
        if !req.production {
            return Ok(Step::Would { plan });
        }
        if env.confirm {
            return self.ask_confirmation(req, plan).await;
        }
        self.execute(req.request_id, req.who, plan).await
    }

    /// `confirm <code>`: carries out the plan stored under `code` for the same person.
    pub async fn confirm(
        &self,
        request_id: &str,
        who: &Principal,
        code: &str,
        production: bool,
    ) -> Result<Step, DeployError> {
        let result = self.confirm_inner(request_id, who, code, production).await;
        self.count("-", Some("-"), &result);
        result
    }

    async fn confirm_inner(
        &self,
        request_id: &str,
        who: &Principal,
        code: &str,
        production: bool,
    ) -> Result<Step, DeployError> {
        if let Some(plan) = self.started_plan(request_id).await? {
            return self.execute(request_id, who, plan).await;
        }
        let code = code.to_ascii_lowercase();
        let row = sqlx::query(
            "SELECT identity, person, plan, expires_at, used_by FROM deploy_confirmations WHERE code = $1",
        )
        .bind(&code)
        .fetch_optional(self.inner.store.pool())
        .await?;
        let Some(row) = row else {
            return refuse(Refusal::UnknownCode { code });
        };
        let identity: String = row.try_get("identity")?;
        let person: Option<String> = row.try_get("person")?;
        let plan_json: String = row.try_get("plan")?;
        let expires_at: i64 = row.try_get("expires_at")?;
        let used_by: Option<String> = row.try_get("used_by")?;
        if !who.is(&identity, person.as_deref()) {
            return refuse(Refusal::CodeNotYours { code, identity });
        }
        if used_by.as_deref().is_some_and(|u| u != request_id) {
            return refuse(Refusal::CodeUsed { code });
        }
        if used_by.is_none() && now_ms() > expires_at {
            return refuse(Refusal::CodeExpired {
                code,
                expired_at: expires_at,
            });
        }
        let plan = plan_of(&plan_json)?;
        let env = self.environment(Some(&plan.environment))?;
        self.check_allowed(who, env).await?;
        let now = self.current(&plan.service, env, &plan.repository).await?;
        if now != plan.from_digest {
            return refuse(Refusal::Moved {
                plan: Box::new(plan),
                now,
            });
        }
        if !production {
            return Ok(Step::Would { plan });
        }
        let taken = sqlx::query(
            "UPDATE deploy_confirmations SET used_by = $1 WHERE code = $2 AND (used_by IS NULL OR used_by = $1)",
        )
        .bind(request_id)
        .bind(&code)
        .execute(self.inner.store.pool())
        .await?;
        if taken.rows_affected() == 0 {
            return refuse(Refusal::CodeUsed { code });
        }
        self.execute(request_id, who, plan).await
    }

    /// The latest deployments of `service` (in `environment`), newest first.
    pub async fn history(
        &self,
        service: &str,
        environment: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Deployment>, DeployError> {
        let service = self.service(service)?.name.clone();
        let environment = match environment {
            Some(e) => Some(self.environment(Some(e))?.name.clone()),
            None => None,
        };
        let rows = sqlx::query(
            "SELECT id, kind, service, environment, source, from_digest, to_digest, identity, person, finished_at \
             FROM deployments WHERE service = $1 AND ($2 = '' OR environment = $2) AND state = 'done' \
             ORDER BY finished_at DESC, id DESC LIMIT $3",
        )
        .bind(&service)
        .bind(environment.as_deref().unwrap_or(""))
        .bind(i64::from(limit))
        .fetch_all(self.inner.store.pool())
        .await?;
        rows.iter().map(deployment_of).collect()
    }

    /// `lock <env> [reason]`: the lock now held, and whether the asker already held it (then
    /// only its reason changed).
    pub async fn lock(
        &self,
        who: &Principal,
        environment: &str,
        reason: Option<&str>,
    ) -> Result<(Lock, bool), DeployError> {
        let env = self.environment(Some(environment))?;
        self.check_groups(who, env)?;
        let key = env.name.to_ascii_lowercase();
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO deploy_locks (environment, identity, person, reason, locked_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (environment) DO NOTHING",
        )
        .bind(&key)
        .bind(&who.identity)
        .bind(&who.person)
        .bind(reason)
        .bind(now)
        .execute(self.inner.store.pool())
        .await?;
        let lock = self.lock_of(&env.name).await?;
        let Some(lock) = lock else {
            // Unlocked between the two statements: try once more from the start.
            return Box::pin(self.lock(who, environment, reason)).await;
        };
        if inserted.rows_affected() == 1 {
            return Ok((lock, false));
        }
        if !who.is(&lock.identity, lock.person.as_deref()) {
            return refuse(Refusal::Locked(lock));
        }
        sqlx::query("UPDATE deploy_locks SET reason = $1 WHERE environment = $2")
            .bind(reason)
            .bind(&key)
            .execute(self.inner.store.pool())
            .await?;
        let lock = Lock {
            reason: reason.map(str::to_string),
            ..lock
        };
        Ok((lock, true))
    }

    /// `unlock <env>`: by who locked it, or by a member of `lock_breakers`; the lock lifted.
    pub async fn unlock(&self, who: &Principal, environment: &str) -> Result<Lock, DeployError> {
        let env = self.environment(Some(environment))?;
        let Some(lock) = self.lock_of(&env.name).await? else {
            return refuse(Refusal::NotLocked {
                environment: env.name.clone(),
            });
        };
        let breakers = &self.inner.config.lock_breakers;
        let breaker = who.groups.iter().any(|g| breakers.contains(g));
        if !who.is(&lock.identity, lock.person.as_deref()) && !breaker {
            return refuse(Refusal::NotYourLock {
                lock,
                breakers: breakers.clone(),
            });
        }
        sqlx::query("DELETE FROM deploy_locks WHERE environment = $1 AND locked_at = $2")
            .bind(env.name.to_ascii_lowercase())
            .bind(lock.locked_at)
            .execute(self.inner.store.pool())
            .await?;
        Ok(lock)
    }

    /// The lock on `environment`, if any.
    pub async fn lock_of(&self, environment: &str) -> Result<Option<Lock>, DeployError> {
        let row = sqlx::query(
            "SELECT environment, identity, person, reason, locked_at FROM deploy_locks WHERE environment = $1",
        )
        .bind(environment.to_ascii_lowercase())
        .fetch_optional(self.inner.store.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let name: String = row.try_get("environment")?;
        let environment = self
            .inner
            .config
            .environment(Some(&name))
            .map_or(name, |e| e.name.clone());
        Ok(Some(Lock {
            environment,
            identity: row.try_get("identity")?,
            person: row.try_get("person")?,
            reason: row.try_get("reason")?,
            locked_at: row.try_get("locked_at")?,
        }))
    }

    fn service(&self, name: &str) -> Result<&DeployService, DeployError> {
        let config = &self.inner.config;
        config.service(name).ok_or_else(|| {
            DeployError::Refused(Box::new(Refusal::UnknownService {
                name: name.to_string(),
                known: config.services.iter().map(|s| s.name.clone()).collect(),
            }))
        })
    }

    fn environment(&self, name: Option<&str>) -> Result<&DeployEnvironment, DeployError> {
        let config = &self.inner.config;
        config.environment(name).ok_or_else(|| {
            DeployError::Refused(Box::new(Refusal::UnknownEnvironment {
                name: name.unwrap_or_default().to_string(),
                known: config.environments.iter().map(|e| e.name.clone()).collect(),
            }))
        })
    }

    fn check_groups(&self, who: &Principal, env: &DeployEnvironment) -> Result<(), DeployError> {
        if env.groups.is_empty() || who.groups.iter().any(|g| env.groups.contains(g)) {
            Ok(())
        } else {
            refuse(Refusal::NotInGroups {
                environment: env.name.clone(),
                groups: env.groups.clone(),
            })
        }
    }

    /// Groups, then the lock.
    async fn check_allowed(
        &self,
        who: &Principal,
        env: &DeployEnvironment,
    ) -> Result<(), DeployError> {
        self.check_groups(who, env)?;
        match self.lock_of(&env.name).await? {
            Some(lock) if !who.is(&lock.identity, lock.person.as_deref()) => {
                refuse(Refusal::Locked(lock))
            }
            _ => Ok(()),
        }
    }

    async fn plan(
        &self,
        service: &DeployService,
        env: &DeployEnvironment,
        req: &Request<'_>,
    ) -> Result<Plan, DeployError> {
        let registry = &self.inner.registry;
        let repository = service.repository.clone();
        let tag = env.tag.clone().unwrap_or_default();
        let from_digest = self.current(&service.name, env, &repository).await?;
        let missing = |reference: &str, mr: Option<u64>| {
            DeployError::Refused(Box::new(Refusal::ImageMissing {
                repository: repository.clone(),
                reference: reference.to_string(),
                mr,
            }))
        };
        let (source, to_digest, mr) = match req.source {
            Source::Mr { project, iid } => {
                let Some(expected) = &service.mr_project else {
                    return refuse(Refusal::NoMrProject {
                        service: service.name.clone(),
                    });
                };
                if let Some(given) = project
                    && !given.eq_ignore_ascii_case(expected)
                {
                    return refuse(Refusal::OtherProject {
                        service: service.name.clone(),
                        given: given.to_string(),
                        expected: expected.clone(),
                    });
                }
                let mr = self.inner.gitlab.merge_request(expected, iid).await?;
                let reference = service.mr_tag.replace("{iid}", &iid.to_string());
                let digest = registry
                    .digest(&repository, &reference)
                    .await?
                    .ok_or_else(|| missing(&reference, Some(iid)))?;
                let info = MrInfo {
                    project: expected.clone(),
                    iid,
                    title: mr.title,
                    author: mr.author.map(|a| a.username),
                    web_url: mr.web_url,
                };
                (format!("!{iid}"), digest, Some(info))
            }
            Source::Tag(t) => {
                let digest = registry
                    .digest(&repository, t)
                    .await?
                    .ok_or_else(|| missing(t, None))?;
                (t.to_string(), digest, None)
            }
            Source::Digest(d) => {
                let digest = registry
                    .digest(&repository, d)
                    .await?
                    .ok_or_else(|| missing(d, None))?;
                (d.to_string(), digest, None)
            }
            Source::Previous => {
                let Some(current) = &from_digest else {
                    return refuse(Refusal::NothingDeployed {
                        service: service.name.clone(),
                        environment: env.name.clone(),
                        tag,
                    });
                };
                let previous = self.previous(&service.name, &env.name, current).await?;
                let Some(previous) = previous else {
                    return refuse(Refusal::NoPrevious {
                        service: service.name.clone(),
                        environment: env.name.clone(),
                    });
                };
                // It must still exist (a registry garbage collection may have removed it).
                let digest = registry
                    .digest(&repository, &previous)
                    .await?
                    .ok_or_else(|| missing(&previous, None))?;
                ("previous".to_string(), digest, None)
            }
        };
        Ok(Plan {
            kind: req.kind,
            service: service.name.clone(),
            environment: env.name.clone(),
            repository,
            tag,
            pipeline: env.pipeline.clone(),
            source,
            from_digest,
            to_digest,
            mr,
        })
    }

    /// What `env` runs now: its tag's digest, or for a pipeline environment the digest its last
    /// recorded deployment deployed.
    async fn current(
        &self,
        service: &str,
        env: &DeployEnvironment,
        repository: &str,
    ) -> Result<Option<String>, DeployError> {
        if let Some(tag) = &env.tag {
            return Ok(self.inner.registry.digest(repository, tag).await?);
        }
        let row = sqlx::query(
            "SELECT to_digest FROM deployments WHERE service = $1 AND environment = $2 AND state = 'done' \
             ORDER BY finished_at DESC, id DESC LIMIT 1",
        )
        .bind(service)
        .bind(&env.name)
        .fetch_optional(self.inner.store.pool())
        .await?;
        Ok(match row {
            Some(r) => Some(r.try_get("to_digest")?),
            None => None,
        })
    }

    /// What the environment pointed at before the deployment that made it `current`.
    async fn previous(
        &self,
        service: &str,
        environment: &str,
        current: &str,
    ) -> Result<Option<String>, DeployError> {
        let row = sqlx::query(
            "SELECT from_digest FROM deployments WHERE service = $1 AND environment = $2 AND to_digest = $3 \
             AND state = 'done' AND from_digest IS NOT NULL ORDER BY finished_at DESC, id DESC LIMIT 1",
        )
        .bind(service)
        .bind(environment)
        .bind(current)
        .fetch_optional(self.inner.store.pool())
        .await?;
        Ok(match row {
            Some(r) => r.try_get("from_digest")?,
            None => None,
        })
    }

    async fn ask_confirmation(&self, req: &Request<'_>, plan: Plan) -> Result<Step, DeployError> {
        let timeout =
            i64::try_from(self.inner.config.confirm_timeout().as_millis()).unwrap_or(i64::MAX / 4);
        let now = now_ms();
        let json = serde_json::to_string(&plan).map_err(|e| {
            DeployError::Store(StoreError::Corrupt {
                what: "deploy plan",
                detail: e.to_string(),
            })
        })?;
        for _ in 0..8 {
            let code = new_code();
            let inserted = sqlx::query(
                "INSERT INTO deploy_confirmations (code, request_id, identity, person, plan, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
            )
            .bind(&code)
            .bind(req.request_id)
            .bind(&req.who.identity)
            .bind(&req.who.person)
            .bind(&json)
            .bind(now)
            .bind(now + timeout)
            .execute(self.inner.store.pool())
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(Step::Confirm {
                    plan,
                    code,
                    expires_at: now + timeout,
                });
            }
            // The request already has one (a concurrent redelivery), or the code is taken.
            if let Some((plan, code, expires_at)) = self.confirmation_of(req.request_id).await? {
                return Ok(Step::Confirm {
                    plan,
                    code,
                    expires_at,
                });
            }
        }
        Err(DeployError::Store(StoreError::Corrupt {
            what: "deploy_confirmations",
            detail: "no free confirmation code after 8 tries".to_string(),
        }))
    }

    async fn confirmation_of(
        &self,
        request_id: &str,
    ) -> Result<Option<(Plan, String, i64)>, DeployError> {
        let row = sqlx::query(
            "SELECT code, plan, expires_at FROM deploy_confirmations WHERE request_id = $1",
        )
        .bind(request_id)
        .fetch_optional(self.inner.store.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let plan = plan_of(&row.try_get::<String, _>("plan")?)?;
        Ok(Some((
            plan,
            row.try_get("code")?,
            row.try_get("expires_at")?,
        )))
    }

    /// The plan of a deployment this request started and did not finish, if any.
    async fn started_plan(&self, request_id: &str) -> Result<Option<Plan>, DeployError> {
        let row = sqlx::query(
            "SELECT kind, service, environment, source, from_digest, to_digest, state FROM deployments WHERE id = $1",
        )
        .bind(request_id)
        .fetch_optional(self.inner.store.pool())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let service: String = row.try_get("service")?;
        let environment: String = row.try_get("environment")?;
        let service_config = self.service(&service)?;
        let env = self.environment(Some(&environment))?;
        Ok(Some(Plan {
            kind: kind_of(&row.try_get::<String, _>("kind")?),
            service,
            environment,
            repository: service_config.repository.clone(),
            tag: env.tag.clone().unwrap_or_default(),
            pipeline: env.pipeline.clone(),
            source: row.try_get("source")?,
            from_digest: row.try_get("from_digest")?,
            to_digest: row.try_get("to_digest")?,
            mr: None,
        }))
    }

    /// Records the deployment as started, moves the tag, records it done.
    async fn execute(
        &self,
        request_id: &str,
        who: &Principal,
        plan: Plan,
    ) -> Result<Step, DeployError> {
        let store = self.inner.store.pool();
        let inserted = sqlx::query(
            "INSERT INTO deployments (id, service, environment, kind, source, from_digest, to_digest, identity, person, state, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'started', $10) ON CONFLICT (id) DO NOTHING",
        )
        .bind(request_id)
        .bind(&plan.service)
        .bind(&plan.environment)
        .bind(plan.kind.as_str())
        .bind(&plan.source)
        .bind(&plan.from_digest)
        .bind(&plan.to_digest)
        .bind(&who.identity)
        .bind(&who.person)
        .bind(now_ms())
        .execute(store)
        .await?;
        let recovered = inserted.rows_affected() == 0;
        let row = sqlx::query(
            "SELECT state, created_at, pipeline_project, pipeline_id, pipeline_url FROM deployments WHERE id = $1",
        )
        .bind(request_id)
        .fetch_one(store)
        .await?;
        let state: String = row.try_get("state")?;
        if state == "done" {
            let pipeline = match (
                row.try_get::<Option<String>, _>("pipeline_project")?,
                row.try_get::<Option<i64>, _>("pipeline_id")?,
                row.try_get::<Option<String>, _>("pipeline_url")?,
            ) {
                (Some(project), Some(id), Some(web_url)) => Some(StartedPipeline {
                    project,
                    id: u64::try_from(id).unwrap_or_default(),
                    web_url,
                }),
                _ => None,
            };
            return Ok(Step::Done {
                plan,
                recovered: true,
                pipeline,
            });
        }
        let started_at: i64 = row.try_get("created_at")?;
        let (recovered, pipeline) = match plan.pipeline.clone() {
            Some(target) => {
                let (created, recovered) = self
                    .run_pipeline(request_id, started_at, &plan, &target)
                    .await?;
                (recovered, Some(created))
            }
            None => {
                self.move_tag(request_id, &plan).await?;
                (recovered, None)
            }
        };
        sqlx::query(
            "UPDATE deployments SET state = 'done', finished_at = $1, pipeline_project = $2, pipeline_id = $3, pipeline_url = $4 WHERE id = $5",
        )
        .bind(now_ms())
        .bind(pipeline.as_ref().map(|p| p.project.clone()))
        .bind(pipeline.as_ref().map(|p| i64::try_from(p.id).unwrap_or(i64::MAX)))
        .bind(pipeline.as_ref().map(|p| p.web_url.clone()))
        .bind(request_id)
        .execute(store)
        .await?;
        tracing::info!(
            request = request_id,
            service = %plan.service,
            environment = %plan.environment,
            from = plan.from_digest.as_deref().unwrap_or("-"),
            to = %plan.to_digest,
            pipeline = pipeline.as_ref().map(|p| p.web_url.as_str()).unwrap_or("-"),
            "deployed"
        );
        Ok(Step::Done {
            plan,
            recovered,
            pipeline,
        })
    }

    /// Puts the source's manifest, byte for byte, under the environment's tag.
    async fn move_tag(&self, request_id: &str, plan: &Plan) -> Result<(), DeployError> {
        let registry = &self.inner.registry;
        let Some(manifest) = registry.manifest(&plan.repository, &plan.to_digest).await? else {
            sqlx::query(
                "UPDATE deployments SET state = 'failed', detail = $1, finished_at = $2 WHERE id = $3",
            )
            .bind("the image is no longer in the registry")
            .bind(now_ms())
            .bind(request_id)
            .execute(self.inner.store.pool())
            .await?;
            return refuse(Refusal::ImageMissing {
                repository: plan.repository.clone(),
                reference: plan.to_digest.clone(),
                mr: None,
            });
        };
        registry
            .put_manifest(&plan.repository, &plan.tag, &manifest)
            .await?;
        Ok(())
    }

    /// Runs the environment's deploy pipeline for the plan, exactly once per request (the
    /// retrigger's marked create: `SHEPHERD_REQUEST_ID` is looked for before creating again).
    async fn run_pipeline(
        &self,
        request_id: &str,
        started_at: i64,
        plan: &Plan,
        target: &DeployPipeline,
    ) -> Result<(StartedPipeline, bool), DeployError> {
        let variables = deploy_variables(plan, request_id);
        let (pipeline, recovered) = self
            .inner
            .retrigger
            .create_marked(
                request_id,
                started_at,
                &target.project,
                &target.git_ref,
                &variables,
            )
            .await?;
        Ok((
            StartedPipeline {
                project: target.project.clone(),
                id: pipeline.id,
                web_url: pipeline.web_url,
            },
            recovered,
        ))
    }

    /// Counts a request's outcome. Only configured names become label values (never what someone
    /// typed): a refused request counts under the service and environment it named, if they exist
    /// (`environment: None` is the default one), else `-`.
    fn count(&self, service: &str, environment: Option<&str>, result: &Result<Step, DeployError>) {
        let config = &self.inner.config;
        let (service, env) = match result {
            Ok(step) => {
                let plan = step_plan(step);
                (plan.service.as_str(), plan.environment.as_str())
            }
            Err(_) => (
                config.service(service).map_or("-", |s| s.name.as_str()),
                config
                    .environment(environment)
                    .map_or("-", |e| e.name.as_str()),
            ),
        };
        let outcome = match result {
            Ok(Step::Done { .. }) => "done",
            Ok(Step::AlreadyThere { .. }) => "unchanged",
            Ok(Step::Would { .. }) => "would",
            Ok(Step::Confirm { .. }) => "confirmation",
            Err(DeployError::Refused(_)) => "refused",
            Err(e) if e.is_retryable() => "retry",
            Err(_) => "failed",
        };
        self.inner
            .metrics
            .deployments
            .with_label_values(&[service, env, outcome])
            .inc();
    }
}

/// DEPLOY_SERVICE, DEPLOY_IMAGE (`repository@digest`), DEPLOY_ENVIRONMENT and SHEPHERD_REQUEST_ID.
pub fn deploy_variables(plan: &Plan, request_id: &str) -> Vec<Variable> {
    let [service, image, environment] = DEPLOY_VARIABLES;
    vec![
        Variable::env(service, &plan.service),
        Variable::env(image, format!("{}@{}", plan.repository, plan.to_digest)),
        Variable::env(environment, &plan.environment),
        Variable::env(REQUEST_ID_VARIABLE, request_id),
    ]
}

/// A plan stored with its confirmation.
fn plan_of(json: &str) -> Result<Plan, DeployError> {
    serde_json::from_str(json).map_err(|e| {
        DeployError::Store(StoreError::Corrupt {
            what: "deploy_confirmations.plan",
            detail: e.to_string(),
        })
    })
}

fn step_plan(step: &Step) -> &Plan {
    match step {
        Step::Done { plan, .. }
        | Step::AlreadyThere { plan }
        | Step::Would { plan }
        | Step::Confirm { plan, .. } => plan,
    }
}

fn kind_of(text: &str) -> Kind {
    if text == "rollback" {
        Kind::Rollback
    } else {
        Kind::Deploy
    }
}

fn deployment_of(row: &sqlx::any::AnyRow) -> Result<Deployment, DeployError> {
    Ok(Deployment {
        id: row.try_get("id")?,
        kind: kind_of(&row.try_get::<String, _>("kind")?),
        service: row.try_get("service")?,
        environment: row.try_get("environment")?,
        source: row.try_get("source")?,
        from_digest: row.try_get("from_digest")?,
        to_digest: row.try_get("to_digest")?,
        identity: row.try_get("identity")?,
        person: row.try_get("person")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn new_code() -> String {
    let mut rng = rand::rng();
    (0..CODE_LENGTH)
        .map(|_| char::from(CODE_ALPHABET[rng.random_range(0..CODE_ALPHABET.len())]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_short_and_unambiguous() {
        for _ in 0..100 {
            let code = new_code();
            assert_eq!(code.len(), CODE_LENGTH);
            assert!(code.bytes().all(|b| CODE_ALPHABET.contains(&b)), "{code}");
            assert!(!code.contains(['0', 'o', '1', 'l', 'i']), "{code}");
        }
    }
}
