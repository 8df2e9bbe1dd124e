//! Card groups: create, read, list, update with an etag, archive, in domain terms: the
//! handlers check each request into a [`crate::commands`] value. Every mutation is idempotent
//! by `request_id` and answers with the response stored with the id (an encoded `CardGroup`,
//! the same bytes on a replay); it checks new members' tokens with the vault before anything
//! is written.

use std::collections::HashMap;
use std::sync::Arc;

use crate::commands::{GroupArchive, GroupQuery, GroupUpdate, NewGroup};
use crate::config::PaymentSettings;
use crate::domain::actor::Actor;
use crate::error::Error;
use crate::grpc::convert;
use crate::grpc::convert::groups::GroupEventKind;
use crate::storage::{self, Cursor, StoredContent, StoredGroup};
use crate::vault::TokenCheck;
use crate::workflow::Workflow;
use tandem_runtime::time::now_micros as now;

/// The card-group operations.
pub struct Groups {
    workflow: Arc<Workflow>,
}

/// A group with each member's month-to-date spend, by (token, currency code).
pub type GroupWithSpend = (StoredGroup, HashMap<(String, String), i64>);

impl Groups {
    /// Card groups over the workflow's database and vault client.
    pub fn new(workflow: Arc<Workflow>) -> Self {
        Self { workflow }
    }

    /// The settings requests are checked by.
    pub fn settings(&self) -> &PaymentSettings {
        self.workflow.settings()
    }

    /// `CreateCardGroup`: the stored response.
    pub async fn create(&self, group: NewGroup, actor: Actor) -> Result<Vec<u8>, Error> {
        let method = "CreateCardGroup";
        let id = tandem_runtime::ids::random_id("cg_");
        // Replays are answered before asking the vault anything.
        if let Some(stored) = self
            .replay(&group.request_id, method, &group.request_hash)
            .await?
        {
            return Ok(stored);
        }
        let last4 = self.check_tokens(&group.draft.tokens(), &[]).await?;
        let mut tx = self.workflow.pool().begin().await?;
        if let Some(earlier) = self
            .claim(&mut tx, &group.request_id, method, &group.request_hash, &id)
            .await?
        {
            tx.rollback().await?;
            return earlier.replay(method, &group.request_hash);
        }
        let now = now();
        let stored = StoredGroup {
            id,
            content: StoredContent::Data(Box::new(group.draft.finish(&last4, None))),
            version: 1,
            archived: false,
            create_time: now,
            update_time: now,
            archive_time: None,
            creator: Some(actor.clone()),
            updater: Some(actor),
            events: 1,
        };
        let event = convert::groups::group_event(&stored, GroupEventKind::Created, now)?;
        storage::insert_group(&mut tx, &stored, &group.billing_account_id, &event).await?;
        let response = convert::groups::group_response(&stored)?;
        storage::store_response(&mut tx, &group.request_id, &response).await?;
        tx.commit().await?;
        Ok(response)
    }

    /// `GetCardGroup`, with each member's month-to-date spend.
    pub async fn get(&self, id: &str) -> Result<GroupWithSpend, Error> {
        let stored = storage::group(self.workflow.pool(), id, false)
            .await?
            .ok_or(Error::CardGroupNotFound)?;
        let tokens: Vec<String> = convert::groups::group_cards(&stored)?
            .into_iter()
            .map(|(token, _)| token)
            .collect();
        let spend =
            storage::month_to_date(self.workflow.pool(), &tokens, storage::month_of(now())).await?;
        Ok((stored, spend))
    }

    /// `ListCardGroups`, newest first: a page, and where the next one starts if there is one.
    pub async fn list(
        &self,
        query: &GroupQuery,
    ) -> Result<(Vec<StoredGroup>, Option<Cursor>), Error> {
        let mut rows = storage::list_groups(
            self.workflow.pool(),
            query.billing_account_id.as_deref(),
            query.show_archived,
            query.after.as_ref(),
            i64::from(query.size) + 1,
        )
        .await?;
        let size = query.size as usize;
        let more = rows.len() > size;
        rows.truncate(size);
        let next = match (more, rows.last()) {
            (true, Some(last)) => Some(Cursor {
                create_time: last.create_time,
                id: last.id.clone(),
            }),
            _ => None,
        };
        Ok((rows, next))
    }

    /// `UpdateCardGroup`: replaces the fields in the mask, if the etag (when given) matches;
    /// the stored response.
    pub async fn update(&self, update: GroupUpdate, actor: Actor) -> Result<Vec<u8>, Error> {
        let method = "UpdateCardGroup";
        let GroupUpdate {
            request_id,
            request_hash,
            card_group_id,
            etag,
            merge,
        } = update;
        let (request_id, hash, id) = (&request_id, &request_hash, &card_group_id);
        if let Some(stored) = self.replay(request_id, method, hash).await? {
            return Ok(stored);
        }
        let pool = self.workflow.pool();
        let current = storage::group(pool, id, false)
            .await?
            .ok_or(Error::CardGroupNotFound)?;
        let before = convert::groups::group_data(&current)?;
        let draft = merge(&before)?;
        let cards: Vec<(String, String)> = before
            .members
            .iter()
            .map(|m| (m.rules.token.clone(), m.last4.clone()))
            .collect();
        let known: Vec<String> = cards.iter().map(|(token, _)| token.clone()).collect();
        let last4 = self.check_tokens(&draft.tokens(), &known).await?;
        let mut tx = pool.begin().await?;
        if let Some(earlier) = self.claim(&mut tx, request_id, method, hash, id).await? {
            tx.rollback().await?;
            return earlier.replay(method, hash);
        }
        let mut stored = storage::group(&mut *tx, id, true)
            .await?
            .ok_or(Error::CardGroupNotFound)?;
        if stored.archived {
            return Err(Error::CardGroupArchived);
        }
        if !etag.is_empty() && etag != convert::groups::etag(stored.version) {
            return Err(Error::EtagMismatch);
        }
        if stored.version != current.version {
            // The group changed while the new members were checked with the vault: the update
            // was built on the old version, so the caller reads the group again.
            return Err(Error::EtagMismatch);
        }
        let mut last4_all = cards;
        last4_all.extend(last4);
        let group = draft.finish(&last4_all, Some(&before));
        stored.content = StoredContent::Data(Box::new(group));
        stored.version += 1;
        stored.update_time = now();
        stored.updater = Some(actor);
        stored.events += 1;
        let event =
            convert::groups::group_event(&stored, GroupEventKind::Updated, stored.update_time)?;
        storage::update_group(&mut tx, &stored, Some(&event)).await?;
        let response = convert::groups::group_response(&stored)?;
        storage::store_response(&mut tx, request_id, &response).await?;
        tx.commit().await?;
        Ok(response)
    }

    /// `DeleteCardGroup`: archives the group (idempotently); the stored response.
    pub async fn delete(&self, archive: GroupArchive, actor: Actor) -> Result<Vec<u8>, Error> {
        let method = "DeleteCardGroup";
        let (request_id, hash, id) = (
            &archive.request_id,
            &archive.request_hash,
            &archive.card_group_id,
        );
        let mut tx = self.workflow.pool().begin().await?;
        if let Some(earlier) = self.claim(&mut tx, request_id, method, hash, id).await? {
            tx.rollback().await?;
            return earlier.replay(method, hash);
        }
        let mut stored = storage::group(&mut *tx, id, true)
            .await?
            .ok_or(Error::CardGroupNotFound)?;
        if !archive.etag.is_empty() && archive.etag != convert::groups::etag(stored.version) {
            return Err(Error::EtagMismatch);
        }
        if !stored.archived {
            let now = now();
            stored.archived = true;
            stored.archive_time = Some(now);
            stored.update_time = now;
            stored.version += 1;
            stored.updater = Some(actor);
            stored.events += 1;
            let event = convert::groups::group_event(&stored, GroupEventKind::Archived, now)?;
            storage::update_group(&mut tx, &stored, Some(&event)).await?;
        }
        let response = convert::groups::group_response(&stored)?;
        storage::store_response(&mut tx, request_id, &response).await?;
        tx.commit().await?;
        Ok(response)
    }

    /// Claims `request_id` for `method` in `tx`; the earlier request if it was used before.
    async fn claim(
        &self,
        tx: &mut sqlx::PgConnection,
        request_id: &str,
        method: &str,
        hash: &[u8],
        id: &str,
    ) -> Result<Option<storage::StoredRequest>, Error> {
        let wait_ms = self.settings().request_id_wait_ms;
        storage::claim_request_id(tx, request_id, method, hash, id, wait_ms).await
    }

    /// The stored answer to a request id already committed, if any (without claiming it).
    async fn replay(
        &self,
        request_id: &str,
        method: &str,
        hash: &[u8],
    ) -> Result<Option<Vec<u8>>, Error> {
        storage::stored_request(self.workflow.pool(), request_id)
            .await?
            .map(|earlier| earlier.replay(method, hash))
            .transpose()
    }

    /// Checks with the vault every member token not in `known`; returns their last four
    /// digits.
    async fn check_tokens(
        &self,
        tokens: &[String],
        known: &[String],
    ) -> Result<Vec<(String, String)>, Error> {
        let mut last4 = Vec::new();
        for (i, token) in tokens.iter().enumerate() {
            if known.contains(token) {
                continue;
            }
            match self.workflow.vault().check_token(token).await {
                Ok(TokenCheck::Usable { last4: digits }) => {
                    last4.push((token.clone(), digits));
                }
                Ok(TokenCheck::NotUsable(reason)) => {
                    return Err(Error::TokenNotUsable {
                        member: format!("card_group.members[{i}].token"),
                        reason,
                    });
                }
                Err(unknown) => {
                    tracing::warn!(error = %unknown, "vault unavailable for a token check");
                    return Err(Error::VaultUnavailable);
                }
            }
        }
        Ok(last4)
    }
}
