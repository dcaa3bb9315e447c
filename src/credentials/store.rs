//! The [`CredentialStore`] trait: where sealed provider keys live. It only ever sees ciphertext.

use async_trait::async_trait;

use crate::credentials::provider::Provider;
use crate::credentials::vault::{CredentialScope, SealedCredential};
use crate::error::Result;

/// A stored credential with its place, for [`CredentialStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCredential {
    /// Whose it is.
    pub scope: CredentialScope,
    /// For which provider.
    pub provider: Provider,
    /// The ciphertext.
    pub sealed: SealedCredential,
}

/// Storage for sealed provider keys, one per (scope, provider). Object safe: `Arc<dyn CredentialStore>` works.
#[async_trait]
pub trait CredentialStore: Send + Sync + std::fmt::Debug {
    /// Stores (or replaces) the key of `scope` for `provider`.
    ///
    /// # Errors
    /// Backend failures.
    async fn put(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        sealed: &SealedCredential,
    ) -> Result<()>;

    /// The key of `scope` for `provider`.
    ///
    /// # Errors
    /// Backend failures (including a stored value that is not a sealed credential).
    async fn get(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
    ) -> Result<Option<SealedCredential>>;

    /// Deletes the key of `scope` for `provider`; returns whether there was one.
    ///
    /// # Errors
    /// Backend failures.
    async fn delete(&self, scope: &CredentialScope, provider: &Provider) -> Result<bool>;

    /// Deletes every key of `scope`; returns how many.
    ///
    /// # Errors
    /// Backend failures.
    async fn delete_all(&self, scope: &CredentialScope) -> Result<u64>;

    /// The providers `scope` has a key for, sorted.
    ///
    /// # Errors
    /// Backend failures.
    async fn providers(&self, scope: &CredentialScope) -> Result<Vec<Provider>>;

    /// Every stored credential (for `rewrap`).
    ///
    /// # Errors
    /// Backend failures.
    async fn list(&self) -> Result<Vec<StoredCredential>>;

    /// Replaces the key of `scope` for `provider` only if it is still `old`; returns whether it did.
    ///
    /// # Errors
    /// Backend failures.
    async fn replace(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        old: &SealedCredential,
        new: &SealedCredential,
    ) -> Result<bool>;

    /// A number that moves whenever any credential changes, by any writer (every process sharing the store):
    /// what lets a [`CachedCredentialStore`](crate::credentials::CachedCredentialStore) keep answers. `None`
    /// (the default) for a backend that keeps none; a cache then keeps an answer at most a second.
    ///
    /// # Errors
    /// Backend failures.
    async fn credential_version(&self) -> Result<Option<i64>> {
        Ok(None)
    }
}
