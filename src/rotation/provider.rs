//! The provider presets: for each LLM API the proxy knows, its base URL, how a key goes
//! upstream, which client path prefixes stand for its base, how `keys check` asks about
//! a key, and the shape of the proxy's own errors that its SDKs parse.
//!
//! Invariant: pure data and lookups. Rate limits need no preset: `classify.rs` reads
//! every provider's dialect from the answer itself.

use std::fmt;

/// A provider preset (`--provider`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Provider {
    OpenRouter,
    OpenAi,
    Anthropic,
    /// Google's own Gemini API (`/v1beta/models/{model}:generateContent`).
    Gemini,
    /// Gemini's OpenAI-compatible endpoint.
    GeminiOpenAi,
    Groq,
    Mistral,
    DeepSeek,
    Cerebras,
    Xai,
    /// Any OpenAI-compatible API: the base URL comes from `--upstream`.
    Custom,
}

/// How a pool key goes upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Auth {
    /// `Authorization: Bearer KEY`
    Bearer,
    /// `x-api-key: KEY`, with `anthropic-version` when the client sent none.
    AnthropicKey,
    /// `x-goog-api-key: KEY`
    GoogleKey,
}

/// The `anthropic-version` sent when the client sent none.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

impl Auth {
    /// The header that carries `key`, and its value.
    pub fn header(self, key: &str) -> (&'static str, String) {
        match self {
            Auth::Bearer => ("authorization", format!("Bearer {key}")),
            Auth::AnthropicKey => ("x-api-key", key.to_string()),
            Auth::GoogleKey => ("x-goog-api-key", key.to_string()),
        }
    }

    /// Headers the provider needs beside the key, unless the client sent them.
    pub fn defaults(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Auth::AnthropicKey => &[("anthropic-version", ANTHROPIC_VERSION)],
            Auth::Bearer | Auth::GoogleKey => &[],
        }
    }
}

/// The shape of the proxy's own error answers, as the provider's SDKs parse them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `{"error":{"code":N,"message":…}}` (OpenRouter, OpenAI and the compatible APIs).
    OpenAi,
    /// `{"type":"error","error":{"type":…,"message":…}}`, `event: error` in a stream.
    Anthropic,
    /// `{"error":{"code":N,"status":…,"message":…}}`.
    Google,
}

/// What `keys check` asks for a key: a cheap authenticated GET.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// OpenRouter's `/key`: validity and credit.
    Credit,
    /// A model list at this path under the base: validity only.
    Models(&'static str),
}

/// Every preset, in the order `--help` and the README list them.
pub const ALL: [Provider; 11] = [
    Provider::OpenRouter,
    Provider::OpenAi,
    Provider::Anthropic,
    Provider::Gemini,
    Provider::GeminiOpenAi,
    Provider::Groq,
    Provider::Mistral,
    Provider::DeepSeek,
    Provider::Cerebras,
    Provider::Xai,
    Provider::Custom,
];

/// The client path prefixes that stand for an OpenAI-style base: Roo Code appends
/// `/chat/completions` to whatever base URL the user typed, so `http://localhost:3002`,
/// `…/v1` and `…/api/v1` must all work. The first that matches is stripped.
const OPENAI_PREFIXES: &[&str] = &["/api/v1/", "/v1/", "/"];

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Provider::OpenRouter => "openrouter",
            Provider::OpenAi => "openai",
            Provider::Anthropic => "anthropic",
            Provider::Gemini => "gemini",
            Provider::GeminiOpenAi => "gemini-openai",
            Provider::Groq => "groq",
            Provider::Mistral => "mistral",
            Provider::DeepSeek => "deepseek",
            Provider::Cerebras => "cerebras",
            Provider::Xai => "xai",
            Provider::Custom => "custom",
        }
    }

    /// The preset of this name (as [`Provider::name`] spells it, any case).
    pub fn parse(name: &str) -> Option<Provider> {
        let name = name.trim();
        ALL.into_iter()
            .find(|p| p.name().eq_ignore_ascii_case(name))
    }

    /// The API base (no trailing slash); `None` for `custom`, which needs `--upstream`.
    pub fn base_url(self) -> Option<&'static str> {
        Some(match self {
            Provider::OpenRouter => "https://openrouter.ai/api/v1",
            Provider::OpenAi => "https://api.openai.com/v1",
            Provider::Anthropic => "https://api.anthropic.com/v1",
            // The version is part of the client's path (`/v1beta/models/…`).
            Provider::Gemini => "https://generativelanguage.googleapis.com",
            Provider::GeminiOpenAi => "https://generativelanguage.googleapis.com/v1beta/openai",
            Provider::Groq => "https://api.groq.com/openai/v1",
            Provider::Mistral => "https://api.mistral.ai/v1",
            Provider::DeepSeek => "https://api.deepseek.com/v1",
            Provider::Cerebras => "https://api.cerebras.ai/v1",
            Provider::Xai => "https://api.x.ai/v1",
            Provider::Custom => return None,
        })
    }

    /// The client path prefixes that stand for the base; the first that matches is
    /// stripped. Gemini's own API keeps the version in the path (`/v1beta/…`), so its
    /// base has none and nothing but the leading `/` is stripped: no doubled `/v1beta/`.
    pub const fn base_prefixes(self) -> &'static [&'static str] {
        match self {
            Provider::Gemini => &["/"],
            Provider::GeminiOpenAi => &["/v1beta/openai/", "/api/v1/", "/v1/", "/"],
            _ => OPENAI_PREFIXES,
        }
    }

    pub fn auth(self) -> Auth {
        match self {
            Provider::Anthropic => Auth::AnthropicKey,
            Provider::Gemini => Auth::GoogleKey,
            _ => Auth::Bearer,
        }
    }

    pub fn shape(self) -> Shape {
        match self {
            Provider::Anthropic => Shape::Anthropic,
            Provider::Gemini => Shape::Google,
            _ => Shape::OpenAi,
        }
    }

    pub fn check(self) -> Check {
        match self {
            Provider::OpenRouter => Check::Credit,
            Provider::Gemini => Check::Models("/v1beta/models"),
            _ => Check::Models("/models"),
        }
    }
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The providers a key's shape says it is for (its well-known start: `sk-or-`,
/// `sk-ant-`, `AIza`, `gsk_`, `xai-`, `csk-`, `sk-proj-`), or `None` when the shape says
/// nothing certain (plain `sk-…` is OpenAI's and DeepSeek's alike).
pub fn by_key_shape(key: &str) -> Option<&'static [Provider]> {
    const SHAPES: [(&str, &[Provider]); 7] = [
        ("sk-or-", &[Provider::OpenRouter]),
        ("sk-ant-", &[Provider::Anthropic]),
        ("AIza", &[Provider::Gemini, Provider::GeminiOpenAi]),
        ("gsk_", &[Provider::Groq]),
        ("xai-", &[Provider::Xai]),
        ("csk-", &[Provider::Cerebras]),
        ("sk-proj-", &[Provider::OpenAi]),
    ];
    SHAPES
        .iter()
        .find(|(start, _)| key.starts_with(start))
        .map(|(_, providers)| *providers)
}

/// The list of preset names, for messages: `openrouter, openai, …`.
pub fn names() -> String {
    ALL.map(Provider::name).join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_is_found_by_its_name_in_any_case() {
        for p in ALL {
            assert_eq!(Provider::parse(p.name()), Some(p));
            assert_eq!(Provider::parse(&p.name().to_uppercase()), Some(p));
        }
        assert_eq!(Provider::parse("gemini_openai"), None);
        assert_eq!(Provider::parse(""), None);
    }

    #[test]
    fn every_preset_but_custom_has_an_https_base_without_a_trailing_slash() {
        for p in ALL {
            match p.base_url() {
                Some(base) => {
                    assert!(base.starts_with("https://") && !base.ends_with('/'), "{p}")
                }
                None => assert_eq!(p, Provider::Custom),
            }
        }
    }

    #[test]
    fn each_key_goes_in_its_providers_form() {
        assert_eq!(
            Provider::OpenRouter.auth().header("k"),
            ("authorization", "Bearer k".to_string())
        );
        assert_eq!(
            Provider::Anthropic.auth().header("k"),
            ("x-api-key", "k".to_string())
        );
        assert_eq!(
            Provider::Anthropic.auth().defaults(),
            [("anthropic-version", "2023-06-01")]
        );
        assert_eq!(
            Provider::Gemini.auth().header("k"),
            ("x-goog-api-key", "k".to_string())
        );
        // Gemini's OpenAI-compatible endpoint takes Bearer.
        assert_eq!(Provider::GeminiOpenAi.auth(), Auth::Bearer);
    }

    #[test]
    fn a_keys_shape_names_its_provider_only_when_certain() {
        assert_eq!(
            by_key_shape("sk-or-v1-abc"),
            Some(&[Provider::OpenRouter][..])
        );
        assert_eq!(
            by_key_shape("AIzaSyabc"),
            Some(&[Provider::Gemini, Provider::GeminiOpenAi][..])
        );
        assert_eq!(
            by_key_shape("sk-ant-api03-x"),
            Some(&[Provider::Anthropic][..])
        );
        assert_eq!(by_key_shape("sk-abc"), None);
        assert_eq!(by_key_shape("anything"), None);
    }

    #[test]
    fn only_openrouter_checks_credit() {
        for p in ALL {
            assert_eq!(p.check() == Check::Credit, p == Provider::OpenRouter, "{p}");
        }
    }
}
