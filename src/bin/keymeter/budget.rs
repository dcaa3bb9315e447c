//! `budget …`: set and read spend limits.

use chrono::Utc;
use keymeter::Config;
use keymeter::ledger::{Budget, BudgetPeriod, parse_amount};
use serde_json::json;

use crate::args::BudgetCommand;
use crate::{Failure, Outcome, parse_tz, to_json};

pub(crate) async fn run(config: &Config, cmd: BudgetCommand) -> Outcome {
    let store = config.connect().await?;
    match cmd {
        BudgetCommand::Set {
            scope,
            limit,
            period,
            soft,
            thresholds,
            tz,
        } => {
            let mut budget = Budget::new(
                scope.scope(),
                parse_amount(&limit)?,
                period.parse::<BudgetPeriod>()?,
            )?
            .tz(parse_tz(&tz)?);
            if let Some(soft) = soft {
                budget = budget.soft_limit(parse_amount(&soft)?)?;
            }
            if let Some(thresholds) = thresholds {
                budget = budget.thresholds(keymeter::ledger::parse_thresholds(&thresholds)?)?;
            }
            store.set_budget(&budget).await?;
            let value = json!({
                "scope": budget.scope, "limit": budget.limit.to_string(),
                "soft": budget.soft_limit.map(|s| s.to_string()), "period": budget.period, "tz": budget.tz.name(),
                "thresholds": budget.alert_thresholds(),
            });
            let per = match budget.period {
                BudgetPeriod::Daily => "a day",
                BudgetPeriod::Weekly => "a week",
                BudgetPeriod::Monthly => "a month",
                BudgetPeriod::Total => "in total",
            };
            let human = format!(
                "budget of {}: {} {per} (periods start in {}){}",
                budget.scope,
                crate::view::money(budget.limit, "USD"),
                budget.tz.name(),
                budget
                    .soft_limit
                    .map(|s| format!(", warning at {}", crate::view::money(s, "USD")))
                    .unwrap_or_default()
            );
            Ok((value, human))
        }
        BudgetCommand::Status { scope } => {
            let scope = scope.scope();
            match store.budget_status(&scope, Utc::now()).await? {
                Some(s) => {
                    let now = Utc::now();
                    let usd = |d| crate::view::money(d, "USD");
                    let mut rows = vec![
                        ("Budget", format!("{} ({})", s.scope, s.period)),
                        ("Limit", usd(s.limit)),
                        ("Spent", usd(s.spent)),
                        ("Reserved (in flight)", usd(s.reserved)),
                        ("Remaining", usd(s.remaining)),
                        ("Period started", crate::view::when(s.period_start, now)),
                    ];
                    if let Some(soft) = s.soft_limit {
                        let reached = if s.soft_exceeded {
                            "reached"
                        } else {
                            "not reached"
                        };
                        rows.push(("Soft limit", format!("{} ({reached})", usd(soft))));
                    }
                    let human = crate::view::fields(rows).to_string();
                    Ok((to_json(&s)?, human))
                }
                None => Err(Failure::Negative(
                    json!({"code": "NO_BUDGET", "scope": scope}),
                    format!(
                        "no budget for {scope}: set one with keymeter budget set --limit AMOUNT --period monthly"
                    ),
                )),
            }
        }
    }
}
