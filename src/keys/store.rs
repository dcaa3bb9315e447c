//! The [`KeyStore`] trait: where key records live.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::Result;
use crate::keys::hash::KeyHash;
use crate::keys::record::{KeyFilter, KeyRecord};

/// At most this many keys may share one import hint, so a verify by hint computes a bounded number of hashes.
pub const MAX_KEYS_PER_HINT: usize = 4;

/// Storage for key records. Object safe: `Arc<dyn KeyStore>` works.
///
/// Every operation that must be atomic on a shared database is one call here, never a read followed by a write:
/// [`create`](KeyStore::create) fails on a duplicate id or digest (and on a full hint),
/// [`replace_hash`](KeyStore::replace_hash) is a compare-and-swap, [`revoke`](KeyStore::revoke) keeps the first
/// revocation time, [`rotate`](KeyStore::rotate) checks and replaces in one step.
///
/// Records are returned in an [`Arc`] so an in-memory store hands out a shared record on the hot verify path
/// instead of copying it.
#[async_trait]
pub trait KeyStore: Send + Sync + std::fmt::Debug {
    /// Inserts a new record.
    ///
    /// # Errors
    /// [`Error::AlreadyExists`](crate::Error::AlreadyExists) when the id (or an imported digest) is taken;
    /// [`Error::HintFull`](crate::Error::HintFull) when its hint already has [`MAX_KEYS_PER_HINT`] keys.
    async fn create(&self, record: &KeyRecord) -> Result<()>;

    /// The record with this id.
    ///
    /// # Errors
    /// Backend failures only; a missing record is `Ok(None)`.
    async fn get(&self, id: &str) -> Result<Option<Arc<KeyRecord>>>;

    /// The record with this id when the backend can answer without waiting, because it holds its records in
    /// process memory: `Some(answer)`, the same answer [`KeyStore::get`] would give. `None` means "ask `get`"
    /// (the default). The verify path tries this first, so an in-memory backend costs no async call there.
    /// `now_micros` is the caller's reading of its clock (the verifier reads it once per verify), for a cache to
    /// judge what it holds without reading the clock again.
    fn get_now(&self, id: &str, now_micros: i64) -> Option<Option<Arc<KeyRecord>>> {
        let _ = (id, now_micros);
        None
    }

    /// The imported SHA-256 key with this hex digest.
    ///
    /// # Errors
    /// Backend failures only.
    async fn find_by_digest(&self, digest: &str) -> Result<Option<Arc<KeyRecord>>>;

    /// The imported keys with this hint digest (see [`KeyLookup::Hint`](crate::keys::KeyLookup::Hint)): at most
    /// [`MAX_KEYS_PER_HINT`].
    ///
    /// # Errors
    /// Backend failures only.
    async fn find_by_hint(&self, hint: &str) -> Result<Vec<Arc<KeyRecord>>>;

    /// Whether any key is found by a hint (an imported slow hash). While one is, a verify whose hint matches
    /// nothing runs a dummy KDF, so timing does not tell which hints exist.
    ///
    /// # Errors
    /// Backend failures only.
    async fn hint_keys_exist(&self) -> Result<bool>;

    /// The records passing `filter`, oldest first.
    ///
    /// # Errors
    /// Backend failures only.
    async fn list(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>>;

    /// Revokes a key. Idempotent: a second revoke keeps the first time.
    ///
    /// # Errors
    /// [`Error::NotFound`](crate::Error::NotFound) for an unknown id.
    async fn revoke(&self, id: &str, at: DateTime<Utc>) -> Result<()>;

    /// Revokes every unrevoked key of `org`, returning their ids.
    ///
    /// # Errors
    /// Backend failures only.
    async fn revoke_org(&self, org: &str, at: DateTime<Utc>) -> Result<Vec<String>>;

    /// Disables (`true`) or re-enables (`false`) a key.
    ///
    /// # Errors
    /// [`Error::NotFound`](crate::Error::NotFound) for an unknown id.
    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<()>;

    /// Changes the fields `patch` names ([`KeyPatch`](crate::keys::KeyPatch)) and nothing else, atomically;
    /// answers the record as changed. Every process's record cache learns of it (the change feed).
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] for a bad value ([`KeyPatch::validate`](crate::keys::KeyPatch::validate));
    /// [`crate::Error::NotFound`] for an unknown id.
    async fn update(&self, id: &str, patch: &crate::keys::KeyPatch) -> Result<Arc<KeyRecord>>;

    /// Replaces the hash of `id` if it is still `old`; returns whether it did.
    ///
    /// # Errors
    /// Backend failures only.
    async fn replace_hash(&self, id: &str, old: &KeyHash, new: &KeyHash) -> Result<bool>;

    /// Gives the generated key `id` a new hash in one atomic step, keeping the current one as its
    /// [`PreviousSecret`](crate::keys::PreviousSecret) until `previous_until` (`None`: the old secret stops at
    /// once). Any older previous secret is dropped.
    ///
    /// # Errors
    /// [`Error::NotFound`](crate::Error::NotFound) for an unknown id; [`Error::InvalidInput`](crate::Error::InvalidInput)
    /// for a revoked key or an imported one (only generated keys carry their id in the token).
    async fn rotate(
        &self,
        id: &str,
        new: &KeyHash,
        previous_until: Option<DateTime<Utc>>,
    ) -> Result<()>;

    /// Moves `last_used_at` forward to `at` (never backward).
    ///
    /// # Errors
    /// Backend failures only.
    async fn record_use(&self, id: &str, at: DateTime<Utc>) -> Result<()>;
}

/// What every backend checks before a rotation, inside its atomic step.
///
/// # Errors
/// [`Error::InvalidInput`](crate::Error::InvalidInput) for a revoked or an imported key.
pub(crate) fn check_rotatable(revoked: bool, generated: bool) -> Result<()> {
    if revoked {
        return Err(crate::Error::invalid(
            "key",
            "a revoked key cannot be rotated",
        ));
    }
    if !generated {
        return Err(crate::Error::invalid(
            "key",
            "only generated keys rotate (an imported key's token does not carry its id): issue a new key instead",
        ));
    }
    Ok(())
}
