//! `keymeter`: the admin CLI (feature `cli`). README's "The admin CLI" section is its contract.
//!
//! Exit codes: 0 success, 1 a negative answer (invalid key, unknown id), 2 a usage or configuration error.
//! Secrets (the pepper, tokens) come from the environment or stdin, never from argv. Everything the CLI knows
//! about configuration and secrets comes from [`keymeter::Config`]: it is a thin user of the library.

mod args;
mod budget;
mod creds;
mod keys;
mod limits;
mod price;
mod setup;
mod standing;
mod usage;
mod view;
mod webhooks;

use std::io::{Read, Write};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use keymeter::env::{EnvSource, ProcessEnv};
use keymeter::{Config, Error};
use serde_json::{Value, json};
use zeroize::Zeroizing;

use args::{Cli, Command};

/// How a command ended, beyond success.
pub(crate) enum Failure {
    /// A negative answer: exit 1 with this JSON.
    Negative(Value, String),
    /// A usage or configuration error: exit 2.
    Usage(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound { what, ref id } => Failure::Negative(
                json!({"code": "NOT_FOUND", "what": what, "id": id}),
                e.to_string(),
            ),
            other => Failure::Usage(other.to_string()),
        }
    }
}

/// A command's JSON answer and its human rendering.
pub(crate) type Outcome = Result<(Value, String), Failure>;

/// The process environment, with `--store` (which clap already merged with `KEYMETER_STORE`) as the store URL.
struct CliEnv {
    store: String,
    limiter: Option<String>,
}

impl EnvSource for CliEnv {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "KEYMETER_STORE" => Some(self.store.clone()),
            "KEYMETER_LIMITER" => self.limiter.clone(),
            _ => ProcessEnv.var(name),
        }
    }

    fn is_set(&self, name: &str) -> bool {
        match name {
            "KEYMETER_STORE" => true,
            "KEYMETER_LIMITER" => self.limiter.is_some(),
            _ => ProcessEnv.is_set(name),
        }
    }
}

/// Writes a command's answer: the JSON object with `--json`, else the human text. A closed stdout is an error
/// to handle, never a panic.
pub(crate) fn deliver(json_mode: bool, value: &Value, human: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if json_mode {
        writeln!(out, "{value}")?;
    } else if !human.is_empty() {
        writeln!(out, "{human}")?;
    }
    out.flush()
}

/// The outcome of a command that has written its answer itself (see [`deliver`]).
pub(crate) fn delivered() -> (Value, String) {
    (Value::Null, String::new())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let command = command_words(&matches);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let json_mode = cli.json;
    let print = |value: &Value, human: &str| {
        if value.is_null() && human.is_empty() {
            return Ok(());
        }
        deliver(json_mode, value, human)
    };
    let (printed, code) = match run(cli).await {
        Ok((value, human)) => (print(&value, &human), ExitCode::SUCCESS),
        Err(Failure::Negative(value, human)) => (print(&value, &human), ExitCode::from(1)),
        Err(Failure::Usage(mut message)) => {
            // Every usage error says what to do: where the message does not name a command, point at the
            // examples of the one that failed.
            if !message.contains("keymeter ") && !command.is_empty() {
                message.push_str(&format!(" (examples: keymeter {command} --help)"));
            }
            if json_mode {
                let _ = deliver(true, &json!({"code": "ERROR", "error": message}), "");
            }
            let _ = writeln!(std::io::stderr(), "keymeter: {message}");
            return ExitCode::from(2);
        }
    };
    match printed {
        Ok(()) => code,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "keymeter: cannot write to stdout: {e}");
            ExitCode::from(2)
        }
    }
}

/// The command's words (`keys create`), for pointing at its `--help`.
fn command_words(matches: &clap::ArgMatches) -> String {
    let mut words = Vec::new();
    let mut level = matches;
    while let Some((name, sub)) = level.subcommand() {
        words.push(name);
        level = sub;
    }
    words.join(" ")
}

async fn run(cli: Cli) -> Outcome {
    let json = cli.json;
    let source = CliEnv {
        store: cli.store,
        limiter: cli.limiter,
    };
    // Commands that need no configuration run before it is read.
    match cli.command {
        Command::Env => return setup::env(&source),
        Command::Vault(cmd) => return setup::vault(cmd, json),
        _ => {}
    }
    let config = Config::from_source(&source)?;
    if !matches!(cli.command, Command::Price(_)) {
        for warning in config.warnings() {
            let _ = writeln!(std::io::stderr(), "keymeter: warning: {warning}");
        }
    }
    match cli.command {
        Command::Init => setup::init(config, &source).await,
        Command::Keys(cmd) => keys::run(&config, cmd, json).await,
        Command::Price(cmd) => price::run(&config, cmd).await,
        Command::Creds(cmd) => creds::run(&config, cmd).await,
        Command::Usage(cmd) => usage::run(&config, cmd).await,
        Command::Budget(cmd) => budget::run(&config, cmd).await,
        Command::Limits(cmd) => limits::run(&config, cmd).await,
        Command::Webhooks(cmd) => webhooks::run(&config, cmd).await,
        Command::Env | Command::Vault(_) => unreachable!("handled above"),
    }
}

/// The most a secret read from stdin may be (a token, a provider key, a hint).
pub(crate) const MAX_SECRET_INPUT: u64 = 64 * 1024;

/// Reads at most `limit` bytes from `input`; more is an error, so `/dev/zero` or a runaway pipe cannot hang
/// the command or fill its memory.
pub(crate) fn read_bounded(
    mut input: impl Read,
    limit: u64,
    what: &str,
) -> Result<Zeroizing<Vec<u8>>, Failure> {
    let mut buf = Zeroizing::new(Vec::new());
    (&mut input)
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Failure::Usage(format!("cannot read {what}: {e}")))?;
    if buf.len() as u64 > limit {
        return Err(Failure::Usage(format!(
            "{what} is larger than {limit} bytes: pass a smaller input"
        )));
    }
    Ok(buf)
}

/// Secret bytes from stdin, bounded, with surrounding white space trimmed.
pub(crate) fn read_stdin_secret_bytes() -> Result<Zeroizing<Vec<u8>>, Failure> {
    let raw = read_bounded(std::io::stdin().lock(), MAX_SECRET_INPUT, "stdin")?;
    Ok(Zeroizing::new(raw.trim_ascii().to_vec()))
}

/// A secret (a token, a provider key) from stdin, trimmed; it must be UTF-8.
pub(crate) fn read_stdin_secret() -> Result<Zeroizing<String>, Failure> {
    let bytes = read_stdin_secret_bytes()?;
    match std::str::from_utf8(&bytes) {
        Ok(text) => Ok(Zeroizing::new(text.to_owned())),
        Err(_) => Err(Failure::Usage("stdin is not UTF-8 text".into())),
    }
}

/// A value as JSON (the types here always serialise).
pub(crate) fn to_json(value: impl serde::Serialize) -> Result<Value, Failure> {
    serde_json::to_value(value).map_err(|e| Failure::Usage(e.to_string()))
}

/// An instant from RFC 3339, or a date taken as its local midnight in `tz`.
pub(crate) fn parse_instant(
    s: &str,
    tz: chrono_tz::Tz,
) -> Result<chrono::DateTime<chrono::Utc>, Failure> {
    Ok(keymeter::validate::instant("time", s, tz)?)
}

/// An IANA time zone from a `--tz` flag.
pub(crate) fn parse_tz(name: &str) -> Result<chrono_tz::Tz, Failure> {
    name.parse().map_err(|_| {
        Failure::Usage(format!(
            "invalid --tz {name:?}: use an IANA time zone name such as Europe/Berlin or UTC"
        ))
    })
}
