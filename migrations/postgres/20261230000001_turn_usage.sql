-- Token usage per turn and model (issue 15): what each upstream reply used, so a call's totals
-- and cost can be summed. One row per (session, usage_key); a re-sent request stores nothing new.
create table turn_usage (
    session_id        uuid not null references call_session (session_id) on delete cascade,
    usage_key         text not null,
    model             text not null,
    prompt_tokens     bigint not null check (prompt_tokens >= 0),
    completion_tokens bigint not null check (completion_tokens >= 0),
    cached_tokens     bigint not null check (cached_tokens >= 0),
    created_at        timestamptz not null,
    primary key (session_id, usage_key)
);
