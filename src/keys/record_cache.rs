//! [`CachedKeyStore`]: verified key records kept in process, so hot keys verify at in-memory speed on any backend,
//! and dropped when a [`KeyChangeFeed`] says they changed anywhere.
//!
//! Nothing served is more than a second stale: with a feed, the feed is polled before any record is served once
//! the last poll is as old as the feed's [`KeyChangeFeed::poll_interval`] (a second at most) (the verify that finds it due pays one poll; every other one reads memory); without
//! one, a record is kept for one second at most. Changes made through this cache evict at once. A poll that fails
//! or reports [`KeyChanges::Lost`] clears the cache.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::clock::{Clock, SystemClock};
use crate::error::Result;
use crate::keys::changes::{KeyChangeFeed, KeyChanges};
use crate::keys::{KeyFilter, KeyHash, KeyLookup, KeyRecord, KeyStore};

/// The longest a record may be served after a change made elsewhere, in microseconds.
const MAX_STALE_MICROS: i64 = 1_000_000;

struct Entry {
    record: Arc<KeyRecord>,
    fetched: i64,
}

#[derive(Default)]
struct Entries {
    by_id: HashMap<String, Entry, foldhash::fast::RandomState>,
    /// Imported SHA-256 keys: digest → id.
    by_digest: HashMap<String, String, foldhash::fast::RandomState>,
    /// Ids the store did not hold, with when it said so: an unknown id is answered from memory like a known
    /// one, so timing does not tell which ids exist. Creations reach the feed, which evicts these too.
    absent: HashMap<String, i64, foldhash::fast::RandomState>,
}

impl Entries {
    fn remove(&mut self, id: &str) {
        self.absent.remove(id);
        if let Some(e) = self.by_id.remove(id)
            && let KeyLookup::Digest(d) = &e.record.lookup
        {
            self.by_digest.remove(d);
        }
    }

    fn clear(&mut self) {
        self.by_id.clear();
        self.by_digest.clear();
        self.absent.clear();
    }
}

/// A [`KeyStore`] that keeps the records it reads (bounded, each for a time to live) in front of another one.
///
/// On the verify path ([`KeyStore::get_now`]) it judges freshness by the verifier's reading of the time, so a
/// test that injects a clock gives the verifier and the cache the same one.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use keymeter::keys::{CachedKeyStore, KeyStore};
///
/// // With SQLite or PostgreSQL, the feed is the database's change table, polled at most once a second.
/// let db = keymeter::store::connect("memory:").await?;
/// let feed = db.key_changes().await?;
/// let keys: Arc<dyn KeyStore> = Arc::new(CachedKeyStore::new(db, feed, 10_000));
/// assert!(keys.get("no-such-id").await?.is_none());
/// # Ok::<(), keymeter::Error>(()) }).unwrap();
/// ```
pub struct CachedKeyStore {
    inner: Arc<dyn KeyStore>,
    feed: Option<Arc<dyn KeyChangeFeed>>,
    capacity: usize,
    ttl_micros: i64,
    clock: Arc<dyn Clock>,
    entries: RwLock<Entries>,
    /// Bumped by every eviction: a read that started before one does not cache what it read.
    generation: AtomicU64,
    /// When the last successful poll started (microseconds); records are served only while it is recent.
    polled_at: AtomicI64,
    /// How long a poll stays recent: the feed's interval, at most a second.
    poll_micros: i64,
    polling: tokio::sync::Mutex<()>,
    clears: AtomicU64,
    lookups: Arc<crate::lookups::Lookups>,
}

impl std::fmt::Debug for CachedKeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedKeyStore")
            .field("inner", &self.inner)
            .field("feed", &self.feed)
            .field("capacity", &self.capacity)
            .field("ttl_micros", &self.ttl_micros)
            .finish_non_exhaustive()
    }
}

impl CachedKeyStore {
    /// At most `capacity` records of `inner` (0 keeps none), evicted by `feed`. With a feed a record lives up to
    /// a minute between changes (a safety net: the feed evicts it at once); without one, a second.
    pub fn new(
        inner: Arc<dyn KeyStore>,
        feed: Option<Arc<dyn KeyChangeFeed>>,
        capacity: usize,
    ) -> Self {
        // Never less often than once a second, whatever the feed says.
        let feed_interval = feed.as_ref().map_or(MAX_STALE_MICROS, |f| {
            i64::try_from(f.poll_interval().as_micros())
                .unwrap_or(MAX_STALE_MICROS)
                .min(MAX_STALE_MICROS)
        });
        let ttl_micros = if feed.is_some() {
            60 * MAX_STALE_MICROS
        } else {
            MAX_STALE_MICROS
        };
        CachedKeyStore {
            inner,
            feed,
            capacity,
            ttl_micros,
            clock: Arc::new(SystemClock),
            entries: RwLock::new(Entries::default()),
            generation: AtomicU64::new(0),
            polled_at: AtomicI64::new(i64::MIN),
            poll_micros: feed_interval,
            polling: tokio::sync::Mutex::new(()),
            clears: AtomicU64::new(0),
            lookups: Arc::default(),
        }
    }

    /// How many reads were answered from memory and how many from the store.
    pub fn lookups(&self) -> &Arc<crate::lookups::Lookups> {
        &self.lookups
    }

    /// Injects the clock (record ages, poll times).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Sets how long a record is kept between changes (capped at a second without a feed).
    #[must_use]
    pub fn with_ttl(mut self, ttl: std::time::Duration) -> Self {
        let micros = i64::try_from(ttl.as_micros()).unwrap_or(i64::MAX);
        self.ttl_micros = if self.feed.is_some() {
            micros
        } else {
            micros.min(MAX_STALE_MICROS)
        };
        self
    }

    /// How many records are cached now.
    pub fn len(&self) -> usize {
        self.read().by_id.len()
    }

    /// Whether no record is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How often the cache was cleared because its feed failed or lost track.
    pub fn clears(&self) -> u64 {
        self.clears.load(Ordering::Relaxed)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Entries> {
        self.entries.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Entries> {
        self.entries.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the feed must be polled before a record may be served.
    fn poll_due(&self, now: i64) -> bool {
        self.feed.is_some()
            && now.saturating_sub(self.polled_at.load(Ordering::Acquire)) >= self.poll_micros
    }

    /// What memory knows of `id`: `Some(Some(record))`, `Some(None)` for an id the store lately did not hold,
    /// `None` to ask the store.
    fn cached(&self, id: &str, now: i64) -> Option<Option<Arc<KeyRecord>>> {
        let entries = self.read();
        if let Some(e) = entries.by_id.get(id) {
            return (now - e.fetched < self.ttl_micros).then(|| Some(e.record.clone()));
        }
        let fetched = entries.absent.get(id)?;
        (now - fetched < self.ttl_micros).then_some(None)
    }

    /// Remembers that the store does not hold `id`, on the terms of [`CachedKeyStore::keep`].
    fn keep_absent(&self, id: &str, generation: u64, now: i64) {
        if self.capacity == 0 || self.poll_due(now) {
            return;
        }
        let mut entries = self.write();
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        // Bounded: a flood of made-up ids starts the set over instead of growing it.
        if entries.absent.len() >= self.capacity {
            entries.absent.clear();
        }
        entries.absent.insert(id.to_owned(), now);
    }

    fn evict(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.write().remove(id);
    }

    /// Evicts `id` and the keys it created, which a revocation of `id` revokes too.
    fn evict_with_created(&self, id: &str) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let mut entries = self.write();
        entries.by_id.remove(id);
        entries
            .by_id
            .retain(|_, e| e.record.created_by.as_deref() != Some(id));
    }

    fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.write().clear();
    }

    /// Polls the feed if it is due (one poll at a time; the others wait for it).
    async fn refresh(&self) {
        let Some(feed) = &self.feed else { return };
        // Most calls find the feed current: no lock for them.
        if !self.poll_due(self.clock.now_micros()) {
            return;
        }
        let _one = self.polling.lock().await;
        let started = self.clock.now_micros();
        if !self.poll_due(started) {
            return;
        }
        match feed.poll().await {
            Ok(KeyChanges::Keys(ids)) => {
                for id in &ids {
                    self.evict(id);
                }
                self.polled_at.store(started, Ordering::Release);
            }
            Ok(KeyChanges::Lost) => {
                self.clears.fetch_add(1, Ordering::Relaxed);
                self.clear();
                self.polled_at.store(started, Ordering::Release);
            }
            Err(e) => {
                // Nothing is served from memory until a poll succeeds: every read goes to the store.
                tracing::warn!(error = %e, "key change feed failed; key cache cleared");
                self.clears.fetch_add(1, Ordering::Relaxed);
                self.clear();
            }
        }
    }

    /// Keeps `record` if no eviction happened since `generation` was read and the feed is current.
    fn keep(&self, record: &Arc<KeyRecord>, generation: u64, now: i64) {
        if self.capacity == 0 || self.poll_due(now) {
            return;
        }
        let mut entries = self.write();
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if entries.by_id.len() >= self.capacity
            && !entries.by_id.contains_key(&record.id)
            && let Some(victim) = entries.by_id.keys().next().cloned()
        {
            entries.remove(&victim);
        }
        if let KeyLookup::Digest(d) = &record.lookup {
            entries.by_digest.insert(d.clone(), record.id.clone());
        }
        entries.by_id.insert(
            record.id.clone(),
            Entry {
                record: record.clone(),
                fetched: now,
            },
        );
    }
}

#[async_trait]
impl KeyStore for CachedKeyStore {
    async fn create(&self, record: &KeyRecord) -> Result<()> {
        let made = self.inner.create(record).await;
        // Known at once in this process, whatever the feed's pace.
        self.evict(&record.id);
        made
    }

    async fn get(&self, id: &str) -> Result<Option<Arc<KeyRecord>>> {
        self.refresh().await;
        let now = self.clock.now_micros();
        if !self.poll_due(now)
            && let Some(known) = self.cached(id, now)
        {
            self.lookups.hit();
            return Ok(known);
        }
        self.lookups.miss();
        let generation = self.generation.load(Ordering::Acquire);
        let record = self.inner.get(id).await?;
        match &record {
            Some(r) => self.keep(r, generation, now),
            None => self.keep_absent(id, generation, now),
        }
        Ok(record)
    }

    /// Judges freshness by the caller's `now_micros` (the verifier's clock: give both the same one), so a hot
    /// verify reads the clock once.
    fn get_now(&self, id: &str, now: i64) -> Option<Option<Arc<KeyRecord>>> {
        if self.poll_due(now) {
            return None;
        }
        let known = self.cached(id, now);
        if known.is_some() {
            self.lookups.hit();
        }
        known
    }

    async fn find_by_digest(&self, digest: &str) -> Result<Option<Arc<KeyRecord>>> {
        self.refresh().await;
        let now = self.clock.now_micros();
        if !self.poll_due(now) {
            let id = self.read().by_digest.get(digest).cloned();
            if let Some(record) = id.and_then(|id| self.cached(&id, now)).flatten() {
                self.lookups.hit();
                return Ok(Some(record));
            }
        }
        self.lookups.miss();
        let generation = self.generation.load(Ordering::Acquire);
        let record = self.inner.find_by_digest(digest).await?;
        if let Some(r) = &record {
            self.keep(r, generation, now);
        }
        Ok(record)
    }

    async fn find_by_hint(&self, hint: &str) -> Result<Vec<Arc<KeyRecord>>> {
        // Keys found by hint pay a slow KDF on every verify anyway (its own cache sits in the verifier).
        self.inner.find_by_hint(hint).await
    }

    async fn hint_keys_exist(&self) -> Result<bool> {
        self.inner.hint_keys_exist().await
    }

    async fn list(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>> {
        self.inner.list(filter).await
    }

    async fn revoke(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        let done = self.inner.revoke(id, at).await;
        self.evict_with_created(id);
        done
    }

    async fn revoke_org(&self, org: &str, at: DateTime<Utc>) -> Result<Vec<String>> {
        let ids = self.inner.revoke_org(org, at).await?;
        for id in &ids {
            self.evict(id);
        }
        Ok(ids)
    }

    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<()> {
        let done = self.inner.set_disabled(id, disabled).await;
        self.evict(id);
        done
    }

    async fn update(&self, id: &str, patch: &crate::keys::KeyPatch) -> Result<Arc<KeyRecord>> {
        let done = self.inner.update(id, patch).await;
        self.evict(id);
        done
    }

    async fn replace_hash(&self, id: &str, old: &KeyHash, new: &KeyHash) -> Result<bool> {
        let done = self.inner.replace_hash(id, old, new).await;
        self.evict(id);
        done
    }

    async fn rotate(
        &self,
        id: &str,
        new: &KeyHash,
        previous_until: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let done = self.inner.rotate(id, new, previous_until).await;
        self.evict(id);
        done
    }

    async fn record_use(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        self.inner.record_use(id, at).await?;
        // The cached copy moves forward too, or every verify would find it stale and write again. (Another
        // instance's write is not a change the feed reports: `last_used_at` decides nothing.)
        let mut entries = self.write();
        if let Some(e) = entries.by_id.get_mut(id)
            && e.record.last_used_at.is_none_or(|t| t < at)
        {
            let mut record = (*e.record).clone();
            record.last_used_at = Some(at);
            e.record = Arc::new(record);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use chrono::Duration;

    use super::*;
    use crate::clock::ManualClock;
    use crate::keys::{KeyHasher, KeyIssuer, NewKey, Pepper, PepperRing};
    use crate::random::OsRandom;
    use crate::store::MemoryStore;

    /// A feed that answers what the test queued.
    #[derive(Debug, Default)]
    struct Queued(Mutex<Vec<Result<KeyChanges>>>);

    #[async_trait]
    impl KeyChangeFeed for Queued {
        async fn poll(&self) -> Result<KeyChanges> {
            let mut q = self.0.lock().unwrap();
            if q.is_empty() {
                Ok(KeyChanges::Keys(Vec::new()))
            } else {
                q.remove(0)
            }
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    async fn setup(
        feed: Option<Arc<Queued>>,
        capacity: usize,
    ) -> (
        Arc<MemoryStore>,
        CachedKeyStore,
        Arc<ManualClock>,
        Vec<String>,
    ) {
        let store = Arc::new(MemoryStore::new());
        let hasher = Arc::new(KeyHasher::new(
            PepperRing::new(vec![Pepper::generate("p", &OsRandom).unwrap()]).unwrap(),
        ));
        let issuer = KeyIssuer::new(store.clone(), hasher);
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(
                issuer
                    .issue(NewKey::new(format!("k{i}"), "alice"))
                    .await
                    .unwrap()
                    .record
                    .id,
            );
        }
        let clock = Arc::new(ManualClock::new(Utc::now()));
        let feed = feed.map(|f| f as Arc<dyn KeyChangeFeed>);
        let cache = CachedKeyStore::new(store.clone(), feed, capacity).with_clock(clock.clone());
        (store, cache, clock, ids)
    }

    #[test]
    fn a_change_the_feed_reports_is_read_again_and_lost_clears_everything() {
        rt().block_on(async {
            let feed = Arc::new(Queued::default());
            let (store, cache, clock, ids) = setup(Some(feed.clone()), 10).await;
            assert!(
                cache.get_now(&ids[0], clock.now_micros()).is_none(),
                "nothing served before the first poll"
            );
            assert!(cache.get(&ids[0]).await.unwrap().is_some());
            cache.get(&ids[1]).await.unwrap();
            assert!(cache.get_now(&ids[0], clock.now_micros()).is_some());
            // Changed behind the cache's back (another instance): still served until the feed says so.
            store.set_disabled(&ids[0], true).await.unwrap();
            assert!(!cache.get(&ids[0]).await.unwrap().unwrap().disabled);
            feed.0
                .lock()
                .unwrap()
                .push(Ok(KeyChanges::Keys(vec![ids[0].clone()])));
            // Not before the poll is due (once a second); nothing is served from memory once it is.
            assert!(!cache.get(&ids[0]).await.unwrap().unwrap().disabled);
            clock.advance(Duration::seconds(1));
            assert!(cache.get_now(&ids[0], clock.now_micros()).is_none());
            assert!(cache.get(&ids[0]).await.unwrap().unwrap().disabled);
            assert_eq!(cache.len(), 2);
            feed.0.lock().unwrap().push(Ok(KeyChanges::Lost));
            clock.advance(Duration::seconds(1));
            cache.get(&ids[2]).await.unwrap();
            assert_eq!((cache.len(), cache.clears()), (1, 1));
            // A failing poll clears too, and nothing is kept until a poll succeeds.
            feed.0
                .lock()
                .unwrap()
                .push(Err(crate::Error::Config("down".into())));
            clock.advance(Duration::seconds(1));
            cache.get(&ids[1]).await.unwrap();
            assert_eq!((cache.len(), cache.clears()), (0, 2));
            cache.get(&ids[1]).await.unwrap();
            assert_eq!(cache.len(), 1);
        });
    }

    #[test]
    fn writes_through_the_cache_evict_at_once_and_the_size_is_bounded() {
        rt().block_on(async {
            let (_store, cache, clock, ids) = setup(Some(Arc::default()), 2).await;
            for id in &ids {
                cache.get(id).await.unwrap();
            }
            assert_eq!(cache.len(), 2);
            let cached = ids
                .iter()
                .find(|id| cache.get_now(id, clock.now_micros()).is_some())
                .unwrap();
            cache.revoke(cached, Utc::now()).await.unwrap();
            assert!(cache.get_now(cached, clock.now_micros()).is_none());
            assert!(
                cache
                    .get(cached)
                    .await
                    .unwrap()
                    .unwrap()
                    .revoked_at
                    .is_some()
            );
            assert!(cache.get("no-such-id").await.unwrap().is_none());
            assert!(cache.len() <= 2);
        });
    }

    /// An unknown id is answered from memory once the store said so (as a known one is), until the feed
    /// reports the id made elsewhere; one made through the cache is known at once.
    #[test]
    fn unknown_ids_are_remembered_until_the_feed_reports_them_made() {
        rt().block_on(async {
            let feed = Arc::new(Queued::default());
            let (store, cache, clock, _) = setup(Some(feed.clone()), 10).await;
            assert!(cache.get("not-yet-made").await.unwrap().is_none());
            assert_eq!(
                cache.get_now("not-yet-made", clock.now_micros()),
                Some(None),
                "answered from memory, no store read"
            );
            // Made on another instance: remembered as unknown until the feed's next poll (a second at most).
            let hasher = Arc::new(KeyHasher::new(
                PepperRing::new(vec![Pepper::generate("p", &OsRandom).unwrap()]).unwrap(),
            ));
            let elsewhere = KeyIssuer::new(store.clone(), hasher.clone())
                .issue(NewKey::new("late", "bob"))
                .await
                .unwrap()
                .record
                .id;
            assert!(
                cache.get(&elsewhere).await.unwrap().is_some(),
                "never asked before"
            );
            let id = "km0000000000".to_owned();
            assert!(cache.get(&id).await.unwrap().is_none());
            let mut record = (*cache.get(&elsewhere).await.unwrap().unwrap()).clone();
            record.id = id.clone();
            store.create(&record).await.unwrap();
            assert!(cache.get(&id).await.unwrap().is_none());
            feed.0
                .lock()
                .unwrap()
                .push(Ok(KeyChanges::Keys(vec![id.clone()])));
            clock.advance(Duration::seconds(1));
            assert!(cache.get(&id).await.unwrap().is_some());
            // Made through the cache: known at once.
            let mut mine = record.clone();
            mine.id = "km1111111111".into();
            assert!(cache.get(&mine.id).await.unwrap().is_none());
            cache.create(&mine).await.unwrap();
            assert!(cache.get(&mine.id).await.unwrap().is_some());
            // A flood of made-up ids stays within the capacity.
            for i in 0..100 {
                cache.get(&format!("made-up-{i}")).await.unwrap();
            }
            assert!(cache.read().absent.len() <= 10);
        });
    }

    #[test]
    fn without_a_feed_a_record_lives_one_second() {
        rt().block_on(async {
            let (store, cache, clock, ids) = setup(None, 10).await;
            let cache = cache.with_ttl(std::time::Duration::from_secs(3600));
            cache.get(&ids[0]).await.unwrap();
            store.revoke(&ids[0], Utc::now()).await.unwrap();
            clock.advance(Duration::milliseconds(999));
            assert!(cache.get_now(&ids[0], clock.now_micros()).is_some());
            clock.advance(Duration::milliseconds(1));
            assert!(cache.get_now(&ids[0], clock.now_micros()).is_none());
            assert!(
                cache
                    .get(&ids[0])
                    .await
                    .unwrap()
                    .unwrap()
                    .revoked_at
                    .is_some()
            );
        });
    }
}
