//! The `redial` binary: parse the command line, load the configuration, dispatch.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use redial::cli::{Cli, Command};
use redial::config::{self, Settings};
use redial::{startup, telemetry};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = cli.command.overrides();
    let settings = match config::load(cli.config.as_deref(), std::env::vars(), &overrides) {
        Ok(settings) => settings,
        Err(e) => return fail(&format!("configuration error: {e}")),
    };
    let result = match cli.command {
        Command::CheckConfig(_) => check_config(&settings),
        Command::Migrate(_) => {
            let _logs = telemetry::init(settings.server.log_format);
            startup::migrate(&settings).await
        }
        Command::Serve(_) => {
            let _logs = telemetry::init(settings.server.log_format);
            serve(settings).await
        }
        command @ (Command::Calls(_) | Command::Callers(_)) => {
            redial::commands::run(&settings, command)
                .await
                .and_then(|json| Ok(writeln!(std::io::stdout().lock(), "{json}")?))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&format!("{e:#}")),
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let shutdown = startup::shutdown_signal()?;
    let app = startup::Application::build(settings).await?;
    app.run_until_stopped(shutdown).await
}

fn check_config(settings: &Settings) -> anyhow::Result<()> {
    let text = toml::to_string_pretty(settings)?;
    let mut out = std::io::stdout().lock();
    let limits = redial::server::limits::summary(settings);
    writeln!(out, "# configuration is valid; secrets are masked")?;
    for warning in startup::config_warnings(settings) {
        writeln!(out, "# warning ({}): {}", warning.key, warning.message)?;
    }
    writeln!(out, "{limits}{text}")?;
    Ok(())
}

/// Prints a one-line error to stderr and returns a failing exit code.
fn fail(message: &str) -> ExitCode {
    let _ = writeln!(std::io::stderr(), "redial: {message}");
    ExitCode::FAILURE
}
