//! A small certificate authority for Tandem deployments and development.
//!
//! `tandemctl certs` uses it to make a CA plus one client identity per role and a server
//! certificate per service; `tandemctl dev` does the same under `.tandem/dev/`. Keys are ECDSA
//! P-256, written with mode 0600.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::{Duration, OffsetDateTime};

use crate::TlsError;
use crate::identity::Role;

/// A PEM certificate and its PEM private key.
pub struct IssuedIdentity {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The private key, PEM (PKCS#8). Written to disk only with mode 0600.
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedIdentity")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// A certificate authority that lives in memory while it issues a set of identities.
pub struct Authority {
    issuer: CertifiedIssuer<'static, KeyPair>,
    uri_prefix: String,
    validity: Duration,
}

impl Authority {
    /// Creates a self-signed CA named `common_name` whose certificates are valid for
    /// `validity_days`, with identities under `uri_prefix`.
    pub fn new(common_name: &str, uri_prefix: &str, validity_days: u32) -> Result<Self, TlsError> {
        let validity = Duration::days(i64::from(validity_days));
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name = name(common_name);
        set_validity(&mut params, validity);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        Ok(Self {
            issuer,
            uri_prefix: uri_prefix.to_owned(),
            validity,
        })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// Issues a client identity `<prefix><role>/<name>`.
    pub fn issue_client(&self, role: Role, name: &str) -> Result<IssuedIdentity, TlsError> {
        self.issue_identity(role.as_str(), name)
    }

    /// Issues a client identity `<prefix><role>/<name>` for a role given as text, which may be
    /// one this version does not know (a role of a newer release; a test of how services treat
    /// a proven caller without a known role).
    pub fn issue_identity(&self, role: &str, name: &str) -> Result<IssuedIdentity, TlsError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = self::name(&format!("{role}/{name}"));
        params.subject_alt_names = vec![SanType::URI(
            format!("{}{role}/{name}", self.uri_prefix).try_into()?,
        )];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    /// Issues a server certificate for `service` valid for the given DNS names and IP addresses.
    /// It also carries the identity `<prefix>service/<service>` so that a service can present it
    /// as a client to another service when a deployment wants that.
    pub fn issue_server(&self, service: &str, hosts: &[&str]) -> Result<IssuedIdentity, TlsError> {
        let mut params =
            CertificateParams::new(hosts.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name = name(service);
        params.subject_alt_names.push(SanType::URI(
            format!("{}{}/{service}", self.uri_prefix, Role::Service).try_into()?,
        ));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<IssuedIdentity, TlsError> {
        set_validity(&mut params, self.validity);
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedIdentity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Tandem");
    dn.push(DnType::CommonName, common_name);
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    // Back-date by an hour so that small clock skew between hosts does not reject a fresh cert.
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + validity;
}

/// The servers a full set of certificates covers, with the file stem of each.
pub const SERVERS: [&str; 3] = ["vault", "orchestrator", "dashboard"];

/// Writes a complete set under `dir`: `ca.pem`, `<server>-server.pem/.key` for each of
/// [`SERVERS`] (valid for `hosts`), and `<role>.pem/.key` for every caller role with the
/// identity `<role>/<name>`, but the approver's, `approver/<name>-approver`. Returns the files
/// written.
pub fn write_set(
    dir: &Path,
    uri_prefix: &str,
    hosts: &[&str],
    name: &str,
    validity_days: u32,
) -> Result<Vec<PathBuf>, TlsError> {
    Authority::new("Tandem CA", uri_prefix, validity_days)?.write_set(dir, hosts, name)
}

impl Authority {
    /// [`write_set`] with this authority as the CA.
    pub fn write_set(
        &self,
        dir: &Path,
        hosts: &[&str],
        name: &str,
    ) -> Result<Vec<PathBuf>, TlsError> {
        std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
            path: dir.to_owned(),
            source,
        })?;
        let mut written = Vec::new();
        let ca = dir.join("ca.pem");
        write(&ca, self.cert_pem().as_bytes(), 0o644)?;
        written.push(ca);
        let mut identities = Vec::new();
        for server in SERVERS {
            identities.push((
                format!("{server}-server"),
                self.issue_server(server, hosts)?,
            ));
        }
        for role in Role::CALLERS {
            // The approver and the reviewer are second people: four eyes refuse an approval by
            // the proposer's own name and a review by the payment creator's, and every other
            // identity of the set has `name`.
            let holder = match role {
                Role::Approver => format!("{name}-approver"),
                Role::Reviewer => format!("{name}-reviewer"),
                _ => name.to_owned(),
            };
            identities.push((role.to_string(), self.issue_client(role, &holder)?));
        }
        written.extend(write_identities(dir, identities)?);
        Ok(written)
    }

    /// Writes `<stem>.pem/.key` under `dir` for the identity `<role>/<name>` (see
    /// [`Authority::issue_identity`]). Returns the files written.
    pub fn write_identity(
        &self,
        dir: &Path,
        stem: &str,
        role: &str,
        name: &str,
    ) -> Result<Vec<PathBuf>, TlsError> {
        write_identities(
            dir,
            vec![(stem.to_owned(), self.issue_identity(role, name)?)],
        )
    }
}

fn write_identities(
    dir: &Path,
    identities: Vec<(String, IssuedIdentity)>,
) -> Result<Vec<PathBuf>, TlsError> {
    let mut written = Vec::new();
    for (stem, identity) in identities {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        write(&key, identity.key_pem.as_bytes(), 0o600)?;
        write(&cert, identity.cert_pem.as_bytes(), 0o644)?;
        written.extend([cert, key]);
    }
    Ok(written)
}

fn write(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let error = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    // Remove first so a stricter mode applies even where the file existed with a looser one.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(error(e)),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(error)?;
    file.write_all(contents).map_err(error)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::caller_from_certificate;
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;

    /// An issued client certificate carries exactly the identity it was issued for.
    #[test]
    fn issued_client_identity_round_trips() {
        let prefix = crate::identity::DEFAULT_URI_PREFIX;
        let authority = Authority::new("test CA", prefix, 1).unwrap();
        for role in Role::CALLERS {
            let issued = authority.issue_client(role, "unit-test").unwrap();
            let der = CertificateDer::from_pem_slice(issued.cert_pem.as_bytes()).unwrap();
            let caller = caller_from_certificate(&der, prefix).unwrap();
            assert_eq!(caller.role, role);
            assert_eq!(caller.name, "unit-test");
            // Under another prefix the same certificate names nobody.
            assert!(caller_from_certificate(&der, "spiffe://other.example/").is_err());
        }
    }

    /// Private keys are written readable by their owner only.
    #[test]
    fn keys_are_written_owner_only() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = std::env::temp_dir().join(format!("tandem-tls-test-{}", std::process::id()));
        let written = write_set(&dir, "spiffe://tandem.local/", &["localhost"], "t", 1).unwrap();
        assert_eq!(written.len(), 1 + 2 * (SERVERS.len() + Role::CALLERS.len()));
        for path in written {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            let is_key = path.extension().is_some_and(|e| e == "key");
            assert_eq!(mode, if is_key { 0o600 } else { 0o644 }, "{path:?}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }
}
