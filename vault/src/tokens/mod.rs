//! Tokens: the `TokenService` operations over checked domain types (tokenize, read, list,
//! update, revoke, purge). CPU work (fingerprinting, sealing) happens here, in the caller's
//! task; writes and their audit rows go through the writer and commit together.
//!
//! Every operation writes exactly one audit row, whatever its outcome. The writer jobs these
//! operations queue are in `mutations`.

mod mutations;

use crate::auth::Rpc;
use crate::domain::{
    CardSecret, CardSelector, CardView, HolderName, Pan, Reason, RequestId, Token, TokenState,
    TokenizeCommand, UpdateCardCommand,
};
use crate::error::Error;
use crate::kernel::{RequestContext, Vault};
use crate::storage::tokens::{self as store, CardFilter};
use crate::writer::AuditContext;
use mutations::{
    NewCard, PurgeMutation, RevokeByFingerprintMutation, RevokeMutation, TokenizeMutation,
    UpdateMutation,
};
use tandem_runtime::time::now_micros;

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
