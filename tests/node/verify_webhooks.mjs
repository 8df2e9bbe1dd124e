// A Node receiver's check of Tandem's webhooks with the Standard Webhooks library
// (`standardwebhooks` on npm, no code written for it by Tandem): every captured delivery verifies
// under one of the endpoint's secrets, and the same delivery with its body altered, under
// another secret, or with its timestamp moved outside the tolerance does not. Run by
// tests/python/test_webhooks.py, which captures the deliveries:
//
//   node verify_webhooks.mjs <deliveries.json> <secret> [<secret> ...]
//
// <deliveries.json> is a list of `{"headers": {...}, "body_base64": "..."}` (or `"body"`, the
// body as a string): the request's headers and its body exactly as received. The secrets are
// `whsec_...` strings; a delivery signed during a rotation verifies under either.
//
// Prints one JSON line with the number verified and each delivery's webhook-id and type; exits
// non-zero on the first failure.

import { readFileSync } from "node:fs";
import { randomBytes } from "node:crypto";

import { Webhook, WebhookVerificationError } from "standardwebhooks";

const [file, ...secrets] = process.argv.slice(2);
if (!file || secrets.length === 0) {
  console.error("usage: node verify_webhooks.mjs <deliveries.json> <secret> [<secret> ...]");
  process.exit(2);
}
const deliveries = JSON.parse(readFileSync(file, "utf8"));
if (!Array.isArray(deliveries) || deliveries.length === 0) {
  throw new Error(`${file}: expected a non-empty list of deliveries`);
}
const verifiers = secrets.map((secret) => new Webhook(secret));
const stranger = new Webhook(`whsec_${randomBytes(32).toString("base64")}`);

// The payload under the first verifier that accepts it, or the errors of all of them.
const verifyAny = (body, headers) => {
  const errors = [];
  for (const verifier of verifiers) {
    try {
      return { payload: verifier.verify(body, headers) };
    } catch (error) {
      errors.push(error);
    }
  }
  return { errors };
};
// True if every verifier (and a stranger's secret) refuses it, with WebhookVerificationError.
const refused = (body, headers) =>
  [...verifiers, stranger].every((verifier) => {
    try {
      verifier.verify(body, headers);
      return false;
    } catch (error) {
      if (!(error instanceof WebhookVerificationError)) throw error;
      return true;
    }
  });

const verified = [];
deliveries.forEach((delivery, index) => {
  const where = `delivery ${index}`;
  const headers = delivery.headers;
  const body =
    delivery.body_base64 !== undefined
      ? Buffer.from(delivery.body_base64, "base64")
      : Buffer.from(delivery.body, "utf8");
  const id = headers["webhook-id"];
  const { payload, errors } = verifyAny(body, headers);
  if (!payload) {
    const why = errors.map((e) => e.message).join("; ");
    throw new Error(`${where} (${id}) did not verify: ${why}`);
  }
  if (payload.data?.id !== id) {
    throw new Error(`${where}: webhook-id ${id} is not data.id ${payload.data?.id}`);
  }
  if (typeof payload.type !== "string" || typeof payload.timestamp !== "string") {
    throw new Error(`${where}: no type or timestamp in ${JSON.stringify(payload)}`);
  }
  // Another endpoint's secret does not verify it.
  let strangerAccepted = true;
  try {
    stranger.verify(body, headers);
  } catch (error) {
    if (!(error instanceof WebhookVerificationError)) throw error;
    strangerAccepted = false;
  }
  if (strangerAccepted) throw new Error(`${where} verified under a stranger's secret`);
  // One byte of the body changed.
  const altered = Buffer.from(body);
  altered[Math.floor(altered.length / 2)] ^= 0x01;
  if (!refused(altered, headers)) throw new Error(`${where} verified with an altered body`);
  // The timestamp ten minutes earlier or later, the signature left as it was.
  for (const shift of [-600, 600]) {
    const timestamp = String(Number(headers["webhook-timestamp"]) + shift);
    if (!refused(body, { ...headers, "webhook-timestamp": timestamp })) {
      throw new Error(`${where} verified with its timestamp moved ${shift} s`);
    }
  }
  verified.push({ id, type: payload.type });
});

console.log(JSON.stringify({ verified: verified.length, deliveries: verified }));
