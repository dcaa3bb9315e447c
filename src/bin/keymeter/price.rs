//! `price …`: exact costs, the catalog's models and their prices.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use chrono::Utc;
use keymeter::pricing::normalize::normalize;
use keymeter::pricing::{
    CatalogDiff, LineKind, ModelPrices, PriceCatalog, PriceWindow, Region, ServiceTier,
    StreamUsage, Terms, TokenClass, Usage, UsageFormat,
};
use keymeter::{Config, Error};
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::args::{PriceCommand, PricingArgs, UsageArgs};
use crate::{Failure, Outcome, read_bounded, to_json, view};

/// The largest usage (or response) JSON `--usage` reads.
const MAX_USAGE_BYTES: u64 = 1024 * 1024;

/// The `--catalog` file, else the configured catalog (`KEYMETER_CATALOG`, else the bundled snapshot), with a
/// spinner on a terminal while a file of thousands of entries is read.
pub(crate) fn load_catalog(config: &Config, path: Option<&Path>) -> Result<PriceCatalog, Failure> {
    let file = path.or(config.catalog_path.as_deref());
    let spinner = file.map(|f| view::spinner(&format!("loading prices from {}", f.display())));
    let loaded = match path {
        None => config.catalog(),
        Some(path) => PriceCatalog::from_path(path),
    };
    if let Some(s) = spinner {
        s.finish_and_clear();
    }
    loaded.map_err(|e| {
        Failure::Usage(format!(
            "{e}; pass --catalog a file in keymeter's or LiteLLM's format, or unset KEYMETER_CATALOG to use the \
             bundled prices"
        ))
    })
}

/// `price update`: download, compare with the catalog in use, write a dated catalog. A failed download or a
/// map that does not parse writes nothing, so the catalog in use stays as it was.
async fn update(
    config: &Config,
    from: &str,
    out: Option<PathBuf>,
    against: Option<&Path>,
) -> Outcome {
    let current = load_catalog(config, against)?;
    let client = keymeter::http::client(std::time::Duration::from_secs(60))?;
    let spinner = view::spinner(&format!("downloading {from}"));
    let fetched = keymeter::pricing::update::fetch_catalog(&client, from).await;
    spinner.finish_and_clear();
    let mut fresh = fetched?;
    let today = chrono::Local::now().date_naive();
    fresh.snapshot_date = Some(today.to_string());
    let diff = CatalogDiff::between(&current, &fresh, Utc::now());
    let out = out.unwrap_or_else(|| PathBuf::from(format!("keymeter-prices-{today}.json")));
    fresh.write_to(&out)?;
    let mut value = to_json(&diff)?;
    value["models"] = json!(fresh.models().len());
    value["source"] = json!(from);
    value["snapshot_date"] = json!(today.to_string());
    value["out"] = json!(out.display().to_string());
    Ok((value, diff_human(&diff, fresh.models().len(), &out)))
}

/// How many names of added or removed models, and rows of changed rates, a person is shown (`--json` has all).
const SHOWN: usize = 40;

fn diff_human(diff: &CatalogDiff, models: usize, out: &Path) -> String {
    let mut text = format!(
        "{models} models: {} added, {} removed, {} with new prices, {} unchanged\n",
        diff.added.len(),
        diff.removed.len(),
        diff.changed.len(),
        diff.unchanged
    );
    let names = |label: &str, list: &[String]| {
        if list.is_empty() {
            return String::new();
        }
        let mut line = format!(
            "{label}: {}",
            list.iter()
                .take(SHOWN)
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
        if list.len() > SHOWN {
            line.push_str(&format!(
                " … and {} more (--json lists all)",
                list.len() - SHOWN
            ));
        }
        line + "\n"
    };
    text.push_str(&names("Added", &diff.added));
    text.push_str(&names("Removed", &diff.removed));
    if !diff.changed.is_empty() {
        let mut t = view::table(["Model", "Tier", "Class", "Before", "Now"]);
        let mut rows = 0;
        for change in &diff.changed {
            for r in &change.rates {
                if rows < SHOWN {
                    // Not a token class: the per-request fee.
                    let unit = r
                        .class
                        .parse::<TokenClass>()
                        .map_or("request", TokenClass::unit);
                    let shown = |d: Option<Decimal>| {
                        d.map_or("—".to_owned(), |d| view::rate(d, &change.currency, unit))
                    };
                    t.add_row([
                        change.model.clone(),
                        r.tier.to_owned(),
                        r.class.to_owned(),
                        shown(r.old),
                        shown(r.new),
                    ]);
                }
                rows += 1;
            }
            if change.rates.is_empty() && rows < SHOWN {
                t.add_row([
                    change.model.clone(),
                    String::new(),
                    "other terms".to_owned(),
                    String::new(),
                    "changed".to_owned(),
                ]);
                rows += 1;
            }
        }
        text.push_str(&t.to_string());
        if rows > SHOWN {
            text.push_str(&format!(
                "\n… and {} more changes (--json lists all)",
                rows - SHOWN
            ));
        }
        text.push('\n');
    }
    text.push_str(&format!(
        "Wrote {}: use it with --catalog {0} or KEYMETER_CATALOG={0}",
        out.display()
    ));
    text
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

pub(crate) async fn run(config: &Config, cmd: PriceCommand) -> Outcome {
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
            let human = cost_table(&cost);
            Ok((to_json(&cost)?, human))
        }
        PriceCommand::List { provider, catalog } => {
            let catalog = load_catalog(config, catalog.as_deref())?;
            let models: Vec<_> = catalog
                .models()
                .iter()
                .filter(|m| provider.as_deref().is_none_or(|p| &*m.provider == p))
                .collect();
            let human = models_table(&models, &catalog);
            let list: Vec<Value> = models
                .iter()
                .map(|m| json!({"id": &*m.id, "provider": &*m.provider, "mode": m.mode, "aliases": m.aliases}))
                .collect();
            Ok((
                json!({"models": list, "snapshot_date": catalog.snapshot_date, "source": catalog.source}),
                human,
            ))
        }
        PriceCommand::Update { from, out, catalog } => {
            update(config, &from, out, catalog.as_deref()).await
        }
        PriceCommand::Show { model, catalog } => {
            let catalog = load_catalog(config, catalog.as_deref())?;
            let found = catalog.resolve(&model).map_err(pricing_failure)?;
            let value = to_json(found)?;
            let human = model_human(found);
            Ok((value, human))
        }
    }
}

/// The rate of a line as people quote it: per 1M tokens, or per query, image or request.
fn line_rate(kind: LineKind, rate: Decimal, currency: &str) -> String {
    match kind {
        LineKind::Tokens(c) => view::rate(rate, currency, c.unit()),
        LineKind::Request => view::rate(rate, currency, "request"),
    }
}

/// `price cost`: each line and the exact total.
fn cost_table(cost: &keymeter::pricing::Cost) -> String {
    let mut t = view::table(["Line", "Count", "Price", "Cost"]);
    for l in cost.lines() {
        t.add_row([
            l.kind.as_str().to_owned(),
            view::count(l.tokens),
            line_rate(l.kind, l.rate, &cost.currency),
            view::money(l.cost, &cost.currency),
        ]);
    }
    t.add_row([
        "Total".to_owned(),
        String::new(),
        String::new(),
        view::money(cost.total, &cost.currency),
    ]);
    view::align_right(&mut t, &[1, 3]);
    let mut terms = format!(
        "{} via {}, {} tier",
        cost.model,
        cost.provider,
        cost.tier.as_str()
    );
    if cost.region != Region::Global {
        terms.push_str(&format!(", {} region", cost.region.as_str()));
    }
    if cost.off_peak {
        terms.push_str(", off-peak");
    }
    format!("{terms}\n{t}")
}

/// `price list`: each model with its standard input and output prices now.
fn models_table(models: &[&ModelPrices], catalog: &PriceCatalog) -> String {
    let now = Utc::now();
    let mut t = view::table(["Model", "Provider", "Mode", "Input / 1M", "Output / 1M"]);
    for m in models {
        let base = m
            .window_at(now)
            .and_then(|w| w.bands.first())
            .map(|b| *b.rates(ServiceTier::Standard))
            .unwrap_or_default();
        let rate = |class: TokenClass| {
            base.get(class).map_or("—".to_owned(), |r| {
                view::money(view::per_million(r), &m.currency)
            })
        };
        t.add_row([
            m.id.to_string(),
            m.provider.to_string(),
            m.mode.clone().unwrap_or_default(),
            rate(TokenClass::Input),
            rate(TokenClass::Output),
        ]);
    }
    view::align_right(&mut t, &[3, 4]);
    let from = match (&catalog.snapshot_date, &catalog.source) {
        (Some(date), _) => format!(", prices of {date}"),
        (None, Some(source)) => format!(", from {source}"),
        _ => String::new(),
    };
    format!("{t}\n{} model(s){from}", models.len())
}

/// `price show`: the model, then each window's prices per band, tier and class.
fn model_human(m: &ModelPrices) -> String {
    let mut out = format!(
        "{} ({}{}, prices in {})",
        m.id,
        m.provider,
        m.mode
            .as_deref()
            .map(|m| format!(", {m}"))
            .unwrap_or_default(),
        m.currency
    );
    if !m.aliases.is_empty() {
        out.push_str(&format!("\nAlso called: {}", m.aliases.join(", ")));
    }
    for w in &m.windows {
        out.push_str("\n\n");
        out.push_str(&describe_window(w, &m.currency));
    }
    out
}

/// Every rate, band, tier, off-peak hour, regional multiplier and unbilled unit of a window: a table of prices
/// per band (per 1M tokens, or per query or image) and a line for each of the rest.
fn describe_window(w: &PriceWindow, currency: &str) -> String {
    fn per(unit: &str) -> &str {
        if unit == "token" { "1M tokens" } else { unit }
    }
    let amount = |rate: Decimal, unit: &str| {
        view::money(
            if unit == "token" {
                view::per_million(rate)
            } else {
                rate
            },
            currency,
        )
    };
    let now = Utc::now();
    let time = |t: Option<chrono::DateTime<Utc>>, open: &str| {
        t.map_or(open.to_owned(), |t| view::when(t, now))
    };
    let mut out = format!(
        "Prices from {} until {}\n",
        time(w.effective_from, "the start"),
        time(w.effective_until, "further notice")
    );
    // One table a context band: a row a class, a column a tier that has prices.
    for band in &w.bands {
        let tiers: Vec<ServiceTier> = ServiceTier::ALL
            .into_iter()
            .filter(|&t| !band.rates(t).is_empty())
            .collect();
        let mut header = vec!["Class".to_owned(), "Per".to_owned()];
        header.extend(tiers.iter().map(|t| t.as_str().to_owned()));
        let mut t = view::table(header.iter().map(String::as_str));
        for class in TokenClass::ALL {
            if tiers
                .iter()
                .all(|&tier| band.rates(tier).get(class).is_none())
            {
                continue;
            }
            let mut row = vec![class.as_str().to_owned(), per(class.unit()).to_owned()];
            row.extend(tiers.iter().map(|&tier| {
                band.rates(tier)
                    .get(class)
                    .map_or("—".to_owned(), |r| amount(r, class.unit()))
            }));
            t.add_row(row);
        }
        view::align_right(&mut t, &(2..2 + tiers.len()).collect::<Vec<_>>());
        if band.above_tokens == 0 {
            out.push_str("Prompts of any size\n");
        } else {
            out.push_str(&format!(
                "\n\nPrompts over {} tokens\n",
                view::count(band.above_tokens)
            ));
        }
        out.push_str(&t.to_string());
    }
    if let Some(fee) = w.per_request {
        out.push_str(&format!("\nPer request: {}", view::money(fee, currency)));
    }
    if let Some(off) = &w.off_peak {
        let rates: Vec<String> = off
            .rates
            .iter()
            .map(|(class, r)| {
                format!(
                    "{} {}",
                    class.as_str(),
                    view::rate(r, currency, class.unit())
                )
            })
            .collect();
        out.push_str(&format!(
            "\nOff-peak prices (standard tier): {}",
            rates.join(", ")
        ));
    }
    if let Some(off) = &w.off_peak {
        for h in &off.hours {
            let spans: Vec<String> = h
                .spans
                .iter()
                .map(|&(a, b)| format!("{:02}:{:02}-{:02}:{:02}", a / 60, a % 60, b / 60, b % 60))
                .collect();
            const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
            let days: Vec<&str> = h
                .weekdays
                .iter()
                .filter_map(|&d| DAYS.get(usize::from(d).wrapping_sub(1)).copied())
                .collect();
            out.push_str(&format!(
                "\nOff-peak hours: {} {} UTC{}",
                days.join(", "),
                spans.join(", "),
                off.weekday_zone
                    .map(|z| format!(" (weekdays in {})", z.name()))
                    .unwrap_or_default()
            ));
        }
    }
    for (name, m) in [
        ("US", w.regions.us),
        ("EU", w.regions.eu),
        ("regional", w.regions.regional),
    ] {
        if let Some(m) = m {
            out.push_str(&format!("\n{name} processing: token prices × {}", m.0));
        }
    }
    if !w.unbilled_units.is_empty() {
        out.push_str(&format!(
            "\nNot billed by keymeter: {}",
            w.unbilled_units.join(", ")
        ));
    }
    out
}
