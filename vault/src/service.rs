//! The vault's operations over checked domain types: the layer between the gRPC edge and
//! storage. It owns the order of work: CPU work (fingerprinting, sealing) happens here, in the
//! caller's task; writes and their audit rows go through the writer and commit together.
//!
//! Every operation writes exactly one audit row, whatever its outcome.

use std::sync::Arc;

use sqlx::{PgConnection, PgPool};
use tandem_tls::identity::{Caller, IdentityError};
use time::OffsetDateTime;

use crate::auth::Rpc;
use crate::config::TokenSettings;
use crate::crypto::SealedCard;
use crate::domain::{
    Brand, CardSecret, CardSelector, CardView, Expiry, Fingerprint, HolderName, Pan, Reason,
    RequestId, Token, TokenState, TokenizeCommand, UpdateCardCommand,
};
use crate::error::Error;
use crate::keys::KeyRing;
use crate::storage::{self, CardFilter, CardInsert, CardWrite, StoredRequest};
use crate::writer::{Apply, AuditContext, Mutation, Writer};

/// How often `UpdateCard` re-reads and re-seals when the card changed under it.
const UPDATE_ATTEMPTS_MAX: u32 = 3;

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
    fn audit(&self, reason: impl Into<String>) -> AuditContext {
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

/// A page of cards and the cursor of the next page.
#[derive(Debug)]
pub struct CardPage {
    /// Cards, newest first.
    pub cards: Vec<CardView>,
    /// The id to continue below, if there are more.
    pub next_before_id: Option<i64>,
}

/// The vault's operations.
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
                let fields: Vec<&str> = violations.iter().map(|v| v.field).collect();
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

    /// Stores a card and returns its token (or, with `reuse_existing`, the active token of the
    /// same PAN). The boolean is true when a token was created.
    pub async fn tokenize(
        &self,
        ctx: &RequestContext,
        command: TokenizeCommand,
    ) -> Result<(CardView, bool), Error> {
        let keys = self.keys()?;
        let now = now_micros();
        let token = Token::generate();
        let pan = &command.secret.pan;
        let fingerprint = keys.fingerprint(pan);
        let ttl_seconds = command.ttl.map_or(0, |ttl| ttl.whole_seconds());
        let request_hash = keys.request_hash(&[
            ctx.rpc.method().as_bytes(),
            pan.expose_digits().as_bytes(),
            &[command.expiry.month()],
            &command.expiry.year().to_be_bytes(),
            command.secret.holder_name.expose().as_bytes(),
            &[u8::from(command.reuse_existing)],
            &ttl_seconds.to_be_bytes(),
        ]);
        let mut sealed = match keys.seal(&self.pool, &token, &command.secret).await {
            Ok(sealed) => sealed,
            Err(error) => return Err(self.refuse(ctx, None, error).await),
        };
        // A bounded retry: a card sealed under a data key retired meanwhile (another vault
        // process rotated and retired it) is sealed again under the current key.
        for attempt in 1..=UPDATE_ATTEMPTS_MAX {
            let mutation = TokenizeMutation {
                request_id: command.request_id.clone(),
                request_hash,
                rpc: ctx.rpc.method(),
                card: NewCard {
                    token: token.clone(),
                    fingerprint,
                    brand: pan.brand(),
                    bin: pan.bin(),
                    last4: pan.last4(),
                    expiry: command.expiry,
                    sealed,
                    now,
                    expires_at: command.ttl.map(|ttl| now + ttl),
                },
                reuse_existing: command.reuse_existing,
            };
            match self.writer.submit(mutation, ctx.audit("")).await {
                Err(Error::KeyRetired) if attempt < UPDATE_ATTEMPTS_MAX => {
                    keys.refresh_keys(&self.pool).await?;
                    sealed = keys.seal(&self.pool, &token, &command.secret).await?;
                }
                result => return result,
            }
        }
        Err(Error::KeyRetired)
    }

    /// Reads a token's metadata.
    pub async fn get_token(&self, ctx: &RequestContext, token: &Token) -> Result<CardView, Error> {
        let card = match storage::card(&self.pool, token).await {
            Ok(Some(card)) => card,
            Ok(None) => return Err(self.refuse(ctx, Some(token), Error::TokenNotFound).await),
            Err(error) => return Err(self.refuse(ctx, Some(token), error).await),
        };
        self.writer
            .audit(Some(token.as_str().to_owned()), "OK", ctx.audit(""))
            .await?;
        Ok(card.view.as_of(now_micros()))
    }

    /// Lists cards newest first, below `before_id`.
    pub async fn list_tokens(
        &self,
        ctx: &RequestContext,
        filter: &CardFilter,
        before_id: Option<i64>,
        page_size: u32,
    ) -> Result<CardPage, Error> {
        // Read one more than asked to learn whether another page exists.
        let limit = i64::from(page_size) + 1;
        let mut cards = match storage::list_cards(&self.pool, filter, before_id, limit).await {
            Ok(cards) => cards,
            Err(error) => return Err(self.refuse(ctx, None, error).await),
        };
        let next_before_id = if cards.len() > page_size as usize {
            cards.truncate(page_size as usize);
            cards.last().map(|card| card.id)
        } else {
            None
        };
        self.writer
            .audit(None, "OK", ctx.audit(format!("{} cards", cards.len())))
            .await?;
        Ok(CardPage {
            cards: cards
                .into_iter()
                .map(|card| card.view.as_of(now_micros()))
                .collect(),
            next_before_id,
        })
    }

    /// Replaces the card behind a token, keeping the token.
    pub async fn update_card(
        &self,
        ctx: &RequestContext,
        command: UpdateCardCommand,
    ) -> Result<CardView, Error> {
        let request_hash = self.keys()?.request_hash(&[
            ctx.rpc.method().as_bytes(),
            command.token.as_str().as_bytes(),
            command
                .pan
                .as_ref()
                .map_or(&b""[..], |p| p.expose_digits().as_bytes()),
            &[command.expiry.month()],
            &command.expiry.year().to_be_bytes(),
            command
                .holder_name
                .as_ref()
                .map_or(&b"\xff"[..], |n| n.expose().as_bytes()),
        ]);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mutation = match self.prepare_update(&command, request_hash).await {
                Ok(mutation) => mutation,
                Err(error) => return Err(self.refuse(ctx, Some(&command.token), error).await),
            };
            match self.writer.submit(mutation, ctx.audit("")).await {
                Err(Error::ConcurrentUpdate) if attempt < UPDATE_ATTEMPTS_MAX => continue,
                Err(Error::KeyRetired) if attempt < UPDATE_ATTEMPTS_MAX => {
                    self.keys()?.refresh_keys(&self.pool).await?;
                }
                result => return result,
            }
        }
    }

    /// Reads the current card, merges the update into its secret and seals the result.
    async fn prepare_update(
        &self,
        command: &UpdateCardCommand,
        request_hash: [u8; 32],
    ) -> Result<UpdateMutation, Error> {
        let keys = self.keys()?;
        let now = now_micros();
        let stored = storage::card(&self.pool, &command.token).await?;
        let (expected_nonce, current) = match stored {
            // Missing, revoked or expired: let the writer decide (a replay may still succeed).
            Some(card) if card.view.state_at(now) == TokenState::Active => {
                let sealed = card
                    .sealed
                    .ok_or(Error::Corrupt("active card without data"))?;
                let current = keys.open_fresh(&self.pool, &command.token, &sealed).await?;
                (Some(sealed.nonce), Some(current))
            }
            _ => (None, None),
        };
        let update = match current {
            Some(current) => {
                let secret = merge_secret(current, command);
                let sealed = keys.seal(&self.pool, &command.token, &secret).await?;
                Some(NewCard {
                    token: command.token.clone(),
                    fingerprint: keys.fingerprint(&secret.pan),
                    brand: secret.pan.brand(),
                    bin: secret.pan.bin(),
                    last4: secret.pan.last4(),
                    expiry: command.expiry,
                    sealed,
                    now,
                    expires_at: None,
                })
            }
            None => None,
        };
        Ok(UpdateMutation {
            request_id: command.request_id.clone(),
            request_hash,
            rpc: Rpc::UpdateCard.method(),
            token: command.token.clone(),
            expected_nonce,
            update,
        })
    }

    /// Revokes one token.
    pub async fn revoke_token(
        &self,
        ctx: &RequestContext,
        request_id: RequestId,
        token: Token,
        reason: Reason,
    ) -> Result<CardView, Error> {
        let request_hash = self.keys()?.request_hash(&[
            ctx.rpc.method().as_bytes(),
            token.as_str().as_bytes(),
            reason.as_str().as_bytes(),
        ]);
        let mutation = RevokeMutation {
            request_id,
            request_hash,
            rpc: ctx.rpc.method(),
            token,
            now: now_micros(),
            reason: reason.as_str().to_owned(),
        };
        self.writer
            .submit(mutation, ctx.audit(reason.as_str()))
            .await
    }

    /// Revokes every active token of one card.
    pub async fn revoke_by_fingerprint(
        &self,
        ctx: &RequestContext,
        request_id: RequestId,
        selector: CardSelector,
        reason: Reason,
    ) -> Result<Vec<Token>, Error> {
        let keys = self.keys()?;
        let fingerprint = match selector {
            CardSelector::Fingerprint(fingerprint) => fingerprint,
            CardSelector::Pan(pan) => keys.fingerprint(&pan),
        };
        let request_hash = keys.request_hash(&[
            ctx.rpc.method().as_bytes(),
            fingerprint.as_bytes(),
            reason.as_str().as_bytes(),
        ]);
        let mutation = RevokeByFingerprintMutation {
            request_id,
            request_hash,
            rpc: ctx.rpc.method(),
            fingerprint,
            now: now_micros(),
            reason: reason.as_str().to_owned(),
        };
        self.writer
            .submit(mutation, ctx.audit(reason.as_str()))
            .await
    }

    /// Purges the card data of tokens past their time to live, in bounded batches; returns how
    /// many were purged.
    pub async fn purge_expired(&self) -> Result<usize, Error> {
        /// Batches per call, so one call's work is bounded even under a backlog.
        const BATCHES_MAX: usize = 100;
        let limit = i64::from(self.settings.purge_batch_max);
        let mut purged = 0;
        // Every batch writes an audit row: look first, so an idle vault writes none.
        if !storage::any_expired(&self.pool, now_micros()).await? {
            return Ok(0);
        }
        for _ in 0..BATCHES_MAX {
            let context = AuditContext {
                caller: "system/purge".into(),
                role: "system".into(),
                rpc: "tandem.vault.internal/PurgeExpiredTokens",
                reason: String::new(),
                correlation_id: uuid::Uuid::new_v4().to_string(),
                request_id: String::new(),
                resource: String::new(),
            };
            let tokens = self
                .writer
                .submit(
                    PurgeMutation {
                        now: now_micros(),
                        limit,
                    },
                    context,
                )
                .await?;
            purged += tokens.len();
            if (tokens.len() as i64) < limit {
                break;
            }
        }
        Ok(purged)
    }

    /// The pool, for health checks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The current time at the precision Postgres stores (microseconds), so that a value returned
/// right after a write equals the value read back later.
pub(crate) fn now_micros() -> OffsetDateTime {
    crate::audit::truncate_to_micros(OffsetDateTime::now_utc())
}

/// Builds the new secret of an update from the current one and the command.
fn merge_secret(current: CardSecret, command: &UpdateCardCommand) -> CardSecret {
    CardSecret {
        pan: command.pan.as_ref().map_or(current.pan, Pan::duplicate),
        holder_name: command
            .holder_name
            .as_ref()
            .map_or(current.holder_name, HolderName::duplicate),
    }
}

/// A card row about to be written.
#[derive(Debug)]
struct NewCard {
    token: Token,
    fingerprint: Fingerprint,
    brand: Brand,
    bin: String,
    last4: String,
    expiry: Expiry,
    sealed: SealedCard,
    now: OffsetDateTime,
    expires_at: Option<OffsetDateTime>,
}

impl NewCard {
    /// The card as clients see it once written.
    fn view(&self) -> CardView {
        CardView {
            token: self.token.clone(),
            brand: self.brand,
            bin: self.bin.clone(),
            last4: self.last4.clone(),
            expiry: self.expiry,
            fingerprint: self.fingerprint,
            state: TokenState::Active,
            created_at: self.now,
            updated_at: self.now,
            expires_at: self.expires_at,
        }
    }

    fn write(&self) -> CardWrite<'_> {
        CardWrite {
            token: &self.token,
            fingerprint: self.fingerprint,
            brand: self.brand,
            bin: &self.bin,
            last4: &self.last4,
            expiry: self.expiry,
            sealed: &self.sealed,
            now: self.now,
        }
    }
}

/// Looks up `request_id`: `Ok(Some)` to replay a stored result, `Ok(None)` for a new request,
/// `RequestIdReused` if the id was used for something else.
async fn replay(
    conn: &mut PgConnection,
    request_id: &RequestId,
    rpc: &str,
    request_hash: &[u8; 32],
) -> Result<Option<StoredRequest>, Error> {
    match storage::request(conn, request_id.as_str()).await? {
        None => Ok(None),
        Some(stored) if stored.rpc == rpc && stored.request_hash == *request_hash => {
            Ok(Some(stored))
        }
        Some(_) => Err(Error::RequestIdReused),
    }
}

async fn view(conn: &mut PgConnection, token: &Token) -> Result<CardView, Error> {
    Ok(storage::card(conn, token)
        .await?
        .ok_or(Error::TokenNotFound)?
        .view
        .as_of(now_micros()))
}

/// Records the result under the request id, or fails with `RequestIdTaken` if a concurrent
/// transaction recorded it first (see [`once_per_request`]).
async fn record(
    conn: &mut PgConnection,
    request_id: &RequestId,
    rpc: &str,
    request_hash: [u8; 32],
    result_tokens: Vec<Token>,
    created: bool,
) -> Result<(), Error> {
    let stored = StoredRequest {
        rpc: rpc.to_owned(),
        request_hash,
        result_tokens,
        created,
    };
    if storage::insert_request(conn, request_id.as_str(), &stored).await? {
        Ok(())
    } else {
        Err(Error::RequestIdTaken)
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

#[derive(Debug)]
struct TokenizeMutation {
    request_id: RequestId,
    request_hash: [u8; 32],
    rpc: &'static str,
    card: NewCard,
    reuse_existing: bool,
}

impl TokenizeMutation {
    /// The card with its request record, as one row of a batch insert.
    fn card_row(&self) -> CardInsert<'_> {
        CardInsert {
            card: self.card.write(),
            expires_at: self.card.expires_at,
            request_id: self.request_id.as_str(),
            rpc: self.rpc,
            request_hash: &self.request_hash,
        }
    }

    /// Inserts the card with its request record; false if the request id exists.
    async fn insert(&self, conn: &mut PgConnection) -> Result<bool, Error> {
        let inserted = storage::insert_cards_for_new_requests(conn, &[self.card_row()]).await?;
        self.check_inserted(conn, !inserted.is_empty()).await
    }

    /// Passes on whether the card was inserted, once a card not inserted is known to have been
    /// refused for its request id: a card sealed under a data key retired meanwhile is
    /// `KeyRetired` (it must be sealed again under the current key).
    async fn check_inserted(&self, conn: &mut PgConnection, inserted: bool) -> Result<bool, Error> {
        if !inserted
            && !storage::lock_data_key_for_write(conn, self.card.sealed.dek_version).await?
        {
            return Err(Error::KeyRetired);
        }
        Ok(inserted)
    }

    /// Continues a tokenization without dedupe after its card insert.
    async fn after_insert(
        &self,
        conn: &mut PgConnection,
        inserted: bool,
    ) -> Result<(CardView, bool), Error> {
        if self.check_inserted(conn, inserted).await? {
            return Ok((self.card.view(), true));
        }
        // The request id exists: replay it (or refuse a reuse).
        self.apply_once(conn).await
    }
}

impl Mutation for TokenizeMutation {
    type Output = (CardView, bool);

    // Only a `reuse_existing` tokenization comes here: the others give their card to the
    // batch's one insert and go on in `apply_inserted`.
    fn apply<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, Self::Output> {
        Box::pin(once_per_request(self, conn))
    }

    // The common case, a new request without dedupe, records the request and inserts the card
    // in the batch's one insert, and only if the id was new.
    fn card_insert(&self) -> Option<CardInsert<'_>> {
        (!self.reuse_existing).then(|| self.card_row())
    }

    fn apply_inserted<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        inserted: bool,
    ) -> Apply<'a, Self::Output> {
        Box::pin(self.after_insert(conn, inserted))
    }

    fn audit_token(&self, output: &Result<Self::Output, Error>) -> Option<String> {
        match output {
            Ok((view, _)) => Some(view.token.as_str().to_owned()),
            Err(_) => None,
        }
    }
}

impl Recorded for TokenizeMutation {
    type Output = (CardView, bool);

    fn apply_once<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, Self::Output> {
        Box::pin(async move {
            if let Some(stored) =
                replay(conn, &self.request_id, self.rpc, &self.request_hash).await?
            {
                let token = stored
                    .result_tokens
                    .first()
                    .ok_or(Error::Corrupt("tokenize request without token"))?;
                return Ok((view(conn, token).await?, stored.created));
            }
            let card = &self.card;
            if self.reuse_existing {
                // Serialize with concurrent reuse_existing requests for the same card, so that
                // they find each other's token instead of each issuing one.
                storage::lock_fingerprint(conn, &card.fingerprint).await?;
            }
            if self.reuse_existing
                && let Some(existing) =
                    storage::active_card_by_fingerprint(conn, &card.fingerprint, card.now).await?
            {
                let token = existing.view.token.clone();
                record(
                    conn,
                    &self.request_id,
                    self.rpc,
                    self.request_hash,
                    vec![token],
                    false,
                )
                .await?;
                return Ok((existing.view, false));
            }
            if self.insert(conn).await? {
                Ok((card.view(), true))
            } else {
                Err(Error::RequestIdTaken)
            }
        })
    }
}

#[derive(Debug)]
struct UpdateMutation {
    request_id: RequestId,
    request_hash: [u8; 32],
    rpc: &'static str,
    token: Token,
    /// The nonce of the ciphertext the update was built from; if the row changed since, the
    /// update is rebuilt.
    expected_nonce: Option<[u8; 12]>,
    /// The new card; `None` if the token was not active when read.
    update: Option<NewCard>,
}

impl Mutation for UpdateMutation {
    type Output = CardView;

    fn apply<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, CardView> {
        Box::pin(once_per_request(self, conn))
    }

    fn audit_token(&self, _output: &Result<CardView, Error>) -> Option<String> {
        Some(self.token.as_str().to_owned())
    }
}

impl Recorded for UpdateMutation {
    type Output = CardView;

    fn apply_once<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, CardView> {
        Box::pin(async move {
            if replay(conn, &self.request_id, self.rpc, &self.request_hash)
                .await?
                .is_some()
            {
                return view(conn, &self.token).await;
            }
            let current = storage::card_for_update(conn, &self.token)
                .await?
                .ok_or(Error::TokenNotFound)?;
            match current.view.state_at(now_micros()) {
                TokenState::Revoked => return Err(Error::TokenRevoked),
                TokenState::Expired => return Err(Error::TokenExpired),
                TokenState::Active => {}
            }
            let (Some(update), Some(expected)) = (&self.update, self.expected_nonce) else {
                return Err(Error::ConcurrentUpdate);
            };
            if current.sealed.as_ref().map(|s| s.nonce) != Some(expected) {
                return Err(Error::ConcurrentUpdate);
            }
            if !storage::lock_data_key_for_write(conn, update.sealed.dek_version).await? {
                return Err(Error::KeyRetired);
            }
            storage::update_card(conn, &update.write()).await?;
            record(
                conn,
                &self.request_id,
                self.rpc,
                self.request_hash,
                vec![self.token.clone()],
                false,
            )
            .await?;
            view(conn, &self.token).await
        })
    }
}

#[derive(Debug)]
struct RevokeMutation {
    request_id: RequestId,
    request_hash: [u8; 32],
    rpc: &'static str,
    token: Token,
    now: OffsetDateTime,
    reason: String,
}

impl Mutation for RevokeMutation {
    type Output = CardView;

    fn apply<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, CardView> {
        Box::pin(once_per_request(self, conn))
    }

    fn audit_token(&self, _output: &Result<CardView, Error>) -> Option<String> {
        Some(self.token.as_str().to_owned())
    }
}

impl Recorded for RevokeMutation {
    type Output = CardView;

    fn apply_once<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, CardView> {
        Box::pin(async move {
            if replay(conn, &self.request_id, self.rpc, &self.request_hash)
                .await?
                .is_some()
            {
                return view(conn, &self.token).await;
            }
            let current = storage::card_for_update(conn, &self.token)
                .await?
                .ok_or(Error::TokenNotFound)?;
            // Revoking a revoked or expired token changes nothing: it is unusable either way.
            if current.view.state_at(self.now) == TokenState::Active {
                storage::revoke_card(conn, &self.token, &self.reason, self.now).await?;
            }
            record(
                conn,
                &self.request_id,
                self.rpc,
                self.request_hash,
                vec![self.token.clone()],
                false,
            )
            .await?;
            view(conn, &self.token).await
        })
    }
}

#[derive(Debug)]
struct RevokeByFingerprintMutation {
    request_id: RequestId,
    request_hash: [u8; 32],
    rpc: &'static str,
    fingerprint: Fingerprint,
    now: OffsetDateTime,
    reason: String,
}

impl Mutation for RevokeByFingerprintMutation {
    type Output = Vec<Token>;

    fn apply<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, Vec<Token>> {
        Box::pin(once_per_request(self, conn))
    }

    fn audit_token(&self, output: &Result<Vec<Token>, Error>) -> Option<String> {
        // One row per call. A single revoked token is named here; the full list of a
        // multi-token revocation is kept in `token_requests.result_tokens`.
        match output {
            Ok(tokens) if tokens.len() == 1 => Some(tokens[0].as_str().to_owned()),
            _ => None,
        }
    }
}

impl Recorded for RevokeByFingerprintMutation {
    type Output = Vec<Token>;

    fn apply_once<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, Vec<Token>> {
        Box::pin(async move {
            if let Some(stored) =
                replay(conn, &self.request_id, self.rpc, &self.request_hash).await?
            {
                return Ok(stored.result_tokens);
            }
            let revoked =
                storage::revoke_by_fingerprint(conn, &self.fingerprint, &self.reason, self.now)
                    .await?;
            record(
                conn,
                &self.request_id,
                self.rpc,
                self.request_hash,
                revoked.clone(),
                false,
            )
            .await?;
            Ok(revoked)
        })
    }
}

#[derive(Debug)]
struct PurgeMutation {
    now: OffsetDateTime,
    limit: i64,
}

impl Mutation for PurgeMutation {
    type Output = Vec<Token>;

    fn apply<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, Vec<Token>> {
        Box::pin(async move { storage::purge_expired(conn, self.now, self.limit).await })
    }

    fn audit_token(&self, _output: &Result<Vec<Token>, Error>) -> Option<String> {
        None
    }
}
