//! Processor connectors: the only code a card number leaves the vault through.
//!
//! A [`Connector`] speaks to one processor (a PSP or acquirer): authorize, capture, void,
//! refund, inquire about an authorization whose answer was lost, and deliver a day's
//! settlement file (for reconciliation). `ChargeService` knows only
//! this trait; a real PSP adapter (HTTP) is another implementation of it and needs no change
//! elsewhere.
//!
//! Every call carries an idempotency key derived from the charge request's `request_id`
//! ([`idempotency_key`]): re-sending a call after a timeout or a crash gets the processor's
//! first answer and never a second hold. [`Guarded`] wraps a connector with a timeout per call
//! and a circuit breaker ([`breaker`]).

pub mod breaker;
pub mod sandbox;

use std::sync::Arc;
use std::time::Duration;

use tandem_money::Money;
use tracing::Instrument as _;

use crate::domain::charge::DeclineCode;
use crate::domain::settlement::{ChunkedFile, SettlementFile};
use crate::domain::{CardSecret, Expiry, Fingerprint, Token};
use breaker::{Breaker, BreakerState};

/// The processor's key for a vault operation: the operation's name and a SHA-256 digest of
/// the caller's `request_id`, so each request reaches the processor as one operation however
/// often it is sent. The digest keeps the key at a fixed length (57 characters at most), within
/// what processors accept, whatever the request id's length.
pub fn idempotency_key(operation: &str, request_id: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(request_id.as_bytes());
    format!("tandem:{operation}:{}", hex::encode(&digest[..20]))
}

/// Longest processor reference or raw decline code the vault stores (the schema's bounds).
const REFERENCE_CHARS_MAX: usize = 128;
const PROCESSOR_CODE_CHARS_MAX: usize = 32;

/// Checks an authorization answer against the call: a processor that answers outside its
/// contract (an approval above the request or in another currency, an oversized reference)
/// is treated as unreachable rather than recorded.
fn check_authorize_answer(
    call_amount: Money,
    answer: AuthorizeAnswer,
) -> Result<AuthorizeAnswer, ConnectorError> {
    let ok = match &answer {
        AuthorizeAnswer::Approved {
            reference,
            approved,
            authorization_code,
        } => {
            approved.currency == call_amount.currency
                && (1..=call_amount.minor_units).contains(&approved.minor_units)
                && reference.chars().count() <= REFERENCE_CHARS_MAX
                && authorization_code.chars().count() <= PROCESSOR_CODE_CHARS_MAX
        }
        AuthorizeAnswer::Declined {
            reference,
            processor_code,
            ..
        } => {
            reference.chars().count() <= REFERENCE_CHARS_MAX
                && processor_code.chars().count() <= PROCESSOR_CODE_CHARS_MAX
        }
    };
    if ok {
        Ok(answer)
    } else {
        tracing::error!("processor answered an authorization outside its contract");
        Err(ConnectorError::Unavailable(
            "authorization answer outside the connector contract".to_owned(),
        ))
    }
}

fn check_follow_up_answer(answer: FollowUpAnswer) -> Result<FollowUpAnswer, ConnectorError> {
    let ok = match &answer {
        FollowUpAnswer::Done { reference } => reference.chars().count() <= REFERENCE_CHARS_MAX,
        FollowUpAnswer::Refused { processor_code, .. } => {
            processor_code.chars().count() <= PROCESSOR_CODE_CHARS_MAX
        }
    };
    if ok {
        Ok(answer)
    } else {
        tracing::error!("processor answered a follow-up outside its contract");
        Err(ConnectorError::Unavailable(
            "answer outside the connector contract".to_owned(),
        ))
    }
}

/// An authorization to send. Holds the card in clear: never log it.
pub struct AuthorizeCall<'a> {
    /// The processor's idempotency key.
    pub idempotency_key: &'a str,
    /// The vault token, which the sandbox keeps in its records (a real PSP does not need it).
    pub token: &'a Token,
    /// The card's keyed fingerprint, which the sandbox keys its per-card state on.
    pub fingerprint: Fingerprint,
    /// The card number and holder name.
    pub card: &'a CardSecret,
    /// The card's expiry.
    pub expiry: Expiry,
    /// The amount to hold.
    pub amount: Money,
    /// Whether the issuer may approve less.
    pub allow_partial_approval: bool,
    /// Statement text (never empty: the connector default fills in).
    pub statement_descriptor: &'a str,
    /// The merchant reference.
    pub reference: &'a str,
}

impl std::fmt::Debug for AuthorizeCall<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorizeCall")
            .field("idempotency_key", &self.idempotency_key)
            .field("token", &self.token)
            .field("amount", &self.amount)
            .finish_non_exhaustive()
    }
}

/// A processor's answer to an authorization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthorizeAnswer {
    /// A hold of `approved` is in place (`approved` may be less than requested).
    Approved {
        /// The processor's reference for the authorization.
        reference: String,
        /// The amount held.
        approved: Money,
        /// The issuer's approval code.
        authorization_code: String,
    },
    /// Refused; no hold exists.
    Declined {
        /// The processor's reference, if it gave one.
        reference: String,
        /// The normalised code.
        code: DeclineCode,
        /// The processor's raw code.
        processor_code: String,
    },
}

/// A capture, void or refund to send.
#[derive(Debug, Clone)]
pub struct FollowUpCall<'a> {
    /// The processor's idempotency key.
    pub idempotency_key: &'a str,
    /// The authorization it acts on.
    pub authorization_reference: &'a str,
    /// The amount (capture and refund); `None` for a void.
    pub amount: Option<Money>,
    /// The vault token, for the sandbox's records.
    pub token: &'a Token,
}

/// A processor's answer to a capture, void or refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowUpAnswer {
    /// Done.
    Done {
        /// The processor's reference for this operation.
        reference: String,
    },
    /// Refused (for example the hold expired at the processor).
    Refused {
        /// The normalised code.
        code: DeclineCode,
        /// The processor's raw code.
        processor_code: String,
    },
}

/// Why a processor call did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    /// No answer within the timeout: the processor may or may not have acted.
    #[error("processor did not answer in time")]
    Timeout,
    /// The processor could not be reached or failed before acting (never with card data).
    #[error("processor unreachable: {0}")]
    Unavailable(String),
    /// The circuit breaker is open: no call was made.
    #[error("processor circuit breaker is open")]
    CircuitOpen,
    /// The connector's own storage failed (the sandbox keeps its state in the vault's
    /// database): no answer, as with [`ConnectorError::Unavailable`], but no sign of the
    /// processor's health either, so the circuit breaker does not count it.
    #[error("connector storage failed: {0}")]
    Storage(String),
    /// The day's settlement file holds more records than the connector delivers in one file:
    /// an answer (the processor is healthy), but not one the vault can hold in memory.
    #[error("the settlement file holds more than {records_max} records")]
    SettlementFileTooLarge {
        /// The most records a file may hold.
        records_max: u64,
    },
}

/// One processor. Implementations must be idempotent by the call's key: the same key gets the
/// first answer and changes nothing.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + 'static {
    /// The connector's name, recorded on every charge (`Charge.processor`).
    fn name(&self) -> &'static str;

    /// Places a hold.
    async fn authorize(&self, call: AuthorizeCall<'_>) -> Result<AuthorizeAnswer, ConnectorError>;

    /// Captures `amount` of a hold and releases the rest.
    async fn capture(&self, call: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError>;

    /// Releases a hold.
    async fn void(&self, call: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError>;

    /// Returns `amount` of captured money.
    async fn refund(&self, call: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError>;

    /// The answer the processor gave to the authorization with this key, or `None` if it never
    /// received one.
    async fn inquire(
        &self,
        idempotency_key: &str,
        token: &Token,
    ) -> Result<Option<AuthorizeAnswer>, ConnectorError>;

    /// The settlement file of `day` (UTC), as the processor delivers it: the CSV of
    /// [`crate::domain::settlement`] (a real processor's file is downloaded, or translated
    /// into it). The caller asks only for a day that has begun; today's is the day so far.
    async fn settlement_file(&self, day: time::Date) -> Result<SettlementFile, ConnectorError>;
}

/// A connector behind a timeout per call and a circuit breaker.
pub struct Guarded {
    inner: Arc<dyn Connector>,
    timeout: Duration,
    breaker: Breaker,
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded")
            .field("connector", &self.inner.name())
            .field("timeout", &self.timeout)
            .field("breaker", &self.breaker.state())
            .finish()
    }
}

impl Guarded {
    /// Guards `inner` with `timeout` per call and `breaker`.
    pub fn new(inner: Arc<dyn Connector>, timeout: Duration, breaker: Breaker) -> Guarded {
        Guarded {
            inner,
            timeout,
            breaker,
        }
    }

    /// The connector's name.
    pub fn name(&self) -> &'static str {
        self.inner.name()
    }

    /// The per-call timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The breaker's state, for health and metrics.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// How many times the breaker has opened, for metrics.
    pub fn breaker_opened_total(&self) -> u64 {
        self.breaker.opened_total()
    }

    /// Runs one call under the timeout and the breaker. A timeout or an unreachable processor
    /// counts as a transport failure; any answer (a decline included) as a success; a failure
    /// of the connector's own storage as neither (Tandem's database having a hiccup says
    /// nothing about the processor, and must not open the breaker on it).
    ///
    /// Each call is a span (`processor <operation>`) and is timed by operation and outcome.
    async fn call<T>(
        &self,
        operation: &'static str,
        call: impl Future<Output = Result<T, ConnectorError>>,
    ) -> Result<T, ConnectorError> {
        let started = std::time::Instant::now();
        let permit = match self.breaker.try_acquire() {
            Ok(permit) => permit,
            Err(open) => {
                let refused = Err(open);
                crate::metrics::connector_call(
                    operation,
                    outcome_label(&refused),
                    started.elapsed(),
                );
                return refused;
            }
        };
        let span = tracing::info_span!(
            "processor",
            otel.name = %format_args!("processor {operation}"),
            otel.kind = "client",
            connector = self.inner.name(),
        );
        let result = match tokio::time::timeout(self.timeout, call)
            .instrument(span)
            .await
        {
            Ok(result) => result,
            Err(_) => Err(ConnectorError::Timeout),
        };
        crate::metrics::connector_call(operation, outcome_label(&result), started.elapsed());
        match &result {
            Err(ConnectorError::Storage(_)) => permit.release(),
            // The processor answered; the file is only too large for the vault.
            Err(ConnectorError::SettlementFileTooLarge { .. }) => permit.record(true),
            other => permit.record(other.is_ok()),
        }
        result
    }

    /// [`Connector::authorize`], guarded.
    pub async fn authorize(
        &self,
        call: AuthorizeCall<'_>,
    ) -> Result<AuthorizeAnswer, ConnectorError> {
        let amount = call.amount;
        let answer = self.call("authorize", self.inner.authorize(call)).await?;
        check_authorize_answer(amount, answer)
    }

    /// [`Connector::capture`], guarded.
    pub async fn capture(&self, call: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
        check_follow_up_answer(self.call("capture", self.inner.capture(call)).await?)
    }

    /// [`Connector::void`], guarded.
    pub async fn void(&self, call: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
        check_follow_up_answer(self.call("void", self.inner.void(call)).await?)
    }

    /// [`Connector::refund`], guarded.
    pub async fn refund(&self, call: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
        check_follow_up_answer(self.call("refund", self.inner.refund(call)).await?)
    }

    /// [`Connector::inquire`], guarded; `requested` is the amount of the authorization asked
    /// about, to check the answer against.
    pub async fn inquire(
        &self,
        idempotency_key: &str,
        token: &Token,
        requested: Money,
    ) -> Result<Option<AuthorizeAnswer>, ConnectorError> {
        match self
            .call("inquire", self.inner.inquire(idempotency_key, token))
            .await?
        {
            Some(answer) => check_authorize_answer(requested, answer).map(Some),
            None => Ok(None),
        }
    }

    /// [`Connector::settlement_file`], guarded, checked and cut into chunks of at most
    /// `chunk_bytes_max` bytes. A file outside the contract (another header, a record count
    /// that is not the file's, a line longer than a chunk) is treated as an unreachable
    /// processor, as any answer outside the contract is.
    pub async fn settlement_file(
        &self,
        day: time::Date,
        chunk_bytes_max: usize,
    ) -> Result<ChunkedFile, ConnectorError> {
        let file = self
            .call("settlement_file", self.inner.settlement_file(day))
            .await?;
        file.chunked(chunk_bytes_max).map_err(|error| {
            tracing::error!(%error, %day, "processor delivered a settlement file outside its contract");
            ConnectorError::Unavailable(format!("settlement file outside the connector contract: {error}"))
        })
    }
}

/// The outcome label of a processor call: `ok` for any answer (a decline included), else the
/// kind of failure.
fn outcome_label<T>(result: &Result<T, ConnectorError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(ConnectorError::Timeout) => "timeout",
        Err(ConnectorError::Unavailable(_)) => "unavailable",
        Err(ConnectorError::CircuitOpen) => "circuit_open",
        Err(ConnectorError::Storage(_)) => "storage",
        Err(ConnectorError::SettlementFileTooLarge { .. }) => "file_too_large",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Idempotency keys have a fixed length whatever the request id, differ per operation and
    /// per request id, and are stable.
    #[test]
    fn idempotency_keys() {
        let long = "x".repeat(128);
        let key = idempotency_key("capture", &long);
        assert!(key.len() <= 57, "{key}");
        assert_eq!(key, idempotency_key("capture", &long));
        assert_ne!(key, idempotency_key("void", &long));
        assert_ne!(key, idempotency_key("capture", "y"));
    }

    /// A connector whose every call fails with `failure`.
    struct Failing(ConnectorError);

    #[async_trait::async_trait]
    impl Connector for Failing {
        fn name(&self) -> &'static str {
            "failing"
        }
        async fn authorize(&self, _: AuthorizeCall<'_>) -> Result<AuthorizeAnswer, ConnectorError> {
            Err(self.0.clone())
        }
        async fn capture(&self, _: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
            Err(self.0.clone())
        }
        async fn void(&self, _: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
            Err(self.0.clone())
        }
        async fn refund(&self, _: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
            Err(self.0.clone())
        }
        async fn inquire(
            &self,
            _: &str,
            _: &Token,
        ) -> Result<Option<AuthorizeAnswer>, ConnectorError> {
            Err(self.0.clone())
        }
        async fn settlement_file(&self, _: time::Date) -> Result<SettlementFile, ConnectorError> {
            Err(self.0.clone())
        }
    }

    /// A connector that delivers `file` as every day's settlement file.
    struct Delivering(SettlementFile);

    #[async_trait::async_trait]
    impl Connector for Delivering {
        fn name(&self) -> &'static str {
            "delivering"
        }
        async fn authorize(&self, _: AuthorizeCall<'_>) -> Result<AuthorizeAnswer, ConnectorError> {
            Err(ConnectorError::Unavailable("settlement only".into()))
        }
        async fn capture(&self, _: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
            Err(ConnectorError::Unavailable("settlement only".into()))
        }
        async fn void(&self, _: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
            Err(ConnectorError::Unavailable("settlement only".into()))
        }
        async fn refund(&self, _: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
            Err(ConnectorError::Unavailable("settlement only".into()))
        }
        async fn inquire(
            &self,
            _: &str,
            _: &Token,
        ) -> Result<Option<AuthorizeAnswer>, ConnectorError> {
            Ok(None)
        }
        async fn settlement_file(&self, _: time::Date) -> Result<SettlementFile, ConnectorError> {
            Ok(self.0.clone())
        }
    }

    /// A settlement file is checked and chunked on its way out; one outside the contract is
    /// refused as an unreachable processor; a file too large is an answer, so neither it nor
    /// a storage failure opens the breaker.
    #[tokio::test]
    async fn settlement_files_are_checked() {
        let day = time::macros::date!(2026 - 11 - 30);
        let breaker = || Breaker::new(1, Duration::from_secs(60));
        let guarded = |connector: Arc<dyn Connector>| {
            Guarded::new(connector, Duration::from_secs(1), breaker())
        };
        let good = crate::domain::settlement::SettlementCsv::new(0).finish();
        let chunked = guarded(Arc::new(Delivering(good)))
            .settlement_file(day, 1024)
            .await
            .unwrap();
        assert_eq!((chunked.records, chunked.chunks.len()), (0, 1));

        let lying = SettlementFile {
            csv: good_header_and(1),
            records: 2,
        };
        let refused = guarded(Arc::new(Delivering(lying)))
            .settlement_file(day, 1024)
            .await;
        assert!(
            matches!(refused, Err(ConnectorError::Unavailable(_))),
            "{refused:?}"
        );

        for failure in [
            ConnectorError::SettlementFileTooLarge { records_max: 10 },
            ConnectorError::Storage("pool timed out".into()),
        ] {
            let guarded = guarded(Arc::new(Failing(failure.clone())));
            for _ in 0..3 {
                assert_eq!(
                    guarded.settlement_file(day, 1024).await.unwrap_err(),
                    failure
                );
            }
            assert_eq!(guarded.breaker_state(), BreakerState::Closed, "{failure:?}");
        }
    }

    /// The header and `records` lines.
    fn good_header_and(records: usize) -> Vec<u8> {
        let mut csv = format!("{}\r\n", crate::domain::settlement::HEADER);
        for _ in 0..records {
            csv.push_str("stl_x,capture,sbx_y,100,USD,0,2026-11-30T10:00:00.000000Z\r\n");
        }
        csv.into_bytes()
    }

    /// The connector's own storage failing (the sandbox's database) never opens the breaker;
    /// the processor being unreachable does.
    #[tokio::test]
    async fn storage_failures_do_not_open_the_breaker() {
        let usd = tandem_money::Currency::parse("USD").unwrap();
        let token = Token::generate();
        for (failure, opens) in [
            (ConnectorError::Storage("pool timed out".into()), false),
            (
                ConnectorError::Unavailable("connection refused".into()),
                true,
            ),
        ] {
            let guarded = Guarded::new(
                Arc::new(Failing(failure.clone())),
                Duration::from_secs(1),
                Breaker::new(3, Duration::from_secs(60)),
            );
            for _ in 0..10 {
                let answer = guarded.inquire("key", &token, Money::new(usd, 100)).await;
                assert!(answer.is_err());
            }
            assert_eq!(
                guarded.breaker_state() == BreakerState::Open,
                opens,
                "{failure:?}"
            );
        }
    }

    /// Answers outside the contract are refused before they reach storage.
    #[test]
    fn answers_are_checked() {
        let usd = tandem_money::Currency::parse("USD").unwrap();
        let eur = tandem_money::Currency::parse("EUR").unwrap();
        let approved = |minor, currency, reference: &str| AuthorizeAnswer::Approved {
            reference: reference.to_owned(),
            approved: Money::new(currency, minor),
            authorization_code: "A1B2C3".to_owned(),
        };
        let call = Money::new(usd, 1000);
        assert!(check_authorize_answer(call, approved(1000, usd, "r")).is_ok());
        assert!(check_authorize_answer(call, approved(400, usd, "r")).is_ok());
        assert!(check_authorize_answer(call, approved(1001, usd, "r")).is_err());
        assert!(check_authorize_answer(call, approved(0, usd, "r")).is_err());
        assert!(check_authorize_answer(call, approved(1000, eur, "r")).is_err());
        assert!(check_authorize_answer(call, approved(1000, usd, &"r".repeat(129))).is_err());
        let refused = FollowUpAnswer::Refused {
            code: DeclineCode::Other,
            processor_code: "c".repeat(33),
        };
        assert!(check_follow_up_answer(refused).is_err());
    }
}
