//! `.env` files as a development source and sink of system keys (feature `env-file`).
//!
//! Reads with `dotenvy`; writes atomically (temporary file, fsync, rename, mode 0600) and keeps every other byte
//! of the file (comments, order, unrelated variables) as it was. Values with a newline or NUL are refused, so no
//! write can inject a variable. Writing is refused outside development; reading is left to the
//! [`CredentialResolver`](crate::credentials::CredentialResolver), which uses this tier only in development.
//!
//! Variables: `ANTHROPIC_API_KEY`, `OPENAI_API_KEY`, `GOOGLE_API_KEY` (or `GEMINI_API_KEY`), and
//! `<NAME>_API_KEY` for a custom provider.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use secrecy::SecretString;
use zeroize::Zeroizing;

use crate::credentials::{Provider, SystemKeySource};
use crate::env::Environment;
use crate::error::{Error, Result};

/// Parses `.env` text into its variables (the last assignment of a name wins). Errors name the line number,
/// never its content (it may hold a key).
///
/// # Errors
/// [`Error::Config`] when dotenvy cannot parse the text.
pub fn parse(text: &str) -> Result<HashMap<String, Zeroizing<String>>> {
    let mut vars = HashMap::new();
    for item in dotenvy::from_read_iter(text.as_bytes()) {
        match item {
            Ok((k, v)) => {
                vars.insert(k, Zeroizing::new(v));
            }
            Err(dotenvy::Error::LineParse(_, index)) => {
                return Err(Error::Config(format!(
                    ".env file: cannot parse near byte {index}"
                )));
            }
            Err(_) => return Err(Error::Config(".env file: cannot parse".into())),
        }
    }
    Ok(vars)
}

/// One assignment's span of lines in a `.env` text, and its name.
struct Entry {
    name: String,
    start: usize,
    end: usize,
}

/// Finds assignments. Quotes may open anywhere in a value (shell style, as dotenvy reads them) and run over
/// several lines; the assignment ends at the first newline outside quotes.
fn entries(text: &str) -> Vec<Entry> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    while start < bytes.len() {
        let line_end = bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |i| start + i + 1);
        let line = &text[start..line_end];
        let body = line.trim_start();
        let body = body
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(body);
        let name_len = body
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'.')
            .count();
        let rest = body[name_len..].trim_start_matches([' ', '\t']);
        if name_len == 0 || !rest.starts_with('=') {
            start = line_end;
            continue;
        }
        let name = body[..name_len].to_owned();
        let value_at = line_end - rest.len() + 1;
        let end = value_end(bytes, value_at);
        out.push(Entry { name, start, end });
        start = end;
    }
    out
}

/// Where a value starting at `at` ends: just past the first newline outside quotes (or the end of the text).
fn value_end(bytes: &[u8], at: usize) -> usize {
    #[derive(PartialEq)]
    enum State {
        Bare,
        Single,
        Double,
    }
    let mut state = State::Bare;
    let mut i = at;
    let mut prev_space = false;
    while i < bytes.len() {
        let b = bytes[i];
        match state {
            State::Bare => match b {
                b'\n' => return i + 1,
                b'\\' => i += 1,
                b'\'' => state = State::Single,
                b'"' => state = State::Double,
                b'#' if prev_space => {
                    return bytes[i..]
                        .iter()
                        .position(|&c| c == b'\n')
                        .map_or(bytes.len(), |j| i + j + 1);
                }
                _ => {}
            },
            // dotenvy reads `\'` inside single quotes as an escaped quote.
            State::Single => match b {
                b'\\' => i += 1,
                b'\'' => state = State::Bare,
                _ => {}
            },
            State::Double => match b {
                b'\\' => i += 1,
                b'"' => state = State::Bare,
                _ => {}
            },
        }
        prev_space = b == b' ' || b == b'\t';
        i += 1;
    }
    bytes.len()
}

fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && !name.as_bytes()[0].is_ascii_digit()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The value as written, so that dotenvy reads it back exactly and a shell's `source .env` runs nothing: bare
/// when it is plain, else single-quoted (literal in both) when it has no quote or backslash, else double-quoted
/// with `\`, `"` and `$` escaped. A backtick cannot be escaped in a way both read the same, so a value that
/// needs double quotes and holds one is refused.
fn quote(value: &str) -> Result<String> {
    let plain = !value.is_empty()
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=@,%~^".contains(&b));
    if plain {
        Ok(value.to_owned())
    } else if !value.contains(['\'', '\\']) {
        Ok(format!("'{value}'"))
    } else if value.contains('`') {
        Err(Error::invalid(
            "value",
            "a value with a quote or backslash and a backtick cannot be written to a .env file safely",
        ))
    } else {
        let mut out = String::with_capacity(value.len() + 2);
        out.push('"');
        for c in value.chars() {
            if matches!(c, '\\' | '"' | '$') {
                out.push('\\');
            }
            out.push(c);
        }
        out.push('"');
        Ok(out)
    }
}

/// Returns `text` with `name` set to `value`: the last assignment of `name` is rewritten in place, or a line is
/// appended. Every other byte is kept. The result is checked with dotenvy before it is returned: it must parse
/// to the same variables as `text`, with `name` changed, or nothing is written.
///
/// ```
/// use keymeter::store::env_file::set_var;
/// let text = "# keys\nOPENAI_API_KEY=old # mine\nOTHER=1\n";
/// assert_eq!(set_var(text, "OPENAI_API_KEY", "sk-new").unwrap(), "# keys\nOPENAI_API_KEY=sk-new\nOTHER=1\n");
/// assert_eq!(set_var("A=1", "B", "two words").unwrap(), "A=1\nB='two words'\n");
/// assert!(set_var("", "B", "x\nEVIL=1").is_err());
/// ```
///
/// # Errors
/// [`Error::InvalidInput`] for an invalid name, or a value with a newline, carriage return or NUL;
/// [`Error::Config`] when `text` does not parse, or is laid out in a way this editor cannot change safely.
pub fn set_var(text: &str, name: &str, value: &str) -> Result<String> {
    if !is_valid_name(name) {
        return Err(Error::invalid(
            "variable name",
            "use [A-Za-z_][A-Za-z0-9_]*",
        ));
    }
    if value.contains(['\n', '\r', '\0']) {
        return Err(Error::invalid(
            "value",
            "a .env value may not contain a newline or NUL",
        ));
    }
    let before = parse(text)?;
    let line = format!("{name}={}", quote(value)?);
    let found = entries(text).into_iter().rfind(|e| e.name == name);
    let updated = match found {
        Some(e) => {
            let ending = if text[..e.end].ends_with("\r\n") {
                "\r\n"
            } else if text[..e.end].ends_with('\n') {
                "\n"
            } else {
                ""
            };
            format!("{}{line}{ending}{}", &text[..e.start], &text[e.end..])
        }
        None => {
            let sep = if text.is_empty() || text.ends_with('\n') {
                ""
            } else {
                "\n"
            };
            format!("{text}{sep}{line}\n")
        }
    };
    let mut expected = before;
    expected.insert(name.to_owned(), Zeroizing::new(value.to_owned()));
    check_edit(&updated, &expected)?;
    Ok(updated)
}

/// Returns `text` without any assignment of `name`, and whether there was one; checked like [`set_var`].
///
/// # Errors
/// [`Error::Config`] when `text` does not parse or cannot be changed safely.
pub fn remove_var(text: &str, name: &str) -> Result<(String, bool)> {
    let mut expected = parse(text)?;
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut removed = false;
    for e in entries(text).into_iter().filter(|e| e.name == name) {
        out.push_str(&text[at..e.start]);
        at = e.end;
        removed = true;
    }
    out.push_str(&text[at..]);
    expected.remove(name);
    check_edit(&out, &expected)?;
    Ok((out, removed))
}

/// A line-preserving edit must not change how any other variable reads; if it would, refuse.
fn check_edit(updated: &str, expected: &HashMap<String, Zeroizing<String>>) -> Result<()> {
    let unsafe_edit =
        || Error::Config(".env file: this layout cannot be edited safely; edit it by hand".into());
    let after = parse(updated).map_err(|_| unsafe_edit())?;
    let same = after.len() == expected.len()
        && expected
            .iter()
            .all(|(k, v)| after.get(k).is_some_and(|a| a.as_str() == v.as_str()));
    if same { Ok(()) } else { Err(unsafe_edit()) }
}

/// A `.env` file holding system keys for development.
#[derive(Debug, Clone)]
pub struct EnvFile {
    path: PathBuf,
    environment: Environment,
}

impl EnvFile {
    /// The file at `path`, used in `environment` (writes are refused outside development).
    pub fn new(path: impl Into<PathBuf>, environment: Environment) -> Self {
        EnvFile {
            path: path.into(),
            environment,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_text(&self) -> Result<Zeroizing<String>> {
        match std::fs::read_to_string(&self.path) {
            Ok(t) => Ok(Zeroizing::new(t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Zeroizing::new(String::new())),
            Err(e) => Err(Error::Config(format!(
                "cannot read {}: {e}",
                self.path.display()
            ))),
        }
    }

    /// The key for `provider`, from the first of its variables that is set and not empty.
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be read or parsed.
    pub fn read_key(&self, provider: &Provider) -> Result<Option<SecretString>> {
        let vars = parse(&self.read_text()?)?;
        Ok(provider
            .env_vars()
            .iter()
            .find_map(|v| vars.get(v).filter(|s| !s.trim().is_empty()))
            .map(|s| SecretString::from(s.trim())))
    }

    /// Writes the key for `provider` (its first variable), checking its shape first.
    ///
    /// # Errors
    /// [`Error::Config`] outside development or on I/O failure; [`Error::InvalidCredential`] for a bad key.
    pub fn write_key(&self, provider: &Provider, key: &str) -> Result<()> {
        self.refuse_outside_development()?;
        provider.check_key(key)?;
        let text = self.read_text()?;
        let var = provider.env_vars().swap_remove(0);
        let updated = Zeroizing::new(set_var(&text, &var, key)?);
        self.write_atomically(&updated)
    }

    /// Removes every variable of `provider`; returns whether there was one.
    ///
    /// # Errors
    /// [`Error::Config`] outside development or on I/O failure.
    pub fn remove_key(&self, provider: &Provider) -> Result<bool> {
        self.refuse_outside_development()?;
        let mut text = self.read_text()?;
        let mut any = false;
        for var in provider.env_vars() {
            let (rest, removed) = remove_var(&text, &var)?;
            text = Zeroizing::new(rest);
            any |= removed;
        }
        if any {
            self.write_atomically(&text)?;
        }
        Ok(any)
    }

    fn refuse_outside_development(&self) -> Result<()> {
        if self.environment.is_development() {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "refusing to write keys to a .env file in {}: use the encrypted store",
                self.environment
            )))
        }
    }

    fn write_atomically(&self, text: &str) -> Result<()> {
        crate::file::write_atomic(&self.path, text.as_bytes())
            .map_err(|e| Error::Config(format!("cannot write {}: {e}", self.path.display())))
    }
}

#[async_trait]
impl SystemKeySource for EnvFile {
    async fn system_key(&self, provider: &Provider) -> Result<Option<SecretString>> {
        self.read_key(provider)
    }
}
