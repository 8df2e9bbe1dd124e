//! The ledger, read (`LedgerService`): balances, entries, spend reports and exports, in domain
//! terms. Every figure comes from `tandem-ledger`'s tables (its accounts, transfers and the
//! flows its transfer trigger keeps), never from the payments' own counters, so what treasury
//! reads is what the double-entry books hold.

use std::collections::{BTreeMap, HashMap};

use futures::Stream;
use sqlx::PgPool;
use tandem_ledger::export;
use tandem_ledger::ledger::{self as books, AccountOwner};
use tandem_ledger::reports::{self, SpendRow};
use tandem_ledger::types::{Account, StoredTransfer};
use time::Date;

use crate::commands::{BalanceQuery, EntryQuery, ExportQuery, SpendQuery};
use crate::config::LedgerSettings;
use crate::domain::booking;
use crate::domain::record::Note;
use crate::error::Error;
use crate::storage;

/// The columns of an export: the ledger's, then the card the entry moved money of and the
/// payment's operator notes (a JSON array of `{author, time, text}`).
pub const EXPORT_COLUMNS: [&str; 16] = [
    export::COLUMNS[0],
    export::COLUMNS[1],
    export::COLUMNS[2],
    export::COLUMNS[3],
    export::COLUMNS[4],
    export::COLUMNS[5],
    export::COLUMNS[6],
    export::COLUMNS[7],
    export::COLUMNS[8],
    export::COLUMNS[9],
    export::COLUMNS[10],
    export::COLUMNS[11],
    export::COLUMNS[12],
    export::COLUMNS[13],
    "card_token",
    "payment_notes",
];

/// The ledger reads.
pub struct LedgerReads {
    pool: PgPool,
    settings: LedgerSettings,
}

/// One chunk of an export: one message of the stream.
#[derive(Debug)]
pub struct ExportChunk {
    /// Whole lines of the format.
    pub data: Vec<u8>,
    /// Entries in it.
    pub entries: i64,
    /// The ledger position of its last entry.
    pub last_seq: i64,
}

/// Spend totals in one currency.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spend {
    /// Captured by the cards.
    pub captured: i64,
    /// Refunded to them.
    pub refunded: i64,
}

impl Spend {
    /// Captured less refunded.
    pub fn net(self) -> i64 {
        self.captured - self.refunded
    }

    fn add(&mut self, row: &SpendRow) {
        self.captured += row.captured;
        self.refunded += row.refunded;
    }
}

/// A spend report: by (card, currency), (cost center, currency), (month, currency) and
/// currency, each ordered by its key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpendReport {
    /// By card token and currency.
    pub by_card: BTreeMap<(String, String), Spend>,
    /// By cost center ("" for none) and currency.
    pub by_cost_center: BTreeMap<(String, String), Spend>,
    /// By month (its first day) and currency.
    pub by_month: BTreeMap<(Date, String), Spend>,
    /// By currency.
    pub totals: BTreeMap<String, Spend>,
}

impl SpendReport {
    /// The report of the ledger's spend rows (one per card, cost center, month and currency).
    pub fn of(rows: &[SpendRow]) -> SpendReport {
        let mut report = SpendReport::default();
        for row in rows {
            let currency = row.currency.clone();
            report
                .by_card
                .entry((row.card_token.clone(), currency.clone()))
                .or_default()
                .add(row);
            report
                .by_cost_center
                .entry((row.cost_center.clone(), currency.clone()))
                .or_default()
                .add(row);
            report
                .by_month
                .entry((row.month, currency.clone()))
                .or_default()
                .add(row);
            report.totals.entry(currency).or_default().add(row);
        }
        report
    }
}

impl LedgerReads {
    /// Reads of the ledger in `pool`, within `settings`' limits.
    pub fn new(pool: PgPool, settings: LedgerSettings) -> Self {
        Self { pool, settings }
    }

    /// The limits requests are checked by.
    pub fn settings(&self) -> &LedgerSettings {
        &self.settings
    }

    /// `GetBalances`.
    pub async fn balances(&self, query: &BalanceQuery) -> Result<Vec<Account>, Error> {
        Ok(match query {
            BalanceQuery::Card(token) => self.card_accounts(token, "card_token").await?,
            BalanceQuery::BillingAccount(account) => {
                books::accounts_of(&self.pool, &AccountOwner::BillingAccount(account.clone()))
                    .await?
            }
            BalanceQuery::CostCenter(cost_center) => {
                reports::cost_center_balances(&self.pool, cost_center).await?
            }
        })
    }

    /// The accounts of card `token`; a token the ledger has no account for is a violation of
    /// `field`.
    async fn card_accounts(&self, token: &str, field: &str) -> Result<Vec<Account>, Error> {
        let accounts =
            books::accounts_of(&self.pool, &AccountOwner::Card(token.to_owned())).await?;
        if accounts.is_empty() {
            return Err(Error::invalid(
                field,
                "is not a card the ledger holds an account for",
            ));
        }
        Ok(accounts)
    }

    /// `ListEntries`: a page, and whether more follow.
    pub async fn entries(&self, query: &EntryQuery) -> Result<(Vec<StoredTransfer>, bool), Error> {
        if let Some(token) = &query.filter.card_token {
            self.card_accounts(token, "card_token").await?;
        }
        let size = i64::from(query.size);
        let mut entries =
            books::transfers_after(&self.pool, &query.filter, query.after_seq, size + 1).await?;
        let more = entries.len() as i64 > size;
        entries.truncate(query.size as usize);
        Ok((entries, more))
    }

    /// `GetSpendReport`.
    pub async fn spend(&self, query: &SpendQuery) -> Result<SpendReport, Error> {
        let rows = reports::spend(&self.pool, &query.billing_account, query.from, query.to).await?;
        Ok(SpendReport::of(&rows))
    }

    /// `ExportLedger`: the chunks, each read and formatted while the client takes the last
    /// (one chunk ahead), until the range is exported or the client goes.
    pub async fn export(
        &self,
        query: ExportQuery,
    ) -> Result<impl Stream<Item = Result<ExportChunk, Error>> + use<>, Error> {
        if let Some(token) = &query.filter.card_token {
            self.card_accounts(token, "card_token").await?;
        }
        let pool = self.pool.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            let mut after = query.after_seq;
            let mut header = after == 0;
            loop {
                let (chunks, full) = match export_read(&pool, &query, after, header).await {
                    Ok(read) => read,
                    Err(error) => {
                        let _ = sender.send(Err(error)).await;
                        break;
                    }
                };
                header = false;
                for chunk in chunks {
                    after = chunk.last_seq;
                    if sender.send(Ok(chunk)).await.is_err() {
                        return;
                    }
                }
                if !full {
                    break;
                }
            }
        });
        Ok(tokio_stream::wrappers::ReceiverStream::new(receiver))
    }
}

/// Reads the next `query.chunk` entries of `query` after ledger position `after` and formats
/// them (the CSV header first when `header`) into chunks of at most `query.bytes_max` bytes,
/// each ending at a whole entry; and whether the read was full (more may follow). An empty
/// range still exports its header.
async fn export_read(
    pool: &PgPool,
    query: &ExportQuery,
    after: i64,
    header: bool,
) -> Result<(Vec<ExportChunk>, bool), Error> {
    let transfers =
        books::transfers_after(pool, &query.filter, after, i64::from(query.chunk)).await?;
    let mut payments: Vec<&str> = transfers
        .iter()
        .filter_map(|t| t.refs.payment_id.as_deref())
        .collect();
    payments.sort_unstable();
    payments.dedup();
    let notes = storage::payment_notes(pool, &payments).await?;
    let mut chunks = Vec::new();
    let mut current = ExportChunk {
        data: Vec::new(),
        entries: 0,
        last_seq: after,
    };
    if header {
        export::write_header(&mut current.data, query.format, &EXPORT_COLUMNS)
            .map_err(export_error)?;
    }
    let mut line = Vec::with_capacity(512);
    for transfer in &transfers {
        line.clear();
        let fields = export_fields(transfer, &notes)?;
        export::write_line(&mut line, query.format, &EXPORT_COLUMNS, &fields)
            .map_err(export_error)?;
        if current.entries > 0 && current.data.len() + line.len() > query.bytes_max {
            let next = ExportChunk {
                data: Vec::new(),
                entries: 0,
                last_seq: current.last_seq,
            };
            chunks.push(std::mem::replace(&mut current, next));
        }
        current.data.extend_from_slice(&line);
        current.entries += 1;
        current.last_seq = transfer.seq;
    }
    if current.entries > 0 || !current.data.is_empty() {
        chunks.push(current);
    }
    Ok((chunks, transfers.len() == query.chunk as usize))
}

/// An export row: the ledger's fields, the card's token and the payment's notes.
fn export_fields(
    transfer: &StoredTransfer,
    notes: &HashMap<String, Vec<Note>>,
) -> Result<Vec<Option<String>>, Error> {
    let mut fields: Vec<Option<String>> = export::fields(transfer).into();
    let card = booking::card_token_of(transfer.debit.as_str())
        .or_else(|| booking::card_token_of(transfer.credit.as_str()));
    fields.push(card.map(str::to_owned));
    let notes = transfer
        .refs
        .payment_id
        .as_ref()
        .and_then(|id| notes.get(id))
        .filter(|notes| !notes.is_empty())
        .map(|notes| notes_json(notes))
        .transpose()?;
    fields.push(notes);
    Ok(fields)
}

/// A payment's notes as the export's JSON array.
fn notes_json(notes: &[Note]) -> Result<String, Error> {
    let array: Vec<serde_json::Value> = notes
        .iter()
        .map(|note| {
            serde_json::json!({
                "author": note.author.to_string(),
                "time": note
                    .create_time
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
                "text": note.text,
            })
        })
        .collect();
    serde_json::to_string(&array).map_err(|e| Error::Corrupt(format!("notes: {e}")))
}

fn export_error(error: export::ExportError) -> Error {
    Error::Corrupt(format!("export: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(
        card: &str,
        cost_center: &str,
        month: u8,
        currency: &str,
        captured: i64,
        refunded: i64,
    ) -> SpendRow {
        SpendRow {
            card_token: card.into(),
            cost_center: cost_center.into(),
            month: Date::from_calendar_date(2026, time::Month::try_from(month).unwrap(), 1)
                .unwrap(),
            currency: currency.into(),
            captured,
            refunded,
        }
    }

    /// Every line of a report sums the ledger's rows of its key; nets are captured less
    /// refunded; currencies never mix.
    #[test]
    fn a_report_sums_rows_by_card_cost_center_month_and_currency() {
        let rows = [
            row("tok_a", "ops", 11, "USD", 1000, 0),
            row("tok_a", "ops", 12, "USD", 500, 200),
            row("tok_a", "", 12, "EUR", 300, 0),
            row("tok_b", "ops", 12, "USD", 700, 700),
        ];
        let report = SpendReport::of(&rows);
        let spend = |captured, refunded| Spend { captured, refunded };
        assert_eq!(
            report.by_card[&("tok_a".into(), "USD".into())],
            spend(1500, 200)
        );
        assert_eq!(
            report.by_card[&("tok_a".into(), "EUR".into())],
            spend(300, 0)
        );
        assert_eq!(report.by_card[&("tok_b".into(), "USD".into())].net(), 0);
        assert_eq!(
            report.by_cost_center[&("ops".into(), "USD".into())],
            spend(2200, 900)
        );
        assert_eq!(
            report.by_cost_center[&(String::new(), "EUR".into())],
            spend(300, 0)
        );
        assert_eq!(report.by_month.len(), 3);
        assert_eq!(report.totals["USD"], spend(2200, 900));
        assert_eq!(report.totals["USD"].net(), 1300);
        assert_eq!(report.totals["EUR"].net(), 300);
    }
}
