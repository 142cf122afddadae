//! The status page in a real headless browser (Debian's chromium and chromedriver,
//! driven over WebDriver): it loads, shows one row per key, and updates by itself when a
//! key's state changes. Without a browser the test says so and passes, unless
//! `ROO_PROXY_REQUIRE_BROWSER` is set (CI sets it, and installs the browser).
//! With `ROO_PROXY_SCREENSHOT=path.png` it also saves a screenshot of the page.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::support::*;

const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const CHROMIUM: &str = "/usr/bin/chromium";

/// A chromedriver process and one browser session in it.
struct Browser {
    driver: Child,
    base: String,
    session: String,
    _profile: TempDir,
}

impl Browser {
    fn start() -> Option<Browser> {
        Browser::start_with(&[])
    }

    /// With more command-line flags for chromium.
    fn start_with(flags: &[&str]) -> Option<Browser> {
        if !Path::new(CHROMEDRIVER).exists() || !Path::new(CHROMIUM).exists() {
            assert!(
                std::env::var_os("ROO_PROXY_REQUIRE_BROWSER").is_none(),
                "ROO_PROXY_REQUIRE_BROWSER is set but {CHROMIUM} or {CHROMEDRIVER} is missing (apt-get install chromium chromium-driver)"
            );
            eprintln!(
                "no chromium/chromedriver: skipping the browser test (apt-get install chromium chromium-driver)"
            );
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        eventually("chromedriver ready", || {
            client()
                .get(&format!("{base}/status"))
                .call()
                .is_ok_and(|r| r.status() == 200)
        });
        let profile = TempDir::new();
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1100,520",
        ]
        .iter()
        .chain(flags)
        .map(|a| a.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args }
        }}});
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            _profile: profile,
        };
        let created = browser.call("POST", "/session", capabilities);
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_string();
        Some(browser)
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}{path}", self.base);
        let agent = client();
        let response = match method {
            "POST" => agent
                .post(&url)
                .header("Content-Type", "application/json")
                .send(body.to_string()),
            "DELETE" => agent.delete(&url).call(),
            _ => agent.get(&url).call(),
        };
        let mut response = response.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let text = response
            .body_mut()
            .with_config()
            .limit(50 << 20)
            .read_to_string()
            .unwrap();
        let json: Value =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{method} {path}: {text}"));
        json.get("value").cloned().unwrap_or(json)
    }

    fn session(&self, method: &str, path: &str, body: Value) -> Value {
        self.call(method, &format!("/session/{}{path}", self.session), body)
    }

    fn script(&self, script: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
    }

    /// `(masked key, state)` of each row of the key table.
    fn rows(&self) -> Vec<(String, String)> {
        let rows = self.script("return Array.from(document.querySelectorAll('#keys tbody tr')).map(r => [r.dataset.key, r.dataset.state]);");
        rows.as_array()
            .map(|rows| {
                rows.iter()
                    .map(|r| {
                        (
                            r[0].as_str().unwrap_or("").into(),
                            r[1].as_str().unwrap_or("").into(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = client()
                .delete(&format!("{}/session/{}", self.base, self.session))
                .call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Decodes standard base64 (WebDriver screenshots).
fn base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, c)| n | u32::from(value(*c)) << (18 - 6 * i));
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    out
}

#[test]
fn the_status_page_shows_every_key_and_follows_state_changes() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let mock = Mock::start();
    let file = keys_json(&[
        (1, Some("work"), Some("acme")),
        (2, Some("personal"), None),
        (3, None, None),
    ]);
    let proxy = Proxy::with(&mock).keys_file(&file).start();
    for _ in 0..3 {
        assert_eq!(proxy.chat().status, 200);
    }
    browser.session("POST", "/url", json!({"url": proxy.url("/_roo/")}));
    eventually("three rows", || browser.rows().len() == 3);
    let rows = browser.rows();
    assert_eq!(
        rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        [masked(1), masked(2), masked(3)]
    );
    assert!(rows.iter().all(|r| r.1 == "ready"), "{rows:?}");

    // The page refreshes itself: no reload here.
    mock.plan(&key(1), &["429:300"]);
    mock.plan(&key(2), &["401"]);
    for _ in 0..2 {
        assert_eq!(proxy.chat().status, 200);
    }
    eventually("the page shows the new states", || {
        let rows = browser.rows();
        rows.len() == 3 && rows[0].1 == "cooling" && rows[1].1 == "invalid" && rows[2].1 == "ready"
    });
    let html = browser.script("return document.documentElement.outerHTML;");
    let html = html.as_str().unwrap();
    for n in 1..=3 {
        assert!(!html.contains(&key(n)), "key {n} whole in the page");
    }
    assert!(html.contains("of <b>3</b> keys ready"), "summary missing");
    assert!(html.contains("<rect"), "the chart has no bars");

    if let Some(path) = std::env::var_os("ROO_PROXY_SCREENSHOT") {
        let png = browser.session("GET", "/screenshot", Value::Null);
        std::fs::write(path, base64(png.as_str().unwrap())).unwrap();
    }
}

/// Serves `page` to every request on a local port (for a page of its own origin).
fn serve_page(page: String) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            let page = page.clone();
            // One thread each: a browser opens spare connections that send nothing.
            std::thread::spawn(move || {
                let _ = socket.set_read_timeout(Some(DEADLINE));
                let mut buf = [0u8; 4096];
                if socket.read(&mut buf).unwrap_or(0) == 0 {
                    return;
                }
                let _ = write!(
                    socket,
                    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                    page.len()
                );
            });
        }
    });
    port
}

/// What the test page's three requests to the proxy got: `read:…`, `sent:…` or `error:…`.
fn outcomes(browser: &Browser) -> Value {
    let mut results = Value::Null;
    eventually("the page's requests end", || {
        results = browser.script("return window.results;");
        ["spend", "status", "chat"]
            .iter()
            .all(|k| results.get(k).is_some_and(Value::is_string))
    });
    results
}

#[test]
fn a_page_of_another_origin_can_neither_read_nor_spend() {
    let Some(browser) = Browser::start_with(&["--host-resolver-rules=MAP evil.example 127.0.0.1"])
    else {
        return;
    };
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(2).start();
    let target = format!("http://127.0.0.1:{}", proxy.port);
    let page = format!(
        r#"<!doctype html><title>page</title><script>
window.results = {{}};
const proxy = "{target}";
const end = (name, p) => p.then(v => results[name] = v, e => results[name] = "error:" + e);
end("spend", fetch(proxy + "/v1/chat/completions", {{method: "POST", mode: "no-cors",
    headers: {{"Content-Type": "text/plain"}}, body: '{{"model":"m"}}'}}).then(r => "sent:" + r.type));
end("status", fetch(proxy + "/_roo/status").then(r => r.text()).then(t => "read:" + t));
end("chat", fetch(proxy + "/v1/chat/completions", {{method: "POST",
    headers: {{"Content-Type": "application/json"}}, body: "{{}}"}}).then(r => r.text()).then(t => "read:" + t));
</script>"#
    );
    let page_port = serve_page(page);

    browser.session(
        "POST",
        "/url",
        json!({"url": format!("http://evil.example:{page_port}/")}),
    );
    let results = outcomes(&browser);
    for name in ["status", "chat"] {
        let got = results[name].as_str().unwrap();
        assert!(got.starts_with("error:"), "{name} was read: {got}");
    }
    // The requests did reach the proxy, which refused them; none went upstream.
    // (the simple POST itself, the status read, the JSON POST's preflight).
    for refused in [
        "POST /v1/chat/completions → 403",
        "GET /_roo/status → 403",
        "OPTIONS /v1/chat/completions → 403",
    ] {
        proxy.wait_for_log(refused);
    }
    assert!(
        mock.requests().is_empty(),
        "a page of another origin spent a key"
    );
    assert!(!results.to_string().contains("sk-or-v1"), "{results}");

    // DNS rebinding: the attacker's name pointed at the proxy itself.
    browser.session(
        "POST",
        "/url",
        json!({"url": format!("http://evil.example:{}/_roo/status", proxy.port)}),
    );
    let text = browser.script("return document.body.innerText;");
    let text = text.as_str().unwrap_or("");
    assert!(text.contains("does not answer to the host name"), "{text}");
    assert!(
        !text.contains("masked") && !text.contains("sk-or-v1"),
        "{text}"
    );

    // A page on this machine (an allowed origin) reads its answers.
    browser.session(
        "POST",
        "/url",
        json!({"url": format!("http://localhost:{page_port}/")}),
    );
    let results = outcomes(&browser);
    let chat = results["chat"].as_str().unwrap();
    assert!(chat.contains("Hello from the mock"), "{results}");
    assert!(
        results["status"].as_str().unwrap().starts_with("read:{"),
        "{results}"
    );
    assert_eq!(mock.requests().len(), 2, "{results}");
}

/// Roo Code's settings page runs in the editor's web view (origin `vscode-webview://…`):
/// it reads the key's credit and a model's endpoints through the proxy.
#[test]
fn the_editor_web_view_reads_key_and_model_endpoints() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let origin = "vscode-webview://0a1b2c3d-4e5f";
    for path in [
        "/v1/key",
        "/api/v1/models/anthropic/claude-sonnet-4/endpoints",
    ] {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: localhost:{}\r\nOrigin: {origin}\r\nSec-Fetch-Site: cross-site\r\nSec-Fetch-Mode: cors\r\nAuthorization: Bearer anything\r\nConnection: close\r\n\r\n",
            proxy.port
        );
        let response = raw_exchange(
            &proxy.addr(),
            request.as_bytes(),
            std::time::Duration::from_secs(2),
        );
        let text = String::from_utf8_lossy(&response);
        assert_eq!(raw_status(&response), 200, "{path}: {text}");
        assert!(
            text.contains(&format!("\r\nAccess-Control-Allow-Origin: {origin}\r\n")),
            "{text}"
        );
    }
    assert_eq!(mock.requests().len(), 2);
}

#[test]
fn base64_decodes() {
    assert_eq!(base64("aGVsbG8="), b"hello");
    assert_eq!(base64("aGVsbG8h"), b"hello!");
}
