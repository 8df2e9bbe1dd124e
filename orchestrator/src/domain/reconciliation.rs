//! Reconciliation, pure: a processor's settlement file read strictly, its records classified
//! against the ledger's captures and refunds, and the ledger transfers that correct a
//! discrepancy (DESIGN section 11).
//!
//! Both sides are matched by processor reference and type: a capture record by its
//! authorization's reference, which the leg's capture transfer carries; a refund record by the
//! refund's, which the refund transfer carries. One reference and type has at most one ledger
//! entry (a leg captures once; each refund has its own reference), so matching is exact:
//! the amount in minor units and the currency must both agree.
//!
//! Corrections are signed from the card's side: money the processor took from a card counts
//! positive, money it gave back negative. A positive correction moves money from the card's
//! funding source to the billing account's receivable (as a capture does), a negative one back
//! (as a refund does). A record the ledger knows nothing of has no card: its correction moves
//! money between the processor's suspense and clearing accounts instead.

use std::collections::HashMap;

use time::{Date, OffsetDateTime};

use tandem_ledger::types::{
    AccountCode, AccountId, AccountRefs, BalanceLimit, Currency as LedgerCurrency, IdError,
    NewAccount, Transfer, TransferId, TransferKind, TransferRefs,
};

use super::booking;

/// The columns of a settlement file, in order, as its header names them.
pub const FILE_COLUMNS: [&str; 7] = [
    "record_id",
    "type",
    "processor_reference",
    "amount_minor",
    "currency",
    "fee_minor",
    "settled_at",
];

/// The event types of reconciliation's steps in the feed, in `ReconciliationEventType` order.
pub const EVENT_TYPES: [&str; 4] = [
    "reconciliation.run_completed",
    "reconciliation.adjustment_proposed",
    "reconciliation.adjustment_approved",
    "reconciliation.adjustment_rejected",
];

/// Most records one settlement file may hold: bounds a run's memory.
pub const FILE_RECORDS_MAX: usize = 2_000_000;

/// An amount in minor units, signed from the card's side, and its ISO 4217 currency.
pub type SignedAmount = (i64, String);

/// Capture or refund.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SettlementType {
    /// Money taken from a card.
    Capture,
    /// Money given back to a card.
    Refund,
}

impl SettlementType {
    /// The name in files and storage.
    pub const fn as_str(self) -> &'static str {
        match self {
            SettlementType::Capture => "capture",
            SettlementType::Refund => "refund",
        }
    }

    /// Parses [`SettlementType::as_str`].
    pub fn parse(text: &str) -> Option<SettlementType> {
        match text {
            "capture" => Some(SettlementType::Capture),
            "refund" => Some(SettlementType::Refund),
            _ => None,
        }
    }

    /// +1 for a capture, -1 for a refund: the sign of its money from the card's side.
    const fn sign(self) -> i64 {
        match self {
            SettlementType::Capture => 1,
            SettlementType::Refund => -1,
        }
    }
}

/// One line of a settlement file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementRecord {
    /// The processor's record id.
    pub record_id: String,
    /// The settlement day of the file it was read from.
    pub day: Date,
    /// Its position in that file, from 1.
    pub line: i64,
    /// Capture or refund.
    pub kind: SettlementType,
    /// What it is matched by.
    pub reference: String,
    /// Minor units, positive.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The processor's fee, minor units.
    pub fee: i64,
    /// When the processor says it settled.
    pub settled_at: OffsetDateTime,
}

/// A ledger capture or refund, as reconciliation sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerEntry {
    /// The transfer id.
    pub transfer_id: String,
    /// Capture (a posted hold) or refund.
    pub kind: SettlementType,
    /// The processor reference it carries.
    pub reference: String,
    /// Minor units.
    pub amount: i64,
    /// ISO 4217 code.
    pub currency: String,
    /// The card's funding-source account.
    pub funding_account: String,
    /// The billing account's receivable.
    pub receivable_account: String,
    /// The payment and leg.
    pub payment_id: Option<String>,
    /// `<payment>/leg/<n>`.
    pub leg_id: Option<String>,
    /// When it was booked.
    pub created_at: OffsetDateTime,
}

/// What a record or entry was found to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// Both sides agree.
    Matched,
    /// A record without a ledger entry.
    MissingInLedger,
    /// A ledger entry no file reported, past its grace period.
    MissingAtProcessor,
    /// Another amount.
    AmountMismatch,
    /// Another currency.
    CurrencyMismatch,
    /// A reference and type settled twice.
    DuplicateSettlement,
    /// A ledger entry not yet reported, within its grace period.
    Pending,
}

impl Class {
    /// Every class, in the wire's order.
    pub const ALL: [Class; 7] = [
        Class::Matched,
        Class::MissingInLedger,
        Class::MissingAtProcessor,
        Class::AmountMismatch,
        Class::CurrencyMismatch,
        Class::DuplicateSettlement,
        Class::Pending,
    ];

    /// The name in storage.
    pub const fn as_str(self) -> &'static str {
        match self {
            Class::Matched => "matched",
            Class::MissingInLedger => "missing_in_ledger",
            Class::MissingAtProcessor => "missing_at_processor",
            Class::AmountMismatch => "amount_mismatch",
            Class::CurrencyMismatch => "currency_mismatch",
            Class::DuplicateSettlement => "duplicate_settlement",
            Class::Pending => "pending",
        }
    }

    /// Parses [`Class::as_str`].
    pub fn parse(text: &str) -> Option<Class> {
        Class::ALL.into_iter().find(|c| c.as_str() == text)
    }
}

/// One discrepancy a run found: a record or ledger entry that is not [`Class::Matched`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What it is.
    pub class: Class,
    /// Capture or refund.
    pub kind: SettlementType,
    /// The reference both sides are matched by.
    pub reference: String,
    /// The record, unless the processor reported nothing.
    pub record: Option<SettlementRecord>,
    /// The ledger entry, unless the ledger has none.
    pub entry: Option<LedgerEntry>,
    /// The correction, signed from the card's side, and its currency; `None` for
    /// [`Class::Pending`].
    pub correction: Option<SignedAmount>,
}

impl Finding {
    /// The key it is kept under across runs: its record, or its ledger entry when the
    /// processor reported nothing.
    pub fn subject(&self) -> String {
        match (&self.record, &self.entry) {
            (Some(record), _) => format!("record:{}", record.record_id),
            (None, Some(entry)) => format!("entry:{}", entry.transfer_id),
            (None, None) => String::new(),
        }
    }
}

/// What a run found: how many of each class, and the discrepancies.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Classification {
    /// Records and entries per class.
    pub counts: HashMap<Class, i64>,
    /// Everything not matched, records first in file order, then ledger entries in ledger
    /// order.
    pub findings: Vec<Finding>,
}

/// Classifies a day.
///
/// - `day_records`: the day's file, in file order.
/// - `known_records`: every record read so far (any day) that shares a reference with the
///   day's records or entries, the day's own included; decides which of two records of one
///   reference and type came first, and whether an entry was reported on another day.
/// - `entries`: the ledger's captures and refunds that share a reference with the day's
///   records or entries.
/// - `day_entries`: the ledger's captures and refunds booked on the day.
/// - An entry not reported is [`Class::Pending`] until `grace` after it was booked, then
///   [`Class::MissingAtProcessor`].
pub fn classify(
    day_records: &[SettlementRecord],
    known_records: &[SettlementRecord],
    entries: &[LedgerEntry],
    day_entries: &[LedgerEntry],
    now: OffsetDateTime,
    grace: time::Duration,
) -> Classification {
    let mut first: HashMap<(SettlementType, &str), &SettlementRecord> = HashMap::new();
    for record in known_records {
        let key = (record.kind, record.reference.as_str());
        let earlier = first.get(&key).is_some_and(|seen| {
            (seen.day, seen.line, &seen.record_id) <= (record.day, record.line, &record.record_id)
        });
        if !earlier {
            first.insert(key, record);
        }
    }
    let by_reference: HashMap<(SettlementType, &str), &LedgerEntry> = entries
        .iter()
        .map(|e| ((e.kind, e.reference.as_str()), e))
        .collect();
    let mut result = Classification::default();
    for record in day_records {
        let key = (record.kind, record.reference.as_str());
        let entry = by_reference.get(&key).copied();
        let duplicate = first
            .get(&key)
            .is_some_and(|seen| seen.record_id != record.record_id);
        let sign = record.kind.sign();
        let (class, correction) = match entry {
            _ if duplicate => (Class::DuplicateSettlement, sign * record.amount),
            None => (Class::MissingInLedger, sign * record.amount),
            Some(e) if e.currency != record.currency => {
                (Class::CurrencyMismatch, sign * record.amount)
            }
            Some(e) if e.amount != record.amount => {
                (Class::AmountMismatch, sign * (record.amount - e.amount))
            }
            Some(_) => (Class::Matched, 0),
        };
        *result.counts.entry(class).or_default() += 1;
        if class != Class::Matched {
            result.findings.push(Finding {
                class,
                kind: record.kind,
                reference: record.reference.clone(),
                record: Some(record.clone()),
                entry: entry.cloned(),
                correction: Some((correction, record.currency.clone())),
            });
        }
    }
    for entry in day_entries {
        if first.contains_key(&(entry.kind, entry.reference.as_str())) {
            continue;
        }
        let (class, correction) = if now < entry.created_at + grace {
            (Class::Pending, None)
        } else {
            (
                Class::MissingAtProcessor,
                Some((-entry.kind.sign() * entry.amount, entry.currency.clone())),
            )
        };
        *result.counts.entry(class).or_default() += 1;
        result.findings.push(Finding {
            class,
            kind: entry.kind,
            reference: entry.reference.clone(),
            record: None,
            entry: Some(entry.clone()),
            correction,
        });
    }
    result
}

/// Why a settlement file cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// The first line is not [`FILE_COLUMNS`].
    #[error("the settlement file's header is not {}", FILE_COLUMNS.join(","))]
    Header,
    /// A line does not hold a valid record.
    #[error("settlement file line {line}: {what}")]
    Line {
        /// 1 for the header.
        line: usize,
        /// What is wrong.
        what: String,
    },
    /// A record id appears twice.
    #[error("settlement file line {line}: record id {record_id} appears twice")]
    RepeatedRecord {
        /// The second line.
        line: usize,
        /// The id.
        record_id: String,
    },
    /// More than [`FILE_RECORDS_MAX`] records.
    #[error("the settlement file holds more than {FILE_RECORDS_MAX} records")]
    TooLarge,
}

/// Reads a settlement file of day `day`: the header, then one record per line (CRLF or LF),
/// fields without quotes (no field of the format needs them).
pub fn parse_file(bytes: &[u8], day: Date) -> Result<Vec<SettlementRecord>, FileError> {
    let text = std::str::from_utf8(bytes).map_err(|_| FileError::Line {
        line: 0,
        what: "not UTF-8".into(),
    })?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let header = lines.next().ok_or(FileError::Header)?;
    if !header.split(',').eq(FILE_COLUMNS) {
        return Err(FileError::Header);
    }
    let mut records = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for (index, line) in lines.enumerate() {
        let number = index + 2;
        if line.is_empty() {
            continue;
        }
        if records.len() == FILE_RECORDS_MAX {
            return Err(FileError::TooLarge);
        }
        let bad = |what: &str| FileError::Line {
            line: number,
            what: what.to_owned(),
        };
        let fields = split_line(line).ok_or_else(|| bad("a quoted field is not closed"))?;
        let [id, kind, reference, amount, currency, fee, settled_at] =
            fields.iter().map(|f| f.as_ref()).collect::<Vec<&str>>()[..]
        else {
            return Err(bad("expected 7 fields"));
        };
        let short =
            |field: &str| (1..=128).contains(&field.len()) && !field.chars().any(char::is_control);
        if !short(id) || !short(reference) {
            return Err(bad(
                "record_id and processor_reference must be 1-128 characters",
            ));
        }
        let amount: i64 = amount
            .parse()
            .ok()
            .filter(|a| *a > 0)
            .ok_or_else(|| bad("amount_minor must be a positive integer"))?;
        let fee: i64 = fee
            .parse()
            .ok()
            .filter(|f| *f >= 0)
            .ok_or_else(|| bad("fee_minor must be a non-negative integer"))?;
        if tandem_money::Currency::parse(currency).is_err() {
            return Err(bad("currency must be an ISO 4217 code"));
        }
        let settled_at =
            OffsetDateTime::parse(settled_at, &time::format_description::well_known::Rfc3339)
                .map_err(|_| bad("settled_at must be an RFC 3339 time"))?;
        if !ids.insert(id.to_owned()) {
            return Err(FileError::RepeatedRecord {
                line: number,
                record_id: id.to_owned(),
            });
        }
        records.push(SettlementRecord {
            record_id: id.to_owned(),
            day,
            line: i64::try_from(records.len() + 1).unwrap_or(i64::MAX),
            kind: SettlementType::parse(kind)
                .ok_or_else(|| bad("type must be capture or refund"))?,
            reference: reference.to_owned(),
            amount,
            currency: currency.to_owned(),
            fee,
            settled_at,
        });
    }
    Ok(records)
}

/// The fields of one CSV line as RFC 4180 has them: a field may be quoted (a comma inside, a
/// doubled quote for a quote); `None` for a quoted field left open. A line break inside a quoted
/// field is not supported: lines are split first.
fn split_line(line: &str) -> Option<Vec<std::borrow::Cow<'_, str>>> {
    use std::borrow::Cow;
    let mut fields = Vec::new();
    let mut rest = line;
    loop {
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut field = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                if c != '"' {
                    field.push(c);
                } else if quoted[i + 1..].starts_with('"') {
                    field.push('"');
                    chars.next();
                } else {
                    break i + 1;
                }
            };
            fields.push(Cow::Owned(field));
            rest = &quoted[end..];
            match rest.strip_prefix(',') {
                Some(next) => rest = next,
                None if rest.is_empty() => return Some(fields),
                None => return None,
            }
        } else {
            match rest.split_once(',') {
                Some((field, next)) => {
                    fields.push(Cow::Borrowed(field));
                    rest = next;
                }
                None => {
                    fields.push(Cow::Borrowed(rest));
                    return Some(fields);
                }
            }
        }
    }
}

/// A discrepancy as an adjustment corrects it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction<'a> {
    /// The discrepancy's id, which the transfer ids carry.
    pub discrepancy_id: &'a str,
    /// The adjustment's id.
    pub adjustment_id: &'a str,
    /// The processor.
    pub processor: &'a str,
    /// Its class.
    pub class: Class,
    /// Whether to reverse the ledger entry first (a currency mismatch not yet corrected: the
    /// entry's currency is not the one the processor settled in).
    pub reverse_entry: bool,
    /// The correction, signed from the card's side.
    pub amount: i64,
    /// Its currency.
    pub currency: &'a str,
    /// The ledger entry, if any: the card and billing account, and (for a currency mismatch)
    /// what the correction reverses.
    pub entry: Option<&'a LedgerEntry>,
}

/// The accounts and transfers that post `correction`: one transfer, or for a currency mismatch
/// two linked ones (the entry reversed, the settled amount booked).
pub fn adjustment(
    correction: &Correction<'_>,
) -> Result<(Vec<NewAccount>, Vec<Transfer>), IdError> {
    let mut accounts = Vec::new();
    let mut transfers = Vec::new();
    let mut moves: Vec<(i64, &str)> = Vec::new();
    if let (true, Some(entry)) = (correction.reverse_entry, correction.entry) {
        moves.push((-entry.kind.sign() * entry.amount, entry.currency.as_str()));
    }
    moves.push((correction.amount, correction.currency));
    let count = moves.len();
    for (n, (amount, currency)) in moves.into_iter().enumerate() {
        let ledger_currency = LedgerCurrency::new(currency)?;
        let (card, merchant) = match correction.entry.and_then(|e| parties(e, currency)) {
            Some(((token, funding), (billing, receivable))) => {
                accounts.push(NewAccount {
                    id: funding.clone(),
                    currency: ledger_currency,
                    code: AccountCode::FundingSource,
                    limit: BalanceLimit::None,
                    refs: AccountRefs {
                        card_token: Some(token),
                        ..AccountRefs::default()
                    },
                });
                accounts.push(NewAccount {
                    id: receivable.clone(),
                    currency: ledger_currency,
                    code: AccountCode::Receivable,
                    limit: BalanceLimit::None,
                    refs: AccountRefs {
                        billing_account: Some(billing),
                        ..AccountRefs::default()
                    },
                });
                (funding, receivable)
            }
            None => {
                let suspense = AccountId::new(format!(
                    "processor_suspense:{}:{currency}",
                    correction.processor
                ))?;
                let clearing = AccountId::new(format!(
                    "processor_clearing:{}:{currency}",
                    correction.processor
                ))?;
                for id in [&suspense, &clearing] {
                    accounts.push(NewAccount {
                        id: id.clone(),
                        currency: ledger_currency,
                        code: AccountCode::ProcessorClearing,
                        limit: BalanceLimit::None,
                        refs: AccountRefs::default(),
                    });
                }
                (suspense, clearing)
            }
        };
        let (debit, credit) = if amount > 0 {
            (card, merchant)
        } else {
            (merchant, card)
        };
        transfers.push(Transfer {
            id: TransferId::new(format!(
                "{}/adjustment/{}/{}",
                correction.discrepancy_id,
                correction.adjustment_id,
                n + 1
            ))?,
            kind: TransferKind::Single {
                debit,
                credit,
                amount: amount.abs(),
            },
            linked: n + 1 < count,
            refs: TransferRefs {
                payment_id: correction.entry.and_then(|e| e.payment_id.clone()),
                leg_id: correction.entry.and_then(|e| e.leg_id.clone()),
                ..TransferRefs::default()
            },
        });
    }
    Ok((accounts, transfers))
}

/// Who holds an account: a card token or a billing account, and the account.
type Party = (String, AccountId);

/// The card (token, funding source) and the billing account (id, receivable) of `entry`, in
/// `currency`; `None` when its accounts are not a funding source and a receivable.
fn parties(entry: &LedgerEntry, currency: &str) -> Option<(Party, Party)> {
    let token = booking::card_token_of(&entry.funding_account)?;
    let billing = entry
        .receivable_account
        .strip_prefix("receivable:")?
        .rsplit_once(':')?
        .0;
    Some((
        (
            token.to_owned(),
            booking::funding_source(token, currency).ok()?,
        ),
        (
            billing.to_owned(),
            booking::receivable(billing, currency).ok()?,
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::{date, datetime};

    fn record(
        id: &str,
        day: Date,
        line: i64,
        reference: &str,
        amount: i64,
        currency: &str,
    ) -> SettlementRecord {
        SettlementRecord {
            record_id: id.into(),
            day,
            line,
            kind: SettlementType::Capture,
            reference: reference.into(),
            amount,
            currency: currency.into(),
            fee: 0,
            settled_at: datetime!(2026-12-01 10:00 UTC),
        }
    }

    fn entry(id: &str, reference: &str, amount: i64, at: OffsetDateTime) -> LedgerEntry {
        LedgerEntry {
            transfer_id: id.into(),
            kind: SettlementType::Capture,
            reference: reference.into(),
            amount,
            currency: "USD".into(),
            funding_account: "funding_source:tok_a:USD".into(),
            receivable_account: "receivable:acme:USD".into(),
            payment_id: Some("pay_1".into()),
            leg_id: Some("pay_1/leg/1".into()),
            created_at: at,
        }
    }

    const DAY: Date = date!(2026 - 12 - 01);
    const NOW: OffsetDateTime = datetime!(2026-12-03 00:00 UTC);

    fn run(
        records: &[SettlementRecord],
        known: &[SettlementRecord],
        entries: &[LedgerEntry],
    ) -> Classification {
        classify(
            records,
            known,
            entries,
            entries,
            NOW,
            time::Duration::days(1),
        )
    }

    #[test]
    fn every_class_with_its_correction() {
        let at = datetime!(2026-12-01 09:00 UTC);
        let records = vec![
            record("stl_1", DAY, 1, "ref_ok", 1000, "USD"),
            record("stl_2", DAY, 2, "ref_amount", 1001, "USD"),
            record("stl_3", DAY, 3, "ref_currency", 1000, "EUR"),
            record("stl_4", DAY, 4, "ref_ok", 1000, "USD"),
            record("stl_5", DAY, 5, "ref_unknown", 700, "USD"),
        ];
        let entries = vec![
            entry("e_ok", "ref_ok", 1000, at),
            entry("e_amount", "ref_amount", 1000, at),
            entry("e_currency", "ref_currency", 1000, at),
            entry("e_missing", "ref_missing", 500, at),
            entry(
                "e_recent",
                "ref_recent",
                300,
                datetime!(2026-12-02 12:00 UTC),
            ),
        ];
        let result = run(&records, &records, &entries);
        let found: Vec<(Class, String, Option<SignedAmount>)> = result
            .findings
            .iter()
            .map(|f| (f.class, f.subject(), f.correction.clone()))
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    Class::AmountMismatch,
                    "record:stl_2".into(),
                    Some((1, "USD".into()))
                ),
                (
                    Class::CurrencyMismatch,
                    "record:stl_3".into(),
                    Some((1000, "EUR".into()))
                ),
                (
                    Class::DuplicateSettlement,
                    "record:stl_4".into(),
                    Some((1000, "USD".into()))
                ),
                (
                    Class::MissingInLedger,
                    "record:stl_5".into(),
                    Some((700, "USD".into()))
                ),
                (
                    Class::MissingAtProcessor,
                    "entry:e_missing".into(),
                    Some((-500, "USD".into()))
                ),
                (Class::Pending, "entry:e_recent".into(), None),
            ]
        );
        assert_eq!(result.counts[&Class::Matched], 1);
    }

    #[test]
    fn a_record_settled_late_reports_its_entry_and_a_duplicate_across_days() {
        let at = datetime!(2026-12-01 09:00 UTC);
        let entries = vec![entry("e_late", "ref_late", 900, at)];
        // Day one: the file does not hold it; the entry is missing (its grace passed).
        let day_one = run(&[], &[], &entries);
        assert_eq!(day_one.findings[0].class, Class::MissingAtProcessor);
        // Day two's file holds it: matched there, and day one run again finds nothing.
        let late = record("stl_9", date!(2026 - 12 - 02), 1, "ref_late", 900, "USD");
        let day_two = classify(
            std::slice::from_ref(&late),
            std::slice::from_ref(&late),
            &entries,
            &[],
            NOW,
            time::Duration::days(1),
        );
        assert_eq!(day_two.counts[&Class::Matched], 1);
        assert!(day_two.findings.is_empty());
        let again = run(&[], std::slice::from_ref(&late), &entries);
        assert!(again.findings.is_empty(), "{again:?}");
        // The same reference settled again on day three is a duplicate.
        let repeat = record("stl_10", date!(2026 - 12 - 03), 1, "ref_late", 900, "USD");
        let day_three = classify(
            std::slice::from_ref(&repeat),
            &[late, repeat.clone()],
            &entries,
            &[],
            NOW,
            time::Duration::days(1),
        );
        assert_eq!(day_three.findings[0].class, Class::DuplicateSettlement);
    }

    #[test]
    fn refunds_count_negative() {
        let mut refund = record("stl_r", DAY, 1, "ref_r", 250, "USD");
        refund.kind = SettlementType::Refund;
        let result = run(
            std::slice::from_ref(&refund),
            std::slice::from_ref(&refund),
            &[],
        );
        assert_eq!(result.findings[0].correction, Some((-250, "USD".into())));
    }

    #[test]
    fn files_are_read_strictly() {
        let file = "record_id,type,processor_reference,amount_minor,currency,fee_minor,settled_at\r\n\
                    stl_1,capture,sbx_a,1000,USD,3,2026-12-01T10:00:00Z\r\n\
                    stl_2,refund,sbx_b,250,EUR,0,2026-12-01T11:00:00.5Z\r\n";
        let records = parse_file(file.as_bytes(), DAY).unwrap();
        assert_eq!(records.len(), 2);
        let quoted = "record_id,type,processor_reference,amount_minor,currency,fee_minor,settled_at\r\n\
                      \"stl_1\",capture,\"sbx,\"\"a\"\"\",1000,USD,3,2026-12-01T10:00:00Z\r\n";
        let unquoted = parse_file(quoted.as_bytes(), DAY).unwrap();
        assert_eq!(
            (
                unquoted[0].record_id.as_str(),
                unquoted[0].reference.as_str()
            ),
            ("stl_1", "sbx,\"a\"")
        );
        assert_eq!(records[1].kind, SettlementType::Refund);
        assert_eq!(records[1].line, 2);
        assert_eq!(records[0].fee, 3);
        for bad in [
            "record_id,type\n",
            "record_id,type,processor_reference,amount_minor,currency,fee_minor,settled_at\nstl_1,capture,sbx_a,0,USD,0,2026-12-01T10:00:00Z\n",
            "record_id,type,processor_reference,amount_minor,currency,fee_minor,settled_at\nstl_1,charge,sbx_a,5,USD,0,2026-12-01T10:00:00Z\n",
            "record_id,type,processor_reference,amount_minor,currency,fee_minor,settled_at\nstl_1,capture,sbx_a,5,XXX,0,2026-12-01T10:00:00Z\n",
            "record_id,type,processor_reference,amount_minor,currency,fee_minor,settled_at\nstl_1,capture,sbx_a,5,USD,0,yesterday\n",
            "record_id,type,processor_reference,amount_minor,currency,fee_minor,settled_at\nstl_1,capture,,5,USD,0,2026-12-01T10:00:00Z\n",
            "record_id,type,processor_reference,amount_minor,currency,fee_minor,settled_at\n\"stl_1,capture,a,5,USD,0,2026-12-01T10:00:00Z\n",
            "record_id,type,processor_reference,amount_minor,currency,fee_minor,settled_at\nstl_1,capture,a,5,USD,0,2026-12-01T10:00:00Z\nstl_1,capture,b,5,USD,0,2026-12-01T10:00:00Z\n",
        ] {
            assert!(parse_file(bad.as_bytes(), DAY).is_err(), "{bad}");
        }
    }

    #[test]
    fn adjustments_move_money_on_the_cards_accounts_or_the_processors() {
        let at = datetime!(2026-12-01 09:00 UTC);
        let e = entry("pay_1/leg/1/capture", "ref", 1000, at);
        let (_, transfers) = adjustment(&Correction {
            discrepancy_id: "dsc_1",
            adjustment_id: "adj_1",
            processor: "sandbox",
            class: Class::AmountMismatch,
            reverse_entry: false,
            amount: -5,
            currency: "USD",
            entry: Some(&e),
        })
        .unwrap();
        assert_eq!(transfers.len(), 1);
        assert_eq!(transfers[0].id.as_str(), "dsc_1/adjustment/adj_1/1");
        assert_eq!(
            transfers[0].kind,
            TransferKind::Single {
                debit: AccountId::new("receivable:acme:USD").unwrap(),
                credit: AccountId::new("funding_source:tok_a:USD").unwrap(),
                amount: 5,
            }
        );
        let (accounts, transfers) = adjustment(&Correction {
            discrepancy_id: "dsc_2",
            adjustment_id: "adj_2",
            processor: "sandbox",
            class: Class::CurrencyMismatch,
            reverse_entry: true,
            amount: 900,
            currency: "EUR",
            entry: Some(&e),
        })
        .unwrap();
        assert_eq!(transfers.len(), 2);
        assert!(transfers[0].linked && !transfers[1].linked);
        assert_eq!(
            transfers[1].kind,
            TransferKind::Single {
                debit: AccountId::new("funding_source:tok_a:EUR").unwrap(),
                credit: AccountId::new("receivable:acme:EUR").unwrap(),
                amount: 900,
            }
        );
        assert!(
            accounts
                .iter()
                .any(|a| a.id.as_str() == "receivable:acme:EUR")
        );
        let (_, transfers) = adjustment(&Correction {
            discrepancy_id: "dsc_3",
            adjustment_id: "adj_3",
            processor: "sandbox",
            class: Class::MissingInLedger,
            reverse_entry: false,
            amount: 700,
            currency: "USD",
            entry: None,
        })
        .unwrap();
        assert_eq!(
            transfers[0].kind,
            TransferKind::Single {
                debit: AccountId::new("processor_suspense:sandbox:USD").unwrap(),
                credit: AccountId::new("processor_clearing:sandbox:USD").unwrap(),
                amount: 700,
            }
        );
    }
}
