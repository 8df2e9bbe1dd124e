//! The shared kernel of the vault's capabilities: who is calling ([`RequestContext`]), the
//! vault handle ([`Vault`]: pool, key ring, writer), authorization and audited refusals, and
//! the one request-id rule of every request table (`RequestCheck`).
//!
//! Every mutating RPC is idempotent by its AIP-155 `request_id`: the tokens, charges and keys
//! each keep a request table, and each table's lookup is judged here, by one rule.

use std::sync::Arc;

use sqlx::{PgConnection, PgPool};
use tandem_tls::identity::{Caller, IdentityError};

use crate::auth::Rpc;
use crate::config::TokenSettings;
use crate::domain::Token;
use crate::error::Error;
use crate::keys::ring::KeyRing;
use crate::storage;
use crate::storage::charges::ChargeRequest;
use crate::storage::keys::KeyRequestRecord;
use crate::storage::tokens::StoredRequest;
use crate::writer::{Apply, AuditContext, Mutation, Writer};

/// Who is calling which RPC, for authorization and the audit row.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// The caller its certificate proves, or why it proves none (the vault's own jobs run
    /// without a certificate: [`IdentityError::NoCertificate`]).
    pub caller: Result<Caller, IdentityError>,
    /// The RPC.
    pub rpc: Rpc,
    /// The correlation id (`x-request-id`).
    pub correlation_id: String,
    /// The request's AIP-155 `request_id` when it is a valid one (audited with the call).
    pub request_id: Option<String>,
}

impl RequestContext {
    /// The context of one item of a batch call (`BatchAuthorize` and the like): the same
    /// caller and correlation id, with the item's own RPC and request id (when a valid one), so that the item is
    /// recorded, hashed and audited exactly as that RPC sent alone.
    pub fn item(&self, rpc: Rpc, request_id: &str) -> RequestContext {
        RequestContext {
            caller: self.caller.clone(),
            rpc,
            correlation_id: self.correlation_id.clone(),
            request_id: crate::domain::RequestId::parse(request_id)
                .ok()
                .map(|id| id.as_str().to_owned()),
        }
    }

    /// The audit fields of this call, with `reason` as the row's free text.
    pub(crate) fn audit(&self, reason: impl Into<String>) -> AuditContext {
        let (caller, role) = match &self.caller {
            Ok(caller) => (caller.to_string(), caller.role.to_string()),
            // A proven caller whose role the vault does not know: audited as who it is.
            Err(IdentityError::UnknownRole { identity, role }) => (identity.clone(), role.clone()),
            // The vault's own jobs run without a peer certificate.
            Err(_) if self.rpc == Rpc::RecoverCharges => {
                ("system/recovery".to_owned(), "system".to_owned())
            }
            Err(_) => ("unknown".to_owned(), "none".to_owned()),
        };
        AuditContext {
            caller,
            role,
            rpc: self.rpc.method(),
            reason: reason.into(),
            correlation_id: self.correlation_id.clone(),
            request_id: self.request_id.clone().unwrap_or_default(),
            resource: String::new(),
        }
    }
}

/// The vault handle: the pool, the key ring while unsealed, the writer and the token limits.
/// The capabilities ([`crate::tokens`], [`crate::charges`], [`crate::keys`]) act through it.
#[derive(Debug)]
pub struct Vault {
    pool: PgPool,
    /// The key ring while unsealed; `None` while sealed.
    keys: std::sync::RwLock<Option<Arc<KeyRing>>>,
    /// Counts seals, so that keys loaded across a seal are not installed after it.
    seal_generation: std::sync::atomic::AtomicU64,
    writer: Writer,
    settings: TokenSettings,
}

impl Vault {
    /// Assembles the vault from its parts; `keys` is `None` for a vault that starts sealed.
    pub fn new(
        pool: PgPool,
        keys: Option<KeyRing>,
        writer: Writer,
        settings: TokenSettings,
    ) -> Vault {
        Vault {
            pool,
            keys: std::sync::RwLock::new(keys.map(Arc::new)),
            seal_generation: std::sync::atomic::AtomicU64::new(0),
            writer,
            settings,
        }
    }

    /// The key ring, or `Sealed`.
    pub(crate) fn keys(&self) -> Result<Arc<KeyRing>, Error> {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or(Error::Sealed)
    }

    /// True while the vault holds no keys.
    pub fn is_sealed(&self) -> bool {
        self.keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .is_none()
    }

    /// The number of seals so far; pass it to [`Vault::install_keys_if`].
    pub(crate) fn seal_generation(&self) -> u64 {
        self.seal_generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Installs a key ring (unseals, or replaces the ring after a root-key rotation) unless
    /// the vault was sealed since `generation` was read: a seal always wins.
    pub(crate) fn install_keys_if(&self, ring: KeyRing, generation: u64) -> bool {
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if self.seal_generation() != generation {
            return false;
        }
        *keys = Some(Arc::new(ring));
        true
    }

    /// Drops the key ring: every key in it is zeroized once the last operation using it ends.
    pub(crate) fn seal(&self) {
        let mut keys = self
            .keys
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.seal_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        keys.take();
    }

    /// The writer, for the key administration jobs.
    pub(crate) fn writer(&self) -> &Writer {
        &self.writer
    }

    /// Commits `mutation` with its audit row (`reason` is the row's free text).
    pub(crate) async fn submit<M: Mutation>(
        &self,
        mutation: M,
        ctx: &RequestContext,
        reason: &str,
    ) -> Result<M::Output, Error> {
        self.writer.submit(mutation, ctx.audit(reason)).await
    }

    /// Writes only an audit row, for a read or a call that changed nothing.
    pub(crate) async fn audit(
        &self,
        ctx: &RequestContext,
        token: Option<&Token>,
        outcome: &'static str,
        reason: &str,
    ) -> Result<(), Error> {
        self.audit_on(ctx, token, "", outcome, reason).await
    }

    /// [`Vault::audit`], naming the resource acted on (a charge, `dek/3`).
    pub(crate) async fn audit_on(
        &self,
        ctx: &RequestContext,
        token: Option<&Token>,
        resource: &str,
        outcome: &'static str,
        reason: &str,
    ) -> Result<(), Error> {
        let mut context = ctx.audit(reason);
        context.resource = resource.to_owned();
        self.writer
            .audit(token.map(|t| t.as_str().to_owned()), outcome, context)
            .await
    }

    /// The token settings (limits the edge enforces).
    pub fn token_settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Checks the caller's role for the RPC; a refusal is audited before it is returned.
    pub async fn authorize(&self, ctx: &RequestContext) -> Result<(), Error> {
        let error = match &ctx.caller {
            Err(IdentityError::UnknownRole { role, .. }) => {
                Error::PermissionDenied { role: role.clone() }
            }
            Err(_) => Error::Unauthenticated,
            Ok(caller) if !ctx.rpc.allows(caller.role) => Error::PermissionDenied {
                role: caller.role.to_string(),
            },
            Ok(_) if ctx.rpc.needs_keys() && self.is_sealed() => Error::Sealed,
            Ok(_) => return Ok(()),
        };
        Err(self.refuse(ctx, None, error).await)
    }

    /// Audits a call refused before it reached an operation (bad input, wrong role) and
    /// returns the error. If even the audit row cannot be written, that error wins: a call is
    /// never answered without its audit row.
    pub async fn refuse(&self, ctx: &RequestContext, token: Option<&Token>, error: Error) -> Error {
        let reason = match &error {
            Error::InvalidArgument(violations) => {
                let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
                format!("invalid fields: {}", fields.join(", "))
            }
            _ => String::new(),
        };
        let token = token.map(|t| t.as_str().to_owned());
        match self
            .writer
            .audit(token, error.reason(), ctx.audit(reason))
            .await
        {
            Ok(()) => error,
            Err(audit_error) => audit_error,
        }
    }

    /// The pool, for health checks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// A request id's record in one of the request tables (tokens, charges, keys).
pub(crate) trait RequestRecord {
    /// The full or short method name that used the id, as the table stores it.
    fn rpc(&self) -> &str;
    /// The keyed hash of that request's content.
    fn request_hash(&self) -> &[u8; 32];
}

impl RequestRecord for StoredRequest {
    fn rpc(&self) -> &str {
        &self.rpc
    }

    fn request_hash(&self) -> &[u8; 32] {
        &self.request_hash
    }
}

impl RequestRecord for ChargeRequest {
    fn rpc(&self) -> &str {
        &self.rpc
    }

    fn request_hash(&self) -> &[u8; 32] {
        &self.request_hash
    }
}

impl RequestRecord for KeyRequestRecord {
    fn rpc(&self) -> &str {
        &self.rpc
    }

    fn request_hash(&self) -> &[u8; 32] {
        &self.request_hash
    }
}

/// What a request id's record says about a request.
#[derive(Debug)]
pub(crate) enum RequestCheck<R> {
    /// The id was never recorded: do the work and record it.
    New,
    /// The id was recorded for the same method with the same content: answer from the record.
    Replay(R),
    /// The id was recorded for another method or other content: `REQUEST_ID_REUSED`.
    Reused,
}

impl<R: RequestRecord> RequestCheck<R> {
    /// The one request-id rule: `stored` is the id's record, if any, and `rpc` and
    /// `request_hash` describe the request at hand.
    pub(crate) fn of(stored: Option<R>, rpc: &str, request_hash: &[u8; 32]) -> RequestCheck<R> {
        match stored {
            None => RequestCheck::New,
            Some(stored) if stored.rpc() == rpc && stored.request_hash() == request_hash => {
                RequestCheck::Replay(stored)
            }
            Some(_) => RequestCheck::Reused,
        }
    }

    /// The record to replay (`None` for a new request), or `RequestIdReused`.
    pub(crate) fn replay(self) -> Result<Option<R>, Error> {
        match self {
            RequestCheck::New => Ok(None),
            RequestCheck::Replay(stored) => Ok(Some(stored)),
            RequestCheck::Reused => Err(Error::RequestIdReused),
        }
    }
}

/// A job that looks up its request id first and records it last.
pub(crate) trait Recorded: Sync {
    type Output: Send;

    /// Replays a recorded request, or does the work and records it.
    fn apply_once<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, Self::Output>;

    /// Whether the job may write before it records its request id. A job that does not
    /// leaves nothing behind when the id turns out taken, so it needs no savepoint.
    fn writes_before_record(&self) -> bool {
        true
    }
}

/// Runs a [`Recorded`] job once per request id. If another vault writer recorded the same
/// request id between this job's lookup and its record (two copies of one request in flight
/// at once), this job's writes are undone and it runs again, now replaying the first copy's
/// result, without failing the rest of the batch. The writes are undone by a savepoint, taken
/// only for a job that [writes before its record](Recorded::writes_before_record).
pub(crate) async fn once_per_request<R: Recorded>(
    job: &R,
    conn: &mut PgConnection,
) -> Result<R::Output, Error> {
    if !job.writes_before_record() {
        return match job.apply_once(conn).await {
            Err(Error::RequestIdTaken) => job.apply_once(conn).await,
            result => result,
        };
    }
    storage::savepoint(conn).await?;
    match job.apply_once(conn).await {
        Err(Error::RequestIdTaken) => {
            storage::rollback_to_savepoint(conn).await?;
            job.apply_once(conn).await
        }
        Err(error) if error.aborts_transaction() => Err(error),
        result => {
            storage::release_savepoint(conn).await?;
            result
        }
    }
}

/// One page of a list and whether another follows.
#[derive(Debug)]
pub struct Page<T> {
    /// The items, in list order.
    pub items: Vec<T>,
    /// True when more items follow the last one.
    pub more: bool,
}

impl<T> Page<T> {
    /// Cuts a read of up to `size + 1` items to `size`, noting whether there were more.
    pub(crate) fn of(mut items: Vec<T>, size: i64) -> Page<T> {
        let more = items.len() as i64 > size;
        if more {
            items.truncate(size as usize);
        }
        Page { items, more }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request id's record as the check sees it: its method and its content's hash.
    #[derive(Debug, PartialEq)]
    struct Stored(&'static str, [u8; 32]);

    impl RequestRecord for Stored {
        fn rpc(&self) -> &str {
            self.0
        }

        fn request_hash(&self) -> &[u8; 32] {
            &self.1
        }
    }

    /// No record is new; the same method with the same content replays the record; another
    /// method or other content under the same id is a reuse, refused as `REQUEST_ID_REUSED`.
    #[test]
    fn request_ids() {
        let check = |stored: Option<Stored>, rpc, hash| RequestCheck::of(stored, rpc, &hash);
        assert!(matches!(
            check(None, "Tokenize", [1; 32]),
            RequestCheck::New
        ));
        assert!(matches!(
            check(Some(Stored("Tokenize", [1; 32])), "Tokenize", [1; 32]),
            RequestCheck::Replay(Stored("Tokenize", _))
        ));
        for (rpc, hash) in [("Tokenize", [2; 32]), ("UpdateCard", [1; 32])] {
            let reused = check(Some(Stored("Tokenize", [1; 32])), rpc, hash);
            assert!(matches!(reused, RequestCheck::Reused), "{rpc}");
            assert!(matches!(reused.replay(), Err(Error::RequestIdReused)));
        }
        assert_eq!(
            check(None, "Tokenize", [1; 32]).replay().ok(),
            Some(None::<Stored>)
        );
    }
}
