//! Project and group CI/CD variables (GitLab's "Project-level CI/CD variables API" and
//! "Group-level CI/CD variables API"): what a failover switch reads, sets and restores. Only
//! the variables for every environment (`environment_scope` `*`) are touched: each key is
//! addressed with `filter[environment_scope]=*`, so a key that also has scoped values elsewhere
//! is never ambiguous (GitLab would answer 409).

use reqwest::Method;
use serde::Deserialize;

use serde_json::json;

use super::{
    GitLab, GitLabError, MAX_PAGES, PAGE_SIZE, Repeat, decode, json_body, next_page,
    project_segment,
};

/// Whose variables: a project's or a group's, by full path (or numeric id).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariableOwner<'a> {
    Project(&'a str),
    Group(&'a str),
}

impl VariableOwner<'_> {
    fn segments(&self) -> [&str; 2] {
        match self {
            VariableOwner::Project(p) => ["projects", project_segment(p)],
            VariableOwner::Group(g) => ["groups", project_segment(g)],
        }
    }

    fn what(&self) -> String {
        match self {
            VariableOwner::Project(p) => format!("project {}", project_segment(p)),
            VariableOwner::Group(g) => format!("group {}", project_segment(g)),
        }
    }
}

/// A CI/CD variable as GitLab lists it (the fields shepherd reads).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CiVariable {
    pub key: String,
    pub value: String,
    #[serde(default = "every_environment")]
    pub environment_scope: String,
}

fn every_environment() -> String {
    "*".to_string()
}

impl GitLab {
    /// `GET /projects/:id/variables` (or `/groups/:id/variables`), every page: the owner's
    /// variables for every environment (`*`). A missing project or group is `NotFound`.
    pub async fn ci_variables(
        &self,
        owner: VariableOwner<'_>,
    ) -> Result<Vec<CiVariable>, GitLabError> {
        let [kind, id] = owner.segments();
        let mut all = Vec::new();
        let mut page = 1u32;
        loop {
            let mut url = self.url(&[kind, id, "variables"]);
            url.query_pairs_mut()
                .append_pair("per_page", &PAGE_SIZE.to_string())
                .append_pair("page", &page.to_string());
            let call = self.get("GET /:owner/:id/variables", url, owner.what());
            let reply = self.execute(&call).await?;
            let mut batch: Vec<CiVariable> = decode(&call, &reply.body)?;
            all.append(&mut batch);
            match next_page(&reply, page) {
                Some(next) if page < MAX_PAGES => page = next,
                _ => break,
            }
        }
        all.retain(|v| v.environment_scope == "*");
        Ok(all)
    }

    /// `POST /:owner/:id/variables`: a new variable for every environment. Not idempotent: an
    /// ambiguous failure is not repeated here (a repeat that finds the key answers 400 "has
    /// already been taken"); the caller reads the variables again to see whether it took.
    pub async fn create_ci_variable(
        &self,
        owner: VariableOwner<'_>,
        key: &str,
        value: &str,
    ) -> Result<CiVariable, GitLabError> {
        let [kind, id] = owner.segments();
        let body = json!({ "key": key, "value": value, "environment_scope": "*" });
        let call = Self::write(
            Method::POST,
            "POST /:owner/:id/variables",
            self.url(&[kind, id, "variables"]),
            Some(json_body(&body, "the variable")?),
            Repeat::OnlyIfNoEffect,
            owner.what(),
        );
        self.call_json(&call).await
    }

    /// `PUT /:owner/:id/variables/:key`: sets an existing variable's value (idempotent, so
    /// retried like a read). A key that does not exist is `NotFound`.
    pub async fn update_ci_variable(
        &self,
        owner: VariableOwner<'_>,
        key: &str,
        value: &str,
    ) -> Result<CiVariable, GitLabError> {
        let call = Self::write(
            Method::PUT,
            "PUT /:owner/:id/variables/:key",
            self.variable_url(owner, key),
            Some(json_body(&json!({ "value": value }), "the variable")?),
            Repeat::Safe,
            format!("variable {key} of {}", owner.what()),
        );
        self.call_json(&call).await
    }

    /// `DELETE /:owner/:id/variables/:key` (idempotent). A key that is already gone is
    /// `NotFound`, which a caller undoing its own change may take as done.
    pub async fn delete_ci_variable(
        &self,
        owner: VariableOwner<'_>,
        key: &str,
    ) -> Result<(), GitLabError> {
        let call = Self::write(
            Method::DELETE,
            "DELETE /:owner/:id/variables/:key",
            self.variable_url(owner, key),
            None,
            Repeat::Safe,
            format!("variable {key} of {}", owner.what()),
        );
        self.execute(&call).await.map(|_| ())
    }

    /// `/:owner/:id/variables/:key`, for the variable of every environment.
    fn variable_url(&self, owner: VariableOwner<'_>, key: &str) -> url::Url {
        let [kind, id] = owner.segments();
        let mut url = self.url(&[kind, id, "variables", key]);
        url.query_pairs_mut()
            .append_pair("filter[environment_scope]", "*");
        url
    }
}
