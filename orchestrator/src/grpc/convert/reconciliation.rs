//! Reconciliation between wire and domain: the checks of `ReconciliationService`'s requests,
//! and runs, discrepancies and adjustments on the wire.

use prost::Message as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_runtime::fields::Violations;
use time::OffsetDateTime;

use crate::commands::{AdjustmentDecision, AdjustmentProposal, DiscrepancyQuery, ReconcileDay};
use crate::config::ReconciliationSettings;
use crate::domain::reconciliation::{Class, EVENT_TYPES, SettlementType};
use crate::error::Error;
use crate::storage::reconciliation::NewEvent;
use crate::storage::reconciliation::{StoredAdjustment, StoredDiscrepancy, StoredRun};

use super::ledger::{day, money, position, token};
use super::payments::{note_text, strict_page_size};
use super::{actor, request_hash, request_id, resource_id, wire_time};

/// Most discrepancies per page.
const PAGE_SIZE_MAX: i32 = 1000;

/// Checks a processor name against the configured one.
fn processor(v: &mut Violations, settings: &ReconciliationSettings, text: &str) {
    if text != settings.processor {
        v.add(
            "processor",
            format!("must be a configured processor: {}", settings.processor),
        );
    }
}

/// The checks of `RunReconciliation`: the configured processor, a day not after today (UTC).
pub fn run_reconciliation(
    request: &pb::RunReconciliationRequest,
    settings: &ReconciliationSettings,
    now: OffsetDateTime,
) -> Result<ReconcileDay, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    processor(&mut v, settings, &request.processor);
    let day = day(&mut v, "settlement_date", &request.settlement_date);
    if let Some(day) = day
        && day > now.date()
    {
        v.add(
            "settlement_date",
            "must not be in the future (UTC): a day's file exists once the day has begun",
        );
    }
    let day = v.finish::<_, Error>(day)?;
    Ok(ReconcileDay {
        request_id: request.request_id.clone(),
        request_hash: request_hash("RunReconciliation", request),
        processor: request.processor.clone(),
        day: day.ok_or_else(|| Error::invalid("settlement_date", "is required"))?,
    })
}

/// The checks of `GetReconciliationRun`: the run id.
pub fn get_run(request: &pb::GetReconciliationRunRequest) -> Result<String, Error> {
    let mut v = Violations::default();
    let id = resource_id(&mut v, "run_id", "rcn_", &request.run_id);
    v.finish(id)
}

fn state_name(state: pb::DiscrepancyState) -> Option<&'static str> {
    match state {
        pb::DiscrepancyState::Unspecified => None,
        pb::DiscrepancyState::Open => Some("open"),
        pb::DiscrepancyState::Resolved => Some("resolved"),
        pb::DiscrepancyState::Cleared => Some("cleared"),
    }
}

/// The checks of `ListDiscrepancies`: a run, or a processor with an optional day; the page
/// token bound to those filters.
pub fn list_discrepancies(
    request: &pb::ListDiscrepanciesRequest,
    settings: &ReconciliationSettings,
) -> Result<(DiscrepancyQuery, String), Error> {
    let mut v = Violations::default();
    let size = strict_page_size(&mut v, request.page_size, 100, PAGE_SIZE_MAX);
    let run_id = (!request.run_id.is_empty())
        .then(|| resource_id(&mut v, "run_id", "rcn_", &request.run_id));
    match (&run_id, request.processor.is_empty()) {
        (Some(_), false) => v.add("processor", "must be empty when run_id is set"),
        (None, true) => v.add("run_id", "run_id or processor is required"),
        (None, false) => processor(&mut v, settings, &request.processor),
        (Some(_), true) => {}
    }
    let day = if request.settlement_date.is_empty() {
        None
    } else {
        if run_id.is_some() {
            v.add("settlement_date", "must be empty when run_id is set");
        }
        day(&mut v, "settlement_date", &request.settlement_date)
    };
    let state = match pb::DiscrepancyState::try_from(request.state) {
        Ok(state) => state_name(state),
        Err(_) => {
            v.add("state", "is not a DiscrepancyState");
            None
        }
    };
    let scope = format!(
        "ListDiscrepancies|{run_id:?}|{}|{day:?}|{state:?}",
        request.processor
    );
    let after = position(&mut v, "page_token", &request.page_token, &scope);
    v.finish((
        DiscrepancyQuery {
            run_id,
            processor: request.processor.clone(),
            day,
            state: state.map(str::to_owned),
            size,
            after,
        },
        scope,
    ))
}

/// The checks of `ProposeAdjustment`.
pub fn propose_adjustment(
    request: &pb::ProposeAdjustmentRequest,
) -> Result<AdjustmentProposal, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let discrepancy_id = resource_id(&mut v, "discrepancy_id", "dsc_", &request.discrepancy_id);
    let (amount, currency) = match &request.amount {
        None => {
            v.add("amount", "is required");
            (0, String::new())
        }
        Some(money) => {
            if tandem_money::Currency::parse(&money.currency_code).is_err() {
                v.add(
                    "amount.currency_code",
                    "must be a known ISO 4217 currency code",
                );
            }
            if money.minor_units <= 0 {
                v.add("amount.minor_units", "must be positive");
            }
            (money.minor_units, money.currency_code.clone())
        }
    };
    note_text(&mut v, "reason", &request.reason);
    v.finish(AdjustmentProposal {
        request_id: request.request_id.clone(),
        request_hash: request_hash("ProposeAdjustment", request),
        discrepancy_id,
        amount,
        currency,
        reason: request.reason.clone(),
    })
}

/// The checks of `ApproveAdjustment`.
pub fn approve_adjustment(
    request: &pb::ApproveAdjustmentRequest,
) -> Result<AdjustmentDecision, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let adjustment_id = resource_id(&mut v, "adjustment_id", "adj_", &request.adjustment_id);
    v.finish(AdjustmentDecision {
        request_id: request.request_id.clone(),
        request_hash: request_hash("ApproveAdjustment", request),
        adjustment_id,
        approve: true,
        reason: String::new(),
    })
}

/// The checks of `RejectAdjustment`.
pub fn reject_adjustment(
    request: &pb::RejectAdjustmentRequest,
) -> Result<AdjustmentDecision, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let adjustment_id = resource_id(&mut v, "adjustment_id", "adj_", &request.adjustment_id);
    note_text(&mut v, "reason", &request.reason);
    v.finish(AdjustmentDecision {
        request_id: request.request_id.clone(),
        request_hash: request_hash("RejectAdjustment", request),
        adjustment_id,
        approve: false,
        reason: request.reason.clone(),
    })
}

/// A run on the wire.
pub fn run(run: &StoredRun) -> pb::ReconciliationRun {
    let [
        matched,
        missing_in_ledger,
        missing_at_processor,
        amount_mismatch,
        currency_mismatch,
        duplicate_settlement,
        pending,
    ] = run.counts;
    pb::ReconciliationRun {
        id: run.id.clone(),
        processor: run.processor.clone(),
        settlement_date: run.day.to_string(),
        actor: Some(actor(&run.actor)),
        records: run.records,
        matched,
        missing_in_ledger,
        missing_at_processor,
        amount_mismatch,
        currency_mismatch,
        duplicate_settlement,
        pending,
        resolved: run.resolved,
        start_time: Some(wire_time(run.start_time)),
        finish_time: Some(wire_time(run.finish_time)),
    }
}

/// The encoded `RunReconciliationResponse` of `run`, as stored with its request id.
pub fn run_response(stored: &StoredRun) -> Vec<u8> {
    pb::RunReconciliationResponse {
        run: Some(run(stored)),
    }
    .encode_to_vec()
}

/// The run id of a stored `RunReconciliationResponse`.
pub fn run_id_of(response: &[u8]) -> Result<String, Error> {
    pb::RunReconciliationResponse::decode(response)
        .ok()
        .and_then(|r| r.run)
        .map(|r| r.id)
        .ok_or_else(|| Error::Corrupt("a stored run response does not decode".into()))
}

fn class(class: Class) -> pb::DiscrepancyClass {
    match class {
        Class::Matched => pb::DiscrepancyClass::Matched,
        Class::MissingInLedger => pb::DiscrepancyClass::MissingInLedger,
        Class::MissingAtProcessor => pb::DiscrepancyClass::MissingAtProcessor,
        Class::AmountMismatch => pb::DiscrepancyClass::AmountMismatch,
        Class::CurrencyMismatch => pb::DiscrepancyClass::CurrencyMismatch,
        Class::DuplicateSettlement => pb::DiscrepancyClass::DuplicateSettlement,
        Class::Pending => pb::DiscrepancyClass::Pending,
    }
}

fn discrepancy_state(state: &str) -> pb::DiscrepancyState {
    match state {
        "open" => pb::DiscrepancyState::Open,
        "resolved" => pb::DiscrepancyState::Resolved,
        "cleared" => pb::DiscrepancyState::Cleared,
        _ => pb::DiscrepancyState::Unspecified,
    }
}

/// A discrepancy on the wire.
pub fn discrepancy(d: &StoredDiscrepancy) -> pb::Discrepancy {
    let record = d.record.as_ref();
    let entry = d.entry.as_ref();
    pb::Discrepancy {
        id: d.id.clone(),
        processor: d.processor.clone(),
        settlement_date: d.day.to_string(),
        class: class(d.class) as i32,
        state: discrepancy_state(&d.state) as i32,
        processor_reference: d.reference.clone(),
        r#type: match d.kind {
            SettlementType::Capture => pb::SettlementType::Capture,
            SettlementType::Refund => pb::SettlementType::Refund,
        } as i32,
        record_id: record.map(|r| r.0.clone()).unwrap_or_default(),
        settled_amount: record.map(|r| money(&r.2, r.1)),
        settle_time: record.map(|r| wire_time(r.3)),
        ledger_entry_id: entry.map(|e| e.transfer_id.clone()).unwrap_or_default(),
        ledger_amount: entry.map(|e| money(&e.currency, e.amount)),
        payment_id: entry.and_then(|e| e.payment_id.clone()).unwrap_or_default(),
        leg_id: entry.and_then(|e| e.leg_id.clone()).unwrap_or_default(),
        correction: d
            .correction
            .as_ref()
            .map(|(amount, currency)| money(currency, *amount)),
        first_run_id: d.runs.0.clone(),
        last_run_id: d.runs.1.clone(),
        adjustment_id: d.adjustment_id.clone().unwrap_or_default(),
        applied: d
            .applied
            .as_ref()
            .map(|(amount, currency)| money(currency, *amount)),
    }
}

/// A page of discrepancies, with the token of the next if more follow.
pub fn discrepancies_page(
    page: &[StoredDiscrepancy],
    more: bool,
    scope: &str,
) -> pb::ListDiscrepanciesResponse {
    pb::ListDiscrepanciesResponse {
        discrepancies: page.iter().map(discrepancy).collect(),
        next_page_token: match (more, page.last()) {
            (true, Some(last)) => token(last.seq, scope),
            _ => String::new(),
        },
    }
}

fn adjustment_state(state: &str) -> pb::AdjustmentState {
    match state {
        "proposed" => pb::AdjustmentState::Proposed,
        "approved" => pb::AdjustmentState::Approved,
        "rejected" => pb::AdjustmentState::Rejected,
        _ => pb::AdjustmentState::Unspecified,
    }
}

/// An adjustment on the wire.
pub fn adjustment(a: &StoredAdjustment) -> pb::Adjustment {
    pb::Adjustment {
        id: a.id.clone(),
        discrepancy_id: a.discrepancy_id.clone(),
        state: adjustment_state(&a.state) as i32,
        amount: Some(money(&a.currency, a.amount)),
        reason: a.reason.clone(),
        proposer: Some(actor(&a.proposer)),
        propose_time: Some(wire_time(a.propose_time)),
        decider: a.decider.as_ref().map(actor),
        decide_time: a.decide_time.map(wire_time),
        decision_reason: a.decision_reason.clone(),
        ledger_entry_ids: a.transfer_ids.clone(),
    }
}

/// The encoded response of a proposal or decision (`ProposeAdjustmentResponse`,
/// `ApproveAdjustmentResponse` and `RejectAdjustmentResponse` share their one field), as stored
/// with its request id.
pub fn adjustment_response(a: &StoredAdjustment) -> Vec<u8> {
    pb::ProposeAdjustmentResponse {
        adjustment: Some(adjustment(a)),
    }
    .encode_to_vec()
}

/// The feed event of a completed run (the first of its stream).
pub fn run_event(stored: &StoredRun, id: String) -> NewEvent {
    let kind = pb::ReconciliationEventType::RunCompleted;
    let event = pb::ReconciliationEvent {
        id: id.clone(),
        sequence: 1,
        r#type: kind as i32,
        type_name: EVENT_TYPES[0].to_owned(),
        actor: Some(actor(&stored.actor)),
        create_time: Some(wire_time(stored.finish_time)),
        subject: Some(pb::reconciliation_event::Subject::Run(run(stored))),
    };
    NewEvent {
        subject: stored.id.clone(),
        sequence: 1,
        id,
        kind: EVENT_TYPES[0],
        body: event.encode_to_vec(),
        create_time: stored.finish_time,
    }
}

/// The feed event of an adjustment's latest step: its proposal (the first of its stream), or
/// its approval or rejection (the second), by the step's actor.
pub fn adjustment_event(a: &StoredAdjustment, id: String) -> NewEvent {
    let (kind, index, sequence, who, time) = match (&a.decider, a.decide_time) {
        (Some(decider), Some(time)) if a.state == "approved" => (
            pb::ReconciliationEventType::AdjustmentApproved,
            2,
            2,
            decider,
            time,
        ),
        (Some(decider), Some(time)) => (
            pb::ReconciliationEventType::AdjustmentRejected,
            3,
            2,
            decider,
            time,
        ),
        _ => (
            pb::ReconciliationEventType::AdjustmentProposed,
            1,
            1,
            &a.proposer,
            a.propose_time,
        ),
    };
    let event = pb::ReconciliationEvent {
        id: id.clone(),
        sequence,
        r#type: kind as i32,
        type_name: EVENT_TYPES[index].to_owned(),
        actor: Some(actor(who)),
        create_time: Some(wire_time(time)),
        subject: Some(pb::reconciliation_event::Subject::Adjustment(adjustment(a))),
    };
    NewEvent {
        subject: a.id.clone(),
        sequence,
        id,
        kind: EVENT_TYPES[index],
        body: event.encode_to_vec(),
        create_time: time,
    }
}
