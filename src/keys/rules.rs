//! A key's rules as its scopes' limits give them ([`KeyRules`]), and where the verifier keeps them: read with
//! the rate limits, compiled once, trusted for a second.

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::Result;
use crate::keys::models::{self, PackedRules};
use crate::keys::record::KeyRecord;
use crate::limits::{Charge, Decision, LimitScope, LimitStore, Limits, RateLimiter, SlotClaim};

/// What a key is held to beyond its record, from its own, its owner's and its organisation's limits: the request
/// charges of a verify, each scope's model allowlist and each scope's concurrency limit. A valid verdict carries
/// them ([`crate::keys::Verdict::rules`]) when the verifier has limits, so the checks after a verify need no
/// second lookup.
#[derive(Debug, Default)]
pub struct KeyRules {
    pub(crate) charges: Arc<[Charge]>,
    /// The token limits alone (cost 0: [`Verifier::charge_tokens`](crate::keys::Verifier::charge_tokens) sets it).
    pub(crate) tokens: Arc<[Charge]>,
    /// The scopes with an allowlist, in the order of `models`' lists.
    model_scopes: Vec<LimitScope>,
    models: PackedRules,
    /// Only the scopes with a concurrency limit.
    parallel: Vec<SlotClaim>,
}

impl KeyRules {
    /// Whether `key` (whose rules these are) may call `model` through `provider`: the record's own allowlist
    /// and each scope's must permit it (an empty list permits everything). No store call.
    ///
    /// # Errors
    /// [`crate::Error::ModelNotAllowed`] naming the scope that refused.
    pub fn check_model(&self, key: &KeyRecord, provider: &str, model: &str) -> Result<()> {
        let refused = |scope: String| {
            Err(crate::Error::ModelNotAllowed {
                model: model.chars().take(128).collect(),
                provider: provider.to_owned(),
                scope,
            })
        };
        if !models::permits(&key.allowed_models, provider, model) {
            return refused(LimitScope::Key(key.id.clone()).to_string());
        }
        match self.models.refusing(provider, model) {
            Some(i) => refused(
                self.model_scopes
                    .get(i)
                    .map_or_else(String::new, ToString::to_string),
            ),
            None => Ok(()),
        }
    }

    /// The concurrency limits a request by the key claims a slot under (empty: none applies).
    pub fn slot_claims(&self) -> &[SlotClaim] {
        &self.parallel
    }
}

/// How long a key's compiled rules are trusted: one second.
const RULES_TTL_MICROS: i64 = 1_000_000;
/// Past this many keys the compiled rules are dropped and read again.
const RULES_CACHE_CAP: usize = 100_000;

/// Key id → (trusted until, in microseconds; the key's rules). Ids are keymeter's own (looked up only after the
/// key's secret was proven), so a fast hasher is safe on this hot path.
type CompiledRules = HashMap<String, (i64, Arc<KeyRules>), foldhash::fast::RandomState>;

/// The rate limits a verifier charges: where the limits are kept, where the buckets are, and each key's rules as
/// last read (trusted for a second, so a change made anywhere holds within a second and a hot key does not
/// rebuild its bucket names on every verify).
#[derive(Debug)]
pub(crate) struct LimitGate {
    pub(crate) rules: Arc<dyn LimitStore>,
    pub(crate) limiter: Arc<dyn RateLimiter>,
    compiled: std::sync::RwLock<CompiledRules>,
}

impl LimitGate {
    pub(crate) fn new(rules: Arc<dyn LimitStore>, limiter: Arc<dyn RateLimiter>) -> Self {
        LimitGate {
            rules,
            limiter,
            compiled: std::sync::RwLock::default(),
        }
    }

    fn cached(&self, id: &str, now: i64) -> Option<Arc<KeyRules>> {
        let map = self.compiled.read().unwrap_or_else(|e| e.into_inner());
        map.get(id)
            .filter(|(until, _)| now < *until)
            .map(|(_, c)| c.clone())
    }

    fn remember(&self, id: &str, now: i64, compiled: Arc<KeyRules>) {
        let mut map = self.compiled.write().unwrap_or_else(|e| e.into_inner());
        if map.len() >= RULES_CACHE_CAP {
            map.clear();
        }
        map.insert(id.to_owned(), (now + RULES_TTL_MICROS, compiled));
    }

    /// The key's rules from `limits` (one per scope of `scopes`), remembered.
    fn compile(
        &self,
        record: &KeyRecord,
        scopes: &[LimitScope],
        mut limits: Vec<Limits>,
        now: i64,
    ) -> Arc<KeyRules> {
        if let Some(own) = limits.first_mut() {
            *own = std::mem::take(own).with_record_limit(record);
        }
        let with_models = || {
            scopes
                .iter()
                .zip(&limits)
                .filter(|(_, l)| !l.models.is_empty())
        };
        let compiled = Arc::new(KeyRules {
            charges: crate::limits::charges(scopes, &limits, None, 0).into(),
            tokens: crate::limits::charges(
                scopes,
                &limits,
                Some(crate::limits::LimitKind::Tokens),
                0,
            )
            .into(),
            parallel: scopes
                .iter()
                .zip(&limits)
                .filter_map(|(s, l)| {
                    l.max_parallel.map(|max| SlotClaim {
                        scope: s.clone(),
                        max,
                    })
                })
                .collect(),
            model_scopes: with_models().map(|(s, _)| s.clone()).collect(),
            models: PackedRules::pack(with_models().map(|(_, l)| l.models.as_slice())),
        });
        self.remember(&record.id, now, compiled.clone());
        compiled
    }

    /// The key's rules when they come without waiting: cached, or compiled from limits held in memory.
    pub(crate) fn compiled_now(&self, record: &KeyRecord, now: i64) -> Option<Arc<KeyRules>> {
        if let Some(compiled) = self.cached(&record.id, now) {
            return Some(compiled);
        }
        let scopes = LimitScope::of(Some(&record.id), &record.owner, record.org.as_deref());
        let limits = self.rules.limits_now(&scopes)?;
        Some(self.compile(record, &scopes, limits, now))
    }

    pub(crate) async fn compiled(&self, record: &KeyRecord, now: i64) -> Result<Arc<KeyRules>> {
        if let Some(compiled) = self.compiled_now(record, now) {
            return Ok(compiled);
        }
        let scopes = LimitScope::of(Some(&record.id), &record.owner, record.org.as_deref());
        let limits = self.rules.limits(&scopes).await?;
        Ok(self.compile(record, &scopes, limits, now))
    }

    /// The check, when everything it needs answers without waiting (rules cached or in memory, an in-memory
    /// limiter); `None` means "take the async path".
    pub(crate) fn check_now(
        &self,
        record: &KeyRecord,
        now: i64,
    ) -> Option<(Arc<KeyRules>, Result<Decision>)> {
        let compiled = self.compiled_now(record, now)?;
        if compiled.charges.is_empty() {
            return Some((compiled, Ok(Decision::UNLIMITED)));
        }
        let decided = self.limiter.check_now(&compiled.charges, now)?;
        Some((compiled, decided))
    }

    pub(crate) async fn check(
        &self,
        record: &KeyRecord,
        now: i64,
    ) -> (Option<Arc<KeyRules>>, Result<Decision>) {
        let compiled = match self.compiled(record, now).await {
            Ok(compiled) => compiled,
            Err(e) => return (None, Err(e)),
        };
        if compiled.charges.is_empty() {
            return (Some(compiled), Ok(Decision::UNLIMITED));
        }
        let decided = self.limiter.check(&compiled.charges, now).await;
        (Some(compiled), decided)
    }
}
