//! Who may call what: one table from RPC to the roles allowed (DESIGN section 2).

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
}

impl Rpc {
    /// Every RPC, for tests that check the table is complete.
    pub const ALL: [Rpc; 6] = [
        Rpc::Tokenize,
        Rpc::GetToken,
        Rpc::ListTokens,
        Rpc::UpdateCard,
        Rpc::RevokeToken,
        Rpc::RevokeByFingerprint,
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
        }
    }

    /// True if `role` may call this RPC.
    pub fn allows(self, role: Role) -> bool {
        self.roles().contains(&role)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The table matches DESIGN section 2: tokenizers hold TokenService, the orchestrator may
    /// only read tokens, and no other role reaches TokenService at all.
    #[test]
    fn role_table() {
        for rpc in Rpc::ALL {
            assert!(rpc.allows(Role::Tokenizer), "{rpc:?}");
            assert_eq!(
                rpc.allows(Role::Orchestrator),
                rpc == Rpc::GetToken,
                "{rpc:?}"
            );
            for role in [
                Role::Admin,
                Role::Auditor,
                Role::Payer,
                Role::Treasury,
                Role::Reader,
                Role::Service,
            ] {
                assert!(!rpc.allows(role), "{rpc:?} {role}");
            }
        }
    }
}
