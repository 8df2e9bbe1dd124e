//! The writer: a few tasks that commit every mutation together with its audit row, in batches.
//!
//! Handlers do their CPU work (validation, sealing, hashing) concurrently, then hand a
//! [`Mutation`] to the writer and wait. A writer task takes up to `audit.batch_size_max` queued
//! jobs, applies them in one transaction, appends their audit rows (the hash chain computed in
//! memory from the head row it locks last), commits, and answers each job. `audit.writer_tasks`
//! tasks do this at once on separate connections; the head lock orders their commits. A
//! response is therefore never sent before its audit row is durable, and the chain never
//! becomes a per-request lock: one commit covers a whole batch (group commit).
//!
//! Jobs come in two kinds, told apart by type: a [`Mutation`] applies its writes alone; a
//! [`CardMutation`] (a new tokenization) gives its card to the batch's one card insert, which
//! runs first for the whole batch in one statement, and then goes on from its outcome.
//!
//! If a batch fails with a database error, the writer replays its jobs one per transaction so
//! that only the job at fault fails. Jobs are written to be replayable: all their randomness
//! (tokens, nonces) is fixed before they are queued.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use sqlx::{PgConnection, PgPool};
use tandem_runtime::database::{ConflictRetry, TransactionError as _};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use crate::audit::chain;
use crate::domain::audit::AuditEntry;
use crate::error::Error;
use crate::storage;
use crate::storage::tokens::CardInsert;

/// A boxed future borrowing the transaction.
pub type Apply<'a, T> = Pin<Box<dyn Future<Output = Result<T, Error>> + Send + 'a>>;

/// One operation the writer commits with its audit row.
pub trait Mutation: Send + 'static {
    /// What the caller gets back once committed.
    type Output: Send + 'static;

    /// Applies the writes in the batch's transaction. A business outcome (request id reused,
    /// token revoked) is an `Err` that leaves the transaction usable; a database error
    /// ([`Error::aborts_transaction`]) aborts the batch.
    fn apply<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, Self::Output>;

    /// The token the audit row names, given the result (a reused token is known only after
    /// `apply`).
    fn audit_token(&self, output: &Result<Self::Output, Error>) -> Option<String>;

    /// The audit row's free text, given the result, when it differs from the caller's.
    fn audit_reason(&self, _output: &Result<Self::Output, Error>) -> Option<String> {
        None
    }

    /// The other resource the audit row names (a charge, a refund), given the result.
    fn audit_resource(&self, _output: &Result<Self::Output, Error>) -> Option<String> {
        None
    }

    /// The audit row's outcome: `OK` or the error's reason.
    fn audit_outcome(&self, output: &Result<Self::Output, Error>) -> &'static str {
        match output {
            Ok(_) => "OK",
            Err(error) => error.reason(),
        }
    }
}

/// A mutation that inserts a new card: it gives its card to the batch's one card insert
/// ([`storage::tokens::insert_cards_for_new_requests`]) and goes on from that insert's outcome.
/// The two halves are one contract, so both are required: a mutation that joins the insert
/// cannot leave the writer to answer it as a replay of its own request. Submitted with
/// [`Writer::submit_card`]; [`Mutation::apply`] is then not called.
pub trait CardMutation: Mutation {
    /// The card with its request record, as one row of the batch's insert.
    fn card_insert(&self) -> CardInsert<'_>;

    /// Goes on after the batch's card insert: `inserted` says whether this mutation's card and
    /// request record were written.
    fn apply_inserted<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        inserted: bool,
    ) -> Apply<'a, Self::Output>;
}

/// A mutation that writes nothing: the audit row of a read or a refused call.
#[derive(Debug)]
pub struct AuditOnly {
    /// The token concerned, if one.
    pub token: Option<String>,
    /// `OK` for a read, the error reason for a refusal.
    pub outcome: &'static str,
}

impl Mutation for AuditOnly {
    type Output = ();

    fn apply<'a>(&'a self, _conn: &'a mut PgConnection) -> Apply<'a, ()> {
        Box::pin(async { Ok(()) })
    }

    fn audit_token(&self, _output: &Result<(), Error>) -> Option<String> {
        self.token.clone()
    }

    fn audit_outcome(&self, _output: &Result<(), Error>) -> &'static str {
        self.outcome
    }
}

/// The audit fields known before a job runs; the outcome is filled in from its result.
#[derive(Debug, Clone)]
pub struct AuditContext {
    /// `<role>/<name>` of the caller.
    pub caller: String,
    /// The caller's role.
    pub role: String,
    /// The full gRPC method.
    pub rpc: &'static str,
    /// Free text for the audit row (never card data).
    pub reason: String,
    /// Correlation id of the request.
    pub correlation_id: String,
    /// The call's request id, if it had a valid one.
    pub request_id: String,
    /// The resource acted on, when the caller knows it (a mutation may name it instead).
    pub resource: String,
}

/// The object-safe side of a queued job.
trait Job: Send {
    fn card_insert(&self) -> Option<CardInsert<'_>>;
    /// Applies the mutation; `inserted` is the outcome of its card insert, if it had one.
    fn apply<'a>(&'a mut self, conn: &'a mut PgConnection, inserted: Option<bool>)
    -> Apply<'a, ()>;
    fn audit_entry(&self) -> AuditEntry;
    fn complete(self: Box<Self>, committed: Result<(), Error>);
}

/// The card-insert half of a queued [`CardMutation`]: both of its methods, or nothing for a
/// plain [`Mutation`].
struct CardHalf<M: Mutation> {
    card_insert: for<'a> fn(&'a M) -> CardInsert<'a>,
    apply_inserted: for<'a> fn(&'a M, &'a mut PgConnection, bool) -> Apply<'a, M::Output>,
}

struct Pending<M: Mutation> {
    mutation: M,
    /// `Some` for a job that joins the batch's card insert.
    card: Option<CardHalf<M>>,
    context: AuditContext,
    output: Option<Result<M::Output, Error>>,
    reply: oneshot::Sender<Result<M::Output, Error>>,
}

impl<M: Mutation> Job for Pending<M> {
    fn card_insert(&self) -> Option<CardInsert<'_>> {
        self.card
            .as_ref()
            .map(|card| (card.card_insert)(&self.mutation))
    }

    fn apply<'a>(
        &'a mut self,
        conn: &'a mut PgConnection,
        inserted: Option<bool>,
    ) -> Apply<'a, ()> {
        Box::pin(async move {
            self.output = None;
            let result = match (&self.card, inserted) {
                (Some(card), Some(inserted)) => {
                    (card.apply_inserted)(&self.mutation, conn, inserted).await
                }
                _ => self.mutation.apply(conn).await,
            };
            match result {
                Err(error) if error.aborts_transaction() => Err(error),
                result => {
                    self.output = Some(result);
                    Ok(())
                }
            }
        })
    }

    fn audit_entry(&self) -> AuditEntry {
        let output = self
            .output
            .as_ref()
            .expect("audit_entry is only called after a successful apply");
        let outcome = self.mutation.audit_outcome(output);
        AuditEntry {
            caller: self.context.caller.clone(),
            role: self.context.role.clone(),
            rpc: self.context.rpc.to_owned(),
            token: self.mutation.audit_token(output),
            outcome: outcome.to_owned(),
            reason: self
                .mutation
                .audit_reason(output)
                .unwrap_or_else(|| self.context.reason.clone()),
            correlation_id: self.context.correlation_id.clone(),
            request_id: self.context.request_id.clone(),
            resource: self
                .mutation
                .audit_resource(output)
                .unwrap_or_else(|| self.context.resource.clone()),
        }
    }

    fn complete(self: Box<Self>, committed: Result<(), Error>) {
        let answer = match committed {
            Ok(()) => self
                .output
                .expect("a committed job has an output from its apply"),
            Err(error) => Err(error),
        };
        // The caller may have gone (cancelled request); its job is committed regardless.
        let _ = self.reply.send(answer);
    }
}

/// A handle to the writer task. Cloning is cheap; the task stops when every handle is dropped.
#[derive(Clone, Debug)]
pub struct Writer {
    sender: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts `tasks` writer tasks on `pool`, sharing one queue. Several tasks overlap their
    /// batches' statements on separate connections; the audit head lock, taken last in each
    /// transaction, orders their commits into one chain.
    pub fn spawn(
        pool: PgPool,
        batch_size_max: usize,
        queue_max: usize,
        tasks: usize,
    ) -> (Writer, tokio::task::JoinHandle<()>) {
        assert!(batch_size_max > 0 && queue_max > 0 && tasks > 0);
        let (sender, receiver) = mpsc::channel(queue_max);
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        let workers: Vec<_> = (0..tasks)
            .map(|_| tokio::spawn(run(pool.clone(), receiver.clone(), batch_size_max)))
            .collect();
        let task = tokio::spawn(async move {
            for worker in workers {
                // A panicking worker is a bug; surface it instead of hiding it.
                if let Err(error) = worker.await {
                    tracing::error!(%error, "writer task failed");
                }
            }
        });
        (Writer { sender }, task)
    }

    /// Queues `mutation` and waits until it and its audit row are committed (or failed).
    pub async fn submit<M: Mutation>(
        &self,
        mutation: M,
        context: AuditContext,
    ) -> Result<M::Output, Error> {
        self.queue(mutation, None, context).await
    }

    /// Queues a mutation that joins its batch's card insert, and waits like [`Writer::submit`].
    pub async fn submit_card<M: CardMutation>(
        &self,
        mutation: M,
        context: AuditContext,
    ) -> Result<M::Output, Error> {
        let card = CardHalf {
            card_insert: M::card_insert,
            apply_inserted: M::apply_inserted,
        };
        self.queue(mutation, Some(card), context).await
    }

    async fn queue<M: Mutation>(
        &self,
        mutation: M,
        card: Option<CardHalf<M>>,
        context: AuditContext,
    ) -> Result<M::Output, Error> {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending {
            mutation,
            card,
            context,
            output: None,
            reply,
        });
        self.sender
            .send(job)
            .await
            .map_err(|_| Error::ShuttingDown)?;
        answer.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Writes only an audit row, with `outcome` (`OK` or an error reason).
    pub async fn audit(
        &self,
        token: Option<String>,
        outcome: &'static str,
        context: AuditContext,
    ) -> Result<(), Error> {
        self.submit(AuditOnly { token, outcome }, context).await
    }
}

async fn run(pool: PgPool, receiver: SharedReceiver, batch_size_max: usize) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(batch_size_max);
    loop {
        // Hold the queue only while taking a batch, never while committing it.
        let received = receiver
            .lock()
            .await
            .recv_many(&mut batch, batch_size_max)
            .await;
        if received == 0 {
            return;
        }
        commit(&pool, std::mem::take(&mut batch)).await;
        batch.reserve(batch_size_max);
    }
}

type SharedReceiver = Arc<tokio::sync::Mutex<mpsc::Receiver<Box<dyn Job>>>>;

/// How a write runs again after losing a serialization or deadlock race: nothing of the lost
/// run was committed, and a job's `apply` sets its output anew on each run.
const CONFLICT_RETRY: ConflictRetry =
    ConflictRetry::counted_in(crate::metrics::TRANSACTION_RETRIES);

/// Commits a batch and answers every job in it.
async fn commit(pool: &PgPool, mut jobs: Vec<Box<dyn Job>>) {
    match try_commit_retrying(pool, &mut jobs).await {
        Ok(()) => jobs.into_iter().for_each(|job| job.complete(Ok(()))),
        Err(error) if jobs.len() == 1 => {
            tracing::error!(error = %error, "vault write failed");
            if let Some(job) = jobs.pop() {
                job.complete(Err(error));
            }
        }
        Err(error) => {
            tracing::warn!(error = %error, jobs = jobs.len(), "batch failed; retrying one by one");
            for job in jobs {
                let mut single = vec![job];
                let result = try_commit_retrying(pool, &mut single).await;
                if let Err(error) = &result {
                    tracing::error!(error = %error, "vault write failed");
                }
                let job = single.pop().expect("one job in a single batch");
                job.complete(result);
            }
        }
    }
}

/// [`try_commit`], run again while it loses serialization or deadlock races
/// ([`CONFLICT_RETRY`]).
async fn try_commit_retrying(pool: &PgPool, jobs: &mut [Box<dyn Job>]) -> Result<(), Error> {
    let mut run = 1;
    loop {
        match try_commit(pool, jobs).await {
            Err(error)
                if error.is_transaction_conflict() && CONFLICT_RETRY.again("write", run).await =>
            {
                run += 1;
            }
            other => return other,
        }
    }
}

async fn try_commit(pool: &PgPool, jobs: &mut [Box<dyn Job>]) -> Result<(), Error> {
    // The jobs of a batch were all in flight at once, so any order of them is one they could
    // have taken. The new cards go first, in one statement and in request-id order, and so do
    // their jobs, so that the audit chain records the order the batch took effect in.
    fn batch_order(job: &dyn Job) -> (bool, Option<&str>) {
        let request_id = job.card_insert().map(|insert| insert.request_id);
        (request_id.is_none(), request_id)
    }
    jobs.sort_by(|a, b| batch_order(a.as_ref()).cmp(&batch_order(b.as_ref())));
    let mut tx = pool.begin().await?;
    let inserted: Vec<Option<bool>> = {
        let inserts: Vec<CardInsert<'_>> =
            jobs.iter().filter_map(|job| job.card_insert()).collect();
        let tokens = storage::tokens::insert_cards_for_new_requests(&mut tx, &inserts).await?;
        jobs.iter()
            .map(|job| {
                job.card_insert()
                    .map(|insert| tokens.contains(insert.card.token.as_str()))
            })
            .collect()
    };
    for (job, inserted) in jobs.iter_mut().zip(inserted) {
        job.apply(&mut tx, inserted).await?;
    }
    // Lock the chain head last, so it is held only for the audit insert and the commit.
    let (head_seq, head_hash) = storage::audit::audit_head_for_update(&mut tx).await?;
    let rows = chain::chain(
        head_seq,
        head_hash,
        OffsetDateTime::now_utc(),
        jobs.iter().map(|job| job.audit_entry()),
    );
    storage::audit::append_audit_rows(&mut tx, &rows).await?;
    tx.commit().await?;
    for row in &rows {
        crate::metrics::operation(&row.entry.rpc, &row.entry.outcome);
    }
    Ok(())
}
