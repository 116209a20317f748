//! The pooled HTTP clients behind the providers: one set per HTTP version in use.
//!
//! On HTTP/2 hyper's client puts every stream to a host on one connection and opens no second
//! one (RFC 9113 §9.1 asks clients not to): a request past the server's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` waits for a free stream, which on a phone call is dead air
//! for as long as another turn streams. Each `reqwest::Client` has a pool of its own, so a set
//! spreads streams over as many clients as it needs, at most
//! `upstream.http2_streams_per_connection` in flight on each, and with it over as many
//! connections to each host. On HTTP/1.1 a pool already opens a connection per concurrent
//! stream, so the set holds one client.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::config::HttpVersion;

use super::UpstreamError;

/// The clients of one HTTP version.
#[derive(Debug)]
pub(super) struct Clients {
    version: HttpVersion,
    connect_timeout: Duration,
    /// Streams in flight on one client before the next is used.
    per_client: usize,
    /// In order of creation; a stream goes to the first with room, so the first fill up and
    /// the later ones' connections go idle (and close) once a burst is over.
    slots: Mutex<Vec<Arc<Slot>>>,
}

#[derive(Debug)]
struct Slot {
    client: reqwest::Client,
    in_flight: AtomicUsize,
}

/// A stream's place on a client: counted in flight until dropped.
#[derive(Debug)]
pub(super) struct Lease(Arc<Slot>);

impl Lease {
    pub(super) fn client(&self) -> &reqwest::Client {
        &self.0.client
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Clients {
    /// A set speaking `version`, with its first client built (so a client that cannot be built
    /// fails the start, not a call). `http2_streams` bounds the streams per client where
    /// HTTP/2 may be spoken.
    pub(super) fn new(
        version: HttpVersion,
        connect_timeout: Duration,
        http2_streams: u64,
    ) -> Result<Self, UpstreamError> {
        let per_client = match version {
            HttpVersion::Http1 => usize::MAX,
            HttpVersion::Auto | HttpVersion::Http2 => {
                usize::try_from(http2_streams).unwrap_or(usize::MAX).max(1)
            }
        };
        let first = Slot {
            client: build(version, connect_timeout)?,
            in_flight: AtomicUsize::new(0),
        };
        Ok(Self {
            version,
            connect_timeout,
            per_client,
            slots: Mutex::new(vec![Arc::new(first)]),
        })
    }

    /// The HTTP version the set speaks.
    pub(super) fn version(&self) -> HttpVersion {
        self.version
    }

    /// A place for one more stream: on the first client with room, else on a new client.
    pub(super) fn lease(&self) -> Result<Lease, UpstreamError> {
        let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
        let free = slots
            .iter()
            .find(|slot| slot.in_flight.load(Ordering::Relaxed) < self.per_client);
        let slot = match free {
            Some(slot) => Arc::clone(slot),
            None => {
                let slot = Arc::new(Slot {
                    client: build(self.version, self.connect_timeout)?,
                    in_flight: AtomicUsize::new(0),
                });
                slots.push(Arc::clone(&slot));
                tracing::info!(
                    clients = slots.len(),
                    streams_each = self.per_client,
                    "every upstream client of this HTTP version has \
                     upstream.http2_streams_per_connection streams in flight; opened another"
                );
                slot
            }
        };
        slot.in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(Lease(slot))
    }

    /// How many clients the set holds.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// A pooled client speaking `version` (TCP_NODELAY, rustls).
fn build(
    version: HttpVersion,
    connect_timeout: Duration,
) -> Result<reqwest::Client, UpstreamError> {
    let builder = reqwest::Client::builder()
        .tcp_nodelay(true)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_max_idle_per_host(256)
        .user_agent(concat!("redial/", env!("CARGO_PKG_VERSION")));
    let builder = match version {
        HttpVersion::Auto => builder,
        HttpVersion::Http1 => builder.http1_only(),
        HttpVersion::Http2 => builder.http2_prior_knowledge(),
    };
    builder
        .build()
        .map_err(|e| UpstreamError::Transport(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(version: HttpVersion, streams: u64) -> Clients {
        Clients::new(version, Duration::from_secs(1), streams).unwrap()
    }

    #[test]
    fn a_client_takes_its_share_of_streams_then_the_next_is_opened() {
        let clients = set(HttpVersion::Http2, 2);
        let a = clients.lease().unwrap();
        let b = clients.lease().unwrap();
        assert_eq!(clients.len(), 1);
        let c = clients.lease().unwrap();
        assert_eq!(clients.len(), 2);
        assert!(Arc::ptr_eq(&a.0, &b.0) && !Arc::ptr_eq(&a.0, &c.0));
        // A finished stream frees its place on the first client, which is used again first.
        drop(a);
        let d = clients.lease().unwrap();
        assert!(Arc::ptr_eq(&d.0, &b.0));
        assert_eq!(clients.len(), 2);
        drop((b, c, d));
        let slots = clients.slots.lock().unwrap();
        assert!(
            slots
                .iter()
                .all(|s| s.in_flight.load(Ordering::Relaxed) == 0)
        );
    }

    #[test]
    fn http1_keeps_one_client_whose_pool_opens_a_connection_per_stream() {
        let clients = set(HttpVersion::Http1, 1);
        let leases: Vec<Lease> = (0..10).map(|_| clients.lease().unwrap()).collect();
        assert_eq!(clients.len(), 1);
        drop(leases);
        let auto = set(HttpVersion::Auto, 1);
        let _two = (auto.lease().unwrap(), auto.lease().unwrap());
        assert_eq!(auto.len(), 2, "auto may speak HTTP/2, so it is bounded too");
    }
}
