//! Several pools in one process (issue 16): keys carry a provider and a pool in both
//! keys-file formats, a client picks a pool by its path's first segment, each pool
//! rotates on its own, and a reload adds and removes pools.

use std::fs;
use std::thread;

use serde_json::{Value, json};

use crate::support::*;

const GEMINI_PATH: &str = "/gemini/v1beta/models/gemini-2.5-flash:generateContent";
const GEMINI_BODY: &str = r#"{"contents":[{"parts":[{"text":"hi"}]}]}"#;
const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;

/// The pool key a request the mock saw carried, in whatever form, with the form.
fn key_seen(request: &Value) -> (String, String) {
    for name in ["authorization", "x-api-key", "x-goog-api-key"] {
        if let Some(value) = header_of(request, name) {
            let value = value.strip_prefix("Bearer ").unwrap_or(&value).to_string();
            return (name.to_string(), value);
        }
    }
    panic!("no key in {request}")
}

/// The mock's root, as Gemini's own API base (its version is in the path).
fn root(mock: &Mock) -> String {
    format!("http://127.0.0.1:{}", mock.port)
}

/// Keys 1-3 in the default (OpenRouter) pool at mock `a`, keys 4-6 in the gemini pool
/// at mock `b`; `storm_on_default` picks whose keys answer 429 to everything.
fn storm(storm_on_default: bool) {
    let a = Mock::start();
    let b = Mock::start();
    let file = json!({"keys": [
        {"key": key(1)}, {"key": key(2)}, {"key": key(3)},
        {"key": key(4), "provider": "gemini"},
        {"key": key(5), "provider": "gemini"},
        {"key": key(6), "provider": "gemini"},
    ]});
    let proxy = Proxy::with(&a)
        .arg("--pool-upstream")
        .arg(&format!("gemini={}", root(&b)))
        .keys_file(&file.to_string())
        .start();
    assert!(
        proxy
            .start_line
            .contains("with 6 keys in 2 pools (openrouter, gemini)"),
        "{}",
        proxy.start_line
    );
    let (stormy, stormy_keys) = if storm_on_default {
        (&a, [1, 2, 3])
    } else {
        (&b, [4, 5, 6])
    };
    for n in stormy_keys {
        stormy.plan(&key(n), &["429:600"; 40]);
    }
    // 24 requests to each pool at once, from 16 threads.
    const EACH: usize = 24;
    let results: Vec<(bool, u16)> = thread::scope(|s| {
        let workers: Vec<_> = (0..16)
            .map(|t| {
                let proxy = &proxy;
                s.spawn(move || {
                    let mut out = Vec::new();
                    for i in (t..EACH * 2).step_by(16) {
                        let to_default = i % 2 == 0;
                        let reply = if to_default {
                            proxy.post("/v1/chat/completions", CHAT)
                        } else {
                            proxy.post(GEMINI_PATH, GEMINI_BODY)
                        };
                        out.push((to_default, reply.status));
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    assert_eq!(results.len(), EACH * 2);
    // The calm pool answered every request; the stormy one answered 429 (its keys rest).
    for (to_default, status) in &results {
        let stormy_pool = *to_default == storm_on_default;
        let expected = if stormy_pool { 429 } else { 200 };
        assert_eq!(*status, expected, "default pool: {to_default}");
    }
    let (calm, calm_keys, calm_form) = if storm_on_default {
        (&b, [4, 5, 6], "x-goog-api-key")
    } else {
        (&a, [1, 2, 3], "authorization")
    };
    let stormy_form = if storm_on_default {
        "authorization"
    } else {
        "x-goog-api-key"
    };
    // The calm pool's upstream saw each request once (no retry, so no key of it rested),
    // each with one of its own keys in its form, all of them used.
    let seen: Vec<(String, String)> = calm.requests().iter().map(key_seen).collect();
    assert_eq!(seen.len(), EACH, "{seen:?}");
    for n in calm_keys {
        assert!(
            seen.iter()
                .any(|(form, k)| form == calm_form && *k == key(n)),
            "key {n} unused: {seen:?}"
        );
    }
    let calm_set: Vec<String> = calm_keys.iter().map(|n| key(*n)).collect();
    assert!(seen.iter().all(|(_, k)| calm_set.contains(k)), "{seen:?}");
    // The stormy pool's upstream saw only its own keys, never more than it planned.
    let seen: Vec<(String, String)> = stormy.requests().iter().map(key_seen).collect();
    let stormy_set: Vec<String> = stormy_keys.iter().map(|n| key(*n)).collect();
    assert!(!seen.is_empty());
    assert!(
        seen.iter()
            .all(|(form, k)| form == stormy_form && stormy_set.contains(k)),
        "{seen:?}"
    );
    // And the calm pool still serves after the storm.
    let reply = if storm_on_default {
        proxy.post(GEMINI_PATH, GEMINI_BODY)
    } else {
        proxy.post("/v1/chat/completions", CHAT)
    };
    assert_eq!(reply.status, 200, "{}", reply.text());
}

#[test]
fn a_429_storm_on_the_default_pool_leaves_the_gemini_pool_alone() {
    storm(true);
}

#[test]
fn a_429_storm_on_the_gemini_pool_leaves_the_default_pool_alone() {
    storm(false);
}

#[test]
fn mixed_providers_in_both_formats_each_go_to_their_pool_in_their_form() {
    let array = json!([
        key(1),
        {"key": key(2), "provider": "gemini"},
        {"key": key(3), "provider": "anthropic", "pool": "claude"},
    ]);
    let object = json!({"keys": [
        {"key": key(1)},
        {"key": key(2), "provider": "gemini"},
        {"key": key(3), "provider": "anthropic", "pool": "claude"},
    ]});
    for file in [array, object] {
        let mock = Mock::start();
        let proxy = Proxy::with(&mock)
            .arg("--pool-upstream")
            .arg(&format!("gemini={}", root(&mock)))
            .arg("--pool-upstream")
            .arg(&format!("claude={}", mock.base()))
            .keys_file(&file.to_string())
            .start();
        assert!(
            proxy
                .start_line
                .contains("in 3 pools (openrouter, gemini, claude)"),
            "{}",
            proxy.start_line
        );
        assert_eq!(proxy.post("/v1/chat/completions", CHAT).status, 200);
        assert_eq!(
            proxy
                .post("/openrouter/api/v1/chat/completions", CHAT)
                .status,
            200
        );
        assert_eq!(proxy.post(GEMINI_PATH, GEMINI_BODY).status, 200);
        let claude = r#"{"model":"claude-sonnet-4","max_tokens":8,"messages":[]}"#;
        assert_eq!(proxy.post("/claude/v1/messages", claude).status, 200);
        let seen: Vec<(String, String, String)> = mock
            .requests()
            .iter()
            .map(|r| {
                let (form, k) = key_seen(r);
                (r["target"].as_str().unwrap().to_string(), form, k)
            })
            .collect();
        let row = |target: &str, form: &str, n: usize| (target.into(), form.into(), key(n));
        assert_eq!(
            seen,
            [
                row("/api/v1/chat/completions", "authorization", 1),
                row("/api/v1/chat/completions", "authorization", 1),
                row(
                    "/v1beta/models/gemini-2.5-flash:generateContent",
                    "x-goog-api-key",
                    2
                ),
                row("/api/v1/messages", "x-api-key", 3),
            ]
        );
    }
}

#[test]
fn a_provider_prefix_that_names_no_pool_gets_404_with_the_pools() {
    let mock = Mock::start();
    let file = json!([key(1), {"key": key(2), "provider": "groq", "pool": "fast"}]);
    let proxy = Proxy::with(&mock)
        .arg("--pool-upstream")
        .arg(&format!("fast={}", mock.base()))
        .keys_file(&file.to_string())
        .start();
    let reply = proxy.post("/gemini/v1beta/models/g:generateContent", GEMINI_BODY);
    assert_eq!(reply.status, 404, "{}", reply.text());
    let message = reply.error_message();
    assert!(message.contains("no pool 'gemini' here"), "{message}");
    assert!(
        message.contains("/openrouter/ (also the bare base URL), /fast/ (groq)"),
        "{message}"
    );
    // A pool named after the preset of its keys' provider, without keys here either.
    assert_eq!(proxy.post("/groq/v1/chat/completions", CHAT).status, 404);
    assert!(mock.requests().is_empty());
    // The named pool serves with its own key.
    assert_eq!(proxy.post("/fast/v1/chat/completions", CHAT).status, 200);
    assert_eq!(mock.keys_used(), [format!("Bearer {}", key(2))]);
}

#[test]
fn a_reload_adds_a_pool_and_takes_it_away() {
    let a = Mock::start();
    let b = Mock::start();
    let proxy = Proxy::with(&a)
        .arg("--pool-upstream")
        .arg(&format!("gemini={}", root(&b)))
        .keys(1)
        .start();
    assert_eq!(proxy.post(GEMINI_PATH, GEMINI_BODY).status, 404);
    let file = json!([key(1), {"key": key(2), "provider": "gemini"}]);
    fs::write(proxy.keys_file(), file.to_string()).unwrap();
    proxy.wait_for_log("new pool gemini with 1 key(s)");
    assert_eq!(proxy.post(GEMINI_PATH, GEMINI_BODY).status, 200);
    assert_eq!(proxy.post("/v1/chat/completions", CHAT).status, 200);
    let seen: Vec<(String, String)> = b.requests().iter().map(key_seen).collect();
    assert_eq!(seen, [("x-goog-api-key".to_string(), key(2))]);
    assert_eq!(a.keys_used(), [format!("Bearer {}", key(1))]);
    // A file that mixes providers in one pool is refused; the pools stay.
    let bad = json!([key(1), {"key": key(3), "provider": "groq", "pool": "gemini"}]);
    fs::write(proxy.keys_file(), bad.to_string()).unwrap();
    proxy.wait_for_log("pool 'gemini' is named after the provider gemini");
    assert_eq!(proxy.post(GEMINI_PATH, GEMINI_BODY).status, 200);
    fs::write(proxy.keys_file(), json!([key(1)]).to_string()).unwrap();
    proxy.wait_for_log("pool gemini has no keys left and is gone");
    assert_eq!(proxy.post(GEMINI_PATH, GEMINI_BODY).status, 404);
}

#[test]
fn a_keys_file_with_an_unknown_provider_or_a_mixed_pool_stops_the_start() {
    let (status, _, stderr) = Proxy::bare()
        .keys_file(&json!([key(1), {"key": key(2), "provider": "gemeni"}]).to_string())
        .run();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("keys.json': entry 2: \"provider\" 'gemeni' is not a provider; use one of openrouter, openai, anthropic, gemini,"), "{stderr}");
    let (status, _, stderr) = Proxy::bare()
        .keys_file(
            &json!({"keys": [
                {"key": key(1), "pool": "team"},
                {"key": key(2), "provider": "groq", "pool": "team"},
            ]})
            .to_string(),
        )
        .run();
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("pool 'team' has keys for openrouter and for groq"),
        "{stderr}"
    );
    assert!(!stderr.contains(&key(1)) && !stderr.contains(&key(2)));
}

#[test]
fn keys_add_with_a_provider_and_a_pool_and_keys_list_shows_the_pools() {
    let dir = TempDir::new();
    let gemini = "AIzaSyD-0123456789abcdef0123456789abcd";
    assert_eq!(keys_cmd(dir.path(), &["add", &key(1)], "").code, Some(0));
    let ran = keys_cmd(dir.path(), &["add", "--provider", "gemini", gemini], "");
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(
        ran.stdout.contains("to the pool 'gemini' (gemini"),
        "{}",
        ran.all()
    );
    assert!(!ran.stderr.contains("warning"), "{}", ran.all());
    let ran = keys_cmd(
        dir.path(),
        &["add", "--provider", "openai", "--pool", "work", &key(2)],
        "",
    );
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    // The file says what was asked, and the proxy reads it as three pools.
    let written: Value =
        serde_json::from_slice(&fs::read(user_keys_file_in(dir.path())).unwrap()).unwrap();
    assert_eq!(written["keys"][1]["provider"], "gemini");
    assert_eq!(written["keys"][2]["provider"], "openai");
    assert_eq!(written["keys"][2]["pool"], "work");
    assert!(written["keys"][0].get("provider").is_none());

    let ran = keys_cmd(dir.path(), &["list"], "");
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(lines[1].starts_with("POOL"), "{}", ran.stdout);
    assert!(lines[2].starts_with("openrouter"), "{}", ran.stdout);
    assert!(lines[3].starts_with("gemini "), "{}", ran.stdout);
    assert!(lines[4].starts_with("work (openai)"), "{}", ran.stdout);
    assert!(!ran.all().contains(gemini));
    let json = keys_cmd(dir.path(), &["list", "--json"], "");
    let v: Value = serde_json::from_str(&json.stdout).unwrap();
    let pools: Vec<(&str, &str)> = v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["pool"].as_str().unwrap(), k["provider"].as_str().unwrap()))
        .collect();
    assert_eq!(
        pools,
        [
            ("openrouter", "openrouter"),
            ("gemini", "gemini"),
            ("work", "openai")
        ]
    );
}

#[test]
fn keys_add_warns_when_the_key_looks_like_another_providers_and_refuses_mixed_pools() {
    let dir = TempDir::new();
    let gemini = "AIzaSyD-0123456789abcdef0123456789abcd";
    // Into the default pool (OpenRouter): added, with a warning that does not echo it.
    let ran = keys_cmd(dir.path(), &["add", gemini], "");
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(
        ran.stderr.contains(
            "warning: the key looks like one for gemini, but it goes to the pool 'openrouter'"
        ),
        "{}",
        ran.all()
    );
    assert!(!ran.all().contains("AIzaSyD-0123"), "{}", ran.all());
    // A proxy started with --provider gemini serves it in its default pool: no warning.
    let other = "AIzaSyE-0123456789abcdef0123456789abcd";
    let ran = run_in(
        dir.path(),
        PROXY,
        &["--provider", "gemini", "keys", "add", other],
        "",
        &[],
    );
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(!ran.stderr.contains("warning"), "{}", ran.all());
    // An unknown provider and a pool that would serve two providers are refused.
    let ran = keys_cmd(dir.path(), &["add", "--provider", "gemeni", &key(3)], "");
    assert_eq!(ran.code, Some(1), "{}", ran.all());
    assert!(
        ran.stderr
            .contains("'gemeni' is not a provider; use one of"),
        "{}",
        ran.all()
    );
    assert_eq!(
        keys_cmd(dir.path(), &["add", "--pool", "team", &key(4)], "").code,
        Some(0)
    );
    let ran = keys_cmd(
        dir.path(),
        &["add", "--provider", "groq", "--pool", "team", &key(5)],
        "",
    );
    assert_eq!(ran.code, Some(1), "{}", ran.all());
    assert!(
        ran.stderr
            .contains("pool 'team' has keys for openrouter and for groq"),
        "{}",
        ran.all()
    );
    let ran = keys_cmd(dir.path(), &["add", "--pool", "Bad Name", &key(6)], "");
    assert_eq!(ran.code, Some(1), "{}", ran.all());
    assert_eq!(keys_in(&user_keys_file_in(dir.path())).len(), 3);
    // A custom pool is added, with a note that the proxy needs its base URL.
    let ran = keys_cmd(
        dir.path(),
        &["add", "--provider", "custom", "--pool", "lab", &key(7)],
        "",
    );
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(
        ran.stderr
            .contains("start the proxy with --pool-upstream lab="),
        "{}",
        ran.all()
    );
    assert_eq!(keys_in(&user_keys_file_in(dir.path())).len(), 4);
}

#[test]
fn status_metrics_and_the_status_command_show_the_pools() {
    let a = Mock::start();
    let b = Mock::start();
    let file = json!([key(1), key(2), {"key": key(3), "provider": "gemini"}]);
    let proxy = Proxy::with(&a)
        .arg("--pool-upstream")
        .arg(&format!("gemini={}", root(&b)))
        .keys_file(&file.to_string())
        .start();
    b.plan(&key(3), &["429:600"]);
    assert_eq!(proxy.post(GEMINI_PATH, GEMINI_BODY).status, 429);
    let status = proxy.get("/_roo/status").json();
    let pools: Vec<(String, String, u64, u64)> = status["pools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["provider"].as_str().unwrap().to_string(),
                p["keys_available"].as_u64().unwrap(),
                p["keys_total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        pools,
        [
            ("openrouter".into(), "openrouter".into(), 2, 2),
            ("gemini".into(), "gemini".into(), 0, 1)
        ]
    );
    let keys: Vec<(&str, &str, &str)> = status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["pool"].as_str().unwrap(),
                k["key"].as_str().unwrap(),
                k["state"].as_str().unwrap(),
            )
        })
        .collect();
    let (m1, m2, m3) = (masked(1), masked(2), masked(3));
    assert_eq!(
        keys,
        [
            ("openrouter", m1.as_str(), "ready"),
            ("openrouter", m2.as_str(), "ready"),
            ("gemini", m3.as_str(), "cooling")
        ]
    );
    assert_eq!(status["keys_total"], 3);
    let metrics = proxy.get("/_roo/metrics").text();
    for line in [
        "roo_proxy_pool_keys{pool=\"gemini\",provider=\"gemini\",kind=\"total\"} 1".to_string(),
        "roo_proxy_pool_keys{pool=\"openrouter\",provider=\"openrouter\",kind=\"available\"} 2"
            .to_string(),
        format!(
            "roo_proxy_key_rate_limited_total{{key=\"{m3}\",label=\"\",account=\"\",pool=\"gemini\"}} 1"
        ),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "{line} not in\n{metrics}"
        );
    }
    let ran = proxy.status_command(&[], &[]);
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    assert!(
        ran.stdout
            .contains("pool gemini (gemini) at http://127.0.0.1:")
            && ran.stdout.contains("0 of 1 keys ready"),
        "{}",
        ran.stdout
    );
    let row = ran
        .stdout
        .lines()
        .find(|l| l.contains(&m3))
        .unwrap_or_else(|| panic!("{}", ran.stdout));
    assert!(row.starts_with("gemini "), "{}", ran.stdout);
    assert!(
        ran.stdout.lines().any(|l| l.starts_with("POOL")),
        "{}",
        ran.stdout
    );
}

#[test]
fn keys_check_asks_about_each_key_at_its_pools_upstream_in_its_form() {
    let mock = Mock::start();
    let dir = TempDir::new();
    let file = dir.path().join("keys.json");
    fs::write(
        &file,
        json!([
            key(1),
            {"key": key(2), "provider": "gemini"},
            {"key": key(3), "provider": "custom", "pool": "lab"}
        ])
        .to_string(),
    )
    .unwrap();
    let file = file.to_str().unwrap();
    let asked = |from: usize| {
        let mut asked: Vec<(String, String, String)> = mock.requests()[from..]
            .iter()
            .map(|r| {
                let (form, k) = key_seen(r);
                (r["target"].as_str().unwrap().to_string(), form, k)
            })
            .collect();
        asked.sort();
        asked
    };
    let gemini_pool = format!("gemini={}", root(&mock));
    let ran = keys_cmd(
        dir.path(),
        &[
            "check",
            "--keys-file",
            file,
            "--upstream",
            &mock.base(),
            "--pool-upstream",
            &gemini_pool,
        ],
        "",
    );
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    // Each key at its pool's upstream, in its provider's form; the custom pool has no
    // base URL, so its key is named and not sent anywhere.
    assert_eq!(
        asked(0),
        [
            (
                "/api/v1/key".to_string(),
                "authorization".to_string(),
                key(1)
            ),
            (
                "/v1beta/models".to_string(),
                "x-goog-api-key".to_string(),
                key(2)
            ),
        ]
    );
    assert!(
        ran.stdout.contains("pool lab (custom): not checked:")
            && ran.stdout.contains("--pool-upstream lab="),
        "{}",
        ran.stdout
    );
    assert!(ran.stdout.contains("2 of 2 keys valid"), "{}", ran.stdout);
    // A key without "provider" is for the --provider given, as the proxy would take it.
    let before = mock.requests().len();
    let ran = keys_cmd(
        dir.path(),
        &[
            "check",
            "--keys-file",
            file,
            "--provider",
            "gemini",
            "--upstream",
            &root(&mock),
        ],
        "",
    );
    assert_eq!(ran.code, Some(0), "{}", ran.all());
    let gemini = |n| {
        (
            "/v1beta/models".to_string(),
            "x-goog-api-key".to_string(),
            key(n),
        )
    };
    assert_eq!(asked(before), [gemini(1), gemini(2)]);
}

#[test]
fn roos_credit_display_sums_the_openrouter_pool_its_path_names() {
    let mock = Mock::start();
    let file = json!([
        key(1),
        {"key": key(2), "provider": "openrouter", "pool": "team"},
        {"key": key(3), "provider": "openrouter", "pool": "team"},
        {"key": key(4), "provider": "gemini"},
    ]);
    let proxy = Proxy::with(&mock)
        .arg("--pool-upstream")
        .arg(&format!("team={}", mock.base()))
        .arg("--pool-upstream")
        .arg(&format!("gemini={}", root(&mock)))
        .keys_file(&file.to_string())
        .start();
    // The mock says of each key: limit $10, $8.50 remaining, $1.50 used.
    let team = proxy.get("/team/api/v1/key").json();
    assert_eq!(team["data"]["keys"], 2, "{team}");
    assert_eq!(team["data"]["limit"], 20.0, "{team}");
    let default = proxy.get("/key").json();
    assert_eq!(default["data"]["keys"], 1, "{default}");
    assert_eq!(default["data"]["limit"], 10.0, "{default}");
    let asked: Vec<(String, String)> = mock.requests().iter().map(key_seen).collect();
    let mut asked: Vec<String> = asked.into_iter().map(|(_, k)| k).collect();
    asked.sort();
    assert_eq!(asked, [key(1), key(2), key(3)]);
    // Gemini's own API has no /key: the request goes upstream with a gemini key.
    assert_eq!(proxy.get("/gemini/key").status, 200);
    let last = mock.requests().pop().unwrap();
    assert_eq!(key_seen(&last), ("x-goog-api-key".to_string(), key(4)));
}
