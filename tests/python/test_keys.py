"""A Python client generated from proto/ administers the vault's keys and reads its audit log
over mutual TLS: key status, a rotation, audit listing with filters and pages, chain
verification, and the role split between admin and auditor."""

import uuid

import grpc
import pytest

from tandem.vault.v1 import key_admin_service_pb2 as pb
from tandem.vault.v1 import key_admin_service_pb2_grpc as pb_grpc


def test_status_rotation_and_audit(vault):
    with vault.channel("admin") as channel:
        admin = pb_grpc.KeyAdminServiceStub(channel)
        status = admin.GetKeyStatus(pb.GetKeyStatusRequest())
        assert status.seal.state == pb.SEAL_STATE_UNSEALED
        assert status.seal.root_key_source == pb.ROOT_KEY_SOURCE_DEV
        active = [k for k in status.data_keys if k.state == pb.DATA_KEY_STATE_ACTIVE]
        assert len(active) == 1 and active[0].encryption_budget > 0

        request_id = str(uuid.uuid4())
        rotated = admin.RotateDataKey(pb.RotateDataKeyRequest(request_id=request_id)).data_key
        assert rotated.version == max(k.version for k in status.data_keys) + 1
        assert rotated.state == pb.DATA_KEY_STATE_ACTIVE
        # The same request id replays the rotation instead of rotating again.
        again = admin.RotateDataKey(pb.RotateDataKeyRequest(request_id=request_id)).data_key
        assert again.version == rotated.version

    with vault.channel("auditor") as channel:
        auditor = pb_grpc.KeyAdminServiceStub(channel)
        rpc = "tandem.vault.v1.KeyAdminService/RotateDataKey"
        page = auditor.ListAuditEvents(pb.ListAuditEventsRequest(page_size=1, rpc=rpc, descending=True))
        assert len(page.events) == 1 and page.next_page_token
        replay = page.events[0]
        assert (replay.request_id, replay.reason) == (request_id, "replay")
        older = auditor.ListAuditEvents(
            pb.ListAuditEventsRequest(page_size=1, rpc=rpc, descending=True, page_token=page.next_page_token)
        ).events[0]
        assert older.sequence < replay.sequence
        assert (older.request_id, older.resource) == (request_id, f"dek/{rotated.version}")
        assert older.outcome == pb.AUDIT_OUTCOME_SUCCEEDED and len(older.hash) == 64

        verified = auditor.VerifyAuditLog(pb.VerifyAuditLogRequest())
        assert verified.intact and verified.events_checked > 0

        with pytest.raises(grpc.RpcError) as raised:
            auditor.RotateDataKey(pb.RotateDataKeyRequest(request_id=str(uuid.uuid4())))
        assert raised.value.code() == grpc.StatusCode.PERMISSION_DENIED
