//! The payment saga's decisions, free of IO: one pure transition function for the payment's
//! state, and one pure function from a payment to the vault operations to run next.
//!
//! The workflow (the IO side, built next) records an intent, runs the commands [`decide`]
//! returns, records each result as an [`Outcome`] with [`apply`], and asks again, until the
//! payment is terminal. Because the decisions are pure, a seeded simulator can drive them
//! through any schedule of declines, partial approvals and unknown outcomes (the property tests
//! below do).
//!
//! The rules (DESIGN section 5): authorize every leg first and capture only when the amount is
//! covered (a failure then needs voids, not refunds); a decline whose `next_action` is
//! `TRY_NEXT_CARD` moves its amount to the next eligible members when fallback is enabled,
//! `RETRY_SAME_CARD` retries the same card, `DO_NOT_RETRY` stops; a partial approval's
//! uncovered rest is moved on like a decline; a card is never sent a second authorization while
//! one is in flight, nor at all after a `TRY_NEXT_CARD` or `DO_NOT_RETRY` decline (card
//! networks penalise re-sending those); attempts over every card are bounded; under
//! `ALL_OR_NOTHING` a shortfall voids every authorized leg and ends `FAILED`, under
//! `ALLOW_PARTIAL` the covered legs are captured and the payment ends `PARTIALLY_PAID`.

use tandem_money::{Currency, Money};

use super::allocation::{Exchange, Member, Reach, reallocate};
use super::fx::Quote;

/// The lifecycle of a payment (`PaymentState` in the proto, refunds aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum PaymentState {
    /// Recorded and allocated; nothing sent yet.
    Pending,
    /// Legs are being authorized, reallocated or retried.
    Authorizing,
    /// Covered, every hold in place, waiting for a reviewer because the risk assessment asked
    /// for review.
    InReview,
    /// Covered (or as covered as it will be): legs are being captured.
    Capturing,
    /// Every leg captured, the whole amount paid. Final (but for refunds).
    Succeeded,
    /// Under `ALLOW_PARTIAL`: the covered legs captured, the rest unpaid. Final (but for
    /// refunds).
    PartiallyPaid,
    /// Under `ALL_OR_NOTHING`, not covered: every authorized leg is being voided.
    Reversing,
    /// No financial effect: every hold voided, nothing captured. Final.
    Failed,
    /// The vault refused a capture or void for good (the configured number of times): nothing
    /// more is sent until an operator resolves the payment ([`resume`]), back to capturing or
    /// reversing.
    NeedsOperator,
}

/// What moves a payment from one state to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateEvent {
    /// The first leg is sent.
    Start,
    /// Every leg is settled and the amount is covered (or covered enough for
    /// `ALLOW_PARTIAL`).
    Covered,
    /// Every leg is settled, the amount is not covered, and the policy does not keep a part.
    ShortfallWithHolds,
    /// As [`StateEvent::ShortfallWithHolds`], with no hold to release.
    ShortfallWithoutHolds,
    /// Every covered leg is captured; `complete` tells whether the whole amount was.
    AllCaptured {
        /// The whole amount was captured.
        complete: bool,
    },
    /// Every hold is voided.
    AllVoided,
    /// The risk assessment blocked the payment before any leg was sent.
    Blocked,
    /// Every leg is settled and covered, and the risk assessment asked for review.
    HeldForReview,
    /// A reviewer approved the payment.
    Approved,
    /// A reviewer rejected the payment, or nobody decided in time.
    Rejected,
    /// The vault refused a capture or void for good.
    SettlementRefused,
    /// An operator resolved a payment whose capture the vault refused.
    ResumedCapture,
    /// An operator resolved a payment whose void the vault refused.
    ResumedReversal,
}

/// A transition the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("payment cannot go from {from:?} on {event:?}")]
pub struct InvalidTransition {
    /// The state.
    pub from: PaymentState,
    /// The event.
    pub event: StateEvent,
}

/// The payment state machine: the only way a payment's state changes.
pub fn transition(
    from: PaymentState,
    event: StateEvent,
) -> Result<PaymentState, InvalidTransition> {
    use PaymentState as S;
    use StateEvent as E;
    let to = match (from, event) {
        (S::Pending, E::Start) => S::Authorizing,
        (S::Pending, E::Blocked) => S::Failed,
        (S::Pending | S::Authorizing, E::Covered) => S::Capturing,
        (S::Pending | S::Authorizing, E::HeldForReview) => S::InReview,
        (S::InReview, E::Approved) => S::Capturing,
        (S::InReview, E::Rejected) => S::Reversing,
        (S::Pending | S::Authorizing, E::ShortfallWithHolds) => S::Reversing,
        (S::Pending | S::Authorizing, E::ShortfallWithoutHolds) => S::Failed,
        (S::Capturing, E::AllCaptured { complete: true }) => S::Succeeded,
        (S::Capturing, E::AllCaptured { complete: false }) => S::PartiallyPaid,
        (S::Reversing, E::AllVoided) => S::Failed,
        (S::Capturing | S::Reversing, E::SettlementRefused) => S::NeedsOperator,
        (S::NeedsOperator, E::ResumedCapture) => S::Capturing,
        (S::NeedsOperator, E::ResumedReversal) => S::Reversing,
        (
            S::Pending
            | S::Authorizing
            | S::InReview
            | S::Capturing
            | S::Succeeded
            | S::PartiallyPaid
            | S::Reversing
            | S::Failed
            | S::NeedsOperator,
            _,
        ) => return Err(InvalidTransition { from, event }),
    };
    Ok(to)
}

impl PaymentState {
    /// True once nothing more happens without a refund.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            PaymentState::Succeeded | PaymentState::PartiallyPaid | PaymentState::Failed
        )
    }

    /// True when nothing more happens until someone acts: terminal, or waiting for a reviewer
    /// or an operator. A caller's wait for the payment ends here.
    pub fn is_at_rest(self) -> bool {
        self.is_terminal() || matches!(self, PaymentState::InReview | PaymentState::NeedsOperator)
    }
}

/// What the payment does when the amount cannot be covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Completion {
    /// Fully paid or no financial effect.
    AllOrNothing,
    /// Keep what was covered.
    AllowPartial,
}

/// How legs are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Dispatch {
    /// One authorization at a time, in leg order (SEQUENTIAL, WEIGHTED, FIXED, BY_CURRENCY).
    OneAtATime,
    /// Every pending leg at once (PARALLEL).
    AllAtOnce,
}

/// A decline's advice (`NextAction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NextAction {
    /// Transient: retry the same card.
    RetrySameCard,
    /// Move the amount to another card.
    TryNextCard,
    /// Stop: no card will do.
    DoNotRetry,
}

/// The lifecycle of a leg.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum LegState {
    /// Not sent yet.
    Pending,
    /// An authorization is in flight (or its outcome is being resolved).
    Authorizing,
    /// A hold of `approved` is in place.
    Authorized,
    /// Declined; covers nothing.
    Declined,
    /// A capture is in flight.
    Capturing,
    /// Captured.
    Captured,
    /// A void is in flight.
    Voiding,
    /// Voided.
    Voided,
}

/// Where the amount a card did not cover may go (the fallback's reach).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Reallocation {
    /// To any member that can pay the invoice.
    #[default]
    Any,
    /// To the members of the declined card's currency (`BY_CURRENCY`), then, when the policy
    /// allows conversion, to any member.
    SameCurrency {
        /// Conversion allowed.
        then_any: bool,
    },
}

/// One member's part of a payment.
///
/// `amount` and `approved` are the part of the invoice the leg covers, in the invoice's
/// currency. A leg of a member in another currency is charged in the member's currency at the
/// payment's quote ([`Payment::ask`], [`Payment::hold`], [`Payment::capture`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Leg {
    /// The member's token.
    pub token: String,
    /// The amount asked.
    pub amount: i64,
    /// The amount approved (0 until authorized).
    pub approved: i64,
    /// For a converted leg, the hold the card's issuer approved, in the member's currency.
    #[serde(default)]
    pub held: i64,
    /// State.
    pub state: LegState,
    /// Authorization attempts made on this leg (retries of the same card count).
    pub attempts: u32,
}

/// A payment as the saga sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Payment {
    /// State.
    pub state: PaymentState,
    /// The invoice amount's currency.
    pub currency: Currency,
    /// The invoice amount, in minor units.
    pub amount: i64,
    /// The legs, in the order they were allocated.
    pub legs: Vec<Leg>,
    /// The group's members, with their room for this payment.
    pub members: Vec<Member>,
    /// Move declined amounts to other members.
    pub fallback: bool,
    /// Bound on authorization attempts over every leg.
    pub attempts_max: u32,
    /// What happens on a shortfall.
    pub completion: Completion,
    /// How legs are sent.
    pub dispatch: Dispatch,
    /// A `DO_NOT_RETRY` decline stopped all further authorization.
    pub stopped: bool,
    /// Where declined amounts may go.
    #[serde(default)]
    pub reallocation: Reallocation,
    /// The rates fixed when the payment was planned, from `currency` to members' currencies.
    #[serde(default)]
    pub quotes: Vec<Quote>,
    /// The risk assessment asked for review: once covered, the payment waits in
    /// [`PaymentState::InReview`] instead of capturing.
    #[serde(default)]
    pub review: bool,
}

/// A reviewer's decision, or the lack of one in time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Verdict {
    /// Capture.
    Approve,
    /// Void every hold.
    Reject,
    /// Nobody decided within the review timeout: void every hold.
    Expired,
}

/// A vault operation to run for leg `leg` (its index).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Authorize the leg's amount.
    Authorize(usize),
    /// Capture the leg's approved amount.
    Capture(usize),
    /// Void the leg's hold.
    Void(usize),
}

/// The result of a command, recorded with [`apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The leg is authorized for `approved` (at most its amount: less is a partial approval).
    Authorized {
        /// The leg.
        leg: usize,
        /// Approved minor units, positive.
        approved: i64,
    },
    /// The leg was declined.
    Declined {
        /// The leg.
        leg: usize,
        /// The decline's advice.
        next_action: NextAction,
    },
    /// The leg's capture is confirmed.
    Captured {
        /// The leg.
        leg: usize,
    },
    /// The leg's void is confirmed.
    Voided {
        /// The leg.
        leg: usize,
    },
}

/// Why an outcome cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SagaError {
    /// The outcome names no leg of the payment.
    #[error("no leg {0}")]
    NoSuchLeg(usize),
    /// The outcome does not fit the leg's state (a duplicate or a bug).
    #[error("leg {leg} is {state:?}; outcome {outcome:?} does not apply")]
    UnexpectedOutcome {
        /// The leg.
        leg: usize,
        /// Its state.
        state: LegState,
        /// The outcome.
        outcome: Outcome,
    },
    /// The payment state machine refused the move.
    #[error(transparent)]
    Transition(#[from] InvalidTransition),
}

impl Payment {
    /// The payment's currencies and quotes, as allocation takes them.
    pub fn exchange(&self) -> Exchange<'_> {
        Exchange {
            invoice: self.currency,
            quotes: &self.quotes,
            allow_conversion: matches!(
                self.reallocation,
                Reallocation::SameCurrency { then_any: true }
            ),
        }
    }

    /// The currency `token`'s card is charged in (the invoice's for a token that is not a
    /// member, which never happens for a leg).
    pub fn member_currency(&self, token: &str) -> Currency {
        self.members
            .iter()
            .find(|m| m.token == token)
            .map_or(self.currency, |m| m.currency)
    }

    /// The quote leg `leg` is converted at; `None` when its card is in the invoice's currency.
    pub fn quote(&self, leg: usize) -> Option<&Quote> {
        let currency = self.member_currency(&self.legs[leg].token);
        (currency != self.currency)
            .then(|| self.exchange().quote(currency))
            .flatten()
    }

    /// `amount` (at most the invoice) of the invoice's currency charged to `token`'s card (one
    /// allocation gives parts to): converted and rounded up when the card is in another
    /// currency.
    fn charge_of(&self, token: &str, amount: i64) -> i64 {
        let currency = self.member_currency(token);
        if currency == self.currency {
            return amount;
        }
        assert!(
            amount <= self.amount,
            "a part of the invoice is at most the invoice"
        );
        // Allocation gives parts only to members in the invoice's currency or with a quote,
        // and planning refuses an invoice that does not convert at every quote; a part is at
        // most the invoice, so it converts too.
        let quote = self
            .exchange()
            .quote(currency)
            .expect("a card in another currency takes a part only with a quote");
        quote
            .convert(amount)
            .expect("the invoice converts at every quote of its payment, so a part of it does")
            .charge
    }

    /// What leg `leg`'s authorization asks of the card, in its currency.
    pub fn ask(&self, leg: usize) -> i64 {
        self.charge_of(&self.legs[leg].token, self.legs[leg].amount)
    }

    /// The hold leg `leg` has on its card, in the card's currency.
    pub fn hold(&self, leg: usize) -> i64 {
        let l = &self.legs[leg];
        if self.quote(leg).is_some() {
            l.held
        } else {
            l.approved
        }
    }

    /// What leg `leg`'s capture takes from its card, in the card's currency: the approved part
    /// converted (never more than the hold; the rest of the hold is released).
    pub fn capture(&self, leg: usize) -> i64 {
        let l = &self.legs[leg];
        if self.quote(leg).is_some() {
            self.charge_of(&l.token, l.approved).min(l.held)
        } else {
            l.approved
        }
    }

    fn covered(&self) -> i64 {
        self.legs
            .iter()
            .filter(|l| {
                matches!(
                    l.state,
                    LegState::Authorized | LegState::Capturing | LegState::Captured
                )
            })
            .map(|l| l.approved)
            .sum()
    }

    fn attempts(&self) -> u32 {
        self.legs.iter().map(|l| l.attempts).sum()
    }

    fn holds(&self) -> bool {
        self.legs
            .iter()
            .any(|l| matches!(l.state, LegState::Authorized | LegState::Voiding))
    }
}

/// Records `outcome` in `payment`: leg states, retries and reallocation after declines or
/// partial approvals, and any state transition that follows. Rejects an outcome that does not
/// fit (a command's result is applied once).
pub fn apply(payment: &mut Payment, outcome: Outcome) -> Result<(), SagaError> {
    let index = match outcome {
        Outcome::Authorized { leg, .. }
        | Outcome::Declined { leg, .. }
        | Outcome::Captured { leg }
        | Outcome::Voided { leg } => leg,
    };
    let leg = payment
        .legs
        .get_mut(index)
        .ok_or(SagaError::NoSuchLeg(index))?;
    let unexpected = SagaError::UnexpectedOutcome {
        leg: index,
        state: leg.state,
        outcome,
    };
    match outcome {
        Outcome::Authorized { approved, .. } => {
            let asked = leg.amount;
            if leg.state != LegState::Authorizing {
                return Err(unexpected);
            }
            let covers = match payment.quote(index) {
                // What a converted hold covers of the invoice; a hold worth less than its
                // minor unit covers nothing and is voided (see `decide`).
                Some(quote) if (1..=payment.ask(index)).contains(&approved) => {
                    quote.covered_by(approved).unwrap_or(0).clamp(0, asked)
                }
                Some(_) => return Err(unexpected),
                None if (1..=asked).contains(&approved) => approved,
                None => return Err(unexpected),
            };
            let converted = payment.quote(index).is_some();
            let leg = &mut payment.legs[index];
            leg.state = LegState::Authorized;
            leg.approved = covers;
            if converted {
                leg.held = approved;
            }
            let short = asked - covers;
            if short > 0 {
                move_on(payment, index, short);
            }
        }
        Outcome::Declined { next_action, .. } => {
            if leg.state != LegState::Authorizing {
                return Err(unexpected);
            }
            match next_action {
                NextAction::RetrySameCard if payment.attempts() < payment.attempts_max => {
                    payment.legs[index].state = LegState::Pending;
                }
                NextAction::DoNotRetry => {
                    payment.legs[index].state = LegState::Declined;
                    payment.stopped = true;
                    // No card is tried again: legs waiting to be sent never are.
                    for leg in &mut payment.legs {
                        if leg.state == LegState::Pending {
                            leg.state = LegState::Declined;
                        }
                    }
                }
                NextAction::RetrySameCard | NextAction::TryNextCard => {
                    payment.legs[index].state = LegState::Declined;
                    let mut amount = payment.legs[index].amount;
                    if next_action == NextAction::TryNextCard {
                        // The card declined for good: its other legs not sent yet (amounts
                        // moved onto it while this one was in flight) are never sent, and
                        // move on with this one's.
                        amount += withdraw_unsent(payment, index);
                    }
                    move_on(payment, index, amount);
                }
            }
        }
        Outcome::Captured { .. } => {
            if leg.state != LegState::Capturing {
                return Err(unexpected);
            }
            leg.state = LegState::Captured;
        }
        Outcome::Voided { .. } => {
            if leg.state != LegState::Voiding {
                return Err(unexpected);
            }
            leg.state = LegState::Voided;
        }
    }
    settle(payment)?;
    Ok(())
}

/// Declines every leg of leg `from`'s card that was not sent yet and returns their amount, so
/// that a card is never sent a second authorization after a decline that said not to retry it.
fn withdraw_unsent(payment: &mut Payment, from: usize) -> i64 {
    let token = payment.legs[from].token.clone();
    let mut withdrawn = 0;
    for leg in &mut payment.legs {
        if leg.token == token && leg.state == LegState::Pending {
            leg.state = LegState::Declined;
            withdrawn += leg.amount;
        }
    }
    withdrawn
}

/// Moves `amount` that leg `from` did not cover to new legs on other members, when fallback is
/// enabled and attempts remain; otherwise it stays uncovered. Members that declined are never
/// used again in the payment; members carrying no leg yet come first (in priority order: the
/// amount replaces the card), then members already carrying legs, within the room those legs
/// leave.
fn move_on(payment: &mut Payment, from: usize, amount: i64) {
    if !payment.fallback || payment.stopped || payment.attempts() >= payment.attempts_max {
        return;
    }
    let declined: Vec<String> = payment
        .legs
        .iter()
        .enumerate()
        .filter(|(i, l)| *i == from || l.state == LegState::Declined)
        .map(|(_, l)| l.token.clone())
        .collect();
    let carrying: Vec<String> = payment.legs.iter().map(|l| l.token.clone()).collect();
    let mut charged: Vec<(String, i64)> = payment
        .legs
        .iter()
        .enumerate()
        .filter(|(_, l)| l.state != LegState::Declined)
        .map(|(i, l)| {
            let charge = if l.state == LegState::Pending || l.state == LegState::Authorizing {
                payment.ask(i)
            } else {
                payment.hold(i)
            };
            (l.token.clone(), charge)
        })
        .collect();
    let first_excluded: Vec<&str> = declined
        .iter()
        .chain(&carrying)
        .map(String::as_str)
        .collect();
    let declined: Vec<&str> = declined.iter().map(String::as_str).collect();
    let reaches = match payment.reallocation {
        Reallocation::Any => vec![Reach::Any],
        Reallocation::SameCurrency { then_any } => {
            let currency = payment.member_currency(&payment.legs[from].token);
            let mut reaches = vec![Reach::Currency(currency)];
            if then_any {
                reaches.push(Reach::Any);
            }
            reaches
        }
    };
    // Members carrying no leg first (the amount replaces the card), then members already
    // carrying legs; each pass within what earlier passes left of their room.
    let mut rest = amount;
    let mut parts = Vec::new();
    for reach in reaches {
        for excluded in [&first_excluded, &declined] {
            if rest == 0 {
                break;
            }
            let allocation = reallocate(
                Money::new(payment.currency, rest),
                &payment.members,
                excluded,
                &charged,
                reach,
                &payment.exchange(),
            );
            rest = allocation.uncovered.iter().map(|m| m.minor_units).sum();
            for part in allocation.parts {
                let charge = payment.charge_of(&part.token, part.amount.minor_units);
                charged.push((part.token.clone(), charge));
                parts.push(part);
            }
        }
    }
    for part in parts {
        payment.legs.push(Leg {
            token: part.token,
            amount: part.amount.minor_units,
            approved: 0,
            held: 0,
            state: LegState::Pending,
            attempts: 0,
        });
    }
}

/// Advances the payment's state once its legs allow it.
fn settle(payment: &mut Payment) -> Result<(), InvalidTransition> {
    loop {
        let event = match payment.state {
            PaymentState::Pending | PaymentState::Authorizing => {
                let can_authorize = !payment.stopped && payment.attempts() < payment.attempts_max;
                let pending = payment.legs.iter().any(|l| l.state == LegState::Pending);
                let in_flight = payment
                    .legs
                    .iter()
                    .any(|l| l.state == LegState::Authorizing);
                if in_flight || (pending && can_authorize) {
                    return Ok(());
                }
                // Pending legs that can no longer be sent cover nothing.
                for leg in &mut payment.legs {
                    if leg.state == LegState::Pending {
                        leg.state = LegState::Declined;
                    }
                }
                let covered = payment.covered();
                let keep = payment.completion == Completion::AllowPartial && covered > 0;
                if (covered == payment.amount || keep) && payment.review {
                    StateEvent::HeldForReview
                } else if covered == payment.amount || keep {
                    StateEvent::Covered
                } else if payment.holds() {
                    StateEvent::ShortfallWithHolds
                } else {
                    StateEvent::ShortfallWithoutHolds
                }
            }
            PaymentState::Capturing => {
                // A hold that covers nothing is voided meanwhile; the payment ends once it is.
                if payment.legs.iter().any(|l| {
                    matches!(
                        l.state,
                        LegState::Authorized | LegState::Capturing | LegState::Voiding
                    )
                }) {
                    return Ok(());
                }
                StateEvent::AllCaptured {
                    complete: payment.covered() == payment.amount,
                }
            }
            PaymentState::Reversing => {
                if payment.holds() {
                    return Ok(());
                }
                StateEvent::AllVoided
            }
            PaymentState::InReview
            | PaymentState::Succeeded
            | PaymentState::PartiallyPaid
            | PaymentState::Failed
            | PaymentState::NeedsOperator => {
                return Ok(());
            }
        };
        payment.state = transition(payment.state, event)?;
    }
}

/// Stops a capturing or reversing payment whose capture or void the vault refused for good:
/// its legs stay as they are (the refused ones capturing or voiding) and nothing is sent until
/// an operator resolves it.
pub fn hold_for_operator(payment: &mut Payment) -> Result<(), InvalidTransition> {
    payment.state = transition(payment.state, StateEvent::SettlementRefused)?;
    Ok(())
}

/// Moves a payment an operator resolved back to where it stopped: capturing when any of its
/// legs captures or was captured, reversing otherwise (a reversal never captures).
pub fn resume(payment: &mut Payment) -> Result<(), InvalidTransition> {
    let capturing = payment
        .legs
        .iter()
        .any(|l| matches!(l.state, LegState::Capturing | LegState::Captured));
    let event = if capturing {
        StateEvent::ResumedCapture
    } else {
        StateEvent::ResumedReversal
    };
    payment.state = transition(payment.state, event)?;
    settle(payment)
}

/// Ends a payment the risk assessment blocked, before any leg is sent: every leg declined
/// unsent, the payment FAILED with no financial effect.
pub fn block(payment: &mut Payment) -> Result<(), InvalidTransition> {
    payment.state = transition(payment.state, StateEvent::Blocked)?;
    for leg in &mut payment.legs {
        leg.state = LegState::Declined;
    }
    Ok(())
}

/// Records a review's verdict on a payment in review: approval moves it on to capture, a
/// rejection or an expiry to voiding every hold.
pub fn review(payment: &mut Payment, verdict: Verdict) -> Result<(), InvalidTransition> {
    let event = match verdict {
        Verdict::Approve => StateEvent::Approved,
        Verdict::Reject | Verdict::Expired => StateEvent::Rejected,
    };
    payment.state = transition(payment.state, event)?;
    settle(payment)
}

/// The vault operations to run now, marking their legs in flight. Empty when the payment waits
/// for outcomes or is terminal.
pub fn decide(payment: &mut Payment) -> Result<Vec<Command>, InvalidTransition> {
    if payment.state == PaymentState::Pending {
        payment.state = transition(payment.state, StateEvent::Start)?;
    }
    settle(payment)?;
    let mut commands = Vec::new();
    match payment.state {
        PaymentState::Authorizing => {
            if payment.dispatch == Dispatch::OneAtATime
                && payment
                    .legs
                    .iter()
                    .any(|l| l.state == LegState::Authorizing)
            {
                return Ok(commands);
            }
            let mut budget = payment.attempts_max.saturating_sub(payment.attempts());
            // A card with an authorization in flight gets no second one until the first is
            // answered: a decline may yet say the card is not to be tried again.
            let mut busy: Vec<String> = payment
                .legs
                .iter()
                .filter(|l| l.state == LegState::Authorizing)
                .map(|l| l.token.clone())
                .collect();
            for (index, leg) in payment.legs.iter_mut().enumerate() {
                if leg.state != LegState::Pending
                    || budget == 0
                    || payment.stopped
                    || busy.contains(&leg.token)
                {
                    continue;
                }
                busy.push(leg.token.clone());
                leg.state = LegState::Authorizing;
                leg.attempts += 1;
                budget -= 1;
                commands.push(Command::Authorize(index));
                if payment.dispatch == Dispatch::OneAtATime {
                    break;
                }
            }
        }
        PaymentState::Capturing => {
            for (index, leg) in payment.legs.iter_mut().enumerate() {
                if leg.state != LegState::Authorized {
                    continue;
                }
                // A converted hold worth less than the invoice's minor unit covers nothing:
                // released, never captured.
                if leg.approved == 0 {
                    leg.state = LegState::Voiding;
                    commands.push(Command::Void(index));
                } else {
                    leg.state = LegState::Capturing;
                    commands.push(Command::Capture(index));
                }
            }
        }
        PaymentState::Reversing => {
            for (index, leg) in payment.legs.iter_mut().enumerate() {
                if leg.state == LegState::Authorized {
                    leg.state = LegState::Voiding;
                    commands.push(Command::Void(index));
                }
            }
        }
        PaymentState::Pending
        | PaymentState::InReview
        | PaymentState::Succeeded
        | PaymentState::PartiallyPaid
        | PaymentState::Failed
        | PaymentState::NeedsOperator => {}
    }
    Ok(commands)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest};

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn member(token: &str, priority: u16, room: Option<i64>) -> Member {
        Member {
            token: token.to_owned(),
            priority,
            currency: usd(),
            active: true,
            room,
        }
    }

    fn payment(
        legs: &[(&str, i64)],
        members: Vec<Member>,
        completion: Completion,
        dispatch: Dispatch,
    ) -> Payment {
        Payment {
            state: PaymentState::Pending,
            currency: usd(),
            amount: legs.iter().map(|(_, a)| a).sum(),
            legs: legs
                .iter()
                .map(|(token, amount)| Leg {
                    token: (*token).to_owned(),
                    amount: *amount,
                    approved: 0,
                    held: 0,
                    state: LegState::Pending,
                    attempts: 0,
                })
                .collect(),
            members,
            fallback: true,
            attempts_max: 10,
            completion,
            dispatch,
            stopped: false,
            reallocation: Reallocation::Any,
            quotes: Vec::new(),
            review: false,
        }
    }

    /// Every transition the machine allows, and a sample of the ones it refuses.
    #[test]
    fn the_state_machine() {
        use PaymentState as S;
        use StateEvent as E;
        let allowed = [
            (S::Pending, E::Start, S::Authorizing),
            (S::Authorizing, E::Covered, S::Capturing),
            (S::Authorizing, E::ShortfallWithHolds, S::Reversing),
            (S::Authorizing, E::ShortfallWithoutHolds, S::Failed),
            (
                S::Capturing,
                E::AllCaptured { complete: true },
                S::Succeeded,
            ),
            (
                S::Capturing,
                E::AllCaptured { complete: false },
                S::PartiallyPaid,
            ),
            (S::Reversing, E::AllVoided, S::Failed),
            (S::Pending, E::Blocked, S::Failed),
            (S::Authorizing, E::HeldForReview, S::InReview),
            (S::InReview, E::Approved, S::Capturing),
            (S::InReview, E::Rejected, S::Reversing),
            (S::Capturing, E::SettlementRefused, S::NeedsOperator),
            (S::Reversing, E::SettlementRefused, S::NeedsOperator),
            (S::NeedsOperator, E::ResumedCapture, S::Capturing),
            (S::NeedsOperator, E::ResumedReversal, S::Reversing),
        ];
        for (from, event, to) in allowed {
            assert_eq!(transition(from, event), Ok(to));
        }
        for (from, event) in [
            (S::Failed, E::Start),
            (S::Succeeded, E::AllVoided),
            (S::Capturing, E::ShortfallWithHolds),
            (S::Reversing, E::Covered),
            (S::Authorizing, E::AllCaptured { complete: true }),
            (S::Authorizing, E::Blocked),
            (S::Authorizing, E::Approved),
            (S::InReview, E::Covered),
            (S::InReview, E::Blocked),
            (S::Capturing, E::Rejected),
            (S::Failed, E::Approved),
            (S::Authorizing, E::SettlementRefused),
            (S::Succeeded, E::SettlementRefused),
            (S::NeedsOperator, E::Covered),
            (S::NeedsOperator, E::AllVoided),
            (S::Capturing, E::ResumedCapture),
        ] {
            assert!(transition(from, event).is_err(), "{from:?} {event:?}");
        }
    }

    /// The design's scenario: card B declines for insufficient funds, its part moves to card C,
    /// everything is captured once covered.
    #[test]
    fn a_decline_moves_to_the_next_card_and_then_everything_captures() {
        let members = vec![
            member("a", 1, None),
            member("b", 2, None),
            member("c", 3, None),
        ];
        let mut p = payment(
            &[("a", 700), ("b", 1300)],
            members,
            Completion::AllOrNothing,
            Dispatch::OneAtATime,
        );
        assert_eq!(decide(&mut p).unwrap(), [Command::Authorize(0)]);
        apply(
            &mut p,
            Outcome::Authorized {
                leg: 0,
                approved: 700,
            },
        )
        .unwrap();
        assert_eq!(decide(&mut p).unwrap(), [Command::Authorize(1)]);
        apply(
            &mut p,
            Outcome::Declined {
                leg: 1,
                next_action: NextAction::TryNextCard,
            },
        )
        .unwrap();
        assert_eq!(p.legs[2].token, "c");
        assert_eq!(decide(&mut p).unwrap(), [Command::Authorize(2)]);
        apply(
            &mut p,
            Outcome::Authorized {
                leg: 2,
                approved: 1300,
            },
        )
        .unwrap();
        assert_eq!(p.state, PaymentState::Capturing);
        assert_eq!(
            decide(&mut p).unwrap(),
            [Command::Capture(0), Command::Capture(2)]
        );
        apply(&mut p, Outcome::Captured { leg: 0 }).unwrap();
        apply(&mut p, Outcome::Captured { leg: 2 }).unwrap();
        assert_eq!(p.state, PaymentState::Succeeded);
        assert!(decide(&mut p).unwrap().is_empty());
        assert!(
            apply(&mut p, Outcome::Captured { leg: 2 }).is_err(),
            "an outcome applies once"
        );
    }

    /// A payment whose capture the vault refused for good sends nothing until an operator
    /// resumes it, and then goes back to capturing where it stopped; one whose void was refused
    /// goes back to reversing.
    #[test]
    fn a_payment_held_for_an_operator_sends_nothing_until_resumed() {
        let members = vec![member("a", 1, None), member("b", 2, None)];
        let mut p = payment(
            &[("a", 700), ("b", 300)],
            members.clone(),
            Completion::AllOrNothing,
            Dispatch::AllAtOnce,
        );
        decide(&mut p).unwrap();
        for (leg, approved) in [(0, 700), (1, 300)] {
            apply(&mut p, Outcome::Authorized { leg, approved }).unwrap();
        }
        assert_eq!(
            decide(&mut p).unwrap(),
            [Command::Capture(0), Command::Capture(1)]
        );
        apply(&mut p, Outcome::Captured { leg: 0 }).unwrap();
        hold_for_operator(&mut p).unwrap();
        assert_eq!(p.state, PaymentState::NeedsOperator);
        assert!(p.state.is_at_rest() && !p.state.is_terminal());
        assert!(decide(&mut p).unwrap().is_empty(), "nothing is sent");
        assert!(hold_for_operator(&mut p).is_err(), "held once");
        resume(&mut p).unwrap();
        assert_eq!(p.state, PaymentState::Capturing);
        assert_eq!(p.legs[1].state, LegState::Capturing, "the refused capture");
        apply(&mut p, Outcome::Captured { leg: 1 }).unwrap();
        assert_eq!(p.state, PaymentState::Succeeded);
        assert!(resume(&mut p).is_err(), "only a held payment resumes");

        let mut p = payment(
            &[("a", 700), ("b", 300)],
            members,
            Completion::AllOrNothing,
            Dispatch::AllAtOnce,
        );
        decide(&mut p).unwrap();
        apply(
            &mut p,
            Outcome::Authorized {
                leg: 0,
                approved: 700,
            },
        )
        .unwrap();
        apply(
            &mut p,
            Outcome::Declined {
                leg: 1,
                next_action: NextAction::DoNotRetry,
            },
        )
        .unwrap();
        assert_eq!(p.state, PaymentState::Reversing);
        assert_eq!(decide(&mut p).unwrap(), [Command::Void(0)]);
        hold_for_operator(&mut p).unwrap();
        resume(&mut p).unwrap();
        assert_eq!(p.state, PaymentState::Reversing);
        apply(&mut p, Outcome::Voided { leg: 0 }).unwrap();
        assert_eq!(p.state, PaymentState::Failed);
    }

    /// A converted leg asks its card the converted amount, a partial approval covers what the
    /// hold covers at the rate (the rest moves on), and the capture takes the covered part
    /// converted, never more than the hold. Under BY_CURRENCY a declined card's part goes to
    /// the members of its currency, and to the others only when conversion is allowed.
    #[test]
    fn converted_legs_and_reallocation_by_currency() {
        let eur = Currency::parse("EUR").unwrap();
        let quote = crate::domain::fx::Quote {
            from: usd(),
            to: eur,
            rate: "0.9238".parse().unwrap(),
            source: "test".into(),
            as_of: time::OffsetDateTime::UNIX_EPOCH,
        };
        let euro = |token: &str, priority| Member {
            currency: eur,
            ..member(token, priority, None)
        };
        let mut p = payment(
            &[("e", 1300)],
            vec![euro("e", 1), member("a", 2, None)],
            Completion::AllOrNothing,
            Dispatch::OneAtATime,
        );
        p.quotes = vec![quote.clone()];
        assert_eq!(p.ask(0), 1201);
        assert_eq!(decide(&mut p).unwrap(), [Command::Authorize(0)]);
        // 10.00 EUR covers 10.82 USD; 2.18 USD moves to card a.
        apply(
            &mut p,
            Outcome::Authorized {
                leg: 0,
                approved: 1000,
            },
        )
        .unwrap();
        assert_eq!(
            (p.legs[0].approved, p.hold(0), p.capture(0)),
            (1082, 1000, 1000)
        );
        assert_eq!((p.legs[1].token.as_str(), p.legs[1].amount), ("a", 218));
        assert_eq!(decide(&mut p).unwrap(), [Command::Authorize(1)]);
        assert!(
            apply(
                &mut p,
                Outcome::Authorized {
                    leg: 1,
                    approved: 219,
                },
            )
            .is_err(),
            "no approval above what was asked"
        );

        // Card a (USD) declines its 5.00 USD: where each reallocation sends it, in a group with
        // another USD card (c) and without.
        let moved_to = |members: Vec<Member>, reallocation| {
            let mut p = payment(
                &[("a", 500)],
                members,
                Completion::AllOrNothing,
                Dispatch::OneAtATime,
            );
            p.quotes = vec![quote.clone()];
            p.reallocation = reallocation;
            decide(&mut p).unwrap();
            apply(
                &mut p,
                Outcome::Declined {
                    leg: 0,
                    next_action: NextAction::TryNextCard,
                },
            )
            .unwrap();
            p.legs[1..]
                .iter()
                .map(|l| l.token.clone())
                .collect::<Vec<_>>()
        };
        let with_c = || vec![member("a", 1, None), euro("e", 2), member("c", 3, None)];
        let without_c = || vec![member("a", 1, None), euro("e", 2)];
        let same_currency = |then_any| Reallocation::SameCurrency { then_any };
        for (members, reallocation, expected) in [
            (with_c(), Reallocation::Any, vec!["e"]),
            (with_c(), same_currency(false), vec!["c"]),
            (without_c(), same_currency(false), vec![]),
            (without_c(), same_currency(true), vec!["e"]),
        ] {
            assert_eq!(
                moved_to(members, reallocation),
                expected,
                "{reallocation:?}"
            );
        }
    }

    /// All or nothing: a shortfall voids every hold and ends FAILED; allow partial keeps the
    /// covered leg.
    #[test]
    fn shortfalls_follow_the_completion_policy() {
        for (completion, end, commands) in [
            (
                Completion::AllOrNothing,
                PaymentState::Failed,
                vec![Command::Void(0)],
            ),
            (
                Completion::AllowPartial,
                PaymentState::PartiallyPaid,
                vec![Command::Capture(0)],
            ),
        ] {
            let members = vec![member("a", 1, None), member("b", 2, None)];
            let mut p = payment(
                &[("a", 500), ("b", 500)],
                members,
                completion,
                Dispatch::AllAtOnce,
            );
            p.fallback = false;
            assert_eq!(
                decide(&mut p).unwrap(),
                [Command::Authorize(0), Command::Authorize(1)]
            );
            apply(
                &mut p,
                Outcome::Authorized {
                    leg: 0,
                    approved: 500,
                },
            )
            .unwrap();
            apply(
                &mut p,
                Outcome::Declined {
                    leg: 1,
                    next_action: NextAction::TryNextCard,
                },
            )
            .unwrap();
            assert_eq!(decide(&mut p).unwrap(), commands);
            match commands[0] {
                Command::Void(leg) => apply(&mut p, Outcome::Voided { leg }).unwrap(),
                Command::Capture(leg) => apply(&mut p, Outcome::Captured { leg }).unwrap(),
                Command::Authorize(_) => unreachable!("no authorization left"),
            }
            assert_eq!(p.state, end);
        }
    }

    /// A parallel payment moves a declined share onto a card whose own authorization is still
    /// in flight: that share waits for the card's answer, and when the card declines too, it is
    /// never sent (each card is authorized once) and moves on to a card not tried yet.
    #[test]
    fn a_card_is_not_tried_again_after_a_final_decline() {
        let members = vec![
            member("a", 1, None),
            member("b", 2, None),
            member("c", 3, Some(250)),
        ];
        let mut p = payment(
            &[("a", 500), ("b", 500)],
            members,
            Completion::AllOrNothing,
            Dispatch::AllAtOnce,
        );
        assert_eq!(
            decide(&mut p).unwrap(),
            [Command::Authorize(0), Command::Authorize(1)]
        );
        apply(
            &mut p,
            Outcome::Declined {
                leg: 0,
                next_action: NextAction::TryNextCard,
            },
        )
        .unwrap();
        // a's 500: 250 to c (no leg yet, its whole room), 250 onto b, still in flight.
        let moved: Vec<(&str, i64)> = p.legs[2..]
            .iter()
            .map(|l| (l.token.as_str(), l.amount))
            .collect();
        assert_eq!(moved, [("c", 250), ("b", 250)]);
        assert_eq!(
            decide(&mut p).unwrap(),
            [Command::Authorize(2)],
            "b gets no second authorization while its first is in flight"
        );
        apply(
            &mut p,
            Outcome::Authorized {
                leg: 2,
                approved: 250,
            },
        )
        .unwrap();
        assert!(decide(&mut p).unwrap().is_empty(), "b is still in flight");
        apply(
            &mut p,
            Outcome::Declined {
                leg: 1,
                next_action: NextAction::TryNextCard,
            },
        )
        .unwrap();
        assert_eq!(p.legs[3].state, LegState::Declined, "never sent");
        let b_attempts: u32 = p
            .legs
            .iter()
            .filter(|l| l.token == "b")
            .map(|l| l.attempts)
            .sum();
        assert_eq!(b_attempts, 1);
        // Nothing is left to try: the hold on c is voided and the payment fails.
        assert_eq!(decide(&mut p).unwrap(), [Command::Void(2)]);
        apply(&mut p, Outcome::Voided { leg: 2 }).unwrap();
        assert_eq!(p.state, PaymentState::Failed);
    }

    /// A `DO_NOT_RETRY` decline stops every authorization, including an amount waiting for
    /// another card's answer: it is never sent, even once that card answers.
    #[test]
    fn do_not_retry_stops_legs_waiting_on_a_busy_card() {
        let members = vec![
            member("a", 1, None),
            member("b", 2, None),
            member("c", 3, None),
        ];
        let mut p = payment(
            &[("a", 300), ("b", 300), ("c", 400)],
            members,
            Completion::AllowPartial,
            Dispatch::AllAtOnce,
        );
        assert_eq!(decide(&mut p).unwrap().len(), 3);
        apply(
            &mut p,
            Outcome::Declined {
                leg: 0,
                next_action: NextAction::TryNextCard,
            },
        )
        .unwrap();
        // a's 300 waits on b (in flight).
        assert_eq!(p.legs[3].state, LegState::Pending);
        apply(
            &mut p,
            Outcome::Declined {
                leg: 2,
                next_action: NextAction::DoNotRetry,
            },
        )
        .unwrap();
        assert_eq!(p.legs[3].state, LegState::Declined, "withdrawn");
        apply(
            &mut p,
            Outcome::Authorized {
                leg: 1,
                approved: 300,
            },
        )
        .unwrap();
        assert_eq!(decide(&mut p).unwrap(), [Command::Capture(1)]);
    }

    proptest! {
        /// Driven through any schedule of approvals (full or partial) and declines: the saga
        /// terminates within its attempt bound; SUCCEEDED means exactly the amount captured;
        /// FAILED means nothing captured and every hold voided; PARTIALLY_PAID happens only
        /// under ALLOW_PARTIAL; nothing is captured before the payment stops authorizing.
        #[test]
        fn any_schedule_ends_in_a_consistent_state(
            seed in proptest::collection::vec((any::<u8>(), any::<u16>()), 64),
            allow_partial in any::<bool>(),
            parallel in any::<bool>(),
            fallback in any::<bool>(),
            reviewed in proptest::option::of(proptest::sample::select(vec![Verdict::Approve, Verdict::Reject, Verdict::Expired])),
        ) {
            let members = vec![
                member("a", 1, Some(2_000)),
                member("b", 2, None),
                member("c", 3, Some(800)),
                member("d", 4, None),
            ];
            let completion = if allow_partial { Completion::AllowPartial } else { Completion::AllOrNothing };
            let dispatch = if parallel { Dispatch::AllAtOnce } else { Dispatch::OneAtATime };
            let mut p = payment(&[("a", 1_000), ("b", 1_500)], members, completion, dispatch);
            p.fallback = fallback;
            p.attempts_max = 6;
            p.review = reviewed.is_some();
            let mut draws = seed.into_iter().cycle();
            let mut captured_while_authorizing = false;
            let mut was_in_review = false;
            // Cards declined with advice not to retry them.
            let mut not_again: Vec<String> = Vec::new();
            for _ in 0..200 {
                let mut commands = decide(&mut p).unwrap();
                if p.state == PaymentState::InReview {
                    // Waiting: nothing is sent until the verdict.
                    prop_assert!(commands.is_empty());
                    prop_assert!(p.legs.iter().all(|l| matches!(l.state, LegState::Authorized | LegState::Declined)));
                    was_in_review = true;
                    review(&mut p, reviewed.unwrap()).unwrap();
                    commands = decide(&mut p).unwrap();
                }
                if commands.is_empty() {
                    break;
                }
                for command in commands {
                    let (kind, value) = draws.next().unwrap();
                    let outcome = match command {
                        Command::Authorize(leg) => {
                            let token = p.legs[leg].token.clone();
                            prop_assert!(!not_again.contains(&token), "{} sent again after a final decline: {:?}", token, p.legs);
                            let in_flight = p.legs.iter().filter(|l| l.token == token && l.state == LegState::Authorizing).count();
                            prop_assert_eq!(in_flight, 1, "two authorizations in flight on {}: {:?}", token, p.legs);
                            let asked = p.legs[leg].amount;
                            match kind % 5 {
                                0 => Outcome::Declined { leg, next_action: NextAction::TryNextCard },
                                1 => Outcome::Declined { leg, next_action: NextAction::RetrySameCard },
                                2 if kind % 7 == 0 => Outcome::Declined { leg, next_action: NextAction::DoNotRetry },
                                3 => Outcome::Authorized { leg, approved: 1 + i64::from(value) % asked },
                                _ => Outcome::Authorized { leg, approved: asked },
                            }
                        }
                        Command::Capture(leg) => {
                            captured_while_authorizing |= p.legs.iter().any(|l| l.state == LegState::Authorizing);
                            prop_assert!(reviewed.is_none() || (was_in_review && reviewed == Some(Verdict::Approve)), "captured without approval");
                            Outcome::Captured { leg }
                        }
                        Command::Void(leg) => Outcome::Voided { leg },
                    };
                    if let Outcome::Declined { leg, next_action: NextAction::TryNextCard | NextAction::DoNotRetry } = outcome {
                        not_again.push(p.legs[leg].token.clone());
                    }
                    apply(&mut p, outcome).unwrap();
                }
            }
            prop_assert!(p.state.is_terminal(), "stuck in {:?}", p.state);
            prop_assert!(p.attempts() <= p.attempts_max);
            prop_assert!(!captured_while_authorizing);
            if was_in_review && reviewed != Some(Verdict::Approve) {
                prop_assert_eq!(p.state, PaymentState::Failed);
            }
            let captured: i64 = p.legs.iter().filter(|l| l.state == LegState::Captured).map(|l| l.approved).sum();
            match p.state {
                PaymentState::Succeeded => prop_assert_eq!(captured, p.amount),
                PaymentState::PartiallyPaid => {
                    prop_assert!(allow_partial);
                    prop_assert!(captured > 0 && captured < p.amount);
                }
                PaymentState::Failed => {
                    prop_assert_eq!(captured, 0);
                    prop_assert!(p.legs.iter().all(|l| matches!(l.state, LegState::Voided | LegState::Declined)));
                }
                other => prop_assert!(false, "not terminal: {:?}", other),
            }
            for leg in &p.legs {
                let member = p.members.iter().find(|m| m.token == leg.token).unwrap();
                if let Some(room) = member.room {
                    let asked: i64 = p.legs.iter().filter(|l| l.token == leg.token && l.state != LegState::Declined).map(|l| l.approved.max(0)).sum();
                    prop_assert!(asked <= room, "{} over its room: {:?}", leg.token, p.legs);
                }
            }
        }
    }
}
