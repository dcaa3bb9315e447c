//! keymeter's own catalog format (JSON).
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
//!           "rates": {"input": "0.00000125", "cache_read": "0.000000125", "output": "0.00001",
//!                     "web_search": "0.035"},
//!           "tiers": {"batch": {"input": "0.000000625", "output": "0.000005"}},
//!           "above": [{"tokens": 200000, "rates": {"input": "0.0000025", "output": "0.000015"}}],
//!           "off_peak": {"rates": {"input": "0.0000005"},
//!                        "windows": [{"weekdays": [1, 2, 3, 4, 5], "hours_utc": ["16:30-00:30"]}]},
//!           "regions": {"us": "1.1"},
//!           "unbilled_units": ["input_cost_per_second"]
//!         }
//!       ]
//!     }
//!   ]
//! }
//! ```
//!
//! - Rates are **per unit**, decimal strings (JSON numbers are accepted and read from their text, never through
//!   `f64`). Token classes: `input`, `cache_read`, `cache_write_5m`, `cache_write_1h`, `cache_write_12h`,
//!   `output`, `reasoning`, `audio_input`, `cache_read_audio`, `audio_output`, `image_input`, `image_output`; per
//!   query: `web_search`, `maps_grounding`; per image: `images`. A class without a rate is unpriced (an error if
//!   used), except `reasoning`, which falls back to `output`, and `image_input`, which falls back to `input`.
//! - `tiers` override rates for `batch`, `flex` and `priority`. A rate missing for a tier (or a band) falls back
//!   to the higher of the tier's base rate and the band's standard rate, then the standard base
//!   rate; reasoning first tries the same tier's and band's output rate.
//! - `above` lists context bands: when the request's prompt tokens exceed `tokens`, the **whole request** is
//!   billed at that band's rates (the highest band that applies). LiteLLM's `tiered_pricing` ranges are bands.
//! - `off_peak`: rates for standard-tier requests made during `windows` (ISO weekdays, 1 = Monday; hours in UTC,
//!   `HH:MM-HH:MM`, an end not after the start runs past midnight), judged at the usage's own timestamp;
//!   `weekday_timezone` (IANA) judges the weekday in that zone.
//! - `regions`: multipliers on token rates for `us`, `eu` or any other non-global (`regional`) processing.
//! - `unbilled_units`: prices this entry has in units keymeter does not bill. An entry whose token rates are all
//!   zero and that has such a price (or a per-query/per-image rate the usage does not use) refuses the usage
//!   (`UNPRICED_UNIT`); an entry whose every price is zero is free.
//! - `effective_from` (inclusive) and `effective_until` (exclusive) are RFC 3339 or `null` (open). Windows of one
//!   model must not overlap.
//! - `currency` defaults to `USD`; `mode` and `aliases` are optional.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::pricing::catalog::ModelPrices;
use crate::pricing::catalog::PriceCatalog;
use crate::pricing::rates::{
    Band, OffPeak, OffPeakHours, PriceWindow, Rate, Rates, RegionMultipliers, ServiceTier,
    parse_span,
};
use crate::pricing::usage::TokenClass;

/// The format tag of keymeter's own catalog files.
pub const FORMAT: &str = "keymeter-catalog/1";

impl PriceCatalog {
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

    /// Writes keymeter's own catalog format.
    pub fn to_json(&self) -> String {
        let file = CatalogFile {
            format: FORMAT.to_owned(),
            snapshot_date: self.snapshot_date.clone(),
            source: self.source.clone(),
            models: self.models().iter().map(ModelFile::from_model).collect(),
        };
        serde_json::to_string_pretty(&file).unwrap_or_default()
    }
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
pub(crate) struct ModelFile {
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

type RateMap = BTreeMap<TokenClass, Rate>;

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
    rates: RateMap,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tiers: BTreeMap<ServiceTier, RateMap>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    above: Vec<BandFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    off_peak: Option<OffPeakFile>,
    #[serde(default, skip_serializing_if = "RegionMultipliers::is_empty")]
    regions: RegionMultipliers,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    unbilled_units: Vec<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BandFile {
    tokens: u64,
    #[serde(default)]
    rates: RateMap,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    tiers: BTreeMap<ServiceTier, RateMap>,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OffPeakFile {
    rates: RateMap,
    windows: Vec<HoursFile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    weekday_timezone: Option<String>,
}

/// One `windows` entry of off-peak pricing, in keymeter's format and LiteLLM's alike.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct HoursFile {
    weekdays: Vec<u8>,
    hours_utc: OneOrMany,
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl HoursFile {
    pub(crate) fn into_hours(self) -> std::result::Result<OffPeakHours, String> {
        if self.weekdays.is_empty() || self.weekdays.iter().any(|d| !(1..=7).contains(d)) {
            return Err("weekdays must be ISO numbers 1–7".into());
        }
        let texts = match self.hours_utc {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(ts) => ts,
        };
        if texts.is_empty() {
            return Err("hours_utc is empty".into());
        }
        let spans = texts
            .iter()
            .map(|t| parse_span(t).ok_or_else(|| format!("invalid hours {:?}: use HH:MM-HH:MM", t)))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(OffPeakHours {
            weekdays: self.weekdays,
            spans,
        })
    }

    fn from_hours(h: &OffPeakHours) -> Self {
        let text = |m: u16| format!("{:02}:{:02}", m / 60, m % 60);
        HoursFile {
            weekdays: h.weekdays.clone(),
            hours_utc: OneOrMany::Many(
                h.spans
                    .iter()
                    .map(|&(a, b)| format!("{}-{}", text(a), text(b)))
                    .collect(),
            ),
        }
    }
}

/// Parses an IANA zone name for off-peak weekdays.
pub(crate) fn weekday_zone(name: &str) -> std::result::Result<chrono_tz::Tz, String> {
    name.parse::<chrono_tz::Tz>().map_err(|_| {
        format!(
            "unknown weekday_timezone {:?}",
            crate::pricing::rates::truncate(name)
        )
    })
}

fn rates_of(map: &RateMap) -> Rates {
    let mut rates = Rates::default();
    for (&class, rate) in map {
        rates.set(class, rate.0);
    }
    rates
}

fn map_of(rates: &Rates) -> RateMap {
    rates.iter().map(|(c, r)| (c, Rate(r))).collect()
}

fn band_from(above: u64, rates: &RateMap, tiers: &BTreeMap<ServiceTier, RateMap>) -> Band {
    let mut band = Band {
        above_tokens: above,
        ..Band::default()
    };
    *band.rates_mut(ServiceTier::Standard) = rates_of(rates);
    for (&tier, map) in tiers {
        *band.rates_mut(tier) = rates_of(map);
    }
    band
}

fn tiers_of(band: &Band) -> BTreeMap<ServiceTier, RateMap> {
    ServiceTier::ALL[1..]
        .iter()
        .filter(|&&t| !band.rates(t).is_empty())
        .map(|&t| (t, map_of(band.rates(t))))
        .collect()
}

impl ModelFile {
    fn into_model(self) -> Result<ModelPrices> {
        let id = self.id;
        let bad = |what: String| Error::Catalog(format!("model {id:?}: {what}"));
        let windows = self
            .prices
            .into_iter()
            .map(|w| {
                if w.tiers.contains_key(&ServiceTier::Standard) {
                    return Err(bad("standard rates go in `rates`, not `tiers`".into()));
                }
                let mut bands = vec![band_from(0, &w.rates, &w.tiers)];
                for b in &w.above {
                    if b.tokens == 0 {
                        return Err(bad("a band needs tokens > 0".into()));
                    }
                    bands.push(band_from(b.tokens, &b.rates, &b.tiers));
                }
                let off_peak = match w.off_peak {
                    None => None,
                    Some(o) => {
                        let hours = o
                            .windows
                            .into_iter()
                            .map(HoursFile::into_hours)
                            .collect::<std::result::Result<Vec<_>, _>>()
                            .map_err(|e| bad(format!("off_peak: {e}")))?;
                        let weekday_zone = o
                            .weekday_timezone
                            .as_deref()
                            .map(weekday_zone)
                            .transpose()
                            .map_err(|e| bad(format!("off_peak: {e}")))?;
                        Some(Box::new(OffPeak {
                            rates: rates_of(&o.rates),
                            hours,
                            weekday_zone,
                        }))
                    }
                };
                Ok(PriceWindow {
                    effective_from: w.effective_from,
                    effective_until: w.effective_until,
                    per_request: w.per_request.map(|r| r.0),
                    bands,
                    off_peak,
                    regions: w.regions,
                    unbilled_units: w.unbilled_units,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(ModelPrices {
            id: id.into(),
            provider: self.provider.into(),
            mode: self.mode,
            currency: self.currency.into(),
            aliases: self.aliases,
            windows,
        })
    }

    pub(crate) fn from_model(m: &ModelPrices) -> Self {
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
                    rates: map_of(w.bands[0].rates(ServiceTier::Standard)),
                    tiers: tiers_of(&w.bands[0]),
                    above: w.bands[1..]
                        .iter()
                        .map(|b| BandFile {
                            tokens: b.above_tokens,
                            rates: map_of(b.rates(ServiceTier::Standard)),
                            tiers: tiers_of(b),
                        })
                        .collect(),
                    off_peak: w.off_peak.as_deref().map(|o| OffPeakFile {
                        rates: map_of(&o.rates),
                        windows: o.hours.iter().map(HoursFile::from_hours).collect(),
                        weekday_timezone: o.weekday_zone.map(|z| z.name().to_owned()),
                    }),
                    regions: w.regions,
                    unbilled_units: w.unbilled_units.clone(),
                })
                .collect(),
        }
    }
}
