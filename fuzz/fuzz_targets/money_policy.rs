//! Money and allocation policies from arbitrary bytes: a card group and a payment request
//! decoded from the fuzzer's bytes go through the orchestrator's edge (the same checks as the
//! RPCs), and whatever passes is allocated: the parts must sum exactly to the amount, each
//! within its member's room, only to eligible members. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use tandem_money::Currency;
use tandem_orchestrator::domain::allocation::{allocate, check_policy};
use tandem_orchestrator::domain::group::member_at;
use tandem_orchestrator::grpc::convert::{self, Violations};
use tandem_proto::tandem::orchestrator::v1 as pb;

fuzz_target!(|data: &[u8]| {
    let split = data.first().map_or(0, |b| *b as usize).min(data.len().saturating_sub(1));
    let (group_bytes, request_bytes) = data.get(1..).unwrap_or_default().split_at(split);
    let _ = Currency::parse(&String::from_utf8_lossy(request_bytes));
    let (Ok(group), Ok(request)) = (
        pb::CardGroup::decode(group_bytes),
        pb::CreatePaymentRequest::decode(request_bytes),
    ) else {
        return;
    };
    let mut v = Violations::default();
    let Some(input) = convert::group_input(&mut v, &group) else {
        return;
    };
    let invoice = convert::invoice(&mut v, request.invoice.as_ref(), 1_000_000_000_000);
    let policy = match &request.policy_override {
        Some(wire) => convert::policy(
            &mut v,
            "policy_override",
            wire,
            &input.members,
            invoice.as_ref().map(|i| i.amount.currency),
        ),
        None => Some(input.policy.clone()),
    };
    let (Some(invoice), Some(policy), true) = (invoice, policy, v.is_empty()) else {
        return;
    };
    let now = time::OffsetDateTime::UNIX_EPOCH;
    let members: Vec<_> = input
        .members
        .iter()
        .map(|m| member_at(m, &policy.windows, now, 0))
        .collect();
    if check_policy(&policy.strategy, &members, invoice.amount, &invoice.lines).is_err() {
        return;
    }
    let allocation = allocate(
        invoice.amount,
        &invoice.lines,
        &members,
        &policy.strategy,
        policy.fallback,
    );
    let parts: i64 = allocation.parts.iter().map(|p| p.amount.minor_units).sum();
    let uncovered: i64 = allocation.uncovered.iter().map(|m| m.minor_units).sum();
    assert_eq!(parts + uncovered, invoice.amount.minor_units, "the split does not sum");
    for part in &allocation.parts {
        let member = members
            .iter()
            .find(|m| m.token == part.token)
            .expect("a part for a member of the group");
        assert!(member.active, "a suspended member got a part");
        assert!(part.amount.minor_units > 0);
        assert!(member.room.is_none_or(|room| part.amount.minor_units <= room));
    }
});
