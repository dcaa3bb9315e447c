//! The command line: clap's types, apart from what each command does.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use keymeter::keys::token;
use keymeter::ledger::BudgetScope;

#[derive(Parser)]
#[command(
    name = "keymeter",
    version,
    about = "Admin CLI for keymeter: API keys, credentials, prices, budgets"
)]
pub(crate) struct Cli {
    /// Store URL.
    #[arg(
        long,
        env = "KEYMETER_STORE",
        default_value = "sqlite://keymeter.db",
        global = true
    )]
    pub(crate) store: String,
    /// Where rate-limit buckets live (redis://HOST:PORT); default: the store.
    #[arg(long, env = "KEYMETER_LIMITER", global = true)]
    pub(crate) limiter: Option<String>,
    /// Print one JSON object on stdout.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    #[command(subcommand)]
    pub(crate) command: Command,
}

// Parsed once per process: the size difference between variants does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum Command {
    /// Create the store; in development, write missing secrets to `keymeter.secrets` beside the database.
    #[command(
        after_help = "Examples:\n  keymeter init\n  KEYMETER_STORE=postgres://user@db/keymeter keymeter init"
    )]
    Init,
    /// Print the detected environment and the rule that decided it.
    #[command(
        after_help = "Examples:\n  keymeter env\n  KEYMETER_ENV=production keymeter --json env"
    )]
    Env,
    /// Inbound API keys.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  keymeter keys create --name ci-bot --owner alice --scopes read,write\n  keymeter keys list --owner alice"
    )]
    Keys(KeysCommand),
    /// Model prices and costs.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  keymeter price cost --model gpt-4o --input 1200 --output 350\n  keymeter price update"
    )]
    Price(PriceCommand),
    /// The master keys that encrypt provider credentials.
    #[command(subcommand)]
    #[command(after_help = "Examples:\n  keymeter vault keygen")]
    Vault(VaultCommand),
    /// Provider credentials (bring your own key).
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  printf %s \"$OPENAI_KEY\" | keymeter creds set --owner alice --provider openai\n  keymeter creds status --owner alice"
    )]
    Creds(CredsCommand),
    /// Recorded usage and spend reports.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  keymeter usage report --by day --tz Europe/Berlin --since 2026-11-01\n  keymeter usage export > usage.jsonl"
    )]
    Usage(UsageCommand),
    /// Spend limits.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  keymeter budget set --owner alice --limit 25.00 --period monthly --soft 20\n  keymeter budget status --owner alice"
    )]
    Budget(BudgetCommand),
    /// Rate limits of an owner, an org or a key.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  keymeter limits set --owner alice --requests 100/min --tokens 50000/h\n  keymeter limits show --owner alice"
    )]
    Limits(LimitsCommand),
    /// Webhook endpoints that receive alerts, and their deliveries.
    #[command(subcommand)]
    #[command(
        after_help = "Examples:\n  keymeter webhooks add https://hooks.example.com/keymeter --events budget.threshold,key.leaked\n  keymeter webhooks deliveries"
    )]
    Webhooks(WebhooksCommand),
}

#[derive(Subcommand)]
pub(crate) enum WebhooksCommand {
    /// Add an endpoint; prints its signing secret once.
    #[command(
        after_help = "Examples:\n  keymeter webhooks add https://hooks.example.com/keymeter\n  keymeter webhooks add https://hooks.example.com/k --events budget.threshold,budget.exhausted"
    )]
    Add {
        /// Where deliveries are posted (https://; http:// to a loopback host in development only).
        url: String,
        /// The event types it receives, comma-separated (default: all): budget.threshold, budget.soft_limit,
        /// budget.exhausted, key.unusual, key.leaked, dependency.down, dependency.up, webhook.test.
        #[arg(long, default_value = "")]
        events: String,
    },
    /// List the endpoints (never their secrets).
    #[command(after_help = "Examples:\n  keymeter webhooks list")]
    List,
    /// Remove an endpoint and its pending deliveries.
    #[command(after_help = "Examples:\n  keymeter webhooks remove whk_…")]
    Remove { id: String },
    /// Send a webhook.test to an endpoint now and say how it went.
    #[command(after_help = "Examples:\n  keymeter webhooks test whk_…")]
    Test { id: String },
    /// Give an endpoint a new signing secret; the old one keeps signing until the grace ends.
    #[command(after_help = "Examples:\n  keymeter webhooks rotate-secret whk_… --grace 24h")]
    RotateSecret {
        id: String,
        /// How long the previous secret keeps signing too (0s: not at all).
        #[arg(long, default_value = "24h")]
        grace: String,
    },
    /// The most recent deliveries and where each stands.
    #[command(after_help = "Examples:\n  keymeter webhooks deliveries --limit 20")]
    Deliveries {
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Deliver what is due, once (for hosts without the gateway's worker; cron-friendly: exit 0 when nothing failed).
    #[command(after_help = "Examples:\n  keymeter webhooks deliver")]
    Deliver,
}

#[derive(Subcommand)]
pub(crate) enum LimitsCommand {
    /// Replace the scope's rate limits (none given clears them).
    #[command(
        after_help = "Examples:\n  keymeter limits set --owner alice --requests 100/min --requests 5000/day --tokens 50000/h\n  keymeter limits set --org acme --models 'gpt-4o*,anthropic/*'\n  keymeter limits set --key KEY_ID          # no quota given: clears the key's limits"
    )]
    Set {
        #[command(flatten)]
        scope: BudgetScopeArgs,
        /// A request quota such as 100/min (repeatable; PERIOD s, min, h or day).
        #[arg(long = "requests")]
        requests: Vec<String>,
        /// A token quota such as 50000/h (repeatable).
        #[arg(long = "tokens")]
        tokens: Vec<String>,
        /// The models the scope's keys may call: [provider/]pattern with * wildcards, comma-separated
        /// (gpt-4o*,anthropic/*).
        #[arg(long = "models", default_value = "")]
        models: String,
        /// The most requests the scope may have in flight at once.
        #[arg(long = "max-parallel")]
        max_parallel: Option<u32>,
    },
    /// Show the scope's rate limits.
    #[command(after_help = "Examples:\n  keymeter limits show --org acme")]
    Show {
        #[command(flatten)]
        scope: BudgetScopeArgs,
    },
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum UsageCommand {
    /// Price a usage and record it once (the same --request-id twice records once).
    #[command(
        after_help = "Examples:\n  keymeter usage record --owner alice --model gpt-4o --input 1000 --output 200 --request-id req-42\n  keymeter usage record --owner alice --model claude-sonnet-4-5 --usage answer.json --usage-format anthropic"
    )]
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
    /// Spend and tokens grouped by owner, key, org, model, day, ISO week or month.
    #[command(
        after_help = "Examples:\n  keymeter usage report --by owner\n  keymeter usage report --by day --tz Europe/Berlin --since 2026-11-01 --until 2026-12-01"
    )]
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
        /// Only the events carrying this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only the events made for this end user.
        #[arg(long = "end-user")]
        end_user: Option<String>,
    },
    /// Stream every event on stdout, oldest first: JSON lines (what `usage import` reads) or CSV.
    ///
    /// Example: keymeter usage export --since 2026-01-01 --format csv > january-on.csv
    #[command(
        after_help = "Examples:\n  keymeter usage export --since 2026-11-01 > november.jsonl\n  keymeter usage export --format csv > usage.csv"
    )]
    Export {
        /// From (RFC 3339, or YYYY-MM-DD in UTC), inclusive.
        #[arg(long)]
        since: Option<String>,
        /// Until (RFC 3339, or YYYY-MM-DD in UTC), exclusive.
        #[arg(long)]
        until: Option<String>,
        /// jsonl or csv (CSV columns are the JSON fields, usage flattened as usage.<class>).
        #[arg(long, default_value = "jsonl")]
        format: String,
    },
    /// Record the events of an export's JSON lines (FILE, or - for stdin): validated whole first, then
    /// recorded in batches, idempotent by request id (a rerun after an interruption completes it).
    ///
    /// Example: keymeter --store postgres://db/keymeter usage import events.jsonl
    #[command(
        after_help = "Examples:\n  keymeter --store postgres://user@db/keymeter usage import november.jsonl\n  keymeter usage export | keymeter --store sqlite://copy.db usage import -"
    )]
    Import {
        /// The JSON lines file, or - for stdin.
        file: String,
    },
    /// Replace an estimated event (billed at its reservation because its usage never arrived) with the exact
    /// usage, priced for its model at its time: the event keeps its id and is marked estimated_first, and its
    /// budgets move by the difference. An exact event is never changed.
    #[command(
        after_help = "Examples:\n  keymeter usage adjust req-42 --input 1200 --output 310\n  keymeter usage adjust req-42 --usage answer.json --usage-format openai"
    )]
    Adjust {
        /// The request id of the estimated event.
        request_id: String,
        /// A catalog file (keymeter's format or LiteLLM's); default: the bundled snapshot.
        #[arg(long)]
        catalog: Option<PathBuf>,
        #[command(flatten)]
        usage: UsageArgs,
    },
    /// Delete the events from before a time. Budgets' spend is kept; pruned request ids stay duplicates.
    ///
    /// Example: keymeter usage prune --before 2026-01-01
    #[command(after_help = "Examples:\n  keymeter usage prune --before 2026-01-01")]
    Prune {
        /// Delete events before this (RFC 3339, or YYYY-MM-DD in UTC).
        #[arg(long)]
        before: String,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
pub(crate) struct BudgetScopeArgs {
    #[arg(long)]
    pub(crate) owner: Option<String>,
    #[arg(long)]
    pub(crate) key: Option<String>,
    #[arg(long)]
    pub(crate) org: Option<String>,
}

impl BudgetScopeArgs {
    pub(crate) fn scope(&self) -> BudgetScope {
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
pub(crate) enum BudgetCommand {
    /// Set (or replace) the budget of an owner, a key or an org.
    #[command(
        after_help = "Examples:\n  keymeter budget set --org acme --limit 500 --period monthly --tz Europe/Berlin\n  keymeter budget set --key KEY_ID --limit 5 --period daily --soft 4"
    )]
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
        /// Percentages of the limit alerted once per period (default 50,80,100; "" for none).
        #[arg(long)]
        thresholds: Option<String>,
        /// IANA time zone of the period's calendar (default UTC).
        #[arg(long, default_value = "UTC")]
        tz: String,
    },
    /// Where a budget stands now.
    #[command(after_help = "Examples:\n  keymeter budget status --owner alice")]
    Status {
        #[command(flatten)]
        scope: BudgetScopeArgs,
    },
}

#[derive(Subcommand)]
pub(crate) enum VaultCommand {
    /// Print a new master key entry for KEYMETER_MASTER_KEYS (put it first to make it active).
    #[command(
        after_help = "Examples:\n  keymeter vault keygen\n  keymeter vault keygen --id k2    # then KEYMETER_MASTER_KEYS=k2:NEW,k1:OLD and creds rewrap"
    )]
    Keygen {
        /// The key's id (default k<date>).
        #[arg(long)]
        id: Option<String>,
    },
}

#[derive(Args)]
pub(crate) struct EnvFileArg {
    /// A .env file of system keys (development only; default ./.env when it exists).
    #[arg(long)]
    pub(crate) env_file: Option<PathBuf>,
}

#[derive(Subcommand)]
pub(crate) enum CredsCommand {
    /// Store a key read from stdin, for a user or as the system key.
    #[command(
        after_help = "Examples:\n  printf %s \"$ANTHROPIC_KEY\" | keymeter creds set --owner alice --provider anthropic\n  printf %s \"$OPENAI_KEY\" | keymeter creds set --system --provider openai"
    )]
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
    #[command(after_help = "Examples:\n  keymeter creds status --owner alice")]
    Status {
        #[arg(long)]
        owner: String,
        #[command(flatten)]
        env_file: EnvFileArg,
    },
    /// Which key an owner's request would use (masked).
    #[command(after_help = "Examples:\n  keymeter creds resolve --owner alice --provider openai")]
    Resolve {
        #[arg(long)]
        owner: String,
        #[arg(long)]
        provider: String,
        #[command(flatten)]
        env_file: EnvFileArg,
    },
    /// Delete an owner's key (or a system key) for one provider, or all of them.
    #[command(
        after_help = "Examples:\n  keymeter creds delete --owner alice --provider openai\n  keymeter creds delete --owner alice          # every provider\n  keymeter creds delete --system --provider anthropic"
    )]
    Delete {
        #[arg(long, required_unless_present = "system", conflicts_with = "system")]
        owner: Option<String>,
        /// The system keys (the operator's, used when an owner has none) instead of an owner's.
        #[arg(long)]
        system: bool,
        #[arg(long)]
        provider: Option<String>,
    },
    /// Re-encrypt every stored credential under the active master key.
    #[command(after_help = "Examples:\n  KEYMETER_MASTER_KEYS=k2:NEW,k1:OLD keymeter creds rewrap")]
    Rewrap,
}

// Parsed once per process: the size of a variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum PriceCommand {
    /// The exact cost of a usage.
    #[command(
        after_help = "Examples:\n  keymeter price cost --model gpt-4o --input 1200 --output 350 --cache-read 1000\n  keymeter price cost --model claude-sonnet-4-5 --usage answer.json --usage-format anthropic"
    )]
    Cost {
        #[arg(long)]
        model: String,
        #[command(flatten)]
        pricing: PricingArgs,
        #[command(flatten)]
        usage: UsageArgs,
    },
    /// List the catalog's models.
    #[command(
        after_help = "Examples:\n  keymeter price list --provider anthropic\n  keymeter price list --catalog keymeter-prices-2026-11-22.json"
    )]
    List {
        #[arg(long)]
        provider: Option<String>,
        /// A catalog file (keymeter's format or LiteLLM's); default: the bundled snapshot.
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
    /// Show one model's prices.
    #[command(
        after_help = "Examples:\n  keymeter price show gpt-4o\n  keymeter price show anthropic/claude-sonnet-4-5"
    )]
    Show {
        model: String,
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
    /// Download LiteLLM's current price map, show what changed since the catalog in use, and write a dated
    /// catalog for --catalog or KEYMETER_CATALOG.
    #[command(
        after_help = "Examples:\n  keymeter price update\n  keymeter price update --out prices.json && export KEYMETER_CATALOG=$PWD/prices.json\n  keymeter --json price update --from https://example.com/prices.json"
    )]
    Update {
        /// Where to download the price map from (LiteLLM's format or keymeter's).
        #[arg(long, default_value = keymeter::pricing::update::LITELLM_PRICES_URL)]
        from: String,
        /// The catalog file to write; default: keymeter-prices-YYYY-MM-DD.json in the current directory.
        #[arg(long)]
        out: Option<PathBuf>,
        /// The catalog to compare with; default: the one in use (KEYMETER_CATALOG, else the bundled snapshot).
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
}

#[derive(Args)]
pub(crate) struct PricingArgs {
    /// A catalog file (keymeter's format or LiteLLM's); default: the bundled snapshot.
    #[arg(long)]
    pub(crate) catalog: Option<PathBuf>,
    /// Price at this time (RFC 3339); default: now.
    #[arg(long)]
    pub(crate) at: Option<String>,
    /// standard, batch, flex or priority (a tier the usage's response names wins).
    #[arg(long, default_value = "standard")]
    pub(crate) tier: String,
    /// global, us, eu or regional: where the request was processed (a region the response names wins).
    #[arg(long, default_value = "global")]
    pub(crate) region: String,
}

/// Counts per canonical (disjoint) class, or a provider usage object.
#[derive(Args)]
pub(crate) struct UsageArgs {
    /// Uncached text input tokens.
    #[arg(long, default_value_t = 0)]
    pub(crate) input: u64,
    /// Output tokens (without reasoning, audio and image output).
    #[arg(long, default_value_t = 0)]
    pub(crate) output: u64,
    /// Cache-read (text) input tokens.
    #[arg(long, default_value_t = 0)]
    pub(crate) cache_read: u64,
    /// 5-minute cache writes.
    #[arg(long, default_value_t = 0)]
    pub(crate) cache_write: u64,
    /// 1-hour cache writes.
    #[arg(long = "cache-write-1h", default_value_t = 0)]
    pub(crate) cache_write_1h: u64,
    /// 12-hour cache writes.
    #[arg(long = "cache-write-12h", default_value_t = 0)]
    pub(crate) cache_write_12h: u64,
    /// Reasoning tokens.
    #[arg(long, default_value_t = 0)]
    pub(crate) reasoning: u64,
    /// Uncached audio input tokens.
    #[arg(long, default_value_t = 0)]
    pub(crate) audio_input: u64,
    /// Cached audio input tokens.
    #[arg(long, default_value_t = 0)]
    pub(crate) cache_read_audio: u64,
    /// Audio output tokens.
    #[arg(long, default_value_t = 0)]
    pub(crate) audio_output: u64,
    /// Image input tokens (billed as input where the model has no image rate).
    #[arg(long, default_value_t = 0)]
    pub(crate) image_input: u64,
    /// Image output tokens.
    #[arg(long, default_value_t = 0)]
    pub(crate) image_output: u64,
    /// Web-search (grounding) queries.
    #[arg(long, default_value_t = 0)]
    pub(crate) web_search: u64,
    /// Google Maps grounding queries.
    #[arg(long, default_value_t = 0)]
    pub(crate) maps_grounding: u64,
    /// Images generated.
    #[arg(long, default_value_t = 0)]
    pub(crate) images: u64,
    /// A provider usage (or response) JSON file, `-` for stdin; replaces the count flags.
    #[arg(long, conflicts_with_all = [
        "input", "output", "cache_read", "cache_write", "cache_write_1h", "cache_write_12h", "reasoning",
        "audio_input", "cache_read_audio", "audio_output", "image_input", "image_output", "web_search",
        "maps_grounding", "images",
    ])]
    pub(crate) usage: Option<String>,
    /// openai, anthropic or gemini.
    #[arg(long, requires = "usage")]
    pub(crate) usage_format: Option<String>,
    /// With --usage: the file is a stream's SSE payloads (`data:` lines), priced from its usage events.
    #[arg(long, requires = "usage")]
    pub(crate) stream: bool,
}

#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub(crate) enum KeysCommand {
    /// Issue a new key; the plaintext is printed this once.
    #[command(
        after_help = "Examples:\n  keymeter keys create --name ci-bot --owner alice --scopes read,write --expires-in 90d\n  keymeter keys create --name partner --owner bob --org acme --rate-limit 100/min --allow-ip 10.0.0.0/8"
    )]
    Create(CreateArgs),
    /// List keys.
    #[command(after_help = "Examples:\n  keymeter keys list\n  keymeter keys list --org acme")]
    List {
        #[arg(long)]
        owner: Option<String>,
        #[arg(long)]
        org: Option<String>,
    },
    /// Show one key.
    #[command(after_help = "Examples:\n  keymeter keys show KEY_ID")]
    Show { id: String },
    /// Verify a token read from stdin.
    #[command(
        after_help = "Examples:\n  printf %s \"$KEY\" | keymeter keys verify --scope read\n  keymeter keys verify --ip 10.1.2.3 < key.txt"
    )]
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
    #[command(after_help = "Examples:\n  keymeter keys revoke KEY_ID")]
    Revoke { id: String },
    /// Give a key a new secret under the same id; the old one works until the grace period ends.
    #[command(after_help = "Examples:\n  keymeter keys rotate KEY_ID --grace 24h")]
    Rotate {
        id: String,
        /// How long the previous secret keeps working (30m, 24h, 7d; 0s: not at all).
        #[arg(long, default_value = "0s")]
        grace: String,
    },
    /// Verifications per day and verdict code, and whether today looks unusual.
    #[command(after_help = "Examples:\n  keymeter keys stats KEY_ID --days 14")]
    Stats {
        id: String,
        /// How many days back, today included.
        #[arg(long, default_value_t = 30)]
        days: u32,
    },
    /// Report a leaked token (on stdin): if it is one of the store's keys, revoke it and alert (key.leaked).
    #[command(
        after_help = "Examples:\n  printf %s \"$TOKEN\" | keymeter keys leaked --url https://github.com/acme/app/blob/main/.env"
    )]
    Leaked {
        /// Where it was found.
        #[arg(long)]
        url: Option<String>,
    },
    /// Revoke every key of an organisation.
    #[command(after_help = "Examples:\n  keymeter keys revoke-all --org acme")]
    RevokeAll {
        #[arg(long)]
        org: String,
    },
    /// Disable a key until enabled.
    #[command(
        after_help = "Examples:\n  keymeter keys disable KEY_ID    # keymeter keys enable KEY_ID undoes it"
    )]
    Disable { id: String },
    /// Enable a disabled key.
    #[command(after_help = "Examples:\n  keymeter keys enable KEY_ID")]
    Enable { id: String },
    /// Import a key made elsewhere from its hash.
    #[command(
        after_help = "Examples:\n  keymeter keys import --name legacy --owner bob --hash '$sha256$0c72…' --scopes read\n  printf %s \"$LEGACY_KEY\" | keymeter keys import --name legacy --owner bob --hash '$argon2id$v=19$…' --hint -"
    )]
    Import(ImportArgs),
}

#[derive(Args)]
pub(crate) struct CreateArgs {
    #[arg(long)]
    pub(crate) name: String,
    #[arg(long)]
    pub(crate) owner: String,
    #[arg(long)]
    pub(crate) org: Option<String>,
    /// Comma-separated scopes.
    #[arg(long, default_value = "")]
    pub(crate) scopes: String,
    /// live or test.
    #[arg(long, default_value = "live")]
    pub(crate) env: String,
    /// Lifetime such as 30d, 12h, 90m, 2w.
    #[arg(long)]
    pub(crate) expires_in: Option<String>,
    /// Allowed client network (repeatable).
    #[arg(long = "allow-ip")]
    pub(crate) allow_ip: Vec<String>,
    /// A request quota such as 100/min (repeatable; the first is the record's `rate_limit`).
    #[arg(long = "rate-limit")]
    pub(crate) rate_limit: Vec<String>,
    /// A token quota such as 50000/h (repeatable).
    #[arg(long = "token-limit")]
    pub(crate) token_limit: Vec<String>,
    /// The models the key may call: [provider/]pattern with * wildcards, comma-separated (gpt-4o*,anthropic/*).
    #[arg(long = "models", default_value = "")]
    pub(crate) models: String,
    /// The most requests the key may have in flight at once.
    #[arg(long = "max-parallel")]
    pub(crate) max_parallel: Option<u32>,
    /// Free-form metadata kept with the key: a JSON object of at most 4 KiB ('{"team": "ml"}').
    #[arg(long)]
    pub(crate) metadata: Option<String>,
    /// Tags every event of the key carries, comma-separated (team-a,batch).
    #[arg(long, default_value = "")]
    pub(crate) tags: String,
    #[arg(long, default_value = token::DEFAULT_PREFIX)]
    pub(crate) prefix: String,
}

#[derive(Args)]
pub(crate) struct ImportArgs {
    #[arg(long)]
    pub(crate) name: String,
    #[arg(long)]
    pub(crate) owner: String,
    #[arg(long)]
    pub(crate) org: Option<String>,
    /// The hash string ($sha256$…, $argon2id$…, $2b$…, $hmac-sha256$…).
    #[arg(long)]
    pub(crate) hash: String,
    /// `-`: read the key's first 8 characters from stdin (needed for every scheme but sha256), or the whole
    /// key, which is checked against the hash and gives its first characters. Never in argv: it is a secret.
    #[arg(long)]
    pub(crate) hint: Option<String>,
    #[arg(long, default_value = "")]
    pub(crate) scopes: String,
    #[arg(long, default_value = "live")]
    pub(crate) env: String,
}
