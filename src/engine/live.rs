//! Calls demonstrably live on this instance: a turn of theirs is running, or (Retell) their
//! socket is open or within its reconnect grace.
//!
//! A new call from the same caller does not resume a call that is live here, however long ago
//! its last stored activity was: a slow turn has not stored anything yet, and a Retell caller may
//! be silent for a while with the line still open. The registry is per process; on another
//! instance the store's `last_activity_at` (within `memory.live_window_secs`) stands in for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::platforms::Platform;

/// What keeps a call live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hold {
    /// A turn is running (until it is persisted).
    Turn,
    /// A connection of the call is open (a Retell socket, or its reconnect grace).
    Connection,
}

type Key = (Platform, String, Hold);

/// The registry: how many holds of each kind each call has.
#[derive(Debug, Clone, Default)]
pub struct LiveCalls(Arc<Mutex<HashMap<Key, usize>>>);

impl LiveCalls {
    /// Marks the call live until the returned guard is dropped.
    pub fn hold(&self, platform: Platform, call_key: &str, hold: Hold) -> LiveGuard {
        let key = (platform, call_key.to_owned(), hold);
        *self.lock().entry(key.clone()).or_insert(0) += 1;
        LiveGuard {
            calls: self.clone(),
            key,
        }
    }

    /// How many holds of this kind the call has.
    pub fn holds(&self, platform: Platform, call_key: &str, hold: Hold) -> usize {
        self.lock()
            .get(&(platform, call_key.to_owned(), hold))
            .copied()
            .unwrap_or(0)
    }

    /// Whether anything holds the call live on this instance.
    pub fn is_live(&self, platform: Platform, call_key: &str) -> bool {
        [Hold::Turn, Hold::Connection]
            .into_iter()
            .any(|hold| self.holds(platform, call_key, hold) > 0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, usize>> {
        // The map holds plain counts: a panic elsewhere cannot leave it inconsistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Keeps a call live while held.
#[derive(Debug)]
pub struct LiveGuard {
    calls: LiveCalls,
    key: Key,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut map = self.calls.lock();
        if let Some(count) = map.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                map.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_is_live_while_any_hold_remains() {
        let calls = LiveCalls::default();
        let first = calls.hold(Platform::Retell, "c1", Hold::Connection);
        let second = calls.hold(Platform::Retell, "c1", Hold::Connection);
        let turn = calls.hold(Platform::Retell, "c1", Hold::Turn);
        assert_eq!(calls.holds(Platform::Retell, "c1", Hold::Connection), 2);
        assert!(!calls.is_live(Platform::Vapi, "c1"), "per platform");
        drop(first);
        drop(second);
        assert_eq!(calls.holds(Platform::Retell, "c1", Hold::Connection), 0);
        assert!(
            calls.is_live(Platform::Retell, "c1"),
            "the turn still holds it"
        );
        drop(turn);
        assert!(!calls.is_live(Platform::Retell, "c1"));
        assert!(calls.0.lock().unwrap().is_empty(), "no entry left behind");
    }
}
