//! Issue 10's classes: every usage a provider reports priced exactly from LiteLLM 1.109.1's own numbers (written
//! beside each expectation), or refused — never a silent zero.

mod common;

use chrono::{DateTime, TimeZone, Utc};
use keymeter::Error;
use keymeter::pricing::normalize::{UsageFormat, normalize};
use keymeter::pricing::{
    Cost, PriceCatalog, Region, ServiceTier, StreamUsage, Terms, TokenClass, Usage, litellm,
};

use common::litellm_catalog as catalog;

fn at() -> DateTime<Utc> {
    // A Saturday noon: off-peak for DeepSeek, so tests that are not about off-peak avoid DeepSeek.
    Utc.with_ymd_and_hms(2026, 11, 21, 12, 0, 0).unwrap()
}

fn cost(model: &str, usage: &Usage, terms: impl Into<Terms>) -> Cost {
    catalog()
        .cost(model, usage, at(), terms)
        .unwrap_or_else(|e| panic!("{model}: {e}"))
}

/// The lines as (kind, count, rate, cost), all normalised.
fn lines(cost: &Cost) -> Vec<(&'static str, u64, String, String)> {
    cost.lines()
        .iter()
        .map(|l| {
            (
                l.kind.as_str(),
                l.tokens,
                l.rate.normalize().to_string(),
                l.cost.normalize().to_string(),
            )
        })
        .collect()
}

fn l(kind: &'static str, n: u64, rate: &str, cost: &str) -> (&'static str, u64, String, String) {
    (kind, n, rate.to_owned(), cost.to_owned())
}

/// The usage of a stream of `events`, pushed one at a time.
fn streamed(format: UsageFormat, events: &[&str]) -> Usage {
    let mut s = StreamUsage::new(format);
    for data in events {
        s.push(data).unwrap();
    }
    s.finish().unwrap()
}

fn total(cost: &Cost) -> String {
    cost.total.to_string()
}

// ---- 1. reasoning under a tier falls back to the same tier's output rate ----

#[test]
fn reasoning_under_flex_is_billed_at_the_flex_output_rate() {
    // gemini/gemini-3.1-flash-lite-preview: output_cost_per_token_flex 7.5e-07, output_cost_per_reasoning_token
    // 1.5e-06 (standard only). Flex reasoning: 2000 × 0.00000075 = 0.0015; output 1000 × 0.00000075 = 0.00075.
    let usage = Usage {
        output: 1_000,
        reasoning: 2_000,
        ..Usage::default()
    };
    let flex = cost(
        "gemini/gemini-3.1-flash-lite-preview",
        &usage,
        ServiceTier::Flex,
    );
    assert_eq!(
        lines(&flex),
        [
            l("output", 1000, "0.00000075", "0.00075"),
            l("reasoning", 2000, "0.00000075", "0.0015"),
        ]
    );
    assert_eq!(total(&flex), "0.00225");
    // Standard keeps the reasoning rate: 2000 × 0.0000015 + 1000 × 0.0000015 = 0.0045.
    let standard = cost(
        "gemini/gemini-3.1-flash-lite-preview",
        &usage,
        ServiceTier::Standard,
    );
    assert_eq!(total(&standard), "0.0045");
}

#[test]
fn a_missing_band_rate_takes_the_higher_of_the_tier_base_and_the_band_standard() {
    // gpt-6-astra has no cache_read_input_token_cost_above_272k_tokens_… for `ultrafast` (ignored) but for flex
    // it has cache_read_…_above_272k_tokens_flex 1e-06; audio is absent everywhere. For a rate missing in
    // (tier, band), a made-up catalog shows the rule: (flex, base) 0.000002 vs (standard, band) 0.000003 → 3.
    let text = r#"{"format": "keymeter-catalog/1", "models": [{"id": "m", "provider": "p", "prices": [{
        "rates": {"input": "0.000001", "output": "0.00001"},
        "tiers": {"flex": {"input": "0.000002"}},
        "above": [{"tokens": 100, "rates": {"input": "0.000003"}, "tiers": {"flex": {"output": "0.00002"}}}]}]}]}"#;
    let c = PriceCatalog::from_json(text).unwrap();
    let usage = Usage {
        input: 1_000,
        output: 10,
        reasoning: 10,
        ..Usage::default()
    };
    let flex = c.cost("m", &usage, at(), ServiceTier::Flex).unwrap();
    assert_eq!(
        lines(&flex),
        [
            l("input", 1000, "0.000003", "0.003"),
            l("output", 10, "0.00002", "0.0002"),
            l("reasoning", 10, "0.00002", "0.0002"),
        ]
    );
}

// ---- 2. names ----

#[test]
fn provider_qualified_names_beat_resellers_aliases() {
    // o4-mini is openai's; replicate/openai/o4-mini is a reseller's entry and must not win `openai/o4-mini`.
    let m = catalog().resolve("openai/o4-mini").unwrap();
    assert_eq!((&*m.id, &*m.provider), ("o4-mini", "openai"));
    let usage = Usage {
        input: 1_000_000,
        ..Usage::default()
    };
    // input_cost_per_token 1.1e-06 × 1M = 1.1; the provider reported is the entry's own.
    let c = cost("openai/o4-mini", &usage, ServiceTier::Standard);
    assert_eq!((total(&c).as_str(), &*c.provider), ("1.1", "openai"));
    let reseller = catalog().resolve("replicate/openai/o4-mini").unwrap();
    assert_eq!(&*reseller.provider, "replicate");
    // Every `provider/id` of an entry whose id has no slash resolves to that entry, unless another entry has
    // that exact id (LiteLLM lists `deepseek/deepseek-chat` and `deepseek-chat` both; the exact id wins).
    let ids: std::collections::HashSet<&str> = catalog().models().iter().map(|m| &*m.id).collect();
    for m in catalog().models().iter().filter(|m| !m.id.contains('/')) {
        let name = format!("{}/{}", m.provider, m.id);
        let want = if ids.contains(name.as_str()) {
            name.as_str()
        } else {
            &*m.id
        };
        assert_eq!(&*catalog().resolve(&name).unwrap().id, want, "{name}");
    }
}

#[test]
fn an_alias_of_two_models_is_an_error_naming_both_and_an_id_beats_an_alias() {
    let text = r#"{"format": "keymeter-catalog/1", "models": [
        {"id": "a", "provider": "p", "aliases": ["shared", "b"], "prices": [{"rates": {"input": "1"}}]},
        {"id": "b", "provider": "q", "aliases": ["shared"], "prices": [{"rates": {"input": "2"}}]}]}"#;
    let c = PriceCatalog::from_json(text).unwrap();
    match c.resolve("shared") {
        Err(Error::AmbiguousModel { model, candidates }) => {
            assert_eq!(model, "shared");
            assert_eq!(candidates, ["a", "b"]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(&*c.resolve("b").unwrap().id, "b");
    assert_eq!(&*c.resolve("q/b").unwrap().id, "b");
    assert!(matches!(
        c.cost("shared", &Usage::default(), at(), ServiceTier::Standard),
        Err(Error::AmbiguousModel { .. })
    ));
}

// ---- 3. OpenAI cache writes ----

#[test]
fn openai_cache_writes_are_cache_writes_not_input() {
    // gpt-6-astra: input 1e-05, cache_read 1e-06, cache_creation 1.25e-05, output 5e-05.
    // prompt 10000 = 3000 input + 4000 cached + 3000 written.
    let expected = [
        l("input", 3000, "0.00001", "0.03"),
        l("cache_read", 4000, "0.000001", "0.004"),
        l("cache_write_5m", 3000, "0.0000125", "0.0375"),
        l("output", 500, "0.00005", "0.025"),
    ];
    for text in [
        r#"{"prompt_tokens": 10000, "completion_tokens": 500,
            "prompt_tokens_details": {"cached_tokens": 4000, "cache_write_tokens": 3000}}"#,
        r#"{"input_tokens": 10000, "output_tokens": 500,
            "input_tokens_details": {"cached_tokens": 4000, "cache_write_tokens": 3000}}"#,
    ] {
        let usage = normalize(UsageFormat::OpenAi, text).unwrap();
        let c = cost("gpt-6-astra", &usage, ServiceTier::Standard);
        assert_eq!(lines(&c), expected);
        assert_eq!(total(&c), "0.0965");
    }
}

// ---- 4. null counts ----

#[test]
fn null_counts_are_zero() {
    let usage = normalize(
        UsageFormat::OpenAi,
        r#"{"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120,
            "prompt_tokens_details": {"cached_tokens": null, "audio_tokens": null},
            "completion_tokens_details": null}"#,
    )
    .unwrap();
    assert_eq!((usage.input, usage.cache_read, usage.output), (100, 0, 20));
    let usage = normalize(
        UsageFormat::Anthropic,
        r#"{"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": null,
            "cache_creation_input_tokens": null, "server_tool_use": null}"#,
    )
    .unwrap();
    assert_eq!((usage.input, usage.cache_read, usage.output), (10, 0, 5));
    let usage = normalize(
        UsageFormat::Gemini,
        r#"{"promptTokenCount": 7, "candidatesTokenCount": null, "cachedContentTokenCount": null}"#,
    )
    .unwrap();
    assert_eq!((usage.input, usage.output), (7, 0));
}

// ---- 5. tier and region from the response ----

#[test]
fn the_responses_tier_wins_over_the_callers() {
    // o4-mini: standard input 1.1e-06 / output 4.4e-06; flex 5.5e-07 / 2.2e-06.
    let body = |tier: &str| {
        format!(
            r#"{{"service_tier": "{tier}", "usage": {{"prompt_tokens": 1000, "completion_tokens": 1000}}}}"#
        )
    };
    let flex = normalize(UsageFormat::OpenAi, &body("flex")).unwrap();
    assert_eq!(flex.tier, Some(ServiceTier::Flex));
    let c = cost("o4-mini", &flex, ServiceTier::Standard);
    assert_eq!((total(&c).as_str(), c.tier), ("0.00275", ServiceTier::Flex));
    // `default` and `auto` do not override the caller: priority 2e-06 / 8e-06 → 0.01.
    for word in ["default", "auto"] {
        let u = normalize(UsageFormat::OpenAi, &body(word)).unwrap();
        assert_eq!(u.tier, None);
        assert_eq!(total(&cost("o4-mini", &u, ServiceTier::Priority)), "0.01");
    }
    // Anthropic usage.service_tier "batch": claude-sonnet-5 batches 1e-06 / 5e-06 → 0.001 + 0.005.
    let u = normalize(
        UsageFormat::Anthropic,
        r#"{"usage": {"input_tokens": 1000, "output_tokens": 1000, "service_tier": "batch"}}"#,
    )
    .unwrap();
    assert_eq!(
        total(&cost("claude-sonnet-5", &u, ServiceTier::Standard)),
        "0.006"
    );
    // Vertex trafficType ON_DEMAND_PRIORITY: vertex_ai/gemini-3.5-flash priority 2.7e-06 / 1.62e-05.
    let u = normalize(
        UsageFormat::Gemini,
        r#"{"usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 100, "trafficType": "ON_DEMAND_PRIORITY"}}"#,
    )
    .unwrap();
    assert_eq!(
        total(&cost(
            "vertex_ai/gemini-3.5-flash",
            &u,
            ServiceTier::Standard
        )),
        "0.00432"
    );
    let u = normalize(
        UsageFormat::Gemini,
        r#"{"usageMetadata": {"promptTokenCount": 1000, "candidatesTokenCount": 100, "trafficType": "ON_DEMAND"}}"#,
    )
    .unwrap();
    assert_eq!(
        total(&cost(
            "vertex_ai/gemini-3.5-flash",
            &u,
            ServiceTier::Standard
        )),
        "0.0024"
    );
}

#[test]
fn regional_processing_is_uplifted() {
    // claude-sonnet-5: provider_specific_entry {"us": 1.1}; input 2e-06, output 1e-05, web search 0.01/query.
    // inference_geo "us": 1000 × 0.0000022 + 1000 × 0.000011 + 2 searches × 0.01 (not uplifted) = 0.0332.
    let u = normalize(
        UsageFormat::Anthropic,
        r#"{"usage": {"input_tokens": 1000, "output_tokens": 1000, "inference_geo": "us",
            "server_tool_use": {"web_search_requests": 2}}}"#,
    )
    .unwrap();
    assert_eq!(u.region, Some(Region::Us));
    let c = cost("claude-sonnet-5", &u, ServiceTier::Standard);
    assert_eq!(
        lines(&c),
        [
            l("input", 1000, "0.0000022", "0.0022"),
            l("output", 1000, "0.000011", "0.011"),
            l("web_search", 2, "0.01", "0.02"),
        ]
    );
    assert_eq!((total(&c).as_str(), c.region), ("0.0332", Region::Us));
    // "global" is not uplifted: 0.002 + 0.01.
    let global = Usage {
        region: Some(Region::Global),
        ..u
    };
    let c = cost(
        "claude-sonnet-5",
        &Usage {
            web_search: 0,
            ..global
        },
        Terms::new(ServiceTier::Standard).with_region(Region::Us),
    );
    assert_eq!(total(&c), "0.012");
    // OpenAI regional processing: gpt-6-astra regional_processing_uplift_multiplier_eu 1.1 → 1000 × 0.000011.
    let input = Usage {
        input: 1000,
        ..Usage::default()
    };
    let eu = Terms::new(ServiceTier::Standard).with_region(Region::Eu);
    assert_eq!(total(&cost("gpt-6-astra", &input, eu)), "0.011");
    // Vertex regional endpoint: vertex_ai/gemini-3.5-flash regional_endpoint_uplift_multiplier 1.1 applies to
    // any non-global region: 1000 × 0.0000015 × 1.1 = 0.00165.
    for region in [Region::Regional, Region::Us, Region::Eu] {
        let terms = Terms::new(ServiceTier::Standard).with_region(region);
        assert_eq!(
            total(&cost("vertex_ai/gemini-3.5-flash", &input, terms)),
            "0.00165"
        );
    }
    assert_eq!(
        total(&cost(
            "vertex_ai/gemini-3.5-flash",
            &input,
            ServiceTier::Standard
        )),
        "0.0015"
    );
    // A model without uplifts costs the same everywhere: o4-mini 1000 × 0.0000011.
    let terms = Terms::new(ServiceTier::Standard).with_region(Region::Us);
    assert_eq!(total(&cost("o4-mini", &input, terms)), "0.0011");
}

// ---- 6. billable extras ----

#[test]
fn web_search_and_maps_grounding_are_billed_per_query() {
    // Anthropic server_tool_use.web_search_requests 3 on claude-sonnet-5: 3 × 0.01, plus 100 × 0.000002.
    let u = normalize(
        UsageFormat::Anthropic,
        r#"{"input_tokens": 100, "output_tokens": 0, "server_tool_use": {"web_search_requests": 3}}"#,
    )
    .unwrap();
    assert_eq!(
        total(&cost("claude-sonnet-5", &u, ServiceTier::Standard)),
        "0.0302"
    );
    // Gemini grounding on gemini-2.5-flash (vertex): search_context_cost_per_query 0.035,
    // google_maps_grounding_cost_per_query 0.025; 2 search queries + Maps grounding; 1000 × 3e-07 input.
    let u = normalize(
        UsageFormat::Gemini,
        r#"{"candidates": [{"groundingMetadata": {"webSearchQueries": ["a", "b"],
              "groundingChunks": [{"web": {"uri": "x"}}, {"maps": {"uri": "y"}}]}}],
            "usageMetadata": {"promptTokenCount": 1000}}"#,
    )
    .unwrap();
    assert_eq!((u.web_search, u.maps_grounding), (2, 1));
    let c = cost("gemini-2.5-flash", &u, ServiceTier::Standard);
    assert_eq!(
        lines(&c),
        [
            l("input", 1000, "0.0000003", "0.0003"),
            l("web_search", 2, "0.035", "0.07"),
            l("maps_grounding", 1, "0.025", "0.025"),
        ]
    );
    assert_eq!(total(&c), "0.0953");
    // OpenAI Responses: web_search_call output items on gpt-6-astra (0.01 per query).
    let u = normalize(
        UsageFormat::OpenAi,
        r#"{"output": [{"type": "web_search_call"}, {"type": "message"}, {"type": "web_search_call"}],
            "usage": {"input_tokens": 0, "output_tokens": 0}}"#,
    )
    .unwrap();
    assert_eq!(
        total(&cost("gpt-6-astra", &u, ServiceTier::Standard)),
        "0.02"
    );
}

#[test]
fn image_output_tokens_and_images_generated() {
    // gemini/gemini-3-pro-image-preview: input 2e-06, output 1.2e-05, output_cost_per_image_token 0.00012.
    let u = normalize(
        UsageFormat::Gemini,
        r#"{"promptTokenCount": 100, "candidatesTokenCount": 1290,
            "candidatesTokensDetails": [{"modality": "IMAGE", "tokenCount": 1120}, {"modality": "TEXT", "tokenCount": 170}]}"#,
    )
    .unwrap();
    let c = cost(
        "gemini/gemini-3-pro-image-preview",
        &u,
        ServiceTier::Standard,
    );
    assert_eq!(
        lines(&c),
        [
            l("input", 100, "0.000002", "0.0002"),
            l("output", 170, "0.000012", "0.00204"),
            l("image_output", 1120, "0.00012", "0.1344"),
        ]
    );
    assert_eq!(total(&c), "0.13664");
    // aiml/dall-e-3: output_cost_per_image 0.052; two images.
    let u = Usage {
        images: 2,
        ..Usage::default()
    };
    assert_eq!(
        total(&cost("aiml/dall-e-3", &u, ServiceTier::Standard)),
        "0.104"
    );
}

#[test]
fn openai_image_tokens_use_the_image_rate_where_the_model_has_one() {
    // gpt-image-1.5: input 5e-06, input_cost_per_image_token 8e-06, output_cost_per_image_token 3.2e-05.
    let text = r#"{"input_tokens": 1000, "output_tokens": 4160,
        "input_tokens_details": {"image_tokens": 600, "text_tokens": 400},
        "output_tokens_details": {"image_tokens": 4160}}"#;
    let u = normalize(UsageFormat::OpenAi, text).unwrap();
    let c = cost("gpt-image-1.5", &u, ServiceTier::Standard);
    assert_eq!(
        lines(&c),
        [
            l("input", 400, "0.000005", "0.002"),
            l("image_input", 600, "0.000008", "0.0048"),
            l("image_output", 4160, "0.000032", "0.13312"),
        ]
    );
    assert_eq!(total(&c), "0.13992");
    // o4-mini has no image rate: its image tokens are input (1000 × 0.0000011), as OpenAI bills them.
    let prompt_only = r#"{"prompt_tokens": 1000, "completion_tokens": 0,
        "prompt_tokens_details": {"image_tokens": 600}}"#;
    let u = normalize(UsageFormat::OpenAi, prompt_only).unwrap();
    assert_eq!(total(&cost("o4-mini", &u, ServiceTier::Standard)), "0.0011");
}

#[test]
fn cached_audio_and_twelve_hour_cache_writes() {
    // gemini-2.5-flash (vertex): input 3e-07, cache_read 3e-08, audio 1e-06, cached audio 1e-07.
    // prompt 1000 = text 700 + audio 300; cached 600 = text 400 + audio 200.
    let u = normalize(
        UsageFormat::Gemini,
        r#"{"promptTokenCount": 1000, "cachedContentTokenCount": 600,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": 700}, {"modality": "AUDIO", "tokenCount": 300}],
            "cacheTokensDetails": [{"modality": "TEXT", "tokenCount": 400}, {"modality": "AUDIO", "tokenCount": 200}]}"#,
    )
    .unwrap();
    assert_eq!(u.prompt_tokens(), 1000);
    let c = cost("gemini-2.5-flash", &u, ServiceTier::Standard);
    assert_eq!(
        lines(&c),
        [
            l("input", 300, "0.0000003", "0.00009"),
            l("cache_read", 400, "0.00000003", "0.000012"),
            l("audio_input", 100, "0.000001", "0.0001"),
            l("cache_read_audio", 200, "0.0000001", "0.00002"),
        ]
    );
    assert_eq!(total(&c), "0.000222");
    // gpt-6-astra: cache_creation_input_token_cost_above_12hr 2.5e-05, _flex 1.25e-05.
    let u = Usage {
        cache_write_12h: 1000,
        ..Usage::default()
    };
    assert_eq!(
        total(&cost("gpt-6-astra", &u, ServiceTier::Standard)),
        "0.025"
    );
    assert_eq!(total(&cost("gpt-6-astra", &u, ServiceTier::Flex)), "0.0125");
}

// ---- 7. tiered_pricing and off-peak hours ----

#[test]
fn tiered_pricing_bills_the_whole_request_at_its_range() {
    // dashscope/qwen-plus-2025-07-28: [0, 256000]: input 4e-07, reasoning 4e-06, output 1.2e-06;
    // (256000, 1000000]: input 1.2e-06, reasoning 1.2e-05, output 3.6e-06.
    let usage = |input| Usage {
        input,
        output: 1000,
        reasoning: 1000,
        ..Usage::default()
    };
    let at_edge = cost(
        "dashscope/qwen-plus-2025-07-28",
        &usage(256_000),
        ServiceTier::Standard,
    );
    // 256000 × 0.0000004 + 1000 × 0.0000012 + 1000 × 0.000004
    assert_eq!(total(&at_edge), "0.1076");
    let past = cost(
        "dashscope/qwen-plus-2025-07-28",
        &usage(256_001),
        ServiceTier::Standard,
    );
    // 256001 × 0.0000012 + 1000 × 0.0000036 + 1000 × 0.000012
    assert_eq!(total(&past), "0.3228012");
    // The first range includes 0 tokens.
    assert_eq!(
        total(&cost(
            "dashscope/qwen-plus-2025-07-28",
            &Usage {
                output: 10,
                ..Usage::default()
            },
            ServiceTier::Standard
        )),
        "0.000012"
    );
}

#[test]
fn off_peak_rates_apply_at_the_usages_own_time() {
    // deepseek-flash: input 3e-07, output 1.2e-06, cache_read 6e-09; off-peak input 1.5e-07, output 6e-07,
    // cache_read 3e-09 on weekdays 00:00-01:00, 04:00-06:00, 10:00-24:00 UTC and all weekend.
    let usage = Usage {
        input: 1000,
        cache_read: 1000,
        output: 1000,
        reasoning: 1000,
        ..Usage::default()
    };
    let price = |y, mo, d, h, mi| {
        catalog()
            .cost(
                "deepseek-flash",
                &usage,
                Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap(),
                ServiceTier::Standard,
            )
            .unwrap()
    };
    // Monday 2026-11-23 02:00 UTC, peak: 0.0003 + 0.000006 + 0.0012 + 0.0012 (reasoning at output).
    let peak = price(2026, 11, 23, 2, 0);
    assert_eq!((total(&peak).as_str(), peak.off_peak), ("0.002706", false));
    // Monday 00:30 and 05:59, Saturday 07:00: off-peak, 0.00015 + 0.000003 + 0.0006 + 0.0006.
    for (d, h, mi) in [(23, 0, 30), (23, 5, 59), (28, 7, 0), (23, 23, 59)] {
        let off = price(2026, 11, d, h, mi);
        assert_eq!(
            (total(&off).as_str(), off.off_peak),
            ("0.001353", true),
            "{d} {h}:{mi}"
        );
    }
    // 06:00 and 09:59 on a weekday are peak again.
    assert_eq!(total(&price(2026, 11, 24, 6, 0)), "0.002706");
    assert_eq!(total(&price(2026, 11, 24, 9, 59)), "0.002706");
    // A batch-tier request is not an off-peak one: DeepSeek has no batch rates, so standard rates.
    let batch = catalog()
        .cost(
            "deepseek-flash",
            &usage,
            Utc.with_ymd_and_hms(2026, 11, 28, 7, 0, 0).unwrap(),
            ServiceTier::Batch,
        )
        .unwrap();
    assert_eq!(total(&batch), "0.002706");
}

#[test]
fn off_peak_weekdays_in_another_zone() {
    // Weekdays judged in Asia/Shanghai (UTC+8): Sunday 2026-11-22 20:00 UTC is Monday 04:00 there, so a
    // 20:00-21:00 UTC Sunday-only window does not apply, and a Monday one does.
    let text = |days: &str| {
        format!(
            r#"{{"format": "keymeter-catalog/1", "models": [{{"id": "m", "provider": "p", "prices": [{{
            "rates": {{"input": "0.000002"}},
            "off_peak": {{"rates": {{"input": "0.000001"}}, "weekday_timezone": "Asia/Shanghai",
                          "windows": [{{"weekdays": {days}, "hours_utc": "20:00-21:00"}}]}}}}]}}]}}"#
        )
    };
    let usage = Usage {
        input: 1000,
        ..Usage::default()
    };
    let t = Utc.with_ymd_and_hms(2026, 11, 22, 20, 30, 0).unwrap();
    let sunday = PriceCatalog::from_json(&text("[7]")).unwrap();
    assert_eq!(
        sunday
            .cost("m", &usage, t, ServiceTier::Standard)
            .unwrap()
            .total
            .to_string(),
        "0.002"
    );
    let monday = PriceCatalog::from_json(&text("[1]")).unwrap();
    assert_eq!(
        monday
            .cost("m", &usage, t, ServiceTier::Standard)
            .unwrap()
            .total
            .to_string(),
        "0.001"
    );
    // The imported tencent entry carries its zone.
    let m = catalog().resolve("tencent/deepseek-v4.1-flash").unwrap();
    let zone = m.windows[0]
        .off_peak
        .as_ref()
        .unwrap()
        .weekday_zone
        .unwrap();
    assert_eq!(zone.name(), "Asia/Shanghai");
}

// ---- 8. never a silent zero ----

#[test]
fn an_entry_priced_in_another_unit_refuses_usage() {
    let tokens = Usage {
        input: 100,
        ..Usage::default()
    };
    // rerank-v3.5: input_cost_per_query 0.002, token rates 0.
    match catalog().cost("rerank-v3.5", &tokens, at(), ServiceTier::Standard) {
        Err(Error::UnpricedUnit { model, unit }) => {
            assert_eq!(
                (model.as_str(), unit.as_str()),
                ("rerank-v3.5", "input_cost_per_query")
            );
        }
        other => panic!("{other:?}"),
    }
    // azure/standard/1024-x-1024/dall-e-3: priced per pixel.
    assert!(matches!(
        catalog().cost(
            "azure/standard/1024-x-1024/dall-e-3",
            &tokens,
            at(),
            ServiceTier::Standard
        ),
        Err(Error::UnpricedUnit { .. })
    ));
    // gemini/lyria-3-clip-preview: output_cost_per_image 0.04, token rates 0: tokens alone are refused, an image
    // is billed.
    assert!(matches!(
        catalog().cost(
            "gemini/lyria-3-clip-preview",
            &tokens,
            at(),
            ServiceTier::Standard
        ),
        Err(Error::UnpricedUnit { .. })
    ));
    let image = Usage {
        input: 100,
        images: 1,
        ..Usage::default()
    };
    assert_eq!(
        total(&cost(
            "gemini/lyria-3-clip-preview",
            &image,
            ServiceTier::Standard
        )),
        "0.04"
    );
    // whisper-1 has no token rate at all, only a price per second.
    assert!(matches!(
        catalog().cost("whisper-1", &tokens, at(), ServiceTier::Standard),
        Err(Error::UnpricedUnit { .. })
    ));
    // A free entry (every price zero, nothing in another unit) is $0.
    assert_eq!(
        total(&cost("ollama/codegeex4", &tokens, ServiceTier::Standard)),
        "0"
    );
    // A class the model has no rate for is still UNPRICED_CLASS.
    let audio = Usage {
        audio_input: 10,
        ..Usage::default()
    };
    assert!(matches!(
        catalog().cost("claude-sonnet-5", &audio, at(), ServiceTier::Standard),
        Err(Error::UnpricedClass {
            class: "audio_input",
            ..
        })
    ));
    // No imported entry prices a non-empty token usage at zero unless it is free.
    let usage = Usage {
        input: 1000,
        output: 1000,
        ..Usage::default()
    };
    for m in catalog().models() {
        let w = &m.windows[0];
        if let Ok(c) = catalog().cost(&m.id, &usage, at(), ServiceTier::Standard)
            && c.total.is_zero()
        {
            assert!(w.other_unit().is_none(), "{} priced at zero", m.id);
        }
    }
}

#[test]
fn import_reasons_are_exact() {
    let text = include_str!("fixtures/litellm/model_prices_and_context_window.json");
    let import = litellm::import(text).unwrap();
    let reason = |name: &str| {
        import
            .skipped
            .iter()
            .find(|s| s.model == name)
            .map(|s| s.reason.clone())
    };
    // tiered_pricing-only entries are imported now.
    assert_eq!(reason("dashscope/qwen-flash"), None);
    assert!(import.catalog.model("dashscope/qwen-flash").is_some());
    assert_eq!(
        reason("dashscope/qwen3-30b-a3b").as_deref(),
        Some("no prices")
    );
    assert_eq!(
        reason("sample_spec").as_deref(),
        Some("the file's field documentation, not a model")
    );
    for s in &import.skipped {
        assert!(
            [
                "no prices",
                "no litellm_provider",
                "the file's field documentation, not a model"
            ]
            .contains(&s.reason.as_str()),
            "{}: {}",
            s.model,
            s.reason
        );
    }
}

// ---- 10. float noise ----

#[test]
fn float_noise_in_the_file_is_rounded_to_fifteen_digits() {
    let rate = |model: &str, class| {
        catalog().resolve(model).unwrap().windows[0].bands[0]
            .rates(ServiceTier::Standard)
            .get(class)
            .unwrap()
            .to_string()
    };
    // Written 2.9999900000000002e-06 and 1.0000000000000001e-07 in the file.
    assert_eq!(
        rate("databricks/databricks-claude-sonnet-4-1", TokenClass::Input),
        "0.00000299999"
    );
    assert_eq!(
        rate("opencode_go/gpt-6-luna", TokenClass::Input),
        "0.0000001"
    );
    assert_eq!(
        rate("novita/moonshotai/kimi-k2.5", TokenClass::CacheRead),
        "0.0000001"
    );
}

// ---- 9. streams ----

#[test]
fn an_openai_stream_is_priced_from_its_final_usage_chunk() {
    let mut s = StreamUsage::new(UsageFormat::OpenAi);
    for data in [
        r#"{"id":"c1","object":"chat.completion.chunk","service_tier":"flex","choices":[{"delta":{"content":"Hel"}}],"usage":null}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","service_tier":"flex","choices":[{"delta":{"content":"lo"}}],"usage":null}"#,
        r#"{"id":"c1","object":"chat.completion.chunk","service_tier":"flex","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":1000,"prompt_tokens_details":{"cached_tokens":null}}}"#,
        "[DONE]",
    ] {
        s.push(&format!("data: {data}")).unwrap();
    }
    let u = s.finish().unwrap();
    assert_eq!(
        (u.input, u.output, u.tier),
        (1000, 1000, Some(ServiceTier::Flex))
    );
    // o4-mini flex: 1000 × 0.00000055 + 1000 × 0.0000022.
    assert_eq!(
        total(&cost("o4-mini", &u, ServiceTier::Standard)),
        "0.00275"
    );
    // Without include_usage there is nothing to price: an error, not zero.
    let mut s = StreamUsage::new(UsageFormat::OpenAi);
    s.push(r#"{"choices":[{"delta":{"content":"usage"}}]}"#)
        .unwrap();
    assert!(matches!(s.finish(), Err(Error::InvalidUsage(_))));
}

#[test]
fn an_anthropic_stream_takes_input_from_message_start_and_cumulative_output_from_deltas() {
    let u = streamed(
        UsageFormat::Anthropic,
        &[
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":1000,"cache_read_input_tokens":2000,"cache_creation_input_tokens":0,"output_tokens":1}}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"\"usage\" is a word"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":null},"usage":{"output_tokens":200}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":500,"server_tool_use":{"web_search_requests":1}}}"#,
            r#"{"type":"message_stop"}"#,
        ],
    );
    assert_eq!(
        (u.input, u.cache_read, u.output, u.web_search),
        (1000, 2000, 500, 1)
    );
    // claude-sonnet-5: 1000 × 0.000002 + 2000 × 0.0000002 + 500 × 0.00001 + 1 × 0.01 = 0.0174.
    assert_eq!(
        total(&cost("claude-sonnet-5", &u, ServiceTier::Standard)),
        "0.0174"
    );
}

#[test]
fn a_gemini_stream_is_priced_from_its_last_chunk() {
    let u = streamed(
        UsageFormat::Gemini,
        &[
            r#"{"candidates":[{"content":{"parts":[{"text":"a"}]}}],"usageMetadata":{"promptTokenCount":1000,"candidatesTokenCount":1}}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"b"}]},"groundingMetadata":{"webSearchQueries":["q"]}}],"usageMetadata":{"promptTokenCount":1000,"candidatesTokenCount":50,"thoughtsTokenCount":100}}"#,
            r#"{"candidates":[{"content":{"parts":[{"text":"c"}]},"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":1000,"candidatesTokenCount":100,"thoughtsTokenCount":200}}"#,
        ],
    );
    assert_eq!(
        (u.input, u.output, u.reasoning, u.web_search),
        (1000, 100, 200, 1)
    );
    // gemini-2.5-flash: 1000 × 0.0000003 + 100 × 0.0000025 + 200 × 0.0000025 + 1 × 0.035 = 0.03605.
    assert_eq!(
        total(&cost("gemini-2.5-flash", &u, ServiceTier::Standard)),
        "0.03605"
    );
}

#[test]
fn a_streams_bad_event_is_an_error_and_keeps_what_came_before() {
    let mut s = StreamUsage::new(UsageFormat::Gemini);
    s.push(r#"{"usageMetadata":{"promptTokenCount":5}}"#)
        .unwrap();
    assert!(s.push(r#"{"usageMetadata": nope"#).is_err());
    assert_eq!(s.finish().unwrap().input, 5);
}

#[test]
fn usage_json_of_old_events_reads_back_and_new_fields_are_left_out_when_zero() {
    let old = r#"{"input":1,"cache_read":0,"cache_write_5m":0,"cache_write_1h":0,"output":2,"reasoning":0,"audio_input":0,"audio_output":0,"image_input":0}"#;
    let u: Usage = serde_json::from_str(old).unwrap();
    assert_eq!(serde_json::to_string(&u).unwrap(), old);
    let u = Usage {
        web_search: 1,
        tier: Some(ServiceTier::Flex),
        ..u
    };
    let text = serde_json::to_string(&u).unwrap();
    assert!(
        text.contains(r#""web_search":1"#) && text.contains(r#""tier":"flex""#),
        "{text}"
    );
    assert_eq!(serde_json::from_str::<Usage>(&text).unwrap(), u);
}

#[test]
fn the_bundled_snapshot_has_the_fixes() {
    let bundled = PriceCatalog::bundled();
    let usage = Usage {
        output: 1_000,
        reasoning: 2_000,
        ..Usage::default()
    };
    // As in reasoning_under_flex_is_billed_at_the_flex_output_rate: 3000 × 0.00000075.
    let flex = bundled
        .cost(
            "gemini-3.1-flash-lite-preview",
            &usage,
            at(),
            ServiceTier::Flex,
        )
        .unwrap();
    assert_eq!(total(&flex), "0.00225");
    // DeepSeek's off-peak hours came along: Saturday noon, 1000 input × 0.00000015.
    let input = Usage {
        input: 1000,
        ..Usage::default()
    };
    let c = bundled
        .cost("deepseek-flash", &input, at(), ServiceTier::Standard)
        .unwrap();
    assert_eq!((total(&c).as_str(), c.off_peak), ("0.00015", true));
    assert_eq!(bundled.snapshot_date.as_deref(), Some("2026-11-21"));
}
