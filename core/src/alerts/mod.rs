//! Alert relay: Alertmanager's webhook notifications routed to rooms.
//!
//! A notification (webhook payload version 4) is stored by the HTTP front end before it is
//! answered; a worker then routes every alert through the configured routes (Alertmanager's
//! semantics: the first route whose matchers all match takes the alert, later routes too while
//! a matching route says `continue`; nothing matched: the default targets), skips a
//! notification it already showed within the dedup window (Alertmanager repeats a group every
//! `repeat_interval`, and a lost answer makes it send again), and hands each room its alerts to
//! word (plugins own the wording, templates included). Lines reach the rooms through the outbox,
//! so a chat server that is down only delays them.

pub mod client;
pub mod matcher;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};

use crate::origin::Origin;
use crate::queue::Payload;
use crate::store::{StoreError, now_ms};
pub use client::{
    ActiveAlert, Alertmanager, AlertmanagerError, AlertmanagerSettings, NewSilence, Silence,
};
pub use matcher::{LabelSet, MatchOp, Matcher, MatcherError};

/// One alert of a notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    pub status: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub annotations: Labels,
    #[serde(rename = "startsAt", default)]
    pub starts_at: String,
    #[serde(rename = "endsAt", default)]
    pub ends_at: String,
    #[serde(rename = "generatorURL", default)]
    pub generator_url: String,
    #[serde(default)]
    pub fingerprint: String,
}

/// An alert's labels or annotations: name–value pairs sorted by name, in one exactly sized
/// allocation. A storm holds thousands of alerts at once, each with two of these; as
/// `BTreeMap`s each cost a 500-byte node however few pairs they hold. Reads like a map: one
/// value per name (the last, when a body repeats a name), iterated in name order, and written
/// out as a JSON object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels(Box<[(String, String)]>);

impl Labels {
    pub fn get(&self, name: &str) -> Option<&String> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(name))
            .ok()
            .map(|i| &self.0[i].1)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &String)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, String)> for Labels {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(pairs: I) -> Self {
        let mut pairs: Vec<(String, String)> = pairs.into_iter().collect();
        // Stable: of pairs with the same name the last stays, as a map's insert would keep it.
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let mut unique: Vec<(String, String)> = Vec::with_capacity(pairs.len());
        for pair in pairs {
            match unique.last_mut() {
                Some(last) if last.0 == pair.0 => *last = pair,
                _ => unique.push(pair),
            }
        }
        Labels(unique.into_boxed_slice())
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        Labels(map.into_iter().collect())
    }
}

impl matcher::LabelSet for Labels {
    fn label(&self, name: &str) -> &str {
        self.get(name).map_or("", String::as_str)
    }
}

impl Serialize for Labels {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Labels {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Pairs;
        impl<'de> serde::de::Visitor<'de> for Pairs {
            type Value = Labels;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a map of names to string values")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<Labels, M::Error> {
                let mut pairs = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(pair) = map.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(pairs.into_iter().collect())
            }
        }
        deserializer.deserialize_map(Pairs)
    }
}

/// Alertmanager's webhook payload, version 4. Its alerts are read as `A`: all of them, or
/// only their number ([`AlertCount`], for a body that is checked and stored, not worded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification<A = Vec<Alert>> {
    pub version: String,
    #[serde(rename = "groupKey")]
    pub group_key: String,
    #[serde(rename = "truncatedAlerts", default)]
    pub truncated_alerts: u64,
    pub status: String,
    #[serde(default)]
    pub receiver: String,
    #[serde(rename = "groupLabels", default)]
    pub group_labels: BTreeMap<String, String>,
    #[serde(rename = "commonLabels", default)]
    pub common_labels: BTreeMap<String, String>,
    #[serde(rename = "commonAnnotations", default)]
    pub common_annotations: BTreeMap<String, String>,
    #[serde(rename = "externalURL", default)]
    pub external_url: String,
    pub alerts: A,
}

/// A notification's alerts, each read in full (so its shape is checked as the lane will read
/// it) and let go at once: only how many there were is kept. A storm of 10,000 alerts is tens
/// of MiB as `Vec<Alert>`, and the webhook needs none of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AlertCount(pub usize);

impl<'de> Deserialize<'de> for AlertCount {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Counter;
        impl<'de> serde::de::Visitor<'de> for Counter {
            type Value = AlertCount;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a sequence of alerts")
            }
            fn visit_seq<S: serde::de::SeqAccess<'de>>(
                self,
                mut seq: S,
            ) -> Result<AlertCount, S::Error> {
                let mut n = 0;
                while seq.next_element::<Alert>()?.is_some() {
                    n += 1;
                }
                Ok(AlertCount(n))
            }
        }
        deserializer.deserialize_seq(Counter)
    }
}

/// Why a webhook body is not a notification shepherd stores (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotificationError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("unsupported notification version {0:?} (expected \"4\")")]
    Version(String),
    #[error("not an Alertmanager notification: {0}")]
    Shape(String),
}

/// Decodes a webhook body: JSON, version 4, the payload's shape, read straight into the typed
/// notification (no JSON tree), every alert checked but only counted ([`AlertCount`]: a
/// storm's 3.5 MiB body costs its 3.5 MiB, not its alerts as well). Returns the body as it
/// came, which is what is stored, beside the notification; the lane reads it in full. `POST
/// /hooks/alertmanager` calls it before it stores anything; the fuzz target
/// `alertmanager_webhook` feeds it arbitrary input.
pub fn decode_notification(
    body: &[u8],
) -> Result<(Payload, Notification<AlertCount>), NotificationError> {
    /// Only the version, first: a body of another version is refused as such, whatever its
    /// shape. Everything else is skipped without being kept.
    #[derive(Deserialize)]
    struct Version {
        #[serde(default)]
        version: Option<serde_json::Value>,
    }
    let head: Version =
        serde_json::from_slice(body).map_err(|e| NotificationError::NotJson(e.to_string()))?;
    let version = head
        .version
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .unwrap_or("");
    if version != "4" {
        return Err(NotificationError::Version(version.to_string()));
    }
    let notification =
        serde_json::from_slice(body).map_err(|e| NotificationError::Shape(e.to_string()))?;
    // Skipped fields are not checked for UTF-8 by the decoder; the stored text must be.
    let text = String::from_utf8(body.to_vec())
        .map_err(|e| NotificationError::NotJson(format!("the body is not UTF-8: {e}")))?;
    Ok((Payload::decoded(text), notification))
}

impl Notification {
    /// Names this notification's content: the same group with the same alerts in the same
    /// states is the same notification, however often Alertmanager sends it.
    pub fn content_key(&self) -> String {
        use std::fmt::Write as _;
        let mut alerts: Vec<String> = self
            .alerts
            .iter()
            .map(|a| {
                format!(
                    "{}|{}|{}|{}",
                    a.fingerprint, a.status, a.starts_at, a.ends_at
                )
            })
            .collect();
        alerts.sort();
        let mut text = format!(
            "{}\u{1f}{}\u{1f}{}",
            self.receiver, self.group_key, self.status
        );
        for a in alerts {
            let _ = write!(text, "\u{1f}{a}");
        }
        text
    }
}

#[derive(Debug, Clone)]
pub struct Route {
    pub matchers: Vec<Matcher>,
    pub targets: Vec<Origin>,
    pub continue_matching: bool,
}

/// The routes of `[alerts]`, in order, and where unrouted alerts go.
#[derive(Debug, Clone, Default)]
pub struct Router {
    pub routes: Vec<Route>,
    pub default_targets: Vec<Origin>,
}

impl Router {
    /// The rooms an alert with `labels` goes to, each once, in route order.
    pub fn targets(&self, labels: &impl matcher::LabelSet) -> Vec<Origin> {
        let mut out: Vec<Origin> = Vec::new();
        let mut matched = false;
        for route in &self.routes {
            if !matcher::all_match(&route.matchers, labels) {
                continue;
            }
            matched = true;
            for t in &route.targets {
                if !out.contains(t) {
                    out.push(t.clone());
                }
            }
            if !route.continue_matching {
                break;
            }
        }
        if !matched {
            out = self.default_targets.clone();
        }
        out
    }

    /// The notification's alerts by room, rooms in the order they are first met and alerts in
    /// the notification's order; alerts that go nowhere are returned apart.
    pub fn plan<'a>(&self, n: &'a Notification) -> (Vec<(Origin, Vec<&'a Alert>)>, Vec<&'a Alert>) {
        let mut by_room: Vec<(Origin, Vec<&Alert>)> = Vec::new();
        let mut nowhere = Vec::new();
        for alert in &n.alerts {
            let targets = self.targets(&alert.labels);
            if targets.is_empty() {
                nowhere.push(alert);
            }
            for t in targets {
                match by_room.iter_mut().find(|(o, _)| *o == t) {
                    Some((_, alerts)) => alerts.push(alert),
                    None => by_room.push((t, vec![alert])),
                }
            }
        }
        (by_room, nowhere)
    }
}

/// Whether each of many notifications is shown now, judged in one statement per chunk: which of
/// `keys` are new, or were last shown before the window (`window_ms` ago), and so are shown now. `keys` must be distinct (PostgreSQL refuses
/// to update one row twice in a statement); a key repeated in a batch is a repeat by definition.
pub async fn first_showings_in(
    conn: &mut AnyConnection,
    keys: &[&str],
    window_ms: i64,
) -> Result<std::collections::HashSet<String>, StoreError> {
    let now = now_ms();
    let mut shown = std::collections::HashSet::new();
    for chunk in keys.chunks(crate::commit::ROWS_PER_STATEMENT) {
        // $1 is now, $2 the window's start; each key is its own parameter after them.
        let values = (0..chunk.len())
            .map(|i| format!("(${}, $1)", i + 3))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "INSERT INTO alert_notices (key, shown_at) VALUES {values} \
             ON CONFLICT (key) DO UPDATE SET shown_at = $1 WHERE alert_notices.shown_at < $2 \
             RETURNING key"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(now - window_ms);
        for key in chunk {
            q = q.bind(key.to_string());
        }
        for row in q.fetch_all(&mut *conn).await? {
            shown.insert(row.try_get::<String, _>("key")?);
        }
    }
    Ok(shown)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(matchers: &str, targets: &[&str], cont: bool) -> Route {
        Route {
            matchers: Matcher::parse_list(matchers).expect("matchers"),
            targets: targets.iter().filter_map(|t| Origin::parse(t)).collect(),
            continue_matching: cont,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn labels_read_like_a_map_and_hold_their_pairs_in_one_block() {
        let l: Labels =
            serde_json::from_str(r#"{"severity":"page","alertname":"A","severity":"info","x":""}"#)
                .expect("labels");
        // One value per name, the last given; in name order; absent and empty read alike.
        assert_eq!(l.len(), 3);
        assert_eq!(l.get("severity").map(String::as_str), Some("info"));
        assert_eq!(l.get("nope"), None);
        assert_eq!(
            l.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            ["alertname", "severity", "x"]
        );
        assert_eq!((l.label("x"), l.label("nope")), ("", ""));
        assert_eq!(
            serde_json::to_string(&l).expect("json"),
            r#"{"alertname":"A","severity":"info","x":""}"#
        );
        let map: BTreeMap<String, String> = labels(&[("b", "2"), ("a", "1")]);
        assert_eq!(Labels::from(map.clone()), map.into_iter().collect());
        for bad in [r#"["a"]"#, r#"{"a":1}"#, "null"] {
            assert!(serde_json::from_str::<Labels>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_body_is_checked_alert_by_alert_counted_and_stored_as_it_came() {
        let alert =
            |status: &str| format!(r#"{{"status":"{status}","labels":{{"alertname":"A"}}}}"#);
        let body = |alerts: &str| {
            format!(
                r#"{{"version":"4","groupKey":"g","status":"firing","receiver":"r","alerts":[{alerts}]}}"#
            )
        };
        let good = body(&[alert("firing"), alert("resolved"), alert("firing")].join(","));
        let (stored, head) = decode_notification(good.as_bytes()).expect("a notification");
        assert_eq!((head.alerts, head.receiver.as_str()), (AlertCount(3), "r"));
        assert_eq!(stored.as_str(), good);
        let full: Notification = stored.decode().expect("the lane reads it in full");
        assert_eq!(full.alerts.len(), 3);
        assert_eq!(full.alerts[1].status, "resolved");
        // The second alert has no status: refused as a whole, like the lane would refuse it.
        let bad = body(&[alert("firing"), r#"{"labels":{}}"#.to_string()].join(","));
        assert!(matches!(
            decode_notification(bad.as_bytes()),
            Err(NotificationError::Shape(why)) if why.contains("status")
        ));
        assert!(matches!(
            decode_notification(body("").replace("[]", "null").as_bytes()),
            Err(NotificationError::Shape(_))
        ));
    }

    #[test]
    fn first_match_wins_unless_it_continues_and_the_default_takes_the_rest() {
        let router = Router {
            routes: vec![
                route(r#"severity=~"critical|page""#, &["irc:#ops"], true),
                route(r#"team="db""#, &["irc:#db"], false),
                route(r#"team=~".+""#, &["irc:#teams"], false),
            ],
            default_targets: vec![Origin::new("irc", "#alerts")],
        };
        let t = |l: &[(&str, &str)]| -> Vec<String> {
            router
                .targets(&labels(l))
                .iter()
                .map(|o| o.to_string())
                .collect()
        };
        assert_eq!(
            t(&[("severity", "critical"), ("team", "db")]),
            ["irc:#ops", "irc:#db"]
        );
        assert_eq!(t(&[("severity", "warning"), ("team", "db")]), ["irc:#db"]);
        assert_eq!(t(&[("team", "web")]), ["irc:#teams"]);
        assert_eq!(t(&[("severity", "info")]), ["irc:#alerts"]);
        assert_eq!(t(&[("severity", "page")]), ["irc:#ops"]);
    }

    #[test]
    fn the_content_key_ignores_alert_order_but_not_state() {
        let alert = |fp: &str, status: &str| Alert {
            status: status.into(),
            labels: Labels::default(),
            annotations: Labels::default(),
            starts_at: "t0".into(),
            ends_at: String::new(),
            generator_url: String::new(),
            fingerprint: fp.into(),
        };
        let n = |alerts: Vec<Alert>| Notification {
            version: "4".into(),
            group_key: "g".into(),
            truncated_alerts: 0,
            status: "firing".into(),
            receiver: "r".into(),
            group_labels: BTreeMap::new(),
            common_labels: BTreeMap::new(),
            common_annotations: BTreeMap::new(),
            external_url: String::new(),
            alerts,
        };
        let a = n(vec![alert("1", "firing"), alert("2", "firing")]);
        let b = n(vec![alert("2", "firing"), alert("1", "firing")]);
        let c = n(vec![alert("1", "firing"), alert("2", "resolved")]);
        assert_eq!(a.content_key(), b.content_key());
        assert_ne!(a.content_key(), c.content_key());
    }
}
