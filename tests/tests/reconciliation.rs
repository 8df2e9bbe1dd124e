//! Reconciliation end to end (DESIGN section 11): a day of payments, captures and refunds
//! reconciles with every settlement record matched; each corruption the sandbox acquirer can
//! inject is found as exactly one discrepancy of its class with its amounts; a proposed and
//! approved adjustment resolves it (four eyes), the next run says so, and the ledger's
//! invariants hold throughout.

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::orchestrator::v1::reconciliation_service_client::ReconciliationServiceClient;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_proto::tandem::vault::v1 as vault_pb;
use tandem_proto::tandem::vault::v1::charge_service_client::ChargeServiceClient;
use tandem_proto::tandem::vault::v1::sandbox_service_client::SandboxServiceClient;
use tandem_tests::stack::{Stack, group, member, policy, read_feed, state, usd};
use tandem_tests::{RunningOrchestrator, RunningVault, TestDatabase, orchestrator_settings, pki};
use tandem_tls::identity::Role;
use tonic::transport::Channel;
use tonic_types::StatusExt as _;

use pb::AllocationStrategy as S;
use pb::Completion as C;

type Recon = ReconciliationServiceClient<Channel>;

const VISA: &str = "4242424242424242";
const MASTERCARD: &str = "5555555555554444";
const AMEX: &str = "378282246310005";

/// A stack whose orchestrator gives unreported entries `grace_s` seconds, with a three-card
/// group.
async fn stack(grace_s: u64) -> (Stack, pb::CardGroup, Vec<String>) {
    let vault = RunningVault::start().await;
    let database = TestDatabase::create().await;
    let mut settings = orchestrator_settings(&database, &vault);
    settings.reconciliation.grace_s = grace_s;
    let orchestrator = RunningOrchestrator::start_with(settings, database, None).await;
    let stack = Stack {
        vault,
        orchestrator,
    };
    let mut tokens = Vec::new();
    for pan in [VISA, MASTERCARD, AMEX] {
        tokens.push(stack.vault.tokenize(pan).await);
    }
    let group = stack
        .create_group(group(
            vec![
                member(&tokens[0], "card A", 1, None, None),
                member(&tokens[1], "card B", 2, None, None),
                member(&tokens[2], "card C", 3, None, None),
            ],
            policy(
                S::Weighted,
                &[(&tokens[0], 5000), (&tokens[1], 3000), (&tokens[2], 2000)],
                C::AllOrNothing,
            ),
        ))
        .await;
    (stack, group, tokens)
}

fn today() -> String {
    time::OffsetDateTime::now_utc().date().to_string()
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

async fn recon(stack: &Stack, role: Role) -> Recon {
    ReconciliationServiceClient::new(stack.orchestrator.channel(role).await)
}

/// Runs today's reconciliation as `treasury`.
async fn run(stack: &Stack) -> pb::ReconciliationRun {
    recon(stack, Role::Treasury)
        .await
        .run_reconciliation(pb::RunReconciliationRequest {
            request_id: request_id(),
            processor: "sandbox".into(),
            settlement_date: today(),
        })
        .await
        .expect("run reconciliation")
        .into_inner()
        .run
        .expect("run")
}

/// The counts of a run, in `DiscrepancyClass` order, then records and resolved.
fn counts(run: &pb::ReconciliationRun) -> [i64; 9] {
    [
        run.matched,
        run.missing_in_ledger,
        run.missing_at_processor,
        run.amount_mismatch,
        run.currency_mismatch,
        run.duplicate_settlement,
        run.pending,
        run.records,
        run.resolved,
    ]
}

/// Every discrepancy of `run`'s day in `state` (every state if unspecified), paged.
async fn discrepancies(
    stack: &Stack,
    run: &pb::ReconciliationRun,
    state: pb::DiscrepancyState,
) -> Vec<pb::Discrepancy> {
    let mut client = recon(stack, Role::Reader).await;
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_discrepancies(pb::ListDiscrepanciesRequest {
                page_size: 2,
                page_token,
                run_id: run.id.clone(),
                state: state as i32,
                ..Default::default()
            })
            .await
            .expect("list discrepancies")
            .into_inner();
        all.extend(page.discrepancies);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// The one open discrepancy after a fresh run, checked to be of `class`.
async fn the_open_one(
    stack: &Stack,
    class: pb::DiscrepancyClass,
) -> (pb::ReconciliationRun, pb::Discrepancy) {
    let run = run(stack).await;
    let open = discrepancies(stack, &run, pb::DiscrepancyState::Open).await;
    assert_eq!(open.len(), 1, "{open:#?}");
    assert_eq!(open[0].class, class as i32, "{:#?}", open[0]);
    (run, open.into_iter().next().unwrap())
}

/// Today's capture records in the sandbox's settlement report, in order.
async fn capture_records(stack: &Stack) -> Vec<vault_pb::SettlementRecord> {
    let mut sandbox = SandboxServiceClient::new(stack.vault.channel(Role::Admin).await);
    sandbox
        .list_settlement_records(vault_pb::ListSettlementRecordsRequest {
            page_size: 1000,
            start_date: today(),
            end_date: today(),
            r#type: vault_pb::SettlementRecordType::Capture as i32,
            ..Default::default()
        })
        .await
        .expect("list settlement records")
        .into_inner()
        .records
}

async fn corrupt(
    stack: &Stack,
    record: &vault_pb::SettlementRecord,
    corruption: vault_pb::SettlementCorruption,
    amount_minor: i64,
    currency: &str,
) -> vault_pb::CorruptSettlementRecordResponse {
    SandboxServiceClient::new(stack.vault.channel(Role::Admin).await)
        .corrupt_settlement_record(vault_pb::CorruptSettlementRecordRequest {
            request_id: request_id(),
            settlement_date: today(),
            record_id: record.id.clone(),
            corruption: corruption as i32,
            amount_minor,
            currency: currency.into(),
        })
        .await
        .expect("corrupt settlement record")
        .into_inner()
}

fn money(currency: &str, minor_units: i64) -> types::Money {
    types::Money {
        currency_code: currency.into(),
        minor_units,
    }
}

/// Proposes (as `treasury`) and approves (as the set's approver) the correction of
/// `discrepancy`, and returns the approved adjustment.
async fn adjust(stack: &Stack, discrepancy: &pb::Discrepancy) -> pb::Adjustment {
    let correction = discrepancy.correction.clone().expect("a correction");
    adjust_by(stack, discrepancy, correction.minor_units.abs()).await
}

/// As [`adjust`], stating `amount` minor units of the correction's currency.
async fn adjust_by(stack: &Stack, discrepancy: &pb::Discrepancy, amount: i64) -> pb::Adjustment {
    let correction = discrepancy.correction.clone().expect("a correction");
    let proposed = recon(stack, Role::Treasury)
        .await
        .propose_adjustment(pb::ProposeAdjustmentRequest {
            request_id: request_id(),
            discrepancy_id: discrepancy.id.clone(),
            amount: Some(money(&correction.currency_code, amount)),
            reason: "per the acquirer's settlement file".into(),
        })
        .await
        .expect("propose adjustment")
        .into_inner()
        .adjustment
        .expect("adjustment");
    assert_eq!(proposed.state, pb::AdjustmentState::Proposed as i32);
    let approved = recon(stack, Role::Approver)
        .await
        .approve_adjustment(pb::ApproveAdjustmentRequest {
            request_id: request_id(),
            adjustment_id: proposed.id.clone(),
        })
        .await
        .expect("approve adjustment")
        .into_inner()
        .adjustment
        .expect("adjustment");
    assert_eq!(approved.state, pb::AdjustmentState::Approved as i32);
    let decider = approved.decider.clone().expect("decider");
    assert_eq!(
        (decider.name.as_str(), decider.role.as_str()),
        ("test-approver", "approver")
    );
    let proposer = approved.proposer.clone().expect("proposer");
    assert_eq!(
        (proposer.name.as_str(), proposer.role.as_str()),
        ("test", "treasury")
    );
    approved
}

/// The ledger transfers an adjustment posted: debit, credit, amount, currency.
async fn posted(stack: &Stack, adjustment: &pb::Adjustment) -> Vec<(String, String, i64, String)> {
    let pool = stack.orchestrator.pool().await;
    let mut posted = Vec::new();
    for id in &adjustment.ledger_entry_ids {
        let (debit, credit, amount, currency): (String, String, i64, String) = sqlx::query_as(
            "SELECT debit_account_id, credit_account_id, amount, currency FROM ledger_transfers \
             WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("adjustment transfer");
        posted.push((debit, credit, amount, currency));
    }
    pool.close().await;
    posted
}

/// A day of payments with refunds reconciles with every record matched, the same when run
/// again; then each corruption of the day's file is exactly one discrepancy, which an approved
/// adjustment resolves, and a run after that shows it resolved.
#[tokio::test]
async fn a_day_reconciles_and_each_corruption_is_found_and_corrected() {
    let (stack, group, tokens) = stack(0).await;
    let first = stack.pay(&group.id, "INV-1", 10_000, None).await;
    let second = stack.pay(&group.id, "INV-2", 3_333, None).await;
    assert_eq!((state(&first), state(&second)), ("SUCCEEDED", "SUCCEEDED"));
    stack
        .payments()
        .await
        .refund_payment(pb::RefundPaymentRequest {
            request_id: request_id(),
            payment_id: first.id.clone(),
            amount: Some(usd(2_500)),
            reason: "credit note".into(),
        })
        .await
        .expect("refund");
    stack.settled(&first.id).await;

    // Six captures (three legs each) and three refund parts: all matched, twice the same.
    let clean = run(&stack).await;
    assert_eq!(counts(&clean), [9, 0, 0, 0, 0, 0, 0, 9, 0], "{clean:#?}");
    assert!(
        discrepancies(&stack, &clean, pb::DiscrepancyState::Unspecified)
            .await
            .is_empty()
    );
    let again = run(&stack).await;
    assert_ne!(again.id, clean.id);
    assert_eq!(counts(&again), counts(&clean));
    let actor = again.actor.clone().expect("actor");
    assert_eq!(
        (actor.name.as_str(), actor.role.as_str()),
        ("test", "treasury")
    );

    let records = capture_records(&stack).await;
    assert_eq!(records.len(), 6);
    let amount = |r: &vault_pb::SettlementRecord| r.amount.as_ref().unwrap().minor_units;

    // An amount changed: the record settled 7 more than the leg captured.
    corrupt(
        &stack,
        &records[0],
        vault_pb::SettlementCorruption::ChangeAmount,
        amount(&records[0]) + 7,
        "",
    )
    .await;
    let (_, found) = the_open_one(&stack, pb::DiscrepancyClass::AmountMismatch).await;
    assert_eq!(found.record_id, records[0].id);
    assert_eq!(
        found.processor_reference,
        records[0].authorization_reference
    );
    assert_eq!(found.settled_amount, Some(usd(amount(&records[0]) + 7)));
    assert_eq!(found.ledger_amount, Some(usd(amount(&records[0]))));
    assert_eq!(found.correction, Some(usd(7)));
    assert_eq!(found.payment_id, first.id);
    let adjustment = adjust(&stack, &found).await;
    let leg: usize = found.leg_id.rsplit('/').next().unwrap().parse().unwrap();
    let card_account = format!("funding_source:{}:USD", first.legs[leg - 1].token);
    assert!(tokens.contains(&first.legs[leg - 1].token));
    assert_eq!(
        posted(&stack, &adjustment).await,
        vec![(
            card_account.clone(),
            "receivable:acct-1:USD".to_owned(),
            7,
            "USD".to_owned()
        )]
    );
    let after = run(&stack).await;
    assert_eq!((after.amount_mismatch, after.resolved), (1, 1));
    let all = discrepancies(&stack, &after, pb::DiscrepancyState::Unspecified).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].state, pb::DiscrepancyState::Resolved as i32);
    assert_eq!(all[0].adjustment_id, adjustment.id);
    stack.assert_ledger_invariants().await;

    // A record settled twice.
    let duplicated = corrupt(
        &stack,
        &records[1],
        vault_pb::SettlementCorruption::Duplicate,
        0,
        "",
    )
    .await;
    let copy = duplicated.corrupted.expect("the copy");
    let (_, found) = the_open_one(&stack, pb::DiscrepancyClass::DuplicateSettlement).await;
    assert_eq!(found.record_id, copy.id);
    assert_eq!(found.correction, Some(usd(amount(&records[1]))));
    adjust(&stack, &found).await;

    // A currency changed: the adjustment reverses the USD capture and books the EUR one.
    corrupt(
        &stack,
        &records[2],
        vault_pb::SettlementCorruption::ChangeCurrency,
        0,
        "EUR",
    )
    .await;
    let (_, found) = the_open_one(&stack, pb::DiscrepancyClass::CurrencyMismatch).await;
    assert_eq!(
        found.settled_amount,
        Some(money("EUR", amount(&records[2])))
    );
    assert_eq!(found.correction, Some(money("EUR", amount(&records[2]))));
    let adjustment = adjust(&stack, &found).await;
    let moved = posted(&stack, &adjustment).await;
    assert_eq!(moved.len(), 2, "{moved:?}");
    assert_eq!(
        (moved[0].2, moved[0].3.as_str()),
        (amount(&records[2]), "USD")
    );
    assert_eq!(
        (moved[1].2, moved[1].3.as_str()),
        (amount(&records[2]), "EUR")
    );

    // A record dropped: the ledger's capture is missing at the processor (no grace here).
    corrupt(
        &stack,
        &records[3],
        vault_pb::SettlementCorruption::Drop,
        0,
        "",
    )
    .await;
    let (_, found) = the_open_one(&stack, pb::DiscrepancyClass::MissingAtProcessor).await;
    assert!(found.record_id.is_empty());
    assert_eq!(
        found.processor_reference,
        records[3].authorization_reference
    );
    assert_eq!(found.correction, Some(usd(-amount(&records[3]))));
    assert!(found.ledger_entry_id.ends_with("/capture"), "{found:?}");
    adjust(&stack, &found).await;

    // A charge the orchestrator never booked: missing in the ledger, corrected on the
    // processor's suspense and clearing accounts.
    let mut charges = ChargeServiceClient::new(stack.vault.channel(Role::Orchestrator).await);
    let charge = charges
        .authorize(vault_pb::AuthorizeRequest {
            request_id: request_id(),
            token: tokens[1].clone(),
            amount: Some(usd(4_200)),
            description: "outside Tandem".into(),
            statement_descriptor: "TANDEM".into(),
            reference: "manual".into(),
            ..Default::default()
        })
        .await
        .expect("authorize")
        .into_inner()
        .charge
        .expect("charge");
    charges
        .capture(vault_pb::CaptureRequest {
            request_id: request_id(),
            charge_id: charge.id.clone(),
            amount: Some(usd(4_000)),
        })
        .await
        .expect("partial capture");
    let (_, found) = the_open_one(&stack, pb::DiscrepancyClass::MissingInLedger).await;
    assert_eq!(found.processor_reference, charge.processor_reference);
    assert_eq!(found.settled_amount, Some(usd(4_000)));
    assert!(found.payment_id.is_empty());
    let adjustment = adjust(&stack, &found).await;
    assert_eq!(
        posted(&stack, &adjustment).await,
        vec![(
            "processor_suspense:sandbox:USD".to_owned(),
            "processor_clearing:sandbox:USD".to_owned(),
            4_000,
            "USD".to_owned()
        )]
    );

    // The acquirer then corrects the amount it had changed: the resolved discrepancy opens
    // again with the 7 booked for it left to reverse, and that reversal resolves it.
    corrupt(
        &stack,
        &records[0],
        vault_pb::SettlementCorruption::ChangeAmount,
        amount(&records[0]),
        "",
    )
    .await;
    let (_, reopened) = the_open_one(&stack, pb::DiscrepancyClass::AmountMismatch).await;
    assert_eq!(reopened.record_id, records[0].id);
    assert_eq!(
        (reopened.correction.clone(), reopened.applied.clone()),
        (Some(usd(0)), Some(usd(7)))
    );
    assert!(reopened.adjustment_id.is_empty());
    let reversal = adjust_by(&stack, &reopened, 7).await;
    assert_eq!(
        posted(&stack, &reversal).await,
        vec![(
            "receivable:acct-1:USD".to_owned(),
            card_account.clone(),
            7,
            "USD".to_owned()
        )]
    );

    // Everything found is resolved, and the day run again says the same.
    let last = run(&stack).await;
    assert_eq!(counts(&last), [7, 1, 1, 0, 1, 1, 0, 10, 4], "{last:#?}");
    let rerun = run(&stack).await;
    assert_eq!(counts(&rerun), counts(&last));
    assert!(
        discrepancies(&stack, &rerun, pb::DiscrepancyState::Open)
            .await
            .is_empty()
    );
    stack.assert_ledger_invariants().await;
}

/// A record settled a day late leaves its capture pending within the grace period, and a
/// pending discrepancy has nothing to adjust yet.
#[tokio::test]
async fn a_late_record_is_pending_within_the_grace_period() {
    let (stack, group, _) = stack(86_400).await;
    let payment = stack.pay(&group.id, "INV-1", 10_000, None).await;
    assert_eq!(state(&payment), "SUCCEEDED");
    let records = capture_records(&stack).await;
    let late = corrupt(
        &stack,
        &records[1],
        vault_pb::SettlementCorruption::SettleLate,
        0,
        "",
    )
    .await;
    let moved = late.corrupted.expect("moved record");
    assert_ne!(moved.settlement_date, today());
    let (run, found) = the_open_one(&stack, pb::DiscrepancyClass::Pending).await;
    assert_eq!((run.matched, run.pending, run.records), (2, 1, 2));
    assert_eq!(
        found.processor_reference,
        records[1].authorization_reference
    );
    assert_eq!(found.correction, None);
    let refused = recon(&stack, Role::Treasury)
        .await
        .propose_adjustment(pb::ProposeAdjustmentRequest {
            request_id: request_id(),
            discrepancy_id: found.id.clone(),
            amount: Some(usd(records[1].amount.as_ref().unwrap().minor_units)),
            reason: "settles tomorrow".into(),
        })
        .await
        .expect_err("pending");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        refused.get_details_error_info().unwrap().reason,
        "DISCREPANCY_PENDING"
    );

    // The record arrives in another day's file (here yesterday's, to be run now): matched
    // there, and today's pending discrepancy is cleared by that run, with nothing booked.
    let vault = sqlx::PgPool::connect(&stack.vault.database.url)
        .await
        .expect("vault database");
    sqlx::query("UPDATE sandbox_settlement_records SET settlement_date = $2 WHERE id = $1")
        .bind(&moved.id)
        .bind(
            time::OffsetDateTime::now_utc()
                .date()
                .previous_day()
                .unwrap(),
        )
        .execute(&vault)
        .await
        .expect("the late record settles yesterday");
    vault.close().await;
    let yesterday = recon(&stack, Role::Treasury)
        .await
        .run_reconciliation(pb::RunReconciliationRequest {
            request_id: request_id(),
            processor: "sandbox".into(),
            settlement_date: time::OffsetDateTime::now_utc()
                .date()
                .previous_day()
                .unwrap()
                .to_string(),
        })
        .await
        .expect("run yesterday")
        .into_inner()
        .run
        .unwrap();
    assert_eq!((yesterday.records, yesterday.matched), (1, 1));
    let today = discrepancies(&stack, &run, pb::DiscrepancyState::Unspecified).await;
    assert_eq!(today.len(), 1);
    assert_eq!(today[0].state, pb::DiscrepancyState::Cleared as i32);
    assert_eq!(today[0].last_run_id, yesterday.id);
    let again = self::run(&stack).await;
    assert_eq!((again.matched, again.pending, again.records), (2, 0, 2));
}

/// Four eyes: treasury cannot approve, the proposer's own name cannot approve under another
/// role, an approval sent twice posts once, and a decided adjustment cannot be decided again. A
/// rejection books nothing and opens the discrepancy to a new proposal; every step is an event
/// of the feed naming its caller.
#[tokio::test]
async fn adjustments_need_a_second_identity_and_post_once() {
    let (stack, group, _) = stack(0).await;
    stack.pay(&group.id, "INV-1", 10_000, None).await;
    let records = capture_records(&stack).await;
    corrupt(
        &stack,
        &records[0],
        vault_pb::SettlementCorruption::ChangeAmount,
        1,
        "",
    )
    .await;
    let (_, found) = the_open_one(&stack, pb::DiscrepancyClass::AmountMismatch).await;
    let correction = found.correction.clone().unwrap();
    let propose = || pb::ProposeAdjustmentRequest {
        request_id: request_id(),
        discrepancy_id: found.id.clone(),
        amount: Some(usd(correction.minor_units.abs())),
        reason: "acquirer short-settled".into(),
    };
    let mut treasury = recon(&stack, Role::Treasury).await;
    let withdrawn = treasury
        .propose_adjustment(propose())
        .await
        .expect("propose")
        .into_inner()
        .adjustment
        .unwrap();
    let waiting = treasury
        .propose_adjustment(propose())
        .await
        .expect_err("one proposal waits at a time");
    assert_eq!(
        waiting.get_details_error_info().unwrap().reason,
        "DISCREPANCY_NOT_OPEN"
    );
    let rejected = recon(&stack, Role::Approver)
        .await
        .reject_adjustment(pb::RejectAdjustmentRequest {
            request_id: request_id(),
            adjustment_id: withdrawn.id.clone(),
            reason: "the acquirer will re-send the file".into(),
        })
        .await
        .expect("reject")
        .into_inner()
        .adjustment
        .unwrap();
    assert_eq!(rejected.state, pb::AdjustmentState::Rejected as i32);
    assert!(rejected.ledger_entry_ids.is_empty());
    let proposed = treasury
        .propose_adjustment(propose())
        .await
        .expect("propose again after the rejection")
        .into_inner()
        .adjustment
        .unwrap();
    let approve = |request_id: &str| pb::ApproveAdjustmentRequest {
        request_id: request_id.to_owned(),
        adjustment_id: proposed.id.clone(),
    };
    let denied = recon(&stack, Role::Treasury)
        .await
        .approve_adjustment(approve(&request_id()))
        .await
        .expect_err("treasury may not approve");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let same = stack
        .orchestrator
        .try_channel(&pki().same_name_approver())
        .await
        .expect("channel");
    let denied = ReconciliationServiceClient::new(same)
        .approve_adjustment(approve(&request_id()))
        .await
        .expect_err("the proposer's own name may not approve");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert_eq!(
        denied.get_details_error_info().unwrap().reason,
        "SAME_IDENTITY"
    );

    let mut approver = recon(&stack, Role::Approver).await;
    let once = request_id();
    let first = approver
        .approve_adjustment(approve(&once))
        .await
        .expect("approve")
        .into_inner();
    let replay = approver
        .approve_adjustment(approve(&once))
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(first, replay);
    let twice = approver
        .approve_adjustment(approve(&request_id()))
        .await
        .expect_err("approved already");
    assert_eq!(twice.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        twice.get_details_error_info().unwrap().reason,
        "ADJUSTMENT_NOT_PROPOSED"
    );
    let pool = stack.orchestrator.pool().await;
    let adjustments: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_transfers WHERE id LIKE '%/adjustment/%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    pool.close().await;
    assert_eq!(adjustments, 1);

    // The feed: each step once, by its caller, in order.
    let mut feed = PaymentServiceClient::new(stack.orchestrator.channel(Role::Reader).await);
    let types = [
        "reconciliation.adjustment_proposed",
        "reconciliation.adjustment_approved",
        "reconciliation.adjustment_rejected",
    ];
    let (events, _) = read_feed(&mut feed, &types, String::new(), 100, 4).await;
    let steps: Vec<(String, String, String)> = events
        .iter()
        .map(|e| {
            let Some(pb::event::Subject::ReconciliationEvent(step)) = &e.subject else {
                panic!("not a reconciliation event: {e:?}");
            };
            let Some(pb::reconciliation_event::Subject::Adjustment(a)) = &step.subject else {
                panic!("not an adjustment: {step:?}");
            };
            let actor = e.actor.clone().unwrap();
            (
                e.r#type.clone(),
                a.id.clone(),
                format!("{}/{}", actor.role, actor.name),
            )
        })
        .collect();
    let step =
        |kind: &str, id: &str, actor: &str| (kind.to_owned(), id.to_owned(), actor.to_owned());
    assert_eq!(
        steps,
        vec![
            step(types[0], &withdrawn.id, "treasury/test"),
            step(types[2], &withdrawn.id, "approver/test-approver"),
            step(types[0], &proposed.id, "treasury/test"),
            step(types[1], &proposed.id, "approver/test-approver"),
        ]
    );
    let (runs, _) = read_feed(
        &mut feed,
        &["reconciliation.run_completed"],
        String::new(),
        100,
        1,
    )
    .await;
    assert_eq!(runs.len(), 1, "{runs:?}");
}

/// Bad input is INVALID_ARGUMENT naming the field, and nothing is written: an unknown
/// processor, a day in the future, a malformed discrepancy id, an amount or currency that is
/// not the discrepancy's correction.
#[tokio::test]
async fn bad_input_names_the_field_and_writes_nothing() {
    let (stack, group, _) = stack(0).await;
    stack.pay(&group.id, "INV-1", 10_000, None).await;
    let mut treasury = recon(&stack, Role::Treasury).await;
    let field = |status: tonic::Status| {
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        status.get_details_bad_request().unwrap().field_violations[0]
            .field
            .clone()
    };
    let tomorrow = (time::OffsetDateTime::now_utc().date().next_day().unwrap()).to_string();
    for (processor, day, expected) in [
        ("stripe", today(), "processor"),
        ("sandbox", tomorrow, "settlement_date"),
        ("sandbox", "2026-13-01".to_owned(), "settlement_date"),
    ] {
        let status = treasury
            .run_reconciliation(pb::RunReconciliationRequest {
                request_id: request_id(),
                processor: processor.into(),
                settlement_date: day,
            })
            .await
            .expect_err("bad run");
        assert_eq!(field(status), expected);
    }
    let status = treasury
        .propose_adjustment(pb::ProposeAdjustmentRequest {
            request_id: request_id(),
            discrepancy_id: "dsc_nope".into(),
            amount: Some(usd(1)),
            reason: "x".into(),
        })
        .await
        .expect_err("malformed id");
    assert_eq!(field(status), "discrepancy_id");

    let records = capture_records(&stack).await;
    corrupt(
        &stack,
        &records[0],
        vault_pb::SettlementCorruption::ChangeAmount,
        1,
        "",
    )
    .await;
    let (run, found) = the_open_one(&stack, pb::DiscrepancyClass::AmountMismatch).await;
    let correction = found.correction.clone().unwrap();
    for amount in [
        usd(correction.minor_units.abs() + 1),
        money("EUR", correction.minor_units.abs()),
    ] {
        let status = treasury
            .propose_adjustment(pb::ProposeAdjustmentRequest {
                request_id: request_id(),
                discrepancy_id: found.id.clone(),
                amount: Some(amount),
                reason: "does not fit".into(),
            })
            .await
            .expect_err("amount does not fit");
        assert_eq!(field(status), "amount");
    }
    let status = treasury
        .propose_adjustment(pb::ProposeAdjustmentRequest {
            request_id: request_id(),
            discrepancy_id: found.id.clone(),
            amount: Some(usd(correction.minor_units.abs())),
            reason: "card 4242 4242 4242 4242".into(),
        })
        .await
        .expect_err("a card number in the reason");
    assert_eq!(field(status), "reason");
    let still = discrepancies(&stack, &run, pb::DiscrepancyState::Open).await;
    assert_eq!(still.len(), 1);
    assert!(still[0].adjustment_id.is_empty(), "{still:?}");
    // A proposal waits; the acquirer then corrects its file: the next run clears the
    // discrepancy, nothing booked, and the proposal no longer fits it.
    let waiting = treasury
        .propose_adjustment(pb::ProposeAdjustmentRequest {
            request_id: request_id(),
            discrepancy_id: found.id.clone(),
            amount: Some(usd(correction.minor_units.abs())),
            reason: "short-settled".into(),
        })
        .await
        .expect("propose")
        .into_inner()
        .adjustment
        .unwrap();
    corrupt(
        &stack,
        &records[0],
        vault_pb::SettlementCorruption::ChangeAmount,
        records[0].amount.as_ref().unwrap().minor_units,
        "",
    )
    .await;
    let corrected = self::run(&stack).await;
    assert_eq!((corrected.amount_mismatch, corrected.matched), (0, 3));
    let cleared = discrepancies(&stack, &corrected, pb::DiscrepancyState::Cleared).await;
    assert_eq!(cleared.len(), 1);
    assert_eq!(cleared[0].id, found.id);
    let stale = recon(&stack, Role::Approver)
        .await
        .approve_adjustment(pb::ApproveAdjustmentRequest {
            request_id: request_id(),
            adjustment_id: waiting.id.clone(),
        })
        .await
        .expect_err("the discrepancy is cleared");
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition);
    assert_eq!(
        stale.get_details_error_info().unwrap().reason,
        "DISCREPANCY_NOT_OPEN"
    );
    let status = recon(&stack, Role::Reader)
        .await
        .get_reconciliation_run(pb::GetReconciliationRunRequest {
            run_id: "rcn_aaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
        })
        .await
        .expect_err("unknown run");
    assert_eq!(status.code(), tonic::Code::NotFound);
}

/// The worker reconciles each closed day once, however many replicas run it at the same time:
/// yesterday's file (the day's captures, moved there in the sandbox's database) matches the
/// ledger, and a second round runs nothing.
#[tokio::test]
async fn the_worker_runs_each_closed_day_once_across_replicas() {
    use std::sync::Arc;
    use tandem_orchestrator::reconciliation::Reconciliation;
    use tandem_orchestrator::vault::VaultClient;

    let (stack, group, _) = stack(0).await;
    stack.pay(&group.id, "INV-1", 10_000, None).await;
    let vault = sqlx::PgPool::connect(&stack.vault.database.url)
        .await
        .expect("vault database");
    sqlx::query("UPDATE sandbox_settlement_records SET settlement_date = settlement_date - 1")
        .execute(&vault)
        .await
        .expect("move the day's records to yesterday");
    vault.close().await;

    let settings = &stack.orchestrator.settings;
    let mut worker = settings.reconciliation.clone();
    worker.run_hour_utc = 0;
    worker.lookback_days = 3;
    let pool = stack.orchestrator.pool().await;
    let replicas: Vec<Arc<Reconciliation>> = (0..3)
        .map(|i| {
            Arc::new(Reconciliation::new(
                pool.clone(),
                VaultClient::connect_lazy(&settings.vault).expect("vault client"),
                worker.clone(),
                2_000,
                &format!("replica-{i}"),
            ))
        })
        .collect();
    let rounds = futures::future::join_all(replicas.iter().map(|r| r.worker_round())).await;
    let ran: usize = rounds.into_iter().map(|r| r.expect("worker round")).sum();
    assert_eq!(ran, 3);
    let runs: Vec<(time::Date, String, i64, i64)> = sqlx::query_as(
        "SELECT settlement_date, actor, records, matched FROM recon_runs ORDER BY settlement_date",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let today = time::OffsetDateTime::now_utc().date();
    let days: Vec<time::Date> = runs.iter().map(|r| r.0).collect();
    assert_eq!(
        days,
        [3, 2, 1].map(|n| today - time::Duration::days(n)).to_vec()
    );
    assert!(
        runs.iter().all(|r| r.1.starts_with("service/replica-")),
        "{runs:?}"
    );
    assert_eq!(
        (runs[2].2, runs[2].3),
        (3, 3),
        "yesterday's captures matched"
    );
    for replica in &replicas {
        assert_eq!(replica.worker_round().await.expect("second round"), 0);
    }

    // A day whose pending entry's grace period has passed is run again, once: here a pending
    // discrepancy of yesterday booked two days ago, which the new run no longer finds.
    let yesterday = &runs[2];
    let run_id: String = sqlx::query_scalar("SELECT id FROM recon_runs WHERE settlement_date = $1")
        .bind(yesterday.0)
        .fetch_one(&pool)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO recon_discrepancies (id, processor, subject, settlement_date, class, state, \
         type, processor_reference, entry_id, ledger_minor, ledger_currency, entry_time, \
         first_run_id, last_run_id) VALUES ('dsc_aaaaaaaaaaaaaaaaaaaaaaaaaa', 'sandbox', \
         'entry:pay_x/leg/1/capture', $1, 'pending', 'open', 'capture', 'sbx_x', \
         'pay_x/leg/1/capture', 100, 'USD', now() - interval '2 days', $2, $2)",
    )
    .bind(yesterday.0)
    .bind(&run_id)
    .execute(&pool)
    .await
    .unwrap();
    let rounds = futures::future::join_all(replicas.iter().map(|r| r.worker_round())).await;
    let ran: usize = rounds.into_iter().map(|r| r.expect("worker round")).sum();
    assert_eq!(ran, 1, "yesterday, once");
    let state: String = sqlx::query_scalar(
        "SELECT state FROM recon_discrepancies WHERE id = 'dsc_aaaaaaaaaaaaaaaaaaaaaaaaaa'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(state, "cleared");
    pool.close().await;
}
