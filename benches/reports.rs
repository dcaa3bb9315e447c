//! Reports over 1,000,000 events (500 owners, 30 days): by day in `Europe/Berlin` and by owner, on SQLite and
//! PostgreSQL, and the peak heap a report takes at 100,000 and at 1,000,000 events (the same 30 days and groups).
//!
//! Target (issue #11): each report ≤ 250 ms on both databases; peak memory independent of the event count.
//! Loading the events takes about a minute per store. Run:
//! `KEYMETER_TEST_PG_URL=postgres://… cargo bench --bench reports` (without the URL, PostgreSQL is skipped).

use std::hint::black_box;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use keymeter::ledger::{EventFilter, GroupBy, Ledger, UsageEvent};
use keymeter::store::{SqliteStore, Store};
use peak_alloc::PeakAlloc;

#[path = "common/events.rs"]
mod events;
#[path = "common/pg.rs"]
mod pg;

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

/// Event `i` of `n` of the shared mix (`common/events.rs`), spread evenly over 30 days.
fn event(i: u64, n: u64) -> UsageEvent {
    let start = Utc.with_ymd_and_hms(2026, 9, 1, 0, 0, 0).unwrap();
    let at = start + Duration::microseconds((30 * 86_400_000_000 / n * i) as i64);
    events::mixed(i, &format!("req-{i}"), at)
}

fn load(rt: &tokio::runtime::Runtime, ledger: &dyn Ledger, n: u64) {
    for chunk in (0..n).collect::<Vec<_>>().chunks(1_000) {
        let events: Vec<UsageEvent> = chunk.iter().map(|&i| event(i, n)).collect();
        rt.block_on(ledger.record_batch(&events)).unwrap();
    }
}

/// The most the heap grew above its starting point during one report.
fn peak_heap(rt: &tokio::runtime::Runtime, ledger: &dyn Ledger, by: GroupBy) -> usize {
    let base = HEAP.current_usage();
    HEAP.reset_peak_usage();
    let report = rt
        .block_on(ledger.report(&EventFilter::default(), by, chrono_tz::Europe::Berlin))
        .unwrap();
    let peak = HEAP.peak_usage().saturating_sub(base);
    black_box(report);
    peak
}

/// A loaded store: its name, the store, and what removes it when dropped (a directory or a schema).
type Loaded = (&'static str, Arc<dyn Store>, Box<dyn std::any::Any>);

/// Loads `n` events into a fresh store of each kind, prints the report's peak heap, and (at `bench`) measures
/// the two reports.
fn stores(rt: &tokio::runtime::Runtime, n: u64) -> Vec<Loaded> {
    let mut out: Vec<Loaded> = Vec::new();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("reports.db").display());
    let sqlite: Arc<dyn Store> = Arc::new(rt.block_on(SqliteStore::connect(&url)).unwrap());
    out.push(("sqlite", sqlite, Box::new(dir)));
    if let Some(schema) = pg::schema(rt, &format!("reports_{n}")) {
        let store = schema.store.clone();
        out.push(("postgres", store, Box::new(schema)));
    }
    for (name, store, _) in &out {
        let started = std::time::Instant::now();
        load(rt, store.as_ref(), n);
        eprintln!(
            "{name}: loaded {n} events in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    if let Some((_, _, schema)) = out.iter().find(|(name, ..)| *name == "postgres") {
        // The statistics autovacuum keeps after a bulk load (the planner's group estimates decide whether the
        // per-bucket sums run in parallel).
        if let Some(schema) = schema.downcast_ref::<pg::BenchSchema>() {
            rt.block_on(schema.analyze());
        }
    }
    out
}

fn reports(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let small = stores(&rt, 100_000);
    let mut peaks = Vec::new();
    for (name, store, _) in &small {
        for by in [GroupBy::Day, GroupBy::Owner] {
            peaks.push((*name, by, peak_heap(&rt, store.as_ref(), by)));
        }
    }
    drop(small);
    let large = stores(&rt, 1_000_000);
    for (name, store, _) in &large {
        for by in [GroupBy::Day, GroupBy::Owner] {
            let at_1m = peak_heap(&rt, store.as_ref(), by);
            let at_100k = peaks
                .iter()
                .find(|(n, b, _)| n == name && *b == by)
                .map_or(0, |p| p.2);
            eprintln!(
                "{name} report by {by:?}: peak heap {:.1} KiB at 100,000 events, {:.1} KiB at 1,000,000",
                at_100k as f64 / 1024.0,
                at_1m as f64 / 1024.0
            );
        }
    }
    let mut group = c.benchmark_group("reports_1m_events");
    group.sample_size(10);
    for (name, store, _) in &large {
        group.bench_function(format!("{name}_by_day_berlin"), |b| {
            b.iter(|| {
                rt.block_on(store.report(
                    &EventFilter::default(),
                    GroupBy::Day,
                    chrono_tz::Europe::Berlin,
                ))
                .unwrap()
            })
        });
        group.bench_function(format!("{name}_by_owner"), |b| {
            b.iter(|| {
                rt.block_on(store.report(&EventFilter::default(), GroupBy::Owner, chrono_tz::UTC))
                    .unwrap()
            })
        });
        // A window that starts and ends mid-day: SQLite reads day rollups and two partial days of events.
        let window = EventFilter::new()
            .since(Utc.with_ymd_and_hms(2026, 9, 3, 12, 34, 0).unwrap())
            .until(Utc.with_ymd_and_hms(2026, 9, 27, 8, 15, 0).unwrap());
        group.bench_function(format!("{name}_by_owner_mid_day_window"), |b| {
            b.iter(|| {
                rt.block_on(store.report(&window, GroupBy::Owner, chrono_tz::UTC))
                    .unwrap()
            })
        });
    }
    group.finish();
}

criterion_group!(benches, reports);
criterion_main!(benches);
