//! shepherd's configuration: typed sections ([`Config`]), loading from a TOML file with `SHEPHERD_*`
//! environment overrides ([`load`], [`load_from`]), validation with errors that name the key and the
//! source, and secrets that come from environment variables or files and never print ([`Secret`]).
//!
//! Loading goes: read and syntax-check the file -> turn `SHEPHERD_A__B=v` variables into a table ->
//! merge both with figment and deserialize (unknown keys are errors) -> fill runtime defaults (console
//! identity, IRC nick) -> validate -> resolve secrets. The process environment is read only by
//! [`load`] and [`default_path`]; everything else takes the variables as an argument.

mod error;
mod model;
mod secret;
mod sources;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::Serialized;

pub use error::ConfigError;
pub use model::{
    AccessLevel, AlertLines, AlertRoute, AlertsConfig, BotConfig, CanaryConfig,
    CanaryProjectConfig, CanaryReference, CommentProjectConfig, Config, ConsoleConfig,
    DEFAULT_FIRING_TEMPLATE, DEFAULT_GROUP_TEMPLATE, DEFAULT_RESOLVED_TEMPLATE, DeployConfig,
    DeployEnvironment, DeployPipeline, DeployService, FailoverSwitch, GitlabCommentsConfig,
    GitlabConfig, HerderAction, HerderConfig, HerderMatcher, HttpConfig, IrcConfig, IrcReplyKind,
    LogConfig, LogFormat, MatrixConfig, MatrixEncryptFor, Person, QueueConfig, RateLimitsConfig,
    RetriggerConfig, StoreConfig, WatcherConfig, parse_channel_keys,
};
pub use secret::{Secret, SecretUrl, redact_url};
pub use sources::{CONVENTIONAL_SECRET_VARS, ENV_PREFIX, NOT_KEY_VARS};
pub use validate::{FRONT_ENDS, is_room_name};

use secret::SecretSlot;
use sources::Origins;

/// Path of the shipped configuration, relative to the working directory.
pub const DEFAULT_PATH: &str = "config/shepherd.toml";

/// `$SHEPHERD_CONFIG` when set and not empty, else `config/shepherd.toml`.
pub fn default_path() -> PathBuf {
    match std::env::var_os("SHEPHERD_CONFIG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => PathBuf::from(DEFAULT_PATH),
    }
}

/// Loads `path` with overrides and secrets from the process environment.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let vars = std::env::vars_os()
        .filter_map(|(name, value)| Some((name.into_string().ok()?, value.into_string().ok()?)));
    load_from(path, vars)
}

/// Loads `path` with overrides and secrets from `env` instead of the process environment.
pub fn load_from(
    path: &Path,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let vars: BTreeMap<String, String> = env.into_iter().collect();
    let file = sources::read_file(path)?;
    let overrides = sources::env_overrides(&vars, &file)?;
    let origins = Origins {
        file: path.display().to_string(),
        env: overrides.keys,
    };

    let figment =
        Figment::from(Serialized::defaults(file)).merge(Serialized::defaults(overrides.table));
    let mut config: Config = figment
        .extract()
        .map_err(|err| error::from_figment(err, &origins, &figment))?;

    fill_runtime_defaults(&mut config, &vars);

    let problems = validate::validate(&config);
    let mut errors: Vec<ConfigError> = problems
        .into_iter()
        .map(|p| ConfigError::Invalid {
            origin: origins.of(&p.key),
            key: p.key.join("."),
            message: p.message,
        })
        .collect();
    match errors.len() {
        0 => {}
        1 => return Err(errors.remove(0)),
        _ => return Err(ConfigError::Multiple(errors)),
    }

    resolve_secrets(&mut config, &vars, &origins)?;
    Ok(config)
}

fn fill_runtime_defaults(config: &mut Config, vars: &BTreeMap<String, String>) {
    if config.console.identity.is_none() {
        let user = ["USER", "LOGNAME", "USERNAME"]
            .iter()
            .find_map(|name| vars.get(*name).filter(|v| !v.is_empty()))
            .map_or("unknown", String::as_str);
        config.console.identity = Some(format!("console:{user}"));
    }
    if let Some(irc) = &mut config.irc
        && irc.nick.is_none()
    {
        irc.nick = Some(config.bot.name.clone());
    }
    if let Some(matrix) = &mut config.matrix
        && matrix.display_name.is_none()
    {
        matrix.display_name = Some(config.bot.name.clone());
    }
}

struct SecretResolver<'a> {
    vars: &'a BTreeMap<String, String>,
    origins: &'a Origins,
    warnings: Vec<String>,
}

impl SecretResolver<'_> {
    /// Resolves the pair `<key>_env` / `<key>_file` of `section`; the file wins when both are set.
    fn resolve(
        &mut self,
        section: &str,
        key: &str,
        env: Option<&str>,
        file: Option<&Path>,
    ) -> Result<SecretSlot, ConfigError> {
        if let Some(file) = file {
            let file_key = [section.to_owned(), format!("{key}_file")];
            let text = std::fs::read_to_string(file).map_err(|source| ConfigError::SecretFile {
                origin: self.origins.of(&file_key),
                key: file_key.join("."),
                file: file.to_owned(),
                source,
            })?;
            let value = text.trim_end_matches(['\n', '\r']);
            if value.is_empty() {
                let why = format!("file {} is empty", file.display());
                self.warnings.push(format!("{section}.{key}: {why}"));
                return Ok(SecretSlot::Unset(why));
            }
            return Ok(SecretSlot::Set(Secret::new(value)));
        }
        match env.filter(|name| !name.is_empty()) {
            None => Ok(SecretSlot::NotConfigured),
            Some(name) => match self.vars.get(name).filter(|v| !v.is_empty()) {
                Some(value) => Ok(SecretSlot::Set(Secret::new(value.clone()))),
                None => {
                    let why = format!("env {name} is not set");
                    self.warnings.push(format!(
                        "{section}.{key}: {why} (named by {section}.{key}_env); continuing without it"
                    ));
                    Ok(SecretSlot::Unset(why))
                }
            },
        }
    }
}

fn resolve_secrets(
    config: &mut Config,
    vars: &BTreeMap<String, String>,
    origins: &Origins,
) -> Result<(), ConfigError> {
    let mut r = SecretResolver {
        vars,
        origins,
        warnings: Vec::new(),
    };
    let http = &mut config.http;
    http.api_token = r.resolve(
        "http",
        "api_token",
        http.api_token_env.as_deref(),
        http.api_token_file.as_deref(),
    )?;
    let gitlab = &mut config.gitlab;
    gitlab.token = r.resolve(
        "gitlab",
        "token",
        Some(&gitlab.token_env),
        gitlab.token_file.as_deref(),
    )?;
    if let Some(irc) = &mut config.irc {
        irc.sasl_password = r.resolve(
            "irc",
            "sasl_password",
            irc.sasl_password_env.as_deref(),
            irc.sasl_password_file.as_deref(),
        )?;
        irc.password = r.resolve(
            "irc",
            "password",
            irc.password_env.as_deref(),
            irc.password_file.as_deref(),
        )?;
        irc.nickserv_password = r.resolve(
            "irc",
            "nickserv_password",
            irc.nickserv_password_env.as_deref(),
            irc.nickserv_password_file.as_deref(),
        )?;
        irc.channel_keys =
            r.resolve("irc", "channel_keys", irc.channel_keys_env.as_deref(), None)?;
    }
    if let Some(matrix) = &mut config.matrix {
        matrix.password = r.resolve(
            "matrix",
            "password",
            matrix.password_env.as_deref(),
            matrix.password_file.as_deref(),
        )?;
        matrix.store_passphrase = r.resolve(
            "matrix",
            "store_passphrase",
            matrix.store_passphrase_env.as_deref(),
            None,
        )?;
    }
    if let Some(comments) = &mut config.gitlab_comments {
        comments.webhook_secret = r.resolve(
            "gitlab_comments",
            "webhook_secret",
            comments.webhook_secret_env.as_deref(),
            comments.webhook_secret_file.as_deref(),
        )?;
    }
    if let Some(alerts) = &mut config.alerts {
        alerts.webhook_token = r.resolve(
            "alerts",
            "webhook_token",
            alerts.webhook_token_env.as_deref(),
            alerts.webhook_token_file.as_deref(),
        )?;
    }
    if let Some(deploy) = &mut config.deploy {
        deploy.registry_password = r.resolve(
            "deploy",
            "registry_password",
            deploy.registry_password_env.as_deref(),
            deploy.registry_password_file.as_deref(),
        )?;
    }
    config.warnings.extend(r.warnings);
    Ok(())
}

impl Config {
    /// Facts found while loading that are not errors but deserve a warning in the log (a secret whose
    /// variable is not set). Each is a full sentence that starts with the key path.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The effective configuration as TOML, secrets shown as `<redacted>` or `<unset: why>`. This is
    /// what `shepherd config check` prints; it never contains a secret value.
    pub fn redacted_toml(&self) -> String {
        match toml::to_string(self) {
            Ok(text) => text,
            Err(err) => format!("# cannot render the configuration as TOML: {err}\n"),
        }
    }
}

#[cfg(test)]
mod tests;
