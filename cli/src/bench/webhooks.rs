//! `tandemctl bench webhooks`: how fast the orchestrator delivers webhooks to a receiver that
//! answers at once, and how long after their commit events arrive under steady payments.
//!
//! It starts a vault and an orchestrator as child processes (webhooks on with a fresh sealing
//! key, plain http to 127.0.0.1 allowed, the reconciliation worker off, no limits per caller)
//! and, in this process, the receiver of `tandemctl webhooks listen` on a free port of
//! 127.0.0.1, registered as an endpoint for every event. The receiver checks every delivery's
//! signature and answers `204` at once; a refused one is reported. Then two phases:
//!
//! 1. **Throughput.** The endpoint is disabled while `--payments` payments (`CreatePayment`
//!    waited for, `--concurrency` at a time, from `--groups` card groups of `--cards` cards,
//!    split in parallel) commit their events, which the endpoint keeps; enabling it sends the
//!    whole backlog. Reported: the events (every one of the feed since the endpoint was made),
//!    the time from enabling to the last one's arrival, and events per second.
//! 2. **Lag.** `bench pay`'s load in the shape of `--rate` (open loop) or `--concurrency`
//!    (closed), for `--duration` after `--warmup`. Every event committed in the measured window
//!    (by the feed) is waited for, up to [`STRAGGLER_TIMEOUT`] after the window: its lag is
//!    its first arrival at the receiver minus its commit time (the payload's `timestamp`).
//!    Reported: p50, p90, p99 and max, and the events not delivered in time. Target: p99 under
//!    1 s.
//!
//! A short run for CI: `--payments 200 --rate 20 --duration 3s --warmup 1s --no-baseline`.
//! The orchestrator's other `TANDEM_ORCHESTRATOR__WEBHOOK__...` settings (concurrency, poll)
//! pass through the environment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use base64::Engine as _;
use futures::StreamExt as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::orchestrator::v1::webhook_service_client::WebhookServiceClient;
use tandem_tls::identity::Role;
use time::OffsetDateTime;

use super::flood::payment;
use super::measure::{Report, Window, run_load};
use super::pay::{PAYMENT_CALL_TIMEOUT, SplitStrategy, create_groups};
use super::stack::{CALL_TIMEOUT, Stack, channels};
use super::tokenize::tokenize_cards;
use super::{LoadArgs, check_shape};
use crate::dev;
use crate::process::ORCHESTRATOR_UNLIMITED;
use crate::webhooks::listen::{self, Outcome, SigningSecret, Sink};
use crate::webhooks::{Change, update_request};

/// Most payments of the throughput phase.
const PAYMENTS_MAX: usize = 1_000_000;
/// Most card groups the load pays from.
const GROUPS_MAX: usize = 1_024;
/// Most cards per group (the orchestrator's limit).
const GROUP_CARDS_MAX: usize = 32;
/// How long the throughput phase waits for its backlog: this, plus [`BACKLOG_TIMEOUT_PER_EVENT`]
/// for each event.
const BACKLOG_TIMEOUT: Duration = Duration::from_secs(60);
const BACKLOG_TIMEOUT_PER_EVENT: Duration = Duration::from_millis(20);
/// How long after the measured window the lag phase waits for the window's events.
const STRAGGLER_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two looks at what has arrived.
const ARRIVAL_POLL: Duration = Duration::from_millis(10);
/// Events per `ListEvents` call, and the most calls one read of the feed makes.
const FEED_PAGE_SIZE: i32 = 1_000;
const FEED_PAGES_MAX: usize = 100_000;
/// The target of the lag phase: p99 under this.
const LAG_P99_TARGET: Duration = Duration::from_secs(1);
/// The path the endpoint posts to.
const RECEIVER_PATH: &str = "/webhooks";

/// Arguments of `tandemctl bench webhooks`.
#[derive(Debug, clap::Args)]
pub struct WebhooksArgs {
    /// Payments whose events make the throughput phase's backlog.
    #[arg(long, default_value_t = 1_000)]
    payments: usize,
    /// Cards in each group: a payment has one leg (and its events) per card.
    #[arg(long, default_value_t = 3)]
    cards: usize,
    /// Card groups paid from (client k pays from group k mod `groups`).
    #[arg(long, default_value_t = 16)]
    groups: usize,
    /// `--concurrency`: payments in flight in both phases (closed loop in the lag phase unless
    /// `--rate`); `--rate`, `--duration` and `--warmup`: the lag phase's load.
    #[command(flatten)]
    load: LoadArgs,
}

/// What the receiver saw.
#[derive(Debug, Default)]
struct Arrivals {
    /// Per `webhook-id`, its first arrival.
    first: HashMap<String, Arrival>,
    /// Accepted requests, repeats included.
    deliveries: u64,
    /// Refused requests, and why the first one was.
    refused: u64,
    first_refusal: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Arrival {
    receive_time: OffsetDateTime,
    /// The payload's `timestamp`.
    commit_time: Option<OffsetDateTime>,
}

type Shared = Arc<Mutex<Arrivals>>;

fn lock(arrivals: &Shared) -> std::sync::MutexGuard<'_, Arrivals> {
    // A panic while holding the lock leaves counts that are still counts.
    arrivals.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs the benchmark.
pub async fn run(args: WebhooksArgs) -> anyhow::Result<()> {
    check_shape(&args.load.shape)?;
    anyhow::ensure!(
        (1..=PAYMENTS_MAX).contains(&args.payments),
        "--payments must be 1 to {PAYMENTS_MAX}"
    );
    anyhow::ensure!(
        (1..=GROUP_CARDS_MAX).contains(&args.cards),
        "--cards must be 1 to {GROUP_CARDS_MAX}"
    );
    anyhow::ensure!(
        (1..=GROUPS_MAX).contains(&args.groups),
        "--groups must be 1 to {GROUPS_MAX}"
    );
    anyhow::ensure!(
        args.load.vault.is_none(),
        "bench webhooks starts its own orchestrator with webhooks on: it cannot target --vault"
    );
    dev::ensure_certificates(&args.load.certs)?;
    let mut stack = Stack::new()?;
    let result = measure(&args, &mut stack).await;
    stack.stop();
    result
}

async fn measure(args: &WebhooksArgs, stack: &mut Stack) -> anyhow::Result<()> {
    let load = &args.load;
    let shape = &load.shape;
    let vault_uri = stack.vault(load).await?;
    let mut key = zeroize::Zeroizing::new([0u8; 32]);
    getrandom::getrandom(key.as_mut_slice())
        .map_err(|e| anyhow::anyhow!("the operating system's random source: {e}"))?;
    let key =
        zeroize::Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(key.as_slice()));
    let env = [
        &ORCHESTRATOR_UNLIMITED[..],
        &[
            ("TANDEM_ORCHESTRATOR__WEBHOOK__SECRET_KEY", key.as_str()),
            (
                "TANDEM_ORCHESTRATOR__WEBHOOK__ALLOW_HOSTS",
                "[\"127.0.0.1\"]",
            ),
            (
                "TANDEM_ORCHESTRATOR__RECONCILIATION__WORKER_ENABLED",
                "false",
            ),
        ],
    ]
    .concat();
    let orchestrator_uri = stack
        .start_orchestrator(&load.certs, &shape.database_url, &env)
        .await?;

    let run_id = super::run_id();
    let tokens = tokenize_cards(&vault_uri, &load.certs, &run_id, args.cards * args.groups).await?;
    let group_ids = create_groups(
        &orchestrator_uri,
        &load.certs,
        &run_id,
        tokens.chunks(args.cards),
        SplitStrategy::Parallel,
        0,
    )
    .await?;
    let payers: Vec<_> = channels(
        &orchestrator_uri,
        &load.certs,
        Role::Payer,
        shape.concurrency,
        PAYMENT_CALL_TIMEOUT,
    )
    .await?
    .into_iter()
    .map(PaymentServiceClient::new)
    .collect();
    let mut feed = PaymentServiceClient::new(
        channels(
            &orchestrator_uri,
            &load.certs,
            Role::Reader,
            1,
            CALL_TIMEOUT,
        )
        .await?
        .remove(0),
    );
    let mut webhooks = WebhookServiceClient::new(
        channels(
            &orchestrator_uri,
            &load.certs,
            Role::Treasury,
            1,
            CALL_TIMEOUT,
        )
        .await?
        .remove(0),
    );

    // The receiver, and its endpoint made after everything so far: it is sent what follows.
    let (_, before_endpoint) = read_feed(&mut feed, String::new()).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}{RECEIVER_PATH}", listener.local_addr()?);
    let created = webhooks
        .create_webhook_endpoint(pb::CreateWebhookEndpointRequest {
            request_id: format!("bench-{run_id}-endpoint"),
            url,
            event_types: Vec::new(),
            description: "tandemctl bench webhooks".to_owned(),
        })
        .await
        .map_err(crate::connect::failure)
        .context("creating the bench's webhook endpoint")?
        .into_inner();
    let endpoint_id = created.endpoint.context("no endpoint in the response")?.id;
    let secret = SigningSecret::parse(&created.secret)?;
    let arrivals = Shared::default();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let receiver = tokio::spawn(listen::serve(
        listener,
        vec![secret],
        recorder(arrivals.clone()),
        async move {
            let _ = stopped.await;
        },
    ));
    let result = async {
        let throughput = backlog(
            args,
            &run_id,
            &payers,
            &group_ids,
            &mut feed,
            &mut webhooks,
            &endpoint_id,
            before_endpoint,
            &arrivals,
        )
        .await?;
        let after = throughput.cursor.clone();
        let lag = lag(
            args, &run_id, &payers, &group_ids, &mut feed, after, &arrivals,
        )
        .await?;
        Ok::<_, anyhow::Error>((throughput, lag))
    }
    .await;
    let _ = stop.send(());
    receiver.await.context("the webhook receiver's task")??;
    let (throughput, lag) = result?;
    let peak_rss = stack.peak_rss();

    println!(
        "webhooks ({} cards parallel, {} card groups; receiver on 127.0.0.1 answering 204, \
         signatures checked): {}",
        args.cards, args.groups, shape
    );
    println!("{throughput}");
    println!("{lag}");
    let arrivals = lock(&arrivals);
    println!(
        "  receiver: {} deliveries of {} events ({} repeated), {} refused{}",
        arrivals.deliveries,
        arrivals.first.len(),
        arrivals.deliveries - arrivals.first.len() as u64,
        arrivals.refused,
        arrivals
            .first_refusal
            .as_deref()
            .map(|why| format!(" (first: {why})"))
            .unwrap_or_default()
    );
    for (name, bytes) in peak_rss {
        if let Some(bytes) = bytes {
            println!("  peak RSS {name}: {:.1} MiB", bytes as f64 / 1048576.0);
        }
    }
    Ok(())
}

/// A sink that records each event's first arrival and counts every delivery and refusal.
fn recorder(arrivals: Shared) -> Sink {
    Arc::new(move |outcome| {
        let mut arrivals = lock(&arrivals);
        match outcome {
            Outcome::Accepted(event) => {
                arrivals.deliveries += 1;
                arrivals.first.entry(event.id).or_insert(Arrival {
                    receive_time: event.receive_time,
                    commit_time: event.commit_time,
                });
            }
            Outcome::Refused { id, refusal } => {
                arrivals.refused += 1;
                arrivals
                    .first_refusal
                    .get_or_insert_with(|| format!("{id}: {refusal}"));
            }
        }
    })
}

/// What the throughput phase measured.
struct Throughput {
    payments: usize,
    failed_payments: usize,
    events: usize,
    /// From enabling the endpoint to the first event's arrival, and to the last's.
    first: Duration,
    last: Duration,
    /// The feed's position after the backlog's events.
    cursor: String,
}

impl std::fmt::Display for Throughput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = self.last.as_secs_f64();
        write!(
            f,
            "  backlog: {} events of {} payments ({} failed) delivered {:.2} s after enabling \
             the endpoint (the first after {:.0} ms): {:.0} events/s",
            self.events,
            self.payments,
            self.failed_payments,
            seconds,
            self.first.as_secs_f64() * 1000.0,
            if seconds > 0.0 {
                self.events as f64 / seconds
            } else {
                0.0
            }
        )
    }
}

/// The throughput phase: payments commit their events while the endpoint is disabled, then the
/// endpoint is enabled and the backlog timed until its last event arrives.
#[allow(clippy::too_many_arguments)]
async fn backlog(
    args: &WebhooksArgs,
    run_id: &str,
    payers: &[PaymentServiceClient<tonic::transport::Channel>],
    group_ids: &[String],
    feed: &mut PaymentServiceClient<tonic::transport::Channel>,
    webhooks: &mut WebhookServiceClient<tonic::transport::Channel>,
    endpoint_id: &str,
    after: String,
    arrivals: &Shared,
) -> anyhow::Result<Throughput> {
    set_state(
        webhooks,
        run_id,
        endpoint_id,
        pb::WebhookEndpointState::Disabled,
    )
    .await?;
    let outcomes: Vec<bool> = futures::stream::iter(0..args.payments)
        .map(|n| {
            let mut client = payers[n % payers.len()].clone();
            let request = payment(
                &group_ids[n % group_ids.len()],
                format!("bench-{run_id}-backlog-{n}"),
                true,
            );
            async move {
                client.create_payment(request).await.is_ok_and(|response| {
                    response
                        .get_ref()
                        .payment
                        .as_ref()
                        .is_some_and(|p| p.state == i32::from(pb::PaymentState::Succeeded))
                })
            }
        })
        .buffer_unordered(args.load.shape.concurrency)
        .collect()
        .await;
    let failed_payments = outcomes.iter().filter(|ok| !**ok).count();
    let (events, cursor) = read_feed(feed, after).await?;
    let expected: Vec<String> = events.into_iter().map(|(id, _)| id).collect();
    anyhow::ensure!(
        lock(arrivals).first.is_empty(),
        "the disabled endpoint received events"
    );

    let enabled = OffsetDateTime::now_utc();
    set_state(
        webhooks,
        run_id,
        endpoint_id,
        pb::WebhookEndpointState::Enabled,
    )
    .await?;
    let timeout = BACKLOG_TIMEOUT + BACKLOG_TIMEOUT_PER_EVENT * expected.len() as u32;
    let missing = wait_for(arrivals, expected.clone(), timeout).await;
    anyhow::ensure!(
        missing == 0,
        "{missing} of the backlog's {} events did not arrive within {} s",
        expected.len(),
        timeout.as_secs()
    );
    let times: Vec<OffsetDateTime> = {
        let arrived = lock(arrivals);
        expected
            .iter()
            .filter_map(|id| arrived.first.get(id))
            .map(|arrival| arrival.receive_time)
            .collect()
    };
    let (first, last) = (times.iter().min().copied(), times.iter().max().copied());
    let since = |time: Option<OffsetDateTime>| {
        time.map_or(Duration::ZERO, |t| {
            Duration::try_from(t - enabled).unwrap_or(Duration::ZERO)
        })
    };
    Ok(Throughput {
        payments: args.payments,
        failed_payments,
        events: expected.len(),
        first: since(first),
        last: since(last),
        cursor,
    })
}

/// Enables or disables the endpoint.
async fn set_state(
    webhooks: &mut WebhookServiceClient<tonic::transport::Channel>,
    run_id: &str,
    endpoint_id: &str,
    state: pb::WebhookEndpointState,
) -> anyhow::Result<()> {
    let request = update_request(
        format!("bench-{run_id}-{}", state.as_str_name().to_lowercase()),
        endpoint_id.to_owned(),
        Change {
            state: Some(state),
            ..Change::default()
        },
    )?;
    webhooks
        .update_webhook_endpoint(request)
        .await
        .map_err(crate::connect::failure)
        .with_context(|| format!("setting the endpoint {}", state.as_str_name()))?;
    Ok(())
}

/// What the lag phase measured.
struct Lag {
    payments: Report,
    /// Lags of the events of the window that arrived, sorted, in microseconds.
    lags_us: Vec<u64>,
    /// Events of the window that did not arrive within [`STRAGGLER_TIMEOUT`].
    missing: usize,
    window: Duration,
}

impl std::fmt::Display for Lag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let lags = Report::new(&self.lags_us, self.missing as u64, self.window);
        let ms = |us: u64| us as f64 / 1000.0;
        let met = self.missing == 0 && lags.p99_us < LAG_P99_TARGET.as_micros() as u64;
        writeln!(f, "  payments during the lag phase:")?;
        writeln!(f, "{}", self.payments)?;
        write!(
            f,
            "  delivery lag (arrival minus commit) of {} events ({:.0} events/s), {} not \
             delivered within {} s: ms p50 {:.1}  p90 {:.1}  p99 {:.1}  max {:.1} (target p99 \
             < {} ms: {})",
            lags.ok,
            lags.per_second,
            self.missing,
            STRAGGLER_TIMEOUT.as_secs(),
            ms(lags.p50_us),
            ms(lags.p90_us),
            ms(lags.p99_us),
            ms(lags.max_us),
            LAG_P99_TARGET.as_millis(),
            if met { "met" } else { "not met" }
        )
    }
}

/// The lag phase: steady payments for the window, then every event committed in it waited
/// for and its lag taken.
async fn lag(
    args: &WebhooksArgs,
    run_id: &str,
    payers: &[PaymentServiceClient<tonic::transport::Channel>],
    group_ids: &[String],
    feed: &mut PaymentServiceClient<tonic::transport::Channel>,
    after: String,
    arrivals: &Shared,
) -> anyhow::Result<Lag> {
    let shape = &args.load.shape;
    let (began, began_wall) = (Instant::now(), OffsetDateTime::now_utc());
    let window = Window::after(shape.warmup, shape.duration);
    let wall = |instant: Instant| began_wall + instant.duration_since(began);
    let (window_start, window_end) = (wall(window.start), wall(window.end));
    let clients = Arc::new(payers.to_vec());
    let groups = Arc::new(group_ids.to_vec());
    let run_id_owned = run_id.to_owned();
    let mut payments = run_load(shape, window, move |worker, n| {
        let mut client = clients[worker % clients.len()].clone();
        let request = payment(
            &groups[worker % groups.len()],
            format!("bench-{run_id_owned}-lag-{worker}-{n}"),
            true,
        );
        async move {
            client.create_payment(request).await.is_ok_and(|response| {
                response
                    .get_ref()
                    .payment
                    .as_ref()
                    .is_some_and(|p| p.state == i32::from(pb::PaymentState::Succeeded))
            })
        }
    })
    .await?;
    payments.unit = "payments";

    let (events, _) = read_feed(feed, after).await?;
    let expected: Vec<String> = events
        .into_iter()
        .filter(|(_, time)| (window_start..window_end).contains(time))
        .map(|(id, _)| id)
        .collect();
    let missing = wait_for(arrivals, expected.clone(), STRAGGLER_TIMEOUT).await;
    let arrived = lock(arrivals);
    let mut lags_us: Vec<u64> = expected
        .iter()
        .filter_map(|id| arrived.first.get(id))
        .filter_map(|arrival| {
            let lag = arrival.receive_time - arrival.commit_time?;
            // A receipt before its commit (clock steps) counts as no lag.
            Some(u64::try_from(lag.whole_microseconds()).unwrap_or(0))
        })
        .collect();
    lags_us.sort_unstable();
    // An arrival whose payload had no readable timestamp cannot be measured: count it missing.
    let unmeasured = expected.len() - missing - lags_us.len();
    Ok(Lag {
        payments,
        lags_us,
        missing: missing + unmeasured,
        window: shape.duration,
    })
}

/// Waits until every event of `expected` has arrived, or `timeout`; returns how many had not.
async fn wait_for(arrivals: &Shared, mut expected: Vec<String>, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        {
            let arrived = lock(arrivals);
            expected.retain(|id| !arrived.first.contains_key(id));
        }
        if expected.is_empty() || Instant::now() >= deadline {
            return expected.len();
        }
        tokio::time::sleep(ARRIVAL_POLL).await;
    }
}

/// The feed's events after `after` (its beginning when empty), with their commit times, and
/// the position to read on from.
async fn read_feed(
    feed: &mut PaymentServiceClient<tonic::transport::Channel>,
    after: String,
) -> anyhow::Result<(Vec<(String, OffsetDateTime)>, String)> {
    let mut events = Vec::new();
    let mut cursor = after;
    for _ in 0..FEED_PAGES_MAX {
        let page = feed
            .list_events(pb::ListEventsRequest {
                page_size: FEED_PAGE_SIZE,
                page_token: cursor.clone(),
                event_types: Vec::new(),
            })
            .await
            .map_err(crate::connect::failure)
            .context("reading the event feed")?
            .into_inner();
        for event in page.events {
            let time = event
                .create_time
                .and_then(|t| {
                    OffsetDateTime::from_unix_timestamp_nanos(
                        i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos),
                    )
                    .ok()
                })
                .with_context(|| format!("event {} has no create_time", event.id))?;
            cursor = event.cursor;
            events.push((event.id, time));
        }
        if !page.next_page_token.is_empty() {
            cursor = page.next_page_token;
            continue;
        }
        // Caught up: read on past every event this call examined.
        if !page.resume_page_token.is_empty() {
            cursor = page.resume_page_token;
        }
        return Ok((events, cursor));
    }
    anyhow::bail!("the feed did not end within {FEED_PAGES_MAX} pages")
}
