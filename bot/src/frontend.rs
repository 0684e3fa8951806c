//! One shape for every front end.
//!
//! A front end is a network people talk to shepherd on. Each one declares its name and what it
//! can do ([`Capabilities`]: edits in place, formatting, how the bot is addressed, line limits,
//! pacing), hands what people write there to the dispatcher, and delivers the outbox messages of
//! its rooms. [`configured`] is the one list of front ends: `serve` runs every configured one,
//! and core and the plugins see only the declared capabilities (a [`FrontEnds`] table), never a
//! front end's name in code. Adding one is a module that implements [`FrontEnd`] and a line in
//! [`configured`].

use std::sync::Arc;

use async_trait::async_trait;
use shepherd_config::Config;
use shepherd_core::outbox::Outbox;
use shepherd_core::queue::Queue;
use shepherd_core::store::Store;
use shepherd_core::{Capabilities, FrontEnds};
use shepherd_plugins::Services;
use tokio::sync::watch;

use crate::dispatch::Dispatcher;

/// What a running front end may use: the dispatcher for what comes in, and through it the outbox
/// for what goes out, the store, and the shared metrics registry for its own series.
pub struct Context {
    dispatcher: Arc<Dispatcher>,
}

impl Context {
    pub fn new(dispatcher: Arc<Dispatcher>) -> Self {
        Self { dispatcher }
    }

    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    pub fn services(&self) -> &Services {
        &self.dispatcher.services
    }

    pub fn outbox(&self) -> &Outbox {
        &self.dispatcher.outbox
    }

    pub fn queue(&self) -> &Queue {
        &self.dispatcher.queue
    }

    pub fn store(&self) -> &Store {
        &self.dispatcher.services.store
    }

    pub fn metrics(&self) -> &Arc<shepherd_core::metrics::Metrics> {
        &self.dispatcher.metrics
    }
}

#[async_trait]
pub trait FrontEnd: Send {
    /// The front end's name and what it can do.
    fn capabilities(&self) -> Capabilities;

    /// Runs until `shutdown`: what people write goes to the dispatcher, the outbox messages of
    /// this front end's rooms are delivered (in order, once, kept while the network is away).
    /// Returns an error only when it cannot start at all (its metrics cannot be registered).
    async fn run(
        self: Box<Self>,
        ctx: Arc<Context>,
        shutdown: watch::Receiver<bool>,
    ) -> anyhow::Result<()>;
}

/// Every front end the configuration enables, in one list. The console is always there (in
/// `serve` stdin is one more chat; `shepherd console` runs only it).
pub fn configured(config: &Config) -> anyhow::Result<Vec<Box<dyn FrontEnd>>> {
    let mut all: Vec<Box<dyn FrontEnd>> =
        vec![Box::new(crate::console::ConsoleFrontend::new(config))];
    if let Some(irc) = &config.irc {
        all.push(Box::new(crate::irc::Irc::new(irc.clone(), &config.bot)));
    }
    if let Some(matrix) = &config.matrix {
        all.push(Box::new(crate::matrix::Matrix::new(matrix.clone())?));
    }
    if config.gitlab_comments.is_some() {
        all.push(Box::new(crate::gitlab::notes::Notes::new(config)));
    }
    Ok(all)
}

/// The declarations of `front_ends`, for core and the plugins.
pub fn declared(front_ends: &[Box<dyn FrontEnd>]) -> FrontEnds {
    FrontEnds::new(front_ends.iter().map(|f| f.capabilities()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_front_end_is_one_a_configuration_may_name() {
        let file = tempfile::NamedTempFile::new().expect("a temporary file");
        std::fs::write(
            file.path(),
            r##"
            [irc]
            server = "127.0.0.1"
            channels = ["#ops"]
            [matrix]
            homeserver = "http://127.0.0.1:8008"
            user = "@shepherd:localhost"
            rooms = ["!abc:localhost"]
            [gitlab_comments]
            "##,
        )
        .expect("write the configuration");
        let config =
            shepherd_config::load_from(file.path(), Vec::new()).expect("a valid configuration");
        let all = configured(&config).expect("front ends");
        let names: Vec<&str> = all.iter().map(|f| f.capabilities().name).collect();
        assert_eq!(names, ["console", "irc", "matrix", "gitlab"]);
        for name in names {
            assert!(
                shepherd_config::FRONT_ENDS.contains(&name),
                "{name} is not in shepherd_config::FRONT_ENDS"
            );
        }
    }
}
