//! Checks of [`crate::limits::SlotStore`] (concurrency limits). They use the real clock and short TTLs, so a
//! backend that judges expiry by its own clock (PostgreSQL, Redis) runs every one of them.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::limits::{LimitScope, Slot, SlotClaim, SlotStore};

fn claim(scope: &LimitScope, max: u32) -> SlotClaim {
    SlotClaim {
        scope: scope.clone(),
        max,
    }
}

fn slot(id: &str, claims: &[SlotClaim]) -> Slot {
    Slot {
        id: id.to_owned(),
        claims: claims.to_vec(),
    }
}

const TTL: chrono::Duration = chrono::Duration::seconds(30);

/// A slot is taken in every scope or in none: the first full scope refuses, naming its limit and count, and
/// nothing is taken elsewhere; a release frees the slot in every scope at once (twice is harmless).
pub async fn slots_all_or_none_and_released_at_once(store: Arc<dyn SlotStore>) {
    let (k1, k2) = (
        LimitScope::Key("conf-k1".into()),
        LimitScope::Key("conf-k2".into()),
    );
    let owner = LimitScope::Owner("conf-alice".into());
    let on_k1 = [claim(&k1, 2), claim(&owner, 3)];
    let on_k2 = [claim(&k2, 2), claim(&owner, 3)];
    let now = Utc::now();
    for id in ["a", "b"] {
        assert_eq!(
            store
                .acquire(&slot(id, &on_k1), now, TTL)
                .await
                .expect("acquire"),
            None
        );
    }
    let refused = store
        .acquire(&slot("c", &on_k1), now, TTL)
        .await
        .expect("acquire")
        .expect("the key is full");
    assert_eq!(
        (refused.scope, refused.max, refused.in_flight),
        (k1.clone(), 2, 2)
    );
    // The key's refusal took nothing from the owner: it still has room for one.
    assert_eq!(
        store
            .in_flight(&[k1.clone(), owner.clone(), k2.clone()], now)
            .await
            .expect("count"),
        vec![2, 2, 0]
    );
    assert_eq!(
        store
            .acquire(&slot("d", &on_k2), now, TTL)
            .await
            .expect("acquire"),
        None
    );
    let refused = store
        .acquire(&slot("e", &on_k2), now, TTL)
        .await
        .expect("acquire")
        .expect("the owner is full");
    assert_eq!(
        (refused.scope, refused.max, refused.in_flight),
        (owner.clone(), 3, 3)
    );
    assert_eq!(
        store
            .in_flight(std::slice::from_ref(&k2), now)
            .await
            .expect("count"),
        vec![1]
    );
    store.release(&slot("a", &on_k1)).await.expect("release");
    store
        .release(&slot("a", &on_k1))
        .await
        .expect("release twice");
    assert_eq!(
        store
            .in_flight(&[k1.clone(), owner.clone()], now)
            .await
            .expect("count"),
        vec![1, 2]
    );
    assert_eq!(
        store
            .acquire(&slot("e", &on_k2), now, TTL)
            .await
            .expect("acquire"),
        None
    );
    assert_eq!(
        store.in_flight(&[k1, owner, k2], now).await.expect("count"),
        vec![1, 3, 2]
    );
}

/// A slot nobody renews lapses after its TTL and frees its place; a renewed one stays.
pub async fn slots_lapse_unless_renewed(store: Arc<dyn SlotStore>) {
    let key = LimitScope::Key("conf-lapse".into());
    let claims = [claim(&key, 2)];
    let short = chrono::Duration::seconds(1);
    let now = Utc::now();
    assert_eq!(
        store
            .acquire(&slot("dies", &claims), now, short)
            .await
            .expect("acquire"),
        None
    );
    assert_eq!(
        store
            .acquire(&slot("lives", &claims), now, short)
            .await
            .expect("acquire"),
        None
    );
    assert!(
        store
            .acquire(&slot("third", &claims), now, short)
            .await
            .expect("acquire")
            .is_some()
    );
    store
        .renew(
            &[slot("lives", &claims), slot("never-held", &claims)],
            Utc::now(),
            TTL,
        )
        .await
        .expect("renew");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let later = Utc::now();
    assert_eq!(
        store
            .in_flight(std::slice::from_ref(&key), later)
            .await
            .expect("count"),
        vec![1]
    );
    // The lapsed slot's place is free; the renewed one still counts; a renewal never revives a released slot.
    assert_eq!(
        store
            .acquire(&slot("third", &claims), later, TTL)
            .await
            .expect("acquire"),
        None
    );
    assert!(
        store
            .acquire(&slot("fourth", &claims), later, TTL)
            .await
            .expect("acquire")
            .is_some()
    );
    assert_eq!(
        store.in_flight(&[key], later).await.expect("count"),
        vec![2]
    );
}

/// Many acquires at once on one scope: exactly its limit get a slot.
pub async fn concurrent_acquires_take_exactly_the_limit(store: Arc<dyn SlotStore>) {
    let key = LimitScope::Key("conf-race".into());
    let claims = [claim(&key, 5)];
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let store = store.clone();
            let claims = claims.clone();
            tokio::spawn(async move {
                store
                    .acquire(&slot(&format!("race-{i}"), &claims), Utc::now(), TTL)
                    .await
                    .expect("acquire")
                    .is_none()
            })
        })
        .collect();
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.expect("task"));
    }
    assert_eq!(admitted, 5);
    assert_eq!(
        store.in_flight(&[key], Utc::now()).await.expect("count"),
        vec![5]
    );
}
