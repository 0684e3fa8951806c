//! `whoami`: the identity, person, groups and permissions shepherd sees for the asker.

use async_trait::async_trait;

use crate::{Call, HelpEntry, Outcome, Plugin, PluginError, Services};

pub struct Whoami;

static WHOAMI: HelpEntry = HelpEntry {
    command: "whoami",
    summary: "Shows who shepherd thinks you are, your groups and the commands you may use.",
    examples: &["whoami"],
    comment_examples: &[],
    default_groups: &["*"],
    changes_something: false,
    queued: false,
};

#[async_trait]
impl Plugin for Whoami {
    fn help(&self) -> &'static HelpEntry {
        &WHOAMI
    }

    async fn run(&self, services: &Services, call: &Call<'_>) -> Result<Outcome, PluginError> {
        let p = call.principal;
        let who = match &p.person {
            Some(person) if p.groups.is_empty() => format!("{person}, in no group"),
            Some(person) => format!("{person}, in groups {}", p.groups.join(", ")),
            None => "not a known person (only commands open to everyone)".to_string(),
        };
        let built = &services.registry;
        let may: Vec<String> = services
            .policy
            .commands_for(p)
            .into_iter()
            .filter(|c| built.get(c).is_some())
            .collect();
        let may = if may.is_empty() {
            "nothing".to_string()
        } else {
            may.join(", ")
        };
        Ok(Outcome::reply(format!(
            "you are {} — {who}; you may use: {may}",
            p.identity
        )))
    }
}
