//! Staying shut and staying up: access token, cleartext upstreams, size and concurrency
//! limits, and stopping cleanly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::support::*;

const TOKEN: &str = "tok-0123456789abcdef";

#[test]
fn listening_beyond_this_machine_without_a_token_is_refused() {
    let ran = Proxy::no_args()
        .arg("--host")
        .arg("0.0.0.0")
        .arg("--port")
        .arg("0")
        .run();
    assert_eq!(ran.0.code(), Some(2), "{}{}", ran.1, ran.2);
    assert!(
        ran.2.contains("would let other machines spend your keys"),
        "{}",
        ran.2
    );
    assert!(ran.2.contains("--access-token"), "{}", ran.2);
}

#[test]
fn with_a_token_every_request_must_carry_it_and_it_never_goes_upstream() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(1)
        .arg("--access-token")
        .arg(TOKEN)
        .start();
    let none = proxy.chat();
    assert_eq!(none.status, 401);
    assert!(
        none.error_message().contains("needs its access token"),
        "{}",
        none.text()
    );
    let wrong = Reply::from(
        client()
            .post(&proxy.url("/v1/chat/completions"))
            .header("Authorization", "Bearer tok-0123456789abcdeX")
            .send("{}")
            .unwrap(),
    );
    assert_eq!(wrong.status, 401);
    assert!(
        mock.requests().is_empty(),
        "an unauthenticated request went upstream"
    );

    let bearer_ok = Reply::from(
        client()
            .post(&proxy.url("/v1/chat/completions"))
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .send("{}")
            .unwrap(),
    );
    assert_eq!(bearer_ok.status, 200);
    let key_ok = Reply::from(
        client()
            .post(&proxy.url("/v1/chat/completions"))
            .header("x-api-key", TOKEN)
            .send("{}")
            .unwrap(),
    );
    assert_eq!(key_ok.status, 200);
    for (name, value) in [("x-goog-api-key", TOKEN), ("api-key", TOKEN)] {
        let ok = Reply::from(
            client()
                .post(&proxy.url("/v1/chat/completions"))
                .header(name, value)
                .send("{}")
                .unwrap(),
        );
        assert_eq!(ok.status, 200, "{name}");
    }
    // Google's clients put it in the query, maybe beside a dummy key in a header.
    let query_ok = Reply::from(
        client()
            .post(&proxy.url(&format!("/v1beta/models/g:generateContent?key={TOKEN}")))
            .header("x-goog-api-key", "dummy")
            .send("{}")
            .unwrap(),
    );
    assert_eq!(query_ok.status, 200);
    assert_eq!(mock.requests().len(), 5);
    for seen in mock.requests() {
        assert_eq!(header_of(&seen, "authorization"), Some(bearer(1)));
        assert!(
            !seen.to_string().contains(TOKEN),
            "the access token went upstream"
        );
    }

    // The status paths need it too; the page (no data in it) does not.
    assert_eq!(proxy.get("/_roo/health").status, 401);
    assert_eq!(proxy.get("/_roo/metrics").status, 401);
    assert_eq!(proxy.get("/_roo/").status, 200);
    let status = Reply::from(
        client()
            .get(&proxy.url("/_roo/status"))
            .header("Authorization", &format!("Bearer {TOKEN}"))
            .call()
            .unwrap(),
    );
    assert_eq!(status.status, 200);
    let refused = proxy.status_command(&[], &[]);
    assert_eq!(refused.code, Some(1));
    assert!(
        refused.stderr.contains("needs its access token"),
        "{}",
        refused.stderr
    );
    let allowed = proxy.status_command(&[], &[("ROO_PROXY_ACCESS_TOKEN", TOKEN)]);
    assert_eq!(allowed.code, Some(0), "{}", allowed.all());
    assert!(!proxy.logs().contains(TOKEN), "the token reached the log");
}

#[test]
fn a_cleartext_upstream_on_another_machine_is_refused_unless_allowed() {
    let ran = Proxy::bare()
        .arg("--upstream")
        .arg("http://gateway.example/v1")
        .run();
    assert_eq!(ran.0.code(), Some(2));
    assert!(ran.2.contains("clear text"), "{}", ran.2);
    let proxy = Proxy::bare()
        .arg("--upstream")
        .arg("http://gateway.example/v1")
        .arg("--allow-insecure-upstream")
        .start();
    assert!(
        proxy.start_line.contains("http://gateway.example/v1"),
        "{}",
        proxy.start_line
    );
}

#[test]
fn bodies_over_the_limit_get_413_and_the_proxy_goes_on() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(1)
        .arg("--max-body")
        .arg("1KiB")
        .start();
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(2000));
    let reply = proxy.post("/v1/chat/completions", &big);
    assert_eq!(reply.status, 413);
    assert!(
        reply.error_message().contains("larger than 1024 bytes"),
        "{}",
        reply.text()
    );
    // Chunked, so no length is declared up front.
    let chunked = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{:x}\r\n{big}\r\n0\r\n\r\n",
        big.len()
    );
    let response = raw_exchange(&proxy.addr(), chunked.as_bytes(), DEADLINE);
    assert_eq!(raw_status(&response), 413);
    assert!(mock.requests().is_empty());
    assert_eq!(proxy.chat().status, 200);
}

fn open_stream(proxy: &Proxy) -> TcpStream {
    let mut socket = TcpStream::connect(proxy.addr()).unwrap();
    socket
        .write_all(streamed_request("sse:100:100").as_bytes())
        .unwrap();
    socket
}

#[test]
fn requests_past_the_concurrency_limit_get_503_with_retry_after() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(1)
        .arg("--max-requests")
        .arg("2")
        .start();
    let _a = open_stream(&proxy);
    let _b = open_stream(&proxy);
    eventually("two streams upstream", || mock.requests().len() == 2);
    let reply = proxy.chat();
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    assert!(
        reply.error_message().contains("--max-requests 2"),
        "{}",
        reply.text()
    );
    // The editor's web view can read that answer too.
    let from_editor = Reply::from(
        client()
            .post(&proxy.url("/v1/chat/completions"))
            .header("Origin", "vscode-webview://abc")
            .send("{}")
            .unwrap(),
    );
    assert_eq!(from_editor.status, 503);
    assert_eq!(
        from_editor.header("access-control-allow-origin"),
        Some("vscode-webview://abc")
    );
    drop((_a, _b));
    eventually("served again once the streams end", || {
        proxy.chat().status == 200
    });
}

#[cfg(unix)]
#[test]
fn sigterm_lets_streams_finish_refuses_new_requests_and_exits_0() {
    let mock = Mock::start();
    let mut proxy = Proxy::with(&mock).keys(1).start();
    let mut socket = TcpStream::connect(proxy.addr()).unwrap();
    // A stream of about one second.
    socket
        .write_all(streamed_request("sse:10:100").as_bytes())
        .unwrap();
    eventually("the stream began", || mock.requests().len() == 1);
    let pid = proxy.pid().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    proxy.wait_for_log("request(s) in flight get up to 30 s to finish");
    let refused = proxy.chat();
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert!(refused.error_message().contains("shutting down"));
    let mut all = Vec::new();
    std::io::Read::read_to_end(&mut socket, &mut all).ok();
    let text = String::from_utf8_lossy(&all);
    assert!(text.contains("data: [DONE]"), "the stream was cut: {text}");
    let status = proxy.wait_exit();
    assert_eq!(status.code(), Some(0));
}

#[cfg(unix)]
#[test]
fn a_second_signal_exits_at_once() {
    let mock = Mock::start();
    let mut proxy = Proxy::with(&mock).keys(1).start();
    let _stream = open_stream(&proxy);
    eventually("the stream began", || mock.requests().len() == 1);
    let pid = proxy.pid().to_string();
    for _ in 0..2 {
        assert!(
            std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        proxy.wait_for_log("stopping");
    }
    assert_eq!(proxy.wait_exit().code(), Some(130));
}

/// The head of a raw answer, lower-cased, and its status.
fn raw_head(proxy: &Proxy, request: &str) -> (u16, String) {
    let response = raw_exchange(&proxy.addr(), request.as_bytes(), Duration::from_secs(2));
    let text = String::from_utf8_lossy(&response).into_owned();
    let head = text
        .split("\r\n\r\n")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    (raw_status(&response), text_with_head(head, &text))
}

/// The head (lower-cased) followed by the body as sent.
fn text_with_head(head: String, text: &str) -> String {
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    format!("{head}\r\n\r\n{body}")
}

#[test]
fn two_origin_or_fetch_site_headers_get_400_and_no_key_is_touched() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(2).start();
    let host = format!("127.0.0.1:{}", proxy.port);
    for twice in [
        "Origin: http://localhost:5173\r\nOrigin: https://evil.example\r\n",
        "Sec-Fetch-Site: same-origin\r\nSec-Fetch-Site: cross-site\r\n",
    ] {
        let request = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n{twice}Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        );
        let (status, text) = raw_head(&proxy, &request);
        assert_eq!(status, 400, "{request}\n{text}");
        assert!(text.contains("more than one"), "{text}");
    }
    assert!(
        mock.requests().is_empty(),
        "a request with two went upstream"
    );
}

#[test]
fn pages_of_other_origins_get_403_and_no_key_is_touched() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(2).start();
    let host = format!("127.0.0.1:{}", proxy.port);
    let chat = |origin: &str, extra: &str| {
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n{origin}{extra}Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
        )
    };
    let refused = [
        // A "simple" request: browsers send it without a preflight.
        chat("Origin: https://evil.example\r\n", ""),
        chat("Origin: null\r\n", ""),
        chat("Origin: http://localhost.evil.example:3002\r\n", ""),
        // No Origin, but a browser says the request comes from another site (an <img>).
        format!(
            "GET /v1/models HTTP/1.1\r\nHost: {host}\r\nSec-Fetch-Site: cross-site\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /_roo/status HTTP/1.1\r\nHost: {host}\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "GET /_roo/ HTTP/1.1\r\nHost: {host}\r\nOrigin: https://evil.example\r\nConnection: close\r\n\r\n"
        ),
        format!(
            "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Private-Network: true\r\nConnection: close\r\n\r\n"
        ),
    ];
    for request in &refused {
        let (status, text) = raw_head(&proxy, request);
        assert_eq!(status, 403, "{request}\n{text}");
        assert!(text.contains("\"code\":403"), "{text}");
        assert!(text.contains("--allow-origin"), "{text}");
        assert!(!text.contains("access-control-allow"), "{request}\n{text}");
    }
    assert!(
        mock.requests().is_empty(),
        "a refused page's request went upstream"
    );
    let status = proxy.get("/_roo/status").json();
    let used: u64 = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["requests"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(used, 0, "{status}");

    // The editor's web view and pages on this machine still work, and read the answer.
    for origin in ["vscode-webview://1a2b3c", "http://localhost:5173"] {
        let (status, text) = raw_head(&proxy, &chat(&format!("Origin: {origin}\r\n"), ""));
        assert_eq!(status, 200, "{text}");
        assert!(
            text.contains(&format!("\r\naccess-control-allow-origin: {origin}\r\n")),
            "{text}"
        );
        assert!(text.contains("\r\nvary: origin"), "{text}");
        assert!(!text.contains("access-control-allow-origin: *"), "{text}");
    }
    let (status, text) = raw_head(
        &proxy,
        &format!(
            "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nOrigin: http://127.0.0.1:8080\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Private-Network: true\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 204, "{text}");
    assert!(
        text.contains("access-control-allow-private-network: true"),
        "{text}"
    );
    assert!(
        text.contains("access-control-allow-origin: http://127.0.0.1:8080"),
        "{text}"
    );
    // A link to the status page is followed.
    let (status, _) = raw_head(
        &proxy,
        &format!(
            "GET /_roo/ HTTP/1.1\r\nHost: {host}\r\nSec-Fetch-Site: cross-site\r\nConnection: close\r\n\r\n"
        ),
    );
    assert_eq!(status, 200);
    assert_eq!(mock.requests().len(), 2);
}

#[test]
fn allow_origin_widens_the_list_by_flag_or_variable() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(1)
        .arg("--allow-origin")
        .arg("https://app.example")
        .env("ROO_PROXY_ALLOW_ORIGIN", "https://ignored.example")
        .start();
    let request = |origin: &str| {
        format!(
            "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"
        )
    };
    assert_eq!(raw_head(&proxy, &request("https://app.example")).0, 200);
    assert_eq!(raw_head(&proxy, &request("https://ignored.example")).0, 403);
    assert_eq!(raw_head(&proxy, &request("vscode-webview://x")).0, 200);
    let by_variable = Proxy::with(&mock)
        .keys(1)
        .env(
            "ROO_PROXY_ALLOW_ORIGIN",
            "https://a.example, https://b.example:*",
        )
        .start();
    assert_eq!(
        raw_head(&by_variable, &request("https://b.example:8443")).0,
        200
    );
    assert_eq!(raw_head(&by_variable, &request("https://c.example")).0, 403);
    let bad = Proxy::bare().arg("--allow-origin").arg("*").run();
    assert_eq!(bad.0.code(), Some(2), "{}", bad.2);
    assert!(bad.2.contains("--allow-origin '*'"), "{}", bad.2);
}

#[test]
fn host_names_that_are_not_this_machine_get_403_before_routing() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(1)
        .arg("--allow-host")
        .arg("my-laptop.local")
        .start();
    let request =
        |host: &str| format!("GET /v1/models HTTP/1.1\r\n{host}Connection: close\r\n\r\n");
    for host in [
        "Host: evil.example\r\n",
        "Host: evil.example:3002\r\n",
        "Host: 127.0.0.1.nip.io\r\n",
    ] {
        let (status, text) = raw_head(&proxy, &request(host));
        assert_eq!(status, 403, "{host}: {text}");
        assert!(text.contains("--allow-host"), "{text}");
    }
    let (status, _) = raw_head(
        &proxy,
        "GET /_roo/status HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    );
    assert_eq!(status, 403);
    for host in ["", "Host: localhost\r\nHost: localhost\r\n"] {
        assert_eq!(raw_head(&proxy, &request(host)).0, 400, "{host:?}");
    }
    assert!(mock.requests().is_empty());
    for host in [
        format!("Host: 127.0.0.1:{}\r\n", proxy.port),
        "Host: localhost\r\n".to_string(),
        "Host: [::1]:3002\r\n".to_string(),
        "Host: my-laptop.local:3002\r\n".to_string(),
    ] {
        assert_eq!(raw_head(&proxy, &request(&host)).0, 200, "{host}");
    }
    // HTTP/1.0 may leave Host out.
    let (status, _) = raw_head(&proxy, "GET /v1/models HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);

    // With an access token, the token is the guard: other names are answered.
    let guarded = Proxy::with(&mock)
        .keys(1)
        .arg("--access-token")
        .arg(TOKEN)
        .start();
    let (status, text) = raw_head(
        &guarded,
        &format!(
            "GET /v1/models HTTP/1.1\r\nHost: proxy.lan\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        ),
    );
    assert_eq!(status, 200, "{text}");
}

#[test]
fn browser_noise_is_answered_here_and_never_forwarded() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    for path in [
        "/favicon.ico",
        "/robots.txt",
        "/apple-touch-icon-precomposed.png",
        "/.well-known/appspecific/com.chrome.devtools.json",
        "/_roo/favicon.ico",
    ] {
        let reply = proxy.get(path);
        assert_eq!(reply.status, 404, "{path}");
        assert!(reply.error_message().starts_with("roo-proxy: "), "{path}");
    }
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
}

#[test]
fn client_mistakes_get_4xx_and_never_touch_the_pool() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(2).start();
    let big = "a".repeat(9000);
    let cases = [
        // Within --max-header-size, but more than the upstream client can write.
        (
            format!(
                "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"
            ),
            431,
        ),
        (
            "GET /v1/models?x=\"y\" HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
                .to_string(),
            400,
        ),
        (
            "get /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(),
            501,
        ),
        (
            "TRACE /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(),
            501,
        ),
        (
            "GET /v1/..;/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_string(),
            400,
        ),
    ];
    for (request, expected) in &cases {
        let response = raw_exchange(&proxy.addr(), request.as_bytes(), Duration::from_secs(5));
        let text = String::from_utf8_lossy(&response);
        assert_eq!(
            raw_status(&response),
            *expected,
            "{}\n{text}",
            &request[..40]
        );
        assert!(text.contains(&format!("\"code\":{expected}")), "{text}");
    }
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
    let status = proxy.get("/_roo/status").json();
    for k in status["keys"].as_array().unwrap() {
        assert_eq!(k["requests"], 0, "{status}");
        assert_eq!(k["failures"], 0, "{status}");
    }
    // A large head that fits is forwarded.
    let fits = format!(
        "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(6000)
    );
    let response = raw_exchange(&proxy.addr(), fits.as_bytes(), Duration::from_secs(5));
    assert_eq!(raw_status(&response), 200);
}

#[test]
fn every_connection_header_names_headers_that_stop_here() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let request = "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: keep-alive\r\nConnection: X-Secret-Hop, X-Other-Hop\r\nX-Secret-Hop: 1\r\nX-Other-Hop: 2\r\nX-Kept: 3\r\n\r\n";
    let response = raw_exchange(
        &proxy.addr(),
        request.as_bytes(),
        Duration::from_millis(500),
    );
    assert_eq!(raw_status(&response), 200);
    let seen = &mock.requests()[0];
    assert_eq!(header_of(seen, "x-secret-hop"), None);
    assert_eq!(header_of(seen, "x-other-hop"), None);
    assert_eq!(header_of(seen, "x-kept").as_deref(), Some("3"));
}

#[test]
fn request_bodies_past_the_memory_limit_get_503_and_the_proxy_goes_on() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(1)
        .arg("--max-body")
        .arg("1MiB")
        .arg("--max-body-memory")
        .arg("1MiB")
        .start();
    // A whole 1 MiB body, held while the upstream keeps it waiting.
    let total = 1 << 20;
    let mut held = TcpStream::connect(proxy.addr()).unwrap();
    write!(
        held,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nx-mock-reply: hang:3\r\nContent-Length: {total}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    held.write_all(&vec![b' '; total]).unwrap();
    eventually("the held request reached the upstream", || {
        mock.requests().len() == 1
    });
    let other = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}";
    let refused = raw_exchange(&proxy.addr(), other.as_bytes(), Duration::from_secs(5));
    let text = String::from_utf8_lossy(&refused);
    assert_eq!(raw_status(&refused), 503, "{text}");
    assert!(text.contains("Retry-After: 1\r\n"), "{text}");
    assert!(text.contains("--max-body-memory"), "{text}");
    assert_eq!(
        mock.requests().len(),
        1,
        "the refused request went upstream"
    );
    // Once the held request is answered, its memory is free again.
    held.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    let _ = held.read_to_end(&mut answer);
    assert_eq!(
        raw_status(&answer),
        502,
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let again = raw_exchange(&proxy.addr(), other.as_bytes(), Duration::from_secs(5));
    assert_eq!(raw_status(&again), 200);
}
