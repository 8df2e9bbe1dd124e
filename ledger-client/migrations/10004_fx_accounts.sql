-- FX accounts: a converted leg crosses currencies through the clearing accounts of its currency
-- pair, so every transfer stays within one currency and each currency's journal sums to zero.
-- - `fx_clearing:<FROM>-<TO>:<CCC>`: the position of the pair's conversions in CCC, one account
--   per currency of the pair (FROM the invoice's currency, TO the card's); FROM and TO differ,
--   and CCC is one of them and the account's currency.
-- - `fx_rounding:<CCC>`: what cards paid above the exact conversion, rounded, in CCC, the
--   account's currency.
-- The account guard of 10001, which now accepts the two codes and checks the form of their ids
-- when the account is created; everything else is unchanged. (Fixed positions: the id prefix
-- 'fx_clearing:' is 12 characters, so FROM is at 13, TO at 17 and CCC at 21.)
CREATE OR REPLACE FUNCTION ledger_guard_accounts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.id !~ '^[A-Za-z0-9:_./-]{1,128}$' OR NEW.currency !~ '^[A-Z]{3}$'
           OR NEW.code NOT IN ('funding_source', 'receivable', 'processor_clearing', 'refunds',
                               'fx_clearing', 'fx_rounding')
        THEN
            RAISE EXCEPTION 'ledger account id, currency or code is malformed'
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.code = 'fx_clearing' AND NOT (
            NEW.id ~ '^fx_clearing:[A-Z]{3}-[A-Z]{3}:[A-Z]{3}$'
            AND substr(NEW.id, 13, 3) <> substr(NEW.id, 17, 3)
            AND NEW.currency IN (substr(NEW.id, 13, 3), substr(NEW.id, 17, 3))
            AND substr(NEW.id, 21, 3) = NEW.currency)
        THEN
            RAISE EXCEPTION 'ledger account % is not fx_clearing:<FROM>-<TO>:% of a pair with %',
                NEW.id, NEW.currency, NEW.currency
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.code = 'fx_rounding' AND NEW.id <> 'fx_rounding:' || NEW.currency THEN
            RAISE EXCEPTION 'ledger account % is not fx_rounding:%',
                NEW.id, NEW.currency
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
