//! HTML built at the server: every text from the APIs goes through [`escape`], and pages share
//! one layout with the person's identity and the navigation.

use std::fmt::Write as _;

use tandem_proto::tandem::r#type::v1 as types;
use tandem_tls::identity::Caller;

/// `text` with `& < > " '` escaped, for element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// An amount as people read it (`20.50 USD`), or an em dash for none.
pub fn money(money: Option<&types::Money>) -> String {
    let Some(money) = money else {
        return "—".to_owned();
    };
    match tandem_money::Currency::parse(&money.currency_code) {
        Ok(currency) => tandem_money::Money::new(currency, money.minor_units).to_string(),
        Err(_) => format!("{} {}", money.minor_units, escape(&money.currency_code)),
    }
}

/// A timestamp as RFC 3339 in UTC, or an em dash for none.
pub fn time(stamp: Option<&prost_types::Timestamp>) -> String {
    stamp
        .and_then(|t| {
            let nanos = i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
            time::OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
        })
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "—".to_owned())
}

/// How long from `start` to `end` (`850 ms`, `2.4 s`, `3 min 5 s`), or an em dash when either
/// is missing or the end is before the start.
pub fn duration_between(
    start: Option<&prost_types::Timestamp>,
    end: Option<&prost_types::Timestamp>,
) -> String {
    let nanos =
        |t: &prost_types::Timestamp| i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos);
    let (Some(start), Some(end)) = (start, end) else {
        return "—".to_owned();
    };
    let ms = (nanos(end) - nanos(start)) / 1_000_000;
    match ms {
        ..0 => "—".to_owned(),
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{}.{} s", ms / 1000, ms % 1000 / 100),
        _ => format!("{} min {} s", ms / 60_000, ms % 60_000 / 1000),
    }
}

/// The pages in the navigation, in order.
const NAVIGATION: [(&str, &str); 8] = [
    ("/payments", "Payments"),
    ("/card-groups", "Card groups"),
    ("/spend", "Spend"),
    ("/failures", "Failures"),
    ("/reconciliation", "Reconciliation"),
    ("/review", "Review"),
    ("/webhooks", "Webhooks"),
    ("/keys", "Keys"),
];

/// Where the page's script is served (the bundle built from `dashboard/web/`).
pub const SCRIPT_PATH: &str = "/assets/dashboard.js";

/// A whole page: `title` (escaped here) over `body` (already HTML), for `person`.
pub fn page(title: &str, person: &Caller, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 2048);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · Tandem</title>\n<style>{STYLE}</style>\n\
         <script src=\"{SCRIPT_PATH}\" defer></script>\n</head>\n<body>\n\
         <a class=\"skip\" href=\"#main\">Skip to content</a>\n\
         <header><a class=\"brand\" href=\"/payments\">Tandem</a>\n<nav aria-label=\"Main\">",
        title = escape(title),
    );
    for (path, name) in NAVIGATION {
        let _ = write!(out, "<a href=\"{path}\">{name}</a> ");
    }
    let _ = write!(
        out,
        "</nav>\n<p class=\"who\">Signed in as <strong>{person}</strong></p></header>\n\
         <main id=\"main\">\n<h1>{title}</h1>\n{body}\n</main>\n</body>\n</html>\n",
        title = escape(title),
        person = escape(&person.to_string()),
    );
    out
}

/// The one style sheet: readable tables, visible keyboard focus.
const STYLE: &str = "body{font-family:system-ui,sans-serif;margin:0;color:#1b1b1b}\
header{display:flex;gap:2rem;align-items:center;padding:.75rem 1.5rem;background:#f3f4f6}\
.brand{font-weight:700;text-decoration:none;color:inherit}.who{margin-left:auto}\
main{padding:1rem 1.5rem}table{border-collapse:collapse;margin:.5rem 0 1.5rem}\
th,td{border-bottom:1px solid #ddd;padding:.35rem .75rem;text-align:left}\
td.amount{text-align:right;font-variant-numeric:tabular-nums}\
a:focus,button:focus,input:focus,select:focus{outline:3px solid #2563eb;outline-offset:2px}\
form.filters{display:flex;gap:1rem;align-items:end;flex-wrap:wrap}\
form.filters label{display:flex;flex-direction:column;font-size:.9rem}\
nav a{margin-right:1rem}.skip{position:absolute;left:-10000px}.skip:focus{left:1rem;top:1rem}\
#results[aria-busy=true]{opacity:.5}.unavailable{color:#555}\
ol.timeline{list-style:none;padding:0}ol.timeline li{margin:.4rem 0}\
.track{display:block;height:.5rem;background:#eef;position:relative;max-width:40rem}\
.bar{display:block;height:100%;background:#2563eb}.bar.declined,.bar.error{background:#b91c1c}\
figure.chart{margin:1rem 0 2rem}figure.chart canvas{max-width:60rem}\
form.inline{display:inline-flex;gap:.5rem;align-items:end;margin:0}\
button{padding:.3rem .8rem}";

#[cfg(test)]
mod tests {
    use super::*;

    /// Text from the APIs cannot open an element or leave an attribute.
    #[test]
    fn text_is_escaped() {
        assert_eq!(
            escape("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(
            money(Some(&types::Money {
                currency_code: "USD".into(),
                minor_units: 2050
            })),
            "20.50 USD"
        );
        assert_eq!(money(None), "—");
    }

    /// Durations read as people say them.
    #[test]
    fn durations() {
        let at = |ms: i64| prost_types::Timestamp {
            seconds: ms / 1000,
            nanos: i32::try_from(ms % 1000 * 1_000_000).expect("nanos"),
        };
        let took = |ms: i64| duration_between(Some(&at(1_000)), Some(&at(1_000 + ms)));
        assert_eq!(took(850), "850 ms");
        assert_eq!(took(2_450), "2.4 s");
        assert_eq!(took(185_000), "3 min 5 s");
        assert_eq!(took(-1), "—");
        assert_eq!(duration_between(Some(&at(0)), None), "—");
    }
}
