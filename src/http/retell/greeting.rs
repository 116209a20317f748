//! The begin message (`response_id: 0`): the assistant's greeting, by name for a known caller,
//! spoken once per call — a reconnect of the same call gets an empty begin message.
//!
//! "Once" is decided by the store, not by this process: the greeting is recorded as the call's
//! opening turn (under a fixed idempotency key) before it is sent, and only the connection whose
//! write inserted it speaks it. That holds across reconnects to another redial instance and when a
//! `call_started` webhook created the session first.

use std::time::Duration;

use super::outbox::Outbox;
use super::protocol::ServerEvent;
use crate::config::{AssistantSettings, NAME_PLACEHOLDER};
use crate::engine::Engine;
use crate::platforms::Identity;

/// Longest wait for the caller's profile before greeting without it.
const PROFILE_BUDGET: Duration = Duration::from_secs(1);

/// Longest caller name spoken in a greeting, in characters.
const MAX_NAME_CHARS: usize = 60;

/// Decides the greeting and sends the begin message.
pub(super) async fn send_begin(engine: Engine, identity: Identity, outbox: Outbox) {
    let content = greeting(&engine, &identity).await;
    tracing::info!(greeted = !content.is_empty(), "begin message");
    let _ = outbox.send(ServerEvent::response(0, content, true)).await;
}

/// What the agent says first: empty when the assistant has no greeting or this call was
/// greeted already. Fails open: without the store, the caller is greeted without their name.
async fn greeting(engine: &Engine, identity: &Identity) -> String {
    let assistant = engine.settings().assistant(&identity.assistant_id);
    if assistant.greeting.trim().is_empty() {
        return String::new();
    }
    let context = match tokio::time::timeout(PROFILE_BUDGET, engine.load_call_context(identity))
        .await
    {
        Ok(Ok(context)) => Some(context),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "loading the call failed; greeting without memory");
            None
        }
        Err(_) => {
            tracing::warn!(budget = ?PROFILE_BUDGET, "loading the call timed out; greeting without memory");
            None
        }
    };
    let name = context
        .as_ref()
        .and_then(|c| c.caller.as_ref())
        .and_then(|c| c.name.as_deref());
    let text = render(assistant, name);
    let Some(context) = context else {
        return text;
    };
    match engine
        .record_opening(context.session.session_id, &text)
        .await
    {
        Ok(true) => text,
        Ok(false) => {
            tracing::info!("the call was greeted before this connection; not greeting again");
            String::new()
        }
        Err(e) => {
            tracing::warn!(error = %e, "storing the greeting failed; greeting anyway");
            text
        }
    }
}

/// The assistant's greeting for a caller called `name` (when known).
pub(super) fn render(assistant: &AssistantSettings, name: Option<&str>) -> String {
    let greeting = assistant.greeting.trim();
    if !greeting.contains(NAME_PLACEHOLDER) {
        return greeting.to_owned();
    }
    if let Some(name) = name.map(clean_name).filter(|n| !n.is_empty()) {
        return greeting.replace(NAME_PLACEHOLDER, &name);
    }
    let unknown = assistant.greeting_unknown.trim();
    if unknown.is_empty() {
        without_placeholder(greeting)
    } else {
        unknown.to_owned()
    }
}

/// A stored name made safe to speak: no control characters, bounded length.
fn clean_name(name: &str) -> String {
    let name: String = name
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_NAME_CHARS)
        .collect();
    name.trim().to_owned()
}

/// The greeting with `{name}` removed, together with the space or comma that introduced it:
/// "Hi {name}, how can I help?" → "Hi, how can I help?", "Welcome back, {name}!" → "Welcome
/// back!".
fn without_placeholder(greeting: &str) -> String {
    let text = greeting.replace(NAME_PLACEHOLDER, "");
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_whitespace() {
            if !out.is_empty() && !out.ends_with(' ') {
                out.push(' ');
            }
            continue;
        }
        if matches!(c, ',' | '.' | '!' | '?' | ';' | ':') {
            while out.ends_with(' ') {
                out.pop();
            }
            if out.ends_with(',') {
                out.pop();
            }
            if out.is_empty() && matches!(c, ',' | ';' | ':') {
                continue;
            }
        }
        out.push(c);
    }
    capitalise(out.trim_end())
}

fn capitalise(text: &str) -> String {
    let mut chars = text.chars();
    chars.next().map_or_else(String::new, |first| {
        first.to_uppercase().chain(chars).collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assistant(greeting: &str, unknown: &str) -> AssistantSettings {
        AssistantSettings {
            greeting: greeting.into(),
            greeting_unknown: unknown.into(),
            ..AssistantSettings::default()
        }
    }

    #[test]
    fn a_known_caller_is_greeted_by_name() {
        let a = assistant("Hi {name}, welcome back!", "Hello!");
        assert_eq!(render(&a, Some("Maria")), "Hi Maria, welcome back!");
        assert_eq!(render(&a, Some(" Jo\u{7}e ")), "Hi Joe, welcome back!");
        assert_eq!(render(&a, None), "Hello!");
        assert_eq!(render(&a, Some("  ")), "Hello!", "a blank name is no name");
        let plain = assistant("Thanks for calling.", "");
        assert_eq!(render(&plain, Some("Maria")), "Thanks for calling.");
        assert_eq!(render(&assistant("", ""), Some("Maria")), "");
    }

    #[test]
    fn without_a_name_the_placeholder_disappears_with_its_separator() {
        for (greeting, expected) in [
            ("Hi {name}, how can I help?", "Hi, how can I help?"),
            ("Welcome back, {name}!", "Welcome back!"),
            ("Hello {name}.", "Hello."),
            ("Hi {name}", "Hi"),
            ("{name}, welcome to Acme.", "Welcome to Acme."),
            ("Hi {name}... it's Ava.", "Hi... it's Ava."),
        ] {
            assert_eq!(
                render(&assistant(greeting, ""), None),
                expected,
                "{greeting}"
            );
        }
    }
}
