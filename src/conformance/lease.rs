//! Checks of budget leases ([`crate::ledger::Ledger::lease`], [`crate::ledger::lease::Leases`]), run with the
//! ledger checks.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;

use super::ledger::event;
use crate::clock::ManualClock;
use crate::error::Error;
use crate::ledger::lease::{LeaseAsk, LeaseConfig, Leases, draw_id};
use crate::ledger::{Budget, BudgetPeriod, BudgetScope, Ledger};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0)
        .single()
        .expect("valid date")
}

fn d(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

async fn budget(ledger: &Arc<dyn Ledger>, owner: &str, limit: &str) -> BudgetScope {
    let scope = BudgetScope::Owner(owner.into());
    ledger
        .set_budget(&Budget::new(scope.clone(), d(limit), BudgetPeriod::Monthly).expect("b"))
        .await
        .expect("set");
    scope
}

/// The spend and reservations of `scope`'s budget at `at`.
async fn standing(
    ledger: &Arc<dyn Ledger>,
    scope: &BudgetScope,
    at: DateTime<Utc>,
) -> (Decimal, Decimal) {
    let s = ledger
        .budget_status(scope, at)
        .await
        .expect("status")
        .expect("budget");
    (s.spent, s.reserved)
}

async fn reserved(ledger: &Arc<dyn Ledger>, scope: &BudgetScope, at: DateTime<Utc>) -> Decimal {
    standing(ledger, scope, at).await.1
}

fn ask<'a>(
    id: &'a str,
    instance: &'a str,
    scopes: &'a [BudgetScope],
    change: &str,
) -> LeaseAsk<'a> {
    LeaseAsk {
        id,
        instance,
        scopes,
        change: d(change),
    }
}

/// A lease grows as far as the budget has room beside everything else held, shrinks on demand (to nothing, and
/// then holds nothing), is the instance's alone, ends with the budget's period and is renewed with the
/// instance's claims; scopes without a budget are not held at all.
pub async fn leases_grow_as_far_as_room_and_shrink(ledger: Arc<dyn Ledger>) {
    let alice = [budget(&ledger, "alice", "10").await];
    let ttl = Duration::minutes(5);
    let a = ledger
        .lease(ask("lse_a_0", "gw-a", &alice, "4"), t0(), ttl)
        .await
        .expect("lease a");
    assert_eq!((a.change, a.room), (d("4"), Some(d("4"))));
    let end_of_march = Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0).single();
    assert_eq!(Some(a.until), end_of_march);
    let b = ledger
        .lease(ask("lse_b_0", "gw-b", &alice, "10"), t0(), ttl)
        .await
        .expect("lease b");
    assert_eq!((b.change, b.room), (d("6"), Some(d("6"))), "only 6 left");
    assert_eq!(reserved(&ledger, &alice[0], t0()).await, d("10"));
    assert!(matches!(
        ledger.reserve(&alice, d("0.01"), t0(), ttl).await,
        Err(Error::BudgetExceeded { .. })
    ));
    let full = ledger
        .lease(ask("lse_a_0", "gw-a", &alice, "1"), t0(), ttl)
        .await
        .expect("no room");
    assert_eq!((full.change, full.room), (Decimal::ZERO, Some(d("4"))));
    let a = ledger
        .lease(ask("lse_a_0", "gw-a", &alice, "-3"), t0(), ttl)
        .await
        .expect("shrink");
    assert_eq!((a.change, a.room), (d("-3"), Some(d("1"))));
    assert_eq!(reserved(&ledger, &alice[0], t0()).await, d("7"));
    let a = ledger
        .lease(ask("lse_a_0", "gw-a", &alice, "-5"), t0(), ttl)
        .await
        .expect("shrink to nothing");
    assert_eq!((a.change, a.room), (d("-1"), Some(Decimal::ZERO)));
    assert_eq!(reserved(&ledger, &alice[0], t0()).await, d("6"));
    // Another instance's lease is not this one's to change.
    let theirs = ledger
        .lease(ask("lse_b_0", "gw-a", &alice, "-6"), t0(), ttl)
        .await;
    assert!(
        matches!(theirs, Err(Error::InvalidInput { .. })),
        "{theirs:?}"
    );
    assert_eq!(reserved(&ledger, &alice[0], t0()).await, d("6"));
    assert!(ledger.renew("gw-b", t0(), ttl).await.expect("renew") >= 1);
    // No budget: nothing limits, nothing is held.
    let bob = [BudgetScope::Owner("bob".into())];
    let free = ledger
        .lease(ask("lse_a_1", "gw-a", &bob, "5"), t0(), ttl)
        .await
        .expect("unbudgeted");
    assert_eq!((free.change, free.room), (d("5"), None));
    assert_eq!(free.until, DateTime::<Utc>::MAX_UTC);
    // Growth granted counts the other scopes' budgets too.
    let both = [alice[0].clone(), budget(&ledger, "acme", "20").await];
    let org = ledger
        .lease(ask("lse_a_2", "gw-a", &both, "9"), t0(), ttl)
        .await
        .expect("two budgets");
    assert_eq!(org.room, Some(d("4")), "alice has 4 left, acme 20");
    let bad = ledger.lease(ask("", "gw-a", &alice, "1"), t0(), ttl).await;
    assert!(matches!(bad, Err(Error::InvalidInput { .. })), "{bad:?}");
}

/// A settled draw's amount leaves its lease in the settle's own step (once, however often the settle is sent),
/// in a batch too; its cost enters the spend; a release of a draw changes nothing in the store.
pub async fn settled_draws_leave_their_lease(ledger: Arc<dyn Ledger>) {
    let alice = [budget(&ledger, "alice", "10").await];
    let ttl = Duration::minutes(5);
    ledger
        .lease(ask("lse_a_0", "gw-a", &alice, "5"), t0(), ttl)
        .await
        .expect("lease");
    let first = draw_id("lse_a_0", d("2"), 1);
    let settled = event("req-1", "alice", "1.5", t0());
    ledger.settle(&first, &settled, t0()).await.expect("settle");
    assert_eq!(standing(&ledger, &alice[0], t0()).await, (d("1.5"), d("3")));
    let again = ledger.settle(&first, &settled, t0()).await.expect("resend");
    assert!(again.duplicate);
    assert_eq!(reserved(&ledger, &alice[0], t0()).await, d("3"));
    let (second, third) = (draw_id("lse_a_0", d("1"), 2), draw_id("lse_a_0", d("1"), 3));
    let (e2, e3) = (
        event("req-2", "alice", "0.5", t0()),
        event("req-3", "alice", "0.25", t0()),
    );
    ledger
        .settle_batch(&[(&second, &e2), (&third, &e3)], t0())
        .await
        .expect("batch");
    assert_eq!(
        standing(&ledger, &alice[0], t0()).await,
        (d("2.25"), d("1"))
    );
    assert!(
        !ledger
            .release(&draw_id("lse_a_0", d("1"), 4))
            .await
            .expect("release")
    );
    assert_eq!(reserved(&ledger, &alice[0], t0()).await, d("1"));
    // More than the lease holds (it lapsed, or was shrunk): the lease ends at nothing, never below.
    let big = draw_id("lse_a_0", d("5"), 5);
    ledger
        .settle(&big, &event("req-5", "alice", "0.1", t0()), t0())
        .await
        .expect("settle");
    assert_eq!(
        standing(&ledger, &alice[0], t0()).await,
        (d("2.35"), Decimal::ZERO)
    );
}

/// A lease whose instance stops renewing it lapses and frees its room, billing nothing (it is room, not
/// spend); taken again, it starts from nothing.
pub async fn leases_lapse_unbilled(ledger: Arc<dyn Ledger>) {
    let alice = [budget(&ledger, "alice", "10").await];
    ledger
        .lease(
            ask("lse_a_0", "gw-a", &alice, "4"),
            t0(),
            Duration::minutes(1),
        )
        .await
        .expect("lease");
    let later = t0() + Duration::minutes(2);
    assert_eq!(reserved(&ledger, &alice[0], later).await, Decimal::ZERO);
    assert_eq!(ledger.sweep(later).await.expect("sweep"), 0);
    let again = ledger
        .lease(
            ask("lse_a_0", "gw-a", &alice, "1"),
            later,
            Duration::minutes(1),
        )
        .await
        .expect("lease again");
    assert_eq!(again.room, Some(d("1")));
    assert_eq!(reserved(&ledger, &alice[0], later).await, d("1"));
    assert!(
        ledger
            .events(&crate::ledger::EventFilter::default())
            .await
            .expect("events")
            .is_empty()
    );
}

/// Two instances' leases, 32 tasks each, on one budget: settled + reserved never passes the limit at any
/// step, draws the leases cannot cover go to the store's exact check, every admitted request is one event, and
/// once both close nothing stays reserved.
pub async fn two_instances_of_leases_never_overshoot(ledger: Arc<dyn Ledger>) {
    let alice = budget(&ledger, "alice", "1.00").await;
    let limit = d("1.00");
    let clock = Arc::new(ManualClock::new(t0()));
    let instances: Vec<Leases> = ["gw-a", "gw-b"]
        .into_iter()
        .map(|name| {
            Leases::new(ledger.clone(), name, LeaseConfig::default()).with_clock(clock.clone())
        })
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for (which, leases) in instances.iter().enumerate() {
        for i in 0..32u32 {
            let (ledger, leases, alice) = (ledger.clone(), leases.clone(), alice.clone());
            tasks.spawn(async move {
                let mut admitted = 0u32;
                for round in 0..4u32 {
                    let scopes = std::slice::from_ref(&alice);
                    let hold = match leases.draw(scopes, d("0.05")).await {
                        Some(draw) => Some(draw.id),
                        None => match ledger
                            .reserve(scopes, d("0.05"), t0(), Duration::minutes(5))
                            .await
                        {
                            Ok(r) => Some(r.id),
                            Err(Error::BudgetExceeded { .. }) => None,
                            Err(e) => panic!("{e}"),
                        },
                    };
                    let status = ledger
                        .budget_status(&alice, t0())
                        .await
                        .expect("status")
                        .expect("budget");
                    assert!(
                        status.spent + status.reserved <= status.limit,
                        "overshoot: {status:?}"
                    );
                    let Some(id) = hold else {
                        continue;
                    };
                    tokio::task::yield_now().await;
                    let actual = Decimal::new(i64::from(30 + (i + round) % 20), 3);
                    let request = format!("req-{which}-{i}-{round}");
                    ledger
                        .settle(
                            &id,
                            &event(&request, "alice", &actual.to_string(), t0()),
                            t0(),
                        )
                        .await
                        .expect("settle");
                    leases.settled(&id);
                    admitted += 1;
                }
                admitted
            });
        }
    }
    let mut admitted = 0;
    while let Some(r) = tasks.join_next().await {
        admitted += r.expect("task");
    }
    for leases in &instances {
        leases.close().await;
    }
    let s = ledger
        .budget_status(&alice, t0())
        .await
        .expect("status")
        .expect("budget");
    assert!(s.spent <= limit, "spent {} over {limit}", s.spent);
    assert_eq!(s.reserved, Decimal::ZERO, "the leases gave their room back");
    let events = ledger
        .events(&crate::ledger::EventFilter::default())
        .await
        .expect("events");
    assert_eq!(events.len() as u32, admitted);
    assert_eq!(events.iter().map(|e| e.cost).sum::<Decimal>(), s.spent);
    assert!(
        admitted >= 20,
        "only {admitted} admitted: the limit allows at least 20 holds of 0.05"
    );
}

/// Draws from a lease with room answer from memory: one store call takes the lease, and a run of holds after it
/// (each settled) is answered from the lease and its background refills.
pub async fn warm_leases_answer_from_memory(ledger: Arc<dyn Ledger>) {
    let alice = budget(&ledger, "alice", "1000").await;
    let clock = Arc::new(ManualClock::new(t0()));
    let leases = Leases::new(ledger.clone(), "gw-a", LeaseConfig::default()).with_clock(clock);
    for n in 0..100u32 {
        let draw = leases
            .draw(std::slice::from_ref(&alice), d("1"))
            .await
            .expect("room");
        assert_eq!(draw.scopes, vec![alice.clone()]);
        let request = format!("req-{n}");
        ledger
            .settle(&draw.id, &event(&request, "alice", "0.5", t0()), t0())
            .await
            .expect("settle");
        leases.settled(&draw.id);
    }
    let (hits, misses) = (leases.lookups().hits(), leases.lookups().misses());
    assert!(
        hits >= 90,
        "{hits} of 100 draws from a warm lease ({misses} waited for the store)"
    );
    assert_eq!(leases.fallbacks(), 0);
    leases.close().await;
    let s = ledger
        .budget_status(&alice, t0())
        .await
        .expect("status")
        .expect("budget");
    assert_eq!((s.spent, s.reserved), (d("50"), Decimal::ZERO));
}

/// Open draws carved out of their lease become reservations of their own: the room moves (nothing is counted
/// twice), a settle ends the carved one and leaves the lease alone, a draw whose request is recorded is not
/// carved, a release frees it, and a lapsed one is billed its estimate while the lease itself lapses unbilled.
pub async fn open_draws_are_carved_and_billed_when_lost(ledger: Arc<dyn Ledger>) {
    let alice = [budget(&ledger, "alice", "10").await];
    let ttl = Duration::minutes(1);
    ledger
        .lease(ask("lse_a_0", "gw-a", &alice, "5"), t0(), ttl)
        .await
        .expect("lease");
    let (one, two) = (draw_id("lse_a_0", d("2"), 1), draw_id("lse_a_0", d("1"), 2));
    let mut e1 = event("req-1", "alice", "2", t0());
    e1.estimated = true;
    let mut e2 = event("req-2", "alice", "1", t0());
    e2.estimated = true;
    let carved = ledger
        .carve(&[(&one, &e1), (&two, &e2)], "gw-a", t0(), ttl)
        .await
        .expect("carve");
    assert_eq!(carved, vec![true, true]);
    assert_eq!(
        reserved(&ledger, &alice[0], t0()).await,
        d("5"),
        "moved, not added"
    );
    ledger
        .settle(&one, &event("req-1", "alice", "1.5", t0()), t0())
        .await
        .expect("settle");
    assert_eq!(standing(&ledger, &alice[0], t0()).await, (d("1.5"), d("3")));
    let again = ledger
        .carve(&[(&one, &e1)], "gw-a", t0(), ttl)
        .await
        .expect("carve again");
    assert_eq!(again, vec![false], "req-1 is recorded");
    let three = draw_id("lse_a_0", d("1"), 3);
    let mut e3 = event("req-3", "alice", "1", t0());
    e3.estimated = true;
    assert_eq!(
        ledger
            .carve(&[(&three, &e3)], "gw-a", t0(), ttl)
            .await
            .expect("carve"),
        vec![true]
    );
    assert!(ledger.release(&three).await.expect("release"));
    assert_eq!(
        reserved(&ledger, &alice[0], t0()).await,
        d("2"),
        "lease 1, req-2 1"
    );
    // Another instance's lease is not carved from.
    let four = draw_id("lse_a_0", d("1"), 4);
    let mut e4 = event("req-4", "alice", "1", t0());
    e4.estimated = true;
    assert_eq!(
        ledger
            .carve(&[(&four, &e4)], "gw-b", t0(), ttl)
            .await
            .expect("carve"),
        vec![false]
    );
    // The instance is lost: its lease lapses unbilled, its carved draw is billed its estimate.
    let later = t0() + Duration::minutes(2);
    assert_eq!(ledger.sweep(later).await.expect("sweep"), 1);
    assert_eq!(
        standing(&ledger, &alice[0], later).await,
        (d("2.5"), Decimal::ZERO)
    );
    let events = ledger
        .events(&crate::ledger::EventFilter::default())
        .await
        .expect("events");
    let billed: Vec<(&str, bool)> = events
        .iter()
        .map(|e| (e.request_id.as_str(), e.estimated))
        .collect();
    assert_eq!(billed, vec![("req-1", false), ("req-2", true)]);
}

/// A restarted instance ends the leases its earlier runs left (claimants `{instance}.…` but its own), and
/// nothing else: not its current run's, not another instance's (however its name begins), not a claim with an
/// estimate.
pub async fn earlier_runs_leases_end(ledger: Arc<dyn Ledger>) {
    let alice = [budget(&ledger, "alice", "100").await];
    let ttl = Duration::minutes(5);
    for (id, claimant) in [
        ("lse_1", "gw_a.run1"),
        ("lse_2", "gw_a.run2"),
        ("lse_3", "gw_ab.run1"),
        ("lse_4", "gwxa.run1"),
    ] {
        ledger
            .lease(ask(id, claimant, &alice, "1"), t0(), ttl)
            .await
            .expect("lease");
    }
    let mut estimate = event("req-1", "alice", "1", t0());
    estimate.estimated = true;
    let claim = crate::ledger::Claim::request("req-1")
        .instance(Some("gw_a.run1"))
        .estimate(&estimate);
    ledger
        .reserve_claim(claim, &alice, d("1"), t0(), ttl)
        .await
        .expect("claim");
    assert_eq!(reserved(&ledger, &alice[0], t0()).await, d("5"));
    assert_eq!(
        ledger.end_leases("gw_a", "gw_a.run2").await.expect("end"),
        1
    );
    assert_eq!(reserved(&ledger, &alice[0], t0()).await, d("4"));
    // `_` is no wildcard here: `gw_a` is not `gwxa`.
    assert_eq!(
        ledger.end_leases("gw_a", "gw_a.run2").await.expect("end"),
        0
    );
}
