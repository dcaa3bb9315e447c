//! What a tenant (an organisation's admin, a key without `write`) and a careless client can do to the reference
//! service over loopback, and what they cannot (DESIGN §12 "who may do what"): each test failed before its fix.

mod support;

use keymeter_axum::ClientIp;
use reqwest::Method;
use serde_json::{Value, json};

/// Gives `owner` a monthly budget of `limit` dollars.
async fn monthly_budget(gw: &support::Gateway, owner: &str, limit: &str) {
    let budget = keymeter::ledger::Budget::new(
        keymeter::ledger::BudgetScope::Owner(owner.into()),
        limit.parse().unwrap(),
        keymeter::ledger::BudgetPeriod::Monthly,
    )
    .unwrap();
    gw.app.store.set_budget(&budget).await.unwrap();
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

/// An organisation's admin cannot make keys that act as an owner of another organisation (or of none): the key
/// would read that owner's usage, pay with its provider key and replace that key.
#[tokio::test]
async fn an_organisations_admin_acts_only_for_its_own_owners() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    gw.key(json!({"name": "bob", "owner": "bob", "organization_id": "victims", "permissions": ["llm:chat"]}))
        .await;
    gw.key(json!({"name": "dan", "owner": "dan", "permissions": ["llm:chat"]}))
        .await;
    let (_, attacker) = gw
        .key(json!({"name": "x-admin", "owner": "x-root", "organization_id": "x", "permissions": ["admin", "llm:chat", "reports"]}))
        .await;
    for owner in ["bob", "dan"] {
        let (s, _, body) = gw
            .call(
                Method::POST,
                "/api/v1/api-keys",
                Some(&attacker),
                Some(json!({"name": "mine", "owner": owner, "permissions": ["llm:chat"]})),
            )
            .await;
        assert_eq!(
            (s, code(&body)),
            (403, "OWNER_IN_OTHER_ORGANISATION"),
            "{owner}: {body}"
        );
        assert!(
            !body.to_string().contains("victims"),
            "the other organisation is not named"
        );
    }
    // A new owner is bound to the admin's organisation.
    let (s, _, carol) = gw
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&attacker),
            Some(json!({"name": "carol", "owner": "carol", "permissions": ["llm:chat"]})),
        )
        .await;
    assert_eq!((s, carol["org"].as_str()), (201, Some("x")), "{carol}");
    // The operator's admin spans organisations, but a key for an existing owner names the owner's organisation.
    let (s, _, _) = gw
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&gw.admin),
            Some(json!({"name": "bob 2", "owner": "bob", "permissions": ["llm:chat"]})),
        )
        .await;
    assert_eq!(s, 403);
    let (s, _, _) = gw
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&gw.admin),
            Some(json!({"name": "bob 2", "owner": "bob", "organization_id": "victims", "permissions": ["llm:chat"]})),
        )
        .await;
    assert_eq!(s, 201);
}

/// A key never grants scopes its creator lacks: `*` only from `*`.
#[tokio::test]
async fn keys_never_grant_more_than_their_creator_holds() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, org_admin) = gw
        .key(json!({"name": "a", "owner": "root", "organization_id": "acme", "permissions": ["admin", "llm:*"]}))
        .await;
    for (permissions, want) in [
        (json!(["*"]), 403),
        (json!(["billing"]), 403),
        (json!(["llm:chat", "reports"]), 403),
        (json!(["llm:chat"]), 201),
        (json!(["llm:*", "admin"]), 201),
    ] {
        let (s, _, body) = gw
            .call(
                Method::POST,
                "/api/v1/api-keys",
                Some(&org_admin),
                Some(json!({"name": "k", "owner": "alice", "permissions": permissions})),
            )
            .await;
        assert_eq!(s, want, "{permissions}: {body}");
        if s == 403 {
            assert_eq!(code(&body), "INSUFFICIENT_SCOPE");
        }
    }
}

/// Changing or deleting the owner's provider keys needs `write`; reading whose keys exist needs no scope.
#[tokio::test]
async fn provider_keys_change_only_with_write() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, reader) = gw
        .key(json!({"name": "r", "owner": "alice", "permissions": ["reports"]}))
        .await;
    let (_, writer) = gw
        .key(json!({"name": "w", "owner": "alice", "permissions": ["write"]}))
        .await;
    let set = json!({"openai_api_key": "sk-proj-attackercontrolled0000000000000000000000"});
    let (s, _, body) = gw
        .call(
            Method::PATCH,
            "/v2/users/me/api-key",
            Some(&reader),
            Some(set.clone()),
        )
        .await;
    assert_eq!((s, code(&body)), (403, "INSUFFICIENT_SCOPE"));
    let (s, _, _) = gw
        .call(Method::DELETE, "/v2/users/me/api-key", Some(&reader), None)
        .await;
    assert_eq!(s, 403);
    let (s, _, status) = gw
        .call(
            Method::GET,
            "/v2/users/me/api-key-status",
            Some(&reader),
            None,
        )
        .await;
    assert_eq!((s, &status["has_openai_key"]), (200, &json!(false)));
    let (s, _, _) = gw
        .call(
            Method::PATCH,
            "/v2/users/me/api-key",
            Some(&writer),
            Some(set),
        )
        .await;
    assert_eq!(s, 200);
}

/// Behind a trusted proxy, an `X-Forwarded-For` the service cannot read is no address: a key whose IP rules
/// allow the proxy's network is refused, not let through as the proxy.
#[tokio::test]
async fn an_unreadable_forwarded_header_fails_closed() {
    let up = support::upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/gateway.db", dir.path().display());
    let mut settings = support::settings(&up);
    settings.client_ip = ClientIp::Forwarded {
        header: reqwest::header::HeaderName::from_static("x-forwarded-for"),
        proxies: vec!["127.0.0.0/8".parse().unwrap()],
    };
    let gw = support::serve_with(
        &support::config(&url),
        settings,
        keymeter_gateway::server::Limits::default(),
        "ops",
    )
    .await;
    let (_, internal) = gw
        .key(json!({"name": "i", "owner": "alice", "allowed_ips": ["127.0.0.0/8"], "permissions": ["reports"]}))
        .await;
    let status = |xff: reqwest::header::HeaderValue| {
        let request = gw
            .client
            .get(format!("{}/v2/users/me/api-key-status", gw.url))
            .bearer_auth(&internal)
            .header("x-forwarded-for", xff);
        async move { support::send(request).await.status().as_u16() }
    };
    assert_eq!(
        status(reqwest::header::HeaderValue::from_static("127.0.0.9")).await,
        200
    );
    assert_eq!(
        status(reqwest::header::HeaderValue::from_static("6.6.6.6")).await,
        403
    );
    let unreadable = reqwest::header::HeaderValue::from_bytes(b"6.6.6.6\xa0").unwrap();
    assert_eq!(status(unreadable).await, 403);
}

/// A grace period past what a date can hold is a 422, not a panic that drops the connection.
#[tokio::test]
async fn an_absurd_grace_period_is_refused() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (id, _) = gw
        .key(json!({"name": "k", "owner": "alice", "permissions": ["llm:chat"]}))
        .await;
    for grace in ["9999999999d", "99999999d"] {
        let (s, _, body) = gw
            .call(
                Method::POST,
                &format!("/api/v1/api-keys/{id}/rotate"),
                Some(&gw.admin),
                Some(json!({"grace_period": grace})),
            )
            .await;
        assert_eq!(s, 422, "{grace}: {body}");
    }
}

fn chat(user: &str) -> Value {
    json!({"model": "gpt-4o", "max_tokens": 300, "user": user,
        "messages": [{"role": "user", "content": "Say hello"}]})
}

/// A reused `x-request-id` is answered 409 `DUPLICATE_REQUEST` before anything goes upstream, with the original
/// event and cost once recorded: sequential reuse, concurrent reuse, and an id planted through usage ingest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_answered_once() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, key) = gw
        .key(json!({"name": "k", "owner": "alice", "permissions": ["llm:chat", "write"]}))
        .await;
    let send = |id: &'static str, user: &'static str| {
        let request = gw
            .post("/v1/chat/completions", &key)
            .header("x-request-id", id)
            .json(&chat(user));
        async move {
            let r = support::send(request).await;
            let status = r.status().as_u16();
            let cost = r
                .headers()
                .get("x-keymeter-cost")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, cost, body)
        }
    };
    let (s, cost, _) = send("same", "").await;
    assert_eq!(s, 200);
    let cost = cost.unwrap();
    for _ in 0..4 {
        let (s, again, body) = send("same", "").await;
        assert_eq!((s, code(&body)), (409, "DUPLICATE_REQUEST"), "{body}");
        assert_eq!(again, None, "no answer, so no cost header");
        assert_eq!(body["error"]["cost"].as_str(), Some(cost.as_str()));
        assert!(body["error"]["event_id"].is_string());
    }
    assert_eq!(up.calls().len(), 1, "one upstream call for five requests");

    // Five at once (the stand-in answers after 400 ms): one is forwarded, the others refused while it runs.
    let racing = futures_util::future::join_all((0..5).map(|_| send("race", "slow"))).await;
    let statuses: Vec<u16> = racing.iter().map(|(s, ..)| *s).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 200).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        4,
        "{statuses:?}"
    );
    assert_eq!(up.calls().len(), 2);

    // An id planted through ingest at a low cost cannot make a later chat free.
    let usage = json!({"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1});
    let (s, _, planted) = gw
        .call(
            Method::POST,
            "/api/v1/usage",
            Some(&key),
            Some(json!({"request_id": "planted", "model": "gpt-4o", "usage": usage, "usage_format": "openai"})),
        )
        .await;
    assert_eq!(s, 200, "{planted}");
    let (s, _, body) = send("planted", "").await;
    assert_eq!((s, code(&body)), (409, "DUPLICATE_REQUEST"));
    assert_eq!(body["error"]["event_id"], planted["event_id"]);
    assert_eq!(up.calls().len(), 2);
    // Ingest of an id a chat holds is refused too; once the chat is recorded it is a duplicate.
    let slow = send("held", "slow");
    let ingest = async {
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        gw.call(
            Method::POST,
            "/api/v1/usage",
            Some(&key),
            Some(json!({"request_id": "held", "model": "gpt-4o", "usage": usage, "usage_format": "openai"})),
        )
        .await
    };
    let ((s, ..), (ingested, _, body)) = tokio::join!(slow, ingest);
    assert_eq!(s, 200);
    assert_eq!(
        (ingested, code(&body)),
        (409, "DUPLICATE_REQUEST"),
        "{body}"
    );
}

/// A careless (or clever) client's request fields: every choice is reserved (`n`), each API's own output cap is
/// read (Anthropic's `max_tokens`, never `max_completion_tokens`), and a claimed cheaper tier is not believed
/// when the provider served the default one.
#[tokio::test]
async fn the_reservation_bounds_what_the_request_may_cost() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, key) = gw
        .key(json!({"name": "k", "owner": "alice", "permissions": ["llm:chat", "write"]}))
        .await;
    monthly_budget(&gw, "alice", "0.05").await;
    let post = |path: &'static str, body: Value| {
        let request = gw.post(path, &key).json(&body);
        async move {
            let r = support::send(request).await;
            let status = r.status().as_u16();
            let cost = r
                .headers()
                .get("x-keymeter-cost")
                .map(|v| v.to_str().unwrap().to_owned());
            let body: Value = r.json().await.unwrap_or(Value::Null);
            (status, cost, body)
        }
    };
    // 128 choices of up to 300 tokens of gpt-4o output ($10/M): $0.384 of room needed, $0.05 left.
    let mut many = chat("");
    many["n"] = json!(128);
    let (s, _, body) = post("/v1/chat/completions", many).await;
    assert_eq!((s, code(&body)), (402, "BUDGET_EXCEEDED"), "{body}");
    for n in [0, 129] {
        let mut bad = chat("");
        bad["n"] = json!(n);
        assert_eq!(post("/v1/chat/completions", bad).await.0, 422, "n = {n}");
    }
    // Anthropic honours max_tokens (64,000 tokens of Sonnet output: $0.96), whatever max_completion_tokens says.
    let (s, _, _) = gw
        .call(
            Method::PATCH,
            "/v2/users/me/api-key",
            Some(&key),
            Some(json!({"anthropic_api_key": "sk-ant-api03-alice-own-key-1111111111111"})),
        )
        .await;
    assert_eq!(s, 200);
    let claude = json!({"model": "claude-sonnet-4-5", "max_tokens": 64000, "max_completion_tokens": 1,
        "messages": [{"role": "user", "content": "Say hello"}]});
    let (s, _, body) = post("/v1/messages", claude).await;
    assert_eq!((s, code(&body)), (402, "BUDGET_EXCEEDED"), "{body}");
    assert!(
        up.calls().is_empty(),
        "nothing refused reached the provider"
    );

    // Flex claimed, default served: billed at the default tier.
    let mut flex = chat("");
    flex["model"] = json!("gpt-5");
    flex["service_tier"] = json!("flex");
    let (s, cost, body) = post("/v1/chat/completions", flex).await;
    assert_eq!(s, 200, "{body}");
    let usage = keymeter::pricing::normalize::normalize(
        keymeter::pricing::UsageFormat::OpenAi,
        support::OPENAI_USAGE,
    )
    .unwrap();
    let standard = gw
        .app
        .meter
        .catalog()
        .cost(
            "gpt-5",
            &usage,
            chrono::Utc::now(),
            keymeter::pricing::ServiceTier::Standard,
        )
        .unwrap()
        .total;
    assert_eq!(cost.unwrap(), standard.to_string());
}

/// Usage ingest bounds times and counts by the rule every stored event keeps, so reports cannot be made to
/// disagree or overflow.
#[tokio::test]
async fn ingest_refuses_times_and_counts_no_event_may_hold() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, key) = gw
        .key(json!({"name": "k", "owner": "alice", "permissions": ["write", "reports"]}))
        .await;
    let usage = json!({"prompt_tokens": 10, "completion_tokens": 1, "total_tokens": 11});
    let huge = json!({"prompt_tokens": u64::MAX, "completion_tokens": 0, "total_tokens": u64::MAX});
    for (i, (at, usage)) in [
        (json!("-9999-01-01T00:00:00Z"), usage.clone()),
        (json!("1969-12-31T23:59:59Z"), usage.clone()),
        (json!(null), huge),
    ]
    .into_iter()
    .enumerate()
    {
        let (s, _, body) = gw
            .call(
                Method::POST,
                "/api/v1/usage",
                Some(&key),
                Some(
                    json!({"request_id": format!("bad-{i}"), "model": "gpt-4o", "usage": usage,
                    "usage_format": "openai", "at": at}),
                ),
            )
            .await;
        assert_eq!(s, 422, "{at}: {body}");
    }
    let (_, _, report) = gw
        .call(Method::GET, "/api/v1/usage?by=owner", Some(&key), None)
        .await;
    assert_eq!(report["groups"], json!([]), "nothing was recorded");
}

/// Every refusal is the JSON error body, including a query string that does not parse and a wrong method.
#[tokio::test]
async fn every_error_is_the_json_error_body() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (id, key) = gw
        .key(json!({"name": "k", "owner": "alice", "permissions": ["reports", "billing"]}))
        .await;
    for (method, path, who, want) in [
        (
            Method::GET,
            "/api/v1/usage?by=day&by=owner".to_owned(),
            &key,
            400,
        ),
        (
            Method::GET,
            format!("/api/v1/api-keys/{id}/stats?days=-1"),
            &gw.admin,
            400,
        ),
        (
            Method::GET,
            "/api/v1/api-keys?organization=a&organization=b".to_owned(),
            &gw.admin,
            400,
        ),
        (Method::DELETE, "/api/v1/budget".to_owned(), &key, 405),
        (Method::PUT, "/v1/chat/completions".to_owned(), &key, 405),
    ] {
        let (s, _, body) = gw.call(method.clone(), &path, Some(who), None).await;
        assert_eq!(s, want, "{method} {path}: {body}");
        assert!(body["error"]["code"].is_string(), "{method} {path}: {body}");
        assert!(
            body["error"]["message"].is_string(),
            "{method} {path}: {body}"
        );
    }
}

/// An image URL costs far more tokens than its bytes: each is reserved at the API's per-image ceiling, and a
/// document (whose tokens nothing bounds) is refused before anything is reserved or forwarded.
#[tokio::test]
async fn images_are_reserved_at_their_ceiling_and_documents_refused() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, key) = gw
        .key(json!({"name": "k", "owner": "alice", "permissions": ["llm:chat"]}))
        .await;
    monthly_budget(&gw, "alice", "0.05").await;
    let with = |part: Value| {
        json!({"model": "gpt-4o", "max_tokens": 300, "messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture?"}, part]}]})
    };
    // One image: 48,169 prompt tokens of gpt-4o ($2.50/M) is $0.12, over the $0.05 left.
    let image =
        with(json!({"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}));
    let (s, _, body) = gw
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            Some(image),
        )
        .await;
    assert_eq!((s, code(&body)), (402, "BUDGET_EXCEEDED"), "{body}");
    let document = with(json!({"type": "file", "file": {"file_id": "file-abc"}}));
    let (s, _, body) = gw
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(&key),
            Some(document),
        )
        .await;
    assert_eq!((s, code(&body)), (422, "UNBOUNDED_INPUT"), "{body}");
    assert!(up.calls().is_empty());
    let text = with(json!({"type": "text", "text": "(no picture after all)"}));
    let (s, _, body) = gw
        .call(Method::POST, "/v1/chat/completions", Some(&key), Some(text))
        .await;
    assert_eq!(s, 200, "{body}");
}

/// Made-up keys while an Argon2id key exists each cost a KDF (so timing does not tell which key prefixes exist):
/// an address gets ten failures a minute, then `RATE_LIMITED` with no KDF at all.
#[tokio::test]
async fn a_stranger_gets_a_few_kdfs_and_then_none() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let dir = tempfile::tempdir().unwrap();
    let hasher = support::config(&format!("sqlite://{}/x.db", dir.path().display()))
        .hasher()
        .unwrap();
    let secret = "sk-legacy-argon2-0123456789abcdefXYW";
    let hash = hasher.hash_argon2(secret.as_bytes()).unwrap();
    gw.app
        .issuer
        .import(
            keymeter::keys::NewKey::new("legacy", "alice"),
            hash.as_str(),
            Some(&secret[..8]),
        )
        .await
        .unwrap();
    // A client whose key verifies is never refused, however many requests it has in flight: only failures count.
    // (The first verification runs the KDF; the others find it in the verified-token cache.)
    let (s, _, _) = gw
        .call(
            Method::GET,
            "/v2/users/me/api-key-status",
            Some(secret),
            None,
        )
        .await;
    assert_eq!(s, 200);
    let valid = futures_util::future::join_all((0..30).map(|_| {
        gw.call(
            Method::GET,
            "/v2/users/me/api-key-status",
            Some(secret),
            None,
        )
    }))
    .await;
    let statuses: Vec<u16> = valid.iter().map(|(s, ..)| *s).collect();
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let before = gw.app.verifier.kdf_runs();
    let mut statuses = Vec::new();
    for i in 0..20 {
        let (s, headers, body) = gw
            .call(
                Method::GET,
                "/v2/users/me/api-key-status",
                Some(&format!("made-up-key-number-{i:04}-xxxxxxxx")),
                None,
            )
            .await;
        if s == 429 {
            assert_eq!(code(&body), "RATE_LIMITED");
            assert!(headers.contains_key("retry-after"));
        }
        statuses.push(s);
    }
    assert_eq!(statuses[..10], [401; 10]);
    assert_eq!(statuses[10..], [429; 10]);
    assert_eq!(
        gw.app.verifier.kdf_runs() - before,
        10,
        "one KDF a failure, none once refused"
    );
}
