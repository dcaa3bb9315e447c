//! Checks of [`crate::ledger::Ledger`].

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;

use crate::error::Error;
use crate::ledger::{
    Budget, BudgetPeriod, BudgetScope, EventCursor, EventFilter, GroupBy, Ledger, UsageEvent,
};
use crate::pricing::Usage;
use crate::random::SeededRandom;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0)
        .single()
        .expect("valid date")
}

fn d(s: &str) -> Decimal {
    s.parse().expect("decimal")
}

/// An event of `cost` for `owner` (org `acme`, key `k1`) at `at`.
pub fn event(request: &str, owner: &str, cost: &str, at: DateTime<Utc>) -> UsageEvent {
    let usage = Usage {
        input: 100,
        cache_read: 20,
        output: 10,
        reasoning: 5,
        ..Usage::default()
    };
    let seed = request
        .bytes()
        .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
    UsageEvent::new(
        Some(request),
        at,
        owner,
        "openai",
        "gpt-4o",
        usage,
        d(cost),
        &SeededRandom::new(seed),
    )
    .expect("event")
    .org("acme")
    .key_id("k1")
}

/// Alice's budget of `limit` over `period`, set; her scope.
async fn alice_budget(ledger: &Arc<dyn Ledger>, limit: &str, period: BudgetPeriod) -> BudgetScope {
    let alice = BudgetScope::Owner("alice".into());
    ledger
        .set_budget(&Budget::new(alice.clone(), d(limit), period).expect("b"))
        .await
        .expect("set");
    alice
}

/// Every stored event, oldest first.
async fn every_event(ledger: &Arc<dyn Ledger>) -> Vec<UsageEvent> {
    ledger
        .events(&EventFilter::default())
        .await
        .expect("events")
}

/// The same request id twice is one event, and says so.
pub async fn record_once(ledger: Arc<dyn Ledger>) {
    let first = ledger
        .record(&event("r1", "alice", "0.10", t0()))
        .await
        .expect("record");
    assert!(!first.duplicate);
    let mut retry = event("r1", "alice", "0.10", t0());
    retry.event_id = "ev_other".into();
    let second = ledger.record(&retry).await.expect("record again");
    assert!(second.duplicate);
    assert_eq!(second.event_id, first.event_id);
    let batch = ledger
        .record_batch(&[
            event("r2", "alice", "0.2", t0()),
            event("r1", "alice", "0.1", t0()),
        ])
        .await
        .expect("batch");
    assert_eq!(
        batch.iter().map(|r| r.duplicate).collect::<Vec<_>>(),
        [false, true]
    );
    assert_eq!(every_event(&ledger).await.len(), 2);
}

/// Filters and grouped reports, exact to the last digit.
pub async fn events_and_reports(ledger: Arc<dyn Ledger>) {
    let day2 = t0() + Duration::days(1);
    let mut other = event("r3", "bob", "0.000001", day2);
    other.org = None;
    other.key_id = None;
    other.model = "claude-sonnet-4-5".into();
    ledger
        .record_batch(&[
            event("r1", "alice", "0.1", t0()),
            event("r2", "alice", "0.2", day2),
            other,
        ])
        .await
        .expect("batch");
    let alice = EventFilter {
        owner: Some("alice".into()),
        ..EventFilter::default()
    };
    assert_eq!(ledger.events(&alice).await.expect("events").len(), 2);
    let window = EventFilter {
        since: Some(day2),
        ..EventFilter::default()
    };
    assert_eq!(ledger.events(&window).await.expect("events").len(), 2);
    let until = EventFilter {
        until: Some(day2),
        ..EventFilter::default()
    };
    assert_eq!(ledger.events(&until).await.expect("events").len(), 1);

    let by_owner = ledger
        .report(&EventFilter::default(), GroupBy::Owner, chrono_tz::UTC)
        .await
        .expect("report");
    assert_eq!(by_owner.total, d("0.300001"));
    assert_eq!(by_owner.groups[0].key, "alice");
    assert_eq!(
        (by_owner.groups[0].cost, by_owner.groups[0].events),
        (d("0.3"), 2)
    );
    assert_eq!(
        (
            by_owner.groups[0].input_tokens,
            by_owner.groups[0].output_tokens
        ),
        (240, 30)
    );
    let by_org = ledger
        .report(&EventFilter::default(), GroupBy::Org, chrono_tz::UTC)
        .await
        .expect("report");
    assert_eq!(
        by_org
            .groups
            .iter()
            .map(|g| g.key.as_str())
            .collect::<Vec<_>>(),
        ["(none)", "acme"]
    );
    let by_day = ledger
        .report(&EventFilter::default(), GroupBy::Day, chrono_tz::UTC)
        .await
        .expect("report");
    assert_eq!(
        by_day
            .groups
            .iter()
            .map(|g| g.key.as_str())
            .collect::<Vec<_>>(),
        ["2026-03-10", "2026-03-11"]
    );
    let by_model = ledger
        .report(&EventFilter::default(), GroupBy::Model, chrono_tz::UTC)
        .await
        .expect("report");
    assert_eq!(by_model.groups.len(), 2);
    let by_week = ledger
        .report(&EventFilter::default(), GroupBy::Week, chrono_tz::UTC)
        .await
        .expect("report");
    assert_eq!(by_week.groups[0].key, "2026-W11");
    // Every grouping in zones with 30- and 45-minute offsets gives what the pure aggregation of the events gives.
    let all = every_event(&ledger).await;
    for by in [
        GroupBy::Key,
        GroupBy::Owner,
        GroupBy::Org,
        GroupBy::Model,
        GroupBy::Day,
        GroupBy::Week,
        GroupBy::Month,
    ] {
        for tz in [
            chrono_tz::UTC,
            chrono_tz::Europe::Berlin,
            chrono_tz::Asia::Kathmandu,
            chrono_tz::America::St_Johns,
        ] {
            let report = ledger
                .report(&EventFilter::default(), by, tz)
                .await
                .expect("report");
            assert_eq!(
                report,
                crate::ledger::aggregate(&all, by, tz),
                "{by:?} in {tz}"
            );
        }
    }
}

/// Reports equal the pure aggregation of the events they cover, whatever the filter, range and zone: ranges that
/// start and end inside a quarter hour, a day or a month, months of different lengths, 30- and 45-minute zones,
/// and a zone whose old offset (Monrovia's −0:44:30 until 1972) is no multiple of a quarter hour.
pub async fn reports_match_the_events(ledger: Arc<dyn Ledger>) {
    let start = Utc
        .with_ymd_and_hms(2025, 12, 20, 0, 0, 0)
        .single()
        .expect("valid date");
    let old = Utc
        .with_ymd_and_hms(1971, 12, 31, 23, 0, 0)
        .single()
        .expect("valid date");
    let mut events = Vec::new();
    for i in 0..240u32 {
        // Steps of 11 h 7 min 13.000017 s: every hour of the day, minute and weekday comes round.
        let at = start + Duration::microseconds(i64::from(i) * 40_033_000_017);
        let mut e = event(
            &format!("m{i}"),
            ["alice", "bob", "carol"][i as usize % 3],
            &format!("0.{:0>width$}", 1 + i * 7, width = 2 + i as usize % 9),
            at,
        );
        if i % 4 == 1 {
            e.org = None;
        }
        if i % 5 == 2 {
            e.key_id = Some("k2".into());
        } else if i % 5 == 3 {
            e.key_id = None;
        }
        if i % 2 == 0 {
            e.model = "claude-sonnet-4-5".into();
        }
        e.usage.output = u64::from(i);
        events.push(e);
    }
    for i in 0..12u32 {
        // Around Monrovia's 1972 change of offset, every 13 minutes.
        let at = old + Duration::minutes(i64::from(i) * 13);
        events.push(event(&format!("o{i}"), "dave", "0.5", at));
    }
    // 15 s after Monrovia's midnight (00:44:30 UTC): the quarter hour from 00:30 UTC holds two local years.
    let new_year = old + Duration::seconds(3600 + 44 * 60 + 45);
    events.push(event("o-new-year", "dave", "0.25", new_year));
    for chunk in events.chunks(50) {
        ledger.record_batch(chunk).await.expect("batch");
    }
    let at = |s: &str| Some(s.parse::<DateTime<Utc>>().expect("time"));
    let filters = [
        EventFilter::default(),
        EventFilter {
            owner: Some("alice".into()),
            ..EventFilter::default()
        },
        EventFilter {
            org: Some("acme".into()),
            ..EventFilter::default()
        },
        EventFilter {
            key_id: Some("k2".into()),
            model: Some("gpt-4o".into()),
            ..EventFilter::default()
        },
        EventFilter {
            since: at("2026-01-07T13:07:22.5Z"),
            until: at("2026-03-02T00:07:00Z"),
            ..EventFilter::default()
        },
        EventFilter {
            since: at("2026-02-01T00:00:00Z"),
            until: at("2026-03-01T00:00:00Z"),
            ..EventFilter::default()
        },
        EventFilter {
            owner: Some("bob".into()),
            since: at("2025-12-31T23:59:00Z"),
            ..EventFilter::default()
        },
        EventFilter {
            until: at("2026-01-15T09:52:00Z"),
            ..EventFilter::default()
        },
        EventFilter {
            since: at("2026-02-10T10:10:00Z"),
            until: at("2026-02-10T10:20:00Z"),
            ..EventFilter::default()
        },
    ];
    let zones = [
        chrono_tz::UTC,
        chrono_tz::Europe::Berlin,
        chrono_tz::Asia::Kathmandu,
        chrono_tz::America::St_Johns,
        chrono_tz::Africa::Monrovia,
    ];
    for f in &filters {
        let stored = ledger.events(f).await.expect("events");
        let expected: Vec<&UsageEvent> = events.iter().filter(|e| f.matches(e)).collect();
        assert_eq!(stored.len(), expected.len(), "{f:?}");
        for by in [
            GroupBy::Key,
            GroupBy::Owner,
            GroupBy::Org,
            GroupBy::Model,
            GroupBy::Day,
            GroupBy::Week,
            GroupBy::Month,
        ] {
            for tz in zones {
                let report = ledger.report(f, by, tz).await.expect("report");
                assert_eq!(
                    report,
                    crate::ledger::aggregate(expected.iter().copied(), by, tz),
                    "{by:?} in {tz}, {f:?}"
                );
            }
        }
    }
}

/// Pruning deletes old events only: budgets keep their spend (also when their limits change afterwards), a pruned
/// request id stays a duplicate (answering the first event's id), and reports follow the events.
pub async fn prune_keeps_spend_and_request_ids(ledger: Arc<dyn Ledger>) {
    let alice = BudgetScope::Owner("alice".into());
    ledger
        .set_budget(&Budget::new(alice.clone(), d("10"), BudgetPeriod::Monthly).expect("budget"))
        .await
        .expect("set budget");
    let old = event("r1", "alice", "0.5", t0() - Duration::days(2));
    ledger.record(&old).await.expect("record");
    ledger
        .record(&event("r2", "alice", "0.25", t0()))
        .await
        .expect("record");
    assert_eq!(
        ledger.prune(t0() - Duration::days(1)).await.expect("prune"),
        1
    );
    assert_eq!(
        ledger.prune(t0() - Duration::days(1)).await.expect("prune"),
        0
    );
    let left = every_event(&ledger).await;
    assert_eq!(
        left.iter()
            .map(|e| e.request_id.as_str())
            .collect::<Vec<_>>(),
        ["r2"]
    );
    let spent = |ledger: Arc<dyn Ledger>| async move {
        ledger
            .budget_status(&BudgetScope::Owner("alice".into()), t0())
            .await
            .expect("status")
            .expect("budget")
            .spent
    };
    assert_eq!(spent(ledger.clone()).await, d("0.75"));
    let mut resent = event("r1", "alice", "0.5", t0() - Duration::days(2));
    resent.event_id = "ev_resent".into();
    let again = ledger.record(&resent).await.expect("resend");
    assert!(again.duplicate);
    assert_eq!(again.event_id, old.event_id);
    let batch = ledger.record_batch(&[resent.clone()]).await.expect("batch");
    assert!(batch[0].duplicate);
    assert_eq!(spent(ledger.clone()).await, d("0.75"));
    ledger
        .set_budget(&Budget::new(alice.clone(), d("20"), BudgetPeriod::Monthly).expect("budget"))
        .await
        .expect("raise the limit");
    assert_eq!(spent(ledger.clone()).await, d("0.75"));
    let report = ledger
        .report(&EventFilter::default(), GroupBy::Owner, chrono_tz::UTC)
        .await
        .expect("report");
    assert_eq!(report.total, d("0.25"));
    assert_eq!(every_event(&ledger).await.len(), 1);
}

/// Pages of `events_after` give every event once, in the order of `events`.
pub async fn events_page_in_order(ledger: Arc<dyn Ledger>) {
    let events: Vec<UsageEvent> = (0..7)
        .map(|i| {
            event(
                &format!("p{i}"),
                "alice",
                "0.01",
                t0() + Duration::minutes(i % 3),
            )
        })
        .collect();
    ledger.record_batch(&events).await.expect("batch");
    let all = every_event(&ledger).await;
    let mut paged = Vec::new();
    let mut cursor = None;
    loop {
        let page = ledger
            .events_after(&EventFilter::default(), cursor.as_ref(), 2)
            .await
            .expect("page");
        let Some(last) = page.last() else { break };
        cursor = Some(crate::ledger::EventCursor::after(last));
        assert!(page.len() <= 2);
        paged.extend(page);
    }
    assert_eq!(paged, all);
}

/// Status reports spend, reservations, what remains, and the soft limit.
pub async fn budget_status_and_soft_limit(ledger: Arc<dyn Ledger>) {
    let alice = BudgetScope::Owner("alice".into());
    assert!(
        ledger
            .budget_status(&alice, t0())
            .await
            .expect("status")
            .is_none()
    );
    let budget = Budget::new(alice.clone(), d("1.00"), BudgetPeriod::Daily)
        .expect("budget")
        .soft_limit(d("0.5"))
        .expect("soft");
    ledger.set_budget(&budget).await.expect("set");
    assert_eq!(ledger.budget(&alice).await.expect("get"), Some(budget));
    ledger
        .record(&event("r1", "alice", "0.30", t0()))
        .await
        .expect("record");
    let hold = ledger
        .reserve(
            std::slice::from_ref(&alice),
            d("0.25"),
            t0(),
            Duration::minutes(5),
        )
        .await
        .expect("reserve");
    let s = ledger
        .budget_status(&alice, t0())
        .await
        .expect("status")
        .expect("budget");
    assert_eq!(
        (s.limit, s.spent, s.reserved, s.remaining),
        (d("1"), d("0.3"), d("0.25"), d("0.45"))
    );
    assert!(s.soft_exceeded);
    assert_eq!(
        s.period_start,
        Utc.with_ymd_and_hms(2026, 3, 10, 0, 0, 0)
            .single()
            .expect("date")
    );
    ledger.release(&hold.id).await.expect("release");
    let s = ledger
        .budget_status(&alice, t0())
        .await
        .expect("status")
        .expect("budget");
    assert!(!s.soft_exceeded);
    // The next day starts afresh.
    let s = ledger
        .budget_status(&alice, t0() + Duration::days(1))
        .await
        .expect("status")
        .expect("budget");
    assert_eq!(s.spent, Decimal::ZERO);
}

/// A reservation over several budgets takes all or none.
pub async fn reserve_all_or_none(ledger: Arc<dyn Ledger>) {
    let key = BudgetScope::Key("k1".into());
    let org = BudgetScope::Org("acme".into());
    ledger
        .set_budget(&Budget::new(key.clone(), d("10"), BudgetPeriod::Total).expect("b"))
        .await
        .expect("set");
    ledger
        .set_budget(&Budget::new(org.clone(), d("1"), BudgetPeriod::Monthly).expect("b"))
        .await
        .expect("set");
    let both = [
        key.clone(),
        org.clone(),
        BudgetScope::Owner("no-budget".into()),
    ];
    let ok = ledger
        .reserve(&both, d("0.6"), t0(), Duration::minutes(1))
        .await
        .expect("reserve");
    assert_eq!(ok.scopes, [key.clone(), org.clone()]);
    match ledger
        .reserve(&both, d("0.5"), t0(), Duration::minutes(1))
        .await
    {
        Err(Error::BudgetExceeded {
            scope,
            limit,
            spent,
            reserved,
            requested,
            period_end,
        }) => {
            assert_eq!(
                (scope.as_str(), limit, spent, reserved, requested),
                ("org:acme", d("1"), Decimal::ZERO, d("0.6"), d("0.5"))
            );
            // The refusal says when the room comes back: the end of the period holding the reservation time.
            assert!(period_end > t0(), "{period_end}");
        }
        other => panic!("expected BudgetExceeded, got {other:?}"),
    }
    // The key budget was not touched by the refused reservation.
    let s = ledger
        .budget_status(&key, t0())
        .await
        .expect("status")
        .expect("budget");
    assert_eq!(s.reserved, d("0.6"));
    // Exactly up to the limit is allowed.
    ledger
        .reserve(&both, d("0.4"), t0(), Duration::minutes(1))
        .await
        .expect("fits exactly");
    assert!(
        ledger
            .reserve(&both, d("0.000001"), t0(), Duration::minutes(1))
            .await
            .is_err()
    );
}

/// Settle swaps the reservation for the actual cost; release frees it.
pub async fn settle_and_release(ledger: Arc<dyn Ledger>) {
    let alice = alice_budget(&ledger, "1", BudgetPeriod::Monthly).await;
    let hold = ledger
        .reserve(
            std::slice::from_ref(&alice),
            d("0.9"),
            t0(),
            Duration::minutes(5),
        )
        .await
        .expect("reserve");
    let recorded = ledger
        .settle(&hold.id, &event("r1", "alice", "0.35", t0()), t0())
        .await
        .expect("settle");
    assert!(!recorded.duplicate);
    let s = ledger
        .budget_status(&alice, t0())
        .await
        .expect("status")
        .expect("budget");
    assert_eq!((s.spent, s.reserved), (d("0.35"), Decimal::ZERO));
    // Settling again (a retry) counts once.
    assert!(
        ledger
            .settle(&hold.id, &event("r1", "alice", "0.35", t0()), t0())
            .await
            .expect("settle")
            .duplicate
    );
    let hold = ledger
        .reserve(
            std::slice::from_ref(&alice),
            d("0.65"),
            t0(),
            Duration::minutes(5),
        )
        .await
        .expect("reserve");
    assert!(ledger.release(&hold.id).await.expect("release"));
    assert!(!ledger.release(&hold.id).await.expect("release again"));
    let s = ledger
        .budget_status(&alice, t0())
        .await
        .expect("status")
        .expect("budget");
    assert_eq!(
        (s.spent, s.reserved, s.remaining),
        (d("0.35"), Decimal::ZERO, d("0.65"))
    );
}

/// An `estimated` event is replaced by the exact event of its request id when that turns up (an estimate gives way to
/// the exact usage): one event, the exact usage and cost, budgets moved by the difference, reports (and their
/// rollups) following, `estimated_first` kept; nothing else replaces an event.
pub async fn estimated_replaced_by_exact(ledger: Arc<dyn Ledger>) {
    let alice = alice_budget(&ledger, "10", BudgetPeriod::Monthly).await;
    let estimated = |request: &str, cost: &str| {
        let mut e = event(request, "alice", cost, t0());
        e.estimated = true;
        e.usage.output = 4000;
        e
    };
    let exact = |request: &str, cost: &str| {
        let mut e = event(request, "alice", cost, t0() + Duration::hours(1));
        e.event_id = format!("ev_exact_{request}");
        e
    };
    let hold = ledger
        .reserve(
            std::slice::from_ref(&alice),
            d("0.5"),
            t0(),
            Duration::minutes(5),
        )
        .await
        .expect("reserve");
    let first = ledger
        .settle(&hold.id, &estimated("r-a", "0.5"), t0())
        .await
        .expect("settle");
    assert!(!first.duplicate && !first.replaced);
    let batch = ledger
        .record_batch(&[
            exact("r-a", "0.03"),
            estimated("r-b", "0.4"),
            exact("r-b", "0.05"),
        ])
        .await
        .expect("batch");
    assert_eq!(
        batch
            .iter()
            .map(|r| (r.duplicate, r.replaced))
            .collect::<Vec<_>>(),
        [(false, true), (false, false), (false, true)]
    );
    assert_eq!(
        batch[0].event_id, first.event_id,
        "the stored event keeps its id"
    );
    // Once exact, an event is never replaced again, by exact or estimated usage.
    for again in [exact("r-a", "0.07"), estimated("r-a", "0.5")] {
        let r = ledger.record(&again).await.expect("record");
        assert!(r.duplicate && !r.replaced);
    }
    let events = every_event(&ledger).await;
    assert_eq!(events.len(), 2);
    let a = events.iter().find(|e| e.request_id == "r-a").expect("r-a");
    assert_eq!((a.event_id.as_str(), a.at), (first.event_id.as_str(), t0()));
    assert_eq!((a.cost, a.usage.output), (d("0.03"), 10));
    assert!(!a.estimated && a.estimated_first);
    let s = ledger
        .budget_status(&alice, t0())
        .await
        .expect("status")
        .expect("budget");
    assert_eq!((s.spent, s.reserved), (d("0.08"), Decimal::ZERO));
    let month = EventFilter {
        since: Some(
            Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0)
                .single()
                .expect("date"),
        ),
        until: Some(
            Utc.with_ymd_and_hms(2026, 4, 1, 0, 0, 0)
                .single()
                .expect("date"),
        ),
        ..EventFilter::default()
    };
    for f in [EventFilter::default(), month] {
        for by in [GroupBy::Owner, GroupBy::Model, GroupBy::Day, GroupBy::Month] {
            let report = ledger.report(&f, by, chrono_tz::UTC).await.expect("report");
            assert_eq!(
                report,
                crate::ledger::aggregate(events.iter(), by, chrono_tz::UTC),
                "{by:?}"
            );
            assert_eq!((report.total, report.estimated.events), (d("0.08"), 0));
        }
    }
}

/// A reservation claims its request id: while it lives the id is refused, with no event; released,
/// expired or refused for budget, the id is free again; recorded (or pruned), it is refused with its event.
/// Concurrent claims of one id: exactly one wins.
pub async fn request_ids_are_claimed_with_the_reservation(ledger: Arc<dyn Ledger>) {
    let alice = alice_budget(&ledger, "1", BudgetPeriod::Total).await;
    let scopes = std::slice::from_ref(&alice);
    let ttl = Duration::minutes(5);
    let taken = |r: crate::error::Result<crate::ledger::Reservation>| match r {
        Err(Error::DuplicateRequest { event_id, cost, .. }) => (event_id, cost),
        other => panic!("expected DUPLICATE_REQUEST, got {other:?}"),
    };
    let first = ledger
        .reserve_request("r1", scopes, d("0.4"), t0(), ttl)
        .await
        .expect("claim");
    assert_eq!(first.scopes, std::slice::from_ref(&alice));
    assert_eq!(
        taken(
            ledger
                .reserve_request("r1", scopes, d("0.1"), t0(), ttl)
                .await
        ),
        (None, None)
    );
    // Another id, and unclaimed reservations, are unaffected.
    ledger
        .reserve_request("r2", scopes, d("0.1"), t0(), Duration::minutes(1))
        .await
        .expect("another id");
    ledger
        .reserve(scopes, d("0.1"), t0(), ttl)
        .await
        .expect("unclaimed");
    // Released: free again.
    assert!(ledger.release(&first.id).await.expect("release"));
    let again = ledger
        .reserve_request("r1", scopes, d("0.4"), t0(), ttl)
        .await
        .expect("claim after release");
    // Refused for budget: nothing claimed.
    assert!(matches!(
        ledger
            .reserve_request("r3", scopes, d("0.9"), t0(), ttl)
            .await,
        Err(Error::BudgetExceeded { .. })
    ));
    // Settled: the id is recorded, and refused with its event and cost.
    let recorded = ledger
        .settle(&again.id, &event("r1", "alice", "0.25", t0()), t0())
        .await
        .expect("settle");
    assert_eq!(
        taken(
            ledger
                .reserve_request("r1", scopes, d("0.1"), t0(), ttl)
                .await
        ),
        (Some(recorded.event_id.clone()), Some(d("0.25")))
    );
    // Expired: free again (judged at the new claim's time).
    let later = t0() + Duration::minutes(2);
    ledger
        .reserve_request("r2", scopes, d("0.1"), later, ttl)
        .await
        .expect("claim after expiry");
    ledger
        .reserve_request("r3", scopes, d("0.1"), later, ttl)
        .await
        .expect("an id refused for budget was never claimed");
    // Pruned: still recorded.
    let old = Utc
        .with_ymd_and_hms(2020, 1, 1, 0, 0, 0)
        .single()
        .expect("date");
    ledger
        .record(&event("r-old", "bob", "0.5", old))
        .await
        .expect("record");
    ledger.prune(old + Duration::days(1)).await.expect("prune");
    let (event_id, _) = taken(
        ledger
            .reserve_request("r-old", &[], Decimal::ZERO, later, ttl)
            .await,
    );
    assert!(event_id.is_some());
    // Eight claims of one id at once: one wins.
    let claims = (0..8).map(|_| {
        let ledger = ledger.clone();
        tokio::spawn(async move {
            ledger
                .reserve_request("r-race", &[], Decimal::ZERO, later, ttl)
                .await
                .is_ok()
        })
    });
    let mut won = 0;
    for claim in claims {
        won += usize::from(claim.await.expect("task"));
    }
    assert_eq!(won, 1);
}

/// An abandoned reservation stops counting at its deadline.
pub async fn reservations_expire(ledger: Arc<dyn Ledger>) {
    let alice = alice_budget(&ledger, "1", BudgetPeriod::Monthly).await;
    ledger
        .reserve(
            std::slice::from_ref(&alice),
            d("1"),
            t0(),
            Duration::seconds(30),
        )
        .await
        .expect("reserve");
    assert!(
        ledger
            .reserve(
                std::slice::from_ref(&alice),
                d("0.01"),
                t0() + Duration::seconds(29),
                Duration::seconds(30)
            )
            .await
            .is_err()
    );
    let later = t0() + Duration::seconds(30);
    assert_eq!(
        ledger
            .budget_status(&alice, later)
            .await
            .expect("status")
            .expect("b")
            .reserved,
        Decimal::ZERO
    );
    ledger
        .reserve(
            std::slice::from_ref(&alice),
            d("1"),
            later,
            Duration::seconds(30),
        )
        .await
        .expect("room again");
}

/// 64 concurrent tasks reserving and settling never take spend plus reservations past the limit.
pub async fn concurrent_reservations_never_overshoot(ledger: Arc<dyn Ledger>) {
    let alice = BudgetScope::Owner("alice".into());
    let limit = d("1.00");
    ledger
        .set_budget(&Budget::new(alice.clone(), limit, BudgetPeriod::Monthly).expect("b"))
        .await
        .expect("set");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..64u32 {
        let ledger = ledger.clone();
        let alice = alice.clone();
        tasks.spawn(async move {
            let mut admitted = 0u32;
            for round in 0..3u32 {
                // Worst case 0.05; actual cost a little less, varying.
                match ledger
                    .reserve(
                        std::slice::from_ref(&alice),
                        d("0.05"),
                        t0(),
                        Duration::minutes(5),
                    )
                    .await
                {
                    Ok(hold) => {
                        let status = ledger
                            .budget_status(&alice, t0())
                            .await
                            .expect("status")
                            .expect("budget");
                        assert!(
                            status.spent + status.reserved <= status.limit,
                            "overshoot: {status:?}"
                        );
                        let actual = Decimal::new(i64::from(30 + (i + round) % 20), 3);
                        let req = format!("req-{i}-{round}");
                        ledger
                            .settle(
                                &hold.id,
                                &event(&req, "alice", &actual.to_string(), t0()),
                                t0(),
                            )
                            .await
                            .expect("settle");
                        admitted += 1;
                    }
                    Err(Error::BudgetExceeded { .. }) => {}
                    Err(e) => panic!("{e}"),
                }
                tokio::task::yield_now().await;
            }
            admitted
        });
    }
    let mut admitted = 0;
    while let Some(r) = tasks.join_next().await {
        admitted += r.expect("task");
    }
    let s = ledger
        .budget_status(&alice, t0())
        .await
        .expect("status")
        .expect("budget");
    assert!(s.spent <= limit, "spent {} over {limit}", s.spent);
    assert_eq!(s.reserved, Decimal::ZERO);
    let events = every_event(&ledger).await;
    assert_eq!(events.len() as u32, admitted);
    assert_eq!(events.iter().map(|e| e.cost).sum::<Decimal>(), s.spent);
    assert!(
        admitted >= 20,
        "only {admitted} admitted: the limit should allow at least 20 reservations of 0.05"
    );
}

/// Setting a budget counts spend already recorded in its period (and re-counts on a change of period).
pub async fn set_budget_counts_past_events(ledger: Arc<dyn Ledger>) {
    ledger
        .record(&event("r1", "alice", "0.4", t0() - Duration::days(20)))
        .await
        .expect("record");
    ledger
        .record(&event("r2", "alice", "0.1", t0()))
        .await
        .expect("record");
    let alice = alice_budget(&ledger, "1", BudgetPeriod::Monthly).await;
    assert_eq!(
        ledger
            .budget_status(&alice, t0())
            .await
            .expect("s")
            .expect("b")
            .spent,
        d("0.1")
    );
    ledger
        .set_budget(&Budget::new(alice.clone(), d("1"), BudgetPeriod::Total).expect("b"))
        .await
        .expect("set");
    assert_eq!(
        ledger
            .budget_status(&alice, t0())
            .await
            .expect("s")
            .expect("b")
            .spent,
        d("0.5")
    );
    ledger
        .record(&event("r3", "alice", "0.25", t0()))
        .await
        .expect("record");
    assert_eq!(
        ledger
            .budget_status(&alice, t0())
            .await
            .expect("s")
            .expect("b")
            .spent,
        d("0.75")
    );
}

/// Events keep their tags and end user; reports group by each (an event with two tags in both groups, once in
/// the total) and filter by them, on their own and with the other filters; paging with such a filter is exact.
pub async fn reports_by_tag_and_end_user(ledger: Arc<dyn Ledger>) {
    let tagged = |r: &str, cost: &str, tags: &[&str], user: Option<&str>| {
        let mut e = event(r, "alice", cost, t0());
        e.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        e.end_user = user.map(str::to_owned);
        e
    };
    let events = [
        tagged("t1", "0.1", &["batch", "eu"], Some("user-1")),
        tagged("t2", "0.2", &["batch"], Some("user-2")),
        tagged("t3", "0.4", &[], None),
        tagged("t4", "0.8", &["eu"], Some("user-1")),
    ];
    ledger.record_batch(&events).await.expect("record");
    let mut bob = tagged("t5", "1.6", &["batch"], Some("user-1"));
    bob.owner = "bob".into();
    ledger.record(&bob).await.expect("record");
    let stored = ledger
        .events(&EventFilter::new().owner("alice"))
        .await
        .expect("events");
    assert_eq!(stored.len(), 4);
    for e in &events {
        let got = stored
            .iter()
            .find(|s| s.request_id == e.request_id)
            .expect("stored");
        assert_eq!((&got.tags, &got.end_user), (&e.tags, &e.end_user));
    }
    let groups = |r: &crate::ledger::Report| -> Vec<(String, Decimal, u64)> {
        r.groups
            .iter()
            .map(|g| (g.key.clone(), g.cost, g.events))
            .collect()
    };
    let alice = EventFilter::new().owner("alice");
    let by_tag = ledger
        .report(&alice, GroupBy::Tag, chrono_tz::UTC)
        .await
        .expect("report");
    assert_eq!(
        groups(&by_tag),
        vec![
            ("(none)".to_owned(), d("0.4"), 1),
            ("batch".to_owned(), d("0.3"), 2),
            ("eu".to_owned(), d("0.9"), 2),
        ]
    );
    assert_eq!(by_tag.total, d("1.5"), "each event once");
    let by_user = ledger
        .report(&alice, GroupBy::EndUser, chrono_tz::UTC)
        .await
        .expect("report");
    assert_eq!(
        groups(&by_user),
        vec![
            ("(none)".to_owned(), d("0.4"), 1),
            ("user-1".to_owned(), d("0.9"), 2),
            ("user-2".to_owned(), d("0.2"), 1),
        ]
    );
    let batch = alice.clone().tag("batch");
    let by_model = ledger
        .report(&batch, GroupBy::Model, chrono_tz::UTC)
        .await
        .expect("report");
    assert_eq!(by_model.total, d("0.3"));
    let everyone = ledger
        .report(
            &EventFilter::new().tag("batch"),
            GroupBy::Owner,
            chrono_tz::UTC,
        )
        .await
        .expect("report");
    assert_eq!(
        groups(&everyone),
        vec![
            ("alice".to_owned(), d("0.3"), 2),
            ("bob".to_owned(), d("1.6"), 1)
        ]
    );
    let user_1 = EventFilter::new().end_user("user-1");
    let mut page = Vec::new();
    let mut after = None;
    loop {
        let next = ledger
            .events_after(&user_1, after.as_ref(), 1)
            .await
            .expect("page");
        let Some(e) = next.first() else { break };
        after = Some(EventCursor::after(e));
        page.push(e.request_id.clone());
    }
    page.sort();
    assert_eq!(page, ["t1", "t4", "t5"]);
}

/// A deleted budget no longer holds requests back and no longer shows; set again, it counts its spend from the
/// events stored.
pub async fn delete_budget_lifts_it(ledger: Arc<dyn Ledger>) {
    ledger
        .record(&event("d1", "alice", "0.4", t0()))
        .await
        .expect("record");
    let alice = alice_budget(&ledger, "1", BudgetPeriod::Monthly).await;
    let scopes = std::slice::from_ref(&alice);
    let refused = ledger
        .reserve(scopes, d("0.7"), t0(), Duration::minutes(1))
        .await
        .expect_err("over the budget");
    assert!(
        matches!(refused, Error::BudgetExceeded { .. }),
        "{refused:?}"
    );
    assert!(ledger.delete_budget(&alice).await.expect("delete"));
    assert!(!ledger.delete_budget(&alice).await.expect("delete again"));
    assert_eq!(ledger.budget(&alice).await.expect("budget"), None);
    assert_eq!(
        ledger.budget_status(&alice, t0()).await.expect("status"),
        None
    );
    ledger
        .reserve(scopes, d("0.7"), t0(), Duration::minutes(1))
        .await
        .expect("no budget: admitted");
    let again = alice_budget(&ledger, "1", BudgetPeriod::Monthly).await;
    let status = ledger
        .budget_status(&again, t0())
        .await
        .expect("status")
        .expect("a budget");
    assert_eq!(status.spent, d("0.4"));
    // Someone else's budget was never touched.
    assert!(
        !ledger
            .delete_budget(&BudgetScope::Owner("bob".into()))
            .await
            .expect("delete")
    );
}

/// Bad input is refused with [`Error::InvalidInput`] before anything is stored: a negative or zero-ttl
/// reservation, a blank budget scope, an event with a blank owner, a control character or a negative cost, a
/// budget with a negative limit.
pub async fn invalid_input_is_refused(ledger: Arc<dyn Ledger>) {
    let now = t0();
    let alice = BudgetScope::Owner("alice".into());
    let invalid = |r: Result<(), Error>, what: &str| {
        assert!(
            matches!(r, Err(Error::InvalidInput { .. })),
            "{what}: expected InvalidInput, got {r:?}"
        );
    };
    let minute = Duration::minutes(1);
    invalid(
        ledger
            .reserve(std::slice::from_ref(&alice), d("-1"), now, minute)
            .await
            .map(drop),
        "negative reservation",
    );
    invalid(
        ledger
            .reserve(std::slice::from_ref(&alice), d("1"), now, Duration::zero())
            .await
            .map(drop),
        "zero ttl",
    );
    invalid(
        ledger
            .reserve(&[BudgetScope::Org(String::new())], d("1"), now, minute)
            .await
            .map(drop),
        "blank scope",
    );
    let mut blank_owner = event("bad-1", "alice", "0.10", now);
    blank_owner.owner = " ".into();
    invalid(ledger.record(&blank_owner).await.map(drop), "blank owner");
    let mut escape = event("bad-2", "alice", "0.10", now);
    escape.request_id = "req\u{1b}[2J".into();
    invalid(ledger.record(&escape).await.map(drop), "control character");
    let mut negative = event("bad-3", "alice", "0.10", now);
    negative.cost = d("-0.10");
    invalid(
        ledger
            .record_batch(&[event("ok-1", "alice", "0.10", now), negative.clone()])
            .await
            .map(drop),
        "negative cost in a batch",
    );
    invalid(
        ledger.settle("rsv_none", &negative, now).await.map(drop),
        "negative settle",
    );
    let budget = Budget {
        scope: BudgetScope::Owner("bob".into()),
        limit: d("-5"),
        soft_limit: None,
        period: BudgetPeriod::Monthly,
        tz: chrono_tz::UTC,
        thresholds: None,
    };
    invalid(ledger.set_budget(&budget).await, "negative limit");
    assert!(
        every_event(&ledger).await.is_empty(),
        "nothing of a refused call is stored"
    );
    assert!(
        ledger
            .budget(&budget.scope)
            .await
            .expect("budget")
            .is_none()
    );
}

/// Claims lapse unless their instance renews them, and a lapsed claim is billed its estimate (once), never
/// dropped unbilled: spend plus reservations keep it from the moment it lapses until a sweep bills it. A lapsed
/// claim without an estimate (never sent) is freed. On the real clock: PostgreSQL judges expiry by its own.
pub async fn lapsed_claims_are_billed_never_dropped(ledger: Arc<dyn Ledger>) {
    let alice = alice_budget(&ledger, "10", BudgetPeriod::Monthly).await;
    let scopes = std::slice::from_ref(&alice);
    let standing = async || {
        let s = ledger
            .budget_status(&alice, Utc::now())
            .await
            .expect("status")
            .expect("budget");
        (s.spent, s.reserved)
    };
    let estimate = |request: &str, cost: &str| {
        let mut e = event(request, "alice", cost, Utc::now());
        e.estimated = true;
        e
    };
    let short = Duration::milliseconds(600);
    let (a, c) = (estimate("lapse-a", "0.5"), estimate("lapse-c", "0.125"));
    let claim = |request: &'static str, instance: &'static str| {
        crate::ledger::Claim::request(request).instance(Some(instance))
    };
    let now = Utc::now();
    ledger
        .reserve_claim(
            claim("lapse-a", "i1").estimate(&a),
            scopes,
            d("0.5"),
            now,
            short,
        )
        .await
        .expect("a");
    ledger
        .reserve_claim(claim("lapse-b", "i1"), scopes, d("0.25"), now, short)
        .await
        .expect("b: never sent, no estimate");
    ledger
        .reserve_claim(
            claim("lapse-c", "i2").estimate(&c),
            scopes,
            d("0.125"),
            now,
            short,
        )
        .await
        .expect("c");
    // i1 lives and renews; i2 died.
    assert_eq!(
        ledger
            .renew("i1", Utc::now(), Duration::seconds(60))
            .await
            .expect("renew"),
        2
    );
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    let (spent, reserved) = standing().await;
    assert_eq!(spent + reserved, d("0.875"), "a lapsed claim still counts");
    // Billed by this sweep, or already by the status read (a backend may sweep as it reads); never twice.
    assert!(ledger.sweep(Utc::now()).await.expect("sweep") <= 1);
    assert_eq!(
        ledger.sweep(Utc::now()).await.expect("sweep"),
        0,
        "billed once"
    );
    assert_eq!(standing().await, (d("0.125"), d("0.75")));
    let events = every_event(&ledger).await;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (
            events[0].request_id.as_str(),
            events[0].estimated,
            events[0].cost
        ),
        ("lapse-c", true, d("0.125"))
    );
    // i1 stops renewing: its claim with an estimate is billed, the one without is freed.
    ledger
        .renew("i1", Utc::now(), short)
        .await
        .expect("last renew");
    tokio::time::sleep(std::time::Duration::from_millis(900)).await;
    assert_eq!(ledger.sweep(Utc::now()).await.expect("sweep"), 1);
    assert_eq!(ledger.sweep(Utc::now()).await.expect("sweep"), 0);
    assert_eq!(standing().await, (d("0.625"), Decimal::ZERO));
    let billed: Vec<String> = every_event(&ledger)
        .await
        .into_iter()
        .map(|e| e.request_id)
        .collect();
    assert_eq!(billed.len(), 2);
    assert!(billed.contains(&"lapse-a".to_owned()), "{billed:?}");
}

/// A batch of settles is each settle at once: reservations ended, events recorded once (a request id already
/// recorded is a duplicate), spend moved; a batch holding an invalid event writes nothing.
pub async fn settle_batch_settles_each(ledger: Arc<dyn Ledger>) {
    let alice = alice_budget(&ledger, "10", BudgetPeriod::Monthly).await;
    let scopes = std::slice::from_ref(&alice);
    let ttl = Duration::minutes(5);
    let r1 = ledger.reserve(scopes, d("1"), t0(), ttl).await.expect("r1");
    let r2 = ledger.reserve(scopes, d("1"), t0(), ttl).await.expect("r2");
    let earlier = event("b-0", "alice", "0.5", t0());
    ledger.record(&earlier).await.expect("earlier");
    let (e1, e2) = (
        event("b-1", "alice", "0.25", t0()),
        event("b-2", "alice", "0.125", t0()),
    );
    let mut bad = event("b-3", "alice", "0.125", t0());
    bad.cost = d("-1");
    assert!(
        ledger
            .settle_batch(&[(&r1.id, &e1), ("none", &bad)], t0())
            .await
            .is_err()
    );
    assert_eq!(
        every_event(&ledger).await.len(),
        1,
        "nothing of a bad batch"
    );
    let again = event("b-0", "alice", "0.5", t0());
    let recorded = ledger
        .settle_batch(&[(&r1.id, &e1), (&r2.id, &e2), ("gone", &again)], t0())
        .await
        .expect("batch");
    let duplicates: Vec<bool> = recorded.iter().map(|r| r.duplicate).collect();
    assert_eq!(duplicates, [false, false, true]);
    let status = ledger
        .budget_status(&alice, t0())
        .await
        .expect("status")
        .expect("budget");
    assert_eq!((status.spent, status.reserved), (d("0.875"), Decimal::ZERO));
    assert_eq!(every_event(&ledger).await.len(), 3);
}
