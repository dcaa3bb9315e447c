//! Hash strings: parsing never panics; whatever parses re-serialises to itself (sha256 lower-cased) and can be
//! verified without panicking; a hash made by keymeter parses back and verifies its own token only.
#![no_main]

use std::str::FromStr;
use std::sync::OnceLock;

use keymeter::keys::hash::{Argon2Config, HashScheme, KeyHash, KeyHasher, Pepper, PepperRing};
use libfuzzer_sys::fuzz_target;

fn hasher() -> &'static KeyHasher {
    static HASHER: OnceLock<KeyHasher> = OnceLock::new();
    HASHER.get_or_init(|| {
        let pepper = Pepper::generate("fuzz", &keymeter::random::SeededRandom::new(1)).expect("pepper");
        KeyHasher::new(PepperRing::new(vec![pepper]).expect("ring"))
            .with_argon2(Argon2Config { m_cost: 8, t_cost: 1, p_cost: 1 })
            .expect("params")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let (hash_text, token) = text.split_once('\n').unwrap_or((text, "token"));
    if let Ok(hash) = KeyHash::from_str(hash_text) {
        let expected = if hash.scheme() == HashScheme::Sha256 { hash_text.to_ascii_lowercase() } else { hash_text.to_owned() };
        assert_eq!(hash.as_str(), expected);
        assert_eq!(KeyHash::from_str(hash.as_str()).expect("reparse"), hash);
        // Foreign argon2/bcrypt strings may ask for enormous costs; only verify the cheap schemes and small KDFs.
        let cheap = match hash.scheme() {
            HashScheme::HmacSha256 | HashScheme::Sha256 => true,
            HashScheme::Argon2id => hash_text.contains("m=8,t=1,") || hash_text.contains("m=16,t=1,"),
            HashScheme::Bcrypt => hash_text.starts_with("$2b$04$") || hash_text.starts_with("$2a$04$"),
        };
        if cheap {
            let _ = hasher().verify(token.as_bytes(), &hash);
        }
    }
    let made = hasher().hash_hmac(token.as_bytes());
    let parsed = KeyHash::from_str(made.as_str()).expect("own hmac parses");
    assert!(hasher().verify(token.as_bytes(), &parsed).expect("verify"));
    assert!(!hasher().verify(format!("{token}x").as_bytes(), &parsed).expect("verify"));
    let digest = KeyHasher::sha256(token.as_bytes());
    assert!(hasher().verify(token.as_bytes(), &KeyHash::from_str(digest.as_str()).expect("own sha256 parses")).expect("verify"));
});
