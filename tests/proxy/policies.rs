//! Rotation beyond round-robin, end to end: accounts, daily limits, errors inside a 200
//! stream, sticky mode, waiting for a key, pool-wide pauses, and manual control.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::support::*;

#[test]
fn a_429_rests_every_key_of_the_account_and_other_accounts_serve() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:120"]);
    let file = keys_json(&[
        (1, None, Some("acme")),
        (2, None, Some("acme")),
        (3, None, None),
    ]);
    let proxy = Proxy::with(&mock).keys_file(&file).start();
    for _ in 0..4 {
        assert_eq!(proxy.chat().status, 200);
    }
    // Key 2 shares key 1's account, so it is never tried.
    assert_eq!(
        mock.keys_used(),
        [bearer(1), bearer(3), bearer(3), bearer(3), bearer(3)]
    );
    proxy.wait_for_log("with 1 more key(s) of account 'acme'");
}

#[test]
fn a_daily_limit_rests_until_midnight_utc() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429day"]);
    let proxy = Proxy::with(&mock).keys(1).start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 429);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let to_midnight = 86_400 - now % 86_400;
    let wait = reply.retry_after();
    assert!(
        wait.abs_diff(to_midnight) <= 5,
        "Retry-After {wait}, midnight in {to_midnight}"
    );
}

fn stream_request(addr: &str, reply: &str) -> String {
    chunked_exchange(addr, &streamed_request(reply))
}

/// Sends `request` and reads the answer to the end of its chunked body (or the close).
fn chunked_exchange(addr: &str, request: &str) -> String {
    let mut socket = TcpStream::connect(addr).unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    socket.write_all(request.as_bytes()).unwrap();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    while !bytes.ends_with(b"\r\n0\r\n\r\n") {
        match socket.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[test]
fn a_rate_limit_inside_a_200_stream_is_retried_before_the_client_sees_it() {
    let mock = Mock::start();
    mock.plan(&key(1), &["sse429:120"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    let text = stream_request(&proxy.addr(), "sse:3:0");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.contains("error"),
        "the client saw the in-stream error:\n{text}"
    );
    assert_eq!(text.matches("data: {").count(), 3, "{text}");
    assert_eq!(
        text.matches(": OPENROUTER PROCESSING").count(),
        1,
        "held bytes lost or doubled:\n{text}"
    );
    assert_eq!(mock.keys_used(), [bearer(1), bearer(2)]);
    // Key 1 rests now.
    for _ in 0..2 {
        assert_eq!(proxy.chat().status, 200);
    }
    assert_eq!(mock.keys_used()[2..], [bearer(2), bearer(2)]);
    proxy.wait_for_log("an error in the stream: 429 mock in-stream error 429");
}

#[test]
fn anthropics_rate_limit_event_at_a_streams_start_is_retried_too() {
    let mock = Mock::start();
    mock.plan(&key(1), &["anthropicsse429"]);
    let proxy = Proxy::with(&mock)
        .keys(2)
        .arg("--provider")
        .arg("anthropic")
        .start();
    let body = r#"{"model":"claude-sonnet-4","max_tokens":8,"stream":true}"#;
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let text = chunked_exchange(&proxy.addr(), &request);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        !text.contains("error"),
        "the client saw the error event:\n{text}"
    );
    assert!(text.contains("event: message_stop"), "{text}");
    let used: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| header_of(r, "x-api-key").unwrap_or_default())
        .collect();
    assert_eq!(used, [key(1), key(2)]);
    proxy.wait_for_log("an error in the stream: rate_limit_error Number of requests");
}

#[test]
fn other_errors_inside_a_stream_reach_the_client_untouched() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(2).start();
    let text = stream_request(&proxy.addr(), "sse500");
    assert!(text.contains("mock in-stream error 500"), "{text}");
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn sticky_mode_keeps_one_key_until_it_is_rate_limited() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(3)
        .arg("--strategy")
        .arg("sticky")
        .start();
    for _ in 0..3 {
        assert_eq!(proxy.chat().status, 200);
    }
    mock.plan(&key(1), &["429:120"]);
    for _ in 0..3 {
        assert_eq!(proxy.chat().status, 200);
    }
    let expected = [1, 1, 1, 1, 2, 2, 2].map(bearer);
    assert_eq!(mock.keys_used(), expected);
}

#[test]
fn with_wait_a_request_waits_for_a_resting_key_instead_of_failing() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429retry:2"]);
    let proxy = Proxy::with(&mock).keys(1).arg("--wait").arg("10s").start();
    let response = raw_exchange(
        &proxy.addr(),
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
        DEADLINE,
    );
    let text = String::from_utf8_lossy(&response);
    // The answer and nothing before it: no interim responses, which many clients take
    // for the final one.
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert_eq!(text.matches("HTTP/1.").count(), 1, "{text}");
    assert!(text.contains("Hello from the mock"), "{text}");
    assert_eq!(mock.keys_used(), [bearer(1), bearer(1)]);
    // HTTP/1.0 clients wait too, since nothing is sent while they do.
    mock.plan(&key(1), &["429retry:1"]);
    let response = raw_exchange(
        &proxy.addr(),
        b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: 2\r\n\r\n{}",
        DEADLINE,
    );
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
}

/// Python's `http.client` (under `urllib` and `requests`) takes any 1xx but 100 for the
/// final answer; a waited request must reach it whole, and the connection must serve on.
#[test]
fn python_clients_get_the_answer_their_request_waited_for() {
    let mock = Mock::start();
    mock.plan(
        &key(1),
        &["429retry:1", "ok", "429retry:1", "ok", "429retry:1"],
    );
    let proxy = Proxy::with(&mock).keys(1).arg("--wait").arg("30s").start();
    let script = r#"
import http.client, json, sys, urllib.request
port = int(sys.argv[1])
body = b'{"model":"m","messages":[]}'
kept = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
for _ in range(2):
    kept.request("POST", "/v1/chat/completions", body=body,
                 headers={"Content-Type": "application/json"})
    answer = kept.getresponse()
    data = answer.read()
    assert answer.status == 200, (answer.status, data)
    assert json.loads(data)["choices"][0]["message"]["content"], data
request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                 headers={"Content-Type": "application/json"})
with urllib.request.urlopen(request, timeout=30) as answer:
    assert answer.status == 200, answer.status
    json.loads(answer.read())["choices"]
print("three answers")
"#;
    let ran = std::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(proxy.addr().rsplit(':').next().unwrap())
        .output()
        .expect("python3 runs (CI has it)");
    let (out, err) = (
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr),
    );
    assert!(ran.status.success(), "python3 failed: {out}{err}");
    assert_eq!(out.trim(), "three answers");
    assert_eq!(mock.keys_used().len(), 6, "each request waited once");
}

#[test]
fn without_wait_or_past_it_the_client_gets_429_at_once() {
    let mock = Mock::start();
    // The key rests 10 minutes, past a --wait of 5 that is itself far past the client's
    // deadline: an answer at all means the proxy did not wait.
    mock.plan(&key(1), &["429retry:600"]);
    let proxy = Proxy::with(&mock).keys(1).arg("--wait").arg("5m").start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 429, "{}", reply.text());
}

/// Waiting requests take keys in the order they came. The key's budget allows one
/// request at a time (each answer says one is left), so the upstream sees them one by
/// one: in the order the proxy let them go.
#[test]
fn waiting_requests_are_served_in_arrival_order() {
    let mock = Mock::start();
    mock.plan(
        &key(1),
        &[
            "budget:1:600",
            "hang:5",
            "budget:1:600",
            "budget:1:600",
            "budget:1:600",
        ],
    );
    let proxy = Proxy::with(&mock).keys(1).arg("--wait").arg("60s").start();
    assert_eq!(proxy.chat().status, 200);
    // This one holds the budget upstream while the others line up.
    let addr = proxy.addr();
    let holder = std::thread::spawn({
        let addr = addr.clone();
        move || chat_raw(&addr, "holder")
    });
    eventually("the holder reached the upstream", || {
        mock.requests().len() == 2
    });
    let waiting = || proxy.get("/_roo/status").json()["requests_waiting"].as_u64();
    let mut clients = Vec::new();
    for (n, name) in ["first", "second", "third"].into_iter().enumerate() {
        let addr = addr.clone();
        clients.push(std::thread::spawn(move || chat_raw(&addr, name)));
        eventually(&format!("{name} waits"), || waiting() == Some(n as u64 + 1));
    }
    for client in clients {
        let response = client.join().unwrap();
        assert!(response.starts_with("HTTP/1.1 200 OK\r\n"), "{response}");
    }
    // The holder's attempt fails when the hang ends; it may be tried again in its turn.
    let held = holder.join().unwrap();
    assert!(
        held.starts_with("HTTP/1.1 502") || held.starts_with("HTTP/1.1 200"),
        "{held}"
    );
    let order: Vec<String> = mock.requests()[2..]
        .iter()
        .map(|r| r["body"].as_str().unwrap().to_string())
        .filter(|body| !body.contains("holder"))
        .collect();
    assert_eq!(
        order,
        [r#"{"n":"first"}"#, r#"{"n":"second"}"#, r#"{"n":"third"}"#]
    );
    assert_eq!(waiting(), Some(0));
}

/// The slow start: while nobody knows an account's budget, one request goes to it; the
/// others wait for its answer (without `--wait` too), which says one more is left. So
/// the upstream sees two requests, not four, and refuses none; the two that do not fit
/// get the proxy's own 429.
#[test]
fn a_burst_at_the_start_sends_one_request_until_the_budget_is_known() {
    let mock = Mock::start();
    // The first answer takes a while (less than the 2 s the slow start waits for it).
    mock.plan(&key(1), &["budget:1:600:1500", "budget:0:600"]);
    let proxy = Proxy::with(&mock).keys(1).start();
    let addr = proxy.addr();
    let probe = std::thread::spawn({
        let addr = addr.clone();
        move || chat_raw(&addr, "probe")
    });
    eventually("the first request reached the upstream", || {
        mock.requests().len() == 1
    });
    let others: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|name| {
            let addr = addr.clone();
            std::thread::spawn(move || chat_raw(&addr, name))
        })
        .collect();
    let mut statuses = vec![raw_status(probe.join().unwrap().as_bytes())];
    statuses.extend(
        others
            .into_iter()
            .map(|c| raw_status(c.join().unwrap().as_bytes())),
    );
    statuses.sort();
    assert_eq!(statuses, [200, 200, 429, 429]);
    assert_eq!(mock.requests().len(), 2, "one more on the probe's word");
}

/// Without budget headers the proxy counts the window: the second held two answers
/// before its 429, so at the next reset two waiting requests go (in arrival order), and
/// the others wait while those are under way instead of all going into a window that
/// holds two; then one at a time.
#[test]
fn at_a_reset_no_more_go_at_once_than_the_window_before_held() {
    let mock = Mock::start();
    // Window 1: refused (teaches nothing). Window 2: two answers, then refused. Window 3:
    // the first two attempts hang a moment upstream; then answers.
    mock.plan(&key(1), &["429:1", "ok", "ok", "429:3", "hang:2", "hang:2"]);
    let proxy = Proxy::with(&mock).keys(1).arg("--wait").arg("60s").start();
    assert_eq!(proxy.chat().status, 200, "after waiting out window 1");
    assert_eq!(proxy.chat().status, 200);
    let addr = proxy.addr();
    let waiting = || proxy.get("/_roo/status").json()["requests_waiting"].as_u64();
    let mut clients = Vec::new();
    for (n, name) in ["a", "b", "c", "d", "e"].into_iter().enumerate() {
        let addr = addr.clone();
        clients.push(std::thread::spawn(move || chat_raw(&addr, name)));
        eventually(&format!("{name} waits"), || waiting() == Some(n as u64 + 1));
    }
    eventually("two went at the reset, three wait", || {
        waiting() == Some(3) && mock.requests().len() == 6
    });
    // The two that came first (sent at once, so they may reach the upstream in either
    // order).
    let mut bodies: Vec<String> = mock.requests()[4..]
        .iter()
        .map(|r| r["body"].as_str().unwrap().to_string())
        .collect();
    bodies.sort();
    assert_eq!(bodies, [r#"{"n":"a"}"#, r#"{"n":"b"}"#], "in arrival order");
    let statuses: Vec<u16> = clients
        .into_iter()
        .map(|c| raw_status(c.join().unwrap().as_bytes()))
        .collect();
    assert!(statuses[2..].iter().all(|s| *s == 200), "{statuses:?}");
}

/// A chat request with body `{"n":"NAME"}` on its own connection; the whole response.
fn chat_raw(addr: &str, name: &str) -> String {
    let body = format!(r#"{{"n":"{name}"}}"#);
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    String::from_utf8_lossy(&raw_exchange(addr, request.as_bytes(), DEADLINE)).into_owned()
}

#[test]
fn a_client_that_leaves_while_waiting_is_let_go_at_once() {
    let mock = Mock::start();
    // The key rests far longer than the test waits for the log line.
    mock.plan(&key(1), &["429retry:600"]);
    let proxy = Proxy::with(&mock).keys(1).arg("--wait").arg("20m").start();
    let mut socket = TcpStream::connect(proxy.addr()).unwrap();
    socket
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}",
        )
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while mock.requests().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the request never reached the mock"
        );
        std::thread::yield_now();
    }
    // The proxy sends nothing while the request waits.
    socket.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(socket.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the proxy wrote to a waiting client"
    );
    drop(socket);
    proxy.wait_for_log("client left while waiting for a key");
    assert_eq!(
        mock.requests().len(),
        1,
        "the key was used again for a client that had left"
    );
}

#[test]
fn a_429_on_every_key_at_once_pauses_the_whole_pool() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:40"]);
    mock.plan(&key(2), &["429:30"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 429);
    assert!((28..=30).contains(&reply.retry_after()), "{reply:?}");
    proxy.wait_for_log("every key got a 429 within seconds");
}

#[test]
fn keys_can_be_disabled_and_enabled_while_the_proxy_runs() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(2).start();
    let disable = keys_cmd(proxy.dir.path(), &["disable", &key(1)[..14]], "");
    assert_eq!(disable.code, Some(0), "{}", disable.all());
    assert!(
        disable.stdout.contains(&format!("disabled {}", masked(1))),
        "{}",
        disable.stdout
    );
    proxy.wait_for_log("keys file changed");
    for _ in 0..3 {
        assert_eq!(proxy.chat().status, 200);
    }
    assert_eq!(mock.keys_used(), [bearer(2), bearer(2), bearer(2)]);
    let listed = keys_cmd(proxy.dir.path(), &["list"], "");
    assert!(listed.stdout.contains("disabled"), "{}", listed.stdout);

    // Enabling also clears a rest: key 2 is made to rest, then enabled again.
    mock.plan(&key(2), &["429:300"]);
    assert_eq!(
        keys_cmd(proxy.dir.path(), &["enable", &key(1)[..14]], "").code,
        Some(0)
    );
    eventually("key 1 back", || {
        proxy.chat();
        mock.keys_used().last() == Some(&bearer(1))
    });
    assert_eq!(
        keys_cmd(proxy.dir.path(), &["enable", &key(2)[..14]], "").code,
        Some(0)
    );
    eventually("key 2 back after enable", || {
        proxy.chat();
        mock.keys_used().iter().filter(|k| **k == bearer(2)).count() >= 5
    });
}

#[test]
fn keys_add_takes_an_account_and_list_shows_it() {
    let dir = TempDir::new();
    let ran = keys_cmd(dir.path(), &["add", &key(1), "--account", "acme"], "");
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    let listed = keys_cmd(dir.path(), &["list"], "");
    assert!(
        listed.stdout.contains("ACCOUNT") && listed.stdout.contains("acme"),
        "{}",
        listed.stdout
    );
    let json: Value =
        serde_json::from_str(&keys_cmd(dir.path(), &["list", "--json"], "").stdout).unwrap();
    assert_eq!(json["keys"][0]["account"], "acme");
}

#[test]
fn when_every_key_is_disabled_the_503_says_so() {
    let mock = Mock::start();
    let file = format!(
        r#"{{"keys":[{{"key":"{}","disabled":true}},{{"key":"{}","disabled":true}}]}}"#,
        key(1),
        key(2)
    );
    let proxy = Proxy::with(&mock).keys_file(&file).start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 503);
    let message = reply.error_message();
    assert!(
        message.contains("2 are disabled") && message.contains("roo-proxy keys enable"),
        "{message}"
    );
    assert!(!message.contains("invalid"), "{message}");

    // Disabled keys are not counted among the resting ones either.
    let mock = Mock::start();
    mock.plan(&key(1), &["429:60"]);
    let file = format!(
        r#"{{"keys":[{{"key":"{}"}},{{"key":"{}","disabled":true}}]}}"#,
        key(1),
        key(2)
    );
    let proxy = Proxy::with(&mock).keys_file(&file).start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 429);
    let message = reply.error_message();
    assert!(
        message.contains("all 1 keys are resting") && message.contains("1 more are disabled"),
        "{message}"
    );
}
