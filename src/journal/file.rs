//! The journal's files: an append-only log of records (one JSON line each, fsynced before an
//! append returns), a cursor naming the first record not yet applied to the database, and a
//! file of records the database rejected for good.
//!
//! Everything here is blocking I/O: the [`super::Journal`] calls it from
//! `tokio::task::spawn_blocking`, one caller at a time (a mutex around [`Log`]).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

const LOG: &str = "journal.log";
const CURSOR: &str = "cursor.json";
const REJECTED: &str = "rejected.log";
const LOCK: &str = "lock";

/// How far replay has got, and the session ids it learnt on the way.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct Cursor {
    /// Byte offset of the first record not yet applied.
    pub offset: u64,
    /// A session id written into the journal → the id the database holds for that call (when
    /// the call already had a session when its journaled start was replayed).
    #[serde(default)]
    pub remap: HashMap<Uuid, Uuid>,
}

/// One record read back, with the offset just past it.
#[derive(Debug)]
pub(super) struct Record {
    pub line: Vec<u8>,
    pub end: u64,
}

/// The open journal directory. Holds an exclusive lock on it: two processes appending to one
/// journal would interleave their records and replay each other's.
#[derive(Debug)]
pub(super) struct Log {
    dir: PathBuf,
    file: File,
    len: u64,
    cursor: Cursor,
    /// The directory lock; `None` once closed.
    lock: Option<File>,
}

impl Log {
    /// Opens (creating) the journal in `dir`. Returns it and the number of records still to
    /// apply. A record cut short by a crash (no final newline: its append never returned) is
    /// removed.
    pub fn open(dir: &Path) -> io::Result<(Self, u64)> {
        std::fs::create_dir_all(dir)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK))?;
        if let Err(e) = lock.try_lock() {
            return Err(io::Error::other(format!(
                "the journal directory {} is in use by another redial process ({e}); give each \
                 instance its own database.journal_dir",
                dir.display()
            )));
        }
        let file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(dir.join(LOG))?;
        sync_dir(dir)?;
        let mut cursor = read_cursor(&dir.join(CURSOR))?;
        let mut len = file.metadata()?.len();
        if cursor.offset > len {
            // Compaction truncated the log and stopped before resetting the cursor.
            cursor = Cursor::default();
        }
        let (complete, records) = scan(&dir.join(LOG), cursor.offset)?;
        if complete < len {
            tracing::warn!(
                bytes = len - complete,
                "the journal ends with a record cut short by a crash; removing it"
            );
            file.set_len(complete)?;
            file.sync_all()?;
            len = complete;
        }
        let log = Self {
            dir: dir.to_owned(),
            file,
            len,
            cursor,
            lock: Some(lock),
        };
        Ok((log, records))
    }

    /// Appends `bytes` (whole records, each ending in a newline) and waits until they are on
    /// disk. On failure nothing of them stays in the log.
    pub fn append(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.lock.is_none() {
            return Err(io::Error::other("the outage journal is closed"));
        }
        let written = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // A short write (disk full) must not leave half a record for the next one to be
            // glued to.
            let _ = self.file.set_len(self.len);
            return Err(e);
        }
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Releases the directory (another process may open it); later appends fail.
    pub fn close(&mut self) {
        self.lock = None;
    }

    /// The cursor as last saved.
    pub fn cursor(&self) -> &Cursor {
        &self.cursor
    }

    /// Up to `max` records from the cursor on (fewer when they pass `max_bytes`).
    pub fn read(&self, max: usize, max_bytes: usize) -> io::Result<Vec<Record>> {
        let mut reader = File::open(self.dir.join(LOG))?;
        reader.seek(SeekFrom::Start(self.cursor.offset))?;
        let mut reader = BufReader::new(reader.take(self.len - self.cursor.offset));
        let (mut records, mut offset, mut bytes) = (Vec::new(), self.cursor.offset, 0);
        while records.len() < max && bytes < max_bytes {
            let mut line = Vec::new();
            let n = reader.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                break;
            }
            offset += n as u64;
            bytes += n;
            line.pop();
            records.push(Record { line, end: offset });
        }
        Ok(records)
    }

    /// Saves the cursor (atomically: a new file renamed over the old).
    pub fn advance(&mut self, cursor: Cursor) -> io::Result<()> {
        let path = self.dir.join(CURSOR);
        let temporary = self.dir.join(format!("{CURSOR}.tmp"));
        let mut file = File::create(&temporary)?;
        serde_json::to_writer(&mut file, &cursor)?;
        file.sync_all()?;
        std::fs::rename(&temporary, &path)?;
        sync_dir(&self.dir)?;
        self.cursor = cursor;
        Ok(())
    }

    /// Once every record is applied, empties the log and resets the cursor; `true` when it did.
    /// The log is truncated first: a crash in between leaves a cursor past the end, which
    /// [`Log::open`] reads as "nothing to apply" (the other order could replay old records
    /// over newer writes).
    pub fn compact(&mut self) -> io::Result<bool> {
        if self.len == 0 || self.cursor.offset != self.len {
            return Ok(false);
        }
        self.file.set_len(0)?;
        self.file.sync_all()?;
        self.len = 0;
        self.advance(Cursor::default())?;
        Ok(true)
    }

    /// The file of records the database rejected for good.
    pub fn rejected_path(&self) -> PathBuf {
        self.dir.join(REJECTED)
    }

    /// Keeps a record the database rejected for good, with the reason, for an operator.
    pub fn reject(&self, line: &[u8], reason: &str) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(REJECTED))?;
        let record = String::from_utf8_lossy(line);
        let entry = serde_json::json!({
            "rejected_at": chrono::Utc::now(),
            "reason": reason,
            "record": record,
        });
        let mut bytes = serde_json::to_vec(&entry)?;
        bytes.push(b'\n');
        file.write_all(&bytes)?;
        file.sync_data()
    }

    /// Bytes in the log.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }
}

fn read_cursor(path: &Path) -> io::Result<Cursor> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            io::Error::other(format!(
                "the journal cursor {} is unreadable ({e}); move the journal directory aside \
                 and replay it by hand",
                path.display()
            ))
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Cursor::default()),
        Err(e) => Err(e),
    }
}

/// The offset after the last complete record, and how many complete records follow `from`.
fn scan(path: &Path, from: u64) -> io::Result<(u64, u64)> {
    let mut reader = BufReader::new(File::open(path)?);
    reader.seek(SeekFrom::Start(from))?;
    let (mut complete, mut records) = (from, 0);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line)?;
        if n == 0 || line.last() != Some(&b'\n') {
            return Ok((complete, records));
        }
        complete += n as u64;
        records += 1;
    }
}

/// Makes a created or renamed file's directory entry durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appended_records_are_read_back_in_order_and_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, pending) = Log::open(dir.path()).unwrap();
        assert_eq!(pending, 0);
        log.append(b"{\"a\":1}\n{\"a\":2}\n").unwrap();
        log.append(b"{\"a\":3}\n").unwrap();
        let records = log.read(2, usize::MAX).unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].line, b"{\"a\":2}");
        let mut cursor = log.cursor().clone();
        cursor.offset = records[1].end;
        log.advance(cursor).unwrap();
        drop(log);
        let (log, pending) = Log::open(dir.path()).unwrap();
        assert_eq!(pending, 1);
        assert_eq!(log.read(10, usize::MAX).unwrap()[0].line, b"{\"a\":3}");
    }

    #[test]
    fn a_record_cut_short_by_a_crash_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG), b"{\"a\":1}\n{\"a\":").unwrap();
        let (log, pending) = Log::open(dir.path()).unwrap();
        assert_eq!(pending, 1);
        assert_eq!(log.len(), 8);
    }

    #[test]
    fn compaction_empties_a_fully_applied_log_and_a_cursor_past_the_end_reads_as_empty() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = Log::open(dir.path()).unwrap();
        log.append(b"{}\n").unwrap();
        assert!(!log.compact().unwrap(), "nothing applied yet");
        let end = log.read(1, usize::MAX).unwrap()[0].end;
        log.advance(Cursor {
            offset: end,
            remap: HashMap::new(),
        })
        .unwrap();
        assert!(log.compact().unwrap());
        assert_eq!(log.len(), 0);
        drop(log);
        // A crash between truncating and saving the cursor.
        std::fs::write(dir.path().join(CURSOR), br#"{"offset":99}"#).unwrap();
        let (log, pending) = Log::open(dir.path()).unwrap();
        assert_eq!((pending, log.cursor().offset), (0, 0));
    }

    #[test]
    fn a_second_process_cannot_open_the_same_journal() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Log::open(dir.path()).unwrap();
        let error = Log::open(dir.path()).unwrap_err();
        assert!(error.to_string().contains("in use"), "{error}");
    }
}
