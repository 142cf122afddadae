//! What the proxy prints, in a form the reader's console shows: UTF-8, or plain ASCII
//! (`->` for `→`, `...` for `…`, `?` for other non-ASCII) where UTF-8 would come out
//! garbled. That is Windows PowerShell 5.1 capturing or piping our output: it decodes it
//! with the console's code page (437, 850, …), not UTF-8. A console itself is fine (Rust
//! writes to it in UTF-16), and so is a file.
//!
//! The choice is made once at start ([`init`]); `ROO_PROXY_ASCII=1` forces ASCII and
//! `ROO_PROXY_ASCII=0` forces UTF-8. Everything the proxy prints goes through [`plain`]:
//! its lines by [`outln!`]/[`errln!`], its logs by [`Ascii`].

use std::borrow::Cow;
use std::fmt;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static ASCII: AtomicBool = AtomicBool::new(false);

/// Decides once whether output is plain ASCII, from `ROO_PROXY_ASCII` and the console.
pub fn init(setting: Option<&str>) {
    use std::io::IsTerminal;
    let captured = !io::stdout().is_terminal();
    ASCII.store(
        wants_ascii(setting, captured, console_code_page()),
        Ordering::Relaxed,
    );
}

/// Whether output should be ASCII: as `ROO_PROXY_ASCII` says (1/true/yes or 0/false/no),
/// else when it is captured (not written to a console) while the console's output code
/// page is one other than UTF-8 (65001). `code_page` is None without a console (a
/// service, a log file): UTF-8 then.
pub fn wants_ascii(setting: Option<&str>, captured: bool, code_page: Option<u32>) -> bool {
    match setting.map(|s| s.trim().to_ascii_lowercase()).as_deref() {
        Some("1" | "true" | "yes" | "on") => return true,
        Some("0" | "false" | "no" | "off") => return false,
        _ => {}
    }
    captured && code_page.is_some_and(|cp| cp != 65001)
}

/// `text` as the console can show it.
pub fn plain(text: &str) -> Cow<'_, str> {
    if !ascii() {
        return Cow::Borrowed(text);
    }
    to_ascii(text)
}

/// `text` with `→` as `->`, `…` as `...`, `·` as `-`, and other non-ASCII as `?`.
pub fn to_ascii(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '→' => out.push_str("->"),
            '…' => out.push_str("..."),
            '·' => out.push('-'),
            c if c.is_ascii() => out.push(c),
            _ => out.push('?'),
        }
    }
    Cow::Owned(out)
}

/// A writer that passes what it is given through [`to_ascii`]; the log's, in ASCII mode.
/// Each write is one whole log record (env_logger writes a record at once), so no
/// character is split between writes.
pub struct Ascii<W>(pub W);

impl<W: Write> Write for Ascii<W> {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match std::str::from_utf8(bytes) {
            Ok(text) => self.0.write_all(to_ascii(text).as_bytes())?,
            Err(_) => self.0.write_all(bytes)?,
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// Whether [`init`] chose ASCII.
pub fn ascii() -> bool {
    ASCII.load(Ordering::Relaxed)
}

/// `println!` through [`plain`].
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::front::console::out(format_args!($($arg)*))
    };
}

/// `eprintln!` through [`plain`].
macro_rules! errln {
    ($($arg:tt)*) => {
        $crate::front::console::err(format_args!($($arg)*))
    };
}

/// One line to standard output, through [`plain`]. A function, not macro code, so each
/// of the many call sites stays as small as a `println!`.
pub fn out(line: fmt::Arguments<'_>) {
    println!("{}", plain(&line.to_string()));
}

/// One line to standard error, through [`plain`].
pub fn err(line: fmt::Arguments<'_>) {
    eprintln!("{}", plain(&line.to_string()));
}

pub(crate) use {errln, outln};

/// The output code page of the console this process is attached to; None without one.
#[cfg(windows)]
#[allow(unsafe_code)]
fn console_code_page() -> Option<u32> {
    // SAFETY: takes no arguments and only reads the console's state; 0 means no console.
    let code_page = unsafe { windows_sys::Win32::System::Console::GetConsoleOutputCP() };
    (code_page != 0).then_some(code_page)
}

/// Unix consoles take UTF-8 as it is.
#[cfg(not(windows))]
fn console_code_page() -> Option<u32> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_output_on_a_legacy_code_page_is_ascii() {
        assert!(wants_ascii(None, true, Some(437)));
        assert!(wants_ascii(None, true, Some(850)));
        // UTF-8 code page, a console, or no console at all: UTF-8.
        assert!(!wants_ascii(None, true, Some(65001)));
        assert!(!wants_ascii(None, false, Some(437)));
        assert!(!wants_ascii(None, true, None));
    }

    #[test]
    fn the_variable_wins_both_ways() {
        assert!(wants_ascii(Some("1"), false, None));
        assert!(wants_ascii(Some(" Yes "), false, Some(65001)));
        assert!(!wants_ascii(Some("0"), true, Some(437)));
        // Anything else leaves the choice to the console.
        assert!(wants_ascii(Some(""), true, Some(437)));
    }

    #[test]
    fn ascii_keeps_meaning_and_length_bounded() {
        assert_eq!(
            to_ascii("POST /v1 → 200, key sk-or-v1-ab…9f3c · café"),
            "POST /v1 -> 200, key sk-or-v1-ab...9f3c - caf?"
        );
        assert!(matches!(to_ascii("plain"), Cow::Borrowed("plain")));
    }

    #[test]
    fn the_log_writer_writes_ascii() {
        let mut out = Ascii(Vec::new());
        out.write_all("a → b…\n".as_bytes()).unwrap();
        assert_eq!(out.0, b"a -> b...\n");
    }
}
