//! The [`KeyIssuer`]: creates keys (and imports hashes of keys made elsewhere).

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};

use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::keys::hash::{HashScheme, KeyHash, KeyHasher};
use crate::keys::models::ModelRule;
use crate::keys::record::{KeyLookup, KeyRecord, RateLimit};
use crate::keys::scope::Scope;
use crate::keys::token::{self, DEFAULT_PREFIX, KeyEnv};
use crate::random::{OsRandom, RandomSource};

/// What a new key should be. Build with [`NewKey::new`] and the setters.
#[derive(Debug, Clone, PartialEq)]
pub struct NewKey {
    /// A human name.
    pub name: String,
    /// The owning user.
    pub owner: String,
    /// The owning organisation.
    pub org: Option<String>,
    /// `live` (default) or `test`.
    pub env: KeyEnv,
    /// Granted scopes.
    pub scopes: Vec<Scope>,
    /// Expiry, if any.
    pub expires_at: Option<DateTime<Utc>>,
    /// Allowed client networks; empty allows any.
    pub allowed_ips: Vec<IpNet>,
    /// Rate limit, if any.
    pub rate_limit: Option<RateLimit>,
    /// The models the key may call; empty allows any.
    pub allowed_models: Vec<ModelRule>,
    /// Token prefix (default `km`).
    pub prefix: String,
    /// Free-form JSON metadata (default `{}`).
    pub metadata: serde_json::Value,
    /// Tags every event of the key carries ([`crate::ledger::event::check_tags`]).
    pub tags: Vec<String>,
    /// The key creating this one on its owner's behalf ([`KeyRecord::created_by`]).
    pub created_by: Option<String>,
}

impl NewKey {
    /// A live key named `name` for `owner`, with no scopes.
    pub fn new(name: impl Into<String>, owner: impl Into<String>) -> Self {
        NewKey {
            name: name.into(),
            owner: owner.into(),
            org: None,
            env: KeyEnv::Live,
            scopes: Vec::new(),
            expires_at: None,
            allowed_ips: Vec::new(),
            rate_limit: None,
            allowed_models: Vec::new(),
            prefix: DEFAULT_PREFIX.to_owned(),
            metadata: serde_json::Value::Object(Default::default()),
            tags: Vec::new(),
            created_by: None,
        }
    }

    /// Sets the organisation.
    #[must_use]
    pub fn org(mut self, org: impl Into<String>) -> Self {
        self.org = Some(org.into());
        self
    }

    /// Sets the environment tag.
    #[must_use]
    pub fn env(mut self, env: KeyEnv) -> Self {
        self.env = env;
        self
    }

    /// Sets the scopes.
    #[must_use]
    pub fn scopes(mut self, scopes: Vec<Scope>) -> Self {
        self.scopes = scopes;
        self
    }

    /// Sets the expiry.
    #[must_use]
    pub fn expires_at(mut self, at: DateTime<Utc>) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// Sets the allowed networks.
    #[must_use]
    pub fn allowed_ips(mut self, nets: Vec<IpNet>) -> Self {
        self.allowed_ips = nets;
        self
    }

    /// Sets the rate limit.
    #[must_use]
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Sets the models the key may call ([`crate::keys::models`]).
    ///
    /// ```
    /// use keymeter::keys::{NewKey, models::parse_rules};
    ///
    /// let key = NewKey::new("ci", "alice").allowed_models(parse_rules("gpt-4o*,anthropic/*")?);
    /// assert_eq!(key.allowed_models.len(), 2);
    /// # Ok::<(), keymeter::Error>(())
    /// ```
    #[must_use]
    pub fn allowed_models(mut self, rules: Vec<ModelRule>) -> Self {
        self.allowed_models = rules;
        self
    }

    /// Sets the token prefix.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Sets the tags every event of the key carries.
    #[must_use]
    pub fn tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    /// Records the key creating this one: revoking it revokes this key too.
    #[must_use]
    pub fn created_by(mut self, key_id: impl Into<String>) -> Self {
        self.created_by = Some(key_id.into());
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn metadata(mut self, metadata: serde_json::Value) -> Self {
        self.metadata = metadata;
        self
    }

    fn validate(&self) -> Result<()> {
        crate::validate::name("name", &self.name)?;
        crate::validate::name("owner", &self.owner)?;
        if let Some(org) = &self.org {
            crate::validate::name("org", org)?;
        }
        if let Some(creator) = &self.created_by {
            crate::validate::name("created_by", creator)?;
        }
        crate::keys::patch::check_metadata(&self.metadata)?;
        crate::ledger::event::check_tags(&self.tags)?;
        crate::keys::models::check_rules(&self.allowed_models)
    }

    fn into_record(
        self,
        id: String,
        hash: KeyHash,
        lookup: KeyLookup,
        hint: String,
        now: DateTime<Utc>,
    ) -> KeyRecord {
        // Stores keep microseconds; truncating here makes the returned record equal the stored one.
        let micros = |t: DateTime<Utc>| t.trunc_subsecs(6);
        KeyRecord {
            id,
            name: self.name,
            owner: self.owner,
            org: self.org,
            env: self.env,
            scopes: self.scopes,
            hash,
            lookup,
            hint,
            created_at: micros(now),
            expires_at: self.expires_at.map(micros),
            last_used_at: None,
            disabled: false,
            revoked_at: None,
            allowed_ips: self.allowed_ips,
            rate_limit: self.rate_limit,
            allowed_models: self.allowed_models,
            metadata: self.metadata,
            tags: self.tags,
            previous: None,
            created_by: self.created_by,
        }
    }
}

/// A freshly issued key: the record and the plaintext token, which exists only here. Show it to the user once.
pub struct IssuedKey {
    /// The stored record.
    pub record: KeyRecord,
    /// The token (a secret: redacted in `Debug`, zeroized on drop).
    pub token: SecretString,
}

impl fmt::Debug for IssuedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedKey")
            .field("record", &self.record)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

/// A rotated key: the same id, a new secret shown this once, and when the previous secret stops working.
pub struct RotatedKey {
    /// The key's id (unchanged).
    pub id: String,
    /// The new token (a secret: redacted in `Debug`, zeroized on drop).
    pub token: SecretString,
    /// The new token's display hint.
    pub hint: String,
    /// The end of the previous secret's grace period; `None` when it stopped at once.
    pub grace_until: Option<DateTime<Utc>>,
}

impl fmt::Debug for RotatedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RotatedKey")
            .field("id", &self.id)
            .field("token", &"[REDACTED]")
            .field("hint", &self.hint)
            .field("grace_until", &self.grace_until)
            .finish()
    }
}

/// Issues keys into a [`KeyStore`](crate::keys::KeyStore).
#[derive(Debug)]
pub struct KeyIssuer {
    store: Arc<dyn crate::keys::KeyStore>,
    hasher: Arc<KeyHasher>,
    clock: Arc<dyn Clock>,
    random: Arc<dyn RandomSource>,
    hint_len: usize,
}

impl KeyIssuer {
    /// An issuer with the system clock and the OS random source; imported hints are 8 characters.
    pub fn new(store: Arc<dyn crate::keys::KeyStore>, hasher: Arc<KeyHasher>) -> Self {
        KeyIssuer {
            store,
            hasher,
            clock: Arc::new(SystemClock),
            random: Arc::new(OsRandom),
            hint_len: 8,
        }
    }

    /// Injects the clock.
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Injects the random source of ids and secrets.
    #[must_use]
    pub fn with_random(mut self, random: Arc<dyn RandomSource>) -> Self {
        self.random = random;
        self
    }

    /// Sets the hint length required of imports (must match the verifier's `hint_len`).
    #[must_use]
    pub fn with_hint_len(mut self, len: usize) -> Self {
        self.hint_len = len;
        self
    }

    /// Generates, hashes (HMAC-SHA-256 under the active pepper) and stores a new key.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a bad field or prefix; [`Error::OwnerInOtherOrganisation`] when the owner's
    /// keys are in another organisation (or in none); store failures. An id collision (about 2⁻⁷¹ per pair) is
    /// retried with a fresh id.
    pub async fn issue(&self, new: NewKey) -> Result<IssuedKey> {
        new.validate()?;
        self.check_organisation(&new).await?;
        let now = self.clock.now();
        let mut attempts = 0;
        loop {
            let (id, token) = token::generate(&new.prefix, new.env, self.random.as_ref())?;
            let hash = self.hasher.hash_hmac(token.expose_secret().as_bytes());
            let hint = token::display_hint(token.expose_secret());
            let record = new.clone().into_record(id, hash, KeyLookup::Id, hint, now);
            match self.store.create(&record).await {
                Ok(()) => return Ok(IssuedKey { record, token }),
                Err(Error::AlreadyExists { .. }) if attempts < 3 => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// An owner belongs to one organisation (or none), bound by its first key: a key for an owner
    /// with keys must name the same organisation, so an organisation's admin never makes keys that act as
    /// another organisation's owner (its usage, budget and provider keys). Two first keys made at the same
    /// instant in two organisations are not caught here (the store holds no owner table). The owner's keys all
    /// share one organisation, so its oldest key tells it: one row read, however many keys the owner has.
    async fn check_organisation(&self, new: &NewKey) -> Result<()> {
        let filter = crate::keys::KeyFilter::new()
            .owner(new.owner.clone())
            .limit(1);
        if self
            .store
            .list(&filter)
            .await?
            .iter()
            .any(|k| k.org != new.org)
        {
            return Err(Error::OwnerInOtherOrganisation {
                owner: new.owner.clone(),
            });
        }
        Ok(())
    }

    /// Gives the generated key `id` a new secret, keeping its id (so its budgets, limits, statistics and ledger
    /// rows continue). The previous secret keeps working for `grace` (zero or less: it stops at once); a key
    /// holds at most one previous secret, so rotating again ends the older one's grace. One atomic store call.
    ///
    /// A [`Verifier`](crate::keys::Verifier) in the same process holds no stale answer for HMAC keys (the hash
    /// is compared on every verify); [`Verifier::rotate`](crate::keys::Verifier::rotate) also clears its cache.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use keymeter::keys::*;
    /// # use keymeter::store::memory::MemoryStore;
    /// # use keymeter::random::OsRandom;
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> keymeter::Result<()> {
    /// # let store = Arc::new(MemoryStore::new());
    /// # let hasher = Arc::new(KeyHasher::new(PepperRing::new(vec![Pepper::generate("p1", &OsRandom)?])?));
    /// let issuer = KeyIssuer::new(store.clone(), hasher.clone());
    /// let verifier = Verifier::new(store, hasher, VerifierConfig::default())?;
    /// let old = issuer.issue(NewKey::new("ci", "alice")).await?;
    /// let new = issuer.rotate(&old.record.id, chrono::Duration::hours(24)).await?;
    /// assert_eq!(new.id, old.record.id);
    /// use secrecy::ExposeSecret;
    /// for token in [old.token.expose_secret(), new.token.expose_secret()] {
    ///     assert!(verifier.verify(token, &Requirement::new()).await?.is_valid()); // both, for 24 hours
    /// }
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown id; [`Error::InvalidInput`] for a revoked or an imported key;
    /// [`Error::Random`]; store failures.
    pub async fn rotate(&self, id: &str, grace: chrono::Duration) -> Result<RotatedKey> {
        let record = self
            .store
            .get(id)
            .await?
            .ok_or_else(|| Error::key_not_found(id))?;
        crate::keys::store::check_rotatable(
            record.revoked_at.is_some(),
            record.lookup == KeyLookup::Id,
        )?;
        // A generated key's display hint begins with its token's prefix: `km_live_Ab3d…9xYz`.
        let prefix = record
            .hint
            .split('_')
            .next()
            .filter(|p| token::is_valid_prefix(p))
            .ok_or_else(|| Error::invalid("key", "its display hint names no token prefix"))?;
        let token = token::generate_for(prefix, record.env, &record.id, self.random.as_ref())?;
        let hash = self.hasher.hash_hmac(token.expose_secret().as_bytes());
        let now = self.clock.now().trunc_subsecs(6);
        let grace_until = if grace > chrono::Duration::zero() {
            Some(now.checked_add_signed(grace).ok_or_else(|| {
                Error::invalid(
                    "grace",
                    "too long: the grace period ends past the year 262143",
                )
            })?)
        } else {
            None
        };
        self.store.rotate(&record.id, &hash, grace_until).await?;
        Ok(RotatedKey {
            id: record.id.clone(),
            hint: token::display_hint(token.expose_secret()),
            token,
            grace_until,
        })
    }

    /// Imports a key made elsewhere from its hash string.
    ///
    /// - `$sha256$…` is found by its digest; `hint` is not needed.
    /// - Any other scheme needs `hint`: the key's first `hint_len` characters. Only a keyed digest of it is
    ///   stored ([`KeyHasher::hint_digest`]), and the record's display hint does not show it.
    ///
    /// A slow hash over the hasher's [`KdfLimits`](crate::keys::KdfLimits), and an `$hmac-sha256$` under a
    /// pepper the ring lacks, are refused.
    ///
    /// # Errors
    /// [`Error::Hash`] for a hash string that does not parse, is over the ceilings, names an unknown pepper, or
    /// needs the `bcrypt` feature; [`Error::InvalidInput`] for a missing or wrong-length hint;
    /// [`Error::OwnerInOtherOrganisation`] as [`KeyIssuer::issue`]; [`Error::HintFull`]; store failures.
    pub async fn import(&self, new: NewKey, hash: &str, hint: Option<&str>) -> Result<KeyRecord> {
        new.validate()?;
        self.check_organisation(&new).await?;
        let hash = KeyHash::from_str(hash.trim())?;
        if hash.scheme() == HashScheme::Bcrypt && !cfg!(feature = "bcrypt") {
            return Err(crate::keys::hash::HashError::FeatureDisabled(HashScheme::Bcrypt).into());
        }
        self.hasher.check_importable(&hash)?;
        if let Some(h) = hint
            && (h.len() != self.hint_len || !h.bytes().all(|b| b.is_ascii_graphic()))
        {
            return Err(Error::invalid(
                "hint",
                format!("must be the key's first {} characters", self.hint_len),
            ));
        }
        let lookup = match (hash.sha256_hex(), hint) {
            (Some(hex), _) => KeyLookup::Digest(hex.to_owned()),
            (None, Some(h)) => KeyLookup::Hint(self.hasher.hint_digest(h.as_bytes())),
            (None, None) => {
                return Err(Error::invalid(
                    "hint",
                    format!(
                        "a {} hash needs a hint: the key's first {} characters",
                        hash.scheme(),
                        self.hint_len
                    ),
                ));
            }
        };
        let display = format!("(imported {})", hash.scheme());
        let mut attempts = 0;
        loop {
            let mut id = [0u8; token::ID_LEN];
            crate::random::fill_base62(self.random.as_ref(), &mut id)?;
            let id: String = id.iter().map(|&b| char::from(b)).collect();
            let record = new.clone().into_record(
                id,
                hash.clone(),
                lookup.clone(),
                display.clone(),
                self.clock.now(),
            );
            match self.store.create(&record).await {
                Ok(()) => return Ok(record),
                Err(Error::AlreadyExists { what: "key", .. })
                    if attempts < 3 && matches!(lookup, KeyLookup::Hint(_)) =>
                {
                    attempts += 1
                }
                Err(e) => return Err(e),
            }
        }
    }
}
