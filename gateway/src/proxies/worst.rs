//! The worst case a proxied request can cost, so its reservation is a true bound (admissions never overshoot): every
//! request byte a prompt token at the dearest way the model bills prompt tokens, plus a ceiling per image (whose
//! tokens its bytes do not bound: a URL of a few bytes is a whole picture), plus the output cap for every choice.
//! Inputs whose tokens nothing here can bound (documents, files) are refused.

use keymeter::pricing::{ServiceTier, TokenClass, Usage};
use keymeter_axum::ApiError;
use serde_json::Value;

use super::App;

/// Tokens one image may cost on OpenAI's chat API: the dearest image pricing it has (gpt-4o-mini's 2,833 base
/// plus 5,667 a tile, eight 512-pixel tiles at the largest size it keeps), so the ceiling holds for every model.
pub const OPENAI_IMAGE_TOKENS: u64 = 2_833 + 8 * 5_667;

/// Tokens one image may cost on Anthropic's Messages API: larger images are scaled down to about 1,600 tokens
/// (width × height / 750 at 1.15 megapixels), with a margin.
pub const ANTHROPIC_IMAGE_TOKENS: u64 = 1_650;

/// Content part types whose tokens nothing in the request bounds (a PDF's pages, an uploaded file).
const UNBOUNDED: [&str; 4] = ["document", "file", "input_file", "container_upload"];

/// Counts the images anywhere in a request (message parts, tool results), or refuses a part whose tokens cannot
/// be bounded.
///
/// # Errors
/// 422 `UNBOUNDED_INPUT` naming the part's type.
pub fn images_in(body: &Value) -> Result<u64, ApiError> {
    let mut images = 0u64;
    let mut stack = vec![body];
    while let Some(v) = stack.pop() {
        match v {
            Value::Object(map) => {
                if let Some(Value::String(kind)) = map.get("type") {
                    if kind == "image_url" || kind == "image" || kind == "input_image" {
                        images += 1;
                    } else if UNBOUNDED.contains(&kind.as_str()) {
                        return Err(ApiError::new(
                            axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                            "UNBOUNDED_INPUT",
                            format!(
                                "a {kind:?} part costs tokens its bytes do not bound, so no reservation can cover \
                                 it: send its text instead"
                            ),
                        ));
                    }
                }
                stack.extend(map.values());
            }
            Value::Array(items) => stack.extend(items),
            _ => {}
        }
    }
    Ok(images)
}

/// The usage a request can cost at most: `prompt_bound` prompt tokens at the dearest prompt class of `model`
/// (fresh input or a cache write), `output` output tokens, at the default tier or the `claimed` one, whichever
/// costs more (a claim may raise a reservation, never lower it).
pub fn worst_case(
    app: &App,
    model: &str,
    at: chrono::DateTime<chrono::Utc>,
    claimed: Option<ServiceTier>,
    prompt_bound: u64,
    output: u64,
) -> Usage {
    let mut best: Option<(rust_decimal::Decimal, Usage)> = None;
    let classes = [
        TokenClass::Input,
        TokenClass::CacheWrite5m,
        TokenClass::CacheWrite1h,
    ];
    let tiers = [None, claimed];
    for (class, tier) in classes
        .iter()
        .flat_map(|c| tiers.iter().map(move |t| (*c, *t)))
    {
        let mut usage = Usage {
            output,
            tier,
            ..Usage::default()
        };
        usage.set(class, prompt_bound);
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
            input: prompt_bound,
            output,
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
