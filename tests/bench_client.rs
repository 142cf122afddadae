//! `bench-client`: the measurements `scripts/bench.sh` needs that a load generator does
//! not make. Not part of the product. Each prints one JSON line.
//!
//! - `bench-client sse ADDR PATH STREAMS ROUNDS`: STREAMS connections at once, each
//!   making ROUNDS streamed requests (the mock's `sse:5:20`: five events 20 ms apart);
//!   time to the first `data:` event and the gaps between events.
//! - `bench-client hold ADDR PATH STREAMS SECONDS`: STREAMS endless streams held open at
//!   once for SECONDS; how many failed.
//! - `bench-client startup PATH -- PROGRAM ARGS…`: starts PROGRAM (a proxy printing its
//!   address on its first line) and times until a request to PATH is first answered 200.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const BODY: &str =
    r#"{"model":"mock/model","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_else(|| usage());
    let num = |i: usize| arg(i).parse::<usize>().unwrap_or_else(|_| usage());
    match arg(0).as_str() {
        "sse" => sse(&arg(1), &arg(2), num(3), num(4)),
        "hold" => hold(&arg(1), &arg(2), num(3), num(4) as u64),
        "startup" => startup(&arg(1), &args[3..]),
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: bench-client sse|hold ADDR PATH STREAMS ROUNDS|SECONDS, or startup PATH -- PROGRAM ARGS…"
    );
    std::process::exit(2)
}

fn request(path: &str, reply: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nx-mock-reply: {reply}\r\nContent-Length: {}\r\n\r\n{BODY}",
        BODY.len()
    )
}

/// Reads one chunked response; returns when each `data:` event was first seen, or an
/// error for a broken or non-200 response.
fn read_stream(socket: &mut TcpStream) -> Result<Vec<Instant>, String> {
    let mut seen = Vec::new();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let mut counted = 0;
    loop {
        let n = socket.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("connection closed mid-stream".into());
        }
        bytes.extend_from_slice(&buf[..n]);
        let now = Instant::now();
        // Count events by their "data: {" starts; 5-byte overlap keeps split ones whole.
        let text = String::from_utf8_lossy(&bytes);
        let total = text.matches("data: {").count();
        seen.extend(std::iter::repeat_n(now, total - counted));
        counted = total;
        if !text.starts_with("HTTP/1.1 200") && text.contains("\r\n\r\n") {
            return Err(format!("status: {}", text.lines().next().unwrap_or("")));
        }
        if bytes.ends_with(b"\r\n0\r\n\r\n") {
            return Ok(seen);
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn sse(addr: &str, path: &str, streams: usize, rounds: usize) {
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            let (addr, path) = (addr.to_string(), path.to_string());
            thread::spawn(move || {
                let mut ttfb = Vec::new();
                let mut gaps = Vec::new();
                let mut errors = 0;
                let Ok(mut socket) = TcpStream::connect(&addr) else {
                    return (ttfb, gaps, rounds);
                };
                let _ = socket.set_nodelay(true);
                let _ = socket.set_read_timeout(Some(Duration::from_secs(30)));
                for _ in 0..rounds {
                    let sent = Instant::now();
                    if socket
                        .write_all(request(&path, "sse:5:20").as_bytes())
                        .is_err()
                    {
                        errors += 1;
                        break;
                    }
                    match read_stream(&mut socket) {
                        Ok(seen) if seen.len() == 5 => {
                            ttfb.push((seen[0] - sent).as_secs_f64() * 1000.0);
                            gaps.extend(
                                seen.windows(2)
                                    .map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0),
                            );
                        }
                        _ => {
                            errors += 1;
                            break;
                        }
                    }
                }
                (ttfb, gaps, errors)
            })
        })
        .collect();
    let (mut ttfb, mut gaps, mut errors) = (Vec::new(), Vec::new(), 0);
    for w in workers {
        let (t, g, e) = w.join().unwrap();
        ttfb.extend(t);
        gaps.extend(g);
        errors += e;
    }
    ttfb.sort_by(f64::total_cmp);
    gaps.sort_by(f64::total_cmp);
    let mean_gap = gaps.iter().sum::<f64>() / gaps.len().max(1) as f64;
    println!(
        "{{\"streams\":{streams},\"samples\":{},\"ttfb_p50_ms\":{:.3},\"ttfb_p99_ms\":{:.3},\"gap_mean_ms\":{mean_gap:.3},\"gap_p99_ms\":{:.3},\"errors\":{errors}}}",
        ttfb.len(),
        percentile(&ttfb, 50.0),
        percentile(&ttfb, 99.0),
        percentile(&gaps, 99.0)
    );
}

fn hold(addr: &str, path: &str, streams: usize, seconds: u64) {
    let until = Instant::now() + Duration::from_secs(seconds);
    let workers: Vec<_> = (0..streams)
        .map(|_| {
            let (addr, path) = (addr.to_string(), path.to_string());
            thread::Builder::new()
                .stack_size(128 * 1024)
                .spawn(move || -> Result<(), String> {
                    let mut socket = TcpStream::connect(&addr).map_err(|e| e.to_string())?;
                    socket
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(|e| e.to_string())?;
                    socket
                        .write_all(request(&path, "sse:1000000:200").as_bytes())
                        .map_err(|e| e.to_string())?;
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while Instant::now() < until {
                        let n = socket.read(&mut buf).map_err(|e| e.to_string())?;
                        if n == 0 {
                            return Err("closed".into());
                        }
                        if head.len() < 16 {
                            head.extend_from_slice(&buf[..n]);
                            if head.len() >= 12 && !head.starts_with(b"HTTP/1.1 200") {
                                return Err(String::from_utf8_lossy(&head[..12]).into_owned());
                            }
                        }
                    }
                    Ok(())
                })
                .unwrap()
        })
        .collect();
    let mut errors = 0;
    let mut first_error = String::new();
    for w in workers {
        if let Err(e) = w.join().unwrap() {
            errors += 1;
            if first_error.is_empty() {
                first_error = e;
            }
        }
    }
    println!(
        "{{\"streams\":{streams},\"seconds\":{seconds},\"errors\":{errors},\"first_error\":{first_error:?}}}"
    );
}

fn startup(path: &str, program: &[String]) {
    let started = Instant::now();
    let mut child = Command::new(&program[0])
        .args(&program[1..])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the program");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let at = line
        .find("127.0.0.1:")
        .expect("an address on the first line");
    let port: String = line[at + 10..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let addr = format!("127.0.0.1:{port}");
    let answered = loop {
        if let Ok(mut socket) = TcpStream::connect(&addr) {
            let plain = format!(
                "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}"
            );
            let mut reply = Vec::new();
            if socket.write_all(plain.as_bytes()).is_ok()
                && socket.read_to_end(&mut reply).is_ok()
                && reply.starts_with(b"HTTP/1.1 200")
            {
                break started.elapsed();
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never answered 200"
        );
    };
    let _ = child.kill();
    let _ = child.wait();
    println!("{{\"ready_ms\":{:.3}}}", answered.as_secs_f64() * 1000.0);
}
