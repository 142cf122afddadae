//! Issue 15's rotation rules end to end: every provider's way of announcing a reset,
//! rests scoped to one model, budgets announced by successes, and 429 echoes from
//! attempts in flight. Untimed: rests are checked by their announced length as
//! `/_roo/status` shows it, never by how long anything took.

use std::thread;

use serde_json::Value;

use crate::support::*;

/// Seconds left of key `n`'s rest.
fn rest_of(proxy: &Proxy, n: usize) -> u64 {
    let k = key_status(proxy, n);
    assert_eq!(k["state"], "cooling", "{k}");
    k["seconds_left"].as_u64().unwrap()
}

fn chat_for(proxy: &Proxy, model: &str) -> Reply {
    let body = serde_json::json!({"model": model, "messages": [{"role": "user", "content": "hi"}]});
    proxy.post("/v1/chat/completions", &body.to_string())
}

/// Each provider's 429 gives the rest it announced; the request is served by the next
/// key, and the limited key rests that long (and not the cooldown or until midnight).
#[test]
fn each_providers_announced_reset_sets_the_rest() {
    // (reply, the rest it announces in seconds)
    let cases = [
        // Groq, per-day limit, "Please try again in 2m59.56s": 180 s, not until midnight.
        ("groq429:2m59.56s", 180),
        // OpenAI: x-ratelimit-reset-requests as a duration.
        ("openai429:7m30s", 450),
        // Anthropic: anthropic-ratelimit-requests-reset in RFC 3339.
        ("anthropic429:900", 900),
        // Cerebras: float seconds.
        ("cerebras429:33011.38", 33_012),
        // Gemini: RetryInfo.retryDelay in a body that is a JSON list.
        ("gemini429:1234", 1234),
    ];
    for (reply, announced) in cases {
        let mock = Mock::start();
        mock.plan(&key(1), &[reply]);
        let proxy = Proxy::with(&mock)
            .keys(2)
            .arg("--cooldown")
            .arg("5")
            .start();
        assert_eq!(proxy.chat().status, 200, "{reply}");
        assert_eq!(mock.keys_used(), [bearer(1), bearer(2)], "{reply}");
        // Gemini's quota is per model: the key rests for the request's model only.
        let per_model = reply.starts_with("gemini");
        assert_rests_as_announced(&proxy, 1, per_model, announced, reply);
    }
}

/// Gemini's per-model quota rests the key for that model only: it keeps serving
/// others, the status shows the rest with its scope, and so does `keys list`.
#[test]
fn a_per_model_limit_rests_the_key_for_that_model_only() {
    let mock = Mock::start();
    mock.plan(&key(1), &["gemini429:600"]);
    let proxy = Proxy::with(&mock).keys(1).start();
    let refused = chat_for(&proxy, "gemini-2.5-pro");
    assert_eq!(refused.status, 429);
    let wait = refused.retry_after();
    assert!((540..=600).contains(&wait), "Retry-After {wait}");
    // Another model is served by the same key at once.
    assert_eq!(chat_for(&proxy, "gemini-2.5-flash").status, 200);
    // The limited model is answered by the proxy, without bothering the upstream.
    let again = chat_for(&proxy, "gemini-2.5-pro");
    assert_eq!(again.status, 429);
    assert_eq!(mock.keys_used().len(), 2);

    let k = key_status(&proxy, 1);
    assert_eq!(k["state"], "ready", "{k}");
    assert_eq!(k["model_rests"][0]["scope"], "model gemini-2.5-pro", "{k}");
    let metrics = proxy.get("/_roo/metrics").text();
    assert!(
        metrics.contains("scope=\"model gemini-2.5-pro\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            "roo_proxy_key_state{{key=\"{}\",label=\"\",account=\"\",state=\"ready\"}} 1",
            masked(1)
        )),
        "{metrics}"
    );
    // The state file is saved within a second or so; `keys list` reads it.
    eventually("keys list shows the model rest", || {
        let listed = keys_cmd(proxy.dir.path(), &["list", "--json"], "");
        let json: Value = serde_json::from_str(&listed.stdout).unwrap_or_default();
        json["keys"][0]["model_rests"][0]["scope"] == "model gemini-2.5-pro"
            && json["keys"][0]["state"] == "ready"
    });
    let table = keys_cmd(proxy.dir.path(), &["list"], "");
    assert!(
        table.stdout.contains("ready; model gemini-2.5-pro "),
        "{}",
        table.stdout
    );
}

/// The Gemini path names the model when the body does not.
#[test]
fn the_model_of_a_gemini_path_scopes_its_rest() {
    let mock = Mock::start();
    mock.plan(&key(1), &["gemini429:600"]);
    let proxy = Proxy::with(&mock).keys(1).start();
    let pro = "/v1beta/models/gemini-2.5-pro:generateContent";
    assert_eq!(proxy.post(pro, "{}").status, 429);
    let flash = "/v1beta/models/gemini-2.5-flash:generateContent";
    assert_eq!(proxy.post(flash, "{}").status, 200);
    assert_eq!(proxy.post(pro, "{}").status, 429);
    assert_eq!(mock.keys_used().len(), 2);
}

/// OpenRouter's free-models-per-day limit concerns `:free` models only.
#[test]
fn a_free_models_limit_spares_paid_models() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429day"]);
    let proxy = Proxy::with(&mock).keys(1).start();
    assert_eq!(chat_for(&proxy, "deepseek/deepseek-r1:free").status, 429);
    assert_eq!(chat_for(&proxy, "anthropic/claude-sonnet-4").status, 200);
    assert_eq!(
        chat_for(&proxy, "meta-llama/llama-3.3-70b:free").status,
        429
    );
    assert_eq!(
        mock.keys_used().len(),
        2,
        "the second free request stayed home"
    );
    let k = key_status(&proxy, 1);
    assert_eq!(k["model_rests"][0]["scope"], "free models", "{k}");
    let status = keys_cmd_status(&proxy);
    assert!(status.contains("ready; free models "), "{status}");
}

fn keys_cmd_status(proxy: &Proxy) -> String {
    proxy.status_command(&[], &[]).all()
}

/// A success that says no requests are left rests the key until the reset, without a
/// 429; the next requests go to the other key.
#[test]
fn a_spent_budget_rests_the_key_without_a_429() {
    for reply in ["budget:0:600", "oaibudget:0:10m"] {
        let mock = Mock::start();
        mock.plan(&key(1), &[reply]);
        let proxy = Proxy::with(&mock).keys(2).start();
        for _ in 0..4 {
            assert_eq!(proxy.chat().status, 200);
        }
        assert_eq!(
            mock.keys_used(),
            [bearer(1), bearer(2), bearer(2), bearer(2)],
            "{reply}"
        );
        let left = rest_of(&proxy, 1);
        assert!((540..=600).contains(&left), "{reply}: {left}");
        assert_eq!(key_status(&proxy, 1)["rate_limited"], 0);
    }
}

/// A key whose budget is one request takes no second attempt while one is in flight.
#[test]
fn no_more_attempts_in_flight_than_the_budget() {
    let mock = Mock::start();
    mock.plan(&key(1), &["budget:1:600", "hang:15"]);
    let proxy = Proxy::with(&mock).keys(1).start();
    assert_eq!(proxy.chat().status, 200);
    // The second request hangs upstream, using the last request of the budget.
    let addr = proxy.url("/v1/chat/completions");
    let hanging = thread::spawn(move || {
        let _ = client()
            .post(&addr)
            .header("Content-Type", "application/json")
            .send(r#"{"model":"mock/model","messages":[]}"#);
    });
    eventually("the second request reached the upstream", || {
        mock.requests().len() == 2
    });
    // A third is not sent upstream while the second is in flight, and is told why.
    let third = proxy.chat();
    assert_eq!(third.status, 429, "{}", third.text());
    assert!(
        third.error_message().contains("remaining budget"),
        "{}",
        third.text()
    );
    assert_eq!(mock.requests().len(), 2);
    drop(hanging);
}

/// The issue's failure: many attempts in flight on two accounts, all refused by one
/// window, their 429s arriving after others were sent. Each key rests as announced,
/// never longer, and the pool pause is not doubled by the echoes.
#[test]
fn echoes_of_429s_in_flight_do_not_lengthen_rests() {
    let mock = Mock::start();
    for n in 1..=4 {
        mock.plan(&key(n), &["slow429:100:300"; 4]);
    }
    let file = keys_json(&[
        (1, None, Some("a")),
        (2, None, Some("a")),
        (3, None, Some("b")),
        (4, None, Some("b")),
    ]);
    let proxy = Proxy::with(&mock)
        .keys_file(&file)
        .arg("--max-attempts")
        .arg("1")
        .start();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let url = proxy.url("/v1/chat/completions");
            thread::spawn(move || {
                client()
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .send(r#"{"model":"mock/model","messages":[]}"#)
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            })
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 429);
    }
    for n in 1..=4 {
        let left = rest_of(&proxy, n);
        assert!(left <= 100, "key {n} rests {left} s, more than announced");
    }
    let paused = proxy.get("/_roo/status").json()["paused_seconds"].clone();
    assert!(
        paused.is_null() || paused.as_u64().unwrap() <= 100,
        "pause {paused}"
    );
    let pauses = proxy.logs().matches("no requests for").count();
    assert!(pauses <= 1, "the pause was raised {pauses} times");
}
