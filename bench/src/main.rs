//! `redial-bench`: the mock upstream, the load generator and the standard suite.

mod cli;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser as _;
use redial_bench::fault::{self, FaultOptions};
use redial_bench::load::interleave::{self, Addition, Arm, InterleaveConfig};
use redial_bench::load::{self, LoadConfig, LoadMode, LoadReport, Target, WorkloadSpec};
use redial_bench::mock::{MockConfig, MockUpstream};
use redial_bench::report::{Row, runs_table};
use redial_bench::suite::{self, SuiteOptions};

use cli::{Cli, Command, CompareArgs, FaultArgs, LoadArgs, MockArgs, SuiteArgs};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = runtime(cli.threads).and_then(|runtime| {
        runtime.block_on(async {
            match cli.command {
                Command::Mock(args) => serve_mock(&args).await,
                Command::Load(args) => run_load(args).await,
                Command::Compare(args) => run_compare(args).await,
                Command::Suite(args) => run_suite(args).await,
                Command::Fault(args) => run_fault(args).await,
            }
        })
    });
    match outcome {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads.max(1));
    }
    builder
        .enable_all()
        .build()
        .context("building the tokio runtime")
}

async fn serve_mock(args: &MockArgs) -> anyhow::Result<ExitCode> {
    let config = MockConfig {
        ttft: millis(args.ttft_ms)?,
        inter_token: millis(args.inter_token_ms)?,
        tokens: args.tokens,
        token: args.token.clone(),
    };
    let mock = MockUpstream::start_on(args.listen, config).await?;
    mock.set_recording(false);
    mock.set_prompt_cache(!args.no_prompt_cache);
    println!("mock upstream listening; base_url = {}", mock.base_url());
    tokio::signal::ctrl_c()
        .await
        .context("waiting for Ctrl-C")?;
    mock.shutdown();
    Ok(ExitCode::SUCCESS)
}

async fn run_load(args: LoadArgs) -> anyhow::Result<ExitCode> {
    let mode = match (args.concurrency, args.rate) {
        (Some(concurrency), _) => LoadMode::Closed { concurrency },
        (None, Some(rate)) => LoadMode::Open {
            rate,
            max_in_flight: args.max_in_flight,
        },
        (None, None) => anyhow::bail!("pass --concurrency or --rate"),
    };
    let config = LoadConfig {
        label: args.label,
        target: Target {
            url: args.url,
            api_key: args.api_key,
            timeout: seconds(args.timeout_secs)?,
            api: args.api,
        },
        mode,
        duration: seconds(args.duration_secs)?,
        warmup: seconds(args.warmup_secs)?,
        workload: WorkloadSpec {
            model: args.model,
            callers: args.callers,
            turns: args.turns,
        },
        pacing: args.pacing_ms.map(millis).transpose()?,
    };
    let report = load::run(config).await?;
    print_load_report(&report, args.json_out.as_deref())?;
    Ok(exit_code(&report.hard_failures()))
}

async fn run_compare(args: CompareArgs) -> anyhow::Result<ExitCode> {
    let timeout = seconds(args.timeout_secs)?;
    if let Some(unknown) = args
        .h2c
        .iter()
        .find(|label| !args.targets.iter().any(|(target, _, _)| target == *label))
    {
        anyhow::bail!("--h2c {unknown:?} names no --target");
    }
    let arms = args
        .targets
        .into_iter()
        .map(|(label, api, url)| Arm {
            h2c: args.h2c.contains(&label),
            label,
            target: Target {
                url,
                api_key: args.api_key.clone(),
                timeout,
                api,
            },
        })
        .collect();
    let additions = args
        .additions
        .into_iter()
        .map(|(subject, baseline)| Addition { subject, baseline })
        .collect();
    let config = InterleaveConfig {
        label: args.label,
        arms,
        additions,
        duration: seconds(args.duration_secs)?,
        warmup: seconds(args.warmup_secs)?,
        workload: WorkloadSpec {
            model: args.model,
            callers: args.callers,
            turns: args.turns,
        },
        phase_jitter: millis(args.phase_jitter_ms)?,
    };
    let report = interleave::run(config).await?;
    let json = serde_json::to_string_pretty(&report)?;
    if let Some(path) = &args.json_out {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{json}\n");
    println!("{}", interleave::markdown(&report));
    Ok(exit_code(&report.hard_failures()))
}

fn print_load_report(
    report: &LoadReport,
    json_out: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    if let Some(path) = json_out {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{json}\n");
    let row = Row {
        target: "",
        report,
        rss_peak_bytes: None,
        server_cpu_cores: None,
        bench_cpu_cores: None,
    };
    println!("{}", runs_table(&[row]));
    Ok(())
}

async fn run_suite(args: SuiteArgs) -> anyhow::Result<ExitCode> {
    let extra_config = args
        .extra_config
        .map(|path| {
            std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
        })
        .transpose()?;
    let options = SuiteOptions {
        redial_bin: args.redial_bin,
        postgres_url: args.postgres_url,
        out: args.out,
        smoke: args.smoke,
        stores: args.stores,
        providers: args.providers,
        direct_only: args.direct_only,
        extra_config,
    };
    let results = suite::run(&options).await?;
    println!("{}", suite::markdown(&results));
    eprintln!(
        "results written to {} and {}",
        options.out.join("results.json").display(),
        options.out.join("results.md").display()
    );
    Ok(exit_code(&results.hard_failures))
}

async fn run_fault(args: FaultArgs) -> anyhow::Result<ExitCode> {
    let (outages, warmup) = if args.smoke {
        (vec![3.0], 2.0)
    } else {
        (args.outages, args.warmup_secs)
    };
    anyhow::ensure!(args.callers > 0, "--callers must be at least 1");
    anyhow::ensure!(
        args.turns_per_sec.is_finite() && args.turns_per_sec > 0.0,
        "--turns-per-sec must be positive"
    );
    let mut shape = FaultOptions::standard_shape();
    shape.callers = args.callers;
    shape.turn_interval = seconds(args.callers as f64 / args.turns_per_sec)?;
    let options = FaultOptions {
        redial_bin: suite::resolve_binary(args.redial_bin.as_deref())?,
        postgres_url: args.postgres_url,
        out: args.out,
        outages: outages
            .into_iter()
            .map(seconds)
            .collect::<anyhow::Result<_>>()?,
        warmup: seconds(warmup)?,
        shape,
    };
    let results = fault::run(&options).await?;
    println!("{}", fault::markdown(&results));
    eprintln!(
        "results written to {} and {}",
        options.out.join("results.json").display(),
        options.out.join("results.md").display()
    );
    Ok(exit_code(&results.hard_failures))
}

/// Success unless there were hard failures (errors, no successful request). Missed targets do
/// not fail the run.
fn exit_code(hard_failures: &[String]) -> ExitCode {
    for failure in hard_failures {
        eprintln!("hard failure: {failure}");
    }
    if hard_failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn millis(ms: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(ms / 1_000.0).with_context(|| format!("invalid duration {ms} ms"))
}

fn seconds(secs: f64) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs).with_context(|| format!("invalid duration {secs} s"))
}
