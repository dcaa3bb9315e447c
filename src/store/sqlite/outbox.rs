//! [`Outbox`] on SQLite: alerts, endpoints and deliveries in three tables; a claim is one `BEGIN IMMEDIATE`
//! transaction (fan out, select what is due, push it past the lease).

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::{SqliteStore, Tx, corrupt, db, from_micros, micros};
use crate::alerts::{Alert, Delivery, DeliveryState, Endpoint, EndpointSecret, Outbox};
use crate::error::{Error, Result};

/// Inserts `alerts` in the caller's transaction, keeping one of each id; returns how many were new.
pub(super) async fn insert_alerts(tx: &mut Tx, alerts: &[Alert]) -> Result<u64> {
    let mut added = 0;
    for alert in alerts {
        added += insert_alert(tx, alert, false).await?;
    }
    Ok(added)
}

/// Inserts one alert unless its id is stored; `fanned_out` when its deliveries are made by the caller.
async fn insert_alert(tx: &mut Tx, alert: &Alert, fanned_out: bool) -> Result<u64> {
    let done = sqlx::query(
        "INSERT INTO keymeter_alerts (id, kind, created_at, data, fanned_out) VALUES (?1, ?2, ?3, ?4, ?5) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&alert.id)
    .bind(alert.kind.as_str())
    .bind(micros(alert.created_at))
    .bind(alert.data.to_string())
    .bind(fanned_out)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(done.rows_affected())
}

fn alert_of(row: &SqliteRow) -> Result<Alert> {
    let text = |c: &str| row.try_get::<String, _>(c).map_err(db);
    Ok(Alert {
        id: text("alert_id")?,
        kind: text("kind")?.parse().map_err(|_| corrupt("alert kind"))?,
        created_at: from_micros(Some(row.try_get("created_at").map_err(db)?))?
            .ok_or_else(|| corrupt("alert time"))?,
        data: serde_json::from_str(&text("data")?).map_err(|_| corrupt("alert data"))?,
    })
}

fn delivery_of(row: &SqliteRow) -> Result<Delivery> {
    let state: String = row.try_get("state").map_err(db)?;
    Ok(Delivery {
        alert: alert_of(row)?,
        endpoint_id: row.try_get("endpoint_id").map_err(db)?,
        state: DeliveryState::from_name(&state).ok_or_else(|| corrupt("delivery state"))?,
        attempts: u32::try_from(row.try_get::<i64, _>("attempts").map_err(db)?)
            .map_err(|_| corrupt("delivery attempts"))?,
        next_attempt_at: from_micros(Some(row.try_get("next_at").map_err(db)?))?
            .ok_or_else(|| corrupt("delivery time"))?,
        last_status: row
            .try_get::<Option<i64>, _>("last_status")
            .map_err(db)?
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.try_get("last_error").map_err(db)?,
        delivered_at: from_micros(row.try_get("delivered_at").map_err(db)?)?,
    })
}

fn endpoint_of(row: &SqliteRow) -> Result<Endpoint> {
    let text = |c: &str| row.try_get::<String, _>(c).map_err(db);
    Ok(Endpoint {
        id: text("id")?,
        url: text("url")?,
        events: serde_json::from_str(&text("events")?).map_err(|_| corrupt("webhook events"))?,
        secrets: serde_json::from_str(&text("secrets")?).map_err(|_| corrupt("webhook secrets"))?,
        created_at: from_micros(Some(row.try_get("created_at").map_err(db)?))?
            .ok_or_else(|| corrupt("webhook time"))?,
    })
}

const DELIVERY_COLUMNS: &str = "d.alert_id, d.endpoint_id, d.state, d.attempts, d.next_at, d.last_status, \
     d.last_error, d.delivered_at, a.kind, a.created_at, a.data";

/// Creates the deliveries of every alert not yet fanned out, to the endpoints that receive it now.
async fn fan_out(tx: &mut Tx, now: DateTime<Utc>) -> Result<()> {
    let alerts = sqlx::query(
        "SELECT id, kind FROM keymeter_alerts WHERE fanned_out = 0 ORDER BY created_at LIMIT 1000",
    )
    .fetch_all(&mut **tx)
    .await
    .map_err(db)?;
    if alerts.is_empty() {
        return Ok(());
    }
    let endpoints: Vec<Endpoint> = sqlx::query("SELECT * FROM keymeter_webhooks")
        .fetch_all(&mut **tx)
        .await
        .map_err(db)?
        .iter()
        .map(endpoint_of)
        .collect::<Result<_>>()?;
    for row in alerts {
        let id: String = row.try_get("id").map_err(db)?;
        let kind: String = row.try_get("kind").map_err(db)?;
        let kind: crate::alerts::AlertKind = kind.parse().map_err(|_| corrupt("alert kind"))?;
        for endpoint in endpoints.iter().filter(|e| e.receives(kind)) {
            sqlx::query(
                "INSERT INTO keymeter_deliveries (alert_id, endpoint_id, state, next_at) \
                 VALUES (?1, ?2, 'pending', ?3) ON CONFLICT DO NOTHING",
            )
            .bind(&id)
            .bind(&endpoint.id)
            .bind(micros(now))
            .execute(&mut **tx)
            .await
            .map_err(db)?;
        }
        sqlx::query("UPDATE keymeter_alerts SET fanned_out = 1 WHERE id = ?1")
            .bind(&id)
            .execute(&mut **tx)
            .await
            .map_err(db)?;
    }
    Ok(())
}

#[async_trait]
impl Outbox for SqliteStore {
    async fn push(&self, alerts: &[Alert]) -> Result<u64> {
        immediate!(self, tx => { insert_alerts(tx, alerts).await })
    }

    async fn push_to(&self, alert: &Alert, endpoint_id: &str) -> Result<()> {
        immediate!(self, tx => {
            async {
                let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM keymeter_webhooks WHERE id = ?1")
                    .bind(endpoint_id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db)?;
                if known.is_none() {
                    return Err(Error::webhook_not_found(endpoint_id));
                }
                insert_alert(tx, alert, true).await?;
                sqlx::query(
                    "INSERT INTO keymeter_deliveries (alert_id, endpoint_id, state, next_at) \
                     VALUES (?1, ?2, 'pending', ?3) ON CONFLICT DO NOTHING",
                )
                .bind(&alert.id)
                .bind(endpoint_id)
                .bind(micros(alert.created_at))
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                Ok(())
            }
            .await
        })
    }

    async fn add_endpoint(&self, endpoint: &Endpoint) -> Result<()> {
        let events =
            serde_json::to_string(&endpoint.events).map_err(|e| Error::Internal(e.to_string()))?;
        let secrets =
            serde_json::to_string(&endpoint.secrets).map_err(|e| Error::Internal(e.to_string()))?;
        let done = immediate!(self, tx => {
            sqlx::query(
                "INSERT INTO keymeter_webhooks (id, url, events, secrets, created_at) VALUES (?1, ?2, ?3, ?4, ?5) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&endpoint.id)
            .bind(&endpoint.url)
            .bind(&events)
            .bind(&secrets)
            .bind(micros(endpoint.created_at))
            .execute(&mut **tx)
            .await
            .map_err(db)
        })?;
        if done.rows_affected() == 0 {
            return Err(Error::AlreadyExists {
                what: "webhook",
                id: endpoint.id.clone(),
            });
        }
        Ok(())
    }

    async fn endpoints(&self) -> Result<Vec<Endpoint>> {
        sqlx::query("SELECT * FROM keymeter_webhooks ORDER BY created_at, id")
            .fetch_all(self.pool())
            .await
            .map_err(db)?
            .iter()
            .map(endpoint_of)
            .collect()
    }

    async fn set_endpoint_secrets(&self, id: &str, secrets: &[EndpointSecret]) -> Result<()> {
        let secrets = serde_json::to_string(secrets).map_err(|e| Error::Internal(e.to_string()))?;
        let done = immediate!(self, tx => {
            sqlx::query("UPDATE keymeter_webhooks SET secrets = ?2 WHERE id = ?1")
                .bind(id)
                .bind(&secrets)
                .execute(&mut **tx)
                .await
                .map_err(db)
        })?;
        if done.rows_affected() == 0 {
            return Err(Error::webhook_not_found(id));
        }
        Ok(())
    }

    async fn remove_endpoint(&self, id: &str) -> Result<bool> {
        immediate!(self, tx => {
            async {
                sqlx::query("DELETE FROM keymeter_deliveries WHERE endpoint_id = ?1")
                    .bind(id)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                let done = sqlx::query("DELETE FROM keymeter_webhooks WHERE id = ?1")
                    .bind(id)
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                Ok(done.rows_affected() > 0)
            }
            .await
        })
    }

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        immediate!(self, tx => {
            async {
                fan_out(tx, now).await?;
                let sql = format!(
                    "SELECT {DELIVERY_COLUMNS} FROM keymeter_deliveries d JOIN keymeter_alerts a ON a.id = d.alert_id \
                     WHERE d.state = 'pending' AND d.next_at <= ?1 ORDER BY d.next_at, d.alert_id LIMIT ?2"
                );
                let due: Vec<Delivery> = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(micros(now))
                    .bind(limit)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(db)?
                    .iter()
                    .map(delivery_of)
                    .collect::<Result<_>>()?;
                for d in &due {
                    sqlx::query("UPDATE keymeter_deliveries SET next_at = ?3 WHERE alert_id = ?1 AND endpoint_id = ?2")
                        .bind(&d.alert.id)
                        .bind(&d.endpoint_id)
                        .bind(micros(now + lease))
                        .execute(&mut **tx)
                        .await
                        .map_err(db)?;
                }
                Ok(due)
            }
            .await
        })
    }

    async fn record_attempt(&self, d: &Delivery) -> Result<()> {
        immediate!(self, tx => {
            sqlx::query(
                "UPDATE keymeter_deliveries SET state = ?3, attempts = ?4, next_at = ?5, last_status = ?6, \
                 last_error = ?7, delivered_at = ?8 WHERE alert_id = ?1 AND endpoint_id = ?2",
            )
            .bind(&d.alert.id)
            .bind(&d.endpoint_id)
            .bind(d.state.as_str())
            .bind(i64::from(d.attempts))
            .bind(micros(d.next_attempt_at))
            .bind(d.last_status.map(i64::from))
            .bind(&d.last_error)
            .bind(d.delivered_at.map(micros))
            .execute(&mut **tx)
            .await
            .map_err(db)
            .map(drop)
        })
    }

    async fn deliveries(&self, limit: usize) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM keymeter_deliveries d JOIN keymeter_alerts a ON a.id = d.alert_id \
             ORDER BY d.next_at DESC, d.alert_id LIMIT ?1"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(self.pool())
            .await
            .map_err(db)?
            .iter()
            .map(delivery_of)
            .collect()
    }

    async fn revoke_leaked(&self, key_id: &str, at: DateTime<Utc>, alert: &Alert) -> Result<bool> {
        immediate!(self, tx => {
            async {
                let done = sqlx::query(
                    // With the keys it created (DESIGN §12).
                    "UPDATE keymeter_api_keys SET revoked_at = ?2 \
                     WHERE (id = ?1 OR created_by = ?1) AND revoked_at IS NULL",
                )
                .bind(key_id)
                .bind(micros(at))
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                if done.rows_affected() == 0 {
                    let known: Option<i64> = sqlx::query_scalar("SELECT 1 FROM keymeter_api_keys WHERE id = ?1")
                        .bind(key_id)
                        .fetch_optional(&mut **tx)
                        .await
                        .map_err(db)?;
                    return match known {
                        Some(_) => Ok(false),
                        None => Err(Error::key_not_found(key_id)),
                    };
                }
                insert_alerts(tx, std::slice::from_ref(alert)).await?;
                Ok(true)
            }
            .await
        })
    }
}
