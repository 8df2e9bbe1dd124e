//! Card groups: the members' rules (`CardGroupMember` in the proto), ceiling windows, and the
//! room each member has for one payment.
//!
//! Pure code. A member's room is what it may still be charged in a payment: its per-payment
//! limit and what its calendar-month limit leaves after the month-to-date spend, each replaced
//! by a ceiling window's override while the window is open.

use time::OffsetDateTime;

use tandem_money::Currency;

use super::allocation::{Member, PolicyError, Strategy};
use super::record::steps::Suspension;
use super::saga::{Completion, Dispatch};

/// Most authorization attempts per payment when the policy does not say.
pub const ATTEMPTS_DEFAULT: u32 = 10;
/// The bound on `attempts_max`.
pub const ATTEMPTS_MAX: u32 = 50;

/// An allocation policy: a group's default or a payment's override.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Policy {
    /// How the amount is first divided.
    pub strategy: Strategy,
    /// Move declined amounts to other members.
    pub fallback: bool,
    /// Bound on authorization attempts in one payment.
    pub attempts_max: u32,
    /// What happens on a shortfall.
    pub completion: Completion,
    /// Windows of other limits.
    pub windows: Vec<CeilingWindow>,
    /// `BY_CURRENCY`: a line whose currency no active member holds is converted to the other
    /// members (refused otherwise).
    #[serde(default)]
    pub allow_conversion: bool,
}

impl Policy {
    /// How the saga sends legs under this policy: all at once for `PARALLEL`, one after
    /// another otherwise.
    pub fn dispatch(&self) -> Dispatch {
        match self.strategy {
            Strategy::Parallel { .. } => Dispatch::AllAtOnce,
            _ => Dispatch::OneAtATime,
        }
    }
}

/// A card group as the orchestrator keeps it: checked once, when it was written, and used as
/// it is by every payment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CardGroup {
    /// The billing account the group belongs to.
    pub billing_account_id: String,
    /// A name for people.
    pub display_name: String,
    /// The ISO 4217 code of the group's usual currency (of the default policy's fixed amounts).
    pub default_currency_code: String,
    /// The members, in the order given.
    pub members: Vec<GroupMember>,
    /// The default policy, checked.
    pub policy: Policy,
    /// The default policy as the caller gave it (an encoded `AllocationPolicy`): shown back as
    /// given, and kept by each payment made under it.
    pub policy_given: Vec<u8>,
}

/// One card of a group: its rules and what Tandem learned about it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupMember {
    /// The rules (`active` is false while SUSPENDED).
    pub rules: MemberRules,
    /// The card's last four digits, from the vault.
    pub last4: String,
    /// Why the member is SUSPENDED, when Tandem suspended it.
    pub suspension: Option<MemberSuspension>,
}

/// Tandem's suspension of a member whose card was declined as lost or stolen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberSuspension {
    /// The decline code's name without prefix (`LOST_CARD`).
    pub decline_code: String,
    /// The payment the decline happened in.
    pub payment_id: String,
    /// When.
    pub suspend_time: OffsetDateTime,
}

impl CardGroup {
    /// Suspends the members named in `suspensions` (declined as lost or stolen in payment
    /// `payment_id`) at `now`; members already suspended keep their first suspension. Returns
    /// the suspensions applied now.
    pub fn suspend<'s>(
        &mut self,
        suspensions: &'s [Suspension],
        payment_id: &str,
        now: OffsetDateTime,
    ) -> Vec<&'s Suspension> {
        let mut suspended = Vec::new();
        for member in &mut self.members {
            let Some(suspension) = suspensions.iter().find(|s| s.token == member.rules.token)
            else {
                continue;
            };
            if !member.rules.active {
                continue;
            }
            member.rules.active = false;
            member.suspension = Some(MemberSuspension {
                decline_code: suspension.decline_code.clone(),
                payment_id: payment_id.to_owned(),
                suspend_time: now,
            });
            suspended.push(suspension);
        }
        suspended
    }

    /// The members' rules, in order.
    pub fn rules(&self) -> Vec<MemberRules> {
        self.members.iter().map(|m| m.rules.clone()).collect()
    }

    /// The last four digits of `token`'s card, empty if unknown.
    pub fn last4(&self, token: &str) -> String {
        self.members
            .iter()
            .find(|m| m.rules.token == token)
            .map(|m| m.last4.clone())
            .unwrap_or_default()
    }
}

/// A group to write, checked, with its members' states as given.
#[derive(Debug, Clone)]
pub struct GroupDraft {
    /// The group; [`GroupDraft::finish`] fills in members' states, suspensions and last four
    /// digits.
    pub group: CardGroup,
    /// Each member's state as given: `Some(active)`, or `None` to keep the state the member
    /// had (ACTIVE for a new member), so that an update that does not mention states (a client
    /// adding a card) does not reactivate a card Tandem suspended.
    pub states: Vec<Option<bool>>,
}

impl GroupDraft {
    /// The members' tokens, in order.
    pub fn tokens(&self) -> Vec<String> {
        self.group
            .members
            .iter()
            .map(|m| m.rules.token.clone())
            .collect()
    }

    /// The group to store: each member's state as given or as it was in `before` (the group
    /// as stored, for an update), a member still SUSPENDED keeping the suspension it had there
    /// and any other member none, last four digits from `last4` (by token).
    pub fn finish(self, last4: &[(String, String)], before: Option<&CardGroup>) -> CardGroup {
        assert_eq!(
            self.states.len(),
            self.group.members.len(),
            "a draft gives one state per member"
        );
        let before: &[GroupMember] = before.map_or(&[], |group| group.members.as_slice());
        let mut group = self.group;
        for (member, given) in group.members.iter_mut().zip(self.states) {
            let earlier = before.iter().find(|b| b.rules.token == member.rules.token);
            member.rules.active = given.unwrap_or_else(|| earlier.is_none_or(|b| b.rules.active));
            member.suspension = earlier
                .filter(|b| !member.rules.active && !b.rules.active)
                .and_then(|b| b.suspension.clone());
            member.last4 = last4
                .iter()
                .find(|(token, _)| *token == member.rules.token)
                .map(|(_, digits)| digits.clone())
                .unwrap_or_default();
        }
        group
    }
}

/// Most members in a group.
pub const MEMBERS_MAX: usize = 32;
/// Most ceiling windows in a policy.
pub const CEILING_WINDOWS_MAX: usize = 20;
/// Longest label, in characters.
const LABEL_CHARS_MAX: usize = 40;
/// Longest cost center, in bytes.
const COST_CENTER_BYTES_MAX: usize = 64;
/// Longest ceiling window.
const WINDOW_DAYS_MAX: i64 = 366;

/// One card of a group, as configured.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MemberRules {
    /// The vault token.
    pub token: String,
    /// A short name for summaries ("card A").
    pub label: String,
    /// The card's currency.
    pub currency: Currency,
    /// Allocation order, 1-1000, unique in the group.
    pub priority: u16,
    /// Where the card's spend is booked.
    pub cost_center: Option<String>,
    /// Most per payment, in minor units of `currency`.
    pub limit_per_payment: Option<i64>,
    /// Most per calendar month (UTC), in minor units of `currency`.
    pub limit_per_month: Option<i64>,
    /// False when suspended.
    pub active: bool,
}

/// Limits that replace a member's own during a window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LimitOverride {
    /// The member's token.
    pub token: String,
    /// The per-payment limit during the window.
    pub limit_per_payment: Option<i64>,
    /// The monthly limit during the window.
    pub limit_per_month: Option<i64>,
}

/// A time window of raised (or lowered) limits.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CeilingWindow {
    /// For operators.
    pub display_name: String,
    /// Opens (inclusive).
    pub start: OffsetDateTime,
    /// Closes (exclusive).
    pub end: OffsetDateTime,
    /// Overrides, at most one per member.
    pub overrides: Vec<LimitOverride>,
}

/// The limits in force for `member` at `now`: its own, or a window's override where one is
/// open and sets it.
pub fn limits_at(
    member: &MemberRules,
    windows: &[CeilingWindow],
    now: OffsetDateTime,
) -> (Option<i64>, Option<i64>) {
    let mut per_payment = member.limit_per_payment;
    let mut per_month = member.limit_per_month;
    for window in windows.iter().filter(|w| w.start <= now && now < w.end) {
        if let Some(over) = window.overrides.iter().find(|o| o.token == member.token) {
            per_payment = over.limit_per_payment.or(per_payment);
            per_month = over.limit_per_month.or(per_month);
        }
    }
    (per_payment, per_month)
}

/// The member as allocation sees it at `now`, after `month_to_date` minor units of spend this
/// calendar month (captured and held; refunds give room back).
pub fn member_at(
    member: &MemberRules,
    windows: &[CeilingWindow],
    now: OffsetDateTime,
    month_to_date: i64,
) -> Member {
    let (per_payment, per_month) = limits_at(member, windows, now);
    let month_left = per_month.map(|limit| (limit - month_to_date).max(0));
    let room = match (per_payment, month_left) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Member {
        token: member.token.clone(),
        priority: member.priority,
        currency: member.currency,
        active: member.active,
        room,
    }
}

/// Checks a group's members and its ceiling windows; every violation names its field under
/// `card_group` (for example `card_group.members[2].priority`).
pub fn check_members(members: &[MemberRules], windows: &[CeilingWindow]) -> Vec<PolicyError> {
    let mut errors = Vec::new();
    let mut error = |field: String, description: &str| {
        errors.push(PolicyError {
            field,
            description: description.to_owned(),
        });
    };
    if members.is_empty() || members.len() > MEMBERS_MAX {
        error("card_group.members".into(), "must have 1-32 members");
    }
    for (i, member) in members.iter().enumerate() {
        let field = |name: &str| format!("card_group.members[{i}].{name}");
        let earlier = &members[..i];
        if !is_token(&member.token) {
            error(
                field("token"),
                "must be \"tok_\" followed by 26 lower-case base32 characters",
            );
        } else if earlier.iter().any(|m| m.token == member.token) {
            error(field("token"), "appears more than once in the group");
        }
        let label_chars = member.label.chars().count();
        if label_chars == 0
            || label_chars > LABEL_CHARS_MAX
            || member.label.chars().any(char::is_control)
        {
            error(
                field("label"),
                "must be 1-40 characters without control characters",
            );
        } else if earlier.iter().any(|m| m.label == member.label) {
            error(field("label"), "appears more than once in the group");
        }
        if !(1..=1000).contains(&member.priority) {
            error(field("priority"), "must be 1-1000");
        } else if earlier.iter().any(|m| m.priority == member.priority) {
            error(field("priority"), "appears more than once in the group");
        }
        if member
            .cost_center
            .as_ref()
            .is_some_and(|c| c.len() > COST_CENTER_BYTES_MAX || c.chars().any(char::is_control))
        {
            error(
                field("cost_center"),
                "must be at most 64 characters without control characters",
            );
        }
        if member.limit_per_payment.is_some_and(|l| l <= 0) {
            error(field("limit_per_payment"), "must be positive");
        }
        if member.limit_per_month.is_some_and(|l| l <= 0) {
            error(field("limit_per_month"), "must be positive");
        }
    }
    if windows.len() > CEILING_WINDOWS_MAX {
        error(
            "card_group.default_policy.ceiling_windows".into(),
            "must have at most 20 windows",
        );
    }
    for (i, window) in windows.iter().enumerate() {
        let field = |name: &str| format!("card_group.default_policy.ceiling_windows[{i}].{name}");
        if window.end <= window.start
            || window.end - window.start > time::Duration::days(WINDOW_DAYS_MAX)
        {
            error(
                field("end_time"),
                "must be after start_time and at most 366 days later",
            );
        }
        if windows[..i]
            .iter()
            .any(|w| w.start < window.end && window.start < w.end)
        {
            error(field("start_time"), "overlaps another window");
        }
        for (j, over) in window.overrides.iter().enumerate() {
            let field = |name: &str| {
                format!("card_group.default_policy.ceiling_windows[{i}].overrides[{j}].{name}")
            };
            if !members.iter().any(|m| m.token == over.token) {
                error(field("token"), "is not a member of the card group");
            } else if window.overrides[..j].iter().any(|o| o.token == over.token) {
                error(field("token"), "appears more than once in the window");
            }
            if over.limit_per_payment.is_some_and(|l| l <= 0) {
                error(field("limit_per_payment"), "must be positive");
            }
            if over.limit_per_month.is_some_and(|l| l <= 0) {
                error(field("limit_per_month"), "must be positive");
            }
        }
    }
    errors
}

/// True for `tok_` followed by 26 characters of the lower-case base32 alphabet.
fn is_token(text: &str) -> bool {
    tandem_runtime::ids::is_random_id("tok_", text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn usd() -> Currency {
        Currency::parse("USD").unwrap()
    }

    fn rules(token: &str, label: &str, priority: u16) -> MemberRules {
        MemberRules {
            token: format!("tok_{token:a<26}"),
            label: label.to_owned(),
            currency: usd(),
            priority,
            cost_center: None,
            limit_per_payment: None,
            limit_per_month: None,
            active: true,
        }
    }

    /// Room is the tighter of the per-payment limit and what the month leaves; a window's
    /// override replaces a limit only while the window is open.
    #[test]
    fn room_follows_limits_and_windows() {
        let mut card = rules("b", "card B", 2);
        card.limit_per_payment = Some(50_000);
        card.limit_per_month = Some(200_000);
        let peak = CeilingWindow {
            display_name: "Black Friday week".into(),
            start: datetime!(2026-11-23 0:00 UTC),
            end: datetime!(2026-11-30 0:00 UTC),
            overrides: vec![LimitOverride {
                token: card.token.clone(),
                limit_per_payment: Some(150_000),
                limit_per_month: Some(500_000),
            }],
        };
        let windows = std::slice::from_ref(&peak);
        let before = datetime!(2026-11-22 12:00 UTC);
        let during = datetime!(2026-11-24 12:00 UTC);
        assert_eq!(member_at(&card, windows, before, 0).room, Some(50_000));
        assert_eq!(
            member_at(&card, windows, before, 180_000).room,
            Some(20_000)
        );
        assert_eq!(member_at(&card, windows, before, 250_000).room, Some(0));
        assert_eq!(
            member_at(&card, windows, during, 180_000).room,
            Some(150_000)
        );
        assert_eq!(
            member_at(&card, windows, during, 400_000).room,
            Some(100_000)
        );
        assert_eq!(
            member_at(&rules("c", "card C", 3), &[], during, 10).room,
            None
        );
    }

    /// Every rule of a member and a window names its field.
    #[test]
    fn member_rules_name_their_field() {
        let mut members = vec![rules("a", "card A", 1), rules("a", "card A", 1)];
        members.push(MemberRules {
            token: "tok_bad".into(),
            label: String::new(),
            priority: 0,
            limit_per_payment: Some(0),
            ..rules("c", "card C", 3)
        });
        let window = CeilingWindow {
            display_name: "w".into(),
            start: datetime!(2026-11-23 0:00 UTC),
            end: datetime!(2026-11-22 0:00 UTC),
            overrides: vec![LimitOverride {
                token: "tok_nobody".into(),
                limit_per_payment: None,
                limit_per_month: Some(-1),
            }],
        };
        let fields: Vec<String> = check_members(&members, &[window])
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(
            fields,
            [
                "card_group.members[1].token",
                "card_group.members[1].label",
                "card_group.members[1].priority",
                "card_group.members[2].token",
                "card_group.members[2].label",
                "card_group.members[2].priority",
                "card_group.members[2].limit_per_payment",
                "card_group.default_policy.ceiling_windows[0].end_time",
                "card_group.default_policy.ceiling_windows[0].overrides[0].token",
                "card_group.default_policy.ceiling_windows[0].overrides[0].limit_per_month",
            ]
        );
        assert!(check_members(&[rules("a", "card A", 1), rules("b", "card B", 2)], &[]).is_empty());
        assert_eq!(check_members(&[], &[]).len(), 1);
    }
}
