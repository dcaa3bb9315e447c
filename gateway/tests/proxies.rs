//! The provider APIs beyond chat completions and messages, over loopback against the stand-in upstream: Gemini's
//! generateContent (whole and streamed), OpenAI's Responses and embeddings, and the models list. Each API is run
//! through the same cases — a whole answer priced exactly and equal to the ledger, a stream billed from its usage
//! events, a client gone mid-stream still billed, an upstream error releasing the reservation, an answer without
//! usage billed at its reservation — and whose provider key paid.

mod support;

use chrono::Utc;
use keymeter::ledger::{BudgetPeriod, BudgetScope};
use keymeter::pricing::normalize::normalize;
use keymeter::pricing::{ServiceTier, UsageFormat};
use reqwest::Method;
use rust_decimal::Decimal;
use serde_json::{Value, json};
use support::{
    EMBEDDINGS_USAGE, GEMINI_USAGE, Gateway, RESPONSES_USAGE, SYSTEM_GOOGLE_KEY, SYSTEM_OPENAI_KEY,
    USER_GOOGLE_KEY, USER_OPENAI_KEY, Upstream, code, events_of, expected_cost, wait_events,
};

/// One provider API as the shared cases drive it.
struct Api {
    /// The path of a whole answer, and of a stream.
    whole: &'static str,
    stream: &'static str,
    /// The request body: `mode` steers the stand-in, `stream` asks for a stream in the body (APIs that say so
    /// there).
    body: fn(mode: &str, stream: bool) -> Value,
    model: &'static str,
    format: UsageFormat,
    /// What the stand-in reports, as the response object holding it.
    reported: String,
    /// The output cap the bodies name.
    cap: u64,
    /// The provider key the stand-in must see.
    system_key: &'static str,
}

/// Sends `body` to `path` with `key` as the API's own SDK would (Gemini: `x-goog-api-key`).
async fn post(gw: &Gateway, path: &str, key: &str, body: &Value) -> reqwest::Response {
    let request = if path.contains(":") {
        gw.client
            .post(format!("{}{path}", gw.url))
            .header("x-goog-api-key", key)
    } else {
        gw.post(path, key)
    };
    support::send(request.json(body)).await
}

/// Runs the shared cases for `api` as `owner` (a fresh owner with a budget, no events yet).
async fn shared_cases(gw: &Gateway, up: &Upstream, api: &Api, owner: &str, key: &str) {
    let cost = expected_cost(gw, api.model, api.format, &api.reported);
    assert!(cost > Decimal::ZERO);

    // A whole answer: its exact cost in the header and in the ledger, the system key upstream.
    let response = post(gw, api.whole, key, &(api.body)("", false)).await;
    assert_eq!(response.status(), 200, "{}", api.whole);
    assert_eq!(response.headers()["x-keymeter-credential-source"], "system");
    let header: Decimal = response.headers()["x-keymeter-cost"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(header, cost, "{}", api.whole);
    let seen = up.calls().pop().unwrap();
    assert_eq!(seen.key, api.system_key);
    let events = wait_events(gw, owner, 1).await;
    assert_eq!((events[0].cost, events[0].estimated), (cost, false));

    // A stream: passed through, billed from its usage events.
    if !api.stream.is_empty() {
        let response = post(gw, api.stream, key, &(api.body)("", true)).await;
        assert_eq!(response.status(), 200, "{}", api.stream);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let text = response.text().await.unwrap();
        assert_eq!(text.matches("hi ").count(), 3, "{text}");
        let events = wait_events(gw, owner, 2).await;
        assert_eq!((events[1].cost, events[1].estimated), (cost, false));

        // The client leaves after the first chunk of a slow stream: billed what the upstream reports anyway.
        let mut response = post(gw, api.stream, key, &(api.body)("slow", true)).await;
        assert!(!response.chunk().await.unwrap().unwrap().is_empty());
        drop(response);
        let events = wait_events(gw, owner, 3).await;
        assert_eq!((events[2].cost, events[2].estimated), (cost, false));
    }
    let before = events_of(gw, owner).await.len();

    // The provider refuses: its error goes back as it came, nothing is billed and nothing stays reserved.
    let response = post(gw, api.whole, key, &(api.body)("fail", false)).await;
    assert_eq!(response.status(), 500);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "upstream broke");
    assert_eq!(events_of(gw, owner).await.len(), before);

    // An answer without usage: billed at its reservation, the most it could cost, marked estimated.
    let body = (api.body)("nousage", false);
    let response = post(gw, api.whole, key, &body).await;
    assert_eq!(response.status(), 200);
    let events = wait_events(gw, owner, before + 1).await;
    let billed = events.last().unwrap();
    assert!(billed.estimated);
    assert_eq!(billed.usage.output_tokens(), api.cap);
    assert_eq!(
        billed.usage.prompt_tokens(),
        serde_json::to_vec(&body).unwrap().len() as u64
    );
    let reserved = gw
        .app
        .meter
        .catalog()
        .cost(api.model, &billed.usage, Utc::now(), ServiceTier::Standard)
        .unwrap();
    assert_eq!(billed.cost, reserved.total);
    assert_eq!(
        response.headers()["x-keymeter-cost"].to_str().unwrap(),
        reserved.total.to_string()
    );

    // Nothing stays held; what was spent is the sum of the events.
    let status = gw
        .app
        .store
        .budget_status(&BudgetScope::Owner(owner.into()), Utc::now())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.reserved, Decimal::ZERO);
    assert_eq!(status.spent, events.iter().map(|e| e.cost).sum::<Decimal>());
}

fn gemini_body(mode: &str, _stream: bool) -> Value {
    json!({"contents": [{"role": "user", "parts": [{"text": "Say hello"}]}],
        "generationConfig": {"maxOutputTokens": 300}, "user": mode})
}

fn responses_body(mode: &str, stream: bool) -> Value {
    json!({"model": "gpt-5-mini", "input": "Say hello", "max_output_tokens": 600, "stream": stream,
        "user": mode})
}

fn embeddings_body(mode: &str, _stream: bool) -> Value {
    json!({"model": "text-embedding-3-small", "input": ["one text", "another"], "user": mode})
}

/// A key of `owner` that may chat and store its own provider keys; the owner has a monthly budget of $100.
async fn chat_key(gw: &Gateway, owner: &str) -> String {
    gw.budget(
        BudgetScope::Owner(owner.into()),
        Decimal::from(100),
        BudgetPeriod::Monthly,
    )
    .await;
    gw.key(json!({"name": owner, "owner": owner, "permissions": ["llm:chat", "write"]}))
        .await
        .1
}

#[tokio::test]
async fn gemini_whole_and_streamed_billed_from_usage_metadata() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let key = chat_key(&gw, "gina").await;
    let gemini = Api {
        whole: "/v1beta/models/gemini-2.5-flash:generateContent",
        stream: "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
        body: gemini_body,
        model: "gemini-2.5-flash",
        format: UsageFormat::Gemini,
        reported: format!(r#"{{"usageMetadata": {GEMINI_USAGE}}}"#),
        cap: 300,
        system_key: SYSTEM_GOOGLE_KEY,
    };
    shared_cases(&gw, &up, &gemini, "gina", &key).await;
    // Thinking tokens are billed (as output), the implicit cache at its own rate.
    let usage = normalize(UsageFormat::Gemini, &gemini.reported).unwrap();
    assert_eq!(
        (usage.reasoning, usage.cache_read, usage.input),
        (50, 100, 600)
    );
    let streamed = up
        .calls()
        .into_iter()
        .find(|c| c.path.contains(":streamGenerateContent"))
        .unwrap();
    assert_eq!(
        streamed.path,
        "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    );

    // The owner's own Google key pays once it has one; a Bearer token works as well as x-goog-api-key.
    let (status, _, _) = gw
        .call(
            Method::PATCH,
            "/v2/users/me/api-key",
            Some(&key),
            Some(json!({"google_api_key": USER_GOOGLE_KEY})),
        )
        .await;
    assert_eq!(status, 200);
    let response = gw
        .post_json(gemini.whole, &key, &json!({"contents": []}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-keymeter-credential-source"], "user");
    let seen = up.calls().pop().unwrap();
    assert_eq!(seen.key, USER_GOOGLE_KEY);
    // No output cap named: the default is reserved and sent upstream.
    assert_eq!(seen.body["generationConfig"]["maxOutputTokens"], 4096);
    // Under `/v1/` as well (newer Google SDKs), forwarded to `/v1/`.
    let response = post(
        &gw,
        "/v1/models/gemini-2.5-flash:generateContent",
        &key,
        &json!({"contents": []}),
    )
    .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        up.calls().pop().unwrap().path,
        "/v1/models/gemini-2.5-flash:generateContent"
    );

    // Refused before anything is reserved or sent.
    let calls = up.calls().len();
    for (path, body, status, expected) in [
        (
            "/v1beta/models/gemini-2.5-flash:streamGenerateContent",
            json!({"contents": []}),
            422,
            "INVALID_REQUEST",
        ),
        (
            "/v1beta/models/gemini-2.5-flash:countTokens",
            json!({"contents": []}),
            404,
            "NOT_FOUND",
        ),
        (
            gemini.whole,
            json!({"contents": [{"parts": [{"fileData": {"fileUri": "https://example.com/v.mp4"}}]}]}),
            422,
            "UNBOUNDED_INPUT",
        ),
        (
            gemini.whole,
            json!({"contents": [], "cachedContent": "cachedContents/abc"}),
            422,
            "UNBOUNDED_INPUT",
        ),
        (
            gemini.whole,
            json!({"contents": [], "generationConfig": {"candidateCount": 9}}),
            422,
            "INVALID_REQUEST",
        ),
    ] {
        let response = post(&gw, path, &key, &body).await;
        assert_eq!(response.status(), status, "{path} {body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(code(&answer), expected, "{answer}");
    }
    assert_eq!(up.calls().len(), calls);

    // Inline media is reserved beyond its bytes; a grounded request reserves searches.
    let body = json!({"contents": [{"parts": [{"inlineData": {"mimeType": "image/png", "data": "iVBORw0KGgo="}}]}],
        "tools": [{"googleSearch": {}}], "generationConfig": {"maxOutputTokens": 10}, "user": "nousage"});
    let response = post(&gw, gemini.whole, &key, &body).await;
    assert_eq!(response.status(), 200);
    let events = wait_events(&gw, "gina", 7).await;
    let billed = &events.last().unwrap().usage;
    assert_eq!(
        billed.prompt_tokens(),
        serde_json::to_vec(&body).unwrap().len() as u64 + 2_240
    );
    assert_eq!(billed.web_search, 8);
}

#[tokio::test]
async fn openai_responses_and_embeddings() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let key = chat_key(&gw, "rhea").await;
    let responses = Api {
        whole: "/v1/responses",
        stream: "/v1/responses",
        body: responses_body,
        model: "gpt-5-mini",
        format: UsageFormat::OpenAi,
        reported: format!(r#"{{"usage": {RESPONSES_USAGE}}}"#),
        cap: 600,
        system_key: SYSTEM_OPENAI_KEY,
    };
    shared_cases(&gw, &up, &responses, "rhea", &key).await;
    // Reasoning tokens are output within max_output_tokens, the cached input at its own rate.
    let usage = normalize(UsageFormat::OpenAi, &responses.reported).unwrap();
    assert_eq!(
        (usage.reasoning, usage.output, usage.cache_read),
        (150, 250, 100)
    );

    let key = chat_key(&gw, "emma").await;
    let embeddings = Api {
        whole: "/v1/embeddings",
        stream: "",
        body: embeddings_body,
        model: "text-embedding-3-small",
        format: UsageFormat::OpenAi,
        reported: format!(r#"{{"usage": {EMBEDDINGS_USAGE}}}"#),
        cap: 0,
        system_key: SYSTEM_OPENAI_KEY,
    };
    shared_cases(&gw, &up, &embeddings, "emma", &key).await;
    // Input tokens only: 8,000 at $0.02 per million.
    assert_eq!(
        expected_cost(
            &gw,
            "text-embedding-3-small",
            UsageFormat::OpenAi,
            &embeddings.reported
        ),
        Decimal::new(16, 5)
    );

    // The owner's own OpenAI key pays once it has one.
    gw.call(
        Method::PATCH,
        "/v2/users/me/api-key",
        Some(&key),
        Some(json!({"openai_api_key": USER_OPENAI_KEY})),
    )
    .await;
    for (path, body) in [
        ("/v1/responses", responses_body("", false)),
        ("/v1/embeddings", embeddings_body("", false)),
    ] {
        let response = gw.post_json(path, &key, &body).await;
        assert_eq!(response.headers()["x-keymeter-credential-source"], "user");
        assert_eq!(up.calls().pop().unwrap().key, USER_OPENAI_KEY);
    }

    // Web search: the searches are reserved, and their cap sent upstream when the request names none.
    let body = json!({"model": "gpt-5-mini", "input": "news?", "tools": [{"type": "web_search"}],
        "user": "nousage"});
    let response = gw.post_json("/v1/responses", &key, &body).await;
    assert_eq!(response.status(), 200);
    let seen = up.calls().pop().unwrap();
    assert_eq!(
        (
            &seen.body["max_tool_calls"],
            &seen.body["max_output_tokens"]
        ),
        (&json!(8), &json!(4096))
    );
    let events = wait_events(&gw, "emma", 5).await;
    assert_eq!(events.last().unwrap().usage.web_search, 8);

    // State kept at OpenAI, or fetched later, is refused before anything is reserved or sent.
    let calls = up.calls().len();
    for (body, expected) in [
        (
            json!({"model": "gpt-5-mini", "input": "and then?", "previous_response_id": "resp_1"}),
            "UNBOUNDED_INPUT",
        ),
        (
            json!({"model": "gpt-5-mini", "input": [{"type": "item_reference", "id": "msg_1"}]}),
            "UNBOUNDED_INPUT",
        ),
        (
            json!({"model": "gpt-5-mini", "input": "hi", "background": true}),
            "INVALID_REQUEST",
        ),
        (
            json!({"model": "text-embedding-3-small"}),
            "INVALID_REQUEST",
        ),
    ] {
        let path = if body.get("input").is_some() {
            "/v1/responses"
        } else {
            "/v1/embeddings"
        };
        let response = gw.post_json(path, &key, &body).await;
        assert_eq!(response.status(), 422, "{body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(code(&answer), expected, "{answer}");
    }
    assert_eq!(up.calls().len(), calls);
}

#[tokio::test]
async fn the_models_list_follows_the_owners_credentials() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let key = chat_key(&gw, "milo").await;
    let ids = |body: &Value| -> Vec<String> {
        body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["id"].as_str().unwrap().to_owned())
            .collect()
    };

    // The system has OpenAI and Google keys, no Anthropic one.
    let (status, _, body) = gw.call(Method::GET, "/v1/models", Some(&key), None).await;
    assert_eq!(status, 200);
    assert_eq!(body["object"], "list");
    let first = &body["data"][0];
    assert_eq!(first["object"], "model");
    assert!(first["created"].is_number() && first["owned_by"].is_string());
    let listed = ids(&body);
    for model in [
        "gpt-4o",
        "gpt-5-mini",
        "text-embedding-3-small",
        "gemini-2.5-flash",
    ] {
        assert!(listed.iter().any(|m| m == model), "{model} missing");
    }
    assert!(!listed.iter().any(|m| m.starts_with("claude")));
    // Every listed name resolves to a priced model: the client can call it as listed.
    for model in &listed {
        assert!(gw.app.meter.catalog().resolve(model).is_ok(), "{model}");
    }

    // The owner's own Anthropic key adds Anthropic's models, for this owner only.
    gw.call(
        Method::PATCH,
        "/v2/users/me/api-key",
        Some(&key),
        Some(json!({"anthropic_api_key": "sk-ant-api03-milo-own-key-11111111111111"})),
    )
    .await;
    let (_, _, body) = gw.call(Method::GET, "/v1/models", Some(&key), None).await;
    assert!(ids(&body).iter().any(|m| m == "claude-sonnet-4-5"));
    let other = chat_key(&gw, "nell").await;
    let (_, _, body) = gw.call(Method::GET, "/v1/models", Some(&other), None).await;
    assert!(!ids(&body).iter().any(|m| m.starts_with("claude")));

    // It needs llm:chat.
    let (_, reader) = gw
        .key(json!({"name": "reader", "owner": "milo", "permissions": ["reports"]}))
        .await;
    let (status, _, body) = gw
        .call(Method::GET, "/v1/models", Some(&reader), None)
        .await;
    assert_eq!((status, code(&body)), (403, "INSUFFICIENT_SCOPE"));
}

/// `x-keymeter-overhead-ms` as a number.
fn overhead(headers: &reqwest::header::HeaderMap) -> f64 {
    headers["x-keymeter-overhead-ms"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn every_answer_says_the_gateways_own_time_without_the_providers() {
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let key = chat_key(&gw, "otto").await;
    let chat = |user: &str, stream: bool| {
        json!({"model": "gpt-4o", "max_tokens": 50, "stream": stream, "user": user,
            "messages": [{"role": "user", "content": "Say hello"}]})
    };

    // The stand-in waits 400 ms before a slow whole answer: the client waits that long, the header leaves it out.
    let started = std::time::Instant::now();
    let response = gw
        .post_json("/v1/chat/completions", &key, &chat("slow", false))
        .await;
    assert_eq!(response.status(), 200);
    assert!(started.elapsed().as_millis() >= 400);
    let own = overhead(response.headers());
    assert!((0.0..200.0).contains(&own), "{own} ms");

    // On a stream, an upstream error, a refusal and a 404 alike.
    let response = gw
        .post_json("/v1/chat/completions", &key, &chat("", true))
        .await;
    assert!(overhead(response.headers()) >= 0.0);
    response.text().await.unwrap();
    let response = gw
        .post_json("/v1/chat/completions", &key, &chat("fail", false))
        .await;
    assert_eq!(response.status(), 500);
    assert!(overhead(response.headers()) >= 0.0);
    for (path, key) in [
        ("/v1/chat/completions", None),
        ("/no/such/path", Some(key.as_str())),
    ] {
        let (status, headers, _) = gw
            .call(Method::POST, path, key, Some(chat("", false)))
            .await;
        assert!(status == 401 || status == 404, "{path}: {status}");
        assert!(overhead(&headers) >= 0.0, "{path}");
    }
}
