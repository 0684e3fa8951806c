//! `help [command]` and the command reference of `GET /help`, generated from every
//! plugin's declaration, the command language's usage lines and the permissions in force.
//! Commands are shown the way the asker's front end addresses the bot: `!ping` on IRC,
//! `shepherd: ping` in Matrix, `@shepherd ping` in a merge-request comment, `ping` on the console.

use std::fmt::Write as _;

use async_trait::async_trait;
use shepherd_commands::Command;
use shepherd_core::policy::Policy;
use shepherd_core::{CommandStyle, FrontEnds};

use crate::{BotAddress, Call, HelpEntry, Outcome, Plugin, PluginError, Registry, Services};

pub struct Help;

static HELP: HelpEntry = HelpEntry {
    command: "help",
    summary: "Lists the commands, or explains one with examples and who may use it.",
    examples: &["help", "help retrigger"],
    comment_examples: &[],
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

/// The usage line of a command: the command language's own.
fn usage(entry: &HelpEntry) -> &'static str {
    shepherd_commands::usage(entry.command).unwrap_or(entry.command)
}

/// A command's examples as typed on a front end of `style`: its own examples in that style,
/// then those that only work in a merge-request comment, as comment commands.
fn examples(entry: &HelpEntry, address: &BotAddress, style: CommandStyle) -> Vec<String> {
    let comment = |x: &&str| {
        let shown = address.show(CommandStyle::Mention, x);
        if style == CommandStyle::Mention {
            shown
        } else {
            format!("{shown} (in a merge request comment)")
        }
    };
    entry
        .examples
        .iter()
        .map(|x| address.show(style, x))
        .chain(entry.comment_examples.iter().map(comment))
        .collect()
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
        let address = &services.address;
        let style = services.frontends.of(call.origin).style;
        let show = |command: &str| address.show(style, command);
        let topic = topic.as_deref().map(|t| {
            t.trim_start_matches('@')
                .trim_start_matches(address.prefix.as_str())
                .to_lowercase()
        });
        let text = match topic {
            None => {
                let mut names: Vec<&str> = registry.entries().map(|e| e.command).collect();
                names.sort_unstable();
                format!(
                    "commands: {} — `{}` for details and examples. Full reference: GET /help",
                    names.join(", "),
                    show("help <command>")
                )
            }
            Some(topic) => match registry.entries().find(|e| e.command == topic) {
                Some(e) => format!(
                    "{} — {} Examples: {}. Who: {}.",
                    show(usage(e)),
                    e.summary,
                    examples(e, address, style)
                        .iter()
                        .map(|x| format!("`{x}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    who(&services.policy, e.command)
                ),
                None if shepherd_commands::COMMAND_NAMES.contains(&topic.as_str()) => {
                    Registry::not_enabled(&topic)
                }
                None => format!("no command `{topic}`. Try `{}` for the list.", show("help")),
            },
        };
        Ok(Outcome::reply(text))
    }
}

/// How each kind of front end is addressed, for the reference's introduction.
fn addressing_intro(address: &BotAddress, frontends: &FrontEnds) -> String {
    // The front ends by style, styles in the order their first front end comes.
    let mut by_style: Vec<(CommandStyle, Vec<&str>)> = Vec::new();
    for name in frontends.names() {
        let Some(style) = frontends.get(name).map(|c| c.style) else {
            continue;
        };
        match by_style.iter_mut().find(|(s, _)| *s == style) {
            Some((_, names)) => names.push(name),
            None => by_style.push((style, vec![name])),
        }
    }
    let (prefix, name) = (&address.prefix, &address.bot_name);
    let parts: Vec<String> = by_style
        .iter()
        .map(|(style, names)| {
            let how = match style {
                CommandStyle::Bare => "type the command".to_string(),
                CommandStyle::Prefix => format!("start a line with `{prefix}` or `{name}: `"),
                CommandStyle::Name => format!("start a message with `{name}: ` or `{prefix}`"),
                CommandStyle::Mention => format!("start a line with `@{name}`"),
            };
            format!(
                "on {}, {how} (`{}`)",
                names.join(", "),
                address.show(*style, "ping")
            )
        })
        .collect();
    if parts.is_empty() {
        return String::new();
    }
    format!("How to address shepherd: {}.\n", parts.join("; "))
}

/// The whole reference as Markdown. Examples are shown as typed in chat with the prefix, and
/// comment-only ones as comment commands.
pub fn reference(
    registry: &Registry,
    policy: &Policy,
    address: &BotAddress,
    frontends: &FrontEnds,
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# shepherd commands\n");
    let _ = writeln!(out, "{}", addressing_intro(address, frontends));
    let mut entries: Vec<&HelpEntry> = registry.entries().collect();
    entries.sort_by_key(|e| e.command);
    for e in entries {
        let _ = writeln!(out, "## {}\n", e.command);
        let _ = writeln!(out, "`{}`\n", usage(e));
        let _ = writeln!(out, "{}\n", e.summary);
        let _ = writeln!(out, "Who may use it: {}.\n", who(policy, e.command));
        if e.changes_something {
            let _ = writeln!(
                out,
                "Changes something: audited; in non-production mode it only says what it would do.\n"
            );
        }
        let _ = writeln!(out, "Examples:\n");
        for x in examples(e, address, CommandStyle::Prefix) {
            let _ = writeln!(out, "    {x}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn address() -> BotAddress {
        BotAddress::new("shepherd", "!")
    }

    fn entry(command: &'static str) -> &'static HelpEntry {
        Registry::new()
            .entries()
            .find(|e| e.command == command)
            .expect("a built command")
    }

    #[test]
    fn examples_follow_the_askers_front_end() {
        let a = address();
        assert_eq!(
            examples(entry("help"), &a, CommandStyle::Prefix),
            ["!help", "!help retrigger"]
        );
        assert_eq!(
            examples(entry("help"), &a, CommandStyle::Name),
            ["shepherd: help", "shepherd: help retrigger"]
        );
        assert_eq!(
            examples(entry("help"), &a, CommandStyle::Mention),
            ["@shepherd help", "@shepherd help retrigger"]
        );
        assert_eq!(
            examples(entry("help"), &a, CommandStyle::Bare),
            ["help", "help retrigger"]
        );
    }

    #[test]
    fn comment_only_examples_are_comment_commands_everywhere() {
        let a = address();
        let chat = examples(entry("test"), &a, CommandStyle::Prefix);
        assert_eq!(
            chat,
            [
                "@shepherd test (in a merge request comment)",
                "@shepherd please test [debug=true] (in a merge request comment)"
            ]
        );
        assert!(
            !chat.iter().any(|x| x.starts_with("!@")),
            "never a prefix before a mention: {chat:?}"
        );
        assert_eq!(
            examples(entry("cancel"), &a, CommandStyle::Mention)
                .last()
                .map(String::as_str),
            Some("@shepherd cancel")
        );
    }

    #[test]
    fn every_usage_line_comes_from_the_command_language() {
        for e in Registry::new().entries() {
            assert_eq!(
                Some(usage(e)),
                shepherd_commands::usage(e.command),
                "{} has no usage line in shepherd-commands",
                e.command
            );
        }
    }
}
