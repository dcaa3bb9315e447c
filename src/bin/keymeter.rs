//! `keymeter`: the admin CLI (feature `cli`). See DESIGN §9 and the README for the contract.
//!
//! Exit codes: 0 success, 1 a negative answer (invalid key, unknown id), 2 a usage or configuration error.
//! Secrets (the pepper, tokens) come from the environment or stdin, never from argv.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use chrono::{Duration, Utc};
use clap::{Args, Parser, Subcommand};
use keymeter::Error;
use keymeter::credentials::{
    CredentialResolver, CredentialScope, CredentialStore, MasterKey, MasterKeyRing, Provider,
    Vault, rewrap, set_key,
};
use keymeter::env::{Detected, ProcessEnv, detect};
use keymeter::keys::record::parse_networks;
use keymeter::keys::token::{self, KeyEnv};
use keymeter::keys::{
    KeyFilter, KeyHasher, KeyIssuer, KeyRecord, KeyStore, NewKey, Pepper, PepperRing, RateLimit,
    Requirement, Scope, ScopeRequirement, Verifier, VerifierConfig,
};
use keymeter::ledger::{
    Budget, BudgetPeriod, BudgetScope, EventFilter, GroupBy, Ledger, UsageEvent, parse_amount,
    parse_tz,
};
use keymeter::pricing::normalize::normalize;
use keymeter::pricing::{PriceCatalog, ServiceTier, Usage, UsageFormat};
use keymeter::random::OsRandom;
use keymeter::secret::mask;
use keymeter::store::EnvFile;
use keymeter::store::SqliteStore;
use secrecy::ExposeSecret;
use secrecy::SecretString;
use serde_json::{Value, json};
use zeroize::Zeroizing;

#[derive(Parser)]
#[command(
    name = "keymeter",
    version,
    about = "Admin CLI for keymeter: API keys, credentials, prices, budgets"
)]
struct Cli {
    /// Store URL.
    #[arg(
        long,
        env = "KEYMETER_STORE",
        default_value = "sqlite://keymeter.db",
        global = true
    )]
    store: String,
    /// Print one JSON object on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Create the store; in development, write missing secrets to `keymeter.secrets` beside the database.
    Init,
    /// Print the detected environment and the rule that decided it.
    Env,
    /// Inbound API keys.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Model prices and costs.
    #[command(subcommand)]
    Price(PriceCommand),
    /// The master keys that encrypt provider credentials.
    #[command(subcommand)]
    Vault(VaultCommand),
    /// Provider credentials (bring your own key).
    #[command(subcommand)]
    Creds(CredsCommand),
    /// Recorded usage and spend reports.
    #[command(subcommand)]
    Usage(UsageCommand),
    /// Spend limits.
    #[command(subcommand)]
    Budget(BudgetCommand),
}

#[derive(Subcommand)]
enum UsageCommand {
    /// Price a usage and record it once (the same --request-id twice records once).
    Record {
        #[arg(long)]
        owner: String,
        #[arg(long)]
        key_id: Option<String>,
        #[arg(long)]
        org: Option<String>,
        #[arg(long)]
        model: String,
        /// The idempotency key; a fresh one when omitted.
        #[arg(long)]
        request_id: Option<String>,
        #[command(flatten)]
        pricing: PricingArgs,
        #[command(flatten)]
        usage: UsageArgs,
    },
    /// Spend and tokens grouped by owner, key, org, model, day or month.
    Report {
        #[arg(long)]
        by: String,
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        org: Option<String>,
        /// From (RFC 3339, or YYYY-MM-DD in the report's time zone), inclusive.
        #[arg(long)]
        since: Option<String>,
        /// Until (RFC 3339, or YYYY-MM-DD in the report's time zone), exclusive.
        #[arg(long)]
        until: Option<String>,
        /// IANA time zone for days and months (default UTC).
        #[arg(long, default_value = "UTC")]
        tz: String,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct BudgetScopeArgs {
    #[arg(long)]
    owner: Option<String>,
    #[arg(long)]
    key: Option<String>,
    #[arg(long)]
    org: Option<String>,
}

impl BudgetScopeArgs {
    fn scope(&self) -> BudgetScope {
        match (&self.owner, &self.key, &self.org) {
            (Some(o), _, _) => BudgetScope::Owner(o.clone()),
            (_, Some(k), _) => BudgetScope::Key(k.clone()),
            (_, _, Some(o)) => BudgetScope::Org(o.clone()),
            // clap's group makes exactly one present.
            _ => BudgetScope::Owner(String::new()),
        }
    }
}

#[derive(Subcommand)]
enum BudgetCommand {
    /// Set (or replace) the budget of an owner, a key or an org.
    Set {
        #[command(flatten)]
        scope: BudgetScopeArgs,
        #[arg(long)]
        limit: String,
        /// daily, weekly, monthly or total.
        #[arg(long)]
        period: String,
        /// Soft limit for alerts.
        #[arg(long)]
        soft: Option<String>,
        /// IANA time zone of the period's calendar (default UTC).
        #[arg(long, default_value = "UTC")]
        tz: String,
    },
    /// Where a budget stands now.
    Status {
        #[command(flatten)]
        scope: BudgetScopeArgs,
    },
}

#[derive(Subcommand)]
enum VaultCommand {
    /// Print a new master key entry for KEYMETER_MASTER_KEYS (put it first to make it active).
    Keygen {
        /// The key's id (default k<date>).
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Args)]
struct EnvFileArg {
    /// A .env file of system keys (development only; default ./.env when it exists).
    #[arg(long)]
    env_file: Option<PathBuf>,
}

#[derive(Subcommand)]
enum CredsCommand {
    /// Store a key read from stdin, for a user or as the system key.
    Set {
        #[arg(long, required_unless_present = "system", conflicts_with = "system")]
        owner: Option<String>,
        #[arg(long)]
        system: bool,
        #[arg(long)]
        provider: String,
        #[command(flatten)]
        env_file: EnvFileArg,
    },
    /// Which providers an owner has a personal and a system key for.
    Status {
        #[arg(long)]
        owner: String,
        #[command(flatten)]
        env_file: EnvFileArg,
    },
    /// Which key an owner's request would use (masked).
    Resolve {
        #[arg(long)]
        owner: String,
        #[arg(long)]
        provider: String,
        #[command(flatten)]
        env_file: EnvFileArg,
    },
    /// Delete an owner's key for one provider, or all of them.
    Delete {
        #[arg(long)]
        owner: String,
        #[arg(long)]
        provider: Option<String>,
    },
    /// Re-encrypt every stored credential under the active master key.
    Rewrap,
}

#[derive(Subcommand)]
enum PriceCommand {
    /// The exact cost of a usage.
    Cost {
        #[arg(long)]
        model: String,
        #[command(flatten)]
        pricing: PricingArgs,
        #[command(flatten)]
        usage: UsageArgs,
    },
    /// List the catalog's models.
    List {
        #[arg(long)]
        provider: Option<String>,
        /// A catalog file (keymeter's format or LiteLLM's); default: the bundled snapshot.
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
    /// Show one model's prices.
    Show {
        model: String,
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
}

#[derive(Args)]
struct PricingArgs {
    /// A catalog file (keymeter's format or LiteLLM's); default: the bundled snapshot.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Price at this time (RFC 3339); default: now.
    #[arg(long)]
    at: Option<String>,
    /// standard, batch, flex or priority.
    #[arg(long, default_value = "standard")]
    tier: String,
}

/// Token counts, canonical (disjoint) classes, or a provider usage object.
#[derive(Args)]
struct UsageArgs {
    /// Uncached input tokens.
    #[arg(long, default_value_t = 0)]
    input: u64,
    /// Output tokens (without reasoning).
    #[arg(long, default_value_t = 0)]
    output: u64,
    #[arg(long, default_value_t = 0)]
    cache_read: u64,
    /// 5-minute cache writes.
    #[arg(long, default_value_t = 0)]
    cache_write: u64,
    #[arg(long = "cache-write-1h", default_value_t = 0)]
    cache_write_1h: u64,
    #[arg(long, default_value_t = 0)]
    reasoning: u64,
    /// A provider usage (or response) JSON file, `-` for stdin; replaces the token flags.
    #[arg(long, conflicts_with_all = ["input", "output", "cache_read", "cache_write", "cache_write_1h", "reasoning"])]
    usage: Option<String>,
    /// openai, anthropic or gemini.
    #[arg(long, requires = "usage")]
    usage_format: Option<String>,
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum KeysCommand {
    /// Issue a new key; the plaintext is printed this once.
    Create(CreateArgs),
    /// List keys.
    List {
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        org: Option<String>,
    },
    /// Show one key.
    Show { id: String },
    /// Verify a token read from stdin.
    Verify {
        /// Required scope (repeatable); all are required unless --any-scope.
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// Any one of the --scope values suffices.
        #[arg(long)]
        any_scope: bool,
        /// The client address, checked against the key's networks.
        #[arg(long)]
        ip: Option<String>,
        /// Accept only this environment tag.
        #[arg(long)]
        env: Option<String>,
    },
    /// Revoke a key (final).
    Revoke { id: String },
    /// Revoke every key of an organisation.
    RevokeAll {
        #[arg(long)]
        org: String,
    },
    /// Disable a key until enabled.
    Disable { id: String },
    /// Enable a disabled key.
    Enable { id: String },
    /// Import a key made elsewhere from its hash.
    Import(ImportArgs),
}

#[derive(Args)]
struct CreateArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    owner: String,
    #[arg(long)]
    org: Option<String>,
    /// Comma-separated scopes.
    #[arg(long, default_value = "")]
    scopes: String,
    /// live or test.
    #[arg(long, default_value = "live")]
    env: String,
    /// Lifetime such as 30d, 12h, 90m, 2w.
    #[arg(long)]
    expires_in: Option<String>,
    /// Allowed client network (repeatable).
    #[arg(long = "allow-ip")]
    allow_ip: Vec<String>,
    /// Such as 100/min.
    #[arg(long)]
    rate_limit: Option<String>,
    #[arg(long, default_value = token::DEFAULT_PREFIX)]
    prefix: String,
}

#[derive(Args)]
struct ImportArgs {
    #[arg(long)]
    name: String,
    #[arg(long)]
    owner: String,
    #[arg(long)]
    org: Option<String>,
    /// The hash string ($sha256$…, $argon2id$…, $2b$…, $hmac-sha256$…).
    #[arg(long)]
    hash: String,
    /// The key's first 8 characters (needed for every scheme but sha256).
    #[arg(long)]
    hint: Option<String>,
    #[arg(long, default_value = "")]
    scopes: String,
    #[arg(long, default_value = "live")]
    env: String,
}

/// How a command ended, beyond success.
enum Failure {
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

type Outcome = Result<(Value, String), Failure>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json_mode = cli.json;
    let print = |value: &Value, human: &str| {
        if json_mode {
            println!("{value}");
        } else if !human.is_empty() {
            println!("{human}");
        }
    };
    match run(cli).await {
        Ok((value, human)) => {
            print(&value, &human);
            ExitCode::SUCCESS
        }
        Err(Failure::Negative(value, human)) => {
            print(&value, &human);
            ExitCode::from(1)
        }
        Err(Failure::Usage(message)) => {
            if json_mode {
                println!("{}", json!({"code": "ERROR", "error": message}));
            }
            eprintln!("keymeter: {message}");
            ExitCode::from(2)
        }
    }
}

fn environment() -> Result<Detected, Failure> {
    let detected = detect(&ProcessEnv)?;
    if detected.defaulted {
        eprintln!("keymeter: warning: {}", detected.reason);
    }
    Ok(detected)
}

async fn run(cli: Cli) -> Outcome {
    match cli.command {
        Command::Env => {
            let d = detect(&ProcessEnv)?;
            Ok((
                json!({"environment": d.environment, "reason": d.reason}),
                format!("{} ({})", d.environment, d.reason),
            ))
        }
        Command::Init => init(&cli.store).await,
        Command::Keys(cmd) => keys(&cli.store, cmd).await,
        Command::Price(cmd) => price(cmd),
        Command::Vault(VaultCommand::Keygen { id }) => {
            let id = id.unwrap_or_else(|| format!("k{}", Utc::now().format("%Y%m%d")));
            let key = MasterKey::generate(&id, &OsRandom)?;
            let entry = key.to_env_entry();
            Ok((
                json!({"id": id, "key": entry.expose_secret()}),
                format!(
                    "{}\n\nPut it first in KEYMETER_MASTER_KEYS (comma-separated) to make it active, keep the old keys\n\
                     after it, then run `keymeter creds rewrap`.",
                    entry.expose_secret()
                ),
            ))
        }
        Command::Creds(cmd) => creds(&cli.store, cmd).await,
        Command::Usage(cmd) => usage(&cli.store, cmd).await,
        Command::Budget(cmd) => budget(&cli.store, cmd).await,
    }
}

/// The `.env` tier for this invocation: the file named, else `./.env` if it exists. Naming one outside
/// development is an error; the default is silently unused there.
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

async fn creds(store_url: &str, cmd: CredsCommand) -> Outcome {
    let env = environment()?;
    let store = open(store_url).await?;
    let dyn_store: Arc<dyn CredentialStore> = store.clone();
    let resolver = |vault: Arc<Vault>, file: Option<EnvFile>| {
        let r = CredentialResolver::new(dyn_store.clone(), vault, env.environment);
        match file {
            Some(f) => r.with_env_file(Arc::new(f)),
            None => r,
        }
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
                let file = env_file_tier(&env_file, &env)?
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
            let vault = load_vault(store_url, &env)?;
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
            let file = env_file_tier(&env_file, &env)?;
            let status = resolver(load_vault(store_url, &env)?, file)
                .status(&owner)
                .await?;
            let human = status
                .iter()
                .map(|(p, s)| format!("{p:<12} user: {:<5} system: {}", s.user, s.system))
                .collect::<Vec<_>>()
                .join("\n");
            Ok((json!({"owner": owner, "providers": status}), human))
        }
        CredsCommand::Resolve {
            owner,
            provider,
            env_file,
        } => {
            let provider = Provider::new(&provider)?;
            let file = env_file_tier(&env_file, &env)?;
            let resolved = resolver(load_vault(store_url, &env)?, file)
                .resolve(&owner, &provider)
                .await
                .map_err(credential_failure)?;
            let masked = resolved.masked();
            Ok((
                json!({"provider": provider, "source": resolved.source, "masked": masked}),
                format!("{provider}: {} key {masked}", resolved.source.as_str()),
            ))
        }
        CredsCommand::Delete { owner, provider } => {
            let scope = CredentialScope::user(&owner)?;
            let deleted = match provider {
                Some(p) => u64::from(store.delete(&scope, &Provider::new(&p)?).await?),
                None => store.delete_all(&scope).await?,
            };
            Ok((
                json!({"owner": owner, "deleted": deleted}),
                format!("deleted {deleted} key(s) of {owner}"),
            ))
        }
        CredsCommand::Rewrap => {
            let vault = load_vault(store_url, &env)?;
            let report = rewrap(&*store, &vault).await?;
            let human = format!(
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
            Ok((
                serde_json::to_value(report).map_err(|e| Failure::Usage(e.to_string()))?,
                human,
            ))
        }
    }
}

fn load_catalog(path: Option<&Path>) -> Result<PriceCatalog, Failure> {
    match path {
        None => Ok(PriceCatalog::bundled()),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
            Ok(PriceCatalog::from_any_json(&text)?)
        }
    }
}

impl UsageArgs {
    fn usage(&self) -> Result<Usage, Failure> {
        let Some(source) = &self.usage else {
            return Ok(Usage {
                input: self.input,
                output: self.output,
                cache_read: self.cache_read,
                cache_write_5m: self.cache_write,
                cache_write_1h: self.cache_write_1h,
                reasoning: self.reasoning,
                ..Usage::default()
            });
        };
        let format = UsageFormat::parse(self.usage_format.as_deref().ok_or_else(|| {
            Failure::Usage("--usage needs --usage-format openai|anthropic|gemini".into())
        })?)?;
        let text = if source == "-" {
            let mut buf = String::new();
            std::io::stdin()
                .read_to_string(&mut buf)
                .map_err(|e| Failure::Usage(format!("cannot read stdin: {e}")))?;
            buf
        } else {
            std::fs::read_to_string(source)
                .map_err(|e| Failure::Usage(format!("cannot read {source}: {e}")))?
        };
        Ok(normalize(format, &text)?)
    }
}

fn parse_time(at: Option<&str>) -> Result<chrono::DateTime<Utc>, Failure> {
    match at {
        None => Ok(Utc::now()),
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|_| {
                Failure::Usage(format!(
                    "invalid time {s:?}: use RFC 3339 (2026-03-01T12:00:00Z)"
                ))
            }),
    }
}

/// Pricing answers that are negative (exit 1) rather than usage errors.
fn pricing_failure(e: Error) -> Failure {
    match e {
        Error::UnknownModel { ref model } => Failure::Negative(
            json!({"code": "UNKNOWN_MODEL", "model": model}),
            e.to_string(),
        ),
        Error::UnpricedClass { ref model, class } => Failure::Negative(
            json!({"code": "UNPRICED_CLASS", "model": model, "class": class}),
            e.to_string(),
        ),
        Error::NoPrice { ref model, at } => Failure::Negative(
            json!({"code": "NO_PRICE", "model": model, "at": at}),
            e.to_string(),
        ),
        other => other.into(),
    }
}

/// Prices `usage` of `model` as `price cost` and `usage record` both do; returns the cost, the canonical usage
/// and the time priced at.
fn price_request(
    model: &str,
    pricing: &PricingArgs,
    usage: &UsageArgs,
) -> Result<(keymeter::pricing::Cost, Usage, chrono::DateTime<Utc>), Failure> {
    let catalog = load_catalog(pricing.catalog.as_deref())?;
    let usage = usage.usage()?;
    let at = parse_time(pricing.at.as_deref())?;
    let tier = ServiceTier::parse(&pricing.tier)?;
    let cost = catalog
        .cost(model, &usage, at, tier)
        .map_err(pricing_failure)?;
    Ok((cost, usage, at))
}

fn price(cmd: PriceCommand) -> Outcome {
    match cmd {
        PriceCommand::Cost {
            model,
            pricing,
            usage,
        } => {
            let (cost, _, _) = price_request(&model, &pricing, &usage)?;
            let mut human = String::new();
            for l in cost.lines() {
                human.push_str(&format!(
                    "{:<15} {:>10} × {:<14} = {}\n",
                    l.kind.as_str(),
                    l.tokens,
                    l.rate,
                    l.cost.normalize()
                ));
            }
            human.push_str(&format!(
                "total {} {} ({} via {})",
                cost.total, cost.currency, cost.model, cost.provider
            ));
            Ok((
                serde_json::to_value(&cost).map_err(|e| Failure::Usage(e.to_string()))?,
                human,
            ))
        }
        PriceCommand::List { provider, catalog } => {
            let catalog = load_catalog(catalog.as_deref())?;
            let models: Vec<_> = catalog
                .models()
                .iter()
                .filter(|m| provider.as_deref().is_none_or(|p| &*m.provider == p))
                .collect();
            let human = models
                .iter()
                .map(|m| {
                    format!(
                        "{:<48} {:<12} {}",
                        m.id,
                        m.provider,
                        m.mode.as_deref().unwrap_or("")
                    )
                })
                .collect::<Vec<_>>()
                .join("\n");
            let list: Vec<Value> = models
                .iter()
                .map(|m| json!({"id": &*m.id, "provider": &*m.provider, "mode": m.mode, "aliases": m.aliases}))
                .collect();
            Ok((
                json!({"models": list, "snapshot_date": catalog.snapshot_date, "source": catalog.source}),
                human,
            ))
        }
        PriceCommand::Show { model, catalog } => {
            let catalog = load_catalog(catalog.as_deref())?;
            let found = catalog.model(&model).ok_or_else(|| {
                pricing_failure(Error::UnknownModel {
                    model: model.clone(),
                })
            })?;
            let value = serde_json::to_value(found).map_err(|e| Failure::Usage(e.to_string()))?;
            let human = serde_json::to_string_pretty(&value).unwrap_or_default();
            Ok((value, human))
        }
    }
}

/// The file beside a SQLite database where development secrets live.
fn secrets_path(store_url: &str) -> Option<PathBuf> {
    let path = store_url
        .strip_prefix("sqlite://")
        .or_else(|| store_url.strip_prefix("sqlite:"))?;
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path.contains(":memory:") {
        return None;
    }
    let dir = Path::new(path).parent().unwrap_or(Path::new(""));
    Some(dir.join("keymeter.secrets"))
}

fn read_secrets_file(path: &Path) -> Result<Vec<(String, Zeroizing<String>)>, Failure> {
    let text = Zeroizing::new(
        std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?,
    );
    Ok(text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), Zeroizing::new(v.trim().to_owned())))
        .collect())
}

/// Writes the secrets file atomically with mode 0600 (created that way, never widened afterwards).
fn write_secrets_file(path: &Path, entries: &[(String, Zeroizing<String>)]) -> Result<(), Failure> {
    use std::io::Write;
    let mut text = Zeroizing::new(String::from(
        "# keymeter development secrets: never commit this file, never use it in production.\n",
    ));
    for (k, v) in entries {
        text.push_str(k);
        text.push('=');
        text.push_str(v);
        text.push('\n');
    }
    let tmp = path.with_extension("secrets.tmp");
    let fail = |e: std::io::Error| Failure::Usage(format!("cannot write {}: {e}", path.display()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&tmp).map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)?;
    Ok(())
}

/// A secret from the environment, else (development only) from the secrets file beside the database.
fn load_secret(name: &str, store_url: &str, env: &Detected) -> Result<Zeroizing<String>, Failure> {
    if let Ok(value) = std::env::var(name) {
        return Ok(Zeroizing::new(value));
    }
    if !env.environment.is_development() {
        return Err(Failure::Usage(format!(
            "{name} is not set; it is required in {}",
            env.environment
        )));
    }
    let path = secrets_path(store_url)
        .filter(|p| p.exists())
        .ok_or_else(|| {
            Failure::Usage(format!(
                "{name} is not set: run `keymeter init` (development) or set it"
            ))
        })?;
    read_secrets_file(&path)?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
        .ok_or_else(|| {
            Failure::Usage(format!(
                "{} has no {name}: run `keymeter init`",
                path.display()
            ))
        })
}

/// The pepper ring: `KEYMETER_PEPPER`, else (development only) the secrets file.
fn load_peppers(store_url: &str, env: &Detected) -> Result<PepperRing, Failure> {
    Ok(PepperRing::from_env_value(&load_secret(
        "KEYMETER_PEPPER",
        store_url,
        env,
    )?)?)
}

/// The master keys: `KEYMETER_MASTER_KEYS`, else (development only) the secrets file.
fn load_vault(store_url: &str, env: &Detected) -> Result<Arc<Vault>, Failure> {
    let ring =
        MasterKeyRing::from_env_value(&load_secret("KEYMETER_MASTER_KEYS", store_url, env)?)?;
    Ok(Arc::new(Vault::new(ring)))
}

async fn open(store_url: &str) -> Result<Arc<SqliteStore>, Failure> {
    if !store_url.starts_with("sqlite:") {
        return Err(Failure::Usage(format!(
            "unsupported store {store_url:?}: use sqlite://PATH"
        )));
    }
    Ok(Arc::new(SqliteStore::connect(store_url).await?))
}

async fn init(store_url: &str) -> Outcome {
    let env = environment()?;
    open(store_url).await?;
    let mut created = Vec::new();
    let path = secrets_path(store_url);
    let day = Utc::now().format("%Y%m%d").to_string();
    // Both secrets are generated the same way: a keyring of one fresh key, dated id.
    let generate = |name: &str| -> Result<SecretString, Error> {
        if name == "KEYMETER_PEPPER" {
            Ok(
                PepperRing::new(vec![Pepper::generate(&format!("p{day}"), &OsRandom)?])?
                    .to_env_value(),
            )
        } else {
            Ok(
                MasterKeyRing::new(vec![MasterKey::generate(&format!("k{day}"), &OsRandom)?])?
                    .to_env_value(),
            )
        }
    };
    for name in ["KEYMETER_PEPPER", "KEYMETER_MASTER_KEYS"] {
        if std::env::var(name).is_ok() {
            continue;
        }
        if !env.environment.is_development() {
            return Err(Failure::Usage(format!(
                "{name} is not set; in {} secrets are never generated",
                env.environment
            )));
        }
        let path = path.as_ref().ok_or_else(|| {
            Failure::Usage("an in-memory store has no place for a secrets file".into())
        })?;
        let mut entries = if path.exists() {
            read_secrets_file(path)?
        } else {
            Vec::new()
        };
        if !entries.iter().any(|(k, _)| k == name) {
            entries.push((
                name.into(),
                Zeroizing::new(generate(name)?.expose_secret().to_owned()),
            ));
            write_secrets_file(path, &entries)?;
            created.push(name);
        }
    }
    let secrets_file = path.filter(|p| p.exists()).map(|p| p.display().to_string());
    let human = format!(
        "store ready: {store_url}\nenvironment: {} ({})\n{}",
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
            "store": store_url,
            "environment": env.environment,
            "secrets_file": secrets_file,
            "created_secrets": created,
        }),
        human,
    ))
}

fn parse_lifetime(s: &str) -> Result<Duration, Failure> {
    let bad = || {
        Failure::Usage(format!(
            "invalid --expires-in {s:?}: use a number and s, m, h, d or w (30d)"
        ))
    };
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: i64 = s[..split].parse().map_err(|_| bad())?;
    let d = match &s[split..] {
        "s" => Duration::try_seconds(n),
        "m" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" => Duration::try_days(n),
        "w" => Duration::try_weeks(n),
        _ => None,
    };
    d.filter(|d| *d > Duration::zero()).ok_or_else(bad)
}

fn read_stdin_secret() -> Result<Zeroizing<String>, Failure> {
    let mut buf = Zeroizing::new(String::new());
    std::io::stdin()
        .read_to_string(&mut buf)
        .map_err(|e| Failure::Usage(format!("cannot read stdin: {e}")))?;
    Ok(Zeroizing::new(buf.trim().to_owned()))
}

fn record_human(r: &KeyRecord) -> String {
    let scopes: Vec<&str> = r.scopes.iter().map(Scope::as_str).collect();
    let state = if r.revoked_at.is_some() {
        "revoked"
    } else if r.disabled {
        "disabled"
    } else {
        "active"
    };
    format!(
        "{}  {}  {}  owner={}{}  env={}  scopes={}  {}",
        r.id,
        r.hint,
        r.name,
        r.owner,
        r.org
            .as_ref()
            .map(|o| format!(" org={o}"))
            .unwrap_or_default(),
        r.env,
        scopes.join(","),
        state
    )
}

async fn keys(store_url: &str, cmd: KeysCommand) -> Outcome {
    let store = open(store_url).await?;
    let dyn_store: Arc<dyn KeyStore> = store.clone();
    let hasher = || -> Result<Arc<KeyHasher>, Failure> {
        let env = environment()?;
        Ok(Arc::new(KeyHasher::new(load_peppers(store_url, &env)?)))
    };
    match cmd {
        KeysCommand::Create(a) => {
            let mut new = NewKey::new(a.name, a.owner)
                .env(a.env.parse::<KeyEnv>()?)
                .scopes(Scope::parse_list(&a.scopes)?)
                .allowed_ips(parse_networks(a.allow_ip.iter().map(String::as_str))?)
                .prefix(a.prefix);
            if let Some(org) = a.org {
                new = new.org(org);
            }
            if let Some(life) = a.expires_in {
                new = new.expires_at(Utc::now() + parse_lifetime(&life)?);
            }
            if let Some(limit) = a.rate_limit {
                new = new.rate_limit(limit.parse::<RateLimit>()?);
            }
            let issued = KeyIssuer::new(dyn_store, hasher()?).issue(new).await?;
            let r = &issued.record;
            let key = issued.token.expose_secret();
            Ok((
                json!({
                    "id": r.id, "key": key, "name": r.name, "owner": r.owner, "org": r.org, "env": r.env,
                    "scopes": r.scopes, "expires_at": r.expires_at, "hint": r.hint,
                }),
                format!(
                    "{key}\n\nid: {}  ({})\nStore this key now: it is not shown again.",
                    r.id, r.hint
                ),
            ))
        }
        KeysCommand::List { owner, org } => {
            let records = dyn_store.list(&KeyFilter { owner, org }).await?;
            let human = records
                .iter()
                .map(record_human)
                .collect::<Vec<_>>()
                .join("\n");
            Ok((json!({ "keys": records }), human))
        }
        KeysCommand::Show { id } => match dyn_store.get(&id).await? {
            Some(r) => Ok((
                serde_json::to_value(&*r).map_err(|e| Failure::Usage(e.to_string()))?,
                record_human(&r),
            )),
            None => Err(Error::NotFound { what: "key", id }.into()),
        },
        KeysCommand::Verify {
            scopes,
            any_scope,
            ip,
            env,
        } => {
            let token = read_stdin_secret()?;
            let scopes = scopes.iter().map(String::as_str);
            let requirement = Requirement {
                scopes: if any_scope {
                    ScopeRequirement::any(scopes)?
                } else {
                    ScopeRequirement::all(scopes)?
                },
                client_ip: ip
                    .map(|s| {
                        s.parse()
                            .map_err(|_| Failure::Usage(format!("invalid --ip {s:?}")))
                    })
                    .transpose()?,
            };
            let mut config = VerifierConfig::default();
            if let Some(env) = env {
                config.environments = vec![env.parse::<KeyEnv>()?];
            }
            // Accept keys minted with any prefix: a well-formed token names its own.
            if let Ok(parsed) = token::parse(&token)
                && !config.prefixes.iter().any(|p| p == parsed.prefix)
            {
                config.prefixes.push(parsed.prefix.to_owned());
            }
            let verifier = Verifier::new(dyn_store, hasher()?, config)?;
            let verdict = verifier.verify(&token, &requirement).await?;
            let key = verdict.key();
            let value = json!({
                "valid": verdict.is_valid(),
                "code": verdict.code(),
                "key_id": key.map(|k| k.id.clone()),
                "owner": key.map(|k| k.owner.clone()),
                "scopes": key.map(|k| k.scopes.clone()),
            });
            let human = match key {
                Some(k) => format!("{}  key {} (owner {})", verdict.code(), k.id, k.owner),
                None => verdict.code().to_string(),
            };
            if verdict.is_valid() {
                Ok((value, human))
            } else {
                Err(Failure::Negative(value, human))
            }
        }
        KeysCommand::Revoke { id } => {
            dyn_store.revoke(&id, Utc::now()).await?;
            Ok((json!({"id": id, "revoked": true}), format!("revoked {id}")))
        }
        KeysCommand::RevokeAll { org } => {
            let ids = dyn_store.revoke_org(&org, Utc::now()).await?;
            let human = format!("revoked {} key(s) of {org}", ids.len());
            Ok((json!({"org": org, "revoked": ids.len(), "ids": ids}), human))
        }
        KeysCommand::Disable { id } => {
            dyn_store.set_disabled(&id, true).await?;
            Ok((
                json!({"id": id, "disabled": true}),
                format!("disabled {id}"),
            ))
        }
        KeysCommand::Enable { id } => {
            dyn_store.set_disabled(&id, false).await?;
            Ok((
                json!({"id": id, "disabled": false}),
                format!("enabled {id}"),
            ))
        }
        KeysCommand::Import(a) => {
            let mut new = NewKey::new(a.name, a.owner)
                .env(a.env.parse::<KeyEnv>()?)
                .scopes(Scope::parse_list(&a.scopes)?);
            if let Some(org) = a.org {
                new = new.org(org);
            }
            let record = KeyIssuer::new(dyn_store, hasher()?)
                .import(new, &a.hash, a.hint.as_deref())
                .await?;
            let human = format!("imported {}", record_human(&record));
            Ok((
                serde_json::to_value(&record).map_err(|e| Failure::Usage(e.to_string()))?,
                human,
            ))
        }
    }
}

/// An instant from RFC 3339, or a date taken as its local midnight in `tz`.
fn parse_instant(s: &str, tz: chrono_tz::Tz) -> Result<chrono::DateTime<Utc>, Failure> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .map(|day| keymeter::ledger::period::local_midnight(day, tz))
        .map_err(|_| Failure::Usage(format!("invalid time {s:?}: use RFC 3339 or YYYY-MM-DD")))
}

async fn usage(store_url: &str, cmd: UsageCommand) -> Outcome {
    let store = open(store_url).await?;
    match cmd {
        UsageCommand::Record {
            owner,
            key_id,
            org,
            model,
            request_id,
            pricing,
            usage,
        } => {
            let (cost, usage, at) = price_request(&model, &pricing, &usage)?;
            let mut event = UsageEvent::new(
                request_id.as_deref(),
                at,
                &owner,
                &cost.provider,
                &cost.model,
                usage,
                cost.total,
                &OsRandom,
            )?;
            if let Some(k) = key_id {
                event = event.key_id(k);
            }
            if let Some(o) = org {
                event = event.org(o);
            }
            let recorded = Ledger::record(&*store, &event).await?;
            let human = if recorded.duplicate {
                format!(
                    "already recorded as {} (request {})",
                    recorded.event_id, event.request_id
                )
            } else {
                format!(
                    "recorded {}: {} {}",
                    recorded.event_id, cost.total, cost.currency
                )
            };
            Ok((
                json!({"event_id": recorded.event_id, "cost": cost.total.to_string(), "duplicate": recorded.duplicate,
                       "request_id": event.request_id}),
                human,
            ))
        }
        UsageCommand::Report {
            by,
            owner,
            org,
            since,
            until,
            tz,
        } => {
            let by: GroupBy = by.parse()?;
            let tz = parse_tz(&tz)?;
            let filter = EventFilter {
                owner,
                org,
                since: since.map(|s| parse_instant(&s, tz)).transpose()?,
                until: until.map(|s| parse_instant(&s, tz)).transpose()?,
                ..EventFilter::default()
            };
            let report = store.report(&filter, by, tz).await?;
            let mut human = String::new();
            for g in &report.groups {
                human.push_str(&format!(
                    "{:<24} {:>14} {:>7} events {:>10} in {:>10} out\n",
                    g.key, g.cost, g.events, g.input_tokens, g.output_tokens
                ));
            }
            human.push_str(&format!("total {}", report.total));
            Ok((
                serde_json::to_value(&report).map_err(|e| Failure::Usage(e.to_string()))?,
                human,
            ))
        }
    }
}

async fn budget(store_url: &str, cmd: BudgetCommand) -> Outcome {
    let store = open(store_url).await?;
    match cmd {
        BudgetCommand::Set {
            scope,
            limit,
            period,
            soft,
            tz,
        } => {
            let mut budget = Budget::new(
                scope.scope(),
                parse_amount(&limit)?,
                period.parse::<BudgetPeriod>()?,
            )?
            .tz(parse_tz(&tz)?);
            if let Some(soft) = soft {
                budget = budget.soft_limit(parse_amount(&soft)?)?;
            }
            store.set_budget(&budget).await?;
            let value = json!({
                "scope": budget.scope, "limit": budget.limit.to_string(),
                "soft": budget.soft_limit.map(|s| s.to_string()), "period": budget.period, "tz": budget.tz.name(),
            });
            let human = format!(
                "{}: {} per {} ({})",
                budget.scope,
                budget.limit,
                budget.period,
                budget.tz.name()
            );
            Ok((value, human))
        }
        BudgetCommand::Status { scope } => {
            let scope = scope.scope();
            match store.budget_status(&scope, Utc::now()).await? {
                Some(s) => {
                    let human = format!(
                        "{}: spent {} + reserved {} of {} ({} remaining) since {}{}",
                        s.scope,
                        s.spent,
                        s.reserved,
                        s.limit,
                        s.remaining,
                        s.period_start,
                        if s.soft_exceeded {
                            "; soft limit reached"
                        } else {
                            ""
                        }
                    );
                    Ok((
                        serde_json::to_value(&s).map_err(|e| Failure::Usage(e.to_string()))?,
                        human,
                    ))
                }
                None => Err(Failure::Negative(
                    json!({"code": "NO_BUDGET", "scope": scope}),
                    format!("no budget for {scope}"),
                )),
            }
        }
    }
}
