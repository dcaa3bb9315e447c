//! Property tests of the token format: round trips, and every single-character typo or truncation is rejected.

use keymeter::keys::token::{self, KeyEnv};
use keymeter::random::SeededRandom;
use proptest::prelude::*;
use secrecy::ExposeSecret;

const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-";

fn prefix() -> impl Strategy<Value = String> {
    "[a-z0-9]{1,16}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_tokens_round_trip(seed in any::<u64>(), prefix in prefix(), live in any::<bool>()) {
        let env = if live { KeyEnv::Live } else { KeyEnv::Test };
        let (id, token) = token::generate(&prefix, env, &SeededRandom::new(seed)).unwrap();
        let text = token.expose_secret();
        let parsed = token::parse(text).unwrap();
        prop_assert_eq!(parsed.prefix, prefix.as_str());
        prop_assert_eq!(parsed.env, env);
        prop_assert_eq!(parsed.id, id.as_str());
        prop_assert_eq!(text.len(), prefix.len() + env.as_str().len() + 3 + 12 + 32 + 6);
        prop_assert!(text.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'));
        let hint = token::display_hint(text);
        let expected = format!("{prefix}_{env}_{}", &id[..4]);
        prop_assert!(hint.starts_with(&expected));
        prop_assert!(!hint.contains(&text[text.len() - 38..text.len() - 6]));
    }

    #[test]
    fn every_single_character_typo_is_rejected(seed in any::<u64>(), pos in any::<prop::sample::Index>(),
                                               with in prop::sample::select(ALPHABET.to_vec())) {
        let (_, token) = token::generate("km", KeyEnv::Live, &SeededRandom::new(seed)).unwrap();
        let mut bytes = token.expose_secret().as_bytes().to_vec();
        let i = pos.index(bytes.len());
        prop_assume!(bytes[i] != with);
        bytes[i] = with;
        let typo = String::from_utf8(bytes).unwrap();
        prop_assert!(token::parse(&typo).is_err(), "accepted a typo at {}", i);
    }

    #[test]
    fn truncations_and_extensions_are_rejected(seed in any::<u64>(), cut in 1usize..50, extra in "[A-Za-z0-9]{1,4}") {
        let (_, token) = token::generate("km", KeyEnv::Test, &SeededRandom::new(seed)).unwrap();
        let text = token.expose_secret();
        prop_assert!(token::parse(&text[..text.len() - cut.min(text.len())]).is_err());
        let longer = format!("{text}{extra}");
        prop_assert!(token::parse(&longer).is_err());
    }

    #[test]
    fn parse_never_panics_and_accepts_only_checksummed_tokens(s in "\\PC{0,80}") {
        if let Ok(p) = token::parse(&s) {
            let body = &s.as_bytes()[..s.len() - token::CHECKSUM_LEN];
            prop_assert_eq!(&token::checksum(body)[..], &s.as_bytes()[s.len() - token::CHECKSUM_LEN..]);
            prop_assert_eq!(p.id.len(), token::ID_LEN);
        }
    }
}

#[test]
fn exhaustive_single_substitutions_of_one_token() {
    let (_, token) = token::generate("km", KeyEnv::Live, &SeededRandom::new(42)).unwrap();
    let text = token.expose_secret().as_bytes().to_vec();
    for i in 0..text.len() {
        for &c in ALPHABET {
            if c == text[i] {
                continue;
            }
            let mut typo = text.clone();
            typo[i] = c;
            let typo = String::from_utf8(typo).unwrap();
            assert!(token::parse(&typo).is_err(), "accepted {c:?} at {i}");
        }
    }
    // Adjacent transpositions, the other common typo.
    for i in 0..text.len() - 1 {
        if text[i] == text[i + 1] {
            continue;
        }
        let mut typo = text.clone();
        typo.swap(i, i + 1);
        assert!(
            token::parse(std::str::from_utf8(&typo).unwrap()).is_err(),
            "accepted a swap at {i}"
        );
    }
}

#[test]
fn base62_sampling_is_unbiased_enough() {
    // 62,000 draws: every character should appear close to 1,000 times (a modulo bias would skew the first 8).
    let mut counts = [0u32; 62];
    let mut buf = vec![0u8; 62_000];
    keymeter::random::fill_base62(&SeededRandom::new(9), &mut buf).unwrap();
    for b in buf {
        let i = ALPHABET.iter().position(|&c| c == b).unwrap();
        counts[i] += 1;
    }
    for (i, n) in counts.iter().enumerate() {
        assert!(
            (850..1150).contains(n),
            "character {} drawn {n} times",
            ALPHABET[i] as char
        );
    }
}
