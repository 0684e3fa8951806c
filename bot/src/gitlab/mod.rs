//! The GitLab front end: webhooks in (`hooks`: `POST /hooks/gitlab`, stored before 202; `events`:
//! what the workers do with them), merge-request notes out (`notes`: the `gitlab` outbox, one
//! note per reply, one note edited in place per summary). What it needs from GitLab's API it asks
//! of core's client.

pub mod events;
pub mod hooks;
pub mod notes;
