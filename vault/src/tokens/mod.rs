//! Tokens: the `TokenService` operations over checked domain types (tokenize, read, list,
//! update, revoke, purge). CPU work (fingerprinting, sealing) happens here, in the caller's
//! task; writes and their audit rows go through the writer and commit together.
//!
//! Every operation writes exactly one audit row, whatever its outcome.

use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::auth::Rpc;
use crate::crypto::SealedCard;
use crate::domain::{
    Brand, CardSecret, CardSelector, CardView, Expiry, Fingerprint, HolderName, Pan, Reason,
    RequestId, Token, TokenState, TokenizeCommand, UpdateCardCommand,
};
use crate::error::Error;
use crate::kernel::{Recorded, RequestCheck, RequestContext, Vault, now_micros, once_per_request};
use crate::storage::keys::lock_data_key_for_write;
use crate::storage::tokens::{self as store, CardFilter, CardInsert, CardWrite, StoredRequest};
use crate::writer::{Apply, AuditContext, CardMutation, Mutation};

/// How often `UpdateCard` re-reads and re-seals when the card changed under it.
const UPDATE_ATTEMPTS_MAX: u32 = 3;

/// A page of cards and the cursor of the next page.
#[derive(Debug)]
pub struct CardPage {
    /// Cards, newest first.
    pub cards: Vec<CardView>,
    /// The id to continue below, if there are more.
    pub next_before_id: Option<i64>,
}

/// The token operations, on the vault handle.
impl Vault {
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
        let mut sealed = match keys.seal(self.pool(), &token, &command.secret).await {
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
            // A new request without dedupe joins its batch's one card insert; one that reuses
            // an existing card looks for it first.
            let submitted = if command.reuse_existing {
                self.writer().submit(mutation, ctx.audit("")).await
            } else {
                self.writer().submit_card(mutation, ctx.audit("")).await
            };
            match submitted {
                Err(Error::KeyRetired) if attempt < UPDATE_ATTEMPTS_MAX => {
                    keys.refresh_keys(self.pool()).await?;
                    sealed = keys.seal(self.pool(), &token, &command.secret).await?;
                }
                result => return result,
            }
        }
        Err(Error::KeyRetired)
    }

    /// Reads a token's metadata.
    pub async fn get_token(&self, ctx: &RequestContext, token: &Token) -> Result<CardView, Error> {
        let card = match store::card(self.pool(), token).await {
            Ok(Some(card)) => card,
            Ok(None) => return Err(self.refuse(ctx, Some(token), Error::TokenNotFound).await),
            Err(error) => return Err(self.refuse(ctx, Some(token), error).await),
        };
        self.writer()
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
        let mut cards = match store::list_cards(self.pool(), filter, before_id, limit).await {
            Ok(cards) => cards,
            Err(error) => return Err(self.refuse(ctx, None, error).await),
        };
        let next_before_id = if cards.len() > page_size as usize {
            cards.truncate(page_size as usize);
            cards.last().map(|card| card.id)
        } else {
            None
        };
        self.writer()
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
            match self.writer().submit(mutation, ctx.audit("")).await {
                Err(Error::ConcurrentUpdate) if attempt < UPDATE_ATTEMPTS_MAX => continue,
                Err(Error::KeyRetired) if attempt < UPDATE_ATTEMPTS_MAX => {
                    self.keys()?.refresh_keys(self.pool()).await?;
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
        let stored = store::card(self.pool(), &command.token).await?;
        let (expected_nonce, current) = match stored {
            // Missing, revoked or expired: let the writer decide (a replay may still succeed).
            Some(card) if card.view.state_at(now) == TokenState::Active => {
                let sealed = card
                    .sealed
                    .ok_or(Error::Corrupt("active card without data"))?;
                let current = keys
                    .open_fresh(self.pool(), &command.token, &sealed)
                    .await?;
                (Some(sealed.nonce), Some(current))
            }
            _ => (None, None),
        };
        let update = match current {
            Some(current) => {
                let secret = merge_secret(current, command);
                let sealed = keys.seal(self.pool(), &command.token, &secret).await?;
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
        self.writer()
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
        self.writer()
            .submit(mutation, ctx.audit(reason.as_str()))
            .await
    }

    /// Purges the card data of tokens past their time to live, in bounded batches; returns how
    /// many were purged.
    pub async fn purge_expired(&self) -> Result<usize, Error> {
        /// Batches per call, so one call's work is bounded even under a backlog.
        const BATCHES_MAX: usize = 100;
        let limit = i64::from(self.token_settings().purge_batch_max);
        let mut purged = 0;
        // Every batch writes an audit row: look first, so an idle vault writes none.
        if !store::any_expired(self.pool(), now_micros()).await? {
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
                .writer()
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

/// Looks up `request_id` in the token request table: `Ok(Some)` to replay a stored result,
/// `Ok(None)` for a new request, `RequestIdReused` if the id was used for something else.
async fn replay(
    conn: &mut PgConnection,
    request_id: &RequestId,
    rpc: &str,
    request_hash: &[u8; 32],
) -> Result<Option<StoredRequest>, Error> {
    let stored = store::request(conn, request_id.as_str()).await?;
    RequestCheck::of(stored, rpc, request_hash).replay()
}

async fn view(conn: &mut PgConnection, token: &Token) -> Result<CardView, Error> {
    Ok(store::card(conn, token)
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
    if store::insert_request(conn, request_id.as_str(), &stored).await? {
        Ok(())
    } else {
        Err(Error::RequestIdTaken)
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
        let inserted = store::insert_cards_for_new_requests(conn, &[self.card_row()]).await?;
        self.check_inserted(conn, !inserted.is_empty()).await
    }

    /// Passes on whether the card was inserted, once a card not inserted is known to have been
    /// refused for its request id: a card sealed under a data key retired meanwhile is
    /// `KeyRetired` (it must be sealed again under the current key).
    async fn check_inserted(&self, conn: &mut PgConnection, inserted: bool) -> Result<bool, Error> {
        if !inserted && !lock_data_key_for_write(conn, self.card.sealed.dek_version).await? {
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

    // Submitted alone (a `reuse_existing` tokenization): look the request id up, then the card.
    fn apply<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, Self::Output> {
        Box::pin(once_per_request(self, conn))
    }

    fn audit_token(&self, output: &Result<Self::Output, Error>) -> Option<String> {
        match output {
            Ok((view, _)) => Some(view.token.as_str().to_owned()),
            Err(_) => None,
        }
    }
}

// The common case, a new request without dedupe, records the request and inserts the card in
// the batch's one insert, and only if the id was new.
impl CardMutation for TokenizeMutation {
    fn card_insert(&self) -> CardInsert<'_> {
        self.card_row()
    }

    fn apply_inserted<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        inserted: bool,
    ) -> Apply<'a, Self::Output> {
        Box::pin(self.after_insert(conn, inserted))
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
                store::lock_fingerprint(conn, &card.fingerprint).await?;
            }
            if self.reuse_existing
                && let Some(existing) =
                    store::active_card_by_fingerprint(conn, &card.fingerprint, card.now).await?
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
            let current = store::card_for_update(conn, &self.token)
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
            if !lock_data_key_for_write(conn, update.sealed.dek_version).await? {
                return Err(Error::KeyRetired);
            }
            store::update_card(conn, &update.write()).await?;
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
            let current = store::card_for_update(conn, &self.token)
                .await?
                .ok_or(Error::TokenNotFound)?;
            // Revoking a revoked or expired token changes nothing: it is unusable either way.
            if current.view.state_at(self.now) == TokenState::Active {
                store::revoke_card(conn, &self.token, &self.reason, self.now).await?;
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
                store::revoke_by_fingerprint(conn, &self.fingerprint, &self.reason, self.now)
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
        Box::pin(async move { store::purge_expired(conn, self.now, self.limit).await })
    }

    fn audit_token(&self, _output: &Result<Vec<Token>, Error>) -> Option<String> {
        None
    }
}
