//! Job leases with the real binary: a job that outlives its lease runs once, a worker whose
//! renewals cannot land gives the job up to the next holder, and a renewal held up for less
//! than the lease keeps the job (both stores).

use std::path::Path;
use std::time::{Duration, Instant};

use redial::platforms::Platform;
use redial::storage::{AnalysisSource, Store};
use redial_bench::mock::{Behavior, MockConfig, MockUpstream};
use serde_json::json;
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};

use crate::support::app::{API_KEY, app_tests};
use crate::support::db::{Backend, TestDb};
use crate::support::process::Server;

app_tests!(
    a_job_longer_than_its_lease_runs_once,
    a_worker_whose_renewals_cannot_land_gives_the_job_up,
    a_renewal_held_up_for_less_than_the_lease_keeps_the_job,
);

const RETELL_KEY: &str = "key_test_webhook";
/// The call in the Retell fixture.
const CALL_ID: &str = "Jabr9TXYYJHfvl6Syypi88rdAHYHmcq6";
const MODEL: &str = "analyst";

/// The admin key the processes accept (for `/metrics`).
const ADMIN_KEY: &str = "jobs-admin-key";

/// A config for a child redial on `db` with a `lease_secs` lease, which validation accepts with
/// a one-second connection timeout.
fn write_config(dir: &Path, db: &TestDb, upstream: &MockUpstream, lease_secs: u64) -> String {
    let path = dir.join("redial.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\napi_keys = [\"{API_KEY}\"]\nshutdown_grace_secs = 5\n\
         admin_keys = [\"ops:{ADMIN_KEY}\"]\n\
         [database]\nurl = \"{}\"\nconnect_timeout_secs = 1\n\
         [upstream]\nbase_url = \"{}\"\napi_key = \"k\"\n\
         [analysis]\nmodel = \"{MODEL}\"\nlease_secs = {lease_secs}\npoll_interval_ms = 100\n\
         [webhooks]\nretell_api_key = \"{RETELL_KEY}\"\n",
        db.url,
        upstream.base_url()
    );
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// An analysis reply the mock sends after `delay`.
fn slow_reply(summary: &str, delay: Duration) -> Behavior {
    let reply =
        json!({"summary": summary, "urgency": 1, "action": "none", "sentiment": "satisfied"});
    Behavior::Text {
        chunks: vec![reply.to_string()],
        ttft: delay,
        gap: Duration::ZERO,
    }
}

/// Posts the signed Retell `call_ended` fixture, which enqueues the call's analysis.
async fn end_the_call(server: &Server) {
    let body = include_bytes!("../fixtures/retell/call_ended.json").to_vec();
    let v = chrono::Utc::now().timestamp_millis().to_string();
    let mut mac =
        <hmac::Hmac<sha2::Sha256> as hmac::Mac>::new_from_slice(RETELL_KEY.as_bytes()).unwrap();
    hmac::Mac::update(&mut mac, &body);
    hmac::Mac::update(&mut mac, v.as_bytes());
    let d = hex::encode(hmac::Mac::finalize(mac).into_bytes());
    let response = reqwest::Client::new()
        .post(server.url("/webhooks/retell"))
        .header("x-retell-signature", format!("v={v},d={d}"))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// How many analysis requests the upstream has received.
fn analysis_requests(upstream: &MockUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r["model"] == MODEL)
        .count()
}

/// Waits until the upstream has received `n` analysis requests.
async fn wait_for_requests(upstream: &MockUpstream, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while analysis_requests(upstream) < n {
        assert!(
            Instant::now() < deadline,
            "{n} analysis requests expected within {within:?}, got {}",
            analysis_requests(upstream)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The summaries of redial's stored analyses of the call, once there is one.
async fn wait_for_analyses(store: &dyn Store, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        if let Some((session, _)) = store.load_call(Platform::Retell, CALL_ID).await.unwrap() {
            let analyses = store.list_analyses(session.session_id).await.unwrap();
            let ours: Vec<String> = analyses
                .into_iter()
                .filter(|a| a.source == AnalysisSource::Redial)
                .map(|a| a.summary)
                .collect();
            if !ours.is_empty() {
                return ours;
            }
        }
        assert!(Instant::now() < deadline, "no analysis within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `(status, attempts)` of the call's analysis job, read beside the app.
async fn analysis_job(backend: Backend, url: &str) -> (String, i32) {
    let sql = "select status, attempts from job where kind = 'analyze_call'";
    match backend {
        Backend::Postgres => {
            let mut conn = PgConnection::connect(url).await.unwrap();
            sqlx::query_as(sql).fetch_one(&mut conn).await.unwrap()
        }
        Backend::Sqlite => {
            let mut conn = SqliteConnection::connect(url).await.unwrap();
            sqlx::query_as(sql).fetch_one(&mut conn).await.unwrap()
        }
    }
}

/// A connection opened ahead that can block every write to the analysis job, as a database that
/// stops answering would: Postgres locks the job's row, SQLite takes the database's write lock.
/// It connects before the job is claimed, so that taking the lock once the job runs costs one
/// round trip, not a connection set up on a loaded machine, and the hold starts where the test
/// means it to within the lease.
enum JobWriteBlocker {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

impl JobWriteBlocker {
    async fn connect(backend: Backend, url: &str) -> Self {
        match backend {
            Backend::Postgres => Self::Postgres(PgConnection::connect(url).await.unwrap()),
            Backend::Sqlite => Self::Sqlite(SqliteConnection::connect(url).await.unwrap()),
        }
    }

    /// Blocks the job's writes for `hold`, then lets them through.
    async fn hold(self, hold: Duration) {
        match self {
            Self::Postgres(mut conn) => {
                conn.execute("begin").await.unwrap();
                conn.execute("select 1 from job where kind = 'analyze_call' for update")
                    .await
                    .unwrap();
                tokio::time::sleep(hold).await;
                conn.execute("commit").await.unwrap();
            }
            Self::Sqlite(mut conn) => {
                conn.execute("begin immediate").await.unwrap();
                tokio::time::sleep(hold).await;
                conn.execute("commit").await.unwrap();
            }
        }
    }
}

/// Postgres: a write that waits on a lock fails after 500 ms on every new connection, so a
/// blocked renewal errors (as on a database that fails) instead of waiting.
async fn fail_lock_waits_fast(url: &str) {
    let mut conn = PgConnection::connect(url).await.unwrap();
    let name: (String,) = sqlx::query_as("select current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    conn.execute(format!("alter database {} set lock_timeout = '500ms'", name.0).as_str())
        .await
        .unwrap();
}

/// The sum of a counter's series whose labels contain `labels`, from the app's `/metrics`.
async fn counter(server: &Server, name: &str, labels: &str) -> f64 {
    let text = reqwest::Client::new()
        .get(server.url("/metrics"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|line| line.starts_with(name) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn a_job_longer_than_its_lease_runs_once(backend: Backend) {
    let db = TestDb::new(backend).await;
    let upstream = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &db, &upstream, 3);
    // The analysis takes three leases; any further request would get the mock's default,
    // invalid reply.
    upstream.push(
        MODEL,
        slow_reply("Booked a cleaning.", Duration::from_secs(9)),
    );
    // Two instances: each its own working directory, so each its own outage journal.
    let second_dir = dir.path().join("second");
    std::fs::create_dir(&second_dir).unwrap();
    let first = Server::start(dir.path(), &["--config", &config, "serve"]).await;
    let second = Server::start(&second_dir, &["--config", &config, "serve"]).await;

    end_the_call(&first).await;
    let summaries = wait_for_analyses(db.store.as_ref(), Duration::from_secs(30)).await;
    // Two more leases for a second worker to pick the job up, were it free.
    tokio::time::sleep(Duration::from_secs(1)).await;

    assert_eq!(summaries, ["Booked a cleaning."]);
    assert_eq!(analysis_requests(&upstream), 1, "the analysis ran once");
    assert_eq!(
        analysis_job(backend, &db.url).await,
        ("done".to_owned(), 1),
        "done on its first attempt"
    );
    let renewals = counter(&first, "redial_job_lease_renewals_total", "renewed").await
        + counter(&second, "redial_job_lease_renewals_total", "renewed").await;
    assert!(renewals >= 2.0, "the lease was renewed: {renewals}");
    first.terminate().await;
    second.terminate().await;
    db.teardown().await;
}

async fn a_worker_whose_renewals_cannot_land_gives_the_job_up(backend: Backend) {
    let db = TestDb::new(backend).await;
    let upstream = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &db, &upstream, 3);
    // The first worker's reply would land after the database answers again; the next holder's
    // later still. Only a worker that gave the job up leaves the second reply to be stored.
    upstream.push(MODEL, slow_reply("first holder", Duration::from_secs(7)));
    upstream.push(MODEL, slow_reply("next holder", Duration::from_secs(3)));
    let server = Server::start(dir.path(), &["--config", &config, "serve"]).await;

    let blocker = JobWriteBlocker::connect(backend, &db.url).await;

    end_the_call(&server).await;
    wait_for_requests(&upstream, 1, Duration::from_secs(10)).await;
    // No renewal lands for twice the lease.
    blocker.hold(Duration::from_secs(6)).await;
    let summaries = wait_for_analyses(db.store.as_ref(), Duration::from_secs(20)).await;

    assert_eq!(
        summaries,
        ["next holder"],
        "the worker that lost the job stored nothing"
    );
    assert_eq!(analysis_requests(&upstream), 2);
    assert_eq!(analysis_job(backend, &db.url).await, ("done".to_owned(), 2));
    let lost = counter(
        &server,
        "redial_job_leases_lost_total",
        "reason=\"expired\"",
    )
    .await;
    assert_eq!(lost, 1.0, "one lease ran out");
    server.terminate().await;
    db.teardown().await;
}

async fn a_renewal_held_up_for_less_than_the_lease_keeps_the_job(backend: Backend) {
    let db = TestDb::new(backend).await;
    if matches!(backend, Backend::Postgres) {
        fail_lock_waits_fast(&db.url).await;
    }
    let upstream = MockUpstream::start(MockConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Renewed every 2 s; the renewal at 2 s is held up (Postgres: fails) until 3 s.
    let config = write_config(dir.path(), &db, &upstream, 6);
    upstream.push(
        MODEL,
        slow_reply("Booked a cleaning.", Duration::from_secs(9)),
    );
    let server = Server::start(dir.path(), &["--config", &config, "serve"]).await;

    let blocker = JobWriteBlocker::connect(backend, &db.url).await;

    end_the_call(&server).await;
    wait_for_requests(&upstream, 1, Duration::from_secs(10)).await;
    blocker.hold(Duration::from_secs(3)).await;
    let summaries = wait_for_analyses(db.store.as_ref(), Duration::from_secs(20)).await;

    assert_eq!(summaries, ["Booked a cleaning."]);
    assert_eq!(
        analysis_requests(&upstream),
        1,
        "the job stayed with its worker"
    );
    assert_eq!(analysis_job(backend, &db.url).await, ("done".to_owned(), 1));
    assert_eq!(
        counter(&server, "redial_job_leases_lost_total", "").await,
        0.0
    );
    if matches!(backend, Backend::Postgres) {
        let failed = counter(&server, "redial_job_lease_renewals_total", "error").await;
        assert!(failed >= 1.0, "a renewal failed and was retried: {failed}");
    }
    server.terminate().await;
    db.teardown().await;
}
