//! Mutual TLS for every Tandem port, and the caller identity it proves.
//!
//! # Layout
//!
//! - [`identity`]: roles and the caller read from a peer certificate's SAN URI
//!   (`spiffe://tandem.local/<role>/<name>` by default).
//! - [`server`]: a TLS 1.3-only rustls server configuration that requires a client certificate
//!   from the configured CA, and the accept loop that hands finished handshakes to tonic.
//! - [`client`]: a tonic channel that presents a client certificate.
//! - [`issue`]: a certificate authority and per-role identities made with rcgen, for
//!   `tandemctl certs` (deployments) and `tandemctl dev` (local development).
//!
//! # Invariants
//!
//! - There is no plaintext mode: a server built here only ever yields streams whose TLS
//!   handshake completed with a client certificate chaining to the configured CA. A connection
//!   without one never reaches a gRPC handler.
//! - The crate decides *who* is calling; each service decides *what* that caller may do.

pub mod client;
pub mod identity;
pub mod issue;
pub mod server;

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Errors while loading or building TLS material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held no usable item.
    #[error("cannot read {what} from {path}: {detail}")]
    Pem {
        /// What the file should hold ("certificate", "private key", "CA certificate").
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it failed.
        detail: String,
    },
    /// rustls refused the configuration (for example a key that does not match the certificate).
    #[error("invalid TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client-certificate verifier could not be built from the CA certificates.
    #[error("invalid client CA: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    /// Certificate generation failed.
    #[error("cannot issue certificate: {0}")]
    Issue(#[from] rcgen::Error),
    /// A file could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
}

/// Where one party's TLS material lives: its certificate chain, its private key, and the CA
/// that its peers' certificates must chain to.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain presented to peers.
    pub cert_path: PathBuf,
    /// PEM private key (PKCS#8, SEC1 or PKCS#1) for `cert_path`.
    pub key_path: PathBuf,
    /// PEM CA certificate(s) that peer certificates must chain to.
    pub ca_path: PathBuf,
}

impl TlsFiles {
    /// The conventional layout of a directory made by `tandemctl certs` or `tandemctl dev`:
    /// `<dir>/<name>.pem`, `<dir>/<name>.key` and `<dir>/ca.pem`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            cert_path: dir.join(format!("{name}.pem")),
            key_path: dir.join(format!("{name}.key")),
            ca_path: dir.join("ca.pem"),
        }
    }
}

fn load_certs(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |detail: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        detail,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("no certificate in file".into()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    // The error text of the PEM parser never includes key bytes, only the failure kind.
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Pem {
        what: "private key",
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Pem {
        what,
        path: path.to_owned(),
        detail: e.to_string(),
    })
}
