//! The vault client: the orchestrator's only way to reach cards, over mutual TLS with its
//! `orchestrator` identity. It turns the vault's answers into domain terms and sorts failures
//! into two kinds: an answer (approved, declined, refused) the saga records, and an unknown
//! outcome (timeout, unavailable, in progress) that is re-sent later with the same request id.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use futures::future::join_all;
use tandem_money::Currency;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_proto::tandem::vault::v1 as pb;
use tandem_proto::tandem::vault::v1::charge_service_client::ChargeServiceClient;
use tandem_proto::tandem::vault::v1::token_service_client::TokenServiceClient;
use tonic::transport::Channel;
use tonic_types::{ErrorDetails, StatusExt as _};
use tracing::Instrument as _;

use crate::config::VaultSettings;
use crate::domain::record::steps::AuthorizeAnswer;
use crate::domain::saga::NextAction;

/// The `ErrorInfo` domain of the vault's errors.
const VAULT_DOMAIN: &str = "vault.tandem";

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

/// Why a settlement file was not delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettlementFileError {
    /// The vault or the processor did not answer; try again later.
    Unavailable(String),
    /// The vault refused the request, or the file is too large.
    Refused(String),
}

/// A vault refund's final answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundAnswer {
    /// Refunded: the vault refund's id and the processor's reference of the refund.
    Succeeded {
        /// The vault refund.
        id: String,
        /// The processor's reference (empty if the vault gave none).
        processor_reference: String,
    },
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

/// One authorization of a batch.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizeItem<'a> {
    /// The operation's id, e.g. `<payment>/leg/1/attempt/1/authorize`.
    pub request_id: &'a str,
    /// The card.
    pub token: &'a str,
    /// The card's currency, that of `amount`.
    pub currency: Currency,
    /// The amount to hold, in minor units.
    pub amount: i64,
    /// The charge's description.
    pub description: &'a str,
    /// The merchant reference (the payment).
    pub reference: &'a str,
}

/// One capture or void of a batch.
#[derive(Debug, Clone, Copy)]
pub struct SettleItem<'a> {
    /// The operation's id, e.g. `<payment>/leg/1/attempt/1/capture`.
    pub request_id: &'a str,
    /// The charge.
    pub charge_id: &'a str,
    /// The charge's currency, that of `amount`.
    pub currency: Currency,
    /// The amount to capture, in minor units (unused by a void).
    pub amount: i64,
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

    /// The settlement file of `processor`'s `day`, whole, as the vault streams it from the
    /// processor's connector; at most `bytes_max` bytes.
    pub async fn settlement_file(
        &self,
        processor: &str,
        day: time::Date,
        bytes_max: usize,
    ) -> Result<Vec<u8>, SettlementFileError> {
        let request = pb::DownloadSettlementFileRequest {
            processor: processor.to_owned(),
            settlement_date: day.to_string(),
        };
        let refused = |status: tonic::Status| {
            // A file too large is an answer (the processor delivered it), not a transient failure.
            if is_unknown(&status) && reason(&status) != "SETTLEMENT_FILE_TOO_LARGE" {
                SettlementFileError::Unavailable(describe(&status))
            } else {
                SettlementFileError::Refused(format!("{}: {}", describe(&status), status.message()))
            }
        };
        let mut stream = observed("DownloadSettlementFile", async {
            self.charges
                .clone()
                .download_settlement_file(traced(request))
                .await
        })
        .await
        .map_err(refused)?
        .into_inner();
        let mut file = Vec::new();
        while let Some(chunk) = stream.message().await.map_err(refused)? {
            if file.len() + chunk.data.len() > bytes_max {
                return Err(SettlementFileError::Refused(format!(
                    "the settlement file is larger than {bytes_max} bytes"
                )));
            }
            file.extend_from_slice(&chunk.data);
        }
        Ok(file)
    }

    /// Whether `token` may be charged.
    pub async fn check_token(&self, token: &str) -> Result<TokenCheck, Unknown> {
        let request = pb::GetTokenRequest {
            token: token.to_owned(),
        };
        let read = observed("GetToken", async {
            self.tokens.clone().get_token(traced(request)).await
        });
        match read.await {
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

    /// Authorizes `items`, each in its card's currency and allowing partial approval, in one
    /// `BatchAuthorize`: one answer for each item, in order (and no call for no items). Each
    /// item is its own operation at the vault (its own request id, intent and result), so an
    /// item's unknown outcome is sent again alone or in a later batch.
    pub async fn authorize_all(
        &self,
        correlation_id: &str,
        items: &[AuthorizeItem<'_>],
    ) -> Vec<Result<AuthorizeAnswer, Unknown>> {
        if items.is_empty() {
            return Vec::new();
        }
        let requests = items
            .iter()
            .map(|item| pb::AuthorizeRequest {
                request_id: item.request_id.to_owned(),
                token: item.token.to_owned(),
                amount: Some(money(item.currency, item.amount)),
                allow_partial_approval: true,
                description: item.description.to_owned(),
                statement_descriptor: String::new(),
                reference: item.reference.to_owned(),
                metadata: Default::default(),
            })
            .collect();
        let results = observed("BatchAuthorize", async {
            let request = correlated(pb::BatchAuthorizeRequest { requests }, correlation_id);
            self.charges.clone().batch_authorize(request).await
        })
        .await;
        let results = per_item(results.map(|r| r.into_inner().results), items.len());
        results
            .into_iter()
            .zip(items)
            .map(|(result, item)| authorization(result, item.request_id))
            .collect()
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
        let read = observed("GetCharge", async {
            self.charges.clone().get_charge(traced(request)).await
        });
        match read.await {
            Ok(response) => match answer(response.into_inner().charge.unwrap_or_default()) {
                Ok(answer) => Ok(Some(answer)),
                Err(_) => Ok(None),
            },
            Err(status) if status.code() == tonic::Code::NotFound => Ok(None),
            Err(status) => Err(Unknown(describe(&status))),
        }
    }

    /// Captures `items` (their `amount`, in their `currency`) in one `BatchCapture`: one answer for
    /// each item, in order, which succeeds once the vault confirms its charge captured (a
    /// replay of the same request included).
    pub async fn capture_all(
        &self,
        correlation_id: &str,
        items: &[SettleItem<'_>],
    ) -> Vec<Result<Settled, Unknown>> {
        if items.is_empty() {
            return Vec::new();
        }
        let requests = items
            .iter()
            .map(|item| pb::CaptureRequest {
                request_id: item.request_id.to_owned(),
                charge_id: item.charge_id.to_owned(),
                amount: Some(money(item.currency, item.amount)),
            })
            .collect();
        let results = observed("BatchCapture", async {
            let request = correlated(pb::BatchCaptureRequest { requests }, correlation_id);
            self.charges.clone().batch_capture(request).await
        })
        .await;
        let results = per_item(results.map(|r| r.into_inner().results), items.len());
        self.settled_all(results, items, pb::ChargeState::Captured)
            .await
    }

    /// Voids `items` in one `BatchVoid`: one answer for each item, in order, which succeeds
    /// once the vault confirms its charge voided.
    pub async fn void_all(
        &self,
        correlation_id: &str,
        items: &[SettleItem<'_>],
    ) -> Vec<Result<Settled, Unknown>> {
        if items.is_empty() {
            return Vec::new();
        }
        let requests = items
            .iter()
            .map(|item| pb::VoidRequest {
                request_id: item.request_id.to_owned(),
                charge_id: item.charge_id.to_owned(),
                reason: "split payment not covered".to_owned(),
            })
            .collect();
        let results = observed("BatchVoid", async {
            let request = correlated(pb::BatchVoidRequest { requests }, correlation_id);
            self.charges.clone().batch_void(request).await
        })
        .await;
        let results = per_item(results.map(|r| r.into_inner().results), items.len());
        self.settled_all(results, items, pb::ChargeState::Voided)
            .await
    }

    /// [`VaultClient::settled`] for each item of a batch.
    async fn settled_all(
        &self,
        results: Vec<Result<pb::Charge, tonic::Status>>,
        items: &[SettleItem<'_>],
        expected: pb::ChargeState,
    ) -> Vec<Result<Settled, Unknown>> {
        let checks = results
            .into_iter()
            .zip(items)
            .map(|(result, item)| self.settled(result, item.charge_id, expected));
        join_all(checks).await
    }

    /// Checks that a capture or void left the charge in `expected`; a refusal is checked
    /// against the charge as the vault has it (a capture or void that already happened is
    /// done, one that did not is refused, with the vault's reason), and anything else stays
    /// unknown, to be retried.
    async fn settled(
        &self,
        result: Result<pb::Charge, tonic::Status>,
        charge_id: &str,
        expected: pb::ChargeState,
    ) -> Result<Settled, Unknown> {
        let charge = match result {
            Ok(charge) => charge,
            Err(status) if is_unknown(&status) => return Err(Unknown(describe(&status))),
            Err(status) => {
                let charge = self.charge(charge_id).await?;
                if charge.state != expected as i32 && !captured_enough(expected, &charge) {
                    tracing::error!(
                        charge_id,
                        reason = %reason(&status),
                        "the vault refused a capture or void the payment needs"
                    );
                    return Ok(Settled::Refused(reason(&status)));
                }
                charge
            }
        };
        if charge.state == expected as i32 || captured_enough(expected, &charge) {
            Ok(Settled::Done)
        } else {
            Err(Unknown(format!(
                "charge is {:?} after the call",
                pb::ChargeState::try_from(charge.state).unwrap_or_default()
            )))
        }
    }

    /// Whether the vault shows `charge_id` captured (or refunded since), for `capture`, or
    /// released (voided or declined) otherwise: what an operator's confirmation of a refused
    /// capture or void must find before it is recorded.
    pub async fn shows_settled(&self, charge_id: &str, capture: bool) -> Result<bool, Unknown> {
        let charge = self.charge(charge_id).await?;
        Ok(if capture {
            captured_enough(pb::ChargeState::Captured, &charge)
        } else {
            matches!(
                pb::ChargeState::try_from(charge.state),
                Ok(pb::ChargeState::Voided | pb::ChargeState::Declined)
            )
        })
    }

    /// The charge `charge_id` as the vault has it (`GetCharge`).
    async fn charge(&self, charge_id: &str) -> Result<pb::Charge, Unknown> {
        let read = pb::GetChargeRequest {
            lookup: Some(pb::get_charge_request::Lookup::ChargeId(
                charge_id.to_owned(),
            )),
        };
        Ok(observed("GetCharge", async {
            self.charges.clone().get_charge(traced(read)).await
        })
        .await
        .map_err(|e| Unknown(describe(&e)))?
        .into_inner()
        .charge
        .unwrap_or_default())
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
        let refund = observed("Refund", async {
            let request = correlated(
                pb::RefundRequest {
                    request_id: op.request_id.to_owned(),
                    charge_id: charge_id.to_owned(),
                    amount: Some(money(currency, amount)),
                    reason: reason_text.to_owned(),
                },
                op.correlation_id,
            );
            self.charges.clone().refund(request).await
        });
        match refund.await {
            Ok(response) => {
                let refund = response.into_inner().refund.unwrap_or_default();
                match pb::RefundState::try_from(refund.state) {
                    Ok(pb::RefundState::Succeeded) => Ok(RefundAnswer::Succeeded {
                        id: refund.id,
                        processor_reference: refund.processor_reference,
                    }),
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

/// The results of a batch call, one for each of its `items`: an item's charge, or its error as
/// the status its single RPC would have returned; a failure of the whole call is every item's.
fn per_item(
    results: Result<Vec<pb::BatchChargeResult>, tonic::Status>,
    items: usize,
) -> Vec<Result<pb::Charge, tonic::Status>> {
    use pb::batch_charge_result::Result as Item;
    let results = match results {
        Ok(results) if results.len() == items => results,
        Ok(results) => {
            let count = results.len();
            let status = tonic::Status::internal(format!(
                "the vault answered {count} results for {items} requests"
            ));
            return vec![Err(status); items];
        }
        Err(status) => return vec![Err(status); items],
    };
    results
        .into_iter()
        .map(|result| match result.result {
            Some(Item::Charge(charge)) => Ok(charge),
            Some(Item::Error(error)) => {
                let mut details =
                    ErrorDetails::with_error_info(error.reason, VAULT_DOMAIN, HashMap::new());
                for violation in error.field_violations {
                    details.add_bad_request_violation(violation.field, violation.description);
                }
                let code = tonic::Code::from_i32(error.code);
                Err(tonic::Status::with_error_details(
                    code,
                    error.message,
                    details,
                ))
            }
            None => Err(tonic::Status::internal("a batch result without its result")),
        })
        .collect()
}

/// An authorization's result as an answer: a refusal for this card (the saga moves on), or an
/// unknown outcome to send again.
fn authorization(
    result: Result<pb::Charge, tonic::Status>,
    request_id: &str,
) -> Result<AuthorizeAnswer, Unknown> {
    match result {
        Ok(charge) => answer(charge),
        Err(status) if is_refusal(&status) => Ok(AuthorizeAnswer::Refused {
            reason: reason(&status),
        }),
        Err(status) => {
            if !is_unknown(&status) {
                tracing::error!(
                    request_id,
                    status = %describe(&status),
                    "the vault answered an authorization unexpectedly; retrying later"
                );
            }
            Err(Unknown(describe(&status)))
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
/// audit rows carry it beside the operation's own id (the message's `request_id`), and with
/// the current span's trace context (`traceparent`), so the vault's spans join the trace.
fn correlated<T>(message: T, correlation_id: &str) -> tonic::Request<T> {
    let mut request = traced(message);
    if let Ok(value) = correlation_id.parse() {
        request.metadata_mut().insert("x-request-id", value);
    }
    request
}

/// The request with the current span's trace context (`traceparent`).
fn traced<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    tandem_runtime::telemetry::inject(request.metadata_mut());
    request
}

/// Runs one vault call of `rpc` in a client span (whose context [`correlated`] sends with
/// it), timed by outcome.
async fn observed<T>(
    rpc: &'static str,
    call: impl Future<Output = Result<T, tonic::Status>>,
) -> Result<T, tonic::Status> {
    let span = tracing::info_span!(
        "vault",
        otel.name = %format_args!("vault {rpc}"),
        otel.kind = "client",
        rpc,
    );
    let started = std::time::Instant::now();
    let result = call.instrument(span).await;
    let outcome = match &result {
        Ok(_) => "OK",
        Err(status) => tandem_runtime::wire::code_name(status.code()),
    };
    crate::metrics::vault_call(rpc, outcome, started.elapsed());
    result
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
                processor_reference: charge.processor_reference,
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

/// A capture's or void's end, as the vault confirms it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// The charge is captured (or refunded since) or voided, as asked.
    Done,
    /// The vault refused, and the charge is not as asked: the vault's reason.
    Refused(String),
}

/// True when a capture was asked and the charge is captured, or refunded since.
fn captured_enough(expected: pb::ChargeState, charge: &pb::Charge) -> bool {
    expected == pb::ChargeState::Captured
        && matches!(
            pb::ChargeState::try_from(charge.state),
            Ok(pb::ChargeState::Captured
                | pb::ChargeState::PartiallyRefunded
                | pb::ChargeState::Refunded)
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
