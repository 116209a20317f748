//! The fault benchmark's parts that work in isolation: the cuttable proxy (over a real TCP echo
//! server and a real Postgres), the results table, the metrics scrape and the verdict.

use std::time::Duration;

use redial_bench::fault::{self, OutageRun, Tally};
use redial_bench::load::Percentiles;
use redial_bench::proxy::{Proxy, postgres_addr, try_postgres_addr};
use sqlx::{Connection as _, PgConnection};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// A TCP server that echoes whatever it reads.
async fn echo_server() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    addr
}

/// Sends `ping` and reads the echo; `None` when the connection is closed or fails.
async fn ping(stream: &mut TcpStream) -> Option<[u8; 4]> {
    stream.write_all(b"ping").await.ok()?;
    let mut reply = [0; 4];
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut reply)).await;
    read.expect("no hang: an answer or a close").ok()?;
    Some(reply)
}

#[tokio::test]
async fn a_cut_closes_open_connections_and_refuses_new_ones_until_restored() {
    let proxy = Proxy::start(echo_server().await).await;
    let mut open = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(ping(&mut open).await, Some(*b"ping"));

    proxy.cut();
    assert!(proxy.is_cut());
    assert_eq!(ping(&mut open).await, None, "the open connection is closed");
    let mut during = TcpStream::connect(proxy.addr).await.expect("accepted");
    assert_eq!(ping(&mut during).await, None, "a new one is closed at once");

    proxy.restore();
    let mut after = TcpStream::connect(proxy.addr).await.expect("connect");
    assert_eq!(ping(&mut after).await, Some(*b"ping"));
}

#[tokio::test]
#[ignore = "needs Postgres at TEST_DATABASE_URL: run scripts/test.sh"]
async fn postgres_goes_away_and_comes_back_through_the_proxy() {
    let url = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let proxy = Proxy::start(postgres_addr(&url)).await;
    let through = proxy.postgres_url(&url);
    assert!(
        through.contains(&format!("127.0.0.1:{}", proxy.addr.port())),
        "{through}"
    );
    let mut connection = PgConnection::connect(&through).await.expect("connect");
    let one: i32 = sqlx::query_scalar("select 1")
        .fetch_one(&mut connection)
        .await
        .expect("query");
    assert_eq!(one, 1);

    proxy.cut();
    let cut_off = sqlx::query_scalar::<_, i32>("select 1")
        .fetch_one(&mut connection)
        .await;
    assert!(cut_off.is_err(), "the open connection fails");
    assert!(PgConnection::connect(&through).await.is_err());

    proxy.restore();
    let mut again = PgConnection::connect(&through).await.expect("reconnect");
    let two: i32 = sqlx::query_scalar("select 2")
        .fetch_one(&mut again)
        .await
        .expect("query");
    assert_eq!(two, 2);
}

#[test]
fn postgres_addresses_read_host_and_port() {
    assert_eq!(
        postgres_addr("postgres://u@localhost/db").to_string(),
        "127.0.0.1:5432"
    );
    assert_eq!(
        postgres_addr("postgres://u:p@127.0.0.2:6543/db").to_string(),
        "127.0.0.2:6543"
    );
    assert!(try_postgres_addr("not a url").is_err());
    assert!(try_postgres_addr("postgres://db.example/x").is_err());
}

fn percentiles(p50: f64, p99: f64, max: f64) -> Percentiles {
    Percentiles {
        count: 10,
        p50_ms: p50,
        p99_ms: p99,
        max_ms: max,
        ..Percentiles::default()
    }
}

fn outage_run() -> OutageRun {
    OutageRun {
        outage_secs: 13.0,
        turns_failed: 0,
        failures: Vec::new(),
        tally: Tally {
            turns_answered: 1_200,
            answers_confirmed: 300,
            ..Tally::default()
        },
        ttft_normal: percentiles(1.25, 4.5, 9.0),
        ttft_outage: percentiles(1.5, 5.25, 12.0),
        ttft_recovery: Percentiles::default(),
        readyz_during_outage: Some(503),
        recovered_ms: Some(5_250),
        peak_journal_backlog: Some(2_345),
        journal_rejected: 0,
        first_rejection: None,
        log: String::new(),
        exit: String::new(),
    }
}

#[test]
fn the_table_has_one_row_per_outage_with_the_brief_columns() {
    let clean = outage_run();
    let mut lost = outage_run();
    lost.outage_secs = 600.0;
    lost.turns_failed = 2;
    lost.tally.turns_lost = 7;
    lost.tally.answers_lost = 1;
    lost.tally.duplicates = 3;
    lost.recovered_ms = None;
    lost.peak_journal_backlog = None;
    let table = fault::report::table(&[clean, lost]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "| outage | turns answered | failed | turns lost | answers lost | duplicates \
         | TTFT p99 normal | TTFT p99 during outage | time to recover | peak journal backlog |"
    );
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[2],
        "| 13 s | 1200 | 0 | 0 | 0 | 0 | 4.5 | 5.2 | 5.25 s | 2345 |"
    );
    assert_eq!(
        lines[3],
        "| 600 s | 1200 | 2 | 7 | 1 | 3 | 4.5 | 5.2 | not recovered | – |"
    );
    let ttft = fault::report::ttft_table(&[outage_run()]);
    assert!(
        ttft.lines().nth(2).is_some_and(
            |row| row == "| 13 s | 1.2 | 4.5 | 9.0 | 1.5 | 5.2 | 12.0 | – | – | – | 503 |"
        ),
        "{ttft}"
    );
}

#[test]
fn a_clean_run_has_no_problems_and_every_loss_is_one() {
    assert!(fault::problems(&outage_run()).is_empty());
    let mut run = outage_run();
    run.tally.duplicates = 2;
    run.tally.audit_entries_lost = 1;
    run.recovered_ms = None;
    run.journal_rejected = 4;
    assert_eq!(
        fault::problems(&run),
        [
            "13 s outage: 1 audit entries lost",
            "13 s outage: 2 duplicate rows",
            "13 s outage: 4 journal records rejected",
            "13 s outage: the journal was not replayed within the cap",
        ]
    );
}

#[test]
fn the_backlog_gauge_is_read_from_prometheus_text() {
    let text = "# TYPE redial_journal_backlog gauge\nredial_journal_backlog_bytes 9\n\
                redial_journal_backlog 42\nother 1\n";
    assert_eq!(fault::backlog_gauge(text), Some(42));
    assert_eq!(
        fault::backlog_gauge("redial_journal_backlog{instance=\"a\"} 7\n"),
        Some(7)
    );
    assert_eq!(fault::backlog_gauge("other 1\n"), None);
}
