//! End-to-end tests of the vault's `KeyAdminService` over real gRPC, mutual TLS and Postgres:
//! rotation under load, a rewrap resumed after a restart, root-key rotation, sealed start with
//! Shamir shares, the audit log's verification, and role checks.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tandem_proto::tandem::r#type::v1 as types;
use tandem_proto::tandem::vault::v1 as pb;
use tandem_proto::tandem::vault::v1::charge_service_client::ChargeServiceClient;
use tandem_proto::tandem::vault::v1::key_admin_service_client::KeyAdminServiceClient;
use tandem_proto::tandem::vault::v1::token_service_client::TokenServiceClient;
use tandem_tests::{LogCapture, RunningVault, TestDatabase, vault_reason, vault_settings};
use tandem_tls::identity::Role;
use tandem_vault::config::{RootKeySource, Settings};
use tonic::Code;
use tonic::transport::Channel;

type Keys = KeyAdminServiceClient<Channel>;

async fn keys(vault: &RunningVault, role: Role) -> Keys {
    KeyAdminServiceClient::new(vault.channel(role).await)
}

fn request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Tokenizes a distinct Luhn-valid Visa number made from `n`.
async fn tokenize(
    tokens: &mut TokenServiceClient<Channel>,
    n: u64,
) -> Result<String, tonic::Status> {
    let body = format!("4{:014}", n % 100_000_000_000_000);
    let check = (0..=9)
        .find(|d| tandem_vault::domain::pan::luhn_valid(format!("{body}{d}").as_bytes()))
        .expect("one check digit fits");
    Ok(tokens
        .tokenize(pb::TokenizeRequest {
            request_id: request_id(),
            pan: format!("{body}{check}"),
            expiry_month: 12,
            expiry_year: 2030,
            holder_name: "Rotation Test".to_owned(),
            reuse_existing: false,
            ttl_seconds: 0,
        })
        .await?
        .into_inner()
        .card
        .expect("card")
        .token)
}

/// Authorizes and captures 1.00 USD on `token`: proves the card still opens.
async fn charge(
    charges: &mut ChargeServiceClient<Channel>,
    token: &str,
) -> Result<(), tonic::Status> {
    let charge = charges
        .authorize(pb::AuthorizeRequest {
            request_id: request_id(),
            token: token.to_owned(),
            amount: Some(types::Money {
                currency_code: "USD".to_owned(),
                minor_units: 100,
            }),
            ..Default::default()
        })
        .await?
        .into_inner()
        .charge
        .expect("charge");
    assert_eq!(charge.state, pb::ChargeState::Authorized as i32);
    charges
        .capture(pb::CaptureRequest {
            request_id: request_id(),
            charge_id: charge.id,
            amount: None,
        })
        .await?;
    Ok(())
}

async fn status(keys: &mut Keys) -> pb::GetKeyStatusResponse {
    keys.get_key_status(pb::GetKeyStatusRequest {})
        .await
        .expect("key status")
        .into_inner()
}

async fn wait_for_rewrap(keys: &mut Keys, within: Duration) -> pb::GetKeyStatusResponse {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let current = status(keys).await;
        let rewrap = current.rewrap.expect("rewrap");
        if rewrap.rows_remaining == 0 {
            return current;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rewrap did not finish: {rewrap:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn fast_rewrap(settings: &mut Settings, rows_per_s: u64, batch: u32) {
    settings.keys.rewrap_rows_per_s_max = rows_per_s;
    settings.keys.rewrap_batch_max = batch;
    settings.keys.rewrap_interval_ms = 50;
}

/// Every card row has its own nonce: nothing was encrypted twice under one nonce.
async fn assert_nonces_unique(vault: &RunningVault) {
    let mut db = vault.database.connect().await;
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT nonce) FROM cards WHERE nonce IS NOT NULL")
            .fetch_one(&mut db)
            .await
            .unwrap();
    assert_eq!(rows, distinct, "a nonce was reused");
}

/// Rotation under load: while clients tokenize, read and charge continuously, rotate the data
/// key, let the rewrap finish and retire the old version. No client request fails, every token
/// still charges, no row is left on the retired version and its key material is gone.
#[tokio::test]
async fn rotation_under_load() {
    let database = TestDatabase::create().await;
    let mut settings = vault_settings(&database);
    fast_rewrap(&mut settings, 5000, 50);
    let vault = RunningVault::start_with(settings, database).await;
    let mut tokens = TokenServiceClient::new(vault.channel(Role::Tokenizer).await);
    let mut earlier = Vec::new();
    for n in 0..150 {
        earlier.push(tokenize(&mut tokens, 1_000 + n).await.expect("tokenize"));
    }
    let earlier = Arc::new(earlier);

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for worker in 0..4u64 {
        let mut tokens = tokens.clone();
        let mut charges = ChargeServiceClient::new(vault.channel(Role::Orchestrator).await);
        let (stop, failures, done, earlier) = (
            stop.clone(),
            failures.clone(),
            done.clone(),
            earlier.clone(),
        );
        load.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let token = &earlier[((worker * 37 + n * 11) % earlier.len() as u64) as usize];
                let results = [
                    tokenize(&mut tokens, 100_000 + worker * 1_000_000 + n)
                        .await
                        .map(|_| ()),
                    charge(&mut charges, token).await,
                    tokens
                        .get_token(pb::GetTokenRequest {
                            token: token.clone(),
                        })
                        .await
                        .map(|_| ()),
                ];
                for result in results {
                    match result {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(status) => {
                            eprintln!("request failed under rotation: {status:?}");
                            failures.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            }
        }));
    }

    let mut admin = keys(&vault, Role::Admin).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotated = admin
        .rotate_data_key(pb::RotateDataKeyRequest {
            request_id: "rotate-1".to_owned(),
        })
        .await
        .expect("rotate")
        .into_inner()
        .data_key
        .unwrap();
    assert_eq!(
        (rotated.version, rotated.state),
        (2, pb::DataKeyState::Active as i32)
    );
    let replay = admin
        .rotate_data_key(pb::RotateDataKeyRequest {
            request_id: "rotate-1".to_owned(),
        })
        .await
        .expect("replayed rotate")
        .into_inner()
        .data_key
        .unwrap();
    assert_eq!(replay.version, 2, "a replay does not rotate again");
    let finished = wait_for_rewrap(&mut admin, Duration::from_secs(30)).await;
    let old = finished.data_keys.iter().find(|k| k.version == 1).unwrap();
    assert_eq!(
        (old.state, old.rows),
        (pb::DataKeyState::DecryptOnly as i32, 0)
    );
    let retired = admin
        .retire_key_version(pb::RetireKeyVersionRequest {
            request_id: "retire-1".to_owned(),
            version: 1,
        })
        .await
        .expect("retire")
        .into_inner()
        .data_key
        .unwrap();
    assert_eq!(retired.state, pb::DataKeyState::Retired as i32);
    let active = admin
        .retire_key_version(pb::RetireKeyVersionRequest {
            request_id: "retire-2".to_owned(),
            version: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&active), "KEY_VERSION_ACTIVE");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert!(done.load(Ordering::Relaxed) > 50, "the load ran");
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "no client request failed"
    );

    let mut charges = ChargeServiceClient::new(vault.channel(Role::Orchestrator).await);
    for token in earlier.iter() {
        charge(&mut charges, token)
            .await
            .expect("every token still charges");
    }
    let mut db = vault.database.connect().await;
    let (on_old, material): (i64, bool) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM cards WHERE dek_version = 1), \
         (SELECT wrapped_key IS NOT NULL FROM data_keys WHERE version = 1)",
    )
    .fetch_one(&mut db)
    .await
    .unwrap();
    assert_eq!((on_old, material), (0, false));
    assert_nonces_unique(&vault).await;
    vault.stop().await;
}

/// A restart in the middle of a rewrap: the new process resumes and finishes it, its progress
/// is kept, and no nonce is used twice.
#[tokio::test]
async fn rewrap_resumes_after_restart() {
    let database = TestDatabase::create().await;
    let mut settings = vault_settings(&database);
    fast_rewrap(&mut settings, 60, 10);
    let vault = RunningVault::start_with(settings, database).await;
    let mut tokens = TokenServiceClient::new(vault.channel(Role::Tokenizer).await);
    let mut all = Vec::new();
    for n in 0..120 {
        all.push(tokenize(&mut tokens, 2_000 + n).await.unwrap());
    }
    let mut admin = keys(&vault, Role::Admin).await;
    admin
        .rotate_data_key(pb::RotateDataKeyRequest {
            request_id: request_id(),
        })
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let rewrap = status(&mut admin).await.rewrap.unwrap();
        if rewrap.rows_done >= 10 {
            assert!(rewrap.rows_remaining > 0, "stopped mid-rewrap");
            assert_eq!(rewrap.state, pb::RewrapState::Running as i32);
            assert_eq!(rewrap.rows_total, 120);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rewrap never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let vault = vault.restart().await;
    let mut admin = keys(&vault, Role::Admin).await;
    let resumed = status(&mut admin).await.rewrap.unwrap();
    assert!(
        resumed.rows_done >= 10,
        "progress survives the restart: {resumed:?}"
    );
    wait_for_rewrap(&mut admin, Duration::from_secs(20)).await;
    assert_nonces_unique(&vault).await;
    let mut charges = ChargeServiceClient::new(vault.channel(Role::Orchestrator).await);
    for token in &all {
        charge(&mut charges, token)
            .await
            .expect("every card opens under the new key");
    }
    vault.stop().await;
}

/// Root-key rotation (dev source): every data key is re-wrapped, the key file is replaced,
/// and the vault restarts on the new root with every token usable.
#[tokio::test]
async fn root_key_rotation_with_the_dev_source() {
    let logs = LogCapture::install();
    let vault = RunningVault::start().await;
    let mut tokens = TokenServiceClient::new(vault.channel(Role::Tokenizer).await);
    let token = tokenize(&mut tokens, 3_000).await.unwrap();
    let mut admin = keys(&vault, Role::Admin).await;
    admin
        .rotate_data_key(pb::RotateDataKeyRequest {
            request_id: request_id(),
        })
        .await
        .unwrap();
    let before = std::fs::read_to_string(&vault.settings.keys.dev_root_key_path).unwrap();
    let rotated = admin
        .rotate_root_key(pb::RotateRootKeyRequest {
            request_id: "root-1".to_owned(),
            ..Default::default()
        })
        .await
        .expect("rotate root")
        .into_inner();
    assert_eq!(rotated.data_keys_rewrapped, 2);
    assert!(rotated.shares.is_empty());
    assert_eq!(rotated.seal.unwrap().root_key_version, 2);
    let after = std::fs::read_to_string(&vault.settings.keys.dev_root_key_path).unwrap();
    assert_ne!(before, after, "the key file holds the new root key");
    let bad = admin
        .rotate_root_key(pb::RotateRootKeyRequest {
            request_id: request_id(),
            shares_total: 3,
            threshold: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);

    let vault = vault.restart().await;
    let mut charges = ChargeServiceClient::new(vault.channel(Role::Orchestrator).await);
    charge(&mut charges, &token)
        .await
        .expect("the token charges under the new root");
    let mut tokens = TokenServiceClient::new(vault.channel(Role::Tokenizer).await);
    tokenize(&mut tokens, 3_001)
        .await
        .expect("new cards are sealed");
    // Neither root key reached the logs.
    let text = logs.text();
    for file in [&before, &after] {
        let key = file.lines().find(|l| !l.starts_with('#')).unwrap().trim();
        assert_eq!(key.len(), 64);
        assert!(!text.contains(key), "a root key reached the logs");
    }
    vault.stop().await;
}

fn share_hex(shares: &[Vec<u8>]) -> Vec<String> {
    shares.iter().map(hex::encode).collect()
}

async fn unseal(admin: &mut Keys, share: &[u8]) -> Result<pb::SealStatus, tonic::Status> {
    Ok(admin
        .unseal(pb::UnsealRequest {
            request_id: request_id(),
            share: share.to_vec(),
        })
        .await?
        .into_inner()
        .seal
        .expect("seal status"))
}

/// Sealed start with Shamir shares: data RPCs are refused with VAULT_SEALED and health says
/// NOT_SERVING; a malformed share, a non-admin caller and a wrong share fail clearly; three
/// correct shares unseal; a root rotation issues new shares that unseal after a restart while
/// the old ones no longer do; no share reaches the logs.
#[tokio::test]
async fn sealed_start_and_unseal_with_shares() {
    let logs = LogCapture::install();
    let database = TestDatabase::create().await;
    let mut settings = vault_settings(&database);
    settings.keys.root_key_source = RootKeySource::Shares;
    let pool = tandem_vault::server::connect_database(&settings)
        .await
        .unwrap();
    let shares: Vec<Vec<u8>> =
        tandem_vault::keys::admin::init_shares(&pool, settings.keys.clone(), 5, 3)
            .await
            .expect("init")
            .iter()
            .map(|s| s.to_vec())
            .collect();
    assert_eq!(shares.len(), 5);
    assert!(shares.iter().all(|s| s.len() == 33));
    let again = tandem_vault::keys::admin::init_shares(&pool, settings.keys.clone(), 5, 3).await;
    assert!(again.is_err(), "a vault is initialised once");
    pool.close().await;

    let vault = RunningVault::start_with(settings, database).await;
    let mut tokens = TokenServiceClient::new(vault.channel(Role::Tokenizer).await);
    let sealed = tokenize(&mut tokens, 4_000).await.unwrap_err();
    assert_eq!(
        (sealed.code(), vault_reason(&sealed).as_str()),
        (Code::Unavailable, "VAULT_SEALED")
    );
    tandem_tests::wait_until_not_serving(
        &vault,
        "tandem.vault.v1.TokenService",
        "health never reported the seal",
    )
    .await;

    let mut admin = keys(&vault, Role::Admin).await;
    let seal = status(&mut admin).await.seal.unwrap();
    assert_eq!(
        (
            seal.state,
            seal.threshold,
            seal.shares_total,
            seal.shares_received
        ),
        (pb::SealState::Sealed as i32, 3, 5, 0)
    );
    let mut tokenizer_keys = keys(&vault, Role::Tokenizer).await;
    let denied = unseal(&mut tokenizer_keys, &shares[0]).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let malformed = unseal(&mut admin, &shares[0][..10]).await.unwrap_err();
    assert_eq!(
        (malformed.code(), vault_reason(&malformed).as_str()),
        (Code::InvalidArgument, "SHARE_MALFORMED")
    );
    assert_eq!(
        unseal(&mut admin, &shares[0])
            .await
            .unwrap()
            .shares_received,
        1
    );
    assert_eq!(
        unseal(&mut admin, &shares[0])
            .await
            .unwrap()
            .shares_received,
        1,
        "an index counts once"
    );
    assert_eq!(
        unseal(&mut admin, &shares[1])
            .await
            .unwrap()
            .shares_received,
        2
    );
    let mut wrong = shares[2].clone();
    wrong[5] ^= 0x5a;
    let failed = unseal(&mut admin, &wrong).await.unwrap_err();
    assert_eq!(
        (failed.code(), vault_reason(&failed).as_str()),
        (Code::FailedPrecondition, "UNSEAL_FAILED")
    );
    assert_eq!(
        status(&mut admin).await.seal.unwrap().shares_received,
        0,
        "progress was reset"
    );
    for share in &shares[2..4] {
        assert_eq!(
            unseal(&mut admin, share).await.unwrap().state,
            pb::SealState::Sealed as i32
        );
    }
    let unsealed = unseal(&mut admin, &shares[4]).await.unwrap();
    assert_eq!(unsealed.state, pb::SealState::Unsealed as i32);
    let token = tokenize(&mut tokens, 4_001)
        .await
        .expect("tokenize after unseal");

    let rotated = admin
        .rotate_root_key(pb::RotateRootKeyRequest {
            request_id: "root-shares".to_owned(),
            shares_total: 4,
            threshold: 2,
        })
        .await
        .expect("rotate root")
        .into_inner();
    assert_eq!(rotated.shares.len(), 4);
    let replay = admin
        .rotate_root_key(pb::RotateRootKeyRequest {
            request_id: "root-shares".to_owned(),
            shares_total: 4,
            threshold: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(replay.shares_withheld && replay.shares.is_empty());

    admin
        .seal(pb::SealRequest {
            request_id: request_id(),
            reason: "drill".to_owned(),
        })
        .await
        .expect("seal");
    assert_eq!(
        vault_reason(&tokenize(&mut tokens, 4_002).await.unwrap_err()),
        "VAULT_SEALED"
    );

    let vault = vault.restart().await;
    let mut admin = keys(&vault, Role::Admin).await;
    // The new threshold is 2: two of the old shares are enough to try, and they fail.
    assert_eq!(unseal(&mut admin, &shares[0]).await.unwrap().threshold, 2);
    let old = unseal(&mut admin, &shares[1]).await.unwrap_err();
    assert_eq!(
        vault_reason(&old),
        "UNSEAL_FAILED",
        "the old shares are useless after rotation"
    );
    unseal(&mut admin, &rotated.shares[3]).await.unwrap();
    let unsealed = unseal(&mut admin, &rotated.shares[1]).await.unwrap();
    assert_eq!(
        (unsealed.state, unsealed.root_key_version),
        (pb::SealState::Unsealed as i32, 2)
    );
    let mut charges = ChargeServiceClient::new(vault.channel(Role::Orchestrator).await);
    charge(&mut charges, &token)
        .await
        .expect("cards open under the new root");

    let text = logs.text();
    let all_shares = shares
        .iter()
        .chain(&rotated.shares)
        .cloned()
        .collect::<Vec<_>>();
    for share in share_hex(&all_shares) {
        assert!(!text.contains(&share), "a share reached the logs");
    }
    let mut db = vault.database.connect().await;
    let audit: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM audit_events t")
        .fetch_one(&mut db)
        .await
        .unwrap();
    for share in share_hex(&all_shares) {
        assert!(!audit.contains(&share), "a share reached the audit log");
    }
    vault.stop().await;
}

/// Changing or deleting one audit row directly in the database makes VerifyAuditLog fail and
/// name the first broken row; auditors may verify and list, but not administer keys.
#[tokio::test]
async fn tampering_with_the_audit_log_is_detected() {
    let vault = RunningVault::start().await;
    let mut tokens = TokenServiceClient::new(vault.channel(Role::Tokenizer).await);
    let token = tokenize(&mut tokens, 5_000).await.unwrap();
    for _ in 0..5 {
        tokens
            .get_token(pb::GetTokenRequest {
                token: token.clone(),
            })
            .await
            .unwrap();
    }
    let mut auditor = keys(&vault, Role::Auditor).await;
    let verify = |start: i64| pb::VerifyAuditLogRequest {
        start_sequence: start,
        end_sequence: 0,
    };
    let intact = auditor
        .verify_audit_log(verify(0))
        .await
        .expect("verify")
        .into_inner();
    assert!(intact.intact);
    assert!(intact.events_checked >= 6);
    assert_eq!(intact.head_hash.len(), 64);

    let listed = auditor
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 2,
            token: token.clone(),
            outcome: pb::AuditOutcome::Succeeded as i32,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(listed.events.len(), 2);
    assert!(
        listed
            .events
            .iter()
            .all(|e| e.token == token && e.status_code == "OK")
    );
    let next = auditor
        .list_audit_events(pb::ListAuditEventsRequest {
            page_size: 2,
            token: token.clone(),
            outcome: pb::AuditOutcome::Succeeded as i32,
            page_token: listed.next_page_token.clone(),
            ..Default::default()
        })
        .await
        .expect("page 2")
        .into_inner();
    assert!(next.events[0].sequence > listed.events[1].sequence);
    let wrong_scope = auditor
        .list_audit_events(pb::ListAuditEventsRequest {
            page_token: listed.next_page_token,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(wrong_scope.code(), Code::InvalidArgument);
    // Rotations name the data-key version and carry their request id.
    let mut admin = keys(&vault, Role::Admin).await;
    admin
        .rotate_data_key(pb::RotateDataKeyRequest {
            request_id: "audit-rotate".to_owned(),
        })
        .await
        .unwrap();
    let rotation = auditor
        .list_audit_events(pb::ListAuditEventsRequest {
            rpc: "tandem.vault.v1.KeyAdminService/RotateDataKey".to_owned(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events;
    assert_eq!(
        (
            rotation[0].request_id.as_str(),
            rotation[0].resource.as_str()
        ),
        ("audit-rotate", "dek/2")
    );
    let denied = auditor
        .get_key_status(pb::GetKeyStatusRequest {})
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);

    let mut db = vault.database.connect().await;
    sqlx::query("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        .execute(&mut db)
        .await
        .unwrap();
    let original: String = sqlx::query_scalar("SELECT reason FROM audit_events WHERE seq = 3")
        .fetch_one(&mut db)
        .await
        .unwrap();
    sqlx::query("UPDATE audit_events SET reason = 'edited' WHERE seq = 3")
        .execute(&mut db)
        .await
        .unwrap();
    let changed = auditor
        .verify_audit_log(verify(0))
        .await
        .unwrap()
        .into_inner();
    assert!(!changed.intact);
    assert_eq!(
        (changed.first_broken_sequence, changed.break_kind),
        (3, pb::AuditChainBreak::HashMismatch as i32)
    );
    sqlx::query("UPDATE audit_events SET reason = $1 WHERE seq = 3")
        .bind(&original)
        .execute(&mut db)
        .await
        .unwrap();
    assert!(
        auditor
            .verify_audit_log(verify(0))
            .await
            .unwrap()
            .into_inner()
            .intact
    );
    sqlx::query("DELETE FROM audit_events WHERE seq = 5")
        .execute(&mut db)
        .await
        .unwrap();
    let deleted = auditor
        .verify_audit_log(verify(0))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (
            deleted.intact,
            deleted.first_broken_sequence,
            deleted.break_kind
        ),
        (false, 5, pb::AuditChainBreak::SequenceGap as i32)
    );
    // A range ending at the deleted row reports it too (and returns).
    let ending = auditor
        .verify_audit_log(pb::VerifyAuditLogRequest {
            start_sequence: 1,
            end_sequence: 5,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((ending.intact, ending.first_broken_sequence), (false, 5));
    // Verifying from after the gap trusts the starting row's link and finds the rest intact.
    assert!(
        auditor
            .verify_audit_log(verify(6))
            .await
            .unwrap()
            .into_inner()
            .intact
    );
    vault.stop().await;
}

/// Every key-administration RPC refuses the tokenizer and the orchestrator; mutating ones
/// refuse auditors; a sealed vault refuses rotations with VAULT_SEALED.
#[tokio::test]
async fn key_admin_roles_are_enforced() {
    let vault = RunningVault::start().await;
    for role in [Role::Tokenizer, Role::Orchestrator, Role::Auditor] {
        let mut client = keys(&vault, role).await;
        let calls: Vec<Result<(), tonic::Status>> = vec![
            client
                .get_key_status(pb::GetKeyStatusRequest {})
                .await
                .map(|_| ()),
            client
                .rotate_data_key(pb::RotateDataKeyRequest {
                    request_id: request_id(),
                })
                .await
                .map(|_| ()),
            client
                .retire_key_version(pb::RetireKeyVersionRequest {
                    request_id: request_id(),
                    version: 1,
                })
                .await
                .map(|_| ()),
            client
                .rotate_root_key(pb::RotateRootKeyRequest {
                    request_id: request_id(),
                    ..Default::default()
                })
                .await
                .map(|_| ()),
            client
                .unseal(pb::UnsealRequest {
                    request_id: request_id(),
                    share: Vec::new(),
                })
                .await
                .map(|_| ()),
            client
                .seal(pb::SealRequest {
                    request_id: request_id(),
                    reason: String::new(),
                })
                .await
                .map(|_| ()),
        ];
        for call in calls {
            assert_eq!(call.unwrap_err().code(), Code::PermissionDenied, "{role}");
        }
        if role != Role::Auditor {
            let list = client
                .list_audit_events(pb::ListAuditEventsRequest::default())
                .await;
            assert_eq!(list.unwrap_err().code(), Code::PermissionDenied, "{role}");
            let verify = client
                .verify_audit_log(pb::VerifyAuditLogRequest::default())
                .await;
            assert_eq!(verify.unwrap_err().code(), Code::PermissionDenied, "{role}");
        }
    }
    let mut admin = keys(&vault, Role::Admin).await;
    admin
        .seal(pb::SealRequest {
            request_id: request_id(),
            reason: "test".to_owned(),
        })
        .await
        .unwrap();
    let sealed = admin
        .rotate_data_key(pb::RotateDataKeyRequest {
            request_id: request_id(),
        })
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&sealed), "VAULT_SEALED");
    let mut charges = ChargeServiceClient::new(vault.channel(Role::Orchestrator).await);
    let refused = charges
        .get_charge(pb::GetChargeRequest {
            lookup: Some(pb::get_charge_request::Lookup::RequestId("x".to_owned())),
        })
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&refused), "VAULT_SEALED");
    // The dev source unseals with an empty share, which reloads the key file.
    let unsealed = unseal(&mut admin, &[]).await.unwrap();
    assert_eq!(unsealed.state, pb::SealState::Unsealed as i32);
    let mut tokens = TokenServiceClient::new(vault.channel(Role::Tokenizer).await);
    tokenize(&mut tokens, 6_000).await.expect("serving again");
    vault.stop().await;
}

/// Two vault processes on one database: B holds a reservation of encryptions under data key
/// v1 when A rotates, rewraps and retires v1. B's next tokenization must not write a card
/// under the retired key (its material is gone): it is sealed again under v2, and every card
/// opens through A.
#[tokio::test]
async fn a_second_vault_process_never_writes_under_a_retired_key() {
    let database = TestDatabase::create().await;
    let mut settings = vault_settings(&database);
    fast_rewrap(&mut settings, 5000, 50);
    let a = RunningVault::start_with(settings.clone(), database.clone()).await;
    // B's own rewrap job would notice the rotation and follow it; keep it asleep so that B
    // still seals under v1 when A retires it.
    settings.keys.rewrap_interval_ms = 3_600_000;
    let b = RunningVault::start_with(settings, database).await;
    let mut tokens_b = TokenServiceClient::new(b.channel(Role::Tokenizer).await);
    let first = tokenize(&mut tokens_b, 7_000).await.unwrap();

    let mut admin = keys(&a, Role::Admin).await;
    admin
        .rotate_data_key(pb::RotateDataKeyRequest {
            request_id: request_id(),
        })
        .await
        .unwrap();
    wait_for_rewrap(&mut admin, Duration::from_secs(10)).await;
    admin
        .retire_key_version(pb::RetireKeyVersionRequest {
            request_id: request_id(),
            version: 1,
        })
        .await
        .expect("retire v1");

    let second = tokenize(&mut tokens_b, 7_001)
        .await
        .expect("B tokenizes after the retirement");
    let mut db = a.database.connect().await;
    let versions: Vec<i32> = sqlx::query_scalar("SELECT dek_version FROM cards ORDER BY id")
        .fetch_all(&mut db)
        .await
        .unwrap();
    assert_eq!(versions, [2, 2], "no card is written under the retired v1");
    let mut charges = ChargeServiceClient::new(a.channel(Role::Orchestrator).await);
    for token in [&first, &second] {
        charge(&mut charges, token).await.expect("every card opens");
    }
    b.stop().await;
    a.stop().await;
}

/// A data-key version that reaches its encryption budget is rotated automatically: with a
/// budget of 8 encryptions, 30 tokenizations spread over several versions, each within its
/// budget, and every card opens.
#[tokio::test]
async fn data_keys_rotate_automatically_at_their_budget() {
    let database = TestDatabase::create().await;
    let mut settings = vault_settings(&database);
    settings.keys.dek_encryptions_max = 8;
    settings.keys.dek_reservation_block = 4;
    let vault = RunningVault::start_with(settings, database).await;
    let mut tokens = TokenServiceClient::new(vault.channel(Role::Tokenizer).await);
    let mut all = Vec::new();
    for n in 0..30 {
        all.push(tokenize(&mut tokens, 8_000 + n).await.expect("tokenize"));
    }
    let status = status(&mut keys(&vault, Role::Admin).await).await;
    assert!(
        status.data_keys.len() >= 4,
        "rotated automatically: {:?}",
        status.data_keys
    );
    for key in &status.data_keys {
        assert!(
            key.rows <= 8,
            "version {} sealed {} rows",
            key.version,
            key.rows
        );
    }
    let mut charges = ChargeServiceClient::new(vault.channel(Role::Orchestrator).await);
    for token in &all {
        charge(&mut charges, token).await.expect("every card opens");
    }
    assert_nonces_unique(&vault).await;
    vault.stop().await;
}
