//! `keymeter webhooks …`, `budget set --thresholds` and `keys leaked`, one process per command, delivering to a
//! receiver on loopback that checks each signature.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use keymeter::SecretString;
use keymeter::alerts::signature;
use serde_json::Value;

#[path = "common/cli.rs"]
mod cli_support;
#[path = "common/mod.rs"]
mod common;

use cli_support::Cli;

/// A request the receiver got: its signature header and body.
type Got = (String, String);

/// An HTTP/1.1 receiver answering 200 to every request, on a thread of its own.
fn receiver() -> (String, Arc<Mutex<Vec<Got>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    let got = Arc::new(Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let (mut length, mut signed) = (0usize, String::new());
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                let lower = line.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
                if lower.starts_with(signature::HEADER) {
                    signed = line.split_once(':').unwrap().1.trim().to_owned();
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            seen.lock()
                .unwrap()
                .push((signed, String::from_utf8_lossy(&body).into_owned()));
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    (url, got)
}

fn verifies(got: &Got, secret: &str) -> bool {
    signature::verify(
        &got.0,
        got.1.as_bytes(),
        &SecretString::from(secret),
        chrono::Utc::now(),
        signature::TOLERANCE,
    )
    .is_ok()
}

#[test]
fn webhooks_are_added_tested_rotated_delivered_and_removed() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let (url, got) = receiver();
    let added = cli.ok(&[
        "webhooks",
        "add",
        &url,
        "--events",
        "budget.threshold,webhook.test",
    ]);
    let id = added["id"].as_str().unwrap().to_owned();
    let secret = added["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert_eq!(
        added["events"],
        serde_json::json!(["budget.threshold", "webhook.test"])
    );
    for bad in [
        vec!["webhooks", "add", "http://hooks.example.com/x"],
        vec!["webhooks", "add", "ftp://hooks.example.com/x"],
        vec![
            "webhooks",
            "add",
            "https://hooks.example.com/x",
            "--events",
            "budget.maybe",
        ],
    ] {
        let (code, out) = cli.run(&bad, None);
        assert_eq!(code, 2, "{bad:?}: {out}");
    }
    let listed = cli.ok(&["webhooks", "list"]);
    assert_eq!(listed["webhooks"][0]["id"], id.as_str());
    assert!(
        !listed.to_string().contains(&secret),
        "list never shows a secret"
    );

    let tested = cli.ok(&["webhooks", "test", &id]);
    assert_eq!(tested["delivery"]["state"], "delivered");
    {
        let got = got.lock().unwrap();
        assert_eq!(got.len(), 1);
        assert!(verifies(&got[0], &secret));
        let body: Value = serde_json::from_str(&got[0].1).unwrap();
        assert_eq!(body["type"], "webhook.test");
    }

    // A budget with thresholds; usage that crosses 25 % of it; one delivery pass.
    let budget_set = |thresholds: &str| {
        cli.run(
            &[
                "budget",
                "set",
                "--owner",
                "alice",
                "--limit",
                "1",
                "--period",
                "monthly",
                "--thresholds",
                thresholds,
            ],
            None,
        )
    };
    let (code, set) = budget_set("90,25");
    assert_eq!(code, 0, "{set}");
    assert_eq!(set["thresholds"], serde_json::json!([25, 90]));
    let (code, _) = budget_set("0");
    assert_eq!(code, 2);
    cli.ok(&[
        "usage", "record", "--owner", "alice", "--model", "gpt-4o", "--input", "120000",
    ]);
    let pass = cli.ok(&["webhooks", "deliver"]);
    assert_eq!(pass["delivered"], 1, "{pass}");
    {
        let got = got.lock().unwrap();
        let body: Value = serde_json::from_str(&got[1].1).unwrap();
        assert_eq!(body["type"], "budget.threshold");
        assert_eq!(body["data"]["threshold"], 25);
        assert!(verifies(&got[1], &secret));
    }
    assert_eq!(
        cli.ok(&["webhooks", "deliver"])["delivered"],
        0,
        "delivered once"
    );

    // A rotation: both secrets sign during the grace.
    let rotated = cli.ok(&["webhooks", "rotate-secret", &id, "--grace", "1h"]);
    let new_secret = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new_secret, secret);
    cli.ok(&["webhooks", "test", &id]);
    {
        let got = got.lock().unwrap();
        let last = got.last().unwrap();
        assert_eq!(last.0.matches("v1=").count(), 2);
        assert!(verifies(last, &secret) && verifies(last, &new_secret));
    }
    let deliveries = cli.ok(&["webhooks", "deliveries"]);
    let states: Vec<&str> = deliveries["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["delivered"; 3]);

    cli.ok(&["webhooks", "remove", &id]);
    assert_eq!(
        cli.ok(&["webhooks", "list"])["webhooks"],
        serde_json::json!([])
    );
    let (code, _) = cli.run(&["webhooks", "remove", &id], None);
    assert_eq!(code, 1);
}

#[test]
fn keys_leaked_revokes_a_key_of_the_store_once() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let created = cli.ok(&["keys", "create", "--name", "ci", "--owner", "alice"]);
    let token = created["key"].as_str().unwrap().to_owned();
    let leaked = cli.run(
        &["keys", "leaked", "--url", "https://github.com/a/b"],
        Some(&token),
    );
    assert_eq!(leaked.0, 0, "{}", leaked.1);
    assert_eq!(leaked.1["label"], "true_positive");
    assert_eq!(leaked.1["revoked"], true);
    assert_eq!(leaked.1["key_id"], created["id"]);
    let again = cli.run(&["keys", "leaked"], Some(&token));
    assert_eq!((again.0, &again.1["revoked"]), (0, &Value::Bool(false)));
    let (code, verdict) = cli.run(&["keys", "verify"], Some(&token));
    assert_eq!((code, verdict["code"].as_str()), (1, Some("REVOKED")));
    let (code, other) = cli.run(&["keys", "leaked"], Some("sk-not-ours-at-all"));
    assert_eq!((code, other["label"].as_str()), (1, Some("false_positive")));
}
