//! Token parsing: never panics; whatever parses has a correct checksum and re-assembles to the input; a token
//! generated from fuzz-chosen parts parses back to those parts.
#![no_main]

use keymeter::keys::token::{self, KeyEnv};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(parsed) = token::parse(text) {
        // Accepted tokens are exactly of the documented shape.
        assert!(token::is_valid_prefix(parsed.prefix));
        assert_eq!(parsed.id.len(), token::ID_LEN);
        let body = &text.as_bytes()[..text.len() - token::CHECKSUM_LEN];
        assert_eq!(&token::checksum(body)[..], &text.as_bytes()[text.len() - token::CHECKSUM_LEN..]);
        let rebuilt_head = format!("{}_{}_{}_", parsed.prefix, parsed.env, parsed.id);
        assert!(text.starts_with(&rebuilt_head));
        assert_eq!(text.len(), rebuilt_head.len() + token::SECRET_LEN + token::CHECKSUM_LEN);
        // Flipping any one character of an accepted token makes it rejected.
        let i = usize::from(data[0]) % text.len();
        let mut typo = text.as_bytes().to_vec();
        typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
        if let Ok(typo) = std::str::from_utf8(&typo) {
            assert!(token::parse(typo).is_err());
        }
    }
    // Round trip: build a token from the input's bytes as the "random" stream.
    let random = keymeter::random::SeededRandom::new(data.iter().fold(0u64, |h, &b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    let env = if data.first().is_some_and(|b| b & 1 == 1) { KeyEnv::Live } else { KeyEnv::Test };
    let prefix: String = text.chars().filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit()).take(16).collect();
    match token::generate(&prefix, env, &random) {
        Ok((id, tok)) => {
            let tok = secrecy::ExposeSecret::expose_secret(&tok);
            let parsed = token::parse(tok).expect("generated tokens parse");
            assert_eq!((parsed.prefix, parsed.env, parsed.id), (prefix.as_str(), env, id.as_str()));
        }
        Err(_) => assert!(!token::is_valid_prefix(&prefix)),
    }
});
