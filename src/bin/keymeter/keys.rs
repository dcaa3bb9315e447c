//! `keys …`: issue, list, show, verify, revoke, disable, enable and import inbound API keys.

use std::sync::Arc;

use chrono::Utc;
use keymeter::keys::record::parse_networks;
use keymeter::keys::token::{self, KeyEnv};
use keymeter::keys::{
    KeyFilter, KeyHash, KeyRecord, KeyStore, NewKey, RateLimit, Requirement, Scope,
    ScopeRequirement, VerdictCode, Verifier,
};
use keymeter::limits::{LimitScope, Limits};
use keymeter::stats::{KeyStats, StatsRecorder};
use keymeter::{Config, Error};
use secrecy::ExposeSecret;
use serde_json::json;
use std::str::FromStr;
use zeroize::Zeroizing;

use comfy_table::Cell;

use crate::args::KeysCommand;
use crate::view;
use crate::{Failure, Outcome, read_stdin_secret, read_stdin_secret_bytes, to_json};

pub(crate) async fn run(config: &Config, cmd: KeysCommand, json_mode: bool) -> Outcome {
    let store = config.connect().await?;
    let dyn_store: Arc<dyn KeyStore> = store.clone();
    match cmd {
        KeysCommand::Create(a) => {
            let mut new = NewKey::new(a.name, a.owner)
                .env(a.env.parse::<KeyEnv>()?)
                .scopes(Scope::parse_list(&a.scopes)?)
                .allowed_ips(parse_networks(a.allow_ip.iter().map(String::as_str))?)
                .allowed_models(keymeter::keys::models::parse_rules(&a.models)?)
                .prefix(a.prefix);
            if let Some(org) = a.org {
                new = new.org(org);
            }
            new = new.tags(keymeter::ledger::event::parse_tags(&a.tags)?);
            if let Some(text) = &a.metadata {
                let metadata = serde_json::from_str(text).map_err(|e| {
                    Failure::Usage(format!("invalid --metadata: not JSON ({e}); give an object such as '{{\"team\": \"ml\"}}'"))
                })?;
                new = new.metadata(metadata);
            }
            if let Some(life) = a.expires_in {
                let at = Utc::now()
                    .checked_add_signed(keymeter::validate::duration("--expires-in", &life, false)?)
                    .ok_or_else(|| {
                        Failure::Usage(format!(
                            "invalid --expires-in {life:?}: too far in the future (use at most a few thousand years)"
                        ))
                    })?;
                new = new.expires_at(at);
            }
            let limits = Limits {
                requests: crate::limits::quotas(&a.rate_limit)?,
                tokens: crate::limits::quotas(&a.token_limit)?,
                max_parallel: a.max_parallel,
                ..Limits::default()
            };
            limits.validate()?;
            if let Some(first) = a.rate_limit.first() {
                new = new.rate_limit(first.parse::<RateLimit>()?);
            }
            let issued = config.issuer(dyn_store.clone())?.issue(new).await?;
            let r = &issued.record;
            if limits.requests.len() > 1
                || !limits.tokens.is_empty()
                || limits.max_parallel.is_some()
            {
                // The key is not handed out before its limits hold: revoke it if they cannot be stored.
                if let Err(e) = store
                    .set_limits(&LimitScope::Key(r.id.clone()), &limits)
                    .await
                {
                    dyn_store.revoke(&r.id, Utc::now()).await?;
                    return Err(e.into());
                }
            }
            let key = issued.token.expose_secret();
            let value = json!({
                "id": r.id, "key": key, "name": r.name, "owner": r.owner, "org": r.org, "env": r.env,
                "scopes": r.scopes, "expires_at": r.expires_at, "hint": r.hint,
                "allowed_models": r.allowed_models, "metadata": r.metadata, "tags": r.tags,
            });
            let human = format!(
                "{key}\n\nid: {}  ({})\nStore this key now: it is not shown again.",
                r.id, r.hint
            );
            // The plaintext exists only in this output: if nobody can read it, the key must not stay live.
            if let Err(e) = crate::deliver(json_mode, &value, &human) {
                dyn_store.revoke(&r.id, Utc::now()).await?;
                return Err(Failure::Usage(format!(
                    "could not write the new key to stdout ({e}), so key {} was revoked",
                    r.id
                )));
            }
            Ok(crate::delivered())
        }
        KeysCommand::List { owner, org } => {
            let records = dyn_store
                .list(&KeyFilter {
                    owner,
                    org,
                    limit: None,
                })
                .await?;
            let human = keys_table(&records, Utc::now());
            let mut list = Vec::with_capacity(records.len());
            for r in &records {
                list.push(record_json(store.as_ref(), r).await?);
            }
            Ok((json!({ "keys": list }), human))
        }
        KeysCommand::Show { id } => match dyn_store.get(&id).await? {
            Some(r) => {
                let mut value = record_json(store.as_ref(), &r).await?;
                let fields = record_fields(&r, &value, Utc::now());
                let standing = crate::standing::add(config, store.clone(), &r, &mut value).await?;
                Ok((value, format!("{fields}{standing}")))
            }
            None => Err(Error::NotFound { what: "key", id }.into()),
        },
        KeysCommand::Verify {
            scopes,
            any_scope,
            ip,
            env,
        } => {
            let raw = read_stdin_secret_bytes()?;
            let Ok(token) = std::str::from_utf8(&raw) else {
                // Not text, so not a key of any kind: the verdict, not a usage error.
                let value = json!({"valid": false, "code": VerdictCode::Malformed, "key_id": null,
                                   "owner": null, "scopes": null});
                return Err(Failure::Negative(value, VerdictCode::Malformed.to_string()));
            };
            let token = Zeroizing::new(token.to_owned());
            let scopes = scopes.iter().map(String::as_str);
            let requirement = Requirement {
                scopes: if any_scope {
                    ScopeRequirement::any(scopes)?
                } else {
                    ScopeRequirement::all(scopes)?
                },
                client_ip: ip
                    .map(|s| {
                        s.parse()
                            .map_err(|_| Failure::Usage(format!("invalid --ip {s:?}")))
                    })
                    .transpose()?,
                defer_limits: false,
            };
            let mut settings = config.verifier_config();
            if let Some(env) = env {
                settings.environments = vec![env.parse::<KeyEnv>()?];
            }
            // Accept keys minted with any prefix: a well-formed token names its own.
            if let Ok(parsed) = token::parse(&token)
                && !settings.prefixes.iter().any(|p| p == parsed.prefix)
            {
                settings.prefixes.push(parsed.prefix.to_owned());
            }
            let limiter = match config.limiter(store.clone()).await {
                Ok(limiter) => limiter,
                // Failing open: the limiter's absence admits requests (and is logged); closed: an error.
                Err(e) if config.limits_fail_open => {
                    eprintln!("warning: rate limiter unreachable, failing open: {e}");
                    Arc::new(keymeter::limits::Unlimited)
                }
                Err(e) => return Err(e.into()),
            };
            let stats = Arc::new(StatsRecorder::new(store.clone()));
            let verifier = Verifier::new(dyn_store, config.hasher()?, settings)?
                .with_limits(store.clone(), limiter)
                .with_stats(stats.clone());
            let verdict = verifier.verify(&token, &requirement).await?;
            // One process, one verification: its count is written now (a lost count is not worth a failure).
            if let Err(e) = stats.close().await {
                eprintln!(
                    "warning: could not record the verification in the key's statistics: {e}"
                );
            }
            let key = verdict.key();
            let mut value = json!({
                "valid": verdict.is_valid(),
                "code": verdict.code(),
                "key_id": key.map(|k| k.id.clone()),
                "owner": key.map(|k| k.owner.clone()),
                "scopes": key.map(|k| k.scopes.clone()),
            });
            let mut human = match key {
                Some(k) => format!("{}  key {} (owner {})", verdict.code(), k.id, k.owner),
                None => verdict.code().to_string(),
            };
            if let Some(limit) = verdict.limit() {
                value["limit"] = json!(limit.limit);
                value["remaining"] = json!(limit.remaining);
                value["reset"] = json!(limit.reset_secs());
                if verdict.code() == VerdictCode::RateLimited {
                    value["retry_after"] = json!(limit.retry_after_secs());
                    human.push_str(&format!(
                        ": {}/{} used up, retry in {} s",
                        limit.limit,
                        limit.period.as_str(),
                        limit.retry_after_secs()
                    ));
                }
            }
            if verdict.code() == VerdictCode::InsufficientScope
                && let Some(k) = key
            {
                let missing: Vec<String> = requirement
                    .scopes
                    .missing(&k.scopes)
                    .iter()
                    .map(ToString::to_string)
                    .collect();
                human.push_str(&format!(": lacks {}", missing.join(", ")));
                value["missing_scopes"] = json!(missing);
            }
            if verdict.is_valid() {
                Ok((value, human))
            } else {
                Err(Failure::Negative(value, human))
            }
        }
        KeysCommand::Revoke { id } => {
            dyn_store.revoke(&id, Utc::now()).await?;
            Ok((json!({"id": id, "revoked": true}), format!("revoked {id}")))
        }
        KeysCommand::Rotate { id, grace } => {
            let grace = keymeter::validate::duration("--grace", &grace, true)?;
            let rotated = config.issuer(dyn_store.clone())?.rotate(&id, grace).await?;
            let key = rotated.token.expose_secret();
            let value = json!({"id": rotated.id, "key": key, "grace_until": rotated.grace_until, "hint": rotated.hint});
            let until = match rotated.grace_until {
                Some(t) => format!("the previous key works until {t}"),
                None => "the previous key no longer works".to_owned(),
            };
            let human = format!(
                "{key}\n\nid: {}  ({})\n{until}.\nStore this key now: it is not shown again.",
                rotated.id, rotated.hint
            );
            // Nobody saw the new key: its predecessor must not stop working because of it.
            if let Err(e) = crate::deliver(json_mode, &value, &human) {
                return Err(Failure::Usage(format!(
                    "the new key could not be written ({e}); it is stored, so rotate again to get one you can read"
                )));
            }
            Ok(crate::delivered())
        }
        KeysCommand::Stats { id, days } => {
            let record = dyn_store.get(&id).await?.ok_or_else(|| Error::NotFound {
                what: "key",
                id: id.clone(),
            })?;
            let days = days.clamp(1, 3660);
            let today = Utc::now().date_naive();
            // The unusual rule looks 14 days back whatever the period shown.
            let back = u64::from(days.max(15) - 1);
            let since = today
                .checked_sub_days(chrono::Days::new(back))
                .unwrap_or(today);
            let stored = store.key_stats(&id, since).await?;
            let stats = KeyStats::summary(&id, &stored, today, days, record.last_used_at);
            let human = stats_human(&stats, days, Utc::now());
            Ok((to_json(&stats)?, human))
        }
        KeysCommand::Leaked { url } => {
            let token = crate::read_stdin_secret()?;
            let mut settings = config.verifier_config();
            // A token names its own prefix: judge it whatever prefixes this deployment verifies.
            if let Ok(parsed) = token::parse(&token)
                && !settings.prefixes.iter().any(|p| p == parsed.prefix)
            {
                settings.prefixes.push(parsed.prefix.to_owned());
            }
            let verifier = Arc::new(Verifier::new(dyn_store, config.hasher()?, settings)?);
            let intake = keymeter::leaks::LeakIntake::new(verifier, store.clone());
            let report = keymeter::leaks::LeakReport {
                token: keymeter::SecretString::from(token.as_str()),
                token_type: "keymeter_api_key".into(),
                url,
                source: Some("manual".into()),
            };
            let found = intake.report(&[report]).await?;
            let finding = found
                .first()
                .ok_or_else(|| Failure::Usage("no finding".into()))?;
            let value = json!({"label": finding.label, "key_id": finding.key_id, "revoked": finding.revoked});
            match (&finding.key_id, finding.revoked) {
                (None, _) => Err(Failure::Negative(
                    value,
                    "not a key of this store: nothing revoked".into(),
                )),
                (Some(id), true) => {
                    Ok((value, format!("revoked {id}; a key.leaked alert is queued")))
                }
                (Some(id), false) => Ok((value, format!("{id} was revoked already"))),
            }
        }
        KeysCommand::RevokeAll { org } => {
            let ids = dyn_store.revoke_org(&org, Utc::now()).await?;
            let human = format!("revoked {} key(s) of {org}", ids.len());
            Ok((json!({"org": org, "revoked": ids.len(), "ids": ids}), human))
        }
        KeysCommand::Disable { id } => {
            dyn_store.set_disabled(&id, true).await?;
            Ok((
                json!({"id": id, "disabled": true}),
                format!("disabled {id}"),
            ))
        }
        KeysCommand::Enable { id } => {
            dyn_store.set_disabled(&id, false).await?;
            Ok((
                json!({"id": id, "disabled": false}),
                format!("enabled {id}"),
            ))
        }
        KeysCommand::Import(a) => {
            let mut new = NewKey::new(a.name, a.owner)
                .env(a.env.parse::<KeyEnv>()?)
                .scopes(Scope::parse_list(&a.scopes)?);
            if let Some(org) = a.org {
                new = new.org(org);
            }
            let hint = match a.hint.as_deref() {
                None => None,
                Some("-") => Some(read_hint(config, &a.hash)?),
                Some(_) => {
                    return Err(Failure::Usage(
                        "the hint is part of a secret, so never an argument: pass --hint - and write the key's \
                         first 8 characters (or the whole key) to stdin"
                            .into(),
                    ));
                }
            };
            let record = config
                .issuer(dyn_store)?
                .import(new, &a.hash, hint.as_ref().map(|h| h.as_str()))
                .await?;
            let human = format!(
                "imported {} ({}, owner {}); verify it with: keymeter keys verify < key.txt",
                record.id, record.name, record.owner
            );
            Ok((to_json(&record)?, human))
        }
    }
}

/// The import hint from stdin: the key's first 8 characters, or the whole key (checked against `hash` first).
fn read_hint(config: &Config, hash: &str) -> Result<Zeroizing<String>, Failure> {
    const HINT_LEN: usize = 8;
    let text = read_stdin_secret()?;
    if text.len() < HINT_LEN || !text.is_ascii() {
        return Err(Failure::Usage(format!(
            "stdin must hold the key's first {HINT_LEN} characters or the whole key"
        )));
    }
    if text.len() > HINT_LEN {
        let parsed = KeyHash::from_str(hash.trim()).map_err(Error::from)?;
        if !config
            .hasher()?
            .verify(text.as_bytes(), &parsed)
            .map_err(Error::from)?
        {
            return Err(Failure::Usage(
                "the key on stdin does not match --hash: nothing imported".into(),
            ));
        }
    }
    Ok(Zeroizing::new(text[..HINT_LEN].to_owned()))
}

/// A record's JSON (never its hash) with its `limits`: the key's own request and token quotas, the record's
/// `rate_limit` among them.
async fn record_json(
    store: &dyn keymeter::store::Store,
    r: &KeyRecord,
) -> Result<serde_json::Value, Failure> {
    let mut value = to_json(r)?;
    let limits = store
        .limits(&[LimitScope::Key(r.id.clone())])
        .await?
        .pop()
        .unwrap_or_default()
        .with_record_limit(r);
    value["limits"] = json!({"requests": limits.requests, "tokens": limits.tokens, "models": limits.models,
        "max_parallel": limits.max_parallel});
    Ok(value)
}

/// A key's state as a person reads it, and whether it can be used.
fn state(r: &KeyRecord, now: chrono::DateTime<Utc>) -> (&'static str, bool) {
    if r.revoked_at.is_some() {
        ("revoked", false)
    } else if r.disabled {
        ("disabled", false)
    } else if r.expires_at.is_some_and(|t| t <= now) {
        ("expired", false)
    } else {
        ("active", true)
    }
}

/// `keys list`: one row a key, newest last, as the seeds' CLI shows them.
fn keys_table(records: &[KeyRecord], now: chrono::DateTime<Utc>) -> String {
    if records.is_empty() {
        return "no keys yet: create one with keymeter keys create --name NAME --owner OWNER"
            .to_owned();
    }
    let mut t = view::table([
        "ID",
        "Name",
        "Owner",
        "Scopes",
        "Created",
        "Last used",
        "Status",
    ]);
    for r in records {
        let scopes: Vec<&str> = r.scopes.iter().map(Scope::as_str).collect();
        let owner = match &r.org {
            Some(org) => format!("{} ({org})", r.owner),
            None => r.owner.clone(),
        };
        let (word, good) = state(r, now);
        t.add_row(vec![
            Cell::new(&r.id),
            Cell::new(&r.name),
            Cell::new(owner),
            Cell::new(scopes.join(", ")),
            Cell::new(view::relative(r.created_at, now)),
            Cell::new(
                r.last_used_at
                    .map_or("never".to_owned(), |t| view::relative(t, now)),
            ),
            view::status(word, good),
        ]);
    }
    format!("{t}\n{} key(s)", records.len())
}

/// `keys show`: every field of a record but its hash, with its limits.
fn record_fields(r: &KeyRecord, value: &serde_json::Value, now: chrono::DateTime<Utc>) -> String {
    let scopes: Vec<&str> = r.scopes.iter().map(Scope::as_str).collect();
    let list = |v: &serde_json::Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "none".to_owned())
    };
    let (word, _) = state(r, now);
    let mut rows = vec![
        ("ID", r.id.clone()),
        ("Name", r.name.clone()),
        ("Owner", r.owner.clone()),
        ("Org", r.org.clone().unwrap_or_else(|| "none".to_owned())),
        ("Environment", r.env.to_string()),
        ("Scopes", scopes.join(", ")),
        ("Starts with", r.hint.clone()),
        ("Status", word.to_owned()),
        ("Created", view::when(r.created_at, now)),
        ("Last used", view::when_or(r.last_used_at, now, "never")),
        ("Expires", view::when_or(r.expires_at, now, "never")),
    ];
    if let Some(t) = r.revoked_at {
        rows.push(("Revoked", view::when(t, now)));
    }
    if let Some(p) = &r.previous {
        rows.push(("Previous key works until", view::when(p.valid_until, now)));
    }
    rows.push(("Allowed IPs", any_or_list(&r.allowed_ips)));
    rows.push(("Request limits", list(&value["limits"]["requests"])));
    rows.push(("Token limits", list(&value["limits"]["tokens"])));
    rows.push((
        "In flight at most",
        value["limits"]["max_parallel"]
            .as_u64()
            .map_or_else(|| "no limit".to_owned(), |n| n.to_string()),
    ));
    rows.push(("Models", any_or_list(&r.allowed_models)));
    if !r.tags.is_empty() {
        rows.push(("Tags", r.tags.join(", ")));
    }
    rows.push(("Hash", r.hash.scheme().as_str().to_owned()));
    view::fields(rows).to_string()
}

/// A rule list for people: `any` when it is empty (it allows everything), else its items.
fn any_or_list<T: ToString>(items: &[T]) -> String {
    if items.is_empty() {
        return "any".to_owned();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// `keys stats`: the totals, each day with a bar, and the verdicts by code.
fn stats_human(stats: &KeyStats, days: u32, now: chrono::DateTime<Utc>) -> String {
    let mut out = format!(
        "{}: {} verifications in {days} days ({:.1} a day), last used {}\n",
        stats.key_id,
        view::count(stats.total),
        stats.average_per_day,
        view::when_or(stats.last_used_at, now, "never"),
    );
    if let Some(reason) = &stats.unusual_reason {
        out.push_str(&format!("Unusual today: {reason}\n"));
    }
    let max = stats.days.iter().map(|d| d.total).max().unwrap_or(0);
    let mut t = view::table(["Day", "Verifications", "Valid", ""]);
    for d in &stats.days {
        t.add_row(vec![
            Cell::new(d.day),
            Cell::new(view::count(d.total)),
            Cell::new(view::count(d.valid)),
            Cell::new(view::bar(d.total, max, 24)),
        ]);
    }
    view::align_right(&mut t, &[1, 2]);
    out.push_str(&t.to_string());
    if !stats.by_code.is_empty() {
        let mut codes = view::table(["Verdict", "Count"]);
        for (code, n) in &stats.by_code {
            codes.add_row(vec![Cell::new(code), Cell::new(view::count(*n))]);
        }
        view::align_right(&mut codes, &[1]);
        out.push_str(&format!("\n{codes}"));
    }
    out
}
