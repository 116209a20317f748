//! A full disk under the SQLite file: callers keep getting their replies while writes fail, and
//! writes resume by themselves once space is freed, without a restart.
//!
//! The disk is a small tmpfs the test mounts (we run as root in CI); where mounting is not
//! permitted the test prints why and returns.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop (also when the test panics).
pub(crate) struct Tmpfs {
    dir: TempDir,
    filler: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_kib` KiB, or prints why it cannot and returns `None`.
    pub(crate) fn mount(size_kib: u64) -> Option<Self> {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Some(Self {
                filler: dir.path().join("filler"),
                dir,
            }),
            Ok(out) => {
                eprintln!(
                    "skipping: cannot mount a tmpfs ({}): {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipping: cannot run mount: {e}");
                None
            }
        }
    }

    /// The mount point.
    pub(crate) fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `sqlite://` URL of a database file on the tmpfs.
    pub(crate) fn sqlite_url(&self) -> String {
        format!("sqlite://{}", self.path().join("redial.db").display())
    }

    /// Fills the tmpfs with a filler file until a write fails with "no space left on device",
    /// so that any write needing a new page fails.
    pub(crate) fn fill(&self) {
        let mut file = File::create(&self.filler).expect("create the filler");
        let chunk = vec![0xA5_u8; 4096];
        loop {
            match file.write_all(&chunk) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) || e.kind() == ErrorKind::StorageFull => {
                    break;
                }
                Err(e) => panic!("filling the tmpfs: {e}"),
            }
        }
        // Whatever is left (less than a chunk) goes too, byte-sized pieces at a time.
        let mut file = OpenOptions::new()
            .append(true)
            .open(&self.filler)
            .expect("reopen the filler");
        while file.write_all(&[0]).is_ok() {}
    }

    /// Deletes the filler, freeing the space.
    pub(crate) fn free(&self) {
        std::fs::remove_file(&self.filler).expect("delete the filler");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a file the app still holds open must not keep the mount (and the test) alive.
        match Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "could not unmount {}: {}",
                self.dir.path().display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("could not unmount {}: {e}", self.dir.path().display()),
        }
    }
}
