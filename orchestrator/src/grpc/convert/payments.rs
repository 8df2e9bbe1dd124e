//! Payments between wire and domain: the checks of `PaymentService`'s requests, and
//! payments, refunds and their events on the wire.

use prost::Message as _;
use tandem_money::{Currency, Money};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_runtime::fields::Violations;
use time::OffsetDateTime;

use crate::commands::{NewPayment, NewRefund, PaymentQuery, PolicyOverride, Watch};
use crate::config::PaymentSettings;
use crate::domain::allocation::PolicyError;
use crate::domain::group::MemberRules;
use crate::domain::planning::Invoice;
use crate::domain::record::events::{Event, EventKind};
use crate::domain::record::refunds::{Refund, RefundState};
use crate::domain::record::{AttemptOutcome, PaymentRecord, Status};
use crate::domain::saga::{LegState, NextAction, PaymentState};
use crate::error::Error;
use crate::storage::{Cursor, PaymentFilter, StoredPayment};

use super::{
    LINES_MAX, TEXT_CHARS_MAX, add_policy, amount, free_text, is_id_text, money, next_page_token,
    page_after, page_size, policy, request_hash, request_id, resource_id, wire_time,
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
        if !line.currency_code.is_empty() && line.currency_code != total.currency.code() {
            v.add(
                field("currency_code"),
                "must be empty or the invoice's currency: this orchestrator has no FX rates \
                 configured to convert between currencies",
            );
        }
        free_text(v, &field("cost_center"), &line.cost_center, 64, false);
        free_text(
            v,
            &field("description"),
            &line.description,
            TEXT_CHARS_MAX,
            false,
        );
        lines.push(line_amount);
    }
    if let Some(total) = total
        && !lines.is_empty()
        && lines.iter().map(|l| l.minor_units).sum::<i64>() != total.minor_units
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
        Ok(pb::PaymentState::Capturing) => Some("capturing"),
        Ok(pb::PaymentState::Succeeded) => Some("succeeded"),
        Ok(pb::PaymentState::PartiallyPaid) => Some("partially_paid"),
        Ok(pb::PaymentState::Reversing) => Some("reversing"),
        Ok(pb::PaymentState::Failed) => Some("failed"),
        Ok(pb::PaymentState::PartiallyRefunded) => Some("partially_refunded"),
        Ok(pb::PaymentState::Refunded) => Some("refunded"),
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
        Status::Saga(PaymentState::Capturing) => pb::PaymentState::Capturing,
        Status::Saga(PaymentState::Succeeded) => pb::PaymentState::Succeeded,
        Status::Saga(PaymentState::PartiallyPaid) => pb::PaymentState::PartiallyPaid,
        Status::Saga(PaymentState::Reversing) => pb::PaymentState::Reversing,
        Status::Saga(PaymentState::Failed) => pb::PaymentState::Failed,
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
                amount: Some(money(currency, p.amount)),
                charge_refund_id: p.charge_refund_id.clone().unwrap_or_default(),
                state: refund_state(p.state) as i32,
            })
            .collect(),
        create_time: Some(wire_time(refund.create_time)),
        complete_time: refund.complete_time.map(wire_time),
    }
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
                charge_amount: Some(money(currency, covers)),
                fx_rate: String::new(),
                state: state as i32,
                authorized: Some(money(currency, if held { leg.approved } else { 0 })),
                captured: Some(money(
                    currency,
                    if leg.state == LegState::Captured {
                        leg.approved
                    } else {
                        0
                    },
                )),
                refunded: Some(money(currency, detail.refunded)),
                charge_id: detail.charge_id.clone().unwrap_or_default(),
                authorization_code: detail.authorization_code.clone().unwrap_or_default(),
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
                requested: Some(money(currency, a.requested)),
                approved: Some(money(currency, a.approved)),
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
    let filter = PaymentFilter {
        card_group_id: Some(request.card_group_id.clone()).filter(|s| !s.is_empty()),
        state,
        invoice_id: Some(request.invoice_id.clone()).filter(|s| !s.is_empty()),
        billing_account_id: Some(request.billing_account_id.clone()).filter(|s| !s.is_empty()),
    };
    let scope = format!(
        "{}|{}|{}|{}",
        request.card_group_id, request.state, request.invoice_id, request.billing_account_id
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

/// A page of `ListPayments`.
pub fn payments_page(
    payments: &[StoredPayment],
    next: Option<&Cursor>,
    scope: &str,
) -> pb::ListPaymentsResponse {
    pb::ListPaymentsResponse {
        payments: payments
            .iter()
            .map(|p| payment_to_wire(p, p.update_time))
            .collect(),
        next_page_token: next_page_token(next, scope),
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
