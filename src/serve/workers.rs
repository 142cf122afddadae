//! The threads that serve clients. Each worker accepts a connection itself and serves it
//! to the end (`connection::serve`: every request on it, streams included), then accepts
//! the next one. No queue and no second thread sit between the socket and the request.
//!
//! The pool is elastic, because a connection holds its worker for as long as it lasts:
//! when a worker takes a connection and none is left waiting, it starts another first,
//! so a new client never waits behind a long stream. Idle workers beyond [`KEEP_IDLE`]
//! retire. In steady state no thread is started per connection.
//!
//! Invariants: past `--max-connections` a connection gets 503 and is closed. Running
//! out of file descriptors never stops accepting: the connection waiting is accepted on
//! a spare descriptor and closed at once (the client sees a refused connection), and
//! accepting goes on when descriptors are free again. Only an error that does not pass
//! ends [`run`], which returns it so the process exits non-zero.

use std::fs::File;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use log::{error, warn};

use crate::serve::connection::{self, Conn, Settings};
use crate::serve::http1::Head;

/// Workers started at once.
const START: usize = 4;
/// Idle workers kept waiting; more retire.
const KEEP_IDLE: usize = 16;
/// Accept errors in a row, none passing, after which the listener is taken for broken.
const FATAL_AFTER: Duration = Duration::from_secs(30);

type Handler = dyn Fn(&Head, &mut Conn) + Send + Sync;

struct Shared {
    listener: TcpListener,
    settings: Settings,
    max_connections: usize,
    handler: Box<Handler>,
    idle: AtomicUsize,
    live: AtomicUsize,
    open: AtomicUsize,
    /// Held by the one worker accepting; inside, a descriptor held back to
    /// accept-and-close with when descriptors run out.
    gate: Mutex<Option<File>>,
    /// Accepting is failing for lack of descriptors (logged once per episode).
    starved: AtomicBool,
    failed: Sender<io::Error>,
}

/// Serves connections from `listener` with `handler` until accepting fails for good;
/// returns why.
pub fn run(
    listener: TcpListener,
    settings: Settings,
    max_connections: usize,
    handler: impl Fn(&Head, &mut Conn) + Send + Sync + 'static,
) -> io::Error {
    let (failed, failure) = channel();
    let shared = Arc::new(Shared {
        listener,
        settings,
        max_connections,
        handler: Box::new(handler),
        idle: AtomicUsize::new(0),
        live: AtomicUsize::new(0),
        open: AtomicUsize::new(0),
        gate: Mutex::new(spare_descriptor()),
        starved: AtomicBool::new(false),
        failed,
    });
    for _ in 0..START {
        spawn(&shared);
    }
    failure
        .recv()
        .unwrap_or_else(|_| io::Error::other("every worker stopped"))
}

fn spare_descriptor() -> Option<File> {
    File::open(if cfg!(windows) { "NUL" } else { "/dev/null" }).ok()
}

fn spawn(shared: &Arc<Shared>) {
    // One worker per connection, and a few waiting to accept.
    if shared.live.fetch_add(1, Ordering::SeqCst) >= shared.max_connections + KEEP_IDLE {
        shared.live.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let worker = Arc::clone(shared);
    let started = thread::Builder::new()
        .name("worker".into())
        .spawn(move || work(&worker));
    if let Err(e) = started {
        shared.live.fetch_sub(1, Ordering::SeqCst);
        error!("cannot start a worker thread: {e}");
    }
}

fn work(shared: &Arc<Shared>) {
    loop {
        shared.idle.fetch_add(1, Ordering::SeqCst);
        let next = accept(shared);
        let idle = shared.idle.fetch_sub(1, Ordering::SeqCst) - 1;
        let socket = match next {
            Ok(socket) => socket,
            Err(e) => {
                let _ = shared.failed.send(e);
                break;
            }
        };
        if idle == 0 {
            // Nobody is left to accept the next connection while this one is served.
            spawn(shared);
        }
        let open = shared.open.fetch_add(1, Ordering::SeqCst) + 1;
        if open > shared.max_connections {
            let shape = (shared.settings.shape_for)(None);
            connection::refuse(socket, shared.max_connections, shape);
        } else {
            connection::serve(socket, &shared.settings, &*shared.handler);
        }
        shared.open.fetch_sub(1, Ordering::SeqCst);
        if shared.idle.load(Ordering::SeqCst) >= KEEP_IDLE {
            break;
        }
    }
    shared.live.fetch_sub(1, Ordering::SeqCst);
}

/// The next connection. Errors that pass (descriptors or memory running out, a
/// connection reset before it was accepted) are waited out; an error that lasts
/// [`FATAL_AFTER`] with no success between is returned.
///
/// One worker accepts at a time, holding the gate (the others wait on it): so the
/// descriptor the spare frees goes to the accept that sheds a client, not to another
/// worker's accept, and the spare is taken back before anyone else accepts.
fn accept(shared: &Shared) -> io::Result<TcpStream> {
    let mut failing_since: Option<Instant> = None;
    let mut pause = Duration::from_millis(5);
    let mut spare = shared.gate.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if spare.is_none() {
            // Lost to another open while it was free; take it back when there is one.
            *spare = spare_descriptor();
        }
        let error = match shared.listener.accept() {
            Ok((socket, _)) => {
                recovered(shared);
                return Ok(socket);
            }
            Err(e) => e,
        };
        match error.kind() {
            io::ErrorKind::Interrupted
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset => continue,
            _ => {}
        }
        if out_of_descriptors(&error) {
            if !shared.starved.swap(true, Ordering::SeqCst) {
                warn!(
                    "out of file descriptors ({error}): new connections are closed until some are free; raise the limit (ulimit -n) or --max-connections lower"
                );
            }
            if let Some(file) = spare.take() {
                // With the spare closed, this accept has a descriptor to use. It waits
                // for the next client if none is waiting now.
                drop(file);
                let accepted = shared.listener.accept();
                *spare = spare_descriptor();
                match accepted {
                    Ok((socket, _)) if spare.is_some() => {
                        // A descriptor was free after all: serve the client.
                        recovered(shared);
                        return Ok(socket);
                    }
                    Ok(_) => {
                        // Closed at once: the client sees the connection end instead
                        // of hanging. There may be more waiting.
                        failing_since = None;
                        pause = Duration::from_millis(5);
                        continue;
                    }
                    Err(_) => {}
                }
            }
        }
        let since = *failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() > FATAL_AFTER {
            return Err(io::Error::new(
                error.kind(),
                format!(
                    "accepting connections failed for {} s: {error}",
                    FATAL_AFTER.as_secs()
                ),
            ));
        }
        thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(200));
    }
}

fn recovered(shared: &Shared) {
    if shared.starved.swap(false, Ordering::SeqCst) {
        warn!("accepting connections again");
    }
}

/// EMFILE, ENFILE, ENOBUFS, ENOMEM: the process or system is short of resources.
fn out_of_descriptors(error: &io::Error) -> bool {
    if error.kind() == io::ErrorKind::OutOfMemory {
        return true;
    }
    #[cfg(unix)]
    {
        use libc::{EMFILE, ENFILE, ENOBUFS, ENOMEM};
        matches!(
            error.raw_os_error(),
            Some(EMFILE | ENFILE | ENOBUFS | ENOMEM)
        )
    }
    #[cfg(windows)]
    {
        use windows_sys::Win32::Networking::WinSock::{WSAEMFILE, WSAENOBUFS};
        matches!(error.raw_os_error(), Some(WSAEMFILE | WSAENOBUFS))
    }
    #[cfg(not(any(unix, windows)))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::http1::Limits;
    use crate::serve::stream;
    use std::io::{Read, Write};

    #[cfg(unix)]
    #[test]
    fn running_out_is_told_apart_from_other_accept_errors() {
        let out = |code| out_of_descriptors(&io::Error::from_raw_os_error(code));
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(out(code), "errno {code}");
        }
        for code in [libc::ECONNABORTED, libc::EINTR, libc::EINVAL, libc::EAGAIN] {
            assert!(!out(code), "errno {code}");
        }
    }

    fn settings() -> Settings {
        Settings {
            limits: Limits {
                max_head: 16 * 1024,
                max_headers: 100,
            },
            client_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(10),
            shape_for: std::sync::Arc::new(|target| {
                crate::serve::error::shape_for(
                    target,
                    crate::rotation::provider::Provider::OpenRouter,
                )
            }),
        }
    }

    fn get(port: u16, path: &str) -> String {
        let mut socket = TcpStream::connect(("127.0.0.1", port)).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
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

    fn start(max_connections: usize) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        thread::spawn(move || {
            run(listener, settings(), max_connections, |head, conn| {
                assert!(head.target != "/panic", "a handler bug");
                let _ = stream::write_full(conn, 200, &[], b"ok");
            })
        });
        port
    }

    #[test]
    fn a_panicking_request_never_takes_the_others_down() {
        let port = start(64);
        // More panics than workers at the start: none of them may cost a worker.
        for _ in 0..START * 3 {
            assert!(get(port, "/panic").starts_with("HTTP/1.1 500"));
        }
        for _ in 0..10 {
            assert!(get(port, "/fine").ends_with("ok"));
        }
    }

    #[test]
    fn connections_past_the_limit_get_503_and_the_rest_are_served() {
        let port = start(2);
        let held: Vec<TcpStream> = (0..2)
            .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
            .collect();
        // The two held connections are served (idle), so the third is one too many.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let answer = get(port, "/x");
            if answer.starts_with("HTTP/1.1 503") {
                assert!(answer.contains("--max-connections 2"), "{answer}");
                assert!(answer.contains("Retry-After: 1"), "{answer}");
                break;
            }
            assert!(Instant::now() < deadline, "never refused: {answer}");
        }
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !get(port, "/x").ends_with("ok") {
            assert!(
                Instant::now() < deadline,
                "not served again after the flood"
            );
        }
    }
}
