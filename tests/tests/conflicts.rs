//! Transactions that lose a serialization or deadlock race run again, with bounded and
//! jittered waits, instead of failing the call (DESIGN section 14, "Scale-out"). The races are
//! forced: a trigger fails the first writes of a table with SQLSTATE 40P01 (deadlock) or
//! 40001 (serialization failure), counting them in a sequence, which no rollback undoes.

use sqlx::Executor as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_tests::stack::{Stack, group, member, policy, state};
use tandem_tests::{LogCapture, TestDatabase};

use pb::AllocationStrategy as S;
use pb::Completion as C;

const VISA: &str = "4242424242424242";
const MASTERCARD: &str = "5555555555554444";

/// Makes the first `failures` writes (`event` on `table`) of `database` fail with `sqlstate`.
async fn force_conflicts(
    database: &TestDatabase,
    table: &str,
    event: &str,
    sqlstate: &str,
    failures: i64,
) {
    let mut conn = database.connect().await;
    conn.execute(
        format!(
            "CREATE SEQUENCE forced_conflicts; \
             CREATE FUNCTION force_conflict() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF nextval('forced_conflicts') <= {failures} THEN \
                 RAISE EXCEPTION 'forced conflict' USING ERRCODE = '{sqlstate}'; \
               END IF; RETURN NEW; END $$; \
             CREATE TRIGGER force_conflict BEFORE {event} ON {table} \
               FOR EACH ROW EXECUTE FUNCTION force_conflict();"
        )
        .as_str(),
    )
    .await
    .expect("install the trigger");
}

/// How many writes the trigger has seen (failed and passed).
async fn writes_seen(database: &TestDatabase) -> i64 {
    let mut conn = database.connect().await;
    sqlx::query_scalar("SELECT last_value FROM forced_conflicts")
        .fetch_one(&mut conn)
        .await
        .expect("the sequence")
}

/// The saga's writes that deadlock are run again: the payment completes, each of its first
/// updates having failed once.
#[tokio::test]
async fn the_saga_runs_a_deadlocked_write_again() {
    let stack = Stack::start().await;
    let a = stack.vault.tokenize(VISA).await;
    let b = stack.vault.tokenize(MASTERCARD).await;
    let created = stack
        .create_group(group(
            vec![
                member(&a, "card A", 1, None, None),
                member(&b, "card B", 2, None, None),
            ],
            policy(S::Weighted, &[(&a, 5000), (&b, 5000)], C::AllOrNothing),
        ))
        .await;
    // A payment's record is updated after its authorizations and after its captures: the
    // first three updates fail (within the five runs a transaction gets).
    force_conflicts(
        &stack.orchestrator.database,
        "payments",
        "UPDATE",
        "40P01",
        3,
    )
    .await;
    let payment = stack.pay(&created.id, "INV-DEADLOCK", 2_000, None).await;
    assert_eq!(state(&payment), "SUCCEEDED", "{payment:?}");
    assert!(writes_seen(&stack.orchestrator.database).await > 3);
    // Run again at once, by the drive itself: not left to the recovery worker, which would
    // also finish it, a lease later.
    let logs = LogCapture::suite().text();
    // The saga's own retries (the vault's, of a test beside this one, are "write").
    let retries = logs
        .lines()
        .filter(|line| {
            line.contains("transaction conflict; retrying")
                && (line.contains("\"intents\"") || line.contains("\"results\""))
        })
        .count();
    // (A results batch that fails is written again job by job: the first failure may be a
    // batch's, the others the job's own runs.)
    assert!(retries >= 2, "{retries} retries logged");
    assert!(
        !logs
            .lines()
            .any(|line| line.contains("resuming payment") && line.contains(&payment.id)),
        "the payment was left to recovery"
    );
}

/// The vault's writes that lose a serialization race are run again: the card is tokenized,
/// its audit row written once.
#[tokio::test]
async fn the_vault_runs_a_write_that_lost_a_serialization_race_again() {
    let stack = Stack::start().await;
    let audit_rows = || async {
        let mut conn = stack.vault.database.connect().await;
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM audit_events")
            .fetch_one(&mut conn)
            .await
            .expect("count")
    };
    let before = audit_rows().await;
    force_conflicts(&stack.vault.database, "audit_events", "INSERT", "40001", 2).await;
    let token = stack.vault.tokenize(VISA).await;
    assert!(token.starts_with("tok_"), "{token}");
    assert_eq!(writes_seen(&stack.vault.database).await, 3);
    // Two runs rolled back, the third committed: one row for the one request.
    assert_eq!(audit_rows().await, before + 1);
    let logs = LogCapture::suite().text();
    assert!(
        logs.lines()
            .filter(|line| line.contains("transaction conflict; retrying")
                && line.contains("\"write\""))
            .count()
            >= 2,
        "the vault's write was not run again"
    );
}
