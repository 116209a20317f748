-- Change notices for the per-instance call cache (src/storage/changes.rs): every committed
-- change to what a turn's memory shows — a session's answers, status, attempt, caller or prior
-- call snapshot; a caller's profile or last-call analysis — and every deletion notifies channel
-- `redial_changes` with the row's id. Activity-only updates (a stored turn, a call counted on its
-- caller) do not: no prompt reads them, and every turn makes one.

create function redial_notify_change() returns trigger
language plpgsql as $$
begin
    if tg_table_name = 'caller' then
        perform pg_notify('redial_changes', old.caller_id::text);
    else
        perform pg_notify('redial_changes', old.session_id::text);
    end if;
    return null;
end;
$$;

create trigger caller_changed after update on caller for each row
    when (old.name is distinct from new.name
          or old.language is distinct from new.language
          or old.notes is distinct from new.notes
          or old.last_summary is distinct from new.last_summary
          or old.last_sentiment is distinct from new.last_sentiment
          or old.last_action is distinct from new.last_action
          or old.phone is distinct from new.phone)
    execute function redial_notify_change();

create trigger caller_deleted after delete on caller for each row
    execute function redial_notify_change();

create trigger call_session_changed after update on call_session for each row
    when (old.answers is distinct from new.answers
          or old.status is distinct from new.status
          or old.attempt is distinct from new.attempt
          or old.caller_id is distinct from new.caller_id
          or old.prior_calls is distinct from new.prior_calls
          or old.prior_call_at is distinct from new.prior_call_at
          or old.assistant_id is distinct from new.assistant_id
          or old.ended_at is distinct from new.ended_at)
    execute function redial_notify_change();

create trigger call_session_deleted after delete on call_session for each row
    execute function redial_notify_change();
