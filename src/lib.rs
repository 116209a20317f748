//! redial: a custom-LLM gateway for voice agents.
//!
//! See `README.md` for what it does and `../shared/DESIGN.md` for the architecture.

pub mod storage;
