//! redial's own HTTP/1 accept loop around hyper, so that silent, slow and idle clients cannot
//! hold descriptors forever and a flood of connections cannot take the gateway down.
//!
//! - A connection must deliver a complete request head within `header_read_timeout` of opening
//!   (or of its first byte after an idle pause); a keep-alive connection with no request in
//!   flight is closed after `idle_timeout`. Neither ever cuts a request in flight: an SSE
//!   response that streams for minutes, or a WebSocket after its upgrade.
//! - At most `max_connections` are open at once. At the cap, a new connection takes the place
//!   of the oldest one that has no request in flight (a silent or idle socket is the cheapest
//!   thing to give up); when every connection is working, the new one is refused at once with a
//!   503. Nothing queues, and accepting never stops.
//! - Accept errors (out of descriptors) are logged at most every few seconds and retried after a
//!   short pause, instead of spinning.

mod conn;
pub mod limits;

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use conn::{Admission, Conn, Expiry, Registry, TrackedBody, TrackedIo};

/// Pause after an accept error that is not about one connection (out of descriptors, memory).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Repeated warnings (accept errors, refusals) are logged at most this often.
const LOG_EVERY: Duration = Duration::from_secs(10);

/// How the server treats connections.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Longest wait for a complete request head.
    pub header_read_timeout: Duration,
    /// Longest idle pause of a keep-alive connection between requests.
    pub idle_timeout: Duration,
    /// Most connections open at once.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops accepting, closes
/// connections with no request in flight, lets the others finish their response, and returns
/// once all are closed. Dropping the future closes every connection at once.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: CancellationToken,
) {
    let registry = Registry::new(options.max_connections);
    let mut connections = JoinSet::new();
    let mut accept_log = Throttle::default();
    let mut refusal_log = Throttle::default();
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(joined) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = joined.map_err(|e| e.try_into_panic()) {
                    tracing::error!(panic = ?e.ok(), "a connection task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let Some(slot) = admit(&registry, &stream, peer, &mut refusal_log) else {
                        continue;
                    };
                    let connection = Connection { router: router.clone(), options, shutdown: shutdown.clone(), peer };
                    connections.spawn(connection.run(stream, slot));
                }
                Err(e) => accept_failed(&e, &mut accept_log).await,
            },
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Registers a new connection, or refuses it at the cap.
fn admit(
    registry: &Arc<Registry>,
    stream: &TcpStream,
    peer: SocketAddr,
    refusal_log: &mut Throttle,
) -> Option<conn::Slot> {
    match registry.admit() {
        Admission::Admitted(slot) => Some(slot),
        Admission::Evicted(slot) => {
            metrics::counter!("redial_connections_evicted_total").increment(1);
            Some(slot)
        }
        Admission::Refused => {
            metrics::counter!("redial_connections_refused_total").increment(1);
            if let Some(suppressed) = refusal_log.ready() {
                tracing::warn!(%peer, open = registry.open(), suppressed, "connection refused at server.max_connections: no connection without a request in flight could make room");
            }
            refuse(stream);
            None
        }
    }
}

/// Answers 503 if the socket takes it at once (never waiting), then the caller closes it.
fn refuse(stream: &TcpStream) {
    static RESPONSE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let response = RESPONSE.get_or_init(|| {
        let body =
            crate::error::ApiError::Unavailable("too many connections; retry shortly".into())
                .body()
                .to_string();
        format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    });
    let _ = stream.try_write(response);
}

/// Logs an accept error (throttled) and, unless it concerned only the one connection, pauses
/// briefly: out of descriptors, an immediate retry fails again and spins a core.
async fn accept_failed(error: &io::Error, log: &mut Throttle) {
    let transient = matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    );
    if transient {
        return;
    }
    metrics::counter!("redial_accept_errors_total").increment(1);
    if let Some(suppressed) = log.ready() {
        tracing::error!(%error, suppressed, "accept failed; retrying shortly");
    }
    tokio::time::sleep(ACCEPT_BACKOFF).await;
}

/// One accepted connection.
struct Connection {
    router: Router,
    options: ServeOptions,
    shutdown: CancellationToken,
    peer: SocketAddr,
}

impl Connection {
    /// Serves the connection until it closes, times out, is evicted, or shutdown closes it.
    async fn run(self, stream: TcpStream, slot: conn::Slot) {
        // Token-sized SSE frames must leave at once: no Nagle delay waiting for an ACK.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let conn = Arc::clone(slot.conn());
        let Self {
            router,
            options,
            shutdown,
            peer,
        } = self;
        let service = {
            let conn = Arc::clone(&conn);
            hyper::service::service_fn(move |request| {
                handle(request, router.clone(), peer, Arc::clone(&conn))
            })
        };
        let io = TokioIo::new(TrackedIo::new(stream, slot));
        let connection = http1::Builder::new()
            // The phases in `conn` replace it (see there why).
            .header_read_timeout(None)
            .serve_connection(io, service)
            .with_upgrades();
        tokio::pin!(connection);
        let mut draining = false;
        loop {
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(error = %e, %peer, "connection ended with an error");
                    }
                    return;
                }
                () = shutdown.cancelled(), if !draining => {
                    if !conn.is_busy() {
                        return;
                    }
                    connection.as_mut().graceful_shutdown();
                    draining = true;
                }
                expiry = conn.expired(options.header_read_timeout, options.idle_timeout) => {
                    record(expiry, peer);
                    return;
                }
            }
        }
    }
}

fn record(expiry: Expiry, peer: SocketAddr) {
    match expiry {
        Expiry::Header => {
            metrics::counter!("redial_connection_timeouts_total", "kind" => "header").increment(1);
            tracing::debug!(%peer, "closed: no complete request head in time");
        }
        Expiry::Idle => {
            metrics::counter!("redial_connection_timeouts_total", "kind" => "idle").increment(1);
            tracing::debug!(%peer, "closed: idle keep-alive connection");
        }
        Expiry::Evicted => tracing::debug!(%peer, "closed to make room at the connection cap"),
    }
}

/// Runs one request through the router, with the peer address for `ConnectInfo`, tracking the
/// request until its response body is done.
async fn handle(
    request: Request<Incoming>,
    router: Router,
    peer: SocketAddr,
    conn: Arc<Conn>,
) -> Result<Response<TrackedBody>, Infallible> {
    let guard = conn.request_started();
    let mut request = request.map(axum::body::Body::new);
    request.extensions_mut().insert(ConnectInfo(peer));
    let response = match router.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        guard.upgraded();
    }
    Ok(response.map(|inner| TrackedBody {
        inner,
        guard: Some(guard),
    }))
}

/// Lets a repeated warning through at most every [`LOG_EVERY`], counting the ones held back.
#[derive(Default)]
struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(how many were held back since the last one)` when this one may be logged.
    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self.last.is_some_and(|last| now < last + LOG_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}
