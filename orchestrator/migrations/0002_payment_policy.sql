-- The allocation policy a payment was created under, as an encoded AllocationPolicy: the
-- override given to CreatePayment, or the card group's default as it was at that moment, so an
-- auditor can tell which policy allocated each payment after the group's policy changed.
-- NULL for payments created before this column existed (their request's override, if any, is
-- the policy they used).
ALTER TABLE payments ADD COLUMN policy bytea;
