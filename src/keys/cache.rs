//! A bounded, TTL'd cache of "this token matched this slow hash", so Argon2id and bcrypt keys pay the KDF once
//! per TTL instead of on every request.
//!
//! Entries are keyed by HMAC-SHA-256 of the token under a per-process random key, so the cache never holds a
//! token, nor an unsalted digest of one. An entry is only trusted for the exact hash string it was proven against:
//! a re-hash, re-import or key change misses. Revocation and disabling are read from the record on every verify,
//! so the cache never lets a revoked key through; [`VerifiedTokenCache::invalidate`] drops a key's entries at once
//! all the same.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::Result;
use crate::random::RandomSource;

struct Entry {
    key_id: String,
    hash: String,
    expires: DateTime<Utc>,
}

struct Inner {
    entries: HashMap<[u8; 32], Entry>,
    order: VecDeque<[u8; 32]>,
}

/// The verified-token cache.
pub struct VerifiedTokenCache {
    mac: Hmac<Sha256>,
    capacity: usize,
    ttl: Duration,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for VerifiedTokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedTokenCache")
            .field("capacity", &self.capacity)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl VerifiedTokenCache {
    /// A cache of at most `capacity` entries, each trusted for `ttl`.
    ///
    /// # Errors
    /// [`crate::Error::Random`] when the cache key cannot be drawn.
    pub fn new(capacity: usize, ttl: Duration, random: &dyn RandomSource) -> Result<Self> {
        let mut key = zeroize::Zeroizing::new([0u8; 32]);
        random.fill(&mut key[..])?;
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(&key[..])
            .map_err(|e| crate::Error::Random(e.to_string()))?;
        Ok(VerifiedTokenCache {
            mac,
            capacity,
            ttl,
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
        })
    }

    fn slot(&self, token: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(token);
        mac.finalize().into_bytes().into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `token` was proven against exactly `hash` of key `key_id` within the TTL.
    pub fn contains(&self, token: &[u8], key_id: &str, hash: &str, now: DateTime<Utc>) -> bool {
        let slot = self.slot(token);
        let inner = self.lock();
        inner
            .entries
            .get(&slot)
            .is_some_and(|e| e.key_id == key_id && e.hash == hash && e.expires > now)
    }

    /// Remembers that `token` matched `hash` of key `key_id`.
    pub fn insert(&self, token: &[u8], key_id: &str, hash: &str, now: DateTime<Utc>) {
        if self.capacity == 0 {
            return;
        }
        let slot = self.slot(token);
        let mut inner = self.lock();
        while inner.entries.len() >= self.capacity {
            match inner.order.pop_front() {
                Some(old) => {
                    inner.entries.remove(&old);
                }
                None => break,
            }
        }
        let entry = Entry {
            key_id: key_id.to_owned(),
            hash: hash.to_owned(),
            expires: now + self.ttl,
        };
        if inner.entries.insert(slot, entry).is_none() {
            inner.order.push_back(slot);
        }
    }

    /// Drops every entry of key `key_id`.
    pub fn invalidate(&self, key_id: &str) {
        let mut inner = self.lock();
        inner.entries.retain(|_, e| e.key_id != key_id);
        let Inner { entries, order } = &mut *inner;
        order.retain(|slot| entries.contains_key(slot));
    }

    /// The number of entries.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
