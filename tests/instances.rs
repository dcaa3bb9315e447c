//! Several instances on one database (DESIGN §11): separate processes, each with its own pool, sharing SQLite or
//! PostgreSQL. A child process is this test binary run again with `KEYMETER_INSTANCE_STORE` set, running only
//! `instance_child`.

use std::process::Command;
use std::sync::Arc;

use chrono::{Duration, Utc};
use keymeter::Error;
use keymeter::ledger::lease::{LeaseConfig, Leases};
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
/// Set: the child draws its holds from budget leases (DESIGN §14), asking the store only when they cannot cover.
const LEASES: &str = "KEYMETER_INSTANCE_LEASES";
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
async fn hammer(ledger: Arc<dyn Ledger>, instance: &str, leases: Option<Leases>) -> u32 {
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..TASKS {
        let ledger = ledger.clone();
        let instance = instance.to_owned();
        let leases = leases.clone();
        tasks.spawn(async move {
            let mut admitted = 0;
            for round in 0..ROUNDS {
                let now = Utc::now();
                let scopes = [owner(), org()];
                let drawn = match &leases {
                    Some(leases) => leases.draw(&scopes, Decimal::new(5, 2)).await,
                    None => None,
                };
                let hold = match drawn {
                    Some(draw) => draw.id,
                    None => match ledger
                        .reserve(&scopes, Decimal::new(5, 2), now, Duration::minutes(5))
                        .await
                    {
                        Ok(hold) => hold.id,
                        Err(Error::BudgetExceeded { .. }) => continue,
                        Err(e) => panic!("reserve: {e}"),
                    },
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
                    .settle(&hold, &event, Utc::now())
                    .await
                    .expect("settle");
                if let Some(leases) = &leases {
                    leases.settled(&hold);
                }
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
    let leases = std::env::var_os(LEASES)
        .filter(|v| !v.is_empty())
        .map(|_| Leases::new(store.clone(), format!("{name}.run"), LeaseConfig::default()));
    let from = Utc::now().timestamp_millis();
    let admitted = hammer(store.clone(), &name, leases.clone()).await;
    let to = Utc::now().timestamp_millis();
    if let Some(leases) = leases {
        leases.close().await;
        println!(
            "\nDRAWS {} {} {}",
            leases.lookups().hits(),
            leases.lookups().misses(),
            leases.fallbacks()
        );
    }
    store.close().await;
    println!("\nADMITTED {admitted} {from} {to}");
}

/// Two processes × `TASKS` tasks against the same owner and org budgets, drawing from budget leases when
/// `leases`; returns how much of the tighter (org) budget was left unspent when both were done.
async fn two_processes(url: &str, leases: bool) -> Decimal {
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
                .env(LEASES, if leases { "1" } else { "" })
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawn a child instance")
        })
        .collect();
    let mut admitted = Vec::new();
    let mut spans = Vec::new();
    for child in children {
        let out = child.wait_with_output().expect("child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child failed: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let fields: Vec<i64> = stdout
            .lines()
            .find_map(|l| l.strip_prefix("ADMITTED "))
            .map(|l| {
                l.split_whitespace()
                    .filter_map(|n| n.parse().ok())
                    .collect()
            })
            .unwrap_or_default();
        let [n, from, to] = fields[..] else {
            panic!("no count from the child: {stdout}");
        };
        if let Some(draws) = stdout.lines().find_map(|l| l.strip_prefix("DRAWS ")) {
            eprintln!("lease draws (hits, misses, fallbacks): {draws}");
        }
        admitted.push(u32::try_from(n).expect("count"));
        spans.push((from, to));
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
    // The two processes reserved at the same time (which of them won more is up to the database's locking).
    assert!(
        spans[0].0 < spans[1].1 && spans[1].0 < spans[0].1,
        "the processes did not overlap: {spans:?}"
    );
    store.close().await;
    let unspent = org_limit - org_status.spent;
    eprintln!("admitted {admitted:?}; the org budget of {org_limit} left {unspent} unspent");
    unspent
}

/// A single process stops within one hold (0.05) of the tighter limit: it refuses only what does not fit.
/// With leases, the most refused early is the room the other instance holds in its window: with holds of 0.05
/// and 8-hold windows, under 0.40 beside that one hold.
fn assert_shortfall(unspent: Decimal, leases: bool) {
    let bound = if leases {
        Decimal::new(45, 2)
    } else {
        Decimal::new(5, 2)
    };
    assert!(unspent < bound, "{unspent} left unspent (at most {bound})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_budgets_hold_across_two_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    assert_shortfall(two_processes(&url, false).await, false);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_budget_leases_hold_across_two_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    assert_shortfall(two_processes(&url, true).await, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_budget_leases_hold_across_two_processes() {
    let Some(url) = common::pg_schema_url("postgres_budget_leases_hold_across_two_processes").await
    else {
        return;
    };
    assert_shortfall(two_processes(&url, true).await, true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_budgets_hold_across_two_processes() {
    let Some(url) = common::pg_schema_url("postgres_budgets_hold_across_two_processes").await
    else {
        return;
    };
    assert_shortfall(two_processes(&url, false).await, false);
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

mod revocation {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use keymeter::keys::{
        CachedKeyStore, KeyHasher, KeyIssuer, KeyStore, NewKey, Pepper, PepperRing, Requirement,
        VerdictCode, Verifier, VerifierConfig,
    };
    use keymeter::random::OsRandom;
    use secrecy::ExposeSecret;

    pub struct Instance {
        pub cache: Arc<CachedKeyStore>,
        pub verifier: Verifier,
        pub store: Arc<dyn keymeter::store::Store>,
    }

    pub fn hasher() -> Arc<KeyHasher> {
        static PEPPER: std::sync::OnceLock<Arc<KeyHasher>> = std::sync::OnceLock::new();
        PEPPER
            .get_or_init(|| {
                Arc::new(KeyHasher::new(
                    PepperRing::new(vec![Pepper::generate("p1", &OsRandom).expect("pepper")])
                        .expect("ring"),
                ))
            })
            .clone()
    }

    /// An instance with its own pool and its own change feed, verifying through a cache.
    pub async fn instance(url: &str) -> Instance {
        let store = keymeter::store::connect(url).await.expect("connect");
        let feed = store.key_changes().await.expect("feed");
        assert!(feed.is_some(), "a shared database has a change feed");
        let cache = Arc::new(CachedKeyStore::new(store.clone(), feed, 1_000));
        let verifier =
            Verifier::new(cache.clone(), hasher(), VerifierConfig::default()).expect("verifier");
        Instance {
            cache,
            verifier,
            store,
        }
    }

    pub async fn code(i: &Instance, token: &str) -> VerdictCode {
        i.verifier
            .verify(token, &Requirement::new())
            .await
            .expect("verify")
            .code()
    }

    /// Issues a key through `b`, has `a` verify (and cache) it, changes it through `change`, then verifies through
    /// `a` every 10 ms until refused. Returns how long after the change the last verify that still admitted the key
    /// started (zero when the first one was refused): the longest `a` served the stale record.
    pub async fn refused_after(
        a: &Instance,
        b: &Instance,
        change: impl AsyncFnOnce(&str),
        refused: VerdictCode,
    ) -> Duration {
        let issuer = KeyIssuer::new(b.store.clone(), hasher());
        let issued = issuer
            .issue(NewKey::new("ci", "alice"))
            .await
            .expect("issue");
        let token = issued.token.expose_secret().to_owned();
        assert_eq!(code(a, &token).await, VerdictCode::Valid);
        assert_eq!(code(a, &token).await, VerdictCode::Valid);
        assert!(
            a.cache
                .get_now(&issued.record.id, chrono::Utc::now().timestamp_micros())
                .is_some(),
            "the record is served from memory"
        );
        change(&issued.record.id).await;
        let changed = Instant::now();
        let mut stale = Duration::ZERO;
        loop {
            let started = changed.elapsed();
            let c = code(a, &token).await;
            if c == refused {
                return stale;
            }
            assert_eq!(c, VerdictCode::Valid);
            stale = started;
            assert!(changed.elapsed() < Duration::from_secs(5), "never refused");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Revoke, disable and enable through another pool (or another process) reach `a` within a second.
    pub async fn changes_elsewhere_reach_every_instance(url: &str) {
        let (a, b) = (instance(url).await, instance(url).await);
        let revoke = async |id: &str| {
            b.store
                .revoke(id, chrono::Utc::now())
                .await
                .expect("revoke")
        };
        let took = refused_after(&a, &b, revoke, VerdictCode::Revoked).await;
        assert!(
            took < Duration::from_secs(1),
            "a revoked key admitted {took:?} after"
        );
        let disable = async |id: &str| b.store.set_disabled(id, true).await.expect("disable");
        let took = refused_after(&a, &b, disable, VerdictCode::Disabled).await;
        assert!(
            took < Duration::from_secs(1),
            "a disabled key admitted {took:?} after"
        );
        // A key's allowlist changed through the other pool (a PATCH): `a`'s cached record follows.
        let issued = KeyIssuer::new(b.store.clone(), hasher())
            .issue(NewKey::new("ci", "alice"))
            .await
            .expect("issue");
        let id = issued.record.id.clone();
        assert_eq!(
            code(&a, issued.token.expose_secret()).await,
            VerdictCode::Valid
        );
        let rules = keymeter::keys::models::parse_rules("anthropic/*").expect("rules");
        let patch = keymeter::keys::KeyPatch {
            allowed_models: Some(rules.clone()),
            ..Default::default()
        };
        b.store.update(&id, &patch).await.expect("update");
        let changed = Instant::now();
        loop {
            let seen = a.cache.get(&id).await.expect("get").expect("present");
            if seen.allowed_models == rules {
                break;
            }
            assert!(
                changed.elapsed() < Duration::from_secs(1),
                "a changed allowlist not seen after a second"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // A revoke by another process altogether: the CLI.
        let cli = async |id: &str| {
            let out = std::process::Command::new(env!("CARGO_BIN_EXE_keymeter"))
                .args(["--store", url, "--json", "keys", "revoke", id])
                .env("KEYMETER_ENV", "test")
                .output()
                .expect("run keymeter");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let took = refused_after(&a, &b, cli, VerdictCode::Revoked).await;
        assert!(
            took < Duration::from_secs(1),
            "a key revoked by the CLI admitted {took:?} after"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_changes_elsewhere_reach_every_instance_within_a_second() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    revocation::changes_elsewhere_reach_every_instance(&url).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_changes_elsewhere_reach_every_instance_within_a_second() {
    let Some(url) =
        common::pg_schema_url("postgres_changes_elsewhere_reach_every_instance_within_a_second")
            .await
    else {
        return;
    };
    revocation::changes_elsewhere_reach_every_instance(&url).await;
}

/// A listener whose connection is cut clears its cache, reconnects, and keeps evicting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_dropped_feed_clears_the_cache_and_reconnects() {
    use std::time::Duration;
    let Some(url) =
        common::pg_schema_url("postgres_a_dropped_feed_clears_the_cache_and_reconnects").await
    else {
        return;
    };
    let (a, b) = (
        revocation::instance(&url).await,
        revocation::instance(&url).await,
    );
    let issuer = keymeter::keys::KeyIssuer::new(b.store.clone(), revocation::hasher());
    let issued = issuer
        .issue(keymeter::keys::NewKey::new("ci", "alice"))
        .await
        .expect("issue");
    let token = secrecy::ExposeSecret::expose_secret(&issued.token).to_owned();
    assert_eq!(
        revocation::code(&a, &token).await,
        keymeter::keys::VerdictCode::Valid
    );
    assert!(!a.cache.is_empty());
    let admin = keymeter::store::PostgresStore::connect(&url)
        .await
        .expect("connect");
    let cut: i64 = sqlx::query_scalar(
        "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'",
    )
    .fetch_one(admin.pool())
    .await
    .expect("terminate the listeners");
    assert!(cut >= 2, "both instances listen: {cut}");
    let started = std::time::Instant::now();
    while a.cache.clears() == 0 {
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the lost feed was never noticed"
        );
        let _ = revocation::code(&a, &token).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Reconnected: a revoke through the other instance still reaches this one within a second.
    let revoke = async |id: &str| {
        b.store
            .revoke(id, chrono::Utc::now())
            .await
            .expect("revoke")
    };
    let took =
        revocation::refused_after(&a, &b, revoke, keymeter::keys::VerdictCode::Revoked).await;
    assert!(
        took < Duration::from_secs(1),
        "a revoked key admitted {took:?} after"
    );
}
