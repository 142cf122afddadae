//! The HTTP client side: the `ureq` agents (eight, each with its own connection pool; a
//! worker thread always uses the same one), set up for a proxy, and one call that sends
//! a request with a given pool key.
//!
//! Invariants: upstream status codes are answers, never errors (`http_status_as_error`
//! off), redirects are not followed, bodies are not decompressed (no `gzip` feature), and
//! no environment proxy is used. This is the only place a raw key is put on the wire.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use ureq::http::{self, Response};
use ureq::tls::TlsConfig;
use ureq::unversioned::resolver::DefaultResolver;
use ureq::{Agent, Body, SendBody};

use crate::front::config::UpstreamTimeouts;
use crate::keys::key::ApiKey;
use crate::outbound::transport::Connect;
use crate::rotation::provider::Auth;

/// Time to send the request (head and body). One value for both, so the socket's send
/// timeout is set once per connection, not twice per request.
const SEND_TIMEOUT: Duration = Duration::from_secs(120);
/// Agents, each with its own connection pool. ureq walks a pool's idle connections each
/// time one is returned, comparing hosts as strings: with one pool for all workers that
/// walk was ~7% of the proxy's CPU at 64 clients (BENCHMARKS.md). A worker thread always
/// uses the same agent, so its pool stays short and its connection stays warm.
const AGENTS: usize = 8;
/// Idle upstream connections kept for reuse, over all agents. Below the number of
/// requests in flight, connections churn (measured: at 256 clients, 64 idle gave a
/// 367 ms p99).
const IDLE_CONNECTIONS: usize = 256;
/// Per-connection buffers, at most. ureq's defaults (128 KiB each way) cost a quarter of
/// a megabyte per open stream; responses' heads are small (the input size caps them)
/// and bodies are relayed in 8 KiB reads. The transport starts the input buffer at a
/// page and drops the output buffer once a request is sent. Measured in BENCHMARKS.md.
const INPUT_BUFFER: usize = 16 * 1024;
pub const OUTPUT_BUFFER: usize = 8 * 1024;
/// Room kept in the output buffer for the head lines ureq adds (Host, Authorization with
/// the key, Content-Length, User-Agent, Accept): generous, so a head that fits never
/// fails with "output too small".
const ADDED_HEAD: usize = 1024;

/// The upstream side of the proxy: a few agents, one per group of worker threads.
pub struct Upstream {
    agents: Vec<Agent>,
}

impl Upstream {
    pub fn new(timeouts: UpstreamTimeouts) -> Upstream {
        let agents = (0..AGENTS)
            .map(|_| agent(timeouts, IDLE_CONNECTIONS / AGENTS, TlsConfig::default()))
            .collect();
        Upstream { agents }
    }

    /// The calling thread's agent: always the same one for a thread.
    pub fn agent(&self) -> &Agent {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SLOT: usize = NEXT.fetch_add(1, Ordering::Relaxed);
        }
        &self.agents[SLOT.with(|slot| *slot) % self.agents.len()]
    }
}

fn agent(timeouts: UpstreamTimeouts, idle: usize, tls: TlsConfig) -> Agent {
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        // Send only what the client sent: no invented Accept header.
        .accept("")
        .timeout_connect(Some(timeouts.connect))
        .timeout_send_request(Some(SEND_TIMEOUT))
        .timeout_send_body(Some(SEND_TIMEOUT))
        .timeout_recv_response(Some(timeouts.headers))
        .timeout_per_read(Some(timeouts.silence))
        .max_idle_connections(idle)
        .max_idle_connections_per_host(idle)
        .max_response_header_size(INPUT_BUFFER)
        .input_buffer_size(INPUT_BUFFER)
        .output_buffer_size(OUTPUT_BUFFER)
        .tls_config(tls)
        .build();
    Agent::with_parts(config, Connect::default(), DefaultResolver::default())
}

/// Sends one attempt: `headers` are the client's end-to-end headers (already filtered,
/// so no credential of the client's is among them), to which the pool key is added in
/// the provider's form (`auth`), with the headers it needs that the client did not send.
pub fn send(
    agent: &Agent,
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    (key, auth): (&ApiKey, Auth),
    body: &[u8],
) -> Result<Response<Body>, ureq::Error> {
    let mut request = http::Request::builder().method(method).uri(url);
    for &(name, value) in headers {
        request = request.header(name, value);
    }
    for &(name, value) in auth.defaults() {
        if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case(name)) {
            request = request.header(name, value);
        }
    }
    let (name, value) = auth.header(key.expose());
    request = request.header(name, value);
    // No body at all (rather than an empty one) keeps GETs free of `Content-Length: 0`.
    if body.is_empty() {
        agent.run(request.body(SendBody::none())?)
    } else {
        agent.run(request.body(body)?)
    }
}

/// Whether a request with this method, URL and headers fits ureq's output buffer (with
/// room for what ureq and [`send`] add). The whole URL is counted for the request line,
/// which overcounts it by the scheme and host, and so covers the `Host` line.
pub fn head_fits(method: &str, url: &str, headers: &[(&str, &str)]) -> bool {
    let line = method.len() + 1 + url.len() + " HTTP/1.1\r\n".len();
    let fields: usize = headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    line + fields + ADDED_HEAD <= OUTPUT_BUFFER
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

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::Arc;

    use ureq::tls::{Certificate, RootCerts};

    use super::*;

    #[test]
    fn a_thread_keeps_its_agent_and_threads_spread_over_agents() {
        let upstream = Upstream::new(UpstreamTimeouts::DEFAULT);
        let address = |agent: &Agent| agent as *const Agent as usize;
        let mine = address(upstream.agent());
        assert_eq!(address(upstream.agent()), mine, "a thread changed agents");
        let seen: std::collections::HashSet<usize> = (0..AGENTS)
            .map(|_| std::thread::scope(|s| s.spawn(|| address(upstream.agent())).join().unwrap()))
            .collect();
        assert!(
            seen.len() > AGENTS / 2,
            "threads share too few agents: {}",
            seen.len()
        );
    }

    /// A plain-HTTP upstream that answers each connection's first request with `ok`,
    /// then does `after` to the connection and reports on `done`. Returns the port and
    /// the number of connections it accepted.
    fn one_answer_each(
        after: fn(&mut TcpStream),
    ) -> (u16, Arc<AtomicUsize>, std::sync::mpsc::Receiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let (done, finished) = std::sync::mpsc::channel();
        let count = accepted.clone();
        std::thread::spawn(move || {
            for socket in listener.incoming() {
                let mut socket = socket.unwrap();
                count.fetch_add(1, Ordering::SeqCst);
                let mut head = String::new();
                let mut reader = BufReader::new(socket.try_clone().unwrap());
                while !head.ends_with("\r\n\r\n") {
                    if reader.read_line(&mut head).unwrap() == 0 {
                        break;
                    }
                }
                socket
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .unwrap();
                after(&mut socket);
                if done.send(()).is_err() {
                    return;
                }
            }
        });
        (port, accepted, finished)
    }

    /// ureq's idle check is made once per request, as a connection leaves the pool
    /// (transport.rs): a connection the upstream closed, or sent stray bytes on, while it
    /// sat in the pool is still never used for the next request.
    #[test]
    fn a_pooled_connection_the_upstream_spoiled_is_not_used() {
        let spoil: [fn(&mut TcpStream); 2] = [
            |socket| socket.shutdown(std::net::Shutdown::Both).unwrap(),
            |socket| socket.write_all(b"HTTP/1.1 200 OK\r\n").unwrap(),
        ];
        for (case, after) in spoil.into_iter().enumerate() {
            let (port, accepted, finished) = one_answer_each(after);
            let agent = agent(UpstreamTimeouts::DEFAULT, 4, TlsConfig::default());
            let key = ApiKey::parse(
                "sk-or-v1-0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab",
            )
            .unwrap();
            let url = format!("http://127.0.0.1:{port}/api/v1/models");
            for round in 1..=2 {
                let response = send(&agent, "GET", &url, &[], (&key, Auth::Bearer), b"");
                let answer = response.and_then(|r| r.into_body().read_to_string());
                assert_eq!(answer.unwrap(), "ok", "case {case}, request {round}");
                finished
                    .recv_timeout(Duration::from_secs(5))
                    .expect("the upstream did not answer");
            }
            assert_eq!(accepted.load(Ordering::SeqCst), 2, "case {case}");
        }
    }

    /// An https upstream on 127.0.0.1 (certificate from tests/tls) that answers
    /// `requests` requests on the first connection it accepts with their body's length,
    /// then returns what it was sent.
    fn tls_upstream(requests: usize) -> (u16, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let certs = vec![rustls::pki_types::CertificateDer::from(
                Certificate::from_pem(include_bytes!("../../tests/tls/upstream.pem"))
                    .unwrap()
                    .der()
                    .to_vec(),
            )];
            let key =
                ureq::tls::PrivateKey::from_pem(include_bytes!("../../tests/tls/upstream.key"))
                    .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.der().to_vec().into());
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let config = rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(certs, key)
                .unwrap();
            let (socket, _) = listener.accept().unwrap();
            let tls = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            let mut stream = BufReader::new(rustls::StreamOwned::new(tls, socket));
            let mut seen = Vec::new();
            for _ in 0..requests {
                let mut head = String::new();
                while !head.ends_with("\r\n\r\n") {
                    assert!(stream.read_line(&mut head).unwrap() > 0, "closed in a head");
                }
                let length = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |n| n.parse().unwrap());
                let mut body = vec![0; length];
                stream.read_exact(&mut body).unwrap();
                let answer = length.to_string();
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{answer}",
                    answer.len()
                );
                stream.get_mut().write_all(reply.as_bytes()).unwrap();
                seen.push(head + &String::from_utf8(body).unwrap());
            }
            seen
        });
        (port, server)
    }

    #[test]
    fn requests_go_whole_over_one_reused_tls_connection() {
        let (port, server) = tls_upstream(3);
        let ca = Certificate::from_pem(include_bytes!("../../tests/tls/ca.pem")).unwrap();
        let tls = TlsConfig::builder()
            .root_certs(RootCerts::Specific(Arc::new(vec![ca])))
            .build();
        let short = Duration::from_secs(5);
        let timeouts = UpstreamTimeouts {
            connect: short,
            headers: short,
            silence: short,
        };
        let agent = agent(timeouts, 4, tls);
        let key =
            ApiKey::parse("sk-or-v1-0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab")
                .unwrap();
        let url = format!("https://127.0.0.1:{port}/api/v1/chat/completions");
        let headers = [("content-type", "application/json")];
        let bodies: [&[u8]; 3] = [b"{\"stream\":false}", b"", &[b'x'; 20_000]];
        for body in bodies {
            let method = if body.is_empty() { "GET" } else { "POST" };
            let response =
                send(&agent, method, &url, &headers, (&key, Auth::Bearer), body).unwrap();
            assert_eq!(response.status(), 200);
            let answer = response.into_body().read_to_string().unwrap();
            assert_eq!(answer, body.len().to_string());
        }
        // All three on the first connection: a second one would never be answered.
        let seen = server.join().unwrap();
        assert!(seen[0].starts_with("POST /api/v1/chat/completions HTTP/1.1\r\n"));
        assert!(
            seen[0].ends_with("\r\n\r\n{\"stream\":false}"),
            "{}",
            seen[0]
        );
        assert!(seen[1].starts_with("GET "), "{}", seen[1]);
        assert!(seen[2].ends_with(&"x".repeat(20_000)));
    }
}
