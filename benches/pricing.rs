//! Pricing hot path and catalog load.
//!
//! Targets (issue #4): the cost of one usage including the model lookup by name ≤ 250 ns; loading LiteLLM's whole
//! price file ≤ 100 ms. Run: `cargo bench --bench pricing`.

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use keymeter::pricing::{PriceCatalog, ServiceTier, Usage, litellm};

const LITELLM: &str =
    include_str!("../tests/fixtures/litellm/model_prices_and_context_window.json");

fn pricing(c: &mut Criterion) {
    let catalog = litellm::import(LITELLM).unwrap().catalog;
    let at = Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0).unwrap();
    let usage = Usage {
        input: 1_500,
        cache_read: 20_000,
        cache_write_5m: 4_000,
        cache_write_1h: 2_000,
        output: 700,
        ..Usage::default()
    };
    let mut group = c.benchmark_group("pricing");
    group.bench_function("cost_with_lookup_by_name", |b| {
        b.iter(|| {
            catalog
                .cost(
                    black_box("claude-sonnet-4-5"),
                    black_box(&usage),
                    at,
                    ServiceTier::Standard,
                )
                .unwrap()
        })
    });
    let gemini = Usage {
        input: 200_000,
        cache_read: 50_000,
        output: 4_000,
        reasoning: 1_000,
        ..Usage::default()
    };
    group.bench_function("cost_long_context_provider_qualified", |b| {
        b.iter(|| {
            catalog
                .cost(
                    black_box("gemini/gemini-2.5-pro"),
                    black_box(&gemini),
                    at,
                    ServiceTier::Batch,
                )
                .unwrap()
        })
    });
    group.sample_size(20);
    group.bench_function("load_litellm_file", |b| {
        b.iter(|| litellm::import(black_box(LITELLM)).unwrap())
    });
    group.bench_function("load_bundled_snapshot", |b| b.iter(PriceCatalog::bundled));
    group.finish();
}

criterion_group!(benches, pricing);
criterion_main!(benches);
