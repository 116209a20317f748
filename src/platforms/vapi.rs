//! Vapi on the chat path: the body carries the `call` object (and `customer`, `assistant`)
//! beside the OpenAI fields.

use serde_json::Value;

use super::identity::Claim;
use crate::openai::ChatRequest;

/// The ids of a Vapi request — one with a `call` object, `None` otherwise: `call.id`,
/// `customer.number` or `call.customer.number`, `call.assistantId` or `assistant.id`.
pub(super) fn claim(request: &ChatRequest) -> Option<Claim> {
    let call = request.extra.get("call")?;
    let text = |field: &'static str, v: Option<&Value>| {
        v.and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(|s| (field, s.to_owned()))
    };
    let call_key = text("call.id", call.get("id"));
    let caller = text(
        "customer.number",
        request.extra.get("customer").and_then(|c| c.get("number")),
    )
    .or_else(|| text("call.customer.number", call.pointer("/customer/number")));
    let assistant = text("call.assistantId", call.get("assistantId")).or_else(|| {
        text(
            "assistant.id",
            request.extra.get("assistant").and_then(|a| a.get("id")),
        )
    });
    Some(Claim {
        call_key,
        caller,
        assistant,
    })
}
