//! Waiting for an outcome of an asynchronous system without guessing how long it takes.
//!
//! The saga settles through several processes and a broker, so a test cannot know when a
//! result will be visible; a fixed sleep is either too short on a slow machine (flaky) or
//! too long everywhere (slow). Tests therefore ask [`eventually`] to look again and again
//! until the check passes, and to fail with what it saw last when the deadline passes.
//! The short pauses between two looks live here and nowhere else.

use std::fmt::Display;
use std::future::Future;
use std::panic::Location;
use std::time::Duration;

use tokio::time::Instant;

/// Longest pause between two looks; short enough that a test hardly waits after the fact.
const MAX_PAUSE: Duration = Duration::from_millis(100);

/// What one look at the system found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll<T> {
    /// The awaited state, with whatever the caller wants back.
    Ready(T),
    /// Not there yet; the text says what was seen instead.
    Pending(String),
    /// It will never get there (a process died, an order went the wrong way): stop now
    /// instead of waiting out the deadline.
    Failed(String),
}

/// Anything a check may answer: `Option` (None = not yet), `Result` (Err = not yet, with
/// the error as the observation) or a [`Poll`].
pub trait Observation {
    type Value;
    fn into_poll(self) -> Poll<Self::Value>;
}

impl<T> Observation for Poll<T> {
    type Value = T;
    fn into_poll(self) -> Poll<T> {
        self
    }
}

impl<T> Observation for Option<T> {
    type Value = T;
    fn into_poll(self) -> Poll<T> {
        match self {
            Some(v) => Poll::Ready(v),
            None => Poll::Pending("the check answered None".to_owned()),
        }
    }
}

impl<T, E: Display> Observation for Result<T, E> {
    type Value = T;
    fn into_poll(self) -> Poll<T> {
        match self {
            Ok(v) => Poll::Ready(v),
            Err(e) => Poll::Pending(e.to_string()),
        }
    }
}

/// Runs `check` until it is ready, and returns its value; panics with the last observation
/// (and the caller's location) if `deadline` passes first or the check reports failure.
#[track_caller]
pub fn eventually<F, Fut, O>(deadline: Duration, check: F) -> impl Future<Output = O::Value>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
    O: Observation,
{
    // Captured here, outside the async block, because `#[track_caller]` does not reach
    // into the future's body.
    let caller = Location::caller();
    async move {
        match until(deadline, check).await {
            Ok(v) => v,
            Err(last) => panic!("waited at {caller} for up to {deadline:?} in vain: {last}"),
        }
    }
}

/// Like [`eventually`], but answers `Err(last observation)` instead of panicking, for
/// callers that want to add context (logs, say) before failing.
pub async fn until<F, Fut, O>(deadline: Duration, mut check: F) -> Result<O::Value, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = O>,
    O: Observation,
{
    let started = Instant::now();
    let end = started + deadline;
    let mut pause = Duration::from_millis(5);
    let mut last = String::from("nothing was observed");
    loop {
        // A check that hangs (a request to a stopped process, say) must not overrun the
        // deadline by its own timeout; the last check still gets a fair second.
        let budget = end
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        match tokio::time::timeout(budget, check()).await {
            Ok(observed) => match observed.into_poll() {
                Poll::Ready(v) => return Ok(v),
                Poll::Pending(seen) => last = seen,
                Poll::Failed(why) => {
                    return Err(format!("{why} (gave up after {:?})", started.elapsed()));
                }
            },
            Err(_) => last = format!("a check did not finish within {budget:?}; before: {last}"),
        }
        let now = Instant::now();
        if now >= end {
            return Err(format!(
                "last observation after {:?}: {last}",
                started.elapsed()
            ));
        }
        tokio::time::sleep(pause.min(end - now)).await;
        pause = (pause * 2).min(MAX_PAUSE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn eventually_returns_the_value_once_the_check_passes() {
        let calls = AtomicU32::new(0);
        let got = eventually(Duration::from_secs(5), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            if n >= 3 { Some(n) } else { None }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    async fn until_reports_the_last_observation_when_the_deadline_passes() {
        let calls = AtomicU32::new(0);
        let err = until(Duration::from_millis(50), || async {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(format!("seen {n}"))
        })
        .await
        .unwrap_err();
        let n = calls.load(Ordering::SeqCst);
        assert!(n >= 2, "the check should run more than once, ran {n} times");
        assert!(err.contains(&format!("seen {}", n - 1)), "{err}");
    }

    #[tokio::test]
    async fn until_stops_at_once_on_failure() {
        let calls = AtomicU32::new(0);
        let err = until(Duration::from_secs(30), || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Poll::<()>::Failed("process exited".into())
        })
        .await
        .unwrap_err();
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(err.starts_with("process exited"), "{err}");
    }

    #[tokio::test]
    #[should_panic(expected = "poll.rs")]
    async fn eventually_names_the_waiting_line_when_it_gives_up() {
        eventually(Duration::from_millis(10), || async { None::<()> }).await;
    }
}
