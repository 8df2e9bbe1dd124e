//! Verification of the audit chain: recomputes every row's hash from the database, in pages,
//! and reports the first row that is missing, relinked or changed. `VerifyAuditLog` and the
//! tests use this one verifier.

use sqlx::PgPool;

use crate::audit::chain::{GENESIS_HASH, row_hash};
use crate::storage;

/// Rows read per query while verifying.
const VERIFY_PAGE_ROWS: i64 = 1000;

/// How a checked chain broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Break {
    /// A row's stored hash is not the hash of its content: the row was changed.
    HashMismatch,
    /// A row's `prev_hash` is not the previous row's hash: a row was replaced or inserted.
    PreviousHashMismatch,
    /// A sequence number is missing: a row was deleted.
    SequenceGap,
}

/// The result of checking a range of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeCheck {
    /// Rows checked.
    pub rows_checked: i64,
    /// First sequence checked (0 when the log is empty).
    pub first_seq: i64,
    /// Last sequence checked.
    pub last_seq: i64,
    /// The hash of the last row checked.
    pub head_hash: [u8; 32],
    /// The first broken sequence and how it broke; `None` when intact.
    pub broken: Option<(i64, Break)>,
}

/// Checks rows `start..=end` (0: the first row, the head as it is now). Starting after the
/// first row trusts the starting row's `prev_hash`. A check up to the head also proves the
/// head row matches the last row, so rows cut off the end are found.
pub async fn verify(pool: &PgPool, start: i64, end: i64) -> Result<RangeCheck, sqlx::Error> {
    let (head_seq, head_hash) = storage::audit::audit_head(pool).await?;
    let start = start.max(1);
    let end = if end <= 0 {
        head_seq
    } else {
        end.min(head_seq)
    };
    let mut check = RangeCheck {
        rows_checked: 0,
        first_seq: 0,
        last_seq: 0,
        head_hash: GENESIS_HASH,
        broken: None,
    };
    let mut expected_seq = start;
    let mut prev_hash: Option<[u8; 32]> = (start == 1).then_some(GENESIS_HASH);
    while expected_seq <= end {
        let limit = VERIFY_PAGE_ROWS.min(end - expected_seq + 1);
        let page = storage::audit::audit_page(pool, expected_seq - 1, limit).await?;
        if page.is_empty() {
            check.broken = Some((expected_seq, Break::SequenceGap));
            return Ok(check);
        }
        for row in page {
            // A row past the expected one means the expected one is missing, even when the row
            // found lies past the end of the range.
            if row.seq != expected_seq {
                check.broken = Some((expected_seq, Break::SequenceGap));
                return Ok(check);
            }
            let previous = prev_hash.unwrap_or(row.prev_hash);
            if row.prev_hash != previous {
                check.broken = Some((row.seq, Break::PreviousHashMismatch));
                return Ok(check);
            }
            if row.hash != row_hash(row.seq, row.occurred_at, &row.entry, &previous) {
                check.broken = Some((row.seq, Break::HashMismatch));
                return Ok(check);
            }
            if check.rows_checked == 0 {
                check.first_seq = row.seq;
            }
            check.rows_checked += 1;
            check.last_seq = row.seq;
            check.head_hash = row.hash;
            prev_hash = Some(row.hash);
            expected_seq += 1;
        }
    }
    if end == head_seq && check.rows_checked > 0 && check.head_hash != head_hash {
        check.broken = Some((head_seq, Break::HashMismatch));
    }
    Ok(check)
}
