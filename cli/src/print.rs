//! How commands print what the servers answer: enum values, times, actors, columns and
//! policies, and listings in the three `--format`s: an aligned table for people, CSV and JSON
//! lines for machines.
//!
//! A listing is declared once as a slice of [`Column`]s and printed row by row, so a command
//! that pages or follows a feed prints each row as it arrives: the table's widths are fixed in
//! the declaration rather than measured over every row. Money stays in minor units until it is
//! printed: a table shows `12.30 USD`, CSV the decimal `12.30` beside a `currency` column, JSON
//! the wire's `{"currency_code": "USD", "minor_units": 1230}`; never a float.

use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::r#type::v1 as types;

use crate::amounts::{decimal, show};

/// One line for people: the strategy and whichever of its settings are set.
pub(crate) fn describe_policy(policy: &pb::AllocationPolicy) -> String {
    let mut parts = vec![value_name(
        policy.strategy,
        "ALLOCATION_STRATEGY_",
        pb::AllocationStrategy::as_str_name,
    )];
    if !policy.weights.is_empty() {
        let weights: Vec<String> = policy
            .weights
            .iter()
            .map(|w| format!("{}:{}", w.token, w.basis_points))
            .collect();
        parts.push(format!("weights {}", weights.join(" ")));
    }
    if !policy.fixed_amounts.is_empty() {
        let amounts: Vec<String> = policy
            .fixed_amounts
            .iter()
            .map(|f| format!("{}:{}", f.token, show(f.amount.as_ref())))
            .collect();
        parts.push(format!("fixed {}", amounts.join(" ")));
    }
    if policy.remainder_rule != i32::from(pb::RemainderRule::Unspecified) {
        parts.push(format!(
            "remainder {}",
            value_name(
                policy.remainder_rule,
                "REMAINDER_RULE_",
                pb::RemainderRule::as_str_name
            )
        ));
    }
    if let Some(fallback) = &policy.fallback {
        if fallback.enabled {
            parts.push("fallback".to_owned());
        }
        if fallback.attempts_max != 0 {
            parts.push(format!("attempts max {}", fallback.attempts_max));
        }
    }
    parts.push(value_name(
        policy.completion,
        "COMPLETION_",
        pb::Completion::as_str_name,
    ));
    if !policy.ceiling_windows.is_empty() {
        parts.push(format!("{} ceiling windows", policy.ceiling_windows.len()));
    }
    parts.join(", ")
}

/// A proto enum value's name without its `prefix`, lower-case (`LEG_STATE_PARTIALLY_REFUNDED`
/// is `partially_refunded`), or the number for a value this build does not know.
pub(crate) fn value_name<E: TryFrom<i32>>(
    value: i32,
    prefix: &str,
    name: fn(&E) -> &'static str,
) -> String {
    E::try_from(value).map_or_else(
        |_| format!("unknown({value})"),
        |known| {
            let full = name(&known);
            full.strip_prefix(prefix).unwrap_or(full).to_lowercase()
        },
    )
}

/// A timestamp's seconds as RFC 3339 in UTC, or `-` when unset.
pub(crate) fn show_time(seconds: Option<i64>) -> String {
    use time::format_description::well_known::Rfc3339;
    seconds
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".to_owned())
}

/// A caller as `name (role)`, or `-` when the server recorded none.
pub(crate) fn show_actor(actor: Option<&types::Actor>) -> String {
    actor.map_or_else(|| "-".to_owned(), |a| format!("{} ({})", a.name, a.role))
}

/// The width of a text column: its widest value, and at least its heading.
pub(crate) fn column_width<'a>(heading: &str, values: impl Iterator<Item = &'a str>) -> usize {
    values
        .map(|value| value.chars().count())
        .fold(heading.chars().count(), usize::max)
}

/// How a listing is printed (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns for people.
    Table,
    /// RFC 4180 CSV, header first, for spreadsheets and scripts.
    Csv,
    /// One JSON object per row and line (JSON lines), keyed as the CSV header names them.
    Json,
}

/// One column of a listing: which formats show it, under which name, and how wide.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Column {
    /// The CSV header and the JSON key; empty for a column only the table shows.
    key: &'static str,
    /// The table's heading; empty for a column only CSV and JSON carry.
    heading: &'static str,
    /// The table's width in characters: a longer value pushes the rest of its row right.
    width: usize,
    /// Whether the table aligns the column right (numbers and amounts).
    right: bool,
}

impl Column {
    /// A column of text every format shows, left-aligned in the table.
    pub(crate) const fn text(key: &'static str, heading: &'static str, width: usize) -> Self {
        Column {
            key,
            heading,
            width,
            right: false,
        }
    }

    /// A column of numbers or amounts every format shows, right-aligned in the table.
    pub(crate) const fn number(key: &'static str, heading: &'static str, width: usize) -> Self {
        Column {
            key,
            heading,
            width,
            right: true,
        }
    }

    /// A column only CSV and JSON carry (ids and cursors too long for a table).
    pub(crate) const fn machines(key: &'static str) -> Self {
        Column::text(key, "", 0)
    }

    /// A column only the table shows (a value machines get split into other columns).
    pub(crate) const fn people(heading: &'static str, width: usize) -> Self {
        Column::text("", heading, width)
    }

    fn shown_in(&self, format: Format) -> bool {
        match format {
            Format::Table => !self.heading.is_empty(),
            Format::Csv | Format::Json => !self.key.is_empty(),
        }
    }
}

/// One cell of a listing, typed so that each format prints it its own way.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// Text; the table shows an empty one as `-`.
    Text(String),
    /// A whole number.
    Integer(i64),
    /// An amount in minor units; `None` when the server sent none.
    Money(Option<types::Money>),
    /// A point in time; `None` when unset.
    Time(Option<prost_types::Timestamp>),
}

impl Value {
    /// Text from anything that converts to a `String`.
    pub(crate) fn text(text: impl Into<String>) -> Self {
        Value::Text(text.into())
    }
}

/// The header of a listing in `format`: the headings of a table, the CSV header, or nothing
/// for JSON lines.
pub(crate) fn header(format: Format, columns: &[Column]) -> Option<String> {
    match format {
        Format::Table => Some(table_line(
            columns
                .iter()
                .filter(|c| c.shown_in(format))
                .map(|c| (c, c.heading.to_owned())),
        )),
        Format::Csv => {
            let keys: Vec<String> = columns
                .iter()
                .filter(|c| c.shown_in(format))
                .map(|c| csv_field(c.key))
                .collect();
            Some(keys.join(","))
        }
        Format::Json => None,
    }
}

/// One row of a listing in `format`; `values` are in the order of `columns`.
pub(crate) fn row(format: Format, columns: &[Column], values: &[Value]) -> String {
    assert_eq!(columns.len(), values.len(), "a value for every column");
    let cells = columns
        .iter()
        .zip(values)
        .filter(|(column, _)| column.shown_in(format));
    match format {
        Format::Table => table_line(cells.map(|(column, value)| (column, table_cell(value)))),
        Format::Csv => {
            let fields: Vec<String> = cells.map(|(_, value)| csv_cell(value)).collect();
            fields.join(",")
        }
        Format::Json => {
            // Written by hand to keep the columns' order (serde_json's map sorts its keys).
            let members: Vec<String> = cells
                .map(|(column, value)| {
                    format!(
                        "{}:{}",
                        serde_json::Value::from(column.key),
                        json_cell(value)
                    )
                })
                .collect();
            format!("{{{}}}", members.join(","))
        }
    }
}

/// Prints a listing's header, if its format has one.
pub(crate) fn print_header(format: Format, columns: &[Column]) {
    if let Some(line) = header(format, columns) {
        println!("{line}");
    }
}

/// Prints one row of a listing.
pub(crate) fn print_row(format: Format, columns: &[Column], values: &[Value]) {
    println!("{}", row(format, columns, values));
}

/// Cells padded to their columns' widths, two spaces apart, without trailing spaces.
fn table_line<'a>(cells: impl Iterator<Item = (&'a Column, String)>) -> String {
    let padded: Vec<String> = cells
        .map(|(column, text)| {
            let width = column.width;
            if column.right {
                format!("{text:>width$}")
            } else {
                format!("{text:<width$}")
            }
        })
        .collect();
    padded.join("  ").trim_end().to_owned()
}

fn table_cell(value: &Value) -> String {
    match value {
        Value::Text(text) if text.is_empty() => "-".to_owned(),
        Value::Text(text) => text.clone(),
        Value::Integer(number) => number.to_string(),
        Value::Money(money) => show(money.as_ref()),
        Value::Time(time) => show_time(time.as_ref().map(|t| t.seconds)),
    }
}

fn csv_cell(value: &Value) -> String {
    match value {
        Value::Text(text) => csv_field(text),
        Value::Integer(number) => number.to_string(),
        // The currency is its own column; a currency this build does not know is left empty
        // rather than guessed at.
        Value::Money(money) => money.as_ref().and_then(decimal).unwrap_or_default(),
        Value::Time(time) => time.as_ref().and_then(rfc3339).unwrap_or_default(),
    }
}

fn json_cell(value: &Value) -> serde_json::Value {
    use serde_json::json;
    match value {
        Value::Text(text) => json!(text),
        Value::Integer(number) => json!(number),
        Value::Money(money) => money.as_ref().map_or(
            serde_json::Value::Null,
            |m| json!({"currency_code": m.currency_code, "minor_units": m.minor_units}),
        ),
        Value::Time(time) => time
            .as_ref()
            .and_then(rfc3339)
            .map_or(serde_json::Value::Null, serde_json::Value::String),
    }
}

/// A text field of RFC 4180 CSV: quoted when it holds a comma, a quote or a line break, and
/// prefixed with `'` when a spreadsheet would run it as a formula (as the ledger's own CSV
/// export does).
fn csv_field(text: &str) -> String {
    let formula = text.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let text = if formula {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

/// A timestamp as RFC 3339 in UTC with its fraction of a second, for machines.
pub(crate) fn rfc3339(time: &prost_types::Timestamp) -> Option<String> {
    use time::format_description::well_known::Rfc3339;
    let nanos = i128::from(time.seconds) * 1_000_000_000 + i128::from(time.nanos);
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

/// Parses an RFC 3339 time (`2025-01-31T00:00:00Z`) given as `flag` into the wire's
/// timestamp.
pub(crate) fn parse_time(flag: &str, text: &str) -> anyhow::Result<prost_types::Timestamp> {
    use time::format_description::well_known::Rfc3339;
    let parsed = time::OffsetDateTime::parse(text, &Rfc3339).map_err(|_| {
        anyhow::anyhow!("{flag} {text:?} must be an RFC 3339 time such as 2025-01-31T00:00:00Z")
    })?;
    Ok(prost_types::Timestamp {
        seconds: parsed.unix_timestamp(),
        // Below one second, so it fits.
        nanos: i32::try_from(parsed.nanosecond()).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usd(minor_units: i64) -> Value {
        Value::Money(Some(types::Money {
            currency_code: "USD".to_owned(),
            minor_units,
        }))
    }

    const COLUMNS: &[Column] = &[
        Column::machines("id"),
        Column::text("name", "name", 6),
        Column::people("who", 4),
        Column::number("amount", "amount", 12),
        Column::machines("currency"),
        Column::number("sequence", "seq", 4),
        Column::text("time", "time", 20),
        Column::text("note", "note", 10),
    ];

    fn values(name: &str, minor_units: i64, note: &str) -> Vec<Value> {
        vec![
            Value::text("evt_1"),
            Value::text(name),
            Value::text("al"),
            usd(minor_units),
            Value::text("USD"),
            Value::Integer(7),
            Value::Time(Some(prost_types::Timestamp {
                seconds: 1_735_689_600,
                nanos: 250_000_000,
            })),
            Value::text(note),
        ]
    }

    /// Each format shows its own columns: the table aligns fixed widths (numbers right, empty
    /// text as `-`, no trailing spaces) and shows amounts with their currency; CSV quotes what
    /// needs quoting, defuses formulas and gives amounts as decimals; JSON lines key each row
    /// by the CSV header with amounts in minor units.
    #[test]
    fn listing_formats() {
        let check = |format, expected_header: Option<&str>, expected_rows: [&str; 2]| {
            assert_eq!(header(format, COLUMNS).as_deref(), expected_header);
            assert_eq!(
                row(format, COLUMNS, &values("a, \"b\"", 1230, "")),
                expected_rows[0]
            );
            assert_eq!(
                row(format, COLUMNS, &values("=1+1", -5, "line\nbreak")),
                expected_rows[1]
            );
        };
        check(
            Format::Table,
            Some("name    who         amount   seq  time                  note"),
            [
                "a, \"b\"  al       12.30 USD     7  2025-01-01T00:00:00Z  -",
                "=1+1    al       -0.05 USD     7  2025-01-01T00:00:00Z  line\nbreak",
            ],
        );
        check(
            Format::Csv,
            Some("id,name,amount,currency,sequence,time,note"),
            [
                "evt_1,\"a, \"\"b\"\"\",12.30,USD,7,2025-01-01T00:00:00.25Z,",
                "evt_1,'=1+1,-0.05,USD,7,2025-01-01T00:00:00.25Z,\"line\nbreak\"",
            ],
        );
        check(
            Format::Json,
            None,
            [
                r#"{"id":"evt_1","name":"a, \"b\"","amount":{"currency_code":"USD","minor_units":1230},"currency":"USD","sequence":7,"time":"2025-01-01T00:00:00.25Z","note":""}"#,
                r#"{"id":"evt_1","name":"=1+1","amount":{"currency_code":"USD","minor_units":-5},"currency":"USD","sequence":7,"time":"2025-01-01T00:00:00.25Z","note":"line\nbreak"}"#,
            ],
        );
    }

    /// Unset amounts and times print as `-` for people, empty in CSV and `null` in JSON; an
    /// unknown currency is not guessed at.
    #[test]
    fn missing_values() {
        let columns = [
            Column::number("amount", "amount", 0),
            Column::text("time", "time", 0),
            Column::number("odd", "odd", 0),
        ];
        let values = [
            Value::Money(None),
            Value::Time(None),
            Value::Money(Some(types::Money {
                currency_code: "XXX".to_owned(),
                minor_units: 1,
            })),
        ];
        assert_eq!(row(Format::Table, &columns, &values), "-  -  -");
        assert_eq!(row(Format::Csv, &columns, &values), ",,");
        assert_eq!(
            row(Format::Json, &columns, &values),
            r#"{"amount":null,"time":null,"odd":{"currency_code":"XXX","minor_units":1}}"#
        );
    }

    /// RFC 3339 times parse to the wire's timestamp with offsets and fractions; anything else
    /// is refused with the flag's name.
    #[test]
    fn times() {
        let parse = |text| parse_time("--start", text).map(|t| (t.seconds, t.nanos));
        assert_eq!(parse("2025-01-01T00:00:00Z").ok(), Some((1_735_689_600, 0)));
        assert_eq!(
            parse("2025-01-01T01:00:00.5+01:00").ok(),
            Some((1_735_689_600, 500_000_000))
        );
        for bad in ["2025-01-01", "yesterday", ""] {
            let error = parse(bad).expect_err(bad).to_string();
            assert!(error.starts_with("--start"), "{error}");
        }
    }

    /// An actor prints as `name (role)`; none as `-`.
    #[test]
    fn actors() {
        let actor = types::Actor {
            name: "alice".to_owned(),
            role: "treasury".to_owned(),
        };
        assert_eq!(show_actor(Some(&actor)), "alice (treasury)");
        assert_eq!(show_actor(None), "-");
    }

    /// Enum values print without their prefix in lower case; unknown values print as numbers.
    #[test]
    fn value_names() {
        let name = |value| value_name(value, "LEG_STATE_", pb::LegState::as_str_name);
        assert_eq!(
            name(pb::LegState::PartiallyRefunded.into()),
            "partially_refunded"
        );
        assert_eq!(name(99), "unknown(99)");
    }
}
