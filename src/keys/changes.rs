//! Key change feeds: how an instance learns that a key was revoked, disabled, enabled, rotated or re-hashed by
//! another instance, so a [`CachedKeyStore`](crate::keys::CachedKeyStore) never serves a stale record for long.
//!
//! Each database publishes every such change in the transaction that makes it (a trigger on the key table, so
//! every writer publishes, whatever its version): PostgreSQL through `LISTEN/NOTIFY`, SQLite through a change
//! table polled at most once a second. A feed that may have missed changes (its connection dropped) says so with
//! [`KeyChanges::Lost`], and the cache forgets everything.

use async_trait::async_trait;

use crate::error::Result;

/// What a poll of a [`KeyChangeFeed`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChanges {
    /// The ids of the keys changed since the last poll (empty: nothing changed).
    Keys(Vec<String>),
    /// The feed may have missed changes (its connection dropped, or it fell too far behind): forget everything.
    Lost,
}

/// A source of key changes made anywhere. Object safe: `Arc<dyn KeyChangeFeed>` works.
#[async_trait]
pub trait KeyChangeFeed: Send + Sync + std::fmt::Debug {
    /// The changes since the previous poll (since the feed was made, for the first).
    ///
    /// # Errors
    /// Backend failures; the caller then treats the feed as [`KeyChanges::Lost`].
    async fn poll(&self) -> Result<KeyChanges>;

    /// How often a cache may poll: a second by default (a feed that reads its database). A feed whose poll only
    /// drains memory says less, so that a change is seen well within the second a cache may lag, notification
    /// delay included.
    fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_secs(1)
    }
}
