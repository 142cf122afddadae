//! The keys file: finding, decoding and validating it.
//!
//! Two formats are read: a JSON array of key strings (what the old Node script and the
//! PowerShell helpers used) and `{"keys":[{"key":"…","label":"…"}]}`. Files the helpers
//! wrote with Windows PowerShell may start with a UTF-8 byte-order mark or be UTF-16;
//! both are accepted. Invariant: this module only reads; a file that does not parse is
//! reported with its path (and line and column for JSON syntax) and never touched.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::key::{ApiKey, KeyProblem};

/// One key of the pool, as the keys file describes it.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    pub key: ApiKey,
    pub label: Option<String>,
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

/// What was read from the keys file.
#[derive(Debug)]
pub struct KeysFile {
    /// Absolute path, so messages say exactly which file was meant.
    pub path: PathBuf,
    /// False when there was no file: the pool is empty but that is not an error.
    pub found: bool,
    pub entries: Vec<KeyEntry>,
    /// Things worth telling the user that did not stop loading (duplicates).
    pub warnings: Vec<String>,
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
}

const FORMAT_HINT: &str =
    r#"expected ["sk-or-…", …] or {"keys":[{"key":"sk-or-…","label":"optional name"}]}"#;

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Read { path, source } => {
                write!(f, "cannot read keys file '{}': {source}", path.display())
            }
            StoreError::Encoding { path, detail } => {
                write!(
                    f,
                    "keys file '{}' is not valid text: {detail}; save it as UTF-8",
                    path.display()
                )
            }
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
        }
    }
}

impl std::error::Error for StoreError {}

/// Makes `path` absolute against the current directory, without touching the file system
/// (the file may not exist yet).
pub fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Reads the keys file at `path`. A missing file gives an empty pool, not an error.
pub fn load(path: &Path) -> Result<KeysFile, StoreError> {
    let path = absolute(path);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok(KeysFile {
                path,
                found: false,
                entries: Vec::new(),
                warnings: Vec::new(),
            });
        }
        Err(source) => return Err(StoreError::Read { path, source }),
    };
    let text = match decode(&bytes) {
        Ok(text) => text,
        Err(detail) => return Err(StoreError::Encoding { path, detail }),
    };
    match parse(&text) {
        Ok((entries, warnings)) => Ok(KeysFile {
            path,
            found: true,
            entries,
            warnings,
        }),
        Err(ParseError::Syntax {
            line,
            column,
            detail,
        }) => Err(StoreError::Syntax {
            path,
            line,
            column,
            detail,
        }),
        Err(ParseError::Shape(detail)) => Err(StoreError::Shape { path, detail }),
    }
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

/// Parses keys-file text into entries (duplicates dropped, with a warning each).
fn parse(text: &str) -> Result<(Vec<KeyEntry>, Vec<String>), ParseError> {
    // An empty or blank file is an empty pool, as a missing one is.
    if text.trim().is_empty() {
        return Ok((Vec::new(), Vec::new()));
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
    Ok((entries, warnings))
}

fn entry_from(item: &Value) -> Result<KeyEntry, String> {
    let (raw, label) = match item {
        Value::String(raw) => (raw.as_str(), None),
        Value::Object(map) => {
            let raw = match map.get("key") {
                Some(Value::String(raw)) => raw.as_str(),
                Some(_) => return Err("\"key\" must be a string".into()),
                None => return Err("an object entry needs a \"key\"".into()),
            };
            let label = match map.get("label") {
                None | Some(Value::Null) => None,
                Some(Value::String(label)) if label.trim().is_empty() => None,
                Some(Value::String(label)) => Some(label.trim().to_string()),
                Some(_) => return Err("\"label\" must be a string".into()),
            };
            (raw, label)
        }
        _ => return Err("must be a key string or an object with a \"key\"".into()),
    };
    let key = ApiKey::parse(raw).map_err(|problem| match problem {
        KeyProblem::Empty => "the key is empty".to_string(),
        other => other.to_string(),
    })?;
    Ok(KeyEntry { key, label })
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

    fn keys(text: &str) -> Vec<String> {
        parse(text)
            .unwrap()
            .0
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
        let (entries, _) =
            parse(r#"{"keys":[{"key":"sk-a1","label":" work "},{"key":"sk-b2","extra":1}]}"#)
                .unwrap();
        assert_eq!(entries[0].label.as_deref(), Some("work"));
        assert_eq!(entries[1].label, None);
        assert_eq!(entries[1].key.expose(), "sk-b2");
    }

    #[test]
    fn empty_files_are_empty_pools() {
        assert!(keys("").is_empty());
        assert!(keys(" \n").is_empty());
        assert!(keys("[]").is_empty());
    }

    #[test]
    fn duplicates_are_used_once_with_a_warning() {
        let (entries, warnings) = parse(r#"["sk-a1","sk-b2","sk-a1"]"#).unwrap();
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
    fn syntax_messages_do_not_quote_the_input() {
        let secret = "sk-or-v1-0123456789abcdef0123456789abcdef";
        let err = parse(&format!("[\"{secret}\" \"x\"]")).unwrap_err();
        assert!(!format!("{err:?}").contains(secret));
    }
}
