//! Money and allocation policies from arbitrary bytes: a card group and a payment request
//! decoded from the fuzzer's bytes go through the orchestrator's edge (the same checks as the
//! RPCs), and whatever passes is planned as the orchestrator plans a payment: the legs and what
//! stays uncovered must sum exactly to the amount, each leg within its member's room, only to
//! eligible members. Nothing may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message as _;
use tandem_money::Currency;
use tandem_orchestrator::domain::planning;
use tandem_orchestrator::grpc::convert;
use tandem_proto::tandem::orchestrator::v1 as pb;
use tandem_runtime::fields::Violations;

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
    let Some(input) = convert::groups::group_input(&mut v, &group) else {
        return;
    };
    let invoice = convert::payments::invoice(&mut v, request.invoice.as_ref(), 1_000_000_000_000);
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
    let Ok(plan) = planning::plan(&input.members, &policy, &invoice, |_| 0, now, Vec::new()) else {
        return;
    };
    let legs: i64 = plan.saga.legs.iter().map(|leg| leg.amount).sum();
    let uncovered: i64 = plan.uncovered.iter().map(|m| m.minor_units).sum();
    assert_eq!(legs + uncovered, invoice.amount.minor_units, "the split does not sum");
    for leg in &plan.saga.legs {
        let member = plan
            .saga
            .members
            .iter()
            .find(|m| m.token == leg.token)
            .expect("a leg for a member of the group");
        assert!(member.active, "a suspended member got a leg");
        assert!(leg.amount > 0);
        assert!(member.room.is_none_or(|room| leg.amount <= room));
    }
});
