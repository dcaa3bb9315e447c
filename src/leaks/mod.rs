//! Leaked keys (DESIGN §16): a report that tokens were found in public ([`LeakReport`]) revokes every live
//! keymeter key among them and alerts (`key.leaked`), in one transaction per key. Reports come from GitHub's
//! secret scanning partner program (`github`, feature `secret-scanning`: the signed intake the gateway serves at
//! `POST /secret-scanning/github`) or by hand (`keymeter keys leaked`, the token on stdin).
//!
//! A token is judged offline first (keymeter's shape, checksum and a configured prefix), then against its key's
//! stored hash: only a token that *is* one of the store's keys is a true positive. The answer says nothing else
//! about other keys.
//!
//! To register with GitHub, the pattern of keymeter's tokens (prefix `km`; replace it with yours):
//! `\bkm_(?:live|test)_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}\b` — the unique prefix and the CRC-32 checksum in the last
//! six characters are what the program asks for.

#[cfg(feature = "secret-scanning")]
#[cfg_attr(docsrs, doc(cfg(feature = "secret-scanning")))]
pub mod github;

use std::sync::Arc;

use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use crate::alerts::{Alert, Outbox};
use crate::clock::{Clock, SystemClock};
use crate::error::{Error, Result};
use crate::keys::Verifier;

/// The most tokens one report may carry.
pub const MAX_TOKENS: usize = 1000;

/// One token reported as found in public.
#[derive(Debug, Clone)]
pub struct LeakReport {
    /// The token as found.
    pub token: SecretString,
    /// The reporter's name for its kind (GitHub's `type`), echoed in the answer.
    pub token_type: String,
    /// Where it was found, if said.
    pub url: Option<String>,
    /// What found it (`content`, `commit`, …), if said.
    pub source: Option<String>,
}

/// Whether a reported token is one of the store's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Label {
    /// It is a key of this store (revoked now, if it was live).
    TruePositive,
    /// It is not (another shape, a bad checksum, an unknown key, a wrong secret).
    FalsePositive,
}

/// What a report found about one token.
#[derive(Debug, Clone)]
pub struct Finding {
    /// The token reported (already public; echoed because GitHub's answer names it).
    pub token: SecretString,
    /// The reporter's name for its kind.
    pub token_type: String,
    /// Whether it is one of the store's keys.
    pub label: Label,
    /// The key's id, for a true positive.
    pub key_id: Option<String>,
    /// Whether this report revoked it (false when it was revoked before).
    pub revoked: bool,
}

/// Handles leak reports: finds each token's key through the verifier and revokes the live ones with their
/// `key.leaked` alert.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use std::sync::Arc;
/// use keymeter::leaks::{Label, LeakIntake, LeakReport};
/// use keymeter::SecretString;
/// # use keymeter::keys::*;
/// # use keymeter::store::MemoryStore;
/// # let store = Arc::new(MemoryStore::new());
/// # let hasher = Arc::new(KeyHasher::new(PepperRing::generate("p1", &keymeter::random::OsRandom)?));
/// # let issuer = KeyIssuer::new(store.clone(), hasher.clone());
/// # let verifier = Arc::new(Verifier::new(store.clone(), hasher, VerifierConfig::default())?);
/// let key = issuer.issue(NewKey::new("bot", "alice")).await?;
/// let intake = LeakIntake::new(verifier, store.clone());
/// let found = intake
///     .report(&[LeakReport {
///         token: key.token.clone(),
///         token_type: "keymeter_api_key".into(),
///         url: Some("https://github.com/acme/app/blob/main/.env".into()),
///         source: Some("content".into()),
///     }])
///     .await?;
/// assert_eq!((found[0].label, found[0].revoked), (Label::TruePositive, true));
/// # Ok::<(), keymeter::Error>(()) }).unwrap();
/// ```
pub struct LeakIntake {
    verifier: Arc<Verifier>,
    outbox: Arc<dyn Outbox>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for LeakIntake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeakIntake").finish_non_exhaustive()
    }
}

impl LeakIntake {
    /// An intake that finds keys through `verifier` and revokes them in `outbox`'s store (the verifier's).
    pub fn new(verifier: Arc<Verifier>, outbox: Arc<dyn Outbox>) -> Self {
        LeakIntake {
            verifier,
            outbox,
            clock: Arc::new(SystemClock),
        }
    }

    /// Injects the clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Judges each reported token; revokes each live key found, with its alert, and drops it from the
    /// verifier's caches. One finding per report, in order.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for more than [`MAX_TOKENS`] tokens; store failures (the keys revoked before
    /// one stay revoked).
    pub async fn report(&self, reports: &[LeakReport]) -> Result<Vec<Finding>> {
        if reports.len() > MAX_TOKENS {
            return Err(Error::invalid(
                "leak report",
                format!("more than {MAX_TOKENS} tokens"),
            ));
        }
        let mut out = Vec::with_capacity(reports.len());
        for report in reports {
            let key = self
                .verifier
                .key_of_token(report.token.expose_secret())
                .await?;
            let mut finding = Finding {
                token: report.token.clone(),
                token_type: report.token_type.clone(),
                label: Label::FalsePositive,
                key_id: None,
                revoked: false,
            };
            if let Some(key) = key {
                finding.label = Label::TruePositive;
                finding.key_id = Some(key.id.clone());
                if key.revoked_at.is_none() {
                    let now = self.clock.now();
                    let alert = Alert::key_leaked(
                        &key.id,
                        &key.owner,
                        key.org.as_deref(),
                        report.url.as_deref(),
                        report.source.as_deref(),
                        now,
                    );
                    finding.revoked = self.outbox.revoke_leaked(&key.id, now, &alert).await?;
                    // Through the verifier too: its caches (and a record cache in front of the store) forget the
                    // key at once; the revocation itself is already stored, so this changes no time.
                    self.verifier.revoke(&key.id).await?;
                    tracing::warn!(key_id = %key.id, owner = %key.owner, url = report.url.as_deref().unwrap_or(""),
                        "a leaked key was revoked");
                }
            }
            out.push(finding);
        }
        Ok(out)
    }
}
