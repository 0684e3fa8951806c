//! shepherd-core: the orchestration library. It talks to GitLab and the store, runs the
//! durable queue and the pipeline watcher, and decides who may do what — and it knows
//! nothing of chat: no front end, no message formatting (see ARCHITECTURE.md).

pub mod alerts;
pub mod audit;
pub mod backoff;
pub mod canary;
pub mod commit;
pub mod deploy;
pub mod effects;
pub mod failover;
pub mod frontend;
pub mod gitlab;
pub mod herder;
pub mod metrics;
pub mod once;
pub mod origin;
pub mod outbox;
pub mod policy;
pub mod queue;
pub mod registry;
pub mod retrigger;
pub mod store;
pub mod watcher;

pub use frontend::{Capabilities, CommandStyle, Formatting, FrontEnds};
pub use origin::Origin;
