//! The analyses table: [`AnalysisStore`].

use async_trait::async_trait;
use uuid::Uuid;

use super::{Analysis, CallerAnalysisUpdate, NewAnalysis, Recorded, StoreResult};

/// What was concluded about a call after it ended, one record per session and source.
#[async_trait]
pub trait AnalysisStore: Send + Sync {
    /// Stores an analysis once per `(session_id, source)`. When new and `caller_update` is given,
    /// updates that caller's last summary, sentiment and open action in the same transaction.
    async fn save_analysis(
        &self,
        analysis: &NewAnalysis,
        caller_update: Option<&CallerAnalysisUpdate>,
    ) -> StoreResult<Recorded>;

    /// A session's analyses, oldest first.
    async fn list_analyses(&self, session_id: Uuid) -> StoreResult<Vec<Analysis>>;
}
