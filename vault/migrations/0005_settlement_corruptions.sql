-- Tandem vault schema, version 5: the sandbox's journal of settlement record corruptions
-- (`SandboxService.CorruptSettlementRecord`). Migrations are append-only: never edit this file
-- after it lands; add a new one.

-- One row per corruption, under its request id: the record as it was, and what it became (the
-- new copy of a duplicate; nothing for a drop), so that a replay of the request answers the
-- same. The record's type, references and time never change, so they are kept once.
CREATE TABLE sandbox_settlement_corruptions (
    request_id                text PRIMARY KEY,
    corruption                text NOT NULL CHECK (corruption IN
                              ('drop', 'duplicate', 'change_amount', 'change_currency', 'settle_late')),
    record_seq                bigint NOT NULL,
    record_id                 text NOT NULL,
    settlement_date           date NOT NULL,
    type                      text NOT NULL CHECK (type IN ('capture', 'refund')),
    processor_reference       text NOT NULL,
    authorization_reference   text NOT NULL,
    currency                  text NOT NULL,
    amount_minor              bigint NOT NULL,
    record_created_at         timestamptz NOT NULL,
    corrupted_seq             bigint,
    corrupted_id              text,
    corrupted_settlement_date date,
    corrupted_currency        text,
    corrupted_amount_minor    bigint,
    created_at                timestamptz NOT NULL DEFAULT now(),
    CHECK ((corruption = 'drop') = (corrupted_id IS NULL)),
    CHECK ((corrupted_id IS NULL) = (corrupted_seq IS NULL)
       AND (corrupted_id IS NULL) = (corrupted_settlement_date IS NULL)
       AND (corrupted_id IS NULL) = (corrupted_currency IS NULL)
       AND (corrupted_id IS NULL) = (corrupted_amount_minor IS NULL))
);
