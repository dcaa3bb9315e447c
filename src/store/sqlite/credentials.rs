//! [`CredentialStore`] on SQLite: sealed credentials only, never plaintext.

use async_trait::async_trait;

use super::{SqliteStore, db, micros};
use crate::credentials::{
    CredentialScope, CredentialStore, Provider, SealedCredential, StoredCredential,
};
use crate::error::Result;
use crate::store::sql::{provider, sealed, stored_credential};

#[async_trait]
impl CredentialStore for SqliteStore {
    async fn put(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        sealed: &SealedCredential,
    ) -> Result<()> {
        scope.validate()?;
        sqlx::query(
            "INSERT INTO keymeter_credentials (scope, owner, provider, sealed, updated_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (scope, owner, provider) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
        )
        .bind(scope.kind())
        .bind(scope.owner())
        .bind(provider.as_str())
        .bind(sealed.to_text())
        .bind(micros(self.clock.now()))
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn get(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
    ) -> Result<Option<SealedCredential>> {
        const GET: &str = "SELECT sealed FROM keymeter_credentials WHERE scope = ?1 AND owner = ?2 AND provider = ?3";
        // On the calling thread when it can (every proxied request reads one or two of these).
        let read = self.points.as_ref().and_then(|p| {
            let params: [&dyn rusqlite::ToSql; 3] =
                [&scope.kind(), &scope.owner(), &provider.as_str()];
            p.row(GET, &params, |r| sealed(r, "sealed"))
        });
        if let Some(read) = read {
            return read;
        }
        let row = sqlx::query(GET)
            .bind(scope.kind())
            .bind(scope.owner())
            .bind(provider.as_str())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|r| sealed(&r, "sealed")).transpose()
    }

    async fn delete(&self, scope: &CredentialScope, provider: &Provider) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM keymeter_credentials WHERE scope = ?1 AND owner = ?2 AND provider = ?3",
        )
        .bind(scope.kind())
        .bind(scope.owner())
        .bind(provider.as_str())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn delete_all(&self, scope: &CredentialScope) -> Result<u64> {
        let done = sqlx::query("DELETE FROM keymeter_credentials WHERE scope = ?1 AND owner = ?2")
            .bind(scope.kind())
            .bind(scope.owner())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn providers(&self, scope: &CredentialScope) -> Result<Vec<Provider>> {
        let rows = sqlx::query(
            "SELECT provider FROM keymeter_credentials WHERE scope = ?1 AND owner = ?2 ORDER BY provider",
        )
        .bind(scope.kind())
        .bind(scope.owner())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter().map(|r| provider(r, "provider")).collect()
    }

    async fn list(&self) -> Result<Vec<StoredCredential>> {
        let rows = sqlx::query("SELECT scope, owner, provider, sealed FROM keymeter_credentials ORDER BY scope, owner, provider")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(stored_credential).collect()
    }

    async fn replace(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        old: &SealedCredential,
        new: &SealedCredential,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE keymeter_credentials SET sealed = ?1, updated_at = ?2 \
             WHERE scope = ?3 AND owner = ?4 AND provider = ?5 AND sealed = ?6",
        )
        .bind(new.to_text())
        .bind(micros(self.clock.now()))
        .bind(scope.kind())
        .bind(scope.owner())
        .bind(provider.as_str())
        .bind(old.to_text())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn credential_version(&self) -> Result<Option<i64>> {
        const VERSION: &str = "SELECT version FROM keymeter_credential_version WHERE id = 1";
        let read = self
            .points
            .as_ref()
            .and_then(|p| p.row(VERSION, &[], |r| r.get::<i64>("version")));
        let version = match read {
            Some(read) => read?,
            None => sqlx::query_scalar::<_, i64>(VERSION)
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?,
        };
        Ok(Some(version.unwrap_or(0)))
    }
}
