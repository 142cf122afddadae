//! Test harness: the real `roo-proxy` binary in front of the real `mock-upstream`
//! binary, both on 127.0.0.1 port 0, each test in its own temporary folder. Waiting is
//! always polling with a deadline, never a fixed sleep.

#![allow(dead_code)]

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub const PROXY: &str = env!("CARGO_BIN_EXE_roo-proxy");
pub const MOCK: &str = env!("CARGO_BIN_EXE_mock-upstream");

/// How long anything in a test may take before the test fails instead of hanging.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// Realistic OpenRouter-shaped keys; `key(n)` differ in their middle and last four.
pub fn key(n: usize) -> String {
    format!(
        "sk-or-v1-{n:02}{}{n:04}",
        "0123456789abcdef".repeat(3) + "0123456789ab"
    )
}

pub fn masked(n: usize) -> String {
    format!("sk-or-v1-{n:02}…{n:04}")
}

/// A folder under the system temp dir, removed when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new() -> TempDir {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!("roo-proxy-test-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Starts `program` and returns it with the first line it prints on stdout.
fn spawn_and_read_line(mut command: Command) -> (Child, String) {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the binary");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        let _ = tx.send(lines.next());
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(Some(Ok(line))) => (child, line),
        other => {
            let _ = child.kill();
            panic!("no start line from {command:?}: {other:?}")
        }
    }
}

fn port_of(line: &str) -> u16 {
    let at = line
        .find("127.0.0.1:")
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    let digits: String = line[at + 10..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap()
}

/// The OpenRouter look-alike.
pub struct Mock {
    child: Child,
    pub port: u16,
}

impl Mock {
    pub fn start() -> Mock {
        let (child, line) = spawn_and_read_line(Command::new(MOCK));
        Mock {
            port: port_of(&line),
            child,
        }
    }

    /// The API base the proxy should forward to.
    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}/api/v1", self.port)
    }

    /// Queues replies for a key (see `tests/mock_upstream.rs` for their names).
    pub fn plan(&self, key: &str, replies: &[&str]) {
        let r = client()
            .post(&format!("http://127.0.0.1:{}/_mock/plan", self.port))
            .send(json!({"key": key, "replies": replies}).to_string());
        assert_eq!(r.unwrap().status(), 200);
    }

    /// Lets every `ssegate` stream send its next event (see tests/mock_upstream.rs).
    pub fn release(&self) {
        let r = client()
            .post(&format!("http://127.0.0.1:{}/_mock/release", self.port))
            .send("");
        assert_eq!(r.unwrap().status(), 200);
    }

    /// Every API request the mock received, oldest first.
    pub fn requests(&self) -> Vec<Value> {
        let mut r = client()
            .get(&format!("http://127.0.0.1:{}/_mock/requests", self.port))
            .call()
            .unwrap();
        let v: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
        v.as_array().unwrap().clone()
    }

    /// The pool key each request carried, as `n` of `key(n)` (or the raw header).
    pub fn keys_used(&self) -> Vec<String> {
        self.requests()
            .iter()
            .map(|r| header_of(r, "authorization").unwrap_or_default())
            .collect()
    }
}

impl Drop for Mock {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A header value from a request the mock recorded.
pub fn header_of(request: &Value, name: &str) -> Option<String> {
    request["headers"].as_array()?.iter().find_map(|pair| {
        let pair = pair.as_array()?;
        pair[0]
            .as_str()?
            .eq_ignore_ascii_case(name)
            .then(|| pair[1].as_str().unwrap().to_string())
    })
}

pub fn bearer(n: usize) -> String {
    format!("Bearer {}", key(n))
}

/// A running proxy, its folder, and its logs.
pub struct Proxy {
    child: Child,
    pub port: u16,
    pub start_line: String,
    pub dir: TempDir,
    log: PathBuf,
}

pub struct ProxyBuilder {
    dir: TempDir,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// Run under `ulimit -n` (hard and soft) of this many open files.
    fd_limit: Option<u32>,
}

/// The folder a proxy will run in, to put files there before it starts.
pub fn builder_dir(builder: &ProxyBuilder) -> &Path {
    builder.dir.path()
}

impl ProxyBuilder {
    pub fn keys(self, n: usize) -> ProxyBuilder {
        let keys: Vec<String> = (1..=n).map(key).collect();
        self.keys_file(&serde_json::to_string(&keys).unwrap())
    }

    pub fn keys_file(self, content: &str) -> ProxyBuilder {
        fs::write(self.dir.path().join("keys.json"), content).unwrap();
        self
    }

    pub fn arg(mut self, arg: &str) -> ProxyBuilder {
        self.args.push(arg.to_string());
        self
    }

    pub fn env(mut self, name: &str, value: &str) -> ProxyBuilder {
        self.env.push((name.to_string(), value.to_string()));
        self
    }

    /// Runs the proxy with at most `n` open files, a limit it cannot raise (Unix).
    pub fn fd_limit(mut self, n: u32) -> ProxyBuilder {
        self.fd_limit = Some(n);
        self
    }

    fn command(&self) -> Command {
        let mut command = match self.fd_limit {
            Some(n) => {
                let mut sh = Command::new("sh");
                sh.arg("-c")
                    .arg(format!("ulimit -n {n} && exec \"$0\" \"$@\""))
                    .arg(PROXY);
                sh
            }
            None => Command::new(PROXY),
        };
        command
            .current_dir(self.dir.path())
            .args(&self.args)
            .env_remove("RUST_LOG");
        isolate_home(&mut command, self.dir.path());
        for (name, _) in std::env::vars() {
            if name.starts_with("ROO_PROXY_") {
                command.env_remove(name);
            }
        }
        for (name, value) in &self.env {
            command.env(name, value);
        }
        command
    }

    /// Starts in an existing folder (a restart), keeping its files.
    pub fn in_dir(mut self, dir: TempDir) -> ProxyBuilder {
        self.dir = dir;
        self
    }

    pub fn start(self) -> Proxy {
        let log = self.dir.path().join("proxy.log");
        let mut command = self.command();
        command.stderr(fs::File::create(&log).unwrap());
        let (child, start_line) = spawn_and_read_line(command);
        Proxy {
            port: port_of(&start_line),
            child,
            start_line,
            dir: self.dir,
            log,
        }
    }

    /// Runs the binary to completion (for start-up failures and `--help`).
    pub fn run(self) -> (ExitStatus, String, String) {
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(_status) = child.try_wait().unwrap() {
                let out = child.wait_with_output().unwrap();
                return (
                    out.status,
                    String::from_utf8_lossy(&out.stdout).into(),
                    String::from_utf8_lossy(&out.stderr).into(),
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("roo-proxy {:?} did not exit", self.args);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Proxy {
    /// `roo-proxy status --port PORT ARGS` asking this proxy, run in its folder with
    /// `env` set.
    pub fn status_command(&self, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let port = self.port.to_string();
        let mut all = vec!["status", "--port", &port];
        all.extend_from_slice(args);
        run_in(self.dir.path(), PROXY, &all, "", env)
    }

    /// A proxy in front of `mock`, on a free port, in a fresh folder.
    pub fn with(mock: &Mock) -> ProxyBuilder {
        Proxy::bare().arg("--upstream").arg(&mock.base())
    }

    /// A proxy with no upstream set (for start-up tests).
    pub fn bare() -> ProxyBuilder {
        Proxy::no_args().arg("--port").arg("0")
    }

    /// Exactly the command line the test gives (not even `--port 0`).
    pub fn no_args() -> ProxyBuilder {
        ProxyBuilder {
            dir: TempDir::new(),
            args: Vec::new(),
            env: Vec::new(),
            fd_limit: None,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn keys_file(&self) -> PathBuf {
        self.dir.path().join("keys.json")
    }

    /// Stops the proxy at once (SIGKILL): nothing gets a chance to be saved.
    pub fn kill(mut self) -> TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, TempDir::new())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits (with the deadline) for the proxy to exit by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the proxy did not exit");
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Asks the proxy to stop (SIGTERM) and returns its exit status.
    #[cfg(unix)]
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        assert!(
            Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap()
                .success()
        );
        let deadline = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the proxy did not stop on SIGTERM"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Everything the proxy logged so far.
    pub fn logs(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the logs contain `needle`.
    pub fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let logs = self.logs();
            if logs.contains(needle) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?}; logs:\n{logs}"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn post(&self, path: &str, body: &str) -> Reply {
        Reply::from(
            client()
                .post(&self.url(path))
                .header("Content-Type", "application/json")
                .send(body.to_string())
                .unwrap(),
        )
    }

    pub fn chat(&self) -> Reply {
        self.post(
            "/v1/chat/completions",
            r#"{"model":"mock/model","messages":[{"role":"user","content":"hi"}]}"#,
        )
    }

    pub fn get(&self, path: &str) -> Reply {
        Reply::from(client().get(&self.url(path)).call().unwrap())
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test HTTP client: status codes are answers, nothing is followed or decompressed.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(DEADLINE))
        .build()
        .into()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl From<ureq::http::Response<ureq::Body>> for Reply {
    fn from(mut r: ureq::http::Response<ureq::Body>) -> Reply {
        let headers = r
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
            .collect();
        let body = r
            .body_mut()
            .with_config()
            .limit(64 * 1024 * 1024)
            .read_to_vec()
            .unwrap();
        Reply {
            status: r.status().as_u16(),
            headers,
            body,
        }
    }
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The `Retry-After` seconds (the test fails without one).
    pub fn retry_after(&self) -> u64 {
        let value = self
            .header("retry-after")
            .unwrap_or_else(|| panic!("no Retry-After: {self:?}"));
        value.parse().unwrap()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    /// The proxy's own error message (asserting the OpenRouter error shape on the way).
    pub fn error_message(&self) -> String {
        let json = self.json();
        assert_eq!(json["error"]["code"], self.status, "{json}");
        json["error"]["message"].as_str().unwrap().to_string()
    }
}

/// Sends raw bytes and returns everything the server sends until it closes the
/// connection or goes quiet for `quiet`.
pub fn raw_exchange(addr: &str, request: &[u8], quiet: Duration) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(quiet)).unwrap();
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    out
}

/// A raw streamed chat request (`"stream": true`) asking the mock for `reply`.
pub fn streamed_request(reply: &str) -> String {
    format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nx-mock-reply: {reply}\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n{{\"stream\":true}}"
    )
}

/// The status code of a raw HTTP response.
pub fn raw_status(response: &[u8]) -> u16 {
    let text = String::from_utf8_lossy(response);
    text.split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"))
}

/// What a finished command printed.
#[derive(Debug)]
pub struct Ran {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// The folder that stands in for the user's home in a test run in `dir`.
pub fn home_in(dir: &Path) -> PathBuf {
    dir.join("home")
}

/// The per-user keys file of a test run in `dir` (see `home_in`), as the proxy finds it.
pub fn user_keys_file_in(dir: &Path) -> PathBuf {
    let home = home_in(dir);
    if cfg!(windows) {
        home.join("AppData").join("roo-proxy").join("keys.json")
    } else if cfg!(target_os = "macos") {
        home.join("Library/Application Support/roo-proxy/keys.json")
    } else {
        home.join(".config/roo-proxy/keys.json")
    }
}

/// Points the per-user folders (HOME, XDG_CONFIG_HOME, APPDATA) into the test's folder,
/// so no test reads or writes the keys of the user running it.
fn isolate_home(command: &mut Command, dir: &Path) {
    let home = home_in(dir);
    command
        .env("HOME", &home)
        .env_remove("XDG_CONFIG_HOME")
        .env("APPDATA", home.join("AppData"));
}

/// Runs `program args` in `dir` with `stdin`, no `ROO_PROXY_*` or key variables from the
/// test's own environment, and the given extra variables; fails the test past the deadline.
pub fn run_in(dir: &Path, program: &str, args: &[&str], stdin: &str, env: &[(&str, &str)]) -> Ran {
    let mut command = Command::new(program);
    command
        .current_dir(dir)
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("OPENROUTER_API_KEY");
    isolate_home(&mut command, dir);
    for (name, _) in std::env::vars() {
        if name.starts_with("ROO_PROXY_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_string();
    let writer = thread::spawn(move || {
        let _ = input.write_all(stdin.as_bytes());
    });
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{program} {args:?} did not finish");
        }
        thread::sleep(Duration::from_millis(5));
    }
    let _ = writer.join();
    let out = child.wait_with_output().unwrap();
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into(),
        stderr: String::from_utf8_lossy(&out.stderr).into(),
    }
}

/// `roo-proxy keys ARGS` in `dir`.
pub fn keys_cmd(dir: &Path, args: &[&str], stdin: &str) -> Ran {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    run_in(dir, PROXY, &all, stdin, &[])
}

/// A keys file in object form: `(key number, label, account)` per entry.
pub fn keys_json(keys: &[(usize, Option<&str>, Option<&str>)]) -> String {
    let entries: Vec<Value> = keys
        .iter()
        .map(|(n, label, account)| {
            let mut entry = serde_json::Map::new();
            entry.insert("key".into(), key(*n).into());
            if let Some(label) = label {
                entry.insert("label".into(), (*label).into());
            }
            if let Some(account) = account {
                entry.insert("account".into(), (*account).into());
            }
            Value::Object(entry)
        })
        .collect();
    json!({ "keys": entries }).to_string()
}

/// The keys in a keys file, in order.
pub fn keys_in(file: &Path) -> Vec<String> {
    let v: Value = serde_json::from_slice(&fs::read(file).unwrap()).unwrap();
    v["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["key"].as_str().unwrap().to_string())
        .collect()
}

/// Polls `check` until it holds; fails the test at the deadline.
pub fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "never happened: {what}");
        thread::sleep(Duration::from_millis(20));
    }
}

/// Makes a FIFO (named pipe) at `path`, with no writer: opening it to read would wait.
#[cfg(unix)]
pub fn make_fifo(path: &Path) {
    let made = Command::new("mkfifo").arg(path).status().unwrap();
    assert!(made.success(), "mkfifo {}", path.display());
}

/// `/_roo/status`'s entry for key `n` (masked).
pub fn key_status(proxy: &Proxy, n: usize) -> Value {
    let status = proxy.get("/_roo/status").json();
    status["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"] == masked(n))
        .cloned()
        .unwrap_or_else(|| panic!("key {n} not in {status}"))
}

/// Asserts that key `n` rests for the `announced` seconds (for the request's model only
/// when `per_model`), as `/_roo/status` shows it. `what` names the case in a failure.
pub fn assert_rests_as_announced(
    proxy: &Proxy,
    n: usize,
    per_model: bool,
    announced: u64,
    what: &str,
) {
    let k = key_status(proxy, n);
    let left = match per_model {
        true => k["model_rests"][0]["seconds_left"].as_u64(),
        false => k["seconds_left"].as_u64(),
    };
    let left = left.unwrap_or_else(|| panic!("{what}: not resting: {k}"));
    // A slow machine may take some seconds between the 429 and this look.
    assert!(
        left <= announced && left + 60 >= announced,
        "{what}: rests {left} s, announced {announced} s"
    );
}
