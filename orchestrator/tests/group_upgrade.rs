//! A card group stored by the previous version (its encoded `CardGroup` message, in the `body`
//! column) survives the upgrade: it reads back as it was written before and after the one-off
//! conversion to domain data that runs when the workflow starts, it still pays, and the
//! conversion runs once. Needs Postgres at `DATABASE_URL` (as `scripts/test.sh` sets it).

use prost::Message as _;
use sqlx::{Connection as _, Executor as _, Row as _};
use tandem_money::{Currency, Money};
use tandem_orchestrator::domain::planning::{self, Invoice};
use tandem_orchestrator::grpc::convert;
use tandem_orchestrator::storage::{self, StoredContent, StoredGroup};
use tandem_orchestrator::workflow::convert_encoded_groups;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;

/// A fresh database with the orchestrator's and the ledger's migrations applied.
async fn database() -> sqlx::PgPool {
    let admin_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let name = format!("tandem_test_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url)
        .await
        .expect("connect to the test Postgres (is it running? see scripts/test.sh)");
    admin
        .execute(format!("CREATE DATABASE {name}").as_str())
        .await
        .expect("create test database");
    let (base, _) = admin_url.rsplit_once('/').expect("a database URL");
    let pool = sqlx::PgPool::connect(&format!("{base}/{name}"))
        .await
        .expect("connect to test database");
    storage::migrator().run(&pool).await.expect("migrations");
    pool
}

/// The group's content as the previous version stored it: output-only fields cleared, the
/// members' states spelled out, their last four digits filled in.
fn old_body() -> pb::CardGroup {
    let token = |c: char| format!("tok_{c}{}", "a".repeat(25));
    let usd = |minor_units| {
        Some(types::Money {
            currency_code: "USD".into(),
            minor_units,
        })
    };
    let member = |c: char, priority: i32, last4: &str| pb::CardGroupMember {
        token: token(c),
        label: format!("card {c}"),
        currency_code: "USD".into(),
        priority,
        state: pb::CardGroupMemberState::Active as i32,
        last4: last4.into(),
        ..Default::default()
    };
    let mut first = member('a', 1, "4242");
    first.limit_per_payment = usd(5_000);
    pb::CardGroup {
        billing_account_id: "acct-1".into(),
        display_name: "Travel".into(),
        default_currency_code: "USD".into(),
        members: vec![first, member('b', 2, "1881")],
        default_policy: Some(pb::AllocationPolicy {
            strategy: pb::AllocationStrategy::Sequential as i32,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The outbox row an old group is inserted with (its body does not matter here).
fn created_event() -> storage::NewEvent {
    storage::NewEvent {
        sequence: 1,
        id: tandem_runtime::ids::random_id("evt_"),
        kind: "card_group.created",
        body: Vec::new(),
    }
}

#[tokio::test]
async fn a_group_stored_as_a_message_pays_after_the_upgrade() {
    let pool = database().await;
    let now = tandem_runtime::time::now_micros();
    let id = "cg_aaaaaaaaaaaaaaaaaaaaaaaaaa";
    let stored = StoredGroup {
        id: id.into(),
        content: StoredContent::Encoded(old_body().encode_to_vec()),
        version: 2,
        archived: false,
        create_time: now,
        update_time: now,
        archive_time: None,
        creator: None,
        updater: None,
        events: 1,
    };
    let mut conn = pool.acquire().await.expect("connection");
    storage::insert_group(&mut conn, &stored, "acct-1", &created_event())
        .await
        .expect("insert an old-form group");
    drop(conn);

    let read = |pool: sqlx::PgPool| async move {
        storage::group(&pool, id, false)
            .await
            .expect("read")
            .expect("the group")
    };
    let before = read(pool.clone()).await;
    assert!(matches!(before.content, StoredContent::Encoded(_)));
    let shown_before = convert::groups::group_to_wire(&before).expect("reads as before");

    assert_eq!(convert_encoded_groups(&pool).await.expect("convert"), 1);
    assert_eq!(convert_encoded_groups(&pool).await.expect("again"), 0);
    let after = read(pool.clone()).await;
    assert!(matches!(after.content, StoredContent::Data(_)));
    assert_eq!(after.version, 2, "the conversion does not change the group");
    assert_eq!(
        convert::groups::group_to_wire(&after).expect("reads"),
        shown_before
    );
    let body_left: Option<Vec<u8>> = sqlx::query("SELECT body FROM card_groups WHERE id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("row")
        .get("body");
    assert_eq!(body_left, None);

    let group = convert::groups::group_data(&after).expect("domain data");
    let invoice = Invoice {
        id: "INV-1".into(),
        amount: Money::new(Currency::parse("USD").expect("USD"), 8_000),
        cost_center: None,
        lines: Vec::new(),
    };
    let plan = planning::plan(
        &group.rules(),
        &group.policy,
        &invoice,
        |_| 0,
        now,
        Vec::new(),
    )
    .expect("the group pays");
    let legs: Vec<i64> = plan.saga.legs.iter().map(|leg| leg.amount).collect();
    assert_eq!(legs, [5_000, 3_000]);
    pool.close().await;
}

/// A stored message that no longer converts (here one that does not even decode) is left in
/// its encoded form and the groups after it still convert; the next pass converts nothing new
/// and does not stop at it either.
#[tokio::test]
async fn a_group_that_does_not_convert_is_left_and_the_rest_convert() {
    let pool = database().await;
    let now = tandem_runtime::time::now_micros();
    let mut conn = pool.acquire().await.expect("connection");
    for (id, body) in [
        ("cg_aaaaaaaaaaaaaaaaaaaaaaaaab", vec![0xff, 0xff, 0xff]),
        ("cg_aaaaaaaaaaaaaaaaaaaaaaaaac", old_body().encode_to_vec()),
    ] {
        let stored = StoredGroup {
            id: id.into(),
            content: StoredContent::Encoded(body),
            version: 1,
            archived: false,
            create_time: now,
            update_time: now,
            archive_time: None,
            creator: None,
            updater: None,
            events: 1,
        };
        storage::insert_group(&mut conn, &stored, "acct-1", &created_event())
            .await
            .expect("insert an old-form group");
    }
    drop(conn);

    assert_eq!(convert_encoded_groups(&pool).await.expect("convert"), 1);
    assert_eq!(convert_encoded_groups(&pool).await.expect("again"), 0);
    let encoded = |id: &'static str| {
        let pool = pool.clone();
        async move {
            let stored = storage::group(&pool, id, false)
                .await
                .expect("read")
                .expect("the group");
            matches!(stored.content, StoredContent::Encoded(_))
        }
    };
    assert!(encoded("cg_aaaaaaaaaaaaaaaaaaaaaaaaab").await);
    assert!(!encoded("cg_aaaaaaaaaaaaaaaaaaaaaaaaac").await);
}
