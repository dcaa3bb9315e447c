//! The `service` example, run as a user runs it (a fresh directory, nothing configured) in front of a stand-in
//! OpenAI on loopback: the key it prints is refused without its scope, a chat is billed what the stand-in
//! reported, the operator's key went upstream, and the report by day holds the cost.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use axum::http::HeaderMap;
use axum::routing::post;

const OPERATOR_KEY: &str = "sk-proj-operator0000000000000000000000000000";

/// The example binary cargo built beside this test, if it did.
fn example() -> Option<PathBuf> {
    let deps = std::env::current_exe().ok()?.parent()?.to_owned();
    let path = deps.parent()?.join("examples").join("service");
    path.exists().then_some(path)
}

/// A stand-in for OpenAI's chat completions: remembers the bearer it was sent, answers a fixed usage.
async fn stand_in(seen: Arc<Mutex<Vec<String>>>) -> String {
    let route = post(move |headers: HeaderMap| async move {
        let auth = headers["authorization"]
            .to_str()
            .unwrap_or_default()
            .to_owned();
        seen.lock().unwrap().push(auth);
        r#"{"id":"c1","choices":[],"usage":{"prompt_tokens":1800,"completion_tokens":420}}"#
    });
    let app = axum::Router::new().route("/v1/chat/completions", route);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn the_service_example_bills_a_chat_and_reports_it() {
    let Some(binary) = example() else {
        eprintln!("skipping: the service example was not built");
        return;
    };
    let seen = Arc::new(Mutex::new(Vec::new()));
    let upstream = stand_in(seen.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(binary);
    command
        .current_dir(dir.path())
        .env("PORT", "0")
        .env("OPENAI_BASE_URL", &upstream)
        .env("OPENAI_API_KEY", OPERATOR_KEY)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (name, _) in std::env::vars() {
        if name.starts_with("KEYMETER_") || name == "DEBUG" || name == "DEPLOY_ENV" {
            command.env_remove(name);
        }
    }
    let mut child = Killed(command.spawn().unwrap());
    let stdout = child.0.stdout.take().unwrap();
    let (key, addr) = tokio::task::spawn_blocking(move || {
        let (mut key, mut addr) = (None, None);
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(k) = line.strip_prefix("key: ") {
                key = Some(k.to_owned());
            }
            if let Some(a) = line.strip_prefix("listening on ") {
                addr = Some(a.to_owned());
                break;
            }
        }
        (key.expect("a key line"), addr.expect("a listening line"))
    })
    .await
    .unwrap();

    let http = keymeter::http::client(std::time::Duration::from_secs(30)).unwrap();
    let chat = format!("http://{addr}/v1/chat/completions");
    let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"max_tokens":500}"#;
    let send = |bearer: Option<&str>| {
        let mut request = http
            .post(&chat)
            .header("content-type", "application/json")
            .body(body);
        if let Some(bearer) = bearer {
            request = request.bearer_auth(bearer);
        }
        request.send()
    };

    let refused = send(None).await.unwrap();
    assert_eq!(refused.status(), 401);
    let answer = send(Some(&key)).await.unwrap();
    assert_eq!(answer.status(), 200);
    let answer: serde_json::Value = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
    // gpt-4o: 1,800 × $2.50/M + 420 × $10/M.
    assert_eq!(answer["cost"], "0.0087");
    assert_eq!(
        seen.lock().unwrap().as_slice(),
        [format!("Bearer {OPERATOR_KEY}")]
    );

    // The settle went to the example's journal first (beside its database); the store has it within moments.
    let mut report = serde_json::Value::Null;
    for _ in 0..100 {
        let answer = http
            .get(format!("http://{addr}/usage"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(answer.status(), 200);
        report = serde_json::from_str(&answer.text().await.unwrap()).unwrap();
        if report["total"] != "0" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(report["total"], "0.0087", "{report}");
    assert_eq!(report["groups"].as_array().unwrap().len(), 1, "{report}");
}
