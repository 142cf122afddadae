//! Keys never leak: not in logs at any level, not in answers to clients.

use crate::support::*;

#[test]
fn no_whole_key_appears_in_logs_or_answers_even_at_trace_level() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:30"]);
    mock.plan(&key(2), &["401"]);
    mock.plan(&key(3), &["500", "402"]);
    let proxy = Proxy::with(&mock).keys(4).env("RUST_LOG", "trace").start();

    let mut answers = Vec::new();
    for _ in 0..4 {
        let reply = proxy.chat();
        answers.push(format!("{:?} {}", reply.headers, reply.text()));
    }
    let stream = proxy.post("/v1/chat/completions", r#"{"stream":true}"#);
    answers.push(format!("{:?} {}", stream.headers, stream.text()));
    let models = proxy.get("/v1/models");
    answers.push(format!("{:?} {}", models.headers, models.text()));

    // The keys did go upstream, so their absence below means something.
    let used = mock.keys_used();
    for n in 1..=4 {
        assert!(used.contains(&bearer(n)), "key {n} never used: {used:?}");
    }
    let logs = proxy.wait_for_log(&masked(2));
    assert!(
        logs.contains("TRACE") || logs.contains("DEBUG"),
        "trace logging was not on:\n{logs}"
    );
    let everything = format!("{}\n{logs}\n{}", proxy.start_line, answers.join("\n"));
    for n in 1..=4 {
        let k = key(n);
        assert!(!everything.contains(&k), "key {n} leaked:\n{everything}");
        // Nor a long piece of its secret part.
        assert!(
            !everything.contains(&k[9..30]),
            "a piece of key {n} leaked:\n{everything}"
        );
    }
    assert!(logs.contains(&masked(1)), "{logs}");
}
