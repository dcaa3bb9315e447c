//! The [`StatsRecorder`]: counts in memory on the verify path, writes in batches.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, NaiveDate, Utc};

use crate::error::Result;
use crate::keys::VerdictCode;
use crate::stats::{Counts, StatsDelta, StatsStore};

const SHARDS: usize = 8;
const DAY_MICROS: i64 = 86_400_000_000;

/// One key's counts not yet written: its current day, and any earlier day a flush has not taken yet.
#[derive(Debug, Clone, Default)]
struct Pending {
    day: i64,
    counts: Counts,
    last_used: Option<i64>,
    earlier: Vec<(i64, Counts, Option<i64>)>,
}

impl Pending {
    fn count(&mut self, day: i64, code: VerdictCode, used: Option<i64>) {
        if self.day != day {
            if self.counts.iter().any(|&c| c > 0) {
                self.earlier.push((self.day, self.counts, self.last_used));
            }
            self.day = day;
            self.counts = [0; VerdictCode::ALL.len()];
        }
        self.counts[code.index()] += 1;
        self.last_used = self.last_used.max(used);
    }
}

/// Counts verifications per key and UTC day in memory (a lock of one of eight shards and an increment per
/// verify) and writes them to a [`StatsStore`] when [`flush`](StatsRecorder::flush)ed: one delta per key and day,
/// never a write per verify. A failed flush puts its counts back for the next one. Dropping the recorder inside a
/// tokio runtime flushes what is left in a background task; call [`close`](StatsRecorder::close) to wait for it.
#[derive(Debug)]
pub struct StatsRecorder {
    store: Arc<dyn StatsStore>,
    shards: [Mutex<PendingMap>; SHARDS],
    watch: Option<crate::stats::UnusualWatch>,
}

/// Key ids are made by keymeter (not chosen by callers), so a fast hasher is safe here; this is the verify path.
type PendingMap = HashMap<String, Pending, foldhash::fast::RandomState>;

fn day_of(micros: i64) -> i64 {
    micros.div_euclid(DAY_MICROS)
}

fn date(day: i64) -> Option<NaiveDate> {
    DateTime::<Utc>::from_timestamp(day.checked_mul(86_400)?, 0).map(|t| t.date_naive())
}

fn time(micros: i64) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_micros(micros)
}

impl StatsRecorder {
    /// A recorder writing to `store`.
    pub fn new(store: Arc<dyn StatsStore>) -> Self {
        StatsRecorder {
            store,
            shards: Default::default(),
            watch: None,
        }
    }

    /// After each flush, alerts the keys whose statistics turned unusual ([`crate::stats::UnusualWatch`]).
    #[must_use]
    pub fn with_watch(mut self, watch: crate::stats::UnusualWatch) -> Self {
        self.watch = Some(watch);
        self
    }

    fn shard(&self, key_id: &str) -> MutexGuard<'_, PendingMap> {
        // Key ids are random: their last byte spreads keys over the shards without hashing.
        let i = key_id
            .as_bytes()
            .last()
            .map_or(0, |&b| usize::from(b) % SHARDS);
        // Counts are plain numbers: a panic elsewhere cannot leave one half-written.
        self.shards[i].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one verification of `key_id` with `code` at `at_micros` (microseconds since the epoch, UTC).
    pub fn record(&self, key_id: &str, code: VerdictCode, at_micros: i64) {
        let day = day_of(at_micros);
        let used = (code == VerdictCode::Valid).then_some(at_micros);
        let mut shard = self.shard(key_id);
        if let Some(pending) = shard.get_mut(key_id) {
            pending.count(day, code, used);
            return;
        }
        // Only a key's first verification since the last flush allocates its id.
        let mut pending = Pending {
            day,
            ..Pending::default()
        };
        pending.count(day, code, used);
        shard.insert(key_id.to_owned(), pending);
    }

    fn take(&self) -> Vec<StatsDelta> {
        let mut deltas = Vec::new();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(|e| e.into_inner()));
            for (key_id, p) in taken {
                let days =
                    p.earlier
                        .into_iter()
                        .chain(std::iter::once((p.day, p.counts, p.last_used)));
                for (day, counts, last_used) in days {
                    if let Some(day) = date(day)
                        && counts.iter().any(|&c| c > 0)
                    {
                        deltas.push(StatsDelta {
                            key_id: key_id.clone(),
                            day,
                            counts,
                            last_used_at: last_used.and_then(time),
                        });
                    }
                }
            }
        }
        deltas
    }

    fn put_back(&self, deltas: Vec<StatsDelta>) {
        for d in deltas {
            let day = d
                .day
                .signed_duration_since(DateTime::UNIX_EPOCH.date_naive())
                .num_days();
            let mut shard = self.shard(&d.key_id);
            let p = shard.entry(d.key_id.clone()).or_insert_with(|| Pending {
                day,
                ..Pending::default()
            });
            let used = d.last_used_at.map(|t| t.timestamp_micros());
            if p.day == day {
                for (slot, n) in p.counts.iter_mut().zip(d.counts) {
                    *slot += n;
                }
                p.last_used = p.last_used.max(used);
            } else {
                p.earlier.push((day, d.counts, used));
            }
        }
    }

    /// How many keys have counts not yet written.
    pub fn pending_keys(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }

    /// Writes every count gathered so far in one batch.
    ///
    /// # Errors
    /// The store's failure; the counts are kept for the next flush.
    pub async fn flush(&self) -> Result<()> {
        let deltas = self.take();
        if deltas.is_empty() {
            return Ok(());
        }
        if let Err(e) = self.store.add_stats(&deltas).await {
            self.put_back(deltas);
            return Err(e);
        }
        if let Some(watch) = &self.watch
            && let Err(e) = watch.after_flush(&*self.store, &deltas, Utc::now()).await
        {
            tracing::warn!(error = %e, "could not check keys for unusual use; the next flush looks again");
        }
        Ok(())
    }

    /// Flushes what is left (at shutdown).
    ///
    /// # Errors
    /// As [`StatsRecorder::flush`].
    pub async fn close(&self) -> Result<()> {
        self.flush().await
    }

    /// Flushes every `interval` in a background task until the recorder is dropped elsewhere (the task holds
    /// only a weak reference). Needs a tokio runtime with its time driver.
    pub fn spawn_flusher(
        self: &Arc<Self>,
        interval: std::time::Duration,
    ) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(recorder) = weak.upgrade() else {
                    return;
                };
                if let Err(e) = recorder.flush().await {
                    tracing::warn!(error = %e, "could not write key statistics; kept for the next flush");
                }
            }
        })
    }
}

impl Drop for StatsRecorder {
    fn drop(&mut self) {
        let deltas = self.take();
        if deltas.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let store = self.store.clone();
                handle.spawn(async move {
                    if let Err(e) = store.add_stats(&deltas).await {
                        tracing::warn!(error = %e, "could not write key statistics at shutdown");
                    }
                });
            }
            Err(_) => tracing::warn!(
                keys = deltas.len(),
                "key statistics dropped outside a runtime: call StatsRecorder::close before dropping"
            ),
        }
    }
}
