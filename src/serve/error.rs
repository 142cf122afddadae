//! The errors people read: why the proxy would not start, and what an HTTP client is
//! told when the proxy answers for itself.
//!
//! Invariant: every answer the proxy makes on its own goes through [`Reply`], so clients
//! always get their provider's error shape ([`Shape`]): OpenRouter/OpenAI
//! `{"error":{"code":N,"message":"roo-proxy: …"}}`, Anthropic
//! `{"type":"error","error":{"type":…,"message":…}}` or Google
//! `{"error":{"code":N,"status":…,"message":…}}`.
//! Messages say what happened and what to do; none holds a raw key.

use std::fmt;
use std::io;
use std::time::Duration;

use crate::keys::store::StoreError;
use crate::rotation::provider::Provider;
pub use crate::rotation::provider::Shape;
use crate::serve::route;

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

    /// The JSON body, in `shape`.
    pub fn body_in(&self, shape: Shape) -> Vec<u8> {
        error_json(self.status, &format!("roo-proxy: {}", self.message), shape)
            .to_string()
            .into_bytes()
    }
}

/// The error shape of the proxy's own answer to a request for `target`: that of the
/// preset its path names (`/anthropic/v1/messages`), else `default`'s (`--provider`).
/// A call of Anthropic's Messages API gets Anthropic's whatever the provider: Claude
/// Code reaches OpenRouter's `/v1/messages` that way, and the Anthropic SDK skips an
/// error event without `event: error`, which would make a broken stream look whole.
/// `None`: the request line is unknown (a connection refused before it arrived).
pub fn shape_for(target: Option<&str>, default: Provider) -> Shape {
    let Some(target) = target else {
        return default.shape();
    };
    let (provider, rest) = route::pool_prefix(target)
        .and_then(|(named, rest)| {
            crate::rotation::provider::ALL
                .into_iter()
                .find(|p| p.name() == named)
                .map(|p| (p, rest))
        })
        .unwrap_or((default, target.into()));
    if is_messages_api(&rest) {
        Shape::Anthropic
    } else {
        provider.shape()
    }
}

/// Anthropic's Messages API under any base form: `/v1/messages`, `/messages`,
/// `/api/v1/messages`, and below them (`/v1/messages/count_tokens`).
fn is_messages_api(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    let path = ["/api/v1", "/v1"]
        .iter()
        .find_map(|base| path.strip_prefix(base))
        .unwrap_or(path);
    path.strip_prefix("/messages")
        .is_some_and(|after| after.is_empty() || after.starts_with('/'))
}

/// An error of the proxy's own, with this status and message, in `shape`.
pub fn error_json(status: u16, message: &str, shape: Shape) -> serde_json::Value {
    match shape {
        Shape::OpenAi => serde_json::json!({ "error": { "code": status, "message": message } }),
        Shape::Anthropic => serde_json::json!({
            "type": "error",
            "error": { "type": anthropic_type(status), "message": message },
        }),
        Shape::Google => serde_json::json!({
            "error": { "code": status, "status": google_status(status), "message": message },
        }),
    }
}

/// Anthropic's error type for a status (its API reference, "Errors").
fn anthropic_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    }
}

/// Google's canonical status name for an HTTP status (google.rpc.Code).
fn google_status(status: u16) -> &'static str {
    match status {
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        408 | 504 => "DEADLINE_EXCEEDED",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "UNIMPLEMENTED",
        502 | 503 => "UNAVAILABLE",
        400..=499 => "INVALID_ARGUMENT",
        _ => "INTERNAL",
    }
}

impl Reply {
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
        let json: serde_json::Value =
            serde_json::from_slice(&reply.body_in(Shape::OpenAi)).unwrap();
        assert_eq!(json["error"]["code"], 502);
        assert_eq!(json["error"]["message"], "roo-proxy: the upstream failed");
    }

    #[test]
    fn the_body_has_anthropics_and_googles_shapes_when_asked() {
        let reply = Reply::new(429, "all keys rest");
        let json: serde_json::Value =
            serde_json::from_slice(&reply.body_in(Shape::Anthropic)).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["error"]["type"], "rate_limit_error");
        assert_eq!(json["error"]["message"], "roo-proxy: all keys rest");
        let json: serde_json::Value =
            serde_json::from_slice(&reply.body_in(Shape::Google)).unwrap();
        assert_eq!(json["error"]["code"], 429);
        assert_eq!(json["error"]["status"], "RESOURCE_EXHAUSTED");
        assert_eq!(json["error"]["message"], "roo-proxy: all keys rest");
    }

    #[test]
    fn the_shape_is_the_named_presets_else_the_default_providers() {
        let openrouter = Provider::OpenRouter;
        let shape = |target| shape_for(target, openrouter);
        assert_eq!(shape(Some("/anthropic/v1/messages")), Shape::Anthropic);
        assert_eq!(
            shape(Some("/gemini/v1beta/models/g:generateContent")),
            Shape::Google
        );
        assert_eq!(
            shape(Some("/gemini-openai/v1/chat/completions")),
            Shape::OpenAi
        );
        assert_eq!(shape(Some("/v1/chat/completions")), Shape::OpenAi);
        assert_eq!(shape(Some("/anthropicx/v1/chat")), Shape::OpenAi);
        assert_eq!(shape(None), Shape::OpenAi);
        assert_eq!(shape_for(None, Provider::Gemini), Shape::Google);
        assert_eq!(
            shape_for(Some("/v1/messages"), Provider::Anthropic),
            Shape::Anthropic
        );
        assert_eq!(
            shape_for(Some("/openai/v1/models"), Provider::Anthropic),
            Shape::OpenAi
        );
    }

    #[test]
    fn a_call_of_the_messages_api_gets_anthropics_shape_whatever_the_provider() {
        for target in [
            "/v1/messages",
            "/v1/messages?beta=true",
            "/messages",
            "/api/v1/messages",
            "/v1/messages/count_tokens",
            "/openrouter/v1/messages",
        ] {
            assert_eq!(
                shape_for(Some(target), Provider::OpenRouter),
                Shape::Anthropic,
                "{target}"
            );
        }
        for target in [
            "/v1/threads/t1/messages",
            "/v1/messagesx",
            "/v2/messages",
            "/v1/chat/completions?x=/messages",
        ] {
            assert_eq!(
                shape_for(Some(target), Provider::OpenAi),
                Shape::OpenAi,
                "{target}"
            );
        }
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
