//! The words of relayed alerts: one line per alert from the configured MiniJinja templates
//! (firing and resolved each their own), the severity shown as a tag (mIRC colours on IRC), a
//! link to the alert's generator and to a pre-filled silence form; and storm safety: a group
//! with more alerts for a room than the threshold becomes one summary line and its first few.

use std::collections::BTreeMap;

use minijinja::{Environment, Value, context};
use serde::Serialize;
use shepherd_core::Formatting;
use shepherd_core::alerts::{Alert, Labels, Notification};

#[derive(Debug, Clone)]
pub struct AlertWording {
    pub firing_template: String,
    pub resolved_template: String,
    /// One line per notification and room (from `group_template`) instead of one per alert.
    pub per_group: bool,
    pub group_template: String,
    pub storm_threshold: usize,
    pub storm_shown: usize,
}

#[derive(Debug, thiserror::Error)]
#[error("alert template {which}: {detail}")]
pub struct TemplateError {
    pub which: &'static str,
    pub detail: String,
}

/// Renders alert lines; built once at start (the templates are compiled then).
pub struct AlertFormatter {
    env: Environment<'static>,
    per_group: bool,
    storm_threshold: usize,
    storm_shown: usize,
}

/// At most this many alert names in a group line.
const GROUP_NAMES: usize = 5;

/// What a template sees as `alert`.
#[derive(Serialize)]
struct AlertView<'a> {
    status: &'a str,
    labels: &'a Labels,
    annotations: &'a Labels,
    starts_at: &'a str,
    ends_at: &'a str,
    generator_url: &'a str,
    fingerprint: &'a str,
    severity: &'a str,
    silence_url: String,
    /// Read by the `severity` filter: colours only on IRC.
    irc: bool,
}

impl<'a> AlertView<'a> {
    fn new(n: &Notification, a: &'a Alert, irc: bool) -> Self {
        Self {
            status: &a.status,
            labels: &a.labels,
            annotations: &a.annotations,
            starts_at: &a.starts_at,
            ends_at: &a.ends_at,
            generator_url: &a.generator_url,
            fingerprint: &a.fingerprint,
            severity: a.labels.get("severity").map(String::as_str).unwrap_or(""),
            silence_url: silence_url(&n.external_url, &a.labels),
            irc,
        }
    }
}

/// `{alertname=DiskFull, team=db}`: a notification's group labels, for lines.
fn group_label(n: &Notification) -> String {
    format!(
        "{{{}}}",
        n.group_labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// What a template sees as `notification`.
#[derive(Serialize)]
struct NotificationView<'a> {
    status: &'a str,
    receiver: &'a str,
    group_labels: &'a BTreeMap<String, String>,
    common_labels: &'a BTreeMap<String, String>,
    external_url: &'a str,
    /// Alertmanager's list of alerts (empty without an external URL).
    alerts_url: String,
    /// The highest severity among the room's alerts (for the `severity` filter).
    severity: &'a str,
    irc: bool,
}

impl<'a> NotificationView<'a> {
    fn new(n: &'a Notification, severity: &'a str, irc: bool) -> Self {
        Self {
            status: &n.status,
            receiver: &n.receiver,
            group_labels: &n.group_labels,
            common_labels: &n.common_labels,
            external_url: &n.external_url,
            alerts_url: if n.external_url.is_empty() {
                String::new()
            } else {
                format!("{}/#/alerts", n.external_url.trim_end_matches('/'))
            },
            severity,
            irc,
        }
    }
}

/// Severities, most urgent first, for the severity of a group.
const SEVERITY_ORDER: &[&str] = &["page", "critical", "error", "warning", "info", "notice"];

fn highest_severity<'a>(alerts: &[&'a Alert]) -> &'a str {
    alerts
        .iter()
        .filter_map(|a| a.labels.get("severity").map(String::as_str))
        .min_by_key(|s| {
            SEVERITY_ORDER
                .iter()
                .position(|o| o == s)
                .unwrap_or(SEVERITY_ORDER.len())
        })
        .unwrap_or("")
}

const IRC_BOLD: char = '\u{2}';
const IRC_COLOUR: char = '\u{3}';
const IRC_RESET: char = '\u{f}';

/// The severity tag of an alert: `[CRITICAL]`, `[RESOLVED]`; coloured for IRC.
fn severity_tag(status: &str, severity: &str, irc: bool) -> String {
    let (text, colour) = if status == "resolved" {
        ("RESOLVED".to_string(), "03")
    } else {
        let text = if severity.is_empty() {
            "FIRING".to_string()
        } else {
            severity.to_uppercase()
        };
        let colour = match severity {
            "critical" | "page" | "error" => "04",
            "warning" => "07",
            "info" | "notice" => "12",
            _ => "06",
        };
        (text, colour)
    };
    if irc {
        format!("{IRC_BOLD}{IRC_COLOUR}{colour}[{text}]{IRC_RESET}")
    } else {
        format!("[{text}]")
    }
}

/// Alertmanager's silence form, pre-filled with the alert's labels.
fn silence_url(external_url: &str, labels: &Labels) -> String {
    if external_url.is_empty() {
        return String::new();
    }
    let filter = format!(
        "{{{}}}",
        labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", v.replace('\\', "\\\\").replace('"', "\\\"")))
            .collect::<Vec<_>>()
            .join(",")
    );
    let encoded: String = url::form_urlencoded::byte_serialize(filter.as_bytes()).collect();
    format!(
        "{}/#/silences/new?filter={encoded}",
        external_url.trim_end_matches('/')
    )
}

/// One line: control characters other than IRC formatting become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c == '\n' || c == '\r' || c == '\t' {
                ' '
            } else {
                c
            }
        })
        .collect::<String>()
        .trim()
        .to_string()
}

impl AlertFormatter {
    pub fn new(w: &AlertWording) -> Result<Self, TemplateError> {
        let mut env = Environment::new();
        env.add_filter("severity", |alert: Value| -> String {
            let get = |k: &str| -> String {
                alert
                    .get_attr(k)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            };
            // `irc` is set per render (see `alert_line`).
            let irc = alert.get_attr("irc").ok().is_some_and(|v| v.is_true());
            severity_tag(&get("status"), &get("severity"), irc)
        });
        env.add_template_owned("firing", w.firing_template.clone())
            .map_err(|e| TemplateError {
                which: "alerts.firing_template",
                detail: e.to_string(),
            })?;
        env.add_template_owned("resolved", w.resolved_template.clone())
            .map_err(|e| TemplateError {
                which: "alerts.resolved_template",
                detail: e.to_string(),
            })?;
        env.add_template_owned("group", w.group_template.clone())
            .map_err(|e| TemplateError {
                which: "alerts.group_template",
                detail: e.to_string(),
            })?;
        Ok(Self {
            env,
            per_group: w.per_group,
            storm_threshold: w.storm_threshold.max(1),
            storm_shown: w.storm_shown,
        })
    }

    fn alert_line(&self, n: &Notification, a: &Alert, irc: bool) -> String {
        let view = AlertView::new(n, a, irc);
        let alert = Value::from(minijinja::value::Serde(&view));
        let notification = Value::from(minijinja::value::Serde(NotificationView::new(
            n,
            view.severity,
            irc,
        )));
        let name = if a.status == "resolved" {
            "resolved"
        } else {
            "firing"
        };
        let rendered = self
            .env
            .get_template(name)
            .and_then(|t| t.render(context! { alert => alert, notification => notification }));
        match rendered {
            Ok(text) => one_line(&text),
            Err(e) => {
                tracing::warn!(error = %e, alert = ?a.labels.get("alertname"), "alert template failed; using the plain line");
                format!(
                    "{} {} {}",
                    severity_tag(&a.status, view.severity, irc),
                    a.labels
                        .get("alertname")
                        .map(String::as_str)
                        .unwrap_or("alert"),
                    a.generator_url
                )
            }
        }
    }

    /// One line for the room's alerts of a notification.
    fn group_line(&self, n: &Notification, alerts: &[&Alert], irc: bool) -> String {
        let severity = highest_severity(alerts);
        let mut names: Vec<&str> = Vec::new();
        for a in alerts {
            let name = a.labels.get("alertname").map(String::as_str).unwrap_or("?");
            if !names.contains(&name) {
                names.push(name);
            }
        }
        let shown = if names.len() > GROUP_NAMES {
            format!(
                "{} and {} more",
                names[..GROUP_NAMES].join(", "),
                names.len() - GROUP_NAMES
            )
        } else {
            names.join(", ")
        };
        let group = group_label(n);
        let views: Vec<Value> = alerts
            .iter()
            .map(|a| Value::from(minijinja::value::Serde(AlertView::new(n, a, irc))))
            .collect();
        let notification = Value::from(minijinja::value::Serde(NotificationView::new(
            n, severity, irc,
        )));
        let rendered = self.env.get_template("group").and_then(|t| {
            t.render(context! {
                notification => notification,
                alerts => views,
                count => alerts.len(),
                group => group.clone(),
                names => shown.clone(),
            })
        });
        match rendered {
            Ok(text) => one_line(&text),
            Err(e) => {
                tracing::warn!(error = %e, "alert group template failed; using the plain line");
                format!(
                    "{} {} alert(s) {} in {group}: {shown}",
                    severity_tag(&n.status, severity, irc),
                    alerts.len(),
                    n.status
                )
            }
        }
    }

    /// The lines for one room, written for its front end's `formatting` (severity colours where
    /// it shows them): one per alert (a storm: a summary line and the first few), or one for the
    /// group.
    pub fn lines(
        &self,
        formatting: Formatting,
        n: &Notification,
        alerts: &[&Alert],
    ) -> Vec<String> {
        let irc = formatting.colours();
        if self.per_group {
            return vec![self.group_line(n, alerts, irc)];
        }
        if alerts.len() <= self.storm_threshold && n.truncated_alerts == 0 {
            return alerts.iter().map(|a| self.alert_line(n, a, irc)).collect();
        }
        let firing = alerts.iter().filter(|a| a.status != "resolved").count();
        let resolved = alerts.len() - firing;
        let group = if n.group_labels.is_empty() {
            String::new()
        } else {
            format!(" in {}", group_label(n))
        };
        let truncated = if n.truncated_alerts > 0 {
            format!(" (+{} Alertmanager left out)", n.truncated_alerts)
        } else {
            String::new()
        };
        let shown = self.storm_shown.min(alerts.len());
        let list = if n.external_url.is_empty() {
            String::new()
        } else {
            format!(" all: {}/#/alerts", n.external_url.trim_end_matches('/'))
        };
        let mut lines = vec![one_line(&format!(
            "{} alert storm{group}: {firing} firing, {resolved} resolved{truncated}; the first {shown} follow.{list}",
            severity_tag(
                if firing > 0 { "firing" } else { "resolved" },
                n.common_labels
                    .get("severity")
                    .map(String::as_str)
                    .unwrap_or(""),
                irc
            ),
        ))];
        lines.extend(
            alerts
                .iter()
                .take(shown)
                .map(|a| self.alert_line(n, a, irc)),
        );
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wording(threshold: usize) -> AlertWording {
        AlertWording {
            firing_template: shepherd_config::DEFAULT_FIRING_TEMPLATE.to_string(),
            resolved_template: shepherd_config::DEFAULT_RESOLVED_TEMPLATE.to_string(),
            per_group: false,
            group_template: shepherd_config::DEFAULT_GROUP_TEMPLATE.to_string(),
            storm_threshold: threshold,
            storm_shown: 2,
        }
    }

    fn alert(name: &str, status: &str, severity: &str) -> Alert {
        let mut labels = BTreeMap::new();
        labels.insert("alertname".to_string(), name.to_string());
        labels.insert("instance".to_string(), "db1:9100".to_string());
        labels.insert("severity".to_string(), severity.to_string());
        let mut annotations = BTreeMap::new();
        annotations.insert("summary".to_string(), format!("{name} on db1\nsecond line"));
        Alert {
            status: status.into(),
            labels: labels.into(),
            annotations: annotations.into(),
            starts_at: "2026-11-25T07:47:20Z".into(),
            ends_at: String::new(),
            generator_url: "http://prom:9090/graph".into(),
            fingerprint: name.into(),
        }
    }

    fn notification(alerts: Vec<Alert>) -> Notification {
        Notification {
            version: "4".into(),
            group_key: "{}:{alertname=\"DiskFull\"}".into(),
            truncated_alerts: 0,
            status: "firing".into(),
            receiver: "shepherd".into(),
            group_labels: BTreeMap::from([("alertname".to_string(), "DiskFull".to_string())]),
            common_labels: BTreeMap::new(),
            common_annotations: BTreeMap::new(),
            external_url: "http://am:9093".into(),
            alerts,
        }
    }

    #[test]
    fn a_firing_line_has_severity_links_and_no_newline() {
        let f = AlertFormatter::new(&wording(10)).expect("templates");
        let n = notification(vec![alert("DiskFull", "firing", "critical")]);
        let refs: Vec<&Alert> = n.alerts.iter().collect();
        let irc = f.lines(Formatting::Mirc, &n, &refs);
        assert_eq!(irc.len(), 1);
        assert!(irc[0].starts_with("\u{2}\u{3}04[CRITICAL]\u{f} DiskFull on db1:9100: DiskFull on db1 second line http://prom:9090/graph silence: http://am:9093/#/silences/new?filter="), "{:?}", irc[0]);
        assert!(irc[0].contains("alertname%3D%22DiskFull%22"), "{}", irc[0]);
        let plain = f.lines(Formatting::Markdown, &n, &refs);
        assert!(plain[0].starts_with("[CRITICAL] DiskFull"), "{}", plain[0]);
    }

    #[test]
    fn resolved_alerts_use_their_own_template() {
        let f = AlertFormatter::new(&wording(10)).expect("templates");
        let n = notification(vec![alert("DiskFull", "resolved", "critical")]);
        let refs: Vec<&Alert> = n.alerts.iter().collect();
        let lines = f.lines(Formatting::Plain, &n, &refs);
        assert_eq!(
            lines,
            ["[RESOLVED] DiskFull on db1:9100: DiskFull on db1 second line"]
        );
    }

    #[test]
    fn a_storm_is_one_summary_and_the_first_few() {
        let f = AlertFormatter::new(&wording(3)).expect("templates");
        let alerts: Vec<Alert> = (0..50)
            .map(|i| alert(&format!("A{i}"), "firing", "warning"))
            .collect();
        let n = notification(alerts);
        let refs: Vec<&Alert> = n.alerts.iter().collect();
        let lines = f.lines(Formatting::Plain, &n, &refs);
        assert_eq!(lines.len(), 3, "{lines:#?}");
        assert!(lines[0].contains("alert storm in {alertname=DiskFull}: 50 firing, 0 resolved; the first 2 follow. all: http://am:9093/#/alerts"), "{}", lines[0]);
        assert!(lines[1].contains("A0") && lines[2].contains("A1"));
    }

    #[test]
    fn a_group_is_one_line_with_its_highest_severity() {
        let mut w = wording(3);
        w.per_group = true;
        let f = AlertFormatter::new(&w).expect("templates");
        let mut alerts: Vec<Alert> = (0..8)
            .map(|i| alert(&format!("A{i}"), "firing", "warning"))
            .collect();
        alerts.push(alert("A0", "firing", "critical"));
        let n = notification(alerts);
        let refs: Vec<&Alert> = n.alerts.iter().collect();
        let irc = f.lines(Formatting::Mirc, &n, &refs);
        assert_eq!(
            irc,
            [
                "\u{2}\u{3}04[CRITICAL]\u{f} 9 alert(s) firing in {alertname=DiskFull}: A0, A1, A2, A3, A4 and 3 more http://am:9093/#/alerts"
            ]
        );
    }

    #[test]
    fn a_bad_template_is_refused_naming_its_key() {
        let mut w = wording(3);
        w.firing_template = "{{ alert.labels ".into();
        let err = AlertFormatter::new(&w).err().expect("refused");
        assert_eq!(err.which, "alerts.firing_template");
    }
}

/// `alerts [filter]`, `silence <matchers> for <duration> [reason]` and `unsilence <id>`,
/// through Alertmanager's API.
pub mod commands {
    use std::time::Duration;

    use async_trait::async_trait;
    use shepherd_commands::{Command, MatchOp as CmdOp, Matcher as CmdMatcher};
    use shepherd_core::alerts::{Alertmanager, AlertmanagerError, MatchOp, Matcher, NewSilence};
    use shepherd_core::audit::AuditOutcome;

    use crate::{Call, HelpEntry, Outcome, Plugin, PluginError, Services};

    /// At most this many alerts are listed in a reply.
    const LIST_MAX: usize = 15;

    pub struct Alerts;
    pub struct SilencePlugin;
    pub struct Unsilence;

    static ALERTS: HelpEntry = HelpEntry {
        command: "alerts",
        summary: "Lists the alerts firing now (not silenced), optionally only those matching Alertmanager matchers.",
        examples: &[
            "alerts",
            "alerts severity=critical",
            "alerts alertname=~\"Disk.*\"",
        ],
        comment_examples: &[],
        default_groups: &["*"],
        changes_something: false,
        queued: true,
    };

    static SILENCE: HelpEntry = HelpEntry {
        command: "silence",
        summary: "Creates an Alertmanager silence (you are its creator) and says its id and end.",
        examples: &[
            "silence alertname=DiskFull for 1h maintenance",
            "silence alertname=DiskFull instance=~\"db.*\" for 30m replacing disks",
        ],
        comment_examples: &[],
        default_groups: &["admins", "developers"],
        changes_something: true,
        queued: true,
    };

    static UNSILENCE: HelpEntry = HelpEntry {
        command: "unsilence",
        summary: "Expires an Alertmanager silence.",
        examples: &["unsilence 8a1b6f47-3c5d-4e2f-9a10-2b3c4d5e6f70"],
        comment_examples: &[],
        default_groups: &["admins", "developers"],
        changes_something: true,
        queued: true,
    };

    const NO_ALERTMANAGER: &str = "no Alertmanager is configured here (alerts.alertmanager_url)";

    fn client(services: &Services) -> Result<&Alertmanager, PluginError> {
        services
            .alertmanager
            .as_ref()
            .ok_or_else(|| PluginError::Refuse(NO_ALERTMANAGER.to_string()))
    }

    /// Without an Alertmanager the dispatcher answers at once instead of queueing.
    fn unavailable(services: &Services) -> Option<String> {
        services
            .alertmanager
            .is_none()
            .then(|| NO_ALERTMANAGER.to_string())
    }

    fn error(e: AlertmanagerError) -> PluginError {
        if e.is_retryable() {
            PluginError::Retry(e.to_string())
        } else {
            PluginError::Refuse(e.to_string())
        }
    }

    fn matchers(list: &[CmdMatcher]) -> Result<Vec<Matcher>, PluginError> {
        list.iter()
            .map(|m| {
                let op = match m.op {
                    CmdOp::Eq => MatchOp::Eq,
                    CmdOp::NotEq => MatchOp::NotEq,
                    CmdOp::Regex => MatchOp::Regex,
                    CmdOp::NotRegex => MatchOp::NotRegex,
                };
                Matcher::new(&m.name, op, &m.value).map_err(|e| PluginError::Refuse(e.to_string()))
            })
            .collect()
    }

    fn when(t: chrono::DateTime<chrono::Utc>) -> String {
        t.format("%Y-%m-%d %H:%M UTC").to_string()
    }

    #[async_trait]
    impl Plugin for Alerts {
        fn help(&self) -> &'static HelpEntry {
            &ALERTS
        }

        fn unavailable(&self, services: &Services) -> Option<String> {
            unavailable(services)
        }

        async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
            let Command::Alerts { filter } = call.command else {
                return Err(PluginError::Refuse("alerts: unexpected command".into()));
            };
            let am = client(services)?;
            let filter = matchers(filter)?;
            let alerts = am.alerts(&filter).await.map_err(error)?;
            if alerts.is_empty() {
                return Ok(Outcome::reply(if filter.is_empty() {
                    "no alerts are firing.".to_string()
                } else {
                    "no firing alert matches.".to_string()
                }));
            }
            let mut lines = vec![format!("{} alert(s) firing:", alerts.len())];
            for a in alerts.iter().take(LIST_MAX) {
                let name = a.labels.get("alertname").map(String::as_str).unwrap_or("?");
                let severity = a
                    .labels
                    .get("severity")
                    .map(|s| format!("[{}] ", s.to_uppercase()))
                    .unwrap_or_default();
                let rest: Vec<String> = a
                    .labels
                    .iter()
                    .filter(|(k, _)| *k != "alertname" && *k != "severity")
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let summary = a
                    .annotations
                    .get("summary")
                    .map(|s| format!(": {s}"))
                    .unwrap_or_default();
                lines.push(format!(
                    "{severity}{name} {{{}}} since {}{summary}",
                    rest.join(", "),
                    when(a.starts_at)
                ));
            }
            if alerts.len() > LIST_MAX {
                lines.push(format!(
                    "… and {} more: {}/#/alerts",
                    alerts.len() - LIST_MAX,
                    am.url().as_str().trim_end_matches('/')
                ));
            }
            Ok(Outcome::reply(lines.join("\n")))
        }
    }

    #[async_trait]
    impl Plugin for SilencePlugin {
        fn help(&self) -> &'static HelpEntry {
            &SILENCE
        }

        fn unavailable(&self, services: &Services) -> Option<String> {
            unavailable(services)
        }

        async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
            let Command::Silence {
                matchers: list,
                duration_secs,
                duration_text,
                reason,
            } = call.command
            else {
                return Err(PluginError::Refuse("silence: unexpected command".into()));
            };
            let am = client(services)?;
            let list = matchers(list)?;
            if list.is_empty() {
                return Err(PluginError::Refuse(
                    "a silence needs at least one matcher, e.g. alertname=DiskFull".into(),
                ));
            }
            if list
                .iter()
                .all(|m| m.matches(&shepherd_core::alerts::Labels::default()))
            {
                return Err(PluginError::Refuse(
                    "these matchers also match an alert with no labels at all, so they would silence everything; name something to match".into(),
                ));
            }
            let shown: Vec<String> = list.iter().map(ToString::to_string).collect();
            let who = match &call.principal.person {
                Some(p) => format!("{p} ({})", call.principal.identity),
                None => call.principal.identity.clone(),
            };
            if !services.production {
                return Ok(Outcome {
                    replies: vec![format!(
                        "non-production mode: would silence {} for {duration_text} as {who} — nothing was created.",
                        shown.join(" ")
                    )],
                    audit: Some((
                        AuditOutcome::Would,
                        format!("would silence {}", shown.join(" ")),
                    )),
                    ..Outcome::default()
                });
            }
            let comment = reason
                .clone()
                .unwrap_or_else(|| format!("silenced from chat by {who}"));
            let silence = am
                .create_silence(&NewSilence {
                    matchers: &list,
                    duration: Duration::from_secs(*duration_secs),
                    created_by: &who,
                    comment: &comment,
                    request_id: call.request_id,
                })
                .await
                .map_err(error)?;
            Ok(Outcome {
                replies: vec![format!(
                    "silenced {} until {} ({duration_text}): silence {} — `unsilence {}` ends it.",
                    shown.join(" "),
                    when(silence.ends_at),
                    silence.id,
                    silence.id
                )],
                audit: Some((
                    AuditOutcome::Done,
                    format!("silence {} for {}", silence.id, shown.join(" ")),
                )),
                ..Outcome::default()
            })
        }
    }

    #[async_trait]
    impl Plugin for Unsilence {
        fn help(&self) -> &'static HelpEntry {
            &UNSILENCE
        }

        fn unavailable(&self, services: &Services) -> Option<String> {
            unavailable(services)
        }

        async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
            let Command::Unsilence { id } = call.command else {
                return Err(PluginError::Refuse("unsilence: unexpected command".into()));
            };
            let am = client(services)?;
            let silence = am.silence(id).await.map_err(error)?;
            if silence.status.state == "expired" {
                return Ok(Outcome::reply(format!(
                    "silence {id} has already ended ({}).",
                    when(silence.ends_at)
                )));
            }
            if !services.production {
                return Ok(Outcome {
                    replies: vec![format!(
                        "non-production mode: would end silence {id} (by {}: {}) — nothing was changed.",
                        silence.created_by, silence.comment
                    )],
                    audit: Some((AuditOutcome::Would, format!("would expire silence {id}"))),
                    ..Outcome::default()
                });
            }
            am.expire_silence(id).await.map_err(error)?;
            Ok(Outcome {
                replies: vec![format!(
                    "silence {id} ended (it was created by {}).",
                    silence.created_by
                )],
                audit: Some((AuditOutcome::Done, format!("expired silence {id}"))),
                ..Outcome::default()
            })
        }
    }
}
