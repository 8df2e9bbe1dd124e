//! Roles and the caller identity carried in a client certificate.
//!
//! A Tandem identity is one SAN URI `<prefix><role>/<name>`, where the prefix defaults to
//! `spiffe://tandem.local/` and is configurable per deployment. A certificate with no such URI,
//! with two of them, or with a malformed one names no caller: ambiguity is never resolved in the
//! caller's favour. A well-formed identity whose role this version does not know is a proven
//! caller without a role ([`IdentityError::UnknownRole`]): the services answer it
//! `PERMISSION_DENIED`, not `UNAUTHENTICATED`, and audit who it was.

use std::fmt;

use rustls::pki_types::CertificateDer;

/// The default SAN URI prefix of Tandem identities.
pub const DEFAULT_URI_PREFIX: &str = "spiffe://tandem.local/";

/// Longest accepted identity name, in bytes.
const NAME_BYTES_MAX: usize = 64;

/// Longest accepted role name, in bytes (known or not).
const ROLE_BYTES_MAX: usize = 32;

/// The role of the services' own jobs in their audit trails; never a certificate's.
const RESERVED_ROLE: &str = "system";

/// Every role a Tandem certificate can carry (DESIGN section 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Vault: issues, reads and revokes tokens.
    Tokenizer,
    /// Vault: reads tokens and charges them (the orchestrator service's identity).
    Orchestrator,
    /// Vault: key administration and audit.
    Admin,
    /// Vault: reads the audit log only.
    Auditor,
    /// Orchestrator: creates and refunds payments.
    Payer,
    /// Orchestrator: card groups, policies and ledger reads.
    Treasury,
    /// Orchestrator: read-only access.
    Reader,
    /// Orchestrator: approves or rejects reconciliation adjustments others proposed (four
    /// eyes).
    Approver,
    /// Orchestrator: approves or rejects payments their risk assessment held for review (four
    /// eyes: never the payment's creator).
    Reviewer,
    /// The dashboard (`tandem-dashboard`): may call nothing as itself; it calls on behalf of
    /// the person whose certificate it verified, named in `x-tandem-on-behalf-of`, with that
    /// person's role (`tandem_runtime::admission`).
    Dashboard,
    /// A Tandem server's own certificate (not a caller role).
    Service,
}

impl Role {
    /// Every role, in a stable order.
    pub const ALL: [Role; 11] = [
        Role::Tokenizer,
        Role::Orchestrator,
        Role::Admin,
        Role::Auditor,
        Role::Payer,
        Role::Treasury,
        Role::Reader,
        Role::Approver,
        Role::Reviewer,
        Role::Dashboard,
        Role::Service,
    ];

    /// The caller roles, for which `tandemctl` issues client identities.
    pub const CALLERS: [Role; 10] = [
        Role::Tokenizer,
        Role::Orchestrator,
        Role::Admin,
        Role::Auditor,
        Role::Payer,
        Role::Treasury,
        Role::Reader,
        Role::Approver,
        Role::Reviewer,
        Role::Dashboard,
    ];

    /// The roles of people (not of a service, a server or the dashboard): those the
    /// dashboard serves and may call on behalf of.
    pub const PEOPLE: [Role; 7] = [
        Role::Admin,
        Role::Auditor,
        Role::Payer,
        Role::Treasury,
        Role::Reader,
        Role::Approver,
        Role::Reviewer,
    ];

    /// The role as it appears in certificates, file names and audit rows.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Tokenizer => "tokenizer",
            Role::Orchestrator => "orchestrator",
            Role::Admin => "admin",
            Role::Auditor => "auditor",
            Role::Payer => "payer",
            Role::Treasury => "treasury",
            Role::Reader => "reader",
            Role::Approver => "approver",
            Role::Reviewer => "reviewer",
            Role::Dashboard => "dashboard",
            Role::Service => "service",
        }
    }

    /// Parses a role name as written by [`Role::as_str`].
    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An authenticated caller: the role and name proven by its certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// What the caller may do.
    pub role: Role,
    /// Which instance of that role it is (for the audit log), e.g. `billing-api`.
    pub name: String,
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.role, self.name)
    }
}

/// Why a peer certificate does not name a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The connection carried no client certificate (impossible behind [`crate::server`]).
    #[error("no client certificate")]
    NoCertificate,
    /// The certificate is not valid DER X.509.
    #[error("client certificate cannot be parsed")]
    Malformed,
    /// No SAN URI starts with the configured prefix.
    #[error("client certificate has no identity URI")]
    NoIdentity,
    /// More than one SAN URI starts with the configured prefix.
    #[error("client certificate has more than one identity URI")]
    Ambiguous,
    /// The URI is not `<role>/<name>`, or its role or name is empty, too long or not
    /// `[a-z0-9._-]`.
    #[error("client certificate identity is not <role>/<name>")]
    Invalid,
    /// A well-formed identity whose role is none this version knows: the caller is proven, it
    /// only lacks a role. `identity` is its `<role>/<name>`, safe to log (checked characters).
    #[error("client certificate identity {identity} has no known role")]
    UnknownRole {
        /// The `<role>/<name>` as the certificate names it.
        identity: String,
        /// The role part of it.
        role: String,
    },
}

/// Reads the caller from the leaf certificate of a verified chain.
pub fn caller_from_certificate(
    leaf: &CertificateDer<'_>,
    uri_prefix: &str,
) -> Result<Caller, IdentityError> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|_| IdentityError::Malformed)?;
    let san = cert
        .subject_alternative_name()
        .map_err(|_| IdentityError::Malformed)?
        .ok_or(IdentityError::NoIdentity)?;
    let mut identities = san
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => uri.strip_prefix(uri_prefix),
            _ => None,
        });
    let identity = identities.next().ok_or(IdentityError::NoIdentity)?;
    if identities.next().is_some() {
        return Err(IdentityError::Ambiguous);
    }
    parse_identity(identity)
}

/// Parses `<role>/<name>`, the part of the identity URI after the prefix.
pub fn parse_identity(identity: &str) -> Result<Caller, IdentityError> {
    let (role, name) = identity.split_once('/').ok_or(IdentityError::Invalid)?;
    let well_formed = |part: &str, bytes_max: usize| {
        !part.is_empty()
            && part.len() <= bytes_max
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
    };
    if !well_formed(role, ROLE_BYTES_MAX) || !well_formed(name, NAME_BYTES_MAX) {
        return Err(IdentityError::Invalid);
    }
    // `system` names the vault's own jobs in audit rows: no certificate may pass as one.
    if role == RESERVED_ROLE {
        return Err(IdentityError::Invalid);
    }
    let Some(known) = Role::parse(role) else {
        return Err(IdentityError::UnknownRole {
            identity: identity.to_owned(),
            role: role.to_owned(),
        });
    };
    Ok(Caller {
        role: known,
        name: name.to_owned(),
    })
}

/// Reads the caller of a tonic request from the peer certificates of its TLS connection, or
/// takes the one a server layer already read from them and put in the request's extensions
/// (only server code can put anything there).
pub fn caller_of<T>(
    request: &tonic::Request<T>,
    uri_prefix: &str,
) -> Result<Caller, IdentityError> {
    if let Some(caller) = request.extensions().get::<Caller>() {
        return Ok(caller.clone());
    }
    let certs = request.peer_certs().ok_or(IdentityError::NoCertificate)?;
    let leaf = certs.first().ok_or(IdentityError::NoCertificate)?;
    caller_from_certificate(leaf, uri_prefix)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Identities parse only in the exact `<role>/<name>` form with a known role.
    #[test]
    fn parse_identity_table() {
        let cases: &[(&str, Option<(Role, &str)>)] = &[
            (
                "tokenizer/billing-api",
                Some((Role::Tokenizer, "billing-api")),
            ),
            ("admin/alice.smith", Some((Role::Admin, "alice.smith"))),
            ("orchestrator/orch_1", Some((Role::Orchestrator, "orch_1"))),
            ("tokenizer/", None),
            ("tokenizer", None),
            ("root/alice", None),
            ("/alice", None),
            ("Tokenizer/alice", None),
            ("tokenizer/Alice", None),
            ("tokenizer/a/b", None),
            ("tokenizer/a b", None),
            ("", None),
        ];
        for (text, expected) in cases {
            let got = parse_identity(text).ok().map(|c| (c.role, c.name));
            let expected = expected.map(|(role, name)| (role, name.to_owned()));
            assert_eq!(got, expected, "{text:?}");
        }
        let long = format!("reader/{}", "a".repeat(NAME_BYTES_MAX + 1));
        assert_eq!(parse_identity(&long), Err(IdentityError::Invalid));
        let long_role = format!("{}/alice", "r".repeat(ROLE_BYTES_MAX + 1));
        assert_eq!(parse_identity(&long_role), Err(IdentityError::Invalid));
    }

    /// A well-formed identity with a role nobody knows is a caller without a role, kept apart
    /// from malformed identities; a malformed one never passes as an unknown role.
    #[test]
    fn unknown_roles_are_told_apart_from_malformed_identities() {
        assert_eq!(
            parse_identity("root/alice"),
            Err(IdentityError::UnknownRole {
                identity: "root/alice".into(),
                role: "root".into(),
            })
        );
        for malformed in [
            "Root/alice",
            "root/Alice",
            "root/a b",
            "ro ot/alice",
            "/alice",
        ] {
            assert_eq!(
                parse_identity(malformed),
                Err(IdentityError::Invalid),
                "{malformed:?}"
            );
        }
    }

    /// Every role round-trips through its text form.
    #[test]
    fn roles_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.as_str()), Some(role));
        }
    }
}
