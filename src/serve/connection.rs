//! One client connection: read each request head and body within the limits and time
//! limits, hand the request to the handler, then keep the connection for the next
//! request or close it.
//!
//! Invariants: no read from a client waits without a deadline (`--client-timeout` once a
//! request has begun, `--idle-timeout` between requests), and no write waits longer than
//! [`WRITE_TIMEOUT`]; a request body is held only up to the size the handler allows; a
//! connection whose request body was not read whole is closed, never reused, so leftover
//! body bytes are never taken for a request. Every refusal is in the error shape of the
//! provider the request is for (`error::shape_for`), even when its head is refused.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use crate::serve::error::{Reply, Shape};
use crate::serve::http1::{self, BodyLength, Chunked, Head, Limits};
use crate::serve::{spare, stream};

/// Longest time a write to a client may block (a client that stops reading).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(60);
/// After an answer sent without reading the request body, how long the rest of the body
/// is read and dropped, so the client gets the answer instead of a connection reset.
const LINGER: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 4 * 1024 * 1024;
/// Read size from a client socket: a thread's spare buffer.
const READ_SIZE: usize = spare::SIZE;

/// The error shape of the proxy's own answer to a request for a target (`None`: the
/// request line is unknown): the provider's of the pool its path names.
pub type ShapeFor = dyn Fn(Option<&str>) -> Shape + Send + Sync;

/// How client connections are treated.
#[derive(Clone)]
pub struct Settings {
    pub limits: Limits,
    /// Time a client has to send a whole request (head and body) once it began.
    pub client_timeout: Duration,
    /// Time a connection may sit between requests.
    pub idle_timeout: Duration,
    /// The shape of the proxy's own answer to a request for a target: the server's
    /// (pools by name, then presets, then `--provider`'s), as
    /// [`crate::serve::error::shape_for`] says; `None` (nothing read yet) is `--provider`'s.
    pub shape_for: std::sync::Arc<ShapeFor>,
}

/// Why reading a request body failed.
#[derive(Debug)]
pub enum BodyError {
    /// Over the limit the handler gave; nothing more was read.
    TooLarge,
    /// The client sent the body too slowly.
    TimedOut,
    /// The client closed the connection, or the chunked framing is broken.
    Broken(String),
    /// The memory for request bodies is taken (the claim was refused).
    NoRoom,
}

/// What is still unread of the current request's body.
#[derive(Debug)]
enum Unread {
    Nothing,
    Length { left: u64, expect: bool },
    Chunked { expect: bool },
}

/// A client connection, with bytes read ahead (a pipelined next request) kept.
pub struct Conn {
    socket: TcpStream,
    /// Room to read into (initialized, so a read needs no zeroing first).
    buf: Vec<u8>,
    /// `buf[at..end]` holds bytes read but not used yet.
    at: usize,
    end: usize,
    /// When the request being read must be in.
    deadline: Instant,
    unread: Unread,
    /// Something of a response went out.
    wrote: bool,
    /// A write failed, or the handler asked to close after this response.
    close: bool,
    /// The socket's read time limit as last set.
    read_limit: Option<Duration>,
}

/// Serves one connection until it closes, calling `handler` for each request.
pub fn serve(socket: TcpStream, settings: &Settings, handler: &dyn Fn(&Head, &mut Conn)) {
    // Inherited from the listener on Linux; set it again for other systems.
    let _ = socket.set_nodelay(true);
    let _ = socket.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut conn = Conn::new(socket);
    // A client that connects must send its first request within the client timeout.
    let mut wait = settings.client_timeout;
    loop {
        let head = match conn.read_head(settings, wait) {
            Ok(Some(head)) => head,
            Ok(None) => return,
            Err(reply) => {
                // The head is refused, but its request line may name a preset.
                let target = http1::request_target(&conn.buf[conn.at..conn.end]);
                let shape = (settings.shape_for)(target);
                let _ = stream::write_reply(&mut conn, &reply, true, shape);
                conn.linger();
                return;
            }
        };
        wait = settings.idle_timeout;
        conn.wrote = false;
        let handled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler(&head, &mut conn)));
        if handled.is_err() {
            log::error!("a request handler panicked; the proxy goes on");
            if !conn.wrote {
                let reply = Reply::new(500, "internal error while handling this request");
                let shape = (settings.shape_for)(Some(&head.target));
                let _ = stream::write_reply(&mut conn, &reply, true, shape);
            }
            return;
        }
        if conn.close || !head.keep_alive || !matches!(conn.unread, Unread::Nothing) {
            conn.linger();
            return;
        }
    }
}

impl Conn {
    fn new(socket: TcpStream) -> Conn {
        Conn {
            socket,
            buf: Vec::new(),
            at: 0,
            end: 0,
            deadline: Instant::now(),
            unread: Unread::Nothing,
            wrote: false,
            close: false,
            read_limit: None,
        }
    }

    /// After this response, close the connection.
    pub fn close_after(&mut self) {
        self.close = true;
    }

    /// Whether the client hung up, seen without reading: one non-blocking peek (the
    /// same on Windows). Nothing to read yet, or bytes of a next request, mean it is
    /// still there; the end of the stream or a socket error mean it left.
    pub fn client_gone(&self) -> bool {
        if self.socket.set_nonblocking(true).is_err() {
            return true;
        }
        let peeked = self.socket.peek(&mut [0u8]);
        if self.socket.set_nonblocking(false).is_err() {
            return true;
        }
        match peeked {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ),
        }
    }

    /// Reads the next request head. `Ok(None)`: the client closed the connection, or sent
    /// nothing within `wait`. `Err`: the answer to send before closing.
    fn read_head(&mut self, settings: &Settings, wait: Duration) -> Result<Option<Head>, Reply> {
        // Bytes of a pipelined request move to the front; the rest of the buffer is free.
        self.buf.copy_within(self.at..self.end, 0);
        (self.at, self.end) = (0, self.end - self.at);
        if self.end == 0 {
            self.deadline = Instant::now() + wait;
            match self.fill() {
                Ok(0) | Err(_) => return Ok(None),
                Ok(_) => {}
            }
        }
        // The clock for the whole request starts with its first byte.
        self.deadline = Instant::now() + settings.client_timeout;
        loop {
            if let Some((head, used)) =
                http1::parse_head(&self.buf[self.at..self.end], settings.limits)?
            {
                self.at += used;
                self.release_if_empty();
                self.unread = match head.body {
                    BodyLength::Empty | BodyLength::Length(0) => Unread::Nothing,
                    BodyLength::Length(left) => Unread::Length {
                        left,
                        expect: head.expect_continue,
                    },
                    BodyLength::Chunked => Unread::Chunked {
                        expect: head.expect_continue,
                    },
                };
                return Ok(Some(head));
            }
            match self.fill() {
                Ok(0) => return Ok(None),
                Ok(_) => {}
                Err(e) if timed_out(&e) => {
                    return Err(Reply::new(
                        408,
                        format!(
                            "the request head did not arrive within {} s (--client-timeout)",
                            settings.client_timeout.as_secs()
                        ),
                    ));
                }
                Err(_) => return Ok(None),
            }
        }
    }

    /// Reads the whole request body, at most `limit` bytes; a declared length over the
    /// limit is refused before anything is read. The body's memory is claimed as it
    /// grows: `claim(bytes)` is asked before the body holds that many, and a refusal
    /// ends the read with [`BodyError::NoRoom`].
    pub fn read_body(
        &mut self,
        limit: u64,
        claim: &mut dyn FnMut(u64) -> bool,
    ) -> Result<Vec<u8>, BodyError> {
        let expect = match self.unread {
            Unread::Nothing => return Ok(Vec::new()),
            Unread::Length { left, .. } if left > limit => return Err(BodyError::TooLarge),
            Unread::Length { expect, .. } | Unread::Chunked { expect } => expect,
        };
        if expect {
            // The client waits for this before it sends the body.
            self.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
                .map_err(|e| BodyError::Broken(e.to_string()))?;
            self.wrote = false;
        }
        let mut body = Vec::new();
        match self.unread {
            Unread::Length { left, .. } => {
                let declared = left as usize;
                let mut left = left as usize;
                while left > 0 {
                    if self.at == self.end {
                        self.refill()?;
                    }
                    let n = left.min(self.end - self.at);
                    make_room(&mut body, n, declared, claim)?;
                    body.extend_from_slice(&self.buf[self.at..self.at + n]);
                    self.at += n;
                    left -= n;
                }
            }
            Unread::Chunked { .. } => {
                let mut decoder = Chunked::default();
                while !decoder.is_done() {
                    if self.at == self.end {
                        self.refill()?;
                    }
                    let ceiling = usize::try_from(limit)
                        .unwrap_or(usize::MAX)
                        .saturating_add(1);
                    make_room(&mut body, self.end - self.at, ceiling, claim)?;
                    let used = decoder
                        .feed(&self.buf[self.at..self.end], &mut body)
                        .map_err(BodyError::Broken)?;
                    self.at += used;
                    if body.len() as u64 > limit {
                        return Err(BodyError::TooLarge);
                    }
                }
            }
            Unread::Nothing => {}
        }
        self.unread = Unread::Nothing;
        self.release_if_empty();
        Ok(body)
    }

    /// Gives the read buffer back (as the thread's spare) once nothing is left in it: a
    /// connection that streams for minutes, or waits for its next request, holds no
    /// buffer meanwhile.
    fn release_if_empty(&mut self) {
        if self.at == self.end {
            spare::give(std::mem::take(&mut self.buf));
            (self.at, self.end) = (0, 0);
        }
    }

    /// Reads more of a body into an emptied buffer.
    fn refill(&mut self) -> Result<(), BodyError> {
        (self.at, self.end) = (0, 0);
        match self.fill() {
            Ok(0) => Err(BodyError::Broken(
                "the client closed the connection before the body was complete".into(),
            )),
            Ok(_) => Ok(()),
            Err(e) if timed_out(&e) => Err(BodyError::TimedOut),
            Err(e) => Err(BodyError::Broken(e.to_string())),
        }
    }

    /// One read from the socket, appended to `buf`, before the deadline.
    fn fill(&mut self) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        let socket = &self.socket;
        set_limit(Some(left), &mut self.read_limit, |l| {
            socket.set_read_timeout(l)
        })?;
        if self.buf.is_empty() {
            self.buf = spare::take();
        }
        if self.buf.len() - self.end < READ_SIZE {
            self.buf.resize(self.end + READ_SIZE, 0);
        }
        let read = loop {
            match self.socket.read(&mut self.buf[self.end..]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        self.end += read.as_ref().map_or(0, |n| *n);
        read
    }

    /// Ends the connection so that the client reads the whole answer: stop sending, then
    /// read and drop what the client still sends (a body we did not want) for a moment,
    /// since closing with unread bytes would reset the connection under the answer.
    fn linger(&mut self) {
        let _ = self.socket.shutdown(Shutdown::Write);
        let until = Instant::now() + LINGER;
        let mut scratch = [0u8; READ_SIZE];
        let mut dropped = 0;
        while dropped < LINGER_BYTES {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || self.socket.set_read_timeout(Some(left)).is_err() {
                return;
            }
            match self.socket.read(&mut scratch) {
                Ok(0) | Err(_) => return,
                Ok(n) => dropped += n,
            }
        }
    }
}

/// Makes room in `body` for `more` bytes, growing it (doubling, up to `ceiling` unless
/// more is needed) only after `claim` allowed the new size.
fn make_room(
    body: &mut Vec<u8>,
    more: usize,
    ceiling: usize,
    claim: &mut dyn FnMut(u64) -> bool,
) -> Result<(), BodyError> {
    let needed = body.len().saturating_add(more);
    if needed <= body.capacity() {
        return Ok(());
    }
    let size = needed
        .max(body.capacity().saturating_mul(2))
        .min(ceiling.max(needed));
    if !claim(size as u64) {
        return Err(BodyError::NoRoom);
    }
    body.reserve_exact(size - body.len());
    Ok(())
}

/// A socket time limit for a wait of `left`, rounded up (to the second from 10 s, to a
/// tenth of a second from 1 s) so that waits of about the same length share one value
/// and the socket option is not set again for every request. It outlasts `left` by
/// less than a tenth.
fn coarse(left: Duration) -> Duration {
    match left.as_secs() {
        10.. => Duration::from_secs(left.as_secs() + u64::from(left.subsec_nanos() > 0)),
        1.. => Duration::from_millis(left.as_millis().div_ceil(100) as u64 * 100),
        0 => left,
    }
}

/// Gives a socket a time limit for a wait of `left` (`None`: no limit), rounded by
/// [`coarse`], through `set`, unless it already has that limit (`current`).
pub fn set_limit(
    left: Option<Duration>,
    current: &mut Option<Duration>,
    set: impl FnOnce(Option<Duration>) -> io::Result<()>,
) -> io::Result<()> {
    let limit = left.map(coarse);
    if limit != *current {
        set(limit)?;
        *current = limit;
    }
    Ok(())
}

/// A socket read or write ran out of its time limit.
pub fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

impl Write for Conn {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.wrote = true;
        let written = self.socket.write(bytes);
        if written.is_err() {
            self.close = true;
        }
        written
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Turns away a connection over `--max-connections`: a 503 in the error shape of the
/// default provider (the request is not read), then close.
pub fn refuse(socket: TcpStream, limit: usize, shape: Shape) {
    let _ = socket.set_write_timeout(Some(Duration::from_secs(1)));
    let mut conn = Conn::new(socket);
    let reply = Reply::busy(format!(
        "too many connections at once (--max-connections {limit}); try again in a moment"
    ));
    let _ = stream::write_reply(&mut conn, &reply, true, shape);
    conn.linger();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_grow_only_by_what_the_claim_allows() {
        let mut claimed = Vec::new();
        let mut body = Vec::new();
        let mut allow = |bytes: u64| {
            claimed.push(bytes);
            bytes <= 100
        };
        make_room(&mut body, 10, 1000, &mut allow).unwrap();
        body.extend_from_slice(&[0; 10]);
        make_room(&mut body, 10, 1000, &mut allow).unwrap();
        body.extend_from_slice(&[0; 10]);
        make_room(&mut body, 50, 1000, &mut allow).unwrap();
        assert!(body.capacity() >= 70);
        let refused = make_room(&mut body, 200, 1000, &mut allow);
        assert!(matches!(refused, Err(BodyError::NoRoom)));
        assert_eq!(claimed, [10, 20, 70, 220]);
        // Never past the ceiling when less is needed.
        let mut small = Vec::new();
        make_room(&mut small, 8, 12, &mut |_| true).unwrap();
        small.extend_from_slice(&[0; 8]);
        make_room(&mut small, 4, 12, &mut |n| n == 12).unwrap();
    }

    #[test]
    fn coarse_limits_round_up_by_less_than_a_tenth() {
        let ms = Duration::from_millis;
        assert_eq!(coarse(ms(59_990)), ms(60_000));
        assert_eq!(coarse(ms(60_000)), ms(60_000));
        assert_eq!(coarse(ms(119_998)), ms(120_000));
        assert_eq!(coarse(ms(2_345)), ms(2_400));
        assert_eq!(coarse(ms(950)), ms(950));
        for left in (1..200_000).step_by(997).map(ms) {
            let limit = coarse(left);
            assert!(
                limit >= left && limit - left <= left / 10,
                "{left:?} -> {limit:?}"
            );
        }
    }
}
