//! Exactly-once creates against APIs without idempotency keys (GitLab pipelines and notes,
//! Alertmanager silences): every object shepherd creates carries a marker of its request (a
//! `SHEPHERD_REQUEST_ID` variable, a hidden `<!-- shepherd:... -->`, a `[shepherd:...]` comment),
//! and the rule is written here once:
//!
//! 1. if an earlier attempt may have sent the create (the caller recorded that it started: a
//!    crash or a redelivery), look for the marker first;
//! 2. create; after an ambiguous answer (timeout, reset, 5xx after the body was sent), look for
//!    the marker before creating again;
//! 3. give up after `attempts` ambiguous answers in a row (the caller's queue tries later, and
//!    step 1 applies then).

use std::fmt;

/// How one create attempt failed.
#[derive(Debug)]
pub enum CreateFailure<E> {
    /// It may or may not have taken effect: look for the marker before trying again.
    Ambiguous(String),
    /// It certainly had no effect (never sent) but may work later: try again, nothing to look for.
    NotSent(String),
    /// It certainly failed, or retrying cannot help.
    Failed(E),
}

/// What [`create_once`] got: a new object, or the one an earlier attempt made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Created<T> {
    New(T),
    Found(T),
}

impl<T> Created<T> {
    pub fn into_inner(self) -> T {
        match self {
            Created::New(t) | Created::Found(t) => t,
        }
    }

    /// True when an earlier attempt had already created it.
    pub fn recovered(&self) -> bool {
        matches!(self, Created::Found(_))
    }
}

#[derive(Debug)]
pub enum OnceError<E> {
    Failed(E),
    /// Every attempt was ambiguous and the marker was not found after any of them.
    StillAmbiguous {
        attempts: u32,
        last: String,
    },
}

impl<E: fmt::Display> fmt::Display for OnceError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OnceError::Failed(e) => e.fmt(f),
            OnceError::StillAmbiguous { attempts, last } => write!(
                f,
                "the answers to the create were ambiguous {attempts} times in a row (last: {last})"
            ),
        }
    }
}

impl<E> From<E> for OnceError<E> {
    fn from(e: E) -> Self {
        OnceError::Failed(e)
    }
}

/// Creates with `create`, exactly once per marker: `find` looks for what an earlier attempt made
/// (first, when `may_have_started`; and after every ambiguous answer). `what` names the object
/// in log lines.
///
/// The closures return futures (`move || async move { ... }` over references) rather than
/// being async closures, so that the future of a caller stays `Send`.
pub async fn create_once<T, E, Find, Create>(
    what: &str,
    may_have_started: bool,
    attempts: u32,
    find: impl Fn() -> Find,
    create: impl Fn() -> Create,
) -> Result<Created<T>, OnceError<E>>
where
    Find: Future<Output = Result<Option<T>, E>>,
    Create: Future<Output = Result<T, CreateFailure<E>>>,
{
    if may_have_started && let Some(found) = find().await? {
        return Ok(Created::Found(found));
    }
    let attempts = attempts.max(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        match create().await {
            Ok(made) => return Ok(Created::New(made)),
            Err(CreateFailure::Failed(e)) => return Err(OnceError::Failed(e)),
            Err(CreateFailure::NotSent(detail)) => {
                tracing::warn!(what, attempt, %detail, "create could not be sent; trying again");
                last = detail;
            }
            Err(CreateFailure::Ambiguous(detail)) => {
                tracing::warn!(what, attempt, %detail, "create answered ambiguously; looking for our marker");
                if let Some(found) = find().await? {
                    return Ok(Created::Found(found));
                }
                last = detail;
            }
        }
    }
    Err(OnceError::StillAmbiguous { attempts, last })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A fake remote: `made` holds what exists; each create takes effect or not, and answers
    /// clearly or not, as scripted.
    struct Remote {
        made: Mutex<Vec<u32>>,
        /// Per create call: (takes effect, answer is ambiguous).
        script: Mutex<Vec<(bool, bool)>>,
        finds: Mutex<u32>,
    }

    impl Remote {
        fn new(script: &[(bool, bool)]) -> Self {
            Remote {
                made: Mutex::new(Vec::new()),
                script: Mutex::new(script.iter().rev().copied().collect()),
                finds: Mutex::new(0),
            }
        }
        async fn find(&self) -> Result<Option<u32>, String> {
            *self.finds.lock().unwrap() += 1;
            Ok(self.made.lock().unwrap().first().copied())
        }
        async fn create(&self) -> Result<u32, CreateFailure<String>> {
            let (effect, ambiguous) = self.script.lock().unwrap().pop().unwrap_or((true, false));
            if effect {
                self.made.lock().unwrap().push(7);
            }
            match (effect, ambiguous) {
                (_, true) => Err(CreateFailure::Ambiguous("502".into())),
                (true, false) => Ok(7),
                (false, false) => Err(CreateFailure::Failed("400".into())),
            }
        }
    }

    async fn run(remote: &Remote, started: bool) -> Result<Created<u32>, OnceError<String>> {
        create_once(
            "thing",
            started,
            3,
            move || remote.find(),
            move || remote.create(),
        )
        .await
    }

    #[tokio::test]
    async fn a_create_that_took_effect_and_then_answered_502_is_found_not_repeated() {
        let remote = Remote::new(&[(true, true)]);
        assert_eq!(run(&remote, false).await.unwrap(), Created::Found(7));
        assert_eq!(remote.made.lock().unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_create_that_did_not_take_effect_is_tried_again() {
        let remote = Remote::new(&[(false, true), (false, true), (true, false)]);
        assert_eq!(run(&remote, false).await.unwrap(), Created::New(7));
        assert_eq!(remote.made.lock().unwrap().len(), 1);
        assert_eq!(*remote.finds.lock().unwrap(), 2);
    }

    #[tokio::test]
    async fn a_restarted_create_looks_first() {
        let remote = Remote::new(&[]);
        remote.made.lock().unwrap().push(7);
        assert_eq!(run(&remote, true).await.unwrap(), Created::Found(7));
        assert_eq!(remote.made.lock().unwrap().len(), 1, "no second create");
    }

    #[tokio::test]
    async fn clear_failures_and_endless_ambiguity_are_errors() {
        let remote = Remote::new(&[(false, false)]);
        assert!(matches!(run(&remote, false).await, Err(OnceError::Failed(e)) if e == "400"));
        let remote = Remote::new(&[(false, true), (false, true), (false, true)]);
        assert!(matches!(
            run(&remote, false).await,
            Err(OnceError::StillAmbiguous { attempts: 3, .. })
        ));
        assert!(remote.made.lock().unwrap().is_empty());
    }
}
