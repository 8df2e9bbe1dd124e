"""Reconciliation through a Python client generated from proto/: a paid invoice's captures
match the sandbox acquirer's settlement file record for record; an amount the sandbox then
corrupts is found as one AMOUNT_MISMATCH discrepancy of one minor unit, corrected by an
adjustment the treasury proposes and only a second identity, the approver, may approve (four
eyes), after which the day's run counts it resolved; a malformed day is INVALID_ARGUMENT naming
`settlement_date`.

A run counts every capture and refund of the day, so this module pays on a stack of its own
(`own_stack`): the shared stack also holds charges other modules made on the vault directly,
which its ledger never booked."""

import datetime
import uuid

import grpc
import pytest

from tandem.orchestrator.v1 import card_group_service_pb2 as group_pb
from tandem.orchestrator.v1 import card_group_service_pb2_grpc as group_grpc
from tandem.orchestrator.v1 import ledger_service_pb2 as ledger_pb
from tandem.orchestrator.v1 import ledger_service_pb2_grpc as ledger_grpc
from tandem.orchestrator.v1 import payment_service_pb2 as pay_pb
from tandem.orchestrator.v1 import payment_service_pb2_grpc as pay_grpc
from tandem.orchestrator.v1 import reconciliation_service_pb2 as recon_pb
from tandem.orchestrator.v1 import reconciliation_service_pb2_grpc as recon_grpc
from tandem.type.v1 import money_pb2
from tandem.vault.v1 import sandbox_service_pb2 as sandbox_pb
from tandem.vault.v1 import sandbox_service_pb2_grpc as sandbox_grpc
from test_payments import details, tokenize, usd

# `tandemctl dev` names every identity "dev" but the approver, a second person.
DEV_NAME, APPROVER_NAME = "dev", "dev-approver"

# The counts of a run that are neither records nor matches: each must be 0 on a clean day.
DISCREPANCY_COUNTS = (
    "missing_in_ledger",
    "missing_at_processor",
    "amount_mismatch",
    "currency_mismatch",
    "duplicate_settlement",
    "pending",
    "resolved",
)


def recon(stack, role="treasury"):
    return recon_grpc.ReconciliationServiceStub(stack.orchestrator(role))


def sandbox(stack):
    return sandbox_grpc.SandboxServiceStub(stack.channel("admin"))


def today():
    """The settlement day of what is paid now: the UTC date."""
    return datetime.datetime.now(datetime.timezone.utc).date().isoformat()


def run(stack, day, role="treasury"):
    """Runs the sandbox's reconciliation of `day`; returns the run."""
    return recon(stack, role).RunReconciliation(
        recon_pb.RunReconciliationRequest(
            request_id=str(uuid.uuid4()), processor="sandbox", settlement_date=day
        ),
        timeout=30,
    ).run


def counts(reconciliation_run):
    return {name: getattr(reconciliation_run, name) for name in DISCREPANCY_COUNTS}


def discrepancies(stack, run_id, state=recon_pb.DISCREPANCY_STATE_UNSPECIFIED):
    """Every discrepancy of the run's day, one a page, following the page tokens; returns
    them and how many pages it took."""
    stub, found, token, pages = recon(stack, "reader"), [], "", 0
    for _ in range(100):
        page = stub.ListDiscrepancies(
            recon_pb.ListDiscrepanciesRequest(
                page_size=1, page_token=token, run_id=run_id, state=state
            ),
            timeout=10,
        )
        pages += 1
        assert len(page.discrepancies) <= 1
        found += page.discrepancies
        token = page.next_page_token
        if not token:
            return found, pages
        assert page.discrepancies, "a page with a token after it is not empty"
    raise AssertionError("ListDiscrepancies did not end in 100 pages")


def capture_records(stack, day):
    """The sandbox's capture records of `day`, in its order."""
    return list(
        sandbox(stack).ListSettlementRecords(
            sandbox_pb.ListSettlementRecordsRequest(
                page_size=1000,
                start_date=day,
                end_date=day,
                type=sandbox_pb.SETTLEMENT_RECORD_TYPE_CAPTURE,
            ),
            timeout=10,
        ).records
    )


def change_amount(stack, day, record, amount_minor):
    """Has the sandbox settle `record` at `amount_minor`; returns the response."""
    return sandbox(stack).CorruptSettlementRecord(
        sandbox_pb.CorruptSettlementRecordRequest(
            request_id=str(uuid.uuid4()),
            settlement_date=day,
            record_id=record.id,
            corruption=sandbox_pb.SETTLEMENT_CORRUPTION_CHANGE_AMOUNT,
            amount_minor=amount_minor,
        ),
        timeout=10,
    )


def propose(stack, discrepancy, reason):
    correction = discrepancy.correction
    return recon(stack, "treasury").ProposeAdjustment(
        recon_pb.ProposeAdjustmentRequest(
            request_id=str(uuid.uuid4()),
            discrepancy_id=discrepancy.id,
            amount=money_pb2.Money(
                currency_code=correction.currency_code,
                minor_units=abs(correction.minor_units),
            ),
            reason=reason,
        ),
        timeout=10,
    ).adjustment


def funding_source(stack, token):
    (funding,) = [
        b
        for b in ledger_grpc.LedgerServiceStub(stack.orchestrator("treasury")).GetBalances(
            ledger_pb.GetBalancesRequest(card_token=token), timeout=10
        ).balances
        if b.code == ledger_pb.LEDGER_ACCOUNT_CODE_FUNDING_SOURCE
    ]
    return funding


@pytest.fixture(scope="module")
def paid(own_stack):
    """One payment of 20.50 USD from a 60/40 group of two cards (12.30 and 8.20): two
    captures, each a settlement record of today."""
    a = tokenize(own_stack, "4242424242424242")
    b = tokenize(own_stack, "5555555555554444")
    card_group = group_pb.CardGroup(
        billing_account_id="acct-recon",
        display_name="Reconciliation suite group",
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
        group = group_grpc.CardGroupServiceStub(channel).CreateCardGroup(
            group_pb.CreateCardGroupRequest(request_id=str(uuid.uuid4()), card_group=card_group)
        ).card_group
    with own_stack.orchestrator("payer") as channel:
        payment = pay_grpc.PaymentServiceStub(channel).CreatePayment(
            pay_pb.CreatePaymentRequest(
                request_id=str(uuid.uuid4()),
                invoice=pay_pb.Invoice(
                    id="INV-RECON", amount=usd(2050), description="Reconciliation invoice"
                ),
                card_group_id=group.id,
                wait=True,
                wait_timeout_ms=20000,
            ),
            timeout=30,
        ).payment
    assert payment.state == pay_pb.PAYMENT_STATE_SUCCEEDED, payment.summary
    # The day the sandbox settled them (the stack holds no other captures): today, unless the
    # payment ran past midnight (UTC).
    records = sandbox(own_stack).ListSettlementRecords(
        sandbox_pb.ListSettlementRecordsRequest(page_size=1000), timeout=10
    ).records
    assert len(records) == 2, records
    (day,) = {r.settlement_date for r in records}
    assert datetime.date.fromisoformat(today()) - datetime.date.fromisoformat(day) in (
        datetime.timedelta(0),
        datetime.timedelta(days=1),
    ), day
    return {"payment": payment, "day": day}


def test_a_paid_day_reconciles_with_every_record_matched(own_stack, paid):
    """Both captures are in today's settlement file and match the ledger; nothing else is
    counted or listed, the same day run again gives the same counts, and the run reads back."""
    day = paid["day"]
    records = capture_records(own_stack, day)
    assert sorted(r.amount.minor_units for r in records) == [820, 1230], records

    first = run(own_stack, day)
    assert first.id.startswith("rcn_")
    assert (first.processor, first.settlement_date) == ("sandbox", day)
    assert (first.actor.name, first.actor.role) == (DEV_NAME, "treasury")
    assert first.records == first.matched == 2, first
    assert counts(first) == dict.fromkeys(DISCREPANCY_COUNTS, 0), first
    assert first.start_time.ToDatetime() <= first.finish_time.ToDatetime()
    assert discrepancies(own_stack, first.id) == ([], 1)

    again = run(own_stack, day)
    assert again.id != first.id
    assert (again.records, again.matched, counts(again)) == (
        first.records,
        first.matched,
        counts(first),
    )
    read = recon(own_stack, "reader").GetReconciliationRun(
        recon_pb.GetReconciliationRunRequest(run_id=first.id), timeout=10
    ).run
    assert read == first


def test_a_changed_amount_is_adjusted_with_four_eyes(own_stack, paid):
    """The sandbox settles one capture a minor unit more than the ledger booked: the next run
    finds exactly one open AMOUNT_MISMATCH with a correction of +1 USD; the treasury proposes
    the adjustment but may not approve it, the approver does, the card's funding source is
    debited the unit, and a further run counts the discrepancy resolved. A second corruption
    (one unit less) makes the day's list two pages long, oldest first; its proposal is
    rejected, which leaves it open."""
    day, payment = paid["day"], paid["payment"]
    records = capture_records(own_stack, day)
    record = records[0]
    amount = record.amount.minor_units
    corrupted = change_amount(own_stack, day, record, amount + 1)
    assert corrupted.original == record
    assert corrupted.corrupted.id == record.id
    assert corrupted.corrupted.amount == usd(amount + 1)

    found_run = run(own_stack, day)
    assert (found_run.records, found_run.matched, found_run.amount_mismatch) == (2, 1, 1)
    assert counts(found_run) == dict(dict.fromkeys(DISCREPANCY_COUNTS, 0), amount_mismatch=1)
    (found,), pages = discrepancies(own_stack, found_run.id)
    assert pages == 1
    assert discrepancies(own_stack, found_run.id, recon_pb.DISCREPANCY_STATE_OPEN)[0] == [found]
    assert found.id.startswith("dsc_")
    # `class` is a Python keyword: the field is read by name.
    assert getattr(found, "class") == recon_pb.DISCREPANCY_CLASS_AMOUNT_MISMATCH, found
    assert found.state == recon_pb.DISCREPANCY_STATE_OPEN
    assert (found.processor, found.settlement_date) == ("sandbox", day)
    assert found.type == recon_pb.SETTLEMENT_TYPE_CAPTURE
    assert found.record_id == record.id
    assert found.processor_reference == record.authorization_reference
    assert found.settled_amount == usd(amount + 1)
    assert found.ledger_amount == usd(amount)
    assert found.correction == usd(1)
    assert found.payment_id == payment.id
    assert found.leg_id.startswith(f"{payment.id}/leg/"), found.leg_id
    assert found.first_run_id == found.last_run_id == found_run.id
    assert found.adjustment_id == ""

    proposed = propose(own_stack, found, "the acquirer settled a cent more")
    assert proposed.id.startswith("adj_")
    assert proposed.state == recon_pb.ADJUSTMENT_STATE_PROPOSED
    assert (proposed.discrepancy_id, proposed.amount) == (found.id, usd(1))
    assert (proposed.proposer.name, proposed.proposer.role) == (DEV_NAME, "treasury")
    assert not proposed.HasField("decider") and not proposed.ledger_entry_ids

    approve = lambda: recon_pb.ApproveAdjustmentRequest(
        request_id=str(uuid.uuid4()), adjustment_id=proposed.id
    )
    with pytest.raises(grpc.RpcError) as error:
        recon(own_stack, "treasury").ApproveAdjustment(approve(), timeout=10)
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, error.value
    assert details(error.value)[0] == "ROLE_NOT_ALLOWED", error.value

    leg = payment.legs[int(found.leg_id.rsplit("/", 1)[1]) - 1]
    before = funding_source(own_stack, leg.token).debits_posted
    approved = recon(own_stack, "approver").ApproveAdjustment(approve(), timeout=10).adjustment
    assert approved.state == recon_pb.ADJUSTMENT_STATE_APPROVED, approved
    assert (approved.decider.name, approved.decider.role) == (APPROVER_NAME, "approver")
    assert approved.proposer == proposed.proposer
    assert approved.HasField("decide_time")
    assert approved.ledger_entry_ids
    assert all(
        i.startswith(f"{found.id}/adjustment/{approved.id}/") for i in approved.ledger_entry_ids
    ), approved.ledger_entry_ids
    # The card paid the acquirer a unit more than the ledger said: its funding source shows it.
    after = funding_source(own_stack, leg.token).debits_posted
    assert after == usd(before.minor_units + 1), (before, after)

    resolved_run = run(own_stack, day)
    assert (resolved_run.amount_mismatch, resolved_run.resolved) == (1, 1), resolved_run
    assert (resolved_run.records, resolved_run.matched) == (2, 1)
    (resolved,), _ = discrepancies(own_stack, resolved_run.id)
    assert resolved.id == found.id
    assert resolved.state == recon_pb.DISCREPANCY_STATE_RESOLVED
    assert resolved.adjustment_id == approved.id
    assert resolved.last_run_id == resolved_run.id
    assert discrepancies(own_stack, resolved_run.id, recon_pb.DISCREPANCY_STATE_OPEN) == ([], 1)

    # A second record settled a unit short: two discrepancies, a page each, oldest first.
    other = records[1]
    change_amount(own_stack, day, other, other.amount.minor_units - 1)
    second_run = run(own_stack, day)
    assert (second_run.amount_mismatch, second_run.resolved, second_run.matched) == (2, 1, 0)
    both, pages = discrepancies(own_stack, second_run.id)
    assert pages == 2
    assert [d.id for d in both][0] == found.id
    short = both[1]
    assert short.record_id == other.id and short.correction == usd(-1), short
    assert discrepancies(own_stack, second_run.id, recon_pb.DISCREPANCY_STATE_OPEN)[0] == [short]
    # Proposed (as |-1|) and rejected: nothing booked, the discrepancy open and free again.
    proposal = propose(own_stack, short, "the acquirer settled a cent less")
    assert proposal.amount == usd(1)
    rejected = recon(own_stack, "approver").RejectAdjustment(
        recon_pb.RejectAdjustmentRequest(
            request_id=str(uuid.uuid4()), adjustment_id=proposal.id, reason="ask the acquirer"
        ),
        timeout=10,
    ).adjustment
    assert rejected.state == recon_pb.ADJUSTMENT_STATE_REJECTED
    assert rejected.decision_reason == "ask the acquirer" and not rejected.ledger_entry_ids
    (still,), _ = discrepancies(own_stack, second_run.id, recon_pb.DISCREPANCY_STATE_OPEN)
    assert still.id == short.id and still.adjustment_id == ""


@pytest.mark.parametrize(
    "processor, day, field",
    [
        ("sandbox", "2026-02-30", "settlement_date"),
        (
            "sandbox",
            (
                datetime.datetime.now(datetime.timezone.utc).date() + datetime.timedelta(days=2)
            ).isoformat(),
            "settlement_date",
        ),
        ("stripe", "2020-01-15", "processor"),
    ],
)
def test_a_bad_run_names_the_field(own_stack, processor, day, field):
    """A day that does not exist or lies in the future, or a processor the vault does not
    have, is INVALID_ARGUMENT with a BadRequest naming the field."""
    with pytest.raises(grpc.RpcError) as error:
        recon(own_stack).RunReconciliation(
            recon_pb.RunReconciliationRequest(
                request_id=str(uuid.uuid4()), processor=processor, settlement_date=day
            ),
            timeout=10,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT, error.value
    assert details(error.value)[1] == [field], error.value


def test_only_the_treasury_runs_a_reconciliation(own_stack):
    """A reader or an approver may not run a reconciliation; a payer may not list."""
    for role in ("reader", "approver"):
        with pytest.raises(grpc.RpcError) as error:
            run(own_stack, today(), role=role)
        assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED, role
        assert details(error.value)[0] == "ROLE_NOT_ALLOWED", error.value
    with pytest.raises(grpc.RpcError) as error:
        recon(own_stack, "payer").ListDiscrepancies(
            recon_pb.ListDiscrepanciesRequest(processor="sandbox"), timeout=10
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
