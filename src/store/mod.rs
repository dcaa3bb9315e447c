//! Storage backends. Each implements every trait it can; features gate the ones with dependencies.
//!
//! | backend | feature | URL | for |
//! | --- | --- | --- | --- |
//! | [`MemoryStore`] | always | `memory:` | tests, single-process services, caches |
//! | `SqliteStore` | `sqlite` | `sqlite://PATH`, `sqlite::memory:` | the embedded default for one machine |
//! | `RedisLimiter` | `redis` | `redis://HOST:PORT` | rate-limit buckets shared by several instances (a [`crate::limits::RateLimiter`] only) |
//! | `env_file::EnvFile` | `env-file` | | development system keys in a `.env` file (a plaintext source, not a [`CredentialStore`]) |
//!
//! [`connect`] picks the backend by the URL's scheme and hands back one [`Store`]: every trait at once, as
//! `Arc<dyn Store>`, which converts to `Arc<dyn KeyStore>`, `Arc<dyn CredentialStore>` or `Arc<dyn Ledger>`
//! wherever one of them is wanted.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keymeter::keys::KeyStore;
//!
//! let store = keymeter::store::connect("memory:").await?;
//! assert_eq!(store.backend(), "memory");
//! let keys: Arc<dyn KeyStore> = store.clone();
//! assert!(keys.get("no-such-id").await?.is_none());
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

#[cfg(feature = "env-file")]
#[cfg_attr(docsrs, doc(cfg(feature = "env-file")))]
pub mod env_file;
pub mod memory;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub mod redis;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

#[cfg(feature = "env-file")]
pub use env_file::EnvFile;
pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::PostgresStore;
#[cfg(feature = "redis")]
pub use redis::RedisLimiter;
#[cfg(feature = "sqlite")]
pub use sqlite::SqliteStore;

use crate::alerts::Outbox;
use crate::credentials::CredentialStore;
use crate::error::{Error, Result};
use crate::keys::KeyStore;
use crate::keys::changes::KeyChangeFeed;
use crate::ledger::Ledger;
use crate::limits::{BucketStore, LimitStore, RateLimiter, SlotStore};
use crate::stats::StatsStore;

/// A backend that keeps keys, credentials, the ledger, rate limits (and a local limiter's bucket states), concurrency slots, key statistics and the
/// alerts' outbox together: what [`connect`] returns.
#[async_trait]
pub trait Store:
    KeyStore
    + CredentialStore
    + Ledger
    + LimitStore
    + RateLimiter
    + BucketStore
    + SlotStore
    + StatsStore
    + Outbox
{
    /// The backend's name: `memory`, `sqlite`, `postgres`.
    fn backend(&self) -> &'static str;

    /// A feed of the key changes made by any process sharing this store, for a
    /// [`CachedKeyStore`](crate::keys::CachedKeyStore): PostgreSQL `LISTEN/NOTIFY`, SQLite's change table. `None`
    /// for a store no other process shares (memory).
    ///
    /// # Errors
    /// Backend failures (the listener cannot connect).
    async fn key_changes(&self) -> Result<Option<Arc<dyn KeyChangeFeed>>> {
        Ok(None)
    }

    /// Closes connections and flushes what the backend buffers (SQLite checkpoints its WAL). The store must not
    /// be used afterwards.
    async fn close(&self) {}

    /// Whether the store answers now (a readiness probe): one trivial query on a database, nothing in memory.
    ///
    /// # Errors
    /// Backend failures (the database cannot be reached).
    async fn ping(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl Store for MemoryStore {
    fn backend(&self) -> &'static str {
        "memory"
    }
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn key_changes(&self) -> Result<Option<Arc<dyn KeyChangeFeed>>> {
        Ok(Some(Arc::new(SqliteStore::key_changes(self).await?)))
    }

    async fn close(&self) {
        SqliteStore::close(self).await;
    }

    async fn ping(&self) -> Result<()> {
        SqliteStore::ping(self).await
    }
}

#[cfg(feature = "postgres")]
#[async_trait]
impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn key_changes(&self) -> Result<Option<Arc<dyn KeyChangeFeed>>> {
        Ok(Some(Arc::new(PostgresStore::key_changes(self).await?)))
    }

    async fn close(&self) {
        PostgresStore::close(self).await;
    }

    async fn ping(&self) -> Result<()> {
        PostgresStore::ping(self).await
    }
}

/// Opens the store at `url`, choosing the backend by its scheme: `memory:`, `sqlite:` (feature `sqlite`),
/// `postgres:`/`postgresql:` (feature `postgres`).
/// Migrations run on connect.
///
/// # Errors
/// [`Error::Config`] for an unknown scheme or one whose feature is off (the message names the scheme only,
/// never the rest of the URL, which may hold a password); backend failures.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    let scheme = url.split_once(':').map_or("", |(s, _)| s);
    match scheme {
        "memory" => Ok(Arc::new(MemoryStore::new())),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(SqliteStore::connect(url).await?)),
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => Err(Error::Config(
            "a sqlite: store needs keymeter's `sqlite` feature".into(),
        )),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(PostgresStore::connect(url).await?)),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(Error::Config(
            "a postgres: store needs keymeter's `postgres` feature".into(),
        )),
        _ => Err(Error::Config(format!(
            "unsupported store URL scheme {:?}: use sqlite://PATH, postgres://… or memory:",
            scheme.chars().take(16).collect::<String>()
        ))),
    }
}
