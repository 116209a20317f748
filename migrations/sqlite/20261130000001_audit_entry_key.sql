-- Audit entries get an optional dedupe key: an entry written again (a retried write, or one
-- replayed from the outage journal) is stored once.
alter table audit_log add column entry_key text;
create unique index audit_log_entry_key_idx on audit_log (entry_key);
