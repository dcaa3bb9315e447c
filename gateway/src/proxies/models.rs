//! `GET /v1/models`: the models the calling key may use through the gateway, OpenAI-shaped — those the catalog
//! prices today, of a provider its owner has a key for (its own or the system's), through an API the gateway
//! serves, that the allowlists of the key, its owner and its organisation permit.

use axum::Json;
use chrono::Utc;
use keymeter::credentials::Provider;
use keymeter_axum::ApiError;
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
    let mut data: Vec<(String, &str)> = Vec::new();
    for model in catalog.models() {
        let Ok(provider) = Provider::new(&model.provider) else {
            continue;
        };
        let Some(provider) = usable.iter().find(|p| ***p == provider) else {
            continue;
        };
        if !served(provider, model.mode.as_deref()) || model.window_at(now).is_none() {
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
            Ok(()) => data.push((name.to_owned(), provider.as_str())),
            Err(keymeter::Error::ModelNotAllowed { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    data.sort();
    data.dedup_by(|a, b| a.0 == b.0);
    let data: Vec<Value> = data
        .into_iter()
        .map(|(id, owner)| json!({"id": id, "object": "model", "created": 0, "owned_by": owner}))
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}
