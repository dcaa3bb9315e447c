//! Budget enforcement and event recording.
//!
//! Targets (issue #5): reserve + settle in memory ≤ 1 µs; recording events into SQLite ≥ 20,000 events/s,
//! batched. Issue #11: importing an export's JSON lines ≥ 20,000 events/s. Issue #26 (DESIGN §14): reserve +
//! settle against a warm lease, journal off, ≤ 2 µs on every backend (`lease_reserve_settle_*`, beside its
//! floor); the journaled `Meter` path ≤ 10 µs (`meter_journaled_reserve_settle_*`); the per-request fallback
//! near a limit (`lease_near_limit_*`, beside the store's own reserve + settle). Run: `cargo bench --bench ledger`.

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use chrono::{Duration, TimeZone, Utc};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

#[cfg(feature = "postgres")]
#[path = "common/events.rs"]
mod events;
#[path = "common/lease.rs"]
mod lease;
#[path = "common/pg.rs"]
mod pg;
use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, Ledger, UsageEvent};
use keymeter::pricing::Usage;
use keymeter::random::SeededRandom;
use keymeter::store::{MemoryStore, SqliteStore};
use rust_decimal::Decimal;

fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("the memory store never waits"),
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn event(owner: &str) -> UsageEvent {
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let at = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
    let usage = Usage {
        input: 1200,
        cache_read: 800,
        output: 300,
        ..Usage::default()
    };
    UsageEvent::new(
        Some(&format!("req-{n}")),
        at,
        owner,
        "openai",
        "gpt-4o",
        usage,
        Decimal::new(5625, 6),
        &SeededRandom::new(n),
    )
    .unwrap()
    .key_id("k1")
    .org("acme")
}

/// An exported event as an import reads it: the shared mix (`common/events.rs`), one a second from the start of
/// a 30-day backfill, each with a request id never seen before.
fn export_line(n: u64) -> String {
    let at = Utc.with_ymd_and_hms(2026, 9, 1, 0, 0, 0).unwrap()
        + Duration::seconds((n % 2_592_000) as i64);
    keymeter::ledger::transfer::json_line(&events::mixed(n, &format!("import-{n}"), at)).unwrap()
}

/// `IMPORT` fresh export lines, as one input.
fn export_lines() -> std::io::Cursor<String> {
    let mut text = String::new();
    for _ in 0..IMPORT {
        text.push_str(&export_line(NEXT.fetch_add(1, Ordering::Relaxed)));
        text.push('\n');
    }
    std::io::Cursor::new(text)
}

/// Events per timed import, in the CLI's batches.
const IMPORT: usize = 10_000;
const IMPORT_BATCH: usize = 5_000;

/// Events per `record_batch` in the batch case.
const BATCH: usize = 1_000;

/// Recording batches of 1,000 events, and importing an export's lines, into one database backend.
fn batches_and_import(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    name: &str,
    ledger: &dyn Ledger,
) {
    group.throughput(Throughput::Elements(BATCH as u64));
    group.sample_size(20);
    group.bench_function(format!("record_{name}_batch_of_1000"), |b| {
        b.iter_batched(
            || (0..BATCH).map(|_| event("alice")).collect::<Vec<_>>(),
            |events| {
                runtime
                    .block_on(ledger.record_batch(black_box(&events)))
                    .unwrap()
            },
            BatchSize::LargeInput,
        )
    });
    group.throughput(Throughput::Elements(IMPORT as u64));
    group.sample_size(10);
    group.bench_function(format!("import_{name}_jsonl_10000"), |b| {
        b.iter_batched(
            export_lines,
            |input| {
                runtime
                    .block_on(keymeter::ledger::transfer::import(
                        ledger,
                        input,
                        IMPORT_BATCH,
                    ))
                    .unwrap()
            },
            BatchSize::PerIteration,
        )
    });
}

fn ledger(c: &mut Criterion) {
    let now = Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap();
    let memory = MemoryStore::new();
    let scopes = [
        BudgetScope::Key("k1".into()),
        BudgetScope::Org("acme".into()),
    ];
    for scope in &scopes {
        ready(
            memory.set_budget(
                &Budget::new(
                    scope.clone(),
                    Decimal::new(1, 0) * Decimal::from(1_000_000_000u64),
                    BudgetPeriod::Monthly,
                )
                .unwrap(),
            ),
        )
        .unwrap();
    }
    let mut group = c.benchmark_group("ledger");
    // Events are built outside the timed loop; what is timed is the reserve, the settle and the store's
    // own growth (its event log and request-id index).
    group.bench_function("reserve_settle_memory_two_budgets", |b| {
        b.iter_custom(|iters| {
            let events: Vec<UsageEvent> = (0..iters).map(|_| event("alice")).collect();
            let start = std::time::Instant::now();
            for e in &events {
                let hold = ready(memory.reserve(
                    black_box(&scopes),
                    Decimal::new(1, 2),
                    now,
                    Duration::minutes(5),
                ))
                .unwrap();
                black_box(ready(memory.settle(&hold.id, e, now)).unwrap());
            }
            start.elapsed()
        })
    });

    group.bench_function("reserve_release_memory_two_budgets", |b| {
        b.iter(|| {
            let hold = ready(memory.reserve(
                black_box(&scopes),
                Decimal::new(1, 2),
                now,
                Duration::minutes(5),
            ))
            .unwrap();
            ready(memory.release(&hold.id)).unwrap()
        })
    });

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("bench.db").display());
    let sqlite = runtime.block_on(SqliteStore::connect(&url)).unwrap();
    runtime
        .block_on(
            sqlite.set_budget(
                &Budget::new(
                    scopes[1].clone(),
                    Decimal::from(1_000_000_000u64),
                    BudgetPeriod::Monthly,
                )
                .unwrap(),
            ),
        )
        .unwrap();
    batches_and_import(&mut group, &runtime, "sqlite", &sqlite);
    let memory_leased: std::sync::Arc<dyn Ledger> = std::sync::Arc::new(MemoryStore::new());
    for scope in &scopes {
        let budget = Budget::new(
            scope.clone(),
            Decimal::from(1_000_000_000u64),
            BudgetPeriod::Monthly,
        );
        runtime
            .block_on(memory_leased.set_budget(&budget.unwrap()))
            .unwrap();
    }
    let sqlite_leased: std::sync::Arc<dyn Ledger> = std::sync::Arc::new(sqlite.clone());
    lease::draw_settle(
        &mut group,
        &runtime,
        "memory",
        memory_leased.clone(),
        &scopes,
        now,
    );
    lease::draw_settle(
        &mut group,
        &runtime,
        "sqlite",
        sqlite_leased.clone(),
        &scopes,
        now,
    );
    lease::journaled_meter(&mut group, "memory", async || memory_leased.clone());
    let meter_db = format!("sqlite://{}", dir.path().join("meter.db").display());
    lease::journaled_meter(&mut group, "sqlite", async || {
        std::sync::Arc::new(SqliteStore::connect(&meter_db).await.unwrap())
            as std::sync::Arc<dyn Ledger>
    });
    group.sample_size(20);
    lease::near_limit(&mut group, &runtime, "memory", memory_leased, now);
    lease::near_limit(&mut group, &runtime, "sqlite", sqlite_leased, now);
    group.throughput(Throughput::Elements(1));
    group.sample_size(20);
    group.bench_function("record_sqlite_one_by_one", |b| {
        b.iter_batched(
            || event("bob"),
            |e| runtime.block_on(sqlite.record(&e)).unwrap(),
            BatchSize::SmallInput,
        )
    });
    // The reservation alone (its release, untimed, keeps the table at one row): the write a request makes
    // before it goes upstream.
    group.bench_function("reserve_sqlite_two_budgets", |b| {
        b.iter_custom(|iters| {
            let mut spent = std::time::Duration::ZERO;
            for _ in 0..iters {
                let start = std::time::Instant::now();
                let hold = runtime
                    .block_on(sqlite.reserve(
                        black_box(&scopes),
                        Decimal::new(1, 2),
                        now,
                        Duration::minutes(5),
                    ))
                    .unwrap();
                spent += start.elapsed();
                runtime.block_on(sqlite.release(&hold.id)).unwrap();
            }
            spent
        })
    });
    group.finish();

    #[cfg(feature = "postgres")]
    if let Some(pg) = pg::schema(&runtime, "ledger") {
        let store = pg.store.clone();
        for scope in &scopes {
            let budget = Budget::new(
                scope.clone(),
                Decimal::from(1_000_000_000u64),
                BudgetPeriod::Monthly,
            );
            runtime
                .block_on(store.set_budget(&budget.unwrap()))
                .unwrap();
        }
        let mut group = c.benchmark_group("ledger");
        batches_and_import(&mut group, &runtime, "postgres", store.as_ref());
        let leased: std::sync::Arc<dyn Ledger> = store.clone();
        lease::draw_settle(
            &mut group,
            &runtime,
            "postgres",
            leased.clone(),
            &scopes,
            now,
        );
        group.throughput(Throughput::Elements(1));
        group.sample_size(50);
        group.bench_function("reserve_settle_postgres_two_budgets", |b| {
            b.iter_batched(
                || event("alice"),
                |e| {
                    runtime.block_on(async {
                        let hold = store
                            .reserve(
                                black_box(&scopes),
                                Decimal::new(1, 2),
                                now,
                                Duration::minutes(5),
                            )
                            .await
                            .unwrap();
                        store.settle(&hold.id, &e, now).await.unwrap()
                    })
                },
                BatchSize::SmallInput,
            )
        });
        group.sample_size(20);
        lease::near_limit(&mut group, &runtime, "postgres", leased.clone(), now);
        // Last: its runtime of its own opens pool connections that die with it.
        group.sample_size(100);
        lease::journaled_meter(&mut group, "postgres", async move || leased);
        group.finish();
    }
}

criterion_group!(benches, ledger);
criterion_main!(benches);
