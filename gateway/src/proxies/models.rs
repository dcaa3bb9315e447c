//! `GET /v1/models`: the models the calling key may use through the gateway, OpenAI-shaped — those the catalog
//! prices today, of a provider its owner has a key for (its own or the system's), through an API the gateway
//! serves, that the allowlists of the key, its owner and its organisation permit.

use axum::Json;
use chrono::Utc;
use keymeter::credentials::Provider;
use keymeter::pricing::{PriceWindow, ServiceTier, TokenClass};
use keymeter_axum::ApiError;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use super::{Caller, State};

/// Whether the gateway proxies `mode` for `provider`: OpenAI's chat, Responses and embeddings, Anthropic's
/// messages and Gemini's generateContent.
fn served(provider: &Provider, mode: Option<&str>) -> bool {
    matches!(
        (provider.as_str(), mode),
        ("openai", Some("chat" | "responses" | "embedding"))
            | ("anthropic" | "google", Some("chat"))
    )
}

/// `GET /v1/models`.
pub async fn list(
    axum::extract::State(app): State,
    caller: Caller,
) -> Result<Json<Value>, ApiError> {
    let rules = caller.rules(&app).await?;
    let key = caller.key;
    let status = app.resolver.status(&key.owner).await?;
    let usable: Vec<&Provider> = status
        .iter()
        .filter(|(_, s)| s.user || s.system)
        .map(|(p, _)| p)
        .collect();
    let catalog = app.meter.catalog();
    let now = Utc::now();
    let mut data: Vec<(String, &str, Value)> = Vec::new();
    for model in catalog.models() {
        let Ok(provider) = Provider::new(&model.provider) else {
            continue;
        };
        let Some(provider) = usable.iter().find(|p| ***p == provider) else {
            continue;
        };
        let Some(window) = model.window_at(now) else {
            continue;
        };
        if !served(provider, model.mode.as_deref()) {
            continue;
        }
        // The name a client sends: `gemini/gemini-2.5-flash` is called `gemini-2.5-flash`, when that name
        // resolves to this same model.
        let short = model
            .id
            .strip_prefix(&*model.provider)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|short| catalog.resolve(short).is_ok_and(|m| m.id == model.id));
        let name = short.unwrap_or(&model.id);
        // Only what the allowlists that apply to the key permit (the same check a request meets).
        match rules.check_model(&key, provider.as_str(), name) {
            Ok(()) => data.push((
                name.to_owned(),
                provider.as_str(),
                pricing(window, &model.currency),
            )),
            Err(keymeter::Error::ModelNotAllowed { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    data.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.cmp(b.1)));
    data.dedup_by(|a, b| a.0 == b.0);
    let data: Vec<Value> = data
        .into_iter()
        .map(|(id, owner, pricing)| {
            json!({"id": id, "object": "model", "created": 0, "owned_by": owner, "pricing": pricing})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

/// Today's standard base rates per 1M tokens as decimal strings (`null` for a class the catalog does not price):
/// what the console's Models page shows. SDKs keep unknown fields of a model, so the list stays OpenAI-shaped.
fn pricing(window: &PriceWindow, currency: &str) -> Value {
    let per_million = |class| {
        window
            .bands
            .first()
            .and_then(|base| window.rate(base, ServiceTier::Standard, class))
            .and_then(|r| r.checked_mul(Decimal::from(1_000_000)))
            .map(|r| r.normalize().to_string())
    };
    json!({
        "currency": currency,
        "input_per_1m": per_million(TokenClass::Input),
        "cached_input_per_1m": per_million(TokenClass::CacheRead),
        "output_per_1m": per_million(TokenClass::Output),
        "per_request": window.per_request.map(|r| r.normalize().to_string()),
    })
}
