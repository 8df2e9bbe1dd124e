"""tandemctl against the running dev stack: the operator commands a security team and an
on-call engineer use on the vault (keys status/rotate, audit list/verify, charge
authorize/capture/get) and the treasury and payment commands on the orchestrator (groups
create/get/list/delete, pay, payments show/list/watch, refund)."""

import os
import pathlib
import re
import shutil
import subprocess
import uuid

import conftest
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
    # Filtered by method: the dev stack may still be seeding its demo cards, and their
    # tokenizations would push the rotation out of an unfiltered newest-five window.
    method = "tandem.vault.v1.KeyAdminService/RotateDataKey"
    listed = tandemctl(vault, "audit", "list", "--rpc", method, "--limit", "5", "--newest-first")
    assert method in listed


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


def orchestratorctl(stack, *args):
    """Runs a tandemctl orchestrator command (groups, pay, payments, refund) against the dev
    orchestrator with the dev certificates; returns its output."""
    return conftest.orchestratorctl(stack, *args)[0]


def payment_header(output):
    """The payment id, state, invoice id and amount of a printed payment's header line."""
    match = re.search(r"^payment (pay_\w+)  (\w+)  invoice (\S+)  (\d+\.\d\d USD)$", output, re.M)
    assert match, output
    return match.groups()


def payment_legs(output):
    """A printed payment's legs by label: (last4, amount, state, charge id)."""
    legs = {}
    for match in re.finditer(
        r"^\s+\d+  (visa-a|mc-b)\s+·(\d{4})\s+(\d+\.\d\d USD)  (\w+)\s+(ch_\w+|-)\s", output, re.M
    ):
        label, last4, amount, state, charge = match.groups()
        legs[label] = (last4, amount, state, charge)
    return legs


def month_to_date(stack, group, label):
    """A member's month-to-date spend as `tandemctl groups get` prints it."""
    output = orchestratorctl(stack, "groups", "get", group)
    money = r"(?:-|\d+\.\d\d USD)"
    match = re.search(
        rf"^\s+\d+  {label}\s+tok_\w+\s+\d{{4}}\s+{money}\s+{money}\s+({money})\s+active",
        output,
        re.M,
    )
    assert match, output
    return match.group(1)


def test_groups_pay_payments_refund_commands(vault):
    """`tandemctl groups create/get/list/delete`, `pay`, `payments show/list/watch` and `refund`
    work end to end: a weighted 60/40 group pays 20.50 USD as 12.30 on the Visa and 8.20 on the
    Mastercard, both captured; the payment reads back the same with show, list and watch; a
    5.00 refund is spread 3.00/2.00 over the legs and a second refund returns the rest; each
    refund is visible afterwards in `payments show`, on the vault's charges (`charge get`) and
    in the month-to-date spend of the member with a monthly limit (`groups get`), so the money
    really went back; an archived group leaves the default listing."""
    from tandem.vault.v1 import token_service_pb2 as pb
    from tandem.vault.v1 import token_service_pb2_grpc as pb_grpc

    with vault.channel("tokenizer") as channel:
        stub = pb_grpc.TokenServiceStub(channel)
        visa, mastercard = (
            stub.Tokenize(
                pb.TokenizeRequest(
                    request_id=str(uuid.uuid4()), pan=pan, expiry_month=12, expiry_year=2030
                )
            ).card.token
            for pan in ("4242424242424242", "5555555555554444")
        )
    account = f"acct-cli-{uuid.uuid4().hex[:8]}"
    invoice = f"INV-CLI-{uuid.uuid4().hex[:6]}"

    # groups create: members with limits, the weighted default policy.
    created = orchestratorctl(
        vault, "groups", "create", "--billing-account", account, "--name", "CLI group",
        "--currency", "USD",
        "--member", f"{visa}:visa-a:1:100.00", "--member", f"{mastercard}:mc-b:2::500.00:ops",
        "--strategy", "weighted", "--weight", f"{visa}:6000", "--weight", f"{mastercard}:4000",
    )
    group = re.search(r"^card group  (cg_\w+)$", created, re.M).group(1)
    assert f"billing     {account}" in created
    assert "state       active" in created
    assert f"policy      weighted, weights {visa}:6000 {mastercard}:4000, all_or_nothing" in created
    assert re.search(rf"^\s+1  visa-a  {visa}\s+4242\s+100\.00 USD\s+-\s+", created, re.M), created
    assert re.search(rf"^\s+2  mc-b\s+{mastercard}\s+4444\s+-\s+500\.00 USD\s+.*\bactive\s+ops$",
                     created, re.M), created
    got = orchestratorctl(vault, "groups", "get", group)
    assert f"card group  {group}" in got and "state       active" in got, got
    listed = orchestratorctl(vault, "groups", "list", "--billing-account", account)
    row = rf"^{group}\s+active\s+{account}\s+2  weighted\s+CLI group$"
    assert re.search(row, listed, re.M), listed

    # pay: the group's default policy splits 20.50 USD 60/40, both legs captured.
    paid = orchestratorctl(
        vault, "pay", "--group", group, "--invoice", invoice, "--amount", "20.50"
    )
    payment, state, shown_invoice, amount = payment_header(paid)
    assert (state, shown_invoice, amount) == ("succeeded", invoice, "20.50 USD"), paid
    split = f"Invoice {invoice} paid 20.50 USD: visa-a ·4242 12.30, mc-b ·4444 8.20"
    assert re.search(rf"^{re.escape(split)}$", paid, re.M), paid
    legs = payment_legs(paid)
    assert {label: leg[:3] for label, leg in legs.items()} == {
        "visa-a": ("4242", "12.30 USD", "captured"),
        "mc-b": ("4444", "8.20 USD", "captured"),
    }, paid
    charges = {label: leg[3] for label, leg in legs.items()}
    assert all(charge.startswith("ch_") for charge in charges.values()), paid
    # The member with a monthly limit has this payment counted against it.
    assert month_to_date(vault, group, "mc-b") == "8.20 USD"

    # payments show / list / watch read the same payment back.
    shown = orchestratorctl(vault, "payments", "show", payment)
    assert payment_header(shown) == (payment, "succeeded", invoice, "20.50 USD")
    assert payment_legs(shown) == legs
    listed = orchestratorctl(vault, "payments", "list", "--group", group)
    row = rf"^{payment}\s+succeeded\s+{invoice}\s+20\.50 USD\s+{group}\s"
    assert re.search(row, listed, re.M), listed
    watched = orchestratorctl(vault, "payments", "watch", payment)
    events = re.findall(r"^\s*\d+  (\S+)", watched, re.M)
    assert events[0] == "payment.created" and events[-1] == "payment.succeeded", watched
    assert events.count("leg.captured") == 2, watched

    # refund part: 5.00 spread in proportion to the captures, 3.00 and 2.00.
    refunded = orchestratorctl(
        vault, "refund", payment, "--amount", "5.00", "--reason", "credit note"
    )
    assert re.search(r"^refund prf_\w+  5\.00 USD  succeeded$", refunded, re.M), refunded
    shown = orchestratorctl(vault, "payments", "show", payment)
    assert payment_header(shown) == (payment, "partially_refunded", invoice, "20.50 USD"), shown
    assert re.search(rf"^{re.escape(split)}; refunded 5\.00 USD$", shown, re.M), shown
    assert re.search(r"^refund prf_\w+\s+5\.00 USD  succeeded\s+credit note$", shown, re.M), shown
    assert {label: leg[2] for label, leg in payment_legs(shown).items()} == {
        "visa-a": "partially_refunded",
        "mc-b": "partially_refunded",
    }, shown
    assert month_to_date(vault, group, "mc-b") == "6.20 USD"
    for label, refunded_amount in (("visa-a", "3.00 USD"), ("mc-b", "2.00 USD")):
        charge = tandemctl(vault, "charge", "get", charges[label])
        assert "state       PARTIALLY_REFUNDED" in charge, charge
        assert f"refunded    {refunded_amount}" in charge, charge

    # refund the rest (no --amount): everything captured is back.
    refunded = orchestratorctl(vault, "refund", payment)
    assert re.search(r"^refund prf_\w+  15\.50 USD  succeeded$", refunded, re.M), refunded
    shown = orchestratorctl(vault, "payments", "show", payment)
    assert payment_header(shown) == (payment, "refunded", invoice, "20.50 USD"), shown
    assert re.search(rf"^{re.escape(split)}; refunded 20\.50 USD$", shown, re.M), shown
    assert len(re.findall(r"^refund prf_\w+\s+\d+\.\d\d USD  succeeded", shown, re.M)) == 2, shown
    assert {label: leg[2] for label, leg in payment_legs(shown).items()} == {
        "visa-a": "refunded",
        "mc-b": "refunded",
    }, shown
    assert month_to_date(vault, group, "mc-b") == "0.00 USD"
    for label, refunded_amount in (("visa-a", "12.30 USD"), ("mc-b", "8.20 USD")):
        charge = tandemctl(vault, "charge", "get", charges[label])
        assert "state       REFUNDED" in charge, charge
        assert f"refunded    {refunded_amount}" in charge, charge
    listed = orchestratorctl(vault, "payments", "list", "--group", group, "--state", "refunded")
    assert re.search(rf"^{payment}\s+refunded\s+{invoice}\s", listed, re.M), listed

    # groups delete archives: gone from the default listing, shown with --show-archived.
    assert "state       archived" in orchestratorctl(vault, "groups", "delete", group)
    listed = orchestratorctl(vault, "groups", "list", "--billing-account", account)
    assert group not in listed, listed
    listed = orchestratorctl(
        vault, "groups", "list", "--billing-account", account, "--show-archived"
    )
    assert re.search(rf"^{group}\s+archived\s", listed, re.M), listed


def test_dev_starts_a_private_cluster_when_no_postgres_answers():
    """With no Postgres at DATABASE_URL (a port of this machine nothing listens on),
    `tandemctl dev` makes and starts a cluster of its own under its directory, says so in one
    line, runs the stack on it, and stops it on exit; a second run reuses the cluster."""
    import socket
    import tempfile

    free_port = conftest._free_port
    dev_dir = pathlib.Path(tempfile.mkdtemp(prefix="tandem-private-"))
    env = dict(
        os.environ,
        DATABASE_URL=f"postgres://postgres@127.0.0.1:{free_port()}/postgres",
        TANDEM_VAULT__SERVER__LISTEN_ADDR=f"127.0.0.1:{free_port()}",
        TANDEM_ORCHESTRATOR__SERVER__LISTEN_ADDR=f"127.0.0.1:{free_port()}",
        TANDEM_DASHBOARD__SERVER__LISTEN_ADDR=f"127.0.0.1:{free_port()}",
        TANDEM_VAULT__METRICS__LISTEN_ADDR=f"127.0.0.1:{free_port()}",
        TANDEM_ORCHESTRATOR__METRICS__LISTEN_ADDR=f"127.0.0.1:{free_port()}",
    )
    try:
        for run in range(2):
            result = subprocess.run(
                [str(TANDEMCTL), "dev", "--exit", "--dir", str(dev_dir)],
                capture_output=True,
                text=True,
                timeout=180,
                env=env,
            )
            assert result.returncode == 0, result.stdout + result.stderr
            started = re.search(
                r"^no Postgres reachable: started a private cluster in (\S+) on 127\.0\.0\.1:(\d+) "
                r"\(stopped on exit\)$",
                result.stdout,
                re.M,
            )
            assert started, result.stdout
            assert pathlib.Path(started.group(1)) == dev_dir / "postgres" / "data"
            assert (dev_dir / "postgres" / "data" / "PG_VERSION").exists()
            # The stack ran on it: the seed group was made.
            assert "GlobalOps" in result.stdout, result.stdout
            # Stopped on exit: nothing listens on its port any more.
            with socket.socket() as probe:
                assert probe.connect_ex(("127.0.0.1", int(started.group(2)))) != 0, f"run {run}"
    finally:
        # A run killed by the timeout could not stop its cluster: stop it before its files go.
        data = dev_dir / "postgres" / "data"
        if (data / "postmaster.pid").exists():
            pg_ctl = sorted(pathlib.Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))[-1]
            stop = [str(pg_ctl), "-D", str(data), "-m", "immediate", "stop"]
            if os.geteuid() == 0:
                stop = ["runuser", "-u", "postgres", "--", *stop]
            subprocess.run(stop, capture_output=True, timeout=60)
        shutil.rmtree(dev_dir, ignore_errors=True)
