//! Keys never leak: not in logs at any level and module, not in answers to clients, not
//! even a 16-character piece of one, in text or in hex.

use crate::support::*;

#[test]
fn no_whole_key_appears_in_logs_or_answers_even_at_trace_level() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:30"]);
    mock.plan(&key(2), &["401"]);
    mock.plan(&key(3), &["500", "402"]);
    let proxy = Proxy::with(&mock)
        .keys(4)
        .env("RUST_LOG", EVERY_MODULE_AT_TRACE)
        .start();

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
    assert_no_piece_of_any_key(&everything, 4);
    assert!(logs.contains(&masked(1)), "{logs}");
}

/// `trace` for everything, and for the HTTP client's modules by name (a more specific
/// directive wins in `RUST_LOG`).
const EVERY_MODULE_AT_TRACE: &str = "trace,ureq=trace,ureq_proto=trace,ureq_proto::util=trace,ureq::unversioned=trace,rustls=trace,roo_proxy=trace";

/// Fails on any 16 consecutive characters of keys 1..=n in `text`, also hex-encoded
/// (ureq's trace dumps bytes as hex, in groups of two bytes).
fn assert_no_piece_of_any_key(text: &str, n: usize) {
    let squeezed: String = text.split_whitespace().collect::<Vec<_>>().concat();
    let squeezed = squeezed.to_ascii_lowercase();
    for k in (1..=n).map(key) {
        for piece in k.as_bytes().windows(16) {
            let plain = std::str::from_utf8(piece).unwrap();
            assert!(!text.contains(plain), "'{plain}' of a key leaked:\n{text}");
            let hex: String = piece.iter().map(|b| format!("{b:02x}")).collect();
            assert!(
                !squeezed.contains(&hex),
                "'{plain}' of a key leaked as hex:\n{text}"
            );
        }
    }
}

#[test]
fn keys_echoed_or_cut_by_the_upstream_are_masked_everywhere() {
    let mock = Mock::start();
    // Key 1's 500 has the key where a 300-character cut falls; key 2's 400 echoes it in
    // its body and a header; key 3's 401 echoes it whole.
    mock.plan(&key(1), &["500cut"]);
    mock.plan(&key(2), &["400echo"]);
    mock.plan(&key(3), &["401echo"]);
    let proxy = Proxy::with(&mock)
        .keys(3)
        .arg("--max-attempts")
        .arg("1")
        .env("RUST_LOG", EVERY_MODULE_AT_TRACE)
        .start();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let reply = proxy.chat();
        answers.push(format!(
            "{} {:?} {}",
            reply.status,
            reply.headers,
            reply.text()
        ));
    }
    assert_eq!(mock.keys_used().len(), 3);
    let joined = answers.join("\n");
    assert!(joined.contains("502"), "{joined}");
    assert!(
        joined.contains("bad request made with sk-or-v1-02…0002"),
        "{joined}"
    );
    let status = proxy.get("/_roo/status").text();
    let logs = proxy.wait_for_log(&masked(3));
    assert_no_piece_of_any_key(&format!("{joined}\n{status}\n{logs}"), 3);
}
