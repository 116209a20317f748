//! What each connection is doing, tracked so that timeouts and eviction only ever touch a
//! connection with no request in flight.
//!
//! A connection is in one of four phases:
//! - `HEAD`: opened, or sent the first byte of a request after an idle pause, and has not yet
//!   delivered the complete request head. Closed after `header_read_timeout`.
//! - `IDLE`: a keep-alive connection between requests. Closed after `idle_timeout`.
//! - `BUSY`: a request is in flight, from its complete head until its response body (an SSE
//!   stream that may last minutes) has been handed to the socket. Never closed by redial.
//! - `UPGRADED`: answered `101 Switching Protocols`; the socket now belongs to a WebSocket
//!   session. Never closed by redial's HTTP timeouts.
//!
//! hyper's own `header_read_timeout` is not used: on a keep-alive connection it also runs
//! while the connection waits idle for its next request, so one setting would govern both.

use std::collections::BTreeMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;

const HEAD: u64 = 0;
const IDLE: u64 = 1;
const BUSY: u64 = 2;
const UPGRADED: u64 = 3;
/// The phase lives in the low two bits of [`Conn::state`], the time it began above them, so
/// both change together.
const PHASE_BITS: u32 = 2;
const PHASE_MASK: u64 = (1 << PHASE_BITS) - 1;

/// Every open connection, oldest first, with the cap on how many may be open.
pub(super) struct Registry {
    connections: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    cap: usize,
    epoch: Instant,
}

/// What [`Registry::admit`] decided about a new connection.
pub(super) enum Admission {
    /// Below the cap: serve it.
    Admitted(Slot),
    /// At the cap: serve it, and the oldest connection with no request in flight was told to
    /// close to make room.
    Evicted(Slot),
    /// At the cap and every connection has a request in flight (or room is already being made):
    /// refuse it.
    Refused,
}

/// How far past the cap connections may be admitted while evicted ones are still closing.
/// The descriptor reserve (see `limits`) absorbs it.
const EVICTION_SLACK: usize = 32;

impl Registry {
    pub(super) fn new(cap: usize) -> Arc<Self> {
        Arc::new(Self {
            connections: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            cap,
            epoch: Instant::now(),
        })
    }

    /// Registers a new connection if there is room, making room by evicting the oldest
    /// connection that has no request in flight when there is not.
    pub(super) fn admit(self: &Arc<Self>) -> Admission {
        let mut connections = self.lock();
        let open = connections.len();
        let evicted = if open < self.cap {
            false
        } else if open < self.cap + EVICTION_SLACK && evict_oldest_idle(&connections) {
            true
        } else {
            return Admission::Refused;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            state: AtomicU64::new(pack(HEAD, self.epoch)),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
            epoch: self.epoch,
        });
        connections.insert(id, Arc::clone(&conn));
        metrics::gauge!("redial_connections_open").set(connections.len() as f64);
        drop(connections);
        let slot = Slot {
            id,
            conn,
            registry: Arc::clone(self),
        };
        if evicted {
            Admission::Evicted(slot)
        } else {
            Admission::Admitted(slot)
        }
    }

    /// Connections open now.
    pub(super) fn open(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        // The map stays consistent whatever panicked while holding it.
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Tells the oldest connection with no request in flight (and not already told) to close.
fn evict_oldest_idle(connections: &BTreeMap<u64, Arc<Conn>>) -> bool {
    let victim = connections
        .values()
        .find(|c| matches!(c.phase(), HEAD | IDLE) && !c.evicted.load(Ordering::Relaxed));
    match victim {
        Some(conn) => {
            conn.evicted.store(true, Ordering::Relaxed);
            conn.evict.notify_one();
            true
        }
        None => false,
    }
}

/// `phase`, beginning now.
fn pack(phase: u64, epoch: Instant) -> u64 {
    let ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX >> PHASE_BITS);
    (ms << PHASE_BITS) | phase
}

/// The shared state of one connection.
pub(super) struct Conn {
    /// The phase and when it began, in milliseconds since `epoch` (see [`pack`]).
    state: AtomicU64,
    evicted: AtomicBool,
    evict: Notify,
    epoch: Instant,
}

/// Why a connection with no request in flight was closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// No complete request head within the header read timeout.
    Header,
    /// Idle between requests for the idle timeout.
    Idle,
    /// Closed to make room for a new connection at the cap.
    Evicted,
}

impl Conn {
    fn phase(&self) -> u64 {
        self.state.load(Ordering::Acquire) & PHASE_MASK
    }

    fn enter(&self, phase: u64) {
        self.state.store(pack(phase, self.epoch), Ordering::Release);
    }

    /// Moves from phase `from` to `to` (beginning now) unless the phase changed meanwhile.
    fn advance(&self, from: u64, to: u64) {
        let state = self.state.load(Ordering::Acquire);
        if state & PHASE_MASK == from {
            let _ = self.state.compare_exchange(
                state,
                pack(to, self.epoch),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
    }

    /// Whether a request is in flight or the socket was handed to a WebSocket.
    pub(super) fn is_busy(&self) -> bool {
        matches!(self.phase(), BUSY | UPGRADED)
    }

    /// Bytes arrived: after an idle pause, that starts the next request head (and its timeout).
    fn received(&self) {
        self.advance(IDLE, HEAD);
    }

    /// A complete request head arrived; the returned guard marks the end of its response.
    pub(super) fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.enter(BUSY);
        RequestGuard(Arc::clone(self))
    }

    /// Resolves when the connection should be closed: its phase's timeout ran out with no
    /// request in flight, or it was evicted. Never resolves while a request is in flight.
    pub(super) async fn expired(&self, header: Duration, idle: Duration) -> Expiry {
        loop {
            let state = self.state.load(Ordering::Acquire);
            let limit = match state & PHASE_MASK {
                HEAD => Some((header, Expiry::Header)),
                IDLE => Some((idle, Expiry::Idle)),
                _ => None,
            };
            let Some((limit, expiry)) = limit else {
                // Busy: look again later (the phase changes without waking anyone).
                tokio::select! {
                    () = tokio::time::sleep(header.min(idle)) => {}
                    () = self.evict.notified() => {}
                }
                continue;
            };
            if self.evicted.load(Ordering::Relaxed) {
                return Expiry::Evicted;
            }
            let since = Duration::from_millis(state >> PHASE_BITS);
            let deadline = self.epoch + since + limit;
            if Instant::now() >= deadline {
                return expiry;
            }
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {}
                () = self.evict.notified() => {}
            }
        }
    }
}

/// A connection's place in the registry, released when the socket closes (which, after a
/// WebSocket upgrade, is when the session ends: the socket still counts until then).
pub(super) struct Slot {
    id: u64,
    conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Slot {
    pub(super) fn conn(&self) -> &Arc<Conn> {
        &self.conn
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut connections = self.registry.lock();
        connections.remove(&self.id);
        metrics::gauge!("redial_connections_open").set(connections.len() as f64);
    }
}

/// The end of a request: dropped with its response body, once the body is complete (or the
/// connection gone).
pub(super) struct RequestGuard(Arc<Conn>);

impl RequestGuard {
    /// The response switches protocols: the socket belongs to the WebSocket from now on.
    pub(super) fn upgraded(&self) {
        self.0.enter(UPGRADED);
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.advance(BUSY, IDLE);
    }
}

/// A response body that holds its request's [`RequestGuard`] until it is done.
pub(super) struct TrackedBody {
    pub(super) inner: axum::body::Body,
    pub(super) guard: Option<RequestGuard>,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let poll = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(poll, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.guard = None;
        }
        poll
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The client's socket, noting every read (so an idle connection's first byte starts the header
/// timeout) and holding the connection's [`Slot`].
pub(super) struct TrackedIo {
    stream: TcpStream,
    slot: Slot,
}

impl TrackedIo {
    pub(super) fn new(stream: TcpStream, slot: Slot) -> Self {
        Self { stream, slot }
    }
}

impl AsyncRead for TrackedIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.stream).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.slot.conn.received();
        }
        poll
    }
}

impl AsyncWrite for TrackedIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
