//! The metering proxies, one module per provider API, all on one exchange path.
//!
//! Each API module only reads its request: which provider, model and usage format, the URL and body to send
//! upstream, and the bound on what the request can cost (a [`Plan`]). Everything else is shared: check the model
//! against the allowlists that apply (403 `MODEL_NOT_ALLOWED`), take a concurrency slot where a limit applies
//! (429 `TOO_MANY_CONCURRENT`; given back once the answer is sent or the client is gone), resolve whose provider key pays (the owner's own,
//! else the system's: 424 without), reserve the worst case (402 when a budget has no room), forward with that key, price what the provider reports and settle. Once the body is read the
//! request runs in a task of its own, so a client that hangs up cancels nothing: the upstream is read to its end
//! and billed what it reports.
//!
//! - A connect failure, or an error answer from the provider, releases the reservation: nothing was spent.
//! - No answer within the first-byte timeout, an exchange that breaks off after the request was sent, or an
//!   answer without usage bills the reservation.
//! - A stream passes through as it comes and is settled from its usage events, also when the client left mid-way.
//! - A settle that meets an unreachable store is retried with the same usage, never re-priced.

mod answer;
mod anthropic;
mod bill;
mod gemini;
mod models;
mod openai;
pub mod worst;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use chrono::Utc;
use keymeter::credentials::Provider;
use keymeter::keys::VerdictCode;
use keymeter::keys::{KeyRecord, KeyRules};
use keymeter::ledger::MeteredRequest;
use keymeter::limits::{LimitStatus, SlotGuard};
use keymeter::pricing::{ServiceTier, UsageFormat};
use keymeter_axum::{ApiError, VerifiedKey};
use secrecy::ExposeSecret;
use serde_json::{Map, Value};
use tokio::sync::oneshot;

pub use anthropic::messages;
pub use gemini::generate;
pub use models::list as models;
pub use openai::{chat, embeddings, responses};

use super::{App, State, body_bytes, owner_request_id, parse_json};
use answer::{Priced, read_bounded};
use bill::Bill;

/// The exact cost of a non-streamed answer, in the catalog's currency.
pub const COST_HEADER: HeaderName = HeaderName::from_static("x-keymeter-cost");
/// The request id the ledger records the request under.
pub const REQUEST_ID_HEADER: HeaderName = HeaderName::from_static("x-keymeter-request-id");
/// Whose provider key paid: `user`, `system` or `env_file`.
pub const SOURCE_HEADER: HeaderName = HeaderName::from_static("x-keymeter-credential-source");

/// What the gateway received, as an API module reads it.
pub(crate) struct Inbound {
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The request's path, for APIs that name the model in it (Gemini's `/v1beta/models/{model}:{action}`).
    pub target: String,
    /// The query string, if any.
    pub query: Option<String>,
}

/// How the provider key goes upstream.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Auth {
    /// `Authorization: Bearer …`.
    Bearer,
    /// The key as the value of this header.
    Header(&'static str),
}

/// The most a request can cost, in what the provider bills: the worst case is priced from it.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Bound {
    /// Prompt tokens at most (each body byte, plus a ceiling per image).
    pub prompt: u64,
    /// Output tokens at most, over every choice.
    pub output: u64,
    /// Web searches at most.
    pub web_search: u64,
    /// Answers grounded in Google Maps at most.
    pub maps_grounding: u64,
    /// The tier the client asked for (it may raise the reservation, never lower the bill).
    pub claimed: Option<ServiceTier>,
}

/// One API's reading of a request: everything the shared exchange needs.
pub(crate) struct Plan {
    pub provider: Provider,
    pub format: UsageFormat,
    pub model: String,
    pub streaming: bool,
    /// Where the request goes.
    pub url: String,
    /// What is sent: the client's body, or it with the caps the bound relies on added.
    pub body: Bytes,
    pub auth: Auth,
    /// Headers passed through or set for the provider (never the key, which [`Auth`] places).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub bound: Bound,
}

/// Reads an API's request into a [`Plan`], or refuses it (nothing reserved yet).
pub(crate) type Planner = fn(&App, &Inbound) -> Result<Plan, ApiError>;

/// The caller of a proxy: the verified key, and the rules its verify read (allowlists, concurrency limits), so
/// the exchange checks them without looking the key up again.
pub(crate) struct Caller {
    pub key: Arc<KeyRecord>,
    pub rules: Option<Arc<KeyRules>>,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        let VerifiedKey(key) = VerifiedKey::from_request_parts(parts, state).await?;
        let rules = parts.extensions.get::<Arc<KeyRules>>().cloned();
        Ok(Caller { key, rules })
    }
}

impl Caller {
    /// The key's rules: as its verify read them, else read now (trusted for a second, like the verify's).
    async fn rules(&self, app: &App) -> Result<Arc<KeyRules>, ApiError> {
        if let Some(rules) = &self.rules {
            return Ok(rules.clone());
        }
        Ok(app.verifier.rules(&self.key).await?.unwrap_or_default())
    }
}

/// Reads the body and admits the request (DESIGN §15's order: the body's checks, then the rate limits, then a
/// concurrency slot), then hands it to a task of its own: once a reservation exists the exchange runs to its end
/// (settled or released) whether or not the client is still there to read the answer. The slot is the client's:
/// it is given back when the answer has been sent or the client has left, whichever comes first (a cancel frees
/// it at once).
pub(crate) async fn run(
    axum::extract::State(app): State,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
    (target, query): (String, Option<String>),
    planner: Planner,
) -> Response {
    let body = match body_bytes(&app, body, app.settings.max_proxy_body).await {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    let inbound = Inbound {
        headers,
        body,
        target,
        query,
    };
    let admitted = match admit(&app, &caller, &inbound, planner).await {
        Ok(admitted) => admitted,
        Err(e) => return e.into_response(),
    };
    let Admitted {
        plan,
        request_id,
        attribution,
        limit,
        charged,
        slot,
    } = admitted;
    let (tx, rx) = oneshot::channel();
    let tracker = app.exchanges.clone();
    tracker.spawn(async move {
        let mut reply = Reply {
            tx: Some(tx),
            upstream: Duration::ZERO,
        };
        if let Err(e) = exchange(charged, (request_id, attribution), plan, &mut reply).await {
            reply.send(e.into_response());
        }
    });
    let mut response = rx.await.unwrap_or_else(|_| {
        ApiError::from(keymeter::Error::Internal(
            "the exchange ended without an answer".into(),
        ))
        .into_response()
    });
    if let Some(limit) = &limit {
        keymeter_axum::rate_limit_headers(response.headers_mut(), limit);
    }
    // The client sees an answer end only once its slot is back, so its next request finds the room: a whole
    // answer (or a refusal) after the release here, a stream after the release at its end (`Held`).
    if slot.slot().is_none() {
        return response;
    }
    if http_body::Body::size_hint(response.body())
        .exact()
        .is_some()
    {
        if let Err(e) = slot.release().await {
            tracing::warn!(error = %e, "concurrency slot not given back; it lapses within its TTL");
        }
        return response;
    }
    response.map(|body| {
        Body::new(Held {
            body,
            slot: Some(slot),
            releasing: None,
        })
    })
}

/// A request past every check that needs no provider: what the exchange starts from.
struct Admitted {
    plan: Plan,
    /// The client's request id, as the ledger keys it (per owner).
    request_id: Option<String>,
    /// The tightest rate limit after the charge, for the `RateLimit` headers.
    limit: Option<LimitStatus>,
    /// Who and what the request is for, kept on its event.
    attribution: Attribution,
    charged: Charged,
    slot: SlotGuard,
}

/// A request's charge to its key's rate limits, given back when a later step refuses the request.
struct Charged {
    app: Arc<App>,
    key: Arc<KeyRecord>,
    rules: Arc<KeyRules>,
}

impl Charged {
    async fn refund(&self) {
        if let Err(e) = self
            .app
            .verifier
            .refund_requests(&self.key, &self.rules)
            .await
        {
            tracing::warn!(key_id = %self.key.id, error = %e,
                "could not give back the rate-limit charge of a refused request");
        }
    }
}

/// DESIGN §15's order of checks after the key's: what the body says (the API's reading of it into a [`Plan`], the
/// model against the allowlists, the request id's shape), so a request refused for its body costs no quota;
/// then the rate limits (charged here: the key's layer deferred them); then a concurrency slot, whose refusal
/// gives the charge back. Nothing is resolved or reserved yet.
async fn admit(
    app: &Arc<App>,
    caller: &Caller,
    inbound: &Inbound,
    planner: Planner,
) -> Result<Admitted, ApiError> {
    let key = &caller.key;
    let plan = planner(app, inbound)?;
    let rules = caller.rules(app).await?;
    rules.check_model(key, plan.provider.as_str(), &plan.model)?;
    let request_id =
        client_request_id(&inbound.headers)?.map(|id| owner_request_id(&key.owner, id));
    let attribution = attribution(&inbound.headers, &inbound.body)?;
    // The event carries the key's tags too: together within the bound, or refused before any charge.
    let mut all = key.tags.clone();
    all.extend(
        attribution
            .tags
            .iter()
            .filter(|t| !key.tags.contains(t))
            .cloned(),
    );
    keymeter::ledger::event::check_tags(&all).map_err(|e| {
        ApiError::bad_request(format!("x-keymeter-tags with the key's own tags: {e}"))
    })?;
    let decision = app.verifier.charge_requests(key, &rules).await?;
    if !decision.allowed {
        return Err(ApiError::for_verdict_code(
            VerdictCode::RateLimited,
            decision.tightest.as_ref(),
        ));
    }
    let charged = Charged {
        app: app.clone(),
        key: key.clone(),
        rules: rules.clone(),
    };
    let slot = match app.verifier.claim_slot(key, &rules).await {
        Ok(slot) => slot,
        Err(e) => {
            charged.refund().await;
            return Err(e.into());
        }
    };
    Ok(Admitted {
        plan,
        request_id,
        attribution,
        limit: decision.tightest,
        charged,
        slot,
    })
}

/// A streamed answer's body holding the request's concurrency slot: given back before the stream's end reaches
/// the client, or when the body is dropped (the client gone).
struct Held {
    body: Body,
    slot: Option<SlotGuard>,
    releasing: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
}

impl http_body::Body for Held {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        use std::task::Poll;
        if self.releasing.is_none() {
            match std::pin::Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(None) => match self.slot.take() {
                    Some(slot) => {
                        self.releasing = Some(Box::pin(async move {
                            if let Err(e) = slot.release().await {
                                tracing::warn!(error = %e,
                                    "concurrency slot not given back; it lapses within its TTL");
                            }
                        }));
                    }
                    None => return Poll::Ready(None),
                },
                other => return other,
            }
        }
        match self.releasing.as_mut().map(|f| f.as_mut().poll(cx)) {
            Some(Poll::Pending) => Poll::Pending,
            _ => {
                self.releasing = None;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.slot.is_none() && self.releasing.is_none() && self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// How long an answer waited on the provider: the gateway's `x-keymeter-overhead-ms` is its time less this.
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpstreamWait(pub Duration);

/// Where the exchange's answer goes, once: the waiting handler, if the client is still there; with how long the
/// exchange has waited on the provider so far.
struct Reply {
    tx: Option<oneshot::Sender<Response>>,
    upstream: Duration,
}

impl Reply {
    fn send(&mut self, mut response: Response) {
        if response.extensions().get::<UpstreamWait>().is_none() {
            response
                .extensions_mut()
                .insert(UpstreamWait(self.upstream));
        }
        if let Some(tx) = self.tx.take() {
            // An error means the client left: the exchange goes on to its settle all the same.
            let _ = tx.send(response);
        }
    }
}

fn upstream_unavailable(provider: &Provider, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::BAD_GATEWAY,
        "UPSTREAM_UNAVAILABLE",
        format!("{provider}: {why}"),
    )
}

fn upstream_timeout(provider: &Provider, why: &str) -> ApiError {
    ApiError::new(
        StatusCode::GATEWAY_TIMEOUT,
        "UPSTREAM_TIMEOUT",
        format!("{provider}: {why}"),
    )
}

/// One admitted request from its plan to its settle: resolve, reserve, forward, answer, settle. A refusal before
/// anything is forwarded (no provider key, no budget, a duplicate request id) gives the rate-limit charge back.
async fn exchange(
    charged: Charged,
    (request_id, attribution): (Option<String>, Attribution),
    mut plan: Plan,
    reply: &mut Reply,
) -> Result<(), ApiError> {
    let (app, key) = (charged.app.clone(), charged.key.clone());
    let credential = match app.resolver.resolve(&key.owner, &plan.provider).await {
        Ok(credential) => credential,
        Err(e) => {
            charged.refund().await;
            return Err(e.into());
        }
    };
    let priced = Priced {
        model: plan.model.clone(),
        at: Utc::now(),
        tier: ServiceTier::default(),
    };
    let mut request = MeteredRequest::new(&*key, plan.model.clone())
        .credential_source(credential.source)
        .at(priced.at)
        .tier(priced.tier);
    if let Some(id) = request_id {
        request = request.request_id(id);
    }
    request = request.tags(attribution.tags);
    if let Some(end_user) = attribution.end_user {
        request = request.end_user(end_user);
    }
    let worst = worst::worst_case(&app, &priced.model, priced.at, &plan.bound);
    let hold = match app.meter.reserve(request, &worst).await {
        Ok(hold) => hold,
        Err(e) => {
            // No budget, a duplicate request id, an unreachable store: nothing went upstream.
            charged.refund().await;
            return Err(e.into());
        }
    };
    let bill = Bill::new(app.clone(), key, hold, worst);

    let mut upstream = app
        .http
        .post(&plan.url)
        .header(header::CONTENT_TYPE, "application/json")
        .body(plan.body);
    for (name, value) in std::mem::take(&mut plan.headers) {
        upstream = upstream.header(name, value);
    }
    upstream = match plan.auth {
        Auth::Bearer => upstream.bearer_auth(credential.key.expose_secret()),
        Auth::Header(name) => upstream.header(name, credential.key.expose_secret()),
    };
    if let Err(e) = app.meter.forwarded(bill.hold()) {
        // Unjournaled, a crash would lose the bill: nothing goes upstream.
        bill.release().await;
        return Err(e.into());
    }
    let provider = &plan.provider;
    let deadline = tokio::time::Instant::now() + app.settings.upstream_timeout;
    let first_byte = app
        .settings
        .first_byte_timeout
        .min(app.settings.upstream_timeout);
    let sent_at = tokio::time::Instant::now();
    let sent = tokio::time::timeout(first_byte, upstream.send()).await;
    reply.upstream = sent_at.elapsed();
    let answer = match sent {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) if e.is_connect() => {
            // Nothing reached the provider: nothing was spent.
            tracing::warn!(request_id = bill.hold().request_id(), error = %e, "upstream unreachable: reservation released");
            bill.release().await;
            return Err(upstream_unavailable(provider, "could not be reached"));
        }
        Ok(Err(e)) => {
            // The request went out; what it cost is unknown.
            tracing::warn!(request_id = bill.hold().request_id(), error = %e, "upstream failed after the request was sent");
            bill.settle(None).await;
            return Err(upstream_unavailable(provider, "the exchange broke off"));
        }
        Err(_) => {
            tracing::warn!(
                request_id = bill.hold().request_id(),
                timeout_s = first_byte.as_secs(),
                "upstream sent no answer in time"
            );
            bill.settle(None).await;
            return Err(upstream_timeout(provider, "no answer in time"));
        }
    };
    let status = answer.status();
    if !status.is_success() {
        // The provider refused: nothing was spent. Its own error body goes back as it came.
        bill.release().await;
        let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
        let bytes = read_bounded(answer, deadline).await.unwrap_or_default();
        reply.upstream = sent_at.elapsed();
        let mut response = Response::new(Body::from(bytes));
        *response.status_mut() = status;
        if let Some(ct) = content_type {
            response.headers_mut().insert(header::CONTENT_TYPE, ct);
        }
        reply.send(response);
        return Ok(());
    }
    let request_id = HeaderValue::from_str(bill.hold().request_id()).ok();
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
    if plan.streaming {
        answer::stream(bill, plan.format, answer, deadline, stamp).await;
    } else {
        answer::whole(
            bill,
            priced,
            plan.format,
            answer,
            (sent_at, deadline),
            stamp,
        )
        .await
        .map_err(|why| upstream_unavailable(provider, why))?;
    }
    Ok(())
}

/// The tags and the end user of a request, for reports (DESIGN §15).
#[derive(Debug, Default)]
struct Attribution {
    tags: Vec<String>,
    end_user: Option<String>,
}

/// `x-keymeter-tags: a,b` and `x-keymeter-end-user`, else OpenAI's `user` field of the body. A header of the
/// wrong shape is refused (400); a `user` field keymeter cannot keep is left out (it is the provider's field).
fn attribution(headers: &HeaderMap, body: &[u8]) -> Result<Attribution, ApiError> {
    let header = |name: &str| -> Result<Option<&str>, ApiError> {
        match headers.get(name) {
            None => Ok(None),
            Some(v) => v
                .to_str()
                .map(Some)
                .map_err(|_| ApiError::bad_request(format!("{name} must be visible ASCII"))),
        }
    };
    let tags = match header("x-keymeter-tags")? {
        Some(text) => keymeter::ledger::event::parse_tags(text)
            .map_err(|e| ApiError::bad_request(format!("x-keymeter-tags: {e}")))?,
        None => Vec::new(),
    };
    let fits = |u: &str| {
        !u.is_empty()
            && u.chars().count() <= keymeter::ledger::event::MAX_END_USER_LEN
            && !u.chars().any(char::is_control)
    };
    let end_user = match header("x-keymeter-end-user")? {
        Some(u) if fits(u) => Some(u.to_owned()),
        Some(_) => {
            return Err(ApiError::bad_request(format!(
                "x-keymeter-end-user must be 1–{} characters",
                keymeter::ledger::event::MAX_END_USER_LEN
            )));
        }
        None => {
            #[derive(serde::Deserialize)]
            struct User {
                user: Option<serde_json::Value>,
            }
            serde_json::from_slice::<User>(body)
                .ok()
                .and_then(|b| b.user)
                .and_then(|u| u.as_str().map(str::to_owned))
                .filter(|u| fits(u))
        }
    };
    Ok(Attribution { tags, end_user })
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

/// `base` and `path` joined with one slash.
fn url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// The body sent upstream: as it came when `edit` is `None`, else the client's JSON object with `edit` applied
/// (the caps the reservation relies on, a stream's usage asked for).
fn rewrite(
    body: &Bytes,
    edit: Option<impl FnOnce(&mut Map<String, Value>) -> Result<(), ApiError>>,
) -> Result<Bytes, ApiError> {
    let Some(edit) = edit else {
        return Ok(body.clone());
    };
    let mut map: Map<String, Value> = parse_json(body)?;
    edit(&mut map)?;
    serde_json::to_vec(&map)
        .map(Bytes::from)
        .map_err(|e| ApiError::from(keymeter::Error::Internal(e.to_string())))
}

/// The object at `map[field]`, made when absent; 422 when it is something else.
fn object_at<'a>(
    map: &'a mut Map<String, Value>,
    field: &str,
) -> Result<&'a mut Map<String, Value>, ApiError> {
    match map
        .entry(field)
        .or_insert_with(|| Value::Object(Map::new()))
    {
        Value::Object(o) => Ok(o),
        _ => Err(ApiError::unprocessable(format!(
            "{field} must be an object"
        ))),
    }
}

/// A request body's fields, as the API's type `T` reads them: 422 naming the field otherwise.
fn fields<T: serde::de::DeserializeOwned>(json: &Value) -> Result<T, ApiError> {
    T::deserialize(json).map_err(|e| ApiError::unprocessable(format!("invalid request: {e}")))
}

/// The tier a request names, if it is one keymeter knows.
fn claimed_tier(tier: Option<&str>) -> Option<ServiceTier> {
    tier.and_then(|t| t.parse::<ServiceTier>().ok())
}
