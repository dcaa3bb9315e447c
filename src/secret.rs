//! Secrets: re-exports of the [`secrecy`] wrappers keymeter uses, masking for display, and the [`KeyRing`] that
//! holds server-side keys (peppers, master keys) by id.
//!
//! Every secret keymeter hands out is a [`SecretString`] or [`SecretBox`]: zeroized on drop, `[REDACTED]` in
//! `Debug`, no `Display`, and no `Serialize` (so it cannot slip into JSON or logs by accident).

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
pub use secrecy::{ExposeSecret, SecretBox, SecretString};
use zeroize::Zeroizing;

use crate::error::{Error, Result};
use crate::random::RandomSource;

/// Length in bytes of every key a [`KeyRing`] holds.
pub const RING_KEY_LEN: usize = 32;

/// Masks a secret for display: at most its leading type prefix (up to the last `-` or `_` among its first 8
/// characters) and its last 4 characters, and only the last 4 when the secret is long enough (16 or more
/// characters) that 4 characters give nothing useful away.
///
/// ```
/// use keymeter::secret::mask;
/// assert_eq!(mask("sk-ant-api03-abcdefghijklmnopqrstuvwxyzAb12"), "sk-ant-…Ab12");
/// assert_eq!(mask("AIzaSyA1234567890abcdefghijk"), "…hijk");
/// assert_eq!(mask("short"), "…");
/// ```
pub fn mask(secret: &str) -> String {
    let chars: Vec<char> = secret.chars().collect();
    let head: usize = chars
        .iter()
        .take(8)
        .rposition(|&c| c == '-' || c == '_')
        .map_or(0, |i| i + 1);
    let tail = if chars.len() >= 16 { 4 } else { 0 };
    if head + tail + 8 > chars.len() {
        return String::from("…");
    }
    let mut out: String = chars[..head].iter().collect();
    out.push('…');
    out.extend(&chars[chars.len() - tail..]);
    out
}

/// Whether `id` is a valid key id: 1–32 characters of `[A-Za-z0-9-]`.
pub fn is_valid_key_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 32 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A 32-byte key with an id that a [`KeyRing`] can hold: a pepper, a master key.
pub trait RingKey: Sized {
    /// What the key is, for messages (`pepper`, `master key`).
    const WHAT: &'static str;

    /// A key from its id and bytes.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid id.
    fn from_bytes(id: &str, key: SecretBox<[u8; RING_KEY_LEN]>) -> Result<Self>;

    /// The key's id.
    fn id(&self) -> &str;

    /// The key's bytes.
    fn bytes(&self) -> &SecretBox<[u8; RING_KEY_LEN]>;

    /// A fresh random key.
    ///
    /// # Errors
    /// [`Error::Random`] when the source fails; [`Error::Config`] for an invalid id.
    fn generate(id: &str, random: &dyn RandomSource) -> Result<Self> {
        let mut key = SecretBox::new(Box::new([0u8; RING_KEY_LEN]));
        random.fill(secrecy::ExposeSecretMut::expose_secret_mut(&mut key))?;
        Self::from_bytes(id, key)
    }

    /// A key from standard base64 of exactly 32 bytes.
    ///
    /// # Errors
    /// [`Error::Config`] when the text is not base64 of 32 bytes; the message never echoes the text.
    fn from_base64(id: &str, b64: &str) -> Result<Self> {
        let key = decode_key(b64)
            .ok_or_else(|| Error::Config(format!("a {} must be base64 of 32 bytes", Self::WHAT)))?;
        Self::from_bytes(id, key)
    }

    /// `id:base64`, one entry of a ring's environment value. Handle it as a secret.
    fn to_env_entry(&self) -> SecretString {
        let mut out = Zeroizing::new(String::with_capacity(self.id().len() + 45));
        out.push_str(self.id());
        out.push(':');
        STANDARD.encode_string(self.bytes().expose_secret(), &mut out);
        SecretString::from(out.as_str())
    }
}

/// Standard base64 of exactly 32 bytes, decoded into a secret; `None` for anything else.
fn decode_key(b64: &str) -> Option<SecretBox<[u8; RING_KEY_LEN]>> {
    let mut buf = Zeroizing::new([0u8; 48]);
    let b64 = b64.trim();
    // Longer text cannot be 32 bytes (and would not fit the buffer).
    if b64.len() > 44 {
        return None;
    }
    match STANDARD.decode_slice(b64, &mut buf[..]) {
        Ok(RING_KEY_LEN) => {
            let mut key = SecretBox::new(Box::new([0u8; RING_KEY_LEN]));
            secrecy::ExposeSecretMut::expose_secret_mut(&mut key)
                .copy_from_slice(&buf[..RING_KEY_LEN]);
            Some(key)
        }
        _ => None,
    }
}

/// Keys by id; the first is active (new hashes or encryptions use it), the others still verify or decrypt, so a
/// rotation loses nothing.
///
/// ```
/// use keymeter::keys::PepperRing;
///
/// let ring = PepperRing::from_env_value(
///     "p2:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,p1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
/// ).unwrap();
/// assert_eq!(ring.active().id(), "p2");
/// assert!(ring.get("p1").is_some());
/// // A swapped entry (`base64:id`) is refused without echoing either half.
/// let err = PepperRing::from_env_value("AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=:p1").unwrap_err();
/// assert!(!err.to_string().contains("AQEB"));
/// ```
pub struct KeyRing<K> {
    keys: Vec<K>,
}

impl<K: RingKey> fmt::Debug for KeyRing<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("of", &K::WHAT)
            .field(
                "ids",
                &self.keys.iter().map(RingKey::id).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl<K: RingKey> KeyRing<K> {
    /// A ring whose first key is the active one.
    ///
    /// # Errors
    /// [`Error::Config`] when the ring is empty or two keys share an id.
    pub fn new(keys: Vec<K>) -> Result<Self> {
        if keys.is_empty() {
            return Err(Error::Config(format!(
                "at least one {} is required",
                K::WHAT
            )));
        }
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.id() == k.id()) {
                return Err(Error::Config(format!(
                    "{} entries {} and {} share an id",
                    K::WHAT,
                    keys[..i].iter().position(|o| o.id() == k.id()).unwrap_or(0) + 1,
                    i + 1
                )));
            }
        }
        Ok(KeyRing { keys })
    }

    /// A ring of one fresh key.
    ///
    /// # Errors
    /// As [`RingKey::generate`].
    pub fn generate(id: &str, random: &dyn RandomSource) -> Result<Self> {
        KeyRing::new(vec![K::generate(id, random)?])
    }

    /// Parses an environment value (`KEYMETER_PEPPER`, `KEYMETER_MASTER_KEYS`): `id:base64,id:base64,…` with the
    /// first active, or one bare base64 key (id `default`).
    ///
    /// # Errors
    /// [`Error::Config`] naming the bad entry's position (1-based), never its text: a swapped `base64:id` entry
    /// must not print the key.
    pub fn from_env_value(value: &str) -> Result<Self> {
        let value = value.trim();
        if !value.contains(':') && !value.contains(',') {
            let key = decode_key(value).ok_or_else(|| {
                Error::Config(format!(
                    "the {} is not `id:base64` entries nor one base64 key of 32 bytes",
                    K::WHAT
                ))
            })?;
            return KeyRing::new(vec![K::from_bytes("default", key)?]);
        }
        let mut keys = Vec::new();
        for (i, entry) in value.split(',').enumerate() {
            let position = i + 1;
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let bad = |what: &str| Error::Config(format!("{} entry {position}: {what}", K::WHAT));
            let (id, key) = entry
                .split_once(':')
                .ok_or_else(|| bad("expected `id:base64`"))?;
            let id = id.trim();
            if !is_valid_key_id(id) {
                return Err(bad(
                    "the id must be 1–32 characters of [A-Za-z0-9-] (is the entry `id:base64`?)",
                ));
            }
            let key = decode_key(key).ok_or_else(|| bad("the key must be base64 of 32 bytes"))?;
            keys.push(K::from_bytes(id, key)?);
        }
        KeyRing::new(keys)
    }

    /// The active key.
    pub fn active(&self) -> &K {
        &self.keys[0]
    }

    /// The key with id `id`.
    pub fn get(&self, id: &str) -> Option<&K> {
        self.keys.iter().find(|k| k.id() == id)
    }

    /// Every key, the active one first.
    pub fn iter(&self) -> impl Iterator<Item = &K> {
        self.keys.iter()
    }

    /// The ring as an environment value (`id:base64,…`). Handle the result as a secret.
    pub fn to_env_value(&self) -> SecretString {
        let mut out = Zeroizing::new(String::new());
        for (i, k) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k.to_env_entry().expose_secret());
        }
        SecretString::from(out.as_str())
    }
}
