-- The processor's reference of a capture or refund, so reconciliation can match each
-- settlement record with the transfer that booked it: a capture carries its authorization's
-- reference, a refund the refund's. Older transfers and other kinds have none.
ALTER TABLE ledger_transfers
    ADD COLUMN processor_reference text CHECK (octet_length(processor_reference) BETWEEN 1 AND 128);
CREATE INDEX ledger_transfers_processor_reference ON ledger_transfers (processor_reference)
    WHERE processor_reference IS NOT NULL;
-- A day's captures and refunds, for the entries no settlement record reported.
CREATE INDEX ledger_transfers_processor_day ON ledger_transfers (created_at)
    WHERE processor_reference IS NOT NULL;

-- The batch's read returns each transfer's processor reference too (the function of 10001
-- with one more column; a changed result type needs the function dropped first).
DROP FUNCTION ledger_lock_and_read(text[], text[]);
CREATE FUNCTION ledger_lock_and_read(account_ids text[], transfer_ids text[])
RETURNS TABLE (
    row_kind text,
    id text, currency text, code text,
    debits_must_not_exceed_credits boolean, credits_must_not_exceed_debits boolean,
    debits_pending bigint, debits_posted bigint, credits_pending bigint, credits_posted bigint,
    version bigint, owner text, card_token text, billing_account text, cost_center text,
    seq bigint, kind text, debit_account_id text, credit_account_id text, amount bigint,
    pending_id text, timeout_at timestamptz, payment_id text, invoice_id text, leg_id text,
    created_at timestamptz, resolution text, processor_reference text
)
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN QUERY
        SELECT 'account', a.id, a.currency, a.code, a.debits_must_not_exceed_credits,
               a.credits_must_not_exceed_debits, a.debits_pending, a.debits_posted,
               a.credits_pending, a.credits_posted, a.version, a.owner, a.card_token,
               a.billing_account, a.cost_center, NULL::bigint, NULL::text, NULL::text,
               NULL::text, NULL::bigint, NULL::text, NULL::timestamptz, NULL::text,
               NULL::text, NULL::text, NULL::timestamptz, NULL::text, NULL::text
        FROM ledger_accounts a WHERE a.id = ANY(account_ids) ORDER BY a.id FOR UPDATE;
    RETURN QUERY EXECUTE
        'SELECT ''transfer''::text, t.id, t.currency, NULL::text, NULL::boolean, NULL::boolean,
                NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, NULL::text,
                NULL::text, NULL::text, t.cost_center, t.seq, t.kind, t.debit_account_id,
                t.credit_account_id, t.amount, t.pending_id, t.timeout_at, t.payment_id,
                t.invoice_id, t.leg_id, t.created_at, r.kind, t.processor_reference
         FROM ledger_transfers t LEFT JOIN ledger_transfers r ON r.pending_id = t.id
         WHERE t.id = ANY($1)'
        USING transfer_ids;
END
$$;
