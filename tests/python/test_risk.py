"""Risk assessment and human review (RiskService, PaymentService.ReviewPayment) through a
Python client generated from proto/: the treasury sets a billing account's policy (idempotent by
request id, versioned), readers and reviewers read it, a payer may not; a payment the policy holds
for review waits IN_REVIEW with its holds in place until the reviewer approves it (captured) or
rejects it (every hold voided, FAILED `REVIEW_REJECTED`); a blocked payment ends FAILED
`RISK_BLOCKED` before any card is tried; bad policies are INVALID_ARGUMENT naming their field.

Every test has a billing account of its own (policies are per account, and velocity rules count
the account's payments), with a card group in it."""

import base64
import os
import time
import uuid

import grpc
import pytest
from google.protobuf import duration_pb2

from tandem.orchestrator.v1 import card_group_service_pb2 as group_pb
from tandem.orchestrator.v1 import card_group_service_pb2_grpc as group_grpc
from tandem.orchestrator.v1 import payment_service_pb2 as pay_pb
from tandem.orchestrator.v1 import payment_service_pb2_grpc as pay_grpc
from tandem.orchestrator.v1 import risk_service_pb2 as risk_pb
from tandem.orchestrator.v1 import risk_service_pb2_grpc as risk_grpc
from test_payments import details, member, tokenize, usd

# The dev certificate set names every identity "dev" but the reviewer's (tls/src/issue.rs).
REVIEWER = ("dev-reviewer", "reviewer")

# States a payment moves on from by itself.
MOVING = {
    pay_pb.PAYMENT_STATE_PENDING,
    pay_pb.PAYMENT_STATE_AUTHORIZING,
    pay_pb.PAYMENT_STATE_CAPTURING,
    pay_pb.PAYMENT_STATE_REVERSING,
}


def new_account():
    return f"acct-py-risk-{uuid.uuid4().hex[:16]}"


def risk(stack, role="treasury"):
    return risk_grpc.RiskServiceStub(stack.orchestrator(role))


def payments(stack, role="payer"):
    return pay_grpc.PaymentServiceStub(stack.orchestrator(role))


def velocity(name, count_max, action=risk_pb.RISK_ACTION_REVIEW, score=10, window_s=600):
    """A rule over the billing account's payments in `window_s`: it fires once more than
    `count_max` payments, this one included, were created."""
    return risk_pb.RiskRule(
        name=name,
        action=action,
        score=score,
        velocity=risk_pb.VelocityRule(
            scope=risk_pb.RISK_SCOPE_BILLING_ACCOUNT,
            window=duration_pb2.Duration(seconds=window_s),
            count_max=count_max,
        ),
    )


def set_request(account, *rules, request_id=None, review_score=0, block_score=0, version=0):
    return risk_pb.SetRiskPolicyRequest(
        request_id=request_id or str(uuid.uuid4()),
        billing_account_id=account,
        policy=risk_pb.RiskPolicy(
            rules=list(rules),
            review_score=review_score,
            block_score=block_score,
            version=version,
        ),
    )


def set_policy(stack, account, *rules, **kwargs):
    return risk(stack).SetRiskPolicy(set_request(account, *rules, **kwargs), timeout=30).policy


def get_policy(stack, account, role="treasury"):
    return (
        risk(stack, role)
        .GetRiskPolicy(risk_pb.GetRiskPolicyRequest(billing_account_id=account), timeout=30)
        .policy
    )


def group_in(stack, account):
    """A card group of the account that splits a payment over two cards, 60/40."""
    a = tokenize(stack, "4242424242424242")
    b = tokenize(stack, "5555555555554444")
    card_group = group_pb.CardGroup(
        billing_account_id=account,
        display_name="Python risk group",
        default_currency_code="USD",
        members=[member(a, "card A", 1), member(b, "card B", 2)],
        default_policy=group_pb.AllocationPolicy(
            strategy=group_pb.ALLOCATION_STRATEGY_WEIGHTED,
            weights=[
                group_pb.MemberWeight(token=a, basis_points=6000),
                group_pb.MemberWeight(token=b, basis_points=4000),
            ],
        ),
    )
    with stack.orchestrator("treasury") as channel:
        return (
            group_grpc.CardGroupServiceStub(channel)
            .CreateCardGroup(
                group_pb.CreateCardGroupRequest(request_id=str(uuid.uuid4()), card_group=card_group),
                timeout=30,
            )
            .card_group.id
        )


def pay(stack, group_id, amount=2050, invoice="INV-PY-RISK"):
    """Creates a payment and waits until it is terminal or in review."""
    request = pay_pb.CreatePaymentRequest(
        request_id=str(uuid.uuid4()),
        invoice=pay_pb.Invoice(id=invoice, amount=usd(amount), description="Python risk invoice"),
        card_group_id=group_id,
        wait=True,
        wait_timeout_ms=20000,
    )
    return payments(stack).CreatePayment(request, timeout=30).payment


def get_payment(stack, payment_id, role="reader"):
    return (
        payments(stack, role)
        .GetPayment(pay_pb.GetPaymentRequest(payment_id=payment_id), timeout=30)
        .payment
    )


def settled(stack, payment_id, timeout=30):
    """Polls the payment until it no longer moves by itself (terminal, or still in review)."""
    deadline = time.monotonic() + timeout
    while True:
        payment = get_payment(stack, payment_id)
        if payment.state not in MOVING:
            return payment
        assert time.monotonic() < deadline, (
            f"{payment_id} still {pay_pb.PaymentState.Name(payment.state)} after {timeout}s: "
            f"{payment.summary}"
        )
        time.sleep(0.2)


def review(stack, payment_id, verdict, note="", role="reviewer", request_id=None):
    request = pay_pb.ReviewPaymentRequest(
        request_id=request_id or str(uuid.uuid4()),
        payment_id=payment_id,
        verdict=verdict,
        note=note,
    )
    return payments(stack, role).ReviewPayment(request, timeout=30).payment


def events_of(stack, payment_id, role="reviewer"):
    """The types of a finished payment's events, in order (WatchPayment ends once it is
    terminal)."""
    stream = payments(stack, role).WatchPayment(
        pay_pb.WatchPaymentRequest(payment_id=payment_id), timeout=30
    )
    events = [message.event for message in stream]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    return events


def unknown_payment_id():
    """A well-formed payment id ("pay_" + 26 lower-case base32 characters) nobody was given."""
    return "pay_" + base64.b32encode(os.urandom(16)).decode().rstrip("=").lower()


def state(payment):
    return pay_pb.PaymentState.Name(payment.state)


def in_review(stack, rule_name="every_payment"):
    """A payment of a fresh account whose policy reviews every payment, as CreatePayment with
    `wait` returns it."""
    account = new_account()
    set_policy(stack, account, velocity(rule_name, 0))
    group_id = group_in(stack, account)
    payment = pay(stack, group_id)
    assert payment.state == pay_pb.PAYMENT_STATE_IN_REVIEW, (state(payment), payment.summary)
    return account, group_id, payment


def test_policy_default_set_replay_and_roles(vault):
    account = new_account()

    default = get_policy(vault, account)
    assert default.default_policy
    assert default.version == 0
    assert default.billing_account_id == account
    assert default.rules, "the default policy has rules (docs/risk.md)"
    assert not default.HasField("updater")

    request = set_request(account, velocity("account_velocity", 1, score=10))
    first = risk(vault).SetRiskPolicy(request, timeout=30).policy
    assert first.version == 1
    assert not first.default_policy
    assert first.billing_account_id == account
    assert list(first.rules) == list(request.policy.rules)
    assert first.rules[0].velocity.window.seconds == 600
    assert first.rules[0].velocity.HasField("count_max")
    assert (first.updater.name, first.updater.role) == ("dev", "treasury")
    assert first.HasField("update_time")

    # The same request id and request: the stored answer, the same update time.
    assert risk(vault).SetRiskPolicy(request, timeout=30).policy == first
    # The same request id with another request.
    request.policy.rules[0].velocity.count_max = 2
    with pytest.raises(grpc.RpcError) as reused:
        risk(vault).SetRiskPolicy(request, timeout=30)
    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(reused.value)[0] == "REQUEST_ID_REUSED"

    # Treasury, reader and reviewer read the policy as set.
    for role in ("treasury", "reader", "reviewer"):
        assert get_policy(vault, account, role) == first, role
    # A payer neither reads nor sets policies; a reader does not set them.
    with pytest.raises(grpc.RpcError) as refused:
        get_policy(vault, account, "payer")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert details(refused.value)[0] == "ROLE_NOT_ALLOWED"
    for role in ("payer", "reader", "reviewer"):
        with pytest.raises(grpc.RpcError) as refused:
            risk(vault, role).SetRiskPolicy(set_request(account, velocity("v", 5)), timeout=30)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, role
        assert details(refused.value)[0] == "ROLE_NOT_ALLOWED", role

    # Another account still has the default.
    assert get_policy(vault, new_account(), "reader").default_policy


def test_policy_versions(vault):
    """Each change is the next version; `policy.version` set replaces only that version."""
    account = new_account()
    assert set_policy(vault, account, velocity("account_velocity", 1)).version == 1
    # Version 0: whatever is current.
    assert set_policy(vault, account, velocity("account_velocity", 2)).version == 2
    # The current version named: replaced.
    third = set_policy(vault, account, velocity("account_velocity", 3), version=2)
    assert third.version == 3
    assert third.rules[0].velocity.count_max == 3
    # A stale version named: refused, nothing changed.
    with pytest.raises(grpc.RpcError) as stale:
        set_policy(vault, account, velocity("account_velocity", 4), version=2)
    assert stale.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(stale.value)[0] == "RISK_POLICY_CHANGED"
    assert get_policy(vault, account, "reader") == third


def test_review_then_approve_captures(vault):
    account, group_id, payment = in_review(vault)
    assert payment.billing_account_id == account
    assert payment.risk.action == risk_pb.RISK_ACTION_REVIEW
    assert payment.risk.policy_version == 1
    assert not payment.risk.default_policy
    assert payment.risk.score >= 10
    fired = {f.rule: f for f in payment.risk.fired}
    assert "every_payment" in fired, payment.risk
    rule = fired["every_payment"]
    assert rule.action == risk_pb.RISK_ACTION_REVIEW
    assert rule.score == 10
    assert rule.feature and rule.explanation, rule
    assert [(leg.label, leg.amount.minor_units) for leg in payment.legs] == [
        ("card A", 1230),
        ("card B", 820),
    ]
    assert all(leg.state == pay_pb.LEG_STATE_AUTHORIZED for leg in payment.legs), payment.legs
    assert payment.review.verdict == pay_pb.REVIEW_VERDICT_UNSPECIFIED
    assert payment.review.HasField("start_time") and payment.review.HasField("expire_time")
    assert not payment.review.HasField("decide_time")
    assert payment.failure_reason == ""

    # It stays in review (nothing moves it on by itself) and is in the review queue.
    assert get_payment(vault, payment.id, "reviewer").state == pay_pb.PAYMENT_STATE_IN_REVIEW
    queue = payments(vault, "reviewer").ListPayments(
        pay_pb.ListPaymentsRequest(
            state=pay_pb.PAYMENT_STATE_IN_REVIEW, billing_account_id=account
        ),
        timeout=30,
    )
    assert [p.id for p in queue.payments] == [payment.id]

    # Only a reviewer decides.
    for role in ("payer", "treasury", "reader"):
        with pytest.raises(grpc.RpcError) as refused:
            review(vault, payment.id, pay_pb.REVIEW_VERDICT_APPROVE, role=role)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, role

    request_id = str(uuid.uuid4())
    approved = review(
        vault, payment.id, pay_pb.REVIEW_VERDICT_APPROVE, note="known customer",
        request_id=request_id,
    )
    assert approved.id == payment.id
    assert approved.state in (pay_pb.PAYMENT_STATE_CAPTURING, pay_pb.PAYMENT_STATE_SUCCEEDED), (
        state(approved)
    )
    assert approved.review.verdict == pay_pb.REVIEW_VERDICT_APPROVE

    done = settled(vault, payment.id)
    assert done.state == pay_pb.PAYMENT_STATE_SUCCEEDED, (state(done), done.summary)
    assert all(leg.state == pay_pb.LEG_STATE_CAPTURED for leg in done.legs), done.legs
    assert sum(leg.captured.minor_units for leg in done.legs) == 2050
    assert done.review.verdict == pay_pb.REVIEW_VERDICT_APPROVE
    assert (done.review.reviewer.name, done.review.reviewer.role) == REVIEWER
    assert done.review.note == "known customer"
    assert done.review.HasField("decide_time")
    assert done.failure_reason == ""
    assert done.risk == payment.risk

    events = events_of(vault, payment.id)
    types = [e.type for e in events]
    for later, earlier in [
        (pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_RISK_ASSESSED, pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_CREATED),
        (pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_AUTHORIZING, pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_RISK_ASSESSED),
        (pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_IN_REVIEW, pay_pb.PAYMENT_EVENT_TYPE_LEG_AUTHORIZED),
        (pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_REVIEWED, pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_IN_REVIEW),
        (pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_CAPTURING, pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_REVIEWED),
    ]:
        assert earlier in types and later in types, [pay_pb.PaymentEventType.Name(t) for t in types]
        assert types.index(earlier) < types.index(later), [
            pay_pb.PaymentEventType.Name(t) for t in types
        ]
    assert types[-1] == pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_SUCCEEDED
    reviewed = events[types.index(pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_REVIEWED)]
    assert (reviewed.actor.name, reviewed.actor.role) == REVIEWER
    assert reviewed.type_name == "payment.reviewed"

    # The same review request again: the stored answer; a new one: not in review any more.
    again = review(
        vault, payment.id, pay_pb.REVIEW_VERDICT_APPROVE, note="known customer",
        request_id=request_id,
    )
    assert again.id == payment.id and again.review.verdict == pay_pb.REVIEW_VERDICT_APPROVE
    with pytest.raises(grpc.RpcError) as late:
        review(vault, payment.id, pay_pb.REVIEW_VERDICT_REJECT, note="changed my mind")
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(late.value)[0] == "PAYMENT_NOT_IN_REVIEW"


def test_review_then_reject_voids_every_hold(vault):
    _, _, payment = in_review(vault, rule_name="review_all")
    assert [f.rule for f in payment.risk.fired] == ["review_all"]
    assert len(payment.legs) == 2
    assert all(leg.state == pay_pb.LEG_STATE_AUTHORIZED for leg in payment.legs)

    # A rejection must say why.
    with pytest.raises(grpc.RpcError) as bare:
        review(vault, payment.id, pay_pb.REVIEW_VERDICT_REJECT)
    assert bare.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(bare.value) == ("INVALID_ARGUMENT", ["note"])

    note = "shipping address does not match the account"
    rejected = review(vault, payment.id, pay_pb.REVIEW_VERDICT_REJECT, note=note)
    assert rejected.state in (pay_pb.PAYMENT_STATE_REVERSING, pay_pb.PAYMENT_STATE_FAILED), (
        state(rejected)
    )
    done = settled(vault, payment.id)
    assert done.state == pay_pb.PAYMENT_STATE_FAILED, (state(done), done.summary)
    assert done.failure_reason == "REVIEW_REJECTED"
    assert [leg.state for leg in done.legs] == [pay_pb.LEG_STATE_VOIDED] * 2, done.legs
    assert not any(leg.captured.minor_units for leg in done.legs)
    assert done.review.verdict == pay_pb.REVIEW_VERDICT_REJECT
    assert (done.review.reviewer.name, done.review.reviewer.role) == REVIEWER
    assert done.review.note == note
    types = [e.type for e in events_of(vault, payment.id)]
    assert types.count(pay_pb.PAYMENT_EVENT_TYPE_LEG_VOIDED) == 2
    assert types[-1] == pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_FAILED
    assert types.index(pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_REVIEWED) < types.index(
        pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_REVERSING
    )


def test_block_fails_before_any_card(vault):
    # A blocking rule.
    account = new_account()
    set_policy(
        vault, account, velocity("no_payments", 0, action=risk_pb.RISK_ACTION_BLOCK, score=100)
    )
    payment = pay(vault, group_in(vault, account))
    assert payment.state == pay_pb.PAYMENT_STATE_FAILED, (state(payment), payment.summary)
    assert payment.failure_reason == "RISK_BLOCKED"
    assert len(payment.attempts) == 0, payment.attempts
    assert not any(leg.charge_id or leg.authorized.minor_units for leg in payment.legs)
    assert payment.risk.action == risk_pb.RISK_ACTION_BLOCK
    assert [(f.rule, f.action) for f in payment.risk.fired] == [
        ("no_payments", risk_pb.RISK_ACTION_BLOCK)
    ]
    assert payment.review.verdict == pay_pb.REVIEW_VERDICT_UNSPECIFIED
    assert get_payment(vault, payment.id) == payment
    types = [e.type for e in events_of(vault, payment.id)]
    assert pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_RISK_ASSESSED in types
    assert pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_AUTHORIZING not in types
    assert types[-1] == pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_FAILED

    # An ALLOW rule whose score reaches the policy's block score blocks too.
    account = new_account()
    set_policy(
        vault,
        account,
        velocity("scored", 0, action=risk_pb.RISK_ACTION_ALLOW, score=60),
        review_score=30,
        block_score=50,
    )
    payment = pay(vault, group_in(vault, account))
    assert payment.state == pay_pb.PAYMENT_STATE_FAILED, (state(payment), payment.summary)
    assert payment.failure_reason == "RISK_BLOCKED"
    assert len(payment.attempts) == 0
    assert (payment.risk.action, payment.risk.score) == (risk_pb.RISK_ACTION_BLOCK, 60)


def test_bad_input(vault):
    account = new_account()

    def refused(*rules):
        with pytest.raises(grpc.RpcError) as bad:
            risk(vault).SetRiskPolicy(set_request(account, *rules), timeout=30)
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        return details(bad.value)

    assert refused(velocity("zero_window", 1, window_s=0)) == (
        "INVALID_ARGUMENT",
        ["policy.rules[0].velocity.window"],
    )
    assert refused(velocity("odd_window", 1, window_s=601)) == (
        "INVALID_ARGUMENT",
        ["policy.rules[0].velocity.window"],
    )
    assert refused(velocity("negative", -1)) == (
        "INVALID_ARGUMENT",
        ["policy.rules[0].velocity.count_max"],
    )
    assert refused(
        risk_pb.RiskRule(name="no_kind", action=risk_pb.RISK_ACTION_REVIEW, score=10)
    ) == ("INVALID_ARGUMENT", ["policy.rules[0].kind"])
    # The index is the rule's own.
    assert refused(velocity("fine", 1), velocity("negative", -1)) == (
        "INVALID_ARGUMENT",
        ["policy.rules[1].velocity.count_max"],
    )
    # Nothing was set by the refusals.
    assert get_policy(vault, account).default_policy

    with pytest.raises(grpc.RpcError) as bad:
        get_policy(vault, "not an account!")
    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(bad.value) == ("INVALID_ARGUMENT", ["billing_account_id"])

    # A policy with no rules assesses nothing: the payment goes through; it is not in review.
    assert set_policy(vault, account).version == 1
    payment = pay(vault, group_in(vault, account))
    assert payment.state == pay_pb.PAYMENT_STATE_SUCCEEDED, (state(payment), payment.summary)
    assert payment.risk.action == risk_pb.RISK_ACTION_ALLOW
    assert len(payment.risk.fired) == 0
    with pytest.raises(grpc.RpcError) as not_in_review:
        review(vault, payment.id, pay_pb.REVIEW_VERDICT_APPROVE)
    assert not_in_review.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(not_in_review.value)[0] == "PAYMENT_NOT_IN_REVIEW"

    with pytest.raises(grpc.RpcError) as unspecified:
        review(vault, payment.id, pay_pb.REVIEW_VERDICT_UNSPECIFIED)
    assert unspecified.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(unspecified.value) == ("INVALID_ARGUMENT", ["verdict"])

    with pytest.raises(grpc.RpcError) as missing:
        review(vault, unknown_payment_id(), pay_pb.REVIEW_VERDICT_APPROVE)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert details(missing.value)[0] == "PAYMENT_NOT_FOUND"


def test_resolve_payment_through_the_generated_client(vault):
    """ResolvePayment (a payment the vault refused a capture or void of, DESIGN section 14) as
    the Python stub sends it: treasury only, a decision and a note required, and refused for a
    payment that does not need an operator. The refusal end to end is tests/tests/operator.rs."""
    account = new_account()
    assert set_policy(vault, account).version == 1
    payment = pay(vault, group_in(vault, account))
    assert payment.state == pay_pb.PAYMENT_STATE_SUCCEEDED, (state(payment), payment.summary)

    def resolve(payment_id, decision, note, role="treasury"):
        request = pay_pb.ResolvePaymentRequest(
            request_id=str(uuid.uuid4()), payment_id=payment_id, decision=decision, note=note
        )
        with pytest.raises(grpc.RpcError) as refused:
            payments(vault, role).ResolvePayment(request, timeout=30)
        return refused.value

    retry = pay_pb.RESOLUTION_DECISION_RETRY
    denied = resolve(payment.id, retry, "ticket 1", role="payer")
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    bad = resolve(payment.id, pay_pb.RESOLUTION_DECISION_UNSPECIFIED, "")
    assert details(bad) == ("INVALID_ARGUMENT", ["decision", "note"])
    settled_already = resolve(payment.id, pay_pb.RESOLUTION_DECISION_CONFIRM, "ticket 1")
    assert settled_already.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert details(settled_already)[0] == "PAYMENT_NOT_NEEDING_OPERATOR"
    missing = resolve(unknown_payment_id(), retry, "ticket 1")
    assert missing.code() == grpc.StatusCode.NOT_FOUND
    assert pay_pb.PaymentState.Name(pay_pb.PAYMENT_STATE_NEEDS_OPERATOR) == (
        "PAYMENT_STATE_NEEDS_OPERATOR"
    )


def test_health(vault):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with vault.orchestrator("reader") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tandem.orchestrator.v1.RiskService"),
            timeout=30,
        )
    assert response.status == health_pb2.HealthCheckResponse.SERVING
