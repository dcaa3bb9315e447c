//! Key-ring environment values (`KEYMETER_PEPPER`, `KEYMETER_MASTER_KEYS`): parsing never panics, an error never
//! echoes any piece of the value (a swapped `base64:id` entry must not print the key), and whatever parses writes
//! back to a value that parses to the same ids.
#![no_main]

use keymeter::credentials::MasterKeyRing;
use keymeter::keys::PepperRing;
use keymeter::secret::ExposeSecret;
use libfuzzer_sys::fuzz_target;

fn check_error(value: &str, message: &str) {
    // No run of 12 or more characters of the value reaches the message.
    let chars: Vec<char> = value.chars().collect();
    for window in chars.windows(12) {
        let piece: String = window.iter().collect();
        if piece.chars().all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '/') {
            assert!(!message.contains(&piece), "{message:?} echoes {piece:?}");
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(value) = std::str::from_utf8(data) else { return };
    match PepperRing::from_env_value(value) {
        Ok(ring) => {
            let again = PepperRing::from_env_value(ring.to_env_value().expose_secret()).expect("round trip");
            let ids = |r: &PepperRing| r.iter().map(|p| p.id().to_owned()).collect::<Vec<_>>();
            assert_eq!(ids(&ring), ids(&again));
        }
        Err(e) => check_error(value, &e.to_string()),
    }
    match MasterKeyRing::from_env_value(value) {
        Ok(ring) => {
            let again = MasterKeyRing::from_env_value(ring.to_env_value().expose_secret()).expect("round trip");
            assert_eq!(ring.active().id(), again.active().id());
        }
        Err(e) => check_error(value, &e.to_string()),
    }
});
