//! The proxy's own status paths and `roo-proxy status`: what they say, that they never
//! go upstream, and that no whole key appears in them.

use std::collections::HashMap;

use serde_json::Value;

use crate::support::*;

fn assert_no_key(text: &str, n: usize) {
    for i in 1..=n {
        assert!(!text.contains(&key(i)), "key {i} whole in:\n{text}");
        assert!(
            !text.contains(&key(i)[9..30]),
            "a piece of key {i} in:\n{text}"
        );
    }
}

#[test]
fn health_says_whether_a_key_can_serve() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:300"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    let ok = proxy.get("/_roo/health");
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.json(),
        serde_json::json!({"status": "ok", "keys_available": 2, "keys_total": 2})
    );
    mock.plan(&key(2), &["429:300"]);
    assert_eq!(proxy.chat().status, 429);
    let down = proxy.get("/_roo/health");
    assert_eq!(down.status, 503);
    assert_eq!(down.json()["status"], "unavailable");
    assert_eq!(down.json()["keys_available"], 0);
    assert!(
        mock.requests()
            .iter()
            .all(|r| !r["target"].as_str().unwrap().contains("_roo"))
    );
}

#[test]
fn status_tells_each_keys_state_counters_and_masked_last_error() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:120"]);
    mock.plan(&key(2), &["401echo"]);
    let file = keys_json(&[
        (1, Some("work"), Some("acme")),
        (2, None, None),
        (3, None, None),
    ]);
    let proxy = Proxy::with(&mock).keys_file(&file).start();
    for _ in 0..3 {
        assert_eq!(proxy.chat().status, 200);
    }
    // A request is counted once its answer is out, so the count may trail the client.
    eventually("the third request is counted", || {
        proxy.get("/_roo/status").json()["requests"] == 3
    });
    let reply = proxy.get("/_roo/status");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert_no_key(&reply.text(), 3);
    let s = reply.json();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["upstream"], mock.base());
    assert_eq!(s["provider"], "openrouter");
    assert_eq!(s["strategy"], "round-robin");
    assert!(s["uptime_seconds"].is_u64());
    assert_eq!(
        (s["keys_total"].as_u64(), s["keys_available"].as_u64()),
        (Some(3), Some(1))
    );
    assert_eq!(s["requests"], 3);
    let keys = s["keys"].as_array().unwrap();
    let (k1, k2, k3) = (&keys[0], &keys[1], &keys[2]);
    assert_eq!(
        (
            k1["key"].as_str(),
            k1["label"].as_str(),
            k1["account"].as_str()
        ),
        (Some(masked(1).as_str()), Some("work"), Some("acme"))
    );
    assert_eq!(k1["state"], "cooling");
    assert!(
        (115..=120).contains(&k1["seconds_left"].as_u64().unwrap()),
        "{k1}"
    );
    assert_eq!(
        (k1["requests"].as_u64(), k1["rate_limited"].as_u64()),
        (Some(1), Some(1))
    );
    assert!(
        k1["last_error"]
            .as_str()
            .unwrap()
            .starts_with("HTTP 429: Rate limit exceeded"),
        "{k1}"
    );
    assert_eq!(k2["state"], "invalid");
    let error = k2["last_error"].as_str().unwrap();
    assert!(
        error.contains(&format!("Invalid API key: {}", masked(2))),
        "{error}"
    );
    assert_eq!(
        (k3["state"].as_str(), k3["served"].as_u64()),
        (Some("ready"), Some(3))
    );
    assert!(k3["last_used_ms"].as_u64().unwrap() > 1_700_000_000_000);
    let limited: u64 = s["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["rate_limited"].as_u64().unwrap())
        .sum();
    assert_eq!(limited, 1);
}

/// Checks text against the Prometheus exposition format (0.0.4) and returns the samples
/// by `name{labels}`.
fn parse_prometheus(text: &str) -> HashMap<String, f64> {
    let mut types: HashMap<String, String> = HashMap::new();
    let mut samples = HashMap::new();
    let is_name = |n: &str| {
        !n.is_empty()
            && n.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            })
    };
    for (i, line) in text.lines().enumerate() {
        let at = format!("line {}: {line:?}", i + 1);
        if let Some(rest) = line.strip_prefix("# ") {
            let mut parts = rest.splitn(3, ' ');
            let (kind, name, value) = (
                parts.next().unwrap(),
                parts.next().unwrap_or(""),
                parts.next().unwrap_or(""),
            );
            assert!(is_name(name), "{at}");
            match kind {
                "HELP" => assert!(!value.is_empty(), "{at}"),
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&value),
                        "{at}"
                    );
                    assert!(
                        types.insert(name.to_string(), value.to_string()).is_none(),
                        "TYPE twice: {at}"
                    );
                }
                _ => panic!("unknown comment: {at}"),
            }
            continue;
        }
        assert!(!line.is_empty(), "blank {at}");
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("{at}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {at}")),
        };
        let name = series.split('{').next().unwrap();
        assert!(is_name(name), "{at}");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|f| types.get(*f).map(String::as_str) == Some("histogram"))
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample before its TYPE: {at}");
        if let Some(labels) = series.strip_prefix(name).filter(|l| !l.is_empty()) {
            let inner = labels
                .strip_prefix('{')
                .and_then(|l| l.strip_suffix('}'))
                .unwrap_or_else(|| panic!("{at}"));
            // name="value" pairs, values with \\, \" and \n escapes only.
            let mut rest = inner;
            while !rest.is_empty() {
                let (label, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("{at}"));
                assert!(is_name(label), "{at}");
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => {
                            assert!(matches!(chars.next(), Some((_, '\\' | '"' | 'n'))), "{at}")
                        }
                        Some((j, '"')) => break j,
                        Some(_) => {}
                        None => panic!("unterminated label: {at}"),
                    }
                };
                rest = after[end + 1..]
                    .strip_prefix(',')
                    .unwrap_or(&after[end + 1..]);
            }
        }
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "sample twice: {at}"
        );
    }
    samples
}

#[test]
fn metrics_are_valid_prometheus_text_with_the_promised_series() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:60"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    for _ in 0..2 {
        assert_eq!(proxy.chat().status, 200);
    }
    // A request is counted once its answer is out, so the count may trail the client.
    eventually("the second request is counted", || {
        parse_prometheus(&proxy.get("/_roo/metrics").text())
            .get("roo_proxy_requests_total{status=\"200\"}")
            == Some(&2.0)
    });
    let reply = proxy.get("/_roo/metrics");
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .header("content-type")
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = reply.text();
    assert_no_key(&text, 2);
    let m = parse_prometheus(&text);
    assert_eq!(m["roo_proxy_requests_total{status=\"200\"}"], 2.0);
    assert_eq!(m["roo_proxy_upstream_attempts_total"], 3.0);
    assert_eq!(m["roo_proxy_retries_total"], 1.0);
    assert_eq!(m["roo_proxy_provider_info{provider=\"openrouter\"}"], 1.0);
    assert_eq!(m["roo_proxy_keys{state=\"cooling\"}"], 1.0);
    assert_eq!(m["roo_proxy_keys{state=\"ready\"}"], 1.0);
    let k1 = format!("key=\"{}\",label=\"\",account=\"\"", masked(1));
    assert_eq!(
        m[&format!("roo_proxy_key_state{{{k1},state=\"cooling\"}}")],
        1.0
    );
    assert_eq!(m[&format!("roo_proxy_key_rate_limited_total{{{k1}}}")], 1.0);
    let k2 = format!("key=\"{}\",label=\"\",account=\"\"", masked(2));
    assert_eq!(m[&format!("roo_proxy_key_served_total{{{k2}}}")], 2.0);
    for h in [
        "roo_proxy_request_duration_seconds",
        "roo_proxy_time_to_first_byte_seconds",
    ] {
        assert_eq!(m[&format!("{h}_count")], 2.0, "{h}");
        assert_eq!(m[&format!("{h}_bucket{{le=\"+Inf\"}}")], 2.0, "{h}");
        let mut last = 0.0;
        for le in ["0.005", "0.01", "0.1", "1", "10", "300"] {
            let v = m[&format!("{h}_bucket{{le=\"{le}\"}}")];
            assert!(v >= last, "{h} buckets must not decrease");
            last = v;
        }
    }
}

#[test]
fn reserved_paths_never_go_upstream() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    for (path, status) in [
        ("/_roo/", 200),
        ("/_roo", 200),
        ("/_roo/health", 200),
        ("/_roo/status", 200),
        ("/_roo/metrics", 200),
        ("/_roo/nothing", 404),
    ] {
        assert_eq!(proxy.get(path).status, status, "{path}");
    }
    let post = proxy.post("/_roo/status", "{}");
    assert_eq!(post.status, 405);
    assert!(mock.requests().is_empty(), "a reserved path was forwarded");
}

#[test]
fn the_page_is_one_self_contained_file() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let page = proxy.get("/_roo/");
    assert_eq!(
        page.header("content-type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(
        html.contains("<table id=\"keys\"") && html.contains("fetch(\"/_roo/status\""),
        "{html}"
    );
    for external in [
        "src=\"http",
        "href=\"http",
        "<link",
        "<script src",
        "@import",
        "url(http",
    ] {
        assert!(!html.contains(external), "external asset: {external}");
    }
}

#[test]
fn keys_list_and_status_show_a_rest_by_one_name_and_one_rounding() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:600"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    assert_eq!(proxy.chat().status, 200);
    let dir = proxy.dir.path();
    let list_json = || {
        let ran = run_in(dir, PROXY, &["keys", "list", "--json"], "", &[]);
        serde_json::from_str::<Value>(&ran.stdout).unwrap()
    };
    // keys list reads the state file, which the proxy saves within a second.
    eventually("the state file names the rest", || {
        list_json()["keys"][0]["state"] == "cooling"
    });
    let status_json: Value =
        serde_json::from_str(&proxy.status_command(&["--json"], &[]).stdout).unwrap();
    let (listed, reported) = (&list_json()["keys"][0], &status_json["keys"][0]);
    for k in [listed, reported] {
        assert!(k.get("cooldown_seconds").is_none(), "{k}");
        let left = k["seconds_left"].as_u64().unwrap_or_else(|| panic!("{k}"));
        assert!((540..=600).contains(&left), "{k}");
    }
    // Nine and a bit minutes read "10m" in both tables: rounded up, never down.
    let list = run_in(dir, PROXY, &["keys", "list"], "", &[]).stdout;
    let status = proxy.status_command(&[], &[]).stdout;
    let row = |text: &str| {
        let line = text
            .lines()
            .find(|l| l.starts_with(&masked(1)))
            .unwrap()
            .to_string();
        line.split_whitespace()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    assert!(
        row(&list).windows(2).any(|w| w == ["cooling", "10m"]),
        "{list}"
    );
    assert!(
        row(&status).windows(2).any(|w| w == ["cooling", "10m"]),
        "{status}"
    );
}

#[test]
fn roo_proxy_status_prints_the_pool_of_a_running_proxy() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:120"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    assert_eq!(proxy.chat().status, 200);
    let ran = proxy.status_command(&[], &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert_no_key(&ran.all(), 2);
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(
        lines[0].contains(&format!("→ openrouter {}", mock.base()))
            && lines[0].contains("round-robin"),
        "{}",
        ran.stdout
    );
    assert!(lines[1].starts_with("1 of 2 keys ready"), "{}", ran.stdout);
    assert!(
        lines[2].starts_with("KEY")
            && lines[2].contains("BACK IN")
            && lines[2].contains("LAST ERROR"),
        "{}",
        ran.stdout
    );
    assert!(
        lines[3].starts_with(&masked(1))
            && lines[3].contains("cooling")
            && lines[3].contains("HTTP 429"),
        "{}",
        ran.stdout
    );
    assert!(
        lines[4].starts_with(&masked(2)) && lines[4].contains("ready"),
        "{}",
        ran.stdout
    );

    let json = proxy.status_command(&["--json"], &[]);
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(v["keys"][0]["state"], "cooling");
    // The variable works as the flag does.
    let env = run_in(
        proxy.dir.path(),
        PROXY,
        &["status"],
        "",
        &[("ROO_PROXY_PORT", &proxy.port.to_string())],
    );
    assert_eq!(env.code, Some(0), "{}", env.all());
}

#[test]
fn roo_proxy_status_says_clearly_when_no_proxy_runs() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port().to_string();
    drop(free);
    let dir = TempDir::new();
    let ran = run_in(dir.path(), PROXY, &["status", "--port", &port], "", &[]);
    assert_eq!(ran.code, Some(1));
    assert!(
        ran.stderr
            .contains(&format!("no roo-proxy answers at http://127.0.0.1:{port}")),
        "{}",
        ran.stderr
    );
    assert!(
        ran.stderr.contains("start one with `roo-proxy`"),
        "{}",
        ran.stderr
    );
}
