//! `GET /metrics` (DESIGN §14): what the gateway counts, in Prometheus' text format, with bounded labels; and
//! `--metrics-listen`, which serves it on a listener of its own.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use support::binary;

/// The value of the sample `name{labels}` (labels exactly as written, in order), if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

async fn scrape(client: &reqwest::Client, url: &str) -> (u16, String, String) {
    let response = client.get(format!("{url}/metrics")).send().await.unwrap();
    let status = response.status().as_u16();
    let kind = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    (status, kind, response.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_answers_verdicts_caches_and_dependencies_with_bounded_labels() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    gw.monthly_budget("metered", 100).await;
    let (id, key) = gw
        .key(json!({"name": "m", "owner": "metered", "permissions": ["llm:chat"], "rate_limit": "3/min"}))
        .await;
    // The stand-in reports 1,200 prompt and 300 output tokens: a body of 1,500 bytes and 500 output tokens
    // reserve more than that.
    let prompt = "Say hello. ".repeat(140);
    let chat = json!({"model": "gpt-4o-mini", "max_tokens": 500,
        "messages": [{"role": "user", "content": prompt}]});
    // The third asks for one output token, and the stand-in answers 300: a settle above its reservation.
    let tiny = json!({"model": "gpt-4o-mini", "max_tokens": 1,
        "messages": [{"role": "user", "content": prompt}]});
    let mut request_ids = Vec::new();
    for body in [&chat, &chat, &tiny] {
        let response = gw.post_json("/v1/chat/completions", &key, body).await;
        assert_eq!(response.status(), 200);
        request_ids.push(
            response.headers()["x-keymeter-request-id"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
        response.bytes().await.unwrap();
    }
    // The fourth is over the key's 3/min; then a wrong key and a path that does not exist.
    let limited = gw.post_json("/v1/chat/completions", &key, &chat).await;
    assert_eq!(limited.status(), 429);
    let wrong = gw
        .post_json("/v1/chat/completions", "km_live_nope", &chat)
        .await;
    assert_eq!(wrong.status(), 401);
    let missing = gw
        .client
        .get(format!("{}/no/such/path/{id}", gw.url))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);

    // A request is billed after its answer has gone: scrape until the third one's settle is counted.
    let started = std::time::Instant::now();
    let (status, kind, text) = loop {
        let scraped = scrape(&gw.client, &gw.url).await;
        let settled = sample(&scraped.2, "keymeter_settles_above_reservation_total");
        if settled == Some(1.0) || started.elapsed() > Duration::from_secs(10) {
            break scraped;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(status, 200);
    assert!(kind.starts_with("text/plain; version=0.0.4"), "{kind}");
    let requests = |route: &str, status: u16| {
        sample(
            &text,
            &format!(
                "keymeter_http_requests_total{{method=\"POST\",route=\"{route}\",status=\"{status}\"}}"
            ),
        )
    };
    assert_eq!(requests("/v1/chat/completions", 200), Some(3.0), "{text}");
    assert_eq!(requests("/v1/chat/completions", 429), Some(1.0));
    assert_eq!(requests("/v1/chat/completions", 401), Some(1.0));
    assert_eq!(
        sample(
            &text,
            "keymeter_http_requests_total{method=\"GET\",route=\"unmatched\",status=\"404\"}"
        ),
        Some(1.0),
        "an unmatched path is one label, not its path"
    );
    // Verdicts by code: the deferred rate limit counts its refusal as RATE_LIMITED.
    let verdict = |code: &str| {
        sample(
            &text,
            &format!("keymeter_verdicts_total{{code=\"{code}\"}}"),
        )
    };
    assert!(verdict("VALID").unwrap() >= 4.0);
    assert_eq!(verdict("RATE_LIMITED"), Some(1.0));
    assert_eq!(
        verdict("MALFORMED").unwrap() + verdict("NOT_FOUND").unwrap(),
        1.0
    );
    assert_eq!(verdict("REVOKED"), Some(0.0), "every code is listed");
    // The gateway's own time, every answer before this scrape; the provider's, the three it answered.
    let answered = sample(&text, "keymeter_overhead_seconds_count").unwrap();
    assert!(answered >= 6.0, "{answered}");
    assert_eq!(sample(&text, "keymeter_upstream_seconds_count"), Some(3.0));
    assert!(sample(&text, "keymeter_overhead_seconds_bucket{le=\"+Inf\"}").unwrap() >= 6.0);
    // The caches: the key's record and the provider key read again from memory.
    let lookups = |cache: &str, result: &str| {
        sample(
            &text,
            &format!("keymeter_cache_lookups_total{{cache=\"{cache}\",result=\"{result}\"}}"),
        )
        .unwrap_or_else(|| panic!("no {cache} {result} in\n{text}"))
    };
    assert!(lookups("keys", "hit") >= 1.0);
    assert!(lookups("credentials", "hit") >= 1.0);
    assert!(lookups("credentials", "miss") >= 1.0);
    assert_eq!(
        sample(&text, "keymeter_settles_above_reservation_total"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "keymeter_dependency_up{dependency=\"store\"}"),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "keymeter_dependency_up{dependency=\"limiter\"}"),
        Some(1.0)
    );
    // Bounded labels: no key id, owner, secret or request id anywhere.
    for secret in [id.as_str(), "metered", key.as_str()]
        .into_iter()
        .chain(request_ids.iter().map(String::as_str))
    {
        assert!(!text.contains(secret), "{secret:?} is in the metrics");
    }
    // A scrape is itself an answer: the next one counts it (and every one before).
    let scraped = sample(
        &text,
        "keymeter_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"}",
    )
    .unwrap_or(0.0);
    let (_, _, again) = scrape(&gw.client, &gw.url).await;
    assert_eq!(
        sample(
            &again,
            "keymeter_http_requests_total{method=\"GET\",route=\"/metrics\",status=\"200\"}"
        ),
        Some(scraped + 1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_listen_serves_them_on_their_own_listener_with_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}/gateway.db", dir.path().display());
    let key = support::prepare_alice(&store, 1000).await;
    let up = support::upstream().await;
    let vars: HashMap<String, String> = support::config_vars(&store);
    let metrics_addr = format!("127.0.0.1:{}", binary::free_port());
    let log = dir.path().join("gateway.log");
    let gateway = binary::start(
        &vars,
        &[
            "--openai-base-url",
            up.url.as_str(),
            "--metrics-listen",
            metrics_addr.as_str(),
        ],
        &log,
    )
    .await;
    let client = keymeter::http::client(Duration::from_secs(10)).unwrap();
    // Three requests: the first takes the budget lease (a draw that waited for the store), the next two draw
    // from it in memory.
    for _ in 0..3 {
        let response = client
            .post(format!("{}/v1/chat/completions", gateway.url))
            .bearer_auth(&key)
            .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.headers().contains_key("x-keymeter-overhead-ms"));
        response.bytes().await.unwrap();
    }

    let (status, _, _) = scrape(&client, &gateway.url).await;
    assert_eq!(
        status, 404,
        "not beside the API when it has a listener of its own"
    );
    let (status, _, text) = scrape(&client, &format!("http://{metrics_addr}")).await;
    assert_eq!(status, 200);
    assert_eq!(
        sample(
            &text,
            "keymeter_http_requests_total{method=\"POST\",route=\"/v1/chat/completions\",status=\"200\"}"
        ),
        Some(3.0),
        "{text}"
    );
    // With the journal, holds are drawn from budget leases: the first takes the lease (a miss), the rest hit.
    let draws = |result: &str| {
        sample(
            &text,
            &format!("keymeter_lease_draws_total{{result=\"{result}\"}}"),
        )
        .unwrap_or_else(|| panic!("no lease draws {result} in\n{text}"))
    };
    // (A machine slow enough to let the 1 s window pass between them turns a hit into a miss: never a fallback.)
    assert_eq!(draws("miss") + draws("hit"), 3.0, "{text}");
    assert!(draws("hit") >= 1.0, "{text}");
    assert_eq!(draws("fallback"), 0.0, "{text}");
    // The binary journals beside SQLite: its depth, size and lag are there.
    for gauge in [
        "keymeter_journal_backlog",
        "keymeter_journal_bytes",
        "keymeter_journal_lag_seconds",
    ] {
        assert!(sample(&text, gauge).is_some(), "no {gauge} in\n{text}");
    }
    gateway.terminate();
}
