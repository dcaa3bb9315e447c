//! Faults against the real service (DESIGN §13): a client that hangs up, a shutdown with exchanges in flight, a
//! rate limiter that goes away, slow and idle connections. Each test counts what the clients received against
//! what the ledger holds.

mod support;

use std::time::{Duration, Instant};

use chrono::Utc;
use keymeter::credentials::{CredentialScope, Provider, set_key};
use keymeter::keys::{NewKey, Scope};
use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, EventFilter, UsageEvent};
use keymeter::pricing::normalize::normalize;
use keymeter::pricing::{ServiceTier, UsageFormat};
use keymeter::store::Store;
use rust_decimal::Decimal;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use support::{OPENAI_USAGE, SYSTEM_OPENAI_KEY, app, binary};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the stand-in's OpenAI usage costs on gpt-4o.
fn openai_cost() -> Decimal {
    let usage = normalize(UsageFormat::OpenAi, OPENAI_USAGE).unwrap();
    keymeter::pricing::PriceCatalog::bundled()
        .cost("gpt-4o", &usage, Utc::now(), ServiceTier::Standard)
        .unwrap()
        .total
}

fn chat(user: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o", "max_tokens": 300, "stream": stream, "user": user,
        "messages": [{"role": "user", "content": "Say hello"}]})
}

async fn events_of(store: &dyn Store, owner: &str) -> Vec<UsageEvent> {
    store
        .events(&EventFilter {
            owner: Some(owner.into()),
            ..EventFilter::default()
        })
        .await
        .unwrap()
}

/// Polls `check` every 20 ms until it holds or `within` passes; returns how long it took.
async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if check().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < within, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_before_the_answer_is_billed_what_the_upstream_reports() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let alice = BudgetScope::Owner("alice".into());
    gw.app
        .store
        .set_budget(&Budget::new(alice.clone(), Decimal::from(5), BudgetPeriod::Monthly).unwrap())
        .await
        .unwrap();
    let (_, key) = gw
        .key(json!({"name": "k", "owner": "alice", "permissions": ["llm:chat"]}))
        .await;
    // The stand-in waits 400 ms before answering `slow`; each client gives up after 100 ms.
    let impatient = keymeter::http::client(Duration::from_millis(100)).unwrap();
    for _ in 0..5 {
        let sent = impatient
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(&key)
            .json(&chat("slow", false))
            .send()
            .await;
        assert!(sent.is_err(), "the client should have timed out");
    }
    let store = gw.app.store.clone();
    eventually(Duration::from_secs(5), "five billed events", || {
        let store = store.clone();
        async move { events_of(&*store, "alice").await.len() == 5 }
    })
    .await;
    let events = events_of(&*store, "alice").await;
    assert_eq!(
        up.calls().len(),
        5,
        "each request reached the upstream once"
    );
    for e in &events {
        assert_eq!(
            e.cost,
            openai_cost(),
            "billed the reported usage, not the reservation"
        );
    }
    let status = store
        .budget_status(&alice, Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.reserved, Decimal::ZERO, "no reservation left behind");
    assert_eq!(status.spent, openai_cost() * Decimal::from(5));
}

/// A SQLite store prepared for a process of the real binary: the system OpenAI key and a chat key for alice
/// (returned), with a budget of $5 on alice.
async fn prepare(store_url: &str) -> String {
    let config = support::config(store_url);
    let store = config.connect().await.unwrap();
    set_key(
        &*store,
        &config.vault().unwrap(),
        &CredentialScope::System,
        &Provider::openai(),
        SYSTEM_OPENAI_KEY,
    )
    .await
    .unwrap();
    store
        .set_budget(
            &Budget::new(
                BudgetScope::Owner("alice".into()),
                Decimal::from(5),
                BudgetPeriod::Monthly,
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let issued = config
        .issuer(store.clone())
        .unwrap()
        .issue(NewKey::new("chat", "alice").scopes(Scope::parse_list("llm:chat").unwrap()))
        .await
        .unwrap();
    store.close().await;
    issued.token.expose_secret().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_and_bills_every_exchange_in_flight_and_logs_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}/gateway.db", dir.path().display());
    let key = prepare(&store_url).await;
    let up = support::upstream().await;
    let vars = support::config_vars(&store_url);
    let mut gateway = binary::start(
        &vars,
        &["--openai-base-url", &up.url],
        &dir.path().join("gateway.log"),
    )
    .await;
    let client = keymeter::http::client(Duration::from_secs(30)).unwrap();
    let post = |body: Value| {
        client
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(&key)
            .json(&body)
            .send()
    };
    // One answer without usage: billed at its reservation, and the log says so.
    let r = post(chat("nousage", false)).await.unwrap();
    assert_eq!(r.status(), 200);
    let nousage_id = r.headers()["x-keymeter-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    // Four streams of about a second and four answers that take 400 ms, in flight when SIGTERM arrives.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let request = post(chat("slow", i % 2 == 0));
        tasks.spawn(async move {
            let response = request.await.expect("admitted before the shutdown");
            let status = response.status().as_u16();
            let body = response.bytes().await.expect("the answer arrives whole");
            (status, String::from_utf8_lossy(&body).into_owned())
        });
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    gateway.terminate();
    let mut received = 0;
    while let Some(done) = tasks.join_next().await {
        let (status, body) = done.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("[DONE]") || body.contains("chat.completion"),
            "a whole answer: {body}"
        );
        received += 1;
    }
    assert_eq!(received, 8);
    assert_eq!(
        gateway.exit_code(Duration::from_secs(20)).await,
        Some(0),
        "a clean exit; log:\n{}",
        gateway.log()
    );

    // Every answer the clients received is one event; nothing stays reserved.
    let store = support::config(&store_url).connect().await.unwrap();
    let events = events_of(&*store, "alice").await;
    assert_eq!(events.len(), 9, "8 answers in flight + 1 before");
    let exact = events.iter().filter(|e| e.cost == openai_cost()).count();
    assert_eq!(exact, 8, "the eight reported their usage");
    let status = store
        .budget_status(&BudgetScope::Owner("alice".into()), Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.reserved, Decimal::ZERO);
    store.close().await;

    let log = gateway.log();
    assert!(log.contains("keymeter gateway on http://"), "{log}");
    assert!(log.contains("SIGTERM received"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("no usage reported: billing the reservation")
                && l.contains(&nousage_id)),
        "the estimated bill is logged with its request id:\n{log}"
    );
    // No secret the run used appears in the log.
    for secret in [
        key.as_str(),
        SYSTEM_OPENAI_KEY,
        &vars["KEYMETER_PEPPER"][3..],
        &vars["KEYMETER_MASTER_KEYS"][3..],
    ] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

/// A `redis-server` child on a free loopback port, without persistence.
struct Redis {
    child: std::process::Child,
    port: u16,
}

impl Redis {
    fn start(port: u16) -> Option<Redis> {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .spawn()
            .ok()?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis did not start"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Some(Redis { child, port })
    }

    /// SIGKILL: the server is gone at once, as in a crash.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_limiter_that_goes_away_answers_503_fail_closed_and_admits_fail_open() {
    let port = binary::free_port();
    let Some(mut redis) = Redis::start(port) else {
        eprintln!("skipped: no redis-server on this machine (CI installs it)");
        return;
    };
    let limiter = format!("redis://127.0.0.1:{}", redis.port);
    let up = support::upstream().await;
    let mut gateways = Vec::new();
    let mut dirs = Vec::new();
    for fail_open in ["0", "1"] {
        let dir = tempfile::tempdir().unwrap();
        let store = format!("sqlite://{}/gateway.db", dir.path().display());
        let config = support::config_with(
            &store,
            &[
                ("KEYMETER_LIMITER", &limiter),
                ("KEYMETER_LIMITS_FAIL_OPEN", fail_open),
            ],
        );
        let gw = support::serve_with(
            &config,
            support::settings(&up),
            app::server::Limits::default(),
            "ops",
        )
        .await;
        let (_, key) = gw
            .key(
                json!({"name": "k", "owner": "alice", "permissions": ["llm:chat"],
                "rate_limit": "1000/min"}),
            )
            .await;
        gateways.push((gw, key));
        dirs.push(dir);
    }
    let chat_status = |i: usize| {
        let (gw, key) = &gateways[i];
        async move {
            let r = gw
                .post_json("/v1/chat/completions", key, &chat("", false))
                .await;
            let status = r.status().as_u16();
            let retry = r.headers().get("retry-after").cloned();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, retry, body)
        }
    };
    assert_eq!(chat_status(0).await.0, 200);
    assert_eq!(chat_status(1).await.0, 200);

    redis.kill();
    let (status, retry, body) = chat_status(0).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "LIMITER_UNAVAILABLE");
    assert!(retry.is_some(), "Retry-After on a 503");
    let (status, _, body) = chat_status(1).await;
    assert_eq!(status, 200, "failing open admits: {body}");
    let (ready, _, body) = gateways[0]
        .0
        .call(reqwest::Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(ready, 503);
    assert_eq!(body["dependencies"]["limiter"]["status"], "down", "{body}");
    assert_eq!(body["dependencies"]["store"]["status"], "up");

    // Back on the same port: admitted again within a second, without a restart.
    let _redis = Redis::start(port).expect("redis restarts");
    let took = eventually(
        Duration::from_secs(5),
        "admitted after redis returns",
        || {
            let status = chat_status(0);
            async move { status.await.0 == 200 }
        },
    )
    .await;
    eprintln!("recovered {took:?} after redis returned");
    assert!(took <= Duration::from_secs(1), "recovery took {took:?}");
    let (ready, _, _) = gateways[0]
        .0
        .call(reqwest::Method::GET, "/readyz", None, None)
        .await;
    assert_eq!(ready, 200);
}

/// Reads until the server closes the connection; returns what arrived.
async fn read_to_close(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut out = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut out)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_capped() {
    let up = support::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/gateway.db", dir.path().display());
    let settings = app::Settings {
        body_read_timeout: Duration::from_millis(300),
        ..support::settings(&up)
    };
    let limits = app::server::Limits {
        header_read_timeout: Duration::from_millis(300),
        max_connections: 2,
        ..app::server::Limits::default()
    };
    let gw = support::serve_with(&support::config(&store), settings, limits, "ops").await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let (_, key) = gw
        .key(json!({"name": "k", "owner": "alice", "permissions": ["write"]}))
        .await;
    // Wait for the admin call's keep-alive connection to close, so both slots are free.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Headers trickled a line every 100 ms never finish: closed at the header timeout.
    let slow = TcpStream::connect(&addr).await.unwrap();
    let (mut read, mut write) = slow.into_split();
    write
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let trickle = tokio::spawn(async move {
        for i in 0..30 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if write
                .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(2), read.read_to_end(&mut rest)).await;
    let took = started.elapsed();
    trickle.abort();
    assert!(closed.is_ok(), "the trickling connection was closed");
    assert!(
        took < Duration::from_secs(1),
        "closed near the 300 ms header timeout, not after {took:?}"
    );

    // A keep-alive connection that goes idle after its answer is closed at the same bound.
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answered = read_to_close(&mut idle, Duration::from_secs(2))
        .await
        .expect("closed once idle");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");

    // Two silent connections take both slots: a third is served only once the header timeout frees one.
    let _a = TcpStream::connect(&addr).await.unwrap();
    let _b = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let started = Instant::now();
    let mut third = TcpStream::connect(&addr).await.unwrap();
    third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answered = read_to_close(&mut third, Duration::from_secs(3))
        .await
        .expect("served once a slot frees");
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(150),
        "the cap held the third connection back (served after {waited:?})"
    );

    // A body that stops arriving: 408 at the body timeout.
    let mut body = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/v1/usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"model\""
    );
    body.write_all(head.as_bytes()).await.unwrap();
    let answered = read_to_close(&mut body, Duration::from_secs(3))
        .await
        .expect("answered at the body timeout");
    assert!(answered.starts_with("HTTP/1.1 408"), "{answered}");
    assert!(answered.contains("REQUEST_TIMEOUT"), "{answered}");
}
