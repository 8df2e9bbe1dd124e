//! What an audit row says ([`AuditEntry`]) and the row as chained and stored ([`AuditRow`]).
//! Numbering and hashing them is `audit::chain`.

use time::OffsetDateTime;

/// What an audit row says, before it is numbered and chained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// The caller's identity, `<role>/<name>`.
    pub caller: String,
    /// The caller's role.
    pub role: String,
    /// The full gRPC method, e.g. `tandem.vault.v1.TokenService/Tokenize`.
    pub rpc: String,
    /// The token concerned, if one.
    pub token: Option<String>,
    /// `OK`, or the error reason (`ROLE_NOT_ALLOWED`, `INVALID_ARGUMENT`, ...).
    pub outcome: String,
    /// Free text: the revoke reason, the fields refused, a count. Never card data.
    pub reason: String,
    /// The request's correlation id (`x-request-id`).
    pub correlation_id: String,
    /// The call's AIP-155 request id, if it had a valid one; empty otherwise.
    pub request_id: String,
    /// The other resource acted on (a charge id, a refund id, `dek/3`); empty if none.
    pub resource: String,
}

/// A numbered, chained audit row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRow {
    /// Position in the chain, from 1.
    pub seq: i64,
    /// When the row was written (microsecond precision, as Postgres stores it).
    pub occurred_at: OffsetDateTime,
    /// The entry.
    pub entry: AuditEntry,
    /// The previous row's hash.
    pub prev_hash: [u8; 32],
    /// This row's hash.
    pub hash: [u8; 32],
}
