//! The vault client: the orchestrator's only way to reach cards, over mutual TLS with its
//! `orchestrator` identity. It turns the vault's answers into domain terms and sorts failures
//! into two kinds: an answer (approved, declined, refused) the saga records, and an unknown
//! outcome (timeout, unavailable, in progress) that is re-sent later with the same request id.

use std::time::Duration;

use tandem_money::Currency;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_proto::tandem::vault::v1 as pb;
use tandem_proto::tandem::vault::v1::charge_service_client::ChargeServiceClient;
use tandem_proto::tandem::vault::v1::token_service_client::TokenServiceClient;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use crate::config::VaultSettings;
use crate::domain::record::steps::AuthorizeAnswer;
use crate::domain::saga::NextAction;

/// A vault call whose outcome is not known: nothing may be assumed, the same request is
/// re-sent later (the vault replays it).
#[derive(Debug, Clone, thiserror::Error)]
#[error("vault outcome unknown: {0}")]
pub struct Unknown(pub String);

/// What the vault says of a member's token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenCheck {
    /// Active and not expired.
    Usable {
        /// The card's last four digits.
        last4: String,
    },
    /// Unknown, revoked or expired; the vault's reason.
    NotUsable(String),
}

/// A vault refund's final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundAnswer {
    /// Refunded.
    Succeeded(String),
    /// Refused by the processor (or the vault).
    Failed(Option<String>),
}

/// One vault operation: its own deterministic id (the vault's `request_id`, which makes a
/// re-send a replay) and the correlation id of the call that caused it (its `x-request-id`).
#[derive(Debug, Clone, Copy)]
pub struct Operation<'a> {
    /// The operation's id, e.g. `<payment>/leg/1/attempt/1/authorize`.
    pub request_id: &'a str,
    /// The caller's `x-request-id`.
    pub correlation_id: &'a str,
}

/// The orchestrator's connection to the vault.
#[derive(Debug, Clone)]
pub struct VaultClient {
    charges: ChargeServiceClient<Channel>,
    tokens: TokenServiceClient<Channel>,
}

impl VaultClient {
    /// A client that connects on first use (and reconnects after failures), so the
    /// orchestrator starts even while the vault is down.
    pub fn connect_lazy(
        settings: &VaultSettings,
    ) -> Result<Self, tandem_tls::client::ConnectError> {
        let timeout = Duration::from_millis(settings.timeout_ms);
        let channel = tandem_tls::client::endpoint(
            &settings.endpoint,
            &settings.files(),
            &settings.server_name,
            timeout,
        )?
        .tcp_nodelay(true)
        .connect_lazy();
        Ok(Self {
            charges: ChargeServiceClient::new(channel.clone()),
            tokens: TokenServiceClient::new(channel),
        })
    }

    /// Whether `token` may be charged.
    pub async fn check_token(&self, token: &str) -> Result<TokenCheck, Unknown> {
        let request = pb::GetTokenRequest {
            token: token.to_owned(),
        };
        match self.tokens.clone().get_token(request).await {
            Ok(response) => {
                let card = response.into_inner().card.unwrap_or_default();
                if card.state == pb::TokenState::Active as i32 {
                    Ok(TokenCheck::Usable { last4: card.last4 })
                } else if card.state == pb::TokenState::Revoked as i32 {
                    Ok(TokenCheck::NotUsable("TOKEN_REVOKED".into()))
                } else {
                    Ok(TokenCheck::NotUsable("TOKEN_EXPIRED".into()))
                }
            }
            Err(status) if is_unknown(&status) => Err(Unknown(describe(&status))),
            Err(status) => Ok(TokenCheck::NotUsable(reason(&status))),
        }
    }

    /// Authorizes `amount` on `token` as operation `op`, allowing partial approval.
    pub async fn authorize(
        &self,
        op: Operation<'_>,
        token: &str,
        currency: Currency,
        amount: i64,
        description: &str,
        reference: &str,
    ) -> Result<AuthorizeAnswer, Unknown> {
        let request = correlated(
            pb::AuthorizeRequest {
                request_id: op.request_id.to_owned(),
                token: token.to_owned(),
                amount: Some(money(currency, amount)),
                allow_partial_approval: true,
                description: description.to_owned(),
                statement_descriptor: String::new(),
                reference: reference.to_owned(),
                metadata: Default::default(),
            },
            op.correlation_id,
        );
        match self.charges.clone().authorize(request).await {
            Ok(response) => answer(response.into_inner().charge.unwrap_or_default()),
            Err(status) if is_refusal(&status) => Ok(AuthorizeAnswer::Refused {
                reason: reason(&status),
            }),
            Err(status) => {
                if !is_unknown(&status) {
                    tracing::error!(
                        request_id = op.request_id,
                        status = %describe(&status),
                        "the vault answered an authorization unexpectedly; retrying later"
                    );
                }
                Err(Unknown(describe(&status)))
            }
        }
    }

    /// The outcome of the authorization sent with `request_id`, read with `GetCharge`: `None`
    /// if the vault never recorded it (it is safe to send it again) or has no answer yet.
    pub async fn find_authorization(
        &self,
        request_id: &str,
    ) -> Result<Option<AuthorizeAnswer>, Unknown> {
        let request = pb::GetChargeRequest {
            lookup: Some(pb::get_charge_request::Lookup::RequestId(
                request_id.to_owned(),
            )),
        };
        match self.charges.clone().get_charge(request).await {
            Ok(response) => match answer(response.into_inner().charge.unwrap_or_default()) {
                Ok(answer) => Ok(Some(answer)),
                Err(_) => Ok(None),
            },
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Unknown(describe(&status))),
        }
    }

    /// Captures `amount` of `charge_id`. Succeeds once the vault confirms the charge captured
    /// (a replay of the same request included).
    pub async fn capture(
        &self,
        op: Operation<'_>,
        charge_id: &str,
        currency: Currency,
        amount: i64,
    ) -> Result<(), Unknown> {
        let request = correlated(
            pb::CaptureRequest {
                request_id: op.request_id.to_owned(),
                charge_id: charge_id.to_owned(),
                amount: Some(money(currency, amount)),
            },
            op.correlation_id,
        );
        let result = self.charges.clone().capture(request).await;
        self.settled(
            result.map(|r| r.into_inner().charge),
            charge_id,
            pb::ChargeState::Captured,
        )
        .await
    }

    /// Voids `charge_id`. Succeeds once the vault confirms the charge voided.
    pub async fn void(&self, op: Operation<'_>, charge_id: &str) -> Result<(), Unknown> {
        let request = correlated(
            pb::VoidRequest {
                request_id: op.request_id.to_owned(),
                charge_id: charge_id.to_owned(),
                reason: "split payment not covered".to_owned(),
            },
            op.correlation_id,
        );
        let result = self.charges.clone().void(request).await;
        self.settled(
            result.map(|r| r.into_inner().charge),
            charge_id,
            pb::ChargeState::Voided,
        )
        .await
    }

    /// Checks that a capture or void left the charge in `expected`; a refusal is checked
    /// against the charge as the vault has it (a capture or void that already happened is
    /// success), and anything else stays unknown, to be retried and looked at.
    async fn settled(
        &self,
        result: Result<Option<pb::Charge>, tonic::Status>,
        charge_id: &str,
        expected: pb::ChargeState,
    ) -> Result<(), Unknown> {
        let charge = match result {
            Ok(charge) => charge.unwrap_or_default(),
            Err(status) if is_unknown(&status) => return Err(Unknown(describe(&status))),
            Err(status) => {
                let read = pb::GetChargeRequest {
                    lookup: Some(pb::get_charge_request::Lookup::ChargeId(
                        charge_id.to_owned(),
                    )),
                };
                let charge = self
                    .charges
                    .clone()
                    .get_charge(read)
                    .await
                    .map_err(|e| Unknown(describe(&e)))?
                    .into_inner()
                    .charge
                    .unwrap_or_default();
                if charge.state != expected as i32 {
                    tracing::error!(
                        charge_id,
                        reason = %reason(&status),
                        "the vault refused a capture or void the payment needs"
                    );
                    return Err(Unknown(describe(&status)));
                }
                charge
            }
        };
        let captured_enough = expected == pb::ChargeState::Captured
            && matches!(
                pb::ChargeState::try_from(charge.state),
                Ok(pb::ChargeState::Captured
                    | pb::ChargeState::PartiallyRefunded
                    | pb::ChargeState::Refunded)
            );
        if charge.state == expected as i32 || captured_enough {
            Ok(())
        } else {
            Err(Unknown(format!(
                "charge is {:?} after the call",
                pb::ChargeState::try_from(charge.state).unwrap_or_default()
            )))
        }
    }

    /// Refunds `amount` of `charge_id`.
    pub async fn refund(
        &self,
        op: Operation<'_>,
        charge_id: &str,
        currency: Currency,
        amount: i64,
        reason_text: &str,
    ) -> Result<RefundAnswer, Unknown> {
        let request = correlated(
            pb::RefundRequest {
                request_id: op.request_id.to_owned(),
                charge_id: charge_id.to_owned(),
                amount: Some(money(currency, amount)),
                reason: reason_text.to_owned(),
            },
            op.correlation_id,
        );
        match self.charges.clone().refund(request).await {
            Ok(response) => {
                let refund = response.into_inner().refund.unwrap_or_default();
                match pb::RefundState::try_from(refund.state) {
                    Ok(pb::RefundState::Succeeded) => Ok(RefundAnswer::Succeeded(refund.id)),
                    Ok(pb::RefundState::Failed) => Ok(RefundAnswer::Failed(Some(refund.id))),
                    _ => Err(Unknown("refund pending at the vault".into())),
                }
            }
            Err(status) if is_unknown(&status) => Err(Unknown(describe(&status))),
            Err(status) => {
                tracing::warn!(charge_id, reason = %reason(&status), "the vault refused a refund");
                Ok(RefundAnswer::Failed(None))
            }
        }
    }
}

fn money(currency: Currency, minor_units: i64) -> types::Money {
    types::Money {
        currency_code: currency.code().to_owned(),
        minor_units,
    }
}

/// The request with `x-request-id` set to the caller's correlation id, so the vault's logs and
/// audit rows carry it beside the operation's own id (the message's `request_id`).
fn correlated<T>(message: T, correlation_id: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Ok(value) = correlation_id.parse() {
        request.metadata_mut().insert("x-request-id", value);
    }
    request
}

/// An authorization's charge as an answer; a PENDING charge has none yet.
fn answer(charge: pb::Charge) -> Result<AuthorizeAnswer, Unknown> {
    let state = pb::ChargeState::try_from(charge.state).unwrap_or_default();
    match state {
        pb::ChargeState::Declined => {
            let code = types::DeclineCode::try_from(charge.decline_code)
                .unwrap_or_default()
                .as_str_name()
                .trim_start_matches("DECLINE_CODE_")
                .to_owned();
            let next_action = match types::NextAction::try_from(charge.next_action) {
                Ok(types::NextAction::RetrySameCard) => NextAction::RetrySameCard,
                Ok(types::NextAction::DoNotRetry) => NextAction::DoNotRetry,
                _ => NextAction::TryNextCard,
            };
            Ok(AuthorizeAnswer::Declined {
                charge_id: charge.id,
                last4: charge.last4,
                decline_code: code,
                next_action,
            })
        }
        pb::ChargeState::Pending | pb::ChargeState::Unspecified => {
            Err(Unknown("authorization pending at the vault".into()))
        }
        // Authorized, or already moved on (captured, voided, refunded) by an earlier drive:
        // either way the authorization was approved for `approved`.
        _ => match charge.approved.map(|m| m.minor_units) {
            Some(approved) if approved > 0 => Ok(AuthorizeAnswer::Approved {
                charge_id: charge.id,
                approved,
                authorization_code: charge.authorization_code,
                last4: charge.last4,
            }),
            _ => Err(Unknown(
                "an approved charge without an approved amount".into(),
            )),
        },
    }
}

/// True when the vault refused the authorization for this card before any processor call:
/// the token is unusable, its stored data does not open (`DATA_LOSS`, reason
/// `CARD_DATA_UNREADABLE`: the vault committed nothing), or the request does not fit it. Other
/// failures (identity, a request id used before, transient errors) leave the outcome unknown,
/// because a hold may exist.
fn is_refusal(status: &tonic::Status) -> bool {
    use tonic::Code;
    match status.code() {
        Code::FailedPrecondition | Code::NotFound | Code::InvalidArgument => true,
        Code::DataLoss => reason(status) == "CARD_DATA_UNREADABLE",
        _ => false,
    }
}

/// True when the status leaves the outcome unknown: the call may or may not have happened.
fn is_unknown(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::ResourceExhausted
    )
}

/// The vault's `ErrorInfo` reason, or the status code's name.
fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_else(|| format!("{:?}", status.code()).to_uppercase())
}

fn describe(status: &tonic::Status) -> String {
    format!("{:?} {}", status.code(), reason(status))
}
