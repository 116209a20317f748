//! The retention sweeper: deletes what is past its `[retention]` window, in small batches.
//!
//! Each batch is one short statement of at most `retention.batch_size` rows, with
//! `retention.batch_pause_ms` between batches, so a large backlog (the first sweep after a
//! window is set) never holds locks for long nor starves the calls' writes. Every sweep that
//! deleted something appends one audit entry (`actor: retention`, `action: retention_sweep`,
//! the counts in its details); an inactive caller is erased like an erasure request, with its
//! own tombstone. Counted in `redial_retention_deleted_total{kind}` and
//! `redial_retention_sweeps_total{outcome}`.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::{Admin, AdminError};
use crate::config::RetentionSettings;
use crate::state::AppState;
use crate::storage::{AuditAction, AuditActor};

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct SweepCounts {
    /// Turns deleted.
    pub turns: u64,
    /// Calls whose platform transcript, messages and recording URLs were removed.
    pub transcripts: u64,
    /// Raw webhook events deleted.
    pub webhook_events: u64,
    /// Finished jobs deleted.
    pub jobs: u64,
    /// Inactive callers erased.
    pub callers: u64,
}

impl SweepCounts {
    fn total(&self) -> u64 {
        self.turns + self.transcripts + self.webhook_events + self.jobs + self.callers
    }
}

/// The instant `days` before `now` (`None` for a window of 0: keep).
fn cutoff(now: DateTime<Utc>, days: u64) -> Option<DateTime<Utc>> {
    let days = i64::try_from(days).ok().filter(|d| *d > 0)?;
    now.checked_sub_signed(chrono::Duration::days(days))
}

impl Admin<'_> {
    /// One sweep as of `now`: deletes everything past its window, batch by batch, and audits
    /// it. Stops early (with what it did so far) when `stop` is cancelled.
    pub async fn sweep(
        &self,
        now: DateTime<Utc>,
        stop: &CancellationToken,
    ) -> Result<SweepCounts, AdminError> {
        let r = &self.settings.retention;
        let mut counts = SweepCounts::default();
        let store = self.store;
        if let Some(before) = cutoff(now, r.transcripts_days) {
            counts.turns = batches(r, stop, "turns", || {
                store.delete_turns_before(before, r.batch_size)
            })
            .await?;
            counts.transcripts = batches(r, stop, "transcripts", || {
                store.scrub_transcripts_before(before, r.batch_size)
            })
            .await?;
        }
        if let Some(before) = cutoff(now, r.webhook_bodies_days) {
            counts.webhook_events = batches(r, stop, "webhook_events", || {
                store.delete_webhook_events_before(before, r.batch_size)
            })
            .await?;
            counts.jobs = batches(r, stop, "jobs", || {
                store.delete_finished_jobs_before(before, r.batch_size)
            })
            .await?;
        }
        if let Some(before) = cutoff(now, r.inactive_callers_days) {
            counts.callers = self.erase_inactive(before, stop).await?;
        }
        if counts.total() > 0 {
            let details = serde_json::to_value(counts).unwrap_or_else(|_| json!({}));
            self.audit(
                &AuditActor::Retention,
                AuditAction::RetentionSweep,
                "retention policy",
                (None, None),
                details,
            )
            .await?;
        }
        Ok(counts)
    }

    async fn erase_inactive(
        &self,
        before: DateTime<Utc>,
        stop: &CancellationToken,
    ) -> Result<u64, AdminError> {
        let r = &self.settings.retention;
        let actor = AuditActor::Retention;
        let mut erased = 0;
        while !stop.is_cancelled() {
            let callers = self.store.inactive_callers(before, r.batch_size).await?;
            if callers.is_empty() {
                break;
            }
            for caller in &callers {
                // Forced: a caller unseen for the whole window has no call in progress.
                self.erase_key(&actor, &caller.phone, true).await?;
                erased += 1;
            }
            metrics::counter!("redial_retention_deleted_total", "kind" => "callers")
                .increment(callers.len() as u64);
            tokio::time::sleep(Duration::from_millis(r.batch_pause_ms)).await;
        }
        Ok(erased)
    }
}

/// Runs `batch` until it deletes fewer than a full batch (or `stop`), pausing between batches;
/// returns the total.
async fn batches<F, Fut>(
    r: &RetentionSettings,
    stop: &CancellationToken,
    kind: &'static str,
    mut batch: F,
) -> Result<u64, AdminError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = crate::storage::StoreResult<u64>>,
{
    let mut total = 0;
    while !stop.is_cancelled() {
        let done = batch().await?;
        total += done;
        metrics::counter!("redial_retention_deleted_total", "kind" => kind).increment(done);
        if done < u64::from(r.batch_size) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(r.batch_pause_ms)).await;
    }
    Ok(total)
}

/// Starts the sweeper on `state.workers` when a window is set: a first sweep a minute after
/// start (not competing with start-up), then every `retention.sweep_interval_secs`. Stops at
/// shutdown.
pub fn spawn(state: &AppState) {
    if !state.settings.retention.enabled() {
        return;
    }
    let state = state.clone();
    state.workers.clone().spawn(async move {
        let token = state.shutdown.clone();
        let interval = Duration::from_secs(state.settings.retention.sweep_interval_secs);
        let mut next = Duration::from_secs(60).min(interval);
        loop {
            tokio::select! {
                () = tokio::time::sleep(next) => {}
                () = token.cancelled() => return,
            }
            next = interval;
            let admin = Admin {
                store: state.store.as_ref(),
                settings: &state.settings,
                journal: Some(state.engine.journal()),
                engine: Some(&state.engine),
            };
            let started = std::time::Instant::now();
            match admin.sweep(Utc::now(), &token).await {
                Ok(counts) => {
                    metrics::counter!("redial_retention_sweeps_total", "outcome" => "ok").increment(1);
                    tracing::info!(?counts, elapsed = ?started.elapsed(), "retention sweep");
                }
                Err(e) => {
                    metrics::counter!("redial_retention_sweeps_total", "outcome" => "error").increment(1);
                    tracing::warn!(error = %e, "retention sweep failed; retrying at the next interval");
                }
            }
        }
    });
}
