"""Webhooks (DESIGN section 11, `WebhookService`) as a receiver sees them: a plain HTTP server
in this process receives the orchestrator's deliveries, and the Standard Webhooks libraries, in
Python (`standardwebhooks` on PyPI) and in Node (`standardwebhooks` on npm,
tests/node/verify_webhooks.mjs), verify every one of them with nothing written for Tandem.

- A paid invoice's events arrive in the order of its feed, each signed under the endpoint's
  secret, `webhook-id` the event's id, the body `{"type", "timestamp", "data"}` with `data` the
  event in the proto3 JSON mapping (the same event `WatchPayment` streams); the terminal
  `payment.succeeded` carries the summary. Another secret, an altered body or a timestamp
  outside the tolerance fail verification.
- A receiver that answers 500 twice gets the event a third time, with the same `webhook-id`, and
  `ListWebhookDeliveries` shows the three attempts.
- A rotated secret signs beside the old one during the overlap, so every delivery verifies under
  one of them; after the overlap only the new one signs.
- A bad endpoint is INVALID_ARGUMENT with a BadRequest naming `url`, `event_types` or
  `description`; only the treasury manages webhooks.

The receiver listens on 127.0.0.1 over plain http, which only `webhook.allow_hosts` permits, and
the retry schedule is shortened to a few hundred milliseconds: the module runs a stack of its own
(`own_stack`) with these settings (`OWN_STACK_ENV`)."""

import base64
import datetime
import http.server
import json
import os
import pathlib
import re
import subprocess
import threading
import time
import uuid

import grpc
import pytest
import standardwebhooks
from google.protobuf import json_format
from google.protobuf import timestamp_pb2

from tandem.orchestrator.v1 import card_group_service_pb2 as group_pb
from tandem.orchestrator.v1 import card_group_service_pb2_grpc as group_grpc
from tandem.orchestrator.v1 import payment_service_pb2 as pay_pb
from tandem.orchestrator.v1 import payment_service_pb2_grpc as pay_grpc
from tandem.orchestrator.v1 import webhook_service_pb2 as hook_pb
from tandem.orchestrator.v1 import webhook_service_pb2_grpc as hook_grpc
from test_payments import details, tokenize, usd

# How long a rotated secret keeps signing beside the new one: long enough for a retry a few
# hundred milliseconds after the rotation, short enough to wait out.
ROTATION_OVERLAP_S = 5

OWN_STACK_ENV = {
    # The key that seals the endpoints' secrets: set, so webhooks are on.
    "TANDEM_ORCHESTRATOR__WEBHOOK__SECRET_KEY": base64.b64encode(os.urandom(32)).decode(),
    # The receiver is this process, over plain http on loopback.
    "TANDEM_ORCHESTRATOR__WEBHOOK__ALLOW_HOSTS": '["127.0.0.1"]',
    # At once, then three retries 300 ms apart (jittered by up to a tenth).
    "TANDEM_ORCHESTRATOR__WEBHOOK__RETRY_SCHEDULE_MS": "[0, 300, 300, 300]",
    "TANDEM_ORCHESTRATOR__WEBHOOK__POLL_MS": "20",
    "TANDEM_ORCHESTRATOR__WEBHOOK__ROTATION_OVERLAP_S": str(ROTATION_OVERLAP_S),
}

NODE = pathlib.Path(__file__).resolve().parents[1] / "node"
ENDPOINT_ID = re.compile(r"whe_[a-z2-7]{26}")
DELIVERY_ID = re.compile(r"whd_[a-z2-7]{26}")
EVENT_ID = re.compile(r"evt_[a-z2-7]{26}")
SIGNATURE = re.compile(r"v1,[A-Za-z0-9+/]{43}=")
# How long a delivery may take to arrive (a debug build on a busy machine).
DELIVERY_WAIT_S = 30


def random_secret():
    """Another endpoint's secret, in the same format."""
    return "whsec_" + base64.b64encode(os.urandom(32)).decode()


class Request:
    """One request the receiver got, and what it answered."""

    def __init__(self, method, path, headers, body, received, status):
        self.method = method
        self.path = path
        self.headers = headers  # lower-case names
        self.body = body  # bytes, exactly as received
        self.received = received  # time.time()
        self.monotonic = time.monotonic()
        self.status = status

    @property
    def id(self):
        return self.headers.get("webhook-id")

    @property
    def payload(self):
        """The body as JSON (unverified)."""
        return json.loads(self.body)

    def signatures(self):
        return self.headers["webhook-signature"].split(" ")

    def capture(self):
        """The request as verify_webhooks.mjs reads it."""
        return {"headers": self.headers, "body_base64": base64.b64encode(self.body).decode()}


class Receiver:
    """An HTTP server on 127.0.0.1 (a free port) that records every request and answers with
    the statuses in `answers`, in turn, then 200. `holds` maps a request's index (0 for the
    first) to a threading.Event its answer waits for."""

    def __init__(self, answers=(), holds=None):
        self.requests = []
        self.answers = list(answers)
        self.holds = dict(holds or {})
        self.condition = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                receiver.handle(self)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    @staticmethod
    def _body(handler):
        if handler.headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int(handler.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while handler.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return body
                body += handler.rfile.read(size)
                handler.rfile.readline()
        return handler.rfile.read(int(handler.headers.get("content-length", 0)))

    def handle(self, handler):
        body = self._body(handler)
        headers = {name.lower(): value for name, value in handler.headers.items()}
        with self.condition:
            index = len(self.requests)
            status = self.answers.pop(0) if self.answers else 200
            self.requests.append(
                Request(handler.command, handler.path, headers, body, time.time(), status)
            )
            self.condition.notify_all()
        hold = self.holds.get(index)
        if hold is not None:
            hold.wait(timeout=20)
        handler.send_response(status)
        handler.send_header("content-length", "0")
        handler.end_headers()

    def wait_for(self, predicate, what, timeout=DELIVERY_WAIT_S):
        """Waits until `predicate(requests)` holds; returns a copy of the requests."""
        with self.condition:
            if not self.condition.wait_for(lambda: predicate(list(self.requests)), timeout):
                got = [(r.status, r.id, r.body[:120]) for r in self.requests]
                raise AssertionError(f"no {what} within {timeout} s; the receiver got {got}")
            return list(self.requests)

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receivers():
    """Makes receivers (see `Receiver`), closed at the end of the module."""
    made = []

    def make(answers=(), holds=None):
        receiver = Receiver(answers, holds)
        made.append(receiver)
        return receiver

    yield make
    for receiver in made:
        receiver.close()


def hooks(stack, role="treasury"):
    return hook_grpc.WebhookServiceStub(stack.orchestrator(role))


def create_endpoint(stack, url, event_types=(), description="", request_id=None):
    return hooks(stack).CreateWebhookEndpoint(
        hook_pb.CreateWebhookEndpointRequest(
            request_id=request_id or str(uuid.uuid4()),
            url=url,
            event_types=list(event_types),
            description=description,
        ),
        timeout=10,
    )


def get_endpoint(stack, endpoint_id):
    return hooks(stack).GetWebhookEndpoint(
        hook_pb.GetWebhookEndpointRequest(endpoint_id=endpoint_id), timeout=10
    ).endpoint


def endpoint_deliveries(stack, endpoint_id, event_id=""):
    return list(
        hooks(stack).ListWebhookDeliveries(
            hook_pb.ListWebhookDeliveriesRequest(
                endpoint_id=endpoint_id, page_size=1000, event_id=event_id
            ),
            timeout=10,
        ).deliveries
    )


def wait_delivered(stack, endpoint_id, event_ids):
    """Waits until the endpoint's deliveries of `event_ids` are all DELIVERED (the receiver
    has the request a moment before the orchestrator records its answer); returns the
    endpoint's deliveries by event id."""
    deadline = time.monotonic() + DELIVERY_WAIT_S
    while True:
        by_event = {d.event_id: d for d in endpoint_deliveries(stack, endpoint_id)}
        if all(
            i in by_event and by_event[i].state == hook_pb.WEBHOOK_DELIVERY_STATE_DELIVERED
            for i in event_ids
        ):
            return by_event
        assert time.monotonic() < deadline, (event_ids, list(by_event.values()))
        time.sleep(0.05)


@pytest.fixture(scope="module")
def group(own_stack):
    """A 60/40 group of two cards that approve."""
    a = tokenize(own_stack, "4242424242424242")
    b = tokenize(own_stack, "5555555555554444")
    card_group = group_pb.CardGroup(
        billing_account_id="acct-webhooks",
        display_name="Webhooks suite group",
        default_currency_code="USD",
        members=[
            group_pb.CardGroupMember(token=a, label="card A", currency_code="USD", priority=1),
            group_pb.CardGroupMember(token=b, label="card B", currency_code="USD", priority=2),
        ],
        default_policy=group_pb.AllocationPolicy(
            strategy=group_pb.ALLOCATION_STRATEGY_WEIGHTED,
            weights=[
                group_pb.MemberWeight(token=a, basis_points=6000),
                group_pb.MemberWeight(token=b, basis_points=4000),
            ],
        ),
    )
    with own_stack.orchestrator("treasury") as channel:
        return group_grpc.CardGroupServiceStub(channel).CreateCardGroup(
            group_pb.CreateCardGroupRequest(request_id=str(uuid.uuid4()), card_group=card_group)
        ).card_group


def pay(stack, group, amount, invoice_id):
    """Pays `amount` USD cents from the group; returns the payment, SUCCEEDED."""
    with stack.orchestrator("payer") as channel:
        payment = pay_grpc.PaymentServiceStub(channel).CreatePayment(
            pay_pb.CreatePaymentRequest(
                request_id=str(uuid.uuid4()),
                invoice=pay_pb.Invoice(
                    id=invoice_id, amount=usd(amount), description="Webhooks invoice"
                ),
                card_group_id=group.id,
                wait=True,
                wait_timeout_ms=20000,
            ),
            timeout=30,
        ).payment
    assert payment.state == pay_pb.PAYMENT_STATE_SUCCEEDED, payment.summary
    return payment


def watch(stack, payment_id):
    """Every event of a terminal payment, in sequence order."""
    with stack.orchestrator("reader") as channel:
        return [
            message.event
            for message in pay_grpc.PaymentServiceStub(channel).WatchPayment(
                pay_pb.WatchPaymentRequest(payment_id=payment_id), timeout=30
            )
        ]


def of_payment(requests, payment_id):
    """The requests about the payment, in the order received."""
    return [
        r
        for r in requests
        if r.payload.get("data", {}).get("payment", {}).get("id") == payment_id
    ]


def rfc3339(text):
    """An RFC 3339 timestamp as a datetime (UTC)."""
    stamp = timestamp_pb2.Timestamp()
    stamp.FromJsonString(text)
    return stamp.ToDatetime(tzinfo=datetime.timezone.utc)


def refused(secret, body, headers):
    """True if the library refuses the delivery under `secret`."""
    try:
        standardwebhooks.Webhook(secret).verify(body, headers)
    except standardwebhooks.WebhookVerificationError:
        return True
    return False


def check_delivery(request, secret):
    """Verifies `request` under `secret` with the Standard Webhooks library and checks the
    headers and the payload's envelope; returns the payload."""
    assert (request.method, request.path) == ("POST", "/hook"), request.path
    headers = request.headers
    assert headers.get("content-type", "").split(";")[0].strip() == "application/json", headers
    payload = standardwebhooks.Webhook(secret).verify(request.body, headers)
    assert EVENT_ID.fullmatch(request.id), headers
    # The attempt's time, in unix seconds, by the orchestrator's clock (this machine's).
    assert re.fullmatch(r"[0-9]+", headers["webhook-timestamp"]), headers
    assert abs(int(headers["webhook-timestamp"]) - request.received) < 5, headers
    assert all(SIGNATURE.fullmatch(s) for s in request.signatures()), headers
    assert set(payload) == {"type", "timestamp", "data"}, payload
    data = payload["data"]
    assert data["id"] == request.id, (request.id, data)
    assert data["typeName"] == payload["type"], payload
    # The body's time is the event's commit (the data's createTime), RFC 3339.
    assert abs(rfc3339(payload["timestamp"]) - rfc3339(data["createTime"])) < datetime.timedelta(
        seconds=1
    ), payload
    return payload


def verify_in_node(tmp_path, requests, *secrets):
    """Runs tests/node/verify_webhooks.mjs on the requests; returns (exit code, output)."""
    captured = tmp_path / f"deliveries-{uuid.uuid4().hex[:8]}.json"
    captured.write_text(json.dumps([r.capture() for r in requests]))
    result = subprocess.run(
        ["node", "verify_webhooks.mjs", str(captured), *secrets],
        cwd=NODE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, result.stdout, result.stderr


def test_every_delivery_verifies_with_standard_webhooks(own_stack, group, receivers, tmp_path):
    """An endpoint for every event type receives each event of a paid invoice once, in the
    order of the payment's events, signed under its secret: the Python and the Node libraries
    verify every delivery; `data` is the event `WatchPayment` streams, and the terminal
    payment.succeeded carries the summary. Another secret, an altered body and a timestamp
    moved outside the five minutes' tolerance are refused."""
    receiver = receivers()
    request_id = str(uuid.uuid4())
    created = create_endpoint(own_stack, receiver.url, description="ERP", request_id=request_id)
    endpoint, secret = created.endpoint, created.secret
    assert ENDPOINT_ID.fullmatch(endpoint.id), endpoint
    assert (endpoint.url, endpoint.description, list(endpoint.event_types)) == (
        receiver.url,
        "ERP",
        [],
    )
    assert endpoint.state == hook_pb.WEBHOOK_ENDPOINT_STATE_ENABLED
    assert endpoint.disabled_reason == hook_pb.WEBHOOK_DISABLED_REASON_UNSPECIFIED
    assert endpoint.secret_version == 1
    assert (endpoint.creator.name, endpoint.creator.role) == ("dev", "treasury")
    assert not endpoint.HasField("previous_secret_expire_time")
    assert secret.startswith("whsec_"), secret
    assert len(base64.b64decode(secret[len("whsec_") :], validate=True)) == 32
    # A replay returns the stored result, secret included (it is still the current one).
    replay = create_endpoint(own_stack, receiver.url, description="ERP", request_id=request_id)
    assert (replay.endpoint.id, replay.secret) == (endpoint.id, secret)
    assert get_endpoint(own_stack, endpoint.id).url == receiver.url

    payment = pay(own_stack, group, 2050, "INV-HOOK-1")
    events = watch(own_stack, payment.id)
    assert events[0].type_name == "payment.created"
    assert events[-1].type_name == "payment.succeeded"
    wanted = {e.id for e in events}
    requests = receiver.wait_for(
        lambda got: wanted <= {r.id for r in of_payment(got, payment.id)},
        f"delivery of every event of {payment.id}",
    )

    # Every delivery (whatever it is about) verifies under the endpoint's secret.
    for request in requests:
        check_delivery(request, secret)
    mine = of_payment(requests, payment.id)
    # Each event once (every answer was a 200), in the order of the payment's events.
    assert [r.id for r in mine] == [e.id for e in events], [r.payload["type"] for r in mine]
    for request, event in zip(mine, events):
        payload = request.payload
        assert payload["type"] == event.type_name
        # `data` is the proto3 JSON of the PaymentEvent: it parses back into the same event.
        parsed = json_format.ParseDict(payload["data"], pay_pb.PaymentEvent())
        assert parsed == event, (payload["data"], event)
    succeeded = mine[-1].payload["data"]
    assert succeeded["summary"] == payment.summary != "", succeeded
    assert succeeded["summary"].startswith("Invoice INV-HOOK-1 paid 20.50 USD"), succeeded
    assert succeeded["payment"]["state"] == "PAYMENT_STATE_SUCCEEDED", succeeded
    assert succeeded["typeName"] == "payment.succeeded"

    # What a receiver must refuse, on the terminal delivery.
    last = mine[-1]
    body, headers = last.body, last.headers
    assert refused(random_secret(), body, headers)
    assert refused(secret, body.replace(b"payment.succeeded", b"payment.failed", 1), headers)
    assert refused(secret, body + b" ", headers)
    for shift in (-600, 600):
        moved = dict(headers)
        moved["webhook-timestamp"] = str(int(headers["webhook-timestamp"]) + shift)
        assert refused(secret, body, moved), shift
    for name in ("webhook-id", "webhook-timestamp", "webhook-signature"):
        assert refused(secret, body, {k: v for k, v in headers.items() if k != name}), name
    # Another event's id with this body and signature.
    assert refused(secret, body, dict(headers, **{"webhook-id": mine[0].id}))

    # The Node library verifies every delivery too (and refuses the same alterations).
    code, out, err = verify_in_node(tmp_path, requests, secret)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["verified"] == len(requests), result
    assert [d["id"] for d in result["deliveries"]] == [r.id for r in requests]
    code, _, err = verify_in_node(tmp_path, requests, random_secret())
    assert code != 0 and "did not verify" in err, err

    # Every delivery is listed, delivered at the first attempt (once the orchestrator has
    # recorded the last answer).
    by_event = wait_delivered(own_stack, endpoint.id, [r.id for r in mine])
    for request in mine:
        delivery = by_event[request.id]
        assert DELIVERY_ID.fullmatch(delivery.id), delivery
        assert delivery.endpoint_id == endpoint.id
        assert delivery.event_type == request.payload["type"]
        assert delivery.state == hook_pb.WEBHOOK_DELIVERY_STATE_DELIVERED, delivery
        assert [(a.attempt_number, a.status_code) for a in delivery.attempts] == [(1, 200)]
        assert not delivery.redelivery


def test_a_failing_receiver_gets_the_same_event_until_it_answers(own_stack, group, receivers):
    """A receiver of payment.succeeded only answers 500 twice, then 200: the event comes three
    times, a retry schedule's wait apart, with the same webhook-id and body, each signed anew;
    `ListWebhookDeliveries` shows one delivery with attempts 500, 500, 200."""
    receiver = receivers(answers=[500, 500])
    created = create_endpoint(own_stack, receiver.url, event_types=["payment.succeeded"])
    endpoint, secret = created.endpoint, created.secret
    assert list(endpoint.event_types) == ["payment.succeeded"]

    payment = pay(own_stack, group, 1000, "INV-HOOK-2")
    requests = receiver.wait_for(
        lambda got: any(r.status == 200 for r in got), "a delivery answered 200"
    )
    assert [r.status for r in requests] == [500, 500, 200], [(r.status, r.id) for r in requests]
    for request in requests:
        payload = check_delivery(request, secret)
        assert payload["type"] == "payment.succeeded", payload
        assert payload["data"]["payment"]["id"] == payment.id
    assert len({r.id for r in requests}) == 1, [r.id for r in requests]
    assert len({r.body for r in requests}) == 1
    # The retry schedule's waits (300 ms, jittered by up to a tenth) lie between the attempts.
    gaps = [b.monotonic - a.monotonic for a, b in zip(requests, requests[1:])]
    assert all(gap >= 0.25 for gap in gaps), gaps

    event_id = requests[0].id
    wait_delivered(own_stack, endpoint.id, [event_id])
    (delivery,) = endpoint_deliveries(own_stack, endpoint.id, event_id=event_id)
    assert (delivery.endpoint_id, delivery.event_id, delivery.event_type) == (
        endpoint.id,
        event_id,
        "payment.succeeded",
    )
    assert [(a.attempt_number, a.status_code) for a in delivery.attempts] == [
        (1, 500),
        (2, 500),
        (3, 200),
    ], delivery.attempts
    assert all(a.error for a in delivery.attempts[:2]), delivery.attempts
    assert delivery.attempts[2].error == "", delivery.attempts
    assert all(a.latency_ms >= 0 for a in delivery.attempts)
    times = [a.time.ToDatetime() for a in delivery.attempts]
    assert times == sorted(times), times
    assert delivery.HasField("deliver_time") and not delivery.HasField("next_attempt_time")
    assert not delivery.redelivery
    # The filter: nothing but payment.succeeded was queued for the endpoint.
    assert [d.event_id for d in endpoint_deliveries(own_stack, endpoint.id)] == [event_id]
    after = get_endpoint(own_stack, endpoint.id)
    assert after.state == hook_pb.WEBHOOK_ENDPOINT_STATE_ENABLED
    assert after.pending_deliveries == 0 and not after.HasField("failing_since"), after


def test_a_rotated_secret_signs_beside_the_old_one(own_stack, group, receivers, tmp_path):
    """The secret is rotated while the first attempt of a delivery is in flight (the receiver
    holds its answer, a 500): that attempt is signed by the old secret only, the retry by both
    (two `v1,` signatures), so it verifies under either; once the overlap is over, only the
    new secret signs. Python and Node verify every delivery under one of the two secrets."""
    in_flight = threading.Event()
    receiver = receivers(answers=[500], holds={0: in_flight})
    created = create_endpoint(own_stack, receiver.url, event_types=["payment.succeeded"])
    endpoint, old = created.endpoint, created.secret

    payment = pay(own_stack, group, 1100, "INV-HOOK-3")
    receiver.wait_for(lambda got: len(got) >= 1, "a first attempt")
    try:
        rotated = hooks(own_stack).RotateWebhookSecret(
            hook_pb.RotateWebhookSecretRequest(
                request_id=str(uuid.uuid4()), endpoint_id=endpoint.id
            ),
            timeout=10,
        )
        rotate_time = time.time()
    finally:
        in_flight.set()
    new = rotated.secret
    assert new.startswith("whsec_") and new != old, new
    assert len(base64.b64decode(new[len("whsec_") :], validate=True)) == 32
    assert rotated.endpoint.id == endpoint.id and rotated.endpoint.secret_version == 2
    expire = rotated.endpoint.previous_secret_expire_time.ToDatetime(
        tzinfo=datetime.timezone.utc
    ).timestamp()
    assert abs(expire - (rotate_time + ROTATION_OVERLAP_S)) < 3, (expire, rotate_time)
    assert get_endpoint(own_stack, endpoint.id).secret_version == 2

    attempts = receiver.wait_for(
        lambda got: any(r.status == 200 for r in got), "the retry answered 200"
    )
    assert [r.status for r in attempts] == [500, 200], [(r.status, r.id) for r in attempts]
    first, retry = attempts
    assert first.id == retry.id and first.body == retry.body
    assert retry.payload["data"]["payment"]["id"] == payment.id
    # The first attempt was signed before the rotation: the old secret only.
    assert len(first.signatures()) == 1, first.headers
    check_delivery(first, old)
    assert refused(new, first.body, first.headers)
    # The retry, during the overlap: both sign, and each secret alone verifies it.
    assert int(retry.headers["webhook-timestamp"]) < expire
    assert len(retry.signatures()) == 2, retry.headers
    check_delivery(retry, old)
    check_delivery(retry, new)
    at = datetime.datetime.fromtimestamp(
        int(retry.headers["webhook-timestamp"]), datetime.timezone.utc
    )
    assert set(retry.signatures()) == {
        standardwebhooks.Webhook(s).sign(retry.id, at, retry.body) for s in (old, new)
    }, retry.headers

    # Past the overlap only the new secret signs.
    time.sleep(max(0.0, expire - time.time()) + 1.0)
    later = pay(own_stack, group, 1200, "INV-HOOK-4")
    requests = receiver.wait_for(
        lambda got: any(r.status == 200 for r in of_payment(got, later.id)),
        f"the delivery of {later.id}",
    )
    (last,) = of_payment(requests, later.id)
    assert len(last.signatures()) == 1, last.headers
    check_delivery(last, new)
    assert refused(old, last.body, last.headers)

    # Node: every delivery verifies under one of the two; the old one alone no longer does for
    # the last, and the new one alone not for the first.
    code, out, err = verify_in_node(tmp_path, requests, old, new)
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["verified"] == len(requests)
    assert verify_in_node(tmp_path, requests[1:], new)[0] == 0
    assert verify_in_node(tmp_path, requests[:2], old)[0] == 0
    assert verify_in_node(tmp_path, [last], old)[0] != 0
    assert verify_in_node(tmp_path, [first], new)[0] != 0

    # The endpoint no longer says the previous secret signs.
    after = get_endpoint(own_stack, endpoint.id)
    assert after.secret_version == 2
    assert not after.HasField("previous_secret_expire_time"), after


@pytest.mark.parametrize(
    "url, event_types, description, field",
    [
        # Plain http to a host webhook.allow_hosts does not name.
        ("http://example.com/x", [], "", "url"),
        # Private and link-local destinations (the cloud's metadata service).
        ("https://10.1.2.3/hook", [], "", "url"),
        ("https://169.254.169.254/latest/meta-data", [], "", "url"),
        ("not a url", [], "", "url"),
        ("http://127.0.0.1:9/hook", ["payment.nope"], "", "event_types"),
        ("http://127.0.0.1:9/hook", [], "x" * 501, "description"),
    ],
)
def test_a_bad_endpoint_names_the_field(own_stack, url, event_types, description, field):
    """A URL that is not https or points into a private, loopback or link-local range (unless
    webhook.allow_hosts names its host), an unknown event type or a description over 500
    characters is INVALID_ARGUMENT with a BadRequest naming the field."""
    with pytest.raises(grpc.RpcError) as error:
        create_endpoint(own_stack, url, event_types=event_types, description=description)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
    # A repeated field's element may be named by its index (as ListEvents does).
    (named,) = details(error.value)[1]
    assert re.sub(r"\[0\]$", "", named) == field, (named, error.value)


def test_limits_are_inclusive_and_a_deleted_endpoint_is_gone(own_stack):
    """A description of exactly 500 characters is accepted; the endpoint, deleted, is
    NOT_FOUND `WEBHOOK_ENDPOINT_NOT_FOUND`."""
    created = create_endpoint(
        own_stack, "http://127.0.0.1:9/hook", event_types=["payment.failed"], description="d" * 500
    )
    endpoint = created.endpoint
    assert len(endpoint.description) == 500
    listed = hooks(own_stack).ListWebhookEndpoints(
        hook_pb.ListWebhookEndpointsRequest(page_size=1000), timeout=10
    ).endpoints
    assert endpoint.id in [e.id for e in listed]
    hooks(own_stack).DeleteWebhookEndpoint(
        hook_pb.DeleteWebhookEndpointRequest(
            request_id=str(uuid.uuid4()), endpoint_id=endpoint.id
        ),
        timeout=10,
    )
    with pytest.raises(grpc.RpcError) as error:
        get_endpoint(own_stack, endpoint.id)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND, error.value
    assert details(error.value)[0] == "WEBHOOK_ENDPOINT_NOT_FOUND", error.value


@pytest.mark.parametrize("role", ["payer", "reader", "approver"])
def test_only_the_treasury_manages_webhooks(own_stack, role):
    """Every other orchestrator role is PERMISSION_DENIED `ROLE_NOT_ALLOWED`."""
    stub = hooks(own_stack, role)
    for call in (
        lambda: stub.ListWebhookEndpoints(hook_pb.ListWebhookEndpointsRequest(), timeout=10),
        lambda: stub.CreateWebhookEndpoint(
            hook_pb.CreateWebhookEndpointRequest(
                request_id=str(uuid.uuid4()), url="http://127.0.0.1:9/hook"
            ),
            timeout=10,
        ),
    ):
        with pytest.raises(grpc.RpcError) as error:
            call()
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, error.value
        assert details(error.value)[0] == "ROLE_NOT_ALLOWED", error.value
