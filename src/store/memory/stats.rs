//! [`StatsStore`] in memory.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::NaiveDate;

use crate::error::Result;
use crate::keys::KeyStore;
use crate::stats::{Counts, StatsDelta, StatsStore};
use crate::store::memory::MemoryStore;

/// Counts by key, then day.
pub(crate) type StatsTable = BTreeMap<String, BTreeMap<NaiveDate, Counts>>;

#[async_trait]
impl StatsStore for MemoryStore {
    async fn add_stats(&self, deltas: &[StatsDelta]) -> Result<()> {
        {
            let mut table = self.stats.lock().unwrap_or_else(|e| e.into_inner());
            for d in deltas {
                let counts = table
                    .entry(d.key_id.clone())
                    .or_default()
                    .entry(d.day)
                    .or_insert([0; crate::keys::VerdictCode::ALL.len()]);
                for (slot, n) in counts.iter_mut().zip(d.counts) {
                    *slot += n;
                }
            }
        }
        for d in deltas {
            if let Some(at) = d.last_used_at {
                self.record_use(&d.key_id, at).await?;
            }
        }
        Ok(())
    }

    async fn key_stats(&self, key_id: &str, since: NaiveDate) -> Result<Vec<(NaiveDate, Counts)>> {
        let table = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        Ok(table
            .get(key_id)
            .map(|days| days.range(since..).map(|(d, c)| (*d, *c)).collect())
            .unwrap_or_default())
    }
}
