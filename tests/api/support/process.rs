//! The real `redial` binary as a child process: for command-line behaviour, signals and kills.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_redial"))
}

/// A command for the binary with JSON logs and no inherited configuration variables.
pub fn command(dir: &Path) -> Command {
    let mut command = Command::new(binary());
    command.current_dir(dir).kill_on_drop(true);
    for (key, _) in std::env::vars() {
        if key.starts_with("REDIAL_") || key == "DATABASE_URL" || key == "OPENAI_API_KEY" {
            command.env_remove(key);
        }
    }
    command
        .env("RUST_LOG", "info")
        .env("REDIAL_SERVER__LOG_FORMAT", "json");
    command
}

/// Like [`command`], but the binary runs under an open-file limit of `nofile`, soft and hard (so
/// redial cannot raise it), set by the shell that then `exec`s it.
pub fn limited_command(dir: &Path, nofile: u64) -> Command {
    let mut command = command(dir);
    let std = command.as_std_mut();
    let mut limited = Command::new("bash");
    limited
        .arg("-c")
        .arg(format!(
            "ulimit -Hn {nofile} -Sn {nofile} && exec \"$0\" \"$@\""
        ))
        .arg(binary())
        .current_dir(dir)
        .kill_on_drop(true);
    for (key, value) in std.get_envs() {
        match value {
            Some(value) => limited.env(key, value),
            None => limited.env_remove(key),
        };
    }
    limited
}

/// Runs the binary to completion.
pub async fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    command(dir).args(args).output().await.expect("run redial")
}

/// A running `redial serve`.
pub struct Server {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    /// The log entries (JSON) it wrote before it listened.
    pub startup: Vec<Value>,
    logs: mpsc::UnboundedReceiver<String>,
    /// Set to leave stderr unread (a stalled log collector): its pipe fills and stays full.
    stall_logs: Arc<AtomicBool>,
}

impl Server {
    /// Starts `redial [args…]` (which must serve on `127.0.0.1:0` or another free address) and
    /// waits until it logs that it listens.
    pub async fn start(dir: &Path, args: &[&str]) -> Self {
        Self::start_command(command(dir), args).await
    }

    /// Like [`Server::start`], with the command to run (see [`limited_command`]).
    pub async fn start_command(mut command: Command, args: &[&str]) -> Self {
        let mut child = command
            .args(args)
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redial");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, mut logs) = mpsc::unbounded_channel();
        let stall_logs = Arc::new(AtomicBool::new(false));
        let stalled = Arc::clone(&stall_logs);
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if stalled.load(Ordering::Relaxed) {
                    // Holds the pipe open, never reading it again.
                    std::future::pending::<()>().await;
                }
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut startup = Vec::new();
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = logs.recv().await {
                let Ok(entry) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if entry["message"] == "redial listening" {
                    return entry["addr"].as_str().and_then(|a| a.parse().ok());
                }
                startup.push(entry);
            }
            None
        })
        .await
        .ok()
        .flatten()
        .expect("redial did not report its address");
        Self {
            child,
            addr,
            startup,
            logs,
            stall_logs,
        }
    }

    /// `http://ADDR{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// How many log lines received since the last call have a message containing `text`.
    pub fn count_logs(&mut self, text: &str) -> usize {
        let mut count = 0;
        while let Ok(line) = self.logs.try_recv() {
            let entry = serde_json::from_str::<Value>(&line).unwrap_or_default();
            if entry["message"].as_str().is_some_and(|m| m.contains(text)) {
                count += 1;
            }
        }
        count
    }

    /// The next log entry whose message is `message`, waiting up to `wait` for it; the entries
    /// before it are passed over. `None` when none came in time.
    pub async fn next_log(&mut self, message: &str, wait: Duration) -> Option<Value> {
        let logs = &mut self.logs;
        let found = tokio::time::timeout(wait, async {
            while let Some(line) = logs.recv().await {
                let entry = serde_json::from_str::<Value>(&line).unwrap_or_default();
                if entry["message"] == message {
                    return Some(entry);
                }
            }
            None
        });
        found.await.ok().flatten()
    }

    /// Stops reading the server's stderr from its next line on, keeping the pipe open: what a
    /// stalled log collector does. The pipe's buffer (64 KiB on Linux) then fills.
    pub fn stall_logs(&self) {
        self.stall_logs.store(true, Ordering::Relaxed);
    }

    /// SIGKILL: no shutdown, no drain.
    pub async fn kill(mut self) {
        self.child.kill().await.expect("kill redial");
    }

    /// SIGTERM, then waits for the exit.
    pub async fn terminate(mut self) -> ExitStatus {
        let pid = self.child.id().expect("pid").to_string();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await
            .expect("kill -TERM");
        assert!(status.success());
        let exit = tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("redial exits after SIGTERM")
            .expect("wait");
        while self.logs.try_recv().is_ok() {}
        exit
    }
}
