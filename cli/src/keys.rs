//! `tandemctl keys` and `tandemctl audit`: the security team's key and audit operations on a
//! running vault (an `admin` identity; `audit` also works with an `auditor` one), and
//! `tandemctl keys init`, which makes a vault's root key and its Shamir shares.
//!
//! ```text
//! tandemctl keys init --shares 5 --threshold 3      # once, before the first start; prints the shares
//! tandemctl keys status
//! tandemctl keys unseal                             # reads one share (hex) from standard input
//! tandemctl keys seal --reason "incident 42"
//! tandemctl keys rotate
//! tandemctl keys retire 1
//! tandemctl keys rotate-root [--shares 5 --threshold 3]
//! tandemctl audit list [--token tok_...] [--outcome denied] [--limit 50] [--newest-first]
//! tandemctl audit verify [--from 1] [--to 0]
//! ```
//!
//! Shares never appear on a command line (where shell history and process lists would keep
//! them): `unseal` reads its share from standard input, and `init`/`rotate-root` print shares
//! once, on standard output only.

use std::io::BufRead as _;

use anyhow::Context as _;
use tandem_proto::tandem::vault::v1 as pb;
use tandem_proto::tandem::vault::v1::key_admin_service_client::KeyAdminServiceClient;
use tandem_tls::identity::Role;
use zeroize::Zeroizing;

use crate::connect::{VaultTarget, failure, request_id, vault_channel};
use crate::dev;

/// The key commands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Make the vault's root key, split it into Shamir shares and create the data keys under
    /// it, in the vault's database, before its first start with `root_key_source = "shares"`.
    Init {
        /// Shares to issue (n), 2-16.
        #[arg(long, default_value_t = 5)]
        shares: u8,
        /// Shares needed to unseal (k), 2 to n.
        #[arg(long, default_value_t = 3)]
        threshold: u8,
        /// Postgres server URL (any database name; the vault's database is created beside it).
        #[arg(
            long,
            env = "DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/postgres"
        )]
        database_url: String,
        /// The vault's database name.
        #[arg(long, default_value = "tandem_vault")]
        vault_database: String,
    },
    /// Data-key versions, the rewrap and the seal.
    Status {
        #[command(flatten)]
        target: VaultTarget,
    },
    /// Submit one share; reads it as hex from standard input (an empty line for the dev
    /// source, which reloads the key file).
    Unseal {
        #[command(flatten)]
        target: VaultTarget,
    },
    /// Seal the vault: drop every key from memory.
    Seal {
        #[command(flatten)]
        target: VaultTarget,
        /// Why, for the audit log.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Rotate the data key; the rewrap moves old rows in the background.
    Rotate {
        #[command(flatten)]
        target: VaultTarget,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Retire a decrypt-only data-key version no row uses.
    Retire {
        #[command(flatten)]
        target: VaultTarget,
        /// The version.
        version: i32,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Rotate the root key; prints the new shares once (shares source).
    RotateRoot {
        #[command(flatten)]
        target: VaultTarget,
        /// New number of shares (n); the current one by default.
        #[arg(long, default_value_t = 0)]
        shares: i32,
        /// New threshold (k); the current one by default.
        #[arg(long, default_value_t = 0)]
        threshold: i32,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
}

/// The audit commands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// List audit events.
    List {
        #[command(flatten)]
        target: VaultTarget,
        /// Only this token.
        #[arg(long, default_value = "")]
        token: String,
        /// Only this method, e.g. tandem.vault.v1.ChargeService/Authorize.
        #[arg(long, default_value = "")]
        rpc: String,
        /// Only `succeeded`, `denied` or `failed`.
        #[arg(long)]
        outcome: Option<String>,
        /// Most events to print.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Newest first.
        #[arg(long)]
        newest_first: bool,
        /// Use the auditor identity instead of the admin one.
        #[arg(long)]
        as_auditor: bool,
    },
    /// Verify the audit log's hash chain.
    Verify {
        #[command(flatten)]
        target: VaultTarget,
        /// First sequence (0: the first event).
        #[arg(long, default_value_t = 0)]
        from: i64,
        /// Last sequence (0: the latest).
        #[arg(long, default_value_t = 0)]
        to: i64,
        /// Use the auditor identity instead of the admin one.
        #[arg(long)]
        as_auditor: bool,
    },
}

fn print_seal(seal: Option<&pb::SealStatus>) {
    let Some(seal) = seal else { return };
    let state = pb::SealState::try_from(seal.state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("SEAL_STATE_")
                .to_lowercase()
        })
        .unwrap_or_default();
    let source = pb::RootKeySource::try_from(seal.root_key_source)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("ROOT_KEY_SOURCE_")
                .to_lowercase()
        })
        .unwrap_or_default();
    println!(
        "seal        {state} (source {source}, root key v{}, shares {}/{} of {})",
        seal.root_key_version, seal.shares_received, seal.threshold, seal.shares_total
    );
}

fn print_shares(shares: &[Vec<u8>]) {
    println!(
        "\nThe root key's shares, shown once. Give each to a different custodian; the vault \
         never stores them:"
    );
    for (i, share) in shares.iter().enumerate() {
        let text = Zeroizing::new(hex::encode(share));
        println!("  share {}: {}", i + 1, text.as_str());
    }
}

async fn admin(
    target: &VaultTarget,
    role: Role,
) -> anyhow::Result<KeyAdminServiceClient<tonic::transport::Channel>> {
    Ok(KeyAdminServiceClient::new(
        vault_channel(target, role).await?,
    ))
}

/// Runs a key command.
pub async fn run(command: KeysCommand) -> anyhow::Result<()> {
    match command {
        KeysCommand::Init {
            shares,
            threshold,
            database_url,
            vault_database,
        } => {
            let url = dev::ensure_database(&database_url, &vault_database).await?;
            let mut settings = tandem_vault::config::Settings::load(None, std::env::vars())?;
            settings.database.url = tandem_vault::config::SecretString::new(url);
            let pool = tandem_vault::server::connect_database(&settings)
                .await
                .context("opening the vault's database")?;
            let issued = tandem_vault::keys::admin::init_shares(
                &pool,
                settings.keys.clone(),
                shares,
                threshold,
            )
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
            pool.close().await;
            println!(
                "initialised the vault's keys in {vault_database}: {threshold} of {shares} shares \
                 unseal it; start it with keys.root_key_source = \"shares\""
            );
            let shares: Vec<Vec<u8>> = issued.iter().map(|s| s.to_vec()).collect();
            print_shares(&shares);
        }
        KeysCommand::Status { target } => {
            let status = admin(&target, Role::Admin)
                .await?
                .get_key_status(pb::GetKeyStatusRequest {})
                .await
                .map_err(failure)?
                .into_inner();
            print_seal(status.seal.as_ref());
            if let Some(rewrap) = &status.rewrap {
                let state = pb::RewrapState::try_from(rewrap.state)
                    .map(|s| {
                        s.as_str_name()
                            .trim_start_matches("REWRAP_STATE_")
                            .to_lowercase()
                    })
                    .unwrap_or_default();
                println!(
                    "rewrap      {state}: {} of {} rows done, {} remaining, {:.0} rows/s (max {})",
                    rewrap.rows_done,
                    rewrap.rows_total,
                    rewrap.rows_remaining,
                    rewrap.rows_per_s,
                    rewrap.rows_per_s_max
                );
            }
            println!("\nversion  state          rows      encryptions / budget");
            for key in &status.data_keys {
                let state = pb::DataKeyState::try_from(key.state)
                    .map(|s| {
                        s.as_str_name()
                            .trim_start_matches("DATA_KEY_STATE_")
                            .to_lowercase()
                    })
                    .unwrap_or_default();
                println!(
                    "{:<8} {state:<14} {:<9} {} / {}",
                    key.version, key.rows, key.encryptions, key.encryption_budget
                );
            }
        }
        KeysCommand::Unseal { target } => {
            let mut line = Zeroizing::new(String::new());
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .context("reading the share from standard input")?;
            let share =
                Zeroizing::new(hex::decode(line.trim()).context("the share must be hexadecimal")?);
            let seal = admin(&target, Role::Admin)
                .await?
                .unseal(pb::UnsealRequest {
                    request_id: request_id(None),
                    share: share.to_vec(),
                })
                .await
                .map_err(failure)?
                .into_inner()
                .seal;
            print_seal(seal.as_ref());
        }
        KeysCommand::Seal { target, reason } => {
            let seal = admin(&target, Role::Admin)
                .await?
                .seal(pb::SealRequest {
                    request_id: request_id(None),
                    reason,
                })
                .await
                .map_err(failure)?
                .into_inner()
                .seal;
            print_seal(seal.as_ref());
        }
        KeysCommand::Rotate {
            target,
            request_id: id,
        } => {
            let key = admin(&target, Role::Admin)
                .await?
                .rotate_data_key(pb::RotateDataKeyRequest {
                    request_id: request_id(id),
                })
                .await
                .map_err(failure)?
                .into_inner()
                .data_key
                .context("no data key in the response")?;
            println!(
                "data key v{} is active; older rows move in the background (tandemctl keys status)",
                key.version
            );
        }
        KeysCommand::Retire {
            target,
            version,
            request_id: id,
        } => {
            admin(&target, Role::Admin)
                .await?
                .retire_key_version(pb::RetireKeyVersionRequest {
                    request_id: request_id(id),
                    version,
                })
                .await
                .map_err(failure)?;
            println!("data key v{version} is retired; its key material is destroyed");
        }
        KeysCommand::RotateRoot {
            target,
            shares,
            threshold,
            request_id: id,
        } => {
            let response = admin(&target, Role::Admin)
                .await?
                .rotate_root_key(pb::RotateRootKeyRequest {
                    request_id: request_id(id),
                    shares_total: shares,
                    threshold,
                })
                .await
                .map_err(failure)?
                .into_inner();
            println!(
                "root key rotated: {} data keys re-wrapped",
                response.data_keys_rewrapped
            );
            print_seal(response.seal.as_ref());
            if response.shares_withheld {
                println!("(a replay: the shares were issued by the first call and are not kept)");
            }
            if !response.shares.is_empty() {
                print_shares(&response.shares);
            }
        }
    }
    Ok(())
}

/// Runs an audit command.
pub async fn run_audit(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::List {
            target,
            token,
            rpc,
            outcome,
            limit,
            newest_first,
            as_auditor,
        } => {
            let outcome = match outcome.as_deref() {
                None => pb::AuditOutcome::Unspecified,
                Some("succeeded") => pb::AuditOutcome::Succeeded,
                Some("denied") => pb::AuditOutcome::Denied,
                Some("failed") => pb::AuditOutcome::Failed,
                Some(other) => {
                    anyhow::bail!("--outcome {other:?}: use succeeded, denied or failed")
                }
            };
            let role = if as_auditor {
                Role::Auditor
            } else {
                Role::Admin
            };
            let mut client = admin(&target, role).await?;
            let mut page_token = String::new();
            let mut printed = 0;
            println!(
                "seq      time                        outcome              rpc / caller / token"
            );
            while printed < limit {
                let page = client
                    .list_audit_events(pb::ListAuditEventsRequest {
                        page_size: (limit - printed).min(1000) as i32,
                        page_token: page_token.clone(),
                        token: token.clone(),
                        rpc: rpc.clone(),
                        outcome: outcome as i32,
                        descending: newest_first,
                        ..Default::default()
                    })
                    .await
                    .map_err(failure)?
                    .into_inner();
                for event in &page.events {
                    let time = event
                        .create_time
                        .as_ref()
                        .and_then(|t| time::OffsetDateTime::from_unix_timestamp(t.seconds).ok())
                        .map(|t| t.to_string())
                        .unwrap_or_default();
                    let shown = if event.status_code == "OK" {
                        "OK".to_owned()
                    } else {
                        event.reason.clone()
                    };
                    println!(
                        "{:<8} {time:<27} {shown:<20} {} {} {}",
                        event.sequence, event.rpc, event.caller, event.token
                    );
                    printed += 1;
                }
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
        }
        AuditCommand::Verify {
            target,
            from,
            to,
            as_auditor,
        } => {
            let role = if as_auditor {
                Role::Auditor
            } else {
                Role::Admin
            };
            let check = admin(&target, role)
                .await?
                .verify_audit_log(pb::VerifyAuditLogRequest {
                    start_sequence: from,
                    end_sequence: to,
                })
                .await
                .map_err(failure)?
                .into_inner();
            if check.intact {
                println!(
                    "intact: events {}..={} ({} checked), head hash {}",
                    check.first_sequence,
                    check.last_sequence,
                    check.events_checked,
                    check.head_hash
                );
            } else {
                let kind = pb::AuditChainBreak::try_from(check.break_kind)
                    .map(|k| {
                        k.as_str_name()
                            .trim_start_matches("AUDIT_CHAIN_BREAK_")
                            .to_lowercase()
                    })
                    .unwrap_or_default();
                anyhow::bail!(
                    "the audit chain is BROKEN at event {} ({kind}); {} events checked before it",
                    check.first_broken_sequence,
                    check.events_checked
                );
            }
        }
    }
    Ok(())
}
