//! Platform webhooks, transport-free: signature verification ([`signature`]).

pub mod signature;

pub use signature::{
    SignatureError, VapiAuthHeaders, verify_elevenlabs, verify_retell, verify_vapi,
};
