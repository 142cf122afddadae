//! The HTTP client side: one shared `ureq` agent, set up for a proxy, and one call that
//! sends a request with a given pool key.
//!
//! Invariants: upstream status codes are answers, never errors (`http_status_as_error`
//! off), redirects are not followed, bodies are not decompressed (no `gzip` feature), and
//! no environment proxy is used. This is the only place a raw key is put on the wire.

use std::time::Duration;

use ureq::http::{self, Response};
use ureq::{Agent, Body, SendBody};

use crate::config::UpstreamTimeouts;
use crate::key::ApiKey;

/// Time to send the request body.
const SEND_BODY_TIMEOUT: Duration = Duration::from_secs(120);
/// Idle upstream connections kept for reuse. Below the number of requests in flight,
/// connections churn (measured: at 256 clients, 64 idle gave a 367 ms p99).
const IDLE_CONNECTIONS: usize = 256;
/// Per-connection buffers. ureq's defaults (128 KiB each way) cost a quarter of a
/// megabyte per open stream; responses' headers are small and bodies are relayed in
/// 16 KiB reads, so these suffice. Measured in BENCHMARKS.md.
const INPUT_BUFFER: usize = 16 * 1024;
const OUTPUT_BUFFER: usize = 8 * 1024;

pub fn agent(timeouts: UpstreamTimeouts) -> Agent {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        // Send only what the client sent: no invented Accept header.
        .accept("")
        .timeout_connect(Some(timeouts.connect))
        .timeout_send_body(Some(SEND_BODY_TIMEOUT))
        .timeout_recv_response(Some(timeouts.headers))
        .timeout_per_read(Some(timeouts.silence))
        .max_idle_connections(IDLE_CONNECTIONS)
        .max_idle_connections_per_host(IDLE_CONNECTIONS)
        .max_response_header_size(INPUT_BUFFER)
        .input_buffer_size(INPUT_BUFFER)
        .output_buffer_size(OUTPUT_BUFFER)
        .build();
    Agent::new_with_config(config)
}

/// Sends one attempt: `headers` are the client's end-to-end headers (already filtered),
/// to which the pool key is added as `Authorization: Bearer`.
pub fn send(
    agent: &Agent,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    key: &ApiKey,
    body: &[u8],
) -> Result<Response<Body>, ureq::Error> {
    let mut request = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    request = request.header("authorization", format!("Bearer {}", key.expose()));
    // No body at all (rather than an empty one) keeps GETs free of `Content-Length: 0`.
    if body.is_empty() {
        agent.run(request.body(SendBody::none())?)
    } else {
        agent.run(request.body(body)?)
    }
}

/// A short description of a failed attempt, for logs and for the 502 a client gets.
pub fn describe(error: &ureq::Error) -> String {
    match error {
        ureq::Error::ConnectionFailed => "could not connect".to_string(),
        ureq::Error::HostNotFound => "host not found".to_string(),
        ureq::Error::Timeout(which) => format!("timed out ({which})"),
        ureq::Error::Io(e) => format!("connection error: {e}"),
        other => other.to_string(),
    }
}
