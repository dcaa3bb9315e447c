//! What a `hold` record keeps of a request, and the estimated event that bills it.

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::ledger::UsageEvent;
use crate::pricing::Usage;
use crate::random::RandomSource;

/// What a `hold` record keeps of a request: enough to bill its reservation as an `estimated` event if the
/// process dies after forwarding it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRecord {
    /// The request id (the idempotency key).
    pub request_id: String,
    /// The reservation in the store.
    pub reservation_id: String,
    /// When the request arrived (the estimated event's time).
    pub at: DateTime<Utc>,
    /// The inbound key, if any.
    pub key_id: Option<String>,
    /// The owner.
    pub owner: String,
    /// The organisation, if any.
    pub org: Option<String>,
    /// The provider of the model.
    pub provider: String,
    /// The model.
    pub model: String,
    /// The worst case reserved.
    pub worst: Usage,
    /// Its price: what an estimated bill records.
    pub amount: Decimal,
    /// Whose provider key pays (`user`, `system`, `env-file`), if known.
    pub credential_source: Option<String>,
    /// When the reservation expires by itself in the store.
    pub expires_at: DateTime<Utc>,
    /// The request's tags (absent in records written before they were kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The end user the request was made for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_user: Option<String>,
}

impl HoldRecord {
    /// The event that bills this hold's reservation when the usage never arrived: the worst case at the
    /// reserved amount, marked `estimated`.
    ///
    /// # Errors
    /// [`crate::Error::Random`]; [`crate::Error::InvalidInput`] for a record with invalid names.
    pub fn estimated_event(&self, random: &dyn RandomSource) -> Result<UsageEvent> {
        let mut event = UsageEvent::unchecked(
            Some(&self.request_id),
            self.at,
            &self.owner,
            &self.provider,
            &self.model,
            self.worst,
            self.amount,
            random,
        )?;
        event.key_id = self.key_id.clone();
        event.org = self.org.clone();
        event.credential_source = self
            .credential_source
            .as_deref()
            .and_then(|s| s.parse().ok());
        event.estimated = true;
        event.tags.clone_from(&self.tags);
        event.end_user.clone_from(&self.end_user);
        event.validate()?;
        Ok(event)
    }

    /// Checks the names, tags, time, worst case and amount as an event holding them is checked
    /// ([`UsageEvent::validate`]): what [`HoldRecord::estimated_event`] would refuse, found before the hold is
    /// taken.
    ///
    /// # Errors
    /// [`crate::Error::InvalidInput`] naming the first field that fails.
    pub fn validate(&self) -> Result<()> {
        crate::ledger::event::Attribution {
            request_id: &self.request_id,
            at: self.at,
            owner: &self.owner,
            provider: &self.provider,
            model: &self.model,
            key_id: self.key_id.as_deref(),
            org: self.org.as_deref(),
            tags: &self.tags,
            end_user: self.end_user.as_deref(),
            usage: &self.worst,
            cost: self.amount,
        }
        .check()
    }
}

#[cfg(test)]
mod tests {
    use super::HoldRecord;

    /// A hold written before tags were kept reads back without them; one with them bills its estimate with them.
    #[test]
    fn hold_records_carry_attribution_and_read_older_ones() {
        let old = r#"{"request_id":"r1","reservation_id":"rsv_1","at":"2026-12-01T00:00:00Z","key_id":null,
            "owner":"alice","org":null,"provider":"openai","model":"gpt-4o","worst":{"input":10},
            "amount":"0.5","credential_source":null,"expires_at":"2026-12-01T00:00:30Z"}"#;
        let mut hold: HoldRecord = serde_json::from_str(old).unwrap();
        assert!(hold.tags.is_empty() && hold.end_user.is_none());
        hold.tags = vec!["batch".into()];
        hold.end_user = Some("user-1".into());
        let back: HoldRecord =
            serde_json::from_str(&serde_json::to_string(&hold).unwrap()).unwrap();
        assert_eq!(back, hold);
        let event = back
            .estimated_event(&crate::random::SeededRandom::new(1))
            .unwrap();
        assert_eq!(
            (event.tags, event.end_user.as_deref()),
            (vec!["batch".to_owned()], Some("user-1"))
        );
        assert!(event.estimated);
    }
}
