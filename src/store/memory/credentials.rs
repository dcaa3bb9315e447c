//! [`CredentialStore`] in memory.

use std::collections::BTreeMap;
use std::sync::RwLockWriteGuard;
use std::sync::atomic::Ordering;

use async_trait::async_trait;

use crate::credentials::{
    CredentialScope, CredentialStore, Provider, SealedCredential, StoredCredential,
};
use crate::error::Result;
use crate::store::memory::MemoryStore;

impl MemoryStore {
    fn creds(
        &self,
    ) -> RwLockWriteGuard<'_, BTreeMap<(CredentialScope, Provider), SealedCredential>> {
        let guard = self.credentials.write().unwrap_or_else(|e| e.into_inner());
        // Every write takes this guard: move the version while holding it (a no-op write moves it too).
        self.credential_version.fetch_add(1, Ordering::Relaxed);
        guard
    }
}

#[async_trait]
impl CredentialStore for MemoryStore {
    async fn put(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        sealed: &SealedCredential,
    ) -> Result<()> {
        scope.validate()?;
        self.creds()
            .insert((scope.clone(), provider.clone()), sealed.clone());
        Ok(())
    }

    async fn get(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
    ) -> Result<Option<SealedCredential>> {
        let creds = self.credentials.read().unwrap_or_else(|e| e.into_inner());
        Ok(creds.get(&(scope.clone(), provider.clone())).cloned())
    }

    async fn delete(&self, scope: &CredentialScope, provider: &Provider) -> Result<bool> {
        Ok(self
            .creds()
            .remove(&(scope.clone(), provider.clone()))
            .is_some())
    }

    async fn delete_all(&self, scope: &CredentialScope) -> Result<u64> {
        let mut creds = self.creds();
        let before = creds.len();
        creds.retain(|(s, _), _| s != scope);
        Ok((before - creds.len()) as u64)
    }

    async fn providers(&self, scope: &CredentialScope) -> Result<Vec<Provider>> {
        let creds = self.credentials.read().unwrap_or_else(|e| e.into_inner());
        Ok(creds
            .keys()
            .filter(|(s, _)| s == scope)
            .map(|(_, p)| p.clone())
            .collect())
    }

    async fn list(&self) -> Result<Vec<StoredCredential>> {
        let creds = self.credentials.read().unwrap_or_else(|e| e.into_inner());
        Ok(creds
            .iter()
            .map(|((scope, provider), sealed)| StoredCredential {
                scope: scope.clone(),
                provider: provider.clone(),
                sealed: sealed.clone(),
            })
            .collect())
    }

    async fn replace(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        old: &SealedCredential,
        new: &SealedCredential,
    ) -> Result<bool> {
        let mut creds = self.creds();
        match creds.get_mut(&(scope.clone(), provider.clone())) {
            Some(current) if current == old => {
                *current = new.clone();
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn credential_version(&self) -> Result<Option<i64>> {
        Ok(Some(self.credential_version.load(Ordering::Relaxed)))
    }
}
