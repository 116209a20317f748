-- redial initial schema (SQLite).
--
-- Mirrors migrations/postgres with SQLite types: times are INTEGER unix milliseconds (RFC 3339
-- text sorts wrongly across fraction lengths), ids are hyphenated UUID TEXT, structured values are
-- JSON TEXT (checked with json_valid), booleans are 0/1 INTEGER.
--
-- Deleting a caller cascades to their sessions, and a session's deletion cascades to its turns and
-- analyses (foreign_keys is switched on by every connection). webhook_event, job and audit_log have
-- no foreign keys: they outlive what they mention.

create table caller (
    caller_id      text primary key not null,
    phone          text not null unique,
    name           text,
    language       text,
    notes          text not null default '[]' check (json_valid(notes)),
    last_summary   text,
    last_sentiment text,
    last_action    text,
    last_call_at   integer,
    call_count     integer not null default 0,
    first_seen_at  integer not null,
    last_seen_at   integer not null,
    updated_at     integer not null
);

create table call_session (
    session_id         text primary key not null,
    platform           text not null,
    call_key           text not null,
    caller_id          text references caller (caller_id) on delete cascade,
    assistant_id       text not null default '',
    status             text not null
        check (status in ('active', 'completed', 'ended', 'dropped')),
    attempt            integer not null default 1,
    resumes_session_id text references call_session (session_id) on delete set null,
    answers            text not null default '{}' check (json_valid(answers)),
    prior_calls        integer not null default 0,
    prior_call_at      integer,
    model              text,
    ended_reason       text,
    details            text not null default '{}' check (json_valid(details)),
    started_at         integer not null,
    last_activity_at   integer not null,
    ended_at           integer,
    version            integer not null default 1,
    updated_at         integer not null,
    unique (platform, call_key)
);

-- find_resumable: a caller's sessions with one assistant, newest first.
create index call_session_resume_idx
    on call_session (caller_id, assistant_id, started_at desc);
create index call_session_resumes_idx
    on call_session (resumes_session_id) where resumes_session_id is not null;

create table turn (
    seq             integer primary key autoincrement,
    session_id      text not null references call_session (session_id) on delete cascade,
    idempotency_key text not null,
    role            text not null,
    content         text not null,
    tool_name       text,
    tool_call_id    text,
    partial         integer not null default 0 check (partial in (0, 1)),
    created_at      integer not null,
    unique (session_id, idempotency_key)
);

-- list_turns: one session's log in order.
create index turn_session_seq_idx on turn (session_id, seq);

create table webhook_event (
    event_id    text primary key not null,
    platform    text not null,
    event_type  text not null,
    call_key    text,
    dedupe_key  text not null unique,
    payload     text not null,
    received_at integer not null
);

create index webhook_event_call_idx on webhook_event (platform, call_key);

create table analysis (
    analysis_id text primary key not null,
    session_id  text not null references call_session (session_id) on delete cascade,
    source      text not null,
    summary     text not null,
    urgency     integer,
    action      text,
    sentiment   text,
    raw         text not null default '{}' check (json_valid(raw)),
    model       text,
    created_at  integer not null,
    unique (session_id, source)
);

create table job (
    job_id       text primary key not null,
    kind         text not null,
    dedupe_key   text not null unique,
    payload      text not null default '{}' check (json_valid(payload)),
    status       text not null default 'queued'
        check (status in ('queued', 'running', 'done', 'failed')),
    attempts     integer not null default 0,
    max_attempts integer not null,
    run_at       integer not null,
    locked_by    text,
    locked_until integer,
    last_error   text,
    created_at   integer not null,
    updated_at   integer not null
);

-- claim_job: due queued jobs and expired running leases, oldest first.
create index job_status_run_at_idx on job (status, run_at);

create table audit_log (
    audit_id   integer primary key autoincrement,
    caller_id  text,
    session_id text,
    actor      text not null,
    action     text not null,
    reason     text not null,
    details    text not null default '{}' check (json_valid(details)),
    created_at integer not null
);

-- list_audit: one caller's trail, newest first.
create index audit_log_caller_idx on audit_log (caller_id, created_at);
