//! Webhook signatures, Stripe's scheme: the header `keymeter-signature: t=<unix seconds>,v1=<hex>` where the hex
//! is HMAC-SHA-256 of `"<t>.<body>"` under the endpoint's secret. During a rotation a delivery carries one `v1`
//! per valid secret, so a receiver holding either verifies it. Receivers reject a timestamp older than
//! [`TOLERANCE`] (a replayed delivery).
//!
//! ```
//! use keymeter::alerts::signature::{self, SignatureError};
//! use keymeter::SecretString;
//!
//! let secret = SecretString::from("whsec_test");
//! let now = chrono::Utc::now();
//! let header = signature::sign(&[secret.clone()], now.timestamp(), b"{\"id\":\"alr_1\"}");
//! signature::verify(&header, b"{\"id\":\"alr_1\"}", &secret, now, signature::TOLERANCE)?;
//! assert_eq!(
//!     signature::verify(&header, b"{\"id\":\"alr_2\"}", &secret, now, signature::TOLERANCE),
//!     Err(SignatureError::Mismatch)
//! );
//! # Ok::<(), SignatureError>(())
//! ```

use chrono::{DateTime, Duration, Utc};
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The header a delivery's signature travels in.
pub const HEADER: &str = "keymeter-signature";

/// How old a signature's timestamp may be (and how far ahead of the receiver's clock) before it is refused.
pub const TOLERANCE: Duration = Duration::minutes(5);

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// The header is not `t=<unix>,v1=<hex>[,v1=<hex>…]`.
    #[error("malformed signature header")]
    Malformed,
    /// The timestamp is outside the tolerance.
    #[error("signature timestamp outside the tolerance ({age_seconds} s old)")]
    Stale {
        /// How old it is, in seconds (negative: from the future).
        age_seconds: i64,
    },
    /// No `v1` matches the body under the secret.
    #[error("no signature matches")]
    Mismatch,
}

fn mac(secret: &SecretString, timestamp: i64, body: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(secret.expose_secret().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The header value signing `body` at `timestamp` with each of `secrets`.
pub fn sign(secrets: &[SecretString], timestamp: i64, body: &[u8]) -> String {
    let mut header = format!("t={timestamp}");
    for secret in secrets {
        header.push_str(",v1=");
        header.push_str(&hex(&mac(secret, timestamp, body)));
    }
    header
}

/// Checks `header` against `body` under `secret` at `now`: what a receiver does.
///
/// # Errors
/// [`SignatureError`]: a malformed header, a timestamp outside `tolerance`, no matching `v1`.
pub fn verify(
    header: &str,
    body: &[u8],
    secret: &SecretString,
    now: DateTime<Utc>,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => {
                timestamp = Some(t.parse::<i64>().map_err(|_| SignatureError::Malformed)?);
            }
            Some(("v1", v)) => signatures.push(v),
            Some(_) => {} // other schemes: ignored, as Stripe's receivers do
            None => return Err(SignatureError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let age = now.timestamp().saturating_sub(timestamp);
    if age.unsigned_abs() > tolerance.num_seconds().unsigned_abs() {
        return Err(SignatureError::Stale { age_seconds: age });
    }
    let expected = hex(&mac(secret, timestamp, body));
    if signatures
        .iter()
        .any(|s| bool::from(s.as_bytes().ct_eq(expected.as_bytes())))
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_valid_secret_signs_and_nothing_else_verifies() {
        let (a, b) = (SecretString::from("whsec_a"), SecretString::from("whsec_b"));
        let now: DateTime<Utc> = "2026-12-03T00:00:00Z".parse().unwrap();
        let t = now.timestamp();
        let both = sign(&[a.clone(), b.clone()], t, b"body");
        assert_eq!(both.matches("v1=").count(), 2);
        verify(&both, b"body", &a, now, TOLERANCE).unwrap();
        verify(&both, b"body", &b, now, TOLERANCE).unwrap();
        let other = SecretString::from("whsec_c");
        assert_eq!(
            verify(&both, b"body", &other, now, TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(&both, b"bodY", &a, now, TOLERANCE),
            Err(SignatureError::Mismatch)
        );
        // Stripe's published example shape: t first, hex of 64 digits.
        let one = sign(std::slice::from_ref(&a), t, b"body");
        let v1 = one.split_once(",v1=").unwrap().1;
        assert!(v1.len() == 64 && v1.bytes().all(|c| c.is_ascii_hexdigit()));
        let late = now + Duration::minutes(6);
        assert!(matches!(
            verify(&one, b"body", &a, late, TOLERANCE),
            Err(SignatureError::Stale { age_seconds: 360 })
        ));
        for bad in ["", "t=x,v1=00", "v1=00", &format!("t={t}"), "t"] {
            assert_eq!(
                verify(bad, b"body", &a, now, TOLERANCE),
                Err(SignatureError::Malformed),
                "{bad}"
            );
        }
        // A known vector (Python's hmac: HMAC-SHA-256 of "1700000000.{}" under "whsec_a"), so the scheme cannot
        // drift.
        assert_eq!(
            sign(&[a], 1_700_000_000, b"{}"),
            "t=1700000000,v1=04339dc4f01d6541e8d3b7e4bd93cd2d4f680ccb28592270900b08e49cc09e57"
        );
    }
}
