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
