//! The HA drill of `tandemctl chaos --ha`: the servers run on a highly available Postgres
//! (multi-host URLs), none of them is ever killed, and the Postgres primary is, by a command the
//! caller gives (`scripts/ha-drill.sh` passes its own), once a share of the payments is created.
//!
//! Before each kill the drill reads, through the servers' own APIs, what the primary has
//! committed and served: every event id of the feed (`ListEvents`), every ledger entry
//! (`ListEntries`: id, sequence, amount), the audit chain's newest event (`ListAuditEvents`:
//! sequence and hash; once `VerifyAuditLog` passes at the end, the chain's hashes vouch for
//! every event before it), and how many payments are not terminal. Then it runs the command,
//! and measures the failover from outside (the time until another host of the URL accepts a
//! read-write session) and from the clients' side (the time until a `CreatePayment` sent after
//! the kill is acknowledged). At the end, on the new primary, everything read before a kill
//! must still be there and unchanged, and every payment a client saw acknowledged must exist.
//! A call whose connection broke during its COMMIT has an unknown outcome, not a lost one: the
//! client retries it by request id, and only what a client saw acknowledged or read counts.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::ledger_service_client::LedgerServiceClient;
use tandem_proto::tandem::orchestrator::v1::payment_service_client::PaymentServiceClient;
use tandem_proto::tandem::vault::v1 as vault_pb;
use tandem_proto::tandem::vault::v1::key_admin_service_client::KeyAdminServiceClient;
use tandem_tls::identity::Role;

use crate::process::connect;

/// How often the hosts are probed for the new primary after a kill.
const PROBE_INTERVAL: Duration = Duration::from_millis(100);
/// How long one host may take to answer a probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the kill command may run (it may first wait for the formation to be whole again).
const KILL_COMMAND_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a read of the drill's checks retries while the servers find their database.
const READ_RETRY_WINDOW: Duration = Duration::from_secs(60);
/// Items per page of every list the drill reads: small enough that a page of the largest
/// (ledger entries, audit events) fits the servers' 64 KiB message limit.
const PAGE_SIZE: i32 = 100;

/// What a server logs when its pool moves to a new primary (`tandem_runtime::primary`).
pub(super) const MOVED_LOG_LINE: &str = "database primary moved";

/// The drill's settings, from `tandemctl chaos --ha`.
#[derive(Debug, Clone)]
pub(super) struct Plan {
    /// The orchestrator's database (multi-host); its hosts are probed for the primary.
    pub(super) orchestrator_url: String,
    /// `sh -c` command that kills the primary and returns once it is dead.
    pub(super) kill_command: String,
    /// Kills in the run.
    pub(super) kills: usize,
    /// Longest wait, after a kill, for another host to accept writes.
    pub(super) failover_timeout: Duration,
}

impl Plan {
    /// Kill `kill` (from 1) runs once this many payments are acknowledged.
    fn trigger(&self, kill: usize, payments: usize) -> usize {
        kill * payments / (self.kills + 1)
    }

    /// How many kills must have happened before payment `index` is sent: payments well after a
    /// kill's trigger wait for it, so that some are always sent after it.
    fn kills_before(&self, index: usize, payments: usize) -> usize {
        let half_step = payments / (2 * (self.kills + 1));
        (1..=self.kills)
            .filter(|kill| index >= self.trigger(*kill, payments) + half_step)
            .count()
    }
}

/// What the payment drivers and the kills share.
#[derive(Debug, Default)]
pub(super) struct Writes {
    /// `CreatePayment` calls under way (sent, not yet acknowledged).
    pub(super) creating: AtomicUsize,
    /// Kills done.
    kills_done: AtomicUsize,
    /// Set when the kills failed: payments waiting for a kill stop waiting.
    abandoned: AtomicBool,
    /// Per kill, when its command returned, and when the first `CreatePayment` sent after it
    /// was acknowledged. (The lock is held for a push or a look, never across a panic, so it
    /// is never poisoned.)
    kills: Mutex<Vec<(Instant, Option<Instant>)>>,
}

impl Writes {
    /// Notes that a `CreatePayment` sent at `sent` was acknowledged now.
    pub(super) fn acknowledged(&self, sent: Instant) {
        let mut kills = self.kills.lock().expect("drill state");
        if let Some((_, resumed)) = kills.iter_mut().rev().find(|(at, _)| *at < sent) {
            resumed.get_or_insert_with(Instant::now);
        }
    }

    /// Whether payment `index` of `payments` may be sent now: the kills it waits for happened.
    /// `None`: the kills failed, and it is not to be sent at all.
    pub(super) fn may_send(&self, plan: &Plan, index: usize, payments: usize) -> Option<bool> {
        if self.abandoned.load(Ordering::SeqCst) {
            return None;
        }
        Some(self.kills_done.load(Ordering::SeqCst) >= plan.kills_before(index, payments))
    }

    fn killed(&self, at: Instant) {
        self.kills.lock().expect("drill state").push((at, None));
        self.kills_done.fetch_add(1, Ordering::SeqCst);
    }
}

/// What the clients could read before a kill.
#[derive(Debug, Default)]
struct Snapshot {
    events: Vec<String>,
    /// Ledger entries by id: (sequence, amount in minor units).
    entries: HashMap<String, (i64, i64)>,
    /// The audit chain's newest event.
    audit_head: Option<AuditHead>,
    /// Payments not terminal.
    unfinished: usize,
}

/// An event of the vault's audit chain, by which the chain up to it is known: each event's hash
/// covers the one before.
#[derive(Debug, Clone)]
struct AuditHead {
    sequence: i64,
    hash: String,
    time: Option<prost_types::Timestamp>,
}

/// One kill, as measured.
#[derive(Debug)]
pub(super) struct Kill {
    before: Snapshot,
    /// Payments not terminal, and `CreatePayment` calls under way, when it ran.
    pub(super) in_flight: usize,
    old_primary: String,
    new_primary: String,
    /// From the kill until another host accepted a read-write session.
    pub(super) failover: Duration,
    killed_at: Instant,
}

/// Runs the plan's kills as the payments are acknowledged (`created` counts them). If they
/// fail, the payments still waiting for one are abandoned.
pub(super) async fn run_kills(
    plan: &Plan,
    payments: usize,
    created: &AtomicUsize,
    writes: &Writes,
    orchestrator: &str,
    vault: &str,
    certs: &Path,
) -> anyhow::Result<Vec<Kill>> {
    let kills = kill_in_turn(plan, payments, created, writes, orchestrator, vault, certs).await;
    if kills.is_err() {
        writes.abandoned.store(true, Ordering::SeqCst);
    }
    kills
}

async fn kill_in_turn(
    plan: &Plan,
    payments: usize,
    created: &AtomicUsize,
    writes: &Writes,
    orchestrator: &str,
    vault: &str,
    certs: &Path,
) -> anyhow::Result<Vec<Kill>> {
    let run_started = time::OffsetDateTime::now_utc();
    let mut kills = Vec::with_capacity(plan.kills);
    for kill in 1..=plan.kills {
        let trigger = plan.trigger(kill, payments);
        while created.load(Ordering::SeqCst) < trigger {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let old_primary = primary(&plan.orchestrator_url)
            .await?
            .context("no host of the orchestrator's database accepts writes before the kill")?;
        let before = snapshot(orchestrator, vault, certs, run_started).await?;
        let in_flight = before.unfinished + writes.creating.load(Ordering::SeqCst);
        println!(
            "ha drill: kill {kill}: {} payments acknowledged, {in_flight} in flight; killing the \
             primary {old_primary}",
            created.load(Ordering::SeqCst)
        );
        let status = tokio::time::timeout(
            KILL_COMMAND_TIMEOUT,
            tokio::process::Command::new("sh")
                .arg("-c")
                .arg(&plan.kill_command)
                .status(),
        )
        .await
        .context("the kill command did not return within 300 s")?
        .context("running the kill command")?;
        anyhow::ensure!(status.success(), "the kill command failed: {status}");
        let killed_at = Instant::now();
        writes.killed(killed_at);
        let deadline = killed_at + plan.failover_timeout;
        let new_primary = loop {
            match primary(&plan.orchestrator_url).await? {
                Some(host) if host != old_primary => break host,
                _ if Instant::now() > deadline => bail!(
                    "no other host accepted writes within {} s of the kill",
                    plan.failover_timeout.as_secs()
                ),
                _ => tokio::time::sleep(PROBE_INTERVAL).await,
            }
        };
        let failover = killed_at.elapsed();
        println!(
            "ha drill: kill {kill}: {new_primary} accepts writes {:.1} s after the kill",
            failover.as_secs_f64()
        );
        kills.push(Kill {
            before,
            in_flight,
            old_primary,
            new_primary,
            failover,
            killed_at,
        });
    }
    Ok(kills)
}

/// What the end state says about the kills.
#[derive(Debug, Default)]
pub(super) struct Outcome {
    /// Acknowledged payments, events, ledger entries and audit events read before a kill and
    /// missing (or changed) after.
    pub(super) lost: usize,
    /// The slowest failover.
    pub(super) failover: Duration,
    /// The slowest resumption of acknowledged writes after a kill.
    pub(super) resumed: Duration,
    /// Payments in flight at each kill.
    pub(super) in_flight: Vec<usize>,
    /// What was read before the kills and found again, for the report.
    pub(super) compared: String,
    pub(super) violations: Vec<String>,
}

/// Checks, on the new primary, that what the clients saw survived the kills.
pub(super) async fn check(
    kills: &[Kill],
    writes: &Writes,
    created: &[(String, bool)],
    orchestrator: &str,
    vault: &str,
    certs: &Path,
) -> anyhow::Result<Outcome> {
    let mut outcome = Outcome::default();
    let resumed_at: Vec<Option<Instant>> = writes
        .kills
        .lock()
        .expect("drill state")
        .iter()
        .map(|(_, resumed)| *resumed)
        .collect();
    for (index, kill) in kills.iter().enumerate() {
        outcome.failover = outcome.failover.max(kill.failover);
        outcome.in_flight.push(kill.in_flight);
        match resumed_at.get(index).copied().flatten() {
            Some(at) => {
                outcome.resumed = outcome.resumed.max(at.duration_since(kill.killed_at));
            }
            None => outcome.violations.push(format!(
                "kill {}: no payment sent after it was acknowledged",
                index + 1
            )),
        }
        if kill.old_primary == kill.new_primary {
            outcome
                .violations
                .push(format!("kill {}: the primary did not change", index + 1));
        }
    }
    // Every acknowledged payment exists.
    let reader = PaymentServiceClient::new(connect(orchestrator, certs, Role::Reader).await?);
    let mut missing_payments = 0;
    for (id, _) in created {
        let request = pb::GetPaymentRequest {
            payment_id: id.clone(),
        };
        let answer = read_retrying(|| {
            let mut reader = reader.clone();
            let request = request.clone();
            async move { reader.get_payment(request).await }
        })
        .await;
        match answer {
            Ok(_) => {}
            Err(status) if status.code() == tonic::Code::NotFound => missing_payments += 1,
            Err(status) => return Err(status).with_context(|| format!("reading payment {id}")),
        }
    }
    if missing_payments > 0 {
        outcome.violations.push(format!(
            "{missing_payments} acknowledged payments are missing"
        ));
    }
    outcome.lost += missing_payments;
    // Everything read before each kill is still there, unchanged.
    let after = snapshot(
        orchestrator,
        vault,
        certs,
        time::OffsetDateTime::now_utc() - time::Duration::days(1),
    )
    .await?;
    let events: HashSet<&String> = after.events.iter().collect();
    let (mut events_read, mut entries_read, mut audit_read) = (0, 0, 0);
    for (index, kill) in kills.iter().enumerate() {
        let kill_number = index + 1;
        let before = &kill.before;
        events_read = events_read.max(before.events.len());
        entries_read = entries_read.max(before.entries.len());
        let lost_events = before
            .events
            .iter()
            .filter(|id| !events.contains(id))
            .count();
        let lost_entries = before
            .entries
            .iter()
            .filter(|(id, seen)| after.entries.get(*id) != Some(*seen))
            .count();
        // The chain's head before the kill, found again with the same hash: with the whole
        // chain verified, so is every event before it.
        let mut lost_audit = 0;
        if let Some(head) = &before.audit_head {
            audit_read = audit_read.max(head.sequence);
            if audit_event(vault, certs, head).await?.as_ref() != Some(&head.hash) {
                lost_audit = 1;
                outcome.violations.push(format!(
                    "kill {kill_number}: the audit chain's newest event before it, {}, is \
                     missing or changed",
                    head.sequence
                ));
            }
        }
        for (count, what) in [
            (lost_events, "events of the feed"),
            (lost_entries, "ledger entries"),
        ] {
            if count > 0 {
                outcome.violations.push(format!(
                    "kill {kill_number}: {count} {what} read before it are missing or changed"
                ));
            }
        }
        outcome.lost += lost_events + lost_entries + lost_audit;
    }
    outcome.compared = format!(
        "{} acknowledged payments, {events_read} events, {entries_read} ledger entries and the \
         audit chain up to event {audit_read} read before the kills",
        created.len()
    );
    Ok(outcome)
}

/// The host of the orchestrator's database that accepts writes now, if one does.
async fn primary(url: &str) -> anyhow::Result<Option<String>> {
    tandem_runtime::primary::qualifying_host(url, PROBE_TIMEOUT)
        .await
        .context("the orchestrator's database URL")
}

/// Runs `call` until it answers what is not worth asking again (`super::read_again`), for a
/// while: the servers may be finding their database, or catching up.
async fn read_retrying<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Instant::now() + READ_RETRY_WINDOW;
    loop {
        match call().await {
            Err(status) if super::read_again(&status) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            answer => return answer.map(tonic::Response::into_inner),
        }
    }
}

/// Reads what the clients can see: the feed's event ids, the ledger entries booked since
/// `since`, the audit events, and how many payments are not terminal.
async fn snapshot(
    orchestrator: &str,
    vault: &str,
    certs: &Path,
    since: time::OffsetDateTime,
) -> anyhow::Result<Snapshot> {
    let channel = connect(orchestrator, certs, Role::Reader).await?;
    let mut snapshot = Snapshot::default();

    let payments = PaymentServiceClient::new(channel.clone());
    let mut page_token = String::new();
    loop {
        let request = pb::ListEventsRequest {
            page_size: PAGE_SIZE,
            page_token: page_token.clone(),
            event_types: Vec::new(),
        };
        let page = read_retrying(|| {
            let mut payments = payments.clone();
            let request = request.clone();
            async move { payments.list_events(request).await }
        })
        .await
        .context("ListEvents")?;
        snapshot
            .events
            .extend(page.events.into_iter().map(|e| e.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    let mut page_token = String::new();
    loop {
        let request = pb::ListPaymentsRequest {
            page_size: PAGE_SIZE,
            page_token: page_token.clone(),
            ..Default::default()
        };
        let page = read_retrying(|| {
            let request = request.clone();
            let mut payments = payments.clone();
            async move { payments.list_payments(request).await }
        })
        .await
        .context("ListPayments")?;
        snapshot.unfinished += page
            .payments
            .iter()
            .filter(|p| {
                !matches!(
                    pb::PaymentState::try_from(p.state),
                    Ok(pb::PaymentState::Succeeded
                        | pb::PaymentState::PartiallyPaid
                        | pb::PaymentState::Failed)
                )
            })
            .count();
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    let ledger = LedgerServiceClient::new(channel);
    let timestamp = |t: time::OffsetDateTime| prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: 0,
    };
    // One range for every page: a page token is bound to its query.
    let start_time = Some(timestamp(since - time::Duration::hours(1)));
    let end_time = Some(timestamp(
        time::OffsetDateTime::now_utc() + time::Duration::days(1),
    ));
    let mut page_token = String::new();
    loop {
        let request = pb::ListEntriesRequest {
            page_size: PAGE_SIZE,
            page_token: page_token.clone(),
            start_time,
            end_time,
            ..Default::default()
        };
        let page = read_retrying(|| {
            let mut ledger = ledger.clone();
            let request = request.clone();
            async move { ledger.list_entries(request).await }
        })
        .await
        .context("ListEntries")?;
        for entry in page.entries {
            let amount = entry.amount.as_ref().map_or(0, |m| m.minor_units);
            snapshot.entries.insert(entry.id, (entry.sequence, amount));
        }
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    let audit = KeyAdminServiceClient::new(connect(vault, certs, Role::Auditor).await?);
    let request = vault_pb::ListAuditEventsRequest {
        page_size: 1,
        descending: true,
        ..Default::default()
    };
    let newest = read_retrying(|| {
        let mut audit = audit.clone();
        let request = request.clone();
        async move { audit.list_audit_events(request).await }
    })
    .await
    .context("ListAuditEvents")?;
    snapshot.audit_head = newest.events.into_iter().next().map(|e| AuditHead {
        sequence: e.sequence,
        hash: e.hash,
        time: e.create_time,
    });
    Ok(snapshot)
}

/// The hash of the audit event with `head`'s sequence as the chain holds it now, if it holds
/// one: looked for among the events of `head`'s second.
async fn audit_event(
    vault: &str,
    certs: &Path,
    head: &AuditHead,
) -> anyhow::Result<Option<String>> {
    let audit = KeyAdminServiceClient::new(connect(vault, certs, Role::Auditor).await?);
    let start_time = head.time;
    let end_time = head.time.map(|t| prost_types::Timestamp {
        seconds: t.seconds + 1,
        nanos: t.nanos,
    });
    let mut page_token = String::new();
    loop {
        let request = vault_pb::ListAuditEventsRequest {
            page_size: PAGE_SIZE,
            page_token: page_token.clone(),
            start_time,
            end_time,
            ..Default::default()
        };
        let page = read_retrying(|| {
            let mut audit = audit.clone();
            let request = request.clone();
            async move { audit.list_audit_events(request).await }
        })
        .await
        .context("ListAuditEvents")?;
        if let Some(event) = page
            .events
            .into_iter()
            .find(|e| e.sequence == head.sequence)
        {
            return Ok(Some(event.hash));
        }
        if page.next_page_token.is_empty() {
            return Ok(None);
        }
        page_token = page.next_page_token;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One kill triggers at half the payments and holds the last quarter back until it ran;
    /// three kills at each quarter, each holding back the eighth after its trigger.
    #[test]
    fn kills_trigger_and_gate_by_share() {
        let plan = |kills| Plan {
            orchestrator_url: String::new(),
            kill_command: String::new(),
            kills,
            failover_timeout: Duration::from_secs(1),
        };
        let one = plan(1);
        assert_eq!(one.trigger(1, 200), 100);
        assert_eq!(one.kills_before(149, 200), 0);
        assert_eq!(one.kills_before(150, 200), 1);
        assert_eq!(one.kills_before(199, 200), 1);
        let three = plan(3);
        assert_eq!(
            (1..=3).map(|k| three.trigger(k, 800)).collect::<Vec<_>>(),
            [200, 400, 600]
        );
        assert_eq!(three.kills_before(299, 800), 0);
        assert_eq!(three.kills_before(300, 800), 1);
        assert_eq!(three.kills_before(500, 800), 2);
        assert_eq!(three.kills_before(799, 800), 3);
    }
}
