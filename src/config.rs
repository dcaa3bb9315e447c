//! [`Config`]: keymeter reads its own configuration, so an application, the CLI and the reference gateway load
//! secrets and the store the same way.
//!
//! | variable | meaning | default |
//! | --- | --- | --- |
//! | `KEYMETER_STORE` | the store URL ([`crate::store::connect`]) | `sqlite://keymeter.db` |
//! | `KEYMETER_PEPPER` | the pepper ring: `id:base64,id:base64` (the first active) or one bare base64 key | development: the secrets file |
//! | `KEYMETER_MASTER_KEYS` | the master-key ring, same format | development: the secrets file |
//! | `KEYMETER_PREFIXES` | token prefixes verified as keymeter's own, comma-separated | `km` |
//! | `KEYMETER_CATALOG` | a price catalog file (keymeter's format or LiteLLM's) | the bundled snapshot |
//! | `KEYMETER_LIMITER` | where rate limits and concurrency slots live: `memory` (this process, written to the store in batches), `leased` (slices of the store's buckets spent in memory: [`crate::limits::LeasedLimiter`]), `store` (a store transaction per check), `redis://…` (feature `redis`) | `memory` on SQLite, `leased` on PostgreSQL |
//! | `KEYMETER_LIMITS_FAIL_OPEN` | `1`/`true`: admit requests when the limiter cannot be reached | fail closed |
//! | `KEYMETER_FAILED_VERIFICATIONS` | failed verifications of imported keys allowed per client address before it is refused without a KDF: `N/PERIOD`, or `off` | `10/min` |
//! | `KEYMETER_KEY_CACHE` | key records cached in process by [`Config::key_cache`] (`0`: none) | 10000 |
//! | `KEYMETER_JOURNAL` | the journal directory ([`crate::ledger::journal`]) | `keymeter.journal` beside a SQLite database; none otherwise |
//! | `KEYMETER_JOURNAL_SYNC` | when journal records reach the disk: `always`, or an interval such as `10ms` | `10ms` |
//! | `KEYMETER_CLAIM_TTL` | how long a journaled instance's claims live without its heartbeat; past it, they are billed as estimated | `30s` |
//! | `KEYMETER_INSTANCE_ID` | this instance's stable id | one kept in the journal directory |
//! | `KEYMETER_LEASES` | budget leases ([`crate::ledger::lease`]) with a journal: their window, such as `1s`, or `off` (every hold reserved in the store) | `1s` |
//! | `KEYMETER_ENV`, `DEPLOY_ENV`, `DEBUG` | the environment ([`crate::env`]) | development, with a warning |
//! | `KEYMETER_WEBHOOK_TIMEOUT`, `…_RETRY`, `…_ATTEMPTS`, `KEYMETER_GITHUB_KEYS` | alert delivery and leak intake ([`crate::alerts::AlertSettings`]) | 10s, 10s, 12, GitHub's URL |
//!
//! In development (only), a secret missing from the environment is read from the **secrets file**
//! `keymeter.secrets` beside a SQLite database (in the working directory for a PostgreSQL one), which [`Config::init_secrets`] (`keymeter init`) writes with mode
//! 0600. Outside development a missing secret is an error when something needs it, never generated.
//!
//! ```
//! use std::collections::HashMap;
//! use keymeter::Config;
//!
//! let vars = HashMap::from([
//!     ("KEYMETER_ENV".to_string(), "production".to_string()),
//!     ("KEYMETER_STORE".to_string(), "memory:".to_string()),
//!     ("KEYMETER_PEPPER".to_string(), "p1:AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=".to_string()),
//! ]);
//! let config = Config::from_source(&vars).unwrap();
//! assert!(config.hasher().is_ok());
//! // No master keys: what needs the vault says so, naming the variable.
//! assert!(config.vault().unwrap_err().to_string().contains("KEYMETER_MASTER_KEYS"));
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use secrecy::ExposeSecret;
use zeroize::Zeroizing;

use crate::credentials::{CredentialResolver, CredentialStore, MasterKeyRing, Vault};
use crate::env::{Detected, EnvSource, ProcessEnv, detect};
use crate::error::{Error, Result};
use crate::keys::{
    CachedKeyStore, KeyHasher, KeyIssuer, KeyStore, PepperRing, Verifier, VerifierConfig,
};
use crate::ledger::{Ledger, Meter};
use crate::pricing::PriceCatalog;
use crate::random::RandomSource;
use crate::secret::{KeyRing, RingKey};
use crate::store::Store;

/// Key records [`Config::key_cache`] keeps unless `KEYMETER_KEY_CACHE` says otherwise.
const DEFAULT_KEY_CACHE: usize = 10_000;

/// The store URL used when `KEYMETER_STORE` is not set.
pub const DEFAULT_STORE: &str = "sqlite://keymeter.db";

/// The name of the development secrets file, beside a SQLite database.
pub const SECRETS_FILE_NAME: &str = "keymeter.secrets";

const PEPPER_VAR: &str = "KEYMETER_PEPPER";
const MASTER_KEYS_VAR: &str = "KEYMETER_MASTER_KEYS";

/// keymeter's configuration, read from the environment (see the module docs).
#[derive(Debug)]
pub struct Config {
    /// The store URL.
    pub store_url: String,
    /// The environment and the rule that decided it.
    pub environment: Detected,
    /// Token prefixes verified as keymeter's own.
    pub prefixes: Vec<String>,
    /// A price catalog file, if one is configured.
    pub catalog_path: Option<PathBuf>,
    /// Where development secrets live (beside a SQLite database), whether or not the file exists yet.
    pub secrets_file: Option<PathBuf>,
    /// Where rate limits live as `KEYMETER_LIMITER` says: `memory`, `leased`, `store` or `redis://…`; `None`:
    /// memory on SQLite and in-memory stores, leased from the store on PostgreSQL ([`Config::open`]).
    pub limiter_url: Option<String>,
    /// Admit requests when the limiter cannot be reached (default: refuse them).
    pub limits_fail_open: bool,
    /// How many key records [`Config::key_cache`] keeps in process (0: none).
    pub key_cache: usize,
    /// Failed verifications allowed per client address before the verifier refuses it any KDF
    /// (`KEYMETER_FAILED_VERIFICATIONS`; `None`: no budget).
    pub failed_verifications: Option<crate::limits::Quota>,
    /// The journal's directory: `KEYMETER_JOURNAL`, else `keymeter.journal` beside a SQLite database file.
    pub journal_dir: Option<PathBuf>,
    /// When journal records reach the disk (`KEYMETER_JOURNAL_SYNC`).
    pub journal_sync: crate::ledger::journal::SyncPolicy,
    /// How long this instance's claims live without its heartbeat (`KEYMETER_CLAIM_TTL`, at least 1 s).
    pub claim_ttl: chrono::Duration,
    /// This instance's id (`KEYMETER_INSTANCE_ID`), if set.
    pub instance_id: Option<String>,
    /// The window of budget leases (`KEYMETER_LEASES`); `None`: no leases, every hold is reserved in the store.
    /// Leases need a journal.
    pub lease_window: Option<std::time::Duration>,
    /// Webhook delivery and leak intake ([`crate::alerts::AlertSettings`]: `KEYMETER_WEBHOOK_*`,
    /// `KEYMETER_GITHUB_KEYS`).
    pub alerts: crate::alerts::AlertSettings,
    hasher: Option<Arc<KeyHasher>>,
    vault: Option<Arc<Vault>>,
    warnings: Vec<String>,
}

impl Config {
    /// Reads the process environment.
    ///
    /// # Errors
    /// As [`Config::from_source`].
    pub fn from_env() -> Result<Config> {
        Config::from_source(&ProcessEnv)
    }

    /// Reads `source` (a map in tests).
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown environment, a malformed secret (naming the variable and the entry's
    /// position, never its text), an unreadable secrets file or a bad prefix.
    pub fn from_source(source: &dyn EnvSource) -> Result<Config> {
        let environment = detect(source)?;
        let mut warnings = Vec::new();
        if let Some(w) = &environment.warning {
            tracing::warn!(warning = %w, "keymeter environment");
            warnings.push(w.clone());
        }
        let store_url = source
            .var("KEYMETER_STORE")
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_STORE.to_owned());
        let prefixes = match source.var("KEYMETER_PREFIXES") {
            Some(list) if !list.trim().is_empty() => {
                let prefixes: Vec<String> = list
                    .split(',')
                    .map(|p| p.trim().to_owned())
                    .filter(|p| !p.is_empty())
                    .collect();
                if prefixes
                    .iter()
                    .any(|p| !crate::keys::token::is_valid_prefix(p))
                {
                    return Err(Error::Config(
                        "KEYMETER_PREFIXES: each prefix must be 1–16 characters of [a-z0-9]".into(),
                    ));
                }
                prefixes
            }
            _ => vec![crate::keys::token::DEFAULT_PREFIX.to_owned()],
        };
        let catalog_path = source
            .var("KEYMETER_CATALOG")
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from);
        let limiter_url = source
            .var("KEYMETER_LIMITER")
            .filter(|v| !v.trim().is_empty());
        let limits_fail_open = match source
            .var("KEYMETER_LIMITS_FAIL_OPEN")
            .as_deref()
            .map(str::trim)
        {
            None | Some("") | Some("0") | Some("false") => false,
            Some("1") | Some("true") => true,
            Some(_) => {
                return Err(Error::Config(
                    "KEYMETER_LIMITS_FAIL_OPEN must be 1, true, 0 or false".into(),
                ));
            }
        };
        let key_cache = match source.var("KEYMETER_KEY_CACHE").as_deref().map(str::trim) {
            None | Some("") => DEFAULT_KEY_CACHE,
            Some(n) => n.parse().map_err(|_| {
                Error::Config(
                    "KEYMETER_KEY_CACHE must be a number of records (0 turns the cache off)".into(),
                )
            })?,
        };
        let failed_verifications = match source
            .var("KEYMETER_FAILED_VERIFICATIONS")
            .as_deref()
            .map(str::trim)
        {
            None | Some("") => VerifierConfig::default().failures_per_address,
            Some("off") => None,
            Some(quota) => Some(quota.parse::<crate::limits::Quota>().map_err(|_| {
                Error::Config(
                    "KEYMETER_FAILED_VERIFICATIONS must be N/PERIOD (for example 10/min) or off"
                        .into(),
                )
            })?),
        };
        let journal_dir = source
            .var("KEYMETER_JOURNAL")
            .filter(|v| !v.trim().is_empty())
            .map(PathBuf::from)
            .or_else(|| journal_path(&store_url));
        let journal_sync = match source.var("KEYMETER_JOURNAL_SYNC") {
            Some(v) if !v.trim().is_empty() => parse_sync(v.trim())?,
            _ => crate::ledger::journal::SyncPolicy::Every(std::time::Duration::from_millis(10)),
        };
        let claim_ttl = match source.var("KEYMETER_CLAIM_TTL") {
            Some(v) if !v.trim().is_empty() => {
                crate::validate::duration("KEYMETER_CLAIM_TTL", v.trim(), false)
                    .ok()
                    .filter(|d| *d >= chrono::Duration::seconds(1))
                    .ok_or_else(|| {
                        Error::Config(
                            "KEYMETER_CLAIM_TTL must be a duration of at least 1s, such as 30s"
                                .into(),
                        )
                    })?
            }
            _ => crate::ledger::journal::CLAIM_TTL,
        };
        let instance_id = source
            .var("KEYMETER_INSTANCE_ID")
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty());
        if let Some(id) = &instance_id {
            crate::validate::name("KEYMETER_INSTANCE_ID", id)
                .map_err(|e| Error::Config(e.to_string()))?;
        }
        let lease_window = match source.var("KEYMETER_LEASES").map(|v| v.trim().to_owned()) {
            Some(v) if v == "off" => None,
            Some(v) if !v.is_empty() => Some(
                crate::validate::duration("KEYMETER_LEASES", &v, false)
                    .ok()
                    .filter(|d| *d >= chrono::Duration::milliseconds(10))
                    .and_then(|d| d.to_std().ok())
                    .ok_or_else(|| {
                        Error::Config(
                            "KEYMETER_LEASES must be `off` or a window of at least 10ms, such as 1s"
                                .into(),
                        )
                    })?,
            ),
            _ => Some(std::time::Duration::from_secs(1)),
        };
        let alerts = crate::alerts::AlertSettings::from_source(source)?;
        let mut config = Config {
            lease_window,
            alerts,
            journal_dir,
            journal_sync,
            claim_ttl,
            instance_id,
            key_cache,
            failed_verifications,
            limiter_url,
            limits_fail_open,
            secrets_file: secrets_path(&store_url),
            store_url,
            environment,
            prefixes,
            catalog_path,
            hasher: None,
            vault: None,
            warnings,
        };
        config.load_secrets(source)?;
        Ok(config)
    }

    fn load_secrets(&mut self, source: &dyn EnvSource) -> Result<()> {
        let file = self.read_secrets_file()?;
        let value = |name: &str| -> Option<Zeroizing<String>> {
            source
                .var(name)
                .filter(|v| !v.trim().is_empty())
                .map(Zeroizing::new)
                .or_else(|| {
                    file.iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| Zeroizing::new(v.to_string()))
                })
        };
        self.hasher = value(PEPPER_VAR)
            .map(|v| ring::<crate::keys::Pepper>(PEPPER_VAR, &v))
            .transpose()?
            .map(|ring: PepperRing| Arc::new(KeyHasher::new(ring)));
        self.vault = value(MASTER_KEYS_VAR)
            .map(|v| ring::<crate::credentials::MasterKey>(MASTER_KEYS_VAR, &v))
            .transpose()?
            .map(|ring: MasterKeyRing| Arc::new(Vault::new(ring)));
        Ok(())
    }

    /// The secrets file's entries, in development when it exists; nothing otherwise. A file others may read is
    /// used (development only ever reads it) but warned about.
    fn read_secrets_file(&mut self) -> Result<Vec<(String, Zeroizing<String>)>> {
        match self.secrets_file.clone() {
            Some(path) if self.environment.environment.is_development() && path.exists() => {
                if let Some(mode) = loose_mode(&path) {
                    let warning = format!(
                        "{} can be read by other users (mode {mode:o}): run chmod 600 on it",
                        path.display()
                    );
                    tracing::warn!(warning = %warning, "keymeter secrets file");
                    if !self.warnings.contains(&warning) {
                        self.warnings.push(warning);
                    }
                }
                read_secrets_file(&path)
            }
            _ => Ok(Vec::new()),
        }
    }

    /// What the operator should know: an environment nobody set, a `DEBUG` flag beside a production signal, a
    /// secrets file others can read. Also logged through `tracing`.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn missing(&self, name: &str) -> Error {
        if self.environment.environment.is_development() {
            Error::Config(format!(
                "{name} is not set: set it, or write development secrets with `keymeter init` (a host: \
                 `Config::init_development_secrets()`)"
            ))
        } else {
            Error::Config(format!(
                "{name} is not set; it is required in {} (development secrets are never used there)",
                self.environment.environment
            ))
        }
    }

    /// The key hasher (the pepper ring).
    ///
    /// # Errors
    /// [`Error::Config`] when no pepper is configured.
    pub fn hasher(&self) -> Result<Arc<KeyHasher>> {
        self.hasher.clone().ok_or_else(|| self.missing(PEPPER_VAR))
    }

    /// The vault (the master-key ring).
    ///
    /// # Errors
    /// [`Error::Config`] when no master key is configured.
    pub fn vault(&self) -> Result<Arc<Vault>> {
        self.vault
            .clone()
            .ok_or_else(|| self.missing(MASTER_KEYS_VAR))
    }

    /// Opens the configured store ([`crate::store::connect`]).
    ///
    /// # Errors
    /// As [`crate::store::connect`].
    pub async fn connect(&self) -> Result<Arc<dyn Store>> {
        crate::store::connect(&self.store_url).await
    }

    /// The key store a long-running service verifies against: `store` behind a [`CachedKeyStore`] of
    /// `KEYMETER_KEY_CACHE` records, evicted by the store's change feed (so a revoke anywhere is refused here
    /// within a second), or `store` itself for the in-memory backend or a cache of 0.
    ///
    /// # Errors
    /// [`Error::Store`] when the change feed cannot start (PostgreSQL's listener cannot connect).
    pub async fn key_cache(&self, store: Arc<dyn Store>) -> Result<Arc<dyn KeyStore>> {
        Ok(match self.cached_keys(store.clone()).await? {
            Some(cache) => cache,
            None => store,
        })
    }

    /// The cache [`Config::key_cache`] puts in front of `store`, if it puts one.
    pub(crate) async fn cached_keys(
        &self,
        store: Arc<dyn Store>,
    ) -> Result<Option<Arc<CachedKeyStore>>> {
        if self.key_cache == 0 {
            return Ok(None);
        }
        let Some(feed) = store.key_changes().await? else {
            return Ok(None);
        };
        Ok(Some(Arc::new(CachedKeyStore::new(
            store,
            Some(feed),
            self.key_cache,
        ))))
    }

    /// The verifier settings this configuration implies (prefixes, failing open or closed).
    pub fn verifier_config(&self) -> VerifierConfig {
        VerifierConfig {
            prefixes: self.prefixes.clone(),
            limits_fail_open: self.limits_fail_open,
            failures_per_address: self.failed_verifications,
            ..VerifierConfig::default()
        }
    }

    /// The rate limiter: Redis at `KEYMETER_LIMITER` when set, else `store` itself.
    ///
    /// # Errors
    /// [`Error::Config`] for a limiter URL this build cannot use; [`Error::Store`] when Redis cannot be reached
    /// (a verifier configured to fail open may then be built with the store's own limiter instead).
    pub async fn limiter(
        &self,
        store: Arc<dyn crate::store::Store>,
    ) -> Result<Arc<dyn crate::limits::RateLimiter>> {
        Ok(self.limiters(store).await?.0)
    }

    /// The rate limiter and the concurrency slots' store together as another process sees them: both in Redis
    /// when `KEYMETER_LIMITER` names one (one connection), else both in `store` (where a serving instance with
    /// limits in memory writes its buckets every second). [`Config::open`] gives a serving instance its own.
    ///
    /// # Errors
    /// [`Error::Config`] for an unsupported limiter URL; the limiter's failure to connect.
    pub async fn limiters(
        &self,
        store: Arc<dyn crate::store::Store>,
    ) -> Result<(
        Arc<dyn crate::limits::RateLimiter>,
        Arc<dyn crate::limits::SlotStore>,
    )> {
        match self.limiter_url.as_deref() {
            None | Some("memory" | "leased" | "store") => Ok((store.clone(), store)),
            #[cfg(feature = "redis")]
            Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                let redis = Arc::new(crate::store::RedisLimiter::connect(url).await?);
                Ok((redis.clone(), redis))
            }
            Some(_) => Err(Error::Config(
                "KEYMETER_LIMITER: expected memory, leased, store or redis://HOST:PORT (feature `redis`)"
                    .into(),
            )),
        }
    }

    /// Whether a serving instance keeps rate limits and concurrency slots in its own memory: `KEYMETER_LIMITER`
    /// is `memory`, or unset on a store of one machine (SQLite, memory). Exact for one instance; instances
    /// sharing a database share limits through the store (`store`) or Redis.
    pub fn limits_in_memory(&self, backend: &str) -> bool {
        match self.limiter_url.as_deref() {
            Some("memory") => true,
            None => backend != "postgres",
            Some(_) => false,
        }
    }

    /// Whether a serving instance leases slices of the store's rate-limit buckets and spends them in memory
    /// ([`crate::limits::LeasedLimiter`]): `KEYMETER_LIMITER` is `leased`, or unset on PostgreSQL. Instances
    /// sharing the database never admit more than a quota together; concurrency slots stay in the store.
    pub fn limits_leased(&self, backend: &str) -> bool {
        match self.limiter_url.as_deref() {
            Some("leased") => true,
            None => backend == "postgres",
            Some(_) => false,
        }
    }

    /// A verifier on `keys` with the configured pepper ring and prefixes.
    ///
    /// # Errors
    /// [`Error::Config`] when no pepper is configured.
    pub fn verifier(&self, keys: Arc<dyn KeyStore>) -> Result<Verifier> {
        Verifier::new(keys, self.hasher()?, self.verifier_config())
    }

    /// An issuer on `keys` with the configured pepper ring.
    ///
    /// # Errors
    /// [`Error::Config`] when no pepper is configured.
    pub fn issuer(&self, keys: Arc<dyn KeyStore>) -> Result<KeyIssuer> {
        Ok(KeyIssuer::new(keys, self.hasher()?))
    }

    /// A credential resolver on `credentials` with the configured vault and environment.
    ///
    /// # Errors
    /// [`Error::Config`] when no master key is configured.
    pub fn resolver(&self, credentials: Arc<dyn CredentialStore>) -> Result<CredentialResolver> {
        Ok(CredentialResolver::new(
            credentials,
            self.vault()?,
            self.environment.environment,
        ))
    }

    /// The configured price catalog: the file of `KEYMETER_CATALOG`, else the bundled snapshot.
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be read; [`Error::Catalog`] when it does not parse.
    pub fn catalog(&self) -> Result<PriceCatalog> {
        match &self.catalog_path {
            None => Ok(PriceCatalog::bundled()),
            Some(path) => PriceCatalog::from_path(path),
        }
    }

    /// A meter on `ledger` pricing from the configured catalog.
    ///
    /// # Errors
    /// As [`Config::catalog`].
    pub fn meter(&self, ledger: Arc<dyn Ledger>) -> Result<Meter> {
        Ok(Meter::new(ledger, Arc::new(self.catalog()?)))
    }

    /// The journal's configuration, if [`Config::journal_dir`] names a directory.
    pub fn journal(&self) -> Option<crate::ledger::journal::JournalConfig> {
        self.journal_dir.as_ref().map(|dir| {
            crate::ledger::journal::JournalConfig::new(dir.clone())
                .sync(self.journal_sync)
                .claim_ttl(self.claim_ttl)
        })
    }

    /// [`Config::init_secrets`] with the process environment, the OS's randomness and the current time: the one
    /// line a service in development calls before [`Config::open`]. Writes nothing when every secret is set.
    ///
    /// # Errors
    /// As [`Config::init_secrets`] (outside development a missing secret is an error).
    pub fn init_development_secrets(&mut self) -> Result<Vec<&'static str>> {
        self.init_secrets(
            &crate::env::ProcessEnv,
            &crate::random::OsRandom,
            chrono::Utc::now(),
        )
    }

    /// In development, writes the secrets missing from the environment (a fresh pepper, fresh master keys, with
    /// ids dated by `now`) to the secrets file beside the database (mode 0600, written atomically) and loads
    /// them; returns the names written. Outside development, a missing secret is an error and nothing is written.
    ///
    /// # Errors
    /// [`Error::Config`] outside development when a secret is missing, for a store with no place for the file
    /// (not SQLite), or when the file cannot be written; [`Error::Random`].
    pub fn init_secrets(
        &mut self,
        source: &dyn EnvSource,
        random: &dyn RandomSource,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<&'static str>> {
        // New keys are named after the day they were made: `p20260301`, `k20260301`.
        let day = now.format("%Y%m%d");
        let missing: Vec<&'static str> = [
            (PEPPER_VAR, self.hasher.is_none()),
            (MASTER_KEYS_VAR, self.vault.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, absent)| absent.then_some(name))
        .collect();
        if missing.is_empty() {
            return Ok(missing);
        }
        if !self.environment.environment.is_development() {
            return Err(self.missing(missing[0]));
        }
        let path = self.secrets_file.clone().ok_or_else(|| {
            Error::Config(
                "development secrets need a SQLite or PostgreSQL store to sit beside; set KEYMETER_PEPPER and \
                 KEYMETER_MASTER_KEYS instead"
                    .into(),
            )
        })?;
        let mut entries = if path.exists() {
            read_secrets_file(&path)?
        } else {
            Vec::new()
        };
        for name in &missing {
            let value = if *name == PEPPER_VAR {
                KeyRing::<crate::keys::Pepper>::generate(&format!("p{day}"), random)?.to_env_value()
            } else {
                KeyRing::<crate::credentials::MasterKey>::generate(&format!("k{day}"), random)?
                    .to_env_value()
            };
            entries.retain(|(k, _)| k != name);
            entries.push((
                (*name).to_owned(),
                Zeroizing::new(value.expose_secret().to_owned()),
            ));
        }
        write_secrets_file(&path, &entries)?;
        self.load_secrets(source)?;
        Ok(missing)
    }
}

fn ring<K: RingKey>(name: &str, value: &str) -> Result<KeyRing<K>> {
    KeyRing::from_env_value(value).map_err(|e| Error::Config(format!("{name}: {}", inner(&e))))
}

/// The message of a configuration error without its "configuration error: " prefix.
fn inner(e: &Error) -> String {
    match e {
        Error::Config(m) => m.clone(),
        other => other.to_string(),
    }
}

/// The development secrets file: beside a SQLite database, in the working directory for a PostgreSQL one; none
/// for in-memory stores.
/// `always`, or an interval of milliseconds or seconds (`10ms`, `1s`).
fn parse_sync(text: &str) -> Result<crate::ledger::journal::SyncPolicy> {
    use crate::ledger::journal::SyncPolicy;
    let bad = || {
        Error::Config("KEYMETER_JOURNAL_SYNC must be `always` or an interval such as 10ms".into())
    };
    if text == "always" {
        return Ok(SyncPolicy::Always);
    }
    let (n, unit) = if let Some(n) = text.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000)
    } else {
        return Err(bad());
    };
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = n
        .checked_mul(unit)
        .filter(|ms| (1..=60_000).contains(ms))
        .ok_or_else(bad)?;
    Ok(SyncPolicy::Every(std::time::Duration::from_millis(ms)))
}

/// `keymeter.journal` beside a SQLite database file; none for a database elsewhere or in memory.
fn journal_path(store_url: &str) -> Option<PathBuf> {
    if store_url.starts_with("postgres:") || store_url.starts_with("postgresql:") {
        return None;
    }
    secrets_path(store_url).map(|p| p.with_file_name("keymeter.journal"))
}

fn secrets_path(store_url: &str) -> Option<PathBuf> {
    // A database on a server has no directory of its own here: the secrets sit in the working directory.
    if store_url.starts_with("postgres:") || store_url.starts_with("postgresql:") {
        return Some(PathBuf::from(SECRETS_FILE_NAME));
    }
    let path = store_url
        .strip_prefix("sqlite://")
        .or_else(|| store_url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path.contains(":memory:") {
        return None;
    }
    let dir = Path::new(path).parent().unwrap_or(Path::new(""));
    Some(dir.join(SECRETS_FILE_NAME))
}

/// The file's permission bits when group or others may read or write it.
fn loose_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

fn read_secrets_file(path: &Path) -> Result<Vec<(String, Zeroizing<String>)>> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?,
    );
    Ok(text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), Zeroizing::new(v.trim().to_owned())))
        .collect())
}

fn write_secrets_file(path: &Path, entries: &[(String, Zeroizing<String>)]) -> Result<()> {
    let mut text = Zeroizing::new(String::from(
        "# keymeter development secrets: never commit this file, never use it in production.\n",
    ));
    for (k, v) in entries {
        text.push_str(k);
        text.push('=');
        text.push_str(v);
        text.push('\n');
    }
    crate::file::write_atomic(path, text.as_bytes())
        .map_err(|e| Error::Config(format!("cannot write {}: {e}", path.display())))
}
