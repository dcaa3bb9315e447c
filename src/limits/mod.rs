//! Rate limits: GCRA quotas per key, per owner and per org, on requests and on tokens.
//!
//! - [`Quota`] (`100/min`), [`Limits`] (a scope's request and token quotas), [`LimitScope`] (key, owner, org).
//! - [`gcra`]: the rule, pure functions of (state, now, cost); [`Decision`] and [`LimitStatus`] are its answers.
//! - [`LimitStore`]: where each scope's limits are kept. [`RateLimiter`]: where bucket states are kept, checked
//!   and charged atomically — all the charges of one check, or none. Both are object safe; the memory and
//!   SQLite stores implement them, and [`crate::conformance::limits`] checks any backend.
//! - [`LocalLimiter`]: one instance's buckets in its memory, written to a [`BucketStore`] in batches.
//! - [`LeasedLimiter`]: several instances' buckets in the store, each spending leased slices of them in memory.
//! - [`slots`]: concurrency limits, slots held while a request is in flight ([`SlotStore`], [`SlotKeeper`]).
//! - The [`Verifier`](crate::keys::Verifier) charges request limits at verify and pre-checks token limits
//!   ([`Verifier::with_limits`](crate::keys::Verifier::with_limits)); [`charge_tokens`] charges the tokens a
//!   response used.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use keymeter::limits::{Charge, Quota, RateLimiter};
//! use keymeter::store::MemoryStore;
//!
//! let limiter = MemoryStore::new();
//! let quota: Quota = "2/min".parse()?;
//! let charge = [Charge { bucket: "key:abc:requests:2/min".into(), quota, cost: 1 }];
//! let now = 0;
//! assert!(limiter.check(&charge, now).await?.allowed);
//! assert!(limiter.check(&charge, now).await?.allowed);
//! let refused = limiter.check(&charge, now).await?;
//! assert!(!refused.allowed);
//! assert_eq!(refused.tightest.unwrap().retry_after_secs(), 30);
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

pub(crate) mod buckets;
pub mod gcra;
pub mod leased;
pub mod local;
pub mod quota;
pub mod slots;

use async_trait::async_trait;

pub use gcra::{Charge, Decision, LimitStatus};
pub use leased::LeasedLimiter;
pub use local::LocalLimiter;
pub use quota::{LimitScope, Limits, MAX_QUOTA, MAX_QUOTAS, Period, Quota};
pub use slots::{MAX_PARALLEL, Slot, SlotClaim, SlotGuard, SlotKeeper, SlotRefusal, SlotStore};

use crate::error::Result;

/// Where each scope's limits are kept. Object safe.
#[async_trait]
pub trait LimitStore: Send + Sync + std::fmt::Debug {
    /// Replaces the limits of `scope` (empty limits clear them).
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] for a bad scope id or too many quotas ([`Limits::validate`]); backend
    /// failures.
    async fn set_limits(&self, scope: &LimitScope, limits: &Limits) -> Result<()>;

    /// The limits of each of `scopes`, in order (empty where none are set): one round trip for a key, its owner
    /// and its org.
    ///
    /// # Errors
    /// Backend failures only.
    async fn limits(&self, scopes: &[LimitScope]) -> Result<Vec<Limits>>;

    /// The same answer as [`LimitStore::limits`] when the backend can give it without waiting (it holds the
    /// limits in process memory); `None` means "ask `limits`" (the default). The verify path tries this first.
    fn limits_now(&self, scopes: &[LimitScope]) -> Option<Vec<Limits>> {
        let _ = scopes;
        None
    }
}

/// Where bucket states are kept. Object safe. Every method is atomic over all its charges; `now` is the caller's
/// clock in microseconds since the epoch (a backend with a shared clock, such as Redis, uses its own).
#[async_trait]
pub trait RateLimiter: Send + Sync + std::fmt::Debug {
    /// Admits the request if every charge fits, charging them all; otherwise charges none.
    ///
    /// # Errors
    /// Backend failures (a limiter that cannot be reached): the caller fails closed or open.
    async fn check(&self, charges: &[Charge], now: i64) -> Result<Decision>;

    /// The same as [`RateLimiter::check`] when the backend can do it without waiting (its buckets are in
    /// process memory); `None` means "call `check`" (the default), and nothing was charged. The verify path
    /// tries this first, so an in-memory limiter costs no async call there.
    fn check_now(&self, charges: &[Charge], now: i64) -> Option<Result<Decision>> {
        let _ = (charges, now);
        None
    }

    /// Adds every charge whatever the buckets hold (tokens after a response; a bucket may go into debt).
    ///
    /// # Errors
    /// Backend failures.
    async fn charge(&self, charges: &[Charge], now: i64) -> Result<()>;

    /// Gives back every charge ([`gcra::refund`]): a request admitted and charged, then refused by a later step
    /// (no concurrency slot, no provider key, no budget), costs its limits nothing.
    ///
    /// # Errors
    /// Backend failures.
    async fn refund(&self, charges: &[Charge], now: i64) -> Result<()>;

    /// Whether the limiter can be reached now (a readiness probe); in-process limiters always can.
    ///
    /// # Errors
    /// Backend failures (the limiter cannot be reached).
    async fn reachable(&self) -> Result<()> {
        Ok(())
    }

    /// Writes what the limiter holds only in process memory to where it keeps it ([`LocalLimiter`]); a
    /// service calls it at shutdown. Nothing to do for the others (the default).
    ///
    /// # Errors
    /// Backend failures.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

/// Where a [`LocalLimiter`] keeps its bucket states between runs: written in batches, read at start. Object safe.
/// The memory, SQLite and PostgreSQL stores keep them in the same place as their own [`RateLimiter`], so a
/// process that checks through the store (the CLI) sees a local limiter's states once written.
#[async_trait]
pub trait BucketStore: Send + Sync + std::fmt::Debug {
    /// Every bucket state whose TAT is after `now` (microseconds since the epoch), in no order.
    ///
    /// # Errors
    /// Backend failures.
    async fn bucket_states(&self, now: i64) -> Result<Vec<(String, i64)>>;

    /// Stores each `(bucket, TAT)` in one atomic step, replacing what was kept.
    ///
    /// # Errors
    /// Backend failures; nothing is written then.
    async fn save_bucket_states(&self, states: &[(String, i64)]) -> Result<()>;
}

/// Whether a bucket counts requests or tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitKind {
    /// Requests, charged at verify.
    Requests,
    /// Tokens, charged after the response.
    Tokens,
}

impl LimitKind {
    /// `requests` or `tokens`.
    pub fn as_str(self) -> &'static str {
        match self {
            LimitKind::Requests => "requests",
            LimitKind::Tokens => "tokens",
        }
    }
}

/// The bucket of one quota of one scope: `key:ID:requests:100/min`. A changed quota is a new bucket.
pub fn bucket_name(scope: &LimitScope, kind: LimitKind, quota: &Quota) -> String {
    format!("{}:{}:{}:{quota}", scope.kind(), scope.id(), kind.as_str())
}

/// The charges of one request by a key: each request quota of each scope at cost 1, and each token quota at cost
/// `tokens` (0 at verify: the pre-check that the bucket is not in debt). `limits[i]` belongs to `scopes[i]`.
pub fn charges(
    scopes: &[LimitScope],
    limits: &[Limits],
    kind: Option<LimitKind>,
    tokens: u64,
) -> Vec<Charge> {
    let mut out = Vec::new();
    for (scope, limits) in scopes.iter().zip(limits) {
        if kind != Some(LimitKind::Tokens) {
            out.extend(limits.requests.iter().map(|q| Charge {
                bucket: bucket_name(scope, LimitKind::Requests, q),
                quota: *q,
                cost: 1,
            }));
        }
        if kind != Some(LimitKind::Requests) {
            out.extend(limits.tokens.iter().map(|q| Charge {
                bucket: bucket_name(scope, LimitKind::Tokens, q),
                quota: *q,
                cost: tokens,
            }));
        }
    }
    out
}

/// Charges the tokens a response used against every token limit of the key's scopes (after the response; a
/// bucket may go into debt, and the key's next verify then waits).
///
/// # Errors
/// Backend failures.
pub async fn charge_tokens(
    store: &dyn LimitStore,
    limiter: &dyn RateLimiter,
    key: &crate::keys::KeyRecord,
    tokens: u64,
    now: i64,
) -> Result<()> {
    let scopes = LimitScope::of(Some(&key.id), &key.owner, key.org.as_deref());
    let limits = store.limits(&scopes).await?;
    let charges = charges(&scopes, &limits, Some(LimitKind::Tokens), tokens);
    if charges.is_empty() {
        return Ok(());
    }
    limiter.charge(&charges, now).await
}

/// A limiter that admits everything and stores nothing: what a deployment configured to fail open uses when its
/// limiter cannot even be connected to.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

#[async_trait]
impl RateLimiter for Unlimited {
    async fn check(&self, _: &[Charge], _: i64) -> Result<Decision> {
        Ok(Decision::UNLIMITED)
    }

    async fn charge(&self, _: &[Charge], _: i64) -> Result<()> {
        Ok(())
    }

    async fn refund(&self, _: &[Charge], _: i64) -> Result<()> {
        Ok(())
    }
}
