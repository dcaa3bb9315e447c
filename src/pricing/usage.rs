//! Canonical usage: token counts in disjoint classes, so no token is ever billed twice.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::pricing::catalog::{Region, ServiceTier};

/// A billable class with its own rate: a class of tokens, or (for [`TokenClass::WebSearch`],
/// [`TokenClass::MapsGrounding`] and [`TokenClass::Images`]) a count of queries or images priced per unit.
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
    /// Input written to the prompt cache for 12 hours.
    #[serde(rename = "cache_write_12h")]
    CacheWrite12h,
    /// Visible output.
    Output,
    /// Reasoning ("thinking") output; billed at the output rate where the model has no reasoning rate.
    Reasoning,
    /// Uncached audio input.
    AudioInput,
    /// Audio input read from the prompt cache.
    CacheReadAudio,
    /// Audio output.
    AudioOutput,
    /// Image input, per token; billed at the input rate where the model has no image-token rate (providers
    /// count image tokens as input unless they list a separate price).
    ImageInput,
    /// Image output, per token.
    ImageOutput,
    /// Web-search (grounding) queries, per query.
    WebSearch,
    /// Google Maps grounding queries, per query.
    MapsGrounding,
    /// Images generated, per image.
    Images,
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
    pub const ALL: [TokenClass; 15] = [
        TokenClass::Input,
        TokenClass::CacheRead,
        TokenClass::CacheWrite5m,
        TokenClass::CacheWrite1h,
        TokenClass::CacheWrite12h,
        TokenClass::Output,
        TokenClass::Reasoning,
        TokenClass::AudioInput,
        TokenClass::CacheReadAudio,
        TokenClass::AudioOutput,
        TokenClass::ImageInput,
        TokenClass::ImageOutput,
        TokenClass::WebSearch,
        TokenClass::MapsGrounding,
        TokenClass::Images,
    ];

    /// The class's name in catalogs and cost lines.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenClass::Input => "input",
            TokenClass::CacheRead => "cache_read",
            TokenClass::CacheWrite5m => "cache_write_5m",
            TokenClass::CacheWrite1h => "cache_write_1h",
            TokenClass::CacheWrite12h => "cache_write_12h",
            TokenClass::Output => "output",
            TokenClass::Reasoning => "reasoning",
            TokenClass::AudioInput => "audio_input",
            TokenClass::CacheReadAudio => "cache_read_audio",
            TokenClass::AudioOutput => "audio_output",
            TokenClass::ImageInput => "image_input",
            TokenClass::ImageOutput => "image_output",
            TokenClass::WebSearch => "web_search",
            TokenClass::MapsGrounding => "maps_grounding",
            TokenClass::Images => "images",
        }
    }

    /// The unit a rate of this class is per: `token`, `query` or `image`.
    pub fn unit(self) -> &'static str {
        match self {
            TokenClass::WebSearch | TokenClass::MapsGrounding => "query",
            TokenClass::Images => "image",
            _ => "token",
        }
    }

    /// Whether the class counts tokens (not queries or images).
    pub fn is_token(self) -> bool {
        self.unit() == "token"
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// Whether the class counts towards the prompt (for long-context thresholds and `tiered_pricing` ranges).
    pub fn is_prompt(self) -> bool {
        matches!(
            self,
            TokenClass::Input
                | TokenClass::CacheRead
                | TokenClass::CacheWrite5m
                | TokenClass::CacheWrite1h
                | TokenClass::CacheWrite12h
                | TokenClass::AudioInput
                | TokenClass::CacheReadAudio
                | TokenClass::ImageInput
        )
    }

    /// Whether the class is output (visible, reasoning, audio or image output tokens).
    pub fn is_output(self) -> bool {
        matches!(
            self,
            TokenClass::Output
                | TokenClass::Reasoning
                | TokenClass::AudioOutput
                | TokenClass::ImageOutput
        )
    }

    /// The class whose rate this one is billed at when the model has none of its own: reasoning at output,
    /// image input tokens at input.
    pub fn fallback(self) -> Option<TokenClass> {
        match self {
            TokenClass::Reasoning => Some(TokenClass::Output),
            TokenClass::ImageInput => Some(TokenClass::Input),
            _ => None,
        }
    }
}

impl fmt::Display for TokenClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Counts per class for one request, and the tier and region the provider says it served it in. The classes are
/// disjoint: `input` excludes cached, cache-write, audio and image tokens; `output` excludes reasoning, audio and
/// image tokens; `cache_read` excludes cached audio. Build it by hand or with a normaliser
/// ([`crate::pricing::normalize`], [`crate::pricing::stream`]).
///
/// `tier` and `region` are what the response said; when set they win over the caller's defaults
/// ([`crate::pricing::Terms`]). Counts of the newer classes and unset tier/region are left out of the JSON form,
/// so events written before they existed read back unchanged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(default)]
pub struct Usage {
    /// Uncached text input tokens.
    pub input: u64,
    /// Cache-read input tokens (text).
    pub cache_read: u64,
    /// 5-minute cache-write tokens.
    pub cache_write_5m: u64,
    /// 1-hour cache-write tokens.
    pub cache_write_1h: u64,
    /// 12-hour cache-write tokens.
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_write_12h: u64,
    /// Visible output tokens.
    pub output: u64,
    /// Reasoning tokens.
    pub reasoning: u64,
    /// Uncached audio input tokens.
    pub audio_input: u64,
    /// Cached audio input tokens.
    #[serde(skip_serializing_if = "is_zero")]
    pub cache_read_audio: u64,
    /// Audio output tokens.
    pub audio_output: u64,
    /// Image input tokens.
    pub image_input: u64,
    /// Image output tokens.
    #[serde(skip_serializing_if = "is_zero")]
    pub image_output: u64,
    /// Web-search / grounding queries.
    #[serde(skip_serializing_if = "is_zero")]
    pub web_search: u64,
    /// Google Maps grounding queries.
    #[serde(skip_serializing_if = "is_zero")]
    pub maps_grounding: u64,
    /// Images generated.
    #[serde(skip_serializing_if = "is_zero")]
    pub images: u64,
    /// The service tier the provider says it used (flex, priority or batch), if it said one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<ServiceTier>,
    /// The region the provider says it processed the request in, if it said one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<Region>,
}

impl Usage {
    fn slot(&mut self, class: TokenClass) -> &mut u64 {
        match class {
            TokenClass::Input => &mut self.input,
            TokenClass::CacheRead => &mut self.cache_read,
            TokenClass::CacheWrite5m => &mut self.cache_write_5m,
            TokenClass::CacheWrite1h => &mut self.cache_write_1h,
            TokenClass::CacheWrite12h => &mut self.cache_write_12h,
            TokenClass::Output => &mut self.output,
            TokenClass::Reasoning => &mut self.reasoning,
            TokenClass::AudioInput => &mut self.audio_input,
            TokenClass::CacheReadAudio => &mut self.cache_read_audio,
            TokenClass::AudioOutput => &mut self.audio_output,
            TokenClass::ImageInput => &mut self.image_input,
            TokenClass::ImageOutput => &mut self.image_output,
            TokenClass::WebSearch => &mut self.web_search,
            TokenClass::MapsGrounding => &mut self.maps_grounding,
            TokenClass::Images => &mut self.images,
        }
    }

    /// Uncached text input and visible output tokens, nothing else: what a request usually reserves.
    ///
    /// ```
    /// # use keymeter::pricing::Usage;
    /// assert_eq!(Usage::tokens(2_000, 1_000), Usage { input: 2_000, output: 1_000, ..Usage::default() });
    /// ```
    pub const fn tokens(input: u64, output: u64) -> Usage {
        Usage {
            input,
            cache_read: 0,
            cache_write_5m: 0,
            cache_write_1h: 0,
            cache_write_12h: 0,
            output,
            reasoning: 0,
            audio_input: 0,
            cache_read_audio: 0,
            audio_output: 0,
            image_input: 0,
            image_output: 0,
            web_search: 0,
            maps_grounding: 0,
            images: 0,
            tier: None,
            region: None,
        }
    }

    /// The most any one class of one event may count: 2⁴⁰ (about 1.1 × 10¹²). Far above any real request, and
    /// low enough that sums over millions of events stay exact in every store's 64-bit columns.
    pub const MAX_COUNT: u64 = 1 << 40;

    /// Checks every count against [`Usage::MAX_COUNT`]; every stored event passes it (one rule for ingest,
    /// settles, records and imports).
    ///
    /// ```
    /// # use keymeter::pricing::Usage;
    /// assert!(Usage { input: 1_000, ..Usage::default() }.check_bounds().is_ok());
    /// assert!(Usage { output: u64::MAX, ..Usage::default() }.check_bounds().is_err());
    /// ```
    ///
    /// # Errors
    /// [`crate::Error::InvalidUsage`] naming the class.
    pub fn check_bounds(&self) -> crate::Result<()> {
        match TokenClass::ALL
            .iter()
            .find(|c| self.get(**c) > Self::MAX_COUNT)
        {
            Some(class) => Err(crate::Error::InvalidUsage(format!(
                "{class:?} counts {}: at most {} per event",
                self.get(*class),
                Self::MAX_COUNT
            ))),
            None => Ok(()),
        }
    }

    /// The count of one class.
    pub fn get(&self, class: TokenClass) -> u64 {
        match class {
            TokenClass::Input => self.input,
            TokenClass::CacheRead => self.cache_read,
            TokenClass::CacheWrite5m => self.cache_write_5m,
            TokenClass::CacheWrite1h => self.cache_write_1h,
            TokenClass::CacheWrite12h => self.cache_write_12h,
            TokenClass::Output => self.output,
            TokenClass::Reasoning => self.reasoning,
            TokenClass::AudioInput => self.audio_input,
            TokenClass::CacheReadAudio => self.cache_read_audio,
            TokenClass::AudioOutput => self.audio_output,
            TokenClass::ImageInput => self.image_input,
            TokenClass::ImageOutput => self.image_output,
            TokenClass::WebSearch => self.web_search,
            TokenClass::MapsGrounding => self.maps_grounding,
            TokenClass::Images => self.images,
        }
    }

    /// Sets the count of one class.
    pub fn set(&mut self, class: TokenClass, count: u64) {
        *self.slot(class) = count;
    }

    /// Every prompt-side token: what long-context thresholds compare against.
    pub fn prompt_tokens(&self) -> u64 {
        TokenClass::ALL
            .iter()
            .filter(|c| c.is_prompt())
            .fold(0u64, |sum, &c| sum.saturating_add(self.get(c)))
    }

    /// Every output-side token (output, reasoning, audio and image output).
    pub fn output_tokens(&self) -> u64 {
        TokenClass::ALL
            .iter()
            .filter(|c| c.is_output())
            .fold(0u64, |sum, &c| sum.saturating_add(self.get(c)))
    }

    /// Whether every count is zero.
    pub fn is_empty(&self) -> bool {
        TokenClass::ALL.iter().all(|&c| self.get(c) == 0)
    }
}
