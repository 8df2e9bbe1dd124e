//! Processor connectors: the only code a card number leaves the vault through.
//!
//! A [`Connector`] speaks to one processor (a PSP or acquirer): authorize, capture, void,
//! refund, and inquire about an authorization whose answer was lost. `ChargeService` knows only
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

use crate::domain::charge::DeclineCode;
use crate::domain::{CardSecret, Expiry, Fingerprint, Token};
use breaker::{Breaker, BreakerState};

/// The processor's key for a vault operation: the RPC's short name and the caller's
/// `request_id`, so each request reaches the processor as one operation however often it is
/// sent.
pub fn idempotency_key(operation: &str, request_id: &str) -> String {
    format!("tandem:{operation}:{request_id}")
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

    /// Runs one call under the timeout and the breaker. A timeout or an unreachable processor
    /// counts as a transport failure; any answer (a decline included) as a success.
    async fn call<T>(
        &self,
        call: impl Future<Output = Result<T, ConnectorError>>,
    ) -> Result<T, ConnectorError> {
        let permit = self.breaker.try_acquire()?;
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(ConnectorError::Timeout),
        };
        permit.record(result.is_ok());
        result
    }

    /// [`Connector::authorize`], guarded.
    pub async fn authorize(
        &self,
        call: AuthorizeCall<'_>,
    ) -> Result<AuthorizeAnswer, ConnectorError> {
        self.call(self.inner.authorize(call)).await
    }

    /// [`Connector::capture`], guarded.
    pub async fn capture(&self, call: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
        self.call(self.inner.capture(call)).await
    }

    /// [`Connector::void`], guarded.
    pub async fn void(&self, call: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
        self.call(self.inner.void(call)).await
    }

    /// [`Connector::refund`], guarded.
    pub async fn refund(&self, call: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
        self.call(self.inner.refund(call)).await
    }

    /// [`Connector::inquire`], guarded.
    pub async fn inquire(
        &self,
        idempotency_key: &str,
        token: &Token,
    ) -> Result<Option<AuthorizeAnswer>, ConnectorError> {
        self.call(self.inner.inquire(idempotency_key, token)).await
    }
}
