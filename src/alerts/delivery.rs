//! [`Deliverer`]: posts alerts to their endpoints, signed, at least once, with exponential backoff — and watches
//! the store and limiter, alerting when one goes down or comes back.

use std::sync::{Arc, Mutex};
use std::time::Duration as StdDuration;

use chrono::Duration;
use serde::Serialize;

use super::spool::Spool;
use super::{Alert, Delivery, DeliveryState, Endpoint, Outbox, check_url, signature};
use crate::clock::{Clock, SystemClock};
use crate::credentials::Vault;
use crate::error::{Error, Result};
use crate::limits::RateLimiter;
use crate::store::Store;

/// How deliveries are tried.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// The whole of one attempt (connect, send, answer).
    pub timeout: StdDuration,
    /// The wait before the second attempt; each later wait doubles, up to `max_backoff`.
    pub backoff: Duration,
    /// The longest wait between attempts.
    pub max_backoff: Duration,
    /// Attempts before a delivery is given up (`failed`).
    pub max_attempts: u32,
    /// Deliveries claimed per round of a pass.
    pub batch: usize,
    /// Whether `http://` to a loopback host is allowed (development only).
    pub development: bool,
}

impl Default for DeliveryPolicy {
    /// 10 s per attempt, 10 s doubling to an hour between attempts, 12 attempts (about 8 hours in all), 32 per
    /// round, `https://` only.
    fn default() -> Self {
        DeliveryPolicy {
            timeout: StdDuration::from_secs(10),
            backoff: Duration::seconds(10),
            max_backoff: Duration::hours(1),
            max_attempts: 12,
            batch: 32,
            development: false,
        }
    }
}

impl DeliveryPolicy {
    /// The wait after `attempts` failed attempts.
    pub fn wait_after(&self, attempts: u32) -> Duration {
        let doublings = attempts.saturating_sub(1).min(30);
        let wait = self
            .backoff
            .checked_mul(1 << doublings)
            .unwrap_or(self.max_backoff);
        wait.min(self.max_backoff)
    }
}

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pass {
    /// Deliveries that got a 2xx.
    pub delivered: u64,
    /// Deliveries that failed and will be tried again.
    pub retrying: u64,
    /// Deliveries given up this pass.
    pub failed: u64,
}

/// The store and limiter probed, and the instance named in their alerts.
type Watched = (Arc<dyn Store>, Arc<dyn RateLimiter>, String);

/// What the deliverer knows of a watched dependency.
#[derive(Debug, Default)]
struct Watch {
    store_down: bool,
    limiter_down: bool,
}

/// Delivers the outbox's alerts (and the spool's): claim what is due, post each signed with its endpoint's live
/// secrets, record the outcome. A redirect is never followed (it counts as a failure), a URL that is no longer
/// allowed is not called, and nothing sent carries a secret beyond the signature.
///
/// ```no_run
/// # async fn run(km: keymeter::Keymeter) -> keymeter::Result<()> {
/// use keymeter::alerts::{Deliverer, DeliveryPolicy};
/// let deliverer = Deliverer::new(km.store.clone(), km.vault.clone(), DeliveryPolicy::default())?;
/// let pass = deliverer.pass().await?; // `keymeter webhooks deliver` does this once
/// println!("{} delivered, {} to retry", pass.delivered, pass.retrying);
/// # Ok(()) }
/// ```
pub struct Deliverer {
    outbox: Arc<dyn Outbox>,
    vault: Arc<Vault>,
    client: reqwest::Client,
    policy: DeliveryPolicy,
    clock: Arc<dyn Clock>,
    spool: Option<Spool>,
    /// The endpoints as last read, for spooled alerts while the store is away.
    endpoints: Mutex<Option<Vec<Endpoint>>>,
    watched: Option<Watched>,
    watch: Mutex<Watch>,
}

impl std::fmt::Debug for Deliverer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliverer")
            .field("policy", &self.policy)
            .field("spool", &self.spool)
            .finish_non_exhaustive()
    }
}

impl Deliverer {
    /// A deliverer of `outbox`'s alerts, opening endpoint secrets with `vault`.
    ///
    /// # Errors
    /// [`Error::Config`] when the HTTP client cannot be built.
    pub fn new(outbox: Arc<dyn Outbox>, vault: Arc<Vault>, policy: DeliveryPolicy) -> Result<Self> {
        let client = crate::http::builder()?
            .redirect(reqwest::redirect::Policy::none())
            .timeout(policy.timeout)
            .build()
            .map_err(|e| Error::Config(format!("cannot build the webhook client: {e}")))?;
        Ok(Deliverer {
            outbox,
            vault,
            client,
            policy,
            clock: Arc::new(SystemClock),
            spool: None,
            endpoints: Mutex::new(None),
            watched: None,
            watch: Mutex::default(),
        })
    }

    /// Injects the clock (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Keeps alerts about the store in `spool` and delivers them from there.
    #[must_use]
    pub fn with_spool(mut self, spool: Spool) -> Self {
        self.spool = Some(spool);
        self
    }

    /// Probes `store` and `limiter` on every pass and alerts `dependency.down` / `dependency.up` on a change,
    /// naming `instance`. An alert about the store goes to the spool (set one with [`Deliverer::with_spool`]).
    #[must_use]
    pub fn watching(
        mut self,
        store: Arc<dyn Store>,
        limiter: Arc<dyn RateLimiter>,
        instance: impl Into<String>,
    ) -> Self {
        self.watched = Some((store, limiter, instance.into()));
        self
    }

    /// Runs passes every `interval` until the runtime stops; a failed pass is logged and the next one tries again.
    pub fn spawn(self: Arc<Self>, interval: StdDuration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            loop {
                if let Err(e) = self.pass().await {
                    tracing::warn!(error = %e, "webhook delivery pass failed; trying again");
                }
                tokio::time::sleep(interval).await;
            }
        })
    }

    /// One pass: watched dependencies probed, spooled alerts tried, then rounds of due deliveries until fewer
    /// than a batch are due (at most 16 rounds).
    ///
    /// # Errors
    /// The store's failure to claim or record (what was delivered before it stays delivered).
    pub async fn pass(&self) -> Result<Pass> {
        let mut pass = Pass::default();
        if self.probe().await {
            // The store is away: only what the spool holds can go, to the endpoints last read.
            self.spooled(&mut pass).await;
            return Ok(pass);
        }
        match self.outbox.endpoints().await {
            Ok(endpoints) => *lock(&self.endpoints) = Some(endpoints),
            Err(e) => {
                self.spooled(&mut pass).await;
                return Err(e);
            }
        }
        self.spooled(&mut pass).await;
        for _ in 0..16 {
            let now = self.clock.now();
            // Long enough for an attempt (bounded by the timeout) and its record; a deliverer that dies holding
            // a claim gives it back when this runs out.
            let lease = Duration::from_std(self.policy.timeout * 2)
                .unwrap_or(Duration::seconds(20))
                + Duration::seconds(5);
            let due = self
                .outbox
                .claim_deliveries(now, lease, self.policy.batch)
                .await?;
            let endpoints = lock(&self.endpoints).clone().unwrap_or_default();
            let round = due.len();
            let attempts = due.into_iter().map(|d| {
                let endpoint = endpoints.iter().find(|e| e.id == d.endpoint_id).cloned();
                self.attempt(d, endpoint)
            });
            for delivery in futures_util::future::join_all(attempts).await {
                match delivery.state {
                    DeliveryState::Delivered => pass.delivered += 1,
                    DeliveryState::Failed => pass.failed += 1,
                    DeliveryState::Pending => pass.retrying += 1,
                }
                self.outbox.record_attempt(&delivery).await?;
            }
            if round < self.policy.batch {
                break;
            }
        }
        Ok(pass)
    }

    /// Tries one delivery and says how it stands after.
    async fn attempt(&self, mut delivery: Delivery, endpoint: Option<Endpoint>) -> Delivery {
        let now = self.clock.now();
        delivery.attempts += 1;
        let outcome = match &endpoint {
            Some(endpoint) => self.send(endpoint, &delivery.alert).await,
            None => Err((None, "the endpoint is gone".to_string())),
        };
        match outcome {
            Ok(status) => {
                delivery.state = DeliveryState::Delivered;
                delivery.last_status = Some(status);
                delivery.last_error = None;
                delivery.delivered_at = Some(now);
                delivery.next_attempt_at = now;
            }
            Err((status, error)) => {
                delivery.last_status = status;
                delivery.last_error = Some(error.clone());
                if delivery.attempts >= self.policy.max_attempts {
                    delivery.state = DeliveryState::Failed;
                    delivery.next_attempt_at = now;
                    tracing::warn!(
                        alert = %delivery.alert.id, kind = %delivery.alert.kind, endpoint = %delivery.endpoint_id,
                        attempts = delivery.attempts, error = %error,
                        "webhook delivery given up"
                    );
                } else {
                    delivery.next_attempt_at = now + self.policy.wait_after(delivery.attempts);
                    tracing::info!(
                        alert = %delivery.alert.id, endpoint = %delivery.endpoint_id,
                        attempts = delivery.attempts, error = %error, retry_at = %delivery.next_attempt_at,
                        "webhook delivery failed; will retry"
                    );
                }
            }
        }
        delivery
    }

    /// Posts `alert` to `endpoint`: the status on a 2xx, else the status (if any) and what went wrong.
    async fn send(
        &self,
        endpoint: &Endpoint,
        alert: &Alert,
    ) -> std::result::Result<u16, (Option<u16>, String)> {
        check_url(&endpoint.url, self.policy.development).map_err(|e| (None, e.to_string()))?;
        let now = self.clock.now();
        let secrets = endpoint
            .signing_secrets(&self.vault, now)
            .map_err(|e| (None, format!("the signing secret does not open: {e}")))?;
        let body = alert.body();
        let signed = signature::sign(&secrets, now.timestamp(), body.as_bytes());
        let answer = self
            .client
            .post(&endpoint.url)
            .header("content-type", "application/json")
            .header(signature::HEADER, signed)
            .header("keymeter-event-id", &alert.id)
            .body(body)
            .send()
            .await
            .map_err(|e| (None, describe(&e)))?;
        let status = answer.status();
        if status.is_success() {
            Ok(status.as_u16())
        } else if status.is_redirection() {
            Err((
                Some(status.as_u16()),
                format!("redirect refused ({status})"),
            ))
        } else {
            Err((Some(status.as_u16()), format!("answered {status}")))
        }
    }

    /// Tries each spooled alert on the endpoints (as last read) that receive it and lack it; forgets it once all
    /// have it, or after the policy's attempts.
    async fn spooled(&self, pass: &mut Pass) {
        let Some(spool) = &self.spool else { return };
        let entries = match spool.entries() {
            Ok(entries) => entries,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the alert spool");
                return;
            }
        };
        // Never read (the store was away from the start): keep everything until the endpoints are known.
        let Some(endpoints) = lock(&self.endpoints).clone() else {
            return;
        };
        for mut entry in entries {
            let targets: Vec<&Endpoint> = endpoints
                .iter()
                .filter(|e| e.receives(entry.alert.kind) && !entry.delivered_to.contains(&e.id))
                .collect();
            let mut failed = false;
            for endpoint in targets {
                match self.send(endpoint, &entry.alert).await {
                    Ok(_) => {
                        entry.delivered_to.push(endpoint.id.clone());
                        pass.delivered += 1;
                    }
                    Err((_, error)) => {
                        failed = true;
                        tracing::info!(alert = %entry.alert.id, endpoint = %endpoint.id, error = %error,
                            "spooled alert not delivered; will retry");
                    }
                }
            }
            entry.attempts += 1;
            let done = !failed || entry.attempts >= self.policy.max_attempts;
            let kept = if done {
                if failed {
                    pass.failed += 1;
                    tracing::warn!(alert = %entry.alert.id, "spooled alert given up");
                }
                spool.remove(&entry.alert.id)
            } else {
                pass.retrying += 1;
                spool.write(&entry)
            };
            if let Err(e) = kept {
                tracing::warn!(error = %e, "cannot update the alert spool");
            }
        }
    }

    /// Probes the watched dependencies and alerts on a change: the store's own outage into the spool, the rest
    /// into the outbox. True when the store is down.
    async fn probe(&self) -> bool {
        let Some((store, limiter, instance)) = &self.watched else {
            return false;
        };
        let within = StdDuration::from_secs(2);
        let probe = |r: std::result::Result<Result<()>, tokio::time::error::Elapsed>| match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer within 2 s".to_string()),
        };
        let (s, l) = futures_util::future::join(
            tokio::time::timeout(within, store.ping()),
            tokio::time::timeout(within, limiter.reachable()),
        )
        .await;
        let (store_error, limiter_error) = (probe(s), probe(l));
        let now = self.clock.now();
        let mut changes = Vec::new();
        {
            let mut watch = lock(&self.watch);
            let Watch {
                store_down,
                limiter_down,
            } = &mut *watch;
            for (name, was_down, error) in [
                ("store", store_down, &store_error),
                ("limiter", limiter_down, &limiter_error),
            ] {
                if *was_down != error.is_some() {
                    *was_down = error.is_some();
                    changes.push(Alert::dependency(
                        name,
                        error.is_none(),
                        instance,
                        error.as_deref(),
                        now,
                    ));
                }
            }
        }
        for alert in changes {
            tracing::warn!(kind = %alert.kind, dependency = %alert.data["dependency"], "dependency state changed");
            let spooled = match &self.spool {
                Some(spool) if store_error.is_some() => spool.put(&alert),
                _ => self
                    .outbox
                    .push(std::slice::from_ref(&alert))
                    .await
                    .map(drop),
            };
            if let Err(e) = spooled {
                tracing::warn!(error = %e, alert = %alert.id, "cannot keep a dependency alert");
            }
        }
        store_error.is_some()
    }
}

impl crate::Config {
    /// The delivery policy of this configuration: its `KEYMETER_WEBHOOK_*` settings, `http://` to loopback
    /// allowed in development only.
    pub fn delivery_policy(&self) -> DeliveryPolicy {
        DeliveryPolicy {
            timeout: self.alerts.webhook_timeout,
            backoff: Duration::from_std(self.alerts.webhook_retry).unwrap_or(Duration::seconds(10)),
            max_attempts: self.alerts.webhook_attempts,
            development: self.environment.environment.is_development(),
            ..DeliveryPolicy::default()
        }
    }

    /// The deliverer a service runs: `km`'s outbox and vault, this configuration's policy, watching `km`'s store
    /// and limiter, with its spool in the journal's directory (`alerts/`) when there is a journal.
    ///
    /// # Errors
    /// [`Error::Config`] when the HTTP client or the spool cannot be made.
    pub fn deliverer(&self, km: &crate::Keymeter) -> Result<Deliverer> {
        let instance = km
            .meter
            .journal()
            .map(|j| j.instance_id().to_string())
            .or_else(|| self.instance_id.clone())
            .unwrap_or_else(|| "keymeter".into());
        let mut deliverer = Deliverer::new(
            km.store.clone(),
            km.vault.clone(),
            self.delivery_policy(),
        )?
        .watching(km.store.clone(), km.limiter.clone(), instance);
        if let Some(journal) = km.meter.journal() {
            deliverer = deliverer.with_spool(Spool::open(journal.dir().join("alerts"))?);
        }
        Ok(deliverer)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A connection error's kind, never its URL (a URL may carry a token in its query).
fn describe(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timed out".into()
    } else if e.is_connect() {
        "cannot connect".into()
    } else if e.is_redirect() {
        "redirect refused".into()
    } else {
        "request failed".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_up_to_the_cap() {
        let policy = DeliveryPolicy::default();
        let waits: Vec<i64> = (1..=11)
            .map(|n| policy.wait_after(n).num_seconds())
            .collect();
        assert_eq!(
            waits,
            [10, 20, 40, 80, 160, 320, 640, 1280, 2560, 3600, 3600]
        );
        assert_eq!(policy.wait_after(1000), Duration::hours(1));
    }
}
