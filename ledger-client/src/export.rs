//! Export of transfers for ERP import: CSV (RFC 4180) or JSON lines, streamed page by page.
//!
//! Transfers are exported in ledger order (`seq`). `seq` is taken when a transfer is inserted,
//! not when it commits, so with several concurrent writers a transfer may commit behind a
//! page already read: export a closed period (`to` earlier than the start of the longest
//! running transaction) for a complete file.

use std::io::Write;

use sqlx::PgPool;
use time::format_description::well_known::Rfc3339;

use crate::ledger::{self, LedgerError, TransferFilter};
use crate::types::StoredTransfer;

/// Transfers read per query while exporting.
const EXPORT_PAGE_ROWS: i64 = 1000;

/// The columns, in order; the CSV header and the JSON keys.
pub const COLUMNS: [&str; 14] = [
    "seq",
    "id",
    "kind",
    "debit_account_id",
    "credit_account_id",
    "currency",
    "amount_minor_units",
    "pending_id",
    "timeout_at",
    "payment_id",
    "invoice_id",
    "leg_id",
    "cost_center",
    "created_at",
];

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Comma-separated, header first, RFC 4180 quoting.
    Csv,
    /// One JSON object per line.
    JsonLines,
}

/// Writes every transfer matching `filter` to `out`; returns how many.
pub async fn export(
    pool: &PgPool,
    filter: &TransferFilter,
    format: Format,
    out: &mut impl Write,
) -> Result<u64, ExportError> {
    write_header(out, format, &COLUMNS)?;
    let mut written = 0;
    let mut token: Option<String> = None;
    loop {
        let page = ledger::list_transfers(pool, filter, EXPORT_PAGE_ROWS, token.as_deref()).await?;
        for transfer in &page.transfers {
            write_line(out, format, &COLUMNS, &fields(transfer))?;
            written += 1;
        }
        match page.next_page_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    out.flush()?;
    Ok(written)
}

/// Errors while exporting.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Reading failed.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Writing failed.
    #[error("writing the export: {0}")]
    Io(#[from] std::io::Error),
    /// Encoding failed.
    #[error("encoding the export: {0}")]
    Json(#[from] serde_json::Error),
}

/// Writes one row of `format`: `fields` in the order of `columns` (which name the JSON keys).
/// `seq` and `amount_minor_units` are numbers in JSON; every other field is a string or null.
pub fn write_line(
    out: &mut impl Write,
    format: Format,
    columns: &[&str],
    fields: &[Option<String>],
) -> Result<(), ExportError> {
    match format {
        Format::Csv => {
            let line: Vec<String> = fields.iter().map(|f| csv_field(f.as_deref())).collect();
            writeln!(out, "{}", line.join(","))?;
        }
        Format::JsonLines => {
            let object: serde_json::Map<String, serde_json::Value> = columns
                .iter()
                .zip(fields)
                .map(|(key, value)| {
                    let value = match (key, value) {
                        (&"seq" | &"amount_minor_units", Some(v)) => v
                            .parse::<i64>()
                            .map_or(serde_json::Value::Null, serde_json::Value::from),
                        (_, Some(v)) => serde_json::Value::from(v.as_str()),
                        (_, None) => serde_json::Value::Null,
                    };
                    ((*key).to_owned(), value)
                })
                .collect();
            serde_json::to_writer(&mut *out, &object)?;
            writeln!(out)?;
        }
    }
    Ok(())
}

/// Writes the CSV header of `columns` (JSON lines have none).
pub fn write_header(
    out: &mut impl Write,
    format: Format,
    columns: &[&str],
) -> Result<(), ExportError> {
    if format == Format::Csv {
        writeln!(out, "{}", columns.join(","))?;
    }
    Ok(())
}

/// A transfer's fields in the order of [`COLUMNS`].
pub fn fields(t: &StoredTransfer) -> [Option<String>; 14] {
    let time = |t: time::OffsetDateTime| t.format(&Rfc3339).ok();
    [
        Some(t.seq.to_string()),
        Some(t.id.to_string()),
        Some(t.kind.as_str().to_owned()),
        Some(t.debit.to_string()),
        Some(t.credit.to_string()),
        Some(t.currency.as_str().to_owned()),
        Some(t.amount.to_string()),
        t.pending_id.as_ref().map(ToString::to_string),
        t.timeout_at.and_then(time),
        t.refs.payment_id.clone(),
        t.refs.invoice_id.clone(),
        t.refs.leg_id.clone(),
        t.refs.cost_center.clone(),
        time(t.created_at),
    ]
}

/// RFC 4180: quote a field holding a comma, quote, CR or LF, doubling inner quotes. A field
/// that a spreadsheet would run as a formula is prefixed with a quote character.
fn csv_field(value: Option<&str>) -> String {
    let Some(value) = value else {
        return String::new();
    };
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// CSV quoting follows RFC 4180 and defuses formulas.
    #[test]
    fn csv_quoting() {
        assert_eq!(csv_field(None), "");
        assert_eq!(csv_field(Some("plain")), "plain");
        assert_eq!(csv_field(Some("a,b")), "\"a,b\"");
        assert_eq!(csv_field(Some("say \"hi\"")), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field(Some("=SUM(A1)")), "'=SUM(A1)");
    }
}
