//! Model allowlists: which models a key (or every key of an owner or organisation) may call.
//!
//! A rule is a model name pattern with `*` wildcards, optionally behind a provider: `gpt-4o*` (any provider's
//! model of that name), `anthropic/*` (every Anthropic model), `openai/gpt-4o-mini` (that one only). A list
//! permits a request when any of its rules matches; an empty list permits everything. The key's own list, its
//! owner's and its organisation's must all permit a request ([`crate::keys::Verifier::check_model`]).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::credentials::Provider;
use crate::error::{Error, Result};

/// The most rules one list may hold.
pub const MAX_MODEL_RULES: usize = 64;

/// One allowlist rule: `[provider/]pattern`, `*` matching any run of characters. Model names match
/// case-insensitively (providers treat them so).
///
/// ```
/// use keymeter::keys::ModelRule;
///
/// let rule: ModelRule = "anthropic/claude-*".parse()?;
/// assert!(rule.permits("anthropic", "claude-sonnet-4-5"));
/// assert!(!rule.permits("openai", "claude-sonnet-4-5"));
/// let any_provider: ModelRule = "gpt-4o*".parse()?;
/// assert!(any_provider.permits("openai", "gpt-4o-mini"));
/// assert!(!any_provider.permits("openai", "gpt-5"));
/// # Ok::<(), keymeter::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelRule {
    provider: Option<Provider>,
    /// Lower case, as written.
    pattern: String,
}

impl ModelRule {
    /// Whether the rule matches `model` called through `provider` (a provider name such as `openai`).
    pub fn permits(&self, provider: &str, model: &str) -> bool {
        rule_permits(
            self.provider.as_ref().map_or("", |p| p.as_str()),
            self.pattern.as_bytes(),
            provider,
            model.as_bytes(),
        )
    }
}

/// One rule (its provider, empty for any, and its pattern) against a request.
fn rule_permits(rule_provider: &str, pattern: &[u8], provider: &str, model: &[u8]) -> bool {
    // `gemini` is how some name Google's provider.
    let provider_ok = rule_provider.is_empty()
        || rule_provider.eq_ignore_ascii_case(provider)
        || (rule_provider == "google" && provider.eq_ignore_ascii_case("gemini"));
    provider_ok && glob(pattern, model)
}

/// Several allowlists packed into one buffer, what the hot check after a verify reads: one allocation, so one
/// cold cache line or two, where a list of rules costs a dependent load per rule. Each rule is its list's index,
/// its provider's length (0 for any) and bytes, its pattern's length and bytes; a list's rules are contiguous.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PackedRules {
    bytes: Box<[u8]>,
}

impl PackedRules {
    /// Packs `lists` (at most 255; empty lists are left out: they permit everything).
    pub(crate) fn pack<'a>(lists: impl IntoIterator<Item = &'a [ModelRule]>) -> Self {
        let mut bytes = Vec::new();
        for (i, list) in lists.into_iter().enumerate().take(255) {
            for rule in list {
                let provider = rule.provider.as_ref().map_or("", |p| p.as_str());
                // Providers are at most 32 bytes and patterns 128 (`FromStr`): their lengths fit a byte.
                bytes.push(i as u8);
                bytes.push(provider.len() as u8);
                bytes.extend_from_slice(provider.as_bytes());
                bytes.push(rule.pattern.len() as u8);
                bytes.extend_from_slice(rule.pattern.as_bytes());
            }
        }
        PackedRules {
            bytes: bytes.into_boxed_slice(),
        }
    }

    /// The index of the first list that does not permit `model` through `provider`, if any.
    pub(crate) fn refusing(&self, provider: &str, model: &str) -> Option<usize> {
        let b = &self.bytes;
        let (mut at, mut list, mut permitted) = (0, None::<u8>, true);
        while at < b.len() {
            let i = b[at];
            if list != Some(i) {
                if !permitted {
                    return list.map(usize::from);
                }
                (list, permitted) = (Some(i), false);
            }
            let p_len = usize::from(b[at + 1]);
            let rule_provider = std::str::from_utf8(&b[at + 2..at + 2 + p_len]).unwrap_or("");
            let q = at + 2 + p_len;
            let pattern = &b[q + 1..q + 1 + usize::from(b[q])];
            at = q + 1 + pattern.len();
            if !permitted && rule_permits(rule_provider, pattern, provider, model.as_bytes()) {
                permitted = true;
            }
        }
        if permitted {
            None
        } else {
            list.map(usize::from)
        }
    }
}

/// `*` matches any run (also empty), every other byte itself, ASCII case-insensitively. Linear in practice: the
/// classic backtrack to the last star, never exponential.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p].eq_ignore_ascii_case(&text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// Parses `[provider/]pattern`: a pattern of 1–128 characters of letters, digits, `.`, `-`, `_`, `:`, `@` and
/// `*`; a provider as [`Provider::new`] takes it.
///
/// # Errors
/// [`Error::InvalidInput`] naming what is wrong.
impl FromStr for ModelRule {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let text = text.trim();
        let (provider, pattern) = match text.split_once('/') {
            Some((provider, pattern)) => (Some(Provider::new(provider)?), pattern),
            None => (None, text),
        };
        let valid = |b: u8| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':' | b'@' | b'*')
        };
        if pattern.is_empty() || pattern.len() > 128 || !pattern.bytes().all(valid) {
            return Err(Error::invalid(
                "model rule",
                format!(
                    "{:?}: expected [provider/]pattern, the pattern 1–128 characters of letters, digits, \
                     '.', '-', '_', ':', '@' and '*'",
                    text.chars().take(140).collect::<String>()
                ),
            ));
        }
        Ok(ModelRule {
            provider,
            pattern: pattern.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for ModelRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.provider {
            Some(p) => write!(f, "{p}/{}", self.pattern),
            None => f.write_str(&self.pattern),
        }
    }
}

impl Serialize for ModelRule {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ModelRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether `rules` permit `model` through `provider`: an empty list permits everything.
pub fn permits(rules: &[ModelRule], provider: &str, model: &str) -> bool {
    rules.is_empty() || rules.iter().any(|r| r.permits(provider, model))
}

/// Parses a comma-separated list of rules (`gpt-4o*,anthropic/*`); empty text is an empty list.
///
/// # Errors
/// [`Error::InvalidInput`] for a bad rule or more than [`MAX_MODEL_RULES`].
pub fn parse_rules(text: &str) -> Result<Vec<ModelRule>> {
    let rules = text
        .split(',')
        .filter(|r| !r.trim().is_empty())
        .map(str::parse)
        .collect::<Result<Vec<ModelRule>>>()?;
    check_rules(&rules)?;
    Ok(rules)
}

/// Checks a list's length.
///
/// # Errors
/// [`Error::InvalidInput`] for more than [`MAX_MODEL_RULES`].
pub fn check_rules(rules: &[ModelRule]) -> Result<()> {
    if rules.len() > MAX_MODEL_RULES {
        return Err(Error::invalid(
            "model rules",
            format!("at most {MAX_MODEL_RULES} rules"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The packed lists refuse exactly where the first list that does not permit the model is.
        #[test]
        fn packed_lists_decide_as_the_lists_do(
            lists in proptest::collection::vec(
                proptest::collection::vec(("(|openai/|google/)", "[ab*]{1,4}"), 0..4), 0..4),
            provider in "(openai|google|gemini|anthropic)",
            model in "[ab]{0,5}",
        ) {
            let lists: Vec<Vec<ModelRule>> = lists
                .iter()
                .map(|l| l.iter().map(|(p, pat)| format!("{p}{pat}").parse().unwrap()).collect())
                .collect();
            let naive = lists.iter().position(|l| !permits(l, &provider, &model));
            // Packed as the verifier packs them: the empty lists left out.
            let kept: Vec<&Vec<ModelRule>> = lists.iter().filter(|l| !l.is_empty()).collect();
            let packed = PackedRules::pack(kept.iter().map(|l| l.as_slice()));
            let refused = packed.refusing(&provider, &model).map(|i| kept[i]);
            proptest::prop_assert_eq!(refused, naive.map(|i| &lists[i]));
        }
    }

    fn rule(s: &str) -> ModelRule {
        s.parse().unwrap()
    }

    #[test]
    fn patterns_match_as_globs() {
        let cases = [
            ("*", "anything", true),
            ("gpt-4o*", "gpt-4o", true),
            ("gpt-4o*", "GPT-4o-Mini", true),
            ("gpt-4o*", "gpt-4", false),
            ("*-mini", "gpt-4o-mini", true),
            ("*-mini", "gpt-4o-mini-2024", false),
            ("claude-*-4-5", "claude-sonnet-4-5", true),
            ("claude-*-4-5", "claude-sonnet-4-1", false),
            ("a*b*c", "axxbyyc", true),
            ("a*b*c", "axxbyy", false),
            ("gpt-5", "gpt-5-mini", false),
        ];
        for (pattern, model, expected) in cases {
            assert_eq!(
                rule(pattern).permits("openai", model),
                expected,
                "{pattern} {model}"
            );
        }
    }

    #[test]
    fn providers_narrow_a_rule() {
        assert!(rule("anthropic/*").permits("anthropic", "claude-haiku-4-5"));
        assert!(!rule("anthropic/*").permits("openai", "gpt-4o"));
        assert!(rule("gemini/gemini-2.5-*").permits("google", "gemini-2.5-flash"));
        assert!(rule("google/*").permits("gemini", "gemini-2.5-flash"));
        assert_eq!(
            rule("Gemini/Gemini-2.5-*").to_string(),
            "google/gemini-2.5-*"
        );
    }

    #[test]
    fn bad_rules_are_refused_and_lists_bounded() {
        for bad in [
            "",
            "gpt 4o",
            "openai/",
            "a/b/c",
            "x".repeat(129).as_str(),
            "Bad Provider/x",
        ] {
            assert!(bad.parse::<ModelRule>().is_err(), "{bad:?}");
        }
        assert_eq!(parse_rules(" gpt-4o* , anthropic/* ").unwrap().len(), 2);
        assert!(parse_rules("").unwrap().is_empty());
        let many = vec!["m"; MAX_MODEL_RULES + 1].join(",");
        assert!(parse_rules(&many).is_err());
        assert!(permits(&[], "openai", "anything"));
    }

    #[test]
    fn rules_round_trip_through_json() {
        let rules = parse_rules("gpt-4o*,anthropic/*").unwrap();
        let json = serde_json::to_string(&rules).unwrap();
        assert_eq!(json, r#"["gpt-4o*","anthropic/*"]"#);
        assert_eq!(
            serde_json::from_str::<Vec<ModelRule>>(&json).unwrap(),
            rules
        );
    }
}
