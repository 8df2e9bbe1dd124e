-- The event feed (ListEvents) and who did what.
--
-- Each event row keeps a feed key: the id of the transaction that wrote it
-- (pg_current_xact_id(), taken at the transaction's first write), raised to its subject's last
-- key if that is larger (`payments.feed_key`, `card_groups.feed_key`, kept in the statement
-- that writes the events, under the row lock every writer of the subject holds). The feed lists
-- events in (feed key, subject, sequence) order, and only those whose key is below every
-- transaction still running (pg_snapshot_xmin of the reader's snapshot). A key is never below
-- its own transaction's id, so an event not yet visible has a key at or above that bound: no
-- commit can place an event before one already listed, and a cursor resumes with nothing
-- skipped or repeated. The raise keeps each payment's and group's events in the order of their
-- commits (a transaction that took its id early, then waited for the subject's lock, writes
-- after the one it waited for). Rows written before this migration share its id and keep their
-- (subject, sequence) order.
ALTER TABLE payment_events ADD COLUMN feed_key xid8 NOT NULL DEFAULT pg_current_xact_id();
CREATE INDEX payment_events_feed ON payment_events (feed_key, payment_id, sequence);
ALTER TABLE payments ADD COLUMN feed_key xid8;

-- A card group's changes, as payment_events holds a payment's: `body` is the encoded
-- CardGroupEvent, written in the transaction of the change.
CREATE TABLE card_group_events (
    card_group_id text NOT NULL REFERENCES card_groups (id),
    sequence      bigint NOT NULL CHECK (sequence > 0),
    id            text NOT NULL UNIQUE,
    type          text NOT NULL,
    body          bytea NOT NULL,
    create_time   timestamptz NOT NULL,
    feed_key      xid8 NOT NULL,
    PRIMARY KEY (card_group_id, sequence)
);
CREATE INDEX card_group_events_feed ON card_group_events (feed_key, card_group_id, sequence);
ALTER TABLE card_groups ADD COLUMN feed_key xid8;

-- Who created a card group and who changed it last, as `<role>/<name>` from the caller's
-- certificate; NULL for groups written before callers were recorded. A payment's creator, its
-- refunds' requesters and its notes' authors live in its record.
ALTER TABLE card_groups ADD COLUMN creator text, ADD COLUMN updater text;
-- The events a card group has published, as payments.events counts a payment's.
ALTER TABLE card_groups ADD COLUMN events bigint NOT NULL DEFAULT 0 CHECK (events >= 0);
