//! `tandemctl groups`: administer card groups on a running orchestrator with a `treasury`
//! identity. The group's default policy takes the flags of [`crate::policy`].
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

use anyhow::Context as _;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_proto::tandem::orchestrator::v1::card_group_service_client::CardGroupServiceClient;
use tandem_tls::identity::Role;

use crate::amounts::{parse_amount, show, wire};
use crate::connect::{
    CALL_TIMEOUT, LIST_PAGES_MAX, OrchestratorTarget, failure, orchestrator_channel, request_id,
};
use crate::policy::PolicyArgs;
use crate::print::{column_width, describe_policy, show_time, value_name};

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
        target: OrchestratorTarget,
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
        target: OrchestratorTarget,
        /// The card group id.
        card_group_id: String,
    },
    /// List card groups, newest first.
    List {
        #[command(flatten)]
        target: OrchestratorTarget,
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
        target: OrchestratorTarget,
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
        target: OrchestratorTarget,
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
        target: OrchestratorTarget,
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

async fn client(target: &OrchestratorTarget) -> anyhow::Result<Client> {
    Ok(CardGroupServiceClient::new(
        orchestrator_channel(target, Role::Treasury, CALL_TIMEOUT).await?,
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
