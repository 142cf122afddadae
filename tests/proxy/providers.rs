//! Provider presets end to end (issue 16): for each preset, against the mock taught
//! that provider's auth form, paths and 429 shape, the upstream sees exactly one key in
//! the provider's form and none of the client's; a 429 in its dialect rests the key for
//! the announced time; the proxy's own errors have its shape; `keys check` works.

use serde_json::Value;

use crate::support::*;

/// One preset as the tests drive it.
struct Case {
    provider: &'static str,
    /// The client's request path, as that provider's SDK sends it.
    path: &'static str,
    body: &'static str,
    /// The path the mock must see (its base is `/api/v1`, or none for Gemini's own API).
    seen: &'static str,
    /// The header the key goes in, and its value for key `n`.
    auth: (&'static str, fn(usize) -> String),
    /// A 429 in the provider's dialect, the rest it announces, and whether the rest is
    /// for the request's model only.
    limit: (&'static str, u64, bool),
    /// Where `keys check` asks.
    check: &'static str,
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

fn cases() -> Vec<Case> {
    let chat = |provider, limit| Case {
        provider,
        path: "/v1/chat/completions",
        body: CHAT,
        seen: "/api/v1/chat/completions",
        auth: ("authorization", bearer),
        limit,
        check: "/api/v1/models",
    };
    vec![
        Case {
            check: "/api/v1/key",
            ..chat("openrouter", ("429:600", 600, false))
        },
        chat("openai", ("openai429:7m30s", 450, false)),
        Case {
            path: "/v1/messages?beta=true",
            body: r#"{"model":"claude-sonnet-4","max_tokens":8,"messages":[{"role":"user","content":"hi"}]}"#,
            seen: "/api/v1/messages?beta=true",
            auth: ("x-api-key", key),
            ..chat("anthropic", ("anthropic429:900", 900, false))
        },
        Case {
            path: "/v1beta/models/gemini-2.5-flash:generateContent?key=client-query-token",
            body: r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#,
            seen: "/v1beta/models/gemini-2.5-flash:generateContent",
            auth: ("x-goog-api-key", key),
            check: "/v1beta/models",
            ..chat("gemini", ("gemini429:1234", 1234, true))
        },
        chat("gemini-openai", ("gemini429:1234", 1234, true)),
        chat("groq", ("groq429:2m59.56s", 180, false)),
        chat("mistral", ("429retry:600", 600, false)),
        chat("deepseek", ("429retry:600", 600, false)),
        chat("cerebras", ("cerebras429:33011.38", 33_012, false)),
        chat("xai", ("openai429:7m30s", 450, false)),
        chat("custom", ("429retry:600", 600, false)),
    ]
}

/// The base a preset's pool is pointed at: the mock, as that provider's base.
fn base_for(mock: &Mock, case: &Case) -> String {
    match case.provider {
        "gemini" => format!("http://127.0.0.1:{}", mock.port),
        _ => mock.base(),
    }
}

const CLIENT_TOKENS: [&str; 5] = [
    "client-dummy-token",
    "client-anthropic-style-token",
    "client-google-style-token",
    "client-azure-style-token",
    "client-query-token",
];

const CREDENTIAL_HEADERS: [&str; 4] = ["authorization", "x-api-key", "x-goog-api-key", "api-key"];

/// The credential headers a request the mock saw carried: (name, value).
fn credentials(seen: &Value) -> Vec<(String, String)> {
    seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            (
                pair[0].as_str().unwrap().to_ascii_lowercase(),
                pair[1].as_str().unwrap().to_string(),
            )
        })
        .filter(|(name, _)| CREDENTIAL_HEADERS.contains(&name.as_str()))
        .collect()
}

fn send(proxy: &Proxy, case: &Case) -> Reply {
    Reply::from(
        client()
            .post(&proxy.url(case.path))
            .header("Authorization", "Bearer client-dummy-token")
            .header("x-api-key", "client-anthropic-style-token")
            .header("x-goog-api-key", "client-google-style-token")
            .header("api-key", "client-azure-style-token")
            .send(case.body)
            .unwrap(),
    )
}

#[test]
fn each_preset_sends_one_key_in_its_form_and_rests_on_its_dialect() {
    for case in cases() {
        let p = case.provider;
        let mock = Mock::start();
        mock.plan(&key(1), &[case.limit.0]);
        let proxy = Proxy::bare()
            .keys(2)
            .arg("--provider")
            .arg(p)
            .arg("--upstream")
            .arg(&base_for(&mock, &case))
            .start();
        let reply = send(&proxy, &case);
        assert_eq!(reply.status, 200, "{p}: {}", reply.text());
        assert_eq!(proxy.get("/_roo/status").json()["provider"], p);

        let seen = mock.requests();
        assert_eq!(seen.len(), 2, "{p}: one 429, then the next key");
        for (n, request) in [1, 2].into_iter().zip(&seen) {
            assert_eq!(request["target"], case.seen, "{p}");
            let (name, value) = case.auth;
            assert_eq!(
                credentials(request),
                [(name.to_string(), value(n))],
                "{p}: exactly one key, in the provider's form"
            );
            for token in CLIENT_TOKENS {
                assert!(
                    !request.to_string().contains(token),
                    "{p}: {token} went upstream"
                );
            }
            let version = header_of(request, "anthropic-version");
            let expected = (p == "anthropic").then(|| "2023-06-01".to_string());
            assert_eq!(version, expected, "{p}");
        }

        let (reply, announced, per_model) = case.limit;
        assert_rests_as_announced(&proxy, 1, per_model, announced, &format!("{p} {reply}"));
    }
}

#[test]
fn a_clients_own_anthropic_version_is_kept() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(1)
        .arg("--provider")
        .arg("anthropic")
        .start();
    let reply = client()
        .post(&proxy.url("/v1/messages"))
        .header("anthropic-version", "2099-01-01")
        .send("{}")
        .unwrap();
    assert_eq!(reply.status(), 200);
    let seen = &mock.requests()[0];
    let versions: Vec<&Value> = seen["headers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pair| {
            pair[0]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case("anthropic-version")
        })
        .collect();
    assert_eq!(versions.len(), 1, "{seen}");
    assert_eq!(versions[0][1], "2099-01-01");
}

#[test]
fn the_proxys_own_errors_have_the_providers_shape() {
    let mock = Mock::start();
    for (provider, check) in [
        (
            "openrouter",
            (|v: &Value| v["error"]["code"] == 404) as fn(&Value) -> bool,
        ),
        ("anthropic", |v: &Value| {
            v["type"] == "error" && v["error"]["type"] == "not_found_error"
        }),
        ("gemini", |v: &Value| {
            v["error"]["code"] == 404 && v["error"]["status"] == "NOT_FOUND"
        }),
    ] {
        let proxy = Proxy::with(&mock)
            .keys(1)
            .arg("--provider")
            .arg(provider)
            .start();
        let reply = proxy.get("/favicon.ico");
        assert_eq!(reply.status, 404);
        let json = reply.json();
        assert!(check(&json), "{provider}: {json}");
        assert!(
            json.to_string().contains("roo-proxy: not an API path"),
            "{provider}: {json}"
        );
    }
    assert!(mock.requests().is_empty());
}

#[test]
fn keys_check_works_for_every_preset() {
    for case in cases() {
        let p = case.provider;
        let mock = Mock::start();
        mock.plan(&key(2), &["401"]);
        let dir = TempDir::new();
        for n in 1..=2 {
            assert_eq!(keys_cmd(dir.path(), &["add", &key(n)], "").code, Some(0));
        }
        let base = base_for(&mock, &case);
        let ran = keys_cmd(
            dir.path(),
            &["check", "--provider", p, "--upstream", &base],
            "",
        );
        assert_eq!(ran.code, Some(1), "{p}: one key is invalid: {}", ran.all());
        assert!(
            ran.stdout.contains(&format!("{}  valid", masked(1))),
            "{p}: {}",
            ran.stdout
        );
        assert!(
            ran.stdout.contains(&format!("{}  invalid (401", masked(2))),
            "{p}: {}",
            ran.stdout
        );
        // Keys are checked in parallel: the mock sees them in any order.
        let (name, value) = case.auth;
        let mut sent: Vec<Vec<(String, String)>> = mock
            .requests()
            .iter()
            .map(|request| {
                assert_eq!(request["method"], "GET", "{p}");
                assert_eq!(request["target"], case.check, "{p}");
                credentials(request)
            })
            .collect();
        sent.sort();
        let expected: Vec<Vec<(String, String)>> = (1..=2)
            .map(|n| vec![(name.to_string(), value(n))])
            .collect();
        assert_eq!(sent, expected, "{p}");
    }
}

#[test]
fn custom_needs_an_upstream_and_unknown_providers_are_named() {
    let (status, _, err) = Proxy::bare().arg("--provider").arg("custom").run();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("--provider custom needs the API base"),
        "{err}"
    );
    let (status, _, err) = Proxy::bare().arg("--provider").arg("gemeni").run();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        err.contains("--provider 'gemeni' is not a provider; use one of openrouter, openai"),
        "{err}"
    );
}

#[test]
fn roos_credit_display_shows_the_pools_sum() {
    let mock = Mock::start();
    mock.plan(&key(3), &["401"]);
    let proxy = Proxy::with(&mock).keys(3).start();
    // The mock says of each key: limit $10, $8.50 remaining, $1.50 used. Key 3 is refused.
    let first = proxy.get("/key");
    assert_eq!(first.status, 200, "{}", first.text());
    let data = &first.json()["data"];
    assert_eq!(data["limit"], 20.0, "{data}");
    assert_eq!(data["limit_remaining"], 17.0, "{data}");
    assert_eq!(data["usage"], 3.0, "{data}");
    assert_eq!(data["is_free_tier"], false, "{data}");
    assert_eq!(data["keys"], 3, "{data}");
    assert_eq!(data["keys_counted"], 2, "{data}");
    let asked: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(asked, ["/api/v1/key"; 3], "each key asked once");
    // Asked again, by every base form: the same sum, from what the proxy remembers.
    for path in ["/v1/key", "/api/v1/key", "/key"] {
        let again = proxy.get(path);
        assert_eq!(again.json()["data"], *data, "{path}");
    }
    assert_eq!(mock.requests().len(), 3, "answers are remembered");
}

#[test]
fn a_pool_is_picked_by_its_name_in_the_path_and_another_name_gets_404() {
    let mock = Mock::start();
    let proxy = Proxy::bare()
        .keys(1)
        .arg("--provider")
        .arg("gemini")
        .arg("--upstream")
        .arg(&format!("http://127.0.0.1:{}", mock.port))
        .start();
    for path in [
        "/gemini/v1beta/models/g:generateContent",
        "/v1beta/models/g:generateContent",
    ] {
        let reply = proxy.post(path, "{}");
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    let missing = proxy.post("/anthropic/v1/messages", "{}");
    assert_eq!(missing.status, 404);
    let json = missing.json();
    let message = json["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("no pool 'anthropic' here")
            && message.contains("pools: /gemini/ (also the bare base URL)"),
        "{json}"
    );
    let targets: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r["target"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(targets, ["/v1beta/models/g:generateContent"; 2]);
}

/// Whether `json` is the proxy's own error for `status` in the error shape of
/// `provider`'s SDKs (and in no other).
fn in_shape_of(provider: &str, status: u16, json: &Value) -> bool {
    let error = &json["error"];
    let ours = error["message"]
        .as_str()
        .is_some_and(|m| m.starts_with("roo-proxy: "));
    let shaped = match provider {
        "anthropic" => {
            json["type"] == "error" && error["type"].is_string() && error.get("code").is_none()
        }
        "gemini" => {
            json.get("type").is_none() && error["code"] == status && error["status"].is_string()
        }
        _ => json.get("type").is_none() && error["code"] == status && error.get("status").is_none(),
    };
    ours && shaped
}

/// A raw answer: its status, its headers' text and its body as JSON.
fn raw_answer(addr: &str, request: &str) -> (u16, String, Value) {
    let answer = raw_exchange(addr, request.as_bytes(), std::time::Duration::from_secs(20));
    let text = String::from_utf8_lossy(&answer).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no head in {text:?}"));
    let json = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {text:?}"));
    (raw_status(&answer), head.to_string(), json)
}

#[test]
fn every_answer_the_proxy_makes_itself_has_the_shape_of_the_provider_it_is_for() {
    const TOKEN: &str = "a-long-enough-access-token-1234";
    let mock = Mock::start();
    for default in ["openrouter", "anthropic", "gemini"] {
        let proxy = Proxy::with(&mock)
            .keys(1)
            .arg("--provider")
            .arg(default)
            .arg("--access-token")
            .arg(TOKEN)
            .arg("--max-body")
            .arg("1KiB")
            .start();
        let addr = proxy.addr();
        let check = |request: &str, status: u16, shape: &str, what: &str| {
            let (got, _, json) = raw_answer(&addr, request);
            assert_eq!(got, status, "{default}: {what}: {json}");
            assert!(
                in_shape_of(shape, status, &json),
                "{default}: {what}: not in {shape}'s shape: {json}"
            );
        };
        // A request whose path names a preset gets that preset's shape, whether or not
        // the proxy serves it; the bare base URL the default provider's.
        for prefix in ["", "/openrouter", "/anthropic", "/gemini"] {
            let shape = prefix.strip_prefix('/').unwrap_or(default);
            let path = format!("{prefix}/v1/chat/completions");
            let head = |more: &str| {
                format!("POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{more}")
            };
            let auth = format!("Authorization: Bearer {TOKEN}\r\n");
            // Refused by the HTTP layer, before the head is whole.
            check(
                &head("Transfer-Encoding: gzip\r\n\r\n"),
                501,
                shape,
                &format!("{path}: an unknown transfer coding"),
            );
            check(
                &head("Bad\u{1}Header: x\r\n\r\n"),
                400,
                shape,
                &format!("{path}: a malformed header"),
            );
            check(
                &format!("GET {path} HTTP/2.0\r\nHost: 127.0.0.1\r\n\r\n"),
                505,
                shape,
                &format!("{path}: an HTTP version it does not speak"),
            );
            // Refused before routing.
            check(
                &head(&format!(
                    "Origin: https://evil.example\r\n{auth}Content-Length: 0\r\n\r\n"
                )),
                403,
                shape,
                &format!("{path}: a page of another origin"),
            );
            check(
                &head("Content-Length: 0\r\n\r\n"),
                401,
                shape,
                &format!("{path}: no access token"),
            );
            let body = "x".repeat(2000);
            let (status, what) = if prefix.is_empty() || shape == default {
                (413, "a body over --max-body")
            } else {
                (404, "a pool this proxy does not have")
            };
            check(
                &head(&format!("{auth}Content-Length: 2000\r\n\r\n{body}")),
                status,
                shape,
                &format!("{path}: {what}"),
            );
        }
        // Requests that name no preset: the default provider's shape.
        check(
            "SSH-2.0-OpenSSH_9.6\r\n\r\n",
            400,
            default,
            "not an HTTP request",
        );
        check(
            "GET /favicon.ico HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            404,
            default,
            "browser noise",
        );
        check(
            &format!(
                "POST /_roo/status HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
            ),
            405,
            default,
            "a status path with POST",
        );
        // Over --max-connections: refused before the request is read, with its Retry-After.
        let proxy = Proxy::with(&mock)
            .keys(1)
            .arg("--provider")
            .arg(default)
            .arg("--max-connections")
            .arg("1")
            .start();
        let addr = proxy.addr();
        let held = std::net::TcpStream::connect(&addr).unwrap();
        let mut refused = None;
        eventually("a second connection is refused", || {
            let (status, head, json) = raw_answer(
                &addr,
                "GET /_roo/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
            );
            refused = Some((head, json));
            status == 503
        });
        let (head, json) = refused.unwrap();
        assert!(in_shape_of(default, 503, &json), "{default}: {json}");
        assert!(json.to_string().contains("--max-connections 1"), "{json}");
        assert!(head.contains("\r\nRetry-After: 1\r\n"), "{default}: {head}");
        drop(held);
    }
    assert!(mock.requests().is_empty(), "{:?}", mock.requests());
}

#[test]
fn the_readme_has_a_section_per_client_and_a_row_per_preset() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    for section in [
        "### Roo Code / Kilo Code",
        "### Cline",
        "### Claude Code",
        "### OpenAI SDKs",
        "### Gemini SDK / native API",
    ] {
        assert!(readme.lines().any(|l| l == section), "no {section:?}");
    }
    for setting in [
        "export ANTHROPIC_BASE_URL=http://localhost:3002",
        "export ANTHROPIC_AUTH_TOKEN=",
    ] {
        assert!(readme.contains(setting), "no {setting:?}");
    }
    // The presets table: provider, base URL, key sent as, rotates on.
    for case in cases() {
        let start = format!("| `{}`", case.provider);
        let row = readme
            .lines()
            .find(|l| l.starts_with(&start))
            .unwrap_or_else(|| panic!("no row for {}", case.provider));
        let cells: Vec<&str> = row.trim_matches('|').split(" | ").collect();
        assert_eq!(cells.len(), 4, "{row}");
        assert!(cells.iter().all(|c| !c.trim().is_empty()), "{row}");
        let (header, _) = case.auth;
        let sent_as = if header == "authorization" {
            "Authorization: Bearer"
        } else {
            header
        };
        assert!(cells[2].contains(sent_as), "{row}");
    }
}
