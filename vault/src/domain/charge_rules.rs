//! The charge rules: whether a capture, void or refund may proceed on a charge, and what it
//! does if so. One pure, exhaustive function, [`decide`], over the part of a charge the rules
//! read ([`ChargeFacts`]) and the operation asked; the storage side (`charges`) only locks the
//! charge, applies the decision and writes it.

use tandem_money::Money;

use crate::domain::charge::{ChargeState, ChargeView, REFUNDS_PER_CHARGE_MAX};
use crate::error::Error;

/// What the rules read of a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChargeFacts {
    /// Its state.
    pub state: ChargeState,
    /// True while a capture or void of it is in flight.
    pub busy: bool,
    /// What the processor approved (the currency is the charge's).
    pub approved: Money,
    /// What may still be refunded: captured minus refunds succeeded or pending.
    pub refundable_minor: i64,
    /// Refunds so far, whatever their state.
    pub refunds: usize,
}

impl ChargeFacts {
    /// The facts of `charge`.
    pub fn of(charge: &ChargeView) -> ChargeFacts {
        ChargeFacts {
            state: charge.state,
            busy: charge.pending_request_id.is_some(),
            approved: charge.approved,
            refundable_minor: charge.refundable_minor(),
            refunds: charge.refunds.len(),
        }
    }
}

/// A follow-up operation on a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Capture `amount`, or all that was approved.
    Capture {
        /// The amount; `None` for the approved amount.
        amount: Option<Money>,
    },
    /// Release the hold.
    Void,
    /// Refund `amount` of the captured money.
    Refund {
        /// The amount.
        amount: Money,
    },
}

/// What the storage side does with an operation the rules allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Mark the charge as waiting for a capture of `amount_minor`, then send it.
    Capture {
        /// The amount to capture, in the charge's currency.
        amount_minor: i64,
    },
    /// Mark the charge as waiting for a void, then send it.
    Void,
    /// Nothing to release (the charge was voided or declined): record the request only.
    AlreadyReleased,
    /// Write a pending refund of `amount`, then send it.
    Refund {
        /// The amount to refund.
        amount: Money,
    },
}

/// Decides `operation` on a charge with `facts`: the decision, or the refusal the caller gets.
pub fn decide(facts: &ChargeFacts, operation: &Operation) -> Result<Decision, Error> {
    let currency = facts.approved.currency;
    let amount = match operation {
        Operation::Capture { amount } => *amount,
        Operation::Void => None,
        Operation::Refund { amount } => Some(*amount),
    };
    if amount.is_some_and(|amount| amount.currency != currency) {
        return Err(Error::CurrencyMismatch);
    }
    match operation {
        Operation::Capture { amount } => {
            if facts.state != ChargeState::Authorized {
                return Err(Error::ChargeNotAuthorized);
            }
            if facts.busy {
                return Err(Error::ChargeBusy);
            }
            let amount = amount.unwrap_or(facts.approved);
            if amount.minor_units > facts.approved.minor_units {
                return Err(Error::AmountExceedsApproved);
            }
            Ok(Decision::Capture {
                amount_minor: amount.minor_units,
            })
        }
        Operation::Void => match facts.state {
            ChargeState::Voided | ChargeState::Declined => Ok(Decision::AlreadyReleased),
            ChargeState::Captured | ChargeState::PartiallyRefunded | ChargeState::Refunded => {
                Err(Error::ChargeAlreadyCaptured)
            }
            ChargeState::Pending => Err(Error::OutcomeUnknown),
            ChargeState::Authorized if facts.busy => Err(Error::ChargeBusy),
            ChargeState::Authorized => Ok(Decision::Void),
        },
        Operation::Refund { amount } => {
            if !matches!(
                facts.state,
                ChargeState::Captured | ChargeState::PartiallyRefunded
            ) {
                return Err(Error::ChargeNotCaptured);
            }
            if facts.refunds >= REFUNDS_PER_CHARGE_MAX {
                return Err(Error::RefundLimitReached);
            }
            if amount.minor_units > facts.refundable_minor {
                return Err(Error::AmountExceedsRefundable);
            }
            Ok(Decision::Refund { amount: *amount })
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use tandem_money::Currency;

    use super::*;

    fn currency() -> impl Strategy<Value = Currency> {
        prop_oneof![Just("EUR"), Just("USD"), Just("JPY")]
            .prop_map(|code| Currency::parse(code).expect("a known currency"))
    }

    fn facts() -> impl Strategy<Value = ChargeFacts> {
        (
            0..ChargeState::ALL.len(),
            any::<bool>(),
            currency(),
            0i64..10_000,
            0i64..10_000,
            0usize..REFUNDS_PER_CHARGE_MAX + 3,
        )
            .prop_map(
                |(state, busy, currency, approved, refundable_minor, refunds)| ChargeFacts {
                    state: ChargeState::ALL[state],
                    busy,
                    approved: Money::new(currency, approved),
                    refundable_minor,
                    refunds,
                },
            )
    }

    fn money() -> impl Strategy<Value = Money> {
        (currency(), 1i64..12_000).prop_map(|(c, m)| Money::new(c, m))
    }

    fn operation() -> impl Strategy<Value = Operation> {
        prop_oneof![
            proptest::option::of(money()).prop_map(|amount| Operation::Capture { amount }),
            Just(Operation::Void),
            money().prop_map(|amount| Operation::Refund { amount }),
        ]
    }

    proptest! {
        /// Every decision is allowed by the charge (positive space), and every refusal names
        /// a rule the charge or the operation breaks (negative space).
        #[test]
        fn decisions_follow_the_rules(facts in facts(), operation in operation()) {
            let currency = facts.approved.currency;
            let idle_authorized = facts.state == ChargeState::Authorized && !facts.busy;
            let captured = matches!(
                facts.state,
                ChargeState::Captured | ChargeState::PartiallyRefunded
            );
            match (operation, decide(&facts, &operation)) {
                (Operation::Capture { amount }, Ok(Decision::Capture { amount_minor })) => {
                    prop_assert!(idle_authorized);
                    prop_assert!(amount.is_none_or(|a| a.currency == currency));
                    prop_assert_eq!(
                        amount_minor,
                        amount.map_or(facts.approved.minor_units, |a| a.minor_units)
                    );
                    prop_assert!(amount_minor <= facts.approved.minor_units);
                }
                (Operation::Void, Ok(Decision::Void)) => prop_assert!(idle_authorized),
                (Operation::Void, Ok(Decision::AlreadyReleased)) => prop_assert!(matches!(
                    facts.state,
                    ChargeState::Voided | ChargeState::Declined
                )),
                (Operation::Refund { amount }, Ok(Decision::Refund { amount: decided })) => {
                    prop_assert_eq!(decided, amount);
                    prop_assert!(captured);
                    prop_assert_eq!(amount.currency, currency);
                    prop_assert!(facts.refunds < REFUNDS_PER_CHARGE_MAX);
                    prop_assert!(amount.minor_units <= facts.refundable_minor);
                }
                (operation, Ok(decision)) => {
                    prop_assert!(false, "{operation:?} decided {decision:?}");
                }
                (operation, Err(error)) => {
                    let broken = match (&error, operation) {
                        (Error::CurrencyMismatch, Operation::Capture { amount: Some(a) })
                        | (Error::CurrencyMismatch, Operation::Refund { amount: a }) => {
                            a.currency != currency
                        }
                        (Error::ChargeNotAuthorized, Operation::Capture { .. }) => {
                            facts.state != ChargeState::Authorized
                        }
                        (Error::ChargeBusy, Operation::Capture { .. } | Operation::Void) => {
                            facts.state == ChargeState::Authorized && facts.busy
                        }
                        (Error::AmountExceedsApproved, Operation::Capture { amount: Some(a) }) => {
                            a.minor_units > facts.approved.minor_units
                        }
                        (Error::ChargeAlreadyCaptured, Operation::Void) => matches!(
                            facts.state,
                            ChargeState::Captured
                                | ChargeState::PartiallyRefunded
                                | ChargeState::Refunded
                        ),
                        (Error::OutcomeUnknown, Operation::Void) => {
                            facts.state == ChargeState::Pending
                        }
                        (Error::ChargeNotCaptured, Operation::Refund { .. }) => !captured,
                        (Error::RefundLimitReached, Operation::Refund { .. }) => {
                            facts.refunds >= REFUNDS_PER_CHARGE_MAX
                        }
                        (Error::AmountExceedsRefundable, Operation::Refund { amount }) => {
                            amount.minor_units > facts.refundable_minor
                        }
                        _ => false,
                    };
                    prop_assert!(broken, "{operation:?} on {facts:?} refused with {error:?}");
                }
            }
        }

        /// An authorized, idle charge can always be captured in full and voided; a captured
        /// charge under its refund limit can always refund what remains.
        #[test]
        fn allowed_operations_are_decided(facts in facts()) {
            let full = Operation::Capture { amount: None };
            if facts.state == ChargeState::Authorized && !facts.busy {
                prop_assert_eq!(
                    decide(&facts, &full).ok(),
                    Some(Decision::Capture { amount_minor: facts.approved.minor_units })
                );
                prop_assert_eq!(decide(&facts, &Operation::Void).ok(), Some(Decision::Void));
            }
            let rest = Money::new(facts.approved.currency, facts.refundable_minor);
            if matches!(facts.state, ChargeState::Captured | ChargeState::PartiallyRefunded)
                && facts.refunds < REFUNDS_PER_CHARGE_MAX
            {
                prop_assert_eq!(
                    decide(&facts, &Operation::Refund { amount: rest }).ok(),
                    Some(Decision::Refund { amount: rest })
                );
            }
        }
    }
}
