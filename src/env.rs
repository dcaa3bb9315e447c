//! Environment detection: development, test, staging or production, and the rule that decided it.
//!
//! Rules, first match wins:
//! 1. `KEYMETER_ENV` (`development`/`dev`/`local`, `test`, `staging`/`stage`, `production`/`prod`);
//! 2. `DEBUG=true` (or `1`, `yes`) → development;
//! 3. `DEPLOY_ENV`: `production`, `prod`, `live`, `render`, `heroku`, `fly`, `railway`, `vercel` → production;
//!    `staging`, `stage`, `preview` → staging; `local`, `dev`, `development` → development; `test`, `ci` → test;
//!    any other value → production (the safe side), saying so;
//! 4. nothing set → development, with a warning; [`detect_strict`] makes that an error.
//!
//! Detection reads through an [`EnvSource`], so tests never touch the process environment.
//!
//! ```
//! use std::collections::HashMap;
//! use keymeter::env::{detect, Environment};
//!
//! let vars = HashMap::from([("DEPLOY_ENV".to_string(), "render".to_string())]);
//! let found = detect(&vars).unwrap();
//! assert_eq!(found.environment, Environment::Production);
//! assert_eq!(found.reason, "DEPLOY_ENV=render");
//! ```

use std::collections::HashMap;
use std::fmt;

use serde::Serialize;

use crate::error::{Error, Result};

/// Where a service runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// A developer's machine.
    Development,
    /// Automated tests.
    Test,
    /// A pre-production deployment.
    Staging,
    /// Production.
    Production,
}

impl Environment {
    /// `development`, `test`, `staging` or `production`.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Development => "development",
            Environment::Test => "test",
            Environment::Staging => "staging",
            Environment::Production => "production",
        }
    }

    /// Whether development conveniences (generated secrets, `.env` keys) are allowed.
    pub fn is_development(self) -> bool {
        matches!(self, Environment::Development | Environment::Test)
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A detected environment and the rule that decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Detected {
    /// The environment.
    pub environment: Environment,
    /// The rule, for example `KEYMETER_ENV=production` or `nothing set (defaulting to development)`.
    pub reason: String,
    /// Whether the result is a default that deserves a warning.
    #[serde(skip)]
    pub defaulted: bool,
}

/// Where variables are read from.
pub trait EnvSource {
    /// The variable's value, if set.
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl EnvSource for HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

fn found(environment: Environment, reason: String) -> Result<Detected> {
    Ok(Detected {
        environment,
        reason,
        defaulted: false,
    })
}

/// Detects the environment; nothing set means development (flagged `defaulted`).
///
/// # Errors
/// [`Error::Config`] when `KEYMETER_ENV` holds an unknown value.
pub fn detect(source: &dyn EnvSource) -> Result<Detected> {
    let value = |name: &str| {
        source
            .var(name)
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty())
    };
    if let Some(v) = value("KEYMETER_ENV") {
        let env = match v.as_str() {
            "development" | "dev" | "local" => Environment::Development,
            "test" | "testing" => Environment::Test,
            "staging" | "stage" => Environment::Staging,
            "production" | "prod" => Environment::Production,
            _ => {
                return Err(Error::Config(format!(
                    "KEYMETER_ENV={v:?} is not one of development, test, staging, production"
                )));
            }
        };
        return found(env, format!("KEYMETER_ENV={v}"));
    }
    if let Some(v) = value("DEBUG")
        && matches!(v.as_str(), "true" | "1" | "yes")
    {
        return found(Environment::Development, format!("DEBUG={v}"));
    }
    if let Some(v) = value("DEPLOY_ENV") {
        return match v.as_str() {
            "production" | "prod" | "live" | "render" | "heroku" | "fly" | "railway" | "vercel" => {
                found(Environment::Production, format!("DEPLOY_ENV={v}"))
            }
            "staging" | "stage" | "preview" => {
                found(Environment::Staging, format!("DEPLOY_ENV={v}"))
            }
            "local" | "dev" | "development" => {
                found(Environment::Development, format!("DEPLOY_ENV={v}"))
            }
            "test" | "ci" => found(Environment::Test, format!("DEPLOY_ENV={v}")),
            _ => found(
                Environment::Production,
                format!("DEPLOY_ENV={v} (unrecognised, treated as production)"),
            ),
        };
    }
    Ok(Detected {
        environment: Environment::Development,
        reason: "nothing set (defaulting to development; set KEYMETER_ENV)".into(),
        defaulted: true,
    })
}

/// Like [`detect`], but an environment nobody set is an error.
///
/// # Errors
/// [`Error::Config`] when no rule matches or `KEYMETER_ENV` is unknown.
pub fn detect_strict(source: &dyn EnvSource) -> Result<Detected> {
    let detected = detect(source)?;
    if detected.defaulted {
        return Err(Error::Config(
            "no environment set: set KEYMETER_ENV (or DEPLOY_ENV)".into(),
        ));
    }
    Ok(detected)
}
