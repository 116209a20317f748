//! A TCP proxy between redial and Postgres that a test can cut and restore: the database
//! "goes away" for redial without stopping the shared server. It lives in the bench crate so
//! the fault benchmark and the tests share one implementation.

pub use redial_bench::proxy::{Proxy, postgres_addr};
