//! The audit chain: how rows are numbered and linked (pure: no IO). What a row says is
//! [`crate::domain::audit`].
//!
//! Every row's `hash` is SHA-256 over a label, the previous row's hash and the row's fields
//! (length-prefixed), so changing, removing or reordering any row breaks every later hash.
//! Rows are appended by the writer (`writer.rs`) in the same transaction as the records they
//! describe; [`crate::audit::verification`] walks the chain.

use sha2::{Digest as _, Sha256};
use tandem_runtime::time::truncate_to_micros;
use time::OffsetDateTime;

use crate::domain::audit::{AuditEntry, AuditRow};

/// The label hashed first into every row.
const HASH_LABEL: &[u8] = b"tandem/vault/audit/v1";

/// The hash before the first row.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// Numbers and chains `entries` after the row `(seq, hash)`.
pub fn chain(
    head_seq: i64,
    head_hash: [u8; 32],
    occurred_at: OffsetDateTime,
    entries: impl IntoIterator<Item = AuditEntry>,
) -> Vec<AuditRow> {
    let occurred_at = truncate_to_micros(occurred_at);
    let mut prev_hash = head_hash;
    let mut seq = head_seq;
    entries
        .into_iter()
        .map(|entry| {
            seq += 1;
            let hash = row_hash(seq, occurred_at, &entry, &prev_hash);
            let row = AuditRow {
                seq,
                occurred_at,
                entry,
                prev_hash,
                hash,
            };
            prev_hash = hash;
            row
        })
        .collect()
}

/// The hash of one row.
pub fn row_hash(
    seq: i64,
    occurred_at: OffsetDateTime,
    entry: &AuditEntry,
    prev_hash: &[u8; 32],
) -> [u8; 32] {
    let micros = i64::try_from(occurred_at.unix_timestamp_nanos() / 1000)
        .expect("timestamps within i64 microseconds");
    let mut hasher = Sha256::new();
    hasher.update(HASH_LABEL);
    hasher.update(prev_hash);
    hasher.update(seq.to_be_bytes());
    hasher.update(micros.to_be_bytes());
    let token_present = [u8::from(entry.token.is_some())];
    let fields: [&[u8]; 8] = [
        entry.caller.as_bytes(),
        entry.role.as_bytes(),
        entry.rpc.as_bytes(),
        &token_present,
        entry.token.as_deref().unwrap_or("").as_bytes(),
        entry.outcome.as_bytes(),
        entry.reason.as_bytes(),
        entry.correlation_id.as_bytes(),
    ];
    // Rows from before request ids and resources were recorded (schema version 4) carry
    // neither and keep their original hash; any row carrying one hashes both. The fields are
    // length-prefixed, so the two forms cannot collide.
    let recorded: [&[u8]; 2] = [entry.request_id.as_bytes(), entry.resource.as_bytes()];
    let extra: &[&[u8]] = if recorded.iter().all(|f| f.is_empty()) {
        &[]
    } else {
        &recorded
    };
    for field in fields.iter().chain(extra) {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    }
    hasher.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32) -> AuditEntry {
        AuditEntry {
            caller: format!("tokenizer/t{n}"),
            role: "tokenizer".into(),
            rpc: "tandem.vault.v1.TokenService/Tokenize".into(),
            token: n.is_multiple_of(2).then(|| format!("tok_{n}")),
            outcome: "OK".into(),
            reason: String::new(),
            correlation_id: format!("c{n}"),
            request_id: format!("r{n}"),
            resource: String::new(),
        }
    }

    /// Chaining in two batches gives the same rows as chaining in one.
    #[test]
    fn chain_continues_across_batches() {
        let now = OffsetDateTime::now_utc();
        let all = chain(0, GENESIS_HASH, now, (0..6).map(entry));
        let first = chain(0, GENESIS_HASH, now, (0..3).map(entry));
        let last = first.last().unwrap();
        let second = chain(last.seq, last.hash, now, (3..6).map(entry));
        assert_eq!(all, [first, second].concat());
        assert_eq!(
            all.iter().map(|r| r.seq).collect::<Vec<_>>(),
            [1, 2, 3, 4, 5, 6]
        );
    }

    /// A row without request id and resource hashes exactly as rows did before those fields
    /// existed (eight length-prefixed fields), so chains written before schema version 4 still
    /// verify.
    #[test]
    fn rows_without_the_new_fields_keep_the_old_hash() {
        let now = OffsetDateTime::now_utc();
        let old = AuditEntry {
            request_id: String::new(),
            resource: String::new(),
            ..entry(3)
        };
        let micros = i64::try_from(truncate_to_micros(now).unix_timestamp_nanos() / 1000).unwrap();
        let mut hasher = Sha256::new();
        hasher.update(HASH_LABEL);
        hasher.update(GENESIS_HASH);
        hasher.update(1i64.to_be_bytes());
        hasher.update(micros.to_be_bytes());
        let token_present = [u8::from(old.token.is_some())];
        for field in [
            old.caller.as_bytes(),
            old.role.as_bytes(),
            old.rpc.as_bytes(),
            &token_present,
            old.token.as_deref().unwrap_or("").as_bytes(),
            old.outcome.as_bytes(),
            old.reason.as_bytes(),
            old.correlation_id.as_bytes(),
        ] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        let expected: [u8; 32] = hasher.finalize().into();
        assert_eq!(
            row_hash(1, truncate_to_micros(now), &old, &GENESIS_HASH),
            expected
        );
    }

    /// Any change to any field, or to the order, changes the hash.
    #[test]
    fn every_field_is_covered() {
        let now = OffsetDateTime::now_utc();
        let base = entry(2);
        let hash = row_hash(1, now, &base, &GENESIS_HASH);
        let variants = [
            AuditEntry {
                caller: "x".into(),
                ..base.clone()
            },
            AuditEntry {
                role: "x".into(),
                ..base.clone()
            },
            AuditEntry {
                rpc: "x".into(),
                ..base.clone()
            },
            AuditEntry {
                token: None,
                ..base.clone()
            },
            AuditEntry {
                token: Some(String::new()),
                ..base.clone()
            },
            AuditEntry {
                outcome: "x".into(),
                ..base.clone()
            },
            AuditEntry {
                reason: "x".into(),
                ..base.clone()
            },
            AuditEntry {
                correlation_id: "x".into(),
                ..base.clone()
            },
            AuditEntry {
                request_id: "x".into(),
                ..base.clone()
            },
            AuditEntry {
                resource: "x".into(),
                ..base.clone()
            },
        ];
        for variant in &variants {
            assert_ne!(
                row_hash(1, now, variant, &GENESIS_HASH),
                hash,
                "{variant:?}"
            );
        }
        assert_ne!(row_hash(2, now, &base, &GENESIS_HASH), hash);
        assert_ne!(row_hash(1, now, &base, &[1; 32]), hash);
        let later = now + time::Duration::microseconds(1);
        assert_ne!(row_hash(1, later, &base, &GENESIS_HASH), hash);
    }
}
