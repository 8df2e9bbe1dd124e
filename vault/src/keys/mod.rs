//! Keys: the key ring in memory with its encryption budget and data-key rotation ([`ring`]),
//! and key administration ([`admin`]): sealing and unsealing with Shamir shares, rotation with
//! the background rewrap, root-key rotation. Their SQL is in [`crate::storage::keys`].

pub mod admin;
pub mod ring;
