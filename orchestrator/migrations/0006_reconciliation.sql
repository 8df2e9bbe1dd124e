-- Reconciliation (DESIGN section 11): the processors' settlement records as read, the runs
-- with their counts, the discrepancies kept across runs, and the adjustments that correct them.

-- Every settlement record read, as the latest file of its day holds it. A run of a day replaces
-- that day's rows; a record that moved to another day's file (settled late) moves with it.
CREATE TABLE recon_settlements (
    processor           text NOT NULL,
    record_id           text NOT NULL CHECK (octet_length(record_id) BETWEEN 1 AND 128),
    settlement_date     date NOT NULL,
    line                bigint NOT NULL CHECK (line > 0),
    type                text NOT NULL CHECK (type IN ('capture', 'refund')),
    processor_reference text NOT NULL CHECK (octet_length(processor_reference) BETWEEN 1 AND 128),
    amount_minor        bigint NOT NULL CHECK (amount_minor > 0),
    currency            text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    fee_minor           bigint NOT NULL CHECK (fee_minor >= 0),
    settled_at          timestamptz NOT NULL,
    PRIMARY KEY (processor, record_id)
);
CREATE INDEX recon_settlements_day ON recon_settlements (processor, settlement_date);
CREATE INDEX recon_settlements_reference ON recon_settlements (processor, processor_reference);

-- One reconciliation of a processor's day, with what it found; `actor` is `<role>/<name>`.
CREATE TABLE recon_runs (
    id                   text PRIMARY KEY,
    processor            text NOT NULL,
    settlement_date      date NOT NULL,
    actor                text NOT NULL,
    records              bigint NOT NULL CHECK (records >= 0),
    matched              bigint NOT NULL CHECK (matched >= 0),
    missing_in_ledger    bigint NOT NULL CHECK (missing_in_ledger >= 0),
    missing_at_processor bigint NOT NULL CHECK (missing_at_processor >= 0),
    amount_mismatch      bigint NOT NULL CHECK (amount_mismatch >= 0),
    currency_mismatch    bigint NOT NULL CHECK (currency_mismatch >= 0),
    duplicate_settlement bigint NOT NULL CHECK (duplicate_settlement >= 0),
    pending              bigint NOT NULL CHECK (pending >= 0),
    resolved             bigint NOT NULL CHECK (resolved >= 0),
    start_time           timestamptz NOT NULL,
    finish_time          timestamptz NOT NULL
);
CREATE INDEX recon_runs_day ON recon_runs (processor, settlement_date, finish_time);

-- The worker's claim on a day: one replica reconciles each closed day of each processor. A
-- claim whose holder went away (`claimed_until` passed, no run) is taken over.
CREATE TABLE recon_worker_days (
    processor       text NOT NULL,
    settlement_date date NOT NULL,
    owner           text NOT NULL,
    claimed_until   timestamptz NOT NULL,
    run_id          text REFERENCES recon_runs (id) DEFERRABLE INITIALLY DEFERRED,
    PRIMARY KEY (processor, settlement_date)
);

-- A discrepancy, kept across runs under its subject (`record:<id>` or `entry:<transfer id>`):
-- each run of its day updates its class and amounts, and clears it when it is gone. A resolved
-- one whose difference changes, or goes, is open again with what is left to correct.
CREATE TABLE recon_discrepancies (
    id                  text PRIMARY KEY,
    processor           text NOT NULL,
    subject             text NOT NULL,
    settlement_date     date NOT NULL,
    class               text NOT NULL CHECK (class IN ('missing_in_ledger', 'missing_at_processor',
                            'amount_mismatch', 'currency_mismatch', 'duplicate_settlement', 'pending')),
    state               text NOT NULL CHECK (state IN ('open', 'resolved', 'cleared')),
    type                text NOT NULL CHECK (type IN ('capture', 'refund')),
    processor_reference text NOT NULL,
    record_id           text,
    settled_minor       bigint,
    settled_currency    text,
    settled_at          timestamptz,
    entry_id            text,
    ledger_minor        bigint,
    ledger_currency     text,
    funding_account     text,
    receivable_account  text,
    payment_id          text,
    leg_id              text,
    entry_time          timestamptz,
    correction_minor    bigint,
    correction_currency text,
    first_run_id        text NOT NULL REFERENCES recon_runs (id) DEFERRABLE INITIALLY DEFERRED,
    last_run_id         text NOT NULL REFERENCES recon_runs (id) DEFERRABLE INITIALLY DEFERRED,
    adjustment_id       text,
    -- What approved adjustments have booked for it so far (the correction, signed, when they
    -- were approved): a later run that finds another difference reopens it with the rest.
    applied_minor       bigint,
    applied_currency    text,
    seq                 bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    UNIQUE (processor, subject),
    CHECK ((correction_minor IS NULL) = (correction_currency IS NULL)),
    CHECK (class = 'pending' OR correction_minor IS NOT NULL)
);
CREATE INDEX recon_discrepancies_day ON recon_discrepancies (processor, settlement_date, seq);
-- Open discrepancies of ledger entries no file reported, by reference: a run clears those whose
-- record has come in another day's file.
CREATE INDEX recon_discrepancies_unreported ON recon_discrepancies (processor, processor_reference)
    WHERE state = 'open' AND record_id IS NULL;

-- An adjustment: proposed by one identity, approved (its transfers posted) or rejected by
-- another. `proposer` and `decider` are `<role>/<name>`.
CREATE TABLE recon_adjustments (
    id              text PRIMARY KEY,
    discrepancy_id  text NOT NULL REFERENCES recon_discrepancies (id),
    state           text NOT NULL CHECK (state IN ('proposed', 'approved', 'rejected')),
    amount_minor    bigint NOT NULL CHECK (amount_minor > 0),
    currency        text NOT NULL,
    reason          text NOT NULL CHECK (char_length(reason) BETWEEN 1 AND 1000),
    proposer        text NOT NULL,
    propose_time    timestamptz NOT NULL,
    decider         text,
    decide_time     timestamptz,
    decision_reason text NOT NULL DEFAULT '',
    transfer_ids    text[] NOT NULL DEFAULT '{}',
    -- The discrepancy as it was proposed against: an approval posts only if it still is.
    correction_minor bigint NOT NULL,
    class           text NOT NULL,
    entry_id        text,
    CHECK ((state = 'proposed') = (decider IS NULL))
);
-- At most one adjustment waits per discrepancy.
CREATE UNIQUE INDEX recon_adjustments_waiting ON recon_adjustments (discrepancy_id)
    WHERE state = 'proposed';

-- Reconciliation's steps in the event feed (ListEvents), as card_group_events holds a group's:
-- a run's completion (subject: the run), an adjustment's proposal and decision (subject: the
-- adjustment). `body` is the encoded ReconciliationEvent, written in the step's transaction. An
-- adjustment is decided only after its proposal committed, so the transaction ids order each
-- subject's events (see migration 0005 for the feed key).
CREATE TABLE reconciliation_events (
    subject     text NOT NULL,
    sequence    bigint NOT NULL CHECK (sequence > 0),
    id          text NOT NULL UNIQUE,
    type        text NOT NULL,
    body        bytea NOT NULL,
    create_time timestamptz NOT NULL,
    feed_key    xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (subject, sequence)
);
CREATE INDEX reconciliation_events_feed ON reconciliation_events (feed_key, subject, sequence);
