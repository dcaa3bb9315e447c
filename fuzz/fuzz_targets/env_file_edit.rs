//! `.env` editing: for any text dotenvy can parse, setting a variable either gives a text that parses to the
//! same variables with that one changed (and removing it again gives the same variables without it), or is
//! refused with an error; it never writes a file that reads differently. Common layouts must be editable.
#![no_main]

use keymeter::store::env_file::{parse, remove_var, set_var};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    // Input: "<value>\x01<file text>", name fixed to exercise both the replace and the append paths.
    let (value, file) = text.split_once('\u{1}').unwrap_or(("sk-fuzz", text));
    let Ok(before) = parse(file) else { return };
    for name in ["OPENAI_API_KEY", "FUZZ_NEW_VAR"] {
        match set_var(file, name, value) {
            Ok(updated) => {
                let after = parse(&updated).expect("the edited file parses");
                assert_eq!(after.get(name).map(|v| v.as_str()), Some(value), "{updated:?}");
                for (k, v) in before.iter().filter(|(k, _)| k.as_str() != name) {
                    assert_eq!(after.get(k).map(|v| v.as_str()), Some(v.as_str()), "{k} changed in {updated:?}");
                }
                if let Ok((removed, had)) = remove_var(&updated, name) {
                    assert!(had);
                    let gone = parse(&removed).expect("the file without the variable parses");
                    assert!(!gone.contains_key(name));
                }
            }
            Err(_) => {
                // Plain keys in a plain file are always editable.
                let plain_value = !value.is_empty() && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                let plain_file = file.lines().all(|l| {
                    l.is_empty() || l.starts_with("# ") || l.split_once('=').is_some_and(|(k, v)| {
                        !k.is_empty() && k.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    })
                });
                assert!(!(plain_value && plain_file), "refused a plain edit of {file:?}");
            }
        }
    }
});
