-- Tandem vault schema, version 1. Migrations are append-only: never edit this file after it
-- lands; add a new one.

-- Data encryption keys (DEKs), each wrapped by the root key. Exactly one is active: it seals
-- every new write. `encryptions_reserved` counts encryptions handed out in blocks against the
-- key's budget (NIST SP 800-38D limits random-nonce GCM to 2^32 per key).
CREATE TABLE data_keys (
    version              integer PRIMARY KEY CHECK (version > 0),
    state                text NOT NULL CHECK (state IN ('active', 'decrypt_only', 'retired')),
    wrap_nonce           bytea CHECK (octet_length(wrap_nonce) = 12),
    wrapped_key          bytea,
    root_key_id          text NOT NULL,
    encryptions_reserved bigint NOT NULL DEFAULT 0 CHECK (encryptions_reserved >= 0),
    created_at           timestamptz NOT NULL DEFAULT now(),
    retired_at           timestamptz,
    -- A retired key has destroyed its key material; every other key keeps it.
    CHECK ((state = 'retired') = (wrapped_key IS NULL)),
    CHECK ((wrapped_key IS NULL) = (wrap_nonce IS NULL))
);
CREATE UNIQUE INDEX data_keys_one_active ON data_keys (state) WHERE state = 'active';

-- Other keys the vault owns (the fingerprint HMAC key), wrapped by the root key.
CREATE TABLE vault_secrets (
    name        text PRIMARY KEY,
    wrap_nonce  bytea NOT NULL CHECK (octet_length(wrap_nonce) = 12),
    wrapped_key bytea NOT NULL,
    root_key_id text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Cards. Metadata in clear (brand, BIN, last four, expiry); PAN and holder name only inside
-- `ciphertext`, sealed under `dek_version` with AAD binding the token and the version.
CREATE TABLE cards (
    id            bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    token         text PRIMARY KEY CHECK (token ~ '^tok_[a-z2-7]{26}$'),
    fingerprint   bytea NOT NULL CHECK (octet_length(fingerprint) = 32),
    brand         text NOT NULL
                  CHECK (brand IN ('visa', 'mastercard', 'amex', 'discover', 'jcb', 'unionpay', 'diners')),
    bin           text NOT NULL CHECK (bin ~ '^[0-9]{6}([0-9]{2})?$'),
    last4         text NOT NULL CHECK (last4 ~ '^[0-9]{4}$'),
    expiry_month  smallint NOT NULL CHECK (expiry_month BETWEEN 1 AND 12),
    expiry_year   smallint NOT NULL CHECK (expiry_year BETWEEN 1000 AND 9999),
    state         text NOT NULL CHECK (state IN ('active', 'revoked', 'expired')),
    dek_version   integer REFERENCES data_keys (version),
    nonce         bytea CHECK (octet_length(nonce) = 12),
    ciphertext    bytea,
    revoke_reason text,
    created_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    expires_at    timestamptz,
    -- Card data is present exactly until the purge job removes it from an expired token.
    CHECK ((state = 'expired') = (ciphertext IS NULL)),
    CHECK ((ciphertext IS NULL) = (nonce IS NULL) AND (ciphertext IS NULL) = (dek_version IS NULL))
);
CREATE INDEX cards_fingerprint ON cards (fingerprint, state);
CREATE INDEX cards_dek_version ON cards (dek_version) WHERE dek_version IS NOT NULL;
CREATE INDEX cards_expiring ON cards (expires_at) WHERE state <> 'expired' AND expires_at IS NOT NULL;

-- One row per card fingerprint ever seen with `reuse_existing`, locked by each such Tokenize so
-- that concurrent requests for the same card serialize and share one token.
CREATE TABLE card_fingerprints (
    fingerprint bytea PRIMARY KEY CHECK (octet_length(fingerprint) = 32)
);

-- Idempotency of TokenService's mutating RPCs (AIP-155). `request_hash` is an HMAC under the
-- fingerprint key over the RPC and its fields, so no card data is stored here.
CREATE TABLE token_requests (
    request_id    text PRIMARY KEY,
    rpc           text NOT NULL,
    request_hash  bytea NOT NULL CHECK (octet_length(request_hash) = 32),
    result_tokens text[] NOT NULL,
    created       boolean NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- The audit log: append-only and hash-chained. hash = SHA-256 over prev_hash and the row's
-- fields (see audit.rs); `audit_head` holds the last seq and hash, locked by each batch.
CREATE TABLE audit_events (
    seq            bigint PRIMARY KEY CHECK (seq > 0),
    occurred_at    timestamptz NOT NULL,
    caller         text NOT NULL,
    role           text NOT NULL,
    rpc            text NOT NULL,
    token          text,
    outcome        text NOT NULL,
    reason         text NOT NULL,
    correlation_id text NOT NULL,
    prev_hash      bytea NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash           bytea NOT NULL CHECK (octet_length(hash) = 32)
);
CREATE INDEX audit_events_token ON audit_events (token, seq) WHERE token IS NOT NULL;

CREATE TABLE audit_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    seq       bigint NOT NULL,
    hash      bytea NOT NULL CHECK (octet_length(hash) = 32)
);
INSERT INTO audit_head (seq, hash) VALUES (0, decode(repeat('00', 32), 'hex'));

CREATE FUNCTION audit_events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER audit_events_append_only
    BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_refuse_change();
CREATE TRIGGER audit_events_no_truncate
    BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION audit_events_refuse_change();
