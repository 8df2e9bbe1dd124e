//! The risk policy file that `tandemctl risk set` reads and `risk show --format toml` writes:
//! TOML mirroring `RiskPolicy`, with each rule's kind named by `kind` and its settings beside it
//! (the proto's `oneof` flattened).
//!
//! ```toml
//! review_score = 60                # a total score at or over this is reviewed; 0: never
//! block_score = 0                  # at or over this is blocked; 0: never
//!
//! [business_hours]                 # needed by outside_business_hours rules
//! time_zone = "Europe/Berlin"
//! start_hour = 9                   # 0-23, inclusive
//! end_hour = 18                    # 1-24, exclusive
//! weekdays = [1, 2, 3, 4, 5]       # ISO 1 Monday ... 7 Sunday; Monday to Friday if left out
//!
//! [[rule]]
//! name = "big_amount"
//! kind = "amount_over_median"      # velocity | amount_over_median | first_card_use |
//!                                  # decline_burst | outside_business_hours
//! action = "review"                # allow | review | block
//! score = 50                       # 0 if left out
//! multiple = "5"                   # over 5 times the account's median ("2.5" as a string)
//! history_min = 20                 # once the account has 20 payments in the currency
//!
//! [[rule]]
//! name = "account_burst"
//! kind = "velocity"
//! action = "allow"
//! score = 20
//! scope = "billing_account"        # card | card_group | billing_account
//! window = "10m"                   # 10m | 1h | 24h
//! count_max = 100                  # or sum_max = "5000.00 USD"
//! ```
//!
//! Each kind takes its own keys and needs all of them: `velocity` scope, window and one of
//! count_max and sum_max; `decline_burst` scope, window and count_max; `amount_over_median`
//! multiple and history_min; `first_card_use` and `outside_business_hours` none. A key the
//! format does not know, or one the rule's kind does not take, is refused with its name: a typo
//! must not loosen a policy silently. Ranges (scores, counts, the multiple, hours, the time
//! zone) are the orchestrator's to check; it names the field it refuses, `policy.rules[N]`
//! being the file's `[[rule]]` number N counted from 0.

use std::fmt;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::risk_rule::Kind as WireKind;

use crate::amounts::{parse_money, show};

/// A policy file: the proto's `RiskPolicy` without its output-only fields.
#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PolicyFile {
    #[serde(default)]
    review_score: i32,
    #[serde(default)]
    block_score: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    business_hours: Option<HoursFile>,
    /// `[[rule]]` tables, in the policy's order.
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    rules: Vec<RuleFile>,
}

/// `[business_hours]`.
#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct HoursFile {
    time_zone: String,
    start_hour: i32,
    end_hour: i32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    weekdays: Vec<i32>,
}

/// One `[[rule]]`: the keys of every kind, each optional; [`rule_to_wire`] checks that the rule
/// has exactly its kind's.
#[derive(Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    name: String,
    kind: Kind,
    action: Action,
    #[serde(default)]
    score: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scope: Option<Scope>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    window: Option<Window>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    count_max: Option<i64>,
    /// An amount with its currency, `"5000.00 USD"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sum_max: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    multiple: Option<Multiple>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    history_min: Option<i32>,
}

/// `kind`: the proto's `oneof kind`, by its field names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum Kind {
    Velocity,
    AmountOverMedian,
    FirstCardUse,
    DeclineBurst,
    OutsideBusinessHours,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Velocity => "velocity",
            Kind::AmountOverMedian => "amount_over_median",
            Kind::FirstCardUse => "first_card_use",
            Kind::DeclineBurst => "decline_burst",
            Kind::OutsideBusinessHours => "outside_business_hours",
        }
    }

    /// The keys a rule of this kind takes besides name, kind, action and score.
    fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::Velocity => &["scope", "window", "count_max", "sum_max"],
            Kind::DeclineBurst => &["scope", "window", "count_max"],
            Kind::AmountOverMedian => &["multiple", "history_min"],
            Kind::FirstCardUse | Kind::OutsideBusinessHours => &[],
        }
    }
}

/// `action`: `RiskAction` without its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum Action {
    Allow,
    Review,
    Block,
}

/// `scope`: `RiskScope` without its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
enum Scope {
    Card,
    CardGroup,
    BillingAccount,
}

/// `window`: the three the orchestrator keeps, as its feature names spell them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
enum Window {
    #[serde(rename = "10m")]
    TenMinutes,
    #[serde(rename = "1h")]
    Hour,
    #[serde(rename = "24h")]
    Day,
}

impl Window {
    fn seconds(self) -> i64 {
        match self {
            Window::TenMinutes => 600,
            Window::Hour => 3_600,
            Window::Day => 86_400,
        }
    }
}

/// `multiple`: a plain decimal kept as text (the proto's `string`), written `"2.5"` or as a
/// whole number `5`; a TOML float is refused, since it is not exact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
struct Multiple(String);

impl<'de> Deserialize<'de> for Multiple {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Multiple;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number or a decimal in quotes, such as \"2.5\"")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Multiple, E> {
                Ok(Multiple(text.to_owned()))
            }
            fn visit_i64<E: serde::de::Error>(self, number: i64) -> Result<Multiple, E> {
                Ok(Multiple(number.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, number: u64) -> Result<Multiple, E> {
                Ok(Multiple(number.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Reads a policy file into the `RiskPolicy` of a `SetRiskPolicy` request (output-only fields
/// unset): a TOML error names the line and key, a rule error the rule.
pub(crate) fn parse(text: &str) -> anyhow::Result<pb::RiskPolicy> {
    let file: PolicyFile = toml::from_str(text)?;
    to_wire(&file)
}

fn to_wire(file: &PolicyFile) -> anyhow::Result<pb::RiskPolicy> {
    let rules = file
        .rules
        .iter()
        .enumerate()
        .map(|(index, rule)| {
            rule_to_wire(rule).with_context(|| {
                format!(
                    "[[rule]] {} ({:?}, {})",
                    index + 1,
                    rule.name,
                    rule.kind.as_str()
                )
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(pb::RiskPolicy {
        rules,
        review_score: file.review_score,
        block_score: file.block_score,
        business_hours: file.business_hours.as_ref().map(|hours| pb::BusinessHours {
            time_zone: hours.time_zone.clone(),
            start_hour: hours.start_hour,
            end_hour: hours.end_hour,
            weekdays: hours.weekdays.clone(),
        }),
        ..Default::default()
    })
}

fn rule_to_wire(rule: &RuleFile) -> anyhow::Result<pb::RiskRule> {
    let given = [
        ("scope", rule.scope.is_some()),
        ("window", rule.window.is_some()),
        ("count_max", rule.count_max.is_some()),
        ("sum_max", rule.sum_max.is_some()),
        ("multiple", rule.multiple.is_some()),
        ("history_min", rule.history_min.is_some()),
    ];
    let taken = rule.kind.keys();
    if let Some((key, _)) = given
        .iter()
        .find(|(key, present)| *present && !taken.contains(key))
    {
        anyhow::bail!(
            "`{key}` is not a key of {} rules ({})",
            rule.kind.as_str(),
            if taken.is_empty() {
                "they take only name, kind, action and score".to_owned()
            } else {
                format!("they take {}", taken.join(", "))
            }
        );
    }
    let kind = match rule.kind {
        Kind::Velocity => {
            let (count_max, sum_max) = match (rule.count_max, &rule.sum_max) {
                (Some(count), None) => (Some(count), None),
                (None, Some(sum)) => (None, Some(parse_money(sum).context("`sum_max`")?)),
                (Some(_), Some(_)) => {
                    anyhow::bail!("set only one of `count_max` and `sum_max`")
                }
                (None, None) => anyhow::bail!("set one of `count_max` and `sum_max`"),
            };
            WireKind::Velocity(pb::VelocityRule {
                scope: scope_to_wire(required(rule.scope, "scope")?).into(),
                window: Some(window_to_wire(required(rule.window, "window")?)),
                count_max,
                sum_max,
            })
        }
        Kind::DeclineBurst => WireKind::DeclineBurst(pb::DeclineBurstRule {
            scope: scope_to_wire(required(rule.scope, "scope")?).into(),
            window: Some(window_to_wire(required(rule.window, "window")?)),
            count_max: required(rule.count_max, "count_max")?,
        }),
        Kind::AmountOverMedian => WireKind::AmountOverMedian(pb::AmountOverMedianRule {
            multiple: required(rule.multiple.clone(), "multiple")?.0,
            history_min: required(rule.history_min, "history_min")?,
        }),
        Kind::FirstCardUse => WireKind::FirstCardUse(pb::FirstCardUseRule {}),
        Kind::OutsideBusinessHours => {
            WireKind::OutsideBusinessHours(pb::OutsideBusinessHoursRule {})
        }
    };
    Ok(pb::RiskRule {
        name: rule.name.clone(),
        action: action_to_wire(rule.action).into(),
        score: rule.score,
        kind: Some(kind),
    })
}

/// A key its rule's kind needs; a missing one is refused rather than left to the proto's zero
/// (a `decline_burst` without `count_max` would fire on the first decline).
fn required<T>(value: Option<T>, key: &str) -> anyhow::Result<T> {
    value.with_context(|| format!("`{key}` is missing"))
}

fn action_to_wire(action: Action) -> pb::RiskAction {
    match action {
        Action::Allow => pb::RiskAction::Allow,
        Action::Review => pb::RiskAction::Review,
        Action::Block => pb::RiskAction::Block,
    }
}

fn scope_to_wire(scope: Scope) -> pb::RiskScope {
    match scope {
        Scope::Card => pb::RiskScope::Card,
        Scope::CardGroup => pb::RiskScope::CardGroup,
        Scope::BillingAccount => pb::RiskScope::BillingAccount,
    }
}

fn window_to_wire(window: Window) -> prost_types::Duration {
    prost_types::Duration {
        seconds: window.seconds(),
        nanos: 0,
    }
}

/// A policy as a file `risk set` reads back into the same policy, its output-only fields left
/// out. A rule, action, scope or window this build does not know is refused, naming the rule,
/// rather than written as something else.
pub(crate) fn write(policy: &pb::RiskPolicy) -> anyhow::Result<String> {
    let rules = policy
        .rules
        .iter()
        .map(|rule| rule_from_wire(rule).with_context(|| format!("rule {:?}", rule.name)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let file = PolicyFile {
        review_score: policy.review_score,
        block_score: policy.block_score,
        business_hours: policy.business_hours.as_ref().map(|hours| HoursFile {
            time_zone: hours.time_zone.clone(),
            start_hour: hours.start_hour,
            end_hour: hours.end_hour,
            weekdays: hours.weekdays.clone(),
        }),
        rules,
    };
    Ok(toml::to_string(&file)?)
}

fn rule_from_wire(rule: &pb::RiskRule) -> anyhow::Result<RuleFile> {
    let mut file = RuleFile {
        name: rule.name.clone(),
        kind: Kind::FirstCardUse,
        action: match pb::RiskAction::try_from(rule.action) {
            Ok(pb::RiskAction::Allow) => Action::Allow,
            Ok(pb::RiskAction::Review) => Action::Review,
            Ok(pb::RiskAction::Block) => Action::Block,
            Ok(pb::RiskAction::Unspecified) | Err(_) => {
                anyhow::bail!("its action ({}) has no name in the file", rule.action)
            }
        },
        score: rule.score,
        scope: None,
        window: None,
        count_max: None,
        sum_max: None,
        multiple: None,
        history_min: None,
    };
    match &rule.kind {
        None => anyhow::bail!("its kind is unknown to this tandemctl"),
        Some(WireKind::Velocity(velocity)) => {
            file.kind = Kind::Velocity;
            file.scope = Some(scope_from_wire(velocity.scope)?);
            file.window = Some(window_from_wire(velocity.window.as_ref())?);
            file.count_max = velocity.count_max;
            file.sum_max = velocity.sum_max.as_ref().map(|sum| show(Some(sum)));
        }
        Some(WireKind::DeclineBurst(burst)) => {
            file.kind = Kind::DeclineBurst;
            file.scope = Some(scope_from_wire(burst.scope)?);
            file.window = Some(window_from_wire(burst.window.as_ref())?);
            file.count_max = Some(burst.count_max);
        }
        Some(WireKind::AmountOverMedian(median)) => {
            file.kind = Kind::AmountOverMedian;
            file.multiple = Some(Multiple(median.multiple.clone()));
            file.history_min = Some(median.history_min);
        }
        Some(WireKind::FirstCardUse(_)) => file.kind = Kind::FirstCardUse,
        Some(WireKind::OutsideBusinessHours(_)) => file.kind = Kind::OutsideBusinessHours,
    }
    Ok(file)
}

fn scope_from_wire(scope: i32) -> anyhow::Result<Scope> {
    match pb::RiskScope::try_from(scope) {
        Ok(pb::RiskScope::Card) => Ok(Scope::Card),
        Ok(pb::RiskScope::CardGroup) => Ok(Scope::CardGroup),
        Ok(pb::RiskScope::BillingAccount) => Ok(Scope::BillingAccount),
        Ok(pb::RiskScope::Unspecified) | Err(_) => {
            anyhow::bail!("its scope ({scope}) has no name in the file")
        }
    }
}

fn window_from_wire(window: Option<&prost_types::Duration>) -> anyhow::Result<Window> {
    match window.map(|w| (w.seconds, w.nanos)) {
        Some((600, 0)) => Ok(Window::TenMinutes),
        Some((3_600, 0)) => Ok(Window::Hour),
        Some((86_400, 0)) => Ok(Window::Day),
        other => anyhow::bail!("its window ({other:?}) has no name in the file"),
    }
}

#[cfg(test)]
mod tests {
    use tandem_proto::tandem::r#type::v1 as types;

    use super::*;

    /// Every kind, business hours and both velocity limits, as the brief's example has them.
    const GOOD: &str = r#"
review_score = 60
block_score = 0

[business_hours]
time_zone = "Europe/Berlin"
start_hour = 9
end_hour = 18
weekdays = [1, 2, 3, 4, 5]

[[rule]]
name = "big_amount"
kind = "amount_over_median"
action = "review"
score = 50
multiple = "2.5"
history_min = 20

[[rule]]
name = "account_burst"
kind = "velocity"
scope = "billing_account"
window = "10m"
count_max = 100
action = "allow"
score = 20

[[rule]]
name = "card_spend"
kind = "velocity"
scope = "card"
window = "24h"
sum_max = "5000.00 USD"
action = "block"

[[rule]]
name = "declines"
kind = "decline_burst"
scope = "card_group"
window = "1h"
count_max = 5
action = "review"
score = 30

[[rule]]
name = "new_card"
kind = "first_card_use"
action = "allow"
score = 10

[[rule]]
name = "night"
kind = "outside_business_hours"
action = "review"
score = 40
"#;

    fn window(seconds: i64) -> Option<prost_types::Duration> {
        Some(prost_types::Duration { seconds, nanos: 0 })
    }

    fn rule(name: &str, action: pb::RiskAction, score: i32, kind: WireKind) -> pb::RiskRule {
        pb::RiskRule {
            name: name.to_owned(),
            action: action.into(),
            score,
            kind: Some(kind),
        }
    }

    fn good_policy() -> pb::RiskPolicy {
        pb::RiskPolicy {
            review_score: 60,
            block_score: 0,
            business_hours: Some(pb::BusinessHours {
                time_zone: "Europe/Berlin".to_owned(),
                start_hour: 9,
                end_hour: 18,
                weekdays: vec![1, 2, 3, 4, 5],
            }),
            rules: vec![
                rule(
                    "big_amount",
                    pb::RiskAction::Review,
                    50,
                    WireKind::AmountOverMedian(pb::AmountOverMedianRule {
                        multiple: "2.5".to_owned(),
                        history_min: 20,
                    }),
                ),
                rule(
                    "account_burst",
                    pb::RiskAction::Allow,
                    20,
                    WireKind::Velocity(pb::VelocityRule {
                        scope: pb::RiskScope::BillingAccount.into(),
                        window: window(600),
                        count_max: Some(100),
                        sum_max: None,
                    }),
                ),
                rule(
                    "card_spend",
                    pb::RiskAction::Block,
                    0,
                    WireKind::Velocity(pb::VelocityRule {
                        scope: pb::RiskScope::Card.into(),
                        window: window(86_400),
                        count_max: None,
                        sum_max: Some(types::Money {
                            currency_code: "USD".to_owned(),
                            minor_units: 500_000,
                        }),
                    }),
                ),
                rule(
                    "declines",
                    pb::RiskAction::Review,
                    30,
                    WireKind::DeclineBurst(pb::DeclineBurstRule {
                        scope: pb::RiskScope::CardGroup.into(),
                        window: window(3_600),
                        count_max: 5,
                    }),
                ),
                rule(
                    "new_card",
                    pb::RiskAction::Allow,
                    10,
                    WireKind::FirstCardUse(pb::FirstCardUseRule {}),
                ),
                rule(
                    "night",
                    pb::RiskAction::Review,
                    40,
                    WireKind::OutsideBusinessHours(pb::OutsideBusinessHoursRule {}),
                ),
            ],
            ..Default::default()
        }
    }

    /// A file with every kind becomes the policy it describes, in its order, with no
    /// output-only field set.
    #[test]
    fn good_file() {
        assert_eq!(parse(GOOD).unwrap(), good_policy());
    }

    /// An empty file is a policy without rules (which assesses nothing); a whole-number
    /// multiple is taken as its decimal text.
    #[test]
    fn small_files() {
        assert_eq!(parse("").unwrap(), pb::RiskPolicy::default());
        let policy = parse(
            "[[rule]]\nname = \"m\"\nkind = \"amount_over_median\"\naction = \"review\"\n\
             multiple = 5\nhistory_min = 1\n",
        )
        .unwrap();
        let Some(WireKind::AmountOverMedian(median)) = &policy.rules[0].kind else {
            panic!("{policy:?}");
        };
        assert_eq!(median.multiple, "5");
        assert_eq!(policy.rules[0].score, 0);
    }

    /// What `risk show --format toml` writes, `risk set` reads back into the same policy.
    #[test]
    fn written_files_read_back() {
        let text = write(&good_policy()).unwrap();
        assert_eq!(parse(&text).unwrap(), good_policy(), "{text}");
        assert!(text.contains("sum_max = \"5000.00 USD\""), "{text}");
        assert!(text.contains("window = \"24h\""), "{text}");
        assert!(text.contains("[[rule]]"), "{text}");
        // Output-only fields are not part of the file.
        let answered = pb::RiskPolicy {
            billing_account_id: "acme".to_owned(),
            version: 3,
            ..good_policy()
        };
        assert_eq!(write(&answered).unwrap(), text);
        // A kind this build does not know is refused by name, not written as another.
        let unknown = pb::RiskPolicy {
            rules: vec![pb::RiskRule {
                name: "future".to_owned(),
                action: pb::RiskAction::Review.into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        let error = format!("{:#}", write(&unknown).unwrap_err());
        assert!(error.contains("\"future\""), "{error}");
    }

    /// Bad files are refused with an error that names what is wrong: the unknown key, the
    /// unknown kind or window, the key a kind does not take or misses, the rule it is in.
    #[test]
    fn bad_files() {
        let base = "[[rule]]\nname = \"r\"\naction = \"review\"\n";
        for (file, expected) in [
            ("review_scor = 60\n".to_owned(), "unknown field `review_scor`"),
            (
                "[business_hours]\ntime_zone = \"UTC\"\nstart_hour = 9\nend_hour = 17\nweekday = [1]\n"
                    .to_owned(),
                "unknown field `weekday`",
            ),
            (
                format!("{base}kind = \"velocity\"\nscope = \"card\"\nwindow = \"10m\"\ncount_max = 1\nwindw = \"1h\"\n"),
                "unknown field `windw`",
            ),
            (
                format!("{base}kind = \"velocty\"\n"),
                "unknown variant `velocty`",
            ),
            (
                format!("{base}kind = \"velocity\"\nscope = \"card\"\nwindow = \"15m\"\ncount_max = 1\n"),
                "unknown variant `15m`",
            ),
            (
                format!("{base}kind = \"velocity\"\nscope = \"account\"\nwindow = \"1h\"\ncount_max = 1\n"),
                "unknown variant `account`",
            ),
            (
                "[[rule]]\nname = \"r\"\nkind = \"first_card_use\"\naction = \"hold\"\n".to_owned(),
                "unknown variant `hold`",
            ),
            (
                "[[rule]]\nname = \"r\"\nkind = \"first_card_use\"\n".to_owned(),
                "missing field `action`",
            ),
            (
                format!("{base}kind = \"velocity\"\nscope = \"card\"\nwindow = \"1h\"\ncount_max = 1\nmultiple = \"2\"\n"),
                "[[rule]] 1 (\"r\", velocity): `multiple` is not a key of velocity rules (they take scope, window, count_max, sum_max)",
            ),
            (
                format!("{base}kind = \"first_card_use\"\nwindow = \"1h\"\n"),
                "`window` is not a key of first_card_use rules (they take only name, kind, action and score)",
            ),
            (
                format!("{base}kind = \"velocity\"\nscope = \"card\"\nwindow = \"1h\"\n"),
                "set one of `count_max` and `sum_max`",
            ),
            (
                format!("{base}kind = \"velocity\"\nscope = \"card\"\nwindow = \"1h\"\ncount_max = 1\nsum_max = \"1.00 USD\"\n"),
                "set only one of `count_max` and `sum_max`",
            ),
            (
                format!("{base}kind = \"velocity\"\nscope = \"card\"\nwindow = \"1h\"\nsum_max = \"1.001 USD\"\n"),
                "`sum_max`: USD has 2 decimal places",
            ),
            (
                format!("{base}kind = \"decline_burst\"\nscope = \"card\"\nwindow = \"1h\"\n"),
                "`count_max` is missing",
            ),
            (
                format!("{base}kind = \"amount_over_median\"\nmultiple = 2.5\nhistory_min = 1\n"),
                "expected a whole number or a decimal in quotes",
            ),
            (
                format!("[[rule]]\nname = \"first\"\nkind = \"first_card_use\"\naction = \"allow\"\n\n{base}kind = \"amount_over_median\"\nmultiple = \"2\"\n"),
                "[[rule]] 2 (\"r\", amount_over_median): `history_min` is missing",
            ),
        ] {
            let error = format!("{:#}", parse(&file).expect_err(&file));
            assert!(error.contains(expected), "{file}\n{error}\nmissing {expected:?}");
        }
    }
}
