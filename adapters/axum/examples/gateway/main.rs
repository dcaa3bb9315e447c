//! The reference service of keymeter's DESIGN §12: an OpenAI- and Anthropic-compatible metering proxy with
//! personal provider keys, key administration, usage ingest, reports and budgets, on the embedded SQLite store by
//! default.
//!
//! ```sh
//! cargo run -p keymeter-axum --example gateway -- [--listen 127.0.0.1:8080] [--store URL] [--limiter URL] \
//!     [--openai-base-url URL] [--anthropic-base-url URL] [--default-max-tokens N] [--trust-forwarded CIDR,…]
//! ```
//!
//! Everything else comes from `Config::from_env()` (`KEYMETER_STORE`, `KEYMETER_PEPPER`, `KEYMETER_MASTER_KEYS`,
//! `KEYMETER_ENV`, …); in development the first run writes the secrets file beside the database.

mod app;

use std::net::SocketAddr;

use axum::http::HeaderName;
use chrono::Utc;
use keymeter::Config;
use keymeter::env::{EnvSource, ProcessEnv};
use keymeter::random::OsRandom;
use keymeter_axum::ClientIp;

const USAGE: &str = "usage: gateway [--listen ADDR] [--store URL] [--limiter URL] [--openai-base-url URL] \
[--anthropic-base-url URL] [--default-max-tokens N] [--trust-forwarded CIDR,…]";

/// The process environment with the store and limiter flags in front of it, so `Config` places the secrets file
/// beside the store the flags name.
struct Flags {
    listen: SocketAddr,
    store: Option<String>,
    limiter: Option<String>,
    settings: app::Settings,
}

impl EnvSource for Flags {
    fn var(&self, name: &str) -> Option<String> {
        match name {
            "KEYMETER_STORE" if self.store.is_some() => self.store.clone(),
            "KEYMETER_LIMITER" if self.limiter.is_some() => self.limiter.clone(),
            _ => ProcessEnv.var(name),
        }
    }
}

fn parse_flags() -> Result<Flags, String> {
    let mut flags = Flags {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        store: None,
        limiter: None,
        settings: app::Settings::default(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--help" || flag == "-h" {
            return Err(USAGE.into());
        }
        let value = args
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        match flag.as_str() {
            "--listen" => {
                flags.listen = value.parse().map_err(|_| {
                    format!("--listen {value:?}: use HOST:PORT such as 127.0.0.1:8080")
                })?
            }
            "--store" => flags.store = Some(value),
            "--limiter" => flags.limiter = Some(value),
            "--openai-base-url" => flags.settings.openai_base_url = value,
            "--anthropic-base-url" => flags.settings.anthropic_base_url = value,
            "--default-max-tokens" => {
                flags.settings.default_max_tokens =
                    value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                        format!("--default-max-tokens {value:?}: use a positive number")
                    })?
            }
            "--trust-forwarded" => {
                let proxies = value
                    .split(',')
                    .map(|net| {
                        net.trim().parse::<ipnet::IpNet>().map_err(|_| {
                            format!("--trust-forwarded: {net:?} is not a CIDR network")
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                flags.settings.client_ip = ClientIp::Forwarded {
                    header: HeaderName::from_static("x-forwarded-for"),
                    proxies,
                };
            }
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    Ok(flags)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let flags = match parse_flags() {
        Ok(flags) => flags,
        Err(message) => {
            eprintln!("{message}");
            std::process::exit(2);
        }
    };
    let mut config = Config::from_source(&flags)?;
    for warning in config.warnings() {
        eprintln!("warning: {warning}");
    }
    config.init_secrets(&flags, &OsRandom, Utc::now())?;
    let gateway = app::Gateway::build(&config, flags.settings.clone()).await?;
    let listener = tokio::net::TcpListener::bind(flags.listen).await?;
    eprintln!(
        "keymeter gateway on http://{} ({} store)",
        listener.local_addr()?,
        gateway.app.store.backend()
    );
    axum::serve(
        listener,
        gateway
            .router
            .into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    gateway.app.close().await;
    Ok(())
}
