//! A running proxy and its files: hot reload, remembered rests, keys from the environment.

use std::fs;

use serde_json::Value;

use crate::support::*;

/// Sends requests until the mock has seen one with key `n`.
fn until_key_used(proxy: &Proxy, mock: &Mock, n: usize) {
    eventually(&format!("key {n} in use"), || {
        assert_eq!(proxy.chat().status, 200);
        mock.keys_used().contains(&bearer(n))
    });
}

/// The state `keys list --json` reports for each key, in file order.
fn listed_states(proxy: &Proxy) -> Vec<String> {
    let ran = keys_cmd(proxy.dir.path(), &["list", "--json"], "");
    let v: Value =
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.all()));
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn added_keys_join_and_removed_keys_leave_without_a_restart() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    assert_eq!(proxy.chat().status, 200);
    assert_eq!(
        keys_cmd(proxy.dir.path(), &["add", &key(2)], "").code,
        Some(0)
    );
    until_key_used(&proxy, &mock, 2);
    proxy.wait_for_log("keys file changed: 1 added, 0 removed, 2 in the pool");

    assert_eq!(
        keys_cmd(proxy.dir.path(), &["remove", &key(1)[..16]], "").code,
        Some(0)
    );
    proxy.wait_for_log("keys file changed: 0 added, 1 removed, 1 in the pool");
    let before = mock.requests().len();
    for _ in 0..4 {
        assert_eq!(proxy.chat().status, 200);
    }
    assert_eq!(
        mock.keys_used()[before..],
        [bearer(2), bearer(2), bearer(2), bearer(2)]
    );
}

/// A keys file replaced by a FIFO is refused on reload, said once with its path and
/// kind, and the proxy serves on with the keys it had; the watch thread does not hang
/// on the FIFO, so a good file afterwards is picked up.
#[cfg(unix)]
#[test]
fn a_keys_file_replaced_by_a_fifo_is_refused_and_the_old_keys_serve() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(1).start();
    let file = proxy.keys_file();
    fs::remove_file(&file).unwrap();
    make_fifo(&file);
    proxy.wait_for_log(&format!(
        "keys file '{}': it is a FIFO (named pipe), not a regular file; the proxy keeps serving with the keys it had",
        file.display()
    ));
    assert_eq!(proxy.chat().status, 200);
    assert_eq!(mock.keys_used(), [bearer(1)]);
    fs::remove_file(&file).unwrap();
    fs::write(&file, format!("[\"{}\"]", key(2))).unwrap();
    proxy.wait_for_log("keys file changed: 1 added, 1 removed, 1 in the pool");
    let refusals = proxy.logs().matches("it is a FIFO").count();
    assert_eq!(refusals, 1, "{}", proxy.logs());
}

#[test]
fn keys_that_stay_keep_their_rest_across_a_reload() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:300"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    assert_eq!(proxy.chat().status, 200); // key 1 → 429, key 2 serves
    assert_eq!(
        keys_cmd(proxy.dir.path(), &["add", &key(3)], "").code,
        Some(0)
    );
    proxy.wait_for_log("keys file changed: 1 added");
    let before = mock.requests().len();
    for _ in 0..6 {
        assert_eq!(proxy.chat().status, 200);
    }
    assert!(
        !mock.keys_used()[before..].contains(&bearer(1)),
        "a resting key was used after the reload"
    );
}

#[test]
fn a_malformed_keys_file_during_a_reload_is_ignored() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock).keys(2).start();
    fs::write(proxy.keys_file(), format!("[\"{}\", oops", key(3))).unwrap();
    let logs = proxy.wait_for_log("the proxy keeps serving with the keys it had");
    assert!(logs.contains("is not valid JSON at line 1"), "{logs}");
    assert!(!logs.contains(&key(3)), "{logs}");
    for _ in 0..4 {
        assert_eq!(proxy.chat().status, 200);
    }
    assert_eq!(
        mock.keys_used(),
        [bearer(1), bearer(2), bearer(1), bearer(2)]
    );
}

#[test]
fn a_restart_remembers_a_key_that_is_still_resting() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:300"]);
    let proxy = Proxy::with(&mock).keys(2).start();
    assert_eq!(proxy.chat().status, 200);
    // The state file is saved within a second; `keys list` reads it.
    eventually("key 1 listed as cooling", || {
        listed_states(&proxy) == ["cooling", "ready"]
    });
    let listed = keys_cmd(proxy.dir.path(), &["list"], "");
    assert!(
        listed.stdout.contains("cooling 29")
            || listed.stdout.contains("cooling 30")
            || listed.stdout.contains("cooling 5m")
            || listed.stdout.contains("cooling 4m"),
        "{}",
        listed.stdout
    );

    let state = fs::read_to_string(proxy.dir.path().join("keys.json.state")).unwrap();
    for n in 1..=2 {
        assert!(
            !state.contains(&key(n)[9..]),
            "key material in the state file:\n{state}"
        );
    }

    let dir = proxy.kill();
    let restarted = Proxy::with(&mock).in_dir(dir).start();
    let before = mock.requests().len();
    for _ in 0..4 {
        assert_eq!(restarted.chat().status, 200);
    }
    assert_eq!(
        mock.keys_used()[before..],
        [bearer(2), bearer(2), bearer(2), bearer(2)]
    );
}

#[cfg(unix)]
#[test]
fn sigterm_saves_the_state_and_exits_cleanly() {
    let mock = Mock::start();
    mock.plan(&key(1), &["401"]);
    let mut proxy = Proxy::with(&mock).keys(2).start();
    assert_eq!(proxy.chat().status, 200);
    let status = proxy.terminate();
    assert_eq!(status.code(), Some(0), "{}", proxy.logs());
    assert_eq!(listed_states(&proxy), ["invalid", "ready"]);
}

#[test]
fn keys_can_come_from_the_environment_when_there_is_no_file() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .env("ROO_PROXY_KEYS", &format!("{}, {},", key(1), key(2)))
        .start();
    assert!(
        proxy.start_line.contains("with 2 keys from ROO_PROXY_KEYS"),
        "{}",
        proxy.start_line
    );
    for _ in 0..2 {
        assert_eq!(proxy.chat().status, 200);
    }
    assert_eq!(mock.keys_used(), [bearer(1), bearer(2)]);
    assert!(!proxy.logs().contains(&key(1)));

    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .env("OPENROUTER_API_KEY", &key(3))
        .start();
    assert!(
        proxy
            .start_line
            .contains("with 1 key from OPENROUTER_API_KEY"),
        "{}",
        proxy.start_line
    );
    assert_eq!(proxy.chat().status, 200);
    assert_eq!(mock.keys_used(), [bearer(3)]);
}

#[test]
fn a_keys_file_wins_over_the_environment() {
    let mock = Mock::start();
    let proxy = Proxy::with(&mock)
        .keys(1)
        .env("ROO_PROXY_KEYS", &key(9))
        .start();
    assert!(
        proxy.start_line.contains("keys.json"),
        "{}",
        proxy.start_line
    );
    assert_eq!(proxy.chat().status, 200);
    assert_eq!(mock.keys_used(), [bearer(1)]);
}

#[test]
fn a_damaged_state_file_cannot_rest_a_key_past_a_day() {
    let mock = Mock::start();
    mock.plan(&key(1), &["429:300"]);
    let proxy = Proxy::with(&mock).keys(1).start();
    assert_eq!(proxy.chat().status, 429);
    let file = proxy.dir.path().join("keys.json.state");
    eventually("the rest is saved", || {
        fs::read_to_string(&file).is_ok_and(|s| s.contains("until_ms"))
    });
    let dir = proxy.kill();
    // The rest's end pushed as far as the file can say.
    let mut state: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&file).unwrap()).unwrap();
    for saved in state["keys"].as_object_mut().unwrap().values_mut() {
        saved["until_ms"] = u64::MAX.into();
    }
    fs::write(&file, state.to_string()).unwrap();
    let restarted = Proxy::with(&mock).in_dir(dir).start();
    let reply = restarted.chat();
    assert_eq!(reply.status, 429, "{}", reply.text());
    let wait = reply.retry_after();
    assert!((1..=24 * 3600).contains(&wait), "Retry-After: {wait}");
}
