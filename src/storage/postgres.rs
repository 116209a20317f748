//! The Postgres store (stub; replaced by the real implementation).
use super::*;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;
use uuid::Uuid;

/// Postgres implementation of [`Store`].
#[derive(Debug)]
pub struct PostgresStore;

impl PostgresStore {
    /// Opens the pool.
    pub async fn connect(_url: &str, _options: &ConnectOptions) -> StoreResult<Self> {
        Ok(Self)
    }
}

#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }
    async fn migrate(&self) -> StoreResult<()> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn ping(&self) -> StoreResult<()> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn close(&self) {}
    async fn upsert_caller(&self, _phone: &str, _now: DateTime<Utc>) -> StoreResult<Caller> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn get_caller(&self, _caller_id: Uuid) -> StoreResult<Option<Caller>> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn get_caller_by_phone(&self, _phone: &str) -> StoreResult<Option<Caller>> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn update_caller(
        &self,
        _caller_id: Uuid,
        _patch: &CallerPatch,
        _now: DateTime<Utc>,
    ) -> StoreResult<Caller> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn create_session(&self, _new: &NewSession) -> StoreResult<(CallSession, bool)> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn get_session(&self, _session_id: Uuid) -> StoreResult<Option<CallSession>> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn load_call(
        &self,
        _platform: Platform,
        _call_key: &str,
    ) -> StoreResult<Option<(CallSession, Option<Caller>)>> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn find_resumable(
        &self,
        _caller_id: Uuid,
        _assistant_id: &str,
        _started_since: DateTime<Utc>,
        _stale_before: DateTime<Utc>,
        _exclude: Option<Uuid>,
    ) -> StoreResult<Option<CallSession>> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn record_answer(
        &self,
        _session_id: Uuid,
        _field: &str,
        _value: &str,
        _required: &[String],
        _now: DateTime<Utc>,
    ) -> StoreResult<AnswerOutcome> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn touch_session(
        &self,
        _session_id: Uuid,
        _model: Option<&str>,
        _now: DateTime<Utc>,
    ) -> StoreResult<()> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn close_session(
        &self,
        _session_id: Uuid,
        _close: &CloseSession,
    ) -> StoreResult<CallSession> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn append_turns(&self, _session_id: Uuid, _turns: &[NewTurn]) -> StoreResult<u64> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn list_turns(&self, _session_id: Uuid) -> StoreResult<Vec<Turn>> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn record_webhook(
        &self,
        _event: &NewWebhookEvent,
        _job: Option<&NewJob>,
    ) -> StoreResult<Recorded> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn enqueue_job(&self, _job: &NewJob) -> StoreResult<Recorded> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn claim_job(
        &self,
        _worker: &str,
        _now: DateTime<Utc>,
        _lease: Duration,
    ) -> StoreResult<Option<Job>> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn complete_job(&self, _job_id: Uuid, _now: DateTime<Utc>) -> StoreResult<()> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn fail_job(
        &self,
        _job_id: Uuid,
        _error: &str,
        _retry_at: Option<DateTime<Utc>>,
        _now: DateTime<Utc>,
    ) -> StoreResult<()> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn get_job(&self, _job_id: Uuid) -> StoreResult<Option<Job>> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn save_analysis(
        &self,
        _analysis: &NewAnalysis,
        _caller_update: Option<&CallerAnalysisUpdate>,
    ) -> StoreResult<Recorded> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn list_analyses(&self, _session_id: Uuid) -> StoreResult<Vec<Analysis>> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn append_audit(&self, _entries: &[NewAudit]) -> StoreResult<()> {
        Err(StoreError::Conflict("not implemented".into()))
    }
    async fn list_audit(&self, _caller_id: Uuid, _limit: i64) -> StoreResult<Vec<AuditEntry>> {
        Err(StoreError::Conflict("not implemented".into()))
    }
}
