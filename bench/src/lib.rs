//! Benchmark support for redial: a scriptable mock OpenAI-compatible upstream ([`mock`]) used by
//! integration tests and benchmarks alike, and an SSE parser for chat-completion streams
//! ([`sse`]).

pub mod mock;
pub mod sse;
