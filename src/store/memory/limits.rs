//! [`LimitStore`] and [`RateLimiter`] in memory: limits in a map per scope kind, bucket states in
//! [`Buckets`](crate::limits::buckets::Buckets).

use std::collections::HashMap;
use std::sync::RwLock;

use async_trait::async_trait;

use crate::error::Result;
use crate::limits::{
    BucketStore, Charge, Decision, LimitScope, LimitStore, Limits, RateLimiter, gcra,
};
use crate::store::memory::MemoryStore;

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
}

#[async_trait]
impl RateLimiter for MemoryStore {
    async fn check(&self, charges: &[Charge], now: i64) -> Result<Decision> {
        Ok(self.buckets.check(charges, now))
    }

    fn check_now(&self, charges: &[Charge], now: i64) -> Option<Result<Decision>> {
        Some(Ok(self.buckets.check(charges, now)))
    }

    async fn charge(&self, charges: &[Charge], now: i64) -> Result<()> {
        self.buckets.apply(charges, now, gcra::force);
        Ok(())
    }

    async fn refund(&self, charges: &[Charge], now: i64) -> Result<()> {
        self.buckets.apply(charges, now, gcra::refund);
        Ok(())
    }
}

#[async_trait]
impl BucketStore for MemoryStore {
    async fn bucket_states(&self, now: i64) -> Result<Vec<(String, i64)>> {
        Ok(self.buckets.live(now))
    }

    async fn save_bucket_states(&self, states: &[(String, i64)]) -> Result<()> {
        self.buckets.overwrite(states);
        Ok(())
    }
}

/// The limit tables behind their lock (a field of [`MemoryStore`]).
pub(crate) type LimitLock = RwLock<LimitTables>;
