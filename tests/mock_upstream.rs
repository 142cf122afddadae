//! `mock-upstream`: a small HTTP/1.1 server that answers like OpenRouter, for the
//! integration tests and `scripts/smoke.sh`. Not part of the product.
//!
//! Usage: `mock-upstream [--port N] [--quiet]` (default 0: a free port; `--quiet`
//! records no requests, for benchmarks). It prints one line,
//! `mock-upstream listening on http://127.0.0.1:PORT`, then serves until killed.
//!
//! What it answers is chosen per request: first from the plan of the request's key
//! (`Authorization: Bearer KEY`, `x-api-key: KEY` or `x-goog-api-key: KEY`), else from the `x-mock-reply` request header, else `ok`.
//!
//! Control endpoints (never forwarded by the proxy's tests as API calls):
//! - `POST /_mock/plan` `{"key":"KEY","replies":["429:30","ok"]}`: queue replies for a key.
//! - `GET /_mock/requests`: every API request seen, oldest first, as JSON
//!   `[{"method","target","headers":[[name,value]…],"body"}]`.
//! - `POST /_mock/reset`: forget plans and requests.
//!
//! Replies:
//! - `ok`: a chat completion as JSON (`Content-Length`), or as SSE when the request body
//!   has `"stream": true` or the path ends `:streamGenerateContent`; for `GET …/key`,
//!   OpenRouter's key information. `sse:N:MS`: N events, MS milliseconds apart, after a
//!   `: OPENROUTER PROCESSING` comment, then `data: [DONE]`. A stream is in the form of
//!   the API its path names ([`Form`]): a path ending `/messages` gets Anthropic's events
//!   (`message_start` … `message_stop`), `:streamGenerateContent` Gemini's.
//! - `429:S` OpenRouter's own rate limit, reset now+S seconds in the `X-RateLimit-Reset`
//!   header (epoch ms) and in `error.metadata.headers`; `429body:S` the body only;
//!   `429retry:S` only `Retry-After: S`; `429ms:MS` a reset MS milliseconds away (the
//!   header only); `429bare` no reset at all; `429provider` a provider's rate limit
//!   (`metadata.provider_name`); `429day` a daily limit named only in the message
//!   (`free-models-per-day`).
//! - `sse429:S`, `sse402`, `sse500`: a 200 stream whose first event is an error with that
//!   code (429 with its reset S seconds away in `error.metadata.headers`).
//! - `401`, `402`, `403`, `500`, `502`, `503`: OpenRouter error bodies; `401echo` a 401
//!   whose message repeats the key it was sent (to prove the proxy masks it); `500cut` a
//!   500 whose message has the key at character 280, where a 300-character cut falls;
//!   `400echo` a 400 that repeats the key in its body and in an `X-Echo` header.
//! - `bigdrop`: promise 6 MiB (`Content-Length`), send 100 KiB, close. `chunkdrop`: a
//!   chunked JSON body's first chunk, then close. `101`: `101 Switching Protocols`.
//! - `drop`: close the connection without answering. `dropmid`: two SSE events (in the
//!   path's form), then close without ending the chunked body or the answer. `cldrop`: promise 100 bytes, send 10, close.
//! - `gzip`: a body with `Content-Encoding: gzip`, bytes as given. `hop`: a JSON answer
//!   with hop-by-hop headers that must not cross a proxy. `chunked`: JSON without a
//!   length. `large:N`: N bytes with a `Content-Length`.
//! - Other providers' dialects ([`dialect_reply`]): `groq429:DUR` a Groq per-day 429
//!   whose message says "Please try again in DUR" (e.g. `2m59.56s`); `openai429:DUR` a
//!   429 with `x-ratelimit-remaining-requests: 0` and `x-ratelimit-reset-requests: DUR`;
//!   `anthropic429:S` Anthropic's `anthropic-ratelimit-requests-reset` (RFC 3339, S
//!   seconds away); `anthropicsse429` a 200 stream whose first event is
//!   Anthropic's `event: error` with a `rate_limit_error`; `cerebras429:SECS` `x-ratelimit-reset-requests-day` in float seconds;
//!   `gemini429:S` Gemini's per-model quota body (a JSON list) with `retryDelay: "Ss"`;
//!   `slow429:S:MS` OpenRouter's 429 (reset S seconds away) after MS milliseconds.
//! - Budgets on successes: `budget:N:S[:MS]` `ok` with `X-RateLimit-Remaining: N` and
//!   `X-RateLimit-Reset` S seconds away (epoch ms), after MS milliseconds; `oaibudget:N:DUR` `ok` with
//!   `x-ratelimit-remaining-requests: N`, `x-ratelimit-reset-requests: DUR`;
//!   `budgetgate:N:S:G` the same as `budget:N:S`, once `/_mock/release` has been called
//!   G times in all (an attempt kept under way until the test lets it end); `gate:G`
//!   the same without a budget.
//! - Faults: `hang:S` reads the request and says nothing for S seconds (default 30), then
//!   closes; `stall:S` sends a stream's head and first event, then nothing for S seconds;
//!   `garbage` answers with bytes that are not HTTP; `bighead` sends 100 KiB of headers.

use std::collections::{HashMap, VecDeque};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Fixed bytes for the `gzip` reply: a real gzip of `{"ok":true}`.
pub const GZIP_BODY: &[u8] = &[
    0x1f, 0x8b, 0x08, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x03, 0xab, 0x56, 0xca, 0xcf, 0x56, 0xb2,
    0x2a, 0x29, 0x2a, 0x4d, 0xad, 0x05, 0x00, 0x90, 0x5f, 0xd4, 0xa7, 0x0b, 0x00, 0x00, 0x00,
];

#[derive(Default)]
struct State {
    plans: HashMap<String, VecDeque<String>>,
    seen: Vec<Value>,
    /// `--quiet`: record nothing (for benchmarks, where the log would grow without end).
    quiet: bool,
    /// `POST /_mock/release` calls so far: `ssegate` sends its event N only after N.
    released: u64,
}

type Shared = Arc<Mutex<State>>;

struct Incoming {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Incoming {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The key, in any provider's form: `Authorization: Bearer`, `x-api-key`
    /// (Anthropic), `x-goog-api-key` (Gemini).
    fn key(&self) -> Option<String> {
        let bearer = self
            .header("authorization")
            .and_then(|auth| auth.strip_prefix("Bearer "));
        bearer
            .or_else(|| self.header("x-api-key"))
            .or_else(|| self.header("x-goog-api-key"))
            .map(str::to_string)
    }
}

fn main() {
    let mut port = 0u16;
    let mut quiet = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => {
                port = args
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("--port takes a number")
            }
            "--quiet" => quiet = true,
            other => panic!("unknown argument {other}; usage: mock-upstream [--port N] [--quiet]"),
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind 127.0.0.1");
    println!(
        "mock-upstream listening on http://{}",
        listener.local_addr().expect("local address")
    );
    io::stdout().flush().ok();
    let state: Shared = Arc::new(Mutex::new(State {
        quiet,
        ..State::default()
    }));
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        let state = Arc::clone(&state);
        thread::spawn(move || {
            let _ = serve_connection(stream, &state);
        });
    }
}

fn serve_connection(stream: TcpStream, state: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream;
    while let Some(request) = read_request(&mut reader)? {
        if !respond(&mut out, &request, state)? {
            return Ok(());
        }
    }
    Ok(())
}

fn read_request(reader: &mut BufReader<TcpStream>) -> io::Result<Option<Incoming>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::other("bad request line"));
    };
    let (method, target) = (method.to_string(), target.to_string());
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end_matches(['\r', '\n']);
        if l.is_empty() {
            break;
        }
        if let Some((name, value)) = l.split_once(':') {
            headers.push((name.trim().to_string(), value.trim().to_string()));
        }
    }
    let find = |name: &str| {
        headers
            .iter()
            .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = find("content-length").and_then(|v| v.parse::<usize>().ok()) {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(io::Error::other)?;
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..])?;
            line.clear();
            reader.read_line(&mut line)?;
            if size == 0 {
                break;
            }
        }
    }
    Ok(Some(Incoming {
        method,
        target,
        headers,
        body,
    }))
}

/// Answers one request; false means the connection must close.
fn respond(out: &mut TcpStream, rq: &Incoming, state: &Shared) -> io::Result<bool> {
    if let Some(control) = rq.target.strip_prefix("/_mock/") {
        return control_endpoint(out, control, rq, state).map(|()| true);
    }
    let planned = {
        let mut state = state.lock().unwrap();
        let quiet = state.quiet;
        if !quiet {
            state.seen.push(json!({
            "method": rq.method,
            "target": rq.target,
            "headers": rq.headers,
            "body": String::from_utf8_lossy(&rq.body),
            }));
        }
        rq.key()
            .and_then(|k| state.plans.get_mut(&k).and_then(VecDeque::pop_front))
    };
    let reply = planned
        .or_else(|| rq.header("x-mock-reply").map(str::to_string))
        .unwrap_or_else(|| "ok".into());
    let (kind, arg) = reply.split_once(':').unwrap_or((reply.as_str(), ""));
    let secs: u64 = arg.parse().unwrap_or(30);
    let wants_stream = serde_json::from_slice::<Value>(&rq.body)
        .ok()
        .and_then(|v| v.get("stream")?.as_bool())
        == Some(true);
    let path = rq.target.split('?').next().unwrap_or("");
    let form = Form::of(path);
    if let Some(done) = dialect_reply(out, kind, arg) {
        return done;
    }
    match kind {
        "ok" if path.ends_with("/key") => json_reply(out, 200, &[], &key_info(rq.key().as_deref())),
        "ok" if wants_stream || form == Form::Gemini => sse(out, 3, 0, false, form),
        "ok" => {
            // Rendered once: the benchmark measures the proxy, not this.
            static COMPLETION: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let body = COMPLETION.get_or_init(|| completion().to_string().into_bytes());
            raw_reply(out, 200, &[("Content-Type", "application/json")], body)
        }
        "sse" => {
            let mut nums = arg.split(':').map(|n| n.parse::<u64>().unwrap_or(0));
            let n = nums.next().unwrap_or(3);
            sse(out, n, nums.next().unwrap_or(0), false, form)
        }
        "dropmid" => sse(out, 2, 0, true, form),
        "ssegate" => sse_gated(out, arg.parse().unwrap_or(3), state),
        "gate" => {
            if !wait_for_release(arg.parse().unwrap_or(1), state) {
                return Ok(false);
            }
            json_reply(out, 200, &[], &completion())
        }
        "budgetgate" => {
            let mut nums = arg.split(':').map(|n| n.parse::<u64>().unwrap_or(0));
            let (left, reset, gate) = (nums.next(), nums.next(), nums.next());
            if !wait_for_release(gate.unwrap_or(1), state) {
                return Ok(false);
            }
            let reset = (now_ms() + reset.unwrap_or(30) * 1000).to_string();
            let left = left.unwrap_or(0).to_string();
            json_reply(
                out,
                200,
                &[
                    ("X-RateLimit-Remaining", &left),
                    ("X-RateLimit-Reset", &reset),
                ],
                &completion(),
            )
        }
        "sse429" | "sse402" | "sse500" => {
            let code: u16 = kind[3..].parse().unwrap_or(500);
            let reset = (now_ms() + secs * 1000).to_string();
            let event = json!({"id": "gen-mock", "object": "chat.completion.chunk",
                "error": {"code": code, "message": format!("mock in-stream error {code}"),
                    "metadata": {"headers": {"X-RateLimit-Reset": reset}}},
                "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]});
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            chunk(out, b": OPENROUTER PROCESSING\n\n")?;
            chunk(out, format!("data: {event}\n\n").as_bytes())?;
            out.write_all(b"0\r\n\r\n")?;
            out.flush()?;
            Ok(true)
        }
        "429day" => json_reply(
            out,
            429,
            &[],
            &error_body(
                429,
                "Rate limit exceeded: free-models-per-day. Add 10 credits to unlock 1000 free model requests per day",
            ),
        ),
        "429" | "429body" => {
            let reset = (now_ms() + secs * 1000).to_string();
            let body = json!({"error": {"code": 429, "message": "Rate limit exceeded: limit_rpm/mock/model: limited to 1 requests per minute",
                "metadata": {"headers": {"X-RateLimit-Limit": "1", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": reset}}}});
            let headers: &[(&str, &str)] = if kind == "429" {
                &[("X-RateLimit-Reset", &reset)]
            } else {
                &[]
            };
            json_reply(out, 429, headers, &body)
        }
        "429ms" => {
            let reset = (now_ms() + arg.parse::<u64>().unwrap_or(300)).to_string();
            let body = json!({"error": {"code": 429, "message": "Rate limit exceeded: limit_rpm/mock/model: limited to 1 requests per second"}});
            json_reply(out, 429, &[("X-RateLimit-Reset", &reset)], &body)
        }
        "429retry" => json_reply(
            out,
            429,
            &[("Retry-After", &secs.to_string())],
            &error_body(429, "Rate limit exceeded"),
        ),
        "429bare" => json_reply(out, 429, &[], &error_body(429, "Rate limit exceeded")),
        "429provider" => {
            let body = json!({"error": {"code": 429, "message": "Provider returned error",
                "metadata": {"provider_name": "MockProvider", "raw": "mock/model is temporarily rate-limited upstream"}}});
            json_reply(out, 429, &[], &body)
        }
        "401" => json_reply(out, 401, &[], &error_body(401, "User not found.")),
        "401echo" => {
            let message = format!("Invalid API key: {}", rq.key().unwrap_or_default());
            json_reply(out, 401, &[], &error_body(401, &message))
        }
        "500cut" => {
            let message = format!("{}{}", "y".repeat(280), rq.key().unwrap_or_default());
            json_reply(out, 500, &[], &error_body(500, &message))
        }
        "400echo" => {
            let key = rq.key().unwrap_or_default();
            let message = format!("bad request made with {key}");
            json_reply(out, 400, &[("X-Echo", &key)], &error_body(400, &message))
        }
        "402" => json_reply(
            out,
            402,
            &[],
            &error_body(
                402,
                "Insufficient credits. Add more using https://openrouter.ai/credits",
            ),
        ),
        "403" => json_reply(
            out,
            403,
            &[],
            &error_body(403, "Input was flagged by moderation"),
        ),
        "500" | "502" | "503" => {
            let code: u16 = kind.parse().unwrap_or(500);
            json_reply(out, code, &[], &error_body(code, "mock upstream failure"))
        }
        "drop" => Ok(false),
        "hang" => {
            thread::sleep(Duration::from_secs(secs));
            Ok(false)
        }
        "stall" => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")?;
            let event = json!({"choices": [{"index": 0, "delta": {"content": "tok0 "}}]});
            chunk(out, format!("data: {event}\n\n").as_bytes())?;
            thread::sleep(Duration::from_secs(secs));
            Ok(false)
        }
        "garbage" => {
            out.write_all(b"SSH-2.0-OpenSSH_9.6\r\n\x00\x01\x02 this is not HTTP\r\n\r\n")?;
            out.flush()?;
            Ok(false)
        }
        "bighead" => {
            let filler = "x".repeat(1000);
            let headers: Vec<(String, String)> = (0..100)
                .map(|i| (format!("X-Filler-{i}"), filler.clone()))
                .collect();
            let refs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            json_reply(out, 200, &refs, &completion())
        }
        "bigdrop" => {
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                6 << 20
            )?;
            out.write_all(&vec![b'x'; 100 << 10])?;
            out.flush()?;
            Ok(false)
        }
        "chunkdrop" => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\na\r\n{\"partial\"\r\n")?;
            out.flush()?;
            Ok(false)
        }
        "101" => {
            out.write_all(b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")?;
            out.flush()?;
            Ok(false)
        }
        "cldrop" => {
            out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"partial\"")?;
            out.flush()?;
            Ok(false)
        }
        "gzip" => raw_reply(
            out,
            200,
            &[
                ("Content-Type", "application/json"),
                ("Content-Encoding", "gzip"),
            ],
            GZIP_BODY,
        ),
        "hop" => json_reply(
            out,
            200,
            &[
                ("Connection", "X-Hop-Secret"),
                ("X-Hop-Secret", "1"),
                ("Keep-Alive", "timeout=5"),
                ("Proxy-Authenticate", "Basic"),
                ("Access-Control-Allow-Origin", "https://elsewhere.example"),
                ("X-End-To-End", "yes"),
            ],
            &completion(),
        ),
        "chunked" => {
            let body = completion().to_string();
            write!(
                out,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
                body.len()
            )?;
            out.flush()?;
            Ok(true)
        }
        "large" => {
            let n: usize = arg.parse().unwrap_or(1024);
            raw_reply(
                out,
                200,
                &[("Content-Type", "application/octet-stream")],
                &vec![b'x'; n],
            )
        }
        other => json_reply(
            out,
            500,
            &[],
            &error_body(500, &format!("mock-upstream: unknown reply '{other}'")),
        ),
    }
}

/// The replies in other providers' dialects, and successes that announce a budget; `None`
/// for any other kind.
fn dialect_reply(out: &mut TcpStream, kind: &str, arg: &str) -> Option<io::Result<bool>> {
    let secs = |text: &str| text.parse::<u64>().unwrap_or(30);
    let (first, second) = arg.split_once(':').unwrap_or((arg, ""));
    let done = match kind {
        "groq429" => {
            let message = format!(
                "Rate limit reached for model `llama-3.3-70b-versatile` in organization `org_mock` service tier `on_demand` on requests per day (RPD): Limit 1000, Used 1000, Requested 1. Please try again in {arg}. Need more tokens? Upgrade to Dev Tier today at https://console.groq.com/settings/billing"
            );
            let body = json!({"error": {"message": message, "type": "requests", "code": "rate_limit_exceeded"}});
            json_reply(out, 429, &[("x-ratelimit-limit-requests", "1000")], &body)
        }
        "openai429" => json_reply(
            out,
            429,
            &[
                ("x-ratelimit-limit-requests", "500"),
                ("x-ratelimit-remaining-requests", "0"),
                ("x-ratelimit-reset-requests", arg),
                ("x-ratelimit-remaining-tokens", "30000"),
                ("x-ratelimit-reset-tokens", "120ms"),
            ],
            &json!({"error": {"message": "Rate limit reached for requests", "type": "requests", "code": "rate_limit_exceeded"}}),
        ),
        "anthropic429" => {
            let reset = rfc3339(now_ms() / 1000 + secs(arg));
            json_reply(
                out,
                429,
                &[
                    ("anthropic-ratelimit-requests-limit", "50"),
                    ("anthropic-ratelimit-requests-remaining", "0"),
                    ("anthropic-ratelimit-requests-reset", &reset),
                ],
                &json!({"type": "error", "error": {"type": "rate_limit_error", "message": "Number of requests has exceeded your rate limit"}}),
            )
        }
        "anthropicsse429" => {
            let error = json!({"type": "error", "error": {"type": "rate_limit_error",
                "message": "Number of requests has exceeded your rate limit"}});
            let start = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
            let done = out
                .write_all(start)
                .and_then(|()| chunk(out, anthropic_event(error).as_bytes()))
                .and_then(|()| out.write_all(b"0\r\n\r\n"))
                .and_then(|()| out.flush());
            done.map(|()| true)
        }
        "cerebras429" => json_reply(
            out,
            429,
            &[
                ("x-ratelimit-limit-requests-day", "14400"),
                ("x-ratelimit-remaining-requests-day", "0"),
                ("x-ratelimit-reset-requests-day", arg),
            ],
            &json!({"message": "Requests per day limit exceeded - too many requests sent.", "type": "too_many_requests_error", "code": "request_quota_exceeded"}),
        ),
        "gemini429" => {
            let body = json!([{"error": {"code": 429, "status": "RESOURCE_EXHAUSTED",
                "message": "You exceeded your current quota, please check your plan and billing details.",
                "details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
                        "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                        "quotaDimensions": {"location": "global", "model": "gemini-2.5-pro"},
                        "quotaValue": "5"}]},
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": format!("{}s", secs(arg))}]}}]);
            json_reply(out, 429, &[], &body)
        }
        "slow429" => {
            thread::sleep(Duration::from_millis(second.parse().unwrap_or(0)));
            let reset = (now_ms() + secs(first) * 1000).to_string();
            json_reply(
                out,
                429,
                &[("X-RateLimit-Reset", &reset)],
                &error_body(429, "Rate limit exceeded: limit_rpm/mock/model"),
            )
        }
        "budget" => {
            let (second, delay) = second.split_once(':').unwrap_or((second, "0"));
            thread::sleep(Duration::from_millis(delay.parse().unwrap_or(0)));
            let reset = (now_ms() + secs(second) * 1000).to_string();
            json_reply(
                out,
                200,
                &[
                    ("X-RateLimit-Remaining", first),
                    ("X-RateLimit-Reset", &reset),
                ],
                &completion(),
            )
        }
        "oaibudget" => json_reply(
            out,
            200,
            &[
                ("x-ratelimit-remaining-requests", first),
                ("x-ratelimit-reset-requests", second),
            ],
            &completion(),
        ),
        _ => return None,
    };
    Some(done)
}

/// An instant as RFC 3339 (`2025-08-21T12:40:59Z`), from epoch seconds.
fn rfc3339(epoch_secs: u64) -> String {
    let days = (epoch_secs / 86_400) as i64;
    let secs = epoch_secs % 86_400;
    // Civil date from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

fn control_endpoint(
    out: &mut TcpStream,
    what: &str,
    rq: &Incoming,
    state: &Shared,
) -> io::Result<()> {
    let mut state = state.lock().unwrap();
    match what {
        "plan" => {
            let plan: Value = serde_json::from_slice(&rq.body).unwrap_or(Value::Null);
            let key = plan["key"].as_str().unwrap_or_default().to_string();
            let replies = plan["replies"].as_array().cloned().unwrap_or_default();
            let queue = state.plans.entry(key).or_default();
            queue.extend(
                replies
                    .iter()
                    .filter_map(|r| r.as_str().map(str::to_string)),
            );
            json_reply(out, 200, &[], &json!({"ok": true}))?;
        }
        "requests" => {
            let seen = Value::Array(state.seen.clone());
            json_reply(out, 200, &[], &seen)?;
        }
        "release" => {
            state.released += 1;
            json_reply(out, 200, &[], &json!({"released": state.released}))?;
        }
        "reset" => {
            *state = State::default();
            json_reply(out, 200, &[], &json!({"ok": true}))?;
        }
        _ => {
            json_reply(
                out,
                404,
                &[],
                &error_body(404, "unknown mock control endpoint"),
            )?;
        }
    }
    Ok(())
}

/// The API a streamed answer is for, by the request's path: its events are in that API's
/// form, so each provider's SDK can read them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// Chat completions chunks, after `: OPENROUTER PROCESSING`, ended by `data: [DONE]`.
    OpenAi,
    /// `…/messages`: Anthropic's `event: message_start` … `event: message_stop`.
    Anthropic,
    /// `…:streamGenerateContent`: Gemini's `data: {"candidates":…}` objects (a stream
    /// whatever the body says).
    Gemini,
}

impl Form {
    fn of(path: &str) -> Form {
        if path.ends_with("/messages") {
            Form::Anthropic
        } else if path.ends_with(":streamGenerateContent") {
            Form::Gemini
        } else {
            Form::OpenAi
        }
    }

    /// The events before the first token.
    fn start(self) -> Vec<String> {
        match self {
            Form::OpenAi => vec![": OPENROUTER PROCESSING\n\n".into()],
            Form::Anthropic => vec![
                anthropic_event(
                    json!({"type": "message_start", "message": {"id": "msg_mock",
                    "type": "message", "role": "assistant", "model": "mock-model", "content": [],
                    "stop_reason": null, "stop_sequence": null,
                    "usage": {"input_tokens": 3, "output_tokens": 1}}}),
                ),
                anthropic_event(json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}})),
            ],
            Form::Gemini => Vec::new(),
        }
    }

    /// The event carrying token `i`.
    fn token(self, i: u64) -> String {
        let text = format!("tok{i} ");
        match self {
            Form::OpenAi => {
                let event = json!({"id": "gen-mock", "object": "chat.completion.chunk", "model": "mock/model",
                    "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]});
                format!("data: {event}\n\n")
            }
            Form::Anthropic => anthropic_event(json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": text}})),
            Form::Gemini => {
                let event = json!({"candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                    "index": 0}], "modelVersion": "gemini-mock"});
                format!("data: {event}\r\n\r\n")
            }
        }
    }

    /// The events that end a whole answer.
    fn end(self) -> Vec<String> {
        match self {
            Form::OpenAi => vec!["data: [DONE]\n\n".into()],
            Form::Anthropic => vec![
                anthropic_event(json!({"type": "content_block_stop", "index": 0})),
                anthropic_event(json!({"type": "message_delta",
                    "delta": {"stop_reason": "end_turn", "stop_sequence": null},
                    "usage": {"output_tokens": 4}})),
                anthropic_event(json!({"type": "message_stop"})),
            ],
            Form::Gemini => {
                let event = json!({"candidates": [{"content": {"parts": [{"text": ""}], "role": "model"},
                    "finishReason": "STOP", "index": 0}],
                    "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 4, "totalTokenCount": 7},
                    "modelVersion": "gemini-mock"});
                vec![format!("data: {event}\r\n\r\n")]
            }
        }
    }
}

fn anthropic_event(data: Value) -> String {
    format!(
        "event: {}\ndata: {data}\n\n",
        data["type"].as_str().unwrap_or("")
    )
}

/// A stream of `events` tokens in `form`, `gap_ms` apart; with `die`, the connection
/// closes after them, the chunked body unfinished and the answer's end not sent.
fn sse(out: &mut TcpStream, events: u64, gap_ms: u64, die: bool, form: Form) -> io::Result<bool> {
    out.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")?;
    for event in form.start() {
        chunk(out, event.as_bytes())?;
    }
    for i in 0..events {
        if i > 0 && gap_ms > 0 {
            thread::sleep(Duration::from_millis(gap_ms));
        }
        chunk(out, form.token(i).as_bytes())?;
    }
    if die {
        return Ok(false);
    }
    for event in form.end() {
        chunk(out, event.as_bytes())?;
    }
    out.write_all(b"0\r\n\r\n")?;
    out.flush()?;
    Ok(true)
}

/// Waits until `/_mock/release` has been called `n` times in all; false after a minute.
fn wait_for_release(n: u64, state: &Shared) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while state.lock().unwrap().released < n {
        if std::time::Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
    true
}

/// A stream of `events` events in lockstep with the test: event 0 at once, event N once
/// `/_mock/release` has been called N times, so a test knows an event reached it before
/// the next one existed. Waits at most a minute for a release, then breaks off.
fn sse_gated(out: &mut TcpStream, events: u64, state: &Shared) -> io::Result<bool> {
    out.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    chunk(out, b": OPENROUTER PROCESSING\n\n")?;
    for i in 0..events {
        if !wait_for_release(i, state) {
            return Ok(false);
        }
        let event = json!({"id": "gen-mock", "object": "chat.completion.chunk", "model": "mock/model",
            "choices": [{"index": 0, "delta": {"content": format!("tok{i} ")}, "finish_reason": null}]});
        chunk(out, format!("data: {event}\n\n").as_bytes())?;
    }
    chunk(out, b"data: [DONE]\n\n")?;
    out.write_all(b"0\r\n\r\n")?;
    out.flush()?;
    Ok(true)
}

fn chunk(out: &mut TcpStream, data: &[u8]) -> io::Result<()> {
    write!(out, "{:x}\r\n", data.len())?;
    out.write_all(data)?;
    out.write_all(b"\r\n")?;
    out.flush()
}

fn json_reply(
    out: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &Value,
) -> io::Result<bool> {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    raw_reply(out, status, &all, body.to_string().as_bytes())
}

fn raw_reply(
    out: &mut TcpStream,
    status: u16,
    headers: &[(&str, &str)],
    body: &[u8],
) -> io::Result<bool> {
    let mut head = format!(
        "HTTP/1.1 {status} Mock\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut all = head.into_bytes();
    all.extend_from_slice(body);
    out.write_all(&all)?;
    out.flush()?;
    Ok(true)
}

fn completion() -> Value {
    json!({"id": "gen-mock", "object": "chat.completion", "model": "mock/model",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello from the mock"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}})
}

/// OpenRouter's `GET /key` answer (its label is a masked form of the key).
fn key_info(key: Option<&str>) -> Value {
    let key = key.unwrap_or("");
    let tail = &key[key.len().saturating_sub(3)..];
    json!({"data": {"label": format!("sk-or-v1-…{tail}"), "limit": 10.0, "limit_remaining": 8.5, "limit_reset": null,
        "usage": 1.5, "usage_daily": 0.25, "is_free_tier": false, "rate_limit": {"requests": -1, "interval": "10s"}}})
}

fn error_body(code: u16, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
