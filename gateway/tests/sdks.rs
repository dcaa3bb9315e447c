//! The providers' official Python SDKs (`openai`, `anthropic`, `google-genai`) against the gateway over loopback,
//! each with only its base URL and API key changed: every call answers as the SDK expects, reaches the stand-in
//! upstream with the right provider key, and is billed once, exactly.
//!
//! Needs a Python with the three SDKs: `KEYMETER_TEST_PYTHON` names it (CI makes a virtual environment with the
//! versions `.ci/run` pins), else `python3`; without them the test says so and skips.

mod support;

use std::process::Command;
use std::time::Duration;

use chrono::Utc;
use keymeter::ledger::EventFilter;
use keymeter::pricing::normalize::normalize;
use keymeter::pricing::{ServiceTier, UsageFormat};
use reqwest::Method;
use serde_json::json;
use support::{
    ANTHROPIC_USAGE, EMBEDDINGS_USAGE, GEMINI_USAGE, OPENAI_USAGE, RESPONSES_USAGE,
    SYSTEM_GOOGLE_KEY, SYSTEM_OPENAI_KEY,
};

const USER_ANTHROPIC_KEY: &str = "sk-ant-api03-sdk-owner-key-1111111111111111";

#[tokio::test(flavor = "multi_thread")]
async fn the_official_python_sdks_work_through_the_gateway() {
    let python = std::env::var("KEYMETER_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let found = Command::new(&python)
        .args(["-c", "import openai, anthropic, google.genai"])
        .output();
    if !found.is_ok_and(|o| o.status.success()) {
        eprintln!(
            "skipped: {python} lacks the openai, anthropic and google-genai packages (pip install them, or set \
             KEYMETER_TEST_PYTHON to a Python that has them)"
        );
        return;
    }
    let up = support::upstream().await;
    let gw = support::sqlite_gateway(&up).await;
    let (_, key) = gw
        .key(json!({"name": "sdk", "owner": "sid", "permissions": ["llm:chat", "write"]}))
        .await;
    // The operator has OpenAI and Google keys; Anthropic is paid with the owner's own.
    let (status, _, _) = gw
        .call(
            Method::PATCH,
            "/v2/users/me/api-key",
            Some(&key),
            Some(json!({"anthropic_api_key": USER_ANTHROPIC_KEY})),
        )
        .await;
    assert_eq!(status, 200);

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sdks/official.py");
    let (url, secret) = (gw.url.clone(), key.clone());
    let run = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .arg(script)
            .env("GATEWAY_URL", url)
            .env("GATEWAY_KEY", secret)
            .output()
            .unwrap()
    });
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the SDKs finish within 2 minutes")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Each call reached its API with the key that pays.
    let calls: Vec<(String, String)> = up.calls().into_iter().map(|c| (c.path, c.key)).collect();
    let expected = [
        ("/v1/chat/completions", SYSTEM_OPENAI_KEY),
        ("/v1/chat/completions", SYSTEM_OPENAI_KEY),
        ("/v1/responses", SYSTEM_OPENAI_KEY),
        ("/v1/responses", SYSTEM_OPENAI_KEY),
        ("/v1/embeddings", SYSTEM_OPENAI_KEY),
        ("/v1/messages", USER_ANTHROPIC_KEY),
        ("/v1/messages", USER_ANTHROPIC_KEY),
        (
            "/v1/models/gemini-2.5-flash:generateContent",
            SYSTEM_GOOGLE_KEY,
        ),
        (
            "/v1/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
            SYSTEM_GOOGLE_KEY,
        ),
    ];
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(p, k)| ((*p).to_owned(), (*k).to_owned()))
        .collect();
    assert_eq!(calls, expected);

    // Billed once each, exactly what the stand-in reported.
    let price = |model: &str, format: UsageFormat, usage: &str| {
        gw.app
            .meter
            .catalog()
            .cost(
                model,
                &normalize(format, usage).unwrap(),
                Utc::now(),
                ServiceTier::Standard,
            )
            .unwrap()
            .total
    };
    let gemini = format!(r#"{{"usageMetadata": {GEMINI_USAGE}}}"#);
    let mut expected = vec![
        price("gpt-4o", UsageFormat::OpenAi, OPENAI_USAGE),
        price("gpt-4o", UsageFormat::OpenAi, OPENAI_USAGE),
        price("gpt-5-mini", UsageFormat::OpenAi, RESPONSES_USAGE),
        price("gpt-5-mini", UsageFormat::OpenAi, RESPONSES_USAGE),
        price(
            "text-embedding-3-small",
            UsageFormat::OpenAi,
            EMBEDDINGS_USAGE,
        ),
        price("claude-sonnet-4-5", UsageFormat::Anthropic, ANTHROPIC_USAGE),
        price("claude-sonnet-4-5", UsageFormat::Anthropic, ANTHROPIC_USAGE),
        price("gemini-2.5-flash", UsageFormat::Gemini, &gemini),
        price("gemini-2.5-flash", UsageFormat::Gemini, &gemini),
    ];
    let mut events = Vec::new();
    for _ in 0..100 {
        events = gw
            .app
            .store
            .events(&EventFilter::new().owner("sid"))
            .await
            .unwrap();
        if events.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(events.iter().all(|e| !e.estimated), "{events:?}");
    let mut billed: Vec<_> = events.iter().map(|e| e.cost).collect();
    billed.sort();
    expected.sort();
    assert_eq!(billed, expected);
}
