//! The instance's heartbeat and the store's safety net.
//!
//! A journaled meter's reservations are claims of its instance with a short time to live ([`CLAIM_TTL`]). While
//! the instance lives, its heartbeat renews all of them in one statement every [`HEARTBEAT`], judged by the
//! store's clock ([`Ledger::renew`]), so a live exchange never lapses however long it streams. When the instance
//! dies with its journal (a lost machine), nothing renews them: within a TTL they lapse, and the next sweep by any
//! live instance ([`Ledger::sweep`], also run here) bills each at its reservation as an `estimated` event. A claim
//! is never deleted unbilled, and never billed while its instance lives.
//!
//! Claims are named per run ([`super::Journal::claimant`]): a restarted instance renews only its new claims. The
//! previous run's are ended by its journal's replay (settled, billed or released) or, where a crash came between
//! the reservation and its journal record, lapse and are billed.

use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::Utc;

use crate::ledger::Ledger;

/// How long a journaled claim lives without a heartbeat: about how long after its instance dies it is billed.
pub const CLAIM_TTL: chrono::Duration = chrono::Duration::seconds(30);

/// How often a store without a journal is swept. A journal's heartbeat runs every third of its claims' time to
/// live, so two heartbeats can fail before a claim lapses.
pub const HEARTBEAT: Duration = Duration::from_secs(10);

/// Renews `instance`'s claims (for the given time to live) and sweeps lapsed ones, every third of that time to
/// live, while `alive` has an owner; for a store without a journal (`instance` is `None`) sweeps only, every
/// [`HEARTBEAT`].
pub(crate) async fn beat<T: ?Sized + Send + Sync + 'static>(
    alive: Weak<T>,
    ledger: Arc<dyn Ledger>,
    instance: Option<(String, chrono::Duration)>,
) {
    let every = match &instance {
        Some((_, ttl)) => {
            (ttl.to_std().unwrap_or(Duration::from_secs(30)) / 3).max(Duration::from_millis(100))
        }
        None => HEARTBEAT,
    };
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut streak = crate::streak::Streak::default();
    loop {
        tick.tick().await;
        if alive.strong_count() == 0 {
            return;
        }
        let now = Utc::now();
        let renewed = match &instance {
            Some((instance, ttl)) => ledger.renew(instance, now, *ttl).await.map(Some),
            None => Ok(None),
        };
        let outcome = match renewed {
            Ok(_) => ledger.sweep(now).await.map(|_| ()),
            Err(e) => Err(e),
        };
        streak.note(
            &outcome,
            "heartbeat: cannot renew this instance's claims; past the claim TTL other instances bill them as estimated",
            "heartbeat: the store takes renewals again",
        );
    }
}

/// Sweeps lapsed claims every [`HEARTBEAT`] while `alive` has an owner: what a service without a journal runs so
/// claims of processes that died are billed even on an idle store.
pub fn spawn_sweeper<T: ?Sized + Send + Sync + 'static>(alive: &Arc<T>, ledger: Arc<dyn Ledger>) {
    tokio::spawn(beat(Arc::downgrade(alive), ledger, None));
}
