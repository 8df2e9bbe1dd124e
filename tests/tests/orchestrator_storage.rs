//! The orchestrator's storage against Postgres, below the gRPC API: what one statement does
//! for many rows must be what the rows one by one would have done.

use tandem_orchestrator::domain::record::steps::SpendChange;
use tandem_orchestrator::storage;
use tandem_tests::TestDatabase;

fn change(token: &str, delta: i64, limit: Option<i64>) -> SpendChange {
    SpendChange {
        token: token.to_owned(),
        currency: tandem_money::Currency::parse("USD").unwrap(),
        delta,
        limit,
    }
}

/// A round's spend holds go in one statement, each kept within its own card's monthly limit
/// (a hold over it is refused, the others added); releases are never limited; two changes of
/// one card apply one after the other, in order; another month or currency is another row.
#[tokio::test]
async fn spend_changes_are_added_each_within_its_limit() {
    let database = TestDatabase::create().await;
    let pool = sqlx::PgPool::connect(&database.url).await.expect("connect");
    storage::migrator().run(&pool).await.expect("migrations");
    let mut conn = pool.acquire().await.expect("connection");
    let month = storage::month_of(time::OffsetDateTime::now_utc());
    let mut add = async |currency: &str, changes: &[SpendChange]| {
        let currency = tandem_money::Currency::parse(currency).unwrap();
        let changes: Vec<SpendChange> = changes
            .iter()
            .map(|c| SpendChange {
                currency,
                ..c.clone()
            })
            .collect();
        let mut added: Vec<String> = storage::add_spends(&mut conn, month, &changes)
            .await
            .expect("add spends")
            .into_iter()
            .collect();
        added.sort();
        added
    };

    let new_rows = [
        change("tok_b", 500, Some(1000)),
        change("tok_a", 2000, Some(1000)),
        change("tok_c", 700, None),
    ];
    assert_eq!(add("USD", &new_rows).await, ["tok_b", "tok_c"]);
    let existing = [
        change("tok_c", -200, None),
        change("tok_b", 400, Some(1000)),
    ];
    assert_eq!(add("USD", &existing).await, ["tok_b", "tok_c"]);
    assert!(
        add("USD", &[change("tok_b", 200, Some(1000))])
            .await
            .is_empty()
    );
    // tok_b: +100 reaches its limit exactly, then +1 is over it, then a release goes through.
    let same_card = [
        change("tok_b", 100, Some(1000)),
        change("tok_b", 1, Some(1000)),
        change("tok_b", -50, Some(1000)),
    ];
    assert_eq!(add("USD", &same_card).await, ["tok_b"]);
    assert_eq!(
        add("EUR", &[change("tok_b", 900, Some(1000))]).await,
        ["tok_b"]
    );

    let tokens = ["tok_a", "tok_b", "tok_c"].map(String::from);
    let spent = storage::month_to_date(&pool, &tokens, month)
        .await
        .expect("month to date");
    let of = |token: &str, currency: &str| spent.get(&(token.to_owned(), currency.to_owned()));
    assert_eq!(of("tok_a", "USD"), None);
    assert_eq!(of("tok_b", "USD"), Some(&950));
    assert_eq!(of("tok_c", "USD"), Some(&500));
    assert_eq!(of("tok_b", "EUR"), Some(&900));
}
