//! Every failure in one of three classes, each with one behaviour (docs/runbook.md has the
//! table):
//!
//! - [`FailureClass::BadInput`]: the data itself cannot be stored (a NUL character, a number
//!   that overflows, a value that breaks a constraint). Trying again cannot help: the bus
//!   dead-letters the message at once with the database's own explanation, and HTTP answers
//!   400.
//! - [`FailureClass::Transient`]: this attempt lost (a serialisation failure, a deadlock, a
//!   lock or statement timeout, the connection dropped in the middle of a transaction). The
//!   bus sends the message down the retry ladder.
//! - [`FailureClass::Unreachable`]: the database cannot be reached at all (connection refused,
//!   pool timeout, the server shutting down). The message is not at fault: the consumer
//!   holds it, stops taking new ones and resumes when the database answers again, so an
//!   outage of any length spends no retry and dead-letters nothing.

/// What a failure means for the message or request that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    BadInput,
    Transient,
    Unreachable,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureClass::BadInput => "bad_input",
            FailureClass::Transient => "transient",
            FailureClass::Unreachable => "unreachable",
        }
    }
}

/// The class of a SQLSTATE code.
pub(crate) fn classify_sqlstate(code: &str) -> FailureClass {
    match code {
        // unique_violation: two handlers raced to insert the same key; the loser finds the
        // row on its next try, so this one is a lost race rather than bad data.
        "23505" => FailureClass::Transient,
        // Class 22 (data exception: invalid byte sequence such as NUL, numeric value out of
        // range, …) and class 23 (integrity constraint violation): the data is wrong.
        c if c.starts_with("22") || c.starts_with("23") => FailureClass::BadInput,
        // Class 08 (connection exception), admin/crash shutdown, "cannot connect now"
        // (starting up or shutting down), too many connections: the server is not there
        // for us right now.
        c if c.starts_with("08") => FailureClass::Unreachable,
        "57P01" | "57P02" | "57P03" | "53300" => FailureClass::Unreachable,
        // 40001 serialisation failure, 40P01 deadlock, 55P03 lock timeout, 57014 statement
        // timeout, and anything else the server says: a later try may succeed.
        _ => FailureClass::Transient,
    }
}

/// The class of a database error.
pub fn classify_sqlx(error: &sqlx::Error) -> FailureClass {
    use std::io::ErrorKind;
    match error {
        sqlx::Error::Database(db) => db
            .code()
            .map_or(FailureClass::Transient, |c| classify_sqlstate(&c)),
        // No connection could be had in time, or the pool is shut.
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => FailureClass::Unreachable,
        sqlx::Error::Io(io) => match io.kind() {
            // Nothing listens, or the host cannot be reached: the server is away.
            ErrorKind::ConnectionRefused
            | ErrorKind::NotFound
            | ErrorKind::AddrNotAvailable
            | ErrorKind::TimedOut
            | ErrorKind::HostUnreachable
            | ErrorKind::NetworkUnreachable => FailureClass::Unreachable,
            // Reset, broken pipe, unexpected end: the connection was lost in the middle of
            // a transaction. The next attempt tells whether the server is still there.
            _ => FailureClass::Transient,
        },
        sqlx::Error::Tls(_) => FailureClass::Unreachable,
        _ => FailureClass::Transient,
    }
}

/// A short code for a bad-input database error, for the dead-letter header and HTTP.
pub fn bad_input_code(error: &sqlx::Error) -> &'static str {
    match error.as_database_error().and_then(|d| d.code()).as_deref() {
        Some(c) if c.starts_with("23") => "constraint_violation",
        _ => "invalid_value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_exceptions_and_constraint_violations_are_bad_input() {
        for code in ["22021", "22003", "22P02", "23514", "23502", "23503"] {
            assert_eq!(classify_sqlstate(code), FailureClass::BadInput, "{code}");
        }
    }

    #[test]
    fn lost_races_are_transient() {
        for code in ["40001", "40P01", "55P03", "57014", "23505"] {
            assert_eq!(classify_sqlstate(code), FailureClass::Transient, "{code}");
        }
    }

    #[test]
    fn a_server_that_is_away_is_unreachable() {
        for code in ["57P01", "57P03", "08006", "53300"] {
            assert_eq!(classify_sqlstate(code), FailureClass::Unreachable, "{code}");
        }
        assert_eq!(
            classify_sqlx(&sqlx::Error::PoolTimedOut),
            FailureClass::Unreachable
        );
        assert_eq!(
            classify_sqlx(&sqlx::Error::PoolClosed),
            FailureClass::Unreachable
        );
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            classify_sqlx(&sqlx::Error::Io(refused)),
            FailureClass::Unreachable
        );
    }

    #[test]
    fn a_connection_lost_mid_transaction_is_transient() {
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(
            classify_sqlx(&sqlx::Error::Io(reset)),
            FailureClass::Transient
        );
    }
}
