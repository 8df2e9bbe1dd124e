//! Card groups: create, read, list, update with an etag, archive. Every mutation is
//! idempotent by `request_id` (its response is stored with the id) and checks new members'
//! tokens with the vault before anything is written.

use std::sync::Arc;

use prost::Message as _;
use tandem_proto::tandem::orchestrator::v1 as pb;

use crate::error::Error;
use crate::grpc::convert::{self, Violations};
use crate::storage::now;
use crate::storage::{self, StoredGroup};
use crate::vault::TokenCheck;
use crate::workflow::Workflow;

/// The card-group operations.
pub struct Groups {
    workflow: Arc<Workflow>,
}

/// Paths `UpdateCardGroup` may replace.
const UPDATABLE: [&str; 4] = [
    "display_name",
    "default_currency_code",
    "members",
    "default_policy",
];

impl Groups {
    /// Card groups over the workflow's database and vault client.
    pub fn new(workflow: Arc<Workflow>) -> Self {
        Self { workflow }
    }

    /// `CreateCardGroup`.
    pub async fn create(
        &self,
        request: pb::CreateCardGroupRequest,
    ) -> Result<pb::CardGroup, Error> {
        let mut v = Violations::default();
        convert::request_id(&mut v, "request_id", &request.request_id);
        let group = request.card_group.clone().unwrap_or_default();
        if request.card_group.is_none() {
            v.add("card_group", "is required");
        }
        let input = convert::group_input(&mut v, &group);
        let input = v
            .finish(input)?
            .ok_or_else(|| Error::invalid("card_group", "is invalid"))?;
        let hash = convert::request_hash("CreateCardGroup", &request);
        let id = tandem_runtime::ids::random_id("cg_");
        let pool = self.workflow.pool();
        // Replays are answered before asking the vault anything.
        if let Some(stored) = self
            .replay(&request.request_id, "CreateCardGroup", &hash)
            .await?
        {
            return Ok(stored);
        }
        let last4 = self.check_tokens(&group, &[]).await?;
        let mut tx = pool.begin().await?;
        if let Some(earlier) = storage::claim_request_id(
            &mut tx,
            &request.request_id,
            "CreateCardGroup",
            &hash,
            &id,
            self.workflow.settings().request_id_wait_ms,
        )
        .await?
        {
            tx.rollback().await?;
            return replayed(earlier, "CreateCardGroup", &hash);
        }
        let now = now();
        let stored = StoredGroup {
            id,
            body: convert::group_body(&group, &last4, &[]),
            version: 1,
            archived: false,
            create_time: now,
            update_time: now,
            archive_time: None,
        };
        storage::insert_group(&mut tx, &stored, &input.billing_account_id).await?;
        let wire = convert::group_to_wire(&stored)?;
        storage::store_response(&mut tx, &request.request_id, &wire.encode_to_vec()).await?;
        tx.commit().await?;
        Ok(wire)
    }

    /// `GetCardGroup`, with each member's month-to-date spend.
    pub async fn get(&self, request: pb::GetCardGroupRequest) -> Result<pb::CardGroup, Error> {
        let mut v = Violations::default();
        let id = convert::resource_id(&mut v, "card_group_id", "cg_", &request.card_group_id);
        v.finish(())?;
        let stored = storage::group(self.workflow.pool(), &id, false)
            .await?
            .ok_or(Error::CardGroupNotFound)?;
        let mut group = convert::group_to_wire(&stored)?;
        let tokens: Vec<String> = group.members.iter().map(|m| m.token.clone()).collect();
        let spend =
            storage::month_to_date(self.workflow.pool(), &tokens, storage::month_of(now())).await?;
        for member in &mut group.members {
            let key = (member.token.clone(), member.currency_code.clone());
            member.month_to_date_spend = Some(tandem_proto::tandem::r#type::v1::Money {
                currency_code: member.currency_code.clone(),
                minor_units: spend.get(&key).copied().unwrap_or(0),
            });
        }
        Ok(group)
    }

    /// `ListCardGroups`, newest first.
    pub async fn list(
        &self,
        request: pb::ListCardGroupsRequest,
    ) -> Result<pb::ListCardGroupsResponse, Error> {
        let mut v = Violations::default();
        let size = convert::page_size(
            &mut v,
            request.page_size,
            self.workflow.settings().page_size_max,
        );
        let scope = format!("{}|{}", request.billing_account_id, request.show_archived);
        let after = if request.page_token.is_empty() {
            None
        } else {
            let cursor = convert::decode_page_token(&request.page_token, scope.as_bytes());
            if cursor.is_none() {
                v.add(
                    "page_token",
                    "is not a page token of this list with these filters",
                );
            }
            cursor
        };
        v.finish(())?;
        let billing = Some(request.billing_account_id.as_str()).filter(|b| !b.is_empty());
        let mut rows = storage::list_groups(
            self.workflow.pool(),
            billing,
            request.show_archived,
            after.as_ref(),
            i64::from(size) + 1,
        )
        .await?;
        let more = rows.len() > size as usize;
        rows.truncate(size as usize);
        let next_page_token = match (more, rows.last()) {
            (true, Some(last)) => convert::encode_page_token(
                &storage::Cursor {
                    create_time: last.create_time,
                    id: last.id.clone(),
                },
                scope.as_bytes(),
            ),
            _ => String::new(),
        };
        Ok(pb::ListCardGroupsResponse {
            card_groups: rows
                .iter()
                .map(convert::group_to_wire)
                .collect::<Result<_, _>>()?,
            next_page_token,
        })
    }

    /// `UpdateCardGroup`: replaces the fields in the mask, if the etag (when given) matches.
    pub async fn update(
        &self,
        request: pb::UpdateCardGroupRequest,
    ) -> Result<pb::CardGroup, Error> {
        let mut v = Violations::default();
        convert::request_id(&mut v, "request_id", &request.request_id);
        let changes = request.card_group.clone().unwrap_or_default();
        let id = convert::resource_id(&mut v, "card_group.id", "cg_", &changes.id);
        let paths: Vec<String> = request
            .update_mask
            .as_ref()
            .map(|m| m.paths.clone())
            .unwrap_or_default();
        if paths.is_empty() {
            v.add("update_mask", "is required");
        }
        for (i, path) in paths.iter().enumerate() {
            if path != "*" && !UPDATABLE.contains(&path.as_str()) {
                v.add(
                    format!("update_mask.paths[{i}]"),
                    "must be display_name, default_currency_code, members, default_policy or *",
                );
            }
        }
        v.finish(())?;
        let hash = convert::request_hash("UpdateCardGroup", &request);
        if let Some(stored) = self
            .replay(&request.request_id, "UpdateCardGroup", &hash)
            .await?
        {
            return Ok(stored);
        }
        let pool = self.workflow.pool();
        let current = storage::group(pool, &id, false)
            .await?
            .ok_or(Error::CardGroupNotFound)?;
        let mut group = convert::group_to_wire(&current)?;
        let before = group.members.clone();
        let all = paths.iter().any(|p| p == "*");
        let has = |name: &str| all || paths.iter().any(|p| p == name);
        if has("display_name") {
            group.display_name = changes.display_name.clone();
        }
        if has("default_currency_code") {
            group.default_currency_code = changes.default_currency_code.clone();
        }
        if has("members") {
            group.members = changes.members.clone();
        }
        if has("default_policy") {
            group.default_policy = changes.default_policy.clone();
        }
        let mut v = Violations::default();
        convert::group_input(&mut v, &group);
        v.finish(())?;
        let known: Vec<String> = current_tokens(&current)?;
        let last4 = self.check_tokens(&group, &known).await?;
        let mut tx = pool.begin().await?;
        if let Some(earlier) = storage::claim_request_id(
            &mut tx,
            &request.request_id,
            "UpdateCardGroup",
            &hash,
            &id,
            self.workflow.settings().request_id_wait_ms,
        )
        .await?
        {
            tx.rollback().await?;
            return replayed(earlier, "UpdateCardGroup", &hash);
        }
        let mut stored = storage::group(&mut *tx, &id, true)
            .await?
            .ok_or(Error::CardGroupNotFound)?;
        if stored.archived {
            return Err(Error::CardGroupArchived);
        }
        if !changes.etag.is_empty() && changes.etag != convert::etag(stored.version) {
            return Err(Error::EtagMismatch);
        }
        if stored.version != current.version {
            // The group changed while the new members were checked with the vault: the update
            // was built on the old version, so the caller reads the group again.
            return Err(Error::EtagMismatch);
        }
        let now = now();
        let mut last4_all = current_last4(&current)?;
        last4_all.extend(last4);
        stored.body = convert::group_body(&group, &last4_all, &before);
        stored.version += 1;
        stored.update_time = now;
        storage::update_group(&mut tx, &stored).await?;
        let wire = convert::group_to_wire(&stored)?;
        storage::store_response(&mut tx, &request.request_id, &wire.encode_to_vec()).await?;
        tx.commit().await?;
        Ok(wire)
    }

    /// `DeleteCardGroup`: archives the group (idempotently).
    pub async fn delete(
        &self,
        request: pb::DeleteCardGroupRequest,
    ) -> Result<pb::CardGroup, Error> {
        let mut v = Violations::default();
        convert::request_id(&mut v, "request_id", &request.request_id);
        let id = convert::resource_id(&mut v, "card_group_id", "cg_", &request.card_group_id);
        v.finish(())?;
        let hash = convert::request_hash("DeleteCardGroup", &request);
        let mut tx = self.workflow.pool().begin().await?;
        if let Some(earlier) = storage::claim_request_id(
            &mut tx,
            &request.request_id,
            "DeleteCardGroup",
            &hash,
            &id,
            self.workflow.settings().request_id_wait_ms,
        )
        .await?
        {
            tx.rollback().await?;
            return replayed(earlier, "DeleteCardGroup", &hash);
        }
        let mut stored = storage::group(&mut *tx, &id, true)
            .await?
            .ok_or(Error::CardGroupNotFound)?;
        if !request.etag.is_empty() && request.etag != convert::etag(stored.version) {
            return Err(Error::EtagMismatch);
        }
        if !stored.archived {
            let now = now();
            stored.archived = true;
            stored.archive_time = Some(now);
            stored.update_time = now;
            stored.version += 1;
            storage::update_group(&mut tx, &stored).await?;
        }
        let wire = convert::group_to_wire(&stored)?;
        storage::store_response(&mut tx, &request.request_id, &wire.encode_to_vec()).await?;
        tx.commit().await?;
        Ok(wire)
    }

    /// The stored answer to a request id already committed, if any (without claiming it).
    async fn replay(
        &self,
        request_id: &str,
        method: &str,
        hash: &[u8],
    ) -> Result<Option<pb::CardGroup>, Error> {
        storage::stored_request(self.workflow.pool(), request_id)
            .await?
            .map(|earlier| replayed(earlier, method, hash))
            .transpose()
    }

    /// Checks with the vault every member token not in `known`; returns their last four
    /// digits.
    async fn check_tokens(
        &self,
        group: &pb::CardGroup,
        known: &[String],
    ) -> Result<Vec<(String, String)>, Error> {
        let mut last4 = Vec::new();
        for (i, member) in group.members.iter().enumerate() {
            if known.contains(&member.token) {
                continue;
            }
            match self.workflow.vault().check_token(&member.token).await {
                Ok(TokenCheck::Usable { last4: digits }) => {
                    last4.push((member.token.clone(), digits));
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

/// The answer to a request id seen before: its stored response, or the reason it cannot be.
fn replayed(
    earlier: storage::StoredRequest,
    method: &str,
    hash: &[u8],
) -> Result<pb::CardGroup, Error> {
    if earlier.method != method || earlier.request_hash != hash {
        return Err(Error::RequestIdReused);
    }
    let response = earlier
        .response
        .ok_or_else(|| Error::Corrupt("card-group request without a response".into()))?;
    pb::CardGroup::decode(response.as_slice())
        .map_err(|e| Error::Corrupt(format!("stored response: {e}")))
}

fn current_tokens(stored: &StoredGroup) -> Result<Vec<String>, Error> {
    Ok(convert::group_to_wire(stored)?
        .members
        .into_iter()
        .map(|m| m.token)
        .collect())
}

fn current_last4(stored: &StoredGroup) -> Result<Vec<(String, String)>, Error> {
    Ok(convert::group_to_wire(stored)?
        .members
        .into_iter()
        .map(|m| (m.token, m.last4))
        .collect())
}
