//! Rotation beyond round-robin, end to end: accounts, daily limits, errors inside a 200
//! stream, sticky mode, waiting for a key, pool-wide pauses, and manual control.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

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
    let request = streamed_request(reply);
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
    assert!(
        text.starts_with("HTTP/1.1 102 Processing\r\n\r\n"),
        "{text}"
    );
    let last = text.rfind("HTTP/1.1 ").unwrap();
    assert!(text[last..].starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("Hello from the mock"), "{text}");
    assert_eq!(mock.keys_used(), [bearer(1), bearer(1)]);
    // An ordinary client library sees only the final answer.
    mock.plan(&key(1), &["429retry:1"]);
    assert_eq!(proxy.chat().status, 200);
}

#[test]
fn without_wait_or_past_it_the_client_gets_429_at_once() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429retry:30"]);
    let proxy = Proxy::with(&mock).keys(1).arg("--wait").arg("5").start();
    let started = Instant::now();
    let reply = proxy.chat();
    assert_eq!(reply.status, 429);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it waited for a key that rests past --wait"
    );
}

#[test]
fn a_client_that_leaves_while_waiting_is_let_go_at_once() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429retry:15"]);
    let proxy = Proxy::with(&mock).keys(1).arg("--wait").arg("20s").start();
    let mut socket = TcpStream::connect(proxy.addr()).unwrap();
    socket
        .write_all(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}",
        )
        .unwrap();
    socket.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut buf = [0u8; 64];
    let n = socket.read(&mut buf).unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 102"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    drop(socket);
    let started = Instant::now();
    proxy.wait_for_log("client left while waiting for a key");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "noticed only when the wait ended"
    );
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
