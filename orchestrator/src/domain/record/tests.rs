//! The record's steps, refunds and summary, driven through whole payments.

use super::events::EventKind;
use super::operator::{self, Decision};
use super::refunds::RefundError;
use super::steps::{AuthorizeAnswer, Step};
use super::*;
use crate::domain::allocation::Member;
use crate::domain::saga::{Command, NextAction, Outcome};
use crate::domain::saga::{Completion, Dispatch, Leg, Reallocation};

fn usd() -> Currency {
    Currency::parse("USD").unwrap()
}

fn now() -> OffsetDateTime {
    OffsetDateTime::UNIX_EPOCH
}

fn record(legs: &[(&str, i64)], members: &[(&str, &str, &str)]) -> PaymentRecord {
    let saga = Payment {
        state: PaymentState::Pending,
        currency: usd(),
        amount: legs.iter().map(|(_, a)| a).sum(),
        legs: legs
            .iter()
            .map(|(t, a)| Leg {
                token: (*t).to_owned(),
                amount: *a,
                approved: 0,
                held: 0,
                state: LegState::Pending,
                attempts: 0,
            })
            .collect(),
        members: members
            .iter()
            .enumerate()
            .map(|(i, (t, _, _))| Member {
                token: (*t).to_owned(),
                priority: i as u16 + 1,
                currency: usd(),
                active: true,
                room: None,
            })
            .collect(),
        fallback: true,
        attempts_max: 10,
        completion: Completion::AllOrNothing,
        dispatch: Dispatch::OneAtATime,
        stopped: false,
        reallocation: Reallocation::Any,
        quotes: Vec::new(),
        review: false,
    };
    let members = members
        .iter()
        .enumerate()
        .map(|(i, (t, label, last4))| MemberSnapshot {
            token: (*t).to_owned(),
            label: (*label).to_owned(),
            priority: i as u16 + 1,
            cost_center: None,
            limit_per_month: None,
            last4: (*last4).to_owned(),
        })
        .collect();
    PaymentRecord::new(
        "pay_x".into(),
        "12345".into(),
        None,
        saga,
        members,
        actor("payer", "billing"),
        now(),
    )
    .0
}

fn approve(record: &mut PaymentRecord, leg: usize, approved: i64, last4: &str) {
    record
        .record_authorization(
            leg,
            None,
            AuthorizeAnswer::Approved {
                charge_id: format!("ch_{leg}"),
                approved,
                authorization_code: format!("A{leg}"),
                processor_reference: "sbx_ref".into(),
                last4: last4.into(),
            },
            now(),
        )
        .unwrap()
        .unwrap();
}

/// Drives every step to the end, approving legs by `answer` and confirming captures and
/// voids.
fn run(record: &mut PaymentRecord, mut answer: impl FnMut(&Step) -> AuthorizeAnswer) {
    for _ in 0..50 {
        let (steps, _) = record.next_steps(now()).unwrap();
        if steps.is_empty() {
            return;
        }
        for step in steps {
            match step.command {
                Command::Authorize(leg) => {
                    let reply = answer(&step);
                    record
                        .record_authorization(leg, None, reply, now())
                        .unwrap();
                }
                command => {
                    record.record_settlement(command, now()).unwrap().unwrap();
                }
            }
        }
    }
    panic!("the payment did not finish");
}

/// Invoice 12345 of DESIGN section 8: the summary names each card, its last four digits and
/// its part, and the replacement after a decline.
#[test]
fn summary_names_each_card_and_the_replacement() {
    let mut record = record(
        &[("tok_a", 700), ("tok_d", 1300), ("tok_c", 50)],
        &[
            ("tok_a", "card A", "4242"),
            ("tok_d", "card D", "0341"),
            ("tok_c", "card C", "0005"),
            ("tok_b", "card B", "1881"),
        ],
    );
    run(&mut record, |step| {
        if step.token == "tok_d" {
            AuthorizeAnswer::Declined {
                charge_id: "ch_d".into(),
                last4: "0341".into(),
                decline_code: "INSUFFICIENT_FUNDS".into(),
                next_action: NextAction::TryNextCard,
            }
        } else {
            AuthorizeAnswer::Approved {
                charge_id: format!("ch_{}", step.token),
                approved: step.amount,
                authorization_code: "A1".into(),
                processor_reference: "sbx_ref".into(),
                last4: match step.token.as_str() {
                    "tok_a" => "4242",
                    "tok_b" => "1881",
                    _ => "0005",
                }
                .into(),
            }
        }
    });
    assert_eq!(record.saga.state, PaymentState::Succeeded);
    assert_eq!(
        record.summary(),
        "Invoice 12345 paid 20.50 USD: card A ·4242 7.00, card C ·0005 0.50, \
         card B ·1881 13.00 (card B replaced card D after insufficient funds)"
    );
    assert_eq!(record.captured(), 2050);
    assert_eq!(record.attempts.len(), 4);
    assert_eq!(
        record.attempts[1].decline_code.as_deref(),
        Some("INSUFFICIENT_FUNDS")
    );
}

/// A card that takes over a declined card's amount on a second leg appears once in the
/// summary, with its legs added up.
#[test]
fn summary_adds_up_a_cards_legs() {
    let mut record = record(
        &[("tok_a", 500), ("tok_d", 500)],
        &[("tok_a", "card A", "4242"), ("tok_d", "card D", "0341")],
    );
    run(&mut record, |step| {
        if step.token == "tok_d" {
            AuthorizeAnswer::Declined {
                charge_id: "ch_d".into(),
                last4: "0341".into(),
                decline_code: "INSUFFICIENT_FUNDS".into(),
                next_action: NextAction::TryNextCard,
            }
        } else {
            AuthorizeAnswer::Approved {
                charge_id: format!("ch_{}", step.amount),
                approved: step.amount,
                authorization_code: "A1".into(),
                processor_reference: "sbx_ref".into(),
                last4: "4242".into(),
            }
        }
    });
    assert_eq!(record.saga.legs.len(), 3);
    assert_eq!(
        record.summary(),
        "Invoice 12345 paid 10.00 USD: card A ·4242 10.00 \
         (card A replaced card D after insufficient funds)"
    );
}

/// Request ids are deterministic per payment, leg, attempt and operation, and an operation
/// in flight is offered again with the same id (a re-send, not a new operation).
#[test]
fn steps_in_flight_are_resent_with_the_same_request_id() {
    let mut record = record(&[("tok_a", 500)], &[("tok_a", "card A", "4242")]);
    let (first, events) = record.next_steps(now()).unwrap();
    assert_eq!(first.len(), 1);
    assert!(first[0].new);
    assert_eq!(first[0].request_id, "pay_x/leg/1/attempt/1/authorize");
    assert!(
        events
            .iter()
            .any(|e| e.kind == EventKind::PaymentAuthorizing)
    );
    let (again, _) = record.next_steps(now()).unwrap();
    assert_eq!(again.len(), 1);
    assert!(!again[0].new);
    assert_eq!(again[0].request_id, first[0].request_id);
    assert_eq!(again[0].attempt, Some(1));
    // The answer of another attempt than the pending one is not this attempt's.
    let stale = AuthorizeAnswer::Refused { reason: "X".into() };
    assert!(
        record
            .record_authorization(0, Some(7), stale, now())
            .unwrap()
            .is_none()
    );
    approve(&mut record, 0, 500, "4242");
    let (capture, _) = record.next_steps(now()).unwrap();
    assert_eq!(capture[0].request_id, "pay_x/leg/1/capture");
    assert_eq!(capture[0].charge_id.as_deref(), Some("ch_0"));
    // A duplicate answer changes nothing.
    assert!(
        record
            .record_authorization(
                0,
                Some(1),
                AuthorizeAnswer::Refused { reason: "X".into() },
                now()
            )
            .unwrap()
            .is_none()
    );
}

/// Under ALL_OR_NOTHING a shortfall voids the holds; the summary says no financial effect
/// and the voids release the spend they held.
#[test]
fn a_shortfall_voids_and_says_so() {
    let mut record = record(
        &[("tok_a", 500), ("tok_b", 500)],
        &[("tok_a", "card A", "4242"), ("tok_b", "card B", "1881")],
    );
    record.saga.fallback = false;
    let mut released = 0;
    for _ in 0..10 {
        let (steps, _) = record.next_steps(now()).unwrap();
        if steps.is_empty() {
            break;
        }
        for step in steps {
            let result = match step.command {
                Command::Authorize(leg) => {
                    let answer = if step.token == "tok_a" {
                        AuthorizeAnswer::Approved {
                            charge_id: "ch_a".into(),
                            approved: step.amount,
                            authorization_code: "A".into(),
                            processor_reference: "sbx_ref".into(),
                            last4: "4242".into(),
                        }
                    } else {
                        AuthorizeAnswer::Declined {
                            charge_id: "ch_b".into(),
                            last4: "1881".into(),
                            decline_code: "BLOCKED".into(),
                            next_action: NextAction::TryNextCard,
                        }
                    };
                    record
                        .record_authorization(leg, None, answer, now())
                        .unwrap()
                }
                command => record.record_settlement(command, now()).unwrap(),
            };
            let (_, _, spend) = result.unwrap();
            released -= spend.iter().map(|s| s.delta).sum::<i64>();
        }
    }
    assert_eq!(record.saga.state, PaymentState::Failed);
    assert_eq!(
        released, 1000,
        "the decline and the void release every hold"
    );
    assert_eq!(
        record.summary(),
        "Invoice 12345 not paid (10.00 USD): card B ·1881 declined 5.00 USD (blocked); \
         no financial effect"
    );
}

/// Refunds are spread in proportion to what each leg captured, sum exactly, cannot exceed
/// what is refundable, and move the status to PARTIALLY_REFUNDED then REFUNDED.
#[test]
fn refunds_spread_over_captured_legs() {
    let mut record = record(
        &[("tok_a", 700), ("tok_b", 1300), ("tok_c", 50)],
        &[
            ("tok_a", "card A", "4242"),
            ("tok_b", "card B", "1881"),
            ("tok_c", "card C", "0005"),
        ],
    );
    run(&mut record, |step| AuthorizeAnswer::Approved {
        charge_id: format!("ch_{}", step.token),
        approved: step.amount,
        authorization_code: "A".into(),
        processor_reference: "sbx_ref".into(),
        last4: "0000".into(),
    });
    assert_eq!(record.saga.state, PaymentState::Succeeded);
    let (refund, _) = record
        .plan_refund(
            "prf_1".into(),
            "r1".into(),
            Some(1001),
            String::new(),
            actor("payer", "refunder"),
            now(),
        )
        .unwrap();
    let parts: Vec<(usize, i64)> = refund.parts.iter().map(|p| (p.leg, p.amount)).collect();
    assert_eq!(parts.iter().map(|(_, a)| a).sum::<i64>(), 1001);
    assert_eq!(parts, vec![(0, 342), (1, 635), (2, 24)]);
    assert_eq!(
        record.plan_refund(
            "prf_2".into(),
            "r2".into(),
            Some(1050),
            String::new(),
            actor("payer", "refunder"),
            now()
        ),
        Err(RefundError::AmountExceedsRefundable)
    );
    for step in record.refund_steps() {
        record
            .record_refund(&step, true, Some("rf".into()), now())
            .unwrap();
    }
    assert_eq!(record.status(), Status::PartiallyRefunded);
    record
        .plan_refund(
            "prf_2".into(),
            "r2".into(),
            None,
            String::new(),
            actor("payer", "refunder"),
            now(),
        )
        .unwrap();
    for step in record.refund_steps() {
        record
            .record_refund(&step, true, Some("rf".into()), now())
            .unwrap();
    }
    assert_eq!(record.status(), Status::Refunded);
    assert_eq!(record.refunded(), 2050);
    assert!(record.is_settled());
}

fn actor(role: &str, name: &str) -> Actor {
    Actor {
        name: name.into(),
        role: role.into(),
    }
}

/// Every event names whose call caused it: the creator for the payment's own events, the
/// requester for a refund's, the author for a note's; notes are appended, up to the limit.
#[test]
fn events_name_their_actor_and_notes_append() {
    let mut record = record(&[("tok_a", 1000)], &[("tok_a", "card A", "0001")]);
    let created = record.event(EventKind::PaymentCreated, None, None, None);
    assert_eq!(record.actor_of(&created), Some(&actor("payer", "billing")));
    let (index, event) = record
        .add_note("called the bank".into(), actor("treasury", "alice"), now())
        .unwrap();
    assert_eq!(
        (index, event.kind, event.note),
        (0, EventKind::NoteAdded, Some(0))
    );
    assert_eq!(record.actor_of(&event), Some(&actor("treasury", "alice")));
    assert_eq!(event.summary, "Note by alice");
    for i in 1..NOTES_MAX {
        assert!(
            record
                .add_note(format!("note {i}"), actor("treasury", "bob"), now())
                .is_some()
        );
    }
    assert!(
        record
            .add_note("one more".into(), actor("treasury", "bob"), now())
            .is_none()
    );
    assert_eq!(record.notes.len(), NOTES_MAX);
    assert_eq!(record.notes[0].text, "called the bank");

    // Long notes stop at the payment's text budget, whatever their number.
    let mut record = self::record(&[("tok_a", 1000)], &[("tok_a", "card A", "0001")]);
    let long = "x".repeat(1000);
    for _ in 0..NOTES_BYTES_MAX / 1000 {
        assert!(
            record
                .add_note(long.clone(), actor("treasury", "bob"), now())
                .is_some()
        );
    }
    assert!(
        record
            .add_note(long, actor("treasury", "bob"), now())
            .is_none()
    );
}

/// The effect of bookings on a ledger kept in memory: per account, (pending debits, pending
/// credits, posted debits, posted credits), and each pending transfer's amount.
#[derive(Default)]
struct Books {
    accounts: std::collections::BTreeMap<String, [i64; 4]>,
    pending: std::collections::BTreeMap<String, (String, String, i64)>,
}

impl Books {
    /// Applies `transfers`, checking each moves money within one currency (every account id
    /// ends with its currency code).
    fn book(&mut self, transfers: &[tandem_ledger::types::Transfer]) {
        use tandem_ledger::types::TransferKind as K;
        let currency = |id: &str| id[id.len() - 3..].to_owned();
        for transfer in transfers {
            let (debit, credit, amount, posted) = match &transfer.kind {
                K::Single {
                    debit,
                    credit,
                    amount,
                } => (
                    debit.as_str().to_owned(),
                    credit.as_str().to_owned(),
                    *amount,
                    true,
                ),
                K::Pending {
                    debit,
                    credit,
                    amount,
                    ..
                } => {
                    self.pending.insert(
                        transfer.id.as_str().to_owned(),
                        (
                            debit.as_str().to_owned(),
                            credit.as_str().to_owned(),
                            *amount,
                        ),
                    );
                    (
                        debit.as_str().to_owned(),
                        credit.as_str().to_owned(),
                        *amount,
                        false,
                    )
                }
                K::PostPending { pending_id, amount } => {
                    let (debit, credit, held) = self.pending.remove(pending_id.as_str()).unwrap();
                    let posted = amount.unwrap_or(held);
                    assert!(posted <= held, "{transfer:?}");
                    self.move_money(&debit, &credit, -held, false);
                    (debit, credit, posted, true)
                }
                K::VoidPending { pending_id } => {
                    let (debit, credit, held) = self.pending.remove(pending_id.as_str()).unwrap();
                    (debit, credit, -held, false)
                }
            };
            assert_eq!(currency(&debit), currency(&credit), "{transfer:?}");
            assert!(amount != 0, "{transfer:?}");
            self.move_money(&debit, &credit, amount, posted);
        }
    }

    fn move_money(&mut self, debit: &str, credit: &str, amount: i64, posted: bool) {
        let column = if posted { 2 } else { 0 };
        self.accounts.entry(debit.to_owned()).or_default()[column] += amount;
        self.accounts.entry(credit.to_owned()).or_default()[column + 1] += amount;
    }

    /// Posted debits less posted credits.
    fn net(&self, id: &str) -> i64 {
        self.accounts.get(id).map_or(0, |a| a[2] - a[3])
    }
}

proptest::proptest! {
    /// A converted leg through the record and its bookings, at a random rate into currencies
    /// of exponents 0, 2 and 3, approved in full or in part, then refunded in random parts:
    /// every transfer stays within one currency; the capture's rounding is at most one minor
    /// unit; the card pays no more than its hold; and once refunded in full the card got back
    /// exactly what it paid and every account is back at zero.
    #[test]
    fn converted_legs_book_balanced_and_refund_exactly(
        amount in 1i64..5_000_000,
        mantissa in 1i64..50_000_000,
        scale in 0u32..8,
        to in 0usize..3,
        approved_percent in proptest::option::of(1i64..100),
        shares in proptest::collection::vec(1i64..100, 1..5),
        last_unit_apart in proptest::prelude::any::<bool>(),
    ) {
        use crate::domain::booking::{self, BookingContext};
        let to = Currency::parse(["JPY", "EUR", "BHD"][to]).unwrap();
        let Ok(rate) = tandem_money::fx::Rate::new(rust_decimal::Decimal::new(mantissa, scale))
        else {
            return Ok(());
        };
        let mut record = record(&[("tok_x", amount)], &[("tok_x", "card X", "4444")]);
        record.saga.members[0].currency = to;
        record.saga.completion = Completion::AllowPartial;
        record.saga.quotes = vec![crate::domain::fx::Quote {
            from: usd(),
            to,
            rate,
            source: "test".into(),
            as_of: now(),
        }];
        let ask = record.saga.ask(0);
        let context = BookingContext {
            payment_id: "pay_x".into(),
            invoice_id: "12345".into(),
            billing_account: "acct".into(),
            cost_center: None,
            processor_reference: None,
        };
        let mut books = Books::default();
        for _ in 0..10 {
            let (steps, _) = record.next_steps(now()).unwrap();
            if steps.is_empty() {
                break;
            }
            for step in steps {
                let recorded = match step.command {
                    Command::Authorize(leg) => {
                        proptest::prop_assert_eq!(step.currency, to);
                        proptest::prop_assert_eq!(step.amount, ask);
                        let approved = approved_percent
                            .map_or(ask, |percent| (ask * percent / 100).max(1));
                        let answer = AuthorizeAnswer::Approved {
                            charge_id: "ch_x".into(),
                            approved,
                            authorization_code: "A".into(),
                            processor_reference: "ref".into(),
                            last4: "4444".into(),
                        };
                        record.record_authorization(leg, None, answer, now())
                    }
                    command => record.record_settlement(command, now()),
                };
                let (outcome, _, _) = recorded.unwrap().unwrap();
                books.book(&booking::booking(&context, &record.saga, &outcome).unwrap());
            }
        }
        proptest::prop_assert!(record.is_settled());
        proptest::prop_assert!(books.pending.is_empty());
        if record.saga.legs[0].approved == 0 {
            // A hold worth less than a cent covers nothing: voided, the payment failed, no
            // money moved.
            proptest::prop_assert_eq!(record.saga.state, crate::domain::saga::PaymentState::Failed);
            for (id, balances) in &books.accounts {
                proptest::prop_assert_eq!(balances[2] - balances[3], 0, "{}", id);
            }
            return Ok(());
        }
        let card = format!("funding_source:tok_x:{to}");
        let clearing_to = format!("fx_clearing:USD-{to}:{to}");
        let rounding = format!("fx_rounding:{to}");
        let captured = record.saga.capture(0);
        let covered = record.saga.legs[0].approved;
        proptest::prop_assert!(covered >= 1 && covered <= amount);
        proptest::prop_assert!(captured <= record.saga.hold(0));
        proptest::prop_assert_eq!(books.net(&card), captured);
        proptest::prop_assert_eq!(books.net("receivable:acct:USD"), -covered);
        proptest::prop_assert_eq!(books.net(&format!("receivable:acct:{to}")), 0);
        proptest::prop_assert!((-1..=0).contains(&books.net(&rounding)));

        // Refunds in parts proportional to `shares`, the last taking what is left; or all but
        // the last minor unit, then that unit (its conversion may be nothing more).
        let shares = if last_unit_apart && covered > 1 {
            vec![covered - 1, 1]
        } else {
            shares
        };
        let total: i64 = shares.iter().sum();
        let mut left = covered;
        for (i, share) in shares.iter().enumerate() {
            let part = if i + 1 == shares.len() { left } else { covered * share / total };
            if part == 0 || left == 0 {
                continue;
            }
            left -= part;
            record
                .plan_refund(
                    format!("prf_{i}"),
                    format!("r{i}"),
                    Some(part),
                    String::new(),
                    actor("payer", "refunder"),
                    now(),
                )
                .unwrap();
            for step in record.refund_steps() {
                proptest::prop_assert_eq!(step.currency, to);
                proptest::prop_assert!(step.amount >= 0);
                record.record_refund(&step, true, Some("rf".into()), now()).unwrap();
                let part = record.refunded_part(&step, None);
                books.book(&booking::refund_booking(&context, &record.saga, 0, part).unwrap());
            }
        }
        proptest::prop_assert_eq!(record.status(), Status::Refunded);
        proptest::prop_assert_eq!(record.card_refunded(0), captured);
        for (id, balances) in &books.accounts {
            proptest::prop_assert_eq!(balances[2] - balances[3], 0, "{} {:?}", id, balances);
        }
        proptest::prop_assert_eq!(books.net(&clearing_to), 0);
    }
}

fn assessment(action: crate::domain::risk::Action) -> crate::domain::risk::Assessment {
    crate::domain::risk::Assessment {
        action,
        score: 50,
        fired: vec![crate::domain::risk::Fired {
            rule: "big".into(),
            action,
            score: 50,
            feature: "billing_account.median_amount".into(),
            value: "10.00 USD".into(),
            threshold: "5 x 1.00 USD".into(),
            explanation: "10.00 USD is more than 5 times the median".into(),
        }],
        policy_version: 2,
        default_policy: false,
        assess_time: now(),
    }
}

fn approved(step: &Step) -> AuthorizeAnswer {
    AuthorizeAnswer::Approved {
        charge_id: format!("ch_{}", step.token),
        approved: step.amount,
        authorization_code: "A".into(),
        processor_reference: "sbx_ref".into(),
        last4: "0001".into(),
    }
}

/// A blocked payment ends FAILED before any step, with its reason and the rule in its events
/// and summary; nothing is ever sent.
#[test]
fn a_blocked_payment_sends_nothing() {
    use crate::domain::risk::Action;
    let mut record = record(&[("tok_a", 1000)], &[("tok_a", "card A", "0001")]);
    let events = record.assess(assessment(Action::Block), 60, now());
    let kinds: Vec<EventKind> = events.iter().map(|e| e.kind).collect();
    assert_eq!(kinds, [EventKind::RiskAssessed, EventKind::PaymentFailed]);
    assert!(events[0].summary.contains("risk BLOCK, score 50: big"));
    assert_eq!(record.saga.state, PaymentState::Failed);
    assert_eq!(record.failure_reason, Some(FailureReason::RiskBlocked));
    assert!(
        record.summary().contains("blocked by risk BLOCK"),
        "{}",
        record.summary()
    );
    let (steps, more) = record.next_steps(now()).unwrap();
    assert!(steps.is_empty() && more.is_empty());
    assert!(record.attempts.is_empty());
}

/// A reviewed payment authorizes, waits in review without capturing, and moves on only by a
/// verdict from another identity than its creator: approval captures; a rejection, or the
/// expiry, voids every hold.
#[test]
fn a_reviewed_payment_waits_for_its_verdict() {
    use crate::domain::risk::Action;
    use crate::domain::saga::Verdict;
    let members = [("tok_a", "card A", "0001"), ("tok_b", "card B", "0002")];
    let reviewer = actor("reviewer", "ana");
    for verdict in [Verdict::Approve, Verdict::Reject, Verdict::Expired] {
        let mut record = record(&[("tok_a", 600), ("tok_b", 400)], &members);
        let events = record.assess(assessment(Action::Review), 60, now());
        assert_eq!(events.len(), 1);
        // Both legs authorize; then nothing is sent.
        run(&mut record, approved);
        assert_eq!(record.saga.state, PaymentState::InReview);
        let review = record.review.clone().unwrap();
        assert_eq!(
            review.expire_time,
            Some(now() + time::Duration::seconds(60))
        );
        assert!(
            record.summary().contains("in review"),
            "{}",
            record.summary()
        );
        assert_eq!(
            record.decide_review(
                Verdict::Approve,
                Some(actor("reviewer", "billing")),
                None,
                now()
            ),
            Err(review::ReviewError::SameIdentity),
            "the creator's own name may not review"
        );
        // Before its expiry, the review waits; from it on, no reviewer may decide.
        let later = now() + time::Duration::seconds(59);
        let (steps, events) = record.next_steps(later).unwrap();
        assert!(steps.is_empty() && events.is_empty());
        let expired = now() + time::Duration::seconds(60);
        assert_eq!(
            record
                .clone()
                .decide_review(Verdict::Approve, Some(reviewer.clone()), None, expired),
            Err(review::ReviewError::NotInReview),
            "an expired review takes no approval"
        );
        let events = match verdict {
            Verdict::Expired => record.next_steps(expired).unwrap().1,
            _ => record
                .decide_review(
                    verdict,
                    Some(reviewer.clone()),
                    Some("checked".into()),
                    later,
                )
                .unwrap(),
        };
        assert_eq!(events[0].kind, EventKind::PaymentReviewed);
        assert_eq!(
            record.actor_of(&events[0]),
            (verdict != Verdict::Expired).then_some(&reviewer)
        );
        run(&mut record, approved);
        match verdict {
            Verdict::Approve => {
                assert_eq!(record.saga.state, PaymentState::Succeeded);
                assert_eq!(record.captured(), 1000);
                assert_eq!(record.failure_reason, None);
            }
            _ => {
                assert_eq!(record.saga.state, PaymentState::Failed);
                assert_eq!(record.captured(), 0);
                assert!(record.saga.legs.iter().all(|l| l.state == LegState::Voided));
                let reason = if verdict == Verdict::Reject {
                    FailureReason::ReviewRejected
                } else {
                    FailureReason::ReviewExpired
                };
                assert_eq!(record.failure_reason, Some(reason));
            }
        }
        assert_eq!(
            record.decide_review(Verdict::Approve, Some(reviewer.clone()), None, later),
            Err(review::ReviewError::NotInReview),
            "a verdict is given once"
        );
    }
}

/// A quiet assessment (nothing fired) is kept on the payment, with no event of its own; one
/// that found something is an event even when it allows the payment.
#[test]
fn only_an_assessment_that_found_something_is_an_event() {
    use crate::domain::risk::Action;
    let mut record = record(&[("tok_a", 1000)], &[("tok_a", "card A", "0001")]);
    let mut quiet = assessment(Action::Allow);
    quiet.fired.clear();
    quiet.score = 0;
    assert!(record.assess(quiet, 60, now()).is_empty());
    assert_eq!(record.risk.as_ref().map(|r| r.action), Some(Action::Allow));
    assert_eq!(record.saga.state, PaymentState::Pending);
    let mut record = super::tests::record(&[("tok_a", 1000)], &[("tok_a", "card A", "0001")]);
    let events = record.assess(assessment(Action::Allow), 60, now());
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, EventKind::RiskAssessed);
    assert!(!record.saga.review);
}

/// A one-card payment whose only card is declined (`INSUFFICIENT_FUNDS`, no fallback), a
/// second between each step: the record and every event it wrote, in order.
pub(crate) fn declined_then_failed() -> (PaymentRecord, Vec<super::events::Event>) {
    let mut record = record(&[("tok_a", 500)], &[("tok_a", "card A", "4242")]);
    record.saga.fallback = false;
    let mut events = vec![record.event(EventKind::PaymentCreated, None, None, None)];
    let mut at = now();
    for _ in 0..10 {
        at += time::Duration::seconds(1);
        let (steps, mut more) = record.next_steps(at).unwrap();
        events.append(&mut more);
        if steps.is_empty() {
            break;
        }
        for step in steps {
            let Command::Authorize(leg) = step.command else {
                panic!("only an authorization is sent");
            };
            let answer = AuthorizeAnswer::Declined {
                charge_id: "ch_a".into(),
                last4: "4242".into(),
                decline_code: "INSUFFICIENT_FUNDS".into(),
                next_action: NextAction::TryNextCard,
            };
            at += time::Duration::seconds(1);
            if let Some((_, mut more, _)) =
                record.record_authorization(leg, None, answer, at).unwrap()
            {
                events.append(&mut more);
            }
        }
    }
    assert_eq!(record.saga.state, PaymentState::Failed);
    (record, events)
}

/// Each change of state says, on its first state event, the state it left and how long the
/// payment was in it; the record keeps when it entered the one it is in.
#[test]
fn state_events_say_the_stage_left() {
    let (record, events) = declined_then_failed();
    let stages: Vec<_> = events
        .iter()
        .filter_map(|e| {
            e.left
                .map(|(state, time)| (e.kind, state, time.whole_seconds()))
        })
        .collect();
    assert_eq!(
        stages,
        [
            (EventKind::PaymentAuthorizing, PaymentState::Pending, 1),
            (EventKind::PaymentFailed, PaymentState::Authorizing, 1),
        ],
        "{events:#?}"
    );
    assert_eq!(record.state_time, Some(now() + time::Duration::seconds(2)));
    assert_eq!(record.complete_time, record.state_time);
}

/// A capture the vault refuses is sent again with the same request id until it was refused
/// `refusals_max` times; then the payment stops in NEEDS_OPERATOR with its event and sends
/// nothing. An operator's retry sends it under a new request id; a confirmation records and
/// settles it. Either way the payment says who decided and why.
#[test]
fn a_refused_capture_waits_for_an_operator() {
    let setup = || {
        let mut record = record(
            &[("tok_a", 700), ("tok_b", 300)],
            &[("tok_a", "card A", "4242"), ("tok_b", "card B", "1881")],
        );
        for leg in 0..2 {
            record.next_steps(now()).unwrap();
            approve(&mut record, leg, [700, 300][leg], ["4242", "1881"][leg]);
        }
        let (captures, _) = record.next_steps(now()).unwrap();
        assert_eq!(captures.len(), 2);
        record
            .record_settlement(Command::Capture(0), now())
            .unwrap()
            .unwrap();
        record
    };
    let refuse = |record: &mut PaymentRecord| {
        record
            .record_refusal(
                Command::Capture(1),
                "CHARGE_NOT_AUTHORIZED".into(),
                3,
                now(),
            )
            .expect("the leg waits for its capture")
    };
    let mut record = setup();
    for _ in 0..2 {
        assert!(refuse(&mut record).is_empty());
        let (again, _) = record.next_steps(now()).unwrap();
        assert_eq!(again.len(), 1);
        assert_eq!(again[0].request_id, "pay_x/leg/2/capture");
    }
    let events = refuse(&mut record);
    assert_eq!(record.saga.state, PaymentState::NeedsOperator);
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::PaymentNeedsOperator]
    );
    assert_eq!(
        events[0].summary,
        "Needs an operator: the vault refused the capture of card B ·1881 3 times \
         (CHARGE_NOT_AUTHORIZED)"
    );
    assert!(
        record.next_steps(now()).unwrap().0.is_empty(),
        "nothing is sent"
    );
    assert!(!record.is_settled());
    assert!(
        refuse(&mut record).is_empty(),
        "a late refusal changes no state"
    );
    assert_eq!(record.legs[1].refusals, 3, "nor counts");
    let ana = actor("treasury", "ana");
    let (events, confirmed) = record
        .resolve(Decision::Retry, ana.clone(), "processor back".into(), now())
        .unwrap();
    assert!(confirmed.is_empty());
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [EventKind::PaymentResolved, EventKind::PaymentCapturing]
    );
    assert_eq!(
        events[0].summary,
        "Resolved by treasury/ana: sent again: processor back"
    );
    assert_eq!(record.actor_of(&events[0]), Some(&ana));
    let (again, _) = record.next_steps(now()).unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].request_id, "pay_x/leg/2/capture/resend/1");
    assert_eq!(
        (record.legs[1].refusals, record.legs[1].refusal.as_deref()),
        (0, None)
    );
    assert_eq!(
        record.resolve(Decision::Retry, ana.clone(), "again".into(), now()),
        Err(operator::ResolveError::NotNeedingOperator)
    );

    let mut record = setup();
    for _ in 0..3 {
        refuse(&mut record);
    }
    let (events, confirmed) = record
        .resolve(
            Decision::Confirm,
            ana,
            "captured at the processor".into(),
            now(),
        )
        .unwrap();
    assert_eq!(
        events.iter().map(|e| e.kind).collect::<Vec<_>>(),
        [
            EventKind::PaymentResolved,
            EventKind::PaymentCapturing,
            EventKind::LegCaptured,
            EventKind::PaymentSucceeded
        ]
    );
    assert_eq!(confirmed.len(), 1);
    assert_eq!(confirmed[0].0, Outcome::Captured { leg: 1 });
    assert_eq!(record.saga.state, PaymentState::Succeeded);
    assert_eq!(record.captured(), 1000);
    assert!(record.next_steps(now()).unwrap().0.is_empty());
}
