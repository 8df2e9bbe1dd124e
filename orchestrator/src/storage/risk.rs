//! Risk's SQL (migration 0009): policies, and the features payments are assessed against. The
//! features are written by the statements that record payments ([`super::insert_payment`]) and
//! their declines ([`super::save_payment`]), through [`Counts`]; they are read, with the
//! account's policy and the month's spend of the group's cards, in the one statement a new
//! payment reads with ([`payment_reads`]).

use std::collections::{BTreeMap, HashMap};

use sqlx::{PgConnection, PgExecutor, Row as _};
use tandem_money::Currency;
use time::{Date, OffsetDateTime};

use crate::domain::actor::Actor;
use crate::domain::risk::{
    CARD_MEMORY_DAYS, Count, Features, Policy, Scope, Span, StoredPolicy, Tally, Window,
};
use crate::error::Error;

fn scope_name(scope: Scope) -> &'static str {
    match scope {
        Scope::Account => "account",
        Scope::Group => "group",
        Scope::Card => "card",
    }
}

/// Counts as the columns of an `UNNEST`, sorted by key so that concurrent writers lock the
/// same rows in the same order, with the changes of one row added up (a statement may change a
/// row once).
#[derive(Debug, Default)]
pub struct Counts {
    scopes: Vec<&'static str>,
    keys: Vec<String>,
    currencies: Vec<&'static str>,
    spans: Vec<&'static str>,
    buckets: Vec<OffsetDateTime>,
    payments: Vec<i64>,
    amounts: Vec<i64>,
    declines: Vec<i64>,
}

impl Counts {
    /// The columns of `counts`.
    pub fn of(counts: &[Count]) -> Counts {
        type Row<'a> = (
            &'static str,
            &'a str,
            &'static str,
            &'static str,
            OffsetDateTime,
        );
        let mut rows: BTreeMap<Row<'_>, [i64; 3]> = BTreeMap::new();
        for c in counts {
            let currency = c.currency.map_or("", Currency::code);
            let row = (
                scope_name(c.scope),
                c.key.as_str(),
                currency,
                c.span.as_str(),
                c.bucket,
            );
            let sums = rows.entry(row).or_default();
            sums[0] += c.payments;
            sums[1] += c.amount;
            sums[2] += c.declines;
        }
        let mut columns = Counts::default();
        for ((scope, key, currency, span, bucket), [payments, amount, declines]) in rows {
            columns.scopes.push(scope);
            columns.keys.push(key.to_owned());
            columns.currencies.push(currency);
            columns.spans.push(span);
            columns.buckets.push(bucket);
            columns.payments.push(payments);
            columns.amounts.push(amount);
            columns.declines.push(declines);
        }
        columns
    }

    /// True when there is nothing to count.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Binds the columns as `$n..$n+7` of [`counts_cte`].
    pub fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(&self.scopes)
            .bind(&self.keys)
            .bind(&self.currencies)
            .bind(&self.spans)
            .bind(&self.buckets)
            .bind(&self.payments)
            .bind(&self.amounts)
            .bind(&self.declines)
    }
}

/// The CTE that adds [`Counts`] bound from parameter `first` on.
pub fn counts_cte(first: usize) -> String {
    let p: Vec<String> = (first..first + 8).map(|n| format!("${n}")).collect();
    format!(
        "risk_counts AS (INSERT INTO risk_counters \
         (scope, key, currency, span, bucket, payments, amount, declines) \
         SELECT * FROM UNNEST({}::text[], {}::text[], {}::text[], {}::text[], \
         {}::timestamptz[], {}::bigint[], {}::bigint[], {}::bigint[]) \
         ON CONFLICT (scope, key, span, bucket, currency) DO UPDATE SET \
         payments = risk_counters.payments + excluded.payments, \
         amount = risk_counters.amount + excluded.amount, \
         declines = risk_counters.declines + excluded.declines)",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
    )
}

/// What a new payment adds to the features: its counts, its amount to the account's history,
/// and its cards' last use.
#[derive(Debug)]
pub struct PaymentFeatures {
    /// The counts.
    pub counts: Counts,
    /// The invoice's currency and amount, for the account's history (`None`: not kept).
    pub history: Option<(Currency, i64)>,
    /// The planned cards to mark used, sorted.
    pub cards: Vec<String>,
}

/// The CTE that records [`PaymentFeatures`], bound from parameter `first` on (the account is
/// `$4` and the time `$13` of the payment's insert), through `risk_record_payment` (migration
/// 0009): a one-row CTE named `risk` the insert selects from, so that it runs exactly once.
pub fn payment_features_cte(first: usize) -> String {
    let p: Vec<String> = (first..first + 11).map(|n| format!("${n}")).collect();
    format!(
        "risk AS (SELECT risk_record_payment({}::text[], {}::text[], {}::text[], {}::text[], \
         {}::timestamptz[], {}::bigint[], {}::bigint[], {}::bigint[], $4, {}::text, \
         {}::bigint, {}::text[], $13) AS counted)",
        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10]
    )
}

impl PaymentFeatures {
    /// Binds the features as [`payment_features_cte`] expects.
    pub fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        self.counts
            .bind(query)
            .bind(self.history.map(|(currency, _)| currency.code()))
            .bind(self.history.map(|(_, amount)| amount))
            .bind(&self.cards)
    }
}

/// What a new payment reads before it is planned and assessed, in one statement: the spend of
/// its group's cards (`tokens`) in `month` (by token and currency), the account's risk policy
/// (the default when it has none) and, unless that policy has no rule, the features before a
/// payment in `currency` by `account` from `group` at `now`, for each of the cards.
#[allow(clippy::too_many_arguments)]
pub async fn payment_reads(
    executor: impl PgExecutor<'_>,
    tokens: &[String],
    month: Date,
    account: &str,
    group: &str,
    currency: Currency,
    now: OffsetDateTime,
) -> Result<(HashMap<(String, String), i64>, StoredPolicy, Features), Error> {
    let (_, from_10m) = Window::TenMinutes.start(now);
    let (_, from_1h) = Window::Hour.start(now);
    let (_, from_24h) = Window::Day.start(now);
    let row = sqlx::query("SELECT * FROM risk_payment_reads($1, $2, $3, $4, $5, $6, $7, $8, $9)")
        .bind(account)
        .bind(group)
        .bind(tokens)
        .bind(currency.code())
        .bind(from_10m)
        .bind(from_1h)
        .bind(from_24h)
        .bind(now - time::Duration::days(CARD_MEMORY_DAYS))
        .bind(month)
        .fetch_one(executor)
        .await?;
    let corrupt = || Error::Corrupt("payment reads row".into());
    let mut spent = HashMap::new();
    let rows: Option<sqlx::types::Json<Vec<(String, String, i64)>>> = row.try_get("spend")?;
    for (token, code, amount) in rows.map(|j| j.0).unwrap_or_default() {
        spent.insert((token, code), amount);
    }
    let stored = stored_policy(&row)?;
    let mut features = Features::default();
    let rows: Option<sqlx::types::Json<Vec<serde_json::Value>>> = row.try_get("counts")?;
    for value in rows.map(|j| j.0).unwrap_or_default() {
        let cells = value.as_array().ok_or_else(corrupt)?;
        let text = |i: usize| cells.get(i).and_then(|c| c.as_str()).ok_or_else(corrupt);
        let number = |i: usize| {
            cells
                .get(i)
                .and_then(serde_json::Value::as_i64)
                .ok_or_else(corrupt)
        };
        let tally = Tally {
            payments: [number(2)?, number(3)?, number(4)?],
            amount: [number(5)?, number(6)?, number(7)?],
            declines: [number(8)?, number(9)?, number(10)?],
        };
        match text(0)? {
            "account" => features.account = tally,
            "group" => features.group = tally,
            _ => features.cards.push((text(1)?.to_owned(), tally)),
        }
    }
    features.history = row
        .try_get::<Option<Vec<i64>>, _>("history")?
        .unwrap_or_default();
    features.used_cards = row
        .try_get::<Option<Vec<String>>, _>("used")?
        .unwrap_or_default();
    Ok((spent, stored, features))
}

fn stored_policy(row: &sqlx::postgres::PgRow) -> Result<StoredPolicy, Error> {
    let policy: Option<sqlx::types::Json<Policy>> = row.try_get("policy")?;
    let Some(policy) = policy else {
        return Ok(StoredPolicy::default_for_account());
    };
    let updater: String = row.try_get("updater")?;
    Ok(StoredPolicy {
        policy: policy.0,
        version: row.try_get("version")?,
        update_time: Some(row.try_get("update_time")?),
        updater: Actor::parse(&updater),
    })
}

/// The account's policy, or the default.
pub async fn policy(executor: impl PgExecutor<'_>, account: &str) -> Result<StoredPolicy, Error> {
    let row = sqlx::query(
        "SELECT policy, version, update_time, updater FROM risk_policies \
         WHERE billing_account_id = $1",
    )
    .bind(account)
    .fetch_optional(executor)
    .await?;
    match row {
        Some(row) => stored_policy(&row),
        None => Ok(StoredPolicy::default_for_account()),
    }
}

/// Replaces the account's policy (only version `expected` of it, when given) and returns it as
/// stored; `None` when `expected` is not the current version.
pub async fn set_policy(
    conn: &mut PgConnection,
    account: &str,
    policy: &Policy,
    expected: Option<i64>,
    updater: &Actor,
    now: OffsetDateTime,
) -> Result<Option<StoredPolicy>, Error> {
    // Replacing whatever is current may create the account's first policy; replacing a named
    // version changes that version only.
    let sql = match expected {
        None => {
            "INSERT INTO risk_policies AS p \
             (billing_account_id, policy, version, update_time, updater) \
             VALUES ($1, $2, 1, $3, $4) \
             ON CONFLICT (billing_account_id) DO UPDATE SET policy = excluded.policy, \
             version = p.version + 1, update_time = excluded.update_time, \
             updater = excluded.updater \
             RETURNING policy, version, update_time, updater"
        }
        Some(_) => {
            "UPDATE risk_policies SET policy = $2, version = version + 1, update_time = $3, \
             updater = $4 WHERE billing_account_id = $1 AND version = $5 \
             RETURNING policy, version, update_time, updater"
        }
    };
    let mut query = sqlx::query(sql)
        .bind(account)
        .bind(sqlx::types::Json(policy))
        .bind(now)
        .bind(updater.to_string());
    if let Some(version) = expected {
        query = query.bind(version);
    }
    let row = query.fetch_optional(&mut *conn).await?;
    row.as_ref().map(stored_policy).transpose()
}

/// Deletes up to `limit` buckets past their span's window and cards unused past their memory,
/// as of `now`; how many rows it deleted.
pub async fn prune(
    executor: impl PgExecutor<'_>,
    now: OffsetDateTime,
    limit: i64,
) -> Result<u64, Error> {
    let result = sqlx::query(
        "WITH counters AS (DELETE FROM risk_counters WHERE ctid = ANY(ARRAY(\
           SELECT ctid FROM risk_counters WHERE (span = 'm' AND bucket < $1) \
           OR (span = 'h' AND bucket < $2) LIMIT $4)) RETURNING 1), \
         cards AS (DELETE FROM risk_cards WHERE token = ANY(ARRAY(\
           SELECT token FROM risk_cards WHERE last_use_time < $3 LIMIT $4)) \
           AND last_use_time < $3 RETURNING 1) \
         SELECT (SELECT count(*) FROM counters) + (SELECT count(*) FROM cards) AS deleted",
    )
    .bind(Span::Minute.bucket(now) - Span::Minute.kept())
    .bind(Span::Hour.bucket(now) - Span::Hour.kept())
    .bind(now - time::Duration::days(CARD_MEMORY_DAYS))
    .bind(limit)
    .fetch_one(executor)
    .await?;
    let deleted: i64 = result.try_get("deleted")?;
    Ok(u64::try_from(deleted).unwrap_or(0))
}
