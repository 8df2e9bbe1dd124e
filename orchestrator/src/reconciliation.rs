//! Reconciliation (`ReconciliationService`, DESIGN section 11): runs that check the ledger
//! against a processor's settlement file, the discrepancies they keep, four-eyes adjustments,
//! and the worker that reconciles each closed day by itself.
//!
//! A run reads the day's file through the vault *before* its transaction, then in one
//! transaction (under a lock per processor and day, so runs of a day take turns): stores the
//! file's records, reads the ledger's captures and refunds that share their references and
//! those booked on the day, classifies both sides (`domain::reconciliation::classify`), and
//! writes the discrepancies and the run with its counts. The same day run again gives the same
//! result. Every mutation is idempotent by `request_id` and answers with the response stored
//! with the id.

use std::collections::BTreeSet;
use std::sync::Arc;

use sqlx::PgPool;
use tandem_ledger::types::{AccountResult, StoredKind, StoredTransfer, TransferResult};
use time::{Date, OffsetDateTime, Time};
use tokio::sync::watch;

use crate::commands::{AdjustmentDecision, AdjustmentProposal, DiscrepancyQuery, ReconcileDay};
use crate::config::ReconciliationSettings;
use crate::domain::actor::Actor;
use crate::domain::reconciliation::{
    self as rules, Class, Correction, LedgerEntry, SettlementType,
};
use crate::error::Error;
use crate::grpc::convert;
use crate::storage::{self, reconciliation as store};
use crate::vault::{SettlementFileError, VaultClient};
use tandem_runtime::time::now_micros as now;

pub use store::{StoredAdjustment, StoredDiscrepancy, StoredRun};

/// Bytes of a settlement file per record at most (a line is about 120), for the download's
/// bound.
const FILE_BYTES_PER_RECORD: usize = 512;

/// The reconciliation operations.
pub struct Reconciliation {
    pool: PgPool,
    vault: VaultClient,
    settings: ReconciliationSettings,
    request_id_wait_ms: u64,
    owner: String,
    /// This instance's runs take turns from the download on: a run waiting for its turn holds
    /// no file, no memory and no database connection, and runs commit in the order their files
    /// were read (other instances' runs are ordered by the database lock).
    turn: tokio::sync::Mutex<()>,
}

impl Reconciliation {
    /// Reconciliation over `pool` (the orchestrator's database, which holds the ledger),
    /// reading settlement files through `vault`. `owner` names this instance in the worker's
    /// claims.
    pub fn new(
        pool: PgPool,
        vault: VaultClient,
        settings: ReconciliationSettings,
        request_id_wait_ms: u64,
        owner: &str,
    ) -> Self {
        Self {
            pool,
            vault,
            settings,
            request_id_wait_ms,
            owner: owner.to_owned(),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// The settings requests are checked by.
    pub fn settings(&self) -> &ReconciliationSettings {
        &self.settings
    }

    /// `RunReconciliation`: the stored response. The run is a task of its own: a caller whose
    /// deadline passes (a large day can outlast it) leaves the run to commit, and the same
    /// request id then answers with it (`REQUEST_IN_PROGRESS` while it still runs).
    pub async fn run(
        self: &Arc<Self>,
        command: ReconcileDay,
        actor: Actor,
    ) -> Result<Vec<u8>, Error> {
        let method = "RunReconciliation";
        if let Some(stored) = self
            .replay(&command.request_id, method, &command.request_hash)
            .await?
        {
            return Ok(stored);
        }
        let this = Arc::clone(self);
        let task = tokio::spawn(async move {
            let request = (command.request_id.as_str(), command.request_hash.as_slice());
            this.reconcile(&command.processor, command.day, actor, Some(request))
                .await
        });
        let (_, response) = task
            .await
            .map_err(|e| Error::Corrupt(format!("reconciliation task: {e}")))??;
        response.ok_or_else(|| Error::Corrupt("a run without its response".into()))
    }

    /// Reconciles `processor`'s `day`; with `request` (its id and hash), claims the id and
    /// stores the response with it, else records the worker's run of a claimed day. Returns
    /// the run and the stored response.
    async fn reconcile(
        &self,
        processor: &str,
        day: Date,
        actor: Actor,
        request: Option<(&str, &[u8])>,
    ) -> Result<(StoredRun, Option<Vec<u8>>), Error> {
        let _turn = self.turn.lock().await;
        let start_time = now();
        let bytes_max = self.settings.file_records_max * FILE_BYTES_PER_RECORD;
        let file = self
            .vault
            .settlement_file(processor, day, bytes_max)
            .await
            .map_err(|error| match error {
                SettlementFileError::Unavailable(detail) => {
                    tracing::warn!(processor, %day, detail, "settlement file unavailable");
                    Error::VaultUnavailable
                }
                SettlementFileError::Refused(detail) => Error::SettlementFileInvalid(detail),
            })?;
        let records = rules::parse_file(&file, day)
            .map_err(|e| Error::SettlementFileInvalid(e.to_string()))?;
        if records.len() > self.settings.file_records_max {
            return Err(Error::SettlementFileInvalid(format!(
                "{} records, more than reconciliation.file_records_max",
                records.len()
            )));
        }
        drop(file);
        let mut tx = self.pool.begin().await?;
        let run_id = tandem_runtime::ids::random_id("rcn_");
        if let Some((request_id, hash)) = request {
            let wait_ms = self.request_id_wait_ms;
            let method = "RunReconciliation";
            if let Some(earlier) =
                storage::claim_request_id(&mut tx, request_id, method, hash, &run_id, wait_ms)
                    .await?
            {
                tx.rollback().await?;
                let response = earlier.replay(method, hash)?;
                let run = self.stored_run_of(&response).await?;
                return Ok((run, Some(response)));
            }
        }
        store::lock_processor(&mut tx, processor).await?;
        store::replace_day(&mut tx, processor, day, &records).await?;
        let from = day.with_time(Time::MIDNIGHT).assume_utc();
        let to = from + time::Duration::DAY;
        let day_entries: Vec<LedgerEntry> =
            tandem_ledger::ledger::processor_transfers_between(&mut *tx, from, to)
                .await?
                .iter()
                .filter_map(ledger_entry)
                .collect();
        let references: Vec<&str> = records
            .iter()
            .map(|r| r.reference.as_str())
            .chain(day_entries.iter().map(|e| e.reference.as_str()))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let known = store::records_with_references(&mut tx, processor, &references).await?;
        let entries: Vec<LedgerEntry> =
            tandem_ledger::ledger::transfers_by_processor_reference(&mut *tx, &references)
                .await?
                .iter()
                .filter_map(ledger_entry)
                .collect();
        let grace = time::Duration::seconds(i64::try_from(self.settings.grace_s).unwrap_or(0));
        let found = rules::classify(&records, &known, &entries, &day_entries, now(), grace);
        let resolved = store::write_findings(
            &mut tx,
            processor,
            day,
            &run_id,
            &found.findings,
            &references,
        )
        .await?;
        let run = StoredRun {
            id: run_id,
            processor: processor.to_owned(),
            day,
            actor,
            records: i64::try_from(records.len()).unwrap_or(i64::MAX),
            counts: Class::ALL.map(|class| found.counts.get(&class).copied().unwrap_or(0)),
            resolved,
            start_time,
            finish_time: now(),
        };
        store::insert_run(&mut tx, &run).await?;
        let event =
            convert::reconciliation::run_event(&run, tandem_runtime::ids::random_id("evt_"));
        store::insert_event(&mut tx, &event).await?;
        let response = match request {
            Some((request_id, _)) => {
                let response = convert::reconciliation::run_response(&run);
                storage::store_response(&mut tx, request_id, &response).await?;
                Some(response)
            }
            None => {
                store::finish_worker_day(&mut tx, processor, day, &run.id).await?;
                None
            }
        };
        tx.commit().await?;
        tracing::info!(
            run_id = %run.id,
            processor,
            %day,
            records = run.records,
            discrepancies = found.findings.len(),
            "reconciled"
        );
        Ok((run, response))
    }

    /// The run a stored `RunReconciliation` response names.
    async fn stored_run_of(&self, response: &[u8]) -> Result<StoredRun, Error> {
        let id = convert::reconciliation::run_id_of(response)?;
        self.get_run(&id).await
    }

    /// `GetReconciliationRun`.
    pub async fn get_run(&self, id: &str) -> Result<StoredRun, Error> {
        store::run(&self.pool, id)
            .await?
            .ok_or(Error::ReconciliationRunNotFound)
    }

    /// `ListDiscrepancies`: a page, and whether more follow.
    pub async fn discrepancies(
        &self,
        query: &DiscrepancyQuery,
    ) -> Result<(Vec<StoredDiscrepancy>, bool), Error> {
        let (processor, day) = match &query.run_id {
            Some(id) => {
                let run = self.get_run(id).await?;
                (run.processor, Some(run.day))
            }
            None => (query.processor.clone(), query.day),
        };
        let mut page = store::discrepancies(
            &self.pool,
            &processor,
            day,
            query.state.as_deref(),
            query.after,
            i64::from(query.size) + 1,
        )
        .await?;
        let more = page.len() > query.size as usize;
        page.truncate(query.size as usize);
        Ok((page, more))
    }

    /// `ProposeAdjustment`: the stored response.
    pub async fn propose(
        &self,
        proposal: AdjustmentProposal,
        actor: Actor,
    ) -> Result<Vec<u8>, Error> {
        let method = "ProposeAdjustment";
        let (request_id, hash) = (&proposal.request_id, &proposal.request_hash);
        if let Some(stored) = self.replay(request_id, method, hash).await? {
            return Ok(stored);
        }
        let id = tandem_runtime::ids::random_id("adj_");
        let mut tx = self.pool.begin().await?;
        if let Some(earlier) = self.claim(&mut tx, request_id, method, hash, &id).await? {
            tx.rollback().await?;
            return earlier.replay(method, hash);
        }
        let discrepancy = store::discrepancy(&mut *tx, &proposal.discrepancy_id, true)
            .await?
            .ok_or(Error::DiscrepancyNotFound)?;
        if discrepancy.state != "open" || discrepancy.adjustment_id.is_some() {
            return Err(Error::DiscrepancyNotOpen);
        }
        let Some((correction, currency)) = discrepancy.remaining() else {
            return Err(Error::DiscrepancyPending);
        };
        if correction == 0 {
            return Err(Error::DiscrepancyNotOpen);
        }
        if proposal.amount != correction.abs() || proposal.currency != currency {
            return Err(Error::invalid(
                "amount",
                format!(
                    "must be what the discrepancy leaves to correct: {} minor units of {currency}",
                    correction.abs()
                ),
            ));
        }
        let adjustment = StoredAdjustment {
            id,
            discrepancy_id: discrepancy.id.clone(),
            state: "proposed".to_owned(),
            amount: proposal.amount,
            currency,
            reason: proposal.reason,
            proposer: actor,
            propose_time: now(),
            decider: None,
            decide_time: None,
            decision_reason: String::new(),
            transfer_ids: Vec::new(),
            basis: (
                correction,
                discrepancy.class,
                discrepancy.entry.as_ref().map(|e| e.transfer_id.clone()),
            ),
        };
        store::insert_adjustment(&mut tx, &adjustment).await?;
        store::set_discrepancy(&mut tx, &discrepancy.id, "open", Some(&adjustment.id)).await?;
        let event = convert::reconciliation::adjustment_event(
            &adjustment,
            tandem_runtime::ids::random_id("evt_"),
        );
        store::insert_event(&mut tx, &event).await?;
        let response = convert::reconciliation::adjustment_response(&adjustment);
        storage::store_response(&mut tx, request_id, &response).await?;
        tx.commit().await?;
        tracing::info!(adjustment_id = %adjustment.id, discrepancy_id = %discrepancy.id,
            proposer = %adjustment.proposer, "adjustment proposed");
        Ok(response)
    }

    /// `ApproveAdjustment` and `RejectAdjustment`: the stored response. An approval posts the
    /// adjustment's transfers in its transaction.
    pub async fn decide(
        &self,
        decision: AdjustmentDecision,
        actor: Actor,
    ) -> Result<Vec<u8>, Error> {
        let method = if decision.approve {
            "ApproveAdjustment"
        } else {
            "RejectAdjustment"
        };
        let (request_id, hash) = (&decision.request_id, &decision.request_hash);
        if let Some(stored) = self.replay(request_id, method, hash).await? {
            return Ok(stored);
        }
        let id = &decision.adjustment_id;
        let mut tx = self.pool.begin().await?;
        if let Some(earlier) = self.claim(&mut tx, request_id, method, hash, id).await? {
            tx.rollback().await?;
            return earlier.replay(method, hash);
        }
        let mut adjustment = store::adjustment(&mut *tx, id, true)
            .await?
            .ok_or(Error::AdjustmentNotFound)?;
        if adjustment.state != "proposed" {
            return Err(Error::AdjustmentNotProposed);
        }
        if adjustment.proposer.name == actor.name {
            return Err(Error::SameIdentity);
        }
        let discrepancy = store::discrepancy(&mut *tx, &adjustment.discrepancy_id, true)
            .await?
            .ok_or_else(|| Error::Corrupt(format!("adjustment {id} without its discrepancy")))?;
        adjustment.decider = Some(actor);
        adjustment.decide_time = Some(now());
        if decision.approve {
            let Some((amount, currency)) = discrepancy.remaining() else {
                return Err(Error::DiscrepancyPending);
            };
            let now_basis = (
                amount,
                discrepancy.class,
                discrepancy.entry.as_ref().map(|e| e.transfer_id.clone()),
            );
            if discrepancy.state != "open"
                || now_basis != adjustment.basis
                || currency != adjustment.currency
            {
                // A later run changed the discrepancy: the proposal no longer fits it.
                return Err(Error::DiscrepancyNotOpen);
            }
            let (accounts, transfers) = rules::adjustment(&Correction {
                discrepancy_id: &discrepancy.id,
                adjustment_id: &adjustment.id,
                processor: &discrepancy.processor,
                class: discrepancy.class,
                reverse_entry: discrepancy.class == Class::CurrencyMismatch
                    && discrepancy.applied.is_none(),
                amount,
                currency: &currency,
                entry: discrepancy.entry.as_ref(),
            })
            .map_err(|e| Error::Corrupt(format!("adjustment ledger id: {e}")))?;
            let created = tandem_ledger::ledger::create_accounts(&mut tx, &accounts).await?;
            if let Some((account, result)) = accounts
                .iter()
                .zip(&created)
                .find(|(_, r)| !matches!(r, AccountResult::Ok | AccountResult::Exists))
            {
                return Err(Error::Corrupt(format!(
                    "ledger refused account {}: {result:?}",
                    account.id.as_str()
                )));
            }
            let results =
                tandem_ledger::ledger::create_transfer_batches(&mut tx, &[&transfers]).await?;
            if let Some((transfer, result)) = transfers
                .iter()
                .zip(results.iter().flatten())
                .find(|(_, r)| !matches!(r, TransferResult::Ok | TransferResult::Exists))
            {
                return Err(Error::Corrupt(format!(
                    "ledger refused {}: {result:?}",
                    transfer.id.as_str()
                )));
            }
            adjustment.state = "approved".to_owned();
            adjustment.transfer_ids = transfers.iter().map(|t| t.id.to_string()).collect();
            store::resolve_discrepancy(&mut tx, &discrepancy.id, &adjustment.id).await?;
        } else {
            adjustment.state = "rejected".to_owned();
            adjustment.decision_reason = decision.reason;
            store::set_discrepancy(&mut tx, &discrepancy.id, &discrepancy.state, None).await?;
        }
        store::decide_adjustment(&mut tx, &adjustment).await?;
        let event = convert::reconciliation::adjustment_event(
            &adjustment,
            tandem_runtime::ids::random_id("evt_"),
        );
        store::insert_event(&mut tx, &event).await?;
        let response = convert::reconciliation::adjustment_response(&adjustment);
        storage::store_response(&mut tx, request_id, &response).await?;
        tx.commit().await?;
        tracing::info!(adjustment_id = %adjustment.id, state = %adjustment.state,
            decider = %adjustment.decider.as_ref().map(ToString::to_string).unwrap_or_default(),
            "adjustment decided");
        Ok(response)
    }

    /// Runs [`Reconciliation::worker_round`] every `reconciliation.interval_s` until `stop`.
    pub async fn worker_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let interval = std::time::Duration::from_secs(self.settings.interval_s);
        loop {
            match self.worker_round().await {
                Ok(0) => {}
                Ok(days) => tracing::info!(days, "reconciliation worker ran"),
                Err(error) => tracing::warn!(%error, "reconciliation worker round failed"),
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Reconciles each closed day of the last `lookback_days` that no worker has run yet and
    /// this instance can claim (from `run_hour_utc` on, the day before is closed), and again
    /// each day whose pending entries' grace period has passed since, so that an entry whose
    /// record never came is reported missing. Returns how many days it ran.
    pub async fn worker_round(&self) -> Result<usize, Error> {
        let processor = &self.settings.processor;
        let mut lock = self.pool.acquire().await?;
        if !store::try_lock_worker(&mut lock, processor).await? {
            // Another instance's round is running; the next interval looks again.
            return Ok(0);
        }
        let ran = self.worker_round_locked().await;
        if store::unlock_worker(&mut lock, processor).await.is_err() {
            // A session that may still hold the lock is not given back to the pool.
            drop(lock.detach());
        }
        ran
    }

    /// [`Reconciliation::worker_round`] under the worker's lock.
    async fn worker_round_locked(&self) -> Result<usize, Error> {
        let processor = &self.settings.processor;
        let Some((earliest, latest)) = worker_days(now(), &self.settings) else {
            return Ok(0);
        };
        let done = store::worker_days_done(&self.pool, processor, earliest, latest).await?;
        let grace = time::Duration::seconds(i64::try_from(self.settings.grace_s).unwrap_or(0));
        let due = store::days_pending_due(&self.pool, processor, (earliest, latest), now() - grace)
            .await?;
        let mut ran = 0;
        let mut day = earliest;
        while day <= latest {
            let again = due.contains(&day);
            if !done.contains(&day) || again {
                let now = now();
                let until = now + time::Duration::seconds(self.settings.claim_s as i64);
                let claim = (now, until);
                if store::claim_worker_day(&self.pool, processor, day, &self.owner, claim, again)
                    .await?
                {
                    let actor = Actor {
                        name: self.owner.clone(),
                        role: "service".to_owned(),
                    };
                    self.reconcile(processor, day, actor, None).await?;
                    ran += 1;
                }
            }
            let Some(next) = day.next_day() else { break };
            day = next;
        }
        Ok(ran)
    }

    async fn claim(
        &self,
        tx: &mut sqlx::PgConnection,
        request_id: &str,
        method: &str,
        hash: &[u8],
        id: &str,
    ) -> Result<Option<storage::StoredRequest>, Error> {
        storage::claim_request_id(tx, request_id, method, hash, id, self.request_id_wait_ms).await
    }

    async fn replay(
        &self,
        request_id: &str,
        method: &str,
        hash: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        storage::stored_request(&self.pool, request_id)
            .await?
            .map(|earlier| earlier.replay(method, hash))
            .transpose()
    }
}

/// The days the worker reconciles at `now`: from `lookback_days` back to the latest closed
/// one (the day before, once `run_hour_utc` has come; else the one before that).
fn worker_days(now: OffsetDateTime, settings: &ReconciliationSettings) -> Option<(Date, Date)> {
    let yesterday = now.date().previous_day()?;
    let latest = if now.hour() >= settings.run_hour_utc {
        yesterday
    } else {
        yesterday.previous_day()?
    };
    let earliest = latest - time::Duration::days(i64::from(settings.lookback_days) - 1);
    Some((earliest, latest))
}

/// A ledger transfer as reconciliation sees it: a capture (a posted hold: from the card's
/// funding source to the receivable) or a refund (a single transfer back), with its reference.
fn ledger_entry(transfer: &StoredTransfer) -> Option<LedgerEntry> {
    let reference = transfer.refs.processor_reference.clone()?;
    let (kind, funding, receivable) = match transfer.kind {
        StoredKind::PostPending => (SettlementType::Capture, &transfer.debit, &transfer.credit),
        StoredKind::Single => (SettlementType::Refund, &transfer.credit, &transfer.debit),
        _ => return None,
    };
    Some(LedgerEntry {
        transfer_id: transfer.id.to_string(),
        kind,
        reference,
        amount: transfer.amount,
        currency: transfer.currency.as_str().to_owned(),
        funding_account: funding.to_string(),
        receivable_account: receivable.to_string(),
        payment_id: transfer.refs.payment_id.clone(),
        leg_id: transfer.refs.leg_id.clone(),
        created_at: transfer.created_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    #[test]
    fn the_worker_waits_for_its_hour_and_looks_back() {
        let settings = ReconciliationSettings {
            run_hour_utc: 2,
            lookback_days: 3,
            ..ReconciliationSettings::default()
        };
        assert_eq!(
            worker_days(datetime!(2026-12-07 01:59 UTC), &settings),
            Some((date!(2026 - 12 - 03), date!(2026 - 12 - 05)))
        );
        assert_eq!(
            worker_days(datetime!(2026-12-07 02:00 UTC), &settings),
            Some((date!(2026 - 12 - 04), date!(2026 - 12 - 06)))
        );
    }
}
