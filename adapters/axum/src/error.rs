//! Refusals and errors as HTTP answers: `{"error": {"code", "message"}}` with the status and headers each verdict
//! calls for.

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keymeter::keys::{Verdict, VerdictCode};
use keymeter::limits::LimitStatus;

/// `RateLimit-Policy`, the quota of the tightest limit (IETF draft `ratelimit-headers`).
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `RateLimit`, what is left of it now.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// An error answer: a status, a stable `code` (`SCREAMING_SNAKE`), a message for people, and extra headers.
///
/// Messages never carry a secret: they come from keymeter's errors, which name what was wrong, never the value.
///
/// ```
/// use axum::http::StatusCode;
/// use keymeter_axum::ApiError;
///
/// let e = ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND_ID", "no key km_abc");
/// assert_eq!(e.status(), StatusCode::NOT_FOUND);
/// assert_eq!(e.body()["error"]["code"], "NOT_FOUND_ID");
/// ```
#[derive(Debug, Clone)]
pub struct ApiError(Box<Inner>);

// Boxed: handlers return `Result<_, ApiError>`, and the error path should not make every `Ok` wide.
#[derive(Debug, Clone)]
struct Inner {
    status: StatusCode,
    code: &'static str,
    message: String,
    headers: HeaderMap,
    /// Fields of the error object beside `code` and `message` (what refused, what was recorded).
    details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError(Box::new(Inner {
            status,
            code,
            message: message.into(),
            headers: HeaderMap::new(),
            details: serde_json::Map::new(),
        }))
    }

    /// A 400 `INVALID_REQUEST`: the request cannot be read (JSON that does not parse, a body too large).
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
    }

    /// A 422 `INVALID_REQUEST`: the request reads but holds a bad value.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "INVALID_REQUEST", message)
    }

    /// A 503 with `code` and `Retry-After: secs`: a dependency the request needs cannot be reached now.
    pub fn unavailable(
        code: &'static str,
        message: impl Into<String>,
        retry_after_secs: u32,
    ) -> Self {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
            .header(header::RETRY_AFTER, retry_after_secs.into())
    }

    /// The answer to a refused [`Verdict`]: its code and status, `WWW-Authenticate: Bearer` on a 401,
    /// `Retry-After` and the `RateLimit-Policy` / `RateLimit` headers on a 429.
    pub fn refusal(verdict: &Verdict) -> Self {
        ApiError::for_verdict_code(verdict.code(), verdict.limit())
    }

    /// The answer to a refusal with `code` (and the tightest rate limit, when there is one).
    pub fn for_verdict_code(code: VerdictCode, limit: Option<&LimitStatus>) -> Self {
        let status = StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
        let mut e = ApiError::new(status, code.as_str(), refusal_message(code));
        if status == StatusCode::UNAUTHORIZED {
            e.0.headers
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if let Some(limit) = limit {
            if code == VerdictCode::RateLimited {
                e.0.headers
                    .insert(header::RETRY_AFTER, limit.retry_after_secs().max(1).into());
                // The limit that refused, in the body too (the headers say the same).
                e = e
                    .with_detail("limit", limit.limit)
                    .with_detail("period", limit.period.as_str())
                    .with_detail("remaining", limit.remaining)
                    .with_detail("retry_after", limit.retry_after_secs().max(1));
            }
            rate_limit_headers(&mut e.0.headers, limit);
        }
        e
    }

    /// Replaces the message.
    #[must_use]
    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.0.message = message.into();
        self
    }

    /// Adds a field to the error object, beside `code` and `message` (which it never replaces).
    #[must_use]
    pub fn with_detail(mut self, name: &str, value: impl Into<serde_json::Value>) -> Self {
        if name != "code" && name != "message" {
            self.0.details.insert(name.to_owned(), value.into());
        }
        self
    }

    /// Adds a header to the answer.
    #[must_use]
    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.0.headers.insert(name, value);
        self
    }

    /// The status.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The code.
    pub fn code(&self) -> &'static str {
        self.0.code
    }

    /// The JSON body.
    pub fn body(&self) -> serde_json::Value {
        let mut error = self.0.details.clone();
        error.insert("code".into(), self.0.code.into());
        error.insert("message".into(), self.0.message.clone().into());
        serde_json::json!({ "error": error })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.0.status.as_u16(),
            self.0.code,
            self.0.message
        )
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let Inner {
            status, headers, ..
        } = *self.0;
        (status, headers, axum::Json(body)).into_response()
    }
}

/// keymeter's errors as answers: a budget is 402 `BUDGET_EXCEEDED` (naming the budget that refused, its limit, spent,
/// reserved and remaining amounts, what the request needed and when the period ends), a model off an allowlist 403
/// `MODEL_NOT_ALLOWED` (naming the model and the scope that refused it), a concurrency limit 429 `TOO_MANY_CONCURRENT`
/// (`Retry-After: 1`, naming the scope, its limit and its requests in flight), no provider key 424 `NO_CREDENTIAL`, an unknown
/// id 404 `NOT_FOUND_ID`, bad input 422, an overloaded verifier 503 `OVERLOADED`; a dependency that cannot be
/// reached (the store, a limiter failing closed) is a 503 `STORE_UNAVAILABLE` / `LIMITER_UNAVAILABLE` with
/// `Retry-After`, never a 500 or a 402; an internal failure is a 500. The last two say only that: the details go to
/// the log.
impl From<keymeter::Error> for ApiError {
    fn from(e: keymeter::Error) -> Self {
        use keymeter::Error as E;
        if let Some(dependency) = e.unavailable() {
            tracing::warn!(error = %e, dependency = %dependency, "dependency unavailable: answering 503");
            return ApiError::unavailable(
                dependency.code(),
                format!("the {dependency} cannot be reached; retry after the time in Retry-After"),
                1,
            );
        }
        match &e {
            E::BudgetExceeded {
                scope,
                limit,
                spent,
                reserved,
                requested,
                period_end,
            } => {
                let remaining = (*limit - *spent - *reserved).max(keymeter::Decimal::ZERO);
                let money = |d: &keymeter::Decimal| d.normalize().to_string();
                ApiError::new(
                    StatusCode::PAYMENT_REQUIRED,
                    VerdictCode::BudgetExceeded.as_str(),
                    e.to_string(),
                )
                .with_detail("scope", scope.as_str())
                .with_detail("limit", money(limit))
                .with_detail("spent", money(spent))
                .with_detail("reserved", money(reserved))
                .with_detail("remaining", money(&remaining))
                .with_detail("requested", money(requested))
                .with_detail("period_end", period_end.to_rfc3339())
            }
            E::NoCredential { .. } => ApiError::new(
                StatusCode::FAILED_DEPENDENCY,
                "NO_CREDENTIAL",
                e.to_string(),
            ),
            E::NotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND_ID", e.to_string())
            }
            E::UnknownModel { .. }
            | E::AmbiguousModel { .. }
            | E::UnpricedUnit { .. }
            | E::NoPrice { .. }
            | E::UnpricedClass { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "UNPRICED_MODEL",
                e.to_string(),
            ),
            E::InvalidInput { .. }
            | E::InvalidCredential { .. }
            | E::InvalidUsage(_)
            | E::Token(_) => ApiError::unprocessable(e.to_string()),
            E::ModelNotAllowed {
                model,
                provider,
                scope,
            } => ApiError::new(StatusCode::FORBIDDEN, "MODEL_NOT_ALLOWED", e.to_string())
                .with_detail("model", model.as_str())
                .with_detail("provider", provider.as_str())
                .with_detail("scope", scope.as_str()),
            E::TooManyConcurrent {
                scope,
                limit,
                in_flight,
            } => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_CONCURRENT",
                e.to_string(),
            )
            .header(header::RETRY_AFTER, HeaderValue::from_static("1"))
            .with_detail("scope", scope.as_str())
            .with_detail("limit", *limit)
            .with_detail("in_flight", *in_flight),
            E::OwnerInOtherOrganisation { .. } => ApiError::new(
                StatusCode::FORBIDDEN,
                "OWNER_IN_OTHER_ORGANISATION",
                e.to_string(),
            ),
            E::DuplicateRequest {
                request_id,
                event_id,
                cost,
            } => {
                let mut answer =
                    ApiError::new(StatusCode::CONFLICT, "DUPLICATE_REQUEST", e.to_string())
                        .with_detail("request_id", request_id.as_str());
                if let Some(id) = event_id {
                    answer = answer.with_detail("event_id", id.as_str());
                }
                if let Some(cost) = cost {
                    answer = answer.with_detail("cost", cost.normalize().to_string());
                }
                answer
            }
            E::AlreadyExists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "CONFLICT", e.to_string())
            }
            E::Overloaded => ApiError::unavailable("OVERLOADED", e.to_string(), 1),
            _ => {
                tracing::error!(error = %e, "request failed");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "INTERNAL",
                    "the server could not complete the request; see its log",
                )
            }
        }
    }
}

fn refusal_message(code: VerdictCode) -> &'static str {
    match code {
        VerdictCode::Malformed => {
            "send one API key as `Authorization: Bearer <key>` or `x-api-key: <key>`; this one is not well formed"
        }
        VerdictCode::WrongEnvironment => "this key belongs to another environment (live or test)",
        VerdictCode::NotFound => "unknown API key",
        VerdictCode::Revoked => "this API key was revoked",
        VerdictCode::Disabled => "this API key is disabled",
        VerdictCode::Expired => "this API key has expired",
        VerdictCode::IpNotAllowed => "this API key may not be used from this address",
        VerdictCode::InsufficientScope => "this API key lacks the scope this endpoint needs",
        VerdictCode::RateLimited => "rate limit reached; retry after the time in Retry-After",
        VerdictCode::BudgetExceeded => "the budget is spent",
        _ => "refused",
    }
}

/// Sets `RateLimit-Policy: "default";q=LIMIT;w=WINDOW` and `RateLimit: "default";r=REMAINING;t=RESET` (the
/// structured-field form of the IETF draft) for the tightest limit.
pub fn rate_limit_headers(headers: &mut HeaderMap, limit: &LimitStatus) {
    let window = limit.period.micros() / 1_000_000;
    let policy = format!("\"default\";q={};w={window}", limit.limit);
    let now = format!("\"default\";r={};t={}", limit.remaining, limit.reset_secs());
    if let (Ok(policy), Ok(now)) = (HeaderValue::from_str(&policy), HeaderValue::from_str(&now)) {
        headers.insert(RATELIMIT_POLICY, policy);
        headers.insert(RATELIMIT, now);
    }
}
