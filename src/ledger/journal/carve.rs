//! Carving: the holds drawn from budget leases ([`crate::ledger::lease`]) live in memory and in the journal only.
//! Every third of the claim TTL the drain writes the ones still open into reservations of their own
//! ([`Ledger::carve`]), each billed its estimate if it lapses — what the instance's heartbeat reports of its
//! outstanding holds (DESIGN §14), so a machine lost with its journal has them billed by the store's safety net
//! like any other claim. Short exchanges end before a carving comes and never touch the store until their settle.
//! It runs in the drain's task, between its batches, so a carving and the settles and releases of the same holds
//! reach the store (and the leases in memory) in the order the drain takes them.

use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::Utc;

use super::Inner;
use super::drain::{DRAIN_BATCH, until_stored};
use crate::ledger::{Ledger, UsageEvent};
use crate::random::OsRandom;

/// How often the open draws are carved: a third of the claim TTL, as the heartbeat renews.
pub(super) fn every(claim_ttl: chrono::Duration) -> Duration {
    (claim_ttl.to_std().unwrap_or(Duration::from_secs(30)) / 3).max(Duration::from_millis(100))
}

/// Carves the open draws into the store and tells the leases which were; false once the journal is gone.
pub(super) async fn open_draws(inner: &Weak<Inner>, ledger: &Arc<dyn Ledger>) -> bool {
    let Some(strong) = inner.upgrade() else {
        return false;
    };
    let open: Vec<(String, UsageEvent)> = {
        let state = strong.state.lock().unwrap_or_else(|p| p.into_inner());
        state
            .draws
            .values()
            .filter_map(|h| match h.estimated_event(&OsRandom) {
                Ok(estimate) => Some((h.reservation_id.clone(), estimate)),
                Err(e) => {
                    tracing::error!(request_id = %h.request_id, error = %e, "journal: a drawn hold cannot be carved");
                    None
                }
            })
            .collect()
    };
    if open.is_empty() {
        return true;
    }
    let (claimant, ttl) = (strong.claimant.clone(), strong.config.claim_ttl);
    drop(strong);
    for chunk in open.chunks(DRAIN_BATCH) {
        let holds: Vec<(&str, &UsageEvent)> =
            chunk.iter().map(|(id, e)| (id.as_str(), e)).collect();
        let done = until_stored(inner, || ledger.carve(&holds, &claimant, Utc::now(), ttl)).await;
        let carved = match done {
            Some(Ok(carved)) => carved,
            Some(Err(e)) => {
                tracing::warn!(error = %e, "journal: the store refused to carve open draws; they stay in memory");
                continue;
            }
            None => return false,
        };
        let Some(strong) = inner.upgrade() else {
            return false;
        };
        let mut state = strong.state.lock().unwrap_or_else(|p| p.into_inner());
        for ((id, estimate), carved) in chunk.iter().zip(carved) {
            if carved {
                state.draws.remove(&estimate.request_id);
                if let Some(leases) = strong.leases.get() {
                    leases.carved(id);
                }
            }
        }
    }
    true
}

/// Ends the leases earlier runs of this instance left ([`Ledger::end_leases`]): what the drain does once the
/// store holds what recovery replayed.
pub(super) async fn end_earlier_leases(inner: &Weak<Inner>, ledger: &Arc<dyn Ledger>) {
    let Some(strong) = inner.upgrade() else {
        return;
    };
    let (instance, claimant) = (strong.instance_id.clone(), strong.claimant.clone());
    drop(strong);
    match until_stored(inner, || ledger.end_leases(&instance, &claimant)).await {
        Some(Ok(0)) | None => {}
        Some(Ok(ended)) => {
            tracing::info!(
                ended,
                "journal: the budget leases of this instance's earlier run given back"
            )
        }
        Some(Err(e)) => {
            tracing::warn!(error = %e, "journal: cannot end earlier runs' budget leases; they lapse with the claim TTL")
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rust_decimal::Decimal;

    use crate::ledger::journal::{Journal, JournalConfig};
    use crate::ledger::lease::LeaseConfig;
    use crate::ledger::{Budget, BudgetPeriod, BudgetScope, Ledger, Meter, MeteredRequest, Payer};
    use crate::pricing::{PriceCatalog, Usage};
    use crate::store::MemoryStore;

    /// A hold drawn from a lease and still open when the drain's carving comes is in the store as a reservation
    /// of its own (its amount moved out of the lease); its settle ends it and the lease keeps its room.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_drain_carves_open_draws_and_their_settles_end_them() {
        let dir = tempfile::tempdir().unwrap();
        carves_on(Arc::new(MemoryStore::new()), dir.path()).await;
    }

    #[cfg(feature = "sqlite")]
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_drain_carves_on_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("k.db").display());
        let store = Arc::new(crate::store::SqliteStore::connect(&url).await.unwrap());
        carves_on(store, &dir.path().join("journal")).await;
    }

    async fn carves_on(store: Arc<dyn Ledger>, dir: &std::path::Path) {
        let alice = BudgetScope::Owner("alice".into());
        store
            .set_budget(
                &Budget::new(alice.clone(), Decimal::from(100), BudgetPeriod::Monthly).unwrap(),
            )
            .await
            .unwrap();
        let config = JournalConfig::new(dir).claim_ttl(chrono::Duration::seconds(1));
        let (journal, _) = Journal::open(config, Arc::new(crate::random::OsRandom)).unwrap();
        journal.start(store.clone());
        let meter = Meter::new(store.clone(), Arc::new(PriceCatalog::bundled()))
            .with_journal(journal)
            .with_leases(LeaseConfig::default());
        let worst = Usage {
            input: 1_000,
            output: 1_000,
            ..Usage::default()
        };
        let hold = meter
            .reserve(MeteredRequest::new(Payer::owner("alice"), "gpt-4o"), &worst)
            .await
            .unwrap();
        let leases = meter.leases().expect("leases").clone();
        let id = hold.reservation().id.clone();
        assert!(leases.holds(&id), "drawn from the lease");
        let before = store
            .budget_status(&alice, chrono::Utc::now())
            .await
            .unwrap()
            .unwrap();
        // Carving runs every third of the claim TTL.
        let started = std::time::Instant::now();
        while leases.holds(&id) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(3),
                "not carved"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let carved = store
            .budget_status(&alice, chrono::Utc::now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            carved.reserved, before.reserved,
            "moved out of the lease, not added"
        );
        let metered = meter.settle(hold, worst).await.unwrap();
        assert!(
            meter
                .journal()
                .unwrap()
                .flush(std::time::Duration::from_secs(5))
                .await
        );
        let after = store
            .budget_status(&alice, chrono::Utc::now())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(after.spent, metered.cost.total);
        assert_eq!(
            after.reserved + metered.cost.total,
            before.reserved,
            "the carved hold ended; the lease kept the rest of its room"
        );
    }
}
