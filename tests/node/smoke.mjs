// A Node client of Tandem's orchestrator, loaded from proto/ at run time with
// @grpc/proto-loader (no code written for it by Tandem): over mutual TLS it creates a payment
// from a card group and reads it back. Run by tests/python/test_payments.py, which starts the
// stack and passes where it is:
//
//   TANDEM_ORCHESTRATOR_ADDRESS  host:port of the orchestrator
//   TANDEM_CERTS                 directory with ca.pem and the payer's payer.pem / payer.key
//   TANDEM_CARD_GROUP            the card group to pay from
//
// Prints one JSON line with the payment's id, state and summary; exits non-zero on failure.

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

const definition = protoLoader.loadSync("tandem/orchestrator/v1/payment_service.proto", {
  includeDirs: [protoRoot],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
});
const { tandem } = grpc.loadPackageDefinition(definition);

const certs = env("TANDEM_CERTS");
const read = (name) => readFileSync(join(certs, name));
const credentials = grpc.credentials.createSsl(read("ca.pem"), read("payer.key"), read("payer.pem"));
const client = new tandem.orchestrator.v1.PaymentService(env("TANDEM_ORCHESTRATOR_ADDRESS"), credentials, {
  // The server certificate names localhost; connect by address, verify by name.
  "grpc.ssl_target_name_override": "localhost",
});

const call = (method, request) =>
  new Promise((resolve, reject) => {
    const deadline = new Date(Date.now() + 30_000);
    client[method](request, { deadline }, (error, response) => (error ? reject(error) : resolve(response)));
  });

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
console.log(
  JSON.stringify({
    id: read_back.payment.id,
    state: read_back.payment.state,
    captured: read_back.payment.captured.minor_units,
    summary: read_back.payment.summary,
  }),
);
client.close();
