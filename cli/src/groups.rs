//! `tandemctl groups`: administer card groups on a running orchestrator with a `treasury`
//! identity. Also what every orchestrator command shares: where the orchestrator is
//! ([`Target`]), the allocation-policy flags ([`PolicyArgs`], used by `groups create` and by
//! `tandemctl pay`) and how enum values and times are printed.
//!
//! ```text
//! tandemctl groups create --billing-account acct-42 --name "Acme cards" --currency USD \
//!     --member "tok_...:card A:1:500.00" --member "tok_...:card B:2::2000.00:ops" \
//!     --strategy weighted --weight tok_...:6000 --weight tok_...:4000 --fallback
//! tandemctl groups get cg_...
//! tandemctl groups list [--billing-account acct-42] [--show-archived] [--page-size 50]
//! tandemctl groups delete cg_... [--etag E]
//! tandemctl groups suspend cg_... tok_...
//! tandemctl groups resume cg_... tok_...
//! ```
//!
//! A member is `TOKEN:LABEL:PRIORITY[:LIMIT_PER_PAYMENT[:LIMIT_PER_MONTH[:COST_CENTER]]]`; an
//! empty limit means none, and the cost center takes the rest of the spec, colons included.
//! Amounts are decimal major units in the group's currency, converted exactly. This module
//! parses syntax only: the orchestrator checks the group and its policy and names the bad field.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient;
use tandem_tls::TlsFiles;
use tandem_tls::identity::Role;

use crate::charge::{failure, parse_amount, request_id, show, wire};
use crate::dev;

/// How long setting up a connection, TLS handshake included, may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a call that does not wait on anything may take.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The most pages a `list` command follows (100 rows each at most), so a listing always ends.
pub(crate) const LIST_PAGES_MAX: usize = 1_000;

/// Where the orchestrator is and who we are.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// The orchestrator (`https://host:port`).
    #[arg(
        long,
        env = "TANDEM_ORCHESTRATOR_URI",
        default_value = "https://127.0.0.1:50052"
    )]
    orchestrator: String,
    /// Directory of the certificates (`ca.pem` and the identity's `.pem`/`.key`).
    #[arg(long, default_value = dev::DEV_DIR)]
    certs: PathBuf,
    /// The DNS name the orchestrator's certificate carries.
    #[arg(long, default_value = "localhost")]
    server_name: String,
}

/// A channel to the orchestrator as `role` (its identity files are `<certs>/<role>.pem` and
/// `.key`), on which every call may take up to `call_timeout`.
pub(crate) async fn channel(
    target: &Target,
    role: Role,
    call_timeout: Duration,
) -> anyhow::Result<tonic::transport::Channel> {
    let files = TlsFiles::in_dir(&target.certs, role.as_str());
    let endpoint = tandem_tls::client::endpoint(
        &target.orchestrator,
        &files,
        &target.server_name,
        CONNECT_TIMEOUT,
    )?
    // `endpoint` bounds calls by the connect timeout; calls that wait on a payment need longer.
    .timeout(call_timeout);
    tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect())
        .await
        .map_err(|_| anyhow::anyhow!("cannot connect to {}: timed out", target.orchestrator))?
        .with_context(|| format!("connecting to the orchestrator at {}", target.orchestrator))
}

/// The allocation-policy flags of `groups create` (the group's default policy) and `pay` (a
/// policy for one payment).
#[derive(Debug, clap::Args)]
pub(crate) struct PolicyArgs {
    /// How the amount is first divided among the members.
    #[arg(long, value_enum)]
    strategy: Option<Strategy>,
    /// A member's share in basis points (weighted, and optionally parallel); the shares sum
    /// to 10000.
    #[arg(long = "weight", value_name = "TOKEN:BP", requires = "strategy")]
    weights: Vec<String>,
    /// A member's fixed amount (fixed), in the group's or the invoice's currency.
    #[arg(long = "fixed", value_name = "TOKEN:AMOUNT", requires = "strategy")]
    fixed_amounts: Vec<String>,
    /// Where a fixed allocation's rest goes.
    #[arg(long, value_enum, requires = "strategy")]
    remainder: Option<Remainder>,
    /// Move what a declined card did not cover to the next members.
    #[arg(long, requires = "strategy")]
    fallback: bool,
    /// The bound on authorization attempts in one payment, 1-50; the orchestrator's default
    /// (10) if not given.
    #[arg(long, requires = "strategy", value_parser = clap::value_parser!(i32).range(1..=50))]
    attempts_max: Option<i32>,
    /// Keep what was covered when the whole amount cannot be (otherwise all or nothing).
    #[arg(long, requires = "strategy")]
    allow_partial: bool,
}

/// `AllocationStrategy` on the command line; `by_currency`, as the output spells it, works too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Strategy {
    Sequential,
    Parallel,
    Weighted,
    Fixed,
    #[value(alias = "by_currency")]
    ByCurrency,
}

/// `RemainderRule` on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Remainder {
    Sequential,
    Even,
    Proportional,
}

impl From<Strategy> for pb::AllocationStrategy {
    fn from(strategy: Strategy) -> Self {
        match strategy {
            Strategy::Sequential => Self::Sequential,
            Strategy::Parallel => Self::Parallel,
            Strategy::Weighted => Self::Weighted,
            Strategy::Fixed => Self::Fixed,
            Strategy::ByCurrency => Self::ByCurrency,
        }
    }
}

impl From<Remainder> for pb::RemainderRule {
    fn from(remainder: Remainder) -> Self {
        match remainder {
            Remainder::Sequential => Self::Sequential,
            Remainder::Even => Self::Even,
            Remainder::Proportional => Self::Proportional,
        }
    }
}

impl PolicyArgs {
    /// The policy the flags describe, with fixed amounts read in `currency`; `None` without
    /// `--strategy` (clap refuses the other policy flags without it).
    pub(crate) fn policy(&self, currency: &str) -> anyhow::Result<Option<pb::AllocationPolicy>> {
        let Some(strategy) = self.strategy else {
            return Ok(None);
        };
        let weights = self
            .weights
            .iter()
            .map(|spec| parse_weight(spec))
            .collect::<anyhow::Result<_>>()?;
        let fixed_amounts = self
            .fixed_amounts
            .iter()
            .map(|spec| parse_fixed_amount(spec, currency))
            .collect::<anyhow::Result<_>>()?;
        let completion = if self.allow_partial {
            pb::Completion::AllowPartial
        } else {
            pb::Completion::AllOrNothing
        };
        Ok(Some(pb::AllocationPolicy {
            strategy: pb::AllocationStrategy::from(strategy).into(),
            weights,
            fixed_amounts,
            remainder_rule: self
                .remainder
                .map_or(pb::RemainderRule::Unspecified, pb::RemainderRule::from)
                .into(),
            fallback: Some(pb::FallbackPolicy {
                enabled: self.fallback,
                attempts_max: self.attempts_max.unwrap_or(0),
            }),
            completion: completion.into(),
            ceiling_windows: Vec::new(),
        }))
    }
}

/// `TOKEN:BP`, e.g. `tok_...:6000`.
fn parse_weight(spec: &str) -> anyhow::Result<pb::MemberWeight> {
    let (token, basis_points) = spec
        .split_once(':')
        .filter(|(token, _)| !token.is_empty())
        .with_context(|| format!("--weight {spec:?} must be TOKEN:BASIS_POINTS"))?;
    let basis_points = basis_points
        .parse()
        .with_context(|| format!("--weight {spec:?}: basis points must be an integer"))?;
    Ok(pb::MemberWeight {
        token: token.to_owned(),
        basis_points,
    })
}

/// `TOKEN:AMOUNT`, e.g. `tok_...:12.50`, the amount in `currency`.
fn parse_fixed_amount(spec: &str, currency: &str) -> anyhow::Result<pb::MemberAmount> {
    let (token, amount) = spec
        .split_once(':')
        .filter(|(token, _)| !token.is_empty())
        .with_context(|| format!("--fixed {spec:?} must be TOKEN:AMOUNT"))?;
    let amount = parse_amount(amount, currency).with_context(|| format!("--fixed {spec:?}"))?;
    Ok(pb::MemberAmount {
        token: token.to_owned(),
        amount: Some(wire(amount)),
    })
}

/// `TOKEN:LABEL:PRIORITY[:LIMIT_PER_PAYMENT[:LIMIT_PER_MONTH[:COST_CENTER]]]`, an active
/// member charged in `currency`.
fn parse_member(spec: &str, currency: &str) -> anyhow::Result<pb::CardGroupMember> {
    const FORMAT: &str = "TOKEN:LABEL:PRIORITY[:LIMIT_PER_PAYMENT[:LIMIT_PER_MONTH[:COST_CENTER]]]";
    // Six fields at most: the cost center, last, keeps any colons it has.
    let mut fields = spec.splitn(6, ':');
    let mut required = |what: &str| {
        fields
            .next()
            .filter(|field| !field.is_empty())
            .with_context(|| format!("--member {spec:?} has no {what}; the format is {FORMAT}"))
    };
    let token = required("token")?.to_owned();
    let label = required("label")?.to_owned();
    let priority = required("priority")?
        .parse()
        .with_context(|| format!("--member {spec:?}: the priority must be an integer"))?;
    let mut limit = |what: &str| -> anyhow::Result<Option<_>> {
        match fields.next() {
            None | Some("") => Ok(None),
            Some(amount) => parse_amount(amount, currency)
                .map(|money| Some(wire(money)))
                .with_context(|| format!("--member {spec:?}: {what}")),
        }
    };
    let limit_per_payment = limit("limit per payment")?;
    let limit_per_month = limit("limit per month")?;
    let cost_center = fields.next().unwrap_or_default().to_owned();
    Ok(pb::CardGroupMember {
        token,
        label,
        currency_code: currency.to_owned(),
        priority,
        cost_center,
        limit_per_payment,
        limit_per_month,
        state: pb::CardGroupMemberState::Active.into(),
        ..Default::default()
    })
}

/// The card-group commands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum GroupsCommand {
    /// Create a card group.
    // The policy flags are optional for `pay`; here `--strategy` sets the default policy.
    #[command(mut_arg("strategy", |strategy| strategy.required(true)))]
    Create {
        #[command(flatten)]
        target: Target,
        /// The billing account the group belongs to.
        #[arg(long)]
        billing_account: String,
        /// A name for people.
        #[arg(long)]
        name: String,
        /// ISO 4217 currency of the group's invoices, its members and its fixed amounts.
        #[arg(long, default_value = "USD")]
        currency: String,
        /// A card of the group (repeat for each).
        #[arg(
            long = "member",
            value_name = "TOKEN:LABEL:PRIORITY[:LIMIT_PER_PAYMENT[:LIMIT_PER_MONTH[:COST_CENTER]]]",
            required = true
        )]
        members: Vec<String>,
        /// The group's default policy; `--strategy` is required.
        #[command(flatten)]
        policy: PolicyArgs,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Show a card group, archived ones included.
    Get {
        #[command(flatten)]
        target: Target,
        /// The card group id.
        card_group_id: String,
    },
    /// List card groups, newest first.
    List {
        #[command(flatten)]
        target: Target,
        /// Only the groups of this billing account.
        #[arg(long)]
        billing_account: Option<String>,
        /// List archived groups too.
        #[arg(long)]
        show_archived: bool,
        /// Groups per call, 1-100.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i32).range(1..=100))]
        page_size: i32,
    },
    /// Archive a card group: kept for reads, refused for new payments.
    Delete {
        #[command(flatten)]
        target: Target,
        /// The card group id.
        card_group_id: String,
        /// Archive only if the group is still at this version.
        #[arg(long, default_value = "")]
        etag: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Stop allocating to a member (for example a card reported lost).
    Suspend {
        #[command(flatten)]
        target: Target,
        /// The card group id.
        card_group_id: String,
        /// The member's token.
        token: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
    /// Allocate to a suspended member again.
    Resume {
        #[command(flatten)]
        target: Target,
        /// The card group id.
        card_group_id: String,
        /// The member's token.
        token: String,
        /// Idempotency key; a new UUID by default.
        #[arg(long)]
        request_id: Option<String>,
    },
}

type Client = CardGroupServiceClient<tonic::transport::Channel>;

async fn client(target: &Target) -> anyhow::Result<Client> {
    Ok(CardGroupServiceClient::new(
        channel(target, Role::Treasury, CALL_TIMEOUT).await?,
    ))
}

/// Runs a card-group command.
pub(crate) async fn run(command: GroupsCommand) -> anyhow::Result<()> {
    match command {
        GroupsCommand::Create {
            target,
            billing_account,
            name,
            currency,
            members,
            policy,
            request_id: id,
        } => {
            let members = members
                .iter()
                .map(|spec| parse_member(spec, &currency))
                .collect::<anyhow::Result<_>>()?;
            let default_policy = policy
                .policy(&currency)?
                .context("--strategy is required: it sets the group's default policy")?;
            let group = client(&target)
                .await?
                .create_card_group(pb::CreateCardGroupRequest {
                    request_id: request_id(id),
                    card_group: Some(pb::CardGroup {
                        billing_account_id: billing_account,
                        display_name: name,
                        default_currency_code: currency,
                        members,
                        default_policy: Some(default_policy),
                        ..Default::default()
                    }),
                })
                .await
                .map_err(failure)?
                .into_inner()
                .card_group
                .context("no card group in the response")?;
            print_group(&group);
        }
        GroupsCommand::Get {
            target,
            card_group_id,
        } => print_group(&get(&mut client(&target).await?, card_group_id).await?),
        GroupsCommand::List {
            target,
            billing_account,
            show_archived,
            page_size,
        } => {
            let mut client = client(&target).await?;
            let mut page_token = String::new();
            println!(
                "{:<29}  {:<8}  {:<20}  {:>5}  {:<11}  name",
                "card group", "state", "billing account", "cards", "strategy"
            );
            for _ in 0..LIST_PAGES_MAX {
                let page = client
                    .list_card_groups(pb::ListCardGroupsRequest {
                        page_size,
                        page_token,
                        billing_account_id: billing_account.clone().unwrap_or_default(),
                        show_archived,
                    })
                    .await
                    .map_err(failure)?
                    .into_inner();
                for group in &page.card_groups {
                    let strategy = group.default_policy.as_ref().map_or(0, |p| p.strategy);
                    println!(
                        "{:<29}  {:<8}  {:<20}  {:>5}  {:<11}  {}",
                        group.id,
                        value_name(
                            group.state,
                            "CARD_GROUP_STATE_",
                            pb::CardGroupState::as_str_name
                        ),
                        group.billing_account_id,
                        group.members.len(),
                        value_name(
                            strategy,
                            "ALLOCATION_STRATEGY_",
                            pb::AllocationStrategy::as_str_name
                        ),
                        group.display_name
                    );
                }
                if page.next_page_token.is_empty() {
                    return Ok(());
                }
                page_token = page.next_page_token;
            }
            println!(
                "(stopped after {LIST_PAGES_MAX} pages; narrow the listing with --billing-account)"
            );
        }
        GroupsCommand::Delete {
            target,
            card_group_id,
            etag,
            request_id: id,
        } => {
            let group = client(&target)
                .await?
                .delete_card_group(pb::DeleteCardGroupRequest {
                    request_id: request_id(id),
                    card_group_id,
                    etag,
                })
                .await
                .map_err(failure)?
                .into_inner()
                .card_group
                .context("no card group in the response")?;
            print_group(&group);
        }
        GroupsCommand::Suspend {
            target,
            card_group_id,
            token,
            request_id: id,
        } => {
            let mut client = client(&target).await?;
            let state = pb::CardGroupMemberState::Suspended;
            set_member_state(&mut client, card_group_id, &token, state, id).await?;
        }
        GroupsCommand::Resume {
            target,
            card_group_id,
            token,
            request_id: id,
        } => {
            let mut client = client(&target).await?;
            let state = pb::CardGroupMemberState::Active;
            set_member_state(&mut client, card_group_id, &token, state, id).await?;
        }
    }
    Ok(())
}

async fn get(client: &mut Client, card_group_id: String) -> anyhow::Result<pb::CardGroup> {
    client
        .get_card_group(pb::GetCardGroupRequest { card_group_id })
        .await
        .map_err(failure)?
        .into_inner()
        .card_group
        .context("no card group in the response")
}

/// Reads the group, sets one member's state, and writes the members back only if the group
/// is still at the version read (its etag), so a concurrent edit is never overwritten.
async fn set_member_state(
    client: &mut Client,
    card_group_id: String,
    token: &str,
    state: pb::CardGroupMemberState,
    id: Option<String>,
) -> anyhow::Result<()> {
    let mut group = get(client, card_group_id).await?;
    let member = group
        .members
        .iter_mut()
        .find(|member| member.token == token)
        .with_context(|| format!("{token} is not a member of {}", group.id))?;
    if member.state == i32::from(state) {
        println!(
            "{} is already {}",
            member.label,
            value_name(
                state.into(),
                "CARD_GROUP_MEMBER_STATE_",
                pb::CardGroupMemberState::as_str_name
            )
        );
        print_group(&group);
        return Ok(());
    }
    member.state = state.into();
    let mut request = pb::UpdateCardGroupRequest {
        request_id: request_id(id),
        card_group: Some(pb::CardGroup {
            id: group.id,
            etag: group.etag,
            members: group.members,
            ..Default::default()
        }),
        // Reached through the field, so that this crate needs no `prost-types` of its own.
        update_mask: Some(Default::default()),
    };
    if let Some(mask) = request.update_mask.as_mut() {
        mask.paths = vec!["members".to_owned()];
    }
    let group = client
        .update_card_group(request)
        .await
        .map_err(failure)?
        .into_inner()
        .card_group
        .context("no card group in the response")?;
    print_group(&group);
    Ok(())
}

fn print_group(group: &pb::CardGroup) {
    println!("card group  {}", group.id);
    println!("name        {}", group.display_name);
    println!("billing     {}", group.billing_account_id);
    println!("currency    {}", group.default_currency_code);
    println!(
        "state       {}",
        value_name(
            group.state,
            "CARD_GROUP_STATE_",
            pb::CardGroupState::as_str_name
        )
    );
    println!("etag        {}", group.etag);
    println!(
        "created     {}",
        show_time(group.create_time.as_ref().map(|t| t.seconds))
    );
    println!(
        "updated     {}",
        show_time(group.update_time.as_ref().map(|t| t.seconds))
    );
    if let Some(time) = &group.archive_time {
        println!("archived    {}", show_time(Some(time.seconds)));
    }
    if let Some(policy) = &group.default_policy {
        println!("policy      {}", describe_policy(policy));
    }
    let label_width = column_width("label", group.members.iter().map(|m| m.label.as_str()));
    println!(
        "\n{:>8}  {:<label_width$}  {:<30}  {:<5}  {:>16}  {:>16}  {:>16}  {:<9}  cost center",
        "priority", "label", "token", "last4", "per payment", "per month", "month to date", "state"
    );
    for member in &group.members {
        println!(
            "{:>8}  {:<label_width$}  {:<30}  {:<5}  {:>16}  {:>16}  {:>16}  {:<9}  {}",
            member.priority,
            member.label,
            member.token,
            member.last4,
            show(member.limit_per_payment.as_ref()),
            show(member.limit_per_month.as_ref()),
            show(member.month_to_date_spend.as_ref()),
            value_name(
                member.state,
                "CARD_GROUP_MEMBER_STATE_",
                pb::CardGroupMemberState::as_str_name
            ),
            member.cost_center
        );
    }
}

/// One line for people: the strategy and whichever of its settings are set.
fn describe_policy(policy: &pb::AllocationPolicy) -> String {
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
    use clap::Parser as _;

    use super::*;

    /// The policy flags alone, parsed as `groups create` and `pay` parse them.
    #[derive(Debug, clap::Parser)]
    struct PolicyCli {
        #[command(flatten)]
        policy: PolicyArgs,
    }

    fn policy(args: &[&str]) -> anyhow::Result<Option<pb::AllocationPolicy>> {
        let cli = PolicyCli::try_parse_from(std::iter::once("test").chain(args.iter().copied()))?;
        cli.policy.policy("USD")
    }

    fn usd(minor_units: i64) -> Option<tandem_proto::tandem::r#type::v1::Money> {
        Some(tandem_proto::tandem::r#type::v1::Money {
            currency_code: "USD".to_owned(),
            minor_units,
        })
    }

    /// A member spec fills token, label and priority, optional limits in the group's currency
    /// (an empty one is no limit) and a cost center that keeps its colons; the member is
    /// active.
    #[test]
    fn member_specs() {
        let member = parse_member("tok_a:card A:1", "USD").unwrap();
        assert_eq!(
            member,
            pb::CardGroupMember {
                token: "tok_a".to_owned(),
                label: "card A".to_owned(),
                currency_code: "USD".to_owned(),
                priority: 1,
                state: pb::CardGroupMemberState::Active.into(),
                ..Default::default()
            }
        );

        let member = parse_member("tok_b:card B:2:12.50:1000:ops:emea", "USD").unwrap();
        assert_eq!(member.limit_per_payment, usd(1250));
        assert_eq!(member.limit_per_month, usd(100_000));
        assert_eq!(member.cost_center, "ops:emea");

        let member = parse_member("tok_c:card C:3::200", "USD").unwrap();
        assert_eq!(member.limit_per_payment, None);
        assert_eq!(member.limit_per_month, usd(20_000));
        assert_eq!(member.cost_center, "");

        let member = parse_member("tok_d:card D:4:1200", "JPY").unwrap();
        assert_eq!(member.currency_code, "JPY");
        assert_eq!(member.limit_per_payment.map(|m| m.minor_units), Some(1200));
    }

    /// A member spec without token, label or an integer priority, or with a malformed limit,
    /// is refused with the spec in the message.
    #[test]
    fn bad_member_specs() {
        for spec in [
            "",
            "tok_a",
            "tok_a:card A",
            ":card A:1",
            "tok_a::1",
            "tok_a:card A:",
            "tok_a:card A:first",
            "tok_a:card A:1:12.345",
            "tok_a:card A:1:-5",
            "tok_a:card A:1:10:ten",
        ] {
            let error = parse_member(spec, "USD").expect_err(spec);
            assert!(
                format!("{error:#}").contains(&format!("{spec:?}")),
                "{error:#}"
            );
        }
    }

    /// Each strategy's flags become the matching policy; without `--allow-partial` the
    /// completion is all or nothing, and no `--attempts-max` leaves the server's default.
    #[test]
    fn policy_flags() {
        let sequential = policy(&["--strategy", "sequential", "--fallback"])
            .unwrap()
            .unwrap();
        assert_eq!(
            sequential,
            pb::AllocationPolicy {
                strategy: pb::AllocationStrategy::Sequential.into(),
                fallback: Some(pb::FallbackPolicy {
                    enabled: true,
                    attempts_max: 0,
                }),
                completion: pb::Completion::AllOrNothing.into(),
                ..Default::default()
            }
        );

        let weighted = policy(&[
            "--strategy",
            "weighted",
            "--weight",
            "tok_a:6000",
            "--weight",
            "tok_b:4000",
            "--attempts-max",
            "5",
            "--allow-partial",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(
            weighted.strategy,
            i32::from(pb::AllocationStrategy::Weighted)
        );
        assert_eq!(
            weighted.weights,
            [("tok_a", 6000), ("tok_b", 4000)].map(|(token, basis_points)| pb::MemberWeight {
                token: token.to_owned(),
                basis_points,
            })
        );
        assert_eq!(
            weighted.fallback.map(|f| (f.enabled, f.attempts_max)),
            Some((false, 5))
        );
        assert_eq!(weighted.completion, i32::from(pb::Completion::AllowPartial));

        let fixed = policy(&[
            "--strategy",
            "fixed",
            "--fixed",
            "tok_a:12.50",
            "--remainder",
            "proportional",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(fixed.strategy, i32::from(pb::AllocationStrategy::Fixed));
        assert_eq!(
            fixed.fixed_amounts,
            [pb::MemberAmount {
                token: "tok_a".to_owned(),
                amount: usd(1250),
            }]
        );
        assert_eq!(
            fixed.remainder_rule,
            i32::from(pb::RemainderRule::Proportional)
        );

        for (flag, strategy) in [
            ("parallel", pb::AllocationStrategy::Parallel),
            ("by-currency", pb::AllocationStrategy::ByCurrency),
        ] {
            let parsed = policy(&["--strategy", flag]).unwrap().unwrap();
            assert_eq!(parsed.strategy, i32::from(strategy), "{flag}");
            assert_eq!(
                parsed.remainder_rule,
                i32::from(pb::RemainderRule::Unspecified)
            );
        }
    }

    /// No flags is no policy (the group's default applies); policy flags without
    /// `--strategy`, malformed weights and fixed amounts, and out-of-range attempts are
    /// refused.
    #[test]
    fn bad_policy_flags() {
        assert_eq!(policy(&[]).unwrap(), None);
        for args in [
            &["--fallback"][..],
            &["--weight", "tok_a:10000"],
            &["--strategy", "weighted", "--weight", "tok_a"],
            &["--strategy", "weighted", "--weight", ":10000"],
            &["--strategy", "weighted", "--weight", "tok_a:half"],
            &["--strategy", "fixed", "--fixed", "tok_a:1.005"],
            &["--strategy", "fixed", "--fixed", "tok_a"],
            &["--strategy", "fixed", "--remainder", "last"],
            &["--strategy", "sequential", "--attempts-max", "0"],
            &["--strategy", "sequential", "--attempts-max", "51"],
            &["--strategy", "random"],
        ] {
            assert!(policy(args).is_err(), "{args:?}");
        }
    }

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
