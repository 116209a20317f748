//! Helpers shared by the API tests.
#![expect(clippy::expect_used, reason = "test setup failing is a test failure")]

pub mod app;
pub mod db;
