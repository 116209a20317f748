-- A job that failed on configuration (no model to analyse with, the upstream refusing its key)
-- waits, with the reason in last_error, for a start whose configuration may allow it, instead of
-- being retried as if the failure were transient.
alter table job drop constraint job_status_check;
alter table job add constraint job_status_check
    check (status in ('queued', 'running', 'done', 'failed', 'waiting'));
