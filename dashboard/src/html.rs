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

/// A whole page: `title` (escaped here) over `body` (already HTML), for `person`.
pub fn page(title: &str, person: &Caller, body: &str) -> String {
    let mut out = String::with_capacity(body.len() + 1024);
    let _ = write!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{title} · Tandem</title>\n<style>{STYLE}</style>\n</head>\n<body>\n\
         <header><a class=\"brand\" href=\"/payments\">Tandem</a>\n\
         <nav aria-label=\"Main\"><a href=\"/payments\">Payments</a> \
         <a href=\"/card-groups\">Card groups</a></nav>\n\
         <p class=\"who\">Signed in as <strong>{person}</strong></p></header>\n\
         <main>\n<h1>{title}</h1>\n{body}\n</main>\n</body>\n</html>\n",
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
form.filters label{display:flex;flex-direction:column;font-size:.9rem}";

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
}
