//! The [`CredentialResolver`]: the user's own key, else the system key, else a typed error, and which it was.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use secrecy::SecretString;
use serde::Serialize;

use crate::credentials::provider::Provider;
use crate::credentials::store::CredentialStore;
use crate::credentials::vault::{CredentialScope, Vault};
use crate::env::Environment;
use crate::error::{Error, Result};

/// Where a resolved key came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum CredentialSource {
    /// The user's own key.
    User,
    /// The operator's system key from the credential store.
    System,
    /// The operator's key from a development `.env` file.
    EnvFile,
}

/// The source named `user`, `system` or `env-file`.
impl std::str::FromStr for CredentialSource {
    type Err = crate::Error;

    fn from_str(name: &str) -> Result<Self, crate::Error> {
        match name {
            "user" => Ok(CredentialSource::User),
            "system" => Ok(CredentialSource::System),
            "env-file" => Ok(CredentialSource::EnvFile),
            _ => Err(crate::Error::invalid(
                "credential source",
                "expected user, system or env-file",
            )),
        }
    }
}

impl CredentialSource {
    /// `user`, `system` or `env-file`.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialSource::User => "user",
            CredentialSource::System => "system",
            CredentialSource::EnvFile => "env-file",
        }
    }
}

/// A plaintext source of system keys (a development `.env` file).
#[async_trait]
pub trait SystemKeySource: Send + Sync + fmt::Debug {
    /// The system key for `provider`, if the source has one.
    ///
    /// # Errors
    /// Failures reading the source.
    async fn system_key(&self, provider: &Provider) -> Result<Option<SecretString>>;
}

/// A key resolved for one request. Hand it to the outbound call and drop it: it is never stored anywhere
/// process-wide. The key is redacted in `Debug` and zeroized on drop.
#[derive(Debug, Clone)]
pub struct ResolvedCredential {
    /// The provider.
    pub provider: Provider,
    /// Where it came from.
    pub source: CredentialSource,
    /// The key.
    pub key: SecretString,
}

impl ResolvedCredential {
    /// The key masked for display (`sk-ant-…Ab12`).
    pub fn masked(&self) -> String {
        crate::secret::mask(secrecy::ExposeSecret::expose_secret(&self.key))
    }
}

/// Every provider's key for one owner, resolved at once and scoped to one request.
#[derive(Debug, Clone, Default)]
pub struct RequestCredentials {
    resolved: BTreeMap<Provider, ResolvedCredential>,
}

impl RequestCredentials {
    /// The key for `provider`.
    ///
    /// # Errors
    /// [`Error::NoCredential`] when none resolved.
    pub fn get(&self, provider: &Provider) -> Result<&ResolvedCredential> {
        self.resolved
            .get(provider)
            .ok_or_else(|| Error::NoCredential {
                provider: provider.to_string(),
            })
    }

    /// The providers resolved.
    pub fn providers(&self) -> impl Iterator<Item = &Provider> {
        self.resolved.keys()
    }
}

/// Whether an owner has a personal and a system key for one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProviderStatus {
    /// The owner has their own key.
    pub user: bool,
    /// A system key would be used as fallback (if the policy allows it).
    pub system: bool,
}

/// Resolution policy.
#[derive(Debug, Clone, Default)]
pub struct ResolverPolicy {
    /// Providers for which the system key is never used as a fallback: users must bring their own.
    pub user_key_required: HashSet<Provider>,
    /// Use the `.env` tier even outside development. Off by default: production never silently reads a
    /// developer's `.env` keys.
    pub env_file_outside_development: bool,
}

/// Resolves provider keys: user → system (store) → `.env` (development) → [`Error::NoCredential`].
///
/// Holds no per-request state; every answer is a fresh value, so concurrent requests of different owners can
/// never see each other's keys.
#[derive(Debug)]
pub struct CredentialResolver {
    store: Arc<dyn CredentialStore>,
    vault: Arc<Vault>,
    env_file: Option<Arc<dyn SystemKeySource>>,
    environment: Environment,
    policy: ResolverPolicy,
}

impl CredentialResolver {
    /// A resolver over `store`, opening keys with `vault`, in `environment`.
    pub fn new(
        store: Arc<dyn CredentialStore>,
        vault: Arc<Vault>,
        environment: Environment,
    ) -> Self {
        CredentialResolver {
            store,
            vault,
            env_file: None,
            environment,
            policy: ResolverPolicy::default(),
        }
    }

    /// Adds a `.env` system tier, used only in development unless the policy says otherwise.
    #[must_use]
    pub fn with_env_file(mut self, source: Arc<dyn SystemKeySource>) -> Self {
        self.env_file = Some(source);
        self
    }

    /// Sets the policy.
    #[must_use]
    pub fn with_policy(mut self, policy: ResolverPolicy) -> Self {
        self.policy = policy;
        self
    }

    fn env_tier(&self) -> Option<&Arc<dyn SystemKeySource>> {
        self.env_file.as_ref().filter(|_| {
            self.environment.is_development() || self.policy.env_file_outside_development
        })
    }

    /// The key `owner` should use for `provider`, and where it came from.
    ///
    /// # Errors
    /// [`Error::NoCredential`] when no tier has one; [`Error::Vault`] when a stored key does not decrypt;
    /// backend failures.
    pub async fn resolve(&self, owner: &str, provider: &Provider) -> Result<ResolvedCredential> {
        let user = CredentialScope::user(owner)?;
        let found = |source, key| ResolvedCredential {
            provider: provider.clone(),
            source,
            key,
        };
        if let Some(sealed) = self.store.get(&user, provider).await? {
            return Ok(found(
                CredentialSource::User,
                self.vault.open(&user, provider, &sealed)?,
            ));
        }
        if !self.policy.user_key_required.contains(provider) {
            if let Some(sealed) = self.store.get(&CredentialScope::System, provider).await? {
                let key = self
                    .vault
                    .open(&CredentialScope::System, provider, &sealed)?;
                return Ok(found(CredentialSource::System, key));
            }
            if let Some(file) = self.env_tier()
                && let Some(key) = file.system_key(provider).await?
            {
                return Ok(found(CredentialSource::EnvFile, key));
            }
        }
        Err(Error::NoCredential {
            provider: provider.to_string(),
        })
    }

    /// Resolves every provider `owner` could use (built-ins and any with a stored key) into one value for one
    /// request. Providers with no key are absent.
    ///
    /// # Errors
    /// As [`CredentialResolver::resolve`], except that a missing key is not an error.
    pub async fn resolve_all(&self, owner: &str) -> Result<RequestCredentials> {
        let mut out = RequestCredentials::default();
        for provider in self.known_providers(owner).await? {
            match self.resolve(owner, &provider).await {
                Ok(resolved) => {
                    out.resolved.insert(provider, resolved);
                }
                Err(Error::NoCredential { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn known_providers(&self, owner: &str) -> Result<Vec<Provider>> {
        let mut all: Vec<Provider> = Provider::built_in().into();
        all.extend(self.store.providers(&CredentialScope::user(owner)?).await?);
        all.extend(self.store.providers(&CredentialScope::System).await?);
        all.sort();
        all.dedup();
        Ok(all)
    }

    /// Which providers `owner` has a personal and a system key for. Never returns a key.
    ///
    /// # Errors
    /// Backend failures.
    pub async fn status(&self, owner: &str) -> Result<BTreeMap<Provider, ProviderStatus>> {
        let user: HashSet<Provider> = self
            .store
            .providers(&CredentialScope::user(owner)?)
            .await?
            .into_iter()
            .collect();
        let system: HashSet<Provider> = self
            .store
            .providers(&CredentialScope::System)
            .await?
            .into_iter()
            .collect();
        let mut out = BTreeMap::new();
        for provider in self.known_providers(owner).await? {
            let mut has_system = system.contains(&provider);
            if !has_system && let Some(file) = self.env_tier() {
                has_system = file.system_key(&provider).await?.is_some();
            }
            let status = ProviderStatus {
                user: user.contains(&provider),
                system: has_system && !self.policy.user_key_required.contains(&provider),
            };
            out.insert(provider, status);
        }
        Ok(out)
    }
}
