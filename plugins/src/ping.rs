//! `ping` and `version`: liveness, and what is running.

use async_trait::async_trait;

use crate::{Call, HelpEntry, Outcome, Plugin, PluginError, Services};

pub struct Ping;

static PING: HelpEntry = HelpEntry {
    command: "ping",
    summary: "Checks that shepherd is alive and answering.",
    examples: &["ping"],
    comment_examples: &[],
    default_groups: &["*"],
    changes_something: false,
    queued: false,
};

#[async_trait]
impl Plugin for Ping {
    fn help(&self) -> &'static HelpEntry {
        &PING
    }

    async fn run(&self, _: &Services, _: &Call<'_>) -> Result<Outcome, PluginError> {
        Ok(Outcome::reply("pong"))
    }
}

pub struct Version;

static VERSION: HelpEntry = HelpEntry {
    command: "version",
    summary: "Shows shepherd's version, its uptime and whether it runs in production mode.",
    examples: &["version"],
    comment_examples: &[],
    default_groups: &["*"],
    changes_something: false,
    queued: false,
};

#[async_trait]
impl Plugin for Version {
    fn help(&self) -> &'static HelpEntry {
        &VERSION
    }

    async fn run(&self, services: &Services, _: &Call<'_>) -> Result<Outcome, PluginError> {
        let mode = if services.production {
            "production mode"
        } else {
            "non-production mode: writes are only described"
        };
        Ok(Outcome::reply(format!(
            "shepherd {} ({mode}), up {}",
            env!("CARGO_PKG_VERSION"),
            crate::util::human_duration(services.started_at.elapsed().as_secs())
        )))
    }
}
