//! The token format of generated keys: `{prefix}_{env}_{id}_{secret}{checksum}`.
//!
//! - `prefix`: 1–16 of `[a-z0-9]` (default `km`);
//! - `env`: `live` or `test`;
//! - `id`: 12 base62 characters, public, the lookup index;
//! - `secret`: 32 base62 characters from the CSPRNG (about 190 bits);
//! - `checksum`: CRC-32 (IEEE) of every byte before it, in base62 (`0-9A-Za-z`), left-padded with `0` to 6.
//!
//! A typo or truncation fails the checksum offline, before any store is touched.
//!
//! ```
//! use keymeter::keys::token::{generate, parse, KeyEnv};
//! use keymeter::random::OsRandom;
//! use secrecy::ExposeSecret;
//!
//! let (id, token) = generate("km", KeyEnv::Live, &OsRandom).unwrap();
//! let parsed = parse(token.expose_secret()).unwrap();
//! assert_eq!(parsed.id, id);
//! assert_eq!(parsed.env, KeyEnv::Live);
//! ```

use std::fmt;
use std::str::FromStr;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::random::{RandomSource, base62_alphabet, fill_base62};

/// Length of the public id.
pub const ID_LEN: usize = 12;
/// Length of the secret part.
pub const SECRET_LEN: usize = 32;
/// Length of the checksum.
pub const CHECKSUM_LEN: usize = 6;
/// Longest allowed prefix.
pub const MAX_PREFIX_LEN: usize = 16;
/// The default prefix.
pub const DEFAULT_PREFIX: &str = "km";

/// The environment tag of a key: `live` or `test`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyEnv {
    /// Production traffic.
    Live,
    /// Test traffic.
    Test,
}

impl KeyEnv {
    /// The tag as it appears in a token.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyEnv::Live => "live",
            KeyEnv::Test => "test",
        }
    }

    fn from_tag(tag: &str) -> Option<Self> {
        match tag {
            "live" => Some(KeyEnv::Live),
            "test" => Some(KeyEnv::Test),
            _ => None,
        }
    }
}

impl fmt::Display for KeyEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyEnv {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        KeyEnv::from_tag(s)
            .ok_or_else(|| Error::invalid("key environment", "expected `live` or `test`"))
    }
}

/// Why a string is not a well-formed keymeter token. Never carries the token itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The token is empty.
    #[error("the token is empty")]
    Empty,
    /// The token is not four `_`-separated parts.
    #[error("expected 4 parts separated by `_`, found {0}")]
    Parts(usize),
    /// The prefix is empty, too long, or not `[a-z0-9]`.
    #[error("the prefix must be 1–16 characters of [a-z0-9]")]
    Prefix,
    /// The environment tag is neither `live` nor `test`.
    #[error("unknown environment tag (expected `live` or `test`)")]
    Environment,
    /// The id part has the wrong length.
    #[error("the id must be {ID_LEN} characters, found {0}")]
    IdLength(usize),
    /// The secret-and-checksum part has the wrong length.
    #[error("the secret and checksum must be 38 characters, found {0}")]
    SecretLength(usize),
    /// A character outside the base62 alphabet, at a byte offset.
    #[error("invalid character at position {0}")]
    Character(usize),
    /// The checksum does not match: a typo or a truncated token.
    #[error("checksum mismatch (typo or truncated token)")]
    Checksum,
}

/// The public parts of a parsed token. The secret is checked (by checksum) but not kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParsedToken<'a> {
    /// The prefix, for example `km`.
    pub prefix: &'a str,
    /// The environment tag.
    pub env: KeyEnv,
    /// The public id.
    pub id: &'a str,
}

/// Whether `prefix` is a valid token prefix (1–16 of `[a-z0-9]`).
pub fn is_valid_prefix(prefix: &str) -> bool {
    !prefix.is_empty()
        && prefix.len() <= MAX_PREFIX_LEN
        && prefix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Base62 digit values by byte; `INVALID` for bytes outside `0-9A-Za-z`.
static BASE62_VALUE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 62 {
        table[BASE62_DIGITS[i] as usize] = i as u8;
        i += 1;
    }
    table
};
const INVALID: u8 = 0xff;
const BASE62_DIGITS: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Whether every byte is base62; no early exit, so the loop vectorises.
fn all_base62(s: &[u8]) -> bool {
    s.iter().fold(true, |ok, &b| {
        ok & (BASE62_VALUE[usize::from(b)] != INVALID)
    })
}

/// The checksum of `body` (everything before the checksum), as 6 base62 characters.
pub fn checksum(body: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut crc = crc32fast::hash(body);
    let alphabet = base62_alphabet();
    let mut out = [b'0'; CHECKSUM_LEN];
    for slot in out.iter_mut().rev() {
        *slot = alphabet[(crc % 62) as usize];
        crc /= 62;
    }
    out
}

/// Parses and checks a token: shape, lengths, alphabet and checksum. Touches no store.
///
/// # Errors
/// A [`TokenError`] naming the first problem found.
pub fn parse(token: &str) -> Result<ParsedToken<'_>, TokenError> {
    // The hot path: a token laid out exactly as generated is checked by position, without splitting; anything
    // else goes the long way round, which names the first problem.
    let b = token.as_bytes();
    if let Some(p) = b.iter().take(MAX_PREFIX_LEN + 1).position(|&c| c == b'_')
        && b.len() == p + 57
        && b[p + 5] == b'_'
        && b[p + 18] == b'_'
        && p > 0
        && b[..p]
            .iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && let Some(env) = match &b[p + 1..p + 5] {
            b"live" => Some(KeyEnv::Live),
            b"test" => Some(KeyEnv::Test),
            _ => None,
        }
        && all_base62(&b[p + 6..p + 18]) & all_base62(&b[p + 19..])
    {
        let body_len = b.len() - CHECKSUM_LEN;
        let expected = b[body_len..].iter().fold(0u64, |acc, &c| {
            acc * 62 + u64::from(BASE62_VALUE[usize::from(c)])
        });
        if expected != u64::from(crc32fast::hash(&b[..body_len])) {
            return Err(TokenError::Checksum);
        }
        return Ok(ParsedToken {
            prefix: &token[..p],
            env,
            id: &token[p + 6..p + 18],
        });
    }
    parse_slowly(token)
}

fn parse_slowly(token: &str) -> Result<ParsedToken<'_>, TokenError> {
    let bytes = token.as_bytes();
    if bytes.is_empty() {
        return Err(TokenError::Empty);
    }
    let mut parts = token.splitn(4, '_');
    let (Some(prefix), Some(env), Some(id), Some(tail)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Parts(token.split('_').count()));
    };
    if tail.contains('_') {
        return Err(TokenError::Parts(token.split('_').count()));
    }
    if !is_valid_prefix(prefix) {
        return Err(TokenError::Prefix);
    }
    let env = KeyEnv::from_tag(env).ok_or(TokenError::Environment)?;
    if id.len() != ID_LEN {
        return Err(TokenError::IdLength(id.len()));
    }
    if tail.len() != SECRET_LEN + CHECKSUM_LEN {
        return Err(TokenError::SecretLength(tail.len()));
    }
    let body_len = bytes.len() - CHECKSUM_LEN;
    if !all_base62(id.as_bytes()) || !all_base62(tail.as_bytes()) {
        let id_start = prefix.len() + env.as_str().len() + 2;
        let pos = bytes[id_start..]
            .iter()
            .position(|&b| b != b'_' && BASE62_VALUE[usize::from(b)] == INVALID)
            .unwrap_or(0);
        return Err(TokenError::Character(id_start + pos));
    }
    let expected = bytes[body_len..].iter().fold(0u64, |acc, &b| {
        acc * 62 + u64::from(BASE62_VALUE[usize::from(b)])
    });
    if expected != u64::from(crc32fast::hash(&bytes[..body_len])) {
        return Err(TokenError::Checksum);
    }
    Ok(ParsedToken { prefix, env, id })
}

/// Generates a new token. Returns its public id and the whole token (a secret).
///
/// # Errors
/// [`Error::InvalidInput`] for an invalid prefix; [`Error::Random`] when the random source fails.
pub fn generate(
    prefix: &str,
    env: KeyEnv,
    random: &dyn RandomSource,
) -> Result<(String, SecretString)> {
    let mut id = [0u8; ID_LEN];
    fill_base62(random, &mut id)?;
    // Only ASCII was written, so the conversion is infallible; map instead of unwrap all the same.
    let id = String::from_utf8(id.to_vec()).map_err(|e| Error::Random(e.to_string()))?;
    let token = generate_for(prefix, env, &id, random)?;
    Ok((id, token))
}

/// Generates a token with a fresh secret for the existing id `id` (a rotation keeps the key's id).
///
/// # Errors
/// [`Error::InvalidInput`] for an invalid prefix or an id that is not 12 base62 characters;
/// [`Error::Random`] when the random source fails.
pub fn generate_for(
    prefix: &str,
    env: KeyEnv,
    id: &str,
    random: &dyn RandomSource,
) -> Result<SecretString> {
    if !is_valid_prefix(prefix) {
        return Err(Error::invalid(
            "prefix",
            "must be 1–16 characters of [a-z0-9]",
        ));
    }
    if id.len() != ID_LEN || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::invalid("id", "must be 12 base62 characters"));
    }
    let mut token = zeroize::Zeroizing::new(Vec::with_capacity(
        prefix.len() + 7 + ID_LEN + SECRET_LEN + CHECKSUM_LEN,
    ));
    token.extend_from_slice(prefix.as_bytes());
    token.push(b'_');
    token.extend_from_slice(env.as_str().as_bytes());
    token.push(b'_');
    token.extend_from_slice(id.as_bytes());
    token.push(b'_');
    let start = token.len();
    token.resize(start + SECRET_LEN, 0);
    fill_base62(random, &mut token[start..])?;
    let sum = checksum(&token);
    token.extend_from_slice(&sum);
    let text = std::str::from_utf8(&token).map_err(|e| Error::Random(e.to_string()))?;
    Ok(SecretString::from(text))
}

/// The display hint of a generated token: `km_live_Ab3d…9xYz` (prefix, env, the id's first 4 characters, the
/// checksum's last 4). Reveals nothing of the secret.
pub fn display_hint(token: &str) -> String {
    match parse(token) {
        Ok(p) => format!(
            "{}_{}_{}…{}",
            p.prefix,
            p.env,
            &p.id[..4],
            &token[token.len() - 4..]
        ),
        Err(_) => String::from("…"),
    }
}
