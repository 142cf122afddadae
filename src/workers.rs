//! The threads that serve requests. Each worker takes the next request from tiny_http
//! (`Server::recv` is safe to call from many threads) and handles it to the end, streams
//! included; then it takes the next one.
//!
//! The pool is elastic, because a stream holds its worker for as long as it lasts: when a
//! worker takes a request and none is left waiting, it starts another first, so a new
//! request never waits behind a long stream. Idle workers beyond [`KEEP_IDLE`] retire.
//! In steady state no thread is started per request.
//!
//! Invariants: a panic while handling one request is caught and logged; its worker
//! survives (tiny_http answers that request 500 as it is dropped). If accepting fails
//! for good, [`run`] returns the error so the process can exit non-zero.

use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::thread;

use log::error;
use tiny_http::{Request, Server};

/// Workers started at once.
const START: usize = 4;
/// Idle workers kept waiting; more retire.
const KEEP_IDLE: usize = 16;
/// At most this many workers (and so requests in progress) at once.
const MAX_WORKERS: usize = 8192;

type Handler = dyn Fn(Request) + Send + Sync;

struct Shared {
    server: Server,
    handler: Box<Handler>,
    idle: AtomicUsize,
    live: AtomicUsize,
    failed: Sender<io::Error>,
}

/// Serves requests from `server` with `handler` until accepting fails; returns why.
pub fn run(server: Server, handler: impl Fn(Request) + Send + Sync + 'static) -> io::Error {
    let (failed, failure) = channel();
    let shared = Arc::new(Shared {
        server,
        handler: Box::new(handler),
        idle: AtomicUsize::new(0),
        live: AtomicUsize::new(0),
        failed,
    });
    for _ in 0..START {
        spawn(&shared);
    }
    failure
        .recv()
        .unwrap_or_else(|_| io::Error::other("every request worker stopped"))
}

fn spawn(shared: &Arc<Shared>) {
    if shared.live.fetch_add(1, Ordering::SeqCst) >= MAX_WORKERS {
        shared.live.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let worker = Arc::clone(shared);
    let started = thread::Builder::new()
        .name("worker".into())
        .spawn(move || work(&worker));
    if let Err(e) = started {
        shared.live.fetch_sub(1, Ordering::SeqCst);
        error!("cannot start a request worker: {e}");
    }
}

fn work(shared: &Arc<Shared>) {
    loop {
        shared.idle.fetch_add(1, Ordering::SeqCst);
        let next = shared.server.recv();
        let idle = shared.idle.fetch_sub(1, Ordering::SeqCst) - 1;
        let request = match next {
            Ok(request) => request,
            Err(e) => {
                let _ = shared.failed.send(e);
                break;
            }
        };
        if idle == 0 {
            // Nobody is left to take the next request while this one runs.
            spawn(shared);
        }
        if catch_unwind(AssertUnwindSafe(|| (shared.handler)(request))).is_err() {
            error!("a request handler panicked; the request got a 500 and the proxy goes on");
        }
        if shared.idle.load(Ordering::SeqCst) >= KEEP_IDLE {
            break;
        }
    }
    shared.live.fetch_sub(1, Ordering::SeqCst);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::TcpStream;

    fn get(port: u16, path: &str) -> String {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        write!(
            socket,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut answer = String::new();
        let _ = socket.read_to_string(&mut answer);
        answer
    }

    #[test]
    fn a_panicking_request_never_takes_the_others_down() {
        let server = Server::http("127.0.0.1:0").unwrap();
        let port = server.server_addr().to_ip().unwrap().port();
        thread::spawn(move || {
            run(server, |request: Request| {
                assert!(request.url() != "/panic", "a handler bug");
                let _ = request.respond(tiny_http::Response::from_string("ok"));
            })
        });
        // More panics than workers at the start: none of them may cost a worker.
        for _ in 0..START * 3 {
            assert!(get(port, "/panic").starts_with("HTTP/1.1 500"));
        }
        for _ in 0..10 {
            assert!(get(port, "/fine").ends_with("ok"));
        }
    }
}
