-- Tandem ledger schema, version 1. Ledger migrations are numbered from 10001 so that they
-- share one database (and sqlx's migration table) with the orchestrator's own migrations.
-- Append-only: never edit after it lands.

-- Accounts. Balances are changed only by the transfer trigger below (a direct UPDATE of a
-- balance is refused), so every balance is the sum of its transfers.
-- The formats of id, currency and code are checked once, when the account is created (by the
-- ledger_accounts_created trigger below): CHECK constraints would run again on every balance
-- update, and these columns never change.
CREATE TABLE ledger_accounts (
    id                              text PRIMARY KEY,
    currency                        text NOT NULL,
    code                            text NOT NULL,
    debits_must_not_exceed_credits  boolean NOT NULL,
    credits_must_not_exceed_debits  boolean NOT NULL,
    debits_pending                  bigint NOT NULL DEFAULT 0 CHECK (debits_pending >= 0),
    debits_posted                   bigint NOT NULL DEFAULT 0 CHECK (debits_posted >= 0),
    credits_pending                 bigint NOT NULL DEFAULT 0 CHECK (credits_pending >= 0),
    credits_posted                  bigint NOT NULL DEFAULT 0 CHECK (credits_posted >= 0),
    version                         bigint NOT NULL DEFAULT 0,
    owner                           text,
    card_token                      text,
    billing_account                 text,
    cost_center                     text,
    created_at                      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, currency),
    CHECK (NOT (debits_must_not_exceed_credits AND credits_must_not_exceed_debits)),
    CHECK (NOT debits_must_not_exceed_credits OR debits_pending + debits_posted <= credits_posted),
    CHECK (NOT credits_must_not_exceed_debits OR credits_pending + credits_posted <= debits_posted)
);
CREATE INDEX ledger_accounts_card ON ledger_accounts (card_token) WHERE card_token IS NOT NULL;

-- Transfers: immutable. The composite foreign keys make the database hold that both accounts
-- share the transfer's currency; the transfer trigger holds that a post or void names a
-- pending transfer and moves between exactly its accounts. At most one post or void resolves
-- a pending transfer.
CREATE TABLE ledger_transfers (
    seq               bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    -- The id's characters are checked by tandem-ledger; the database bounds its length (a
    -- regular expression here cost a tenth of the insert path's CPU).
    id                text PRIMARY KEY CHECK (octet_length(id) BETWEEN 1 AND 128),
    kind              text NOT NULL CHECK (kind IN ('single', 'pending', 'post_pending', 'void_pending')),
    debit_account_id  text NOT NULL,
    credit_account_id text NOT NULL,
    currency          text NOT NULL,
    amount            bigint NOT NULL CHECK (amount > 0),
    pending_id        text,
    timeout_at        timestamptz,
    payment_id        text,
    invoice_id        text,
    leg_id            text,
    cost_center       text,
    created_at        timestamptz NOT NULL,
    CHECK (debit_account_id <> credit_account_id),
    CHECK ((kind IN ('post_pending', 'void_pending')) = (pending_id IS NOT NULL)),
    CHECK (timeout_at IS NULL OR kind = 'pending'),
    FOREIGN KEY (debit_account_id, currency) REFERENCES ledger_accounts (id, currency),
    FOREIGN KEY (credit_account_id, currency) REFERENCES ledger_accounts (id, currency),
    FOREIGN KEY (pending_id) REFERENCES ledger_transfers (id)
);
CREATE UNIQUE INDEX ledger_transfers_one_resolution ON ledger_transfers (pending_id)
    WHERE pending_id IS NOT NULL;
CREATE INDEX ledger_transfers_debit ON ledger_transfers (debit_account_id, seq);
CREATE INDEX ledger_transfers_credit ON ledger_transfers (credit_account_id, seq);
CREATE INDEX ledger_transfers_payment ON ledger_transfers (payment_id, seq) WHERE payment_id IS NOT NULL;
CREATE INDEX ledger_transfers_invoice ON ledger_transfers (invoice_id, seq) WHERE invoice_id IS NOT NULL;
CREATE INDEX ledger_transfers_cost_center ON ledger_transfers (cost_center, seq) WHERE cost_center IS NOT NULL;
CREATE INDEX ledger_transfers_open_pending ON ledger_transfers (timeout_at)
    WHERE kind = 'pending' AND timeout_at IS NOT NULL;

CREATE FUNCTION ledger_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger_transfers is immutable: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;
CREATE TRIGGER ledger_transfers_immutable BEFORE UPDATE OR DELETE ON ledger_transfers
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_transfers_no_truncate BEFORE TRUNCATE ON ledger_transfers
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- Applies every inserted transfer to its accounts' balances, once per INSERT statement (so a
-- batch of transfers costs one UPDATE). A post may not exceed its pending amount; a void
-- records the full pending amount; post and void resolve only pending transfers.
-- The statements that read ledger tables run through EXECUTE so that each is planned with the
-- current table sizes: a plan cached while the ledger was empty would scan it in full until the
-- next ANALYZE. Batches without posts or voids skip the join to their pending transfers. A post
-- or void must resolve a pending transfer, between the same accounts, in the same currency,
-- for at most (post) or exactly (void) its amount.
CREATE FUNCTION ledger_apply_transfers() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    resolves boolean;
    mismatched boolean;
    pending_amounts text;
BEGIN
    SELECT EXISTS (SELECT 1 FROM inserted WHERE pending_id IS NOT NULL) INTO resolves;
    IF resolves THEN
        EXECUTE 'SELECT EXISTS (
            SELECT 1 FROM inserted i JOIN ledger_transfers p ON p.id = i.pending_id
            WHERE p.kind <> ''pending''
               OR i.debit_account_id <> p.debit_account_id
               OR i.credit_account_id <> p.credit_account_id
               OR i.currency <> p.currency
               OR (i.kind = ''post_pending'' AND i.amount > p.amount)
               OR (i.kind = ''void_pending'' AND i.amount <> p.amount))'
        INTO mismatched;
        IF mismatched THEN
            RAISE EXCEPTION 'ledger: a post or void does not match its pending transfer'
                USING ERRCODE = 'check_violation';
        END IF;
        pending_amounts := 'SELECT i.*, coalesce(p.amount, 0) AS pending_amount FROM inserted i
            LEFT JOIN ledger_transfers p ON i.pending_id IS NOT NULL AND p.id = i.pending_id';
    ELSE
        -- Singles and holds only: the plan reads no ledger_transfers, so a cached one is safe.
        -- This repeats the dynamic statement below on purpose: planning it per batch cost about
        -- a quarter of bench ledger's throughput.
        WITH effects AS (
            SELECT debit_account_id, credit_account_id,
                   CASE kind WHEN 'pending' THEN amount ELSE 0 END AS pending_delta,
                   CASE kind WHEN 'single' THEN amount ELSE 0 END AS posted_delta
            FROM inserted
        ), deltas AS (
            SELECT debit_account_id AS id, pending_delta AS dp, posted_delta AS dpo,
                   0::bigint AS cp, 0::bigint AS cpo FROM effects
            UNION ALL
            SELECT credit_account_id, 0, 0, pending_delta, posted_delta FROM effects
        ), summed AS (
            SELECT id, sum(dp)::bigint AS dp, sum(dpo)::bigint AS dpo,
                   sum(cp)::bigint AS cp, sum(cpo)::bigint AS cpo
            FROM deltas GROUP BY id
        )
        UPDATE ledger_accounts a SET
            debits_pending = a.debits_pending + s.dp,
            debits_posted = a.debits_posted + s.dpo,
            credits_pending = a.credits_pending + s.cp,
            credits_posted = a.credits_posted + s.cpo,
            version = a.version + 1
        FROM summed s WHERE a.id = s.id;
        RETURN NULL;
    END IF;
    EXECUTE 'WITH moves AS (' || pending_amounts || '), effects AS (
        SELECT debit_account_id, credit_account_id,
               CASE kind WHEN ''pending'' THEN amount WHEN ''single'' THEN 0
                         ELSE -pending_amount END AS pending_delta,
               CASE kind WHEN ''single'' THEN amount WHEN ''post_pending'' THEN amount
                         ELSE 0 END AS posted_delta
        FROM moves
    ), deltas AS (
        SELECT debit_account_id AS id, pending_delta AS dp, posted_delta AS dpo,
               0::bigint AS cp, 0::bigint AS cpo FROM effects
        UNION ALL
        SELECT credit_account_id, 0, 0, pending_delta, posted_delta FROM effects
    ), summed AS (
        SELECT id, sum(dp)::bigint AS dp, sum(dpo)::bigint AS dpo,
               sum(cp)::bigint AS cp, sum(cpo)::bigint AS cpo
        FROM deltas GROUP BY id
    )
    UPDATE ledger_accounts a SET
        debits_pending = a.debits_pending + s.dp,
        debits_posted = a.debits_posted + s.dpo,
        credits_pending = a.credits_pending + s.cp,
        credits_posted = a.credits_posted + s.cpo,
        version = a.version + 1
    FROM summed s WHERE a.id = s.id';
    RETURN NULL;
END
$$;
CREATE TRIGGER ledger_transfers_apply AFTER INSERT ON ledger_transfers
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_apply_transfers();

-- Balances change only through the trigger above: an account is created well-formed and at
-- zero, and a direct UPDATE (trigger depth 0) may change neither a balance nor the account's
-- identity and flags.
-- The WHEN clauses keep the guard off the hot path: the transfer trigger's own UPDATE runs at
-- depth 1 and calls no guard. Accounts are never deleted.
CREATE FUNCTION ledger_guard_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.id !~ '^[A-Za-z0-9:_./-]{1,128}$' OR NEW.currency !~ '^[A-Z]{3}$'
           OR NEW.code NOT IN ('funding_source', 'receivable', 'processor_clearing', 'refunds')
        THEN
            RAISE EXCEPTION 'ledger account id, currency or code is malformed'
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.debits_pending <> 0 OR NEW.debits_posted <> 0 OR NEW.credits_pending <> 0
           OR NEW.credits_posted <> 0 OR NEW.version <> 0
        THEN
            RAISE EXCEPTION 'ledger accounts are created with zero balances'
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'ledger_accounts rows are never deleted'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.debits_pending <> OLD.debits_pending OR NEW.debits_posted <> OLD.debits_posted
       OR NEW.credits_pending <> OLD.credits_pending OR NEW.credits_posted <> OLD.credits_posted
       OR NEW.version <> OLD.version
    THEN
        RAISE EXCEPTION 'ledger balances change only through transfers'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF NEW.id <> OLD.id OR NEW.currency <> OLD.currency OR NEW.code <> OLD.code
       OR NEW.debits_must_not_exceed_credits <> OLD.debits_must_not_exceed_credits
       OR NEW.credits_must_not_exceed_debits <> OLD.credits_must_not_exceed_debits
    THEN
        RAISE EXCEPTION 'ledger account identity and flags are immutable'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER ledger_accounts_created BEFORE INSERT ON ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_guard_accounts();
CREATE TRIGGER ledger_accounts_direct_update BEFORE UPDATE ON ledger_accounts
    FOR EACH ROW WHEN (pg_trigger_depth() = 0)
    EXECUTE FUNCTION ledger_guard_accounts();
CREATE TRIGGER ledger_accounts_never_deleted BEFORE DELETE ON ledger_accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_guard_accounts();

-- One round trip for the start of every batch: lock the batch's accounts in id order, then
-- read its transfers. The function runs the two statements in that order, and under READ
-- COMMITTED the second takes a fresh snapshot after the locks are held, so it sees every
-- transfer committed by a writer this batch waited for. The transfer read is planned at each
-- call (EXECUTE): a plan cached while the ledger was small would scan it in full.
CREATE FUNCTION ledger_lock_and_read(account_ids text[], transfer_ids text[])
RETURNS TABLE (
    row_kind text,
    id text, currency text, code text,
    debits_must_not_exceed_credits boolean, credits_must_not_exceed_debits boolean,
    debits_pending bigint, debits_posted bigint, credits_pending bigint, credits_posted bigint,
    version bigint, owner text, card_token text, billing_account text, cost_center text,
    seq bigint, kind text, debit_account_id text, credit_account_id text, amount bigint,
    pending_id text, timeout_at timestamptz, payment_id text, invoice_id text, leg_id text,
    created_at timestamptz, resolution text
)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY
        SELECT 'account', a.id, a.currency, a.code, a.debits_must_not_exceed_credits,
               a.credits_must_not_exceed_debits, a.debits_pending, a.debits_posted,
               a.credits_pending, a.credits_posted, a.version, a.owner, a.card_token,
               a.billing_account, a.cost_center, NULL::bigint, NULL::text, NULL::text,
               NULL::text, NULL::bigint, NULL::text, NULL::timestamptz, NULL::text,
               NULL::text, NULL::text, NULL::timestamptz, NULL::text
        FROM ledger_accounts a WHERE a.id = ANY(account_ids) ORDER BY a.id FOR UPDATE;
    RETURN QUERY EXECUTE
        'SELECT ''transfer''::text, t.id, t.currency, NULL::text, NULL::boolean, NULL::boolean,
                NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::text,
                NULL::text, NULL::text, t.cost_center, t.seq, t.kind, t.debit_account_id,
                t.credit_account_id, t.amount, t.pending_id, t.timeout_at, t.payment_id,
                t.invoice_id, t.leg_id, t.created_at, r.kind
         FROM ledger_transfers t LEFT JOIN ledger_transfers r ON r.pending_id = t.id
         WHERE t.id = ANY($1)'
        USING transfer_ids;
END
$$;
