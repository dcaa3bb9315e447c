//! [`SlotStore`] in memory: per scope, each live slot's expiry in microseconds, judged by the caller's clock.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::limits::slots::first_full;
use crate::limits::{LimitScope, Slot, SlotRefusal, SlotStore};
use crate::store::memory::MemoryStore;

/// Scope → slot id → expiry.
pub(crate) type SlotTable = HashMap<LimitScope, HashMap<String, i64>>;

impl MemoryStore {
    fn slot_table(&self) -> std::sync::MutexGuard<'_, SlotTable> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[async_trait]
impl SlotStore for MemoryStore {
    async fn acquire(
        &self,
        slot: &Slot,
        now: DateTime<Utc>,
        ttl: chrono::Duration,
    ) -> Result<Option<SlotRefusal>> {
        let (now, until) = (now.timestamp_micros(), (now + ttl).timestamp_micros());
        let mut table = self.slot_table();
        let counts: Vec<u64> = slot
            .claims
            .iter()
            .map(|c| {
                let live = table.entry(c.scope.clone()).or_default();
                live.retain(|_, expires| *expires > now);
                live.len() as u64
            })
            .collect();
        if let Some(refused) = first_full(&slot.claims, &counts) {
            return Ok(Some(refused));
        }
        for claim in &slot.claims {
            table
                .entry(claim.scope.clone())
                .or_default()
                .insert(slot.id.clone(), until);
        }
        Ok(None)
    }

    async fn renew(&self, slots: &[Slot], now: DateTime<Utc>, ttl: chrono::Duration) -> Result<()> {
        let until = (now + ttl).timestamp_micros();
        let mut table = self.slot_table();
        for slot in slots {
            for claim in &slot.claims {
                if let Some(expires) = table
                    .get_mut(&claim.scope)
                    .and_then(|live| live.get_mut(&slot.id))
                {
                    *expires = until;
                }
            }
        }
        Ok(())
    }

    async fn release(&self, slot: &Slot) -> Result<()> {
        let mut table = self.slot_table();
        for claim in &slot.claims {
            if let Some(live) = table.get_mut(&claim.scope) {
                live.remove(&slot.id);
                if live.is_empty() {
                    table.remove(&claim.scope);
                }
            }
        }
        Ok(())
    }

    async fn in_flight(&self, scopes: &[LimitScope], now: DateTime<Utc>) -> Result<Vec<u64>> {
        let now = now.timestamp_micros();
        let table = self.slot_table();
        Ok(scopes
            .iter()
            .map(|s| {
                table
                    .get(s)
                    .map_or(0, |live| live.values().filter(|e| **e > now).count() as u64)
            })
            .collect())
    }
}
