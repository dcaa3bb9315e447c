//! [`UnusualWatch`]: alerts `key.unusual` when a key's statistics turn unusual (the rule of
//! [`KeyStats::summary`]), once per key and day.
//!
//! After each flush of a [`crate::stats::StatsRecorder`], the keys flushed for today that could meet the rule
//! (20 or more verifications counted today by this process) are summarised from the store, at most once a minute
//! each; a key found unusual is alerted through the outbox (the alert's id is the key's and the day's, so other
//! instances alerting it too leave one).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate, Utc};

use super::{KeyStats, StatsDelta, StatsStore};
use crate::alerts::{Alert, Outbox};
use crate::error::Result;
use crate::keys::KeyStore;

/// Verifications of a key counted today by this process before it is summarised.
const AT_LEAST: u64 = 20;
/// How often one key is summarised at most.
const EVERY_SECONDS: i64 = 60;

/// Today's count per key in this process, when it was last summarised, and whether it was alerted.
#[derive(Debug, Default)]
struct Seen {
    day: Option<NaiveDate>,
    keys: HashMap<String, (u64, Option<DateTime<Utc>>, bool)>,
}

/// Watches flushed statistics for keys turning unusual.
pub struct UnusualWatch {
    outbox: Arc<dyn Outbox>,
    keys: Arc<dyn KeyStore>,
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for UnusualWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnusualWatch").finish_non_exhaustive()
    }
}

impl UnusualWatch {
    /// A watch alerting through `outbox`, naming each key's owner from `keys`.
    pub fn new(outbox: Arc<dyn Outbox>, keys: Arc<dyn KeyStore>) -> Self {
        UnusualWatch {
            outbox,
            keys,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// Looks at what a flush wrote at `now`; returns how many keys were alerted.
    ///
    /// # Errors
    /// Store failures (the next flush looks again).
    pub async fn after_flush(
        &self,
        store: &dyn StatsStore,
        deltas: &[StatsDelta],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let today = now.date_naive();
        let due: Vec<String> = {
            let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if seen.day != Some(today) {
                seen.day = Some(today);
                seen.keys.clear();
            }
            let mut due = Vec::new();
            for d in deltas.iter().filter(|d| d.day == today) {
                let entry = seen.keys.entry(d.key_id.clone()).or_default();
                entry.0 += d.counts.iter().sum::<u64>();
                let recent = entry
                    .1
                    .is_some_and(|at| (now - at).num_seconds() < EVERY_SECONDS);
                if entry.0 >= AT_LEAST && !entry.2 && !recent {
                    entry.1 = Some(now);
                    due.push(d.key_id.clone());
                }
            }
            due
        };
        let mut alerted = 0;
        for key_id in due {
            let since = today
                .checked_sub_days(chrono::Days::new(15))
                .unwrap_or(today);
            let days = store.key_stats(&key_id, since).await?;
            let stats = KeyStats::summary(&key_id, &days, today, 15, None);
            let Some(reason) = stats.unusual_reason else {
                continue;
            };
            let owner = self
                .keys
                .get(&key_id)
                .await?
                .map(|r| r.owner.clone())
                .unwrap_or_default();
            let day = today.to_string();
            let alert = Alert::key_unusual(&key_id, &owner, &day, &reason, now);
            self.outbox.push(std::slice::from_ref(&alert)).await?;
            tracing::warn!(key_id = %key_id, owner = %owner, reason = %reason, "a key's use turned unusual");
            if let Some(entry) = self
                .seen
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .keys
                .get_mut(&key_id)
            {
                entry.2 = true;
            }
            alerted += 1;
        }
        Ok(alerted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::VerdictCode;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn a_key_turning_unusual_is_alerted_once_a_day() {
        let store = Arc::new(MemoryStore::new());
        let watch = UnusualWatch::new(store.clone(), store.clone());
        let now: DateTime<Utc> = "2026-12-03T12:00:00Z".parse().unwrap();
        let delta = |valid: u64, rejected: u64| {
            let mut counts = [0u64; VerdictCode::ALL.len()];
            counts[VerdictCode::Valid.index()] = valid;
            counts[VerdictCode::NotFound.index()] = rejected;
            StatsDelta {
                key_id: "k-unusual".into(),
                day: now.date_naive(),
                counts,
                last_used_at: None,
            }
        };
        // 10 valid: not enough to look.
        let d = [delta(10, 0)];
        store.add_stats(&d).await.unwrap();
        assert_eq!(watch.after_flush(&*store, &d, now).await.unwrap(), 0);
        // 30 rejected of 40 today: unusual.
        let d = [delta(0, 30)];
        store.add_stats(&d).await.unwrap();
        assert_eq!(watch.after_flush(&*store, &d, now).await.unwrap(), 1);
        // More of the same: alerted already today.
        store.add_stats(&d).await.unwrap();
        let later = now + chrono::Duration::minutes(5);
        assert_eq!(watch.after_flush(&*store, &d, later).await.unwrap(), 0);
        let due = store
            .claim_deliveries(later, chrono::Duration::seconds(5), 10)
            .await
            .unwrap();
        assert!(due.is_empty(), "no endpoint: nothing to deliver");
        // The outbox holds one alert: a second push of the same id adds nothing.
        let again = Alert::key_unusual("k-unusual", "", "2026-12-03", "x", later);
        assert_eq!(store.push(&[again]).await.unwrap(), 0);
    }
}
