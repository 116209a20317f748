//! The load generator against the mock upstream: counting, timing and failure classification.

use std::time::Duration;

use redial_bench::load::{self, Api, LoadConfig, LoadMode, LoadReport, Target, WorkloadSpec};
use redial_bench::mock::{Behavior, MockConfig, MockUpstream};

fn config(mock: &MockUpstream, mode: LoadMode, millis: u64) -> LoadConfig {
    LoadConfig {
        label: "test".to_owned(),
        target: Target {
            url: format!("{}/chat/completions", mock.base_url()),
            api_key: Some("k".to_owned()),
            timeout: Duration::from_secs(5),
            api: Api::Openai,
        },
        mode,
        duration: Duration::from_millis(millis),
        warmup: Duration::ZERO,
        workload: WorkloadSpec {
            model: "bench-model".to_owned(),
            callers: 3,
            turns: 2,
        },
        pacing: None,
    }
}

async fn run(config: LoadConfig) -> LoadReport {
    load::run(config).await.expect("load run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_loop_streams_succeed_and_are_timed() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("mock");

    let report = run(config(&mock, LoadMode::Closed { concurrency: 4 }, 300)).await;

    assert!(report.counts.ok > 10, "{report:#?}");
    assert_eq!(report.counts.errors(), 0, "{report:#?}");
    assert_eq!(report.counts.sent, report.counts.ok);
    assert_eq!(report.ttft.count, report.counts.ok);
    assert_eq!(report.done.count, report.counts.ok);
    assert!(report.ttft.p50_ms <= report.done.p50_ms);
    assert_eq!(
        report.gap.count,
        report.counts.ok * 4,
        "5 tokens, 4 gaps each"
    );
    assert!(report.max_in_flight <= 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_vapi_shaped_multi_turn_and_authenticated() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("mock");

    run(config(&mock, LoadMode::Closed { concurrency: 1 }, 100)).await;

    let requests = mock.requests();
    assert!(requests.len() >= 4, "{}", requests.len());
    let (first, second, third) = (&requests[0], &requests[1], &requests[2]);
    assert_eq!(first["stream"], true);
    assert_eq!(first["call"]["assistantId"], "bench-assistant");
    assert_eq!(first["call"]["customer"], first["customer"]);
    assert_eq!(
        second["call"]["id"], first["call"]["id"],
        "turn 2 of the same call"
    );
    assert_eq!(first["messages"].as_array().map(Vec::len), Some(3));
    assert_eq!(second["messages"].as_array().map(Vec::len), Some(5));
    assert_ne!(
        third["call"]["id"], first["call"]["id"],
        "a call has two turns"
    );
    assert_ne!(
        third["customer"], first["customer"],
        "the next call is another caller"
    );
    let headers = &mock.request_headers()[0];
    assert!(headers.contains(&("authorization".to_owned(), "Bearer k".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_sends_on_schedule_and_records_every_request() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("mock");
    let mode = LoadMode::Open {
        rate: 200.0,
        max_in_flight: 100,
    };

    let report = run(config(&mock, mode, 500)).await;

    assert_eq!(report.counts.sent, 100, "{report:#?}");
    assert_eq!(report.counts.ok, 100);
    assert!((report.throughput_rps - 200.0).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_classified() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("mock");
    mock.push("*", Behavior::error(503, "overloaded"));
    mock.push(
        "*",
        Behavior::CutAfter {
            chunks: vec!["a".into()],
        },
    );
    mock.push(
        "*",
        Behavior::StallAfter {
            chunks: vec!["a".into()],
        },
    );
    mock.push(
        "*",
        Behavior::Status {
            code: 200,
            body: "{}".into(),
        },
    );
    // One sender works through the queue in order; the stall takes the whole timeout.
    let mut config = config(&mock, LoadMode::Closed { concurrency: 1 }, 600);
    config.target.timeout = Duration::from_millis(300);

    let report = run(config).await;

    let counts = &report.counts;
    assert_eq!(counts.non_200, 1, "{counts:?}");
    assert_eq!(counts.body_errors, 1, "{counts:?}");
    assert_eq!(counts.timeouts, 1, "{counts:?}");
    assert_eq!(
        counts.no_done, 1,
        "a 200 without SSE never says [DONE]: {counts:?}"
    );
    assert!(counts.ok >= 1, "{counts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_counts_connect_errors() {
    let mock = MockUpstream::start(MockConfig::default())
        .await
        .expect("mock");
    let config = config(&mock, LoadMode::Closed { concurrency: 1 }, 100);
    mock.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;

    let report = run(config).await;

    assert!(report.counts.connect_errors > 0, "{report:#?}");
    assert_eq!(report.counts.ok, 0);
    assert_eq!(report.hard_failures().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paced_streams_measure_gaps_and_count_stalls() {
    let paced = MockConfig {
        ttft: Duration::ZERO,
        inter_token: Duration::from_millis(20),
        tokens: 4,
        token: "w ".to_owned(),
    };
    let mock = MockUpstream::start(paced).await.expect("mock");
    mock.push(
        "*",
        Behavior::Text {
            chunks: vec!["a".into(), "b".into()],
            ttft: Duration::ZERO,
            gap: Duration::from_millis(120),
        },
    );
    let mut config = config(&mock, LoadMode::Closed { concurrency: 1 }, 250);
    config.pacing = Some(Duration::from_millis(20));

    let report = run(config).await;

    assert_eq!(report.counts.stall_events, 1, "{report:#?}");
    assert_eq!(report.counts.streams_with_stalls, 1);
    assert!(
        report.gap.p50_ms >= 19.0 && report.gap.p50_ms < 30.0,
        "{:?}",
        report.gap
    );
    assert!(report.gap.max_ms >= 110.0, "{:?}", report.gap);
    assert_eq!(report.stall_threshold_ms, Some(45.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_messages_api_is_timed_at_the_first_text_delta_and_its_stop() {
    let ttft = Duration::from_millis(30);
    let mock = MockUpstream::start(MockConfig {
        ttft,
        ..MockConfig::default()
    })
    .await
    .expect("mock");
    let mut config = config(&mock, LoadMode::Closed { concurrency: 2 }, 300);
    config.target.url = format!("{}/messages", mock.base_url());
    config.target.api = Api::Anthropic;

    let report = run(config).await;

    assert!(report.counts.ok >= 4, "{report:#?}");
    assert_eq!(report.counts.errors(), 0, "{report:#?}");
    assert_eq!(report.ttft.count, report.counts.ok);
    assert_eq!(report.done.count, report.counts.ok);
    // message_start comes at once; the first text only after the mock's TTFT.
    assert!(report.ttft.p50_ms >= 29.0, "{report:#?}");
    assert!(report.ttft.p50_ms <= report.done.p50_ms);
    assert_eq!(report.gap.count, report.counts.ok * 4, "5 text deltas");
    // What the mock received is a valid Messages request (it answers 400 otherwise).
    let request = &mock.requests()[0];
    assert_eq!(request["messages"][0]["role"], "user", "{request}");
    assert!(
        request["system"][0]["cache_control"].is_object(),
        "{request}"
    );
    let headers = &mock.request_headers()[0];
    let header = |name: &str| headers.iter().any(|(n, v)| n == name && !v.is_empty());
    assert!(
        header("anthropic-version") && header("x-api-key"),
        "{headers:?}"
    );

    // An error status or an in-stream error is a failed request.
    mock.push("*", Behavior::error(529, "overloaded"));
    let mut config = self::config(&mock, LoadMode::Closed { concurrency: 1 }, 50);
    config.target.url = format!("{}/messages", mock.base_url());
    config.target.api = Api::Anthropic;
    let report = run(config).await;
    assert!(report.counts.errors() >= 1, "{report:#?}");
}
