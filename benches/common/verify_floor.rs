//! The least work any correct verify of a generated key must do (shared by `verify` and `verify_stores`).

use std::collections::HashMap;
use std::hint::black_box;

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use keymeter::keys::IssuedKey;
use secrecy::ExposeSecret;
use sha2::Sha256;

/// What the floor keeps per key: the digest and the fields the checks read.
pub struct FloorRecord {
    digest: [u8; 32],
    revoked: bool,
    disabled: bool,
    expires_at: Option<DateTime<Utc>>,
    scopes: Vec<String>,
}

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

fn base62_value(b: u8) -> Option<u64> {
    BASE62.iter().position(|&c| c == b).map(|v| v as u64)
}

/// The least work of a verify: shape + checksum, lookup, keyed HMAC, constant-time compare, status checks.
pub fn verify(
    token: &str,
    mac: &Hmac<Sha256>,
    index: &HashMap<String, FloorRecord>,
    need: &str,
) -> bool {
    let b = token.as_bytes();
    // km_live_ + 12 id + _ + 32 secret + 6 checksum
    if b.len() != 59
        || &b[..3] != b"km_"
        || !(&b[3..8] == b"live_" || &b[3..8] == b"test_")
        || b[20] != b'_'
    {
        return false;
    }
    let mut expected = 0u64;
    for &c in &b[53..] {
        match base62_value(c) {
            Some(v) => expected = expected * 62 + v,
            None => return false,
        }
    }
    if expected != u64::from(crc32fast::hash(&b[..53])) {
        return false;
    }
    let Some(record) = index.get(&token[8..20]) else {
        return false;
    };
    let mut mac = mac.clone();
    mac.update(b);
    let digest: [u8; 32] = mac.finalize().into_bytes().into();
    let diff = digest
        .iter()
        .zip(&record.digest)
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    if black_box(diff) != 0 || record.revoked || record.disabled {
        return false;
    }
    if record.expires_at.is_some_and(|at| at <= Utc::now()) {
        return false;
    }
    record.scopes.iter().any(|s| s == need || s == "*")
}

/// The floor's index of `issued`: a decoded digest and the checked fields per key, keyed by id.
pub fn index(mac: &Hmac<Sha256>, issued: &[IssuedKey]) -> HashMap<String, FloorRecord> {
    issued
        .iter()
        .map(|k| {
            let r = &k.record;
            let mut m = mac.clone();
            m.update(k.token.expose_secret().as_bytes());
            let record = FloorRecord {
                digest: m.finalize().into_bytes().into(),
                revoked: r.revoked_at.is_some(),
                disabled: r.disabled,
                expires_at: r.expires_at,
                scopes: r.scopes.iter().map(|s| s.as_str().to_owned()).collect(),
            };
            (r.id.clone(), record)
        })
        .collect()
}
