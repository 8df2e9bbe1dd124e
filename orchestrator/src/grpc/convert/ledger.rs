//! The ledger's reads between wire and domain: the checks of `LedgerService`'s requests
//! (selectors, time ranges, days, formats, page sizes and page tokens bound to their filters)
//! and balances, entries, spend reports and export chunks on the wire.

use prost::Message as _;
use tandem_ledger::export::Format;
use tandem_ledger::ledger::TransferFilter;
use tandem_ledger::types::{Account, AccountCode, StoredKind, StoredTransfer};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;
use tandem_runtime::fields::Violations;
use time::{Date, OffsetDateTime};

use crate::commands::{BalanceQuery, EntryQuery, ExportQuery, SpendQuery};
use crate::config::LedgerSettings;
use crate::error::Error;
use crate::ledger_reads::{ExportChunk, Spend, SpendReport};

use super::payments::strict_page_size;
use super::{PAGES, is_id_text, read_time, wire_time};

/// Longest cost center, as invoices and members name them.
const COST_CENTER_CHARS_MAX: usize = 64;

/// Checks a billing account, card token or cost center filter (empty: no filter).
fn name_filter(v: &mut Violations, field: &str, text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    let ok = match field {
        "cost_center" => {
            text.chars().count() <= COST_CENTER_CHARS_MAX && !text.chars().any(char::is_control)
        }
        "card_token" => tandem_runtime::ids::is_random_id("tok_", text),
        _ => is_id_text(text, 64),
    };
    if !ok {
        let need = match field {
            "cost_center" => "1-64 characters without control characters",
            "card_token" => "\"tok_\" followed by 26 lower-case base32 characters",
            _ => "1-64 characters of A-Z a-z 0-9 . _ : / -",
        };
        v.add(field, format!("must be {need}"));
    }
    Some(text.to_owned())
}

/// The checks of `GetBalances`: exactly one selector.
pub fn get_balances(request: &pb::GetBalancesRequest) -> Result<BalanceQuery, Error> {
    let mut v = Violations::default();
    let card = name_filter(&mut v, "card_token", &request.card_token);
    let billing = name_filter(&mut v, "billing_account_id", &request.billing_account_id);
    let cost_center = name_filter(&mut v, "cost_center", &request.cost_center);
    let query = match (card, billing, cost_center) {
        (Some(token), None, None) => Some(BalanceQuery::Card(token)),
        (None, Some(account), None) => Some(BalanceQuery::BillingAccount(account)),
        (None, None, Some(cost_center)) => Some(BalanceQuery::CostCenter(cost_center)),
        _ => {
            v.add(
                "card_token",
                "exactly one of card_token, billing_account_id and cost_center must be set",
            );
            None
        }
    };
    let query = v.finish::<_, Error>(query)?;
    query.ok_or_else(|| Error::invalid("card_token", "is required"))
}

fn account_code(code: AccountCode) -> pb::LedgerAccountCode {
    match code {
        AccountCode::FundingSource => pb::LedgerAccountCode::FundingSource,
        AccountCode::Receivable => pb::LedgerAccountCode::Receivable,
        AccountCode::ProcessorClearing => pb::LedgerAccountCode::ProcessorClearing,
        AccountCode::Refunds => pb::LedgerAccountCode::Refunds,
        AccountCode::FxClearing => pb::LedgerAccountCode::FxClearing,
        AccountCode::FxRounding => pb::LedgerAccountCode::FxRounding,
    }
}

pub(super) fn money(currency: &str, minor_units: i64) -> types::Money {
    types::Money {
        currency_code: currency.to_owned(),
        minor_units,
    }
}

/// The answer to `GetBalances`.
pub fn balances(accounts: &[Account]) -> pb::GetBalancesResponse {
    pb::GetBalancesResponse {
        balances: accounts
            .iter()
            .map(|a| {
                let currency = a.currency.as_str();
                pb::LedgerBalance {
                    account_id: a.id.to_string(),
                    code: account_code(a.code) as i32,
                    card_token: a.refs.card_token.clone().unwrap_or_default(),
                    billing_account_id: a.refs.billing_account.clone().unwrap_or_default(),
                    debits_posted: Some(money(currency, a.balances.debits_posted)),
                    credits_posted: Some(money(currency, a.balances.credits_posted)),
                    debits_pending: Some(money(currency, a.balances.debits_pending)),
                    credits_pending: Some(money(currency, a.balances.credits_pending)),
                }
            })
            .collect(),
    }
}

/// A time range `[start, end)`: both required when `required`, else both or neither; end
/// after start, at most `days_max` days long.
pub(super) fn time_range(
    v: &mut Violations,
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
    required: bool,
    days_max: i64,
) -> (Option<OffsetDateTime>, Option<OffsetDateTime>) {
    let (start, end) = (
        read_time(v, "start_time", start, required),
        read_time(v, "end_time", end, required),
    );
    match (start, end) {
        (Some(start), Some(end)) => {
            if end <= start {
                v.add("end_time", "must be after start_time");
            } else if end - start > time::Duration::days(days_max) {
                v.add(
                    "end_time",
                    format!("must be at most {days_max} days after start_time"),
                );
            }
        }
        // A required bound that is missing was named above.
        (Some(_), None) if !required => v.add("end_time", "is required with start_time"),
        (None, Some(_)) if !required => v.add("start_time", "is required with end_time"),
        _ => {}
    }
    (start, end)
}

/// The filter shared by `ListEntries` and `ExportLedger`, and its scope for page tokens.
fn transfer_filter(
    v: &mut Violations,
    card_token: &str,
    billing_account_id: &str,
    cost_center: &str,
    range: (Option<OffsetDateTime>, Option<OffsetDateTime>),
) -> TransferFilter {
    TransferFilter {
        card_token: name_filter(v, "card_token", card_token),
        billing_account: name_filter(v, "billing_account_id", billing_account_id),
        cost_center: name_filter(v, "cost_center", cost_center),
        from: range.0,
        to: range.1,
        ..TransferFilter::default()
    }
}

/// A page token's position (a ledger `seq`) if it was made for `scope`; a violation of
/// `field` otherwise.
pub(super) fn position(v: &mut Violations, field: &str, token: &str, scope: &str) -> i64 {
    if token.is_empty() {
        return 0;
    }
    let seq = tandem_runtime::pages::decode(PAGES, scope.as_bytes(), token)
        .and_then(|bytes| Some(i64::from_be_bytes(bytes.as_slice().try_into().ok()?)))
        .filter(|seq| *seq >= 0);
    match seq {
        Some(seq) => seq,
        None => {
            v.add(field, "is not a token of this call with these filters");
            0
        }
    }
}

pub(super) fn token(seq: i64, scope: &str) -> String {
    tandem_runtime::pages::encode(PAGES, scope.as_bytes(), &seq.to_be_bytes())
}

/// The checks of `ListEntries`, and the scope its page tokens belong to.
pub fn list_entries(
    request: &pb::ListEntriesRequest,
    settings: &LedgerSettings,
) -> Result<(EntryQuery, String), Error> {
    let mut v = Violations::default();
    let size = strict_page_size(&mut v, request.page_size, 100, settings.page_size_max);
    let by_payment = !request.payment_id.is_empty() || !request.invoice_id.is_empty();
    let range = time_range(
        &mut v,
        request.start_time.as_ref(),
        request.end_time.as_ref(),
        !by_payment,
        settings.range_days_max,
    );
    let mut filter = transfer_filter(
        &mut v,
        &request.card_token,
        &request.billing_account_id,
        &request.cost_center,
        range,
    );
    if !request.payment_id.is_empty() {
        filter.payment_id = Some(super::resource_id(
            &mut v,
            "payment_id",
            "pay_",
            &request.payment_id,
        ));
    }
    if !request.invoice_id.is_empty() {
        if !is_id_text(&request.invoice_id, 64) {
            v.add(
                "invoice_id",
                "must be 1-64 characters of A-Z a-z 0-9 . _ : / -",
            );
        }
        filter.invoice_id = Some(request.invoice_id.clone());
    }
    let scope = format!("ListEntries|{filter:?}");
    let after_seq = position(&mut v, "page_token", &request.page_token, &scope);
    v.finish((
        EntryQuery {
            filter,
            size,
            after_seq,
        },
        scope,
    ))
}

fn entry_kind(kind: StoredKind) -> pb::LedgerEntryKind {
    match kind {
        StoredKind::Single => pb::LedgerEntryKind::Single,
        StoredKind::Pending => pb::LedgerEntryKind::Pending,
        StoredKind::PostPending => pb::LedgerEntryKind::PostPending,
        StoredKind::VoidPending => pb::LedgerEntryKind::VoidPending,
    }
}

/// A ledger entry on the wire.
pub fn entry(t: &StoredTransfer) -> pb::LedgerEntry {
    pb::LedgerEntry {
        sequence: t.seq,
        id: t.id.to_string(),
        kind: entry_kind(t.kind) as i32,
        debit_account_id: t.debit.to_string(),
        credit_account_id: t.credit.to_string(),
        amount: Some(money(t.currency.as_str(), t.amount)),
        pending_id: t
            .pending_id
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        payment_id: t.refs.payment_id.clone().unwrap_or_default(),
        invoice_id: t.refs.invoice_id.clone().unwrap_or_default(),
        leg_id: t.refs.leg_id.clone().unwrap_or_default(),
        cost_center: t.refs.cost_center.clone().unwrap_or_default(),
        create_time: Some(wire_time(t.created_at)),
    }
}

/// A page of `ListEntries` of at most `bytes_max` encoded entries (at least one): a page cut
/// short by size goes on where it was cut.
pub fn entries_page(
    entries: &[StoredTransfer],
    more: bool,
    scope: &str,
    bytes_max: usize,
) -> pb::ListEntriesResponse {
    let mut wire = Vec::with_capacity(entries.len());
    let (mut bytes, mut last_seq, mut cut) = (0, None, false);
    for transfer in entries {
        let entry = entry(transfer);
        bytes += entry.encoded_len() + 8;
        if bytes > bytes_max && !wire.is_empty() {
            cut = true;
            break;
        }
        wire.push(entry);
        last_seq = Some(transfer.seq);
    }
    pb::ListEntriesResponse {
        entries: wire,
        next_page_token: match (more || cut, last_seq) {
            (true, Some(seq)) => token(seq, scope),
            _ => String::new(),
        },
    }
}

/// A day, `YYYY-MM-DD`.
pub(super) fn day(v: &mut Violations, field: &str, text: &str) -> Option<Date> {
    let parsed = (|| {
        let mut parts = text.splitn(3, '-');
        let (year, month, day) = (parts.next()?, parts.next()?, parts.next()?);
        if year.len() != 4 || month.len() != 2 || day.len() != 2 {
            return None;
        }
        let month = time::Month::try_from(month.parse::<u8>().ok()?).ok()?;
        Date::from_calendar_date(year.parse().ok()?, month, day.parse().ok()?).ok()
    })();
    if parsed.is_none() {
        let need = if text.is_empty() {
            "is required"
        } else {
            "must be a day, YYYY-MM-DD"
        };
        v.add(field, need);
    }
    parsed
}

/// The checks of `GetSpendReport`.
pub fn get_spend_report(
    request: &pb::GetSpendReportRequest,
    settings: &LedgerSettings,
) -> Result<SpendQuery, Error> {
    let mut v = Violations::default();
    if !is_id_text(&request.billing_account_id, 64) {
        v.add(
            "billing_account_id",
            "must be 1-64 characters of A-Z a-z 0-9 . _ : / -",
        );
    }
    let from = day(&mut v, "start_date", &request.start_date);
    let to = day(&mut v, "end_date", &request.end_date);
    if let (Some(from), Some(to)) = (from, to) {
        if to <= from {
            v.add("end_date", "must be after start_date");
        } else if (to - from).whole_days() > settings.range_days_max {
            v.add(
                "end_date",
                format!(
                    "must be at most {} days after start_date",
                    settings.range_days_max
                ),
            );
        }
    }
    let query = from.zip(to).map(|(from, to)| SpendQuery {
        billing_account: request.billing_account_id.clone(),
        from,
        to,
    });
    v.finish::<_, Error>(query)?
        .ok_or_else(|| Error::invalid("start_date", "is required"))
}

fn spend_line(currency: &str, spend: Spend) -> pb::SpendLine {
    pb::SpendLine {
        currency_code: currency.to_owned(),
        captured: Some(money(currency, spend.captured)),
        refunded: Some(money(currency, spend.refunded)),
        net: Some(money(currency, spend.net())),
        ..pb::SpendLine::default()
    }
}

/// The answer to `GetSpendReport`.
pub fn spend_report(report: &SpendReport) -> pb::GetSpendReportResponse {
    pb::GetSpendReportResponse {
        by_card: report
            .by_card
            .iter()
            .map(|((token, currency), spend)| pb::SpendLine {
                card_token: token.clone(),
                ..spend_line(currency, *spend)
            })
            .collect(),
        by_cost_center: report
            .by_cost_center
            .iter()
            .map(|((cost_center, currency), spend)| pb::SpendLine {
                cost_center: cost_center.clone(),
                ..spend_line(currency, *spend)
            })
            .collect(),
        by_month: report
            .by_month
            .iter()
            .map(|((month, currency), spend)| pb::SpendLine {
                month: format!("{:04}-{:02}", month.year(), u8::from(month.month())),
                ..spend_line(currency, *spend)
            })
            .collect(),
        totals: report
            .totals
            .iter()
            .map(|(currency, spend)| spend_line(currency, *spend))
            .collect(),
    }
}

/// The checks of `ExportLedger` at `now`, and the scope its cursors belong to.
pub fn export_ledger(
    request: &pb::ExportLedgerRequest,
    settings: &LedgerSettings,
    now: OffsetDateTime,
    bytes_max: usize,
) -> Result<(ExportQuery, String), Error> {
    let mut v = Violations::default();
    let format = match pb::ExportFormat::try_from(request.format) {
        Ok(pb::ExportFormat::Csv) => Some(Format::Csv),
        Ok(pb::ExportFormat::JsonLines) => Some(Format::JsonLines),
        _ => {
            v.add(
                "format",
                "must be EXPORT_FORMAT_CSV or EXPORT_FORMAT_JSON_LINES",
            );
            None
        }
    };
    let range = time_range(
        &mut v,
        request.start_time.as_ref(),
        request.end_time.as_ref(),
        true,
        settings.range_days_max,
    );
    let settle = time::Duration::milliseconds(settings.export_settle_ms as i64);
    if let Some(end) = range.1
        && end > now - settle
    {
        v.add(
            "end_time",
            format!(
                "must have passed at least {} ms ago: a range still being written cannot be \
                 exported",
                settings.export_settle_ms
            ),
        );
    }
    let chunk = match request.chunk_entries {
        0 => 1000.min(settings.export_chunk_max),
        n if (1..=settings.export_chunk_max).contains(&n) => n,
        _ => {
            v.add(
                "chunk_entries",
                format!("must be 0 or 1-{}", settings.export_chunk_max),
            );
            1
        }
    };
    let filter = transfer_filter(
        &mut v,
        &request.card_token,
        &request.billing_account_id,
        &request.cost_center,
        range,
    );
    let scope = format!("ExportLedger|{}|{filter:?}", request.format);
    let after_seq = position(&mut v, "cursor", &request.cursor, &scope);
    let query = format.map(|format| ExportQuery {
        filter,
        format,
        chunk,
        after_seq,
        bytes_max,
    });
    let query = v.finish::<_, Error>(query)?;
    let query = query.ok_or_else(|| Error::invalid("format", "is required"))?;
    Ok((query, scope))
}

/// A chunk of an export on the wire, with its cursor.
pub fn export_chunk(chunk: ExportChunk, scope: &str) -> pb::ExportLedgerResponse {
    pb::ExportLedgerResponse {
        data: chunk.data,
        entries: chunk.entries,
        cursor: token(chunk.last_seq, scope),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LedgerSettings {
        LedgerSettings::default()
    }

    fn fields(error: Error) -> Vec<String> {
        match error {
            Error::InvalidArgument(v) => v.into_iter().map(|f| f.field).collect(),
            other => panic!("not invalid: {other:?}"),
        }
    }

    fn at(seconds: i64) -> prost_types::Timestamp {
        prost_types::Timestamp { seconds, nanos: 0 }
    }

    /// Bad ranges, sizes, formats, selectors and tokens name their field.
    #[test]
    fn bad_ledger_requests_name_their_field() {
        let entries = |r: pb::ListEntriesRequest| list_entries(&r, &settings()).map(|_| ());
        let unbounded = pb::ListEntriesRequest::default();
        assert_eq!(
            fields(entries(unbounded).unwrap_err()),
            ["start_time", "end_time"]
        );
        let inverted = pb::ListEntriesRequest {
            start_time: Some(at(2_000)),
            end_time: Some(at(1_000)),
            ..Default::default()
        };
        assert_eq!(fields(entries(inverted).unwrap_err()), ["end_time"]);
        let too_long = pb::ListEntriesRequest {
            start_time: Some(at(0)),
            end_time: Some(at(367 * 86_400)),
            ..Default::default()
        };
        assert_eq!(fields(entries(too_long).unwrap_err()), ["end_time"]);
        let ancient = pb::ListEntriesRequest {
            start_time: Some(at(-250_000_000_000)),
            end_time: Some(at(-249_999_000_000)),
            ..Default::default()
        };
        assert_eq!(
            fields(entries(ancient).unwrap_err()),
            ["start_time", "end_time"]
        );
        let big_page = pb::ListEntriesRequest {
            payment_id: "pay_aaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
            page_size: 1001,
            ..Default::default()
        };
        assert_eq!(fields(entries(big_page).unwrap_err()), ["page_size"]);

        // A token is bound to its filters.
        let first = pb::ListEntriesRequest {
            payment_id: "pay_aaaaaaaaaaaaaaaaaaaaaaaaaa".into(),
            ..Default::default()
        };
        let (_, scope) = list_entries(&first, &settings()).unwrap();
        let next = token(42, &scope);
        let same = pb::ListEntriesRequest {
            page_token: next.clone(),
            ..first.clone()
        };
        assert_eq!(list_entries(&same, &settings()).unwrap().0.after_seq, 42);
        let other = pb::ListEntriesRequest {
            payment_id: "pay_bbbbbbbbbbbbbbbbbbbbbbbbba".into(),
            page_token: next,
            ..Default::default()
        };
        assert_eq!(fields(entries(other).unwrap_err()), ["page_token"]);

        let none = pb::GetBalancesRequest::default();
        assert_eq!(fields(get_balances(&none).unwrap_err()), ["card_token"]);
        let two = pb::GetBalancesRequest {
            billing_account_id: "acme".into(),
            cost_center: "ops".into(),
            ..Default::default()
        };
        assert_eq!(fields(get_balances(&two).unwrap_err()), ["card_token"]);
        let token = pb::GetBalancesRequest {
            card_token: "4111111111111111".into(),
            ..Default::default()
        };
        assert_eq!(fields(get_balances(&token).unwrap_err()), ["card_token"]);

        let spend = |start: &str, end: &str| {
            get_spend_report(
                &pb::GetSpendReportRequest {
                    billing_account_id: "acme".into(),
                    start_date: start.into(),
                    end_date: end.into(),
                },
                &settings(),
            )
        };
        assert!(spend("2026-11-01", "2026-12-01").is_ok());
        assert_eq!(
            fields(spend("2026-12-01", "2026-11-01").unwrap_err()),
            ["end_date"]
        );
        assert_eq!(fields(spend("", "2026-11-01").unwrap_err()), ["start_date"]);
        assert_eq!(
            fields(spend("2026-13-01", "2027-01-01").unwrap_err()),
            ["start_date"]
        );

        let now = OffsetDateTime::from_unix_timestamp(10_000_000).unwrap();
        let export = |format: pb::ExportFormat, end: i64| {
            export_ledger(
                &pb::ExportLedgerRequest {
                    format: format as i32,
                    start_time: Some(at(1_000)),
                    end_time: Some(at(end)),
                    ..Default::default()
                },
                &settings(),
                now,
                60_000,
            )
        };
        assert!(export(pb::ExportFormat::Csv, 9_000_000).is_ok());
        assert_eq!(
            fields(export(pb::ExportFormat::Unspecified, 9_000_000).unwrap_err()),
            ["format"]
        );
        assert_eq!(
            fields(export(pb::ExportFormat::JsonLines, 9_999_999).unwrap_err()),
            ["end_time"],
            "a range still being written"
        );
    }
}
