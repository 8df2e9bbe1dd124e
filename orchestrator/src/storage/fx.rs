//! The rate source's SQL: each pair's current rate and the history of every change (migration
//! 0008). A change and its history row are one statement, so neither is ever written alone.

use sqlx::{PgConnection, PgExecutor, Row as _};
use tandem_money::Currency;
use tandem_money::fx::Rate;
use time::OffsetDateTime;

use crate::domain::actor::Actor;
use crate::domain::fx::Quote;
use crate::error::Error;

/// A pair's rate as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRate {
    /// The currency converted from.
    pub base: Currency,
    /// The currency converted to.
    pub quote: Currency,
    /// Units of `quote` per unit of `base`.
    pub rate: Rate,
    /// `treasury:<name>` or `file:<file name>`.
    pub source: String,
    /// When it was observed.
    pub as_of: OffsetDateTime,
    /// When it was written.
    pub update_time: OffsetDateTime,
    /// Who set it (`SetFxRate`); `None` for the rates file.
    pub updater: Option<Actor>,
}

impl StoredRate {
    /// The rate as a payment fixes it.
    pub fn to_quote(&self) -> Quote {
        Quote {
            from: self.base,
            to: self.quote,
            rate: self.rate,
            source: self.source.clone(),
            as_of: self.as_of,
        }
    }
}

const RATE_COLUMNS: &str =
    "base_currency, quote_currency, rate, source, as_of, update_time, updater";

fn rate_row(row: sqlx::postgres::PgRow) -> Result<StoredRate, Error> {
    let currency = |column: &str| -> Result<Currency, Error> {
        let code: String = row.try_get(column)?;
        Currency::parse(&code).map_err(|_| Error::Corrupt(format!("fx rate {column} {code:?}")))
    };
    let text: String = row.try_get("rate")?;
    let rate = text
        .parse::<Rate>()
        .map_err(|e| Error::Corrupt(format!("fx rate {text:?}: {e}")))?;
    let updater: Option<String> = row.try_get("updater")?;
    let updater = updater
        .map(|stored| Actor::parse(&stored).ok_or_else(|| Error::Corrupt("fx rate updater".into())))
        .transpose()?;
    Ok(StoredRate {
        base: currency("base_currency")?,
        quote: currency("quote_currency")?,
        rate,
        source: row.try_get("source")?,
        as_of: row.try_get("as_of")?,
        update_time: row.try_get("update_time")?,
        updater,
    })
}

/// Sets `rate` as its pair's current rate, whatever the stored one's as-of time, and appends
/// it to the history with the `request_id` that set it.
pub async fn set_rate(
    conn: &mut PgConnection,
    rate: &StoredRate,
    request_id: &str,
) -> Result<(), Error> {
    sqlx::query(
        "WITH written AS (INSERT INTO fx_rates (base_currency, quote_currency, rate, source, \
         as_of, update_time, updater) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (base_currency, quote_currency) DO UPDATE SET rate = EXCLUDED.rate, \
         source = EXCLUDED.source, as_of = EXCLUDED.as_of, update_time = EXCLUDED.update_time, \
         updater = EXCLUDED.updater \
         RETURNING base_currency, quote_currency, rate, source, as_of, update_time, updater) \
         INSERT INTO fx_rate_history (base_currency, quote_currency, rate, source, as_of, \
         update_time, updater, request_id) \
         SELECT base_currency, quote_currency, rate, source, as_of, update_time, updater, $8 \
         FROM written",
    )
    .bind(rate.base.code())
    .bind(rate.quote.code())
    .bind(rate.rate.to_string())
    .bind(&rate.source)
    .bind(rate.as_of)
    .bind(rate.update_time)
    .bind(rate.updater.as_ref().map(Actor::to_string))
    .bind(request_id)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes each of `rates` (of distinct pairs, without updaters) whose pair has no rate or an
/// older one (by as-of time), with its history row; returns how many were written.
pub async fn merge_newer(conn: &mut PgConnection, rates: &[StoredRate]) -> Result<u64, Error> {
    let column = |f: fn(&StoredRate) -> String| rates.iter().map(f).collect::<Vec<_>>();
    let as_of: Vec<OffsetDateTime> = rates.iter().map(|r| r.as_of).collect();
    let update_time: Vec<OffsetDateTime> = rates.iter().map(|r| r.update_time).collect();
    let written = sqlx::query(
        "WITH given AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
         $5::timestamptz[], $6::timestamptz[]) \
         AS g (base_currency, quote_currency, rate, source, as_of, update_time)), \
         written AS (INSERT INTO fx_rates (base_currency, quote_currency, rate, source, as_of, \
         update_time, updater) \
         SELECT base_currency, quote_currency, rate, source, as_of, update_time, NULL FROM given \
         ON CONFLICT (base_currency, quote_currency) DO UPDATE SET rate = EXCLUDED.rate, \
         source = EXCLUDED.source, as_of = EXCLUDED.as_of, update_time = EXCLUDED.update_time, \
         updater = NULL WHERE fx_rates.as_of < EXCLUDED.as_of \
         RETURNING base_currency, quote_currency, rate, source, as_of, update_time) \
         INSERT INTO fx_rate_history (base_currency, quote_currency, rate, source, as_of, \
         update_time, updater, request_id) \
         SELECT base_currency, quote_currency, rate, source, as_of, update_time, NULL, NULL \
         FROM written",
    )
    .bind(column(|r| r.base.code().to_owned()))
    .bind(column(|r| r.quote.code().to_owned()))
    .bind(column(|r| r.rate.to_string()))
    .bind(column(|r| r.source.clone()))
    .bind(as_of)
    .bind(update_time)
    .execute(conn)
    .await?
    .rows_affected();
    Ok(written)
}

/// The current rate of `base` to `quote`, if any.
pub async fn rate(
    executor: impl PgExecutor<'_>,
    base: Currency,
    quote: Currency,
) -> Result<Option<StoredRate>, Error> {
    sqlx::query(&format!(
        "SELECT {RATE_COLUMNS} FROM fx_rates WHERE base_currency = $1 AND quote_currency = $2"
    ))
    .bind(base.code())
    .bind(quote.code())
    .fetch_optional(executor)
    .await?
    .map(rate_row)
    .transpose()
}

/// The current rates from `base` to each of `quotes` that has one, in one statement.
pub async fn rates_from(
    executor: impl PgExecutor<'_>,
    base: Currency,
    quotes: &[Currency],
) -> Result<Vec<StoredRate>, Error> {
    let codes: Vec<&str> = quotes.iter().map(|c| c.code()).collect();
    sqlx::query(&format!(
        "SELECT {RATE_COLUMNS} FROM fx_rates \
         WHERE base_currency = $1 AND quote_currency = ANY($2::text[])"
    ))
    .bind(base.code())
    .bind(codes)
    .fetch_all(executor)
    .await?
    .into_iter()
    .map(rate_row)
    .collect()
}

/// At most `limit` current rates (of `base` only, when given) after the pair `after`, by base
/// then quote currency code.
pub async fn list_rates(
    executor: impl PgExecutor<'_>,
    base: Option<Currency>,
    after: Option<(Currency, Currency)>,
    limit: i64,
) -> Result<Vec<StoredRate>, Error> {
    sqlx::query(&format!(
        "SELECT {RATE_COLUMNS} FROM fx_rates \
         WHERE ($1::text IS NULL OR base_currency = $1) \
         AND ($2::text IS NULL OR (base_currency, quote_currency) > ($2, $3)) \
         ORDER BY base_currency, quote_currency LIMIT $4"
    ))
    .bind(base.map(Currency::code))
    .bind(after.map(|(base, _)| base.code()))
    .bind(after.map(|(_, quote)| quote.code()))
    .bind(limit)
    .fetch_all(executor)
    .await?
    .into_iter()
    .map(rate_row)
    .collect()
}
