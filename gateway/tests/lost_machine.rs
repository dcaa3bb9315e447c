//! A lost machine: an instance killed (`kill -9`) with its journal gone, while its requests were at the provider.
//! Nothing of it can settle them, so its claims lapse (no heartbeat renews them) and a live instance on the same
//! database bills each at its reservation as `estimated` — holds drawn from budget leases as well, once the
//! instance has reported them (carved them into claims, every third of the claim TTL); its leases lapse unbilled. The live instance's own exchanges, longer than several
//! claim lifetimes, are renewed by its heartbeat and billed exactly, never as estimated.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::Utc;
use keymeter::ledger::{BudgetScope, EventFilter};
use rust_decimal::Decimal;
use serde_json::json;
use support::binary;

/// Polls `check` every 50 ms until it holds or `within` passes.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_machines_claims_are_billed_by_a_live_instance_and_a_live_ones_never_are() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}/gateway.db", dir.path().display());
    let key = support::prepare_alice(&store_url, 5).await;
    let up = support::upstream().await;
    let args = ["--openai-base-url", up.url.as_str()];
    let vars = |instance: &str| {
        let mut vars = support::config_vars(&store_url);
        let journal = dir.path().join(format!("journal-{instance}"));
        vars.insert("KEYMETER_JOURNAL".into(), journal.display().to_string());
        vars.insert("KEYMETER_INSTANCE_ID".into(), instance.into());
        // Claims live two seconds without a heartbeat (30 s by default), so the test waits seconds, not minutes;
        // the heartbeat renews them every 0.67 s, so two beats can run late on a loaded machine.
        vars.insert("KEYMETER_CLAIM_TTL".into(), "2s".into());
        vars
    };
    let mut lost = binary::start(&vars("a"), &args, &dir.path().join("a.log")).await;
    let live = binary::start(&vars("b"), &args, &dir.path().join("b.log")).await;
    let client = keymeter::http::client(Duration::from_secs(30)).unwrap();
    // "long": the stand-in answers after 5 s, two and a half claim lifetimes.
    let body = json!({"model": "gpt-4o", "max_tokens": 300, "user": "long",
        "messages": [{"role": "user", "content": "Say hello"}]});
    let send = |url: String| {
        let (client, key, body) = (client.clone(), key.clone(), body.clone());
        tokio::spawn(async move {
            let response = client
                .post(format!("{url}/v1/chat/completions"))
                .bearer_auth(&key)
                .json(&body)
                .send()
                .await
                .ok()?;
            let id = response
                .headers()
                .get("x-keymeter-request-id")?
                .to_str()
                .ok()?
                .to_owned();
            let cost: Decimal = response
                .headers()
                .get("x-keymeter-cost")?
                .to_str()
                .ok()?
                .parse()
                .ok()?;
            response.bytes().await.ok()?;
            Some((id, cost))
        })
    };
    let answered: Vec<_> = (0..2).map(|_| send(live.url.clone())).collect();
    let cut: Vec<_> = (0..3).map(|_| send(lost.url.clone())).collect();
    eventually(Duration::from_secs(10), "all five at the provider", || {
        let calls = up.calls().len();
        async move { calls == 5 }
    })
    .await;

    // Holds drawn from a budget lease live in the instance and its journal; the instance reports the open ones to
    // the store (carves them into claims of their own) every third of the claim TTL (DESIGN §14: the outstanding
    // holds a heartbeat reports). Lost after two such reports: what it held then is billed.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // The machine is lost: the process and its journal.
    lost.child.start_kill().unwrap();
    lost.child.wait().await.unwrap();
    std::fs::remove_dir_all(dir.path().join("journal-a")).unwrap();
    for task in cut {
        assert_eq!(
            task.await.unwrap(),
            None,
            "the lost instance answered nothing"
        );
    }
    let mut exact: HashMap<String, Decimal> = HashMap::new();
    for task in answered {
        let (id, cost) = task.await.unwrap().expect("the live instance answers");
        exact.insert(id, cost);
    }

    let store = support::config(&store_url).connect().await.unwrap();
    let alice = EventFilter::new().owner("alice");
    eventually(Duration::from_secs(10), "the lost claims billed", || {
        let store = store.clone();
        let alice = alice.clone();
        async move { store.events(&alice).await.unwrap().len() == 5 }
    })
    .await;
    let events = store.events(&alice).await.unwrap();
    let (estimated, settled): (Vec<_>, Vec<_>) = events.iter().partition(|e| e.estimated);
    assert_eq!(estimated.len(), 3, "{events:?}");
    for e in &settled {
        assert_eq!(
            exact.get(&e.request_id),
            Some(&e.cost),
            "billed what the client was told"
        );
    }
    assert_eq!(settled.len(), 2);
    // Billed at the reservation (the same for each: one body), not at a usage nobody reported.
    let reserved = estimated[0].cost;
    assert!(estimated.iter().all(|e| e.cost == reserved));
    assert!(reserved > Decimal::ZERO && reserved != *exact.values().next().unwrap());
    let status = store
        .budget_status(&BudgetScope::Owner("alice".into()), Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.reserved, Decimal::ZERO, "nothing stays held");
    assert_eq!(
        status.spent,
        exact.values().sum::<Decimal>() + reserved * Decimal::from(3)
    );
    // The live instance billed the lost one's three claims and none of its own (renewed while they ran).
    let log = live.log();
    let billed: u64 = log
        .lines()
        .filter(|l| l.contains("lapsed claims billed"))
        .filter_map(|l| {
            l.split("billed=")
                .nth(1)?
                .split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum();
    assert_eq!(billed, 3, "the live instance's log:\n{log}");
    store.close().await;
}
