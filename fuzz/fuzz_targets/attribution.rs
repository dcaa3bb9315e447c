//! Attribution: a request's `x-keymeter-tags` value and an event's tags and end user. Parsing never panics; a
//! parsed list is valid, joined again it parses the same; an event carrying it validates, and its JSON line reads
//! back the same.
#![no_main]

use keymeter::ledger::UsageEvent;
use keymeter::ledger::event::{check_tags, parse_tags};
use keymeter::pricing::Usage;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (tags_text, end_user) = text.split_once('\n').unwrap_or((text, ""));
    let Ok(tags) = parse_tags(tags_text) else { return };
    check_tags(&tags).unwrap();
    assert_eq!(parse_tags(&tags.join(",")).unwrap(), tags);
    let at = chrono::DateTime::from_timestamp(1_772_366_400, 0).unwrap();
    let mut event = UsageEvent::new(
        Some("req-1"),
        at,
        "alice",
        "openai",
        "gpt-4o",
        Usage::default(),
        rust_decimal::Decimal::ZERO,
        &keymeter::random::SeededRandom::new(1),
    )
    .unwrap()
    .tags(tags);
    if !end_user.is_empty() {
        event = event.end_user(end_user);
    }
    if event.validate().is_ok() {
        let line = keymeter::ledger::transfer::json_line(&event).unwrap();
        assert_eq!(line.parse::<UsageEvent>().unwrap(), event);
    }
});
