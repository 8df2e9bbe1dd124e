//! The recovery job: finishes charge work left pending by a crash, a timeout or a cancelled
//! caller.

use std::time::Duration;

use time::OffsetDateTime;

use crate::auth::Rpc;
use crate::domain::charge::{ChargeId, ChargeState, RefundState, RefundView};
use crate::error::Error;
use crate::kernel::RequestContext;
use crate::storage::charges::{self as store};

use super::Charges;
use super::follow_up::FollowUp;

impl Charges {
    /// One pass of the recovery job: finishes work left pending by a crash, a timeout or a
    /// cancelled caller. Returns how many charges it looked at.
    pub async fn recover(&self) -> Result<usize, Error> {
        let before =
            OffsetDateTime::now_utc() - Duration::from_millis(self.settings.recovery_after_ms);
        let ids = store::stale_charges(
            self.vault.pool(),
            before,
            i64::from(self.settings.recovery_batch_max),
        )
        .await?;
        let ctx = RequestContext {
            caller: Err(tandem_tls::identity::IdentityError::NoCertificate),
            rpc: Rpc::RecoverCharges,
            correlation_id: uuid::Uuid::new_v4().to_string(),
            request_id: None,
        };
        for id in &ids {
            if let Err(error) = self.recover_one(&ctx, id).await {
                tracing::warn!(charge = %id, %error, "recovery of a charge failed");
            }
        }
        Ok(ids.len())
    }

    async fn recover_one(&self, ctx: &RequestContext, id: &ChargeId) -> Result<(), Error> {
        let charge = self.load(id).await?;
        if charge.state == ChargeState::Pending {
            self.resolve_pending(ctx, charge, Duration::ZERO).await?;
            return Ok(());
        }
        let mut pending: Vec<(String, Option<RefundView>)> = charge
            .refunds
            .iter()
            .filter(|r| r.state == RefundState::Pending)
            .map(|r| (r.request_id.clone(), Some(r.clone())))
            .collect();
        if let Some(request_id) = &charge.pending_request_id {
            pending.push((request_id.clone(), None));
        }
        for (request_id, refund) in pending {
            let Some(_guard) = self.locks.try_lock(&request_id) else {
                continue;
            };
            let stored = store::charge_request(self.vault.pool(), &request_id)
                .await?
                .ok_or(Error::Corrupt("pending operation without request"))?;
            let kind = FollowUp::from_rpc(&stored.rpc)
                .ok_or(Error::Corrupt("pending operation of unknown kind"))?;
            let charge = self.load(id).await?;
            self.send_follow_up(ctx, kind, &request_id, charge, refund, stored.amount_minor)
                .await?;
        }
        Ok(())
    }
}
