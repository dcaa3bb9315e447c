//! The vault: AES-256-GCM encryption of provider keys at rest, under a keyring of master keys.
//!
//! # Stored format
//!
//! A sealed credential is the text `kmv1:<key-id>:<nonce>:<ciphertext>`, where
//! - `key-id` is the master key's id (`[A-Za-z0-9-]{1,32}`);
//! - `nonce` is the 12-byte (96-bit) AES-GCM nonce, fresh from the CSPRNG for every encryption, in unpadded
//!   URL-safe base64 (RFC 4648 §5);
//! - `ciphertext` is the AES-256-GCM ciphertext followed by its 16-byte tag, in unpadded URL-safe base64.
//!
//! The associated data binds the ciphertext to where it belongs, so a row copied to another owner, provider or
//! master key fails to decrypt:
//!
//! ```text
//! "keymeter-credential-v1" 0x00 scope 0x00 owner 0x00 provider 0x00 key-id
//! ```
//!
//! with `scope` = `user` or `system`, `owner` empty for system keys, every part UTF-8 (none may contain NUL).
//! `tests/fixtures/vault_vector.json` holds a vector made with Python's `cryptography` package.

use std::fmt;
use std::sync::Arc;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use zeroize::Zeroizing;

use crate::credentials::provider::Provider;
use crate::error::{Error, Result};
use crate::random::{OsRandom, RandomSource};
use crate::secret::{KeyRing, RingKey, is_valid_key_id};

const TAG: &str = "kmv1";
const AAD_PREFIX: &[u8] = b"keymeter-credential-v1\0";

/// Whose key a credential is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CredentialScope {
    /// A user's own key.
    User(String),
    /// The operator's system key.
    System,
}

impl CredentialScope {
    /// Checks a user scope's owner (1–256 characters, no control characters), as every backend does before
    /// storing (the variant is public, so a scope need not come from [`CredentialScope::user`]).
    ///
    /// # Errors
    /// [`Error::InvalidInput`].
    pub fn validate(&self) -> Result<()> {
        match self {
            CredentialScope::User(owner) => crate::validate::name("owner", owner),
            CredentialScope::System => Ok(()),
        }
    }

    /// `user` or `system`.
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialScope::User(_) => "user",
            CredentialScope::System => "system",
        }
    }

    /// The owner, empty for system keys.
    pub fn owner(&self) -> &str {
        match self {
            CredentialScope::User(owner) => owner,
            CredentialScope::System => "",
        }
    }

    /// A user scope, checking the owner.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty owner or one with control characters.
    pub fn user(owner: &str) -> Result<Self> {
        crate::validate::name("owner", owner)?;
        Ok(CredentialScope::User(owner.to_owned()))
    }
}

/// Why a sealed credential cannot be opened. Never carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The text is not `kmv1:<key-id>:<nonce>:<ciphertext>`.
    #[error("malformed sealed credential: {0}")]
    Malformed(&'static str),
    /// Sealed under a master key the keyring lacks.
    #[error("unknown master key {0:?}")]
    UnknownKey(String),
    /// Authentication failed: tampered, moved to another owner or provider, or the wrong master key.
    #[error("the credential does not decrypt for this owner, provider and master key")]
    Decrypt,
}

/// An encrypted credential, as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedCredential {
    key_id: String,
    nonce: [u8; 12],
    ciphertext: Vec<u8>,
}

impl fmt::Debug for SealedCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealedCredential(key {:?}, {} bytes)",
            self.key_id,
            self.ciphertext.len()
        )
    }
}

/// Parses the stored text form.
///
/// # Errors
/// [`VaultError::Malformed`].
impl std::str::FromStr for SealedCredential {
    type Err = VaultError;

    fn from_str(text: &str) -> std::result::Result<Self, VaultError> {
        let mut parts = text.split(':');
        if parts.next() != Some(TAG) {
            return Err(VaultError::Malformed("expected the kmv1: prefix"));
        }
        let (Some(key_id), Some(nonce), Some(ct), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(VaultError::Malformed(
                "expected kmv1:<key-id>:<nonce>:<ciphertext>",
            ));
        };
        if !is_valid_key_id(key_id) {
            return Err(VaultError::Malformed("invalid master key id"));
        }
        let mut n = [0u8; 12];
        match URL_SAFE_NO_PAD.decode_slice(nonce, &mut n) {
            Ok(12) if nonce.len() == 16 => {}
            _ => {
                return Err(VaultError::Malformed(
                    "the nonce must be 12 bytes of unpadded URL-safe base64",
                ));
            }
        }
        let ciphertext = URL_SAFE_NO_PAD
            .decode(ct)
            .map_err(|_| VaultError::Malformed("the ciphertext is not unpadded URL-safe base64"))?;
        if ciphertext.len() < 16 || ciphertext.len() > 4096 {
            return Err(VaultError::Malformed(
                "the ciphertext must be 16 to 4096 bytes",
            ));
        }
        Ok(SealedCredential {
            key_id: key_id.to_owned(),
            nonce: n,
            ciphertext,
        })
    }
}

impl SealedCredential {
    /// The master key id it is sealed under.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The stored text form.
    pub fn to_text(&self) -> String {
        format!(
            "{TAG}:{}:{}:{}",
            self.key_id,
            URL_SAFE_NO_PAD.encode(self.nonce),
            URL_SAFE_NO_PAD.encode(&self.ciphertext)
        )
    }
}

/// A 256-bit master key with an id. Redacted in `Debug`, zeroized on drop.
pub struct MasterKey {
    id: String,
    key: SecretBox<[u8; 32]>,
    cipher: Aes256Gcm,
}

impl fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MasterKey({:?}, [REDACTED])", self.id)
    }
}

impl RingKey for MasterKey {
    const WHAT: &'static str = "master key";

    fn from_bytes(id: &str, key: SecretBox<[u8; 32]>) -> Result<Self> {
        MasterKey::new(id, key)
    }

    fn id(&self) -> &str {
        &self.id
    }

    fn bytes(&self) -> &SecretBox<[u8; 32]> {
        &self.key
    }
}

impl MasterKey {
    /// A master key from its bytes.
    ///
    /// # Errors
    /// [`Error::Config`] for an invalid id.
    pub fn new(id: &str, key: SecretBox<[u8; 32]>) -> Result<Self> {
        if !is_valid_key_id(id) {
            return Err(Error::Config(
                "invalid master key id: use 1–32 characters of [A-Za-z0-9-]".into(),
            ));
        }
        let cipher = Aes256Gcm::new_from_slice(key.expose_secret())
            .map_err(|_| Error::Config("a master key must be 32 bytes".into()))?;
        Ok(MasterKey {
            id: id.to_owned(),
            key,
            cipher,
        })
    }

    /// A fresh random master key.
    ///
    /// # Errors
    /// [`Error::Random`]; [`Error::Config`] for an invalid id.
    pub fn generate(id: &str, random: &dyn RandomSource) -> Result<Self> {
        <MasterKey as RingKey>::generate(id, random)
    }

    /// A master key from standard base64 of 32 bytes.
    ///
    /// # Errors
    /// [`Error::Config`], never echoing the key.
    pub fn from_base64(id: &str, b64: &str) -> Result<Self> {
        <MasterKey as RingKey>::from_base64(id, b64)
    }

    /// The id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `id:base64`, for `KEYMETER_MASTER_KEYS`. Handle it as a secret.
    pub fn to_env_entry(&self) -> SecretString {
        <MasterKey as RingKey>::to_env_entry(self)
    }
}

/// Master keys by id; the first is active (new encryptions use it), the others still decrypt.
pub type MasterKeyRing = KeyRing<MasterKey>;

/// The associated data for a credential (see the module docs).
pub fn associated_data(scope: &CredentialScope, provider: &Provider, key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(AAD_PREFIX.len() + 64);
    aad.extend_from_slice(AAD_PREFIX);
    aad.extend_from_slice(scope.kind().as_bytes());
    aad.push(0);
    aad.extend_from_slice(scope.owner().as_bytes());
    aad.push(0);
    aad.extend_from_slice(provider.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

/// The associated data of a secret sealed for a context ([`Vault::seal_for`]).
fn context_data(context: &[u8], key_id: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(32 + context.len() + key_id.len());
    aad.extend_from_slice(b"keymeter-sealed-secret/v1\0");
    aad.extend_from_slice(context);
    aad.push(0);
    aad.extend_from_slice(key_id.as_bytes());
    aad
}

/// Seals and opens provider keys.
///
/// ```
/// use keymeter::credentials::{CredentialScope, MasterKey, MasterKeyRing, Provider, Vault};
/// use keymeter::random::OsRandom;
/// use secrecy::ExposeSecret;
///
/// let vault = Vault::new(MasterKeyRing::new(vec![MasterKey::generate("k1", &OsRandom).unwrap()]).unwrap());
/// let alice = CredentialScope::user("alice").unwrap();
/// let sealed = vault.seal(&alice, &Provider::anthropic(), "sk-ant-api03-secret").unwrap();
/// assert_eq!(vault.open(&alice, &Provider::anthropic(), &sealed).unwrap().expose_secret(), "sk-ant-api03-secret");
/// let bob = CredentialScope::user("bob").unwrap();
/// assert!(vault.open(&bob, &Provider::anthropic(), &sealed).is_err());
/// ```
pub struct Vault {
    keys: MasterKeyRing,
    random: Arc<dyn RandomSource>,
}

impl fmt::Debug for Vault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vault")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl Vault {
    /// A vault drawing nonces from the OS CSPRNG.
    pub fn new(keys: MasterKeyRing) -> Self {
        Vault {
            keys,
            random: Arc::new(OsRandom),
        }
    }

    /// Injects the nonce source (tests).
    #[must_use]
    pub fn with_random(mut self, random: Arc<dyn RandomSource>) -> Self {
        self.random = random;
        self
    }

    /// The keyring.
    pub fn keys(&self) -> &MasterKeyRing {
        &self.keys
    }

    /// Encrypts `plaintext` for `scope` and `provider` under the active master key, with a fresh nonce.
    ///
    /// # Errors
    /// [`Error::Random`] when no nonce can be drawn.
    pub fn seal(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        plaintext: &str,
    ) -> Result<SealedCredential> {
        self.seal_with(|key_id| associated_data(scope, provider, key_id), plaintext)
    }

    /// Decrypts a credential of `scope` and `provider`.
    ///
    /// # Errors
    /// [`VaultError::UnknownKey`]; [`VaultError::Decrypt`] for tampered data, another owner or provider, or the
    /// wrong key.
    pub fn open(
        &self,
        scope: &CredentialScope,
        provider: &Provider,
        sealed: &SealedCredential,
    ) -> Result<SecretString, VaultError> {
        self.open_with(|key_id| associated_data(scope, provider, key_id), sealed)
    }

    /// Encrypts `plaintext` bound to `context` (what the secret is and whose: a webhook endpoint's signing
    /// secret is bound to the endpoint's id), under the active master key. The associated data differs from a
    /// provider credential's in kind, so neither opens as the other.
    ///
    /// ```
    /// # use keymeter::credentials::{MasterKey, MasterKeyRing, Vault};
    /// # let vault = Vault::new(MasterKeyRing::new(vec![MasterKey::generate("k1", &keymeter::random::OsRandom).unwrap()]).unwrap());
    /// let sealed = vault.seal_for(b"webhook\0whk_1", "whsec_abc")?;
    /// use keymeter::ExposeSecret;
    /// assert_eq!(vault.open_for(b"webhook\0whk_1", &sealed).unwrap().expose_secret(), "whsec_abc");
    /// assert!(vault.open_for(b"webhook\0whk_2", &sealed).is_err());
    /// # Ok::<(), keymeter::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Random`] when no nonce can be drawn.
    pub fn seal_for(&self, context: &[u8], plaintext: &str) -> Result<SealedCredential> {
        self.seal_with(|key_id| context_data(context, key_id), plaintext)
    }

    /// Decrypts what [`Vault::seal_for`] sealed for `context`.
    ///
    /// # Errors
    /// [`VaultError::UnknownKey`]; [`VaultError::Decrypt`] for tampered data, another context or the wrong key.
    pub fn open_for(
        &self,
        context: &[u8],
        sealed: &SealedCredential,
    ) -> Result<SecretString, VaultError> {
        self.open_with(|key_id| context_data(context, key_id), sealed)
    }

    /// Encrypts under the active key with a fresh nonce and the associated data `aad` gives for that key's id.
    fn seal_with(
        &self,
        aad: impl Fn(&str) -> Vec<u8>,
        plaintext: &str,
    ) -> Result<SealedCredential> {
        let key = self.keys.active();
        let mut nonce = [0u8; 12];
        self.random.fill(&mut nonce)?;
        let ciphertext = key
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: &aad(&key.id),
                },
            )
            .map_err(|_| Error::Internal("AES-GCM encryption failed".into()))?;
        Ok(SealedCredential {
            key_id: key.id.clone(),
            nonce,
            ciphertext,
        })
    }

    /// Decrypts under the key `sealed` names, with the associated data `aad` gives for its id.
    fn open_with(
        &self,
        aad: impl Fn(&str) -> Vec<u8>,
        sealed: &SealedCredential,
    ) -> Result<SecretString, VaultError> {
        let key = self
            .keys
            .get(&sealed.key_id)
            .ok_or_else(|| VaultError::UnknownKey(sealed.key_id.clone()))?;
        let plaintext = Zeroizing::new(
            key.cipher
                .decrypt(
                    &Nonce::from(sealed.nonce),
                    Payload {
                        msg: &sealed.ciphertext,
                        aad: &aad(&key.id),
                    },
                )
                .map_err(|_| VaultError::Decrypt)?,
        );
        let text = std::str::from_utf8(&plaintext).map_err(|_| VaultError::Decrypt)?;
        Ok(SecretString::from(text))
    }

    /// Whether `sealed` is under another key than the active one.
    pub fn needs_rewrap(&self, sealed: &SealedCredential) -> bool {
        sealed.key_id != self.keys.active().id
    }
}
