//! The cost engine: usage + model + time (+ tier and region) → an exact [`Cost`] with one line per class.
//!
//! Pure, and free of heap allocation: lines live in a fixed array, names are shared `Arc<str>`s.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::error::{Error, Result};
use crate::pricing::catalog::{ModelPrices, PriceCatalog};
use crate::pricing::rates::{PriceWindow, Region, ServiceTier};
use crate::pricing::usage::{TokenClass, Usage};

/// What a cost line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LineKind {
    /// Tokens of one class.
    Tokens(TokenClass),
    /// The per-request fee.
    Request,
}

impl LineKind {
    /// The line's name (`input`, `cache_read`, …, `request`).
    pub fn as_str(self) -> &'static str {
        match self {
            LineKind::Tokens(c) => c.as_str(),
            LineKind::Request => "request",
        }
    }
}

/// One line of a cost: `tokens × rate = cost`, exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CostLine {
    /// What the line is for.
    pub kind: LineKind,
    /// How many tokens (or queries, images, requests: see [`TokenClass::unit`]).
    pub tokens: u64,
    /// The rate per unit, after any regional multiplier.
    pub rate: Decimal,
    /// `tokens × rate`, exact. It may carry trailing zeros (`0.004500`); serialisation drops them, and
    /// `Decimal` compares by value, so normalising on the hot path would be wasted work.
    pub cost: Decimal,
}

impl Serialize for CostLine {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("CostLine", 4)?;
        st.serialize_field("kind", self.kind.as_str())?;
        st.serialize_field("tokens", &self.tokens)?;
        st.serialize_field("rate", &self.rate.normalize().to_string())?;
        st.serialize_field("cost", &self.cost.normalize().to_string())?;
        st.end()
    }
}

const MAX_LINES: usize = TokenClass::ALL.len() + 1;

/// The caller's defaults for what the usage does not say: the service tier and region to price in. A tier or
/// region the usage carries (from the provider's response) wins; a bare [`ServiceTier`] converts into `Terms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Terms {
    /// The tier, unless the usage names flex, priority or batch.
    pub tier: ServiceTier,
    /// The region, unless the usage names one.
    pub region: Region,
}

impl Terms {
    /// Terms of `tier`, in the global region.
    pub fn new(tier: ServiceTier) -> Self {
        Terms {
            tier,
            region: Region::Global,
        }
    }

    /// The same terms in `region`.
    pub fn with_region(mut self, region: Region) -> Self {
        self.region = region;
        self
    }

    /// The tier and region that apply to `usage`: the response's, where it says them.
    pub fn for_usage(self, usage: &Usage) -> (ServiceTier, Region) {
        let tier = match usage.tier {
            Some(t) if t != ServiceTier::Standard => t,
            _ => self.tier,
        };
        (tier, usage.region.unwrap_or(self.region))
    }
}

impl From<ServiceTier> for Terms {
    fn from(tier: ServiceTier) -> Self {
        Terms::new(tier)
    }
}

/// The cost of one request. Serialises as `{"model","provider","currency","tier","total","lines":[…]}` (and
/// `"region"` when not global, `"off_peak": true` when off-peak rates applied) with every amount an exact decimal
/// string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cost {
    /// The model's catalog id.
    pub model: Arc<str>,
    /// The model's own provider (a reseller's entry reports the reseller).
    pub provider: Arc<str>,
    /// The currency.
    pub currency: Arc<str>,
    /// The tier priced.
    pub tier: ServiceTier,
    /// The region priced.
    pub region: Region,
    /// Whether off-peak rates applied.
    pub off_peak: bool,
    /// The sum of the lines.
    pub total: Decimal,
    lines: [CostLine; MAX_LINES],
    len: usize,
}

impl Cost {
    /// The lines, one per class with a count (and the request fee, if any), in class order.
    pub fn lines(&self) -> &[CostLine] {
        &self.lines[..self.len]
    }

    /// The line of `class`, if it has a count.
    pub fn line(&self, class: TokenClass) -> Option<&CostLine> {
        self.lines()
            .iter()
            .find(|l| l.kind == LineKind::Tokens(class))
    }
}

impl Serialize for Cost {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Cost", 8)?;
        st.serialize_field("model", &*self.model)?;
        st.serialize_field("provider", &*self.provider)?;
        st.serialize_field("currency", &*self.currency)?;
        st.serialize_field("tier", &self.tier)?;
        if self.region != Region::Global {
            st.serialize_field("region", &self.region)?;
        } else {
            st.skip_field("region")?;
        }
        if self.off_peak {
            st.serialize_field("off_peak", &true)?;
        } else {
            st.skip_field("off_peak")?;
        }
        st.serialize_field("total", &self.total.to_string())?;
        st.serialize_field("lines", self.lines())?;
        st.end()
    }
}

fn overflow(model: &str) -> Error {
    Error::InvalidUsage(format!(
        "the cost of this usage of {model:?} overflows a decimal"
    ))
}

fn unpriced_unit(model: &ModelPrices, unit: String) -> Error {
    Error::UnpricedUnit {
        model: model.id.to_string(),
        unit,
    }
}

/// Prices `usage` made at `at` under `window` of `model`, in the tier and region of `terms` unless the usage
/// names its own.
///
/// # Errors
/// [`Error::UnpricedUnit`] when the model is priced only in units keymeter does not bill (or in per-query /
/// per-image units this usage has none of) — never a silent zero; [`Error::UnpricedClass`] when the usage has a
/// count of a class the model has no rate for; [`Error::InvalidUsage`] on arithmetic overflow.
pub fn price_usage(
    model: &ModelPrices,
    window: &PriceWindow,
    usage: &Usage,
    at: DateTime<Utc>,
    terms: impl Into<Terms>,
) -> Result<Cost> {
    let (tier, region) = terms.into().for_usage(usage);
    let band = window.band_for(usage.prompt_tokens());
    let uplift = if window.regions.is_empty() {
        None
    } else {
        window.regions.for_region(region)
    };
    let empty = CostLine {
        kind: LineKind::Request,
        tokens: 0,
        rate: Decimal::ZERO,
        cost: Decimal::ZERO,
    };
    let mut cost = Cost {
        model: model.id.clone(),
        provider: model.provider.clone(),
        currency: model.currency.clone(),
        tier,
        region,
        off_peak: false,
        total: Decimal::ZERO,
        lines: [empty; MAX_LINES],
        len: 0,
    };
    let push = |cost: &mut Cost, kind: LineKind, tokens: u64, rate: Decimal| -> Result<()> {
        let amount = Decimal::from(tokens)
            .checked_mul(rate)
            .ok_or_else(|| overflow(&model.id))?;
        cost.total = cost
            .total
            .checked_add(amount)
            .ok_or_else(|| overflow(&model.id))?;
        cost.lines[cost.len] = CostLine {
            kind,
            tokens,
            rate,
            cost: amount,
        };
        cost.len += 1;
        Ok(())
    };
    for class in TokenClass::ALL {
        let tokens = usage.get(class);
        if tokens == 0 {
            continue;
        }
        let off_peak = if window.off_peak.is_some() {
            window.off_peak_rate(at, tier, class)
        } else {
            None
        };
        cost.off_peak |= off_peak.is_some();
        let Some(mut rate) = off_peak.or_else(|| window.rate(band, tier, class)) else {
            return Err(match window.other_unit() {
                Some(unit) => unpriced_unit(model, unit),
                None => Error::UnpricedClass {
                    model: model.id.to_string(),
                    class: class.as_str(),
                },
            });
        };
        if let Some(m) = uplift
            && class.is_token()
        {
            rate = rate.checked_mul(m).ok_or_else(|| overflow(&model.id))?;
        }
        push(&mut cost, LineKind::Tokens(class), tokens, rate)?;
    }
    if let Some(fee) = window.per_request {
        push(&mut cost, LineKind::Request, 1, fee)?;
    }
    // A zero on a non-empty usage is only right for a free entry: one priced in other units is refused.
    if cost.total.is_zero()
        && !usage.is_empty()
        && let Some(unit) = window.other_unit()
    {
        return Err(unpriced_unit(model, unit));
    }
    cost.total = cost.total.normalize();
    Ok(cost)
}

impl PriceCatalog {
    /// The cost of `usage` of the model named `model` (id, `provider/id` or alias) at `at`, in the tier and region
    /// of `terms` (a [`ServiceTier`] converts) unless the usage names its own.
    ///
    /// ```
    /// use keymeter::pricing::{PriceCatalog, ServiceTier, Usage};
    /// use chrono::Utc;
    ///
    /// let catalog = PriceCatalog::bundled();
    /// let usage = Usage { input: 1_000, cache_read: 2_000, output: 500, ..Usage::default() };
    /// let cost = catalog.cost("gpt-4o", &usage, Utc::now(), ServiceTier::Standard).unwrap();
    /// // 1000 × 0.0000025 + 2000 × 0.00000125 + 500 × 0.00001
    /// assert_eq!(cost.total.to_string(), "0.01");
    /// assert!(catalog.cost("no-such-model", &usage, Utc::now(), ServiceTier::Standard).is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::UnknownModel`], [`Error::AmbiguousModel`], [`Error::NoPrice`], [`Error::UnpricedUnit`],
    /// [`Error::UnpricedClass`], [`Error::InvalidUsage`].
    pub fn cost(
        &self,
        model: &str,
        usage: &Usage,
        at: DateTime<Utc>,
        terms: impl Into<Terms>,
    ) -> Result<Cost> {
        let (model, window) = self.price_at(model, at)?;
        price_usage(model, window, usage, at, terms)
    }
}
