-- Flows: what moved between each pair of accounts, per cost center and UTC day, kept by the
-- transfer trigger in the statement that inserts the transfers. Spend reports and cost-center
-- balances read these few rows instead of every transfer of a range: a billing account's spend
-- over a year is a few rows per card and day, however many payments it made.
-- `pending` is the net change of held amounts (a hold adds, its post or void takes it back);
-- `posted` what was posted (singles and posts). Each row is a sum of the ledger's own transfers,
-- checked by tandem-ledger's invariant check; `cost_center` is '' for transfers without one.
CREATE TABLE ledger_flows (
    debit_account_id  text NOT NULL,
    credit_account_id text NOT NULL,
    currency          text NOT NULL,
    cost_center       text NOT NULL,
    day               date NOT NULL,
    pending           bigint NOT NULL,
    posted            bigint NOT NULL,
    PRIMARY KEY (debit_account_id, credit_account_id, cost_center, day)
);
CREATE INDEX ledger_flows_credit ON ledger_flows (credit_account_id, day);
CREATE INDEX ledger_flows_cost_center ON ledger_flows (cost_center, day);
-- Receivables are found by their billing account.
CREATE INDEX ledger_accounts_billing ON ledger_accounts (billing_account)
    WHERE billing_account IS NOT NULL;

-- Flows only change with the transfers that make them.
CREATE TRIGGER ledger_flows_immutable BEFORE DELETE ON ledger_flows
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_flows_no_truncate BEFORE TRUNCATE ON ledger_flows
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

-- The flows of the transfers written before this migration. No transfer may be written
-- meanwhile (an instance still running the old trigger would commit transfers this backfill
-- does not see and the new trigger does not count): writers wait for the migration.
LOCK TABLE ledger_transfers IN SHARE ROW EXCLUSIVE MODE;
INSERT INTO ledger_flows (debit_account_id, credit_account_id, currency, cost_center, day,
                          pending, posted)
SELECT t.debit_account_id, t.credit_account_id, t.currency, coalesce(t.cost_center, ''),
       (t.created_at AT TIME ZONE 'UTC')::date,
       sum(CASE t.kind WHEN 'pending' THEN t.amount WHEN 'single' THEN 0 ELSE -p.amount END),
       sum(CASE t.kind WHEN 'single' THEN t.amount WHEN 'post_pending' THEN t.amount ELSE 0 END)
FROM ledger_transfers t LEFT JOIN ledger_transfers p ON p.id = t.pending_id
GROUP BY 1, 2, 3, 4, 5;

-- The transfer trigger of 10001, which now also adds each statement's transfers to their flows,
-- in the same statement as the balances (a data-modifying CTE: no second statement, no round
-- trip). Concurrent batches touching one flow row are already serialized by the locks on its
-- two accounts, taken in id order before the batch is decided.
CREATE OR REPLACE FUNCTION ledger_apply_transfers() RETURNS trigger LANGUAGE plpgsql AS $$
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
            SELECT debit_account_id, credit_account_id, currency,
                   coalesce(cost_center, '') AS cost_center,
                   (created_at AT TIME ZONE 'UTC')::date AS day,
                   CASE kind WHEN 'pending' THEN amount ELSE 0 END AS pending_delta,
                   CASE kind WHEN 'single' THEN amount ELSE 0 END AS posted_delta
            FROM inserted
        ), flows AS (
            INSERT INTO ledger_flows AS f (debit_account_id, credit_account_id, currency,
                                           cost_center, day, pending, posted)
            SELECT debit_account_id, credit_account_id, currency, cost_center, day,
                   sum(pending_delta)::bigint, sum(posted_delta)::bigint
            FROM effects GROUP BY debit_account_id, credit_account_id, currency, cost_center, day
            ORDER BY debit_account_id, credit_account_id, cost_center, day
            ON CONFLICT (debit_account_id, credit_account_id, cost_center, day) DO UPDATE
            SET pending = f.pending + excluded.pending, posted = f.posted + excluded.posted
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
        SELECT debit_account_id, credit_account_id, currency,
               coalesce(cost_center, '''') AS cost_center,
               (created_at AT TIME ZONE ''UTC'')::date AS day,
               CASE kind WHEN ''pending'' THEN amount WHEN ''single'' THEN 0
                         ELSE -pending_amount END AS pending_delta,
               CASE kind WHEN ''single'' THEN amount WHEN ''post_pending'' THEN amount
                         ELSE 0 END AS posted_delta
        FROM moves
    ), flows AS (
        INSERT INTO ledger_flows AS f (debit_account_id, credit_account_id, currency,
                                       cost_center, day, pending, posted)
        SELECT debit_account_id, credit_account_id, currency, cost_center, day,
               sum(pending_delta)::bigint, sum(posted_delta)::bigint
        FROM effects GROUP BY debit_account_id, credit_account_id, currency, cost_center, day
        ORDER BY debit_account_id, credit_account_id, cost_center, day
        ON CONFLICT (debit_account_id, credit_account_id, cost_center, day) DO UPDATE
        SET pending = f.pending + excluded.pending, posted = f.posted + excluded.posted
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
