//! Command-line arguments (clap derive only; the work happens in `main.rs` and [`crate::startup`]).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Override;

/// redial: a custom-LLM gateway for voice agents.
#[derive(Debug, Parser)]
#[command(name = "redial", version, about)]
pub struct Cli {
    /// Configuration file (TOML). Environment variables REDIAL_<SECTION>__<KEY> override it.
    #[arg(long, global = true, env = "REDIAL_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply migrations and start the gateway.
    Serve(ServeArgs),
    /// Apply pending database migrations and exit (idempotent).
    Migrate(DatabaseArgs),
    /// Load and validate the configuration, print it with secrets masked, and exit.
    CheckConfig(ServeArgs),
    /// Look at calls (audited as `cli:<user>`).
    #[command(subcommand)]
    Calls(CallsCommand),
    /// Export or erase what redial holds about a caller (audited as `cli:<user>`).
    #[command(subcommand)]
    Callers(CallersCommand),
}

/// `redial calls …`
#[derive(Debug, Subcommand)]
pub enum CallsCommand {
    /// Print a call in full as JSON: session, answers, turns, analyses, webhook events,
    /// resumption chain, usage (as `GET /admin/v1/calls/{session_id}`).
    Show {
        /// The session id.
        session_id: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

/// `redial callers …`
#[derive(Debug, Subcommand)]
pub enum CallersCommand {
    /// Print everything redial holds about a caller as one JSON document (as
    /// `GET /admin/v1/callers/{phone}/export`).
    Export {
        /// The caller's number in any format, or their caller id.
        phone: String,
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Erase a caller and every copy of their data, keeping a tombstone (as
    /// `DELETE /admin/v1/callers/{phone}`). Needs `server.erasure_key`, and the outage journal
    /// directory free (stop redial, or use the admin API of the running redial).
    Erase {
        /// The caller's number in any format, or their caller id.
        phone: String,
        /// Erase even while a call of theirs is in progress.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        database: DatabaseArgs,
    },
}

impl Command {
    /// The configuration overrides the command's flags make.
    pub fn overrides(&self) -> Vec<Override> {
        match self {
            Self::Serve(args) | Self::CheckConfig(args) => args.overrides(),
            Self::Migrate(args)
            | Self::Calls(CallsCommand::Show { database: args, .. })
            | Self::Callers(
                CallersCommand::Export { database: args, .. }
                | CallersCommand::Erase { database: args, .. },
            ) => args.overrides(),
        }
    }
}

/// Flags of `serve` and `check-config`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides `server.listen`).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Database flags.
#[derive(Debug, clap::Args)]
pub struct DatabaseArgs {
    /// Database URL (overrides `database.url` and DATABASE_URL).
    #[arg(long, value_name = "URL")]
    pub database_url: Option<String>,
}

impl ServeArgs {
    /// The configuration overrides these flags make.
    pub fn overrides(&self) -> Vec<Override> {
        let mut out = self.database.overrides();
        if let Some(listen) = self.listen {
            out.push(Override {
                key: "server.listen",
                value: listen.to_string(),
                flag: "--listen",
            });
        }
        out
    }
}

impl DatabaseArgs {
    /// The configuration overrides these flags make.
    pub fn overrides(&self) -> Vec<Override> {
        self.database_url
            .iter()
            .map(|url| Override {
                key: "database.url",
                value: url.clone(),
                flag: "--database-url",
            })
            .collect()
    }
}
