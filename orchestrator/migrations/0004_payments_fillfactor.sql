-- A payment row is updated at every step of its drive (its record, events count and state),
-- and a step changes no indexed column: the lease is renewed only once a quarter of it is
-- gone, and `settled` changes once, at the end. With room left on each page, Postgres then
-- updates the row in place (a HOT update) instead of writing a new entry into each of the
-- table's five indexes. The setting applies to pages written from now on.
ALTER TABLE payments SET (fillfactor = 70);
