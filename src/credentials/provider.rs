//! LLM providers, their key shapes, and refusal of placeholders.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// A provider name: `anthropic`, `openai`, `google` built in, or any custom `[a-z0-9_-]{1,32}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Provider(String);

impl Provider {
    /// Anthropic (`sk-ant-…` keys).
    pub fn anthropic() -> Self {
        Provider("anthropic".into())
    }

    /// OpenAI (`sk-…` / `sk-proj-…` keys).
    pub fn openai() -> Self {
        Provider("openai".into())
    }

    /// Google Gemini (`AIza…` keys).
    pub fn google() -> Self {
        Provider("google".into())
    }

    /// The built-in providers.
    pub fn built_in() -> [Provider; 3] {
        [
            Provider::anthropic(),
            Provider::openai(),
            Provider::google(),
        ]
    }

    /// Parses a provider name (case-insensitive; `gemini` means `google`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a name outside `[a-z0-9_-]{1,32}`.
    pub fn new(name: &str) -> Result<Self> {
        let name = name.trim().to_ascii_lowercase();
        let name = if name == "gemini" {
            "google".to_owned()
        } else {
            name
        };
        if name.is_empty()
            || name.len() > 32
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
        {
            return Err(Error::invalid(
                "provider",
                "use 1–32 characters of [a-z0-9_-]",
            ));
        }
        Ok(Provider(name))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The environment variables that hold this provider's system key in a `.env` file, preferred first.
    pub fn env_vars(&self) -> Vec<String> {
        match self.0.as_str() {
            "anthropic" => vec!["ANTHROPIC_API_KEY".into()],
            "openai" => vec!["OPENAI_API_KEY".into()],
            "google" => vec!["GOOGLE_API_KEY".into(), "GEMINI_API_KEY".into()],
            other => vec![format!(
                "{}_API_KEY",
                other.to_ascii_uppercase().replace('-', "_")
            )],
        }
    }

    /// Checks a key's shape for this provider and refuses obvious placeholders. The error never contains the key.
    ///
    /// ```
    /// use keymeter::credentials::Provider;
    ///
    /// assert!(Provider::anthropic().check_key("sk-ant-api03-abcdefghijklmnopqrstuvwxyz0123456789").is_ok());
    /// assert!(Provider::anthropic().check_key("sk-proj-abcdefghijklmnopqrstuvwxyz").is_err());
    /// assert!(Provider::openai().check_key("sk-...").is_err());
    /// assert!(Provider::openai().check_key("your_key_here").is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidCredential`] saying what is wrong.
    pub fn check_key(&self, key: &str) -> Result<()> {
        let bad = |reason: &str| Error::InvalidCredential {
            provider: self.0.clone(),
            reason: reason.to_owned(),
        };
        if key.trim().is_empty() {
            return Err(bad("the key is empty"));
        }
        if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(bad("the key contains white space or control characters"));
        }
        if let Some(why) = placeholder(key) {
            return Err(bad(why));
        }
        if key.len() > 512 {
            return Err(bad("the key is longer than 512 characters"));
        }
        let body_ok = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        match self.0.as_str() {
            "anthropic" => {
                if !key.starts_with("sk-ant-") || key.len() < 24 || !body_ok(key) {
                    return Err(bad(
                        "an Anthropic key looks like sk-ant-… (at least 24 characters of [A-Za-z0-9_-])",
                    ));
                }
            }
            "openai" => {
                if !key.starts_with("sk-")
                    || key.starts_with("sk-ant-")
                    || key.len() < 20
                    || !body_ok(key)
                {
                    return Err(bad(
                        "an OpenAI key looks like sk-… or sk-proj-… (at least 20 characters of [A-Za-z0-9_-])",
                    ));
                }
            }
            "google" => {
                if !key.starts_with("AIza") || key.len() != 39 || !body_ok(key) {
                    return Err(bad(
                        "a Google API key is AIza followed by 35 characters of [A-Za-z0-9_-]",
                    ));
                }
            }
            _ => {
                if key.len() < 8 {
                    return Err(bad("the key is shorter than 8 characters"));
                }
            }
        }
        Ok(())
    }
}

fn placeholder(key: &str) -> Option<&'static str> {
    let lower = key.to_ascii_lowercase();
    const WORDS: [&str; 12] = [
        "your_key",
        "your-key",
        "yourkey",
        "your_api",
        "your-api",
        "api_key_here",
        "key_here",
        "changeme",
        "change_me",
        "placeholder",
        "replace_me",
        "insert_key",
    ];
    if WORDS.iter().any(|w| lower.contains(w))
        || ["todo", "none", "null", "test", "dummy", "secret"].contains(&lower.as_str())
    {
        return Some("the key is a placeholder, not a real key");
    }
    if key.contains("...")
        || key.contains('…')
        || key.contains('<')
        || key.contains('>')
        || lower.contains("xxxxxx")
    {
        return Some("the key is a placeholder (it has an ellipsis, angle brackets or a run of x)");
    }
    None
}

impl fmt::Display for Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl FromStr for Provider {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Provider::new(s)
    }
}

impl Serialize for Provider {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Provider {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        Provider::new(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}
