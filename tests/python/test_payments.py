"""A Python client generated from proto/ pays an invoice from a card group through the
orchestrator over mutual TLS: a weighted split, a decline covered by another card, a refund,
idempotent replay, and errors decoded with grpcio-status (ErrorInfo, BadRequest)."""

import json
import os
import pathlib
import subprocess
import uuid

import grpc
import pytest
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from conftest import grpcurl
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tandem.orchestrator.v1 import card_group_service_pb2 as group_pb
from tandem.orchestrator.v1 import card_group_service_pb2_grpc as group_grpc
from tandem.orchestrator.v1 import payment_service_pb2 as pay_pb
from tandem.orchestrator.v1 import payment_service_pb2_grpc as pay_grpc
from tandem.type.v1 import money_pb2
from tandem.vault.v1 import token_service_pb2 as token_pb
from tandem.vault.v1 import token_service_pb2_grpc as token_grpc


def usd(minor_units):
    return money_pb2.Money(currency_code="USD", minor_units=minor_units)


def tokenize(stack, pan):
    with stack.channel("tokenizer") as channel:
        request = token_pb.TokenizeRequest(
            request_id=str(uuid.uuid4()),
            pan=pan,
            expiry_month=12,
            expiry_year=2030,
            holder_name="Dorothy Vaughan",
        )
        return token_grpc.TokenServiceStub(channel).Tokenize(request).card.token


def details(error):
    """The ErrorInfo reason and the BadRequest fields of a failed call."""
    status = rpc_status.from_call(error)
    reason, fields = None, []
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "orchestrator.tandem"
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return reason, fields


def member(token, label, priority):
    return group_pb.CardGroupMember(
        token=token, label=label, currency_code="USD", priority=priority
    )


@pytest.fixture(scope="module")
def group(vault):
    primary = tokenize(vault, "4000000000009995")  # declines: insufficient funds
    a = tokenize(vault, "4242424242424242")
    b = tokenize(vault, "5555555555554444")
    policy = group_pb.AllocationPolicy(
        strategy=group_pb.ALLOCATION_STRATEGY_WEIGHTED,
        weights=[
            group_pb.MemberWeight(token=a, basis_points=6000),
            group_pb.MemberWeight(token=b, basis_points=4000),
        ],
        fallback=group_pb.FallbackPolicy(enabled=True),
    )
    card_group = group_pb.CardGroup(
        billing_account_id="acct-python",
        display_name="Python client group",
        default_currency_code="USD",
        members=[member(a, "card A", 2), member(b, "card B", 3), member(primary, "card D", 1)],
        default_policy=policy,
    )
    with vault.orchestrator("treasury") as channel:
        stub = group_grpc.CardGroupServiceStub(channel)
        created = stub.CreateCardGroup(
            group_pb.CreateCardGroupRequest(request_id=str(uuid.uuid4()), card_group=card_group)
        ).card_group
    return created, primary, a, b


def pay(vault, group_id, amount, policy=None, request_id=None):
    request = pay_pb.CreatePaymentRequest(
        request_id=request_id or str(uuid.uuid4()),
        invoice=pay_pb.Invoice(id="INV-PY", amount=usd(amount), description="Python invoice"),
        card_group_id=group_id,
        wait=True,
        wait_timeout_ms=20000,
    )
    if policy is not None:
        request.policy_override.CopyFrom(policy)
    with vault.orchestrator("payer") as channel:
        return pay_grpc.PaymentServiceStub(channel).CreatePayment(request, timeout=30).payment


def test_weighted_split_and_idempotent_replay(vault, group):
    card_group, _, _, _ = group
    request_id = str(uuid.uuid4())
    payment = pay(vault, card_group.id, 2050, request_id=request_id)
    assert payment.state == pay_pb.PAYMENT_STATE_SUCCEEDED, payment.summary
    assert [(leg.label, leg.amount.minor_units) for leg in payment.legs] == [
        ("card A", 1230),
        ("card B", 820),
    ]
    assert payment.summary.startswith("Invoice INV-PY paid 20.50 USD: card A ·4242 12.30")
    again = pay(vault, card_group.id, 2050, request_id=request_id)
    assert again.id == payment.id
    with pytest.raises(grpc.RpcError) as error:
        pay(vault, card_group.id, 2051, request_id=request_id)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(error.value)[0] == "REQUEST_ID_REUSED"


def test_decline_falls_back_and_refund(vault, group):
    card_group, primary, _, _ = group
    sequential = group_pb.AllocationPolicy(
        strategy=group_pb.ALLOCATION_STRATEGY_SEQUENTIAL,
        fallback=group_pb.FallbackPolicy(enabled=True),
    )
    payment = pay(vault, card_group.id, 1500, policy=sequential)
    assert payment.state == pay_pb.PAYMENT_STATE_SUCCEEDED, payment.summary
    assert payment.attempts[0].label == "card D"
    assert payment.attempts[0].outcome == pay_pb.ATTEMPT_OUTCOME_DECLINED
    assert "card A replaced card D after insufficient funds" in payment.summary
    with vault.orchestrator("payer") as channel:
        stub = pay_grpc.PaymentServiceStub(channel)
        refund = stub.RefundPayment(
            pay_pb.RefundPaymentRequest(
                request_id=str(uuid.uuid4()), payment_id=payment.id, amount=usd(500)
            ),
            timeout=30,
        )
    assert refund.refund.state == pay_pb.PAYMENT_REFUND_STATE_SUCCEEDED
    assert refund.payment.state == pay_pb.PAYMENT_STATE_PARTIALLY_REFUNDED
    with vault.orchestrator("reader") as channel:
        stub = pay_grpc.PaymentServiceStub(channel)
        events = [
            message.event
            for message in stub.WatchPayment(
                pay_pb.WatchPaymentRequest(payment_id=payment.id), timeout=30
            )
        ]
    assert [e.sequence for e in events] == list(range(1, len(events) + 1))
    assert events[-1].type == pay_pb.PAYMENT_EVENT_TYPE_PAYMENT_PARTIALLY_REFUNDED


def test_errors_carry_reason_and_fields(vault, group):
    card_group, _, _, _ = group
    with pytest.raises(grpc.RpcError) as error:
        pay(vault, card_group.id, 0)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error.value) == ("INVALID_ARGUMENT", ["invoice.amount.minor_units"])
    with vault.orchestrator("reader") as channel:
        stub = pay_grpc.PaymentServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.CreatePayment(
                pay_pb.CreatePaymentRequest(request_id="reader-pays", card_group_id=card_group.id)
            )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with vault.orchestrator("treasury") as channel:
        stub = group_grpc.CardGroupServiceStub(channel)
        with pytest.raises(grpc.RpcError) as error:
            stub.UpdateCardGroup(
                group_pb.UpdateCardGroupRequest(
                    request_id=str(uuid.uuid4()),
                    card_group=group_pb.CardGroup(
                        id=card_group.id, display_name="Renamed", etag='"v999"'
                    ),
                    update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
                )
            )
    assert error.value.code() == grpc.StatusCode.ABORTED
    assert details(error.value)[0] == "ETAG_MISMATCH"


def test_node_client_pays_and_reads_back(vault, group):
    """The Node smoke client (tests/node, @grpc/grpc-js with protos loaded at run time) pays,
    reads the payment back, finds its creation in the event feed, reads a card's balance and
    runs today's reconciliation as the treasury."""
    card_group, _, _, _ = group
    node = pathlib.Path(__file__).resolve().parents[1] / "node"
    env = dict(
        os.environ,
        TANDEM_ORCHESTRATOR_ADDRESS=vault.orchestrator_address,
        TANDEM_CERTS=str(vault.certs),
        TANDEM_CARD_GROUP=card_group.id,
    )
    result = subprocess.run(
        ["node", "smoke.mjs"], cwd=node, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    payment = json.loads(result.stdout.strip().splitlines()[-1])
    assert payment["state"] == "PAYMENT_STATE_SUCCEEDED", payment
    assert payment["captured"] == "1234"
    assert payment["summary"].startswith("Invoice INV-NODE paid 12.34 USD")
    assert payment["event"] == {
        "type": "payment.created",
        "actor": {"name": "dev", "role": "payer"},
        "cursor": True,
    }, payment
    assert payment["funding"]["account_id"].startswith("funding_source:tok_"), payment
    assert payment["funding"]["debits_posted"]["currency_code"] == "USD", payment
    # Today's reconciliation (the node client checked its shape and sums): at least the
    # payment's captures are records of it.
    run = payment["reconciliation"]
    assert run["id"].startswith("rcn_") and run["processor"] == "sandbox", run
    assert int(run["records"]) >= 1 and int(run["matched"]) >= 1, run


def test_orchestrator_reflection_and_health(vault):
    listed = set(grpcurl(vault, vault.orchestrator_address, "list", role="reader").split())
    assert {
        "tandem.orchestrator.v1.CardGroupService",
        "tandem.orchestrator.v1.PaymentService",
        "tandem.orchestrator.v1.LedgerService",
        "tandem.orchestrator.v1.ReconciliationService",
        "tandem.orchestrator.v1.WebhookService",
        "tandem.orchestrator.v1.FxService",
        "tandem.orchestrator.v1.RiskService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } == listed
    health = json.loads(
        grpcurl(
            vault,
            "-d",
            json.dumps({"service": "tandem.orchestrator.v1.PaymentService"}),
            vault.orchestrator_address,
            "grpc.health.v1.Health/Check",
            role="reader",
        )
    )
    assert health["status"] == "SERVING"
    with vault.orchestrator("reader") as channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tandem.orchestrator.v1.CardGroupService")
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tandem.orchestrator.v1.ReconciliationService")
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tandem.orchestrator.v1.WebhookService")
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="tandem.orchestrator.v1.FxService")
        )
        assert response.status == health_pb2.HealthCheckResponse.SERVING
