"""Fixtures of the Python client suite.

Stubs are generated from ``proto/`` with grpcio-tools into ``gen/`` (git-ignored) when the
session starts, exactly as a Python team consuming Tandem would generate them. The stack (vault
and orchestrator) is started with ``tandemctl dev`` on free ports, with its own certificates
directory and fresh databases, and stopped at the end of the session; a module that must
know everything its stack ever did (reconciliation) starts one of its own (``own_stack``), with
the settings its module names in ``OWN_STACK_ENV`` (webhooks).
"""

import contextlib
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import grpc
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
GEN = pathlib.Path(__file__).resolve().parent / "gen"
TANDEMCTL = ROOT / "target" / "debug" / "tandemctl"


def _generate_stubs():
    from grpc_tools import protoc

    shutil.rmtree(GEN, ignore_errors=True)
    GEN.mkdir()
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto" / "tandem").rglob("*.proto"))
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{ROOT / 'proto'}",
        f"-I{well_known}",
        f"--python_out={GEN}",
        f"--grpc_python_out={GEN}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("grpc_tools.protoc failed")
    sys.path.insert(0, str(GEN))


_generate_stubs()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Vault:
    """A running vault (and the orchestrator and the dashboard beside it) and how to reach
    them."""

    def __init__(self, address, certs, orchestrator_address, dashboard_address):
        self.address = address
        self.certs = certs
        self.orchestrator_address = orchestrator_address
        self.dashboard_address = dashboard_address

    def credentials(self, role):
        read = lambda name: (self.certs / name).read_bytes()
        return grpc.ssl_channel_credentials(
            root_certificates=read("ca.pem"),
            private_key=read(f"{role}.key"),
            certificate_chain=read(f"{role}.pem"),
        )

    def channel(self, role, address=None):
        # The server certificate names localhost; connect by address, verify by name.
        return grpc.secure_channel(
            address or self.address,
            self.credentials(role),
            options=[("grpc.ssl_target_name_override", "localhost")],
        )

    def orchestrator(self, role):
        """A channel to the orchestrator with the identity of ``role``."""
        return self.channel(role, self.orchestrator_address)


def orchestratorctl(stack, *args, timeout=90):
    """Runs a tandemctl orchestrator command against the stack's orchestrator with its
    certificates; returns (stdout, stderr), failing the test if the command fails."""
    result = subprocess.run(
        [
            str(TANDEMCTL),
            *args,
            "--orchestrator",
            f"https://{stack.orchestrator_address}",
            "--certs",
            str(stack.certs),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert result.returncode == 0, f"tandemctl {' '.join(args)}: {result.stderr}"
    return result.stdout, result.stderr


def grpcurl(stack, *args, role="tokenizer"):
    """Runs grpcurl with the dev CA and the identity of ``role``; returns its output."""
    certs = stack.certs
    command = [
        shutil.which("grpcurl") or "grpcurl",
        "-cacert", str(certs / "ca.pem"),
        "-cert", str(certs / f"{role}.pem"),
        "-key", str(certs / f"{role}.key"),
        "-authority", "localhost",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout


@contextlib.contextmanager
def _running_stack(extra_env=None):
    """Starts `tandemctl dev` on free ports with its own certificates directory and fresh
    databases, with `extra_env` (settings overrides such as `TANDEM_ORCHESTRATOR__...`) added
    to its environment; yields the running stack and stops it on the way out."""
    if not TANDEMCTL.exists():
        pytest.fail(f"{TANDEMCTL} is missing: run `cargo build -p tandemctl` first")
    port = _free_port()
    orchestrator_port = _free_port()
    dashboard_port = _free_port()
    certs = pathlib.Path(tempfile.mkdtemp(prefix="tandem-py-"))
    env = dict(
        os.environ,
        TANDEM_VAULT__SERVER__LISTEN_ADDR=f"127.0.0.1:{port}",
        TANDEM_ORCHESTRATOR__SERVER__LISTEN_ADDR=f"127.0.0.1:{orchestrator_port}",
        TANDEM_DASHBOARD__SERVER__LISTEN_ADDR=f"127.0.0.1:{dashboard_port}",
        # Not the fixed default (9464): a module's own stack runs beside the shared one.
        TANDEM_VAULT__METRICS__LISTEN_ADDR=f"127.0.0.1:{_free_port()}",
        TANDEM_ORCHESTRATOR__METRICS__LISTEN_ADDR=f"127.0.0.1:{_free_port()}",
        # What the servers log at INFO joins the suite's logs scanned for card numbers.
        RUST_LOG=os.environ.get("RUST_LOG", "info"),
        # The ledger suite exports ranges that end at the moment of the call; a deployment
        # keeps the default settling time (a minute) so an export never changes once taken.
        TANDEM_ORCHESTRATOR__LEDGER__EXPORT_SETTLE_MS="0",
    )
    env.update(extra_env or {})
    database = f"tandem_test_py_{uuid.uuid4().hex[:12]}"
    # What `tandemctl dev` prints (its instructions, with a grpcurl example's test card) apart
    # from what its servers log.
    out = open(certs / "dev.out", "wb")
    log = open(certs / "servers.log", "wb")
    process = subprocess.Popen(
        [
            str(TANDEMCTL),
            "dev",
            "--dir",
            str(certs),
            "--vault-database",
            database,
            "--orchestrator-database",
            f"{database}_orchestrator",
        ],
        cwd=ROOT,
        env=env,
        stdout=out,
        stderr=log,
    )
    # Ready once it says so: it has then reached both servers (it seeds a group through them).
    # Listening is not enough: a server may still fail after its port is bound (its metrics
    # port taken, say), and `tandemctl dev` then exits.
    deadline = time.monotonic() + 60
    while b"serving; press Ctrl-C to stop" not in (certs / "dev.out").read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
                process.wait()
            out.close()
            log.close()
            pytest.fail(
                "tandemctl dev did not start:\n"
                + (certs / "dev.out").read_text()
                + (certs / "servers.log").read_text()
            )
        time.sleep(0.1)
    try:
        yield Vault(
            f"127.0.0.1:{port}",
            certs,
            f"127.0.0.1:{orchestrator_port}",
            f"127.0.0.1:{dashboard_port}",
        )
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
            out.close()
            log.close()
        # The stack's log joins the suite's, which the test script scans for card numbers.
        log_dir = os.environ.get("TANDEM_TEST_LOG_DIR")
        if log_dir:
            os.makedirs(log_dir, exist_ok=True)
            shutil.copy(certs / "servers.log", pathlib.Path(log_dir) / f"python-{database}.log")
        shutil.rmtree(certs, ignore_errors=True)


@pytest.fixture(scope="session")
def vault():
    """The stack the suite shares."""
    with _running_stack() as stack:
        yield stack


@pytest.fixture(scope="module")
def own_stack(request):
    """A stack of the module's own, for tests that need to know everything it ever did (a
    reconciliation counts every capture and refund of the day, the shared stack's too) or
    settings of their own: the module's ``OWN_STACK_ENV`` dict, if it has one, is added to the
    stack's environment."""
    with _running_stack(getattr(request.module, "OWN_STACK_ENV", None)) as stack:
        yield stack
