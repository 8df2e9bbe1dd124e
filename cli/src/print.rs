//! How commands print what the servers answer: enum values, times, columns and policies.

use tandem_proto::tandem::orchestrator::v1 as pb;

use crate::amounts::show;

/// One line for people: the strategy and whichever of its settings are set.
pub(crate) fn describe_policy(policy: &pb::AllocationPolicy) -> String {
    let mut parts = vec![value_name(
        policy.strategy,
        "ALLOCATION_STRATEGY_",
        pb::AllocationStrategy::as_str_name,
    )];
    if !policy.weights.is_empty() {
        let weights: Vec<String> = policy
            .weights
            .iter()
            .map(|w| format!("{}:{}", w.token, w.basis_points))
            .collect();
        parts.push(format!("weights {}", weights.join(" ")));
    }
    if !policy.fixed_amounts.is_empty() {
        let amounts: Vec<String> = policy
            .fixed_amounts
            .iter()
            .map(|f| format!("{}:{}", f.token, show(f.amount.as_ref())))
            .collect();
        parts.push(format!("fixed {}", amounts.join(" ")));
    }
    if policy.remainder_rule != i32::from(pb::RemainderRule::Unspecified) {
        parts.push(format!(
            "remainder {}",
            value_name(
                policy.remainder_rule,
                "REMAINDER_RULE_",
                pb::RemainderRule::as_str_name
            )
        ));
    }
    if let Some(fallback) = &policy.fallback {
        if fallback.enabled {
            parts.push("fallback".to_owned());
        }
        if fallback.attempts_max != 0 {
            parts.push(format!("attempts max {}", fallback.attempts_max));
        }
    }
    parts.push(value_name(
        policy.completion,
        "COMPLETION_",
        pb::Completion::as_str_name,
    ));
    if !policy.ceiling_windows.is_empty() {
        parts.push(format!("{} ceiling windows", policy.ceiling_windows.len()));
    }
    parts.join(", ")
}

/// A proto enum value's name without its `prefix`, lower-case (`LEG_STATE_PARTIALLY_REFUNDED`
/// is `partially_refunded`), or the number for a value this build does not know.
pub(crate) fn value_name<E: TryFrom<i32>>(
    value: i32,
    prefix: &str,
    name: fn(&E) -> &'static str,
) -> String {
    E::try_from(value).map_or_else(
        |_| format!("unknown({value})"),
        |known| {
            let full = name(&known);
            full.strip_prefix(prefix).unwrap_or(full).to_lowercase()
        },
    )
}

/// A timestamp's seconds as RFC 3339 in UTC, or `-` when unset.
pub(crate) fn show_time(seconds: Option<i64>) -> String {
    use time::format_description::well_known::Rfc3339;
    seconds
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| "-".to_owned())
}

/// The width of a text column: its widest value, and at least its heading.
pub(crate) fn column_width<'a>(heading: &str, values: impl Iterator<Item = &'a str>) -> usize {
    values
        .map(|value| value.chars().count())
        .fold(heading.chars().count(), usize::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Enum values print without their prefix in lower case; unknown values print as numbers.
    #[test]
    fn value_names() {
        let name = |value| value_name(value, "LEG_STATE_", pb::LegState::as_str_name);
        assert_eq!(
            name(pb::LegState::PartiallyRefunded.into()),
            "partially_refunded"
        );
        assert_eq!(name(99), "unknown(99)");
    }
}
