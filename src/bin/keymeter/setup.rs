//! `init`, `env` and `vault keygen`.

use std::io::Write;

use chrono::Utc;
use keymeter::Config;
use keymeter::credentials::MasterKey;
use keymeter::env::{EnvSource, detect};
use keymeter::random::OsRandom;
use secrecy::ExposeSecret;
use serde_json::json;

use crate::Outcome;
use crate::args::VaultCommand;

pub(crate) fn env(source: &dyn EnvSource) -> Outcome {
    let d = detect(source)?;
    Ok((
        json!({"environment": d.environment, "reason": d.reason}),
        format!("{} ({})", d.environment, d.reason),
    ))
}

pub(crate) fn vault(cmd: VaultCommand, json_mode: bool) -> Outcome {
    let VaultCommand::Keygen { id } = cmd;
    let id = id.unwrap_or_else(|| format!("k{}", Utc::now().format("%Y%m%d")));
    let key = MasterKey::generate(&id, &OsRandom)?;
    let entry = key.to_env_entry();
    if !json_mode {
        // Advice on stderr, so `KEYMETER_MASTER_KEYS=$(keymeter vault keygen)` captures the entry alone.
        let _ = writeln!(
            std::io::stderr(),
            "Put it first in KEYMETER_MASTER_KEYS (comma-separated) to make it active, keep the old keys after \
             it, then run `keymeter creds rewrap`."
        );
    }
    Ok((
        json!({"id": id, "key": entry.expose_secret()}),
        entry.expose_secret().to_owned(),
    ))
}

/// Secrets first (so production without them creates nothing), then the store.
pub(crate) async fn init(mut config: Config, source: &dyn EnvSource) -> Outcome {
    let created = config.init_secrets(source, &OsRandom, Utc::now())?;
    config.connect().await?.close().await;
    let secrets_file = config
        .secrets_file
        .as_ref()
        .filter(|p| p.exists() && config.environment.environment.is_development())
        .map(|p| p.display().to_string());
    let env = &config.environment;
    let human = format!(
        "store ready: {}\nenvironment: {} ({})\n{}",
        config.store_url,
        env.environment,
        env.reason,
        match (&secrets_file, created.is_empty()) {
            (Some(p), false) => format!("wrote {} to {p} (mode 0600)", created.join(", ")),
            (Some(p), true) => format!("secrets file: {p}"),
            (None, _) => "secrets: from the environment".to_owned(),
        }
    );
    Ok((
        json!({
            "store": config.store_url,
            "environment": env.environment,
            "secrets_file": secrets_file,
            "created_secrets": created,
        }),
        human,
    ))
}
