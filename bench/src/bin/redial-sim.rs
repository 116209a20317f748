//! `redial-sim`: plays the scenario files under `bench/scenarios/` as whole calls against redial
//! and the mock upstream, and prints what callers would have suffered (markdown; JSON on request).
//!
//! By default it starts redial itself (`--redial-bin`, else `target/release/redial`, else
//! `target/debug/redial`) on a fresh SQLite database (or `--database-url`), so scenarios can
//! SIGKILL and restart it. `--redial-url` plays against a redial someone else runs; it must use
//! the config `--print-config` prints, pointed at the mock `--mock-listen` opens.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use redial_bench::mock::{MockConfig, MockUpstream};
use redial_bench::sim::gateway::{Gateway, OwnedSettings};
use redial_bench::sim::webhook::WebhookSecrets;
use redial_bench::sim::{self, Simulator, scenario};
use redial_bench::suite::resolve_binary;

#[derive(Debug, Parser)]
#[command(
    name = "redial-sim",
    about = "Plays whole calls against redial from scenario files"
)]
struct Args {
    /// Directory of scenario files (`*.toml`).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios"))]
    scenarios: PathBuf,
    /// Only the scenarios marked `ci = true`.
    #[arg(long)]
    ci: bool,
    /// Only scenarios whose name contains this.
    #[arg(long)]
    filter: Option<String>,
    /// The redial binary to start (default: target/release/redial, else target/debug/redial).
    #[arg(long, env = "REDIAL_BIN")]
    redial_bin: Option<PathBuf>,
    /// Database of the started redial (default: a fresh SQLite file in the work directory).
    #[arg(long)]
    database_url: Option<String>,
    /// Work directory for the started redial's config, log, journal and database.
    #[arg(long)]
    workdir: Option<PathBuf>,
    /// Play against this running redial (`http://host:port`) instead of starting one.
    #[arg(long, requires = "mock_listen")]
    redial_url: Option<String>,
    /// The API key of `--redial-url`.
    #[arg(long, default_value = sim::API_KEY)]
    api_key: String,
    /// Where the mock upstream listens (default: a free loopback port).
    #[arg(long)]
    mock_listen: Option<SocketAddr>,
    /// Print the redial config the simulator needs (for `--redial-url`) and exit.
    #[arg(long)]
    print_config: bool,
    /// Also write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also write the markdown report here.
    #[arg(long)]
    markdown: Option<PathBuf>,
    /// Exit 0 even when some call failed.
    #[arg(long)]
    no_fail: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    match run(Args::parse()).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let secrets = WebhookSecrets::default();
    if args.print_config {
        let mock = args
            .mock_listen
            .map_or("http://127.0.0.1:PORT/v1".to_owned(), |a| {
                format!("http://{a}/v1")
            });
        let config = sim::redial_config("sqlite://redial-sim.db", "journal", &mock, &secrets);
        write_stdout(&format!("[server]\n{config}"))?;
        return Ok(ExitCode::SUCCESS);
    }
    let scenarios = scenario::load_dir(&args.scenarios)?;
    let scenarios = sim::select(scenarios, args.ci, args.filter.as_deref());
    let listen = args
        .mock_listen
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)));
    let mock = MockUpstream::start_isolated(listen, MockConfig::default())?;
    let gateway = match &args.redial_url {
        Some(url) => Gateway::external(url, &args.api_key),
        None => start_owned(&args, &mock, &secrets).await?,
    };
    let calls: usize = scenarios.iter().map(scenario::Scenario::call_count).sum();
    eprintln!(
        "redial-sim: {} scenarios, {calls} calls, against {}",
        scenarios.len(),
        gateway.base_url()
    );
    let simulator = Simulator::new(gateway, mock, secrets);
    let report = simulator.run(&scenarios).await;
    simulator.gateway().shutdown().await;
    let markdown = report.to_markdown();
    write_stdout(&markdown)?;
    if let Some(path) = &args.markdown {
        std::fs::write(path, &markdown).with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &args.json {
        std::fs::write(path, report.to_json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let failed = report.totals.failed_calls > 0;
    Ok(if failed && !args.no_fail {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

async fn start_owned(
    args: &Args,
    mock: &MockUpstream,
    secrets: &WebhookSecrets,
) -> anyhow::Result<Gateway> {
    let binary = resolve_binary(args.redial_bin.as_deref())?;
    let workdir = args
        .workdir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("redial-sim-{}", std::process::id())));
    std::fs::create_dir_all(&workdir).with_context(|| format!("creating {}", workdir.display()))?;
    let database_url = args.database_url.clone().unwrap_or_else(|| {
        let db = workdir.join("redial-sim.db");
        let _ = std::fs::remove_file(&db);
        format!("sqlite://{}", db.display())
    });
    let journal = workdir.join("journal");
    let config = sim::redial_config(
        &database_url,
        &journal.display().to_string(),
        &mock.base_url(),
        secrets,
    );
    eprintln!(
        "redial-sim: starting {} (log in {})",
        binary.display(),
        workdir.display()
    );
    Gateway::start(
        OwnedSettings {
            binary,
            workdir,
            config,
        },
        sim::API_KEY,
    )
    .await
}

fn write_stdout(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}").context("writing to stdout")
}
