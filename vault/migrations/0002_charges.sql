-- Tandem vault schema, version 2: charges and the sandbox acquirer. Migrations are
-- append-only: never edit this file after it lands; add a new one.

-- Charges: one row per authorization, written (state 'pending') before the processor is called,
-- so that every external call is preceded by a committed intent.
CREATE TABLE charges (
    id                     text PRIMARY KEY CHECK (id ~ '^ch_[a-z2-7]{26}$'),
    seq                    bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    request_id             text NOT NULL UNIQUE,
    token                  text NOT NULL REFERENCES cards (token),
    brand                  text NOT NULL,
    last4                  text NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    currency               text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    requested_minor        bigint NOT NULL CHECK (requested_minor > 0),
    approved_minor         bigint NOT NULL DEFAULT 0,
    captured_minor         bigint NOT NULL DEFAULT 0,
    refunded_minor         bigint NOT NULL DEFAULT 0,
    allow_partial_approval boolean NOT NULL,
    state                  text NOT NULL CHECK (state IN ('pending', 'authorized', 'declined',
                               'voided', 'captured', 'partially_refunded', 'refunded')),
    decline_code           text,
    next_action            text,
    processor_decline_code text NOT NULL DEFAULT '' CHECK (length(processor_decline_code) <= 32),
    processor              text NOT NULL,
    processor_reference    text NOT NULL DEFAULT '' CHECK (length(processor_reference) <= 128),
    authorization_code     text NOT NULL DEFAULT '',
    description            text NOT NULL,
    statement_descriptor   text NOT NULL,
    reference              text NOT NULL,
    metadata               jsonb NOT NULL,
    -- The request id of the capture or void sent to the processor and not yet answered.
    pending_request_id     text,
    created_at             timestamptz NOT NULL,
    updated_at             timestamptz NOT NULL,
    authorize_time         timestamptz,
    capture_time           timestamptz,
    void_time              timestamptz,
    CHECK (approved_minor BETWEEN 0 AND requested_minor),
    CHECK (captured_minor BETWEEN 0 AND approved_minor),
    CHECK (refunded_minor BETWEEN 0 AND captured_minor),
    CHECK ((state = 'declined') = (decline_code IS NOT NULL AND next_action IS NOT NULL)),
    CHECK (state NOT IN ('pending', 'declined') OR approved_minor = 0),
    CHECK ((state IN ('pending', 'declined', 'authorized', 'voided')) = (captured_minor = 0)),
    CHECK ((state = 'pending') = (authorize_time IS NULL)),
    CHECK ((state = 'voided') = (void_time IS NOT NULL)),
    CHECK (state = 'authorized' OR pending_request_id IS NULL),
    CHECK (state <> 'refunded' OR refunded_minor = captured_minor),
    CHECK (state <> 'partially_refunded' OR refunded_minor BETWEEN 1 AND captured_minor - 1)
);
CREATE INDEX charges_pending ON charges (updated_at)
    WHERE state = 'pending' OR pending_request_id IS NOT NULL;

-- Refunds of captured charges, each written (state 'pending') before the processor is called.
CREATE TABLE charge_refunds (
    id                  text PRIMARY KEY CHECK (id ~ '^rf_[a-z2-7]{26}$'),
    charge_id           text NOT NULL REFERENCES charges (id),
    request_id          text NOT NULL UNIQUE,
    amount_minor        bigint NOT NULL CHECK (amount_minor > 0),
    state               text NOT NULL CHECK (state IN ('pending', 'succeeded', 'failed')),
    processor_reference text NOT NULL DEFAULT '' CHECK (length(processor_reference) <= 128),
    reason              text NOT NULL,
    created_at          timestamptz NOT NULL,
    complete_time       timestamptz,
    CHECK ((state = 'pending') = (complete_time IS NULL))
);
CREATE INDEX charge_refunds_charge ON charge_refunds (charge_id, created_at);
CREATE INDEX charge_refunds_pending ON charge_refunds (created_at) WHERE state = 'pending';

-- Idempotency of ChargeService's mutating RPCs (AIP-155). `request_hash` is an HMAC under the
-- fingerprint key over the RPC and its fields.
CREATE TABLE charge_requests (
    request_id   text PRIMARY KEY,
    rpc          text NOT NULL,
    request_hash bytea NOT NULL CHECK (octet_length(request_hash) = 32),
    charge_id    text NOT NULL REFERENCES charges (id),
    refund_id    text REFERENCES charge_refunds (id),
    -- The amount sent to the processor (capture and refund), so that an interrupted call can
    -- be sent again exactly.
    amount_minor bigint CHECK (amount_minor > 0),
    -- The decline code with which the processor refused a capture or void, replayed to a
    -- caller who sends the request again.
    refusal      text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The sandbox acquirer's own state. A real acquirer keeps this on its side; the sandbox keeps
-- it here so that it behaves the same across vault restarts.

-- One row per card (by fingerprint) the sandbox has seen: its behaviour and balance.
CREATE TABLE sandbox_cards (
    fingerprint             bytea PRIMARY KEY CHECK (octet_length(fingerprint) = 32),
    token                   text NOT NULL,
    last4                   text NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    configured              boolean NOT NULL,
    decline_code            text,
    balance_currency        text CHECK (balance_currency ~ '^[A-Z]{3}$'),
    balance_minor           bigint CHECK (balance_minor >= 0),
    latency_ms              integer NOT NULL CHECK (latency_ms BETWEEN 0 AND 60000),
    fail_first_attempts     integer NOT NULL CHECK (fail_first_attempts BETWEEN 0 AND 100),
    fail_remaining          integer NOT NULL
                            CHECK (fail_remaining BETWEEN 0 AND fail_first_attempts),
    timeout_after_authorize boolean NOT NULL,
    updated_at              timestamptz NOT NULL,
    CHECK ((balance_currency IS NULL) = (balance_minor IS NULL))
);

-- Authorizations the sandbox approved, with what became of their hold.
CREATE TABLE sandbox_authorizations (
    reference      text PRIMARY KEY CHECK (reference ~ '^sbx_[a-z2-7]{26}$'),
    fingerprint    bytea NOT NULL REFERENCES sandbox_cards (fingerprint),
    currency       text NOT NULL,
    approved_minor bigint NOT NULL CHECK (approved_minor > 0),
    captured_minor bigint NOT NULL DEFAULT 0 CHECK (captured_minor BETWEEN 0 AND approved_minor),
    refunded_minor bigint NOT NULL DEFAULT 0 CHECK (refunded_minor BETWEEN 0 AND captured_minor),
    state          text NOT NULL CHECK (state IN ('held', 'captured', 'voided')),
    created_at     timestamptz NOT NULL
);
CREATE INDEX sandbox_authorizations_card ON sandbox_authorizations (fingerprint, state);

-- Every operation the sandbox received. An idempotency key is acted on once per type; a replay
-- is recorded with outcome 'replayed'.
CREATE TABLE sandbox_operations (
    seq                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    reference               text NOT NULL UNIQUE CHECK (reference ~ '^sbx_[a-z2-7]{26}$'),
    authorization_reference text NOT NULL DEFAULT '',
    type                    text NOT NULL
                            CHECK (type IN ('authorize', 'capture', 'void', 'refund', 'inquire')),
    idempotency_key         text NOT NULL CHECK (length(idempotency_key) BETWEEN 1 AND 128),
    token                   text NOT NULL,
    currency                text,
    requested_minor         bigint,
    approved_minor          bigint,
    outcome                 text NOT NULL
                            CHECK (outcome IN ('approved', 'partially_approved', 'declined', 'replayed')),
    decline_code            text,
    processor_decline_code  text NOT NULL DEFAULT '',
    authorization_code      text NOT NULL DEFAULT '',
    created_at              timestamptz NOT NULL,
    CHECK ((outcome = 'declined') = (decline_code IS NOT NULL))
);
CREATE UNIQUE INDEX sandbox_operations_once ON sandbox_operations (type, idempotency_key)
    WHERE outcome <> 'replayed' AND type <> 'inquire';
CREATE INDEX sandbox_operations_token ON sandbox_operations (token, seq);
CREATE INDEX sandbox_operations_authorization ON sandbox_operations (authorization_reference, seq);

-- The sandbox's settlement report: every capture and refund, by settlement day (UTC).
CREATE TABLE sandbox_settlement_records (
    id                      text PRIMARY KEY CHECK (id ~ '^stl_[a-z2-7]{26}$'),
    seq                     bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    settlement_date         date NOT NULL,
    type                    text NOT NULL CHECK (type IN ('capture', 'refund')),
    processor_reference     text NOT NULL,
    authorization_reference text NOT NULL REFERENCES sandbox_authorizations (reference),
    currency                text NOT NULL,
    amount_minor            bigint NOT NULL CHECK (amount_minor > 0),
    created_at              timestamptz NOT NULL
);
CREATE INDEX sandbox_settlement_records_day ON sandbox_settlement_records (settlement_date, seq);
