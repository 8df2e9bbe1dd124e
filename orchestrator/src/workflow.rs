//! The payment workflow: the thin IO shell around the saga's pure decisions (DESIGN section 5,
//! the Stripe idempotency-key recipe).
//!
//! Driving a payment is a loop of three steps:
//!
//! 1. **Intents**: ask the record for the vault operations to run (recording each new
//!    authorization attempt and holding its amount against the card's monthly limit), write
//!    the events, renew the lease, commit. They ride the transaction before them: the first
//!    round's commit with the new payment (`CreatePayment`), each next round's with the results
//!    of the last, unless a wait comes between (a retry of the same card, an unknown answer):
//!    then, and for a payment resumed by recovery, they get a transaction of their own that
//!    locks the payment and checks this instance holds its lease.
//! 2. **Calls**: the round's operations go to the vault with their deterministic request ids,
//!    one batch call per kind (`BatchAuthorize`, `BatchCapture`, `BatchVoid`) made at once. An
//!    authorization found in flight from before (a crash, a lost answer) is first looked up
//!    with `GetCharge` and re-sent only if the vault has no answer.
//! 3. **Results**, through the results committer (one transaction for the results of many
//!    payments): lock the payment again, check the lease, record every answer (saga outcome,
//!    attempt, events), book its ledger transfer, adjust the spend, and write the next round's
//!    intents (or release the lease of a settled payment), commit.
//!
//! A crash between any two steps leaves a committed intent whose operation is re-sent (the
//! vault replays it) by whoever drives the payment next: this instance's next round, or, once
//! the lease expires, any instance's recovery worker, which leases expired payments with
//! `FOR UPDATE SKIP LOCKED`. Every write checks the lease, so an instance that lost it stops
//! at its next step without writing.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use sqlx::PgPool;
use tandem_ledger::types::{NewAccount, TransferResult};
use tandem_runtime::admission::InFlight;
use tandem_runtime::database::ConflictRetry;
use time::OffsetDateTime;
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tracing::Instrument as _;

use crate::config::PaymentSettings;
use crate::domain::booking::{self, BookingContext};
use crate::domain::record::PaymentRecord;
use crate::domain::record::events::Event;
use crate::domain::record::refunds::RefundStep;
use crate::domain::record::steps::{AuthorizeAnswer, SpendChange, Step, Suspension};
use crate::domain::risk;
use crate::domain::saga::{Command, Outcome, PaymentState};
use crate::error::Error;
use crate::feeds::Feeds;
use crate::grpc::convert;
use crate::metrics::Observed;
use crate::storage::{self, StoredContent, StoredPayment};
use crate::vault::{
    AuthorizeItem, Operation, RefundAnswer, SettleItem, Settled, Unknown, VaultClient,
};
use tandem_runtime::ids::random_fraction as jitter;
use tandem_runtime::time::now_micros as now;

/// Where a test may stop the workflow dead, as a crash would: the drive never returns and
/// writes nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// After the intents committed, before any vault call.
    AfterIntent,
    /// After the vault answered, before the results committed.
    AfterCall,
    /// After the results committed, before the next round.
    AfterResult,
}

/// A crash to simulate: at `point`, the `nth` time (from 1) any drive reaches it.
#[derive(Debug)]
pub struct CrashPlan {
    /// Where.
    pub point: CrashPoint,
    /// The how-manieth time.
    pub nth: u32,
    reached: std::sync::atomic::AtomicU32,
    /// Signalled when the crash happened.
    pub crashed: tokio::sync::Notify,
}

impl CrashPlan {
    /// A plan to crash at the `nth` passage of `point`.
    pub fn new(point: CrashPoint, nth: u32) -> Arc<Self> {
        Arc::new(Self {
            point,
            nth,
            reached: Default::default(),
            crashed: tokio::sync::Notify::new(),
        })
    }

    async fn check(&self, point: CrashPoint) {
        if point == self.point
            && self
                .reached
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                + 1
                == self.nth
        {
            tracing::warn!(?point, "simulated crash: this drive stops here");
            self.crashed.notify_waiters();
            self.crashed.notify_one();
            std::future::pending::<()>().await;
        }
    }
}

/// Drives payments to their end; shared by the gRPC handlers and the recovery worker.
pub struct Workflow {
    pool: PgPool,
    vault: VaultClient,
    owner: String,
    settings: PaymentSettings,
    committed: broadcast::Sender<Committed>,
    /// The events of payments watched here, fed by this instance's commits and a shared reader.
    feeds: Arc<Feeds>,
    slots: Arc<Semaphore>,
    crash: Option<Arc<CrashPlan>>,
    stop: watch::Receiver<bool>,
    /// Payments this instance is driving now: a payment is never driven twice at once here,
    /// even when its lease expired mid-round and the recovery worker leased it again.
    driving: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Where drives send their results while the results committer runs.
    committer: std::sync::Mutex<Option<mpsc::Sender<(ResultsJob, Reply)>>>,
    /// Ledger accounts known to exist as they are here (a committed transaction created or
    /// found them; accounts are never deleted), so that paying from the same cards again
    /// does not ask the ledger to create them again. At most [`KNOWN_ACCOUNTS_MAX`].
    known_accounts: std::sync::Mutex<HashMap<String, NewAccount>>,
}

/// Most ledger accounts [`Workflow`] remembers; past it, it forgets them all and starts over.
const KNOWN_ACCOUNTS_MAX: usize = 100_000;

/// How the saga's transactions run again after losing a serialization or deadlock race
/// (nothing of the lost run was committed; the payment is read again).
pub(crate) const CONFLICT_RETRY: ConflictRetry =
    ConflictRetry::counted_in(crate::metrics::TRANSACTION_RETRIES);

/// Removes a payment from [`Workflow::driving`] when its drive ends, however it ends.
struct Driving<'w> {
    workflow: &'w Workflow,
    payment_id: String,
}

impl Drop for Driving<'_> {
    fn drop(&mut self) {
        if let Ok(mut driving) = self.workflow.driving.lock() {
            driving.remove(&self.payment_id);
        }
    }
}

/// A drive's next round.
pub(crate) enum Round {
    /// Operations to run.
    Steps(Vec<Step>, Vec<RefundStep>, Box<PaymentRecord>),
    /// Nothing left to do.
    Settled,
    /// Another instance holds the lease.
    Lost,
}

impl Round {
    /// The round of `steps` and `refunds` planned for `record`; none left means settled (or,
    /// for a payment not settled, that whoever drives it next will find them).
    pub(crate) fn of(steps: Vec<Step>, refunds: Vec<RefundStep>, record: PaymentRecord) -> Round {
        if !steps.is_empty() || !refunds.is_empty() {
            Round::Steps(steps, refunds, Box::new(record))
        } else if record.is_settled() {
            Round::Settled
        } else {
            Round::Lost
        }
    }
}

impl Workflow {
    /// A workflow for this instance (`owner` names it in leases).
    pub fn new(
        pool: PgPool,
        vault: VaultClient,
        settings: PaymentSettings,
        crash: Option<Arc<CrashPlan>>,
        stop: watch::Receiver<bool>,
    ) -> Arc<Self> {
        let (committed, _) = broadcast::channel(1024);
        let feeds = Feeds::new(pool.clone(), Duration::from_millis(settings.watch_poll_ms));
        Arc::new(Self {
            feeds,
            pool,
            vault,
            owner: format!("orchestrator-{}", uuid::Uuid::new_v4()),
            slots: Arc::new(Semaphore::new(settings.workflows_max)),
            settings,
            committed,
            crash,
            stop,
            driving: Default::default(),
            committer: Default::default(),
            known_accounts: Default::default(),
        })
    }

    /// Starts the results committer ([`Workflow::results_loop`]) on this runtime.
    pub fn start_committer(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let (sender, receiver) = mpsc::channel(self.settings.workflows_max.max(1));
        if let Ok(mut committer) = self.committer.lock() {
            *committer = Some(sender);
        }
        tokio::spawn(self.clone().results_loop(receiver))
    }

    /// The database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The vault client.
    pub fn vault(&self) -> &VaultClient {
        &self.vault
    }

    /// Of `accounts`, those not known to exist as they are: the ones to create.
    pub(crate) fn unknown_accounts(&self, mut accounts: Vec<NewAccount>) -> Vec<NewAccount> {
        if let Ok(known) = self.known_accounts.lock() {
            accounts.retain(|account| known.get(account.id.as_str()) != Some(account));
        }
        accounts
    }

    /// Remembers `accounts` once a transaction that created them (or found them) committed.
    pub(crate) fn remember_accounts(&self, accounts: Vec<NewAccount>) {
        if let Ok(mut known) = self.known_accounts.lock() {
            if known.len() + accounts.len() > KNOWN_ACCOUNTS_MAX {
                known.clear();
            }
            for account in accounts {
                known.insert(account.id.as_str().to_owned(), account);
            }
        }
    }

    /// Whether this instance is driving `payment_id` now.
    pub fn is_driving(&self, payment_id: &str) -> bool {
        self.driving
            .lock()
            .is_ok_and(|driving| driving.contains(payment_id))
    }

    /// This instance's name in leases.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The settings.
    pub fn settings(&self) -> &PaymentSettings {
        &self.settings
    }

    /// The feeds of watched payments; run [`Feeds::run`] beside the workflow.
    pub fn feeds(&self) -> &Arc<Feeds> {
        &self.feeds
    }

    /// Announcements, each sent after a transaction that wrote events of a payment committed.
    pub fn subscribe(&self) -> broadcast::Receiver<Committed> {
        self.committed.subscribe()
    }

    /// Tells this instance's waiters that a change of `payment_id` committed, leaving the
    /// payment in a terminal state or not.
    pub(crate) fn announce(&self, payment_id: &str, terminal: bool) {
        self.feeds.changed(payment_id);
        let _ = self.committed.send(Committed {
            payment_id: payment_id.to_owned(),
            terminal,
        });
    }

    /// The lease a write taken now grants.
    pub fn lease_until(&self, now: OffsetDateTime) -> OffsetDateTime {
        now + self.settings.lease()
    }

    /// Renews the lease of a payment this instance drives once a quarter of it is gone: often
    /// enough that a round (a vault call, at most a quarter of the lease, and a wait before the
    /// next, at most another quarter) never outlives it; rarely enough that most steps leave
    /// `lease_until`, the one indexed column a step would change, as it is, so that Postgres
    /// updates the payment's row in place (a HOT update, no index writes).
    fn renew_lease(&self, stored: &mut StoredPayment, now: OffsetDateTime) {
        let lease = self.settings.lease();
        if now + lease * 3 / 4 > stored.lease_until {
            stored.lease_until = now + lease;
        }
    }

    /// Drives `payment_id` in the background, within the instance's bound on concurrent
    /// drives. On shutdown the drive stops where it is, as a crash would, and the payment's
    /// lease expires for another instance (or this one after a restart) to resume it.
    ///
    /// `admitted` is the ticket of the call that started the drive: held until the drive
    /// ends, it keeps the work among its caller's calls in flight, so a caller cannot queue
    /// more background work than its limits admit.
    pub fn spawn(self: &Arc<Self>, payment_id: String, admitted: Option<InFlight>) {
        self.spawn_from(payment_id, admitted, None);
    }

    /// [`Workflow::spawn`], starting with `first` when the round was planned (its intents
    /// committed) by the caller, as `CreatePayment` does.
    pub(crate) fn spawn_from(
        self: &Arc<Self>,
        payment_id: String,
        admitted: Option<InFlight>,
        first: Option<Round>,
    ) {
        let fresh = self
            .driving
            .lock()
            .map(|mut driving| driving.insert(payment_id.clone()))
            .unwrap_or(false);
        if !fresh {
            return;
        }
        let workflow = self.clone();
        let mut stop = self.stop.clone();
        // The drive's span: a child of the call that started it (none for recovery), with the
        // payment's correlation id once its record is read, on every line it logs (at ERROR, so
        // whatever RUST_LOG lets through carries it).
        let span = tracing::error_span!(
            "drive",
            otel.name = "payment drive",
            payment_id = %payment_id,
            correlation_id = tracing::field::Empty,
        );
        tokio::spawn(
            async move {
                let _admitted = admitted;
                let _driving = Driving {
                    workflow: &workflow,
                    payment_id: payment_id.clone(),
                };
                let drive = async {
                    let Ok(_slot) = workflow.slots.clone().acquire_owned().await else {
                        return;
                    };
                    if let Err(error) = workflow.drive_from(&payment_id, first).await {
                        tracing::warn!(
                            payment_id,
                            %error,
                            "payment drive stopped; recovery resumes it"
                        );
                    }
                };
                tokio::select! {
                    () = drive => {}
                    _ = stop.wait_for(|stopped| *stopped) => {}
                }
            }
            .instrument(span),
        );
    }

    /// Drives a payment (leased to this instance) until nothing is left to do, the lease is
    /// lost, or the vault's answers stay unknown for `vault_retries_max` rounds (recovery then
    /// resumes it once the lease expires).
    pub async fn drive(&self, payment_id: &str) -> Result<(), Error> {
        self.drive_from(payment_id, None).await
    }

    /// [`Workflow::drive`], starting with `first` if its intents are committed already.
    async fn drive_from(&self, payment_id: &str, first: Option<Round>) -> Result<(), Error> {
        let mut unknown_rounds = 0;
        let mut refused_rounds = 0;
        let mut round = match first {
            Some(round) => round,
            None => self.intents(payment_id).await?,
        };
        let mut rounds = 0u32;
        loop {
            let (steps, refunds, record) = match round {
                Round::Steps(steps, refunds, record) => (steps, refunds, record),
                Round::Settled | Round::Lost => return Ok(()),
            };
            if rounds == 0
                && let Some(id) = &record.correlation_id
            {
                tracing::Span::current().record("correlation_id", id.as_str());
            }
            rounds += 1;
            self.crash_point(CrashPoint::AfterIntent).await;
            // Each round of the saga is a span: its steps' vault calls are its children.
            let span = tracing::info_span!(
                "round",
                otel.name = "saga round",
                round = rounds,
                steps = %round_steps(&steps, refunds.len()),
                state = crate::metrics::state_label(record.saga.state),
            );
            let (answers, refund_answers) = async {
                tokio::join!(
                    self.calls(&record, &steps),
                    join_all(refunds.iter().map(|step| self.call_refund(&record, step))),
                )
            }
            .instrument(span)
            .await;
            self.crash_point(CrashPoint::AfterCall).await;
            let unknown = answers.iter().filter(|a| a.is_err()).count()
                + refund_answers.iter().filter(|a| a.is_err()).count();
            let known: Vec<(Step, Answer)> = steps
                .into_iter()
                .zip(answers)
                .filter_map(|(step, answer)| answer.ok().map(|a| (step, a)))
                .collect();
            let known_refunds: Vec<(RefundStep, RefundAnswer)> = refunds
                .into_iter()
                .zip(refund_answers)
                .filter_map(|(step, answer)| answer.ok().map(|a| (step, a)))
                .collect();
            let mut retry_wait = self.retry_wait(&record, &known);
            // A capture or void the vault refused is sent again after a growing wait, until
            // the payment stops for an operator (`settle_refusals_max`).
            if known.iter().any(|(_, a)| matches!(a, Answer::Refused(_))) {
                refused_rounds += 1;
                let resend = self.settings.retry_delay(refused_rounds, jitter());
                retry_wait = Some(retry_wait.map_or(resend, |w| w.max(resend)));
            }
            // The results commit with the next round's intents, unless a wait comes first:
            // then (and when no answer is known) the intents are recorded after the wait, so
            // that an attempt starts when it is sent.
            let mut next = None;
            if !known.is_empty() || !known_refunds.is_empty() {
                let job = ResultsJob {
                    payment_id: payment_id.to_owned(),
                    answers: known,
                    refunds: known_refunds,
                    plan_next: retry_wait.is_none() && unknown == 0,
                };
                next = self.results(job).await?;
                if matches!(next, Some(Round::Lost)) {
                    return Ok(());
                }
                self.crash_point(CrashPoint::AfterResult).await;
            }
            let mut wait = retry_wait;
            if unknown > 0 {
                unknown_rounds += 1;
                if unknown_rounds > self.settings.vault_retries_max {
                    tracing::warn!(
                        payment_id,
                        unknown,
                        "vault outcomes still unknown; leaving the payment to recovery"
                    );
                    return Ok(());
                }
                let resend = self.settings.retry_delay(unknown_rounds, jitter());
                wait = Some(wait.map_or(resend, |w| w.max(resend)));
            }
            // Transient failures are tried again after a jittered, growing wait, so that the
            // payments a hiccup touched do not all come back at once or spend their attempts
            // in a burst. The lease outlasts the longest wait (checked in the settings).
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
            round = match next {
                Some(planned) => planned,
                None => self.intents(payment_id).await?,
            };
        }
    }

    /// The wait before the next round when an answer of this round asks to try its card
    /// again: growing with the tries that leg has had, within the payment's retry window and
    /// only while attempts remain.
    fn retry_wait(&self, record: &PaymentRecord, known: &[(Step, Answer)]) -> Option<Duration> {
        let window = self.settings.retry_window();
        let age = now() - record.create_time;
        // With its attempts used up the payment will not try again: no reason to wait.
        let tried: u32 = record.saga.legs.iter().map(|l| l.attempts).sum();
        if tried >= record.saga.attempts_max {
            return None;
        }
        known
            .iter()
            .filter_map(|(step, answer)| match (step.command, answer) {
                (Command::Authorize(leg), Answer::Authorization(answer))
                    if answer.retries_same_card() && age <= window =>
                {
                    let tries = record.saga.legs.get(leg).map_or(1, |l| l.attempts);
                    Some(self.settings.retry_delay(tries, jitter()))
                }
                _ => None,
            })
            .max()
    }

    async fn crash_point(&self, point: CrashPoint) {
        if let Some(plan) = &self.crash {
            plan.check(point).await;
        }
    }

    /// Step 1: records the intents of the next operations and renews the lease. (After a
    /// round's results, the next round's intents are recorded with them:
    /// [`Workflow::prepare_results`].)
    async fn intents(&self, payment_id: &str) -> Result<Round, Error> {
        CONFLICT_RETRY
            .run("intents", || self.intents_once(payment_id))
            .await
    }

    async fn intents_once(&self, payment_id: &str) -> Result<Round, Error> {
        let mut tx = self.pool.begin().await?;
        let Some(mut stored) = storage::payment(&mut *tx, payment_id, true).await? else {
            return Err(Error::PaymentNotFound);
        };
        if stored.lease_owner.as_deref() != Some(&self.owner) {
            return Ok(Round::Lost);
        }
        let now = now();
        let mut events = Vec::new();
        let (steps, refunds) = self
            .plan_round(&mut tx, &mut stored, &mut events, now)
            .await?;
        let observed = self.save(&mut tx, &mut stored, &events, now).await?;
        tx.commit().await?;
        observed.record();
        if !events.is_empty() {
            self.announce(payment_id, stored.record.saga.state.is_at_rest());
        }
        Ok(Round::of(steps, refunds, stored.record))
    }

    /// The intents of `stored`'s next round, written in `conn` (the caller saves the payment
    /// with `events` and commits): the saga's next operations, each new authorization's hold
    /// against its card's monthly limit, and the lease, released once the payment is settled
    /// and renewed otherwise.
    pub(crate) async fn plan_round(
        &self,
        conn: &mut sqlx::PgConnection,
        stored: &mut StoredPayment,
        events: &mut Vec<Event>,
        now: OffsetDateTime,
    ) -> Result<(Vec<Step>, Vec<RefundStep>), Error> {
        let month = storage::month_of(stored.record.create_time);
        let mut steps = Vec::new();
        // A step refused locally (the card's monthly limit) is recorded like a vault refusal,
        // and the saga decides again: a fallback leg may take its place.
        loop {
            steps.clear();
            let (mut next, mut new_events) = stored
                .record
                .next_steps(now)
                .map_err(|e| Error::Corrupt(format!("saga: {e}")))?;
            // Spend rows are locked in token order, so concurrent payments sharing cards
            // never deadlock.
            next.sort_by(|a, b| a.token.cmp(&b.token));
            events.append(&mut new_events);
            // A new authorization holds its amount against the card's monthly limit: every
            // hold of the round in one statement.
            let holding: Vec<bool> = next
                .iter()
                .map(|step| {
                    step.new
                        && matches!(step.command, Command::Authorize(_))
                        && stored.record.tracks_spend(&step.token)
                })
                .collect();
            let holds: Vec<SpendChange> = next
                .iter()
                .zip(&holding)
                .filter(|(_, holds)| **holds)
                .map(|(step, _)| stored.record.reservation(step))
                .collect();
            let held = storage::add_spends(&mut *conn, month, &holds).await?;
            let mut refused = false;
            for (step, holds) in next.into_iter().zip(holding) {
                if holds
                    && !held.contains(&step.token)
                    && let Command::Authorize(leg) = step.command
                {
                    let answer = AuthorizeAnswer::Refused {
                        reason: "MEMBER_LIMIT_REACHED".into(),
                    };
                    if let Some((_, mut more, _)) = stored
                        .record
                        .record_authorization(leg, step.attempt, answer, now)
                        .map_err(|e| Error::Corrupt(format!("saga: {e}")))?
                    {
                        events.append(&mut more);
                    }
                    refused = true;
                    continue;
                }
                steps.push(step);
            }
            if !refused {
                break;
            }
        }
        let refunds = stored.record.refund_steps();
        self.keep_lease(stored, now);
        Ok((steps, refunds))
    }

    /// Releases the lease of a settled payment and of one waiting for an operator (the
    /// recovery worker never takes those); of a payment waiting for a reviewer, until its
    /// review expires (then the recovery worker leases it, and the expiry voids its holds);
    /// renews it otherwise.
    fn keep_lease(&self, stored: &mut StoredPayment, now: OffsetDateTime) {
        if stored.record.is_settled() || stored.record.saga.state == PaymentState::NeedsOperator {
            stored.lease_owner = None;
            stored.lease_until = now;
        } else if let Some(expire) = stored.record.review_expire_time() {
            stored.lease_owner = None;
            stored.lease_until = expire;
        } else {
            self.renew_lease(stored, now);
        }
    }

    /// Step 2: runs the round's operations at the vault, one batch call for each kind
    /// (authorizations, captures, voids) made at once, and returns one answer for each step,
    /// in order. An authorization in flight from before (a crash, a lost answer) is first
    /// looked up with `GetCharge` and sent again only if the vault has no answer.
    async fn calls(&self, record: &PaymentRecord, steps: &[Step]) -> Vec<Result<Answer, Unknown>> {
        let found = join_all(steps.iter().map(|step| async move {
            match step.command {
                Command::Authorize(_) if !step.new => self
                    .vault
                    .find_authorization(&step.request_id)
                    .await
                    .map(|found| found.map(Answer::Authorization))
                    .transpose(),
                _ => None,
            }
        }))
        .await;
        let to_send = |kind: fn(&Command) -> bool| -> Vec<usize> {
            (0..steps.len())
                .filter(|&i| found[i].is_none() && kind(&steps[i].command))
                .collect()
        };
        let authorizations = to_send(|c| matches!(c, Command::Authorize(_)));
        let captures = to_send(|c| matches!(c, Command::Capture(_)));
        let voids = to_send(|c| matches!(c, Command::Void(_)));

        let correlation_id = record.correlation_id.as_deref().unwrap_or(&record.id);
        let description = format!("Invoice {}", record.invoice_id);
        let authorize_items: Vec<AuthorizeItem<'_>> = authorizations
            .iter()
            .map(|&i| AuthorizeItem {
                request_id: &steps[i].request_id,
                token: &steps[i].token,
                currency: steps[i].currency,
                amount: steps[i].amount,
                description: &description,
                reference: &record.id,
            })
            .collect();
        let settle_items = |indices: &[usize]| -> Vec<SettleItem<'_>> {
            indices
                .iter()
                .map(|&i| SettleItem {
                    request_id: &steps[i].request_id,
                    charge_id: steps[i].charge_id.as_deref().unwrap_or_default(),
                    currency: steps[i].currency,
                    amount: steps[i].amount,
                })
                .collect()
        };
        let (capture_items, void_items) = (settle_items(&captures), settle_items(&voids));
        let (authorized, captured, voided) = tokio::join!(
            self.vault.authorize_all(correlation_id, &authorize_items),
            self.vault.capture_all(correlation_id, &capture_items),
            self.vault.void_all(correlation_id, &void_items),
        );

        let mut answers = found;
        let authorized = authorized
            .into_iter()
            .map(|answer| answer.map(Answer::Authorization));
        let settled = captured.into_iter().chain(voided).map(|answer| {
            answer.map(|settled| match settled {
                Settled::Done => Answer::Settled,
                Settled::Refused(reason) => Answer::Refused(reason),
            })
        });
        let sent = authorizations.into_iter().chain(captures).chain(voids);
        for (i, answer) in sent.zip(authorized.chain(settled)) {
            answers[i] = Some(answer);
        }
        answers
            .into_iter()
            .map(|answer| answer.unwrap_or_else(|| Err(Unknown("not sent".into()))))
            .collect()
    }

    async fn call_refund(
        &self,
        record: &PaymentRecord,
        step: &RefundStep,
    ) -> Result<RefundAnswer, Unknown> {
        // A converted leg's part that returns nothing to the card (its share converts to less
        // than earlier parts' rounding gave back) is done without the vault.
        if step.amount == 0 {
            return Ok(RefundAnswer::Succeeded {
                id: String::new(),
                processor_reference: String::new(),
            });
        }
        let reason = record
            .refund(&step.refund)
            .map(|refund| refund.reason.clone())
            .unwrap_or_default();
        self.vault
            .refund(
                Operation {
                    request_id: &step.request_id,
                    correlation_id: record.correlation_id.as_deref().unwrap_or(&step.request_id),
                },
                &step.charge_id,
                step.currency,
                step.amount,
                &reason,
            )
            .await
    }

    /// Step 3: records the known answers with their bookings, and the next round's intents
    /// when the job asks for them, through the results committer (one transaction for the
    /// results of many payments) when it runs. Returns the next round if it was planned
    /// ([`Round::Lost`], with nothing written, if the lease was lost).
    async fn results(&self, job: ResultsJob) -> Result<Option<Round>, Error> {
        let sender = self.committer.lock().ok().and_then(|c| c.clone());
        let Some(sender) = sender else {
            return self.results_alone(&job).await;
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        if sender.send((job, reply)).await.is_err() {
            return Err(Error::ShuttingDown);
        }
        answer.await.unwrap_or(Err(Error::ShuttingDown))
    }

    /// Step 3 in a transaction of its own; returns as [`Workflow::results`] does.
    async fn results_alone(&self, job: &ResultsJob) -> Result<Option<Round>, Error> {
        CONFLICT_RETRY
            .run("results", || self.results_alone_once(job))
            .await
    }

    async fn results_alone_once(&self, job: &ResultsJob) -> Result<Option<Round>, Error> {
        let mut tx = self.pool.begin().await?;
        let Some(written) = self.prepare_results(&mut tx, job).await? else {
            return Ok(Some(Round::Lost));
        };
        book(&mut tx, &[written.transfers.as_slice()]).await?;
        tx.commit().await?;
        written.observed.record();
        self.announce(&job.payment_id, written.terminal);
        Ok(written.next)
    }

    /// Writes a payment's results (record, spend, events), and its next round's intents
    /// ([`Workflow::plan_round`]) if the job asks for them, in `conn`, and returns what
    /// [`Written`] holds; the caller
    /// books its ledger transfers last (the ledger's accounts are the rows every payment
    /// shares, so they are locked just before the commit). `None` if this instance no longer
    /// holds the payment's lease.
    async fn prepare_results(
        &self,
        conn: &mut sqlx::PgConnection,
        job: &ResultsJob,
    ) -> Result<Option<Written>, Error> {
        let payment_id = job.payment_id.as_str();
        let answers = job.answers.clone();
        let refunds = job.refunds.clone();
        let Some(mut stored) = storage::payment(&mut *conn, payment_id, true).await? else {
            return Err(Error::PaymentNotFound);
        };
        if stored.lease_owner.as_deref() != Some(&self.owner) {
            return Ok(None);
        }
        let tx = conn;
        let now = now();
        let mut events = Vec::new();
        let mut transfers = Vec::new();
        let mut spend: Vec<SpendChange> = Vec::new();
        let mut refused = Observed::default();
        let context = booking_context(&stored);
        for (step, answer) in answers {
            let recorded = match (step.command, answer) {
                (Command::Authorize(leg), Answer::Authorization(answer)) => {
                    let answer = answer.within_retry_window(
                        now - stored.record.create_time,
                        self.settings.retry_window(),
                    );
                    stored
                        .record
                        .record_authorization(leg, step.attempt, answer, now)
                }
                (command, Answer::Refused(reason)) => {
                    let refusals_max = self.settings.settle_refusals_max;
                    if let Some(mut new_events) =
                        stored
                            .record
                            .record_refusal(command, reason, refusals_max, now)
                    {
                        refused.append(Observed::settlement_refused(command));
                        events.append(&mut new_events);
                    }
                    continue;
                }
                (command, _) => stored.record.record_settlement(command, now),
            }
            .map_err(|e| Error::Corrupt(format!("saga: {e}")))?;
            let Some((outcome, mut new_events, mut changes)) = recorded else {
                continue;
            };
            events.append(&mut new_events);
            spend.append(&mut changes);
            transfers.extend(self.booking(&context, &stored.record, &outcome)?);
        }
        for (step, answer) in refunds {
            let (succeeded, id, reference) = match answer {
                RefundAnswer::Succeeded {
                    id,
                    processor_reference,
                } => (
                    true,
                    Some(id).filter(|id| !id.is_empty()),
                    (!processor_reference.is_empty()).then_some(processor_reference),
                ),
                RefundAnswer::Failed(id) => (false, id, None),
            };
            let Some((mut new_events, mut changes)) =
                stored.record.record_refund(&step, succeeded, id, now)
            else {
                continue;
            };
            events.append(&mut new_events);
            spend.append(&mut changes);
            if succeeded {
                let context = leg_context(&context, &stored.record, step.leg);
                let part = stored.record.refunded_part(&step, reference);
                transfers.extend(
                    booking::refund_booking(&context, &stored.record.saga, step.leg, part)
                        .map_err(|e| Error::Corrupt(format!("booking: {e}")))?,
                );
            }
        }
        let month = storage::month_of(stored.record.create_time);
        spend.retain(|change| stored.record.tracks_spend(&change.token));
        for change in &mut spend {
            change.limit = None;
        }
        storage::add_spends(&mut *tx, month, &spend).await?;
        // A card declined as lost or stolen is suspended in its group with the decline, so no
        // later payment sends it again (a statement more only when that happens).
        let suspensions: Vec<_> = events
            .iter()
            .filter_map(|event| stored.record.suspension(event))
            .collect();
        if !suspensions.is_empty() {
            suspend_members(
                &mut *tx,
                &stored.card_group_id,
                &stored.record.id,
                &suspensions,
                now,
            )
            .await?;
        }
        let planned = if job.plan_next {
            Some(
                self.plan_round(&mut *tx, &mut stored, &mut events, now)
                    .await?,
            )
        } else {
            self.keep_lease(&mut stored, now);
            None
        };
        let mut observed = self.save(&mut *tx, &mut stored, &events, now).await?;
        observed.append(refused);
        Ok(Some(Written {
            transfers,
            observed,
            terminal: stored.record.saga.state.is_at_rest(),
            next: planned.map(|(steps, refunds)| Round::of(steps, refunds, stored.record)),
        }))
    }

    /// The results committer: takes the results jobs waiting (up to `results_batch_max`),
    /// writes them all in one transaction, books all their transfers in one ledger call, and
    /// commits once: one lock of the shared ledger accounts and one WAL flush for many payments
    /// (TigerBeetle's batching, without weakening any guarantee: each payment's results still
    /// commit with its transfers). If any job fails, the batch rolls back and each job runs alone.
    async fn results_loop(self: Arc<Self>, mut jobs: mpsc::Receiver<(ResultsJob, Reply)>) {
        let mut stop = self.stop.clone();
        loop {
            let first = tokio::select! {
                job = jobs.recv() => match job { Some(job) => job, None => return },
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            let mut batch = vec![first];
            while batch.len() < self.settings.results_batch_max {
                match jobs.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
            match self.commit_batch(&batch).await {
                Ok(outcomes) => {
                    for ((job, reply), outcome) in batch.into_iter().zip(outcomes) {
                        let next = match outcome {
                            Some((terminal, next)) => {
                                self.announce(&job.payment_id, terminal);
                                next
                            }
                            None => Some(Round::Lost),
                        };
                        let _ = reply.send(Ok(next));
                    }
                }
                Err(error) => {
                    if batch.len() > 1 {
                        tracing::warn!(%error, jobs = batch.len(), "results batch failed; writing each alone");
                    }
                    for (job, reply) in batch {
                        let _ = reply.send(self.results_alone(&job).await);
                    }
                }
            }
        }
    }

    /// One batch of results in one transaction: for each job, whether its payment is now
    /// terminal and its next round if planned, or `None` if its lease was lost (it wrote
    /// nothing). A job
    /// that fails fails the batch, since its writes may be half done (no savepoint per job:
    /// two statements fewer per payment), and the committer then writes each job alone.
    async fn commit_batch(
        &self,
        batch: &[(ResultsJob, Reply)],
    ) -> Result<Vec<Option<(bool, Option<Round>)>>, Error> {
        let mut tx = self.pool.begin().await?;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut transfers = Vec::new();
        let mut observed = Observed::default();
        for (job, _) in batch {
            match self.prepare_results(&mut tx, job).await? {
                Some(written) => {
                    transfers.push(written.transfers);
                    observed.append(written.observed);
                    outcomes.push(Some((written.terminal, written.next)));
                }
                None => outcomes.push(None),
            }
        }
        let batches: Vec<&[tandem_ledger::types::Transfer]> =
            transfers.iter().map(Vec::as_slice).collect();
        book(&mut tx, &batches).await?;
        tx.commit().await?;
        observed.record();
        Ok(outcomes)
    }

    /// Books captures and voids an operator confirmed ([`PaymentRecord::resolve`]) and
    /// releases their spend, in `conn`, as their confirmation by the vault would have.
    pub(crate) async fn record_confirmed(
        &self,
        conn: &mut sqlx::PgConnection,
        stored: &StoredPayment,
        confirmed: &[crate::domain::record::steps::Recorded],
    ) -> Result<(), Error> {
        if confirmed.is_empty() {
            return Ok(());
        }
        let context = booking_context(stored);
        let mut transfers = Vec::new();
        let mut spend = Vec::new();
        for (outcome, _, changes) in confirmed {
            transfers.extend(self.booking(&context, &stored.record, outcome)?);
            spend.extend(
                changes
                    .iter()
                    .filter(|c| stored.record.tracks_spend(&c.token))
                    .cloned(),
            );
        }
        let month = storage::month_of(stored.record.create_time);
        storage::add_spends(&mut *conn, month, &spend).await?;
        book(conn, &[transfers.as_slice()]).await
    }

    fn booking(
        &self,
        context: &BookingContext,
        record: &PaymentRecord,
        outcome: &Outcome,
    ) -> Result<Vec<tandem_ledger::types::Transfer>, Error> {
        let leg = match *outcome {
            Outcome::Authorized { leg, .. }
            | Outcome::Declined { leg, .. }
            | Outcome::Captured { leg }
            | Outcome::Voided { leg } => leg,
        };
        let context = leg_context(context, record, leg);
        booking::booking(&context, &record.saga, outcome)
            .map_err(|e| Error::Corrupt(format!("booking: {e}")))
    }

    /// Saves the payment with `events` appended to its outbox, each event with the payment as
    /// it is after the change; returns what the change shows the metrics, to record once it
    /// commits.
    pub(crate) async fn save(
        &self,
        conn: &mut sqlx::PgConnection,
        stored: &mut StoredPayment,
        events: &[Event],
        now: OffsetDateTime,
    ) -> Result<Observed, Error> {
        let rows = outbox_rows(stored, events, now)?;
        // The issuers' declines it records count for risk, in the same statement.
        let declined = stored.record.declined_cards(events);
        let declines = storage::risk::Counts::of(&risk::decline_counts(
            &stored.billing_account_id,
            &stored.card_group_id,
            &declined,
            now,
        ));
        storage::save_payment(conn, stored, &rows, &declines, now).await?;
        Ok(Observed::of(&stored.record, &stored.card_group_id, events))
    }

    /// One round of the recovery worker: leases payments whose lease expired and drives each.
    /// Returns how many it took.
    pub async fn recover(self: &Arc<Self>) -> Result<usize, Error> {
        let available = self
            .slots
            .available_permits()
            .min(usize::try_from(self.settings.recovery_batch_max).unwrap_or(usize::MAX));
        if available == 0 {
            return Ok(0);
        }
        let ids = storage::lease_expired(
            &self.pool,
            &self.owner,
            self.lease_until(now()),
            i64::try_from(available).unwrap_or(i64::MAX),
        )
        .await?;
        for expired in &ids {
            tracing::info!(payment_id = %expired.id, "resuming payment");
            crate::metrics::recovered(expired.lag);
            self.spawn(expired.id.clone(), None);
        }
        Ok(ids.len())
    }

    /// Runs [`Workflow::recover`] every `recovery_interval_ms` until `stop`, and once, beside
    /// it, converts the card groups written before groups were kept as domain data
    /// ([`convert_encoded_groups`]).
    pub async fn recovery_loop(self: Arc<Self>) {
        // Beside recovery, not before it: a payment left in flight does not wait for this.
        let pool = self.pool.clone();
        tokio::spawn(async move {
            match convert_encoded_groups(&pool).await {
                Ok(0) => {}
                Ok(converted) => tracing::info!(converted, "card groups converted to domain data"),
                Err(error) => tracing::warn!(%error, "card groups not converted; read as they are"),
            }
        });
        let mut stop = self.stop.clone();
        let mut ticker =
            tokio::time::interval(Duration::from_millis(self.settings.recovery_interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            if let Err(error) = self.recover().await {
                tracing::warn!(%error, "payment recovery failed");
            }
        }
    }
}

/// What a round sends, for its span: `authorize x2, capture x1, refund x1`.
fn round_steps(steps: &[Step], refunds: usize) -> String {
    let mut counts = [
        ("authorize", 0),
        ("capture", 0),
        ("void", 0),
        ("refund", refunds),
    ];
    for step in steps {
        let kind = match step.command {
            Command::Authorize(_) => 0,
            Command::Capture(_) => 1,
            Command::Void(_) => 2,
        };
        counts[kind].1 += 1;
    }
    counts
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(kind, n)| format!("{kind} x{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Converts, once, the card groups still held as encoded `CardGroup` messages (written before
/// groups were kept as domain data) to domain data, a page at a time in id order; returns how
/// many. Until a group is converted it is read from its message, so nothing waits for this. A
/// group that does not convert (one that today's checks refuse) is logged and left as it is;
/// the others still convert.
pub async fn convert_encoded_groups(pool: &PgPool) -> Result<usize, Error> {
    const PAGE: i64 = 100;
    let mut converted = 0;
    let mut after_id = String::new();
    loop {
        let groups = storage::encoded_groups(pool, &after_id, PAGE).await?;
        let last_page = groups.len() < PAGE as usize;
        for (id, body) in groups {
            match convert::groups::decode_group(&id, &body) {
                Ok(group) => {
                    storage::convert_group(pool, &id, &group).await?;
                    converted += 1;
                }
                Err(error) => {
                    tracing::warn!(card_group_id = %id, %error, "card group left in its encoded form");
                }
            }
            after_id = id;
        }
        if last_page {
            return Ok(converted);
        }
    }
}

/// A committed change of a payment, as [`Workflow::subscribe`] announces it.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The payment changed.
    pub payment_id: String,
    /// Whether the change left it in a terminal state.
    pub terminal: bool,
}

/// The answer to a results job: as [`Workflow::results`] returns.
type Reply = tokio::sync::oneshot::Sender<Result<Option<Round>, Error>>;

/// What a payment's results wrote: the ledger transfers to book with them, whether the payment
/// is now terminal, and its next round if it was planned (its intents written with them).
struct Written {
    transfers: Vec<tandem_ledger::types::Transfer>,
    /// What it shows the metrics, once committed.
    observed: Observed,
    terminal: bool,
    next: Option<Round>,
}

/// The known answers of one round of one payment, for the results step.
#[derive(Debug)]
pub struct ResultsJob {
    payment_id: String,
    answers: Vec<(Step, Answer)>,
    refunds: Vec<(RefundStep, RefundAnswer)>,
    /// Whether to record the next round's intents with the results (no wait comes first).
    plan_next: bool,
}

/// Creates the transfers of several payments' results in one ledger call; any refusal is a
/// broken invariant.
async fn book(
    conn: &mut sqlx::PgConnection,
    batches: &[&[tandem_ledger::types::Transfer]],
) -> Result<(), Error> {
    let results = tandem_ledger::ledger::create_transfer_batches(conn, batches).await?;
    for (transfers, results) in batches.iter().zip(&results) {
        if let Some((transfer, result)) = transfers
            .iter()
            .zip(results)
            .find(|(_, r)| !matches!(r, TransferResult::Ok | TransferResult::Exists))
        {
            return Err(Error::Corrupt(format!(
                "ledger refused {}: {result:?}",
                transfer.id.as_str()
            )));
        }
    }
    Ok(())
}

/// A vault answer the results step records.
#[derive(Debug, Clone)]
enum Answer {
    Authorization(AuthorizeAnswer),
    Settled,
    /// The vault refused a capture or void and the charge is not captured or voided: its
    /// reason.
    Refused(String),
}

/// The outbox rows of `events`, numbered after `stored`'s last (its count moves on with them).
pub(crate) fn outbox_rows(
    stored: &mut StoredPayment,
    events: &[Event],
    now: OffsetDateTime,
) -> Result<Vec<storage::NewEvent>, Error> {
    let mut rows = Vec::with_capacity(events.len());
    for event in events {
        stored.events += 1;
        let id = tandem_runtime::ids::random_id("evt_");
        let (kind, body) = convert::payments::event_body(stored, event, &id, stored.events, now)?;
        rows.push(storage::NewEvent {
            sequence: stored.events,
            id,
            kind,
            body,
        });
    }
    Ok(rows)
}

/// The context of a payment's bookings.
pub(crate) fn booking_context(stored: &StoredPayment) -> BookingContext {
    BookingContext {
        payment_id: stored.record.id.clone(),
        invoice_id: stored.record.invoice_id.clone(),
        billing_account: stored.billing_account_id.clone(),
        cost_center: stored.record.cost_center.clone(),
        processor_reference: None,
    }
}

/// The context of one leg's booking: the member's cost center, else the invoice's.
fn leg_context(context: &BookingContext, record: &PaymentRecord, leg: usize) -> BookingContext {
    let member = record
        .saga
        .legs
        .get(leg)
        .and_then(|l| record.member(&l.token));
    BookingContext {
        cost_center: member
            .and_then(|m| m.cost_center.clone())
            .or_else(|| context.cost_center.clone()),
        processor_reference: record
            .legs
            .get(leg)
            .and_then(|d| d.processor_reference.clone()),
        ..context.clone()
    }
}

/// Suspends the members of group `group_id` whose cards were declined as lost or stolen in
/// payment `payment_id`, in the transaction that records the decline: the group's view names
/// the reason, its version (and etag) moves on, and no later payment allocates to them until
/// `UpdateCardGroup` makes them ACTIVE again. Members already suspended stay as they are.
async fn suspend_members(
    conn: &mut sqlx::PgConnection,
    group_id: &str,
    payment_id: &str,
    suspensions: &[Suspension],
    now: OffsetDateTime,
) -> Result<(), Error> {
    let Some(mut stored) = storage::group(&mut *conn, group_id, true).await? else {
        return Err(Error::Corrupt(format!(
            "payment {payment_id}: no card group {group_id}"
        )));
    };
    let mut group = convert::groups::group_data(&stored)?;
    let applied = group.suspend(suspensions, payment_id, now);
    if applied.is_empty() {
        return Ok(());
    }
    for suspension in applied {
        tracing::warn!(
            card_group_id = group_id,
            payment_id,
            token = %suspension.token,
            decline_code = %suspension.decline_code,
            "member suspended: its card was declined as lost or stolen"
        );
    }
    stored.content = StoredContent::Data(Box::new(group));
    stored.version += 1;
    stored.update_time = now;
    // The suspension is the orchestrator's own change, answering the decline: the payment's
    // events (card.ineligible) name it; the group publishes no event of its own for it.
    storage::update_group(conn, &stored, None).await
}
