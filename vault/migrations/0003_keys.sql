-- Tandem vault schema, version 3: key administration. Migrations are append-only: never edit
-- this file after it lands; add a new one.

-- When a data key stopped taking writes, and which root key version wraps it now.
ALTER TABLE data_keys ADD COLUMN deactivated_at timestamptz;
ALTER TABLE data_keys ADD COLUMN root_key_version integer NOT NULL DEFAULT 1
    CHECK (root_key_version > 0);
ALTER TABLE data_keys ADD CONSTRAINT data_keys_deactivated
    CHECK ((state = 'active') = (deactivated_at IS NULL));

-- Every root key the vault's keys have been wrapped under; the highest version is current. A
-- root key itself is never stored: only its id (a keyed digest) and, for the `shares` source,
-- how it was split.
CREATE TABLE root_keys (
    version      integer PRIMARY KEY CHECK (version > 0),
    root_key_id  text NOT NULL,
    source       text NOT NULL CHECK (source IN ('dev', 'shares')),
    threshold    integer NOT NULL CHECK (threshold >= 0),
    shares_total integer NOT NULL CHECK (shares_total >= threshold),
    created_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((source = 'dev') = (shares_total = 0)),
    CHECK (source = 'dev' OR threshold BETWEEN 2 AND shares_total)
);

-- The rewrap in progress: rows under older data-key versions are re-encrypted under
-- `target_version`. Kept so that progress survives a restart.
CREATE TABLE rewrap_progress (
    singleton      boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    target_version integer NOT NULL,
    rows_total     bigint NOT NULL CHECK (rows_total >= 0),
    rows_done      bigint NOT NULL CHECK (rows_done >= 0),
    started_at     timestamptz NOT NULL
);

-- Idempotency of KeyAdminService's mutating RPCs (AIP-155): the result is the data-key or
-- root-key version the request produced.
CREATE TABLE key_requests (
    request_id   text PRIMARY KEY,
    rpc          text NOT NULL,
    request_hash bytea NOT NULL CHECK (octet_length(request_hash) = 32),
    result       integer NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- The rewrap walks rows under older versions in id order.
CREATE INDEX cards_dek_version_id ON cards (dek_version, id) WHERE dek_version IS NOT NULL;
