//! A TCP proxy between redial and Postgres that a test can cut and restore: the database
//! "goes away" for redial without stopping the shared server.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::{AbortHandle, JoinSet};

/// A running proxy to `target`.
pub struct Proxy {
    /// Where it listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    server: AbortHandle,
}

struct Shared {
    target: SocketAddr,
    cut: AtomicBool,
    connections: Mutex<JoinSet<()>>,
}

impl Proxy {
    /// Listens on `127.0.0.1:0` and forwards every connection to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target,
            cut: AtomicBool::new(false),
            connections: Mutex::new(JoinSet::new()),
        });
        let accepting = Arc::clone(&shared);
        let server = tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                if accepting.cut.load(Ordering::SeqCst) {
                    // The database is away: the connection is closed at once.
                    drop(client);
                    continue;
                }
                let target = accepting.target;
                accepting
                    .connections
                    .lock()
                    .unwrap()
                    .spawn(forward(client, target));
            }
        })
        .abort_handle();
        Self {
            addr,
            shared,
            server,
        }
    }

    /// Cuts the database off: every open connection is closed and new ones are closed at once.
    pub fn cut(&self) {
        self.shared.cut.store(true, Ordering::SeqCst);
        self.shared.connections.lock().unwrap().abort_all();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.shared.cut.store(false, Ordering::SeqCst);
    }

    /// `url` (a Postgres URL) pointed at this proxy instead of its own host and port.
    pub fn postgres_url(&self, url: &str) -> String {
        let mut parsed = reqwest::Url::parse(url).expect("a database URL");
        parsed.set_host(Some("127.0.0.1")).expect("set the host");
        parsed
            .set_port(Some(self.addr.port()))
            .expect("set the port");
        parsed.to_string()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.server.abort();
        self.shared.connections.lock().unwrap().abort_all();
    }
}

async fn forward(mut client: TcpStream, target: SocketAddr) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

/// The host and port of a Postgres URL.
pub fn postgres_addr(url: &str) -> SocketAddr {
    let parsed = reqwest::Url::parse(url).expect("a database URL");
    let host = parsed.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    let port = parsed.port().unwrap_or(5432);
    format!("{host}:{port}").parse().expect("a socket address")
}
