//! `shepherd herder check --job-url URL`: what the herder would do with one job, changing
//! nothing (only GitLab reads: the job, its earlier attempts, and the tail of its trace when a
//! matcher needs it). The judgement is `Herder::inspect`, the wording the `herder` command's.

use std::sync::Arc;

use anyhow::{Context, bail};
use shepherd_config::Config;
use shepherd_core::gitlab::GitLab;
use shepherd_core::herder::{Herder, parse_job_url};
use shepherd_core::metrics::Metrics;
use shepherd_plugins::herder::inspection_text;

/// The report printed for `job_url`.
pub async fn check(config: &Config, job_url: &str) -> anyhow::Result<String> {
    let Some(herder_config) = &config.herder else {
        bail!("the herder is not enabled: there is no [herder] section in the configuration");
    };
    let herder = Herder::new(herder_config)?;
    let (project, id) =
        parse_job_url(&config.gitlab.url, job_url).map_err(|why| anyhow::anyhow!(why))?;
    let metrics = Arc::new(Metrics::new().context("creating metrics")?);
    let gitlab = GitLab::new(crate::app::gitlab_settings(config), metrics)?;
    let inspection = herder
        .inspect(&gitlab, &project, id)
        .await
        .with_context(|| format!("reading job {id} of {project}"))?;
    Ok(format!("{}\n", inspection_text(&inspection)))
}
