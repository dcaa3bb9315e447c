//! The cost engine: usage + model + time (+ tier) → an exact [`Cost`] with one line per class.
//!
//! Pure, and free of heap allocation: lines live in a fixed array, names are shared `Arc<str>`s.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::ser::SerializeStruct;
use serde::{Serialize, Serializer};

use crate::error::{Error, Result};
use crate::pricing::catalog::{ModelPrices, PriceCatalog, PriceWindow, ServiceTier};
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
    /// How many tokens (or requests).
    pub tokens: u64,
    /// The rate per token (or per request).
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

/// The cost of one request. Serialises as `{"model","provider","currency","tier","total","lines":[…]}` with
/// every amount an exact decimal string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cost {
    /// The model's catalog id.
    pub model: Arc<str>,
    /// The provider.
    pub provider: Arc<str>,
    /// The currency.
    pub currency: Arc<str>,
    /// The tier priced.
    pub tier: ServiceTier,
    /// The sum of the lines.
    pub total: Decimal,
    lines: [CostLine; MAX_LINES],
    len: usize,
}

impl Cost {
    /// The lines, one per class with tokens (and the request fee, if any), in class order.
    pub fn lines(&self) -> &[CostLine] {
        &self.lines[..self.len]
    }

    /// The line of `class`, if it has tokens.
    pub fn line(&self, class: TokenClass) -> Option<&CostLine> {
        self.lines()
            .iter()
            .find(|l| l.kind == LineKind::Tokens(class))
    }
}

impl Serialize for Cost {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Cost", 6)?;
        st.serialize_field("model", &*self.model)?;
        st.serialize_field("provider", &*self.provider)?;
        st.serialize_field("currency", &*self.currency)?;
        st.serialize_field("tier", &self.tier)?;
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

/// Prices `usage` under `window` of `model`.
///
/// # Errors
/// [`Error::UnpricedClass`] when the usage has tokens of a class the model has no rate for (never a silent zero);
/// [`Error::InvalidUsage`] on arithmetic overflow.
pub fn price_usage(
    model: &ModelPrices,
    window: &PriceWindow,
    usage: &Usage,
    tier: ServiceTier,
) -> Result<Cost> {
    let band = window.band_for(usage.prompt_tokens());
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
        let rate = window
            .rate(band, tier, class)
            .ok_or_else(|| Error::UnpricedClass {
                model: model.id.to_string(),
                class: class.as_str(),
            })?;
        push(&mut cost, LineKind::Tokens(class), tokens, rate)?;
    }
    if let Some(fee) = window.per_request {
        push(&mut cost, LineKind::Request, 1, fee)?;
    }
    cost.total = cost.total.normalize();
    Ok(cost)
}

impl PriceCatalog {
    /// The cost of `usage` of the model named `model` (id, alias or `provider/id`) at `at`, in `tier`.
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
    /// [`Error::UnknownModel`], [`Error::NoPrice`], [`Error::UnpricedClass`], [`Error::InvalidUsage`].
    pub fn cost(
        &self,
        model: &str,
        usage: &Usage,
        at: DateTime<Utc>,
        tier: ServiceTier,
    ) -> Result<Cost> {
        let (model, window) = self.price_at(model, at)?;
        price_usage(model, window, usage, tier)
    }
}
