//! Aggregation of request outcomes into HDR histograms and counters.

use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use super::probe::{Failure, Outcome};

/// Highest latency the histograms track: one hour, in microseconds.
const MAX_TRACKABLE_US: u64 = 3_600_000_000;
/// Significant decimal digits kept by the histograms.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Latency percentiles of one measure, in milliseconds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: u64,
    /// Arithmetic mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Percentiles {
    /// The percentiles of a histogram of microseconds.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        if histogram.is_empty() {
            return Self::default();
        }
        let at = |q: f64| us_to_ms(histogram.value_at_quantile(q));
        Self {
            count: histogram.len(),
            mean_ms: histogram.mean() / 1_000.0,
            p50_ms: at(0.5),
            p90_ms: at(0.9),
            p99_ms: at(0.99),
            p999_ms: at(0.999),
            max_ms: us_to_ms(histogram.max()),
        }
    }
}

/// What happened to the requests of a run.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests started inside the measurement window.
    pub sent: u64,
    /// Streams that delivered content and ended with `[DONE]`.
    pub ok: u64,
    /// Connection failures before a response.
    pub connect_errors: u64,
    /// Requests that hit the client timeout.
    pub timeouts: u64,
    /// Responses with a status other than 200.
    pub non_200: u64,
    /// Bodies that broke off with a transport error.
    pub body_errors: u64,
    /// Bodies that ended cleanly without `[DONE]`.
    pub no_done: u64,
    /// Streams that ended with `[DONE]` but never carried content.
    pub no_content: u64,
    /// Open-loop requests not sent because too many were already in flight.
    pub dropped: u64,
    /// Streams with at least one stall (an inter-chunk gap over the threshold).
    pub streams_with_stalls: u64,
    /// Stalls over all streams.
    pub stall_events: u64,
}

impl Counts {
    /// Every request that did not succeed.
    pub fn errors(&self) -> u64 {
        self.connect_errors
            + self.timeouts
            + self.non_200
            + self.body_errors
            + self.no_done
            + self.no_content
            + self.dropped
    }
}

/// Collects outcomes of the measurement window.
#[derive(Debug)]
pub(crate) struct Recorder {
    ttft: Histogram<u64>,
    done: Histogram<u64>,
    gaps: Histogram<u64>,
    gateway: Histogram<u64>,
    cached_memory: Histogram<u64>,
    counts: Counts,
}

/// The summary of a [`Recorder`].
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Summary {
    pub counts: Counts,
    pub ttft: Percentiles,
    pub done: Percentiles,
    pub gaps: Percentiles,
    pub gateway: Percentiles,
    pub cached_memory: Percentiles,
}

impl Recorder {
    pub(crate) fn new() -> anyhow::Result<Self> {
        let histogram = || Histogram::new_with_bounds(1, MAX_TRACKABLE_US, SIGNIFICANT_DIGITS);
        Ok(Self {
            ttft: histogram()?,
            done: histogram()?,
            gaps: histogram()?,
            gateway: histogram()?,
            cached_memory: histogram()?,
            counts: Counts::default(),
        })
    }

    pub(crate) fn record(&mut self, outcome: &Outcome) {
        self.counts.sent += 1;
        for gap in &outcome.gaps {
            self.gaps.saturating_record(as_us(*gap));
        }
        if outcome.stalls > 0 {
            self.counts.streams_with_stalls += 1;
            self.counts.stall_events += u64::from(outcome.stalls);
        }
        match outcome.failure {
            None => self.record_success(outcome),
            Some(failure) => self.record_failure(failure),
        }
    }

    pub(crate) fn summary(&self) -> Summary {
        Summary {
            counts: self.counts.clone(),
            ttft: Percentiles::of(&self.ttft),
            done: Percentiles::of(&self.done),
            gaps: Percentiles::of(&self.gaps),
            gateway: Percentiles::of(&self.gateway),
            cached_memory: Percentiles::of(&self.cached_memory),
        }
    }

    fn record_success(&mut self, outcome: &Outcome) {
        self.counts.ok += 1;
        if let Some(ttft) = outcome.ttft {
            self.ttft.saturating_record(as_us(ttft));
        }
        if let Some(done) = outcome.done {
            self.done.saturating_record(as_us(done));
        }
        if let Some(gateway) = outcome.gateway {
            self.gateway.saturating_record(as_us(gateway));
        }
        if let Some(read) = outcome.cached_memory {
            self.cached_memory.saturating_record(as_us(read));
        }
    }

    fn record_failure(&mut self, failure: Failure) {
        let counter = match failure {
            Failure::Connect => &mut self.counts.connect_errors,
            Failure::Timeout => &mut self.counts.timeouts,
            Failure::Status(_) => &mut self.counts.non_200,
            Failure::Body => &mut self.counts.body_errors,
            Failure::NoDone => &mut self.counts.no_done,
            Failure::NoContent => &mut self.counts.no_content,
            Failure::Dropped => &mut self.counts.dropped,
        };
        *counter += 1;
    }
}

fn as_us(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros())
        .unwrap_or(u64::MAX)
        .max(1)
}

fn us_to_ms(us: u64) -> f64 {
    us as f64 / 1_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn successes_feed_latencies_and_failures_feed_counters() {
        let mut recorder = Recorder::new().expect("recorder");
        for ms in 1..=100 {
            recorder.record(&Outcome {
                ttft: Some(Duration::from_millis(ms)),
                done: Some(Duration::from_millis(ms + 10)),
                gaps: vec![Duration::from_millis(20)],
                stalls: u32::from(ms == 100),
                failure: None,
                gateway: Some(Duration::from_micros(300)),
                cached_memory: (ms > 25).then(|| Duration::from_micros(5)),
            });
        }
        recorder.record(&Outcome::failed(Failure::Status(503)));

        let summary = recorder.summary();
        assert_eq!(
            (
                summary.counts.sent,
                summary.counts.ok,
                summary.counts.non_200
            ),
            (101, 100, 1)
        );
        assert_eq!(summary.counts.errors(), 1);
        assert_eq!(summary.counts.streams_with_stalls, 1);
        assert!(
            (summary.ttft.p50_ms - 50.0).abs() < 0.1,
            "{:?}",
            summary.ttft
        );
        assert!(
            (summary.ttft.p99_ms - 99.0).abs() < 0.1,
            "{:?}",
            summary.ttft
        );
        assert!(
            (summary.done.max_ms - 110.0).abs() < 0.1,
            "{:?}",
            summary.done
        );
        assert_eq!(summary.gaps.count, 100);
        assert_eq!(
            summary.cached_memory.count, 75,
            "only the cache-served requests"
        );
        assert!((summary.cached_memory.p50_ms - 0.005).abs() < 0.001);
    }
}
