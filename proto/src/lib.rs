//! Tandem's gRPC API: the `.proto` files under `proto/tandem/` and their generated Rust code.
//!
//! # Layout
//!
//! - [`tandem::r#type::v1`]: shared types (`Money`).
//! - [`tandem::vault::v1`]: `TokenService`, `ChargeService`, `KeyAdminService` (and the sandbox
//!   acquirer's admin surface).
//! - [`tandem::orchestrator::v1`]: `CardGroupService`, `PaymentService`, `LedgerService`,
//!   `ReconciliationService`, `WebhookService`, `FxService`.
//! - [`FILE_DESCRIPTOR_SET`]: the encoded descriptors of every file, for server reflection.
//!
//! # Invariants
//!
//! - This crate holds the wire types only: no validation, no conversion to domain types (each
//!   service converts at its edge).
//! - Messages that carry a card number or key material have a hand-written `Debug` that prints
//!   `[redacted]` in its place, so a `{:?}` of a message can never leak a PAN or a key share.

#![allow(
    missing_docs,
    clippy::doc_lazy_continuation,
    clippy::large_enum_variant
)]

/// The generated packages, nested as their proto package names.
pub mod tandem {
    /// `tandem.type.*`
    pub mod r#type {
        /// `tandem.type.v1`
        pub mod v1 {
            tonic::include_proto!("tandem.r#type.v1");
        }
    }
    /// `tandem.vault.*`
    pub mod vault {
        /// `tandem.vault.v1`
        pub mod v1 {
            tonic::include_proto!("tandem.vault.v1");
        }
    }
    /// `tandem.orchestrator.*`
    pub mod orchestrator {
        /// `tandem.orchestrator.v1`
        pub mod v1 {
            tonic::include_proto!("tandem.orchestrator.v1");
        }
    }
}

/// Encoded `google.protobuf.FileDescriptorSet` of every Tandem proto file, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tandem_descriptor.bin"));

mod redacted {
    //! Hand-written `Debug` for the messages that carry card data or key material.
    use std::fmt;

    use crate::tandem::orchestrator::v1::{
        CreateWebhookEndpointResponse, RotateWebhookSecretResponse,
    };
    use crate::tandem::vault::v1::{
        RevokeByFingerprintRequest, RotateRootKeyResponse, TokenizeRequest, UnsealRequest,
        UpdateCardRequest, revoke_by_fingerprint_request,
    };

    const REDACTED: &str = "[redacted]";

    impl fmt::Debug for CreateWebhookEndpointResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("CreateWebhookEndpointResponse")
                .field("endpoint", &self.endpoint)
                .field("secret", &REDACTED)
                .finish()
        }
    }

    impl fmt::Debug for RotateWebhookSecretResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RotateWebhookSecretResponse")
                .field("endpoint", &self.endpoint)
                .field("secret", &REDACTED)
                .finish()
        }
    }

    impl fmt::Debug for TokenizeRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("TokenizeRequest")
                .field("request_id", &self.request_id)
                .field("pan", &REDACTED)
                .field("expiry_month", &self.expiry_month)
                .field("expiry_year", &self.expiry_year)
                .field("holder_name", &REDACTED)
                .field("reuse_existing", &self.reuse_existing)
                .field("ttl_seconds", &self.ttl_seconds)
                .finish()
        }
    }

    impl fmt::Debug for UpdateCardRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("UpdateCardRequest")
                .field("request_id", &self.request_id)
                .field("token", &self.token)
                .field("pan", &REDACTED)
                .field("expiry_month", &self.expiry_month)
                .field("expiry_year", &self.expiry_year)
                .field("holder_name", &REDACTED)
                .finish()
        }
    }

    impl fmt::Debug for RevokeByFingerprintRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let card = match &self.card {
                None => "none",
                Some(revoke_by_fingerprint_request::Card::Fingerprint(_)) => {
                    "fingerprint([redacted])"
                }
                Some(revoke_by_fingerprint_request::Card::Pan(_)) => "pan([redacted])",
            };
            f.debug_struct("RevokeByFingerprintRequest")
                .field("request_id", &self.request_id)
                .field("card", &card)
                .field("reason", &self.reason)
                .finish()
        }
    }

    impl fmt::Debug for UnsealRequest {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("UnsealRequest")
                .field("request_id", &self.request_id)
                .field("share", &REDACTED)
                .finish()
        }
    }

    impl fmt::Debug for RotateRootKeyResponse {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("RotateRootKeyResponse")
                .field("seal", &self.seal)
                .field("shares", &format_args!("[{} redacted]", self.shares.len()))
                .field("shares_withheld", &self.shares_withheld)
                .field("data_keys_rewrapped", &self.data_keys_rewrapped)
                .finish()
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// A `{:?}` of any card-carrying request never shows the card number.
        #[test]
        fn debug_output_never_contains_card_data() {
            let pan = "4242424242424242";
            let tokenize = TokenizeRequest {
                pan: pan.into(),
                holder_name: "Ada Lovelace".into(),
                ..Default::default()
            };
            let update = UpdateCardRequest {
                pan: pan.into(),
                ..Default::default()
            };
            let revoke = RevokeByFingerprintRequest {
                card: Some(revoke_by_fingerprint_request::Card::Pan(pan.into())),
                ..Default::default()
            };
            let unseal = UnsealRequest {
                share: pan.as_bytes().to_vec(),
                ..Default::default()
            };
            let rotated = RotateRootKeyResponse {
                shares: vec![pan.as_bytes().to_vec()],
                ..Default::default()
            };
            for text in [
                format!("{tokenize:?}"),
                format!("{update:?}"),
                format!("{revoke:?}"),
                format!("{unseal:?}"),
                format!("{rotated:?}"),
            ] {
                // Bytes print as decimal lists; check that form too.
                assert!(!text.contains("52, 50, 52, 50"), "{text}");
                assert!(!text.contains(pan), "{text}");
                assert!(!text.contains("Ada"), "{text}");
                assert!(text.contains("redacted"), "{text}");
            }
        }

        /// A `{:?}` of a response that shows a webhook secret never shows it.
        #[test]
        fn debug_output_never_contains_webhook_secrets() {
            let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
            let created = CreateWebhookEndpointResponse {
                endpoint: None,
                secret: secret.into(),
            };
            let rotated = RotateWebhookSecretResponse {
                endpoint: None,
                secret: secret.into(),
            };
            for text in [format!("{created:?}"), format!("{rotated:?}")] {
                assert!(!text.contains("whsec_"), "{text}");
                assert!(text.contains("redacted"), "{text}");
            }
        }
    }
}
