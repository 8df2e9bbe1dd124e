"""tandemctl against the running dev vault: the operator commands a security team and an
on-call engineer use (keys status/rotate, audit list/verify, charge authorize/capture/get)."""

import re
import subprocess

from conftest import TANDEMCTL


def tandemctl(vault, *args, stdin=None):
    result = subprocess.run(
        [str(TANDEMCTL), *args, "--vault", f"https://{vault.address}", "--certs", str(vault.certs)],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_keys_and_audit(vault):
    status = tandemctl(vault, "keys", "status")
    assert "seal        unsealed (source dev" in status
    before = int(re.search(r"^(\d+)\s+active", status, re.M).group(1))

    rotated = tandemctl(vault, "keys", "rotate")
    version = int(re.search(r"data key v(\d+) is active", rotated).group(1))
    assert version == before + 1
    assert re.search(rf"^{version}\s+active", tandemctl(vault, "keys", "status"), re.M)

    verified = tandemctl(vault, "audit", "verify", "--as-auditor")
    assert verified.startswith("intact: events 1..=")
    listed = tandemctl(vault, "audit", "list", "--limit", "5", "--newest-first")
    assert "KeyAdminService/RotateDataKey" in listed


def test_charge_commands(vault):
    from tandem.vault.v1 import token_service_pb2 as pb
    from tandem.vault.v1 import token_service_pb2_grpc as pb_grpc
    import uuid

    with vault.channel("tokenizer") as channel:
        token = pb_grpc.TokenServiceStub(channel).Tokenize(
            pb.TokenizeRequest(
                request_id=str(uuid.uuid4()), pan="4242424242424242", expiry_month=12, expiry_year=2030
            )
        ).card.token
    authorized = tandemctl(vault, "charge", "authorize", "--token", token, "--amount", "42.50")
    assert "state       AUTHORIZED" in authorized
    assert "approved    42.50 USD" in authorized
    charge_id = re.search(r"^charge\s+(ch_\w+)", authorized, re.M).group(1)
    captured = tandemctl(vault, "charge", "capture", charge_id, "--amount", "40")
    assert "state       CAPTURED" in captured and "captured    40.00 USD" in captured
    assert "state       CAPTURED" in tandemctl(vault, "charge", "get", charge_id)
    settlement = tandemctl(vault, "charge", "settlement")
    assert "capture" in settlement and "40.00 USD" in settlement


def test_keys_init_prints_shares_once():
    import uuid

    database = f"tandem_test_py_init_{uuid.uuid4().hex[:12]}"
    args = [str(TANDEMCTL), "keys", "init", "--shares", "4", "--threshold", "2", "--vault-database", database]
    first = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    shares = re.findall(r"share \d: ([0-9a-f]+)", first.stdout)
    assert len(shares) == 4 and all(len(s) == 66 for s in shares)
    second = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert second.returncode != 0 and "already initialised" in second.stderr
