//! Payments between wire and domain: the checks of `PaymentService`'s requests, and
//! payments, refunds and their events on the wire.

use prost::Message as _;
use tandem_money::{Currency, Money};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_runtime::fields::Violations;
use time::OffsetDateTime;

use crate::commands::{
    EventQuery, NewNote, NewPayment, NewRefund, NewResolution, NewReview, PaymentQuery,
    PolicyOverride, Watch,
};
use crate::config::PaymentSettings;
use crate::domain::allocation::{Line, PolicyError};
use crate::domain::group::MemberRules;
use crate::domain::planning::Invoice;
use crate::domain::record::events::{Event, EventKind};
use crate::domain::record::operator::{Decision, Resolution};
use crate::domain::record::refunds::{Refund, RefundState};
use crate::domain::record::{AttemptOutcome, Note, PaymentRecord, Status};
use crate::domain::saga::{LegState, NextAction, PaymentState, Verdict};
use crate::error::Error;
use crate::storage::{
    Cursor, FeedEvent, FeedPage, FeedPosition, FeedSource, PaymentFilter, StoredPayment,
};

use super::{
    LINES_MAX, PAGES, TEXT_CHARS_MAX, actor, add_policy, amount, free_text, is_id_text, money,
    next_page_token, page_after, page_size, policy, request_hash, request_id, resource_id,
    wire_time,
};

/// Checks the invoice of a CreatePayment request.
pub fn invoice(v: &mut Violations, wire: Option<&pb::Invoice>, max: i64) -> Option<Invoice> {
    let Some(wire) = wire else {
        v.add("invoice", "is required");
        return None;
    };
    if !is_id_text(&wire.id, 64) {
        v.add(
            "invoice.id",
            "must be 1-64 characters of A-Z a-z 0-9 . _ : / -",
        );
    }
    free_text(
        v,
        "invoice.description",
        &wire.description,
        TEXT_CHARS_MAX,
        false,
    );
    free_text(v, "invoice.cost_center", &wire.cost_center, 64, false);
    let total = amount(v, "invoice.amount", wire.amount.as_ref(), None, max);
    if wire.lines.len() > LINES_MAX {
        v.add("invoice.lines", "must have at most 100 lines");
    }
    let mut lines = Vec::new();
    for (i, line) in wire.lines.iter().enumerate() {
        let field = |name: &str| format!("invoice.lines[{i}].{name}");
        let Some(total) = total else { break };
        let Some(line_amount) = amount(
            v,
            &field("amount"),
            line.amount.as_ref(),
            Some(total.currency),
            max,
        ) else {
            continue;
        };
        let currency = if line.currency_code.is_empty() {
            Some(total.currency)
        } else {
            Currency::parse(&line.currency_code)
                .map_err(|e| v.add(field("currency_code"), e.to_string()))
                .ok()
        };
        free_text(v, &field("cost_center"), &line.cost_center, 64, false);
        free_text(
            v,
            &field("description"),
            &line.description,
            TEXT_CHARS_MAX,
            false,
        );
        if let Some(currency) = currency {
            lines.push(Line {
                amount: line_amount.minor_units,
                currency,
            });
        }
    }
    if let Some(total) = total
        && !lines.is_empty()
        && lines.len() == wire.lines.len()
        && lines.iter().map(|l| l.amount).sum::<i64>() != total.minor_units
    {
        v.add("invoice.lines", "must sum exactly to invoice.amount");
    }
    Some(Invoice {
        id: wire.id.clone(),
        amount: total?,
        cost_center: Some(wire.cost_center.clone()).filter(|c| !c.is_empty()),
        lines,
    })
}

/// The wire name of a status, for `payments.state` filters.
pub fn state_filter(v: &mut Violations, state: i32) -> Option<&'static str> {
    match pb::PaymentState::try_from(state) {
        Ok(pb::PaymentState::Unspecified) => None,
        Ok(pb::PaymentState::Pending) => Some("pending"),
        Ok(pb::PaymentState::Authorizing) => Some("authorizing"),
        Ok(pb::PaymentState::InReview) => Some("in_review"),
        Ok(pb::PaymentState::Capturing) => Some("capturing"),
        Ok(pb::PaymentState::Succeeded) => Some("succeeded"),
        Ok(pb::PaymentState::PartiallyPaid) => Some("partially_paid"),
        Ok(pb::PaymentState::Reversing) => Some("reversing"),
        Ok(pb::PaymentState::Failed) => Some("failed"),
        Ok(pb::PaymentState::PartiallyRefunded) => Some("partially_refunded"),
        Ok(pb::PaymentState::Refunded) => Some("refunded"),
        Ok(pb::PaymentState::NeedsOperator) => Some("needs_operator"),
        Err(_) => {
            v.add("state", "is not a known payment state");
            None
        }
    }
}

fn status_to_wire(status: Status) -> pb::PaymentState {
    match status {
        Status::Saga(PaymentState::Pending) => pb::PaymentState::Pending,
        Status::Saga(PaymentState::Authorizing) => pb::PaymentState::Authorizing,
        Status::Saga(PaymentState::InReview) => pb::PaymentState::InReview,
        Status::Saga(PaymentState::Capturing) => pb::PaymentState::Capturing,
        Status::Saga(PaymentState::Succeeded) => pb::PaymentState::Succeeded,
        Status::Saga(PaymentState::PartiallyPaid) => pb::PaymentState::PartiallyPaid,
        Status::Saga(PaymentState::Reversing) => pb::PaymentState::Reversing,
        Status::Saga(PaymentState::Failed) => pb::PaymentState::Failed,
        Status::Saga(PaymentState::NeedsOperator) => pb::PaymentState::NeedsOperator,
        Status::PartiallyRefunded => pb::PaymentState::PartiallyRefunded,
        Status::Refunded => pb::PaymentState::Refunded,
    }
}

fn refund_state(state: RefundState) -> pb::PaymentRefundState {
    match state {
        RefundState::Pending => pb::PaymentRefundState::Pending,
        RefundState::Succeeded => pb::PaymentRefundState::Succeeded,
        RefundState::Failed => pb::PaymentRefundState::Failed,
    }
}

/// A refund of a payment on the wire.
pub fn refund_to_wire(record: &PaymentRecord, refund: &Refund) -> pb::PaymentRefund {
    let currency = record.currency();
    pb::PaymentRefund {
        id: refund.id.clone(),
        request_id: refund.request_id.clone(),
        amount: Some(money(currency, refund.amount)),
        reason: refund.reason.clone(),
        state: refund_state(refund.state) as i32,
        parts: refund
            .parts
            .iter()
            .map(|p| pb::PaymentRefundPart {
                leg_index: p.leg as i32 + 1,
                amount: Some(card_money(record, p.leg, p.charge.unwrap_or(p.amount))),
                charge_refund_id: p.charge_refund_id.clone().unwrap_or_default(),
                state: refund_state(p.state) as i32,
                invoice_amount: Some(money(currency, p.amount)),
            })
            .collect(),
        create_time: Some(wire_time(refund.create_time)),
        complete_time: refund.complete_time.map(wire_time),
        requester: refund.requester.as_ref().map(actor),
    }
}

/// A note of a payment on the wire.
pub fn note_to_wire(note: &Note) -> pb::PaymentNote {
    pb::PaymentNote {
        text: note.text.clone(),
        author: Some(actor(&note.author)),
        create_time: Some(wire_time(note.create_time)),
    }
}

/// `minor_units` of the currency of leg `leg`'s card.
fn card_money(record: &PaymentRecord, leg: usize, minor_units: i64) -> types::Money {
    let amount = record.card_money(leg, minor_units);
    money(amount.currency, amount.minor_units)
}

/// A payment on the wire: the record, with the invoice and policy as they were given.
pub fn payment_to_wire(stored: &StoredPayment, update_time: OffsetDateTime) -> pb::Payment {
    let record = &stored.record;
    let request = pb::CreatePaymentRequest::decode(stored.request.as_slice()).unwrap_or_default();
    let currency = record.currency();
    let legs = record
        .saga
        .legs
        .iter()
        .zip(&record.legs)
        .enumerate()
        .map(|(i, (leg, detail))| {
            let member = record.member(&leg.token);
            let state = match leg.state {
                LegState::Pending => pb::LegState::Pending,
                LegState::Authorizing => pb::LegState::Authorizing,
                LegState::Authorized | LegState::Capturing | LegState::Voiding => {
                    pb::LegState::Authorized
                }
                LegState::Declined => pb::LegState::Declined,
                LegState::Voided => pb::LegState::Voided,
                LegState::Captured if detail.refunded >= leg.approved && leg.approved > 0 => {
                    pb::LegState::Refunded
                }
                LegState::Captured if detail.refunded > 0 => pb::LegState::PartiallyRefunded,
                LegState::Captured => pb::LegState::Captured,
            };
            let covers = match leg.state {
                LegState::Declined => 0,
                LegState::Pending | LegState::Authorizing => leg.amount,
                _ => leg.approved,
            };
            let held = matches!(
                leg.state,
                LegState::Authorized | LegState::Capturing | LegState::Voiding
            );
            let card = |minor_units: i64| Some(card_money(record, i, minor_units));
            let charge = match leg.state {
                LegState::Declined => 0,
                LegState::Pending | LegState::Authorizing => record.saga.ask(i),
                _ => record.saga.capture(i),
            };
            let quote = record.saga.quote(i);
            pb::PaymentLeg {
                index: i as i32 + 1,
                token: leg.token.clone(),
                label: member.map(|m| m.label.clone()).unwrap_or_default(),
                last4: detail
                    .last4
                    .clone()
                    .or(member.map(|m| m.last4.clone()))
                    .unwrap_or_default(),
                cost_center: member
                    .and_then(|m| m.cost_center.clone())
                    .or(record.cost_center.clone())
                    .unwrap_or_default(),
                amount: Some(money(currency, covers)),
                charge_amount: card(charge),
                fx_rate: quote.map(|q| q.rate.to_string()).unwrap_or_default(),
                state: state as i32,
                authorized: card(if held { record.saga.hold(i) } else { 0 }),
                captured: card(if leg.state == LegState::Captured {
                    record.saga.capture(i)
                } else {
                    0
                }),
                refunded: card(record.card_refunded(i)),
                charge_id: detail.charge_id.clone().unwrap_or_default(),
                authorization_code: detail.authorization_code.clone().unwrap_or_default(),
                fx_rate_source: quote.map(|q| q.source.clone()).unwrap_or_default(),
                fx_rate_as_of_time: quote.map(|q| wire_time(q.as_of)),
                refusal_reason: detail.refusal.clone().unwrap_or_default(),
                refusals: i32::try_from(detail.refusals).unwrap_or(i32::MAX),
            }
        })
        .collect();
    let attempts = record
        .attempts
        .iter()
        .map(|a| {
            let leg = &record.saga.legs[a.leg];
            let member = record.member(&leg.token);
            pb::PaymentAttempt {
                number: a.number as i32,
                leg_index: a.leg as i32 + 1,
                token: leg.token.clone(),
                label: member.map(|m| m.label.clone()).unwrap_or_default(),
                last4: record.legs[a.leg]
                    .last4
                    .clone()
                    .or(member.map(|m| m.last4.clone()))
                    .unwrap_or_default(),
                requested: Some(card_money(record, a.leg, a.requested)),
                approved: Some(card_money(record, a.leg, a.approved)),
                outcome: match a.outcome {
                    AttemptOutcome::Pending => pb::AttemptOutcome::Pending,
                    AttemptOutcome::Approved => pb::AttemptOutcome::Approved,
                    AttemptOutcome::PartiallyApproved => pb::AttemptOutcome::PartiallyApproved,
                    AttemptOutcome::Declined => pb::AttemptOutcome::Declined,
                    AttemptOutcome::Error => pb::AttemptOutcome::Error,
                } as i32,
                decline_code: a
                    .decline_code
                    .as_deref()
                    .and_then(|c| types::DeclineCode::from_str_name(&format!("DECLINE_CODE_{c}")))
                    .unwrap_or_default() as i32,
                next_action: match a.next_action {
                    Some(NextAction::RetrySameCard) => types::NextAction::RetrySameCard,
                    Some(NextAction::TryNextCard) => types::NextAction::TryNextCard,
                    Some(NextAction::DoNotRetry) => types::NextAction::DoNotRetry,
                    None => types::NextAction::Unspecified,
                } as i32,
                error_reason: a.error_reason.clone().unwrap_or_default(),
                charge_id: a.charge_id.clone().unwrap_or_default(),
                authorization_code: a.authorization_code.clone().unwrap_or_default(),
                start_time: Some(wire_time(a.start_time)),
                end_time: a.end_time.map(wire_time),
            }
        })
        .collect();
    pb::Payment {
        id: record.id.clone(),
        request_id: request.request_id.clone(),
        invoice: request.invoice.clone(),
        card_group_id: stored.card_group_id.clone(),
        billing_account_id: stored.billing_account_id.clone(),
        policy: match &stored.policy {
            Some(policy) => pb::AllocationPolicy::decode(policy.as_slice()).ok(),
            None => request.policy_override.clone(),
        },
        state: status_to_wire(record.status()) as i32,
        authorized: Some(money(currency, record.authorized())),
        captured: Some(money(currency, record.captured())),
        refunded: Some(money(currency, record.refunded())),
        remaining: Some(money(currency, record.remaining())),
        legs,
        attempts,
        refunds: record
            .refunds
            .iter()
            .map(|r| refund_to_wire(record, r))
            .collect(),
        summary: record.summary(),
        create_time: Some(wire_time(record.create_time)),
        update_time: Some(wire_time(update_time)),
        complete_time: record.complete_time.map(wire_time),
        creator: record.creator.as_ref().map(actor),
        notes: record.notes.iter().map(note_to_wire).collect(),
        risk: record.risk.as_ref().map(super::risk::assessment_to_wire),
        review: record.review.as_ref().map(super::risk::review_to_wire),
        failure_reason: record
            .failure_reason
            .map(|r| r.as_str().to_owned())
            .unwrap_or_default(),
        resolutions: record.resolutions.iter().map(resolution_to_wire).collect(),
    }
}

fn resolution_to_wire(resolution: &Resolution) -> pb::PaymentResolution {
    pb::PaymentResolution {
        decision: match resolution.decision {
            Decision::Retry => pb::ResolutionDecision::Retry,
            Decision::Confirm => pb::ResolutionDecision::Confirm,
        } as i32,
        operator: Some(actor(&resolution.operator)),
        note: resolution.note.clone(),
        create_time: Some(wire_time(resolution.create_time)),
    }
}

/// The checks of `CreatePayment` that need no database: the command, or every violation.
pub fn create_payment(
    request: pb::CreatePaymentRequest,
    settings: &PaymentSettings,
) -> Result<NewPayment, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let group_id = resource_id(&mut v, "card_group_id", "cg_", &request.card_group_id);
    let invoice = invoice(&mut v, request.invoice.as_ref(), settings.amount_minor_max);
    if !request.note.is_empty() {
        note_text(&mut v, "note", &request.note);
    }
    let wait_ms = match request.wait_timeout_ms {
        0 => 30_000,
        ms if (1..=i64::try_from(settings.wait_timeout_ms_max).unwrap_or(i64::MAX))
            .contains(&ms) =>
        {
            ms as u64
        }
        _ => {
            v.add(
                "wait_timeout_ms",
                format!("must be 0 or 1-{}", settings.wait_timeout_ms_max),
            );
            0
        }
    };
    let invoice = v
        .finish::<_, Error>(invoice)?
        .ok_or_else(|| Error::invalid("invoice", "is invalid"))?;
    // `wait` and its timeout are not part of the request's identity.
    let mut identity = request.clone();
    identity.wait = false;
    identity.wait_timeout_ms = 0;
    let policy_override = request.policy_override.map(|wire| PolicyOverride {
        encoded: wire.encode_to_vec(),
        check: Box::new(move |members: &[MemberRules], currency: Currency| {
            let mut v = Violations::default();
            let checked = policy(&mut v, "policy_override", &wire, members, Some(currency));
            (checked, v.into_inner())
        }),
    });
    Ok(NewPayment {
        request_id: request.request_id,
        card_group_id: group_id,
        invoice,
        policy_override,
        wait: request.wait,
        wait_ms,
        request_hash: request_hash("CreatePayment", &identity),
        request: identity.encode_to_vec(),
        note: Some(request.note).filter(|n| !n.is_empty()),
    })
}

/// Longest operator note, in characters.
const NOTE_CHARS_MAX: usize = 1000;

/// Digits in a row (whatever separates them but letters) that make a text look like it holds
/// a card number: card numbers have 12 to 19.
const CARD_DIGITS_MIN: usize = 12;

/// True if `text` holds [`CARD_DIGITS_MIN`] digits or more with nothing but separators
/// (spaces, dots, slashes, dashes, newlines, ...) between them. Any Unicode digit counts
/// (full-width ones too); only a letter ends a run.
pub(super) fn holds_card_number(text: &str) -> bool {
    let mut run = 0;
    for c in text.chars() {
        if c.is_numeric() {
            run += 1;
            if run >= CARD_DIGITS_MIN {
                return true;
            }
        } else if c.is_alphabetic() {
            run = 0;
        }
    }
    false
}

/// Checks an operator note: 1-1000 characters, no control characters but newlines, and no
/// card number (a note is shown in views, events and exports, where none may ever be).
pub(super) fn note_text(v: &mut Violations, field: &str, text: &str) {
    let chars = text.chars().count();
    if chars == 0 || chars > NOTE_CHARS_MAX || text.chars().any(|c| c.is_control() && c != '\n') {
        v.add(
            field,
            format!(
                "must be 1-{NOTE_CHARS_MAX} characters without control characters but newlines"
            ),
        );
        return;
    }
    if holds_card_number(text) {
        v.add(
            field,
            "must not contain a card number (12 or more digits with only separators between)",
        );
    }
}

/// The checks of `ReviewPayment`.
pub fn review_payment(request: &pb::ReviewPaymentRequest) -> Result<NewReview, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let payment_id = resource_id(&mut v, "payment_id", "pay_", &request.payment_id);
    let verdict = match pb::ReviewVerdict::try_from(request.verdict) {
        Ok(pb::ReviewVerdict::Approve) => Some(Verdict::Approve),
        Ok(pb::ReviewVerdict::Reject) => Some(Verdict::Reject),
        _ => {
            v.add("verdict", "must be APPROVE or REJECT");
            None
        }
    };
    if !request.note.is_empty() {
        note_text(&mut v, "note", &request.note);
    }
    if verdict == Some(Verdict::Reject) && request.note.trim().is_empty() {
        v.add("note", "is required to reject: say why");
    }
    let verdict = v.finish_with::<_, Error>(|| verdict)?;
    Ok(NewReview {
        request_id: request.request_id.clone(),
        request_hash: request_hash("ReviewPayment", request),
        payment_id,
        verdict,
        note: (!request.note.is_empty()).then(|| request.note.clone()),
    })
}

/// The checks of `ResolvePayment`.
pub fn resolve_payment(request: &pb::ResolvePaymentRequest) -> Result<NewResolution, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let payment_id = resource_id(&mut v, "payment_id", "pay_", &request.payment_id);
    let decision = match pb::ResolutionDecision::try_from(request.decision) {
        Ok(pb::ResolutionDecision::Retry) => Some(Decision::Retry),
        Ok(pb::ResolutionDecision::Confirm) => Some(Decision::Confirm),
        _ => {
            v.add("decision", "must be RETRY or CONFIRM");
            None
        }
    };
    if request.note.trim().is_empty() {
        v.add("note", "is required: say what the processor showed");
    } else {
        note_text(&mut v, "note", &request.note);
    }
    let decision = v.finish_with::<_, Error>(|| decision)?;
    Ok(NewResolution {
        request_id: request.request_id.clone(),
        request_hash: request_hash("ResolvePayment", request),
        payment_id,
        decision,
        note: request.note.clone(),
    })
}

/// The checks of `AddPaymentNote`.
pub fn add_payment_note(request: &pb::AddPaymentNoteRequest) -> Result<NewNote, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let payment_id = resource_id(&mut v, "payment_id", "pay_", &request.payment_id);
    note_text(&mut v, "text", &request.text);
    v.finish(NewNote {
        request_id: request.request_id.clone(),
        payment_id,
        text: request.text.clone(),
        request_hash: request_hash("AddPaymentNote", request),
    })
}

/// The answer to `AddPaymentNote`.
pub fn note_response(
    payment: &StoredPayment,
    index: usize,
) -> Result<pb::AddPaymentNoteResponse, Error> {
    let note = payment.record.notes.get(index).ok_or_else(|| {
        Error::Corrupt(format!("payment {} lost note {index}", payment.record.id))
    })?;
    Ok(pb::AddPaymentNoteResponse {
        note: Some(note_to_wire(note)),
        payment: Some(payment_to_wire(payment, payment.update_time)),
    })
}

/// Most event types one `ListEvents` may filter on.
const EVENT_TYPES_MAX: usize = 50;

/// Every event type the feed knows: payments', card groups', reconciliation's.
pub(super) fn known_event_types() -> impl Iterator<Item = &'static str> {
    EVENT_KINDS
        .iter()
        .map(|kind| event_type(*kind).0)
        .chain(super::groups::GROUP_EVENT_TYPES)
        .chain(crate::domain::reconciliation::EVENT_TYPES)
}

/// The checks of `ListEvents`. Cursors are positions in the feed, valid with any filter.
pub fn list_events(
    request: &pb::ListEventsRequest,
    page_size_max: i32,
) -> Result<EventQuery, Error> {
    let mut v = Violations::default();
    let size = strict_page_size(&mut v, request.page_size, 100, page_size_max);
    if request.event_types.len() > EVENT_TYPES_MAX {
        v.add(
            "event_types",
            format!("must have at most {EVENT_TYPES_MAX} types"),
        );
    }
    for (i, kind) in request.event_types.iter().enumerate() {
        if !known_event_types().any(|known| known == kind) {
            v.add(format!("event_types[{i}]"), "is not a known event type");
        }
    }
    let after = if request.page_token.is_empty() {
        Some(FeedPosition::default())
    } else {
        let position = decode_feed_position(&request.page_token);
        if position.is_none() {
            v.add(
                "page_token",
                "is not a page token or event cursor of ListEvents",
            );
        }
        position
    };
    let mut types = request.event_types.clone();
    types.sort();
    types.dedup();
    v.finish(EventQuery {
        size,
        after: after.unwrap_or_default(),
        types,
    })
}

/// A page size that must be within 1..=`max` (0 means `default`): over the limit is a
/// violation, not a smaller page.
pub fn strict_page_size(v: &mut Violations, requested: i32, default: i32, max: i32) -> i32 {
    match requested {
        0 => default.min(max),
        n if (1..=max).contains(&n) => n,
        _ => {
            v.add("page_size", format!("must be 0 or 1-{max}"));
            1
        }
    }
}

/// The list scope of feed positions: they are not bound to a filter.
const FEED_SCOPE: &[u8] = b"ListEvents/v1";

fn encode_feed_position(position: &FeedPosition) -> String {
    let mut bytes = position.key.to_be_bytes().to_vec();
    bytes.extend_from_slice(&position.sequence.to_be_bytes());
    bytes.extend_from_slice(position.subject.as_bytes());
    tandem_runtime::pages::encode(PAGES, FEED_SCOPE, &bytes)
}

fn decode_feed_position(token: &str) -> Option<FeedPosition> {
    let bytes = tandem_runtime::pages::decode(PAGES, FEED_SCOPE, token)?;
    let (key, rest) = bytes.split_at_checked(8)?;
    let (sequence, subject) = rest.split_at_checked(8)?;
    Some(FeedPosition {
        key: u64::from_be_bytes(key.try_into().ok()?),
        sequence: i64::from_be_bytes(sequence.try_into().ok()?),
        subject: String::from_utf8(subject.to_vec()).ok()?,
    })
}

/// A feed event on the wire.
fn feed_event(event: &FeedEvent) -> Result<pb::Event, Error> {
    let corrupt = |e: prost::DecodeError| Error::Corrupt(format!("event body: {e}"));
    let ((id, actor, create_time), subject) = match event.source {
        FeedSource::Payment => {
            let body = pb::PaymentEvent::decode(event.body.as_slice()).map_err(corrupt)?;
            let head = (body.id.clone(), body.actor.clone(), body.create_time);
            (head, pb::event::Subject::PaymentEvent(body))
        }
        FeedSource::CardGroup => {
            let body = pb::CardGroupEvent::decode(event.body.as_slice()).map_err(corrupt)?;
            let head = (body.id.clone(), body.actor.clone(), body.create_time);
            (head, pb::event::Subject::CardGroupEvent(body))
        }
        FeedSource::Reconciliation => {
            let body = pb::ReconciliationEvent::decode(event.body.as_slice()).map_err(corrupt)?;
            let head = (body.id.clone(), body.actor.clone(), body.create_time);
            (head, pb::event::Subject::ReconciliationEvent(body))
        }
    };
    Ok(pb::Event {
        id,
        r#type: event.kind.clone(),
        actor,
        create_time,
        cursor: encode_feed_position(&event.position),
        subject: Some(subject),
    })
}

/// A page of `ListEvents` from what the feed read for `query`, of at most `bytes_max` encoded
/// events (at least one): a page cut short by size, or as long as asked, has a next page; a
/// page that is neither is caught up, and its resume token starts past every event the read
/// examined (the frontier), so a filtered feed moves on even when nothing matched.
pub fn events_page(
    page: &FeedPage,
    query: &EventQuery,
    bytes_max: usize,
) -> Result<pb::ListEventsResponse, Error> {
    let mut events = Vec::with_capacity(page.events.len());
    let mut bytes = 0;
    let mut cut = false;
    for event in &page.events {
        let wire = feed_event(event)?;
        bytes += wire.encoded_len() + 8;
        if bytes > bytes_max && !events.is_empty() {
            cut = true;
            break;
        }
        events.push(wire);
    }
    let more = cut || page.events.len() >= query.size as usize;
    let next_page_token = match events.last() {
        Some(last) if more => last.cursor.clone(),
        _ => String::new(),
    };
    let resume_page_token = if next_page_token.is_empty() {
        let frontier = FeedPosition {
            key: page.frontier,
            ..FeedPosition::default()
        };
        let last = page.events.last().map(|e| e.position.clone());
        let resume = [Some(frontier), Some(query.after.clone()), last]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or_default();
        encode_feed_position(&resume)
    } else {
        next_page_token.clone()
    };
    Ok(pb::ListEventsResponse {
        events,
        next_page_token,
        resume_page_token,
    })
}

/// The violations of a payment's plan, named after the request's fields: an override's under
/// `policy_override`, the group's default policy's under `card_group_id`.
pub fn plan_violations(errors: Vec<PolicyError>, overridden: bool) -> Error {
    let mut v = Violations::default();
    if overridden {
        add_policy(&mut v, errors, "policy_override");
    } else {
        for error in errors {
            if error.field.starts_with("policy") {
                v.add(
                    "card_group_id",
                    format!("the group's default policy: {}", error.description),
                );
            } else {
                v.add(error.field, error.description);
            }
        }
    }
    Error::InvalidArgument(v.into_inner())
}

/// The payment id of `GetPayment`.
pub fn get_payment(request: &pb::GetPaymentRequest) -> Result<String, Error> {
    let mut v = Violations::default();
    let id = resource_id(&mut v, "payment_id", "pay_", &request.payment_id);
    v.finish(id)
}

/// The query of `ListPayments`, and the scope its page tokens belong to.
pub fn list_payments(
    request: &pb::ListPaymentsRequest,
    page_size_max: i32,
) -> Result<(PaymentQuery, String), Error> {
    let mut v = Violations::default();
    let size = page_size(&mut v, request.page_size, page_size_max);
    if !request.card_group_id.is_empty() {
        resource_id(&mut v, "card_group_id", "cg_", &request.card_group_id);
    }
    let state = state_filter(&mut v, request.state);
    // Either bound alone is a range open on the other side.
    let start = super::read_time(&mut v, "start_time", request.start_time.as_ref(), false);
    let end = super::read_time(&mut v, "end_time", request.end_time.as_ref(), false);
    if let (Some(start), Some(end)) = (start, end)
        && end <= start
    {
        v.add("end_time", "must be after start_time");
    }
    let filter = PaymentFilter {
        card_group_id: Some(request.card_group_id.clone()).filter(|s| !s.is_empty()),
        state,
        invoice_id: Some(request.invoice_id.clone()).filter(|s| !s.is_empty()),
        billing_account_id: Some(request.billing_account_id.clone()).filter(|s| !s.is_empty()),
        created_from: start,
        created_before: end,
    };
    let bound = |time: Option<OffsetDateTime>| time.map(|t| t.unix_timestamp_nanos());
    let scope = format!(
        "{}|{}|{}|{}|{:?}|{:?}",
        request.card_group_id,
        request.state,
        request.invoice_id,
        request.billing_account_id,
        bound(start),
        bound(end),
    );
    let after = page_after(&mut v, &request.page_token, &scope);
    v.finish((
        PaymentQuery {
            filter,
            size,
            after,
        },
        scope,
    ))
}

/// A page of `ListPayments`: the payments of `rows` that fit in `bytes_max` (at least one),
/// and the token of the next page when some were left out or `more` follow.
pub fn payments_page(
    rows: &[(StoredPayment, OffsetDateTime)],
    more: bool,
    scope: &str,
    bytes_max: usize,
) -> pb::ListPaymentsResponse {
    let mut payments = Vec::with_capacity(rows.len());
    let mut bytes = 0;
    for (stored, _) in rows {
        let wire = payment_to_wire(stored, stored.update_time);
        bytes += wire.encoded_len() + 8;
        if bytes > bytes_max && !payments.is_empty() {
            break;
        }
        payments.push(wire);
    }
    let cut = payments.len() < rows.len();
    let next = rows
        .get(payments.len().wrapping_sub(1))
        .filter(|_| cut || more)
        .map(|(stored, create_time)| Cursor {
            create_time: *create_time,
            id: stored.record.id.clone(),
        });
    pb::ListPaymentsResponse {
        payments,
        next_page_token: next_page_token(next.as_ref(), scope),
    }
}

/// The checks of `RefundPayment`: the command, or every violation.
pub fn refund_payment(request: &pb::RefundPaymentRequest) -> Result<NewRefund, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let payment_id = resource_id(&mut v, "payment_id", "pay_", &request.payment_id);
    if request.reason.chars().count() > 200 || request.reason.chars().any(char::is_control) {
        v.add(
            "reason",
            "must be at most 200 characters without control characters",
        );
    }
    let mut amount = None;
    if let Some(wire) = &request.amount {
        let currency = Currency::parse(&wire.currency_code);
        if currency.is_err() {
            v.add(
                "amount.currency_code",
                "must be a known ISO 4217 currency code",
            );
        }
        if wire.minor_units <= 0 {
            v.add("amount.minor_units", "must be positive");
        }
        amount = currency.ok().map(|c| Money::new(c, wire.minor_units));
    }
    v.finish(NewRefund {
        request_id: request.request_id.clone(),
        payment_id,
        amount,
        reason: request.reason.clone(),
        request_hash: request_hash("RefundPayment", request),
    })
}

/// The answer to `RefundPayment`: refund `refund_id` and its payment.
pub fn refund_response(
    payment: &StoredPayment,
    refund_id: &str,
) -> Result<pb::RefundPaymentResponse, Error> {
    let refund = payment.refund(refund_id)?;
    Ok(pb::RefundPaymentResponse {
        refund: Some(refund_to_wire(&payment.record, refund)),
        payment: Some(payment_to_wire(payment, payment.update_time)),
    })
}

/// The checks of `WatchPayment`.
pub fn watch_payment(request: &pb::WatchPaymentRequest) -> Result<Watch, Error> {
    let mut v = Violations::default();
    let payment_id = resource_id(&mut v, "payment_id", "pay_", &request.payment_id);
    if request.after_sequence < 0 {
        v.add("after_sequence", "must not be negative");
    }
    v.finish(Watch {
        payment_id,
        after_sequence: request.after_sequence,
    })
}

/// A stored event (an encoded `PaymentEvent`) as `WatchPayment` sends it.
pub fn watch_event(body: &[u8]) -> Result<pb::WatchPaymentResponse, Error> {
    let event =
        pb::PaymentEvent::decode(body).map_err(|e| Error::Corrupt(format!("event: {e}")))?;
    Ok(pb::WatchPaymentResponse { event: Some(event) })
}

/// An event's wire type and its encoded `PaymentEvent`, with the payment as it is now.
pub fn event_body(
    stored: &StoredPayment,
    event: &Event,
    id: &str,
    sequence: i64,
    now: OffsetDateTime,
) -> Result<(&'static str, Vec<u8>), Error> {
    let (name, kind) = event_type(event.kind);
    let message = pb::PaymentEvent {
        id: id.to_owned(),
        sequence,
        r#type: kind as i32,
        payment: Some(payment_to_wire(stored, now)),
        create_time: Some(wire_time(now)),
        summary: event.summary.clone(),
        leg_index: event.leg.map_or(0, |l| l as i32 + 1),
        attempt_number: event.attempt.map_or(0, |n| n as i32),
        refund_id: event.refund.clone().unwrap_or_default(),
        actor: stored.record.actor_of(event).map(actor),
        type_name: name.to_owned(),
    };
    Ok((name, message.encode_to_vec()))
}

fn event_type(kind: EventKind) -> (&'static str, pb::PaymentEventType) {
    use pb::PaymentEventType as T;
    match kind {
        EventKind::PaymentCreated => ("payment.created", T::PaymentCreated),
        EventKind::PaymentAuthorizing => ("payment.authorizing", T::PaymentAuthorizing),
        EventKind::PaymentCapturing => ("payment.capturing", T::PaymentCapturing),
        EventKind::PaymentSucceeded => ("payment.succeeded", T::PaymentSucceeded),
        EventKind::PaymentPartiallyPaid => ("payment.partially_paid", T::PaymentPartiallyPaid),
        EventKind::PaymentReversing => ("payment.reversing", T::PaymentReversing),
        EventKind::PaymentFailed => ("payment.failed", T::PaymentFailed),
        EventKind::PaymentPartiallyRefunded => {
            ("payment.partially_refunded", T::PaymentPartiallyRefunded)
        }
        EventKind::PaymentRefunded => ("payment.refunded", T::PaymentRefunded),
        EventKind::LegAuthorized => ("leg.authorized", T::LegAuthorized),
        EventKind::LegDeclined => ("leg.declined", T::LegDeclined),
        EventKind::LegReallocated => ("leg.reallocated", T::LegReallocated),
        EventKind::LegCaptured => ("leg.captured", T::LegCaptured),
        EventKind::LegVoided => ("leg.voided", T::LegVoided),
        EventKind::LegRefunded => ("leg.refunded", T::LegRefunded),
        EventKind::RefundCreated => ("refund.created", T::RefundCreated),
        EventKind::RefundSucceeded => ("refund.succeeded", T::RefundSucceeded),
        EventKind::RefundFailed => ("refund.failed", T::RefundFailed),
        EventKind::CardIneligible => ("card.ineligible", T::CardIneligible),
        EventKind::NoteAdded => ("payment.note_added", T::NoteAdded),
        EventKind::PaymentDelayed => ("payment.delayed", T::PaymentDelayed),
        EventKind::RiskAssessed => ("payment.risk_assessed", T::PaymentRiskAssessed),
        EventKind::PaymentInReview => ("payment.in_review", T::PaymentInReview),
        EventKind::PaymentReviewed => ("payment.reviewed", T::PaymentReviewed),
        EventKind::PaymentNeedsOperator => ("payment.needs_operator", T::PaymentNeedsOperator),
        EventKind::PaymentResolved => ("payment.resolved", T::PaymentResolved),
    }
}

/// Every kind of payment event, for the feed's type names.
const EVENT_KINDS: [EventKind; 26] = [
    EventKind::PaymentCreated,
    EventKind::PaymentAuthorizing,
    EventKind::PaymentCapturing,
    EventKind::PaymentSucceeded,
    EventKind::PaymentPartiallyPaid,
    EventKind::PaymentReversing,
    EventKind::PaymentFailed,
    EventKind::PaymentPartiallyRefunded,
    EventKind::PaymentRefunded,
    EventKind::LegAuthorized,
    EventKind::LegDeclined,
    EventKind::LegReallocated,
    EventKind::LegCaptured,
    EventKind::LegVoided,
    EventKind::LegRefunded,
    EventKind::RefundCreated,
    EventKind::RefundSucceeded,
    EventKind::RefundFailed,
    EventKind::CardIneligible,
    EventKind::NoteAdded,
    EventKind::PaymentDelayed,
    EventKind::RiskAssessed,
    EventKind::PaymentInReview,
    EventKind::PaymentReviewed,
    EventKind::PaymentNeedsOperator,
    EventKind::PaymentResolved,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A creation-time range may be open on either side; an inverted or out-of-range bound
    /// names its field; the bounds are part of the page tokens' scope.
    #[test]
    fn payment_lists_filter_by_creation_time() {
        let at = |seconds| prost_types::Timestamp { seconds, nanos: 0 };
        let list = |start, end| {
            list_payments(
                &pb::ListPaymentsRequest {
                    start_time: start,
                    end_time: end,
                    ..Default::default()
                },
                100,
            )
        };
        let (query, scope) = list(Some(at(1_000)), None).expect("open end");
        assert_eq!(
            query
                .filter
                .created_from
                .map(OffsetDateTime::unix_timestamp),
            Some(1_000)
        );
        assert!(query.filter.created_before.is_none());
        let (_, other_scope) = list(Some(at(2_000)), None).expect("open end");
        assert_ne!(
            scope, other_scope,
            "a token of one range is foreign to another"
        );
        let (query, _) = list(None, Some(at(3_000))).expect("open start");
        assert_eq!(
            query
                .filter
                .created_before
                .map(OffsetDateTime::unix_timestamp),
            Some(3_000)
        );
        let field = |result: Result<(PaymentQuery, String), Error>| match result {
            Err(Error::InvalidArgument(v)) => v.into_iter().map(|f| f.field).collect::<Vec<_>>(),
            other => panic!("not invalid: {other:?}"),
        };
        assert_eq!(field(list(Some(at(2_000)), Some(at(1_000)))), ["end_time"]);
        assert_eq!(
            field(list(Some(at(i64::MAX)), None)),
            ["start_time"],
            "beyond year 9999"
        );
    }

    /// A note may not hold a card number however its digits are separated or written.
    #[test]
    fn notes_refuse_card_numbers_in_any_spelling() {
        let full_width: String = "411111111111"
            .chars()
            .map(|c| char::from_u32(c as u32 - '0' as u32 + 0xff10).unwrap())
            .collect();
        for text in [
            "4242424242424242",
            "card 4242 4242 4242 4242 declined",
            "4111.1111.1111.1111",
            "4111/1111/1111/1111",
            "4111\n1111\n1111\n1111",
            "4111\u{a0}1111\u{a0}1111\u{a0}1111",
            full_width.as_str(),
        ] {
            assert!(holds_card_number(text), "{text:?}");
        }
        for text in [
            "PO 7781, invoice 2026-11 paid",
            "call +1 555 123 4567",
            "ref AB12345678901",
            "INV 123456 / PO 654321",
        ] {
            assert!(!holds_card_number(text), "{text:?}");
        }
    }

    #[test]
    fn invoice_violations_name_their_fields() {
        let mut v = Violations::default();
        let wire = pb::Invoice {
            id: "bad id with spaces".into(),
            amount: Some(types::Money {
                currency_code: "USD".into(),
                minor_units: 1000,
            }),
            lines: vec![pb::InvoiceLine {
                amount: Some(types::Money {
                    currency_code: "USD".into(),
                    minor_units: 999,
                }),
                ..Default::default()
            }],
            ..Default::default()
        };
        invoice(&mut v, Some(&wire), 1_000_000);
        let violations = v.into_inner();
        let fields: Vec<_> = violations.iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, ["invoice.id", "invoice.lines"]);
        let mut v = Violations::default();
        let mut zero = wire.clone();
        zero.id = "INV-1".into();
        zero.lines.clear();
        zero.amount.as_mut().unwrap().minor_units = 0;
        invoice(&mut v, Some(&zero), 1_000_000);
        assert_eq!(v.into_inner()[0].field, "invoice.amount.minor_units");
    }
}
