//! Google's Gemini API: `models/{model}:generateContent` and `:streamGenerateContent?alt=sse`, under `/v1beta/`
//! or `/v1/` (`x-goog-api-key` upstream). The caller's keymeter key may come as `x-goog-api-key`, as Google's SDKs send it.

use axum::body::Body;
use axum::extract::RawQuery;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use keymeter::credentials::Provider;
use keymeter::pricing::UsageFormat;
use keymeter_axum::ApiError;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::worst::{self, GEMINI_MEDIA_TOKENS};
use super::{
    App, Auth, Bound, Caller, Inbound, Plan, State, fields, object_at, parse_json, rewrite, run,
    url,
};

/// The most candidates one request may ask for (Gemini's own ceiling).
const MAX_CANDIDATES: u64 = 8;

/// Google Search queries reserved for a grounded request. Gemini takes no cap on them, so this is an estimate, not
/// a bound: a grounded answer that ran more queries settles above its reservation (and says so in the log).
const SEARCH_QUERIES: u64 = 8;

/// `POST /v1beta/models/{model}:generateContent` and `…:streamGenerateContent?alt=sse`, and the same under
/// `/v1/` (the version Google's newer SDKs default to), forwarded to the version the client called.
pub async fn generate(
    state: State,
    key: Caller,
    uri: Uri,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(
        state,
        key,
        headers,
        body,
        (uri.path().to_owned(), query),
        plan,
    )
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fields {
    #[serde(default, alias = "generation_config")]
    generation_config: Option<GenerationConfig>,
    #[serde(default, alias = "cached_content")]
    cached_content: Option<String>,
    #[serde(default)]
    tools: Option<Vec<Value>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerationConfig {
    #[serde(default, alias = "max_output_tokens")]
    max_output_tokens: Option<u64>,
    #[serde(default, alias = "candidate_count")]
    candidate_count: Option<u64>,
}

/// The API version, the model and whether it streams, from the path `/{version}/models/{model}:{action}`.
fn target(inbound: &Inbound) -> Result<(&'static str, String, bool), ApiError> {
    let (version, target) = if let Some(rest) = inbound.target.strip_prefix("/v1beta/models/") {
        ("v1beta", rest)
    } else if let Some(rest) = inbound.target.strip_prefix("/v1/models/") {
        ("v1", rest)
    } else {
        return Err(no_such_action());
    };
    let Some((model, action)) = target.split_once(':') else {
        return Err(no_such_action());
    };
    let valid = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_');
    if model.is_empty() || model.len() > 128 || !model.bytes().all(valid) {
        return Err(ApiError::bad_request(
            "the model must be 1–128 characters of letters, digits, '.', '-' and '_'",
        ));
    }
    let streaming = match action {
        "generateContent" => false,
        "streamGenerateContent" => {
            let sse = inbound
                .query
                .as_deref()
                .unwrap_or("")
                .split('&')
                .any(|pair| pair == "alt=sse");
            if !sse {
                // Without it Gemini streams one JSON array, which the gateway does not read on the way.
                return Err(ApiError::unprocessable(
                    "streamGenerateContent needs ?alt=sse (server-sent events), as Google's SDKs send it",
                ));
            }
            true
        }
        _ => return Err(no_such_action()),
    };
    Ok((version, model.to_owned(), streaming))
}

fn no_such_action() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "the gateway serves models/{model}:generateContent and :streamGenerateContent",
    )
}

fn plan(app: &App, inbound: &Inbound) -> Result<Plan, ApiError> {
    let (version, model, streaming) = target(inbound)?;
    let json: Value = parse_json(&inbound.body)?;
    let f: Fields = fields(&json)?;
    if f.cached_content.is_some() {
        return Err(worst::unbounded(
            "cachedContent",
            "send the cached text in `contents` instead (Gemini caches repeated prefixes implicitly)",
        ));
    }
    let media = worst::gemini_media_in(&json)?;
    let config = f.generation_config.as_ref();
    let asked = config.and_then(|c| c.max_output_tokens);
    let candidates = match config.and_then(|c| c.candidate_count) {
        Some(n) if n == 0 || n > MAX_CANDIDATES => {
            return Err(ApiError::unprocessable(format!(
                "candidateCount must be 1–{MAX_CANDIDATES}"
            )));
        }
        Some(n) => n,
        None => 1,
    };
    // The output cap (thinking tokens count within it), else the configured default, sent upstream.
    let cap = asked.unwrap_or(app.settings.default_max_tokens);
    let edit = asked.is_none().then_some(|map: &mut Map<String, Value>| {
        let field = if map.contains_key("generation_config") {
            "generation_config"
        } else {
            "generationConfig"
        };
        object_at(map, field)?.insert("maxOutputTokens".into(), Value::from(cap));
        Ok(())
    });
    let body = rewrite(&inbound.body, edit)?;
    let tool = |names: &[&str]| {
        f.tools.iter().flatten().any(|t| {
            t.as_object()
                .is_some_and(|t| names.iter().any(|n| t.contains_key(*n)))
        })
    };
    let search = tool(&[
        "googleSearch",
        "google_search",
        "googleSearchRetrieval",
        "google_search_retrieval",
    ]);
    let maps = tool(&["googleMaps", "google_maps"]);
    let action = if streaming {
        "streamGenerateContent?alt=sse"
    } else {
        "generateContent"
    };
    Ok(Plan {
        provider: Provider::google(),
        format: UsageFormat::Gemini,
        url: url(
            &app.settings.gemini_base_url,
            &format!("/{version}/models/{model}:{action}"),
        ),
        model,
        streaming,
        body,
        auth: Auth::Header("x-goog-api-key"),
        headers: Vec::new(),
        bound: Bound {
            prompt: (inbound.body.len() as u64)
                .saturating_add(media.saturating_mul(GEMINI_MEDIA_TOKENS)),
            output: cap.saturating_mul(candidates),
            web_search: if search { SEARCH_QUERIES } else { 0 },
            maps_grounding: u64::from(maps),
            claimed: None,
        },
    })
}
