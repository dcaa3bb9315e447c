//! [`KeyStore`] in memory.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::{Error, Result};
use crate::keys::store::check_rotatable;
use crate::keys::{
    KeyFilter, KeyHash, KeyLookup, KeyRecord, KeyStore, MAX_KEYS_PER_HINT, PreviousSecret,
};
use crate::store::memory::MemoryStore;

#[derive(Default)]
pub(super) struct Keys {
    by_id: HashMap<String, Arc<KeyRecord>>,
    by_digest: HashMap<String, String>,
    by_hint: HashMap<String, Vec<String>>,
    // Insertion order, so `list` is oldest first like the SQL backends.
    order: Vec<String>,
}

impl Keys {
    pub(super) fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Copy-on-write update of one record: readers holding the old `Arc` keep a consistent snapshot.
    pub(super) fn update(&mut self, id: &str, f: impl FnOnce(&mut KeyRecord)) -> Result<()> {
        let slot = self
            .by_id
            .get_mut(id)
            .ok_or_else(|| Error::key_not_found(id))?;
        f(Arc::make_mut(slot));
        Ok(())
    }

    /// Revokes the keys `creator` created that are still live (DESIGN §12: they go with it).
    pub(super) fn revoke_created_by(&mut self, creator: &str, at: DateTime<Utc>) {
        for slot in self.by_id.values_mut() {
            if slot.created_by.as_deref() == Some(creator) && slot.revoked_at.is_none() {
                Arc::make_mut(slot).revoked_at = Some(at);
            }
        }
    }
}

#[async_trait]
impl KeyStore for MemoryStore {
    async fn create(&self, record: &KeyRecord) -> Result<()> {
        let mut keys = self.write();
        if keys.by_id.contains_key(&record.id) {
            return Err(Error::AlreadyExists {
                what: "key",
                id: record.id.clone(),
            });
        }
        match &record.lookup {
            KeyLookup::Id => {}
            KeyLookup::Digest(d) => {
                if keys.by_digest.contains_key(d) {
                    return Err(Error::AlreadyExists {
                        what: "a key with this hash",
                        id: String::new(),
                    });
                }
                keys.by_digest.insert(d.clone(), record.id.clone());
            }
            KeyLookup::Hint(h) => {
                let ids = keys.by_hint.entry(h.clone()).or_default();
                if ids.len() >= MAX_KEYS_PER_HINT {
                    return Err(Error::HintFull {
                        max: MAX_KEYS_PER_HINT,
                    });
                }
                ids.push(record.id.clone());
            }
        }
        keys.order.push(record.id.clone());
        keys.by_id
            .insert(record.id.clone(), Arc::new(record.clone()));
        Ok(())
    }

    async fn get(&self, id: &str) -> Result<Option<Arc<KeyRecord>>> {
        Ok(self.read().by_id.get(id).cloned())
    }

    async fn hint_keys_exist(&self) -> Result<bool> {
        Ok(self.read().by_hint.values().any(|ids| !ids.is_empty()))
    }

    fn get_now(&self, id: &str, _now_micros: i64) -> Option<Option<Arc<KeyRecord>>> {
        Some(self.read().by_id.get(id).cloned())
    }

    async fn find_by_digest(&self, digest: &str) -> Result<Option<Arc<KeyRecord>>> {
        let keys = self.read();
        Ok(keys
            .by_digest
            .get(digest)
            .and_then(|id| keys.by_id.get(id))
            .cloned())
    }

    async fn find_by_hint(&self, hint: &str) -> Result<Vec<Arc<KeyRecord>>> {
        let keys = self.read();
        Ok(keys
            .by_hint
            .get(hint)
            .into_iter()
            .flatten()
            .take(MAX_KEYS_PER_HINT)
            .filter_map(|id| keys.by_id.get(id).cloned())
            .collect())
    }

    async fn list(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>> {
        let keys = self.read();
        Ok(keys
            .order
            .iter()
            .filter_map(|id| keys.by_id.get(id))
            .filter(|r| filter.matches(r))
            .take(filter.limit.map_or(usize::MAX, |n| n as usize))
            .map(|r| KeyRecord::clone(r))
            .collect())
    }

    async fn revoke(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        let mut keys = self.write();
        keys.update(id, |r| {
            r.revoked_at.get_or_insert(at);
        })?;
        keys.revoke_created_by(id, at);
        Ok(())
    }

    async fn revoke_org(&self, org: &str, at: DateTime<Utc>) -> Result<Vec<String>> {
        let mut keys = self.write();
        let ids: Vec<String> = keys
            .by_id
            .values()
            .filter(|r| r.org.as_deref() == Some(org) && r.revoked_at.is_none())
            .map(|r| r.id.clone())
            .collect();
        for id in &ids {
            keys.update(id, |r| r.revoked_at = Some(at))?;
        }
        Ok(ids)
    }

    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<()> {
        self.write().update(id, |r| r.disabled = disabled)
    }

    async fn update(&self, id: &str, patch: &crate::keys::KeyPatch) -> Result<Arc<KeyRecord>> {
        patch.validate()?;
        let mut keys = self.write();
        keys.update(id, |r| *r = patch.apply(r))?;
        keys.by_id
            .get(id)
            .cloned()
            .ok_or_else(|| Error::key_not_found(id))
    }

    async fn replace_hash(&self, id: &str, old: &KeyHash, new: &KeyHash) -> Result<bool> {
        let mut keys = self.write();
        match keys.by_id.get(id) {
            Some(r) if r.hash == *old => {
                keys.update(id, |r| r.hash = new.clone())?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn rotate(
        &self,
        id: &str,
        new: &KeyHash,
        previous_until: Option<DateTime<Utc>>,
    ) -> Result<()> {
        let mut keys = self.write();
        let record = keys.by_id.get(id).ok_or_else(|| Error::key_not_found(id))?;
        check_rotatable(record.revoked_at.is_some(), record.lookup == KeyLookup::Id)?;
        keys.update(id, |r| {
            let old = std::mem::replace(&mut r.hash, new.clone());
            r.previous = previous_until.map(|valid_until| PreviousSecret {
                hash: old,
                valid_until,
            });
        })
    }

    async fn record_use(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        let mut keys = self.write();
        if keys
            .by_id
            .get(id)
            .is_some_and(|r| r.last_used_at.is_none_or(|t| t < at))
        {
            keys.update(id, |r| r.last_used_at = Some(at))?;
        }
        Ok(())
    }
}
