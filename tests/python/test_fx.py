"""The rate source (FxService) through a Python client generated from proto/, and through
tandemctl: the treasury sets a pair's rate (idempotent by request id), a reader reads and lists
it page by page, a payer may not set one, and a bad rate is INVALID_ARGUMENT naming its field.

The pairs are this module's own (from NZD): rates are global to the shared stack."""

import csv
import datetime
import io
import json
import uuid

import grpc
import pytest
from google.protobuf import timestamp_pb2

from conftest import orchestratorctl
from tandem.orchestrator.v1 import fx_service_pb2 as fx_pb
from tandem.orchestrator.v1 import fx_service_pb2_grpc as fx_grpc
from test_payments import details


def rates(stack, role="treasury"):
    return fx_grpc.FxServiceStub(stack.orchestrator(role))


def set_request(base, quote, rate, request_id=None, as_of=None):
    return fx_pb.SetFxRateRequest(
        request_id=request_id or str(uuid.uuid4()),
        rate=fx_pb.FxRate(
            base_currency_code=base, quote_currency_code=quote, rate=rate, as_of_time=as_of
        ),
    )


def test_set_replay_get_and_list(vault):
    hour_ago = timestamp_pb2.Timestamp()
    hour_ago.FromDatetime(datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1))
    request = set_request("NZD", "SGD", "0.77210", as_of=hour_ago)
    first = rates(vault).SetFxRate(request).rate
    assert first.rate == "0.7721"
    assert first.source == "treasury:dev"
    assert (first.updater.name, first.updater.role) == ("dev", "treasury")
    assert first.as_of_time.seconds == hour_ago.seconds
    # The same request id and request: the stored answer, the same update time.
    assert rates(vault).SetFxRate(request).rate == first
    rates(vault).SetFxRate(set_request("NZD", "AUD", "0.9102"))

    read = rates(vault, "reader").GetFxRate(
        fx_pb.GetFxRateRequest(base_currency_code="NZD", quote_currency_code="SGD")
    ).rate
    assert read == first

    listed, token = [], ""
    while True:
        page = rates(vault, "reader").ListFxRates(
            fx_pb.ListFxRatesRequest(page_size=1, page_token=token, base_currency_code="NZD")
        )
        assert len(page.rates) <= 1
        listed.extend(page.rates)
        token = page.next_page_token
        if not token:
            break
    pairs = [(r.base_currency_code, r.quote_currency_code) for r in listed]
    assert ("NZD", "AUD") in pairs and ("NZD", "SGD") in pairs
    assert pairs == sorted(pairs)


def test_refusals(vault):
    with pytest.raises(grpc.RpcError) as refused:
        rates(vault, "payer").SetFxRate(set_request("NZD", "SGD", "0.8"))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert details(refused.value)[0] == "ROLE_NOT_ALLOWED"

    for rate, base, quote, field in [
        ("0", "NZD", "SGD", "rate.rate"),
        ("-1", "NZD", "SGD", "rate.rate"),
        ("10000000", "NZD", "SGD", "rate.rate"),
        ("1", "NZD", "NZD", "rate.quote_currency_code"),
        ("1", "NZX", "SGD", "rate.base_currency_code"),
    ]:
        with pytest.raises(grpc.RpcError) as bad:
            rates(vault).SetFxRate(set_request(base, quote, rate))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(bad.value) == ("INVALID_ARGUMENT", [field])

    request = set_request("NZD", "JPY", "91.5")
    rates(vault).SetFxRate(request)
    request.rate.rate = "92"
    with pytest.raises(grpc.RpcError) as reused:
        rates(vault).SetFxRate(request)
    assert reused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert details(reused.value)[0] == "REQUEST_ID_REUSED"

    with pytest.raises(grpc.RpcError) as missing:
        rates(vault, "reader").GetFxRate(
            fx_pb.GetFxRateRequest(base_currency_code="NZD", quote_currency_code="KRW")
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert details(missing.value)[0] == "FX_RATE_NOT_FOUND"


def test_cli(vault):
    out, _ = orchestratorctl(
        vault, "fx", "set", "NZD", "CHF", "0.51230", "--as-of", "2026-01-02T03:04:05Z",
        "--format", "json",
    )
    rate = json.loads(out.strip())
    assert rate["rate"] == "0.5123"
    assert rate["as_of_time"] == "2026-01-02T03:04:05Z"
    assert rate["source"] == "treasury:dev"
    out, _ = orchestratorctl(vault, "fx", "get", "NZD", "CHF", "--as-reader")
    assert "0.5123" in out and "treasury:dev" in out
    out, _ = orchestratorctl(vault, "fx", "list", "--base", "NZD", "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {"base_currency_code": "NZD", "quote_currency_code": "CHF"}.items() <= next(
        r for r in rows if r["quote_currency_code"] == "CHF"
    ).items()
    assert all(r["base_currency_code"] == "NZD" for r in rows)


def test_a_converted_leg_through_the_python_client(vault):
    """A group with a card in Swiss francs pays a NZD invoice: the franc card's leg carries the
    rate, its source and as-of time, and its charge in francs, rounded up; a refund gives the
    card back exactly what it paid."""
    from test_payments import tokenize
    from tandem.orchestrator.v1 import card_group_service_pb2 as group_pb
    from tandem.orchestrator.v1 import card_group_service_pb2_grpc as group_grpc
    from tandem.orchestrator.v1 import payment_service_pb2 as pay_pb
    from tandem.orchestrator.v1 import payment_service_pb2_grpc as pay_grpc
    from tandem.type.v1 import money_pb2

    rates(vault).SetFxRate(set_request("NZD", "CHF", "0.5123"))
    franc = tokenize(vault, "5555555555554444")
    card_group = group_pb.CardGroup(
        billing_account_id="acct-python-fx",
        display_name="Python FX group",
        default_currency_code="NZD",
        members=[
            group_pb.CardGroupMember(
                token=franc, label="card F", currency_code="CHF", priority=1
            )
        ],
        default_policy=group_pb.AllocationPolicy(
            strategy=group_pb.ALLOCATION_STRATEGY_SEQUENTIAL
        ),
    )
    with vault.orchestrator("treasury") as channel:
        group_id = group_grpc.CardGroupServiceStub(channel).CreateCardGroup(
            group_pb.CreateCardGroupRequest(request_id=str(uuid.uuid4()), card_group=card_group)
        ).card_group.id
    with vault.orchestrator("payer") as channel:
        payments = pay_grpc.PaymentServiceStub(channel)
        payment = payments.CreatePayment(
            pay_pb.CreatePaymentRequest(
                request_id=str(uuid.uuid4()),
                invoice=pay_pb.Invoice(
                    id="INV-PY-FX",
                    amount=money_pb2.Money(currency_code="NZD", minor_units=1999),
                ),
                card_group_id=group_id,
                wait=True,
                wait_timeout_ms=20000,
            ),
            timeout=30,
        ).payment
        assert payment.state == pay_pb.PAYMENT_STATE_SUCCEEDED, payment.summary
        (leg,) = payment.legs
        # 19.99 NZD at 0.5123 is 10.240877 CHF: the card pays 10.25.
        assert (leg.amount.currency_code, leg.amount.minor_units) == ("NZD", 1999)
        assert (leg.captured.currency_code, leg.captured.minor_units) == ("CHF", 1025)
        assert leg.fx_rate == "0.5123"
        assert leg.fx_rate_source == "treasury:dev"
        assert leg.HasField("fx_rate_as_of_time")
        assert "19.99 (10.25 CHF at 0.5123)" in payment.summary
        refund = payments.RefundPayment(
            pay_pb.RefundPaymentRequest(
                request_id=str(uuid.uuid4()), payment_id=payment.id, reason="credit note"
            ),
            timeout=30,
        ).refund
        (part,) = refund.parts
        assert (part.amount.currency_code, part.amount.minor_units) == ("CHF", 1025)
        assert (part.invoice_amount.currency_code, part.invoice_amount.minor_units) == (
            "NZD",
            1999,
        )
