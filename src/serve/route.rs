//! Where a request goes, and which headers go with it.
//!
//! Invariant: pure, and only ever under the configured upstream base: a target is mapped
//! to `base + rest` or refused, so the proxy can never be used to reach another host.

use std::fmt;

/// Why a request target was refused (answered 400).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadTarget {
    /// Absolute-form (`http://host/…`), authority-form or `*`: only paths are proxied.
    NotAPath,
    /// A byte that has no place in a request target (control, space, backslash, …).
    BadByte,
    /// `.`/`..` segments or encoded slashes that could climb out of the upstream base.
    Escapes,
}

impl fmt::Display for BadTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BadTarget::NotAPath => {
                "the request target must be a path such as /v1/chat/completions; this proxy only forwards to its configured upstream"
            }
            BadTarget::BadByte => "the request target contains a character that is not allowed",
            BadTarget::Escapes => {
                "the request target contains '.' or '..' segments or encoded slashes"
            }
        })
    }
}

/// Model names longer than this are not remembered (a rest for them is a rest for the
/// key).
const LONGEST_MODEL: usize = 200;

/// The model a request asks for, which a per-model rate limit concerns: the body's
/// `"model"` (OpenAI, Anthropic, OpenRouter, Gemini's OpenAI-compatible API), or the
/// path's `models/{model}:{method}` (Gemini's own API).
pub fn model_of(path: &str, body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Named<'a> {
        #[serde(borrow, default)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    let from_body = || {
        let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
        if body[start] != b'{' {
            return None;
        }
        let named: Named = serde_json::from_slice(body).ok()?;
        named.model.map(String::from)
    };
    let from_path = || {
        let path = path.split('?').next().unwrap_or(path);
        let (_, rest) = path.rsplit_once("/models/")?;
        let (model, _method) = rest.split_once(':')?;
        (!model.is_empty() && !model.contains('/')).then(|| model.to_string())
    };
    from_body()
        .or_else(from_path)
        .filter(|m| !m.is_empty() && m.len() <= LONGEST_MODEL)
}

/// The target's first path segment and the target after it (`/gemini/v1beta/…` →
/// `gemini`, `/v1beta/…`; `/anthropic` → `anthropic`, `/`; `/work?x=1` → `work`,
/// `/?x=1`): the pool it names, if a pool has that name. The server decides; the bare
/// base URL names no pool.
pub fn pool_prefix(target: &str) -> Option<(&str, std::borrow::Cow<'_, str>)> {
    let rest = target.strip_prefix('/')?;
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    if end == 0 {
        return None;
    }
    let after = &rest[end..];
    Some((
        &rest[..end],
        match after.as_bytes().first() {
            Some(b'/') => after.into(),
            _ => format!("/{after}").into(),
        },
    ))
}

/// Maps a client request target to the upstream URL: `base` (no trailing slash) joined
/// with the target minus its base prefix; the query string is kept as it came, less any
/// `key` parameter (a client's credential, which never goes upstream).
/// `prefixes` are the client path prefixes that stand for the base (the provider's
/// [`crate::rotation::provider::Provider::base_prefixes`]); the first that matches is stripped.
pub fn upstream_url(base: &str, prefixes: &[&str], target: &str) -> Result<String, BadTarget> {
    if !target.starts_with('/') || target.starts_with("//") {
        return Err(BadTarget::NotAPath);
    }
    if target
        .bytes()
        .any(|b| b <= b' ' || b >= 0x7F || b == b'\\' || b == b'#')
    {
        return Err(BadTarget::BadByte);
    }
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    if path.split('/').any(is_dot_segment) || contains_encoded_slash(path) {
        return Err(BadTarget::Escapes);
    }
    let rest = prefixes
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix))
        .unwrap_or(path);
    let mut url = String::with_capacity(base.len() + target.len());
    url.push_str(base);
    url.push('/');
    url.push_str(rest);
    if let Some(query) = query.and_then(without_credential) {
        url.push('?');
        url.push_str(&query);
    }
    // The upstream client refuses what `http::Uri` does not take (`"` in a query, …):
    // that is the client's mistake, answered 400 here, never a failed attempt.
    if url.parse::<ureq::http::Uri>().is_err() {
        return Err(BadTarget::BadByte);
    }
    Ok(url)
}

/// The methods forwarded (case-sensitive, RFC 9110 §9.1): others get 501, since the
/// upstream client refuses them (`get`) or an API has no use for them (`TRACE`).
pub fn forwardable_method(method: &str) -> bool {
    matches!(
        method,
        "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS"
    )
}

/// Paths browsers ask for on their own (icons, robots, well-known files): answered by
/// the proxy, never forwarded with a pool key.
pub fn is_browser_noise(path: &str) -> bool {
    let path = path.to_ascii_lowercase();
    matches!(path.as_str(), "/favicon.ico" | "/robots.txt")
        || path.starts_with("/apple-touch-icon")
        || path.starts_with("/.well-known/")
}

/// `.` or `..`, with any dot percent-encoded (`%2e`, `%2E`), also with parameters after
/// a `;` (`..;x`, which some servers take for `..`).
fn is_dot_segment(segment: &str) -> bool {
    let params = segment
        .as_bytes()
        .windows(3)
        .position(|w| w.eq_ignore_ascii_case(b"%3b"))
        .into_iter()
        .chain(segment.find(';'))
        .min();
    let mut rest = &segment.as_bytes()[..params.unwrap_or(segment.len())];
    let mut dots = 0;
    while let Some(&first) = rest.first() {
        rest = if first == b'.' {
            &rest[1..]
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            &rest[3..]
        } else {
            return false;
        };
        dots += 1;
    }
    dots == 1 || dots == 2
}

fn contains_encoded_slash(path: &str) -> bool {
    path.as_bytes()
        .windows(3)
        .any(|w| w.eq_ignore_ascii_case(b"%2f") || w.eq_ignore_ascii_case(b"%5c"))
}

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1): never
/// forwarded in either direction. `Connection` may name more; see [`connection_tokens`].
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

/// The lower-cased header names a `Connection` header value lists.
pub fn connection_tokens(value: &str) -> Vec<String> {
    value
        .split(',')
        .map(|t| crate::serve::http1::trim_ows(t).to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

/// The headers a client puts an API key in, whatever the provider: all are dropped
/// (the pool key replaces them, in the provider's form), and the access token is read
/// from any of them.
pub const CREDENTIAL_HEADERS: [&str; 4] =
    ["authorization", "x-api-key", "x-goog-api-key", "api-key"];

/// The query parameter Google's clients put an API key in (`?key=…`).
pub const CREDENTIAL_PARAM: &str = "key";

/// The query parameters that carry a client's credential, none of which goes upstream:
/// Google's API key and its OAuth access token.
const CREDENTIAL_PARAMS: [&str; 2] = [CREDENTIAL_PARAM, "access_token"];

/// The name of a query pair (`name=value`) as the upstream reads it: percent-decoded, so
/// `k%65y` is `key`. A name that does not decode to text is kept as written.
fn param_name(pair: &str) -> std::borrow::Cow<'_, str> {
    let name = pair.split('=').next().unwrap_or_default();
    if !name.contains('%') {
        return name.into();
    }
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_or(name.into(), Into::into)
}

/// Whether a client request header goes upstream. Besides hop-by-hop headers, the
/// client's own credentials are dropped (the pool key replaces them), and the framing
/// headers the HTTP client computes itself. `Cookie` stays too: a browser sends the
/// cookies of every other program on localhost with it, and no API reads them.
pub fn forward_request_header(name: &str, named_by_connection: &[String]) -> bool {
    let is = |other: &str| name.eq_ignore_ascii_case(other);
    !(is_hop_by_hop(name, named_by_connection)
        || ["host", "content-length", "expect", "cookie"]
            .iter()
            .chain(CREDENTIAL_HEADERS.iter())
            .any(|h| is(h)))
}

/// The value of the `key` query parameter of a request target, if any (the client's
/// credential in Google's form).
pub fn credential_param(target: &str) -> Option<&str> {
    let (_, query) = target.split_once('?')?;
    query
        .split('&')
        .find(|pair| param_name(pair) == CREDENTIAL_PARAM)
        .and_then(|pair| pair.split_once('=').map(|(_, value)| value))
}

/// The query without any credential parameter ([`CREDENTIAL_PARAMS`], however
/// percent-encoded), other parameters in their order and spelling; `None` when nothing
/// is left.
fn without_credential(query: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !CREDENTIAL_PARAMS.contains(&&*param_name(pair)))
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

/// Whether an upstream response header goes to the client. Framing is ours to set
/// (`Content-Length` or chunked), and so is CORS, which the proxy answers for.
pub fn forward_response_header(name: &str, named_by_connection: &[String]) -> bool {
    let cors = name
        .as_bytes()
        .get(..15)
        .is_some_and(|start| start.eq_ignore_ascii_case(b"access-control-"));
    !(is_hop_by_hop(name, named_by_connection)
        || name.eq_ignore_ascii_case("content-length")
        || cors)
}

/// One of [`HOP_BY_HOP`] or a header the message's `Connection` header names.
fn is_hop_by_hop(name: &str, named_by_connection: &[String]) -> bool {
    let is = |other: &str| name.eq_ignore_ascii_case(other);
    HOP_BY_HOP.iter().any(|h| is(h)) || named_by_connection.iter().any(|n| is(n))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_model_comes_from_the_body_or_from_a_gemini_path() {
        let chat =
            br#"{"messages":[{"role":"user","content":"model"}],"model":"openai/gpt-4o:free"}"#;
        assert_eq!(
            model_of("/v1/chat/completions", chat).as_deref(),
            Some("openai/gpt-4o:free")
        );
        let gemini = "/v1beta/models/gemini-2.5-pro:generateContent?alt=sse";
        assert_eq!(model_of(gemini, b"{}").as_deref(), Some("gemini-2.5-pro"));
        for (path, body) in [
            ("/v1/chat/completions", &b""[..]),
            ("/v1/chat/completions", b"{not json"),
            ("/v1/chat/completions", br#"{"model":42}"#),
            ("/v1/chat/completions", br#"[{"model":"x"}]"#),
            ("/v1/models/anthropic/claude-sonnet-4/endpoints", b""),
        ] {
            assert_eq!(model_of(path, body), None, "{path} {body:?}");
        }
        let long = format!(r#"{{"model":"{}"}}"#, "m".repeat(LONGEST_MODEL + 1));
        assert_eq!(model_of("/v1/chat/completions", long.as_bytes()), None);
    }

    const BASE: &str = "https://openrouter.ai/api/v1";
    const OPENAI: &[&str] = crate::rotation::provider::Provider::OpenRouter.base_prefixes();

    #[test]
    fn all_three_client_base_urls_reach_the_same_endpoint() {
        for target in [
            "/chat/completions",
            "/v1/chat/completions",
            "/api/v1/chat/completions",
        ] {
            assert_eq!(
                upstream_url(BASE, OPENAI, target).unwrap(),
                "https://openrouter.ai/api/v1/chat/completions"
            );
        }
    }

    #[test]
    fn the_query_string_is_kept() {
        assert_eq!(
            upstream_url(BASE, OPENAI, "/api/v1/generation?id=gen-123&x=%20y").unwrap(),
            "https://openrouter.ai/api/v1/generation?id=gen-123&x=%20y"
        );
        assert_eq!(
            upstream_url(
                BASE,
                OPENAI,
                "/v1/models/anthropic/claude-sonnet-4/endpoints"
            )
            .unwrap(),
            "https://openrouter.ai/api/v1/models/anthropic/claude-sonnet-4/endpoints"
        );
    }

    #[test]
    fn gemini_paths_keep_their_version_once() {
        use crate::rotation::provider::Provider;
        let gemini = Provider::Gemini;
        let base = gemini.base_url().unwrap();
        assert_eq!(
            upstream_url(
                base,
                gemini.base_prefixes(),
                "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=x"
            )
            .unwrap(),
            "https://generativelanguage.googleapis.com/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
        );
        let compatible = Provider::GeminiOpenAi;
        let base = compatible.base_url().unwrap();
        for target in [
            "/v1/chat/completions",
            "/v1beta/openai/chat/completions",
            "/chat/completions",
        ] {
            assert_eq!(
                upstream_url(base, compatible.base_prefixes(), target).unwrap(),
                "https://generativelanguage.googleapis.com/v1beta/openai/chat/completions",
                "{target}"
            );
        }
    }

    #[test]
    fn a_pool_is_named_by_the_first_segment_only() {
        assert_eq!(
            pool_prefix("/gemini/v1beta/models/g:generateContent"),
            Some(("gemini", "/v1beta/models/g:generateContent".into()))
        );
        assert_eq!(
            pool_prefix("/gemini-openai/v1/chat/completions"),
            Some(("gemini-openai", "/v1/chat/completions".into()))
        );
        assert_eq!(pool_prefix("/anthropic"), Some(("anthropic", "/".into())));
        assert_eq!(pool_prefix("/work?x=1"), Some(("work", "/?x=1".into())));
        assert_eq!(
            pool_prefix("/v1/gemini/x"),
            Some(("v1", "/gemini/x".into()))
        );
        for target in ["/", "//x", "*", "", "/?x"] {
            assert_eq!(pool_prefix(target), None, "{target}");
        }
    }

    #[test]
    fn a_key_query_parameter_never_goes_upstream() {
        for (target, url) in [
            (
                "/v1beta/models/g:generateContent?key=dummy",
                "https://openrouter.ai/api/v1/v1beta/models/g:generateContent",
            ),
            (
                "/x?alt=sse&key=dummy",
                "https://openrouter.ai/api/v1/x?alt=sse",
            ),
            (
                "/x?key=a&alt=sse&key",
                "https://openrouter.ai/api/v1/x?alt=sse",
            ),
            (
                "/x?keys=1&monkey=2&key=3",
                "https://openrouter.ai/api/v1/x?keys=1&monkey=2",
            ),
            // Encoded as the upstream decodes it, and Google's OAuth token.
            (
                "/x?k%65y=a&%6Bey=b&%6b%65%79=c",
                "https://openrouter.ai/api/v1/x",
            ),
            (
                "/x?access_token=a&alt=sse&access%5Ftoken=b",
                "https://openrouter.ai/api/v1/x?alt=sse",
            ),
            // Not a credential's name, decoded or not.
            (
                "/x?k%6=1&%ZZ=2&ke%79s=3",
                "https://openrouter.ai/api/v1/x?k%6=1&%ZZ=2&ke%79s=3",
            ),
        ] {
            assert_eq!(upstream_url(BASE, OPENAI, target).unwrap(), url, "{target}");
        }
        assert_eq!(credential_param("/x?alt=sse&key=dummy"), Some("dummy"));
        assert_eq!(credential_param("/x?keys=1&monkey=2"), None);
        assert_eq!(credential_param("/x?k%65y=dummy"), Some("dummy"));
        assert_eq!(credential_param("/x"), None);
    }

    #[test]
    fn only_the_first_prefix_is_stripped() {
        assert_eq!(
            upstream_url(BASE, OPENAI, "/v1/v1/x").unwrap(),
            "https://openrouter.ai/api/v1/v1/x"
        );
        assert_eq!(
            upstream_url(BASE, OPENAI, "/v1").unwrap(),
            "https://openrouter.ai/api/v1/v1"
        );
        assert_eq!(
            upstream_url(BASE, OPENAI, "/").unwrap(),
            "https://openrouter.ai/api/v1/"
        );
    }

    #[test]
    fn targets_that_are_not_paths_are_refused() {
        for target in [
            "http://evil.example/x",
            "evil.example:443",
            "*",
            "//evil.example/x",
            "",
        ] {
            assert_eq!(
                upstream_url(BASE, OPENAI, target),
                Err(BadTarget::NotAPath),
                "{target}"
            );
        }
    }

    #[test]
    fn targets_that_could_escape_the_base_are_refused() {
        for target in [
            "/../x",
            "/v1/a/../../x",
            "/%2e%2E/x",
            "/./x",
            "/a%2fb",
            "/a%5Cb",
            "/v1/..;/x",
            "/v1/..;jsessionid=1/x",
            "/.;a/x",
            "/%2e%2e%3b/x",
        ] {
            assert_eq!(
                upstream_url(BASE, OPENAI, target),
                Err(BadTarget::Escapes),
                "{target}"
            );
        }
        for target in ["/a\\b", "/a b", "/a\r\nb", "/a\0", "/a#frag", "/é"] {
            assert_eq!(
                upstream_url(BASE, OPENAI, target),
                Err(BadTarget::BadByte),
                "{target:?}"
            );
        }
        // Dots inside a segment are ordinary.
        assert!(upstream_url(BASE, OPENAI, "/models/x.y/..z").is_ok());
        assert!(upstream_url(BASE, OPENAI, "/models/a;b/..x;y").is_ok());
    }

    /// Whatever byte a target holds, a mapped URL is one the upstream client takes.
    #[test]
    fn every_mapped_target_is_a_url_the_upstream_client_takes() {
        for b in 0u8..=255 {
            for target in [format!("/a{}b", b as char), format!("/a?x={}", b as char)] {
                if let Ok(url) = upstream_url(BASE, OPENAI, &target) {
                    assert!(url.parse::<ureq::http::Uri>().is_ok(), "{target:?}");
                }
            }
        }
        assert_eq!(
            upstream_url(BASE, OPENAI, "/a?x=\""),
            Err(BadTarget::BadByte)
        );
        assert!(upstream_url(BASE, OPENAI, "/a?x={}|^").is_ok());
    }

    #[test]
    fn only_standard_methods_in_capitals_are_forwarded() {
        for method in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"] {
            assert!(forwardable_method(method), "{method}");
        }
        for method in ["get", "Post", "TRACE", "CONNECT", "PROPFIND", ""] {
            assert!(!forwardable_method(method), "{method}");
        }
    }

    #[test]
    fn property_every_mapped_target_stays_under_the_base() {
        let pieces = [
            "/",
            "/",
            "v1",
            "api",
            "chat",
            ".",
            "..",
            "%2e",
            "%2E",
            "%2f",
            "%5c",
            "\\",
            "?",
            "#",
            "&",
            "=",
            ":",
            "@",
            "//",
            " ",
            "\r",
            "\n",
            "\0",
            "é",
            "%",
            "%00",
            "x",
            "http:",
            "evil.example",
            "*",
        ];
        let mut rng = crate::testing::Rng::new(7);
        for _ in 0..20_000 {
            let target = rng.text(&pieces, 12);
            let Ok(url) = upstream_url(BASE, OPENAI, &target) else {
                continue;
            };
            let rest = url
                .strip_prefix("https://openrouter.ai/api/v1/")
                .unwrap_or_else(|| panic!("{target:?} -> {url}"));
            let path = rest.split('?').next().unwrap();
            // No segment that is, once decoded, "." or ".." (which could climb out).
            let decoded = |s: &str| s.to_ascii_lowercase().replace("%2e", ".");
            assert!(
                !path
                    .split('/')
                    .any(|s| decoded(s) == "." || decoded(s) == ".."),
                "{target:?} -> {url}"
            );
            let lower = path.to_ascii_lowercase();
            assert!(
                !lower.contains("%2f") && !lower.contains("%5c"),
                "{target:?} -> {url}"
            );
            assert!(
                url.bytes()
                    .all(|b| b > b' ' && b < 0x7F && b != b'\\' && b != b'#'),
                "{target:?} -> {url:?}"
            );
        }
    }

    #[test]
    fn property_credentials_never_cross_in_any_spelling() {
        // Each name with what must happen to it, decided here, not by the code's own
        // comparison; the case of every letter is then drawn at random.
        let names = [
            ("authorization", false),
            ("x-api-key", false),
            ("x-goog-api-key", false),
            ("api-key", false),
            ("proxy-authorization", false),
            ("x-goog-api-keys", true),
            ("api-keys", true),
            ("goog-api-key", true),
            ("authorizatio", true),
            ("authorization2", true),
            ("x-api-keys", true),
            ("x-api_key", true),
            ("x-apikey", true),
            ("x-title", true),
            ("http-referer", true),
        ];
        let mut rng = crate::testing::Rng::new(11);
        for _ in 0..5_000 {
            let (name, forwarded) = *rng.pick(&names);
            let spelled: String = name
                .chars()
                .map(|c| {
                    if rng.below(2) == 0 {
                        c.to_ascii_uppercase()
                    } else {
                        c
                    }
                })
                .collect();
            assert_eq!(
                forward_request_header(&spelled, &[]),
                forwarded,
                "{spelled}"
            );
        }
    }

    #[test]
    fn client_credentials_and_hop_headers_stay_here() {
        let named = connection_tokens("keep-alive, X-Hop ,");
        assert_eq!(named, ["keep-alive", "x-hop"]);
        for name in [
            "Authorization",
            "x-api-key",
            "X-Goog-Api-Key",
            "api-key",
            "Host",
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "TE",
            "Upgrade",
            "Proxy-Authorization",
            "X-Hop",
            "Expect",
        ] {
            assert!(!forward_request_header(name, &named), "{name}");
        }
        for name in [
            "HTTP-Referer",
            "X-Title",
            "X-OpenRouter-Title",
            "Content-Type",
            "Content-Encoding",
            "Accept-Encoding",
            "User-Agent",
        ] {
            assert!(forward_request_header(name, &named), "{name}");
        }
    }

    #[test]
    fn response_framing_and_cors_are_ours() {
        for name in [
            "Content-Length",
            "Transfer-Encoding",
            "Connection",
            "Access-Control-Allow-Origin",
            "Proxy-Authenticate",
        ] {
            assert!(!forward_response_header(name, &[]), "{name}");
        }
        for name in [
            "Content-Type",
            "Content-Encoding",
            "X-RateLimit-Remaining",
            "Retry-After",
            "Set-Cookie",
        ] {
            assert!(forward_response_header(name, &[]), "{name}");
        }
    }
}
