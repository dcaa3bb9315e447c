//! The tower layer: verify the request's key against a route's requirement, or answer the refusal.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, Request};
use axum::response::{IntoResponse, Response};
use keymeter::keys::{Requirement, ScopeRequirement, Verdict, Verifier};
use tower_layer::Layer;
use tower_service::Service;

use crate::client_ip::ClientIp;
use crate::error::{ApiError, rate_limit_headers};
use crate::extract::VerifiedKey;

/// What every guarded route shares: the verifier (with its rate limits and statistics, as configured) and where
/// the client address comes from. Cheap to clone.
///
/// ```
/// use std::sync::Arc;
/// use axum::{Router, routing::post};
/// use keymeter::keys::{KeyHasher, Pepper, PepperRing, ScopeRequirement, Verifier, VerifierConfig};
/// use keymeter::random::OsRandom;
/// use keymeter::store::MemoryStore;
/// use keymeter_axum::{KeyAuth, VerifiedKey};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hasher = Arc::new(KeyHasher::new(PepperRing::new(vec![Pepper::generate("p1", &OsRandom)?])?));
/// let verifier = Verifier::new(Arc::new(MemoryStore::new()), hasher, VerifierConfig::default())?;
/// let auth = KeyAuth::new(Arc::new(verifier));
///
/// async fn chat(VerifiedKey(key): VerifiedKey) -> String {
///     format!("hello {}", key.owner)
/// }
/// let app: Router = Router::new().route(
///     "/v1/chat",
///     post(chat).layer(auth.require(ScopeRequirement::all(["llm:chat"])?)),
/// );
/// # drop(app);
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct KeyAuth {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    verifier: Arc<Verifier>,
    client_ip: ClientIp,
}

impl KeyAuth {
    /// Guards with `verifier`, taking the client address from the connection.
    pub fn new(verifier: impl Into<Arc<Verifier>>) -> Self {
        let verifier = verifier.into();
        KeyAuth {
            shared: Arc::new(Shared {
                verifier,
                client_ip: ClientIp::Connection,
            }),
        }
    }

    /// Takes the client address from `source` instead.
    #[must_use]
    pub fn with_client_ip(self, source: ClientIp) -> Self {
        KeyAuth {
            shared: Arc::new(Shared {
                verifier: self.shared.verifier.clone(),
                client_ip: source,
            }),
        }
    }

    /// The verifier.
    pub fn verifier(&self) -> &Arc<Verifier> {
        &self.shared.verifier
    }

    /// A layer admitting requests whose key satisfies `scopes` ([`ScopeRequirement::None`]: any valid key).
    pub fn require(&self, scopes: ScopeRequirement) -> RequireKeyLayer {
        RequireKeyLayer {
            auth: self.clone(),
            scopes: Arc::new(scopes),
            defer_limits: false,
        }
    }

    /// A layer admitting requests whose key holds every one of `scopes`: [`KeyAuth::require`] with
    /// [`ScopeRequirement::all`].
    ///
    /// # Errors
    /// [`keymeter::Error::InvalidInput`] for a malformed scope (a route table that cannot be right).
    pub fn require_all<'a>(
        &self,
        scopes: impl IntoIterator<Item = &'a str>,
    ) -> keymeter::Result<RequireKeyLayer> {
        Ok(self.require(ScopeRequirement::all(scopes)?))
    }

    /// The client address of `request`, from the configured [`ClientIp`] source.
    pub fn client_ip<B>(&self, request: &Request<B>) -> Option<IpAddr> {
        self.shared.client_ip.of(request)
    }

    /// Verifies the key `headers` carry (`Authorization: Bearer …`, else `x-api-key` or `x-goog-api-key`) against
    /// `scopes` and `client_ip`; rate limits are charged and statistics counted by the verifier.
    ///
    /// # Errors
    /// The refusal as an [`ApiError`] (401, 403, 429), or the verifier's failure (503 when overloaded, 500).
    pub async fn verify(
        &self,
        headers: &HeaderMap,
        client_ip: Option<IpAddr>,
        scopes: &ScopeRequirement,
    ) -> Result<Verdict, ApiError> {
        let requirement = Requirement {
            scopes: scopes.clone(),
            client_ip,
            defer_limits: false,
        };
        self.verify_requirement(headers, &requirement).await
    }

    /// [`KeyAuth::verify`] against a whole [`Requirement`] (one that defers the rate limits, say).
    ///
    /// # Errors
    /// As [`KeyAuth::verify`].
    pub async fn verify_requirement(
        &self,
        headers: &HeaderMap,
        requirement: &Requirement,
    ) -> Result<Verdict, ApiError> {
        let (scopes, client_ip) = (&requirement.scopes, requirement.client_ip);
        let verdict = match credential_header(headers) {
            Some((name, value)) => {
                self.shared
                    .verifier
                    .verify_header(name, value, requirement)
                    .await?
            }
            None => return Err(missing_key()),
        };
        if verdict.is_valid() {
            return Ok(verdict);
        }
        if verdict.code() == keymeter::keys::VerdictCode::IpNotAllowed && client_ip.is_none() {
            // The usual cause is the host's serving code, not the client: say so where the operator looks.
            tracing::warn!(
                key_id = verdict.key().map(|k| k.id.as_str()).unwrap_or(""),
                "a key with IP rules was refused because the client address is unknown: serve with \
                 `router.into_make_service_with_connect_info::<SocketAddr>()`, or configure `ClientIp::Forwarded` \
                 behind a proxy"
            );
        }
        let refusal = ApiError::refusal(&verdict);
        match verdict.key() {
            // The caller proved the key's secret: say which scopes it lacks.
            Some(key) if verdict.code() == keymeter::keys::VerdictCode::InsufficientScope => {
                let missing: Vec<String> = scopes
                    .missing(&key.scopes)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                Err(refusal
                    .with_message(format!(
                        "this API key lacks the scope this endpoint needs: {}",
                        missing.join(", ")
                    ))
                    .with_detail("missing_scopes", missing))
            }
            _ => Err(refusal),
        }
    }
}

/// The header carrying the key: `Authorization` when present, else `x-api-key`, else `x-goog-api-key` (Google's
/// SDKs). A value that is not text counts as no key.
fn credential_header(headers: &HeaderMap) -> Option<(&'static str, &str)> {
    ["authorization", "x-api-key", "x-goog-api-key"]
        .into_iter()
        .find_map(|name| headers.get(name).map(|v| (name, v.to_str().unwrap_or(""))))
}

fn missing_key() -> ApiError {
    ApiError::for_verdict_code(keymeter::keys::VerdictCode::Malformed, None)
        .with_message(
            "no API key: send `Authorization: Bearer <key>`, `x-api-key: <key>` or `x-goog-api-key: <key>`",
        )
}

/// The layer of one route (or group of routes): see [`KeyAuth::require`].
#[derive(Debug, Clone)]
pub struct RequireKeyLayer {
    auth: KeyAuth,
    scopes: Arc<ScopeRequirement>,
    defer_limits: bool,
}

impl RequireKeyLayer {
    /// Leaves the rate limits to the route ([`keymeter::keys::Requirement::defer_limits`]): a handler that reads
    /// the body first charges them with [`keymeter::keys::Verifier::charge_requests`] after its own checks, from
    /// the `Arc<KeyRules>` in the request's extensions, and sets the `RateLimit` headers itself.
    #[must_use]
    pub fn deferring_limits(mut self) -> Self {
        self.defer_limits = true;
        self
    }
}

impl<S> Layer<S> for RequireKeyLayer {
    type Service = RequireKey<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireKey {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`RequireKeyLayer`] wraps around a route: a valid key's record goes into the request's extensions
/// as a [`VerifiedKey`] (with its [`keymeter::keys::KeyRules`] as an `Arc<KeyRules>`, when the verifier has
/// limits) and its rate-limit headers onto the answer; anything else is answered here.
#[derive(Debug, Clone)]
pub struct RequireKey<S> {
    inner: S,
    layer: RequireKeyLayer,
}

impl<S> Service<Request<Body>> for RequireKey<S>
where
    S: Service<Request<Body>, Response = Response> + Clone + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        // The ready service goes into the future; a fresh clone waits for the next call (tower's rule).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let layer = self.layer.clone();
        Box::pin(async move {
            let client_ip = layer.auth.client_ip(&request);
            let requirement = Requirement {
                scopes: (*layer.scopes).clone(),
                client_ip,
                defer_limits: layer.defer_limits,
            };
            let verified = layer
                .auth
                .verify_requirement(request.headers(), &requirement)
                .await;
            let verdict = match verified {
                Ok(verdict) => verdict,
                Err(refusal) => return Ok(refusal.into_response()),
            };
            let limit = verdict.limit().copied();
            if let Some(key) = verdict.valid_key() {
                request.extensions_mut().insert(VerifiedKey(key.clone()));
                // The key's allowlists and concurrency limits, as the verify read them: later checks need no lookup.
                if let Some(rules) = verdict.rules() {
                    request.extensions_mut().insert(rules.clone());
                }
            }
            let mut response = inner.call(request).await?;
            if let Some(limit) = &limit {
                rate_limit_headers(response.headers_mut(), limit);
            }
            Ok(response)
        })
    }
}
