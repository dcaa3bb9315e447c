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
            store.set_budget(&budget).await?;
            let value = json!({
                "scope": budget.scope, "limit": budget.limit.to_string(),
                "soft": budget.soft_limit.map(|s| s.to_string()), "period": budget.period, "tz": budget.tz.name(),
            });
            let human = format!(
                "{}: {} per {} ({})",
                budget.scope,
                budget.limit,
                budget.period,
                budget.tz.name()
            );
            Ok((value, human))
        }
        BudgetCommand::Status { scope } => {
            let scope = scope.scope();
            match store.budget_status(&scope, Utc::now()).await? {
                Some(s) => {
                    let human = format!(
                        "{}: spent {} + reserved {} of {} ({} remaining) since {}{}",
                        s.scope,
                        s.spent,
                        s.reserved,
                        s.limit,
                        s.remaining,
                        s.period_start,
                        if s.soft_exceeded {
                            "; soft limit reached"
                        } else {
                            ""
                        }
                    );
                    Ok((to_json(&s)?, human))
                }
                None => Err(Failure::Negative(
                    json!({"code": "NO_BUDGET", "scope": scope}),
                    format!("no budget for {scope}"),
                )),
            }
        }
    }
}
