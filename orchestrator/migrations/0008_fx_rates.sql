-- The rate source (FxService, DESIGN section 10): each currency pair's current rate, and every
-- change of it.

-- A pair's current rate: units of `quote_currency` per one unit of `base_currency`, as the
-- normalized decimal text of `tandem_money::fx::Rate` ("0.9238"). `source` is
-- "treasury:<caller's name>" (SetFxRate) or "file:<file name>" (the rates file); `updater` is
-- the caller as `<role>/<name>`, NULL for the file. `as_of` is when the rate was observed (a
-- payment refuses one older than `fx.rate_age_s_max`), `update_time` when it was written.
CREATE TABLE fx_rates (
    base_currency  text NOT NULL CHECK (base_currency ~ '^[A-Z]{3}$'),
    quote_currency text NOT NULL CHECK (quote_currency ~ '^[A-Z]{3}$'),
    rate           text NOT NULL CHECK (rate ~ '^[0-9]+(\.[0-9]+)?$'),
    source         text NOT NULL CHECK (char_length(source) BETWEEN 1 AND 300),
    as_of          timestamptz NOT NULL,
    update_time    timestamptz NOT NULL,
    updater        text,
    PRIMARY KEY (base_currency, quote_currency),
    CHECK (base_currency <> quote_currency)
);

-- Every rate ever written, one row per change, in the order written: a payment's recorded rate
-- (pair, rate, source, as-of time) is traced here to the change that set it. Append-only.
CREATE TABLE fx_rate_history (
    seq            bigserial PRIMARY KEY,
    base_currency  text NOT NULL,
    quote_currency text NOT NULL,
    rate           text NOT NULL,
    source         text NOT NULL,
    as_of          timestamptz NOT NULL,
    update_time    timestamptz NOT NULL,
    updater        text,
    -- The SetFxRate request that wrote it; NULL for the rates file.
    request_id     text,
    CHECK (base_currency <> quote_currency)
);
CREATE INDEX fx_rate_history_by_pair ON fx_rate_history (base_currency, quote_currency, as_of);

CREATE FUNCTION fx_rate_history_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'fx_rate_history is append-only';
END
$$;
CREATE TRIGGER fx_rate_history_append_only BEFORE UPDATE OR DELETE ON fx_rate_history
    FOR EACH ROW EXECUTE FUNCTION fx_rate_history_append_only();
