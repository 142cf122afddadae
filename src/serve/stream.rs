//! Writing responses to the client socket: status line, headers, framing, body.
//!
//! Every upstream read goes to the client at once, as one write (a chunk of its own when
//! the body is chunked), so no token of a stream is held back. Invariants: a body that
//! is complete is ended in a way the client can see (a terminating chunk, an exact
//! `Content-Length`, or a closed HTTP/1.0 connection), and one the upstream broke off
//! never looks complete (an SSE error event; otherwise no terminating chunk, or fewer
//! bytes than its `Content-Length`, and the connection is closed); this module never
//! sees a key.

use std::io::{self, Read, Write};

use ureq::http::StatusCode;

use crate::serve::error::{Reply, Shape};
use crate::serve::spare;

/// How a response body is delimited on the client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length`, the body is already in hand.
    Length(u64),
    /// `Transfer-Encoding: chunked`, one chunk per upstream read.
    Chunked,
    /// HTTP/1.0 client: the body ends when the connection closes.
    Close,
    /// HEAD, 204, 304: headers only.
    NoBody,
}

impl Framing {
    /// The framing for a body of unknown length on this client connection.
    pub fn streaming(http10: bool) -> Framing {
        if http10 {
            Framing::Close
        } else {
            Framing::Chunked
        }
    }
}

/// How a relayed body ended.
#[derive(Debug)]
pub enum End {
    Complete,
    /// The upstream body broke off; the client's body was ended (and told, for SSE).
    UpstreamFailed(io::Error),
    /// Writing to the client failed: it went away.
    ClientGone(io::Error),
}

/// Writes the status line, the headers and the framing header, then flushes so the
/// client has the head at once. CORS headers are the caller's (`browser.rs`).
pub fn write_head(
    to: &mut dyn Write,
    status: u16,
    headers: &[(String, String)],
    framing: Framing,
) -> io::Result<()> {
    let mut head = Vec::with_capacity(256);
    head_bytes(&mut head, status, headers, framing);
    to.write_all(&head)?;
    to.flush()
}

fn head_bytes(out: &mut Vec<u8>, status: u16, headers: &[(String, String)], framing: Framing) {
    let reason = StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Unknown");
    // Always 1.1: a 1.0 client understands it, and `Close` framing keeps the body valid.
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    for (name, value) in headers {
        let _ = write!(out, "{name}: {value}\r\n");
    }
    match framing {
        Framing::Length(len) => {
            let _ = write!(out, "Content-Length: {len}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::Close => out.extend_from_slice(b"Connection: close\r\n"),
        Framing::NoBody => {}
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a complete response whose body is in hand, in one write.
pub fn write_full(
    to: &mut dyn Write,
    status: u16,
    headers: &[(String, String)],
    body: &[u8],
) -> io::Result<()> {
    let mut out = Vec::with_capacity(256 + body.len());
    head_bytes(
        &mut out,
        status,
        headers,
        Framing::Length(body.len() as u64),
    );
    out.extend_from_slice(body);
    to.write_all(&out)?;
    to.flush()
}

/// Writes one of the proxy's own answers, in the error shape of the client's provider.
/// With `close`, the client is told the connection ends after it.
pub fn write_reply(to: &mut dyn Write, reply: &Reply, close: bool, shape: Shape) -> io::Result<()> {
    write_reply_in(to, reply, close, &[], shape)
}

/// [`write_reply`] with more headers (CORS).
pub fn write_reply_in(
    to: &mut dyn Write,
    reply: &Reply,
    close: bool,
    more: &[(String, String)],
    shape: Shape,
) -> io::Result<()> {
    let mut headers: Vec<(String, String)> =
        vec![("Content-Type".into(), "application/json".into())];
    if close {
        headers.push(("Connection".into(), "close".into()));
    }
    headers.extend(reply.headers().into_iter().map(|(n, v)| (n.to_string(), v)));
    headers.extend_from_slice(more);
    write_full(to, reply.status, &headers, &reply.body_in(shape))
}

/// Size of one read from the upstream: the relay buffer (with the chunk framing around
/// it) is 8 KiB, held by every open stream. Events are far smaller; a large chunked body
/// costs one write to the client per 8 KiB.
const READ_SIZE: usize = spare::SIZE - ROOM - 2;

/// Sends a streamed answer: the head, then `held` (the start of the body, already read)
/// and the rest of `body` through [`relay`]. With `held` in hand the head goes out in the
/// same write as it: one packet, and one wake-up of the client for its first event.
/// `Err`: the head could not be written.
pub fn write_stream(
    to: &mut dyn Write,
    status: u16,
    headers: &[(String, String)],
    framing: Framing,
    held: Vec<u8>,
    body: &mut dyn Read,
    sse: Option<Shape>,
) -> io::Result<(End, u64)> {
    if held.is_empty() {
        write_head(to, status, headers, framing)?;
        return Ok(relay(body, to, framing, sse));
    }
    let mut head = Vec::with_capacity(256);
    head_bytes(&mut head, status, headers, framing);
    let mut from = io::Cursor::new(held).chain(body);
    Ok(relay(&mut from, &mut HeadFirst { to, head }, framing, sse))
}

/// A writer whose first write goes out behind `head`, in one write.
struct HeadFirst<'a> {
    to: &'a mut dyn Write,
    head: Vec<u8>,
}

impl Write for HeadFirst<'_> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        if self.head.is_empty() {
            return self.to.write(bytes);
        }
        // Freed once sent: an open stream keeps no copy of its head.
        let mut head = std::mem::take(&mut self.head);
        head.extend_from_slice(bytes);
        self.to.write_all(&head)?;
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.to.flush()
    }
}

/// Copies `from` to the client as it arrives, one flushed chunk per read, after
/// [`write_head`] was written with the same `framing` (`Chunked`, `Close` or `Length`).
/// When the upstream breaks off, a server-sent event stream (`sse`) gets an error event
/// in OpenRouter's in-stream shape and is ended, so SDKs raise an error; any other body
/// is left unfinished (no terminating chunk, short of its length), and the caller closes
/// the connection, so the client can tell it is incomplete.
/// The error event is in `shape` (Anthropic's `event: error`, Google's error object).
pub fn relay(
    from: &mut dyn Read,
    to: &mut dyn Write,
    framing: Framing,
    sse: Option<Shape>,
) -> (End, u64) {
    // One buffer per stream, the thread's spare: each read lands after room for its
    // chunk-size line.
    let mut buf = spare::take();
    let ended = relay_in(&mut buf, from, to, framing, sse);
    spare::give(buf);
    ended
}

fn relay_in(
    buf: &mut [u8],
    from: &mut dyn Read,
    to: &mut dyn Write,
    framing: Framing,
    sse: Option<Shape>,
) -> (End, u64) {
    let chunked = framing == Framing::Chunked;
    let mut sent: u64 = 0;
    let mut tail = [b'\n', b'\n'];
    loop {
        let n = match from.read(&mut buf[ROOM..ROOM + READ_SIZE]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let Some(shape) = sse else {
                    let _ = to.flush();
                    return (End::UpstreamFailed(e), sent);
                };
                let separator: &[u8] = match tail {
                    [b'\n', b'\n'] => b"",
                    [_, b'\n'] => b"\n",
                    _ => b"\n\n",
                };
                let mut end = separator.to_vec();
                end.extend_from_slice(&sse_error_event(&e, shape));
                let ended = end
                    .chunks(READ_SIZE)
                    .try_for_each(|piece| {
                        buf[ROOM..ROOM + piece.len()].copy_from_slice(piece);
                        send_in_place(to, buf, piece.len(), chunked)
                    })
                    .and_then(|()| finish(to, chunked));
                return match ended {
                    Ok(()) => (End::UpstreamFailed(e), sent),
                    Err(client) => (End::ClientGone(client), sent),
                };
            }
        };
        if let Err(e) = send_in_place(to, buf, n, chunked) {
            return (End::ClientGone(e), sent);
        }
        sent += n as u64;
        let data = &buf[ROOM..ROOM + n];
        tail = match n {
            1 => [tail[1], data[0]],
            _ => [data[n - 2], data[n - 1]],
        };
    }
    match finish(to, chunked) {
        Ok(()) => (End::Complete, sent),
        Err(e) => (End::ClientGone(e), sent),
    }
}

/// Room before the data in a relay buffer for a chunk-size line (`4000\r\n`).
const ROOM: usize = 8;

/// Sends the `n` bytes at `buf[ROOM..]` as one chunk (or raw), in one write, and
/// flushes; the chunk-size line goes in the room before them, the CRLF after.
fn send_in_place(to: &mut dyn Write, buf: &mut [u8], n: usize, chunked: bool) -> io::Result<()> {
    if !chunked {
        to.write_all(&buf[ROOM..ROOM + n])?;
        return to.flush();
    }
    let mut size = [0u8; ROOM];
    let mut line = &mut size[..];
    // ROOM holds any size line up to 16^6 bytes; a read is at most READ_SIZE.
    let _ = write!(line, "{n:x}\r\n");
    let len = ROOM - line.len();
    let start = ROOM - len;
    buf[start..ROOM].copy_from_slice(&size[..len]);
    buf[ROOM + n..ROOM + n + 2].copy_from_slice(b"\r\n");
    to.write_all(&buf[start..ROOM + n + 2])?;
    to.flush()
}

fn finish(to: &mut dyn Write, chunked: bool) -> io::Result<()> {
    if chunked {
        to.write_all(b"0\r\n\r\n")?;
    }
    to.flush()
}

/// The event the provider itself sends when a stream fails after it began: OpenRouter's
/// error chunk, Anthropic's `event: error`, or Google's error object.
fn sse_error_event(cause: &io::Error, shape: Shape) -> Vec<u8> {
    let message = format!(
        "roo-proxy: the upstream stream broke off ({cause}); the answer is incomplete, send the request again"
    );
    let mut event = crate::serve::error::error_json(502, &message, shape);
    match shape {
        Shape::OpenAi => {
            event["choices"] =
                serde_json::json!([{ "index": 0, "delta": {}, "finish_reason": "error" }]);
            format!("data: {event}\n\n").into_bytes()
        }
        Shape::Anthropic => format!("event: error\ndata: {event}\n\n").into_bytes(),
        Shape::Google => format!("data: {event}\n\n").into_bytes(),
    }
}

/// Reads the start of an event stream up to its first event that carries data, holding
/// keep-alive comments (`: OPENROUTER PROCESSING`) on the way. Stops at the end of the
/// body or after `limit` bytes. Returns everything read (to be sent on untouched) and the
/// first event's data, if it came.
pub fn hold_first_event(
    from: &mut dyn Read,
    limit: usize,
) -> io::Result<(Vec<u8>, Option<Vec<u8>>)> {
    let mut held = Vec::new();
    let mut buf = [0u8; 4096];
    while held.len() < limit {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        held.extend_from_slice(&buf[..n]);
        if let Some(data) = first_data(&held) {
            return Ok((held, Some(data)));
        }
    }
    Ok((held, None))
}

/// The data of the first complete event that has any (`data:` lines joined by `\n`), or
/// `None` while no such event is complete. Comments and other fields are skipped.
pub fn first_data(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut data: Option<Vec<u8>> = None;
    let mut rest = bytes;
    while let Some(end) = rest.iter().position(|b| *b == b'\n') {
        let line = rest[..end].strip_suffix(b"\r").unwrap_or(&rest[..end]);
        rest = &rest[end + 1..];
        if line.is_empty() {
            if data.is_some() {
                return data;
            }
            continue;
        }
        if let Some(value) = line.strip_prefix(b"data:") {
            let value = value.strip_prefix(b" ").unwrap_or(value);
            // Every line after the first adds a separator, also after an empty value.
            let joined = match &mut data {
                Some(joined) => {
                    joined.push(b'\n');
                    joined
                }
                None => data.insert(Vec::new()),
            };
            joined.extend_from_slice(value);
        }
    }
    None
}

/// Reads a whole body of at most `limit` bytes (for bodies kept to inspect or to send
/// with an exact length). More than `limit` is an error.
pub fn read_bounded(from: &mut dyn Read, limit: u64) -> io::Result<Vec<u8>> {
    let mut body = Vec::new();
    from.take(limit + 1).read_to_end(&mut body)?;
    if body.len() as u64 > limit {
        return Err(io::Error::other(format!("body larger than {limit} bytes")));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that yields the given pieces, then fails or ends.
    struct Pieces(Vec<&'static [u8]>, bool);

    impl Read for Pieces {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return if self.1 {
                    Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"))
                } else {
                    Ok(0)
                };
            }
            let piece = self.0.remove(0);
            buf[..piece.len()].copy_from_slice(piece);
            Ok(piece.len())
        }
    }

    /// A writer that records each write, and what each flush made visible.
    #[derive(Default)]
    struct Wire {
        bytes: Vec<u8>,
        writes: Vec<String>,
        flushed: Vec<usize>,
    }

    impl Write for Wire {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes.extend_from_slice(buf);
            self.writes.push(String::from_utf8_lossy(buf).into_owned());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            self.flushed.push(self.bytes.len());
            Ok(())
        }
    }

    #[test]
    fn a_stream_whose_start_is_in_hand_sends_it_in_the_write_of_the_head() {
        let mut wire = Wire::default();
        let mut rest = Pieces(vec![b"data: 2\n\n"], false);
        let held = b"data: 1\n\n".to_vec();
        let relayed = write_stream(
            &mut wire,
            200,
            &[],
            Framing::Chunked,
            held,
            &mut rest,
            Some(Shape::OpenAi),
        );
        let (end, sent) = relayed.unwrap();
        assert!(matches!(end, End::Complete));
        assert_eq!(sent, 18);
        let first = &wire.writes[0];
        assert!(first.starts_with("HTTP/1.1 200 OK\r\n"), "{first:?}");
        assert!(first.ends_with("\r\n\r\n9\r\ndata: 1\n\n\r\n"), "{first:?}");
        assert_eq!(wire.writes[1..], ["9\r\ndata: 2\n\n\r\n", "0\r\n\r\n"]);
    }

    #[test]
    fn a_stream_with_nothing_in_hand_sends_its_head_at_once() {
        let mut wire = Wire::default();
        let mut body = Pieces(vec![b"data: 1\n\n"], false);
        let relayed = write_stream(
            &mut wire,
            200,
            &[],
            Framing::Close,
            Vec::new(),
            &mut body,
            Some(Shape::OpenAi),
        );
        assert!(matches!(relayed.unwrap().0, End::Complete));
        assert!(
            wire.writes[0].ends_with("Connection: close\r\n\r\n"),
            "{:?}",
            wire.writes[0]
        );
        assert_eq!(
            wire.flushed[0],
            wire.writes[0].len(),
            "the head was not flushed alone"
        );
        assert_eq!(wire.writes[1], "data: 1\n\n");
    }
    #[test]
    fn every_read_is_one_flushed_chunk() {
        let mut wire = Wire::default();
        let (end, sent) = relay(
            &mut Pieces(vec![b"data: 1\n\n", b"data: 2\n\n"], false),
            &mut wire,
            Framing::Chunked,
            Some(Shape::OpenAi),
        );
        assert!(matches!(end, End::Complete));
        assert_eq!(sent, 18);
        assert_eq!(
            wire.bytes,
            b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"
        );
        assert_eq!(wire.flushed, [14, 28, 33]);
    }

    #[test]
    fn a_broken_sse_stream_gets_an_error_event_and_an_end() {
        let mut wire = Wire::default();
        let (end, _) = relay(
            &mut Pieces(vec![b"data: {\"a\":1}\n\ndata: {\"b\""], true),
            &mut wire,
            Framing::Chunked,
            Some(Shape::OpenAi),
        );
        assert!(matches!(end, End::UpstreamFailed(_)));
        let text = String::from_utf8(wire.bytes).unwrap();
        assert!(text.ends_with("\r\n0\r\n\r\n"), "{text}");
        // The cut-off event is closed off before the error event starts.
        assert!(text.contains("data: {\"b\"\r\n"), "{text}");
        let event_line = text
            .lines()
            .find(|l| l.starts_with("data: {\"choices\"") || l.starts_with("data: {\"error\""))
            .unwrap();
        let json: serde_json::Value = serde_json::from_str(&event_line["data: ".len()..]).unwrap();
        assert_eq!(json["error"]["code"], 502);
        assert_eq!(json["choices"][0]["finish_reason"], "error");
    }

    #[test]
    fn a_broken_stream_ends_with_the_error_event_of_its_provider() {
        let mut wire = Wire::default();
        relay(
            &mut Pieces(vec![b"event: ping\ndata: {}\n\n"], true),
            &mut wire,
            Framing::Close,
            Some(Shape::Anthropic),
        );
        let text = String::from_utf8(wire.bytes).unwrap();
        let (_, event) = text.split_once("event: error\ndata: ").expect(&text);
        let json: serde_json::Value = serde_json::from_str(event.trim_end()).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["error"]["type"], "api_error");
        let mut wire = Wire::default();
        relay(
            &mut Pieces(vec![b"data: {}\n\n"], true),
            &mut wire,
            Framing::Close,
            Some(Shape::Google),
        );
        let text = String::from_utf8(wire.bytes).unwrap();
        let (_, event) = text.split_once("\n\ndata: ").expect(&text);
        let json: serde_json::Value = serde_json::from_str(event.trim_end()).unwrap();
        assert_eq!(json["error"]["status"], "UNAVAILABLE");
    }

    #[test]
    fn a_broken_plain_body_never_gets_a_terminating_chunk() {
        let mut wire = Wire::default();
        let (end, _) = relay(
            &mut Pieces(vec![b"{\"par"], true),
            &mut wire,
            Framing::Chunked,
            None,
        );
        assert!(matches!(end, End::UpstreamFailed(_)));
        assert_eq!(wire.bytes, b"5\r\n{\"par\r\n");
        let mut wire = Wire::default();
        let (end, sent) = relay(
            &mut Pieces(vec![b"{\"par"], true),
            &mut wire,
            Framing::Length(100),
            None,
        );
        assert!(matches!(end, End::UpstreamFailed(_)));
        assert_eq!((wire.bytes.as_slice(), sent), (&b"{\"par"[..], 5));
    }

    #[test]
    fn close_framing_copies_raw_bytes() {
        let mut wire = Wire::default();
        let (end, _) = relay(
            &mut Pieces(vec![b"abc", b"def"], false),
            &mut wire,
            Framing::Close,
            None,
        );
        assert!(matches!(end, End::Complete));
        assert_eq!(wire.bytes, b"abcdef");
    }

    #[test]
    fn heads_carry_framing_and_no_cors_of_their_own() {
        let mut wire = Wire::default();
        let headers = vec![("Content-Type".to_string(), "text/event-stream".to_string())];
        write_head(&mut wire, 200, &headers, Framing::Chunked).unwrap();
        assert_eq!(
            String::from_utf8(wire.bytes).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        );
        assert_eq!(wire.flushed.len(), 1);
    }

    #[test]
    fn replies_are_complete_json_responses() {
        let mut wire = Wire::default();
        write_reply(
            &mut wire,
            &Reply::wait(std::time::Duration::from_secs(30), "all keys rest"),
            false,
            Shape::Anthropic,
        )
        .unwrap();
        let text = String::from_utf8(wire.bytes).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["type"], "rate_limit_error", "{json}");
        assert!(head.starts_with("HTTP/1.1 429 Too Many Requests\r\n"));
        assert!(head.contains("\r\nRetry-After: 30\r\nx-should-retry: false\r\n"));
        assert!(head.ends_with(&format!("\r\nContent-Length: {}", body.len())));
    }

    #[test]
    fn the_first_data_event_is_found_past_comments() {
        assert_eq!(
            first_data(
                b": OPENROUTER PROCESSING\n\n: OPENROUTER PROCESSING\n\ndata: {\"a\":1}\n\n"
            ),
            Some(b"{\"a\":1}".to_vec())
        );
        assert_eq!(
            first_data(b"data: {\"a\":1}\r\n\r\n"),
            Some(b"{\"a\":1}".to_vec())
        );
        assert_eq!(
            first_data(b"event: x\ndata: a\ndata: b\n\n"),
            Some(b"a\nb".to_vec())
        );
        assert_eq!(
            first_data(b": keep-alive\n\ndata: {\"a\""),
            None,
            "incomplete"
        );
        assert_eq!(first_data(b"data: [DONE]\n"), None, "no blank line yet");
    }

    #[test]
    fn holding_stops_at_the_first_event_and_keeps_every_byte() {
        let mut from = Pieces(
            vec![
                b": OPENROUTER PROCESSING\n\n",
                b"data: {\"x\":1}\n",
                b"\n",
                b"data: later\n\n",
            ],
            false,
        );
        let (held, data) = hold_first_event(&mut from, 1024).unwrap();
        assert_eq!(held, b": OPENROUTER PROCESSING\n\ndata: {\"x\":1}\n\n");
        assert_eq!(data.unwrap(), b"{\"x\":1}");
        let mut rest = Vec::new();
        from.read_to_end(&mut rest).unwrap();
        assert_eq!(
            rest, b"data: later\n\n",
            "nothing past the first event was read"
        );
        let (held, data) =
            hold_first_event(&mut Pieces(vec![b": a\n\n", b": b\n\n"], false), 4).unwrap();
        assert_eq!((held.len(), data), (5, None), "the hold is bounded");
    }

    #[test]
    fn property_the_first_event_is_found_as_the_format_says() {
        let pieces = [
            "data:", "data: ", ": c", "\n", "\r\n", "\n\n", "{}", "x", "event: e", ":", "\r",
        ];
        // The event stream format (WHATWG HTML, "Parsing an event stream"), for lines
        // ended by LF or CRLF (no upstream ends them with a lone CR): only complete lines
        // count, `data:` values (less one leading space) are joined by LF, and a blank
        // line ends an event, which counts when it had a `data` line.
        fn model(text: &str) -> Option<Vec<u8>> {
            let complete = &text[..text.rfind('\n').map_or(0, |end| end + 1)];
            let mut data: Option<Vec<&str>> = None;
            for line in complete.lines() {
                if line.is_empty() {
                    if let Some(values) = data {
                        return Some(values.join("\n").into_bytes());
                    }
                } else if let Some(value) = line.strip_prefix("data:") {
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    data.get_or_insert_with(Vec::new).push(value);
                }
            }
            None
        }
        assert_eq!(model("data: a\ndata:b\n\n"), Some(b"a\nb".to_vec()));
        assert_eq!(model(": c\n\ndata:\n\n"), Some(Vec::new()));
        assert_eq!(model("data: a\n"), None);
        let mut rng = crate::testing::Rng::new(9);
        let mut found = 0;
        for _ in 0..20_000 {
            let text = rng.text(&pieces, 12);
            let expected = model(&text);
            found += usize::from(expected.is_some());
            assert_eq!(first_data(text.as_bytes()), expected, "{text:?}");
        }
        assert!(found > 1_000, "the pieces seldom make an event: {found}");
    }

    #[test]
    fn bounded_reads_refuse_more() {
        assert_eq!(read_bounded(&mut &b"abc"[..], 3).unwrap(), b"abc");
        assert!(read_bounded(&mut &b"abcd"[..], 3).is_err());
    }
}
