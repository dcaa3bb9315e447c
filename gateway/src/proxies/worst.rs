//! The worst case a proxied request can cost, so its reservation is a true bound (admissions never overshoot): every
//! request byte a prompt token at the dearest way the model bills prompt tokens, plus a ceiling per image (whose
//! tokens its bytes do not bound: a URL of a few bytes is a whole picture), plus the output cap for every choice.
//! Inputs whose tokens nothing here can bound (documents, files) are refused.

use keymeter::pricing::{ServiceTier, TokenClass, Usage};
use keymeter_axum::ApiError;
use serde_json::Value;

use super::{App, Bound};

/// Tokens one image may cost on OpenAI's chat API: the dearest image pricing it has (gpt-4o-mini's 2,833 base
/// plus 5,667 a tile, eight 512-pixel tiles at the largest size it keeps), so the ceiling holds for every model.
pub const OPENAI_IMAGE_TOKENS: u64 = 2_833 + 8 * 5_667;

/// Tokens one image may cost on Anthropic's Messages API: larger images are scaled down to about 1,600 tokens
/// (width × height / 750 at 1.15 megapixels), with a margin.
pub const ANTHROPIC_IMAGE_TOKENS: u64 = 1_650;

/// Tokens one inline media part may cost on Gemini beyond its bytes: an image at the highest media resolution
/// (Gemini 3: 1,120; earlier models scale an image down and bill 258 a 768-pixel tile), with a margin. Audio and
/// video cost fewer tokens a second (32 and 263) than their bytes a second, which already bound them.
pub const GEMINI_MEDIA_TOKENS: u64 = 2_240;

/// Content part types whose tokens nothing in the request bounds (a PDF's pages, an uploaded file).
/// `item_reference` (the Responses API) names a stored item, whose tokens the request does not carry.
const UNBOUNDED: [&str; 5] = [
    "document",
    "file",
    "input_file",
    "container_upload",
    "item_reference",
];

/// Counts the images anywhere in a request (message parts, tool results), or refuses a part whose tokens cannot
/// be bounded.
///
/// # Errors
/// 422 `UNBOUNDED_INPUT` naming the part's type.
pub fn images_in(body: &Value) -> Result<u64, ApiError> {
    count_parts(body, |map| match map.get("type") {
        Some(Value::String(kind))
            if kind == "image_url" || kind == "image" || kind == "input_image" =>
        {
            Ok(1)
        }
        Some(Value::String(kind)) if UNBOUNDED.contains(&kind.as_str()) => Err(unbounded(
            &format!("a {kind:?} part"),
            "send its text instead",
        )),
        _ => Ok(0),
    })
}

/// Sums `count` over every object anywhere in `body` (message parts, tool results, nested contents), stopping at
/// the first refusal. Iterative: a deeply nested body cannot overflow the stack.
fn count_parts(
    body: &Value,
    mut count: impl FnMut(&serde_json::Map<String, Value>) -> Result<u64, ApiError>,
) -> Result<u64, ApiError> {
    let mut total = 0u64;
    let mut stack = vec![body];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                total = total.saturating_add(count(map)?);
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    Ok(total)
}

/// 422 `UNBOUNDED_INPUT`: `what` costs tokens the request does not carry, so no reservation can cover it.
pub fn unbounded(what: &str, instead: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
        "UNBOUNDED_INPUT",
        format!(
            "{what} costs tokens the request does not carry, so no reservation can cover it: {instead}"
        ),
    )
}

/// Counts the inline media parts of a Gemini request (`inlineData`), or refuses what its bytes do not bound: a
/// file reference (`fileData`, an uploaded video of an hour) or cached content.
///
/// # Errors
/// 422 `UNBOUNDED_INPUT` naming the field.
pub fn gemini_media_in(body: &Value) -> Result<u64, ApiError> {
    count_parts(body, |map| {
        if map.contains_key("fileData") || map.contains_key("file_data") {
            return Err(unbounded(
                "a fileData part",
                "send the media inline (inlineData) instead",
            ));
        }
        Ok(u64::from(map.contains_key("inlineData")) + u64::from(map.contains_key("inline_data")))
    })
}

/// The usage a request can cost at most: `bound.prompt` prompt tokens at the dearest prompt class of `model`
/// (fresh input or a cache write), `bound.output` output tokens and `bound.web_search` searches, at the default
/// tier or the claimed one, whichever costs more (a claim may raise a reservation, never lower it).
pub(crate) fn worst_case(
    app: &App,
    model: &str,
    at: chrono::DateTime<chrono::Utc>,
    bound: &Bound,
) -> Usage {
    let mut best: Option<(rust_decimal::Decimal, Usage)> = None;
    let classes = [
        TokenClass::Input,
        TokenClass::CacheWrite5m,
        TokenClass::CacheWrite1h,
    ];
    let tiers = [None, bound.claimed];
    for (class, tier) in classes
        .iter()
        .flat_map(|c| tiers.iter().map(move |t| (*c, *t)))
    {
        let mut usage = Usage {
            output: bound.output,
            web_search: bound.web_search,
            maps_grounding: bound.maps_grounding,
            tier,
            ..Usage::default()
        };
        usage.set(class, bound.prompt);
        if let Ok(cost) = app
            .meter
            .catalog()
            .cost(model, &usage, at, ServiceTier::default())
            && best.as_ref().is_none_or(|(b, _)| cost.total > *b)
        {
            best = Some((cost.total, usage));
        }
    }
    // Unpriced: the reservation reports why (an unknown model is an error, never zero).
    best.map_or(
        Usage {
            input: bound.prompt,
            output: bound.output,
            web_search: bound.web_search,
            maps_grounding: bound.maps_grounding,
            ..Usage::default()
        },
        |(_, u)| u,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn images_are_counted_wherever_they_are_and_documents_refused() {
        let openai = json!({"messages": [{"role": "user", "content": [
            {"type": "text", "text": "what is this?"},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
            {"type": "image_url", "image_url": {"url": "https://example.com/b.png"}}]}]});
        assert_eq!(images_in(&openai).unwrap(), 2);
        let nested = json!({"messages": [{"role": "user", "content": [{"type": "tool_result", "content": [
            {"type": "image", "source": {"type": "url", "url": "https://example.com/c.png"}}]}]}]});
        assert_eq!(images_in(&nested).unwrap(), 1);
        let text = json!({"messages": [{"role": "user", "content": "a \"type\": \"image\" in text is text"}]});
        assert_eq!(images_in(&text).unwrap(), 0);
        for part in ["document", "file"] {
            let body =
                json!({"messages": [{"role": "user", "content": [{"type": part, "source": {}}]}]});
            assert_eq!(images_in(&body).unwrap_err().code(), "UNBOUNDED_INPUT");
        }
    }
}
