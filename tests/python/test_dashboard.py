"""The dashboard in a browser: headless Chromium (Debian's `/usr/bin/chromium`, driven by
playwright-core from tests/node/dashboard.mjs) signs in with people's client certificates, one
browser context per person. Each test seeds its scenario through the gRPC APIs, has the browser
go through it, and checks what the pages showed and did against the APIs and tandemctl:

- a payment's page shows the split GetPayment and `tandemctl payments show` give;
- the spend charts draw the net totals GetSpendReport gives, per currency, and days without
  spend show so without an error;
- a discrepancy the sandbox made is proposed by the treasury and approved by the approver in
  the browser (four eyes), and is then resolved;
- a payment held for review is approved from the queue by the reviewer, and is captured;
- a reader is offered no change, and a change it posts anyway is refused, without a token or
  with one taken from another person's page;
- a running payment's page follows it to SUCCEEDED without a reload;
- the payments filters replace the results without a reload and keep the filter in the URL;
- a client without a certificate gets no page, and a cross-site post of a valid form is
  refused;
- no page, script or response the browser got holds a test card number.

Every page visited leaves a full-page screenshot in target/screenshots/dashboard/ (kept after
the run, to look at) and its HTML, with every response of the dashboard, in the module's dump
directory, which the last test scans.

Runs on a stack of its own (`own_stack`): the reconciliation and review pages list everything
open on the stack, and the filters' results are compared with ListPayments as a whole."""

import datetime
import json
import pathlib
import re
import shutil
import socket
import ssl
import subprocess
import time
import urllib.parse
import uuid

import pytest

from conftest import ROOT, orchestratorctl
from tandem.orchestrator.v1 import card_group_service_pb2 as group_pb
from tandem.orchestrator.v1 import card_group_service_pb2_grpc as group_grpc
from tandem.orchestrator.v1 import ledger_service_pb2 as ledger_pb
from tandem.orchestrator.v1 import ledger_service_pb2_grpc as ledger_grpc
from tandem.orchestrator.v1 import payment_service_pb2 as pay_pb
from tandem.orchestrator.v1 import reconciliation_service_pb2 as recon_pb
from tandem.vault.v1 import sandbox_service_pb2 as sandbox_pb
from test_payments import member, tokenize, usd
from test_reconciliation import change_amount, propose, recon, run, sandbox
from test_risk import get_payment, group_in, in_review, new_account, pay, payments, settled
from test_webhooks import Receiver, create_endpoint

DRIVER = ROOT / "tests" / "node" / "dashboard.mjs"
PLAYWRIGHT = ROOT / "tests" / "node" / "node_modules" / "playwright-core"
CHROMIUM = pathlib.Path("/usr/bin/chromium")
SCREENSHOTS = ROOT / "target" / "screenshots" / "dashboard"
CARD_NUMBERS = ROOT / "tests" / "test-card-numbers.txt"
# The longest one run of the browser may take (a scenario's steps time out well before).
DRIVER_TIMEOUT_S = 180
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# The people of `tandemctl dev` and the names in their certificates.
PEOPLE = {
    "admin": "dev",
    "auditor": "dev",
    "payer": "dev",
    "treasury": "dev",
    "reader": "dev",
    "approver": "dev-approver",
    "reviewer": "dev-reviewer",
}
# The pages of the navigation, in its order.
NAVIGATION = [
    "/payments",
    "/card-groups",
    "/spend",
    "/failures",
    "/reconciliation",
    "/review",
    "/webhooks",
    "/keys",
]
# Minor units per unit of the currencies these tests pay in.
EXPONENTS = {"USD": 2, "EUR": 2}
# A Visa test card the sandbox approves and no other test of this module pays with: the one the
# live test slows down.
SLOW_CARD = "4000056655665556"
SLOW_CARD_LATENCY_MS = 2000
# What the dashboard answers a form it refuses (dashboard/src/forms.rs).
NOT_YOURS = "this form is not yours"
NOT_FROM_HERE = "this form must be posted from the dashboard's own pages"


class Browser:
    """Runs tests/node/dashboard.mjs against the stack's dashboard: one run per call, each a
    fresh Chromium, saving screenshots to SCREENSHOTS and HTML and responses to `dumps`."""

    def __init__(self, stack, work):
        self.stack = stack
        self.work = work
        self.dumps = work / "dumps"
        self.visits = []
        self.runs = 0

    def run(self, scenario, while_running=None):
        """Runs one scenario (a dict with its `name` and fields, see dashboard.mjs); returns
        what it read. `while_running(process)`, if given, is called once the browser started,
        while it runs (to seed what it waits for)."""
        self.runs += 1
        plan = {
            "origin": f"https://{self.stack.dashboard_address}",
            "certs": str(self.stack.certs),
            "chromium": str(CHROMIUM),
            "screenshots": str(SCREENSHOTS),
            "dumps": str(self.dumps),
            "scenarios": [scenario],
        }
        name = f"{self.runs:02d}-{scenario['name']}"
        plan_path = self.work / f"{name}.plan.json"
        plan_path.write_text(json.dumps(plan, indent=2))
        stdout_path, stderr_path = self.work / f"{name}.out.json", self.work / f"{name}.err.txt"
        # Files, not pipes: nothing reads the output until the run ends.
        with open(stdout_path, "wb") as stdout, open(stderr_path, "wb") as stderr:
            process = subprocess.Popen(
                ["node", str(DRIVER), str(plan_path)], cwd=ROOT, stdout=stdout, stderr=stderr
            )
            try:
                if while_running is not None:
                    while_running(process)
                process.wait(timeout=DRIVER_TIMEOUT_S)
            finally:
                if process.poll() is None:
                    # SIGTERM first: Playwright then closes the Chromium it started.
                    process.terminate()
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        process.kill()
                        process.wait()
        errors = stderr_path.read_text(errors="replace")
        if process.returncode != 0:
            pytest.fail(
                f"dashboard.mjs {scenario['name']} failed (exit {process.returncode}):\n{errors}"
            )
        output = json.loads(stdout_path.read_text())
        self.visits += output["visits"]
        for visit in output["visits"]:
            assert pathlib.Path(visit["screenshot"]).read_bytes()[:8] == PNG_MAGIC, visit
            assert pathlib.Path(visit["html"]).stat().st_size > 0, visit
        return output["results"][scenario["name"]]


@pytest.fixture(scope="module")
def browser(own_stack, tmp_path_factory):
    """Runs the browser against the module's stack. Fails (does not skip) without Chromium or
    playwright-core: the browser tests are part of the suite."""
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)"
        )
    if not PLAYWRIGHT.is_dir():
        pytest.fail(f"{PLAYWRIGHT} is missing: run `npm ci --prefix tests/node`")
    # Only this run's screenshots: an old one must not stand in for a page not visited.
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return Browser(own_stack, tmp_path_factory.mktemp("dashboard"))


def unexpected(problems, forbidden=False):
    """The console errors and failed responses of a scenario's pages, but the favicon the
    dashboard does not serve and, if `forbidden`, the 403s the scenario provoked."""
    left = [p for p in problems if "/favicon.ico" not in p]
    if forbidden:
        left = [p for p in left if "status of 403" not in p and not p.startswith("HTTP 403 ")]
    return left


def shown(money):
    """An amount as the dashboard and tandemctl show it: `20.50 USD`."""
    exponent = EXPONENTS[money.currency_code]
    units, scale = abs(money.minor_units), 10**exponent
    sign = "-" if money.minor_units < 0 else ""
    return f"{sign}{units // scale}.{units % scale:0{exponent}d} {money.currency_code}"


def bare(enum, value, prefix):
    return enum.Name(value).removeprefix(prefix)


def global_ops(stack):
    """The card group `tandemctl dev` seeds: three cards, one of them a euro card."""
    with stack.orchestrator("treasury") as channel:
        groups = group_grpc.CardGroupServiceStub(channel).ListCardGroups(
            group_pb.ListCardGroupsRequest(page_size=100), timeout=10
        ).card_groups
    (group,) = [g for g in groups if g.display_name == "GlobalOps"]
    return group


def list_payment_ids(stack, **filters):
    """The first page (50) of ListPayments with `filters`, newest first, as the reader."""
    return [
        p.id
        for p in payments(stack, "reader")
        .ListPayments(pay_pb.ListPaymentsRequest(page_size=50, **filters), timeout=10)
        .payments
    ]


def settlement_records(stack):
    return sandbox(stack).ListSettlementRecords(
        sandbox_pb.ListSettlementRecordsRequest(page_size=1000), timeout=10
    ).records


def open_discrepancy(stack):
    """A fresh open discrepancy: a payment of its own account's 60/40 group, one of whose
    captures the sandbox then settles a unit more, found by a run of its day."""
    before = {r.id for r in settlement_records(stack)}
    payment = pay(stack, group_in(stack, new_account()), invoice="INV-DASH-RECON")
    assert payment.state == pay_pb.PAYMENT_STATE_SUCCEEDED, payment.summary
    record = next(
        r
        for r in settlement_records(stack)
        if r.id not in before and r.type == sandbox_pb.SETTLEMENT_RECORD_TYPE_CAPTURE
    )
    change_amount(stack, record.settlement_date, record, record.amount.minor_units + 1)
    found_run = run(stack, record.settlement_date)
    (found,) = [
        d
        for d in recon(stack, "reader")
        .ListDiscrepancies(
            recon_pb.ListDiscrepanciesRequest(page_size=100, run_id=found_run.id), timeout=10
        )
        .discrepancies
        if d.record_id == record.id
    ]
    assert found.state == recon_pb.DISCREPANCY_STATE_OPEN and not found.adjustment_id, found
    return found


def discrepancy_now(stack, found):
    """The discrepancy as ListDiscrepancies has it now."""
    (now,) = [
        d
        for d in recon(stack, "reader")
        .ListDiscrepancies(
            recon_pb.ListDiscrepanciesRequest(
                page_size=100, processor="sandbox", settlement_date=found.settlement_date
            ),
            timeout=10,
        )
        .discrepancies
        if d.id == found.id
    ]
    return now


def adjustment_events(stack, adjustment_id):
    """The adjustment's events in the feed: {type name: the adjustment as it was then}."""
    stub = payments(stack, "treasury")
    found, token = {}, ""
    for _ in range(20):
        page = stub.ListEvents(
            pay_pb.ListEventsRequest(
                page_size=1000,
                page_token=token,
                event_types=[
                    "reconciliation.adjustment_proposed",
                    "reconciliation.adjustment_approved",
                    "reconciliation.adjustment_rejected",
                ],
            ),
            timeout=10,
        )
        for event in page.events:
            adjustment = event.reconciliation_event.adjustment
            if adjustment.id == adjustment_id:
                found[event.type] = adjustment
        token = page.next_page_token
        if not token:
            return found
    raise AssertionError("ListEvents did not end in 20 pages")


# tandemctl's leg line: index, label, ·last4, amount (with the charge and the rate when
# converted), state, ... (cli/src/payments.rs).
CLI_LEG = re.compile(r"^\s*(\d+)\s+.+?\s+·(\S{4})\s+(\d+\.\d{2} [A-Z]{3})(?: \((.+?)\))?\s{2}")


def cli_legs(text):
    """The legs of `tandemctl payments show`: (index, last4, amount, charge and rate or None)."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("leg  label"))
    legs = []
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        match = CLI_LEG.match(line)
        assert match, f"not a leg line: {line!r}"
        legs.append((int(match[1]), match[2], match[3], match[4]))
    return legs


def test_payment_page_shows_the_split_of_the_api_and_the_cli(own_stack, browser):
    """A GlobalOps payment (three cards, one charged in euros at the treasury's rate) reads the
    same on its page, in GetPayment and in `tandemctl payments show`: each leg's card (last
    four), amount, charge, capture and state; the attempts, the ledger entries and the events,
    whose stream (read whole) ends once the payment is settled."""
    payment = pay(own_stack, global_ops(own_stack).id, 2050, invoice="INV-DASH-SPLIT")
    assert payment.state == pay_pb.PAYMENT_STATE_SUCCEEDED, payment.summary

    page = browser.run({"name": "payment", "payment_id": payment.id})
    api = get_payment(own_stack, payment.id)
    cli, _ = orchestratorctl(own_stack, "payments", "show", payment.id)

    assert page["status"] == 200
    view = page["shown"]
    assert view["title"].startswith(f"Payment {payment.id}")
    assert view["state"] == "SUCCEEDED"
    assert view["captured"] == shown(api.captured) == "20.50 USD"
    # The split: the page, the API and the CLI agree leg by leg.
    assert len(api.legs) == 3 and sum(1 for leg in api.legs if leg.fx_rate) == 1, api.legs
    from_api = [(leg.index, leg.last4, shown(leg.amount)) for leg in api.legs]
    assert [(leg["index"], leg["last4"], leg["amount"]) for leg in view["legs"]] == from_api
    assert [leg[:3] for leg in cli_legs(cli)] == from_api, cli
    for leg, row, (_, _, _, converted) in zip(api.legs, view["legs"], cli_legs(cli)):
        if leg.fx_rate:
            charge = f"{shown(leg.charge_amount)} at {leg.fx_rate}"
            assert (row["charged"], converted) == (charge, charge), (row, cli)
        else:
            assert converted is None, cli
        assert row["captured"] == shown(leg.captured), row
        assert row["state"] == bare(pay_pb.LegState, leg.state, "LEG_STATE_") == "CAPTURED"
    assert [(a["number"], a["outcome"]) for a in view["attempts"]] == [
        (a.number, bare(pay_pb.AttemptOutcome, a.outcome, "ATTEMPT_OUTCOME_")) for a in api.attempts
    ]
    assert view["ledgerRows"] > 0
    # Events 1..n on the page; the page watches after the last; the stream read whole gives the
    # same sequence, each event only its sequence and type, then `end`.
    sequences = view["events"]
    assert sequences == list(range(1, len(sequences) + 1)) and sequences, sequences
    assert view["watch"] == f"/payments/{payment.id}/events?after={sequences[-1]}"
    assert page["eventsStatus"] == 200
    assert re.findall(r"^id: (\d+)$", page["events"], re.M) == [str(s) for s in sequences]
    assert page["events"].endswith("event: end\ndata: {}\n\n"), page["events"]
    assert view["liveState"] == "closed"
    assert unexpected(page["problems"]) == []


def test_spend_charts_draw_the_net_totals_of_the_spend_report(own_stack, browser):
    """GlobalOps' billing account over yesterday and today (UTC): after two payments and a
    partial refund, each chart's drawn totals (its first series, net) are GetSpendReport's net
    totals per currency, dollars and euros, and the totals table is the report's."""
    group = global_ops(own_stack)
    pay(own_stack, group.id, 2050, invoice="INV-DASH-SPEND-1")
    refunded = pay(own_stack, group.id, 1000, invoice="INV-DASH-SPEND-2")
    refund = payments(own_stack).RefundPayment(
        pay_pb.RefundPaymentRequest(
            request_id=str(uuid.uuid4()), payment_id=refunded.id, amount=usd(300)
        ),
        timeout=30,
    )
    assert refund.refund.state == pay_pb.PAYMENT_REFUND_STATE_SUCCEEDED, refund
    today = datetime.datetime.now(datetime.timezone.utc).date()
    start = today - datetime.timedelta(days=1)

    page = browser.run(
        {
            "name": "spend",
            "billing_account_id": group.billing_account_id,
            "from": start.isoformat(),
            "until": today.isoformat(),
        }
    )
    with own_stack.orchestrator("treasury") as channel:
        report = ledger_grpc.LedgerServiceStub(channel).GetSpendReport(
            ledger_pb.GetSpendReportRequest(
                billing_account_id=group.billing_account_id,
                start_date=start.isoformat(),
                # The report's end is exclusive; the page's `until` is included.
                end_date=(today + datetime.timedelta(days=1)).isoformat(),
            ),
            timeout=10,
        )

    net = {line.currency_code: line.net.minor_units for line in report.totals}
    assert set(net) == {"USD", "EUR"}, report.totals
    # Net is not captured: the refund shows.
    assert any(line.refunded.minor_units > 0 for line in report.totals), report.totals
    assert page["status"] == 200 and page["account"] == group.billing_account_id
    assert set(page["charts"]) == {"spend-by-card", "spend-by-cost-center", "spend-by-month"}
    for chart_id, chart in page["charts"].items():
        assert chart["drawn"] and chart["canvas"] and chart["rows"] > 0, (chart_id, chart)
        assert chart["totals"] == net, (chart_id, chart["totals"], net)
    assert page["totals"] == [
        {
            "currency": line.currency_code,
            "net": line.net.minor_units,
            "captured": line.captured.minor_units,
            "refunded": line.refunded.minor_units,
        }
        for line in report.totals
    ]
    assert unexpected(page["problems"]) == []


def test_spend_of_days_without_spend_shows_so_without_errors(own_stack, browser):
    """Days in which the billing account spent nothing: the totals say so, no chart is drawn
    with an amount, and the page logs no error (an empty report is not a broken one)."""
    group = global_ops(own_stack)
    page = browser.run(
        {
            "name": "spend",
            "billing_account_id": group.billing_account_id,
            "from": "2020-01-01",
            "until": "2020-01-31",
        }
    )
    assert page["status"] == 200
    assert page["nothing"] == "Nothing spent in these days." and page["totals"] == []
    for chart_id, chart in page["charts"].items():
        assert not chart["drawn"] or chart["totals"] == {}, (chart_id, chart)
    assert unexpected(page["problems"]) == []


def test_a_discrepancy_is_proposed_and_approved_in_the_browser(own_stack, browser):
    """Four eyes in the browser: the treasury sees the open discrepancy and proposes the
    correction the row states; the row then awaits approval and offers the treasury nothing
    more; the approver (another person) approves it; ListDiscrepancies then has it RESOLVED by
    that adjustment, whose events name the treasury as proposer (with the reason typed) and the
    approver as decider."""
    found = open_discrepancy(own_stack)
    reason = f"settled a cent more ({uuid.uuid4().hex[:8]})"

    page = browser.run({"name": "reconcile", "discrepancy_id": found.id, "reason": reason})

    assert page["proposing"]["state"] == "OPEN"
    actions = [f["action"] for f in page["proposing"]["offered"]["forms"]]
    assert f"/reconciliation/discrepancies/{found.id}/propose" in actions
    assert not any("/adjustments/" in a for a in actions), actions
    assert page["button"] == f"Propose {shown(usd(abs(found.correction.minor_units)))}"
    proposed = page["proposed"]
    assert proposed["notice"] == "The adjustment was proposed; an approver decides it."
    assert (proposed["state"], proposed["forms"]) == ("AWAITING APPROVAL", 0), proposed

    adjustment_id = discrepancy_now(own_stack, found).adjustment_id
    assert adjustment_id.startswith("adj_")
    assert page["approving"]["state"] == "AWAITING APPROVAL"
    actions = [f["action"] for f in page["approving"]["offered"]["forms"]]
    assert f"/reconciliation/adjustments/{adjustment_id}/approve" in actions
    assert f"/reconciliation/adjustments/{adjustment_id}/reject" in actions
    assert not any(a.endswith("/propose") for a in actions), actions
    approved = page["approved"]
    assert "notice=approved" in approved["url"] and "state=ANY" in approved["url"]
    assert approved["notice"] == "The adjustment was approved and booked."
    assert approved["forms"] == 0

    now = discrepancy_now(own_stack, found)
    assert now.state == recon_pb.DISCREPANCY_STATE_RESOLVED, now
    assert now.adjustment_id == adjustment_id
    assert now.applied == found.correction
    resolved = recon(own_stack, "reader").ListDiscrepancies(
        recon_pb.ListDiscrepanciesRequest(
            page_size=100,
            processor="sandbox",
            settlement_date=found.settlement_date,
            state=recon_pb.DISCREPANCY_STATE_RESOLVED,
        ),
        timeout=10,
    ).discrepancies
    assert found.id in [d.id for d in resolved]
    # The page's state column says what the API says.
    assert approved["state"] == "RESOLVED"
    events = adjustment_events(own_stack, adjustment_id)
    proposal = events["reconciliation.adjustment_proposed"]
    assert (proposal.proposer.name, proposal.proposer.role) == ("dev", "treasury")
    assert proposal.reason == reason
    assert proposal.amount == usd(abs(found.correction.minor_units))
    decision = events["reconciliation.adjustment_approved"]
    assert decision.state == recon_pb.ADJUSTMENT_STATE_APPROVED
    assert (decision.decider.name, decision.decider.role) == ("dev-approver", "approver")
    assert decision.ledger_entry_ids
    assert unexpected(page["problems"]) == []


def test_a_payment_in_review_is_approved_from_the_queue(own_stack, browser):
    """The reviewer approves a held payment from the review queue with a note: the queue then
    says so and no longer lists it, its page follows it to SUCCEEDED, and GetPayment has it
    captured with the reviewer's verdict and note."""
    _, _, held = in_review(own_stack)
    note = f"known supplier ({uuid.uuid4().hex[:8]})"

    page = browser.run({"name": "review", "payment_id": held.id, "note": note})

    assert page["queued"]["rows"] >= 1
    assert page["reviewed"]["notice"] == "The payment was reviewed."
    assert page["reviewed"]["stillQueued"] == 0
    assert page["shown"]["state"] == "SUCCEEDED"
    done = settled(own_stack, held.id)
    assert done.state == pay_pb.PAYMENT_STATE_SUCCEEDED, done.summary
    assert all(leg.state == pay_pb.LEG_STATE_CAPTURED for leg in done.legs), done.legs
    assert done.review.verdict == pay_pb.REVIEW_VERDICT_APPROVE
    assert (done.review.reviewer.name, done.review.reviewer.role) == ("dev-reviewer", "reviewer")
    assert done.review.note == note
    assert [leg["captured"] for leg in page["shown"]["legs"]] == [
        shown(leg.captured) for leg in done.legs
    ]
    assert unexpected(page["problems"]) == []


def test_a_reader_is_offered_no_change_and_cannot_post_one(own_stack, browser):
    """A reader sees the open discrepancy, the one awaiting approval and the held payment, with
    no form and no Approve, Propose or Reject button. The forms the treasury, the approver and
    the reviewer are offered, posted from the reader's own page, are refused (403) both without
    their token and with it (a token is bound to its person's certificate), as is the form
    rebuilt in the page and submitted; nothing changed."""
    open_one = open_discrepancy(own_stack)
    waiting = open_discrepancy(own_stack)
    proposal = propose(own_stack, waiting, "awaiting the approver")
    _, _, held = in_review(own_stack)

    page = browser.run(
        {
            "name": "reader",
            "open_discrepancy_id": open_one.id,
            "waiting_discrepancy_id": waiting.id,
            "payment_id": held.id,
        }
    )

    reconciliation, review = page["pages"]["/reconciliation"], page["pages"]["/review"]
    assert reconciliation["status"] == review["status"] == 200
    states = {d["id"]: d["state"] for d in reconciliation["discrepancies"]}
    assert states[open_one.id] == "OPEN" and states[waiting.id] == "AWAITING APPROVAL", states
    assert held.id in review["payments"]
    for shown_page in (reconciliation, review):
        assert shown_page["forms"] == [], shown_page["forms"]
        offered = [b for b in shown_page["buttons"] if re.match(r"(Approve|Propose|Reject)", b)]
        assert offered == [], shown_page["buttons"]
    posts = page["posts"]
    assert {(p["from"], p["token"]) for p in posts} == {
        (role, token)
        for role in ("treasury", "approver", "reviewer")
        for token in ("none", "copied")
    }
    for post in posts:
        assert post["status"] == 403, post
        assert NOT_YOURS in post["alert"], post
    assert page["forged"]["status"] == 403 and NOT_YOURS in page["forged"]["alert"], page["forged"]

    still_open = discrepancy_now(own_stack, open_one)
    assert still_open.state == recon_pb.DISCREPANCY_STATE_OPEN and not still_open.adjustment_id
    still_waiting = discrepancy_now(own_stack, waiting)
    assert still_waiting.state == recon_pb.DISCREPANCY_STATE_OPEN
    assert still_waiting.adjustment_id == proposal.id
    assert "reconciliation.adjustment_approved" not in adjustment_events(own_stack, proposal.id)
    assert get_payment(own_stack, held.id).state == pay_pb.PAYMENT_STATE_IN_REVIEW
    assert unexpected(page["problems"], forbidden=True) == []


def configure_latency(stack, token, latency_ms):
    """Has the sandbox answer every operation on the card `latency_ms` late; 0 resets it to
    its test card number's behaviour."""
    config = sandbox_pb.SandboxCardConfig(latency_ms=latency_ms) if latency_ms else None
    sandbox(stack).ConfigureSandboxCard(
        sandbox_pb.ConfigureSandboxCardRequest(
            request_id=str(uuid.uuid4()), token=token, config=config
        ),
        timeout=10,
    )


def wait_for_file(path, process, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert process.poll() is None, "the browser ended before it was ready"
        assert time.monotonic() < deadline, f"{path} did not appear in {timeout_s} s"
        time.sleep(0.05)


def test_a_running_payment_page_follows_it_without_a_reload(own_stack, browser, tmp_path):
    """A payment with one card slowed by the sandbox is opened while AUTHORIZING; its page
    moves on to SUCCEEDED by itself: the page is never reloaded (a marker set in it survives,
    no new document loads), its live stream opens and, once the payment is settled, closes,
    and it ends showing the captures GetPayment has."""
    fast, slow = tokenize(own_stack, "4242424242424242"), tokenize(own_stack, SLOW_CARD)
    account = new_account()
    card_group = group_pb.CardGroup(
        billing_account_id=account,
        display_name="Dashboard live group",
        default_currency_code="USD",
        members=[member(fast, "fast card", 1), member(slow, "slow card", 2)],
        default_policy=group_pb.AllocationPolicy(
            strategy=group_pb.ALLOCATION_STRATEGY_WEIGHTED,
            weights=[
                group_pb.MemberWeight(token=fast, basis_points=6000),
                group_pb.MemberWeight(token=slow, basis_points=4000),
            ],
        ),
    )
    with own_stack.orchestrator("treasury") as channel:
        group_id = group_grpc.CardGroupServiceStub(channel).CreateCardGroup(
            group_pb.CreateCardGroupRequest(request_id=str(uuid.uuid4()), card_group=card_group),
            timeout=10,
        ).card_group.id
    ready, go = tmp_path / "ready", tmp_path / "go.json"
    started = {}

    def start_payment(process):
        # The browser is up with a page open: start the payment, and once it is authorizing
        # (the slow card keeps it there), tell the browser which one to open.
        wait_for_file(ready, process)
        payment = payments(own_stack).CreatePayment(
            pay_pb.CreatePaymentRequest(
                request_id=str(uuid.uuid4()),
                invoice=pay_pb.Invoice(id="INV-DASH-LIVE", amount=usd(2050)),
                card_group_id=group_id,
            ),
            timeout=30,
        ).payment
        started["payment"] = payment
        deadline = time.monotonic() + 10
        while get_payment(own_stack, payment.id).state != pay_pb.PAYMENT_STATE_AUTHORIZING:
            assert time.monotonic() < deadline, get_payment(own_stack, payment.id)
            time.sleep(0.02)
        (tmp_path / "go.tmp").write_text(json.dumps({"payment_id": payment.id}))
        (tmp_path / "go.tmp").rename(go)

    configure_latency(own_stack, slow, SLOW_CARD_LATENCY_MS)
    try:
        page = browser.run(
            {"name": "live", "ready_file": str(ready), "go_file": str(go)},
            while_running=start_payment,
        )
    finally:
        configure_latency(own_stack, slow, 0)

    payment_id = started["payment"].id
    assert page["status"] == 200 and page["url"].endswith(f"/payments/{payment_id}")
    # Opened while authorizing, then on to SUCCEEDED in place.
    assert page["states"][0] == "AUTHORIZING", page["states"]
    assert page["states"][-1] == "SUCCEEDED", page["states"]
    assert set(page["states"]) <= {"AUTHORIZING", "CAPTURING", "SUCCEEDED"}, page["states"]
    assert page["marker"] == 1 and page["navigations"] == 0, page
    assert "open" in page["liveStates"] and page["liveStates"][-1] == "closed", page["liveStates"]
    done = get_payment(own_stack, payment_id)
    assert done.state == pay_pb.PAYMENT_STATE_SUCCEEDED, done.summary
    assert [(leg["last4"], leg["captured"], leg["state"]) for leg in page["shown"]["legs"]] == [
        (leg.last4, shown(leg.captured), "CAPTURED") for leg in done.legs
    ]
    assert page["shown"]["captured"] == "20.50 USD"
    assert unexpected(page["problems"]) == []


def test_filters_replace_the_results_without_a_reload(own_stack, browser):
    """On the payments page, choosing a state replaces #results in place (a marker set in the
    page survives, no new document loads) with ListPayments' payments in that state, and the
    URL carries the filter; an invoice typed and filtered gives that invoice's payment; the
    back button brings the previous results back, still without a reload."""
    invoice = f"INV-DASH-FILTER-{uuid.uuid4().hex[:8]}"
    paid = pay(own_stack, group_in(own_stack, new_account()), invoice=invoice)
    assert paid.state == pay_pb.PAYMENT_STATE_SUCCEEDED, paid.summary
    _, _, held = in_review(own_stack)

    page = browser.run({"name": "filters", "invoice_id": invoice})

    stages = {stage["label"]: stage for stage in page["stages"]}
    assert list(stages) == [
        "payments-succeeded",
        "payments-in_review",
        "payments-invoice",
        "payments-back",
    ]
    assert page["navigations"] == 0
    for stage in page["stages"]:
        assert stage["marker"] == 1, stage
        assert stage["alert"] is None, stage
        assert stage["title"] == "Payments · Tandem"
    query = lambda stage: dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(stage["url"]).query))
    succeeded, reviewing = stages["payments-succeeded"], stages["payments-in_review"]
    assert query(succeeded) == {"state": "SUCCEEDED"}
    assert [r["id"] for r in succeeded["rows"]] == list_payment_ids(
        own_stack, state=pay_pb.PAYMENT_STATE_SUCCEEDED
    )
    assert paid.id in [r["id"] for r in succeeded["rows"]]
    assert {r["state"] for r in succeeded["rows"]} == {"SUCCEEDED"}
    assert query(reviewing) == {"state": "IN_REVIEW"}
    assert [r["id"] for r in reviewing["rows"]] == list_payment_ids(
        own_stack, state=pay_pb.PAYMENT_STATE_IN_REVIEW
    )
    assert held.id in [r["id"] for r in reviewing["rows"]]
    assert {r["state"] for r in reviewing["rows"]} == {"IN_REVIEW"}
    by_invoice = stages["payments-invoice"]
    assert query(by_invoice) == {"invoice_id": invoice}
    assert by_invoice["rows"] == [{"id": paid.id, "state": "SUCCEEDED"}]
    back = stages["payments-back"]
    assert query(back) == {}
    assert [r["id"] for r in back["rows"]] == list_payment_ids(own_stack)
    assert unexpected(page["problems"]) == []


def tls_request(stack, role=None, path="/payments"):
    """A GET of `path` over TLS that trusts the dev CA, with `role`'s certificate or none;
    returns the first bytes of the answer (b"" if the server closed without one)."""
    host, port = stack.dashboard_address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(stack.certs / "ca.pem"))
    if role is not None:
        context.load_cert_chain(stack.certs / f"{role}.pem", stack.certs / f"{role}.key")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname=host) as tls:
            request = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
            tls.sendall(request.encode())
            answer = b""
            while len(answer) < 4096:
                chunk = tls.recv(4096)
                if not chunk:
                    break
                answer += chunk
            return answer


def test_no_certificate_no_page_and_no_cross_site_post(own_stack, browser):
    """Without a client certificate there is no page: a TLS client that trusts the CA is cut
    off at the handshake or its first read, and so is a browser. A service's certificate gets a
    403, a person's the page. A page of another site that posts the reviewer's form (valid token,
    the reviewer's certificate, the browser's cross-site Origin) is refused; the same form from
    the dashboard's origin is accepted: the payment ends rejected as that post said, not
    approved as the other site's did."""
    with pytest.raises((ssl.SSLError, ConnectionError)) as refused:
        answer = tls_request(own_stack)
        if not answer:
            raise ConnectionError("closed without an answer")
        pytest.fail(f"the dashboard answered a client without a certificate: {answer[:200]!r}")
    assert not isinstance(refused.value, ssl.SSLCertVerificationError), refused.value
    service = tls_request(own_stack, "tokenizer")
    assert service.startswith(b"HTTP/1.1 403"), service[:200]
    assert b"not a person's" in service
    person = tls_request(own_stack, "reader")
    assert person.startswith(b"HTTP/1.1 200"), person[:200]

    _, _, held = in_review(own_stack)
    page = browser.run({"name": "cross-site", "payment_id": held.id})

    assert page["bare"]["status"] is None and "net::ERR_" in page["bare"]["error"], page["bare"]
    cross = page["crossSitePost"]
    assert (cross["status"], cross["origin"]) == (403, "https://evil.example"), cross
    assert NOT_FROM_HERE in cross["alert"], cross
    assert page["sameOrigin"] == {"status": 303, "location": "/review?notice=reviewed"}
    done = settled(own_stack, held.id)
    assert done.state == pay_pb.PAYMENT_STATE_FAILED, done.summary
    assert done.review.verdict == pay_pb.REVIEW_VERDICT_REJECT
    assert done.review.note == "rejected by the same-origin control"
    assert unexpected(page["problems"], forbidden=True) == []


def card_number_patterns():
    lines = CARD_NUMBERS.read_text().splitlines()
    return [re.compile(line) for line in lines if line.strip() and not line.startswith("#")]


def test_no_page_or_response_holds_a_card_number(own_stack, browser):
    """Every person visits every page of the navigation (and a card group's, a webhook
    endpoint's and a payment's with its deliveries): each says who is signed in; the keys are
    the admin's alone, the treasury reads every other page. Then every page saved, every
    response the browser got (pages, the script, fetched results, event streams) and the
    browser's output, of this test and of the module's earlier ones, is scanned for the test
    card numbers of tests/test-card-numbers.txt (spaces and dashes removed, as
    scripts/scan-logs.sh does); every page visited left a screenshot."""
    receiver = Receiver()
    try:
        endpoint = create_endpoint(own_stack, receiver.url).endpoint
        paid = pay(own_stack, group_in(own_stack, new_account()), invoice="INV-DASH-TOUR")
        receiver.wait_for(
            lambda requests: any(b"payment.succeeded" in r.body for r in requests),
            "payment.succeeded delivery",
        )
        page = browser.run(
            {
                "name": "tour",
                "roles": list(PEOPLE),
                "paths": NAVIGATION + [f"/payments/{paid.id}", f"/webhooks/{endpoint.id}"],
            }
        )
    finally:
        receiver.close()

    for role, name in PEOPLE.items():
        for path, seen in page[role]["pages"].items():
            assert seen["who"] == f"Signed in as {role}/{name}", (role, path, seen)
            assert seen["navigation"] == NAVIGATION, (role, path, seen)
            assert seen["status"] in (200, 403), (role, path, seen)
            if seen["status"] == 403:
                assert seen["heading"] == "Forbidden" and seen["alert"], (role, path, seen)
        assert (page[role]["pages"]["/keys"]["status"] == 200) == (role == "admin"), role
        # The spend page's default account may have spent nothing this year; what its page
        # then logs is test_spend_of_days_without_spend_shows_so_without_errors's to report.
        problems = [p for p in page[role]["problems"] if "the table has no amounts" not in p]
        assert unexpected(problems, forbidden=True) == [], role
    treasury = page["treasury"]["pages"]
    assert {path for path, seen in treasury.items() if seen["status"] != 200} == {"/keys"}
    assert any(path.startswith("/card-groups/") for path in treasury), list(treasury)
    assert treasury[f"/payments/{paid.id}"]["heading"] == f"Payment {paid.id}"

    patterns = card_number_patterns()
    assert any(p.search("4242424242424242") for p in patterns)
    files = [f for f in browser.work.rglob("*") if f.is_file()]
    dumps = [f for f in files if browser.dumps in f.parents]
    assert len(dumps) >= len(browser.visits) > 0
    kinds = {f.suffix for f in dumps} | {"".join(f.suffixes[-2:]) for f in dumps}
    assert {".html", ".js", ".sse.txt"} <= kinds, kinds
    texts = {f: f.read_bytes().decode("utf-8", "replace") for f in files}
    # The pages do show cards, by their last four digits: the scan reads pages about cards.
    assert any("····4242" in text for text in texts.values())
    leaks = [
        str(f)
        for f, text in texts.items()
        if any(p.search(text.replace(" ", "").replace("-", "")) for p in patterns)
    ]
    assert leaks == [], f"test card numbers in what the dashboard sent: {leaks}"

    screenshots = {pathlib.Path(v["screenshot"]) for v in browser.visits}
    assert len(screenshots) == len(browser.visits), "two visits share a screenshot"
    for screenshot in screenshots:
        assert screenshot.parent == SCREENSHOTS
        assert screenshot.read_bytes()[:8] == PNG_MAGIC, screenshot
