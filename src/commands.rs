//! `redial calls show`, `redial callers export|erase`: the admin operations ([`crate::admin`])
//! straight on the configured database, audited as `cli:<user>` (`$USER`), printed as the admin
//! API's JSON.

use anyhow::Context;
use uuid::Uuid;

use crate::admin::{Actor, Admin, AdminError};
use crate::cli::{CallersCommand, CallsCommand, Command};
use crate::config::Settings;
use crate::journal::Journal;

/// Runs an admin command; returns its JSON output.
pub async fn run(settings: &Settings, command: Command) -> anyhow::Result<String> {
    let store = crate::startup::open_store(settings).await?;
    store
        .migrate()
        .await
        .context("applying database migrations failed")?;
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let actor = Actor::Cli(user);
    let mut admin = Admin {
        store: store.as_ref(),
        settings,
        journal: None,
        engine: None,
    };
    let result = match command {
        Command::Calls(CallsCommand::Show { session_id, .. }) => {
            let id = Uuid::try_parse(&session_id)
                .with_context(|| format!("{session_id:?} is not a session id (a UUID)"))?;
            to_json(&admin.call(&actor, id).await)
        }
        Command::Callers(CallersCommand::Export { phone, .. }) => {
            to_json(&admin.export(&actor, &phone).await)
        }
        Command::Callers(CallersCommand::Erase { phone, force, .. }) => {
            let journal = open_journal(settings).await?;
            admin.journal = Some(&journal);
            let report = admin.erase(&actor, &phone, force).await;
            journal.close().await;
            to_json(&report)
        }
        other => Err(anyhow::anyhow!("not an admin command: {other:?}")),
    };
    store.close().await;
    result
}

fn to_json<T: serde::Serialize>(result: &Result<T, AdminError>) -> anyhow::Result<String> {
    match result {
        Ok(value) => Ok(serde_json::to_string_pretty(value)?),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

/// The outage journal, which an erasure must cover: refused while a running redial holds it.
async fn open_journal(settings: &Settings) -> anyhow::Result<Journal> {
    crate::startup::open_journal(settings).await.context(
        "an erasure must also cover the outage journal: erase through the admin API of the \
         redial that holds it (DELETE /admin/v1/callers/{phone}), or stop it first",
    )
}
