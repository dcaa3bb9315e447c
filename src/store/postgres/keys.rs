//! [`KeyStore`] on PostgreSQL.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{PostgresStore, db};
use crate::error::{Error, Result};
use crate::keys::store::check_rotatable;
use crate::keys::{KeyFilter, KeyHash, KeyLookup, KeyRecord, KeyStore, MAX_KEYS_PER_HINT};
use crate::store::sql::{ABSENT_HASH, KEY_COLUMNS, json_lists, key_record};

/// The advisory lock key creation takes, so the uniqueness and hint-bound checks and the insert cannot
/// interleave with another instance's ("keymeter-keys"-ish in ASCII; clear of an application's own numbers).
const CREATE_LOCK: i64 = 0x6b6d_5f6b_6579_7321;

impl PostgresStore {
    /// The key record matching `condition` (with one parameter, `$1`), if any.
    async fn one_record(&self, condition: &str, value: &str) -> Result<Option<Arc<KeyRecord>>> {
        let sql = format!("SELECT {KEY_COLUMNS} FROM keymeter_api_keys WHERE {condition}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref()
            .map(key_record)
            .transpose()
            .map(|r| r.map(Arc::new))
    }
}

async fn count(tx: &mut super::Tx, sql: &'static str, value: &str) -> Result<i64> {
    sqlx::query_scalar::<_, i64>(sql)
        .bind(value)
        .fetch_one(&mut **tx)
        .await
        .map_err(db)
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn create(&self, r: &KeyRecord) -> Result<()> {
        let (scopes, nets, models) = json_lists(r)?;
        transaction!(self, tx => {
            async {
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(CREATE_LOCK)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                if count(tx, "SELECT COUNT(*) FROM keymeter_api_keys WHERE id = $1", &r.id).await? > 0 {
                    return Err(Error::AlreadyExists { what: "key", id: r.id.clone() });
                }
                match &r.lookup {
                    KeyLookup::Id => {}
                    KeyLookup::Digest(d) => {
                        let sql = "SELECT COUNT(*) FROM keymeter_api_keys WHERE lookup_kind = 'digest' AND lookup_value = $1";
                        if count(tx, sql, d).await? > 0 {
                            return Err(Error::AlreadyExists { what: "a key with this hash", id: String::new() });
                        }
                    }
                    KeyLookup::Hint(h) => {
                        let sql = "SELECT COUNT(*) FROM keymeter_api_keys WHERE lookup_kind = 'hint' AND lookup_value = $1";
                        if count(tx, sql, h).await? >= MAX_KEYS_PER_HINT as i64 {
                            return Err(Error::HintFull { max: MAX_KEYS_PER_HINT });
                        }
                    }
                }
                sqlx::query(
                    "INSERT INTO keymeter_api_keys (id, name, owner, org, env, scopes, hash, lookup_kind, lookup_value, \
                     hint, created_at, expires_at, last_used_at, disabled, revoked_at, allowed_ips, rate_limit, metadata, \
                     previous_hash, previous_valid_until, allowed_models, tags, created_by) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23)",
                )
                .bind(&r.id)
                .bind(&r.name)
                .bind(&r.owner)
                .bind(&r.org)
                .bind(r.env.as_str())
                .bind(&scopes)
                .bind(r.hash.as_str())
                .bind(r.lookup.kind())
                .bind(r.lookup.value())
                .bind(&r.hint)
                .bind(r.created_at)
                .bind(r.expires_at)
                .bind(r.last_used_at)
                .bind(r.disabled)
                .bind(r.revoked_at)
                .bind(&nets)
                .bind(r.rate_limit.map(|l| l.to_string()))
                .bind(r.metadata.to_string())
                .bind(r.previous.as_ref().map(|p| p.hash.as_str().to_owned()))
                .bind(r.previous.as_ref().map(|p| p.valid_until))
                .bind(&models)
                .bind(crate::store::sql::tags_text(&r.tags))
                .bind(&r.created_by)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                Ok(())
            }
            .await
        })
    }

    async fn get(&self, id: &str) -> Result<Option<Arc<KeyRecord>>> {
        // An unknown id reads and decodes a stand-in row of the same shape, so a wrong secret (a real row decoded)
        // and an unknown id take the same time on the verify path.
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM keymeter_api_keys WHERE id = $1 UNION ALL \
             SELECT '', 'absent', 'absent', NULL, 'live', '[\"read\"]', $2, 'id', NULL, 'km_live_…', \
             'epoch'::timestamptz, NULL, NULL, FALSE, NULL, '[]', NULL, '{{}}', NULL, NULL, '[]', '[]', NULL \
             WHERE NOT EXISTS (SELECT 1 FROM keymeter_api_keys WHERE id = $1)"
        );
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .bind(ABSENT_HASH)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        let record = row.as_ref().map(key_record).transpose()?;
        Ok(record.filter(|r| !r.id.is_empty()).map(Arc::new))
    }

    async fn find_by_digest(&self, digest: &str) -> Result<Option<Arc<KeyRecord>>> {
        self.one_record("lookup_kind = 'digest' AND lookup_value = $1", digest)
            .await
    }

    async fn find_by_hint(&self, hint: &str) -> Result<Vec<Arc<KeyRecord>>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM keymeter_api_keys WHERE lookup_kind = 'hint' AND lookup_value = $1 \
             ORDER BY created_at, id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(hint)
            .bind(MAX_KEYS_PER_HINT as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(|r| key_record(r).map(Arc::new)).collect()
    }

    async fn hint_keys_exist(&self) -> Result<bool> {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM keymeter_api_keys WHERE lookup_kind = 'hint')",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(db)
    }

    async fn list(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>> {
        let sql = format!(
            "SELECT {KEY_COLUMNS} FROM keymeter_api_keys WHERE ($1::text IS NULL OR owner = $1) \
             AND ($2::text IS NULL OR org = $2) ORDER BY created_at, id LIMIT $3"
        );
        // Unnamed, so each run is planned for its filters (see the ledger's `filtered`).
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .persistent(false)
            .bind(&filter.owner)
            .bind(&filter.org)
            .bind(filter.limit.map(i64::from))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(key_record).collect()
    }

    async fn revoke(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        let done = sqlx::query(
            // The keys it created go with it, in the same statement.
            "UPDATE keymeter_api_keys SET revoked_at = COALESCE(revoked_at, $1) \
             WHERE id = $2 OR (created_by = $2 AND revoked_at IS NULL)",
        )
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::key_not_found(id));
        }
        Ok(())
    }

    async fn revoke_org(&self, org: &str, at: DateTime<Utc>) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "UPDATE keymeter_api_keys SET revoked_at = $1 WHERE org = $2 AND revoked_at IS NULL RETURNING id",
        )
        .bind(at)
        .bind(org)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut ids = rows
            .iter()
            .map(|r| r.try_get::<String, _>("id").map_err(db))
            .collect::<Result<Vec<_>>>()?;
        ids.sort();
        Ok(ids)
    }

    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<()> {
        let done = sqlx::query("UPDATE keymeter_api_keys SET disabled = $1 WHERE id = $2")
            .bind(disabled)
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::key_not_found(id));
        }
        Ok(())
    }

    async fn update(&self, id: &str, patch: &crate::keys::KeyPatch) -> Result<Arc<KeyRecord>> {
        patch.validate()?;
        let read = format!("SELECT {KEY_COLUMNS} FROM keymeter_api_keys WHERE id = $1 FOR UPDATE");
        transaction!(self, tx => {
            async {
                let row = sqlx::query(sqlx::AssertSqlSafe(read.as_str()))
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db)?;
                let Some(row) = row else {
                    return Err(Error::key_not_found(id));
                };
                let changed = patch.apply(&key_record(&row)?);
                let (scopes, nets, models) = json_lists(&changed)?;
                sqlx::query(
                    "UPDATE keymeter_api_keys SET name = $1, scopes = $2, allowed_ips = $3, allowed_models = $4, \
                     metadata = $5, expires_at = $6, disabled = $7, tags = $9 WHERE id = $8",
                )
                .bind(&changed.name)
                .bind(&scopes)
                .bind(&nets)
                .bind(&models)
                .bind(changed.metadata.to_string())
                .bind(changed.expires_at)
                .bind(changed.disabled)
                .bind(id)
                .bind(crate::store::sql::tags_text(&changed.tags))
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                Ok(Arc::new(changed))
            }
            .await
        })
    }

    async fn replace_hash(&self, id: &str, old: &KeyHash, new: &KeyHash) -> Result<bool> {
        let done =
            sqlx::query("UPDATE keymeter_api_keys SET hash = $1 WHERE id = $2 AND hash = $3")
                .bind(new.as_str())
                .bind(id)
                .bind(old.as_str())
                .execute(&self.pool)
                .await
                .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn rotate(
        &self,
        id: &str,
        new: &KeyHash,
        previous_until: Option<DateTime<Utc>>,
    ) -> Result<()> {
        // The row lock keeps the check and the swap from interleaving with a revoke or another rotation.
        transaction!(self, tx => {
            async {
                let row = sqlx::query("SELECT revoked_at, lookup_kind FROM keymeter_api_keys WHERE id = $1 FOR UPDATE")
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db)?
                    .ok_or_else(|| Error::key_not_found(id))?;
                let revoked = row.try_get::<Option<DateTime<Utc>>, _>("revoked_at").map_err(db)?.is_some();
                let generated = row.try_get::<String, _>("lookup_kind").map_err(db)? == "id";
                check_rotatable(revoked, generated)?;
                // The right-hand sides read the row as it was: the old hash becomes the previous one.
                sqlx::query(
                    "UPDATE keymeter_api_keys SET previous_hash = CASE WHEN $2::timestamptz IS NULL THEN NULL ELSE hash END, \
                     previous_valid_until = $2, hash = $3 WHERE id = $1",
                )
                .bind(id)
                .bind(previous_until)
                .bind(new.as_str())
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                Ok(())
            }
            .await
        })
    }

    async fn record_use(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE keymeter_api_keys SET last_used_at = $1 WHERE id = $2 AND (last_used_at IS NULL OR last_used_at < $1)",
        )
        .bind(at)
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }
}
