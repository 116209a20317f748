//! Post-call analyses and the audit log.

use super::*;
use redial::storage::{
    Analysis, AnalysisSource, AuditAction, AuditActor, CallerAnalysisUpdate, NewAnalysis, NewAudit,
    Recorded,
};

on_both_backends!(
    save_analysis_stores_once_per_source_and_updates_the_caller_only_when_new,
    save_analysis_stores_a_none_action_as_no_open_action,
    save_analysis_of_an_unknown_session_is_not_found,
    list_audit_returns_a_callers_entries_newest_first_up_to_the_limit,
);

fn analysis(
    session_id: Uuid,
    source: &str,
    summary: &str,
    created_at: DateTime<Utc>,
) -> NewAnalysis {
    NewAnalysis {
        analysis_id: Uuid::now_v7(),
        session_id,
        source: AnalysisSource::from(source.to_owned()),
        summary: summary.to_owned(),
        urgency: Some(2),
        action: Some("call back".to_owned()),
        sentiment: Some("positive".to_owned()),
        raw: json!({ "summary": summary, "urgency": 2 }),
        model: Some("gpt-test".to_owned()),
        created_at,
    }
}

fn caller_update(caller_id: Uuid, summary: &str, action: Option<&str>) -> CallerAnalysisUpdate {
    CallerAnalysisUpdate {
        caller_id,
        summary: summary.to_owned(),
        sentiment: Some("positive".to_owned()),
        action: action.map(str::to_owned),
        now: at(200),
    }
}

async fn save_analysis_stores_once_per_source_and_updates_the_caller_only_when_new(
    store: Arc<dyn Store>,
) {
    // Arrange
    let (caller_id, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let ours = analysis(session.session_id, "redial", "Asked about a loan.", at(100));
    let ours_again = analysis(session.session_id, "redial", "Rewritten summary.", at(150));
    let platforms = analysis(session.session_id, "vapi", "Loan enquiry.", at(160));

    // Act
    let first = store
        .save_analysis(
            &ours,
            Some(&caller_update(
                caller_id,
                "Asked about a loan.",
                Some("call back"),
            )),
        )
        .await
        .expect("save");
    let repeat = store
        .save_analysis(
            &ours_again,
            Some(&caller_update(caller_id, "Rewritten summary.", None)),
        )
        .await
        .expect("save again");
    let other_source = store
        .save_analysis(&platforms, None)
        .await
        .expect("save vapi");

    // Assert
    assert_eq!(first, Recorded::New(ours.analysis_id));
    assert_eq!(repeat, Recorded::Duplicate);
    assert_eq!(other_source, Recorded::New(platforms.analysis_id));
    let caller = store
        .get_caller(caller_id)
        .await
        .expect("get")
        .expect("caller");
    assert_eq!(caller.last_summary.as_deref(), Some("Asked about a loan."));
    assert_eq!(caller.last_sentiment.as_deref(), Some("positive"));
    assert_eq!(caller.last_action.as_deref(), Some("call back"));
    assert_eq!(caller.updated_at, at(200));
    let listed = store.list_analyses(session.session_id).await.expect("list");
    assert_eq!(listed, [stored(&ours), stored(&platforms)]);
}

async fn save_analysis_stores_a_none_action_as_no_open_action(store: Arc<dyn Store>) {
    // Arrange
    let (caller_id, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let new = analysis(session.session_id, "redial", "Just checking.", at(100));

    // Act
    store
        .save_analysis(
            &new,
            Some(&caller_update(caller_id, "Just checking.", Some("none"))),
        )
        .await
        .expect("save");

    // Assert
    let caller = store
        .get_caller(caller_id)
        .await
        .expect("get")
        .expect("caller");
    assert_eq!(caller.last_action, None);
    assert_eq!(caller.last_summary.as_deref(), Some("Just checking."));
}

async fn save_analysis_of_an_unknown_session_is_not_found(store: Arc<dyn Store>) {
    // Act
    let result = store
        .save_analysis(&analysis(Uuid::now_v7(), "redial", "x", at(0)), None)
        .await;

    // Assert
    assert!(
        matches!(result, Err(StoreError::NotFound)),
        "got {result:?}"
    );
}

async fn list_audit_returns_a_callers_entries_newest_first_up_to_the_limit(store: Arc<dyn Store>) {
    // Arrange
    let caller = store
        .upsert_caller(PHONE, at(0))
        .await
        .expect("upsert")
        .caller_id;
    let other = store
        .upsert_caller(OTHER_PHONE, at(0))
        .await
        .expect("upsert")
        .caller_id;
    let entry = |caller_id: Option<Uuid>, reason: &str, secs: i64| NewAudit {
        entry_key: None,
        caller_id,
        session_id: None,
        actor: AuditActor::Engine(Platform::Vapi),
        action: AuditAction::Read,
        reason: reason.to_owned(),
        details: json!({ "fields": ["name"] }),
        created_at: at(secs),
    };
    let entries = [
        entry(Some(caller), "first", 1),
        entry(Some(caller), "third", 3),
        entry(Some(caller), "second", 2),
        entry(Some(other), "other caller", 4),
        entry(None, "no caller", 5),
    ];

    // Act
    store.append_audit(&entries).await.expect("append");
    store.append_audit(&[]).await.expect("append nothing");
    let all = store.list_audit(caller, 10).await.expect("list");
    let limited = store.list_audit(caller, 2).await.expect("list");

    // Assert
    let reasons: Vec<&str> = all.iter().map(|e| e.reason.as_str()).collect();
    assert_eq!(reasons, ["third", "second", "first"]);
    assert_eq!(limited, all[..2]);
    let newest = &all[0];
    assert_eq!(newest.caller_id, Some(caller));
    assert_eq!(
        (&newest.actor, &newest.action),
        (&AuditActor::Engine(Platform::Vapi), &AuditAction::Read)
    );
    assert_eq!(newest.details, json!({ "fields": ["name"] }));
    assert_eq!(newest.created_at, at(3));
    assert_eq!(store.list_audit(other, 10).await.expect("list").len(), 1);
}

fn stored(new: &NewAnalysis) -> Analysis {
    Analysis {
        analysis_id: new.analysis_id,
        session_id: new.session_id,
        source: new.source.clone(),
        summary: new.summary.clone(),
        urgency: new.urgency,
        action: new.action.clone(),
        sentiment: new.sentiment.clone(),
        raw: new.raw.clone(),
        model: new.model.clone(),
        created_at: new.created_at,
    }
}
