//! Changes to a key after it was made ([`KeyPatch`]): name, scopes, allowed networks and models, metadata, expiry
//! and whether it is disabled. Never its owner, organisation, environment or secret (a rotation changes that).
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! use std::sync::Arc;
//! use keymeter::keys::hash::{KeyHasher, Pepper, PepperRing};
//! use keymeter::keys::{KeyIssuer, KeyPatch, KeyStore, NewKey, Scope};
//! use keymeter::random::OsRandom;
//! use keymeter::store::MemoryStore;
//!
//! let store = Arc::new(MemoryStore::new());
//! let peppers = PepperRing::new(vec![Pepper::generate("p1", &OsRandom)?])?;
//! let issuer = KeyIssuer::new(store.clone(), Arc::new(KeyHasher::new(peppers)));
//! let key = issuer.issue(NewKey::new("ci", "alice")).await?.record;
//! let patch = KeyPatch { name: Some("deploys".into()), scopes: Some(Scope::parse_list("read")?), ..KeyPatch::default() };
//! let changed = store.update(&key.id, &patch).await?;
//! assert_eq!((changed.name.as_str(), changed.scopes.len()), ("deploys", 1));
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! ```

use chrono::{DateTime, SubsecRound, Utc};
use ipnet::IpNet;

use crate::error::{Error, Result};
use crate::keys::models::ModelRule;
use crate::keys::record::KeyRecord;
use crate::keys::scope::Scope;

/// The largest metadata a key may carry, as JSON text: 4 KiB.
pub const MAX_METADATA_BYTES: usize = 4096;

/// Checks a key's metadata: a JSON object of at most [`MAX_METADATA_BYTES`].
///
/// # Errors
/// [`Error::InvalidInput`].
pub fn check_metadata(metadata: &serde_json::Value) -> Result<()> {
    if !metadata.is_object() {
        return Err(Error::invalid("metadata", "must be a JSON object"));
    }
    if metadata.to_string().len() > MAX_METADATA_BYTES {
        return Err(Error::invalid(
            "metadata",
            format!("at most {MAX_METADATA_BYTES} bytes of JSON"),
        ));
    }
    Ok(())
}

/// Changes to a key's mutable fields; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPatch {
    /// A new name.
    pub name: Option<String>,
    /// New scopes (replacing them all).
    pub scopes: Option<Vec<Scope>>,
    /// New allowed networks (empty: any address).
    pub allowed_ips: Option<Vec<IpNet>>,
    /// New allowed models (empty: any model).
    pub allowed_models: Option<Vec<ModelRule>>,
    /// New metadata (a JSON object, replacing it).
    pub metadata: Option<serde_json::Value>,
    /// A new expiry: `Some(None)` for none.
    pub expires_at: Option<Option<DateTime<Utc>>>,
    /// Disable or enable.
    pub disabled: Option<bool>,
    /// New tags (replacing them).
    pub tags: Option<Vec<String>>,
}

impl KeyPatch {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == KeyPatch::default()
    }

    /// Checks what every backend requires of the new values.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] naming the field.
    pub fn validate(&self) -> Result<()> {
        if let Some(name) = &self.name {
            crate::validate::name("name", name)?;
        }
        if let Some(models) = &self.allowed_models {
            crate::keys::models::check_rules(models)?;
        }
        if let Some(metadata) = &self.metadata {
            check_metadata(metadata)?;
        }
        if let Some(tags) = &self.tags {
            crate::ledger::event::check_tags(tags)?;
        }
        Ok(())
    }

    /// `record` with the changes applied (times kept to the microsecond, as stores keep them).
    pub fn apply(&self, record: &KeyRecord) -> KeyRecord {
        let mut r = record.clone();
        if let Some(name) = &self.name {
            r.name.clone_from(name);
        }
        if let Some(scopes) = &self.scopes {
            r.scopes.clone_from(scopes);
        }
        if let Some(nets) = &self.allowed_ips {
            r.allowed_ips.clone_from(nets);
        }
        if let Some(models) = &self.allowed_models {
            r.allowed_models.clone_from(models);
        }
        if let Some(metadata) = &self.metadata {
            r.metadata.clone_from(metadata);
        }
        if let Some(expires_at) = self.expires_at {
            r.expires_at = expires_at.map(|t| t.trunc_subsecs(6));
        }
        if let Some(disabled) = self.disabled {
            r.disabled = disabled;
        }
        if let Some(tags) = &self.tags {
            r.tags.clone_from(tags);
        }
        r
    }
}
