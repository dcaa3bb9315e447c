//! `price …`: exact costs, the catalog's models and their prices.

use std::path::Path;
use std::str::FromStr;

use chrono::Utc;
use keymeter::pricing::normalize::normalize;
use keymeter::pricing::{
    PriceCatalog, PriceWindow, Region, ServiceTier, StreamUsage, Terms, TokenClass, Usage,
    UsageFormat,
};
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
                cache_write_12h: self.cache_write_12h,
                reasoning: self.reasoning,
                audio_input: self.audio_input,
                cache_read_audio: self.cache_read_audio,
                audio_output: self.audio_output,
                image_input: self.image_input,
                image_output: self.image_output,
                web_search: self.web_search,
                maps_grounding: self.maps_grounding,
                images: self.images,
                tier: None,
                region: None,
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
        if self.stream {
            let mut stream = StreamUsage::new(format);
            for line in text.lines() {
                if let Some(data) = line.strip_prefix("data:") {
                    stream.push(data)?;
                }
            }
            return Ok(stream.finish()?);
        }
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
        Error::UnpricedUnit {
            ref model,
            ref unit,
        } => Failure::Negative(
            json!({"code": "UNPRICED_UNIT", "model": model, "unit": unit}),
            e.to_string(),
        ),
        Error::AmbiguousModel {
            ref model,
            ref candidates,
        } => Failure::Negative(
            json!({"code": "AMBIGUOUS_MODEL", "model": model, "candidates": candidates}),
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
/// to price at and the caller's tier and region.
pub(crate) fn pricing_inputs(
    config: &Config,
    pricing: &PricingArgs,
    usage: &UsageArgs,
) -> Result<(PriceCatalog, Usage, chrono::DateTime<Utc>, Terms), Failure> {
    let catalog = load_catalog(config, pricing.catalog.as_deref())?;
    let usage = usage.usage()?;
    let at = parse_time(pricing.at.as_deref())?;
    let terms = Terms::new(ServiceTier::from_str(&pricing.tier)?)
        .with_region(Region::from_str(&pricing.region)?);
    Ok((catalog, usage, at, terms))
}

pub(crate) fn run(config: &Config, cmd: PriceCommand) -> Outcome {
    match cmd {
        PriceCommand::Cost {
            model,
            pricing,
            usage,
        } => {
            let (catalog, usage, at, terms) = pricing_inputs(config, &pricing, &usage)?;
            let cost = catalog
                .cost(&model, &usage, at, terms)
                .map_err(pricing_failure)?;
            let mut human = String::new();
            for l in cost.lines() {
                human.push_str(&format!(
                    "{:<16} {:>10} × {:<14} = {}\n",
                    l.kind.as_str(),
                    l.tokens,
                    l.rate.normalize(),
                    l.cost.normalize()
                ));
            }
            human.push_str(&format!(
                "total {} {} ({} via {}, {} tier{}{})",
                cost.total,
                cost.currency,
                cost.model,
                cost.provider,
                cost.tier.as_str(),
                if cost.region == Region::Global {
                    String::new()
                } else {
                    format!(", {} region", cost.region.as_str())
                },
                if cost.off_peak { ", off-peak" } else { "" }
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
            let found = catalog.resolve(&model).map_err(pricing_failure)?;
            let value = to_json(found)?;
            let mut human = format!(
                "{} ({}{}, {})",
                found.id,
                found.provider,
                found
                    .mode
                    .as_deref()
                    .map(|m| format!(", {m}"))
                    .unwrap_or_default(),
                found.currency
            );
            if !found.aliases.is_empty() {
                human.push_str(&format!("\naliases: {}", found.aliases.join(", ")));
            }
            for w in &found.windows {
                human.push('\n');
                human.push_str(&describe_window(w));
            }
            Ok((value, human))
        }
    }
}

/// Every rate, band, tier, off-peak hour, regional multiplier and unbilled unit of a window, one per line, per
/// unit (token, query, image).
fn describe_window(w: &PriceWindow) -> String {
    let time = |t: Option<chrono::DateTime<Utc>>| t.map_or("open".to_owned(), |t| t.to_rfc3339());
    let mut out = format!(
        "prices from {} until {}",
        time(w.effective_from),
        time(w.effective_until)
    );
    let rate_line =
        |out: &mut String, indent: &str, class: TokenClass, rate: rust_decimal::Decimal| {
            out.push_str(&format!(
                "\n{indent}{:<16} {} per {}",
                class.as_str(),
                rate.normalize(),
                class.unit()
            ));
        };
    for band in &w.bands {
        if band.above_tokens == 0 {
            out.push_str("\n  base");
        } else {
            out.push_str(&format!("\n  prompts over {} tokens", band.above_tokens));
        }
        for tier in ServiceTier::ALL {
            let rates = band.rates(tier);
            if rates.is_empty() {
                continue;
            }
            out.push_str(&format!("\n    {}", tier.as_str()));
            for (class, rate) in rates.iter() {
                rate_line(&mut out, "      ", class, rate);
            }
        }
    }
    if let Some(fee) = w.per_request {
        out.push_str(&format!("\n  per request {}", fee.normalize()));
    }
    if let Some(off) = &w.off_peak {
        out.push_str("\n  off-peak (standard tier)");
        for h in &off.hours {
            let spans: Vec<String> = h
                .spans
                .iter()
                .map(|&(a, b)| format!("{:02}:{:02}-{:02}:{:02}", a / 60, a % 60, b / 60, b % 60))
                .collect();
            out.push_str(&format!(
                "\n    weekdays {:?} {} UTC{}",
                h.weekdays,
                spans.join(", "),
                off.weekday_zone
                    .map(|z| format!(" (weekdays in {})", z.name()))
                    .unwrap_or_default()
            ));
        }
        for (class, rate) in off.rates.iter() {
            rate_line(&mut out, "      ", class, rate);
        }
    }
    for (name, m) in [
        ("us", w.regions.us),
        ("eu", w.regions.eu),
        ("regional", w.regions.regional),
    ] {
        if let Some(m) = m {
            out.push_str(&format!("\n  {name} processing: token rates × {}", m.0));
        }
    }
    if !w.unbilled_units.is_empty() {
        out.push_str(&format!(
            "\n  not billed by keymeter: {}",
            w.unbilled_units.join(", ")
        ));
    }
    out
}
