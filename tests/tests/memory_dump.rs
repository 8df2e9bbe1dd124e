//! Card data and keys stay out of reach of a memory dump (issue 15, point 5): the vault process
//! is not dumpable and may write no core file, its keys live only in locked memory that a core
//! dump leaves out, and after tokenizations no byte of its memory holds the card number or the
//! cardholder's name.
//!
//! The test runs the real `tandem-vault` binary as a process of its own and reads every readable
//! mapping of it through `/proc/<pid>/mem`, as a debugger or a core dump would. A non-dumpable
//! process's `/proc/<pid>/mem` is readable only with `CAP_SYS_PTRACE` (root): the suite runs as
//! root, so the test can read it; without that capability the read itself is refused, which is
//! the point of making the process non-dumpable, and the test says so instead of passing.
//!
//! While a caller's connection stays open, two buffers of that connection keep the most recent
//! bytes it received, as encoded requests, and no code of the vault can reach them: rustls
//! decrypts each TLS record in place in its receive buffer and reuses the buffer without
//! clearing it, and h2 reads the decrypted HTTP/2 frames into a read buffer it walks through and
//! reuses (the last few kilobytes of requests). Both are freed, and so wiped, when the
//! connection closes. So the test asserts: with the connection open, every copy left is inside
//! an encoded request message (preceded by its protobuf field tag and length, which no string
//! the vault decodes or builds is); once it closed, no copy at all, encoded or not (which also
//! catches request buffers freed without being wiped). Keys: each of the vault's keys (root,
//! data key, fingerprint key) is found only in mappings marked `dd` (left out of core dumps).

use std::io::{Read as _, Seek as _, SeekFrom};
use std::time::Duration;

use tandem_proto::tandem::vault::v1 as pb;
use tandem_proto::tandem::vault::v1::charge_service_client::ChargeServiceClient;
use tandem_proto::tandem::vault::v1::token_service_client::TokenServiceClient;
use tandem_tests::process::VaultProcess;
use tandem_tls::identity::Role;
use tonic::transport::Channel;

/// Tokenizations of the test card (half of them with `reuse_existing`).
const TOKENIZATIONS: usize = 24;
/// Largest piece of a mapping read at once.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// One readable mapping of a process, with its contents.
struct Region {
    /// The `/proc/<pid>/maps` line.
    line: String,
    /// `VmFlags` of `/proc/<pid>/smaps` (`dd`: left out of core dumps, `lo`: locked).
    flags: Vec<String>,
    bytes: Vec<u8>,
}

/// Every readable mapping of process `pid`, read through `/proc/<pid>/mem`. Mappings that
/// cannot be read (`[vvar]`, `[vsyscall]`, device memory) are skipped.
fn dump(pid: u32) -> Vec<Region> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("read smaps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).unwrap_or_else(|error| {
        panic!(
            "cannot open /proc/{pid}/mem ({error}): reading a non-dumpable process's memory \
             needs CAP_SYS_PTRACE; run this test as root"
        )
    });
    let mut regions = Vec::new();
    let mut current: Option<(String, u64, u64)> = None;
    let mut flush = |current: Option<(String, u64, u64)>, flags: Vec<String>| {
        let Some((line, start, end)) = current else {
            return;
        };
        let readable = line
            .split_whitespace()
            .nth(1)
            .is_some_and(|p| p.starts_with('r'));
        if !readable || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            return;
        }
        let mut bytes = Vec::new();
        let mut offset = start;
        while offset < end {
            let len = usize::try_from(end - offset)
                .unwrap_or(usize::MAX)
                .min(READ_CHUNK_BYTES);
            let mut chunk = vec![0u8; len];
            if mem.seek(SeekFrom::Start(offset)).is_err() || mem.read_exact(&mut chunk).is_err() {
                break;
            }
            bytes.extend_from_slice(&chunk);
            offset += len as u64;
        }
        regions.push(Region { line, flags, bytes });
    };
    for line in smaps.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            let flags = flags.split_whitespace().map(str::to_owned).collect();
            flush(current.take(), flags);
        } else if let Some((range, _)) = line.split_once(' ')
            && let Some((start, end)) = range.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            current = Some((line.to_owned(), start, end));
        }
    }
    regions
}

/// One copy of a needle in the dump.
struct Found<'a> {
    /// The `/proc/<pid>/maps` line of its mapping.
    mapping: &'a str,
    /// `VmFlags` of its mapping.
    flags: &'a [String],
    /// The two bytes before it.
    before: [u8; 2],
}

impl Found<'_> {
    /// Whether the copy is a field of an encoded request: preceded by one of the protobuf
    /// field tags `tags` and the needle's length.
    fn is_encoded_field(&self, tags: &[u8], len: usize) -> bool {
        tags.contains(&self.before[0]) && usize::from(self.before[1]) == len
    }
}

/// Every copy of `needle` in the dump.
fn occurrences<'a>(regions: &'a [Region], needle: &[u8]) -> Vec<Found<'a>> {
    let finder = memchr::memmem::Finder::new(needle);
    regions
        .iter()
        .flat_map(|region| {
            finder.find_iter(&region.bytes).map(|at| Found {
                mapping: region.line.as_str(),
                flags: region.flags.as_slice(),
                before: [
                    at.checked_sub(2).map_or(0, |i| region.bytes[i]),
                    at.checked_sub(1).map_or(0, |i| region.bytes[i]),
                ],
            })
        })
        .collect()
}

/// A Visa number no other test and no binary holds: `4`, 14 random digits, the Luhn digit.
fn random_pan() -> String {
    let random = uuid::Uuid::new_v4();
    let mut digits: Vec<u32> = std::iter::once(4)
        .chain(
            random
                .as_bytes()
                .iter()
                .take(14)
                .map(|b| u32::from(*b % 10)),
        )
        .collect();
    // Luhn: double every second digit from the right, the check digit being the rightmost.
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 0 {
                let doubled = d * 2;
                if doubled > 9 { doubled - 9 } else { doubled }
            } else {
                d
            }
        })
        .sum();
    digits.push((10 - sum % 10) % 10);
    digits
        .iter()
        .map(|d| char::from_digit(*d, 10).expect("a digit"))
        .collect()
}

/// A cardholder name no other test and no binary holds.
fn random_holder_name() -> String {
    let random = uuid::Uuid::new_v4();
    let surname: String = random
        .as_bytes()
        .iter()
        .take(12)
        .map(|b| char::from(b'A' + b % 26))
        .collect();
    format!("Dumpling Q {surname}")
}

/// Every key of the vault, named: the dev root key from its file, and the data keys and vault
/// secrets (the fingerprint key) from its database, unwrapped with the root key as
/// `tandem_vault::crypto` wraps them (AES-256-GCM, AAD `tandem/vault/dek/v1 || 0 || version` or
/// `tandem/vault/secret/v1 || 0 || name`).
async fn vault_keys(vault: &VaultProcess) -> Vec<(String, Vec<u8>)> {
    use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
    use sqlx::Row as _;
    let text = std::fs::read_to_string(&vault.root_key_path).expect("read the dev root key");
    let line = text
        .lines()
        .find(|line| !line.starts_with('#') && !line.trim().is_empty())
        .expect("a key line");
    let root = hex::decode(line.trim()).expect("64 hex characters");
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&root).expect("a 32-byte key");
    let unwrap = |nonce: &[u8], wrapped: &[u8], aad: &[u8]| {
        cipher
            .decrypt(
                aes_gcm::Nonce::from_slice(nonce),
                Payload { msg: wrapped, aad },
            )
            .expect("a stored key unwraps under the root key")
    };
    let mut database = vault.database.connect().await;
    let mut keys = vec![("root key".to_owned(), root.clone())];
    let data_keys = sqlx::query(
        "SELECT version, wrap_nonce, wrapped_key FROM data_keys WHERE wrapped_key IS NOT NULL",
    )
    .fetch_all(&mut database)
    .await
    .expect("read data keys");
    for row in data_keys {
        let version: i32 = row.get(0);
        let aad = [
            &b"tandem/vault/dek/v1"[..],
            &[0],
            &u32::try_from(version)
                .expect("a positive version")
                .to_be_bytes(),
        ]
        .concat();
        let key = unwrap(row.get(1), row.get(2), &aad);
        keys.push((format!("data key v{version}"), key));
    }
    let secrets = sqlx::query("SELECT name, wrap_nonce, wrapped_key FROM vault_secrets")
        .fetch_all(&mut database)
        .await
        .expect("read vault secrets");
    for row in secrets {
        let name: String = row.get(0);
        let aad = [&b"tandem/vault/secret/v1"[..], &[0], name.as_bytes()].concat();
        let key = unwrap(row.get(1), row.get(2), &aad);
        keys.push((format!("{name} key"), key));
    }
    keys
}

/// Tokenizes, updates, charges (opening the sealed card) and revokes the card `pan` of
/// `holder_name`: the card's requests on `channel`, the charge on `charges`.
async fn card_traffic(channel: Channel, charges: Channel, pan: &str, holder_name: &str) {
    let mut tokens = TokenServiceClient::new(channel);
    let mut first_token = None;
    for i in 0..TOKENIZATIONS {
        let card = tokens
            .tokenize(pb::TokenizeRequest {
                request_id: uuid::Uuid::new_v4().to_string(),
                pan: pan.to_owned(),
                expiry_month: 12,
                expiry_year: 2030,
                holder_name: holder_name.to_owned(),
                reuse_existing: i % 2 == 1,
                ttl_seconds: 0,
            })
            .await
            .expect("tokenize")
            .into_inner()
            .card
            .expect("card");
        first_token.get_or_insert(card.token);
    }
    let first_token = first_token.expect("a token");
    tokens
        .update_card(pb::UpdateCardRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            token: first_token.clone(),
            pan: pan.to_owned(),
            expiry_month: 11,
            expiry_year: 2031,
            holder_name: holder_name.to_owned(),
        })
        .await
        .expect("update card");
    ChargeServiceClient::new(charges)
        .authorize(pb::AuthorizeRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            token: first_token,
            amount: Some(tandem_tests::stack::usd(1_000)),
            allow_partial_approval: false,
            description: String::new(),
            statement_descriptor: String::new(),
            reference: String::new(),
            metadata: Default::default(),
        })
        .await
        .expect("authorize");
    tokens
        .revoke_by_fingerprint(pb::RevokeByFingerprintRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            card: Some(pb::revoke_by_fingerprint_request::Card::Pan(pan.to_owned())),
            reason: "memory dump test".to_owned(),
        })
        .await
        .expect("revoke by fingerprint");
}

/// Protobuf tags (field number, wire type 2) of the PAN in the requests that carry one:
/// `TokenizeRequest.pan` = 2, `UpdateCardRequest.pan` = 3, `RevokeByFingerprintRequest.pan` = 3.
const PAN_TAGS: &[u8] = &[2 << 3 | 2, 3 << 3 | 2];
/// Protobuf tags of the holder name: `TokenizeRequest.holder_name` = 5,
/// `UpdateCardRequest.holder_name` = 6.
const HOLDER_NAME_TAGS: &[u8] = &[5 << 3 | 2, 6 << 3 | 2];

/// What a dump of the vault held, at one moment.
struct Findings {
    moment: &'static str,
    /// Copies of the PAN and of the holder name inside encoded requests: the open
    /// connection's receive buffers.
    encoded: usize,
    /// Mappings holding any other copy of the PAN, one entry per copy.
    pans: Vec<String>,
    /// Mappings holding any other copy of the holder name, one entry per copy.
    names: Vec<String>,
    /// Keys found in mappings not marked `dd` (MADV_DONTDUMP), with the mapping.
    exposed_keys: Vec<String>,
}

/// Dumps `vault` and looks for `pan`, `holder_name` and `keys`. `moment` names when; copies
/// inside encoded requests are set apart only if `encoded_allowed`.
fn scan(
    vault: &VaultProcess,
    moment: &'static str,
    encoded_allowed: bool,
    pan: &str,
    holder_name: &str,
    keys: &[(String, Vec<u8>)],
) -> Findings {
    let regions = dump(vault.pid());
    let dumped: usize = regions.iter().map(|r| r.bytes.len()).sum();
    assert!(
        dumped > 1 << 20,
        "only {dumped} bytes read from the vault's memory"
    );
    let mut encoded = 0;
    let mut others = |needle: &str, tags: &[u8]| -> Vec<String> {
        occurrences(&regions, needle.as_bytes())
            .into_iter()
            .filter(|copy| {
                let is_encoded = encoded_allowed && copy.is_encoded_field(tags, needle.len());
                encoded += usize::from(is_encoded);
                !is_encoded
            })
            .map(|copy| copy.mapping.to_owned())
            .collect()
    };
    let pans = others(pan, PAN_TAGS);
    let names = others(holder_name, HOLDER_NAME_TAGS);
    let mut key_copies = 0;
    let mut exposed_keys = Vec::new();
    for (name, key) in keys {
        for copy in occurrences(&regions, key) {
            key_copies += 1;
            if !copy.flags.iter().any(|flag| flag == "dd") {
                exposed_keys.push(format!("{name}: {} {:?}", copy.mapping, copy.flags));
            }
        }
    }
    eprintln!(
        "{moment}: {dumped} bytes in {} readable mappings; PAN and holder name: {encoded} copies \
         in encoded requests, {} + {} elsewhere; {} keys: {key_copies} copies, {} outside \
         MADV_DONTDUMP memory",
        regions.len(),
        pans.len(),
        names.len(),
        keys.len(),
        exposed_keys.len()
    );
    Findings {
        moment,
        encoded,
        pans,
        names,
        exposed_keys,
    }
}

/// After tokenizations, an update, a charge and a revocation of one card, the vault's memory
/// holds its number and its holder's name only in the open connection's receive buffers, and
/// nowhere once the connection closed; its keys are only in memory a core dump leaves out;
/// and the process may write no core file and says at start that it is not dumpable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vault_s_memory_holds_no_card_data_after_tokenizations() {
    let vault = VaultProcess::start().await;

    let pan = random_pan();
    let holder_name = random_holder_name();
    let channel = vault.channel(Role::Tokenizer).await;
    let charges = vault.channel(Role::Orchestrator).await;
    card_traffic(channel.clone(), charges, &pan, &holder_name).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let keys = vault_keys(&vault).await;
    let open = scan(
        &vault,
        "with the connection open",
        true,
        &pan,
        &holder_name,
        &keys,
    );

    drop(channel);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let closed = scan(
        &vault,
        "after the connection closed",
        false,
        &pan,
        &holder_name,
        &keys,
    );

    for findings in [open, closed] {
        assert!(
            findings.pans.is_empty() && findings.names.is_empty(),
            "{}: besides {} copies in encoded requests, the vault's memory holds the PAN {} \
             times and the holder name {} times;\nPAN in {:#?}\nname in {:#?}",
            findings.moment,
            findings.encoded,
            findings.pans.len(),
            findings.names.len(),
            findings.pans,
            findings.names,
        );
        assert!(
            findings.exposed_keys.is_empty(),
            "{}: keys are in memory that core dumps include: {:#?}",
            findings.moment,
            findings.exposed_keys
        );
    }

    let limits = std::fs::read_to_string(format!("/proc/{}/limits", vault.pid()))
        .expect("read /proc/<pid>/limits");
    let core = limits
        .lines()
        .find(|line| line.starts_with("Max core file size"))
        .expect("a core file size limit");
    let core_limits: Vec<&str> = core.split_whitespace().skip(4).take(2).collect();
    assert_eq!(core_limits, ["0", "0"], "{core}");
    let log = vault.log();
    assert!(
        log.contains("not dumpable"),
        "no hardening line at start:\n{log}"
    );
}
