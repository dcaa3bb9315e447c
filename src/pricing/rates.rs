//! Rates and how one is chosen: service tiers, regions, long-context bands, off-peak hours, and the rule that
//! finds a rate a tier or band lacks.

use chrono::{DateTime, Datelike, Timelike, Utc};
use rust_decimal::Decimal;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

use crate::error::Error;
use crate::pricing::usage::TokenClass;

pub(crate) const CLASSES: usize = TokenClass::ALL.len();
pub(crate) const TIERS: usize = 4;

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

    /// The tier a provider's response names, when it names one that changes the price: `flex`, `priority` or
    /// `batch` in any case, as a word of the value (OpenAI `"flex"`, Anthropic `"priority"`, Vertex
    /// `"ON_DEMAND_FLEX"`). `default`, `standard`, `auto`, `scale`, `on_demand` and anything else give `None`: the
    /// caller's tier stands.
    pub fn from_response(value: &str) -> Option<ServiceTier> {
        value
            .split(|c: char| !c.is_ascii_alphanumeric())
            .find_map(|word| match word.to_ascii_lowercase().as_str() {
                "flex" => Some(ServiceTier::Flex),
                "priority" => Some(ServiceTier::Priority),
                "batch" | "batches" => Some(ServiceTier::Batch),
                _ => None,
            })
    }
}

/// Where a provider processed a request, as far as its price depends on it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Region {
    /// Anywhere the provider chooses (no uplift).
    #[default]
    Global,
    /// Processing kept in the United States (Anthropic `inference_geo: "us"`, OpenAI US data residency).
    Us,
    /// Processing kept in the European Union.
    Eu,
    /// Some other regional (non-global) endpoint, such as a Vertex AI region.
    Regional,
}

/// The region with this name: `global`, `us`, `eu` or `regional`.
///
/// # Errors
/// [`Error::InvalidInput`] for anything else.
impl std::str::FromStr for Region {
    type Err = Error;

    fn from_str(name: &str) -> std::result::Result<Self, Error> {
        match name {
            "global" => Ok(Region::Global),
            "us" => Ok(Region::Us),
            "eu" => Ok(Region::Eu),
            "regional" => Ok(Region::Regional),
            _ => Err(Error::invalid(
                "region",
                "expected global, us, eu or regional",
            )),
        }
    }
}

impl Region {
    /// The region's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Region::Global => "global",
            Region::Us => "us",
            Region::Eu => "eu",
            Region::Regional => "regional",
        }
    }

    /// The region a response names (Anthropic `inference_geo`): `us`, `eu`, `global`/empty, anything else is a
    /// regional endpoint.
    pub fn from_response(value: &str) -> Region {
        match value.trim().to_ascii_lowercase().as_str() {
            "" | "global" | "default" => Region::Global,
            "us" | "usa" | "united_states" => Region::Us,
            "eu" | "europe" => Region::Eu,
            _ => Region::Regional,
        }
    }
}

/// Price multipliers for processing outside the global pool (LiteLLM `provider_specific_entry: {"us": 1.1}`,
/// `regional_processing_uplift_multiplier_us/_eu`, `regional_endpoint_uplift_multiplier`). They multiply every
/// token rate; per-request, per-query and per-image prices are not uplifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionMultipliers {
    /// For [`Region::Us`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub us: Option<Rate>,
    /// For [`Region::Eu`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eu: Option<Rate>,
    /// For any non-global region without its own multiplier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regional: Option<Rate>,
}

impl RegionMultipliers {
    /// Whether no multiplier is set.
    pub fn is_empty(&self) -> bool {
        self.us.is_none() && self.eu.is_none() && self.regional.is_none()
    }

    /// The multiplier for `region`, if its price differs from the global one.
    pub fn for_region(&self, region: Region) -> Option<Decimal> {
        let own = match region {
            Region::Global => return None,
            Region::Us => self.us,
            Region::Eu => self.eu,
            Region::Regional => None,
        };
        own.or(self.regional).map(|r| r.0)
    }
}

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

/// A per-unit price (or multiplier): a non-negative decimal, written as a string, read from a string or a JSON
/// number's text.
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

pub(crate) fn truncate(s: &str) -> &str {
    match s.char_indices().nth(40) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Per-unit rates of one tier in one band, indexed by class.
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

    /// The classes with a rate, in class order.
    pub fn iter(&self) -> impl Iterator<Item = (TokenClass, Decimal)> + '_ {
        TokenClass::ALL
            .into_iter()
            .filter_map(|c| self.get(c).map(|r| (c, r)))
    }

    /// The rate of `class` in this cell, or of the class it falls back to ([`TokenClass::fallback`]).
    fn cell(&self, class: TokenClass) -> Option<Decimal> {
        self.get(class)
            .or_else(|| class.fallback().and_then(|f| self.get(f)))
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

/// Hours of the week when off-peak rates apply: on `weekdays` (ISO numbers, 1 = Monday … 7 = Sunday), during
/// `spans` of minutes since midnight UTC. A span whose end is not after its start runs past midnight
/// (`10:00-00:00` is ten o'clock to midnight; `00:00-00:00` is the whole day).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffPeakHours {
    /// ISO weekday numbers, 1–7.
    pub weekdays: Vec<u8>,
    /// `(start, end)` in minutes since midnight UTC, each 0–1439.
    pub spans: Vec<(u16, u16)>,
}

/// Off-peak rates (DeepSeek's discount hours): at a time inside one of `hours`, standard-tier requests are billed
/// at `rates` for the classes it names (reasoning falling back to its output rate), the usual rates otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OffPeak {
    /// The off-peak rates.
    pub rates: Rates,
    /// When they apply.
    pub hours: Vec<OffPeakHours>,
    /// The zone the weekdays are judged in (LiteLLM `weekday_timezone`); UTC when `None`. Hours are always UTC.
    pub weekday_zone: Option<chrono_tz::Tz>,
}

impl OffPeak {
    /// Whether off-peak rates apply at `at`.
    pub fn applies_at(&self, at: DateTime<Utc>) -> bool {
        let minute = (at.hour() * 60 + at.minute()) as u16;
        let weekday = match self.weekday_zone {
            Some(zone) => at.with_timezone(&zone).weekday(),
            None => at.weekday(),
        }
        .number_from_monday() as u8;
        self.hours.iter().any(|h| {
            h.weekdays.contains(&weekday)
                && h.spans.iter().any(|&(start, end)| {
                    if start < end {
                        (start..end).contains(&minute)
                    } else {
                        minute >= start || minute < end
                    }
                })
        })
    }
}

/// Parses `HH:MM-HH:MM` into minutes since midnight.
pub(crate) fn parse_span(text: &str) -> Option<(u16, u16)> {
    let (a, b) = text.trim().split_once('-')?;
    let minutes = |t: &str| -> Option<u16> {
        let (h, m) = t.trim().split_once(':')?;
        if h.len() > 2 || m.len() != 2 {
            return None;
        }
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        // 24:00 is accepted as the end of the day.
        match (h, m) {
            (24, 0) => Some(0),
            (0..=23, 0..=59) => Some(h * 60 + m),
            _ => None,
        }
    };
    Some((minutes(a)?, minutes(b)?))
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
    /// The base band first, then long-context (or `tiered_pricing`) bands by increasing threshold.
    pub bands: Vec<Band>,
    /// Off-peak rates, if the provider has them.
    pub off_peak: Option<Box<OffPeak>>,
    /// Multipliers for regional processing.
    pub regions: RegionMultipliers,
    /// Names of non-zero prices in units keymeter does not bill (`input_cost_per_pixel`, `input_cost_per_query`,
    /// …). An entry priced only in such units refuses every usage with [`Error::UnpricedUnit`].
    pub unbilled_units: Vec<String>,
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
            off_peak: None,
            regions: RegionMultipliers::default(),
            unbilled_units: Vec::new(),
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

    /// The rate for `class` in `band` under `tier`: the tier's rate in the band; else the higher of
    /// the tier's base rate and the band's standard rate (never under-billing against a rate the catalog gives);
    /// else the standard base rate. At each step a class with a fallback ([`TokenClass::fallback`]: reasoning →
    /// output, image input → input) tries its fallback in the same tier and band before moving on.
    pub fn rate(&self, band: &Band, tier: ServiceTier, class: TokenClass) -> Option<Decimal> {
        let base = &self.bands[0];
        band.rates(tier).cell(class).or_else(|| {
            match (
                base.rates(tier).cell(class),
                band.rates(ServiceTier::Standard).cell(class),
            ) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            }
            .or_else(|| base.rates(ServiceTier::Standard).cell(class))
        })
    }

    /// The off-peak rate of `class` at `at` for `tier`, if off-peak rates apply and name the class.
    pub fn off_peak_rate(
        &self,
        at: DateTime<Utc>,
        tier: ServiceTier,
        class: TokenClass,
    ) -> Option<Decimal> {
        let off = self.off_peak.as_deref()?;
        if tier != ServiceTier::Standard || !off.applies_at(at) {
            return None;
        }
        off.rates.cell(class)
    }

    /// Every rate the window has (any tier, band or hours), including per-request fees.
    fn all_rates(&self) -> impl Iterator<Item = (TokenClass, Decimal)> + '_ {
        let banded = self
            .bands
            .iter()
            .flat_map(|b| b.tiers.iter().flat_map(Rates::iter));
        let off = self
            .off_peak
            .as_deref()
            .into_iter()
            .flat_map(|o| o.rates.iter());
        banded.chain(off)
    }

    /// Whether some price is set at all (a rate, a per-request fee or an unbilled unit).
    pub fn has_prices(&self) -> bool {
        self.per_request.is_some()
            || !self.unbilled_units.is_empty()
            || self.all_rates().next().is_some()
    }

    /// The unit this window is priced in when it is priced only in units other than tokens: every token rate is
    /// zero (or absent) and some other price is not. `None` for a token-priced or a free window.
    pub fn other_unit(&self) -> Option<String> {
        if self.all_rates().any(|(c, r)| c.is_token() && !r.is_zero()) {
            return None;
        }
        if let Some(unit) = self.unbilled_units.first() {
            return Some(unit.clone());
        }
        if self.per_request.is_some_and(|f| !f.is_zero()) {
            return Some("per request".to_owned());
        }
        self.all_rates()
            .find(|(c, r)| !c.is_token() && !r.is_zero())
            .map(|(c, _)| format!("{} (per {})", c.as_str(), c.unit()))
    }
}
