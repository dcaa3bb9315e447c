//! Concurrency limits over loopback (DESIGN §15): at most N requests in flight per key, owner or organisation,
//! refused with 429 `TOO_MANY_CONCURRENT` before anything is resolved, reserved or sent; and 1,000 requests cut
//! mid-flight — clients gone, upstream timeouts, a gateway killed with `kill -9` — whose slots all come back.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use keymeter::ledger::BudgetScope;
use keymeter::limits::{LimitScope, Limits, SlotStore};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use support::{Gateway, binary, code, events_of, wait_events};

fn chat(user: &str, stream: bool) -> Value {
    json!({"model": "gpt-4o-mini", "max_tokens": 50, "stream": stream, "user": user,
        "messages": [{"role": "user", "content": "Say hello"}]})
}

async fn parallel(store: &dyn SlotStore, scope: &LimitScope) -> u64 {
    store
        .in_flight(std::slice::from_ref(scope), Utc::now())
        .await
        .unwrap()[0]
}

/// Where the gateway keeps its slots (its own memory on SQLite, unless `KEYMETER_LIMITER` says otherwise).
fn slots_of(gw: &Gateway) -> std::sync::Arc<dyn SlotStore> {
    gw.app.verifier.slots().expect("slots").store().clone()
}

async fn set_parallel(gw: &Gateway, scope: LimitScope, max: u32) {
    let limits = Limits {
        max_parallel: Some(max),
        ..Limits::default()
    };
    gw.app.store.set_limits(&scope, &limits).await.unwrap();
}

/// Waits (at most `within`) until `scope` has `n` requests in flight.
async fn wait_in_flight(store: &dyn SlotStore, scope: &LimitScope, n: u64, within: Duration) {
    let started = Instant::now();
    loop {
        let now = parallel(store, scope).await;
        if now == n {
            return;
        }
        assert!(
            started.elapsed() < within,
            "{scope} still has {now} requests in flight, not {n}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_scope_refuses_with_429_naming_it_and_spends_nothing() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    gw.monthly_budget("busy", 10).await;
    // The admin API sets a key's own limit at creation.
    let (id, key) = gw
        .key(
            json!({"name": "two", "owner": "busy", "permissions": ["llm:chat"], "max_parallel": 2}),
        )
        .await;
    let key_scope = LimitScope::Key(id.clone());

    // Two slow streams hold both slots while they run.
    let mut streams = Vec::new();
    for _ in 0..2 {
        let response = gw
            .post_json("/v1/chat/completions", &key, &chat("slow", true))
            .await;
        assert_eq!(response.status(), 200);
        streams.push(response);
    }
    assert_eq!(parallel(&*slots_of(&gw), &key_scope).await, 2);
    let (calls, events) = (up.calls().len(), events_of(&gw, "busy").await.len());
    let reserved = reserved_of(&gw, "busy").await;
    assert!(
        reserved > Decimal::ZERO,
        "the streams hold their reservations"
    );
    let refused = gw
        .post_json("/v1/chat/completions", &key, &chat("", false))
        .await;
    assert_eq!(refused.status(), 429);
    assert_eq!(refused.headers()["retry-after"], "1");
    let body: Value = refused.json().await.unwrap();
    assert_eq!(code(&body), "TOO_MANY_CONCURRENT", "{body}");
    assert_eq!(body["error"]["scope"], format!("key:{id}"));
    assert_eq!(body["error"]["limit"], 2);
    assert_eq!(body["error"]["in_flight"], 2);
    assert_eq!(
        up.calls().len(),
        calls,
        "a refused request reached the upstream"
    );
    assert_eq!(events_of(&gw, "busy").await.len(), events);
    assert_eq!(
        reserved_of(&gw, "busy").await,
        reserved,
        "the refusal reserved nothing"
    );

    // Read to their end, the streams give their slots back; the next request is served.
    for s in streams {
        s.bytes().await.unwrap();
    }
    wait_in_flight(&*slots_of(&gw), &key_scope, 0, Duration::from_secs(5)).await;
    let served = gw
        .post_json("/v1/chat/completions", &key, &chat("", false))
        .await;
    assert_eq!(served.status(), 200);
    wait_events(&gw, "busy", 3).await;

    // The owner's and the organisation's limits count every key of theirs.
    set_parallel(&gw, LimitScope::Owner("busy".into()), 1).await;
    let (_, other) = gw
        .key(json!({"name": "other", "owner": "busy", "permissions": ["llm:chat"]}))
        .await;
    // The owner's limit is read with the rate limits and trusted for a second: wait the change in.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let holding = gw
        .post_json("/v1/chat/completions", &key, &chat("slow", true))
        .await;
    assert_eq!(holding.status(), 200);
    let refused = gw
        .post_json("/v1/chat/completions", &other, &chat("", false))
        .await;
    assert_eq!(refused.status(), 429);
    let body: Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["scope"], "owner:busy", "{body}");
    assert_eq!(body["error"]["limit"], 1);
    holding.bytes().await.unwrap();
}

/// What `owner`'s open reservations hold.
async fn reserved_of(gw: &Gateway, owner: &str) -> Decimal {
    gw.app
        .store
        .budget_status(&BudgetScope::Owner(owner.into()), Utc::now())
        .await
        .unwrap()
        .expect("a budget")
        .reserved
}

/// Fires `n` requests with at most `at_once` in flight from the client; each is cut when `cut` says. Returns how
/// many the gateway answered 429 before the cut.
async fn fire(
    gw: &Gateway,
    key: &str,
    body: Value,
    n: usize,
    at_once: usize,
    cut: Duration,
) -> (usize, usize) {
    let client = keymeter::http::client(cut).unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(at_once));
    let (refused, cancelled) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let permit = gate.clone().acquire_owned().await.unwrap();
        let request = client
            .post(format!("{}/v1/chat/completions", gw.url))
            .bearer_auth(key)
            .json(&body);
        let (refused, cancelled) = (refused.clone(), cancelled.clone());
        tasks.spawn(async move {
            // The client's timeout covers the whole exchange: a stream or a slow answer is cut mid-flight.
            let outcome = match request.send().await {
                Ok(r) if r.status() == 429 => Some(true),
                Ok(r) => r.bytes().await.err().map(|_| false),
                Err(_) => Some(false),
            };
            match outcome {
                Some(true) => refused.fetch_add(1, Ordering::Relaxed),
                Some(false) => cancelled.fetch_add(1, Ordering::Relaxed),
                None => 0,
            };
            drop(permit);
        });
    }
    while tasks.join_next().await.is_some() {}
    (
        refused.load(Ordering::Relaxed),
        cancelled.load(Ordering::Relaxed),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slots_of_requests_cut_mid_flight_all_come_back() {
    let up = support::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/gateway.db", dir.path().display());
    // A first byte waited for at most 300 ms: the `long` answers (5 s) time out upstream.
    let settings = support::app::Settings {
        first_byte_timeout: Duration::from_millis(300),
        ..support::settings(&up)
    };
    let gw = support::serve_with(
        &support::config(&url),
        settings,
        support::app::server::Limits::default(),
        "ops",
    )
    .await;
    gw.monthly_budget("cut", 1000).await;
    let (id, key) = gw
        .key(
            json!({"name": "cut", "owner": "cut", "permissions": ["llm:chat"], "max_parallel": 64}),
        )
        .await;
    let scope = LimitScope::Key(id);

    // 600 streams of a second whose clients leave after 150 ms, 32 at once (of the 64 slots): each slot is given
    // back the moment the gateway sees its client gone (the exchange itself runs on to its settle), so the
    // clients' next requests find room.
    let (refused_a, cut_a) = fire(
        &gw,
        &key,
        chat("slow", true),
        600,
        32,
        Duration::from_millis(150),
    )
    .await;
    // 400 answers the provider never starts in time: the gateway's first-byte timeout ends them (504).
    let (refused_b, _) = fire(
        &gw,
        &key,
        chat("long", false),
        400,
        32,
        Duration::from_secs(5),
    )
    .await;
    assert!(cut_a > 0, "clients left mid-stream");
    // With half the slots to spare, only a release slower than a client's whole request could refuse one.
    assert!(
        refused_a + refused_b <= 10,
        "{} of 1,000 refused: slots of cut requests were kept",
        refused_a + refused_b
    );
    wait_in_flight(&*slots_of(&gw), &scope, 0, Duration::from_secs(10)).await;
    assert_eq!(gw.app.verifier.slots().expect("slots").held(), 0);
    // Billed: every exchange that reached the provider is one event, none left open.
    let reached = up.calls().len();
    let events = wait_events(&gw, "cut", reached).await;
    assert_eq!(events.len(), reached);
    assert_eq!(reserved_of(&gw, "cut").await, Decimal::ZERO);
    eprintln!(
        "1,000 cut mid-flight: {cut_a} streams left by their client, {} answers timed out upstream, \
         {} refused 429 while slots were held; {reached} reached the provider",
        400 - refused_b,
        refused_a + refused_b
    );
    // Every slot is back: 64 at once are admitted again.
    let (refused, _) = fire(
        &gw,
        &key,
        chat("slow", true),
        64,
        64,
        Duration::from_millis(200),
    )
    .await;
    assert_eq!(refused, 0, "all 64 slots came back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_slots_lapse_within_their_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}/gateway.db", dir.path().display());
    let key = support::prepare_alice(&store_url, 1000).await;
    let store = support::config(&store_url).connect().await.unwrap();
    store
        .set_limits(
            &LimitScope::Owner("alice".into()),
            &Limits {
                max_parallel: Some(200),
                ..Limits::default()
            },
        )
        .await
        .unwrap();
    let scope = LimitScope::Owner("alice".into());
    let up = support::upstream().await;
    let mut vars = support::config_vars(&store_url);
    vars.insert("KEYMETER_CLAIM_TTL".into(), "2s".into());
    // Slots in the database (as several processes on one file keep them): a killed process leaves them there.
    // Kept in the process's memory (the default on SQLite), they die with it.
    vars.insert("KEYMETER_LIMITER".into(), "store".into());
    let args = ["--openai-base-url", up.url.as_str()];
    let log = dir.path().join("gateway.log");
    let mut gateway = binary::start(&vars, &args, &log).await;

    // 200 streams in flight, each holding a slot, when the gateway is killed.
    let client = keymeter::http::client(Duration::from_secs(30)).unwrap();
    let mut open = Vec::new();
    for _ in 0..200 {
        let request = client
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(&key)
            .json(&chat("slow", true));
        open.push(tokio::spawn(async move { request.send().await }));
    }
    let mut responses = Vec::new();
    for o in open {
        let response = o.await.unwrap().expect("answered");
        assert_eq!(response.status(), 200);
        responses.push(response);
    }
    assert_eq!(parallel(&*store, &scope).await, 200);
    gateway.child.start_kill().unwrap(); // SIGKILL
    gateway.child.wait().await.unwrap();
    let killed = Instant::now();
    drop(responses);
    // Nobody renews them now: they lapse within the 2 s TTL (and a heartbeat's third of it), not minutes.
    wait_in_flight(&*store, &scope, 0, Duration::from_secs(4)).await;
    let lapsed = killed.elapsed();
    assert!(lapsed <= Duration::from_secs(3), "lapsed after {lapsed:?}");

    // A new instance admits the whole 200 again.
    let gateway = binary::start(&vars, &args, &log).await;
    let mut open = Vec::new();
    for _ in 0..200 {
        let request = client
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(&key)
            .json(&chat("slow", true));
        open.push(tokio::spawn(async move { request.send().await }));
    }
    for o in open {
        let response = o.await.unwrap().expect("answered");
        assert_eq!(
            response.status(),
            200,
            "a slot of the killed instance was still held"
        );
        response.bytes().await.unwrap();
    }
    eprintln!("200 slots of a killed gateway lapsed {lapsed:?} after the kill (TTL 2 s)");
    store.close().await;
}

/// A client that waits for each answer never meets its own last request's slot: with room for one, 60 requests
/// one after another (whole answers, streams, refusals) are all served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_after_another_never_meets_its_own_slot() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    gw.monthly_budget("seq", 100).await;
    let (_, key) = gw
        .key(json!({"name": "one", "owner": "seq", "permissions": ["llm:chat"], "max_parallel": 1}))
        .await;
    for i in 0..60 {
        let body = match i % 3 {
            0 => chat("", false),
            1 => chat("", true),
            // The provider refuses: its error passes through, and the slot is back all the same.
            _ => chat("fail", false),
        };
        let answer = gw.post_json("/v1/chat/completions", &key, &body).await;
        let status = answer.status().as_u16();
        answer.bytes().await.unwrap();
        assert_eq!(status, if i % 3 == 2 { 500 } else { 200 }, "request {i}");
    }
}
