//! The journal's background tasks: the drain, which writes queued settles and releases to the store in batches
//! (retrying while it cannot be reached), and the syncer, which `fsync`s the active segment on its interval.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::Utc;
use tokio::sync::mpsc;

use super::{Inner, Journal, Op, Queued, carve};
use crate::error::Result;
use crate::ledger::{Ledger, UsageEvent};

/// The most records the drain writes in one store transaction.
pub(super) const DRAIN_BATCH: usize = 256;

/// The drain's pause after a batch that was not full. Records sent meanwhile wait in the channel without waking
/// the drain, so a busy instance pays a wake (a futex call on the request's thread, a round of contention for the
/// journal's lock) per batch rather than per record; a record reaches the store at most this much later.
const DRAIN_PAUSE: Duration = Duration::from_millis(1);

/// Records queued settles and releases in the store, retrying while it cannot be reached. What has queued up
/// while the store was busy goes in one batch: its settles in one transaction ([`Ledger::settle_batch`]), so
/// the store commits once per batch rather than once per request, then its releases.
pub(super) async fn drain(
    inner: Weak<Inner>,
    ledger: Arc<dyn Ledger>,
    mut rx: mpsc::UnboundedReceiver<Queued>,
) {
    let mut batch: Vec<Queued> = Vec::with_capacity(DRAIN_BATCH);
    // The records recovery queued come first: once the store holds them, the leases earlier runs of this
    // instance left hold room for nothing, and end.
    let (every, mut recovering) = match inner.upgrade() {
        Some(inner) => {
            let queued = inner.state.lock().unwrap_or_else(|p| p.into_inner()).queued;
            (carve::every(inner.config.claim_ttl), Some(queued))
        }
        None => return,
    };
    if recovering == Some(0) {
        recovering = None;
        carve::end_earlier_leases(&inner, &ledger).await;
    }
    let mut carving = tokio::time::interval(every);
    carving.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let first = tokio::select! {
            first = rx.recv() => match first {
                Some(first) => first,
                None => return,
            },
            _ = carving.tick() => {
                if !carve::open_draws(&inner, &ledger).await {
                    return;
                }
                continue;
            }
        };
        batch.push(first);
        while batch.len() < DRAIN_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let settles: Vec<(&str, &UsageEvent)> = batch
            .iter()
            .filter_map(|q| match &q.op {
                Op::Settle {
                    reservation_id,
                    event,
                } => Some((reservation_id.as_str(), &**event)),
                Op::Release { .. } => None,
            })
            .collect();
        let written = match settles.len() {
            0 => true,
            1 => false, // one settle goes the per-record way below
            _ => {
                let done = until_stored(&inner, || ledger.settle_batch(&settles, Utc::now())).await;
                match done {
                    Some(Ok(_)) => true,
                    Some(Err(e)) => {
                        // One bad record must not cost the others theirs: each is tried alone.
                        tracing::warn!(error = %e, records = settles.len(),
                            "journal drain: the store refused a batch; writing its records one by one");
                        false
                    }
                    None => return,
                }
            }
        };
        for queued in &batch {
            let done = match &queued.op {
                Op::Settle { .. } if written => continue,
                Op::Settle {
                    reservation_id,
                    event,
                } => {
                    until_stored(&inner, || async {
                        ledger
                            .settle(reservation_id, event, Utc::now())
                            .await
                            .map(|_| ())
                    })
                    .await
                }
                Op::Release { reservation_id } => {
                    until_stored(&inner, || async {
                        ledger.release(reservation_id).await.map(|_| ())
                    })
                    .await
                }
            };
            match done {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::error!(error = %e, "journal drain: the store refused a record; dropped");
                }
                None => return,
            }
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if let Some(leases) = inner.leases.get() {
            for queued in &batch {
                match &queued.op {
                    Op::Settle { reservation_id, .. } => leases.settled(reservation_id),
                    Op::Release { reservation_id } => leases.released(reservation_id),
                }
            }
        }
        let journal = Journal { inner };
        let confirmed = batch.len();
        journal.confirm(batch.drain(..).map(|queued| queued.segment));
        let inner = Arc::downgrade(&journal.inner);
        drop(journal);
        if let Some(left) = recovering {
            if left <= confirmed {
                recovering = None;
                carve::end_earlier_leases(&inner, &ledger).await;
            } else {
                recovering = Some(left - confirmed);
            }
        }
        if confirmed < DRAIN_BATCH {
            tokio::time::sleep(DRAIN_PAUSE).await;
        }
    }
}

/// Runs `write` until the store takes it or refuses it for good (`Some`), retrying with a growing pause while
/// it cannot be reached; `None` when the journal is gone meanwhile.
pub(super) async fn until_stored<T, F, Fut>(inner: &Weak<Inner>, mut write: F) -> Option<Result<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut pause = Duration::from_millis(20);
    let mut down_since: Option<tokio::time::Instant> = None;
    loop {
        match write().await {
            Err(e) if e.unavailable().is_some() => {
                if down_since.is_none() {
                    tracing::warn!(error = %e, "journal drain: the store cannot be reached; retrying");
                    down_since = Some(tokio::time::Instant::now());
                }
                if inner.strong_count() == 0 {
                    return None;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            done => {
                if let Some(since) = down_since
                    && done.is_ok()
                {
                    tracing::info!(
                        after_ms = since.elapsed().as_millis() as u64,
                        "journal drain: the store is back"
                    );
                }
                return Some(done);
            }
        }
    }
}

/// `fsync`s the active segment every `interval` while there is something new.
pub(super) async fn syncer(inner: Weak<Inner>, interval: Duration) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else {
            return;
        };
        if inner.dirty.swap(false, Ordering::Relaxed) {
            let file = inner
                .state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .file
                .try_clone();
            let dir = inner.config.dir.clone();
            drop(inner);
            // On the blocking pool: a flush can take milliseconds, which a request worker should not wait out.
            let synced = match file {
                Ok(file) => tokio::task::spawn_blocking(move || file.sync_data())
                    .await
                    .unwrap_or_else(|e| Err(std::io::Error::other(e))),
                Err(e) => Err(e),
            };
            if let Err(e) = synced {
                tracing::error!(dir = %dir.display(), error = %e, "journal: fsync failed");
            }
        }
    }
}
