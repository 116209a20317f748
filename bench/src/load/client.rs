//! A lean HTTP/1.1 client for the load generator.
//!
//! reqwest drives each connection in a task of its own and hands the body across a channel, so
//! every SSE frame costs two task wake-ups plus several body layers. Here a connection is
//! polled inside the task that reads its response, so a frame costs one wake-up. At 1,000 paced
//! streams (50,000 frames a second) on a 2-core machine shared with the server under test, the
//! load generator's own CPU use is part of what is measured, so it is kept small.
//!
//! Plain `http://` only: the benchmark runs over loopback.

use std::net::SocketAddr;
use std::pin::{Pin, pin};
use std::sync::{Mutex, PoisonError};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{AUTHORIZATION, CONTENT_TYPE, HOST, HeaderValue};
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Duration, Instant};

/// Idle pooled connections older than this are not reused.
const MAX_IDLE: Duration = Duration::from_secs(5);

type Driver = http1::Connection<TokioIo<TcpStream>, Full<Bytes>>;

/// Why an exchange failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ExchangeError {
    /// No connection could be opened.
    Connect,
    /// The connection failed before the response head arrived.
    Request,
}

/// One keep-alive connection, driven by whichever task is using it.
struct Connection {
    sender: SendRequest<Full<Bytes>>,
    driver: Pin<Box<Driver>>,
    closed: bool,
    idle_since: Instant,
}

impl Connection {
    async fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (sender, driver) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        Ok(Self {
            sender,
            driver: Box::pin(driver),
            closed: false,
            idle_since: Instant::now(),
        })
    }

    /// Sends `request` and runs `read` on the response, polling the connection's I/O meanwhile.
    /// Returns `None` if the connection failed before the response head.
    async fn exchange<T>(
        &mut self,
        request: Request<Full<Bytes>>,
        read: impl AsyncFnOnce(Response<Incoming>) -> T,
    ) -> Option<T> {
        let Self {
            sender,
            driver,
            closed,
            ..
        } = self;
        let work = async {
            sender.ready().await.ok()?;
            let response = sender.send_request(request).await.ok()?;
            Some(read(response).await)
        };
        let mut work = pin!(work);
        tokio::select! {
            biased;
            outcome = &mut work => {
                *closed |= outcome.is_none();
                outcome
            }
            // The connection ended first (closed or broken). The response, if any, has been
            // handed over already; finish reading it so a broken body reads as an error.
            _ = driver.as_mut() => {
                *closed = true;
                work.await
            }
        }
    }
}

/// Posts JSON bodies to one URL over a pool of keep-alive connections.
pub(crate) struct HttpClient {
    addr: SocketAddr,
    host: HeaderValue,
    uri: hyper::Uri,
    authorization: Option<HeaderValue>,
    idle: Mutex<Vec<Connection>>,
}

impl HttpClient {
    /// A client for `url` (`http://host:port/path`), sending `Authorization: Bearer <api_key>`
    /// when a key is given.
    pub(crate) async fn new(url: &str, api_key: Option<&str>) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("parsing {url}"))?;
        if parsed.scheme() != "http" {
            bail!(
                "the load generator speaks plain http://, not {}",
                parsed.scheme()
            );
        }
        let host = parsed.host_str().context("the URL has no host")?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        let path = match parsed.query() {
            Some(query) => format!("{}?{query}", parsed.path()),
            None => parsed.path().to_owned(),
        };
        let uri = path
            .parse()
            .with_context(|| format!("invalid path {path}"))?;
        let authorization = api_key
            .map(|key| HeaderValue::from_str(&format!("Bearer {key}")))
            .transpose()
            .context("the API key is not a valid header value")?;
        Ok(Self {
            addr,
            host: HeaderValue::from_str(&format!("{host}:{port}"))?,
            uri,
            authorization,
            idle: Mutex::new(Vec::new()),
        })
    }

    /// Posts `body` and runs `read` on the response, on an idle pooled connection or a new one.
    pub(crate) async fn post<T>(
        &self,
        body: Bytes,
        read: impl AsyncFnOnce(Response<Incoming>) -> T,
    ) -> Result<T, ExchangeError> {
        let mut connection = match self.take_idle() {
            Some(connection) => connection,
            None => Connection::open(self.addr)
                .await
                .map_err(|_| ExchangeError::Connect)?,
        };
        let outcome = connection.exchange(self.request(body), read).await;
        if !connection.closed {
            connection.idle_since = Instant::now();
            self.put_idle(connection);
        }
        outcome.ok_or(ExchangeError::Request)
    }

    fn request(&self, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(authorization) = &self.authorization {
            headers.insert(AUTHORIZATION, authorization.clone());
        }
        request
    }

    fn take_idle(&self) -> Option<Connection> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        // Most recently used first; connections idle too long may have been closed by the
        // server and are dropped rather than risked.
        while let Some(connection) = idle.pop() {
            if !connection.sender.is_closed() && connection.idle_since.elapsed() < MAX_IDLE {
                return Some(connection);
            }
        }
        None
    }

    fn put_idle(&self, connection: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(connection);
    }
}
