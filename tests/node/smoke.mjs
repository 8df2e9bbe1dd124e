// A Node client of Tandem's orchestrator, loaded from proto/ at run time with
// @grpc/proto-loader (no code written for it by Tandem): over mutual TLS it creates a payment
// from a card group and reads it back; then, as the treasury, it finds the payment's
// payment.created event in the event feed (ListEvents), reads the balances of a card that
// paid (LedgerService.GetBalances) and reconciles today's sandbox settlement file
// (ReconciliationService.RunReconciliation), listing the run's discrepancies. Run by
// tests/python/test_payments.py, which starts the stack and passes where it is:
//
//   TANDEM_ORCHESTRATOR_ADDRESS  host:port of the orchestrator
//   TANDEM_CERTS                 directory with ca.pem and the payer's and the treasury's
//                                identities (payer.pem / payer.key, treasury.pem / treasury.key)
//   TANDEM_CARD_GROUP            the card group to pay from
//
// Prints one JSON line with the payment's id, state and summary, the event, the balance and
// the reconciliation run; exits non-zero on failure.

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { randomUUID } from "node:crypto";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const here = dirname(fileURLToPath(import.meta.url));
const protoRoot = join(here, "..", "..", "proto");
const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};

const definition = protoLoader.loadSync(
  [
    "tandem/orchestrator/v1/payment_service.proto",
    "tandem/orchestrator/v1/ledger_service.proto",
    "tandem/orchestrator/v1/reconciliation_service.proto",
  ],
  {
    includeDirs: [protoRoot],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    // A set oneof is named by a virtual field: `subject` is "payment_event" or "card_group_event".
    oneofs: true,
  },
);
const { tandem } = grpc.loadPackageDefinition(definition);

const certs = env("TANDEM_CERTS");
const read = (name) => readFileSync(join(certs, name));
// A client of `service` with the identity of `role` (its certificate is `<role>.pem`).
const connect = (service, role) =>
  new tandem.orchestrator.v1[service](
    env("TANDEM_ORCHESTRATOR_ADDRESS"),
    grpc.credentials.createSsl(read("ca.pem"), read(`${role}.key`), read(`${role}.pem`)),
    // The server certificate names localhost; connect by address, verify by name.
    { "grpc.ssl_target_name_override": "localhost" },
  );
const client = connect("PaymentService", "payer");
const feed = connect("PaymentService", "treasury");
const ledger = connect("LedgerService", "treasury");
const recon = connect("ReconciliationService", "treasury");

const callOn = (stub, method, request) =>
  new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 30_000);
    stub[method](request, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });
const call = (method, request) => callOn(client, method, request);
const check = (condition, what, value) => {
  if (!condition) throw new Error(`${what}: ${JSON.stringify(value)}`);
};

const created = await call("CreatePayment", {
  request_id: randomUUID(),
  invoice: {
    id: "INV-NODE",
    amount: { currency_code: "USD", minor_units: "1234" },
    description: "Paid from Node",
  },
  card_group_id: env("TANDEM_CARD_GROUP"),
  wait: true,
  wait_timeout_ms: "20000",
});
const read_back = await call("GetPayment", { payment_id: created.payment.id });
if (read_back.payment.id !== created.payment.id || read_back.payment.state !== created.payment.state) {
  throw new Error(`read back ${JSON.stringify(read_back.payment)} differs from ${JSON.stringify(created.payment)}`);
}

// The feed, paged from its start until caught up, until it lists the payment's creation: an
// event is listed once no earlier transaction can still commit one, a moment after its own.
const createdEvent = async (paymentId) => {
  for (let round = 0; round < 75; round += 1) {
    let page_token = "";
    for (let page = 0; page < 1000; page += 1) {
      const answer = await callOn(feed, "ListEvents", { page_size: 500, page_token, event_types: ["payment.created"] });
      check(Array.isArray(answer.events) && typeof answer.next_page_token === "string", "a ListEvents page", answer);
      for (const event of answer.events) {
        check(event.id.startsWith("evt_") && event.cursor.length > 0, "an event with an id and a cursor", event);
        check(event.type === "payment.created", "an event of the filtered type", event);
        if (event.subject === "payment_event" && event.payment_event.payment.id === paymentId) return event;
      }
      if (!answer.next_page_token) break;
      page_token = answer.next_page_token;
    }
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
  throw new Error(`no payment.created event for ${paymentId} in the feed`);
};
const event = await createdEvent(read_back.payment.id);
check(event.actor && event.actor.role === "payer" && event.actor.name.length > 0, "the event's actor", event.actor);

// The funding source of the first card that paid has at least that leg's capture posted.
const leg = read_back.payment.legs.find((l) => l.state === "LEG_STATE_CAPTURED");
check(leg, "a captured leg", read_back.payment.legs);
const { balances } = await callOn(ledger, "GetBalances", { card_token: leg.token });
const funding = balances.find((b) => b.code === "LEDGER_ACCOUNT_CODE_FUNDING_SOURCE");
check(funding && funding.card_token === leg.token, "the card's funding source", balances);
check(BigInt(funding.debits_posted.minor_units) >= BigInt(leg.amount.minor_units), "posted debits", funding);

// Today's (UTC) settlement file of the sandbox, reconciled: at least this payment's captures
// are records, and every record is matched or a discrepancy of one class. The stack is shared
// with other tests (charges made on the vault directly are missing in its ledger), so only the
// shape and the sums are checked; tests/python/test_reconciliation.py checks the numbers.
const day = new Date().toISOString().slice(0, 10);
const { run } = await callOn(recon, "RunReconciliation", {
  request_id: randomUUID(),
  processor: "sandbox",
  settlement_date: day,
});
check(run.id.startsWith("rcn_") && run.processor === "sandbox" && run.settlement_date === day, "a run", run);
check(run.actor && run.actor.role === "treasury", "the run's actor", run.actor);
const count = (name) => BigInt(run[name]);
const captured = read_back.payment.legs.filter((l) => l.state === "LEG_STATE_CAPTURED").length;
check(count("records") >= BigInt(captured), "records of the day", run);
const classified = ["matched", "missing_in_ledger", "amount_mismatch", "currency_mismatch", "duplicate_settlement"];
check(classified.reduce((sum, name) => sum + count(name), 0n) === count("records"), "every record classified", run);
const listed = await callOn(recon, "ListDiscrepancies", { run_id: run.id, page_size: 1000 });
check(Array.isArray(listed.discrepancies) && typeof listed.next_page_token === "string", "a ListDiscrepancies page", listed);
for (const found of listed.discrepancies) {
  check(found.id.startsWith("dsc_") && found.class.startsWith("DISCREPANCY_CLASS_"), "a discrepancy", found);
  check(found.settlement_date === day && found.state.startsWith("DISCREPANCY_STATE_"), "a discrepancy of the day", found);
}

console.log(
  JSON.stringify({
    id: read_back.payment.id,
    state: read_back.payment.state,
    captured: read_back.payment.captured.minor_units,
    summary: read_back.payment.summary,
    event: { type: event.type, actor: event.actor, cursor: event.cursor.length > 0 },
    funding: { account_id: funding.account_id, debits_posted: funding.debits_posted },
    reconciliation: {
      id: run.id,
      processor: run.processor,
      settlement_date: run.settlement_date,
      records: run.records,
      matched: run.matched,
      discrepancies: listed.discrepancies.length,
    },
  }),
);
for (const stub of [client, feed, ledger, recon]) stub.close();
