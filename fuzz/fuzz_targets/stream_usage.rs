//! Stream accumulators: any sequence of SSE payloads (one per input line) never panics, a bad payload leaves the
//! usage already seen untouched, and `finish` agrees with `usage`.
#![no_main]

use keymeter::pricing::{StreamUsage, UsageFormat};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    for format in [UsageFormat::OpenAi, UsageFormat::Anthropic, UsageFormat::Gemini] {
        let mut stream = StreamUsage::new(format);
        for line in text.lines() {
            let before = stream.usage().ok().flatten();
            if stream.push(line).is_err() {
                assert_eq!(stream.usage().ok().flatten(), before, "a refused payload changed the usage");
            }
        }
        let seen = stream.usage();
        match stream.finish() {
            Ok(usage) => assert_eq!(seen.ok().flatten(), Some(usage)),
            Err(_) => assert!(!matches!(seen, Ok(Some(_)))),
        }
    }
});
