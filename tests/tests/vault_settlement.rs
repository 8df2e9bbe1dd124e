//! End-to-end tests of settlement files over real gRPC, mutual TLS and Postgres: the vault's
//! `ChargeService.DownloadSettlementFile` against the built-in sandbox acquirer, and the
//! sandbox's `CorruptSettlementRecord`, which reconciliation tests use to play a faulty
//! acquirer.
//!
//! Each test moves the sandbox's records (all written today) to an earlier day in the vault's
//! database before it downloads them, so a test that runs across midnight reads the same file.

use std::time::{Duration, Instant};

use tandem_proto::tandem::r#type::v1 as types;
use tandem_proto::tandem::vault::v1 as pb;
use tandem_proto::tandem::vault::v1::charge_service_client::ChargeServiceClient;
use tandem_proto::tandem::vault::v1::sandbox_service_client::SandboxServiceClient;
use tandem_tests::{
    RunningVault, TEST_PANS, TestDatabase, vault_reason, vault_settings, violated_fields,
};
use tandem_tls::identity::Role;
use time::{Date, OffsetDateTime};
use tonic::Code;
use tonic::transport::Channel;

type Charges = ChargeServiceClient<Channel>;
type Sandbox = SandboxServiceClient<Channel>;

/// The file's header line, as documented.
const HEADER: &str =
    "record_id,type,processor_reference,amount_minor,currency,fee_minor,settled_at";

/// Today's UTC date.
fn today() -> Date {
    OffsetDateTime::now_utc().date()
}

/// The day `days` before today (UTC).
fn days_ago(days: i64) -> Date {
    today() - time::Duration::days(days)
}

fn usd(minor_units: i64) -> types::Money {
    types::Money {
        currency_code: "USD".to_owned(),
        minor_units,
    }
}

/// Authorizes `authorized` minor units of USD on `token` and captures `captured` of them.
async fn authorize_and_capture(
    client: &mut Charges,
    token: &str,
    authorized: i64,
    captured: i64,
) -> pb::Charge {
    let charge = client
        .authorize(pb::AuthorizeRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            token: token.to_owned(),
            amount: Some(usd(authorized)),
            allow_partial_approval: false,
            description: "invoice INV-9".to_owned(),
            statement_descriptor: "TANDEM CLOUD".to_owned(),
            reference: "payment/9/leg/1".to_owned(),
            metadata: Default::default(),
        })
        .await
        .expect("authorize")
        .into_inner()
        .charge
        .expect("charge");
    assert_eq!(charge.state, pb::ChargeState::Authorized as i32);
    client
        .capture(pb::CaptureRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            charge_id: charge.id.clone(),
            amount: Some(usd(captured)),
        })
        .await
        .expect("capture")
        .into_inner()
        .charge
        .expect("charge")
}

/// Refunds `amount` minor units of USD of `charge` and returns the refund.
async fn refund(client: &mut Charges, charge: &pb::Charge, amount: i64) -> pb::ChargeRefund {
    let refund = client
        .refund(pb::RefundRequest {
            request_id: uuid::Uuid::new_v4().to_string(),
            charge_id: charge.id.clone(),
            amount: Some(usd(amount)),
            reason: "credit note".to_owned(),
        })
        .await
        .expect("refund")
        .into_inner()
        .refund
        .expect("refund");
    assert_eq!(refund.state, pb::RefundState::Succeeded as i32);
    refund
}

/// Moves every settlement record of the sandbox to `day`, as if it had been written then.
async fn settle_all_on(vault: &RunningVault, day: Date) {
    let mut db = vault.database.connect().await;
    sqlx::query("UPDATE sandbox_settlement_records SET settlement_date = $1")
        .bind(day)
        .execute(&mut db)
        .await
        .expect("move the settlement records");
}

/// One record line of a settlement file.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Line {
    record_id: String,
    kind: String,
    processor_reference: String,
    amount_minor: i64,
    currency: String,
    fee_minor: i64,
    settled_at: String,
}

impl Line {
    fn parse(text: &str) -> Line {
        let fields: Vec<&str> = text.split(',').collect();
        assert_eq!(fields.len(), 7, "{text}");
        Line {
            record_id: fields[0].to_owned(),
            kind: fields[1].to_owned(),
            processor_reference: fields[2].to_owned(),
            amount_minor: fields[3].parse().expect("amount_minor"),
            currency: fields[4].to_owned(),
            fee_minor: fields[5].parse().expect("fee_minor"),
            settled_at: fields[6].to_owned(),
        }
    }
}

/// A downloaded file: its bytes, and how many chunks and records its responses said.
struct Downloaded {
    csv: String,
    chunks: usize,
    records: i64,
}

impl Downloaded {
    /// The record lines, after checking the header, the CRLF line ends and that the chunks'
    /// record counts add up to the lines.
    fn lines(&self) -> Vec<Line> {
        let body = self
            .csv
            .strip_prefix(&format!("{HEADER}\r\n"))
            .unwrap_or_else(|| panic!("the file starts with the header: {:?}", self.csv));
        assert!(body.is_empty() || body.ends_with("\r\n"), "{body:?}");
        let lines: Vec<Line> = body
            .split_terminator("\r\n")
            .map(|line| {
                assert!(!line.contains('\n'), "{line:?}");
                Line::parse(line)
            })
            .collect();
        assert_eq!(
            self.records,
            lines.len() as i64,
            "the chunks' record counts"
        );
        lines
    }
}

/// Downloads the sandbox's settlement file of `day`, checking that every chunk ends at a
/// whole line, fits in 1 MiB and counts its records.
async fn download(client: &mut Charges, day: Date) -> Result<Downloaded, tonic::Status> {
    let mut stream = client
        .download_settlement_file(pb::DownloadSettlementFileRequest {
            processor: "sandbox".to_owned(),
            settlement_date: day.to_string(),
        })
        .await?
        .into_inner();
    let mut downloaded = Downloaded {
        csv: String::new(),
        chunks: 0,
        records: 0,
    };
    while let Some(chunk) = stream.message().await? {
        assert!(chunk.data.len() <= 1 << 20);
        assert!(
            chunk.data.ends_with(b"\r\n"),
            "a chunk ends at a whole line"
        );
        let text = String::from_utf8(chunk.data).expect("the file is UTF-8");
        let lines = text.matches("\r\n").count() as i64;
        let header = i64::from(downloaded.chunks == 0);
        assert_eq!(i64::from(chunk.records), lines - header);
        downloaded.csv.push_str(&text);
        downloaded.chunks += 1;
        downloaded.records += i64::from(chunk.records);
    }
    Ok(downloaded)
}

async fn download_lines(client: &mut Charges, day: Date) -> Vec<Line> {
    download(client, day).await.expect("download").lines()
}

/// A corruption request of `day`'s `record_id` (empty: the day's first).
fn corruption(
    request_id: &str,
    day: Date,
    record_id: &str,
    corruption: pb::SettlementCorruption,
) -> pb::CorruptSettlementRecordRequest {
    pb::CorruptSettlementRecordRequest {
        request_id: request_id.to_owned(),
        settlement_date: day.to_string(),
        record_id: record_id.to_owned(),
        corruption: corruption as i32,
        amount_minor: 0,
        currency: String::new(),
    }
}

async fn corrupt(
    sandbox: &mut Sandbox,
    request: pb::CorruptSettlementRecordRequest,
) -> Result<pb::CorruptSettlementRecordResponse, tonic::Status> {
    Ok(sandbox
        .corrupt_settlement_record(request)
        .await?
        .into_inner())
}

/// The line of the record `id`.
fn line_of<'a>(lines: &'a [Line], id: &str) -> &'a Line {
    lines
        .iter()
        .find(|line| line.record_id == id)
        .unwrap_or_else(|| panic!("no line {id} in {lines:?}"))
}

/// A settled day's file lists every capture and refund in order of writing: a capture under
/// its charge's `processor_reference` with a 0.25% fee (half up), a refund under the refund's
/// own `processor_reference` without a fee, each with the sandbox's record id and its time
/// in UTC; the read is audited. A day that has not ended, an unknown processor and every
/// role but the orchestrator are refused; a day without records is the header alone.
#[tokio::test]
async fn the_settlement_file_lists_every_capture_and_refund() {
    let started = OffsetDateTime::now_utc();
    let vault = RunningVault::start().await;
    let mut client = ChargeServiceClient::new(vault.channel(Role::Orchestrator).await);
    let token = vault.tokenize(TEST_PANS[0]).await;
    let first = authorize_and_capture(&mut client, &token, 10_000, 10_000).await;
    let second = authorize_and_capture(&mut client, &token, 5_000, 4_000).await;
    let refunded = refund(&mut client, &first, 2_500).await;
    assert_ne!(refunded.processor_reference, first.processor_reference);
    let day = days_ago(1);
    settle_all_on(&vault, day).await;

    let downloaded = download(&mut client, day).await.expect("download");
    assert_eq!(downloaded.chunks, 1);
    let lines = downloaded.lines();
    let expected = [
        ("capture", first.processor_reference.as_str(), 10_000, 25),
        ("capture", second.processor_reference.as_str(), 4_000, 10),
        ("refund", refunded.processor_reference.as_str(), 2_500, 0),
    ];
    assert_eq!(lines.len(), expected.len(), "{lines:?}");
    let listed = SandboxServiceClient::new(vault.channel(Role::Admin).await)
        .list_settlement_records(pb::ListSettlementRecordsRequest {
            start_date: day.to_string(),
            end_date: day.to_string(),
            ..Default::default()
        })
        .await
        .expect("list settlement records")
        .into_inner()
        .records;
    let finished = OffsetDateTime::now_utc();
    for ((line, (kind, reference, amount, fee)), record) in lines.iter().zip(expected).zip(&listed)
    {
        assert_eq!(line.record_id, record.id);
        assert_eq!(
            (line.kind.as_str(), line.processor_reference.as_str()),
            (kind, reference)
        );
        assert_eq!(
            (line.amount_minor, line.currency.as_str(), line.fee_minor),
            (amount, "USD", fee)
        );
        assert!(line.settled_at.ends_with('Z'), "{line:?}");
        let at = OffsetDateTime::parse(
            &line.settled_at,
            &time::format_description::well_known::Rfc3339,
        )
        .expect("settled_at is RFC 3339");
        assert!(started <= at && at <= finished, "{line:?}");
    }

    // The read is audited, naming the file and its records.
    let mut db = vault.database.connect().await;
    let (outcome, reason): (String, String) = sqlx::query_as(
        "SELECT outcome, reason FROM audit_events \
         WHERE rpc = 'tandem.vault.v1.ChargeService/DownloadSettlementFile' AND resource = $1",
    )
    .bind(format!("settlement/sandbox/{day}"))
    .fetch_one(&mut db)
    .await
    .expect("the download's audit row");
    assert_eq!((outcome.as_str(), reason.as_str()), ("OK", "3 records"));

    // A day without records is the header alone.
    let empty = download(&mut client, days_ago(400))
        .await
        .expect("empty day");
    assert_eq!((empty.csv, empty.chunks), (format!("{HEADER}\r\n"), 1));

    // Today's file is the day so far; no later day, only this vault's processor.
    download(&mut client, today()).await.expect("today so far");
    let tomorrow = today() + time::Duration::days(1);
    let refused = download(&mut client, tomorrow)
        .await
        .err()
        .expect("refused");
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&refused), ["settlement_date"]);
    let unknown = client
        .download_settlement_file(pb::DownloadSettlementFileRequest {
            processor: "acme".to_owned(),
            settlement_date: day.to_string(),
        })
        .await
        .expect_err("an unknown processor is refused");
    assert_eq!(unknown.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&unknown), ["processor"]);

    // Only the orchestrator downloads.
    for role in Role::CALLERS {
        if role == Role::Orchestrator {
            continue;
        }
        let mut other = ChargeServiceClient::new(vault.channel(role).await);
        let denied = download(&mut other, day).await.err().expect("denied");
        assert_eq!(
            (denied.code(), vault_reason(&denied).as_str()),
            (Code::PermissionDenied, "ROLE_NOT_ALLOWED"),
            "{role}"
        );
    }
    vault.stop().await;
}

/// Each corruption changes the downloaded file exactly as documented: DROP removes the
/// record's line, DUPLICATE appends a copy under a new id, CHANGE_AMOUNT and CHANGE_CURRENCY
/// change the line's amount (and fee) or currency, SETTLE_LATE moves the line to the next
/// day's file. A corruption sent again with its request id answers the same and changes
/// nothing more; a change that changes nothing, a missing record and a reused request id are
/// refused; only admins corrupt.
#[tokio::test]
async fn corruptions_change_the_file_as_documented() {
    use pb::SettlementCorruption as C;
    let vault = RunningVault::start().await;
    let mut client = ChargeServiceClient::new(vault.channel(Role::Orchestrator).await);
    let mut sandbox = SandboxServiceClient::new(vault.channel(Role::Admin).await);
    let token = vault.tokenize(TEST_PANS[1]).await;
    let first = authorize_and_capture(&mut client, &token, 1_000, 1_000).await;
    authorize_and_capture(&mut client, &token, 2_000, 2_000).await;
    authorize_and_capture(&mut client, &token, 3_000, 3_000).await;
    refund(&mut client, &first, 400).await;
    // Two days back, so that a record settled late lands on a day whose file can be read.
    let day = days_ago(2);
    let next_day = days_ago(1);
    settle_all_on(&vault, day).await;
    let original = download_lines(&mut client, day).await;
    assert_eq!(original.len(), 4);
    let ids: Vec<String> = original.iter().map(|l| l.record_id.clone()).collect();

    // Each corruption with the file it must leave; each is then sent again, and must answer
    // the same and leave the same file.
    let mut expected = original.clone();

    // DROP of the day's first record (no record id given).
    let dropped = corrupt(&mut sandbox, corruption("drop-1", day, "", C::Drop))
        .await
        .expect("drop");
    let dropped_record = dropped.original.clone().expect("original");
    assert_eq!(dropped_record.id, ids[0]);
    assert!(dropped.corrupted.is_none());
    expected.retain(|line| line.record_id != ids[0]);
    assert_eq!(download_lines(&mut client, day).await, expected);
    let again = corrupt(&mut sandbox, corruption("drop-1", day, "", C::Drop))
        .await
        .expect("drop again");
    assert_eq!(again, dropped, "a replay answers the same");
    assert_eq!(
        download_lines(&mut client, day).await,
        expected,
        "a replay drops nothing more"
    );

    // DUPLICATE: a copy under a new id, appended to the day's file.
    let duplicated = corrupt(
        &mut sandbox,
        corruption("duplicate-1", day, &ids[1], C::Duplicate),
    )
    .await
    .expect("duplicate");
    let copy = duplicated.corrupted.clone().expect("the copy");
    let source = duplicated.original.clone().expect("original");
    assert_eq!(source.id, ids[1]);
    assert_ne!(copy.id, ids[1]);
    assert!(
        copy.id.starts_with("stl_") && copy.id.len() == 30,
        "{}",
        copy.id
    );
    assert_eq!(
        (
            &copy.settlement_date,
            copy.r#type,
            &copy.processor_reference,
            &copy.authorization_reference,
            &copy.amount,
            &copy.create_time
        ),
        (
            &source.settlement_date,
            source.r#type,
            &source.processor_reference,
            &source.authorization_reference,
            &source.amount,
            &source.create_time
        )
    );
    expected.push(Line {
        record_id: copy.id.clone(),
        ..line_of(&original, &ids[1]).clone()
    });
    assert_eq!(download_lines(&mut client, day).await, expected);
    let again = corrupt(
        &mut sandbox,
        corruption("duplicate-1", day, &ids[1], C::Duplicate),
    )
    .await
    .expect("duplicate again");
    assert_eq!(again, duplicated, "a replay answers the same copy");
    assert_eq!(download_lines(&mut client, day).await, expected);

    // CHANGE_AMOUNT: the amount, and with it the fee.
    let change_amount = |request_id: &str, amount_minor| pb::CorruptSettlementRecordRequest {
        amount_minor,
        ..corruption(request_id, day, &ids[2], C::ChangeAmount)
    };
    let changed = corrupt(&mut sandbox, change_amount("amount-1", 12_345))
        .await
        .expect("change amount");
    let corrupted = changed.corrupted.clone().expect("corrupted");
    assert_eq!(corrupted.id, ids[2]);
    assert_eq!(
        corrupted.amount.as_ref().map(|m| m.minor_units),
        Some(12_345)
    );
    for line in expected.iter_mut().filter(|l| l.record_id == ids[2]) {
        line.amount_minor = 12_345;
        line.fee_minor = 31;
    }
    assert_eq!(download_lines(&mut client, day).await, expected);
    let again = corrupt(&mut sandbox, change_amount("amount-1", 12_345))
        .await
        .expect("change amount again");
    assert_eq!(again, changed);
    let unchanged = corrupt(&mut sandbox, change_amount("amount-2", 12_345))
        .await
        .expect_err("the same amount changes nothing");
    assert_eq!(unchanged.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&unchanged), ["amount_minor"]);
    assert_eq!(download_lines(&mut client, day).await, expected);

    // CHANGE_CURRENCY: the currency only.
    let change_currency = |request_id: &str, currency: &str| pb::CorruptSettlementRecordRequest {
        currency: currency.to_owned(),
        ..corruption(request_id, day, &ids[3], C::ChangeCurrency)
    };
    let changed = corrupt(&mut sandbox, change_currency("currency-1", "EUR"))
        .await
        .expect("change currency");
    assert_eq!(
        changed
            .corrupted
            .as_ref()
            .and_then(|c| c.amount.as_ref())
            .map(|m| m.currency_code.as_str()),
        Some("EUR")
    );
    for line in expected.iter_mut().filter(|l| l.record_id == ids[3]) {
        line.currency = "EUR".to_owned();
    }
    assert_eq!(download_lines(&mut client, day).await, expected);
    let again = corrupt(&mut sandbox, change_currency("currency-1", "EUR"))
        .await
        .expect("change currency again");
    assert_eq!(again, changed);
    let unchanged = corrupt(&mut sandbox, change_currency("currency-2", "EUR"))
        .await
        .expect_err("the same currency changes nothing");
    assert_eq!(violated_fields(&unchanged), ["currency"]);
    assert_eq!(download_lines(&mut client, day).await, expected);

    // SETTLE_LATE: the line moves to the next day's file, as it was.
    assert!(download_lines(&mut client, next_day).await.is_empty());
    let late = corrupt(
        &mut sandbox,
        corruption("late-1", day, &ids[1], C::SettleLate),
    )
    .await
    .expect("settle late");
    assert_eq!(
        late.corrupted.as_ref().map(|c| c.settlement_date.clone()),
        Some(next_day.to_string())
    );
    let moved = line_of(&expected, &ids[1]).clone();
    expected.retain(|line| line.record_id != ids[1]);
    assert_eq!(download_lines(&mut client, day).await, expected);
    assert_eq!(
        download_lines(&mut client, next_day).await,
        std::slice::from_ref(&moved)
    );
    let again = corrupt(
        &mut sandbox,
        corruption("late-1", day, &ids[1], C::SettleLate),
    )
    .await
    .expect("settle late again");
    assert_eq!(again, late);
    assert_eq!(download_lines(&mut client, next_day).await, [moved]);
    assert_eq!(download_lines(&mut client, day).await, expected);

    // The record is gone from its day now; an empty day has no first record.
    for (request_id, record_id, on) in [
        ("missing-1", ids[1].as_str(), day),
        ("missing-2", "", days_ago(400)),
    ] {
        let missing = corrupt(&mut sandbox, corruption(request_id, on, record_id, C::Drop))
            .await
            .expect_err("no such record");
        assert_eq!(
            (missing.code(), vault_reason(&missing).as_str()),
            (Code::NotFound, "SETTLEMENT_RECORD_NOT_FOUND")
        );
    }

    // A request id is one request.
    let reused = corrupt(&mut sandbox, corruption("drop-1", day, &ids[2], C::Drop))
        .await
        .expect_err("a reused request id");
    assert_eq!(
        (reused.code(), vault_reason(&reused).as_str()),
        (Code::AlreadyExists, "REQUEST_ID_REUSED")
    );

    // Only admins corrupt.
    let mut as_orchestrator = SandboxServiceClient::new(vault.channel(Role::Orchestrator).await);
    let denied = corrupt(
        &mut as_orchestrator,
        corruption("denied-1", day, "", C::Drop),
    )
    .await
    .expect_err("denied");
    assert_eq!(denied.code(), Code::PermissionDenied);
    assert_eq!(download_lines(&mut client, day).await, expected);
    vault.stop().await;
}

/// A large day comes out whole and quickly, in chunks of whole lines within the server's
/// message limit; a day beyond `connector.settlement_file_records_max` is refused rather than
/// read.
#[tokio::test]
async fn large_files_are_chunked_and_bounded() {
    const RECORDS: i64 = 100_000;
    let database = TestDatabase::create().await;
    let mut settings = vault_settings(&database);
    settings.connector.settlement_file_records_max = RECORDS as u64;
    let vault = RunningVault::start_with(settings, database).await;
    let mut client = ChargeServiceClient::new(vault.channel(Role::Orchestrator).await);
    let token = vault.tokenize(TEST_PANS[0]).await;
    let charge = authorize_and_capture(&mut client, &token, 10_000, 10_000).await;
    let day = days_ago(1);
    settle_all_on(&vault, day).await;
    // Fill the day up to the limit with copies of the capture, under made-up ids.
    let mut db = vault.database.connect().await;
    sqlx::query(
        "INSERT INTO sandbox_settlement_records (id, settlement_date, type, processor_reference, \
         authorization_reference, currency, amount_minor, created_at) \
         SELECT 'stl_' || translate(lpad(i::text, 26, '0'), '0123456789', 'abcdefghij'), \
         settlement_date, type, processor_reference, authorization_reference, currency, \
         amount_minor + i, created_at \
         FROM sandbox_settlement_records, generate_series(1, $1 - 1) AS i",
    )
    .bind(RECORDS)
    .execute(&mut db)
    .await
    .expect("fill the day");

    let started = Instant::now();
    let downloaded = download(&mut client, day).await.expect("download");
    let took = started.elapsed();
    let lines = downloaded.lines();
    assert_eq!(lines.len() as i64, RECORDS);
    assert_eq!(lines[0].processor_reference, charge.processor_reference);
    assert_eq!(lines[1].amount_minor, 10_001);
    // Chunks are cut to the server's message limit (64 KiB by default).
    let bytes = downloaded.csv.len();
    assert!(
        downloaded.chunks >= bytes / (64 * 1024),
        "{}",
        downloaded.chunks
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");

    // One more record, and the day is too large to deliver.
    sqlx::query(
        "INSERT INTO sandbox_settlement_records (id, settlement_date, type, processor_reference, \
         authorization_reference, currency, amount_minor, created_at) \
         SELECT 'stl_' || repeat('z', 26), settlement_date, type, processor_reference, \
         authorization_reference, currency, amount_minor, created_at \
         FROM sandbox_settlement_records ORDER BY seq LIMIT 1",
    )
    .execute(&mut db)
    .await
    .expect("one more record");
    let refused = download(&mut client, day).await.err().expect("too large");
    assert_eq!(
        (refused.code(), vault_reason(&refused).as_str()),
        (Code::ResourceExhausted, "SETTLEMENT_FILE_TOO_LARGE")
    );
    vault.stop().await;
}
