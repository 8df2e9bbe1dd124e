//! The sandbox: a simulated acquirer built into the vault, deterministic and configurable per
//! card, with its state in the vault database so that it behaves the same across restarts.
//!
//! It stands in for an external system, so it keeps its own tables (`sandbox_*`) and its own
//! SQL here rather than in [`crate::storage`]; the vault's charge records never read them.
//!
//! # Test cards
//!
//! Every card starts with the behaviour of its number ([`CardBehaviour::for_test_card`]); any
//! other number is approved with an unlimited balance. Any future expiry works.
//!
//! | number | behaviour |
//! |---|---|
//! | 4242 4242 4242 4242, 5555 5555 5555 4444, 3782 822463 10005 | approved |
//! | 4000 0000 0000 0002 | declined, `DO_NOT_HONOR` (05) |
//! | 4000 0000 0000 9995 | declined, `INSUFFICIENT_FUNDS` (51) |
//! | 4000 0000 0000 9987 | declined, `LOST_CARD` (41) |
//! | 4000 0000 0000 9979 | declined, `STOLEN_CARD` (43) |
//! | 4000 0000 0000 0069 | declined, `EXPIRED_CARD` (54) |
//! | 4000 0000 0000 0119 | declined, `PROCESSING_ERROR` (96), every time |
//! | 4000 0027 6000 3184 | declined, `AUTHENTICATION_REQUIRED` (1A) |
//! | 4100 0000 0000 0019 | declined, `BLOCKED` (62): blocked by the risk engine |
//! | 4000 0099 0000 0012 | balance of 50.00 USD: partial approval when allowed, else `INSUFFICIENT_FUNDS` |
//! | 4000 0099 0000 0020 | slow: every operation answers after 1000 ms |
//! | 4000 0099 0000 0038 | takes the authorization, then never answers (the call times out) |
//! | 4000 0099 0000 0046 | the first 2 authorizations fail with `PROCESSING_ERROR`, then approved |
//!
//! `ConfigureSandboxCard` replaces a card's behaviour at run time.
//!
//! # Settlement
//!
//! Every capture and refund writes a settlement record for its UTC day (the sandbox's cut-off
//! is 00:00 UTC). [`Connector::settlement_file`] delivers a day's records as the settlement
//! file of [`crate::domain::settlement`]; `CorruptSettlementRecord` corrupts a record as a
//! faulty acquirer would ([`Corruption`]), for reconciliation tests, and keeps what it did in
//! its own journal (`sandbox_settlement_corruptions`) so that a replay answers the same.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aes_gcm::aead::OsRng;
use aes_gcm::aead::rand_core::RngCore as _;
use futures::TryStreamExt as _;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row as _};
use tandem_money::{Currency, Money};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::{
    AuthorizeAnswer, AuthorizeCall, Connector, ConnectorError, FollowUpAnswer, FollowUpCall,
};
use crate::config::ConnectorSettings;
use crate::domain::charge::DeclineCode;
use crate::domain::settlement::{SettlementCsv, SettlementFile, SettlementKind, SettlementLine};
use crate::domain::token::random_id;
use crate::domain::{Fingerprint, Pan, Token};
use crate::error::Error;

/// The connector's name, recorded on every charge.
pub const NAME: &str = "sandbox";

/// Latency of the slow test card, in milliseconds.
const SLOW_CARD_LATENCY_MS: u32 = 1000;
/// Failures of the fail-first test card before it approves.
const FLAKY_CARD_FAILURES: u32 = 2;
/// Balance of the limited-balance test card, in US cents.
const LIMITED_CARD_BALANCE_CENTS: i64 = 5000;
/// Longest latency a card may be given, in milliseconds.
pub const LATENCY_MS_MAX: u32 = 60_000;
/// Most failures a card may be told to produce first.
pub const FAIL_FIRST_ATTEMPTS_MAX: u32 = 100;

/// How the sandbox treats one card (`SandboxCardConfig` in the proto).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CardBehaviour {
    /// Decline every authorization with this code.
    pub decline: Option<DeclineCode>,
    /// A limited balance; `None` is unlimited.
    pub balance: Option<Money>,
    /// Delay before answering any operation on the card.
    pub latency_ms: u32,
    /// Authorizations that fail with `PROCESSING_ERROR` before the card behaves normally.
    pub fail_first_attempts: u32,
    /// Take an approved authorization, then never answer.
    pub timeout_after_authorize: bool,
}

impl CardBehaviour {
    /// The documented behaviour of a test card number (see the module docs).
    pub fn for_test_card(pan: &Pan) -> CardBehaviour {
        let declined = |code| CardBehaviour {
            decline: Some(code),
            ..CardBehaviour::default()
        };
        match pan.expose_digits() {
            "4000000000000002" => declined(DeclineCode::DoNotHonor),
            "4000000000009995" => declined(DeclineCode::InsufficientFunds),
            "4000000000009987" => declined(DeclineCode::LostCard),
            "4000000000009979" => declined(DeclineCode::StolenCard),
            "4000000000000069" => declined(DeclineCode::ExpiredCard),
            "4000000000000119" => declined(DeclineCode::ProcessingError),
            "4000002760003184" => declined(DeclineCode::AuthenticationRequired),
            "4100000000000019" => declined(DeclineCode::Blocked),
            "4000009900000012" => CardBehaviour {
                balance: Currency::parse("USD")
                    .ok()
                    .map(|usd| Money::new(usd, LIMITED_CARD_BALANCE_CENTS)),
                ..CardBehaviour::default()
            },
            "4000009900000020" => CardBehaviour {
                latency_ms: SLOW_CARD_LATENCY_MS,
                ..CardBehaviour::default()
            },
            "4000009900000038" => CardBehaviour {
                timeout_after_authorize: true,
                ..CardBehaviour::default()
            },
            "4000009900000046" => CardBehaviour {
                fail_first_attempts: FLAKY_CARD_FAILURES,
                ..CardBehaviour::default()
            },
            _ => CardBehaviour::default(),
        }
    }
}

/// The ISO 8583-style code the sandbox reports with each decline.
fn processor_code(code: DeclineCode) -> &'static str {
    match code {
        DeclineCode::DoNotHonor => "05",
        DeclineCode::InsufficientFunds => "51",
        DeclineCode::LimitExceeded => "61",
        DeclineCode::Blocked => "62",
        DeclineCode::FraudSuspected => "59",
        DeclineCode::LostCard => "41",
        DeclineCode::StolenCard => "43",
        DeclineCode::ExpiredCard => "54",
        DeclineCode::InvalidCard => "14",
        DeclineCode::AuthenticationRequired => "1A",
        DeclineCode::TransactionNotAllowed => "57",
        DeclineCode::CurrencyNotSupported => "N3",
        DeclineCode::ProcessingError => "96",
        DeclineCode::InvalidAmount => "13",
        DeclineCode::Other => "XX",
    }
}

/// A card as the sandbox sees it (`SandboxCard` in the proto).
#[derive(Debug, Clone)]
pub struct SandboxCard {
    /// The token the card was last addressed by.
    pub token: String,
    /// Last four digits.
    pub last4: String,
    /// Set by `ConfigureSandboxCard` rather than by the test card number.
    pub configured: bool,
    /// The behaviour in force.
    pub behaviour: CardBehaviour,
    /// Balance minus holds minus captured money not refunded; `None` when unlimited.
    pub available: Option<Money>,
    /// Sum of open holds in the balance's currency (any currency if unlimited and uniform).
    pub held: Option<Money>,
    /// Failures still to come.
    pub fail_remaining: u32,
    /// Last change.
    pub updated_at: OffsetDateTime,
}

/// One operation the sandbox received (`SandboxOperation` in the proto).
#[derive(Debug, Clone)]
pub struct SandboxOperation {
    /// Order of arrival.
    pub seq: i64,
    /// Its reference.
    pub reference: String,
    /// The authorization it acts on (empty for an authorization).
    pub authorization_reference: String,
    /// `authorize`, `capture`, `void`, `refund` or `inquire`.
    pub kind: String,
    /// The caller's idempotency key.
    pub idempotency_key: String,
    /// The vault token.
    pub token: String,
    /// Requested amount.
    pub requested: Option<Money>,
    /// Approved amount.
    pub approved: Option<Money>,
    /// `approved`, `partially_approved`, `declined` or `replayed`.
    pub outcome: String,
    /// Why declined.
    pub decline: Option<DeclineCode>,
    /// Approval code.
    pub authorization_code: String,
    /// When received.
    pub created_at: OffsetDateTime,
}

/// One line of the settlement report.
#[derive(Debug, Clone)]
pub struct SettlementRecord {
    /// Order of writing.
    pub seq: i64,
    /// `stl_` id.
    pub id: String,
    /// Settlement day (UTC).
    pub settlement_date: time::Date,
    /// `capture` or `refund`.
    pub kind: String,
    /// The capture's or refund's reference.
    pub processor_reference: String,
    /// The authorization's reference.
    pub authorization_reference: String,
    /// Amount settled.
    pub amount: Money,
    /// When it happened.
    pub created_at: OffsetDateTime,
}

/// How `CorruptSettlementRecord` corrupts a record (`SettlementCorruption` in the proto).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The record is deleted: it leaves the file.
    Drop,
    /// A copy of the record (same day, type, references, currency, amount and time) is added
    /// under a new id, at the end of the day's file.
    Duplicate,
    /// The record's amount becomes this (positive, and not the record's).
    ChangeAmount(i64),
    /// The record's currency becomes this (not the record's).
    ChangeCurrency(Currency),
    /// The record moves to the next day's file (its time stays).
    SettleLate,
}

impl Corruption {
    /// The corruption as the sandbox's journal spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            Corruption::Drop => "drop",
            Corruption::Duplicate => "duplicate",
            Corruption::ChangeAmount(_) => "change_amount",
            Corruption::ChangeCurrency(_) => "change_currency",
            Corruption::SettleLate => "settle_late",
        }
    }
}

/// What a corruption did: the record as it was, and as it is (the new copy for a duplicate;
/// `None` for a drop).
#[derive(Debug, Clone)]
pub struct CorruptedRecord {
    /// The record before.
    pub original: SettlementRecord,
    /// The record after.
    pub corrupted: Option<SettlementRecord>,
}

/// One corruption to make (`CorruptSettlementRecord`).
#[derive(Debug, Clone, Copy)]
pub struct CorruptionCall<'a> {
    /// The request id, the journal's key.
    pub request_id: &'a str,
    /// The settlement day.
    pub day: time::Date,
    /// The record, by id; `None` is the day's first (by order of writing).
    pub record_id: Option<&'a str>,
    /// What to do.
    pub corruption: Corruption,
    /// The id of a duplicate, fixed before the call so that a job run again writes the same.
    pub duplicate_id: &'a str,
}

/// Filters of [`Sandbox::operations`].
#[derive(Debug, Clone, Default)]
pub struct OperationFilter {
    /// Only this token.
    pub token: Option<String>,
    /// Only this type.
    pub kind: Option<&'static str>,
    /// Only this authorization and the operations on it.
    pub authorization_reference: Option<String>,
}

/// The sandbox acquirer.
///
/// Its authorizations, captures, voids and refunds are acted on in groups: each call queues
/// its operation, and `connector.sandbox_group_tasks` tasks each take what has queued meanwhile
/// and act on it in one transaction (group commit), as a real acquirer's batch would. An operation is
/// answered once its group has committed, so its durability is that of a call of its own;
/// under load, one commit serves many operations.
#[derive(Debug, Clone)]
pub struct Sandbox {
    pool: PgPool,
    queue: mpsc::Sender<Queued>,
    /// Most records of one settlement file (`connector.settlement_file_records_max`).
    settlement_file_records_max: u64,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Queued::Authorize(..) => "Queued::Authorize",
            Queued::FollowUp(..) => "Queued::FollowUp",
        })
    }
}

/// The sandbox's state lives in the vault's database: its failures are the vault's own, not
/// the processor's.
fn database_error(error: sqlx::Error) -> ConnectorError {
    ConnectorError::Storage(format!("sandbox storage: {error}"))
}

fn reference() -> String {
    random_id("sbx_")
}

/// A six-character approval code.
fn authorization_code() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 6];
    OsRng.fill_bytes(&mut bytes);
    bytes
        .iter()
        .map(|b| char::from(ALPHABET[usize::from(*b) % ALPHABET.len()]))
        .collect()
}

fn money(currency: Option<String>, minor: Option<i64>) -> Option<Money> {
    let currency = Currency::parse(currency.as_deref()?).ok()?;
    Some(Money::new(currency, minor?))
}

/// The clause that makes an operation's insert do nothing where its idempotency key was acted
/// on before: the conflict target of the `sandbox_operations_once` index.
macro_rules! once {
    () => {
        "ON CONFLICT (type, idempotency_key) WHERE outcome <> 'replayed' AND type <> 'inquire' \
         DO NOTHING"
    };
}

/// The statement of a capture, void or refund the sandbox accepts: the operation, unless its
/// idempotency key was acted on before (see [`once!`]), and only then the authorization's change
/// (`SET` clause; `$2` is the amount) and, for money that moves (`$12`: a capture or a
/// refund), its settlement record, in one statement. It returns how many operations it
/// recorded: 0 means the call is a replay.
macro_rules! follow_up_statement {
    ($change:literal) => {
        concat!(
            "WITH operation AS (INSERT INTO sandbox_operations (reference, \
             authorization_reference, type, idempotency_key, token, currency, requested_minor, \
             approved_minor, outcome, created_at) \
             VALUES ($3, $1, $4, $5, $6, $7, $2, $2, 'approved', $8) ",
            once!(),
            " RETURNING reference), changed AS (UPDATE sandbox_authorizations SET ",
            $change,
            " WHERE reference = $1 AND EXISTS (SELECT FROM operation)), \
             settled AS (INSERT INTO sandbox_settlement_records (id, settlement_date, type, \
             processor_reference, authorization_reference, currency, amount_minor, created_at) \
             SELECT $9, $10, $4, reference, $1, $11, $2, $8 FROM operation WHERE $12) \
             SELECT count(*) FROM operation"
        )
    };
}

impl Sandbox {
    /// A sandbox keeping its state in `pool` (the vault's database), grouping its operations
    /// as `settings` say (`sandbox_*`). Starts its group tasks on the current Tokio runtime;
    /// they stop when the last clone is dropped.
    pub fn new(pool: PgPool, settings: &ConnectorSettings) -> Sandbox {
        let (queue, receiver) = mpsc::channel(settings.sandbox_queue_max);
        let receiver: SharedQueue = Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..settings.sandbox_group_tasks {
            tokio::spawn(run(
                pool.clone(),
                receiver.clone(),
                settings.sandbox_group_size_max,
            ));
        }
        Sandbox {
            pool,
            queue,
            settlement_file_records_max: settings.settlement_file_records_max,
        }
    }

    /// Creates the card's row with its test card behaviour unless it exists.
    pub async fn ensure_card(
        &self,
        fingerprint: Fingerprint,
        token: &Token,
        pan: &Pan,
    ) -> Result<(), sqlx::Error> {
        let behaviour = CardBehaviour::for_test_card(pan);
        write_card(
            &self.pool,
            fingerprint,
            token,
            &pan.last4(),
            false,
            &behaviour,
            false,
        )
        .await
    }

    /// Replaces a card's behaviour (`configured`: set by an operator; otherwise its test card's)
    /// on `conn`, so that the change commits with the caller's transaction; returns the card.
    pub async fn configure(
        conn: &mut PgConnection,
        fingerprint: Fingerprint,
        token: &Token,
        last4: &str,
        configured: bool,
        behaviour: &CardBehaviour,
    ) -> Result<SandboxCard, sqlx::Error> {
        write_card(
            &mut *conn,
            fingerprint,
            token,
            last4,
            configured,
            behaviour,
            true,
        )
        .await?;
        Sandbox::card_in(conn, fingerprint)
            .await?
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// A card's state, if the sandbox has seen it.
    pub async fn card(&self, fingerprint: Fingerprint) -> Result<Option<SandboxCard>, sqlx::Error> {
        Sandbox::card_in(&self.pool, fingerprint).await
    }

    /// A card's state read through `executor`, if the sandbox has seen it.
    pub async fn card_in(
        executor: impl sqlx::PgExecutor<'_>,
        fingerprint: Fingerprint,
    ) -> Result<Option<SandboxCard>, sqlx::Error> {
        let row = sqlx::query(
            "SELECT c.*, \
             (SELECT sum(approved_minor) FROM sandbox_authorizations a \
              WHERE a.fingerprint = c.fingerprint AND a.state = 'held')::bigint AS held_minor, \
             (SELECT min(currency) FROM sandbox_authorizations a \
              WHERE a.fingerprint = c.fingerprint AND a.state = 'held') AS held_currency, \
             (SELECT sum(captured_minor - refunded_minor) FROM sandbox_authorizations a \
              WHERE a.fingerprint = c.fingerprint AND a.state = 'captured' \
              AND a.currency = c.balance_currency)::bigint AS spent_minor \
             FROM sandbox_cards c WHERE c.fingerprint = $1",
        )
        .bind(fingerprint.as_bytes().as_slice())
        .fetch_optional(executor)
        .await?;
        row.map(|row| card_from_row(&row)).transpose()
    }

    /// Operations after `after_seq`, oldest first, at most `limit`.
    pub async fn operations(
        &self,
        filter: &OperationFilter,
        after_seq: i64,
        limit: i64,
    ) -> Result<Vec<SandboxOperation>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT * FROM sandbox_operations WHERE seq > $1 \
             AND ($2::text IS NULL OR token = $2) AND ($3::text IS NULL OR type = $3) \
             AND ($4::text IS NULL OR reference = $4 OR authorization_reference = $4) \
             ORDER BY seq LIMIT $5",
        )
        .bind(after_seq)
        .bind(filter.token.as_deref())
        .bind(filter.kind)
        .bind(filter.authorization_reference.as_deref())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SandboxOperation {
                    seq: row.try_get("seq")?,
                    reference: row.try_get("reference")?,
                    authorization_reference: row.try_get("authorization_reference")?,
                    kind: row.try_get("type")?,
                    idempotency_key: row.try_get("idempotency_key")?,
                    token: row.try_get("token")?,
                    requested: money(row.try_get("currency")?, row.try_get("requested_minor")?),
                    approved: money(row.try_get("currency")?, row.try_get("approved_minor")?),
                    outcome: row.try_get("outcome")?,
                    decline: row
                        .try_get::<Option<String>, _>("decline_code")?
                        .as_deref()
                        .and_then(DeclineCode::parse),
                    authorization_code: row.try_get("authorization_code")?,
                    created_at: row.try_get("created_at")?,
                })
            })
            .collect()
    }

    /// Settlement records after position (`settlement_date`, `seq`) `after`, within the days,
    /// of the type, at most `limit`.
    pub async fn settlement_records(
        &self,
        start: Option<time::Date>,
        end: Option<time::Date>,
        kind: Option<&'static str>,
        after: Option<(time::Date, i64)>,
        limit: i64,
    ) -> Result<Vec<SettlementRecord>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT * FROM sandbox_settlement_records \
             WHERE ($1::date IS NULL OR settlement_date >= $1) \
             AND ($2::date IS NULL OR settlement_date <= $2) \
             AND ($3::text IS NULL OR type = $3) \
             AND ($4::date IS NULL OR (settlement_date, seq) > ($4, $5)) \
             ORDER BY settlement_date, seq LIMIT $6",
        )
        .bind(start)
        .bind(end)
        .bind(kind)
        .bind(after.map(|(date, _)| date))
        .bind(after.map_or(0, |(_, seq)| seq))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(settlement_record).collect()
    }

    /// Corrupts one settlement record of a day on `conn` (the writer's transaction, so that
    /// the change commits with its request record and audit row), and journals what it did
    /// under the request id.
    ///
    /// Errors: `SettlementRecordNotFound` when the day has no such record; `InvalidArgument`
    /// (`amount_minor`, `currency`, `settlement_date`) for a change that would change nothing
    /// or a day without a next one; `RequestIdTaken` when another transaction journaled the
    /// request id first.
    pub async fn corrupt_settlement_record(
        conn: &mut PgConnection,
        call: CorruptionCall<'_>,
    ) -> Result<CorruptedRecord, Error> {
        let row = sqlx::query(
            "SELECT * FROM sandbox_settlement_records \
             WHERE settlement_date = $1 AND ($2::text IS NULL OR id = $2) \
             ORDER BY seq LIMIT 1 FOR UPDATE",
        )
        .bind(call.day)
        .bind(call.record_id)
        .fetch_optional(&mut *conn)
        .await?
        .ok_or(Error::SettlementRecordNotFound)?;
        let original = settlement_record(&row)?;
        let id = original.id.as_str();
        const UPDATE: &str = "UPDATE sandbox_settlement_records SET ";
        const RETURNING: &str = " WHERE id = $1 RETURNING *";
        let corrupted = match call.corruption {
            Corruption::Drop => {
                sqlx::query("DELETE FROM sandbox_settlement_records WHERE id = $1")
                    .bind(id)
                    .execute(&mut *conn)
                    .await?;
                None
            }
            Corruption::Duplicate => Some(
                sqlx::query(
                    "INSERT INTO sandbox_settlement_records (id, settlement_date, type, \
                     processor_reference, authorization_reference, currency, amount_minor, \
                     created_at) \
                     SELECT $2, settlement_date, type, processor_reference, \
                     authorization_reference, currency, amount_minor, created_at \
                     FROM sandbox_settlement_records WHERE id = $1 RETURNING *",
                )
                .bind(id)
                .bind(call.duplicate_id)
                .fetch_one(&mut *conn)
                .await?,
            ),
            Corruption::ChangeAmount(amount_minor) => {
                if amount_minor == original.amount.minor_units {
                    return Err(Error::invalid(
                        "amount_minor",
                        "must differ from the record's amount",
                    ));
                }
                let sql = format!("{UPDATE}amount_minor = $2{RETURNING}");
                Some(
                    sqlx::query(&sql)
                        .bind(id)
                        .bind(amount_minor)
                        .fetch_one(&mut *conn)
                        .await?,
                )
            }
            Corruption::ChangeCurrency(currency) => {
                if currency == original.amount.currency {
                    return Err(Error::invalid(
                        "currency",
                        "must differ from the record's currency",
                    ));
                }
                let sql = format!("{UPDATE}currency = $2{RETURNING}");
                Some(
                    sqlx::query(&sql)
                        .bind(id)
                        .bind(currency.code())
                        .fetch_one(&mut *conn)
                        .await?,
                )
            }
            Corruption::SettleLate => {
                let late = original
                    .settlement_date
                    .next_day()
                    .ok_or_else(|| Error::invalid("settlement_date", "has no next day"))?;
                let sql = format!("{UPDATE}settlement_date = $2{RETURNING}");
                Some(
                    sqlx::query(&sql)
                        .bind(id)
                        .bind(late)
                        .fetch_one(&mut *conn)
                        .await?,
                )
            }
        };
        let corrupted = corrupted.as_ref().map(settlement_record).transpose()?;
        let journaled = sqlx::query(
            "INSERT INTO sandbox_settlement_corruptions (request_id, corruption, record_seq, \
             record_id, settlement_date, type, processor_reference, authorization_reference, \
             currency, amount_minor, record_created_at, corrupted_seq, corrupted_id, \
             corrupted_settlement_date, corrupted_currency, corrupted_amount_minor) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16) \
             ON CONFLICT (request_id) DO NOTHING",
        )
        .bind(call.request_id)
        .bind(call.corruption.as_str())
        .bind(original.seq)
        .bind(&original.id)
        .bind(original.settlement_date)
        .bind(&original.kind)
        .bind(&original.processor_reference)
        .bind(&original.authorization_reference)
        .bind(original.amount.currency.code())
        .bind(original.amount.minor_units)
        .bind(original.created_at)
        .bind(corrupted.as_ref().map(|c| c.seq))
        .bind(corrupted.as_ref().map(|c| c.id.as_str()))
        .bind(corrupted.as_ref().map(|c| c.settlement_date))
        .bind(corrupted.as_ref().map(|c| c.amount.currency.code()))
        .bind(corrupted.as_ref().map(|c| c.amount.minor_units))
        .execute(&mut *conn)
        .await?
        .rows_affected();
        if journaled == 0 {
            return Err(Error::RequestIdTaken);
        }
        Ok(CorruptedRecord {
            original,
            corrupted,
        })
    }

    /// What the corruption journaled under `request_id` did, for a replay.
    pub async fn settlement_corruption(
        conn: &mut PgConnection,
        request_id: &str,
    ) -> Result<Option<CorruptedRecord>, sqlx::Error> {
        let row = sqlx::query("SELECT * FROM sandbox_settlement_corruptions WHERE request_id = $1")
            .bind(request_id)
            .fetch_optional(conn)
            .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let original = SettlementRecord {
            seq: row.try_get("record_seq")?,
            id: row.try_get("record_id")?,
            settlement_date: row.try_get("settlement_date")?,
            kind: row.try_get("type")?,
            processor_reference: row.try_get("processor_reference")?,
            authorization_reference: row.try_get("authorization_reference")?,
            amount: stored_money(&row, "currency", "amount_minor")?,
            created_at: row.try_get("record_created_at")?,
        };
        let corrupted = match row.try_get::<Option<String>, _>("corrupted_id")? {
            None => None,
            Some(id) => Some(SettlementRecord {
                seq: row.try_get("corrupted_seq")?,
                id,
                settlement_date: row.try_get("corrupted_settlement_date")?,
                amount: stored_money(&row, "corrupted_currency", "corrupted_amount_minor")?,
                ..original.clone()
            }),
        };
        Ok(Some(CorruptedRecord {
            original,
            corrupted,
        }))
    }

    /// The (settlement day, seq) of the settlement record `seq`, for paging.
    pub async fn settlement_record_position(
        &self,
        seq: i64,
    ) -> Result<Option<(time::Date, i64)>, sqlx::Error> {
        sqlx::query_as("SELECT settlement_date, seq FROM sandbox_settlement_records WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&self.pool)
            .await
    }

    /// Queues `operation` for a group transaction and waits for its answer.
    async fn act<T>(&self, operation: impl FnOnce(Slot<T>) -> Queued) -> Result<T, ConnectorError> {
        let (reply, answer) = oneshot::channel();
        let slot = Slot {
            answer: None,
            reply,
        };
        let stopped = || ConnectorError::Storage("sandbox storage: the sandbox stopped".into());
        self.queue
            .send(operation(slot))
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?.map_err(database_error)
    }

    async fn follow_up(
        &self,
        kind: &'static str,
        call: FollowUpCall<'_>,
    ) -> Result<FollowUpAnswer, ConnectorError> {
        let call = FollowUp {
            kind,
            idempotency_key: call.idempotency_key.to_owned(),
            authorization_reference: call.authorization_reference.to_owned(),
            amount: call.amount,
            token: call.token.clone(),
        };
        let followed_up = self.act(|slot| Queued::FollowUp(call, slot)).await?;
        tokio::time::sleep(followed_up.latency).await;
        Ok(followed_up.answer)
    }
}

/// An authorization waiting for its group, with what its decision needs. The card number is
/// not among it: its test card's behaviour and last four digits are worked out before it is
/// queued.
struct Authorization {
    idempotency_key: String,
    token: Token,
    fingerprint: Fingerprint,
    last4: String,
    test_card: CardBehaviour,
    expired: bool,
    amount: Money,
    allow_partial_approval: bool,
}

impl Authorization {
    fn of(call: &AuthorizeCall<'_>) -> Authorization {
        Authorization {
            idempotency_key: call.idempotency_key.to_owned(),
            token: call.token.clone(),
            fingerprint: call.fingerprint,
            last4: call.card.pan.last4(),
            test_card: CardBehaviour::for_test_card(&call.card.pan),
            expired: call.expiry.has_expired(OffsetDateTime::now_utc().date()),
            amount: call.amount,
            allow_partial_approval: call.allow_partial_approval,
        }
    }
}

/// A capture, void or refund waiting for its group.
struct FollowUp {
    kind: &'static str,
    idempotency_key: String,
    authorization_reference: String,
    amount: Option<Money>,
    token: Token,
}

/// An authorization's outcome: the answer, whether the sandbox then hangs (timeout card), and
/// the card's latency.
struct Authorized {
    answer: AuthorizeAnswer,
    hang: bool,
    latency: Duration,
}

/// A capture's, void's or refund's outcome: the answer and the card's latency.
struct FollowedUp {
    answer: FollowUpAnswer,
    latency: Duration,
}

/// Where a queued operation's answer waits for its group's commit, and its caller.
struct Slot<T> {
    answer: Option<T>,
    reply: oneshot::Sender<Result<T, sqlx::Error>>,
}

impl<T> Slot<T> {
    /// Answers the caller once the group has committed (or failed).
    fn send(self, committed: Result<(), sqlx::Error>) {
        let answer = committed.and_then(|()| {
            self.answer.ok_or_else(|| {
                sqlx::Error::Protocol("a sandbox group committed without an answer".into())
            })
        });
        // The caller may have gone (its call timed out); the operation stands regardless.
        let _ = self.reply.send(answer);
    }
}

/// One operation in the queue.
enum Queued {
    Authorize(Authorization, Slot<Authorized>),
    FollowUp(FollowUp, Slot<FollowedUp>),
}

impl Queued {
    fn send(self, committed: Result<(), sqlx::Error>) {
        match self {
            Queued::Authorize(_, slot) => slot.send(committed),
            Queued::FollowUp(_, slot) => slot.send(committed),
        }
    }
}

type SharedQueue = Arc<tokio::sync::Mutex<mpsc::Receiver<Queued>>>;

/// A group task: takes the operations queued meanwhile, up to `size_max`, acts on them
/// in one transaction and answers them. If the group fails, each of its operations is tried
/// again alone, so that only the one at fault fails (a group whose commit went through
/// unseen is answered by the replays of its idempotency keys).
async fn run(pool: PgPool, queue: SharedQueue, size_max: usize) {
    let mut group = Vec::with_capacity(size_max);
    loop {
        // Hold the queue only while taking a group, never while committing it.
        if queue.lock().await.recv_many(&mut group, size_max).await == 0 {
            return;
        }
        match act_on_group(&pool, &mut group).await {
            Ok(()) => group.drain(..).for_each(|queued| queued.send(Ok(()))),
            Err(error) if group.len() == 1 => {
                if let Some(queued) = group.pop() {
                    queued.send(Err(error));
                }
            }
            Err(error) => {
                tracing::warn!(%error, operations = group.len(), "sandbox group failed; acting one by one");
                for mut queued in group.drain(..) {
                    let committed = act_on_group(&pool, std::slice::from_mut(&mut queued)).await;
                    queued.send(committed);
                }
            }
        }
    }
}

/// Acts on a group in one transaction. The cards its authorizations use, then the
/// authorizations its follow-ups act on, are locked first, each set in one statement and in
/// key order, so that groups on other connections never wait for each other in a circle; each
/// operation then decides on the state the ones before it left.
async fn act_on_group(pool: &PgPool, group: &mut [Queued]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut cards = lock_cards(&mut tx, group).await?;
    let mut authorizations = lock_authorizations(&mut tx, group).await?;
    for queued in group.iter_mut() {
        match queued {
            Queued::Authorize(call, slot) => {
                // A card's row read by the lock serves the group's first operation on it; a
                // later one reads (under the lock already held) what that operation left.
                if !cards.contains_key(&call.fingerprint) {
                    lock_card_rows(&mut tx, &[&*call], &mut cards).await?;
                }
                let card = cards
                    .remove(&call.fingerprint)
                    .ok_or(sqlx::Error::RowNotFound)?;
                slot.answer = Some(authorize(&mut tx, call, &card).await?);
            }
            Queued::FollowUp(call, slot) => {
                let reference = call.authorization_reference.as_str();
                if !authorizations.contains_key(reference) {
                    lock_authorization_rows(&mut tx, &[reference], &mut authorizations).await?;
                }
                let authorization = authorizations.remove(reference);
                slot.answer = Some(follow_up(&mut tx, call, authorization).await?);
            }
        }
    }
    tx.commit().await
}

/// Locks the rows of the cards the group's authorizations use, in fingerprint order, writing
/// first the cards the sandbox sees for the first time (with their test card's behaviour).
async fn lock_cards(
    conn: &mut PgConnection,
    group: &[Queued],
) -> Result<HashMap<Fingerprint, PgRow>, sqlx::Error> {
    let mut calls: Vec<&Authorization> = group
        .iter()
        .filter_map(|queued| match queued {
            Queued::Authorize(call, _) => Some(call),
            Queued::FollowUp(..) => None,
        })
        .collect();
    calls.sort_by_key(|call| *call.fingerprint.as_bytes());
    calls.dedup_by_key(|call| call.fingerprint);
    let mut cards = HashMap::with_capacity(calls.len());
    lock_card_rows(conn, &calls, &mut cards).await?;
    calls.retain(|call| !cards.contains_key(&call.fingerprint));
    if calls.is_empty() {
        return Ok(cards);
    }
    for call in &calls {
        write_card(
            &mut *conn,
            call.fingerprint,
            &call.token,
            &call.last4,
            false,
            &call.test_card,
            false,
        )
        .await?;
    }
    lock_card_rows(conn, &calls, &mut cards).await?;
    Ok(cards)
}

/// Locks the rows of the cards `calls` use that exist, in fingerprint order, into `cards`.
async fn lock_card_rows(
    conn: &mut PgConnection,
    calls: &[&Authorization],
    cards: &mut HashMap<Fingerprint, PgRow>,
) -> Result<(), sqlx::Error> {
    if calls.is_empty() {
        return Ok(());
    }
    let fingerprints: Vec<Vec<u8>> = calls
        .iter()
        .map(|call| call.fingerprint.as_bytes().to_vec())
        .collect();
    let rows = sqlx::query(
        "SELECT * FROM sandbox_cards WHERE fingerprint = ANY($1) ORDER BY fingerprint FOR UPDATE",
    )
    .bind(fingerprints)
    .fetch_all(conn)
    .await?;
    for row in rows {
        cards.insert(fingerprint_of(&row)?, row);
    }
    Ok(())
}

fn fingerprint_of(row: &PgRow) -> Result<Fingerprint, sqlx::Error> {
    let bytes: Vec<u8> = row.try_get("fingerprint")?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| sqlx::Error::ColumnDecode {
        index: "fingerprint".into(),
        source: "a fingerprint is 32 bytes".into(),
    })?;
    Ok(Fingerprint(bytes))
}

/// Locks the authorizations the group's follow-ups act on, in reference order, with their
/// cards' latency.
async fn lock_authorizations(
    conn: &mut PgConnection,
    group: &[Queued],
) -> Result<HashMap<String, PgRow>, sqlx::Error> {
    let mut references: Vec<&str> = group
        .iter()
        .filter_map(|queued| match queued {
            Queued::FollowUp(call, _) => Some(call.authorization_reference.as_str()),
            Queued::Authorize(..) => None,
        })
        .collect();
    references.sort_unstable();
    references.dedup();
    let mut authorizations = HashMap::with_capacity(references.len());
    lock_authorization_rows(conn, &references, &mut authorizations).await?;
    Ok(authorizations)
}

/// Locks the authorizations `references` (sorted) that exist, with their cards' latency, into
/// `authorizations`.
async fn lock_authorization_rows(
    conn: &mut PgConnection,
    references: &[&str],
    authorizations: &mut HashMap<String, PgRow>,
) -> Result<(), sqlx::Error> {
    if references.is_empty() {
        return Ok(());
    }
    let rows = sqlx::query(
        "SELECT a.*, c.latency_ms FROM sandbox_authorizations a \
         JOIN sandbox_cards c USING (fingerprint) WHERE a.reference = ANY($1) \
         ORDER BY a.reference FOR UPDATE OF a",
    )
    .bind(references)
    .fetch_all(conn)
    .await?;
    for row in rows {
        authorizations.insert(row.try_get("reference")?, row);
    }
    Ok(())
}

/// Decides and records an authorization on its locked card's row.
async fn authorize(
    conn: &mut PgConnection,
    call: &Authorization,
    card: &PgRow,
) -> Result<Authorized, sqlx::Error> {
    let behaviour = card_from_row(card)?.behaviour;
    let latency = Duration::from_millis(u64::from(behaviour.latency_ms));
    let fail_remaining: i32 = card.try_get("fail_remaining")?;
    // A failure to come is used up by the statement that records the operation.
    let fails = fail_remaining > 0;
    let decision = if fails {
        Err(DeclineCode::ProcessingError)
    } else if let Some(code) = behaviour.decline {
        Err(code)
    } else if call.expired {
        Err(DeclineCode::ExpiredCard)
    } else if let Some(balance) = behaviour.balance {
        if balance.currency != call.amount.currency {
            Err(DeclineCode::CurrencyNotSupported)
        } else {
            let available = available_minor(conn, call.fingerprint, balance).await?;
            if call.amount.minor_units <= available {
                Ok(call.amount.minor_units)
            } else if call.allow_partial_approval && available > 0 {
                Ok(available)
            } else {
                Err(DeclineCode::InsufficientFunds)
            }
        }
    } else {
        Ok(call.amount.minor_units)
    };
    let reference = reference();
    let now = OffsetDateTime::now_utc();
    let answer = match decision {
        Ok(approved_minor) => AuthorizeAnswer::Approved {
            reference: reference.clone(),
            approved: Money::new(call.amount.currency, approved_minor),
            authorization_code: authorization_code(),
        },
        Err(code) => AuthorizeAnswer::Declined {
            reference: reference.clone(),
            code,
            processor_code: processor_code(code).to_owned(),
        },
    };
    let (outcome, approved_minor, decline, auth_code) = match &answer {
        AuthorizeAnswer::Approved {
            approved,
            authorization_code,
            ..
        } => (
            if approved.minor_units < call.amount.minor_units {
                "partially_approved"
            } else {
                "approved"
            },
            approved.minor_units,
            None,
            authorization_code.as_str(),
        ),
        AuthorizeAnswer::Declined { code, .. } => ("declined", 0, Some(*code), ""),
    };
    // The operation, and for an approval the hold it takes and for a failure to come the one
    // it uses up, in one statement; nothing at all when this idempotency key was acted on
    // before (the card's lock serializes copies on one card; the unique index, any other):
    // the first answer is then replayed.
    let recorded: i64 = sqlx::query_scalar(concat!(
        "WITH operation AS (INSERT INTO sandbox_operations (reference, type, \
         idempotency_key, token, currency, requested_minor, approved_minor, outcome, \
         decline_code, processor_decline_code, authorization_code, created_at) \
         VALUES ($1, 'authorize', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ",
        once!(),
        " RETURNING reference), \
         hold AS (INSERT INTO sandbox_authorizations \
         (reference, fingerprint, currency, approved_minor, state, created_at) \
         SELECT reference, $12, $4, $6, 'held', $11 FROM operation WHERE $8::text IS NULL), \
         failure AS (UPDATE sandbox_cards SET fail_remaining = fail_remaining - 1, \
         updated_at = now() WHERE fingerprint = $12 AND $13 AND EXISTS (SELECT FROM operation)) \
         SELECT count(*) FROM operation"
    ))
    .bind(&reference)
    .bind(&call.idempotency_key)
    .bind(call.token.as_str())
    .bind(call.amount.currency.code())
    .bind(call.amount.minor_units)
    .bind(approved_minor)
    .bind(outcome)
    .bind(decline.map(DeclineCode::as_str))
    .bind(decline.map_or("", processor_code))
    .bind(auth_code)
    .bind(now)
    .bind(call.fingerprint.as_bytes().as_slice())
    .bind(fails)
    .fetch_one(&mut *conn)
    .await?;
    if recorded == 0 {
        let answer = replay_authorization(conn, &call.idempotency_key)
            .await?
            .ok_or_else(|| missing_operation("authorize"))?;
        record_replay(conn, "authorize", &call.idempotency_key, &call.token, "").await?;
        return Ok(Authorized {
            answer,
            hang: false,
            latency,
        });
    }
    Ok(Authorized {
        answer,
        hang: behaviour.timeout_after_authorize && decline.is_none(),
        latency,
    })
}

/// Decides and records a capture, void or refund on its locked authorization's row (`None`:
/// the sandbox knows no such authorization).
async fn follow_up(
    conn: &mut PgConnection,
    call: &FollowUp,
    authorization: Option<PgRow>,
) -> Result<FollowedUp, sqlx::Error> {
    let kind = call.kind;
    let Some(authorization) = authorization else {
        return Ok(FollowedUp {
            answer: refuse(conn, call, DeclineCode::InvalidCard).await?,
            latency: Duration::ZERO,
        });
    };
    let latency =
        Duration::from_millis(authorization.try_get::<i32, _>("latency_ms")?.max(0) as u64);
    let state: String = authorization.try_get("state")?;
    let currency: String = authorization.try_get("currency")?;
    let approved: i64 = authorization.try_get("approved_minor")?;
    let captured: i64 = authorization.try_get("captured_minor")?;
    let refunded: i64 = authorization.try_get("refunded_minor")?;
    let amount = call.amount.map(|m| m.minor_units);
    let amount_currency_ok = call.amount.is_none_or(|m| m.currency.code() == currency);
    let reference = reference();
    let change = match (kind, state.as_str(), amount) {
        _ if !amount_currency_ok => None,
        ("capture", "held", Some(amount)) if amount > 0 && amount <= approved => Some(
            follow_up_statement!("state = 'captured', captured_minor = $2"),
        ),
        ("void", "held", None) => Some(follow_up_statement!("state = 'voided'")),
        ("refund", "captured", Some(amount)) if amount > 0 && amount <= captured - refunded => {
            Some(follow_up_statement!("refunded_minor = refunded_minor + $2"))
        }
        _ => None,
    };
    let Some(change) = change else {
        let code = if amount_currency_ok {
            DeclineCode::TransactionNotAllowed
        } else {
            DeclineCode::CurrencyNotSupported
        };
        return Ok(FollowedUp {
            answer: refuse(conn, call, code).await?,
            latency,
        });
    };
    let now = OffsetDateTime::now_utc();
    let settles = amount.is_some() && matches!(kind, "capture" | "refund");
    let recorded: i64 = sqlx::query_scalar(change)
        .bind(&call.authorization_reference)
        .bind(amount)
        .bind(&reference)
        .bind(kind)
        .bind(&call.idempotency_key)
        .bind(call.token.as_str())
        .bind(amount.map(|_| currency.as_str()))
        .bind(now)
        .bind(random_id("stl_"))
        .bind(now.date())
        .bind(&currency)
        .bind(settles)
        .fetch_one(&mut *conn)
        .await?;
    let answer = if recorded == 0 {
        replay_follow_up(conn, call).await?
    } else {
        FollowUpAnswer::Done { reference }
    };
    Ok(FollowedUp { answer, latency })
}

/// Inserts or (with `replace`) overwrites a card's behaviour.
async fn write_card(
    executor: impl sqlx::PgExecutor<'_>,
    fingerprint: Fingerprint,
    token: &Token,
    last4: &str,
    configured: bool,
    behaviour: &CardBehaviour,
    replace: bool,
) -> Result<(), sqlx::Error> {
    let conflict = if replace {
        "ON CONFLICT (fingerprint) DO UPDATE SET token = EXCLUDED.token, \
         configured = EXCLUDED.configured, decline_code = EXCLUDED.decline_code, \
         balance_currency = EXCLUDED.balance_currency, balance_minor = EXCLUDED.balance_minor, \
         latency_ms = EXCLUDED.latency_ms, fail_first_attempts = EXCLUDED.fail_first_attempts, \
         fail_remaining = EXCLUDED.fail_remaining, \
         timeout_after_authorize = EXCLUDED.timeout_after_authorize, updated_at = now()"
    } else {
        "ON CONFLICT (fingerprint) DO NOTHING"
    };
    let sql = format!(
        "INSERT INTO sandbox_cards (fingerprint, token, last4, configured, decline_code, \
         balance_currency, balance_minor, latency_ms, fail_first_attempts, fail_remaining, \
         timeout_after_authorize, updated_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, now()) {conflict}"
    );
    sqlx::query(&sql)
        .bind(fingerprint.as_bytes().as_slice())
        .bind(token.as_str())
        .bind(last4)
        .bind(configured)
        .bind(behaviour.decline.map(DeclineCode::as_str))
        .bind(behaviour.balance.map(|b| b.currency.code()))
        .bind(behaviour.balance.map(|b| b.minor_units))
        .bind(behaviour.latency_ms as i32)
        .bind(behaviour.fail_first_attempts as i32)
        .bind(behaviour.timeout_after_authorize)
        .execute(executor)
        .await?;
    Ok(())
}

fn card_from_row(row: &PgRow) -> Result<SandboxCard, sqlx::Error> {
    let balance = money(
        row.try_get("balance_currency")?,
        row.try_get("balance_minor")?,
    );
    let held_minor: Option<i64> = row.try_get("held_minor").unwrap_or(None);
    let held_currency: Option<String> = row.try_get("held_currency").unwrap_or(None);
    let spent_minor: Option<i64> = row.try_get("spent_minor").unwrap_or(None);
    let held = money(held_currency, held_minor);
    let available = balance.map(|balance| {
        let held_same = held
            .filter(|h| h.currency == balance.currency)
            .map_or(0, |h| h.minor_units);
        Money::new(
            balance.currency,
            balance.minor_units - held_same - spent_minor.unwrap_or(0),
        )
    });
    Ok(SandboxCard {
        token: row.try_get("token")?,
        last4: row.try_get("last4")?,
        configured: row.try_get("configured")?,
        behaviour: CardBehaviour {
            decline: row
                .try_get::<Option<String>, _>("decline_code")?
                .as_deref()
                .and_then(DeclineCode::parse),
            balance,
            latency_ms: row.try_get::<i32, _>("latency_ms")?.max(0) as u32,
            fail_first_attempts: row.try_get::<i32, _>("fail_first_attempts")?.max(0) as u32,
            timeout_after_authorize: row.try_get("timeout_after_authorize")?,
        },
        available,
        held,
        fail_remaining: row.try_get::<i32, _>("fail_remaining")?.max(0) as u32,
        updated_at: row.try_get("updated_at")?,
    })
}

/// What the card can still authorize in the balance's currency.
async fn available_minor(
    conn: &mut PgConnection,
    fingerprint: Fingerprint,
    balance: Money,
) -> Result<i64, sqlx::Error> {
    let used: Option<i64> = sqlx::query_scalar(
        "SELECT sum(CASE state WHEN 'held' THEN approved_minor \
         ELSE captured_minor - refunded_minor END)::bigint \
         FROM sandbox_authorizations WHERE fingerprint = $1 AND currency = $2 \
         AND state IN ('held', 'captured')",
    )
    .bind(fingerprint.as_bytes().as_slice())
    .bind(balance.currency.code())
    .fetch_one(conn)
    .await?;
    Ok(balance.minor_units - used.unwrap_or(0))
}

/// The answer the sandbox gave to an earlier authorization with this key.
async fn replay_authorization(
    conn: &mut PgConnection,
    idempotency_key: &str,
) -> Result<Option<AuthorizeAnswer>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT reference, currency, approved_minor, outcome, decline_code, \
         processor_decline_code, authorization_code FROM sandbox_operations \
         WHERE type = 'authorize' AND idempotency_key = $1 AND outcome <> 'replayed'",
    )
    .bind(idempotency_key)
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let reference: String = row.try_get("reference")?;
    let decline: Option<String> = row.try_get("decline_code")?;
    let answer = match decline.as_deref().and_then(DeclineCode::parse) {
        Some(code) => AuthorizeAnswer::Declined {
            reference,
            code,
            processor_code: row.try_get("processor_decline_code")?,
        },
        None => AuthorizeAnswer::Approved {
            reference,
            approved: money(row.try_get("currency")?, row.try_get("approved_minor")?).ok_or_else(
                || sqlx::Error::ColumnDecode {
                    index: "approved_minor".into(),
                    source: "approved authorization without an amount".into(),
                },
            )?,
            authorization_code: row.try_get("authorization_code")?,
        },
    };
    Ok(Some(answer))
}

async fn record_replay(
    conn: &mut PgConnection,
    kind: &str,
    idempotency_key: &str,
    token: &Token,
    authorization_reference: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO sandbox_operations (reference, authorization_reference, type, \
         idempotency_key, token, outcome, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'replayed', now())",
    )
    .bind(reference())
    .bind(authorization_reference)
    .bind(kind)
    .bind(idempotency_key)
    .bind(token.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

fn follow_up_answer(row: &PgRow) -> Result<FollowUpAnswer, sqlx::Error> {
    let decline: Option<String> = row.try_get("decline_code")?;
    Ok(match decline.as_deref().and_then(DeclineCode::parse) {
        Some(code) => FollowUpAnswer::Refused {
            code,
            processor_code: row.try_get("processor_decline_code")?,
        },
        None => FollowUpAnswer::Done {
            reference: row.try_get("reference")?,
        },
    })
}

/// Records and returns a refused capture, void or refund, or replays the first answer when
/// its idempotency key was acted on before.
async fn refuse(
    conn: &mut PgConnection,
    call: &FollowUp,
    code: DeclineCode,
) -> Result<FollowUpAnswer, sqlx::Error> {
    let recorded = sqlx::query(concat!(
        "INSERT INTO sandbox_operations (reference, authorization_reference, type, \
         idempotency_key, token, outcome, decline_code, processor_decline_code, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'declined', $6, $7, now()) ",
        once!()
    ))
    .bind(reference())
    .bind(&call.authorization_reference)
    .bind(call.kind)
    .bind(&call.idempotency_key)
    .bind(call.token.as_str())
    .bind(code.as_str())
    .bind(processor_code(code))
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if recorded == 0 {
        return replay_follow_up(conn, call).await;
    }
    Ok(FollowUpAnswer::Refused {
        code,
        processor_code: processor_code(code).to_owned(),
    })
}

/// The answer the sandbox gave to an earlier capture, void or refund with this call's
/// idempotency key, recorded as replayed.
async fn replay_follow_up(
    conn: &mut PgConnection,
    call: &FollowUp,
) -> Result<FollowUpAnswer, sqlx::Error> {
    let previous = sqlx::query(
        "SELECT reference, outcome, decline_code, processor_decline_code \
         FROM sandbox_operations WHERE type = $1 AND idempotency_key = $2 \
         AND outcome <> 'replayed'",
    )
    .bind(call.kind)
    .bind(&call.idempotency_key)
    .fetch_optional(&mut *conn)
    .await?
    .ok_or_else(|| missing_operation(call.kind))?;
    record_replay(
        conn,
        call.kind,
        &call.idempotency_key,
        &call.token,
        &call.authorization_reference,
    )
    .await?;
    follow_up_answer(&previous)
}

/// The error of a replay whose first operation is not there: the insert conflicted with a row
/// that a fresh statement cannot see, which the unique index makes impossible.
fn missing_operation(kind: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!(
        "sandbox {kind}: the idempotency key conflicts, but its first operation is missing"
    ))
}

#[async_trait::async_trait]
impl Connector for Sandbox {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn authorize(&self, call: AuthorizeCall<'_>) -> Result<AuthorizeAnswer, ConnectorError> {
        let call = Authorization::of(&call);
        let authorized = self.act(|slot| Queued::Authorize(call, slot)).await?;
        // A slow card answers late (its decision is already recorded, as at a real acquirer
        // whose response is delayed).
        tokio::time::sleep(authorized.latency).await;
        if authorized.hang {
            // The hold is taken and committed; the answer never comes. The connector's
            // timeout ends the call, and `inquire` (or a replay) later finds the hold.
            std::future::pending::<()>().await;
        }
        Ok(authorized.answer)
    }

    async fn capture(&self, call: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
        self.follow_up("capture", call).await
    }

    async fn void(&self, call: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
        self.follow_up("void", call).await
    }

    async fn refund(&self, call: FollowUpCall<'_>) -> Result<FollowUpAnswer, ConnectorError> {
        self.follow_up("refund", call).await
    }

    async fn inquire(
        &self,
        idempotency_key: &str,
        token: &Token,
    ) -> Result<Option<AuthorizeAnswer>, ConnectorError> {
        let mut tx = self.pool.begin().await.map_err(database_error)?;
        let answer = replay_authorization(&mut tx, idempotency_key)
            .await
            .map_err(database_error)?;
        if let Some(AuthorizeAnswer::Approved { reference, .. })
        | Some(AuthorizeAnswer::Declined { reference, .. }) = &answer
        {
            sqlx::query(
                "INSERT INTO sandbox_operations (reference, authorization_reference, type, \
                 idempotency_key, token, outcome, created_at) \
                 VALUES ($1, $2, 'inquire', $3, $4, 'approved', now())",
            )
            .bind(self::reference())
            .bind(reference)
            .bind(idempotency_key)
            .bind(token.as_str())
            .execute(&mut *tx)
            .await
            .map_err(database_error)?;
        }
        tx.commit().await.map_err(database_error)?;
        Ok(answer)
    }

    /// The day's records in order of writing, in one query (one snapshot), written as they
    /// arrive: a capture names its authorization's reference, a refund its own; the fee is
    /// [`crate::domain::settlement::fee_minor`]; `settled_at` is when the capture or refund
    /// happened (a record settled late keeps its time). A day of more than
    /// `connector.settlement_file_records_max` records is refused, never read whole.
    async fn settlement_file(&self, day: time::Date) -> Result<SettlementFile, ConnectorError> {
        let records_max = self.settlement_file_records_max;
        // One more than the limit, to tell a full file from one too large without reading it
        // all.
        let mut rows = sqlx::query(
            "SELECT id, type, processor_reference, authorization_reference, currency, \
             amount_minor, created_at FROM sandbox_settlement_records \
             WHERE settlement_date = $1 ORDER BY seq LIMIT $2",
        )
        .bind(day)
        .bind(
            i64::try_from(records_max)
                .unwrap_or(i64::MAX)
                .saturating_add(1),
        )
        .fetch(&self.pool);
        let mut csv = SettlementCsv::new(0);
        while let Some(row) = rows.try_next().await.map_err(database_error)? {
            if csv.records() == records_max {
                return Err(ConnectorError::SettlementFileTooLarge { records_max });
            }
            let line = settlement_line(&row).map_err(database_error)?;
            csv.push(&line);
        }
        Ok(csv.finish())
    }
}

/// A settlement record's row as a line of the settlement file, borrowing the row's text.
fn settlement_line(row: &PgRow) -> Result<SettlementLine<'_>, sqlx::Error> {
    let kind: &str = row.try_get("type")?;
    let kind = SettlementKind::parse(kind).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "type".into(),
        source: "not a settlement record type".into(),
    })?;
    let processor_reference = match kind {
        // Reconciliation matches a capture to its charge, which knows the authorization's
        // reference; a refund to its refund, which knows its own.
        SettlementKind::Capture => row.try_get("authorization_reference")?,
        SettlementKind::Refund => row.try_get("processor_reference")?,
    };
    Ok(SettlementLine {
        record_id: row.try_get("id")?,
        kind,
        processor_reference,
        amount: stored_money(row, "currency", "amount_minor")?,
        settled_at: row.try_get("created_at")?,
    })
}

/// A settlement record from its row.
fn settlement_record(row: &PgRow) -> Result<SettlementRecord, sqlx::Error> {
    Ok(SettlementRecord {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        settlement_date: row.try_get("settlement_date")?,
        kind: row.try_get("type")?,
        processor_reference: row.try_get("processor_reference")?,
        authorization_reference: row.try_get("authorization_reference")?,
        amount: stored_money(row, "currency", "amount_minor")?,
        created_at: row.try_get("created_at")?,
    })
}

/// An amount stored as a currency code and minor units (both required).
fn stored_money(row: &PgRow, currency: &str, minor: &str) -> Result<Money, sqlx::Error> {
    let code: &str = row.try_get(currency)?;
    let currency = Currency::parse(code).map_err(|_| sqlx::Error::ColumnDecode {
        index: currency.to_owned(),
        source: "unknown currency".into(),
    })?;
    Ok(Money::new(currency, row.try_get(minor)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented numbers map to their behaviour; other numbers are plainly approved.
    #[test]
    fn test_cards() {
        let behaviour = |digits: &str| CardBehaviour::for_test_card(&Pan::parse(digits).unwrap());
        assert_eq!(behaviour("4242424242424242"), CardBehaviour::default());
        assert_eq!(
            behaviour("4000 0000 0000 9995").decline,
            Some(DeclineCode::InsufficientFunds)
        );
        assert_eq!(
            behaviour("4100000000000019").decline,
            Some(DeclineCode::Blocked)
        );
        assert_eq!(
            behaviour("4000009900000012").balance.map(|b| b.to_string()),
            Some("50.00 USD".to_owned())
        );
        assert_eq!(behaviour("4000009900000020").latency_ms, 1000);
        assert!(behaviour("4000009900000038").timeout_after_authorize);
        assert_eq!(behaviour("4000009900000046").fail_first_attempts, 2);
        for code in DeclineCode::ALL {
            assert!(processor_code(*code).len() <= 32);
        }
    }
}
