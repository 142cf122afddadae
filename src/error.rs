//! The errors people read: why the proxy would not start, and what an HTTP client is
//! told when the proxy answers for itself.
//!
//! Invariant: every answer the proxy makes on its own goes through [`Reply`], so clients
//! always get the OpenRouter/OpenAI shape `{"error":{"code":N,"message":"roo-proxy: …"}}`.
//! Messages say what happened and what to do; none holds a raw key.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::store::StoreError;

/// Why `roo-proxy` could not start or stopped. Printed once by `main`.
#[derive(Debug)]
pub enum Error {
    /// A flag or environment variable has a value we cannot use.
    Config(String),
    Keys(StoreError),
    /// A `keys` command could not do what was asked (no match, bad key, …).
    Refused(String),
    Bind {
        addr: String,
        source: io::Error,
    },
    Serve(io::Error),
}

impl Error {
    /// Exit status: 2 for anything the user must fix in how they start us, 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Config(_) | Error::Keys(_) => 2,
            Error::Refused(_) | Error::Bind { .. } | Error::Serve(_) => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config(message) | Error::Refused(message) => f.write_str(message),
            Error::Keys(e) => e.fmt(f),
            Error::Bind { addr, source } if source.kind() == io::ErrorKind::AddrInUse => write!(
                f,
                "cannot listen on {addr}: the port is in use (is another roo-proxy running?); pick another with --port"
            ),
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Serve(e) => write!(f, "the server stopped: {e}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Error {
        Error::Keys(e)
    }
}

/// An answer the proxy gives on its own behalf.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub message: String,
    /// Seconds for `Retry-After`, when waiting helps.
    pub retry_after: Option<u64>,
}

/// Above this wait, OpenAI SDKs are told not to retry by themselves (`x-should-retry`),
/// so they do not hammer a pool that is resting for minutes.
const SDK_RETRY_LIMIT: u64 = 10;

impl Reply {
    pub fn new(status: u16, message: impl Into<String>) -> Reply {
        Reply {
            status,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 429 for "wait this long": `Retry-After` rounded up to whole seconds, at least 1.
    pub fn wait(wait: Duration, message: impl Into<String>) -> Reply {
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Reply {
            status: 429,
            message: message.into(),
            retry_after: Some(secs.max(1)),
        }
    }

    /// 503 for "too busy right now": try again in a second.
    pub fn busy(message: impl Into<String>) -> Reply {
        Reply {
            status: 503,
            message: message.into(),
            retry_after: Some(1),
        }
    }

    /// The JSON body, in OpenRouter's error shape.
    pub fn body(&self) -> Vec<u8> {
        let body = serde_json::json!({
            "error": { "code": self.status, "message": format!("roo-proxy: {}", self.message) }
        });
        body.to_string().into_bytes()
    }

    /// Headers beyond Content-Type and Content-Length.
    pub fn headers(&self) -> Vec<(&'static str, String)> {
        let mut headers = Vec::new();
        if let Some(secs) = self.retry_after {
            headers.push(("Retry-After", secs.to_string()));
            if secs > SDK_RETRY_LIMIT {
                headers.push(("x-should-retry", "false".to_string()));
            }
        }
        headers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_has_openrouters_error_shape() {
        let reply = Reply::new(502, "the upstream failed");
        let json: serde_json::Value = serde_json::from_slice(&reply.body()).unwrap();
        assert_eq!(json["error"]["code"], 502);
        assert_eq!(json["error"]["message"], "roo-proxy: the upstream failed");
    }

    #[test]
    fn waits_round_up_and_long_waits_stop_sdk_retries() {
        let short = Reply::wait(Duration::from_millis(2100), "x");
        assert_eq!(short.retry_after, Some(3));
        assert_eq!(short.headers(), [("Retry-After", "3".to_string())]);
        assert_eq!(Reply::wait(Duration::ZERO, "x").retry_after, Some(1));
        let long = Reply::wait(Duration::from_secs(11), "x");
        assert_eq!(
            long.headers(),
            [
                ("Retry-After", "11".to_string()),
                ("x-should-retry", "false".to_string())
            ]
        );
    }
}
