//! Postgres tests of the ledger: result codes, database-held constraints, reads and export, a
//! property test against an in-memory model, and concurrent writers on hot accounts.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use sqlx::{Executor as _, PgPool};
use tandem_ledger::batch::{LedgerWriter, WriterLimits};
use tandem_ledger::export::{self, Format};
use tandem_ledger::invariants;
use tandem_ledger::ledger::{self, TransferFilter};
use tandem_ledger::types::*;
use tandem_tests::TestDatabase;
use time::OffsetDateTime;

async fn ledger_pool() -> (TestDatabase, PgPool) {
    let database = TestDatabase::create().await;
    let pool = PgPool::connect(&database.url).await.unwrap();
    tandem_ledger::MIGRATOR.run(&pool).await.unwrap();
    (database, pool)
}

fn aid(text: &str) -> AccountId {
    AccountId::new(text).unwrap()
}

fn tid(text: &str) -> TransferId {
    TransferId::new(text).unwrap()
}

fn account(id: &str, currency: &str, limit: BalanceLimit) -> NewAccount {
    NewAccount {
        id: aid(id),
        currency: Currency::new(currency).unwrap(),
        code: AccountCode::FundingSource,
        limit,
        refs: AccountRefs::default(),
    }
}

fn single(id: &str, debit: &str, credit: &str, amount: i64) -> Transfer {
    Transfer {
        id: tid(id),
        kind: TransferKind::Single {
            debit: aid(debit),
            credit: aid(credit),
            amount,
        },
        linked: false,
        refs: TransferRefs::default(),
    }
}

fn pending(id: &str, debit: &str, credit: &str, amount: i64) -> Transfer {
    Transfer {
        id: tid(id),
        kind: TransferKind::Pending {
            debit: aid(debit),
            credit: aid(credit),
            amount,
            timeout_at: None,
        },
        linked: false,
        refs: TransferRefs::default(),
    }
}

fn post(id: &str, pending: &str, amount: Option<i64>) -> Transfer {
    Transfer {
        id: tid(id),
        kind: TransferKind::PostPending {
            pending_id: tid(pending),
            amount,
        },
        linked: false,
        refs: TransferRefs::default(),
    }
}

fn void(id: &str, pending: &str) -> Transfer {
    Transfer {
        id: tid(id),
        kind: TransferKind::VoidPending {
            pending_id: tid(pending),
        },
        linked: false,
        refs: TransferRefs::default(),
    }
}

async fn create(pool: &PgPool, transfers: &[Transfer]) -> Vec<TransferResult> {
    let mut tx = pool.begin().await.unwrap();
    let results = ledger::create_transfers(&mut tx, transfers).await.unwrap();
    tx.commit().await.unwrap();
    results
}

async fn balances(pool: &PgPool, id: &str) -> Balances {
    ledger::accounts_by_id(pool, &[aid(id)]).await.unwrap()[0].balances
}

async fn assert_invariants(pool: &PgPool) {
    let report = invariants::check(pool, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert!(report.holds(), "{report:?}");
}

async fn setup_accounts(pool: &PgPool) {
    let mut conn = pool.acquire().await.unwrap();
    let results = ledger::create_accounts(
        &mut conn,
        &[
            account("card", "USD", BalanceLimit::None),
            account("invoice", "USD", BalanceLimit::None),
            account("prepaid", "USD", BalanceLimit::DebitsMustNotExceedCredits),
            account("capped", "USD", BalanceLimit::CreditsMustNotExceedDebits),
            account("eur", "EUR", BalanceLimit::None),
        ],
    )
    .await
    .unwrap();
    assert!(results.iter().all(|r| *r == AccountResult::Ok));
}

/// A call over the per-call bound is refused whole, before touching the database.
#[tokio::test]
async fn oversized_calls_are_refused() {
    let (_db, pool) = ledger_pool().await;
    setup_accounts(&pool).await;
    let transfers: Vec<Transfer> = (0..=ledger::TRANSFERS_PER_CALL_MAX)
        .map(|i| single(&format!("big{i}"), "card", "invoice", 1))
        .collect();
    let mut tx = pool.begin().await.unwrap();
    let error = ledger::create_transfers(&mut tx, &transfers)
        .await
        .unwrap_err();
    assert!(
        matches!(error, tandem_ledger::LedgerError::TooManyTransfers(n) if n == transfers.len())
    );
    drop(tx);
    let writer = LedgerWriter::spawn(pool.clone(), WriterLimits::default());
    assert!(writer.create_transfers(transfers).await.is_err());
    assert_eq!(balances(&pool, "card").await, Balances::default());
}

/// Accounts are idempotent by id.
#[tokio::test]
async fn accounts_are_idempotent() {
    let (_db, pool) = ledger_pool().await;
    setup_accounts(&pool).await;
    let mut conn = pool.acquire().await.unwrap();
    let results = ledger::create_accounts(
        &mut conn,
        &[
            account("card", "USD", BalanceLimit::None),
            account("card", "EUR", BalanceLimit::None),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        results,
        [
            AccountResult::Exists,
            AccountResult::ExistsWithDifferentFields
        ]
    );
}

/// One call creating an id twice makes one account: the first is new, the second exists (with
/// the same fields or not); an oversized call is refused whole.
#[tokio::test]
async fn accounts_repeated_within_one_call() {
    let (_db, pool) = ledger_pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let results = ledger::create_accounts(
        &mut conn,
        &[
            account("twice", "USD", BalanceLimit::None),
            account("other", "USD", BalanceLimit::None),
            account("twice", "USD", BalanceLimit::None),
            account("twice", "EUR", BalanceLimit::None),
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        results,
        [
            AccountResult::Ok,
            AccountResult::Ok,
            AccountResult::Exists,
            AccountResult::ExistsWithDifferentFields
        ]
    );
    let stored = ledger::accounts_by_id(
        &mut *conn,
        &[
            AccountId::new("twice").unwrap(),
            AccountId::new("other").unwrap(),
        ],
    )
    .await
    .unwrap();
    assert_eq!(stored.len(), 2);
    assert!(stored.iter().all(|a| a.currency.as_str() == "USD"));

    let many: Vec<_> = (0..=ledger::ACCOUNTS_PER_CALL_MAX)
        .map(|i| account(&format!("many{i}"), "USD", BalanceLimit::None))
        .collect();
    let error = ledger::create_accounts(&mut conn, &many).await.unwrap_err();
    assert!(
        matches!(error, tandem_ledger::LedgerError::TooManyAccounts(n) if n == many.len()),
        "{error}"
    );
}

/// Every result code reaches the caller through Postgres, and failures write nothing.
#[tokio::test]
async fn result_codes_through_postgres() {
    use TransferResult as R;
    let (_db, pool) = ledger_pool().await;
    setup_accounts(&pool).await;
    let cases: Vec<(Vec<Transfer>, Vec<R>)> = vec![
        (vec![single("s1", "card", "invoice", 500)], vec![R::Ok]),
        (vec![single("s1", "card", "invoice", 500)], vec![R::Exists]),
        (
            vec![single("s1", "card", "invoice", 501)],
            vec![R::ExistsWithDifferentFields],
        ),
        (
            vec![single("s2", "card", "invoice", 0)],
            vec![R::AmountMustBePositive],
        ),
        (
            vec![single("s2", "card", "card", 1)],
            vec![R::AccountsMustBeDifferent],
        ),
        (
            vec![single("s2", "nope", "invoice", 1)],
            vec![R::DebitAccountNotFound],
        ),
        (
            vec![single("s2", "card", "nope", 1)],
            vec![R::CreditAccountNotFound],
        ),
        (
            vec![single("s2", "card", "eur", 1)],
            vec![R::CurrenciesMustMatch],
        ),
        (
            vec![single("s2", "prepaid", "invoice", 1)],
            vec![R::ExceedsCredits],
        ),
        (
            vec![single("s2", "card", "capped", 1)],
            vec![R::ExceedsDebits],
        ),
        (vec![pending("h1", "card", "invoice", 1000)], vec![R::Ok]),
        (vec![post("p0", "nope", None)], vec![R::PendingNotFound]),
        (
            vec![post("p0", "s1", None)],
            vec![R::PendingTransferNotPending],
        ),
        (
            vec![post("p0", "h1", Some(1001))],
            vec![R::ExceedsPendingAmount],
        ),
        (vec![post("p1", "h1", Some(700))], vec![R::Ok]),
        (vec![post("p2", "h1", None)], vec![R::PendingAlreadyPosted]),
        (
            vec![pending("h2", "card", "invoice", 50), void("v2", "h2")],
            vec![R::Ok, R::Ok],
        ),
        (vec![post("p3", "h2", None)], vec![R::PendingAlreadyVoided]),
        (
            vec![
                Transfer {
                    linked: true,
                    ..single("l1", "card", "invoice", 5)
                },
                single("l2", "card", "nope", 5),
            ],
            vec![R::LinkedEventFailed, R::CreditAccountNotFound],
        ),
        (
            vec![Transfer {
                linked: true,
                ..single("l3", "card", "invoice", 5)
            }],
            vec![R::LinkedEventChainOpen],
        ),
    ];
    for (transfers, expected) in cases {
        assert_eq!(create(&pool, &transfers).await, expected, "{transfers:?}");
        assert_invariants(&pool).await;
    }
    let card = balances(&pool, "card").await;
    assert_eq!((card.debits_pending, card.debits_posted), (0, 1200));
    let linked: i64 =
        sqlx::query_scalar("SELECT count(*) FROM ledger_transfers WHERE id LIKE 'l%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(linked, 0, "a failed chain left rows behind");
}

/// The database itself refuses what the code never does: changing or deleting a transfer,
/// touching a balance directly, a currency mismatch, a post larger than its hold, a second
/// resolution of one hold, an account created with a balance.
#[tokio::test]
async fn database_holds_the_invariants() {
    let (_db, pool) = ledger_pool().await;
    setup_accounts(&pool).await;
    create(
        &pool,
        &[
            single("s1", "card", "invoice", 10),
            pending("h1", "card", "invoice", 10),
        ],
    )
    .await;
    create(&pool, &[post("p1", "h1", None)]).await;
    let refused = [
        "UPDATE ledger_transfers SET amount = 11 WHERE id = 's1'",
        "DELETE FROM ledger_transfers WHERE id = 's1'",
        "TRUNCATE ledger_transfers",
        "UPDATE ledger_accounts SET debits_posted = 0 WHERE id = 'card'",
        "DELETE FROM ledger_accounts WHERE id = 'eur'",
        "UPDATE ledger_accounts SET currency = 'GBP' WHERE id = 'eur'",
        "INSERT INTO ledger_accounts (id, currency, code, debits_must_not_exceed_credits, \
         credits_must_not_exceed_debits) VALUES ('bad id', 'USD', 'refunds', false, false)",
        "INSERT INTO ledger_accounts (id, currency, code, debits_must_not_exceed_credits, \
         credits_must_not_exceed_debits) VALUES ('lower', 'usd', 'refunds', false, false)",
        "INSERT INTO ledger_accounts (id, currency, code, debits_must_not_exceed_credits, \
         credits_must_not_exceed_debits) VALUES ('kind', 'USD', 'savings', false, false)",
        "INSERT INTO ledger_accounts (id, currency, code, debits_must_not_exceed_credits, \
         credits_must_not_exceed_debits, credits_posted) VALUES ('rich', 'USD', 'refunds', false, false, 100)",
        "INSERT INTO ledger_transfers (id, kind, debit_account_id, credit_account_id, currency, amount, created_at) \
         VALUES ('x1', 'single', 'card', 'eur', 'USD', 5, now())",
        "INSERT INTO ledger_transfers (id, kind, debit_account_id, credit_account_id, currency, amount, created_at) \
         VALUES ('x2', 'single', 'card', 'invoice', 'USD', -5, now())",
    ];
    let mut conn = pool.acquire().await.unwrap();
    for statement in refused {
        assert!(
            conn.execute(statement).await.is_err(),
            "accepted: {statement}"
        );
    }
    // A hold written in raw SQL is accepted (the trigger applies it); posts of it are checked.
    conn.execute(
        "INSERT INTO ledger_transfers (id, kind, debit_account_id, credit_account_id, currency, amount, created_at) \
         VALUES ('x3', 'pending', 'card', 'invoice', 'USD', 5, now())",
    )
    .await
    .expect("a raw hold is allowed");
    for statement in [
        // A post larger than its hold.
        "INSERT INTO ledger_transfers (id, kind, debit_account_id, credit_account_id, currency, amount, pending_id, created_at) \
         VALUES ('x4', 'post_pending', 'card', 'invoice', 'USD', 6, 'x3', now())",
        // A post between other accounts than its hold's.
        "INSERT INTO ledger_transfers (id, kind, debit_account_id, credit_account_id, currency, amount, pending_id, created_at) \
         VALUES ('x5', 'post_pending', 'invoice', 'card', 'USD', 5, 'x3', now())",
        // A second resolution of an already posted hold.
        "INSERT INTO ledger_transfers (id, kind, debit_account_id, credit_account_id, currency, amount, pending_id, created_at) \
         VALUES ('x6', 'void_pending', 'card', 'invoice', 'USD', 10, 'h1', now())",
        // A post of a transfer that is not a hold.
        "INSERT INTO ledger_transfers (id, kind, debit_account_id, credit_account_id, currency, amount, pending_id, created_at) \
         VALUES ('x7', 'post_pending', 'card', 'invoice', 'USD', 10, 's1', now())",
    ] {
        assert!(
            conn.execute(statement).await.is_err(),
            "accepted: {statement}"
        );
    }
    // The prepaid account's limit is a CHECK: a raw overdraft is refused too.
    assert!(
        conn.execute(
            "INSERT INTO ledger_transfers (id, kind, debit_account_id, credit_account_id, currency, amount, created_at) \
             VALUES ('x8', 'single', 'prepaid', 'invoice', 'USD', 1, now())"
        )
        .await
        .is_err()
    );
    drop(conn);
    assert_invariants(&pool).await;
}

/// Reads by payment, card and cost center page in ledger order; balances as of a past time
/// are recomputed from transfers; the export writes CSV and JSON lines.
#[tokio::test]
async fn reads_and_export() {
    let (_db, pool) = ledger_pool().await;
    let mut conn = pool.acquire().await.unwrap();
    ledger::create_accounts(
        &mut conn,
        &[
            NewAccount {
                refs: AccountRefs {
                    card_token: Some("tok_a".into()),
                    ..Default::default()
                },
                ..account("card:a", "USD", BalanceLimit::None)
            },
            NewAccount {
                refs: AccountRefs {
                    card_token: Some("tok_b".into()),
                    ..Default::default()
                },
                ..account("card:b", "USD", BalanceLimit::None)
            },
            NewAccount {
                code: AccountCode::Receivable,
                ..account("invoice", "USD", BalanceLimit::None)
            },
        ],
    )
    .await
    .unwrap();
    drop(conn);
    let with_refs = |t: Transfer, payment: &str, cost_center: &str| Transfer {
        refs: TransferRefs {
            payment_id: Some(payment.into()),
            invoice_id: Some("inv-12345".into()),
            leg_id: None,
            cost_center: Some(cost_center.into()),
            processor_reference: Some(format!("sbx_{payment}")),
        },
        ..t
    };
    create(
        &pool,
        &[
            with_refs(pending("pay1/a", "card:a", "invoice", 700), "pay1", "ops"),
            with_refs(
                pending("pay1/b", "card:b", "invoice", 1300),
                "pay1",
                "eng, \"core\"",
            ),
        ],
    )
    .await;
    let before_capture = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(5)).await;
    create(
        &pool,
        &[
            with_refs(post("pay1/a/capture", "pay1/a", None), "pay1", "ops"),
            with_refs(
                post("pay1/b/capture", "pay1/b", None),
                "pay1",
                "eng, \"core\"",
            ),
            with_refs(single("pay2/a", "card:a", "invoice", 50), "pay2", "ops"),
        ],
    )
    .await;

    let mut ids = Vec::new();
    let mut token = None;
    loop {
        let filter = TransferFilter {
            payment_id: Some("pay1".into()),
            ..Default::default()
        };
        let page = ledger::list_transfers(&pool, &filter, 3, token.as_deref())
            .await
            .unwrap();
        ids.extend(page.transfers.iter().map(|t| t.id.to_string()));
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(
        ids,
        ["pay1/a", "pay1/b", "pay1/a/capture", "pay1/b/capture"]
    );

    let by_card = TransferFilter {
        card_token: Some("tok_a".into()),
        ..Default::default()
    };
    let card_a = ledger::list_transfers(&pool, &by_card, 100, None)
        .await
        .unwrap();
    assert_eq!(card_a.transfers.len(), 3);
    let ops = TransferFilter {
        cost_center: Some("ops".into()),
        ..Default::default()
    };
    let ops_total: i64 = ledger::list_transfers(&pool, &ops, 100, None)
        .await
        .unwrap()
        .transfers
        .iter()
        .filter(|t| t.kind != StoredKind::Pending)
        .map(|t| t.amount)
        .sum();
    assert_eq!(ops_total, 750);

    let then = ledger::balances_as_of(&pool, &aid("card:a"), before_capture)
        .await
        .unwrap();
    assert_eq!((then.debits_pending, then.debits_posted), (700, 0));
    let now = ledger::balances_as_of(&pool, &aid("card:a"), OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(now, balances(&pool, "card:a").await);
    assert_eq!((now.debits_pending, now.debits_posted), (0, 750));

    let mut csv = Vec::new();
    let written = export::export(&pool, &TransferFilter::default(), Format::Csv, &mut csv)
        .await
        .unwrap();
    assert_eq!(written, 5);
    let csv = String::from_utf8(csv).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next().unwrap(), export::COLUMNS.join(","));
    assert!(csv.contains("\"eng, \"\"core\"\"\""), "{csv}");
    let mut jsonl = Vec::new();
    export::export(&pool, &by_card, Format::JsonLines, &mut jsonl)
        .await
        .unwrap();
    let objects: Vec<serde_json::Value> = String::from_utf8(jsonl)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objects.len(), 3);
    assert_eq!(objects[2]["amount_minor_units"], 50);
    assert_eq!(objects[0]["kind"], "pending");
    assert_invariants(&pool).await;
}

/// Holds past their timeout are voided by `expire_pending`; until then the invariant check
/// reports them.
#[tokio::test]
async fn expired_holds_are_released() {
    let (_db, pool) = ledger_pool().await;
    setup_accounts(&pool).await;
    let soon = OffsetDateTime::now_utc() + time::Duration::milliseconds(200);
    let mut hold = pending("h", "card", "invoice", 40);
    if let TransferKind::Pending { timeout_at, .. } = &mut hold.kind {
        *timeout_at = Some(soon);
    }
    assert_eq!(create(&pool, &[hold]).await, [TransferResult::Ok]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = invariants::check(&pool, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(report.violations.len(), 1, "{report:?}");
    assert_eq!(
        create(&pool, &[post("p", "h", None)]).await,
        [TransferResult::PendingExpired]
    );
    let mut conn = pool.acquire().await.unwrap();
    assert_eq!(
        ledger::expire_pending(&mut conn, OffsetDateTime::now_utc(), 100)
            .await
            .unwrap(),
        1
    );
    drop(conn);
    assert_eq!(balances(&pool, "card").await, Balances::default());
    assert_invariants(&pool).await;
}

/// 32 writers on 10 hot accounts for three seconds, half through the batching writer and half
/// in their own transactions: no error reaches a caller, the totals are exact, the invariant
/// check holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_hot_accounts() {
    let (_db, pool) = ledger_pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let accounts: Vec<NewAccount> = (0..10)
        .map(|i| account(&format!("hot{i}"), "USD", BalanceLimit::None))
        .collect();
    ledger::create_accounts(&mut conn, &accounts).await.unwrap();
    drop(conn);
    let writer = LedgerWriter::spawn(pool.clone(), WriterLimits::default());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for w in 0..32u64 {
        let (pool, writer) = (pool.clone(), writer.clone());
        tasks.push(tokio::spawn(async move {
            let mut moved: HashMap<(u64, u64), i64> = HashMap::new();
            let mut n = 0u64;
            while tokio::time::Instant::now() < deadline {
                n += 1;
                let (a, b) = ((w + n) % 10, (w * 7 + n * 3 + 1) % 10);
                let b = if a == b { (b + 1) % 10 } else { b };
                let amount = 1 + ((w * 31 + n) % 97) as i64;
                let transfers = vec![
                    Transfer {
                        linked: true,
                        ..pending(
                            &format!("w{w}/{n}/hold"),
                            &format!("hot{a}"),
                            &format!("hot{b}"),
                            amount,
                        )
                    },
                    post(&format!("w{w}/{n}/post"), &format!("w{w}/{n}/hold"), None),
                ];
                let results = if w % 2 == 0 {
                    writer.create_transfers(transfers).await.expect("writer")
                } else {
                    let mut tx = pool.begin().await.expect("begin");
                    let results = ledger::create_transfers(&mut tx, &transfers)
                        .await
                        .expect("create");
                    tx.commit().await.expect("commit");
                    results
                };
                assert_eq!(results, [TransferResult::Ok, TransferResult::Ok]);
                *moved.entry((a, b)).or_default() += amount;
            }
            moved
        }));
    }
    let mut expected_debits = [0i64; 10];
    let mut expected_credits = [0i64; 10];
    let mut count = 0;
    for task in tasks {
        for ((a, b), amount) in task.await.expect("writer task") {
            expected_debits[a as usize] += amount;
            expected_credits[b as usize] += amount;
            count += 1;
        }
    }
    assert!(count > 0);
    for i in 0..10 {
        let b = balances(&pool, &format!("hot{i}")).await;
        assert_eq!(
            (b.debits_posted, b.credits_posted),
            (expected_debits[i], expected_credits[i])
        );
        assert_eq!((b.debits_pending, b.credits_pending), (0, 0));
    }
    assert_invariants(&pool).await;
}

/// One step of the property test.
#[derive(Debug, Clone)]
enum Op {
    Single {
        id: u8,
        debit: u8,
        credit: u8,
        amount: i64,
    },
    Pending {
        id: u8,
        debit: u8,
        credit: u8,
        amount: i64,
    },
    Post {
        id: u8,
        pending: u8,
        amount: Option<i64>,
    },
    Void {
        id: u8,
        pending: u8,
    },
    /// Creates account 4 (no limit) or 5 (credits must not exceed debits); accounts 0-3 exist
    /// from the start, 3 with debits must not exceed credits.
    CreateAccount {
        n: u8,
    },
}

/// Accounts a case may name.
const MODEL_ACCOUNTS: u8 = 6;

fn model_account_limit(n: u8) -> BalanceLimit {
    match n {
        3 => BalanceLimit::DebitsMustNotExceedCredits,
        5 => BalanceLimit::CreditsMustNotExceedDebits,
        _ => BalanceLimit::None,
    }
}

fn op() -> impl Strategy<Value = Op> {
    // Few ids, accounts and amounts, so duplicates, conflicts and limits happen often.
    let account = 0u8..MODEL_ACCOUNTS;
    let amount = prop_oneof![1i64..50, Just(0i64), Just(1000i64)];
    prop_oneof![
        (0u8..12, account.clone(), account.clone(), amount.clone()).prop_map(
            |(id, debit, credit, amount)| Op::Single {
                id,
                debit,
                credit,
                amount
            }
        ),
        (0u8..12, account.clone(), account, amount.clone()).prop_map(
            |(id, debit, credit, amount)| Op::Pending {
                id,
                debit,
                credit,
                amount
            }
        ),
        (0u8..12, 0u8..12, proptest::option::of(amount)).prop_map(|(id, pending, amount)| {
            Op::Post {
                id,
                pending,
                amount,
            }
        }),
        (0u8..12, 0u8..12).prop_map(|(id, pending)| Op::Void { id, pending }),
        (4u8..MODEL_ACCOUNTS).prop_map(|n| Op::CreateAccount { n }),
    ]
}

/// A deliberately naive model of the ledger, written independently of the engine.
struct Model {
    created: std::collections::HashSet<u8>,
    balances: HashMap<u8, Balances>,
    transfers: HashMap<u8, (Op, i64)>, // op and its effective amount
    resolved: HashMap<u8, bool>,       // pending id -> posted?
}

impl Model {
    fn new() -> Model {
        Model {
            created: (0..4).collect(),
            balances: HashMap::new(),
            transfers: HashMap::new(),
            resolved: HashMap::new(),
        }
    }

    fn create_account(&mut self, n: u8) -> AccountResult {
        if self.created.insert(n) {
            AccountResult::Ok
        } else {
            AccountResult::Exists
        }
    }

    /// Applies a transfer op (see `model_account_limit` for the limits).
    fn apply(&mut self, op: &Op) -> TransferResult {
        use TransferResult as R;
        let id = match op {
            Op::Single { id, .. }
            | Op::Pending { id, .. }
            | Op::Post { id, .. }
            | Op::Void { id, .. } => *id,
            Op::CreateAccount { .. } => unreachable!("accounts go through create_account"),
        };
        if let Some((existing, _)) = self.transfers.get(&id) {
            let same = match (existing, op) {
                (
                    Op::Post {
                        pending: p1,
                        amount: a1,
                        ..
                    },
                    Op::Post {
                        pending: p2,
                        amount: a2,
                        ..
                    },
                ) => {
                    let full = self.transfers.get(p1).map(|(_, a)| *a);
                    p1 == p2 && a2.or(full) == a1.or(full)
                }
                _ => format!("{existing:?}") == format!("{op:?}"),
            };
            return if same {
                R::Exists
            } else {
                R::ExistsWithDifferentFields
            };
        }
        match op {
            Op::Single {
                debit,
                credit,
                amount,
                ..
            }
            | Op::Pending {
                debit,
                credit,
                amount,
                ..
            } => {
                if *amount <= 0 {
                    return R::AmountMustBePositive;
                }
                if debit == credit {
                    return R::AccountsMustBeDifferent;
                }
                if !self.created.contains(debit) {
                    return R::DebitAccountNotFound;
                }
                if !self.created.contains(credit) {
                    return R::CreditAccountNotFound;
                }
                let d = self.balances.get(debit).copied().unwrap_or_default();
                if model_account_limit(*debit) == BalanceLimit::DebitsMustNotExceedCredits
                    && d.debits_pending + d.debits_posted + amount > d.credits_posted
                {
                    return R::ExceedsCredits;
                }
                let c = self.balances.get(credit).copied().unwrap_or_default();
                if model_account_limit(*credit) == BalanceLimit::CreditsMustNotExceedDebits
                    && c.credits_pending + c.credits_posted + amount > c.debits_posted
                {
                    return R::ExceedsDebits;
                }
                let is_pending = matches!(op, Op::Pending { .. });
                let d = self.balances.entry(*debit).or_default();
                if is_pending {
                    d.debits_pending += amount
                } else {
                    d.debits_posted += amount
                }
                let c = self.balances.entry(*credit).or_default();
                if is_pending {
                    c.credits_pending += amount
                } else {
                    c.credits_posted += amount
                }
                self.transfers.insert(id, (op.clone(), *amount));
                R::Ok
            }
            Op::Post {
                pending, amount, ..
            } => self.resolve(id, op, *pending, Some(*amount)),
            Op::Void { pending, .. } => self.resolve(id, op, *pending, None),
            Op::CreateAccount { .. } => unreachable!("handled above"),
        }
    }

    /// A post (`Some`, with `None` inside for "all of it") or a void (`None`).
    fn resolve(
        &mut self,
        id: u8,
        op: &Op,
        pending: u8,
        amount: Option<Option<i64>>,
    ) -> TransferResult {
        use TransferResult as R;
        let Some((Op::Pending { debit, credit, .. }, held)) = self.transfers.get(&pending).cloned()
        else {
            return if self.transfers.contains_key(&pending) {
                R::PendingTransferNotPending
            } else {
                R::PendingNotFound
            };
        };
        if let Some(posted) = self.resolved.get(&pending) {
            return if *posted {
                R::PendingAlreadyPosted
            } else {
                R::PendingAlreadyVoided
            };
        }
        let posted = match amount {
            None => 0,
            Some(None) => held,
            Some(Some(a)) if a <= 0 => return R::AmountMustBePositive,
            Some(Some(a)) if a > held => return R::ExceedsPendingAmount,
            Some(Some(a)) => a,
        };
        let d = self.balances.entry(debit).or_default();
        d.debits_pending -= held;
        d.debits_posted += posted;
        let c = self.balances.entry(credit).or_default();
        c.credits_pending -= held;
        c.credits_posted += posted;
        self.resolved.insert(pending, amount.is_some());
        self.transfers.insert(
            id,
            (op.clone(), if amount.is_some() { posted } else { held }),
        );
        R::Ok
    }
}

fn to_transfer(op: &Op, case: u32) -> Transfer {
    let account = |n: u8| format!("c{case}a{n}");
    let transfer = |n: u8| format!("c{case}t{n}");
    match op {
        Op::Single {
            id,
            debit,
            credit,
            amount,
        } => single(&transfer(*id), &account(*debit), &account(*credit), *amount),
        Op::Pending {
            id,
            debit,
            credit,
            amount,
        } => pending(&transfer(*id), &account(*debit), &account(*credit), *amount),
        Op::Post {
            id,
            pending,
            amount,
        } => post(&transfer(*id), &transfer(*pending), *amount),
        Op::Void { id, pending } => void(&transfer(*id), &transfer(*pending)),
        Op::CreateAccount { .. } => unreachable!("accounts are created with create_accounts"),
    }
}

/// Random sequences of account creation and single, pending, post (full and partial) and void
/// transfers, with duplicates, conflicting duplicates, missing accounts and both balance
/// limits, run against Postgres and the naive model: after every step the results and all
/// balances agree, and the invariant check holds.
#[test]
fn ledger_matches_the_model() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (_db, pool) = runtime.block_on(ledger_pool());
    let case = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    };
    proptest!(config, |(ops in proptest::collection::vec(op(), 1..40))| {
        let case = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        runtime.block_on(async {
            let mut conn = pool.acquire().await.unwrap();
            let new_account = |n: u8| account(&format!("c{case}a{n}"), "USD", model_account_limit(n));
            let accounts: Vec<NewAccount> = (0..4u8).map(new_account).collect();
            ledger::create_accounts(&mut conn, &accounts).await.unwrap();
            let mut model = Model::new();
            for op in &ops {
                if let Op::CreateAccount { n } = op {
                    let expected = model.create_account(*n);
                    let got = ledger::create_accounts(&mut conn, &[new_account(*n)]).await.unwrap();
                    prop_assert_eq!(got, vec![expected], "{:?}", op);
                    continue;
                }
                let expected = model.apply(op);
                let got = create(&pool, &[to_transfer(op, case)]).await;
                prop_assert_eq!(got, vec![expected], "{:?}", op);
                for n in 0..MODEL_ACCOUNTS {
                    let stored = ledger::accounts_by_id(&pool, &[aid(&format!("c{case}a{n}"))])
                        .await
                        .unwrap()
                        .first()
                        .map(|a| a.balances)
                        .unwrap_or_default();
                    prop_assert_eq!(stored, model.balances.get(&n).copied().unwrap_or_default(), "account {}", n);
                }
                let report = invariants::check(&pool, OffsetDateTime::now_utc()).await.unwrap();
                prop_assert!(report.holds(), "{:?}", report);
            }
            Ok(())
        })?;
    });
}

/// Transactions creating the same new accounts at the same moment all succeed: the later ones
/// wait for the first and find its accounts (`Exists`), none fails on a unique index (the
/// primary key or `(id, currency)`), and each account exists once. Many rounds, so the race
/// between the conflict check and the index insert is hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creators_of_one_account_all_succeed() {
    const WRITERS: usize = 8;
    const ROUNDS: usize = 40;
    let (_database, pool) = ledger_pool().await;
    for round in 0..ROUNDS {
        let accounts = vec![
            account(&format!("race-{round}"), "USD", BalanceLimit::None),
            account(&format!("race-{round}-b"), "EUR", BalanceLimit::None),
        ];
        let start = std::sync::Arc::new(tokio::sync::Barrier::new(WRITERS));
        let writers: Vec<_> = (0..WRITERS)
            .map(|_| {
                let pool = pool.clone();
                let accounts = accounts.clone();
                let start = start.clone();
                tokio::spawn(async move {
                    let mut tx = pool.begin().await.unwrap();
                    start.wait().await;
                    let results = ledger::create_accounts(&mut tx, &accounts).await?;
                    tx.commit().await?;
                    Ok::<_, ledger::LedgerError>(results)
                })
            })
            .collect();
        let mut created = 0;
        for writer in writers {
            let results = writer
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            for result in results {
                match result {
                    AccountResult::Ok => created += 1,
                    AccountResult::Exists => {}
                    other => panic!("round {round}: {other:?}"),
                }
            }
        }
        assert_eq!(created, accounts.len(), "round {round}: each created once");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM ledger_accounts")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, (2 * ROUNDS) as i64);
}

fn coded(id: &str, currency: &str, code: AccountCode) -> NewAccount {
    NewAccount {
        code,
        ..account(id, currency, BalanceLimit::None)
    }
}

fn journal(currency: &str, pending: i64, posted: i64) -> invariants::Journal {
    invariants::Journal {
        currency: Currency::new(currency).unwrap(),
        debits_pending: pending,
        credits_pending: pending,
        debits_posted: posted,
        credits_posted: posted,
    }
}

/// A leg of a USD invoice charged to a EUR card, booked as the orchestrator books it: a linked
/// chain of holds, in EUR from the card to the pair's EUR clearing account and in USD from the
/// pair's USD clearing account to the receivable, posted together, then what the card paid
/// above the exact conversion from the EUR clearing account to EUR rounding. Each currency's
/// journal sums to zero at every step. The database refuses FX accounts whose id does not name
/// their pair and currency; the check reports a conversion booked on one side only until its
/// other side is booked, and (behind the trigger's back) a malformed FX account.
#[tokio::test]
async fn converted_legs_cross_currencies_through_fx_clearing() {
    let (_db, pool) = ledger_pool().await;
    let mut conn = pool.acquire().await.unwrap();
    let malformed = [
        ("fx_clearing:USD-EUR:GBP", "GBP", AccountCode::FxClearing),
        ("fx_clearing:USD-USD:USD", "USD", AccountCode::FxClearing),
        ("fx_clearing:USD-EUR:EUR", "USD", AccountCode::FxClearing),
        ("fx_clearing:USD-EUR", "USD", AccountCode::FxClearing),
        ("fx_clearing:usd-EUR:EUR", "EUR", AccountCode::FxClearing),
        ("fx_rounding:EUR", "USD", AccountCode::FxRounding),
        ("fx_rounding:USD:x", "USD", AccountCode::FxRounding),
    ];
    for (id, currency, code) in malformed {
        match ledger::create_accounts(&mut conn, &[coded(id, currency, code)]).await {
            Err(ledger::LedgerError::Database(sqlx::Error::Database(e))) => {
                assert_eq!(
                    e.code().as_deref(),
                    Some("23514"),
                    "{id} in {currency}: {e}"
                );
            }
            other => panic!("{id} in {currency}: {other:?}"),
        }
    }
    let results = ledger::create_accounts(
        &mut conn,
        &[
            coded(
                "funding_source:tok_x:EUR",
                "EUR",
                AccountCode::FundingSource,
            ),
            coded("receivable:acct:USD", "USD", AccountCode::Receivable),
            coded("fx_clearing:USD-EUR:EUR", "EUR", AccountCode::FxClearing),
            coded("fx_clearing:USD-EUR:USD", "USD", AccountCode::FxClearing),
            coded("fx_rounding:EUR", "EUR", AccountCode::FxRounding),
        ],
    )
    .await
    .unwrap();
    assert!(
        results.iter().all(|r| *r == AccountResult::Ok),
        "{results:?}"
    );
    let stored = ledger::accounts_by_id(&mut *conn, &[aid("fx_clearing:USD-EUR:USD")])
        .await
        .unwrap();
    assert_eq!(stored[0].code, AccountCode::FxClearing);
    drop(conn);
    assert_invariants(&pool).await;

    // The hold: both currencies in one linked chain.
    let mut eur_hold = pending(
        "pay_1/leg/1/hold/EUR",
        "funding_source:tok_x:EUR",
        "fx_clearing:USD-EUR:EUR",
        1201,
    );
    eur_hold.linked = true;
    let usd_hold = pending(
        "pay_1/leg/1/hold/USD",
        "fx_clearing:USD-EUR:USD",
        "receivable:acct:USD",
        1300,
    );
    assert_eq!(
        create(&pool, &[eur_hold, usd_hold]).await,
        [TransferResult::Ok, TransferResult::Ok]
    );
    let report = invariants::check(&pool, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert!(report.holds(), "{report:?}");
    assert_eq!(
        report.journals,
        [journal("EUR", 1201, 0), journal("USD", 1300, 0)]
    );

    // The capture, both halves together, then the rounding.
    let mut eur_capture = post("pay_1/leg/1/capture/EUR", "pay_1/leg/1/hold/EUR", None);
    eur_capture.linked = true;
    let usd_capture = post("pay_1/leg/1/capture/USD", "pay_1/leg/1/hold/USD", None);
    assert_eq!(
        create(&pool, &[eur_capture, usd_capture]).await,
        [TransferResult::Ok, TransferResult::Ok]
    );
    assert_eq!(
        create(
            &pool,
            &[single(
                "pay_1/leg/1/rounding",
                "fx_clearing:USD-EUR:EUR",
                "fx_rounding:EUR",
                1
            )]
        )
        .await,
        [TransferResult::Ok]
    );
    let report = invariants::check(&pool, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert!(report.holds(), "{report:?}");
    assert_eq!(
        report.journals,
        [journal("EUR", 0, 1202), journal("USD", 0, 1300)]
    );
    let lines: Vec<String> = report.journals.iter().map(ToString::to_string).collect();
    assert_eq!(
        lines,
        [
            "EUR journal: debits 1,202 = credits 1,202 (posted)",
            "USD journal: debits 1,300 = credits 1,300 (posted)",
        ]
    );
    let expected = [
        ("funding_source:tok_x:EUR", 1201, 0),
        ("fx_clearing:USD-EUR:EUR", 1, 1201),
        ("fx_rounding:EUR", 0, 1),
        ("fx_clearing:USD-EUR:USD", 1300, 0),
        ("receivable:acct:USD", 0, 1300),
    ];
    for (id, debits_posted, credits_posted) in expected {
        let posted = balances(&pool, id).await;
        assert_eq!(
            (posted.debits_posted, posted.credits_posted),
            (debits_posted, credits_posted),
            "{id}"
        );
    }

    // A conversion booked on its EUR side only: reported while its GBP side has no clearing
    // account, and while it has one that never moved; no longer once that side is booked.
    let mut conn = pool.acquire().await.unwrap();
    ledger::create_accounts(
        &mut conn,
        &[
            coded("receivable:acct:GBP", "GBP", AccountCode::Receivable),
            coded("fx_clearing:GBP-EUR:EUR", "EUR", AccountCode::FxClearing),
        ],
    )
    .await
    .unwrap();
    drop(conn);
    assert_eq!(
        create(
            &pool,
            &[single(
                "pay_2/leg/1/EUR",
                "funding_source:tok_x:EUR",
                "fx_clearing:GBP-EUR:EUR",
                500
            )]
        )
        .await,
        [TransferResult::Ok]
    );
    let one_sided = |report: &invariants::InvariantReport| {
        assert_eq!(report.violations.len(), 1, "{report:?}");
        assert!(
            report.violations[0].starts_with("fx pair GBP-EUR: its EUR clearing holds 500")
                && report.violations[0].ends_with("a conversion booked on one side only"),
            "{report:?}"
        );
        // Each currency's journal still sums to zero: the position is what is wrong.
        assert!(report.journals.iter().all(invariants::Journal::balanced));
    };
    let report = invariants::check(&pool, OffsetDateTime::now_utc())
        .await
        .unwrap();
    one_sided(&report);
    let mut conn = pool.acquire().await.unwrap();
    ledger::create_accounts(
        &mut conn,
        &[coded(
            "fx_clearing:GBP-EUR:GBP",
            "GBP",
            AccountCode::FxClearing,
        )],
    )
    .await
    .unwrap();
    drop(conn);
    let report = invariants::check(&pool, OffsetDateTime::now_utc())
        .await
        .unwrap();
    one_sided(&report);
    assert_eq!(
        create(
            &pool,
            &[single(
                "pay_2/leg/1/GBP",
                "fx_clearing:GBP-EUR:GBP",
                "receivable:acct:GBP",
                430
            )]
        )
        .await,
        [TransferResult::Ok]
    );
    assert_invariants(&pool).await;

    // Defence in depth: an FX account the trigger would refuse, written behind its back.
    let mut conn = pool.acquire().await.unwrap();
    for statement in [
        "ALTER TABLE ledger_accounts DISABLE TRIGGER ledger_accounts_created",
        "INSERT INTO ledger_accounts (id, currency, code, debits_must_not_exceed_credits, \
         credits_must_not_exceed_debits) VALUES \
         ('fx_clearing:USD-EUR:GBP', 'GBP', 'fx_clearing', false, false), \
         ('fx_rounding:GBP', 'USD', 'fx_rounding', false, false)",
        "ALTER TABLE ledger_accounts ENABLE TRIGGER ledger_accounts_created",
    ] {
        conn.execute(statement).await.unwrap();
    }
    drop(conn);
    let report = invariants::check(&pool, OffsetDateTime::now_utc())
        .await
        .unwrap();
    assert_eq!(report.violations.len(), 2, "{report:?}");
    assert!(
        report.violations[0].starts_with("account fx_clearing:USD-EUR:GBP (GBP): "),
        "{report:?}"
    );
    assert!(
        report.violations[1].starts_with("account fx_rounding:GBP (USD): "),
        "{report:?}"
    );
}
