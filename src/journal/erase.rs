//! Erasure in the outage journal: a caller's erasure must not be undone by a replayed record,
//! nor leave their data in `rejected.log`.
//!
//! - While records wait for replay (`backlog > 0`), an erasure is refused: replaying them after
//!   it would store the caller's turns, answers or webhooks again. The operator retries once
//!   the backlog is 0 (`/readyz` shows it), normally seconds after the database is back.
//! - Applied records stay in `journal.log` only until it is compacted; an erasure compacts it
//!   first, so no applied record of the caller remains.
//! - `rejected.log` keeps records the database refused for good, for an operator to look at:
//!   every line holding one of the erasure's needles (the number's text forms, the caller id,
//!   their session ids) is removed; the file is rewritten atomically.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Write};
use std::sync::PoisonError;

use super::Journal;

/// What an erasure did in the journal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct JournalErasure {
    /// Whether this process has a journal.
    pub enabled: bool,
    /// Lines removed from `rejected.log`.
    pub rejected_removed: u64,
}

impl Journal {
    /// Refuses (with the number of waiting records) while anything waits for replay; otherwise
    /// compacts the log and removes every `rejected.log` line holding one of `needles`.
    pub async fn erase(&self, needles: Vec<String>) -> io::Result<Result<JournalErasure, u64>> {
        let backlog = self.backlog();
        if backlog > 0 {
            return Ok(Err(backlog));
        }
        let Some(log) = self.0.log.clone() else {
            return Ok(Ok(JournalErasure::default()));
        };
        tokio::task::spawn_blocking(move || {
            let mut log = log.lock().unwrap_or_else(PoisonError::into_inner);
            log.compact()?;
            let removed = scrub(&log.rejected_path(), &needles)?;
            Ok(Ok(JournalErasure {
                enabled: true,
                rejected_removed: removed,
            }))
        })
        .await
        .unwrap_or_else(|e| Err(io::Error::other(e)))
    }
}

/// Rewrites `path` without the lines holding any of `needles`; returns how many went.
fn scrub(path: &std::path::Path, needles: &[String]) -> io::Result<u64> {
    let file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut kept = Vec::new();
    let mut removed = 0;
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        let text = String::from_utf8_lossy(&line);
        if needles
            .iter()
            .any(|n| !n.is_empty() && text.contains(n.as_str()))
        {
            removed += 1;
        } else {
            kept.extend_from_slice(&line);
            kept.push(b'\n');
        }
    }
    if removed == 0 {
        return Ok(0);
    }
    let temporary = path.with_extension("log.tmp");
    let mut out = File::create(&temporary)?;
    out.write_all(&kept)?;
    out.sync_all()?;
    std::fs::rename(&temporary, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrubbing_removes_exactly_the_lines_with_a_needle() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rejected.log");
        std::fs::write(
            &path,
            "{\"a\":\"+14155550123\"}\n{\"b\":\"other\"}\n{\"c\":\"s-1\"}\n",
        )
        .unwrap();
        let removed = scrub(&path, &["+14155550123".into(), "s-1".into()]).unwrap();
        assert_eq!(removed, 2);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"b\":\"other\"}\n"
        );
        assert_eq!(
            scrub(&dir.path().join("missing.log"), &["x".into()]).unwrap(),
            0
        );
    }
}
