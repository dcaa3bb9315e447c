//! A reservation and how it ends: settled with the reported usage (or billed at the worst case), or released.

use std::sync::Arc;
use std::time::Duration;

use keymeter::keys::KeyRecord;
use keymeter::ledger::{Hold, Metered, Unsettled};
use keymeter::pricing::Usage;

use super::App;

/// How long a settle that meets an unreachable store keeps trying before it gives up (the reservation, which
/// outlives this, keeps the budget held meanwhile).
const SETTLE_RETRY_FOR: Duration = Duration::from_secs(300);

/// A reservation and what is needed to end it.
pub(super) struct Bill {
    app: Arc<App>,
    key: Arc<KeyRecord>,
    hold: Hold,
    worst: Usage,
}

impl Bill {
    pub(super) fn new(app: Arc<App>, key: Arc<KeyRecord>, hold: Hold, worst: Usage) -> Self {
        Bill {
            app,
            key,
            hold,
            worst,
        }
    }

    pub(super) fn hold(&self) -> &Hold {
        &self.hold
    }

    pub(super) fn app(&self) -> &App {
        &self.app
    }

    pub(super) async fn release(self) {
        if let Err(e) = self.app.meter.release(self.hold).await {
            tracing::warn!(error = %e, "could not release a reservation; it expires on its own");
        }
    }

    /// Settles with `usage`, or at the reservation (an `estimated` event for the worst case) when the upstream
    /// reported none or what it reported cannot be priced; charges the tokens to the key's token limits. A store
    /// that cannot be reached is retried with the same usage, never re-priced at the worst case (with a journal
    /// the settle is a local write and the journal's drain does the retrying). Returns what was recorded.
    pub(super) async fn settle(self, usage: Option<Usage>) -> Option<Metered> {
        let Bill {
            app,
            key,
            hold,
            worst,
        } = self;
        let request_id = hold.request_id().to_owned();
        let amount = hold.amount();
        let settled = match usage {
            Some(usage) => match settle_retrying(&app, hold, Some(usage), worst).await {
                // A usage the catalog cannot price (a class the model has no rate for, say): the reservation is
                // billed. Never on a store failure: that one was retried.
                Err(unsettled) if unsettled.error.unavailable().is_none() => {
                    tracing::warn!(request_id, error = %unsettled.error, "reported usage unpriced: billing the reservation");
                    settle_retrying(&app, unsettled.hold, None, worst).await
                }
                other => other,
            },
            None => {
                tracing::warn!(
                    request_id,
                    %amount,
                    "no usage reported: billing the reservation"
                );
                settle_retrying(&app, hold, None, worst).await
            }
        };
        let metered = match settled {
            Ok(metered) => metered,
            Err(unsettled) => {
                // Dropping the hold tries once more in the background (it was forwarded: billed as estimated).
                tracing::error!(request_id, error = %unsettled.error, "could not settle a request");
                return None;
            }
        };
        if metered.cost.total > amount {
            app.metrics.settled_above();
            tracing::warn!(
                request_id,
                reserved = %amount,
                cost = %metered.cost.total,
                "settled above its reservation: the provider reported more than the worst case"
            );
        }
        let tokens = metered.usage.prompt_tokens() + metered.usage.output_tokens();
        if let Err(e) = app.verifier.charge_tokens(&key, tokens).await {
            tracing::warn!(request_id, error = %e, "could not charge token limits");
        }
        Some(metered)
    }
}

/// Settles `hold` with `usage`, or estimated at `worst` when `None`, retrying while the store is away; a failure
/// gives the hold back.
async fn settle_retrying(
    app: &App,
    mut hold: Hold,
    usage: Option<Usage>,
    worst: Usage,
) -> Result<Metered, Unsettled> {
    let meter = &app.meter;
    let give_up = tokio::time::Instant::now() + SETTLE_RETRY_FOR;
    let mut pause = Duration::from_millis(50);
    loop {
        let settled = match usage {
            Some(usage) => meter.try_settle(hold, usage).await,
            None => meter.try_settle_estimated(hold, worst).await,
        };
        match settled {
            Err(unsettled)
                if unsettled.error.unavailable().is_some()
                    && tokio::time::Instant::now() < give_up =>
            {
                tracing::warn!(
                    request_id = unsettled.hold.request_id(),
                    error = %unsettled.error,
                    retry_in_ms = pause.as_millis() as u64,
                    "settle failed: the store is unreachable; retrying"
                );
                hold = unsettled.hold;
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            other => return other,
        }
    }
}
