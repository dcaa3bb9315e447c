//! `limits …`: the rate limits of an owner, an org or a key.

use keymeter::Config;
use keymeter::limits::{LimitScope, Limits, Period, Quota};
use serde_json::{Value, json};

use crate::Outcome;
use crate::args::LimitsCommand;

/// Parses repeated `N/PERIOD` flags.
pub(crate) fn quotas(values: &[String]) -> Result<Vec<Quota>, keymeter::Error> {
    values.iter().map(|v| v.parse()).collect()
}

/// The JSON of a scope's limits: `{"scope", "requests": ["N/PERIOD"…], "tokens": […], "models": [rule…]}`.
pub(crate) fn limits_json(scope: &LimitScope, limits: &Limits) -> Value {
    json!({"scope": scope.to_string(), "requests": limits.requests, "tokens": limits.tokens,
        "models": limits.models, "max_parallel": limits.max_parallel})
}

/// A table of the scope's quotas, one a row, with what each counts and per how long.
fn human(scope: &LimitScope, limits: &Limits) -> String {
    let models = if limits.models.is_empty() {
        String::new()
    } else {
        let rules: Vec<String> = limits.models.iter().map(ToString::to_string).collect();
        format!("\nModels allowed: {}", rules.join(", "))
    };
    let models = match limits.max_parallel {
        Some(n) => format!("{models}\nRequests in flight at most: {n}"),
        None => models,
    };
    if limits.requests.is_empty() && limits.tokens.is_empty() {
        return format!(
            "{scope}: no rate limits (set some with keymeter limits set --requests 100/min --tokens 50000/h){models}"
        );
    }
    let mut t = crate::view::table(["Counts", "Allowed", "Per"]);
    for (what, quotas) in [("requests", &limits.requests), ("tokens", &limits.tokens)] {
        for q in quotas {
            t.add_row([
                what.to_owned(),
                crate::view::count(q.count),
                match q.period {
                    Period::Second => "second",
                    Period::Minute => "minute",
                    Period::Hour => "hour",
                    Period::Day => "day",
                }
                .to_owned(),
            ]);
        }
    }
    crate::view::align_right(&mut t, &[1]);
    format!("Rate limits of {scope}\n{t}{models}")
}

pub(crate) async fn run(config: &Config, cmd: LimitsCommand) -> Outcome {
    let store = config.connect().await?;
    match cmd {
        LimitsCommand::Set {
            scope,
            requests,
            tokens,
            models,
            max_parallel,
        } => {
            let scope = scope.scope();
            let limits = Limits {
                requests: quotas(&requests)?,
                tokens: quotas(&tokens)?,
                models: keymeter::keys::models::parse_rules(&models)?,
                max_parallel,
            };
            store.set_limits(&scope, &limits).await?;
            Ok((limits_json(&scope, &limits), human(&scope, &limits)))
        }
        LimitsCommand::Show { scope } => {
            let scope = scope.scope();
            let limits = store
                .limits(std::slice::from_ref(&scope))
                .await?
                .pop()
                .unwrap_or_default();
            Ok((limits_json(&scope, &limits), human(&scope, &limits)))
        }
    }
}
