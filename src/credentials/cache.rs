//! [`CachedCredentialStore`]: the sealed provider keys a request reads, kept in process (DESIGN §14), answers of
//! "no key here" included, so resolving a key costs its decryption and no store round trip.
//!
//! The cache keeps ciphertext only (the resolver opens it per request). A write through the cache forgets the
//! entry at once; a write by any other process moves the store's
//! [`credential_version`](CredentialStore::credential_version), which the cache reads at most once a second and
//! forgets everything when it moved. A store that keeps no version gets answers at most a second old.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keymeter::credentials::{CachedCredentialStore, CredentialScope, CredentialStore, MasterKey,
//!                             MasterKeyRing, Provider, Vault, set_key};
//! use keymeter::random::OsRandom;
//! use keymeter::store::MemoryStore;
//!
//! let store = Arc::new(MemoryStore::new());
//! let cache = CachedCredentialStore::new(store.clone());
//! let vault = Vault::new(MasterKeyRing::new(vec![MasterKey::generate("k1", &OsRandom)?])?);
//! let alice = CredentialScope::user("alice")?;
//! assert!(cache.get(&alice, &Provider::openai()).await?.is_none()); // "none" is kept too
//! set_key(&cache, &vault, &alice, &Provider::openai(), "sk-proj-alice-own-key-0123456789abcdef").await?;
//! assert!(cache.get(&alice, &Provider::openai()).await?.is_some()); // the write forgot the "none"
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;

use crate::clock::{Clock, SystemClock};
use crate::credentials::provider::Provider;
use crate::credentials::store::{CredentialStore, StoredCredential};
use crate::credentials::vault::{CredentialScope, SealedCredential};
use crate::error::Result;
use crate::lookups::Lookups;

/// How often the store's version is read, and how old an answer may be without one.
const INTERVAL: i64 = 1_000_000;
/// Entries the cache keeps by default before it starts over.
pub const DEFAULT_CAPACITY: usize = 10_000;

/// One answer of the store and when it was read (microseconds).
#[derive(Clone)]
struct Answer {
    sealed: Option<SealedCredential>,
    at: i64,
}

/// The answers of one provider: the system key's and each owner's.
#[derive(Default)]
struct Answers {
    system: Option<Answer>,
    users: HashMap<String, Answer>,
}

impl Answers {
    fn slot(&mut self, scope: &CredentialScope) -> Option<&mut Answer> {
        match scope {
            CredentialScope::System => self.system.as_mut(),
            CredentialScope::User(owner) => self.users.get_mut(owner.as_str()),
        }
    }
}

#[derive(Default)]
struct Answered {
    by_provider: HashMap<Provider, Answers>,
    len: usize,
}

impl Answered {
    fn get(&self, scope: &CredentialScope, provider: &Provider) -> Option<&Answer> {
        let answers = self.by_provider.get(provider)?;
        match scope {
            CredentialScope::System => answers.system.as_ref(),
            CredentialScope::User(owner) => answers.users.get(owner.as_str()),
        }
    }

    fn put(&mut self, scope: &CredentialScope, provider: &Provider, answer: Answer) {
        let answers = self.by_provider.entry(provider.clone()).or_default();
        if let Some(slot) = answers.slot(scope) {
            *slot = answer;
            return;
        }
        self.len += 1;
        match scope {
            CredentialScope::System => answers.system = Some(answer),
            CredentialScope::User(owner) => {
                answers.users.insert(owner.clone(), answer);
            }
        }
    }

    fn forget(&mut self, scope: &CredentialScope, provider: &Provider) {
        let Some(answers) = self.by_provider.get_mut(provider) else {
            return;
        };
        let gone = match scope {
            CredentialScope::System => answers.system.take().is_some(),
            CredentialScope::User(owner) => answers.users.remove(owner.as_str()).is_some(),
        };
        self.len -= usize::from(gone);
    }
}

/// A [`CredentialStore`] that keeps the answers of [`CredentialStore::get`] of the store it wraps. Writes go to
/// that store and forget what they change here. Object safe and cheap to share (`Arc`).
pub struct CachedCredentialStore {
    inner: Arc<dyn CredentialStore>,
    answered: RwLock<Answered>,
    capacity: usize,
    // Moved by every write through the cache and every clearing: an answer read from the store is kept only if
    // nothing moved it while it was read, so a read racing a write never keeps the old key.
    generation: AtomicU64,
    // The store's version last seen, held while it is read (one reader at a time).
    version: tokio::sync::Mutex<Option<i64>>,
    // When the version was last read successfully (microseconds); i64::MIN for never.
    checked_at: AtomicI64,
    // Whether the store keeps a version (answers are then good while the version is fresh, not by their age).
    versioned: std::sync::atomic::AtomicBool,
    clock: Arc<dyn Clock>,
    lookups: Arc<Lookups>,
}

impl std::fmt::Debug for CachedCredentialStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedCredentialStore")
            .field("inner", &self.inner)
            .field("answers", &self.len())
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl CachedCredentialStore {
    /// A cache of at most [`DEFAULT_CAPACITY`] answers in front of `inner`.
    pub fn new(inner: Arc<dyn CredentialStore>) -> Self {
        CachedCredentialStore {
            inner,
            answered: RwLock::default(),
            capacity: DEFAULT_CAPACITY,
            generation: AtomicU64::new(0),
            version: tokio::sync::Mutex::new(None),
            checked_at: AtomicI64::new(i64::MIN),
            versioned: std::sync::atomic::AtomicBool::new(false),
            clock: Arc::new(SystemClock),
            lookups: Arc::default(),
        }
    }

    /// Keeps at most `capacity` answers (past it, the cache starts over); 0 keeps none.
    #[must_use]
    pub fn with_capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity;
        self
    }

    /// Injects the clock (answers' ages, when the version is due).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// How many reads were answered from memory and how many from the store.
    pub fn lookups(&self) -> &Arc<Lookups> {
        &self.lookups
    }

    /// The number of answers kept.
    pub fn len(&self) -> usize {
        self.read().len
    }

    /// Whether no answer is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every answer.
    pub fn clear(&self) {
        let mut answered = self.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        *answered = Answered::default();
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Answered> {
        self.answered.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Answered> {
        self.answered.write().unwrap_or_else(|e| e.into_inner())
    }

    fn forget(&self, scope: &CredentialScope, provider: &Provider) {
        let mut answered = self.write();
        self.generation.fetch_add(1, Ordering::AcqRel);
        answered.forget(scope, provider);
    }

    /// Reads the store's version when a second has passed since the last read, and forgets everything when it
    /// moved. One caller reads it; the others go on meanwhile.
    async fn refresh(&self, now: i64) {
        let due = |checked: i64| now.saturating_sub(checked) >= INTERVAL;
        if !due(self.checked_at.load(Ordering::Acquire)) {
            return;
        }
        let Ok(mut seen) = self.version.try_lock() else {
            return;
        };
        if !due(self.checked_at.load(Ordering::Acquire)) {
            return;
        }
        match self.inner.credential_version().await {
            Ok(Some(version)) => {
                if *seen != Some(version) {
                    self.clear();
                    *seen = Some(version);
                }
                self.versioned.store(true, Ordering::Release);
                self.checked_at.store(now, Ordering::Release);
            }
            Ok(None) => {
                self.versioned.store(false, Ordering::Release);
                self.checked_at.store(now, Ordering::Release);
            }
            // The answers age out (a store that cannot be read is asked again per request).
            Err(e) => tracing::debug!(error = %e, "credential version unreadable"),
        }
    }

    /// Whether `answer` may still be served at `now`.
    fn good(&self, answer: &Answer, now: i64) -> bool {
        if self.versioned.load(Ordering::Acquire) {
            // Any change since is seen by the next version read; one may be under way.
            now.saturating_sub(self.checked_at.load(Ordering::Acquire)) < 2 * INTERVAL
        } else {
            now.saturating_sub(answer.at) < INTERVAL
        }
    }
}

#[async_trait]
impl CredentialStore for CachedCredentialStore {
    async fn put(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        sealed: &SealedCredential,
    ) -> Result<()> {
        let done = self.inner.put(scope, provider, sealed).await;
        self.forget(scope, provider);
        done
    }

    async fn get(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
    ) -> Result<Option<SealedCredential>> {
        let now = self.clock.now_micros();
        self.refresh(now).await;
        if let Some(answer) = self.read().get(scope, provider)
            && self.good(answer, now)
        {
            self.lookups.hit();
            return Ok(answer.sealed.clone());
        }
        self.lookups.miss();
        let generation = self.generation.load(Ordering::Acquire);
        let sealed = self.inner.get(scope, provider).await?;
        if self.capacity > 0 {
            let mut answered = self.write();
            if self.generation.load(Ordering::Acquire) == generation {
                if answered.len >= self.capacity {
                    *answered = Answered::default();
                }
                let answer = Answer {
                    sealed: sealed.clone(),
                    at: now,
                };
                answered.put(scope, provider, answer);
            }
        }
        Ok(sealed)
    }

    async fn delete(&self, scope: &CredentialScope, provider: &Provider) -> Result<bool> {
        let done = self.inner.delete(scope, provider).await;
        self.forget(scope, provider);
        done
    }

    async fn delete_all(&self, scope: &CredentialScope) -> Result<u64> {
        let done = self.inner.delete_all(scope).await;
        self.clear();
        done
    }

    async fn providers(&self, scope: &CredentialScope) -> Result<Vec<Provider>> {
        self.inner.providers(scope).await
    }

    async fn list(&self) -> Result<Vec<StoredCredential>> {
        self.inner.list().await
    }

    async fn replace(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        old: &SealedCredential,
        new: &SealedCredential,
    ) -> Result<bool> {
        let done = self.inner.replace(scope, provider, old, new).await;
        self.forget(scope, provider);
        done
    }

    async fn credential_version(&self) -> Result<Option<i64>> {
        self.inner.credential_version().await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use chrono::{Duration, TimeZone, Utc};

    use super::*;
    use crate::clock::ManualClock;
    use crate::credentials::{MasterKey, MasterKeyRing, Vault};
    use crate::random::OsRandom;
    use crate::store::MemoryStore;

    /// A store that counts its reads, can hide its version, and can hold a read between reading and answering.
    #[derive(Debug)]
    struct Watched {
        inner: Arc<MemoryStore>,
        reads: AtomicUsize,
        versioned: bool,
        hold: tokio::sync::Mutex<Option<Arc<tokio::sync::Barrier>>>,
    }

    #[async_trait]
    impl CredentialStore for Watched {
        async fn put(&self, s: &CredentialScope, p: &Provider, c: &SealedCredential) -> Result<()> {
            self.inner.put(s, p, c).await
        }
        async fn get(&self, s: &CredentialScope, p: &Provider) -> Result<Option<SealedCredential>> {
            self.reads.fetch_add(1, Ordering::SeqCst);
            let found = self.inner.get(s, p).await?;
            let hold = self.hold.lock().await.take();
            if let Some(barrier) = hold {
                barrier.wait().await; // read, not yet answered
                barrier.wait().await; // answer now
            }
            Ok(found)
        }
        async fn delete(&self, s: &CredentialScope, p: &Provider) -> Result<bool> {
            self.inner.delete(s, p).await
        }
        async fn delete_all(&self, s: &CredentialScope) -> Result<u64> {
            self.inner.delete_all(s).await
        }
        async fn providers(&self, s: &CredentialScope) -> Result<Vec<Provider>> {
            self.inner.providers(s).await
        }
        async fn list(&self) -> Result<Vec<StoredCredential>> {
            self.inner.list().await
        }
        async fn replace(
            &self,
            s: &CredentialScope,
            p: &Provider,
            o: &SealedCredential,
            n: &SealedCredential,
        ) -> Result<bool> {
            self.inner.replace(s, p, o, n).await
        }
        async fn credential_version(&self) -> Result<Option<i64>> {
            if self.versioned {
                self.inner.credential_version().await
            } else {
                Ok(None)
            }
        }
    }

    struct Setup {
        memory: Arc<MemoryStore>,
        watched: Arc<Watched>,
        cache: Arc<CachedCredentialStore>,
        clock: Arc<ManualClock>,
        vault: Vault,
    }

    fn setup(versioned: bool) -> Setup {
        let memory = Arc::new(MemoryStore::new());
        let watched = Arc::new(Watched {
            inner: memory.clone(),
            reads: AtomicUsize::new(0),
            versioned,
            hold: tokio::sync::Mutex::new(None),
        });
        let clock = Arc::new(ManualClock::new(
            Utc.with_ymd_and_hms(2026, 12, 3, 12, 0, 0).unwrap(),
        ));
        let cache = Arc::new(CachedCredentialStore::new(watched.clone()).with_clock(clock.clone()));
        let ring = MasterKeyRing::new(vec![MasterKey::generate("k1", &OsRandom).unwrap()]).unwrap();
        Setup {
            memory,
            watched,
            cache,
            clock,
            vault: Vault::new(ring),
        }
    }

    impl Setup {
        fn sealed(&self, owner: &str, key: &str) -> SealedCredential {
            let scope = CredentialScope::user(owner).unwrap();
            self.vault.seal(&scope, &Provider::openai(), key).unwrap()
        }
        fn reads(&self) -> usize {
            self.watched.reads.load(Ordering::SeqCst)
        }
    }

    fn alice() -> CredentialScope {
        CredentialScope::user("alice").unwrap()
    }

    #[tokio::test]
    async fn answers_none_included_are_kept_and_another_writer_is_seen_within_a_second() {
        let t = setup(true);
        let openai = Provider::openai();
        assert_eq!(t.cache.get(&alice(), &openai).await.unwrap(), None);
        assert_eq!(
            t.cache
                .get(&CredentialScope::System, &openai)
                .await
                .unwrap(),
            None
        );
        assert_eq!(t.reads(), 2);
        for _ in 0..100 {
            assert_eq!(t.cache.get(&alice(), &openai).await.unwrap(), None);
        }
        assert_eq!(t.reads(), 2, "kept: no store read");
        assert_eq!(
            (t.cache.lookups().hits(), t.cache.lookups().misses()),
            (100, 2)
        );
        assert_eq!(t.cache.len(), 2);

        // Another process writes (straight to the store): seen once the version is read again.
        let sealed = t.sealed("alice", "sk-proj-alice-000000000000000000000000");
        t.memory.put(&alice(), &openai, &sealed).await.unwrap();
        t.clock.advance(Duration::milliseconds(999));
        assert_eq!(
            t.cache.get(&alice(), &openai).await.unwrap(),
            None,
            "within the second"
        );
        t.clock.advance(Duration::milliseconds(1));
        assert_eq!(
            t.cache.get(&alice(), &openai).await.unwrap(),
            Some(sealed.clone())
        );
        assert_eq!(t.reads(), 3);
        // Without a change, the next version read keeps everything.
        t.clock.advance(Duration::seconds(5));
        assert_eq!(t.cache.get(&alice(), &openai).await.unwrap(), Some(sealed));
        assert_eq!(t.reads(), 3);
    }

    #[tokio::test]
    async fn a_write_through_the_cache_is_seen_at_once() {
        let t = setup(true);
        let openai = Provider::openai();
        assert_eq!(t.cache.get(&alice(), &openai).await.unwrap(), None);
        let first = t.sealed("alice", "sk-proj-alice-111111111111111111111111");
        t.cache.put(&alice(), &openai, &first).await.unwrap();
        assert_eq!(
            t.cache.get(&alice(), &openai).await.unwrap(),
            Some(first.clone())
        );
        let second = t.sealed("alice", "sk-proj-alice-222222222222222222222222");
        assert!(
            t.cache
                .replace(&alice(), &openai, &first, &second)
                .await
                .unwrap()
        );
        assert_eq!(t.cache.get(&alice(), &openai).await.unwrap(), Some(second));
        assert!(t.cache.delete(&alice(), &openai).await.unwrap());
        assert_eq!(t.cache.get(&alice(), &openai).await.unwrap(), None);
        let third = t.sealed("alice", "sk-proj-alice-333333333333333333333333");
        t.cache.put(&alice(), &openai, &third).await.unwrap();
        assert_eq!(t.cache.get(&alice(), &openai).await.unwrap(), Some(third));
        assert_eq!(t.cache.delete_all(&alice()).await.unwrap(), 1);
        assert_eq!(t.cache.get(&alice(), &openai).await.unwrap(), None);
    }

    #[tokio::test]
    async fn without_a_version_an_answer_lives_a_second() {
        let t = setup(false);
        let openai = Provider::openai();
        assert_eq!(t.cache.get(&alice(), &openai).await.unwrap(), None);
        t.clock.advance(Duration::milliseconds(999));
        assert_eq!(t.cache.get(&alice(), &openai).await.unwrap(), None);
        assert_eq!(t.reads(), 1);
        t.clock.advance(Duration::milliseconds(1));
        assert_eq!(t.cache.get(&alice(), &openai).await.unwrap(), None);
        assert_eq!(t.reads(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_racing_a_write_keeps_no_old_key() {
        let t = setup(true);
        let openai = Provider::openai();
        let old = t.sealed("alice", "sk-proj-alice-444444444444444444444444");
        t.memory.put(&alice(), &openai, &old).await.unwrap();
        let barrier = Arc::new(tokio::sync::Barrier::new(2));
        *t.watched.hold.lock().await = Some(barrier.clone());
        // A read takes the old key from the store and is held before it answers...
        let cache = t.cache.clone();
        let read = tokio::spawn(async move { cache.get(&alice(), &Provider::openai()).await });
        barrier.wait().await;
        // ...while this process replaces the key through the cache.
        let new = t.sealed("alice", "sk-proj-alice-555555555555555555555555");
        t.cache.put(&alice(), &openai, &new).await.unwrap();
        barrier.wait().await;
        assert_eq!(
            read.await.unwrap().unwrap(),
            Some(old),
            "the racing read answers what it read"
        );
        assert_eq!(
            t.cache.get(&alice(), &openai).await.unwrap(),
            Some(new),
            "but kept none of it"
        );
    }

    #[tokio::test]
    async fn capacity_bounds_the_answers() {
        let t = setup(true);
        let cache = CachedCredentialStore::new(t.watched.clone()).with_capacity(3);
        for owner in ["a", "b", "c", "d", "e"] {
            let scope = CredentialScope::user(owner).unwrap();
            cache.get(&scope, &Provider::openai()).await.unwrap();
            assert!(cache.len() <= 3);
        }
        let none = CachedCredentialStore::new(t.watched.clone()).with_capacity(0);
        none.get(&alice(), &Provider::openai()).await.unwrap();
        assert!(none.is_empty());
        // Debug names counts, never a sealed value.
        assert!(format!("{cache:?}").contains("answers"));
    }
}
