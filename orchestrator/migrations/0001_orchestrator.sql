-- The orchestrator's schema. It shares its database with the ledger (tandem-ledger's
-- migrations are numbered from 10001), so that a payment's state change, its ledger transfers
-- and its events commit in one transaction.

-- Card groups: the group as its wire message (members, policy, names), with the columns that
-- lists filter and sort on. `version` is the etag's source: it changes on every update.
CREATE TABLE card_groups (
    id                 text PRIMARY KEY CHECK (id ~ '^cg_[a-z2-7]{26}$'),
    billing_account_id text NOT NULL,
    archived           boolean NOT NULL DEFAULT false,
    version            bigint NOT NULL CHECK (version > 0),
    body               bytea NOT NULL,
    create_time        timestamptz NOT NULL,
    update_time        timestamptz NOT NULL,
    archive_time       timestamptz,
    CHECK (archived = (archive_time IS NOT NULL))
);
CREATE INDEX card_groups_newest ON card_groups (create_time DESC, id DESC);

-- One row per request_id of a mutating RPC (the Stripe idempotency-key recipe): the method and
-- a hash of the request, and what the request created. A row exists only once its request's
-- transaction committed; a second request with the id waits for the first transaction (and is
-- told REQUEST_IN_PROGRESS when that takes longer than a moment).
CREATE TABLE idempotency_keys (
    request_id   text PRIMARY KEY,
    method       text NOT NULL,
    request_hash bytea NOT NULL CHECK (length(request_hash) = 32),
    resource_id  text NOT NULL,
    response     bytea,
    create_time  timestamptz NOT NULL
);

-- Payments: the record (the saga and its details, JSON) with the columns lists filter on, and
-- the lease of the instance driving it. A payment is `settled` once nothing is left to do
-- (terminal, no refund pending); the recovery worker resumes unsettled payments whose lease
-- expired.
CREATE TABLE payments (
    id                 text PRIMARY KEY CHECK (id ~ '^pay_[a-z2-7]{26}$'),
    request_id         text NOT NULL UNIQUE,
    card_group_id      text NOT NULL REFERENCES card_groups (id),
    billing_account_id text NOT NULL,
    invoice_id         text NOT NULL,
    state              text NOT NULL,
    settled            boolean NOT NULL,
    record             jsonb NOT NULL,
    request            bytea NOT NULL,
    events             bigint NOT NULL CHECK (events >= 0),
    lease_owner        text,
    lease_until        timestamptz NOT NULL,
    create_time        timestamptz NOT NULL,
    update_time        timestamptz NOT NULL
);
CREATE INDEX payments_newest ON payments (create_time DESC, id DESC);
CREATE INDEX payments_by_group ON payments (card_group_id, create_time DESC, id DESC);
CREATE INDEX payments_by_invoice ON payments (invoice_id, create_time DESC, id DESC);
CREATE INDEX payments_unsettled ON payments (lease_until) WHERE NOT settled;

-- The transactional outbox: every event of a payment, in sequence, written in the transaction
-- of the change it describes. `body` is the encoded PaymentEvent.
CREATE TABLE payment_events (
    payment_id  text NOT NULL REFERENCES payments (id),
    sequence    bigint NOT NULL CHECK (sequence > 0),
    id          text NOT NULL UNIQUE,
    type        text NOT NULL,
    body        bytea NOT NULL,
    create_time timestamptz NOT NULL,
    PRIMARY KEY (payment_id, sequence)
);

-- What counts against each card's calendar-month limit: amounts held or captured, less voids
-- and refunds. An authorization's intent adds its amount only if the limit allows it.
CREATE TABLE member_spend (
    token    text NOT NULL,
    currency text NOT NULL,
    month    date NOT NULL,
    amount   bigint NOT NULL,
    PRIMARY KEY (token, currency, month)
);
