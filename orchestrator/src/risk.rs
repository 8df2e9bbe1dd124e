//! Risk policies (`RiskService`): each billing account's rules, set by the treasury and read by
//! the treasury, reviewers and readers, and the pruning of the features' old buckets. Payments
//! are assessed in [`crate::payments`] (the policy and features read in the payment's
//! transaction), reviewed there too (`ReviewPayment`); the pure rules are [`crate::domain::risk`],
//! the SQL [`crate::storage::risk`].

use std::time::Duration;

use sqlx::PgPool;
use tandem_runtime::time::now_micros as now;

use crate::commands::RiskPolicyChange;
use crate::config::RiskSettings;
use crate::domain::actor::Actor;
use crate::domain::risk::StoredPolicy;
use crate::error::Error;
use crate::grpc::convert;
use crate::storage::{self, risk as store};

/// The risk policy operations.
pub struct Risk {
    pool: PgPool,
    settings: RiskSettings,
    request_id_wait_ms: u64,
}

impl Risk {
    /// Policies in `pool`.
    pub fn new(pool: PgPool, settings: RiskSettings, request_id_wait_ms: u64) -> Self {
        Self {
            pool,
            settings,
            request_id_wait_ms,
        }
    }

    /// `GetRiskPolicy`: the account's policy, or the default.
    pub async fn get(&self, billing_account_id: &str) -> Result<StoredPolicy, Error> {
        store::policy(&self.pool, billing_account_id).await
    }

    /// `SetRiskPolicy`: the stored response. The policy replaces the account's (only the
    /// version named, when one is).
    pub async fn set(&self, change: RiskPolicyChange, actor: Actor) -> Result<Vec<u8>, Error> {
        let method = "SetRiskPolicy";
        let mut tx = self.pool.begin().await?;
        if let Some(earlier) = storage::claim_request_id(
            &mut tx,
            &change.request_id,
            method,
            &change.request_hash,
            &change.billing_account_id,
            self.request_id_wait_ms,
        )
        .await?
        {
            tx.rollback().await?;
            return earlier.replay(method, &change.request_hash);
        }
        let stored = store::set_policy(
            &mut tx,
            &change.billing_account_id,
            &change.policy,
            change.expected_version,
            &actor,
            now(),
        )
        .await?
        .ok_or(Error::RiskPolicyChanged)?;
        let response = convert::risk::set_response(&change.billing_account_id, &stored);
        storage::store_response(&mut tx, &change.request_id, &response).await?;
        tx.commit().await?;
        tracing::info!(
            billing_account_id = %change.billing_account_id,
            version = stored.version,
            rules = stored.policy.rules.len(),
            updater = %actor,
            "risk policy set"
        );
        Ok(response)
    }

    /// Deletes the features' buckets past their windows and forgotten cards every
    /// `risk.prune_interval_ms`, in batches, until `stop`.
    pub async fn prune_loop(
        self: std::sync::Arc<Self>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        const BATCH: i64 = 10_000;
        let mut ticker =
            tokio::time::interval(Duration::from_millis(self.settings.prune_interval_ms));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.wait_for(|stopped| *stopped) => return,
            }
            loop {
                match store::prune(&self.pool, now(), BATCH).await {
                    Ok(deleted) if deleted >= BATCH as u64 => continue,
                    Ok(_) => break,
                    Err(error) => {
                        tracing::warn!(%error, "pruning risk features failed");
                        break;
                    }
                }
            }
        }
    }
}
