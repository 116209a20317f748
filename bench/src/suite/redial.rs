//! Runs the redial binary for the suite: writes its TOML config, spawns `redial serve --config`,
//! waits for `GET /readyz`, samples its memory, and stops it with SIGTERM.

use std::fmt::Write as _;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::machine::{ProcessMemory, process_memory};

/// The bearer token the suite configures redial with and sends.
pub const API_KEY: &str = "bench-key";
/// The admin key (named `bench`) the benchmarked redial accepts for `/metrics`.
pub const ADMIN_KEY: &str = "bench-admin-key";
/// How long redial may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long redial may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Interval between readiness polls and between memory samples.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Environment variables that would override the generated config; removed from redial's env.
const OVERRIDING_ENV: [&str; 3] = ["DATABASE_URL", "OPENAI_API_KEY", "REDIAL_CONFIG"];

/// Where to find the redial binary: `explicit` (flag or `REDIAL_BIN`), else
/// `target/release/redial`, else `target/debug/redial`.
pub fn resolve_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(path) = explicit {
        if path.is_file() {
            return Ok(path.to_path_buf());
        }
        bail!("redial binary {} does not exist", path.display());
    }
    let root = workspace_root();
    ["release", "debug"]
        .iter()
        .map(|profile| root.join("target").join(profile).join("redial"))
        .find(|path| path.is_file())
        .context("no redial binary: build it (`cargo build --release`) or pass --redial-bin")
}

/// The workspace root: `CARGO_MANIFEST_DIR/..` at build time if it still exists, else the
/// current directory.
fn workspace_root() -> PathBuf {
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    if built.join("Cargo.toml").is_file() {
        built
    } else {
        PathBuf::from(".")
    }
}

/// What redial is started with.
#[derive(Clone, Debug)]
pub struct RedialSettings {
    /// The binary.
    pub binary: PathBuf,
    /// `[database] url`.
    pub database_url: String,
    /// `[upstream] base_url` (the mock).
    pub upstream_base_url: String,
    /// `[upstream] http` (`auto`, `http1`, `http2`); `None` leaves redial's default.
    pub upstream_http: Option<String>,
    /// Directory for the config file and the log.
    pub workdir: PathBuf,
    /// Name used for the config and log files (e.g. `sqlite`).
    pub name: String,
    /// Extra TOML appended to the generated config.
    pub extra_config: Option<String>,
}

/// A running redial process. Killed if dropped without [`RedialProcess::stop`].
#[derive(Debug)]
pub struct RedialProcess {
    child: Child,
    pid: u32,
    base_url: String,
    startup: Duration,
    log_path: PathBuf,
}

impl RedialProcess {
    /// Writes the config, starts redial on a free port and waits until `GET /readyz` is 200.
    pub async fn start(
        settings: &RedialSettings,
        client: &reqwest::Client,
    ) -> anyhow::Result<Self> {
        let port = free_port()?;
        let config_path = settings
            .workdir
            .join(format!("redial-{}.toml", settings.name));
        std::fs::write(&config_path, config_toml(settings, port))
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log_path = settings
            .workdir
            .join(format!("redial-{}.log", settings.name));
        let started = Instant::now();
        let child = spawn(&settings.binary, &config_path, &log_path)?;
        let pid = child.id().context("redial exited at once")?;
        let mut process = Self {
            child,
            pid,
            base_url: format!("http://127.0.0.1:{port}"),
            startup: Duration::ZERO,
            log_path,
        };
        process.wait_ready(client).await?;
        process.startup = started.elapsed();
        Ok(process)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `http://127.0.0.1:PORT/v1/chat/completions`.
    pub fn chat_url(&self) -> String {
        format!("{}/v1/chat/completions", self.base_url)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Time from spawn to ready.
    pub fn startup(&self) -> Duration {
        self.startup
    }

    /// Current and peak resident memory.
    pub fn memory(&self) -> anyhow::Result<ProcessMemory> {
        process_memory(self.pid)
    }

    /// Samples the resident memory every 50 ms until the returned sampler is finished.
    pub fn sample_memory(&self) -> MemorySampler {
        MemorySampler::start(self.pid)
    }

    /// Sends SIGTERM and waits for exit (killing after 15 s). Returns how it exited.
    pub async fn stop(mut self) -> anyhow::Result<String> {
        let signalled = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await
            .context("running kill -TERM")?;
        if !signalled.success() {
            bail!("kill -TERM {} failed: {signalled}", self.pid);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => Ok(status.context("waiting for redial")?.to_string()),
            Err(_) => {
                self.child.kill().await.context("killing redial")?;
                Ok(format!(
                    "killed after not exiting within {STOP_TIMEOUT:?} of SIGTERM"
                ))
            }
        }
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) -> anyhow::Result<()> {
        let url = format!("{}/readyz", self.base_url);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().context("polling redial")? {
                bail!(
                    "redial exited during startup ({status}); {}",
                    self.log_tail()
                );
            }
            let ready = client
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await;
            if ready.is_ok_and(|response| response.status().is_success()) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "redial not ready within {READY_TIMEOUT:?}; {}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        format!("log {}:\n{tail}", self.log_path.display())
    }
}

/// The generated config: listen address, API key, database and upstream, plus any extra TOML.
fn config_toml(settings: &RedialSettings, port: u16) -> String {
    // Each run its own outage journal, beside its other files (not in the working directory).
    let journal = settings.workdir.join(format!("journal-{}", settings.name));
    // A JSON string literal is a valid TOML basic string (same escapes), so serde_json quotes.
    let quote = |s: &str| serde_json::Value::from(s).to_string();
    let mut toml = String::new();
    // Writing to a String cannot fail.
    let _ = write!(
        toml,
        "[server]\nlisten = {}\napi_keys = [{}]\nadmin_keys = [{}]\n\n[database]\nurl = {}\n\
         journal_dir = {}\n\n[upstream]\nbase_url = {}\napi_key = \"mock\"\n",
        quote(&format!("127.0.0.1:{port}")),
        quote(API_KEY),
        quote(&format!("bench:{ADMIN_KEY}")),
        quote(&settings.database_url),
        quote(&journal.display().to_string()),
        quote(&settings.upstream_base_url),
    );
    if let Some(http) = &settings.upstream_http {
        let _ = writeln!(toml, "http = {}", quote(http));
    }
    if let Some(extra) = &settings.extra_config {
        toml.push('\n');
        toml.push_str(extra);
        toml.push('\n');
    }
    toml
}

fn spawn(binary: &Path, config: &Path, log: &Path) -> anyhow::Result<Child> {
    let stdout =
        std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let stderr = stdout.try_clone().context("duplicating the log handle")?;
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true);
    for (key, _) in std::env::vars_os() {
        let overrides = key
            .to_str()
            .is_some_and(|key| key.starts_with("REDIAL_") || OVERRIDING_ENV.contains(&key));
        if overrides {
            command.env_remove(&key);
        }
    }
    if std::env::var_os("RUST_LOG").is_none() {
        command.env("RUST_LOG", "warn");
    }
    command
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))
}

/// A free loopback port: bind port 0, read it, release it.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Tracks the highest `VmRSS` of a process while a scenario runs.
#[derive(Debug)]
pub struct MemorySampler {
    peak: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl MemorySampler {
    fn start(pid: u32) -> Self {
        let peak = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn(sample(pid, Arc::clone(&peak)));
        Self { peak, task }
    }

    /// Stops sampling and returns the highest `VmRSS` seen, bytes (`None` if never read).
    pub fn finish(self) -> Option<u64> {
        self.task.abort();
        let peak = self.peak.load(Ordering::Relaxed);
        (peak > 0).then_some(peak)
    }
}

async fn sample(pid: u32, peak: Arc<AtomicU64>) {
    let mut ticks = tokio::time::interval(POLL_INTERVAL);
    loop {
        ticks.tick().await;
        if let Ok(memory) = process_memory(pid) {
            peak.fetch_max(memory.rss_bytes, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_the_documented_toml_with_escaped_values() {
        let settings = RedialSettings {
            binary: PathBuf::from("redial"),
            database_url: "sqlite:///tmp/a \"b\"/bench.db".into(),
            upstream_base_url: "http://127.0.0.1:9/v1".into(),
            upstream_http: Some("http2".into()),
            workdir: PathBuf::from("."),
            name: "sqlite".into(),
            extra_config: Some("[memory]\nread_budget_ms = 50".into()),
        };
        let toml = config_toml(&settings, 4242);
        assert_eq!(
            toml,
            "[server]\nlisten = \"127.0.0.1:4242\"\napi_keys = [\"bench-key\"]\n\
             admin_keys = [\"bench:bench-admin-key\"]\n\n\
             [database]\nurl = \"sqlite:///tmp/a \\\"b\\\"/bench.db\"\n\
             journal_dir = \"./journal-sqlite\"\n\n\
             [upstream]\nbase_url = \"http://127.0.0.1:9/v1\"\napi_key = \"mock\"\n\
             http = \"http2\"\n\n\
             [memory]\nread_budget_ms = 50\n"
        );
    }

    #[test]
    fn a_missing_explicit_binary_is_an_error() {
        assert!(resolve_binary(Some(Path::new("/nonexistent/redial"))).is_err());
    }
}
