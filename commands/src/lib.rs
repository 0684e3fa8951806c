//! shepherd's command language, the same on every front end.
//!
//! Two steps turn an incoming message into work: [`addressed`] picks out the text meant for the
//! bot (the rules differ per front end: a prefix or the bot's name in chat, `@bot` lines outside
//! code and quotes in GitLab comments), and [`parse`] turns each such text into a typed
//! [`Command`] or a [`ParseError`] whose [`ParseError::reply`] is the line to show the user.
//! This crate knows nothing of the network, configuration or permissions.
//!
//! ```
//! use shepherd_commands::{Addressing, Command, Frontend, ParseContext, PipelineRef, Var, addressed, parse};
//!
//! let addr = Addressing { bot_name: "shepherd", prefix: "!", user_id: None };
//! let texts = addressed(Frontend::Chat, "!retrigger group/project/pipelines/42 DEBUG=1", &addr);
//! assert_eq!(texts, ["retrigger group/project/pipelines/42 DEBUG=1"]);
//! let command = parse(texts[0], &ParseContext::default()).unwrap();
//! assert_eq!(command, Command::Retrigger {
//!     pipeline: PipelineRef { instance: None, project: Some("group/project".into()), id: 42 },
//!     overrides: vec![Var { key: "DEBUG".into(), value: "1".into() }],
//! });
//! ```

mod addressing;
mod command;
mod error;
mod lexer;
mod parser;
mod refs;

pub use addressing::{Addressing, Frontend, addressed};
pub use command::{COMMAND_NAMES, Command, DeploySource, Target, usage};
pub use error::{ParseError, ParseErrorKind};
pub use parser::{ParseContext, is_digest, parse};
pub use refs::{JobRef, MatchOp, Matcher, MrRef, PipelineRef, Var};
