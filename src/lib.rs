//! redial: a custom-LLM gateway for voice agents.
//!
//! See `README.md` for what it does and how it is built ("Architecture"), and
//! `docs/OPERATIONS.md` for how it behaves when things fail: platform adapters at the edge ([`http`]), one conversation engine in the middle, durable state behind
//! the [`storage::Store`] trait.

pub mod admin;
pub mod analysis;
pub mod cli;
pub mod config;
pub mod engine;
pub mod error;
pub mod http;
pub mod journal;
pub mod openai;
pub mod platforms;
pub mod server;
pub mod startup;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod upstream;
pub mod webhooks;
