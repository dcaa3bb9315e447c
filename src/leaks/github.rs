//! GitHub's secret scanning partner program: the signed alert list GitHub posts when it finds keymeter tokens
//! in public, and the answer it expects.
//!
//! GitHub signs the raw body with ECDSA P-256 over SHA-256; the request names the key
//! (`Github-Public-Key-Identifier`) and carries the base64 DER signature (`Github-Public-Key-Signature`).
//! The public keys are GitHub's document `{"public_keys": [{"key_identifier", "key" (PEM), "is_current"}]}`,
//! from <https://api.github.com/meta/public_keys/secret_scanning> or a file ([`PublicKeys`]).
//!
//! ```
//! use keymeter::leaks::github::{self, PublicKeys};
//! use p256::ecdsa::{DerSignature, SigningKey, signature::Signer};
//! use p256::pkcs8::{EncodePublicKey, LineEnding};
//! use base64::Engine;
//!
//! let signer = SigningKey::from_slice(&[7u8; 32]).unwrap();
//! let pem = signer.verifying_key().to_public_key_pem(LineEnding::LF).unwrap();
//! let keys = PublicKeys::from_json(&serde_json::json!({
//!     "public_keys": [{"key_identifier": "k1", "key": pem, "is_current": true}]
//! }).to_string())?;
//! let body = br#"[{"token":"km_live_x","type":"keymeter_api_key","url":"https://github.com/a/b","source":"content"}]"#;
//! let signature: DerSignature = signer.sign(body);
//! let header = base64::engine::general_purpose::STANDARD.encode(signature.as_bytes());
//! keys.verify("k1", &header, body)?;
//! assert!(keys.verify("k1", &header, b"[]").is_err());
//! assert_eq!(github::parse_alerts(body)?.len(), 1);
//! # Ok::<(), keymeter::Error>(())
//! ```

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use p256::ecdsa::{DerSignature, VerifyingKey, signature::Verifier};
use p256::pkcs8::DecodePublicKey;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Finding, LeakReport, MAX_TOKENS};
use crate::error::{Error, Result};

/// The header naming GitHub's signing key.
pub const KEY_ID_HEADER: &str = "github-public-key-identifier";
/// The header carrying the base64 DER signature of the body.
pub const SIGNATURE_HEADER: &str = "github-public-key-signature";
/// Where GitHub publishes its secret scanning keys.
pub const KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";
/// The largest alert list accepted.
pub const MAX_BODY: usize = 1 << 20;
/// The longest token accepted in a report (keymeter's are 57 characters with a short prefix).
const MAX_TOKEN_LEN: usize = 512;

/// GitHub's public keys, by identifier.
#[derive(Clone)]
pub struct PublicKeys {
    keys: Vec<(String, VerifyingKey)>,
}

impl std::fmt::Debug for PublicKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.keys.iter().map(|(id, _)| id))
            .finish()
    }
}

#[derive(Deserialize)]
struct KeyDocument {
    public_keys: Vec<KeyEntry>,
}

#[derive(Deserialize)]
struct KeyEntry {
    key_identifier: String,
    key: String,
}

/// Why a request was refused before any token was looked at.
fn refused(reason: &str) -> Error {
    Error::invalid("secret scanning signature", reason.to_string())
}

impl PublicKeys {
    /// Reads GitHub's key document.
    ///
    /// # Errors
    /// [`Error::Config`] for a document that does not parse or a key that is not a P-256 public key in PEM.
    pub fn from_json(text: &str) -> Result<Self> {
        let doc: KeyDocument = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("GitHub's public keys do not parse: {e}")))?;
        let keys = doc
            .public_keys
            .into_iter()
            .map(|k| {
                VerifyingKey::from_public_key_pem(k.key.trim())
                    .map(|v| (k.key_identifier.clone(), v))
                    .map_err(|_| {
                        Error::Config(format!(
                            "GitHub's public key {:?} is not a P-256 key in PEM",
                            k.key_identifier.chars().take(80).collect::<String>()
                        ))
                    })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(PublicKeys { keys })
    }

    /// Whether a key of this identifier is known.
    pub fn knows(&self, key_id: &str) -> bool {
        self.keys.iter().any(|(id, _)| id == key_id)
    }

    /// Checks `signature_b64` (base64 of a DER ECDSA signature) over `body` under the key `key_id`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an unknown key, a signature that does not decode, or one that does not verify.
    pub fn verify(&self, key_id: &str, signature_b64: &str, body: &[u8]) -> Result<()> {
        let key = self
            .keys
            .iter()
            .find(|(id, _)| id == key_id)
            .map(|(_, k)| k)
            .ok_or_else(|| refused("unknown key identifier"))?;
        let der = base64::engine::general_purpose::STANDARD
            .decode(signature_b64.trim())
            .map_err(|_| refused("not base64"))?;
        let signature =
            DerSignature::from_bytes(&der).map_err(|_| refused("not a DER signature"))?;
        key.verify(body, &signature)
            .map_err(|_| refused("does not verify"))
    }
}

/// Where GitHub's keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file holding GitHub's document.
    File(PathBuf),
    /// A URL serving it (GitHub's own by default).
    Url(String),
}

impl std::str::FromStr for KeySource {
    type Err = Error;

    /// `https://…` (or `http://…`) is a URL; anything else a file path.
    fn from_str(s: &str) -> Result<Self> {
        let s = s.trim();
        if s.is_empty() {
            return Err(Error::Config("KEYMETER_GITHUB_KEYS is empty".into()));
        }
        Ok(if s.starts_with("https://") || s.starts_with("http://") {
            KeySource::Url(s.to_string())
        } else {
            KeySource::File(s.into())
        })
    }
}

impl KeySource {
    /// Reads the keys now.
    ///
    /// # Errors
    /// [`Error::Config`] when the file or URL cannot be read or does not hold GitHub's document.
    pub async fn load(&self) -> Result<PublicKeys> {
        let text = match self {
            KeySource::File(path) => std::fs::read_to_string(path).map_err(|e| {
                Error::Config(format!("GitHub's public keys ({}): {e}", path.display()))
            })?,
            KeySource::Url(url) => {
                let answer = crate::http::client(Duration::from_secs(10))?
                    .get(url)
                    .header("accept", "application/json")
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status)
                    .map_err(|e| {
                        Error::Config(format!("GitHub's public keys: {}", e.without_url()))
                    })?;
                answer.text().await.map_err(|e| {
                    Error::Config(format!("GitHub's public keys: {}", e.without_url()))
                })?
            }
        };
        PublicKeys::from_json(&text)
    }
}

/// GitHub's keys as last loaded from a [`KeySource`], loaded again when a request names a key not among them
/// (GitHub rotates its keys), at most once a minute.
#[derive(Debug)]
pub struct KeyCache {
    source: KeySource,
    state: tokio::sync::Mutex<(Option<PublicKeys>, Option<Instant>)>,
    loads: Mutex<u64>,
}

impl KeyCache {
    /// A cache of `source`'s keys, loaded at first use.
    pub fn new(source: KeySource) -> Self {
        KeyCache {
            source,
            state: tokio::sync::Mutex::new((None, None)),
            loads: Mutex::new(0),
        }
    }

    /// How many times the keys were loaded.
    pub fn loads(&self) -> u64 {
        *self.loads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Verifies a request's signature, loading the keys first if they are not loaded or lack `key_id`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a signature that fails ([`PublicKeys::verify`]); [`Error::Config`] when the keys
    /// cannot be loaded.
    pub async fn verify(&self, key_id: &str, signature_b64: &str, body: &[u8]) -> Result<()> {
        let mut state = self.state.lock().await;
        let stale = match &state.0 {
            None => true,
            Some(keys) => {
                !keys.knows(key_id)
                    && state
                        .1
                        .is_none_or(|at| at.elapsed() >= Duration::from_secs(60))
            }
        };
        if stale {
            let loaded = self.source.load().await;
            state.1 = Some(Instant::now());
            match loaded {
                Ok(keys) => {
                    state.0 = Some(keys);
                    *self.loads.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                }
                Err(e) if state.0.is_none() => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "could not reload GitHub's public keys; keeping the last ones")
                }
            }
        }
        match &state.0 {
            Some(keys) => keys.verify(key_id, signature_b64, body),
            None => Err(Error::Config("GitHub's public keys are not loaded".into())),
        }
    }
}

#[derive(Deserialize)]
struct AlertEntry {
    token: String,
    #[serde(rename = "type", default)]
    token_type: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    source: Option<String>,
}

/// Parses GitHub's alert list `[{"token", "type", "url", "source"}]` (at most [`MAX_BODY`] bytes and
/// [`MAX_TOKENS`] entries; other fields ignored).
///
/// # Errors
/// [`Error::InvalidInput`] for a body too large, not such a list, too many entries or a token too long.
pub fn parse_alerts(body: &[u8]) -> Result<Vec<LeakReport>> {
    if body.len() > MAX_BODY {
        return Err(Error::invalid(
            "secret scanning alerts",
            "larger than 1 MiB",
        ));
    }
    let entries: Vec<AlertEntry> = serde_json::from_slice(body).map_err(|e| {
        Error::invalid(
            "secret scanning alerts",
            format!(
                "not a list of {{\"token\", \"type\", \"url\", \"source\"}}: {}",
                e.classify_text()
            ),
        )
    })?;
    if entries.len() > MAX_TOKENS {
        return Err(Error::invalid(
            "secret scanning alerts",
            format!("more than {MAX_TOKENS} entries"),
        ));
    }
    entries
        .into_iter()
        .map(|e| {
            if e.token.len() > MAX_TOKEN_LEN {
                return Err(Error::invalid(
                    "secret scanning alerts",
                    format!("a token longer than {MAX_TOKEN_LEN} bytes"),
                ));
            }
            let clip = |s: String| s.chars().take(2048).collect::<String>();
            Ok(LeakReport {
                token: SecretString::from(e.token),
                token_type: e.token_type.chars().take(128).collect(),
                url: e.url.map(clip),
                source: e.source.map(clip),
            })
        })
        .collect()
}

/// GitHub's answer: `[{"token_raw", "token_type", "label"}]`, one per finding, in order.
pub fn answer(findings: &[Finding]) -> Value {
    Value::Array(
        findings
            .iter()
            .map(|f| {
                json!({
                    "token_raw": f.token.expose_secret(),
                    "token_type": f.token_type,
                    "label": f.label,
                })
            })
            .collect(),
    )
}

/// What a serde error says, without echoing input.
trait Classify {
    fn classify_text(&self) -> &'static str;
}

impl Classify for serde_json::Error {
    fn classify_text(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "unreadable",
            serde_json::error::Category::Syntax => "invalid JSON",
            serde_json::error::Category::Data => "wrong fields",
            serde_json::error::Category::Eof => "truncated",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::{SigningKey, signature::Signer};
    use p256::pkcs8::{EncodePublicKey, LineEnding};

    fn keys(signer: &SigningKey, id: &str) -> PublicKeys {
        let pem = signer
            .verifying_key()
            .to_public_key_pem(LineEnding::LF)
            .unwrap();
        PublicKeys::from_json(
            &json!({"public_keys": [{"key_identifier": id, "key": pem, "is_current": true}]})
                .to_string(),
        )
        .unwrap()
    }

    fn sign(signer: &SigningKey, body: &[u8]) -> String {
        let sig: DerSignature = signer.sign(body);
        base64::engine::general_purpose::STANDARD.encode(sig.as_bytes())
    }

    #[test]
    fn only_the_named_key_over_the_exact_body_verifies() {
        let (a, b) = (
            SigningKey::from_slice(&[1u8; 32]).unwrap(),
            SigningKey::from_slice(&[2u8; 32]).unwrap(),
        );
        let keys = keys(&a, "ka");
        let body = b"[]";
        keys.verify("ka", &sign(&a, body), body).unwrap();
        assert!(
            keys.verify("kb", &sign(&a, body), body).is_err(),
            "unknown id"
        );
        assert!(
            keys.verify("ka", &sign(&b, body), body).is_err(),
            "another key"
        );
        assert!(
            keys.verify("ka", &sign(&a, body), b"[ ]").is_err(),
            "another body"
        );
        assert!(keys.verify("ka", "!!", body).is_err());
        assert!(keys.verify("ka", "AAAA", body).is_err());
        assert!(PublicKeys::from_json("{}").is_err());
        assert!(
            PublicKeys::from_json(r#"{"public_keys":[{"key_identifier":"x","key":"-----BEGIN PUBLIC KEY-----\nAA==\n-----END PUBLIC KEY-----"}]}"#)
                .is_err()
        );
    }

    #[test]
    fn alert_lists_are_bounded_and_answers_echo_in_order() {
        let body = br#"[{"token":"a","type":"t","url":"u","source":"s","extra":1},{"token":"b"}]"#;
        let reports = parse_alerts(body).unwrap();
        assert_eq!(reports.len(), 2);
        assert_eq!(reports[0].url.as_deref(), Some("u"));
        assert_eq!(reports[1].token_type, "");
        assert!(parse_alerts(b"{}").is_err());
        assert!(
            parse_alerts(b"[{\"type\":\"t\"}]").is_err(),
            "token required"
        );
        let many = format!("[{}]", vec![r#"{"token":"x"}"#; MAX_TOKENS + 1].join(","));
        assert!(parse_alerts(many.as_bytes()).is_err());
        let long = format!(r#"[{{"token":"{}"}}]"#, "x".repeat(600));
        assert!(parse_alerts(long.as_bytes()).is_err());
        let findings = vec![Finding {
            token: SecretString::from("km_live_x"),
            token_type: "keymeter_api_key".into(),
            label: super::super::Label::FalsePositive,
            key_id: None,
            revoked: false,
        }];
        assert_eq!(
            answer(&findings),
            json!([{"token_raw": "km_live_x", "token_type": "keymeter_api_key", "label": "false_positive"}])
        );
    }
}
