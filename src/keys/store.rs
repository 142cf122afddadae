//! The keys file: reading, validating, and (for `roo-proxy keys`) changing it safely.
//!
//! Two formats are read: a JSON array of key strings (what the old Node script and the
//! PowerShell helpers used) and `{"keys":[{"key":"…","label":"…"}]}`; the object form is
//! written. Files the helpers wrote with Windows PowerShell may start with a UTF-8
//! byte-order mark or be UTF-16; both are accepted.
//!
//! Invariants: a file that does not parse is reported with its path (and line and column
//! for JSON syntax) and never rewritten. Every write holds an exclusive lock on
//! `<file>.lock` (so writers in several processes are serialised) and replaces the file
//! atomically (temporary file in the same folder, synced, renamed over), so a crash at
//! any moment leaves the old file or the new one. Fields we do not know survive a rewrite.

use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use zeroize::{Zeroize, Zeroizing};

use crate::keys::key::{ApiKey, KeyProblem};
use crate::keys::sealed;
pub use crate::keys::sealed::Seal;
use crate::keys::secret::{self, Ask};
use crate::rotation::provider::{self, Provider};

/// One key of the pool, as the keys file describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyEntry {
    pub key: ApiKey,
    pub label: Option<String>,
    /// Keys of one account share its rate limits (OpenRouter limits per account).
    pub account: Option<String>,
    /// Set by `roo-proxy keys disable`: never used until enabled again.
    pub disabled: bool,
    /// Set by `roo-proxy keys enable`: a new value clears the key's rest or invalid mark
    /// in a running proxy.
    pub enabled_at: Option<u64>,
    /// The provider the key is for; `None`: `--provider`'s (the default pool).
    pub provider: Option<Provider>,
    /// The pool the key serves in (a URL path token, see [`check_pool_name`]); `None`:
    /// the pool named after its provider.
    pub pool: Option<String>,
}

impl KeyEntry {
    /// A plain entry: a key and nothing else.
    pub fn bare(key: ApiKey) -> KeyEntry {
        KeyEntry {
            key,
            label: None,
            account: None,
            disabled: false,
            enabled_at: None,
            provider: None,
            pool: None,
        }
    }
}

impl KeyEntry {
    /// How logs and messages name this key: its label and masked form, or the masked form.
    pub fn name(&self) -> String {
        match &self.label {
            Some(label) => format!("'{label}' ({})", self.key),
            None => self.key.masked(),
        }
    }
}

/// Where the pool came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    File,
    /// No keys file; this environment variable supplied the keys.
    Env(&'static str),
    /// No keys file and no variable: an empty pool.
    Nothing,
}

/// The variables that supply keys when there is no keys file, in the order they are asked.
pub const KEY_VARIABLES: [&str; 2] = ["ROO_PROXY_KEYS", "OPENROUTER_API_KEY"];

/// What was read.
#[derive(Debug)]
pub struct KeysFile {
    /// Absolute, so messages say exactly which file was meant.
    pub path: PathBuf,
    pub source: Source,
    pub entries: Vec<KeyEntry>,
    /// Things worth telling the user that did not stop loading (duplicates, permissions).
    pub warnings: Vec<String>,
    /// The file's bytes as read (empty without a file), to notice when it changes.
    pub bytes: Vec<u8>,
    /// What opened the file, when it is encrypted (see [`parse_file`]).
    pub seal: Option<Seal>,
}

#[derive(Debug)]
pub enum StoreError {
    Read {
        path: PathBuf,
        source: io::Error,
    },
    Encoding {
        path: PathBuf,
        detail: &'static str,
    },
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        detail: String,
    },
    Shape {
        path: PathBuf,
        detail: String,
    },
    Env {
        variable: &'static str,
        detail: String,
    },
    Lock {
        path: PathBuf,
        source: io::Error,
    },
    /// The keys file's folder does not exist, or cannot be created.
    Folder {
        path: PathBuf,
        source: io::Error,
    },
    Write {
        path: PathBuf,
        source: io::Error,
    },
    /// An encrypted keys file that could not be opened: why, where we looked, what to do.
    Locked {
        path: PathBuf,
        detail: String,
    },
}

const FORMAT_HINT: &str = r#"expected ["sk-or-…", {"key":"AIza…","provider":"gemini"}, …] or {"keys":[{"key":"sk-or-…","label":"optional name","provider":"openrouter","pool":"optional name"}]}"#;

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Read { path, source } if NotAFile::is(source) => write!(
                f,
                "cannot read keys file '{}': {source}; give the path of a keys file (--keys-file or ROO_PROXY_KEYS_FILE)",
                path.display()
            ),
            StoreError::Read { path, source } => {
                write!(f, "cannot read keys file '{}': {source}", path.display())
            }
            StoreError::Encoding { path, detail } => write!(
                f,
                "keys file '{}' is not valid text: {detail}; save it as UTF-8",
                path.display()
            ),
            StoreError::Syntax {
                path,
                line,
                column,
                detail,
            } => write!(
                f,
                "keys file '{}' is not valid JSON at line {line}, column {column}: {detail}",
                path.display()
            ),
            StoreError::Shape { path, detail } => {
                write!(f, "keys file '{}': {detail}; {FORMAT_HINT}", path.display())
            }
            StoreError::Env { variable, detail } => {
                write!(f, "{variable}: {detail}; expected keys separated by commas")
            }
            StoreError::Lock { path, source } if NotAFile::is(source) => write!(
                f,
                "cannot lock '{}': {source}; remove it (roo-proxy creates it as a file)",
                path.display()
            ),
            StoreError::Lock { path, source } => {
                write!(f, "cannot lock '{}': {source}", path.display())
            }
            StoreError::Folder { path, source } => write!(
                f,
                "the keys file's folder '{}' cannot be used ({source}); create it, add a key with `roo-proxy keys add` (which creates it), or give another file with --keys-file",
                path.display()
            ),
            StoreError::Write { path, source } => {
                write!(f, "cannot write '{}': {source}", path.display())
            }
            StoreError::Locked { path, detail } => {
                write!(
                    f,
                    "keys file '{}' is encrypted and {detail}",
                    path.display()
                )
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// Makes `path` absolute against the current directory, without touching the file system
/// (the file may not exist yet).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// `<file><suffix>` beside the file: `keys.json` → `keys.json.lock`.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// The largest keys file read: 10,000 keys take about 1 MiB. Anything larger is not a
/// keys file (a device such as /dev/zero, a log), and reading it whole could exhaust
/// memory.
pub const LARGEST_KEYS_FILE: u64 = 16 * 1024 * 1024;

/// Reads the keys file's bytes, refusing one larger than [`LARGEST_KEYS_FILE`] and
/// anything but a regular file ([`open_regular`]).
pub fn read_bounded(path: &Path) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    open_regular(path)?
        .take(LARGEST_KEYS_FILE + 1)
        .read_to_end(&mut bytes)?;
    if bytes.len() as u64 > LARGEST_KEYS_FILE {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "it is larger than {} MiB, far more than any keys file; check the path",
                LARGEST_KEYS_FILE / (1024 * 1024)
            ),
        ));
    }
    Ok(bytes)
}

/// The error of a path that names something other than a regular file (see
/// [`open_regular`]): what it is, such as "a FIFO (named pipe)".
#[derive(Debug)]
pub struct NotAFile(pub &'static str);

impl fmt::Display for NotAFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "it is {}, not a regular file", self.0)
    }
}

impl std::error::Error for NotAFile {}

impl NotAFile {
    /// Whether `e` is this error.
    pub fn is(e: &io::Error) -> bool {
        e.get_ref().is_some_and(|inner| inner.is::<NotAFile>())
    }
}

/// `Ok` for a regular file, else [`NotAFile`] naming what it is.
fn regular(metadata: &fs::Metadata) -> io::Result<()> {
    let kind = metadata.file_type();
    let what = if kind.is_file() {
        return Ok(());
    } else if kind.is_dir() {
        "a folder"
    } else {
        special_kind(&kind)
    };
    Err(io::Error::new(io::ErrorKind::InvalidInput, NotAFile(what)))
}

#[cfg(unix)]
fn special_kind(kind: &fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_fifo() {
        "a FIFO (named pipe)"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_char_device() {
        "a character device"
    } else if kind.is_block_device() {
        "a block device"
    } else {
        "a special file"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &fs::FileType) -> &'static str {
    "a device or pipe"
}

/// Opens `path` for reading if it is a regular file; anything else (a FIFO, socket,
/// device or folder) is refused with [`NotAFile`]. The open cannot block: on Unix it is
/// made with `O_NONBLOCK` (a FIFO without a writer would wait forever) and the type is
/// checked on the open file, so swapping the file between the checks changes nothing.
pub fn open_regular(path: &Path) -> io::Result<File> {
    // A socket cannot be opened at all: name it (and any other kind) before trying.
    if let Ok(metadata) = fs::metadata(path) {
        regular(&metadata)?;
    }
    let mut options = fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    regular(&file.metadata()?)?;
    Ok(file)
}

/// Reads the keys file at `path`. A missing file gives an empty pool, not an error.
pub fn load(path: &Path) -> Result<KeysFile, StoreError> {
    let path = absolute(path);
    let bytes = match read_bounded(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(KeysFile {
                path,
                source: Source::Nothing,
                entries: Vec::new(),
                warnings: Vec::new(),
                bytes: Vec::new(),
                seal: None,
            });
        }
        Err(source) => return Err(StoreError::Read { path, source }),
    };
    let mut seal = None;
    let (document, entries, mut warnings) = parse_file(&path, &bytes, &mut seal, Ask::Terminal)?;
    scrub(document);
    warnings.extend(permission_warning(&path));
    Ok(KeysFile {
        path,
        source: Source::File,
        entries,
        warnings,
        bytes,
        seal,
    })
}

/// Like [`load`], but when there is no keys file the keys come from the first of
/// [`KEY_VARIABLES`] that is set (comma-separated), so CI can run without a file.
pub fn load_with_env(
    path: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<KeysFile, StoreError> {
    let mut file = load(path)?;
    if file.source != Source::Nothing {
        return Ok(file);
    }
    for variable in KEY_VARIABLES {
        let Some(value) = env(variable).filter(|v| !v.trim().is_empty()) else {
            continue;
        };
        let mut entries: Vec<KeyEntry> = Vec::new();
        for (i, raw) in value
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .enumerate()
        {
            let key = ApiKey::parse(raw).map_err(|problem| StoreError::Env {
                variable,
                detail: format!("key {}: {problem}", i + 1),
            })?;
            if !entries.iter().any(|e| e.key == key) {
                entries.push(KeyEntry::bare(key));
            }
        }
        file.entries = entries;
        file.source = Source::Env(variable);
        return Ok(file);
    }
    Ok(file)
}

/// Decodes and validates keys-file bytes: the JSON value (object form, legacy arrays
/// turned into it), the entries, and warnings.
pub fn parse_bytes(
    path: &Path,
    bytes: &[u8],
) -> Result<(Value, Vec<KeyEntry>, Vec<String>), StoreError> {
    let text = Zeroizing::new(decode(bytes).map_err(|detail| StoreError::Encoding {
        path: path.into(),
        detail,
    })?);
    parse(&text).map_err(|e| match e {
        ParseError::Syntax {
            line,
            column,
            detail,
        } => StoreError::Syntax {
            path: path.into(),
            line,
            column,
            detail,
        },
        ParseError::Shape(detail) => StoreError::Shape {
            path: path.into(),
            detail,
        },
    })
}

/// Whether [`edit`] should write the file back.
pub enum Edit<T> {
    Write(T),
    Keep(T),
}

/// Changes the keys file under its lock: reads it (a missing file is an empty pool),
/// lets `change` edit the entries (each an object with at least a valid `"key"`), and
/// writes the result atomically when `change` says so. A file that does not parse is left
/// exactly as it is.
pub fn edit<T, E: From<StoreError>>(
    path: &Path,
    change: impl FnOnce(&mut Vec<Value>) -> Result<Edit<T>, E>,
) -> Result<T, E> {
    let path = absolute(path);
    let _lock = lock(&path)?;
    remove_stale_temporaries(&path);
    let mut seal = None;
    let mut document = match read_bounded(&path) {
        Ok(bytes) => parse_file(&path, &bytes, &mut seal, Ask::Terminal)?.0,
        Err(e) if e.kind() == io::ErrorKind::NotFound => empty_document(),
        Err(source) => return Err(StoreError::Read { path, source }.into()),
    };
    let Some(Value::Array(entries)) = document.get_mut("keys") else {
        unreachable!("parse_bytes and empty_document always give an object with a keys array")
    };
    let changed = change(entries);
    let result = match changed {
        Ok(Edit::Write(result)) => {
            let written = document_text(&path, &document)
                .and_then(|text| {
                    sealed_bytes(&path, seal.as_ref(), Zeroizing::new(text).as_bytes())
                })
                .and_then(|bytes| {
                    write_atomic(&path, &bytes).map_err(|source| StoreError::Write {
                        path: path.clone(),
                        source,
                    })
                });
            written.map(|()| result).map_err(E::from)
        }
        Ok(Edit::Keep(result)) => Ok(result),
        Err(e) => Err(e),
    };
    scrub(document);
    result
}

/// Parses keys-file bytes as [`parse_bytes`] does, opening an encrypted file first:
/// with `seal` when it still fits the file (no secret needed, as on every reload after
/// an edit), else with the secret from [`secret::open`]; `seal` is then what opened it
/// (`None` for a plain file). The decrypted text is wiped before this returns.
pub fn parse_file(
    path: &Path,
    bytes: &[u8],
    seal: &mut Option<Seal>,
    ask: Ask,
) -> Result<(Value, Vec<KeyEntry>, Vec<String>), StoreError> {
    if !sealed::is_sealed(bytes) {
        *seal = None;
        return parse_bytes(path, bytes);
    }
    let locked = |detail: String| StoreError::Locked {
        path: path.into(),
        detail,
    };
    let known = seal.as_ref().and_then(|s| s.reopen(bytes));
    let text = match known {
        Some(opened) => opened.map_err(|e| locked(e.to_string()))?,
        None => {
            let (opened, text) = secret::open(path, bytes, ask).map_err(locked)?;
            *seal = Some(opened);
            text
        }
    };
    parse_bytes(path, &text)
}

/// `text` as the file's new bytes: encrypted under `seal` when the file was.
fn sealed_bytes(path: &Path, seal: Option<&Seal>, text: &[u8]) -> Result<Vec<u8>, StoreError> {
    match seal {
        None => Ok(text.to_vec()),
        Some(seal) => seal.seal(text).map_err(|e| StoreError::Locked {
            path: path.into(),
            detail: format!("cannot be written: {e}"),
        }),
    }
}

/// What `keys encrypt` / `keys decrypt` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Resealed {
    /// The file was already in the asked form (or missing, for decrypt).
    Already,
    /// Rewritten; this many entries were in it.
    Done(usize),
}

/// Turns the keys file into an encrypted one under `to`, or (`None`) into plain text,
/// under the lock and atomically. The text inside is kept byte for byte. A file already
/// in the asked form is left alone, and so is one that does not parse or cannot be
/// opened. A missing file becomes an encrypted empty one. `before_write` runs under the
/// lock just before the file is replaced (to store the new secret first), with the
/// number of entries.
pub fn reseal<E: From<StoreError>>(
    path: &Path,
    to: Option<&Seal>,
    before_write: impl FnOnce(usize) -> Result<(), E>,
) -> Result<Resealed, E> {
    let path = absolute(path);
    let _lock = lock(&path)?;
    remove_stale_temporaries(&path);
    let bytes = match read_bounded(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(source) => return Err(StoreError::Read { path, source }.into()),
    };
    let was_sealed = sealed::is_sealed(&bytes);
    if was_sealed == to.is_some() {
        return Ok(Resealed::Already);
    }
    let text = if was_sealed {
        let (_, text) =
            secret::open(&path, &bytes, Ask::Terminal).map_err(|detail| StoreError::Locked {
                path: path.clone(),
                detail,
            })?;
        text
    } else {
        Zeroizing::new(bytes)
    };
    let (document, entries, _) = parse_bytes(&path, &text)?;
    scrub(document);
    let out = sealed_bytes(&path, to, &text)?;
    before_write(entries.len())?;
    write_atomic(&path, &out).map_err(|source| StoreError::Write {
        path: path.clone(),
        source,
    })?;
    Ok(Resealed::Done(entries.len()))
}

/// Wipes the strings of a parsed keys document (key strings among them) as it is dropped.
pub fn scrub(mut value: Value) {
    fn walk(value: &mut Value) {
        match value {
            Value::String(text) => text.zeroize(),
            Value::Array(items) => items.iter_mut().for_each(walk),
            Value::Object(map) => map.values_mut().for_each(walk),
            _ => {}
        }
    }
    walk(&mut value);
}

/// The document as the file's text. A failure fails the write: an empty text would
/// replace the file with an empty pool.
fn document_text(path: &Path, document: &impl serde::Serialize) -> Result<String, StoreError> {
    let mut text = serde_json::to_string_pretty(document).map_err(|e| StoreError::Write {
        path: path.to_path_buf(),
        source: io::Error::new(
            io::ErrorKind::InvalidData,
            format!("cannot turn the keys into JSON ({e}); the file was left as it was"),
        ),
    })?;
    text.push('\n');
    Ok(text)
}

/// Reads one entry of a document [`edit`] passes (already validated).
pub fn entry_of(value: &Value) -> Option<KeyEntry> {
    entry_from(value).ok()
}

fn empty_document() -> Value {
    let mut map = Map::new();
    map.insert("keys".into(), Value::Array(Vec::new()));
    Value::Object(map)
}

/// Creates the keys file's folder, and the folders above it, when missing (readable by
/// the owner alone on Unix), so the first `keys add` works for a per-user file.
pub fn create_folder(path: &Path) -> Result<(), StoreError> {
    let Some(folder) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    if folder.is_dir() {
        return Ok(());
    }
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(folder).map_err(|source| StoreError::Folder {
        path: folder.to_path_buf(),
        source,
    })
}

/// Holds an exclusive lock on `<file>.lock` until dropped. A separate file, because the
/// atomic rename replaces the keys file itself (and with it any lock on it).
fn lock(path: &Path) -> Result<File, StoreError> {
    let lock_path = sibling(path, ".lock");
    let file = create_private(&lock_path, Create::OpenOrNew)
        .and_then(|file| file.lock().map(|()| file))
        .map_err(|source| match path.parent() {
            Some(folder) if source.kind() == io::ErrorKind::NotFound && !folder.is_dir() => {
                StoreError::Folder {
                    path: folder.to_path_buf(),
                    source,
                }
            }
            _ => StoreError::Lock {
                path: lock_path,
                source,
            },
        })?;
    Ok(file)
}

/// How [`create_private`] treats an existing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Create {
    /// Fail if the file exists.
    New,
    /// Open it as it is (its permissions unchanged), or create it.
    OpenOrNew,
}

/// Opens `path` for reading and writing; a file it creates is readable by the current
/// user alone: mode 0600 on Unix, a DACL with the user alone on Windows (see
/// `owner_only.rs`). Elsewhere the folder's permissions apply.
pub fn create_private(path: &Path, how: Create) -> io::Result<File> {
    #[cfg(windows)]
    {
        let file = crate::keys::owner_only::create(path, how)?;
        regular(&file.metadata()?)?;
        Ok(file)
    }
    #[cfg(not(windows))]
    {
        let mut options = fs::OpenOptions::new();
        options.read(true).write(true);
        match how {
            Create::New => options.create_new(true),
            Create::OpenOrNew => options.create(true).truncate(false),
        };
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            // O_NONBLOCK: an existing FIFO is refused below instead of waiting.
            options.mode(0o600).custom_flags(libc::O_NONBLOCK);
        }
        let file = options.open(path)?;
        regular(&file.metadata()?)?;
        Ok(file)
    }
}

const TEMPORARY_MARK: &str = ".tmp-";

/// Replaces `path` with `bytes` atomically: a temporary file in the same folder, written
/// and synced, then renamed over `path`. Readers see the old file or the new one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let temporary = folder.join(format!(
        ".{name}{TEMPORARY_MARK}{}-{nanos}",
        std::process::id()
    ));
    let written = (|| {
        let mut file = create_private(&temporary, Create::New)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        drop(file);
        #[cfg(debug_assertions)]
        pause_before_rename(&temporary);
        retry_while_busy(|| fs::rename(&temporary, path), is_busy, RENAME_PATIENCE)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
        return written;
    }
    #[cfg(unix)]
    {
        // Make the rename itself durable.
        let _ = File::open(folder).and_then(|dir| dir.sync_all());
    }
    Ok(())
}

/// How long a rename over a file that another process holds open is tried again.
const RENAME_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// Runs `op` until it succeeds, fails with an error `busy` does not call a busy file, or
/// `patience` has passed. On Windows a rename over a file that another process has open (the
/// proxy's watch thread reading it, `keys list`, an editor, a virus scanner) fails with
/// "access denied" or a sharing violation until the reader closes it, a moment later;
/// cargo and Go's `robustio` wait it out the same way. Elsewhere no error is busy
/// ([`is_busy`]), so `op` runs once.
fn retry_while_busy(
    mut op: impl FnMut() -> io::Result<()>,
    busy: impl Fn(&io::Error) -> bool,
    patience: std::time::Duration,
) -> io::Result<()> {
    let start = std::time::Instant::now();
    let mut pause = std::time::Duration::from_millis(5);
    loop {
        match op() {
            Err(e) if busy(&e) && start.elapsed() < patience => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(std::time::Duration::from_millis(100));
            }
            done => return done,
        }
    }
}

/// Whether `e` says another process has the file open (Windows only).
fn is_busy(e: &io::Error) -> bool {
    #[cfg(windows)]
    {
        use windows_sys::Win32::Foundation::{ERROR_ACCESS_DENIED, ERROR_SHARING_VIOLATION};
        matches!(e.raw_os_error(), Some(code) if code == ERROR_ACCESS_DENIED as i32 || code == ERROR_SHARING_VIOLATION as i32)
    }
    #[cfg(not(windows))]
    {
        let _ = e;
        false
    }
}

/// The test hook that makes the kill test provable (debug builds only, so never in a
/// release): with `ROO_PROXY_TEST_PAUSE_BEFORE_RENAME` set, a writer whose temporary file
/// is complete says so on stderr and waits there, so `tests/proxy/keys.rs` can kill it
/// between the write and the rename, the moment the atomic replace exists for.
#[cfg(debug_assertions)]
fn pause_before_rename(temporary: &Path) {
    if std::env::var_os("ROO_PROXY_TEST_PAUSE_BEFORE_RENAME").is_some() {
        eprintln!("paused before the rename of '{}'", temporary.display());
        std::thread::sleep(std::time::Duration::from_secs(60));
    }
}

/// Temporary files a killed writer left behind. Called under the lock, so no live
/// writer's file is among them.
fn remove_stale_temporaries(path: &Path) {
    let (Some(folder), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let prefix = format!(".{}{TEMPORARY_MARK}", name.to_string_lossy());
    let Ok(listing) = fs::read_dir(folder) else {
        return;
    };
    for entry in listing.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// A warning when other users may read the keys file (Unix mode bits, Windows DACL).
pub fn permission_warning(path: &Path) -> Option<String> {
    #[cfg(windows)]
    {
        use crate::keys::owner_only;
        let user = owner_only::current_user_sid().ok()?;
        let readers = owner_only::other_readers(&owner_only::dacl_sddl(path).ok()?, &user);
        if !readers.is_empty() {
            return Some(owner_only::warning(path, &readers, &user));
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(path).ok()?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Some(format!(
                "'{}' can be read by other users (mode {mode:o}); run: chmod 600 '{}'",
                path.display(),
                path.display()
            ));
        }
    }
    #[cfg(not(any(unix, windows)))]
    let _ = path;
    None
}

/// A warning when the keys file sits in a git work tree and git would not ignore it,
/// with the line to add to `.gitignore`. Silent without git or outside a work tree.
pub fn git_warning(path: &Path) -> Option<String> {
    let folder = path.parent()?;
    let name = path.file_name()?.to_string_lossy().into_owned();
    let status = std::process::Command::new("git")
        .arg("-C")
        .arg(folder)
        .args(["check-ignore", "-q", "--"])
        .arg(&name)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    // 0: ignored; 1: in a work tree and not ignored; anything else: no repo, no answer.
    if status.code() != Some(1) {
        return None;
    }
    Some(format!(
        "'{}' is inside a git work tree and not ignored, so it could be committed with your keys; add this line to .gitignore: {name}*",
        path.display()
    ))
}

/// Turns file bytes into text: UTF-8 with or without BOM, or UTF-16 with a BOM.
fn decode(bytes: &[u8]) -> Result<String, &'static str> {
    let utf16 = |bytes: &[u8], to_u16: fn([u8; 2]) -> u16| {
        if !bytes.len().is_multiple_of(2) {
            return Err("UTF-16 with an odd number of bytes");
        }
        let units: Vec<u16> = bytes
            .chunks_exact(2)
            .map(|c| to_u16([c[0], c[1]]))
            .collect();
        String::from_utf16(&units).map_err(|_| "invalid UTF-16")
    };
    match bytes {
        [0xEF, 0xBB, 0xBF, rest @ ..] => {
            String::from_utf8(rest.to_vec()).map_err(|_| "invalid UTF-8")
        }
        [0xFF, 0xFE, rest @ ..] => utf16(rest, u16::from_le_bytes),
        [0xFE, 0xFF, rest @ ..] => utf16(rest, u16::from_be_bytes),
        _ => String::from_utf8(bytes.to_vec()).map_err(|_| "invalid UTF-8"),
    }
}

#[derive(Debug, PartialEq)]
enum ParseError {
    Syntax {
        line: usize,
        column: usize,
        detail: String,
    },
    Shape(String),
}

/// Parses keys-file text into the document in object form and its entries (duplicates
/// dropped from the entries, with a warning each; the document keeps them).
fn parse(text: &str) -> Result<(Value, Vec<KeyEntry>, Vec<String>), ParseError> {
    // An empty or blank file is an empty pool, as a missing one is.
    if text.trim().is_empty() {
        return Ok((empty_document(), Vec::new(), Vec::new()));
    }
    let value: Value = serde_json::from_str(text).map_err(|e| ParseError::Syntax {
        line: e.line(),
        column: e.column(),
        detail: syntax_detail(&e),
    })?;
    let items = match &value {
        Value::Array(items) => items,
        Value::Object(map) => match map.get("keys") {
            Some(Value::Array(items)) => items,
            Some(_) => return Err(ParseError::Shape("\"keys\" must be an array".into())),
            None => return Err(ParseError::Shape("the object has no \"keys\" array".into())),
        },
        _ => {
            return Err(ParseError::Shape(
                "the top level must be an array or an object".into(),
            ));
        }
    };

    let mut entries: Vec<KeyEntry> = Vec::with_capacity(items.len());
    let mut warnings = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let n = i + 1;
        let entry =
            entry_from(item).map_err(|detail| ParseError::Shape(format!("entry {n}: {detail}")))?;
        if let Some(first) = entries.iter().position(|e| e.key == entry.key) {
            warnings.push(format!(
                "entry {n} repeats the key of entry {}; it is used once",
                first + 1
            ));
            continue;
        }
        entries.push(entry);
    }
    let document = match value {
        Value::Array(items) => {
            let objects = items
                .into_iter()
                .map(|item| match item {
                    Value::String(key) => {
                        let mut map = Map::new();
                        map.insert("key".into(), Value::String(key));
                        Value::Object(map)
                    }
                    other => other,
                })
                .collect();
            let mut map = Map::new();
            map.insert("keys".into(), Value::Array(objects));
            Value::Object(map)
        }
        object => object,
    };
    Ok((document, entries, warnings))
}

fn entry_from(item: &Value) -> Result<KeyEntry, String> {
    let parse_key = |raw: &str| {
        ApiKey::parse(raw).map_err(|problem| match problem {
            KeyProblem::Empty => "the key is empty".to_string(),
            other => other.to_string(),
        })
    };
    let map = match item {
        Value::String(raw) => return Ok(KeyEntry::bare(parse_key(raw)?)),
        Value::Object(map) => map,
        _ => return Err("must be a key string or an object with a \"key\"".into()),
    };
    let key = match map.get("key") {
        Some(Value::String(raw)) => parse_key(raw)?,
        Some(_) => return Err("\"key\" must be a string".into()),
        None => return Err("an object entry needs a \"key\"".into()),
    };
    let text = |field: &str| match map.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) if text.trim().is_empty() => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.trim().to_string())),
        Some(_) => Err(format!("\"{field}\" must be a string")),
    };
    let disabled = match map.get("disabled") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(disabled)) => *disabled,
        Some(_) => return Err("\"disabled\" must be true or false".into()),
    };
    let provider = match text("provider")? {
        None => None,
        Some(name) => Some(Provider::parse(&name).ok_or_else(|| {
            format!(
                "\"provider\" '{}' is not a provider; use one of {}",
                name.escape_debug(),
                provider::names()
            )
        })?),
    };
    let pool = match text("pool")? {
        None => None,
        Some(name) => Some(check_pool_name(&name).map_err(|why| format!("\"pool\" {why}"))?),
    };
    Ok(KeyEntry {
        key,
        label: text("label")?,
        account: text("account")?,
        disabled,
        enabled_at: map.get("enabled_at").and_then(Value::as_u64),
        provider,
        pool,
    })
}

/// The first path segments of API paths the default pool serves at the bare base URL
/// (`/v1/…`, `/api/v1/…`, `/chat/completions`, `/key`, …): a pool of that name would
/// take them over, so no pool may have one.
pub const RESERVED_POOL_NAMES: &[&str] = &[
    "api",
    "v1",
    "v1beta",
    "v1alpha",
    "chat",
    "completions",
    "embeddings",
    "models",
    "messages",
    "responses",
    "key",
    "audio",
    "images",
    "files",
    "moderations",
    "generation",
    // Further first segments of the presets' APIs: OpenAI's and Mistral's, DeepSeek's
    // beta, Google's upload path, OpenRouter's.
    "assistants",
    "auth",
    "batches",
    "beta",
    "credits",
    "fim",
    "fine_tuning",
    "fine-tuning",
    "providers",
    "realtime",
    "threads",
    "upload",
    "uploads",
    "vector_stores",
];

/// The longest pool name.
pub const LONGEST_POOL_NAME: usize = 40;

/// A pool name as a client types it as the first segment of a path: lower-case ASCII
/// letters, digits, `-` and `_`, starting with a letter or digit, not one of
/// [`RESERVED_POOL_NAMES`]. Returns it, or why not (the name quoted, escaped).
pub fn check_pool_name(name: &str) -> Result<String, String> {
    let name = name.trim();
    let shown = name.escape_debug();
    if name.is_empty() || name.len() > LONGEST_POOL_NAME {
        return Err(format!(
            "'{shown}' must have 1 to {LONGEST_POOL_NAME} characters"
        ));
    }
    let fits = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if !name.chars().all(fits) || !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(format!(
            "'{shown}' is not a pool name: it becomes the first segment of a URL path, so use lower-case letters, digits, '-' and '_', starting with a letter or digit"
        ));
    }
    if RESERVED_POOL_NAMES.contains(&name) {
        return Err(format!(
            "'{shown}' begins API paths of the default pool (/{shown}/…), so it cannot name a pool; choose another name"
        ));
    }
    Ok(name.to_string())
}

/// serde_json's message without its own " at line L column C" suffix (we say it already).
/// Its messages never quote the input, so no key text can reach a log through them.
fn syntax_detail(e: &serde_json::Error) -> String {
    let full = e.to_string();
    match full.rfind(" at line ") {
        Some(at) => full[..at].to_string(),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_busy_file_is_tried_again_and_other_errors_are_returned_at_once() {
        let busy = |e: &io::Error| e.kind() == io::ErrorKind::WouldBlock;
        let patience = std::time::Duration::from_secs(60);
        // Busy twice, then free: the third try succeeds.
        let mut tries = 0;
        let done = retry_while_busy(
            || {
                tries += 1;
                match tries {
                    1 | 2 => Err(io::ErrorKind::WouldBlock.into()),
                    _ => Ok(()),
                }
            },
            busy,
            patience,
        );
        assert!(done.is_ok());
        assert_eq!(tries, 3);
        // Another error is not waited out.
        let mut tries = 0;
        let done = retry_while_busy(
            || {
                tries += 1;
                Err(io::ErrorKind::NotFound.into())
            },
            busy,
            patience,
        );
        assert_eq!(done.unwrap_err().kind(), io::ErrorKind::NotFound);
        assert_eq!(tries, 1);
        // Busy past the patience: the busy error comes back.
        let mut tries = 0;
        let done = retry_while_busy(
            || {
                tries += 1;
                Err(io::ErrorKind::WouldBlock.into())
            },
            busy,
            std::time::Duration::ZERO,
        );
        assert_eq!(done.unwrap_err().kind(), io::ErrorKind::WouldBlock);
        assert_eq!(tries, 1);
    }

    #[test]
    fn only_windows_calls_a_refused_rename_busy() {
        // Access denied (5) and a sharing violation (32) are a reader holding the file on
        // Windows; on Unix 5 is EIO and 32 EPIPE, never waited out.
        for code in [5, 32] {
            assert_eq!(is_busy(&io::Error::from_raw_os_error(code)), cfg!(windows));
        }
        assert!(!is_busy(&io::ErrorKind::NotFound.into()));
    }

    #[cfg(unix)]
    #[test]
    fn private_files_are_created_for_the_owner_alone_and_existing_ones_kept() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("roo-proxy-private-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;

        let new = dir.join("new");
        create_private(&new, Create::New).unwrap();
        assert_eq!(mode(&new), 0o600);
        let err = create_private(&new, Create::New).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);

        let lock = dir.join("lock");
        create_private(&lock, Create::OpenOrNew).unwrap();
        assert_eq!(mode(&lock), 0o600);
        // An existing file is opened as it is: its mode and its bytes stay.
        fs::write(&lock, b"kept").unwrap();
        fs::set_permissions(&lock, fs::Permissions::from_mode(0o640)).unwrap();
        create_private(&lock, Create::OpenOrNew).unwrap();
        assert_eq!(
            (mode(&lock), fs::read(&lock).unwrap()),
            (0o640, b"kept".to_vec())
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    fn keys(text: &str) -> Vec<String> {
        parse(text)
            .unwrap()
            .1
            .iter()
            .map(|e| e.key.expose().to_string())
            .collect()
    }

    #[test]
    fn reads_the_legacy_array() {
        assert_eq!(keys(r#"["sk-a1", "sk-b2"]"#), ["sk-a1", "sk-b2"]);
    }

    #[test]
    fn reads_the_object_form_with_labels() {
        let (_, entries, _) =
            parse(r#"{"keys":[{"key":"sk-a1","label":" work "},{"key":"sk-b2","extra":1}]}"#)
                .unwrap();
        assert_eq!(entries[0].label.as_deref(), Some("work"));
        assert_eq!(entries[1].label, None);
        assert_eq!(entries[1].key.expose(), "sk-b2");
    }

    #[test]
    fn keys_carry_a_provider_and_a_pool_in_both_formats() {
        use crate::rotation::provider::Provider;
        let pools = |text: &str| {
            parse(text)
                .unwrap()
                .1
                .into_iter()
                .map(|e| (e.key.expose().to_string(), e.provider, e.pool))
                .collect::<Vec<_>>()
        };
        let expected = vec![
            ("sk-or-1".to_string(), None, None),
            ("AIza-1".to_string(), Some(Provider::Gemini), None),
            (
                "sk-2".to_string(),
                Some(Provider::OpenAi),
                Some("work".to_string()),
            ),
        ];
        assert_eq!(
            pools(
                r#"["sk-or-1", {"key":"AIza-1","provider":"Gemini"}, {"key":"sk-2","provider":"openai","pool":"work"}]"#
            ),
            expected
        );
        assert_eq!(
            pools(
                r#"{"keys":[{"key":"sk-or-1"},{"key":"AIza-1","provider":" gemini "},{"key":"sk-2","provider":"openai","pool":"work"}]}"#
            ),
            expected
        );
        let shape = |t: &str| match parse(t).unwrap_err() {
            ParseError::Shape(d) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            shape(r#"["sk-1", {"key":"sk-2","provider":"gemeni"}]"#),
            format!(
                "entry 2: \"provider\" 'gemeni' is not a provider; use one of {}",
                crate::rotation::provider::names()
            )
        );
        assert!(
            shape(r#"{"keys":[{"key":"sk-2","pool":"my pool"}]}"#)
                .starts_with("entry 1: \"pool\" 'my pool' is not a pool name")
        );
        assert!(shape(r#"{"keys":[{"key":"sk-2","pool":"v1"}]}"#).contains("cannot name a pool"));
        assert_eq!(
            shape(r#"{"keys":[{"key":"sk-2","provider":7}]}"#),
            "entry 1: \"provider\" must be a string"
        );
    }

    #[test]
    fn empty_files_are_empty_pools() {
        assert!(keys("").is_empty());
        assert!(keys(" \n").is_empty());
        assert!(keys("[]").is_empty());
    }

    #[test]
    fn duplicates_are_used_once_with_a_warning() {
        let (_, entries, warnings) = parse(r#"["sk-a1","sk-b2","sk-a1"]"#).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(
            warnings,
            ["entry 3 repeats the key of entry 1; it is used once"]
        );
    }

    #[test]
    fn syntax_errors_carry_line_and_column() {
        let err = parse("[\n  \"sk-a1\",\n  \"sk-b2\"\n  \"sk-c3\"\n]").unwrap_err();
        match err {
            ParseError::Syntax {
                line,
                column,
                detail,
            } => {
                assert_eq!((line, column), (4, 3));
                assert_eq!(detail, "expected `,` or `]`");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn shape_errors_name_the_entry() {
        let shape = |t: &str| match parse(t).unwrap_err() {
            ParseError::Shape(d) => d,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            shape(r#"["sk-a1", 7]"#),
            "entry 2: must be a key string or an object with a \"key\""
        );
        assert_eq!(shape(r#"["sk-a1", ""]"#), "entry 2: the key is empty");
        assert_eq!(
            shape(r#"["sk a1"]"#),
            "entry 1: the key has whitespace at character 3"
        );
        assert_eq!(
            shape(r#"{"keys":[{"label":"x"}]}"#),
            "entry 1: an object entry needs a \"key\""
        );
        assert_eq!(shape(r#"{"kees":[]}"#), "the object has no \"keys\" array");
        assert_eq!(shape("42"), "the top level must be an array or an object");
    }

    #[test]
    fn byte_order_marks_and_utf16_are_decoded() {
        assert_eq!(decode(b"\xEF\xBB\xBF[\"k\"]").unwrap(), "[\"k\"]");
        let le: Vec<u8> = [0xFF, 0xFE]
            .into_iter()
            .chain("[\"k\"]".encode_utf16().flat_map(u16::to_le_bytes))
            .collect();
        assert_eq!(decode(&le).unwrap(), "[\"k\"]");
        let be: Vec<u8> = [0xFE, 0xFF]
            .into_iter()
            .chain("[\"k\"]".encode_utf16().flat_map(u16::to_be_bytes))
            .collect();
        assert_eq!(decode(&be).unwrap(), "[\"k\"]");
        assert_eq!(
            decode(b"\xFF\xFE[").unwrap_err(),
            "UTF-16 with an odd number of bytes"
        );
        assert_eq!(decode(b"\xC3(").unwrap_err(), "invalid UTF-8");
    }

    #[test]
    fn property_any_text_parses_to_valid_keys_or_a_clear_error() {
        let pieces = [
            "[",
            "]",
            "{",
            "}",
            ",",
            ":",
            "\"",
            "\"keys\"",
            "\"key\"",
            "\"label\"",
            "\"account\"",
            "\"disabled\"",
            "true",
            "null",
            "1",
            "sk-or-v1-abc",
            " ",
            "\n",
            "\\",
            "\\u0000",
            "é",
            "\u{feff}",
        ];
        let mut rng = crate::testing::Rng::new(3);
        for _ in 0..20_000 {
            let text = rng.text(&pieces, 16);
            match parse(&text) {
                Ok((document, entries, _)) => {
                    assert!(document["keys"].is_array(), "{text:?}");
                    for entry in entries {
                        // A key is plain printable ASCII, nothing else.
                        let key = entry.key.expose();
                        assert!(
                            !key.is_empty() && key.bytes().all(|b| b.is_ascii_graphic()),
                            "{text:?}"
                        );
                    }
                }
                Err(ParseError::Syntax { line, column, .. }) => {
                    assert!(line >= 1 && column <= text.len() + 1, "{text:?}")
                }
                Err(ParseError::Shape(detail)) => assert!(
                    detail.starts_with("entry ")
                        || detail.starts_with("the top level")
                        || detail.contains("\"keys\""),
                    "{text:?}: {detail}"
                ),
            }
        }
    }

    #[test]
    fn a_document_that_cannot_be_serialised_fails_instead_of_emptying_the_file() {
        struct Unserialisable;
        impl serde::Serialize for Unserialisable {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("boom"))
            }
        }
        let err = document_text(Path::new("/x/keys.json"), &Unserialisable).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot write '/x/keys.json': cannot turn the keys into JSON (boom); the file was left as it was"
        );
        assert_eq!(
            document_text(Path::new("k"), &empty_document()).unwrap(),
            "{\n  \"keys\": []\n}\n"
        );
    }

    #[test]
    fn property_generated_files_give_exactly_their_keys_or_the_first_bad_entry() {
        // Files built here from known entries, so what parse must give is known without
        // asking the parser: the keys in order (first of each repeat), trimmed labels, or
        // the number of the first bad entry.
        let good = ["sk-or-v1-aa", "sk-or-v1-bb", "k", "sk-~!{}", "sk-or-v1-aa"];
        let bad: [(&str, &str); 5] = [
            ("7", "must be a key string or an object"),
            ("\"\"", "the key is empty"),
            ("\"sk a\"", "whitespace at character 3"),
            (r#""sk-\u00e9""#, "non-ASCII character at character 4"),
            ("{\"label\":\"x\"}", "an object entry needs a \"key\""),
        ];
        let mut rng = crate::testing::Rng::new(5);
        for _ in 0..20_000 {
            let object_form = rng.below(2) == 0;
            let mut items = Vec::new();
            let mut expected: Vec<(String, Option<String>)> = Vec::new();
            let mut first_bad: Option<(usize, &str)> = None;
            for n in 1..=rng.below(6) {
                if rng.below(8) == 0 {
                    let (json, why) = *rng.pick(&bad);
                    items.push(json.to_string());
                    first_bad.get_or_insert((n, why));
                    continue;
                }
                let key = *rng.pick(&good);
                let label = [None, Some("work"), Some("  padded  "), Some("")][rng.below(4)];
                items.push(match (object_form || label.is_some(), label) {
                    (true, Some(label)) => format!(r#"{{"key":"{key}","label":"{label}","x":1}}"#),
                    (true, None) => format!(r#"{{"key":"{key}"}}"#),
                    (false, _) => format!("\"{key}\""),
                });
                if !expected.iter().any(|(k, _)| k == key) {
                    let label = label.map(str::trim).filter(|l| !l.is_empty());
                    expected.push((key.to_string(), label.map(String::from)));
                }
            }
            let list = format!(
                "[{}]",
                items.join(if rng.below(2) == 0 { "," } else { " ,\n " })
            );
            let text = if object_form {
                format!(r#"{{"version":2,"keys":{list}}}"#)
            } else {
                list
            };
            match (parse(&text), first_bad) {
                (Ok((_, entries, _)), None) => {
                    let got: Vec<(String, Option<String>)> = entries
                        .iter()
                        .map(|e| (e.key.expose().to_string(), e.label.clone()))
                        .collect();
                    assert_eq!(got, expected, "{text}");
                }
                (Err(ParseError::Shape(detail)), Some((n, why))) => {
                    assert!(
                        detail.starts_with(&format!("entry {n}: ")),
                        "{text}: {detail}"
                    );
                    assert!(detail.contains(why), "{text}: {detail}");
                }
                (other, _) => panic!("{text}: {other:?}, expected bad entry {first_bad:?}"),
            }
        }
    }

    #[test]
    fn syntax_messages_do_not_quote_the_input() {
        let secret = "sk-or-v1-0123456789abcdef0123456789abcdef";
        let err = parse(&format!("[\"{secret}\" \"x\"]")).unwrap_err();
        assert!(!format!("{err:?}").contains(secret));
    }
}
