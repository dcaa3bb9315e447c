//! The in-memory backend: every trait in process memory, for tests, single-process services and caches.

mod credentials;
mod keys;
mod ledger;
mod limits;
mod outbox;
mod slots;
mod stats;

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::credentials::{CredentialScope, Provider, SealedCredential};
use crate::random::{OsRandom, RandomSource};

use keys::Keys;
use ledger::LedgerState;

/// Keeps everything in process memory; share it as `Arc<MemoryStore>` (or `Arc<dyn KeyStore>`).
///
/// `Debug` shows counts only: the indexes hold imported keys' digests.
pub struct MemoryStore {
    keys: RwLock<Keys>,
    credentials: RwLock<BTreeMap<(CredentialScope, Provider), SealedCredential>>,
    // Moved by every write to the credentials ([`crate::credentials::CredentialStore::credential_version`]).
    credential_version: std::sync::atomic::AtomicI64,
    ledger: std::sync::Mutex<LedgerState>,
    limits: limits::LimitLock,
    buckets: crate::limits::buckets::Buckets,
    stats: std::sync::Mutex<stats::StatsTable>,
    slots: std::sync::Mutex<slots::SlotTable>,
    // Reservation ids are this per-store random prefix and a counter: unique without a syscall per reserve.
    reservation_prefix: String,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("keys", &self.read().len())
            .field(
                "credentials",
                &self.credentials.read().map_or(0, |c| c.len()),
            )
            .field("limits", &self.limits.read().map_or(0, |l| l.len()))
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore {
            keys: RwLock::default(),
            credentials: RwLock::default(),
            credential_version: std::sync::atomic::AtomicI64::new(0),
            ledger: std::sync::Mutex::default(),
            limits: limits::LimitLock::default(),
            buckets: crate::limits::buckets::Buckets::default(),
            stats: std::sync::Mutex::default(),
            slots: std::sync::Mutex::default(),
            reservation_prefix: reservation_prefix(&OsRandom),
        }
    }
}

/// A per-store random prefix for reservation ids (`rsv_<random>_`); a failed draw falls back to a fixed one,
/// which only matters if two stores' reservation ids are ever mixed up.
fn reservation_prefix(random: &dyn RandomSource) -> String {
    let prefix = crate::ledger::reservation_id(random).unwrap_or_else(|_| "rsv_".into());
    format!("{prefix}_")
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore::default()
    }

    /// Injects the random source of reservation ids.
    #[must_use]
    pub fn with_random(mut self, random: Arc<dyn RandomSource>) -> Self {
        self.reservation_prefix = reservation_prefix(random.as_ref());
        self
    }

    // A panic while holding the lock cannot leave a half-written record (updates are copy-on-write), so a
    // poisoned lock is safe to keep using.
    fn read(&self) -> RwLockReadGuard<'_, Keys> {
        self.keys.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, Keys> {
        self.keys.write().unwrap_or_else(|e| e.into_inner())
    }
}
