//! Inbound API keys: token format, hashing, scopes, records, storage and verification.
//!
//! ```
//! # tokio_test_block_on(async {
//! use std::sync::Arc;
//! use keymeter::keys::{KeyHasher, KeyIssuer, NewKey, PepperRing, Pepper, Requirement, Scope,
//!                      ScopeRequirement, Verifier, VerifierConfig, VerdictCode};
//! use keymeter::random::OsRandom;
//! use keymeter::store::MemoryStore;
//! use secrecy::ExposeSecret;
//!
//! let store = Arc::new(MemoryStore::new());
//! let hasher = Arc::new(KeyHasher::new(PepperRing::new(vec![Pepper::generate("p1", &OsRandom)?])?));
//! let issuer = KeyIssuer::new(store.clone(), hasher.clone());
//! let verifier = Verifier::new(store, hasher, VerifierConfig::default())?;
//!
//! let issued = issuer.issue(NewKey::new("ci", "alice").scopes(Scope::parse_list("read")?)).await?;
//! let need_read = Requirement::new().scopes(ScopeRequirement::all(["read"])?);
//! let verdict = verifier.verify(issued.token.expose_secret(), &need_read).await?;
//! assert_eq!(verdict.code(), VerdictCode::Valid);
//! assert_eq!(verdict.valid_key().unwrap().owner, "alice");
//!
//! let need_write = Requirement::new().scopes(ScopeRequirement::all(["write"])?);
//! let verdict = verifier.verify(issued.token.expose_secret(), &need_write).await?;
//! assert_eq!(verdict.code(), VerdictCode::InsufficientScope);
//! # Ok::<(), keymeter::Error>(()) }).unwrap();
//! # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

pub mod cache;
pub mod changes;
pub mod hash;
pub mod header;
pub mod inspection;
pub mod issuer;
pub mod kdf;
pub mod models;
pub mod patch;
pub mod record;
pub mod record_cache;
pub mod rules;
pub mod scope;
pub mod store;
pub mod token;
pub mod totals;
pub mod verdict;
pub mod verifier;

pub use cache::VerifiedTokenCache;
pub use changes::{KeyChangeFeed, KeyChanges};
pub use hash::{
    Argon2Config, HashError, HashScheme, KdfLimits, KeyHash, KeyHasher, Pepper, PepperRing,
};
pub use header::{HeaderError, credential_from_header};
pub use inspection::{KeyInspection, inspect};
pub use issuer::{IssuedKey, KeyIssuer, NewKey, RotatedKey};
pub use models::ModelRule;
pub use patch::KeyPatch;
pub use record::{KeyFilter, KeyLookup, KeyRecord, PreviousSecret, RateLimit, RatePer};
pub use record_cache::CachedKeyStore;
pub use rules::KeyRules;
pub use scope::{Scope, ScopeRequirement};
pub use store::{KeyStore, MAX_KEYS_PER_HINT};
pub use token::{KeyEnv, ParsedToken, TokenError};
pub use totals::VerdictTotals;
pub use verdict::{Verdict, VerdictCode};
pub use verifier::{Requirement, Verifier, VerifierConfig};
