//! Checks that types alone cannot express: URL schemes, lower bounds, identity patterns, room names.
//! Each problem names the key's dotted path; [`validate`] returns all of them, so `shepherd config
//! check` shows every mistake at once.

use std::collections::BTreeSet;

use url::Url;

use crate::model::Config;

/// A problem with one key: its path segments and what is wrong.
pub(crate) struct Problem {
    pub(crate) key: Vec<String>,
    pub(crate) message: String,
}

/// Front ends an identity or a room may name.
pub const FRONT_ENDS: &[&str] = &["irc", "matrix", "gitlab", "console"];

struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn fail(&mut self, key: &str, message: impl Into<String>) {
        self.problems.push(Problem {
            key: key.split('.').map(str::to_owned).collect(),
            message: message.into(),
        });
    }

    fn at_least(&mut self, key: &str, value: u64, min: u64) {
        if value < min {
            self.fail(
                key,
                format!("{value} is too small (expected at least {min})"),
            );
        }
    }

    fn word(&mut self, key: &str, value: &str) {
        if value.is_empty() || value.chars().any(char::is_whitespace) {
            self.fail(
                key,
                format!("{value:?} is not valid (expected a non-empty word without spaces)"),
            );
        }
    }

    fn project_path(&mut self, key: &str, project: &str) {
        let ok = project.contains('/')
            && !project.starts_with('/')
            && !project.ends_with('/')
            && !project.contains("//")
            && !project.contains(char::is_whitespace);
        if !ok {
            self.fail(
                key,
                format!("{project:?} is not a project path (expected group/project)"),
            );
        }
    }

    fn variable_name(&mut self, key: &str, name: &str) {
        if name.is_empty()
            || !name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
        {
            self.fail(
                key,
                "is not a CI variable name (expected letters, digits and _)",
            );
        }
    }

    fn not_empty(&mut self, key: &str, value: &str) {
        if value.trim().is_empty() {
            self.fail(key, "must not be empty");
        }
    }

    /// An API's base URL. Its credentials have keys of their own (`token_env`, ...): a password in
    /// the URL would be sent with every request and shown wherever the URL is, so it is refused
    /// (and not repeated in the message).
    fn http_url(&mut self, key: &str, url: &Url) {
        if url.password().is_some() || !url.username().is_empty() {
            self.fail(
                key,
                "must not contain a user name or password (they would be shown wherever the URL is; credentials have keys of their own)".to_owned(),
            );
        } else if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            self.fail(
                key,
                format!(
                    "{:?} is not supported (expected an http:// or https:// URL)",
                    url.as_str()
                ),
            );
        }
    }

    fn ordered(&mut self, low_key: &str, low: u64, high_key: &str, high: u64) {
        if high < low {
            self.fail(
                high_key,
                format!("{high} is less than {low_key} ({low}) (expected at least that)"),
            );
        }
    }

    fn room(&mut self, key: &str, target: &str, config: &Config) {
        if let Some(problem) = config.target_problem(target) {
            self.fail(key, problem);
        }
    }
}

/// Whether `room` can name a room in a target: not empty, and no white space or control
/// character — a room is written into protocol lines (`PRIVMSG <room> :...`), and no network
/// names one that way.
pub fn is_room_name(room: &str) -> bool {
    !room.is_empty()
        && !room
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\u{feff}')
}

/// Whether `id` looks like a Matrix user id: `@localpart:server`, no white space.
fn is_matrix_user_id(id: &str) -> bool {
    id.strip_prefix('@')
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(local, server)| !local.is_empty() && !server.is_empty())
        && is_room_name(id)
}

impl Config {
    /// Why `target` (`<front end>:<room>`) is not a room a configured front end can deliver to,
    /// if it is not: a target nothing could ever say is a start-up error (alert routes) or a 400
    /// (`POST /api/v1/say`), never a silent queue.
    pub fn target_problem(&self, target: &str) -> Option<String> {
        let Some((front, room)) = target
            .split_once(':')
            .filter(|(front, room)| FRONT_ENDS.contains(front) && is_room_name(room))
        else {
            return Some(format!(
                "{target:?} is not a room (expected <front end>:<room> such as irc:#ops or \
                 matrix:!roomid:server; front ends: {})",
                FRONT_ENDS.join(", ")
            ));
        };
        let problem = match front {
            "irc" => match &self.irc {
                None => Some("names IRC, but [irc] is not configured".to_owned()),
                Some(irc)
                    if room.starts_with(['#', '&', '+', '!'])
                        && !irc.channels.iter().any(|c| c.eq_ignore_ascii_case(room)) =>
                {
                    Some(format!(
                        "{room} is not one of irc.channels ({}): it is not one of the bot's \
                         channels, so nothing could be said there",
                        irc.channels.join(", ")
                    ))
                }
                Some(_) => None,
            },
            "matrix" => match &self.matrix {
                None => Some("names Matrix, but [matrix] is not configured".to_owned()),
                Some(_) if !room.starts_with(['!', '#']) => Some(format!(
                    "{room} is not a Matrix room (expected a room id !id or an alias #name:server)"
                )),
                Some(m) if !m.has_room(room) => Some(format!(
                    "{room} is not one of matrix.rooms ({}): the bot is not sure to be in it, so \
                     nothing could be said there",
                    m.rooms.join(", ")
                )),
                Some(_) => None,
            },
            "gitlab" if self.gitlab_comments.is_none() => {
                Some("names GitLab notes, but [gitlab_comments] is not configured".to_owned())
            }
            "console" | "gitlab" => None,
            other => Some(format!("names {other}, which is not configured")),
        };
        problem.map(|p| format!("{target:?} {p}"))
    }
}

pub(crate) fn validate(config: &Config) -> Vec<Problem> {
    let mut c = Checker {
        problems: Vec::new(),
    };

    c.word("bot.name", &config.bot.name);
    c.word("bot.prefix", &config.bot.prefix);

    let store = config.store.url.expose();
    let store_ok = store.strip_prefix("sqlite:").is_some_and(|rest| {
        !rest.is_empty() && rest != "//" && rest != "///" && !rest.contains(char::is_whitespace)
    }) || ["postgres://", "postgresql://"]
        .iter()
        .any(|scheme| store.len() > scheme.len() && store.starts_with(scheme));
    if !store_ok {
        c.fail(
            "store.url",
            format!(
                "{:?} is not supported (expected sqlite:PATH or postgres://...)",
                config.store.url.redacted()
            ),
        );
    }

    let queue = &config.queue;
    let queue_url = queue.url.expose();
    let queue_ok = queue_url == "store"
        || ["amqp://", "amqps://"]
            .iter()
            .any(|scheme| queue_url.len() > scheme.len() && queue_url.starts_with(scheme));
    if !queue_ok {
        c.fail(
            "queue.url",
            format!(
                "{:?} is not supported (expected \"store\" or amqp://...)",
                queue.url.redacted()
            ),
        );
    }
    c.at_least("queue.max_attempts", queue.max_attempts.into(), 1);
    c.at_least("queue.workers", queue.workers.into(), 1);
    c.at_least("queue.lease_seconds", queue.lease_seconds, 1);
    c.at_least("queue.poll_interval_ms", queue.poll_interval_ms, 1);
    c.at_least("queue.retention_days", queue.retention_days, 1);
    c.at_least("queue.retry_base_ms", queue.retry_base_ms, 1);
    c.ordered(
        "queue.retry_base_ms",
        queue.retry_base_ms,
        "queue.retry_max_ms",
        queue.retry_max_ms,
    );

    c.at_least(
        "http.header_timeout_secs",
        config.http.header_timeout_secs,
        1,
    );
    c.at_least("http.body_timeout_secs", config.http.body_timeout_secs, 1);
    c.at_least(
        "http.max_connections",
        config.http.max_connections.into(),
        1,
    );

    let gitlab = &config.gitlab;
    c.http_url("gitlab.url", &gitlab.url);
    if let Some(project) = &gitlab.default_project {
        c.project_path("gitlab.default_project", project);
    }
    c.at_least(
        "gitlab.requests_per_minute",
        gitlab.requests_per_minute.into(),
        1,
    );
    c.at_least("gitlab.timeout_ms", gitlab.timeout_ms, 1);
    c.at_least("gitlab.retry_base_ms", gitlab.retry_base_ms, 1);
    c.ordered(
        "gitlab.retry_base_ms",
        gitlab.retry_base_ms,
        "gitlab.retry_max_ms",
        gitlab.retry_max_ms,
    );

    for name in config.retrigger.marker_variables.keys() {
        c.variable_name(&format!("retrigger.marker_variables.{name}"), name);
    }
    c.at_least(
        "retrigger.lookback_minutes",
        config.retrigger.lookback_minutes,
        1,
    );

    let watcher = &config.watcher;
    c.at_least("watcher.poll_interval_ms", watcher.poll_interval_ms, 1);
    c.ordered(
        "watcher.poll_interval_ms",
        watcher.poll_interval_ms,
        "watcher.max_poll_interval_ms",
        watcher.max_poll_interval_ms,
    );

    if let Some(identity) = &config.console.identity
        && identity.strip_prefix("console:").is_none_or(str::is_empty)
    {
        c.fail(
            "console.identity",
            format!("{identity:?} is not a console identity (expected console:<user>)"),
        );
    }
    c.not_empty("console.room", &config.console.room);

    let mut names = BTreeSet::new();
    for (i, person) in config.people.iter().enumerate() {
        let at = format!("people[{i}]");
        c.not_empty(&format!("{at}.name"), &person.name);
        if !names.insert(person.name.as_str()) {
            c.fail(
                &format!("{at}.name"),
                format!(
                    "{:?} is used by another person (expected unique names)",
                    person.name
                ),
            );
        }
        for (j, pattern) in person.identities.iter().enumerate() {
            let key = format!("{at}.identities[{j}]");
            let front = pattern.split_once(':').map(|(front, _)| front);
            if !front.is_some_and(|front| FRONT_ENDS.contains(&front)) {
                c.fail(
                    &key,
                    format!(
                        "{pattern:?} does not start with a front end (expected one of {}: \
                         followed by a name or glob, such as irc:alice or console:*)",
                        FRONT_ENDS.join(":, ")
                    ),
                );
            } else if let Err(err) = globset::Glob::new(pattern) {
                c.fail(
                    &key,
                    format!("{pattern:?} is not a valid glob: {}", err.kind()),
                );
            }
        }
        for (j, group) in person.groups.iter().enumerate() {
            c.word(&format!("{at}.groups[{j}]"), group);
        }
    }

    for (command, groups) in &config.permissions {
        for (j, group) in groups.iter().enumerate() {
            c.word(&format!("permissions.{command}[{j}]"), group);
        }
    }

    c.at_least(
        "rate_limits.per_identity_per_minute",
        config.rate_limits.per_identity_per_minute.into(),
        1,
    );
    c.at_least(
        "rate_limits.per_room_per_minute",
        config.rate_limits.per_room_per_minute.into(),
        1,
    );
    c.not_empty("log.filter", &config.log.filter);

    if let Some(irc) = &config.irc {
        c.not_empty("irc.server", &irc.server);
        c.at_least("irc.port", irc.port.into(), 1);
        if let Some(nick) = &irc.nick {
            c.word("irc.nick", nick);
        }
        for (j, channel) in irc.channels.iter().enumerate() {
            if !(channel.starts_with('#') || channel.starts_with('&'))
                || channel.len() < 2
                || channel.contains([' ', ',', '\x07'])
            {
                c.fail(
                    &format!("irc.channels[{j}]"),
                    format!("{channel:?} is not a channel name (expected #name)"),
                );
            }
        }
        for (j, nick) in irc.alt_nicks.iter().enumerate() {
            c.word(&format!("irc.alt_nicks[{j}]"), nick);
        }
        c.at_least("irc.ping_interval_secs", irc.ping_interval_secs.into(), 5);
        c.at_least("irc.reconnect_max_secs", irc.reconnect_max_secs, 1);
        c.at_least("irc.rejoin_max_secs", irc.rejoin_max_secs, 1);
        c.at_least("irc.regain_interval_secs", irc.regain_interval_secs, 1);
        c.at_least("irc.whois_timeout_ms", irc.whois_timeout_ms, 100);
        c.at_least("irc.sasl_timeout_secs", irc.sasl_timeout_secs, 1);
        c.at_least("irc.max_send_attempts", irc.max_send_attempts.into(), 1);
        c.at_least(
            "irc.max_lines_per_message",
            irc.max_lines_per_message.into(),
            2,
        );
        c.at_least("irc.flood_burst", irc.flood_burst.into(), 1);
        if !(irc.flood_rate.is_finite() && irc.flood_rate > 0.0) {
            c.fail(
                "irc.flood_rate",
                format!(
                    "{} is not allowed (expected lines per second > 0)",
                    irc.flood_rate
                ),
            );
        }
    }

    if let Some(m) = &config.matrix {
        c.http_url("matrix.homeserver", &m.homeserver);
        if !is_matrix_user_id(&m.user) {
            c.fail(
                "matrix.user",
                format!(
                    "{:?} is not a Matrix user id (expected @name:server)",
                    m.user
                ),
            );
        }
        if m.store_path.as_os_str().is_empty() {
            c.fail("matrix.store_path", "must not be empty");
        }
        for (j, room) in m.rooms.iter().enumerate() {
            let ok = is_room_name(room)
                && match room.chars().next() {
                    Some('!') => room.len() > 1,
                    Some('#') => room
                        .get(1..)
                        .is_some_and(|r| r.contains(':') && !r.starts_with(':')),
                    _ => false,
                };
            if !ok {
                c.fail(
                    &format!("matrix.rooms[{j}]"),
                    format!(
                        "{room:?} is not a room (expected a room id !id or an alias #name:server)"
                    ),
                );
            }
        }
        for (j, pattern) in m.autojoin.iter().enumerate() {
            let key = format!("matrix.autojoin[{j}]");
            if !pattern.starts_with('@') {
                c.fail(&key, format!("{pattern:?} is not a user glob (expected @name:server, with * and ? allowed)"));
            } else if let Err(err) = globset::Glob::new(pattern) {
                c.fail(
                    &key,
                    format!("{pattern:?} is not a valid glob: {}", err.kind()),
                );
            }
        }
        c.not_empty("matrix.device_name", &m.device_name);
        c.at_least("matrix.reconnect_max_secs", m.reconnect_max_secs, 1);
        c.at_least("matrix.sync_timeout_secs", m.sync_timeout_secs, 1);
        c.at_least("matrix.max_send_attempts", m.max_send_attempts.into(), 1);
        c.at_least("matrix.max_message_bytes", m.max_message_bytes.into(), 1000);
        if m.max_message_bytes > 60_000 {
            c.fail(
                "matrix.max_message_bytes",
                format!(
                    "{} is too large (expected at most 60000: an event is at most 64 KiB, the HTML twin included)",
                    m.max_message_bytes
                ),
            );
        }
    }

    if let Some(comments) = &config.gitlab_comments {
        c.at_least(
            "gitlab_comments.max_body_bytes",
            comments.max_body_bytes as u64,
            1024,
        );
        for path in comments.projects.keys() {
            c.project_path(&format!("gitlab_comments.projects.{path}"), path);
        }
    }

    let mut canary_projects = BTreeSet::new();
    for (i, project) in config.canary.projects.iter().enumerate() {
        let at = format!("canary.projects[{i}]");
        c.project_path(&format!("{at}.project"), &project.project);
        if !canary_projects.insert(project.project.to_ascii_lowercase()) {
            c.fail(
                &format!("{at}.project"),
                format!(
                    "{:?} is configured twice (expected one entry per project)",
                    project.project
                ),
            );
        }
        let templates = minijinja::Environment::new();
        for (name, template) in &project.variables {
            let key = format!("{at}.variables.{name}");
            c.variable_name(&key, name);
            if let Err(err) = templates.template_from_str(template) {
                c.fail(&key, format!("{template:?} is not a valid template: {err}"));
            }
        }
        if project.references.is_empty() {
            c.fail(
                &format!("{at}.references"),
                "must list at least one reference pipeline",
            );
        }
        let mut trees = BTreeSet::new();
        for (j, reference) in project.references.iter().enumerate() {
            let rat = format!("{at}.references[{j}]");
            c.word(&format!("{rat}.tree"), &reference.tree);
            if !trees.insert(reference.tree.as_str()) {
                c.fail(
                    &format!("{rat}.tree"),
                    format!(
                        "{:?} is listed twice (expected one reference per tree)",
                        reference.tree
                    ),
                );
            }
            c.project_path(&format!("{rat}.project"), &reference.project);
            match (&reference.pipeline, &reference.branch) {
                (Some(_), None) => {}
                (None, Some(branch)) => c.not_empty(&format!("{rat}.branch"), branch),
                _ => c.fail(
                    &rat,
                    "needs exactly one of `pipeline` (an id) or `branch` (its latest successful pipeline)",
                ),
            }
        }
    }

    if let Some(alerts) = &config.alerts {
        if let Some(url) = &alerts.alertmanager_url {
            c.http_url("alerts.alertmanager_url", url);
        }
        for (i, route) in alerts.routes.iter().enumerate() {
            let at = format!("alerts.routes[{i}]");
            for (j, matcher) in route.matchers.iter().enumerate() {
                c.not_empty(&format!("{at}.matchers[{j}]"), matcher);
            }
            if route.targets.is_empty() {
                c.fail(&format!("{at}.targets"), "must name at least one room");
            }
            for (j, target) in route.targets.iter().enumerate() {
                c.room(&format!("{at}.targets[{j}]"), target, config);
            }
        }
        for (j, target) in alerts.default_targets.iter().enumerate() {
            c.room(&format!("alerts.default_targets[{j}]"), target, config);
        }
        let templates = minijinja::Environment::new();
        for (key, template) in [
            ("alerts.firing_template", &alerts.firing_template),
            ("alerts.resolved_template", &alerts.resolved_template),
            ("alerts.group_template", &alerts.group_template),
        ] {
            if let Err(err) = templates.template_from_str(template) {
                c.fail(key, format!("is not a valid template: {err}"));
            }
        }
        c.at_least("alerts.storm_threshold", alerts.storm_threshold as u64, 1);
        c.at_least("alerts.max_body_bytes", alerts.max_body_bytes as u64, 1024);
    }

    if let Some(deploy) = &config.deploy {
        validate_deploy(&mut c, deploy, config);
    }
    if let Some(herder) = &config.herder {
        validate_herder(&mut c, herder, config);
    }
    validate_failovers(&mut c, &config.failover);

    c.problems
}

/// Whether `tag` is a valid image tag (OCI: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`).
pub fn is_image_tag(tag: &str) -> bool {
    let mut chars = tag.chars();
    tag.len() <= 128
        && chars
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Whether `name` is a repository name as the OCI distribution spec allows
/// (`[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`).
pub fn is_repository_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|part| {
            let bytes = part.as_bytes();
            !part.is_empty()
                && bytes[0].is_ascii_alphanumeric()
                && bytes[bytes.len() - 1].is_ascii_alphanumeric()
                && part.chars().all(|c| {
                    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-')
                })
        })
}

fn validate_deploy(c: &mut Checker, deploy: &crate::model::DeployConfig, config: &Config) {
    c.http_url("deploy.registry", &deploy.registry);
    if deploy.registry_username.is_none()
        && (deploy.registry_password_env.is_some() || deploy.registry_password_file.is_some())
    {
        c.fail(
            "deploy.registry_username",
            "is needed with registry_password_env / registry_password_file (basic auth and token requests send both)",
        );
    }
    c.at_least(
        "deploy.confirm_timeout_seconds",
        deploy.confirm_timeout_seconds,
        10,
    );
    c.at_least(
        "deploy.registry_timeout_ms",
        deploy.registry_timeout_ms,
        100,
    );
    c.ordered(
        "deploy.registry_retry_base_ms",
        deploy.registry_retry_base_ms,
        "deploy.registry_retry_max_ms",
        deploy.registry_retry_max_ms,
    );
    if deploy.services.is_empty() {
        c.fail("deploy.services", "must list at least one service");
    }
    if deploy.environments.is_empty() {
        c.fail("deploy.environments", "must list at least one environment");
    }
    let mut names = BTreeSet::new();
    for (i, service) in deploy.services.iter().enumerate() {
        let at = format!("deploy.services[{i}]");
        name_like(c, &format!("{at}.name"), &service.name);
        if !names.insert(service.name.to_ascii_lowercase()) {
            c.fail(
                &format!("{at}.name"),
                format!("{:?} is configured twice", service.name),
            );
        }
        if !is_repository_name(&service.repository) {
            c.fail(
                &format!("{at}.repository"),
                format!(
                    "{:?} is not a repository name (expected lower-case path parts such as cki/pipeline-herder)",
                    service.repository
                ),
            );
        }
        if let Some(project) = &service.mr_project {
            c.project_path(&format!("{at}.mr_project"), project);
        }
        let example = service.mr_tag.replace("{iid}", "12");
        if !is_image_tag(&example) {
            c.fail(
                &format!("{at}.mr_tag"),
                format!(
                    "{:?} does not make an image tag (expected letters, digits, `.`, `_`, `-` and the placeholder {{iid}})",
                    service.mr_tag
                ),
            );
        }
        for (j, target) in service.announce.iter().enumerate() {
            c.room(&format!("{at}.announce[{j}]"), target, config);
        }
    }
    let mut envs = BTreeSet::new();
    for (i, env) in deploy.environments.iter().enumerate() {
        let at = format!("deploy.environments[{i}]");
        name_like(c, &format!("{at}.name"), &env.name);
        if !envs.insert(env.name.to_ascii_lowercase()) {
            c.fail(
                &format!("{at}.name"),
                format!("{:?} is configured twice", env.name),
            );
        }
        match (&env.tag, &env.pipeline) {
            (Some(tag), None) => {
                if !is_image_tag(tag) {
                    c.fail(
                        &format!("{at}.tag"),
                        format!("{tag:?} is not an image tag (expected letters, digits, `.`, `_`, `-`)"),
                    );
                }
            }
            (None, Some(pipeline)) => {
                c.project_path(&format!("{at}.pipeline.project"), &pipeline.project);
                c.not_empty(&format!("{at}.pipeline.ref"), &pipeline.git_ref);
            }
            _ => c.fail(
                &at,
                "needs exactly one of `tag` (the tag pointed at the image) or `pipeline` (a deploy pipeline to run)",
            ),
        }
        for (j, group) in env.groups.iter().enumerate() {
            c.word(&format!("{at}.groups[{j}]"), group);
        }
    }
}

/// `[herder]`: what types cannot say. (Regular expressions are compiled, and judged, by the
/// herder itself at start: `shepherd_core::herder`.)
fn validate_herder(c: &mut Checker, herder: &crate::model::HerderConfig, config: &Config) {
    if config.gitlab_comments.is_none() {
        c.fail(
            "herder",
            "needs [gitlab_comments]: its webhook (`POST /hooks/gitlab`, with the webhook secret) is how Job Hooks arrive",
        );
    }
    if herder.projects.is_empty() {
        c.fail("herder.projects", "must list at least one project");
    }
    for (i, project) in herder.projects.iter().enumerate() {
        c.project_path(&format!("herder.projects[{i}]"), project);
    }
    for (i, target) in herder.targets.iter().enumerate() {
        c.room(&format!("herder.targets[{i}]"), target, config);
    }
    c.at_least("herder.trace_tail_bytes", herder.trace_tail_bytes, 1024);
    let mut names = BTreeSet::new();
    for (i, m) in herder.matchers.iter().enumerate() {
        let at = format!("herder.matchers[{i}]");
        name_like(c, &format!("{at}.name"), &m.name);
        if !names.insert(m.name.to_ascii_lowercase()) {
            c.fail(
                &format!("{at}.name"),
                format!("{:?} is configured twice", m.name),
            );
        }
        if m.job_status.is_empty() {
            c.fail(&format!("{at}.job_status"), "must list at least one status");
        }
        if m.retry_delays.is_empty() {
            c.fail(
                &format!("{at}.retry_delays"),
                "must list at least one delay",
            );
        }
        for (j, delay) in m.retry_delays.iter().enumerate() {
            if let Err(e) = humantime::parse_duration(delay) {
                c.fail(
                    &format!("{at}.retry_delays[{j}]"),
                    format!("{delay:?} is not a duration ({e}; expected e.g. 30s, 5m, 1h)"),
                );
            }
        }
        for (j, message) in m.messages.iter().enumerate() {
            c.not_empty(&format!("{at}.messages[{j}]"), message);
        }
    }
}

/// `[[failover]]`: unique names, exactly one of project or group, valid variable names.
fn validate_failovers(c: &mut Checker, switches: &[crate::model::FailoverSwitch]) {
    let mut names = BTreeSet::new();
    for (i, f) in switches.iter().enumerate() {
        let at = format!("failover[{i}]");
        name_like(c, &format!("{at}.name"), &f.name);
        if !names.insert(f.name.to_ascii_lowercase()) {
            c.fail(
                &format!("{at}.name"),
                format!("{:?} is configured twice", f.name),
            );
        }
        match (&f.project, &f.group) {
            (Some(project), None) => c.project_path(&format!("{at}.project"), project),
            (None, Some(group)) => c.not_empty(&format!("{at}.group"), group),
            _ => c.fail(
                &at,
                "needs exactly one of `project` or `group` (where its CI/CD variables are set)",
            ),
        }
        if f.variables.is_empty() {
            c.fail(&format!("{at}.variables"), "must set at least one variable");
        }
        for name in f.variables.keys() {
            c.variable_name(&format!("{at}.variables.{name}"), name);
        }
    }
}

/// A service or environment name as commands take it: letters, digits, `.`, `_`, `-`.
fn name_like(c: &mut Checker, key: &str, name: &str) {
    let ok = name.len() <= 64
        && name.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-'));
    if !ok {
        c.fail(
            key,
            format!("{name:?} is not a name (expected a letter or digit, then letters, digits, `.`, `_`, `-`)"),
        );
    }
}
