//! Failover switches (`[[failover]]`): a named set of CI/CD variables of a project or a group
//! that points pipelines at another cluster or lab while it is on.
//!
//! Exactly once, as reads-then-writes that check the value before writing:
//!
//! - `failover`: a switch that is off is marked `switching` together with what its variables
//!   were (the value, or that there was none) in one transaction, before any variable is
//!   touched. Then each variable is read and written only where it differs, and the switch is
//!   `on`. A crash or a redelivery in between finds `switching` and finishes with the values
//!   saved the first time (never the half-switched ones). A switch that is on already is one
//!   change, not two.
//! - `failback`: marked `restoring`, then every saved variable is put back (or deleted, when it
//!   did not exist before), and the switch and its saved values are removed: off again.
//!
//! In non-production mode both only describe what they would change.

use std::collections::BTreeMap;

use sqlx::Row;

use crate::gitlab::{CiVariable, GitLab, GitLabError, VariableOwner};
use crate::policy::Principal;
use crate::store::{Store, StoreError, now_ms};
use shepherd_config::FailoverSwitch;

/// Where a switch stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchState {
    Off,
    /// A failover started and has not finished (it is finished by its request).
    Switching,
    On,
    /// A failback started and has not finished.
    Restoring,
}

impl SwitchState {
    pub fn as_str(self) -> &'static str {
        match self {
            SwitchState::Off => "off",
            SwitchState::Switching => "switching",
            SwitchState::On => "on",
            SwitchState::Restoring => "restoring",
        }
    }

    fn parse(text: &str) -> SwitchState {
        match text {
            "switching" => SwitchState::Switching,
            "on" => SwitchState::On,
            "restoring" => SwitchState::Restoring,
            _ => SwitchState::Off,
        }
    }
}

/// A switch and its state, for `failovers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SwitchStatus {
    pub switch: FailoverSwitch,
    pub state: SwitchState,
    /// Who last changed it and when (Unix ms); `None` when off.
    pub by: Option<String>,
    pub since: Option<i64>,
}

/// One variable's change: `before` and `after` (`None`: the variable does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableChange {
    pub key: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// What a `failover` or `failback` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The variables were changed as listed (`recovered`: an earlier attempt of the same
    /// request had started it).
    Done {
        changes: Vec<VariableChange>,
        recovered: bool,
    },
    /// Non-production mode: what it would change; nothing was written.
    Would { changes: Vec<VariableChange> },
    /// `failover` of a switch that is on: nothing to do.
    AlreadyOn { by: String, since: i64 },
    /// `failback` of a switch that is off: nothing to do.
    AlreadyOff,
}

#[derive(Debug, thiserror::Error)]
pub enum FailoverError {
    #[error("there is no failover switch {name:?} (configured: {known})")]
    UnknownSwitch { name: String, known: String },
    #[error(
        "failover switch {name:?} is being {doing} by another request; try again when it is done"
    )]
    Busy { name: String, doing: &'static str },
    #[error(transparent)]
    GitLab(#[from] GitLabError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for FailoverError {
    fn from(e: sqlx::Error) -> Self {
        FailoverError::Store(e.into())
    }
}

impl FailoverError {
    /// True when the request should be tried again later.
    pub fn is_retryable(&self) -> bool {
        match self {
            FailoverError::GitLab(e) => e.is_retryable(),
            FailoverError::Store(_) => true,
            FailoverError::UnknownSwitch { .. } | FailoverError::Busy { .. } => false,
        }
    }
}

/// The configured switches, acting through GitLab and remembering in the store.
#[derive(Clone)]
pub struct Failovers {
    switches: Vec<FailoverSwitch>,
    gitlab: GitLab,
    store: Store,
}

/// The row of a switch that is not off.
struct SwitchRow {
    state: SwitchState,
    request_id: String,
    identity: String,
    person: Option<String>,
    changed_at: i64,
}

impl Failovers {
    pub fn new(switches: Vec<FailoverSwitch>, gitlab: GitLab, store: Store) -> Self {
        Failovers {
            switches,
            gitlab,
            store,
        }
    }

    /// The switch named `name` (without case).
    pub fn switch(&self, name: &str) -> Result<&FailoverSwitch, FailoverError> {
        self.switches
            .iter()
            .find(|s| s.name.eq_ignore_ascii_case(name))
            .ok_or_else(|| FailoverError::UnknownSwitch {
                name: name.to_string(),
                known: self
                    .switches
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// Every switch, in configuration order, with its state.
    pub async fn list(&self) -> Result<Vec<SwitchStatus>, StoreError> {
        let mut out = Vec::with_capacity(self.switches.len());
        for switch in &self.switches {
            let row = self.row(&switch.name).await?;
            out.push(SwitchStatus {
                switch: switch.clone(),
                state: row.as_ref().map_or(SwitchState::Off, |r| r.state),
                by: row
                    .as_ref()
                    .map(|r| r.person.clone().unwrap_or(r.identity.clone())),
                since: row.as_ref().map(|r| r.changed_at),
            });
        }
        Ok(out)
    }

    /// Turns switch `name` on for request `request_id` (see the module's rules).
    pub async fn failover(
        &self,
        request_id: &str,
        who: &Principal,
        name: &str,
        production: bool,
    ) -> Result<Change, FailoverError> {
        let switch = self.switch(name)?;
        let key = key_of(switch);
        let owner = owner_of(switch);
        let row = self.row(&key).await?;
        let recovered = match &row {
            Some(r) if r.state == SwitchState::On => {
                return Ok(Change::AlreadyOn {
                    by: r.person.clone().unwrap_or(r.identity.clone()),
                    since: r.changed_at,
                });
            }
            Some(r) if r.state == SwitchState::Restoring => {
                return Err(FailoverError::Busy {
                    name: switch.name.clone(),
                    doing: "switched back",
                });
            }
            Some(_) => true,
            None => false,
        };
        if !recovered {
            let current = by_key(self.gitlab.ci_variables(owner).await?);
            if !production {
                let wanted = switch.variables.iter().map(|(k, v)| (k, Some(v)));
                return Ok(Change::Would {
                    changes: described(wanted, &current),
                });
            }
            // What was there, saved with the mark before anything is written.
            let mut tx = self.store.begin().await?;
            let inserted = sqlx::query(
                "INSERT INTO failover_switches (name, state, request_id, identity, person, changed_at) \
                 VALUES ($1, 'switching', $2, $3, $4, $5) ON CONFLICT (name) DO NOTHING",
            )
            .bind(&key)
            .bind(request_id)
            .bind(&who.identity)
            .bind(who.person.as_deref())
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            if inserted.rows_affected() == 0 {
                // Another request got there first; it finishes the change.
                tx.rollback().await?;
                return Err(FailoverError::Busy {
                    name: switch.name.clone(),
                    doing: "switched",
                });
            }
            for var in switch.variables.keys() {
                let before = current.get(var);
                sqlx::query(
                    "INSERT INTO failover_saved (name, key, existed, value) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (name, key) DO NOTHING",
                )
                .bind(&key)
                .bind(var)
                .bind(i64::from(before.is_some()))
                .bind(before.map(String::as_str))
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        }
        let wanted: Vec<(String, Option<String>)> = switch
            .variables
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        self.apply(owner, &wanted).await?;
        sqlx::query(
            "UPDATE failover_switches SET state = 'on', changed_at = $1 WHERE name = $2 AND state = 'switching'",
        )
        .bind(now_ms())
        .bind(&key)
        .execute(self.store.pool())
        .await?;
        let saved = self.saved(&key).await?;
        let changes = wanted
            .into_iter()
            .map(|(k, after)| VariableChange {
                before: saved.get(&k).cloned().flatten(),
                key: k,
                after,
            })
            .collect();
        Ok(Change::Done { changes, recovered })
    }

    /// Turns switch `name` off for request `request_id`: its saved variables restored.
    pub async fn failback(
        &self,
        request_id: &str,
        who: &Principal,
        name: &str,
        production: bool,
    ) -> Result<Change, FailoverError> {
        let switch = self.switch(name)?;
        let key = key_of(switch);
        let owner = owner_of(switch);
        let Some(row) = self.row(&key).await? else {
            return Ok(Change::AlreadyOff);
        };
        let saved = self.saved(&key).await?;
        let restore: Vec<(String, Option<String>)> = saved.into_iter().collect();
        let recovered = row.state == SwitchState::Restoring;
        if recovered && row.request_id != request_id {
            return Err(FailoverError::Busy {
                name: switch.name.clone(),
                doing: "switched back",
            });
        }
        if !recovered {
            if !production {
                let current = by_key(self.gitlab.ci_variables(owner).await?);
                let wanted = restore.iter().map(|(k, v)| (k, v.as_ref()));
                return Ok(Change::Would {
                    changes: described(wanted, &current),
                });
            }
            let taken = sqlx::query(
                "UPDATE failover_switches SET state = 'restoring', request_id = $1, identity = $2, person = $3, changed_at = $4 \
                 WHERE name = $5 AND state = $6",
            )
            .bind(request_id)
            .bind(&who.identity)
            .bind(who.person.as_deref())
            .bind(now_ms())
            .bind(&key)
            .bind(row.state.as_str())
            .execute(self.store.pool())
            .await?;
            if taken.rows_affected() == 0 {
                return Err(FailoverError::Busy {
                    name: switch.name.clone(),
                    doing: "changed",
                });
            }
        }
        let current = self.apply(owner, &restore).await?;
        let mut tx = self.store.begin().await?;
        sqlx::query("DELETE FROM failover_saved WHERE name = $1")
            .bind(&key)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM failover_switches WHERE name = $1 AND request_id = $2")
            .bind(&key)
            .bind(request_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let changes = restore
            .into_iter()
            .map(|(k, after)| VariableChange {
                before: current.get(&k).cloned().flatten(),
                key: k,
                after,
            })
            .collect();
        Ok(Change::Done { changes, recovered })
    }

    /// Makes the owner's variables what `wanted` says (`None`: absent), reading first and
    /// writing only what differs. Returns what each was before this call.
    async fn apply(
        &self,
        owner: VariableOwner<'_>,
        wanted: &[(String, Option<String>)],
    ) -> Result<BTreeMap<String, Option<String>>, GitLabError> {
        let current = by_key(self.gitlab.ci_variables(owner).await?);
        let mut before = BTreeMap::new();
        for (key, want) in wanted {
            let have = current.get(key);
            before.insert(key.clone(), have.cloned());
            match (have, want) {
                (Some(h), Some(w)) if h == w => {}
                (None, None) => {}
                (Some(_), Some(w)) => {
                    self.gitlab.update_ci_variable(owner, key, w).await?;
                }
                (None, Some(w)) => match self.gitlab.create_ci_variable(owner, key, w).await {
                    Ok(_) => {}
                    // Created meanwhile (or by an earlier attempt whose answer was lost).
                    Err(GitLabError::BadRequest { .. }) => {
                        self.gitlab.update_ci_variable(owner, key, w).await?;
                    }
                    Err(e) => return Err(e),
                },
                (Some(_), None) => match self.gitlab.delete_ci_variable(owner, key).await {
                    Ok(()) | Err(GitLabError::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(before)
    }

    async fn row(&self, key: &str) -> Result<Option<SwitchRow>, StoreError> {
        let row = sqlx::query(
            "SELECT state, request_id, identity, person, changed_at FROM failover_switches WHERE name = $1",
        )
        .bind(key)
        .fetch_optional(self.store.pool())
        .await?;
        Ok(match row {
            Some(r) => Some(SwitchRow {
                state: SwitchState::parse(&r.try_get::<String, _>("state")?),
                request_id: r.try_get("request_id")?,
                identity: r.try_get("identity")?,
                person: r.try_get("person")?,
                changed_at: r.try_get("changed_at")?,
            }),
            None => None,
        })
    }

    /// The saved variables of switch `key`: the value before, or `None` when it did not exist.
    async fn saved(&self, key: &str) -> Result<BTreeMap<String, Option<String>>, StoreError> {
        let rows = sqlx::query("SELECT key, existed, value FROM failover_saved WHERE name = $1")
            .bind(key)
            .fetch_all(self.store.pool())
            .await?;
        let mut out = BTreeMap::new();
        for r in rows {
            let existed: i64 = r.try_get("existed")?;
            let value: Option<String> = r.try_get("value")?;
            out.insert(
                r.try_get("key")?,
                (existed != 0).then(|| value.unwrap_or_default()),
            );
        }
        Ok(out)
    }
}

/// A switch's key in the store: its name in lower case.
fn key_of(switch: &FailoverSwitch) -> String {
    switch.name.to_ascii_lowercase()
}

/// Whose variables a switch sets (validation made sure it names exactly one).
pub fn owner_of(switch: &FailoverSwitch) -> VariableOwner<'_> {
    match (&switch.project, &switch.group) {
        (Some(p), _) => VariableOwner::Project(p),
        (None, Some(g)) => VariableOwner::Group(g),
        (None, None) => VariableOwner::Project(""),
    }
}

/// What making the variables `wanted` (`None`: absent) would change from `current`.
fn described<'a>(
    wanted: impl Iterator<Item = (&'a String, Option<&'a String>)>,
    current: &BTreeMap<String, String>,
) -> Vec<VariableChange> {
    wanted
        .map(|(key, after)| VariableChange {
            key: key.clone(),
            before: current.get(key).cloned(),
            after: after.cloned(),
        })
        .collect()
}

fn by_key(vars: Vec<CiVariable>) -> BTreeMap<String, String> {
    vars.into_iter().map(|v| (v.key, v.value)).collect()
}
