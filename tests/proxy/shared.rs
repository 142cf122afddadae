//! Several real `roo-proxy` processes sharing one key pool through a real `redis-server`
//! (`--redis`). Each test starts its own Redis on a free loopback port (so it can kill
//! and restart it), except the one that uses the Redis CI starts (`ROO_PROXY_TEST_REDIS`,
//! a Unix socket). The tests skip when `redis-server` is missing, and fail instead when
//! `ROO_PROXY_REQUIRE_REDIS` is set (CI sets it, and installs Redis).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{DEADLINE, Mock, Proxy, TempDir, key};

const SERVER: &str = "redis-server";
const CLI: &str = "redis-cli";

/// Whether Redis can run here; panics when CI requires it and it cannot.
fn redis_available() -> bool {
    let found = [SERVER, CLI].iter().all(|program| {
        Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !found {
        assert!(
            std::env::var_os("ROO_PROXY_REQUIRE_REDIS").is_none(),
            "ROO_PROXY_REQUIRE_REDIS is set but {SERVER} or {CLI} is missing (apt-get install redis-server)"
        );
        eprintln!("skipped: {SERVER} is not installed");
    }
    found
}

/// A `redis-server` of this test's own, on a loopback port, persisting nothing.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: TempDir,
    /// Its port speaks TLS only, with the certificate of `tests/tls` (for 127.0.0.1,
    /// signed by the test CA `tests/tls/ca.pem`).
    tls: bool,
}

/// The test certificates' folder.
fn tls_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls")
}

impl Redis {
    fn start() -> Redis {
        Redis::start_with(false)
    }

    /// A Redis reached over TLS only (`rediss://`).
    fn start_tls() -> Redis {
        Redis::start_with(true)
    }

    fn start_with(tls: bool) -> Redis {
        let dir = TempDir::new();
        let port = free_port();
        let mut redis = Redis {
            child: None,
            port,
            dir,
            tls,
        };
        redis.run();
        redis
    }

    /// Starts the server (again) on its port.
    fn run(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let mut command = Command::new(SERVER);
            if self.tls {
                let tls = tls_dir();
                command
                    .args(["--port", "0", "--tls-port", &self.port.to_string()])
                    .arg("--tls-cert-file")
                    .arg(tls.join("upstream.pem"))
                    .arg("--tls-key-file")
                    .arg(tls.join("upstream.key"))
                    .arg("--tls-ca-cert-file")
                    .arg(tls.join("ca.pem"))
                    .args(["--tls-auth-clients", "no"]);
            } else {
                command.args(["--port", &self.port.to_string()]);
            }
            let child = command
                .args(["--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(self.dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start redis-server");
            self.child = Some(child);
            if self.wait_ready() {
                return;
            }
            // The port may still be held by the previous server's closing sockets.
            self.kill();
            assert!(Instant::now() < deadline, "redis-server did not start");
            thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(child) = &mut self.child
                && child.try_wait().unwrap().is_some()
            {
                return false;
            }
            if self.cli(&["PING"]).trim() == "PONG" {
                return true;
            }
            thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` with `args`, its output.
    fn cli(&self, args: &[&str]) -> String {
        let port = self.port.to_string();
        let ca = tls_dir().join("ca.pem");
        let ca = ca.to_string_lossy();
        let mut target = vec!["-p", port.as_str()];
        if self.tls {
            target.extend(["--tls", "--cacert", &*ca]);
        }
        cli_at(&target, args)
    }

    /// Every key and value stored now, as text.
    fn dump(&self) -> String {
        dump_with(|args| self.cli(args))
    }

    /// Starts `MONITOR` (every command the server runs, scripts' included), into a file.
    fn monitor(&self) -> Monitor {
        let path = self.dir.path().join("monitor.txt");
        let child = Command::new(CLI)
            .args(["-p", &self.port.to_string(), "MONITOR"])
            .stdout(fs::File::create(&path).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        // MONITOR prints OK once it runs.
        while !fs::read_to_string(&path).unwrap_or_default().contains("OK") {
            assert!(Instant::now() < deadline, "MONITOR did not start");
            thread::sleep(Duration::from_millis(10));
        }
        Monitor { child, path }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Monitor {
    child: Child,
    path: std::path::PathBuf,
}

impl Monitor {
    fn text(&self) -> String {
        fs::read_to_string(&self.path).unwrap_or_default()
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cli_at(target: &[&str], args: &[&str]) -> String {
    let out = Command::new(CLI)
        .args(target)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .expect("run redis-cli");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn dump_with(cli: impl Fn(&[&str]) -> String) -> String {
    let mut text = String::new();
    for name in cli(&["--scan"]).lines().filter(|l| !l.is_empty()) {
        let value = match cli(&["TYPE", name]).trim() {
            "hash" => cli(&["HGETALL", name]),
            "string" => cli(&["GET", name]),
            other => format!("(type {other})"),
        };
        text.push_str(&format!("{name} => {value}\n"));
    }
    text
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A keys file of keys `1..=n`, in a folder of its own (instances share no files).
fn proxy_on(mock: &Mock, redis: &str, n: usize) -> Proxy {
    Proxy::with(mock).keys(n).arg("--redis").arg(redis).start()
}

/// `/_roo/status` of a proxy.
fn status(proxy: &Proxy) -> Value {
    proxy.get("/_roo/status").json()
}

fn key_state(proxy: &Proxy, n: usize) -> String {
    let masked = crate::support::masked(n);
    status(proxy)["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == masked.as_str())
        .map(|k| k["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Polls `check` until it holds; panics with `what` at the deadline.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

fn linked(proxy: &Proxy) -> bool {
    proxy.get("/_roo/health").json()["redis"] == "up"
}

/// How many requests the mock saw with key `n`.
fn uses_of(mock: &Mock, n: usize) -> usize {
    let wanted = format!("Bearer {}", key(n));
    mock.keys_used().iter().filter(|k| **k == wanted).count()
}

#[test]
fn a_429_seen_by_one_instance_rests_the_key_for_the_other() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let mock = Mock::start();
    let a = proxy_on(&mock, &redis.url(), 2);
    let b = proxy_on(&mock, &redis.url(), 2);
    eventually("both instances reach Redis", || linked(&a) && linked(&b));

    mock.plan(&key(1), &["429:120"]);
    // A's round-robin starts at key 1: its 429 rests it, and key 2 serves.
    assert_eq!(a.chat().status, 200);
    assert_eq!(uses_of(&mock, 1), 1);
    eventually("B sees key 1 resting", || key_state(&b, 1) == "cooling");
    for _ in 0..6 {
        assert_eq!(b.chat().status, 200);
    }
    assert_eq!(uses_of(&mock, 1), 1, "B never sent key 1 while it rests");
    assert_eq!(status(&b)["shared"]["link"], "up");
}

#[test]
fn every_pool_is_shared_and_a_storms_pause_stays_in_its_pool() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let default = Mock::start();
    let gemini = Mock::start();
    let file = |disabled: bool| {
        serde_json::json!([
            key(85),
            key(86),
            key(82),
            {"key": key(83), "provider": "gemini", "disabled": disabled},
            {"key": key(84), "provider": "gemini"},
        ])
        .to_string()
    };
    let start = || {
        Proxy::with(&default)
            .keys_file(&file(false))
            .arg("--pool-upstream")
            .arg(&format!("gemini=http://127.0.0.1:{}", gemini.port))
            .arg("--redis")
            .arg(&redis.url())
            .start()
    };
    let (a, b) = (start(), start());
    eventually("both instances reach Redis", || linked(&a) && linked(&b));
    // Two rests in A's default pool reach B.
    default.plan(&key(85), &["429:120"]);
    default.plan(&key(82), &["429:120"]);
    assert_eq!(a.chat().status, 200);
    assert_eq!(a.chat().status, 200);
    eventually("B sees keys 85 and 82 rest", || {
        key_state(&b, 85) == "cooling" && key_state(&b, 82) == "cooling"
    });
    // Every gemini key refuses A: they rest, and A's gemini pool pauses (a storm).
    gemini.plan(&key(83), &["429:120"]);
    gemini.plan(&key(84), &["429:120"]);
    let path = "/gemini/v1beta/models/m:generateContent";
    assert_eq!(a.post(path, "{}").status, 429);
    assert!(status(&a)["pools"][1]["paused_seconds"].as_u64().is_some());
    eventually("B sees the gemini keys rest", || {
        key_state(&b, 83) == "cooling" && key_state(&b, 84) == "cooling"
    });
    // A disables key 83: that fact follows the gemini pool's pause, if it were sent.
    fs::write(a.keys_file(), file(true)).unwrap();
    eventually("B sees key 83 disabled", || key_state(&b, 83) == "disabled");
    // B sent no resting gemini key; its default pool is not paused by the gemini
    // storm and serves with key 86.
    assert_eq!(b.post(path, "{}").status, 429);
    assert_eq!(
        gemini.requests().len(),
        2,
        "B never sent a resting gemini key"
    );
    let pools = &status(&b)["pools"];
    assert!(pools[0]["paused_seconds"].is_null(), "{pools}");
    assert_eq!(b.chat().status, 200);
    assert_eq!(uses_of(&default, 86), 3);
}

#[test]
fn a_key_found_invalid_by_one_is_skipped_by_all_three() {
    if !redis_available() {
        return;
    }
    // The Redis CI started, over its Unix socket (a local one otherwise).
    let local;
    let url = match std::env::var("ROO_PROXY_TEST_REDIS") {
        Ok(url) if !url.is_empty() => url,
        _ => {
            local = Redis::start();
            local.url()
        }
    };
    // This test is the only one on that Redis; what an earlier run left there (key 71's
    // invalid mark lives a week) must not decide this one.
    let target: Vec<&str> = match url.strip_prefix("unix://") {
        Some(path) => vec!["-s", path],
        None => vec!["-u", url.as_str()],
    };
    for name in cli_at(&target, &["--scan", "--pattern", "roo-proxy:*"]).lines() {
        cli_at(&target, &["DEL", name]);
    }
    let mock = Mock::start();
    // Keys of their own, so other tests on the same Redis cannot meet them.
    let keys: Vec<String> = (71..=73).map(key).collect();
    let file = serde_json::to_string(&keys).unwrap();
    let start = || {
        Proxy::with(&mock)
            .keys_file(&file)
            .arg("--redis")
            .arg(&url)
            .start()
    };
    let proxies = [start(), start(), start()];
    eventually("all three reach Redis", || proxies.iter().all(linked));
    mock.plan(&key(71), &["401"]);
    assert_eq!(proxies[0].chat().status, 200);
    assert_eq!(uses_of(&mock, 71), 1);
    for p in &proxies[1..] {
        eventually("the others mark key 71 invalid", || {
            key_state(p, 71) == "invalid"
        });
    }
    for p in &proxies {
        for _ in 0..4 {
            assert_eq!(p.chat().status, 200);
        }
    }
    assert_eq!(uses_of(&mock, 71), 1, "nobody tried the invalid key again");
    // Each sees the three of them.
    eventually("three instances listed", || {
        proxies
            .iter()
            .all(|p| status(p)["shared"]["instances"].as_array().map(Vec::len) == Some(3))
    });
    // `roo-proxy status` lists them too.
    let ran = proxies[1].status_command(&[], &[]);
    let text = ran.stdout;
    assert_eq!(ran.code, Some(0), "{text}");
    assert!(text.contains(": up · 3 instances"), "{text}");
    assert_eq!(text.matches("(this one)").count(), 1, "{text}");
    for p in &proxies {
        assert!(text.contains(&p.addr()), "{text}");
    }
}

#[test]
fn keys_disable_on_one_machine_applies_everywhere_and_enable_undoes_it() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let mock = Mock::start();
    let a = proxy_on(&mock, &redis.url(), 3);
    let b = proxy_on(&mock, &redis.url(), 3);
    eventually("both reach Redis", || linked(&a) && linked(&b));
    let keys = |args: &[&str], proxy: &Proxy| {
        let out = Command::new(crate::support::PROXY)
            .arg("keys")
            .args(args)
            .arg("--keys-file")
            .arg(proxy.keys_file())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    keys(&["disable", "sk-or-v1-02"], &a);
    eventually("B sees key 2 disabled", || key_state(&b, 2) == "disabled");
    for _ in 0..6 {
        assert_eq!(b.chat().status, 200);
    }
    assert_eq!(uses_of(&mock, 2), 0);
    // B's own keys file changes (another key added): key 2 stays disabled there.
    let mut file: Vec<String> =
        serde_json::from_str(&fs::read_to_string(b.keys_file()).unwrap()).unwrap();
    file.push(key(4));
    fs::write(b.keys_file(), serde_json::to_string(&file).unwrap()).unwrap();
    eventually("B reloads", || {
        status(&b)["keys"].as_array().map(Vec::len) == Some(4)
    });
    assert_eq!(key_state(&b, 2), "disabled");
    keys(&["enable", "sk-or-v1-02"], &a);
    eventually("B sees key 2 back", || key_state(&b, 2) == "ready");
}

#[test]
fn killing_redis_mid_load_loses_no_request_and_a_restart_merges_state() {
    if !redis_available() {
        return;
    }
    let mut redis = Redis::start();
    let mock = Mock::start();
    let a = proxy_on(&mock, &redis.url(), 3);
    let b = proxy_on(&mock, &redis.url(), 3);
    eventually("both reach Redis", || linked(&a) && linked(&b));

    // Load on both while Redis dies.
    let load = |p: &Proxy| {
        let addr = p.addr();
        thread::spawn(move || {
            let mut statuses = Vec::new();
            for _ in 0..40 {
                statuses.push(raw_chat(&addr));
            }
            statuses
        })
    };
    let (la, lb) = (load(&a), load(&b));
    redis.kill();
    let (sa, sb) = (la.join().unwrap(), lb.join().unwrap());
    assert!(sa.iter().chain(&sb).all(|s| *s == 200), "{sa:?} {sb:?}");
    eventually("both say Redis is down", || {
        [&a, &b]
            .iter()
            .all(|p| p.get("/_roo/health").json()["redis"] == "down")
    });
    // Still serving, with one warning each (read once the log has reached us: the
    // health answer can come before the test's reader of its output has the line).
    for p in [&a, &b] {
        assert_eq!(p.chat().status, 200);
        p.wait_for_log("is unreachable");
        let logs = p.logs();
        assert_eq!(logs.matches("is unreachable").count(), 1, "{logs}");
    }
    // While Redis is away, A learns that key 1 is limited; B cannot know yet.
    mock.plan(&key(1), &["429:300", "429:300"]);
    let mut tries = 0;
    while key_state(&a, 1) != "cooling" {
        assert_eq!(a.chat().status, 200);
        tries += 1;
        assert!(tries < 10, "A never used key 1");
    }
    assert_eq!(key_state(&b, 1), "ready");

    redis.run();
    eventually("both are back", || linked(&a) && linked(&b));
    eventually("B got A's rest in the merge", || {
        key_state(&b, 1) == "cooling"
    });
    for p in [&a, &b] {
        p.wait_for_log("is back");
    }
    // The later end wins: B's rest ends where A's does.
    let left = |p: &Proxy| -> u64 {
        let masked = crate::support::masked(1);
        status(p)["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["key"] == masked.as_str())
            .and_then(|k| k["seconds_left"].as_u64())
            .unwrap()
    };
    assert!(left(&b) + 2 >= left(&a), "{} vs {}", left(&b), left(&a));
}

#[test]
fn nothing_stored_or_published_in_redis_holds_key_material() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let monitor = redis.monitor();
    let mock = Mock::start();
    let a = proxy_on(&mock, &redis.url(), 4);
    let b = proxy_on(&mock, &redis.url(), 4);
    eventually("both reach Redis", || linked(&a) && linked(&b));
    // Facts of every kind a user causes here: a rest, an invalid key, a disabled key,
    // and the heartbeats.
    mock.plan(&key(1), &["429:120"]);
    mock.plan(&key(2), &["401"]);
    for _ in 0..4 {
        assert_eq!(a.chat().status, 200);
    }
    eventually("B sees both", || {
        key_state(&b, 1) == "cooling" && key_state(&b, 2) == "invalid"
    });
    let out = Command::new(crate::support::PROXY)
        .args(["keys", "disable", "sk-or-v1-03", "--keys-file"])
        .arg(a.keys_file())
        .output()
        .unwrap();
    assert!(out.status.success());
    eventually("B sees key 3 disabled", || key_state(&b, 3) == "disabled");

    let stored = redis.dump();
    let seen = monitor.text();
    assert!(stored.contains("roo-proxy:rest:"), "{stored}");
    assert!(stored.contains("roo-proxy:instance:"), "{stored}");
    assert!(
        seen.contains("PUBLISH") || seen.contains("publish"),
        "{seen}"
    );
    for n in 1..=4 {
        let raw = key(n);
        let chars: Vec<char> = raw.chars().collect();
        for window in chars.windows(16) {
            let piece: String = window.iter().collect();
            assert!(
                !stored.contains(&piece),
                "key {n} piece {piece} stored:\n{stored}"
            );
            assert!(
                !seen.contains(&piece),
                "key {n} piece {piece} sent:\n{seen}"
            );
        }
    }
}

#[test]
fn without_redis_at_start_an_instance_serves_and_says_so_once() {
    if !redis_available() {
        return;
    }
    let mock = Mock::start();
    let port = free_port();
    let a = proxy_on(&mock, &format!("redis://127.0.0.1:{port}"), 2);
    for _ in 0..5 {
        assert_eq!(a.chat().status, 200);
    }
    eventually("health says down", || {
        a.get("/_roo/health").json()["redis"] == "down"
    });
    let health = a.get("/_roo/health");
    assert_eq!(health.status, 200);
    for _ in 0..5 {
        assert_eq!(a.chat().status, 200);
    }
    let logs = a.logs();
    assert_eq!(logs.matches("is unreachable").count(), 1, "{logs}");
    let page = a.get("/_roo/");
    assert!(page.text().contains("redis"), "the page shows the link");
}

/// One chat completion on a fresh connection: the status code (0 if the connection
/// failed).
fn raw_chat(addr: &str) -> u16 {
    let body = r#"{"model":"mock/model","messages":[{"role":"user","content":"hi"}]}"#;
    let Ok(mut s) = TcpStream::connect(addr) else {
        return 0;
    };
    let _ = s.set_read_timeout(Some(DEADLINE));
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    if s.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut line = String::new();
    let mut reader = BufReader::new(&mut s);
    let _ = reader.read_line(&mut line);
    let mut rest = Vec::new();
    let _ = reader.read_to_end(&mut rest);
    line.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn over_tls_instances_share_with_the_ca_they_are_given_and_never_without_it() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start_tls();
    let mock = Mock::start();
    let ca = tls_dir().join("ca.pem");
    let with_ca = || {
        Proxy::with(&mock)
            .keys(2)
            .arg("--redis")
            .arg(&redis.url())
            .arg("--redis-ca")
            .arg(ca.to_str().unwrap())
            .start()
    };
    let (a, b) = (with_ca(), with_ca());
    // Without the CA the test certificate is trusted by nobody: no link, and it says so.
    let stranger = proxy_on(&mock, &redis.url(), 2);
    eventually("both reach Redis over TLS", || linked(&a) && linked(&b));
    eventually("the one without the CA is refused", || {
        stranger.get("/_roo/health").json()["redis"] == "down"
    });
    let why = stranger.get("/_roo/health").json()["redis_error"].to_string();
    assert!(why.to_lowercase().contains("certificate"), "{why}");

    mock.plan(&key(1), &["429:120"]);
    assert_eq!(a.chat().status, 200);
    assert_eq!(uses_of(&mock, 1), 1);
    eventually("B sees key 1 resting", || key_state(&b, 1) == "cooling");
    assert!(redis.cli(&["--scan"]).contains("roo-proxy:rest:"));
    // The stranger learned nothing through Redis.
    assert_eq!(key_state(&stranger, 1), "ready");
}

#[test]
fn a_quiet_link_stays_up() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let mock = Mock::start();
    let a = proxy_on(&mock, &redis.url(), 2);
    eventually("A reaches Redis", || linked(&a));
    // Nothing is published for longer than the subscriber's quiet time (5 s), after
    // which it checks the server with a PING: the link must stay up through it.
    let until = Instant::now() + Duration::from_secs(7);
    while Instant::now() < until {
        assert!(linked(&a), "{}", a.logs());
        thread::sleep(Duration::from_millis(100));
    }
    assert!(!a.logs().contains("unreachable"), "{}", a.logs());
}

/// The instances together never have more attempts under way with an account than the
/// budget its answers announced: an attempt under way on one instance counts on the
/// others, and when it ends they send again.
#[test]
fn an_attempt_under_way_on_one_instance_counts_against_the_budget_on_all() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let mock = Mock::start();
    let a = proxy_on(&mock, &redis.url(), 1);
    let b = proxy_on(&mock, &redis.url(), 1);
    eventually("both instances reach Redis", || linked(&a) && linked(&b));
    // Each learns that the account has one request left in a window of a minute.
    mock.plan(
        &key(1),
        &[
            "budget:1:60",
            "budget:1:60",
            "budgetgate:1:60:1",
            "budget:1:60",
        ],
    );
    assert_eq!(a.chat().status, 200);
    assert_eq!(b.chat().status, 200);
    // B's next attempt stays under way until the test lets it end.
    let addr = b.addr();
    let held = thread::spawn(move || raw_chat(&addr));
    eventually("B's attempt reaches the upstream", || {
        uses_of(&mock, 1) == 3
    });
    // The one request left is under way on B: A sends nothing, and says why.
    let refused = a.chat();
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(refused.text().contains("under way"), "{}", refused.text());
    assert_eq!(
        uses_of(&mock, 1),
        3,
        "A sent nothing while B's attempt was under way"
    );
    mock.release();
    assert_eq!(held.join().unwrap(), 200);
    // B's attempt ended (its answer left one request): A sends again.
    eventually("A is served again", || a.chat().status == 200);
    assert_eq!(uses_of(&mock, 1), 4);
}

/// The slow start is the instances' together: while nothing is known of an account, one
/// probe goes among them all, the others' requests wait for its answer (not alongside
/// it), and that answer lets them go.
#[test]
fn one_probe_goes_among_all_instances_and_its_answer_lets_the_others_go() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let mock = Mock::start();
    let a = proxy_on(&mock, &redis.url(), 1);
    let b = proxy_on(&mock, &redis.url(), 1);
    eventually("both instances reach Redis", || linked(&a) && linked(&b));
    mock.plan(&key(1), &["gate:1"]);
    let addr = a.addr();
    let probe = thread::spawn(move || raw_chat(&addr));
    eventually("A's probe reaches the upstream", || uses_of(&mock, 1) == 1);
    let addr = b.addr();
    let held = thread::spawn(move || raw_chat(&addr));
    eventually("B's request waits", || status(&b)["requests_waiting"] == 1);
    assert_eq!(uses_of(&mock, 1), 1, "B sent nothing alongside A's probe");
    mock.release();
    assert_eq!(probe.join().unwrap(), 200);
    assert_eq!(held.join().unwrap(), 200);
    assert_eq!(uses_of(&mock, 1), 2);
}

/// Whether key 1 serves on `proxy` (no rest).
fn ready(proxy: &Proxy) -> bool {
    key_state(proxy, 1) == "ready"
}

/// Two instances on `redis` with key 1, past the slow start's probe and a first window
/// that a 429 ended (nobody saw it begin): the next window's start is known to both.
fn two_in_a_counted_window(mock: &Mock, redis: &Redis) -> (Proxy, Proxy) {
    let a = proxy_on(mock, &redis.url(), 1);
    let b = proxy_on(mock, &redis.url(), 1);
    eventually("both instances reach Redis", || linked(&a) && linked(&b));
    assert_eq!(a.chat().status, 200);
    mock.plan(&key(1), &["429:1"]);
    assert_eq!(a.chat().status, 429);
    eventually("the rest ends on both", || ready(&a) && ready(&b));
    (a, b)
}

/// A window without budget headers is counted with every instance's attempts: once the
/// instances together sent what the window before served, one attempt at a time goes,
/// whichever instance it is on.
#[test]
fn once_the_instances_together_sent_a_windows_size_one_attempt_goes_at_a_time() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let mock = Mock::start();
    let (a, b) = two_in_a_counted_window(&mock, &redis);
    // The next window serves one answer on each instance, then a 429 on B ends it: its
    // size is two.
    assert_eq!(a.chat().status, 200);
    assert_eq!(b.chat().status, 200);
    mock.plan(&key(1), &["429:1"]);
    assert_eq!(b.chat().status, 429);
    eventually("the rest ends on both", || ready(&a) && ready(&b));
    // In this window A alone sends the two, then a third, held under way upstream.
    assert_eq!(a.chat().status, 200);
    assert_eq!(a.chat().status, 200);
    let sent = uses_of(&mock, 1);
    mock.plan(&key(1), &["gate:1"]);
    let addr = a.addr();
    let probe = thread::spawn(move || raw_chat(&addr));
    eventually("A's probe reaches the upstream", || {
        uses_of(&mock, 1) == sent + 1
    });
    // B's own part of the window (one) is unused, but the window is full: B sends
    // nothing while A's probe is under way.
    let refused = b.chat();
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert_eq!(
        uses_of(&mock, 1),
        sent + 1,
        "B sent nothing beside A's probe"
    );
    mock.release();
    assert_eq!(probe.join().unwrap(), 200);
}

/// A 429 marks its counted window full for every instance only until the rest it
/// began ends, however short: then the next window serves.
#[test]
fn a_window_full_after_a_short_rest_serves_again_when_the_rest_ends() {
    if !redis_available() {
        return;
    }
    let redis = Redis::start();
    let mock = Mock::start();
    let (a, b) = two_in_a_counted_window(&mock, &redis);
    // A counted window: one answer, then a 429 whose reset is 300 ms away.
    assert_eq!(a.chat().status, 200);
    mock.plan(&key(1), &["429ms:300"]);
    assert_eq!(a.chat().status, 429);
    // The next window begins where that rest ends: both instances are served.
    eventually("A is served again", || a.chat().status == 200);
    eventually("B is served again", || b.chat().status == 200);
}
