//! The call simulator (`redial_bench::sim`) against the real `redial` binary, on both stores:
//! the CI subset of `bench/scenarios/` plays cleanly with every counter computed, and a scenario
//! built to fail is counted as failing.

use std::path::Path;

use redial_bench::mock::{MockConfig, MockUpstream};
use redial_bench::sim::gateway::{Gateway, OwnedSettings};
use redial_bench::sim::report::Report;
use redial_bench::sim::scenario::{self, Scenario};
use redial_bench::sim::webhook::WebhookSecrets;
use redial_bench::sim::{self, Simulator};

use crate::support::app::app_tests;
use crate::support::db::{Backend, TestDb};
use crate::support::process;

app_tests!(
    the_ci_scenarios_play_without_silence_or_repeated_questions,
    a_redial_from_another_number_is_counted_as_started_over,
);

/// Plays `scenarios` against a redial process on a fresh `backend` database.
async fn play(backend: Backend, scenarios: &[Scenario]) -> Report {
    let db = TestDb::new(backend).await;
    let mock = MockUpstream::start(MockConfig::default()).await.unwrap();
    let secrets = WebhookSecrets::default();
    let workdir = tempfile::tempdir().unwrap();
    let journal = db.journal.path().display().to_string();
    let config = sim::redial_config(&db.url, &journal, &mock.base_url(), &secrets);
    let settings = OwnedSettings {
        binary: process::binary(),
        workdir: workdir.path().to_path_buf(),
        config,
    };
    let gateway = Gateway::start(settings, sim::API_KEY).await.unwrap();
    let simulator = Simulator::new(gateway, mock, secrets);
    let report = simulator.run(scenarios).await;
    simulator.gateway().shutdown().await;
    db.teardown().await;
    report
}

/// Scripted turns of `scenarios` (none of the CI ones has a platform tool's follow-up).
fn scripted_turns(scenarios: &[Scenario]) -> u32 {
    scenarios
        .iter()
        .map(|s| {
            let per_instance: usize = s.calls.iter().map(|c| c.turns.len()).sum();
            (per_instance * s.platforms.len() * s.repeat as usize) as u32
        })
        .sum()
}

async fn the_ci_scenarios_play_without_silence_or_repeated_questions(backend: Backend) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/scenarios");
    let mut scenarios = sim::select(scenario::load_dir(&dir).unwrap(), true, None);
    assert!(scenarios.len() >= 4, "the CI subset exists");
    // One repetition each keeps the test short; the full run repeats them.
    for scenario in &mut scenarios {
        scenario.repeat = 1;
    }

    let report = play(backend, &scenarios).await;

    let totals = &report.totals;
    let calls: usize = scenarios.iter().map(Scenario::call_count).sum();
    assert_eq!(totals.calls as usize, calls, "{}", report.to_markdown());
    assert_eq!(
        totals.turns,
        scripted_turns(&scenarios),
        "every turn was played and counted"
    );
    assert_eq!(totals.failed_calls, 0, "{}", report.to_markdown());
    assert_eq!(
        (
            totals.silent_turns,
            totals.reasked_answers,
            totals.repeated_greetings
        ),
        (0, 0, 0)
    );
    assert_eq!(
        (totals.missed_resumptions, totals.wrong_resumptions),
        (0, 0)
    );
    assert!(
        totals.ttft_overhead_p50_ms.is_some(),
        "time to first token was measured"
    );
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["calls"].as_array().unwrap().len(), calls);
}

/// Call B claims to resume call A but comes from another number: redial (rightly) starts over,
/// so the simulator must count a missed resumption and the confirmed purpose asked again.
const STARTED_OVER: &str = r#"
name = "started-over"
platforms = ["vapi", "elevenlabs", "retell"]

[[calls]]
name = "A"
end = "drop"

[[calls.turns]]
say = "It's for a car."
reply = [{ answer = ["loan_purpose", "a car"] }, { text = "A car. How much do you need?", ttft_ms = 30 }]

[[calls]]
name = "B"
caller = "other"
after = "A"
gap_ms = 100
resumes = "A"

[[calls.turns]]
say = "Hello again."
reply = [{ text = "Hello! What is the loan for?", ttft_ms = 30 }]
"#;

async fn a_redial_from_another_number_is_counted_as_started_over(backend: Backend) {
    let scenarios = vec![scenario::parse(STARTED_OVER).unwrap()];

    let report = play(backend, &scenarios).await;

    let totals = &report.totals;
    assert_eq!(
        (totals.calls, totals.turns),
        (6, 6),
        "{}",
        report.to_markdown()
    );
    assert_eq!(totals.failed_calls, 3, "{}", report.to_markdown());
    assert_eq!(totals.missed_resumptions, 3);
    assert_eq!(totals.reasked_answers, 3, "the purpose, once per platform");
    assert_eq!(totals.silent_turns, 0);
    for call in report.calls.iter().filter(|c| c.call == "B") {
        assert!(
            call.problems
                .iter()
                .any(|p| p.contains("asked again for loan_purpose")),
            "{:?}",
            call.problems
        );
    }
}
