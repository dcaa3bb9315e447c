//! Catalog parsing (both formats): never panics; whatever parses round-trips through keymeter's format, and every
//! cost it computes is an exact sum of its lines.
#![no_main]

use chrono::{TimeZone, Utc};
use keymeter::pricing::{PriceCatalog, Region, ServiceTier, Terms, Usage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for parsed in [PriceCatalog::from_json(text), keymeter::pricing::litellm::import(text).map(|i| i.catalog)] {
        let Ok(catalog) = parsed else { continue };
        let again = PriceCatalog::from_json(&catalog.to_json()).expect("own output parses");
        assert_eq!(again, catalog);
        let usage = Usage { input: 1234, cache_read: 99, output: 77, reasoning: 5, image_input: 3, web_search: 1, ..Usage::default() };
        let more = Usage { images: 1, cache_write_12h: 10, cache_read_audio: 4, ..usage };
        // Monday 00:30 and Monday noon UTC: inside and outside typical off-peak hours.
        let times = [Utc.with_ymd_and_hms(2026, 6, 1, 0, 30, 0).unwrap(), Utc.with_ymd_and_hms(2026, 6, 1, 12, 0, 0).unwrap()];
        for model in catalog.models().iter().take(8) {
            for (tier, region, at, usage) in ServiceTier::ALL.into_iter().flat_map(|t| {
                [Region::Global, Region::Us, Region::Regional].into_iter().flat_map(move |r| {
                    times.into_iter().flat_map(move |at| [(t, r, at, usage), (t, r, at, more)])
                })
            }) {
                if let Ok(cost) = catalog.cost(&model.id, &usage, at, Terms::new(tier).with_region(region)) {
                    let sum = cost.lines().iter().fold(rust_decimal::Decimal::ZERO, |s, l| s + l.cost);
                    assert_eq!(sum, cost.total);
                    assert!(cost.lines().iter().all(|l| l.cost == rust_decimal::Decimal::from(l.tokens) * l.rate));
                    // Never a silent zero: a zero cost is only ever a free entry's.
                    if cost.total.is_zero() {
                        assert!(model.window_at(at).unwrap().other_unit().is_none());
                    }
                }
            }
        }
    }
});
