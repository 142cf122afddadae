//! Who may use the proxy: with an access token configured, a request must carry it where
//! clients put an API key (`Authorization: Bearer …`, `x-api-key`, `x-goog-api-key`,
//! `api-key` or a `key` query parameter), whatever the provider.
//!
//! Invariants: pure; the comparison takes the same time whatever the first differing
//! byte is, so the token cannot be guessed byte by byte from response times. The
//! client's credential never goes upstream (route.rs drops every form of it).

/// The credentials a request carries, in the order looked at: `Authorization: Bearer …`,
/// `x-api-key`, `x-goog-api-key`, `api-key`, then the target's `key` query parameter.
pub fn presented<'a>(header: impl Fn(&str) -> Option<&'a str>, target: &'a str) -> Vec<&'a str> {
    let bearer = header("authorization").and_then(|v| {
        let (scheme, rest) = crate::serve::http1::trim_ows(v).split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| crate::serve::http1::trim_ows(rest))
    });
    let others = crate::serve::route::CREDENTIAL_HEADERS[1..]
        .iter()
        .map(|name| header(name).map(str::trim));
    std::iter::once(bearer)
        .chain(others)
        .chain(std::iter::once(crate::serve::route::credential_param(
            target,
        )))
        .flatten()
        .collect()
}

/// Whether `given` is `expected`, in time that depends only on their lengths.
pub fn token_matches(given: &str, expected: &str) -> bool {
    let (given, expected) = (given.as_bytes(), expected.as_bytes());
    let mut difference = given.len() ^ expected.len();
    for (i, e) in expected.iter().enumerate() {
        let g = given.get(i).copied().unwrap_or(0);
        difference |= usize::from(g ^ e);
    }
    difference == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| {
            pairs
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| *v)
        }
    }

    #[test]
    fn the_token_is_read_from_where_clients_put_keys() {
        assert_eq!(
            presented(headers(&[("Authorization", "Bearer abc ")]), "/"),
            ["abc"]
        );
        assert_eq!(
            presented(headers(&[("authorization", "bearer abc")]), "/"),
            ["abc"]
        );
        for name in ["x-api-key", "X-Goog-Api-Key", "api-key"] {
            assert_eq!(presented(headers(&[(name, "abc")]), "/"), ["abc"], "{name}");
        }
        assert_eq!(
            presented(headers(&[]), "/v1beta/x?alt=sse&key=abc"),
            ["abc"]
        );
        assert_eq!(
            presented(
                headers(&[("Authorization", "Basic eA=="), ("x-api-key", "k")]),
                "/"
            ),
            ["k"]
        );
        assert_eq!(
            presented(headers(&[("x-goog-api-key", "dummy")]), "/x?key=tok"),
            ["dummy", "tok"]
        );
        assert!(presented(headers(&[]), "/x?keys=1").is_empty());
    }

    #[test]
    fn only_the_exact_token_matches() {
        assert!(token_matches("s3cret-token", "s3cret-token"));
        for wrong in [
            "",
            "s3cret-toke",
            "s3cret-token!",
            "S3cret-token",
            "x3cret-token",
        ] {
            assert!(!token_matches(wrong, "s3cret-token"), "{wrong:?}");
        }
    }
}
