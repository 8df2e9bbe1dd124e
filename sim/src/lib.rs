//! Tandem's deterministic simulator (DESIGN section 15).
//!
//! Each simulated payment runs the orchestrator's real decision code: the payment record and
//! its saga (`next_steps`, the `record_*` functions, `decide_review`, `resolve`, and refunds:
//! `plan_refund`, `refund_steps`, `record_refund`), the bookings
//! the ledger receives (`domain::booking`), the planner with its allocation and conversions
//! (`domain::planning`), the risk review, and the vault's charge rules
//! (`tandem_vault::domain::charge_rules`), against a simulated vault and acquirer ([`vault`]),
//! ledger ([`ledger`]) and clock, driven the way the workflow drives a
//! payment: intents committed before any call, answers recorded with their bookings in one
//! commit, an authorization in flight from before looked up by its request id before it is sent
//! again. Faults are drawn from the payment's seed: a crash before and after each commit, a
//! request lost, an answer lost (the outcome unknown), an answer duplicated, answers out of
//! order, the lease taken over by another orchestrator, a review decided late, the processor
//! refusing captures. After every commit the invariants are checked; once the faults stop
//! (after [`FAULTY_ROUNDS`]), the payment must end.
//!
//! Every payment draws from its own stream of the seed, so a failure replays alone
//! (`tandem-sim --seed S --payment K`), and [`shrink`] finds the fewest faults of that payment
//! that still fail: the shortest schedule that shows the bug.
//!
//! What it does not cover yet: the workflow's own control flow (its IO is not behind traits:
//! this driver restates it), invoices in other currencies than USD and the other strategies,
//! payments sharing cards, and the vault's request handling and storage (restated in [`vault`]
//! around its charge rules).

pub mod ledger;
pub mod rng;
pub mod vault;

use std::collections::BTreeSet;

use tandem_money::{Currency, Money};
use tandem_orchestrator::domain::actor::Actor;
use tandem_orchestrator::domain::allocation::Strategy;
use tandem_orchestrator::domain::booking::{self, BookingContext};
use tandem_orchestrator::domain::fx::Quote;
use tandem_orchestrator::domain::group::{MemberRules, Policy};
use tandem_orchestrator::domain::planning::{self, Invoice};
use tandem_orchestrator::domain::record::PaymentRecord;
use tandem_orchestrator::domain::record::operator::Decision;
use tandem_orchestrator::domain::record::refunds::RefundStep;
use tandem_orchestrator::domain::record::steps::{AuthorizeAnswer, Recorded, Step};
use tandem_orchestrator::domain::risk::{Action, Assessment};
use tandem_orchestrator::domain::saga::{
    Command, Completion, LegState, NextAction, PaymentState, Verdict,
};
use time::{Duration, OffsetDateTime};

use ledger::Books;
use rng::Rng;
use vault::{Card, ChargeState, Vault};

/// Rounds of a payment in which faults are drawn; after them it must end.
pub const FAULTY_ROUNDS: u32 = 40;
/// Most rounds of a payment in all.
pub const ROUNDS_MAX: u32 = 200;
/// Refusals of a capture or void before the payment waits for an operator (the orchestrator's
/// default `payments.settle_refusals_max`).
pub const SETTLE_REFUSALS_MAX: u32 = 3;

/// The faults a schedule may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// The process dies before the intents commit.
    CrashBeforeIntents,
    /// The process dies right after the intents commit, before any call.
    CrashAfterIntents,
    /// A request never reaches the vault: the outcome is unknown.
    RequestLost,
    /// The vault acted, and its answer was lost: the outcome is unknown.
    AnswerLost,
    /// An answer arrives twice.
    AnswerDuplicated,
    /// The round's answers arrive in another order.
    OutOfOrder,
    /// The process dies after the calls, before their results commit.
    CrashAfterCalls,
    /// Another orchestrator took the lease meanwhile: this one's results are refused.
    LeaseTakenOver,
    /// The reviewer waits another round.
    ReviewLate,
}

/// One fault injected, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// Its number in the payment's schedule, from 0.
    pub index: usize,
    /// The round.
    pub round: u32,
    /// What.
    pub fault: Fault,
}

/// What broke, and the schedule that led there.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The payment's number in the run.
    pub payment: u64,
    /// The broken invariant.
    pub what: String,
    /// The faults injected until then.
    pub schedule: Vec<Injected>,
    /// The round it broke in.
    pub round: u32,
}

/// What a payment ended as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Its final state.
    pub state: PaymentState,
    /// Faults injected.
    pub faults: usize,
    /// Times an operator resolved it.
    pub resolutions: usize,
    /// Refunds made of it.
    pub refunds: usize,
    /// Its legs charged in another currency than the invoice's.
    pub converted: usize,
}

/// The fault draws of one payment, minus the ones [`shrink`] leaves out.
struct Faults<'a> {
    rng: Rng,
    percent: u64,
    suppressed: &'a BTreeSet<usize>,
    drawn: usize,
    log: Vec<Injected>,
}

impl Faults<'_> {
    /// True if `fault` happens now (in `round`; never after the faulty rounds).
    fn roll(&mut self, round: u32, fault: Fault) -> bool {
        if round >= FAULTY_ROUNDS {
            return false;
        }
        let hit = self.rng.chance(self.percent);
        if !hit {
            return false;
        }
        let index = self.drawn;
        self.drawn += 1;
        if self.suppressed.contains(&index) {
            return false;
        }
        self.log.push(Injected {
            index,
            round,
            fault,
        });
        true
    }
}

/// A vault call's outcome as the workflow sees it.
#[derive(Debug, Clone)]
enum Answer {
    Authorization(AuthorizeAnswer),
    Settled,
    Refused(String),
}

/// Runs payment `index` of `seed` with every fault but those in `suppressed`; `percent` is the
/// chance of each fault at each point.
pub fn run_payment(
    seed: u64,
    index: u64,
    percent: u64,
    suppressed: &BTreeSet<usize>,
) -> Result<Ended, Failure> {
    let mut rng = Rng::stream(seed, index);
    let mut faults = Faults {
        rng: Rng::stream(seed ^ 0x5EED, index),
        percent,
        suppressed,
        drawn: 0,
        log: Vec::new(),
    };
    let scenario = Scenario::draw(&mut rng, index);
    let mut vault = Vault::new(scenario.cards.clone());
    let mut books = Books::default();
    let mut clock = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
    let mut committed = scenario.record(clock).map_err(|what| Failure {
        payment: index,
        what,
        schedule: Vec::new(),
        round: 0,
    })?;
    let mut round = 0;
    let mut refunds_asked = 0;
    let fail = |what: String, round: u32, log: &[Injected]| Failure {
        payment: index,
        what,
        schedule: log.to_vec(),
        round,
    };
    loop {
        round += 1;
        clock += Duration::milliseconds(rng.between(1, 400));
        if round > ROUNDS_MAX {
            return Err(fail(
                format!(
                    "not ended after {ROUNDS_MAX} rounds: {:?}",
                    committed.saga.state
                ),
                round,
                &faults.log,
            ));
        }
        let mut working = committed.clone();
        // People act on a payment that waits for them.
        match working.saga.state {
            PaymentState::InReview => {
                if faults.roll(round, Fault::ReviewLate) {
                    continue;
                }
                let verdict = if scenario.approve {
                    Verdict::Approve
                } else {
                    Verdict::Reject
                };
                let reviewer = actor("reviewer", "sim-reviewer");
                working
                    .decide_review(verdict, Some(reviewer), None, clock)
                    .map_err(|e| fail(format!("review: {e}"), round, &faults.log))?;
                committed = working;
                check(&committed, &vault, &books).map_err(|e| fail(e, round, &faults.log))?;
                continue;
            }
            PaymentState::NeedsOperator => {
                // An operator confirms what the vault shows done (ResolvePayment refuses anything
                // else), and has the rest sent again. The simulated vault never settles a refused
                // operation later, so here it is always sent again.
                let done = working.refused_legs().iter().all(|&leg| {
                    let expected = match working.saga.legs[leg].state {
                        LegState::Capturing => ChargeState::Captured,
                        _ => ChargeState::Voided,
                    };
                    charge_of(&working, &vault, leg).map(|c| c.state) == Some(expected)
                });
                let decision = if done {
                    Decision::Confirm
                } else {
                    Decision::Retry
                };
                let (_, confirmed) = working
                    .resolve(
                        decision,
                        actor("treasury", "sim-operator"),
                        "sim".into(),
                        clock,
                    )
                    .map_err(|e| fail(format!("resolve: {e}"), round, &faults.log))?;
                let transfers =
                    bookings(&working, &confirmed).map_err(|e| fail(e, round, &faults.log))?;
                books
                    .book(&transfers)
                    .map_err(|e| fail(e, round, &faults.log))?;
                committed = working;
                check(&committed, &vault, &books).map_err(|e| fail(e, round, &faults.log))?;
                continue;
            }
            _ => {}
        }
        // The payer asks for its refunds once the payment ended, one after the other.
        let refundable = matches!(
            working.saga.state,
            PaymentState::Succeeded | PaymentState::PartiallyPaid
        );
        if refundable && refunds_asked < scenario.refunds.len() && working.refund_steps().is_empty()
        {
            let left = working.captured() - working.refunded();
            let amount = scenario.refunds[refunds_asked].map(|percent| left * percent / 100);
            refunds_asked += 1;
            if left > 0 && amount != Some(0) {
                working
                    .plan_refund(
                        format!("prf_{refunds_asked}"),
                        format!("refund-{refunds_asked}"),
                        amount,
                        "sim".into(),
                        actor("payer", "sim"),
                        clock,
                    )
                    .map_err(|e| fail(format!("refund: {e}"), round, &faults.log))?;
                committed = working;
                check(&committed, &vault, &books).map_err(|e| fail(e, round, &faults.log))?;
            }
            continue;
        }
        if committed.is_settled() && (!refundable || refunds_asked >= scenario.refunds.len()) {
            break;
        }
        // Step 1: the intents.
        let (steps, _) = working
            .next_steps(clock)
            .map_err(|e| fail(format!("saga: {e}"), round, &faults.log))?;
        let refund_steps = working.refund_steps();
        if steps.is_empty() && refund_steps.is_empty() {
            if working.is_settled() || working.saga.state.is_at_rest() {
                committed = working;
                continue;
            }
            return Err(fail(
                format!("{:?} with nothing to send", working.saga.state),
                round,
                &faults.log,
            ));
        }
        if faults.roll(round, Fault::CrashBeforeIntents) {
            continue;
        }
        committed = working.clone();
        check(&committed, &vault, &books).map_err(|e| fail(e, round, &faults.log))?;
        if faults.roll(round, Fault::CrashAfterIntents) {
            continue;
        }
        // Step 2: the calls.
        let mut answers: Vec<(Step, Answer)> = Vec::new();
        for step in steps {
            let found = match step.command {
                Command::Authorize(_) if !step.new => vault.find_authorization(&step.request_id),
                _ => None,
            };
            let answer = match found {
                Some(answer) => Answer::Authorization(answer),
                None => {
                    if faults.roll(round, Fault::RequestLost) {
                        continue;
                    }
                    let answer = call(&mut vault, &step);
                    if faults.roll(round, Fault::AnswerLost) {
                        continue;
                    }
                    answer
                }
            };
            if faults.roll(round, Fault::AnswerDuplicated) {
                answers.push((step.clone(), answer.clone()));
            }
            answers.push((step, answer));
        }
        let mut refunded: Vec<(RefundStep, Result<String, String>)> = Vec::new();
        for step in refund_steps {
            if faults.roll(round, Fault::RequestLost) {
                continue;
            }
            let answer = vault.refund(&step.request_id, &step.charge_id, step.amount);
            if faults.roll(round, Fault::AnswerLost) {
                continue;
            }
            if faults.roll(round, Fault::AnswerDuplicated) {
                refunded.push((step.clone(), answer.clone()));
            }
            refunded.push((step, answer));
        }
        if faults.roll(round, Fault::OutOfOrder) {
            rng.shuffle(&mut answers);
            rng.shuffle(&mut refunded);
        }
        if faults.roll(round, Fault::CrashAfterCalls) || faults.roll(round, Fault::LeaseTakenOver) {
            continue;
        }
        // Step 3: the results, with their bookings, in one commit.
        let mut transfers = Vec::new();
        for (step, answer) in answers {
            let recorded = match (step.command, answer) {
                (Command::Authorize(leg), Answer::Authorization(answer)) => working
                    .record_authorization(leg, step.attempt, answer, clock)
                    .map_err(|e| fail(format!("saga: {e}"), round, &faults.log))?,
                (command, Answer::Refused(reason)) => {
                    working.record_refusal(command, reason, SETTLE_REFUSALS_MAX, clock);
                    None
                }
                (command, _) => working
                    .record_settlement(command, clock)
                    .map_err(|e| fail(format!("saga: {e}"), round, &faults.log))?,
            };
            if let Some(recorded) = recorded {
                transfers.extend(
                    bookings(&working, std::slice::from_ref(&recorded))
                        .map_err(|e| fail(e, round, &faults.log))?,
                );
            }
        }
        for (step, answer) in refunded {
            let id = match answer {
                Ok(id) => id,
                // The payment spread the refund over what its legs captured: the vault never has
                // a reason to refuse a part.
                Err(reason) => {
                    return Err(fail(
                        format!(
                            "the vault refused refund part {}: {reason}",
                            step.request_id
                        ),
                        round,
                        &faults.log,
                    ));
                }
            };
            if working
                .record_refund(&step, true, Some(id), clock)
                .is_some()
            {
                let part = working.refunded_part(&step, None);
                let context = context(&working, step.leg);
                transfers.extend(
                    booking::refund_booking(&context, &working.saga, step.leg, part)
                        .map_err(|e| fail(format!("booking: {e}"), round, &faults.log))?,
                );
            }
        }
        books
            .book(&transfers)
            .map_err(|e| fail(e, round, &faults.log))?;
        committed = working;
        check(&committed, &vault, &books).map_err(|e| fail(e, round, &faults.log))?;
    }
    check(&committed, &vault, &books).map_err(|e| fail(e, round, &faults.log))?;
    check_end(&committed, &scenario, &vault, &books).map_err(|e| fail(e, round, &faults.log))?;
    Ok(Ended {
        state: committed.saga.state,
        faults: faults.log.len(),
        resolutions: committed.resolutions.len(),
        refunds: committed.refunds.len(),
        converted: (0..committed.saga.legs.len())
            .filter(|&leg| committed.saga.quote(leg).is_some())
            .count(),
    })
}

/// Sends `step` to the vault and reads its answer as the orchestrator's vault client does: a
/// refused capture or void whose charge is already as asked is done.
fn call(vault: &mut Vault, step: &Step) -> Answer {
    let charge_id = step.charge_id.as_deref().unwrap_or_default();
    let (result, expected) = match step.command {
        Command::Authorize(_) => {
            return Answer::Authorization(vault.authorize(
                &step.request_id,
                &step.token,
                step.currency,
                step.amount,
            ));
        }
        Command::Capture(_) => (
            vault.capture(&step.request_id, charge_id, step.amount),
            ChargeState::Captured,
        ),
        Command::Void(_) => (vault.void(&step.request_id, charge_id), ChargeState::Voided),
    };
    match result {
        Ok(()) => Answer::Settled,
        Err(_) if vault.charges().get(charge_id).map(|c| c.state) == Some(expected) => {
            Answer::Settled
        }
        Err(reason) => Answer::Refused(reason),
    }
}

/// The ledger transfers of `recorded` outcomes of `record`.
fn bookings(
    record: &PaymentRecord,
    recorded: &[Recorded],
) -> Result<Vec<tandem_ledger::types::Transfer>, String> {
    let mut transfers = Vec::new();
    for (outcome, _, _) in recorded {
        let leg = match *outcome {
            tandem_orchestrator::domain::saga::Outcome::Authorized { leg, .. }
            | tandem_orchestrator::domain::saga::Outcome::Declined { leg, .. }
            | tandem_orchestrator::domain::saga::Outcome::Captured { leg }
            | tandem_orchestrator::domain::saga::Outcome::Voided { leg } => leg,
        };
        transfers.extend(
            booking::booking(&context(record, leg), &record.saga, outcome)
                .map_err(|e| format!("booking: {e}"))?,
        );
    }
    Ok(transfers)
}

/// The booking context of `leg`, as the workflow builds it.
fn context(record: &PaymentRecord, leg: usize) -> BookingContext {
    BookingContext {
        payment_id: record.id.clone(),
        invoice_id: record.invoice_id.clone(),
        billing_account: "acct-sim".into(),
        cost_center: None,
        processor_reference: record.legs[leg].processor_reference.clone(),
    }
}

/// The vault charge holding `leg`'s money, if any.
fn charge_of<'a>(
    record: &PaymentRecord,
    vault: &'a Vault,
    leg: usize,
) -> Option<&'a vault::Charge> {
    vault.charges().get(record.legs[leg].charge_id.as_deref()?)
}

/// The invariants that hold after every commit: the ledger balances per currency (a guard on
/// the simulated ledger itself: it books both sides of every transfer); no charge captured more
/// than it held, nor refunded more than it captured; no two holds for one leg at the vault; the
/// ledger never books a capture or a refund the vault did not make. (A hold posted or voided
/// twice, or one never held, fails its commit in [`ledger::Books::book`].)
fn check(record: &PaymentRecord, vault: &Vault, books: &Books) -> Result<(), String> {
    books.check_balanced()?;
    for (id, charge) in vault.charges() {
        if charge.captured > charge.held || charge.refunded > charge.captured {
            return Err(format!(
                "{id} held {}, captured {}, refunded {}",
                charge.held, charge.captured, charge.refunded
            ));
        }
    }
    for leg in 0..record.saga.legs.len() {
        let prefix = format!("{}/leg/{}/", record.id, leg + 1);
        let holding = vault
            .charges()
            .values()
            .filter(|c| c.request_id.starts_with(&prefix))
            .filter(|c| matches!(c.state, ChargeState::Authorized | ChargeState::Captured))
            .count();
        if holding > 1 {
            return Err(format!(
                "leg {} holds {holding} charges at the vault",
                leg + 1
            ));
        }
    }
    for card in cards(record, vault, books)? {
        if card.booked_captured > card.captured || card.booked_refunded > card.refunded {
            return Err(format!(
                "the ledger is ahead of the vault on {}: {card:?}",
                card.token
            ));
        }
    }
    Ok(())
}

/// One card's money at the vault and in the ledger.
#[derive(Debug)]
struct CardMoney {
    token: String,
    captured: i64,
    refunded: i64,
    booked_captured: i64,
    booked_refunded: i64,
}

/// Every member card's money at the vault and in the ledger (its funding source's posted
/// debits and credits).
fn cards(record: &PaymentRecord, vault: &Vault, books: &Books) -> Result<Vec<CardMoney>, String> {
    record
        .saga
        .members
        .iter()
        .map(|member| {
            let charges = || vault.charges().values().filter(|c| c.token == member.token);
            let funding = booking::funding_source(&member.token, member.currency.code())
                .map_err(|e| e.to_string())?;
            let (booked_captured, booked_refunded) = books.posted(funding.as_str());
            Ok(CardMoney {
                token: member.token.clone(),
                captured: charges().map(|c| c.captured).sum(),
                refunded: charges().map(|c| c.refunded).sum(),
                booked_captured,
                booked_refunded,
            })
        })
        .collect()
}

/// The invariants of an ended payment: all or nothing under ALL_OR_NOTHING; no hold left at the
/// vault or pending in the ledger; the ledger's captures and refunds equal the vault's, card by
/// card; what the payment says it captured and refunded is what the cards paid and got back.
fn check_end(
    record: &PaymentRecord,
    scenario: &Scenario,
    vault: &Vault,
    books: &Books,
) -> Result<(), String> {
    if !record.is_settled() {
        return Err(format!("ended {:?}", record.status()));
    }
    if let Some((id, _)) = vault
        .charges()
        .iter()
        .find(|(_, c)| c.state == ChargeState::Authorized)
    {
        return Err(format!("orphan hold {id} at the vault"));
    }
    if books.pending() > 0 {
        return Err(format!(
            "{} holds left pending in the ledger",
            books.pending()
        ));
    }
    for card in cards(record, vault, books)? {
        if card.booked_captured != card.captured || card.booked_refunded != card.refunded {
            return Err(format!(
                "the ledger and the vault differ on {}: {card:?}",
                card.token
            ));
        }
        // What the payment says the card paid and got back, in the card's currency.
        let (mut paid, mut back) = (0, 0);
        for leg in 0..record.saga.legs.len() {
            if record.saga.legs[leg].token != card.token {
                continue;
            }
            if record.saga.legs[leg].state == LegState::Captured {
                paid += record.saga.capture(leg);
            }
            back += record.card_refunded(leg);
        }
        if (paid, back) != (card.captured, card.refunded) {
            return Err(format!(
                "the payment says {} paid {paid} and got {back} back: {card:?}",
                card.token
            ));
        }
    }
    let captured = record.captured();
    let whole = captured == record.saga.amount;
    match (record.saga.state, scenario.completion) {
        (PaymentState::Succeeded, _) if !whole => Err("SUCCEEDED without the whole amount".into()),
        (PaymentState::Failed, _) if captured != 0 => Err("FAILED with money captured".into()),
        (PaymentState::PartiallyPaid, Completion::AllOrNothing) => {
            Err("PARTIALLY_PAID under ALL_OR_NOTHING".into())
        }
        (PaymentState::PartiallyPaid, _) if captured == 0 || whole => Err(format!(
            "PARTIALLY_PAID with {captured} of {}",
            record.saga.amount
        )),
        _ => Ok(()),
    }
}

fn actor(role: &str, name: &str) -> Actor {
    Actor {
        name: name.into(),
        role: role.into(),
    }
}

/// A payment to simulate: its cards, its policy, its review, its refunds.
#[derive(Debug, Clone)]
struct Scenario {
    index: u64,
    cards: Vec<Card>,
    /// Each card's currency and limit per payment (minor units of its currency).
    members: Vec<(Currency, Option<i64>)>,
    /// The invoice, in USD minor units.
    amount: i64,
    /// The rates of the cards' currencies, fixed at creation as a payment fixes them.
    quotes: Vec<Quote>,
    parallel: bool,
    completion: Completion,
    fallback: bool,
    review: bool,
    approve: bool,
    /// Refunds asked for once the payment ends, one after the other: a percentage of what is
    /// left refundable, or all of it.
    refunds: Vec<Option<i64>>,
}

fn currency(code: &str) -> Currency {
    Currency::parse(code).expect("an ISO 4217 currency")
}

impl Scenario {
    fn draw(rng: &mut Rng, index: u64) -> Scenario {
        let count = rng.between(1, 4) as usize;
        let cards = (0..count)
            .map(|i| {
                let mut declines = Vec::new();
                if rng.chance(30) {
                    let (action, code) = match rng.below(3) {
                        0 => (NextAction::RetrySameCard, "PROCESSING_ERROR"),
                        1 => (NextAction::TryNextCard, "INSUFFICIENT_FUNDS"),
                        _ => (NextAction::DoNotRetry, "DO_NOT_HONOR"),
                    };
                    for _ in 0..rng.between(1, 2) {
                        declines.push((action, code));
                    }
                }
                Card {
                    token: format!("tok_sim{index}c{i}"),
                    declines,
                    partial: rng.chance(10),
                    capture_refusals: if rng.chance(5) {
                        rng.between(1, 4) as u32
                    } else {
                        0
                    },
                }
            })
            .collect::<Vec<_>>();
        let amount = rng.between(1, 200_000);
        let members = (0..count)
            .map(|_| {
                let code = match rng.below(100) {
                    0..60 => "USD",
                    60..85 => "EUR",
                    _ => "JPY",
                };
                let limit = rng.chance(40).then(|| rng.between(1, 150_000));
                (currency(code), limit)
            })
            .collect();
        let as_of = OffsetDateTime::UNIX_EPOCH + Duration::days(20_000);
        let quote = |to: &str, rate: String| Quote {
            from: currency("USD"),
            to: currency(to),
            rate: rate.parse().expect("a rate"),
            source: "sim".into(),
            as_of,
        };
        // The rates move from payment to payment: each fixes its own.
        let quotes = vec![
            quote("EUR", format!("0.{:04}", rng.between(5_000, 9_999))),
            quote(
                "JPY",
                format!("{}.{:02}", rng.between(80, 200), rng.below(100)),
            ),
        ];
        Scenario {
            index,
            cards,
            members,
            amount,
            quotes,
            parallel: rng.chance(50),
            completion: if rng.chance(70) {
                Completion::AllOrNothing
            } else {
                Completion::AllowPartial
            },
            fallback: rng.chance(80),
            review: rng.chance(15),
            approve: rng.chance(70),
            refunds: (0..rng.below(3))
                .map(|_| rng.chance(70).then(|| rng.between(1, 100)))
                .collect(),
        }
    }

    /// The payment as `CreatePayment` records it: planned by the orchestrator's planner from
    /// the members, the policy and the invoice, assessed, in state PENDING.
    fn record(&self, now: OffsetDateTime) -> Result<PaymentRecord, String> {
        let rules: Vec<MemberRules> = self
            .cards
            .iter()
            .zip(&self.members)
            .enumerate()
            .map(|(i, (card, &(currency, limit)))| MemberRules {
                token: card.token.clone(),
                label: format!("card {i}"),
                currency,
                priority: i as u16 + 1,
                cost_center: None,
                limit_per_payment: limit,
                limit_per_month: None,
                active: true,
            })
            .collect();
        let policy = Policy {
            strategy: if self.parallel {
                Strategy::Parallel {
                    weights: Vec::new(),
                }
            } else {
                Strategy::Sequential
            },
            fallback: self.fallback,
            attempts_max: 10,
            completion: self.completion,
            windows: Vec::new(),
            allow_conversion: true,
        };
        let invoice = Invoice {
            id: format!("INV-{}", self.index),
            amount: Money::new(currency("USD"), self.amount),
            cost_center: None,
            lines: Vec::new(),
        };
        let plan = planning::plan(&rules, &policy, &invoice, |_| 0, now, self.quotes.clone())
            .map_err(|errors| format!("the planner refused the payment: {errors:?}"))?;
        let members = planning::snapshots(&rules, &policy.windows, now, |_| "0001".into());
        let (mut record, _) = PaymentRecord::new(
            format!("pay_sim{:022}", self.index),
            invoice.id,
            None,
            plan.saga,
            members,
            actor("payer", "sim"),
            now,
        );
        if self.review {
            record.assess(
                Assessment {
                    action: Action::Review,
                    score: 50,
                    fired: Vec::new(),
                    policy_version: 1,
                    default_policy: false,
                    assess_time: now,
                },
                3_600,
                now,
            );
        }
        Ok(record)
    }
}

/// The fewest faults of payment `failure.payment` that still break an invariant: faults are
/// left out one at a time, keeping each omission that still fails.
pub fn shrink(seed: u64, percent: u64, failure: &Failure) -> Failure {
    let mut best = failure.clone();
    let mut suppressed: BTreeSet<usize> = BTreeSet::new();
    for injected in failure.schedule.clone() {
        suppressed.insert(injected.index);
        match run_payment(seed, failure.payment, percent, &suppressed) {
            Err(smaller) if smaller.schedule.len() < best.schedule.len() => best = smaller,
            Err(_) => {}
            Ok(_) => {
                suppressed.remove(&injected.index);
            }
        }
    }
    best
}

/// A run's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// Payments simulated.
    pub payments: u64,
    /// Faults injected.
    pub faults: u64,
    /// Payments by final state: succeeded, partially paid, failed.
    pub ended: [u64; 3],
    /// Operator resolutions.
    pub resolutions: u64,
    /// Refunds.
    pub refunds: u64,
    /// Legs charged in another currency than their invoice's.
    pub converted: u64,
}

/// Simulates payments `first..first + count` of `seed`; stops at the first failure.
pub fn run(seed: u64, first: u64, count: u64, percent: u64) -> Result<Report, Failure> {
    let mut report = Report::default();
    let none = BTreeSet::new();
    for index in first..first + count {
        let ended = run_payment(seed, index, percent, &none)?;
        report.payments += 1;
        report.faults += ended.faults as u64;
        report.resolutions += ended.resolutions as u64;
        report.refunds += ended.refunds as u64;
        report.converted += ended.converted as u64;
        match ended.state {
            PaymentState::Succeeded => report.ended[0] += 1,
            PaymentState::PartiallyPaid => report.ended[1] += 1,
            _ => report.ended[2] += 1,
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A short run is clean and replays identically from its seed.
    #[test]
    fn a_run_is_clean_and_replays() {
        let first = run(42, 0, 2_000, 8).unwrap_or_else(|f| panic!("{f:?}"));
        assert_eq!(first.payments, 2_000);
        assert!(first.faults > 1_000, "{first:?}");
        assert!(first.ended.iter().all(|&n| n > 0), "{first:?}");
        assert!(
            first.resolutions > 0 && first.refunds > 0 && first.converted > 0,
            "{first:?}"
        );
        assert_eq!(
            run(42, 0, 2_000, 8).unwrap_or_else(|f| panic!("{f:?}")),
            first
        );
    }
}
