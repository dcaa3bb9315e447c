//! Vault decryption of arbitrary bytes: a typed error, never a panic; only what the vault sealed opens.
#![no_main]

use std::str::FromStr;
use std::sync::OnceLock;

use keymeter::credentials::{CredentialScope, MasterKey, MasterKeyRing, Provider, SealedCredential, Vault};
use libfuzzer_sys::fuzz_target;
use secrecy::ExposeSecret;

fn vault() -> &'static Vault {
    static VAULT: OnceLock<Vault> = OnceLock::new();
    VAULT.get_or_init(|| {
        let key = MasterKey::generate("k1", &keymeter::random::SeededRandom::new(5)).expect("key");
        Vault::new(MasterKeyRing::new(vec![key]).expect("ring"))
    })
}

fuzz_target!(|data: &[u8]| {
    let scope = CredentialScope::user("fuzz").expect("owner");
    let provider = Provider::anthropic();
    if let Ok(text) = std::str::from_utf8(data)
        && let Ok(sealed) = SealedCredential::from_str(text)
    {
        assert_eq!(SealedCredential::from_str(&sealed.to_text()).expect("reparse"), sealed);
        // Forged input practically never authenticates; if it did, it would have to be a real seal.
        if let Ok(plain) = vault().open(&scope, &provider, &sealed) {
            let again = vault().seal(&scope, &provider, plain.expose_secret()).expect("seal");
            assert_eq!(vault().open(&scope, &provider, &again).expect("open").expose_secret(), plain.expose_secret());
        }
    }
    // Round trip of the input itself as a plaintext, bound to its place.
    let plain = String::from_utf8_lossy(data);
    let sealed = vault().seal(&scope, &provider, &plain).expect("seal");
    let parsed = SealedCredential::from_str(&sealed.to_text());
    if plain.len() + 16 <= 4096 {
        let parsed = parsed.expect("own output parses");
        assert_eq!(vault().open(&scope, &provider, &parsed).expect("open").expose_secret(), plain.as_ref());
        assert!(vault().open(&CredentialScope::System, &provider, &parsed).is_err());
    }
});
