//! One integration-test binary: the HTTP API against real stores and a mock upstream, and the
//! store conformance suite.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod chat;
mod retell;
mod storage;
mod support;
