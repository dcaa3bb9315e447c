//! [`LocalLimiter`]: one instance's rate limits in its own memory, so a check costs no store round trip
//! (DESIGN §14), written to a [`BucketStore`] in batches so that a restart keeps them.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keymeter::limits::{Charge, LocalLimiter, Quota, RateLimiter};
//! use keymeter::store::MemoryStore;
//!
//! let store = Arc::new(MemoryStore::new());
//! let limiter = LocalLimiter::open(store.clone(), 0).await?;
//! let charge = [Charge { bucket: "key:abc:requests:1/min".into(), quota: "1/min".parse::<Quota>()?, cost: 1 }];
//! assert!(limiter.check(&charge, 0).await?.allowed);
//! assert_eq!(limiter.flush().await?, 1); // one changed bucket written
//!
//! // A restart reads the states back: the minute's one request is still spent.
//! let restarted = LocalLimiter::open(store, 0).await?;
//! assert!(!restarted.check(&charge, 1_000_000).await?.allowed);
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;
use crate::limits::buckets::Buckets;
use crate::limits::{BucketStore, Charge, Decision, RateLimiter, gcra};

/// Rate-limit buckets in this process's memory, exact for one instance, their changes written to a
/// [`BucketStore`] by [`LocalLimiter::flush`] (every second with [`LocalLimiter::spawn_flusher`], and at close).
/// Several instances sharing limits need a shared limiter instead (Redis, or the store's own per check).
#[derive(Debug)]
pub struct LocalLimiter {
    buckets: Buckets,
    store: Arc<dyn BucketStore>,
    // One flush at a time, so an older batch never lands after a newer one.
    flushing: tokio::sync::Mutex<()>,
}

impl LocalLimiter {
    /// A limiter starting from the states `store` keeps that are still live at `now` (microseconds since the
    /// epoch).
    ///
    /// # Errors
    /// The store's failure to read them.
    pub async fn open(store: Arc<dyn BucketStore>, now: i64) -> Result<Self> {
        let buckets = Buckets::default();
        buckets.restore(store.bucket_states(now).await?);
        Ok(LocalLimiter {
            buckets,
            store,
            flushing: tokio::sync::Mutex::new(()),
        })
    }

    /// Writes the states changed since the last flush in one store call; returns how many. A failed write
    /// keeps them for the next flush.
    ///
    /// # Errors
    /// The store's failure to write them.
    pub async fn flush(&self) -> Result<usize> {
        let _one = self.flushing.lock().await;
        let changed = self.buckets.take_changed();
        if changed.is_empty() {
            return Ok(0);
        }
        match self.store.save_bucket_states(&changed).await {
            Ok(()) => Ok(changed.len()),
            Err(e) => {
                self.buckets.mark_changed(&changed);
                Err(e)
            }
        }
    }

    /// Flushes every `every` in the background while the limiter lives; a failure is logged (and the states
    /// are written by a later flush).
    pub fn spawn_flusher(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        crate::streak::spawn_every(
            Arc::downgrade(self),
            every,
            "could not write rate-limit states to the store; they are kept and written when it answers \
             (a restart before then forgets them)",
            "rate-limit states are written to the store again",
            |limiter: Arc<Self>| async move { limiter.flush().await },
        )
    }
}

#[async_trait]
impl RateLimiter for LocalLimiter {
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

    async fn flush(&self) -> Result<()> {
        LocalLimiter::flush(self).await.map(|_| ())
    }
}
