//! The encrypted keys file: the age v1 format (<https://age-encryption.org/v1>) with one
//! passphrase (scrypt) recipient, ASCII-armored, so `age -d` and `rage -d` open it too.
//!
//! Only what a keys file needs is implemented, on `ring` (already built for TLS:
//! ChaCha20-Poly1305, HKDF-SHA256, HMAC-SHA256, random bytes) and the `scrypt` crate:
//! the `age` crate would add 341 KiB to the release binary, this 76 KiB with the keychain
//! code (ARCHITECTURE.md, "Why not the age crate").
//! Reading accepts binary or armored files with a single scrypt stanza, as age itself
//! requires for passphrase files.
//!
//! Invariants: decrypted text lives only in [`Zeroizing`] buffers, and the file key in a
//! [`Seal`] that wipes it when dropped. A file whose header MAC or any chunk fails to
//! authenticate gives an error, never partial text. A rewrite keeps the header (same
//! passphrase, same file key) and draws a fresh payload nonce, as age's payload key
//! derivation intends, so changing a key costs no second scrypt run.

use std::fmt;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};
use zeroize::{Zeroize, Zeroizing};

const VERSION_LINE: &str = "age-encryption.org/v1";
const ARMOR_BEGIN: &str = "-----BEGIN AGE ENCRYPTED FILE-----";
const ARMOR_END: &str = "-----END AGE ENCRYPTED FILE-----";
const SCRYPT_LABEL: &[u8] = b"age-encryption.org/v1/scrypt";
const CHUNK: usize = 64 * 1024;
const TAG: usize = 16;

/// The scrypt work factor (log2 N) for a passphrase a person chose: age's own default
/// (about a second, 256 MiB).
pub const WORK_PASSPHRASE: u8 = 18;
/// The work factor for a secret we generated (256 random bits): guessing is hopeless at
/// any cost, so opening stays instant.
pub const WORK_GENERATED: u8 = 10;
/// The largest work factor we run on a file we did not write (age's own limit is 22;
/// 20 is 1 GiB of memory already).
const WORK_MAX: u8 = 20;

/// Why a sealed file did not open.
#[derive(Debug, PartialEq, Eq)]
pub enum SealError {
    /// The passphrase does not open the file (or the header was changed).
    WrongSecret,
    /// Not an age file we can read: what is wrong with it.
    Format(String),
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SealError::WrongSecret => f.write_str("the passphrase does not open it"),
            SealError::Format(detail) => write!(f, "it is not a readable age file: {detail}"),
        }
    }
}

fn format_error(detail: impl Into<String>) -> SealError {
    SealError::Format(detail.into())
}

/// Whether `bytes` look like an age file (binary or armored), encrypted or not readable
/// as JSON: the caller then needs a secret.
pub fn is_sealed(bytes: &[u8]) -> bool {
    let start = bytes.trim_ascii_start();
    start.starts_with(b"age-encryption.org/") || start.starts_with(ARMOR_BEGIN.as_bytes())
}

/// What opens a file and writes it back the same way: its header and the file key the
/// passphrase unwrapped from it. The key is wiped when this is dropped.
pub struct Seal {
    header: Vec<u8>,
    file_key: Zeroizing<[u8; 16]>,
}

impl fmt::Debug for Seal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Seal(…)")
    }
}

impl Seal {
    /// A new file key for `passphrase`, wrapped with scrypt at `work` (log2 N).
    pub fn new(passphrase: &str, work: u8) -> Result<Seal, SealError> {
        let mut file_key = Zeroizing::new([0u8; 16]);
        let mut salt = [0u8; 16];
        random(&mut file_key[..])?;
        random(&mut salt)?;
        let wrap_key = scrypt_key(passphrase, &salt, work)?;
        let mut body = file_key.to_vec();
        aead(&wrap_key[..])?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::empty(),
                &mut body,
            )
            .map_err(|_| format_error("cannot wrap the file key"))?;
        let mut header = format!(
            "{VERSION_LINE}\n-> scrypt {} {work}\n{}\n---",
            base64_encode(&salt),
            base64_encode(&body)
        )
        .into_bytes();
        let mac = header_mac(&file_key, &header)?;
        header.extend_from_slice(format!(" {}\n", base64_encode(mac.as_ref())).as_bytes());
        Ok(Seal { header, file_key })
    }

    /// Opens `bytes` with `passphrase`: the seal to write it back with, and the text.
    pub fn open(passphrase: &str, bytes: &[u8]) -> Result<(Seal, Zeroizing<Vec<u8>>), SealError> {
        let binary = dearmor(bytes)?;
        let parsed = parse_header(&binary)?;
        let wrap_key = scrypt_key(passphrase, &parsed.salt, parsed.work)?;
        let mut body = parsed.body.clone();
        let file_key: [u8; 16] = aead(&wrap_key[..])?
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::empty(),
                &mut body,
            )
            .map_err(|_| SealError::WrongSecret)?
            .try_into()
            .map_err(|_| format_error("the wrapped file key has the wrong length"))?;
        let seal = Seal {
            header: binary[..parsed.header_len].to_vec(),
            file_key: Zeroizing::new(file_key),
        };
        body.zeroize();
        let text = seal.open_with_key(&binary)?;
        Ok((seal, text))
    }

    /// Opens `bytes` with the file key already known, when the file still has this seal's
    /// header (every rewrite keeps it); `None` when the header differs.
    pub fn reopen(&self, bytes: &[u8]) -> Option<Result<Zeroizing<Vec<u8>>, SealError>> {
        let binary = match dearmor(bytes) {
            Ok(binary) => binary,
            Err(e) => return Some(Err(e)),
        };
        if !binary.starts_with(&self.header) {
            return None;
        }
        Some(self.open_with_key(&binary))
    }

    fn open_with_key(&self, binary: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let (mac_at, mac) = header_mac_field(&self.header)?;
        let expected = header_mac(&self.file_key, &self.header[..mac_at])?;
        if expected.as_ref() != mac.as_slice() {
            return Err(SealError::WrongSecret);
        }
        let payload = &binary[self.header.len()..];
        if payload.len() < 16 {
            return Err(format_error("the payload is cut short"));
        }
        let (nonce, mut chunks) = payload.split_at(16);
        let key = payload_key(&self.file_key, nonce)?;
        let mut text = Zeroizing::new(Vec::with_capacity(chunks.len()));
        let mut counter = 0u64;
        loop {
            let last = chunks.len() <= CHUNK + TAG;
            let (chunk, rest) = chunks.split_at(chunks.len().min(CHUNK + TAG));
            if chunk.len() < TAG || (last && chunk.len() == TAG && counter > 0) {
                return Err(format_error("the payload is cut short"));
            }
            let mut buffer = Zeroizing::new(chunk.to_vec());
            let opened = key
                .open_in_place(stream_nonce(counter, last), Aad::empty(), &mut buffer)
                .map_err(|_| {
                    format_error("the payload does not authenticate (damaged or cut short)")
                })?;
            text.extend_from_slice(opened);
            if last {
                return Ok(text);
            }
            chunks = rest;
            counter += 1;
        }
    }

    /// The armored age file holding `text`, under this seal's header with a fresh nonce.
    pub fn seal(&self, text: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; 16];
        random(&mut nonce)?;
        let key = payload_key(&self.file_key, &nonce)?;
        let mut binary = self.header.clone();
        binary.extend_from_slice(&nonce);
        let mut pieces: Vec<&[u8]> = text.chunks(CHUNK).collect();
        if pieces.is_empty() {
            pieces.push(&[]);
        }
        let count = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            let mut chunk = piece.to_vec();
            key.seal_in_place_append_tag(
                stream_nonce(i as u64, i + 1 == count),
                Aad::empty(),
                &mut chunk,
            )
            .map_err(|_| format_error("cannot encrypt"))?;
            binary.extend_from_slice(&chunk);
        }
        Ok(armor(&binary))
    }
}

fn random(out: &mut [u8]) -> Result<(), SealError> {
    SystemRandom::new()
        .fill(out)
        .map_err(|_| format_error("the system has no random numbers to give"))
}

/// A passphrase of 256 random bits, as 64 hex digits (easy to paste into `age -d`).
pub fn generate_passphrase() -> Result<Zeroizing<String>, SealError> {
    let mut bytes = Zeroizing::new([0u8; 32]);
    random(&mut bytes[..])?;
    let mut text = Zeroizing::new(String::with_capacity(64));
    for b in bytes.iter() {
        text.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        text.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    Ok(text)
}

fn aead(key: &[u8]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&CHACHA20_POLY1305, key)
        .map(LessSafeKey::new)
        .map_err(|_| format_error("bad key length"))
}

/// STREAM nonce: 11-byte big-endian chunk counter, then 1 for the last chunk.
fn stream_nonce(counter: u64, last: bool) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[3..11].copy_from_slice(&counter.to_be_bytes());
    nonce[11] = u8::from(last);
    Nonce::assume_unique_for_key(nonce)
}

struct Len(usize);

impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn hkdf_sha256(ikm: &[u8], salt: &[u8], info: &[u8]) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let mut out = Zeroizing::new([0u8; 32]);
    hkdf::Salt::new(hkdf::HKDF_SHA256, salt)
        .extract(ikm)
        .expand(&[info], Len(32))
        .and_then(|okm| okm.fill(&mut out[..]))
        .map_err(|_| format_error("key derivation failed"))?;
    Ok(out)
}

fn payload_key(file_key: &[u8; 16], nonce: &[u8]) -> Result<LessSafeKey, SealError> {
    aead(&hkdf_sha256(file_key, nonce, b"payload")?[..])
}

fn header_mac(file_key: &[u8; 16], header_to_dashes: &[u8]) -> Result<hmac::Tag, SealError> {
    let key = hkdf_sha256(file_key, &[], b"header")?;
    Ok(hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &key[..]),
        header_to_dashes,
    ))
}

fn scrypt_key(passphrase: &str, salt: &[u8], work: u8) -> Result<Zeroizing<[u8; 32]>, SealError> {
    let mut full_salt = SCRYPT_LABEL.to_vec();
    full_salt.extend_from_slice(salt);
    let params = scrypt::Params::new(work, 8, 1, 32)
        .map_err(|_| format_error(format!("scrypt work factor {work} is out of range")))?;
    let mut out = Zeroizing::new([0u8; 32]);
    scrypt::scrypt(passphrase.as_bytes(), &full_salt, &params, &mut out[..])
        .map_err(|_| format_error("scrypt failed"))?;
    Ok(out)
}

struct Header {
    salt: Vec<u8>,
    work: u8,
    body: Vec<u8>,
    /// Bytes up to and including the MAC line's newline.
    header_len: usize,
}

/// Reads the header of a binary age file with one scrypt stanza.
fn parse_header(binary: &[u8]) -> Result<Header, SealError> {
    let mut at = 0;
    let mut line = || -> Result<&[u8], SealError> {
        let rest = &binary[at..];
        let end = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| format_error("the header is cut short"))?;
        at += end + 1;
        Ok(&rest[..end])
    };
    let version = line()?;
    if version != VERSION_LINE.as_bytes() {
        return Err(format_error(format!(
            "unsupported version '{}'",
            String::from_utf8_lossy(version)
        )));
    }
    let stanza = line()?;
    let args: Vec<&[u8]> = stanza.split(|&b| b == b' ').collect();
    match args.as_slice() {
        [b"->", b"scrypt", salt, work] => {
            let salt = base64_decode(salt).filter(|s| s.len() == 16);
            let salt = salt.ok_or_else(|| format_error("the scrypt salt is malformed"))?;
            let work = std::str::from_utf8(work)
                .ok()
                .filter(|w| !w.starts_with('0'))
                .and_then(|w| w.parse::<u8>().ok())
                .ok_or_else(|| format_error("the scrypt work factor is malformed"))?;
            if work == 0 || work > WORK_MAX {
                return Err(format_error(format!(
                    "scrypt work factor {work} is above {WORK_MAX} (too slow to try)"
                )));
            }
            let body = line()?;
            let body = base64_decode(body)
                .filter(|b| b.len() == 32)
                .ok_or_else(|| format_error("the scrypt stanza body is malformed"))?;
            let mac_line = line()?;
            if !mac_line.starts_with(b"--- ") {
                return Err(format_error(
                    "the file is not encrypted with a passphrase alone (age allows no other recipient beside one)",
                ));
            }
            Ok(Header {
                salt,
                work,
                body,
                header_len: at,
            })
        }
        [b"->", kind, ..] => Err(format_error(format!(
            "it is encrypted to a '{}' recipient; roo-proxy opens passphrase (scrypt) files only",
            String::from_utf8_lossy(kind)
        ))),
        _ => Err(format_error("the header has no recipient stanza")),
    }
}

/// The MAC line of a header ending in `--- <mac>\n`: where `---` ends, and the MAC.
fn header_mac_field(header: &[u8]) -> Result<(usize, Vec<u8>), SealError> {
    let body = header.strip_suffix(b"\n").unwrap_or(header);
    let dashes = body
        .windows(4)
        .rposition(|w| w == b"\n---")
        .ok_or_else(|| format_error("the header has no MAC"))?
        + 4;
    let mac = body[dashes..]
        .strip_prefix(b" ")
        .and_then(base64_decode)
        .filter(|m| m.len() == 32)
        .ok_or_else(|| format_error("the header MAC is malformed"))?;
    Ok((dashes, mac))
}

/// Binary age bytes from a binary or armored file.
fn dearmor(bytes: &[u8]) -> Result<Vec<u8>, SealError> {
    let trimmed = bytes.trim_ascii();
    let Some(inside) = trimmed.strip_prefix(ARMOR_BEGIN.as_bytes()) else {
        return Ok(bytes.to_vec());
    };
    let inside = inside
        .strip_suffix(ARMOR_END.as_bytes())
        .ok_or_else(|| format_error("the armor has no end line"))?;
    let text: Vec<u8> = inside
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let unpadded = text
        .strip_suffix(b"==")
        .or_else(|| text.strip_suffix(b"="))
        .unwrap_or(&text);
    base64_decode(unpadded).ok_or_else(|| format_error("the armor is not valid base64"))
}

/// The armored form: padded base64 in 64-column lines between the marker lines.
fn armor(binary: &[u8]) -> Vec<u8> {
    let mut encoded = base64_encode(binary);
    while !encoded.len().is_multiple_of(4) {
        encoded.push('=');
    }
    let mut out = String::with_capacity(encoded.len() + encoded.len() / 64 + 80);
    out.push_str(ARMOR_BEGIN);
    out.push('\n');
    for line in encoded.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(ARMOR_END);
    out.push('\n');
    out.into_bytes()
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 without padding, as age's header uses it.
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for group in bytes.chunks(3) {
        let n = group
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..=group.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

/// Decodes unpadded standard base64; `None` for anything else, including non-canonical
/// trailing bits (age requires canonical encodings).
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for group in text.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in group.iter().enumerate() {
            let v = ALPHABET.iter().position(|&a| a == c)? as u32;
            n |= v << (18 - 6 * i);
        }
        let bytes = group.len() - 1;
        if n & ((1u32 << (24 - 8 * bytes)) - 1) != 0 {
            return None;
        }
        for i in 0..bytes {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips_and_rejects_non_canonical_text() {
        for len in 0..70 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base64_encode(&bytes);
            assert!(!text.contains('='));
            assert_eq!(base64_decode(text.as_bytes()).unwrap(), bytes, "{len}");
        }
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64_encode(b"fo"), "Zm8");
        assert_eq!(base64_decode(b"Zm9"), None, "non-canonical trailing bits");
        assert_eq!(base64_decode(b"Zm8="), None, "padding");
        assert_eq!(base64_decode(b"Z"), None);
    }

    #[test]
    fn text_sealed_opens_with_the_passphrase_only() {
        let seal = Seal::new("correct horse", 2).unwrap();
        let file = seal.seal(b"{\"keys\":[]}\n").unwrap();
        assert!(is_sealed(&file));
        assert!(file.starts_with(ARMOR_BEGIN.as_bytes()));
        let (_, text) = Seal::open("correct horse", &file).unwrap();
        assert_eq!(&text[..], b"{\"keys\":[]}\n");
        assert_eq!(
            Seal::open("wrong horse", &file).unwrap_err(),
            SealError::WrongSecret
        );
    }

    #[test]
    fn every_size_round_trips_across_chunk_boundaries() {
        let seal = Seal::new("p", 1).unwrap();
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 5] {
            let text: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let file = seal.seal(&text).unwrap();
            assert_eq!(
                &seal.reopen(&file).unwrap().unwrap()[..],
                &text[..],
                "{len}"
            );
            assert_eq!(&Seal::open("p", &file).unwrap().1[..], &text[..], "{len}");
        }
    }

    #[test]
    fn a_rewrite_keeps_the_header_and_changes_the_payload() {
        let seal = Seal::new("p", 1).unwrap();
        let a = dearmor(&seal.seal(b"same").unwrap()).unwrap();
        let b = dearmor(&seal.seal(b"same").unwrap()).unwrap();
        assert_eq!(a[..seal.header.len()], b[..seal.header.len()]);
        assert_ne!(a, b, "a fresh nonce each time");
        let other = Seal::new("p", 1).unwrap();
        assert!(other.reopen(&armor(&a)).is_none(), "another header");
    }

    #[test]
    fn damage_anywhere_is_refused() {
        let seal = Seal::new("p", 1).unwrap();
        let binary = dearmor(&seal.seal(&vec![7u8; CHUNK + 10]).unwrap()).unwrap();
        for at in [
            5,
            30,
            seal.header.len() - 3,
            seal.header.len() + 3,
            binary.len() - 1,
        ] {
            let mut bad = binary.clone();
            bad[at] ^= 1;
            assert!(Seal::open("p", &bad).is_err(), "byte {at}");
        }
        // Cut at a chunk boundary: the first chunk is not marked last.
        let cut = &binary[..seal.header.len() + 16 + CHUNK + TAG];
        assert!(Seal::open("p", cut).is_err());
        assert!(Seal::open("p", &binary[..binary.len() - 20]).is_err());
    }

    /// A file `age -p` made (Go age 1.1, passphrase "roo-proxy test"): the format is
    /// age's, not ours.
    #[test]
    fn opens_a_file_written_by_age() {
        let file = include_bytes!("../../tests/fixtures/age-cli.age");
        let (_, text) = Seal::open("roo-proxy test", file).unwrap();
        assert_eq!(&text[..], b"made by the age command\n");
    }

    #[test]
    fn other_recipients_are_named_in_the_error() {
        let file = b"age-encryption.org/v1\n-> X25519 abc\nAAAA\n--- AAAA\n";
        match Seal::open("p", file).unwrap_err() {
            SealError::Format(detail) => assert!(detail.contains("'X25519' recipient")),
            other => panic!("{other:?}"),
        }
    }
}
