-- Webhooks (WebhookService): endpoints, the fan-out of the event feed to them, and each
-- delivery with its attempts.

-- An endpoint. Its signing secrets are sealed with `webhook.secret_key` (AES-256-GCM, bound to
-- the endpoint and the secret's version); the previous one signs beside the current one until
-- `previous_secret_until`. `start_*` is the fan-out's position when it was created (read under
-- the fan-out's lock): it receives every event after it. A deleted endpoint is kept (its
-- deliveries name it) and never listed.
CREATE TABLE webhook_endpoints (
    id                     text PRIMARY KEY,
    url                    text NOT NULL CHECK (char_length(url) BETWEEN 1 AND 2048),
    description            text NOT NULL CHECK (char_length(description) <= 500),
    event_types            text[] NOT NULL,
    state                  text NOT NULL CHECK (state IN ('enabled', 'disabled', 'deleted')),
    disabled_reason        text CHECK (disabled_reason IN ('operator', 'gone', 'failing')),
    secret_version         bigint NOT NULL CHECK (secret_version > 0),
    secret_sealed          bytea NOT NULL,
    previous_secret_sealed bytea,
    previous_secret_until  timestamptz,
    failing_since          timestamptz,
    start_key              xid8 NOT NULL,
    start_subject          text NOT NULL,
    start_sequence         bigint NOT NULL,
    creator                text NOT NULL,
    updater                text,
    create_time            timestamptz NOT NULL,
    update_time            timestamptz NOT NULL,
    CHECK ((state = 'disabled') = (disabled_reason IS NOT NULL)),
    CHECK ((previous_secret_sealed IS NULL) = (previous_secret_until IS NULL))
);
CREATE INDEX webhook_endpoints_oldest ON webhook_endpoints (create_time, id) WHERE state <> 'deleted';

-- Where the fan-out stands in the event feed (see migration 0005 for its order): every event
-- up to this position has its deliveries written. One row; the instance that fans out holds its
-- lock, so replicas take turns and never write an event's deliveries twice.
CREATE TABLE webhook_fanout (
    id       smallint PRIMARY KEY CHECK (id = 1),
    feed_key xid8 NOT NULL,
    subject  text NOT NULL,
    sequence bigint NOT NULL
);
INSERT INTO webhook_fanout VALUES (1, pg_snapshot_xmin(pg_current_snapshot()), '', 0);

-- One event for one endpoint. `seq` is the fan-out's order, which is the feed's; a lane (an
-- endpoint and a payment, card group or reconciliation subject) is delivered in `seq` order, one
-- at a time. `body` is the JSON sent. `round_attempts` counts the attempts since the endpoint
-- was last enabled: the retry schedule's position.
CREATE TABLE webhook_deliveries (
    seq            bigserial PRIMARY KEY,
    id             text NOT NULL UNIQUE,
    endpoint_id    text NOT NULL REFERENCES webhook_endpoints (id),
    event_id       text NOT NULL,
    event_type     text NOT NULL,
    event_time     timestamptz NOT NULL,
    lane           text NOT NULL,
    body           text NOT NULL,
    redelivery     boolean NOT NULL,
    state          text NOT NULL CHECK (state IN ('pending', 'delivered', 'canceled')),
    attempts       integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    round_attempts integer NOT NULL DEFAULT 0 CHECK (round_attempts >= 0),
    create_time    timestamptz NOT NULL,
    deliver_time   timestamptz,
    CHECK ((state = 'delivered') = (deliver_time IS NOT NULL))
);
-- The fan-out writes an event's delivery to an endpoint once.
CREATE UNIQUE INDEX webhook_deliveries_once ON webhook_deliveries (endpoint_id, event_id)
    WHERE NOT redelivery;
-- A lane's pending deliveries in order: its next head.
CREATE INDEX webhook_deliveries_pending ON webhook_deliveries (endpoint_id, lane, seq)
    WHERE state = 'pending';
-- An endpoint's deliveries, newest first, and by event time for redelivery.
CREATE INDEX webhook_deliveries_by_endpoint ON webhook_deliveries (endpoint_id, seq DESC);
CREATE INDEX webhook_deliveries_by_event_time ON webhook_deliveries (endpoint_id, event_time);
-- Delivered and canceled deliveries, for the purge `webhook.keep_days` after they ended.
CREATE INDEX webhook_deliveries_done ON webhook_deliveries ((coalesce(deliver_time, create_time)))
    WHERE state <> 'pending';

-- A lane's schedule: its head (the first pending delivery; NULL while none is pending), when
-- the head's next attempt is due ('infinity' while its endpoint is disabled), and the claim of
-- the instance attempting it. The worker reads
-- due lanes, never the deliveries queued behind their heads, so a backlog costs nothing until
-- its turn. Writers of a lane hold its row lock (the fan-out's upsert, the worker's record of an
-- attempt), so a new delivery is never left behind a lane the worker found empty. Every writer
-- locks an endpoint's row before its lanes, and lanes in key order, so none deadlocks another.
CREATE TABLE webhook_lanes (
    endpoint_id       text NOT NULL REFERENCES webhook_endpoints (id),
    lane              text NOT NULL,
    head_seq          bigint,
    next_attempt_time timestamptz NOT NULL,
    lease_owner       text,
    lease_until       timestamptz,
    PRIMARY KEY (endpoint_id, lane)
);
CREATE INDEX webhook_lanes_due ON webhook_lanes (next_attempt_time) WHERE head_seq IS NOT NULL;
CREATE INDEX webhook_lanes_claimed ON webhook_lanes (endpoint_id) WHERE lease_until IS NOT NULL;

-- Every attempt of a delivery.
CREATE TABLE webhook_attempts (
    delivery_seq bigint NOT NULL REFERENCES webhook_deliveries (seq) ON DELETE CASCADE,
    number       integer NOT NULL CHECK (number > 0),
    time         timestamptz NOT NULL,
    status_code  integer NOT NULL,
    latency_ms   bigint NOT NULL,
    error        text NOT NULL,
    PRIMARY KEY (delivery_seq, number)
);
