//! Usage normalisers: never panic; an accepted usage's classes add up to exactly what the provider reported (so
//! cached, cache-write, audio and image tokens are never counted in `input` too).
#![no_main]

use keymeter::pricing::normalize::{UsageFormat, normalize};
use libfuzzer_sys::fuzz_target;

fn num(v: &serde_json::Value, path: &[&str]) -> u128 {
    let mut cur = v;
    for p in path {
        match cur.get(p) {
            Some(next) => cur = next,
            None => return 0,
        }
    }
    u128::from(cur.as_u64().unwrap_or(0))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let value: Option<serde_json::Value> = serde_json::from_str(text).ok();
    for format in [UsageFormat::OpenAi, UsageFormat::Anthropic, UsageFormat::Gemini] {
        let Ok(usage) = normalize(format, text) else { continue };
        let Some(v) = value.as_ref() else { panic!("accepted text that is not JSON") };
        // The object each format reads: a Gemini response holds `usageMetadata`, the others `usage`; otherwise the
        // object itself.
        let wrapper = if format == UsageFormat::Gemini { "usageMetadata" } else { "usage" };
        let v = v.get(wrapper).filter(|u| u.is_object()).unwrap_or(v);
        let u = |n: u64| u128::from(n);
        let prompt_side = u(usage.input) + u(usage.cache_read) + u(usage.cache_read_audio) + u(usage.audio_input)
            + u(usage.cache_write_5m) + u(usage.image_input);
        let output_side = u(usage.output) + u(usage.reasoning) + u(usage.audio_output) + u(usage.image_output);
        match format {
            UsageFormat::OpenAi if v.get("prompt_tokens").is_some() => {
                assert_eq!(prompt_side, num(v, &["prompt_tokens"]));
                assert_eq!(output_side, num(v, &["completion_tokens"]));
            }
            UsageFormat::OpenAi => {
                assert_eq!(prompt_side, num(v, &["input_tokens"]));
                assert_eq!(output_side, num(v, &["output_tokens"]));
            }
            UsageFormat::Anthropic => {
                assert_eq!(u(usage.input), num(v, &["input_tokens"]));
                assert_eq!(u(usage.output), num(v, &["output_tokens"]));
            }
            UsageFormat::Gemini => {
                let prompt = num(v, &["promptTokenCount"]) + num(v, &["toolUsePromptTokenCount"]);
                assert_eq!(prompt_side, prompt);
                assert_eq!(u(usage.output) + u(usage.image_output) + u(usage.audio_output), num(v, &["candidatesTokenCount"]));
            }
        }
        // Only flex, priority and batch are tiers a response can set.
        assert_ne!(usage.tier, Some(keymeter::pricing::ServiceTier::Standard));
    }
});
