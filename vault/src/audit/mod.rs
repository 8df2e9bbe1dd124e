//! The audit log: every call and job writes one hash-chained row through the writer.
//! [`chain`] numbers and links rows (pure); [`verification`] checks a stored chain. What a row
//! says is [`crate::domain::audit`]; the SQL is in [`crate::storage::audit`].

pub mod chain;
pub mod verification;
