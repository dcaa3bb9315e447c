//! The metering proxies: OpenAI's chat completions and Anthropic's Messages API.
//!
//! One request: resolve whose provider key pays (the owner's own, else the system's: 424 without), reserve the
//! worst case (402 when a budget has no room), forward with that key, price what the provider reports and settle.
//! Once the body is read the request runs in a task of its own, so a client that hangs up cancels nothing: the
//! upstream is read to its end and billed what it reports.
//!
//! - A connect failure, or an error answer from the provider, releases the reservation: nothing was spent.
//! - No answer within the first-byte timeout, an exchange that breaks off after the request was sent, or an
//!   answer without usage bills the reservation.
//! - A stream passes through as it comes and is settled from its usage events, also when the client left mid-way.
//! - A settle that meets an unreachable store is retried with the same usage, never re-priced.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use futures_util::StreamExt;
use keymeter::credentials::Provider;
use keymeter::keys::KeyRecord;
use keymeter::ledger::{Hold, MeteredRequest, Unsettled};
use keymeter::pricing::{ServiceTier, StreamUsage, Usage, UsageFormat};
use keymeter_axum::{ApiError, VerifiedKey};
use secrecy::ExposeSecret;
use serde::Deserialize;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::{App, State, body_bytes, owner_request_id, parse_json, worst};

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
    /// OpenAI: how many choices to generate (each up to the output cap).
    #[serde(default)]
    n: Option<u64>,
}

/// The most choices one request may ask for (OpenAI's own ceiling).
const MAX_CHOICES: u64 = 128;

pub async fn openai(state: State, key: VerifiedKey, headers: HeaderMap, body: Body) -> Response {
    proxy(state, key, headers, body, Api::OpenAi).await
}

pub async fn anthropic(state: State, key: VerifiedKey, headers: HeaderMap, body: Body) -> Response {
    proxy(state, key, headers, body, Api::Anthropic).await
}

/// Reads the body, then hands the request to a task of its own: once a reservation exists the exchange runs to
/// its end (settled or released) whether or not the client is still there to read the answer.
async fn proxy(
    axum::extract::State(app): State,
    VerifiedKey(key): VerifiedKey,
    headers: HeaderMap,
    body: Body,
    api: Api,
) -> Response {
    let body = match body_bytes(&app, body, app.settings.max_proxy_body).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let (tx, rx) = oneshot::channel();
    let tracker = app.exchanges.clone();
    tracker.spawn(async move {
        let mut reply = Reply(Some(tx));
        if let Err(e) = exchange(app, key, headers, body, api, &mut reply).await {
            reply.send(e.into_response());
        }
    });
    rx.await.unwrap_or_else(|_| {
        ApiError::from(keymeter::Error::Internal(
            "the exchange ended without an answer".into(),
        ))
        .into_response()
    })
}

/// Where the exchange's answer goes, once: the waiting handler, if the client is still there.
struct Reply(Option<oneshot::Sender<Response>>);

impl Reply {
    fn send(&mut self, response: Response) {
        if let Some(tx) = self.0.take() {
            // An error means the client left: the exchange goes on to its settle all the same.
            let _ = tx.send(response);
        }
    }
}

fn upstream_unavailable(api: Api, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "UPSTREAM_UNAVAILABLE",
        format!("{}: {why}", api.provider()),
    )
}

fn upstream_timeout(api: Api, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "UPSTREAM_TIMEOUT",
        format!("{}: {why}", api.provider()),
    )
}

/// One proxied request from its parsed body to its settle: resolve, reserve, forward, answer, settle.
async fn exchange(
    app: Arc<App>,
    key: Arc<KeyRecord>,
    headers: HeaderMap,
    body: Bytes,
    api: Api,
    reply: &mut Reply,
) -> Result<(), ApiError> {
    let json: Value = parse_json(&body)?;
    let fields = Fields::deserialize(&json)
        .map_err(|e| ApiError::unprocessable(format!("invalid request: {e}")))?;
    let images = worst::images_in(&json)?;
    let streaming = fields.stream == Some(true);
    // The output cap: what the request names, else the configured default, which is then sent upstream so the
    // reservation stays a true bound.
    // Each API's own field: Anthropic honours only `max_tokens`; OpenAI takes either, so the larger bounds it.
    let asked = match api {
        Api::OpenAi => fields.max_completion_tokens.max(fields.max_tokens),
        Api::Anthropic => fields.max_tokens,
    };
    let output_cap = asked.unwrap_or(app.settings.default_max_tokens);
    let upstream_body = rewrite(&body, api, streaming, asked.is_none(), output_cap)?;
    // Every choice may use the whole cap: the reservation covers them all.
    let choices = match (api, fields.n) {
        (Api::OpenAi, Some(n)) if n == 0 || n > MAX_CHOICES => {
            return Err(ApiError::unprocessable(format!(
                "n must be 1–{MAX_CHOICES} choices"
            )));
        }
        (Api::OpenAi, Some(n)) => n,
        _ => 1,
    };
    // A client's tier is a claim: it may raise the reservation (priority costs more), never lower the bill. The
    // settle prices at the tier the response names, else the provider's default.
    let claimed = fields
        .service_tier
        .as_deref()
        .and_then(|t| t.parse::<ServiceTier>().ok());

    let credential = app.resolver.resolve(&key.owner, &api.provider()).await?;
    let priced = Priced {
        model: fields.model.clone(),
        at: Utc::now(),
        tier: ServiceTier::default(),
    };
    let mut request = MeteredRequest::new(&*key, fields.model.clone())
        .credential_source(credential.source)
        .at(priced.at)
        .tier(priced.tier);
    if let Some(id) = client_request_id(&headers)? {
        request = request.request_id(owner_request_id(&key.owner, id));
    }
    let image_tokens = match api {
        Api::OpenAi => worst::OPENAI_IMAGE_TOKENS,
        Api::Anthropic => worst::ANTHROPIC_IMAGE_TOKENS,
    };
    let worst = worst::worst_case(
        &app,
        &priced.model,
        priced.at,
        claimed,
        (body.len() as u64).saturating_add(images.saturating_mul(image_tokens)),
        output_cap.saturating_mul(choices),
    );
    let hold = app.meter.reserve(request, &worst).await?;
    let bill = Bill {
        app: app.clone(),
        key,
        hold,
        worst,
    };

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
    if let Err(e) = app.meter.forwarded(&bill.hold) {
        // Unjournaled, a crash would lose the bill: nothing goes upstream.
        bill.release().await;
        return Err(e.into());
    }
    let deadline = tokio::time::Instant::now() + app.settings.upstream_timeout;
    let first_byte = app
        .settings
        .first_byte_timeout
        .min(app.settings.upstream_timeout);
    let answer = match tokio::time::timeout(first_byte, upstream.send()).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) if e.is_connect() => {
            // Nothing reached the provider: nothing was spent.
            tracing::warn!(request_id = bill.hold.request_id(), error = %e, "upstream unreachable: reservation released");
            bill.release().await;
            return Err(upstream_unavailable(api, "could not be reached"));
        }
        Ok(Err(e)) => {
            // The request went out; what it cost is unknown.
            tracing::warn!(request_id = bill.hold.request_id(), error = %e, "upstream failed after the request was sent");
            bill.settle(None).await;
            return Err(upstream_unavailable(api, "the exchange broke off"));
        }
        Err(_) => {
            tracing::warn!(
                request_id = bill.hold.request_id(),
                timeout_s = first_byte.as_secs(),
                "upstream sent no answer in time"
            );
            bill.settle(None).await;
            return Err(upstream_timeout(api, "no answer in time"));
        }
    };
    let status = answer.status();
    if !status.is_success() {
        // The provider refused: nothing was spent. Its own error body goes back as it came.
        bill.release().await;
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = read_bounded(answer, deadline).await.unwrap_or_default();
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        if let Some(ct) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        reply.send(response);
        return Ok(());
    }
    let request_id = HeaderValue::from_str(bill.hold.request_id()).ok();
    let stamp = |mut response: Response| {
        let out = response.headers_mut();
        if let Some(id) = request_id {
            out.insert(REQUEST_ID_HEADER, id);
        }
        out.insert(
            SOURCE_HEADER,
            HeaderValue::from_static(credential.source.as_str()),
        );
        reply.send(response);
    };
    if streaming {
        stream(bill, api, answer, deadline, stamp).await;
    } else {
        whole(bill, priced, api, answer, deadline, stamp).await?;
    }
    Ok(())
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
/// How long a settle that meets an unreachable store keeps trying before it gives up (the reservation, which
/// outlives this, keeps the budget held meanwhile).
const SETTLE_RETRY_FOR: Duration = Duration::from_secs(300);

/// A reservation and what is needed to end it: settled with the reported usage (or the worst case), or released.
struct Bill {
    app: Arc<App>,
    key: Arc<KeyRecord>,
    hold: Hold,
    worst: Usage,
}

impl Bill {
    async fn release(self) {
        if let Err(e) = self.app.meter.release(self.hold).await {
            tracing::warn!(error = %e, "could not release a reservation; it expires on its own");
        }
    }

    /// Settles with `usage`, or at the reservation (an `estimated` event for the worst case) when the upstream
    /// reported none or what it reported cannot be priced; charges the tokens to the key's token limits. A store
    /// that cannot be reached is retried with the same usage, never re-priced at the worst case (with a journal
    /// the settle is a local write and the journal's drain does the retrying). Returns what was recorded.
    async fn settle(self, usage: Option<Usage>) -> Option<keymeter::ledger::Metered> {
        let Bill {
            app,
            key,
            hold,
            worst,
        } = self;
        let request_id = hold.request_id().to_owned();
        let amount = hold.amount();
        let settled = match usage {
            Some(usage) => match settle_retrying(&app, hold, Some(usage), worst).await {
                // A usage the catalog cannot price (a class the model has no rate for, say): the reservation is
                // billed. Never on a store failure: that one was retried.
                Err(unsettled) if unsettled.error.unavailable().is_none() => {
                    tracing::warn!(request_id, error = %unsettled.error, "reported usage unpriced: billing the reservation");
                    settle_retrying(&app, unsettled.hold, None, worst).await
                }
                other => other,
            },
            None => {
                tracing::warn!(
                    request_id,
                    %amount,
                    "no usage reported: billing the reservation"
                );
                settle_retrying(&app, hold, None, worst).await
            }
        };
        let metered = match settled {
            Ok(metered) => metered,
            Err(unsettled) => {
                // Dropping the hold tries once more in the background (it was forwarded: billed as estimated).
                tracing::error!(request_id, error = %unsettled.error, "could not settle a request");
                return None;
            }
        };
        if metered.cost.total > amount {
            tracing::warn!(
                request_id,
                reserved = %amount,
                cost = %metered.cost.total,
                "settled above its reservation: the provider reported more than the worst case"
            );
        }
        let tokens = metered.usage.prompt_tokens() + metered.usage.output_tokens();
        if let Err(e) = app.verifier.charge_tokens(&key, tokens).await {
            tracing::warn!(request_id, error = %e, "could not charge token limits");
        }
        Some(metered)
    }
}

/// Settles `hold` with `usage`, or estimated at `worst` when `None`, retrying while the store is away; a failure
/// gives the hold back.
async fn settle_retrying(
    app: &App,
    mut hold: Hold,
    usage: Option<Usage>,
    worst: Usage,
) -> Result<keymeter::ledger::Metered, Unsettled> {
    let meter = &app.meter;
    let give_up = tokio::time::Instant::now() + SETTLE_RETRY_FOR;
    let mut pause = Duration::from_millis(50);
    loop {
        let settled = match usage {
            Some(usage) => meter.try_settle(hold, usage).await,
            None => meter.try_settle_estimated(hold, worst).await,
        };
        match settled {
            Err(unsettled)
                if unsettled.error.unavailable().is_some()
                    && tokio::time::Instant::now() < give_up =>
            {
                tracing::warn!(
                    request_id = unsettled.hold.request_id(),
                    error = %unsettled.error,
                    retry_in_ms = pause.as_millis() as u64,
                    "settle failed: the store is unreachable; retrying"
                );
                hold = unsettled.hold;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}

/// Answers as soon as the upstream has, with the exact cost priced in memory; the settle (the ledger's write)
/// runs after, in this same task, whether or not the client is still there. Until it lands the reservation keeps
/// holding the budget, so nothing can overspend meanwhile; the event carries the request's arrival time, so the
/// recorded cost is the one sent.
async fn whole(
    bill: Bill,
    priced: Priced,
    api: Api,
    answer: reqwest::Response,
    deadline: tokio::time::Instant,
    answer_client: impl FnOnce(Response),
) -> Result<(), ApiError> {
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    let bytes = match read_bounded(answer, deadline).await {
        Ok(bytes) => bytes,
        Err(e) => {
            // The answer was cut: whatever it cost is unknown, so the reservation is billed.
            tracing::warn!(request_id = bill.hold.request_id(), error = %e, "upstream answer unreadable");
            bill.settle(None).await;
            return Err(upstream_unavailable(api, "the answer was cut short"));
        }
    };
    let usage = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| keymeter::pricing::normalize::normalize(api.format(), text).ok());
    // What the settle will record: the reported usage's price, or the reservation when there is none to price.
    let (usage, cost) = match usage.and_then(|u| priced.cost(&bill.app, &u).map(|c| (u, c))) {
        Some((u, c)) => (Some(u), c),
        None => (None, bill.hold.amount()),
    };
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    let out = response.headers_mut();
    if let Some(ct) = content_type {
        out.insert(header::CONTENT_TYPE, ct);
    }
    if let Ok(cost) = HeaderValue::from_str(&cost.to_string()) {
        out.insert(COST_HEADER, cost);
    }
    if bill.app.meter.journal().is_some() {
        // The settle is a local write: in the journal before the answer leaves, so a crash loses no bill.
        bill.settle(usage).await;
        answer_client(response);
    } else {
        answer_client(response);
        bill.settle(usage).await;
    }
    Ok(())
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

/// The whole answer, up to [`MAX_ANSWER_BYTES`], by `deadline`.
async fn read_bounded(
    answer: reqwest::Response,
    deadline: tokio::time::Instant,
) -> Result<Bytes, String> {
    let mut out = Vec::new();
    let mut chunks = answer.bytes_stream();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, chunks.next()).await {
            Ok(Some(chunk)) => chunk.map_err(|e| e.to_string())?,
            Ok(None) => break,
            Err(_) => return Err("the upstream timeout ran out".into()),
        };
        if out.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Err(format!(
                "the answer is larger than {MAX_ANSWER_BYTES} bytes"
            ));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out.into())
}

/// Passes the stream through as it comes and settles it from its usage events once the upstream ends (or the
/// deadline cuts it). A client that leaves stops receiving; the upstream is still read to its usage.
async fn stream(
    bill: Bill,
    api: Api,
    answer: reqwest::Response,
    deadline: tokio::time::Instant,
    answer_client: impl FnOnce(Response),
) {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(32);
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
    answer_client(response);

    let mut events = SseEvents::new(api.format());
    let mut client = Some(tx);
    let mut chunks = answer.bytes_stream();
    loop {
        let chunk = match tokio::time::timeout_at(deadline, chunks.next()).await {
            Ok(Some(Ok(chunk))) => chunk,
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::warn!(request_id = bill.hold.request_id(), error = %e, "upstream stream broke off");
                break;
            }
            Err(_) => {
                tracing::warn!(
                    request_id = bill.hold.request_id(),
                    "upstream stream cut at the upstream timeout"
                );
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
            tracing::warn!(request_id = bill.hold.request_id(), error = %e, "stream usage unreadable");
            None
        }
    };
    bill.settle(usage).await;
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
