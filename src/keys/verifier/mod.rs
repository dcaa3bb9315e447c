//! The [`Verifier`]: token + requirement → [`Verdict`].

mod changes;
mod limits;
mod secrets;

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use zeroize::Zeroizing;

use crate::clock::{Clock, SystemClock};
use crate::error::Result;
use crate::keys::cache::VerifiedTokenCache;
use crate::keys::hash::{KeyHash, KeyHasher};
use crate::keys::header::credential_from_header;
use crate::keys::record::{KeyFilter, KeyLookup, KeyRecord};
use crate::keys::rules::{KeyRules, LimitGate};
use crate::keys::scope::ScopeRequirement;
use crate::keys::store::{KeyStore, MAX_KEYS_PER_HINT};
use crate::keys::token::{self, DEFAULT_PREFIX, KeyEnv};
use crate::keys::verdict::{Verdict, VerdictCode};
use crate::limits::{Charge, Decision, LimitStore, RateLimiter, SlotGuard, SlotKeeper};
use crate::random::{OsRandom, RandomSource};
use crate::stats::StatsRecorder;

/// Longest credential the verifier looks at; anything longer is `MALFORMED`.
pub const MAX_CREDENTIAL_LEN: usize = 512;

/// How a [`Verifier`] behaves.
#[derive(Debug, Clone)]
pub struct VerifierConfig {
    /// Token prefixes that mark keymeter's own tokens (default `["km"]`).
    pub prefixes: Vec<String>,
    /// Environment tags accepted (default both).
    pub environments: Vec<KeyEnv>,
    /// Length of the hint that finds imported slow-hash keys (default 8).
    pub hint_len: usize,
    /// Verified-token cache size for slow hashes (default 10,000; 0 turns it off).
    pub cache_capacity: usize,
    /// How long a cached slow-hash match is trusted (default 5 minutes).
    pub cache_ttl: Duration,
    /// `last_used_at` is written at most once per this interval per key (default 60 s).
    pub last_used_interval: Duration,
    /// How many slow-hash verifications (Argon2id, bcrypt) may run at once (default: the core count).
    pub kdf_concurrency: usize,
    /// How long a verification waits for a KDF slot before failing with [`crate::Error::Overloaded`]
    /// (default 2 s). Waiting needs a tokio runtime with its time driver; without a runtime nothing waits.
    pub kdf_wait: Duration,
    /// When the rate limiter cannot be reached: `false` (the default) fails the verification with the
    /// limiter's error (fail closed); `true` lets the request through (fail open). Either way it is logged.
    pub limits_fail_open: bool,
    /// Failed verifications of imported keys (those that may need a KDF) allowed per client address (IPv6 by
    /// /64) before that address is refused `RATE_LIMITED` without any lookup or KDF (default 10 a minute;
    /// `None` turns it off). Only verifications that carry the client address count.
    pub failures_per_address: Option<crate::limits::Quota>,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            prefixes: vec![DEFAULT_PREFIX.to_owned()],
            environments: vec![KeyEnv::Live, KeyEnv::Test],
            hint_len: 8,
            cache_capacity: 10_000,
            cache_ttl: Duration::minutes(5),
            last_used_interval: Duration::seconds(60),
            kdf_concurrency: std::thread::available_parallelism().map_or(2, usize::from),
            kdf_wait: Duration::seconds(2),
            limits_fail_open: false,
            failures_per_address: Some(crate::limits::Quota {
                count: 10,
                period: crate::limits::Period::Minute,
            }),
        }
    }
}

/// What a request needs besides a valid key: scopes and, for keys with IP rules, the client address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requirement {
    /// Scopes needed.
    pub scopes: ScopeRequirement,
    /// The client's address, if known.
    pub client_ip: Option<IpAddr>,
    /// Leave the rate limits to the caller ([`Verifier::charge_requests`]): a host that reads the request's body
    /// first (the model, a request id) charges them after those checks, so a request its body refuses costs no
    /// quota. The verdict still carries the key's rules.
    pub defer_limits: bool,
}

impl Requirement {
    /// No scope, no address.
    pub fn new() -> Self {
        Requirement::default()
    }

    /// Sets the scope requirement.
    #[must_use]
    pub fn scopes(mut self, scopes: ScopeRequirement) -> Self {
        self.scopes = scopes;
        self
    }

    /// Sets the client address.
    #[must_use]
    pub fn client_ip(mut self, ip: IpAddr) -> Self {
        self.client_ip = Some(ip);
        self
    }

    /// Leaves the rate limits to the caller ([`Requirement::defer_limits`]).
    #[must_use]
    pub fn defer_limits(mut self) -> Self {
        self.defer_limits = true;
        self
    }
}

/// Verifies inbound keys.
///
/// Checks, in order: `MALFORMED`, `WRONG_ENVIRONMENT`, `NOT_FOUND`, `REVOKED`, `DISABLED`, `EXPIRED`,
/// `IP_NOT_ALLOWED`, `INSUFFICIENT_SCOPE`, then (with [`Verifier::with_limits`]) `RATE_LIMITED`.
///
/// - A generated key is found by its id: one store read and one HMAC. An unknown id still costs one HMAC.
/// - An imported key is found by its SHA-256 digest, else by its first `hint_len` characters (at most
///   [`MAX_KEYS_PER_HINT`] candidates). The table is never scanned.
/// - Slow hashes (Argon2id, bcrypt) go through a [`VerifiedTokenCache`] and run on a fixed set of
///   `kdf_concurrency` threads ([`crate::keys::kdf::KdfThreads`]) when a runtime is present, so the KDF neither
///   stalls other requests nor leaves its memory behind in many threads. An address whose verifications of
///   imported keys keep failing is refused `RATE_LIMITED` before any KDF (`failures_per_address`).
/// - A match under an outdated scheme or pepper is re-hashed ([`KeyHasher::upgrade`]) with a compare-and-swap.
/// - `last_used_at` is written only when the stored value is older than `last_used_interval`, so a busy key costs
///   one write a minute, not one per request; with [`Verifier::with_stats`] the recorder's flushes write it instead.
/// - With [`Verifier::with_limits`], rate limits are charged last; with [`Verifier::with_stats`], every verdict
///   of a known key is counted.
///
/// Revoke and disable through the verifier also clear the key's cache entries at once.
#[derive(Debug)]
pub struct Verifier {
    store: Arc<dyn KeyStore>,
    hasher: Arc<KeyHasher>,
    clock: Arc<dyn Clock>,
    config: VerifierConfig,
    cache: VerifiedTokenCache,
    kdf_slots: Arc<tokio::sync::Semaphore>,
    kdf_threads: crate::keys::kdf::KdfThreads,
    kdf_runs: std::sync::atomic::AtomicU64,
    failures: Option<crate::keys::kdf::FailureBudget>,
    limits: Option<LimitGate>,
    slots: Option<Arc<SlotKeeper>>,
    stats: Option<Arc<StatsRecorder>>,
    totals: Arc<crate::keys::VerdictTotals>,
}

impl Verifier {
    /// A verifier with the system clock and a cache key from the OS random source.
    ///
    /// # Errors
    /// [`crate::Error::Config`] for an invalid configuration; [`crate::Error::Random`] when the cache key cannot
    /// be drawn.
    pub fn new(
        store: Arc<dyn KeyStore>,
        hasher: Arc<KeyHasher>,
        config: VerifierConfig,
    ) -> Result<Self> {
        if config.prefixes.iter().any(|p| !token::is_valid_prefix(p)) {
            return Err(crate::Error::Config(
                "token prefixes must be 1–16 characters of [a-z0-9]".into(),
            ));
        }
        if config.hint_len == 0 || config.hint_len > 64 {
            return Err(crate::Error::Config(
                "hint_len must be between 1 and 64".into(),
            ));
        }
        if config.kdf_concurrency == 0 {
            return Err(crate::Error::Config(
                "kdf_concurrency must be at least 1".into(),
            ));
        }
        let cache = VerifiedTokenCache::new(config.cache_capacity, config.cache_ttl, &OsRandom)?;
        let kdf_slots = Arc::new(tokio::sync::Semaphore::new(config.kdf_concurrency));
        let kdf_threads = crate::keys::kdf::KdfThreads::new(config.kdf_concurrency);
        let failures = config
            .failures_per_address
            .map(crate::keys::kdf::FailureBudget::new);
        Ok(Verifier {
            store,
            hasher,
            clock: Arc::new(SystemClock),
            config,
            cache,
            kdf_slots,
            kdf_threads,
            kdf_runs: std::sync::atomic::AtomicU64::new(0),
            failures,
            limits: None,
            slots: None,
            stats: None,
            totals: Arc::default(),
        })
    }

    /// Counts every verification of a known key (by verdict code and UTC day) in `recorder`, which also takes
    /// over `last_used_at` (written when it flushes, instead of once a minute by the verifier). A wrong secret for
    /// an existing generated key counts as that key's `NOT_FOUND`.
    #[must_use]
    pub fn with_stats(mut self, recorder: Arc<StatsRecorder>) -> Self {
        self.stats = Some(recorder);
        self
    }

    fn count(&self, key_id: &str, code: VerdictCode, now: i64) {
        if let Some(stats) = &self.stats {
            stats.record(key_id, code, now);
        }
    }

    /// Charges rate limits: after every other check passes, each request limit of the key, its owner and its
    /// org (kept in `rules`, plus the record's own `rate_limit`) takes one unit from its bucket in `limiter`, all
    /// or none, and each token limit is pre-checked (a bucket in debt refuses). A refusal is `RATE_LIMITED` with
    /// the tightest limit's numbers ([`Verdict::limit`]).
    #[must_use]
    pub fn with_limits(
        mut self,
        rules: Arc<dyn LimitStore>,
        limiter: Arc<dyn RateLimiter>,
    ) -> Self {
        self.limits = Some(LimitGate::new(rules, limiter));
        self
    }

    /// Holds each request's concurrency slots in `keeper`'s store ([`Verifier::claim_slot`]); without it,
    /// concurrency limits are not enforced. The limits themselves come with [`Verifier::with_limits`].
    #[must_use]
    pub fn with_slots(mut self, keeper: Arc<SlotKeeper>) -> Self {
        self.slots = Some(keeper);
        self
    }

    /// The keeper of concurrency slots ([`Verifier::with_slots`]), if any.
    pub fn slots(&self) -> Option<&Arc<SlotKeeper>> {
        self.slots.as_ref()
    }

    /// Injects the clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Injects the random source of the verified-token cache's key (drawn again from it).
    ///
    /// # Errors
    /// [`crate::Error::Random`] when the cache key cannot be drawn.
    pub fn with_random(mut self, random: Arc<dyn RandomSource>) -> Result<Self> {
        self.cache = VerifiedTokenCache::new(
            self.config.cache_capacity,
            self.config.cache_ttl,
            random.as_ref(),
        )?;
        Ok(self)
    }

    /// The configuration.
    pub fn config(&self) -> &VerifierConfig {
        &self.config
    }

    /// How many KDFs (slow-hash verifies, dummy verifies for unknown hints, re-hashes) this verifier has run:
    /// for monitoring a deployment's slow-hash load.
    pub fn kdf_runs(&self) -> u64 {
        self.kdf_runs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The slow-hash cache (for inspection).
    pub fn cache(&self) -> &VerifiedTokenCache {
        &self.cache
    }

    /// Verifies the key carried by an HTTP header (`Authorization: Bearer …` or `x-api-key`). A header that
    /// carries no single token is `MALFORMED`.
    ///
    /// # Errors
    /// As [`Verifier::verify`].
    pub async fn verify_header(
        &self,
        name: &str,
        value: &str,
        requirement: &Requirement,
    ) -> Result<Verdict> {
        match credential_from_header(name, value) {
            Ok(token) => self.verify(token, requirement).await,
            Err(_) => Ok(Verdict::reject(VerdictCode::Malformed)),
        }
    }

    /// Verifies `credential` against `requirement` at the clock's current time.
    ///
    /// # Errors
    /// Store failures, and a stored hash this verifier cannot check (an unknown pepper id, bcrypt without the
    /// feature). A bad token is never an error: it is a [`Verdict`].
    pub async fn verify(&self, credential: &str, requirement: &Requirement) -> Result<Verdict> {
        let verdict = self.decide(credential, requirement).await?;
        self.totals.add(verdict.code());
        Ok(verdict)
    }

    /// Every verdict [`Verifier::verify`] gave, by code (for metrics).
    pub fn totals(&self) -> &Arc<crate::keys::VerdictTotals> {
        &self.totals
    }

    async fn decide(&self, credential: &str, requirement: &Requirement) -> Result<Verdict> {
        if credential.is_empty() || credential.len() > MAX_CREDENTIAL_LEN {
            return Ok(Verdict::reject(VerdictCode::Malformed));
        }
        // Time is read only once a lookup is due: rejections before that need none.
        let parsed = token::parse(credential);
        let (record, now) = if let Ok(parsed) = parsed
            && self.config.prefixes.iter().any(|p| p == parsed.prefix)
        {
            if !self.config.environments.contains(&parsed.env) {
                return Ok(Verdict::reject(VerdictCode::WrongEnvironment));
            }
            // Read once, before the lookup: a cache in front of the store judges freshness by it too.
            let now = self.clock.now_micros();
            let found = match self.store.get_now(parsed.id, now) {
                Some(found) => found,
                None => self.store.get(parsed.id).await?,
            };
            match found {
                Some(record) if record.lookup == KeyLookup::Id => {
                    if !self.matches(credential, &record).await?
                        && !self.matches_previous(credential, &record, now)?
                    {
                        self.count(&record.id, VerdictCode::NotFound, now);
                        return Ok(Verdict::reject(VerdictCode::NotFound));
                    }
                    (record, now)
                }
                _ => {
                    // Same work as a wrong secret, so timing does not reveal which ids exist.
                    self.hasher.verify_nothing(credential.as_bytes());
                    return Ok(Verdict::reject(VerdictCode::NotFound));
                }
            }
        } else if self.has_keymeter_shape(credential) {
            // A configured prefix and an env tag, but not a well-formed token: a typo or a truncation.
            return Ok(Verdict::reject(VerdictCode::Malformed));
        } else {
            if !credential.bytes().all(|b| b.is_ascii_graphic()) {
                return Ok(Verdict::reject(VerdictCode::Malformed));
            }
            // An address that keeps failing gets no more KDFs for a while (nor lookups that may lead to one).
            // Only failures count, so a client whose keys verify is never refused here; the attempts already in
            // flight when an address's budget runs out still finish (at most the KDF slots' worth run at once).
            let budget = self.failures.as_ref().zip(requirement.client_ip);
            if let Some((failures, ip)) = budget
                && let Some(status) = failures.spent(ip, self.clock.now_micros())
            {
                return Ok(Verdict::reject(VerdictCode::RateLimited).with_limit(Some(status)));
            }
            match Box::pin(self.find_imported(credential)).await? {
                Some(record) => {
                    if !self.config.environments.contains(&record.env) {
                        return Ok(Verdict::reject(VerdictCode::WrongEnvironment));
                    }
                    (record, self.clock.now_micros())
                }
                None => {
                    if let Some((failures, ip)) = budget {
                        failures.failed(ip, self.clock.now_micros());
                    }
                    return Ok(Verdict::reject(VerdictCode::NotFound));
                }
            }
        };

        let code = if record.revoked_at.is_some() {
            VerdictCode::Revoked
        } else if record.disabled {
            VerdictCode::Disabled
        } else if record
            .expires_at
            .is_some_and(|at| at.timestamp_micros() <= now)
        {
            VerdictCode::Expired
        } else if !record.allows_ip(requirement.client_ip) {
            VerdictCode::IpNotAllowed
        } else if !requirement.scopes.is_satisfied_by(&record.scopes) {
            VerdictCode::InsufficientScope
        } else {
            VerdictCode::Valid
        };
        if code != VerdictCode::Valid {
            self.count(&record.id, code, now);
            return Ok(Verdict::with_key(code, record));
        }
        let mut limit = None;
        let mut rules = None;
        if let Some(gate) = &self.limits
            && requirement.defer_limits
        {
            // The rules only; a limit store that cannot answer now is the caller's to meet when it charges.
            rules = match gate.compiled_now(&record, now) {
                Some(compiled) => Some(compiled),
                None => Box::pin(gate.compiled(&record, now)).await.ok(),
            };
        } else if let Some(gate) = &self.limits {
            let (compiled, decided) = match gate.check_now(&record, now) {
                Some((compiled, decided)) => (Some(compiled), decided),
                // Boxed: a limiter's future stays out of the verify future of deployments without limits.
                None => Box::pin(gate.check(&record, now)).await,
            };
            rules = compiled;
            match decided {
                Ok(decision) if decision.allowed => limit = decision.tightest,
                Ok(decision) => {
                    self.count(&record.id, VerdictCode::RateLimited, now);
                    return Ok(Verdict::with_key(VerdictCode::RateLimited, record)
                        .with_limit(decision.tightest));
                }
                Err(e) if self.config.limits_fail_open => {
                    tracing::warn!(key_id = %record.id, error = %e, "rate limiter unreachable: failing open");
                }
                Err(e) => {
                    tracing::warn!(key_id = %record.id, error = %e, "rate limiter unreachable: failing closed");
                    return Err(crate::Error::Unavailable {
                        dependency: crate::error::Dependency::Limiter,
                        source: Box::new(e),
                    });
                }
            }
        }
        self.count(&record.id, code, now);
        self.after_success(credential, &record, now).await;
        Ok(Verdict::with_key(code, record)
            .with_limit(limit)
            .with_rules(rules))
    }
}
