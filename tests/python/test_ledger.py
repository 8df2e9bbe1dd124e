"""The ledger and the event feed through a Python client generated from proto/, and through
tandemctl: a payment split over two cards books into the ledger, and the treasury reads it back
as balances, a spend report, entries and an export (CSV and JSON lines, resumable by cursor);
the feed lists the payment's and the group's events with who caused them, and resumes from any
event's cursor; notes are append-only and idempotent; a payer reads neither the ledger nor the
feed."""

import csv
import datetime
import io
import json
import queue
import re
import signal
import subprocess
import threading
import time
import uuid

import grpc
import pytest
from google.protobuf import timestamp_pb2

from conftest import TANDEMCTL, orchestratorctl
from tandem.orchestrator.v1 import card_group_service_pb2 as group_pb
from tandem.orchestrator.v1 import card_group_service_pb2_grpc as group_grpc
from tandem.orchestrator.v1 import ledger_service_pb2 as ledger_pb
from tandem.orchestrator.v1 import ledger_service_pb2_grpc as ledger_grpc
from tandem.orchestrator.v1 import payment_service_pb2 as pay_pb
from tandem.orchestrator.v1 import payment_service_pb2_grpc as pay_grpc
from test_payments import details, tokenize, usd

# What the dev stack's certificates are called (`tandemctl dev` names every identity "dev").
DEV_NAME = "dev"


def ledger(stack, role="treasury"):
    return ledger_grpc.LedgerServiceStub(stack.orchestrator(role))


def payments(stack, role="reader"):
    return pay_grpc.PaymentServiceStub(stack.orchestrator(role))


def timestamp(moment):
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


@pytest.fixture(scope="module")
def paid(vault):
    """A 60/40 group of its own billing account and cost center, and one payment of 20.50 USD
    from it (12.30 on card A, 8.20 on card B), created with a note."""
    a = tokenize(vault, "4242424242424242")
    b = tokenize(vault, "5555555555554444")
    suffix = uuid.uuid4().hex[:8]
    account, cost_center = f"acct-ledger-{suffix}", f"cc-ledger-{suffix}"
    card_group = group_pb.CardGroup(
        billing_account_id=account,
        display_name="Ledger suite group",
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
    with vault.orchestrator("treasury") as channel:
        group = group_grpc.CardGroupServiceStub(channel).CreateCardGroup(
            group_pb.CreateCardGroupRequest(request_id=str(uuid.uuid4()), card_group=card_group)
        ).card_group
    before = utc_now()
    with vault.orchestrator("payer") as channel:
        payment = pay_grpc.PaymentServiceStub(channel).CreatePayment(
            pay_pb.CreatePaymentRequest(
                request_id=str(uuid.uuid4()),
                invoice=pay_pb.Invoice(
                    id=f"INV-LEDGER-{suffix}",
                    amount=usd(2050),
                    description="Ledger suite invoice",
                    cost_center=cost_center,
                ),
                card_group_id=group.id,
                wait=True,
                wait_timeout_ms=20000,
                note="paid on the treasurer's instruction",
            ),
            timeout=30,
        ).payment
    assert payment.state == pay_pb.PAYMENT_STATE_SUCCEEDED, payment.summary
    return {
        "group": group,
        "payment": payment,
        "cards": (a, b),
        "account": account,
        "cost_center": cost_center,
        # Every entry of the payment is booked within [start, the end of the call).
        "start": before - datetime.timedelta(seconds=5),
    }


def captured_by_card(payment):
    """What each card captured, in minor units, from the payment's legs."""
    by_card = {}
    for leg in payment.legs:
        if leg.state == pay_pb.LEG_STATE_CAPTURED:
            by_card[leg.token] = by_card.get(leg.token, 0) + leg.amount.minor_units
    return by_card


def test_payment_is_created_with_its_note_and_creator(paid):
    payment = paid["payment"]
    assert payment.creator.name == DEV_NAME and payment.creator.role == "payer"
    assert [note.text for note in payment.notes] == ["paid on the treasurer's instruction"]
    assert payment.notes[0].author.role == "payer"
    assert captured_by_card(payment) == {paid["cards"][0]: 1230, paid["cards"][1]: 820}
    assert payment.captured.minor_units == 2050


def test_balances_match_the_captures(vault, paid):
    """Each card's funding source has posted debits equal to what the card captured, nothing
    left pending; the billing account's receivable is credited the whole payment."""
    for token, captured in captured_by_card(paid["payment"]).items():
        balances = ledger(vault).GetBalances(
            ledger_pb.GetBalancesRequest(card_token=token), timeout=10
        ).balances
        assert balances, token
        (funding,) = [b for b in balances if b.code == ledger_pb.LEDGER_ACCOUNT_CODE_FUNDING_SOURCE]
        assert funding.card_token == token
        assert funding.account_id == f"funding_source:{token}:USD"
        # The same cards may pay in other tests of the session, so at least this payment's.
        assert funding.debits_posted.currency_code == "USD"
        assert funding.debits_posted.minor_units >= captured
        assert funding.debits_pending.minor_units == 0
    (receivable,) = ledger(vault).GetBalances(
        ledger_pb.GetBalancesRequest(billing_account_id=paid["account"]), timeout=10
    ).balances
    assert receivable.code == ledger_pb.LEDGER_ACCOUNT_CODE_RECEIVABLE
    assert receivable.billing_account_id == paid["account"]
    assert receivable.credits_posted == usd(2050)
    assert receivable.credits_pending.minor_units == 0
    # The reader role reads the ledger too; a balance of the cost center has the payment.
    by_cost_center = ledger(vault, "reader").GetBalances(
        ledger_pb.GetBalancesRequest(cost_center=paid["cost_center"]), timeout=10
    ).balances
    assert by_cost_center


def test_spend_report_covers_today(vault, paid):
    """Over a range of days around today, the account's spend by card is what each card
    captured, and the cards' net adds up to the payment's capture and to the total."""
    today = utc_now().date()
    report = ledger(vault).GetSpendReport(
        ledger_pb.GetSpendReportRequest(
            billing_account_id=paid["account"],
            # A day either side: the payment may have been made just before midnight (UTC).
            start_date=(today - datetime.timedelta(days=1)).isoformat(),
            end_date=(today + datetime.timedelta(days=1)).isoformat(),
        ),
        timeout=10,
    )
    payment = paid["payment"]
    by_card = {line.card_token: line for line in report.by_card}
    assert {token: line.net.minor_units for token, line in by_card.items()} == captured_by_card(
        payment
    )
    assert all(line.refunded.minor_units == 0 for line in report.by_card)
    assert sum(line.net.minor_units for line in report.by_card) == payment.captured.minor_units
    (total,) = report.totals
    assert (total.currency_code, total.captured, total.net) == ("USD", usd(2050), usd(2050))
    assert [line.cost_center for line in report.by_cost_center] == [paid["cost_center"]]
    assert sum(line.net.minor_units for line in report.by_month) == 2050


def export(stack, paid, fmt, end, **fields):
    """Reads an export of the payment's billing account up to `end` to its last chunk: the
    data and the entries the chunks counted."""
    request = ledger_pb.ExportLedgerRequest(
        format=fmt,
        start_time=timestamp(paid["start"]),
        end_time=timestamp(end),
        billing_account_id=paid["account"],
        **fields,
    )
    data, entries = b"", 0
    for chunk in ledger(stack).ExportLedger(request, timeout=30):
        assert chunk.cursor
        data += chunk.data
        entries += chunk.entries
    return data, entries


def test_export_csv_and_json_lines_agree(vault, paid):
    """The same range exports as CSV (header first) and as JSON lines with the same entries,
    which are the payment's as ListEntries pages them; an export cut after its first chunk
    and resumed with that chunk's cursor equals the uninterrupted one."""
    payment = paid["payment"]
    end = utc_now()
    csv_data, csv_entries = export(vault, paid, ledger_pb.EXPORT_FORMAT_CSV, end)
    rows = list(csv.reader(io.StringIO(csv_data.decode())))
    header, body = rows[0], rows[1:]
    assert "id" in header and "payment_id" in header, header
    assert len(body) == csv_entries > 0
    assert {row[header.index("payment_id")] for row in body} == {payment.id}
    # Each entry carries its payment's notes.
    notes = [json.loads(row[header.index("payment_notes")]) for row in body]
    assert all(
        [note["text"] for note in row_notes][:1] == ["paid on the treasurer's instruction"]
        for row_notes in notes
    ), notes

    jsonl_data, jsonl_entries = export(vault, paid, ledger_pb.EXPORT_FORMAT_JSON_LINES, end)
    objects = [json.loads(line) for line in jsonl_data.decode().splitlines()]
    assert len(objects) == jsonl_entries == csv_entries
    assert [o["id"] for o in objects] == [row[header.index("id")] for row in body]
    assert set(objects[0]) == set(header)

    # ListEntries of the payment, one entry a page, follows its tokens to the same entries.
    stub, ids, token = ledger(vault), [], ""
    for _ in range(100):
        page = stub.ListEntries(
            ledger_pb.ListEntriesRequest(payment_id=payment.id, page_size=1, page_token=token),
            timeout=10,
        )
        ids += [entry.id for entry in page.entries]
        assert all(entry.payment_id == payment.id for entry in page.entries)
        token = page.next_page_token
        if not token:
            break
    assert ids == [o["id"] for o in objects]

    # One entry a chunk, cut after the first chunk, resumed from its cursor.
    stream = ledger(vault).ExportLedger(
        ledger_pb.ExportLedgerRequest(
            format=ledger_pb.EXPORT_FORMAT_CSV,
            start_time=timestamp(paid["start"]),
            end_time=timestamp(end),
            billing_account_id=paid["account"],
            chunk_entries=1,
        ),
        timeout=30,
    )
    first = next(stream)
    stream.cancel()
    assert first.entries == 1 and first.cursor
    rest, rest_entries = export(
        vault, paid, ledger_pb.EXPORT_FORMAT_CSV, end, cursor=first.cursor, chunk_entries=1
    )
    assert first.data + rest == csv_data
    assert rest_entries == csv_entries - 1


def all_events(stack, page_token="", page_size=200, event_types=()):
    """Pages the feed from `page_token` until it is caught up; every page but the last hands
    on the cursor of its last event (a page may hold fewer than `page_size` events when the
    server cuts it to fit its message size)."""
    stub, events = payments(stack, "treasury"), []
    for _ in range(1000):
        page = stub.ListEvents(
            pay_pb.ListEventsRequest(
                page_size=page_size, page_token=page_token, event_types=list(event_types)
            ),
            timeout=10,
        )
        events += page.events
        if not page.next_page_token:
            return events
        assert page.events and len(page.events) <= page_size
        assert page.next_page_token == page.events[-1].cursor
        page_token = page.next_page_token
    raise AssertionError("the feed did not catch up in 1000 pages")


def wait_for_event(stack, match, **paging):
    """The feed's events once one of them matches: an event is listed only once every
    transaction that could place one before it has ended, so it may lag its commit a little."""
    deadline = time.monotonic() + 15
    while True:
        events = all_events(stack, **paging)
        if any(match(event) for event in events) or time.monotonic() > deadline:
            return events
        time.sleep(0.2)


def test_event_feed_pages_with_cursors_and_actors(vault, paid):
    """The feed, paged to its end, holds the group's creation (by the treasury) and the
    payment's creation (by the payer), each with a cursor; resuming from a cursor lists
    exactly the events after it; a filter by type keeps only that type."""
    payment, group = paid["payment"], paid["group"]

    def created(event):
        return (
            event.type == "payment.created"
            and event.WhichOneof("subject") == "payment_event"
            and event.payment_event.payment.id == payment.id
        )

    events = wait_for_event(vault, created, page_size=50)
    assert all(event.cursor and event.id.startswith("evt_") for event in events)
    assert len({event.id for event in events}) == len(events), "no event twice"
    (payment_created,) = [e for e in events if created(e)]
    assert (payment_created.actor.name, payment_created.actor.role) == (DEV_NAME, "payer")
    assert payment_created.payment_event.type_name == "payment.created"
    assert payment_created.payment_event.actor == payment_created.actor
    (group_created,) = [
        e
        for e in events
        if e.WhichOneof("subject") == "card_group_event"
        and e.card_group_event.card_group.id == group.id
        and e.type == "card_group.created"
    ]
    assert (group_created.actor.name, group_created.actor.role) == (DEV_NAME, "treasury")
    assert events.index(group_created) < events.index(payment_created)
    mine = [
        e.type
        for e in events
        if e.WhichOneof("subject") == "payment_event" and e.payment_event.payment.id == payment.id
    ]
    assert mine[0] == "payment.created" and "payment.succeeded" in mine, mine

    # From a cursor: exactly what follows it (what commits meanwhile may come on top).
    position = events.index(payment_created)
    after = all_events(vault, page_token=payment_created.cursor)
    assert [e.id for e in after[: len(events) - position - 1]] == [
        e.id for e in events[position + 1 :]
    ]

    only = all_events(vault, event_types=["payment.created"])
    assert only and {e.type for e in only} == {"payment.created"}
    assert payment_created.id in {e.id for e in only}


def test_payer_reads_neither_ledger_nor_feed(vault, paid):
    token = paid["cards"][0]
    with pytest.raises(grpc.RpcError) as error:
        ledger(vault, "payer").GetBalances(ledger_pb.GetBalancesRequest(card_token=token))
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as error:
        payments(vault, "payer").ListEvents(pay_pb.ListEventsRequest())
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_ledger_refuses_bad_requests(vault, paid):
    """Two subjects for one balance, and an export range still being written, are refused."""
    with pytest.raises(grpc.RpcError) as error:
        ledger(vault).GetBalances(
            ledger_pb.GetBalancesRequest(card_token=paid["cards"][0], cost_center="x")
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error.value)[1], "the bad field is named"
    with pytest.raises(grpc.RpcError) as error:
        list(ledger(vault).ExportLedger(ledger_pb.ExportLedgerRequest(
            format=ledger_pb.EXPORT_FORMAT_CSV, start_time=timestamp(paid["start"])
        ), timeout=10))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_notes_are_appended_once_and_shown(vault, paid):
    """AddPaymentNote appends a note by its caller, once per request id; GetPayment shows the
    notes oldest first and the feed a payment.note_added event by the note's author."""
    payment = paid["payment"]
    request = pay_pb.AddPaymentNoteRequest(
        request_id=str(uuid.uuid4()), payment_id=payment.id, text="confirmed with the bank"
    )
    added = payments(vault, "treasury").AddPaymentNote(request, timeout=10)
    assert added.note.text == "confirmed with the bank"
    assert (added.note.author.name, added.note.author.role) == (DEV_NAME, "treasury")
    again = payments(vault, "treasury").AddPaymentNote(request, timeout=10)
    assert again.note == added.note
    read = payments(vault).GetPayment(pay_pb.GetPaymentRequest(payment_id=payment.id)).payment
    assert [note.text for note in read.notes] == [
        "paid on the treasurer's instruction",
        "confirmed with the bank",
    ]
    assert read.notes[1] == added.note

    def note_added(event):
        return (
            event.type == "payment.note_added"
            and event.payment_event.payment.id == payment.id
        )

    events = wait_for_event(
        vault,
        lambda e: note_added(e) and e.actor.role == "treasury",
        event_types=["payment.note_added"],
    )
    # The note given to CreatePayment is the first, by the payer; the retry added none.
    assert [(e.actor.name, e.actor.role) for e in events if note_added(e)] == [
        (DEV_NAME, "payer"),
        (DEV_NAME, "treasury"),
    ]
    with pytest.raises(grpc.RpcError) as error:
        payments(vault, "reader").AddPaymentNote(
            pay_pb.AddPaymentNoteRequest(
                request_id=str(uuid.uuid4()), payment_id=payment.id, text="reader note"
            )
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED


def tandemctl(stack, *args):
    """Runs a tandemctl orchestrator command against the dev stack; returns (stdout, stderr)."""
    return orchestratorctl(stack, *args, timeout=60)


def test_tandemctl_ledger_events_and_notes(vault, paid, tmp_path):
    """`tandemctl ledger balances/spend/entries/export`, `events` and `payments note` read and
    write what the API does, in the table for people and in CSV and JSON for machines."""
    payment, account = paid["payment"], paid["account"]
    a, b = paid["cards"]

    out, _ = tandemctl(vault, "ledger", "balances", "--billing-account", account)
    assert re.search(
        rf"^receivable:{account}:USD\s+receivable\s+0\.00 USD\s+20\.50 USD\s+0\.00 USD\s+0\.00 USD$",
        out,
        re.M,
    ), out
    out, _ = tandemctl(
        vault, "ledger", "balances", "--billing-account", account, "--format", "json"
    )
    (line,) = [json.loads(line) for line in out.splitlines()]
    assert line["credits_posted"] == {"currency_code": "USD", "minor_units": 2050}, line

    today = utc_now().date()
    out, _ = tandemctl(
        vault, "ledger", "spend", "--billing-account", account,
        "--start-date", (today - datetime.timedelta(days=1)).isoformat(),
        "--end-date", (today + datetime.timedelta(days=1)).isoformat(),
        "--format", "csv",
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert {r["card_token"]: r["net"] for r in rows if r["by"] == "card"} == {
        a: "12.30",
        b: "8.20",
    }, out
    assert [(r["currency_code"], r["net"]) for r in rows if r["by"] == "total"] == [
        ("USD", "20.50")
    ], out

    out, err = tandemctl(
        vault, "ledger", "entries", "--payment", payment.id, "--page-size", "1", "--all",
        "--format", "csv",
    )
    entries = list(csv.DictReader(io.StringIO(out)))
    assert entries and {e["payment_id"] for e in entries} == {payment.id}, out
    assert "more:" not in err
    out, err = tandemctl(vault, "ledger", "entries", "--payment", payment.id, "--page-size", "1")
    assert len(out.splitlines()) == 2 and "more: --page-token " in err, (out, err)

    start = paid["start"].isoformat()
    end = utc_now().isoformat()
    target = tmp_path / "ledger.csv"
    _, err = tandemctl(
        vault, "ledger", "export", "--start", start, "--end", end,
        "--billing-account", account, "--out", str(target),
    )
    exported = target.read_text()
    assert len(list(csv.reader(io.StringIO(exported)))) == len(entries) + 1
    match = re.search(rf"^exported {len(entries)} entries; cursor (\S+)$", err, re.M)
    assert match, err
    out, _ = tandemctl(
        vault, "ledger", "export", "--start", start, "--end", end,
        "--billing-account", account, "--format", "jsonl",
    )
    assert len(out.splitlines()) == len(entries)
    # Resumed from its own final cursor, an export has nothing more to add.
    _, err = tandemctl(
        vault, "ledger", "export", "--start", start, "--end", end,
        "--billing-account", account, "--out", str(target), "--cursor", match.group(1),
    )
    assert target.read_text() == exported
    assert re.search(r"^exported 0 entries", err, re.M), err

    out, _ = tandemctl(vault, "payments", "note", payment.id, "called the cardholder")
    assert re.search(r"^note added \S+ by dev \(payer\)$", out, re.M), out
    assert re.search(r"^note \S+  dev \(payer\)\n  called the cardholder$", out, re.M), out
    out, _ = tandemctl(vault, "payments", "show", payment.id)
    assert "\n  called the cardholder" in out and "created by dev (payer)" in out, out

    def listed(out):
        return [json.loads(line) for line in out.splitlines()]

    deadline = time.monotonic() + 15
    while True:
        out, err = tandemctl(vault, "events", "--type", "payment.note_added", "--format", "json")
        notes = [e for e in listed(out) if e["payment_id"] == payment.id]
        if any(e["actor_role"] == "payer" for e in notes) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert notes and (notes[-1]["actor_name"], notes[-1]["actor_role"]) == (DEV_NAME, "payer"), out
    assert {e["type"] for e in listed(out)} == {"payment.note_added"}, out
    # Caught up, the cursor printed lies past every event the feed examined.
    resume = re.search(r"^continue with --after (\S+)$", err, re.M).group(1)
    assert resume
    out, _ = tandemctl(vault, "events", "--type", "payment.note_added", "--after", resume)
    assert out.splitlines()[0].split() == ["time", "type", "subject", "seq", "actor", "summary"]
    assert payment.id not in out, "nothing before the cursor again"


def test_tandemctl_events_follow(vault, paid):
    """`tandemctl events --follow` prints what commits while it runs, and on Ctrl-C the cursor
    to continue from."""
    payment = paid["payment"]
    events = all_events(vault)
    after = ["--after", events[-1].cursor] if events else []
    process = subprocess.Popen(
        [
            str(TANDEMCTL), "events", "--follow", "--type", "payment.note_added",
            "--format", "csv", *after,
            "--orchestrator", f"https://{vault.orchestrator_address}",
            "--certs", str(vault.certs),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Lines as they come, read beside the test so that a silent command cannot hang it.
    lines = queue.Queue()
    threading.Thread(
        target=lambda: [lines.put(line) for line in process.stdout], daemon=True
    ).start()
    try:
        header = lines.get(timeout=20)
        assert header.startswith("cursor,id,create_time,type,"), header
        payments(vault, "payer").AddPaymentNote(
            pay_pb.AddPaymentNoteRequest(
                request_id=str(uuid.uuid4()), payment_id=payment.id, text="followed note"
            ),
            timeout=10,
        )
        row = next(csv.DictReader(io.StringIO(header + lines.get(timeout=20))))
        assert (row["type"], row["payment_id"]) == ("payment.note_added", payment.id), row
        assert (row["actor_name"], row["actor_role"]) == (DEV_NAME, "payer"), row
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
    err = process.stderr.read()
    assert process.returncode == 0, err
    # The cursor printed continues after the note followed: it is not listed again.
    resume = re.search(r"continue with --after (\S+)", err).group(1)
    out, _ = tandemctl(
        vault, "events", "--type", "payment.note_added", "--format", "csv", "--after", resume
    )
    assert row["id"] not in out, out
