//! The words for a watched pipeline's end: status, duration and failed jobs with links.

use shepherd_core::watcher::{Reporter, Watch, WatchEnd};

use crate::util::human_duration;

/// Formats watch reports for the core watcher.
pub struct PipelineReporter;

impl Reporter for PipelineReporter {
    fn report(&self, w: &Watch, end: &WatchEnd) -> String {
        match end {
            WatchEnd::Finished {
                pipeline,
                failed_jobs,
            } => {
                let took = pipeline
                    .duration
                    .map(|d| format!(" after {}", human_duration(d.max(0.0) as u64)))
                    .unwrap_or_default();
                let mut line = format!(
                    "pipeline {} of {} finished: {}{took} {}",
                    pipeline.id,
                    w.project,
                    pipeline.status.as_str(),
                    pipeline.web_url
                );
                if !failed_jobs.is_empty() {
                    let jobs = failed_jobs
                        .iter()
                        .map(|j| format!("{} ({})", j.name, j.web_url))
                        .collect::<Vec<_>>()
                        .join(", ");
                    line.push_str(&format!(" — failed jobs: {jobs}"));
                }
                line
            }
            WatchEnd::Lost { reason } => format!(
                "stopped watching pipeline {} of {} ({}): {reason}",
                w.pipeline_id, w.project, w.web_url
            ),
        }
    }
}
