-- A job that failed on configuration (no model to analyse with, the upstream refusing its key)
-- waits, with the reason in last_error, for a start whose configuration may allow it, instead of
-- being retried as if the failure were transient. SQLite cannot alter a check in place: the
-- table is rebuilt.
create table job_new (
    job_id       text primary key not null,
    kind         text not null,
    dedupe_key   text not null unique,
    payload      text not null default '{}' check (json_valid(payload)),
    status       text not null default 'queued'
        check (status in ('queued', 'running', 'done', 'failed', 'waiting')),
    attempts     integer not null default 0,
    max_attempts integer not null,
    run_at       integer not null,
    locked_by    text,
    locked_until integer,
    last_error   text,
    created_at   integer not null,
    updated_at   integer not null
);
insert into job_new (job_id, kind, dedupe_key, payload, status, attempts, max_attempts, run_at,
                     locked_by, locked_until, last_error, created_at, updated_at)
select job_id, kind, dedupe_key, payload, status, attempts, max_attempts, run_at, locked_by,
       locked_until, last_error, created_at, updated_at
from job;
drop table job;
alter table job_new rename to job;

-- claim_job: due queued jobs and expired running leases, oldest first.
create index job_status_run_at_idx on job (status, run_at);
