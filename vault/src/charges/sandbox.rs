//! The sandbox acquirer's administration (`SandboxService`) over checked commands: a card's
//! behaviour, its operations and its settlement records, and their corruption for
//! reconciliation tests.
//!
//! Configuring a card and corrupting a settlement record are mutations like any other: the
//! request-id check, the sandbox's rows and the audit row commit together through the writer. The card is opened here, never at the
//! edge: the sandbox is a processor connector, the one other place a PAN may be seen.

use sqlx::PgConnection;

use crate::auth::Rpc;
use crate::charges::Charges;
use crate::connector::sandbox::{
    CardBehaviour, CorruptedRecord, Corruption, CorruptionCall, OperationFilter, Sandbox,
    SandboxCard, SandboxOperation, SettlementRecord,
};
use crate::domain::token::random_id;
use crate::domain::{CardSecret, Fingerprint, RequestId, Token, TokenState};
use crate::error::Error;
use crate::kernel::{Page, Recorded, RequestCheck, RequestContext, once_per_request};
use crate::storage::tokens::{self as token_store, StoredRequest};
use crate::writer::{Apply, Mutation};

/// A checked `ConfigureSandboxCard`.
#[derive(Debug)]
pub struct ConfigureSandboxCard {
    /// The AIP-155 request id.
    pub request_id: RequestId,
    /// The card, by its token.
    pub token: Token,
    /// The behaviour to set; `None` resets the card to its test card's behaviour.
    pub behaviour: Option<CardBehaviour>,
}

/// A checked `CorruptSettlementRecord`.
#[derive(Debug)]
pub struct CorruptSettlementRecord {
    /// The AIP-155 request id.
    pub request_id: RequestId,
    /// The settlement day.
    pub day: time::Date,
    /// The record, by id; `None` is the day's first.
    pub record_id: Option<String>,
    /// What to do to it.
    pub corruption: Corruption,
}

/// A checked `ListSettlementRecords` query.
#[derive(Debug)]
pub struct SettlementQuery {
    /// First settlement day, if bounded.
    pub start: Option<time::Date>,
    /// Last settlement day, if bounded.
    pub end: Option<time::Date>,
    /// Only this record type.
    pub kind: Option<&'static str>,
}

impl Charges {
    /// The card behind `token` (any state but purged) with its number, for the sandbox. A
    /// refusal is audited.
    async fn sandbox_secret(
        &self,
        ctx: &RequestContext,
        token: &Token,
    ) -> Result<(Fingerprint, CardSecret), Error> {
        let vault = self.vault();
        let opened = async {
            let stored = match token_store::card(vault.pool(), token).await? {
                Some(card) if card.view.state != TokenState::Expired => card,
                _ => return Err(Error::TokenNotFound),
            };
            let sealed = stored.sealed.as_ref().ok_or(Error::TokenNotFound)?;
            let secret = vault
                .keys()?
                .open_fresh(vault.pool(), token, sealed)
                .await?;
            Ok((stored.view.fingerprint, secret))
        };
        match opened.await {
            Ok(opened) => Ok(opened),
            Err(error) => Err(vault.refuse(ctx, Some(token), error).await),
        }
    }

    /// Sets (or resets) a sandbox card's behaviour, once per request id.
    pub async fn configure_sandbox_card(
        &self,
        ctx: &RequestContext,
        command: ConfigureSandboxCard,
    ) -> Result<SandboxCard, Error> {
        let (fingerprint, secret) = self.sandbox_secret(ctx, &command.token).await?;
        let config_text = format!("{:?}", command.behaviour);
        let request_hash = self.vault().keys()?.request_hash(&[
            Rpc::ConfigureSandboxCard.method().as_bytes(),
            command.token.as_str().as_bytes(),
            config_text.as_bytes(),
        ]);
        let configured = command.behaviour.is_some();
        let behaviour = command
            .behaviour
            .unwrap_or_else(|| CardBehaviour::for_test_card(&secret.pan));
        let mutation = ConfigureMutation {
            request_id: command.request_id,
            request_hash,
            token: command.token,
            fingerprint,
            last4: secret.pan.last4(),
            configured,
            behaviour,
        };
        drop(secret);
        self.vault().submit(mutation, ctx, "").await
    }

    /// A sandbox card's state; a card the sandbox has not seen yet shows its test card
    /// behaviour.
    pub async fn sandbox_card(
        &self,
        ctx: &RequestContext,
        token: &Token,
    ) -> Result<SandboxCard, Error> {
        let (fingerprint, secret) = self.sandbox_secret(ctx, token).await?;
        let sandbox = self.sandbox();
        let card = match sandbox.ensure_card(fingerprint, token, &secret.pan).await {
            Ok(()) => sandbox.card(fingerprint).await,
            Err(error) => Err(error),
        };
        drop(secret);
        let refusal = match card {
            Ok(Some(card)) => {
                self.vault().audit(ctx, Some(token), "OK", "").await?;
                return Ok(card);
            }
            Ok(None) => Error::TokenNotFound,
            Err(error) => error.into(),
        };
        Err(self.vault().refuse(ctx, Some(token), refusal).await)
    }

    /// The sandbox's operations after `after_seq` matching `filter`, at most `size`.
    pub async fn sandbox_operations(
        &self,
        ctx: &RequestContext,
        filter: &OperationFilter,
        after_seq: i64,
        size: i64,
    ) -> Result<Page<SandboxOperation>, Error> {
        let operations = self
            .sandbox()
            .operations(filter, after_seq, size + 1)
            .await?;
        self.vault().audit(ctx, None, "OK", "").await?;
        Ok(Page::of(operations, size))
    }

    /// The sandbox's settlement records after the record `after_seq` (0: from the start),
    /// at most `size`. Records are ordered by day then seq, and a seq only grows, so the day
    /// to continue from is read from the record itself.
    pub async fn settlement_records(
        &self,
        ctx: &RequestContext,
        query: &SettlementQuery,
        after_seq: i64,
        size: i64,
    ) -> Result<Page<SettlementRecord>, Error> {
        let sandbox = self.sandbox();
        let after_position = if after_seq > 0 {
            sandbox.settlement_record_position(after_seq).await?
        } else {
            None
        };
        let records = sandbox
            .settlement_records(query.start, query.end, query.kind, after_position, size + 1)
            .await?;
        self.vault().audit(ctx, None, "OK", "").await?;
        Ok(Page::of(records, size))
    }
}

impl Charges {
    /// Corrupts one of the sandbox's settlement records, once per request id: a replay answers
    /// what the first request did and changes nothing more.
    pub async fn corrupt_settlement_record(
        &self,
        ctx: &RequestContext,
        command: CorruptSettlementRecord,
    ) -> Result<CorruptedRecord, Error> {
        let day = command.day.to_string();
        let corruption = format!("{:?}", command.corruption);
        let request_hash = self.vault().keys()?.request_hash(&[
            Rpc::CorruptSettlementRecord.method().as_bytes(),
            day.as_bytes(),
            command.record_id.as_deref().unwrap_or_default().as_bytes(),
            corruption.as_bytes(),
        ]);
        let mutation = CorruptMutation {
            request_id: command.request_id,
            request_hash,
            day: command.day,
            record_id: command.record_id,
            corruption: command.corruption,
            duplicate_id: random_id("stl_"),
        };
        self.vault().submit(mutation, ctx, "").await
    }
}

/// Configures a sandbox card and records the request, in the writer's transaction.
#[derive(Debug)]
struct ConfigureMutation {
    request_id: RequestId,
    request_hash: [u8; 32],
    token: Token,
    fingerprint: Fingerprint,
    last4: String,
    configured: bool,
    behaviour: CardBehaviour,
}

impl Recorded for ConfigureMutation {
    type Output = SandboxCard;

    fn apply_once<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, SandboxCard> {
        Box::pin(async move {
            let rpc = Rpc::ConfigureSandboxCard.method();
            let stored = token_store::request(conn, self.request_id.as_str()).await?;
            if RequestCheck::of(stored, rpc, &self.request_hash)
                .replay()?
                .is_some()
            {
                return Sandbox::card_in(&mut *conn, self.fingerprint)
                    .await?
                    .ok_or(Error::TokenNotFound);
            }
            let card = Sandbox::configure(
                conn,
                self.fingerprint,
                &self.token,
                &self.last4,
                self.configured,
                &self.behaviour,
            )
            .await?;
            let record = StoredRequest {
                rpc: rpc.to_owned(),
                request_hash: self.request_hash,
                result_tokens: vec![self.token.clone()],
                created: false,
            };
            if !token_store::insert_request(conn, self.request_id.as_str(), &record).await? {
                return Err(Error::RequestIdTaken);
            }
            Ok(card)
        })
    }
}

impl Mutation for ConfigureMutation {
    type Output = SandboxCard;

    fn apply<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, SandboxCard> {
        Box::pin(once_per_request(self, conn))
    }

    fn audit_token(&self, _output: &Result<SandboxCard, Error>) -> Option<String> {
        Some(self.token.as_str().to_owned())
    }

    fn audit_reason(&self, output: &Result<SandboxCard, Error>) -> Option<String> {
        output.is_ok().then(|| "sandbox card configured".to_owned())
    }
}

/// Corrupts a settlement record and records the request, in the writer's transaction.
#[derive(Debug)]
struct CorruptMutation {
    request_id: RequestId,
    request_hash: [u8; 32],
    day: time::Date,
    record_id: Option<String>,
    corruption: Corruption,
    /// The id of a duplicate, fixed before the job is queued (the writer may run a job again).
    duplicate_id: String,
}

impl Recorded for CorruptMutation {
    type Output = CorruptedRecord;

    fn apply_once<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, CorruptedRecord> {
        Box::pin(async move {
            let rpc = Rpc::CorruptSettlementRecord.method();
            let stored = token_store::request(conn, self.request_id.as_str()).await?;
            if RequestCheck::of(stored, rpc, &self.request_hash)
                .replay()?
                .is_some()
            {
                return Sandbox::settlement_corruption(&mut *conn, self.request_id.as_str())
                    .await?
                    .ok_or(Error::Corrupt(
                        "a recorded corruption request has no journal row",
                    ));
            }
            let corrupted = Sandbox::corrupt_settlement_record(
                conn,
                CorruptionCall {
                    request_id: self.request_id.as_str(),
                    day: self.day,
                    record_id: self.record_id.as_deref(),
                    corruption: self.corruption,
                    duplicate_id: &self.duplicate_id,
                },
            )
            .await?;
            let record = StoredRequest {
                rpc: rpc.to_owned(),
                request_hash: self.request_hash,
                result_tokens: Vec::new(),
                created: false,
            };
            if !token_store::insert_request(conn, self.request_id.as_str(), &record).await? {
                return Err(Error::RequestIdTaken);
            }
            Ok(corrupted)
        })
    }
}

impl Mutation for CorruptMutation {
    type Output = CorruptedRecord;

    fn apply<'a>(&'a self, conn: &'a mut PgConnection) -> Apply<'a, CorruptedRecord> {
        Box::pin(once_per_request(self, conn))
    }

    fn audit_token(&self, _output: &Result<CorruptedRecord, Error>) -> Option<String> {
        None
    }

    fn audit_resource(&self, output: &Result<CorruptedRecord, Error>) -> Option<String> {
        match output {
            Ok(corrupted) => Some(corrupted.original.id.clone()),
            Err(_) => self.record_id.clone(),
        }
    }

    fn audit_reason(&self, output: &Result<CorruptedRecord, Error>) -> Option<String> {
        output
            .is_ok()
            .then(|| format!("settlement record corrupted: {}", self.corruption.as_str()))
    }
}
