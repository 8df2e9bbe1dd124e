"""Traces (DESIGN section 14) through a Python client: a payment made with a W3C `traceparent`
is one trace from the caller through the orchestrator to the vault, exported over OTLP to a
receiver built from the `opentelemetry-proto` messages. The caller's span is the parent of the
orchestrator's CreatePayment span; the vault's charge spans are children of the orchestrator's
vault calls (the context travelled in the calls' metadata); and every span carries the caller's
`x-request-id` on its call's span."""

import time
import uuid

import pytest

from conftest import _running_stack
from otlp_receiver import OtlpTraceReceiver
from tandem.orchestrator.v1 import card_group_service_pb2 as group_pb
from tandem.orchestrator.v1 import card_group_service_pb2_grpc as group_grpc
from tandem.orchestrator.v1 import payment_service_pb2 as pay_pb
from tandem.orchestrator.v1 import payment_service_pb2_grpc as pay_grpc
from test_payments import member, tokenize, usd

TRACE_ID = uuid.uuid4().hex
CALLER_SPAN = uuid.uuid4().hex[:16]


@pytest.fixture(scope="module")
def traced():
    """A receiver, and a stack of the module's own exporting its spans to it quickly."""
    with OtlpTraceReceiver() as receiver:
        env = {
            "TANDEM_ORCHESTRATOR__TELEMETRY__OTLP_ENDPOINT": receiver.endpoint,
            "TANDEM_ORCHESTRATOR__TELEMETRY__EXPORT_INTERVAL_MS": "100",
        }
        with _running_stack(env) as stack:
            yield stack, receiver


def test_one_trace_runs_from_the_caller_to_the_vaults_charges(traced):
    stack, receiver = traced
    card = tokenize(stack, "4242424242424242")
    with stack.orchestrator("treasury") as channel:
        group = group_grpc.CardGroupServiceStub(channel).CreateCardGroup(
            group_pb.CreateCardGroupRequest(
                request_id=str(uuid.uuid4()),
                card_group=group_pb.CardGroup(
                    billing_account_id="acct-py-traces",
                    display_name="Traced group",
                    default_currency_code="USD",
                    members=[member(card, "card A", 1)],
                    default_policy=group_pb.AllocationPolicy(
                        strategy=group_pb.ALLOCATION_STRATEGY_SEQUENTIAL,
                    ),
                ),
            )
        ).card_group
    request = pay_pb.CreatePaymentRequest(
        request_id=str(uuid.uuid4()),
        invoice=pay_pb.Invoice(id="INV-TRACE", amount=usd(1234), description="Traced invoice"),
        card_group_id=group.id,
        wait=True,
        wait_timeout_ms=20000,
    )
    metadata = [
        ("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01"),
        ("x-request-id", "py-trace-abc"),
    ]
    with stack.orchestrator("payer") as channel:
        payment = pay_grpc.PaymentServiceStub(channel).CreatePayment(
            request, metadata=metadata, timeout=30
        ).payment
    assert payment.state == pay_pb.PAYMENT_STATE_SUCCEEDED

    # Spans are exported as they end, in batches: wait for every one the test follows.
    wanted = {
        "/tandem.orchestrator.v1.PaymentService/CreatePayment",
        "payment drive",
        "saga round",
        "vault BatchAuthorize",
        "vault BatchCapture",
        "/tandem.vault.v1.ChargeService/BatchAuthorize",
        "/tandem.vault.v1.ChargeService/BatchCapture",
        "processor authorize",
        "processor capture",
    }

    def complete(spans):
        return wanted <= {s["name"] for s in spans if s["trace_id"] == TRACE_ID}

    assert receiver.wait_for(complete, timeout=30), receiver.spans()
    spans = [s for s in receiver.spans() if s["trace_id"] == TRACE_ID]
    by_id = {s["span_id"]: s for s in spans}

    create = [s for s in spans if s["name"] == "/tandem.orchestrator.v1.PaymentService/CreatePayment"]
    assert len(create) == 1, spans
    create = create[0]
    assert create["parent_span_id"] == CALLER_SPAN
    assert create["kind"] == "server"
    assert create["attributes"]["service"] == "tandem-orchestrator"
    assert create["attributes"]["correlation_id"] == "py-trace-abc"

    def ancestors(span):
        chain = []
        while span["parent_span_id"] in by_id:
            span = by_id[span["parent_span_id"]]
            chain.append(span)
        return chain

    for rpc in ("BatchAuthorize", "BatchCapture"):
        served = [s for s in spans if s["name"] == f"/tandem.vault.v1.ChargeService/{rpc}"]
        assert len(served) == 1, (rpc, spans)
        served = served[0]
        assert served["attributes"]["service"] == "tandem-vault"
        assert served["kind"] == "server"
        # The vault's span is the child of the orchestrator's client span of that call, which
        # runs within a saga round of the payment's drive, itself under CreatePayment.
        client = by_id[served["parent_span_id"]]
        assert client["name"] == f"vault {rpc}" and client["kind"] == "client", client
        chain = [s["name"] for s in ancestors(served)]
        assert "saga round" in chain and "payment drive" in chain, chain
        assert chain[-1] == create["name"], chain
        # The processor's call is a child of the vault's.
        below = [s["name"] for s in spans if served in ancestors(s)]
        assert any(name.startswith("processor ") for name in below), below
