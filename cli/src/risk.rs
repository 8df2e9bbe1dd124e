//! `tandemctl risk`: a billing account's risk policy on a running orchestrator
//! (`RiskService`, DESIGN section 12). `show` uses a `treasury` identity, or with `--as-reader`
//! / `--as-reviewer` that one; `set` a `treasury` one, reading the policy from a TOML file (its
//! format is [`file`]'s).
//!
//! ```text
//! tandemctl risk show --billing-account acme [--as-reader | --as-reviewer] [--format text|json|toml]
//! tandemctl risk set --billing-account acme --file policy.toml [--version 3] [--request-id ID]
//! ```
//!
//! `show` prints the account's policy, or the default one when it has none of its own: for
//! people a short block with one line per rule, `--format json` one JSON object (the file's keys,
//! the proto's output-only fields, amounts in minor units), `--format toml` a policy file that
//! `set` reads back (start a policy from the default with it). `set` replaces the account's
//! policy; with `--version` only if that is still its version, so that two people editing the
//! same policy do not overwrite each other. It takes `--request-id` (a new UUID by default, not
//! derived from the file: setting a file, another, then the first again must set it again) and
//! names it when it fails: re-running with the same id is safe. `--account` is short for
//! `--billing-account`.

mod file;

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::risk_rule::Kind;
use tandem_proto::tandem::orchestrator::v1::risk_service_client::RiskServiceClient;
use tandem_tls::identity::Role;

use crate::amounts::show;
use crate::connect::{CALL_TIMEOUT, OrchestratorTarget, failure, orchestrator_channel, request_id};
use crate::print::{column_width, rfc3339, show_actor, show_time, value_name};

/// The largest policy file read: 32 rules take a few KiB.
const POLICY_FILE_BYTES_MAX: u64 = 64 * 1024;

/// Where the orchestrator is and which identity reads policies.
#[derive(Debug, clap::Args)]
pub(crate) struct ReadTarget {
    #[command(flatten)]
    target: OrchestratorTarget,
    /// Use the reader identity instead of the treasury one.
    #[arg(long, conflicts_with = "as_reviewer")]
    as_reader: bool,
    /// Use the reviewer identity instead of the treasury one.
    #[arg(long)]
    as_reviewer: bool,
}

impl ReadTarget {
    fn role(&self) -> Role {
        match (self.as_reader, self.as_reviewer) {
            (true, _) => Role::Reader,
            (false, true) => Role::Reviewer,
            (false, false) => Role::Treasury,
        }
    }
}

/// How `risk show` prints a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum PolicyFormat {
    /// A short block for people, one line per rule.
    Text,
    /// One JSON object: the file's keys and the policy's version, updater and update time.
    Json,
    /// A policy file that `risk set` reads back.
    Toml,
}

/// The risk policy commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum RiskCommand {
    /// Show a billing account's risk policy (the default one if it has none of its own).
    Show {
        #[command(flatten)]
        target: ReadTarget,
        /// The billing account.
        #[arg(long = "billing-account", visible_alias = "account", value_name = "ID")]
        billing_account_id: String,
        /// How to print the policy.
        #[arg(long, value_enum, default_value_t = PolicyFormat::Text)]
        format: PolicyFormat,
    },
    /// Replace a billing account's risk policy with the one in a TOML file.
    Set {
        #[command(flatten)]
        target: OrchestratorTarget,
        /// The billing account.
        #[arg(long = "billing-account", visible_alias = "account", value_name = "ID")]
        billing_account_id: String,
        /// The policy file (see `tandemctl risk show --format toml` for one to start from).
        #[arg(long)]
        file: PathBuf,
        /// Replace the policy only if this is still its version (as `risk show` prints it).
        #[arg(long = "version", value_name = "N", value_parser = clap::value_parser!(i64).range(1..))]
        expected_version: Option<i64>,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
}

/// Runs a risk policy command.
pub(crate) async fn run(command: RiskCommand) -> anyhow::Result<()> {
    match command {
        RiskCommand::Show {
            target,
            billing_account_id,
            format,
        } => {
            let channel = orchestrator_channel(&target.target, target.role(), CALL_TIMEOUT).await?;
            let policy = RiskServiceClient::new(channel)
                .get_risk_policy(pb::GetRiskPolicyRequest {
                    billing_account_id: billing_account_id.clone(),
                })
                .await
                .map_err(failure)?
                .into_inner()
                .policy
                .context("no policy in the response")?;
            match format {
                PolicyFormat::Text => println!("{}", render_policy(&billing_account_id, &policy)),
                PolicyFormat::Json => println!("{}", policy_json(&billing_account_id, &policy)),
                PolicyFormat::Toml => {
                    print!("{}", policy_file(&billing_account_id, &policy)?);
                }
            }
        }
        RiskCommand::Set {
            target,
            billing_account_id,
            file,
            expected_version,
            request_id: given_id,
        } => {
            let mut policy = file::parse(&read_policy_file(&file)?)
                .with_context(|| format!("reading the policy file {}", file.display()))?;
            policy.version = expected_version.unwrap_or(0);
            let rules = policy.rules.clone();
            let id = request_id(given_id);
            let channel = orchestrator_channel(&target, Role::Treasury, CALL_TIMEOUT).await?;
            let policy = RiskServiceClient::new(channel)
                .set_risk_policy(pb::SetRiskPolicyRequest {
                    request_id: id.clone(),
                    billing_account_id: billing_account_id.clone(),
                    policy: Some(policy),
                })
                .await
                .map_err(|status| {
                    let fields = bad_fields(&status);
                    let error = failure(status);
                    match rule_positions(&fields, &rules) {
                        Some(positions) => anyhow::anyhow!("{error}; {positions}"),
                        None => error,
                    }
                })
                .with_context(|| {
                    format!(
                        "setting the risk policy of {billing_account_id} from {} (request {id})",
                        file.display()
                    )
                })?
                .into_inner()
                .policy
                .context("no policy in the response")?;
            println!("{}", render_policy(&billing_account_id, &policy));
        }
    }
    Ok(())
}

/// The text of a policy file, at most [`POLICY_FILE_BYTES_MAX`] bytes.
fn read_policy_file(path: &Path) -> anyhow::Result<String> {
    let opened = std::fs::File::open(path)
        .with_context(|| format!("cannot open the policy file {}", path.display()))?;
    let mut text = String::new();
    opened
        .take(POLICY_FILE_BYTES_MAX + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("cannot read the policy file {} as UTF-8", path.display()))?;
    anyhow::ensure!(
        text.len() as u64 <= POLICY_FILE_BYTES_MAX,
        "the policy file {} is over {POLICY_FILE_BYTES_MAX} bytes",
        path.display()
    );
    Ok(text)
}

/// The fields an INVALID_ARGUMENT names.
fn bad_fields(status: &tonic::Status) -> Vec<String> {
    use tonic_types::StatusExt as _;
    status
        .get_details_bad_request()
        .map(|bad| bad.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

/// Which `[[rule]]` of the file each `policy.rules[N]` that `fields` name is, since the
/// orchestrator counts rules from 0 and people look for them by name:
/// `policy.rules[1] is [[rule]] 2 "account_burst"`. `None` when no field names a rule.
fn rule_positions(fields: &[String], rules: &[pb::RiskRule]) -> Option<String> {
    let mut indexes: Vec<usize> = fields
        .iter()
        .filter_map(|field| {
            let rest = field.strip_prefix("policy.rules[")?;
            rest[..rest.find(']')?].parse().ok()
        })
        .collect();
    indexes.sort_unstable();
    indexes.dedup();
    let named: Vec<String> = indexes
        .into_iter()
        .filter_map(|index| {
            let rule = rules.get(index)?;
            Some(format!(
                "policy.rules[{index}] is [[rule]] {} {:?}",
                index + 1,
                rule.name
            ))
        })
        .collect();
    (!named.is_empty()).then(|| named.join(", "))
}

/// A rule action's name: `review`.
pub(crate) fn action_name(action: i32) -> String {
    value_name(action, "RISK_ACTION_", pb::RiskAction::as_str_name)
}

/// A payment's assessment in one line: `risk: REVIEW, score 60 (policy version 3)`.
pub(crate) fn assessment_line(risk: &pb::RiskAssessment) -> String {
    format!(
        "risk: {}, score {} ({})",
        action_name(risk.action).to_uppercase(),
        risk.score,
        if risk.default_policy {
            "default policy".to_owned()
        } else {
            format!("policy version {}", risk.policy_version)
        }
    )
}

/// A rule that fired, for people: `big_amount (review, +50): 5400.00 USD is over 5 x ...`,
/// the orchestrator's explanation, or its feature, value and threshold when it sent none.
pub(crate) fn fired_line(fired: &pb::RiskRuleFired) -> String {
    let why = if fired.explanation.is_empty() {
        format!("{} {} over {}", fired.feature, fired.value, fired.threshold)
    } else {
        fired.explanation.clone()
    };
    format!(
        "{} ({}, +{}): {why}",
        fired.rule,
        action_name(fired.action),
        fired.score
    )
}

/// A window as the orchestrator names it in features (`10m`, `1h`, `24h`), any other length in
/// seconds, `-` when unset.
fn window_name(window: Option<&prost_types::Duration>) -> String {
    match window.map(|w| (w.seconds, w.nanos)) {
        None => "-".to_owned(),
        Some((600, 0)) => "10m".to_owned(),
        Some((3_600, 0)) => "1h".to_owned(),
        Some((86_400, 0)) => "24h".to_owned(),
        Some((seconds, 0)) => format!("{seconds}s"),
        Some((seconds, nanos)) => format!("{seconds}.{nanos:09}s"),
    }
}

fn scope_name(scope: i32) -> String {
    value_name(scope, "RISK_SCOPE_", pb::RiskScope::as_str_name)
}

/// What a rule looks at, with its settings: `velocity billing_account payments over 10m > 100`.
fn describe_kind(rule: &pb::RiskRule) -> String {
    match &rule.kind {
        None => "unknown kind (newer than this tandemctl)".to_owned(),
        Some(Kind::Velocity(velocity)) => {
            let (what, limit) = match (velocity.count_max, velocity.sum_max.as_ref()) {
                (Some(count), _) => ("payments", count.to_string()),
                (None, Some(sum)) => ("amount", show(Some(sum))),
                (None, None) => ("payments", "-".to_owned()),
            };
            format!(
                "velocity {} {what} over {} > {limit}",
                scope_name(velocity.scope),
                window_name(velocity.window.as_ref())
            )
        }
        Some(Kind::DeclineBurst(burst)) => format!(
            "decline_burst {} declines over {} > {}",
            scope_name(burst.scope),
            window_name(burst.window.as_ref()),
            burst.count_max
        ),
        Some(Kind::AmountOverMedian(median)) => format!(
            "amount_over_median amount > {}x median, history_min {}",
            median.multiple, median.history_min
        ),
        Some(Kind::FirstCardUse(_)) => "first_card_use".to_owned(),
        Some(Kind::OutsideBusinessHours(_)) => "outside_business_hours".to_owned(),
    }
}

/// A score threshold: the number, `0 (off)` for none.
fn threshold(score: i32) -> String {
    if score == 0 {
        "0 (off)".to_owned()
    } else {
        score.to_string()
    }
}

/// ISO weekdays as `Mon-Fri` when they follow each other, `Mon, Wed, Fri` otherwise; none is
/// Monday to Friday (the proto's default).
fn weekdays(days: &[i32]) -> String {
    const NAMES: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let name = |day: i32| {
        usize::try_from(day - 1)
            .ok()
            .and_then(|i| NAMES.get(i))
            .map_or_else(|| format!("day {day}"), |n| (*n).to_owned())
    };
    let mut days = days.to_vec();
    if days.is_empty() {
        days = vec![1, 2, 3, 4, 5];
    }
    days.sort_unstable();
    let consecutive = days.windows(2).all(|pair| pair[1] == pair[0] + 1);
    match (days.first(), days.last()) {
        (Some(first), Some(last)) if consecutive && days.len() > 2 => {
            format!("{}-{}", name(*first), name(*last))
        }
        _ => days.into_iter().map(name).collect::<Vec<_>>().join(", "),
    }
}

fn hours_line(hours: Option<&pb::BusinessHours>) -> String {
    hours.map_or_else(
        || "business hours: none".to_owned(),
        |h| {
            format!(
                "business hours {:02}:00-{:02}:00 {} {}",
                h.start_hour,
                h.end_hour,
                weekdays(&h.weekdays),
                h.time_zone
            )
        },
    )
}

/// Whose policy it is and which: the default, or a version and who set it when.
fn origin(account: &str, policy: &pb::RiskPolicy) -> String {
    if policy.default_policy {
        format!("risk policy of {account}: the default (the account has none of its own)")
    } else {
        format!(
            "risk policy of {account}: version {}, set {} by {}",
            policy.version,
            show_time(policy.update_time.as_ref().map(|t| t.seconds)),
            show_actor(policy.updater.as_ref())
        )
    }
}

/// A policy for people: where it comes from, its thresholds and business hours, and a table
/// of its rules, one line each.
fn render_policy(account: &str, policy: &pb::RiskPolicy) -> String {
    let mut lines = vec![
        origin(account, policy),
        format!(
            "review_score {}, block_score {}",
            threshold(policy.review_score),
            threshold(policy.block_score)
        ),
        hours_line(policy.business_hours.as_ref()),
    ];
    if policy.rules.is_empty() {
        lines.push("no rules: every payment is allowed".to_owned());
        return lines.join("\n");
    }
    let kinds: Vec<String> = policy.rules.iter().map(describe_kind).collect();
    let name_width = column_width("rule", policy.rules.iter().map(|r| r.name.as_str()));
    let kind_width = column_width("kind", kinds.iter().map(String::as_str));
    lines.push(String::new());
    lines.push(format!(
        "{:<name_width$}  {:<kind_width$}  {:<6}  score",
        "rule", "kind", "action"
    ));
    for (rule, kind) in policy.rules.iter().zip(&kinds) {
        lines.push(format!(
            "{:<name_width$}  {kind:<kind_width$}  {:<6}  {:>5}",
            rule.name,
            action_name(rule.action),
            rule.score
        ));
    }
    lines.join("\n")
}

/// A policy for machines: one JSON object with the file's keys (rules under `rules`), the
/// proto's output-only fields, amounts in minor units and times in RFC 3339.
fn policy_json(account: &str, policy: &pb::RiskPolicy) -> serde_json::Value {
    use serde_json::json;
    let money = |m: &tandem_proto::tandem::r#type::v1::Money| json!({"currency_code": m.currency_code, "minor_units": m.minor_units});
    let rules: Vec<serde_json::Value> = policy
        .rules
        .iter()
        .map(|rule| {
            let mut object = json!({
                "name": rule.name,
                "action": action_name(rule.action),
                "score": rule.score,
            });
            let settings = match &rule.kind {
                None => json!({"kind": "unknown"}),
                Some(Kind::Velocity(v)) => json!({
                    "kind": "velocity",
                    "scope": scope_name(v.scope),
                    "window": window_name(v.window.as_ref()),
                    "count_max": v.count_max,
                    "sum_max": v.sum_max.as_ref().map(money),
                }),
                Some(Kind::DeclineBurst(d)) => json!({
                    "kind": "decline_burst",
                    "scope": scope_name(d.scope),
                    "window": window_name(d.window.as_ref()),
                    "count_max": d.count_max,
                }),
                Some(Kind::AmountOverMedian(m)) => json!({
                    "kind": "amount_over_median",
                    "multiple": m.multiple,
                    "history_min": m.history_min,
                }),
                Some(Kind::FirstCardUse(_)) => json!({"kind": "first_card_use"}),
                Some(Kind::OutsideBusinessHours(_)) => json!({"kind": "outside_business_hours"}),
            };
            if let (Some(object), serde_json::Value::Object(settings)) =
                (object.as_object_mut(), settings)
            {
                object.extend(settings);
            }
            object
        })
        .collect();
    let updater = policy.updater.as_ref();
    json!({
        "billing_account_id": account,
        "default_policy": policy.default_policy,
        "version": policy.version,
        "update_time": policy.update_time.as_ref().and_then(rfc3339),
        "updater_name": updater.map_or("", |a| a.name.as_str()),
        "updater_role": updater.map_or("", |a| a.role.as_str()),
        "review_score": policy.review_score,
        "block_score": policy.block_score,
        "business_hours": policy.business_hours.as_ref().map(|h| json!({
            "time_zone": h.time_zone,
            "start_hour": h.start_hour,
            "end_hour": h.end_hour,
            "weekdays": h.weekdays,
        })),
        "rules": rules,
    })
}

/// A policy as a file for `risk set`, with a comment saying whose it is and how to set it back.
fn policy_file(account: &str, policy: &pb::RiskPolicy) -> anyhow::Result<String> {
    let body = file::write(policy).context("this policy cannot be written as a file")?;
    let set = if policy.default_policy {
        format!("tandemctl risk set --billing-account {account} --file FILE")
    } else {
        format!(
            "tandemctl risk set --billing-account {account} --file FILE --version {}",
            policy.version
        )
    };
    Ok(format!(
        "# {}\n# Edit, then: {set}\n\n{body}",
        origin(account, policy)
    ))
}

#[cfg(test)]
mod tests {
    use tandem_proto::tandem::r#type::v1 as types;

    use super::*;

    fn window(seconds: i64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration { seconds, nanos: 0 })
    }

    fn rule(name: &str, action: pb::RiskAction, score: i32, kind: Kind) -> pb::RiskRule {
        pb::RiskRule {
            name: name.to_owned(),
            action: action.into(),
            score,
            kind: Some(kind),
        }
    }

    fn policy() -> pb::RiskPolicy {
        pb::RiskPolicy {
            billing_account_id: "acme".to_owned(),
            rules: vec![
                rule(
                    "big_amount",
                    pb::RiskAction::Review,
                    50,
                    Kind::AmountOverMedian(pb::AmountOverMedianRule {
                        multiple: "5".to_owned(),
                        history_min: 20,
                    }),
                ),
                rule(
                    "account_burst",
                    pb::RiskAction::Allow,
                    20,
                    Kind::Velocity(pb::VelocityRule {
                        scope: pb::RiskScope::BillingAccount.into(),
                        window: window(600),
                        count_max: Some(100),
                        sum_max: None,
                    }),
                ),
                rule(
                    "night",
                    pb::RiskAction::Block,
                    0,
                    Kind::OutsideBusinessHours(pb::OutsideBusinessHoursRule {}),
                ),
            ],
            review_score: 60,
            block_score: 0,
            business_hours: Some(pb::BusinessHours {
                time_zone: "Europe/Berlin".to_owned(),
                start_hour: 9,
                end_hour: 18,
                weekdays: vec![1, 2, 3, 4, 5],
            }),
            default_policy: false,
            version: 3,
            update_time: Some(prost_types::Timestamp {
                seconds: 1_735_689_600,
                nanos: 0,
            }),
            updater: Some(types::Actor {
                name: "alice".to_owned(),
                role: "treasury".to_owned(),
            }),
        }
    }

    /// Each kind prints with its settings in one phrase: scope, what is counted, window and
    /// limit; the multiple and history; nothing for kinds without settings.
    #[test]
    fn rule_kinds() {
        let describe = |kind| describe_kind(&rule("r", pb::RiskAction::Allow, 0, kind));
        for (kind, expected) in [
            (
                Kind::Velocity(pb::VelocityRule {
                    scope: pb::RiskScope::BillingAccount.into(),
                    window: window(600),
                    count_max: Some(100),
                    sum_max: None,
                }),
                "velocity billing_account payments over 10m > 100",
            ),
            (
                Kind::Velocity(pb::VelocityRule {
                    scope: pb::RiskScope::Card.into(),
                    window: window(86_400),
                    count_max: None,
                    sum_max: Some(types::Money {
                        currency_code: "USD".to_owned(),
                        minor_units: 500_000,
                    }),
                }),
                "velocity card amount over 24h > 5000.00 USD",
            ),
            (
                Kind::DeclineBurst(pb::DeclineBurstRule {
                    scope: pb::RiskScope::CardGroup.into(),
                    window: window(3_600),
                    count_max: 5,
                }),
                "decline_burst card_group declines over 1h > 5",
            ),
            (
                Kind::AmountOverMedian(pb::AmountOverMedianRule {
                    multiple: "2.5".to_owned(),
                    history_min: 20,
                }),
                "amount_over_median amount > 2.5x median, history_min 20",
            ),
            (
                Kind::FirstCardUse(pb::FirstCardUseRule {}),
                "first_card_use",
            ),
            (
                Kind::DeclineBurst(pb::DeclineBurstRule {
                    scope: 9,
                    window: window(7_200),
                    count_max: 1,
                }),
                "decline_burst unknown(9) declines over 7200s > 1",
            ),
        ] {
            assert_eq!(describe(kind), expected);
        }
        assert_eq!(
            describe_kind(&pb::RiskRule::default()),
            "unknown kind (newer than this tandemctl)"
        );
    }

    /// A policy prints its version and updater, its thresholds (0 as off), its business hours
    /// and one aligned line per rule: name, kind with settings, action, score.
    #[test]
    fn policy_rendering() {
        assert_eq!(
            render_policy("acme", &policy()),
            "\
risk policy of acme: version 3, set 2025-01-01T00:00:00Z by alice (treasury)
review_score 60, block_score 0 (off)
business hours 09:00-18:00 Mon-Fri Europe/Berlin

rule           kind                                                   action  score
big_amount     amount_over_median amount > 5x median, history_min 20  review     50
account_burst  velocity billing_account payments over 10m > 100       allow      20
night          outside_business_hours                                 block       0"
        );
        let default = pb::RiskPolicy {
            default_policy: true,
            version: 0,
            update_time: None,
            updater: None,
            business_hours: None,
            rules: Vec::new(),
            ..policy()
        };
        assert_eq!(
            render_policy("acme", &default),
            "\
risk policy of acme: the default (the account has none of its own)
review_score 60, block_score 0 (off)
business hours: none
no rules: every payment is allowed"
        );
    }

    /// Weekdays print as a range when they follow each other, as a list otherwise, and none as
    /// Monday to Friday.
    #[test]
    fn weekday_names() {
        assert_eq!(weekdays(&[]), "Mon-Fri");
        assert_eq!(weekdays(&[7, 6, 5]), "Fri-Sun");
        assert_eq!(weekdays(&[1, 3, 5]), "Mon, Wed, Fri");
        assert_eq!(weekdays(&[6, 7]), "Sat, Sun");
        assert_eq!(weekdays(&[1, 8]), "Mon, day 8");
    }

    /// JSON keys rules as the file does, with the output-only fields and amounts in minor
    /// units.
    #[test]
    fn policy_as_json() {
        let json = policy_json("acme", &policy());
        assert_eq!(json["version"], 3);
        assert_eq!(json["updater_name"], "alice");
        assert_eq!(json["update_time"], "2025-01-01T00:00:00Z");
        assert_eq!(json["business_hours"]["weekdays"][4], 5);
        assert_eq!(
            json["rules"][1],
            serde_json::json!({
                "name": "account_burst", "kind": "velocity", "action": "allow", "score": 20,
                "scope": "billing_account", "window": "10m", "count_max": 100, "sum_max": null,
            })
        );
        assert_eq!(json["rules"][0]["multiple"], "5");
        let default = pb::RiskPolicy {
            default_policy: true,
            update_time: None,
            updater: None,
            ..policy()
        };
        let json = policy_json("acme", &default);
        assert_eq!(json["update_time"], serde_json::Value::Null);
        assert_eq!(json["updater_name"], "");
        assert_eq!(json["default_policy"], true);
    }

    /// `--format toml` says whose policy it is and how to set it back (with its version), and
    /// reads back into the same rules.
    #[test]
    fn policy_as_file() {
        let text = policy_file("acme", &policy()).unwrap();
        assert!(
            text.starts_with(
                "# risk policy of acme: version 3, set 2025-01-01T00:00:00Z by alice (treasury)\n\
                 # Edit, then: tandemctl risk set --billing-account acme --file FILE --version 3\n"
            ),
            "{text}"
        );
        let read = file::parse(&text).unwrap();
        assert_eq!(read.rules, policy().rules);
        assert_eq!(read.business_hours, policy().business_hours);
    }

    /// `show` reads as the treasury by default, or as one other identity; `set` needs a file
    /// and takes a positive `--version`; `--account` is short for `--billing-account`.
    #[test]
    fn command_line() {
        use clap::Parser as _;
        #[derive(Debug, clap::Parser)]
        struct Cli {
            #[command(subcommand)]
            command: RiskCommand,
        }
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("risk").chain(args.iter().copied()))
        };
        let role = |args: &[&str]| match parse(&[&["show", "--account", "acme"][..], args].concat())
        {
            Ok(Cli {
                command: RiskCommand::Show { target, .. },
            }) => Some(target.role()),
            _ => None,
        };
        assert_eq!(role(&[]), Some(Role::Treasury));
        assert_eq!(role(&["--as-reader"]), Some(Role::Reader));
        assert_eq!(role(&["--as-reviewer"]), Some(Role::Reviewer));
        assert_eq!(role(&["--as-reader", "--as-reviewer"]), None);
        assert_eq!(role(&["--format", "csv"]), None);
        assert!(parse(&["show"]).is_err());
        assert!(parse(&["set", "--account", "acme"]).is_err());
        let Ok(Cli {
            command:
                RiskCommand::Set {
                    billing_account_id,
                    expected_version: Some(3),
                    ..
                },
        }) = parse(&[
            "set",
            "--billing-account",
            "acme",
            "--file",
            "p.toml",
            "--version",
            "3",
        ])
        else {
            panic!("set does not parse");
        };
        assert_eq!(billing_account_id, "acme");
        assert!(
            parse(&[
                "set",
                "--account",
                "a",
                "--file",
                "p.toml",
                "--version",
                "0"
            ])
            .is_err()
        );
    }

    /// The positions the orchestrator names map to the file's rules by name; other fields do
    /// not.
    #[test]
    fn rule_positions_name_rules() {
        let rules = policy().rules;
        let fields = |names: &[&str]| names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            rule_positions(
                &fields(&[
                    "policy.rules[1].velocity.count_max",
                    "policy.rules[0].name",
                    "policy.rules[1].score",
                    "policy.rules[9].name",
                ]),
                &rules
            )
            .as_deref(),
            Some(
                "policy.rules[0] is [[rule]] 1 \"big_amount\", \
                 policy.rules[1] is [[rule]] 2 \"account_burst\""
            )
        );
        assert_eq!(
            rule_positions(&fields(&["policy.business_hours.time_zone"]), &rules),
            None
        );
        assert_eq!(rule_positions(&fields(&["policy.rules"]), &rules), None);
    }

    /// An assessment is one line with its action and score, each fired rule one more with the
    /// orchestrator's explanation (or what it saw, when it sent none).
    #[test]
    fn assessments() {
        let assessment = pb::RiskAssessment {
            action: pb::RiskAction::Review.into(),
            score: 60,
            policy_version: 3,
            ..Default::default()
        };
        assert_eq!(
            assessment_line(&assessment),
            "risk: REVIEW, score 60 (policy version 3)"
        );
        assert_eq!(
            assessment_line(&pb::RiskAssessment {
                default_policy: true,
                ..Default::default()
            }),
            "risk: UNSPECIFIED, score 0 (default policy)"
        );
        let fired = pb::RiskRuleFired {
            rule: "account_burst".to_owned(),
            action: pb::RiskAction::Review.into(),
            score: 10,
            feature: "billing_account.payments.10m".to_owned(),
            value: "12".to_owned(),
            threshold: "10".to_owned(),
            explanation: "12 payments by billing account acme over 10m exceed 10".to_owned(),
        };
        assert_eq!(
            fired_line(&fired),
            "account_burst (review, +10): 12 payments by billing account acme over 10m exceed 10"
        );
        assert_eq!(
            fired_line(&pb::RiskRuleFired {
                explanation: String::new(),
                ..fired
            }),
            "account_burst (review, +10): billing_account.payments.10m 12 over 10"
        );
    }
}
