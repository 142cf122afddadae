//! Routing and headers: what reaches the upstream, and what comes back.

use std::time::Duration;

use crate::support::*;

#[test]
fn all_three_client_base_urls_reach_the_upstream_base() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    for path in [
        "/chat/completions",
        "/v1/chat/completions",
        "/api/v1/chat/completions",
    ] {
        let reply = proxy.post(path, r#"{"model":"m"}"#);
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    let targets: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(targets, ["/api/v1/chat/completions"; 3]);
}

#[test]
fn method_query_and_body_pass_unchanged() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    assert_eq!(proxy.get("/api/v1/generation?id=gen-1%202&x=y").status, 200);
    let body = r#"{"model":"m","messages":[{"role":"user","content":"héllo \"quoted\""}]}"#;
    assert_eq!(proxy.post("/v1/embeddings", body).status, 200);
    let del = client()
        .delete(&proxy.url("/v1/models/a/b"))
        .call()
        .unwrap();
    assert_eq!(del.status(), 200);

    let seen = mock.requests();
    assert_eq!(seen[0]["method"], "GET");
    assert_eq!(seen[0]["target"], "/api/v1/generation?id=gen-1%202&x=y");
    assert_eq!(seen[0]["body"], "");
    assert_eq!(
        header_of(&seen[0], "content-length"),
        None,
        "a GET gets no invented body"
    );
    assert_eq!(seen[1]["method"], "POST");
    assert_eq!(seen[1]["target"], "/api/v1/embeddings");
    assert_eq!(seen[1]["body"], body);
    assert_eq!(seen[2]["method"], "DELETE");
    assert_eq!(seen[2]["target"], "/api/v1/models/a/b");
}

#[test]
fn the_clients_credentials_never_reach_the_upstream_in_any_form() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let reply = client()
        .post(&proxy.url("/v1/chat/completions?alt=sse&key=client-query-token"))
        .header("Authorization", "Bearer client-dummy-token")
        .header("x-api-key", "client-anthropic-style-token")
        .header("X-Goog-Api-Key", "client-google-style-token")
        .header("api-key", "client-azure-style-token")
        .send("{}")
        .unwrap();
    assert_eq!(reply.status(), 200);
    let seen = &mock.requests()[0];
    assert_eq!(seen["target"], "/api/v1/chat/completions?alt=sse");
    let credentials: Vec<String> = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| {
            let name = pair[0].as_str().unwrap().to_ascii_lowercase();
            ["authorization", "x-api-key", "x-goog-api-key", "api-key"].contains(&name.as_str())
        })
        .map(|pair| pair[1].as_str().unwrap().to_string())
        .collect();
    assert_eq!(credentials, [bearer(1)], "exactly one key, as Bearer");
    for token in [
        "client-dummy-token",
        "client-anthropic-style-token",
        "client-google-style-token",
        "client-azure-style-token",
        "client-query-token",
    ] {
        assert!(!seen.to_string().contains(token), "{token} went upstream");
    }
}

#[test]
fn end_to_end_headers_pass_and_hop_by_hop_headers_stop_both_ways() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let request = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\n\
        HTTP-Referer: https://github.com/RooVetGit/Roo-Code\r\nX-Title: Roo Code\r\nX-OpenRouter-Title: Roo Café\r\n\
        Connection: keep-alive, X-Client-Hop\r\nX-Client-Hop: secret\r\nTE: trailers\r\nProxy-Authorization: Basic eA==\r\n\
        x-mock-reply: hop\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
    let response = String::from_utf8(raw_exchange(
        &proxy.addr(),
        request.as_bytes(),
        Duration::from_millis(500),
    ))
    .unwrap();
    assert_eq!(raw_status(response.as_bytes()), 200, "{response}");

    let seen = &mock.requests()[0];
    assert_eq!(
        header_of(seen, "http-referer").as_deref(),
        Some("https://github.com/RooVetGit/Roo-Code")
    );
    assert_eq!(header_of(seen, "x-title").as_deref(), Some("Roo Code"));
    assert_eq!(
        header_of(seen, "x-openrouter-title").as_deref(),
        Some("Roo Café"),
        "a UTF-8 title must pass as it is"
    );
    for hop in ["x-client-hop", "te", "proxy-authorization"] {
        assert_eq!(header_of(seen, hop), None, "{hop} crossed the proxy");
    }

    let head = response
        .split("\r\n\r\n")
        .next()
        .unwrap()
        .to_ascii_lowercase();
    assert!(head.contains("\r\nx-end-to-end: yes\r\n"), "{head}");
    for hop in [
        "x-hop-secret",
        "keep-alive",
        "proxy-authenticate",
        "connection: x-hop",
    ] {
        assert!(!head.contains(hop), "{hop} crossed the proxy: {head}");
    }
    // CORS is ours: the upstream's allow-origin never crosses, and a request from no
    // browser gets none.
    assert!(!head.contains("access-control-allow-origin"), "{head}");
    assert!(head.contains("\r\nvary: origin"), "{head}");
}

#[test]
fn compressed_bodies_pass_untouched() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let reply = Reply::from(
        client()
            .post(&proxy.url("/v1/chat/completions"))
            .header("x-mock-reply", "gzip")
            .header("Accept-Encoding", "gzip")
            .send("{}")
            .unwrap(),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-encoding"), Some("gzip"));
    let expected = [0x1f, 0x8b, 0x08];
    assert_eq!(
        &reply.body[..3],
        &expected,
        "body was decompressed or changed"
    );
    assert_eq!(
        reply.header("content-length"),
        Some(reply.body.len().to_string().as_str())
    );
    assert_eq!(
        header_of(&mock.requests()[0], "accept-encoding").as_deref(),
        Some("gzip")
    );
}

#[test]
fn plain_responses_keep_a_content_length() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 200);
    assert_eq!(
        reply.header("content-length"),
        Some(reply.body.len().to_string().as_str())
    );
    assert_eq!(reply.header("transfer-encoding"), None);
    assert_eq!(
        reply.json()["choices"][0]["message"]["content"],
        "Hello from the mock"
    );
    assert_eq!(reply.header("access-control-allow-origin"), None);
}

#[test]
fn large_and_unsized_bodies_arrive_whole() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let big = 5 * 1024 * 1024 + 7;
    let reply = Reply::from(
        client()
            .get(&proxy.url("/v1/files/big"))
            .header("x-mock-reply", &format!("large:{big}"))
            .call()
            .unwrap(),
    );
    assert_eq!((reply.status, reply.body.len()), (200, big));
    let reply = Reply::from(
        client()
            .post(&proxy.url("/v1/chat/completions"))
            .header("x-mock-reply", "chunked")
            .send("{}")
            .unwrap(),
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.json()["object"], "chat.completion");
}

#[test]
fn cors_preflight_is_answered_here() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let request = ureq::http::Request::builder()
        .method("OPTIONS")
        .uri(proxy.url("/v1/key"))
        .header("Origin", "vscode-webview://abc")
        .header("Access-Control-Request-Method", "GET")
        .header("Access-Control-Request-Headers", "authorization, x-title")
        .body(())
        .unwrap();
    let reply = Reply::from(client().run(request).unwrap());
    assert_eq!(reply.status, 204);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("vscode-webview://abc")
    );
    assert_eq!(reply.header("vary"), Some("Origin"));
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("authorization, x-title")
    );
    assert!(
        reply
            .header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    assert!(mock.requests().is_empty(), "a preflight went upstream");
}

#[test]
fn targets_that_are_not_api_paths_get_400_and_never_leave() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    for request in [
        "GET http://example.com/v1/models HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "CONNECT example.com:443 HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /v1/../../etc/passwd HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /v1/%2e%2e/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET //example.com/x HTTP/1.1\r\nHost: localhost\r\n\r\n",
    ] {
        let response = raw_exchange(
            &proxy.addr(),
            request.as_bytes(),
            Duration::from_millis(300),
        );
        assert_eq!(
            raw_status(&response),
            400,
            "{request:?}: {}",
            String::from_utf8_lossy(&response)
        );
        let text = String::from_utf8_lossy(&response);
        let body = text.split("\r\n\r\n").nth(1).unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(
            json["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("roo-proxy: "),
            "{body}"
        );
    }
    assert!(mock.requests().is_empty());
    // Still serving.
    assert_eq!(proxy.chat().status, 200);
}

#[test]
fn http_1_0_clients_get_a_body_they_can_read() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let request = "POST /v1/chat/completions HTTP/1.0\r\nx-mock-reply: sse:2:0\r\nContent-Length: 2\r\n\r\n{}";
    let response = String::from_utf8(raw_exchange(
        &proxy.addr(),
        request.as_bytes(),
        Duration::from_secs(5),
    ))
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        !response.to_ascii_lowercase().contains("transfer-encoding"),
        "{response}"
    );
    assert!(response.ends_with("data: [DONE]\n\n"), "{response}");
}

#[test]
fn pipelined_requests_are_answered_in_order_on_one_connection() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let one = "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nx-mock-reply: 403\r\nContent-Length: 2\r\n\r\n{}";
    let two = "GET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    let both = format!("{one}{two}");
    let response = String::from_utf8(raw_exchange(
        &proxy.addr(),
        both.as_bytes(),
        Duration::from_secs(5),
    ))
    .unwrap();
    let first = response.find("HTTP/1.1 403").expect(&response);
    let second = response.find("HTTP/1.1 200").expect(&response);
    assert!(first < second, "{response}");
    let targets: Vec<_> = mock
        .requests()
        .iter()
        .map(|r| r["target"].clone())
        .collect();
    assert_eq!(targets, ["/api/v1/chat/completions", "/api/v1/models"]);
}

#[test]
fn a_client_that_expects_100_continue_gets_it_before_sending_the_body() {
    use std::io::{Read, Write};
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let mut socket = std::net::TcpStream::connect(proxy.addr()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    socket
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 64];
    let n = socket.read(&mut buf).unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"));
    socket.write_all(b"{}").unwrap();
    let mut rest = Vec::new();
    let _ = socket.read_to_end(&mut rest);
    let rest = String::from_utf8_lossy(&rest);
    assert!(rest.contains("HTTP/1.1 200"), "{rest}");
    assert_eq!(mock.requests()[0]["body"], "{}");
}

/// Bodies larger than the connection's read buffer, one of them chunked, sent in pieces
/// and pipelined, reach the upstream whole, and the request after them is read right.
#[test]
fn large_and_chunked_bodies_in_pieces_pass_whole_and_the_next_request_follows() {
    use std::io::{Read, Write};
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let long = format!("{{\"pad\":\"{}\"}}", "a".repeat(50_000));
    let chunked = format!("{{\"pad\":\"{}\"}}", "b".repeat(20_000));
    let (first, rest) = chunked.split_at(9_000);
    let requests = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{long}\
         POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x}\r\n{first}\r\n{:x}\r\n{rest}\r\n0\r\n\r\n\
         GET /v1/models HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        long.len(),
        first.len(),
        rest.len(),
    );
    let mut socket = std::net::TcpStream::connect(proxy.addr()).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for piece in requests.as_bytes().chunks(3_001) {
        socket.write_all(piece).unwrap();
    }
    let mut response = Vec::new();
    socket.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response);
    assert_eq!(response.matches("HTTP/1.1 200").count(), 3, "{response}");
    let seen = mock.requests();
    let bodies: Vec<_> = seen
        .iter()
        .map(|r| r["body"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(bodies, [long.as_str(), chunked.as_str(), ""]);
    assert_eq!(seen[2]["target"], "/api/v1/models");
}
