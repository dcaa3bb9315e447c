//! Anthropic's Messages API (`x-api-key` upstream, with the client's `anthropic-version` and `anthropic-beta`).

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use keymeter::credentials::Provider;
use keymeter::pricing::UsageFormat;
use keymeter_axum::ApiError;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::worst::{self, ANTHROPIC_IMAGE_TOKENS};
use super::{
    App, Auth, Bound, Caller, Inbound, Plan, State, claimed_tier, fields, parse_json, rewrite, run,
    url,
};

/// `POST /v1/messages`.
pub async fn messages(state: State, key: Caller, headers: HeaderMap, body: Body) -> Response {
    run(state, key, headers, body, Default::default(), plan).await
}

#[derive(Deserialize)]
struct Fields {
    model: String,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    service_tier: Option<String>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
}

/// The searches a web search tool without `max_uses` may make: sent upstream as its `max_uses`, so the searches
/// reserved are a true bound.
const DEFAULT_MAX_USES: u64 = 8;

fn is_web_search(tool: &Value) -> bool {
    tool.get("type")
        .and_then(Value::as_str)
        .is_some_and(|kind| kind.starts_with("web_search"))
}

fn plan(app: &App, inbound: &Inbound) -> Result<Plan, ApiError> {
    let json: Value = parse_json(&inbound.body)?;
    let f: Fields = fields(&json)?;
    let images = worst::images_in(&json)?;
    // Anthropic honours only `max_tokens` (required there; the configured default when a client leaves it out).
    let cap = f.max_tokens.unwrap_or(app.settings.default_max_tokens);
    let search_tools = f.tools.iter().flatten().filter(|t| is_web_search(t));
    let searches = search_tools.clone().fold(0u64, |sum, tool| {
        let uses = tool.get("max_uses").and_then(Value::as_u64);
        sum.saturating_add(uses.unwrap_or(DEFAULT_MAX_USES))
    });
    let add_uses = search_tools
        .clone()
        .any(|t| t.get("max_uses").and_then(Value::as_u64).is_none());
    let edit = (f.max_tokens.is_none() || add_uses).then_some(|map: &mut Map<String, Value>| {
        if f.max_tokens.is_none() {
            map.insert("max_tokens".into(), Value::from(cap));
        }
        if let Some(Value::Array(tools)) = map.get_mut("tools") {
            for tool in tools.iter_mut().filter(|t| is_web_search(t)) {
                if let Value::Object(tool) = tool
                    && tool.get("max_uses").and_then(Value::as_u64).is_none()
                {
                    tool.insert("max_uses".into(), Value::from(DEFAULT_MAX_USES));
                }
            }
        }
        Ok(())
    });
    let body = rewrite(&inbound.body, edit)?;
    let version = inbound
        .headers
        .get("anthropic-version")
        .cloned()
        .unwrap_or(HeaderValue::from_static("2023-06-01"));
    let mut headers = vec![(HeaderName::from_static("anthropic-version"), version)];
    if let Some(beta) = inbound.headers.get("anthropic-beta") {
        headers.push((HeaderName::from_static("anthropic-beta"), beta.clone()));
    }
    Ok(Plan {
        provider: Provider::anthropic(),
        format: UsageFormat::Anthropic,
        model: f.model,
        streaming: f.stream == Some(true),
        url: url(&app.settings.anthropic_base_url, "/v1/messages"),
        body,
        auth: Auth::Header("x-api-key"),
        headers,
        bound: Bound {
            prompt: (inbound.body.len() as u64)
                .saturating_add(images.saturating_mul(ANTHROPIC_IMAGE_TOKENS)),
            output: cap,
            web_search: searches,
            maps_grounding: 0,
            claimed: claimed_tier(f.service_tier.as_deref()),
        },
    })
}
