//! shepherd's end-to-end test kit: the GitLab v4 test double (the one part that cannot run
//! here for real) and a harness that runs the real `shepherd` binary against a real store
//! (a fresh SQLite file, or a fresh database on the local PostgreSQL).

pub mod alertmanager;
pub mod gitlab;
pub mod harness;
pub mod irc_client;
pub mod ircd;
pub mod matrix_client;
pub mod measure;
pub mod proxy;
pub mod registry;
pub mod services;
pub mod synapse;
