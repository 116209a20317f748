-- Change notices for the per-instance call cache (src/storage/changes.rs). Postgres adds
-- triggers here; SQLite has one writer process, which reports its own changes from the store
-- (src/storage/sqlite), so there is nothing to change in this schema. Kept so both folders carry
-- the same versions.
select 1;
