//! Settlement files: what a processor reports it settled on one day, as the CSV that
//! `ChargeService.DownloadSettlementFile` streams (`vault/docs/charging.md`, "Settlement
//! files").
//!
//! The file is RFC 4180 CSV: lines end in CRLF, the header comes first, and a field holding a
//! comma, a double quote or a line break is quoted (none of the sandbox's fields ever needs
//! it). [`SettlementCsv`] is the one writer of the file; [`SettlementFile::chunked`] checks a
//! file (however its connector obtained it) and cuts it into chunks of whole lines.
//!
//! Pure code: no IO.

use std::io::Write as _;
use std::ops::Range;

use tandem_money::Money;
use time::OffsetDateTime;

/// The file's first line, without its line end.
pub const HEADER: &str =
    "record_id,type,processor_reference,amount_minor,currency,fee_minor,settled_at";

/// Largest chunk of a file in one `DownloadSettlementFileResponse`, in bytes (the proto's
/// limit; the server's message limit may make chunks smaller).
pub const CHUNK_BYTES_MAX: usize = 1 << 20;

/// A capture's fee, in hundredths of a percent (basis points) of its amount: 0.25%.
const CAPTURE_FEE_BASIS_POINTS: i128 = 25;

/// Basis points in a whole.
const BASIS_POINTS: i128 = 10_000;

/// Bytes of one line the writer reserves ahead, so that a file of `n` records is written with
/// one allocation in the common case (a sandbox line is about 130 bytes).
const LINE_BYTES_TYPICAL: usize = 140;

/// Which way a settlement record moved money.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettlementKind {
    /// Captured from the card: paid to the merchant.
    Capture,
    /// Refunded to the card: taken back from the merchant.
    Refund,
}

impl SettlementKind {
    /// The kind as the file (and the sandbox's table) spells it.
    pub const fn as_str(self) -> &'static str {
        match self {
            SettlementKind::Capture => "capture",
            SettlementKind::Refund => "refund",
        }
    }

    /// Parses [`SettlementKind::as_str`].
    pub fn parse(text: &str) -> Option<SettlementKind> {
        match text {
            "capture" => Some(SettlementKind::Capture),
            "refund" => Some(SettlementKind::Refund),
            _ => None,
        }
    }
}

/// The fee the processor keeps on a record, in the record's minor units: 0.25% of a capture's
/// amount, rounded half up to a whole minor unit; nothing on a refund. Amounts are positive,
/// so the fee is 0 to `amount_minor` and never overflows.
pub fn fee_minor(kind: SettlementKind, amount_minor: i64) -> i64 {
    match kind {
        SettlementKind::Capture => {
            let amount = i128::from(amount_minor.max(0));
            let fee = (amount * CAPTURE_FEE_BASIS_POINTS + BASIS_POINTS / 2) / BASIS_POINTS;
            // 0 <= fee <= amount_minor, which is an i64.
            i64::try_from(fee).unwrap_or(i64::MAX)
        }
        SettlementKind::Refund => 0,
    }
}

/// One line of a settlement file, borrowed from wherever the connector reads it.
#[derive(Debug, Clone, Copy)]
pub struct SettlementLine<'a> {
    /// The processor's id of the record (the sandbox's `stl_` id).
    pub record_id: &'a str,
    /// Capture or refund.
    pub kind: SettlementKind,
    /// The reference the vault knows the money by: for a capture, its authorization's
    /// (`Charge.processor_reference`); for a refund, the refund's own
    /// (`ChargeRefund.processor_reference`).
    pub processor_reference: &'a str,
    /// The amount settled, positive whichever way it moved.
    pub amount: Money,
    /// When the capture or refund happened.
    pub settled_at: OffsetDateTime,
}

/// A settlement file as its connector delivers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettlementFile {
    /// The CSV: the header, then one line per record.
    pub csv: Vec<u8>,
    /// The records (lines after the header) the connector says it holds.
    pub records: u64,
}

/// Why a settlement file is refused: the connector delivered something outside its contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SettlementFileError {
    /// The first line is not [`HEADER`].
    #[error("the file does not start with the settlement header")]
    Header,
    /// A line does not fit in one chunk.
    #[error("a line is longer than a chunk ({bytes_max} bytes)")]
    LineTooLong {
        /// The chunk size.
        bytes_max: usize,
    },
    /// The file holds another number of records than its connector said.
    #[error("the file holds {found} records, not the {said} its connector said")]
    RecordCount {
        /// Records in the file.
        found: u64,
        /// Records the connector said.
        said: u64,
    },
}

/// Writes a settlement file: the header, then one line per [`SettlementCsv::push`], into one
/// buffer, without an allocation per line.
#[derive(Debug)]
pub struct SettlementCsv {
    csv: Vec<u8>,
    records: u64,
}

impl SettlementCsv {
    /// A file holding the header only, with room for about `records_expected` lines.
    pub fn new(records_expected: usize) -> SettlementCsv {
        let bytes = HEADER.len() + 2 + records_expected.saturating_mul(LINE_BYTES_TYPICAL);
        let mut csv = Vec::with_capacity(bytes);
        csv.extend_from_slice(HEADER.as_bytes());
        csv.extend_from_slice(b"\r\n");
        SettlementCsv { csv, records: 0 }
    }

    /// The records written so far.
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Appends one record's line. `settled_at` is written in UTC with six fractional digits
    /// (`2026-11-30T14:03:07.120000Z`).
    pub fn push(&mut self, line: &SettlementLine<'_>) {
        let csv = &mut self.csv;
        field(csv, line.record_id);
        csv.push(b',');
        csv.extend_from_slice(line.kind.as_str().as_bytes());
        csv.push(b',');
        field(csv, line.processor_reference);
        let at = line.settled_at.to_offset(time::UtcOffset::UTC);
        // Writing into a Vec cannot fail.
        let _ = write!(
            csv,
            ",{},{},{},{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}Z\r\n",
            line.amount.minor_units,
            line.amount.currency.code(),
            fee_minor(line.kind, line.amount.minor_units),
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour(),
            at.minute(),
            at.second(),
            at.microsecond(),
        );
        self.records += 1;
    }

    /// The finished file.
    pub fn finish(self) -> SettlementFile {
        SettlementFile {
            csv: self.csv,
            records: self.records,
        }
    }
}

/// Writes `text` as one RFC 4180 field: as it is, or quoted with its quotes doubled when it
/// holds a comma, a quote or a line break.
fn field(csv: &mut Vec<u8>, text: &str) {
    if !text
        .bytes()
        .any(|b| matches!(b, b',' | b'"' | b'\r' | b'\n'))
    {
        csv.extend_from_slice(text.as_bytes());
        return;
    }
    csv.push(b'"');
    for byte in text.bytes() {
        if byte == b'"' {
            csv.push(b'"');
        }
        csv.push(byte);
    }
    csv.push(b'"');
}

/// One chunk of a file: a run of whole lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    /// Where its bytes are in the file.
    pub bytes: Range<usize>,
    /// The records (lines after the header) it holds.
    pub records: u32,
}

/// A checked settlement file with its chunks.
#[derive(Debug)]
pub struct ChunkedFile {
    /// The CSV.
    pub csv: Vec<u8>,
    /// Its chunks, in order; together they are the whole file.
    pub chunks: Vec<Chunk>,
    /// The records it holds.
    pub records: u64,
}

impl SettlementFile {
    /// Checks the file (it starts with [`HEADER`], no line is longer than `bytes_max`, it holds
    /// as many records as its connector said) and cuts it into chunks of whole lines, each of
    /// at most `bytes_max` bytes. A line ends at a line feed outside quotes (so a quoted line
    /// break stays inside its record); a last line without one ends with the file.
    pub fn chunked(self, bytes_max: usize) -> Result<ChunkedFile, SettlementFileError> {
        let csv = self.csv;
        let header_end = HEADER.len();
        let header_ok = csv.starts_with(HEADER.as_bytes())
            && (csv[header_end..].starts_with(b"\r\n")
                || csv[header_end..].starts_with(b"\n")
                || csv.len() == header_end);
        if !header_ok {
            return Err(SettlementFileError::Header);
        }
        let mut chunks = Vec::with_capacity(csv.len() / bytes_max.max(1) + 1);
        let mut chunk = Chunk {
            bytes: 0..0,
            records: 0,
        };
        let mut found: u64 = 0;
        let mut line_start = 0;
        let mut quoted = false;
        let mut header = true;
        for (index, byte) in csv.iter().enumerate() {
            match byte {
                b'"' => quoted = !quoted,
                b'\n' if !quoted => {
                    add_line(
                        &mut chunks,
                        &mut chunk,
                        line_start..index + 1,
                        header,
                        bytes_max,
                    )?;
                    found += u64::from(!header);
                    header = false;
                    line_start = index + 1;
                }
                _ => {}
            }
        }
        if line_start < csv.len() {
            add_line(
                &mut chunks,
                &mut chunk,
                line_start..csv.len(),
                header,
                bytes_max,
            )?;
            found += u64::from(!header);
        }
        if !chunk.bytes.is_empty() {
            chunks.push(chunk);
        }
        if found != self.records {
            return Err(SettlementFileError::RecordCount {
                found,
                said: self.records,
            });
        }
        Ok(ChunkedFile {
            csv,
            chunks,
            records: found,
        })
    }
}

/// Adds the line at `line` to the open `chunk`, or closes the chunk (into `chunks`) and opens
/// a new one with it when it does not fit.
fn add_line(
    chunks: &mut Vec<Chunk>,
    chunk: &mut Chunk,
    line: Range<usize>,
    header: bool,
    bytes_max: usize,
) -> Result<(), SettlementFileError> {
    if line.len() > bytes_max {
        return Err(SettlementFileError::LineTooLong { bytes_max });
    }
    if chunk.bytes.end - chunk.bytes.start + line.len() > bytes_max {
        let full = std::mem::replace(
            chunk,
            Chunk {
                bytes: line.start..line.start,
                records: 0,
            },
        );
        chunks.push(full);
    }
    chunk.bytes.end = line.end;
    chunk.records += u32::from(!header);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_money::Currency;

    fn usd(minor: i64) -> Money {
        Money::new(Currency::parse("USD").unwrap(), minor)
    }

    fn at(text: &str) -> OffsetDateTime {
        OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).unwrap()
    }

    /// The file is the header and one CRLF-terminated line per record: a capture names its
    /// authorization's reference and pays 0.25% (half up), a refund names its own reference
    /// and pays nothing; times are UTC with microseconds.
    #[test]
    fn writes_the_documented_lines() {
        let mut csv = SettlementCsv::new(2);
        csv.push(&SettlementLine {
            record_id: "stl_capture",
            kind: SettlementKind::Capture,
            processor_reference: "sbx_authorization",
            amount: usd(10_000),
            settled_at: at("2026-11-30T14:03:07.12+01:00"),
        });
        csv.push(&SettlementLine {
            record_id: "stl_refund",
            kind: SettlementKind::Refund,
            processor_reference: "sbx_refund",
            amount: usd(2_500),
            settled_at: at("2026-11-30T23:59:59.999999Z"),
        });
        let file = csv.finish();
        assert_eq!(file.records, 2);
        assert_eq!(
            String::from_utf8(file.csv).unwrap(),
            "record_id,type,processor_reference,amount_minor,currency,fee_minor,settled_at\r\n\
             stl_capture,capture,sbx_authorization,10000,USD,25,2026-11-30T13:03:07.120000Z\r\n\
             stl_refund,refund,sbx_refund,2500,USD,0,2026-11-30T23:59:59.999999Z\r\n"
        );
    }

    /// A day without records is the header alone.
    #[test]
    fn an_empty_day_is_the_header() {
        let file = SettlementCsv::new(0).finish();
        assert_eq!(file.csv, format!("{HEADER}\r\n").as_bytes());
        assert_eq!(file.records, 0);
    }

    /// The fee rule: 0.25% of a capture rounded half up, in minor units; a refund pays none.
    #[test]
    fn fees() {
        let cases = [
            (SettlementKind::Capture, 1, 0),
            (SettlementKind::Capture, 199, 0),
            (SettlementKind::Capture, 200, 1),
            (SettlementKind::Capture, 599, 1),
            (SettlementKind::Capture, 600, 2),
            (SettlementKind::Capture, 10_000, 25),
            (SettlementKind::Capture, 12_345, 31),
            (SettlementKind::Capture, i64::MAX, 23_058_430_092_136_940),
            (SettlementKind::Refund, 10_000, 0),
        ];
        for (kind, amount, fee) in cases {
            assert_eq!(fee_minor(kind, amount), fee, "{kind:?} {amount}");
        }
    }

    /// A field with a comma, a quote or a line break is quoted, its quotes doubled.
    #[test]
    fn fields_are_quoted_when_needed() {
        let mut csv = Vec::new();
        for text in ["plain", "a,b", "say \"hi\"", "two\r\nlines"] {
            field(&mut csv, text);
            csv.push(b'|');
        }
        assert_eq!(
            String::from_utf8(csv).unwrap(),
            "plain|\"a,b\"|\"say \"\"hi\"\"\"|\"two\r\nlines\"|"
        );
    }

    fn file_of(records: usize) -> SettlementFile {
        let mut csv = SettlementCsv::new(records);
        for i in 0..records {
            let id = format!("stl_{i:026}");
            csv.push(&SettlementLine {
                record_id: &id,
                kind: SettlementKind::Capture,
                processor_reference: "sbx_aaaaaaaaaaaaaaaaaaaaaaaaaa",
                amount: usd(1000 + i as i64),
                settled_at: at("2026-11-30T10:00:00Z"),
            });
        }
        csv.finish()
    }

    /// Chunks are whole lines within the limit, together the whole file, and their record
    /// counts add up to the file's (the header counts for none).
    #[test]
    fn chunks_are_whole_lines() {
        let file = file_of(100);
        let line = file.csv.len() / 100;
        for bytes_max in [line + 1, 3 * line, 1 << 20] {
            let chunked = file.clone().chunked(bytes_max).unwrap();
            let mut next = 0;
            let mut records = 0;
            for chunk in &chunked.chunks {
                assert_eq!(chunk.bytes.start, next);
                assert!(chunk.bytes.len() <= bytes_max);
                assert!(chunked.csv[..chunk.bytes.end].ends_with(b"\r\n"));
                let lines = chunked.csv[chunk.bytes.clone()]
                    .iter()
                    .filter(|b| **b == b'\n')
                    .count();
                let header = usize::from(chunk.bytes.start == 0);
                assert_eq!(chunk.records as usize, lines - header);
                records += chunk.records;
                next = chunk.bytes.end;
            }
            assert_eq!(next, chunked.csv.len());
            assert_eq!(records, 100);
        }
        let empty = SettlementCsv::new(0).finish().chunked(1 << 20).unwrap();
        assert_eq!(empty.chunks.len(), 1);
        assert_eq!(empty.chunks[0].records, 0);
    }

    /// A quoted line break is no line end; a file outside the contract is refused.
    #[test]
    fn files_are_checked() {
        let quoted = format!("{HEADER}\r\n\"a\r\nb\",capture,r,1,USD,0,x\r\nlast");
        let chunked = SettlementFile {
            csv: quoted.into_bytes(),
            records: 2,
        }
        .chunked(1 << 20)
        .unwrap();
        assert_eq!(chunked.records, 2);

        let refusals = [
            (b"id,amount\r\n".to_vec(), 0, SettlementFileError::Header),
            (
                format!("{HEADER}\r\nline\r\n").into_bytes(),
                2,
                SettlementFileError::RecordCount { found: 1, said: 2 },
            ),
            (
                format!("{HEADER}\r\n{}\r\n", "x".repeat(200)).into_bytes(),
                1,
                SettlementFileError::LineTooLong { bytes_max: 150 },
            ),
        ];
        for (csv, records, error) in refusals {
            let file = SettlementFile { csv, records };
            assert_eq!(file.chunked(150).unwrap_err(), error);
        }
    }

    /// 100,000 records are written and chunked well within a second (in a debug build, too).
    #[test]
    fn large_files_are_fast() {
        let started = std::time::Instant::now();
        let file = file_of(100_000);
        let chunked = file.chunked(CHUNK_BYTES_MAX).unwrap();
        assert_eq!(chunked.records, 100_000);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
