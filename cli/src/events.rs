//! `tandemctl events`: read the orchestrator's event feed (`PaymentService.ListEvents`), every
//! payment's and card group's events oldest first, with a `reader` identity.
//!
//! ```text
//! tandemctl events [--after CURSOR] [--type payment.succeeded --type card_group.updated] \
//!     [--follow] [--page-size 100] [--format table|csv|json]
//! ```
//!
//! Without `--follow` the command pages until the feed is caught up; with it, it then asks
//! again every second from where the feed said to resume until interrupted. Either way it ends
//! by printing that cursor on stderr: `--after` with it continues exactly there, nothing
//! skipped or repeated. CSV and JSON carry every event's cursor.

use std::time::Duration;

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_tls::identity::Role;

use crate::connect::{
    CALL_TIMEOUT, LIST_PAGES_MAX, OrchestratorTarget, failure, orchestrator_channel,
};
use crate::print::{Column, Format, Value, print_header, print_row, show_actor};

/// How long `--follow` waits between asking a caught-up feed again.
const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How many calls in a row `--follow` lets fail with a transient error (the orchestrator
/// restarting, a deadline) before it gives up; with [`POLL_INTERVAL`] between them, about a
/// minute.
const TRANSIENT_FAILURES_MAX: u32 = 60;

/// Arguments of `tandemctl events`.
#[derive(Debug, clap::Args)]
pub(crate) struct EventsArgs {
    #[command(flatten)]
    target: OrchestratorTarget,
    /// Start after the event with this cursor (as printed by an earlier run); the first event
    /// of the feed by default.
    #[arg(long, value_name = "CURSOR")]
    after: Option<String>,
    /// Only events of this type, e.g. `payment.succeeded` or `card_group.updated` (repeat for
    /// each).
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Keep asking for new events every second until interrupted.
    #[arg(long)]
    follow: bool,
    /// Events per call, 1-1000.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=1000))]
    page_size: i32,
    /// How to print the events.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

/// Why the command stopped reading.
enum Stop {
    /// The feed is caught up (without `--follow`).
    CaughtUp,
    /// The page bound was reached (without `--follow`).
    PagesMax,
    /// Ctrl-C.
    Interrupted,
}

/// Runs `tandemctl events`.
pub(crate) async fn run(args: EventsArgs) -> anyhow::Result<()> {
    let mut client = PaymentServiceClient::new(
        orchestrator_channel(&args.target, Role::Reader, CALL_TIMEOUT).await?,
    );
    // The cursor of the last event printed: where a new call, or a new run, continues.
    let mut cursor = args.after.clone().unwrap_or_default();
    print_header(args.format, COLUMNS);
    let result = follow(&mut client, &args, &mut cursor).await;
    // Also after a failure: what was printed stays handled.
    match (&result, cursor.is_empty()) {
        (Ok(Stop::PagesMax), _) => {
            eprintln!("stopped after {LIST_PAGES_MAX} pages; continue with --after {cursor}")
        }
        (Ok(Stop::CaughtUp | Stop::Interrupted) | Err(_), true) => {}
        (Ok(Stop::CaughtUp | Stop::Interrupted) | Err(_), false) => {
            eprintln!("continue with --after {cursor}")
        }
    }
    result.map(|_| ())
}

/// Reads pages and prints their events, keeping `cursor` where a new run continues: at the
/// last event printed, or once caught up at the page's resume token (past every event the
/// server examined, so a filtered feed does not read the same events again).
async fn follow(
    client: &mut PaymentServiceClient<tonic::transport::Channel>,
    args: &EventsArgs,
    cursor: &mut String,
) -> anyhow::Result<Stop> {
    let mut page_token = cursor.clone();
    let mut pages: usize = 0;
    let mut failures: u32 = 0;
    // One listener for the whole run: a Ctrl-C that comes while a page prints is kept for the
    // next wait, where a listener made anew at each wait would miss it.
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| anyhow::anyhow!("listen for Ctrl-C: {e}"))?;
    // Without `--follow` bounded by LIST_PAGES_MAX; with it, it runs until interrupted.
    loop {
        let request = pb::ListEventsRequest {
            page_size: args.page_size,
            page_token: page_token.clone(),
            event_types: args.types.clone(),
        };
        let answer = tokio::select! {
            answer = client.list_events(request) => answer,
            _ = interrupt.recv() => return Ok(Stop::Interrupted),
        };
        let page = match answer {
            Ok(page) => page.into_inner(),
            Err(status) if args.follow && is_transient(&status) => {
                failures += 1;
                if failures > TRANSIENT_FAILURES_MAX {
                    return Err(failure(status));
                }
                eprintln!("retrying: {}", failure(status));
                if wait(POLL_INTERVAL, &mut interrupt).await {
                    return Ok(Stop::Interrupted);
                }
                continue;
            }
            Err(status) => return Err(failure(status)),
        };
        failures = 0;
        for event in &page.events {
            print_row(args.format, COLUMNS, &event_row(event));
            *cursor = event.cursor.clone();
        }
        if page.next_page_token.is_empty() && !page.resume_page_token.is_empty() {
            *cursor = page.resume_page_token.clone();
        }
        pages += 1;
        if !page.next_page_token.is_empty() {
            if !args.follow && pages >= LIST_PAGES_MAX {
                return Ok(Stop::PagesMax);
            }
            page_token = page.next_page_token;
            continue;
        }
        // Caught up: what commits later comes after the resume position.
        if !args.follow {
            return Ok(Stop::CaughtUp);
        }
        page_token = cursor.clone();
        if wait(POLL_INTERVAL, &mut interrupt).await {
            return Ok(Stop::Interrupted);
        }
    }
}

/// Sleeps for `duration`; true when interrupted by Ctrl-C instead.
async fn wait(duration: Duration, interrupt: &mut tokio::signal::unix::Signal) -> bool {
    tokio::select! {
        () = tokio::time::sleep(duration) => false,
        _ = interrupt.recv() => true,
    }
}

/// Whether a failed call may succeed when simply made again.
fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::ResourceExhausted
    )
}

/// The columns of `events`: people see when, what, of which payment, group, reconciliation run
/// or adjustment, by whom;
/// machines get the ids, the actor's name and role apart, and each event's cursor.
const COLUMNS: &[Column] = &[
    Column::machines("cursor"),
    Column::machines("id"),
    Column::text("create_time", "time", 20),
    Column::text("type", "type", 34),
    Column::people("subject", 30),
    Column::machines("payment_id"),
    Column::machines("card_group_id"),
    Column::number("sequence", "seq", 4),
    Column::people("actor", 24),
    Column::machines("actor_name"),
    Column::machines("actor_role"),
    Column::text("summary", "summary", 0),
];

fn event_row(event: &pb::Event) -> Vec<Value> {
    use pb::event::Subject;
    // The subject: a payment, a card group, or a reconciliation step's run or adjustment.
    let (subject, payment_id, card_group_id, sequence, summary) = match &event.subject {
        Some(Subject::PaymentEvent(e)) => {
            let id = e.payment.as_ref().map(|p| p.id.clone()).unwrap_or_default();
            (id.clone(), id, String::new(), e.sequence, e.summary.clone())
        }
        Some(Subject::CardGroupEvent(e)) => {
            let group = e.card_group.as_ref();
            let id = group.map(|g| g.id.clone()).unwrap_or_default();
            let summary = group.map_or_else(String::new, |g| {
                format!("{} ({})", g.display_name, g.billing_account_id)
            });
            (id.clone(), String::new(), id, e.sequence, summary)
        }
        Some(Subject::ReconciliationEvent(e)) => {
            use pb::reconciliation_event::Subject as Step;
            let (id, summary) = match &e.subject {
                Some(Step::Run(run)) => (
                    run.id.clone(),
                    format!(
                        "{} {}: {} records, {} matched",
                        run.processor, run.settlement_date, run.records, run.matched
                    ),
                ),
                Some(Step::Adjustment(a)) => (
                    a.id.clone(),
                    format!(
                        "{} for {}",
                        crate::amounts::show(a.amount.as_ref()),
                        a.discrepancy_id
                    ),
                ),
                None => (String::new(), String::new()),
            };
            (id, String::new(), String::new(), e.sequence, summary)
        }
        None => (
            String::new(),
            String::new(),
            String::new(),
            0,
            String::new(),
        ),
    };
    let actor = event.actor.as_ref();
    vec![
        Value::text(&event.cursor),
        Value::text(&event.id),
        Value::Time(event.create_time),
        Value::text(&event.r#type),
        Value::Text(subject),
        Value::Text(payment_id),
        Value::Text(card_group_id),
        Value::Integer(sequence),
        Value::Text(show_actor(actor)),
        Value::text(actor.map_or("", |a| a.name.as_str())),
        Value::text(actor.map_or("", |a| a.role.as_str())),
        Value::Text(summary),
    ]
}

#[cfg(test)]
mod tests {
    use tandem_proto::tandem::r#type::v1 as types;

    use super::*;
    use crate::print::row;

    /// A payment's event and a card group's print side by side: people see the payment or
    /// group as the subject and the actor as `name (role)`; machines get the cursor, the ids
    /// and the actor's parts.
    #[test]
    fn events() {
        let time = Some(prost_types::Timestamp {
            seconds: 1_735_689_600,
            nanos: 0,
        });
        let actor = Some(types::Actor {
            name: "billing-service".to_owned(),
            role: "payer".to_owned(),
        });
        let payment_event = pb::Event {
            id: "evt_1".to_owned(),
            r#type: "payment.created".to_owned(),
            actor: actor.clone(),
            create_time: time,
            cursor: "c1".to_owned(),
            subject: Some(pb::event::Subject::PaymentEvent(pb::PaymentEvent {
                sequence: 1,
                payment: Some(pb::Payment {
                    id: "pay_1".to_owned(),
                    ..Default::default()
                }),
                summary: "Invoice INV-1 created".to_owned(),
                ..Default::default()
            })),
        };
        let group_event = pb::Event {
            id: "evt_2".to_owned(),
            r#type: "card_group.created".to_owned(),
            actor: None,
            create_time: time,
            cursor: "c2".to_owned(),
            subject: Some(pb::event::Subject::CardGroupEvent(pb::CardGroupEvent {
                sequence: 1,
                card_group: Some(pb::CardGroup {
                    id: "cg_1".to_owned(),
                    display_name: "Acme".to_owned(),
                    billing_account_id: "acct-42".to_owned(),
                    ..Default::default()
                }),
                ..Default::default()
            })),
        };
        let adjustment_event = pb::Event {
            cursor: "c3".to_owned(),
            id: "evt_3".to_owned(),
            r#type: "reconciliation.adjustment_approved".to_owned(),
            create_time: time,
            actor: Some(types::Actor {
                name: "bob".to_owned(),
                role: "approver".to_owned(),
            }),
            subject: Some(pb::event::Subject::ReconciliationEvent(
                pb::ReconciliationEvent {
                    sequence: 2,
                    subject: Some(pb::reconciliation_event::Subject::Adjustment(
                        pb::Adjustment {
                            id: "adj_1".to_owned(),
                            discrepancy_id: "dsc_1".to_owned(),
                            amount: Some(types::Money {
                                currency_code: "USD".to_owned(),
                                minor_units: 7,
                            }),
                            ..Default::default()
                        },
                    )),
                    ..Default::default()
                },
            )),
        };
        let lines = |format| -> Vec<String> {
            [&payment_event, &group_event, &adjustment_event]
                .into_iter()
                .map(|event| row(format, COLUMNS, &event_row(event)))
                .collect()
        };
        assert_eq!(
            lines(Format::Table),
            [
                "2025-01-01T00:00:00Z  payment.created                     pay_1                              1  billing-service (payer)   Invoice INV-1 created",
                "2025-01-01T00:00:00Z  card_group.created                  cg_1                               1  -                         Acme (acct-42)",
                "2025-01-01T00:00:00Z  reconciliation.adjustment_approved  adj_1                              2  bob (approver)            0.07 USD for dsc_1",
            ]
        );
        assert_eq!(
            lines(Format::Csv),
            [
                "c1,evt_1,2025-01-01T00:00:00Z,payment.created,pay_1,,1,billing-service,payer,Invoice INV-1 created",
                "c2,evt_2,2025-01-01T00:00:00Z,card_group.created,,cg_1,1,,,Acme (acct-42)",
                "c3,evt_3,2025-01-01T00:00:00Z,reconciliation.adjustment_approved,,,2,bob,approver,0.07 USD for dsc_1",
            ]
        );
    }

    /// Only errors that may pass on their own are retried by `--follow`.
    #[test]
    fn transient_errors() {
        for (code, transient) in [
            (tonic::Code::Unavailable, true),
            (tonic::Code::DeadlineExceeded, true),
            (tonic::Code::ResourceExhausted, true),
            (tonic::Code::InvalidArgument, false),
            (tonic::Code::PermissionDenied, false),
        ] {
            assert_eq!(
                is_transient(&tonic::Status::new(code, "")),
                transient,
                "{code:?}"
            );
        }
    }
}
