//! Benchmark support for redial.
//!
//! - [`mock`]: a scriptable mock OpenAI-compatible upstream, used by redial's integration tests
//!   and by the benchmarks.
//! - [`sse`]: an incremental SSE parser and chat-completion chunk classifier.
//! - [`load`]: the streaming load generator (closed and open loop, HDR percentiles).
//! - [`suite`]: the standard suite (direct vs through redial, per store, targets) and
//!   [`report`]: its markdown tables.
//! - [`fault`]: the fault benchmark (a Postgres outage under load: losses, duplicates, recovery).
//! - [`proxy`]: a TCP proxy that cuts and restores Postgres, shared with redial's outage tests.

pub mod fault;
pub mod load;
pub mod mock;
pub mod proxy;
pub mod report;
pub mod sim;
pub mod sse;
pub mod suite;
