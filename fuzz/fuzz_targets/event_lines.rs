//! `usage import` input: never panics; every event it accepts validates, and its JSON line and CSV record are
//! written without error, the JSON line reading back as the same event.
#![no_main]

use std::io::Cursor;

use keymeter::ledger::UsageEvent;
use keymeter::ledger::transfer::{EventLines, csv_line, json_line};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for event in EventLines::new(Cursor::new(data)).take(64) {
        let Ok(event) = event else { continue };
        event.validate().expect("accepted events are valid");
        let line = json_line(&event).expect("serialises");
        let again: UsageEvent = line.parse().expect("own line parses");
        assert_eq!(again, event);
        let _ = csv_line(&event);
    }
});
