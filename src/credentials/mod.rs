//! Outbound provider credentials ("bring your own key"): providers and key shapes, the AES-256-GCM
//! [`Vault`], the ciphertext-only [`CredentialStore`] (and its in-process [`CachedCredentialStore`]), and the
//! [`CredentialResolver`] (user → system → error).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keymeter::credentials::{set_key, CredentialResolver, CredentialScope, CredentialSource, MasterKey,
//!                             MasterKeyRing, Provider, Vault};
//! use keymeter::env::Environment;
//! use keymeter::random::OsRandom;
//! use keymeter::store::MemoryStore;
//!
//! let store = Arc::new(MemoryStore::new());
//! let vault = Arc::new(Vault::new(MasterKeyRing::new(vec![MasterKey::generate("k1", &OsRandom)?])?));
//! let anthropic = Provider::anthropic();
//! set_key(&*store, &vault, &CredentialScope::System, &anthropic, "sk-ant-api03-operator-key-0000000000").await?;
//! set_key(&*store, &vault, &CredentialScope::user("alice")?, &anthropic, "sk-ant-api03-alice-own-key-111111111").await?;
//!
//! let resolver = CredentialResolver::new(store, vault, Environment::Production);
//! assert_eq!(resolver.resolve("alice", &anthropic).await?.source, CredentialSource::User);
//! assert_eq!(resolver.resolve("bob", &anthropic).await?.source, CredentialSource::System);
//! assert!(resolver.resolve("bob", &Provider::openai()).await.is_err());
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

pub mod cache;
pub mod provider;
pub mod resolver;
pub mod store;
pub mod vault;

pub use cache::CachedCredentialStore;
pub use provider::Provider;
pub use resolver::{
    CredentialResolver, CredentialSource, ProviderStatus, RequestCredentials, ResolvedCredential,
    ResolverPolicy, SystemKeySource,
};
pub use store::{CredentialStore, StoredCredential};
pub use vault::{CredentialScope, MasterKey, MasterKeyRing, SealedCredential, Vault, VaultError};

use crate::error::Result;

/// Checks `key`'s shape for `provider` (refusing placeholders), seals it and stores it for `scope`.
///
/// # Errors
/// [`crate::Error::InvalidCredential`] for a malformed or placeholder key (the message never holds the key);
/// backend failures.
pub async fn set_key(
    store: &dyn CredentialStore,
    vault: &Vault,
    scope: &CredentialScope,
    provider: &Provider,
    key: &str,
) -> Result<()> {
    provider.check_key(key)?;
    let sealed = vault.seal(scope, provider, key)?;
    store.put(scope, provider, &sealed).await
}

/// What a [`rewrap`] did.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct RewrapReport {
    /// Credentials looked at.
    pub total: usize,
    /// Credentials re-encrypted under the active key.
    pub rewrapped: usize,
    /// Credentials changed by someone else meanwhile (left as they were; run again).
    pub skipped: usize,
    /// Credentials that could not be decrypted (left as they were), by row.
    pub unreadable: Vec<UnreadableCredential>,
}

/// A stored credential [`rewrap`] could not decrypt: which row, and why (never any key material).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnreadableCredential {
    /// `user` or `system`.
    pub scope: &'static str,
    /// The owner, for a user's key.
    pub owner: Option<String>,
    /// The provider.
    pub provider: Provider,
    /// Why it could not be decrypted.
    pub reason: String,
}

/// Re-encrypts every stored credential that is not under the active master key.
///
/// Each credential is swapped with a compare-and-swap on its own, so an interrupted rewrap leaves every row
/// either old (still readable with the old key, which stays in the ring) or new: nothing is lost; run it again.
/// A row that does not decrypt (a master key missing from the ring, a damaged row) is named in
/// [`RewrapReport::unreadable`], and every other row is still rewrapped.
///
/// # Errors
/// Backend failures.
pub async fn rewrap(store: &dyn CredentialStore, vault: &Vault) -> Result<RewrapReport> {
    rewrap_with_progress(store, vault, |_, _| {}).await
}

/// [`rewrap`], telling `progress` the credentials done so far and how many there are after each one.
///
/// # Errors
/// As [`rewrap`].
pub async fn rewrap_with_progress(
    store: &dyn CredentialStore,
    vault: &Vault,
    mut progress: impl FnMut(u64, u64),
) -> Result<RewrapReport> {
    let mut report = RewrapReport::default();
    let items = store.list().await?;
    let count = items.len() as u64;
    for item in items {
        progress(report.total as u64, count);
        report.total += 1;
        if !vault.needs_rewrap(&item.sealed) {
            continue;
        }
        let plain = match vault.open(&item.scope, &item.provider, &item.sealed) {
            Ok(plain) => plain,
            Err(e) => {
                report.unreadable.push(UnreadableCredential {
                    scope: item.scope.kind(),
                    owner: match &item.scope {
                        CredentialScope::User(o) => Some(o.clone()),
                        CredentialScope::System => None,
                    },
                    provider: item.provider.clone(),
                    reason: e.to_string(),
                });
                continue;
            }
        };
        let fresh = vault.seal(
            &item.scope,
            &item.provider,
            secrecy::ExposeSecret::expose_secret(&plain),
        )?;
        if store
            .replace(&item.scope, &item.provider, &item.sealed, &fresh)
            .await?
        {
            report.rewrapped += 1;
        } else {
            report.skipped += 1;
        }
    }
    progress(count, count);
    Ok(report)
}
