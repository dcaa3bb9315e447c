//! [`Outbox`] in memory, under the ledger's lock (so a budget's alerts land with the spend that caused them).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};

use crate::alerts::{Alert, Delivery, DeliveryState, Endpoint, EndpointSecret, Outbox};
use crate::error::{Error, Result};
use crate::keys::KeyStore;
use crate::store::memory::MemoryStore;

#[derive(Debug, Default)]
pub(crate) struct OutboxState {
    alerts: HashMap<String, Alert>,
    /// Alert ids not yet fanned out, in arrival order.
    unfanned: Vec<String>,
    endpoints: BTreeMap<String, Endpoint>,
    /// By (alert id, endpoint id).
    deliveries: BTreeMap<(String, String), Delivery>,
}

impl OutboxState {
    /// Keeps one of each id; returns how many were new.
    pub(super) fn insert(&mut self, alerts: &[Alert]) -> u64 {
        let mut added = 0;
        for alert in alerts {
            if !self.alerts.contains_key(&alert.id) {
                self.alerts.insert(alert.id.clone(), alert.clone());
                self.unfanned.push(alert.id.clone());
                added += 1;
            }
        }
        added
    }

    fn fan_out(&mut self, now: DateTime<Utc>) {
        for id in std::mem::take(&mut self.unfanned) {
            let Some(alert) = self.alerts.get(&id) else {
                continue;
            };
            for endpoint in self.endpoints.values().filter(|e| e.receives(alert.kind)) {
                self.deliveries
                    .entry((id.clone(), endpoint.id.clone()))
                    .or_insert_with(|| pending(alert.clone(), &endpoint.id, now));
            }
        }
    }
}

fn pending(alert: Alert, endpoint_id: &str, at: DateTime<Utc>) -> Delivery {
    Delivery {
        alert,
        endpoint_id: endpoint_id.to_string(),
        state: DeliveryState::Pending,
        attempts: 0,
        next_attempt_at: at,
        last_status: None,
        last_error: None,
        delivered_at: None,
    }
}

impl MemoryStore {
    fn outbox<R>(&self, f: impl FnOnce(&mut OutboxState) -> R) -> R {
        f(&mut self.ledger().outbox)
    }
}

#[async_trait]
impl Outbox for MemoryStore {
    async fn push(&self, alerts: &[Alert]) -> Result<u64> {
        Ok(self.outbox(|o| o.insert(alerts)))
    }

    async fn push_to(&self, alert: &Alert, endpoint_id: &str) -> Result<()> {
        self.outbox(|o| {
            if !o.endpoints.contains_key(endpoint_id) {
                return Err(Error::webhook_not_found(endpoint_id));
            }
            o.alerts
                .entry(alert.id.clone())
                .or_insert_with(|| alert.clone());
            o.deliveries
                .entry((alert.id.clone(), endpoint_id.to_string()))
                .or_insert_with(|| pending(alert.clone(), endpoint_id, alert.created_at));
            Ok(())
        })
    }

    async fn add_endpoint(&self, endpoint: &Endpoint) -> Result<()> {
        self.outbox(|o| {
            if o.endpoints.contains_key(&endpoint.id) {
                return Err(Error::AlreadyExists {
                    what: "webhook",
                    id: endpoint.id.clone(),
                });
            }
            o.endpoints.insert(endpoint.id.clone(), endpoint.clone());
            Ok(())
        })
    }

    async fn endpoints(&self) -> Result<Vec<Endpoint>> {
        let mut all: Vec<Endpoint> = self.outbox(|o| o.endpoints.values().cloned().collect());
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    async fn set_endpoint_secrets(&self, id: &str, secrets: &[EndpointSecret]) -> Result<()> {
        self.outbox(|o| match o.endpoints.get_mut(id) {
            Some(e) => {
                e.secrets = secrets.to_vec();
                Ok(())
            }
            None => Err(Error::webhook_not_found(id)),
        })
    }

    async fn remove_endpoint(&self, id: &str) -> Result<bool> {
        Ok(self.outbox(|o| {
            o.deliveries.retain(|(_, e), _| e != id);
            o.endpoints.remove(id).is_some()
        }))
    }

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        Ok(self.outbox(|o| {
            o.fan_out(now);
            let mut due: Vec<&mut Delivery> = o
                .deliveries
                .values_mut()
                .filter(|d| d.state == DeliveryState::Pending && d.next_attempt_at <= now)
                .collect();
            due.sort_by(|a, b| {
                (a.next_attempt_at, &a.alert.id).cmp(&(b.next_attempt_at, &b.alert.id))
            });
            due.into_iter()
                .take(limit)
                .map(|d| {
                    let claimed = d.clone();
                    d.next_attempt_at = now + lease;
                    claimed
                })
                .collect()
        }))
    }

    async fn record_attempt(&self, delivery: &Delivery) -> Result<()> {
        self.outbox(|o| {
            if let Some(d) = o
                .deliveries
                .get_mut(&(delivery.alert.id.clone(), delivery.endpoint_id.clone()))
            {
                *d = delivery.clone();
            }
        });
        Ok(())
    }

    async fn deliveries(&self, limit: usize) -> Result<Vec<Delivery>> {
        let mut all: Vec<Delivery> = self.outbox(|o| o.deliveries.values().cloned().collect());
        all.sort_by(|a, b| {
            b.next_attempt_at
                .cmp(&a.next_attempt_at)
                .then_with(|| a.alert.id.cmp(&b.alert.id))
        });
        all.truncate(limit);
        Ok(all)
    }

    async fn revoke_leaked(&self, key_id: &str, at: DateTime<Utc>, alert: &Alert) -> Result<bool> {
        let record = self
            .get(key_id)
            .await?
            .ok_or_else(|| Error::key_not_found(key_id))?;
        if record.revoked_at.is_some() {
            return Ok(false);
        }
        // The keys' lock and then the ledger's, as nowhere takes them the other way round.
        let mut keys = self.write();
        let mut revoked = false;
        keys.update(key_id, |r| {
            if r.revoked_at.is_none() {
                r.revoked_at = Some(at);
                revoked = true;
            }
        })?;
        keys.revoke_created_by(key_id, at);
        if revoked {
            self.outbox(|o| o.insert(std::slice::from_ref(alert)));
        }
        Ok(revoked)
    }
}
