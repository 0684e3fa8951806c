//! Project and group CI/CD variables (GitLab's "Project-level CI/CD variables API" and
//! "Group-level CI/CD variables API"): what a failover switch sets and restores.
//!
//! `GET|POST /projects/:id/variables`, `GET|PUT|DELETE /projects/:id/variables/:key`, and the
//! same under `/groups/:id` (a group is any namespace of a project, by id or full path). As
//! GitLab answers: the caller needs the Maintainer role (the guest token is 403); a key is
//! letters, digits and `_`, at most 255 characters; a key that exists in the same environment
//! scope is 400 `{"message":{"key":["(KEY) has already been taken"]}}`; an unknown key is 404
//! `{"message":"404 Variable Not Found"}`; when several scopes hold the key and
//! `filter[environment_scope]` does not say which, 409. Parameters come from a JSON body, a
//! form body or the query string.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::State;
use super::faults::Route;
use super::server::{json_response, message, percent_decode};

/// Whose variables: a project's (by id) or a group's (by id).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Owner {
    Project(u64),
    Group(u64),
}

/// One CI/CD variable as GitLab stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiVariable {
    pub key: String,
    pub value: String,
    /// `env_var` (the default) or `file`.
    pub variable_type: String,
    pub protected: bool,
    pub masked: bool,
    pub raw: bool,
    /// `*` (the default) for every environment.
    pub environment_scope: String,
    pub description: Option<String>,
}

impl CiVariable {
    /// An `env_var` for every environment, neither protected nor masked.
    pub fn env(key: &str, value: &str) -> CiVariable {
        CiVariable {
            key: key.to_owned(),
            value: value.to_owned(),
            variable_type: "env_var".into(),
            protected: false,
            masked: false,
            raw: false,
            environment_scope: "*".into(),
            description: None,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "variable_type": self.variable_type,
            "key": self.key,
            "value": self.value,
            "protected": self.protected,
            "masked": self.masked,
            "raw": self.raw,
            "environment_scope": self.environment_scope,
            "description": self.description,
        })
    }
}

/// Where a variables request points, from its path.
#[derive(Debug, Clone, Default)]
pub struct VariablesTarget {
    /// `projects` or `groups`.
    pub kind: &'static str,
    /// The project's or group's id or (decoded) full path.
    pub owner_ref: String,
    pub key: Option<String>,
}

/// The route and target of `/projects/:id/variables[/:key]` or `/groups/:id/variables[/:key]`.
pub fn parse(method: &str, segments: &[&str]) -> Option<(Route, VariablesTarget)> {
    let (kind, owner, rest) = match segments {
        ["projects", owner, rest @ ..] => ("projects", owner, rest),
        ["groups", owner, rest @ ..] => ("groups", owner, rest),
        _ => return None,
    };
    let (route, key) = match (method, rest) {
        ("GET", ["variables"]) => (Route::ListVariables, None),
        ("POST", ["variables"]) => (Route::CreateVariable, None),
        ("GET", ["variables", key]) => (Route::GetVariable, Some(key)),
        ("PUT", ["variables", key]) => (Route::UpdateVariable, Some(key)),
        ("DELETE", ["variables", key]) => (Route::DeleteVariable, Some(key)),
        _ => return None,
    };
    Some((
        route,
        VariablesTarget {
            kind,
            owner_ref: percent_decode(owner),
            key: key.map(|k| percent_decode(k)),
        },
    ))
}

/// A refusal: its status and GitLab's body.
type Answer = (StatusCode, Value);

/// A request's parameters as Grape reads them: the JSON body, else the form body, then the
/// query string.
pub struct Params<'a> {
    pub json: Option<&'a Value>,
    pub form: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
}

impl Params<'_> {
    fn get(&self, name: &str) -> Option<String> {
        if let Some(v) = self.json.and_then(|j| j.get(name)) {
            return match v {
                Value::String(s) => Some(s.clone()),
                Value::Bool(b) => Some(b.to_string()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            };
        }
        self.form
            .iter()
            .chain(self.query.iter())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    }

    fn flag(&self, name: &str) -> Result<Option<bool>, String> {
        match self.get(name).as_deref() {
            None => Ok(None),
            Some("true" | "1") => Ok(Some(true)),
            Some("false" | "0") => Ok(Some(false)),
            Some(_) => Err(format!("{name} is invalid")),
        }
    }
}

fn key_problem(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        Some("can't be blank")
    } else if key.chars().count() > 255 {
        Some("is too long (maximum is 255 characters)")
    } else if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Some("can contain only letters, digits and '_'.")
    } else {
        None
    }
}

impl State {
    pub(crate) fn variables_of(&self, owner: Owner) -> Vec<CiVariable> {
        self.ci_variables
            .iter()
            .filter(|(o, _)| *o == owner)
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// The group with this id or full path (any namespace of a project is a group).
    pub fn group_by_id_or_path(&self, id_or_path: &str) -> Option<(u64, String)> {
        let found = match id_or_path.parse::<u64>() {
            Ok(id) => self.groups.iter().find(|(gid, _)| *gid == id),
            Err(_) => self
                .groups
                .iter()
                .find(|(_, path)| path.eq_ignore_ascii_case(id_or_path)),
        };
        found.cloned()
    }

    /// Makes every namespace of `project_path` a group.
    pub(crate) fn ensure_groups_of(&mut self, project_path: &str) {
        let parts: Vec<&str> = project_path.split('/').collect();
        for n in 1..parts.len() {
            let path = parts[..n].join("/");
            if self.group_by_id_or_path(&path).is_none() {
                let id = 100 + self.groups.len() as u64;
                self.groups.push((id, path));
            }
        }
    }
}

/// Answers a variables request; `can_write` is the token's Maintainer role.
pub fn respond(
    state: &mut State,
    route: Route,
    target: &VariablesTarget,
    params: &Params<'_>,
    can_write: bool,
) -> Response<Body> {
    let owner = if target.kind == "projects" {
        match state.project_by_id_or_path(&target.owner_ref) {
            Some(p) => Owner::Project(p.id),
            None => return message(StatusCode::NOT_FOUND, "404 Project Not Found"),
        }
    } else {
        match state.group_by_id_or_path(&target.owner_ref) {
            Some((id, _)) => Owner::Group(id),
            None => return message(StatusCode::NOT_FOUND, "404 Group Not Found"),
        }
    };
    if !can_write {
        return message(StatusCode::FORBIDDEN, "403 Forbidden");
    }
    let scope_filter = params.get("filter[environment_scope]");
    // The one variable a key (and scope filter) names, or the answer when there is none or
    // more than one.
    let find = |state: &State, key: &str| -> Result<usize, Answer> {
        let hits: Vec<usize> = state
            .ci_variables
            .iter()
            .enumerate()
            .filter(|(_, (o, v))| {
                *o == owner
                    && v.key == key
                    && scope_filter
                        .as_deref()
                        .is_none_or(|s| v.environment_scope == s)
            })
            .map(|(i, _)| i)
            .collect();
        match hits.as_slice() {
            [i] => Ok(*i),
            [] => Err((
                StatusCode::NOT_FOUND,
                json!({ "message": "404 Variable Not Found" }),
            )),
            _ => Err((
                StatusCode::CONFLICT,
                json!({ "message": "There are multiple variables with provided parameters. Please use 'filter[environment_scope]'" }),
            )),
        }
    };
    let flags = |defaults: &CiVariable| -> Result<CiVariable, Answer> {
        let bad = |e: String| (StatusCode::BAD_REQUEST, json!({ "error": e }));
        let mut v = defaults.clone();
        if let Some(value) = params.get("value") {
            v.value = value;
        }
        if let Some(t) = params.get("variable_type") {
            if t != "env_var" && t != "file" {
                return Err(bad("variable_type does not have a valid value".into()));
            }
            v.variable_type = t;
        }
        for (name, slot) in [
            ("protected", &mut v.protected),
            ("masked", &mut v.masked),
            ("raw", &mut v.raw),
        ] {
            if let Some(b) = params.flag(name).map_err(bad)? {
                *slot = b;
            }
        }
        if let Some(s) = params.get("environment_scope") {
            v.environment_scope = s;
        }
        if let Some(d) = params.get("description") {
            v.description = Some(d);
        }
        Ok(v)
    };
    match route {
        Route::ListVariables => {
            let list: Vec<Value> = state
                .ci_variables
                .iter()
                .filter(|(o, _)| *o == owner)
                .map(|(_, v)| v.to_json())
                .collect();
            json_response(StatusCode::OK, Value::Array(list))
        }
        Route::GetVariable => {
            let key = target.key.as_deref().unwrap_or_default();
            match find(state, key) {
                Ok(i) => json_response(StatusCode::OK, state.ci_variables[i].1.to_json()),
                Err((status, body)) => json_response(status, body),
            }
        }
        Route::CreateVariable => {
            let Some(key) = params.get("key") else {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": "key is missing, value is missing" }),
                );
            };
            if params.get("value").is_none() {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": "value is missing" }),
                );
            }
            if let Some(problem) = key_problem(&key) {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({ "message": { "key": [problem] } }),
                );
            }
            let v = match flags(&CiVariable::env(&key, "")) {
                Ok(v) => v,
                Err((status, body)) => return json_response(status, body),
            };
            let taken = state.ci_variables.iter().any(|(o, existing)| {
                *o == owner
                    && existing.key == v.key
                    && existing.environment_scope == v.environment_scope
            });
            if taken {
                return json_response(
                    StatusCode::BAD_REQUEST,
                    json!({ "message": { "key": [format!("({key}) has already been taken")] } }),
                );
            }
            let body = v.to_json();
            state.ci_variables.push((owner, v));
            json_response(StatusCode::CREATED, body)
        }
        Route::UpdateVariable => {
            let key = target.key.as_deref().unwrap_or_default();
            let i = match find(state, key) {
                Ok(i) => i,
                Err((status, body)) => return json_response(status, body),
            };
            let v = match flags(&state.ci_variables[i].1) {
                Ok(v) => v,
                Err((status, body)) => return json_response(status, body),
            };
            let body = v.to_json();
            state.ci_variables[i].1 = v;
            json_response(StatusCode::OK, body)
        }
        Route::DeleteVariable => {
            let key = target.key.as_deref().unwrap_or_default();
            match find(state, key) {
                Ok(i) => {
                    state.ci_variables.remove(i);
                    Response::builder()
                        .status(StatusCode::NO_CONTENT)
                        .body(Body::empty())
                        .unwrap_or_default()
                }
                Err((status, body)) => json_response(status, body),
            }
        }
        _ => json_response(StatusCode::NOT_FOUND, json!({ "error": "404 Not Found" })),
    }
}
