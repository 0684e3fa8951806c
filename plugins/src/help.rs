//! `help [command]` and the command reference of `GET /help`, generated from every
//! plugin's declaration and the permissions in force.

use std::fmt::Write as _;

use async_trait::async_trait;
use shepherd_commands::Command;
use shepherd_core::policy::Policy;

use crate::{Call, HelpEntry, Outcome, Plugin, PluginError, Registry, Services};

pub struct Help;

static HELP: HelpEntry = HelpEntry {
    command: "help",
    usage: "help [command]",
    summary: "Lists the commands, or explains one with examples and who may use it.",
    examples: &["help", "help retrigger"],
    default_groups: &["*"],
    changes_something: false,
    queued: false,
};

fn who(policy: &Policy, command: &str) -> String {
    let groups = policy.allowed_groups(command);
    if groups.iter().any(|g| g == "*") {
        "everyone".to_string()
    } else if groups.is_empty() {
        "nobody (not configured)".to_string()
    } else {
        format!("groups {}", groups.join(", "))
    }
}

#[async_trait]
impl Plugin for Help {
    fn help(&self) -> &'static HelpEntry {
        &HELP
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let Command::Help { topic } = call.command else {
            return Err(PluginError::Refuse("help: unexpected command".into()));
        };
        let registry = &services.registry;
        let prefix = &services.prefix;
        let text = match topic
            .as_deref()
            .map(|t| t.trim_start_matches(prefix.as_str()).to_lowercase())
        {
            None => {
                let mut names: Vec<&str> = registry.entries().map(|e| e.command).collect();
                names.sort_unstable();
                format!(
                    "commands: {} — `{prefix}help <command>` for details and examples. Full reference: GET /help",
                    names.join(", ")
                )
            }
            Some(topic) => match registry.entries().find(|e| e.command == topic) {
                Some(e) => format!(
                    "{prefix}{} — {} Examples: {}. Who: {}.",
                    e.usage,
                    e.summary,
                    e.examples
                        .iter()
                        .map(|x| format!("`{prefix}{x}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    who(&services.policy, e.command)
                ),
                None if shepherd_commands::COMMAND_NAMES.contains(&topic.as_str()) => {
                    Registry::not_enabled(&topic)
                }
                None => format!("no command `{topic}`. Try `{prefix}help` for the list."),
            },
        };
        Ok(Outcome::reply(text))
    }
}

/// The whole reference as Markdown.
pub fn reference(registry: &Registry, policy: &Policy, prefix: &str, bot_name: &str) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# shepherd commands\n");
    let _ = writeln!(
        out,
        "In IRC and Matrix, start a line with `{prefix}` or `{bot_name}: `. In a GitLab comment, start a line with `@{bot_name}`. On the console, type the command.\n"
    );
    let mut entries: Vec<&HelpEntry> = registry.entries().collect();
    entries.sort_by_key(|e| e.command);
    for e in entries {
        let _ = writeln!(out, "## {}\n", e.command);
        let _ = writeln!(out, "`{}`\n", e.usage);
        let _ = writeln!(out, "{}\n", e.summary);
        let _ = writeln!(out, "Who may use it: {}.\n", who(policy, e.command));
        if e.changes_something {
            let _ = writeln!(
                out,
                "Changes something: audited; in non-production mode it only says what it would do.\n"
            );
        }
        let _ = writeln!(out, "Examples:\n");
        for x in e.examples {
            let _ = writeln!(out, "    {prefix}{x}");
        }
        let _ = writeln!(out);
    }
    let mut missing: Vec<&str> = shepherd_commands::COMMAND_NAMES
        .iter()
        .copied()
        .filter(|c| registry.get(c).is_none())
        .collect();
    missing.sort_unstable();
    if !missing.is_empty() {
        let _ = writeln!(
            out,
            "## Not enabled yet\n\n{} parse but are not built in this version.",
            missing.join(", ")
        );
    }
    out
}
