//! What a web browser may do with the proxy: which page origins may call it (`Origin`,
//! CORS) and which host names it answers to (`Host`, against DNS rebinding).
//!
//! Invariants: pure (no sockets, no clock). An origin is allowed only by a rule; `null`
//! and anything unparsable never are. Allowed origins are echoed, never `*`. Without an
//! access token the proxy answers only to loopback names, its listening address and the
//! hosts given with `--allow-host`.

use std::fmt;

use crate::serve::error::Reply;

/// One `--allow-origin` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OriginRule {
    /// `vscode-webview://`: every origin of that scheme.
    Scheme(String),
    /// `http://localhost:*`: that scheme and host, any port (or none).
    AnyPort { scheme: String, host: String },
    /// `https://app.example:8443`: exactly this origin.
    Exact(String),
}

/// The origins allowed without any flag: the editor's web views (Roo Code's settings
/// page) and pages served from this machine.
pub const DEFAULT_ORIGINS: [&str; 5] = [
    "vscode-webview://",
    "vscode-file://",
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
];

impl OriginRule {
    /// Reads a rule: `scheme://`, `scheme://host:*` or an origin `scheme://host[:port]`.
    pub fn parse(text: &str) -> Result<OriginRule, &'static str> {
        let text = text.trim().to_ascii_lowercase();
        let Some((scheme, rest)) = text.split_once("://") else {
            return Err(
                "must be an origin such as https://app.example, http://localhost:* or vscode-webview://",
            );
        };
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b));
        if !scheme_ok {
            return Err("has no valid scheme (such as https://)");
        }
        if rest.is_empty() {
            return Ok(OriginRule::Scheme(scheme.to_string()));
        }
        if rest == "*" {
            return Err(
                "a wildcard host would let every web page spend your keys; name the origin",
            );
        }
        let (host, any_port) = match rest.strip_suffix(":*") {
            Some(host) => (host, true),
            None => (rest, false),
        };
        let clean = !host.is_empty() && !host.contains(['/', '?', '#', '@', ' ', '*', ',']);
        if !clean || split_port(host).is_none() || (any_port && split_port(host) != Some(host)) {
            return Err("must be an origin only (no path, no user), with at most a :* port");
        }
        if any_port {
            return Ok(OriginRule::AnyPort {
                scheme: scheme.to_string(),
                host: host.to_string(),
            });
        }
        Ok(OriginRule::Exact(format!("{scheme}://{rest}")))
    }

    fn allows(&self, origin: &Origin) -> bool {
        match self {
            OriginRule::Scheme(scheme) => origin.scheme == *scheme,
            OriginRule::AnyPort { scheme, host } => {
                origin.scheme == *scheme && origin.host == *host
            }
            OriginRule::Exact(exact) => origin.whole == *exact,
        }
    }
}

impl fmt::Display for OriginRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            OriginRule::Scheme(scheme) => write!(f, "{scheme}://"),
            OriginRule::AnyPort { scheme, host } => write!(f, "{scheme}://{host}:*"),
            OriginRule::Exact(origin) => f.write_str(origin),
        }
    }
}

/// The default rules.
pub fn default_rules() -> Vec<OriginRule> {
    DEFAULT_ORIGINS
        .iter()
        .map(|r| OriginRule::parse(r).expect("the default origins parse"))
        .collect()
}

/// An `Origin` header value taken apart (lower-cased).
struct Origin {
    whole: String,
    scheme: String,
    /// Without the port; IPv6 literals keep their brackets.
    host: String,
}

impl Origin {
    fn parse(value: &str) -> Option<Origin> {
        let whole = value.trim_matches([' ', '\t']).to_ascii_lowercase();
        let (scheme, rest) = whole.split_once("://")?;
        if scheme.is_empty() || rest.contains(['/', '?', '#', '@', ' ', '*', ',']) {
            return None;
        }
        let host = split_port(rest)?.to_string();
        Some(Origin {
            scheme: scheme.to_string(),
            host,
            whole,
        })
    }
}

/// `host[:port]` or `[v6][:port]` → the host part; `None` when malformed.
fn split_port(authority: &str) -> Option<&str> {
    if authority.starts_with('[') {
        let end = authority.find(']')?;
        let after = &authority[end + 1..];
        return (after.is_empty() || port_ok(after.strip_prefix(':')?))
            .then_some(&authority[..=end]);
    }
    match authority.split_once(':') {
        Some((host, port)) if port_ok(port) => Some(host),
        Some(_) => None,
        None => Some(authority),
    }
}

fn port_ok(port: &str) -> bool {
    !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit())
}

/// Whether a request with this `Origin` may use the proxy.
pub fn origin_allowed(origin: &str, rules: &[OriginRule]) -> bool {
    Origin::parse(origin).is_some_and(|o| rules.iter().any(|r| r.allows(&o)))
}

/// Who is asking, as far as a browser tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller<'a> {
    /// No browser signs: an SDK, curl, an editor's extension host. Unaffected.
    Program,
    /// A page whose origin is allowed; the answer carries CORS headers for it.
    Allowed(&'a str),
    /// A page of another origin, or a cross-site request that hides its origin.
    Refused,
}

/// Classifies a request by its `Origin` and `Sec-Fetch-Site` headers. A request with no
/// `Origin` that a browser marks `cross-site` (an `<img>` or `<script>` tag, a link) is
/// refused, since it could spend a key though its page never reads the answer.
pub fn caller<'a>(
    origin: Option<&'a str>,
    fetch_site: Option<&str>,
    rules: &[OriginRule],
) -> Caller<'a> {
    match origin {
        Some(origin) if origin_allowed(origin, rules) => Caller::Allowed(origin),
        Some(_) => Caller::Refused,
        None if fetch_site.is_some_and(|s| s.eq_ignore_ascii_case("cross-site")) => Caller::Refused,
        None => Caller::Program,
    }
}

/// The 403 for a page of an origin not allowed.
pub fn refused_origin(origin: Option<&str>) -> Reply {
    let from = match origin {
        Some(origin) => format!("a web page at '{}'", printable(origin)),
        None => "a cross-site web request".to_string(),
    };
    Reply::new(
        403,
        format!(
            "{from} may not use this proxy: only the editor's web views and pages on this machine may; allow more with --allow-origin (or ROO_PROXY_ALLOW_ORIGIN)"
        ),
    )
}

/// The CORS headers of every answer to `caller` (`Vary: Origin` for all, so no cache
/// hands one origin's answer to another).
pub fn cors_headers(caller: Caller) -> Vec<(String, String)> {
    let mut headers = vec![("Vary".to_string(), "Origin".to_string())];
    if let Caller::Allowed(origin) = caller {
        headers.push((
            "Access-Control-Allow-Origin".to_string(),
            printable(origin).into_owned(),
        ));
    }
    headers
}

/// What the proxy answers to, besides loopback names.
#[derive(Debug, Clone, Copy)]
pub struct Hosts<'a> {
    /// `--host`, the listening address.
    pub listening: &'a str,
    /// `--allow-host` names.
    pub extra: &'a [String],
    /// With an access token, the token guards the proxy and any host name is answered.
    pub any: bool,
}

/// Checks a request's `Host` value (a missing one is http1.rs's business). Answers to a
/// name that resolves here only by a DNS trick (rebinding) are refused.
pub fn check_host(value: Option<&str>, hosts: Hosts) -> Result<(), Reply> {
    let Some(value) = value else {
        return Ok(());
    };
    if hosts.any {
        return Ok(());
    }
    let value = value.to_ascii_lowercase();
    let known = split_port(&value).is_some_and(|host| {
        let host = host.strip_suffix('.').unwrap_or(host);
        crate::front::config::is_loopback(host)
            || same_host(host, hosts.listening)
            || hosts.extra.iter().any(|h| same_host(host, h))
    });
    if known {
        return Ok(());
    }
    Err(Reply::new(
        403,
        format!(
            "this proxy does not answer to the host name '{}' (a web page may be trying DNS rebinding); use localhost or 127.0.0.1, or allow the name with --allow-host (or ROO_PROXY_ALLOW_HOST)",
            printable(&value)
        ),
    ))
}

fn same_host(host: &str, named: &str) -> bool {
    let named = named.trim();
    let bare = |h: &str| h.trim_start_matches('[').trim_end_matches(']').to_string();
    bare(host).eq_ignore_ascii_case(&bare(named))
}

/// A header value as it may appear in an answer: visible ASCII only, at most 200 bytes.
fn printable(value: &str) -> std::borrow::Cow<'_, str> {
    if value.len() <= 200 && value.bytes().all(|b| (b' '..0x7f).contains(&b)) {
        return value.into();
    }
    value
        .chars()
        .filter(|c| (' '..'\u{7f}').contains(c))
        .take(200)
        .collect::<String>()
        .into()
}

/// Checks an `--allow-host` value: a host name or address, no port, no path.
pub fn parse_host(text: &str) -> Result<String, &'static str> {
    let host = text.trim().to_ascii_lowercase();
    let ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:_".contains(&b))
        && (host.starts_with('[')
            || !host.contains(':')
            || host.parse::<std::net::Ipv6Addr>().is_ok());
    if !ok {
        return Err("must be a host name or address without port or path, such as my-laptop.local");
    }
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(extra: &[&str]) -> Vec<OriginRule> {
        let mut rules = default_rules();
        rules.extend(extra.iter().map(|r| OriginRule::parse(r).unwrap()));
        rules
    }

    #[test]
    fn the_editor_and_this_machine_are_allowed_by_default() {
        let rules = rules(&[]);
        for origin in [
            "vscode-webview://1a2b3c4d-5e6f",
            "vscode-file://vscode-app",
            "http://localhost:5173",
            "http://localhost",
            "http://127.0.0.1:3002",
            "http://[::1]:8080",
            "HTTP://LOCALHOST:1",
        ] {
            assert!(origin_allowed(origin, &rules), "{origin}");
        }
        for origin in [
            "https://evil.example",
            "null",
            "",
            "http://localhost.evil.example",
            "http://127.0.0.1.evil.example:3002",
            "https://localhost:3000",
            "http://localhost:3000/path",
            "http://user@localhost",
            "http://localhost:x",
            "http://evil.example, http://localhost",
            "vscode-webviewx://a",
        ] {
            assert!(!origin_allowed(origin, &rules), "{origin}");
        }
    }

    #[test]
    fn allow_origin_rules_widen_exactly_what_they_name() {
        let rules = rules(&[
            "https://app.example",
            "https://dev.example:*",
            "chrome-extension://",
        ]);
        assert!(origin_allowed("https://app.example", &rules));
        assert!(!origin_allowed("https://app.example:444", &rules));
        assert!(!origin_allowed("http://app.example", &rules));
        assert!(origin_allowed("https://dev.example:8443", &rules));
        assert!(origin_allowed("chrome-extension://abcdef", &rules));
        for bad in [
            "*",
            "https://*",
            "app.example",
            "https://a/b",
            "://x",
            "1http://x",
        ] {
            assert!(OriginRule::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            OriginRule::parse(" HTTPS://App.Example ")
                .unwrap()
                .to_string(),
            "https://app.example"
        );
    }

    #[test]
    fn callers_are_programs_allowed_pages_or_refused() {
        let rules = rules(&[]);
        assert_eq!(caller(None, None, &rules), Caller::Program);
        assert_eq!(caller(None, Some("same-origin"), &rules), Caller::Program);
        assert_eq!(caller(None, Some("none"), &rules), Caller::Program);
        assert_eq!(caller(None, Some("cross-site"), &rules), Caller::Refused);
        let ok = "vscode-webview://abc";
        assert_eq!(
            caller(Some(ok), Some("cross-site"), &rules),
            Caller::Allowed(ok)
        );
        assert_eq!(
            caller(Some("https://evil.example"), None, &rules),
            Caller::Refused
        );
    }

    #[test]
    fn cors_headers_echo_an_allowed_origin_and_always_vary() {
        let headers = cors_headers(Caller::Allowed("vscode-webview://abc"));
        assert!(headers.contains(&("Vary".into(), "Origin".into())));
        assert!(headers.contains(&(
            "Access-Control-Allow-Origin".into(),
            "vscode-webview://abc".into()
        )));
        for caller in [Caller::Program, Caller::Refused] {
            let headers = cors_headers(caller);
            assert_eq!(headers, [("Vary".to_string(), "Origin".to_string())]);
        }
    }

    #[test]
    fn only_known_host_names_are_answered_without_a_token() {
        let extra = vec!["my-laptop.local".to_string()];
        let hosts = Hosts {
            listening: "127.0.0.1",
            extra: &extra,
            any: false,
        };
        for host in [
            "localhost",
            "localhost:3002",
            "LOCALHOST.",
            "127.0.0.1:3002",
            "127.9.9.9",
            "[::1]:3002",
            "[::1]",
            "my-laptop.local:3002",
        ] {
            assert!(check_host(Some(host), hosts).is_ok(), "{host}");
        }
        for host in [
            "evil.example",
            "evil.example:3002",
            "localhost.evil.example",
            "127.0.0.1.nip.io",
            "localhost:x",
            "[::1",
            "",
        ] {
            let reply = check_host(Some(host), hosts).unwrap_err();
            assert_eq!(reply.status, 403, "{host}");
        }
        let lan = Hosts {
            listening: "192.168.1.5",
            extra: &[],
            any: false,
        };
        assert!(check_host(Some("192.168.1.5:3002"), lan).is_ok());
        let token = Hosts { any: true, ..lan };
        assert!(check_host(Some("proxy.lan"), token).is_ok());
    }

    #[test]
    fn allow_host_values_are_names_without_ports() {
        assert_eq!(
            parse_host(" My-Laptop.local "),
            Ok("my-laptop.local".into())
        );
        assert_eq!(parse_host("::1"), Ok("::1".into()));
        assert!(parse_host("a.example:3002").is_err());
        assert!(parse_host("a.example/x").is_err());
        assert!(parse_host("").is_err());
    }
}
