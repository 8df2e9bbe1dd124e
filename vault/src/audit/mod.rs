//! The audit log: every call and job writes one hash-chained row, in the same transaction as
//! the records it describes. [`chain`] numbers and links rows (pure); [`verification`] checks a
//! stored chain; the SQL is in [`crate::storage::audit`].

pub mod chain;
pub mod verification;
