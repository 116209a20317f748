//! A TCP proxy between redial and Postgres that can be cut and restored: the database "goes
//! away" for redial without stopping the (shared) server. The fault benchmark and redial's
//! outage tests use it.
//!
//! The `try_*` functions report failures; [`Proxy::start`], [`Proxy::postgres_url`] and
//! [`postgres_addr`] are their test-friendly forms that panic on a failure instead.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// A running proxy to a target address. Stops (and closes every connection) when dropped.
#[derive(Debug)]
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: AbortHandle,
}

#[derive(Debug)]
struct Shared {
    target: SocketAddr,
    cut: AtomicBool,
    connections: Mutex<JoinSet<()>>,
}

impl Shared {
    /// The open connections; a poisoned lock still holds a usable set.
    fn connections(&self) -> MutexGuard<'_, JoinSet<()>> {
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target`.
    ///
    /// # Panics
    /// When the loopback listener cannot be bound (tests only; see [`Proxy::try_start`]).
    pub async fn start(target: SocketAddr) -> Self {
        match Self::try_start(target).await {
            Ok(proxy) => proxy,
            Err(error) => panic!("starting the proxy: {error:#}"),
        }
    }

    /// Listens on `127.0.0.1:0` and forwards every connection to `target`.
    pub async fn try_start(target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .context("binding the proxy")?;
        let addr = listener.local_addr().context("reading the proxy address")?;
        let shared = Arc::new(Shared {
            target,
            cut: AtomicBool::new(false),
            connections: Mutex::new(JoinSet::new()),
        });
        let server = tokio::spawn(accept(listener, Arc::clone(&shared))).abort_handle();
        Ok(Self {
            addr,
            shared,
            server,
        })
    }

    /// Cuts the database off: every open connection is closed and new ones are closed at once.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.connections().abort_all();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the proxy is cut.
    pub fn is_cut(&self) -> bool {
        self.shared.cut.load(Ordering::SeqCst)
    }

    /// `url` (a Postgres URL) pointed at this proxy instead of its own host and port.
    ///
    /// # Panics
    /// When `url` is not a URL with a host (tests only; see [`Proxy::try_postgres_url`]).
    pub fn postgres_url(&self, url: &str) -> String {
        match self.try_postgres_url(url) {
            Ok(url) => url,
            Err(error) => panic!("{error:#}"),
        }
    }

    /// `url` (a Postgres URL) pointed at this proxy instead of its own host and port.
    pub fn try_postgres_url(&self, url: &str) -> anyhow::Result<String> {
        let mut parsed = reqwest::Url::parse(url).context("parsing the database URL")?;
        parsed
            .set_host(Some("127.0.0.1"))
            .context("setting the database URL's host")?;
        parsed
            .set_port(Some(self.addr.port()))
            .map_err(|()| anyhow::anyhow!("the database URL cannot have a port"))?;
        Ok(parsed.to_string())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.abort();
        self.shared.connections().abort_all();
    }
}

/// Accepts connections; while cut, closes them at once, else forwards them to the target.
async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let client = match listener.accept().await {
            Ok((client, _)) => client,
            Err(_) => {
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        if shared.cut.load(Ordering::SeqCst) {
            // The database is away: the connection is closed at once.
            drop(client);
            continue;
        }
        let mut connections = shared.connections();
        // Reap finished connections so the set does not grow over a long run.
        while connections.try_join_next().is_some() {}
        connections.spawn(forward(client, shared.target));
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// The host and port of a Postgres URL (`localhost` read as `127.0.0.1`, port 5432 by default).
///
/// # Panics
/// When `url` is not such a URL (tests only; see [`try_postgres_addr`]).
pub fn postgres_addr(url: &str) -> SocketAddr {
    match try_postgres_addr(url) {
        Ok(addr) => addr,
        Err(error) => panic!("{error:#}"),
    }
}

/// The host and port of a Postgres URL (`localhost` read as `127.0.0.1`, port 5432 by default).
pub fn try_postgres_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let parsed = reqwest::Url::parse(url).context("parsing the database URL")?;
    let host = match parsed.host_str() {
        None | Some("localhost") => "127.0.0.1",
        Some(host) => host,
    };
    let port = parsed.port().unwrap_or(5432);
    format!("{host}:{port}")
        .parse()
        .with_context(|| format!("{host}:{port} is not an IP address and port"))
}
