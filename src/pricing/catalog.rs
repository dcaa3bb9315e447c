//! The price catalog: models (with aliases and provider-qualified names) and their price windows.
//!
//! # keymeter's catalog format (JSON)
//!
//! ```json
//! {
//!   "format": "keymeter-catalog/1",
//!   "snapshot_date": "2026-11-21",
//!   "source": "where the prices came from",
//!   "models": [
//!     {
//!       "id": "gemini-2.5-pro", "provider": "gemini", "mode": "chat", "currency": "USD",
//!       "aliases": ["gemini/gemini-2.5-pro"],
//!       "prices": [
//!         {
//!           "effective_from": null, "effective_until": "2026-01-01T00:00:00Z",
//!           "per_request": "0",
//!           "rates": {"input": "0.00000125", "cache_read": "0.000000125", "output": "0.00001"},
//!           "tiers": {"batch": {"input": "0.000000625", "output": "0.000005"}},
//!           "above": [{"tokens": 200000, "rates": {"input": "0.0000025", "output": "0.000015"}}]
//!         }
//!       ]
//!     }
//!   ]
//! }
//! ```
//!
//! - Rates are **per token**, decimal strings (JSON numbers are accepted and read from their text, never through
//!   `f64`). Classes: `input`, `cache_read`, `cache_write_5m`, `cache_write_1h`, `output`, `reasoning`,
//!   `audio_input`, `audio_output`, `image_input`. A class without a rate is unpriced (an error if used), except
//!   `reasoning`, which falls back to `output`.
//! - `tiers` override rates for `batch`, `flex` and `priority`; a class missing there falls back to the standard
//!   rate.
//! - `above` lists long-context bands: when the request's prompt tokens exceed `tokens`, the **whole request** is
//!   billed at that band's rates (highest band that applies; a class missing in the band falls back to the base
//!   rates).
//! - `effective_from` (inclusive) and `effective_until` (exclusive) are RFC 3339 or `null` (open). Windows of one
//!   model must not overlap.
//! - `currency` defaults to `USD`; `mode` and `aliases` are optional.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::error::{Error, Result};
use crate::pricing::usage::TokenClass;

/// The format tag of keymeter's own catalog files.
pub const FORMAT: &str = "keymeter-catalog/1";

const CLASSES: usize = TokenClass::ALL.len();
const TIERS: usize = 4;

/// A provider service tier.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum ServiceTier {
    /// Normal synchronous requests.
    #[default]
    Standard,
    /// Batch API (asynchronous, discounted).
    Batch,
    /// Flex processing (slower, discounted).
    Flex,
    /// Priority processing (faster, dearer).
    Priority,
}

/// The tier with this name.
///
/// # Errors
/// [`Error::InvalidInput`] for an unknown name.
impl std::str::FromStr for ServiceTier {
    type Err = Error;

    fn from_str(name: &str) -> std::result::Result<Self, Error> {
        ServiceTier::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| {
                Error::invalid("service tier", "expected standard, batch, flex or priority")
            })
    }
}

impl ServiceTier {
    /// Every tier.
    pub const ALL: [ServiceTier; TIERS] = [
        ServiceTier::Standard,
        ServiceTier::Batch,
        ServiceTier::Flex,
        ServiceTier::Priority,
    ];

    /// The tier's name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceTier::Standard => "standard",
            ServiceTier::Batch => "batch",
            ServiceTier::Flex => "flex",
            ServiceTier::Priority => "priority",
        }
    }
}

/// The largest catalog file [`PriceCatalog::from_path`] reads: 64 MiB (LiteLLM's whole file is about 1.5 MB).
pub const MAX_CATALOG_BYTES: u64 = 64 * 1024 * 1024;

/// Parses a decimal from its text, in plain or scientific notation (`2.5e-06` is exactly 0.0000025).
/// Returns `None` for anything else, including values that do not fit a `Decimal`.
pub fn parse_decimal(text: &str) -> Option<Decimal> {
    let text = text.trim();
    if text.is_empty() || text.len() > 64 {
        return None;
    }
    let value = if text.contains(['e', 'E']) {
        Decimal::from_scientific(text).ok()?
    } else {
        Decimal::from_str_exact(text).ok()?
    };
    Some(value.normalize())
}

/// A per-token price: a non-negative decimal, written as a string, read from a string or a JSON number's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rate(pub Decimal);

impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let raw: &RawValue = Deserialize::deserialize(d)?;
        let text = raw.get();
        let text = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
            Some(inner) => inner,
            None => text,
        };
        match parse_decimal(text) {
            Some(v) if v >= Decimal::ZERO => Ok(Rate(v)),
            _ => Err(D::Error::custom(format!(
                "invalid price {:?}: expected a non-negative decimal",
                truncate(text)
            ))),
        }
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Per-token rates of one tier in one band, indexed by class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Rates([Option<Decimal>; CLASSES]);

impl Rates {
    /// The rate of `class`, if set.
    pub fn get(&self, class: TokenClass) -> Option<Decimal> {
        self.0[class.index()]
    }

    /// Sets the rate of `class`.
    pub fn set(&mut self, class: TokenClass, rate: Decimal) {
        self.0[class.index()] = Some(rate);
    }

    /// Whether no class has a rate.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    fn to_map(self) -> BTreeMap<TokenClass, Rate> {
        TokenClass::ALL
            .into_iter()
            .filter_map(|c| self.get(c).map(|r| (c, Rate(r))))
            .collect()
    }

    fn from_map(map: &BTreeMap<TokenClass, Rate>) -> Self {
        let mut rates = Rates::default();
        for (&class, rate) in map {
            rates.set(class, rate.0);
        }
        rates
    }
}

/// The rates of every tier in one context band.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Band {
    /// The band applies when the prompt has more than this many tokens (0 for the base band).
    pub above_tokens: u64,
    /// Rates by tier (`ServiceTier as usize`).
    pub tiers: [Rates; TIERS],
}

impl Band {
    /// The rates of `tier` in this band.
    pub fn rates(&self, tier: ServiceTier) -> &Rates {
        &self.tiers[tier as usize]
    }

    /// Mutable rates of `tier` in this band.
    pub fn rates_mut(&mut self, tier: ServiceTier) -> &mut Rates {
        &mut self.tiers[tier as usize]
    }
}

/// The prices of one model during one window of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceWindow {
    /// Inclusive start; `None` is open.
    pub effective_from: Option<DateTime<Utc>>,
    /// Exclusive end; `None` is open.
    pub effective_until: Option<DateTime<Utc>>,
    /// A fee per request, if any.
    pub per_request: Option<Decimal>,
    /// The base band first, then long-context bands by increasing threshold.
    pub bands: Vec<Band>,
}

impl PriceWindow {
    /// A window open at both ends with the given standard base rates.
    pub fn open(standard: Rates) -> Self {
        let mut base = Band::default();
        *base.rates_mut(ServiceTier::Standard) = standard;
        PriceWindow {
            effective_from: None,
            effective_until: None,
            per_request: None,
            bands: vec![base],
        }
    }

    /// Whether the window contains `at`.
    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.effective_from.is_none_or(|from| from <= at)
            && self.effective_until.is_none_or(|until| at < until)
    }

    /// The band for a prompt of `prompt_tokens`: the highest threshold exceeded, else the base band.
    pub fn band_for(&self, prompt_tokens: u64) -> &Band {
        self.bands
            .iter()
            .rev()
            .find(|b| b.above_tokens == 0 || prompt_tokens > b.above_tokens)
            .unwrap_or(&self.bands[0])
    }

    /// The rate for `class` in `band` under `tier`: band and tier, band standard, base tier, base standard;
    /// `reasoning` then falls back to `output` the same way.
    pub fn rate(&self, band: &Band, tier: ServiceTier, class: TokenClass) -> Option<Decimal> {
        let base = &self.bands[0];
        let find = |class| {
            band.rates(tier)
                .get(class)
                .or_else(|| band.rates(ServiceTier::Standard).get(class))
                .or_else(|| base.rates(tier).get(class))
                .or_else(|| base.rates(ServiceTier::Standard).get(class))
        };
        find(class).or_else(|| {
            if class == TokenClass::Reasoning {
                find(TokenClass::Output)
            } else {
                None
            }
        })
    }
}

/// A model and its price windows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrices {
    /// The model id, for example `gpt-4o`.
    pub id: Arc<str>,
    /// The provider, for example `openai`.
    pub provider: Arc<str>,
    /// The mode (`chat`, `embedding`, …), if known.
    pub mode: Option<String>,
    /// ISO 4217 currency of the prices.
    pub currency: Arc<str>,
    /// Other names that resolve to this model.
    pub aliases: Vec<String>,
    /// Price windows, sorted by start.
    pub windows: Vec<PriceWindow>,
}

/// Serialises as one model of keymeter's catalog format.
impl Serialize for ModelPrices {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        ModelFile::from_model(self).serialize(s)
    }
}

impl ModelPrices {
    /// The window in force at `at`.
    pub fn window_at(&self, at: DateTime<Utc>) -> Option<&PriceWindow> {
        self.windows.iter().find(|w| w.contains(at))
    }
}

/// A set of model prices, looked up by id, alias or `provider/id`.
#[derive(Debug, Clone, Default)]
pub struct PriceCatalog {
    models: Vec<ModelPrices>,
    index: HashMap<String, usize>,
    /// The date of the snapshot the prices were taken from, if known.
    pub snapshot_date: Option<String>,
    /// Where the prices came from.
    pub source: Option<String>,
}

impl PartialEq for PriceCatalog {
    fn eq(&self, other: &Self) -> bool {
        self.models == other.models
            && self.snapshot_date == other.snapshot_date
            && self.source == other.source
    }
}

impl PriceCatalog {
    /// A catalog of `models`.
    ///
    /// # Errors
    /// [`Error::Catalog`] when a model has no window, overlapping windows, or empty rates, or when two models claim
    /// the same id or alias.
    pub fn new(mut models: Vec<ModelPrices>) -> Result<Self> {
        for m in &mut models {
            validate(m)?;
        }
        let mut index = HashMap::with_capacity(models.len() * 2);
        // Ids win over aliases and qualified names, so index them first.
        for (i, m) in models.iter().enumerate() {
            if index.insert(m.id.to_string(), i).is_some() {
                return Err(Error::Catalog(format!("model {:?} is listed twice", m.id)));
            }
        }
        for (i, m) in models.iter().enumerate() {
            for alias in &m.aliases {
                match index.get(alias.as_str()) {
                    Some(&j) if j != i => {
                        return Err(Error::Catalog(format!(
                            "alias {alias:?} of {:?} is already the name of {:?}",
                            m.id, models[j].id
                        )));
                    }
                    _ => {
                        index.insert(alias.clone(), i);
                    }
                }
            }
        }
        for (i, m) in models.iter().enumerate() {
            if !m.id.contains('/') {
                index.entry(format!("{}/{}", m.provider, m.id)).or_insert(i);
            }
        }
        Ok(PriceCatalog {
            models,
            index,
            snapshot_date: None,
            source: None,
        })
    }

    /// The models, in catalog order.
    pub fn models(&self) -> &[ModelPrices] {
        &self.models
    }

    /// The model named `name` (id, alias or `provider/id`; exact first, then case-insensitive).
    pub fn model(&self, name: &str) -> Option<&ModelPrices> {
        let i = match self.index.get(name) {
            Some(&i) => i,
            None => *self.index.get(name.trim().to_ascii_lowercase().as_str())?,
        };
        self.models.get(i)
    }

    /// The model named `name` and its window in force at `at`.
    ///
    /// # Errors
    /// [`Error::UnknownModel`]; [`Error::NoPrice`] when no window covers `at`.
    pub fn price_at(&self, name: &str, at: DateTime<Utc>) -> Result<(&ModelPrices, &PriceWindow)> {
        let model = self.model(name).ok_or_else(|| Error::UnknownModel {
            model: name.chars().take(200).collect(),
        })?;
        let window = model.window_at(at).ok_or_else(|| Error::NoPrice {
            model: model.id.to_string(),
            at,
        })?;
        Ok((model, window))
    }

    /// Parses keymeter's own catalog format.
    ///
    /// # Errors
    /// [`Error::Catalog`] naming what is wrong.
    pub fn from_json(text: &str) -> Result<Self> {
        let file: CatalogFile =
            serde_json::from_str(text).map_err(|e| Error::Catalog(e.to_string()))?;
        if file.format != FORMAT {
            return Err(Error::Catalog(format!(
                "unknown format {:?}, expected {FORMAT:?}",
                file.format
            )));
        }
        let models = file
            .models
            .into_iter()
            .map(ModelFile::into_model)
            .collect::<Result<Vec<_>>>()?;
        let mut catalog = PriceCatalog::new(models)?;
        catalog.snapshot_date = file.snapshot_date;
        catalog.source = file.source;
        Ok(catalog)
    }

    /// Reads a catalog file of either format ([`PriceCatalog::from_any_json`]), refusing a file over
    /// [`MAX_CATALOG_BYTES`] before reading it whole (a catalog path that is a pipe or a device cannot hang or
    /// exhaust memory).
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be read or is too large; [`Error::Catalog`] when it does not parse.
    pub fn from_path(path: &std::path::Path) -> Result<Self> {
        use std::io::Read;
        let file = std::fs::File::open(path)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        let mut bytes = Vec::new();
        file.take(MAX_CATALOG_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| Error::Config(format!("cannot read {}: {e}", path.display())))?;
        if bytes.len() as u64 > MAX_CATALOG_BYTES {
            return Err(Error::Config(format!(
                "{} is larger than {MAX_CATALOG_BYTES} bytes: not a price catalog",
                path.display()
            )));
        }
        let text = String::from_utf8(bytes)
            .map_err(|_| Error::Catalog(format!("{} is not UTF-8", path.display())))?;
        PriceCatalog::from_any_json(&text)
    }

    /// Reads either keymeter's format or LiteLLM's price file, by looking at the text. LiteLLM entries that are
    /// not token-priced are skipped.
    ///
    /// # Errors
    /// [`Error::Catalog`] naming what is wrong.
    pub fn from_any_json(text: &str) -> Result<Self> {
        if is_keymeter_format(text) {
            PriceCatalog::from_json(text)
        } else {
            Ok(crate::pricing::litellm::import(text)?.catalog)
        }
    }

    /// Writes keymeter's own catalog format.
    pub fn to_json(&self) -> String {
        let file = CatalogFile {
            format: FORMAT.to_owned(),
            snapshot_date: self.snapshot_date.clone(),
            source: self.source.clone(),
            models: self.models.iter().map(ModelFile::from_model).collect(),
        };
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }
}

// LiteLLM's file never contains keymeter's format tag, so finding it is enough, and cheaper than a parse.
fn is_keymeter_format(text: &str) -> bool {
    text.contains("\"keymeter-catalog/")
}

fn validate(m: &mut ModelPrices) -> Result<()> {
    if m.id.is_empty() || m.provider.is_empty() {
        return Err(Error::Catalog("a model needs an id and a provider".into()));
    }
    if m.windows.is_empty() {
        return Err(Error::Catalog(format!("model {:?} has no prices", m.id)));
    }
    m.windows.sort_by_key(|w| w.effective_from);
    for w in &mut m.windows {
        if w.bands.is_empty() || w.bands[0].above_tokens != 0 {
            return Err(Error::Catalog(format!(
                "model {:?}: a window needs base rates",
                m.id
            )));
        }
        w.bands[1..].sort_by_key(|b| b.above_tokens);
        if w.bands.iter().all(|b| b.tiers.iter().all(Rates::is_empty)) && w.per_request.is_none() {
            return Err(Error::Catalog(format!(
                "model {:?}: a window has no rates",
                m.id
            )));
        }
        if let (Some(from), Some(until)) = (w.effective_from, w.effective_until)
            && from >= until
        {
            return Err(Error::Catalog(format!(
                "model {:?}: a window ends before it starts",
                m.id
            )));
        }
    }
    for pair in m.windows.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let overlap = match (a.effective_until, b.effective_from) {
            (Some(until), Some(from)) => until > from,
            _ => true,
        };
        if overlap {
            return Err(Error::Catalog(format!(
                "model {:?} has overlapping price windows",
                m.id
            )));
        }
    }
    Ok(())
}

#[derive(Serialize, Deserialize)]
struct CatalogFile {
    format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    snapshot_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    source: Option<String>,
    models: Vec<ModelFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    id: String,
    provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    #[serde(default = "usd")]
    currency: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    aliases: Vec<String>,
    prices: Vec<WindowFile>,
}

fn usd() -> String {
    "USD".to_owned()
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowFile {
    #[serde(default)]
    effective_from: Option<DateTime<Utc>>,
    #[serde(default)]
    effective_until: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    per_request: Option<Rate>,
    #[serde(default)]
    rates: BTreeMap<TokenClass, Rate>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tiers: BTreeMap<ServiceTier, BTreeMap<TokenClass, Rate>>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    above: Vec<BandFile>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BandFile {
    tokens: u64,
    #[serde(default)]
    rates: BTreeMap<TokenClass, Rate>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tiers: BTreeMap<ServiceTier, BTreeMap<TokenClass, Rate>>,
}

fn band_from(
    above: u64,
    rates: &BTreeMap<TokenClass, Rate>,
    tiers: &BTreeMap<ServiceTier, BTreeMap<TokenClass, Rate>>,
) -> Band {
    let mut band = Band {
        above_tokens: above,
        ..Band::default()
    };
    *band.rates_mut(ServiceTier::Standard) = Rates::from_map(rates);
    for (&tier, map) in tiers {
        *band.rates_mut(tier) = Rates::from_map(map);
    }
    band
}

fn tiers_of(band: &Band) -> BTreeMap<ServiceTier, BTreeMap<TokenClass, Rate>> {
    ServiceTier::ALL[1..]
        .iter()
        .filter(|&&t| !band.rates(t).is_empty())
        .map(|&t| (t, band.rates(t).to_map()))
        .collect()
}

impl ModelFile {
    fn into_model(self) -> Result<ModelPrices> {
        let windows = self
            .prices
            .into_iter()
            .map(|w| {
                if w.tiers.contains_key(&ServiceTier::Standard) {
                    return Err(Error::Catalog(format!(
                        "model {:?}: standard rates go in `rates`, not `tiers`",
                        self.id
                    )));
                }
                let mut bands = vec![band_from(0, &w.rates, &w.tiers)];
                for b in &w.above {
                    if b.tokens == 0 {
                        return Err(Error::Catalog(format!(
                            "model {:?}: a band needs tokens > 0",
                            self.id
                        )));
                    }
                    bands.push(band_from(b.tokens, &b.rates, &b.tiers));
                }
                Ok(PriceWindow {
                    effective_from: w.effective_from,
                    effective_until: w.effective_until,
                    per_request: w.per_request.map(|r| r.0),
                    bands,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelPrices {
            id: self.id.into(),
            provider: self.provider.into(),
            mode: self.mode,
            currency: self.currency.into(),
            aliases: self.aliases,
            windows,
        })
    }

    fn from_model(m: &ModelPrices) -> Self {
        ModelFile {
            id: m.id.to_string(),
            provider: m.provider.to_string(),
            mode: m.mode.clone(),
            currency: m.currency.to_string(),
            aliases: m.aliases.clone(),
            prices: m
                .windows
                .iter()
                .map(|w| WindowFile {
                    effective_from: w.effective_from,
                    effective_until: w.effective_until,
                    per_request: w.per_request.map(Rate),
                    rates: w.bands[0].rates(ServiceTier::Standard).to_map(),
                    tiers: tiers_of(&w.bands[0]),
                    above: w.bands[1..]
                        .iter()
                        .map(|b| BandFile {
                            tokens: b.above_tokens,
                            rates: b.rates(ServiceTier::Standard).to_map(),
                            tiers: tiers_of(b),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}
