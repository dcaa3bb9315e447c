//! `webhooks …`: endpoints that receive alerts, their secrets, and deliveries.

use chrono::Utc;
use keymeter::Config;
use keymeter::alerts::{Alert, AlertKind, Deliverer, Endpoint};
use keymeter::random::OsRandom;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::args::WebhooksCommand;
use crate::{Failure, Outcome, to_json};

fn parse_events(text: &str) -> Result<Vec<AlertKind>, Failure> {
    text.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<AlertKind>().map_err(Failure::from))
        .collect()
}

fn unknown(id: &str) -> Failure {
    Failure::from(keymeter::Error::NotFound {
        what: "webhook",
        id: id.to_string(),
    })
}

pub(crate) async fn run(config: &Config, cmd: WebhooksCommand) -> Outcome {
    let store = config.connect().await?;
    let development = config.environment.environment.is_development();
    match cmd {
        WebhooksCommand::Add { url, events } => {
            let events = parse_events(&events)?;
            let vault = config.vault()?;
            let new = Endpoint::create(&url, events, &vault, &OsRandom, Utc::now(), development)?;
            store.add_endpoint(&new.endpoint).await?;
            let e = &new.endpoint;
            let value = json!({"id": e.id, "url": e.url, "events": e.events, "secret": new.secret.expose_secret()});
            let human = format!(
                "added {} → {}\nsigning secret (shown once; verify the keymeter-signature header with it):\n{}",
                e.id,
                e.url,
                new.secret.expose_secret()
            );
            Ok((value, human))
        }
        WebhooksCommand::List => {
            let endpoints = store.endpoints().await?;
            let human = if endpoints.is_empty() {
                "no webhooks".to_string()
            } else {
                endpoints
                    .iter()
                    .map(|e| {
                        let events = if e.events.is_empty() {
                            "all events".to_string()
                        } else {
                            e.events
                                .iter()
                                .map(|k| k.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        };
                        format!("{}  {}  ({events})", e.id, e.url)
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            let list: Vec<_> = endpoints.iter().map(Endpoint::summary).collect();
            Ok((json!({ "webhooks": list }), human))
        }
        WebhooksCommand::Remove { id } => {
            if !store.remove_endpoint(&id).await? {
                return Err(unknown(&id));
            }
            Ok((json!({"id": id, "removed": true}), format!("removed {id}")))
        }
        WebhooksCommand::RotateSecret { id, grace } => {
            let grace = keymeter::validate::duration("--grace", &grace, true)?;
            let mut endpoint = store
                .endpoints()
                .await?
                .into_iter()
                .find(|e| e.id == id)
                .ok_or_else(|| unknown(&id))?;
            let now = Utc::now();
            let secret = endpoint.rotate(&*config.vault()?, &OsRandom, now, grace)?;
            store.set_endpoint_secrets(&id, &endpoint.secrets).await?;
            let previous_until = (grace > chrono::Duration::zero()).then(|| now + grace);
            let value = json!({"id": id, "secret": secret.expose_secret(), "previous_valid_until": previous_until});
            let human = format!(
                "new signing secret for {id} (shown once):\n{}\n{}",
                secret.expose_secret(),
                match previous_until {
                    Some(t) => format!("deliveries are signed with the previous one too until {t}"),
                    None => "the previous secret no longer signs".to_string(),
                }
            );
            Ok((value, human))
        }
        WebhooksCommand::Test { id } => {
            let now = Utc::now();
            let mut nonce = [0u8; 12];
            keymeter::random::fill_base62(&OsRandom, &mut nonce)?;
            let alert = Alert::webhook_test(&id, &String::from_utf8_lossy(&nonce), now);
            store.push_to(&alert, &id).await?;
            let deliverer =
                Deliverer::new(store.clone(), config.vault()?, config.delivery_policy())?;
            let pass = deliverer.pass().await?;
            let delivery = store
                .deliveries(200)
                .await?
                .into_iter()
                .find(|d| d.alert.id == alert.id && d.endpoint_id == id);
            let value = json!({"id": id, "alert_id": alert.id, "delivery": delivery, "pass": pass});
            match delivery {
                Some(d) if d.state == keymeter::alerts::DeliveryState::Delivered => Ok((
                    value,
                    format!(
                        "delivered {} to {id} ({})",
                        alert.id,
                        d.last_status.unwrap_or(0)
                    ),
                )),
                Some(d) => Err(Failure::Negative(
                    value,
                    format!(
                        "not delivered: {}; it will be retried",
                        d.last_error.unwrap_or_else(|| "not tried yet".into())
                    ),
                )),
                None => Err(Failure::Negative(value, "the test delivery is gone".into())),
            }
        }
        WebhooksCommand::Deliveries { limit } => {
            let deliveries = store.deliveries(limit.clamp(1, 10_000)).await?;
            let human = if deliveries.is_empty() {
                "no deliveries".to_string()
            } else {
                deliveries
                    .iter()
                    .map(|d| {
                        format!(
                            "{}  {:<17} {}  {:<9} attempts {}  {}",
                            d.next_attempt_at.format("%Y-%m-%d %H:%M:%S"),
                            d.alert.kind.as_str(),
                            d.endpoint_id,
                            d.state.as_str(),
                            d.attempts,
                            d.last_error.as_deref().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            };
            Ok((json!({ "deliveries": to_json(&deliveries)? }), human))
        }
        WebhooksCommand::Deliver => {
            let deliverer =
                Deliverer::new(store.clone(), config.vault()?, config.delivery_policy())?;
            let pass = deliverer.pass().await?;
            let human = format!(
                "{} delivered, {} to retry, {} given up",
                pass.delivered, pass.retrying, pass.failed
            );
            let value = to_json(pass)?;
            if pass.failed > 0 || pass.retrying > 0 {
                return Err(Failure::Negative(value, human));
            }
            Ok((value, human))
        }
    }
}
