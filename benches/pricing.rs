//! Pricing hot path and catalog load.
//!
//! Targets: the cost of one usage including the model lookup by name ≤ 200 ns (issue 10; 250 ns in issue 4);
//! loading LiteLLM's whole price file ≤ 100 ms; pricing a streamed response from its events, beside a floor that
//! does the least any accumulator must (find the one usage-bearing event, parse it, price it). Run:
//! `cargo bench --bench pricing`.

use std::hint::black_box;

use chrono::{TimeZone, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use keymeter::pricing::normalize::{UsageFormat, normalize};
use keymeter::pricing::{PriceCatalog, ServiceTier, StreamUsage, Usage, litellm};

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
    // A streamed chat completion with usage asked for: 400 content chunks (each with "usage":null, as OpenAI
    // sends them), then the usage chunk.
    let mut events: Vec<String> = (0..400)
        .map(|i| {
            format!(
                r#"{{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","service_tier":"default","choices":[{{"index":0,"delta":{{"content":"token number {i} of the answer"}},"finish_reason":null}}],"usage":null}}"#
            )
        })
        .collect();
    events.push(r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o","service_tier":"default","choices":[],"usage":{"prompt_tokens":1200,"completion_tokens":400,"total_tokens":1600,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0}}}"#.to_owned());
    events.push("[DONE]".to_owned());
    group.bench_function("stream_openai_400_chunks", |b| {
        b.iter(|| {
            let mut stream = StreamUsage::new(UsageFormat::OpenAi);
            for e in &events {
                stream.push(black_box(e)).unwrap();
            }
            let usage = stream.finish().unwrap();
            catalog
                .cost("gpt-4o", &usage, at, ServiceTier::Standard)
                .unwrap()
        })
    });
    // The floor: test each event, as it arrives, for a non-null usage (one substring search), parse the one that
    // has it, price it.
    group.bench_function("stream_openai_400_chunks_floor", |b| {
        b.iter(|| {
            // Events arrive one at a time, so every one is tested (no searching from the end).
            let mut last = None;
            for e in black_box(&events) {
                if e.contains("\"usage\":{") {
                    last = Some(e);
                }
            }
            let last = last.unwrap();
            let usage = normalize(UsageFormat::OpenAi, last).unwrap();
            catalog
                .cost("gpt-4o", &usage, at, ServiceTier::Standard)
                .unwrap()
        })
    });
    let mut anthropic = vec![
        r#"{"type":"message_start","message":{"id":"msg_1","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[],"usage":{"input_tokens":1200,"cache_read_input_tokens":20000,"cache_creation_input_tokens":0,"output_tokens":1}}}"#.to_owned(),
    ];
    anthropic.extend((0..400).map(|i| {
        format!(r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"text_delta","text":"token number {i} of the answer"}}}}"#)
    }));
    anthropic.push(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":400}}"#.to_owned());
    anthropic.push(r#"{"type":"message_stop"}"#.to_owned());
    group.bench_function("stream_anthropic_400_chunks", |b| {
        b.iter(|| {
            let mut stream = StreamUsage::new(UsageFormat::Anthropic);
            for e in &anthropic {
                stream.push(black_box(e)).unwrap();
            }
            let usage = stream.finish().unwrap();
            catalog
                .cost("claude-sonnet-4-5", &usage, at, ServiceTier::Standard)
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
