//! What made-up keys cost the reference gateway while an Argon2id-hashed key exists (issue 24 item 6): each
//! unknown key runs a dummy KDF so timing does not tell which key prefixes exist. The real binary is flooded by
//! `KDF_FLOOD_CONNECTIONS` (32) connections of made-up keys from one address for `KDF_FLOOD_SECONDS` (8 s) while
//! a valid Argon2id key and a valid generated key are each sent every 50 ms; reported: the process's resident
//! memory (start, peak, end), its CPU time, answers by status, and the valid keys' latency (sent from another loopback address).
//!
//! The floor is the same valid-key requests with no flood, measured first in the same run.
//!
//! ```sh
//! cargo bench -p keymeter-gateway --bench kdf_flood
//! KDF_FLOOD_BUDGET=off cargo bench -p keymeter-gateway --bench kdf_flood   # no per-address failure budget
//! ```

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use support::binary;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory now and at its peak, in MiB (`/proc/PID/status`).
fn memory(pid: u32) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kib = |field: &str| {
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|n| n.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (kib("VmRSS:"), kib("VmHWM:"))
}

/// User + system CPU seconds of the process (`/proc/PID/stat`, in clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after its closing parenthesis.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Sends `key` every 50 ms until `until`; latencies in microseconds.
async fn valid_key(client: reqwest::Client, url: String, key: String, until: Instant) -> Vec<u64> {
    let mut out = Vec::new();
    while Instant::now() < until {
        let sent = Instant::now();
        let r = client
            .get(format!("{url}/v2/users/me/api-key-status"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("the gateway answers");
        assert_eq!(r.status(), 200, "a valid key is served");
        r.bytes().await.expect("body");
        out.push(sent.elapsed().as_micros() as u64);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    out.sort_unstable();
    out
}

#[tokio::main]
async fn main() {
    let connections = env_or("KDF_FLOOD_CONNECTIONS", 32) as usize;
    let seconds = env_or("KDF_FLOOD_SECONDS", 8);
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/flood.db", dir.path().display());
    let mut vars = support::config_vars(&store);
    if std::env::var("KDF_FLOOD_BUDGET").as_deref() == Ok("off") {
        vars.insert("KEYMETER_FAILED_VERIFICATIONS".into(), "off".into());
    }
    // The keys, made through the library on the same database: an imported Argon2id key and a generated one.
    let config = support::config(&store);
    let argon2_secret = "sk-legacy-argon2-0123456789abcdefXYW".to_owned();
    let generated = {
        let db = config.connect().await.unwrap();
        let hasher = config.hasher().unwrap();
        let issuer = keymeter::keys::KeyIssuer::new(db.clone(), hasher.clone());
        let hash = hasher.hash_argon2(argon2_secret.as_bytes()).unwrap();
        issuer
            .import(
                keymeter::keys::NewKey::new("legacy", "alice"),
                hash.as_str(),
                Some(&argon2_secret[..8]),
            )
            .await
            .unwrap();
        let issued = issuer
            .issue(keymeter::keys::NewKey::new("generated", "alice"))
            .await
            .unwrap();
        use secrecy::ExposeSecret;
        let token = issued.token.expose_secret().to_owned();
        db.close().await;
        token
    };
    let log = dir.path().join("gateway.log");
    let mut gateway = binary::start(&vars, &[], &log).await;
    let pid = gateway.child.id().expect("pid");
    let client = keymeter::http::client(Duration::from_secs(30)).unwrap();
    // The valid keys come from another loopback address than the flood, as a real user and a stranger would.
    let user = keymeter::http::builder()
        .unwrap()
        .timeout(Duration::from_secs(30))
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();

    // The floor: the valid keys alone.
    let quiet_until = Instant::now() + Duration::from_secs(2);
    let (quiet_argon2, quiet_generated) = tokio::join!(
        valid_key(
            user.clone(),
            gateway.url.clone(),
            argon2_secret.clone(),
            quiet_until
        ),
        valid_key(
            user.clone(),
            gateway.url.clone(),
            generated.clone(),
            quiet_until
        ),
    );
    let (rss_start, _) = memory(pid);
    let cpu_start = cpu_seconds(pid);

    let until = Instant::now() + Duration::from_secs(seconds);
    let mut flood = tokio::task::JoinSet::new();
    for c in 0..connections {
        let client = client.clone();
        let url = gateway.url.clone();
        flood.spawn(async move {
            let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
            let mut i = 0u64;
            while Instant::now() < until {
                i += 1;
                let made_up = format!("zz{c:03}-made-up-key-{i:012}-xxxxxxxxxxxxxxxx");
                let status = match client
                    .get(format!("{url}/v2/users/me/api-key-status"))
                    .bearer_auth(made_up)
                    .send()
                    .await
                {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                *statuses.entry(status).or_default() += 1;
            }
            statuses
        });
    }
    let sampler = tokio::spawn(async move {
        let mut peak = 0f64;
        while Instant::now() < until {
            peak = peak.max(memory(pid).0);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        peak
    });
    let (argon2, generated) = tokio::join!(
        valid_key(user.clone(), gateway.url.clone(), argon2_secret, until),
        valid_key(user.clone(), gateway.url.clone(), generated, until),
    );
    let mut statuses: BTreeMap<u16, u64> = BTreeMap::new();
    while let Some(done) = flood.join_next().await {
        for (s, n) in done.unwrap() {
            *statuses.entry(s).or_default() += n;
        }
    }
    let peak = sampler.await.unwrap();
    let cpu = cpu_seconds(pid) - cpu_start;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (rss_end, hwm) = memory(pid);
    if std::env::var("KDF_FLOOD_SMAPS").is_ok() {
        let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
        let mut big: Vec<(u64, String)> = Vec::new();
        let mut name = String::new();
        for line in smaps.lines() {
            if line.contains('-') && !line.starts_with(char::is_uppercase) {
                name = line.to_owned();
            } else if let Some(kb) = line.strip_prefix("Rss:") {
                let kb: u64 = kb
                    .trim()
                    .trim_end_matches(" kB")
                    .trim()
                    .parse()
                    .unwrap_or(0);
                if kb > 4096 {
                    big.push((kb, name.clone()));
                }
            }
        }
        big.sort();
        for (kb, n) in big.iter().rev().take(12) {
            println!("  {:>8} kB  {n}", kb);
        }
    }
    gateway.stop().await;

    println!(
        "kdf_flood: {connections} connections of made-up keys for {seconds} s (failure budget {})",
        vars.get("KEYMETER_FAILED_VERIFICATIONS")
            .map_or("10/min, the default", String::as_str)
    );
    println!("  answers by status: {statuses:?}");
    println!(
        "  resident memory: {rss_start:.0} MiB before, {peak:.0} MiB peak during (high-water mark {hwm:.0} MiB), \
         {rss_end:.0} MiB 2 s after"
    );
    println!("  CPU: {cpu:.2} s in {seconds} s");
    for (name, quiet, flooded) in [
        ("argon2id key", &quiet_argon2, &argon2),
        ("generated key", &quiet_generated, &generated),
    ] {
        println!(
            "  {name}: p50 {:.2} ms, p99 {:.2} ms during the flood ({} requests); alone p50 {:.2} ms, p99 {:.2} ms",
            percentile(flooded, 0.5),
            percentile(flooded, 0.99),
            flooded.len(),
            percentile(quiet, 0.5),
            percentile(quiet, 0.99),
        );
    }
}
