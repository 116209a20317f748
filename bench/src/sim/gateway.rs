//! The redial under test: either a process the simulator owns (so a scenario can SIGKILL it and
//! start it again on the same database and journal) or an address it was given.

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// How long redial may take to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Interval between readiness polls.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// Environment variables that would override the generated config; removed from redial's env.
const OVERRIDING_ENV: [&str; 3] = ["DATABASE_URL", "OPENAI_API_KEY", "REDIAL_CONFIG"];

/// How to start an owned redial.
#[derive(Clone, Debug)]
pub struct OwnedSettings {
    /// The `redial` binary.
    pub binary: PathBuf,
    /// Directory for the config, the log and the outage journal.
    pub workdir: PathBuf,
    /// The whole config except `[server] listen`, which is added per start.
    pub config: String,
}

/// Where redial is and, when owned, its process.
#[derive(Debug)]
pub struct Gateway {
    api_key: String,
    base_url: Mutex<String>,
    owned: Option<tokio::sync::Mutex<Owned>>,
}

#[derive(Debug)]
struct Owned {
    settings: OwnedSettings,
    child: Option<Child>,
    starts: u32,
}

impl Gateway {
    /// A redial someone else runs at `base_url` (`http://host:port`); it cannot be killed.
    pub fn external(base_url: &str, api_key: &str) -> Self {
        Self {
            api_key: api_key.to_owned(),
            base_url: Mutex::new(base_url.trim_end_matches('/').to_owned()),
            owned: None,
        }
    }

    /// Starts an owned redial and waits until it is ready.
    pub async fn start(settings: OwnedSettings, api_key: &str) -> anyhow::Result<Self> {
        let mut owned = Owned {
            settings,
            child: None,
            starts: 0,
        };
        let base_url = owned.spawn().await?;
        Ok(Self {
            api_key: api_key.to_owned(),
            base_url: Mutex::new(base_url),
            owned: Some(tokio::sync::Mutex::new(owned)),
        })
    }

    /// `http://127.0.0.1:PORT` of the current process.
    pub fn base_url(&self) -> String {
        self.base_url
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The API key redial accepts.
    pub fn api_key(&self) -> &str {
        &self.api_key
    }

    /// Whether [`Gateway::kill_and_restart`] is possible.
    pub fn owned(&self) -> bool {
        self.owned.is_some()
    }

    /// SIGKILLs redial (no drain, no shutdown) and starts it again on the same database and
    /// journal, on a new port.
    pub async fn kill_and_restart(&self) -> anyhow::Result<()> {
        let Some(owned) = &self.owned else {
            bail!("redial is not owned by the simulator: start it with --redial-bin to kill it");
        };
        let mut owned = owned.lock().await;
        if let Some(mut child) = owned.child.take() {
            child.start_kill().context("SIGKILL to redial")?;
            child
                .wait()
                .await
                .context("waiting for the killed redial")?;
        }
        let base_url = owned.spawn().await?;
        *self.base_url.lock().unwrap_or_else(PoisonError::into_inner) = base_url;
        Ok(())
    }

    /// Stops an owned redial (SIGKILL: the simulation is over and its database is thrown away).
    pub async fn shutdown(&self) {
        if let Some(owned) = &self.owned {
            let mut owned = owned.lock().await;
            if let Some(mut child) = owned.child.take() {
                let _ = child.kill().await;
            }
        }
    }

    /// The log of the owned process, for error messages.
    pub async fn log_path(&self) -> Option<PathBuf> {
        let owned = self.owned.as_ref()?.lock().await;
        Some(owned.log_path())
    }
}

impl Owned {
    fn log_path(&self) -> PathBuf {
        self.settings.workdir.join("redial.log")
    }

    /// Writes the config with a free port, spawns redial (appending to its log) and waits for
    /// `GET /readyz`.
    async fn spawn(&mut self) -> anyhow::Result<String> {
        let port = free_port()?;
        let config_path = self.settings.workdir.join("redial-sim.toml");
        let config = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\n{}",
            self.settings.config
        );
        std::fs::write(&config_path, config)
            .with_context(|| format!("writing {}", config_path.display()))?;
        let log_path = self.log_path();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let child = spawn(&self.settings.binary, &config_path, log)?;
        self.child = Some(child);
        self.starts += 1;
        let base_url = format!("http://127.0.0.1:{port}");
        self.wait_ready(&base_url).await?;
        Ok(base_url)
    }

    async fn wait_ready(&mut self, base_url: &str) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let url = format!("{base_url}/readyz");
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait().context("polling redial")?
            {
                bail!(
                    "redial exited during startup ({status}); see {}",
                    self.log_path().display()
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
                    "redial not ready within {READY_TIMEOUT:?}; see {}",
                    self.log_path().display()
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

fn spawn(binary: &Path, config: &Path, log: std::fs::File) -> anyhow::Result<Child> {
    let stderr = log.try_clone().context("duplicating the log handle")?;
    let mut command = Command::new(binary);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(log)
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
