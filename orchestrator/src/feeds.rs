//! The events of watched payments, read once per instance and fanned out to every
//! `WatchPayment` stream of that payment.
//!
//! One reader task per instance keeps a feed per watched payment. It reads the new events of
//! the payments whose changes this instance committed as soon as it is told of them
//! ([`Feeds::changed`], called with each commit's announcement), and those of every watched
//! payment each `watch_poll_ms` (changes committed by other instances): two queries a round,
//! for all watched payments at once, however many streams watch them. Each stream reads the
//! database itself only to catch up: once when it starts, and again if it fell behind its feed.
//! Nothing here depends on Postgres's notifications; any Postgres-compatible database serves.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, broadcast, watch};

use crate::error::Error;
use crate::storage;

/// Most payments one round reads, so that a round's queries stay small.
const ROUND_PAYMENTS_MAX: usize = 1_000;
/// Updates a feed keeps for a stream that is slow to take them; beyond, the stream catches up
/// from the database.
const FEED_BUFFER: usize = 64;

/// What a round found new about one watched payment.
#[derive(Debug)]
pub struct Update {
    /// New events, `(sequence, encoded PaymentEvent)`, in order.
    pub events: Vec<(i64, Vec<u8>)>,
    /// The payment's events in all, as of the round.
    pub total: i64,
    /// Whether the payment was settled as of the round.
    pub settled: bool,
}

/// The feeds of this instance's watched payments.
#[derive(Debug)]
pub struct Feeds {
    pool: PgPool,
    poll: Duration,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    feeds: HashMap<String, Feed>,
    /// Watched payments with a change committed here since the last round.
    dirty: HashSet<String>,
}

#[derive(Debug)]
struct Feed {
    sender: broadcast::Sender<Arc<Update>>,
    /// The events sent so far (`None` until the first round has read the payment).
    known: Option<i64>,
    /// Whether the payment was settled as of the last update.
    settled: bool,
    watchers: usize,
}

/// A stream's place on a payment's feed: its updates, and the feed's end when the last
/// subscription is dropped.
#[derive(Debug)]
pub struct Subscription {
    feeds: Arc<Feeds>,
    payment_id: String,
    /// The feed's updates.
    pub updates: broadcast::Receiver<Arc<Update>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut state = self.feeds.state();
        if let Some(feed) = state.feeds.get_mut(&self.payment_id) {
            feed.watchers -= 1;
            if feed.watchers == 0 {
                state.feeds.remove(&self.payment_id);
                state.dirty.remove(&self.payment_id);
            }
        }
    }
}

impl Feeds {
    /// Feeds reading from `pool`, and reading every watched payment each `poll`.
    pub fn new(pool: PgPool, poll: Duration) -> Arc<Self> {
        Arc::new(Self {
            pool,
            poll,
            state: Mutex::default(),
            wake: Notify::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; the maps stay consistent if something did.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Subscribes to the feed of `payment_id`, starting it if it is the first. Updates sent
    /// after this call reach the subscription; what committed before it, the stream reads
    /// from the database.
    pub fn subscribe(self: &Arc<Self>, payment_id: &str) -> Subscription {
        let mut state = self.state();
        let feed = state
            .feeds
            .entry(payment_id.to_owned())
            .or_insert_with(|| Feed {
                sender: broadcast::channel(FEED_BUFFER).0,
                known: None,
                settled: false,
                watchers: 0,
            });
        feed.watchers += 1;
        let updates = feed.sender.subscribe();
        let fresh = feed.known.is_none();
        if fresh {
            state.dirty.insert(payment_id.to_owned());
        }
        drop(state);
        if fresh {
            self.wake.notify_one();
        }
        Subscription {
            feeds: self.clone(),
            payment_id: payment_id.to_owned(),
            updates,
        }
    }

    /// Tells the reader that a change of `payment_id` committed here: if it is watched, its
    /// new events are read at once rather than at the next poll.
    pub fn changed(&self, payment_id: &str) {
        let mut state = self.state();
        if state.feeds.contains_key(payment_id) {
            state.dirty.insert(payment_id.to_owned());
            drop(state);
            self.wake.notify_one();
        }
    }

    /// Payments watched now, for tests and metrics.
    pub fn watched(&self) -> usize {
        self.state().feeds.len()
    }

    /// The reader: a round for the changed payments when woken, a round for every watched
    /// payment each poll, until `stop`.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut poll = tokio::time::interval(self.poll);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let everything = tokio::select! {
                _ = poll.tick() => true,
                () = self.wake.notified() => false,
                _ = stop.wait_for(|stopped| *stopped) => return,
            };
            if let Err(error) = self.round(everything).await {
                tracing::warn!(%error, "watch feed round failed; the next round retries");
                tokio::time::sleep(self.poll).await;
            }
        }
    }

    /// Reads what is new about the changed payments (with `everything`, every watched one)
    /// and sends it to their feeds.
    async fn round(&self, everything: bool) -> Result<(), Error> {
        let targets: Vec<(String, i64)> = {
            let mut state = self.state();
            let dirty = std::mem::take(&mut state.dirty);
            let ids: Vec<String> = if everything {
                state.feeds.keys().cloned().collect()
            } else {
                dirty.into_iter().collect()
            };
            ids.into_iter()
                .filter_map(|id| {
                    let known = state.feeds.get(&id)?.known.unwrap_or(-1);
                    Some((id, known))
                })
                .collect()
        };
        for chunk in targets.chunks(ROUND_PAYMENTS_MAX) {
            self.read(chunk).await?;
        }
        Ok(())
    }

    /// One round over `targets` (payment id, events already sent, or -1 for a new feed).
    async fn read(&self, targets: &[(String, i64)]) -> Result<(), Error> {
        let ids: Vec<&str> = targets.iter().map(|(id, _)| id.as_str()).collect();
        let found: HashMap<String, (i64, bool)> = storage::progress_of(&self.pool, &ids)
            .await?
            .into_iter()
            .map(|(id, events, settled)| (id, (events, settled)))
            .collect();
        // New feeds start where the payment is: their streams caught up from the database.
        let behind: Vec<(&str, i64)> = targets
            .iter()
            .filter_map(|(id, known)| {
                let (total, _) = found.get(id)?;
                (*known >= 0 && total > known).then_some((id.as_str(), *known))
            })
            .collect();
        let mut new_events: HashMap<String, Vec<(i64, Vec<u8>)>> = HashMap::new();
        if !behind.is_empty() {
            for (id, sequence, body) in storage::events_after_each(&self.pool, &behind).await? {
                new_events.entry(id).or_default().push((sequence, body));
            }
        }
        let mut state = self.state();
        for (id, known) in targets {
            let (Some(feed), Some(&(total, settled))) = (state.feeds.get_mut(id), found.get(id))
            else {
                continue;
            };
            let events = new_events.remove(id).unwrap_or_default();
            // Events committed between the two queries come too: the feed is as far as both.
            let total = events
                .last()
                .map_or(total, |(sequence, _)| total.max(*sequence));
            // Sent when something changed, or to tell a new feed's streams where it is.
            if feed.known.is_some() && events.is_empty() && settled == feed.settled {
                continue;
            }
            feed.known = Some(total.max(*known));
            feed.settled = settled;
            // No receiver is not an error: the last stream may have just ended.
            let _ = feed.sender.send(Arc::new(Update {
                events,
                total,
                settled,
            }));
        }
        Ok(())
    }
}
