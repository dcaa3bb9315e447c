//! Environment detection: development, test, staging or production, and the rule that decided it.
//!
//! Rules, first match wins; a development signal never overrides a production one:
//! 1. `KEYMETER_ENV` set: `development`/`dev`, `test`, `staging`/`stage`, `production`/`prod` (any case); empty,
//!    not UTF-8 or anything else is an error;
//! 2. `DEPLOY_ENV` set: `local`/`dev`/`development` → development; `test`/`ci` → test; `staging`/`stage`/`preview`
//!    → staging; `production`/`prod`/`render` and anything else (not UTF-8 included) → production, the safe side.
//!    A truthy `DEBUG` beside staging or production is reported as a warning, never obeyed;
//! 3. `DEBUG` truthy (`true`, `True`, `TRUE`, `1`, `yes`) → development;
//! 4. nothing set → development, with a warning; [`detect_strict`] makes that an error.
//!
//! Only [`Environment::Development`] may read or write `.env` keys or generate secrets. Detection reads through
//! an [`EnvSource`], so tests never touch the process environment.
//!
//! ```
//! use std::collections::HashMap;
//! use keymeter::env::{detect, Environment};
//!
//! let vars = HashMap::from([("DEPLOY_ENV".to_string(), "render".to_string())]);
//! let found = detect(&vars).unwrap();
//! assert_eq!(found.environment, Environment::Production);
//! assert_eq!(found.reason, "DEPLOY_ENV=render");
//!
//! // A production signal wins over DEBUG.
//! let vars = HashMap::from([("DEBUG".to_string(), "True".to_string()), ("DEPLOY_ENV".to_string(), "production".to_string())]);
//! let found = detect(&vars).unwrap();
//! assert_eq!(found.environment, Environment::Production);
//! assert!(found.warning.is_some());
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

    /// Whether development conveniences (generated secrets, `.env` keys) are allowed: development only.
    pub fn is_development(self) -> bool {
        matches!(self, Environment::Development)
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
    /// Something the operator should know (a `DEBUG` flag beside a production signal, a default).
    #[serde(skip)]
    pub warning: Option<String>,
}

/// Where variables are read from.
pub trait EnvSource {
    /// The variable's value, if set and UTF-8.
    fn var(&self, name: &str) -> Option<String>;

    /// Whether the variable is set at all (a value that is not UTF-8 counts as set).
    fn is_set(&self, name: &str) -> bool {
        self.var(name).is_some()
    }
}

/// The process environment.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcessEnv;

impl EnvSource for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }

    fn is_set(&self, name: &str) -> bool {
        std::env::var_os(name).is_some()
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
        warning: None,
    })
}

/// `DEBUG`'s truthy values, exactly.
fn is_truthy(value: &str) -> bool {
    matches!(value.trim(), "true" | "True" | "TRUE" | "1" | "yes")
}

/// Detects the environment; nothing set means development (flagged `defaulted`).
///
/// # Errors
/// [`Error::Config`] when `KEYMETER_ENV` is set but empty, not UTF-8 or unknown.
pub fn detect(source: &dyn EnvSource) -> Result<Detected> {
    if source.is_set("KEYMETER_ENV") {
        let Some(raw) = source.var("KEYMETER_ENV") else {
            return Err(Error::Config("KEYMETER_ENV is not valid UTF-8".into()));
        };
        let v = raw.trim().to_ascii_lowercase();
        let env = match v.as_str() {
            "development" | "dev" => Environment::Development,
            "test" => Environment::Test,
            "staging" | "stage" => Environment::Staging,
            "production" | "prod" => Environment::Production,
            "" => return Err(Error::Config("KEYMETER_ENV is set but empty".into())),
            _ => {
                return Err(Error::Config(format!(
                    "KEYMETER_ENV={:?} is not one of development, dev, test, staging, stage, production, prod",
                    v.chars().take(32).collect::<String>()
                )));
            }
        };
        return found(env, format!("KEYMETER_ENV={v}"));
    }
    let debug = source.var("DEBUG").filter(|v| is_truthy(v));
    if source.is_set("DEPLOY_ENV") {
        let v = source
            .var("DEPLOY_ENV")
            .map(|v| v.trim().to_ascii_lowercase());
        let shown = v.as_deref().map_or_else(
            || "(not UTF-8)".to_owned(),
            |v| v.chars().take(32).collect::<String>(),
        );
        let (environment, reason) = match v.as_deref() {
            Some("local" | "dev" | "development") => {
                (Environment::Development, format!("DEPLOY_ENV={shown}"))
            }
            Some("test" | "ci") => (Environment::Test, format!("DEPLOY_ENV={shown}")),
            Some("staging" | "stage" | "preview") => {
                (Environment::Staging, format!("DEPLOY_ENV={shown}"))
            }
            Some("production" | "prod" | "render") => {
                (Environment::Production, format!("DEPLOY_ENV={shown}"))
            }
            _ => (
                Environment::Production,
                format!("DEPLOY_ENV={shown} (unrecognised, treated as production)"),
            ),
        };
        let mut detected = found(environment, reason)?;
        if let Some(d) = debug
            && matches!(environment, Environment::Staging | Environment::Production)
        {
            detected.warning = Some(format!(
                "DEBUG={} is ignored: DEPLOY_ENV says {environment}",
                d.trim()
            ));
        }
        return Ok(detected);
    }
    if let Some(d) = debug {
        return found(Environment::Development, format!("DEBUG={}", d.trim()));
    }
    Ok(Detected {
        environment: Environment::Development,
        reason: "nothing set (defaulting to development; set KEYMETER_ENV)".into(),
        defaulted: true,
        warning: Some("no environment set: defaulting to development; set KEYMETER_ENV".into()),
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
