//! Governance per key over loopback (DESIGN §15): model allowlists on a key, its owner and its organisation,
//! refused with 403 `MODEL_NOT_ALLOWED` before anything is resolved, reserved or sent, and the models list
//! narrowed to what they permit.

mod support;

use chrono::Utc;
use keymeter::keys::models::parse_rules;
use keymeter::ledger::{BudgetPeriod, BudgetScope};
use keymeter::limits::{LimitScope, Limits};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use support::{Gateway, Upstream, code, events_of, wait_events};

fn chat(model: &str) -> Value {
    json!({"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": "Say hello"}]})
}

/// Asks for `model` with `key`: the status and the error body (or the answer).
async fn ask(gw: &Gateway, key: &str, path: &str, model: &str) -> (u16, Value) {
    let body = if path.contains(':') {
        json!({"contents": []})
    } else {
        chat(model)
    };
    let path = path.replace("{model}", model);
    let response = gw.post_json(&path, key, &body).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// A one-second stream (the stand-in's `slow`), its headers read: it holds its slot and reservation until read.
async fn slow_stream(gw: &Gateway, key: &str) -> reqwest::Response {
    let body = json!({"model": "gpt-4o-mini", "max_tokens": 50, "stream": true, "user": "slow",
        "messages": [{"role": "user", "content": "Say hello"}]});
    gw.post_json("/v1/chat/completions", key, &body).await
}

/// Sets the model allowlist of `scope` (an owner's or organisation's limits).
async fn allow(gw: &Gateway, scope: LimitScope, rules: &str) {
    let limits = Limits {
        models: parse_rules(rules).unwrap(),
        ..Limits::default()
    };
    gw.app.store.set_limits(&scope, &limits).await.unwrap();
}

/// A 403 for `model` naming `scope`, with nothing sent upstream or billed to `gov`.
async fn refused(gw: &Gateway, up: &Upstream, key: &str, path: &str, model: &str, scope: &str) {
    let (calls, events) = (up.calls().len(), events_of(gw, "gov").await.len());
    let (status, body) = ask(gw, key, path, model).await;
    assert_eq!(
        (status, code(&body)),
        (403, "MODEL_NOT_ALLOWED"),
        "{model}: {body}"
    );
    assert_eq!(body["error"]["model"], model);
    assert_eq!(body["error"]["scope"], scope);
    assert!(body["error"]["message"].as_str().unwrap().contains(model));
    assert_eq!(up.calls().len(), calls, "{model} reached the upstream");
    assert_eq!(events_of(gw, "gov").await.len(), events);
}

#[tokio::test]
async fn model_allowlists_refuse_before_anything_is_spent() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    gw.monthly_budget("gov", 10).await;

    // The key's own list: OpenAI's gpt-4o family and anything of Anthropic's. The record shows it.
    let (status, _, created) = gw
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&gw.admin),
            Some(
                json!({"name": "narrow", "owner": "gov", "permissions": ["llm:chat"],
                "allowed_models": ["gpt-4o*", "anthropic/*"]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["allowed_models"], json!(["gpt-4o*", "anthropic/*"]));
    let (id, key) = (
        created["id"].as_str().unwrap().to_owned(),
        created["secret"].as_str().unwrap().to_owned(),
    );
    let (status, body) = ask(&gw, &key, "/v1/chat/completions", "gpt-4o-mini").await;
    assert_eq!(status, 200, "{body}");
    // Its settle lands after the answer: wait for it, so the refusals below count from it.
    wait_events(&gw, "gov", 1).await;
    let key_scope = format!("key:{id}");
    refused(&gw, &up, &key, "/v1/chat/completions", "gpt-5", &key_scope).await;
    refused(&gw, &up, &key, "/v1/responses", "gpt-5-mini", &key_scope).await;
    refused(
        &gw,
        &up,
        &key,
        "/v1beta/models/{model}:generateContent",
        "gemini-2.5-flash",
        &key_scope,
    )
    .await;
    // Anthropic's models pass the list (and then meet the missing Anthropic key: the check came first).
    let (status, body) = ask(&gw, &key, "/v1/messages", "claude-sonnet-4-5").await;
    assert_eq!((status, code(&body)), (424, "NO_CREDENTIAL"), "{body}");
    // Nothing stays reserved.
    let status = gw
        .app
        .store
        .budget_status(&BudgetScope::Owner("gov".into()), Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.reserved, Decimal::ZERO);

    // The models list holds only what the key may call.
    let (_, _, list) = gw.call(Method::GET, "/v1/models", Some(&key), None).await;
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"gpt-4o-mini") && ids.contains(&"gpt-4o"),
        "{ids:?}"
    );
    assert!(ids.iter().all(|m| m.starts_with("gpt-4o")), "{ids:?}");

    // The owner's list applies to every key of the owner, on top of each key's own.
    allow(&gw, LimitScope::Owner("gov".into()), "openai/*").await;
    let (_, open) = gw
        .key(json!({"name": "open", "owner": "gov", "permissions": ["llm:chat"]}))
        .await;
    let (status, body) = ask(&gw, &open, "/v1/chat/completions", "gpt-5").await;
    assert_eq!(status, 200, "{body}");
    wait_events(&gw, "gov", 2).await;
    refused(
        &gw,
        &up,
        &open,
        "/v1/messages",
        "claude-sonnet-4-5",
        "owner:gov",
    )
    .await;

    // An organisation's list applies to its owners' keys.
    allow(&gw, LimitScope::Org("acme".into()), "gpt-4o").await;
    let (_, member) = gw
        .key(
            json!({"name": "member", "owner": "org-owner", "organization_id": "acme",
            "permissions": ["llm:chat"]}),
        )
        .await;
    let (status, body) = ask(&gw, &member, "/v1/chat/completions", "gpt-4o").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = ask(&gw, &member, "/v1/chat/completions", "gpt-4o-mini").await;
    assert_eq!((status, code(&body)), (403, "MODEL_NOT_ALLOWED"));
    assert_eq!(body["error"]["scope"], "org:acme");

    // A rule that cannot be a rule is refused at creation, and no key is made.
    let (status, _, body) = gw
        .call(
            Method::POST,
            "/api/v1/api-keys",
            Some(&gw.admin),
            Some(json!({"name": "bad", "owner": "gov", "allowed_models": ["gpt 4o"]})),
        )
        .await;
    assert_eq!((status, code(&body)), (422, "INVALID_REQUEST"), "{body}");
}

#[tokio::test]
async fn a_402_names_the_budget_that_refused_and_its_numbers() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    // The organisation's $0.01 has room for one small chat of the stand-in's usage ($0.00575), not for more.
    for (scope, limit) in [
        (BudgetScope::Owner("payer".into()), Decimal::from(5)),
        (BudgetScope::Org("thrift".into()), Decimal::new(1, 2)),
    ] {
        gw.budget(scope, limit, BudgetPeriod::Monthly).await;
    }
    let (_, key) = gw
        .key(
            json!({"name": "payer", "owner": "payer", "organization_id": "thrift",
            "permissions": ["llm:chat"]}),
        )
        .await;
    let (status, body) = ask(&gw, &key, "/v1/chat/completions", "gpt-4o").await;
    assert_eq!(status, 200, "{body}");
    let spent = wait_events(&gw, "payer", 1).await[0].cost;

    // A worst case of 1,000 output tokens ($0.01) no longer fits.
    let mut big = chat("gpt-4o");
    big["max_tokens"] = json!(1000);
    let response = gw.post_json("/v1/chat/completions", &key, &big).await;
    assert_eq!(response.status(), 402);
    let body: Value = response.json().await.unwrap();
    let error = &body["error"];
    assert_eq!(error["code"], "BUDGET_EXCEEDED");
    // The organisation's budget refused, not the owner's: its numbers, as decimal strings.
    assert_eq!(error["scope"], "org:thrift");
    assert_eq!(error["limit"], "0.01");
    assert_eq!(error["spent"], spent.normalize().to_string());
    assert_eq!(error["reserved"], "0");
    let remaining: Decimal = error["remaining"].as_str().unwrap().parse().unwrap();
    assert_eq!(remaining, Decimal::new(1, 2) - spent);
    let requested: Decimal = error["requested"].as_str().unwrap().parse().unwrap();
    assert!(requested > remaining, "{error}");
    let period_end: chrono::DateTime<Utc> = error["period_end"].as_str().unwrap().parse().unwrap();
    assert!(period_end > Utc::now() && period_end < Utc::now() + chrono::Duration::days(32));
    assert!(error["message"].as_str().unwrap().contains("org:thrift"));
}

#[tokio::test]
async fn a_403_names_the_scopes_the_key_lacks() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, reader) = gw
        .key(json!({"name": "reader", "owner": "rita", "permissions": ["reports"]}))
        .await;
    for (method, path, missing) in [
        (Method::POST, "/v1/chat/completions", "llm:chat"),
        (Method::GET, "/api/v1/budget", "billing"),
        (Method::GET, "/api/v1/api-keys", "admin"),
    ] {
        let body = (method == Method::POST).then(|| chat("gpt-4o"));
        let (status, _, answer) = gw.call(method, path, Some(&reader), body).await;
        assert_eq!(
            (status, code(&answer)),
            (403, "INSUFFICIENT_SCOPE"),
            "{path}"
        );
        assert_eq!(
            answer["error"]["missing_scopes"],
            json!([missing]),
            "{path}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .unwrap()
                .contains(missing)
        );
    }
    assert!(up.calls().is_empty());
    // A key that is not proven learns nothing about scopes.
    let (status, _, answer) = gw
        .call(Method::GET, "/api/v1/budget", Some("km_live_typo"), None)
        .await;
    assert_eq!(status, 401);
    assert!(answer["error"].get("missing_scopes").is_none());
}

#[tokio::test]
async fn budgets_and_limits_are_set_over_http_within_the_admins_organisation() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, member) = gw
        .key(json!({"name": "m", "owner": "mo", "organization_id": "acme", "permissions": ["llm:chat"]}))
        .await;
    let (_, acme_admin) = gw
        .key(
            json!({"name": "acme-admin", "owner": "acme-ops", "organization_id": "acme",
            "permissions": ["admin", "llm:chat"]}),
        )
        .await;

    // A budget, as `keymeter budget set` takes it; its status back.
    let (status, _, set) = gw
        .call(
            Method::PUT,
            "/api/v1/budgets/owner:mo",
            Some(&acme_admin),
            Some(
                json!({"limit": "25.00", "period": "monthly", "soft": "20", "tz": "Europe/Berlin"}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(
        (&set["scope"], &set["limit"], &set["soft"], &set["tz"]),
        (
            &json!("owner:mo"),
            &json!("25.00"),
            &json!("20"),
            &json!("Europe/Berlin")
        )
    );
    let (status, _, standing) = gw
        .call(
            Method::GET,
            "/api/v1/budgets/owner:mo",
            Some(&acme_admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{standing}");
    assert_eq!(standing["limit"], "25.00");
    let (status, _, body) = gw
        .call(
            Method::GET,
            "/api/v1/budgets/org:acme",
            Some(&acme_admin),
            None,
        )
        .await;
    assert_eq!((status, code(&body)), (404, "NOT_FOUND_ID"));
    // Limits with an allowlist: the member's next request meets it (within the second limits are trusted).
    let (status, _, set) = gw
        .call(
            Method::PUT,
            "/api/v1/limits/org:acme",
            Some(&acme_admin),
            Some(json!({"requests": ["100/min"], "models": ["anthropic/*"], "max_parallel": 20})),
        )
        .await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(
        set,
        json!({"scope": "org:acme", "requests": ["100/min"], "tokens": [], "models": ["anthropic/*"],
            "max_parallel": 20})
    );
    let (_, _, shown) = gw
        .call(
            Method::GET,
            "/api/v1/limits/org:acme",
            Some(&acme_admin),
            None,
        )
        .await;
    assert_eq!(shown, set);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let (status, body) = ask(&gw, &member, "/v1/chat/completions", "gpt-4o").await;
    assert_eq!(
        (status, &body["error"]["scope"]),
        (403, &json!("org:acme")),
        "{body}"
    );

    // Another organisation's scopes, and owners not bound to acme, are not acme's admin's.
    gw.key(json!({"name": "o", "owner": "oscar", "organization_id": "other"}))
        .await;
    for path in [
        "/api/v1/budgets/org:other",
        "/api/v1/budgets/owner:oscar",
        "/api/v1/limits/owner:nobody-yet",
    ] {
        let (status, _, body) = gw
            .call(
                Method::PUT,
                path,
                Some(&acme_admin),
                Some(json!({"limit": "1", "period": "daily"})),
            )
            .await;
        assert_eq!((status, code(&body)), (403, "INSUFFICIENT_SCOPE"), "{path}");
    }
    // The operator's admin (no organisation) manages any scope; bad values are 422 and change nothing.
    let (status, _, _) = gw
        .call(
            Method::PUT,
            "/api/v1/limits/owner:oscar",
            Some(&gw.admin),
            Some(json!({"tokens": ["5000/h"]})),
        )
        .await;
    assert_eq!(status, 200);
    for (path, body) in [
        (
            "/api/v1/budgets/owner:mo",
            json!({"limit": "-1", "period": "monthly"}),
        ),
        (
            "/api/v1/budgets/owner:mo",
            json!({"limit": "5", "period": "fortnightly"}),
        ),
        (
            "/api/v1/budgets/owner:mo",
            json!({"limit": "5", "period": "daily", "tz": "Mars/Base"}),
        ),
        ("/api/v1/limits/owner:mo", json!({"models": ["gpt 4o"]})),
        ("/api/v1/limits/planet:mo", json!({})),
    ] {
        let (status, _, answer) = gw
            .call(Method::PUT, path, Some(&gw.admin), Some(body.clone()))
            .await;
        assert_eq!(status, 422, "{path} {body}: {answer}");
    }
    let (_, _, standing) = gw
        .call(
            Method::GET,
            "/api/v1/budgets/owner:mo",
            Some(&gw.admin),
            None,
        )
        .await;
    assert_eq!(standing["limit"], "25.00");
    // Deleted: gone from the standing; a second delete finds none; another organisation's is not the admin's.
    let (status, _, deleted) = gw
        .call(
            Method::DELETE,
            "/api/v1/budgets/owner:mo",
            Some(&acme_admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{deleted}");
    assert_eq!(deleted, json!({"scope": "owner:mo", "deleted": true}));
    assert_eq!(
        gw.app
            .store
            .budget(&BudgetScope::Owner("mo".into()))
            .await
            .unwrap(),
        None
    );
    for (path, expected) in [
        ("/api/v1/budgets/owner:mo", 404),
        ("/api/v1/budgets/org:other", 403),
    ] {
        let (status, _, body) = gw.call(Method::DELETE, path, Some(&acme_admin), None).await;
        assert_eq!(status, expected, "{path}: {body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_reads_its_own_limits_budgets_and_usage() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    gw.monthly_budget("self", 10).await;
    let tokens = Limits {
        tokens: vec!["100000/h".parse().unwrap()],
        ..Limits::default()
    };
    gw.app
        .store
        .set_limits(&LimitScope::Owner("self".into()), &tokens)
        .await
        .unwrap();
    let (id, key) = gw
        .key(json!({"name": "me", "owner": "self", "permissions": ["llm:chat"], "rate_limit": "10/min",
            "max_parallel": 3, "allowed_models": ["gpt-4o*"]}))
        .await;
    // Two answers billed, and a stream in flight (held, not yet billed).
    for _ in 0..2 {
        let (status, _) = ask(&gw, &key, "/v1/chat/completions", "gpt-4o-mini").await;
        assert_eq!(status, 200);
    }
    let events = wait_events(&gw, "self", 2).await;
    let spent: Decimal = events.iter().map(|e| e.cost).sum();
    let stream = slow_stream(&gw, &key).await;
    assert_eq!(stream.status(), 200);

    // Any valid key may ask, whatever its scopes.
    let (status, _, seen) = gw.call(Method::GET, "/api/v1/key", Some(&key), None).await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen["key"]["id"], id.as_str());
    assert_eq!(seen["key"]["owner"], "self");
    assert!(seen["key"].get("hash").is_none(), "{seen}");
    assert!(
        !seen.to_string().contains(&key),
        "the secret is never shown"
    );
    // Four requests charged to the key's 10/min so far (this one included); 3,000 tokens to the owner's hour.
    let limits = seen["rate_limits"].as_array().unwrap();
    let of = |scope: &str, counts: &str| {
        limits
            .iter()
            .find(|l| l["scope"] == scope && l["counts"] == counts)
            .unwrap_or_else(|| panic!("{scope} {counts}: {seen}"))
            .clone()
    };
    let requests = of(&format!("key:{id}"), "requests");
    assert_eq!(
        (requests["quota"].as_str(), requests["remaining"].as_u64()),
        (Some("10/min"), Some(6))
    );
    assert!(requests["reset"].as_u64().unwrap() >= 23, "{requests}");
    let used = of("owner:self", "tokens");
    let left = used["remaining"].as_u64().unwrap();
    assert!((97_000..97_100).contains(&left), "{used}");
    assert_eq!(
        seen["concurrency"],
        json!([{"scope": format!("key:{id}"), "limit": 3, "in_flight": 1}])
    );
    assert_eq!(
        seen["models"],
        json!([{"scope": format!("key:{id}"), "rules": ["gpt-4o*"]}])
    );
    let budget = &seen["budgets"][0];
    assert_eq!(budget["scope"], "owner:self");
    assert_eq!(budget["limit"], "10");
    assert_eq!(
        budget["spent"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        spent
    );
    let reserved: Decimal = budget["reserved"].as_str().unwrap().parse().unwrap();
    assert!(reserved > Decimal::ZERO, "the stream's hold: {budget}");
    let today = &seen["usage_today"];
    assert_eq!(today["day"], Utc::now().date_naive().to_string());
    assert_eq!(today["events"], 2);
    assert_eq!(
        today["cost"].as_str().unwrap().parse::<Decimal>().unwrap(),
        spent
    );
    assert_eq!(today["input_tokens"], 2400);
    stream.bytes().await.unwrap();

    // Without a key, nothing.
    let (status, _, body) = gw.call(Method::GET, "/api/v1/key", None, None).await;
    assert_eq!((status, code(&body)), (401, "MALFORMED"));
}

/// DESIGN §15's order of checks: what the body refuses costs no quota, and what is refused after the rate limits
/// (no concurrency slot, no provider key, no budget) gives the request's charge back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_cost_no_rate_limit_quota() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let owner = BudgetScope::Owner("order".into());
    gw.budget(owner.clone(), Decimal::from(10), BudgetPeriod::Monthly)
        .await;
    let (_, key) = gw
        .key(json!({"name": "two", "owner": "order", "permissions": ["llm:chat"], "rate_limit": "2/min",
            "max_parallel": 1, "allowed_models": ["gpt-4o*", "claude-*"]}))
        .await;
    let refusals = [
        // The body: a model off the allowlist, a body that is not JSON, a request id of the wrong shape.
        (403, "MODEL_NOT_ALLOWED"),
        (400, ""),
        (400, "INVALID_REQUEST"),
        // After the charge: no provider key for Anthropic (the gateway has only OpenAI's and Google's).
        (424, "NO_CREDENTIAL"),
    ];
    for _ in 0..3 {
        let (status, body) = ask(&gw, &key, "/v1/chat/completions", "o3").await;
        assert_eq!((status, code(&body)), refusals[0]);
        let bad = gw.post_raw("/v1/chat/completions", &key, "{not json").await;
        assert_eq!(bad.status(), refusals[1].0);
        let odd_id = support::send(
            gw.post("/v1/chat/completions", &key)
                .header("x-request-id", "has space")
                .json(&chat("gpt-4o-mini")),
        )
        .await;
        assert_eq!(odd_id.status(), refusals[2].0);
        let (status, body) = ask(&gw, &key, "/v1/messages", "claude-sonnet-4-5").await;
        assert_eq!((status, code(&body)), refusals[3], "{body}");
    }
    // A budget with no room: 402, and the charge given back.
    gw.budget(owner.clone(), Decimal::new(1, 6), BudgetPeriod::Monthly)
        .await;
    for _ in 0..3 {
        let (status, body) = ask(&gw, &key, "/v1/chat/completions", "gpt-4o-mini").await;
        assert_eq!((status, code(&body)), (402, "BUDGET_EXCEEDED"), "{body}");
    }
    gw.budget(owner, Decimal::from(10), BudgetPeriod::Monthly)
        .await;
    // The one slot held by a stream: 429 TOO_MANY_CONCURRENT, and the charge given back.
    let stream = slow_stream(&gw, &key).await;
    assert_eq!(stream.status(), 200);
    assert!(
        stream.headers().contains_key("ratelimit"),
        "the route sets the RateLimit headers itself"
    );
    for _ in 0..3 {
        let (status, body) = ask(&gw, &key, "/v1/chat/completions", "gpt-4o-mini").await;
        assert_eq!(
            (status, code(&body)),
            (429, "TOO_MANY_CONCURRENT"),
            "{body}"
        );
    }
    stream.bytes().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    // Of the 2/min, the stream took one: one more is served, the next is the limit's.
    let (status, body) = ask(&gw, &key, "/v1/chat/completions", "gpt-4o-mini").await;
    assert_eq!(status, 200, "{body}");
    let limited = gw
        .post_json("/v1/chat/completions", &key, &chat("gpt-4o-mini"))
        .await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(code(&body), "RATE_LIMITED", "{body}");
    // The limit that refused, in the body.
    assert_eq!(
        (
            body["error"]["limit"].as_u64(),
            body["error"]["period"].as_str()
        ),
        (Some(2), Some("min"))
    );
    assert_eq!(body["error"]["remaining"], 0);
    assert!(
        body["error"]["retry_after"].as_u64().unwrap() >= 1,
        "{body}"
    );
}

/// `PATCH /api/v1/api-keys/{id}`: what the CLI sets at creation, an HTTP client changes later, and the next
/// request meets it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_changes_a_key_and_the_next_request_meets_it() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    gw.monthly_budget("patch", 10).await;
    let (id, key) = gw
        .key(json!({"name": "before", "owner": "patch", "permissions": ["llm:chat"], "metadata": {"team": "web"}}))
        .await;
    let path = format!("/api/v1/api-keys/{id}");
    assert_eq!(
        ask(&gw, &key, "/v1/chat/completions", "gpt-4o").await.0,
        200
    );

    let (status, _, changed) = gw
        .call(
            Method::PATCH,
            &path,
            Some(&gw.admin),
            Some(json!({"name": "after", "allowed_models": ["anthropic/*"], "metadata": {"team": "ml"},
                "expires_in": "30d"})),
        )
        .await;
    assert_eq!(status, 200, "{changed}");
    assert_eq!(changed["name"], "after");
    assert_ne!(
        changed["metadata"],
        json!({"team": "web"}),
        "the metadata given at creation, replaced"
    );
    assert_eq!(changed["allowed_models"], json!(["anthropic/*"]));
    assert_eq!(changed["metadata"], json!({"team": "ml"}));
    assert!(changed["expires_at"].is_string());
    assert_eq!(changed["scopes"], json!(["llm:chat"]), "the rest as it was");
    // At once, not after a cache's second.
    let (status, body) = ask(&gw, &key, "/v1/chat/completions", "gpt-4o").await;
    assert_eq!((status, code(&body)), (403, "MODEL_NOT_ALLOWED"), "{body}");

    let (status, _, _) = gw
        .call(
            Method::PATCH,
            &path,
            Some(&gw.admin),
            Some(json!({"disabled": true, "expires_at": null})),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = ask(&gw, &key, "/v1/chat/completions", "gpt-4o").await;
    assert_eq!((status, code(&body)), (403, "DISABLED"), "{body}");
    let (status, _, back) = gw
        .call(
            Method::PATCH,
            &path,
            Some(&gw.admin),
            Some(json!({"disabled": false, "allowed_models": []})),
        )
        .await;
    assert_eq!(status, 200);
    assert!(back["expires_at"].is_null(), "{back}");
    assert_eq!(
        ask(&gw, &key, "/v1/chat/completions", "gpt-4o").await.0,
        200
    );

    // Refusals change nothing.
    let (_, acme_admin) = gw
        .key(
            json!({"name": "acme admin", "owner": "acme-ops", "organization_id": "acme",
            "permissions": ["admin", "llm:chat"]}),
        )
        .await;
    let (member, _) = gw
        .key(
            json!({"name": "member", "owner": "acme-dev", "organization_id": "acme",
            "permissions": ["llm:chat"]}),
        )
        .await;
    let member_path = format!("/api/v1/api-keys/{member}");
    for (admin, path, body, status, expected) in [
        (
            &acme_admin,
            &member_path,
            json!({"permissions": ["*"]}),
            403,
            "INSUFFICIENT_SCOPE",
        ),
        (
            &acme_admin,
            &path,
            json!({"name": "theirs"}),
            404,
            "NOT_FOUND_ID",
        ),
        (&gw.admin, &path, json!({}), 422, "INVALID_REQUEST"),
        (
            &gw.admin,
            &path,
            json!({"name": ""}),
            422,
            "INVALID_REQUEST",
        ),
        (
            &gw.admin,
            &path,
            json!({"metadata": {"big": "x".repeat(5000)}}),
            422,
            "INVALID_REQUEST",
        ),
        (
            &gw.admin,
            &path,
            json!({"expires_in": "1d", "expires_at": null}),
            422,
            "INVALID_REQUEST",
        ),
        (
            &gw.admin,
            &path,
            json!({"owner": "someone"}),
            422,
            "INVALID_REQUEST",
        ),
        (
            &gw.admin,
            &"/api/v1/api-keys/nope".to_owned(),
            json!({"name": "x"}),
            404,
            "NOT_FOUND_ID",
        ),
        (&key, &path, json!({"name": "x"}), 403, "INSUFFICIENT_SCOPE"),
    ] {
        let (got, _, answer) = gw
            .call(Method::PATCH, path, Some(admin), Some(body.clone()))
            .await;
        assert_eq!((got, code(&answer)), (status, expected), "{body}: {answer}");
    }
    let (_, _, listed) = gw
        .call(Method::GET, "/api/v1/api-keys", Some(&gw.admin), None)
        .await;
    let ours = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == id.as_str())
        .unwrap()
        .clone();
    assert_eq!(ours["name"], "after");
    let theirs = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == member.as_str())
        .unwrap()
        .clone();
    assert_eq!(theirs["scopes"], json!(["llm:chat"]));
}

/// A report's groups as (key, events).
fn group_events(report: &Value) -> Vec<(String, u64)> {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["key"].as_str().unwrap().to_owned(),
                g["events"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Attribution (DESIGN §15): a request's `x-keymeter-tags` and `x-keymeter-end-user` (else OpenAI's `user`) stay
/// on its event, and the usage endpoint groups and filters by them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_and_end_users_reach_events_and_reports() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    gw.monthly_budget("attr", 10).await;
    let (_, key) = gw
        .key(json!({"name": "attr", "owner": "attr", "permissions": ["llm:chat", "reports"], "tags": ["team-a"]}))
        .await;
    let send = |tags: Option<&str>, user: Option<&str>, body: Value| {
        let mut request = gw.post("/v1/chat/completions", &key).json(&body);
        if let Some(tags) = tags {
            request = request.header("x-keymeter-tags", tags);
        }
        if let Some(user) = user {
            request = request.header("x-keymeter-end-user", user);
        }
        support::send(request)
    };
    let plain = chat("gpt-4o-mini");
    let mut with_user = chat("gpt-4o-mini");
    with_user["user"] = json!("from-body");
    // Sixteen of its own would do; with the key's tag they are seventeen.
    let seventeen: Vec<String> = (0..16).map(|i| format!("t{i}")).collect();
    let seventeen = seventeen.join(",");
    for (tags, user, body) in [
        (Some("batch, eu"), Some("user-1"), plain.clone()),
        (Some("batch"), None, with_user.clone()),
        // The header wins over the body's field.
        (None, Some("user-1"), with_user),
        (None, None, plain.clone()),
    ] {
        let answer = send(tags, user, body).await;
        assert_eq!(answer.status(), 200);
        answer.bytes().await.unwrap();
    }
    // A header of the wrong shape: 400, nothing sent or billed.
    let calls = up.calls().len();
    for (tags, user) in [
        (Some("a b"), None),
        (Some(seventeen.as_str()), None),
        (None, Some("")),
    ] {
        let answer = send(tags, user, plain.clone()).await;
        assert_eq!(answer.status(), 400, "{tags:?} {user:?}");
    }
    assert_eq!(up.calls().len(), calls);
    let events = wait_events(&gw, "attr", 4).await;
    assert_eq!(events.len(), 4);
    let mut seen: Vec<(Vec<String>, Option<String>)> = events
        .iter()
        .map(|e| (e.tags.clone(), e.end_user.clone()))
        .collect();
    seen.sort();
    let s = |v: &[&str]| v.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>();
    // The key's own tag first, on every event.
    assert_eq!(
        seen,
        vec![
            (s(&["team-a"]), None),
            (s(&["team-a"]), Some("user-1".into())),
            (s(&["team-a", "batch"]), Some("from-body".into())),
            (s(&["team-a", "batch", "eu"]), Some("user-1".into())),
        ]
    );
    let cost = events[0].cost;
    let report = |query: &'static str| gw.call(Method::GET, query, Some(&key), None);
    let (status, _, by_tag) = report("/api/v1/usage?by=tag").await;
    assert_eq!(status, 200, "{by_tag}");
    let groups = group_events(&by_tag);
    assert_eq!(
        groups,
        vec![("batch".into(), 2), ("eu".into(), 1), ("team-a".into(), 4)]
    );
    assert_eq!(
        by_tag["total"]
            .as_str()
            .unwrap()
            .parse::<Decimal>()
            .unwrap(),
        cost * Decimal::from(4)
    );
    let (_, _, by_user) = report("/api/v1/usage?by=end_user&tag=batch").await;
    let groups = group_events(&by_user);
    assert_eq!(groups, vec![("from-body".into(), 1), ("user-1".into(), 1)]);
    let (_, _, one_user) = report("/api/v1/usage?by=model&end_user=user-1").await;
    assert_eq!(one_user["groups"][0]["events"], 2);
}
