//! What the suite learns from `/proc`: the machine it runs on, a process's memory, and the
//! open-file limit. Linux only; elsewhere the fields read as unknown.

use std::fs;

use anyhow::Context as _;
use serde::Serialize;

/// The machine a suite ran on.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub cpus: usize,
    /// CPU model name.
    pub cpu_model: Option<String>,
    /// Total memory, bytes.
    pub memory_bytes: Option<u64>,
    /// Kernel release.
    pub kernel: Option<String>,
    /// Soft limit on open files of this process (inherited by redial).
    pub open_files_limit: Option<u64>,
}

impl Machine {
    /// Reads the current machine's description.
    pub fn detect() -> Self {
        Self {
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            cpu_model: read_field("/proc/cpuinfo", "model name").map(|v| v.trim().to_owned()),
            memory_bytes: read_field("/proc/meminfo", "MemTotal").and_then(|v| parse_kb(&v)),
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .ok()
                .map(|v| v.trim().to_owned()),
            open_files_limit: open_files_limit(),
        }
    }
}

/// A process's resident memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ProcessMemory {
    /// Current resident set size (`VmRSS`), bytes.
    pub rss_bytes: u64,
    /// Peak resident set size over the process's life (`VmHWM`), bytes.
    pub peak_rss_bytes: u64,
}

/// Reads `VmRSS` and `VmHWM` from `/proc/<pid>/status`.
pub fn process_memory(pid: u32) -> anyhow::Result<ProcessMemory> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let field = |name: &str| {
        field_value(&status, name)
            .and_then(parse_kb)
            .with_context(|| format!("no {name} in {path}"))
    };
    Ok(ProcessMemory {
        rss_bytes: field("VmRSS")?,
        peak_rss_bytes: field("VmHWM")?,
    })
}

/// CPU time (user + system, all threads) a process has used, from `/proc/<pid>/stat` (`self`
/// for this process). Linux reports it in clock ticks of 1/100 s (`USER_HZ`), so the
/// resolution is 10 ms.
pub fn cpu_seconds(pid: &str) -> anyhow::Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_cpu_ticks(&stat)
        .map(|ticks| ticks as f64 / 100.0)
        .with_context(|| format!("no CPU times in {path}"))
}

/// `utime + stime` (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its closing parenthesis.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The soft `Max open files` limit of this process.
pub fn open_files_limit() -> Option<u64> {
    let limits = fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn read_field(path: &str, name: &str) -> Option<String> {
    let text = fs::read_to_string(path).ok()?;
    field_value(&text, name).map(str::to_owned)
}

/// The value after `name:` on the first line that starts with it.
fn field_value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == name).then_some(value.trim())
    })
}

/// Parses `"123 kB"` into bytes.
fn parse_kb(value: &str) -> Option<u64> {
    let kb: u64 = value.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let stat = "4242 (redial (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1234 56 0 0 20 0 \
                    9 0 100 1000000 500 18446744073709551615";
        assert_eq!(parse_cpu_ticks(stat), Some(1290));
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert!(cpu_seconds("self").is_ok_and(|s| s >= 0.0));
    }

    #[test]
    fn own_memory_and_limits_are_readable() {
        let memory = process_memory(std::process::id()).expect("own status");
        assert!(memory.rss_bytes > 0 && memory.peak_rss_bytes >= memory.rss_bytes);
        assert!(open_files_limit().is_some_and(|n| n > 0));
        assert!(Machine::detect().cpus > 0);
    }

    #[test]
    fn status_fields_are_parsed() {
        let status = "Name:\tredial\nVmHWM:\t   51200 kB\nVmRSS:\t   40960 kB\n";
        assert_eq!(
            field_value(status, "VmRSS").and_then(parse_kb),
            Some(40960 * 1024)
        );
        assert_eq!(field_value(status, "VmSwap"), None);
    }
}
