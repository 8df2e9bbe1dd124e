//! People's dev identities as PKCS#12 files, for browsers.
//!
//! The dashboard asks every browser for a client certificate from the dev CA, and a browser
//! presents only one it holds in its own store, which imports PKCS#12 rather than PEM. So beside
//! each person's `<role>.pem` and `<role>.key` (the roles of [`Role::PEOPLE`]) `tandemctl dev`
//! writes `<role>.p12`: that key, under the friendly name `Tandem dev <role>`, with the chain
//! [certificate, dev CA], protected by [`PASSWORD`]. Browsers list the imported certificate by
//! its subject, `O=Tandem, CN=<role>/dev` (`<role>/dev-approver` and `-reviewer` for the second
//! people).
//!
//! The files use the modern profile only, the one OpenSSL 3's `pkcs12 -export` writes by
//! default: PBES2 (PBKDF2 with HMAC-SHA256, AES-256-CBC) for the key and the certificates, and an
//! HMAC-SHA256 integrity MAC, which Chromium and Firefox import, OpenSSL 3 reads without
//! `-legacy`, and Playwright's `clientCertificates` (`pfxPath`, `passphrase`) accepts. The `pfx`
//! module below writes them itself, from RFC 7292, on the DER writer, hashes and AES the
//! workspace already has: a PKCS#12 crate would bring some thirty crates into the tree for one
//! dev convenience. A `.p12` is rewritten only when it is missing or older than one of the PEM
//! files it is made from, so a regenerated set gets new ones.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use tandem_tls::TlsFiles;
use tandem_tls::identity::Role;
use zeroize::Zeroizing;

/// The password of every dev `.p12`. It protects nothing: the same key sits unencrypted in
/// `<role>.key` beside it. Browsers and Playwright refuse a PKCS#12 file without one.
pub const PASSWORD: &str = "tandem-dev";

/// Writes `<dir>/<role>.p12` for every role of [`Role::PEOPLE`] from `<role>.pem`,
/// `<role>.key` and `ca.pem`, where it is missing or older than one of them, with mode 0600.
/// Returns the files written.
pub fn write_pkcs12(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for role in Role::PEOPLE {
        let files = TlsFiles::in_dir(dir, role.as_str());
        let path = pkcs12_path(dir, role);
        if is_fresh(&path, &[&files.cert_path, &files.key_path, &files.ca_path]) {
            continue;
        }
        let contents = pkcs12(role, &files)?;
        write_owner_only(&path, &contents)?;
        written.push(path);
    }
    Ok(written)
}

/// How a person imports their dev identity into a browser, and trusts the dev CA, for the
/// dashboard: a few lines naming `<dir>/treasury.p12`, its password and the other roles' files.
pub fn import_instructions(dir: &Path) -> String {
    /// The role whose file is named in full: the dashboard's main user.
    const EXAMPLE_ROLE: Role = Role::Treasury;
    // A browser's file dialog wants a whole path; this one is taken from the current
    // directory, without touching the file system.
    let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned());
    let example = pkcs12_path(&dir, EXAMPLE_ROLE);
    let others: Vec<String> = Role::PEOPLE
        .iter()
        .filter(|role| **role != EXAMPLE_ROLE)
        .map(|role| format!("{role}.p12"))
        .collect();
    format!(
        "To use the dashboard in a browser, import a person's identity, {example} \
         (password {PASSWORD}):\n\
         \x20 Chromium: Settings > Privacy and security > Security > Manage certificates > \
         Your certificates > Import\n\
         \x20 Firefox: Settings > Privacy & Security > Certificates > View Certificates > \
         Your Certificates > Import\n\
         and trust {ca} as an authority for websites (the same dialogs, under Authorities).\n\
         The other roles' identities are beside it, with the same password: {others}.",
        ca = dir.join("ca.pem").display(),
        example = example.display(),
        others = others.join(", "),
    )
}

fn pkcs12_path(dir: &Path, role: Role) -> PathBuf {
    dir.join(format!("{role}.p12"))
}

/// Whether `target` exists and is no older than any of `sources`. Anything unreadable counts
/// as stale, so that writing it again reports the real failure.
fn is_fresh(target: &Path, sources: &[&Path]) -> bool {
    let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let Some(target_modified) = modified(target) else {
        return false;
    };
    sources
        .iter()
        .all(|source| modified(source).is_some_and(|source| source <= target_modified))
}

/// The PKCS#12 file of `role`'s identity in `files`.
fn pkcs12(role: Role, files: &TlsFiles) -> anyhow::Result<Vec<u8>> {
    let leaf = read_certificate(&files.cert_path)?;
    let authority = read_certificate(&files.ca_path)?;
    // The PEM parser's errors name the failure, never the key's bytes.
    let key = PrivatePkcs8KeyDer::from_pem_file(&files.key_path).with_context(|| {
        format!(
            "cannot read a PKCS#8 private key from {}",
            files.key_path.display()
        )
    })?;
    let key = Zeroizing::new(key);
    let friendly_name = format!("Tandem dev {role}");
    let identity = pfx::Identity {
        friendly_name: &friendly_name,
        key_pkcs8: key.secret_pkcs8_der(),
        leaf: &leaf,
        authority: &authority,
    };
    let randomness = pfx::Randomness::draw()
        .with_context(|| format!("cannot draw the salts of the PKCS#12 file of {role}"))?;
    Ok(pfx::encode(&identity, PASSWORD, &randomness))
}

/// The first certificate of the PEM file at `path`.
fn read_certificate(path: &Path) -> anyhow::Result<CertificateDer<'static>> {
    CertificateDer::from_pem_file(path)
        .with_context(|| format!("cannot read a certificate from {}", path.display()))
}

/// Writes `contents` to `path` readable by its owner only. It writes a temporary file beside
/// it and renames that over `path`, so a run stopped half-way never leaves a truncated `.p12`
/// that looks newer than its PEMs, and the new file has mode 0600 whatever the old one had.
fn write_owner_only(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let temporary = path.with_extension("p12.partial");
    match std::fs::remove_file(&temporary) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", temporary.display())),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .with_context(|| format!("creating {}", temporary.display()))?;
    file.write_all(contents)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

mod pfx {
    //! PKCS#12 files (RFC 7292) of one identity, written the way OpenSSL 3's `pkcs12 -export`
    //! writes them by default, so that everything that reads those reads these:
    //!
    //! ```text
    //! PFX { version 3,
    //!       authSafe: Data(AuthenticatedSafe [
    //!           EncryptedData(PBES2, SafeContents [CertBag(leaf) + attributes, CertBag(authority)]),
    //!           Data(SafeContents [ShroudedKeyBag(PBES2(PKCS#8 key)) + attributes])]),
    //!       macData: HMAC-SHA256 of the AuthenticatedSafe, keyed by the PKCS#12 KDF }
    //! ```
    //!
    //! Both bags of the identity carry its friendly name and a local key id (the SHA-256 of the
    //! leaf certificate) that ties the key to its certificate. Every random input is drawn afresh
    //! for each file ([`Randomness`]); [`encode`] itself is a pure function of its inputs.

    use aes::Aes256;
    use cbc::cipher::{BlockEncryptMut as _, KeyIvInit as _};
    use hmac::Mac as _;
    use sha2::digest::generic_array::GenericArray;
    use sha2::{Digest as _, Sha256};
    use yasna::models::ObjectIdentifier;
    use yasna::{DERWriter, Tag};
    use zeroize::Zeroizing;

    /// Iterations of PBKDF2 (the encryption keys) and of the PKCS#12 KDF (the MAC key): Java
    /// keytool's default, above OpenSSL's 2048. A file costs three derivations, a few
    /// milliseconds.
    pub(super) const KDF_ITERATIONS: u32 = 10_000;
    /// Bytes of every salt: 128 bits, as RFC 8018 recommends at least 64.
    pub(super) const SALT_LEN: usize = 16;
    /// Bytes of an AES block, and of the CBC initialisation vector.
    pub(super) const BLOCK_LEN: usize = 16;
    /// Bytes of an AES-256 key, of a SHA-256 digest, and of the MAC key.
    pub(super) const KEY_LEN: usize = 32;

    /// The PKCS#12 KDF's `ID` byte for a MAC key (RFC 7292, appendix B.3).
    pub(super) const KDF_ID_MAC: u8 = 3;

    // The object identifiers of the file, from RFC 7292 (PKCS#12), RFC 2315 (PKCS#7), RFC 2985
    // (PKCS#9), RFC 8018 (PKCS#5) and NIST's algorithm registry.
    pub(super) const ID_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 1];
    pub(super) const ID_ENCRYPTED_DATA: &[u64] = &[1, 2, 840, 113549, 1, 7, 6];
    pub(super) const PKCS8_SHROUDED_KEY_BAG: &[u64] = &[1, 2, 840, 113549, 1, 12, 10, 1, 2];
    pub(super) const CERT_BAG: &[u64] = &[1, 2, 840, 113549, 1, 12, 10, 1, 3];
    pub(super) const X509_CERTIFICATE: &[u64] = &[1, 2, 840, 113549, 1, 9, 22, 1];
    pub(super) const FRIENDLY_NAME: &[u64] = &[1, 2, 840, 113549, 1, 9, 20];
    pub(super) const LOCAL_KEY_ID: &[u64] = &[1, 2, 840, 113549, 1, 9, 21];
    pub(super) const PBES2: &[u64] = &[1, 2, 840, 113549, 1, 5, 13];
    pub(super) const PBKDF2: &[u64] = &[1, 2, 840, 113549, 1, 5, 12];
    pub(super) const HMAC_WITH_SHA256: &[u64] = &[1, 2, 840, 113549, 2, 9];
    pub(super) const AES256_CBC: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 1, 42];
    pub(super) const SHA256: &[u64] = &[2, 16, 840, 1, 101, 3, 4, 2, 1];

    /// What one file holds: a private key and its chain, leaf first.
    pub(super) struct Identity<'a> {
        /// The name browsers and OpenSSL show for the entry.
        pub(super) friendly_name: &'a str,
        /// The private key, PKCS#8 DER; it leaves this module only encrypted.
        pub(super) key_pkcs8: &'a [u8],
        /// The key's certificate, DER.
        pub(super) leaf: &'a [u8],
        /// The certificate of the CA that issued `leaf`, DER.
        pub(super) authority: &'a [u8],
    }

    /// The random inputs of one PBES2 encryption.
    pub(super) struct Pbes2Params {
        /// PBKDF2's salt, so that no two encryptions share a key.
        pub(super) salt: [u8; SALT_LEN],
        /// AES-CBC's initialisation vector.
        pub(super) iv: [u8; BLOCK_LEN],
    }

    /// The random inputs of one file: none is ever reused, in this file or another.
    pub(super) struct Randomness {
        /// For the encryption of the certificates.
        pub(super) certificates: Pbes2Params,
        /// For the encryption of the private key.
        pub(super) key: Pbes2Params,
        /// The PKCS#12 KDF's salt for the MAC key.
        pub(super) mac_salt: [u8; SALT_LEN],
    }

    impl Randomness {
        /// Fresh randomness from the operating system.
        pub(super) fn draw() -> Result<Randomness, getrandom::Error> {
            let params = || -> Result<Pbes2Params, getrandom::Error> {
                let mut params = Pbes2Params {
                    salt: [0; SALT_LEN],
                    iv: [0; BLOCK_LEN],
                };
                getrandom::getrandom(&mut params.salt)?;
                getrandom::getrandom(&mut params.iv)?;
                Ok(params)
            };
            let certificates = params()?;
            let key = params()?;
            let mut mac_salt = [0; SALT_LEN];
            getrandom::getrandom(&mut mac_salt)?;
            Ok(Randomness {
                certificates,
                key,
                mac_salt,
            })
        }
    }

    /// The DER of the PKCS#12 file of `identity`, protected by `password`.
    pub(super) fn encode(identity: &Identity, password: &str, randomness: &Randomness) -> Vec<u8> {
        assert!(!identity.key_pkcs8.is_empty(), "a key");
        assert!(!identity.leaf.is_empty() && !identity.authority.is_empty());
        let local_key_id: [u8; KEY_LEN] = Sha256::digest(identity.leaf).into();
        let attributes = BagAttributes {
            friendly_name: identity.friendly_name,
            local_key_id: &local_key_id,
        };
        let certificates = yasna::construct_der(|writer| {
            writer.write_sequence(|writer| {
                write_cert_bag(writer.next(), identity.leaf, Some(&attributes));
                write_cert_bag(writer.next(), identity.authority, None);
            })
        });
        let certificates = pbes2_encrypt(password, &randomness.certificates, &certificates);
        let key = pbes2_encrypt(password, &randomness.key, identity.key_pkcs8);
        let keys = yasna::construct_der(|writer| {
            writer.write_sequence(|writer| {
                write_safe_bag(
                    writer.next(),
                    PKCS8_SHROUDED_KEY_BAG,
                    |writer| {
                        // EncryptedPrivateKeyInfo
                        writer.write_sequence(|writer| {
                            write_pbes2_algorithm(writer.next(), &randomness.key);
                            writer.next().write_bytes(&key);
                        })
                    },
                    Some(&attributes),
                );
            })
        });
        let authenticated_safe = yasna::construct_der(|writer| {
            writer.write_sequence(|writer| {
                write_encrypted_data(writer.next(), &randomness.certificates, &certificates);
                write_data(writer.next(), &keys);
            })
        });
        let mac = mac(
            password,
            &randomness.mac_salt,
            KDF_ITERATIONS,
            &authenticated_safe,
        );
        yasna::construct_der(|writer| {
            writer.write_sequence(|writer| {
                writer.next().write_u8(3);
                write_data(writer.next(), &authenticated_safe);
                // MacData
                writer.next().write_sequence(|writer| {
                    // DigestInfo
                    writer.next().write_sequence(|writer| {
                        write_algorithm(writer.next(), SHA256);
                        writer.next().write_bytes(&mac);
                    });
                    writer.next().write_bytes(&randomness.mac_salt);
                    writer.next().write_u32(KDF_ITERATIONS);
                })
            })
        })
    }

    /// The HMAC-SHA256 of `authenticated_safe` (the DER of the AuthenticatedSafe) with the key
    /// that the PKCS#12 KDF derives from `password` and `salt`.
    pub(super) fn mac(
        password: &str,
        salt: &[u8],
        iterations: u32,
        authenticated_safe: &[u8],
    ) -> [u8; KEY_LEN] {
        let key = pkcs12_kdf(password, salt, KDF_ID_MAC, iterations);
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(key.as_ref())
            .expect("HMAC takes a key of any length");
        mac.update(authenticated_safe);
        mac.finalize().into_bytes().into()
    }

    /// The first 32 bytes of the PKCS#12 KDF (RFC 7292, appendix B.2) with SHA-256, for the
    /// purpose `id`: SHA-256 applied `iterations` times to `D || I`, where `D` is 64 bytes of
    /// `id` and `I` the salt then the password as a BMPString, each repeated to a whole number
    /// of 64-byte blocks. One block of output is all a MAC key needs, so the derivation of
    /// further blocks (step 6C, which changes `I`) is not implemented.
    pub(super) fn pkcs12_kdf(
        password: &str,
        salt: &[u8],
        id: u8,
        iterations: u32,
    ) -> Zeroizing<[u8; KEY_LEN]> {
        /// SHA-256's block, the KDF's `v`.
        const V: usize = 64;
        assert!(iterations >= 1, "the PKCS#12 KDF hashes at least once");
        let password = bmp_password(password);
        let mut hasher = Sha256::new();
        hasher.update([id; V]);
        for part in [salt, password.as_slice()] {
            let len = part.len().div_ceil(V) * V;
            let mut repeated = Zeroizing::new(Vec::with_capacity(len));
            repeated.extend(part.iter().cycle().take(len));
            hasher.update(repeated.as_slice());
        }
        let mut digest = Zeroizing::new([0; KEY_LEN]);
        hasher.finalize_into(GenericArray::from_mut_slice(digest.as_mut()));
        for _ in 1..iterations {
            let hasher = Sha256::new_with_prefix(digest.as_ref());
            hasher.finalize_into(GenericArray::from_mut_slice(digest.as_mut()));
        }
        digest
    }

    /// `password` as the PKCS#12 KDF takes it: a BMPString (UTF-16, big-endian) with a final
    /// zero character.
    fn bmp_password(password: &str) -> Zeroizing<Vec<u8>> {
        // A UTF-16 unit per UTF-8 byte at most: the vector never grows, so it leaves no copy
        // behind.
        let mut bmp = Zeroizing::new(Vec::with_capacity(2 * password.len() + 2));
        for unit in password.encode_utf16() {
            bmp.extend_from_slice(&unit.to_be_bytes());
        }
        bmp.extend_from_slice(&[0, 0]);
        bmp
    }

    /// The key PBES2 derives from `password` (its UTF-8 bytes, as OpenSSL 3 passes them) with
    /// PBKDF2-HMAC-SHA256.
    pub(super) fn pbes2_key(
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> Zeroizing<[u8; KEY_LEN]> {
        let mut key = Zeroizing::new([0; KEY_LEN]);
        pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, key.as_mut());
        key
    }

    /// `plaintext` encrypted with PBES2: AES-256-CBC under the PBKDF2 key of `password`, after
    /// PKCS#7 padding.
    fn pbes2_encrypt(password: &str, params: &Pbes2Params, plaintext: &[u8]) -> Vec<u8> {
        let key = pbes2_key(password, &params.salt, KDF_ITERATIONS);
        // One to a whole block of padding bytes, each holding the padding's length.
        let padding = BLOCK_LEN - plaintext.len() % BLOCK_LEN;
        let padded_len = plaintext.len() + padding;
        // Allocated once at its final size, so no copy of the plaintext is left behind.
        let mut buffer = Zeroizing::new(Vec::with_capacity(padded_len));
        buffer.extend_from_slice(plaintext);
        // `padding` is at most BLOCK_LEN, 16.
        buffer.resize(padded_len, padding as u8);
        let mut encryptor = cbc::Encryptor::<Aes256>::new(
            GenericArray::from_slice(key.as_ref()),
            GenericArray::from_slice(&params.iv),
        );
        for block in buffer.chunks_exact_mut(BLOCK_LEN) {
            encryptor.encrypt_block_mut(GenericArray::from_mut_slice(block));
        }
        // Ciphertext now: it may leave the zeroizing buffer.
        std::mem::take(&mut *buffer)
    }

    /// The attributes of the identity's two bags.
    struct BagAttributes<'a> {
        /// PKCS#9 friendlyName, a BMPString.
        friendly_name: &'a str,
        /// PKCS#9 localKeyId: the same octets on the key and on its certificate.
        local_key_id: &'a [u8],
    }

    /// A ContentInfo of type data holding `content`.
    fn write_data(writer: DERWriter, content: &[u8]) {
        writer.write_sequence(|writer| {
            writer.next().write_oid(&oid(ID_DATA));
            writer
                .next()
                .write_tagged(Tag::context(0), |writer| writer.write_bytes(content));
        })
    }

    /// A ContentInfo of type encryptedData holding `ciphertext`, a SafeContents encrypted with
    /// PBES2 under `params`.
    fn write_encrypted_data(writer: DERWriter, params: &Pbes2Params, ciphertext: &[u8]) {
        writer.write_sequence(|writer| {
            writer.next().write_oid(&oid(ID_ENCRYPTED_DATA));
            writer.next().write_tagged(Tag::context(0), |writer| {
                // EncryptedData
                writer.write_sequence(|writer| {
                    writer.next().write_u8(0);
                    // EncryptedContentInfo
                    writer.next().write_sequence(|writer| {
                        writer.next().write_oid(&oid(ID_DATA));
                        write_pbes2_algorithm(writer.next(), params);
                        writer
                            .next()
                            .write_tagged_implicit(Tag::context(0), |writer| {
                                writer.write_bytes(ciphertext)
                            });
                    })
                })
            });
        })
    }

    /// A CertBag of the X.509 certificate `der`, in a SafeBag.
    fn write_cert_bag(writer: DERWriter, der: &[u8], attributes: Option<&BagAttributes>) {
        write_safe_bag(
            writer,
            CERT_BAG,
            |writer| {
                writer.write_sequence(|writer| {
                    writer.next().write_oid(&oid(X509_CERTIFICATE));
                    writer
                        .next()
                        .write_tagged(Tag::context(0), |writer| writer.write_bytes(der));
                })
            },
            attributes,
        );
    }

    /// A SafeBag of type `bag_id`, whose value `write_value` writes.
    fn write_safe_bag(
        writer: DERWriter,
        bag_id: &[u64],
        write_value: impl FnOnce(DERWriter),
        attributes: Option<&BagAttributes>,
    ) {
        writer.write_sequence(|writer| {
            writer.next().write_oid(&oid(bag_id));
            writer.next().write_tagged(Tag::context(0), write_value);
            let Some(attributes) = attributes else {
                return;
            };
            writer.next().write_set_of(|writer| {
                writer.next().write_sequence(|writer| {
                    writer.next().write_oid(&oid(FRIENDLY_NAME));
                    writer.next().write_set_of(|writer| {
                        writer.next().write_bmp_string(attributes.friendly_name)
                    });
                });
                writer.next().write_sequence(|writer| {
                    writer.next().write_oid(&oid(LOCAL_KEY_ID));
                    writer
                        .next()
                        .write_set_of(|writer| writer.next().write_bytes(attributes.local_key_id));
                });
            });
        })
    }

    /// The AlgorithmIdentifier of PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC under `params`.
    fn write_pbes2_algorithm(writer: DERWriter, params: &Pbes2Params) {
        writer.write_sequence(|writer| {
            writer.next().write_oid(&oid(PBES2));
            // PBES2-params
            writer.next().write_sequence(|writer| {
                writer.next().write_sequence(|writer| {
                    writer.next().write_oid(&oid(PBKDF2));
                    // PBKDF2-params; the key length follows from the cipher.
                    writer.next().write_sequence(|writer| {
                        writer.next().write_bytes(&params.salt);
                        writer.next().write_u32(KDF_ITERATIONS);
                        write_algorithm(writer.next(), HMAC_WITH_SHA256);
                    });
                });
                writer.next().write_sequence(|writer| {
                    writer.next().write_oid(&oid(AES256_CBC));
                    writer.next().write_bytes(&params.iv);
                });
            });
        })
    }

    /// An AlgorithmIdentifier without parameters: `id` and NULL, as OpenSSL writes those of
    /// digests and HMACs.
    fn write_algorithm(writer: DERWriter, id: &[u64]) {
        writer.write_sequence(|writer| {
            writer.next().write_oid(&oid(id));
            writer.next().write_null();
        })
    }

    /// The object identifier of `components`, one of the constants above.
    pub(super) fn oid(components: &[u64]) -> ObjectIdentifier {
        ObjectIdentifier::from_slice(components)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cbc::cipher::{BlockDecryptMut as _, KeyIvInit as _};
    use sha2::Digest as _;
    use std::time::{Duration, SystemTime};
    use yasna::{ASN1Result, BERReader, Tag};

    /// A fresh dev set in a directory of its own, removed when dropped.
    struct DevSet {
        dir: PathBuf,
    }

    impl DevSet {
        fn new() -> DevSet {
            let dir = std::env::temp_dir().join(format!(
                "tandemctl-browser-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4()
            ));
            let set = DevSet { dir };
            set.regenerate();
            set
        }

        /// Writes a whole new set (a new CA and new identities) over the old one.
        fn regenerate(&self) {
            tandem_tls::issue::write_set(
                &self.dir,
                tandem_tls::identity::DEFAULT_URI_PREFIX,
                &["localhost", "127.0.0.1"],
                "dev",
                1,
            )
            .unwrap();
        }

        fn bytes(&self, role: Role) -> Vec<u8> {
            std::fs::read(pkcs12_path(&self.dir, role)).unwrap()
        }

        fn read(&self, role: Role) -> Opened {
            open(&self.bytes(role), PASSWORD).unwrap()
        }

        fn pem_certificate(&self, stem: &str) -> CertificateDer<'static> {
            CertificateDer::from_pem_file(self.dir.join(format!("{stem}.pem"))).unwrap()
        }

        fn pem_key(&self, role: Role) -> PrivatePkcs8KeyDer<'static> {
            PrivatePkcs8KeyDer::from_pem_file(self.dir.join(format!("{role}.key"))).unwrap()
        }

        /// Makes `role`'s `.p12` look written an hour before its PEMs.
        fn backdate(&self, role: Role) {
            let file = std::fs::File::options()
                .write(true)
                .open(pkcs12_path(&self.dir, role))
                .unwrap();
            let hour_ago = SystemTime::now() - Duration::from_secs(3600);
            file.set_modified(hour_ago).unwrap();
        }
    }

    impl Drop for DevSet {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.dir).ok();
        }
    }

    /// The bags of a PKCS#12 file, in the file's order, as [`open`] reads them back.
    #[derive(Debug, PartialEq)]
    struct Opened {
        bags: Vec<Bag>,
    }

    /// A SafeBag: its content and the attributes Tandem writes.
    #[derive(Debug, PartialEq)]
    struct Bag {
        content: BagContent,
        friendly_name: Option<String>,
        local_key_id: Option<Vec<u8>>,
    }

    /// What a bag holds.
    #[derive(Debug, PartialEq)]
    enum BagContent {
        /// X.509 DER.
        Certificate(Vec<u8>),
        /// PKCS#8 DER, decrypted.
        Key(Vec<u8>),
    }

    impl Opened {
        fn certificates(&self) -> Vec<&[u8]> {
            (self.bags.iter())
                .filter_map(|bag| match &bag.content {
                    BagContent::Certificate(der) => Some(der.as_slice()),
                    BagContent::Key(_) => None,
                })
                .collect()
        }
    }

    /// Reads the PKCS#12 file `bytes` with `password` as [`pfx::encode`] writes them: checks
    /// its MAC, then decrypts the certificates and the key. An error only for a wrong MAC; a
    /// file of any other shape panics.
    fn open(bytes: &[u8], password: &str) -> anyhow::Result<Opened> {
        let (authenticated_safe, mac, mac_salt, iterations) = yasna::parse_der(bytes, |reader| {
            reader.read_sequence(|reader| {
                assert_eq!(reader.next().read_u8()?, 3, "version");
                let authenticated_safe = read_data(reader.next())?;
                reader.next().read_sequence(|reader| {
                    let mac = reader.next().read_sequence(|reader| {
                        read_algorithm(reader.next(), pfx::SHA256)?;
                        reader.next().read_bytes()
                    })?;
                    let salt = reader.next().read_bytes()?;
                    let iterations = reader.next().read_u32()?;
                    Ok((authenticated_safe, mac, salt, iterations))
                })
            })
        })
        .unwrap();
        assert_eq!(iterations, pfx::KDF_ITERATIONS);
        assert_eq!(mac_salt.len(), pfx::SALT_LEN);
        let expected = pfx::mac(password, &mac_salt, iterations, &authenticated_safe);
        anyhow::ensure!(mac == expected, "wrong MAC");

        let contents = yasna::parse_der(&authenticated_safe, |reader| {
            reader.collect_sequence_of(|reader| {
                reader.read_sequence(|reader| {
                    let content_type = reader.next().read_oid()?;
                    reader.next().read_tagged(Tag::context(0), |reader| {
                        if content_type == pfx::oid(pfx::ID_DATA) {
                            return reader.read_bytes();
                        }
                        assert_eq!(content_type, pfx::oid(pfx::ID_ENCRYPTED_DATA));
                        reader.read_sequence(|reader| {
                            assert_eq!(reader.next().read_u8()?, 0, "version");
                            reader.next().read_sequence(|reader| {
                                assert_eq!(reader.next().read_oid()?, pfx::oid(pfx::ID_DATA));
                                let params = read_pbes2_algorithm(reader.next())?;
                                let ciphertext = reader
                                    .next()
                                    .read_tagged_implicit(Tag::context(0), |reader| {
                                        reader.read_bytes()
                                    })?;
                                Ok(pbes2_decrypt(password, &params, &ciphertext))
                            })
                        })
                    })
                })
            })
        })
        .unwrap();
        let mut bags = Vec::new();
        for safe_contents in contents {
            let found = yasna::parse_der(&safe_contents, |reader| {
                reader.collect_sequence_of(|reader| read_safe_bag(reader, password))
            })
            .unwrap();
            bags.extend(found);
        }
        Ok(Opened { bags })
    }

    /// The content of a ContentInfo of type data.
    fn read_data(reader: BERReader) -> ASN1Result<Vec<u8>> {
        reader.read_sequence(|reader| {
            assert_eq!(reader.next().read_oid()?, pfx::oid(pfx::ID_DATA));
            reader
                .next()
                .read_tagged(Tag::context(0), |reader| reader.read_bytes())
        })
    }

    /// Reads a SafeBag, decrypting a shrouded key.
    fn read_safe_bag(reader: BERReader, password: &str) -> ASN1Result<Bag> {
        reader.read_sequence(|reader| {
            let bag_id = reader.next().read_oid()?;
            let content = reader.next().read_tagged(Tag::context(0), |reader| {
                reader.read_sequence(|reader| {
                    if bag_id == pfx::oid(pfx::CERT_BAG) {
                        let cert_id = reader.next().read_oid()?;
                        assert_eq!(cert_id, pfx::oid(pfx::X509_CERTIFICATE));
                        let der = reader
                            .next()
                            .read_tagged(Tag::context(0), |reader| reader.read_bytes())?;
                        return Ok(BagContent::Certificate(der));
                    }
                    assert_eq!(bag_id, pfx::oid(pfx::PKCS8_SHROUDED_KEY_BAG));
                    let params = read_pbes2_algorithm(reader.next())?;
                    let ciphertext = reader.next().read_bytes()?;
                    Ok(BagContent::Key(pbes2_decrypt(
                        password,
                        &params,
                        &ciphertext,
                    )))
                })
            })?;
            let mut bag = Bag {
                content,
                friendly_name: None,
                local_key_id: None,
            };
            let attributes = reader.read_optional(|reader| {
                reader.collect_set_of(|reader| {
                    reader.read_sequence(|reader| {
                        let id = reader.next().read_oid()?;
                        let values = reader.next().collect_set_of(|reader| reader.read_der())?;
                        Ok((id, values))
                    })
                })
            })?;
            for (id, values) in attributes.unwrap_or_default() {
                let [value] = values.as_slice() else {
                    panic!("{id}: {} values", values.len());
                };
                if id == pfx::oid(pfx::FRIENDLY_NAME) {
                    bag.friendly_name = Some(yasna::parse_der(value, |r| r.read_bmp_string())?);
                } else {
                    assert_eq!(id, pfx::oid(pfx::LOCAL_KEY_ID));
                    bag.local_key_id = Some(yasna::parse_der(value, |r| r.read_bytes())?);
                }
            }
            Ok(bag)
        })
    }

    /// Reads an AlgorithmIdentifier without parameters (NULL), checking that it is `id`.
    fn read_algorithm(reader: BERReader, id: &[u64]) -> ASN1Result<()> {
        reader.read_sequence(|reader| {
            assert_eq!(reader.next().read_oid()?, pfx::oid(id));
            reader.next().read_null()
        })
    }

    /// Reads the AlgorithmIdentifier of PBES2 with PBKDF2-HMAC-SHA256 and AES-256-CBC.
    fn read_pbes2_algorithm(reader: BERReader) -> ASN1Result<pfx::Pbes2Params> {
        reader.read_sequence(|reader| {
            assert_eq!(reader.next().read_oid()?, pfx::oid(pfx::PBES2));
            reader.next().read_sequence(|reader| {
                let salt = reader.next().read_sequence(|reader| {
                    assert_eq!(reader.next().read_oid()?, pfx::oid(pfx::PBKDF2));
                    reader.next().read_sequence(|reader| {
                        let salt = reader.next().read_bytes()?;
                        assert_eq!(reader.next().read_u32()?, pfx::KDF_ITERATIONS);
                        read_algorithm(reader.next(), pfx::HMAC_WITH_SHA256)?;
                        Ok(salt)
                    })
                })?;
                let iv = reader.next().read_sequence(|reader| {
                    assert_eq!(reader.next().read_oid()?, pfx::oid(pfx::AES256_CBC));
                    reader.next().read_bytes()
                })?;
                Ok(pfx::Pbes2Params {
                    salt: salt.try_into().expect("a 16-byte salt"),
                    iv: iv.try_into().expect("a 16-byte IV"),
                })
            })
        })
    }

    /// Undoes the PBES2 encryption of the writer; panics on a wrong padding.
    fn pbes2_decrypt(password: &str, params: &pfx::Pbes2Params, ciphertext: &[u8]) -> Vec<u8> {
        use sha2::digest::generic_array::GenericArray;
        let key = pfx::pbes2_key(password, &params.salt, pfx::KDF_ITERATIONS);
        let mut decryptor = cbc::Decryptor::<aes::Aes256>::new(
            GenericArray::from_slice(key.as_ref()),
            GenericArray::from_slice(&params.iv),
        );
        assert_eq!(ciphertext.len() % pfx::BLOCK_LEN, 0);
        let mut plaintext = ciphertext.to_vec();
        for block in plaintext.chunks_exact_mut(pfx::BLOCK_LEN) {
            decryptor.decrypt_block_mut(GenericArray::from_mut_slice(block));
        }
        let padding = *plaintext.last().unwrap();
        assert!((1..=16).contains(&padding), "padding {padding}");
        let len = plaintext.len() - usize::from(padding);
        assert!(plaintext[len..].iter().all(|byte| *byte == padding));
        plaintext.truncate(len);
        plaintext
    }

    /// Each person's `.p12` opens with the dev password and holds, in the order OpenSSL
    /// writes them, that person's PEM certificate and the dev CA (encrypted), then that
    /// person's PEM key (shrouded); the certificate and the key carry `Tandem dev <role>` and
    /// the same local key id. Each file is readable by its owner only.
    #[test]
    fn pkcs12_holds_the_pem_identity_and_the_ca() {
        use std::os::unix::fs::PermissionsExt as _;
        let set = DevSet::new();
        let written = write_pkcs12(&set.dir).unwrap();
        let expected: Vec<PathBuf> = Role::PEOPLE
            .iter()
            .map(|role| pkcs12_path(&set.dir, *role))
            .collect();
        assert_eq!(written, expected);
        assert_eq!(written.len(), 7);
        let authority = set.pem_certificate("ca");
        for role in Role::PEOPLE {
            let path = pkcs12_path(&set.dir, role);
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{role}");

            let leaf = set.pem_certificate(role.as_str());
            let friendly_name = Some(format!("Tandem dev {role}"));
            let local_key_id = Some(sha2::Sha256::digest(&leaf).to_vec());
            let expected = Opened {
                bags: vec![
                    Bag {
                        content: BagContent::Certificate(leaf.to_vec()),
                        friendly_name: friendly_name.clone(),
                        local_key_id: local_key_id.clone(),
                    },
                    Bag {
                        content: BagContent::Certificate(authority.to_vec()),
                        friendly_name: None,
                        local_key_id: None,
                    },
                    Bag {
                        content: BagContent::Key(set.pem_key(role).secret_pkcs8_der().to_vec()),
                        friendly_name,
                        local_key_id,
                    },
                ],
            };
            assert_eq!(set.read(role), expected, "{role}");
        }
    }

    /// A wrong or empty password fails the MAC of a `.p12`; the right one passes it.
    #[test]
    fn wrong_password_is_refused() {
        let set = DevSet::new();
        write_pkcs12(&set.dir).unwrap();
        let bytes = set.bytes(Role::Treasury);
        for password in ["tandem-dev ", "Tandem-dev", ""] {
            let opened = open(&bytes, password);
            assert!(opened.is_err(), "{password:?}");
        }
        assert!(open(&bytes, PASSWORD).is_ok());
    }

    /// Two files of the same identity share no salt or IV, so no two share a key or a
    /// ciphertext.
    #[test]
    fn pkcs12_salts_are_fresh_for_every_file() {
        let set = DevSet::new();
        write_pkcs12(&set.dir).unwrap();
        let first = set.bytes(Role::Treasury);
        std::fs::remove_file(pkcs12_path(&set.dir, Role::Treasury)).unwrap();
        write_pkcs12(&set.dir).unwrap();
        let second = set.bytes(Role::Treasury);
        assert_eq!(first.len(), second.len());
        assert_ne!(first, second);
        assert_eq!(set.read(Role::Treasury), open(&first, PASSWORD).unwrap());
    }

    /// The PKCS#12 KDF with SHA-256 gives the known answers. The first six are the test
    /// vectors of RustCrypto's `pkcs12` crate (`pkcs12/tests/kdf.rs`), checked there against
    /// OpenSSL's `PKCS12_key_gen_utf8`; the last has Tandem's own parameters. All seven were
    /// checked again with OpenSSL 3.0's
    /// `openssl kdf -keylen 32 -kdfopt digest:SHA256 -kdfopt hexpass:<BMPString> -kdfopt
    /// hexsalt:<salt> -kdfopt iter:<n> -kdfopt id:<id> PKCS12KDF`.
    #[test]
    fn pkcs12_kdf_gives_the_known_answers() {
        const SALT_INCREASING: &[u8] = &[1, 2, 3, 4, 5, 6, 7, 8];
        const SALT_16: &[u8] = &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];
        let cases: [(&str, &[u8], u8, u32, &str); 7] = [
            (
                "ge@äheim",
                SALT_INCREASING,
                1,
                100,
                "fae4d4957a3cc781e1180b9d4fb79c1e0c8579b746a3177e5b0768a3118bf863",
            ),
            (
                "ge@äheim",
                SALT_INCREASING,
                2,
                100,
                "e5ff813bc6547de5155b14d2fada85b3201a977349db6e26ccc998d9e8f83d6c",
            ),
            (
                "ge@äheim",
                SALT_INCREASING,
                3,
                100,
                "136355ed9434516682534f46d63956db5ff06b844702c2c1f3b46321e2524a4d",
            ),
            (
                "ge@äheim",
                SALT_INCREASING,
                1,
                1000,
                "2b95a0569b63f641fae1efca32e84db3699ab74540628ba66283b58cf5400527",
            ),
            (
                "ge@äheim",
                SALT_INCREASING,
                2,
                1000,
                "6472c0ebad3fab4123e8b5ed7834de21eeb20187b3eff78a7d1cdffa4034851d",
            ),
            (
                "ge@äheim",
                SALT_INCREASING,
                3,
                1000,
                "3f9113f05c30a996c4a516409bdac9d065f44296ccd52bb75de3fcfdbe2bf130",
            ),
            (
                PASSWORD,
                SALT_16,
                pfx::KDF_ID_MAC,
                pfx::KDF_ITERATIONS,
                "06fe3b26d07818eb7f3e0e60973fea1de3d6f7177dce15203fab23c341159b2a",
            ),
        ];
        for (password, salt, id, iterations, expected) in cases {
            let key = pfx::pkcs12_kdf(password, salt, id, iterations);
            assert_eq!(
                hex::encode(key.as_ref()),
                expected,
                "{password} {id} {iterations}"
            );
        }
    }

    /// The file names PBES2, AES-256-CBC, PBKDF2 with HMAC-SHA256 and a SHA-256 MAC, and none
    /// of the legacy PKCS#12 ciphers (3DES, RC2, RC4) that OpenSSL 3 reads only with `-legacy`.
    /// The algorithm identifiers are in clear in the file, so their DER encodings show.
    #[test]
    fn pkcs12_uses_the_modern_profile_only() {
        let set = DevSet::new();
        write_pkcs12(&set.dir).unwrap();
        let bytes = std::fs::read(pkcs12_path(&set.dir, Role::Treasury)).unwrap();
        let contains = |oid: &[u8]| bytes.windows(oid.len()).any(|window| window == oid);
        // 1.2.840.113549.1.5.13 PBES2, 1.2.840.113549.1.5.12 PBKDF2,
        // 1.2.840.113549.2.9 hmacWithSHA256, 2.16.840.1.101.3.4.1.42 aes256-CBC,
        // 2.16.840.1.101.3.4.2.1 SHA-256 (the MAC's digest).
        let modern: [&[u8]; 5] = [
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0d,
            ],
            &[
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x05, 0x0c,
            ],
            &[0x06, 0x08, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x02, 0x09],
            &[
                0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x01, 0x2a,
            ],
            &[
                0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01,
            ],
        ];
        for oid in modern {
            assert!(contains(oid), "{oid:02x?} missing");
        }
        // 1.2.840.113549.1.12.1.{1..6}: pbeWithSHAAnd128BitRC4 .. pbeWithSHAAnd40BitRC2-CBC;
        // 1.3.14.3.2.26 SHA-1.
        for last in 1..=6 {
            let legacy = [
                0x06, 0x0a, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x0c, 0x01, last,
            ];
            assert!(!contains(&legacy), "{legacy:02x?} present");
        }
        assert!(!contains(&[0x06, 0x05, 0x2b, 0x0e, 0x03, 0x02, 0x1a]));
    }

    /// A `.p12` is written again only when missing or older than its PEMs: a second run
    /// writes nothing, and after the set is regenerated the files hold the new identities.
    #[test]
    fn pkcs12_rewritten_only_when_missing_or_stale() {
        let set = DevSet::new();
        assert_eq!(write_pkcs12(&set.dir).unwrap().len(), Role::PEOPLE.len());
        assert_eq!(write_pkcs12(&set.dir).unwrap(), Vec::<PathBuf>::new());

        std::fs::remove_file(pkcs12_path(&set.dir, Role::Admin)).unwrap();
        assert_eq!(
            write_pkcs12(&set.dir).unwrap(),
            [pkcs12_path(&set.dir, Role::Admin)]
        );

        let before = set.read(Role::Treasury);
        set.regenerate();
        // The new PEMs may share the old files' clock tick; in use they come much later.
        for role in Role::PEOPLE {
            set.backdate(role);
        }
        assert_eq!(write_pkcs12(&set.dir).unwrap().len(), Role::PEOPLE.len());
        let after = set.read(Role::Treasury);
        assert_ne!(after, before);
        let leaf = set.pem_certificate(Role::Treasury.as_str());
        let authority = set.pem_certificate("ca");
        assert_eq!(after.certificates(), [leaf.as_ref(), authority.as_ref()]);
        assert_eq!(write_pkcs12(&set.dir).unwrap(), Vec::<PathBuf>::new());
    }

    /// The instructions name the treasury's file by its whole path, the password, the CA to
    /// trust, both browsers, and every other person's file.
    #[test]
    fn import_instructions_name_the_file_and_the_password() {
        let dir = std::env::temp_dir().join("tandem-dev");
        let text = import_instructions(&dir);
        assert!(
            text.contains(&format!("{}/treasury.p12", dir.display())),
            "{text}"
        );
        assert!(
            text.contains(&format!("{}/ca.pem", dir.display())),
            "{text}"
        );
        assert!(text.contains("password tandem-dev"), "{text}");
        assert!(
            text.contains("Chromium") && text.contains("Firefox"),
            "{text}"
        );
        for role in Role::PEOPLE {
            assert!(text.contains(&format!("{role}.p12")), "{role}: {text}");
        }
        // A relative directory is shown from the current one.
        let relative = import_instructions(Path::new(".tandem/dev"));
        let whole = std::env::current_dir()
            .unwrap()
            .join(".tandem/dev/treasury.p12");
        assert!(
            relative.contains(&whole.display().to_string()),
            "{relative}"
        );
    }
}
