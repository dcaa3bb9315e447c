//! Normalisers: each provider's usage object → canonical [`Usage`] with disjoint classes.
//!
//! | provider | what it reports | what keymeter does |
//! | --- | --- | --- |
//! | OpenAI chat completions | `prompt_tokens` includes `cached_tokens` and audio; `completion_tokens` includes `reasoning_tokens` and audio | subtracts them out |
//! | OpenAI responses | `input_tokens` includes `cached_tokens`; `output_tokens` includes `reasoning_tokens` | subtracts them out |
//! | Anthropic messages | `input_tokens` excludes `cache_read_input_tokens` and `cache_creation_input_tokens`; `cache_creation` splits 5-minute and 1-hour writes | takes them as they are |
//! | Gemini `usageMetadata` | `promptTokenCount` includes `cachedContentTokenCount`; `thoughtsTokenCount` is separate and billed as output | subtracts the cache; thoughts become `reasoning` (priced as output unless the model has a reasoning rate) |
//!
//! Each accepts the usage object itself or a whole response that holds it (`usage` / `usageMetadata`). A usage
//! that contradicts itself (cached > prompt, reasoning > completion) or has negative counts is an error.

use serde::Deserialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::pricing::usage::Usage;

/// The provider format of a usage object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UsageFormat {
    /// OpenAI chat completions or responses (told apart by their fields).
    OpenAi,
    /// Anthropic messages.
    Anthropic,
    /// Gemini `usageMetadata`.
    Gemini,
}

/// Parses `openai`, `anthropic` or `gemini`.
///
/// # Errors
/// [`Error::InvalidInput`] for anything else.
impl std::str::FromStr for UsageFormat {
    type Err = Error;

    fn from_str(name: &str) -> std::result::Result<Self, Error> {
        match name {
            "openai" => Ok(UsageFormat::OpenAi),
            "anthropic" => Ok(UsageFormat::Anthropic),
            "gemini" | "google" => Ok(UsageFormat::Gemini),
            _ => Err(Error::invalid(
                "usage format",
                "expected openai, anthropic or gemini",
            )),
        }
    }
}

impl UsageFormat {}

fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidUsage(msg.into())
}

fn minus(total: u64, part: u64, what: &str) -> Result<u64> {
    total.checked_sub(part).ok_or_else(|| {
        invalid(format!(
            "{what}: the part ({part}) exceeds the total ({total})"
        ))
    })
}

/// Normalises a usage JSON text of `format`.
///
/// ```
/// use keymeter::pricing::normalize::{normalize, UsageFormat};
///
/// let openai = r#"{"prompt_tokens": 1200, "completion_tokens": 300,
///                  "prompt_tokens_details": {"cached_tokens": 1000},
///                  "completion_tokens_details": {"reasoning_tokens": 100}}"#;
/// let usage = normalize(UsageFormat::OpenAi, openai).unwrap();
/// assert_eq!((usage.input, usage.cache_read, usage.output, usage.reasoning), (200, 1000, 200, 100));
/// ```
///
/// # Errors
/// [`Error::InvalidUsage`] for text that is not such a usage object or contradicts itself.
pub fn normalize(format: UsageFormat, text: &str) -> Result<Usage> {
    let value: Value = serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
    normalize_value(format, &value)
}

/// Normalises an already parsed usage object (or a response holding one).
///
/// # Errors
/// As [`normalize`].
pub fn normalize_value(format: UsageFormat, value: &Value) -> Result<Usage> {
    let inner = match format {
        UsageFormat::Gemini => value.get("usageMetadata"),
        _ => value.get("usage"),
    }
    .filter(|v| v.is_object())
    .unwrap_or(value);
    if !inner.is_object() {
        return Err(invalid("expected a JSON object"));
    }
    match format {
        UsageFormat::OpenAi => openai(inner),
        UsageFormat::Anthropic => anthropic(inner),
        UsageFormat::Gemini => gemini(inner),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(value: &Value, what: &str) -> Result<T> {
    T::deserialize(value).map_err(|e| invalid(format!("{what}: {e}")))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OpenAiDetails {
    cached_tokens: u64,
    audio_tokens: u64,
    reasoning_tokens: u64,
}

#[derive(Deserialize)]
struct OpenAiChat {
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<OpenAiDetails>,
    #[serde(default)]
    completion_tokens_details: Option<OpenAiDetails>,
}

#[derive(Deserialize)]
struct OpenAiResponses {
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<OpenAiDetails>,
    #[serde(default)]
    output_tokens_details: Option<OpenAiDetails>,
}

fn openai(v: &Value) -> Result<Usage> {
    let (prompt, completion, pd, cd) = if v.get("prompt_tokens").is_some() {
        let u: OpenAiChat = parse(v, "OpenAI usage")?;
        (
            u.prompt_tokens,
            u.completion_tokens,
            u.prompt_tokens_details,
            u.completion_tokens_details,
        )
    } else if v.get("input_tokens").is_some() {
        let u: OpenAiResponses = parse(v, "OpenAI usage")?;
        (
            u.input_tokens,
            u.output_tokens,
            u.input_tokens_details,
            u.output_tokens_details,
        )
    } else {
        return Err(invalid(
            "OpenAI usage needs prompt_tokens (chat) or input_tokens (responses)",
        ));
    };
    let pd = pd.unwrap_or_default();
    let cd = cd.unwrap_or_default();
    let text_prompt = minus(prompt, pd.audio_tokens, "prompt audio tokens")?;
    let input = minus(text_prompt, pd.cached_tokens, "cached tokens")?;
    let output = minus(
        completion,
        cd.reasoning_tokens.saturating_add(cd.audio_tokens),
        "reasoning and audio output tokens",
    )?;
    Ok(Usage {
        input,
        cache_read: pd.cached_tokens,
        output,
        reasoning: cd.reasoning_tokens,
        audio_input: pd.audio_tokens,
        audio_output: cd.audio_tokens,
        ..Usage::default()
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AnthropicCacheCreation {
    ephemeral_5m_input_tokens: u64,
    ephemeral_1h_input_tokens: u64,
}

#[derive(Deserialize)]
struct AnthropicUsage {
    input_tokens: u64,
    #[serde(default)]
    output_tokens: u64,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation: Option<AnthropicCacheCreation>,
}

fn anthropic(v: &Value) -> Result<Usage> {
    let u: AnthropicUsage = parse(v, "Anthropic usage")?;
    let total_writes = u.cache_creation_input_tokens.unwrap_or(0);
    let (w5, w1h) = match u.cache_creation {
        Some(c) => {
            let sum = c
                .ephemeral_5m_input_tokens
                .saturating_add(c.ephemeral_1h_input_tokens);
            if u.cache_creation_input_tokens.is_some_and(|t| t != sum) {
                return Err(invalid(format!(
                    "cache_creation_input_tokens ({total_writes}) differs from its 5m + 1h split ({sum})"
                )));
            }
            (c.ephemeral_5m_input_tokens, c.ephemeral_1h_input_tokens)
        }
        // Without a split, writes are the default 5-minute duration.
        None => (total_writes, 0),
    };
    Ok(Usage {
        input: u.input_tokens,
        cache_read: u.cache_read_input_tokens.unwrap_or(0),
        cache_write_5m: w5,
        cache_write_1h: w1h,
        output: u.output_tokens,
        ..Usage::default()
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModalityCount {
    #[serde(default)]
    modality: String,
    #[serde(default)]
    token_count: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiUsage {
    // Required: every Gemini usageMetadata has it, and an object without it is not a Gemini usage (pricing it
    // would be a silent zero).
    prompt_token_count: u64,
    #[serde(default)]
    candidates_token_count: u64,
    #[serde(default)]
    cached_content_token_count: u64,
    #[serde(default)]
    thoughts_token_count: u64,
    #[serde(default)]
    tool_use_prompt_token_count: u64,
    #[serde(default)]
    prompt_tokens_details: Vec<ModalityCount>,
    #[serde(default)]
    cache_tokens_details: Vec<ModalityCount>,
}

fn audio(list: &[ModalityCount]) -> u64 {
    list.iter()
        .filter(|m| m.modality.eq_ignore_ascii_case("AUDIO"))
        .fold(0u64, |s, m| s.saturating_add(m.token_count))
}

fn gemini(v: &Value) -> Result<Usage> {
    let u: GeminiUsage = parse(v, "Gemini usageMetadata")?;
    if u.cached_content_token_count > u.prompt_token_count {
        return Err(invalid(format!(
            "cachedContentTokenCount ({}) exceeds promptTokenCount ({})",
            u.cached_content_token_count, u.prompt_token_count
        )));
    }
    let audio_in = minus(
        audio(&u.prompt_tokens_details),
        audio(&u.cache_tokens_details),
        "cached audio tokens",
    )?;
    let uncached = minus(
        u.prompt_token_count,
        u.cached_content_token_count,
        "cached tokens",
    )?;
    // Tool-use prompt tokens are billed as input.
    let input = minus(uncached, audio_in, "prompt audio tokens")?
        .checked_add(u.tool_use_prompt_token_count)
        .ok_or_else(|| invalid("toolUsePromptTokenCount overflows"))?;
    Ok(Usage {
        input,
        cache_read: u.cached_content_token_count,
        output: u.candidates_token_count,
        reasoning: u.thoughts_token_count,
        audio_input: audio_in,
        ..Usage::default()
    })
}
