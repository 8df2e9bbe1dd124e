//! The treasury's view, end to end over mutual TLS: ledger balances, entries, spend reports and
//! exports (`LedgerService`), the event feed (`ListEvents`) across a restart, the caller
//! recorded with every change, operator notes, and the bad input and roles of each.

use std::collections::{BTreeMap, HashSet};

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::ledger_service_client::LedgerServiceClient;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_tests::stack::{Stack, group, member, payment_request, policy, read_feed, state};
use tandem_tests::{
    RunningOrchestrator, RunningVault, TestDatabase, orchestrator_reason, orchestrator_settings,
    violated_fields,
};
use tandem_tls::identity::Role;

use pb::AllocationStrategy as S;
use pb::Completion as C;

const VISA: &str = "4242424242424242";
const MASTERCARD: &str = "5555555555554444";
const AMEX: &str = "378282246310005";

/// A stack with a three-card group (weighted 50/30/20) of billing account `acct-1`.
async fn stack_with_group() -> (Stack, pb::CardGroup, Vec<String>) {
    group_on(Stack::start().await).await
}

/// As [`stack_with_group`], on an orchestrator whose messages are at most `bytes` long.
async fn stack_with_messages_of(bytes: usize) -> (Stack, pb::CardGroup, Vec<String>) {
    let vault = RunningVault::start().await;
    let database = TestDatabase::create().await;
    let mut settings = orchestrator_settings(&database, &vault);
    settings.server.message_bytes_max = bytes;
    let orchestrator = RunningOrchestrator::start_with(settings, database, None).await;
    group_on(Stack {
        vault,
        orchestrator,
    })
    .await
}

async fn group_on(stack: Stack) -> (Stack, pb::CardGroup, Vec<String>) {
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

fn minor(money: Option<&tandem_proto::tandem::r#type::v1::Money>) -> i64 {
    money.map_or(0, |m| m.minor_units)
}

fn an_hour_ago() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time::OffsetDateTime::now_utc().unix_timestamp() - 3600,
        nanos: 0,
    }
}

fn now() -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time::OffsetDateTime::now_utc().unix_timestamp() + 1,
        nanos: 0,
    }
}

/// Spend by card and cost center equals what the payments captured less what was refunded;
/// a card's balances and its entries say the same.
#[tokio::test]
async fn spend_balances_and_entries_match_the_payments() {
    let (stack, group, tokens) = stack_with_group().await;
    let first = stack.pay(&group.id, "INV-1", 10_000, None).await;
    let second = stack.pay(&group.id, "INV-2", 3_333, None).await;
    assert_eq!(state(&first), "SUCCEEDED");
    assert_eq!(state(&second), "SUCCEEDED");
    stack
        .payments()
        .await
        .refund_payment(pb::RefundPaymentRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            payment_id: first.id.clone(),
            amount: Some(tandem_tests::stack::usd(1_000)),
            reason: "credit note".into(),
        })
        .await
        .expect("refund");
    stack.settled(&first.id).await;
    stack.assert_spend_matches("acct-1").await;
    let report = stack.spend_report("acct-1").await;
    assert_eq!(report.totals.len(), 1);
    assert_eq!(minor(report.totals[0].captured.as_ref()), 13_333);
    assert_eq!(minor(report.totals[0].refunded.as_ref()), 1_000);
    assert_eq!(minor(report.totals[0].net.as_ref()), 12_333);
    assert_eq!(report.by_month.len(), 1);

    let mut ledger = stack.ledger().await;
    let balances = ledger
        .get_balances(pb::GetBalancesRequest {
            card_token: tokens[0].clone(),
            ..Default::default()
        })
        .await
        .expect("balances")
        .into_inner()
        .balances;
    assert_eq!(balances.len(), 1);
    let card = &balances[0];
    assert_eq!(card.code, pb::LedgerAccountCode::FundingSource as i32);
    let by_card: BTreeMap<_, _> = report
        .by_card
        .iter()
        .map(|l| (l.card_token.clone(), minor(l.net.as_ref())))
        .collect();
    assert_eq!(
        minor(card.debits_posted.as_ref()) - minor(card.credits_posted.as_ref()),
        by_card[&tokens[0]]
    );
    assert_eq!(minor(card.debits_pending.as_ref()), 0);

    let receivable = ledger
        .get_balances(pb::GetBalancesRequest {
            billing_account_id: "acct-1".into(),
            ..Default::default()
        })
        .await
        .expect("billing account balances")
        .into_inner()
        .balances;
    assert_eq!(receivable.len(), 1);
    assert_eq!(
        minor(receivable[0].credits_posted.as_ref()) - minor(receivable[0].debits_posted.as_ref()),
        12_333
    );
    let cost_center = ledger
        .get_balances(pb::GetBalancesRequest {
            cost_center: "cc-card-B".into(),
            ..Default::default()
        })
        .await
        .expect("cost center balances")
        .into_inner()
        .balances;
    let b = cost_center
        .iter()
        .find(|b| b.card_token == tokens[1])
        .expect("card B's slice");
    assert_eq!(
        minor(b.debits_posted.as_ref()) - minor(b.credits_posted.as_ref()),
        by_card[&tokens[1]]
    );

    // The entries of the first payment, page by page: hold and capture per leg, one refund
    // per refunded leg.
    let mut entries = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = ledger
            .list_entries(pb::ListEntriesRequest {
                payment_id: first.id.clone(),
                page_size: 2,
                page_token,
                ..Default::default()
            })
            .await
            .expect("entries")
            .into_inner();
        assert!(page.entries.len() <= 2);
        entries.extend(page.entries);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    let kinds =
        |kind: pb::LedgerEntryKind| entries.iter().filter(|e| e.kind == kind as i32).count();
    assert_eq!(kinds(pb::LedgerEntryKind::Pending), 3);
    assert_eq!(kinds(pb::LedgerEntryKind::PostPending), 3);
    assert_eq!(
        kinds(pb::LedgerEntryKind::Single),
        3,
        "a refund spread over three legs"
    );
    assert!(entries.windows(2).all(|w| w[0].sequence < w[1].sequence));
    assert!(entries.iter().all(|e| e.payment_id == first.id));
    stack.assert_ledger_invariants().await;
}

/// Reads an export to its end: the chunks' data, and the last chunk's cursor.
async fn export(
    ledger: &mut LedgerServiceClient<tonic::transport::Channel>,
    request: pb::ExportLedgerRequest,
    chunks_max: usize,
) -> (Vec<u8>, String, usize) {
    let mut stream = ledger
        .export_ledger(request)
        .await
        .expect("export")
        .into_inner();
    let (mut data, mut cursor, mut chunks) = (Vec::new(), String::new(), 0);
    while chunks < chunks_max {
        let Some(chunk) = stream.message().await.expect("export chunk") else {
            break;
        };
        assert!(
            chunk.data.len() <= 8 * 1024,
            "a chunk of {}",
            chunk.data.len()
        );
        data.extend(chunk.data);
        cursor = chunk.cursor;
        chunks += 1;
    }
    (data, cursor, chunks)
}

/// RFC 4180 records of `text`.
fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let (mut record, mut field, mut quoted, mut chars) =
        (Vec::new(), String::new(), false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    records
}

/// An export in CSV and in JSON lines holds the same rows; an export resumed from a chunk's
/// cursor continues exactly where it stopped; the payment's notes are in its rows; no chunk
/// or page outgrows the server's messages (8 KiB here), whatever was asked.
#[tokio::test]
async fn exports_agree_across_formats_and_resume_exactly() {
    let (stack, group, _) = stack_with_messages_of(8 * 1024).await;
    let mut request = payment_request(&group.id, "INV-N", 9_000, None);
    request.note = "approved by Ada, \"urgent\"".into();
    stack
        .payments()
        .await
        .create_payment(request)
        .await
        .expect("pay");
    for i in 0..3 {
        stack
            .pay(&group.id, &format!("INV-{i}"), 1_000 + i, None)
            .await;
    }
    let mut ledger = stack.ledger().await;
    let base = pb::ExportLedgerRequest {
        start_time: Some(an_hour_ago()),
        end_time: Some(now()),
        ..Default::default()
    };
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let csv = pb::ExportLedgerRequest {
        format: pb::ExportFormat::Csv as i32,
        ..base.clone()
    };
    let jsonl = pb::ExportLedgerRequest {
        format: pb::ExportFormat::JsonLines as i32,
        ..base.clone()
    };
    let (csv_data, _, csv_chunks) = export(&mut ledger, csv.clone(), usize::MAX).await;
    assert!(
        csv_chunks > 1,
        "one read of 1000 entries, cut to fit the messages"
    );
    let (json_data, _, _) = export(&mut ledger, jsonl, usize::MAX).await;
    let csv_text = String::from_utf8(csv_data.clone()).unwrap();
    let records = csv_records(&csv_text);
    let header = &records[0];
    assert_eq!(header.first().map(String::as_str), Some("seq"));
    assert_eq!(header.last().map(String::as_str), Some("payment_notes"));
    let rows = &records[1..];
    assert_eq!(rows.len(), 24, "hold and capture of 3 legs of 4 payments");
    let json_rows: Vec<Vec<String>> = String::from_utf8(json_data)
        .unwrap()
        .lines()
        .map(|line| {
            let object: serde_json::Map<String, serde_json::Value> =
                serde_json::from_str(line).expect("a JSON object per line");
            header
                .iter()
                .map(|key| match &object[key] {
                    serde_json::Value::Null => String::new(),
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect()
        })
        .collect();
    assert_eq!(&json_rows, rows, "the same rows in both formats");
    let notes_column = header.iter().position(|c| c == "payment_notes").unwrap();
    let noted: Vec<&Vec<String>> = rows
        .iter()
        .filter(|r| !r[notes_column].is_empty())
        .collect();
    assert_eq!(noted.len(), 6, "the noted payment's entries carry its note");
    let notes: serde_json::Value = serde_json::from_str(&noted[0][notes_column]).unwrap();
    assert_eq!(notes[0]["text"], "approved by Ada, \"urgent\"");
    assert!(notes[0]["author"].as_str().unwrap().starts_with("payer/"));
    let card_column = header.iter().position(|c| c == "card_token").unwrap();
    assert!(rows.iter().all(|r| r[card_column].starts_with("tok_")));

    // A page of up to 1000 entries is cut to fit the messages too, and goes on where it was cut.
    let (mut listed, mut page_token, mut pages) = (0, String::new(), 0);
    loop {
        let page = ledger
            .list_entries(pb::ListEntriesRequest {
                page_size: 1000,
                page_token,
                billing_account_id: "acct-1".into(),
                start_time: Some(an_hour_ago()),
                end_time: Some(now()),
                ..Default::default()
            })
            .await
            .expect("entries")
            .into_inner();
        listed += page.entries.len();
        pages += 1;
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(listed, 24);
    assert!(pages > 1, "cut to fit the messages");

    // Interrupted after two chunks of five, then resumed from the last cursor.
    let small = pb::ExportLedgerRequest {
        chunk_entries: 5,
        ..csv.clone()
    };
    let (head, cursor, chunks) = export(&mut ledger, small.clone(), 2).await;
    assert_eq!(chunks, 2);
    let (tail, _, _) = export(
        &mut ledger,
        pb::ExportLedgerRequest {
            cursor: cursor.clone(),
            ..small.clone()
        },
        usize::MAX,
    )
    .await;
    assert_eq!(
        [head, tail].concat(),
        csv_data,
        "resumed equals uninterrupted"
    );

    // A cursor belongs to its filters and format.
    let error = ledger
        .export_ledger(pb::ExportLedgerRequest {
            cursor,
            cost_center: "cc-card-A".into(),
            ..small
        })
        .await
        .expect_err("a foreign cursor");
    assert_eq!(violated_fields(&error), ["cursor"]);
}

/// Every event of every payment and group, in feed order, across a restart of the orchestrator:
/// nothing skipped, nothing repeated; each names its caller.
#[tokio::test]
async fn the_event_feed_resumes_across_a_restart() {
    let (mut stack, group, _) = stack_with_group().await;
    for i in 0..3 {
        stack
            .pay(&group.id, &format!("INV-A{i}"), 500 + i, None)
            .await;
    }
    let mut feed = PaymentServiceClient::new(stack.orchestrator.channel(Role::Reader).await);
    // Two pages of four, then the orchestrator restarts.
    let (mut seen, _) = read_feed(&mut feed, &[], String::new(), 4, 8).await;
    assert!(seen.len() >= 8, "{}", seen.len());
    let cursor = seen.last().unwrap().cursor.clone();
    stack.orchestrator = stack.orchestrator.restart().await;
    for i in 0..2 {
        stack
            .pay(&group.id, &format!("INV-B{i}"), 700 + i, None)
            .await;
    }
    let mut feed = PaymentServiceClient::new(stack.orchestrator.channel(Role::Reader).await);
    let pool = stack.orchestrator.pool().await;
    let (stored,): (i64,) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM payment_events) + (SELECT count(*) FROM card_group_events)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    pool.close().await;
    let want = usize::try_from(stored).unwrap() - seen.len();
    let (rest, _) = read_feed(&mut feed, &[], cursor, 7, want).await;
    seen.extend(rest);
    let ids: HashSet<&str> = seen.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), seen.len(), "no event repeated");
    assert_eq!(seen.len() as i64, stored, "no event skipped");
    assert_eq!(seen[0].r#type, "card_group.created");
    // Per payment, events come in sequence.
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for event in &seen {
        let actor = event.actor.as_ref().expect("every event names its caller");
        match &event.subject {
            Some(pb::event::Subject::PaymentEvent(e)) => {
                let payment = e.payment.as_ref().unwrap();
                let previous = last.insert(payment.id.clone(), e.sequence).unwrap_or(0);
                assert_eq!(e.sequence, previous + 1, "{}", event.r#type);
                assert_eq!(actor.role, "payer");
                assert_eq!(e.type_name, event.r#type);
            }
            Some(pb::event::Subject::CardGroupEvent(e)) => {
                assert_eq!(actor.role, "treasury");
                assert_eq!(e.card_group.as_ref().unwrap().id, group.id);
            }
            Some(pb::event::Subject::ReconciliationEvent(e)) => {
                panic!("this test runs no reconciliation: {e:?}")
            }
            None => panic!("an event without its subject"),
        }
    }
    assert_eq!(last.len(), 5, "every payment's events");

    // Filtered by type.
    let (succeeded, _) = read_feed(&mut feed, &["payment.succeeded"], String::new(), 100, 5).await;
    assert_eq!(succeeded.len(), 5);
    assert!(succeeded.iter().all(|e| e.r#type == "payment.succeeded"));

    // A feed filtered on a type no event has yet is caught up at once, and its resume token
    // lies past everything examined: the next poll reads only what commits after.
    let archived = |page_token: String| pb::ListEventsRequest {
        page_token,
        event_types: vec!["card_group.archived".into()],
        ..Default::default()
    };
    let empty = feed
        .list_events(archived(String::new()))
        .await
        .expect("archived events")
        .into_inner();
    assert!(empty.events.is_empty() && empty.next_page_token.is_empty());
    assert!(!empty.resume_page_token.is_empty());
    stack
        .groups()
        .await
        .delete_card_group(pb::DeleteCardGroupRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            card_group_id: group.id.clone(),
            ..Default::default()
        })
        .await
        .expect("archive the group");
    let (after, _) = read_feed(
        &mut feed,
        &["card_group.archived"],
        empty.resume_page_token,
        100,
        1,
    )
    .await;
    assert_eq!(after.len(), 1);
    assert_eq!(after[0].r#type, "card_group.archived");
    assert_eq!(
        after[0].actor.as_ref().map(|a| a.role.as_str()),
        Some("treasury")
    );
}

/// Every change names its caller in its view and its events; notes append with their author.
#[tokio::test]
async fn changes_record_their_caller_and_notes_append() {
    let (stack, group, _) = stack_with_group().await;
    let creator = group.creator.clone().expect("the group's creator");
    assert_eq!(creator.role, "treasury");
    assert_eq!(group.updater, Some(creator.clone()));
    let payment = stack.pay(&group.id, "INV-1", 2_000, None).await;
    let payer = payment.creator.clone().expect("the payment's creator");
    assert_eq!(payer.role, "payer");
    assert!(!payer.name.is_empty());

    let mut treasury = PaymentServiceClient::new(stack.orchestrator.channel(Role::Treasury).await);
    let request = pb::AddPaymentNoteRequest {
        request_id: uuid::Uuid::new_v4().to_string(),
        payment_id: payment.id.clone(),
        text: "Matched to PO 7781\nby phone".into(),
    };
    let added = treasury
        .add_payment_note(request.clone())
        .await
        .expect("note")
        .into_inner();
    let replayed = treasury
        .add_payment_note(request.clone())
        .await
        .expect("note replayed")
        .into_inner();
    assert_eq!(added.note, replayed.note, "a retry adds no second note");
    let note = added.note.expect("note");
    assert_eq!(
        note.author.as_ref().map(|a| a.role.as_str()),
        Some("treasury")
    );
    let payment = stack.settled(&payment.id).await;
    assert_eq!(payment.notes.len(), 1);
    assert_eq!(payment.notes[0].text, "Matched to PO 7781\nby phone");

    let mut reader = PaymentServiceClient::new(stack.orchestrator.channel(Role::Reader).await);
    let (mut events, _) =
        read_feed(&mut reader, &["payment.note_added"], String::new(), 100, 1).await;
    assert_eq!(events.len(), 1);
    let event = events.pop().unwrap();
    assert_eq!(event.actor.map(|a| a.role), Some("treasury".into()));

    // Notes with a card number or control characters are refused, naming the field.
    for text in ["card 4242 4242 4242 4242", "bell\u{7}", ""] {
        let error = treasury
            .add_payment_note(pb::AddPaymentNoteRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                text: text.into(),
                ..request.clone()
            })
            .await
            .expect_err("a bad note");
        assert_eq!(violated_fields(&error), ["text"], "{text:?}");
    }
}

/// Payers read no ledger and no feed; bad input names its field.
#[tokio::test]
async fn ledger_reads_refuse_payers_and_bad_input() {
    let (stack, group, _) = stack_with_group().await;
    stack.pay(&group.id, "INV-1", 2_000, None).await;
    let mut payer = LedgerServiceClient::new(stack.orchestrator.channel(Role::Payer).await);
    let denied = [
        payer
            .get_balances(pb::GetBalancesRequest {
                billing_account_id: "acct-1".into(),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .unwrap_err(),
        payer
            .list_entries(pb::ListEntriesRequest::default())
            .await
            .map(|_| ())
            .unwrap_err(),
        payer
            .get_spend_report(pb::GetSpendReportRequest::default())
            .await
            .map(|_| ())
            .unwrap_err(),
        payer
            .export_ledger(pb::ExportLedgerRequest::default())
            .await
            .map(|_| ())
            .unwrap_err(),
        PaymentServiceClient::new(stack.orchestrator.channel(Role::Payer).await)
            .list_events(pb::ListEventsRequest::default())
            .await
            .map(|_| ())
            .unwrap_err(),
    ];
    for status in denied {
        assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
        assert_eq!(orchestrator_reason(&status), "ROLE_NOT_ALLOWED");
    }

    let mut ledger = stack.ledger().await;
    let unknown = ledger
        .get_balances(pb::GetBalancesRequest {
            card_token: "tok_aaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert_eq!(violated_fields(&unknown), ["card_token"]);
    let inverted = ledger
        .list_entries(pb::ListEntriesRequest {
            start_time: Some(now()),
            end_time: Some(an_hour_ago()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&inverted), ["end_time"]);
    let unbounded = ledger
        .export_ledger(pb::ExportLedgerRequest {
            format: pb::ExportFormat::Csv as i32,
            start_time: Some(an_hour_ago()),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(violated_fields(&unbounded), ["end_time"]);
    let format = ledger
        .export_ledger(pb::ExportLedgerRequest {
            format: 7,
            start_time: Some(an_hour_ago()),
            end_time: Some(an_hour_ago()),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(violated_fields(&format)[0], "format");
    let big = ledger
        .list_entries(pb::ListEntriesRequest {
            page_size: 1001,
            start_time: Some(an_hour_ago()),
            end_time: Some(now()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&big), ["page_size"]);
    // A page token of another list is foreign here.
    let mut reader = PaymentServiceClient::new(stack.orchestrator.channel(Role::Reader).await);
    stack.pay(&group.id, "INV-2", 2_000, None).await;
    let payments_token = reader
        .list_payments(pb::ListPaymentsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .next_page_token;
    assert!(!payments_token.is_empty());
    let foreign = ledger
        .list_entries(pb::ListEntriesRequest {
            page_token: payments_token.clone(),
            start_time: Some(an_hour_ago()),
            end_time: Some(now()),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&foreign), ["page_token"]);
    let foreign = reader
        .list_events(pb::ListEventsRequest {
            page_token: payments_token,
            ..Default::default()
        })
        .await;
    // Readers may list events; the token is what is refused.
    assert_eq!(violated_fields(&foreign.unwrap_err()), ["page_token"]);
    let unknown_type = reader
        .list_events(pb::ListEventsRequest {
            event_types: vec!["payment.exploded".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&unknown_type), ["event_types[0]"]);
}

/// A change whose transaction took its id early and then waited for the payment's lock (as a
/// refund or a note does, claiming its request id first) is listed after the step it waited
/// for: the feed keeps each payment's events in the order of their commits.
#[tokio::test]
async fn the_feed_keeps_a_payments_commits_in_order() {
    use tandem_orchestrator::storage::{self, FeedPosition, NewEvent};
    let (stack, group, _) = stack_with_group().await;
    let payment = stack.pay(&group.id, "INV-1", 1_000, None).await;
    stack.settled(&payment.id).await;
    let pool = stack.orchestrator.pool().await;
    let append = async |conn: &mut sqlx::PgConnection, kind: &'static str| {
        let mut stored = storage::payment(&mut *conn, &payment.id, true)
            .await
            .expect("read")
            .expect("payment");
        stored.events += 1;
        let event = NewEvent {
            sequence: stored.events,
            id: format!("evt_{}", uuid::Uuid::new_v4().simple()),
            kind,
            body: Vec::new(),
        };
        let no_declines = storage::risk::Counts::default();
        storage::save_payment(
            conn,
            &stored,
            &[event],
            &no_declines,
            time::OffsetDateTime::now_utc(),
        )
        .await
        .expect("save");
    };
    // The late writer takes its transaction id first...
    let mut late = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *late)
        .await
        .unwrap();
    // ...another change of the payment commits meanwhile...
    let mut early = pool.begin().await.unwrap();
    append(&mut early, "payment.note_added").await;
    early.commit().await.unwrap();
    // ...then the late one writes.
    append(&mut late, "refund.created").await;
    late.commit().await.unwrap();

    // The feed lists a commit only once no older transaction is still open (its frontier is
    // the snapshot's xmin), and the services' background work may hold one for a moment: read
    // until the late writer's event is listed.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let page = loop {
        let page = storage::feed_after(&pool, &FeedPosition::default(), &[], 1000)
            .await
            .expect("feed");
        if page.events.iter().any(|e| e.kind == "refund.created") {
            break page;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the feed never listed the late commit"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let sequences: Vec<i64> = page
        .events
        .iter()
        .filter(|e| e.position.subject == payment.id)
        .map(|e| e.position.sequence)
        .collect();
    let mut sorted = sequences.clone();
    sorted.sort_unstable();
    assert_eq!(sequences, sorted, "a payment's events in commit order");
    let kinds: Vec<&str> = page
        .events
        .iter()
        .filter(|e| e.position.subject == payment.id)
        .map(|e| e.kind.as_str())
        .collect();
    assert_eq!(
        kinds[kinds.len() - 2..],
        ["payment.note_added", "refund.created"]
    );
    pool.close().await;
}

/// A refund by another payer than the payment's creator, and a group update, each name their
/// own caller: in the view (the refund's requester, the group's updater) and in every event
/// the call caused, while the payment's own events keep naming its creator.
#[tokio::test]
async fn refunds_and_group_updates_name_their_own_caller() {
    let (stack, group, _) = stack_with_group().await;
    let payment = stack.pay(&group.id, "INV-1", 3_000, None).await;
    let creator = payment.creator.clone().expect("creator");
    let second = stack
        .orchestrator
        .try_channel(&tandem_tests::pki().second_payer())
        .await
        .expect("the second payer");
    let refund = PaymentServiceClient::new(second)
        .refund_payment(pb::RefundPaymentRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            payment_id: payment.id.clone(),
            amount: Some(tandem_tests::stack::usd(1_000)),
            reason: "credit note".into(),
        })
        .await
        .expect("refund")
        .into_inner()
        .refund
        .expect("the refund");
    let requester = refund.requester.clone().expect("the refund's requester");
    assert_eq!(requester.role, "payer");
    assert_ne!(
        requester.name, creator.name,
        "another payer than the creator"
    );
    stack.settled(&payment.id).await;

    let mut treasury = stack.groups().await;
    let mut update = group.clone();
    update.display_name = "GlobalOps EU".into();
    let updated = treasury
        .update_card_group(pb::UpdateCardGroupRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            card_group: Some(update),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["display_name".into()],
            }),
        })
        .await
        .expect("update")
        .into_inner()
        .card_group
        .expect("the group");
    assert_eq!(
        updated.updater.as_ref().map(|a| a.role.as_str()),
        Some("treasury")
    );
    assert_eq!(updated.creator, group.creator);

    let mut reader = PaymentServiceClient::new(stack.orchestrator.channel(Role::Reader).await);
    let refund_types = ["refund.created", "refund.succeeded", "leg.refunded"];
    let (refund_events, _) = read_feed(&mut reader, &refund_types, String::new(), 100, 5).await;
    assert!(refund_events.len() >= 3, "{}", refund_events.len());
    for event in &refund_events {
        assert_eq!(event.actor.as_ref(), Some(&requester), "{}", event.r#type);
    }
    let (created, _) = read_feed(&mut reader, &["payment.created"], String::new(), 100, 1).await;
    assert_eq!(created[0].actor.as_ref(), Some(&creator));
    let (updates, _) = read_feed(&mut reader, &["card_group.updated"], String::new(), 100, 1).await;
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].actor, updated.updater);
}

/// A page of payments is cut short to fit the server's message size (three-card payments
/// weigh over a kilobyte each: a default page of 50 would not fit the default 64 KiB), and its
/// token carries on where it was cut: every payment is listed once.
#[tokio::test]
async fn payment_pages_are_cut_to_fit_the_messages() {
    // 4 KiB of the message are kept for the reply's own fields: about 6 KiB for payments,
    // room for a few of these.
    let (stack, group, _) = stack_with_messages_of(10 * 1024).await;
    let mut paid = HashSet::new();
    for i in 0..8 {
        let payment = stack
            .pay(&group.id, &format!("INV-PAGE-{i}"), 1_000 + i, None)
            .await;
        paid.insert(payment.id);
    }
    let mut payments = stack.payments().await;
    let (mut listed, mut sizes, mut page_token) = (Vec::new(), Vec::new(), String::new());
    for _ in 0..20 {
        let page = payments
            .list_payments(pb::ListPaymentsRequest {
                page_size: 100,
                page_token,
                card_group_id: group.id.clone(),
                ..Default::default()
            })
            .await
            .expect("a page that fits")
            .into_inner();
        sizes.push(page.payments.len());
        listed.extend(page.payments.into_iter().map(|p| p.id));
        page_token = page.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    assert!(page_token.is_empty(), "no end after 20 pages: {sizes:?}");
    assert!(
        sizes.len() > 1,
        "eight payments do not fit in 10 KiB: {sizes:?}"
    );
    assert!(
        sizes.iter().any(|n| *n > 1) && sizes.iter().all(|n| *n >= 1),
        "pages hold as many as fit, at least one: {sizes:?}"
    );
    assert_eq!(listed.len(), paid.len(), "{listed:?}");
    assert_eq!(listed.into_iter().collect::<HashSet<_>>(), paid);
}
