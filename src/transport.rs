//! The TCP connection ureq sends upstream requests over (for an `https` upstream, ureq's
//! rustls layer runs on top of it). ureq's own TCP transport would work; this one spends
//! fewer system calls per request, measured in BENCHMARKS.md:
//!
//! - A request's head is held back in the output buffer and goes out in one write with
//!   the start of its body. ureq writes them separately, and with TCP_NODELAY that is two
//!   packets and two wake-ups of the upstream. A head is sent on its own only when no
//!   body follows (before the first read) or when it is too large to share the buffer.
//! - Checking that an idle connection is still usable (ureq does it when a connection
//!   goes back to its pool and again when it is taken out) is one non-blocking peek on
//!   Unix, where ureq's check takes three system calls.
//! - A socket time limit is set only when it changes (rounded by `connection::coarse`).
//!
//! Built on ureq's `unversioned` transport API, which may change between ureq releases;
//! `Cargo.lock` holds the version this was written against.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use ureq::Error;
use ureq::Timeout;
use ureq::unversioned::transport::{
    Buffers, ConnectionDetails, Connector, LazyBuffers, NextTimeout, Transport,
};

use crate::connection::coarse;

/// The first link of ureq's connector chain: opens the TCP connection.
#[derive(Debug)]
pub struct Tcp;

impl Connector<()> for Tcp {
    type Out = Socket;

    fn connect(&self, details: &ConnectionDetails, _: Option<()>) -> Result<Option<Socket>, Error> {
        let stream = connect(&details.addrs, details.timeout)?;
        let config = details.config;
        Ok(Some(Socket {
            stream,
            buffers: LazyBuffers::new(config.input_buffer_size(), config.output_buffer_size()),
            held: 0,
            read_timeout: None,
            write_timeout: None,
        }))
    }
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
            Err(e) if is_timeout(&e) => last = Some(Error::Timeout(Timeout::Connect)),
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

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// One upstream connection. The first `held` bytes of the output buffer are a request
/// head not yet sent; ureq is shown only the space after them.
#[derive(Debug)]
pub struct Socket {
    stream: TcpStream,
    buffers: LazyBuffers,
    held: usize,
    read_timeout: Option<Duration>,
    write_timeout: Option<Duration>,
}

impl Socket {
    /// Writes the first `amount` bytes of the output buffer (held head included).
    fn send(&mut self, amount: usize, timeout: NextTimeout) -> Result<(), Error> {
        let timeout = timeout.for_write();
        if timeout.after.is_zero() {
            return Err(Error::Timeout(timeout.reason));
        }
        let limit = timeout.not_zero().map(|t| coarse(*t));
        if limit != self.write_timeout {
            self.stream.set_write_timeout(limit)?;
            self.write_timeout = limit;
        }
        let bytes = &self.buffers.output()[..amount];
        (&self.stream).write_all(bytes).map_err(|e| match e {
            e if is_timeout(&e) => Error::Timeout(timeout.reason),
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
        let timeout = timeout.for_read();
        if timeout.after.is_zero() {
            return Err(Error::Timeout(timeout.reason));
        }
        let limit = timeout.not_zero().map(|t| coarse(*t));
        if limit != self.read_timeout {
            self.stream.set_read_timeout(limit)?;
            self.read_timeout = limit;
        }
        let read = loop {
            match (&self.stream).read(self.buffers.input_append_buf()) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match read {
            Ok(amount) => {
                self.buffers.input_appended(amount);
                Ok(amount > 0)
            }
            Err(e) if is_timeout(&e) => Err(Error::Timeout(timeout.reason)),
            Err(e) => Err(Error::Io(e)),
        }
    }

    fn is_open(&mut self) -> bool {
        self.held == 0 && nothing_waiting(&self.stream)
    }
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
            buffers: LazyBuffers::new(1024, 1024),
            held: 0,
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
