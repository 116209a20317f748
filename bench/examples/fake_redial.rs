//! A stand-in for the redial binary, for checking the suite's through-redial code path before
//! redial itself is ready: `fake_redial serve --config FILE` reads `[server] listen`,
//! `[server] api_keys`, `[database] url` and `[upstream] base_url` from the suite's config,
//! answers `GET /readyz`, checks the bearer token, and pipes `POST /v1/chat/completions` to the
//! upstream unchanged, streaming. It exits on SIGTERM.
//!
//! ```text
//! cargo build -p redial-bench --example fake_redial
//! REDIAL_BIN=target/debug/examples/fake_redial target/debug/redial-bench suite --smoke
//! ```
//!
//! Its numbers measure a bare streaming proxy, not redial.

use std::sync::Arc;

use anyhow::{Context as _, bail};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::serve::ListenerExt as _;
use tokio::signal::unix::{SignalKind, signal};

/// What the proxy needs from the config.
struct Proxy {
    client: reqwest::Client,
    upstream: String,
    api_key: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, serve, flag, path] = args.as_slice() else {
        bail!("usage: fake_redial serve --config FILE");
    };
    if serve != "serve" || flag != "--config" {
        bail!("usage: fake_redial serve --config FILE");
    }
    let config = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let listen = value(&config, "listen")?;
    let database = value(&config, "url")?;
    if !(database.starts_with("sqlite:") || database.starts_with("postgres:")) {
        bail!("unexpected database url {database}");
    }
    let proxy = Arc::new(Proxy {
        client: reqwest::Client::builder().tcp_nodelay(true).build()?,
        upstream: format!("{}/chat/completions", value(&config, "base_url")?),
        api_key: value(&config, "api_keys")?,
    });
    let app = Router::new()
        .route("/readyz", get(|| async { "ok" }))
        .route("/v1/chat/completions", post(chat))
        .with_state(proxy);
    // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs hold small SSE frames for ~40 ms.
    let listener = tokio::net::TcpListener::bind(&listen)
        .await?
        .tap_io(|stream| {
            let _ = stream.set_nodelay(true);
        });
    let mut terminate = signal(SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            terminate.recv().await;
        })
        .await?;
    Ok(())
}

/// The first quoted string on the line starting with `key =` (good enough for the suite's
/// generated config).
fn value(config: &str, key: &str) -> anyhow::Result<String> {
    let line = config
        .lines()
        .find(|line| line.split('=').next().is_some_and(|k| k.trim() == key))
        .with_context(|| format!("no {key} in config"))?;
    let quoted = line
        .split('"')
        .nth(1)
        .with_context(|| format!("{key} is not a string"))?;
    Ok(quoted.to_owned())
}

async fn chat(State(proxy): State<Arc<Proxy>>, headers: HeaderMap, body: Bytes) -> Response {
    let expected = format!("Bearer {}", proxy.api_key);
    if headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        != Some(&expected)
    {
        return (StatusCode::UNAUTHORIZED, "bad key").into_response();
    }
    let upstream = proxy
        .client
        .post(&proxy.upstream)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await;
    match upstream {
        Ok(response) => {
            let status = response.status();
            let headers = [(header::CONTENT_TYPE, "text/event-stream")];
            (status, headers, Body::from_stream(response.bytes_stream())).into_response()
        }
        Err(error) => (StatusCode::BAD_GATEWAY, error.to_string()).into_response(),
    }
}
