//! Usage from a streamed response: feed each server-sent event's `data:` payload to a [`StreamUsage`] and take
//! the canonical [`Usage`] at the end.
//!
//! - **OpenAI** chat completions: the final chunk carries `usage` when the request asked for it
//!   (`stream_options: {"include_usage": true}`); `service_tier` rides on every chunk. Responses API: the
//!   `response.completed` event carries the whole response.
//! - **Anthropic**: `message_start` carries the input side of `usage`; each `message_delta` carries the
//!   *cumulative* output count (and may restate input counts and server-tool use): the latest value of each field
//!   wins.
//! - **Gemini**: every chunk carries `usageMetadata` so far; the last one is the total. Grounding may come in any
//!   chunk.
//!
//! Payloads that cannot hold usage are skipped after a substring check, without parsing, so the text of a long
//! answer costs little; `[DONE]` and `event:` / comment lines are ignored.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::pricing::normalize::{UsageFormat, gemini_grounding, normalize_value, web_search_calls};
use crate::pricing::rates::ServiceTier;
use crate::pricing::usage::Usage;

/// The largest `data:` payload [`StreamUsage::push`] parses (usage-bearing events are small; a 4 MiB cap keeps a
/// hostile upstream from making the accumulator parse without bound).
pub const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Accumulates a streamed response's usage, one SSE `data:` payload at a time.
///
/// ```
/// use keymeter::pricing::{StreamUsage, UsageFormat};
///
/// let mut stream = StreamUsage::new(UsageFormat::Anthropic);
/// stream.push(r#"{"type":"message_start","message":{"usage":{"input_tokens":25,"cache_read_input_tokens":100,"output_tokens":1}}}"#).unwrap();
/// stream.push(r#"{"type":"content_block_delta","delta":{"text":"Hello"}}"#).unwrap();
/// stream.push(r#"{"type":"message_delta","usage":{"output_tokens":15}}"#).unwrap();
/// let usage = stream.finish().unwrap();
/// assert_eq!((usage.input, usage.cache_read, usage.output), (25, 100, 15));
/// ```
#[derive(Debug, Clone)]
pub struct StreamUsage {
    format: UsageFormat,
    // The usage object so far (Anthropic: merged field by field; others: the latest).
    usage: Option<Map<String, Value>>,
    tier: Option<ServiceTier>,
    web_search: u64,
    maps_grounding: u64,
    events: u64,
}

// Only the fields that carry usage are read; serde skips the rest (the answer's text) without allocating.
#[derive(Deserialize)]
struct OpenAiEvent {
    #[serde(default)]
    usage: Option<Map<String, Value>>,
    #[serde(default)]
    service_tier: Option<String>,
    #[serde(default)]
    output: Option<Vec<OutputItem>>,
    #[serde(default)]
    response: Option<Box<OpenAiEvent>>,
}

#[derive(Deserialize)]
struct OutputItem {
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct AnthropicEvent {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    usage: Option<Map<String, Value>>,
    #[serde(default)]
    message: Option<AnthropicMessage>,
}

#[derive(Deserialize)]
struct AnthropicMessage {
    #[serde(default)]
    usage: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiEvent {
    #[serde(default)]
    usage_metadata: Option<Map<String, Value>>,
    #[serde(default)]
    candidates: Option<Vec<GeminiCandidate>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GeminiCandidate {
    // Only the grounding is kept: the candidate's text is skipped unread.
    #[serde(default)]
    grounding_metadata: Option<Value>,
}

/// Whether `data` has the key `"usage"` with a value other than `null` (OpenAI sends `"usage":null` on every chunk
/// but the last when usage is asked for). Text inside a string has its quotes escaped, so only a key (or a string
/// that is exactly `usage`) matches; a false match costs one parse, never a wrong count.
fn has_usage(data: &str) -> bool {
    const KEY: &[u8] = b"\"usage\"";
    // One prepared SIMD searcher: this runs on every event of a stream, most of them text deltas.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(KEY));
    FINDER.find_iter(data.as_bytes()).any(|i| {
        let rest = data[i + KEY.len()..].trim_start();
        let rest = rest.strip_prefix(':').map_or(rest, str::trim_start);
        !rest.starts_with("null")
    })
}

fn parse<'a, T: Deserialize<'a>>(data: &'a str) -> Result<T> {
    serde_json::from_str(data)
        .map_err(|e| Error::InvalidUsage(format!("stream event is not a JSON event: {e}")))
}

impl StreamUsage {
    /// An accumulator for a stream of `format`.
    pub fn new(format: UsageFormat) -> Self {
        StreamUsage {
            format,
            usage: None,
            tier: None,
            web_search: 0,
            maps_grounding: 0,
            events: 0,
        }
    }

    /// How many payloads have been pushed.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Takes one SSE payload: the text after `data:` (a leading `data:` is stripped if present).
    ///
    /// # Errors
    /// [`Error::InvalidUsage`] when a payload that should hold usage is not JSON or is larger than
    /// [`MAX_EVENT_BYTES`]. Earlier payloads' usage is kept.
    pub fn push(&mut self, data: &str) -> Result<()> {
        self.events += 1;
        let data = data.trim();
        let data = data.strip_prefix("data:").map_or(data, str::trim_start);
        if data.is_empty()
            || data == "[DONE]"
            || data.starts_with("event:")
            || data.starts_with(':')
        {
            return Ok(());
        }
        let wanted = match self.format {
            UsageFormat::OpenAi | UsageFormat::Anthropic => has_usage(data),
            UsageFormat::Gemini => {
                data.contains("\"usageMetadata\"") || data.contains("\"groundingMetadata\"")
            }
        };
        if !wanted {
            return Ok(());
        }
        if data.len() > MAX_EVENT_BYTES {
            return Err(Error::InvalidUsage(format!(
                "a stream event of {} bytes is larger than {MAX_EVENT_BYTES}",
                data.len()
            )));
        }
        match self.format {
            UsageFormat::OpenAi => self.openai(parse(data)?),
            UsageFormat::Anthropic => self.anthropic(parse(data)?),
            UsageFormat::Gemini => self.gemini(parse(data)?),
        }
        Ok(())
    }

    fn openai(&mut self, event: OpenAiEvent) {
        // Responses API: response.completed (or .incomplete) holds the whole response.
        let event = match event.response {
            Some(response) => *response,
            None => event,
        };
        let Some(usage) = event.usage else {
            return;
        };
        self.usage = Some(usage);
        self.tier = event
            .service_tier
            .as_deref()
            .and_then(ServiceTier::from_response);
        self.web_search =
            web_search_calls(event.output.iter().flatten().map(|i| i.kind.as_deref()));
    }

    fn anthropic(&mut self, event: AnthropicEvent) {
        let usage = match event.kind.as_deref() {
            Some("message_start") => event.message.and_then(|m| m.usage),
            Some("message_delta") => event.usage,
            _ => None,
        };
        let Some(fields) = usage else {
            return;
        };
        let merged = self.usage.get_or_insert_with(Map::new);
        for (k, v) in fields {
            if !v.is_null() {
                merged.insert(k, v);
            }
        }
    }

    fn gemini(&mut self, event: GeminiEvent) {
        let (searches, maps) = gemini_grounding(
            event
                .candidates
                .iter()
                .flatten()
                .filter_map(|c| c.grounding_metadata.as_ref()),
        );
        // Grounding may be restated in later chunks: the most seen is the count.
        self.web_search = self.web_search.max(searches);
        self.maps_grounding = self.maps_grounding.max(maps);
        if let Some(usage) = event.usage_metadata {
            self.usage = Some(usage);
        }
    }

    /// The usage seen so far, if any event carried usage.
    ///
    /// # Errors
    /// [`Error::InvalidUsage`] when the usage seen contradicts itself.
    pub fn usage(&self) -> Result<Option<Usage>> {
        let Some(usage) = &self.usage else {
            return Ok(None);
        };
        let mut canonical = normalize_value(self.format, &Value::Object(usage.clone()))?;
        match self.format {
            UsageFormat::OpenAi => {
                canonical.tier = self.tier;
                canonical.web_search = self.web_search;
            }
            UsageFormat::Gemini => {
                canonical.web_search = self.web_search;
                canonical.maps_grounding = self.maps_grounding;
            }
            UsageFormat::Anthropic => {}
        }
        Ok(Some(canonical))
    }

    /// The stream's usage.
    ///
    /// # Errors
    /// [`Error::InvalidUsage`] when no event carried usage (an OpenAI stream without
    /// `stream_options.include_usage`, or one cut short) or the usage contradicts itself.
    pub fn finish(self) -> Result<Usage> {
        self.usage()?.ok_or_else(|| {
            Error::InvalidUsage(format!(
                "the stream's {} events carried no usage",
                self.events
            ))
        })
    }
}
