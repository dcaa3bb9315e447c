//! Checks of [`crate::alerts::Outbox`] and of the alerts a backend's ledger writes: each takes the whole
//! [`Store`], since budget alerts are written by the ledger and a leaked key's by the key table's transaction.

use std::sync::Arc;

use chrono::{DateTime, Duration, TimeZone, Utc};
use rust_decimal::Decimal;

use crate::alerts::{Alert, AlertKind, Delivery, DeliveryState, Endpoint, EndpointSecret};
use crate::error::Error;
use crate::ledger::{Budget, BudgetPeriod, BudgetScope};
use crate::store::Store;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0)
        .single()
        .expect("valid date")
}

fn endpoint(id: &str, events: Vec<AlertKind>, at: DateTime<Utc>) -> Endpoint {
    Endpoint {
        id: id.into(),
        url: format!("https://hooks.example/{id}"),
        events,
        secrets: vec![EndpointSecret {
            sealed: format!("sealed-{id}"),
            expires_at: None,
        }],
        created_at: at,
    }
}

fn test_alert(n: &str, kind: AlertKind) -> Alert {
    Alert::once(kind, &[n], t0(), serde_json::json!({ "n": n }))
}

/// Claims what is due at `at`, as (alert id, endpoint id), sorted.
async fn claim(store: &Arc<dyn Store>, at: DateTime<Utc>) -> Vec<Delivery> {
    let mut due = store
        .claim_deliveries(at, Duration::seconds(10), 100)
        .await
        .expect("claim");
    due.sort_by(|a, b| (&a.alert.id, &a.endpoint_id).cmp(&(&b.alert.id, &b.endpoint_id)));
    due
}

fn pairs(due: &[Delivery]) -> Vec<(String, String)> {
    due.iter()
        .map(|d| (d.alert.id.clone(), d.endpoint_id.clone()))
        .collect()
}

/// One alert per id; each reaches the endpoints that receive its kind when it is first claimed; a claim holds
/// its deliveries for the lease; an attempt's outcome sticks (retry time, delivered, failed); removing an
/// endpoint removes its deliveries; `push_to` reaches one endpoint only.
pub async fn outbox_fans_out_once_and_leases(store: Arc<dyn Store>) {
    let t = t0();
    store
        .add_endpoint(&endpoint("whk_all", vec![], t))
        .await
        .expect("add");
    store
        .add_endpoint(&endpoint("whk_leaks", vec![AlertKind::KeyLeaked], t))
        .await
        .expect("add");
    assert!(matches!(
        store.add_endpoint(&endpoint("whk_all", vec![], t)).await,
        Err(Error::AlreadyExists { .. })
    ));
    let (a, b) = (
        test_alert("a", AlertKind::BudgetThreshold),
        test_alert("b", AlertKind::KeyLeaked),
    );
    assert_eq!(store.push(&[a.clone(), b.clone()]).await.expect("push"), 2);
    assert_eq!(
        store.push(&[a.clone(), b.clone()]).await.expect("again"),
        0,
        "one per id"
    );
    let due = claim(&store, t).await;
    let mut want = vec![
        (a.id.clone(), "whk_all".to_string()),
        (b.id.clone(), "whk_all".to_string()),
        (b.id.clone(), "whk_leaks".to_string()),
    ];
    want.sort();
    assert_eq!(pairs(&due), want);
    assert_eq!(due[0].state, DeliveryState::Pending);
    assert_eq!(due.iter().find(|d| d.alert.id == a.id).expect("a").alert, a);
    assert!(
        claim(&store, t + Duration::seconds(1)).await.is_empty(),
        "claimed for the lease"
    );
    // Outcomes: delivered, retry in 20 s, failed.
    for mut d in due {
        d.attempts = 1;
        match (d.alert.id == a.id, d.endpoint_id.as_str()) {
            (true, _) => {
                d.state = DeliveryState::Delivered;
                d.delivered_at = Some(t);
                d.last_status = Some(200);
            }
            (false, "whk_all") => {
                d.next_attempt_at = t + Duration::seconds(20);
                d.last_status = Some(500);
                d.last_error = Some("answered 500".into());
            }
            _ => {
                d.state = DeliveryState::Failed;
                d.last_error = Some("cannot connect".into());
            }
        }
        store.record_attempt(&d).await.expect("record");
    }
    assert!(claim(&store, t + Duration::seconds(15)).await.is_empty());
    let retry = claim(&store, t + Duration::seconds(21)).await;
    assert_eq!(pairs(&retry), [(b.id.clone(), "whk_all".to_string())]);
    assert_eq!(retry[0].attempts, 1);
    assert_eq!(retry[0].last_status, Some(500));
    let all = store.deliveries(10).await.expect("deliveries");
    assert_eq!(all.len(), 3);
    let delivered = all.iter().find(|d| d.alert.id == a.id).expect("a");
    assert_eq!(
        (
            delivered.state,
            delivered.delivered_at,
            delivered.last_status
        ),
        (DeliveryState::Delivered, Some(t), Some(200))
    );
    assert_eq!(
        all.iter()
            .find(|d| d.endpoint_id == "whk_leaks")
            .expect("leaks")
            .state,
        DeliveryState::Failed
    );
    // An endpoint added later gets later alerts only.
    store
        .add_endpoint(&endpoint("whk_late", vec![], t))
        .await
        .expect("add");
    let c = test_alert("c", AlertKind::KeyUnusual);
    store.push(std::slice::from_ref(&c)).await.expect("push");
    let later = claim(&store, t + Duration::seconds(40)).await;
    let mut want = vec![
        (b.id.clone(), "whk_all".to_string()),
        (c.id.clone(), "whk_all".to_string()),
        (c.id.clone(), "whk_late".to_string()),
    ];
    want.sort();
    assert_eq!(pairs(&later), want);
    // Removing an endpoint takes its deliveries.
    assert!(store.remove_endpoint("whk_leaks").await.expect("remove"));
    assert!(!store.remove_endpoint("whk_leaks").await.expect("again"));
    assert!(
        store
            .deliveries(10)
            .await
            .expect("deliveries")
            .iter()
            .all(|d| d.endpoint_id != "whk_leaks")
    );
    // push_to: one endpoint only, due at once.
    let test = Alert::webhook_test("whk_late", "n1", t + Duration::seconds(42));
    store.push_to(&test, "whk_late").await.expect("push_to");
    assert!(matches!(
        store.push_to(&test, "whk_nope").await,
        Err(Error::NotFound { .. })
    ));
    let tested = claim(&store, t + Duration::seconds(45)).await;
    assert_eq!(pairs(&tested), [(test.id.clone(), "whk_late".to_string())]);
    // A claim whose lease ran out (its deliverer died) is due again.
    let mut want = vec![
        (b.id.clone(), "whk_all".to_string()),
        (c.id.clone(), "whk_all".to_string()),
        (c.id.clone(), "whk_late".to_string()),
    ];
    want.sort();
    assert_eq!(pairs(&claim(&store, t + Duration::seconds(51)).await), want);
}

/// Endpoints read back as stored, oldest first; their secrets are replaced by a rotation (unknown: not found).
pub async fn endpoints_and_secrets(store: Arc<dyn Store>) {
    let t = t0();
    let first = endpoint(
        "whk_1",
        vec![AlertKind::BudgetExhausted, AlertKind::KeyLeaked],
        t,
    );
    let second = endpoint("whk_2", vec![], t + Duration::seconds(1));
    store.add_endpoint(&second).await.expect("add");
    store.add_endpoint(&first).await.expect("add");
    assert_eq!(
        store.endpoints().await.expect("list"),
        [first.clone(), second.clone()]
    );
    let secrets = vec![
        EndpointSecret {
            sealed: "new".into(),
            expires_at: None,
        },
        EndpointSecret {
            sealed: "old".into(),
            expires_at: Some(t + Duration::hours(1)),
        },
    ];
    store
        .set_endpoint_secrets("whk_1", &secrets)
        .await
        .expect("rotate");
    assert_eq!(store.endpoints().await.expect("list")[0].secrets, secrets);
    assert!(matches!(
        store.set_endpoint_secrets("whk_9", &secrets).await,
        Err(Error::NotFound { .. })
    ));
}

/// The ledger alerts each budget threshold, the soft limit and exhaustion once per period, in the transaction
/// of the spend that crossed it — by `record`, by `record_batch` and by a settle — never for a duplicate, and
/// again in the next period.
pub async fn budget_alerts_once_per_period(store: Arc<dyn Store>) {
    let t = t0();
    let alice = BudgetScope::Owner("alice".into());
    let budget = Budget::new(alice.clone(), Decimal::from(10), BudgetPeriod::Monthly)
        .expect("budget")
        .soft_limit(Decimal::from(7))
        .expect("soft");
    store.set_budget(&budget).await.expect("set");
    // A key budget with its own thresholds, alongside.
    let key = Budget::new(
        BudgetScope::Key("k1".into()),
        Decimal::from(100),
        BudgetPeriod::Monthly,
    )
    .expect("budget")
    .thresholds(vec![5])
    .expect("thresholds");
    store.set_budget(&key).await.expect("set");
    store
        .add_endpoint(&endpoint("whk_all", vec![], t))
        .await
        .expect("add");
    let event = super::ledger::event;
    let mut clock = t;
    let mut seen: Vec<(AlertKind, String, Option<u64>)> = Vec::new();
    let step = async |store: &Arc<dyn Store>, clock: &mut DateTime<Utc>| {
        *clock += Duration::minutes(1);
        let due = claim(store, *clock).await;
        for d in &due {
            let mut done = d.clone();
            done.state = DeliveryState::Delivered;
            store.record_attempt(&done).await.expect("record");
        }
        let mut got: Vec<(AlertKind, String, Option<u64>)> = due
            .into_iter()
            .map(|d| {
                (
                    d.alert.kind,
                    d.alert.data["scope"].as_str().unwrap_or("").to_string(),
                    d.alert.data["threshold"].as_u64(),
                )
            })
            .collect();
        got.sort();
        got
    };
    store
        .record(&event("r1", "alice", "4", t))
        .await
        .expect("r1");
    assert!(
        step(&store, &mut clock).await.is_empty(),
        "4 of 10 crosses nothing"
    );
    store
        .record(&event("r2", "alice", "1", t))
        .await
        .expect("r2");
    seen.extend(step(&store, &mut clock).await);
    assert_eq!(
        seen,
        [
            (AlertKind::BudgetThreshold, "key:k1".into(), Some(5)),
            (AlertKind::BudgetThreshold, "owner:alice".into(), Some(50))
        ]
    );
    store
        .record(&event("r2", "alice", "1", t))
        .await
        .expect("duplicate");
    assert!(
        step(&store, &mut clock).await.is_empty(),
        "a duplicate moves nothing"
    );
    store
        .record_batch(&[event("r3", "alice", "1", t), event("r4", "alice", "1.5", t)])
        .await
        .expect("batch");
    assert_eq!(
        step(&store, &mut clock).await,
        [(AlertKind::BudgetSoftLimit, "owner:alice".into(), None)]
    );
    // A settle past the limit: 80 %, 100 % and exhausted at once.
    let held = store
        .reserve(
            std::slice::from_ref(&alice),
            Decimal::from(1),
            t,
            Duration::seconds(60),
        )
        .await
        .expect("reserve");
    store
        .settle(&held.id, &event("r5", "alice", "3", t), t)
        .await
        .expect("settle");
    let crossed = step(&store, &mut clock).await;
    assert_eq!(
        crossed,
        [
            (AlertKind::BudgetThreshold, "owner:alice".into(), Some(80)),
            (AlertKind::BudgetThreshold, "owner:alice".into(), Some(100)),
            (AlertKind::BudgetExhausted, "owner:alice".into(), None),
        ]
    );
    store
        .record(&event("r6", "alice", "5", t))
        .await
        .expect("r6");
    assert!(
        step(&store, &mut clock).await.is_empty(),
        "past every mark already"
    );
    // The next month starts over.
    let next = t + Duration::days(31);
    store
        .record(&event("r7", "alice", "6", next))
        .await
        .expect("r7");
    assert_eq!(
        step(&store, &mut clock).await,
        [
            (AlertKind::BudgetThreshold, "key:k1".into(), Some(5)),
            (AlertKind::BudgetThreshold, "owner:alice".into(), Some(50))
        ]
    );
    let status = store
        .budget(&alice)
        .await
        .expect("budget")
        .expect("alice's");
    assert_eq!(status.alert_thresholds(), [50, 80, 100]);
    assert_eq!(
        store
            .budget(&BudgetScope::Key("k1".into()))
            .await
            .expect("budget")
            .expect("k1's")
            .thresholds,
        Some(vec![5])
    );
}

/// A leaked key is revoked with its alert in one step; a second report changes nothing and alerts nothing; an
/// unknown key is not found.
pub async fn revoke_leaked_once(store: Arc<dyn Store>) {
    let t = t0();
    let record = super::keys::sample("leaky");
    store.create(&record).await.expect("create");
    store
        .add_endpoint(&endpoint("whk_all", vec![], t))
        .await
        .expect("add");
    let alert = Alert::key_leaked(
        "leaky",
        &record.owner,
        None,
        Some("https://x"),
        Some("code"),
        t,
    );
    assert!(
        store
            .revoke_leaked("leaky", t, &alert)
            .await
            .expect("revoke")
    );
    let got = crate::keys::KeyStore::get(&*store, "leaky")
        .await
        .expect("get")
        .expect("record");
    assert_eq!(got.revoked_at, Some(t));
    assert!(
        !store
            .revoke_leaked("leaky", t + Duration::seconds(1), &alert)
            .await
            .expect("again")
    );
    assert_eq!(
        crate::keys::KeyStore::get(&*store, "leaky")
            .await
            .expect("get")
            .expect("record")
            .revoked_at,
        Some(t),
        "the first revocation's time stands"
    );
    assert!(matches!(
        store.revoke_leaked("nobody", t, &alert).await,
        Err(Error::NotFound { .. })
    ));
    let due = claim(&store, t).await;
    assert_eq!(pairs(&due), [(alert.id.clone(), "whk_all".to_string())]);
    assert_eq!(due[0].alert.data["key_id"], "leaky");
}
