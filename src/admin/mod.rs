//! What an operator may do with what redial collected: look at calls and callers, export a
//! caller's data, erase it, read its access log ([`views`], [`erase`]), and expire it by policy
//! ([`retention`]). The admin API (`src/http/admin/`) and the `redial calls` / `redial callers`
//! commands are thin shells around these functions, so both behave alike and are audited alike.
//!
//! Every read and write here appends an audit entry naming the actor (`admin:<key name>` for
//! the API, `cli:<user>` for the commands, `retention` for the sweeper).

pub mod erase;
pub mod retention;
pub mod subject;
pub mod views;

use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use crate::config::Settings;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::journal::Journal;
use crate::storage::{AuditAction, AuditActor, NewAudit, Store, StoreError};

/// What the operations need: the store and settings, and — inside a running gateway — the
/// outage journal and the engine (for calls live on this instance).
#[derive(Clone, Copy)]
pub struct Admin<'a> {
    /// The store.
    pub store: &'a dyn Store,
    /// The configuration.
    pub settings: &'a Settings,
    /// The outage journal of this process, when it has one open.
    pub journal: Option<&'a Journal>,
    /// The engine of a running gateway (its live-call registry).
    pub engine: Option<&'a Engine>,
}

/// Who acts: `admin:<key name>`, `cli:<user>`, `retention`.
pub type Actor = AuditActor;

/// Why an operation failed, mapped once onto the API's error shape.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// A parameter is invalid (400).
    #[error("{message}")]
    Invalid {
        /// The parameter.
        param: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Nothing is known under that id (404).
    #[error("{0}")]
    NotFound(String),
    /// The operation conflicts with a call in progress (409).
    #[error("{0}")]
    Conflict(String),
    /// The operation cannot run now or without configuration (503).
    #[error("{0}")]
    Unavailable(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Invalid { param, message } => ApiError::invalid_param(param, message),
            AdminError::NotFound(m) => ApiError::NotFound(m),
            AdminError::Conflict(m) => ApiError::Conflict(m),
            AdminError::Unavailable(m) => ApiError::Unavailable(m),
            AdminError::Store(e) => e.into(),
        }
    }
}

impl Admin<'_> {
    /// The caller key of a raw number or id, or a 400 naming `param`.
    pub fn subject(&self, raw: &str, param: &'static str) -> Result<String, AdminError> {
        subject::caller_key(raw, &self.settings.memory.default_region).ok_or_else(|| {
            AdminError::Invalid {
                param,
                message: format!(
                    "{raw:?} is neither a phone number nor a caller id (numbers without a \
                     country code are read in memory.default_region)"
                ),
            }
        })
    }

    /// Appends one audit entry.
    pub async fn audit(
        &self,
        actor: &Actor,
        action: AuditAction,
        reason: &str,
        (caller_id, session_id): (Option<Uuid>, Option<Uuid>),
        details: Value,
    ) -> Result<(), AdminError> {
        let entry = NewAudit {
            entry_key: Some(Uuid::now_v7()),
            caller_id,
            session_id,
            actor: actor.clone(),
            action,
            reason: reason.into(),
            details,
            created_at: Utc::now(),
        };
        self.store.append_audit(&[entry]).await?;
        Ok(())
    }
}

/// An RFC 3339 time parameter.
pub fn parse_time(param: &'static str, raw: &str) -> Result<DateTime<Utc>, AdminError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| AdminError::Invalid {
            param,
            message: format!("{param} must be an RFC 3339 time such as 2026-11-30T12:00:00Z: {e}"),
        })
}
