//! Normalisers: each provider's usage object → canonical [`Usage`] with disjoint classes.
//!
//! | provider | what it reports | what keymeter does |
//! | --- | --- | --- |
//! | OpenAI chat completions | `prompt_tokens` includes `cached_tokens` (of which `cached_tokens_details.audio_tokens` audio), `cache_write_tokens`, `audio_tokens` and `image_tokens`; `completion_tokens` includes `reasoning_tokens`, `audio_tokens` and `image_tokens` | subtracts them out: cache writes are `cache_write_5m`, image tokens `image_input` (billed as input unless the model has an image rate) |
//! | OpenAI responses | the same under `input_tokens` / `output_tokens` and `input_tokens_details` / `output_tokens_details` | the same; a whole response's `web_search_call` output items are `web_search` queries |
//! | Anthropic messages | `input_tokens` excludes `cache_read_input_tokens` and `cache_creation_input_tokens`; `cache_creation` splits 5-minute and 1-hour writes; `server_tool_use.web_search_requests` | takes them as they are |
//! | Gemini `usageMetadata` | `promptTokenCount` includes `cachedContentTokenCount`; modality details split audio (cached audio in `cacheTokensDetails`) and image output (`candidatesTokensDetails`); `thoughtsTokenCount` is separate and billed as output | subtracts the cache and the modalities; thoughts become `reasoning` (priced as output unless the model has a reasoning rate); a whole response's `groundingMetadata.webSearchQueries` are `web_search` queries and Maps grounding chunks one `maps_grounding` query |
//!
//! Tier and region come from the response when it says them: OpenAI `service_tier` (top level), Anthropic
//! `usage.service_tier` and `usage.inference_geo`, Gemini / Vertex `usageMetadata.trafficType`; only `flex`,
//! `priority` and `batch` set a tier (see [`ServiceTier::from_response`]).
//!
//! Each accepts the usage object itself or a whole response that holds it (`usage` / `usageMetadata`). A count
//! written `null` (as OpenAI-compatible servers do) is zero. A usage that contradicts itself (cached > prompt,
//! reasoning > completion) or has negative counts is an error. Streams: [`crate::pricing::stream`].

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::pricing::rates::{Region, ServiceTier};
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
    let outer = if std::ptr::eq(inner, value) {
        None
    } else {
        Some(value)
    };
    match format {
        UsageFormat::OpenAi => openai(inner, outer),
        UsageFormat::Anthropic => anthropic(inner, outer),
        UsageFormat::Gemini => gemini(inner, outer),
    }
}

fn parse<T: for<'de> Deserialize<'de>>(value: &Value, what: &str) -> Result<T> {
    T::deserialize(value).map_err(|e| invalid(format!("{what}: {e}")))
}

/// A token count that may be written `null` (OpenAI-compatible servers do): null is zero.
fn count<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
}

fn sum(counts: &[u64], what: &str) -> Result<u64> {
    counts
        .iter()
        .try_fold(0u64, |s, &c| s.checked_add(c))
        .ok_or_else(|| invalid(format!("{what} overflows")))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CachedDetails {
    #[serde(deserialize_with = "count")]
    audio_tokens: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct OpenAiDetails {
    #[serde(deserialize_with = "count")]
    cached_tokens: u64,
    cached_tokens_details: Option<CachedDetails>,
    #[serde(deserialize_with = "count")]
    cache_write_tokens: u64,
    #[serde(deserialize_with = "count")]
    audio_tokens: u64,
    #[serde(deserialize_with = "count")]
    image_tokens: u64,
    #[serde(deserialize_with = "count")]
    reasoning_tokens: u64,
}

#[derive(Deserialize)]
struct OpenAiChat {
    #[serde(deserialize_with = "count")]
    prompt_tokens: u64,
    #[serde(default, deserialize_with = "count")]
    completion_tokens: u64,
    #[serde(default)]
    prompt_tokens_details: Option<OpenAiDetails>,
    #[serde(default)]
    completion_tokens_details: Option<OpenAiDetails>,
}

#[derive(Deserialize)]
struct OpenAiResponses {
    #[serde(deserialize_with = "count")]
    input_tokens: u64,
    #[serde(default, deserialize_with = "count")]
    output_tokens: u64,
    #[serde(default)]
    input_tokens_details: Option<OpenAiDetails>,
    #[serde(default)]
    output_tokens_details: Option<OpenAiDetails>,
}

fn tier_in(v: Option<&Value>, field: &str) -> Option<ServiceTier> {
    v?.get(field)?.as_str().and_then(ServiceTier::from_response)
}

fn openai(v: &Value, response: Option<&Value>) -> Result<Usage> {
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
    let cached_audio = pd.cached_tokens_details.unwrap_or_default().audio_tokens;
    let cached_text = minus(pd.cached_tokens, cached_audio, "cached audio tokens")?;
    let audio_in = minus(pd.audio_tokens, cached_audio, "cached audio tokens")?;
    let input = minus(
        prompt,
        sum(
            &[
                pd.audio_tokens,
                cached_text,
                pd.image_tokens,
                pd.cache_write_tokens,
            ],
            "prompt token details",
        )?,
        "cached, cache-write, audio and image prompt tokens",
    )?;
    let output = minus(
        completion,
        sum(
            &[cd.reasoning_tokens, cd.audio_tokens, cd.image_tokens],
            "completion token details",
        )?,
        "reasoning, audio and image output tokens",
    )?;
    let web_search = response
        .and_then(|r| r.get("output"))
        .and_then(Value::as_array)
        .map_or(0, |items| {
            web_search_calls(items.iter().map(|i| i.get("type").and_then(Value::as_str)))
        });
    Ok(Usage {
        input,
        cache_read: cached_text,
        cache_write_5m: pd.cache_write_tokens,
        output,
        reasoning: cd.reasoning_tokens,
        audio_input: audio_in,
        cache_read_audio: cached_audio,
        audio_output: cd.audio_tokens,
        image_input: pd.image_tokens,
        image_output: cd.image_tokens,
        web_search,
        tier: tier_in(response, "service_tier"),
        ..Usage::default()
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AnthropicCacheCreation {
    #[serde(deserialize_with = "count")]
    ephemeral_5m_input_tokens: u64,
    #[serde(deserialize_with = "count")]
    ephemeral_1h_input_tokens: u64,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct AnthropicServerTools {
    #[serde(deserialize_with = "count")]
    web_search_requests: u64,
}

#[derive(Deserialize)]
struct AnthropicUsage {
    #[serde(deserialize_with = "count")]
    input_tokens: u64,
    #[serde(default, deserialize_with = "count")]
    output_tokens: u64,
    #[serde(default, deserialize_with = "count")]
    cache_read_input_tokens: u64,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation: Option<AnthropicCacheCreation>,
    #[serde(default)]
    server_tool_use: Option<AnthropicServerTools>,
    #[serde(default)]
    service_tier: Option<String>,
    #[serde(default)]
    inference_geo: Option<String>,
}

fn anthropic(v: &Value, response: Option<&Value>) -> Result<Usage> {
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
    let geo = u.inference_geo.or_else(|| {
        response
            .and_then(|r| r.get("inference_geo"))
            .and_then(Value::as_str)
            .map(str::to_owned)
    });
    Ok(Usage {
        input: u.input_tokens,
        cache_read: u.cache_read_input_tokens,
        cache_write_5m: w5,
        cache_write_1h: w1h,
        output: u.output_tokens,
        web_search: u.server_tool_use.unwrap_or_default().web_search_requests,
        tier: u
            .service_tier
            .as_deref()
            .and_then(ServiceTier::from_response),
        region: geo.as_deref().map(Region::from_response),
        ..Usage::default()
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModalityCount {
    #[serde(default)]
    modality: Option<String>,
    #[serde(default, deserialize_with = "count")]
    token_count: u64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiUsage {
    // Required: every Gemini usageMetadata has it, and an object without it is not a Gemini usage (pricing it
    // would be a silent zero).
    #[serde(deserialize_with = "count")]
    prompt_token_count: u64,
    #[serde(default, deserialize_with = "count")]
    candidates_token_count: u64,
    #[serde(default, deserialize_with = "count")]
    cached_content_token_count: u64,
    #[serde(default, deserialize_with = "count")]
    thoughts_token_count: u64,
    #[serde(default, deserialize_with = "count")]
    tool_use_prompt_token_count: u64,
    #[serde(default)]
    prompt_tokens_details: Option<Vec<ModalityCount>>,
    #[serde(default)]
    cache_tokens_details: Option<Vec<ModalityCount>>,
    #[serde(default)]
    candidates_tokens_details: Option<Vec<ModalityCount>>,
    #[serde(default)]
    traffic_type: Option<String>,
}

fn modality(list: &Option<Vec<ModalityCount>>, name: &str) -> u64 {
    list.iter()
        .flatten()
        .filter(|m| {
            m.modality
                .as_deref()
                .is_some_and(|m| m.eq_ignore_ascii_case(name))
        })
        .fold(0u64, |s, m| s.saturating_add(m.token_count))
}

/// The web searches a Responses object ran: its output items of type `web_search_call`, given their types.
pub(crate) fn web_search_calls<'a>(item_types: impl IntoIterator<Item = Option<&'a str>>) -> u64 {
    item_types
        .into_iter()
        .filter(|t| *t == Some("web_search_call"))
        .count() as u64
}

/// Web-search queries (each of `webSearchQueries`) and Maps grounding (one query when any grounding chunk came
/// from Maps) in the `groundingMetadata` of a Gemini response's candidates.
pub(crate) fn gemini_grounding<'a>(metadata: impl IntoIterator<Item = &'a Value>) -> (u64, u64) {
    let mut searches = 0u64;
    let mut maps = 0u64;
    for g in metadata {
        searches += g
            .get("webSearchQueries")
            .and_then(Value::as_array)
            .map_or(0, |q| q.len() as u64);
        let has_maps = g
            .get("groundingChunks")
            .and_then(Value::as_array)
            .is_some_and(|chunks| chunks.iter().any(|ch| ch.get("maps").is_some()));
        maps = maps.max(u64::from(has_maps));
    }
    (searches, maps)
}

fn gemini(v: &Value, response: Option<&Value>) -> Result<Usage> {
    let u: GeminiUsage = parse(v, "Gemini usageMetadata")?;
    if u.cached_content_token_count > u.prompt_token_count {
        return Err(invalid(format!(
            "cachedContentTokenCount ({}) exceeds promptTokenCount ({})",
            u.cached_content_token_count, u.prompt_token_count
        )));
    }
    let cached_audio = modality(&u.cache_tokens_details, "AUDIO");
    let cached_text = minus(
        u.cached_content_token_count,
        cached_audio,
        "cached audio tokens",
    )?;
    let audio_in = minus(
        modality(&u.prompt_tokens_details, "AUDIO"),
        cached_audio,
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
    let image_out = modality(&u.candidates_tokens_details, "IMAGE");
    let audio_out = modality(&u.candidates_tokens_details, "AUDIO");
    let output = minus(
        u.candidates_token_count,
        sum(&[image_out, audio_out], "candidate token details")?,
        "image and audio output tokens",
    )?;
    let candidates = response
        .and_then(|r| r.get("candidates"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let (web_search, maps_grounding) =
        gemini_grounding(candidates.iter().filter_map(|c| c.get("groundingMetadata")));
    Ok(Usage {
        input,
        cache_read: cached_text,
        output,
        reasoning: u.thoughts_token_count,
        audio_input: audio_in,
        cache_read_audio: cached_audio,
        audio_output: audio_out,
        image_output: image_out,
        web_search,
        maps_grounding,
        tier: u
            .traffic_type
            .as_deref()
            .and_then(ServiceTier::from_response),
        ..Usage::default()
    })
}
