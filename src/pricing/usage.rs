//! Canonical usage: token counts in disjoint classes, so no token is ever billed twice.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A class of tokens with its own rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenClass {
    /// Uncached text input.
    Input,
    /// Input read from the prompt cache.
    CacheRead,
    /// Input written to the prompt cache for 5 minutes (the default duration).
    #[serde(rename = "cache_write_5m")]
    CacheWrite5m,
    /// Input written to the prompt cache for 1 hour.
    #[serde(rename = "cache_write_1h")]
    CacheWrite1h,
    /// Visible output.
    Output,
    /// Reasoning ("thinking") output; billed at the output rate where the model has no reasoning rate.
    Reasoning,
    /// Audio input.
    AudioInput,
    /// Audio output.
    AudioOutput,
    /// Image input, per token.
    ImageInput,
}

/// The class with this name (`input`, `cache_read`, …).
impl std::str::FromStr for TokenClass {
    type Err = crate::Error;

    fn from_str(name: &str) -> Result<Self, crate::Error> {
        TokenClass::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .ok_or_else(|| crate::Error::invalid("token class", "unknown class name"))
    }
}

impl TokenClass {
    /// Every class, in billing-line order.
    pub const ALL: [TokenClass; 9] = [
        TokenClass::Input,
        TokenClass::CacheRead,
        TokenClass::CacheWrite5m,
        TokenClass::CacheWrite1h,
        TokenClass::Output,
        TokenClass::Reasoning,
        TokenClass::AudioInput,
        TokenClass::AudioOutput,
        TokenClass::ImageInput,
    ];

    /// The class's name in catalogs and cost lines.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenClass::Input => "input",
            TokenClass::CacheRead => "cache_read",
            TokenClass::CacheWrite5m => "cache_write_5m",
            TokenClass::CacheWrite1h => "cache_write_1h",
            TokenClass::Output => "output",
            TokenClass::Reasoning => "reasoning",
            TokenClass::AudioInput => "audio_input",
            TokenClass::AudioOutput => "audio_output",
            TokenClass::ImageInput => "image_input",
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether the class counts towards the prompt (for long-context thresholds).
    pub fn is_prompt(self) -> bool {
        matches!(
            self,
            TokenClass::Input
                | TokenClass::CacheRead
                | TokenClass::CacheWrite5m
                | TokenClass::CacheWrite1h
                | TokenClass::AudioInput
                | TokenClass::ImageInput
        )
    }
}

impl fmt::Display for TokenClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Token counts per class for one request. The classes are disjoint: `input` excludes cached, cache-write,
/// audio and image tokens; `output` excludes reasoning and audio tokens. Build it by hand or with a normaliser
/// ([`crate::pricing::normalize`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Uncached text input tokens.
    pub input: u64,
    /// Cache-read input tokens.
    pub cache_read: u64,
    /// 5-minute cache-write tokens.
    pub cache_write_5m: u64,
    /// 1-hour cache-write tokens.
    pub cache_write_1h: u64,
    /// Visible output tokens.
    pub output: u64,
    /// Reasoning tokens.
    pub reasoning: u64,
    /// Audio input tokens.
    pub audio_input: u64,
    /// Audio output tokens.
    pub audio_output: u64,
    /// Image input tokens.
    pub image_input: u64,
}

impl Usage {
    /// The count of one class.
    pub fn get(&self, class: TokenClass) -> u64 {
        match class {
            TokenClass::Input => self.input,
            TokenClass::CacheRead => self.cache_read,
            TokenClass::CacheWrite5m => self.cache_write_5m,
            TokenClass::CacheWrite1h => self.cache_write_1h,
            TokenClass::Output => self.output,
            TokenClass::Reasoning => self.reasoning,
            TokenClass::AudioInput => self.audio_input,
            TokenClass::AudioOutput => self.audio_output,
            TokenClass::ImageInput => self.image_input,
        }
    }

    /// Sets the count of one class.
    pub fn set(&mut self, class: TokenClass, tokens: u64) {
        let slot = match class {
            TokenClass::Input => &mut self.input,
            TokenClass::CacheRead => &mut self.cache_read,
            TokenClass::CacheWrite5m => &mut self.cache_write_5m,
            TokenClass::CacheWrite1h => &mut self.cache_write_1h,
            TokenClass::Output => &mut self.output,
            TokenClass::Reasoning => &mut self.reasoning,
            TokenClass::AudioInput => &mut self.audio_input,
            TokenClass::AudioOutput => &mut self.audio_output,
            TokenClass::ImageInput => &mut self.image_input,
        };
        *slot = tokens;
    }

    /// Every prompt-side token: what long-context thresholds compare against.
    pub fn prompt_tokens(&self) -> u64 {
        TokenClass::ALL
            .iter()
            .filter(|c| c.is_prompt())
            .fold(0u64, |sum, &c| sum.saturating_add(self.get(c)))
    }

    /// Every output-side token (output, reasoning, audio output).
    pub fn output_tokens(&self) -> u64 {
        self.output
            .saturating_add(self.reasoning)
            .saturating_add(self.audio_output)
    }
}
