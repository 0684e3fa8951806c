//! The words for a watched pipeline's end (status, duration and failed jobs with links) and for a
//! canary run's summary: a Markdown table on GitLab, where one note is edited in place, and
//! lines elsewhere.

use shepherd_core::canary::{RowView, RunView, short_sha};
use shepherd_core::watcher::{Reporter, Watch, WatchEnd};
use shepherd_core::{Capabilities, Formatting, FrontEnds};

use crate::BotAddress;
use crate::util::human_duration;

/// Formats watch reports and canary summaries for the core watcher.
pub struct PipelineReporter {
    /// How people address the bot (summaries say how to retest).
    pub address: BotAddress,
    /// What the rooms can do: a Markdown table where the summary is a note edited in place,
    /// lines elsewhere.
    pub frontends: FrontEnds,
}

impl PipelineReporter {
    pub fn new(address: BotAddress, frontends: FrontEnds) -> Self {
        Self { address, frontends }
    }
}

impl Reporter for PipelineReporter {
    fn canary_summary(&self, run: &RunView) -> String {
        let room = self.frontends.of(&run.origin);
        if room.edits && room.formatting == Formatting::Markdown {
            self.summary_markdown(run)
        } else {
            self.summary_lines(run, &room)
        }
    }

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

fn duration(row: &RowView) -> String {
    row.duration_secs.map(human_duration).unwrap_or_default()
}

/// How far a run got: counts, and the trees that failed or were canceled.
struct Tally<'a> {
    total: usize,
    finished: usize,
    failed: Vec<&'a str>,
    canceled: Vec<&'a str>,
}

fn tally(run: &RunView) -> Tally<'_> {
    let trees = |pred: fn(&RowView) -> bool| -> Vec<&str> {
        run.rows
            .iter()
            .filter(|r| pred(r))
            .map(|r| r.tree.as_str())
            .collect()
    };
    Tally {
        total: run.rows.len(),
        finished: run.rows.iter().filter(|r| r.is_finished()).count(),
        failed: trees(|r| r.is_failure() && r.status != "canceled"),
        canceled: trees(|r| r.status == "canceled"),
    }
}

impl Tally<'_> {
    /// The verdict, once every pipeline finished.
    fn verdict(&self, retest_hint: &str) -> String {
        if !self.failed.is_empty() {
            let canceled = if self.canceled.is_empty() {
                String::new()
            } else {
                format!(
                    ", {} canceled ({})",
                    self.canceled.len(),
                    self.canceled.join(", ")
                )
            };
            format!(
                "❌ {} of {} failed ({}){canceled}. {retest_hint}",
                self.failed.len(),
                self.total,
                self.failed.join(", ")
            )
        } else if !self.canceled.is_empty() {
            format!(
                "⏹️ {} of {} canceled ({}). {retest_hint}",
                self.canceled.len(),
                self.total,
                self.canceled.join(", ")
            )
        } else {
            format!("✅ all {} canary pipelines passed.", self.total)
        }
    }
}

fn status_icon(status: &str) -> &'static str {
    match status {
        "success" => "✅",
        "failed" => "❌",
        "error" => "⚠️",
        "canceled" | "canceling" | "skipped" => "⏹️",
        "running" => "🔄",
        _ => "⏳",
    }
}

impl PipelineReporter {
    fn summary_markdown(&self, run: &RunView) -> String {
        let bot = &self.address.bot_name;
        let mr = format!("!{}", run.mr_iid);
        let mut out = format!(
            "#### Canary pipelines for {mr} at `{}`\n\n",
            short_sha(&run.head_sha)
        );
        if let Some(newer) = &run.outdated_by {
            out.push_str(&format!(
                "> ⚠️ **Outdated:** {mr} has new commits (`{}`) since these pipelines started; comment `@{bot} test` to test them.\n\n",
                short_sha(newer)
            ));
        }
        out.push_str(
            "| Tree | Reference | Canary pipeline | Status | Duration |\n|---|---|---|---|---|\n",
        );
        for row in &run.rows {
            let reference = match (row.ref_pipeline_id, &row.ref_web_url) {
                (Some(id), Some(url)) => format!("[#{id}]({url})"),
                _ => "—".to_string(),
            };
            let pipeline = match (row.pipeline_id, &row.web_url) {
                (Some(id), Some(url)) if row.attempt > 1 => {
                    format!("[#{id}]({url}) (retest {})", row.attempt - 1)
                }
                (Some(id), Some(url)) => format!("[#{id}]({url})"),
                _ => "—".to_string(),
            };
            let mut status = format!("{} {}", status_icon(&row.status), row.status);
            if let Some(error) = &row.error {
                status = format!("⚠️ not started: {}", error.replace('|', "\\|"));
            } else if !row.failed_jobs.is_empty() {
                let jobs: Vec<String> = row
                    .failed_jobs
                    .iter()
                    .map(|(name, url)| format!("[{}]({url})", name.replace('|', "\\|")))
                    .collect();
                status.push_str(&format!(": {}", jobs.join(", ")));
            }
            let took = duration(row);
            out.push_str(&format!(
                "| {} | {reference} | {pipeline} | {status} | {} |\n",
                row.tree,
                if took.is_empty() { "—" } else { &took }
            ));
        }
        let t = tally(run);
        out.push('\n');
        if t.finished < t.total {
            out.push_str(&format!(
                "_Running: {} of {} finished. This comment is updated as they progress._",
                t.finished, t.total
            ));
        } else {
            let verdict = t.verdict(&format!("Comment `@{bot} retest` to re-run them."));
            out.push_str(&format!("**Verdict:** {verdict}"));
        }
        out
    }

    /// The summary as lines; where it is edited in place (Matrix) the running pipelines say so.
    fn summary_lines(&self, run: &RunView, room: &Capabilities) -> String {
        let mr = format!("{}!{}", run.project, run.mr_iid);
        let t = tally(run);
        let mut lines = vec![format!(
            "canary of {mr} at {}: {} of {} finished {}",
            short_sha(&run.head_sha),
            t.finished,
            t.total,
            run.mr_url
        )];
        if let Some(newer) = &run.outdated_by {
            lines.push(format!(
                "outdated: {mr} has new commits ({}) since",
                short_sha(newer)
            ));
        }
        for row in &run.rows {
            let mut line = match (&row.error, row.pipeline_id, &row.web_url) {
                (Some(error), _, _) => format!("{}: not started: {error}", row.tree),
                (None, Some(id), Some(url)) => {
                    let took = duration(row);
                    let took = if took.is_empty() {
                        String::new()
                    } else {
                        format!(" {took}")
                    };
                    format!("{}: #{id} {}{took} {url}", row.tree, row.status)
                }
                _ => format!("{}: {}", row.tree, row.status),
            };
            if !row.failed_jobs.is_empty() {
                let jobs: Vec<String> = row
                    .failed_jobs
                    .iter()
                    .map(|(name, url)| format!("{name} ({url})"))
                    .collect();
                line.push_str(&format!(" — failed jobs: {}", jobs.join(", ")));
            }
            lines.push(line);
        }
        if t.finished == t.total {
            let hint = format!(
                "`{}` re-runs them.",
                self.address.show(room.style, &format!("retest {mr}"))
            );
            lines.push(format!("verdict: {}", t.verdict(&hint)));
        } else if room.edits {
            lines.push("running: this message is updated as they progress.".to_string());
        }
        lines.join("\n")
    }
}
