//! The delivery worker: the event feed fanned out to endpoints, and each delivery attempted
//! until a 2xx answers it.
//!
//! Two loops per instance:
//! - **Fan-out** reads the feed (`PaymentService.ListEvents`'s order) after its stored position
//!   and, in one transaction with moving that position, writes a delivery per event and
//!   endpoint whose filter takes it (disabled endpoints too: they keep their events). Replicas
//!   take turns on the position's row lock, so each event's deliveries are written once; a crash
//!   before the commit leaves the position where it was, so none is lost.
//! - **Delivery** claims due lanes under a lease (a lane is an endpoint's pending deliveries of
//!   one payment, card group or reconciliation subject, sent one at a time in feed order; the
//!   claim reads lanes, never the backlog behind their heads), bounded in all by
//!   `webhook.concurrency_max` and per endpoint by `webhook.endpoint_concurrency_max`, posts
//!   each head, and records finished attempts with their effects, a batch per transaction (the
//!   committer). A replica that stops mid-attempt leaves its lease to expire; another then sends
//!   the delivery again with the same `webhook-id` (at least once).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use super::destination::check_url;
use super::http::Sender;
use super::secrets::SealingKey;
use crate::config::WebhookSettings;
use crate::domain::webhooks::{
    AfterFailure, AttemptResult, DisabledReason, EndpointState, after_failure, signature_header,
    wants,
};
use crate::error::Error;
use crate::grpc::convert::webhooks::payload;
use crate::storage::{self, webhooks as store};
use tandem_runtime::ids::random_fraction as jitter;
use tandem_runtime::time::now_micros as now;

/// Most feed events one fan-out transaction reads.
const FANOUT_BATCH: i64 = 500;
/// Most deliveries one fan-out transaction writes (events read times endpoints): a step's
/// transaction stays small whatever the number of endpoints.
const FANOUT_DELIVERIES_MAX: i64 = 2_000;
/// Most finished deliveries one purge deletes.
const PURGE_BATCH: i64 = 10_000;
/// How often finished deliveries past `webhook.keep_days` are purged.
const PURGE_EVERY: Duration = Duration::from_secs(600);
/// Most finished attempts one transaction records.
const RECORD_BATCH_MAX: usize = 256;

/// The worker of one instance.
pub struct Worker {
    pool: PgPool,
    settings: WebhookSettings,
    key: Arc<SealingKey>,
    sender: Sender,
    owner: String,
    /// Rung when the fan-out wrote deliveries, so they go without waiting for a poll.
    written: Notify,
    slots: Arc<Semaphore>,
}

impl Worker {
    /// A worker over `pool`; `owner` names this instance in its claims.
    pub fn new(pool: PgPool, settings: WebhookSettings, key: Arc<SealingKey>, owner: &str) -> Self {
        let sender = Sender::new(
            &settings.roots_path,
            Duration::from_millis(settings.request_timeout_ms),
        );
        let slots = Arc::new(Semaphore::new(settings.concurrency_max));
        Self {
            pool,
            settings,
            key,
            sender,
            owner: owner.to_owned(),
            written: Notify::new(),
            slots,
        }
    }

    /// Runs the fan-out, the delivery loop and the committer until `stop`.
    pub async fn run(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let fanout = tokio::spawn(Arc::clone(&self).fanout_loop(stop.clone()));
        let (finished, results) = mpsc::channel(self.settings.concurrency_max * 2);
        let committer = tokio::spawn(Arc::clone(&self).commit_loop(results));
        self.deliver_loop(stop, finished).await;
        let _ = fanout.await;
        let _ = committer.await;
    }

    /// Records finished attempts as they come, a batch per transaction. A batch that fails to
    /// commit is logged; its lanes' leases expire and their heads are sent again.
    async fn commit_loop(self: Arc<Self>, mut results: mpsc::Receiver<store::Finished>) {
        let mut batch = Vec::with_capacity(RECORD_BATCH_MAX);
        while results.recv_many(&mut batch, RECORD_BATCH_MAX).await > 0 {
            for finished in &batch {
                if let store::AttemptEffect::Disable(state) = finished.effect {
                    tracing::warn!(endpoint_id = %finished.claimed.endpoint_id, ?state,
                        "webhook endpoint disabled; its events are kept");
                }
            }
            match store::record_attempts(&self.pool, &self.owner, &batch).await {
                Ok(recorded) if recorded < batch.len() => tracing::info!(
                    lost = batch.len() - recorded,
                    "webhook claims lost to another instance"
                ),
                // Counted once recorded (a batch with a lost claim is not: which one is unknown,
                // and its lane's new owner sends it again).
                Ok(_) => batch.iter().for_each(observe_attempt),
                Err(error) => tracing::warn!(%error, attempts = batch.len(),
                    "webhook attempts not recorded; they will be made again"),
            }
            batch.clear();
            // A recorded delivery may make its lane's next one due.
            self.written.notify_one();
        }
    }

    fn poll(&self) -> Duration {
        Duration::from_millis(self.settings.poll_ms)
    }

    async fn fanout_loop(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_purge = Instant::now();
        loop {
            let caught_up = match self.fan_out().await {
                Ok(caught_up) => caught_up,
                Err(error) => {
                    tracing::warn!(%error, "webhook fan-out failed");
                    true
                }
            };
            if last_purge.elapsed() >= PURGE_EVERY {
                last_purge = Instant::now();
                self.purge().await;
            }
            if caught_up {
                tokio::select! {
                    _ = tokio::time::sleep(self.poll()) => {}
                    _ = stop.wait_for(|stopped| *stopped) => return,
                }
            } else if *stop.borrow() {
                return;
            }
        }
    }

    /// One fan-out step: returns true if it caught up with the feed (or another instance holds
    /// the fan-out).
    pub async fn fan_out(&self) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await?;
        let Some(position) = store::lock_fanout(&mut tx, false).await? else {
            return Ok(true);
        };
        let endpoints = store::fanout_endpoints(&mut tx).await?;
        if endpoints.is_empty() {
            // Nobody to send to: the position moves to the feed's frontier.
            let frontier = store::feed_frontier(&mut tx).await?;
            if frontier > position.key {
                let start = storage::FeedPosition {
                    key: frontier,
                    ..Default::default()
                };
                store::set_fanout(&mut tx, &start).await?;
            }
            tx.commit().await?;
            return Ok(true);
        }
        let batch = (FANOUT_DELIVERIES_MAX / endpoints.len() as i64).clamp(1, FANOUT_BATCH);
        let page = storage::feed_after(&mut *tx, &position, &[], batch).await?;
        let mut deliveries = Vec::new();
        for event in &page.events {
            if !endpoints.iter().any(|e| wants(&e.event_types, &event.kind)) {
                continue;
            }
            let rendered = match payload(event) {
                Ok(rendered) => rendered,
                Err(error) => {
                    // A stored event that does not decode is a bug or tampering; the feed still
                    // lists it, and webhooks go on with the events after it.
                    tracing::error!(%error, subject = %event.position.subject,
                        sequence = event.position.sequence, "event not sent by webhook");
                    continue;
                }
            };
            // An endpoint takes the events after the fan-out's position at its creation.
            let receivers = endpoints
                .iter()
                .filter(|e| wants(&e.event_types, &event.kind) && event.position > e.start);
            for endpoint in receivers {
                deliveries.push(store::NewDelivery {
                    id: tandem_runtime::ids::random_id("whd_"),
                    endpoint_id: endpoint.id.clone(),
                    event_id: rendered.event_id.clone(),
                    event_type: event.kind.clone(),
                    event_time: rendered.event_time,
                    lane: event.position.subject.clone(),
                    body: rendered.json.clone(),
                });
            }
        }
        let read = page.events.len();
        let mut next = page
            .events
            .last()
            .map_or_else(|| position.clone(), |e| e.position.clone());
        let caught_up = read < batch as usize;
        if caught_up {
            let frontier = storage::FeedPosition {
                key: page.frontier,
                ..Default::default()
            };
            next = next.max(frontier);
        }
        store::insert_deliveries(&mut tx, &deliveries, false).await?;
        if next != position {
            store::set_fanout(&mut tx, &next).await?;
        }
        tx.commit().await?;
        if !deliveries.is_empty() {
            self.written.notify_one();
        }
        Ok(caught_up)
    }

    /// Purges finished deliveries past `webhook.keep_days` and idle lanes, a batch at a time
    /// until none is left.
    async fn purge(&self) {
        let before = now() - time::Duration::days(i64::from(self.settings.keep_days));
        let (mut deliveries, mut lanes) = (0, 0);
        loop {
            match store::purge(&self.pool, before, PURGE_BATCH).await {
                Ok((d, l)) => {
                    deliveries += d;
                    lanes += l;
                    if d < PURGE_BATCH as u64 && l < PURGE_BATCH as u64 {
                        break;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "webhook purge failed");
                    break;
                }
            }
        }
        if deliveries + lanes > 0 {
            tracing::info!(
                deliveries,
                lanes,
                "finished webhook deliveries and idle lanes purged"
            );
        }
    }

    async fn deliver_loop(
        self: Arc<Self>,
        mut stop: watch::Receiver<bool>,
        finished: mpsc::Sender<store::Finished>,
    ) {
        loop {
            let free = self.slots.available_permits();
            let claimed = if free == 0 {
                Vec::new()
            } else {
                store::claim(
                    &self.pool,
                    &self.owner,
                    i64::try_from(self.settings.lease_ms).unwrap_or(i64::MAX),
                    i64::try_from(free).unwrap_or(i64::MAX),
                    i64::try_from(self.settings.endpoint_concurrency_max).unwrap_or(i64::MAX),
                )
                .await
                .unwrap_or_else(|error| {
                    tracing::warn!(%error, "claiming webhook deliveries failed");
                    Vec::new()
                })
            };
            let idle = claimed.is_empty();
            for delivery in claimed {
                let Ok(slot) = Arc::clone(&self.slots).acquire_owned().await else {
                    return;
                };
                let worker = Arc::clone(&self);
                let finished = finished.clone();
                tokio::spawn(async move {
                    let result = worker.attempt(delivery).await;
                    // The committer ends only once every sender is gone.
                    let _ = finished.send(result).await;
                    drop(slot);
                });
            }
            if idle {
                tokio::select! {
                    _ = tokio::time::sleep(self.poll()) => {}
                    _ = self.written.notified() => {}
                    _ = stop.wait_for(|stopped| *stopped) => return,
                }
            } else if *stop.borrow() {
                return;
            }
        }
    }

    /// One attempt of a claimed delivery, with its effect.
    async fn attempt(&self, claimed: store::Claimed) -> store::Finished {
        let time = now();
        let started = Instant::now();
        let sent = self.send(&claimed, time).await;
        let latency_ms = i64::try_from(started.elapsed().as_millis()).unwrap_or(i64::MAX);
        let (attempt, result) = match sent {
            Ok(answer) => (
                store::AttemptRecord {
                    time,
                    status_code: i32::from(answer.status),
                    latency_ms,
                    error: match answer.status {
                        200..=299 => String::new(),
                        300..=399 => format!("HTTP {}: redirect not followed", answer.status),
                        status => format!("HTTP {status}"),
                    },
                },
                AttemptResult::of_status(answer.status, answer.retry_after),
            ),
            Err(error) => (
                store::AttemptRecord {
                    time,
                    status_code: 0,
                    latency_ms,
                    error,
                },
                AttemptResult::Failed { retry_after: None },
            ),
        };
        let effect = self.effect(&claimed, &result, time);
        store::Finished {
            claimed,
            attempt,
            effect,
        }
    }

    /// Signs and posts one delivery.
    async fn send(
        &self,
        claimed: &store::Claimed,
        time: time::OffsetDateTime,
    ) -> Result<super::http::Answer, String> {
        let destination = check_url(&claimed.url, &self.settings.allow_hosts)?;
        let current = self
            .key
            .open(
                &claimed.endpoint_id,
                claimed.secret_version,
                &claimed.secret_sealed,
            )
            .map_err(|e| e.to_string())?;
        let previous = match &claimed.previous_secret_sealed {
            Some(sealed) => Some(
                self.key
                    .open(&claimed.endpoint_id, claimed.secret_version - 1, sealed)
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        let mut secrets: Vec<&[u8]> = vec![&current];
        if let Some(previous) = &previous {
            secrets.push(previous);
        }
        let timestamp = time.unix_timestamp();
        let body = Bytes::from(claimed.body.clone());
        let headers = [
            ("webhook-id", claimed.event_id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
            (
                "webhook-signature",
                signature_header(&secrets, &claimed.event_id, timestamp, &body),
            ),
        ];
        self.sender.post(&destination, &headers, body).await
    }

    /// What an attempt's result does to the delivery and its endpoint.
    fn effect(
        &self,
        claimed: &store::Claimed,
        result: &AttemptResult,
        time: time::OffsetDateTime,
    ) -> store::AttemptEffect {
        let retry_after = match result {
            AttemptResult::Delivered => return store::AttemptEffect::Delivered,
            AttemptResult::Gone => {
                return store::AttemptEffect::Disable(EndpointState::Disabled(
                    DisabledReason::Gone,
                ));
            }
            AttemptResult::Failed { retry_after } => *retry_after,
        };
        let failing = EndpointState::Disabled(DisabledReason::Failing);
        let disable_after = time::Duration::seconds(
            i64::try_from(self.settings.disable_after_s).unwrap_or(i64::MAX),
        );
        if claimed
            .failing_since
            .is_some_and(|since| time - since >= disable_after)
        {
            return store::AttemptEffect::Disable(failing);
        }
        let schedule: Vec<Duration> = self
            .settings
            .retry_schedule_ms
            .iter()
            .map(|ms| Duration::from_millis(*ms))
            .collect();
        let made = usize::try_from(claimed.round_attempts).unwrap_or(0) + 1;
        match after_failure(
            &schedule,
            made,
            retry_after,
            Duration::from_secs(self.settings.retry_after_max_s),
            jitter(),
        ) {
            AfterFailure::Exhausted => store::AttemptEffect::Disable(failing),
            AfterFailure::RetryAfter(wait) => store::AttemptEffect::Retry {
                next_in_ms: i64::try_from(wait.as_millis()).unwrap_or(i64::MAX),
            },
        }
    }
}

/// A recorded attempt's metrics: its effect, and for a first delivery the time since its event.
fn observe_attempt(finished: &store::Finished) {
    let effect = match finished.effect {
        store::AttemptEffect::Delivered => "delivered",
        store::AttemptEffect::Retry { .. } => "retry",
        store::AttemptEffect::Disable(_) => "disabled",
    };
    let lag = (effect == "delivered" && !finished.claimed.redelivery)
        .then(|| finished.attempt.time - finished.claimed.event_time);
    crate::metrics::webhook_attempt(effect, lag);
}
