//! GitHub's secret scanning intake: the alert list, the signature header and GitHub's key document. Parsing never
//! panics; a parsed list is within its bounds and answers one finding per token, in order; a real signature over
//! other bytes, or named by another key id, never verifies.
#![no_main]

use std::sync::OnceLock;

use base64::Engine;
use keymeter::leaks::github::{self, PublicKeys};
use keymeter::leaks::{Finding, Label, MAX_TOKENS};
use libfuzzer_sys::fuzz_target;
use p256::ecdsa::{DerSignature, SigningKey, signature::Signer};
use p256::pkcs8::{EncodePublicKey, LineEnding};

/// GitHub's key document with one fixed key, and that key's signature over `[]` (base64 of DER).
fn fixture() -> &'static (PublicKeys, String) {
    static FIXTURE: OnceLock<(PublicKeys, String)> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let signer = SigningKey::from_slice(&[7u8; 32]).unwrap();
        let pem = signer.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
        let doc = serde_json::json!({"public_keys": [{"key_identifier": "fuzz-key", "key": pem, "is_current": true}]});
        let keys = PublicKeys::from_json(&doc.to_string()).unwrap();
        let signature: DerSignature = signer.sign(b"[]");
        let signed = base64::engine::general_purpose::STANDARD.encode(signature.as_bytes());
        keys.verify("fuzz-key", &signed, b"[]").unwrap();
        assert!(keys.verify("other", &signed, b"[]").is_err());
        (keys, signed)
    })
}

fuzz_target!(|data: &[u8]| {
    let (keys, signed_empty) = fixture();
    if let Ok(reports) = github::parse_alerts(data) {
        assert!(reports.len() <= MAX_TOKENS);
        let findings: Vec<Finding> = reports
            .iter()
            .map(|r| Finding {
                token: r.token.clone(),
                token_type: r.token_type.clone(),
                label: Label::FalsePositive,
                key_id: None,
                revoked: false,
            })
            .collect();
        let answer = github::answer(&findings);
        assert_eq!(answer.as_array().unwrap().len(), reports.len());
    }
    if let Ok(text) = std::str::from_utf8(data) {
        // As a key document and as a signature header: errors, never panics.
        let _ = PublicKeys::from_json(text);
        let _ = keys.verify("fuzz-key", text, b"[]");
    }
    if data != b"[]" {
        assert!(keys.verify("fuzz-key", signed_empty, data).is_err());
    }
});
