-- Card groups keep their content (names, members with their last four digits and suspension,
-- the checked default policy and that policy as given) as domain data in `content`, checked
-- once when the group is written and used as it is by every payment. Rows written before hold
-- the encoded CardGroup message in `body`: the orchestrator converts each of them once when it
-- starts (and reads any it has not converted yet from `body`); exactly one of the two is set.
ALTER TABLE card_groups ADD COLUMN content jsonb;
ALTER TABLE card_groups ALTER COLUMN body DROP NOT NULL;
ALTER TABLE card_groups ADD CONSTRAINT card_groups_one_content
    CHECK ((content IS NULL) <> (body IS NULL));
