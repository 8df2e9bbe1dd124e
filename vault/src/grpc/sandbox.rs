//! `SandboxService`: thin handlers over [`crate::charges::sandbox`] and their wire
//! conversions.

use std::sync::Arc;

use tandem_money::{Currency, Money};
use tandem_proto::tandem::r#type::v1 as types;
use tandem_proto::tandem::vault::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::charges::{decline_code, decline_code_from_wire, money};
use super::convert::{date, required_date, timestamp};
use super::status::to_status;
use super::{Edge, Paging, respond};
use crate::auth::Rpc;
use crate::charges::Charges;
use crate::charges::sandbox::{ConfigureSandboxCard, CorruptSettlementRecord, SettlementQuery};
use crate::connector::sandbox::{
    CardBehaviour, CorruptedRecord, Corruption, FAIL_FIRST_ATTEMPTS_MAX, LATENCY_MS_MAX,
    OperationFilter, SandboxCard, SandboxOperation, SettlementRecord,
};
use crate::domain::token::is_random_id;
use crate::domain::{RequestId, Token};
use crate::error::Error;
use tandem_runtime::fields::Violations;

/// `SandboxService`: the sandbox acquirer's administration.
#[derive(Debug, Clone)]
pub struct SandboxApi {
    charges: Arc<Charges>,
    edge: Edge,
}

impl SandboxApi {
    /// Serves the sandbox of `charges`.
    pub fn new(charges: Arc<Charges>, uri_prefix: &str) -> SandboxApi {
        let edge = Edge::new(charges.vault().clone(), uri_prefix);
        SandboxApi { charges, edge }
    }
}

/// Checks a `ConfigureSandboxCardRequest`.
pub fn configure_sandbox_card(
    request: &pb::ConfigureSandboxCardRequest,
) -> Result<ConfigureSandboxCard, Error> {
    let mut v = Violations::default();
    let request_id = v.check("request_id", RequestId::parse(&request.request_id));
    let token = v.check("token", Token::parse(&request.token));
    let behaviour = match &request.config {
        None => Some(None),
        Some(config) => match behaviour(config) {
            Ok(behaviour) => Some(Some(behaviour)),
            Err(Error::InvalidArgument(violations)) => {
                for violation in violations {
                    v.add(violation.field, violation.description);
                }
                None
            }
            Err(other) => return Err(other),
        },
    };
    v.finish_with(|| {
        Some(ConfigureSandboxCard {
            request_id: request_id?,
            token: token?,
            behaviour: behaviour?,
        })
    })
}

/// Checks a `CorruptSettlementRecordRequest`. `amount_minor` is for CHANGE_AMOUNT only and
/// `currency` for CHANGE_CURRENCY only: either set with another corruption is refused rather
/// than ignored. Whether the change changes the record is the sandbox's to say.
pub fn corrupt_settlement_record(
    request: &pb::CorruptSettlementRecordRequest,
) -> Result<CorruptSettlementRecord, Error> {
    use pb::SettlementCorruption as Wire;
    let mut v = Violations::default();
    let request_id = v.check("request_id", RequestId::parse(&request.request_id));
    let day = v.check("settlement_date", required_date(&request.settlement_date));
    let record_id = v.check(
        "record_id",
        if request.record_id.is_empty() {
            Ok(None)
        } else if is_random_id("stl_", &request.record_id) {
            Ok(Some(request.record_id.clone()))
        } else {
            Err("must be \"stl_\" followed by 26 lower-case base32 characters")
        },
    );
    let wire = Wire::try_from(request.corruption);
    let amount = if matches!(wire, Ok(Wire::ChangeAmount)) {
        v.check(
            "amount_minor",
            if request.amount_minor > 0 {
                Ok(request.amount_minor)
            } else {
                Err("must be positive")
            },
        )
    } else {
        if request.amount_minor != 0 {
            v.add(
                "amount_minor",
                "must be 0 unless corruption is SETTLEMENT_CORRUPTION_CHANGE_AMOUNT",
            );
        }
        None
    };
    let currency = if matches!(wire, Ok(Wire::ChangeCurrency)) {
        v.check(
            "currency",
            Currency::parse(&request.currency).map_err(|e| e.to_string()),
        )
    } else {
        if !request.currency.is_empty() {
            v.add(
                "currency",
                "must be empty unless corruption is SETTLEMENT_CORRUPTION_CHANGE_CURRENCY",
            );
        }
        None
    };
    let corruption = v
        .check(
            "corruption",
            match wire {
                Ok(Wire::Unspecified) => Err("is required"),
                Ok(Wire::Drop) => Ok(Some(Corruption::Drop)),
                Ok(Wire::Duplicate) => Ok(Some(Corruption::Duplicate)),
                Ok(Wire::ChangeAmount) => Ok(amount.map(Corruption::ChangeAmount)),
                Ok(Wire::ChangeCurrency) => Ok(currency.map(Corruption::ChangeCurrency)),
                Ok(Wire::SettleLate) => Ok(Some(Corruption::SettleLate)),
                Err(_) => Err("is not a known settlement corruption"),
            },
        )
        .flatten();
    v.finish_with(|| {
        Some(CorruptSettlementRecord {
            request_id: request_id?,
            day: day?,
            record_id: record_id?,
            corruption: corruption?,
        })
    })
}

/// Checks a `ListSandboxOperationsRequest`.
fn operations_query(
    request: &pb::ListSandboxOperationsRequest,
) -> Result<(OperationFilter, Paging), Error> {
    let scope = format!(
        "operations/{}/{}/{}",
        request.token, request.r#type, request.authorization_reference
    );
    let mut v = Violations::default();
    let size = v.check("page_size", Paging::size(request.page_size));
    let token = if request.token.is_empty() {
        Some(None)
    } else {
        v.check("token", Token::parse(&request.token)).map(Some)
    };
    let kind = v.check(
        "type",
        match pb::SandboxOperationType::try_from(request.r#type) {
            Ok(pb::SandboxOperationType::Unspecified) => Ok(None),
            Ok(pb::SandboxOperationType::Authorize) => Ok(Some("authorize")),
            Ok(pb::SandboxOperationType::Capture) => Ok(Some("capture")),
            Ok(pb::SandboxOperationType::Void) => Ok(Some("void")),
            Ok(pb::SandboxOperationType::Refund) => Ok(Some("refund")),
            Ok(pb::SandboxOperationType::Inquire) => Ok(Some("inquire")),
            Err(_) => Err("is not a known operation type"),
        },
    );
    let reference = v.check(
        "authorization_reference",
        if request.authorization_reference.len() <= 128 {
            Ok(request.authorization_reference.clone())
        } else {
            Err("is too long")
        },
    );
    let paging = Paging::check(&mut v, size, &request.page_token, scope);
    v.finish_with(|| {
        let reference = reference?;
        // The sandbox keeps the token it was addressed by; a filter by another token of the
        // same card is answered by that card's own operations.
        let filter = OperationFilter {
            token: token?.map(|t| t.as_str().to_owned()),
            kind: kind?,
            authorization_reference: (!reference.is_empty()).then_some(reference),
        };
        Some((filter, paging?))
    })
}

/// Checks a `ListSettlementRecordsRequest`.
fn settlement_query(
    request: &pb::ListSettlementRecordsRequest,
) -> Result<(SettlementQuery, Paging), Error> {
    let scope = format!(
        "settlement/{}/{}/{}",
        request.start_date, request.end_date, request.r#type
    );
    let mut v = Violations::default();
    let size = v.check("page_size", Paging::size(request.page_size));
    let start = v.check("start_date", date(&request.start_date));
    let end = v.check("end_date", date(&request.end_date));
    if let (Some(Some(start)), Some(Some(end))) = (start, end)
        && end < start
    {
        v.check::<(), _>("end_date", Err("must not be before start_date"));
    }
    let kind = v.check(
        "type",
        match pb::SettlementRecordType::try_from(request.r#type) {
            Ok(pb::SettlementRecordType::Unspecified) => Ok(None),
            Ok(pb::SettlementRecordType::Capture) => Ok(Some("capture")),
            Ok(pb::SettlementRecordType::Refund) => Ok(Some("refund")),
            Err(_) => Err("is not a known settlement record type"),
        },
    );
    let paging = Paging::check(&mut v, size, &request.page_token, scope);
    v.finish_with(|| {
        let query = SettlementQuery {
            start: start?,
            end: end?,
            kind: kind?,
        };
        Some((query, paging?))
    })
}

fn behaviour(config: &pb::SandboxCardConfig) -> Result<CardBehaviour, Error> {
    let mut v = Violations::default();
    let decline = v.check(
        "config.decline_code",
        decline_code_from_wire(config.decline_code),
    );
    let balance = match &config.balance {
        None => Some(None),
        Some(balance) => v
            .check(
                "config.balance",
                Currency::parse(&balance.currency_code)
                    .map_err(|e| e.to_string())
                    .and_then(|currency| {
                        if balance.minor_units < 0 {
                            Err("minor_units must not be negative".to_owned())
                        } else {
                            Ok(Money::new(currency, balance.minor_units))
                        }
                    }),
            )
            .map(Some),
    };
    let latency_ms = v.check(
        "config.latency_ms",
        u32::try_from(config.latency_ms)
            .ok()
            .filter(|ms| *ms <= LATENCY_MS_MAX)
            .ok_or(format!("must be 0 to {LATENCY_MS_MAX}")),
    );
    let fail_first_attempts = v.check(
        "config.fail_first_attempts",
        u32::try_from(config.fail_first_attempts)
            .ok()
            .filter(|n| *n <= FAIL_FIRST_ATTEMPTS_MAX)
            .ok_or(format!("must be 0 to {FAIL_FIRST_ATTEMPTS_MAX}")),
    );
    v.finish_with(|| {
        Some(CardBehaviour {
            decline: decline?,
            balance: balance?,
            latency_ms: latency_ms?,
            fail_first_attempts: fail_first_attempts?,
            timeout_after_authorize: config.timeout_after_authorize,
        })
    })
}

fn sandbox_card(card: &SandboxCard) -> pb::SandboxCard {
    let b = &card.behaviour;
    pb::SandboxCard {
        token: card.token.clone(),
        last4: card.last4.clone(),
        configured: card.configured,
        config: Some(pb::SandboxCardConfig {
            decline_code: b
                .decline
                .map_or(types::DeclineCode::Unspecified, decline_code)
                as i32,
            balance: b.balance.map(money),
            latency_ms: i64::from(b.latency_ms),
            fail_first_attempts: b.fail_first_attempts as i32,
            timeout_after_authorize: b.timeout_after_authorize,
        }),
        available: card.available.map(money),
        held: card.held.map(money),
        fail_first_attempts_remaining: card.fail_remaining as i32,
        update_time: Some(timestamp(card.updated_at)),
    }
}

fn operation_type(kind: &str) -> pb::SandboxOperationType {
    match kind {
        "authorize" => pb::SandboxOperationType::Authorize,
        "capture" => pb::SandboxOperationType::Capture,
        "void" => pb::SandboxOperationType::Void,
        "refund" => pb::SandboxOperationType::Refund,
        "inquire" => pb::SandboxOperationType::Inquire,
        _ => pb::SandboxOperationType::Unspecified,
    }
}

fn operation(op: &SandboxOperation) -> pb::SandboxOperation {
    pb::SandboxOperation {
        processor_reference: op.reference.clone(),
        authorization_reference: op.authorization_reference.clone(),
        r#type: operation_type(&op.kind) as i32,
        idempotency_key: op.idempotency_key.clone(),
        token: op.token.clone(),
        requested: op.requested.map(money),
        approved: op.approved.map(money),
        outcome: match op.outcome.as_str() {
            "approved" => pb::SandboxOperationOutcome::Approved,
            "partially_approved" => pb::SandboxOperationOutcome::PartiallyApproved,
            "declined" => pb::SandboxOperationOutcome::Declined,
            "replayed" => pb::SandboxOperationOutcome::Replayed,
            _ => pb::SandboxOperationOutcome::Unspecified,
        } as i32,
        decline_code: op
            .decline
            .map_or(types::DeclineCode::Unspecified, decline_code) as i32,
        authorization_code: op.authorization_code.clone(),
        create_time: Some(timestamp(op.created_at)),
    }
}

fn settlement_record(record: &SettlementRecord) -> pb::SettlementRecord {
    pb::SettlementRecord {
        id: record.id.clone(),
        settlement_date: record.settlement_date.to_string(),
        r#type: match record.kind.as_str() {
            "capture" => pb::SettlementRecordType::Capture,
            "refund" => pb::SettlementRecordType::Refund,
            _ => pb::SettlementRecordType::Unspecified,
        } as i32,
        processor_reference: record.processor_reference.clone(),
        authorization_reference: record.authorization_reference.clone(),
        amount: Some(money(record.amount)),
        create_time: Some(timestamp(record.created_at)),
    }
}

#[tonic::async_trait]
impl pb::sandbox_service_server::SandboxService for SandboxApi {
    #[instrument(
        skip_all,
        fields(rpc = "ConfigureSandboxCard", correlation_id, caller, token)
    )]
    async fn configure_sandbox_card(
        &self,
        request: Request<pb::ConfigureSandboxCardRequest>,
    ) -> Result<Response<pb::ConfigureSandboxCardResponse>, Status> {
        let ctx = self
            .edge
            .context(&request, Rpc::ConfigureSandboxCard)
            .await?;
        let checked = configure_sandbox_card(request.get_ref());
        let command = self.edge.check(&ctx, checked).await?;
        tracing::Span::current().record("token", command.token.as_str());
        let card = self
            .charges
            .configure_sandbox_card(&ctx, command)
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::ConfigureSandboxCardResponse {
                card: Some(sandbox_card(&card)),
            },
        ))
    }

    #[instrument(
        skip_all,
        fields(rpc = "GetSandboxCard", correlation_id, caller, token)
    )]
    async fn get_sandbox_card(
        &self,
        request: Request<pb::GetSandboxCardRequest>,
    ) -> Result<Response<pb::GetSandboxCardResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::GetSandboxCard).await?;
        let checked =
            Token::parse(&request.get_ref().token).map_err(|e| Error::invalid("token", e));
        let token = self.edge.check(&ctx, checked).await?;
        let card = self
            .charges
            .sandbox_card(&ctx, &token)
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::GetSandboxCardResponse {
                card: Some(sandbox_card(&card)),
            },
        ))
    }

    #[instrument(
        skip_all,
        fields(rpc = "ListSandboxOperations", correlation_id, caller)
    )]
    async fn list_sandbox_operations(
        &self,
        request: Request<pb::ListSandboxOperationsRequest>,
    ) -> Result<Response<pb::ListSandboxOperationsResponse>, Status> {
        let ctx = self
            .edge
            .context(&request, Rpc::ListSandboxOperations)
            .await?;
        let checked = operations_query(request.get_ref());
        let (filter, paging) = self.edge.check(&ctx, checked).await?;
        let page = self
            .charges
            .sandbox_operations(&ctx, &filter, paging.after.unwrap_or(0), paging.size)
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::ListSandboxOperationsResponse {
                operations: page.items.iter().map(operation).collect(),
                next_page_token: paging.next_token(&page, |op| op.seq),
            },
        ))
    }

    #[instrument(
        skip_all,
        fields(rpc = "CorruptSettlementRecord", correlation_id, caller, record)
    )]
    async fn corrupt_settlement_record(
        &self,
        request: Request<pb::CorruptSettlementRecordRequest>,
    ) -> Result<Response<pb::CorruptSettlementRecordResponse>, Status> {
        let ctx = self
            .edge
            .context(&request, Rpc::CorruptSettlementRecord)
            .await?;
        let checked = corrupt_settlement_record(request.get_ref());
        let command = self.edge.check(&ctx, checked).await?;
        let CorruptedRecord {
            original,
            corrupted,
        } = self
            .charges
            .corrupt_settlement_record(&ctx, command)
            .await
            .map_err(to_status)?;
        tracing::Span::current().record("record", original.id.as_str());
        Ok(respond(
            &ctx,
            pb::CorruptSettlementRecordResponse {
                original: Some(settlement_record(&original)),
                corrupted: corrupted.as_ref().map(settlement_record),
            },
        ))
    }

    #[instrument(
        skip_all,
        fields(rpc = "ListSettlementRecords", correlation_id, caller)
    )]
    async fn list_settlement_records(
        &self,
        request: Request<pb::ListSettlementRecordsRequest>,
    ) -> Result<Response<pb::ListSettlementRecordsResponse>, Status> {
        let ctx = self
            .edge
            .context(&request, Rpc::ListSettlementRecords)
            .await?;
        let checked = settlement_query(request.get_ref());
        let (query, paging) = self.edge.check(&ctx, checked).await?;
        let page = self
            .charges
            .settlement_records(&ctx, &query, paging.after.unwrap_or(0), paging.size)
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::ListSettlementRecordsResponse {
                records: page.items.iter().map(settlement_record).collect(),
                next_page_token: paging.next_token(&page, |record| record.seq),
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(error: Error) -> Vec<String> {
        match error {
            Error::InvalidArgument(violations) => violations.into_iter().map(|v| v.field).collect(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn request(
        corruption: pb::SettlementCorruption,
        amount_minor: i64,
        currency: &str,
    ) -> pb::CorruptSettlementRecordRequest {
        pb::CorruptSettlementRecordRequest {
            request_id: "corrupt-1".to_owned(),
            settlement_date: "2026-11-29".to_owned(),
            record_id: String::new(),
            corruption: corruption as i32,
            amount_minor,
            currency: currency.to_owned(),
        }
    }

    /// Each corruption takes exactly its own parameter: an amount only to change the amount, a
    /// currency only to change the currency; a missing or unknown corruption, a malformed day
    /// or record id, and a parameter out of place are refused, each naming its field.
    #[test]
    fn corruption_requests() {
        use pb::SettlementCorruption as Wire;
        let usd = Currency::parse("USD").unwrap();
        let accepted = [
            (request(Wire::Drop, 0, ""), Corruption::Drop),
            (request(Wire::Duplicate, 0, ""), Corruption::Duplicate),
            (
                request(Wire::ChangeAmount, 7, ""),
                Corruption::ChangeAmount(7),
            ),
            (
                request(Wire::ChangeCurrency, 0, "USD"),
                Corruption::ChangeCurrency(usd),
            ),
            (request(Wire::SettleLate, 0, ""), Corruption::SettleLate),
        ];
        for (request, corruption) in accepted {
            let command = corrupt_settlement_record(&request).unwrap();
            assert_eq!(command.corruption, corruption);
            assert_eq!(command.day, time::macros::date!(2026 - 11 - 29));
            assert_eq!(command.record_id, None);
        }

        let mut bad_day = request(Wire::Drop, 0, "");
        bad_day.settlement_date = "yesterday".to_owned();
        let mut bad_record = request(Wire::Drop, 0, "");
        bad_record.record_id = "sbx_aaaaaaaaaaaaaaaaaaaaaaaaaa".to_owned();
        let mut unknown = request(Wire::Drop, 0, "");
        unknown.corruption = 99;
        let refused = [
            (request(Wire::Unspecified, 0, ""), vec!["corruption"]),
            (unknown, vec!["corruption"]),
            (bad_day, vec!["settlement_date"]),
            (bad_record, vec!["record_id"]),
            (request(Wire::ChangeAmount, 0, ""), vec!["amount_minor"]),
            (request(Wire::ChangeAmount, -5, ""), vec!["amount_minor"]),
            (request(Wire::ChangeCurrency, 0, "usd"), vec!["currency"]),
            (request(Wire::ChangeCurrency, 0, ""), vec!["currency"]),
            (request(Wire::Drop, 5, ""), vec!["amount_minor"]),
            (request(Wire::SettleLate, 0, "EUR"), vec!["currency"]),
        ];
        for (request, expected) in refused {
            let error = corrupt_settlement_record(&request).unwrap_err();
            assert_eq!(fields(error), expected, "{request:?}");
        }
    }
}
