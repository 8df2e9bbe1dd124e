"""A Python client generated from proto/ tokenizes, reads and revokes over mutual TLS, decodes
ErrorInfo and BadRequest with grpcio-status, checks health, and lists services by reflection."""

import json
import uuid

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from conftest import grpcurl
from tandem.vault.v1 import token_service_pb2 as pb
from tandem.vault.v1 import token_service_pb2_grpc as pb_grpc

TEST_PAN = "4242424242424242"


def details(error):
    """ErrorInfo and BadRequest of a failed call, decoded from grpc-status-details-bin."""
    status = rpc_status.from_call(error)
    assert status is not None, "the error carries no google.rpc.Status details"
    info, bad_request = None, None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
    return info, bad_request


def tokenize_request(pan=TEST_PAN, **overrides):
    fields = dict(
        request_id=str(uuid.uuid4()),
        pan=pan,
        expiry_month=12,
        expiry_year=2030,
        holder_name="Grace Hopper",
    )
    fields.update(overrides)
    return pb.TokenizeRequest(**fields)


def test_tokenize_read_revoke(vault):
    with vault.channel("tokenizer") as channel:
        stub = pb_grpc.TokenServiceStub(channel)
        card = stub.Tokenize(tokenize_request(pan="4242 4242 4242 4242")).card
        assert card.token.startswith("tok_") and len(card.token) == 30
        assert card.brand == pb.CARD_BRAND_VISA
        assert (card.bin, card.last4) == ("42424242", "4242")

        read = stub.GetToken(pb.GetTokenRequest(token=card.token)).card
        assert read == card
        assert TEST_PAN not in str(read)

        revoked = stub.RevokeToken(
            pb.RevokeTokenRequest(request_id=str(uuid.uuid4()), token=card.token, reason="python test")
        ).card
        assert revoked.state == pb.TOKEN_STATE_REVOKED


def test_idempotent_retry_returns_the_first_token(vault):
    with vault.channel("tokenizer") as channel:
        stub = pb_grpc.TokenServiceStub(channel)
        request = tokenize_request(pan="5555555555554444")
        first = stub.Tokenize(request).card.token
        assert stub.Tokenize(request).card.token == first
        with pytest.raises(grpc.RpcError) as raised:
            stub.Tokenize(tokenize_request(pan=TEST_PAN, request_id=request.request_id))
        assert raised.value.code() == grpc.StatusCode.ALREADY_EXISTS
        info, _ = details(raised.value)
        assert info.reason == "REQUEST_ID_REUSED"


def test_invalid_argument_carries_error_info_and_bad_request(vault):
    with vault.channel("tokenizer") as channel:
        stub = pb_grpc.TokenServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Tokenize(tokenize_request(pan="4242424242424241", expiry_month=13))
        error = raised.value
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        info, bad_request = details(error)
        assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "vault.tandem")
        assert [v.field for v in bad_request.field_violations] == ["pan", "expiry_month"]
        assert "4242424242424241" not in (error.details() or "")


def test_wrong_role_is_permission_denied(vault):
    with vault.channel("payer") as channel:
        stub = pb_grpc.TokenServiceStub(channel)
        with pytest.raises(grpc.RpcError) as raised:
            stub.Tokenize(tokenize_request())
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
        info, _ = details(raised.value)
        assert info.reason == "ROLE_NOT_ALLOWED"


def test_health(vault):
    with vault.channel("auditor") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ["", "tandem.vault.v1.TokenService"]:
            response = stub.Check(health_pb2.HealthCheckRequest(service=service))
            assert response.status == health_pb2.HealthCheckResponse.SERVING


def reflection_services(vault, version):
    """Lists services through reflection `version` (v1 and v1alpha share one message format)."""
    from grpc_reflection.v1alpha import reflection_pb2

    with vault.channel("reader") as channel:
        call = channel.stream_stream(
            f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
        )
        responses = call(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        return {s.name for r in responses for s in r.list_services_response.service}


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_versions_both_answer(vault, version):
    assert {"tandem.vault.v1.TokenService", "grpc.health.v1.Health"} <= reflection_services(vault, version)


def test_reflection_lists_every_service_and_describes_error_details(vault):
    listed = set(grpcurl(vault, vault.address, "list").split())
    assert {
        "tandem.vault.v1.TokenService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    } <= listed
    described = grpcurl(vault, vault.address, "describe", "google.rpc.ErrorInfo")
    assert "reason" in described and "domain" in described
    tokenized = json.loads(
        grpcurl(
            vault,
            "-d",
            json.dumps({"requestId": str(uuid.uuid4()), "pan": TEST_PAN, "expiryMonth": 1, "expiryYear": 2031}),
            vault.address,
            "tandem.vault.v1.TokenService/Tokenize",
        )
    )
    assert tokenized["card"]["last4"] == "4242"
