-- Tandem vault schema, version 4: audit rows name the call's request id and the resource it
-- acted on besides the token (a charge, a refund, a data-key version). Both are covered by the
-- row hash. Migrations are append-only: never edit this file after it lands; add a new one.
ALTER TABLE audit_events ADD COLUMN request_id text NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN resource text NOT NULL DEFAULT '';
