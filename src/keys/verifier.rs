//! The [`Verifier`]: token + requirement → [`Verdict`].

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

    /// Charges one request of `key` against every request limit in its `rules` and pre-checks its token limits,
    /// all or none: what [`Verifier::verify`] does last unless the requirement deferred it
    /// ([`Requirement::defer_limits`]). A refused check charges nothing and counts as the key's `RATE_LIMITED`.
    /// Without [`Verifier::with_limits`], [`Decision::UNLIMITED`].
    ///
    /// # Errors
    /// An unreachable limiter: [`crate::Error::Unavailable`] when limits fail closed (failing open, admitted and
    /// logged).
    pub async fn charge_requests(&self, key: &KeyRecord, rules: &KeyRules) -> Result<Decision> {
        let Some(gate) = &self.limits else {
            return Ok(Decision::UNLIMITED);
        };
        if rules.charges.is_empty() {
            return Ok(Decision::UNLIMITED);
        }
        let now = self.clock.now_micros();
        let decided = match gate.limiter.check_now(&rules.charges, now) {
            Some(decided) => decided,
            None => gate.limiter.check(&rules.charges, now).await,
        };
        match decided {
            Ok(decision) => {
                if !decision.allowed {
                    self.count(&key.id, VerdictCode::RateLimited, now);
                    // Deferred limits: the request's verify was counted valid; its refusal is counted here.
                    self.totals.add(VerdictCode::RateLimited);
                }
                Ok(decision)
            }
            Err(e) if self.config.limits_fail_open => {
                tracing::warn!(key_id = %key.id, error = %e, "rate limiter unreachable: failing open");
                Ok(Decision::UNLIMITED)
            }
            Err(e) => {
                tracing::warn!(key_id = %key.id, error = %e, "rate limiter unreachable: failing closed");
                Err(crate::Error::Unavailable {
                    dependency: crate::error::Dependency::Limiter,
                    source: Box::new(e),
                })
            }
        }
    }

    /// Gives back the request charges of one admitted request of `key` (its `rules`'): a request a later step
    /// refused (no concurrency slot, no provider key, no budget, a duplicate id) costs its limits nothing. Token
    /// limits were only pre-checked, so nothing of theirs is given back.
    ///
    /// # Errors
    /// The limiter's failures (the request's charge then stands: the caller logs it).
    pub async fn refund_requests(&self, key: &KeyRecord, rules: &KeyRules) -> Result<()> {
        let Some(gate) = &self.limits else {
            return Ok(());
        };
        let charged: Vec<Charge> = rules
            .charges
            .iter()
            .filter(|c| c.cost > 0)
            .cloned()
            .collect();
        if charged.is_empty() {
            return Ok(());
        }
        gate.limiter
            .refund(&charged, self.clock.now_micros())
            .await?;
        tracing::debug!(key_id = %key.id, "request charges given back");
        Ok(())
    }

    /// Charges the tokens a response used against the token limits of `key`, its owner and its org (a bucket may
    /// go into debt: the key's next verify then waits). Without [`Verifier::with_limits`] it does nothing.
    ///
    /// # Errors
    /// The limiter's failures (whatever `limits_fail_open` says: a lost charge is the caller's to log).
    pub async fn charge_tokens(&self, key: &KeyRecord, tokens: u64) -> Result<()> {
        let Some(gate) = &self.limits else {
            return Ok(());
        };
        // The key's rules as its verify compiled them (cached for a second): no limits read per response.
        let now = self.clock.now_micros();
        let rules = gate.compiled(key, now).await?;
        if rules.tokens.is_empty() {
            return Ok(());
        }
        let charges: Vec<crate::limits::Charge> = rules
            .tokens
            .iter()
            .map(|c| crate::limits::Charge {
                cost: tokens,
                ..c.clone()
            })
            .collect();
        gate.limiter.charge(&charges, now).await
    }

    /// Whether `key` may call `model` through `provider` (a provider name such as `openai`): the key's own
    /// allowlist ([`KeyRecord::allowed_models`]) and each one set on the key's, its owner's and its organisation's
    /// limits ([`crate::limits::Limits::models`]) must permit it. An empty list permits everything. The scopes' lists are read
    /// with the rate limits and trusted as long (a change holds within a second).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use keymeter::keys::hash::{KeyHasher, Pepper, PepperRing};
    /// use keymeter::keys::{KeyIssuer, NewKey, Verifier, VerifierConfig, models::parse_rules};
    /// use keymeter::random::OsRandom;
    /// use keymeter::store::MemoryStore;
    ///
    /// let store = Arc::new(MemoryStore::new());
    /// let peppers = PepperRing::new(vec![Pepper::generate("p1", &OsRandom)?])?;
    /// let hasher = Arc::new(KeyHasher::new(peppers));
    /// let issuer = KeyIssuer::new(store.clone(), hasher.clone());
    /// let key = issuer.issue(NewKey::new("ci", "alice").allowed_models(parse_rules("gpt-4o*")?)).await?;
    /// let verifier = Verifier::new(store.clone(), hasher, VerifierConfig::default())?;
    /// assert!(verifier.check_model(&key.record, "openai", "gpt-4o-mini").await.is_ok());
    /// let refused = verifier.check_model(&key.record, "anthropic", "claude-sonnet-4-5").await;
    /// assert!(matches!(refused, Err(keymeter::Error::ModelNotAllowed { .. })));
    /// # Ok::<(), keymeter::Error>(()) }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`crate::Error::ModelNotAllowed`] naming the scope that refused; the limit store's failures.
    pub async fn check_model(&self, key: &KeyRecord, provider: &str, model: &str) -> Result<()> {
        match self.rules(key).await? {
            Some(rules) => rules.check_model(key, provider, model),
            None => KeyRules::default().check_model(key, provider, model),
        }
    }

    /// The rules `key` is held to by its scopes' limits (read with the rate limits and trusted as long); `None`
    /// without [`Verifier::with_limits`]. A valid verdict already carries them ([`Verdict::rules`]).
    ///
    /// # Errors
    /// The limit store's failures.
    pub async fn rules(&self, key: &KeyRecord) -> Result<Option<Arc<KeyRules>>> {
        match &self.limits {
            Some(gate) => gate.compiled(key, self.clock.now_micros()).await.map(Some),
            None => Ok(None),
        }
    }

    /// Takes a slot for one request by `key` in each of its scopes with a concurrency limit (its `rules`, from
    /// the verdict or [`Verifier::rules`]); the guard gives them back when the request ends. Without
    /// [`Verifier::with_slots`] or a concurrency limit, a guard holding nothing and no store call.
    ///
    /// # Errors
    /// [`crate::Error::TooManyConcurrent`] naming the scope with no room (and nothing held); the slot store's
    /// failures, as [`crate::Error::Unavailable`] (the limiter) when the verifier fails closed; failing open, a
    /// guard holding nothing.
    pub async fn claim_slot(&self, key: &KeyRecord, rules: &KeyRules) -> Result<SlotGuard> {
        let (Some(keeper), claims) = (&self.slots, rules.slot_claims()) else {
            return Ok(SlotGuard::none());
        };
        if claims.is_empty() {
            return Ok(SlotGuard::none());
        }
        match keeper.acquire(claims).await {
            Err(e @ crate::Error::TooManyConcurrent { .. }) => Err(e),
            Err(e) if self.config.limits_fail_open => {
                tracing::warn!(key_id = %key.id, error = %e, "concurrency slots unreachable: failing open");
                Ok(SlotGuard::none())
            }
            Err(e) => {
                tracing::warn!(key_id = %key.id, error = %e, "concurrency slots unreachable: failing closed");
                Err(crate::Error::Unavailable {
                    dependency: crate::error::Dependency::Limiter,
                    source: Box::new(e),
                })
            }
            ok => ok,
        }
    }

    fn has_keymeter_shape(&self, credential: &str) -> bool {
        credential.split_once('_').is_some_and(|(prefix, rest)| {
            (rest.starts_with("live_") || rest.starts_with("test_"))
                && self.config.prefixes.iter().any(|p| p == prefix)
        })
    }

    async fn find_imported(&self, credential: &str) -> Result<Option<Arc<KeyRecord>>> {
        let digest = KeyHasher::sha256(credential.as_bytes());
        if let Some(hex) = digest.sha256_hex()
            && let Some(record) = self.store.find_by_digest(hex).await?
            && matches!(record.lookup, KeyLookup::Digest(_))
            && self.matches(credential, &record).await?
        {
            return Ok(Some(record));
        }
        // The credential is ASCII (checked above), so any byte offset is a char boundary.
        let mut tried = false;
        if let Some(hint) = credential.get(..self.config.hint_len) {
            // One lookup per pepper of the ring (usually one or two), at most MAX_KEYS_PER_HINT keys each.
            for digest in self.hasher.hint_digests(hint.as_bytes()) {
                let candidates = self.store.find_by_hint(&digest).await?;
                for record in candidates.into_iter().take(MAX_KEYS_PER_HINT) {
                    if matches!(record.lookup, KeyLookup::Hint(_)) {
                        tried = true;
                        if self.matches(credential, &record).await? {
                            return Ok(Some(record));
                        }
                    }
                }
            }
        }
        // A hint that matches nothing costs one KDF all the same, while any hinted key exists: timing must not
        // tell which key prefixes exist.
        if !tried && self.store.hint_keys_exist().await? {
            let hasher = Arc::clone(&self.hasher);
            let owned = Zeroizing::new(credential.to_owned());
            self.run_kdf(move || hasher.verify_nothing_slowly(owned.as_bytes()))
                .await?;
        }
        Ok(None)
    }

    /// Runs a KDF in one of the `kdf_concurrency` slots (waiting at most `kdf_wait`), off the async workers.
    async fn run_kdf<T, E, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce() -> std::result::Result<T, E> + Send + 'static,
        E: Into<crate::Error> + Send + 'static,
        T: Send + 'static,
    {
        let permit = match self.kdf_slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let wait = self.config.kdf_wait.to_std().unwrap_or_default();
                if wait.is_zero() || tokio::runtime::Handle::try_current().is_err() {
                    return Err(crate::Error::Overloaded);
                }
                match tokio::time::timeout(wait, self.kdf_slots.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => return Err(crate::Error::Overloaded),
                }
            }
        };
        self.kdf_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The permit lives as long as the KDF runs, even if the caller stops waiting for it.
        let work = move || {
            let out = work();
            drop(permit);
            out
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return work().map_err(Into::into);
        }
        self.kdf_threads.run(work).await?.map_err(Into::into)
    }

    async fn matches(&self, credential: &str, record: &KeyRecord) -> Result<bool> {
        if !record.hash.scheme().is_slow() {
            return Ok(self.hasher.verify(credential.as_bytes(), &record.hash)?);
        }
        // Boxed: keeps the slow path's state out of every verify future.
        Box::pin(self.matches_slow(credential, record)).await
    }

    /// Whether `credential` is the secret a rotation replaced, while its grace period runs. Rotation is for
    /// generated keys, whose hashes are HMACs: a slow previous hash is never checked here.
    fn matches_previous(&self, credential: &str, record: &KeyRecord, now: i64) -> Result<bool> {
        match record.previous_hash_at(now) {
            Some(hash) if !hash.scheme().is_slow() => {
                Ok(self.hasher.verify(credential.as_bytes(), hash)?)
            }
            _ => Ok(false),
        }
    }

    async fn matches_slow(&self, credential: &str, record: &KeyRecord) -> Result<bool> {
        let hash = &record.hash;
        let now = self.clock.now();
        if self
            .cache
            .contains(credential.as_bytes(), &record.id, hash.as_str(), now)
        {
            return Ok(true);
        }
        let hasher = Arc::clone(&self.hasher);
        let owned = Zeroizing::new(credential.to_owned());
        let stored = hash.clone();
        let ok = self
            .run_kdf(move || hasher.verify(owned.as_bytes(), &stored))
            .await?;
        if ok {
            self.cache
                .insert(credential.as_bytes(), &record.id, hash.as_str(), now);
        }
        Ok(ok)
    }

    /// Best effort: a failed re-hash or `last_used_at` write must not fail a valid request, so both are logged.
    async fn after_success(&self, credential: &str, record: &KeyRecord, now: i64) {
        let interval = self
            .config
            .last_used_interval
            .num_microseconds()
            .unwrap_or(i64::MAX);
        // With a statistics recorder, its flushes write last_used_at.
        let stale = self.stats.is_none()
            && record
                .last_used_at
                .is_none_or(|t| now.saturating_sub(t.timestamp_micros()) >= interval);
        if stale && let Some(at) = DateTime::<Utc>::from_timestamp_micros(now) {
            // Boxed: a write is rare (once an interval per key), so its state stays out of every verify future.
            if let Err(e) = Box::pin(self.store.record_use(&record.id, at)).await {
                tracing::warn!(key_id = %record.id, error = %e, "could not record key use");
            }
        }
        if self.hasher.is_outdated(&record.hash) {
            Box::pin(self.upgrade(credential, record)).await;
        }
    }

    async fn upgrade(&self, credential: &str, record: &KeyRecord) {
        let hasher = Arc::clone(&self.hasher);
        let owned = Zeroizing::new(credential.to_owned());
        let old = record.hash.clone();
        match self
            .run_kdf(move || hasher.upgrade(owned.as_bytes(), &old))
            .await
        {
            Ok(Some(new)) => self.replace_hash(record, &new).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(key_id = %record.id, error = %e, "could not re-hash key"),
        }
    }

    async fn replace_hash(&self, record: &KeyRecord, new: &KeyHash) {
        match self.store.replace_hash(&record.id, &record.hash, new).await {
            Ok(_) => self.cache.invalidate(&record.id),
            Err(e) => {
                tracing::warn!(key_id = %record.id, error = %e, "could not store re-hashed key")
            }
        }
    }

    /// The key whose secret `token` is, whatever its state (revoked, disabled, expired, either environment): what a
    /// report of a leaked token asks. Generated tokens only, checked offline first (shape, checksum, a configured
    /// prefix), then matched against the key's secret, or the one a rotation replaced while its grace runs.
    /// Charges no limit and counts no statistic. `None` when it is none of this store's keys.
    ///
    /// # Errors
    /// Store failures.
    pub async fn key_of_token(&self, token: &str) -> Result<Option<Arc<KeyRecord>>> {
        let Ok(parsed) = token::parse(token) else {
            return Ok(None);
        };
        if !self.config.prefixes.iter().any(|p| p == parsed.prefix) {
            return Ok(None);
        }
        let Some(record) = self.store.get(parsed.id).await? else {
            return Ok(None);
        };
        if record.lookup != KeyLookup::Id {
            return Ok(None);
        }
        let matched = self.hasher.verify(token.as_bytes(), &record.hash)?
            || self.matches_previous(token, &record, self.clock.now_micros())?;
        Ok(matched.then_some(record))
    }

    /// Revokes a key and the keys it created (`me/keys`), and drops their cached verifications.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown id; store failures.
    pub async fn revoke(&self, id: &str) -> Result<()> {
        let owner = self.store.get(id).await?.map(|r| r.owner.clone());
        self.store.revoke(id, self.clock.now()).await?;
        self.cache.invalidate(id);
        // The keys it created went with it (always its owner's): their cached verifications go too.
        // The revocation is stored: a failure to read them here must not report it failed (the change feed and
        // the cache's TTL still catch up).
        if let Some(owner) = owner {
            match self.store.list(&KeyFilter::new().owner(owner)).await {
                Ok(keys) => keys
                    .iter()
                    .filter(|k| k.created_by.as_deref() == Some(id))
                    .for_each(|k| self.cache.invalidate(&k.id)),
                Err(e) => tracing::warn!(key_id = %id, error = %e,
                    "revoked, but the keys it created could not be read to drop their cached verifications"),
            }
        }
        Ok(())
    }

    /// Revokes every key of `org` and drops their cached verifications; returns the ids revoked.
    ///
    /// # Errors
    /// Store failures.
    pub async fn revoke_org(&self, org: &str) -> Result<Vec<String>> {
        let ids = self.store.revoke_org(org, self.clock.now()).await?;
        for id in &ids {
            self.cache.invalidate(id);
        }
        Ok(ids)
    }

    /// Disables a key and drops its cached verifications.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown id; store failures.
    pub async fn disable(&self, id: &str) -> Result<()> {
        self.store.set_disabled(id, true).await?;
        self.cache.invalidate(id);
        Ok(())
    }

    /// Changes a key's fields ([`KeyStore::update`]) and drops its cached verifications, so new scopes, networks
    /// or an expiry hold from the next request.
    ///
    /// # Errors
    /// As [`KeyStore::update`].
    pub async fn update(&self, id: &str, patch: &crate::keys::KeyPatch) -> Result<Arc<KeyRecord>> {
        let changed = self.store.update(id, patch).await?;
        self.cache.invalidate(id);
        Ok(changed)
    }

    /// Rotates a key through `issuer` ([`KeyIssuer::rotate`](crate::keys::KeyIssuer::rotate)) and drops its
    /// cached verifications.
    ///
    /// # Errors
    /// As [`KeyIssuer::rotate`](crate::keys::KeyIssuer::rotate).
    pub async fn rotate(
        &self,
        issuer: &crate::keys::KeyIssuer,
        id: &str,
        grace: Duration,
    ) -> Result<crate::keys::RotatedKey> {
        let rotated = issuer.rotate(id, grace).await?;
        self.cache.invalidate(id);
        Ok(rotated)
    }

    /// Enables a disabled key.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown id; store failures.
    pub async fn enable(&self, id: &str) -> Result<()> {
        self.store.set_disabled(id, false).await
    }
}
