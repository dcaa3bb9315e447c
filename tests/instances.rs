//! Several instances on one database (DESIGN §11): separate processes, each with its own pool, sharing SQLite or
//! PostgreSQL. A child process is this test binary run again with `KEYMETER_INSTANCE_STORE` set, running only
//! `instance_child`.

use std::process::Command;
use std::sync::Arc;

use chrono::{Duration, Utc};
use keymeter::Error;
use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, Ledger, UsageEvent};
use keymeter::pricing::Usage;
use keymeter::random::OsRandom;
use rust_decimal::Decimal;

#[path = "common/mod.rs"]
mod common;

const STORE: &str = "KEYMETER_INSTANCE_STORE";
const NAME: &str = "KEYMETER_INSTANCE_NAME";
/// When the children start hammering (Unix milliseconds), so that they overlap whatever their start-up times.
const START: &str = "KEYMETER_INSTANCE_START";
const TASKS: u32 = 32;
const ROUNDS: u32 = 4;

fn owner() -> BudgetScope {
    BudgetScope::Owner("alice".into())
}

fn org() -> BudgetScope {
    BudgetScope::Org("acme".into())
}

fn limits() -> (Decimal, Decimal) {
    (Decimal::new(150, 2), Decimal::new(120, 2))
}

/// `TASKS` tasks, each reserving `ROUNDS` times against both budgets, checking after every admission that
/// neither budget's settled + reserved passes its limit, then settling a little under the worst case.
/// Returns how many reservations were admitted.
async fn hammer(ledger: Arc<dyn Ledger>, instance: &str) -> u32 {
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let ledger = ledger.clone();
        let instance = instance.to_owned();
        tasks.spawn(async move {
            let mut admitted = 0;
            for round in 0..ROUNDS {
                let now = Utc::now();
                let hold = match ledger
                    .reserve(
                        &[owner(), org()],
                        Decimal::new(5, 2),
                        now,
                        Duration::minutes(5),
                    )
                    .await
                {
                    Ok(hold) => hold,
                    Err(Error::BudgetExceeded { .. }) => continue,
                    Err(e) => panic!("reserve: {e}"),
                };
                for scope in [owner(), org()] {
                    let s = ledger
                        .budget_status(&scope, Utc::now())
                        .await
                        .expect("status")
                        .expect("budget");
                    assert!(
                        s.spent + s.reserved <= s.limit,
                        "overshoot seen by {instance}: {s:?}"
                    );
                }
                let cost = Decimal::new(i64::from(30 + (task + round) % 20), 3);
                let request = format!("{instance}-{task}-{round}");
                let event = UsageEvent::new(
                    Some(&request),
                    Utc::now(),
                    "alice",
                    "openai",
                    "gpt-4o",
                    Usage::default(),
                    cost,
                    &OsRandom,
                )
                .expect("event")
                .org("acme");
                ledger
                    .settle(&hold.id, &event, Utc::now())
                    .await
                    .expect("settle");
                admitted += 1;
            }
            admitted
        });
    }
    let mut admitted = 0;
    while let Some(n) = tasks.join_next().await {
        admitted += n.expect("task");
    }
    admitted
}

/// Runs only as a child of `two_processes`: hammers the store it is given and prints what it admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_child() {
    let Ok(url) = std::env::var(STORE) else {
        return;
    };
    let name = std::env::var(NAME).unwrap_or_default();
    let store = keymeter::store::connect(&url).await.expect("connect");
    let start: i64 = std::env::var(START)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let wait = start - Utc::now().timestamp_millis();
    if wait > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(wait.unsigned_abs())).await;
    }
    let admitted = hammer(store.clone(), &name).await;
    store.close().await;
    println!("\nADMITTED {admitted}");
}

/// Two processes × `TASKS` tasks against the same owner and org budgets.
async fn two_processes(url: &str) {
    let store = keymeter::store::connect(url).await.expect("connect");
    let (owner_limit, org_limit) = limits();
    for (scope, limit) in [(owner(), owner_limit), (org(), org_limit)] {
        store
            .set_budget(&Budget::new(scope, limit, BudgetPeriod::Total).expect("budget"))
            .await
            .expect("set budget");
    }
    let start = (Utc::now().timestamp_millis() + 2_000).to_string();
    let children: Vec<_> = ["a", "b"]
        .iter()
        .map(|name| {
            Command::new(std::env::current_exe().expect("test binary"))
                .args([
                    "instance_child",
                    "--exact",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(STORE, url)
                .env(NAME, name)
                .env(START, &start)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn a child instance")
        })
        .collect();
    let mut admitted = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let n: u32 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("ADMITTED "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("no count from the child: {stdout}"));
        admitted.push(n);
    }
    let total: u32 = admitted.iter().sum();
    let org_status = store
        .budget_status(&org(), Utc::now())
        .await
        .expect("status")
        .expect("budget");
    let owner_status = store
        .budget_status(&owner(), Utc::now())
        .await
        .expect("status")
        .expect("budget");
    // Every admitted request was settled once; both budgets counted each.
    let events = store.events(&Default::default()).await.expect("events");
    assert_eq!(
        events.len() as u32,
        total,
        "admitted per process: {admitted:?}"
    );
    let spent: Decimal = events.iter().map(|e| e.cost).sum();
    assert_eq!(org_status.spent, spent.normalize());
    assert_eq!(owner_status.spent, spent.normalize());
    assert_eq!(org_status.reserved, Decimal::ZERO);
    assert!(org_status.spent <= org_limit && owner_status.spent <= owner_limit);
    // The tighter (org) budget refused some: it was reached, not merely approached.
    assert!(total < 2 * TASKS * ROUNDS, "nothing refused: {admitted:?}");
    assert!(
        admitted.iter().all(|n| *n > 0),
        "both processes admitted some: {admitted:?}"
    );
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_budgets_hold_across_two_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    two_processes(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_budgets_hold_across_two_processes() {
    let Some(url) = common::pg_schema_url("postgres_budgets_hold_across_two_processes").await
    else {
        return;
    };
    two_processes(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_instances_starting_together_migrate_once() {
    let Some(url) =
        common::pg_schema_url("postgres_instances_starting_together_migrate_once").await
    else {
        return;
    };
    let starts: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { keymeter::store::PostgresStore::connect(&url).await })
        })
        .collect();
    let mut stores = Vec::new();
    for s in starts {
        stores.push(s.await.expect("task").expect("every instance starts"));
    }
    let applied: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM keymeter_migrations")
        .fetch_one(stores[0].pool())
        .await
        .expect("count");
    let again: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT version) FROM keymeter_migrations")
        .fetch_one(stores[0].pool())
        .await
        .expect("count");
    assert!(applied > 0);
    assert_eq!(applied, again, "each migration recorded once");
}
