//! `tandemctl fx`: the rate source of payments across currencies on a running orchestrator
//! (`FxService`): set a pair's rate (with a `treasury` identity), read one, list them (as the
//! treasury, or a reader with `--as-reader`).
//!
//! ```text
//! tandemctl fx set USD EUR 0.9238 [--as-of 2026-12-07T09:00:00Z] [--request-id ID] [--format table|csv|json]
//! tandemctl fx get USD EUR [--as-reader] [--format table|csv|json]
//! tandemctl fx list [--base USD] [--page-size 100] [--as-reader] [--format table|csv|json]
//! ```
//!
//! A rate is units of the quote currency per one unit of the base currency, a plain decimal.
//! `set` without `--as-of` sets the rate as of now; it takes `--request-id` (a new UUID by
//! default) and names it when it fails: re-running with the same id is safe. `list` follows
//! every page.

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::fx_service_client::FxServiceClient;
use tandem_tls::identity::Role;

use crate::connect::{
    CALL_TIMEOUT, LIST_PAGES_MAX, OrchestratorTarget, failure, orchestrator_channel, request_id,
};
use crate::print::{Column, Format, Value, parse_time, print_header, print_row};

type Client = FxServiceClient<tonic::transport::Channel>;

/// Where the orchestrator is and which identity reads its rates.
#[derive(Debug, clap::Args)]
pub(crate) struct ReadTarget {
    #[command(flatten)]
    target: OrchestratorTarget,
    /// Use the reader identity instead of the treasury one.
    #[arg(long)]
    as_reader: bool,
}

/// The rate commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum FxCommand {
    /// Set a pair's rate: units of QUOTE per one unit of BASE (replaces its current rate).
    Set {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The currency converted from (ISO 4217), e.g. USD.
        base: String,
        /// The currency converted to, e.g. EUR.
        quote: String,
        /// Units of QUOTE per unit of BASE, a plain decimal such as 0.9238.
        rate: String,
        /// When the rate was observed (RFC 3339); now by default.
        #[arg(long, value_name = "TIME")]
        as_of: Option<String>,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
        /// How to print the rate.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show a pair's current rate, whatever its age.
    Get {
        #[command(flatten)]
        target: ReadTarget,
        /// The currency converted from.
        base: String,
        /// The currency converted to.
        quote: String,
        /// How to print the rate.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List the current rates by base then quote currency.
    List {
        #[command(flatten)]
        target: ReadTarget,
        /// Only the rates from this currency.
        #[arg(long, value_name = "CURRENCY")]
        base: Option<String>,
        /// Rates per call, 1-1000.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(i32).range(1..=1000))]
        page_size: i32,
        /// How to print the rates.
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
}

/// Runs a rate command.
pub(crate) async fn run(command: FxCommand) -> anyhow::Result<()> {
    match command {
        FxCommand::Set {
            target,
            base,
            quote,
            rate,
            as_of,
            request_id: given_id,
            format,
        } => {
            let as_of_time = as_of.map(|text| parse_time("--as-of", &text)).transpose()?;
            let id = request_id(given_id);
            let channel = orchestrator_channel(&target, Role::Treasury, CALL_TIMEOUT).await?;
            let rate = set_rate(channel, &id, &base, &quote, &rate, as_of_time).await?;
            print_header(format, RATE_COLUMNS);
            print_row(format, RATE_COLUMNS, &rate_row(&rate));
        }
        FxCommand::Get {
            target,
            base,
            quote,
            format,
        } => {
            let rate = read_client(&target)
                .await?
                .get_fx_rate(pb::GetFxRateRequest {
                    base_currency_code: base,
                    quote_currency_code: quote,
                })
                .await
                .map_err(failure)?
                .into_inner()
                .rate
                .context("no rate in the response")?;
            print_header(format, RATE_COLUMNS);
            print_row(format, RATE_COLUMNS, &rate_row(&rate));
        }
        FxCommand::List {
            target,
            base,
            page_size,
            format,
        } => {
            let mut client = read_client(&target).await?;
            let mut request = pb::ListFxRatesRequest {
                page_size,
                page_token: String::new(),
                base_currency_code: base.unwrap_or_default(),
            };
            print_header(format, RATE_COLUMNS);
            for _ in 0..LIST_PAGES_MAX {
                let page = client
                    .list_fx_rates(request.clone())
                    .await
                    .map_err(failure)?
                    .into_inner();
                for rate in &page.rates {
                    print_row(format, RATE_COLUMNS, &rate_row(rate));
                }
                if page.next_page_token.is_empty() {
                    return Ok(());
                }
                request.page_token = page.next_page_token;
            }
            // A listing cut short must not look complete to a script.
            anyhow::bail!("stopped after {LIST_PAGES_MAX} pages");
        }
    }
    Ok(())
}

/// Sets the rate from `base` to `quote` over `treasury` (a channel with a `treasury` identity)
/// under `request_id`, as of `as_of_time` (now when `None`), and returns it as set; a failure
/// names the request. `tandemctl fx set` and the dev stack, the bench and the chaos run, which
/// set the rates their euro cards convert at, all set rates here.
pub(crate) async fn set_rate(
    treasury: tonic::transport::Channel,
    request_id: &str,
    base: &str,
    quote: &str,
    rate: &str,
    as_of_time: Option<prost_types::Timestamp>,
) -> anyhow::Result<pb::FxRate> {
    FxServiceClient::new(treasury)
        .set_fx_rate(pb::SetFxRateRequest {
            request_id: request_id.to_owned(),
            rate: Some(pb::FxRate {
                base_currency_code: base.to_owned(),
                quote_currency_code: quote.to_owned(),
                rate: rate.to_owned(),
                as_of_time,
                ..Default::default()
            }),
        })
        .await
        .map_err(failure)
        .with_context(|| format!("setting the {base}/{quote} rate (request {request_id})"))?
        .into_inner()
        .rate
        .context("no rate in the response")
}

async fn client(target: &OrchestratorTarget, role: Role) -> anyhow::Result<Client> {
    Ok(FxServiceClient::new(
        orchestrator_channel(target, role, CALL_TIMEOUT).await?,
    ))
}

async fn read_client(target: &ReadTarget) -> anyhow::Result<Client> {
    let role = if target.as_reader {
        Role::Reader
    } else {
        Role::Treasury
    };
    client(&target.target, role).await
}

/// The columns of a rate: people see the pair, the rate, its as-of time and source; machines
/// also get when it was written and by whom.
const RATE_COLUMNS: &[Column] = &[
    Column::text("base_currency_code", "base", 4),
    Column::text("quote_currency_code", "quote", 5),
    Column::number("rate", "rate", 14),
    Column::text("as_of_time", "as of", 20),
    Column::text("source", "source", 0),
    Column::machines("update_time"),
    Column::machines("updater_name"),
    Column::machines("updater_role"),
];

fn rate_row(rate: &pb::FxRate) -> Vec<Value> {
    let updater = rate.updater.as_ref();
    vec![
        Value::text(&rate.base_currency_code),
        Value::text(&rate.quote_currency_code),
        Value::text(&rate.rate),
        Value::Time(rate.as_of_time),
        Value::text(&rate.source),
        Value::Time(rate.update_time),
        Value::text(updater.map_or("", |a| a.name.as_str())),
        Value::text(updater.map_or("", |a| a.role.as_str())),
    ]
}

#[cfg(test)]
mod tests {
    use tandem_proto::tandem::r#type::v1 as types;

    use super::*;
    use crate::print::{header, row};

    fn rate() -> pb::FxRate {
        pb::FxRate {
            base_currency_code: "USD".into(),
            quote_currency_code: "EUR".into(),
            rate: "0.9238".into(),
            source: "treasury:alice".into(),
            as_of_time: Some(prost_types::Timestamp {
                seconds: 1_796_634_000,
                nanos: 0,
            }),
            update_time: Some(prost_types::Timestamp {
                seconds: 1_796_634_060,
                nanos: 0,
            }),
            updater: Some(types::Actor {
                name: "alice".into(),
                role: "treasury".into(),
            }),
        }
    }

    /// People see the pair, the rate, when and where from; machines also who set it and when.
    #[test]
    fn rates_print_for_people_and_machines() {
        let values = rate_row(&rate());
        assert_eq!(
            header(Format::Table, RATE_COLUMNS).unwrap(),
            "base  quote            rate  as of                 source"
        );
        assert_eq!(
            row(Format::Table, RATE_COLUMNS, &values),
            "USD   EUR            0.9238  2026-12-07T09:00:00Z  treasury:alice"
        );
        assert_eq!(
            header(Format::Csv, RATE_COLUMNS).unwrap(),
            "base_currency_code,quote_currency_code,rate,as_of_time,source,update_time,\
             updater_name,updater_role"
        );
        assert_eq!(
            row(Format::Csv, RATE_COLUMNS, &values),
            "USD,EUR,0.9238,2026-12-07T09:00:00Z,treasury:alice,2026-12-07T09:01:00Z,alice,\
             treasury"
        );
        let json: serde_json::Value =
            serde_json::from_str(&row(Format::Json, RATE_COLUMNS, &values)).unwrap();
        assert_eq!(json["rate"], "0.9238");
        assert_eq!(json["updater_role"], "treasury");
    }
}
