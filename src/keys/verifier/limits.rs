//! The [`Verifier`]'s rate limits, model allowlists and concurrency slots, for hosts that apply them after verify.

use super::*;

impl Verifier {
    /// Charges one request of `key` against every request limit in its `rules` and pre-checks its token limits,
    /// all or none: what [`Verifier::verify`] does last unless the requirement deferred it
    /// ([`Requirement::defer_limits`]). A refused check charges nothing and counts as the key's `RATE_LIMITED`.
    /// Without [`Verifier::with_limits`], [`Decision::UNLIMITED`].
    ///
    /// # Errors
    /// An unreachable limiter: [`crate::Error::Unavailable`] when limits fail closed (failing open, admitted and
    /// logged).
    pub async fn charge_requests(&self, key: &KeyRecord, rules: &KeyRules) -> Result<Decision> {
        let Some(gate) = &self.limits else {
            return Ok(Decision::UNLIMITED);
        };
        if rules.charges.is_empty() {
            return Ok(Decision::UNLIMITED);
        }
        let now = self.clock.now_micros();
        let decided = match gate.limiter.check_now(&rules.charges, now) {
            Some(decided) => decided,
            None => gate.limiter.check(&rules.charges, now).await,
        };
        match decided {
            Ok(decision) => {
                if !decision.allowed {
                    self.count(&key.id, VerdictCode::RateLimited, now);
                    // Deferred limits: the request's verify was counted valid; its refusal is counted here.
                    self.totals.add(VerdictCode::RateLimited);
                }
                Ok(decision)
            }
            Err(e) if self.config.limits_fail_open => {
                tracing::warn!(key_id = %key.id, error = %e, "rate limiter unreachable: failing open");
                Ok(Decision::UNLIMITED)
            }
            Err(e) => {
                tracing::warn!(key_id = %key.id, error = %e, "rate limiter unreachable: failing closed");
                Err(crate::Error::Unavailable {
                    dependency: crate::error::Dependency::Limiter,
                    source: Box::new(e),
                })
            }
        }
    }

    /// Gives back the request charges of one admitted request of `key` (its `rules`'): a request a later step
    /// refused (no concurrency slot, no provider key, no budget, a duplicate id) costs its limits nothing. Token
    /// limits were only pre-checked, so nothing of theirs is given back.
    ///
    /// # Errors
    /// The limiter's failures (the request's charge then stands: the caller logs it).
    pub async fn refund_requests(&self, key: &KeyRecord, rules: &KeyRules) -> Result<()> {
        let Some(gate) = &self.limits else {
            return Ok(());
        };
        let charged: Vec<Charge> = rules
            .charges
            .iter()
            .filter(|c| c.cost > 0)
            .cloned()
            .collect();
        if charged.is_empty() {
            return Ok(());
        }
        gate.limiter
            .refund(&charged, self.clock.now_micros())
            .await?;
        tracing::debug!(key_id = %key.id, "request charges given back");
        Ok(())
    }

    /// Charges the tokens a response used against the token limits of `key`, its owner and its org (a bucket may
    /// go into debt: the key's next verify then waits). Without [`Verifier::with_limits`] it does nothing.
    ///
    /// # Errors
    /// The limiter's failures (whatever `limits_fail_open` says: a lost charge is the caller's to log).
    pub async fn charge_tokens(&self, key: &KeyRecord, tokens: u64) -> Result<()> {
        let Some(gate) = &self.limits else {
            return Ok(());
        };
        // The key's rules as its verify compiled them (cached for a second): no limits read per response.
        let now = self.clock.now_micros();
        let rules = gate.compiled(key, now).await?;
        if rules.tokens.is_empty() {
            return Ok(());
        }
        let charges: Vec<crate::limits::Charge> = rules
            .tokens
            .iter()
            .map(|c| crate::limits::Charge {
                cost: tokens,
                ..c.clone()
            })
            .collect();
        gate.limiter.charge(&charges, now).await
    }

    /// Whether `key` may call `model` through `provider` (a provider name such as `openai`): the key's own
    /// allowlist ([`KeyRecord::allowed_models`]) and each one set on the key's, its owner's and its organisation's
    /// limits ([`crate::limits::Limits::models`]) must permit it. An empty list permits everything. The scopes' lists are read
    /// with the rate limits and trusted as long (a change holds within a second).
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use std::sync::Arc;
    /// use keymeter::keys::hash::{KeyHasher, Pepper, PepperRing};
    /// use keymeter::keys::{KeyIssuer, NewKey, Verifier, VerifierConfig, models::parse_rules};
    /// use keymeter::random::OsRandom;
    /// use keymeter::store::MemoryStore;
    ///
    /// let store = Arc::new(MemoryStore::new());
    /// let peppers = PepperRing::new(vec![Pepper::generate("p1", &OsRandom)?])?;
    /// let hasher = Arc::new(KeyHasher::new(peppers));
    /// let issuer = KeyIssuer::new(store.clone(), hasher.clone());
    /// let key = issuer.issue(NewKey::new("ci", "alice").allowed_models(parse_rules("gpt-4o*")?)).await?;
    /// let verifier = Verifier::new(store.clone(), hasher, VerifierConfig::default())?;
    /// assert!(verifier.check_model(&key.record, "openai", "gpt-4o-mini").await.is_ok());
    /// let refused = verifier.check_model(&key.record, "anthropic", "claude-sonnet-4-5").await;
    /// assert!(matches!(refused, Err(keymeter::Error::ModelNotAllowed { .. })));
    /// # Ok::<(), keymeter::Error>(()) }).unwrap();
    /// ```
    ///
    /// # Errors
    /// [`crate::Error::ModelNotAllowed`] naming the scope that refused; the limit store's failures.
    pub async fn check_model(&self, key: &KeyRecord, provider: &str, model: &str) -> Result<()> {
        match self.rules(key).await? {
            Some(rules) => rules.check_model(key, provider, model),
            None => KeyRules::default().check_model(key, provider, model),
        }
    }

    /// The rules `key` is held to by its scopes' limits (read with the rate limits and trusted as long); `None`
    /// without [`Verifier::with_limits`]. A valid verdict already carries them ([`Verdict::rules`]).
    ///
    /// # Errors
    /// The limit store's failures.
    pub async fn rules(&self, key: &KeyRecord) -> Result<Option<Arc<KeyRules>>> {
        match &self.limits {
            Some(gate) => gate.compiled(key, self.clock.now_micros()).await.map(Some),
            None => Ok(None),
        }
    }

    /// Takes a slot for one request by `key` in each of its scopes with a concurrency limit (its `rules`, from
    /// the verdict or [`Verifier::rules`]); the guard gives them back when the request ends. Without
    /// [`Verifier::with_slots`] or a concurrency limit, a guard holding nothing and no store call.
    ///
    /// # Errors
    /// [`crate::Error::TooManyConcurrent`] naming the scope with no room (and nothing held); the slot store's
    /// failures, as [`crate::Error::Unavailable`] (the limiter) when the verifier fails closed; failing open, a
    /// guard holding nothing.
    pub async fn claim_slot(&self, key: &KeyRecord, rules: &KeyRules) -> Result<SlotGuard> {
        let (Some(keeper), claims) = (&self.slots, rules.slot_claims()) else {
            return Ok(SlotGuard::none());
        };
        if claims.is_empty() {
            return Ok(SlotGuard::none());
        }
        match keeper.acquire(claims).await {
            Err(e @ crate::Error::TooManyConcurrent { .. }) => Err(e),
            Err(e) if self.config.limits_fail_open => {
                tracing::warn!(key_id = %key.id, error = %e, "concurrency slots unreachable: failing open");
                Ok(SlotGuard::none())
            }
            Err(e) => {
                tracing::warn!(key_id = %key.id, error = %e, "concurrency slots unreachable: failing closed");
                Err(crate::Error::Unavailable {
                    dependency: crate::error::Dependency::Limiter,
                    source: Box::new(e),
                })
            }
            ok => ok,
        }
    }
}
