//! The SQLite backend (feature `sqlite`): the embedded default for one machine.
//!
//! Opens the database in WAL mode with a busy timeout, so readers never block the writer and concurrent writers
//! (other processes included) wait their turn instead of failing. Migrations are embedded and run on connect.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::Row;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};

use crate::credentials::{
    CredentialScope, CredentialStore, Provider, SealedCredential, StoredCredential,
};
use crate::error::{Error, Result};
use crate::keys::{
    KeyEnv, KeyFilter, KeyHash, KeyLookup, KeyRecord, KeyStore, MAX_KEYS_PER_HINT, Scope,
};

/// SQLite errors stay private to this module; callers see [`Error::Store`] (or a more precise variant).
pub(crate) fn db(e: sqlx::Error) -> Error {
    Error::Store {
        store: "sqlite",
        source: Box::new(e),
    }
}

pub(crate) fn corrupt(what: &str) -> Error {
    Error::Store {
        store: "sqlite",
        source: format!("stored row has an invalid {what}").into(),
    }
}

pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

pub(crate) fn from_micros(v: Option<i64>) -> Result<Option<DateTime<Utc>>> {
    v.map(|m| DateTime::from_timestamp_micros(m).ok_or_else(|| corrupt("timestamp")))
        .transpose()
}

/// A store in a SQLite database.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` (`sqlite://path/to.db`, `sqlite:path`, or
    /// `sqlite::memory:`) and runs migrations.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL; [`Error::Store`] when the database cannot be opened or migrated.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::Config(format!("invalid SQLite URL {url:?}: {e}")))?;
        // Each connection to `:memory:` is its own database: keep one.
        let max = if url.contains(":memory:") { 1 } else { 8 };
        SqliteStore::connect_with(options, max).await
    }

    /// Opens with explicit options and pool size, and runs migrations.
    ///
    /// # Errors
    /// [`Error::Store`] when the database cannot be opened or migrated.
    pub async fn connect_with(options: SqliteConnectOptions, max_connections: u32) -> Result<Self> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true)
            // Reads through a shared memory map and a larger page cache keep busy ledgers out of read/write
            // syscalls (profiling showed half the batch-insert time in the kernel with the defaults).
            .pragma("mmap_size", "268435456")
            .pragma("cache_size", "-16384");
        let pool = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await
            .map_err(db)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&pool)
            .await
            .map_err(|e| Error::Store {
                store: "sqlite",
                source: Box::new(e),
            })?;
        Ok(SqliteStore { pool })
    }

    /// The connection pool, for callers that keep their own tables beside keymeter's.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes the pool, checkpointing the WAL.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl SqliteStore {
    /// The key record matching `condition` (with one parameter, `value`), if any.
    async fn one_record(&self, condition: &str, value: &str) -> Result<Option<Arc<KeyRecord>>> {
        let sql = format!("SELECT {COLUMNS} FROM api_keys WHERE {condition}");
        let row = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(value)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.as_ref()
            .map(row_to_record)
            .transpose()
            .map(|r| r.map(Arc::new))
    }
}

fn row_to_record(row: &SqliteRow) -> Result<KeyRecord> {
    let get_s = |c: &str| row.try_get::<String, _>(c).map_err(db);
    let scopes: Vec<String> =
        serde_json::from_str(&get_s("scopes")?).map_err(|_| corrupt("scope list"))?;
    let scopes = scopes
        .iter()
        .map(|s| Scope::new(s))
        .collect::<Result<Vec<_>>>()
        .map_err(|_| corrupt("scope"))?;
    let allowed_ips: Vec<ipnet::IpNet> =
        serde_json::from_str(&get_s("allowed_ips")?).map_err(|_| corrupt("network list"))?;
    let rate_limit = row
        .try_get::<Option<String>, _>("rate_limit")
        .map_err(db)?
        .map(|s| s.parse())
        .transpose()
        .map_err(|_| corrupt("rate limit"))?;
    let lookup = KeyLookup::from_parts(
        &get_s("lookup_kind")?,
        row.try_get::<Option<String>, _>("lookup_value")
            .map_err(db)?,
    )
    .map_err(|_| corrupt("lookup"))?;
    Ok(KeyRecord {
        id: get_s("id")?,
        name: get_s("name")?,
        owner: get_s("owner")?,
        org: row.try_get("org").map_err(db)?,
        env: KeyEnv::from_str(&get_s("env")?).map_err(|_| corrupt("environment"))?,
        scopes,
        hash: KeyHash::parse(&get_s("hash")?).map_err(|_| corrupt("hash"))?,
        lookup,
        hint: get_s("hint")?,
        created_at: from_micros(Some(row.try_get("created_at").map_err(db)?))?
            .ok_or_else(|| corrupt("timestamp"))?,
        expires_at: from_micros(row.try_get("expires_at").map_err(db)?)?,
        last_used_at: from_micros(row.try_get("last_used_at").map_err(db)?)?,
        disabled: row.try_get::<bool, _>("disabled").map_err(db)?,
        revoked_at: from_micros(row.try_get("revoked_at").map_err(db)?)?,
        allowed_ips,
        rate_limit,
        metadata: serde_json::from_str(&get_s("metadata")?).map_err(|_| corrupt("metadata"))?,
    })
}

const COLUMNS: &str = "id, name, owner, org, env, scopes, hash, lookup_kind, lookup_value, hint, created_at, \
                       expires_at, last_used_at, disabled, revoked_at, allowed_ips, rate_limit, metadata";

#[async_trait]
impl KeyStore for SqliteStore {
    async fn create(&self, r: &KeyRecord) -> Result<()> {
        let scopes = serde_json::to_string(&r.scopes)
            .map_err(|e| Error::invalid("scopes", e.to_string()))?;
        let nets = serde_json::to_string(&r.allowed_ips)
            .map_err(|e| Error::invalid("ip networks", e.to_string()))?;
        // One statement: the hint bound is checked and the row inserted atomically.
        let result = sqlx::query(
            "INSERT INTO api_keys (id, name, owner, org, env, scopes, hash, lookup_kind, lookup_value, hint, \
             created_at, expires_at, last_used_at, disabled, revoked_at, allowed_ips, rate_limit, metadata) \
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18 \
             WHERE ?8 <> 'hint' OR (SELECT COUNT(*) FROM api_keys WHERE lookup_kind = 'hint' AND lookup_value = ?9) < ?19",
        )
        .bind(&r.id)
        .bind(&r.name)
        .bind(&r.owner)
        .bind(&r.org)
        .bind(r.env.as_str())
        .bind(scopes)
        .bind(r.hash.as_str())
        .bind(r.lookup.kind())
        .bind(r.lookup.value())
        .bind(&r.hint)
        .bind(micros(r.created_at))
        .bind(r.expires_at.map(micros))
        .bind(r.last_used_at.map(micros))
        .bind(r.disabled)
        .bind(r.revoked_at.map(micros))
        .bind(nets)
        .bind(r.rate_limit.map(|l| l.to_string()))
        .bind(r.metadata.to_string())
        .bind(MAX_KEYS_PER_HINT as i64)
        .execute(&self.pool)
        .await;
        match result {
            Ok(done) if done.rows_affected() == 1 => Ok(()),
            Ok(_) => Err(Error::HintFull {
                hint: r.lookup.value().unwrap_or_default().to_owned(),
                max: MAX_KEYS_PER_HINT,
            }),
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::AlreadyExists {
                what: if e.message().contains("api_keys.id") {
                    "key"
                } else {
                    "key digest"
                },
                id: if e.message().contains("api_keys.id") {
                    r.id.clone()
                } else {
                    r.lookup.value().unwrap_or_default().to_owned()
                },
            }),
            Err(e) => Err(db(e)),
        }
    }

    async fn get(&self, id: &str) -> Result<Option<Arc<KeyRecord>>> {
        self.one_record("id = ?1", id).await
    }

    async fn find_by_digest(&self, digest: &str) -> Result<Option<Arc<KeyRecord>>> {
        self.one_record("lookup_kind = 'digest' AND lookup_value = ?1", digest)
            .await
    }

    async fn find_by_hint(&self, hint: &str) -> Result<Vec<Arc<KeyRecord>>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM api_keys WHERE lookup_kind = 'hint' AND lookup_value = ?1 \
             ORDER BY created_at, id LIMIT ?2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(hint)
            .bind(MAX_KEYS_PER_HINT as i64)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| row_to_record(r).map(Arc::new))
            .collect()
    }

    async fn list(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>> {
        let sql = format!(
            "SELECT {COLUMNS} FROM api_keys WHERE (?1 IS NULL OR owner = ?1) AND (?2 IS NULL OR org = ?2) \
             ORDER BY created_at, id"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(&filter.owner)
            .bind(&filter.org)
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter().map(row_to_record).collect()
    }

    async fn revoke(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        let done =
            sqlx::query("UPDATE api_keys SET revoked_at = COALESCE(revoked_at, ?1) WHERE id = ?2")
                .bind(micros(at))
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
            "UPDATE api_keys SET revoked_at = ?1 WHERE org = ?2 AND revoked_at IS NULL RETURNING id",
        )
        .bind(micros(at))
        .bind(org)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| r.try_get::<String, _>("id").map_err(db))
            .collect()
    }

    async fn set_disabled(&self, id: &str, disabled: bool) -> Result<()> {
        let done = sqlx::query("UPDATE api_keys SET disabled = ?1 WHERE id = ?2")
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

    async fn replace_hash(&self, id: &str, old: &KeyHash, new: &KeyHash) -> Result<bool> {
        let done = sqlx::query("UPDATE api_keys SET hash = ?1 WHERE id = ?2 AND hash = ?3")
            .bind(new.as_str())
            .bind(id)
            .bind(old.as_str())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }

    async fn record_use(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query(
            "UPDATE api_keys SET last_used_at = ?1 WHERE id = ?2 AND (last_used_at IS NULL OR last_used_at < ?1)",
        )
        .bind(micros(at))
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(())
    }
}

fn row_to_sealed(text: &str) -> Result<SealedCredential> {
    SealedCredential::parse(text).map_err(|_| corrupt("sealed credential"))
}

#[async_trait]
impl CredentialStore for SqliteStore {
    async fn put(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        sealed: &SealedCredential,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO credentials (scope, owner, provider, sealed, updated_at) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (scope, owner, provider) DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
        )
        .bind(scope.kind())
        .bind(scope.owner())
        .bind(provider.as_str())
        .bind(sealed.to_text())
        .bind(micros(Utc::now()))
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
        let row = sqlx::query(
            "SELECT sealed FROM credentials WHERE scope = ?1 AND owner = ?2 AND provider = ?3",
        )
        .bind(scope.kind())
        .bind(scope.owner())
        .bind(provider.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(db)?;
        row.map(|r| row_to_sealed(&r.try_get::<String, _>("sealed").map_err(db)?))
            .transpose()
    }

    async fn delete(&self, scope: &CredentialScope, provider: &Provider) -> Result<bool> {
        let done = sqlx::query(
            "DELETE FROM credentials WHERE scope = ?1 AND owner = ?2 AND provider = ?3",
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
        let done = sqlx::query("DELETE FROM credentials WHERE scope = ?1 AND owner = ?2")
            .bind(scope.kind())
            .bind(scope.owner())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(done.rows_affected())
    }

    async fn providers(&self, scope: &CredentialScope) -> Result<Vec<Provider>> {
        let rows = sqlx::query(
            "SELECT provider FROM credentials WHERE scope = ?1 AND owner = ?2 ORDER BY provider",
        )
        .bind(scope.kind())
        .bind(scope.owner())
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|r| {
                Provider::new(&r.try_get::<String, _>("provider").map_err(db)?)
                    .map_err(|_| corrupt("provider"))
            })
            .collect()
    }

    async fn list(&self) -> Result<Vec<StoredCredential>> {
        let rows = sqlx::query("SELECT scope, owner, provider, sealed FROM credentials ORDER BY scope, owner, provider")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|r| {
                let get = |c: &str| r.try_get::<String, _>(c).map_err(db);
                let scope = match get("scope")?.as_str() {
                    "system" => CredentialScope::System,
                    _ => CredentialScope::User(get("owner")?),
                };
                Ok(StoredCredential {
                    scope,
                    provider: Provider::new(&get("provider")?).map_err(|_| corrupt("provider"))?,
                    sealed: row_to_sealed(&get("sealed")?)?,
                })
            })
            .collect()
    }

    async fn replace(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        old: &SealedCredential,
        new: &SealedCredential,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE credentials SET sealed = ?1, updated_at = ?2 \
             WHERE scope = ?3 AND owner = ?4 AND provider = ?5 AND sealed = ?6",
        )
        .bind(new.to_text())
        .bind(micros(Utc::now()))
        .bind(scope.kind())
        .bind(scope.owner())
        .bind(provider.as_str())
        .bind(old.to_text())
        .execute(&self.pool)
        .await
        .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }
}
