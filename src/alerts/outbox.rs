//! [`Outbox`]: where alerts wait for delivery, in the store that holds their causes.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::{Alert, Endpoint, EndpointSecret};
use crate::error::Result;

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet; tried again at `next_attempt_at`.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Given up after the policy's attempts.
    Failed,
}

impl DeliveryState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Failed => "failed",
        }
    }

    /// The state a stored name stands for.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "failed" => Some(DeliveryState::Failed),
            _ => None,
        }
    }
}

/// One alert on its way to one endpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The alert.
    pub alert: Alert,
    /// The endpoint's id.
    pub endpoint_id: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made so far.
    pub attempts: u32,
    /// When it is due (pending), or was last tried.
    pub next_attempt_at: DateTime<Utc>,
    /// The last attempt's HTTP status, if it got one.
    pub last_status: Option<u16>,
    /// The last attempt's failure, if any (never a secret: a status line or a connection error's kind).
    pub last_error: Option<String>,
    /// When it was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Alerts, webhook endpoints and deliveries, kept by the store (memory, SQLite, PostgreSQL).
///
/// A budget's alerts are written by the ledger in the transaction that moves its spend; [`Outbox::push`] adds
/// others. An alert reaches every endpoint that receives its kind at the time it is first claimed (fanned out),
/// as one [`Delivery`] each, claimed by a deliverer for a lease so two deliverers rarely send the same one
/// (delivery is at least once: receivers deduplicate by the alert's id).
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Adds `alerts`, keeping one of each id (an id already stored is skipped). Returns how many were new.
    ///
    /// # Errors
    /// Backend failures.
    async fn push(&self, alerts: &[Alert]) -> Result<u64>;

    /// Adds `alert` for `endpoint_id` alone (a `webhook.test`), due at once.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown endpoint; backend failures.
    async fn push_to(&self, alert: &Alert, endpoint_id: &str) -> Result<()>;

    /// Stores a new endpoint.
    ///
    /// # Errors
    /// [`crate::Error::AlreadyExists`] for a taken id; backend failures.
    async fn add_endpoint(&self, endpoint: &Endpoint) -> Result<()>;

    /// Every endpoint, oldest first.
    ///
    /// # Errors
    /// Backend failures.
    async fn endpoints(&self) -> Result<Vec<Endpoint>>;

    /// Replaces an endpoint's secrets (a rotation).
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown endpoint; backend failures.
    async fn set_endpoint_secrets(&self, id: &str, secrets: &[EndpointSecret]) -> Result<()>;

    /// Removes an endpoint and its deliveries; false when there was none.
    ///
    /// # Errors
    /// Backend failures.
    async fn remove_endpoint(&self, id: &str) -> Result<bool>;

    /// Fans out the alerts not yet fanned out, then claims up to `limit` pending deliveries due at `now`
    /// (oldest due first) for `lease`: until then no other claim returns them.
    ///
    /// # Errors
    /// Backend failures.
    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>>;

    /// Stores the outcome of an attempt: `delivery`'s state, attempts, next attempt, last status and error.
    ///
    /// # Errors
    /// Backend failures. A delivery whose endpoint was removed meanwhile is ignored.
    async fn record_attempt(&self, delivery: &Delivery) -> Result<()>;

    /// The most recent `limit` deliveries (by due or last attempt time, newest first).
    ///
    /// # Errors
    /// Backend failures.
    async fn deliveries(&self, limit: usize) -> Result<Vec<Delivery>>;

    /// Revokes the key `key_id` because it leaked, writing `alert` in the same transaction; false (and no alert)
    /// when the key was already revoked.
    ///
    /// # Errors
    /// [`crate::Error::NotFound`] for an unknown key; backend failures.
    async fn revoke_leaked(&self, key_id: &str, at: DateTime<Utc>, alert: &Alert) -> Result<bool>;
}
