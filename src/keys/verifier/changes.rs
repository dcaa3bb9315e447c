//! Key changes through the [`Verifier`] (revoke, disable, enable, update, rotate) that also drop the tokens it
//! verified for them, and the lookup of a leaked token's key.

use super::*;

impl Verifier {
    /// The key whose secret `token` is, whatever its state (revoked, disabled, expired, either environment): what a
    /// report of a leaked token asks. Generated tokens only, checked offline first (shape, checksum, a configured
    /// prefix), then matched against the key's secret, or the one a rotation replaced while its grace runs.
    /// Charges no limit and counts no statistic. `None` when it is none of this store's keys.
    ///
    /// # Errors
    /// Store failures.
    pub async fn key_of_token(&self, token: &str) -> Result<Option<Arc<KeyRecord>>> {
        let Ok(parsed) = token::parse(token) else {
            return Ok(None);
        };
        if !self.config.prefixes.iter().any(|p| p == parsed.prefix) {
            return Ok(None);
        }
        let Some(record) = self.store.get(parsed.id).await? else {
            return Ok(None);
        };
        if record.lookup != KeyLookup::Id {
            return Ok(None);
        }
        let matched = self.hasher.verify(token.as_bytes(), &record.hash)?
            || self.matches_previous(token, &record, self.clock.now_micros())?;
        Ok(matched.then_some(record))
    }

    /// Revokes a key and the keys it created (`me/keys`), and drops their cached verifications.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown id; store failures.
    pub async fn revoke(&self, id: &str) -> Result<()> {
        let owner = self.store.get(id).await?.map(|r| r.owner.clone());
        self.store.revoke(id, self.clock.now()).await?;
        self.cache.invalidate(id);
        // The keys it created went with it (always its owner's): their cached verifications go too.
        // The revocation is stored: a failure to read them here must not report it failed (the change feed and
        // the cache's TTL still catch up).
        if let Some(owner) = owner {
            match self.store.list(&KeyFilter::new().owner(owner)).await {
                Ok(keys) => keys
                    .iter()
                    .filter(|k| k.created_by.as_deref() == Some(id))
                    .for_each(|k| self.cache.invalidate(&k.id)),
                Err(e) => tracing::warn!(key_id = %id, error = %e,
                    "revoked, but the keys it created could not be read to drop their cached verifications"),
            }
        }
        Ok(())
    }

    /// Revokes every key of `org` and drops their cached verifications; returns the ids revoked.
    ///
    /// # Errors
    /// Store failures.
    pub async fn revoke_org(&self, org: &str) -> Result<Vec<String>> {
        let ids = self.store.revoke_org(org, self.clock.now()).await?;
        for id in &ids {
            self.cache.invalidate(id);
        }
        Ok(ids)
    }

    /// Disables a key and drops its cached verifications.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown id; store failures.
    pub async fn disable(&self, id: &str) -> Result<()> {
        self.store.set_disabled(id, true).await?;
        self.cache.invalidate(id);
        Ok(())
    }

    /// Changes a key's fields ([`KeyStore::update`]) and drops its cached verifications, so new scopes, networks
    /// or an expiry hold from the next request.
    ///
    /// # Errors
    /// As [`KeyStore::update`].
    pub async fn update(&self, id: &str, patch: &crate::keys::KeyPatch) -> Result<Arc<KeyRecord>> {
        let changed = self.store.update(id, patch).await?;
        self.cache.invalidate(id);
        Ok(changed)
    }

    /// Rotates a key through `issuer` ([`KeyIssuer::rotate`](crate::keys::KeyIssuer::rotate)) and drops its
    /// cached verifications.
    ///
    /// # Errors
    /// As [`KeyIssuer::rotate`](crate::keys::KeyIssuer::rotate).
    pub async fn rotate(
        &self,
        issuer: &crate::keys::KeyIssuer,
        id: &str,
        grace: Duration,
    ) -> Result<crate::keys::RotatedKey> {
        let rotated = issuer.rotate(id, grace).await?;
        self.cache.invalidate(id);
        Ok(rotated)
    }

    /// Enables a disabled key.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown id; store failures.
    pub async fn enable(&self, id: &str) -> Result<()> {
        self.store.set_disabled(id, false).await
    }
}
