//! What the SQL backends share: decoding a row into keymeter's types (each backend reads its own column types
//! through [`Columns`]), the key columns, and migration checksums.

use std::str::FromStr;

use chrono::{DateTime, NaiveDate, Utc};
use rust_decimal::Decimal;
use sha2::{Digest, Sha256};

use crate::credentials::{
    CredentialScope, CredentialSource, Provider, SealedCredential, StoredCredential,
};
use crate::error::{Error, Result};
use crate::keys::{KeyEnv, KeyHash, KeyLookup, KeyRecord, PreviousSecret, Scope, VerdictCode};
use crate::ledger::{Budget, BudgetPeriod, BudgetScope, UsageEvent};
use crate::limits::{LimitScope, Limits, Quota};
use crate::stats::Counts;

/// One row as a backend reads it: each backend maps its own column types (SQLite's microsecond integers and
/// decimal strings, PostgreSQL's `timestamptz` and `numeric`) and its own error type.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<String>;
    fn opt_text(&self, column: &str) -> Result<Option<String>>;
    fn opt_time(&self, column: &str) -> Result<Option<DateTime<Utc>>>;
    fn flag(&self, column: &str) -> Result<bool>;
    /// A flag column that older schemas lack (read while a migration rebuilds from them): `None` when absent.
    fn opt_flag(&self, column: &str) -> Result<Option<bool>> {
        self.flag(column).map(Some)
    }
    fn opt_decimal(&self, column: &str) -> Result<Option<Decimal>>;
    /// A text column that older schemas lack: `None` when absent (or null).
    fn opt_text_if_present(&self, column: &str) -> Result<Option<String>> {
        self.opt_text(column)
    }
    /// The backend's error for a stored value that does not decode.
    fn corrupt(&self, what: &'static str) -> Error;

    fn time(&self, column: &str) -> Result<DateTime<Utc>> {
        self.opt_time(column)?
            .ok_or_else(|| self.corrupt("timestamp"))
    }

    fn decimal(&self, column: &str) -> Result<Decimal> {
        self.opt_decimal(column)?
            .ok_or_else(|| self.corrupt("decimal amount"))
    }
}

/// The key table's columns, in the order [`key_record`] reads them.
pub(crate) const KEY_COLUMNS: &str = "id, name, owner, org, env, scopes, hash, lookup_kind, lookup_value, hint, \
     created_at, expires_at, last_used_at, disabled, revoked_at, allowed_ips, rate_limit, metadata, \
     previous_hash, previous_valid_until, allowed_models, tags, created_by";

/// The stand-in row's hash (an unknown id reads one, so it costs what a wrong secret costs): well-formed, under
/// a pepper id no ring has.
pub(crate) const ABSENT_HASH: &str =
    "$hmac-sha256$v=1,p=absent$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

pub(crate) fn key_record(row: &impl Columns) -> Result<KeyRecord> {
    let c = |what| row.corrupt(what);
    let scopes: Vec<String> =
        serde_json::from_str(&row.text("scopes")?).map_err(|_| c("scope list"))?;
    let scopes = scopes
        .iter()
        .map(|s| Scope::new(s))
        .collect::<Result<Vec<_>>>()
        .map_err(|_| c("scope"))?;
    let allowed_ips: Vec<ipnet::IpNet> =
        serde_json::from_str(&row.text("allowed_ips")?).map_err(|_| c("network list"))?;
    let rate_limit = row
        .opt_text("rate_limit")?
        .map(|s| s.parse())
        .transpose()
        .map_err(|_| c("rate limit"))?;
    let lookup = KeyLookup::from_parts(&row.text("lookup_kind")?, row.opt_text("lookup_value")?)
        .map_err(|_| c("lookup"))?;
    let previous = match (
        row.opt_text("previous_hash")?,
        row.opt_time("previous_valid_until")?,
    ) {
        (Some(hash), Some(valid_until)) => Some(PreviousSecret {
            hash: KeyHash::from_str(&hash).map_err(|_| c("previous hash"))?,
            valid_until,
        }),
        (None, None) => None,
        _ => return Err(c("previous secret")),
    };
    Ok(KeyRecord {
        id: row.text("id")?,
        name: row.text("name")?,
        owner: row.text("owner")?,
        org: row.opt_text("org")?,
        env: KeyEnv::from_str(&row.text("env")?).map_err(|_| c("environment"))?,
        scopes,
        hash: KeyHash::from_str(&row.text("hash")?).map_err(|_| c("hash"))?,
        lookup,
        hint: row.text("hint")?,
        created_at: row.time("created_at")?,
        expires_at: row.opt_time("expires_at")?,
        last_used_at: row.opt_time("last_used_at")?,
        disabled: row.flag("disabled")?,
        revoked_at: row.opt_time("revoked_at")?,
        allowed_ips,
        rate_limit,
        allowed_models: serde_json::from_str(&row.text("allowed_models")?)
            .map_err(|_| c("model rules"))?,
        tags: serde_json::from_str(&row.text("tags")?).map_err(|_| c("tags"))?,
        metadata: serde_json::from_str(&row.text("metadata")?).map_err(|_| c("metadata"))?,
        previous,
        created_by: row.opt_text("created_by")?,
    })
}

pub(crate) fn usage_event(row: &impl Columns) -> Result<UsageEvent> {
    Ok(UsageEvent {
        event_id: row.text("event_id")?,
        request_id: row.text("request_id")?,
        at: row.time("at")?,
        key_id: row.opt_text("key_id")?,
        owner: row.text("owner")?,
        org: row.opt_text("org")?,
        provider: row.text("provider")?,
        model: row.text("model")?,
        usage: serde_json::from_str(&row.text("usage")?).map_err(|_| row.corrupt("usage"))?,
        cost: row.decimal("cost")?,
        credential_source: row
            .opt_text("credential_source")?
            .as_deref()
            .and_then(|s| CredentialSource::from_str(s).ok()),
        // Absent while migrations before the one that adds them rebuild rollups from the events.
        estimated: row.opt_flag("estimated")?.unwrap_or(false),
        estimated_first: row.opt_flag("estimated_first")?.unwrap_or(false),
        // Absent, like the flags above, while older migrations rebuild from the events.
        tags: match row.opt_text_if_present("tags")? {
            Some(text) => serde_json::from_str(&text).map_err(|_| row.corrupt("tags"))?,
            None => Vec::new(),
        },
        end_user: row.opt_text_if_present("end_user")?,
    })
}

pub(crate) fn budget(row: &impl Columns) -> Result<Budget> {
    Ok(Budget {
        scope: BudgetScope::from_parts(&row.text("scope_kind")?, &row.text("scope_id")?)
            .map_err(|_| row.corrupt("budget scope"))?,
        limit: row.decimal("limit_amount")?,
        soft_limit: row.opt_decimal("soft_limit")?,
        period: BudgetPeriod::from_str(&row.text("period")?)
            .map_err(|_| row.corrupt("budget period"))?,
        tz: row
            .text("tz")?
            .parse::<chrono_tz::Tz>()
            .map_err(|_| row.corrupt("time zone"))?,
        thresholds: row
            .opt_text_if_present("thresholds")?
            .map(|t| {
                crate::ledger::parse_thresholds(&t).map_err(|_| row.corrupt("alert thresholds"))
            })
            .transpose()?,
    })
}

/// A budget's thresholds as stored (`50,80,100`; null for the defaults).
pub(crate) fn thresholds_text(budget: &Budget) -> Option<String> {
    budget
        .thresholds
        .as_ref()
        .map(|t| t.iter().map(u8::to_string).collect::<Vec<_>>().join(","))
}

/// A stored quota list (`["100/min"]`).
fn quotas(row: &impl Columns, column: &str) -> Result<Vec<Quota>> {
    serde_json::from_str(&row.text(column)?).map_err(|_| row.corrupt("quota list"))
}

/// The limits of each of `scopes`, in order (none for a scope without a row), from rows of the limits table.
pub(crate) fn limits_of<R: Columns>(scopes: &[LimitScope], rows: &[R]) -> Result<Vec<Limits>> {
    let mut out = vec![Limits::default(); scopes.len()];
    for row in rows {
        let (kind, id) = (row.text("scope_kind")?, row.text("scope_id")?);
        let limits = Limits {
            requests: quotas(row, "requests")?,
            tokens: quotas(row, "tokens")?,
            models: serde_json::from_str(&row.text("models")?)
                .map_err(|_| row.corrupt("model rules"))?,
            max_parallel: row
                .opt_text("max_parallel")?
                .map(|n| n.parse::<u32>())
                .transpose()
                .map_err(|_| row.corrupt("concurrency limit"))?,
        };
        for (slot, s) in out.iter_mut().zip(scopes) {
            if s.kind() == kind && s.id() == id {
                *slot = limits.clone();
            }
        }
    }
    Ok(out)
}

/// Per-day verdict counts from `(day, code, count)` rows ordered by day.
pub(crate) fn day_counts(
    rows: impl IntoIterator<Item = (NaiveDate, VerdictCode, u64)>,
) -> Vec<(NaiveDate, Counts)> {
    let mut out: Vec<(NaiveDate, Counts)> = Vec::new();
    for (day, code, n) in rows {
        match out.last_mut() {
            Some((d, counts)) if *d == day => counts[code.index()] += n,
            _ => {
                let mut counts = [0; VerdictCode::ALL.len()];
                counts[code.index()] = n;
                out.push((day, counts));
            }
        }
    }
    out
}

/// A model rule list as stored.
pub(crate) fn models_text(rules: &[crate::keys::ModelRule]) -> String {
    serde_json::to_string(rules).unwrap_or_else(|_| "[]".into())
}

/// A key's scopes, allowed networks and allowed models as stored: JSON arrays.
pub(crate) fn json_lists(r: &KeyRecord) -> Result<(String, String, String)> {
    let scopes =
        serde_json::to_string(&r.scopes).map_err(|e| Error::invalid("scopes", e.to_string()))?;
    let nets = serde_json::to_string(&r.allowed_ips)
        .map_err(|e| Error::invalid("ip networks", e.to_string()))?;
    let models = serde_json::to_string(&r.allowed_models)
        .map_err(|e| Error::invalid("model rules", e.to_string()))?;
    Ok((scopes, nets, models))
}

/// An event's tags as stored: a JSON array.
pub(crate) fn tags_text(tags: &[String]) -> String {
    serde_json::to_string(tags).unwrap_or_else(|_| "[]".into())
}

/// A quota list as stored.
pub(crate) fn quotas_text(quotas: &[Quota]) -> String {
    serde_json::to_string(quotas).unwrap_or_else(|_| "[]".into())
}

/// The JSON text of an event's usage.
pub(crate) fn usage_text(event: &UsageEvent) -> Result<String> {
    serde_json::to_string(&event.usage).map_err(|err| Error::InvalidUsage(err.to_string()))
}

/// A claim's estimate as its reservation row keeps it: the event's JSON line (read back with `parse`).
pub(crate) fn estimate_text(event: &UsageEvent) -> Result<String> {
    serde_json::to_string(event).map_err(|err| Error::InvalidUsage(err.to_string()))
}

/// A migration's checksum, as its bookkeeping table records it.
pub(crate) fn checksum(sql: &str) -> String {
    Sha256::digest(sql.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A sealed credential as stored (`kmv1:…`).
pub(crate) fn sealed(row: &impl Columns, column: &str) -> Result<SealedCredential> {
    SealedCredential::from_str(&row.text(column)?).map_err(|_| row.corrupt("sealed credential"))
}

/// A provider name as stored.
pub(crate) fn provider(row: &impl Columns, column: &str) -> Result<Provider> {
    Provider::new(&row.text(column)?).map_err(|_| row.corrupt("provider"))
}

/// A row of the credentials table (`scope, owner, provider, sealed`).
pub(crate) fn stored_credential(row: &impl Columns) -> Result<StoredCredential> {
    let scope = match row.text("scope")?.as_str() {
        "system" => CredentialScope::System,
        _ => CredentialScope::User(row.text("owner")?),
    };
    Ok(StoredCredential {
        scope,
        provider: provider(row, "provider")?,
        sealed: sealed(row, "sealed")?,
    })
}

/// One embedded migration: version, name, SQL.
pub(crate) type Migration = (i64, &'static str, &'static str);

/// Why the migrations a database records do not fit this build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MigrationMismatch {
    /// A migration that ran was changed since (its checksum differs).
    Changed(i64),
    /// The database ran a migration this build does not know (a newer keymeter migrated it).
    Unknown(i64),
}

/// The migrations of `all` still to run, given the `(version, checksum)` pairs the database records.
pub(crate) fn pending(
    all: &'static [Migration],
    applied: &[(i64, String)],
) -> std::result::Result<Vec<&'static Migration>, MigrationMismatch> {
    for (version, sum) in applied {
        match all.iter().find(|(v, ..)| v == version) {
            None => return Err(MigrationMismatch::Unknown(*version)),
            Some((_, _, sql)) if checksum(sql) != *sum => {
                return Err(MigrationMismatch::Changed(*version));
            }
            Some(_) => {}
        }
    }
    Ok(all
        .iter()
        .filter(|(v, ..)| !applied.iter().any(|(a, _)| a == v))
        .collect())
}

/// `text` with `LIKE`'s wildcards (and the escape character `\`) escaped, for a pattern with `ESCAPE '\'`.
pub(crate) fn like_escaped(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Migration] = &[
        (1, "a", "CREATE TABLE a (x)"),
        (2, "b", "CREATE TABLE b (x)"),
    ];

    #[test]
    fn pending_migrations_and_mismatches() {
        assert_eq!(pending(ALL, &[]).unwrap().len(), 2);
        let one = [(1, checksum("CREATE TABLE a (x)"))];
        assert_eq!(pending(ALL, &one).unwrap(), vec![&ALL[1]]);
        let changed = [(1, checksum("CREATE TABLE a (y)"))];
        assert_eq!(pending(ALL, &changed), Err(MigrationMismatch::Changed(1)));
        let newer = [(3, checksum("…"))];
        assert_eq!(pending(ALL, &newer), Err(MigrationMismatch::Unknown(3)));
    }
}
