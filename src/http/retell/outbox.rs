//! The single writer of a Retell socket and the [`Outbox`] every producer sends through.
//!
//! Frames from the reader (config, pong), the greeting and the response in progress all go
//! through one channel to one writer task, so they never interleave. Response frames carry the
//! *epoch* of the request they answer; when a newer request supersedes it, the writer drops
//! whatever the old response still had queued, so nothing more is sent for a superseded id.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::{CloseFrame, Message};
use futures_util::{Sink, SinkExt};
use tokio::sync::mpsc;

use super::protocol::ServerEvent;

/// Frames queued for the writer before producers wait.
const CAPACITY: usize = 256;

/// The socket is gone; stop producing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Closed;

/// A queued frame: `epoch` is set for frames of a response (dropped once superseded).
#[derive(Debug)]
pub(super) struct Outbound {
    epoch: Option<u64>,
    frame: Frame,
}

/// What the writer sends.
#[derive(Debug)]
enum Frame {
    /// A JSON event.
    Event(ServerEvent),
    /// A close frame; the writer stops after it.
    Close { code: u16, reason: &'static str },
}

/// The sending side, cheap to clone into every producer.
#[derive(Debug, Clone)]
pub(super) struct Outbox {
    tx: mpsc::Sender<Outbound>,
    current: Arc<AtomicU64>,
}

/// What the writer task needs: the queue and the current epoch.
#[derive(Debug)]
pub(super) struct Queue {
    rx: mpsc::Receiver<Outbound>,
    current: Arc<AtomicU64>,
}

impl Outbox {
    /// A new outbox and the queue its writer drains.
    pub(super) fn new() -> (Self, Queue) {
        let (tx, rx) = mpsc::channel(CAPACITY);
        let current = Arc::new(AtomicU64::new(0));
        let queue = Queue {
            rx,
            current: Arc::clone(&current),
        };
        (Self { tx, current }, queue)
    }

    /// Queues a frame that belongs to no response (config, pong, the begin message).
    pub(super) async fn send(&self, event: ServerEvent) -> Result<(), Closed> {
        self.send_tagged(None, event).await
    }

    /// Queues a frame of the response started at `epoch`.
    pub(super) async fn send_for(&self, epoch: u64, event: ServerEvent) -> Result<(), Closed> {
        self.send_tagged(Some(epoch), event).await
    }

    /// Queues a frame of the response started at `epoch` without waiting (for `Drop`).
    pub(super) fn try_send_for(&self, epoch: u64, event: ServerEvent) -> Result<(), Closed> {
        let outbound = Outbound {
            epoch: Some(epoch),
            frame: Frame::Event(event),
        };
        self.tx.try_send(outbound).map_err(|_| Closed)
    }

    async fn send_tagged(&self, epoch: Option<u64>, event: ServerEvent) -> Result<(), Closed> {
        let frame = Frame::Event(event);
        self.tx
            .send(Outbound { epoch, frame })
            .await
            .map_err(|_| Closed)
    }

    /// Queues a close frame with `code` and `reason` (at most 123 bytes, the protocol's
    /// limit); nothing is sent after it.
    pub(super) async fn close(&self, code: u16, reason: &'static str) -> Result<(), Closed> {
        debug_assert!(reason.len() <= 123, "a close reason is at most 123 bytes");
        let frame = Frame::Close { code, reason };
        self.tx
            .send(Outbound { epoch: None, frame })
            .await
            .map_err(|_| Closed)
    }

    /// Starts a new response epoch: from now on, frames of earlier responses are dropped.
    pub(super) fn supersede(&self) -> u64 {
        self.current.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Whether `epoch` is the response in progress (not superseded).
    pub(super) fn is_current(&self, epoch: u64) -> bool {
        self.current.load(Ordering::Acquire) == epoch
    }
}

impl Queue {
    /// Everything queued so far, with its epoch (tests inspect what producers sent).
    #[cfg(test)]
    pub(super) fn into_queued(mut self) -> Vec<(Option<u64>, ServerEvent)> {
        let mut queued = Vec::new();
        while let Ok(Outbound { epoch, frame }) = self.rx.try_recv() {
            if let Frame::Event(event) = frame {
                queued.push((epoch, event));
            }
        }
        queued
    }
}

/// Writes queued frames to `sink` as JSON text frames, one at a time and flushed, until every
/// [`Outbox`] is dropped or the socket fails.
pub(super) async fn write<S>(mut sink: S, mut queue: Queue)
where
    S: Sink<Message> + Unpin,
    S::Error: std::fmt::Display,
{
    while let Some(Outbound { epoch, frame }) = queue.rx.recv().await {
        if epoch.is_some_and(|e| e != queue.current.load(Ordering::Acquire)) {
            continue;
        }
        let event = match frame {
            Frame::Event(event) => event,
            Frame::Close { code, reason } => {
                let close = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                if let Err(e) = sink.send(Message::Close(Some(close))).await {
                    tracing::debug!(error = %e, "the Retell socket is closed; the close frame dropped");
                }
                return;
            }
        };
        let text = match serde_json::to_string(&event) {
            Ok(text) => text,
            Err(e) => {
                tracing::error!(error = %e, "a Retell frame did not serialize; dropped");
                continue;
            }
        };
        if let Err(e) = sink.send(Message::text(text)).await {
            tracing::debug!(error = %e, "the Retell socket is closed; outgoing frames dropped");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sink: &[Message]) -> Vec<String> {
        sink.iter()
            .map(|m| m.to_text().unwrap().to_owned())
            .collect()
    }

    #[tokio::test]
    async fn frames_of_a_superseded_response_are_dropped() {
        let (outbox, queue) = Outbox::new();
        let first = outbox.supersede();
        outbox
            .send(ServerEvent::PingPong { timestamp: 1 })
            .await
            .unwrap();
        outbox
            .send_for(first, ServerEvent::response(1, "old".into(), false))
            .await
            .unwrap();
        let second = outbox.supersede();
        assert!(!outbox.is_current(first) && outbox.is_current(second));
        outbox
            .send_for(first, ServerEvent::response(1, "stale".into(), true))
            .await
            .unwrap();
        outbox
            .try_send_for(second, ServerEvent::response(2, "new".into(), true))
            .unwrap();
        drop(outbox);

        let mut sink: Vec<Message> = Vec::new();
        write(&mut sink, queue).await;

        // The writer runs after the supersession, so even "old" (queued before it) is dropped.
        let sent = texts(&sink);
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert!(sent[0].contains("ping_pong"));
        assert!(sent[1].contains("\"new\"") && sent[1].contains("\"response_id\":2"));
    }
}
