//! [`Outbox`] on PostgreSQL: alerts, endpoints and deliveries in three tables. A claim takes due rows with
//! `FOR UPDATE SKIP LOCKED` and pushes them past the lease, so deliverers on several instances share the work
//! without waiting on each other.

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::{PostgresStore, Tx, corrupt, db};
use crate::alerts::{Alert, AlertKind, Delivery, DeliveryState, Endpoint, EndpointSecret, Outbox};
use crate::error::{Error, Result};

/// Inserts `alerts` in the caller's transaction, keeping one of each id; returns how many were new.
pub(super) async fn insert_alerts(tx: &mut Tx, alerts: &[Alert]) -> Result<u64> {
    if alerts.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = alerts.iter().map(|a| a.id.as_str()).collect();
    let kinds: Vec<&str> = alerts.iter().map(|a| a.kind.as_str()).collect();
    let times: Vec<DateTime<Utc>> = alerts.iter().map(|a| a.created_at).collect();
    let data: Vec<String> = alerts.iter().map(|a| a.data.to_string()).collect();
    let done = sqlx::query(
        "INSERT INTO keymeter_alerts (id, kind, created_at, data) \
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::timestamptz[], $4::text[]) \
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&ids)
    .bind(&kinds)
    .bind(&times)
    .bind(&data)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    Ok(done.rows_affected())
}

fn alert_of(row: &PgRow) -> Result<Alert> {
    let kind: String = row.try_get("kind").map_err(db)?;
    Ok(Alert {
        id: row.try_get("alert_id").map_err(db)?,
        kind: kind.parse().map_err(|_| corrupt("alert kind"))?,
        created_at: row.try_get("created_at").map_err(db)?,
        data: serde_json::from_str(&row.try_get::<String, _>("data").map_err(db)?)
            .map_err(|_| corrupt("alert data"))?,
    })
}

fn delivery_of(row: &PgRow) -> Result<Delivery> {
    let state: String = row.try_get("state").map_err(db)?;
    Ok(Delivery {
        alert: alert_of(row)?,
        endpoint_id: row.try_get("endpoint_id").map_err(db)?,
        state: DeliveryState::from_name(&state).ok_or_else(|| corrupt("delivery state"))?,
        attempts: u32::try_from(row.try_get::<i32, _>("attempts").map_err(db)?)
            .map_err(|_| corrupt("delivery attempts"))?,
        next_attempt_at: row.try_get("next_at").map_err(db)?,
        last_status: row
            .try_get::<Option<i32>, _>("last_status")
            .map_err(db)?
            .and_then(|s| u16::try_from(s).ok()),
        last_error: row.try_get("last_error").map_err(db)?,
        delivered_at: row.try_get("delivered_at").map_err(db)?,
    })
}

fn endpoint_of(row: &PgRow) -> Result<Endpoint> {
    let events: String = row.try_get("events").map_err(db)?;
    Ok(Endpoint {
        id: row.try_get("id").map_err(db)?,
        url: row.try_get("url").map_err(db)?,
        events: serde_json::from_str(&events).map_err(|_| corrupt("webhook events"))?,
        secrets: serde_json::from_str(&row.try_get::<String, _>("secrets").map_err(db)?)
            .map_err(|_| corrupt("webhook secrets"))?,
        created_at: row.try_get("created_at").map_err(db)?,
    })
}

const DELIVERY_COLUMNS: &str = "d.alert_id, d.endpoint_id, d.state, d.attempts, d.next_at, d.last_status, \
     d.last_error, d.delivered_at, a.kind, a.created_at, a.data";

/// Creates the deliveries of the alerts not yet fanned out (those another claim is fanning out are skipped),
/// to the endpoints that receive them now.
async fn fan_out(tx: &mut Tx, now: DateTime<Utc>) -> Result<()> {
    let alerts = sqlx::query(
        "SELECT id, kind FROM keymeter_alerts WHERE NOT fanned_out ORDER BY created_at LIMIT 1000 \
         FOR UPDATE SKIP LOCKED",
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
    let (mut alert_ids, mut endpoint_ids, mut fanned) = (Vec::new(), Vec::new(), Vec::new());
    for row in &alerts {
        let id: String = row.try_get("id").map_err(db)?;
        let kind: String = row.try_get("kind").map_err(db)?;
        let kind: AlertKind = kind.parse().map_err(|_| corrupt("alert kind"))?;
        for endpoint in endpoints.iter().filter(|e| e.receives(kind)) {
            alert_ids.push(id.clone());
            endpoint_ids.push(endpoint.id.clone());
        }
        fanned.push(id);
    }
    sqlx::query(
        "INSERT INTO keymeter_deliveries (alert_id, endpoint_id, state, next_at) \
         SELECT a, e, 'pending', $3 FROM UNNEST($1::text[], $2::text[]) AS t(a, e) ON CONFLICT DO NOTHING",
    )
    .bind(&alert_ids)
    .bind(&endpoint_ids)
    .bind(now)
    .execute(&mut **tx)
    .await
    .map_err(db)?;
    sqlx::query("UPDATE keymeter_alerts SET fanned_out = TRUE WHERE id = ANY($1)")
        .bind(&fanned)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

#[async_trait]
impl Outbox for PostgresStore {
    async fn push(&self, alerts: &[Alert]) -> Result<u64> {
        transaction!(self, tx => { insert_alerts(tx, alerts).await })
    }

    async fn push_to(&self, alert: &Alert, endpoint_id: &str) -> Result<()> {
        transaction!(self, tx => {
            async {
                let known: Option<i32> = sqlx::query_scalar("SELECT 1 FROM keymeter_webhooks WHERE id = $1")
                    .bind(endpoint_id)
                    .fetch_optional(&mut **tx)
                    .await
                    .map_err(db)?;
                if known.is_none() {
                    return Err(Error::webhook_not_found(endpoint_id));
                }
                sqlx::query(
                    "INSERT INTO keymeter_alerts (id, kind, created_at, data, fanned_out) \
                     VALUES ($1, $2, $3, $4, TRUE) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&alert.id)
                .bind(alert.kind.as_str())
                .bind(alert.created_at)
                .bind(alert.data.to_string())
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                sqlx::query(
                    "INSERT INTO keymeter_deliveries (alert_id, endpoint_id, state, next_at) \
                     VALUES ($1, $2, 'pending', $3) ON CONFLICT DO NOTHING",
                )
                .bind(&alert.id)
                .bind(endpoint_id)
                .bind(alert.created_at)
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
        let done = sqlx::query(
            "INSERT INTO keymeter_webhooks (id, url, events, secrets, created_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(&endpoint.id)
        .bind(&endpoint.url)
        .bind(&events)
        .bind(&secrets)
        .bind(endpoint.created_at)
        .execute(self.pool())
        .await
        .map_err(db)?;
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
        let done = sqlx::query("UPDATE keymeter_webhooks SET secrets = $2 WHERE id = $1")
            .bind(id)
            .bind(&secrets)
            .execute(self.pool())
            .await
            .map_err(db)?;
        if done.rows_affected() == 0 {
            return Err(Error::webhook_not_found(id));
        }
        Ok(())
    }

    async fn remove_endpoint(&self, id: &str) -> Result<bool> {
        // Its deliveries go by the foreign key's cascade.
        let done = sqlx::query("DELETE FROM keymeter_webhooks WHERE id = $1")
            .bind(id)
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(done.rows_affected() > 0)
    }

    async fn claim_deliveries(
        &self,
        now: DateTime<Utc>,
        lease: Duration,
        limit: usize,
    ) -> Result<Vec<Delivery>> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        transaction!(self, tx => {
            async {
                fan_out(tx, now).await?;
                let sql = format!(
                    "WITH due AS (SELECT alert_id, endpoint_id FROM keymeter_deliveries \
                       WHERE state = 'pending' AND next_at <= $1 ORDER BY next_at, alert_id LIMIT $2 \
                       FOR UPDATE SKIP LOCKED), \
                     claimed AS (UPDATE keymeter_deliveries d SET next_at = $3 FROM due \
                       WHERE d.alert_id = due.alert_id AND d.endpoint_id = due.endpoint_id \
                       RETURNING d.alert_id, d.endpoint_id, d.state, d.attempts, $1::timestamptz AS next_at, \
                       d.last_status, d.last_error, d.delivered_at) \
                     SELECT {} FROM claimed d JOIN keymeter_alerts a ON a.id = d.alert_id \
                     ORDER BY a.created_at, d.alert_id",
                    DELIVERY_COLUMNS
                );
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(now)
                    .bind(limit)
                    .bind(now + lease)
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(db)?
                    .iter()
                    .map(delivery_of)
                    .collect::<Result<Vec<_>>>()
            }
            .await
        })
    }

    async fn record_attempt(&self, d: &Delivery) -> Result<()> {
        sqlx::query(
            "UPDATE keymeter_deliveries SET state = $3, attempts = $4, next_at = $5, last_status = $6, \
             last_error = $7, delivered_at = $8 WHERE alert_id = $1 AND endpoint_id = $2",
        )
        .bind(&d.alert.id)
        .bind(&d.endpoint_id)
        .bind(d.state.as_str())
        .bind(i32::try_from(d.attempts).unwrap_or(i32::MAX))
        .bind(d.next_attempt_at)
        .bind(d.last_status.map(i32::from))
        .bind(&d.last_error)
        .bind(d.delivered_at)
        .execute(self.pool())
        .await
        .map_err(db)?;
        Ok(())
    }

    async fn deliveries(&self, limit: usize) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM keymeter_deliveries d JOIN keymeter_alerts a ON a.id = d.alert_id \
             ORDER BY d.next_at DESC, d.alert_id LIMIT $1"
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
        transaction!(self, tx => {
            async {
                let done = sqlx::query(
                    // With the keys it created (DESIGN §12).
                    "UPDATE keymeter_api_keys SET revoked_at = $2 \
                     WHERE (id = $1 OR created_by = $1) AND revoked_at IS NULL",
                )
                .bind(key_id)
                .bind(at)
                .execute(&mut **tx)
                .await
                .map_err(db)?;
                if done.rows_affected() == 0 {
                    let known: Option<i32> = sqlx::query_scalar("SELECT 1 FROM keymeter_api_keys WHERE id = $1")
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
