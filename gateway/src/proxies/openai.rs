//! OpenAI's chat completions, Responses and embeddings APIs (`Authorization: Bearer` upstream).

use axum::body::Body;
use axum::http::HeaderMap;
use axum::response::Response;
use keymeter::credentials::Provider;
use keymeter::pricing::UsageFormat;
use keymeter_axum::ApiError;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::worst::{self, OPENAI_IMAGE_TOKENS};
use super::{
    App, Auth, Bound, Caller, Inbound, Plan, State, claimed_tier, fields, object_at, parse_json,
    rewrite, run, url,
};

/// The most choices one chat request may ask for (OpenAI's own ceiling).
const MAX_CHOICES: u64 = 128;

/// The built-in tool calls a Responses request with web search may make when it names no `max_tool_calls`: sent
/// upstream, so the searches reserved are a true bound.
const DEFAULT_TOOL_CALLS: u64 = 8;

/// `POST /v1/chat/completions`.
pub async fn chat(state: State, key: Caller, headers: HeaderMap, body: Body) -> Response {
    run(state, key, headers, body, Default::default(), plan_chat).await
}

/// `POST /v1/responses`.
pub async fn responses(state: State, key: Caller, headers: HeaderMap, body: Body) -> Response {
    run(
        state,
        key,
        headers,
        body,
        Default::default(),
        plan_responses,
    )
    .await
}

/// `POST /v1/embeddings`.
pub async fn embeddings(state: State, key: Caller, headers: HeaderMap, body: Body) -> Response {
    run(
        state,
        key,
        headers,
        body,
        Default::default(),
        plan_embeddings,
    )
    .await
}

fn plan(
    app: &App,
    path: &str,
    model: String,
    streaming: bool,
    body: bytes::Bytes,
    bound: Bound,
) -> Plan {
    Plan {
        provider: Provider::openai(),
        format: UsageFormat::OpenAi,
        model,
        streaming,
        url: url(&app.settings.openai_base_url, path),
        body,
        auth: Auth::Bearer,
        headers: Vec::new(),
        bound,
    }
}

#[derive(Deserialize)]
struct ChatFields {
    model: String,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    service_tier: Option<String>,
    /// How many choices to generate (each up to the output cap).
    #[serde(default)]
    n: Option<u64>,
}

fn plan_chat(app: &App, inbound: &Inbound) -> Result<Plan, ApiError> {
    let json: Value = parse_json(&inbound.body)?;
    let f: ChatFields = fields(&json)?;
    let images = worst::images_in(&json)?;
    let streaming = f.stream == Some(true);
    // The output cap: what the request names (either field; the larger bounds it), else the configured default,
    // which is then sent upstream so the reservation stays a true bound.
    let asked = f.max_completion_tokens.max(f.max_tokens);
    let cap = asked.unwrap_or(app.settings.default_max_tokens);
    // Every choice may use the whole cap: the reservation covers them all.
    let choices = match f.n {
        Some(n) if n == 0 || n > MAX_CHOICES => {
            return Err(ApiError::unprocessable(format!(
                "n must be 1–{MAX_CHOICES} choices"
            )));
        }
        Some(n) => n,
        None => 1,
    };
    let edit = (asked.is_none() || streaming).then_some(|map: &mut Map<String, Value>| {
        if asked.is_none() {
            map.insert("max_completion_tokens".into(), Value::from(cap));
        }
        if streaming {
            // A chat stream reports its usage only when asked to.
            object_at(map, "stream_options")?.insert("include_usage".into(), Value::Bool(true));
        }
        Ok(())
    });
    let body = rewrite(&inbound.body, edit)?;
    let bound = Bound {
        prompt: prompt_bound(&inbound.body, images),
        output: cap.saturating_mul(choices),
        web_search: 0,
        maps_grounding: 0,
        claimed: claimed_tier(f.service_tier.as_deref()),
    };
    Ok(plan(
        app,
        "/v1/chat/completions",
        f.model,
        streaming,
        body,
        bound,
    ))
}

/// Every body byte as one prompt token (a token is never shorter than a byte), plus a ceiling per image.
fn prompt_bound(body: &[u8], images: u64) -> u64 {
    (body.len() as u64).saturating_add(images.saturating_mul(OPENAI_IMAGE_TOKENS))
}

#[derive(Deserialize)]
struct ResponsesFields {
    model: String,
    #[serde(default)]
    max_output_tokens: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    service_tier: Option<String>,
    #[serde(default)]
    previous_response_id: Option<String>,
    #[serde(default)]
    conversation: Option<Value>,
    #[serde(default)]
    prompt: Option<Value>,
    #[serde(default)]
    background: Option<bool>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
    #[serde(default)]
    max_tool_calls: Option<u64>,
}

fn plan_responses(app: &App, inbound: &Inbound) -> Result<Plan, ApiError> {
    let json: Value = parse_json(&inbound.body)?;
    let f: ResponsesFields = fields(&json)?;
    // State kept at OpenAI is input the request does not carry: its size is unknown here.
    if f.previous_response_id.is_some() {
        return Err(worst::unbounded(
            "previous_response_id",
            "send the conversation's items in `input` instead",
        ));
    }
    if f.conversation.as_ref().is_some_and(|c| !c.is_null()) {
        return Err(worst::unbounded(
            "conversation",
            "send the conversation's items in `input` instead",
        ));
    }
    if f.prompt.as_ref().is_some_and(|p| !p.is_null()) {
        return Err(worst::unbounded(
            "a stored prompt",
            "send its text in `instructions` and `input` instead",
        ));
    }
    if f.background == Some(true) {
        return Err(ApiError::unprocessable(
            "background responses are fetched later, past the gateway, which bills from the answer: send the \
             request without `background`",
        ));
    }
    let images = worst::images_in(&json)?;
    let streaming = f.stream == Some(true);
    let cap = f
        .max_output_tokens
        .unwrap_or(app.settings.default_max_tokens);
    let searches = f.tools.iter().flatten().any(|t| {
        t.get("type")
            .and_then(Value::as_str)
            .is_some_and(|kind| kind.starts_with("web_search"))
    });
    let add_cap = f.max_output_tokens.is_none();
    let add_calls = searches && f.max_tool_calls.is_none();
    let calls = f.max_tool_calls.unwrap_or(DEFAULT_TOOL_CALLS);
    let edit = (add_cap || add_calls).then_some(|map: &mut Map<String, Value>| {
        if add_cap {
            map.insert("max_output_tokens".into(), Value::from(cap));
        }
        if add_calls {
            map.insert("max_tool_calls".into(), Value::from(calls));
        }
        Ok(())
    });
    let body = rewrite(&inbound.body, edit)?;
    let bound = Bound {
        prompt: prompt_bound(&inbound.body, images),
        // Reasoning tokens are output, within `max_output_tokens`.
        output: cap,
        web_search: if searches { calls } else { 0 },
        maps_grounding: 0,
        claimed: claimed_tier(f.service_tier.as_deref()),
    };
    Ok(plan(app, "/v1/responses", f.model, streaming, body, bound))
}

#[derive(Deserialize)]
struct EmbeddingsFields {
    model: String,
    // Required: OpenAI refuses a request without it, and so does the gateway, before anything is reserved.
    #[allow(dead_code)]
    input: Value,
}

fn plan_embeddings(app: &App, inbound: &Inbound) -> Result<Plan, ApiError> {
    let json: Value = parse_json(&inbound.body)?;
    let f: EmbeddingsFields = fields(&json)?;
    // Input tokens only; a token id list is bounded by its bytes too (each id at least one digit and a comma).
    let bound = Bound {
        prompt: inbound.body.len() as u64,
        ..Bound::default()
    };
    Ok(plan(
        app,
        "/v1/embeddings",
        f.model,
        false,
        inbound.body.clone(),
        bound,
    ))
}
