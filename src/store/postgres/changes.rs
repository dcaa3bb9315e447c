//! The PostgreSQL [`KeyChangeFeed`]: a `LISTEN` connection on the channel the key table's trigger notifies
//! (migration 0006), read by a background task into a bounded queue that [`KeyChangeFeed::poll`] drains.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;

use super::db;
use crate::error::Result;
use crate::keys::changes::{KeyChangeFeed, KeyChanges};

/// The channel the trigger notifies.
const CHANNEL: &str = "keymeter_keys";

/// Changes queued beyond this many are dropped and reported as [`KeyChanges::Lost`].
const QUEUE: usize = 10_000;

#[derive(Debug)]
pub(super) struct PgKeyFeed {
    queue: tokio::sync::Mutex<mpsc::Receiver<String>>,
    /// Set when the listener may have missed notifications (connection lost, queue full); read and reset by poll.
    lost: Arc<AtomicBool>,
    listener: tokio::task::AbortHandle,
}

impl Drop for PgKeyFeed {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

impl PgKeyFeed {
    /// Connects a listener (a connection of its own, outside the pool's count) and starts reading.
    pub(super) async fn new(pool: &PgPool) -> Result<Self> {
        let mut listener = PgListener::connect_with(pool).await.map_err(db)?;
        listener.listen(CHANNEL).await.map_err(db)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let lost = Arc::new(AtomicBool::new(false));
        let flag = lost.clone();
        let pool = pool.clone();
        let task = tokio::spawn(async move {
            loop {
                // A closed store: nothing more to listen for (and closing waits for this connection).
                if pool.is_closed() {
                    return;
                }
                match listener.try_recv().await {
                    Ok(Some(n)) => {
                        if tx.try_send(n.payload().to_owned()).is_err() {
                            if tx.is_closed() {
                                return;
                            }
                            flag.store(true, Ordering::Release);
                        }
                    }
                    // The connection dropped: what was sent meanwhile is gone. The next call reconnects and
                    // listens again.
                    Ok(None) => flag.store(true, Ordering::Release),
                    Err(_) if pool.is_closed() => return,
                    Err(e) => {
                        tracing::warn!(error = %e, "PostgreSQL key change listener failed; retrying");
                        flag.store(true, Ordering::Release);
                        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                    }
                }
            }
        });
        Ok(PgKeyFeed {
            queue: tokio::sync::Mutex::new(rx),
            lost,
            listener: task.abort_handle(),
        })
    }
}

#[async_trait]
impl KeyChangeFeed for PgKeyFeed {
    async fn poll(&self) -> Result<KeyChanges> {
        let mut queue = self.queue.lock().await;
        let mut ids = Vec::new();
        while let Ok(id) = queue.try_recv() {
            ids.push(id);
        }
        if self.lost.swap(false, Ordering::AcqRel) {
            return Ok(KeyChanges::Lost);
        }
        Ok(KeyChanges::Keys(ids))
    }

    /// A poll drains the listener's queue in memory: ten times a second costs nothing, and a revoke is seen
    /// within the notification's delay plus 100 ms.
    fn poll_interval(&self) -> std::time::Duration {
        std::time::Duration::from_millis(100)
    }
}
