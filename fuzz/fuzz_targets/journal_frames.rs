//! Journal segments (DESIGN §13): decoding any bytes never panics, the readable prefix is a prefix, and every frame
//! it yields encodes back to the same bytes.
#![no_main]

use keymeter::ledger::journal::frame::{decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoded = decode(data);
    assert!(decoded.valid_len <= data.len());
    let mut again = Vec::with_capacity(decoded.valid_len);
    for (seq, record) in &decoded.records {
        again.extend(encode(*seq, record).expect("a decoded record encodes"));
    }
    // A version-1 (JSON) frame is written back as version 2, so compare what it decodes to, not the bytes.
    let redecoded = decode(&again);
    assert_eq!(redecoded.records, decoded.records);
    assert_eq!(redecoded.valid_len, again.len());
});
