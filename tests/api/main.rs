//! One integration-test binary: the HTTP API against real stores and a mock upstream, and the
//! store conformance suite.
#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod admin;
mod cache;
mod chat;
mod connections;
mod disk;
mod fillers;
mod http;
mod instances;
mod job_payloads;
mod jobs;
mod limits;
mod misconfig;
mod outage;
mod process;
mod providers;
mod resume;
mod retell;
mod sdk;
mod sim;
mod storage;
mod support;
mod tools;
mod webhooks;
mod writes;
