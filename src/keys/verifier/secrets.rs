//! How the [`Verifier`] matches a secret: generated keys by HMAC, imported ones by digest, hint and KDF (on a
//! fixed set of threads), and what a success changes (last use, re-hashing to the current pepper).

use super::*;

impl Verifier {
    pub(super) fn has_keymeter_shape(&self, credential: &str) -> bool {
        credential.split_once('_').is_some_and(|(prefix, rest)| {
            (rest.starts_with("live_") || rest.starts_with("test_"))
                && self.config.prefixes.iter().any(|p| p == prefix)
        })
    }

    pub(super) async fn find_imported(&self, credential: &str) -> Result<Option<Arc<KeyRecord>>> {
        let digest = KeyHasher::sha256(credential.as_bytes());
        if let Some(hex) = digest.sha256_hex()
            && let Some(record) = self.store.find_by_digest(hex).await?
            && matches!(record.lookup, KeyLookup::Digest(_))
            && self.matches(credential, &record).await?
        {
            return Ok(Some(record));
        }
        // The credential is ASCII (checked above), so any byte offset is a char boundary.
        let mut tried = false;
        if let Some(hint) = credential.get(..self.config.hint_len) {
            // One lookup per pepper of the ring (usually one or two), at most MAX_KEYS_PER_HINT keys each.
            for digest in self.hasher.hint_digests(hint.as_bytes()) {
                let candidates = self.store.find_by_hint(&digest).await?;
                for record in candidates.into_iter().take(MAX_KEYS_PER_HINT) {
                    if matches!(record.lookup, KeyLookup::Hint(_)) {
                        tried = true;
                        if self.matches(credential, &record).await? {
                            return Ok(Some(record));
                        }
                    }
                }
            }
        }
        // A hint that matches nothing costs one KDF all the same, while any hinted key exists: timing must not
        // tell which key prefixes exist.
        if !tried && self.store.hint_keys_exist().await? {
            let hasher = Arc::clone(&self.hasher);
            let owned = Zeroizing::new(credential.to_owned());
            self.run_kdf(move || hasher.verify_nothing_slowly(owned.as_bytes()))
                .await?;
        }
        Ok(None)
    }

    /// Runs a KDF in one of the `kdf_concurrency` slots (waiting at most `kdf_wait`), off the async workers.
    pub(super) async fn run_kdf<T, E, F>(&self, work: F) -> Result<T>
    where
        F: FnOnce() -> std::result::Result<T, E> + Send + 'static,
        E: Into<crate::Error> + Send + 'static,
        T: Send + 'static,
    {
        let permit = match self.kdf_slots.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => {
                let wait = self.config.kdf_wait.to_std().unwrap_or_default();
                if wait.is_zero() || tokio::runtime::Handle::try_current().is_err() {
                    return Err(crate::Error::Overloaded);
                }
                match tokio::time::timeout(wait, self.kdf_slots.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    _ => return Err(crate::Error::Overloaded),
                }
            }
        };
        self.kdf_runs
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The permit lives as long as the KDF runs, even if the caller stops waiting for it.
        let work = move || {
            let out = work();
            drop(permit);
            out
        };
        if tokio::runtime::Handle::try_current().is_err() {
            return work().map_err(Into::into);
        }
        self.kdf_threads.run(work).await?.map_err(Into::into)
    }

    pub(super) async fn matches(&self, credential: &str, record: &KeyRecord) -> Result<bool> {
        if !record.hash.scheme().is_slow() {
            return Ok(self.hasher.verify(credential.as_bytes(), &record.hash)?);
        }
        // Boxed: keeps the slow path's state out of every verify future.
        Box::pin(self.matches_slow(credential, record)).await
    }

    /// Whether `credential` is the secret a rotation replaced, while its grace period runs. Rotation is for
    /// generated keys, whose hashes are HMACs: a slow previous hash is never checked here.
    pub(super) fn matches_previous(
        &self,
        credential: &str,
        record: &KeyRecord,
        now: i64,
    ) -> Result<bool> {
        match record.previous_hash_at(now) {
            Some(hash) if !hash.scheme().is_slow() => {
                Ok(self.hasher.verify(credential.as_bytes(), hash)?)
            }
            _ => Ok(false),
        }
    }

    pub(super) async fn matches_slow(&self, credential: &str, record: &KeyRecord) -> Result<bool> {
        let hash = &record.hash;
        let now = self.clock.now();
        if self
            .cache
            .contains(credential.as_bytes(), &record.id, hash.as_str(), now)
        {
            return Ok(true);
        }
        let hasher = Arc::clone(&self.hasher);
        let owned = Zeroizing::new(credential.to_owned());
        let stored = hash.clone();
        let ok = self
            .run_kdf(move || hasher.verify(owned.as_bytes(), &stored))
            .await?;
        if ok {
            self.cache
                .insert(credential.as_bytes(), &record.id, hash.as_str(), now);
        }
        Ok(ok)
    }

    /// Best effort: a failed re-hash or `last_used_at` write must not fail a valid request, so both are logged.
    pub(super) async fn after_success(&self, credential: &str, record: &KeyRecord, now: i64) {
        let interval = self
            .config
            .last_used_interval
            .num_microseconds()
            .unwrap_or(i64::MAX);
        // With a statistics recorder, its flushes write last_used_at.
        let stale = self.stats.is_none()
            && record
                .last_used_at
                .is_none_or(|t| now.saturating_sub(t.timestamp_micros()) >= interval);
        if stale && let Some(at) = DateTime::<Utc>::from_timestamp_micros(now) {
            // Boxed: a write is rare (once an interval per key), so its state stays out of every verify future.
            if let Err(e) = Box::pin(self.store.record_use(&record.id, at)).await {
                tracing::warn!(key_id = %record.id, error = %e, "could not record key use");
            }
        }
        if self.hasher.is_outdated(&record.hash) {
            Box::pin(self.upgrade(credential, record)).await;
        }
    }

    pub(super) async fn upgrade(&self, credential: &str, record: &KeyRecord) {
        let hasher = Arc::clone(&self.hasher);
        let owned = Zeroizing::new(credential.to_owned());
        let old = record.hash.clone();
        match self
            .run_kdf(move || hasher.upgrade(owned.as_bytes(), &old))
            .await
        {
            Ok(Some(new)) => self.replace_hash(record, &new).await,
            Ok(None) => {}
            Err(e) => tracing::warn!(key_id = %record.id, error = %e, "could not re-hash key"),
        }
    }

    pub(super) async fn replace_hash(&self, record: &KeyRecord, new: &KeyHash) {
        match self.store.replace_hash(&record.id, &record.hash, new).await {
            Ok(_) => self.cache.invalidate(&record.id),
            Err(e) => {
                tracing::warn!(key_id = %record.id, error = %e, "could not store re-hashed key")
            }
        }
    }
}
