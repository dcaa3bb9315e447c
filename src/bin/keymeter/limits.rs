//! `limits …`: the rate limits of an owner, an org or a key.

use keymeter::Config;
use keymeter::limits::{LimitScope, Limits, Quota};
use serde_json::{Value, json};

use crate::Outcome;
use crate::args::LimitsCommand;

/// Parses repeated `N/PERIOD` flags.
pub(crate) fn quotas(values: &[String]) -> Result<Vec<Quota>, keymeter::Error> {
    values.iter().map(|v| v.parse()).collect()
}

/// The JSON of a scope's limits: `{"scope", "requests": ["N/PERIOD"…], "tokens": […]}`.
pub(crate) fn limits_json(scope: &LimitScope, limits: &Limits) -> Value {
    json!({"scope": scope.to_string(), "requests": limits.requests, "tokens": limits.tokens})
}

fn human(scope: &LimitScope, limits: &Limits) -> String {
    let list = |q: &[Quota]| {
        if q.is_empty() {
            "none".to_owned()
        } else {
            q.iter()
                .map(Quota::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        }
    };
    format!(
        "{scope}\n  requests: {}\n  tokens:   {}",
        list(&limits.requests),
        list(&limits.tokens)
    )
}

pub(crate) async fn run(config: &Config, cmd: LimitsCommand) -> Outcome {
    let store = config.connect().await?;
    match cmd {
        LimitsCommand::Set {
            scope,
            requests,
            tokens,
        } => {
            let scope = scope.scope();
            let limits = Limits {
                requests: quotas(&requests)?,
                tokens: quotas(&tokens)?,
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
