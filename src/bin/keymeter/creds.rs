//! `creds …`: provider credentials (bring your own key).

use std::path::Path;
use std::sync::Arc;

use keymeter::credentials::{
    CredentialResolver, CredentialScope, Provider, rewrap_with_progress, set_key,
};
use keymeter::env::Detected;
use keymeter::secret::mask;
use keymeter::store::EnvFile;
use keymeter::{Config, Error};
use serde_json::json;

use crate::args::{CredsCommand, EnvFileArg};
use crate::{Failure, Outcome, read_stdin_secret, to_json};

fn env_file_tier(arg: &EnvFileArg, env: &Detected) -> Result<Option<EnvFile>, Failure> {
    match &arg.env_file {
        Some(path) if !env.environment.is_development() => Err(Failure::Usage(format!(
            "--env-file {} refused: .env keys are for development only (environment: {})",
            path.display(),
            env.environment
        ))),
        Some(path) => Ok(Some(EnvFile::new(path, env.environment))),
        None => {
            let default = Path::new(".env");
            Ok((env.environment.is_development() && default.exists())
                .then(|| EnvFile::new(default, env.environment)))
        }
    }
}

fn credential_failure(e: Error) -> Failure {
    match e {
        Error::NoCredential { ref provider } => Failure::Negative(
            json!({"code": "NO_CREDENTIAL", "provider": provider}),
            e.to_string(),
        ),
        other => other.into(),
    }
}

pub(crate) async fn run(config: &Config, cmd: CredsCommand) -> Outcome {
    let env = &config.environment;
    let store = config.connect().await?;
    let resolver = |file: Option<EnvFile>| -> Result<CredentialResolver, Failure> {
        let r = config.resolver(store.clone())?;
        Ok(match file {
            Some(f) => r.with_env_file(Arc::new(f)),
            None => r,
        })
    };
    match cmd {
        CredsCommand::Set {
            owner,
            system,
            provider,
            env_file,
        } => {
            let provider = Provider::new(&provider)?;
            let key = read_stdin_secret()?;
            let masked = mask(&key);
            if system && let Some(path) = &env_file.env_file {
                let file = env_file_tier(&env_file, env)?
                    .ok_or_else(|| Failure::Usage("no .env file".into()))?;
                file.write_key(&provider, &key)?;
                let human = format!(
                    "wrote the {provider} system key {masked} to {}",
                    path.display()
                );
                return Ok((
                    json!({"scope": "system", "owner": null, "provider": provider, "masked": masked, "stored": "env-file"}),
                    human,
                ));
            }
            let scope = match &owner {
                Some(o) => CredentialScope::user(o)?,
                None => CredentialScope::System,
            };
            let vault = config.vault()?;
            set_key(&*store, &vault, &scope, &provider, &key).await?;
            let whose = owner
                .as_deref()
                .map_or_else(|| "the system".to_owned(), |o| o.to_owned());
            Ok((
                json!({"scope": scope.kind(), "owner": owner, "provider": provider, "masked": masked, "stored": "vault"}),
                format!("stored {whose}'s {provider} key {masked} (encrypted)"),
            ))
        }
        CredsCommand::Status { owner, env_file } => {
            let file = env_file_tier(&env_file, env)?;
            let status = resolver(file)?.status(&owner).await?;
            let yes = |b: bool| if b { "yes" } else { "no" };
            let mut t = crate::view::table(["Provider", "Own key", "System key", "Requests use"]);
            for (p, s) in &status {
                let (used, good) = match (s.user, s.system) {
                    (true, _) => ("own key", true),
                    (false, true) => ("system key", true),
                    (false, false) => ("none: calls fail", false),
                };
                t.add_row(vec![
                    comfy_table::Cell::new(p),
                    comfy_table::Cell::new(yes(s.user)),
                    comfy_table::Cell::new(yes(s.system)),
                    crate::view::status(used, good),
                ]);
            }
            let human = format!("Provider keys of {owner}\n{t}");
            Ok((json!({"owner": owner, "providers": status}), human))
        }
        CredsCommand::Resolve {
            owner,
            provider,
            env_file,
        } => {
            let provider = Provider::new(&provider)?;
            let file = env_file_tier(&env_file, env)?;
            let resolved = resolver(file)?
                .resolve(&owner, &provider)
                .await
                .map_err(credential_failure)?;
            let masked = resolved.masked();
            Ok((
                json!({"provider": provider, "source": resolved.source, "masked": masked}),
                format!("{provider}: {} key {masked}", resolved.source.as_str()),
            ))
        }
        CredsCommand::Delete {
            owner,
            system: _,
            provider,
        } => {
            let scope = match &owner {
                Some(o) => CredentialScope::user(o)?,
                None => CredentialScope::System,
            };
            let deleted = match provider {
                Some(p) => u64::from(store.delete(&scope, &Provider::new(&p)?).await?),
                None => store.delete_all(&scope).await?,
            };
            let whose = owner.as_deref().unwrap_or("the system");
            Ok((
                json!({"owner": owner, "scope": if owner.is_some() { "user" } else { "system" }, "deleted": deleted}),
                format!("deleted {deleted} key(s) of {whose}"),
            ))
        }
        CredsCommand::Rewrap => {
            let vault = config.vault()?;
            let bar = crate::view::progress(0, "rewrapping credentials");
            let report = rewrap_with_progress(&*store, &vault, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await;
            bar.finish_and_clear();
            let report = report?;
            let mut human = format!(
                "rewrapped {} of {} credential(s) under {}{}",
                report.rewrapped,
                report.total,
                vault.keys().active().id(),
                if report.skipped > 0 {
                    format!(" ({} changed meanwhile: run again)", report.skipped)
                } else {
                    String::new()
                }
            );
            for row in &report.unreadable {
                human.push_str(&format!(
                    "\ncannot decrypt the {} {} key{}: {} (left as it was)",
                    row.scope,
                    row.provider,
                    row.owner
                        .as_ref()
                        .map(|o| format!(" of {o}"))
                        .unwrap_or_default(),
                    row.reason
                ));
            }
            if report.unreadable.is_empty() {
                Ok((to_json(&report)?, human))
            } else {
                Err(Failure::Negative(to_json(&report)?, human))
            }
        }
    }
}
