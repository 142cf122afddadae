//! The TCP connection ureq sends upstream requests over (for an `https` upstream, ureq's
//! rustls layer runs on top of it). ureq's own TCP transport would work; this one spends
//! fewer system calls per request, measured in BENCHMARKS.md:
//!
//! - A request's head is held back in the output buffer and goes out in one write with
//!   the start of its body. ureq writes them separately, and with TCP_NODELAY that is two
//!   packets and two wake-ups of the upstream. A head is sent on its own only when no
//!   body follows (before the first read) or when it is too large to share the buffer.
//! - Checking that an idle connection is still usable is one non-blocking peek on Unix,
//!   where ureq's check takes three system calls, and it is done once per request (as
//!   the connection is taken out of the pool), where ureq checks twice.
//! - A socket time limit is set only when it changes (`connection::set_limit`).
//! - A connection's buffers are small while a response streams: the output buffer is
//!   given back once the request is sent, and the input buffer starts at one page and
//!   grows only when a read fills it. With ureq's buffers an open stream held 24 KiB.
//!
//! Built on ureq's `unversioned` transport API, which may change between ureq releases;
//! `Cargo.lock` holds the version this was written against.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ureq::Error;
use ureq::Timeout;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, Either, NextTimeout, RustlsConnector, Transport,
};

use crate::serve::connection::{self, timed_out};
use crate::serve::spare;

/// ureq's connector for the upstream: opens the TCP connection, and for an `https`
/// upstream runs ureq's rustls connector on top.
///
/// Not ureq's chain of a TCP connector and `RustlsConnector`: a chain compiles into one
/// function whose stack frame holds room for the TLS handshake (12 KiB) even for plain
/// HTTP, and a worker thread keeps every stack page it has touched for as long as it
/// lives.
#[derive(Debug, Default)]
pub struct Connect {
    tls: RustlsConnector,
}

type Tls = <RustlsConnector as Connector<Socket>>::Out;

impl Connector<()> for Connect {
    type Out = Tls;

    fn connect(&self, details: &ConnectionDetails, _: Option<()>) -> Result<Option<Tls>, Error> {
        let stream = connect(&details.addrs, details.timeout)?;
        let config = details.config;
        let socket = Socket {
            stream,
            buffers: Room::new(config.input_buffer_size(), config.output_buffer_size()),
            held: 0,
            answered: false,
            read_timeout: None,
            write_timeout: None,
        };
        if details.needs_tls() {
            wrap_in_tls(&self.tls, details, socket)
        } else {
            Ok(Some(Either::A(socket)))
        }
    }
}

/// Its own frame, entered only for `https`.
#[inline(never)]
fn wrap_in_tls(
    tls: &RustlsConnector,
    details: &ConnectionDetails,
    socket: Socket,
) -> Result<Option<Tls>, Error> {
    tls.connect(details, Some(socket))
}

/// Tries the resolved addresses in order, sharing the connect time limit among them.
fn connect(addrs: &[SocketAddr], timeout: NextTimeout) -> Result<TcpStream, Error> {
    let each = timeout
        .not_zero()
        .map(|limit| *limit / addrs.len().max(1) as u32);
    let mut last = None;
    for addr in addrs {
        let attempt = match each {
            Some(limit) => TcpStream::connect_timeout(addr, limit),
            None => TcpStream::connect(addr),
        };
        match attempt {
            Ok(stream) => {
                stream.set_nodelay(true)?;
                return Ok(stream);
            }
            Err(e) if timed_out(&e) => last = Some(Error::Timeout(Timeout::Connect)),
            Err(e) => last = Some(Error::Io(e)),
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::Io(io::Error::new(
            io::ErrorKind::NotFound,
            "the upstream host has no address",
        ))
    }))
}

/// One upstream connection. The first `held` bytes of the output buffer are a request
/// head not yet sent; ureq is shown only the space after them.
#[derive(Debug)]
pub struct Socket {
    stream: TcpStream,
    buffers: Room,
    held: usize,
    /// An answer was read since the last idle check: ureq's next `is_open` is the one as
    /// the connection goes back to its pool.
    answered: bool,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl Socket {
    /// Writes the first `amount` bytes of the output buffer (held head included).
    fn send(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        set_limit(timeout, &mut self.write_timeout, |limit| {
            self.stream.set_write_timeout(limit)
        })?;
        let bytes = &self.buffers.output()[..amount];
        (&self.stream).write_all(bytes).map_err(|e| match e {
            e if timed_out(&e) => Error::Timeout(timeout.reason),
            e => Error::Io(e),
        })
    }

    fn send_held(&mut self, timeout: NextTimeout) -> Result<(), Error> {
        match std::mem::take(&mut self.held) {
            0 => Ok(()),
            held => self.send(held, timeout),
        }
    }
}

impl Transport for Socket {
    fn buffers(&mut self) -> &mut dyn Buffers {
        self
    }

    fn transmit_output(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let room = self.buffers.output().len();
        if self.held == 0 && timeout.reason == Timeout::SendRequest && amount <= room / 2 {
            self.held = amount;
            return Ok(());
        }
        let amount = std::mem::take(&mut self.held) + amount;
        self.send(amount, timeout)
    }

    fn await_input(&mut self, timeout: NextTimeout) -> Result<bool, Error> {
        self.send_held(timeout)?;
        // The request is out; an answer that streams for minutes should not keep its buffer.
        self.buffers.release_output();
        let timeout = timeout.for_read();
        set_limit(timeout, &mut self.read_timeout, |limit| {
            self.stream.set_read_timeout(limit)
        })?;
        let read = loop {
            match (&self.stream).read(self.buffers.input_append_buf()) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match read {
            Ok(amount) => {
                self.answered = true;
                self.buffers.input_appended(amount);
                self.buffers.grow_if_filled(amount);
                Ok(amount > 0)
            }
            Err(e) if timed_out(&e) => Err(Error::Timeout(timeout.reason)),
            Err(e) => Err(Error::Io(e)),
        }
    }

    /// ureq asks twice per request: as the connection goes back to its pool, and as it
    /// is taken out for the next request. Only the second looks at the socket; anything
    /// the first would catch (stray bytes, a close) is still there for it, and a
    /// connection found broken then is dropped and another one used.
    fn is_open(&mut self) -> bool {
        if std::mem::take(&mut self.answered) {
            return self.held == 0;
        }
        self.held == 0 && nothing_waiting(&self.stream)
    }
}

/// Gives a socket operation the time `timeout` leaves ([`connection::set_limit`]).
/// Fails when no time is left.
fn set_limit(
    timeout: NextTimeout,
    current: &mut Option<Duration>,
    set: impl FnOnce(Option<Duration>) -> io::Result<()>,
) -> Result<(), Error> {
    if timeout.after.is_zero() {
        return Err(Error::Timeout(timeout.reason));
    }
    connection::set_limit(timeout.not_zero().map(|t| *t), current, set)?;
    Ok(())
}

/// An idle connection is usable when reading from it would block: no bytes the
/// upstream sent unasked, no end of stream, no error.
#[cfg(unix)]
fn nothing_waiting(stream: &TcpStream) -> bool {
    let mut byte = [std::mem::MaybeUninit::uninit()];
    let peeked = socket2::SockRef::from(stream)
        .recv_with_flags(&mut byte, libc::MSG_PEEK | libc::MSG_DONTWAIT);
    matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(not(unix))]
fn nothing_waiting(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let peeked = stream.peek(&mut [0]);
    stream.set_nonblocking(false).is_ok()
        && matches!(peeked, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

impl Buffers for Socket {
    fn output(&mut self) -> &mut [u8] {
        let held = self.held;
        &mut self.buffers.output()[held..]
    }

    fn input(&self) -> &[u8] {
        self.buffers.input()
    }

    fn input_append_buf(&mut self) -> &mut [u8] {
        self.buffers.input_append_buf()
    }

    fn input_appended(&mut self, amount: usize) {
        self.buffers.input_appended(amount)
    }

    fn input_consume(&mut self, amount: usize) {
        self.buffers.input_consume(amount)
    }

    fn tmp_and_output(&mut self) -> (&mut [u8], &mut [u8]) {
        let held = self.held;
        let (tmp, output) = self.buffers.tmp_and_output();
        (tmp, &mut output[held..])
    }

    fn can_use_input(&self) -> bool {
        self.buffers.can_use_input()
    }
}

/// A connection's input and output buffers (ureq's `LazyBuffers` keeps both at full size
/// for the connection's life). The output buffer exists only while a request is being
/// sent. The input buffer starts at [`INPUT_START`] and doubles, up to the configured
/// size, when a read fills it (a large body is coming), or beyond it when ureq needs
/// more bytes together than it holds (a long response head; ureq caps those itself).
#[derive(Debug)]
struct Room {
    output: Vec<u8>,
    output_size: usize,
    input: Vec<u8>,
    input_size: usize,
    filled: usize,
    consumed: usize,
    /// The last `input_consume` took something (ureq's `can_use_input` contract).
    progress: bool,
}

/// One page: an event of a stream fits many times over.
const INPUT_START: usize = 4 * 1024;
/// Less free room than this at the end of the input buffer is made room for first.
const MIN_READ: usize = 1024;

impl Room {
    fn new(input_size: usize, output_size: usize) -> Room {
        Room {
            output: Vec::new(),
            output_size: output_size.max(1),
            input: Vec::new(),
            input_size: input_size.max(1),
            filled: 0,
            consumed: 0,
            progress: false,
        }
    }

    /// The output buffer: the thread's spare when the configured size is a spare's.
    fn output(&mut self) -> &mut [u8] {
        if self.output.is_empty() {
            self.output = match self.output_size {
                spare::SIZE => spare::take(),
                size => vec![0; size],
            };
        }
        &mut self.output
    }

    fn release_output(&mut self) {
        spare::give(std::mem::take(&mut self.output));
    }

    fn input(&self) -> &[u8] {
        &self.input[self.consumed..self.filled]
    }

    /// The free end of the input buffer, at least [`MIN_READ`] long.
    fn input_append_buf(&mut self) -> &mut [u8] {
        if self.consumed == self.filled {
            (self.consumed, self.filled) = (0, 0);
        }
        if self.input.len() - self.filled < MIN_READ {
            if self.consumed > 0 {
                self.input.copy_within(self.consumed..self.filled, 0);
                (self.consumed, self.filled) = (0, self.filled - self.consumed);
            }
            let start = INPUT_START.min(self.input_size);
            let mut len = self.input.len().max(start);
            while len - self.filled < MIN_READ {
                len *= 2;
            }
            self.input.resize(len, 0);
        }
        &mut self.input[self.filled..]
    }

    fn input_appended(&mut self, amount: usize) {
        self.filled += amount;
        assert!(self.filled <= self.input.len());
    }

    /// After a read of `amount` bytes: if it filled the buffer, the next one gets twice
    /// the room (up to the configured size).
    fn grow_if_filled(&mut self, amount: usize) {
        let len = self.input.len();
        if self.filled == len && amount > 0 && len < self.input_size {
            self.input.resize((len * 2).min(self.input_size), 0);
        }
    }

    fn input_consume(&mut self, amount: usize) {
        self.progress = amount > 0;
        self.consumed += amount;
        assert!(self.consumed <= self.filled);
    }

    fn tmp_and_output(&mut self) -> (&mut [u8], &mut [u8]) {
        self.output();
        self.input_append_buf();
        (&mut self.input[self.filled..], &mut self.output)
    }

    fn can_use_input(&self) -> bool {
        self.consumed < self.filled && self.progress
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use ureq::unversioned::transport::time::Duration as Limit;

    use super::*;

    /// A `Socket` connected to the other end, which the test holds.
    fn pair() -> (Socket, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (peer, _) = listener.accept().unwrap();
        peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let socket = Socket {
            stream,
            buffers: Room::new(1024, 1024),
            held: 0,
            answered: false,
            read_timeout: None,
            write_timeout: None,
        };
        (socket, peer)
    }

    fn within(reason: Timeout) -> NextTimeout {
        NextTimeout {
            after: Limit::Exact(Duration::from_secs(5)),
            reason,
            ..NextTimeout::default()
        }
    }

    /// What ureq does to send: fill the output buffer, then transmit it.
    fn transmit(socket: &mut Socket, bytes: &[u8], reason: Timeout) {
        socket.output()[..bytes.len()].copy_from_slice(bytes);
        socket.transmit_output(bytes.len(), within(reason)).unwrap();
    }

    fn nothing_arrived(peer: &TcpStream) -> bool {
        peer.set_nonblocking(true).unwrap();
        let waiting = peer.peek(&mut [0; 1]);
        peer.set_nonblocking(false).unwrap();
        matches!(waiting, Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    #[test]
    fn a_head_goes_out_with_its_body_in_one_write() {
        let (mut socket, mut peer) = pair();
        transmit(
            &mut socket,
            b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\n",
            Timeout::SendRequest,
        );
        assert!(nothing_arrived(&peer), "the head went out alone");
        assert!(!socket.is_open(), "a connection holding a head is not idle");
        transmit(&mut socket, b"body", Timeout::SendBody);
        let mut got = [0; 42];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(
            &got[..],
            b"POST / HTTP/1.1\r\ncontent-length: 4\r\n\r\nbody"
        );
    }

    #[test]
    fn a_head_without_a_body_goes_out_before_the_answer_is_awaited() {
        let (mut socket, mut peer) = pair();
        transmit(&mut socket, b"GET / HTTP/1.1\r\n\r\n", Timeout::SendRequest);
        let upstream = std::thread::spawn(move || {
            let mut got = [0; 18];
            peer.read_exact(&mut got).unwrap();
            peer.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").unwrap();
            got
        });
        assert!(socket.await_input(within(Timeout::RecvResponse)).unwrap());
        assert_eq!(&upstream.join().unwrap(), b"GET / HTTP/1.1\r\n\r\n");
        assert!(socket.input().starts_with(b"HTTP/1.1 204"));
        assert!(
            socket.buffers.output.is_empty(),
            "the output buffer outlived the request"
        );
    }

    /// What ureq does to read: append into the free end, then consume what it parsed.
    fn arrive(room: &mut Room, bytes: usize) {
        let free = room.input_append_buf();
        assert!(
            free.len() >= bytes,
            "{} bytes free, {bytes} arrived",
            free.len()
        );
        free[..bytes].fill(b'x');
        room.input_appended(bytes);
        room.grow_if_filled(bytes);
    }

    #[test]
    fn input_starts_at_a_page_and_doubles_when_a_read_fills_it() {
        let mut room = Room::new(16 * 1024, 1024);
        assert_eq!(room.input_append_buf().len(), 4096);
        arrive(&mut room, 300);
        room.input_consume(300);
        assert_eq!(room.input_append_buf().len(), 4096, "a small read grew it");
        for size in [8192, 16384, 16384] {
            let free = room.input_append_buf().len();
            arrive(&mut room, free);
            room.input_consume(free);
            assert_eq!(room.input.len(), size);
        }
    }

    #[test]
    fn unconsumed_input_survives_making_room() {
        let mut room = Room::new(4096, 1024);
        arrive(&mut room, 4000);
        room.input_consume(3990);
        assert!(room.can_use_input());
        room.input_append_buf()[..4].copy_from_slice(b"tail");
        room.input_appended(4);
        assert_eq!(room.input(), b"xxxxxxxxxxtail");
        assert_eq!(room.input.len(), 4096, "moved to the front, not grown");
    }

    #[test]
    fn a_head_longer_than_the_buffer_still_gets_room() {
        let mut room = Room::new(2048, 1024);
        for _ in 0..4 {
            let free = room.input_append_buf().len();
            assert!(free >= MIN_READ);
            arrive(&mut room, free);
            room.input_consume(0);
            assert!(!room.can_use_input(), "nothing was parsed, so read more");
        }
        assert!(room.input().len() > 4096);
    }

    #[test]
    fn a_large_head_is_not_held() {
        let (mut socket, mut peer) = pair();
        let head = [b'h'; 600];
        transmit(&mut socket, &head, Timeout::SendRequest);
        let mut got = [0; 600];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, head);
    }

    #[test]
    fn an_idle_connection_is_open_until_the_upstream_sends_or_closes() {
        let (mut socket, mut peer) = pair();
        assert!(socket.is_open());
        assert!(socket.is_open(), "checking must not change the connection");
        peer.write_all(b"x").unwrap();
        assert!(!socket.is_open(), "bytes nobody asked for");

        let (mut socket, peer) = pair();
        drop(peer);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while socket.is_open() {
            assert!(
                std::time::Instant::now() < deadline,
                "a closed connection looked open"
            );
            std::thread::yield_now();
        }
    }
}
