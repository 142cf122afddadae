//! Streaming: bytes reach the client as the upstream sends them, and every stream ends.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

/// Reads from `stream` until `done` says the bytes so far are complete; returns them
/// with the instant each `data:` event was first seen. Fails the test at the deadline.
fn read_until(stream: &mut TcpStream, done: impl Fn(&[u8]) -> bool) -> (Vec<u8>, Vec<Instant>) {
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let (mut bytes, mut events) = (Vec::new(), Vec::new());
    let mut buf = [0u8; 4096];
    while !done(&bytes) {
        assert!(
            Instant::now() < deadline,
            "the awaited bytes never came: {}",
            String::from_utf8_lossy(&bytes)
        );
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                bytes.extend_from_slice(&buf[..n]);
                let seen = String::from_utf8_lossy(&bytes).matches("data: {").count();
                events.resize(seen, Instant::now());
            }
            Err(_) => continue,
        }
    }
    (bytes, events)
}

fn ends_chunked(bytes: &[u8]) -> bool {
    bytes.ends_with(b"\r\n0\r\n\r\n")
}

/// The body of a chunked response, decoded strictly: each chunk's size line, exactly
/// that many bytes and CRLF, up to the last chunk. Fails the test on any framing error,
/// and on bytes after the end.
fn dechunk(response: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(response);
    let at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head: {text}"))
        + 4;
    let mut rest = &response[at..];
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .unwrap_or_else(|| panic!("a chunk size line without CRLF: {text}"));
        let size_line = std::str::from_utf8(&rest[..line_end]).unwrap();
        let size = usize::from_str_radix(size_line, 16)
            .unwrap_or_else(|_| panic!("chunk size {size_line:?}: {text}"));
        rest = &rest[line_end + 2..];
        if size == 0 {
            assert_eq!(rest, b"\r\n", "after the last chunk: {text}");
            return body;
        }
        assert!(rest.len() >= size + 2, "a chunk cut short: {text}");
        body.extend_from_slice(&rest[..size]);
        assert_eq!(
            &rest[size..size + 2],
            b"\r\n",
            "a chunk not ended by CRLF: {text}"
        );
        rest = &rest[size + 2..];
    }
}

/// The SSE event the mock sends as its event `i`.
fn mock_event(i: usize) -> String {
    let event = serde_json::json!({"id": "gen-mock", "object": "chat.completion.chunk", "model": "mock/model",
        "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null}]});
    format!("data: {event}\n\n")
}

#[test]
fn sse_events_arrive_one_by_one_as_the_upstream_sends_them() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let mut socket = TcpStream::connect(proxy.addr()).unwrap();
    socket
        .write_all(streamed_request("ssegate:5").as_bytes())
        .unwrap();
    // The mock sends event i only after the i-th release, and this test releases it
    // only once event i-1 has arrived: each event reached the client before the next
    // existed, so none was held back (no clock involved).
    let mut response = Vec::new();
    for i in 0..5 {
        let (more, _) = read_until(&mut socket, |b| {
            String::from_utf8_lossy(b).contains(&format!("tok{i} "))
        });
        response.extend_from_slice(&more);
        if i < 4 {
            let text = String::from_utf8_lossy(&response);
            assert!(!text.contains("[DONE]"), "the stream ended early: {text}");
            mock.release();
        }
    }
    // The last event and the end may come in the same read, or the end alone (then it
    // is `0\r\n\r\n` without the CRLF before it: judge the whole response, not the read).
    if !ends_chunked(&response) {
        let before = response.clone();
        let (rest, _) = read_until(&mut socket, |b| ends_chunked(&[&before[..], b].concat()));
        response.extend_from_slice(&rest);
    }
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.contains("\r\nTransfer-Encoding: chunked\r\n"),
        "{text}"
    );
    let expected: String = [": OPENROUTER PROCESSING\n\n".to_string()]
        .into_iter()
        .chain((0..5).map(mock_event))
        .chain(["data: [DONE]\n\n".to_string()])
        .collect();
    assert_eq!(String::from_utf8(dechunk(&response)).unwrap(), expected);
}

#[test]
fn a_stream_that_breaks_off_still_ends_with_an_error_event() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let mut socket = TcpStream::connect(proxy.addr()).unwrap();
    socket
        .write_all(streamed_request("dropmid").as_bytes())
        .unwrap();
    let (bytes, _) = read_until(&mut socket, ends_chunked);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("tok0") && text.contains("tok1"), "{text}");
    let error_event = text
        .lines()
        .find(|l| l.starts_with("data: {\"choices\"") && l.contains("\"error\""))
        .unwrap_or_else(|| panic!("no error event: {text}"));
    let json: serde_json::Value = serde_json::from_str(&error_event["data: ".len()..]).unwrap();
    assert_eq!(json["error"]["code"], 502);
    assert_eq!(json["choices"][0]["finish_reason"], "error");
    assert!(!text.contains("[DONE]"));

    // The connection is still in a clean state: a second request on it is served.
    socket.write_all(streamed_request("ok").as_bytes()).unwrap();
    let (bytes, _) = read_until(&mut socket, ends_chunked);
    assert!(String::from_utf8_lossy(&bytes).contains("data: [DONE]"));
    proxy.wait_for_log("upstream broke off after");
}

/// What a broken stream must end with for one provider's SDK, and what would make it
/// look whole.
struct BrokenStream {
    provider: &'static str,
    /// The request path, as that provider's SDK sends a streamed request.
    path: &'static str,
    /// The last event, as the SDK reads it: its lines, parsed.
    check: fn(&str) -> bool,
    /// The end of a whole answer, which must not appear.
    whole: &'static str,
}

#[test]
fn a_broken_stream_ends_with_the_error_event_of_the_api_it_speaks() {
    let openai = |event: &str| {
        event.strip_prefix("data: ").is_some_and(|data| {
            let json: serde_json::Value = serde_json::from_str(data).unwrap();
            json["error"]["code"] == 502 && json["choices"][0]["finish_reason"] == "error"
        })
    };
    let anthropic = |event: &str| {
        event
            .strip_prefix("event: error\ndata: ")
            .is_some_and(|data| {
                let json: serde_json::Value = serde_json::from_str(data).unwrap();
                json["type"] == "error" && json["error"]["type"] == "api_error"
            })
    };
    let gemini = |event: &str| {
        event.strip_prefix("data: ").is_some_and(|data| {
            let json: serde_json::Value = serde_json::from_str(data).unwrap();
            // google-genai raises on a chunk that starts `{"error":`.
            data.starts_with("{\"error\":")
                && json["error"]["code"] == 502
                && json["error"]["status"] == "UNAVAILABLE"
        })
    };
    let cases = [
        BrokenStream {
            provider: "openrouter",
            path: "/v1/chat/completions",
            check: openai,
            whole: "[DONE]",
        },
        BrokenStream {
            provider: "anthropic",
            path: "/v1/messages",
            check: anthropic,
            whole: "message_stop",
        },
        // Claude Code through OpenRouter's Messages API.
        BrokenStream {
            provider: "openrouter",
            path: "/v1/messages",
            check: anthropic,
            whole: "message_stop",
        },
        BrokenStream {
            provider: "gemini",
            path: "/v1beta/models/g:streamGenerateContent?alt=sse",
            check: gemini,
            whole: "finishReason",
        },
    ];
    let mock = Mock::start();
    for case in cases {
        let what = format!("{} {}", case.provider, case.path);
        let upstream = match case.provider {
            "gemini" => format!("http://127.0.0.1:{}", mock.port),
            _ => mock.base(),
        };
        let proxy = Proxy::bare()
            .keys(1)
            .arg("--provider")
            .arg(case.provider)
            .arg("--upstream")
            .arg(&upstream)
            .start();
        let mut socket = TcpStream::connect(proxy.addr()).unwrap();
        let body = r#"{"model":"m","stream":true}"#;
        let request = format!(
            "POST {} HTTP/1.1\r\nHost: localhost\r\nx-mock-reply: dropmid\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            case.path,
            body.len()
        );
        socket.write_all(request.as_bytes()).unwrap();
        let (bytes, _) = read_until(&mut socket, ends_chunked);
        let text = String::from_utf8(dechunk(&bytes))
            .unwrap()
            .replace("\r\n", "\n");
        assert!(
            text.contains("tok0") && text.contains("tok1"),
            "{what}: {text}"
        );
        assert!(!text.contains(case.whole), "{what}: {text}");
        let events: Vec<&str> = text
            .split("\n\n")
            .map(|e| e.trim_matches('\n'))
            .filter(|e| !e.is_empty())
            .collect();
        let last = events.last().unwrap();
        assert!((case.check)(last), "{what}: the last event is {last:?}");
        assert_eq!(
            events.iter().filter(|e| (case.check)(e)).count(),
            1,
            "{what}: {text}"
        );
    }
}

#[test]
fn a_streamed_response_keeps_the_connection_reusable() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(2).start();
    let mut socket = TcpStream::connect(proxy.addr()).unwrap();
    for _ in 0..3 {
        socket
            .write_all(streamed_request("sse:2:0").as_bytes())
            .unwrap();
        let (bytes, events) = read_until(&mut socket, ends_chunked);
        assert_eq!(events.len(), 2, "{}", String::from_utf8_lossy(&bytes));
    }
    assert_eq!(mock.requests().len(), 3);
}

#[test]
fn a_429_before_the_stream_starts_is_retried_invisibly() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:60"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    let mut socket = TcpStream::connect(proxy.addr()).unwrap();
    socket
        .write_all(streamed_request("sse:3:0").as_bytes())
        .unwrap();
    let (bytes, events) = read_until(&mut socket, ends_chunked);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(events.len(), 3);
    assert_eq!(mock.keys_used(), [bearer(1), bearer(2)]);
}

/// Opens `n` streams that each send one event and then wait for `Mock::release`, each
/// after the previous has begun (or all at once), and returns them held at that point.
fn open_streams(proxy: &Proxy, n: usize, at_once: bool) -> Vec<TcpStream> {
    let first_event = |socket: &mut TcpStream| {
        let (bytes, _) = read_until(socket, |b| String::from_utf8_lossy(b).contains("tok0 "));
        assert!(bytes.starts_with(b"HTTP/1.1 200"));
        assert!(!String::from_utf8_lossy(&bytes).contains("tok1 "));
    };
    let mut streams = Vec::new();
    for _ in 0..n {
        let mut socket = TcpStream::connect(proxy.addr()).unwrap();
        socket
            .write_all(streamed_request("ssegate:2").as_bytes())
            .unwrap();
        if !at_once {
            first_event(&mut socket);
        }
        streams.push(socket);
    }
    for socket in streams.iter_mut().filter(|_| at_once) {
        first_event(socket);
    }
    streams
}

/// Releases held streams and checks each ends whole.
fn finish_streams(mock: &Mock, streams: Vec<TcpStream>) {
    mock.release();
    for mut socket in streams {
        let (bytes, _) = read_until(&mut socket, ends_chunked);
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains("tok1 ") && text.ends_with("data: [DONE]\n\n\r\n0\r\n\r\n"),
            "{text}"
        );
    }
}

#[test]
fn long_streams_never_hold_up_a_new_request() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    // More open streams than the workers the proxy starts with (4), each held open by
    // the mock until released: a request queued behind one would never be answered.
    let streams = open_streams(&proxy, 8, false);
    assert_eq!(proxy.chat().status, 200);
    finish_streams(&mock, streams);
}

#[test]
fn streams_opened_in_a_burst_all_start_at_once() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    // Eight requests sent before any answer is read; every stream then shows its first
    // event while none of them can end (the mock holds them all until the release), so
    // none was queued behind another.
    let streams = open_streams(&proxy, 8, true);
    finish_streams(&mock, streams);
}

/// Sends a raw request asking the mock for `reply`; returns everything until the proxy
/// closes the connection.
fn until_closed(proxy: &Proxy, reply: &str, http10: bool) -> Vec<u8> {
    let version = if http10 { "1.0" } else { "1.1" };
    let request = format!(
        "POST /v1/chat/completions HTTP/{version}\r\nHost: localhost\r\nx-mock-reply: {reply}\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    let mut socket = TcpStream::connect(proxy.addr()).unwrap();
    socket.write_all(request.as_bytes()).unwrap();
    let (bytes, _) = read_until(&mut socket, |_| false);
    bytes
}

#[test]
fn a_body_that_breaks_off_never_looks_complete() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    // Large, with a length: the client gets the upstream's length, and fewer bytes.
    for http10 in [false, true] {
        let bytes = until_closed(&proxy, "bigdrop", http10);
        let split = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        let head = String::from_utf8_lossy(&bytes[..split]);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.contains(&format!("\r\nContent-Length: {}\r\n", 6 << 20)),
            "{head}"
        );
        assert!(!head.contains("Transfer-Encoding"), "{head}");
        let body = bytes.len() - split;
        assert!((100 << 10..6 << 20).contains(&body), "{body} bytes");
    }
    // Chunked: no terminating chunk, and the connection closes.
    let bytes = until_closed(&proxy, "chunkdrop", false);
    let text = String::from_utf8_lossy(&bytes);
    assert!(text.contains("Transfer-Encoding: chunked"), "{text}");
    assert!(text.contains("{\"partial\""), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "{text}");
    assert!(
        proxy.logs().contains("upstream broke off"),
        "{}",
        proxy.logs()
    );
}

#[test]
fn an_interim_upstream_answer_is_a_failed_attempt_never_the_answer() {
    let mock = Mock::start();
    mock.plan(&key(1), &["101"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    // Key 1 answers 101: the next key serves.
    let reply = proxy.chat();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(mock.keys_used(), [bearer(1), bearer(2)]);
    // Every key answers 101: 502, never a 101.
    let response = raw_exchange(
        &proxy.addr(),
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nx-mock-reply: 101\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}",
        Duration::from_secs(5),
    );
    let text = String::from_utf8_lossy(&response);
    assert_eq!(raw_status(&response), 502, "{text}");
    assert!(!text.contains(" 101 "), "{text}");
}
