//! The rate source end to end (DESIGN section 10, `FxService`): rates set, read and listed over
//! mutual TLS; `SetFxRate` replayed by its request id and refused under a reused one; who may
//! set and read; every bad field named; the rates file read at start, applied again when it
//! changes, a bad edit changing nothing (and logged once), a file never undoing a newer rate;
//! every change in the append-only history; and the quotes a payment converts at, refused when
//! missing or stale.

use std::path::PathBuf;
use std::time::Duration;

use tandem_money::Currency;
use tandem_orchestrator::config::Settings;
use tandem_orchestrator::domain::fx::{Picked, RateProblem};
use tandem_orchestrator::error::Error;
use tandem_orchestrator::fx::{Fx, rate_error};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::fx_service_client::FxServiceClient;
use tandem_tests::{
    LogCapture, RunningOrchestrator, RunningVault, TestDatabase, orchestrator_reason,
    orchestrator_settings, violated_fields,
};
use tandem_tls::identity::Role;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tonic::Code;
use tonic::transport::Channel;

type Rates = FxServiceClient<Channel>;

/// A vault and an orchestrator whose settings `change` adjusts.
async fn start(change: impl FnOnce(&mut Settings)) -> (RunningVault, RunningOrchestrator) {
    let vault = RunningVault::start().await;
    let database = TestDatabase::create().await;
    let mut settings = orchestrator_settings(&database, &vault);
    change(&mut settings);
    let orchestrator = RunningOrchestrator::start_with(settings, database, None).await;
    (vault, orchestrator)
}

async fn client(orchestrator: &RunningOrchestrator, role: Role) -> Rates {
    FxServiceClient::new(orchestrator.channel(role).await)
}

fn currency(code: &str) -> Currency {
    Currency::parse(code).expect("a known currency")
}

/// Now, truncated to microseconds as the database keeps times.
fn now_micros() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
        .expect("a nanosecond rounded down stays in range")
}

fn wire_time(time: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.unix_timestamp(),
        nanos: i32::try_from(time.nanosecond()).expect("below a second"),
    }
}

fn set_request(
    request_id: &str,
    base: &str,
    quote: &str,
    rate: &str,
    as_of: Option<OffsetDateTime>,
) -> pb::SetFxRateRequest {
    pb::SetFxRateRequest {
        request_id: request_id.to_owned(),
        rate: Some(pb::FxRate {
            base_currency_code: base.to_owned(),
            quote_currency_code: quote.to_owned(),
            rate: rate.to_owned(),
            as_of_time: as_of.map(wire_time),
            ..Default::default()
        }),
    }
}

async fn set(rates: &mut Rates, base: &str, quote: &str, rate: &str, as_of: OffsetDateTime) {
    let id = uuid::Uuid::new_v4().to_string();
    rates
        .set_fx_rate(set_request(&id, base, quote, rate, Some(as_of)))
        .await
        .expect("set rate");
}

async fn get(rates: &mut Rates, base: &str, quote: &str) -> Result<pb::FxRate, tonic::Status> {
    rates
        .get_fx_rate(pb::GetFxRateRequest {
            base_currency_code: base.to_owned(),
            quote_currency_code: quote.to_owned(),
        })
        .await
        .map(|r| r.into_inner().rate.expect("rate"))
}

/// Every rate, following the pages.
async fn list_all(rates: &mut Rates, base: &str, page_size: i32) -> Vec<pb::FxRate> {
    let mut all = Vec::new();
    let mut page_token = String::new();
    for _ in 0..100 {
        let page = rates
            .list_fx_rates(pb::ListFxRatesRequest {
                page_size,
                page_token,
                base_currency_code: base.to_owned(),
            })
            .await
            .expect("list rates")
            .into_inner();
        assert!(page.rates.len() <= usize::try_from(page_size).expect("a size"));
        all.extend(page.rates);
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
    panic!("more than 100 pages");
}

fn pair(rate: &pb::FxRate) -> String {
    format!("{}/{}", rate.base_currency_code, rate.quote_currency_code)
}

async fn history_rows(orchestrator: &RunningOrchestrator) -> i64 {
    let pool = orchestrator.pool().await;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM fx_rate_history")
        .fetch_one(&pool)
        .await
        .expect("count history");
    pool.close().await;
    rows
}

/// A rate set is read back normalized with its source, as-of time and caller; an unset as-of
/// time is now; the list pages by base then quote and filters by base; an unknown pair is
/// NOT_FOUND; every change is a history row, and the history refuses to change.
#[tokio::test]
async fn rates_are_set_read_and_listed() {
    let (_vault, orchestrator) = start(|_| {}).await;
    let mut treasury = client(&orchestrator, Role::Treasury).await;
    let hour_ago = now_micros() - time::Duration::HOUR;
    let before = OffsetDateTime::now_utc();
    let answer = treasury
        .set_fx_rate(set_request("set-1", "USD", "EUR", "0.92380", None))
        .await
        .expect("set")
        .into_inner()
        .rate
        .expect("rate");
    assert_eq!(answer.rate, "0.9238");
    assert_eq!(answer.source, "treasury:test");
    let updater = answer.updater.clone().expect("updater");
    assert_eq!(
        (updater.name.as_str(), updater.role.as_str()),
        ("test", "treasury")
    );
    let as_of = answer.as_of_time.expect("as_of_time").seconds;
    assert!((before.unix_timestamp() - 1..=before.unix_timestamp() + 5).contains(&as_of));
    assert_eq!(get(&mut treasury, "USD", "EUR").await.expect("get"), answer);

    set(&mut treasury, "USD", "JPY", "149.37", hour_ago).await;
    set(&mut treasury, "EUR", "GBP", "0.8512", hour_ago).await;
    set(&mut treasury, "USD", "EUR", "0.9301", hour_ago).await;
    let read = get(&mut treasury, "USD", "JPY").await.expect("get");
    assert_eq!(read.as_of_time, Some(wire_time(hour_ago)));
    // The treasury may set an older rate over a newer one.
    let read = get(&mut treasury, "USD", "EUR").await.expect("get");
    assert_eq!(read.rate, "0.9301");

    let all = list_all(&mut treasury, "", 2).await;
    assert_eq!(
        all.iter().map(pair).collect::<Vec<_>>(),
        ["EUR/GBP", "USD/EUR", "USD/JPY"]
    );
    let usd = list_all(&mut treasury, "USD", 1).await;
    assert_eq!(
        usd.iter().map(pair).collect::<Vec<_>>(),
        ["USD/EUR", "USD/JPY"]
    );
    let reader = &mut client(&orchestrator, Role::Reader).await;
    assert_eq!(list_all(reader, "", 100).await, all);

    let missing = get(&mut treasury, "EUR", "USD").await.unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(orchestrator_reason(&missing), "FX_RATE_NOT_FOUND");

    assert_eq!(history_rows(&orchestrator).await, 4);
    let pool = orchestrator.pool().await;
    let changed = sqlx::query("UPDATE fx_rate_history SET rate = '1'")
        .execute(&pool)
        .await;
    assert!(changed.is_err(), "the history is append-only");
    pool.close().await;
}

/// `SetFxRate` is idempotent by request id: a replay answers exactly as the first call (same
/// update time) and changes nothing; the id with another request is ALREADY_EXISTS.
#[tokio::test]
async fn set_is_replayed_by_request_id() {
    let (_vault, orchestrator) = start(|_| {}).await;
    let mut treasury = client(&orchestrator, Role::Treasury).await;
    let request = set_request("replay-1", "USD", "EUR", "0.9238", None);
    let first = treasury
        .set_fx_rate(request.clone())
        .await
        .expect("set")
        .into_inner();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let again = treasury
        .set_fx_rate(request)
        .await
        .expect("replay")
        .into_inner();
    assert_eq!(again, first);
    assert_eq!(history_rows(&orchestrator).await, 1);
    // A retry that echoes the answer's output-only fields is the same request.
    let mut echoed = set_request("replay-1", "USD", "EUR", "0.9238", None);
    echoed.rate = first.rate.clone().map(|rate| pb::FxRate {
        as_of_time: None,
        ..rate
    });
    let echoed = treasury
        .set_fx_rate(echoed)
        .await
        .expect("replay with output-only fields")
        .into_inner();
    assert_eq!(echoed, first);
    assert_eq!(history_rows(&orchestrator).await, 1);

    let reused = treasury
        .set_fx_rate(set_request("replay-1", "USD", "EUR", "0.95", None))
        .await
        .unwrap_err();
    assert_eq!(reused.code(), Code::AlreadyExists);
    assert_eq!(orchestrator_reason(&reused), "REQUEST_ID_REUSED");
    let read = get(&mut treasury, "USD", "EUR").await.expect("get");
    assert_eq!(read.rate, "0.9238");
    assert_eq!(history_rows(&orchestrator).await, 1);
}

/// Only the treasury sets; the treasury and readers read; payers and the vault's roles do
/// neither.
#[tokio::test]
async fn roles() {
    let (_vault, orchestrator) = start(|_| {}).await;
    let mut treasury = client(&orchestrator, Role::Treasury).await;
    set(
        &mut treasury,
        "USD",
        "EUR",
        "0.9238",
        OffsetDateTime::now_utc(),
    )
    .await;
    for role in [Role::Payer, Role::Reader, Role::Approver, Role::Tokenizer] {
        let mut rates = client(&orchestrator, role).await;
        let id = uuid::Uuid::new_v4().to_string();
        let refused = rates
            .set_fx_rate(set_request(&id, "USD", "EUR", "1", None))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::PermissionDenied, "{role}");
        assert_eq!(orchestrator_reason(&refused), "ROLE_NOT_ALLOWED");
        let read = get(&mut rates, "USD", "EUR").await;
        let listed = rates.list_fx_rates(pb::ListFxRatesRequest::default()).await;
        if role == Role::Reader {
            assert_eq!(read.expect("reader reads").rate, "0.9238");
            assert_eq!(listed.expect("reader lists").into_inner().rates.len(), 1);
        } else {
            assert_eq!(read.unwrap_err().code(), Code::PermissionDenied, "{role}");
            assert_eq!(listed.unwrap_err().code(), Code::PermissionDenied, "{role}");
        }
    }
    assert_eq!(
        get(&mut treasury, "USD", "EUR").await.expect("get").rate,
        "0.9238"
    );
}

/// Each bad field is INVALID_ARGUMENT naming it, alone, and nothing is written.
#[tokio::test]
async fn bad_input_names_its_field() {
    let (_vault, orchestrator) = start(|settings| {
        settings.fx.rate_max = "5000".parse().expect("a rate");
    })
    .await;
    let mut treasury = client(&orchestrator, Role::Treasury).await;
    let now = OffsetDateTime::now_utc();
    let id = || uuid::Uuid::new_v4().to_string();
    let cases = [
        (set_request(&id(), "USD", "EUR", "0", None), "rate.rate"),
        (set_request(&id(), "USD", "EUR", "-0.9", None), "rate.rate"),
        (set_request(&id(), "USD", "EUR", "abc", None), "rate.rate"),
        (set_request(&id(), "USD", "EUR", "", None), "rate.rate"),
        (
            set_request(&id(), "USD", "EUR", "9.2e-1", None),
            "rate.rate",
        ),
        (
            set_request(&id(), "USD", "EUR", "0.1234567890123456789", None),
            "rate.rate",
        ),
        (
            set_request(&id(), "USD", "EUR", "0.0000001", None),
            "rate.rate",
        ),
        // Above this orchestrator's fx.rate_max.
        (set_request(&id(), "USD", "IDR", "16000", None), "rate.rate"),
        (
            set_request(&id(), "XYZ", "EUR", "1", None),
            "rate.base_currency_code",
        ),
        (
            set_request(&id(), "", "EUR", "1", None),
            "rate.base_currency_code",
        ),
        (
            set_request(&id(), "USD", "eur", "1", None),
            "rate.quote_currency_code",
        ),
        (
            set_request(&id(), "USD", "USD", "1", None),
            "rate.quote_currency_code",
        ),
        (
            set_request(
                &id(),
                "USD",
                "EUR",
                "1",
                Some(now + time::Duration::minutes(6)),
            ),
            "rate.as_of_time",
        ),
        (
            set_request(
                &id(),
                "USD",
                "EUR",
                "1",
                Some(time::macros::datetime!(1999-12-31 23:59 UTC)),
            ),
            "rate.as_of_time",
        ),
        (set_request("", "USD", "EUR", "1", None), "request_id"),
        (
            set_request("bad id!", "USD", "EUR", "1", None),
            "request_id",
        ),
        (
            pb::SetFxRateRequest {
                request_id: id(),
                rate: None,
            },
            "rate",
        ),
    ];
    for (request, field) in cases {
        let status = treasury.set_fx_rate(request.clone()).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
        assert_eq!(orchestrator_reason(&status), "INVALID_ARGUMENT");
        assert_eq!(violated_fields(&status), [field], "{request:?}");
    }
    let soon = treasury
        .set_fx_rate(set_request(
            &id(),
            "USD",
            "EUR",
            "1",
            Some(now + time::Duration::minutes(4)),
        ))
        .await;
    assert!(soon.is_ok(), "a few minutes ahead is a clock's difference");

    for (request, field) in [
        (
            pb::GetFxRateRequest {
                base_currency_code: "USD".into(),
                quote_currency_code: "ABC".into(),
            },
            "quote_currency_code",
        ),
        (
            pb::GetFxRateRequest {
                base_currency_code: "EUR".into(),
                quote_currency_code: "EUR".into(),
            },
            "quote_currency_code",
        ),
        (
            pb::GetFxRateRequest {
                base_currency_code: String::new(),
                quote_currency_code: "EUR".into(),
            },
            "base_currency_code",
        ),
    ] {
        let status = treasury.get_fx_rate(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), [field]);
    }
    for (request, field) in [
        (
            pb::ListFxRatesRequest {
                page_size: 1001,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListFxRatesRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            pb::ListFxRatesRequest {
                page_token: "not-a-token".into(),
                ..Default::default()
            },
            "page_token",
        ),
        (
            pb::ListFxRatesRequest {
                base_currency_code: "us".into(),
                ..Default::default()
            },
            "base_currency_code",
        ),
    ] {
        let status = treasury.list_fx_rates(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violated_fields(&status), [field]);
    }
    assert_eq!(history_rows(&orchestrator).await, 1, "only the good one");
}

/// A rates file's text: one `[[rate]]` per `(base, quote, rate, as_of)`.
fn rates_file(rates: &[(&str, &str, &str, OffsetDateTime)]) -> String {
    rates
        .iter()
        .map(|(base, quote, rate, as_of)| {
            format!(
                "[[rate]]\nbase = \"{base}\"\nquote = \"{quote}\"\nrate = \"{rate}\"\n\
                 as_of = \"{}\"\n\n",
                as_of.format(&Rfc3339).expect("RFC 3339")
            )
        })
        .collect()
}

/// Writes `text` to `path` whole: a new file renamed over the old, as a deployment would.
fn write_rates(path: &PathBuf, text: &str) {
    let new = path.with_extension("new");
    std::fs::write(&new, text).expect("write the rates file");
    std::fs::rename(&new, path).expect("replace the rates file");
}

/// Polls `GetFxRate` until `check` holds for the pair's answer; fails after 10 s.
async fn wait_for(
    rates: &mut Rates,
    base: &str,
    quote: &str,
    what: &str,
    check: impl Fn(&Result<pb::FxRate, tonic::Status>) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let read = get(rates, base, quote).await;
        if check(&read) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {read:?}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The rates file is read before the server answers; an edit is applied within a few reload
/// intervals; a bad edit changes nothing and is logged once (never its content), however often
/// the file is looked at; a rate set by the treasury after the file's is not undone by the file;
/// fixing the file applies it.
#[tokio::test]
async fn the_rates_file_is_loaded_and_reloaded() {
    let logs = LogCapture::install();
    let dir = std::env::temp_dir().join(format!("tandem-fx-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let name = format!("rates-{}.toml", uuid::Uuid::new_v4().simple());
    let path = dir.join(&name);
    let now = now_micros();
    let hours_ago = |hours: i64| now - time::Duration::hours(hours);
    write_rates(
        &path,
        &rates_file(&[
            ("USD", "EUR", "0.9238", hours_ago(3)),
            ("USD", "JPY", "149.37", hours_ago(3)),
        ]),
    );
    let rates_path = path.clone();
    let (_vault, orchestrator) = start(move |settings| {
        settings.fx.rates_path = rates_path;
        settings.fx.reload_interval_ms = 20;
    })
    .await;
    let mut treasury = client(&orchestrator, Role::Treasury).await;

    // Read at start.
    let usd_eur = get(&mut treasury, "USD", "EUR")
        .await
        .expect("the file's rate");
    assert_eq!(usd_eur.rate, "0.9238");
    assert_eq!(usd_eur.source, format!("file:{name}"));
    assert_eq!(usd_eur.as_of_time, Some(wire_time(hours_ago(3))));
    assert_eq!(usd_eur.updater, None);
    assert_eq!(history_rows(&orchestrator).await, 2);

    // An edit is applied.
    write_rates(
        &path,
        &rates_file(&[
            ("USD", "EUR", "0.9301", hours_ago(2)),
            ("USD", "JPY", "149.37", hours_ago(3)),
        ]),
    );
    wait_for(&mut treasury, "USD", "EUR", "the edit", |read| {
        read.as_ref().is_ok_and(|r| r.rate == "0.9301")
    })
    .await;
    assert_eq!(history_rows(&orchestrator).await, 3, "JPY unchanged");

    // A bad edit changes nothing, even its good entries, and is logged once.
    write_rates(
        &path,
        &rates_file(&[
            ("USD", "EUR", "0", hours_ago(1)),
            ("USD", "GBP", "0.7912", hours_ago(1)),
        ]),
    );
    let refused = |text: &str| {
        text.lines()
            .filter(|line| line.contains("rates file refused") && line.contains(&name))
            .count()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while refused(&logs.text()) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bad file was not logged"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Many more looks at the unchanged file.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let text = logs.text();
    assert_eq!(refused(&text), 1, "logged once per change");
    assert!(text.contains("rate[0].rate: must be positive"));
    assert!(!text.contains("0.7912"), "the file's content is not logged");
    assert_eq!(
        get(&mut treasury, "USD", "EUR").await.expect("get").rate,
        "0.9301"
    );
    let gbp = get(&mut treasury, "USD", "GBP").await.unwrap_err();
    assert_eq!(gbp.code(), Code::NotFound);
    assert_eq!(history_rows(&orchestrator).await, 3);

    // The treasury sets a newer rate; a fixed file with an older one leaves it, and adds its
    // new pair.
    set(&mut treasury, "USD", "EUR", "0.9400", now).await;
    write_rates(
        &path,
        &rates_file(&[
            ("USD", "EUR", "0.9301", hours_ago(2)),
            ("USD", "GBP", "0.7912", hours_ago(1)),
        ]),
    );
    wait_for(&mut treasury, "USD", "GBP", "the fixed file", |read| {
        read.as_ref().is_ok_and(|r| r.rate == "0.7912")
    })
    .await;
    let usd_eur = get(&mut treasury, "USD", "EUR").await.expect("get");
    assert_eq!(
        (usd_eur.rate.as_str(), usd_eur.source.as_str()),
        ("0.94", "treasury:test")
    );
    assert_eq!(history_rows(&orchestrator).await, 5);

    // A file refused for an as-of time too far ahead is applied, unchanged, once that time is
    // near enough, and logged once meanwhile.
    let ahead = now_micros() + time::Duration::minutes(5) + time::Duration::seconds(2);
    write_rates(
        &path,
        &rates_file(&[
            ("USD", "GBP", "0.7912", hours_ago(1)),
            ("USD", "CHF", "0.8811", ahead),
        ]),
    );
    let early = |text: &str| {
        text.lines()
            .filter(|line| line.contains("rates file refused") && line.contains("as_of"))
            .count()
    };
    wait_for(
        &mut treasury,
        "USD",
        "CHF",
        "the file once its time came",
        |read| read.as_ref().is_ok_and(|r| r.rate == "0.8811"),
    )
    .await;
    assert_eq!(
        early(&logs.text()),
        1,
        "refused and logged once, then applied"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// The quotes a payment converts at: each needed pair's rate, refused when one is missing or
/// older than `fx.rate_age_s_max`; none (and no database read) when no conversion is needed.
#[tokio::test]
async fn quotes_refuse_missing_and_stale_rates() {
    let (_vault, orchestrator) = start(|settings| {
        settings.fx.rate_age_s_max = 3_600;
    })
    .await;
    let mut treasury = client(&orchestrator, Role::Treasury).await;
    let now = now_micros();
    set(
        &mut treasury,
        "USD",
        "EUR",
        "0.9238",
        now - time::Duration::minutes(30),
    )
    .await;
    set(
        &mut treasury,
        "USD",
        "JPY",
        "149.37",
        now - time::Duration::minutes(61),
    )
    .await;
    let pool = orchestrator.pool().await;
    let settings = orchestrator.settings.fx.clone();
    let fx = Fx::new(pool.clone(), settings.clone(), 1_000);
    let (usd, eur, jpy, gbp) = (
        currency("USD"),
        currency("EUR"),
        currency("JPY"),
        currency("GBP"),
    );

    let picked = fx
        .quotes(&pool, usd, &[usd, eur, eur], now)
        .await
        .expect("quotes");
    assert!(picked.problems.is_empty());
    let quotes = picked.quotes;
    assert_eq!(quotes.len(), 1);
    assert_eq!((quotes[0].from, quotes[0].to), (usd, eur));
    assert_eq!(quotes[0].rate.to_string(), "0.9238");
    assert_eq!(quotes[0].source, "treasury:test");
    assert_eq!(quotes[0].as_of, now - time::Duration::minutes(30));

    // A stale pair and a missing one are named, the fresh one kept; each refuses a payment
    // that needs it with its reason.
    let picked = fx
        .quotes(&pool, usd, &[eur, jpy, gbp], now)
        .await
        .expect("quotes");
    assert_eq!(picked.quotes.len(), 1);
    let errors: Vec<Error> = picked.problems.iter().map(rate_error).collect();
    assert!(
        matches!(
            errors[..],
            [
                Error::FxRateStale { from: f1, to: t1 },
                Error::FxRateMissing { from: f2, to: t2 },
            ] if (f1, t1, f2, t2) == (usd, jpy, usd, gbp)
        ),
        "{errors:?}"
    );
    // No inverse: EUR to USD is its own pair.
    assert!(matches!(
        fx.quotes(&pool, eur, &[usd], now)
            .await
            .expect("quotes")
            .problems[..],
        [RateProblem::Missing { .. }]
    ));
    // A rate as of the future is fresh.
    assert!(
        fx.quotes(&pool, usd, &[jpy], now - time::Duration::minutes(62))
            .await
            .expect("quotes")
            .problems
            .is_empty()
    );

    // Nothing to convert: no database is reached (this pool has none).
    let nowhere = sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(Duration::from_millis(200))
        .connect_lazy("postgres://nobody@127.0.0.1:1/nothing")
        .expect("a lazy pool");
    let offline = Fx::new(nowhere.clone(), settings, 1_000);
    assert_eq!(
        offline.quotes(&nowhere, usd, &[], now).await.expect("none"),
        Picked::default()
    );
    assert_eq!(
        offline
            .quotes(&nowhere, usd, &[usd, usd], now)
            .await
            .expect("none"),
        Picked::default()
    );
    assert!(matches!(
        offline.quotes(&nowhere, usd, &[eur], now).await,
        Err(Error::Database(_))
    ));
}
