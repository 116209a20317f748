//! redial: a custom-LLM gateway for voice agents.
//!
//! Platform adapters at the edge ([`http`], [`platforms`], [`webhooks`]), one conversation
//! engine in the middle ([`engine`]), durable state behind the [`storage::Store`] traits. What it
//! does: `README.md`; how it is built and where a change goes: `docs/ARCHITECTURE.md`; how it
//! behaves when things fail: `docs/OPERATIONS.md`.

pub mod admin;
pub mod analysis;
pub mod cli;
pub mod commands;
pub mod config;
pub mod engine;
pub mod error;
pub mod http;
pub mod journal;
pub mod openai;
pub mod platforms;
pub mod server;
pub mod silence;
pub mod startup;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod upstream;
pub mod webhooks;
