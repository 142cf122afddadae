//! Key rotation end to end: which key each upstream request carried, and what the client
//! was told when no key could serve.

use crate::support::*;

#[test]
fn requests_go_round_robin_over_the_keys() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(3).start();
    for _ in 0..6 {
        assert_eq!(proxy.chat().status, 200);
    }
    let expected: Vec<String> = [1, 2, 3, 1, 2, 3].into_iter().map(bearer).collect();
    assert_eq!(mock.keys_used(), expected);
}

#[test]
fn a_429_is_ridden_out_with_the_next_key_and_the_first_rests() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:120"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.json()["object"], "chat.completion");
    for _ in 0..3 {
        assert_eq!(proxy.chat().status, 200);
    }
    // Key 1 was tried once; while it rests every request goes to key 2.
    assert_eq!(
        mock.keys_used(),
        [bearer(1), bearer(2), bearer(2), bearer(2), bearer(2)]
    );
    proxy.wait_for_log(&format!("key {} rests for 120 s", masked(1)));
}

#[test]
fn when_every_key_rests_the_client_gets_429_with_the_earliest_reset() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:300"]);
    mock.plan(&key(2), &["429body:120"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 429);
    let wait = reply.retry_after();
    assert!(
        (118..=120).contains(&wait),
        "Retry-After {wait}: the body's reset was not used"
    );
    assert_eq!(reply.header("x-should-retry"), Some("false"));
    let message = reply.error_message();
    assert!(message.contains("all 2 keys are resting"), "{message}");
    assert!(message.contains("keys.json"), "{message}");
    // The next request does not touch the upstream at all.
    assert_eq!(proxy.chat().status, 429);
    assert_eq!(mock.requests().len(), 2);
}

#[test]
fn retry_after_alone_sets_the_rest_and_short_waits_let_sdks_retry() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429retry:5"]);
    let proxy = Proxy::with(&mock).keys(1).start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 429);
    assert!((4..=5).contains(&reply.retry_after()), "{reply:?}");
    assert_eq!(reply.header("x-should-retry"), None);
}

#[test]
fn a_429_without_hints_rests_for_the_cooldown_flag() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429bare"]);
    let proxy = Proxy::with(&mock)
        .keys(1)
        .arg("--cooldown")
        .arg("7s")
        .start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 429);
    assert!((6..=7).contains(&reply.retry_after()), "{reply:?}");
}

#[test]
fn a_provider_429_reaches_the_client_and_rests_no_key() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429provider"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 429);
    // The upstream's own body, as it came.
    assert_eq!(
        reply.json()["error"]["metadata"]["provider_name"],
        "MockProvider"
    );
    assert_eq!(
        mock.requests().len(),
        1,
        "another key was tried for a provider limit"
    );
    // Key 1 still serves in its turn.
    assert_eq!(proxy.chat().status, 200);
    assert_eq!(proxy.chat().status, 200);
    assert_eq!(mock.keys_used(), [bearer(1), bearer(2), bearer(1)]);
}

#[test]
fn an_invalid_key_leaves_the_rotation() {
    let mock = Mock::start();
    mock.plan(&key(1), &["401"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    for _ in 0..4 {
        assert_eq!(proxy.chat().status, 200);
    }
    assert_eq!(
        mock.keys_used(),
        [bearer(1), bearer(2), bearer(2), bearer(2), bearer(2)]
    );
    proxy.wait_for_log(&format!(
        "key {} is taken out of rotation: HTTP 401: User not found.",
        masked(1)
    ));
}

#[test]
fn when_every_key_is_invalid_the_client_gets_503() {
    let mock = Mock::start();
    mock.plan(&key(1), &["401"]);
    mock.plan(&key(2), &["401"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 503);
    assert!(
        reply
            .error_message()
            .contains("rejected them as invalid (401)"),
        "{}",
        reply.text()
    );
}

#[test]
fn a_key_out_of_credits_rests_for_an_hour() {
    let mock = Mock::start();
    mock.plan(&key(1), &["402"]);
    mock.plan(&key(2), &["402"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 429);
    assert!((3590..=3600).contains(&reply.retry_after()), "{reply:?}");
    assert_eq!(mock.keys_used(), [bearer(1), bearer(2)]);
}

#[test]
fn other_client_errors_pass_through_without_retry() {
    let mock = Mock::start();
    mock.plan(&key(1), &["403"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 403);
    assert_eq!(
        reply.json()["error"]["message"],
        "Input was flagged by moderation"
    );
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn server_errors_and_drops_are_retried_without_resting_the_key() {
    let mock = Mock::start();
    mock.plan(&key(1), &["500", "drop", "cldrop"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    for _ in 0..3 {
        let reply = proxy.chat();
        assert_eq!(reply.status, 200, "{}", reply.text());
        assert_eq!(reply.json()["object"], "chat.completion");
    }
    // Round robin goes on as if nothing happened: key 1 never rested.
    assert_eq!(
        mock.keys_used(),
        [
            bearer(1),
            bearer(2),
            bearer(1),
            bearer(2),
            bearer(1),
            bearer(2)
        ]
    );
}

#[test]
fn a_failing_upstream_gets_502_within_max_attempts() {
    let mock = Mock::start();
    for n in 1..=3 {
        mock.plan(&key(n), &["503"]);
    }
    let proxy = Proxy::with(&mock)
        .keys(3)
        .arg("--max-attempts")
        .arg("2")
        .start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 502);
    let message = reply.error_message();
    assert!(message.contains("failed on 2 attempts"), "{message}");
    assert!(
        message.contains("HTTP 503: mock upstream failure"),
        "{message}"
    );
    assert_eq!(mock.requests().len(), 2);
}

#[test]
fn the_default_attempt_budget_stops_at_eight() {
    let mock = Mock::start();
    for n in 1..=10 {
        mock.plan(&key(n), &["500"]);
    }
    let proxy = Proxy::with(&mock).keys(10).start();
    assert_eq!(proxy.chat().status, 502);
    assert_eq!(mock.requests().len(), 8);
}

#[test]
fn an_unreachable_upstream_gets_502() {
    let mock = Mock::start();
    let dead = mock.base();
    drop(mock);
    let proxy = Proxy::bare().keys(2).arg("--upstream").arg(&dead).start();
    let reply = proxy.chat();
    assert_eq!(reply.status, 502);
    assert!(
        reply.error_message().contains("failed on 2 attempts"),
        "{}",
        reply.text()
    );
}

#[test]
fn no_keys_means_503_with_what_to_do() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).start();
    assert!(
        proxy.start_line.contains("with 0 keys"),
        "{}",
        proxy.start_line
    );
    let reply = proxy.chat();
    assert_eq!(reply.status, 503);
    let message = reply.error_message();
    assert!(
        message.contains("keys.json") && message.contains("roo-proxy keys add"),
        "{message}"
    );
    assert!(mock.requests().is_empty());
}
