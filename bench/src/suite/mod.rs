//! The standard benchmark suite: every scenario direct to the mock upstream (once per upstream
//! API: OpenAI Chat Completions, and Anthropic Messages when the suite runs redial against it),
//! then through redial on each store, with redial's memory sampled; targets judged; JSON and
//! markdown written. A run through redial is compared with the direct run of the same scenario
//! and API.
//!
//! The mock runs in-process. For each store the suite creates a fresh database, starts
//! `redial serve` against it and the mock, runs every scenario, reads redial's peak RSS, stops
//! it with SIGTERM and drops the database.

mod machine;
mod redial;
mod report;
mod scenarios;
mod store;
mod targets;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde::Serialize;

pub use machine::{Machine, ProcessMemory, process_memory};
pub use redial::{ADMIN_KEY, API_KEY, RedialProcess, RedialSettings, resolve_binary};
pub use report::markdown;
pub use scenarios::{
    ProviderComparison, Role, Scenario, UpstreamHttp, provider_comparisons, smoke, standard,
};
pub use store::{PreparedStore, StoreKind, redact};

/// The upstream API redial speaks to the mock in a run (and the direct baseline speaks to it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// OpenAI Chat Completions (`[upstream]`): runs are labelled with the store alone.
    Openai,
    /// Anthropic Messages (a `[[providers]]` entry on the same mock): runs are labelled
    /// `<store>+anthropic`.
    Anthropic,
}

impl ProviderKind {
    /// The run's label on `store`.
    pub fn label(self, store: StoreKind) -> String {
        match self {
            Self::Openai => store.name().to_owned(),
            Self::Anthropic => format!("{}+anthropic", store.name()),
        }
    }

    /// The direct baseline's label: `direct`, or `direct+anthropic`.
    pub fn direct_label(self) -> String {
        match self {
            Self::Openai => "direct".to_owned(),
            Self::Anthropic => "direct+anthropic".to_owned(),
        }
    }

    /// The mock's endpoint of this API under `base_url` (`…/v1`), and how to read it.
    fn direct_target(self, base_url: &str) -> Target {
        let (path, api) = match self {
            Self::Openai => ("chat/completions", Api::Openai),
            Self::Anthropic => ("messages", Api::Anthropic),
        };
        Target {
            url: format!("{base_url}/{path}"),
            api_key: None,
            timeout: REQUEST_TIMEOUT,
            api,
        }
    }

    /// The configuration that routes every turn to this API of the mock at `base_url`, over
    /// `http` (the provider's `http` key) when set.
    fn config(self, base_url: &str, http: Option<&str>) -> Option<String> {
        match self {
            Self::Openai => None,
            Self::Anthropic => Some(format!(
                "[[providers]]\nname = \"anthropic\"\nkind = \"anthropic\"\nbase_url = {base_url:?}\n\
                 api_key = \"mock\"\n{}\n[[assistants]]\nid = \"default\"\nmodel = \"anthropic/mock\"\n",
                http.map(|http| format!("http = {http:?}\n"))
                    .unwrap_or_default()
            )),
        }
    }
}
pub use targets::{Comparison, TargetResult};

use crate::load::interleave::{self, Addition, Arm, InterleaveConfig, InterleaveReport};
use crate::load::{self, Api, LoadConfig, LoadReport, Target, WorkloadSpec};
use crate::mock::{MockConfig, MockUpstream};

/// Per-request timeout during the suite.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Pause between scenarios so connections from the last one drain.
const SETTLE: Duration = Duration::from_millis(500);

/// How the suite runs.
#[derive(Clone, Debug)]
pub struct SuiteOptions {
    /// The redial binary; `None` finds `target/{release,debug}/redial`.
    pub redial_bin: Option<PathBuf>,
    /// Postgres server to create the benchmark database on.
    pub postgres_url: String,
    /// Directory for `results.json`, `results.md`, configs and logs.
    pub out: PathBuf,
    /// Run the short CI version.
    pub smoke: bool,
    /// Stores to run redial on.
    pub stores: Vec<StoreKind>,
    /// Upstream APIs to run redial against, on every store.
    pub providers: Vec<ProviderKind>,
    /// Only measure the direct-to-mock baseline (no redial).
    pub direct_only: bool,
    /// Extra TOML appended to redial's generated config.
    pub extra_config: Option<String>,
}

/// Whether a run went straight to the mock or through redial.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    /// Load generator → mock.
    Direct,
    /// Load generator → redial → mock.
    Redial,
}

/// One scenario run against one target.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunRecord {
    /// Scenario name.
    pub scenario: String,
    /// Scenario role.
    pub role: Role,
    /// Direct or through redial.
    pub kind: TargetKind,
    /// The upstream API: what the direct run spoke to the mock, or redial upstream.
    pub provider: ProviderKind,
    /// Store redial ran on, labelled as the run (`sqlite`, `sqlite+anthropic`; `None` for
    /// direct runs).
    pub store: Option<String>,
    /// Highest redial `VmRSS` sampled during the run, bytes.
    pub rss_peak_bytes: Option<u64>,
    /// CPU used while the load ran (warm-up included), in cores (CPU seconds per second).
    pub cpu: CpuUse,
    /// The load report.
    pub report: LoadReport,
}

/// CPU used during a run, in cores: 1.0 is one core busy for the whole run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct CpuUse {
    /// redial's process (`None` for direct runs).
    pub redial_cores: Option<f64>,
    /// The benchmark process: load generator and mock upstream.
    pub bench_cores: Option<f64>,
}

impl RunRecord {
    /// `direct`, `direct+anthropic` or `redial/<store>`.
    pub fn target_name(&self) -> String {
        match &self.store {
            Some(store) => format!("redial/{store}"),
            None => self.provider.direct_label(),
        }
    }
}

/// One redial process's life.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RedialRecord {
    /// Store it ran on.
    pub store: String,
    /// Binary path.
    pub binary: String,
    /// Spawn to ready, milliseconds.
    pub startup_ms: u64,
    /// Memory after the last scenario (`VmHWM` is the peak over the whole life).
    pub memory_after: Option<ProcessMemory>,
    /// How it exited after SIGTERM.
    pub exit: String,
}

/// One interleaved comparison of the upstream APIs on one store.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ComparisonRecord {
    /// The comparison's name, e.g. `providers-c1`.
    pub name: String,
    /// The store both redial processes ran on (each on a database of its own).
    pub store: String,
    /// The mock's time to first token while it ran, milliseconds.
    pub mock_ttft_ms: f64,
    /// How redial spoke to the mock.
    pub upstream_http: UpstreamHttp,
    /// What was measured.
    pub report: InterleaveReport,
}

/// Everything a suite run produced; serialized as `results.json`.
#[derive(Clone, Debug, Serialize)]
pub struct SuiteResults {
    /// `standard` or `smoke`.
    pub suite: &'static str,
    /// Start time, Unix seconds.
    pub started_at: u64,
    /// The machine.
    pub machine: Machine,
    /// The scenarios as defined.
    pub scenarios: Vec<Scenario>,
    /// Every run.
    pub runs: Vec<RunRecord>,
    /// Every redial process.
    pub redial: Vec<RedialRecord>,
    /// Targets per store.
    pub targets: Vec<TargetResult>,
    /// The interleaved comparisons of the two upstream APIs, per store (run when both are).
    pub provider_comparisons: Vec<ComparisonRecord>,
    /// Problems that invalidate the run (errors, no successful request); non-empty → exit 1.
    pub hard_failures: Vec<String>,
}

/// Runs the suite, writes `results.json` and `results.md` into `options.out`, and returns the
/// results. A missing redial binary or an unwritable output directory is an error; failed
/// requests and stores that cannot be set up (e.g. no Postgres) are reported in
/// [`SuiteResults::hard_failures`].
pub async fn run(options: &SuiteOptions) -> anyhow::Result<SuiteResults> {
    std::fs::create_dir_all(&options.out)
        .with_context(|| format!("creating {}", options.out.display()))?;
    let binary = match options.direct_only {
        true => None,
        false => Some(resolve_binary(options.redial_bin.as_deref())?),
    };
    let scenarios = if options.smoke { smoke() } else { standard() };
    warn_on_low_file_limit(&scenarios);
    // The mock gets a thread of its own so its pacing does not queue behind the load generator.
    let mock = MockUpstream::start_isolated(([127, 0, 0, 1], 0).into(), MockConfig::default())?;
    mock.set_recording(false);
    let mut results = SuiteResults::new(options.smoke, scenarios);
    run_direct(&mock, &options.providers, &mut results).await?;
    if let Some(binary) = &binary {
        run_stores(options, binary, &mock, &mut results).await;
    }
    mock.shutdown();
    finish(&mut results);
    write_results(&options.out, &results)?;
    Ok(results)
}

impl SuiteResults {
    fn new(smoke: bool, scenarios: Vec<Scenario>) -> Self {
        Self {
            suite: if smoke { "smoke" } else { "standard" },
            started_at: unix_now(),
            machine: Machine::detect(),
            scenarios,
            runs: Vec::new(),
            redial: Vec::new(),
            targets: Vec::new(),
            provider_comparisons: Vec::new(),
            hard_failures: Vec::new(),
        }
    }
}

/// Every scenario straight to the mock, once per upstream API: the baselines.
async fn run_direct(
    mock: &MockUpstream,
    providers: &[ProviderKind],
    results: &mut SuiteResults,
) -> anyhow::Result<()> {
    for &provider in providers {
        let direct = provider.direct_target(&mock.base_url());
        let label = provider.direct_label();
        for scenario in results.scenarios.clone() {
            let (report, cpu) = run_scenario(mock, &scenario, &direct, &label, None).await?;
            let run = record(&scenario, provider, None, None, cpu, report);
            results.runs.push(run);
        }
    }
    Ok(())
}

/// Every scenario through redial, once per store. A store that cannot be set up fails the
/// suite (as a hard failure) but not the other stores.
async fn run_stores(
    options: &SuiteOptions,
    binary: &Path,
    mock: &MockUpstream,
    results: &mut SuiteResults,
) {
    // Only for redial's readiness checks; the load generator has its own client.
    let client = reqwest::Client::new();
    let scenarios = results.scenarios.clone();
    let context = StoreRun {
        options,
        binary,
        mock,
        client: &client,
        scenarios: &scenarios,
    };
    for &store in &options.stores {
        for &provider in &options.providers {
            if let Err(error) = context.run(store, provider, results).await {
                let label = provider.label(store);
                eprintln!("error: redial on {label}: {error:#}");
                results
                    .hard_failures
                    .push(format!("redial on {label}: {error:#}"));
            }
        }
    }
    let both = [ProviderKind::Openai, ProviderKind::Anthropic];
    if both.iter().all(|p| options.providers.contains(p)) {
        for &store in &options.stores {
            if let Err(error) = context.compare_providers(store, results).await {
                eprintln!("error: comparing the APIs on {}: {error:#}", store.name());
                results
                    .hard_failures
                    .push(format!("comparing the APIs on {}: {error:#}", store.name()));
            }
        }
    }
}

/// Judges targets and collects hard failures.
fn finish(results: &mut SuiteResults) {
    let stores: Vec<String> = results.redial.iter().map(|r| r.store.clone()).collect();
    results.targets = targets::evaluate(&results.runs, &stores);
    let comparisons: Vec<String> = results
        .provider_comparisons
        .iter()
        .flat_map(|c| {
            let name = format!("{} on {}", c.name, c.store);
            let failures = c.report.hard_failures();
            failures.into_iter().map(move |f| format!("{name}: {f}"))
        })
        .collect();
    results.hard_failures.extend(comparisons);
    let failures: Vec<String> = results
        .runs
        .iter()
        .flat_map(|run| {
            let target = run.target_name();
            let failures = run.report.hard_failures();
            failures.into_iter().map(move |f| format!("{target}: {f}"))
        })
        .collect();
    results.hard_failures.extend(failures);
}

/// Everything needed to run the scenarios through redial on one store.
struct StoreRun<'a> {
    options: &'a SuiteOptions,
    binary: &'a Path,
    mock: &'a MockUpstream,
    client: &'a reqwest::Client,
    scenarios: &'a [Scenario],
}

impl StoreRun<'_> {
    /// Creates the database, runs redial on it, and always stops redial and drops the database.
    async fn run(
        &self,
        store: StoreKind,
        provider: ProviderKind,
        results: &mut SuiteResults,
    ) -> anyhow::Result<()> {
        let label = provider.label(store);
        eprintln!("== redial on {label}");
        let prepared = PreparedStore::create(store, &self.options.postgres_url, &self.options.out)
            .await
            .with_context(|| format!("preparing the {} store", store.name()))?;
        let outcome = self.run_on(&label, provider, prepared.url(), results).await;
        let cleanup = prepared.cleanup().await;
        outcome?;
        cleanup.with_context(|| format!("cleaning up the {} store", store.name()))
    }

    async fn run_on(
        &self,
        label: &str,
        provider: ProviderKind,
        database_url: &str,
        results: &mut SuiteResults,
    ) -> anyhow::Result<()> {
        let settings = self.settings(provider, database_url, label.replace('+', "-"), None);
        let redial = RedialProcess::start(&settings, self.client).await?;
        let outcome = self.run_scenarios(&redial, label, provider, results).await;
        let memory_after = redial.memory().ok();
        let startup_ms = u64::try_from(redial.startup().as_millis()).unwrap_or(u64::MAX);
        let exit = redial.stop().await?;
        results.redial.push(RedialRecord {
            store: label.to_owned(),
            binary: self.binary.display().to_string(),
            startup_ms,
            memory_after,
            exit,
        });
        outcome
    }

    /// How to start redial on `database_url` speaking `provider`'s API to the mock (over
    /// `http` when set, else redial's default), with the suite's extra configuration; `name`
    /// names its config and log files.
    fn settings(
        &self,
        provider: ProviderKind,
        database_url: &str,
        name: String,
        http: Option<&str>,
    ) -> RedialSettings {
        let extra_config = [
            provider.config(&self.mock.base_url(), http),
            self.options.extra_config.clone(),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>();
        RedialSettings {
            binary: self.binary.to_path_buf(),
            database_url: database_url.to_owned(),
            upstream_base_url: self.mock.base_url(),
            upstream_http: match provider {
                ProviderKind::Openai => http.map(str::to_owned),
                ProviderKind::Anthropic => None,
            },
            workdir: self.options.out.clone(),
            name,
            extra_config: (!extra_config.is_empty()).then(|| extra_config.join("\n")),
        }
    }

    /// Two redial processes on `store` (a database each), one per upstream API, compared with
    /// each other and with the mock's two endpoints, request by request.
    async fn compare_providers(
        &self,
        store: StoreKind,
        results: &mut SuiteResults,
    ) -> anyhow::Result<()> {
        eprintln!("== the two APIs interleaved on {}", store.name());
        let mut prepared = Vec::new();
        let mut outcome = Ok(());
        for _ in [ProviderKind::Openai, ProviderKind::Anthropic] {
            match PreparedStore::create(store, &self.options.postgres_url, &self.options.out).await
            {
                Ok(created) => prepared.push(created),
                Err(error) => {
                    outcome = Err(error.context(format!("preparing the {} store", store.name())));
                    break;
                }
            }
        }
        if let [openai, anthropic] = &prepared[..] {
            outcome = self
                .compare_on(store, [openai.url(), anthropic.url()], results)
                .await;
        }
        for created in prepared {
            let cleanup = created.cleanup().await;
            if outcome.is_ok() {
                outcome =
                    cleanup.with_context(|| format!("cleaning up the {} store", store.name()));
            }
        }
        outcome
    }

    /// The comparisons on `store`, a pair of redial processes per upstream HTTP version.
    async fn compare_on(
        &self,
        store: StoreKind,
        database_urls: [&str; 2],
        results: &mut SuiteResults,
    ) -> anyhow::Result<()> {
        let comparisons = provider_comparisons(self.options.smoke);
        for http in [UpstreamHttp::Http1, UpstreamHttp::H2c] {
            let over: Vec<ProviderComparison> = comparisons
                .iter()
                .filter(|c| c.upstream_http == http)
                .cloned()
                .collect();
            self.compare_over(store, database_urls, http, over, results)
                .await?;
        }
        Ok(())
    }

    /// Runs `comparisons` with one redial per API on `store`, speaking `http` to the mock.
    async fn compare_over(
        &self,
        store: StoreKind,
        database_urls: [&str; 2],
        http: UpstreamHttp,
        comparisons: Vec<ProviderComparison>,
        results: &mut SuiteResults,
    ) -> anyhow::Result<()> {
        let mut processes = Vec::new();
        let providers = [ProviderKind::Openai, ProviderKind::Anthropic];
        for (provider, database_url) in providers.into_iter().zip(database_urls) {
            let name = format!(
                "compare-{}-{}",
                provider.label(store).replace('+', "-"),
                http.name()
            );
            let settings = self.settings(provider, database_url, name, http.config_value());
            match RedialProcess::start(&settings, self.client).await {
                Ok(process) => processes.push((provider, process)),
                Err(error) => {
                    stop_all(processes).await;
                    return Err(error);
                }
            }
        }
        // The baselines reach the mock as redial does: a platform would call a hosted API over
        // HTTP/2 too. Clients reach redial over HTTP/1.1, as the platforms do.
        let h2c = http == UpstreamHttp::H2c;
        let direct = |p: ProviderKind| match http {
            UpstreamHttp::Http1 => p.direct_label(),
            UpstreamHttp::H2c => format!("{}-{}", p.direct_label(), http.name()),
        };
        let mut arms: Vec<Arm> = providers
            .iter()
            .map(|&p| Arm {
                label: direct(p),
                target: p.direct_target(&self.mock.base_url()),
                h2c,
            })
            .collect();
        arms.extend(processes.iter().map(|(provider, process)| Arm {
            label: format!("redial/{}", provider.label(store)),
            target: Target {
                url: process.chat_url(),
                api_key: Some(API_KEY.to_owned()),
                timeout: REQUEST_TIMEOUT,
                api: Api::Openai,
            },
            h2c: false,
        }));
        let additions = providers
            .iter()
            .map(|&p| Addition {
                subject: format!("redial/{}", p.label(store)),
                baseline: direct(p),
            })
            .collect::<Vec<_>>();
        let mut outcome = Ok(());
        for comparison in comparisons {
            eprintln!("-- {} on {}", comparison.name, store.name());
            self.mock.set_config(comparison.mock.clone());
            let config = InterleaveConfig {
                label: format!(
                    "{} on {}, mock first token after {} ms, redial to the mock over {}",
                    comparison.name,
                    store.name(),
                    comparison.mock.ttft.as_millis(),
                    http.describe()
                ),
                arms: arms.clone(),
                additions: additions.clone(),
                duration: comparison.duration,
                warmup: comparison.warmup,
                workload: WorkloadSpec::default(),
                phase_jitter: comparison.phase_jitter,
            };
            match interleave::run(config).await {
                Ok(report) => results.provider_comparisons.push(ComparisonRecord {
                    name: comparison.name,
                    store: store.name().to_owned(),
                    mock_ttft_ms: comparison.mock.ttft.as_secs_f64() * 1_000.0,
                    upstream_http: http,
                    report,
                }),
                Err(error) => {
                    outcome = Err(error);
                    break;
                }
            }
            tokio::time::sleep(SETTLE).await;
        }
        stop_all(processes).await;
        outcome
    }

    async fn run_scenarios(
        &self,
        redial: &RedialProcess,
        store: &str,
        provider: ProviderKind,
        results: &mut SuiteResults,
    ) -> anyhow::Result<()> {
        let target = Target {
            url: redial.chat_url(),
            api_key: Some(API_KEY.to_owned()),
            timeout: REQUEST_TIMEOUT,
            api: Api::Openai,
        };
        let label = format!("redial/{store}");
        for scenario in self.scenarios {
            let sampler = redial.sample_memory();
            let run = run_scenario(self.mock, scenario, &target, &label, Some(redial.pid())).await;
            let rss = sampler.finish();
            let (report, cpu) = run?;
            let run = record(scenario, provider, Some(store), rss, cpu, report);
            results.runs.push(run);
        }
        Ok(())
    }
}

/// Stops redial processes, reporting (not failing on) one that does not stop cleanly.
async fn stop_all(processes: Vec<(ProviderKind, RedialProcess)>) {
    for (_, process) in processes {
        if let Err(error) = process.stop().await {
            eprintln!("warning: stopping redial: {error:#}");
        }
    }
}

async fn run_scenario(
    mock: &MockUpstream,
    scenario: &Scenario,
    target: &Target,
    label: &str,
    redial_pid: Option<u32>,
) -> anyhow::Result<(LoadReport, CpuUse)> {
    eprintln!("-- {} via {label}", scenario.name);
    mock.set_config(scenario.mock.clone());
    let config = LoadConfig {
        label: scenario.name.clone(),
        target: target.clone(),
        mode: scenario.mode.clone(),
        duration: scenario.duration,
        warmup: scenario.warmup,
        workload: scenario.workload.clone(),
        pacing: scenario.pacing,
    };
    let redial_pid = redial_pid.map(|pid| pid.to_string());
    let cpu_now = || {
        let redial = redial_pid
            .as_deref()
            .and_then(|pid| machine::cpu_seconds(pid).ok());
        (redial, machine::cpu_seconds("self").ok(), Instant::now())
    };
    let before = cpu_now();
    let report = load::run(config).await?;
    let after = cpu_now();
    let elapsed = after.2.duration_since(before.2).as_secs_f64();
    let cores =
        |a: Option<f64>, b: Option<f64>| Some((b? - a?) / elapsed).filter(|c| c.is_finite());
    let cpu = CpuUse {
        redial_cores: cores(before.0, after.0),
        bench_cores: cores(before.1, after.1),
    };
    tokio::time::sleep(SETTLE).await;
    Ok((report, cpu))
}

fn record(
    scenario: &Scenario,
    provider: ProviderKind,
    store: Option<&str>,
    rss_peak_bytes: Option<u64>,
    cpu: CpuUse,
    report: LoadReport,
) -> RunRecord {
    RunRecord {
        scenario: scenario.name.clone(),
        role: scenario.role,
        kind: if store.is_some() {
            TargetKind::Redial
        } else {
            TargetKind::Direct
        },
        provider,
        store: store.map(str::to_owned),
        rss_peak_bytes,
        cpu,
        report,
    }
}

fn write_results(out: &Path, results: &SuiteResults) -> anyhow::Result<()> {
    let json_path = out.join("results.json");
    let json = serde_json::to_string_pretty(results).context("serializing results")?;
    std::fs::write(&json_path, json).with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = out.join("results.md");
    std::fs::write(&md_path, markdown(results))
        .with_context(|| format!("writing {}", md_path.display()))
}

/// Each stream through redial holds two sockets in this process (client and mock side) and two
/// in redial, which inherits the limit; warn when the open-file limit is below that.
fn warn_on_low_file_limit(scenarios: &[Scenario]) {
    let streams = scenarios
        .iter()
        .map(|s| match s.mode {
            load::LoadMode::Closed { concurrency } => concurrency,
            load::LoadMode::Open { rate, .. } => rate as usize / 10,
        })
        .max()
        .unwrap_or(0);
    let needed = (streams * 2 + 256) as u64;
    if let Some(limit) = machine::open_files_limit().filter(|&limit| limit < needed) {
        eprintln!(
            "warning: open-file limit {limit} is below the ~{needed} this suite needs; \
             raise it with `ulimit -n {needed}`"
        );
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
