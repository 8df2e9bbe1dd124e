//! The orchestrator's metrics: every name, label and description in one place (the families
//! `tandem_orchestrator_*` of the process's registry, [`tandem_runtime::metrics`]).
//!
//! A payment's metrics come from the events of its committed changes ([`Observed`]): built in
//! the transaction that writes them, recorded once it commits, so a change rolled back (or a
//! results batch written again job by job) is never counted, and nothing adds a statement.
//!
//! Labels are bounded sets: states, stages, decline codes (the vault's enum), risk actions,
//! vault methods and outcomes, webhook effects, processors and discrepancy classes, and card
//! group ids (one series per group and state, for at most [`CARD_GROUP_LABELS_MAX`] groups in a
//! process; later ones are `other`). Never a payment id, a token, or card data.

use std::time::Duration;

use time::OffsetDateTime;

use crate::domain::record::PaymentRecord;
use crate::domain::record::events::{Event, EventKind};
use crate::domain::risk::Action;
use crate::domain::saga::PaymentState;

/// Payments that entered each state, by state and card group.
pub const PAYMENTS: &str = "tandem_orchestrator_payments_total";
/// Time from creation to a terminal state, by that state.
pub const TIME_TO_TERMINAL: &str = "tandem_orchestrator_payment_duration_seconds";
/// Card attempts a payment made, by its terminal state.
pub const ATTEMPTS: &str = "tandem_orchestrator_attempts_count_per_payment";
/// Time payments spent in each state before leaving it.
pub const STAGE: &str = "tandem_orchestrator_stage_seconds";
/// Issuers' declines by decline code.
pub const DECLINES: &str = "tandem_orchestrator_declines_total";
/// Risk decisions by action.
pub const RISK_DECISIONS: &str = "tandem_orchestrator_risk_decisions_total";
/// Vault calls' latency by method and outcome.
pub const VAULT_CALLS: &str = "tandem_orchestrator_vault_call_seconds";
/// How long after its lease expired a payment was resumed by recovery.
pub const RECOVERY_LAG: &str = "tandem_orchestrator_recovery_lag_seconds";
/// Payments not at rest (neither terminal nor in review), read at each scrape.
pub const IN_FLIGHT: &str = "tandem_orchestrator_payments_in_flight";
/// Age of the oldest payment not at rest, read at each scrape.
pub const OLDEST_IN_FLIGHT: &str = "tandem_orchestrator_oldest_in_flight_seconds";
/// Time from an event to its delivery to an endpoint (first deliveries, not redeliveries).
pub const WEBHOOK_LAG: &str = "tandem_orchestrator_webhook_delivery_lag_seconds";
/// Webhook attempts by effect: delivered, retry, disabled.
pub const WEBHOOK_ATTEMPTS: &str = "tandem_orchestrator_webhook_attempts_total";
/// Open discrepancies by processor and class, read at each scrape.
pub const DISCREPANCIES: &str = "tandem_orchestrator_reconciliation_open_discrepancies";
/// Transactions run again after losing a serialization or deadlock race, by transaction.
pub const TRANSACTION_RETRIES: &str = "tandem_orchestrator_transaction_retries_total";
/// Captures and voids the vault refused, by operation.
pub const SETTLEMENT_REFUSALS: &str = "tandem_orchestrator_settlement_refusals_total";
/// Payments waiting for an operator (NEEDS_OPERATOR), read at each scrape.
pub const NEEDING_OPERATOR: &str = "tandem_orchestrator_payments_needing_operator";
/// Calls refused by admission (a caller over its limits), by class and reason.
pub const ADMISSION_REFUSALS: &str = "tandem_orchestrator_admission_refusals_total";

/// Every family's name.
pub const ALL: [&str; 17] = [
    PAYMENTS,
    TIME_TO_TERMINAL,
    ATTEMPTS,
    STAGE,
    DECLINES,
    RISK_DECISIONS,
    VAULT_CALLS,
    RECOVERY_LAG,
    IN_FLIGHT,
    OLDEST_IN_FLIGHT,
    WEBHOOK_LAG,
    WEBHOOK_ATTEMPTS,
    DISCREPANCIES,
    TRANSACTION_RETRIES,
    SETTLEMENT_REFUSALS,
    NEEDING_OPERATOR,
    ADMISSION_REFUSALS,
];

/// Describes every family.
pub fn describe() {
    use metrics::Unit;
    metrics::describe_counter!(
        TRANSACTION_RETRIES,
        "Transactions run again after losing a serialization or deadlock race, by transaction."
    );
    metrics::describe_counter!(
        PAYMENTS,
        "Payments that entered each state (PENDING at creation), by state and card group."
    );
    metrics::describe_histogram!(
        TIME_TO_TERMINAL,
        Unit::Seconds,
        "Time from a payment's creation to its terminal state, by that state."
    );
    metrics::describe_histogram!(
        ATTEMPTS,
        Unit::Count,
        "Card attempts (authorizations sent) a payment made, by its terminal state."
    );
    metrics::describe_histogram!(
        STAGE,
        Unit::Seconds,
        "Time payments spent in each state (stage) before leaving it."
    );
    metrics::describe_counter!(DECLINES, "Issuers' declines, by decline code.");
    metrics::describe_counter!(
        RISK_DECISIONS,
        "Risk assessments of new payments, by decision (ALLOW, REVIEW, BLOCK)."
    );
    metrics::describe_histogram!(
        VAULT_CALLS,
        Unit::Seconds,
        "Vault calls' latency, by method and outcome (OK, a gRPC code, or UNKNOWN when no \
         answer came)."
    );
    metrics::describe_histogram!(
        RECOVERY_LAG,
        Unit::Seconds,
        "How long after its lease expired recovery resumed a payment."
    );
    metrics::describe_gauge!(
        IN_FLIGHT,
        "Payments neither terminal nor in review (read at each scrape)."
    );
    metrics::describe_gauge!(
        OLDEST_IN_FLIGHT,
        "Age of the oldest payment neither terminal nor in review, 0 when none (read at each \
         scrape)."
    );
    metrics::describe_histogram!(
        WEBHOOK_LAG,
        Unit::Seconds,
        "Time from an event to its delivery to an endpoint (first deliveries only)."
    );
    metrics::describe_counter!(
        WEBHOOK_ATTEMPTS,
        "Webhook delivery attempts by effect: delivered, retry, disabled (the endpoint)."
    );
    // Exported from the start, so that an alert on its increase sees the first one.
    metrics::counter!(WEBHOOK_ATTEMPTS, "effect" => "disabled").increment(0);
    metrics::describe_counter!(
        ADMISSION_REFUSALS,
        "Calls refused with RESOURCE_EXHAUSTED by admission (a caller over its [limits]), by \
         class (read, write, stream) and reason (RATE_LIMITED, TOO_MANY_IN_FLIGHT)."
    );
    metrics::describe_counter!(
        SETTLEMENT_REFUSALS,
        "Captures and voids the vault refused (the charge left uncaptured or unvoided), by \
         operation (capture, void); each is sent again until payments.settle_refusals_max."
    );
    metrics::describe_gauge!(
        NEEDING_OPERATOR,
        "Payments in NEEDS_OPERATOR: a capture or void the vault refused for good waits for the \
         treasury's ResolvePayment (read at each scrape)."
    );
    metrics::describe_gauge!(
        DISCREPANCIES,
        "Open reconciliation discrepancies by processor and class (missing_in_ledger, \
         missing_at_processor, amount_mismatch, currency_mismatch, duplicate_settlement), read \
         at each scrape."
    );
}

/// The state's name, as the API spells it.
pub fn state_label(state: PaymentState) -> &'static str {
    match state {
        PaymentState::Pending => "PENDING",
        PaymentState::Authorizing => "AUTHORIZING",
        PaymentState::InReview => "IN_REVIEW",
        PaymentState::Capturing => "CAPTURING",
        PaymentState::Succeeded => "SUCCEEDED",
        PaymentState::PartiallyPaid => "PARTIALLY_PAID",
        PaymentState::Reversing => "REVERSING",
        PaymentState::Failed => "FAILED",
        PaymentState::NeedsOperator => "NEEDS_OPERATOR",
    }
}

fn action_label(action: Action) -> &'static str {
    match action {
        Action::Allow => "ALLOW",
        Action::Review => "REVIEW",
        Action::Block => "BLOCK",
    }
}

/// One thing a committed change shows the metrics.
#[derive(Debug, Clone, PartialEq)]
enum Observation {
    /// The payment entered `state`.
    Entered {
        state: &'static str,
        card_group: String,
    },
    /// The payment left `stage` after `seconds` in it.
    Stage { stage: &'static str, seconds: f64 },
    /// The payment reached terminal `state`.
    Terminal {
        state: &'static str,
        seconds: f64,
        attempts: f64,
    },
    /// An issuer declined a card with `code`.
    Declined { code: String },
    /// The new payment's risk decision.
    Assessed { action: &'static str },
    /// The vault refused a capture or void (`operation`).
    SettlementRefused { operation: &'static str },
}

/// What committed changes of payments show the metrics: build it with the change, record it
/// once the change commits.
#[derive(Debug, Default, PartialEq)]
#[must_use = "record it once its transaction commits"]
pub struct Observed(Vec<Observation>);

impl Observed {
    /// What `events`, written by a change of `record` (of group `card_group`), show.
    pub fn of(record: &PaymentRecord, card_group: &str, events: &[Event]) -> Observed {
        let mut seen = Vec::new();
        for event in events {
            let entered = match event.kind {
                EventKind::PaymentCreated => {
                    if let Some(risk) = &record.risk {
                        seen.push(Observation::Assessed {
                            action: action_label(risk.action),
                        });
                    }
                    Some(PaymentState::Pending)
                }
                EventKind::PaymentAuthorizing => Some(PaymentState::Authorizing),
                EventKind::PaymentInReview => Some(PaymentState::InReview),
                EventKind::PaymentCapturing => Some(PaymentState::Capturing),
                EventKind::PaymentSucceeded => Some(PaymentState::Succeeded),
                EventKind::PaymentPartiallyPaid => Some(PaymentState::PartiallyPaid),
                EventKind::PaymentReversing => Some(PaymentState::Reversing),
                EventKind::PaymentFailed => Some(PaymentState::Failed),
                EventKind::PaymentNeedsOperator => Some(PaymentState::NeedsOperator),
                EventKind::LegDeclined => {
                    let code = event
                        .attempt
                        .and_then(|n| record.attempts.get((n as usize).checked_sub(1)?))
                        .and_then(|attempt| attempt.decline_code.clone());
                    if let Some(code) = code {
                        seen.push(Observation::Declined { code });
                    }
                    None
                }
                _ => None,
            };
            let Some(state) = entered else { continue };
            if let Some((stage, time)) = event.left {
                seen.push(Observation::Stage {
                    stage: state_label(stage),
                    seconds: time.as_seconds_f64().max(0.0),
                });
            }
            seen.push(Observation::Entered {
                state: state_label(state),
                card_group: card_group.to_owned(),
            });
            if state.is_terminal() {
                let end = record.complete_time.unwrap_or(record.create_time);
                seen.push(Observation::Terminal {
                    state: state_label(state),
                    seconds: (end - record.create_time).as_seconds_f64().max(0.0),
                    attempts: record.attempts.len() as f64,
                });
            }
        }
        Observed(seen)
    }

    /// A capture or void (`command`) the vault refused, recorded by the change.
    pub fn settlement_refused(command: crate::domain::saga::Command) -> Observed {
        let operation = match command {
            crate::domain::saga::Command::Void(_) => "void",
            _ => "capture",
        };
        Observed(vec![Observation::SettlementRefused { operation }])
    }

    /// Adds `other`'s observations.
    pub fn append(&mut self, mut other: Observed) {
        self.0.append(&mut other.0);
    }

    /// Records the observations: call once their change committed.
    pub fn record(self) {
        for observation in self.0 {
            match observation {
                Observation::Entered { state, card_group } => {
                    let card_group = card_group_label(card_group);
                    metrics::counter!(PAYMENTS, "state" => state, "card_group" => card_group)
                        .increment(1);
                }
                Observation::Stage { stage, seconds } => {
                    metrics::histogram!(STAGE, "stage" => stage).record(seconds);
                }
                Observation::Terminal {
                    state,
                    seconds,
                    attempts,
                } => {
                    metrics::histogram!(TIME_TO_TERMINAL, "state" => state).record(seconds);
                    metrics::histogram!(ATTEMPTS, "state" => state).record(attempts);
                }
                Observation::Declined { code } => {
                    metrics::counter!(DECLINES, "code" => code).increment(1);
                }
                Observation::Assessed { action } => {
                    metrics::counter!(RISK_DECISIONS, "action" => action).increment(1);
                }
                Observation::SettlementRefused { operation } => {
                    metrics::counter!(SETTLEMENT_REFUSALS, "operation" => operation).increment(1);
                }
            }
        }
    }
}

/// Most card groups with series of their own in one process: payments of the groups seen after
/// them are counted under `card_group="other"`, so a growing set of groups cannot grow the
/// series without bound.
pub const CARD_GROUP_LABELS_MAX: usize = 1_000;

/// `group` as the `card_group` label: itself while the process has labelled fewer than
/// [`CARD_GROUP_LABELS_MAX`] groups (or had labelled it already), else `other`.
fn card_group_label(group: String) -> String {
    static LABELLED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<String>>> =
        std::sync::OnceLock::new();
    let mut labelled = LABELLED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if labelled.contains(&group) {
        group
    } else if labelled.len() < CARD_GROUP_LABELS_MAX {
        labelled.insert(group.clone());
        group
    } else {
        "other".to_owned()
    }
}

/// Times one vault call of `rpc` that ended with `outcome`.
pub fn vault_call(rpc: &'static str, outcome: &'static str, took: Duration) {
    metrics::histogram!(VAULT_CALLS, "rpc" => rpc, "outcome" => outcome).record(took.as_secs_f64());
}

/// A payment resumed by recovery `lag` after its lease expired.
pub fn recovered(lag: time::Duration) {
    metrics::histogram!(RECOVERY_LAG).record(lag.as_seconds_f64().max(0.0));
}

/// The payments not at rest (how many, and since when the oldest was created), and those
/// waiting for an operator.
pub fn in_flight(read: crate::storage::InFlight, now: OffsetDateTime) {
    metrics::gauge!(IN_FLIGHT).set(read.count as f64);
    let age = read
        .oldest
        .map_or(0.0, |oldest| (now - oldest).as_seconds_f64().max(0.0));
    metrics::gauge!(OLDEST_IN_FLIGHT).set(age);
    metrics::gauge!(NEEDING_OPERATOR).set(read.needing_operator as f64);
}

/// One recorded webhook attempt with `effect` (`delivered`, `retry`, `disabled`), and, for a
/// first delivery, the time since its event.
pub fn webhook_attempt(effect: &'static str, lag: Option<time::Duration>) {
    metrics::counter!(WEBHOOK_ATTEMPTS, "effect" => effect).increment(1);
    if let Some(lag) = lag {
        metrics::histogram!(WEBHOOK_LAG).record(lag.as_seconds_f64().max(0.0));
    }
}

/// The open discrepancies by processor and class (each a count), as read now; a pair
/// `reported` holds from an earlier scrape and absent now is set to 0, then forgotten.
pub fn open_discrepancies(
    counts: &[(String, String, i64)],
    reported: &mut std::collections::BTreeSet<(String, String)>,
) {
    let now: std::collections::BTreeSet<(String, String)> = counts
        .iter()
        .map(|(processor, class, _)| (processor.clone(), class.clone()))
        .collect();
    for (processor, class) in reported.difference(&now) {
        metrics::gauge!(DISCREPANCIES, "processor" => processor.clone(), "class" => class.clone())
            .set(0.0);
    }
    for (processor, class, count) in counts {
        metrics::gauge!(DISCREPANCIES, "processor" => processor.clone(), "class" => class.clone())
            .set(*count as f64);
    }
    *reported = now;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A payment's events show each state it entered (with its group), the time it spent in
    /// each it left, its declines, and at the end its time to terminal and attempts; recorded,
    /// they are the families' samples.
    #[test]
    fn events_show_states_stages_and_declines() {
        let (record, events) = crate::domain::record::tests::declined_then_failed();
        let observed = Observed::of(&record, "grp_1", &events);
        let entered: Vec<_> = observed
            .0
            .iter()
            .filter_map(|o| match o {
                Observation::Entered { state, card_group } => {
                    assert_eq!(card_group, "grp_1");
                    Some(*state)
                }
                _ => None,
            })
            .collect();
        assert_eq!(entered, ["PENDING", "AUTHORIZING", "FAILED"]);
        assert!(observed.0.contains(&Observation::Declined {
            code: "INSUFFICIENT_FUNDS".into()
        }));
        assert!(observed.0.contains(&Observation::Stage {
            stage: "AUTHORIZING",
            seconds: 1.0
        }));
        assert!(observed.0.contains(&Observation::Terminal {
            state: "FAILED",
            seconds: 2.0,
            attempts: 1.0
        }));

        let recorder = tandem_runtime::metrics::recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || observed.record());
        let text = handle.render();
        for line in [
            "tandem_orchestrator_payments_total{state=\"FAILED\",card_group=\"grp_1\"} 1",
            "tandem_orchestrator_declines_total{code=\"INSUFFICIENT_FUNDS\"} 1",
            "tandem_orchestrator_payment_duration_seconds_count{state=\"FAILED\"} 1",
            "tandem_orchestrator_stage_seconds_bucket{stage=\"PENDING\",le=\"1\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
