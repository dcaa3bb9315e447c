//! Pricing with hand-computed expected costs, exact to the last digit, from LiteLLM's file and the bundled
//! snapshot; normalisers; catalog round trips.

mod common;

use chrono::{DateTime, TimeZone, Utc};
use common::{bundled, litellm_catalog};
use keymeter::Error;
use keymeter::pricing::normalize::{UsageFormat, normalize};
use keymeter::pricing::{PriceCatalog, ServiceTier, TokenClass, Usage, litellm, parse_decimal};
use rust_decimal::Decimal;

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn now() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
}

/// The lines as (kind, tokens, rate, cost) strings, for exact comparison.
fn lines(cost: &keymeter::pricing::Cost) -> Vec<(String, u64, String, String)> {
    cost.lines()
        .iter()
        .map(|l| {
            (
                l.kind.as_str().to_owned(),
                l.tokens,
                l.rate.to_string(),
                l.cost.normalize().to_string(),
            )
        })
        .collect()
}

fn line(kind: &str, tokens: u64, rate: &str, cost: &str) -> (String, u64, String, String) {
    (kind.to_owned(), tokens, rate.to_owned(), cost.to_owned())
}

#[test]
fn openai_cached_and_reasoning_tokens() {
    // o3: input $2/M, cached input $0.50/M, output $8/M; reasoning is billed as output.
    let usage = normalize(
        UsageFormat::OpenAi,
        r#"{"prompt_tokens": 12000, "completion_tokens": 3000, "total_tokens": 15000,
            "prompt_tokens_details": {"cached_tokens": 8000, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 2000, "audio_tokens": 0}}"#,
    )
    .unwrap();
    assert_eq!(
        usage,
        Usage {
            input: 4000,
            cache_read: 8000,
            output: 1000,
            reasoning: 2000,
            ..Usage::default()
        }
    );
    for catalog in [litellm_catalog(), bundled()] {
        let cost = catalog
            .cost("o3", &usage, now(), ServiceTier::Standard)
            .unwrap();
        assert_eq!(
            lines(&cost),
            [
                line("input", 4000, "0.000002", "0.008"),
                line("cache_read", 8000, "0.0000005", "0.004"),
                line("output", 1000, "0.000008", "0.008"),
                line("reasoning", 2000, "0.000008", "0.016"),
            ]
        );
        assert_eq!(cost.total, d("0.036"));
        assert_eq!(&*cost.provider, "openai");
    }
}

#[test]
fn anthropic_cache_reads_and_both_write_durations() {
    // Claude Sonnet 4.5: input $3/M, cache read $0.30/M, 5-minute write $3.75/M, 1-hour write $6/M, output $15/M.
    let usage = normalize(
        UsageFormat::Anthropic,
        r#"{"id": "msg_1", "type": "message", "usage": {"input_tokens": 1500, "output_tokens": 700,
            "cache_read_input_tokens": 20000, "cache_creation_input_tokens": 6000,
            "cache_creation": {"ephemeral_5m_input_tokens": 4000, "ephemeral_1h_input_tokens": 2000}}}"#,
    )
    .unwrap();
    for (catalog, name) in [
        (litellm_catalog(), "claude-sonnet-4-5"),
        (bundled(), "anthropic/claude-sonnet-4-5"),
    ] {
        let cost = catalog
            .cost(name, &usage, now(), ServiceTier::Standard)
            .unwrap();
        assert_eq!(
            lines(&cost),
            [
                line("input", 1500, "0.000003", "0.0045"),
                line("cache_read", 20000, "0.0000003", "0.006"),
                line("cache_write_5m", 4000, "0.00000375", "0.015"),
                line("cache_write_1h", 2000, "0.000006", "0.012"),
                line("output", 700, "0.000015", "0.0105"),
            ]
        );
        assert_eq!(cost.total, d("0.048"));
    }
}

#[test]
fn gemini_25_pro_below_at_and_above_200k() {
    // Gemini 2.5 Pro: ≤200k prompt: input $1.25/M, cached $0.125/M, output $10/M;
    // >200k: input $2.50/M, cached $0.25/M, output $15/M, for the whole request. Thoughts are billed as output.
    let below = normalize(
        UsageFormat::Gemini,
        r#"{"usageMetadata": {"promptTokenCount": 100000, "cachedContentTokenCount": 40000,
            "candidatesTokenCount": 2000, "thoughtsTokenCount": 3000, "totalTokenCount": 105000}}"#,
    )
    .unwrap();
    let cost = bundled()
        .cost("gemini-2.5-pro", &below, now(), ServiceTier::Standard)
        .unwrap();
    assert_eq!(
        lines(&cost),
        [
            line("input", 60000, "0.00000125", "0.075"),
            line("cache_read", 40000, "0.000000125", "0.005"),
            line("output", 2000, "0.00001", "0.02"),
            line("reasoning", 3000, "0.00001", "0.03"),
        ]
    );
    assert_eq!(cost.total, d("0.13"));

    let above = normalize(
        UsageFormat::Gemini,
        r#"{"promptTokenCount": 250000, "cachedContentTokenCount": 50000,
            "candidatesTokenCount": 4000, "thoughtsTokenCount": 1000}"#,
    )
    .unwrap();
    let cost = litellm_catalog()
        .cost(
            "gemini/gemini-2.5-pro",
            &above,
            now(),
            ServiceTier::Standard,
        )
        .unwrap();
    assert_eq!(
        lines(&cost),
        [
            line("input", 200000, "0.0000025", "0.5"),
            line("cache_read", 50000, "0.00000025", "0.0125"),
            line("output", 4000, "0.000015", "0.06"),
            line("reasoning", 1000, "0.000015", "0.015"),
        ]
    );
    assert_eq!(cost.total, d("0.5875"));

    // Exactly 200,000 prompt tokens is not above the threshold.
    let at = Usage {
        input: 200_000,
        ..Usage::default()
    };
    let cost = bundled()
        .cost("gemini-2.5-pro", &at, now(), ServiceTier::Standard)
        .unwrap();
    assert_eq!(cost.total, d("0.25"));
    let past = Usage {
        input: 200_001,
        ..Usage::default()
    };
    let cost = bundled()
        .cost("gemini-2.5-pro", &past, now(), ServiceTier::Standard)
        .unwrap();
    assert_eq!(cost.total, d("0.5000025"));
}

#[test]
fn batch_tier_with_fallback_to_standard() {
    // gpt-4o batch: input $1.25/M, output $5/M; it has no batch cached-input rate, so the standard $1.25/M applies.
    let usage = Usage {
        input: 10_000,
        cache_read: 4_000,
        output: 2_000,
        ..Usage::default()
    };
    let cost = bundled()
        .cost("gpt-4o", &usage, now(), ServiceTier::Batch)
        .unwrap();
    assert_eq!(
        lines(&cost),
        [
            line("input", 10000, "0.00000125", "0.0125"),
            line("cache_read", 4000, "0.00000125", "0.005"),
            line("output", 2000, "0.000005", "0.01"),
        ]
    );
    assert_eq!(cost.total, d("0.0275"));
    let standard = bundled()
        .cost("gpt-4o", &usage, now(), ServiceTier::Standard)
        .unwrap();
    assert_eq!(standard.total, d("0.05"));
    // Priority: input $4.25/M, cached $2.125/M, output $17/M.
    let priority = bundled()
        .cost("gpt-4o", &usage, now(), ServiceTier::Priority)
        .unwrap();
    assert_eq!(priority.total, d("0.0425") + d("0.0085") + d("0.034"));
}

const WINDOWS: &str = r#"{
  "format": "keymeter-catalog/1",
  "snapshot_date": "2026-03-15",
  "models": [{
    "id": "acme-1", "provider": "acme", "aliases": ["acme-latest"],
    "prices": [
      {"effective_from": "2025-06-01T00:00:00Z", "effective_until": "2026-03-01T00:00:00Z",
       "rates": {"input": "0.000001", "output": 2e-06}},
      {"effective_from": "2026-03-01T00:00:00Z", "effective_until": null, "per_request": "0.0001",
       "rates": {"input": "0.0000015", "output": "0.000003", "audio_input": "0.00001"},
       "tiers": {"flex": {"input": "0.00000075"}},
       "above": [{"tokens": 100000, "rates": {"input": "0.000003"}}]}
    ]
  }]
}"#;

#[test]
fn a_price_change_across_an_effective_date() {
    let catalog = PriceCatalog::from_json(WINDOWS).unwrap();
    let usage = Usage {
        input: 1000,
        output: 1000,
        ..Usage::default()
    };
    let before = Utc.with_ymd_and_hms(2026, 2, 28, 23, 59, 59).unwrap();
    let after = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    assert_eq!(
        catalog
            .cost("acme-1", &usage, before, ServiceTier::Standard)
            .unwrap()
            .total,
        d("0.003")
    );
    let cost = catalog
        .cost("acme-latest", &usage, after, ServiceTier::Standard)
        .unwrap();
    assert_eq!(cost.total, d("0.0046"));
    assert_eq!(
        lines(&cost).last().unwrap(),
        &line("request", 1, "0.0001", "0.0001")
    );
    let flex = catalog
        .cost("acme/acme-1", &usage, after, ServiceTier::Flex)
        .unwrap();
    assert_eq!(flex.total, d("0.00075") + d("0.003") + d("0.0001"));
    let long = Usage {
        input: 100_001,
        ..Usage::default()
    };
    assert_eq!(
        catalog
            .cost("acme-1", &long, after, ServiceTier::Standard)
            .unwrap()
            .total,
        d("0.300003") + d("0.0001")
    );
    // Before the first window there is no price: an error, not zero.
    let early = Utc.with_ymd_and_hms(2025, 1, 1, 0, 0, 0).unwrap();
    assert!(matches!(
        catalog.cost("acme-1", &usage, early, ServiceTier::Standard),
        Err(Error::NoPrice { .. })
    ));
}

#[test]
fn unknown_models_and_unpriced_classes_are_errors() {
    let usage = Usage {
        input: 10,
        ..Usage::default()
    };
    match bundled().cost("gpt-17-ultra", &usage, now(), ServiceTier::Standard) {
        Err(Error::UnknownModel { model }) => assert_eq!(model, "gpt-17-ultra"),
        other => panic!("{other:?}"),
    }
    let audio = Usage {
        input: 10,
        audio_input: 5,
        ..Usage::default()
    };
    match bundled().cost("claude-sonnet-4-5", &audio, now(), ServiceTier::Standard) {
        Err(Error::UnpricedClass { class, .. }) => assert_eq!(class, "audio_input"),
        other => panic!("{other:?}"),
    }
    // An embedding model has no cache-write rate either.
    let writes = Usage {
        cache_write_5m: 1,
        ..Usage::default()
    };
    assert!(
        bundled()
            .cost(
                "text-embedding-3-small",
                &writes,
                now(),
                ServiceTier::Standard
            )
            .is_err()
    );
    // Zero usage of a known model costs exactly zero.
    let cost = bundled()
        .cost("gpt-4o", &Usage::default(), now(), ServiceTier::Standard)
        .unwrap();
    assert_eq!((cost.total, cost.lines().len()), (Decimal::ZERO, 0));
}

#[test]
fn the_same_response_through_each_normaliser() {
    // One logical usage: 700 fresh input tokens, 300 cached, 150 visible output, 50 reasoning.
    let shapes = [
        (
            UsageFormat::OpenAi,
            r#"{"prompt_tokens": 1000, "completion_tokens": 200,
            "prompt_tokens_details": {"cached_tokens": 300}, "completion_tokens_details": {"reasoning_tokens": 50}}"#,
        ),
        (
            UsageFormat::OpenAi,
            r#"{"object": "response", "usage": {"input_tokens": 1000, "output_tokens": 200,
            "input_tokens_details": {"cached_tokens": 300}, "output_tokens_details": {"reasoning_tokens": 50}}}"#,
        ),
        (
            UsageFormat::Gemini,
            r#"{"promptTokenCount": 1000, "cachedContentTokenCount": 300,
            "candidatesTokenCount": 150, "thoughtsTokenCount": 50, "totalTokenCount": 1200}"#,
        ),
    ];
    let expected = Usage {
        input: 700,
        cache_read: 300,
        output: 150,
        reasoning: 50,
        ..Usage::default()
    };
    let mut totals = Vec::new();
    for (format, json) in shapes {
        let usage = normalize(format, json).unwrap();
        assert_eq!(usage, expected, "{format:?}");
        totals.push(
            bundled()
                .cost("gpt-4o", &usage, now(), ServiceTier::Standard)
                .unwrap()
                .total,
        );
    }
    // Anthropic folds thinking into output_tokens; the same tokens give the same bill on one model.
    let anthropic = normalize(
        UsageFormat::Anthropic,
        r#"{"input_tokens": 700, "cache_read_input_tokens": 300, "output_tokens": 200}"#,
    )
    .unwrap();
    assert_eq!(
        (anthropic.input, anthropic.cache_read, anthropic.output),
        (700, 300, 200)
    );
    totals.push(
        bundled()
            .cost("gpt-4o", &anthropic, now(), ServiceTier::Standard)
            .unwrap()
            .total,
    );
    // 700 × 2.5e-6 + 300 × 1.25e-6 + 200 × 1e-5
    assert!(totals.iter().all(|t| *t == d("0.004125")), "{totals:?}");
}

#[test]
fn an_object_that_is_not_the_formats_usage_is_an_error_never_zero() {
    // Found by fuzzing: Gemini counts under `usage` (not `usageMetadata`) read as an all-default Gemini usage.
    let misplaced = r#"{"usage": {"promptTokenCount": 25000, "thoughtsTokenCount": 1000, "toolUsePromptTokenCount": 7,
        "promptTokensDetails": [{"modality": "AUDIO", "tokenCount": 100}]}}"#;
    assert!(normalize(UsageFormat::Gemini, misplaced).is_err());
    assert!(normalize(UsageFormat::Gemini, "{}").is_err());
    assert!(normalize(UsageFormat::Gemini, r#"{"candidatesTokenCount": 5}"#).is_err());
    let ok = normalize(
        UsageFormat::Gemini,
        r#"{"usageMetadata": {"promptTokenCount": 3}}"#,
    )
    .unwrap();
    assert_eq!(ok.input, 3);
}

#[test]
fn contradictory_usage_is_an_error() {
    for (format, json) in [
        (
            UsageFormat::OpenAi,
            r#"{"prompt_tokens": 10, "prompt_tokens_details": {"cached_tokens": 11}}"#,
        ),
        (
            UsageFormat::OpenAi,
            r#"{"prompt_tokens": 10, "completion_tokens": 5, "completion_tokens_details": {"reasoning_tokens": 6}}"#,
        ),
        (UsageFormat::OpenAi, r#"{"prompt_tokens": -1}"#),
        (UsageFormat::OpenAi, r#"{"total_tokens": 10}"#),
        (
            UsageFormat::Anthropic,
            r#"{"input_tokens": 1, "cache_creation_input_tokens": 10,
            "cache_creation": {"ephemeral_5m_input_tokens": 4, "ephemeral_1h_input_tokens": 5}}"#,
        ),
        (UsageFormat::Anthropic, r#"{"output_tokens": 1}"#),
        (
            UsageFormat::Gemini,
            r#"{"promptTokenCount": 10, "cachedContentTokenCount": 20}"#,
        ),
        (UsageFormat::Gemini, r#"{"promptTokenCount": 1.5}"#),
        (UsageFormat::Gemini, r#"[1, 2]"#),
        (UsageFormat::Gemini, "not json"),
    ] {
        match normalize(format, json) {
            Err(Error::InvalidUsage(_)) => {}
            other => panic!("{format:?} {json}: {other:?}"),
        }
    }
}

#[test]
fn litellm_import_reads_numbers_from_their_text() {
    assert_eq!(parse_decimal("2.5e-06").unwrap().to_string(), "0.0000025");
    assert_eq!(
        parse_decimal("1.875e-07").unwrap().to_string(),
        "0.0000001875"
    );
    assert_eq!(parse_decimal("0.0").unwrap(), Decimal::ZERO);
    assert!(parse_decimal("NaN").is_none());
    let import = litellm::import(include_str!(
        "fixtures/litellm/model_prices_and_context_window.json"
    ))
    .unwrap();
    assert!(import.catalog.models().len() > 3000);
    let skipped = |name: &str| {
        import
            .skipped
            .iter()
            .find(|s| s.model == name)
            .map(|s| s.reason.clone())
    };
    assert!(skipped("sample_spec").is_some());
    // Priced per image: imported, billed per image.
    assert_eq!(skipped("aiml/dall-e-3"), None);
    let dalle = import.catalog.model("aiml/dall-e-3").unwrap();
    assert_eq!(
        dalle.windows[0].bands[0]
            .rates(ServiceTier::Standard)
            .get(TokenClass::Images)
            .unwrap()
            .to_string(),
        "0.052"
    );
    // Every rate of the file is an exact decimal: 0.1 + 0.2 style drift would show in sums like this one.
    let m = import.catalog.model("gpt-5").unwrap();
    let rates = m.windows[0].bands[0].rates(ServiceTier::Flex);
    assert_eq!(
        rates.get(TokenClass::CacheRead).unwrap().to_string(),
        "0.0000000625"
    );
}

#[test]
fn catalogs_round_trip_in_keymeter_format() {
    let own = PriceCatalog::from_json(WINDOWS).unwrap();
    assert_eq!(PriceCatalog::from_json(&own.to_json()).unwrap(), own);
    let imported = litellm_catalog();
    let again = PriceCatalog::from_any_json(&imported.to_json()).unwrap();
    assert_eq!(&again, imported);
    let bundled_text = keymeter::pricing::catalog::FORMAT;
    assert!(
        PriceCatalog::from_any_json(keymeter::pricing::BUNDLED_SNAPSHOT)
            .unwrap()
            .models()
            .len()
            > 100
    );
    assert_eq!(bundled_text, "keymeter-catalog/1");
    assert_eq!(bundled().snapshot_date.as_deref(), Some("2026-11-21"));
    assert!(
        bundled()
            .models()
            .iter()
            .all(|m| m.windows.iter().all(|w| w.effective_from.is_none()))
    );
}

#[test]
fn bad_catalogs_are_refused_with_reasons() {
    let overlapping = WINDOWS.replace(
        "\"effective_from\": \"2026-03-01T00:00:00Z\"",
        "\"effective_from\": \"2026-02-01T00:00:00Z\"",
    );
    assert!(
        PriceCatalog::from_json(&overlapping)
            .unwrap_err()
            .to_string()
            .contains("overlapping")
    );
    let negative = WINDOWS.replace("\"0.000001\"", "\"-0.000001\"");
    assert!(PriceCatalog::from_json(&negative).is_err());
    let unknown_class = WINDOWS.replace("\"audio_input\"", "\"smell_input\"");
    assert!(PriceCatalog::from_json(&unknown_class).is_err());
    assert!(PriceCatalog::from_json("{}").is_err());
    assert!(PriceCatalog::from_any_json("[]").is_err());
}
