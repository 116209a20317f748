//! A full disk under a SQLite store: a write that fails for want of space, at COMMIT or at a
//! statement, leaves the writer usable, so every write on the full disk fails with the disk's
//! own (transient) error and the first write after space is freed is stored, without reopening
//! the store.

use super::*;
use crate::disk::Tmpfs;

/// The tmpfs: room for the database, its WAL and the largest write below.
const DISK_KIB: u64 = 12 * 1024;

/// Fits SQLite's page cache (2 MB by default): the pages reach the WAL at COMMIT, which fails.
/// (It is still larger than the WAL so far: the WAL reuses its pages, so a small write may fit.)
const FAILS_AT_COMMIT: usize = 512 * 1024;

/// Overflows the page cache: SQLite spills pages to the WAL during the insert, which fails.
const FAILS_AT_STATEMENT: usize = 4 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs: run scripts/test.sh as root"]
async fn a_commit_that_fails_on_a_full_disk_does_not_wedge_the_sqlite_writer() {
    writes_resume_after_a_full_disk(FAILS_AT_COMMIT).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs: run scripts/test.sh as root"]
async fn a_statement_that_fails_on_a_full_disk_does_not_wedge_the_sqlite_writer() {
    writes_resume_after_a_full_disk(FAILS_AT_STATEMENT).await;
}

/// Writes turns of `size` bytes on a full disk, then a small one after freeing it.
async fn writes_resume_after_a_full_disk(size: usize) {
    // Arrange: a store on a tmpfs that has taken a write.
    let disk = Tmpfs::mount(DISK_KIB);
    let store = connect(&disk.sqlite_url(), &ConnectOptions::default())
        .await
        .expect("connect");
    store.migrate().await.expect("migrate");
    let (_, session) = caller_with_session(store.as_ref(), "call-1", at(0)).await;
    let write = |key: &str, content: String| {
        let turn = user_turn(key, &content, at(1));
        let store = Arc::clone(&store);
        async move { store.append_turns(session.session_id, &[turn]).await }
    };
    write("before", "hello".to_owned())
        .await
        .expect("a write with space");

    // Act: fill the disk and write on it; then free it and write again.
    disk.fill();
    let mut on_full_disk = Vec::new();
    for i in 0..3 {
        on_full_disk.push(write(&format!("full-{i}"), "x".repeat(size)).await);
    }
    disk.free();
    let after = write("after", "back".to_owned()).await;

    // Assert: each write on the full disk failed with the disk's error, not a wedged
    // connection's, and the store took the next write.
    for result in &on_full_disk {
        match result {
            Err(e) => {
                assert!(
                    e.to_string()
                        .contains("(code: 13) database or disk is full"),
                    "got {e}"
                );
                assert!(e.is_transient(), "a full disk is transient: {e}");
            }
            Ok(_) => panic!("a write should fail on the full disk"),
        }
    }
    assert_eq!(after.expect("the first write after freeing space"), 1);
    let keys: Vec<String> = store
        .list_turns(session.session_id)
        .await
        .expect("list turns")
        .into_iter()
        .map(|t| t.idempotency_key)
        .collect();
    assert_eq!(keys, ["before", "after"]);
    store.close().await;
}
