-- redial initial schema (Postgres).
--
-- Times are timestamptz, ids uuid, structured values jsonb. Tables whose record has a natural
-- creation time keep that name (caller.first_seen_at, call_session.started_at,
-- webhook_event.received_at); the others use created_at. Mutable tables carry updated_at.
--
-- Deleting a caller cascades to their sessions, and a session's deletion cascades to its turns and
-- analyses, so erasing a caller is one `delete from caller`. webhook_event, job and audit_log have
-- no foreign keys: they outlive what they mention (the audit trail must survive an erasure, and
-- raw webhooks are matched by call key when erasing).

create table caller (
    caller_id      uuid primary key,
    phone          text not null unique,
    name           text,
    language       text,
    notes          jsonb not null default '[]',
    last_summary   text,
    last_sentiment text,
    last_action    text,
    last_call_at   timestamptz,
    call_count     bigint not null default 0,
    first_seen_at  timestamptz not null,
    last_seen_at   timestamptz not null,
    updated_at     timestamptz not null
);

create table call_session (
    session_id         uuid primary key,
    platform           text not null,
    call_key           text not null,
    caller_id          uuid references caller (caller_id) on delete cascade,
    assistant_id       text not null default '',
    status             text not null
        check (status in ('active', 'completed', 'ended', 'dropped')),
    attempt            integer not null default 1,
    resumes_session_id uuid references call_session (session_id) on delete set null,
    answers            jsonb not null default '{}',
    prior_calls        bigint not null default 0,
    prior_call_at      timestamptz,
    model              text,
    ended_reason       text,
    details            jsonb not null default '{}',
    started_at         timestamptz not null,
    last_activity_at   timestamptz not null,
    ended_at           timestamptz,
    version            bigint not null default 1,
    updated_at         timestamptz not null,
    unique (platform, call_key)
);

-- find_resumable: a caller's sessions with one assistant, newest first.
create index call_session_resume_idx
    on call_session (caller_id, assistant_id, started_at desc);
create index call_session_resumes_idx
    on call_session (resumes_session_id) where resumes_session_id is not null;

create table turn (
    seq             bigint generated always as identity primary key,
    session_id      uuid not null references call_session (session_id) on delete cascade,
    idempotency_key text not null,
    role            text not null,
    content         text not null,
    tool_name       text,
    tool_call_id    text,
    partial         boolean not null default false,
    created_at      timestamptz not null,
    unique (session_id, idempotency_key)
);

-- list_turns: one session's log in order.
create index turn_session_seq_idx on turn (session_id, seq);

create table webhook_event (
    event_id    uuid primary key,
    platform    text not null,
    event_type  text not null,
    call_key    text,
    dedupe_key  text not null unique,
    payload     text not null,
    received_at timestamptz not null
);

create index webhook_event_call_idx on webhook_event (platform, call_key);

create table analysis (
    analysis_id uuid primary key,
    session_id  uuid not null references call_session (session_id) on delete cascade,
    source      text not null,
    summary     text not null,
    urgency     integer,
    action      text,
    sentiment   text,
    raw         jsonb not null default '{}',
    model       text,
    created_at  timestamptz not null,
    unique (session_id, source)
);

create table job (
    job_id       uuid primary key,
    kind         text not null,
    dedupe_key   text not null unique,
    payload      jsonb not null default '{}',
    status       text not null default 'queued'
        check (status in ('queued', 'running', 'done', 'failed')),
    attempts     integer not null default 0,
    max_attempts integer not null,
    run_at       timestamptz not null,
    locked_by    text,
    locked_until timestamptz,
    last_error   text,
    created_at   timestamptz not null,
    updated_at   timestamptz not null
);

-- claim_job: due queued jobs and expired running leases, oldest first.
create index job_status_run_at_idx on job (status, run_at);

create table audit_log (
    audit_id   bigint generated always as identity primary key,
    caller_id  uuid,
    session_id uuid,
    actor      text not null,
    action     text not null,
    reason     text not null,
    details    jsonb not null default '{}',
    created_at timestamptz not null
);

-- list_audit: one caller's trail, newest first.
create index audit_log_caller_idx on audit_log (caller_id, created_at);
