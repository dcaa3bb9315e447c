//! [`LimitStore`] and [`RateLimiter`] in memory: limits in a map per scope kind, bucket states in shards so that
//! checks of different keys do not wait for one lock.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, MutexGuard, RwLock};

use async_trait::async_trait;

use crate::error::Result;
use crate::limits::{Charge, Decision, LimitScope, LimitStore, Limits, RateLimiter, gcra};
use crate::store::memory::MemoryStore;

const SHARDS: usize = 16;
// Past this many states a shard drops the full buckets (their TAT has passed: the same as no state).
const PRUNE_AT: usize = 4096;

/// Limits per scope kind, so a lookup by `&str` needs no allocation.
#[derive(Debug, Default)]
pub(crate) struct LimitTables {
    keys: HashMap<String, Limits>,
    owners: HashMap<String, Limits>,
    orgs: HashMap<String, Limits>,
}

impl LimitTables {
    fn table(&self, scope: &LimitScope) -> &HashMap<String, Limits> {
        match scope {
            LimitScope::Key(_) => &self.keys,
            LimitScope::Owner(_) => &self.owners,
            LimitScope::Org(_) => &self.orgs,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.keys.len() + self.owners.len() + self.orgs.len()
    }
}

/// Bucket names are built by keymeter from stored scopes, never taken from a request: a fast hasher is safe.
type Shard = HashMap<String, i64, foldhash::fast::RandomState>;
/// The locked shards of one check, in shard order.
type Locked<'a> = Vec<(usize, MutexGuard<'a, Shard>)>;

#[derive(Debug, Default)]
pub(crate) struct Buckets {
    shards: [Mutex<Shard>; SHARDS],
}

impl Buckets {
    fn shard_of(bucket: &str) -> usize {
        // A fixed hasher: the same bucket always lands in the same shard.
        (foldhash::fast::FixedState::with_seed(0x6b6d).hash_one(bucket) as usize) % SHARDS
    }

    /// Locks the shard of one bucket.
    fn one(&self, bucket: &str) -> MutexGuard<'_, Shard> {
        self.shards[Self::shard_of(bucket)]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Locks every shard the charges touch, in shard order (so two checks never wait for each other in a
    /// cycle), and returns the guards with each charge's shard.
    fn lock(&self, charges: &[Charge]) -> (Locked<'_>, Vec<usize>) {
        let of: Vec<usize> = charges.iter().map(|c| Self::shard_of(&c.bucket)).collect();
        let mut order = of.clone();
        order.sort_unstable();
        order.dedup();
        // A panic while holding a shard cannot leave a half-made decision: states are written after deciding.
        let guards = order
            .into_iter()
            .map(|i| (i, self.shards[i].lock().unwrap_or_else(|e| e.into_inner())))
            .collect();
        (guards, of)
    }
}

fn guard_for<'a>(guards: &'a mut Locked<'_>, shard: usize) -> &'a mut Shard {
    let i = guards.partition_point(|(s, _)| *s < shard);
    &mut guards[i].1
}

fn store(map: &mut Shard, bucket: &str, tat: i64, now: i64) {
    match map.get_mut(bucket) {
        Some(slot) => *slot = tat,
        None => {
            if map.len() >= PRUNE_AT {
                map.retain(|_, t| *t > now);
            }
            map.insert(bucket.to_owned(), tat);
        }
    }
}

#[async_trait]
impl LimitStore for MemoryStore {
    async fn set_limits(&self, scope: &LimitScope, limits: &Limits) -> Result<()> {
        scope.validate()?;
        limits.validate()?;
        let mut tables = self.limits.write().unwrap_or_else(|e| e.into_inner());
        let table = match scope {
            LimitScope::Key(_) => &mut tables.keys,
            LimitScope::Owner(_) => &mut tables.owners,
            LimitScope::Org(_) => &mut tables.orgs,
        };
        if limits.is_empty() {
            table.remove(scope.id());
        } else {
            table.insert(scope.id().to_owned(), limits.clone());
        }
        Ok(())
    }

    async fn limits(&self, scopes: &[LimitScope]) -> Result<Vec<Limits>> {
        Ok(self.limits_in_memory(scopes))
    }

    fn limits_now(&self, scopes: &[LimitScope]) -> Option<Vec<Limits>> {
        Some(self.limits_in_memory(scopes))
    }
}

impl MemoryStore {
    fn limits_in_memory(&self, scopes: &[LimitScope]) -> Vec<Limits> {
        let tables = self.limits.read().unwrap_or_else(|e| e.into_inner());
        scopes
            .iter()
            .map(|s| tables.table(s).get(s.id()).cloned().unwrap_or_default())
            .collect()
    }

    fn check_in_memory(&self, charges: &[Charge], now: i64) -> Decision {
        if charges.is_empty() {
            return Decision::UNLIMITED;
        }
        // The common case, one limit (a key's own): one shard, no allocation.
        if let [c] = charges {
            let mut map = self.buckets.one(&c.bucket);
            let (allowed, tat, status) =
                gcra::decide(map.get(&c.bucket).copied(), now, &c.quota, c.cost);
            if allowed {
                store(&mut map, &c.bucket, tat, now);
            }
            return Decision {
                allowed,
                tightest: Some(status),
            };
        }
        let (mut guards, of) = self.buckets.lock(charges);
        let states: Vec<Option<i64>> = charges
            .iter()
            .zip(&of)
            .map(|(c, &shard)| guard_for(&mut guards, shard).get(&c.bucket).copied())
            .collect();
        let (decision, tats) = gcra::decide_all(&states, now, charges);
        for ((c, &shard), tat) in charges.iter().zip(&of).zip(tats) {
            store(guard_for(&mut guards, shard), &c.bucket, tat, now);
        }
        decision
    }
}

#[async_trait]
impl RateLimiter for MemoryStore {
    async fn check(&self, charges: &[Charge], now: i64) -> Result<Decision> {
        Ok(self.check_in_memory(charges, now))
    }

    fn check_now(&self, charges: &[Charge], now: i64) -> Option<Result<Decision>> {
        Some(Ok(self.check_in_memory(charges, now)))
    }

    async fn charge(&self, charges: &[Charge], now: i64) -> Result<()> {
        self.apply(charges, now, gcra::force);
        Ok(())
    }

    async fn refund(&self, charges: &[Charge], now: i64) -> Result<()> {
        self.apply(charges, now, gcra::refund);
        Ok(())
    }
}

/// A change to a bucket whatever it holds: [`gcra::force`] or [`gcra::refund`].
type Rule = fn(Option<i64>, i64, &crate::limits::Quota, u64) -> i64;

impl MemoryStore {
    fn apply(&self, charges: &[Charge], now: i64, rule: Rule) {
        let (mut guards, of) = self.buckets.lock(charges);
        for (c, &shard) in charges.iter().zip(&of) {
            let map = guard_for(&mut guards, shard);
            let tat = rule(map.get(&c.bucket).copied(), now, &c.quota, c.cost);
            store(map, &c.bucket, tat, now);
        }
    }
}

/// The limit tables behind their lock (a field of [`MemoryStore`]).
pub(crate) type LimitLock = RwLock<LimitTables>;
