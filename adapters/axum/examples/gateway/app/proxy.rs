//! The metering proxies: OpenAI's chat completions and Anthropic's Messages API.
//!
//! One request: resolve whose provider key pays (the owner's own, else the system's: 424 without), reserve the
//! worst case (402 when a budget has no room), forward with that key, price what the provider reports and settle.
//! An upstream error releases the reservation. A stream passes through as it comes; it is settled from its usage
//! events, also when the client left mid-way (the upstream is read to its end), and for the reservation when the
//! upstream reported no usage.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;
use keymeter::credentials::Provider;
use keymeter::keys::KeyRecord;
use keymeter::ledger::{Hold, MeteredRequest};
use keymeter::pricing::{ServiceTier, StreamUsage, TokenClass, Usage, UsageFormat};
use keymeter_axum::{ApiError, VerifiedKey};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{App, State, body_bytes, owner_request_id, parse_json};

/// The exact cost of a non-streamed answer, in the catalog's currency.
pub const COST_HEADER: HeaderName = HeaderName::from_static("x-keymeter-cost");
/// The request id the ledger records the request under.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-keymeter-request-id");
/// Whose provider key paid: `user`, `system` or `env_file`.
pub const SOURCE_HEADER: HeaderName = HeaderName::from_static("x-keymeter-credential-source");

/// The largest non-streamed upstream answer read (a stream is never held whole).
const MAX_ANSWER_BYTES: usize = 64 << 20;

#[derive(Debug, Clone, Copy)]
enum Api {
    OpenAi,
    Anthropic,
}

impl Api {
    fn provider(self) -> Provider {
        match self {
            Api::OpenAi => Provider::openai(),
            Api::Anthropic => Provider::anthropic(),
        }
    }

    fn format(self) -> UsageFormat {
        match self {
            Api::OpenAi => UsageFormat::OpenAi,
            Api::Anthropic => UsageFormat::Anthropic,
        }
    }

    fn url(self, app: &App) -> String {
        match self {
            Api::OpenAi => format!(
                "{}/v1/chat/completions",
                app.settings.openai_base_url.trim_end_matches('/')
            ),
            Api::Anthropic => format!(
                "{}/v1/messages",
                app.settings.anthropic_base_url.trim_end_matches('/')
            ),
        }
    }
}

/// The fields of a request the gateway reads; the rest passes through untouched.
#[derive(Deserialize)]
struct Fields {
    model: String,
    #[serde(default)]
    max_tokens: Option<u64>,
    #[serde(default)]
    max_completion_tokens: Option<u64>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    service_tier: Option<String>,
}

pub async fn openai(state: State, key: VerifiedKey, headers: HeaderMap, body: Body) -> Response {
    proxy(state, key, headers, body, Api::OpenAi).await
}

pub async fn anthropic(state: State, key: VerifiedKey, headers: HeaderMap, body: Body) -> Response {
    proxy(state, key, headers, body, Api::Anthropic).await
}

async fn proxy(
    axum::extract::State(app): State,
    VerifiedKey(key): VerifiedKey,
    headers: HeaderMap,
    body: Body,
    api: Api,
) -> Response {
    match forward(app, key, headers, body, api).await {
        Ok(response) => response,
        Err(e) => axum::response::IntoResponse::into_response(e),
    }
}

async fn forward(
    app: Arc<App>,
    key: Arc<KeyRecord>,
    headers: HeaderMap,
    body: Body,
    api: Api,
) -> Result<Response, ApiError> {
    let body = body_bytes(body, app.settings.max_proxy_body).await?;
    let fields: Fields = parse_json(&body)?;
    let streaming = fields.stream == Some(true);
    // The output cap: what the request names, else the configured default, which is then sent upstream so the
    // reservation stays a true bound.
    let asked = fields.max_completion_tokens.or(fields.max_tokens);
    let output_cap = asked.unwrap_or(app.settings.default_max_tokens);
    let upstream_body = rewrite(&body, api, streaming, asked.is_none(), output_cap)?;

    let credential = app.resolver.resolve(&key.owner, &api.provider()).await?;
    let priced = Priced {
        model: fields.model.clone(),
        at: Utc::now(),
        tier: fields
            .service_tier
            .as_deref()
            .and_then(|t| t.parse::<ServiceTier>().ok())
            .unwrap_or_default(),
    };
    let mut request = MeteredRequest::new(&*key, fields.model.clone())
        .credential_source(credential.source)
        .at(priced.at)
        .tier(priced.tier);
    if let Some(id) = client_request_id(&headers)? {
        request = request.request_id(owner_request_id(&key.owner, id));
    }
    let worst = worst_case(&app, &priced, body.len() as u64, output_cap);
    let hold = app.meter.reserve(request, &worst).await?;

    let mut upstream = app
        .http
        .post(api.url(&app))
        .header(header::CONTENT_TYPE, "application/json")
        .body(upstream_body);
    upstream = match api {
        Api::OpenAi => upstream.bearer_auth(credential.key.expose_secret()),
        Api::Anthropic => {
            let version = headers
                .get("anthropic-version")
                .cloned()
                .unwrap_or(HeaderValue::from_static("2023-06-01"));
            let mut u = upstream
                .header("x-api-key", credential.key.expose_secret())
                .header("anthropic-version", version);
            if let Some(beta) = headers.get("anthropic-beta") {
                u = u.header("anthropic-beta", beta.clone());
            }
            u
        }
    };
    let answer = match upstream.send().await {
        Ok(answer) => answer,
        Err(e) => {
            release(&app, hold).await;
            tracing::warn!(error = %e, "upstream unreachable");
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "UPSTREAM_UNAVAILABLE",
                format!("{} could not be reached", api.provider()),
            ));
        }
    };
    let status = answer.status();
    if !status.is_success() {
        // The provider refused: nothing was spent. Its own error body goes back as it came.
        release(&app, hold).await;
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = answer.bytes().await.unwrap_or_default();
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        if let Some(ct) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        return Ok(response);
    }
    let mut response = if streaming {
        stream(app, key, hold.clone(), worst, api, answer)
    } else {
        whole(app, key, priced, hold.clone(), worst, api, answer).await?
    };
    let out = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(hold.request_id()) {
        out.insert(REQUEST_ID_HEADER, id);
    }
    out.insert(
        SOURCE_HEADER,
        HeaderValue::from_static(credential.source.as_str()),
    );
    Ok(response)
}

/// The client's `x-request-id`: at most 128 visible ASCII characters.
fn client_request_id(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get("x-request-id") else {
        return Ok(None);
    };
    match value.to_str() {
        Ok(id) if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) => {
            Ok(Some(id))
        }
        _ => Err(ApiError::bad_request(
            "x-request-id must be 1–128 visible ASCII characters",
        )),
    }
}

/// The body sent upstream: as it came, unless the gateway must add the output cap or ask for a stream's usage.
fn rewrite(
    body: &Bytes,
    api: Api,
    streaming: bool,
    add_cap: bool,
    cap: u64,
) -> Result<Bytes, ApiError> {
    let openai_stream = streaming && matches!(api, Api::OpenAi);
    if !add_cap && !openai_stream {
        return Ok(body.clone());
    }
    let mut map: Map<String, Value> = parse_json(body)?;
    if add_cap {
        let field = match api {
            Api::OpenAi => "max_completion_tokens",
            Api::Anthropic => "max_tokens",
        };
        map.insert(field.into(), Value::from(cap));
    }
    if openai_stream {
        let options = map
            .entry("stream_options")
            .or_insert_with(|| Value::Object(Map::new()));
        match options {
            Value::Object(o) => {
                o.insert("include_usage".into(), Value::Bool(true));
            }
            _ => return Err(ApiError::unprocessable("stream_options must be an object")),
        }
    }
    serde_json::to_vec(&map)
        .map(Bytes::from)
        .map_err(|e| ApiError::from(keymeter::Error::Internal(e.to_string())))
}

/// The most the request can cost: every byte of the body as one prompt token (a token is never shorter than a
/// byte), priced at the dearest way the model bills prompt tokens (fresh, or written to a cache), plus the output
/// cap.
fn worst_case(app: &App, priced: &Priced, prompt_bound: u64, output: u64) -> Usage {
    let mut best: Option<(rust_decimal::Decimal, Usage)> = None;
    for class in [
        TokenClass::Input,
        TokenClass::CacheWrite5m,
        TokenClass::CacheWrite1h,
    ] {
        let mut usage = Usage {
            output,
            ..Usage::default()
        };
        usage.set(class, prompt_bound);
        if let Ok(cost) = app
            .meter
            .catalog()
            .cost(&priced.model, &usage, priced.at, priced.tier)
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

async fn release(app: &App, hold: Hold) {
    if let Err(e) = app.meter.release(hold).await {
        tracing::warn!(error = %e, "could not release a reservation; it expires on its own");
    }
}

/// Settles `hold` with `usage` (or the worst case when the upstream reported none) and charges the tokens to the
/// key's token limits.
async fn settle(
    app: &App,
    key: &KeyRecord,
    hold: Hold,
    usage: Option<Usage>,
    worst: Usage,
) -> keymeter::Result<keymeter::ledger::Metered> {
    let usage = match usage {
        Some(u) => u,
        None => {
            tracing::warn!(
                request_id = hold.request_id(),
                "no usage reported: billing the reservation"
            );
            worst
        }
    };
    let metered = match app.meter.settle(hold.clone(), usage).await {
        // A usage the catalog cannot price (a class the model has no rate for, say): the reservation is billed.
        Err(e) if worst != usage => {
            tracing::warn!(error = %e, "reported usage unpriced: billing the reservation");
            app.meter.settle(hold, worst).await?
        }
        other => other?,
    };
    let tokens = metered.usage.prompt_tokens() + metered.usage.output_tokens();
    if let Err(e) = app.verifier.charge_tokens(key, tokens).await {
        tracing::warn!(error = %e, "could not charge token limits");
    }
    Ok(metered)
}

/// Answers as soon as the upstream has, with the exact cost priced in memory; the settle (the ledger's write)
/// runs after, in a task of its own. Until it lands the reservation keeps holding the budget, so nothing can
/// overspend meanwhile; the event carries the request's arrival time, so the recorded cost is the one sent.
async fn whole(
    app: Arc<App>,
    key: Arc<KeyRecord>,
    priced: Priced,
    hold: Hold,
    worst: Usage,
    api: Api,
    answer: reqwest::Response,
) -> Result<Response, ApiError> {
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = match read_bounded(answer).await {
        Ok(bytes) => bytes,
        Err(e) => {
            // The answer was cut: whatever it cost is unknown, so the reservation is billed.
            tracing::warn!(error = %e, "upstream answer unreadable");
            settle(&app, &key, hold, None, worst).await?;
            return Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "UPSTREAM_UNAVAILABLE",
                "the provider's answer was cut short",
            ));
        }
    };
    let usage = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| keymeter::pricing::normalize::normalize(api.format(), text).ok());
    // What the settle will record: the reported usage's price, or the reservation when there is none to price.
    let (usage, cost) = match usage.and_then(|u| priced.cost(&app, &u).map(|c| (u, c))) {
        Some((u, c)) => (Some(u), c),
        None => (None, hold.amount()),
    };
    tokio::spawn(async move {
        if let Err(e) = settle(&app, &key, hold, usage, worst).await {
            tracing::error!(error = %e, "could not settle a request; its reservation expires on its own");
        }
    });
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    let out = response.headers_mut();
    if let Some(ct) = content_type {
        out.insert(header::CONTENT_TYPE, ct);
    }
    if let Ok(cost) = HeaderValue::from_str(&cost.to_string()) {
        out.insert(COST_HEADER, cost);
    }
    Ok(response)
}

/// How a request is priced: its model, arrival time and tier (what the meter prices the settle with).
struct Priced {
    model: String,
    at: chrono::DateTime<Utc>,
    tier: ServiceTier,
}

impl Priced {
    fn cost(&self, app: &App, usage: &Usage) -> Option<rust_decimal::Decimal> {
        app.meter
            .catalog()
            .cost(&self.model, usage, self.at, self.tier)
            .map(|c| c.total)
            .ok()
    }
}

async fn read_bounded(answer: reqwest::Response) -> Result<Bytes, String> {
    let mut out = Vec::new();
    let mut chunks = answer.bytes_stream();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(|e| e.to_string())?;
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes"
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

/// Passes the stream through and settles it in a task of its own, which outlives the client's connection.
fn stream(
    app: Arc<App>,
    key: Arc<KeyRecord>,
    hold: Hold,
    worst: Usage,
    api: Api,
    answer: reqwest::Response,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
    tokio::spawn(async move {
        let mut events = SseEvents::new(api.format());
        let mut client = Some(tx);
        let mut chunks = answer.bytes_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e) => {
                    tracing::warn!(error = %e, "upstream stream broke off");
                    break;
                }
            };
            events.feed(&chunk);
            if let Some(tx) = &client
                && tx.send(chunk).await.is_err()
            {
                // The client left: keep reading the upstream to its usage.
                client = None;
            }
        }
        drop(client);
        let usage = match events.usage.usage() {
            Ok(usage) => usage,
            Err(e) => {
                tracing::warn!(error = %e, "stream usage unreadable");
                None
            }
        };
        if let Err(e) = settle(&app, &key, hold, usage, worst).await {
            tracing::error!(error = %e, "could not settle a streamed request");
        }
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::convert::Infallible>(chunk), rx))
    });
    let mut response = Response::new(Body::from_stream(body));
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// Splits a byte stream into SSE lines and feeds each `data:` payload to the usage accumulator. A line longer
/// than the accumulator's event limit is skipped, never buffered without bound.
struct SseEvents {
    usage: StreamUsage,
    line: Vec<u8>,
    overlong: bool,
}

impl SseEvents {
    fn new(format: UsageFormat) -> Self {
        SseEvents {
            usage: StreamUsage::new(format),
            line: Vec::new(),
            overlong: false,
        }
    }

    fn feed(&mut self, mut chunk: &[u8]) {
        while let Some(end) = chunk.iter().position(|&b| b == b'\n') {
            if !self.overlong {
                self.line.extend_from_slice(&chunk[..end]);
                self.line_done();
            }
            self.line.clear();
            self.overlong = false;
            chunk = &chunk[end + 1..];
        }
        if self.line.len() + chunk.len() > keymeter::pricing::stream::MAX_EVENT_BYTES {
            self.overlong = true;
            self.line.clear();
        } else if !self.overlong {
            self.line.extend_from_slice(chunk);
        }
    }

    fn line_done(&mut self) {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let Ok(data) = std::str::from_utf8(data) else {
            return;
        };
        if let Err(e) = self.usage.push(data.trim_start()) {
            tracing::debug!(error = %e, "stream event skipped");
        }
    }
}
