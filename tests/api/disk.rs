//! A full disk under the SQLite file: callers keep getting their replies while writes fail, and
//! writes resume by themselves once space is freed, without a restart.
//!
//! The disk is a small tmpfs the test mounts (we run as root in CI); where mounting is not
//! permitted the test prints why and returns.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use redial::config::{AssistantSettings, DatabaseUrl, FieldSettings, Secret, Settings};
use redial::platforms::Platform;
use redial::storage::{CallSession, ConnectOptions, SessionStore, SqliteStore, Store, TurnStore};
use redial_bench::mock::Behavior;
use serde_json::{Value, json};
use sqlx::{Connection, SqliteConnection};
use tempfile::TempDir;

use crate::support::app::{TestApp, read_sse, vapi_body};
use crate::support::db::Backend;

const VAPI_SECRET: &str = "vapi-secret";
const CALL: &str = "call-disk";
const PHONE: &str = "+14155550177";

/// SQLite only: the disk under the store's file fills up mid-call. The caller keeps getting
/// replies (memory fails open); once the filler is deleted, a turn, a `record_answer` tool write
/// and a signed webhook are all stored again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root to mount a tmpfs: run scripts/test.sh as root"]
async fn writes_resume_by_themselves_once_a_full_disk_has_space_again() {
    let disk = Tmpfs::mount(16 * 1024);
    let url = disk.sqlite_url();
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.database.url = DatabaseUrl::new(url.clone());
        s.webhooks.vapi_secret = Secret::new(VAPI_SECRET);
        loan_script(s);
    })
    .await;
    let store = SqliteStore::connect(&url, &ConnectOptions::default())
        .await
        .expect("a store beside the app's");
    let mut raw = SqliteConnection::connect(&url)
        .await
        .expect("raw connection");
    let session = talk(&app, "Hi, I need a loan.", "Sure, what for?").await;
    assert_eq!(turn_count(&store, &session).await, 2, "stored with space");

    // Act 1: the disk fills up. The WAL is emptied first, so that every write needs new pages
    // (it would otherwise reuse its old ones and some writes would still fit).
    let (busy, _, _): (i64, i64, i64) = sqlx::query_as("pragma wal_checkpoint(truncate)")
        .fetch_one(&mut raw)
        .await
        .expect("checkpoint");
    assert_eq!(busy, 0, "the checkpoint must complete");
    disk.fill();
    let on_full_disk = talk(&app, "Are you still there?", "Yes, I am here.").await;
    app.upstream.push(
        "gpt-test",
        Behavior::tool_call("record_answer", answer("loan_purpose", "a boat")),
    );
    let replied = chat(&app, "It is for a boat.", "Noted. How much?").await;
    let webhook = end_of_call_report(&app, "call-disk-full").await;
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();

    // Assert 1: the caller heard every reply; the writes failed and were journaled (the
    // journal is on another disk); readiness says writes fail.
    assert_eq!(on_full_disk.session_id, session.session_id);
    assert!(replied, "the tool turn is answered");
    assert_eq!(
        turn_count(&store, &session).await,
        2,
        "nothing fit on the disk"
    );
    assert_eq!(webhook.status(), 200, "the webhook is journaled");
    assert_eq!(ready.status(), 503, "{:?}", ready.text().await);
    assert!(app.state.engine.journal().backlog() > 0);

    // Act 2: space comes back.
    disk.free();
    talk(&app, "Back again.", "Welcome back.").await;
    app.upstream.push(
        "gpt-test",
        Behavior::tool_call("record_answer", answer("loan_purpose", "a car")),
    );
    assert!(chat(&app, "It is for a car.", "Noted. How much?").await);
    let webhook = end_of_call_report(&app, CALL).await;

    // Assert 2: each kind of write is stored again, by the same running app.
    assert_eq!(webhook.status(), 200, "{:?}", webhook.text().await);
    let stored = wait_for(|| async {
        let session = stored_session(&store).await;
        let turns = turn_count(&store, &session).await;
        let answered = session.answers.get("loan_purpose").map(|a| a.value.clone());
        // Two turns before, two on the full disk (journaled), two and more after; the answer
        // journaled on the full disk ("a boat") is replayed before the later one.
        (turns >= 6 && answered.as_deref() == Some("a car")).then_some((turns, answered))
    })
    .await;
    assert!(
        stored.is_some(),
        "the turns and the answer after the disk freed up are stored"
    );
    let events: i64 = sqlx::query_scalar("select count(*) from webhook_event where call_key = $1")
        .bind(CALL)
        .fetch_one(&mut raw)
        .await
        .expect("count webhook events");
    assert_eq!(events, 1, "the webhook is stored");
    let events: i64 = sqlx::query_scalar("select count(*) from webhook_event where call_key = $1")
        .bind("call-disk-full")
        .fetch_one(&mut raw)
        .await
        .expect("count webhook events");
    assert_eq!(
        events, 1,
        "the webhook journaled on the full disk is stored"
    );
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200, "{:?}", ready.text().await);
    raw.close().await.expect("close the raw connection");
    store.close().await;
    app.teardown().await;
}

/// A loan script for `asst-1`, so that `record_answer` writes an answer.
fn loan_script(settings: &mut Settings) {
    settings.assistants.push(AssistantSettings {
        id: "asst-1".into(),
        filler: "One moment, please.".into(),
        fields: vec![FieldSettings {
            name: "loan_purpose".into(),
            question: "What is the loan for?".into(),
            required: true,
            description: String::new(),
        }],
        ..AssistantSettings::default()
    });
}

fn answer(field: &str, value: &str) -> String {
    json!({"field": field, "value": value}).to_string()
}

/// One turn of the call whose reply is `reply`: true when the caller heard it in full.
async fn chat(app: &TestApp, said: &str, reply: &str) -> bool {
    app.upstream.push("gpt-test", Behavior::text([reply]));
    let sse = read_sse(app.chat(&vapi_body(CALL, PHONE, said)).await).await;
    let heard = sse.done && sse.text().ends_with(reply);
    app.settle().await;
    heard
}

/// A turn that must be answered, then the call's session as the app knows it.
async fn talk(app: &TestApp, said: &str, reply: &str) -> CallSession {
    assert!(chat(app, said, reply).await, "the caller hears {reply:?}");
    app.state
        .store
        .load_call(Platform::Vapi, CALL)
        .await
        .expect("load the call")
        .expect("the call is known")
        .0
}

async fn stored_session(store: &SqliteStore) -> CallSession {
    store
        .load_call(Platform::Vapi, CALL)
        .await
        .expect("load the call")
        .expect("the call is stored")
        .0
}

async fn turn_count(store: &SqliteStore, session: &CallSession) -> usize {
    store
        .list_turns(session.session_id)
        .await
        .expect("list turns")
        .len()
}

/// A signed Vapi end-of-call report for `call_id`.
async fn end_of_call_report(app: &TestApp, call_id: &str) -> reqwest::Response {
    let mut report: Value =
        serde_json::from_str(include_str!("../fixtures/vapi/end-of-call-report.json")).unwrap();
    report["message"]["call"]["id"] = json!(call_id);
    report["message"]["call"]["assistantId"] = json!("asst-1");
    report["message"]["customer"] = json!({"number": PHONE});
    report["message"]["call"]["customer"] = json!({"number": PHONE});
    app.client
        .post(app.url("/webhooks/vapi"))
        .header("content-type", "application/json")
        .header("x-vapi-secret", VAPI_SECRET)
        .body(serde_json::to_vec(&report).unwrap())
        .send()
        .await
        .expect("webhook request")
}

/// Polls `check` for up to 15 s (the journal's replayer retries at most every 5 s).
async fn wait_for<T, F, Fut>(check: F) -> Option<T>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..300 {
        if let Some(found) = check().await {
            return Some(found);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// A tmpfs mounted on a fresh temporary directory, unmounted on drop (also when the test panics).
pub(crate) struct Tmpfs {
    dir: TempDir,
    filler: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size_kib` KiB. Panics, saying why, when it cannot (mounting needs root):
    /// the tests that need one are ignored in a plain `cargo test` and run by `scripts/test.sh`,
    /// where a test that cannot do what it tests must fail, never pass.
    pub(crate) fn mount(size_kib: u64) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_kib}k"), "tmpfs"])
            .arg(dir.path())
            .output();
        match mounted {
            Ok(out) if out.status.success() => Self {
                filler: dir.path().join("filler"),
                dir,
            },
            Ok(out) => panic!(
                "cannot mount a tmpfs ({}): {} (the full-disk tests need root)",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => panic!("cannot run mount: {e} (the full-disk tests need root)"),
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
