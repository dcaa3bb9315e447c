//! Header parsing: never panics; an extracted credential is a non-empty run of visible ASCII inside the value,
//! and wrapping any such credential in `Bearer` gives it back.
#![no_main]

use keymeter::keys::credential_from_header;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for name in ["Authorization", "x-api-key", "X-Api-Key", "cookie"] {
        if let Ok(token) = credential_from_header(name, text) {
            assert!(!token.is_empty());
            assert!(token.bytes().all(|b| b.is_ascii_graphic()));
            assert!(text.contains(token));
            assert_eq!(credential_from_header("authorization", &format!("Bearer {token}")), Ok(token));
            assert_eq!(credential_from_header("x-api-key", token), Ok(token));
        }
    }
});
