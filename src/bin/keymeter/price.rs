//! `price …`: exact costs, the catalog's models and their prices.

use std::path::Path;
use std::str::FromStr;

use chrono::Utc;
use keymeter::pricing::normalize::normalize;
use keymeter::pricing::{PriceCatalog, ServiceTier, Usage, UsageFormat};
use keymeter::{Config, Error};
use serde_json::{Value, json};

use crate::args::{PriceCommand, PricingArgs, UsageArgs};
use crate::{Failure, Outcome, read_bounded, to_json};

/// The largest usage (or response) JSON `--usage` reads.
const MAX_USAGE_BYTES: u64 = 1024 * 1024;

/// The `--catalog` file, else the configured catalog (`KEYMETER_CATALOG`, else the bundled snapshot).
fn load_catalog(config: &Config, path: Option<&Path>) -> Result<PriceCatalog, Failure> {
    match path {
        None => Ok(config.catalog()?),
        Some(path) => Ok(PriceCatalog::from_path(path)?),
    }
}

impl UsageArgs {
    pub(crate) fn usage(&self) -> Result<Usage, Failure> {
        let Some(source) = &self.usage else {
            return Ok(Usage {
                input: self.input,
                output: self.output,
                cache_read: self.cache_read,
                cache_write_5m: self.cache_write,
                cache_write_1h: self.cache_write_1h,
                reasoning: self.reasoning,
                ..Usage::default()
            });
        };
        let format = UsageFormat::from_str(self.usage_format.as_deref().ok_or_else(|| {
            Failure::Usage("--usage needs --usage-format openai|anthropic|gemini".into())
        })?)?;
        let bytes = if source == "-" {
            read_bounded(std::io::stdin().lock(), MAX_USAGE_BYTES, "stdin")?
        } else {
            let file = std::fs::File::open(source)
                .map_err(|e| Failure::Usage(format!("cannot read {source}: {e}")))?;
            read_bounded(file, MAX_USAGE_BYTES, source)?
        };
        let text = std::str::from_utf8(&bytes)
            .map_err(|_| Failure::Usage(format!("{source} is not UTF-8 JSON")))?;
        Ok(normalize(format, text)?)
    }
}

pub(crate) fn parse_time(at: Option<&str>) -> Result<chrono::DateTime<Utc>, Failure> {
    match at {
        None => Ok(Utc::now()),
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                Failure::Usage(format!(
                    "invalid time {s:?}: use RFC 3339 (2026-03-01T12:00:00Z)"
                ))
            }),
    }
}

/// Pricing answers that are negative (exit 1) rather than usage errors.
pub(crate) fn pricing_failure(e: Error) -> Failure {
    match e {
        Error::UnknownModel { ref model } => Failure::Negative(
            json!({"code": "UNKNOWN_MODEL", "model": model}),
            e.to_string(),
        ),
        Error::UnpricedClass { ref model, class } => Failure::Negative(
            json!({"code": "UNPRICED_CLASS", "model": model, "class": class}),
            e.to_string(),
        ),
        Error::NoPrice { ref model, at } => Failure::Negative(
            json!({"code": "NO_PRICE", "model": model, "at": at}),
            e.to_string(),
        ),
        other => other.into(),
    }
}

/// What `price cost` and `usage record` both read from their flags: the catalog, the canonical usage, the time
/// to price at and the tier.
pub(crate) fn pricing_inputs(
    config: &Config,
    pricing: &PricingArgs,
    usage: &UsageArgs,
) -> Result<(PriceCatalog, Usage, chrono::DateTime<Utc>, ServiceTier), Failure> {
    let catalog = load_catalog(config, pricing.catalog.as_deref())?;
    let usage = usage.usage()?;
    let at = parse_time(pricing.at.as_deref())?;
    let tier = ServiceTier::from_str(&pricing.tier)?;
    Ok((catalog, usage, at, tier))
}

pub(crate) fn run(config: &Config, cmd: PriceCommand) -> Outcome {
    match cmd {
        PriceCommand::Cost {
            model,
            pricing,
            usage,
        } => {
            let (catalog, usage, at, tier) = pricing_inputs(config, &pricing, &usage)?;
            let cost = catalog
                .cost(&model, &usage, at, tier)
                .map_err(pricing_failure)?;
            let mut human = String::new();
            for l in cost.lines() {
                human.push_str(&format!(
                    "{:<15} {:>10} × {:<14} = {}\n",
                    l.kind.as_str(),
                    l.tokens,
                    l.rate,
                    l.cost.normalize()
                ));
            }
            human.push_str(&format!(
                "total {} {} ({} via {})",
                cost.total, cost.currency, cost.model, cost.provider
            ));
            Ok((to_json(&cost)?, human))
        }
        PriceCommand::List { provider, catalog } => {
            let catalog = load_catalog(config, catalog.as_deref())?;
            let models: Vec<_> = catalog
                .models()
                .iter()
                .filter(|m| provider.as_deref().is_none_or(|p| &*m.provider == p))
                .collect();
            let human = models
                .iter()
                .map(|m| {
                    format!(
                        "{:<48} {:<12} {}",
                        m.id,
                        m.provider,
                        m.mode.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            let list: Vec<Value> = models
                .iter()
                .map(|m| json!({"id": &*m.id, "provider": &*m.provider, "mode": m.mode, "aliases": m.aliases}))
                .collect();
            Ok((
                json!({"models": list, "snapshot_date": catalog.snapshot_date, "source": catalog.source}),
                human,
            ))
        }
        PriceCommand::Show { model, catalog } => {
            let catalog = load_catalog(config, catalog.as_deref())?;
            let found = catalog.model(&model).ok_or_else(|| {
                pricing_failure(Error::UnknownModel {
                    model: model.clone(),
                })
            })?;
            let value = to_json(found)?;
            let human = serde_json::to_string_pretty(&value).unwrap_or_default();
            Ok((value, human))
        }
    }
}
