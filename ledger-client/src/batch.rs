//! The batching writer, for standalone use: concurrent callers' transfers are coalesced into
//! one database transaction (group commit), and each caller still gets its own results.
//!
//! Each writer task takes whatever is queued (at most `batch_transfers_max` transfers, never
//! splitting a caller's submission), locks the union of their accounts in sorted order,
//! decides every submission, inserts all rows in one statement and commits once. If the batch
//! fails (for example a conflict with another process), its submissions are retried one per
//! transaction so that only the one at fault fails.

use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{Connection, PgPool, Postgres};
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::ledger::{self, LedgerError};
use crate::types::{Transfer, TransferResult};

/// Limits of the writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterLimits {
    /// Most transfers committed in one transaction (a larger submission commits alone).
    pub batch_transfers_max: usize,
    /// Submissions waiting; callers beyond this wait for room.
    pub queue_max: usize,
    /// Writer tasks, each committing on its own connection.
    pub tasks: usize,
    /// Longest a batch waits for more submissions after its first one (0: take only what is
    /// already queued). A short wait lets callers that were just answered join the next batch
    /// instead of each starting a small one.
    pub batch_wait: std::time::Duration,
}

impl Default for WriterLimits {
    fn default() -> Self {
        Self {
            batch_transfers_max: 1024,
            queue_max: 8192,
            // Batches on hot accounts serialize on their row locks: one task with large
            // batches beats several with small ones (measured with `tandemctl bench ledger`).
            tasks: 1,
            // Measured: waiting 1-2 ms for more callers lowered throughput on 2 cores, since
            // callers answered by one batch are queued by the time the next one starts.
            batch_wait: std::time::Duration::ZERO,
        }
    }
}

type Reply = oneshot::Sender<Result<Vec<TransferResult>, LedgerError>>;

/// Consecutive yields without a new submission after which a batch closes.
const IDLE_YIELDS_MAX: u32 = 3;
type Queue = Arc<Mutex<mpsc::Receiver<(Vec<Transfer>, Reply)>>>;

/// A handle to the writer tasks; they stop when every handle is dropped.
#[derive(Debug, Clone)]
pub struct LedgerWriter {
    sender: mpsc::Sender<(Vec<Transfer>, Reply)>,
}

impl LedgerWriter {
    /// Starts the writer tasks on `pool`.
    pub fn spawn(pool: PgPool, limits: WriterLimits) -> LedgerWriter {
        assert!(limits.batch_transfers_max > 0 && limits.queue_max > 0 && limits.tasks > 0);
        assert!(
            limits.batch_transfers_max <= ledger::TRANSFERS_PER_CALL_MAX,
            "a batch must fit in one call"
        );
        let (sender, receiver) = mpsc::channel(limits.queue_max);
        let queue: Queue = Arc::new(Mutex::new(receiver));
        for _ in 0..limits.tasks {
            tokio::spawn(run(pool.clone(), queue.clone(), limits));
        }
        LedgerWriter { sender }
    }

    /// Creates `transfers` (a linked chain must close within them) and waits for the commit.
    pub async fn create_transfers(
        &self,
        transfers: Vec<Transfer>,
    ) -> Result<Vec<TransferResult>, LedgerError> {
        if transfers.len() > ledger::TRANSFERS_PER_CALL_MAX {
            return Err(LedgerError::TooManyTransfers(transfers.len()));
        }
        let (reply, answer) = oneshot::channel();
        self.sender
            .send((transfers, reply))
            .await
            .map_err(|_| LedgerError::WriterStopped)?;
        answer.await.map_err(|_| LedgerError::WriterStopped)?
    }
}

async fn run(pool: PgPool, queue: Queue, limits: WriterLimits) {
    // Each task keeps one connection (its plan and function caches stay warm, and no
    // per-batch acquire or health check); it is replaced after any failed batch.
    let mut connection: Option<PoolConnection<Postgres>> = None;
    loop {
        let mut batch: Vec<(Vec<Transfer>, Reply)> = Vec::new();
        {
            let mut receiver = queue.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            let deadline = tokio::time::Instant::now() + limits.batch_wait;
            let mut size = first.0.len();
            batch.push(first);
            // Gather more, up to the size bound. Callers answered by the previous batch are
            // runnable but may not have resubmitted yet: yield to them (bounded) before
            // closing the batch, then wait up to `batch_wait` for more. The timer is not used
            // when the wait is zero: its millisecond granularity would stall every batch.
            let mut idle_yields = 0;
            while size < limits.batch_transfers_max {
                let next = match receiver.try_recv() {
                    Ok(next) => next,
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) if idle_yields < IDLE_YIELDS_MAX => {
                        idle_yields += 1;
                        tokio::task::yield_now().await;
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Empty) if limits.batch_wait.is_zero() => break,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match tokio::time::timeout_at(deadline, receiver.recv()).await {
                            Ok(Some(next)) => next,
                            Ok(None) | Err(_) => break,
                        }
                    }
                };
                idle_yields = 0;
                size += next.0.len();
                batch.push(next);
            }
        }
        commit(&pool, &mut connection, batch).await;
    }
}

async fn commit(
    pool: &PgPool,
    connection: &mut Option<PoolConnection<Postgres>>,
    batch: Vec<(Vec<Transfer>, Reply)>,
) {
    let submissions: Vec<&[Transfer]> = batch.iter().map(|(t, _)| t.as_slice()).collect();
    match try_commit(pool, connection, &submissions).await {
        Ok(results) => {
            for ((_, reply), results) in batch.into_iter().zip(results) {
                let _ = reply.send(Ok(results));
            }
        }
        Err(error) => {
            tracing::warn!(%error, submissions = batch.len(), "ledger batch failed; retrying one by one");
            for (transfers, reply) in batch {
                let result = try_commit(pool, connection, &[&transfers])
                    .await
                    .map(|mut results| results.pop().unwrap_or_default());
                let _ = reply.send(result);
            }
        }
    }
}

async fn try_commit(
    pool: &PgPool,
    connection: &mut Option<PoolConnection<Postgres>>,
    submissions: &[&[Transfer]],
) -> Result<Vec<Vec<TransferResult>>, LedgerError> {
    let conn = match connection {
        Some(conn) => conn,
        None => connection.insert(pool.acquire().await?),
    };
    let result = async {
        let mut tx = Connection::begin(&mut **conn).await?;
        let results = ledger::create_transfer_batches(&mut tx, submissions).await?;
        tx.commit().await?;
        Ok(results)
    }
    .await;
    if result.is_err() {
        // The connection may be broken or mid-transaction: start the next batch on a new one.
        *connection = None;
    }
    result
}
