//! The reference gateway over loopback: a real socket, `reqwest` as the client, a stand-in upstream. Every
//! endpoint of DESIGN §12, every refusal with its status and headers, whose provider key reached the upstream,
//! exact costs, streams (whole, disconnected, without usage), idempotent ingest and owner isolation.

mod support;

use std::time::Duration;

use chrono::Utc;
use keymeter::ledger::{Budget, BudgetPeriod, BudgetScope, UsageEvent};
use keymeter::pricing::{ServiceTier, UsageFormat};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use support::{
    ANTHROPIC_USAGE, OPENAI_USAGE, SYSTEM_OPENAI_KEY, USER_OPENAI_KEY, code, events_of,
    expected_cost, wait_events,
};

fn chat(extra: Value) -> Value {
    let mut body = json!({"model": "gpt-4o", "max_tokens": 500,
        "messages": [{"role": "user", "content": "Say hello"}]});
    if let (Value::Object(b), Value::Object(e)) = (&mut body, extra) {
        b.extend(e);
    }
    body
}

#[tokio::test]
async fn refusals_carry_their_status_code_and_headers() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;

    let (status, _, body) = gw.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));

    // No key, a malformed key, an unknown key: 401 with WWW-Authenticate.
    for key in [
        None,
        Some("km_live_typo"),
        Some("sk-unknown-imported-key-000000"),
    ] {
        let (status, headers, body) = gw
            .call(
                Method::POST,
                "/v1/chat/completions",
                key,
                Some(chat(json!({}))),
            )
            .await;
        assert_eq!(status, 401, "{key:?}: {body}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert!(["MALFORMED", "NOT_FOUND"].contains(&code(&body)), "{body}");
        assert!(body["error"]["message"].as_str().unwrap().len() > 5);
    }
    // x-api-key works as well as a bearer token.
    let (_, reader) = gw
        .key(json!({"name": "reader", "owner": "carol", "permissions": ["reports"]}))
        .await;
    let response = gw
        .client
        .get(format!("{}/v2/users/me/api-key-status", gw.url))
        .header("x-api-key", &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    // A scope the key lacks: 403, and the upstream never hears of it.
    let (status, _, body) = gw
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(&reader),
            Some(chat(json!({}))),
        )
        .await;
    assert_eq!((status, code(&body)), (403, "INSUFFICIENT_SCOPE"));
    let (status, _, body) = gw
        .call(Method::GET, "/api/v1/api-keys", Some(&reader), None)
        .await;
    assert_eq!((status, code(&body)), (403, "INSUFFICIENT_SCOPE"));
    assert!(up.calls().is_empty());

    // An address outside the key's networks: 403.
    let (_, fenced) = gw
        .key(json!({"name": "fenced", "owner": "carol", "allowed_ips": ["10.9.0.0/16"]}))
        .await;
    let (status, _, body) = gw
        .call(
            Method::GET,
            "/v2/users/me/api-key-status",
            Some(&fenced),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (403, "IP_NOT_ALLOWED"));

    // Rate limited: 429 with Retry-After and the RateLimit fields; admitted answers carry them too.
    let (_, limited) = gw
        .key(json!({"name": "limited", "owner": "carol", "rate_limit": "2/min"}))
        .await;
    for left in [1, 0] {
        let (status, headers, _) = gw
            .call(
                Method::GET,
                "/v2/users/me/api-key-status",
                Some(&limited),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert_eq!(headers["ratelimit-policy"], "\"default\";q=2;w=60");
        assert!(
            headers["ratelimit"]
                .to_str()
                .unwrap()
                .starts_with(&format!("\"default\";r={left};t=")),
            "{:?}",
            headers["ratelimit"]
        );
    }
    let (status, headers, body) = gw
        .call(
            Method::GET,
            "/v2/users/me/api-key-status",
            Some(&limited),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (429, "RATE_LIMITED"));
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=30).contains(&retry), "{retry}");
    assert_eq!(headers["ratelimit-policy"], "\"default\";q=2;w=60");
    assert!(
        headers["ratelimit"]
            .to_str()
            .unwrap()
            .starts_with("\"default\";r=0;")
    );

    // An unknown endpoint: 404 with the error body.
    let (status, _, body) = gw.call(Method::GET, "/v1/nothing", None, None).await;
    assert_eq!((status, code(&body)), (404, "NOT_FOUND"));
}

#[tokio::test]
async fn key_administration() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;

    let (status, _, created) = gw
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&gw.admin),
            Some(
                json!({"name": "ci", "organization_id": "acme", "owner": "alice",
                        "permissions": ["llm:chat", "reports"], "expires_in": "30d"}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("km_live_"));
    assert_eq!(created["org"], "acme");
    assert_eq!(created["owner"], "alice");
    assert_eq!(created["scopes"], json!(["llm:chat", "reports"]));
    assert!(created["expires_at"].is_string());
    assert!(created.get("hash").is_none());

    let (status, _, listed) = gw
        .call(
            Method::GET,
            "/api/v1/api-keys?organization=acme",
            Some(&gw.admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["id"], id.as_str());
    assert!(!listed.to_string().contains(&secret));

    // Bad bodies change nothing: JSON that does not parse is 400; a bad value or shape is 422.
    for (body, want) in [
        ("{not json", 400),
        (r#"{"name": "x", "permissions": ["NOT A SCOPE"]}"#, 422),
        (r#"{"name": "x", "expires_in": "soon"}"#, 422),
        (r#"{"name": "x", "rate_limit": "lots"}"#, 422),
        (r#"{"name": "x", "allowed_ips": ["nowhere"]}"#, 422),
        (r#"{"name": 7}"#, 422),
        (r#"{"name": "x", "surprise": true}"#, 422),
    ] {
        let response = gw.post_raw("/api/v1/api-keys", &gw.admin, body).await;
        assert_eq!(response.status().as_u16(), want, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(code(&error), "INVALID_REQUEST", "{body}");
    }
    let (_, _, listed) = gw
        .call(Method::GET, "/api/v1/api-keys", Some(&gw.admin), None)
        .await;
    assert_eq!(
        listed["keys"].as_array().unwrap().len(),
        2,
        "admin and ci only"
    );

    // Rotate with no grace: the old secret is refused at once, the new one works; the id stays.
    let (status, _, rotated) = gw
        .call(
            Method::POST,
            &format!("/api/v1/api-keys/{id}/rotate"),
            Some(&gw.admin),
            Some(json!({"grace_period": "0s"})),
        )
        .await;
    assert_eq!(status, 200, "{rotated}");
    assert_eq!(rotated["id"], id.as_str());
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    let (old, ..) = gw
        .call(
            Method::GET,
            "/v2/users/me/api-key-status",
            Some(&secret),
            None,
        )
        .await;
    let (new, ..) = gw
        .call(
            Method::GET,
            "/v2/users/me/api-key-status",
            Some(&new_secret),
            None,
        )
        .await;
    assert_eq!((old, new), (401, 200));

    // Statistics count the verifications just made.
    let (status, _, stats) = gw
        .call(
            Method::GET,
            &format!("/api/v1/api-keys/{id}/stats"),
            Some(&gw.admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{stats}");
    assert_eq!(stats["key_id"], id.as_str());
    assert_eq!(stats["by_code"]["VALID"], 1, "{stats}");

    // Revoke: the record comes back revoked and the key is refused.
    let (status, _, revoked) = gw
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            Some(&gw.admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert!(revoked["revoked_at"].is_string());
    let (status, _, body) = gw
        .call(
            Method::GET,
            "/v2/users/me/api-key-status",
            Some(&new_secret),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (401, "REVOKED"));

    // Unknown ids: 404 NOT_FOUND_ID.
    for (method, path) in [
        (Method::DELETE, "/api/v1/api-keys/nosuchkey123".to_owned()),
        (
            Method::POST,
            "/api/v1/api-keys/nosuchkey123/rotate".to_owned(),
        ),
        (
            Method::GET,
            "/api/v1/api-keys/nosuchkey123/stats".to_owned(),
        ),
    ] {
        let (status, _, body) = gw.call(method, &path, Some(&gw.admin), None).await;
        assert_eq!((status, code(&body)), (404, "NOT_FOUND_ID"), "{path}");
    }

    // Revoke an organisation's keys; an organisation's admin sees only its own keys.
    let (a1, _) = gw
        .key(json!({"name": "a1", "owner": "g1", "organization_id": "globex"}))
        .await;
    let (_, globex_admin) = gw
        .key(
            json!({"name": "globex admin", "organization_id": "globex", "owner": "gadmin",
                    "permissions": ["admin"]}),
        )
        .await;
    let (status, _, listed) = gw
        .call(Method::GET, "/api/v1/api-keys", Some(&globex_admin), None)
        .await;
    assert_eq!(status, 200);
    assert!(
        listed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .all(|k| k["org"] == "globex")
    );
    let (status, ..) = gw
        .call(
            Method::DELETE,
            &format!("/api/v1/api-keys/{id}"),
            Some(&globex_admin),
            None,
        )
        .await;
    assert_eq!(status, 404, "another organisation's key is not found");
    let (status, _, body) = gw
        .call(
            Method::POST,
            "/api/v1/api-keys/revoke-all?organization=globex",
            Some(&gw.admin),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let revoked = body["revoked"].as_array().unwrap();
    assert_eq!(revoked.len(), 2);
    assert!(revoked.contains(&json!(a1)));
}

#[tokio::test]
async fn byok_the_owners_key_before_the_systems() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, alice) = gw
        .key(json!({"name": "alice", "owner": "alice", "permissions": ["llm:chat", "write"]}))
        .await;
    let status_path = "/v2/users/me/api-key-status";

    let (_, _, status) = gw.call(Method::GET, status_path, Some(&alice), None).await;
    assert_eq!(
        status,
        json!({"has_anthropic_key": false, "has_openai_key": false, "has_google_key": false})
    );
    // No personal key: the system key reaches the upstream.
    let (s, headers, _) = gw
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(&alice),
            Some(chat(json!({}))),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(headers["x-keymeter-credential-source"], "system");
    assert_eq!(up.calls().last().unwrap().key, SYSTEM_OPENAI_KEY);

    // A placeholder or a malformed key is 422 and stores nothing, not even the good key beside it.
    for body in [
        json!({"openai_api_key": "sk-your-key-here"}),
        json!({"openai_api_key": USER_OPENAI_KEY, "anthropic_api_key": "not a key"}),
        json!({}),
    ] {
        let (s, _, error) = gw
            .call(
                Method::PATCH,
                "/v2/users/me/api-key",
                Some(&alice),
                Some(body.clone()),
            )
            .await;
        assert_eq!((s, code(&error)), (422, "INVALID_REQUEST"), "{body}");
        assert!(!error.to_string().contains("your-key-here"));
    }
    let (_, _, status) = gw.call(Method::GET, status_path, Some(&alice), None).await;
    assert_eq!(status["has_openai_key"], false);

    // Her own key: it reaches the upstream instead, and the ledger records whose key paid.
    let (s, _, status) = gw
        .call(
            Method::PATCH,
            "/v2/users/me/api-key",
            Some(&alice),
            Some(json!({"openai_api_key": USER_OPENAI_KEY})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(status["has_openai_key"], true);
    assert!(!status.to_string().contains(USER_OPENAI_KEY));
    let (s, headers, _) = gw
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(&alice),
            Some(chat(json!({}))),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(headers["x-keymeter-credential-source"], "user");
    assert_eq!(up.calls().last().unwrap().key, USER_OPENAI_KEY);
    let events = wait_events(&gw, "alice", 2).await;
    let sources: Vec<_> = events
        .iter()
        .map(|e| e.credential_source.map(|s| s.as_str()))
        .collect();
    assert_eq!(sources, [Some("system"), Some("user")]);

    // Another owner never sees or uses hers.
    let (_, bob) = gw
        .key(json!({"name": "bob", "owner": "bob", "permissions": ["llm:chat", "write"]}))
        .await;
    let (_, _, status) = gw.call(Method::GET, status_path, Some(&bob), None).await;
    assert_eq!(status["has_openai_key"], false);
    gw.call(
        Method::POST,
        "/v1/chat/completions",
        Some(&bob),
        Some(chat(json!({}))),
    )
    .await;
    assert_eq!(up.calls().last().unwrap().key, SYSTEM_OPENAI_KEY);

    // Deleted: back to the system key.
    let (s, _, deleted) = gw
        .call(Method::DELETE, "/v2/users/me/api-key", Some(&alice), None)
        .await;
    assert_eq!((s, deleted["deleted"].as_u64()), (200, Some(1)));
    assert_eq!(deleted["has_openai_key"], false);
    gw.call(
        Method::POST,
        "/v1/chat/completions",
        Some(&alice),
        Some(chat(json!({}))),
    )
    .await;
    assert_eq!(up.calls().last().unwrap().key, SYSTEM_OPENAI_KEY);

    // No Anthropic key anywhere: 424, and nothing reached the upstream.
    let before = up.calls().len();
    let (s, _, body) = gw
        .call(
            Method::POST,
            "/v1/messages",
            Some(&alice),
            Some(json!({"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": []})),
        )
        .await;
    assert_eq!((s, code(&body)), (424, "NO_CREDENTIAL"));
    assert_eq!(up.calls().len(), before);
}

#[tokio::test]
async fn proxied_calls_are_priced_exactly_and_recorded_once() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (key_id, alice) = gw
        .key(json!({"name": "alice", "owner": "alice", "permissions": ["llm:chat", "write"]}))
        .await;
    gw.call(
        Method::PATCH,
        "/v2/users/me/api-key",
        Some(&alice),
        Some(json!({"anthropic_api_key": "sk-ant-api03-alice-own-key-1111111111111"})),
    )
    .await;

    let openai_cost = expected_cost(&gw, "gpt-4o", UsageFormat::OpenAi, OPENAI_USAGE);
    let (s, headers, answer) = gw
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(&alice),
            Some(chat(json!({}))),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(answer["choices"][0]["message"]["content"], "hello");
    assert_eq!(
        headers["x-keymeter-cost"].to_str().unwrap(),
        openai_cost.to_string()
    );
    // A request without an output cap gets the default one, sent upstream so the reservation is a true bound.
    gw.call(
        Method::POST,
        "/v1/chat/completions",
        Some(&alice),
        Some(json!({"model": "gpt-4o", "messages": []})),
    )
    .await;
    assert_eq!(
        up.calls().last().unwrap().body["max_completion_tokens"],
        4096
    );

    let anthropic_cost = expected_cost(
        &gw,
        "claude-sonnet-4-5",
        UsageFormat::Anthropic,
        ANTHROPIC_USAGE,
    );
    let (s, headers, _) = gw
        .call(
            Method::POST,
            "/v1/messages",
            Some(&alice),
            Some(json!({"model": "claude-sonnet-4-5", "max_tokens": 300,
                        "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(
        headers["x-keymeter-cost"].to_str().unwrap(),
        anthropic_cost.to_string()
    );
    assert_eq!(headers["x-keymeter-credential-source"], "user");

    // Non-streamed answers are settled just after they are sent.
    let events = wait_events(&gw, "alice", 3).await;
    assert_eq!(events.len(), 3);
    assert_eq!(events[0].cost, openai_cost);
    assert_eq!(events[2].cost, anthropic_cost);
    assert_eq!(events[2].model, "claude-sonnet-4-5");
    assert!(
        events
            .iter()
            .all(|e| e.key_id.as_deref() == Some(key_id.as_str()))
    );

    // A retried request id records once: the retry is answered 409 without going upstream (DESIGN §15).
    for want in [200, 409] {
        let request = gw
            .post("/v1/chat/completions", &alice)
            .header("x-request-id", "retry-1")
            .json(&chat(json!({})));
        let response = support::send(request).await;
        assert_eq!(response.status(), want);
    }
    wait_events(&gw, "alice", 4).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(events_of(&gw, "alice").await.len(), 4);

    // Upstream errors pass through and release the reservation: nothing recorded, nothing held.
    gw.budget(
        BudgetScope::Owner("alice".into()),
        Decimal::new(100, 0),
        BudgetPeriod::Daily,
    )
    .await;
    let (s, _, body) = gw
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(&alice),
            Some(chat(json!({"user": "fail"}))),
        )
        .await;
    assert_eq!(s, 500);
    assert_eq!(body["error"]["message"], "upstream broke");
    let status = gw
        .app
        .store
        .budget_status(&BudgetScope::Owner("alice".into()), Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.reserved, Decimal::ZERO);
    assert_eq!(events_of(&gw, "alice").await.len(), 4);

    // Unknown model: 422, never priced at zero, never forwarded.
    let before = up.calls().len();
    let (s, _, body) = gw
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(&alice),
            Some(chat(json!({"model": "gpt-nonesuch"}))),
        )
        .await;
    assert_eq!((s, code(&body)), (422, "UNPRICED_MODEL"));
    // Bad JSON is 400, a body without a model 422.
    let response = gw
        .post_raw("/v1/chat/completions", &alice, "{\"model\": ")
        .await;
    assert_eq!(response.status(), 400);
    let (s, _, _) = gw
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(&alice),
            Some(json!({"messages": []})),
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(up.calls().len(), before);
}

#[tokio::test]
async fn streams_are_passed_through_and_billed_even_when_the_client_leaves() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, alice) = gw
        .key(json!({"name": "alice", "owner": "alice", "permissions": ["llm:chat", "write"]}))
        .await;
    let cost = expected_cost(&gw, "gpt-4o", UsageFormat::OpenAi, OPENAI_USAGE);

    // Whole stream: every event arrives, the upstream was asked for usage, the usage is billed.
    let response = gw
        .post_json(
            "/v1/chat/completions",
            &alice,
            &chat(json!({"stream": true})),
        )
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    assert_eq!(text.matches("hi ").count(), 3);
    assert!(text.ends_with("data: [DONE]\n\n"));
    assert_eq!(
        up.calls().last().unwrap().body["stream_options"]["include_usage"],
        true
    );
    let events = wait_events(&gw, "alice", 1).await;
    assert_eq!(events[0].cost, cost);

    // The client leaves after the first chunk of a slow stream: the upstream is read to its usage anyway.
    let slow = chat(json!({"stream": true, "user": "slow"}));
    let mut response = gw.post_json("/v1/chat/completions", &alice, &slow).await;
    let first = response.chunk().await.unwrap().unwrap();
    assert!(!first.is_empty());
    drop(response);
    let events = wait_events(&gw, "alice", 2).await;
    assert_eq!(events[1].cost, cost);

    // A stream that reports no usage is billed for its reservation, the most it could have cost: every byte of
    // the request a prompt token, plus its output cap.
    let body = chat(json!({"stream": true, "user": "nousage"}));
    let response = gw.post_json("/v1/chat/completions", &alice, &body).await;
    response.text().await.unwrap();
    let events = wait_events(&gw, "alice", 3).await;
    let billed = &events[2].usage;
    assert_eq!(billed.output, 500);
    assert_eq!(
        billed.prompt_tokens(),
        serde_json::to_vec(&body).unwrap().len() as u64
    );
    let reserved = gw
        .app
        .meter
        .catalog()
        .cost("gpt-4o", billed, Utc::now(), ServiceTier::Standard)
        .unwrap();
    assert_eq!(events[2].cost, reserved.total);

    // Anthropic's events: usage from message_start and message_delta.
    gw.call(
        Method::PATCH,
        "/v2/users/me/api-key",
        Some(&alice),
        Some(json!({"anthropic_api_key": "sk-ant-api03-alice-own-key-1111111111111"})),
    )
    .await;
    let messages =
        json!({"model": "claude-sonnet-4-5", "max_tokens": 300, "stream": true, "messages": []});
    let response = gw.post_json("/v1/messages", &alice, &messages).await;
    assert!(response.text().await.unwrap().contains("message_stop"));
    let events = wait_events(&gw, "alice", 4).await;
    assert_eq!(
        events[3].cost,
        expected_cost(
            &gw,
            "claude-sonnet-4-5",
            UsageFormat::Anthropic,
            ANTHROPIC_USAGE
        )
    );
}

#[tokio::test]
async fn budgets_refuse_with_402_and_report_their_status() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (id, alice) = gw
        .key(json!({"name": "alice", "owner": "alice", "permissions": ["llm:chat", "billing"]}))
        .await;
    let scope = BudgetScope::Key(id);
    gw.app
        .store
        .set_budget(&Budget::new(scope.clone(), Decimal::new(1, 2), BudgetPeriod::Daily).unwrap())
        .await
        .unwrap();
    let before = up.calls().len();
    let (s, _, body) = gw
        .call(
            Method::POST,
            "/v1/chat/completions",
            Some(&alice),
            Some(chat(json!({"max_tokens": 100000}))),
        )
        .await;
    assert_eq!((s, code(&body)), (402, "BUDGET_EXCEEDED"), "{body}");
    assert_eq!(up.calls().len(), before);

    let (s, _, budget) = gw
        .call(Method::GET, "/api/v1/budget", Some(&alice), None)
        .await;
    assert_eq!(s, 200, "{budget}");
    let budgets = budget["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 1);
    assert_eq!(budgets[0]["limit"], "0.01");
    assert_eq!(budgets[0]["reserved"], "0");
}

#[tokio::test]
async fn usage_ingest_is_idempotent_and_reports_stay_with_their_owner() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, alice) = gw
        .key(json!({"name": "alice", "owner": "alice", "permissions": ["write", "reports"]}))
        .await;
    let (_, bob) = gw
        .key(json!({"name": "bob", "owner": "bob", "permissions": ["write", "reports"]}))
        .await;
    let usage: Value = serde_json::from_str(OPENAI_USAGE).unwrap();
    let ingest =
        json!({"request_id": "sdk-1", "model": "gpt-4o", "usage": usage, "usage_format": "openai"});
    let cost = expected_cost(&gw, "gpt-4o", UsageFormat::OpenAi, OPENAI_USAGE);

    let (s, _, first) = gw
        .call(
            Method::POST,
            "/api/v1/usage",
            Some(&alice),
            Some(ingest.clone()),
        )
        .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["cost"], cost.to_string());
    assert_eq!(first["duplicate"], false);
    let (_, _, again) = gw
        .call(
            Method::POST,
            "/api/v1/usage",
            Some(&alice),
            Some(ingest.clone()),
        )
        .await;
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event_id"], first["event_id"]);
    // The same request id from another owner is that owner's own event.
    let (_, _, bobs) = gw
        .call(
            Method::POST,
            "/api/v1/usage",
            Some(&bob),
            Some(ingest.clone()),
        )
        .await;
    assert_eq!(bobs["duplicate"], false);
    assert_ne!(bobs["event_id"], first["event_id"]);

    // Bad bodies: 400 for JSON that does not parse, 422 for a bad shape or value; nothing recorded.
    for (body, want) in [
        ("{\"request_id\": ".to_owned(), 400),
        (json!({"request_id": "x", "model": "gpt-4o", "usage": usage, "usage_format": "cobol"}).to_string(), 422),
        (json!({"request_id": "x", "model": "gpt-nonesuch", "usage": usage, "usage_format": "openai"}).to_string(), 422),
        (json!({"request_id": "x", "model": "gpt-4o", "usage": {"prompt_tokens": -1}, "usage_format": "openai"}).to_string(), 422),
        (json!({"model": "gpt-4o"}).to_string(), 422),
    ] {
        let response = gw.post_raw("/api/v1/usage", &alice, &body).await;
        assert_eq!(response.status().as_u16(), want, "{body}");
    }
    assert_eq!(events_of(&gw, "alice").await.len(), 1);

    // Reports: each owner sees its own; another owner's needs admin.
    let (s, _, report) = gw
        .call(Method::GET, "/api/v1/usage?by=model", Some(&alice), None)
        .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["total"], cost.to_string());
    assert_eq!(report["groups"][0]["key"], "gpt-4o");
    assert_eq!(report["groups"][0]["events"], 1);
    let (s, _, body) = gw
        .call(Method::GET, "/api/v1/usage?owner=alice", Some(&bob), None)
        .await;
    assert_eq!((s, code(&body)), (403, "INSUFFICIENT_SCOPE"));
    let (s, _, report) = gw
        .call(
            Method::GET,
            "/api/v1/usage?by=owner&owner=alice&since=2020-01-01&tz=Europe/Berlin",
            Some(&gw.admin),
            None,
        )
        .await;
    assert_eq!(s, 200, "{report}");
    assert_eq!(report["groups"][0]["key"], "alice");
    assert_eq!(report["groups"].as_array().unwrap().len(), 1);
    let (s, _, _) = gw
        .call(
            Method::GET,
            "/api/v1/usage?since=yesterday",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(s, 422);
}

/// `POST /api/v1/usage/{request_id}/adjust` replaces an estimated event with exact usage (DESIGN §13: "and the
/// admin API"): admins only, an organisation's admin within its organisation, exact events left alone.
#[tokio::test]
async fn admins_adjust_estimated_events() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let mut estimated = UsageEvent::new(
        Some("lost-1"),
        Utc::now(),
        "alice",
        "openai",
        "gpt-4o",
        keymeter::pricing::Usage {
            input: 4000,
            output: 16000,
            ..Default::default()
        },
        "0.17".parse().unwrap(),
        &keymeter::random::OsRandom,
    )
    .unwrap()
    .org("acme");
    estimated.estimated = true;
    gw.app.store.record(&estimated).await.unwrap();
    let (_, acme_admin) = gw
        .key(json!({"name": "a", "owner": "root-acme", "organization_id": "acme", "permissions": ["admin"]}))
        .await;
    let (_, other_admin) = gw
        .key(json!({"name": "o", "owner": "root-other", "organization_id": "other", "permissions": ["admin"]}))
        .await;
    let (_, alice) = gw
        .key(json!({"name": "alice", "owner": "alice", "organization_id": "acme", "permissions": ["write", "reports"]}))
        .await;
    let usage: Value = serde_json::from_str(OPENAI_USAGE).unwrap();
    let body = json!({"usage": usage, "usage_format": "openai"});
    let path = "/api/v1/usage/lost-1/adjust";

    let (s, _, refused) = gw
        .call(Method::POST, path, Some(&alice), Some(body.clone()))
        .await;
    assert_eq!((s, code(&refused)), (403, "INSUFFICIENT_SCOPE"));
    let (s, _, _) = gw
        .call(Method::POST, path, Some(&other_admin), Some(body.clone()))
        .await;
    assert_eq!(s, 404, "another organisation's event is not found");
    let (s, _, _) = gw
        .call(
            Method::POST,
            path,
            Some(&acme_admin),
            Some(json!({"usage": usage, "usage_format": "cobol"})),
        )
        .await;
    assert_eq!(s, 422);
    assert!(
        events_of(&gw, "alice").await[0].estimated,
        "nothing changed yet"
    );

    let (s, _, adjusted) = gw
        .call(Method::POST, path, Some(&acme_admin), Some(body.clone()))
        .await;
    assert_eq!(s, 200, "{adjusted}");
    let cost = expected_cost(&gw, "gpt-4o", UsageFormat::OpenAi, OPENAI_USAGE);
    assert_eq!(
        adjusted,
        json!({"request_id": "lost-1", "event_id": estimated.event_id, "cost": cost.to_string(),
               "previous_cost": "0.17", "replaced": true})
    );
    let events = events_of(&gw, "alice").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].cost, cost);
    assert!(!events[0].estimated && events[0].estimated_first);

    let (s, _, again) = gw
        .call(Method::POST, path, Some(&gw.admin), Some(body.clone()))
        .await;
    assert_eq!((s, code(&again)), (409, "NOT_ESTIMATED"));
    let (s, _, _) = gw
        .call(
            Method::POST,
            "/api/v1/usage/nonesuch/adjust",
            Some(&gw.admin),
            Some(body),
        )
        .await;
    assert_eq!(s, 404);
}

/// What the console reads beside the seeds' fields: each provider's personal and system key in `/api/v1/key`,
/// today's prices in `/v1/models`, and one provider's personal key deleted on its own.
#[tokio::test]
async fn provider_status_prices_and_one_provider_deleted() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, alice) = gw
        .key(json!({"name": "alice", "owner": "alice", "permissions": ["llm:chat", "write"]}))
        .await;
    let providers = |me: &Value| {
        me["providers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                (
                    p["provider"].as_str().unwrap().to_owned(),
                    p["personal"].as_bool().unwrap(),
                    p["system"].as_bool().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    let (_, _, me) = gw
        .call(Method::GET, "/api/v1/key", Some(&alice), None)
        .await;
    let p = |name: &str, personal, system| (name.to_owned(), personal, system);
    assert_eq!(
        providers(&me),
        [
            p("anthropic", false, false),
            p("openai", false, true),
            p("google", false, true)
        ]
    );
    let body =
        json!({"openai_api_key": USER_OPENAI_KEY, "google_api_key": support::USER_GOOGLE_KEY});
    let (s, _, _) = gw
        .call(
            Method::PATCH,
            "/v2/users/me/api-key",
            Some(&alice),
            Some(body),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _, deleted) = gw
        .call(
            Method::DELETE,
            "/v2/users/me/api-key?provider=openai",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!((s, deleted["deleted"].as_u64()), (200, Some(1)));
    assert_eq!(
        (&deleted["has_openai_key"], &deleted["has_google_key"]),
        (&json!(false), &json!(true)),
        "only OpenAI's went"
    );
    let (s, _, body) = gw
        .call(
            Method::DELETE,
            "/v2/users/me/api-key?provider=mistral",
            Some(&alice),
            None,
        )
        .await;
    assert_eq!((s, code(&body)), (422, "INVALID_REQUEST"));
    let (_, _, me) = gw
        .call(Method::GET, "/api/v1/key", Some(&alice), None)
        .await;
    assert_eq!(providers(&me)[2], p("google", true, true));

    // Prices per 1M tokens, exact decimal strings from the catalog.
    let (s, _, models) = gw.call(Method::GET, "/v1/models", Some(&alice), None).await;
    assert_eq!(s, 200);
    let mini = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == "gpt-4o-mini")
        .expect("gpt-4o-mini listed");
    let catalog = gw.app.meter.catalog();
    let window = catalog
        .resolve("gpt-4o-mini")
        .unwrap()
        .window_at(Utc::now())
        .unwrap()
        .clone();
    let per_million = |class| {
        (window
            .rate(&window.bands[0], ServiceTier::Standard, class)
            .unwrap()
            * Decimal::from(1_000_000))
        .normalize()
        .to_string()
    };
    use keymeter::pricing::TokenClass;
    assert_eq!(
        mini["pricing"]["input_per_1m"],
        per_million(TokenClass::Input)
    );
    assert_eq!(
        mini["pricing"]["output_per_1m"],
        per_million(TokenClass::Output)
    );
    assert_eq!(
        mini["pricing"]["cached_input_per_1m"],
        per_million(TokenClass::CacheRead)
    );
    assert_eq!(mini["pricing"]["currency"], "USD");
    assert_eq!(
        mini["pricing"]["input_per_1m"], "0.15",
        "gpt-4o-mini's published price"
    );
}
