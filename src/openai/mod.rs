//! OpenAI Chat Completions wire types: what platforms send, what redial answers, and what the
//! upstream is sent.

mod request;
mod response;

pub use request::*;
pub use response::*;
