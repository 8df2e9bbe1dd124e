//! The pages: each reads what it shows through [`crate::api`] as the person, and renders it
//! with [`crate::html`]. Filters live in the URL's query string, so a view can be saved and
//! shared; the results of a filtered page sit in `#results`, which the page's script replaces
//! without a reload. Forms that change something post to the page's own path (see
//! [`crate::forms`]).

pub mod card_groups;
pub mod failures;
pub mod keys;
pub mod payments;
pub mod reconciliation;
pub mod review;
pub mod spend;
pub mod webhooks;

use tandem_tls::identity::Role;

use crate::api::ApiError;

/// Rows per page of a list.
pub const PAGE_SIZE: i32 = 50;
/// Longest value read from a query string, in bytes (page tokens may be longer: 4 times).
pub const FILTER_BYTES_MAX: usize = 128;

/// What a page answers: its HTML, or why not.
pub type Page = Result<String, ApiError>;

/// An enum value's name without its prefix (`ACTIVE` for `CARD_GROUP_STATE_ACTIVE`).
pub fn bare<'a>(name: &'a str, prefix: &str) -> &'a str {
    name.strip_prefix(prefix).unwrap_or(name)
}

/// The values of a query string's known keys, each at most [`FILTER_BYTES_MAX`] bytes
/// (`page_token` four times that), trimmed; unknown keys are ignored.
#[derive(Debug, Default)]
pub struct Query {
    pairs: Vec<(&'static str, String)>,
}

impl Query {
    /// The values of `keys` in `query`.
    pub fn parse(query: Option<&str>, keys: &[&'static str]) -> Result<Query, ApiError> {
        let mut pairs = Vec::new();
        for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let Some(known) = keys.iter().find(|k| **k == key) else {
                continue;
            };
            let max = if *known == "page_token" {
                FILTER_BYTES_MAX * 4
            } else {
                FILTER_BYTES_MAX
            };
            if value.len() > max {
                return Err(ApiError::Invalid(format!("{key} is too long")));
            }
            pairs.push((*known, value.trim().to_owned()));
        }
        Ok(Query { pairs })
    }

    /// The value of `key`, or empty.
    pub fn get(&self, key: &str) -> String {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
}

/// The query string of `pairs`, empty values left out.
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut out = url::form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs.iter().filter(|(_, v)| !v.is_empty()) {
        out.append_pair(key, value);
    }
    out.finish()
}

/// A change a page can offer, and the one role the service lets make it. A page shows the
/// form only to that role (the service decides in any case: a post of another role is
/// refused by the service, not just hidden here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// `ProposeAdjustment`.
    ProposeAdjustment,
    /// `ApproveAdjustment` and `RejectAdjustment`.
    DecideAdjustment,
    /// `ReviewPayment`.
    ReviewPayment,
}

impl Change {
    /// Whether `role` is the one this change is offered to.
    pub fn offered_to(self, role: Role) -> bool {
        role == match self {
            Change::ProposeAdjustment => Role::Treasury,
            Change::DecideAdjustment => Role::Approver,
            Change::ReviewPayment => Role::Reviewer,
        }
    }
}

/// A date `YYYY-MM-DD` from a form or query string, or `None` when empty.
pub fn date(field: &str, value: &str) -> Result<Option<time::Date>, ApiError> {
    if value.is_empty() {
        return Ok(None);
    }
    time::Date::parse(
        value,
        time::macros::format_description!("[year]-[month]-[day]"),
    )
    .map(Some)
    .map_err(|_| ApiError::Invalid(format!("{field} must be a date YYYY-MM-DD")))
}

/// The UTC midnight starting `date`, as protobuf has it.
pub fn midnight(date: time::Date) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: date.midnight().assume_utc().unix_timestamp(),
        nanos: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known keys only, trimmed, the last value of a repeated key; long values refused.
    #[test]
    fn query_strings() {
        let query = Query::parse(Some("a=+x+&b=y&a=z&c=w"), &["a", "b"]).expect("parsed");
        assert_eq!(query.get("a"), "z");
        assert_eq!(query.get("b"), "y");
        assert_eq!(query.get("c"), "");
        let long = format!("a={}", "x".repeat(FILTER_BYTES_MAX + 1));
        assert!(Query::parse(Some(&long), &["a"]).is_err());
        let token = format!("page_token={}", "x".repeat(FILTER_BYTES_MAX + 1));
        assert!(Query::parse(Some(&token), &["page_token"]).is_ok());
        assert_eq!(query_string(&[("a", "1 2"), ("b", "")]), "a=1+2");
        assert_eq!(
            date("from", "2026-12-07").expect("date").map(|d| d.day()),
            Some(7)
        );
        assert!(date("from", "07/12/2026").is_err());
        assert!(date("from", "").expect("none").is_none());
    }

    /// Each change is offered to one role, a reader's to none.
    #[test]
    fn changes_are_offered_by_role() {
        assert!(Change::ProposeAdjustment.offered_to(Role::Treasury));
        assert!(!Change::ProposeAdjustment.offered_to(Role::Approver));
        assert!(Change::DecideAdjustment.offered_to(Role::Approver));
        assert!(Change::ReviewPayment.offered_to(Role::Reviewer));
        for change in [
            Change::ProposeAdjustment,
            Change::DecideAdjustment,
            Change::ReviewPayment,
        ] {
            assert!(!change.offered_to(Role::Reader));
        }
    }
}
