//! Charges: `ChargeService`'s operations over checked commands (settlement files included), and
//! the sandbox acquirer's administration ([`sandbox`]).
//!
//! Every processor call follows the same recipe:
//!
//! 1. **Intent.** The request and its effect-to-be (a pending charge, a capture or void marked
//!    in flight, a pending refund) commit through the writer with an audit row, *before* the
//!    processor is called. A request id seen before is replayed from here.
//! 2. **Call.** The connector is called with an idempotency key derived from the request id,
//!    under a timeout and a circuit breaker, in a task of its own so that a cancelled caller
//!    cannot interrupt it half way.
//! 3. **Result.** The processor's answer commits with its audit row.
//!
//! A crash or timeout between 1 and 3 leaves the intent pending. It is finished by a replay of
//! the same request id (which sends the call again; the idempotency key makes that safe), by
//! `GetCharge` (which asks the processor with `inquire`), or by the recovery job, which does
//! both for work left pending longer than `charges.recovery_after_ms`.
//!
//! Copies of one request id in this process serialize on a per-id lock ([`RequestLocks`]), so
//! that 50 identical requests make one processor call and 49 replays.
//!
//! `authorize` holds authorizing and reading a charge (with the resolution of a pending
//! authorization), `follow_up` capturing, voiding and refunding, `recovery` the recovery job,
//! `settlement` the processor's settlement files; this module holds what they share.

mod authorize;
mod follow_up;
pub mod locks;
mod recovery;
pub mod sandbox;
mod settlement;

use std::sync::Arc;

use sqlx::PgConnection;
use tracing::Instrument as _;

use crate::config::{ChargeSettings, ConnectorSettings};
use crate::connector::Guarded;
use crate::connector::sandbox::Sandbox;
use crate::domain::charge::{ChargeId, ChargeView};
use crate::error::Error;
use crate::kernel::{RequestContext, Vault};
use crate::storage::charges as store;

use locks::RequestLocks;

/// The charging side of the vault.
#[derive(Debug)]
pub struct Charges {
    vault: Arc<Vault>,
    connector: Guarded,
    sandbox: Sandbox,
    settings: ChargeSettings,
    statement_descriptor_default: String,
    locks: RequestLocks,
}

impl Charges {
    /// Charging over `vault`, through `connector`.
    pub fn new(
        vault: Arc<Vault>,
        connector: Guarded,
        sandbox: Sandbox,
        settings: ChargeSettings,
        connector_settings: &ConnectorSettings,
    ) -> Charges {
        Charges {
            vault,
            connector,
            sandbox,
            settings,
            statement_descriptor_default: connector_settings.statement_descriptor_default.clone(),
            locks: RequestLocks::default(),
        }
    }

    /// The vault (authorization, audit, keys).
    pub fn vault(&self) -> &Arc<Vault> {
        &self.vault
    }

    /// The guarded connector, for health.
    pub fn connector(&self) -> &Guarded {
        &self.connector
    }

    /// The sandbox acquirer.
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// The charging limits.
    pub fn settings(&self) -> &ChargeSettings {
        &self.settings
    }

    /// Request ids with a lock entry (bounded by requests in flight).
    pub fn locked_requests(&self) -> usize {
        self.locks.len()
    }

    /// Runs `work` in a task of its own, so that a caller who goes away does not cut a
    /// processor call in half; the work always runs to its end, in the caller's span.
    async fn detached<T: Send + 'static>(
        self: &Arc<Self>,
        work: impl Future<Output = Result<T, Error>> + Send + 'static,
    ) -> Result<T, Error> {
        tokio::spawn(work.in_current_span())
            .await
            .map_err(|error| {
                tracing::error!(%error, "charge task failed");
                Error::Corrupt("charge task failed")
            })?
    }

    fn request_hash(&self, ctx: &RequestContext, parts: &[&[u8]]) -> Result<[u8; 32], Error> {
        let mut all: Vec<&[u8]> = Vec::with_capacity(parts.len() + 1);
        all.push(ctx.rpc.method().as_bytes());
        all.extend_from_slice(parts);
        Ok(self.vault.keys()?.request_hash(&all))
    }

    async fn load(&self, id: &ChargeId) -> Result<ChargeView, Error> {
        let mut conn = self.vault.pool().acquire().await?;
        store::charge(&mut conn, id, false)
            .await?
            .ok_or(Error::ChargeNotFound)
    }
}

async fn reload(conn: &mut PgConnection, id: &ChargeId) -> Result<ChargeView, Error> {
    store::charge(conn, id, false)
        .await?
        .ok_or(Error::ChargeNotFound)
}

/// The charge a settling update returned, or (when it changed nothing) the charge as it is.
async fn settled_or_reload(
    conn: &mut PgConnection,
    settled: Option<ChargeView>,
    id: &ChargeId,
) -> Result<ChargeView, Error> {
    match settled {
        Some(charge) => Ok(charge),
        None => reload(conn, id).await,
    }
}
