"""A Python client generated from proto/ charges a tokenized card through the vault's sandbox
acquirer over mutual TLS: authorize, capture, refund, void, a decline with its code and next
action, idempotent replay, and the settlement report."""

import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tandem.type.v1 import decline_pb2, money_pb2
from tandem.vault.v1 import charge_service_pb2 as charge_pb
from tandem.vault.v1 import charge_service_pb2_grpc as charge_grpc
from tandem.vault.v1 import sandbox_service_pb2 as sandbox_pb
from tandem.vault.v1 import sandbox_service_pb2_grpc as sandbox_grpc
from tandem.vault.v1 import token_service_pb2 as token_pb
from tandem.vault.v1 import token_service_pb2_grpc as token_grpc


def usd(minor_units):
    return money_pb2.Money(currency_code="USD", minor_units=minor_units)


def tokenize(vault, pan):
    with vault.channel("tokenizer") as channel:
        stub = token_grpc.TokenServiceStub(channel)
        request = token_pb.TokenizeRequest(
            request_id=str(uuid.uuid4()),
            pan=pan,
            expiry_month=12,
            expiry_year=2030,
            holder_name="Katherine Johnson",
        )
        return stub.Tokenize(request).card.token


def authorize_request(token, minor_units, request_id=None):
    return charge_pb.AuthorizeRequest(
        request_id=request_id or str(uuid.uuid4()),
        token=token,
        amount=usd(minor_units),
        description="invoice INV-42",
        reference="payment/42/leg/1",
        metadata={"invoice": "INV-42"},
    )


def reason(error):
    status = rpc_status.from_call(error)
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return None


def test_authorize_capture_refund(vault):
    token = tokenize(vault, "5555 5555 5555 4444")
    with vault.channel("orchestrator") as channel:
        stub = charge_grpc.ChargeServiceStub(channel)
        request = authorize_request(token, 12_000)
        charge = stub.Authorize(request).charge
        assert charge.state == charge_pb.CHARGE_STATE_AUTHORIZED
        assert charge.id.startswith("ch_")
        assert (charge.approved.currency_code, charge.approved.minor_units) == ("USD", 12_000)
        assert charge.last4 == "4444" and charge.processor == "sandbox"

        # Replaying the same request returns the same charge.
        assert stub.Authorize(request).charge.id == charge.id

        captured = stub.Capture(
            charge_pb.CaptureRequest(request_id=str(uuid.uuid4()), charge_id=charge.id, amount=usd(10_000))
        ).charge
        assert captured.state == charge_pb.CHARGE_STATE_CAPTURED
        assert captured.captured.minor_units == 10_000

        refunded = stub.Refund(
            charge_pb.RefundRequest(
                request_id=str(uuid.uuid4()), charge_id=charge.id, amount=usd(2_500), reason="credit note"
            )
        )
        assert refunded.refund.state == charge_pb.REFUND_STATE_SUCCEEDED
        assert refunded.charge.state == charge_pb.CHARGE_STATE_PARTIALLY_REFUNDED
        assert refunded.charge.refunded.minor_units == 2_500

        by_request = stub.GetCharge(charge_pb.GetChargeRequest(request_id=request.request_id)).charge
        assert by_request.id == charge.id and len(by_request.refunds) == 1

    with vault.channel("admin") as channel:
        report = sandbox_grpc.SandboxServiceStub(channel).ListSettlementRecords(
            sandbox_pb.ListSettlementRecordsRequest(page_size=1000)
        )
        mine = [r for r in report.records if r.authorization_reference == charge.processor_reference]
        assert [(r.type, r.amount.minor_units) for r in mine] == [
            (sandbox_pb.SETTLEMENT_RECORD_TYPE_CAPTURE, 10_000),
            (sandbox_pb.SETTLEMENT_RECORD_TYPE_REFUND, 2_500),
        ]


def test_void_and_decline(vault):
    good = tokenize(vault, "4242424242424242")
    lost = tokenize(vault, "4000 0000 0000 9987")
    with vault.channel("orchestrator") as channel:
        stub = charge_grpc.ChargeServiceStub(channel)
        held = stub.Authorize(authorize_request(good, 700)).charge
        voided = stub.Void(
            charge_pb.VoidRequest(request_id=str(uuid.uuid4()), charge_id=held.id, reason="order cancelled")
        ).charge
        assert voided.state == charge_pb.CHARGE_STATE_VOIDED

        declined = stub.Authorize(authorize_request(lost, 700)).charge
        assert declined.state == charge_pb.CHARGE_STATE_DECLINED
        assert declined.decline_code == decline_pb2.DECLINE_CODE_LOST_CARD
        assert declined.next_action == decline_pb2.NEXT_ACTION_TRY_NEXT_CARD

        with pytest.raises(grpc.RpcError) as raised:
            stub.Capture(charge_pb.CaptureRequest(request_id=str(uuid.uuid4()), charge_id=declined.id))
        assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert reason(raised.value) == "CHARGE_NOT_AUTHORIZED"


def test_tokenizer_cannot_charge(vault):
    token = tokenize(vault, "4242424242424242")
    with vault.channel("tokenizer") as channel:
        with pytest.raises(grpc.RpcError) as raised:
            charge_grpc.ChargeServiceStub(channel).Authorize(authorize_request(token, 100))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason(raised.value) == "ROLE_NOT_ALLOWED"


def test_batch_authorize_and_capture(vault):
    """A payment round in one call: each item its own authorization, with its own result and
    request-id idempotency; one item's failure is its own."""
    good = tokenize(vault, "4242424242424242")
    other = tokenize(vault, "5555555555554444")
    lost = tokenize(vault, "4000 0000 0000 9987")
    requests = [
        authorize_request(good, 600),
        authorize_request(lost, 300),
        authorize_request(other, 100),
        authorize_request("tok_" + "a" * 26, 100),
    ]
    with vault.channel("orchestrator") as channel:
        stub = charge_grpc.ChargeServiceStub(channel)
        results = stub.BatchAuthorize(charge_pb.BatchAuthorizeRequest(requests=requests)).results
        assert [r.WhichOneof("result") for r in results] == ["charge", "charge", "charge", "error"]
        assert results[0].charge.state == charge_pb.CHARGE_STATE_AUTHORIZED
        assert results[1].charge.decline_code == decline_pb2.DECLINE_CODE_LOST_CARD
        assert results[3].error.code == grpc.StatusCode.NOT_FOUND.value[0]
        assert results[3].error.reason == "TOKEN_NOT_FOUND"

        again = stub.BatchAuthorize(charge_pb.BatchAuthorizeRequest(requests=requests)).results
        assert again[0].charge.id == results[0].charge.id

        captures = [
            charge_pb.CaptureRequest(request_id=str(uuid.uuid4()), charge_id=r.charge.id)
            for r in (results[0], results[2])
        ]
        captured = stub.BatchCapture(charge_pb.BatchCaptureRequest(requests=captures)).results
        assert [c.charge.state for c in captured] == [charge_pb.CHARGE_STATE_CAPTURED] * 2
        assert [c.charge.captured.minor_units for c in captured] == [600, 100]

        with pytest.raises(grpc.RpcError) as raised:
            stub.BatchAuthorize(charge_pb.BatchAuthorizeRequest(requests=[]))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
