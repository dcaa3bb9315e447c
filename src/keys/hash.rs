//! Hashes at rest: self-describing PHC-style strings, so schemes can change without a migration.
//!
//! | scheme | string | used for |
//! | --- | --- | --- |
//! | `hmac-sha256` | `$hmac-sha256$v=1,p=<pepper-id>$<digest>` | generated keys (default): HMAC-SHA-256 of the whole token under a server-side pepper; `<digest>` is unpadded standard base64 |
//! | `argon2id` | `$argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>` | low-entropy or admin-chosen keys; any standard Argon2id PHC string verifies |
//! | `sha256` | `$sha256$<64 lowercase hex>` | imported unsalted SHA-256 digests |
//! | `bcrypt` | `$2a$`/`$2b$`/`$2y$`… | imported legacy hashes (feature `bcrypt`) |
//!
//! [`KeyHasher`] creates and checks them, compares in constant time, and tells when a verified hash should be
//! re-hashed under the current scheme or pepper ([`KeyHasher::upgrade`]).

use std::fmt;
use std::sync::Arc;

use argon2::password_hash::phc::PasswordHash;
use argon2::{Algorithm, Argon2, Params, PasswordHasher, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use hmac::{Hmac, KeyInit, Mac};
use secrecy::{ExposeSecret, SecretBox};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::error::{Error, Result};
use crate::random::{OsRandom, RandomSource};
use crate::secret::{KeyRing, RingKey, is_valid_key_id};

/// Length of a pepper in bytes.
pub const PEPPER_LEN: usize = 32;

/// Why a hash string cannot be parsed or used. Never carries the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HashError {
    /// The string is not of a known scheme.
    #[error("unknown hash scheme (expected hmac-sha256, argon2id, sha256 or bcrypt)")]
    UnknownScheme,
    /// The string names a known scheme but is malformed.
    #[error("malformed {scheme} hash: {reason}")]
    Malformed {
        /// The scheme.
        scheme: HashScheme,
        /// What is wrong.
        reason: &'static str,
    },
    /// The hash was made with a pepper this process does not have.
    #[error("unknown pepper id {0:?}")]
    UnknownPepper(String),
    /// The scheme needs a cargo feature that is off.
    #[error("{0} hashes need the `{0}` feature")]
    FeatureDisabled(HashScheme),
    /// The hash's parameters make one verify cost more than the configured ceiling ([`KdfLimits`]).
    #[error("{scheme} parameters over the ceiling: {reason}")]
    TooCostly {
        /// The scheme.
        scheme: HashScheme,
        /// Which parameter, and its ceiling.
        reason: String,
    },
}

fn malformed(scheme: HashScheme, reason: &'static str) -> HashError {
    HashError::Malformed { scheme, reason }
}

/// A hash scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HashScheme {
    /// HMAC-SHA-256 under a pepper.
    HmacSha256,
    /// Argon2id.
    Argon2id,
    /// Unsalted SHA-256 (imported).
    Sha256,
    /// bcrypt (imported).
    Bcrypt,
}

impl HashScheme {
    /// The scheme's name as written in records and CLI output.
    pub fn as_str(self) -> &'static str {
        match self {
            HashScheme::HmacSha256 => "hmac-sha256",
            HashScheme::Argon2id => "argon2id",
            HashScheme::Sha256 => "sha256",
            HashScheme::Bcrypt => "bcrypt",
        }
    }

    /// Whether the scheme is deliberately slow (worth a verified-token cache).
    pub fn is_slow(self) -> bool {
        matches!(self, HashScheme::Argon2id | HashScheme::Bcrypt)
    }
}

impl fmt::Display for HashScheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A validated hash string. Its `Debug` shows only the scheme: a hash of a low-entropy key is worth guarding.
///
/// An `hmac-sha256` hash keeps its decoded digest and pepper id from parsing, so the hot verify path decodes
/// nothing.
#[derive(Clone)]
pub struct KeyHash {
    text: String,
    scheme: HashScheme,
    /// For `hmac-sha256`: the pepper id and the decoded digest, kept inline so the verify path reads one record
    /// and no second allocation.
    hmac: Option<HmacParts>,
}

#[derive(Clone)]
struct HmacParts {
    pepper: PepperId,
    digest: [u8; 32],
}

/// A pepper id (1–32 bytes of `[A-Za-z0-9-]`) stored inline.
#[derive(Clone, Copy, PartialEq, Eq)]
struct PepperId {
    len: u8,
    bytes: [u8; 32],
}

impl PepperId {
    fn new(id: &str) -> Self {
        let mut bytes = [0u8; 32];
        let len = id.len().min(32);
        bytes[..len].copy_from_slice(&id.as_bytes()[..len]);
        PepperId {
            len: len as u8,
            bytes,
        }
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl PartialEq for KeyHash {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for KeyHash {}

impl fmt::Debug for KeyHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyHash(${}$…)", self.scheme)
    }
}

/// Parses and validates a hash string of any supported scheme.
///
/// # Errors
/// [`HashError`] when the string is not a well-formed hash of a known scheme.
impl std::str::FromStr for KeyHash {
    type Err = HashError;

    fn from_str(text: &str) -> std::result::Result<Self, HashError> {
        let mut hmac = None;
        let scheme = if let Some(rest) = text.strip_prefix("$hmac-sha256$") {
            let (pepper, digest) = parse_hmac(rest)?;
            hmac = Some(HmacParts {
                pepper: PepperId::new(pepper),
                digest,
            });
            HashScheme::HmacSha256
        } else if let Some(rest) = text.strip_prefix("$sha256$") {
            if rest.len() != 64 || !rest.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(malformed(HashScheme::Sha256, "expected 64 hex digits"));
            }
            return Ok(KeyHash {
                text: text.to_ascii_lowercase(),
                scheme: HashScheme::Sha256,
                hmac: None,
            });
        } else if text.starts_with("$argon2id$") {
            let phc = PasswordHash::new(text)
                .map_err(|_| malformed(HashScheme::Argon2id, "not a valid PHC string"))?;
            if phc.salt.is_none() || phc.hash.is_none() {
                return Err(malformed(HashScheme::Argon2id, "salt or hash missing"));
            }
            Params::try_from(&phc)
                .map_err(|_| malformed(HashScheme::Argon2id, "invalid parameters"))?;
            HashScheme::Argon2id
        } else if is_bcrypt(text) {
            HashScheme::Bcrypt
        } else {
            return Err(HashError::UnknownScheme);
        };
        Ok(KeyHash {
            text: text.to_owned(),
            scheme,
            hmac,
        })
    }
}

impl KeyHash {
    /// The scheme.
    pub fn scheme(&self) -> HashScheme {
        self.scheme
    }

    /// The PHC-style string, as stored.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// For `sha256` hashes: the hex digest, which is also the key's lookup index.
    pub fn sha256_hex(&self) -> Option<&str> {
        self.text.strip_prefix("$sha256$")
    }

    /// For `hmac-sha256` hashes: the pepper id.
    pub fn pepper_id(&self) -> Option<&str> {
        let start = "$hmac-sha256$v=1,p=".len();
        self.hmac
            .as_ref()
            .map(|h| &self.text[start..start + usize::from(h.pepper.len)])
    }
}

// `$2b$12$` + 53 characters of bcrypt base64.
fn is_bcrypt(text: &str) -> bool {
    let b = text.as_bytes();
    b.len() == 60
        && b[0] == b'$'
        && b[1] == b'2'
        && matches!(b[2], b'a' | b'b' | b'x' | b'y')
        && b[3] == b'$'
        && b[4].is_ascii_digit()
        && b[5].is_ascii_digit()
        && b[6] == b'$'
        && b[7..]
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'.' || c == b'/')
}

/// Splits `v=1,p=<id>$<digest>` into the pepper id and the decoded digest.
fn parse_hmac(rest: &str) -> Result<(&str, [u8; 32]), HashError> {
    let scheme = HashScheme::HmacSha256;
    let (params, digest) = rest
        .split_once('$')
        .ok_or_else(|| malformed(scheme, "missing digest"))?;
    let pepper = params
        .strip_prefix("v=1,p=")
        .ok_or_else(|| malformed(scheme, "expected parameters `v=1,p=<pepper-id>`"))?;
    if !is_valid_key_id(pepper) {
        return Err(malformed(scheme, "invalid pepper id"));
    }
    let mut out = [0u8; 32];
    match STANDARD_NO_PAD.decode_slice(digest, &mut out) {
        Ok(32) if digest.len() == 43 => Ok((pepper, out)),
        _ => Err(malformed(
            scheme,
            "digest must be 32 bytes of unpadded base64",
        )),
    }
}

/// A 32-byte server-side secret for HMAC hashes, with an id so it can rotate.
///
/// The keyed HMAC state is computed once (the two key blocks), so each hash costs only the message blocks; it is
/// zeroized on drop like the key itself.
pub struct Pepper {
    id: String,
    key: SecretBox<[u8; PEPPER_LEN]>,
    mac: Hmac<Sha256>,
}

impl fmt::Debug for Pepper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Pepper({:?}, [REDACTED])", self.id)
    }
}

impl RingKey for Pepper {
    const WHAT: &'static str = "pepper";

    fn from_bytes(id: &str, key: SecretBox<[u8; PEPPER_LEN]>) -> Result<Self> {
        Pepper::new(id, key)
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn bytes(&self) -> &SecretBox<[u8; PEPPER_LEN]> {
        &self.key
    }
}

impl Pepper {
    /// A pepper with the given id and key bytes.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid id.
    pub fn new(id: &str, key: SecretBox<[u8; PEPPER_LEN]>) -> Result<Self> {
        if !is_valid_key_id(id) {
            return Err(Error::Config(
                "invalid pepper id: use 1–32 characters of [A-Za-z0-9-]".into(),
            ));
        }
        let mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key.expose_secret())
            .map_err(|_| Error::Config("invalid pepper length".into()))?;
        Ok(Pepper {
            id: id.to_owned(),
            key,
            mac,
        })
    }

    /// A pepper from standard base64 of exactly 32 bytes.
    ///
    /// # Errors
    /// [`Error::Config`] when the text is not base64 of 32 bytes (the message never echoes it).
    pub fn from_base64(id: &str, b64: &str) -> Result<Self> {
        <Pepper as RingKey>::from_base64(id, b64)
    }

    /// A fresh random pepper.
    ///
    /// # Errors
    /// [`Error::Random`] when the random source fails; [`Error::Config`] for an invalid id.
    pub fn generate(id: &str, random: &dyn RandomSource) -> Result<Self> {
        <Pepper as RingKey>::generate(id, random)
    }

    /// The pepper's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    fn digest(&self, token: &[u8]) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(token);
        mac.finalize().into_bytes().into()
    }
}

/// Peppers by id; the first is active (new hashes use it), the others still verify.
pub type PepperRing = KeyRing<Pepper>;

/// Argon2id cost parameters for new hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2Config {
    /// Memory in KiB (default 19456).
    pub m_cost: u32,
    /// Iterations (default 2).
    pub t_cost: u32,
    /// Parallelism (default 1).
    pub p_cost: u32,
}

impl Default for Argon2Config {
    fn default() -> Self {
        Argon2Config {
            m_cost: 19_456,
            t_cost: 2,
            p_cost: 1,
        }
    }
}

/// The most one imported slow hash may cost to verify: a hash over any of these is refused at import (and not
/// run at verify), so an unauthenticated request can never make the server spend more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KdfLimits {
    /// Argon2 memory in KiB (default 65,536: 64 MiB).
    pub argon2_max_m_kib: u32,
    /// Argon2 iterations (default 10).
    pub argon2_max_t: u32,
    /// Argon2 parallelism (default 4).
    pub argon2_max_p: u32,
    /// bcrypt cost (default 12).
    pub bcrypt_max_cost: u32,
}

impl Default for KdfLimits {
    fn default() -> Self {
        KdfLimits {
            argon2_max_m_kib: 65_536,
            argon2_max_t: 10,
            argon2_max_p: 4,
            bcrypt_max_cost: 12,
        }
    }
}

/// Creates and verifies key hashes, and decides when a verified hash is out of date.
///
/// ```
/// use keymeter::keys::hash::{KeyHasher, Pepper, PepperRing};
/// use keymeter::random::OsRandom;
///
/// let ring = PepperRing::new(vec![Pepper::generate("p1", &OsRandom).unwrap()]).unwrap();
/// let hasher = KeyHasher::new(ring);
/// let hash = hasher.hash_hmac(b"km_live_token");
/// assert!(hash.as_str().starts_with("$hmac-sha256$v=1,p=p1$"));
/// assert!(hasher.verify(b"km_live_token", &hash).unwrap());
/// assert!(!hasher.verify(b"km_live_other", &hash).unwrap());
/// ```
pub struct KeyHasher {
    peppers: PepperRing,
    argon2: Argon2Config,
    limits: KdfLimits,
    random: Arc<dyn RandomSource>,
    dummy: std::sync::OnceLock<KeyHash>,
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyHasher")
            .field("peppers", &self.peppers)
            .field("argon2", &self.argon2)
            .finish_non_exhaustive()
    }
}

impl KeyHasher {
    /// A hasher with default Argon2id parameters and the OS random source.
    pub fn new(peppers: PepperRing) -> Self {
        KeyHasher {
            peppers,
            argon2: Argon2Config::default(),
            limits: KdfLimits::default(),
            random: Arc::new(OsRandom),
            dummy: std::sync::OnceLock::new(),
        }
    }

    /// Sets the ceilings on imported slow hashes.
    ///
    /// # Errors
    /// [`Error::Config`] when the configured Argon2id parameters are themselves over the ceilings.
    pub fn with_kdf_limits(mut self, limits: KdfLimits) -> Result<Self> {
        self.limits = limits;
        self.check_own_cost()?;
        Ok(self)
    }

    fn check_own_cost(&self) -> Result<()> {
        let a = self.argon2;
        if a.m_cost > self.limits.argon2_max_m_kib
            || a.t_cost > self.limits.argon2_max_t
            || a.p_cost > self.limits.argon2_max_p
        {
            return Err(Error::Config(
                "the Argon2id parameters for new hashes are over the KDF ceilings".into(),
            ));
        }
        Ok(())
    }

    /// The ceilings on imported slow hashes.
    pub fn kdf_limits(&self) -> KdfLimits {
        self.limits
    }

    /// Refuses a hash whose verify would cost more than the ceilings allow, or that names a pepper this hasher
    /// lacks (every later verify of it would fail).
    ///
    /// # Errors
    /// [`HashError::TooCostly`]; [`HashError::UnknownPepper`].
    pub fn check_importable(&self, hash: &KeyHash) -> Result<(), HashError> {
        let too = |scheme, reason: String| Err(HashError::TooCostly { scheme, reason });
        match hash.scheme {
            HashScheme::HmacSha256 => match hash.pepper_id() {
                Some(id) if self.peppers.get(id).is_none() => {
                    Err(HashError::UnknownPepper(id.to_owned()))
                }
                _ => Ok(()),
            },
            HashScheme::Argon2id => {
                let params = PasswordHash::new(&hash.text)
                    .ok()
                    .and_then(|phc| Params::try_from(&phc).ok())
                    .ok_or_else(|| malformed(HashScheme::Argon2id, "invalid parameters"))?;
                let l = self.limits;
                if params.m_cost() > l.argon2_max_m_kib {
                    return too(
                        HashScheme::Argon2id,
                        format!("m={} KiB > {}", params.m_cost(), l.argon2_max_m_kib),
                    );
                }
                if params.t_cost() > l.argon2_max_t {
                    return too(
                        HashScheme::Argon2id,
                        format!("t={} > {}", params.t_cost(), l.argon2_max_t),
                    );
                }
                if params.p_cost() > l.argon2_max_p {
                    return too(
                        HashScheme::Argon2id,
                        format!("p={} > {}", params.p_cost(), l.argon2_max_p),
                    );
                }
                Ok(())
            }
            HashScheme::Bcrypt => {
                let cost: u32 = hash.text[4..6]
                    .parse()
                    .map_err(|_| malformed(HashScheme::Bcrypt, "invalid cost"))?;
                if cost > self.limits.bcrypt_max_cost {
                    return too(
                        HashScheme::Bcrypt,
                        format!("cost {cost} > {}", self.limits.bcrypt_max_cost),
                    );
                }
                Ok(())
            }
            HashScheme::Sha256 => Ok(()),
        }
    }

    /// The keyed digest that finds an imported slow hash by the key's first characters, under the active pepper:
    /// `<pepper-id>:<base64 HMAC-SHA-256("keymeter-hint-v1\0" ‖ hint)>`. The hint itself is never stored.
    pub fn hint_digest(&self, hint: &[u8]) -> String {
        hint_digest_under(self.peppers.active(), hint)
    }

    /// The hint digests of `hint` under every pepper of the ring, the active one first: a lookup tries each, so
    /// rotating the pepper loses no imported key (keep the old pepper in the ring while such keys exist).
    pub fn hint_digests(&self, hint: &[u8]) -> Vec<String> {
        self.peppers
            .iter()
            .map(|p| hint_digest_under(p, hint))
            .collect()
    }

    /// Spends one verify of the configured Argon2id cost on nothing, so a hint that matches no key costs what a
    /// hint that matches one does.
    ///
    /// # Errors
    /// [`Error::Config`] when the configured parameters are invalid.
    pub fn verify_nothing_slowly(&self, token: &[u8]) -> Result<()> {
        let dummy = match self.dummy.get() {
            Some(d) => d,
            None => {
                // A fixed salt: the result is never compared to anything that matters.
                let made = self
                    .argon2_context()?
                    .hash_password_with_salt(b"keymeter-dummy", b"keymeter-dummy-salt")
                    .map_err(|e| Error::Config(format!("argon2: {e}")))?;
                self.dummy.get_or_init(|| KeyHash {
                    text: made.to_string(),
                    scheme: HashScheme::Argon2id,
                    hmac: None,
                })
            }
        };
        std::hint::black_box(self.verify(token, dummy).unwrap_or(false));
        Ok(())
    }

    /// Sets the Argon2id parameters for new hashes.
    ///
    /// # Errors
    /// [`Error::Config`] when argon2 rejects the parameters.
    pub fn with_argon2(mut self, config: Argon2Config) -> Result<Self> {
        Params::new(config.m_cost, config.t_cost, config.p_cost, None)
            .map_err(|e| Error::Config(format!("argon2 parameters: {e}")))?;
        self.argon2 = config;
        self.check_own_cost()?;
        self.dummy = std::sync::OnceLock::new();
        Ok(self)
    }

    /// Sets the random source for salts.
    pub fn with_random(mut self, random: Arc<dyn RandomSource>) -> Self {
        self.random = random;
        self
    }

    /// The pepper ring.
    pub fn peppers(&self) -> &PepperRing {
        &self.peppers
    }

    /// The HMAC-SHA-256 hash of `token` under the active pepper.
    pub fn hash_hmac(&self, token: &[u8]) -> KeyHash {
        let pepper = self.peppers.active();
        let digest = pepper.digest(token);
        KeyHash {
            text: format!(
                "$hmac-sha256$v=1,p={}${}",
                pepper.id,
                STANDARD_NO_PAD.encode(digest)
            ),
            scheme: HashScheme::HmacSha256,
            hmac: Some(HmacParts {
                pepper: PepperId::new(&pepper.id),
                digest,
            }),
        }
    }

    /// The Argon2id hash of `token` with the configured parameters and a fresh 16-byte salt.
    ///
    /// # Errors
    /// [`Error::Random`] when no salt can be drawn.
    pub fn hash_argon2(&self, token: &[u8]) -> Result<KeyHash> {
        let mut salt = [0u8; 16];
        self.random.fill(&mut salt)?;
        let hash = self
            .argon2_context()?
            .hash_password_with_salt(token, &salt)
            .map_err(|e| Error::Config(format!("argon2: {e}")))?;
        Ok(KeyHash {
            text: hash.to_string(),
            scheme: HashScheme::Argon2id,
            hmac: None,
        })
    }

    fn argon2_context(&self) -> Result<Argon2<'static>> {
        let params = Params::new(
            self.argon2.m_cost,
            self.argon2.t_cost,
            self.argon2.p_cost,
            None,
        )
        .map_err(|e| Error::Config(format!("argon2 parameters: {e}")))?;
        Ok(Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
    }

    /// The unsalted SHA-256 hash string of `token` (the lookup index of imported digests).
    pub fn sha256(token: &[u8]) -> KeyHash {
        let digest = Sha256::digest(token);
        let mut text = String::with_capacity(8 + 64);
        text.push_str("$sha256$");
        for b in digest.iter() {
            text.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            text.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        KeyHash {
            text,
            scheme: HashScheme::Sha256,
            hmac: None,
        }
    }

    /// Whether `token` matches `hash`, comparing in constant time.
    ///
    /// # Errors
    /// [`HashError::UnknownPepper`] when the hash names a pepper this hasher lacks;
    /// [`HashError::FeatureDisabled`] for bcrypt without the `bcrypt` feature.
    pub fn verify(&self, token: &[u8], hash: &KeyHash) -> Result<bool, HashError> {
        match hash.scheme {
            HashScheme::HmacSha256 => {
                let parts = hash
                    .hmac
                    .as_ref()
                    .ok_or_else(|| malformed(HashScheme::HmacSha256, "not parsed"))?;
                let wanted = parts.pepper.as_bytes();
                let pepper = self
                    .peppers
                    .iter()
                    .find(|p| p.id.as_bytes() == wanted)
                    .ok_or_else(|| {
                        HashError::UnknownPepper(String::from_utf8_lossy(wanted).into_owned())
                    })?;
                Ok(equal_32(&pepper.digest(token), &parts.digest))
            }
            HashScheme::Sha256 => {
                let computed = KeyHasher::sha256(token);
                Ok(bool::from(
                    computed.text.as_bytes().ct_eq(hash.text.as_bytes()),
                ))
            }
            HashScheme::Argon2id => {
                // A stored hash over the ceilings (written behind keymeter's back) is not run.
                self.check_importable(hash)?;
                let phc = PasswordHash::new(&hash.text)
                    .map_err(|_| malformed(HashScheme::Argon2id, "not a valid PHC string"))?;
                // The parameters come from the hash string, not from our configuration.
                Ok(verify_argon2(token, &phc))
            }
            HashScheme::Bcrypt => {
                self.check_importable(hash)?;
                verify_bcrypt(token, &hash.text)
            }
        }
    }

    /// Spends the same work as verifying a generated key, so an unknown id is not faster than a wrong secret.
    pub fn verify_nothing(&self, token: &[u8]) {
        std::hint::black_box(self.peppers.active().digest(token));
    }

    /// After a successful verify: the hash to store instead of `hash`, when `hash` is not under the current
    /// scheme or pepper.
    ///
    /// - `hmac-sha256` under another pepper moves to the active pepper;
    /// - `argon2id` with other parameters, and `bcrypt`, move to `argon2id` with the configured parameters;
    /// - `sha256` stays: its digest is the key's lookup index.
    ///
    /// # Errors
    /// [`Error::Random`] when a salt cannot be drawn.
    pub fn upgrade(&self, token: &[u8], hash: &KeyHash) -> Result<Option<KeyHash>> {
        if !self.is_outdated(hash) {
            return Ok(None);
        }
        match hash.scheme {
            HashScheme::HmacSha256 => Ok(Some(self.hash_hmac(token))),
            HashScheme::Argon2id | HashScheme::Bcrypt => self.hash_argon2(token).map(Some),
            HashScheme::Sha256 => Ok(None),
        }
    }

    /// Whether [`KeyHasher::upgrade`] would replace `hash`. Cheap: no hashing.
    pub fn is_outdated(&self, hash: &KeyHash) -> bool {
        match hash.scheme {
            HashScheme::HmacSha256 => hash
                .hmac
                .as_ref()
                .is_none_or(|h| h.pepper.as_bytes() != self.peppers.active().id.as_bytes()),
            HashScheme::Argon2id => !PasswordHash::new(&hash.text)
                .ok()
                .and_then(|phc| Params::try_from(&phc).ok())
                .is_some_and(|p| {
                    p.m_cost() == self.argon2.m_cost
                        && p.t_cost() == self.argon2.t_cost
                        && p.p_cost() == self.argon2.p_cost
                }),
            HashScheme::Bcrypt => true,
            HashScheme::Sha256 => false,
        }
    }
}

fn hint_digest_under(pepper: &Pepper, hint: &[u8]) -> String {
    let mut mac = pepper.mac.clone();
    mac.update(b"keymeter-hint-v1\0");
    mac.update(hint);
    let digest: [u8; 32] = mac.finalize().into_bytes().into();
    format!("{}:{}", pepper.id, STANDARD_NO_PAD.encode(digest))
}

thread_local! {
    /// This thread's Argon2 working memory, kept from one verification to the next. Allocating it afresh for
    /// each KDF (tens of MiB) lets the allocator keep a freed copy in every arena a KDF ever ran in: a flood of
    /// made-up keys then left hundreds of MiB resident. Reused, a KDF thread holds one copy, as large as the
    /// largest hash it verified (bounded by the importable ceilings).
    static ARGON2_MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `token` is the Argon2 hash `phc`, with the parameters `phc` names, in this thread's kept memory. A
/// hash whose algorithm, version, parameters, salt or output cannot be used never matches.
fn verify_argon2(token: &[u8], phc: &PasswordHash) -> bool {
    let Ok(algorithm) = Algorithm::try_from(phc.algorithm.as_str()) else {
        return false;
    };
    let version = match phc.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let (Ok(params), Some(salt), Some(expected)) = (Params::try_from(phc), &phc.salt, &phc.hash)
    else {
        return false;
    };
    let blocks = params.block_count();
    let context = Argon2::new(algorithm, version, params);
    let mut buffer = [0u8; 64];
    let Some(out) = buffer.get_mut(..expected.len()) else {
        return false;
    };
    let hashed = ARGON2_MEMORY.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, argon2::Block::new());
        }
        context
            .hash_password_into_with_memory(token, salt.as_ref(), &mut *out, &mut memory[..blocks])
            .is_ok()
    });
    hashed && bool::from(out.ct_eq(expected.as_bytes()))
}

/// Constant-time equality of two digests: OR of XORs, with one optimisation barrier on the result (cheaper than
/// `subtle`'s barrier per byte, and just as free of data-dependent branches).
fn equal_32(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    bool::from(diff.ct_eq(&0))
}

#[cfg(feature = "bcrypt")]
fn verify_bcrypt(token: &[u8], hash: &str) -> Result<bool, HashError> {
    // bcrypt reads at most 72 bytes; legacy implementations silently cut longer keys there, so do the same to
    // verify what they hashed.
    let token = &token[..token.len().min(72)];
    Ok(bcrypt::verify(token, hash).unwrap_or(false))
}

#[cfg(not(feature = "bcrypt"))]
fn verify_bcrypt(_token: &[u8], _hash: &str) -> Result<bool, HashError> {
    Err(HashError::FeatureDisabled(HashScheme::Bcrypt))
}
