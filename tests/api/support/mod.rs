//! Helpers shared by the API tests.

pub mod app;
pub mod db;
