//! The token operations' writer jobs: each looks its request id up, applies its writes and
//! records its request, in the writer's batch transaction.

use sqlx::PgConnection;
use time::OffsetDateTime;

use crate::crypto::SealedCard;
use crate::domain::{Brand, CardView, Expiry, Fingerprint, RequestId, Token, TokenState};
use crate::error::Error;
use crate::kernel::{Recorded, RequestCheck, once_per_request};
use crate::storage::keys::lock_data_key_for_write;
use crate::storage::tokens::{self as store, CardInsert, CardWrite, StoredRequest};
use crate::writer::{Apply, CardMutation, Mutation};
use tandem_runtime::time::now_micros;

/// A card row about to be written.
#[derive(Debug)]
pub(super) struct NewCard {
    pub(super) token: Token,
    pub(super) fingerprint: Fingerprint,
    pub(super) brand: Brand,
    pub(super) bin: String,
    pub(super) last4: String,
    pub(super) expiry: Expiry,
    pub(super) sealed: SealedCard,
    pub(super) now: OffsetDateTime,
    pub(super) expires_at: Option<OffsetDateTime>,
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
pub(super) struct TokenizeMutation {
    pub(super) request_id: RequestId,
    pub(super) request_hash: [u8; 32],
    pub(super) rpc: &'static str,
    pub(super) card: NewCard,
    pub(super) reuse_existing: bool,
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
pub(super) struct UpdateMutation {
    pub(super) request_id: RequestId,
    pub(super) request_hash: [u8; 32],
    pub(super) rpc: &'static str,
    pub(super) token: Token,
    /// The nonce of the ciphertext the update was built from; if the row changed since, the
    /// update is rebuilt.
    pub(super) expected_nonce: Option<[u8; 12]>,
    /// The new card; `None` if the token was not active when read.
    pub(super) update: Option<NewCard>,
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
pub(super) struct RevokeMutation {
    pub(super) request_id: RequestId,
    pub(super) request_hash: [u8; 32],
    pub(super) rpc: &'static str,
    pub(super) token: Token,
    pub(super) now: OffsetDateTime,
    pub(super) reason: String,
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
pub(super) struct RevokeByFingerprintMutation {
    pub(super) request_id: RequestId,
    pub(super) request_hash: [u8; 32],
    pub(super) rpc: &'static str,
    pub(super) fingerprint: Fingerprint,
    pub(super) now: OffsetDateTime,
    pub(super) reason: String,
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
pub(super) struct PurgeMutation {
    pub(super) now: OffsetDateTime,
    pub(super) limit: i64,
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
