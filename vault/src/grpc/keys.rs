//! `KeyAdminService`: thin handlers and their wire conversions.

use std::sync::Arc;

use tandem_proto::tandem::vault::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;
use zeroize::Zeroize as _;

use super::convert::timestamp;
use super::status::{code_name, to_status};
use super::{Edge, Paging, respond};
use crate::audit::verification::{Break, RangeCheck};
use crate::auth::Rpc;
use crate::config::RootKeySource;
use crate::domain::audit::AuditRow;
use crate::domain::{Reason, RequestId, Token};
use crate::error::Error;
use crate::kernel::RequestContext;
use crate::keys::admin::{KeyAdmin, RewrapStatus, SealStatus};
use crate::storage::audit::AuditFilter;
use crate::storage::keys::DataKeyInfo;
use tandem_runtime::fields::Violations;

/// `KeyAdminService` over the vault's key administration.
#[derive(Debug, Clone)]
pub struct KeyAdminApi {
    admin: Arc<KeyAdmin>,
    edge: Edge,
}

impl KeyAdminApi {
    /// Serves `admin`, reading caller identities under `uri_prefix`.
    pub fn new(admin: Arc<KeyAdmin>, uri_prefix: &str) -> KeyAdminApi {
        let edge = Edge::new(admin.vault().clone(), uri_prefix);
        KeyAdminApi { admin, edge }
    }

    async fn request_id(&self, ctx: &RequestContext, text: &str) -> Result<RequestId, Status> {
        let checked = RequestId::parse(text).map_err(|e| Error::invalid("request_id", e));
        self.edge.check(ctx, checked).await
    }

    /// Runs an operation, turning an unaudited failure into an audited refusal.
    async fn audited<T>(
        &self,
        ctx: &RequestContext,
        result: Result<T, Error>,
    ) -> Result<T, Status> {
        match result {
            Ok(value) => Ok(value),
            // Operations audit the refusals they decide themselves; anything else (a sealed
            // vault, a database failure) is audited here.
            Err(error) => Err(self.edge.refuse(ctx, None, error).await),
        }
    }
}

fn data_key(info: &DataKeyInfo, budget: u64) -> pb::DataKeyVersion {
    pb::DataKeyVersion {
        version: info.version as i32,
        state: match info.state.as_str() {
            "active" => pb::DataKeyState::Active,
            "decrypt_only" => pb::DataKeyState::DecryptOnly,
            "retired" => pb::DataKeyState::Retired,
            _ => pb::DataKeyState::Unspecified,
        } as i32,
        rows: info.rows,
        encryptions: info.encryptions,
        encryption_budget: budget as i64,
        root_key_version: info.root_key_version,
        create_time: Some(timestamp(info.created_at)),
        deactivate_time: info.deactivated_at.map(timestamp),
        retire_time: info.retired_at.map(timestamp),
    }
}

fn seal(status: &SealStatus) -> pb::SealStatus {
    pb::SealStatus {
        state: if status.sealed {
            pb::SealState::Sealed
        } else {
            pb::SealState::Unsealed
        } as i32,
        root_key_source: match status.source {
            RootKeySource::Dev => pb::RootKeySource::Dev,
            RootKeySource::Shares => pb::RootKeySource::Shares,
        } as i32,
        shares_received: if status.sealed {
            status.shares_received
        } else {
            0
        },
        threshold: status.threshold,
        shares_total: status.shares_total,
        root_key_version: status.root_key_version,
        seal_time: status.sealed_at.map(timestamp),
        unseal_time: status.unsealed_at.map(timestamp),
    }
}

fn rewrap(status: &RewrapStatus) -> pb::RewrapStatus {
    pb::RewrapStatus {
        state: match status.state {
            "idle" => pb::RewrapState::Idle,
            "running" => pb::RewrapState::Running,
            _ => pb::RewrapState::Paused,
        } as i32,
        target_version: status.target_version as i32,
        rows_total: status.rows_total,
        rows_done: status.rows_done,
        rows_remaining: status.rows_remaining,
        rows_per_s: status.rows_per_s,
        rows_per_s_max: status.rows_per_s_max as i64,
        start_time: status.started_at.map(timestamp),
        estimated_finish_time: status.estimated_finish.map(timestamp),
    }
}

/// The outcome class of a stored audit outcome (`OK` or an `ErrorInfo` reason).
fn outcome(stored: &str) -> pb::AuditOutcome {
    match stored {
        "OK" => pb::AuditOutcome::Succeeded,
        "ROLE_NOT_ALLOWED" | "IDENTITY_INVALID" => pb::AuditOutcome::Denied,
        _ => pb::AuditOutcome::Failed,
    }
}

fn audit_event(row: &AuditRow) -> pb::AuditEvent {
    let entry = &row.entry;
    let failed = entry.outcome != "OK";
    pb::AuditEvent {
        sequence: row.seq,
        create_time: Some(timestamp(row.occurred_at)),
        caller: entry.caller.clone(),
        role: entry.role.clone(),
        rpc: entry.rpc.clone(),
        token: entry.token.clone().unwrap_or_default(),
        resource: entry.resource.clone(),
        outcome: outcome(&entry.outcome) as i32,
        status_code: code_name(&entry.outcome).to_owned(),
        reason: if failed {
            entry.outcome.clone()
        } else {
            entry.reason.clone()
        },
        correlation_id: entry.correlation_id.clone(),
        request_id: entry.request_id.clone(),
        hash: hex::encode(row.hash),
        previous_hash: hex::encode(row.prev_hash),
    }
}

/// Checks a `RetireKeyVersionRequest`.
fn retire_key_version(request: &pb::RetireKeyVersionRequest) -> Result<(RequestId, u32), Error> {
    let mut v = Violations::default();
    let request_id = v.check("request_id", RequestId::parse(&request.request_id));
    let version = v.check(
        "version",
        u32::try_from(request.version)
            .ok()
            .filter(|version| *version > 0)
            .ok_or("must be 1 or more"),
    );
    v.finish_with(|| Some((request_id?, version?)))
}

/// Checks a `SealRequest`.
fn seal_request(request: &pb::SealRequest) -> Result<(RequestId, Reason), Error> {
    let mut v = Violations::default();
    let request_id = v.check("request_id", RequestId::parse(&request.request_id));
    let reason = v.check("reason", Reason::parse(&request.reason));
    v.finish_with(|| Some((request_id?, reason?)))
}

/// Checks a `VerifyAuditLogRequest`: the range to check (0: an end of the chain).
fn verify_range(request: &pb::VerifyAuditLogRequest) -> Result<(i64, i64), Error> {
    let (start, end) = (request.start_sequence, request.end_sequence);
    if start < 0 || end < 0 {
        let field = if start < 0 {
            "start_sequence"
        } else {
            "end_sequence"
        };
        return Err(Error::invalid(field, "must not be negative"));
    }
    if end > 0 && end < start {
        return Err(Error::invalid(
            "end_sequence",
            "must not be before start_sequence",
        ));
    }
    Ok((start, end))
}

/// An optional timestamp as a time.
fn time(
    timestamp: &Option<prost_types::Timestamp>,
) -> Result<Option<time::OffsetDateTime>, &'static str> {
    timestamp
        .as_ref()
        .map(|t| {
            time::OffsetDateTime::from_unix_timestamp(t.seconds)
                .ok()
                .and_then(|time| {
                    u32::try_from(t.nanos)
                        .ok()
                        .and_then(|nanos| time.replace_nanosecond(nanos).ok())
                })
                .ok_or("is not a valid timestamp")
        })
        .transpose()
}

/// A filter text of at most 256 bytes; empty for none.
fn bounded(v: &mut Violations, field: &'static str, text: &str) -> Option<Option<String>> {
    v.check(
        field,
        if text.len() <= 256 {
            Ok((!text.is_empty()).then(|| text.to_owned()))
        } else {
            Err("is too long")
        },
    )
}

/// Checks a `ListAuditEventsRequest`.
fn audit_query(request: &pb::ListAuditEventsRequest) -> Result<(AuditFilter, Paging), Error> {
    let scope = format!(
        "audit/{:?}/{:?}/{}/{}/{}/{}/{}/{}",
        request.start_time,
        request.end_time,
        request.token,
        request.rpc,
        request.caller,
        request.outcome,
        request.correlation_id,
        request.descending
    );
    let mut v = Violations::default();
    let size = v.check("page_size", Paging::size(request.page_size));
    let start = v.check("start_time", time(&request.start_time));
    let end = v.check("end_time", time(&request.end_time));
    if let (Some(Some(start)), Some(Some(end))) = (start, end)
        && end < start
    {
        v.check::<(), _>("end_time", Err("must not be before start_time"));
    }
    let token = if request.token.is_empty() {
        Some(None)
    } else {
        v.check("token", Token::parse(&request.token))
            .map(|t| Some(t.as_str().to_owned()))
    };
    let rpc = bounded(&mut v, "rpc", &request.rpc);
    let caller = bounded(&mut v, "caller", &request.caller);
    let correlation_id = bounded(&mut v, "correlation_id", &request.correlation_id);
    let outcome = v.check(
        "outcome",
        match pb::AuditOutcome::try_from(request.outcome) {
            Ok(pb::AuditOutcome::Unspecified) => Ok(None),
            Ok(pb::AuditOutcome::Succeeded) => Ok(Some("succeeded")),
            Ok(pb::AuditOutcome::Denied) => Ok(Some("denied")),
            Ok(pb::AuditOutcome::Failed) => Ok(Some("failed")),
            Err(_) => Err("is not a known outcome"),
        },
    );
    let paging = Paging::check(&mut v, size, &request.page_token, scope);
    v.finish_with(|| {
        let filter = AuditFilter {
            start: start?,
            end: end?,
            token: token?,
            rpc: rpc?,
            caller: caller?,
            outcome: outcome?,
            correlation_id: correlation_id?,
            descending: request.descending,
        };
        Some((filter, paging?))
    })
}

/// The answer of `VerifyAuditLog`.
fn verification(check: &RangeCheck) -> pb::VerifyAuditLogResponse {
    pb::VerifyAuditLogResponse {
        intact: check.broken.is_none(),
        events_checked: check.rows_checked,
        first_sequence: check.first_seq,
        last_sequence: check.last_seq,
        head_hash: hex::encode(check.head_hash),
        first_broken_sequence: check.broken.map_or(0, |(seq, _)| seq),
        break_kind: match check.broken.map(|(_, kind)| kind) {
            None => pb::AuditChainBreak::Unspecified,
            Some(Break::HashMismatch) => pb::AuditChainBreak::HashMismatch,
            Some(Break::PreviousHashMismatch) => pb::AuditChainBreak::PreviousHashMismatch,
            Some(Break::SequenceGap) => pb::AuditChainBreak::SequenceGap,
        } as i32,
    }
}

#[tonic::async_trait]
impl pb::key_admin_service_server::KeyAdminService for KeyAdminApi {
    #[instrument(skip_all, fields(rpc = "GetKeyStatus", correlation_id, caller))]
    async fn get_key_status(
        &self,
        request: Request<pb::GetKeyStatusRequest>,
    ) -> Result<Response<pb::GetKeyStatusResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::GetKeyStatus).await?;
        let status = self.audited(&ctx, self.admin.status().await).await?;
        self.admin
            .vault()
            .audit(&ctx, None, "OK", "")
            .await
            .map_err(to_status)?;
        let budget = self.admin.encryption_budget();
        Ok(respond(
            &ctx,
            pb::GetKeyStatusResponse {
                data_keys: status
                    .data_keys
                    .iter()
                    .map(|k| data_key(k, budget))
                    .collect(),
                rewrap: Some(rewrap(&status.rewrap)),
                seal: Some(seal(&status.seal)),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "RotateDataKey", correlation_id, caller))]
    async fn rotate_data_key(
        &self,
        request: Request<pb::RotateDataKeyRequest>,
    ) -> Result<Response<pb::RotateDataKeyResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::RotateDataKey).await?;
        let request_id = self.request_id(&ctx, &request.get_ref().request_id).await?;
        let info = self
            .audited(&ctx, self.admin.rotate_data_key(&ctx, request_id).await)
            .await?;
        Ok(respond(
            &ctx,
            pb::RotateDataKeyResponse {
                data_key: Some(data_key(&info, self.admin.encryption_budget())),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "RetireKeyVersion", correlation_id, caller))]
    async fn retire_key_version(
        &self,
        request: Request<pb::RetireKeyVersionRequest>,
    ) -> Result<Response<pb::RetireKeyVersionResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::RetireKeyVersion).await?;
        let checked = retire_key_version(request.get_ref());
        let (request_id, version) = self.edge.check(&ctx, checked).await?;
        let info = match self.admin.retire(&ctx, request_id, version).await {
            Ok(info) => info,
            // Refusals decided by `retire` are audited there.
            Err(
                error @ (Error::KeyVersionNotFound
                | Error::KeyVersionActive
                | Error::KeyVersionInUse),
            ) => return Err(to_status(error)),
            Err(error) => return Err(self.edge.refuse(&ctx, None, error).await),
        };
        Ok(respond(
            &ctx,
            pb::RetireKeyVersionResponse {
                data_key: Some(data_key(&info, self.admin.encryption_budget())),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "RotateRootKey", correlation_id, caller))]
    async fn rotate_root_key(
        &self,
        request: Request<pb::RotateRootKeyRequest>,
    ) -> Result<Response<pb::RotateRootKeyResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::RotateRootKey).await?;
        let request_id = self.request_id(&ctx, &request.get_ref().request_id).await?;
        let rotation = match self
            .admin
            .rotate_root(
                &ctx,
                request_id,
                request.get_ref().shares_total,
                request.get_ref().threshold,
            )
            .await
        {
            Ok(rotation) => rotation,
            Err(error @ Error::InvalidArgument(_)) => return Err(to_status(error)),
            Err(error) => return Err(self.edge.refuse(&ctx, None, error).await),
        };
        Ok(respond(
            &ctx,
            pb::RotateRootKeyResponse {
                seal: Some(seal(&rotation.seal)),
                shares: rotation.shares.iter().map(|s| s.to_vec()).collect(),
                shares_withheld: rotation.shares_withheld,
                data_keys_rewrapped: rotation.data_keys_rewrapped,
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "Unseal", correlation_id, caller))]
    async fn unseal(
        &self,
        request: Request<pb::UnsealRequest>,
    ) -> Result<Response<pb::UnsealResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::Unseal).await?;
        let mut request = request.into_inner();
        let request_id = RequestId::parse(&request.request_id);
        let result = match request_id {
            Ok(_) => self.admin.unseal(&ctx, &request.share).await,
            Err(e) => Err(Error::invalid("request_id", e)),
        };
        request.share.zeroize();
        let status = match result {
            Ok(status) => status,
            Err(
                error @ (Error::ShareMalformed(_) | Error::UnsealFailed | Error::NotInitialised),
            ) => {
                return Err(to_status(error));
            }
            Err(error) => return Err(self.edge.refuse(&ctx, None, error).await),
        };
        Ok(respond(
            &ctx,
            pb::UnsealResponse {
                seal: Some(seal(&status)),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "Seal", correlation_id, caller))]
    async fn seal(
        &self,
        request: Request<pb::SealRequest>,
    ) -> Result<Response<pb::SealResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::Seal).await?;
        let checked = seal_request(request.get_ref());
        let (request_id, reason) = self.edge.check(&ctx, checked).await?;
        let status = self
            .audited(
                &ctx,
                self.admin.seal(&ctx, request_id, reason.as_str()).await,
            )
            .await?;
        Ok(respond(
            &ctx,
            pb::SealResponse {
                seal: Some(seal(&status)),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "ListAuditEvents", correlation_id, caller))]
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::ListAuditEvents).await?;
        let checked = audit_query(request.get_ref());
        let (filter, paging) = self.edge.check(&ctx, checked).await?;
        let page = self
            .admin
            .audit_events(&ctx, &filter, paging.after, paging.size)
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::ListAuditEventsResponse {
                events: page.items.iter().map(audit_event).collect(),
                next_page_token: paging.next_token(&page, |row| row.seq),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "VerifyAuditLog", correlation_id, caller))]
    async fn verify_audit_log(
        &self,
        request: Request<pb::VerifyAuditLogRequest>,
    ) -> Result<Response<pb::VerifyAuditLogResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::VerifyAuditLog).await?;
        let checked = verify_range(request.get_ref());
        let (start, end) = self.edge.check(&ctx, checked).await?;
        let check = self
            .admin
            .verify_audit(&ctx, start, end)
            .await
            .map_err(to_status)?;
        Ok(respond(&ctx, verification(&check)))
    }
}
