//! Helpers shared by the API tests.

pub mod app;
pub mod db;
pub mod inspect;
pub mod process;
pub mod proxy;
