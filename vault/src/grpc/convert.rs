//! Wire messages to checked domain types and back. Input is checked once, here: every
//! violation is collected with the field it concerns, and a request becomes a domain command
//! only when it has none.

use tandem_proto::tandem::vault::v1 as pb;
use tandem_runtime::fields::Violations;
use time::{Date, OffsetDateTime};
use zeroize::Zeroize as _;

use crate::domain::{
    Brand, CardSecret, CardSelector, CardView, Expiry, Fingerprint, HolderName, Pan, Reason,
    RequestId, Token, TokenState, TokenizeCommand, UpdateCardCommand,
};
use crate::error::Error;
use crate::storage::tokens::CardFilter;

/// Checks a `TokenizeRequest`, wiping its card fields from the wire message afterwards.
pub fn tokenize(
    mut request: pb::TokenizeRequest,
    today: Date,
    ttl_seconds_max: i64,
) -> Result<TokenizeCommand, Error> {
    let mut v = Violations::default();
    let request_id = v.check("request_id", RequestId::parse(&request.request_id));
    let pan = v.check("pan", Pan::parse(&request.pan));
    let expiry = expiry(&mut v, request.expiry_month, request.expiry_year, today);
    let holder_name = v.check("holder_name", HolderName::parse(&request.holder_name));
    let ttl = v.check(
        "ttl_seconds",
        match request.ttl_seconds {
            0 => Ok(None),
            s if (1..=ttl_seconds_max).contains(&s) => Ok(Some(time::Duration::seconds(s))),
            _ => Err(format!("must be 0 (no expiry) or 1 to {ttl_seconds_max}")),
        },
    );
    request.pan.zeroize();
    request.holder_name.zeroize();
    v.finish_with(|| {
        Some(TokenizeCommand {
            request_id: request_id?,
            secret: CardSecret {
                pan: pan?,
                holder_name: holder_name?,
            },
            expiry: expiry?,
            reuse_existing: request.reuse_existing,
            ttl: ttl?,
        })
    })
}

/// Checks an `UpdateCardRequest`, wiping its card fields afterwards.
pub fn update_card(
    mut request: pb::UpdateCardRequest,
    today: Date,
) -> Result<UpdateCardCommand, Error> {
    let mut v = Violations::default();
    let request_id = v.check("request_id", RequestId::parse(&request.request_id));
    let token = v.check("token", Token::parse(&request.token));
    let pan = if request.pan.is_empty() {
        Some(None)
    } else {
        v.check("pan", Pan::parse(&request.pan)).map(Some)
    };
    let expiry = expiry(&mut v, request.expiry_month, request.expiry_year, today);
    let holder_name = if request.holder_name.is_empty() {
        Some(None)
    } else {
        v.check("holder_name", HolderName::parse(&request.holder_name))
            .map(Some)
    };
    request.pan.zeroize();
    request.holder_name.zeroize();
    v.finish_with(|| {
        Some(UpdateCardCommand {
            request_id: request_id?,
            token: token?,
            pan: pan?,
            expiry: expiry?,
            holder_name: holder_name?,
        })
    })
}

/// Checks a `RevokeTokenRequest`.
pub fn revoke_token(request: &pb::RevokeTokenRequest) -> Result<(RequestId, Token, Reason), Error> {
    let mut v = Violations::default();
    let request_id = v.check("request_id", RequestId::parse(&request.request_id));
    let token = v.check("token", Token::parse(&request.token));
    let reason = v.check("reason", Reason::parse(&request.reason));
    v.finish_with(|| Some((request_id?, token?, reason?)))
}

/// Checks a `RevokeByFingerprintRequest`, wiping a PAN afterwards.
pub fn revoke_by_fingerprint(
    mut request: pb::RevokeByFingerprintRequest,
) -> Result<(RequestId, CardSelector, Reason), Error> {
    use pb::revoke_by_fingerprint_request::Card;
    let mut v = Violations::default();
    let request_id = v.check("request_id", RequestId::parse(&request.request_id));
    let selector = match &request.card {
        Some(Card::Fingerprint(text)) => v
            .check("fingerprint", Fingerprint::parse(text))
            .map(CardSelector::Fingerprint),
        Some(Card::Pan(text)) => v.check("pan", Pan::parse(text)).map(CardSelector::Pan),
        None => v.check::<CardSelector, _>("fingerprint", Err("fingerprint or pan is required")),
    };
    let reason = v.check("reason", Reason::parse(&request.reason));
    if let Some(Card::Pan(pan)) = &mut request.card {
        pan.zeroize();
    }
    v.finish_with(|| Some((request_id?, selector?, reason?)))
}

/// Checks a token field.
pub fn token(text: &str) -> Result<Token, Error> {
    Token::parse(text).map_err(|e| Error::invalid("token", e))
}

/// A checked `ListTokensRequest`.
#[derive(Debug)]
pub struct ListQuery {
    /// Filters.
    pub filter: CardFilter,
    /// Continue below this id.
    pub before_id: Option<i64>,
    /// Page size after defaults and clamping.
    pub page_size: u32,
}

/// Checks a `ListTokensRequest` (AIP-158: a page token is valid only with the same filters).
pub fn list_tokens(
    request: &pb::ListTokensRequest,
    page_size_default: u32,
    page_size_max: u32,
) -> Result<ListQuery, Error> {
    let mut v = Violations::default();
    let page_size = v.check(
        "page_size",
        match request.page_size {
            0 => Ok(page_size_default),
            n if n > 0 => Ok((n as u32).min(page_size_max)),
            _ => Err("must not be negative"),
        },
    );
    let fingerprint = if request.fingerprint.is_empty() {
        Some(None)
    } else {
        v.check("fingerprint", Fingerprint::parse(&request.fingerprint))
            .map(Some)
    };
    let state = v.check(
        "state",
        match pb::TokenState::try_from(request.state) {
            Ok(pb::TokenState::Unspecified) => Ok(None),
            Ok(pb::TokenState::Active) => Ok(Some(TokenState::Active)),
            Ok(pb::TokenState::Revoked) => Ok(Some(TokenState::Revoked)),
            Ok(pb::TokenState::Expired) => Ok(Some(TokenState::Expired)),
            Err(_) => Err("is not a known token state"),
        },
    );
    let filter = CardFilter {
        fingerprint: fingerprint.flatten(),
        state: state.flatten(),
    };
    let before_id = if request.page_token.is_empty() {
        Some(None)
    } else {
        v.check(
            "page_token",
            decode_page_token(&request.page_token, &filter)
                .map(Some)
                .ok_or("is not a page token of this query"),
        )
    };
    v.finish_with(|| {
        Some(ListQuery {
            filter,
            before_id: before_id?,
            page_size: page_size?,
        })
    })
}

/// The page token of a token listing: the last id of the page, bound to the filters.
pub fn encode_page_token(before_id: i64, filter: &CardFilter) -> String {
    encode_cursor(before_id, &card_filter_scope(filter))
}

fn decode_page_token(text: &str, filter: &CardFilter) -> Option<i64> {
    decode_cursor(text, &card_filter_scope(filter))
}

fn card_filter_scope(filter: &CardFilter) -> Vec<u8> {
    let mut scope = filter
        .fingerprint
        .map_or([0; 32], |fp| *fp.as_bytes())
        .to_vec();
    scope.extend_from_slice(filter.state.map_or("", TokenState::as_str).as_bytes());
    scope
}

/// A page token (AIP-158) of the vault: the position after the page's last row in the list
/// `scope` (the RPC and its filters), which a token used with other filters does not decode.
pub(crate) fn encode_cursor(position: i64, scope: &[u8]) -> String {
    tandem_runtime::pages::encode(PAGES, scope, &position.to_be_bytes())
}

/// The position in a page token of the list `scope`, if it is one.
pub(crate) fn decode_cursor(text: &str, scope: &[u8]) -> Option<i64> {
    let position = tandem_runtime::pages::decode(PAGES, scope, text)?;
    let position = i64::from_be_bytes(position.try_into().ok()?);
    (position > 0).then_some(position)
}

/// The service the vault's page tokens belong to.
const PAGES: &str = "tandem/vault";

fn expiry(v: &mut Violations, month: i32, year: i32, today: Date) -> Option<Expiry> {
    use crate::domain::ExpiryError;
    match Expiry::new(month, year, today) {
        Ok(expiry) => Some(expiry),
        Err(e @ ExpiryError::Month) => v.check("expiry_month", Err(e)),
        Err(e @ (ExpiryError::Year | ExpiryError::Expired)) => v.check("expiry_year", Err(e)),
    }
}

/// A card as clients see it.
pub fn card(view: &CardView) -> pb::Card {
    pb::Card {
        token: view.token.as_str().to_owned(),
        brand: brand(view.brand) as i32,
        bin: view.bin.clone(),
        last4: view.last4.clone(),
        expiry_month: i32::from(view.expiry.month()),
        expiry_year: view.expiry.year(),
        fingerprint: view.fingerprint.to_hex(),
        state: match view.state {
            TokenState::Active => pb::TokenState::Active,
            TokenState::Revoked => pb::TokenState::Revoked,
            TokenState::Expired => pb::TokenState::Expired,
        } as i32,
        create_time: Some(timestamp(view.created_at)),
        update_time: Some(timestamp(view.updated_at)),
        expire_time: view.expires_at.map(timestamp),
    }
}

pub(crate) fn brand(brand: Brand) -> pb::CardBrand {
    match brand {
        Brand::Visa => pb::CardBrand::Visa,
        Brand::Mastercard => pb::CardBrand::Mastercard,
        Brand::Amex => pb::CardBrand::Amex,
        Brand::Discover => pb::CardBrand::Discover,
        Brand::Jcb => pb::CardBrand::Jcb,
        Brand::UnionPay => pb::CardBrand::Unionpay,
        Brand::Diners => pb::CardBrand::Diners,
    }
}

/// An optional day, "YYYY-MM-DD"; empty is `None`.
pub(crate) fn date(text: &str) -> Result<Option<Date>, &'static str> {
    if text.is_empty() {
        return Ok(None);
    }
    let format = time::macros::format_description!("[year]-[month]-[day]");
    Date::parse(text, format)
        .map(Some)
        .map_err(|_| "must be a date YYYY-MM-DD")
}

/// A required day, "YYYY-MM-DD".
pub(crate) fn required_date(text: &str) -> Result<Date, &'static str> {
    date(text)?.ok_or("is required (YYYY-MM-DD)")
}

pub(crate) fn timestamp(time: OffsetDateTime) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.unix_timestamp(),
        nanos: time.nanosecond() as i32,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::date;

    const TODAY: Date = date!(2026 - 11 - 23);

    fn fields(error: Error) -> Vec<String> {
        match error {
            Error::InvalidArgument(violations) => violations.into_iter().map(|v| v.field).collect(),
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    /// Every bad field of a tokenize request is reported at once, each under its own name,
    /// and no description echoes the card number.
    #[test]
    fn tokenize_reports_every_field() {
        let request = pb::TokenizeRequest {
            request_id: String::new(),
            pan: "4242424242424241".into(),
            expiry_month: 13,
            expiry_year: 2030,
            holder_name: "bad\u{0}name".into(),
            reuse_existing: false,
            ttl_seconds: -5,
        };
        let error = tokenize(request, TODAY, 3600).unwrap_err();
        assert!(!format!("{error:?}").contains("4242424242424241"));
        assert_eq!(
            fields(error),
            [
                "request_id",
                "pan",
                "expiry_month",
                "holder_name",
                "ttl_seconds"
            ]
        );
    }

    /// An expired card is reported on `expiry_year`.
    #[test]
    fn expired_card_is_refused() {
        let request = pb::TokenizeRequest {
            request_id: "r1".into(),
            pan: "4242424242424242".into(),
            expiry_month: 10,
            expiry_year: 2026,
            ..Default::default()
        };
        assert_eq!(
            fields(tokenize(request, TODAY, 3600).unwrap_err()),
            ["expiry_year"]
        );
    }

    /// Page tokens round-trip with the same filters and are refused with others.
    #[test]
    fn page_tokens_are_bound_to_filters() {
        let filter = CardFilter::default();
        let other = CardFilter {
            state: Some(TokenState::Revoked),
            ..CardFilter::default()
        };
        let token = encode_page_token(42, &filter);
        assert_eq!(decode_page_token(&token, &filter), Some(42));
        assert_eq!(decode_page_token(&token, &other), None);
        assert_eq!(decode_page_token("not-a-token", &filter), None);
        let request = pb::ListTokensRequest {
            page_token: token,
            state: pb::TokenState::Revoked as i32,
            ..Default::default()
        };
        assert_eq!(
            fields(list_tokens(&request, 50, 100).unwrap_err()),
            ["page_token"]
        );
    }

    /// Page sizes default, clamp, and refuse negatives.
    #[test]
    fn page_size_rules() {
        let size = |n| {
            list_tokens(
                &pb::ListTokensRequest {
                    page_size: n,
                    ..Default::default()
                },
                50,
                100,
            )
            .map(|q| q.page_size)
        };
        assert_eq!(size(0).unwrap(), 50);
        assert_eq!(size(7).unwrap(), 7);
        assert_eq!(size(1000).unwrap(), 100);
        assert_eq!(fields(size(-1).unwrap_err()), ["page_size"]);
    }
}
