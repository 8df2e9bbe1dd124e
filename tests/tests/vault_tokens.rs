//! End-to-end tests of the vault's `TokenService` over real gRPC, mutual TLS and Postgres.

use std::time::Duration;

use sqlx::{Executor as _, Row as _};
use tandem_proto::tandem::vault::v1 as pb;
use tandem_proto::tandem::vault::v1::token_service_client::TokenServiceClient;
use tandem_tests::{LogCapture, RunningVault, TEST_PANS, pki, vault_reason, violated_fields};
use tandem_tls::identity::Role;
use tonic::Code;
use tonic::transport::Channel;

type Client = TokenServiceClient<Channel>;

async fn client(vault: &RunningVault, role: Role) -> Client {
    TokenServiceClient::new(vault.channel(role).await)
}

fn tokenize_request(request_id: &str, pan: &str) -> pb::TokenizeRequest {
    pb::TokenizeRequest {
        request_id: request_id.to_owned(),
        pan: pan.to_owned(),
        expiry_month: 12,
        expiry_year: 2030,
        holder_name: "Ada Lovelace".to_owned(),
        reuse_existing: false,
        ttl_seconds: 0,
    }
}

async fn tokenize(client: &mut Client, request_id: &str, pan: &str) -> pb::Card {
    client
        .tokenize(tokenize_request(request_id, pan))
        .await
        .expect("tokenize")
        .into_inner()
        .card
        .expect("card")
}

/// Every value stored in the vault's tables, as text, for leak scans.
async fn dump_tables(vault: &RunningVault) -> String {
    let mut conn = vault.database.connect().await;
    let mut dump = String::new();
    for table in [
        "cards",
        "token_requests",
        "audit_events",
        "data_keys",
        "vault_secrets",
    ] {
        let rows = conn
            .fetch_all(format!("SELECT t::text AS row FROM {table} t").as_str())
            .await
            .expect("dump table");
        for row in rows {
            dump.push_str(&row.get::<String, _>("row"));
            dump.push('\n');
        }
    }
    dump
}

/// The whole token lifecycle over mTLS: tokenize, read metadata, list with pagination, update a
/// reissued card keeping its token, revoke, revoke by fingerprint. With every log line of the
/// process captured at TRACE level, no test PAN appears in the logs, nor in any table.
#[tokio::test]
async fn token_lifecycle_leaks_no_card_number() {
    let logs = LogCapture::install();
    let vault = RunningVault::start().await;
    let mut tokenizer = client(&vault, Role::Tokenizer).await;

    // Tokenize and read back.
    let visa = tokenize(&mut tokenizer, "life-1", "4242 4242 4242 4242").await;
    assert!(visa.token.starts_with("tok_") && visa.token.len() == 30);
    assert_eq!(visa.brand, pb::CardBrand::Visa as i32);
    assert_eq!(
        (visa.bin.as_str(), visa.last4.as_str()),
        ("42424242", "4242")
    );
    assert_eq!((visa.expiry_month, visa.expiry_year), (12, 2030));
    assert_eq!(visa.state, pb::TokenState::Active as i32);
    assert_eq!(visa.fingerprint.len(), 64);

    let got = tokenizer
        .get_token(pb::GetTokenRequest {
            token: visa.token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .card
        .unwrap();
    assert_eq!(got, visa);

    // A card number sent as a correlation id is replaced, never echoed, logged or audited.
    let mut request = tonic::Request::new(pb::GetTokenRequest {
        token: visa.token.clone(),
    });
    request
        .metadata_mut()
        .insert("x-request-id", "4242424242424242".parse().unwrap());
    let response = tokenizer.get_token(request).await.unwrap();
    let echoed = response
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert_ne!(echoed, "4242424242424242");

    // The orchestrator may read tokens too.
    let mut orchestrator = client(&vault, Role::Orchestrator).await;
    orchestrator
        .get_token(pb::GetTokenRequest {
            token: visa.token.clone(),
        })
        .await
        .expect("orchestrator may read tokens");

    // Five more cards, then page through all six two at a time, newest first.
    let mut issued = vec![visa.token.clone()];
    for (i, pan) in TEST_PANS.iter().cycle().skip(1).take(5).enumerate() {
        issued.push(
            tokenize(&mut tokenizer, &format!("life-more-{i}"), pan)
                .await
                .token,
        );
    }
    let mut listed = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = tokenizer
            .list_tokens(pb::ListTokensRequest {
                page_size: 2,
                page_token: page_token.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        pages += 1;
        assert!(page.cards.len() <= 2);
        listed.extend(page.cards.into_iter().map(|c| c.token));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
        assert!(pages < 10, "pagination does not end");
    }
    issued.reverse();
    assert_eq!(listed, issued);
    assert_eq!(pages, 3);

    // A reissued card: new PAN and expiry, same token.
    let updated = tokenizer
        .update_card(pb::UpdateCardRequest {
            request_id: "life-update".into(),
            token: visa.token.clone(),
            pan: "4000 0566 5566 5556".into(),
            expiry_month: 3,
            expiry_year: 2031,
            holder_name: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .card
        .unwrap();
    assert_eq!(updated.token, visa.token);
    assert_eq!(updated.last4, "5556");
    assert_eq!((updated.expiry_month, updated.expiry_year), (3, 2031));
    assert_ne!(updated.fingerprint, visa.fingerprint);

    // Revoke it; the revoked token can no longer be updated.
    let revoked = tokenizer
        .revoke_token(pb::RevokeTokenRequest {
            request_id: "life-revoke".into(),
            token: visa.token.clone(),
            reason: "card cancelled".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .card
        .unwrap();
    assert_eq!(revoked.state, pb::TokenState::Revoked as i32);
    let status = tokenizer
        .update_card(pb::UpdateCardRequest {
            request_id: "life-update-2".into(),
            token: visa.token.clone(),
            expiry_month: 4,
            expiry_year: 2031,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), vault_reason(&status)),
        (Code::FailedPrecondition, "TOKEN_REVOKED".into())
    );

    // Revoke every token of the Mastercard by its PAN (two were issued above).
    let mastercard: Vec<String> = tokenizer
        .list_tokens(pb::ListTokensRequest::default())
        .await
        .unwrap()
        .into_inner()
        .cards
        .into_iter()
        .filter(|c| c.last4 == "4444")
        .map(|c| c.token)
        .collect();
    assert_eq!(mastercard.len(), 2);
    let mut revoked_tokens = tokenizer
        .revoke_by_fingerprint(pb::RevokeByFingerprintRequest {
            request_id: "life-revoke-fp".into(),
            card: Some(pb::revoke_by_fingerprint_request::Card::Pan(
                "5555-5555-5555-4444".into(),
            )),
            reason: "reported stolen".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .revoked_tokens;
    revoked_tokens.sort();
    let mut expected = mastercard.clone();
    expected.sort();
    assert_eq!(revoked_tokens, expected);
    let revoked_list = tokenizer
        .list_tokens(pb::ListTokensRequest {
            state: pb::TokenState::Revoked as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .cards;
    assert_eq!(revoked_list.len(), 3);

    // Some refused calls, whose errors and audit rows must not leak either.
    let status = tokenizer
        .tokenize(tokenize_request("life-bad", "4242424242424241"))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["pan"]);
    let mut payer = client(&vault, Role::Payer).await;
    payer
        .tokenize(tokenize_request("life-denied", TEST_PANS[0]))
        .await
        .unwrap_err();

    let pool = sqlx::PgPool::connect(&vault.database.url).await.unwrap();
    let verification = tandem_vault::audit::verification::verify(&pool, 0, 0)
        .await
        .unwrap();
    assert_eq!(verification.broken.map(|(seq, _)| seq), None);
    assert!(verification.rows_checked >= 15, "{verification:?}");
    pool.close().await;

    let tables = dump_tables(&vault).await;
    vault.stop().await;
    let logs = logs.text();
    assert!(logs.contains("tokenized"), "log capture is not working");
    for pan in TEST_PANS {
        let spaced = format!(
            "{} {} {} {}",
            &pan[..4],
            &pan[4..8],
            &pan[8..12],
            &pan[12..]
        );
        for needle in [pan, spaced.as_str(), "Ada Lovelace"] {
            assert!(!logs.contains(needle), "logs contain {needle}");
            assert!(!tables.contains(needle), "tables contain {needle}");
        }
    }
}

/// Roles are checked per RPC: a wrong role is PERMISSION_DENIED with reason ROLE_NOT_ALLOWED,
/// and the refusal is audited.
#[tokio::test]
async fn wrong_role_is_permission_denied_and_audited() {
    let vault = RunningVault::start().await;
    let token = tokenize(
        &mut client(&vault, Role::Tokenizer).await,
        "role-1",
        TEST_PANS[0],
    )
    .await
    .token;
    for role in [
        Role::Payer,
        Role::Admin,
        Role::Auditor,
        Role::Treasury,
        Role::Reader,
        Role::Orchestrator,
    ] {
        let mut denied = client(&vault, role).await;
        let status = denied
            .tokenize(tokenize_request(&format!("role-{role}"), TEST_PANS[1]))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{role}");
        assert_eq!(vault_reason(&status), "ROLE_NOT_ALLOWED");
        let status = denied
            .revoke_token(pb::RevokeTokenRequest {
                request_id: format!("role-revoke-{role}"),
                token: token.clone(),
                reason: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{role}");
    }
    let mut conn = vault.database.connect().await;
    let denied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_events WHERE outcome = 'ROLE_NOT_ALLOWED'")
            .fetch_one(&mut conn)
            .await
            .unwrap();
    assert_eq!(denied, 12);
    vault.stop().await;
}

/// A connection without a client certificate, with a certificate from another CA, or in
/// plaintext never reaches a handler: the call fails and no audit row is written.
#[tokio::test]
async fn unauthenticated_connections_are_refused_before_any_handler() {
    let vault = RunningVault::start().await;
    let pki = pki();

    // A certificate from an untrusted CA.
    let rogue = vault.try_channel(&pki.rogue_client()).await;
    if let Ok(channel) = rogue {
        TokenServiceClient::new(channel)
            .get_token(pb::GetTokenRequest {
                token: "tok_x".into(),
            })
            .await
            .expect_err("untrusted CA must be refused");
    }

    // TLS without a client certificate.
    let ca = std::fs::read(&pki.client(Role::Tokenizer).ca_path).unwrap();
    let no_identity = tonic::transport::Endpoint::from_shared(vault.uri())
        .unwrap()
        .tls_config(
            tonic::transport::ClientTlsConfig::new()
                .ca_certificate(tonic::transport::Certificate::from_pem(ca))
                .domain_name("localhost"),
        )
        .unwrap()
        .connect_timeout(Duration::from_secs(5));
    if let Ok(channel) = no_identity.connect().await {
        TokenServiceClient::new(channel)
            .get_token(pb::GetTokenRequest {
                token: "tok_x".into(),
            })
            .await
            .expect_err("a connection without client certificate must be refused");
    }

    // Plaintext HTTP/2.
    let plaintext = tonic::transport::Endpoint::from_shared(format!("http://{}", vault.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(5));
    if let Ok(channel) = plaintext.connect().await {
        TokenServiceClient::new(channel)
            .get_token(pb::GetTokenRequest {
                token: "tok_x".into(),
            })
            .await
            .expect_err("plaintext must be refused");
    }

    let mut conn = vault.database.connect().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM audit_events")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let callers: Vec<(String, String)> = sqlx::query_as("SELECT caller, outcome FROM audit_events")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        rows, 0,
        "a refused connection reached a handler: {callers:?}"
    );
    vault.stop().await;
}

/// Bad input is INVALID_ARGUMENT with a BadRequest naming each field, never a half-written
/// record.
#[tokio::test]
async fn bad_input_names_the_field() {
    let vault = RunningVault::start().await;
    let mut tokenizer = client(&vault, Role::Tokenizer).await;
    let good = tokenize_request("bad-0", TEST_PANS[0]);
    let cases: Vec<(pb::TokenizeRequest, &[&str])> = vec![
        (
            pb::TokenizeRequest {
                request_id: String::new(),
                ..good.clone()
            },
            &["request_id"],
        ),
        (
            pb::TokenizeRequest {
                pan: String::new(),
                ..good.clone()
            },
            &["pan"],
        ),
        (
            pb::TokenizeRequest {
                pan: "4242 4242 4242 4241".into(),
                ..good.clone()
            },
            &["pan"],
        ),
        (
            pb::TokenizeRequest {
                pan: "1234 5678 9012 3452".into(),
                ..good.clone()
            },
            &["pan"],
        ),
        (
            pb::TokenizeRequest {
                pan: "4242x".into(),
                ..good.clone()
            },
            &["pan"],
        ),
        (
            pb::TokenizeRequest {
                expiry_month: 0,
                ..good.clone()
            },
            &["expiry_month"],
        ),
        (
            pb::TokenizeRequest {
                expiry_year: 2020,
                ..good.clone()
            },
            &["expiry_year"],
        ),
        (
            pb::TokenizeRequest {
                holder_name: "x".repeat(101),
                ..good.clone()
            },
            &["holder_name"],
        ),
        (
            pb::TokenizeRequest {
                ttl_seconds: -1,
                ..good.clone()
            },
            &["ttl_seconds"],
        ),
        (
            pb::TokenizeRequest {
                request_id: "a b".into(),
                pan: "42".into(),
                expiry_month: 13,
                ..good.clone()
            },
            &["request_id", "pan", "expiry_month"],
        ),
    ];
    for (request, fields) in cases {
        let status = tokenizer.tokenize(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(vault_reason(&status), "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), fields);
        assert!(!status.message().contains("4242"));
    }
    let status = tokenizer
        .get_token(pb::GetTokenRequest {
            token: "tok_notatoken".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["token"]);
    let status = tokenizer
        .revoke_by_fingerprint(pb::RevokeByFingerprintRequest {
            request_id: "bad-fp".into(),
            card: None,
            reason: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["fingerprint"]);
    let status = tokenizer
        .list_tokens(pb::ListTokensRequest {
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&status), ["page_token"]);

    let mut conn = vault.database.connect().await;
    let cards: i64 = sqlx::query_scalar("SELECT count(*) FROM cards")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let requests: i64 = sqlx::query_scalar("SELECT count(*) FROM token_requests")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!((cards, requests), (0, 0));
    vault.stop().await;
}

/// Tokenize is idempotent by request_id: the same id and card return the first token, even
/// when 20 copies arrive at once; the same id with another card is ALREADY_EXISTS with reason
/// REQUEST_ID_REUSED. `reuse_existing` returns the active token of the same PAN.
#[tokio::test]
async fn tokenize_is_idempotent_and_dedupes() {
    let vault = RunningVault::start().await;
    let tokenizer = client(&vault, Role::Tokenizer).await;

    let calls = (0..20).map(|_| {
        let mut c = tokenizer.clone();
        async move { c.tokenize(tokenize_request("idem-1", TEST_PANS[0])).await }
    });
    let results = join_all_spawned(calls).await;
    let tokens: std::collections::BTreeSet<String> = results
        .into_iter()
        .map(|r| r.expect("tokenize").into_inner().card.unwrap().token)
        .collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");

    let mut c = tokenizer.clone();
    let status = c
        .tokenize(tokenize_request("idem-1", TEST_PANS[1]))
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), vault_reason(&status)),
        (Code::AlreadyExists, "REQUEST_ID_REUSED".into())
    );

    let first = tokens.into_iter().next().unwrap();
    let reused = c
        .tokenize(pb::TokenizeRequest {
            reuse_existing: true,
            ..tokenize_request("idem-2", "4242-4242-4242-4242")
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!reused.created);
    assert_eq!(reused.card.unwrap().token, first);
    let fresh = c
        .tokenize(tokenize_request("idem-3", TEST_PANS[0]))
        .await
        .unwrap()
        .into_inner();
    assert!(fresh.created);
    assert_ne!(fresh.card.unwrap().token, first);

    let mut conn = vault.database.connect().await;
    let cards: i64 = sqlx::query_scalar("SELECT count(*) FROM cards")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(cards, 2);
    vault.stop().await;
}

/// Runs every future on its own task, so they really run at once, and collects the outputs.
async fn join_all_spawned<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut outputs = Vec::with_capacity(handles.len());
    for handle in handles {
        outputs.push(handle.await.expect("task"));
    }
    outputs
}

/// Copies of one revoke sent at once, each in its own transaction on one of the writer tasks,
/// all get the first result, and no write fails (the losers roll back to their savepoint and
/// replay the winner's result).
#[tokio::test]
async fn concurrent_copies_of_one_request_resolve_without_failing_a_batch() {
    let logs = LogCapture::install();
    // One job per transaction, so that copies run in different writer tasks at once.
    let database = tandem_tests::TestDatabase::create().await;
    let mut settings = tandem_tests::vault_settings(&database);
    settings.audit.batch_size_max = 1;
    let vault = RunningVault::start_with(settings, database).await;
    let mut tokenizer = client(&vault, Role::Tokenizer).await;
    let card = tokenize(&mut tokenizer, "copies-1", TEST_PANS[0]).await;
    for round in 0..5 {
        let calls = (0..16).map(|_| {
            let mut c = tokenizer.clone();
            let token = card.token.clone();
            async move {
                c.revoke_by_fingerprint(pb::RevokeByFingerprintRequest {
                    request_id: format!("copies-revoke-{round}"),
                    card: Some(pb::revoke_by_fingerprint_request::Card::Pan(
                        TEST_PANS[0].into(),
                    )),
                    reason: "lost".into(),
                })
                .await
                .map(|r| r.into_inner().revoked_tokens)
                .map_err(|s| (s.code(), token))
            }
        });
        let results = join_all_spawned(calls).await;
        let first = results[0].clone().expect("revoke");
        for result in results {
            assert_eq!(result.expect("revoke"), first);
        }
    }
    vault.stop().await;
    let logs = logs.text();
    assert!(!logs.contains("retrying one by one"), "a batch failed");
    assert!(!logs.contains("vault write failed"), "a write failed");
}

/// Tokenizations queued together are inserted by one statement per writer batch: distinct
/// requests each get their own card with their own data, copies of one request id within the
/// batch share one card, and a `reuse_existing` request in the same batch finds an earlier card.
/// The test checks that batches of several tokenizations did form (one audit time per batch).
#[tokio::test]
async fn a_batch_of_tokenizations_writes_each_card_once_with_its_own_data() {
    let logs = LogCapture::install();
    let database = tandem_tests::TestDatabase::create().await;
    let mut settings = tandem_tests::vault_settings(&database);
    // One writer task: while it commits a batch, the next requests queue into the next one.
    settings.audit.writer_tasks = 1;
    let vault = RunningVault::start_with(settings, database).await;
    let mut tokenizer = client(&vault, Role::Tokenizer).await;
    let earlier = tokenize(&mut tokenizer, "batch-earlier", TEST_PANS[3]).await;

    let request = |i: usize| {
        // Copies are the same request; the others differ from their neighbours.
        let expiry_month = (i % 12 + 1) as i32;
        let (request_id, pan, reuse_existing, expiry_month) = match i % 6 {
            // Copies of one request id.
            0 => ("batch-copy".to_owned(), TEST_PANS[0], false, 12),
            // The earlier card's PAN, deduplicated.
            1 => (format!("batch-reuse-{i}"), TEST_PANS[3], true, expiry_month),
            _ => (format!("batch-{i}"), TEST_PANS[i % 3], false, expiry_month),
        };
        pb::TokenizeRequest {
            reuse_existing,
            expiry_month,
            ..tokenize_request(&request_id, pan)
        }
    };
    let calls = (0..60).map(|i| {
        let mut c = tokenizer.clone();
        async move {
            let response = c.tokenize(request(i)).await.expect("tokenize").into_inner();
            (i, response)
        }
    });
    let results = join_all_spawned(calls).await;

    let copy_token = results[0].1.card.as_ref().unwrap().token.clone();
    let mut distinct = std::collections::BTreeSet::new();
    for (i, response) in &results {
        let sent = request(*i);
        let card = response.card.as_ref().expect("card");
        match i % 6 {
            0 => assert_eq!(card.token, copy_token, "copy {i}"),
            1 => {
                assert_eq!(card.token, earlier.token, "reuse {i}");
                assert!(!response.created);
                continue;
            }
            _ => assert!(response.created, "request {i}"),
        }
        // What was stored is this request's card, not a neighbour's in the batch.
        let stored = tokenizer
            .get_token(pb::GetTokenRequest {
                token: card.token.clone(),
            })
            .await
            .expect("get token")
            .into_inner()
            .card
            .expect("card");
        assert_eq!(stored.last4, sent.pan[sent.pan.len() - 4..], "request {i}");
        assert_eq!(stored.expiry_month, sent.expiry_month, "request {i}");
        distinct.insert(card.token.clone());
    }
    // 40 distinct requests, one shared by the 10 copies.
    assert_eq!(distinct.len(), 41);

    let mut conn = vault.database.connect().await;
    let cards: i64 = sqlx::query_scalar("SELECT count(*) FROM cards")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        cards, 42,
        "the earlier card, 40 distinct requests, one for the copies"
    );
    let largest_batch: i64 = sqlx::query_scalar(
        "SELECT max(n) FROM (SELECT count(*) AS n FROM audit_events \
         WHERE rpc LIKE '%/Tokenize' GROUP BY occurred_at) batches",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(largest_batch > 1, "no batch held two tokenizations");
    // Within a batch the new cards are audited in the order they were inserted.
    let out_of_order: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT row_number() OVER (PARTITION BY a.occurred_at ORDER BY a.seq) \
         AS by_audit, row_number() OVER (PARTITION BY a.occurred_at ORDER BY c.id) AS by_insert \
         FROM audit_events a JOIN cards c ON c.token = a.token \
         WHERE a.rpc LIKE '%/Tokenize' AND a.request_id ~ '^batch-[0-9]+$') rows \
         WHERE by_audit <> by_insert",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(out_of_order, 0, "audit order differs from insert order");
    vault.stop().await;
    let logs = logs.text();
    assert!(!logs.contains("retrying one by one"), "a batch failed");
}

/// A revoke by fingerprint and a tokenization of the same card, in flight at once, may land in
/// one writer batch, where the batch's new cards are inserted first. The audit chain must then
/// record the tokenization before the revoke that revoked its card: its order is the order
/// things took effect in. The test checks that such a batch did occur.
#[tokio::test]
async fn the_audit_chain_orders_a_batch_as_it_took_effect() {
    let database = tandem_tests::TestDatabase::create().await;
    let mut settings = tandem_tests::vault_settings(&database);
    settings.audit.writer_tasks = 1;
    let vault = RunningVault::start_with(settings, database).await;
    let tokenizer = client(&vault, Role::Tokenizer).await;
    let mut revoked_in_same_batch = 0;
    let mut conn = vault.database.connect().await;
    for round in 0..60 {
        let mut revoker = tokenizer.clone();
        let revoke = tokio::spawn(async move {
            revoker
                .revoke_by_fingerprint(pb::RevokeByFingerprintRequest {
                    request_id: format!("order-revoke-{round}"),
                    card: Some(pb::revoke_by_fingerprint_request::Card::Pan(
                        TEST_PANS[0].into(),
                    )),
                    reason: "lost".into(),
                })
                .await
                .expect("revoke")
                .into_inner()
                .revoked_tokens
        });
        let calls = (0..4).map(|i| {
            let mut c = tokenizer.clone();
            let pan = TEST_PANS[if i == 0 { 0 } else { 1 }];
            async move { tokenize(&mut c, &format!("order-{round}-{i}"), pan).await }
        });
        let cards = join_all_spawned(calls).await;
        let revoked = revoke.await.expect("task");
        let new_token = &cards[0].token;
        if !revoked.contains(new_token) {
            continue;
        }
        let seq_of = |request_id: String| {
            sqlx::query_as::<_, (i64, time::OffsetDateTime)>(
                "SELECT seq, occurred_at FROM audit_events WHERE request_id = $1",
            )
            .bind(request_id)
        };
        let (tokenized, tokenized_at) = seq_of(format!("order-{round}-0"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        let (revoked_seq, revoked_at) = seq_of(format!("order-revoke-{round}"))
            .fetch_one(&mut conn)
            .await
            .unwrap();
        assert!(
            tokenized < revoked_seq,
            "round {round}: the revoke of {new_token} is audited before its tokenization"
        );
        if tokenized_at == revoked_at {
            revoked_in_same_batch += 1;
        }
    }
    assert!(
        revoked_in_same_batch > 0,
        "no batch held a tokenization and the revoke of its card"
    );
    vault.stop().await;
}

/// Concurrent `reuse_existing` tokenizations of one card under different request ids, each in
/// its own transaction, share one token.
#[tokio::test]
async fn concurrent_reuse_existing_issues_one_token() {
    let database = tandem_tests::TestDatabase::create().await;
    let mut settings = tandem_tests::vault_settings(&database);
    settings.audit.batch_size_max = 1;
    let vault = RunningVault::start_with(settings, database).await;
    let tokenizer = client(&vault, Role::Tokenizer).await;
    let calls = (0..12).map(|i| {
        let mut c = tokenizer.clone();
        async move {
            c.tokenize(pb::TokenizeRequest {
                reuse_existing: true,
                ..tokenize_request(&format!("reuse-race-{i}"), TEST_PANS[1])
            })
            .await
            .map(|r| r.into_inner())
        }
    });
    let results = join_all_spawned(calls).await;
    let tokens: std::collections::BTreeSet<String> = results
        .iter()
        .map(|r| {
            r.as_ref()
                .expect("tokenize")
                .card
                .as_ref()
                .unwrap()
                .token
                .clone()
        })
        .collect();
    assert_eq!(tokens.len(), 1, "{tokens:?}");
    let created = results
        .iter()
        .filter(|r| r.as_ref().unwrap().created)
        .count();
    assert_eq!(created, 1);
    vault.stop().await;
}

/// A token with a time to live expires: the purge job deletes its card data and reads show it
/// EXPIRED; it can no longer be updated.
#[tokio::test]
async fn ttl_purge_deletes_card_data() {
    let vault = RunningVault::start().await;
    let mut tokenizer = client(&vault, Role::Tokenizer).await;
    let short = tokenizer
        .tokenize(pb::TokenizeRequest {
            ttl_seconds: 1,
            ..tokenize_request("ttl-1", TEST_PANS[0])
        })
        .await
        .unwrap()
        .into_inner()
        .card
        .unwrap();
    assert!(short.expire_time.is_some());
    let long = tokenize(&mut tokenizer, "ttl-2", TEST_PANS[1]).await;

    // Past its time to live the token reads EXPIRED at once, before the purge job runs.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let card = tokenizer
        .get_token(pb::GetTokenRequest {
            token: short.token.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .card
        .unwrap();
    assert_eq!(card.state, pb::TokenState::Expired as i32);

    // The purge job then deletes its card data, and only its.
    let mut conn = vault.database.connect().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (purged, kept): (bool, bool) = sqlx::query_as(
            "SELECT bool_and(ciphertext IS NULL) FILTER (WHERE token = $1), \
             bool_and(ciphertext IS NOT NULL) FILTER (WHERE token = $2) FROM cards",
        )
        .bind(&short.token)
        .bind(&long.token)
        .fetch_one(&mut conn)
        .await
        .unwrap();
        assert!(kept);
        if purged {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "card data never purged"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = tokenizer
        .update_card(pb::UpdateCardRequest {
            request_id: "ttl-update".into(),
            token: short.token.clone(),
            expiry_month: 1,
            expiry_year: 2031,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(vault_reason(&status), "TOKEN_EXPIRED");
    vault.stop().await;
}

/// The audit log is append-only in the database, and `verify` finds a row changed behind the
/// trigger's back.
#[tokio::test]
async fn audit_chain_detects_tampering() {
    let vault = RunningVault::start().await;
    let mut tokenizer = client(&vault, Role::Tokenizer).await;
    for i in 0..5 {
        tokenize(
            &mut tokenizer,
            &format!("audit-{i}"),
            TEST_PANS[i % TEST_PANS.len()],
        )
        .await;
    }
    let mut conn = vault.database.connect().await;
    for statement in [
        "UPDATE audit_events SET outcome = 'OK' WHERE seq = 2",
        "DELETE FROM audit_events WHERE seq = 2",
        "TRUNCATE audit_events",
    ] {
        let error = conn.execute(statement).await.expect_err(statement);
        assert!(error.to_string().contains("append-only"), "{error}");
    }
    let pool = sqlx::PgPool::connect(&vault.database.url).await.unwrap();
    assert_eq!(
        tandem_vault::audit::verification::verify(&pool, 0, 0)
            .await
            .unwrap()
            .broken
            .map(|(seq, _)| seq),
        None
    );

    // A superuser bypasses the trigger; the chain still tells.
    conn.execute("ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only")
        .await
        .unwrap();
    conn.execute("UPDATE audit_events SET caller = 'tokenizer/someone-else' WHERE seq = 3")
        .await
        .unwrap();
    assert_eq!(
        tandem_vault::audit::verification::verify(&pool, 0, 0)
            .await
            .unwrap()
            .broken
            .map(|(seq, _)| seq),
        Some(3)
    );
    pool.close().await;
    vault.stop().await;
}

/// A ciphertext copied onto another token's row does not decrypt there (the AAD binds the
/// token): the update that needs it fails with DATA_LOSS `CARD_DATA_UNREADABLE` instead of
/// serving the wrong card.
#[tokio::test]
async fn ciphertext_moved_to_another_row_does_not_open() {
    let vault = RunningVault::start().await;
    let mut tokenizer = client(&vault, Role::Tokenizer).await;
    let a = tokenize(&mut tokenizer, "move-a", TEST_PANS[0]).await;
    let b = tokenize(&mut tokenizer, "move-b", TEST_PANS[1]).await;
    let mut conn = vault.database.connect().await;
    sqlx::query(
        "UPDATE cards SET ciphertext = src.ciphertext, nonce = src.nonce \
         FROM cards src WHERE src.token = $1 AND cards.token = $2",
    )
    .bind(&a.token)
    .bind(&b.token)
    .execute(&mut conn)
    .await
    .unwrap();
    let status = tokenizer
        .update_card(pb::UpdateCardRequest {
            request_id: "move-update".into(),
            token: b.token.clone(),
            expiry_month: 1,
            expiry_year: 2031,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        (status.code(), vault_reason(&status)),
        (Code::DataLoss, "CARD_DATA_UNREADABLE".into())
    );
    vault.stop().await;
}

/// Keys survive a restart: the vault reloads its data keys under the same root key, and
/// refuses to start under a different one with a clear error.
#[tokio::test]
async fn restart_reloads_keys_and_refuses_a_wrong_root_key() {
    let vault = RunningVault::start().await;
    let mut tokenizer = client(&vault, Role::Tokenizer).await;
    let card = tokenize(&mut tokenizer, "restart-1", TEST_PANS[0]).await;
    let (settings, database) = (vault.settings.clone(), vault.database.clone());
    vault.stop().await;

    let vault = RunningVault::start_with(settings.clone(), database.clone()).await;
    let mut tokenizer = client(&vault, Role::Tokenizer).await;
    let updated = tokenizer
        .update_card(pb::UpdateCardRequest {
            request_id: "restart-update".into(),
            token: card.token.clone(),
            expiry_month: 6,
            expiry_year: 2032,
            ..Default::default()
        })
        .await
        .expect("update after restart decrypts the card")
        .into_inner()
        .card
        .unwrap();
    assert_eq!(
        (updated.last4.as_str(), updated.expiry_year),
        ("4242", 2032)
    );
    vault.stop().await;

    let mut wrong = settings;
    wrong.keys.dev_root_key_path = std::env::temp_dir()
        .join(format!("tandem-test-other-root-{}", database.name))
        .join("root.key");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let error = tandem_vault::run(listener, wrong, async {})
        .await
        .unwrap_err();
    assert!(
        error.to_string().contains("is not the one that wrapped"),
        "{error}"
    );
}
