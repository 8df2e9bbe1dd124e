//! How a database failure reads to a caller: the one classification both services map their
//! storage errors with, so that the same SQLSTATE never means "retry" in one service and
//! "internal error" in the other.

/// What a failed statement means for the request that ran it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageFailure {
    /// The pool or the server is unreachable or busy, the transaction lost a serialization or
    /// deadlock race, or the server is a standby or a primary not yet writable after a
    /// failover: the same request may simply be retried. Nothing was committed, except when
    /// the connection broke during the COMMIT itself, whose outcome is then unknown: the retry,
    /// with the same request id, finds out.
    Unavailable,
    /// A concurrent transaction wrote the same key first (a unique, exclusion or foreign-key
    /// violation): nothing was committed; the request, retried, sees the other write.
    Conflict,
    /// The write would break an invariant the database holds (a CHECK, NOT NULL or RESTRICT
    /// violation): nothing was committed, and a retry of the same request fails the same way.
    Constraint,
    /// Anything else: a bug, or a schema that does not match the code.
    Other,
}

/// Classifies `error` by its kind and SQLSTATE.
pub fn classify(error: &sqlx::Error) -> StorageFailure {
    if matches!(
        error,
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)
    ) {
        return StorageFailure::Unavailable;
    }
    let Some(code) = error.as_database_error().and_then(|e| e.code()) else {
        return StorageFailure::Other;
    };
    classify_sqlstate(&code)
}

/// Classifies a SQLSTATE (PostgreSQL appendix A).
pub fn classify_sqlstate(code: &str) -> StorageFailure {
    match code {
        // serialization_failure, deadlock_detected, admin_shutdown, crash_shutdown,
        // cannot_connect_now, insufficient_resources, out_of_memory, too_many_connections,
        // read_only_sql_transaction (a standby, or a promoted one not yet writable)
        "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53000" | "53200" | "53300" | "25006" => {
            StorageFailure::Unavailable
        }
        // connection_exception and its subclasses
        code if code.starts_with("08") => StorageFailure::Unavailable,
        // unique_violation, exclusion_violation, foreign_key_violation
        "23505" | "23P01" | "23503" => StorageFailure::Conflict,
        // the rest of class 23: integrity_constraint_violation, restrict_violation,
        // not_null_violation, check_violation
        code if code.starts_with("23") => StorageFailure::Constraint,
        _ => StorageFailure::Other,
    }
}

impl StorageFailure {
    /// The `ErrorInfo` reason clients switch on.
    pub const fn reason(self) -> &'static str {
        match self {
            StorageFailure::Unavailable => "STORAGE_UNAVAILABLE",
            StorageFailure::Conflict => "WRITE_CONFLICT",
            StorageFailure::Constraint => "CONSTRAINT_VIOLATED",
            StorageFailure::Other => "INTERNAL",
        }
    }
}

/// `error` in the client's terms, its status code and message, with the detail logged (it
/// never reaches the client): a constraint violation is `ABORTED` (a conflict to retry, or an
/// invariant the write would break), never an internal error.
pub fn to_status_parts(error: &sqlx::Error) -> (tonic::Code, &'static str) {
    match classify(error) {
        StorageFailure::Unavailable => {
            tracing::warn!(%error, "database unavailable");
            (
                tonic::Code::Unavailable,
                "storage is temporarily unavailable; retry",
            )
        }
        StorageFailure::Conflict => {
            tracing::warn!(%error, "write conflict");
            (
                tonic::Code::Aborted,
                "the write conflicted with a concurrent one; nothing was changed, retry",
            )
        }
        // ABORTED, not FAILED_PRECONDITION: callers read FAILED_PRECONDITION as a refusal
        // that left nothing behind, and the transaction that failed may have been recording a
        // processor's answer. Nothing was committed; the caller's retry finds out.
        StorageFailure::Constraint => {
            tracing::error!(%error, "constraint violated");
            (
                tonic::Code::Aborted,
                "the write would break an invariant of the stored data; nothing was changed",
            )
        }
        StorageFailure::Other => {
            tracing::error!(%error, "database error");
            (tonic::Code::Internal, "internal error")
        }
    }
}

/// Whether `error` is a transaction losing a race it can win when run again: a
/// serialization failure (40001) or a deadlock (40P01). Postgres rolled the whole transaction
/// back; nothing of it was committed.
pub fn is_transaction_conflict(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|e| e.code())
        .is_some_and(|code| is_transaction_conflict_code(&code))
}

/// Whether a SQLSTATE is a serialization failure or a deadlock.
fn is_transaction_conflict_code(code: &str) -> bool {
    code == "40001" || code == "40P01"
}

/// An error that may be a transaction conflict ([`is_transaction_conflict`]).
pub trait TransactionError {
    /// Whether the transaction lost a serialization or deadlock race.
    fn is_transaction_conflict(&self) -> bool;
}

impl TransactionError for sqlx::Error {
    fn is_transaction_conflict(&self) -> bool {
        is_transaction_conflict(self)
    }
}

/// How a transaction that lost a serialization or deadlock race is run again: at most
/// `attempts` runs in all, the n-th retry after a random wait (full jitter) of up to
/// `base * 2^(n-1)`, never above `cap`, so that the transactions that collided do not meet
/// again at the same moment.
/// Each retry counts in the service's own counter (by transaction).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConflictRetry {
    /// Runs in all, the first included.
    pub attempts: u32,
    /// The first retry's longest wait.
    pub base: std::time::Duration,
    /// The longest wait.
    pub cap: std::time::Duration,
    /// The counter of retries, labelled `transaction` (the service's own family).
    pub counter: &'static str,
}

impl ConflictRetry {
    /// Five runs, waits of up to 5, 10, 20 and 40 ms, counted in `counter`: a race lost five
    /// times in a row is contention a caller should hear about (`UNAVAILABLE`,
    /// `STORAGE_UNAVAILABLE`).
    pub const fn counted_in(counter: &'static str) -> ConflictRetry {
        ConflictRetry {
            attempts: 5,
            base: std::time::Duration::from_millis(5),
            cap: std::time::Duration::from_millis(200),
            counter,
        }
    }

    /// The longest wait before retry `n` (1 for the first).
    pub fn ceiling(&self, n: u32) -> std::time::Duration {
        self.base
            .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
            .min(self.cap)
    }

    /// Runs `transaction` (a whole transaction: begin, statements, commit) until it succeeds,
    /// fails otherwise than by a conflict, or has run [`ConflictRetry::attempts`] times.
    /// `what` names it in the log line of each retry and the counter's `transaction` label.
    pub async fn run<T, E, F, Fut>(&self, what: &'static str, mut transaction: F) -> Result<T, E>
    where
        E: TransactionError,
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, E>>,
    {
        let mut run = 1;
        loop {
            match transaction().await {
                Err(error) if error.is_transaction_conflict() && self.again(what, run).await => {
                    run += 1;
                }
                other => return other,
            }
        }
    }

    /// After run `run` of the transaction `what` lost a race: false once it has run
    /// [`ConflictRetry::attempts`] times; otherwise counts the retry, waits its jittered time
    /// and answers true. For loops [`ConflictRetry::run`] cannot hold (a transaction over
    /// data borrowed mutably).
    pub async fn again(&self, what: &'static str, run: u32) -> bool {
        if run >= self.attempts {
            return false;
        }
        let wait = jitter(self.ceiling(run));
        tracing::debug!(
            transaction = what,
            run,
            ?wait,
            "transaction conflict; retrying"
        );
        metrics::counter!(self.counter, "transaction" => what).increment(1);
        tokio::time::sleep(wait).await;
        true
    }
}

/// A random wait from zero to `ceiling`.
fn jitter(ceiling: std::time::Duration) -> std::time::Duration {
    ceiling.mul_f64(crate::ids::random_fraction())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in error: a conflict or not.
    #[derive(Debug, PartialEq, Eq)]
    enum Failed {
        Conflict,
        Other,
    }

    impl TransactionError for Failed {
        fn is_transaction_conflict(&self) -> bool {
            *self == Failed::Conflict
        }
    }

    /// A conflict is run again, up to the attempts; another failure, or success, is final.
    /// (The waits are real: at most 75 ms in all.)
    #[tokio::test]
    async fn conflicts_are_retried_within_bounds() {
        let retry = ConflictRetry::counted_in("tandem_test_transaction_retries_total");
        let runs = std::cell::Cell::new(0);
        let outcome = retry
            .run("test", || {
                runs.set(runs.get() + 1);
                let run = runs.get();
                async move {
                    if run < 3 {
                        Err(Failed::Conflict)
                    } else {
                        Ok(run)
                    }
                }
            })
            .await;
        assert_eq!(outcome, Ok(3));
        runs.set(0);
        let outcome: Result<(), Failed> = retry
            .run("test", || {
                runs.set(runs.get() + 1);
                async { Err(Failed::Conflict) }
            })
            .await;
        assert_eq!((outcome, runs.get()), (Err(Failed::Conflict), 5));
        runs.set(0);
        let outcome: Result<(), Failed> = retry
            .run("test", || {
                runs.set(runs.get() + 1);
                async { Err(Failed::Other) }
            })
            .await;
        assert_eq!((outcome, runs.get()), (Err(Failed::Other), 1));
    }

    /// The waits double from the base up to the cap, and a jittered wait stays under its
    /// ceiling.
    #[test]
    fn waits_double_up_to_the_cap() {
        let retry = ConflictRetry::counted_in("tandem_test_transaction_retries_total");
        let ms = |n| retry.ceiling(n).as_millis();
        assert_eq!([ms(1), ms(2), ms(3), ms(4)], [5, 10, 20, 40]);
        assert_eq!(ms(7), 200);
        assert_eq!(ms(100), 200);
        for _ in 0..100 {
            assert!(jitter(retry.ceiling(3)) <= retry.ceiling(3));
        }
        assert!(is_transaction_conflict_code("40001") && is_transaction_conflict_code("40P01"));
        assert!(!is_transaction_conflict_code("23505"));
    }

    /// Every constraint violation is a conflict or a broken invariant, never "other"; the
    /// retryable server states are unavailable.
    #[test]
    fn sqlstates_classify() {
        for (code, expected) in [
            ("40001", StorageFailure::Unavailable),
            ("40P01", StorageFailure::Unavailable),
            ("57P01", StorageFailure::Unavailable),
            ("57P03", StorageFailure::Unavailable),
            ("25006", StorageFailure::Unavailable),
            ("53300", StorageFailure::Unavailable),
            ("08006", StorageFailure::Unavailable),
            ("23505", StorageFailure::Conflict),
            ("23P01", StorageFailure::Conflict),
            ("23503", StorageFailure::Conflict),
            ("23514", StorageFailure::Constraint),
            ("23502", StorageFailure::Constraint),
            ("23001", StorageFailure::Constraint),
            ("23000", StorageFailure::Constraint),
            ("42P01", StorageFailure::Other),
            ("42501", StorageFailure::Other),
            ("XX000", StorageFailure::Other),
        ] {
            assert_eq!(classify_sqlstate(code), expected, "{code}");
        }
        assert_eq!(
            classify(&sqlx::Error::PoolTimedOut),
            StorageFailure::Unavailable
        );
        assert_eq!(classify(&sqlx::Error::RowNotFound), StorageFailure::Other);
    }

    /// A database error with a SQLSTATE, as the Postgres driver reports one.
    #[derive(Debug)]
    struct Reported(&'static str);

    impl std::fmt::Display for Reported {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "sqlstate {}", self.0)
        }
    }

    impl std::error::Error for Reported {}

    impl sqlx::error::DatabaseError for Reported {
        fn message(&self) -> &str {
            "reported"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    /// No constraint violation reaches a client as INTERNAL: unique, foreign-key and check
    /// violations are ABORTED with their own reasons; only what is not understood is INTERNAL.
    #[test]
    fn constraint_violations_are_never_internal() {
        for (code, status, reason) in [
            ("23505", tonic::Code::Aborted, "WRITE_CONFLICT"),
            ("23503", tonic::Code::Aborted, "WRITE_CONFLICT"),
            ("23514", tonic::Code::Aborted, "CONSTRAINT_VIOLATED"),
            ("23502", tonic::Code::Aborted, "CONSTRAINT_VIOLATED"),
            ("40001", tonic::Code::Unavailable, "STORAGE_UNAVAILABLE"),
            ("XX000", tonic::Code::Internal, "INTERNAL"),
        ] {
            let error = sqlx::Error::Database(Box::new(Reported(code)));
            assert_eq!(to_status_parts(&error).0, status, "{code}");
            assert_eq!(classify(&error).reason(), reason, "{code}");
        }
    }
}
