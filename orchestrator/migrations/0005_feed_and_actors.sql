-- The event feed (ListEvents) and who did what.
--
-- Each event row keeps the id of the transaction that wrote it (pg_current_xact_id(), taken at
-- the transaction's first write; the payment path pays nothing for it). The feed lists events
-- in (xid, subject, sequence) order, and only those written by transactions older than every
-- transaction still running (pg_snapshot_xmin of the reader's snapshot): a transaction that
-- commits later has a larger xid than all of them, so no commit can place an event before one
-- already listed, and a cursor resumes with nothing skipped or repeated. Per payment and per
-- card group this order is the order of commits (each change starts after the last committed).
-- Rows written before this migration share its xid and keep their (subject, sequence) order.
ALTER TABLE payment_events ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX payment_events_feed ON payment_events (xid, payment_id, sequence);

-- A card group's changes, as payment_events holds a payment's: `body` is the encoded
-- CardGroupEvent, written in the transaction of the change.
CREATE TABLE card_group_events (
    card_group_id text NOT NULL REFERENCES card_groups (id),
    sequence      bigint NOT NULL CHECK (sequence > 0),
    id            text NOT NULL UNIQUE,
    type          text NOT NULL,
    body          bytea NOT NULL,
    create_time   timestamptz NOT NULL,
    xid           xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (card_group_id, sequence)
);
CREATE INDEX card_group_events_feed ON card_group_events (xid, card_group_id, sequence);

-- Who created a card group and who changed it last, as `<role>/<name>` from the caller's
-- certificate; NULL for groups written before callers were recorded. A payment's creator, its
-- refunds' requesters and its notes' authors live in its record.
ALTER TABLE card_groups ADD COLUMN creator text, ADD COLUMN updater text;
-- The events a card group has published, as payments.events counts a payment's.
ALTER TABLE card_groups ADD COLUMN events bigint NOT NULL DEFAULT 0 CHECK (events >= 0);
