//! Who may call what: one table from RPC to the roles allowed (DESIGN section 2).

use tandem_runtime::admission::RpcClass;
use tandem_tls::identity::Role;

/// Every RPC the vault serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    /// `TokenService/Tokenize`
    Tokenize,
    /// `TokenService/GetToken`
    GetToken,
    /// `TokenService/ListTokens`
    ListTokens,
    /// `TokenService/UpdateCard`
    UpdateCard,
    /// `TokenService/RevokeToken`
    RevokeToken,
    /// `TokenService/RevokeByFingerprint`
    RevokeByFingerprint,
    /// `ChargeService/Authorize`
    Authorize,
    /// `ChargeService/Capture`
    Capture,
    /// `ChargeService/Void`
    Void,
    /// `ChargeService/Refund`
    Refund,
    /// `ChargeService/GetCharge`
    GetCharge,
    /// `ChargeService/BatchAuthorize`
    BatchAuthorize,
    /// `ChargeService/BatchCapture`
    BatchCapture,
    /// `ChargeService/BatchVoid`
    BatchVoid,
    /// `ChargeService/DownloadSettlementFile`
    DownloadSettlementFile,
    /// `SandboxService/ConfigureSandboxCard`
    ConfigureSandboxCard,
    /// `SandboxService/GetSandboxCard`
    GetSandboxCard,
    /// `SandboxService/ListSandboxOperations`
    ListSandboxOperations,
    /// `SandboxService/ListSettlementRecords`
    ListSettlementRecords,
    /// `SandboxService/CorruptSettlementRecord`
    CorruptSettlementRecord,
    /// The vault's own recovery job; no caller may invoke it.
    RecoverCharges,
    /// `KeyAdminService/GetKeyStatus`
    GetKeyStatus,
    /// `KeyAdminService/RotateDataKey`
    RotateDataKey,
    /// `KeyAdminService/RetireKeyVersion`
    RetireKeyVersion,
    /// `KeyAdminService/RotateRootKey`
    RotateRootKey,
    /// `KeyAdminService/Unseal`
    Unseal,
    /// `KeyAdminService/Seal`
    Seal,
    /// `KeyAdminService/ListAuditEvents`
    ListAuditEvents,
    /// `KeyAdminService/VerifyAuditLog`
    VerifyAuditLog,
}

impl Rpc {
    /// Every RPC, for tests that check the table is complete.
    pub const ALL: [Rpc; 29] = [
        Rpc::Tokenize,
        Rpc::GetToken,
        Rpc::ListTokens,
        Rpc::UpdateCard,
        Rpc::RevokeToken,
        Rpc::RevokeByFingerprint,
        Rpc::Authorize,
        Rpc::Capture,
        Rpc::Void,
        Rpc::Refund,
        Rpc::GetCharge,
        Rpc::BatchAuthorize,
        Rpc::BatchCapture,
        Rpc::BatchVoid,
        Rpc::DownloadSettlementFile,
        Rpc::ConfigureSandboxCard,
        Rpc::GetSandboxCard,
        Rpc::ListSandboxOperations,
        Rpc::ListSettlementRecords,
        Rpc::CorruptSettlementRecord,
        Rpc::RecoverCharges,
        Rpc::GetKeyStatus,
        Rpc::RotateDataKey,
        Rpc::RetireKeyVersion,
        Rpc::RotateRootKey,
        Rpc::Unseal,
        Rpc::Seal,
        Rpc::ListAuditEvents,
        Rpc::VerifyAuditLog,
    ];

    /// The full gRPC method name, as written to audit rows.
    pub const fn method(self) -> &'static str {
        match self {
            Rpc::Tokenize => "tandem.vault.v1.TokenService/Tokenize",
            Rpc::GetToken => "tandem.vault.v1.TokenService/GetToken",
            Rpc::ListTokens => "tandem.vault.v1.TokenService/ListTokens",
            Rpc::UpdateCard => "tandem.vault.v1.TokenService/UpdateCard",
            Rpc::RevokeToken => "tandem.vault.v1.TokenService/RevokeToken",
            Rpc::RevokeByFingerprint => "tandem.vault.v1.TokenService/RevokeByFingerprint",
            Rpc::Authorize => "tandem.vault.v1.ChargeService/Authorize",
            Rpc::Capture => "tandem.vault.v1.ChargeService/Capture",
            Rpc::Void => "tandem.vault.v1.ChargeService/Void",
            Rpc::Refund => "tandem.vault.v1.ChargeService/Refund",
            Rpc::GetCharge => "tandem.vault.v1.ChargeService/GetCharge",
            Rpc::BatchAuthorize => "tandem.vault.v1.ChargeService/BatchAuthorize",
            Rpc::BatchCapture => "tandem.vault.v1.ChargeService/BatchCapture",
            Rpc::BatchVoid => "tandem.vault.v1.ChargeService/BatchVoid",
            Rpc::DownloadSettlementFile => "tandem.vault.v1.ChargeService/DownloadSettlementFile",
            Rpc::ConfigureSandboxCard => "tandem.vault.v1.SandboxService/ConfigureSandboxCard",
            Rpc::GetSandboxCard => "tandem.vault.v1.SandboxService/GetSandboxCard",
            Rpc::ListSandboxOperations => "tandem.vault.v1.SandboxService/ListSandboxOperations",
            Rpc::ListSettlementRecords => "tandem.vault.v1.SandboxService/ListSettlementRecords",
            Rpc::CorruptSettlementRecord => {
                "tandem.vault.v1.SandboxService/CorruptSettlementRecord"
            }
            Rpc::RecoverCharges => "tandem.vault.internal/RecoverCharges",
            Rpc::GetKeyStatus => "tandem.vault.v1.KeyAdminService/GetKeyStatus",
            Rpc::RotateDataKey => "tandem.vault.v1.KeyAdminService/RotateDataKey",
            Rpc::RetireKeyVersion => "tandem.vault.v1.KeyAdminService/RetireKeyVersion",
            Rpc::RotateRootKey => "tandem.vault.v1.KeyAdminService/RotateRootKey",
            Rpc::Unseal => "tandem.vault.v1.KeyAdminService/Unseal",
            Rpc::Seal => "tandem.vault.v1.KeyAdminService/Seal",
            Rpc::ListAuditEvents => "tandem.vault.v1.KeyAdminService/ListAuditEvents",
            Rpc::VerifyAuditLog => "tandem.vault.v1.KeyAdminService/VerifyAuditLog",
        }
    }

    /// The roles allowed to call this RPC.
    pub const fn roles(self) -> &'static [Role] {
        match self {
            Rpc::Tokenize
            | Rpc::ListTokens
            | Rpc::UpdateCard
            | Rpc::RevokeToken
            | Rpc::RevokeByFingerprint => &[Role::Tokenizer],
            Rpc::GetToken => &[Role::Tokenizer, Role::Orchestrator],
            Rpc::Authorize
            | Rpc::Capture
            | Rpc::Void
            | Rpc::Refund
            | Rpc::GetCharge
            | Rpc::BatchAuthorize
            | Rpc::BatchCapture
            | Rpc::BatchVoid
            | Rpc::DownloadSettlementFile => &[Role::Orchestrator],
            Rpc::ConfigureSandboxCard
            | Rpc::GetSandboxCard
            | Rpc::ListSandboxOperations
            | Rpc::ListSettlementRecords
            | Rpc::CorruptSettlementRecord => &[Role::Admin],
            Rpc::RecoverCharges => &[],
            Rpc::GetKeyStatus
            | Rpc::RotateDataKey
            | Rpc::RetireKeyVersion
            | Rpc::RotateRootKey
            | Rpc::Unseal
            | Rpc::Seal => &[Role::Admin],
            Rpc::ListAuditEvents | Rpc::VerifyAuditLog => &[Role::Admin, Role::Auditor],
        }
    }

    /// True if the RPC needs the vault's keys, so that a sealed vault refuses it with
    /// `VAULT_SEALED`.
    pub const fn needs_keys(self) -> bool {
        // Key administration decides per operation: status, unseal, seal and the audit log
        // work while sealed; rotations and retirement need the keys.
        !matches!(
            self,
            Rpc::RecoverCharges
                | Rpc::GetKeyStatus
                | Rpc::RotateDataKey
                | Rpc::RetireKeyVersion
                | Rpc::RotateRootKey
                | Rpc::Unseal
                | Rpc::Seal
                | Rpc::ListAuditEvents
                | Rpc::VerifyAuditLog
        )
    }

    /// True if `role` may call this RPC.
    pub fn allows(self, role: Role) -> bool {
        self.roles().contains(&role)
    }

    /// The class its calls are limited in, per caller (`[limits]`).
    pub const fn class(self) -> RpcClass {
        match self {
            Rpc::GetToken
            | Rpc::ListTokens
            | Rpc::GetCharge
            | Rpc::DownloadSettlementFile
            | Rpc::GetSandboxCard
            | Rpc::ListSandboxOperations
            | Rpc::ListSettlementRecords
            | Rpc::GetKeyStatus
            | Rpc::ListAuditEvents
            | Rpc::VerifyAuditLog => RpcClass::Read,
            Rpc::Tokenize
            | Rpc::UpdateCard
            | Rpc::RevokeToken
            | Rpc::RevokeByFingerprint
            | Rpc::Authorize
            | Rpc::Capture
            | Rpc::Void
            | Rpc::Refund
            | Rpc::BatchAuthorize
            | Rpc::BatchCapture
            | Rpc::BatchVoid
            | Rpc::ConfigureSandboxCard
            | Rpc::CorruptSettlementRecord
            | Rpc::RecoverCharges
            | Rpc::RotateDataKey
            | Rpc::RetireKeyVersion
            | Rpc::RotateRootKey
            | Rpc::Unseal
            | Rpc::Seal => RpcClass::Write,
        }
    }

    /// The class of the call to gRPC path `path` (`/package.Service/Method`); health and
    /// reflection read.
    pub fn class_of_path(path: &str) -> RpcClass {
        let method = path.strip_prefix('/').unwrap_or(path);
        Rpc::ALL
            .iter()
            .find(|rpc| rpc.method() == method)
            .map_or(RpcClass::Read, |rpc| rpc.class())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table matches DESIGN section 2: tokenizers hold TokenService, the orchestrator
    /// charges (settlement files included) and may only read tokens, admins run the sandbox and
    /// the keys, auditors read the audit log only, nobody calls the internal recovery job, and
    /// the other roles (the orchestrator's own: payer, treasury, reader, approver) reach none
    /// of it. The match over roles is exhaustive, so a new role must be placed here.
    #[test]
    fn role_table() {
        for rpc in Rpc::ALL {
            let method = rpc.method();
            let token_service = method.starts_with("tandem.vault.v1.TokenService/");
            let charge_service = method.starts_with("tandem.vault.v1.ChargeService/");
            let sandbox_service = method.starts_with("tandem.vault.v1.SandboxService/");
            let key_admin = method.starts_with("tandem.vault.v1.KeyAdminService/");
            for role in Role::ALL {
                let expected = match role {
                    Role::Tokenizer => token_service,
                    Role::Orchestrator => rpc == Rpc::GetToken || charge_service,
                    Role::Admin => sandbox_service || key_admin,
                    Role::Auditor => matches!(rpc, Rpc::ListAuditEvents | Rpc::VerifyAuditLog),
                    Role::Payer
                    | Role::Treasury
                    | Role::Reader
                    | Role::Approver
                    | Role::Reviewer
                    | Role::Dashboard
                    | Role::Service => false,
                };
                assert_eq!(rpc.allows(role), expected, "{rpc:?} {role}");
            }
        }
        assert!(Rpc::RecoverCharges.roles().is_empty());
        assert_eq!(Rpc::DownloadSettlementFile.roles(), &[Role::Orchestrator]);
        assert_eq!(Rpc::CorruptSettlementRecord.roles(), &[Role::Admin]);
    }

    /// Paths map to their RPC's class: gets, lists, downloads and the audit check read, the
    /// rest write; health and reflection are reads.
    #[test]
    fn classes() {
        for rpc in Rpc::ALL {
            let name = rpc.method().rsplit('/').next().unwrap_or_default();
            let reads = ["Get", "List", "Verify", "Download"]
                .iter()
                .any(|prefix| name.starts_with(prefix));
            let expected = if reads {
                RpcClass::Read
            } else {
                RpcClass::Write
            };
            assert_eq!(
                Rpc::class_of_path(&format!("/{}", rpc.method())),
                expected,
                "{rpc:?}"
            );
        }
        assert_eq!(
            Rpc::class_of_path("/grpc.health.v1.Health/Check"),
            RpcClass::Read
        );
    }
}
