//! Model allowlist rules: parsing never panics; a parsed list round-trips through its text and JSON, a rule
//! always permits the model name its own pattern spells with each `*` left out, and matching any text (the
//! fuzzer's second half) never panics.
#![no_main]

use keymeter::keys::ModelRule;
use keymeter::keys::models::{parse_rules, permits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (rules_text, model) = text.split_once('\n').unwrap_or((text, "gpt-4o"));
    let Ok(rules) = parse_rules(rules_text) else { return };
    let joined: Vec<String> = rules.iter().map(ToString::to_string).collect();
    assert_eq!(parse_rules(&joined.join(",")).unwrap(), rules);
    let json = serde_json::to_string(&rules).unwrap();
    assert_eq!(serde_json::from_str::<Vec<ModelRule>>(&json).unwrap(), rules);
    for rule in &rules {
        let shown = rule.to_string();
        let (provider, pattern) = shown.split_once('/').unwrap_or(("openai", &shown));
        assert!(rule.permits(provider, &pattern.replace('*', "")), "{shown}");
    }
    let _ = permits(&rules, "openai", model);
});
