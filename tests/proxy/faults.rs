//! Fault injection: upstreams that refuse, hang, stall, or answer nonsense; clients that
//! send malformed, huge, slow or no requests; storms and floods. Each case checks what
//! the client sees, and that the proxy serves the next request afterwards.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Duration;

use crate::support::*;

/// Faults must be answered well before this.
const PROMPT: Duration = Duration::from_secs(10);

fn send_with_reply(proxy: &Proxy, reply: &str) -> Reply {
    Reply::from(
        client()
            .post(&proxy.url("/v1/chat/completions"))
            .header("x-mock-reply", reply)
            .send("{}")
            .unwrap(),
    )
}

/// Reads until the server closes the connection; fails the test after `PROMPT`.
fn read_to_close(socket: &mut TcpStream) -> Vec<u8> {
    socket.set_read_timeout(Some(PROMPT)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match socket.read(&mut buf) {
            Ok(0) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return out,
            Err(e) => panic!(
                "the proxy did not close the connection ({e}); got {:?}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
}

fn error_message_of(response: &[u8]) -> String {
    let text = String::from_utf8_lossy(response);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default();
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not the error shape ({e}): {text}"));
    json["error"]["message"].as_str().unwrap().to_string()
}

#[test]
fn an_upstream_that_refuses_connections_gets_502_naming_the_cause() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let proxy = Proxy::bare()
        .keys(2)
        .arg("--upstream")
        .arg(&format!("http://127.0.0.1:{port}/api/v1"))
        .start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 502);
    assert!(
        reply.error_message().contains("refused"),
        "{}",
        reply.text()
    );
    assert_eq!(proxy.get("/_roo/status").status, 200);
}

#[test]
fn an_upstream_that_hangs_before_headers_times_out_and_counts_as_a_failed_attempt() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(2)
        .arg("--headers-timeout")
        .arg("1s")
        .start();
    // The mock hangs far past the client's own deadline (support's DEADLINE), so an
    // answer at all means the proxy's timeout ended each attempt.
    mock.plan(&key(1), &["hang:600"]);
    mock.plan(&key(2), &["hang:600"]);
    let reply = proxy.chat();
    assert_eq!(reply.status, 502, "{}", reply.text());
    assert!(
        reply.error_message().contains("timed out"),
        "{}",
        reply.text()
    );
    assert!(
        reply.error_message().contains("2 attempts"),
        "{}",
        reply.text()
    );
    // One key hangs once, the other answers: two requests in a row (round-robin tries
    // key 1 first in one of them) both succeed, and the hang was met.
    let before = mock.requests().len();
    mock.plan(&key(1), &["hang:600"]);
    assert_eq!(proxy.chat().status, 200);
    assert_eq!(proxy.chat().status, 200);
    assert_eq!(
        mock.requests().len() - before,
        3,
        "the hang was never tried"
    );
}

#[test]
fn an_upstream_that_stalls_mid_stream_is_cut_after_the_silence_timeout() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(1)
        .arg("--silence-timeout")
        .arg("1s")
        .start();
    // The mock stalls far past read_to_close's limit: the end can only come from the
    // proxy's silence timeout.
    let mut socket = TcpStream::connect(proxy.addr()).unwrap();
    let request = streamed_request("stall:600").replace(
        "Host: localhost\r\n",
        "Host: localhost\r\nConnection: close\r\n",
    );
    socket.write_all(request.as_bytes()).unwrap();
    let response = String::from_utf8_lossy(&read_to_close(&mut socket)).into_owned();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("tok0"), "{response}");
    assert!(
        response.contains("\"finish_reason\":\"error\""),
        "no error event: {response}"
    );
    assert!(
        response.ends_with("0\r\n\r\n"),
        "body not ended: {response}"
    );
    assert_eq!(proxy.chat().status, 200);
}

#[test]
fn non_http_replies_and_enormous_headers_are_upstream_failures() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(2).start();
    for fault in ["garbage", "bighead", "drop"] {
        let reply = send_with_reply(&proxy, fault);
        assert_eq!(reply.status, 502, "{fault}: {}", reply.text());
        assert!(
            reply.error_message().contains("failed on 2 attempts"),
            "{fault}: {}",
            reply.text()
        );
    }
    assert_eq!(proxy.chat().status, 200);
}

#[test]
fn a_429_storm_on_every_key_from_64_clients_is_answered_and_no_cooling_key_is_used() {
    let mock = Mock::start();
    let proxy = Arc::new(Proxy::with(&mock).keys(4).start());
    let wave = |proxy: &Arc<Proxy>| {
        let barrier = Arc::new(Barrier::new(64));
        let clients: Vec<_> = (0..64)
            .map(|_| {
                let (proxy, barrier) = (Arc::clone(proxy), Arc::clone(&barrier));
                thread::spawn(move || {
                    barrier.wait();
                    let reply = send_with_reply(&proxy, "429:60");
                    (reply.status, reply.retry_after())
                })
            })
            .collect();
        for client in clients {
            let (status, retry_after) = client.join().unwrap();
            assert_eq!(status, 429);
            assert!(retry_after >= 1);
        }
    };
    wave(&proxy);
    let seen = mock.requests().len();
    assert!(seen <= 64 * 4, "{seen} upstream requests");
    // Every key cools now: a second storm must not reach the upstream at all.
    wave(&proxy);
    assert_eq!(mock.requests().len(), seen, "a cooling key was used");
    assert_eq!(proxy.get("/_roo/status").status, 200);
}

#[test]
fn malformed_requests_get_400_in_the_error_shape() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let cases: [&[u8]; 5] = [
        b"GARBAGE\r\n\r\n",
        b"GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-Bad: a\x00b\r\n\r\n",
        b"GET /v1/mo\x7fdels HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ];
    for case in cases {
        let response = raw_exchange(&proxy.addr(), case, PROMPT);
        assert_eq!(
            raw_status(&response),
            400,
            "{}",
            String::from_utf8_lossy(case)
        );
        assert!(!error_message_of(&response).is_empty());
    }
    assert!(mock.requests().is_empty());
    assert_eq!(proxy.chat().status, 200);
}

/// A chunked chat request whose body is `chunks` (the chunks and the last-chunk).
fn chunked_chat(chunks: &str) -> Vec<u8> {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}"
    )
    .into_bytes()
}

#[test]
fn bare_lf_line_ends_and_bad_chunk_extensions_get_400_and_other_versions_505() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let many_extensions = format!("1;a={}\r\n{{\r\n", "x".repeat(1000)).repeat(17);
    let cases: Vec<(Vec<u8>, u16, &str)> =
        vec![
        (
            b"GET /v1/models HTTP/1.1\nHost: 127.0.0.1\r\n\r\n".to_vec(),
            400,
            "bare LF",
        ),
        (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\nContent-Length: 2\r\n\r\n{}"
                .to_vec(),
            400,
            "bare LF",
        ),
        (
            b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\n".to_vec(),
            400,
            "bare LF",
        ),
        (chunked_chat("2\n{}\r\n0\r\n\r\n"), 400, "bare LF"),
        (chunked_chat("2;a=b\nc\r\n{}\r\n0\r\n\r\n"), 400, "bare LF"),
        (chunked_chat("2;a=b\rc\r\n{}\r\n0\r\n\r\n"), 400, "bare CR"),
        (chunked_chat("2;=b\r\n{}\r\n0\r\n\r\n"), 400, "chunk-size line"),
        (chunked_chat("2;a=\"b\r\n{}\r\n0\r\n\r\n"), 400, "chunk-size line"),
        (
            chunked_chat(&format!("{many_extensions}0\r\n\r\n")),
            400,
            "chunk extensions",
        ),
        (
            b"GET /v1/models HTTP/1.2\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
            505,
            "HTTP/1.2 is not supported",
        ),
        (
            b"GET /v1/models HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
            505,
            "HTTP/2.0 is not supported",
        ),
        (
            b"GET /v1/models HTTP/1.x\r\nHost: 127.0.0.1\r\n\r\n".to_vec(),
            400,
            "version",
        ),
    ];
    for (request, status, says) in &cases {
        let response = raw_exchange(&proxy.addr(), request, PROMPT);
        let shown = String::from_utf8_lossy(request);
        assert_eq!(raw_status(&response), *status, "{shown:?}");
        let message = error_message_of(&response);
        assert!(message.contains(says), "{shown:?}: {message}");
    }
    assert!(
        mock.requests().is_empty(),
        "a refused request went upstream"
    );
    // Extensions that follow the grammar are dropped, and the body goes on.
    let response = raw_exchange(
        &proxy.addr(),
        &chunked_chat("1;a=b\r\n{\r\n1 ; c = \"d;e\"\r\n}\r\n0\r\n\r\n"),
        PROMPT,
    );
    assert_eq!(raw_status(&response), 200);
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn huge_heads_and_too_many_headers_get_431() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let huge = format!(
        "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-Huge: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let response = raw_exchange(&proxy.addr(), huge.as_bytes(), PROMPT);
    assert_eq!(raw_status(&response), 431);
    assert!(error_message_of(&response).contains("--max-header-size"));
    let many = format!(
        "GET /v1/models HTTP/1.1\r\nHost: localhost\r\n{}\r\n",
        "X-Many: 1\r\n".repeat(150)
    );
    let response = raw_exchange(&proxy.addr(), many.as_bytes(), PROMPT);
    assert_eq!(raw_status(&response), 431);
    assert!(error_message_of(&response).contains("--max-headers"));
    assert_eq!(proxy.chat().status, 200);
}

#[test]
fn a_declared_body_of_a_terabyte_gets_413_and_the_process_lives_on() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000000000000\r\n\r\n{\"model\":";
    let response = raw_exchange(&proxy.addr(), request, PROMPT);
    assert_eq!(raw_status(&response), 413);
    assert!(error_message_of(&response).contains("--max-body"));
    assert_eq!(proxy.chat().status, 200);
}

#[test]
fn slow_silent_and_idle_clients_are_cut_off() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(1)
        .arg("--client-timeout")
        .arg("1s")
        .arg("--idle-timeout")
        .arg("1s")
        .start();
    let open = |first: &[u8]| {
        let mut socket = TcpStream::connect(proxy.addr()).unwrap();
        socket.write_all(first).unwrap();
        socket
    };
    // Slowloris: half a head, then nothing.
    let mut socket = open(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n");
    let response = read_to_close(&mut socket);
    assert_eq!(raw_status(&response), 408);
    assert!(error_message_of(&response).contains("--client-timeout"));
    // A body that stops coming.
    let mut socket = open(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{\"a\":",
    );
    let response = read_to_close(&mut socket);
    assert_eq!(raw_status(&response), 408);
    // A connection that never says anything is closed without an answer.
    assert!(read_to_close(&mut open(b"")).is_empty());
    // A kept-alive connection is closed once idle.
    let mut socket = open(b"GET /_roo/health HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let response = read_to_close(&mut socket);
    assert!(response.starts_with(b"HTTP/1.1 "), "{response:?}");
    assert!(mock.requests().is_empty());
    assert_eq!(proxy.chat().status, 200);
}

#[test]
fn connections_past_the_limit_get_503_and_service_comes_back() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(1)
        .arg("--max-connections")
        .arg("4")
        .start();
    let held: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(proxy.addr()).unwrap())
        .collect();
    eventually("a connection over the limit is refused", || {
        let reply = proxy.chat();
        reply.status == 503
            && reply.header("retry-after") == Some("1")
            && reply.error_message().contains("--max-connections 4")
    });
    drop(held);
    eventually("served again", || proxy.chat().status == 200);
}

#[cfg(target_os = "linux")]
fn threads_and_descriptors(pid: u32) -> (usize, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let threads = status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (threads, fds)
}

/// Opens a stream, reads up to its first event, and hangs up.
#[cfg(target_os = "linux")]
fn abort_a_stream(addr: &str) {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(PROMPT)).unwrap();
    socket
        .write_all(streamed_request("sse:100000:5").as_bytes())
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("data: {") {
        let n = socket.read(&mut buf).expect("the stream stalled");
        assert!(n > 0, "closed before the first event");
        seen.extend_from_slice(&buf[..n]);
    }
}

#[cfg(target_os = "linux")]
#[test]
fn ten_thousand_aborted_streams_leave_no_threads_or_descriptors_behind() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    for _ in 0..8 {
        abort_a_stream(&proxy.addr());
    }
    let (threads, fds) = threads_and_descriptors(proxy.pid());
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let addr = proxy.addr();
            thread::spawn(move || {
                for _ in 0..10_000 / 8 {
                    abort_a_stream(&addr);
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    // Workers beyond the idle ones retire; each stream's sockets close once its client
    // is gone. What is left must not depend on how many streams there were.
    eventually("threads and descriptors back near where they were", || {
        let (now_threads, now_fds) = threads_and_descriptors(proxy.pid());
        now_threads <= threads.max(24) && now_fds <= fds + 24
    });
    assert_eq!(proxy.chat().status, 200);
}

#[cfg(unix)]
#[test]
fn running_out_of_descriptors_turns_connections_away_and_recovers() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).fd_limit(48).start();
    assert_eq!(proxy.chat().status, 200);
    let mut flood: Vec<TcpStream> = (0..100)
        .map(|_| TcpStream::connect(proxy.addr()).unwrap())
        .collect();
    let mut turned_away = 0;
    for socket in &mut flood {
        socket.set_read_timeout(Some(PROMPT)).unwrap();
        let _ = socket.write_all(b"GET /_roo/health HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let mut buf = [0u8; 64];
        match socket.read(&mut buf) {
            Ok(0) => turned_away += 1,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => turned_away += 1,
            Err(e) => panic!("a connection neither served nor turned away: {e}"),
            Ok(_) => assert!(buf.starts_with(b"HTTP/1.1 ")),
        }
    }
    assert!(turned_away > 0, "the flood never ran the proxy out");
    assert!(
        turned_away < 100,
        "no connection was served during the flood"
    );
    proxy.wait_for_log("out of file descriptors");
    drop(flood);
    // Until the proxy has closed the flood's connections, a new one may still be turned
    // away: that is an error here, not a failed test.
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let sent = client().post(&proxy.url("/v1/chat/completions")).send("{}");
        if sent.as_ref().is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not served again after the flood: {:?}\n{}",
            sent.map(|r| r.status()),
            proxy.logs()
        );
        thread::sleep(Duration::from_millis(20));
    }
}
