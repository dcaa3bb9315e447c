//! Catalog parsing (both formats): never panics; whatever parses round-trips through keymeter's format, and every
//! cost it computes is an exact sum of its lines.
#![no_main]

use chrono::{TimeZone, Utc};
use keymeter::pricing::{PriceCatalog, ServiceTier, Usage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for parsed in [PriceCatalog::from_json(text), keymeter::pricing::litellm::import(text).map(|i| i.catalog)] {
        let Ok(catalog) = parsed else { continue };
        let again = PriceCatalog::from_json(&catalog.to_json()).expect("own output parses");
        assert_eq!(again, catalog);
        let usage = Usage { input: 1234, cache_read: 99, output: 77, reasoning: 5, ..Usage::default() };
        let at = Utc.with_ymd_and_hms(2026, 6, 1, 0, 0, 0).unwrap();
        for model in catalog.models().iter().take(8) {
            for tier in ServiceTier::ALL {
                if let Ok(cost) = catalog.cost(&model.id, &usage, at, tier) {
                    let sum = cost.lines().iter().fold(rust_decimal::Decimal::ZERO, |s, l| s + l.cost);
                    assert_eq!(sum, cost.total);
                    assert!(cost.lines().iter().all(|l| l.cost == rust_decimal::Decimal::from(l.tokens) * l.rate));
                }
            }
        }
    }
});
