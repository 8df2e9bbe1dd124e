-- Risk (DESIGN section 12): each billing account's policy, and the features payments are
-- assessed against, kept in the transactions that record payments and their declines.

-- A billing account's risk policy: `policy` is `domain::risk::Policy` as JSON, checked when set.
-- `version` is 1 for the first policy set and one more per change; `updater` the caller as
-- `<role>/<name>`. An account without a row is assessed under the default policy.
CREATE TABLE risk_policies (
    billing_account_id text PRIMARY KEY CHECK (char_length(billing_account_id) BETWEEN 1 AND 64),
    policy             jsonb NOT NULL,
    version            bigint NOT NULL CHECK (version > 0),
    update_time        timestamptz NOT NULL,
    updater            text NOT NULL
);

-- Payments and declines per billing account ('account'), card group ('group') and card
-- ('card', the token), in minute ('m', kept an hour) and hour ('h', kept a day) buckets.
-- Payment rows carry their currency and the sum of the amounts in it; decline rows have the
-- currency ''. A payment adds its rows with its own insert; a decline with the save that
-- records it: never apart from the change counted.
CREATE TABLE risk_counters (
    scope    text NOT NULL CHECK (scope IN ('account', 'group', 'card')),
    key      text NOT NULL,
    currency text NOT NULL CHECK (currency = '' OR currency ~ '^[A-Z]{3}$'),
    span     text NOT NULL CHECK (span IN ('m', 'h')),
    bucket   timestamptz NOT NULL,
    payments bigint NOT NULL CHECK (payments >= 0),
    amount   bigint NOT NULL CHECK (amount >= 0),
    declines bigint NOT NULL CHECK (declines >= 0),
    -- A payment's features are read by (scope, key), over each span's window of buckets.
    PRIMARY KEY (scope, key, span, bucket, currency)
) WITH (fillfactor = 80);

-- For pruning buckets past their span's window.
CREATE INDEX risk_counters_expiry ON risk_counters (span, bucket);

-- Each billing account's last 100 invoice amounts per currency, newest first: the trailing
-- median the amount rule compares with.
CREATE TABLE risk_history (
    billing_account_id text NOT NULL,
    currency           text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    amounts            bigint[] NOT NULL CHECK (cardinality(amounts) BETWEEN 1 AND 100),
    PRIMARY KEY (billing_account_id, currency)
) WITH (fillfactor = 80);

-- When each card was last planned in a payment (moved on at most once a day), for the first
-- use rule; cards unused for 35 days are forgotten.
CREATE TABLE risk_cards (
    token         text PRIMARY KEY,
    last_use_time timestamptz NOT NULL
);

CREATE INDEX risk_cards_last_use ON risk_cards (last_use_time);

-- What a new payment reads before it is planned and assessed, in one call: the month's spend
-- of its group's cards (`member_spend`), its billing account's policy, and (unless the policy
-- has no rule) the features before it for the account, the group and each card (`counts`:
-- [scope, key, payments 10m/1h/24h, amounts in its currency 10m/1h/24h, declines 10m/1h/24h]),
-- the account's last amounts in the currency and the cards used since `p_cards_since`. A
-- function so that its plan is made once per connection (a generic plan) instead of for every
-- payment: planning this statement costs more than running it.
CREATE FUNCTION risk_payment_reads(
    p_account text, p_group text, p_tokens text[], p_currency text,
    p_from_10m timestamptz, p_from_1h timestamptz, p_from_24h timestamptz,
    p_cards_since timestamptz, p_month date)
RETURNS TABLE (policy jsonb, version bigint, update_time timestamptz, updater text,
               counts jsonb, history bigint[], used text[], spend jsonb)
LANGUAGE plpgsql STABLE
SET plan_cache_mode = force_generic_plan
AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH policy AS (
        SELECT policy, version, update_time, updater FROM risk_policies
        WHERE billing_account_id = p_account),
    reads AS (
        SELECT NOT EXISTS (
            SELECT 1 FROM policy WHERE jsonb_array_length(policy -> 'rules') = 0) AS features),
    counts AS (
        SELECT k.scope, k.key, m.p10, m.a10, m.d10, m.p1h, m.a1h, m.d1h, h.p24, h.a24, h.d24
        FROM unnest(ARRAY['account', 'group'] || array_fill('card'::text, ARRAY[cardinality(p_tokens)]),
                    ARRAY[p_account, p_group] || p_tokens) AS k (scope, key)
        CROSS JOIN LATERAL (
            SELECT coalesce(sum(payments) FILTER (WHERE bucket >= p_from_10m), 0)::bigint AS p10,
                   coalesce(sum(amount) FILTER (WHERE bucket >= p_from_10m
                                                 AND currency = p_currency), 0)::bigint AS a10,
                   coalesce(sum(declines) FILTER (WHERE bucket >= p_from_10m), 0)::bigint AS d10,
                   coalesce(sum(payments), 0)::bigint AS p1h,
                   coalesce(sum(amount) FILTER (WHERE currency = p_currency), 0)::bigint AS a1h,
                   coalesce(sum(declines), 0)::bigint AS d1h
            FROM risk_counters c
            WHERE c.scope = k.scope AND c.key = k.key AND c.span = 'm'
              AND c.bucket >= p_from_1h) AS m
        CROSS JOIN LATERAL (
            SELECT coalesce(sum(payments), 0)::bigint AS p24,
                   coalesce(sum(amount) FILTER (WHERE currency = p_currency), 0)::bigint AS a24,
                   coalesce(sum(declines), 0)::bigint AS d24
            FROM risk_counters c
            WHERE c.scope = k.scope AND c.key = k.key AND c.span = 'h'
              AND c.bucket >= p_from_24h) AS h
        WHERE (SELECT features FROM reads))
    SELECT (SELECT policy FROM policy),
           (SELECT version FROM policy),
           (SELECT update_time FROM policy),
           (SELECT updater FROM policy),
           (SELECT jsonb_agg(jsonb_build_array(scope, key, p10, p1h, p24, a10, a1h, a24,
                                               d10, d1h, d24)) FROM counts),
           (SELECT amounts FROM risk_history
            WHERE billing_account_id = p_account AND currency = p_currency
              AND (SELECT features FROM reads)),
           (SELECT array_agg(token) FROM risk_cards
            WHERE token = ANY(p_tokens) AND last_use_time >= p_cards_since
              AND (SELECT features FROM reads)),
           (SELECT jsonb_agg(jsonb_build_array(token, currency, amount)) FROM member_spend
            WHERE token = ANY(p_tokens) AND month = p_month);
END
$$;

-- What a new payment adds to the features, called by the statement that inserts the payment (in
-- its transaction, never apart): its counts per scope key and bucket (the arrays, sorted by key so
-- that concurrent payments lock rows in one order, with no key twice), its amount to the
-- account's history in its currency (none when `p_currency` is NULL: a blocked payment), and its
-- cards' last use (sorted; moved on at most once a day). A function for the same reason as
-- `risk_payment_reads`: one plan per connection. Returns 1.
CREATE FUNCTION risk_record_payment(
    p_scopes text[], p_keys text[], p_currencies text[], p_spans text[],
    p_buckets timestamptz[], p_payments bigint[], p_amounts bigint[], p_declines bigint[],
    p_account text, p_currency text, p_amount bigint, p_cards text[], p_now timestamptz)
RETURNS integer
LANGUAGE plpgsql VOLATILE
SET plan_cache_mode = force_generic_plan
AS $$
BEGIN
    INSERT INTO risk_counters AS r (scope, key, currency, span, bucket, payments, amount, declines)
    SELECT * FROM unnest(p_scopes, p_keys, p_currencies, p_spans, p_buckets, p_payments,
                         p_amounts, p_declines)
    ON CONFLICT (scope, key, span, bucket, currency) DO UPDATE SET
        payments = r.payments + excluded.payments,
        amount = r.amount + excluded.amount,
        declines = r.declines + excluded.declines;
    IF p_currency IS NOT NULL THEN
        INSERT INTO risk_history AS h (billing_account_id, currency, amounts)
        VALUES (p_account, p_currency, ARRAY[p_amount])
        ON CONFLICT (billing_account_id, currency) DO UPDATE SET
            amounts = (excluded.amounts || h.amounts)[1:100];
    END IF;
    INSERT INTO risk_cards AS c (token, last_use_time)
    SELECT token, p_now FROM unnest(p_cards) AS token
    ON CONFLICT (token) DO UPDATE SET last_use_time = excluded.last_use_time
    WHERE c.last_use_time < excluded.last_use_time - interval '1 day';
    RETURN 1;
END
$$;
