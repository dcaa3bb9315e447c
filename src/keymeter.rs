//! [`Keymeter`]: everything a service needs of keymeter, opened from one [`Config`] in one call.
//!
//! ```no_run
//! # async fn run() -> keymeter::Result<()> {
//! let mut config = keymeter::Config::from_env()?;
//! config.init_development_secrets()?; // development only: writes missing secrets beside the database
//! let km = config.open().await?;
//! // km.verifier, km.resolver, km.meter, km.issuer, km.store: cheap to clone, shared by every request.
//! km.close().await;
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::credentials::CredentialResolver;
use crate::error::Result;
use crate::keys::{KeyIssuer, KeyStore, Verifier};
use crate::ledger::Meter;
use crate::ledger::journal::Journal;
use crate::limits::RateLimiter;
use crate::stats::StatsRecorder;
use crate::store::Store;

/// How often [`Keymeter`]'s verifier writes key statistics.
const STATS_INTERVAL: Duration = Duration::from_secs(10);
/// How often a limiter in memory writes its changed buckets to the store.
const LIMITS_INTERVAL: Duration = Duration::from_secs(1);

/// The parts a service uses, built the way the reference gateway builds them: the store; the key records cached
/// in process and kept fresh by the store's change feed; a verifier with the configured rate limits and
/// statistics; an issuer; the credential resolver; a meter on the configured catalog with the journal when one
/// is configured (beside a SQLite database by default). Cheap to clone.
#[derive(Debug, Clone)]
pub struct Keymeter {
    /// The store (keys, credentials, ledger, limits, statistics).
    pub store: Arc<dyn Store>,
    /// The key store the verifier and issuer use (the store behind a record cache).
    pub keys: Arc<dyn KeyStore>,
    /// Verifies inbound keys, charging rate limits, holding concurrency slots (in the limiter's Redis, else the
    /// store, with the configured claim TTL) and counting statistics.
    pub verifier: Arc<Verifier>,
    /// The rate limiter the verifier charges: this process's memory (written to the store every second),
    /// slices leased from the store, the store, or Redis, as [`Config::limits_in_memory`],
    /// [`Config::limits_leased`] and `KEYMETER_LIMITER` say.
    pub limiter: Arc<dyn RateLimiter>,
    /// Issues, imports and rotates keys.
    pub issuer: Arc<KeyIssuer>,
    /// The sealed provider keys, cached in process in front of the store: write through this (not the store)
    /// so this process forgets a changed key at once (others within a second, through the store's version).
    pub credentials: Arc<dyn crate::credentials::CredentialStore>,
    /// Resolves the provider key a request uses (through `credentials`): the owner's own, else the system's.
    pub resolver: Arc<CredentialResolver>,
    /// Seals provider keys for storage (with [`crate::credentials::set_key`]).
    pub vault: Arc<crate::credentials::Vault>,
    /// Reserves, settles and records usage.
    pub meter: Meter,
    /// The verifier's statistics, written every 10 s and at [`Keymeter::close`].
    pub stats: Arc<StatsRecorder>,
    /// Hits and misses of the in-process caches, for metrics.
    pub lookups: CacheLookups,
}

/// Hits and misses of [`Keymeter`]'s in-process caches.
#[derive(Debug, Clone)]
pub struct CacheLookups {
    /// The key records' cache, when there is one (a store with a change feed and `KEYMETER_KEY_CACHE` > 0).
    pub keys: Option<Arc<crate::lookups::Lookups>>,
    /// The sealed provider keys' cache.
    pub credentials: Arc<crate::lookups::Lookups>,
    /// The rate-limit checks of a [`crate::limits::LeasedLimiter`], when limits are leased: answered from its
    /// slices (hits) or by the store (misses).
    pub limits: Option<Arc<crate::lookups::Lookups>>,
}

impl Config {
    /// Opens everything a service needs ([`Keymeter`]). The secrets are checked first: a missing one fails with
    /// an error that names the fix before any database file is created. Needs a tokio runtime.
    ///
    /// Outside production-like environments it says so: through `tracing`, and on standard error as well when
    /// the host has installed no `tracing` subscriber (a new service often has not), so development mode is
    /// never silent.
    ///
    /// # Errors
    /// [`crate::Error::Config`] for a missing secret or a bad setting; the store's, the limiter's and the
    /// journal's failures to open.
    pub async fn open(&self) -> Result<Keymeter> {
        self.hasher()?;
        self.vault()?;
        let catalog = self.catalog()?;
        self.announce();
        let store = self.connect().await?;
        let key_cache = self.cached_keys(store.clone()).await?;
        let keys: Arc<dyn KeyStore> = match &key_cache {
            Some(cache) => cache.clone(),
            None => store.clone(),
        };
        let (limiter, slot_store, limit_leases) = self.serving_limiters(store.clone()).await?;
        let slots = crate::limits::SlotKeeper::new(slot_store, self.claim_ttl);
        let stats = Arc::new(
            StatsRecorder::new(store.clone())
                .with_watch(crate::stats::UnusualWatch::new(store.clone(), keys.clone())),
        );
        stats.spawn_flusher(STATS_INTERVAL);
        let verifier = Arc::new(
            self.verifier(keys.clone())?
                .with_limits(store.clone(), limiter.clone())
                .with_slots(slots)
                .with_stats(stats.clone()),
        );
        let mut meter = Meter::new(store.clone(), Arc::new(catalog));
        if let Some(journal) = self.journal() {
            let (journal, recovery) = Journal::open_as(
                journal,
                self.instance_id.clone(),
                Arc::new(crate::random::OsRandom),
            )?;
            tracing::info!(
                dir = %journal.dir().display(),
                instance = journal.instance_id(),
                settled = recovery.settled,
                estimated = recovery.estimated,
                released = recovery.released,
                "journal open"
            );
            journal.start(store.clone());
            meter = meter.with_journal(journal);
            if let Some(window) = self.lease_window {
                meter =
                    meter.with_leases(crate::ledger::lease::LeaseConfig::default().window(window));
            }
        } else {
            // No heartbeat without a journal: sweep lapsed claims all the same, so an idle store bills them.
            crate::ledger::journal::spawn_sweeper(&store, store.clone());
        }
        let credential_cache = Arc::new(crate::credentials::CachedCredentialStore::new(
            store.clone(),
        ));
        let lookups = CacheLookups {
            keys: key_cache.map(|c| c.lookups().clone()),
            credentials: credential_cache.lookups().clone(),
            limits: limit_leases,
        };
        let credentials: Arc<dyn crate::credentials::CredentialStore> = credential_cache;
        Ok(Keymeter {
            lookups,
            issuer: Arc::new(self.issuer(keys.clone())?),
            resolver: Arc::new(self.resolver(credentials.clone())?),
            credentials,
            vault: self.vault()?,
            keys,
            verifier,
            limiter,
            meter,
            stats,
            store,
        })
    }
}

impl Config {
    /// The limiter and slot store of a serving instance: slices leased from the store when
    /// [`Config::limits_leased`]; in its memory when [`Config::limits_in_memory`] (the buckets read from the store
    /// at start and written back every second); else [`Config::limiters`].
    async fn serving_limiters(
        &self,
        store: Arc<dyn Store>,
    ) -> Result<(
        Arc<dyn RateLimiter>,
        Arc<dyn crate::limits::SlotStore>,
        Option<Arc<crate::lookups::Lookups>>,
    )> {
        if self.limits_leased(store.backend()) {
            let leased = crate::limits::LeasedLimiter::new(store.clone());
            leased.spawn_sweeper();
            let lookups = leased.lookups().clone();
            return Ok((Arc::new(leased), store, Some(lookups)));
        }
        if !self.limits_in_memory(store.backend()) {
            let (limiter, slots) = self.limiters(store).await?;
            return Ok((limiter, slots, None));
        }
        let now = crate::clock::Clock::now(&crate::clock::SystemClock).timestamp_micros();
        let local = Arc::new(crate::limits::LocalLimiter::open(store, now).await?);
        local.spawn_flusher(LIMITS_INTERVAL);
        // Slots die with the process that holds them: memory is where one instance keeps them.
        Ok((local, Arc::new(crate::store::MemoryStore::new()), None))
    }

    /// Says what a host must know before serving: the environment when it is not production or staging, and
    /// each configuration warning. Through `tracing`, and on standard error when no subscriber would show them.
    fn announce(&self) {
        let detected = &self.environment;
        let mut lines = Vec::new();
        if detected.environment.is_development() {
            lines.push(format!(
                "development mode ({}): missing secrets come from the secrets file and system \
                 provider keys from `.env`; set KEYMETER_ENV=production before serving users",
                detected.reason
            ));
        }
        for warning in self.warnings() {
            // The line above already says the environment was a default.
            let said =
                detected.environment.is_development() && detected.warning.as_ref() == Some(warning);
            if !said {
                lines.push(warning.clone());
            }
        }
        let silent = !tracing::dispatcher::has_been_set();
        for line in &lines {
            tracing::warn!("{line}");
            if silent {
                eprintln!("keymeter: warning: {line}");
            }
        }
    }
}

impl Keymeter {
    /// Seals `key` and stores it as `scope`'s key for `provider`: [`crate::credentials::set_key`] with this
    /// handle's store and vault.
    ///
    /// # Errors
    /// As [`crate::credentials::set_key`]: a key of the wrong shape or a placeholder, the store's failures.
    pub async fn set_key(
        &self,
        scope: &crate::credentials::CredentialScope,
        provider: &crate::credentials::Provider,
        key: &str,
    ) -> Result<()> {
        crate::credentials::set_key(&*self.store, &self.vault, scope, provider, key).await
    }

    /// Waits (at most `timeout`) until the store holds every settle the journal took so far, so a report or an
    /// export read next includes them; true when it does (always, without a journal).
    pub async fn drain(&self, timeout: Duration) -> bool {
        match self.meter.journal() {
            Some(journal) => journal.flush(timeout).await,
            None => true,
        }
    }

    /// Writes what is still in memory (statistics, the journal's backlog, within 5 s) and closes the store.
    pub async fn close(&self) {
        if let Err(e) = self.stats.close().await {
            tracing::warn!(error = %e, "could not write the last key statistics");
        }
        if let Err(e) = self.limiter.flush().await {
            tracing::warn!(error = %e, "could not write the last rate-limit states");
        }
        if let Some(journal) = self.meter.journal()
            && !journal.flush(Duration::from_secs(5)).await
        {
            tracing::warn!(
                backlog = journal.backlog(),
                "the store did not take the whole journal: the next start replays it"
            );
        }
        if let Some(leases) = self.meter.leases() {
            leases.close().await;
        }
        self.store.close().await;
    }
}
