//! Money invariants, by property: lines sum to the total and each is count × rate; a cost never falls when a
//! count rises; normalised classes add up to exactly what the provider reported.

mod common;

use chrono::{DateTime, TimeZone, Utc};
use common::{bundled, litellm_catalog};
use keymeter::pricing::normalize::{UsageFormat, normalize};
use keymeter::pricing::{Region, ServiceTier, Terms, TokenClass, Usage};
use proptest::prelude::*;
use rust_decimal::Decimal;

fn usage() -> impl Strategy<Value = Usage> {
    prop::collection::vec(0u64..2_000_000, TokenClass::ALL.len()).prop_map(|counts| {
        let mut u = Usage::default();
        for (class, n) in TokenClass::ALL.into_iter().zip(counts) {
            // Queries and images come in small numbers.
            u.set(class, if class.is_token() { n } else { n % 5 });
        }
        u
    })
}

fn sparse_usage() -> impl Strategy<Value = Usage> {
    (
        usage(),
        prop::collection::vec(any::<bool>(), TokenClass::ALL.len()),
    )
        .prop_map(|(mut u, keep)| {
            for (class, k) in TokenClass::ALL.into_iter().zip(keep) {
                if !k {
                    u.set(class, 0);
                }
            }
            u
        })
}

/// The usage without the classes `model` has no rate for, so that most draws price rather than refuse.
fn priced_only(
    model: &keymeter::pricing::ModelPrices,
    at: DateTime<Utc>,
    mut usage: Usage,
) -> Usage {
    if let Some(w) = model.window_at(at) {
        for class in TokenClass::ALL {
            if w.rate(&w.bands[0], ServiceTier::Standard, class).is_none() {
                usage.set(class, 0);
            }
        }
    }
    usage
}

fn tier() -> impl Strategy<Value = ServiceTier> {
    prop::sample::select(ServiceTier::ALL.to_vec())
}

fn region() -> impl Strategy<Value = Region> {
    prop::sample::select(vec![
        Region::Global,
        Region::Us,
        Region::Eu,
        Region::Regional,
    ])
}

fn time() -> impl Strategy<Value = DateTime<Utc>> {
    // Any minute of one week: off-peak hours included.
    (0i64..7 * 24 * 60).prop_map(|m| {
        Utc.with_ymd_and_hms(2026, 11, 23, 0, 0, 0).unwrap() + chrono::Duration::minutes(m)
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn lines_sum_to_the_total(model in any::<prop::sample::Index>(), usage in sparse_usage(), tier in tier(),
                              region in region(), at in time()) {
        let catalog = litellm_catalog();
        let model = &catalog.models()[model.index(catalog.models().len())];
        let usage = priced_only(model, at, usage);
        if let Ok(cost) = catalog.cost(&model.id, &usage, at, Terms::new(tier).with_region(region)) {
            let sum = cost.lines().iter().fold(Decimal::ZERO, |s, l| s + l.cost);
            prop_assert_eq!(sum, cost.total);
            for l in cost.lines() {
                prop_assert_eq!(l.cost, Decimal::from(l.tokens) * l.rate);
                prop_assert!(!l.rate.is_sign_negative());
            }
            // Never a silent zero: a zero cost of a non-empty usage is a free entry's.
            if cost.total.is_zero() && !usage.is_empty() {
                prop_assert!(model.window_at(at).unwrap().other_unit().is_none());
            }
        }
    }

    #[test]
    fn a_cost_never_falls_when_a_count_rises(model in any::<prop::sample::Index>(), usage in sparse_usage(),
                                             class in prop::sample::select(TokenClass::ALL.to_vec()),
                                             more in 1u64..500_000, tier in tier(), region in region(),
                                             at in time()) {
        let catalog = bundled();
        let model = &catalog.models()[model.index(catalog.models().len())];
        let terms = Terms::new(tier).with_region(region);
        let usage = priced_only(model, at, usage);
        let mut bigger = usage;
        bigger.set(class, usage.get(class) + more);
        if let (Ok(a), Ok(b)) = (catalog.cost(&model.id, &usage, at, terms), catalog.cost(&model.id, &bigger, at, terms)) {
            prop_assert!(b.total >= a.total, "{}: {} > {} after {} more {}", model.id, a.total, b.total, more, class);
        }
    }

    #[test]
    fn openai_classes_add_up_to_what_was_reported(cached_text in 0u64..1_000_000, cached_audio in 0u64..1_000,
            audio in 0u64..10_000, image in 0u64..10_000, write in 0u64..100_000, fresh in 0u64..1_000_000,
            reasoning in 0u64..100_000, audio_out in 0u64..10_000, image_out in 0u64..10_000,
            text_out in 0u64..100_000, responses in any::<bool>(), nulls in any::<bool>()) {
        let audio = audio + cached_audio;
        let prompt = fresh + cached_text + cached_audio + (audio - cached_audio) + image + write;
        let completion = reasoning + audio_out + image_out + text_out;
        let z = |n: u64| if nulls && n == 0 { "null".to_owned() } else { n.to_string() };
        let details_in = format!(r#"{{"cached_tokens": {}, "cached_tokens_details": {{"audio_tokens": {}}}, "audio_tokens": {}, "image_tokens": {}, "cache_write_tokens": {}}}"#,
            z(cached_text + cached_audio), z(cached_audio), z(audio), z(image), z(write));
        let details_out = format!(r#"{{"reasoning_tokens": {}, "audio_tokens": {}, "image_tokens": {}}}"#, z(reasoning), z(audio_out), z(image_out));
        let text = if responses {
            format!(r#"{{"input_tokens": {prompt}, "output_tokens": {completion}, "input_tokens_details": {details_in}, "output_tokens_details": {details_out}}}"#)
        } else {
            format!(r#"{{"prompt_tokens": {prompt}, "completion_tokens": {completion}, "prompt_tokens_details": {details_in}, "completion_tokens_details": {details_out}}}"#)
        };
        let u = normalize(UsageFormat::OpenAi, &text).unwrap();
        prop_assert_eq!(u.prompt_tokens(), prompt);
        prop_assert_eq!(u.output_tokens(), completion);
        prop_assert_eq!((u.input, u.cache_read, u.cache_read_audio, u.cache_write_5m), (fresh, cached_text, cached_audio, write));
    }

    #[test]
    fn gemini_classes_add_up_to_what_was_reported(text in 0u64..1_000_000, audio in 0u64..100_000,
            cached_text in 0u64..1_000_000, cached_audio in 0u64..100_000, tool in 0u64..10_000,
            text_out in 0u64..100_000, image_out in 0u64..10_000, audio_out in 0u64..10_000,
            thoughts in 0u64..100_000) {
        let prompt = text + audio + cached_text + cached_audio;
        let candidates = text_out + image_out + audio_out;
        let json = format!(r#"{{"promptTokenCount": {prompt}, "cachedContentTokenCount": {}, "toolUsePromptTokenCount": {tool},
            "candidatesTokenCount": {candidates}, "thoughtsTokenCount": {thoughts},
            "promptTokensDetails": [{{"modality": "TEXT", "tokenCount": {}}}, {{"modality": "AUDIO", "tokenCount": {}}}],
            "cacheTokensDetails": [{{"modality": "TEXT", "tokenCount": {cached_text}}}, {{"modality": "AUDIO", "tokenCount": {cached_audio}}}],
            "candidatesTokensDetails": [{{"modality": "TEXT", "tokenCount": {text_out}}}, {{"modality": "IMAGE", "tokenCount": {image_out}}}, {{"modality": "AUDIO", "tokenCount": {audio_out}}}]}}"#,
            cached_text + cached_audio, text + cached_text, audio + cached_audio);
        let u = normalize(UsageFormat::Gemini, &json).unwrap();
        prop_assert_eq!(u.prompt_tokens(), prompt + tool);
        prop_assert_eq!(u.output_tokens(), candidates + thoughts);
        prop_assert_eq!((u.input, u.audio_input, u.cache_read, u.cache_read_audio), (text + tool, audio, cached_text, cached_audio));
    }

    #[test]
    fn anthropic_classes_are_taken_as_reported(input in 0u64..1_000_000, read in 0u64..1_000_000,
            w5 in 0u64..100_000, w1h in 0u64..100_000, output in 0u64..100_000, searches in 0u64..10) {
        let json = format!(r#"{{"input_tokens": {input}, "output_tokens": {output}, "cache_read_input_tokens": {read},
            "cache_creation_input_tokens": {}, "cache_creation": {{"ephemeral_5m_input_tokens": {w5}, "ephemeral_1h_input_tokens": {w1h}}},
            "server_tool_use": {{"web_search_requests": {searches}}}}}"#, w5 + w1h);
        let u = normalize(UsageFormat::Anthropic, &json).unwrap();
        prop_assert_eq!(u.prompt_tokens(), input + read + w5 + w1h);
        prop_assert_eq!((u.output, u.web_search), (output, searches));
    }
}
