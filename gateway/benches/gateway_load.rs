//! A bounded loopback load run of the reference gateway on SQLite (issue: added p50 ≤ 1 ms and p99 ≤ 5 ms at
//! 300 requests/s, and the highest rate it sustains).
//!
//! The floor is the same request sent straight to the stand-in upstream, at the same rate, by the same client:
//! the gateway's added latency is its distribution minus that one. Open loop: request `i` is sent at
//! `start + i / rate` whatever the earlier ones are doing, so a slow gateway shows as latency, not as a lower
//! rate. Then a closed loop of fixed concurrency finds the rate it sustains.
//!
//! Each run measures the journal's modes in turn (DESIGN §13): fsync every 10 ms (the default), fsync before each
//! answer (`always`), and no journal; and a Gemini stream's latency to its last event, beside the same stream
//! straight from the stand-in.
//!
//! ```sh
//! cargo bench -p keymeter-gateway --bench gateway_load            # 3,000 requests per run and mode
//! GATEWAY_LOAD_REQUESTS=600 cargo bench -p keymeter-gateway --bench gateway_load
//! GATEWAY_LOAD_JOURNAL=always cargo bench -p keymeter-gateway --bench gateway_load   # one mode: 10ms, always, off
//! GATEWAY_LOAD_PHASES=1 cargo bench -p keymeter-gateway --bench gateway_load   # also time each library call
//! GATEWAY_LOAD_PARALLEL=64 cargo bench -p keymeter-gateway --bench gateway_load   # the key has a concurrency limit
//! GATEWAY_LOAD_BARE=1 cargo bench -p keymeter-gateway --bench gateway_load   # no rate limit, no budget
//! GATEWAY_LOAD_STORE=postgres cargo bench -p keymeter-gateway --bench gateway_load   # two instances, one database
//! GATEWAY_LOAD_STORE=postgres GATEWAY_LOAD_LIMITER=redis://127.0.0.1/ cargo bench …   # their limits in Redis
//! ```
//!
//! `GATEWAY_LOAD_STORE=postgres` runs two gateways (each with its own pool, journal, caches and budget leases) on
//! one PostgreSQL cluster of the run's own (the server binaries and the `postgres` user are needed), the requests
//! alternating between them: DESIGN §14's two-instance case.
//!
//! By default the key has a rate limit and its owner a budget (every check on, DESIGN §14).

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use keymeter::ledger::journal::SyncPolicy;
use serde_json::json;

fn requests() -> usize {
    std::env::var("GATEWAY_LOAD_REQUESTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(3000)
}

/// The chat request every run sends.
fn chat() -> serde_json::Value {
    json!({"model": "gpt-4o", "max_tokens": 300, "messages": [{"role": "user", "content": "Say hello"}]})
}

/// What an open-loop run measured, each sorted, in microseconds: latencies to the answer's last byte, and the
/// gateway's own time as its `x-keymeter-overhead-ms` says (empty for the direct floor).
struct Timings {
    latency: Vec<u64>,
    overhead: Vec<u64>,
}

/// `n` chat requests sent at `rate` per second, open loop.
async fn open_loop(
    client: &reqwest::Client,
    url: &str,
    key: Option<&str>,
    rate: f64,
    n: usize,
) -> Timings {
    let auth = key.map(|k| ("authorization", format!("Bearer {k}")));
    open_loop_of(client, &[url], auth, &chat(), rate, n).await
}

/// `n` requests of `body` with the header `auth`, sent at `rate` per second, open loop, request `i` to
/// `urls[i % urls.len()]`.
async fn open_loop_of(
    client: &reqwest::Client,
    urls: &[&str],
    auth: Option<(&'static str, String)>,
    body: &serde_json::Value,
    rate: f64,
    n: usize,
) -> Timings {
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate)).await;
        let mut request = client.post(urls[i % urls.len()]).json(body);
        if let Some((name, value)) = &auth {
            request = request.header(*name, value);
        }
        tasks.spawn(async move {
            let sent = Instant::now();
            let response = request.send().await.expect("loopback answers");
            assert_eq!(response.status(), 200);
            let own = response
                .headers()
                .get("x-keymeter-overhead-ms")
                .and_then(|v| v.to_str().ok()?.parse::<f64>().ok())
                .map(|ms| (ms * 1000.0) as u64);
            response.bytes().await.expect("body");
            (sent.elapsed().as_micros() as u64, own)
        });
    }
    let mut out = Timings {
        latency: Vec::with_capacity(n),
        overhead: Vec::with_capacity(n),
    };
    while let Some(done) = tasks.join_next().await {
        let (latency, own) = done.expect("request task");
        out.latency.push(latency);
        out.overhead.extend(own);
    }
    out.latency.sort_unstable();
    out.overhead.sort_unstable();
    out
}

/// The percentiles of the gateway's own time, as its header reports it.
fn own_time(timings: &Timings) {
    let o = &timings.overhead;
    println!(
        "  the gateway's own time (x-keymeter-overhead-ms): p50 {}  p90 {}  p99 {}",
        ms(pct(o, 0.50) as i64),
        ms(pct(o, 0.90) as i64),
        ms(pct(o, 0.99) as i64)
    );
}

/// Requests per second of `n` requests with `concurrency` in flight, closed loop.
async fn closed_loop(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    concurrency: usize,
    n: usize,
) -> f64 {
    let body = chat();
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, key, body, next) = (
            client.clone(),
            url.to_owned(),
            key.to_owned(),
            body.clone(),
            next.clone(),
        );
        tasks.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let response = client
                    .post(&url)
                    .bearer_auth(&key)
                    .json(&body)
                    .send()
                    .await
                    .expect("loopback answers");
                assert_eq!(response.status(), 200);
                response.bytes().await.expect("body");
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("load task");
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn pct(sorted: &[u64], p: f64) -> u64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Prints each percentile of the direct and the gateway latencies (sorted), and what the gateway added.
fn added(floor: &[u64], gateway: &[u64], percentiles: &[(&str, f64)]) {
    for (name, p) in percentiles {
        let (f, g) = (pct(floor, *p), pct(gateway, *p));
        println!(
            "  {name}: direct {}  gateway {}  added {}",
            ms(f as i64),
            ms(g as i64),
            ms(g as i64 - f as i64)
        );
    }
}

fn ms(us: i64) -> String {
    format!("{:.3} ms", us as f64 / 1000.0)
}

#[tokio::main]
async fn main() {
    // `cargo bench` passes `--bench`; a filter that is not ours (another bench's name) skips this run.
    if std::env::args()
        .skip(1)
        .any(|a| !a.starts_with("--") && !"gateway_load".contains(a.as_str()))
    {
        return;
    }
    let n = requests();
    let up = support::upstream().await;
    if std::env::var("GATEWAY_LOAD_STORE").as_deref() == Ok("postgres") {
        two_on_postgres(&up, n).await;
        return;
    }
    let modes = std::env::var("GATEWAY_LOAD_JOURNAL").unwrap_or_else(|_| "10ms,always,off".into());
    for mode in modes.split(',') {
        let sync = match mode.trim() {
            "off" => None,
            "always" => Some(SyncPolicy::Always),
            "10ms" => Some(SyncPolicy::Every(Duration::from_millis(10))),
            other => panic!("GATEWAY_LOAD_JOURNAL: {other:?} is not 10ms, always or off"),
        };
        run(&up, n, mode.trim(), sync).await;
    }
}

async fn run(up: &support::Upstream, n: usize, mode: &str, sync: Option<SyncPolicy>) {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/gateway.db", dir.path().display());
    let mut config = support::config(&store);
    config.journal_dir = sync.map(|_| dir.path().join("journal"));
    if let Some(sync) = sync {
        config.journal_sync = sync;
    }
    let gw = support::serve_with(
        &config,
        support::settings(up),
        keymeter_gateway::server::Limits::default(),
        "ops",
    )
    .await;
    // Every check on (DESIGN §14): the key has a rate limit it never reaches and its owner a budget it never
    // spends, so each request is charged and reserved. GATEWAY_LOAD_BARE=1: neither.
    // GATEWAY_LOAD_PARALLEL=N: the key also has a concurrency limit, so each request takes and gives back a slot.
    let mut new_key = json!({"name": "load", "owner": "load", "permissions": ["llm:chat"]});
    if std::env::var_os("GATEWAY_LOAD_BARE").is_none() {
        new_key["rate_limit"] = json!("1000000/min");
        gw.monthly_budget("load", 1_000_000).await;
    }
    if let Ok(n) = std::env::var("GATEWAY_LOAD_PARALLEL") {
        new_key["max_parallel"] = json!(n.parse::<u32>().expect("GATEWAY_LOAD_PARALLEL: a number"));
    }
    let (_, key) = gw.key(new_key).await;
    let client = gw.client.clone();
    let direct = format!("{}/v1/chat/completions", up.url);
    let proxied = format!("{}/v1/chat/completions", gw.url);

    // Warm both paths (connections, caches, SQLite pages).
    open_loop(&client, &direct, None, 300.0, 200).await;
    open_loop(&client, &proxied, Some(&key), 300.0, 200).await;

    if std::env::var("GATEWAY_LOAD_PHASES").is_ok() {
        phases(&gw).await;
    }
    let floor = open_loop(&client, &direct, None, 300.0, n).await;
    let gateway = open_loop(&client, &proxied, Some(&key), 300.0, n).await;
    println!(
        "gateway_load: {n} requests at 300/s, open loop, SQLite store, loopback, journal {mode}"
    );
    added(
        &floor.latency,
        &gateway.latency,
        &[("p50", 0.50), ("p90", 0.90), ("p99", 0.99)],
    );
    own_time(&gateway);
    // DESIGN §14's rate: 1,000 requests a second.
    let floor = open_loop(&client, &direct, None, 1000.0, n).await;
    let gateway = open_loop(&client, &proxied, Some(&key), 1000.0, n).await;
    println!("  at 1,000/s:");
    added(
        &floor.latency,
        &gateway.latency,
        &[("p50", 0.50), ("p99", 0.99)],
    );
    own_time(&gateway);
    // One Gemini stream (four events, the usage total in the last) per request: the stream passes through and is billed
    // from its last chunk.
    let gemini = json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
        "generationConfig": {"maxOutputTokens": 300}});
    let path = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse";
    let (direct_stream, proxied_stream) =
        (format!("{}{path}", up.url), format!("{}{path}", gw.url));
    let auth = Some(("x-goog-api-key", key.clone()));
    open_loop_of(
        &client,
        &[&proxied_stream],
        auth.clone(),
        &gemini,
        300.0,
        200,
    )
    .await;
    let floor = open_loop_of(&client, &[&direct_stream], None, &gemini, 300.0, n).await;
    let gateway = open_loop_of(&client, &[&proxied_stream], auth, &gemini, 300.0, n).await;
    println!("  Gemini streams at 300/s, to the last event:");
    added(
        &floor.latency,
        &gateway.latency,
        &[("p50", 0.50), ("p99", 0.99)],
    );
    own_time(&gateway);
    for concurrency in [8, 32] {
        let direct_rate = closed_loop(&client, &direct, "", concurrency, n).await;
        let rate = closed_loop(&client, &proxied, &key, concurrency, n).await;
        println!(
            "  closed loop, {concurrency} in flight: gateway {rate:.0} req/s (direct {direct_rate:.0} req/s)"
        );
    }
    let wal = std::fs::metadata(dir.path().join("gateway.db-wal")).map_or(0, |m| m.len());
    println!("  WAL after the run: {} KiB", wal / 1024);
    gw.app.shutdown(Duration::from_secs(10)).await;
}

/// Two gateways on one PostgreSQL database, journal every 10 ms, requests alternating between them.
async fn two_on_postgres(up: &support::Upstream, n: usize) {
    let Some(pg) = support::postgres::Postgres::start_new() else {
        println!(
            "gateway_load: skipped the PostgreSQL run: no server binaries or no postgres user here"
        );
        return;
    };
    let store = pg.url();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut gateways = Vec::new();
    for dir in &dirs {
        let mut config = support::config(&store);
        config.journal_dir = Some(dir.path().join("journal"));
        config.journal_sync = SyncPolicy::Every(Duration::from_millis(10));
        // Where the rate limits live: slices leased from the database by default on PostgreSQL (a store call
        // per slice), or `store` (a transaction per check), `memory`, `redis://…`.
        if let Ok(limiter) = std::env::var("GATEWAY_LOAD_LIMITER") {
            config.limiter_url = Some(limiter);
        }
        gateways.push(
            support::serve_with(
                &config,
                support::settings(up),
                keymeter_gateway::server::Limits::default(),
                "ops",
            )
            .await,
        );
    }
    let gw = &gateways[0];
    let mut new_key = json!({"name": "load", "owner": "load", "permissions": ["llm:chat"]});
    if std::env::var_os("GATEWAY_LOAD_BARE").is_none() {
        new_key["rate_limit"] = json!("1000000/min");
        gw.monthly_budget("load", 1_000_000).await;
    }
    let (_, key) = gw.key(new_key).await;
    let client = gw.client.clone();
    let direct = format!("{}/v1/chat/completions", up.url);
    let proxied: Vec<String> = gateways
        .iter()
        .map(|g| format!("{}/v1/chat/completions", g.url))
        .collect();
    open_loop(&client, &direct, None, 300.0, 200).await;
    open_loop_across(&client, &proxied, &key, 300.0, 400).await;
    for rate in [300.0, 1000.0] {
        let floor = open_loop(&client, &direct, None, rate, n).await;
        let gateway = open_loop_across(&client, &proxied, &key, rate, n).await;
        println!(
            "gateway_load: {n} requests at {rate}/s, open loop, two gateways on one PostgreSQL, loopback, journal 10ms"
        );
        added(
            &floor.latency,
            &gateway.latency,
            &[("p50", 0.50), ("p90", 0.90), ("p99", 0.99)],
        );
        own_time(&gateway);
    }
    for concurrency in [8, 32] {
        let started = Instant::now();
        let per = n / 2;
        let (a, b) = tokio::join!(
            closed_loop(&client, &proxied[0], &key, concurrency / 2, per),
            closed_loop(&client, &proxied[1], &key, concurrency / 2, per)
        );
        let _ = (a, b);
        let rate = (2 * per) as f64 / started.elapsed().as_secs_f64();
        println!("  closed loop, {concurrency} in flight across both: {rate:.0} req/s");
    }
    for g in &gateways {
        g.app.shutdown(Duration::from_secs(10)).await;
    }
}

/// [`open_loop`] with request `i` sent to `urls[i % urls.len()]`.
async fn open_loop_across(
    client: &reqwest::Client,
    urls: &[String],
    key: &str,
    rate: f64,
    n: usize,
) -> Timings {
    let urls: Vec<&str> = urls.iter().map(String::as_str).collect();
    let auth = Some(("authorization", format!("Bearer {key}")));
    open_loop_of(client, &urls, auth, &chat(), rate, n).await
}

/// The mean time of each library call a proxied request makes, one at a time: where the added latency goes.
async fn phases(gw: &support::Gateway) {
    use keymeter::credentials::Provider;
    use keymeter::ledger::MeteredRequest;
    use keymeter::pricing::Usage;
    let app = &gw.app;
    let record = app
        .keys
        .list(&Default::default())
        .await
        .unwrap()
        .pop()
        .unwrap();
    let n = 500;
    let t = Instant::now();
    for _ in 0..n {
        app.resolver
            .resolve("load", &Provider::openai())
            .await
            .unwrap();
    }
    println!("resolve: {:?}", t.elapsed() / n);
    let worst = Usage {
        input: 100,
        output: 300,
        ..Usage::default()
    };
    let mut r = std::time::Duration::ZERO;
    let mut st = std::time::Duration::ZERO;
    for _ in 0..n {
        let t = Instant::now();
        let hold = app
            .meter
            .reserve(MeteredRequest::new(&record, "gpt-4o"), &worst)
            .await
            .unwrap();
        r += t.elapsed();
        let t = Instant::now();
        app.meter
            .settle(
                hold,
                (
                    keymeter::pricing::UsageFormat::OpenAi,
                    support::OPENAI_USAGE,
                ),
            )
            .await
            .unwrap();
        st += t.elapsed();
    }
    println!("reserve: {:?} settle: {:?}", r / n, st / n);
    let t = Instant::now();
    for _ in 0..n {
        app.verifier.charge_tokens(&record, 1000).await.unwrap();
    }
    println!("charge_tokens: {:?}", t.elapsed() / n);
}
