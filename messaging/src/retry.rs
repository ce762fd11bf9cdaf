//! What a handler's failure means, and when a failed message is tried again.
//!
//! A handler answers with a [`HandlerError`] that says whether retrying can help.
//! Transient failures (a serialisation failure or deadlock, a lost race on a unique key, a
//! connection lost mid-transaction) are retried after growing delays through the retry
//! queues; permanent ones (the message breaks a rule that will still be broken tomorrow,
//! or holds a value the database cannot store) go to the dead-letter queue at once; an
//! unreachable database pauses the consumer (see [`crate::failure`] and [`crate::pause`]).

use std::time::Duration;

use crate::failure::FailureClass;

/// Delays before the 2nd, 3rd, … attempt. A message that fails once more after the last
/// one goes to the dead-letter queue, so a message is tried at most `RETRY_DELAYS.len() + 1`
/// times by handlers.
pub const RETRY_DELAYS: [Duration; 4] = [
    Duration::from_secs(1),
    Duration::from_secs(4),
    Duration::from_secs(16),
    Duration::from_secs(64),
];

/// How long a message may take from its first attempt to its last retry: the inbox must
/// remember a message at least this long, or a late redelivery could apply it twice.
pub fn longest_retry_path() -> Duration {
    RETRY_DELAYS.iter().sum()
}

/// Header counting the attempts already made (absent on the first delivery).
pub const ATTEMPT_HEADER: &str = "x-saga-attempt";

/// The delay before the attempt after `attempts_made`, or `None` when the budget is spent.
pub(crate) fn next_delay(attempts_made: u32) -> Option<Duration> {
    RETRY_DELAYS
        .get(attempts_made.checked_sub(1)? as usize)
        .copied()
}

#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Retrying later may succeed.
    #[error("transient: {0:#}")]
    Transient(anyhow::Error),
    /// Will never succeed: dead-letter with this reason code and explanation.
    #[error("{code}: {message}")]
    Permanent { code: &'static str, message: String },
    /// The database cannot be reached: not the message's fault. The consumer holds it and
    /// pauses until the database answers again.
    #[error("unreachable: {0:#}")]
    Unreachable(anyhow::Error),
}

impl HandlerError {
    pub fn permanent(code: &'static str, message: impl Into<String>) -> Self {
        HandlerError::Permanent {
            code,
            message: message.into(),
        }
    }
}

impl From<sqlx::Error> for HandlerError {
    /// A database error by its class: bad data is permanent (with the database's own
    /// explanation), an unreachable database pauses, anything else is worth another try.
    fn from(e: sqlx::Error) -> Self {
        match crate::failure::classify_sqlx(&e) {
            FailureClass::BadInput => HandlerError::Permanent {
                code: crate::failure::bad_input_code(&e),
                message: e.to_string(),
            },
            FailureClass::Unreachable => HandlerError::Unreachable(e.into()),
            FailureClass::Transient => HandlerError::Transient(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_the_budget_ends() {
        assert_eq!(next_delay(1), Some(Duration::from_secs(1)));
        assert_eq!(next_delay(2), Some(Duration::from_secs(4)));
        assert_eq!(next_delay(4), Some(Duration::from_secs(64)));
        assert_eq!(next_delay(5), None);
        assert_eq!(next_delay(0), None);
    }
}
