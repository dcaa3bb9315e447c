//! Budget leases (DESIGN §14), in the `ledger` bench: what a hold costs against a warm lease, through the
//! journaled `Meter`, and near a limit where every hold asks the store.

use std::collections::HashMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use criterion::BenchmarkGroup;
use criterion::measurement::WallTime;
use keymeter::clock::ManualClock;
use keymeter::ledger::journal::{Journal, JournalConfig, SyncPolicy};
use keymeter::ledger::lease::{LeaseConfig, Leases};
use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, Ledger, Meter, MeteredRequest, Payer};
use keymeter::pricing::{PriceCatalog, Usage};
use rust_decimal::Decimal;

use super::{event, ready};

/// Leases on `ledger` whose clock stands at `now` (a warm lease stays warm), warmed by one draw of a large
/// amount given back: the lease then holds room for about 10^8 of the holds timed, so no refill (one lease
/// transaction per window of traffic, in the background) falls inside the timed loop.
fn warm(
    runtime: &tokio::runtime::Runtime,
    ledger: Arc<dyn Ledger>,
    scopes: &[BudgetScope],
    now: DateTime<Utc>,
) -> Leases {
    let leases = Leases::new(ledger, "bench", LeaseConfig::default())
        .with_clock(Arc::new(ManualClock::new(now)));
    let big = runtime
        .block_on(leases.draw(scopes, Decimal::from(125_000)))
        .expect("room for the warm-up");
    leases.released(&big.id);
    leases
}

/// Reserve + settle against a warm lease, the journal off: the draw and the settle's accounting, all in
/// memory (the store's side of the settle is the journal's drain, batched, timed by the `record_*_batch`
/// cases). Beside it the floor: the least any lease must do per hold, in the same loop — find the lease of the
/// scopes under a lock, check and take the room, and give it back with the settle (a counter for the id).
pub fn draw_settle(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    ledger: Arc<dyn Ledger>,
    scopes: &[BudgetScope],
    now: DateTime<Utc>,
) {
    let _enter = runtime.enter();
    let leases = warm(runtime, ledger, scopes, now);
    group.bench_function(format!("lease_reserve_settle_{name}"), |b| {
        b.iter(|| {
            let draw = ready(leases.draw(black_box(scopes), Decimal::new(1, 2))).expect("room");
            leases.settled(black_box(&draw.id));
        })
    });
    let floor: Mutex<HashMap<Vec<BudgetScope>, (Decimal, Decimal, u64)>> =
        Mutex::new(HashMap::from([(
            scopes.to_vec(),
            (Decimal::from(1_000_000), Decimal::ZERO, 0),
        )]));
    group.bench_function(format!("lease_reserve_settle_{name}_floor"), |b| {
        b.iter(|| {
            let amount = Decimal::new(1, 2);
            let id = {
                let mut map = floor.lock().unwrap();
                let (room, in_use, next) = map.get_mut(black_box(scopes)).unwrap();
                assert!(*room - *in_use >= amount);
                *in_use += amount;
                *next += 1;
                *next
            };
            let mut map = floor.lock().unwrap();
            let (room, in_use, _) = map.get_mut(black_box(scopes)).unwrap();
            *in_use -= amount;
            *room -= amount;
            black_box(id)
        })
    });
}

/// An event of `owner` that costs nothing: near a limit, the room stays.
fn free(owner: &str) -> keymeter::ledger::UsageEvent {
    let mut e = event(owner);
    e.cost = Decimal::ZERO;
    e
}

/// Near a limit every hold asks the store: the lease has room for less than two holds, so each draw grows it
/// (one lease transaction) and each settle is the store's own (one transaction); the settles cost nothing, so
/// the room stays. Beside it, the same hold reserved and settled in the store without leases.
pub fn near_limit(
    group: &mut BenchmarkGroup<'_, WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    ledger: Arc<dyn Ledger>,
    now: DateTime<Utc>,
) {
    let scope = BudgetScope::Owner(format!("near-{name}"));
    let budget = Budget::new(scope.clone(), Decimal::new(15, 3), BudgetPeriod::Monthly).unwrap();
    runtime.block_on(ledger.set_budget(&budget)).unwrap();
    let scopes = [scope];
    let _enter = runtime.enter();
    let leases = Leases::new(ledger.clone(), "bench-near", LeaseConfig::default())
        .with_clock(Arc::new(ManualClock::new(now)));
    let owner = format!("near-{name}");
    group.bench_function(format!("lease_near_limit_{name}"), |b| {
        b.iter_batched(
            || free(&owner),
            |e| {
                runtime.block_on(async {
                    let draw = leases
                        .draw(&scopes, Decimal::new(1, 2))
                        .await
                        .expect("room");
                    ledger.settle(&draw.id, &e, now).await.unwrap();
                    leases.settled(&draw.id);
                })
            },
            criterion::BatchSize::SmallInput,
        )
    });
    group.bench_function(format!("store_reserve_settle_near_limit_{name}"), |b| {
        b.iter_batched(
            || free(&owner),
            |e| {
                runtime.block_on(async {
                    let hold = ledger
                        .reserve(
                            &scopes,
                            Decimal::new(1, 2),
                            now,
                            chrono::Duration::minutes(5),
                        )
                        .await
                        .unwrap();
                    ledger.settle(&hold.id, &e, now).await.unwrap();
                })
            },
            criterion::BatchSize::SmallInput,
        )
    });
}

/// The journaled `Meter` path with leases: price the worst case, draw it, journal the hold (`write(2)`, no
/// fsync wait: the journal syncs every 10 ms), price the reported usage and journal the settle. The drain
/// writes the settles to the store on the runtime's other thread, outside the timed path. `make` opens the
/// store on this case's own runtime, so its background tasks (SQLite's checkpoints) run while it is measured: a
/// store of another runtime that is not being driven keeps whatever lock its tasks held (SQLite's writer lock
/// once hung this case).
pub fn journaled_meter(
    group: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    make: impl AsyncFnOnce() -> Arc<dyn Ledger>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let ledger = runtime.block_on(make());
    let dir = tempfile::tempdir().unwrap();
    let config = JournalConfig::new(dir.path().join("journal"))
        .sync(SyncPolicy::Every(std::time::Duration::from_millis(10)));
    let _enter = runtime.enter();
    let (journal, _) = Journal::open(config, Arc::new(keymeter::random::OsRandom)).unwrap();
    journal.start(ledger.clone());
    let meter = Meter::new(ledger.clone(), Arc::new(PriceCatalog::bundled()))
        .with_journal(journal)
        .with_leases(LeaseConfig::default());
    let owner = format!("meter-{name}");
    runtime
        .block_on(
            ledger.set_budget(
                &Budget::new(
                    BudgetScope::Owner(owner.clone()),
                    Decimal::from(1_000_000_000u64),
                    BudgetPeriod::Monthly,
                )
                .unwrap(),
            ),
        )
        .unwrap();
    let payer = Payer::owner(owner).key("k1").org("acme");
    let worst = Usage {
        input: 2_000,
        output: 1_024,
        ..Usage::default()
    };
    let reported = Usage {
        input: 1_500,
        output: 300,
        ..Usage::default()
    };
    // Warm: the lease taken and grown to the traffic.
    runtime.block_on(async {
        for _ in 0..64 {
            let hold = meter
                .reserve(MeteredRequest::new(payer.clone(), "gpt-4o"), &worst)
                .await
                .unwrap();
            meter.settle(hold, reported).await.unwrap();
        }
    });
    group.bench_function(format!("meter_journaled_reserve_settle_{name}"), |b| {
        b.iter(|| {
            runtime.block_on(async {
                let hold = meter
                    .reserve(MeteredRequest::new(payer.clone(), "gpt-4o"), &worst)
                    .await
                    .unwrap();
                black_box(meter.settle(hold, reported).await.unwrap())
            })
        })
    });
    if let Some(journal) = meter.journal() {
        runtime.block_on(journal.flush(std::time::Duration::from_secs(30)));
    }
}
