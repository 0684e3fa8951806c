//! Rate limits on everything a person can make the bot say.
//!
//! Every line addressed to the bot counts — a command, a typo, an unknown word, a refused
//! command — against its sender (`rate_limits.per_identity_per_minute`) and its room
//! (`per_room_per_minute`), before any reply is made. Over a limit the line is dropped; the
//! sender (or room) is told to slow down once, and then nothing more until a minute has passed
//! since that warning, so a flood costs the channel one line, not one per junk line. The state
//! of senders and rooms not seen for a while is pruned (see [`Limits::prune`]), so it does not
//! grow with every identity ever seen.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

/// How long a "slow down" covers: no second one within this time.
pub const WARN_WINDOW: Duration = Duration::from_secs(60);

type Keyed<C> =
    RateLimiter<String, DashMapStateStore<String>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// Which limit a line ran into.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Identity,
    Room,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::Identity => "identity",
            Scope::Room => "room",
        }
    }
}

/// What to do with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within the limits: handle it.
    Go,
    /// Over a limit: drop it, and say "slow down" (the first time in the window).
    Warn(Scope),
    /// Over a limit, already warned: drop it silently.
    Drop(Scope),
}

pub struct Limits<C: Clock = DefaultClock> {
    clock: C,
    per_identity_per_minute: u32,
    per_room_per_minute: u32,
    per_identity: Keyed<C>,
    per_room: Keyed<C>,
    /// When each sender or room was last told to slow down (`i:` / `r:` + key).
    warned: Mutex<HashMap<String, C::Instant>>,
}

fn quota(per_minute: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(per_minute).unwrap_or(NonZeroU32::MIN))
}

impl Limits<DefaultClock> {
    pub fn new(per_identity_per_minute: u32, per_room_per_minute: u32) -> Self {
        Self::with_clock(
            per_identity_per_minute,
            per_room_per_minute,
            DefaultClock::default(),
        )
    }
}

impl<C: Clock + Clone> Limits<C> {
    pub fn with_clock(per_identity_per_minute: u32, per_room_per_minute: u32, clock: C) -> Self {
        Self {
            per_identity_per_minute,
            per_room_per_minute,
            per_identity: RateLimiter::dashmap_with_clock(
                quota(per_identity_per_minute),
                clock.clone(),
            ),
            per_room: RateLimiter::dashmap_with_clock(quota(per_room_per_minute), clock.clone()),
            clock,
            warned: Mutex::new(HashMap::new()),
        }
    }

    /// Lines a minute the limit of `scope` allows.
    pub fn per_minute(&self, scope: Scope) -> u32 {
        match scope {
            Scope::Identity => self.per_identity_per_minute,
            Scope::Room => self.per_room_per_minute,
        }
    }

    /// Counts one line from `identity` in `room` and says what to do with it. A line over the
    /// sender's limit does not use up the room's.
    pub fn check(&self, identity: &str, room: &str) -> Verdict {
        let (scope, key) = if self.per_identity.check_key(&identity.to_string()).is_err() {
            (Scope::Identity, format!("i:{identity}"))
        } else if self.per_room.check_key(&room.to_string()).is_err() {
            (Scope::Room, format!("r:{room}"))
        } else {
            return Verdict::Go;
        };
        let now = self.clock.now();
        let Ok(mut warned) = self.warned.lock() else {
            return Verdict::Drop(scope);
        };
        match warned.get(&key) {
            Some(at) if Duration::from(now.duration_since(*at)) < WARN_WINDOW => {
                Verdict::Drop(scope)
            }
            _ => {
                warned.insert(key, now);
                Verdict::Warn(scope)
            }
        }
    }

    /// Forgets senders and rooms whose limits are back to full and whose warning is over;
    /// returns how many keys are still kept. Called every minute.
    pub fn prune(&self) -> usize {
        self.per_identity.retain_recent();
        self.per_identity.shrink_to_fit();
        self.per_room.retain_recent();
        self.per_room.shrink_to_fit();
        let now = self.clock.now();
        let warned = match self.warned.lock() {
            Ok(mut w) => {
                w.retain(|_, at| Duration::from(now.duration_since(*at)) < WARN_WINDOW);
                w.shrink_to_fit();
                w.len()
            }
            Err(_) => 0,
        };
        self.per_identity.len() + self.per_room.len() + warned
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    #[test]
    fn a_flood_gets_the_limit_then_one_warning_then_silence() {
        let clock = FakeRelativeClock::default();
        let limits = Limits::with_clock(5, 1000, clock.clone());
        let verdicts: Vec<Verdict> = (0..300)
            .map(|_| limits.check("irc:mallory", "irc:#ops"))
            .collect();
        assert_eq!(verdicts.iter().filter(|v| **v == Verdict::Go).count(), 5);
        assert_eq!(
            verdicts
                .iter()
                .filter(|v| **v == Verdict::Warn(Scope::Identity))
                .count(),
            1
        );
        // A bystander in the same room is not affected.
        assert_eq!(limits.check("irc:alice", "irc:#ops"), Verdict::Go);
        // Still flooding after the window: one more warning.
        clock.advance(WARN_WINDOW);
        let later: Vec<Verdict> = (0..50)
            .map(|_| limits.check("irc:mallory", "irc:#ops"))
            .collect();
        assert_eq!(
            later
                .iter()
                .filter(|v| matches!(v, Verdict::Warn(_)))
                .count(),
            1
        );
    }

    #[test]
    fn a_busy_room_is_limited_as_a_whole() {
        let limits = Limits::with_clock(1000, 3, FakeRelativeClock::default());
        let v: Vec<Verdict> = ["a", "b", "c", "d", "e"]
            .iter()
            .map(|who| limits.check(who, "irc:#ops"))
            .collect();
        assert_eq!(
            v,
            [
                Verdict::Go,
                Verdict::Go,
                Verdict::Go,
                Verdict::Warn(Scope::Room),
                Verdict::Drop(Scope::Room)
            ]
        );
        assert_eq!(limits.check("a", "irc:#other"), Verdict::Go);
    }

    #[test]
    fn state_of_quiet_senders_is_pruned() {
        let clock = FakeRelativeClock::default();
        let limits = Limits::with_clock(30, 120, clock.clone());
        for i in 0..1000 {
            limits.check(
                &format!("irc-unidentified:nick{i}"),
                &format!("irc:nick{i}"),
            );
        }
        assert!(limits.prune() >= 2000, "recent senders are kept");
        clock.advance(Duration::from_secs(120));
        assert_eq!(limits.prune(), 0);
    }
}
