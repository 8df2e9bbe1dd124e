//! The rate source (`FxService`, DESIGN section 10): each currency pair's current rate, set by
//! the treasury (`SetFxRate`) or read from the rates file ([`file`]), and the quotes a payment
//! converts at ([`Fx::quotes`]).
//!
//! A rate is checked once, by [`crate::grpc::convert::fx::check_rate`], whichever way it comes.
//! `SetFxRate` replaces a pair's rate whatever its as-of time and is idempotent by
//! `request_id`; the file writes a rate only over an older one (by as-of time), so an unchanged
//! file never undoes a newer rate the treasury set. Every change appends a history row in the
//! same statement ([`crate::storage::fx`]).

pub mod file;

use sqlx::PgPool;
use tandem_money::Currency;
use time::OffsetDateTime;

use crate::commands::{NewRate, RateChange, RateQuery};
use crate::config::FxSettings;
use crate::domain::actor::Actor;
use crate::domain::fx::{Picked, Quote, RateProblem, pick};
use crate::error::Error;
use crate::grpc::convert;
use crate::storage::{self, fx as store};
use tandem_runtime::time::now_micros as now;

pub use store::StoredRate;

/// The rate source's operations.
#[derive(Debug)]
pub struct Fx {
    pool: PgPool,
    settings: FxSettings,
    request_id_wait_ms: u64,
}

/// The refusal of a payment that needs the pair of `problem`: FAILED_PRECONDITION
/// `FX_RATE_MISSING` or `FX_RATE_STALE`.
pub fn rate_error(problem: &RateProblem) -> Error {
    match *problem {
        RateProblem::Missing { from, to } => Error::FxRateMissing { from, to },
        RateProblem::Stale { from, to, .. } => Error::FxRateStale { from, to },
    }
}

impl Fx {
    /// The operations over `pool`; a request waits at most `request_id_wait_ms` for another
    /// holding its request id.
    pub fn new(pool: PgPool, settings: FxSettings, request_id_wait_ms: u64) -> Self {
        Self {
            pool,
            settings,
            request_id_wait_ms,
        }
    }

    /// The settings rates are checked by.
    pub fn settings(&self) -> &FxSettings {
        &self.settings
    }

    /// `SetFxRate`: the stored response. The rate replaces the pair's current one, with the
    /// source `treasury:<caller's name>`.
    pub async fn set(&self, change: RateChange, actor: Actor) -> Result<Vec<u8>, Error> {
        let method = "SetFxRate";
        let rate = change.rate;
        let resource = format!("{}/{}", rate.base, rate.quote);
        let mut tx = self.pool.begin().await?;
        if let Some(earlier) = storage::claim_request_id(
            &mut tx,
            &change.request_id,
            method,
            &change.request_hash,
            &resource,
            self.request_id_wait_ms,
        )
        .await?
        {
            tx.rollback().await?;
            return earlier.replay(method, &change.request_hash);
        }
        let stored = StoredRate {
            base: rate.base,
            quote: rate.quote,
            rate: rate.rate,
            source: format!("treasury:{}", actor.name),
            as_of: rate.as_of,
            update_time: now(),
            updater: Some(actor),
        };
        store::set_rate(&mut tx, &stored, &change.request_id).await?;
        let response = convert::fx::set_response(&stored);
        storage::store_response(&mut tx, &change.request_id, &response).await?;
        tx.commit().await?;
        tracing::info!(
            pair = %resource,
            rate = %stored.rate,
            source = %stored.source,
            "fx rate set"
        );
        Ok(response)
    }

    /// `GetFxRate`: the pair's current rate, whatever its age.
    pub async fn get(&self, base: Currency, quote: Currency) -> Result<StoredRate, Error> {
        store::rate(&self.pool, base, quote)
            .await?
            .ok_or(Error::FxRateNotFound)
    }

    /// `ListFxRates`: a page by base then quote currency, and whether more follow.
    pub async fn list(&self, query: &RateQuery) -> Result<(Vec<StoredRate>, bool), Error> {
        let mut page = store::list_rates(
            &self.pool,
            query.base,
            query.after,
            i64::from(query.size) + 1,
        )
        .await?;
        let size = usize::try_from(query.size).unwrap_or(0);
        let more = page.len() > size;
        page.truncate(size);
        Ok((page, more))
    }

    /// The quotes for converting `from` into each currency of `to` other than `from`, one per
    /// currency in the order of its first appearance, as of `now`: each pair's current rate
    /// when it is at most `fx.rate_age_s_max` old, and the pairs without one (missing or
    /// stale; [`rate_error`] says how a payment that needs one is refused). When no conversion
    /// is needed (`to` is empty or all `from`) the answer is empty and the database is not
    /// read; otherwise the rates are read in one statement. `executor` is the payment's own
    /// transaction, so that a payment never waits for a second connection while holding one.
    pub async fn quotes(
        &self,
        executor: impl sqlx::PgExecutor<'_>,
        from: Currency,
        to: &[Currency],
        now: OffsetDateTime,
    ) -> Result<Picked, Error> {
        let mut needed: Vec<Currency> = Vec::with_capacity(to.len());
        for currency in to {
            if *currency != from && !needed.contains(currency) {
                needed.push(*currency);
            }
        }
        if needed.is_empty() {
            return Ok(Picked::default());
        }
        let known: Vec<Quote> = store::rates_from(executor, from, &needed)
            .await?
            .iter()
            .map(StoredRate::to_quote)
            .collect();
        let age_max = time::Duration::seconds(
            i64::try_from(self.settings.rate_age_s_max).unwrap_or(i64::MAX),
        );
        Ok(pick(&known, from, &needed, now, age_max))
    }

    /// Writes the rates of the file named `file_name`, each only over an older rate of its pair
    /// (by as-of time), in one transaction with their history rows; returns how many were
    /// written.
    pub async fn merge_file(&self, file_name: &str, rates: &[NewRate]) -> Result<u64, Error> {
        let update_time = now();
        let source = format!("file:{file_name}");
        let stored: Vec<StoredRate> = rates
            .iter()
            .map(|rate| StoredRate {
                base: rate.base,
                quote: rate.quote,
                rate: rate.rate,
                source: source.clone(),
                as_of: rate.as_of,
                update_time,
                updater: None,
            })
            .collect();
        let mut tx = self.pool.begin().await?;
        let written = store::merge_newer(&mut tx, &stored).await?;
        tx.commit().await?;
        Ok(written)
    }
}
