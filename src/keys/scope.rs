//! Scopes: `read`, `write`, `admin`, `billing`, `reports` built in, plus any `resource:action`; `*` and
//! `resource:*` are wildcards. A requirement is all-of or any-of a list. No implications beyond wildcards.
//!
//! ```
//! use keymeter::keys::scope::{Scope, ScopeRequirement};
//!
//! let granted: Vec<Scope> = vec!["read".parse().unwrap(), "files:*".parse().unwrap()];
//! let need = ScopeRequirement::all(["read", "files:delete"]).unwrap();
//! assert!(need.is_satisfied_by(&granted));
//! let need = ScopeRequirement::all(["write"]).unwrap();
//! assert!(!need.is_satisfied_by(&granted));
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::{Error, Result};

/// The built-in scopes.
pub const BUILT_IN: [&str; 5] = ["read", "write", "admin", "billing", "reports"];

/// Longest accepted scope.
pub const MAX_SCOPE_LEN: usize = 128;

/// A validated scope: a built-in, `resource:action`, `resource:*` or `*`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Scope(String);

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'.')
        })
}

impl Scope {
    /// Parses a scope.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for anything but a built-in, `*`, `resource:action` or `resource:*`, where
    /// resource and action are `[a-z0-9_.-]+`.
    pub fn new(s: &str) -> Result<Self> {
        let ok = s.len() <= MAX_SCOPE_LEN
            && (s == "*"
                || BUILT_IN.contains(&s)
                || s.split_once(':')
                    .is_some_and(|(r, a)| is_name(r) && (a == "*" || is_name(a))));
        if ok {
            Ok(Scope(s.to_owned()))
        } else {
            Err(Error::invalid(
                "scope",
                format!(
                    "{:?} is not a built-in scope ({}), `*`, `resource:action` or `resource:*`",
                    truncate(s),
                    BUILT_IN.join(", ")
                ),
            ))
        }
    }

    /// The scope's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether holding `self` grants `required`: equal, `*`, or `resource:*` for `resource:…`.
    pub fn grants(&self, required: &Scope) -> bool {
        if self.0 == "*" || self.0 == required.0 {
            return true;
        }
        match self.0.strip_suffix(":*") {
            Some(resource) => required
                .0
                .strip_prefix(resource)
                .is_some_and(|rest| rest.starts_with(':')),
            None => false,
        }
    }

    /// Parses a comma-separated list (`read,files:*`); empty items are ignored.
    ///
    /// # Errors
    /// The first invalid scope's error.
    pub fn parse_list(list: &str) -> Result<Vec<Scope>> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(Scope::new)
            .collect()
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({:?})", self.0)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Scope {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Scope::new(s)
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Scope::new(&s).map_err(serde::de::Error::custom)
    }
}

/// What a request needs: all of a list, or any of a list. An empty list needs nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ScopeRequirement {
    /// No scope needed.
    #[default]
    None,
    /// Every scope of the list.
    All(Vec<Scope>),
    /// At least one scope of the list.
    Any(Vec<Scope>),
}

impl ScopeRequirement {
    /// All of `scopes`.
    ///
    /// # Errors
    /// The first invalid scope's error.
    pub fn all<'a>(scopes: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        Ok(ScopeRequirement::All(
            scopes.into_iter().map(Scope::new).collect::<Result<_>>()?,
        ))
    }

    /// Any of `scopes`.
    ///
    /// # Errors
    /// The first invalid scope's error.
    pub fn any<'a>(scopes: impl IntoIterator<Item = &'a str>) -> Result<Self> {
        Ok(ScopeRequirement::Any(
            scopes.into_iter().map(Scope::new).collect::<Result<_>>()?,
        ))
    }

    /// Whether `granted` satisfies the requirement.
    pub fn is_satisfied_by(&self, granted: &[Scope]) -> bool {
        let has = |need: &Scope| granted.iter().any(|g| g.grants(need));
        match self {
            ScopeRequirement::None => true,
            ScopeRequirement::All(list) => list.iter().all(has),
            ScopeRequirement::Any(list) => list.is_empty() || list.iter().any(has),
        }
    }

    /// What `granted` lacks, to explain a refusal: for [`ScopeRequirement::All`] each scope not granted, for
    /// [`ScopeRequirement::Any`] the whole list when none is granted (any one would do); empty when satisfied.
    ///
    /// ```
    /// use keymeter::keys::{Scope, ScopeRequirement};
    ///
    /// let need = ScopeRequirement::all(["llm:chat", "billing"])?;
    /// let granted = Scope::parse_list("billing,reports")?;
    /// assert_eq!(need.missing(&granted), Scope::parse_list("llm:chat")?);
    /// assert!(need.missing(&Scope::parse_list("*")?).is_empty());
    /// # Ok::<(), keymeter::Error>(())
    /// ```
    pub fn missing(&self, granted: &[Scope]) -> Vec<Scope> {
        if self.is_satisfied_by(granted) {
            return Vec::new();
        }
        let has = |need: &Scope| granted.iter().any(|g| g.grants(need));
        match self {
            ScopeRequirement::None => Vec::new(),
            ScopeRequirement::All(list) => list.iter().filter(|s| !has(s)).cloned().collect(),
            ScopeRequirement::Any(list) => list.clone(),
        }
    }
}
