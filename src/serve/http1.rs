//! Client requests in HTTP/1.1: the request head within limits, and how its body is
//! framed (RFC 9112). Bytes in, decisions out: no sockets, no clock.
//!
//! Invariants: a head larger than the size limit or with more headers than the count
//! limit is refused with 431 before it is held whole; a request whose body length is
//! ambiguous (`Content-Length` beside `Transfer-Encoding`, or two different lengths) is
//! refused with 400, never guessed, so no request can be smuggled past the proxy. Lines
//! end in CRLF only, in the head and in the chunked framing; chunk extensions follow
//! RFC 9112's grammar, within a bound. A well-formed version other than HTTP/1.0 and
//! HTTP/1.1 gets 505.

use std::mem::MaybeUninit;

use crate::serve::error::Reply;
use crate::serve::route;

/// Limits on a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line and headers, in bytes.
    pub max_head: usize,
    /// Number of header lines.
    pub max_headers: usize,
}

/// A parsed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub method: String,
    /// As sent: origin-form (`/path?q`), or whatever the client wrote, checked later.
    pub target: String,
    pub http10: bool,
    pub headers: Vec<(String, String)>,
    pub body: BodyLength,
    /// The client may send another request on this connection after the answer.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: the client waits for a go-ahead before sending the body.
    pub expect_continue: bool,
}

impl Head {
    /// The first value of a header, by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyLength {
    Empty,
    /// `Content-Length`; a value too large for a u64 is `u64::MAX` (and gets 413).
    Length(u64),
    Chunked,
}

/// Header slots `parse_head` keeps on the stack (32 bytes each).
const HEADERS_ON_STACK: usize = 128;

/// Parses a request head from the start of `buf`. `Ok(None)`: not complete yet, read
/// more. `Ok(Some((head, n)))`: the head took the first `n` bytes. `Err`: the answer to
/// send before closing the connection.
pub fn parse_head(buf: &[u8], limits: Limits) -> Result<Option<(Head, usize)>, Reply> {
    // Room for the parsed headers: on the stack unless --max-headers is unusually high,
    // and never zeroed (httparse writes each one it uses).
    let mut on_stack = [const { MaybeUninit::<httparse::Header>::uninit() }; HEADERS_ON_STACK];
    let mut on_heap = Vec::new();
    let slots = if limits.max_headers <= HEADERS_ON_STACK {
        &mut on_stack[..limits.max_headers]
    } else {
        on_heap.resize(limits.max_headers, MaybeUninit::uninit());
        &mut on_heap[..]
    };
    let mut request = httparse::Request::new(&mut []);
    let parsed = request.parse_with_uninit_headers(buf, slots);
    // httparse takes a bare LF for a line end; a front proxy that does not could read
    // other requests out of the same bytes. The head is all of `buf` until it is complete.
    let head_len = match parsed {
        Ok(httparse::Status::Complete(n)) => n,
        _ => buf.len(),
    };
    if has_bare_lf(&buf[..head_len]) {
        return Err(Reply::new(
            400,
            "a line of the request head ends in a bare LF; HTTP/1.1 lines end in CRLF",
        ));
    }
    let used = match parsed {
        Ok(httparse::Status::Complete(n)) if n <= limits.max_head => n,
        Ok(_) if buf.len() > limits.max_head => return Err(too_large_head(limits)),
        Ok(httparse::Status::Complete(_)) => return Err(too_large_head(limits)),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Reply::new(
                431,
                format!(
                    "the request has more than {} headers (--max-headers)",
                    limits.max_headers
                ),
            ));
        }
        Err(httparse::Error::Version) => return refused_version(buf, limits),
        Err(e) => return Err(Reply::new(400, format!("malformed HTTP request: {e}"))),
    };
    // Complete, so every field is set.
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(Reply::new(400, "malformed HTTP request line"));
    };
    let http10 = version == 0;
    let mut fields = Vec::with_capacity(request.headers.len());
    for h in request.headers.iter() {
        let Ok(value) = std::str::from_utf8(h.value) else {
            return Err(Reply::new(
                400,
                format!("the value of header '{}' is not UTF-8", h.name),
            ));
        };
        fields.push((h.name.to_string(), trim_ows(value).to_string()));
    }
    let body = body_length(&fields, http10)?;
    let count = |name: &str| {
        fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .count()
    };
    // What decides who may use the proxy comes once: with two, one check could read
    // the first and a later one the other (browser.rs reads the first Origin).
    for name in ["Host", "Origin", "Sec-Fetch-Site"] {
        if count(name) > 1 {
            return Err(Reply::new(
                400,
                format!("the request has more than one {name} header"),
            ));
        }
    }
    let hosts = count("host");
    if hosts == 0 && !http10 {
        return Err(Reply::new(
            400,
            "an HTTP/1.1 request needs a Host header (such as Host: localhost:3002)",
        ));
    }
    let keep_alive = !http10
        && !fields
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case("connection"))
            .flat_map(|(_, v)| route::connection_tokens(v))
            .any(|t| t == "close");
    let expect_continue = !http10
        && fields.iter().any(|(n, v)| {
            n.eq_ignore_ascii_case("expect") && v.eq_ignore_ascii_case("100-continue")
        });
    Ok(Some((
        Head {
            method: method.to_string(),
            target: target.to_string(),
            http10,
            headers: fields,
            body,
            keep_alive,
            expect_continue,
        },
        used,
    )))
}

/// Removes optional whitespace (RFC 9110 §5.6.3: SP and HTAB only, never other
/// Unicode spaces such as U+00A0, which then make the value invalid).
pub fn trim_ows(value: &str) -> &str {
    value.trim_matches([' ', '\t'])
}

/// The target of the request line at the start of `buf`, when that line arrived whole,
/// even if the head around it is refused: it picks the error shape of the refusal
/// (`/anthropic/…` gets Anthropic's). `None` when there is no such line.
pub fn request_target(buf: &[u8]) -> Option<&str> {
    let end = buf.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&buf[..end])
        .ok()?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (_method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    (version.starts_with("HTTP/") && parts.next().is_none()).then_some(target)
}

/// Whether a LF comes without the CR before it.
fn has_bare_lf(bytes: &[u8]) -> bool {
    bytes
        .iter()
        .enumerate()
        .any(|(at, b)| *b == b'\n' && (at == 0 || bytes[at - 1] != b'\r'))
}

/// The answer to a request line whose version httparse refused (it takes `HTTP/1.0` and
/// `HTTP/1.1` only): 505 for a well-formed `HTTP/DIGIT.DIGIT` (RFC 9112 §2.3) such as
/// `HTTP/1.2` or `HTTP/2.0`, 400 for anything else. The method and target before it
/// were valid. `Ok(None)`: the line has not ended yet.
fn refused_version(buf: &[u8], limits: Limits) -> Result<Option<(Head, usize)>, Reply> {
    // Empty lines before the request line are CRLFs (a bare LF was refused already).
    let start = buf
        .iter()
        .position(|b| !matches!(b, b'\r' | b'\n'))
        .unwrap_or(buf.len());
    let Some(end) = buf[start..].iter().position(|b| *b == b'\n') else {
        return match buf.len() > limits.max_head {
            true => Err(too_large_head(limits)),
            false => Ok(None),
        };
    };
    let line = buf[start..start + end]
        .strip_suffix(b"\r")
        .unwrap_or_default();
    let version = line.rsplit(|b| *b == b' ').next().unwrap_or_default();
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            let version = String::from_utf8_lossy(version);
            Err(Reply::new(
                505,
                format!("{version} is not supported; send the request as HTTP/1.1"),
            ))
        }
        _ => Err(Reply::new(
            400,
            "malformed HTTP request: the request line does not end in a version such as HTTP/1.1",
        )),
    }
}

fn too_large_head(limits: Limits) -> Reply {
    Reply::new(
        431,
        format!(
            "the request line and headers are larger than {} bytes (--max-header-size)",
            limits.max_head
        ),
    )
}

/// The body's framing, from `Transfer-Encoding` and `Content-Length` (RFC 9112 §6).
fn body_length(headers: &[(String, String)], http10: bool) -> Result<BodyLength, Reply> {
    let values = |name: &str| {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .map(trim_ows)
            .collect::<Vec<_>>()
    };
    let codings = values("transfer-encoding");
    let lengths = values("content-length");
    if !codings.is_empty() {
        if http10 {
            return Err(Reply::new(
                400,
                "Transfer-Encoding is not allowed in an HTTP/1.0 request",
            ));
        }
        if !lengths.is_empty() {
            return Err(Reply::new(
                400,
                "the request has both Content-Length and Transfer-Encoding; send one",
            ));
        }
        if codings.len() != 1 || !codings[0].eq_ignore_ascii_case("chunked") {
            return Err(Reply::new(
                501,
                format!(
                    "Transfer-Encoding '{}' is not supported; send chunked or a Content-Length",
                    codings.join(", ")
                ),
            ));
        }
        return Ok(BodyLength::Chunked);
    }
    let Some(first) = lengths.first() else {
        return Ok(BodyLength::Empty);
    };
    if lengths.iter().any(|l| l != first) {
        return Err(Reply::new(
            400,
            "the request has Content-Length values that differ",
        ));
    }
    if first.is_empty() || !first.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Reply::new(
            400,
            format!("Content-Length '{first}' is not a number of bytes"),
        ));
    }
    // All digits: only overflow can fail, and that is simply too large.
    Ok(BodyLength::Length(first.parse().unwrap_or(u64::MAX)))
}

/// Decodes a chunked body, a piece at a time. Feed it bytes; it says how many it used.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    /// The size line or trailer line being collected.
    line: Vec<u8>,
    /// Trailer bytes seen so far.
    trailers: usize,
    /// Chunk-extension bytes seen so far.
    extensions: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    Trailers,
    Done,
}

/// Longest chunk-size line or trailer line accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Most bytes of trailer lines accepted (they are read and dropped).
const MAX_TRAILERS: usize = 64 * 1024;
/// Most bytes of chunk extensions accepted in one body, all chunks together (they are
/// checked and dropped): hyper's limit, so that tiny chunks cannot make a client's
/// extensions outweigh its data without end.
const MAX_CHUNK_EXTENSIONS: usize = 16 * 1024;

impl Chunked {
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Takes bytes from `input`, appends body data to `out`; returns how many bytes of
    /// `input` were used. Stops at the end of the body (the rest is the next request).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, String> {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                ChunkState::Size | ChunkState::Trailers | ChunkState::DataEnd => {
                    let Some(line) = self.take_line(&input[at..], &mut at)? else {
                        break;
                    };
                    self.state = match self.state {
                        ChunkState::Size => {
                            let (size, extension) = chunk_size(&line)?;
                            self.extensions += extension;
                            if self.extensions > MAX_CHUNK_EXTENSIONS {
                                return Err(format!(
                                    "the chunk extensions are longer than {MAX_CHUNK_EXTENSIONS} bytes in all"
                                ));
                            }
                            match size {
                                0 => ChunkState::Trailers,
                                n => ChunkState::Data(n),
                            }
                        }
                        ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                        ChunkState::DataEnd => {
                            return Err("a chunk is longer than its size says".into());
                        }
                        ChunkState::Trailers if line.is_empty() => ChunkState::Done,
                        ChunkState::Trailers => {
                            if !is_field_line(&line) {
                                return Err(format!(
                                    "bad trailer line '{}'",
                                    String::from_utf8_lossy(&line).escape_debug()
                                ));
                            }
                            self.trailers += line.len() + 2;
                            if self.trailers > MAX_TRAILERS {
                                return Err(format!(
                                    "the trailer lines are longer than {MAX_TRAILERS} bytes"
                                ));
                            }
                            ChunkState::Trailers
                        }
                        other => other,
                    };
                    if self.state == ChunkState::Done {
                        break;
                    }
                }
                ChunkState::Data(left) => {
                    let n = (left.min((input.len() - at) as u64)) as usize;
                    out.extend_from_slice(&input[at..at + n]);
                    at += n;
                    self.state = match left - n as u64 {
                        0 => ChunkState::DataEnd,
                        left => ChunkState::Data(left),
                    };
                }
                ChunkState::Done => break,
            }
        }
        Ok(at)
    }

    /// A complete line (without CRLF) once its end arrived; `at` moves past what was used.
    /// A line must end in CRLF and hold no other CR: a bare LF or CR is refused, since a
    /// front proxy that reads it otherwise would see other chunks in the same bytes.
    fn take_line(&mut self, input: &[u8], at: &mut usize) -> Result<Option<Vec<u8>>, String> {
        // The limit holds wherever the reads happen to split the line.
        let too_long = || Err("a chunk-size or trailer line is too long".to_string());
        match input.iter().position(|b| *b == b'\n') {
            Some(end) => {
                if self.line.len() + end > MAX_CHUNK_LINE + 1 {
                    return too_long();
                }
                self.line.extend_from_slice(&input[..end]);
                *at += end + 1;
                let mut line = std::mem::take(&mut self.line);
                if line.pop() != Some(b'\r') {
                    return Err("a line of the chunked body ends in a bare LF; send CRLF".into());
                }
                if line.contains(&b'\r') {
                    return Err("a line of the chunked body holds a bare CR".into());
                }
                Ok(Some(line))
            }
            None => {
                if self.line.len() + input.len() > MAX_CHUNK_LINE + 1 {
                    return too_long();
                }
                self.line.extend_from_slice(input);
                *at += input.len();
                Ok(None)
            }
        }
    }
}

/// The size in a chunk-size line (`1a2b;name=value`), and how many bytes its extensions
/// took. The line is `1*HEXDIG [ chunk-ext ]` (RFC 9112 §7.1): no sign, no other
/// whitespace, at most 15 digits, and extensions exactly as the grammar says (see
/// [`is_chunk_ext`]); anything else is refused.
fn chunk_size(line: &[u8]) -> Result<(u64, usize), String> {
    let bad = || {
        format!(
            "bad chunk-size line '{}'",
            String::from_utf8_lossy(line).escape_debug()
        )
    };
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    let extension = &line[digits..];
    if digits == 0 || digits > 15 || !is_chunk_ext(extension) {
        return Err(bad());
    }
    // Only hex digits: parsing cannot fail.
    let hex = std::str::from_utf8(&line[..digits]).map_err(|_| bad())?;
    let size = u64::from_str_radix(hex, 16).map_err(|_| bad())?;
    Ok((size, extension.len()))
}

/// Chunk extensions, strictly (RFC 9112 §7.1.1): `*( BWS ";" BWS name [ BWS "=" BWS
/// value ] )`, a name a token, a value a token or a quoted string of visible ASCII,
/// SP and HTAB (no obs-text). Nothing after the last one, not even whitespace.
fn is_chunk_ext(mut rest: &[u8]) -> bool {
    fn skip_ws(s: &[u8]) -> &[u8] {
        let n = s.iter().take_while(|b| matches!(b, b' ' | b'\t')).count();
        &s[n..]
    }
    let token_len = |s: &[u8]| s.iter().take_while(|b| is_tchar(**b)).count();
    while !rest.is_empty() {
        let Some(after) = skip_ws(rest).strip_prefix(b";") else {
            return false;
        };
        let name = skip_ws(after);
        let n = token_len(name);
        if n == 0 {
            return false;
        }
        rest = &name[n..];
        let Some(value) = skip_ws(rest).strip_prefix(b"=") else {
            continue;
        };
        let value = skip_ws(value);
        let n = match value.first() {
            Some(b'"') => quoted_len(value),
            _ => Some(token_len(value)).filter(|n| *n > 0),
        };
        let Some(n) = n else {
            return false;
        };
        rest = &value[n..];
    }
    true
}

/// The length of the quoted string `s` starts with (RFC 9110 §5.6.4), without obs-text.
fn quoted_len(s: &[u8]) -> Option<usize> {
    let mut at = 1;
    loop {
        match *s.get(at)? {
            b'"' => return Some(at + 1),
            b'\\' if matches!(s.get(at + 1)?, b'\t' | b' ' | 0x21..=0x7e) => at += 2,
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e => at += 1,
            _ => return None,
        }
    }
}

/// A token character (RFC 9110 §5.6.2).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A trailer line: `name ":" value`, the name a token, the value without control
/// characters other than HTAB.
fn is_field_line(line: &[u8]) -> bool {
    let name = line.iter().take_while(|b| is_tchar(**b)).count();
    name > 0
        && line.get(name) == Some(&b':')
        && line[name + 1..]
            .iter()
            .all(|b| *b == b'\t' || (*b >= 0x20 && *b != 0x7f))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::Rng;

    const LIMITS: Limits = Limits {
        max_head: 1024,
        max_headers: 8,
    };

    fn parse(text: &str) -> Result<Option<(Head, usize)>, Reply> {
        parse_head(text.as_bytes(), LIMITS)
    }

    #[test]
    fn the_target_of_a_whole_request_line_is_found_in_a_refused_head() {
        let found = |text: &str| request_target(text.as_bytes()).map(str::to_string);
        let anthropic = "POST /anthropic/v1/messages HTTP/1.1\r\nX: \x01bad\r\n";
        assert_eq!(found(anthropic).as_deref(), Some("/anthropic/v1/messages"));
        assert_eq!(found("GET /gemini HTTP/1.0\n").as_deref(), Some("/gemini"));
        // The line has not arrived whole, or is not a request line.
        assert_eq!(found("POST /anthropic/v1/messages HTTP/1.1"), None);
        assert_eq!(found("POST /anthropic/v1/messages\r\n"), None);
        assert_eq!(found("POST /a b HTTP/1.1\r\n"), None);
        assert_eq!(found("SSH-2.0-OpenSSH_9.6\r\n"), None);
        assert_eq!(request_target(b"GET /\xff HTTP/1.1\r\n"), None);
    }

    fn status(text: &str) -> u16 {
        parse(text).expect_err("should be refused").status
    }

    #[test]
    fn a_plain_request_is_parsed_and_keeps_the_connection() {
        let text =
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello";
        let (head, used) = parse(text).unwrap().unwrap();
        assert_eq!(head.method, "POST");
        assert_eq!(head.target, "/v1/chat/completions?x=1");
        assert_eq!(&text[used..], "hello");
        assert_eq!(head.body, BodyLength::Length(5));
        assert!(head.keep_alive && !head.http10 && !head.expect_continue);
        assert_eq!(head.header("content-length"), Some("5"));
    }

    #[test]
    fn a_head_in_pieces_asks_for_more() {
        assert_eq!(parse("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        assert_eq!(parse("GE"), Ok(None));
    }

    #[test]
    fn connection_close_and_http10_end_the_connection() {
        let close = parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Close\r\n\r\n");
        assert!(!close.unwrap().unwrap().0.keep_alive);
        let old = parse("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        let head = old.unwrap().unwrap().0;
        assert!(head.http10 && !head.keep_alive);
    }

    #[test]
    fn heads_over_the_limits_get_431() {
        let long = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(2000));
        assert_eq!(status(&long), 431);
        // Refused before the end arrives: a client cannot make the proxy hold more.
        assert_eq!(status(&long[..1500]), 431);
        let many = format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: 1\r\n".repeat(9));
        assert_eq!(status(&many), 431);
        let eight = format!(
            "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
            "X-A: 1\r\n".repeat(7)
        );
        assert!(parse(&eight).unwrap().is_some());
    }

    #[test]
    fn a_header_limit_above_the_stack_slots_still_counts_exactly() {
        let limits = Limits {
            max_head: 64 * 1024,
            max_headers: HEADERS_ON_STACK + 72,
        };
        let head = |n: usize| {
            format!(
                "GET / HTTP/1.1\r\nHost: a\r\n{}\r\n",
                "X-A: 1\r\n".repeat(n - 1)
            )
        };
        let (parsed, _) = parse_head(head(200).as_bytes(), limits).unwrap().unwrap();
        assert_eq!(parsed.headers.len(), 200);
        let over = parse_head(head(201).as_bytes(), limits).unwrap_err();
        assert_eq!(over.status, 431);
    }

    #[test]
    fn ambiguous_bodies_are_refused_not_guessed() {
        let both = "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(status(both), 400);
        let differ = "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(status(differ), 400);
        assert_eq!(status("POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n"), 400);
        assert_eq!(
            status("POST / HTTP/1.1\r\nContent-Length: 0x10\r\n\r\n"),
            400
        );
        assert_eq!(
            status("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            501
        );
        assert_eq!(
            status("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        let same = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\n";
        assert_eq!(parse(same).unwrap().unwrap().0.body, BodyLength::Length(3));
    }

    #[test]
    fn a_length_beyond_u64_is_simply_too_large() {
        let huge = format!(
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
            "9".repeat(40)
        );
        let head = parse(&huge).unwrap().unwrap().0;
        assert_eq!(head.body, BodyLength::Length(u64::MAX));
    }

    #[test]
    fn control_characters_in_the_target_or_headers_are_refused() {
        assert_eq!(status("GET /a\0b HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET /a\rb HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nX-A: a\0b\r\n\r\n"), 400);
        assert_eq!(status("NOT HTTP AT ALL\r\n\r\n"), 400);
    }

    #[test]
    fn a_well_formed_version_other_than_1_0_or_1_1_gets_505_and_garbage_400() {
        for version in ["HTTP/1.2", "HTTP/1.9", "HTTP/2.0", "HTTP/3.0", "HTTP/0.9"] {
            let text = format!("GET / {version}\r\nHost: a\r\n\r\n");
            let reply = parse(&text).unwrap_err();
            assert_eq!(reply.status, 505, "{version}");
            assert!(reply.message.contains(version), "{}", reply.message);
        }
        // The preface of HTTP/2 with prior knowledge.
        assert_eq!(status("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
        for version in [
            "HTTP/2",
            "HTTP/1.10",
            "HTTP/1.2x",
            "HTTP/a.b",
            "http/1.2",
            "HTTP/1.2 ",
            "HTTP/1,2",
            "HTTP/12.0",
            "HTTPS/1.1",
            "HTTP/1.1\x0b",
        ] {
            let text = format!("GET / {version}\r\nHost: a\r\n\r\n");
            assert_eq!(status(&text), 400, "{version:?}");
        }
        // Decided once the line has ended, not before.
        assert_eq!(parse("GET / HTTP/1.2"), Ok(None));
        assert_eq!(parse("GET / HTTP/2"), Ok(None));
    }

    #[test]
    fn a_bare_lf_anywhere_in_the_head_gets_400() {
        for text in [
            "GET / HTTP/1.1\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n\n",
            "GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\n\r\n",
            "\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.2\nHost: a\r\n\r\n",
            // Refused before the head is complete.
            "GET / HTTP/1.1\r\nHost: a\n",
        ] {
            let reply = parse(text).unwrap_err();
            assert_eq!(reply.status, 400, "{text:?}");
            assert!(reply.message.contains("bare LF"), "{}", reply.message);
        }
        // A body after a complete head is not the head's business.
        let text = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\n\n\n";
        assert_eq!(parse(text).unwrap().unwrap().1, text.len() - 2);
        // Empty lines before the request line are still fine as CRLF.
        assert!(
            parse("\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        assert_eq!(status("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.1\r\nHost: a\r\nhost: b\r\n\r\n"), 400);
        assert_eq!(status("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
        assert!(parse("GET / HTTP/1.0\r\n\r\n").unwrap().is_some());
        assert!(
            parse("GET / HTTP/1.1\r\nHost: a\r\n\r\n")
                .unwrap()
                .is_some()
        );
    }

    #[test]
    fn expect_100_continue_is_noticed() {
        let text =
            "POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n";
        assert!(parse(text).unwrap().unwrap().0.expect_continue);
    }

    /// Any bytes at all: never a panic, never a head over the limits, and a refusal is
    /// always 400, 431, 501 or 505. Inputs are built from request pieces with damage mixed in.
    #[test]
    fn no_input_panics_or_slips_past_the_limits() {
        let pieces = [
            "GET ",
            "POST ",
            "/v1/chat",
            "?a=b",
            " HTTP/1.1",
            " HTTP/1.0",
            "\r\n",
            "\n",
            "Host: x",
            "Content-Length: 12",
            "Content-Length: 99999999999999999999999",
            "Transfer-Encoding: chunked",
            "Connection: close",
            "Expect: 100-continue",
            ":",
            " ",
            "\0",
            "\u{7f}",
            "é",
            "\t",
            "X-A: 1",
            "a".repeat(300).leak(),
        ];
        let mut rng = Rng::new(11);
        for _ in 0..20_000 {
            let text = rng.text(&pieces, 24);
            let mut bytes = text.into_bytes();
            if !bytes.is_empty() && rng.below(4) == 0 {
                let at = rng.below(bytes.len());
                bytes[at] = rng.below(256) as u8;
            }
            match parse_head(&bytes, LIMITS) {
                Ok(Some((head, used))) => {
                    assert!(used <= LIMITS.max_head && used <= bytes.len());
                    assert!(head.headers.len() <= LIMITS.max_headers);
                }
                Ok(None) => assert!(bytes.len() <= LIMITS.max_head),
                Err(reply) => {
                    assert!(matches!(reply.status, 400 | 431 | 501 | 505), "{reply:?}")
                }
            }
        }
    }

    fn decode(pieces: &[&[u8]]) -> Result<(Vec<u8>, Vec<u8>), String> {
        let mut decoder = Chunked::default();
        let mut body = Vec::new();
        let mut rest = Vec::new();
        for piece in pieces {
            let used = decoder.feed(piece, &mut body)?;
            rest.extend_from_slice(&piece[used..]);
        }
        assert!(decoder.is_done(), "the body did not end");
        Ok((body, rest))
    }

    #[test]
    fn chunked_bodies_decode_and_leave_the_next_request() {
        let (body, rest) =
            decode(&[b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nGET"]).unwrap();
        assert_eq!(
            (body.as_slice(), rest.as_slice()),
            (&b"hello world"[..], &b"GET"[..])
        );
        assert!(decode(&[b"zz\r\n"]).is_err());
        assert!(decode(&[b"2\r\nabc\r\n0\r\n\r\n"]).is_err());
        assert!(decode(&[&[b'1'; 5000][..]]).is_err());
    }

    #[test]
    fn only_sp_and_htab_are_trimmed_from_values() {
        let te = "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\u{a0}\r\n\r\n";
        assert_eq!(status(te), 501);
        let cl = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\u{a0}\r\n\r\n";
        assert_eq!(status(cl), 400);
        let tabs = "POST / HTTP/1.1\r\nHost: a\r\nContent-Length:\t5 \t\r\n\r\n";
        assert_eq!(parse(tabs).unwrap().unwrap().0.body, BodyLength::Length(5));
    }

    #[test]
    fn chunk_sizes_are_hex_digits_and_nothing_else() {
        for line in [
            " 5", "+5", "\x0b5", "5\x0b", "5 x", "-5", "0x5", "5\u{a0}", "",
        ] {
            let wire = format!("{line}\r\nhello\r\n0\r\n\r\n");
            assert!(decode(&[wire.as_bytes()]).is_err(), "{line:?}");
        }
        for line in ["5", "5;a=b", "5 ;a", "5\t;a", "05"] {
            let wire = format!("{line}\r\nhello\r\n0\r\n\r\n");
            assert_eq!(decode(&[wire.as_bytes()]).unwrap().0, b"hello", "{line:?}");
        }
    }

    #[test]
    fn chunk_extensions_follow_the_grammar_strictly() {
        for line in [
            "5;a",
            "5;a=b",
            "5 ;a",
            "5\t;a",
            "5;a=\"x y;z=\\\"q\\\"\"",
            "5;a;b=c ; d = e",
            "5;a=\"\"",
            "5;!#$%&'*+-.^_`|~=1",
        ] {
            let wire = format!("{line}\r\nhello\r\n0\r\n\r\n");
            assert_eq!(decode(&[wire.as_bytes()]).unwrap().0, b"hello", "{line:?}");
        }
        for line in [
            "5;",
            "5;;a",
            "5;a=",
            "5;a ",
            "5;a=b ",
            "5;=b",
            "5;a=b=c",
            "5;a=\"unterminated",
            "5;a=\"x\"y",
            "5;a=\"\x01\"",
            "5;a=\"\\\x01\"",
            "5;a=\"\u{e9}\"",
            "5;a\x0bb",
            "5;a b",
            "5;a=b\rc",
            "5;a=\"b\rc\"",
            "5;a,b",
            "5,a",
        ] {
            let wire = format!("{line}\r\nhello\r\n0\r\n\r\n");
            assert!(decode(&[wire.as_bytes()]).is_err(), "{line:?}");
        }
    }

    #[test]
    fn chunk_extensions_are_bounded_in_all() {
        let ext = format!(";a={}", "x".repeat(1000));
        let wire =
            |chunks: usize| format!("{}0\r\n\r\n", format!("1{ext}\r\nx\r\n").repeat(chunks));
        let fits = MAX_CHUNK_EXTENSIONS / ext.len();
        assert_eq!(decode(&[wire(fits).as_bytes()]).unwrap().0.len(), fits);
        let over = decode(&[wire(fits + 1).as_bytes()]).unwrap_err();
        assert!(over.contains("chunk extensions"), "{over}");
    }

    #[test]
    fn chunked_lines_end_in_crlf_and_hold_no_bare_cr() {
        for wire in [
            &b"5\nhello\r\n0\r\n\r\n"[..],
            b"5\r\nhello\n0\r\n\r\n",
            b"5\r\nhello\r\n0\n\r\n",
            b"5\r\nhello\r\n0\r\n\n",
            b"5\r\nhello\r\n0\r\nX-T: 1\n\r\n",
            b"5;a=b\rc\r\nhello\r\n0\r\n\r\n",
            b"5\r\r\nhello\r\n0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nX-T: a\rb\r\n\r\n",
            b"5\r\nhello\r\n0\r\nnot a field\r\n\r\n",
        ] {
            assert!(
                decode(&[wire]).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }

    /// A line over the limit is refused however the reads split it, and one at the limit
    /// is taken however they split it.
    #[test]
    fn the_chunk_line_limit_does_not_depend_on_reads() {
        let mut rng = Rng::new(9);
        for len in [MAX_CHUNK_LINE, MAX_CHUNK_LINE + 1] {
            let wire = format!("5;{}\r\nhello\r\n0\r\n\r\n", "x".repeat(len - 2));
            for _ in 0..50 {
                let mut pieces = Vec::new();
                let mut rest = wire.as_bytes();
                while !rest.is_empty() {
                    let n = (1 + rng.below(6000)).min(rest.len());
                    pieces.push(&rest[..n]);
                    rest = &rest[n..];
                }
                let mut decoder = Chunked::default();
                let mut body = Vec::new();
                let result = pieces
                    .iter()
                    .try_for_each(|p| decoder.feed(p, &mut body).map(|_| ()));
                assert_eq!(result.is_ok(), len == MAX_CHUNK_LINE, "{len}");
            }
        }
        let trailers = format!("0\r\n{}\r\n", "X-T: 1\r\n".repeat(MAX_TRAILERS / 8 + 1));
        assert!(decode(&[trailers.as_bytes()]).is_err());
    }

    /// Any split of a chunked body into pieces decodes to the same bytes.
    #[test]
    fn chunked_decoding_does_not_depend_on_how_bytes_arrive() {
        let mut rng = Rng::new(5);
        for _ in 0..2_000 {
            let mut wire = Vec::new();
            let mut expected = Vec::new();
            for _ in 0..rng.below(5) {
                let data: Vec<u8> = (0..1 + rng.below(40))
                    .map(|_| rng.below(256) as u8)
                    .collect();
                wire.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
                wire.extend_from_slice(&data);
                wire.extend_from_slice(b"\r\n");
                expected.extend_from_slice(&data);
            }
            wire.extend_from_slice(b"0\r\n\r\n");
            let mut pieces = Vec::new();
            let mut rest = wire.as_slice();
            while !rest.is_empty() {
                let n = (1 + rng.below(8)).min(rest.len());
                pieces.push(&rest[..n]);
                rest = &rest[n..];
            }
            let (body, after) = decode(&pieces).unwrap();
            assert_eq!(body, expected);
            assert!(after.is_empty());
        }
    }
}
