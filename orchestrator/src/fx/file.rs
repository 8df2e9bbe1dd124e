//! The rates file (`fx.rates_path`): TOML, one `[[rate]]` table per pair:
//!
//! ```toml
//! [[rate]]
//! base = "USD"
//! quote = "EUR"
//! rate = "0.9238"
//! as_of = "2026-12-07T09:00:00Z"
//! ```
//!
//! The [`Watcher`] reads it at start and then looks every `fx.reload_interval_ms` at its
//! modification time and size; when they changed it reads the file and, if its SHA-256
//! changed too, applies it. The whole file is checked first ([`parse`], by the rule
//! `SetFxRate` uses, plus: `as_of` required, each pair once, at most [`RATES_MAX`] rates and
//! [`FILE_BYTES_MAX`] bytes); a bad file changes nothing and its problems are logged once per
//! change, each with its line or its entry's index, never the file's content; a refused file is
//! checked again every [`REFUSED_RECHECK_LOOKS`] looks even unchanged (an as-of time refused as
//! too far ahead may have come), and applied once it passes. A good file's
//! rates are written in one transaction, each only over an older rate of its pair
//! ([`super::Fx::merge_file`]). Removing a pair from the file leaves its rate as it is.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest as _, Sha256};
use tandem_runtime::fields::Violations;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::io::AsyncReadExt as _;
use tokio::sync::watch;

use super::Fx;
use crate::commands::NewRate;
use crate::config::FxSettings;
use crate::grpc::convert::fx::{RateFields, check_rate};

/// The largest rates file read, in bytes.
pub const FILE_BYTES_MAX: u64 = 1 << 20;
/// The most rates in the file.
pub const RATES_MAX: usize = 10_000;
/// The most problems of one bad file logged (the rest are counted).
const PROBLEMS_LOGGED_MAX: usize = 20;
/// A refused file is checked again, although it did not change, after this many looks: an
/// as-of time refused as too far in the future may have come since.
const REFUSED_RECHECK_LOOKS: u32 = 10;

/// What the file looked like when it was last read: its modification time and size.
type Stamp = (Option<SystemTime>, u64);

/// Watches the rates file and applies it when it changes.
#[derive(Debug)]
pub struct Watcher {
    fx: Arc<Fx>,
    path: PathBuf,
    /// The file's name, as rates from it name their source (`file:<name>`).
    name: String,
    /// The stamp of the last content read and dealt with (applied, or refused and logged).
    stamp: Option<Stamp>,
    /// The SHA-256 of that content.
    hash: Option<[u8; 32]>,
    /// The last problem logged that is not about the content (the file missing, unreadable,
    /// too large; the database failing), so that it is logged once until it changes.
    problem: Option<String>,
    /// The problems of the content last refused, logged once, and the looks since.
    refused: Option<(Vec<String>, u32)>,
}

impl Watcher {
    /// A watcher of `fx.rates_path`; `None` when it is empty (no rates file).
    pub fn new(fx: Arc<Fx>) -> Option<Watcher> {
        let path = fx.settings().rates_path.clone();
        if path.as_os_str().is_empty() {
            return None;
        }
        let name = path.file_name().map_or_else(
            || path.display().to_string(),
            |n| n.to_string_lossy().into(),
        );
        Some(Watcher {
            fx,
            path,
            name,
            stamp: None,
            hash: None,
            problem: None,
            refused: None,
        })
    }

    /// Looks at the file every `fx.reload_interval_ms` until `stop`.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let interval = Duration::from_millis(self.fx.settings().reload_interval_ms);
        loop {
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                _ = stop.changed() => return,
            }
            self.poll().await;
        }
    }

    /// Looks at the file once: reads it if its stamp changed, applies it if its content did.
    pub async fn poll(&mut self) {
        let stamp = match tokio::fs::metadata(&self.path).await {
            Ok(meta) => (meta.modified().ok(), meta.len()),
            Err(e) => {
                // The stamp is forgotten: the file read again once it is back.
                self.stamp = None;
                return self.report(format!("cannot be read: {}", e.kind()));
            }
        };
        let recheck = match self.refused.as_mut() {
            Some((_, looks)) => {
                *looks += 1;
                *looks >= REFUSED_RECHECK_LOOKS
            }
            None => false,
        };
        if self.stamp == Some(stamp) && !recheck {
            return;
        }
        if stamp.1 > FILE_BYTES_MAX {
            self.stamp = Some(stamp);
            return self.report(format!("is larger than {FILE_BYTES_MAX} bytes"));
        }
        let bytes = match read_bounded(&self.path).await {
            Ok(bytes) => bytes,
            Err(e) => return self.report(format!("cannot be read: {}", e.kind())),
        };
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        if self.hash == Some(hash) && !recheck {
            self.stamp = Some(stamp);
            return;
        }
        let rates = match std::str::from_utf8(&bytes) {
            Ok(text) => parse(text, self.fx.settings(), tandem_runtime::time::now_micros()),
            Err(_) => Err(vec!["is not UTF-8".to_owned()]),
        };
        let rates = match rates {
            Ok(rates) => rates,
            Err(problems) => {
                let same = self.hash == Some(hash)
                    && self
                        .refused
                        .as_ref()
                        .is_some_and(|(logged, _)| *logged == problems);
                self.stamp = Some(stamp);
                self.hash = Some(hash);
                self.problem = None;
                if !same {
                    log_refused(&self.name, &problems);
                }
                self.refused = Some((problems, 0));
                return;
            }
        };
        match self.fx.merge_file(&self.name, &rates).await {
            Ok(written) => {
                self.stamp = Some(stamp);
                self.hash = Some(hash);
                self.problem = None;
                self.refused = None;
                tracing::info!(
                    file = %self.name,
                    rates = rates.len(),
                    written,
                    "rates file applied (a rate is written only over an older one)"
                );
            }
            // Not marked as dealt with: the next look tries again.
            Err(e) => self.report(format!("could not be applied: {e}")),
        }
    }

    /// Logs `problem` unless it is the one logged last.
    fn report(&mut self, problem: String) {
        if self.problem.as_ref() != Some(&problem) {
            tracing::warn!(file = %self.path.display(), %problem, "rates file not applied");
            self.problem = Some(problem);
        }
    }
}

/// Reads at most [`FILE_BYTES_MAX`] bytes of `path` (the file may grow after its size was read).
async fn read_bounded(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    let file = tokio::fs::File::open(path).await?;
    let mut bytes = Vec::new();
    file.take(FILE_BYTES_MAX).read_to_end(&mut bytes).await?;
    Ok(bytes)
}

fn log_refused(name: &str, problems: &[String]) {
    for problem in problems.iter().take(PROBLEMS_LOGGED_MAX) {
        tracing::error!(file = %name, %problem, "rates file refused; no rate changed");
    }
    if problems.len() > PROBLEMS_LOGGED_MAX {
        tracing::error!(
            file = %name,
            more = problems.len() - PROBLEMS_LOGGED_MAX,
            "rates file refused: more problems"
        );
    }
}

/// Checks the whole of a rates file's `text` as of `now`: its rates, or every problem found,
/// each naming its line (`line 3: ...`) or its entry and field (`rate[2].quote: ...`), never
/// echoing a value.
pub fn parse(
    text: &str,
    settings: &FxSettings,
    now: OffsetDateTime,
) -> Result<Vec<NewRate>, Vec<String>> {
    let table = match text.parse::<toml::Table>() {
        Ok(table) => table,
        Err(e) => {
            let line = e
                .span()
                .map_or(0, |span| text[..span.start].matches('\n').count() + 1);
            let message = e.message().lines().next().unwrap_or_default().to_owned();
            return Err(vec![format!("line {line}: {message}")]);
        }
    };
    let mut problems = Vec::new();
    let none = Vec::new();
    for key in table.keys().filter(|key| *key != "rate") {
        let key: String = key.chars().take(40).collect();
        problems.push(format!(
            "{key:?}: unknown key; the file holds [[rate]] tables only"
        ));
    }
    let entries = match table.get("rate") {
        None => &none,
        Some(toml::Value::Array(entries)) => entries,
        Some(_) => {
            problems.push("rate: must be an array of tables ([[rate]])".to_owned());
            return Err(problems);
        }
    };
    if entries.len() > RATES_MAX {
        problems.push(format!("rate: at most {RATES_MAX} rates"));
        return Err(problems);
    }
    let mut v = Violations::default();
    let mut rates = Vec::with_capacity(entries.len());
    let mut first_of_pair = HashMap::new();
    for (index, entry) in entries.iter().enumerate() {
        let at = |name: &str| format!("rate[{index}].{name}");
        let Some(entry) = entry.as_table() else {
            v.add(format!("rate[{index}]"), "must be a table");
            continue;
        };
        for key in entry.keys() {
            if !["base", "quote", "rate", "as_of"].contains(&key.as_str()) {
                let key: String = key.chars().take(40).collect();
                v.add(
                    format!("rate[{index}]"),
                    format!("{key:?}: unknown key (base, quote, rate, as_of)"),
                );
            }
        }
        let mut text_of = |name: &str| match entry.get(name) {
            Some(toml::Value::String(text)) => Some(text.clone()),
            Some(_) => {
                v.add(at(name), "must be a string");
                None
            }
            None => {
                v.add(at(name), "is required");
                None
            }
        };
        let (base, quote, rate) = (text_of("base"), text_of("quote"), text_of("rate"));
        let as_of = match entry.get("as_of") {
            Some(toml::Value::String(text)) => OffsetDateTime::parse(text, &Rfc3339).ok(),
            Some(toml::Value::Datetime(time)) => {
                OffsetDateTime::parse(&time.to_string(), &Rfc3339).ok()
            }
            Some(_) => None,
            None => {
                v.add(at("as_of"), "is required");
                continue;
            }
        };
        let Some(as_of) = as_of else {
            v.add(
                at("as_of"),
                "must be an RFC 3339 time with its offset, such as \"2026-12-07T09:00:00Z\"",
            );
            continue;
        };
        let (Some(base), Some(quote), Some(rate)) = (base, quote, rate) else {
            continue;
        };
        let fields = RateFields {
            base: at("base"),
            quote: at("quote"),
            rate: at("rate"),
            as_of: at("as_of"),
        };
        let Some(rate) = check_rate(&mut v, &fields, &base, &quote, &rate, as_of, now, settings)
        else {
            continue;
        };
        if let Some(first) = first_of_pair.insert((rate.base, rate.quote), index) {
            v.add(
                format!("rate[{index}]"),
                format!("repeats the pair of rate[{first}]"),
            );
        }
        rates.push(rate);
    }
    problems.extend(
        v.into_inner()
            .into_iter()
            .map(|violation| format!("{}: {}", violation.field, violation.description)),
    );
    if problems.is_empty() {
        Ok(rates)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    const NOW: OffsetDateTime = datetime!(2026-12-07 12:00 UTC);

    fn check(text: &str) -> Result<Vec<NewRate>, Vec<String>> {
        parse(text, &FxSettings::default(), NOW)
    }

    /// A good file's rates, as strings or TOML datetimes; an empty file has none.
    #[test]
    fn good_files_parse() {
        let rates = check(
            "[[rate]]\nbase = \"USD\"\nquote = \"EUR\"\nrate = \"0.9238\"\n\
             as_of = \"2026-12-07T09:00:00Z\"\n\n[[rate]]\nbase = \"USD\"\nquote = \"JPY\"\n\
             rate = \"149.370\"\nas_of = 2026-12-07T10:00:00+01:00\n",
        )
        .unwrap();
        assert_eq!(rates.len(), 2);
        assert_eq!(rates[0].rate.to_string(), "0.9238");
        assert_eq!(rates[0].as_of, datetime!(2026-12-07 09:00 UTC));
        assert_eq!(rates[1].rate.to_string(), "149.37");
        assert_eq!(rates[1].as_of, datetime!(2026-12-07 09:00 UTC));
        assert_eq!(check("").unwrap(), []);
    }

    /// Each problem names its line or its entry and field, and never echoes a value.
    #[test]
    fn bad_files_name_their_problems() {
        let entry = |base: &str, quote: &str, rate: &str, as_of: &str| {
            format!("[[rate]]\nbase = {base}\nquote = {quote}\nrate = {rate}\nas_of = {as_of}\n")
        };
        let good = entry(
            "\"USD\"",
            "\"EUR\"",
            "\"0.9238\"",
            "\"2026-12-07T09:00:00Z\"",
        );
        for (text, expected) in [
            ("[[rate]\nbase = \"USD\"".to_owned(), "line 1: "),
            (
                format!("{good}\nsecret = \"x\"\n"),
                "rate[0]: \"secret\": unknown key",
            ),
            (
                format!("{good}{good}"),
                "rate[1]: repeats the pair of rate[0]",
            ),
            (
                entry("\"USD\"", "\"EUR\"", "0.9238", "\"2026-12-07T09:00:00Z\""),
                "rate[0].rate: must be a string",
            ),
            (
                entry("\"USD\"", "\"EUR\"", "\"0\"", "\"2026-12-07T09:00:00Z\""),
                "rate[0].rate: must be positive",
            ),
            (
                entry(
                    "\"USD\"",
                    "\"EUR\"",
                    "\"5000000\"",
                    "\"2026-12-07T09:00:00Z\"",
                ),
                "rate[0].rate: must be from",
            ),
            (
                entry("\"USD\"", "\"USD\"", "\"1\"", "\"2026-12-07T09:00:00Z\""),
                "rate[0].quote: must differ",
            ),
            (
                entry("\"USD\"", "\"ZZZ\"", "\"1\"", "\"2026-12-07T09:00:00Z\""),
                "rate[0].quote: must be a known",
            ),
            (
                entry("\"USD\"", "\"EUR\"", "\"1\"", "\"2026-12-07T13:00:00Z\""),
                "rate[0].as_of: must be from 2000",
            ),
            (
                entry("\"USD\"", "\"EUR\"", "\"1\"", "\"yesterday\""),
                "rate[0].as_of: must be an RFC 3339",
            ),
            (
                "[[rate]]\nbase = \"USD\"\n".to_owned(),
                "rate[0].quote: is required",
            ),
            ("rate = 3\n".to_owned(), "rate: must be an array"),
        ] {
            let problems = check(&text).unwrap_err();
            assert!(
                problems.iter().any(|p| p.starts_with(expected)),
                "{expected}: {problems:?}"
            );
            assert!(
                !problems.iter().any(|p| p.contains("0.9238")),
                "a value echoed: {problems:?}"
            );
        }
        let late =
            format!("{good}\n[[rate]]\nbase = \"USD\"\nquote = \"EUR\"\nrate = \"1\"\nas_of = \n");
        let problems = check(&late).unwrap_err();
        assert!(problems[0].starts_with("line 11: "), "{problems:?}");
    }
}
