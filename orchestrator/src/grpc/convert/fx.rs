//! Rates between wire and domain: the checks of `FxService`'s requests and the rates on the
//! wire. [`check_rate`] is the one rule a rate is checked by, whether it comes from
//! `SetFxRate` or from the rates file ([`crate::fx::file`]).

use prost::Message as _;
use tandem_money::Currency;
use tandem_money::fx::Rate;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_runtime::fields::Violations;
use time::OffsetDateTime;
use time::macros::datetime;

use crate::commands::{NewRate, RateChange, RateQuery};
use crate::config::FxSettings;
use crate::error::Error;
use crate::storage::fx::StoredRate;

use super::payments::strict_page_size;
use super::{PAGES, actor, currency, request_hash, request_id, timestamp, wire_time};

/// Most rates per page.
const PAGE_SIZE_MAX: i32 = 1000;
/// How far ahead of the server's clock an as-of time may be: clocks differ a little, never by
/// more.
pub const AS_OF_AHEAD_MAX: time::Duration = time::Duration::minutes(5);
/// The earliest as-of time: anything before is a typo, not a rate.
pub const AS_OF_MIN: OffsetDateTime = datetime!(2000-01-01 00:00 UTC);

/// Where a rate's fields are, for naming them in violations: `rate.base_currency_code` in a
/// `SetFxRate`, `rate[3].base` in the rates file.
#[derive(Debug, Clone)]
pub struct RateFields {
    /// The base currency's field.
    pub base: String,
    /// The quote currency's field.
    pub quote: String,
    /// The rate's field.
    pub rate: String,
    /// The as-of time's field.
    pub as_of: String,
}

impl RateFields {
    /// The fields of `SetFxRateRequest.rate`.
    fn request() -> Self {
        Self {
            base: "rate.base_currency_code".into(),
            quote: "rate.quote_currency_code".into(),
            rate: "rate.rate".into(),
            as_of: "rate.as_of_time".into(),
        }
    }
}

/// Checks one rate: both currencies known and different, the rate a plain positive decimal of
/// at most 18 significant digits within `[fx.rate_min, fx.rate_max]`, and `as_of` from 2000 to
/// 5 minutes after `now`. Every violation is recorded in `v` under its field in `fields`.
#[allow(clippy::too_many_arguments)]
pub fn check_rate(
    v: &mut Violations,
    fields: &RateFields,
    base: &str,
    quote: &str,
    rate: &str,
    as_of: OffsetDateTime,
    now: OffsetDateTime,
    settings: &FxSettings,
) -> Option<NewRate> {
    let base = currency(v, &fields.base, base);
    let quote = currency(v, &fields.quote, quote);
    if base.is_some() && base == quote {
        v.add(&fields.quote, format!("must differ from {}", fields.base));
    }
    let rate = match rate.parse::<Rate>() {
        Ok(rate) if rate < settings.rate_min || rate > settings.rate_max => {
            v.add(
                &fields.rate,
                format!(
                    "must be from {} to {} (fx.rate_min to fx.rate_max)",
                    settings.rate_min, settings.rate_max
                ),
            );
            None
        }
        Ok(rate) => Some(rate),
        Err(e) => {
            v.add(&fields.rate, e);
            None
        }
    };
    if as_of < AS_OF_MIN || as_of > now + AS_OF_AHEAD_MAX {
        v.add(
            &fields.as_of,
            "must be from 2000-01-01 to 5 minutes after the server's clock",
        );
    }
    Some(NewRate {
        base: base?,
        quote: quote.filter(|q| Some(*q) != base)?,
        rate: rate?,
        as_of: tandem_runtime::time::truncate_to_micros(as_of),
    })
}

/// The checks of `SetFxRate`: an unset `as_of_time` is `now`.
pub fn set_fx_rate(
    request: &pb::SetFxRateRequest,
    settings: &FxSettings,
    now: OffsetDateTime,
) -> Result<RateChange, Error> {
    let mut v = Violations::default();
    request_id(&mut v, "request_id", &request.request_id);
    let Some(wire) = request.rate.as_ref() else {
        v.add("rate", "is required");
        return Err(v.into_inner().into());
    };
    let fields = RateFields::request();
    let as_of = match wire.as_of_time.as_ref() {
        None => Some(now),
        Some(time) => {
            let as_of = timestamp(Some(time));
            if as_of.is_none() {
                v.add(&fields.as_of, "is not a valid timestamp");
            }
            as_of
        }
    };
    let rate = as_of.and_then(|as_of| {
        check_rate(
            &mut v,
            &fields,
            &wire.base_currency_code,
            &wire.quote_currency_code,
            &wire.rate,
            as_of,
            now,
            settings,
        )
    });
    let rate = v.finish_with::<_, Error>(|| rate)?;
    // Output-only fields are ignored, by the hash too: a retry that echoes them back is the
    // same request.
    let mut given = request.clone();
    if let Some(wire) = given.rate.as_mut() {
        wire.source.clear();
        wire.update_time = None;
        wire.updater = None;
    }
    Ok(RateChange {
        request_id: request.request_id.clone(),
        request_hash: request_hash("SetFxRate", &given),
        rate,
    })
}

/// The checks of `GetFxRate`: the pair.
pub fn get_fx_rate(request: &pb::GetFxRateRequest) -> Result<(Currency, Currency), Error> {
    let mut v = Violations::default();
    let base = currency(&mut v, "base_currency_code", &request.base_currency_code);
    let quote = currency(&mut v, "quote_currency_code", &request.quote_currency_code);
    if base.is_some() && base == quote {
        v.add("quote_currency_code", "must differ from base_currency_code");
    }
    v.finish_with(|| base.zip(quote))
}

/// The scope of `ListFxRates`' page tokens with the base currency filter `base` ("" for none).
fn list_scope(base: &str) -> String {
    format!("ListFxRates|{base}")
}

/// The checks of `ListFxRates`, and the scope its page tokens belong to.
pub fn list_fx_rates(request: &pb::ListFxRatesRequest) -> Result<(RateQuery, String), Error> {
    let mut v = Violations::default();
    let size = strict_page_size(&mut v, request.page_size, 100, PAGE_SIZE_MAX);
    let base = (!request.base_currency_code.is_empty())
        .then(|| currency(&mut v, "base_currency_code", &request.base_currency_code))
        .flatten();
    let scope = list_scope(&request.base_currency_code);
    let after = if request.page_token.is_empty() {
        None
    } else {
        let pair = tandem_runtime::pages::decode(PAGES, scope.as_bytes(), &request.page_token)
            .and_then(|position| {
                let (base, quote) = position.split_at_checked(3)?;
                let code = |bytes: &[u8]| Currency::parse(std::str::from_utf8(bytes).ok()?).ok();
                Some((code(base)?, code(quote)?))
            });
        if pair.is_none() {
            v.add(
                "page_token",
                "is not a page token of this list with these filters",
            );
        }
        pair
    };
    v.finish((RateQuery { base, after, size }, scope))
}

/// A rate on the wire.
pub fn fx_rate(rate: &StoredRate) -> pb::FxRate {
    pb::FxRate {
        base_currency_code: rate.base.code().to_owned(),
        quote_currency_code: rate.quote.code().to_owned(),
        rate: rate.rate.to_string(),
        source: rate.source.clone(),
        as_of_time: Some(wire_time(rate.as_of)),
        update_time: Some(wire_time(rate.update_time)),
        updater: rate.updater.as_ref().map(actor),
    }
}

/// The stored response of `SetFxRate`.
pub fn set_response(rate: &StoredRate) -> Vec<u8> {
    pb::SetFxRateResponse {
        rate: Some(fx_rate(rate)),
    }
    .encode_to_vec()
}

/// A page of rates on the wire; `more` when rows follow the last.
pub fn rates_page(page: &[StoredRate], more: bool, scope: &str) -> pb::ListFxRatesResponse {
    let next_page_token = match (more, page.last()) {
        (true, Some(last)) => {
            let position = format!("{}{}", last.base.code(), last.quote.code());
            tandem_runtime::pages::encode(PAGES, scope.as_bytes(), position.as_bytes())
        }
        _ => String::new(),
    };
    pb::ListFxRatesResponse {
        rates: page.iter().map(fx_rate).collect(),
        next_page_token,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(error: Error) -> Vec<String> {
        match error {
            Error::InvalidArgument(violations) => violations.into_iter().map(|v| v.field).collect(),
            other => panic!("not invalid: {other:?}"),
        }
    }

    fn request(base: &str, quote: &str, rate: &str, as_of: Option<i64>) -> pb::SetFxRateRequest {
        pb::SetFxRateRequest {
            request_id: "r-1".into(),
            rate: Some(pb::FxRate {
                base_currency_code: base.into(),
                quote_currency_code: quote.into(),
                rate: rate.into(),
                as_of_time: as_of.map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
                ..Default::default()
            }),
        }
    }

    /// Each bad field is named, alone; a good rate is normalized and an unset as-of time is now.
    #[test]
    fn bad_rates_name_their_field() {
        let settings = FxSettings::default();
        let now = datetime!(2026-12-07 12:00 UTC);
        let set = |r: &pb::SetFxRateRequest| set_fx_rate(r, &settings, now);
        let good = set(&request("USD", "EUR", "0.92380", None)).unwrap();
        assert_eq!(good.rate.rate.to_string(), "0.9238");
        assert_eq!(good.rate.as_of, now);
        let hour_ago = (now - time::Duration::HOUR).unix_timestamp();
        let soon = (now + time::Duration::minutes(4)).unix_timestamp();
        assert!(set(&request("USD", "JPY", "149.37", Some(soon))).is_ok());
        for (bad, field) in [
            (request("USD", "EUR", "0", None), "rate.rate"),
            (request("USD", "EUR", "-1", None), "rate.rate"),
            (request("USD", "EUR", "abc", None), "rate.rate"),
            (request("USD", "EUR", "", None), "rate.rate"),
            (request("USD", "EUR", "1e3", None), "rate.rate"),
            (
                request("USD", "EUR", "1.0000000000000000001", None),
                "rate.rate",
            ),
            (request("USD", "EUR", "0.0000001", None), "rate.rate"),
            (request("USD", "EUR", "1000000.1", None), "rate.rate"),
            (request("XXX", "EUR", "1", None), "rate.base_currency_code"),
            (request("USD", "usd", "1", None), "rate.quote_currency_code"),
            (request("USD", "USD", "1", None), "rate.quote_currency_code"),
            (
                request("USD", "EUR", "1", Some(now.unix_timestamp() + 301)),
                "rate.as_of_time",
            ),
            (
                request("USD", "EUR", "1", Some(946_684_799)),
                "rate.as_of_time",
            ),
        ] {
            assert_eq!(fields(set(&bad).unwrap_err()), [field], "{bad:?}");
        }
        assert!(set(&request("USD", "EUR", "1", Some(hour_ago))).is_ok());
        let mut no_id = request("USD", "EUR", "1", None);
        no_id.request_id.clear();
        assert_eq!(fields(set(&no_id).unwrap_err()), ["request_id"]);
        let no_rate = pb::SetFxRateRequest {
            request_id: "r".into(),
            rate: None,
        };
        assert_eq!(fields(set(&no_rate).unwrap_err()), ["rate"]);
    }

    /// Page tokens carry the last pair and hold only for their filter.
    #[test]
    fn list_pages_resume_after_their_last_pair() {
        let usd = Currency::parse("USD").unwrap();
        let eur = Currency::parse("EUR").unwrap();
        let now = datetime!(2026-12-07 12:00 UTC);
        let stored = StoredRate {
            base: usd,
            quote: eur,
            rate: "0.9238".parse().unwrap(),
            source: "treasury:alice".into(),
            as_of: now,
            update_time: now,
            updater: None,
        };
        let (_, scope) = list_fx_rates(&pb::ListFxRatesRequest {
            base_currency_code: "USD".into(),
            ..Default::default()
        })
        .unwrap();
        let page = rates_page(std::slice::from_ref(&stored), true, &scope);
        let (query, _) = list_fx_rates(&pb::ListFxRatesRequest {
            base_currency_code: "USD".into(),
            page_token: page.next_page_token.clone(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(query.after, Some((usd, eur)));
        assert_eq!(query.base, Some(usd));
        let other_filter = list_fx_rates(&pb::ListFxRatesRequest {
            page_token: page.next_page_token,
            ..Default::default()
        });
        assert_eq!(fields(other_filter.unwrap_err()), ["page_token"]);
        assert!(
            rates_page(&[stored], false, &scope)
                .next_page_token
                .is_empty()
        );
        let too_big = list_fx_rates(&pb::ListFxRatesRequest {
            page_size: 1001,
            ..Default::default()
        });
        assert_eq!(fields(too_big.unwrap_err()), ["page_size"]);
    }
}
