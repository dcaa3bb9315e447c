//! `keymeter-gateway`: the reference service of keymeter, an OpenAI-, Anthropic- and Gemini-compatible
//! metering proxy with personal provider keys, key administration, usage ingest, reports and budgets, on the
//! embedded SQLite store by default.
//!
//! ```sh
//! cargo run -p keymeter-gateway -- [--listen 127.0.0.1:8080] [--metrics-listen ADDR] [--store URL] [--limiter URL] \
//!     [--journal DIR | --no-journal] [--openai-base-url URL] [--anthropic-base-url URL] \
//!     [--gemini-base-url URL] [--default-max-tokens N] [--trust-forwarded CIDR,…] \
//!     [--connect-timeout 10s] [--first-byte-timeout 300s] [--upstream-timeout 600s] [--body-timeout 30s] \
//!     [--header-timeout 30s] [--max-connections 1024] [--shutdown-grace 30s] [--log-format text|json]
//! ```
//!
//! Everything else comes from `Config::from_env()` (`KEYMETER_STORE`, `KEYMETER_PEPPER`, `KEYMETER_MASTER_KEYS`,
//! `KEYMETER_ENV`, …); in development the first run writes the secrets file beside the database. Logs go to
//! standard error (`RUST_LOG`, `KEYMETER_LOG_FORMAT`). SIGTERM or Ctrl-C shuts down gracefully.

use std::net::SocketAddr;
use std::time::Duration;

use axum::http::HeaderName;
use chrono::Utc;
use keymeter::Config;
use keymeter::env::{EnvSource, ProcessEnv};
use keymeter::random::OsRandom;
use keymeter_axum::ClientIp;
use keymeter_gateway::{Gateway, Settings, logs, server};

const USAGE: &str = "usage: keymeter-gateway [--listen ADDR] [--metrics-listen ADDR] [--store URL] [--limiter URL] \
[--journal DIR | --no-journal] \
[--openai-base-url URL] [--anthropic-base-url URL] [--gemini-base-url URL] [--default-max-tokens N] \
[--trust-forwarded CIDR,…] \
[--connect-timeout DUR] [--first-byte-timeout DUR] [--upstream-timeout DUR] [--body-timeout DUR] \
[--header-timeout DUR] [--max-connections N] [--shutdown-grace DUR] [--log-format text|json]
(DUR: a number and s, m or h, such as 30s)";

/// The process environment with the store and limiter flags in front of it, so `Config` places the secrets file
/// beside the store the flags name.
struct Flags {
    listen: SocketAddr,
    metrics_listen: Option<SocketAddr>,
    store: Option<String>,
    limiter: Option<String>,
    settings: Settings,
    limits: server::Limits,
    log_format: Option<logs::Format>,
    journal: Option<String>,
    no_journal: bool,
}

impl EnvSource for Flags {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "KEYMETER_STORE" if self.store.is_some() => self.store.clone(),
            "KEYMETER_LIMITER" if self.limiter.is_some() => self.limiter.clone(),
            "KEYMETER_JOURNAL" if self.journal.is_some() => self.journal.clone(),
            _ => ProcessEnv.var(name),
        }
    }
}

/// A positive duration flag (`30s`, `5m`).
fn duration(flag: &'static str, value: &str) -> Result<Duration, String> {
    keymeter::validate::duration(flag, value, false)
        .ok()
        .and_then(|d| d.to_std().ok())
        .ok_or_else(|| format!("{flag} {value:?}: use a number and s, m or h, such as 30s"))
}

fn positive(flag: &str, value: &str) -> Result<u64, String> {
    value
        .parse()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("{flag} {value:?}: use a positive number"))
}

fn parse_flags() -> Result<Flags, String> {
    let mut flags = Flags {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        metrics_listen: None,
        store: None,
        limiter: None,
        settings: Settings::default(),
        limits: server::Limits::default(),
        log_format: None,
        journal: None,
        no_journal: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--no-journal" {
            flags.no_journal = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let settings = &mut flags.settings;
        match flag.as_str() {
            "--listen" => {
                flags.listen = value.parse().map_err(|_| {
                    format!("--listen {value:?}: use HOST:PORT such as 127.0.0.1:8080")
                })?
            }
            "--metrics-listen" => {
                flags.metrics_listen = Some(value.parse().map_err(|_| {
                    format!("--metrics-listen {value:?}: use HOST:PORT such as 127.0.0.1:9090")
                })?);
                settings.metrics_on_main = false;
            }
            "--store" => flags.store = Some(value),
            "--limiter" => flags.limiter = Some(value),
            "--journal" => flags.journal = Some(value),
            "--openai-base-url" => settings.openai_base_url = value,
            "--anthropic-base-url" => settings.anthropic_base_url = value,
            "--gemini-base-url" => settings.gemini_base_url = value,
            "--default-max-tokens" => settings.default_max_tokens = positive(&flag, &value)?,
            "--connect-timeout" => {
                settings.connect_timeout = duration("--connect-timeout", &value)?
            }
            "--first-byte-timeout" => {
                settings.first_byte_timeout = duration("--first-byte-timeout", &value)?
            }
            "--upstream-timeout" => {
                settings.upstream_timeout = duration("--upstream-timeout", &value)?
            }
            "--body-timeout" => settings.body_read_timeout = duration("--body-timeout", &value)?,
            "--header-timeout" => {
                flags.limits.header_read_timeout = duration("--header-timeout", &value)?
            }
            "--max-connections" => {
                flags.limits.max_connections = usize::try_from(positive(&flag, &value)?)
                    .map_err(|_| format!("--max-connections {value:?} is too large"))?
            }
            "--shutdown-grace" => {
                flags.limits.shutdown_grace = duration("--shutdown-grace", &value)?
            }
            "--log-format" => flags.log_format = Some(value.parse()?),
            "--trust-forwarded" => {
                let proxies = value
                    .split(',')
                    .map(|net| {
                        net.trim().parse::<ipnet::IpNet>().map_err(|_| {
                            format!("--trust-forwarded: {net:?} is not a CIDR network")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                settings.client_ip = ClientIp::Forwarded {
                    header: HeaderName::from_static("x-forwarded-for"),
                    proxies,
                };
            }
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(flags)
}

fn exit_usage(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(2);
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().skip(1).any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return Ok(());
    }
    let flags = parse_flags().unwrap_or_else(|m| exit_usage(&m));
    let format = match flags.log_format {
        Some(format) => format,
        None => match std::env::var("KEYMETER_LOG_FORMAT") {
            Ok(v) => v.parse().unwrap_or_else(|m: String| exit_usage(&m)),
            Err(_) => logs::Format::default(),
        },
    };
    logs::init(format).unwrap_or_else(|m| exit_usage(&m));
    // Its warnings (an environment nobody set, say) reach the log through `tracing`.
    let mut config = Config::from_source(&flags)?;
    config.init_secrets(&flags, &OsRandom, Utc::now())?;
    if flags.no_journal {
        config.journal_dir = None;
        tracing::warn!(
            "no journal: a process killed mid-exchange loses the bills of the answers it had sent, and a store \
             outage can lose settles"
        );
    } else if config.journal_dir.is_none() && config.store_url.starts_with("postgres") {
        exit_usage(
            "a journal is required on a server database: --journal DIR (or KEYMETER_JOURNAL), or \
             --no-journal to accept losing bills on a crash",
        );
    }
    let gateway = Gateway::build(&config, flags.settings.clone()).await?;
    let listener = tokio::net::TcpListener::bind(flags.listen).await?;
    tracing::info!(
        "keymeter gateway on http://{} ({} store, {} environment)",
        listener.local_addr()?,
        gateway.app.store.backend(),
        config.environment.environment.as_str()
    );
    if let Some(addr) = flags.metrics_listen {
        let metrics = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!("metrics on http://{}/metrics", metrics.local_addr()?);
        let router = gateway.metrics_router();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(metrics, router).await {
                tracing::error!(error = %e, "the metrics listener stopped");
            }
        });
    }
    server::serve(listener, gateway, flags.limits, server::signal()).await?;
    tracing::info!("stopped");
    Ok(())
}
