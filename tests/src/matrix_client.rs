//! A person on Matrix, for the tests: a real matrix-sdk client (with its own end-to-end crypto
//! store) that registers on the test Synapse, makes rooms, invites the bot, writes commands and
//! reads — decrypting, in encrypted rooms — everything said in its rooms.
//!
//! A background task syncs continuously and records every timeline event; tests await what they
//! expect on that record (`wait_for`), never sleep for it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::filter::FilterDefinition;
use matrix_sdk::ruma::api::client::room::create_room;
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::{OwnedRoomId, OwnedUserId, RoomId, UInt};
use matrix_sdk::{Client, Room};
use serde_json::Value;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::synapse::Synapse;

/// One timeline event as the person's client saw it (decrypted where it could be).
#[derive(Debug, Clone)]
pub struct Seen {
    pub room: String,
    pub event_id: String,
    pub sender: String,
    /// The event type after decryption (`m.room.message`, `m.room.member`, or
    /// `m.room.encrypted` when it could not be decrypted).
    pub kind: String,
    pub content: Value,
    /// Whether it arrived encrypted.
    pub encrypted: bool,
    /// When this client's sync brought it.
    pub received_at: std::time::Instant,
}

impl Seen {
    pub fn body(&self) -> &str {
        self.content["body"].as_str().unwrap_or("")
    }
    pub fn msgtype(&self) -> &str {
        self.content["msgtype"].as_str().unwrap_or("")
    }
    /// The event this one is in reply to.
    pub fn in_reply_to(&self) -> Option<&str> {
        self.content["m.relates_to"]["m.in_reply_to"]["event_id"].as_str()
    }
    /// The event this one edits (`m.replace`).
    pub fn replaces(&self) -> Option<&str> {
        let r = &self.content["m.relates_to"];
        (r["rel_type"] == "m.replace")
            .then(|| r["event_id"].as_str())
            .flatten()
    }
}

pub struct Human {
    pub client: Client,
    pub user_id: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    changed: Arc<Notify>,
    syncs: Arc<AtomicUsize>,
    sync: JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Human {
    fn drop(&mut self) {
        self.sync.abort();
    }
}

impl Human {
    /// Registers `name` (password `<name>-password`) and logs in with a fresh device.
    pub async fn new(synapse: &Synapse, name: &str) -> Human {
        let password = format!("{name}-password");
        synapse.register(name, &password).await;
        Self::login(synapse, name, &password).await
    }

    pub async fn login(synapse: &Synapse, name: &str, password: &str) -> Human {
        let dir = tempfile::tempdir().expect("tempdir for a client store");
        let client = Client::builder()
            .homeserver_url(synapse.url())
            .sqlite_store(dir.path(), None)
            .build()
            .await
            .expect("a matrix client");
        client
            .matrix_auth()
            .login_username(name, password)
            .initial_device_display_name(&format!("{name}'s test client"))
            .await
            .unwrap_or_else(|e| panic!("login as {name}: {e}"));
        let user_id = client.user_id().expect("logged in").to_string();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let changed = Arc::new(Notify::new());
        let syncs = Arc::new(AtomicUsize::new(0));
        let sync = tokio::spawn(sync_loop(
            client.clone(),
            seen.clone(),
            changed.clone(),
            syncs.clone(),
        ));
        let human = Human {
            client,
            user_id,
            seen,
            changed,
            syncs,
            sync,
            _dir: dir,
        };
        human.first_sync().await;
        human
    }

    async fn first_sync(&self) {
        let ok = self.until_syncs(|n| n >= 1, Duration::from_secs(30)).await;
        assert!(ok, "{}'s client did not sync within 30 s", self.user_id);
    }

    async fn until_syncs(&self, done: impl Fn(usize) -> bool, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let waiter = self.changed.notified();
            if done(self.syncs.load(Ordering::SeqCst)) {
                return true;
            }
            if tokio::time::timeout_at(deadline, waiter).await.is_err() {
                return done(self.syncs.load(Ordering::SeqCst));
            }
        }
    }

    /// Awaits the end of a sync that started after this call.
    pub async fn synced(&self) {
        let start = self.syncs.load(Ordering::SeqCst);
        let ok = self
            .until_syncs(|n| n >= start + 2, Duration::from_secs(30))
            .await;
        assert!(ok, "{}'s client did not sync within 30 s", self.user_id);
    }

    /// A private room, encrypted or not, with `invite` invited.
    pub async fn create_room(&self, encrypted: bool, invite: &[&str]) -> String {
        let mut request = create_room::v3::Request::new();
        request.invite = invite
            .iter()
            .map(|u| OwnedUserId::try_from(*u).expect("a user id"))
            .collect();
        if encrypted {
            request.initial_state = vec![
                InitialStateEvent::with_empty_state_key(
                    RoomEncryptionEventContent::with_recommended_defaults(),
                )
                .to_raw_any(),
            ];
        }
        let room = self
            .client
            .create_room(request)
            .await
            .expect("create a room");
        room.room_id().to_string()
    }

    pub fn room(&self, room: &str) -> Room {
        let id = OwnedRoomId::try_from(room).expect("a room id");
        self.client.get_room(&id).expect("a room of this client")
    }

    pub async fn invite(&self, room: &str, user: &str) {
        let user = OwnedUserId::try_from(user).expect("a user id");
        self.room(room)
            .invite_user_by_id(&user)
            .await
            .expect("invite");
    }

    /// Sends a text message; returns its event id.
    pub async fn send(&self, room: &str, body: &str) -> String {
        self.send_content(room, serde_json::json!({"msgtype": "m.text", "body": body}))
            .await
    }

    /// Sends any `m.room.message` content; returns its event id.
    pub async fn send_content(&self, room: &str, content: Value) -> String {
        self.send_event(room, "m.room.message", content).await
    }

    pub async fn send_event(&self, room: &str, kind: &str, content: Value) -> String {
        let r = self
            .room(room)
            .send_raw(kind, content)
            .await
            .unwrap_or_else(|e| panic!("send to {room}: {e}"));
        r.response.event_id.to_string()
    }

    /// Everything seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }

    /// Awaits `pred` over everything seen so far; true when it held within `timeout`.
    pub async fn until(&self, timeout: Duration, pred: impl Fn(&[Seen]) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let waiter = self.changed.notified();
            if pred(&self.seen()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, waiter).await.is_err() {
                return pred(&self.seen());
            }
        }
    }

    /// Awaits an event matching `pred` and returns it; panics with what was seen otherwise.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&Seen) -> bool,
    ) -> Seen {
        if !self.until(timeout, |seen| seen.iter().any(&pred)).await {
            panic!(
                "{} never saw {what} within {timeout:?}; it saw:\n{}",
                self.user_id,
                self.seen()
                    .iter()
                    .map(|s| format!("{} {} {} {}", s.room, s.sender, s.kind, s.content))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        self.seen()
            .into_iter()
            .find(|s| pred(s))
            .expect("seen a moment ago")
    }

    /// Awaits `user` having joined `room`.
    pub async fn wait_joined(&self, room: &str, user: &str, timeout: Duration) {
        self.wait_for(timeout, &format!("{user} join {room}"), |s| {
            s.room == room
                && s.kind == "m.room.member"
                && s.content["membership"] == "join"
                && s.sender == user
        })
        .await;
        // Sending to an encrypted room needs the member's devices: ask for them now.
        if let Ok(id) = <&RoomId>::try_from(room)
            && let Some(r) = self.client.get_room(id)
        {
            let _ = r.sync_members().await;
        }
    }

    /// Messages from `sender` in `room`, in order.
    pub fn messages_from(&self, room: &str, sender: &str) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.room == room && s.sender == sender && s.kind == "m.room.message")
            .collect()
    }
}

async fn sync_loop(
    client: Client,
    seen: Arc<Mutex<Vec<Seen>>>,
    changed: Arc<Notify>,
    syncs: Arc<AtomicUsize>,
) {
    let mut token: Option<String> = None;
    loop {
        // A high timeline limit: a burst between two syncs is seen whole, never as a gap.
        let mut filter = FilterDefinition::default();
        filter.room.timeline.limit = Some(UInt::from(1000u32));
        let mut settings = SyncSettings::default()
            .filter(filter.into())
            .timeout(Duration::from_secs(2));
        if let Some(t) = &token {
            settings = settings.token(t.clone());
        }
        match client.sync_once(settings).await {
            Ok(response) => {
                let received_at = std::time::Instant::now();
                let mut batch = Vec::new();
                for (room_id, joined) in &response.rooms.joined {
                    for event in &joined.timeline.events {
                        let Ok(json) = serde_json::from_str::<Value>(event.raw().json().get())
                        else {
                            continue;
                        };
                        batch.push(Seen {
                            room: room_id.to_string(),
                            event_id: json["event_id"].as_str().unwrap_or("").to_string(),
                            sender: json["sender"].as_str().unwrap_or("").to_string(),
                            kind: json["type"].as_str().unwrap_or("").to_string(),
                            content: json["content"].clone(),
                            encrypted: event.encryption_info().is_some() || event.kind.is_utd(),
                            received_at,
                        });
                    }
                }
                token = Some(response.next_batch);
                if let Ok(mut s) = seen.lock() {
                    s.extend(batch);
                }
                syncs.fetch_add(1, Ordering::SeqCst);
                changed.notify_waiters();
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}
