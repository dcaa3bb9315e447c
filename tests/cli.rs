//! The `keymeter` binary against a SQLite file, one process per command, as DESIGN §9 describes it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde_json::Value;

#[path = "common/cli.rs"]
mod cli_support;
#[path = "common/mod.rs"]
mod common;

use cli_support::Cli;

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn keys_walkthrough_across_invocations() {
    let cli = Cli::new();
    let init = cli.ok(&["init"]);
    assert_eq!(init["environment"], "development");
    assert_eq!(init["created_secrets"][0], "KEYMETER_PEPPER");
    let secrets = cli.dir.path().join("keymeter.secrets");
    assert_eq!(mode(&secrets), 0o600);
    // A second init keeps the same pepper (keys stay verifiable).
    let before = std::fs::read(&secrets).unwrap();
    assert_eq!(cli.ok(&["init"])["created_secrets"], serde_json::json!([]));
    assert_eq!(std::fs::read(&secrets).unwrap(), before);

    let created = cli.ok(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--owner",
        "alice",
        "--org",
        "acme",
        "--scopes",
        "read,files:*",
        "--expires-in",
        "30d",
        "--allow-ip",
        "10.0.0.0/8",
        "--allow-ip",
        "2001:db8::/32",
        "--rate-limit",
        "100/min",
    ]);
    for field in [
        "id",
        "key",
        "name",
        "owner",
        "org",
        "env",
        "scopes",
        "expires_at",
        "hint",
    ] {
        assert!(created.get(field).is_some(), "missing {field}: {created}");
    }
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with(&format!("km_live_{id}_")));
    assert_eq!(created["env"], "live");

    // The plaintext is nowhere in the database.
    for file in std::fs::read_dir(cli.dir.path()).unwrap() {
        let bytes = std::fs::read(file.unwrap().path()).unwrap();
        assert!(!bytes.windows(key.len()).any(|w| w == key.as_bytes()));
    }

    let (code, v) = cli.run(
        &["keys", "verify", "--scope", "read", "--ip", "10.9.9.9"],
        Some(&format!("{key}\n")),
    );
    assert_eq!(
        (code, &v["valid"], &v["code"]),
        (0, &Value::Bool(true), &Value::from("VALID"))
    );
    assert_eq!(v["key_id"], id.as_str());
    assert_eq!(v["owner"], "alice");
    assert_eq!(v["scopes"], serde_json::json!(["read", "files:*"]));

    let verify =
        |args: &[&str], token: &str| cli.run(&[&["keys", "verify"], args].concat(), Some(token));
    let refused = verify(&["--scope", "write", "--ip", "10.0.0.1"], &key).1;
    assert_eq!(refused["code"], "INSUFFICIENT_SCOPE");
    assert_eq!(refused["missing_scopes"], serde_json::json!(["write"]));
    assert_eq!(
        verify(
            &[
                "--scope",
                "write",
                "--scope",
                "read",
                "--any-scope",
                "--ip",
                "10.0.0.1"
            ],
            &key
        )
        .1["code"],
        "VALID"
    );
    assert_eq!(
        verify(&["--ip", "192.168.1.1"], &key).1["code"],
        "IP_NOT_ALLOWED"
    );
    assert_eq!(verify(&["--ip", "2001:db8::5"], &key).1["code"], "VALID");
    assert_eq!(
        verify(&["--env", "test", "--ip", "10.0.0.1"], &key).1["code"],
        "WRONG_ENVIRONMENT"
    );
    let (code, v) = verify(&[], &key[..key.len() - 1]);
    assert_eq!((code, v["code"].as_str()), (1, Some("MALFORMED")));
    assert_eq!(v["valid"], false);
    assert_eq!(verify(&[], "").1["code"], "MALFORMED");

    let list = cli.ok(&["keys", "list", "--owner", "alice"]);
    assert_eq!(list["keys"].as_array().unwrap().len(), 1);
    assert_eq!(list["keys"][0]["hash_scheme"], "hmac-sha256");
    assert!(list["keys"][0].get("hash").is_none());
    assert!(!list.to_string().contains(&key[key.len() - 38..]));
    assert_eq!(
        cli.ok(&["keys", "list", "--org", "globex"])["keys"],
        serde_json::json!([])
    );
    let shown = cli.ok(&["keys", "show", &id]);
    assert_eq!(shown["rate_limit"], "100/min");
    assert_eq!(
        shown["allowed_ips"],
        serde_json::json!(["10.0.0.0/8", "2001:db8::/32"])
    );
    assert!(
        shown["last_used_at"].is_string(),
        "verify recorded a use: {shown}"
    );

    cli.ok(&["keys", "disable", &id]);
    assert_eq!(verify(&["--ip", "10.0.0.1"], &key).1["code"], "DISABLED");
    cli.ok(&["keys", "enable", &id]);
    assert_eq!(verify(&["--ip", "10.0.0.1"], &key).1["code"], "VALID");

    let second = cli.ok(&[
        "keys", "create", "--name", "b", "--owner", "bob", "--org", "acme", "--env", "test",
    ]);
    assert!(second["key"].as_str().unwrap().starts_with("km_test_"));
    let revoked = cli.ok(&["keys", "revoke-all", "--org", "acme"]);
    assert_eq!(revoked["revoked"], 2);
    assert_eq!(verify(&["--ip", "10.0.0.1"], &key).1["code"], "REVOKED");
    let (code, v) = cli.run(&["keys", "revoke", "nosuchkey123"], None);
    assert_eq!((code, v["code"].as_str()), (1, Some("NOT_FOUND")));
    let (code, _) = cli.run(&["keys", "show", "nosuchkey123"], None);
    assert_eq!(code, 1);

    // A custom prefix verifies too.
    let custom = cli.ok(&[
        "keys", "create", "--name", "c", "--owner", "carol", "--prefix", "acme",
    ]);
    let custom_key = custom["key"].as_str().unwrap().to_owned();
    assert!(custom_key.starts_with("acme_live_"));
    assert_eq!(verify(&[], &custom_key).1["code"], "VALID");
}

#[test]
fn imports_foreign_hashes() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let fx: Value = serde_json::from_str(include_str!("fixtures/foreign_hashes.json")).unwrap();
    let mut schemes = vec!["sha256", "argon2id"];
    if cfg!(feature = "bcrypt") {
        schemes.push("bcrypt");
    }
    for scheme in schemes {
        let key = fx[scheme]["key"].as_str().unwrap();
        let hash = fx[scheme]["hash"].as_str().unwrap();
        let mut args = vec![
            "keys", "import", "--name", scheme, "--owner", "dave", "--hash", hash, "--scopes",
            "read",
        ];
        // The hint comes on stdin: the first 8 characters for argon2id, the whole key (checked against the
        // hash) for bcrypt.
        let stdin = match scheme {
            "sha256" => None,
            "argon2id" => Some(&key[..8]),
            _ => Some(key),
        };
        if stdin.is_some() {
            args.extend(["--hint", "-"]);
        }
        let (code, imported) = cli.run(&args, stdin);
        assert_eq!(code, 0, "{scheme}: {imported}");
        assert!(!imported.to_string().contains(&key[..8]), "{imported}");
        assert_eq!(imported["hash_scheme"], scheme);
        let (code, v) = cli.run(&["keys", "verify", "--scope", "read"], Some(key));
        assert_eq!((code, v["code"].as_str()), (0, Some("VALID")), "{scheme}");
        assert_eq!(v["key_id"], imported["id"]);
        let (code, v) = cli.run(&["keys", "verify"], Some(&format!("{key}0")));
        assert_eq!(
            (code, v["code"].as_str()),
            (1, Some("NOT_FOUND")),
            "{scheme}"
        );
    }
    // The hint never comes from argv; a whole key that does not match the hash imports nothing.
    let hash = fx["argon2id"]["hash"].as_str().unwrap();
    let (code, v) = cli.run(
        &[
            "keys", "import", "--name", "x", "--owner", "d", "--hash", hash, "--hint", "sk-legac",
        ],
        None,
    );
    assert_eq!(code, 2, "{v}");
    assert!(v["error"].as_str().unwrap().contains("stdin"), "{v}");
    let (code, v) = cli.run(
        &[
            "keys", "import", "--name", "x", "--owner", "d", "--hash", hash, "--hint", "-",
        ],
        Some("sk-legacy-but-not-this-key-at-all"),
    );
    assert_eq!(code, 2, "{v}");
    let listed = cli.run_with(&["keys", "list"], None);
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("sk-legac"));
    let human = cli.command(&["keys", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&human.stdout).contains("sk-legac"));
    // A slow hash without a hint is a usage error.
    let (code, v) = cli.run(
        &[
            "keys", "import", "--name", "x", "--owner", "d", "--hash", hash,
        ],
        None,
    );
    assert_eq!(code, 2, "{v}");
    let (code, _) = cli.run(
        &[
            "keys", "import", "--name", "x", "--owner", "d", "--hash", "$md5$abc",
        ],
        None,
    );
    assert_eq!(code, 2);
}

#[test]
fn production_never_generates_secrets() {
    let mut cli = Cli::new();
    cli.env = vec![("KEYMETER_ENV", "production".into())];
    let out = cli.run_with(&["init"], None);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("KEYMETER_PEPPER"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1);
    assert!(!cli.dir.path().join("keymeter.secrets").exists());
    let (code, _) = cli.run(&["keys", "create", "--name", "a", "--owner", "b"], None);
    assert_eq!(code, 2);

    // With the pepper in the environment, production works, and a dev secrets file is ignored.
    cli.env.push((
        "KEYMETER_PEPPER",
        "cHJvZHVjdGlvbi1wZXBwZXItMzItYnl0ZXMtbG9uZyE=".into(),
    ));
    let (code, _) = cli.run(&["init"], None);
    assert_eq!(code, 2, "the master keys are still missing");
    cli.env.push((
        "KEYMETER_MASTER_KEYS",
        "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=".into(),
    ));
    cli.ok(&["init"]);
    let created = cli.ok(&["keys", "create", "--name", "a", "--owner", "b"]);
    let (code, v) = cli.run(&["keys", "verify"], Some(created["key"].as_str().unwrap()));
    assert_eq!((code, v["code"].as_str()), (0, Some("VALID")));
    // A wrong-length pepper is a configuration error that does not echo the value.
    cli.env.retain(|(k, _)| *k != "KEYMETER_PEPPER");
    cli.env.push(("KEYMETER_PEPPER", "c2hvcnQ=".into()));
    let out = cli.run_with(&["keys", "verify"], Some("x"));
    assert_eq!(out.status.code(), Some(2));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("c2hvcnQ"));
}

#[test]
fn env_reports_the_rule() {
    let mut cli = Cli::new();
    cli.env = vec![("DEPLOY_ENV", "render".into())];
    let v = cli.ok(&["env"]);
    assert_eq!(v["environment"], "production");
    assert_eq!(v["reason"], "DEPLOY_ENV=render");
}

/// Events imported with tags and end users: `usage report --by tag|end-user`, `--tag`, `--end-user`, and the
/// export keeps them.
#[test]
fn usage_reports_by_tag_and_end_user() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let line = |request: &str, cost: &str, extra: &str| {
        format!(
            r#"{{"event_id":"ev_{request}","request_id":"{request}","at":"2026-11-02T10:00:00Z","owner":"alice","provider":"openai","model":"gpt-4o","usage":{{"input":100}},"cost":"{cost}"{extra}}}"#
        )
    };
    let lines = [
        line("r1", "0.1", r#","tags":["batch","eu"],"end_user":"u-1""#),
        line("r2", "0.2", r#","tags":["batch"]"#),
        line("r3", "0.4", ""),
    ]
    .join("\n");
    let (code, imported) = cli.run(&["usage", "import", "-"], Some(&lines));
    assert_eq!(code, 0, "{imported}");
    let by_tag = cli.ok(&["usage", "report", "--by", "tag"]);
    let keys: Vec<(&str, &str)> = by_tag["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| (g["key"].as_str().unwrap(), g["cost"].as_str().unwrap()))
        .collect();
    assert_eq!(keys, [("(none)", "0.4"), ("batch", "0.3"), ("eu", "0.1")]);
    assert_eq!(by_tag["total"], "0.7");
    let users = cli.ok(&["usage", "report", "--by", "end-user", "--tag", "batch"]);
    assert_eq!(users["groups"][0]["key"], "(none)");
    assert_eq!(users["groups"][1]["key"], "u-1");
    let one = cli.ok(&["usage", "report", "--by", "model", "--end-user", "u-1"]);
    assert_eq!(one["total"], "0.1");
    let (code, _) = cli.run(&["usage", "report", "--by", "colour"], None);
    assert_eq!(code, 2);
}

#[test]
fn usage_errors_exit_2() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    for args in [
        &[
            "keys",
            "create",
            "--name",
            "a",
            "--owner",
            "b",
            "--scopes",
            "Bad Scope",
        ][..],
        &[
            "keys",
            "create",
            "--name",
            "a",
            "--owner",
            "b",
            "--metadata",
            "{not json",
        ],
        &[
            "keys",
            "create",
            "--name",
            "a",
            "--owner",
            "b",
            "--metadata",
            "[1, 2]",
        ],
        &[
            "keys",
            "create",
            "--name",
            "a",
            "--owner",
            "b",
            "--expires-in",
            "soon",
        ],
        &[
            "keys",
            "create",
            "--name",
            "a",
            "--owner",
            "b",
            "--allow-ip",
            "10.0.0.0/99",
        ],
        &[
            "keys",
            "create",
            "--name",
            "a",
            "--owner",
            "b",
            "--rate-limit",
            "fast",
        ],
        &[
            "keys", "create", "--name", "a", "--owner", "b", "--env", "prod",
        ],
        &[
            "keys", "create", "--name", "a", "--owner", "b", "--prefix", "Bad",
        ],
    ] {
        let out = cli.run_with(args, None);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(
            String::from_utf8(out.stderr)
                .unwrap()
                .lines()
                .filter(|l| !l.contains("warning"))
                .count(),
            1
        );
    }
    let out = cli.run_with(&["keys", "create", "--name", "a"], None);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn price_commands() {
    let cli = Cli::new();
    let cost = cli.ok(&[
        "price",
        "cost",
        "--model",
        "claude-sonnet-4-5",
        "--input",
        "1500",
        "--cache-read",
        "20000",
        "--cache-write",
        "4000",
        "--cache-write-1h",
        "2000",
        "--output",
        "700",
    ]);
    assert_eq!(cost["total"], "0.048");
    assert_eq!(cost["currency"], "USD");
    assert_eq!(cost["provider"], "anthropic");
    assert_eq!(
        cost["lines"][2],
        serde_json::json!({"kind": "cache_write_5m", "tokens": 4000, "rate": "0.00000375", "cost": "0.015"})
    );

    let (code, v) = cli.run(
        &["price", "cost", "--model", "gpt-99", "--input", "1"],
        None,
    );
    assert_eq!(
        (code, v),
        (
            1,
            serde_json::json!({"code": "UNKNOWN_MODEL", "model": "gpt-99"})
        )
    );

    let usage = r#"{"usageMetadata": {"promptTokenCount": 250000, "cachedContentTokenCount": 50000,
                    "candidatesTokenCount": 4000, "thoughtsTokenCount": 1000}}"#;
    let (code, v) = cli.run(
        &[
            "price",
            "cost",
            "--model",
            "gemini-2.5-pro",
            "--usage",
            "-",
            "--usage-format",
            "gemini",
        ],
        Some(usage),
    );
    assert_eq!((code, v["total"].as_str()), (0, Some("0.5875")));

    let litellm = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/litellm/model_prices_and_context_window.json"
    );
    let batch = cli.ok(&[
        "price",
        "cost",
        "--model",
        "gpt-4o",
        "--catalog",
        litellm,
        "--tier",
        "batch",
        "--input",
        "10000",
        "--output",
        "2000",
    ]);
    assert_eq!(batch["total"], "0.0225");
    let at = cli.ok(&[
        "price",
        "cost",
        "--model",
        "gpt-4o",
        "--at",
        "2026-01-01T00:00:00Z",
        "--output",
        "1",
    ]);
    assert_eq!(at["total"], "0.00001");
    let (code, _) = cli.run(
        &["price", "cost", "--model", "gpt-4o", "--tier", "turbo"],
        None,
    );
    assert_eq!(code, 2);
    let (code, v) = cli.run(
        &[
            "price",
            "cost",
            "--model",
            "claude-sonnet-4-5",
            "--usage",
            "-",
            "--usage-format",
            "openai",
        ],
        Some(r#"{"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}"#),
    );
    assert_eq!(code, 2, "{v}");

    let list = cli.ok(&["price", "list", "--provider", "anthropic"]);
    assert!(
        list["models"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["provider"] == "anthropic")
    );
    assert_eq!(list["snapshot_date"], "2026-11-21");
    let show = cli.ok(&["price", "show", "gpt-4o"]);
    assert_eq!(show["prices"][0]["rates"]["input"], "0.0000025");
    let (code, _) = cli.run(&["price", "show", "gpt-99"], None);
    assert_eq!(code, 1);
}

#[test]
fn price_cost_reaches_every_class_and_refuses_other_units() {
    let cli = Cli::new();
    let litellm = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/litellm/model_prices_and_context_window.json"
    );
    // claude-sonnet-5 in the US (× 1.1 on token rates): 1000 × 0.0000022 + 1000 × 0.000011 + 2 × 0.01.
    let cost = cli.ok(&[
        "price",
        "cost",
        "--model",
        "claude-sonnet-5",
        "--catalog",
        litellm,
        "--region",
        "us",
        "--input",
        "1000",
        "--output",
        "1000",
        "--web-search",
        "2",
    ]);
    assert_eq!(
        (cost["total"].as_str(), cost["region"].as_str()),
        (Some("0.0332"), Some("us"))
    );
    // gemini-2.5-flash: cached audio 200 × 1e-07, audio 100 × 1e-06, maps 1 × 0.025.
    let cost = cli.ok(&[
        "price",
        "cost",
        "--model",
        "gemini-2.5-flash",
        "--catalog",
        litellm,
        "--cache-read-audio",
        "200",
        "--audio-input",
        "100",
        "--maps-grounding",
        "1",
    ]);
    assert_eq!(cost["total"], "0.02512");
    // gpt-image-1.5: image tokens in 600 × 8e-06 and out 100 × 3.2e-05; gpt-6-astra 12 h writes 1000 × 2.5e-05;
    // aiml/dall-e-3 two images × 0.052.
    for (model, flags, total) in [
        (
            "gpt-image-1.5",
            vec!["--image-input", "600", "--image-output", "100"],
            "0.008",
        ),
        ("gpt-6-astra", vec!["--cache-write-12h", "1000"], "0.025"),
        ("aiml/dall-e-3", vec!["--images", "2"], "0.104"),
    ] {
        let mut args = vec!["price", "cost", "--model", model, "--catalog", litellm];
        args.extend(flags);
        assert_eq!(cli.ok(&args)["total"], total, "{model}");
    }
    let (code, v) = cli.run(
        &[
            "price",
            "cost",
            "--model",
            "rerank-v3.5",
            "--catalog",
            litellm,
            "--input",
            "5",
        ],
        None,
    );
    assert_eq!(
        (code, v),
        (
            1,
            serde_json::json!({"code": "UNPRICED_UNIT", "model": "rerank-v3.5", "unit": "input_cost_per_query"})
        )
    );
    // A stream's SSE payloads: o4-mini flex (the response's tier wins) 1000 × 0.00000055 + 10 × 0.0000022.
    let sse = "data: {\"service_tier\":\"flex\",\"choices\":[{\"delta\":{\"content\":\"hi\"}}],\"usage\":null}\n\n\
               data: {\"service_tier\":\"flex\",\"choices\":[],\"usage\":{\"prompt_tokens\":1000,\"completion_tokens\":10}}\n\n\
               data: [DONE]\n";
    let (code, v) = cli.run(
        &[
            "price",
            "cost",
            "--model",
            "o4-mini",
            "--catalog",
            litellm,
            "--usage",
            "-",
            "--usage-format",
            "openai",
            "--stream",
        ],
        Some(sse),
    );
    assert_eq!(
        (code, v["total"].as_str(), v["tier"].as_str()),
        (0, Some("0.000572"), Some("flex"))
    );
    // price show lists every rate, band and tier (the human form) and the whole model (JSON).
    let show = cli.ok(&["price", "show", "deepseek-flash", "--catalog", litellm]);
    assert_eq!(
        show["prices"][0]["off_peak"]["rates"]["input"],
        "0.00000015"
    );
    let out = cli
        .command(&["price", "show", "gpt-6-astra", "--catalog", litellm])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "Prompts over 272,000 tokens",
        "priority",
        "cache_write_12h",
        "$150.00",
        "US processing: token prices × 1.1",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
    let search = text.lines().find(|l| l.contains("web_search")).unwrap();
    assert!(
        search.contains("query") && search.contains("$0.01"),
        "{search}"
    );
}

#[test]
fn keys_rotate_keeps_the_id_and_the_old_key_for_the_grace_period() {
    keys_rotate_keeps_the_id_and_the_old_key_for_the_grace_period_on(Cli::new());
}

#[test]
fn keys_rotate_keeps_the_id_and_the_old_key_for_the_grace_period_on_postgres() {
    if let Some(cli) =
        Cli::postgres("keys_rotate_keeps_the_id_and_the_old_key_for_the_grace_period_on_postgres")
    {
        keys_rotate_keeps_the_id_and_the_old_key_for_the_grace_period_on(cli);
    }
}

fn keys_rotate_keeps_the_id_and_the_old_key_for_the_grace_period_on(cli: Cli) {
    cli.ok(&["init"]);
    let created = cli.ok(&["keys", "create", "--name", "ci", "--owner", "alice"]);
    let id = created["id"].as_str().unwrap();
    let old = created["key"].as_str().unwrap();
    let rotated = cli.ok(&["keys", "rotate", id, "--grace", "24h"]);
    assert_eq!(rotated["id"], id);
    let new = rotated["key"].as_str().unwrap();
    assert_ne!(new, old);
    assert!(rotated["grace_until"].is_string(), "{rotated}");
    for key in [old, new] {
        let (code, v) = cli.run(&["keys", "verify"], Some(key));
        assert_eq!(
            (code, v["code"].as_str(), v["key_id"].as_str()),
            (0, Some("VALID"), Some(id))
        );
    }
    // The record tells when the previous secret stops, never the hash.
    let shown = cli.ok(&["keys", "show", id]);
    assert_eq!(shown["grace_until"], rotated["grace_until"]);
    assert!(shown.get("hash").is_none());
    // No grace (the default): the previous key stops at once.
    let again = cli.ok(&["keys", "rotate", id]);
    assert!(again["grace_until"].is_null());
    let (code, v) = cli.run(&["keys", "verify"], Some(new));
    assert_eq!((code, v["code"].as_str()), (1, Some("NOT_FOUND")));
    let (code, _) = cli.run(&["keys", "verify"], Some(again["key"].as_str().unwrap()));
    assert_eq!(code, 0);
    // Bad grace, unknown and revoked keys are refused.
    let (code, _) = cli.run(&["keys", "rotate", id, "--grace", "soon"], None);
    assert_eq!(code, 2);
    let (code, _) = cli.run(&["keys", "rotate", "ZZZZZZZZZZZZ"], None);
    assert_ne!(code, 0);
    cli.ok(&["keys", "revoke", id]);
    let (code, _) = cli.run(&["keys", "rotate", id], None);
    assert_eq!(code, 2);
}

#[test]
fn rate_limits_hold_across_invocations() {
    rate_limits_hold_across_invocations_on(Cli::new());
}

#[test]
fn rate_limits_hold_across_invocations_on_postgres() {
    if let Some(cli) = Cli::postgres("rate_limits_hold_across_invocations_on_postgres") {
        rate_limits_hold_across_invocations_on(cli);
    }
}

fn rate_limits_hold_across_invocations_on(cli: Cli) {
    cli.ok(&["init"]);
    let created = cli.ok(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--owner",
        "alice",
        "--org",
        "acme",
        "--rate-limit",
        "3/min",
        "--rate-limit",
        "100/day",
        "--token-limit",
        "50000/h",
        "--models",
        "gpt-4o*,anthropic/*",
        "--max-parallel",
        "2",
        "--metadata",
        r#"{"team": "ml", "cost_centre": 42}"#,
        "--tags",
        "team-ml, batch",
    ]);
    assert_eq!(created["tags"], serde_json::json!(["team-ml", "batch"]));
    assert_eq!(
        created["metadata"],
        serde_json::json!({"team": "ml", "cost_centre": 42})
    );
    assert_eq!(
        created["allowed_models"],
        serde_json::json!(["gpt-4o*", "anthropic/*"])
    );
    let id = created["id"].as_str().unwrap();
    let key = created["key"].as_str().unwrap();
    let shown = cli.ok(&["keys", "show", id]);
    assert_eq!(shown["metadata"], created["metadata"]);
    assert_eq!(shown["tags"], created["tags"]);
    assert_eq!(shown["rate_limit"], "3/min");
    assert_eq!(shown["allowed_models"], created["allowed_models"]);
    assert_eq!(
        shown["limits"],
        serde_json::json!({"requests": ["3/min", "100/day"], "tokens": ["50000/h"], "models": [],
            "max_parallel": 2})
    );
    // The standing `GET /api/v1/key` answers: nothing used yet.
    assert_eq!(
        shown["rate_limits"][0],
        serde_json::json!({"scope": format!("key:{id}"), "counts": "requests", "quota": "3/min",
            "remaining": 3, "reset": 0})
    );
    assert_eq!(shown["rate_limits"].as_array().unwrap().len(), 3);
    assert_eq!(
        shown["concurrency"],
        serde_json::json!([{"scope": format!("key:{id}"), "limit": 2, "in_flight": 0}])
    );
    assert_eq!(shown["usage_today"]["events"], 0);
    assert_eq!(shown["usage_today"]["cost"], "0");
    // Three verifications in a minute, each a separate process; the fourth is refused.
    for left in [2, 1, 0] {
        let (code, v) = cli.run(&["keys", "verify"], Some(key));
        assert_eq!(
            (code, v["code"].as_str(), v["remaining"].as_u64()),
            (0, Some("VALID"), Some(left)),
            "{v}"
        );
    }
    let (code, v) = cli.run(&["keys", "verify"], Some(key));
    assert_eq!(code, 1);
    assert_eq!(
        (v["valid"].as_bool(), v["code"].as_str()),
        (Some(false), Some("RATE_LIMITED"))
    );
    assert_eq!(
        (v["limit"].as_u64(), v["remaining"].as_u64()),
        (Some(3), Some(0))
    );
    let retry = v["retry_after"].as_u64().unwrap();
    assert!((1..=20).contains(&retry), "{v}");
    assert!(v["reset"].as_u64().unwrap() >= retry);

    // Owner and org limits: set, shown, replaced, cleared.
    let set = cli.ok(&[
        "limits",
        "set",
        "--owner",
        "alice",
        "--requests",
        "10/s",
        "--tokens",
        "1000/min",
        "--max-parallel",
        "3",
    ]);
    assert_eq!(
        set,
        serde_json::json!({"scope": "owner:alice", "requests": ["10/s"], "tokens": ["1000/min"], "models": [],
            "max_parallel": 3})
    );
    assert_eq!(cli.ok(&["limits", "show", "--owner", "alice"]), set);
    let cleared = cli.ok(&["limits", "set", "--owner", "alice"]);
    assert_eq!(cleared["requests"], serde_json::json!([]));
    assert_eq!(
        cli.ok(&["limits", "show", "--org", "acme"]),
        serde_json::json!({"scope": "org:acme", "requests": [], "tokens": [], "models": [], "max_parallel": null})
    );
    // An organisation's model allowlist; a rule that cannot be one is refused.
    let set = cli.ok(&[
        "limits",
        "set",
        "--org",
        "acme",
        "--models",
        "openai/gpt-4o*",
    ]);
    assert_eq!(set["models"], serde_json::json!(["openai/gpt-4o*"]));
    assert_eq!(cli.ok(&["limits", "show", "--org", "acme"]), set);
    let (code, _) = cli.run(
        &["limits", "set", "--org", "acme", "--models", "gpt 4o"],
        None,
    );
    assert_eq!(code, 2);
    cli.ok(&["limits", "set", "--org", "acme"]);
    let (code, _) = cli.run(
        &["limits", "set", "--org", "acme", "--requests", "0/min"],
        None,
    );
    assert_eq!(code, 2);
    let (code, _) = cli.run(
        &[
            "limits",
            "set",
            "--org",
            "acme",
            "--requests",
            "5/fortnight",
        ],
        None,
    );
    assert_eq!(code, 2);
    let (code, _) = cli.run(
        &[
            "keys",
            "create",
            "--name",
            "x",
            "--owner",
            "bob",
            "--token-limit",
            "ten/min",
        ],
        None,
    );
    assert_eq!(code, 2);
    // An org limit of 1 per hour refuses a fresh key of that org after one verify.
    cli.ok(&["limits", "set", "--org", "acme", "--requests", "1/h"]);
    let other = cli.ok(&[
        "keys", "create", "--name", "ci2", "--owner", "bob", "--org", "acme",
    ]);
    let other = other["key"].as_str().unwrap();
    assert_eq!(cli.run(&["keys", "verify"], Some(other)).0, 0);
    let (code, v) = cli.run(&["keys", "verify"], Some(other));
    assert_eq!(
        (code, v["code"].as_str(), v["limit"].as_u64()),
        (1, Some("RATE_LIMITED"), Some(1))
    );
}

#[test]
fn an_unreachable_limiter_fails_closed_unless_configured_to_fail_open() {
    let mut cli = Cli::new();
    cli.ok(&["init"]);
    let created = cli.ok(&[
        "keys",
        "create",
        "--name",
        "ci",
        "--owner",
        "alice",
        "--rate-limit",
        "5/min",
    ]);
    let key = created["key"].as_str().unwrap();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("redis://127.0.0.1:{port}");
    let verify = ["--limiter", dead.as_str(), "keys", "verify"];
    cli.env.push(("KEYMETER_LIMITS_FAIL_OPEN", "0".into()));
    let closed = cli.run_with(&verify, Some(key));
    assert_eq!(
        closed.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );
    cli.env.push(("KEYMETER_LIMITS_FAIL_OPEN", "1".into()));
    let open = cli.run_with(&verify, Some(key));
    assert_eq!(
        open.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&open.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&open.stdout).unwrap();
    assert_eq!(v["code"], "VALID");
    assert!(String::from_utf8_lossy(&open.stderr).contains("failing open"));
}

#[test]
fn keys_stats_counts_every_verification_by_code() {
    keys_stats_counts_every_verification_by_code_on(Cli::new());
}

#[test]
fn keys_stats_counts_every_verification_by_code_on_postgres() {
    if let Some(cli) = Cli::postgres("keys_stats_counts_every_verification_by_code_on_postgres") {
        keys_stats_counts_every_verification_by_code_on(cli);
    }
}

fn keys_stats_counts_every_verification_by_code_on(cli: Cli) {
    cli.ok(&["init"]);
    let created = cli.ok(&[
        "keys", "create", "--name", "ci", "--owner", "alice", "--scopes", "read",
    ]);
    let id = created["id"].as_str().unwrap();
    let key = created["key"].as_str().unwrap();
    assert!(cli.ok(&["keys", "show", id])["last_used_at"].is_null());
    for _ in 0..3 {
        assert_eq!(cli.run(&["keys", "verify"], Some(key)).0, 0);
    }
    assert_eq!(
        cli.run(&["keys", "verify", "--scope", "admin"], Some(key))
            .0,
        1
    );
    // A typo is MALFORMED before any key is known, so it counts for no key.
    assert_eq!(
        cli.run(&["keys", "verify"], Some(&key[..key.len() - 1])).0,
        1
    );
    let stats = cli.ok(&["keys", "stats", id, "--days", "7"]);
    assert_eq!(stats["key_id"], id);
    assert_eq!(stats["total"], 4);
    assert_eq!(
        stats["by_code"],
        serde_json::json!({"INSUFFICIENT_SCOPE": 1, "VALID": 3})
    );
    assert_eq!(stats["days"].as_array().unwrap().len(), 7);
    let today = &stats["days"][6];
    assert_eq!(
        (today["total"].as_u64(), today["valid"].as_u64()),
        (Some(4), Some(3))
    );
    assert_eq!(stats["unusual"], false);
    assert!(stats["last_used_at"].is_string(), "{stats}");
    assert_eq!(
        cli.ok(&["keys", "show", id])["last_used_at"],
        stats["last_used_at"]
    );
    let (code, _) = cli.run(&["keys", "stats", "ZZZZZZZZZZZZ"], None);
    assert_eq!(code, 1);
}

#[test]
fn creds_commands_across_invocations() {
    creds_commands_across_invocations_on(Cli::new());
}

#[test]
fn creds_commands_across_invocations_on_postgres() {
    if let Some(cli) = Cli::postgres("creds_commands_across_invocations_on_postgres") {
        creds_commands_across_invocations_on(cli);
    }
}

fn creds_commands_across_invocations_on(cli: Cli) {
    cli.ok(&["init"]);
    let alice_key = "sk-ant-api03-alice-own-key-000000000000";
    let (code, v) = cli.run(
        &[
            "creds",
            "set",
            "--owner",
            "alice",
            "--provider",
            "anthropic",
        ],
        Some(alice_key),
    );
    assert_eq!((code, v["masked"].as_str()), (0, Some("sk-ant-…0000")));
    let (code, _) = cli.run(
        &["creds", "set", "--system", "--provider", "anthropic"],
        Some("sk-ant-api03-system-key-11111111111111"),
    );
    assert_eq!(code, 0);
    // Malformed and placeholder keys exit 2 with a message that does not echo them.
    for bad in [
        "sk-...",
        "changeme",
        "sk-proj-wrong-provider-key-0000000000",
    ] {
        let out = cli.run_with(
            &[
                "creds",
                "set",
                "--owner",
                "alice",
                "--provider",
                "anthropic",
            ],
            Some(bad),
        );
        assert_eq!(out.status.code(), Some(2), "{bad}");
        assert!(!String::from_utf8_lossy(&out.stderr).contains(bad));
    }

    let status = cli.ok(&["creds", "status", "--owner", "alice"]);
    assert_eq!(status["owner"], "alice");
    assert_eq!(
        status["providers"]["anthropic"],
        serde_json::json!({"user": true, "system": true})
    );
    assert_eq!(
        status["providers"]["openai"],
        serde_json::json!({"user": false, "system": false})
    );
    assert!(!status.to_string().contains("sk-ant"));

    let r = cli.ok(&[
        "creds",
        "resolve",
        "--owner",
        "alice",
        "--provider",
        "anthropic",
    ]);
    assert_eq!(
        r,
        serde_json::json!({"provider": "anthropic", "source": "user", "masked": "sk-ant-…0000"})
    );
    let r = cli.ok(&[
        "creds",
        "resolve",
        "--owner",
        "bob",
        "--provider",
        "anthropic",
    ]);
    assert_eq!(r["source"], "system");
    let (code, v) = cli.run(
        &["creds", "resolve", "--owner", "bob", "--provider", "openai"],
        None,
    );
    assert_eq!(
        (code, v),
        (
            1,
            serde_json::json!({"code": "NO_CREDENTIAL", "provider": "openai"})
        )
    );

    // The .env tier: ./.env is used in development...
    std::fs::write(
        cli.dir.path().join(".env"),
        "# dev\nOPENAI_API_KEY=sk-proj-from-dotenv-aaaaaaaaaaaaaaaa\n",
    )
    .unwrap();
    let r = cli.ok(&["creds", "resolve", "--owner", "bob", "--provider", "openai"]);
    assert_eq!(r["source"], "env-file");
    // ...and written to only when named, in development.
    let (code, _) = cli.run(
        &[
            "creds",
            "set",
            "--system",
            "--provider",
            "google",
            "--env-file",
            ".env",
        ],
        Some("AIzaSyA-abcdefghijklmnopqrstuvwxyz01234"),
    );
    assert_eq!(code, 0);
    let env_text = std::fs::read_to_string(cli.dir.path().join(".env")).unwrap();
    assert!(env_text.starts_with(
        "# dev\nOPENAI_API_KEY=sk-proj-from-dotenv-aaaaaaaaaaaaaaaa\nGOOGLE_API_KEY=AIza"
    ));

    // Rotate the master key: new key first, old one kept, then rewrap.
    let secrets = std::fs::read_to_string(cli.dir.path().join("keymeter.secrets")).unwrap();
    let old = secrets
        .lines()
        .find_map(|l| l.strip_prefix("KEYMETER_MASTER_KEYS="))
        .unwrap()
        .to_owned();
    let pepper = secrets
        .lines()
        .find_map(|l| l.strip_prefix("KEYMETER_PEPPER="))
        .unwrap()
        .to_owned();
    let new = cli.ok(&["vault", "keygen", "--id", "k2"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut rotated = Cli {
        dir: cli.dir,
        env: cli.env.clone(),
        store: cli.store.clone(),
    };
    rotated
        .env
        .push(("KEYMETER_MASTER_KEYS", format!("{new},{old}")));
    rotated.env.push(("KEYMETER_PEPPER", pepper));
    let report = rotated.ok(&["creds", "rewrap"]);
    assert_eq!(
        (report["total"].as_u64(), report["rewrapped"].as_u64()),
        (Some(2), Some(2))
    );
    rotated.env.retain(|(k, _)| *k != "KEYMETER_MASTER_KEYS");
    rotated.env.push(("KEYMETER_MASTER_KEYS", new));
    assert_eq!(
        rotated.ok(&[
            "creds",
            "resolve",
            "--owner",
            "alice",
            "--provider",
            "anthropic"
        ])["source"],
        "user"
    );

    // Production never reads or writes .env keys.
    let mut prod = Cli {
        dir: rotated.dir,
        env: rotated.env.clone(),
        store: rotated.store.clone(),
    };
    prod.env.retain(|(k, _)| *k != "KEYMETER_ENV");
    prod.env.push(("KEYMETER_ENV", "production".into()));
    let (code, v) = prod.run(
        &["creds", "resolve", "--owner", "bob", "--provider", "openai"],
        None,
    );
    assert_eq!((code, v["code"].as_str()), (1, Some("NO_CREDENTIAL")));
    let (code, _) = prod.run(
        &[
            "creds",
            "resolve",
            "--owner",
            "bob",
            "--provider",
            "openai",
            "--env-file",
            ".env",
        ],
        None,
    );
    assert_eq!(code, 2);
    let before = std::fs::read(prod.dir.path().join(".env")).unwrap();
    let (code, _) = prod.run(
        &[
            "creds",
            "set",
            "--system",
            "--provider",
            "openai",
            "--env-file",
            ".env",
        ],
        Some("sk-proj-abcdefghijklmnopqrstuvwxyz"),
    );
    assert_eq!(code, 2);
    assert_eq!(std::fs::read(prod.dir.path().join(".env")).unwrap(), before);

    let deleted = prod.ok(&["creds", "delete", "--owner", "alice"]);
    assert_eq!(deleted["deleted"], 1);

    // No plaintext key anywhere in the database files.
    for entry in std::fs::read_dir(prod.dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("keymeter.db") {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes
                    .windows(alice_key.len())
                    .any(|w| w == alice_key.as_bytes())
            );
            assert!(!bytes.windows(10).any(|w| w == b"system-key"));
        }
    }
}

#[test]
fn usage_and_budget_commands() {
    usage_and_budget_commands_on(Cli::new());
}

#[test]
fn usage_and_budget_commands_on_postgres() {
    if let Some(cli) = Cli::postgres("usage_and_budget_commands_on_postgres") {
        usage_and_budget_commands_on(cli);
    }
}

fn usage_and_budget_commands_on(cli: Cli) {
    cli.ok(&["init"]);
    let rec = |req: &str, owner: &str, at: &str, input: &str| {
        cli.ok(&[
            "usage",
            "record",
            "--owner",
            owner,
            "--org",
            "acme",
            "--key-id",
            "k1",
            "--model",
            "gpt-4o",
            "--request-id",
            req,
            "--at",
            at,
            "--input",
            input,
            "--output",
            "100",
        ])
    };
    // 1000 × 0.0000025 + 100 × 0.00001 = 0.0035
    let first = rec("r1", "alice", "2026-03-29T21:30:00Z", "1000");
    assert_eq!(
        (first["cost"].as_str(), first["duplicate"].as_bool()),
        (Some("0.0035"), Some(false))
    );
    let again = rec("r1", "alice", "2026-03-29T21:30:00Z", "1000");
    assert_eq!(again["duplicate"], true);
    assert_eq!(again["event_id"], first["event_id"]);
    rec("r2", "alice", "2026-03-29T22:30:00Z", "2000");
    rec("r3", "bob", "2026-04-02T10:00:00Z", "3000");

    let report = cli.ok(&["usage", "report", "--by", "owner"]);
    assert_eq!(report["total"], "0.018"); // 0.0035 + 0.006 + 0.0085
    assert_eq!(
        report["groups"][0],
        serde_json::json!({"key": "alice", "cost": "0.0095", "events": 2, "input_tokens": 3000, "output_tokens": 200})
    );
    let days = cli.ok(&["usage", "report", "--by", "day", "--tz", "Europe/Berlin"]);
    let keys: Vec<&str> = days["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["2026-03-29", "2026-03-30", "2026-04-02"]);
    let months = cli.ok(&[
        "usage",
        "report",
        "--by",
        "month",
        "--owner",
        "alice",
        "--tz",
        "Europe/Berlin",
    ]);
    assert_eq!(months["groups"][0]["key"], "2026-03");
    let window = cli.ok(&[
        "usage",
        "report",
        "--by",
        "model",
        "--since",
        "2026-04-01",
        "--until",
        "2026-05-01",
    ]);
    assert_eq!(window["total"], "0.0085");
    let (code, _) = cli.run(&["usage", "report", "--by", "planet"], None);
    assert_eq!(code, 2);
    let (code, v) = cli.run(
        &[
            "usage", "record", "--owner", "a", "--model", "gpt-99", "--input", "1",
        ],
        None,
    );
    assert_eq!((code, v["code"].as_str()), (1, Some("UNKNOWN_MODEL")));

    let set = cli.ok(&[
        "budget", "set", "--org", "acme", "--limit", "25.00", "--period", "total", "--soft", "0.01",
    ]);
    assert_eq!(set["limit"], "25.00");
    let status = cli.ok(&["budget", "status", "--org", "acme"]);
    for field in [
        "limit",
        "spent",
        "reserved",
        "remaining",
        "period_start",
        "soft_exceeded",
    ] {
        assert!(status.get(field).is_some(), "{field} missing: {status}");
    }
    assert_eq!(
        (status["spent"].as_str(), status["reserved"].as_str()),
        (Some("0.018"), Some("0"))
    );
    assert_eq!(status["remaining"], "24.982");
    assert_eq!(status["soft_exceeded"], true);
    cli.ok(&[
        "budget",
        "set",
        "--owner",
        "alice",
        "--limit",
        "1",
        "--period",
        "monthly",
        "--tz",
        "Europe/Berlin",
    ]);
    let alice = cli.ok(&["budget", "status", "--owner", "alice"]);
    assert_eq!(alice["soft_exceeded"], false);
    let (code, v) = cli.run(&["budget", "status", "--key", "nope"], None);
    assert_eq!((code, v["code"].as_str()), (1, Some("NO_BUDGET")));
    for bad in [
        &[
            "budget", "set", "--owner", "a", "--limit", "-1", "--period", "daily",
        ][..],
        &[
            "budget", "set", "--owner", "a", "--limit", "1", "--period", "hourly",
        ],
        &[
            "budget",
            "set",
            "--owner",
            "a",
            "--limit",
            "1",
            "--period",
            "daily",
            "--tz",
            "Mars/Olympus",
        ],
        &[
            "budget", "set", "--owner", "a", "--org", "b", "--limit", "1", "--period", "daily",
        ],
        &[
            "budget", "set", "--owner", "a", "--limit", "1", "--period", "daily", "--soft", "2",
        ],
    ] {
        assert_eq!(cli.run_with(bad, None).status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn fifty_concurrent_record_processes_all_land() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let db = format!("sqlite://{}", cli.db().display());
    let mut children = Vec::new();
    for i in 0..50u64 {
        let child = Command::new(env!("CARGO_BIN_EXE_keymeter"))
            .current_dir(cli.dir.path())
            .env("KEYMETER_ENV", "development")
            .args([
                "--store",
                &db,
                "--json",
                "usage",
                "record",
                "--owner",
                &format!("user{}", i % 5),
                "--model",
                "gpt-4o",
            ])
            .args([
                "--request-id",
                &format!("req-{i}"),
                "--input",
                &(1000 + i).to_string(),
                "--output",
                "7",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        children.push(child);
    }
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let report = cli.ok(&["usage", "report", "--by", "owner"]);
    // Σ (1000 + i) × 0.0000025 + 7 × 0.00001 over i = 0..50 = 51225 × 0.0000025 + 50 × 0.00007
    let expected: rust_decimal::Decimal = "0.1280625".parse::<rust_decimal::Decimal>().unwrap()
        + "0.0035".parse::<rust_decimal::Decimal>().unwrap();
    assert_eq!(report["total"], expected.to_string());
    let events: u64 = report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["events"].as_u64().unwrap())
        .sum();
    assert_eq!(events, 50);
}

#[test]
fn a_hundred_processes_starting_on_a_new_database_all_succeed() {
    let cli = Cli::new();
    let db = format!("sqlite://{}", cli.dir.path().join("fresh.db").display());
    let children: Vec<_> = (0..100)
        .map(|_| {
            Command::new(env!("CARGO_BIN_EXE_keymeter"))
                .current_dir(cli.dir.path())
                .env("KEYMETER_ENV", "development")
                .env_remove("KEYMETER_STORE")
                .args(["--store", &db, "--json", "keys", "list"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["keys"], serde_json::json!([]));
    }
}

#[test]
#[cfg(unix)]
fn a_non_utf8_keymeter_env_in_the_process_environment_is_an_error() {
    use std::os::unix::ffi::OsStrExt;
    // Checked in a child process so this test never mutates its own environment.
    let out = Command::new(env!("CARGO_BIN_EXE_keymeter"))
        .env("KEYMETER_ENV", std::ffi::OsStr::from_bytes(b"prod\xff"))
        .args(["env"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("UTF-8"));
}

fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn files_are_private_from_creation_and_planted_temporaries_are_ignored() {
    let cli = Cli::new();
    // A pre-existing temporary of the old writer's name, world-readable, must not decide the secrets' mode.
    let planted = cli.dir.path().join("keymeter.secrets.tmp");
    std::fs::write(&planted, "planted").unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    cli.ok(&["init"]);
    let secrets = cli.dir.path().join("keymeter.secrets");
    assert_eq!(mode_of(&secrets), 0o600);
    assert_eq!(std::fs::read_to_string(&planted).unwrap(), "planted");
    cli.ok(&["keys", "list"]);
    // The database is private; its -wal/-shm files, when they outlive the process, too (checked while a
    // connection holds them open in tests/embed.rs).
    assert_eq!(mode_of(&cli.db()), 0o600);
    for suffix in ["-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", cli.db().display()));
        if file.exists() {
            assert_eq!(mode_of(&file), 0o600, "{}", file.display());
        }
    }
    // A secrets file others can read is used in development, with a warning on stderr.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let out = cli.run_with(&["keys", "list"], None);
    assert_eq!(out.status.code(), Some(0));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("warning") && stderr.contains("chmod 600"),
        "{stderr}"
    );
}

#[test]
fn configuration_errors_never_echo_a_secret() {
    let mut cli = Cli::new();
    let b64 = "cHJvZHVjdGlvbi1wZXBwZXItMzItYnl0ZXMtbG9uZyE=";
    for var in ["KEYMETER_PEPPER", "KEYMETER_MASTER_KEYS"] {
        cli.env = vec![
            ("KEYMETER_ENV", "production".into()),
            (var, format!("{b64}:p1")),
        ];
        let out = cli.run_with(&["keys", "list"], None);
        assert_eq!(out.status.code(), Some(2), "{var}");
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!all.contains(&b64[..12]), "{var}: {all}");
        assert!(all.contains(var) && all.contains("entry 1"), "{var}: {all}");
    }
    cli.env = vec![("KEYMETER_ENV", "development".into())];
    let out = cli.run_with(
        &[
            "--store",
            "postgres://admin:hunter2-secret@db.internal/app",
            "keys",
            "list",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("hunter2"), "{all}");
}

#[test]
fn production_init_without_secrets_creates_nothing() {
    let mut cli = Cli::new();
    cli.env = vec![("KEYMETER_ENV", "production".into())];
    let out = cli.run_with(&["init"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        !cli.db().exists(),
        "the database was created before the refusal"
    );
    assert_eq!(std::fs::read_dir(cli.dir.path()).unwrap().count(), 0);
    // DEBUG beside a production signal is production too.
    cli.env = vec![
        ("DEBUG", "True".into()),
        ("DEPLOY_ENV", "production".into()),
    ];
    assert_eq!(cli.ok(&["env"])["environment"], "production");
    assert_eq!(cli.run_with(&["init"], None).status.code(), Some(2));
    assert!(!cli.dir.path().join("keymeter.secrets").exists());
}

#[test]
fn bad_input_is_refused_and_never_panics() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let no_panic = |out: &Output| {
        assert_ne!(
            out.status.code(),
            Some(101),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        )
    };
    // Far-future lifetimes overflow the calendar: a usage error.
    let out = cli.run_with(
        &[
            "keys",
            "create",
            "--name",
            "a",
            "--owner",
            "b",
            "--expires-in",
            "100000000w",
        ],
        None,
    );
    no_panic(&out);
    assert_eq!(out.status.code(), Some(2));
    // Unbounded inputs are refused, not read whole.
    let out = cli.run_with(
        &[
            "price",
            "cost",
            "--model",
            "gpt-4o",
            "--usage",
            "/dev/zero",
            "--usage-format",
            "openai",
        ],
        None,
    );
    no_panic(&out);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than"));
    // A token that is not UTF-8 is MALFORMED (a verdict), not a usage error.
    let mut child = cli
        .command(&["--json", "keys", "verify"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"km_live_\xff\xfe")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], "MALFORMED");
    // Names nothing can read back, or that would rewrite a terminal, are refused.
    for args in [
        &[
            "budget", "set", "--org", "", "--limit", "5", "--period", "monthly",
        ][..],
        &[
            "usage",
            "record",
            "--owner",
            "\u{1b}[31mred",
            "--model",
            "gpt-4o",
            "--input",
            "1",
        ],
        &["keys", "create", "--name", "a", "--owner", " "],
    ] {
        let out = cli.run_with(args, None);
        no_panic(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
    let out = cli.run_with(
        &["creds", "set", "--owner", "", "--provider", "openai"],
        Some("sk-proj-abcdefghijklmnopqrstuvwxyz"),
    );
    assert_eq!(out.status.code(), Some(2));
    // A custom catalog with prices so large that ledger sums could overflow: a typed refusal, nothing stored,
    // and the report keeps working.
    let huge = cli.dir.path().join("huge.json");
    std::fs::write(
        &huge,
        r#"{"format": "keymeter-catalog/1", "models": [{"id": "huge", "provider": "acme", "currency": "USD",
            "prices": [{"effective_from": null, "effective_until": null,
                        "rates": {"input": "10000000000000000000000", "output": "1"}}]}]}"#,
    )
    .unwrap();
    let huge = huge.display().to_string();
    let out = cli.run_with(
        &[
            "usage",
            "record",
            "--owner",
            "o",
            "--model",
            "huge",
            "--catalog",
            &huge,
            "--input",
            "1000000",
        ],
        None,
    );
    no_panic(&out);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = cli.ok(&["usage", "report", "--by", "owner"]);
    assert_eq!(report["total"], "0");
}

#[test]
fn a_closed_stdout_never_leaves_a_live_key_nobody_saw() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    // `keymeter keys create … | true`: the reader is gone before the key is written (closed before the start,
    // so the write always fails).
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = cli
        .command(&["keys", "create", "--name", "lost", "--owner", "o"])
        .stdout(writer)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2), "no panic (101), a clear failure");
    let listed = cli.ok(&["keys", "list"]);
    let keys = listed["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert!(
        !keys[0]["revoked_at"].is_null(),
        "the unseen key was revoked: {}",
        keys[0]
    );
}

#[test]
fn rewrap_names_the_row_it_cannot_decrypt_and_rewraps_the_rest() {
    let mut cli = Cli::new();
    let old = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let lost = "k0:HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4=";
    cli.env.push((
        "KEYMETER_PEPPER",
        "cHJvZHVjdGlvbi1wZXBwZXItMzItYnl0ZXMtbG9uZyE=".into(),
    ));
    cli.env
        .push(("KEYMETER_MASTER_KEYS", format!("{lost},{old}")));
    cli.run(
        &["creds", "set", "--owner", "mallory", "--provider", "openai"],
        Some("sk-proj-abcdefghijklmnopqrstuvwxyz012345"),
    );
    cli.env.retain(|(k, _)| *k != "KEYMETER_MASTER_KEYS");
    cli.env.push(("KEYMETER_MASTER_KEYS", old.into()));
    let (code, _) = cli.run(
        &["creds", "set", "--owner", "alice", "--provider", "openai"],
        Some("sk-proj-alicealicealicealicealice0123"),
    );
    assert_eq!(code, 0);
    // A new active key; k0 (mallory's row) is gone from the ring.
    let new = "k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=";
    cli.env.retain(|(k, _)| *k != "KEYMETER_MASTER_KEYS");
    cli.env
        .push(("KEYMETER_MASTER_KEYS", format!("{new},{old}")));
    let (code, v) = cli.run(&["creds", "rewrap"], None);
    assert_eq!(code, 1, "{v}");
    assert_eq!(
        (v["total"].as_u64(), v["rewrapped"].as_u64()),
        (Some(2), Some(1)),
        "{v}"
    );
    assert_eq!(v["unreadable"][0]["owner"], "mallory");
    assert_eq!(v["unreadable"][0]["provider"], "openai");
    let (code, v) = cli.run(
        &[
            "creds",
            "resolve",
            "--owner",
            "alice",
            "--provider",
            "openai",
        ],
        None,
    );
    assert_eq!((code, v["source"].as_str()), (0, Some("user")), "{v}");
}

#[test]
fn vault_keygen_prints_only_the_entry_on_stdout() {
    let cli = Cli::new();
    let out = Command::new(env!("CARGO_BIN_EXE_keymeter"))
        .current_dir(cli.dir.path())
        .args(["vault", "keygen", "--id", "k9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(stdout.starts_with("k9:"));
    assert!(keymeter::credentials::MasterKeyRing::from_env_value(stdout.trim()).is_ok());
    assert!(
        !String::from_utf8_lossy(&out.stderr).is_empty(),
        "the advice goes to stderr"
    );
}

#[test]
fn usage_export_import_prune() {
    usage_export_import_prune_on(Cli::new(), Cli::new());
}

#[test]
fn usage_export_import_prune_on_postgres() {
    let Some(target) = Cli::postgres("usage_export_import_prune") else {
        return;
    };
    usage_export_import_prune_on(Cli::new(), target);
}

/// Events exported from one store and imported into another (SQLite or PostgreSQL) are the same events, the
/// import is idempotent, a bad line records nothing, and pruning keeps budgets' spend.
fn usage_export_import_prune_on(source: Cli, target: Cli) {
    source.ok(&["init"]);
    target.ok(&["init"]);
    for (req, owner, at) in [
        ("r1", "alice", "2026-01-15T10:00:00Z"),
        ("r2", "Smith, \"Al\"", "2026-02-01T00:00:00Z"),
        ("r3", "alice", "2026-03-02T12:30:00.5Z"),
    ] {
        source.ok(&[
            "usage",
            "record",
            "--owner",
            owner,
            "--org",
            "acme",
            "--model",
            "gpt-4o",
            "--request-id",
            req,
            "--at",
            at,
            "--input",
            "1000",
            "--cache-read",
            "200",
            "--output",
            "100",
        ]);
    }
    let export = |cli: &Cli, extra: &[&str]| {
        let out = cli.run_with(&[&["usage", "export"], extra].concat(), None);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let jsonl = export(&source, &[]);
    assert_eq!(jsonl.lines().count(), 3);
    let first: Value = serde_json::from_str(jsonl.lines().next().unwrap()).unwrap();
    assert_eq!(first["request_id"], "r1");
    assert!(first["cost"].is_string(), "{first}");
    assert_eq!(first["usage"]["cache_read"], 200);
    let since = export(&source, &["--since", "2026-02-01", "--until", "2026-03-01"]);
    assert_eq!(since.lines().count(), 1);
    let csv = export(&source, &["--format", "csv"]);
    let mut rows = csv.lines();
    let header = rows.next().unwrap();
    assert!(
        header.starts_with("event_id,request_id,at,key_id,owner,org,provider,model,usage.input,")
    );
    assert!(
        header.contains("usage.cache_read")
            && header.ends_with("cost,credential_source,estimated,estimated_first,tags,end_user")
    );
    assert_eq!(rows.count(), 3);
    assert!(csv.contains("\"Smith, \"\"Al\"\"\""), "{csv}");

    // A bad line anywhere: exit 2 naming it, nothing recorded.
    let mut lines: Vec<&str> = jsonl.lines().collect();
    lines.insert(2, "{\"event_id\": \"ev_x\"}");
    let out = target.run_with(&["usage", "import", "-"], Some(&lines.join("\n")));
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("line 3"), "{stderr}");
    assert_eq!(export(&target, &[]), "");

    let file = target.dir.path().join("events.jsonl");
    std::fs::write(&file, &jsonl).unwrap();
    let imported = target.ok(&["usage", "import", file.to_str().unwrap()]);
    assert_eq!(
        imported,
        serde_json::json!({"read": 3, "recorded": 3, "duplicates": 0})
    );
    assert_eq!(
        export(&target, &[]),
        jsonl,
        "the same events, ids and costs"
    );
    let (code, again) = target.run(&["usage", "import", "-"], Some(&jsonl));
    assert_eq!(code, 0);
    assert_eq!(
        again,
        serde_json::json!({"read": 3, "recorded": 0, "duplicates": 3})
    );

    // Prune: events go, the budget's spend and the request ids stay.
    target.ok(&[
        "budget", "set", "--org", "acme", "--limit", "10", "--period", "total",
    ]);
    let before = target.ok(&["budget", "status", "--org", "acme"]);
    let pruned = target.ok(&["usage", "prune", "--before", "2026-03-01"]);
    assert_eq!(pruned["pruned"], 2);
    assert_eq!(export(&target, &[]).lines().count(), 1);
    assert_eq!(
        target.ok(&["budget", "status", "--org", "acme"])["spent"],
        before["spent"]
    );
    let (_, resent) = target.run(&["usage", "import", "-"], Some(&jsonl));
    assert_eq!(resent["duplicates"], 3);
    let report = target.ok(&["usage", "report", "--by", "owner"]);
    assert_eq!(report["groups"].as_array().unwrap().len(), 1);
}

#[test]
fn usage_adjust_replaces_an_estimated_event() {
    usage_adjust_replaces_an_estimated_event_on(Cli::new());
}

#[test]
fn usage_adjust_replaces_an_estimated_event_on_postgres() {
    if let Some(cli) = Cli::postgres("usage_adjust_replaces_an_estimated_event_on_postgres") {
        usage_adjust_replaces_an_estimated_event_on(cli);
    }
}

/// `usage adjust` replaces an estimated event (here imported, as a journal replay or the store's safety net
/// would write it) with exact usage: same event id, `estimated_first`, budget moved by the difference; an exact
/// event or an unknown request id is a negative answer that changes nothing.
fn usage_adjust_replaces_an_estimated_event_on(cli: Cli) {
    cli.ok(&["init"]);
    cli.ok(&[
        "budget", "set", "--owner", "alice", "--limit", "10", "--period", "total",
    ]);
    let line = |request: &str, cost: &str, estimated: bool| {
        serde_json::json!({
            "event_id": format!("ev_{request}"), "request_id": request, "at": "2026-11-20T10:00:00Z",
            "owner": "alice", "provider": "openai", "model": "gpt-4o",
            "usage": {"input": 2000, "output": 16000}, "cost": cost, "estimated": estimated,
        })
        .to_string()
    };
    let lines = [line("r-est", "0.165", true), line("r-exact", "0.01", false)].join("\n");
    assert_eq!(
        cli.run(&["usage", "import", "-"], Some(&lines)).1["recorded"],
        2
    );
    assert_eq!(
        cli.ok(&["usage", "report", "--by", "owner"])["estimated"]["events"],
        1
    );

    let adjusted = cli.ok(&[
        "usage", "adjust", "r-est", "--input", "1000", "--output", "100",
    ]);
    // gpt-4o: $2.50 per million input tokens, $10 per million output.
    assert_eq!(
        adjusted,
        serde_json::json!({"request_id": "r-est", "event_id": "ev_r-est", "cost": "0.0035",
                           "previous_cost": "0.165", "replaced": true})
    );
    let report = cli.ok(&["usage", "report", "--by", "owner"]);
    assert_eq!(
        (report["total"].as_str(), &report["estimated"]["events"]),
        (Some("0.0135"), &serde_json::json!(0))
    );
    assert_eq!(
        cli.ok(&["budget", "status", "--owner", "alice"])["spent"],
        "0.0135"
    );
    let out = cli.run_with(&["usage", "export"], None);
    let exported: Value = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["request_id"] == "r-est")
        .unwrap();
    assert_eq!(exported["estimated_first"], true);
    assert_eq!(exported.get("estimated"), None);
    assert_eq!(exported["usage"]["output"], 100);

    for (request, code) in [
        ("r-est", "NOT_ESTIMATED"),
        ("r-exact", "NOT_ESTIMATED"),
        ("r-none", "NOT_FOUND"),
    ] {
        let (exit, answer) = cli.run(&["usage", "adjust", request, "--input", "1"], None);
        assert_eq!(
            (exit, answer["code"].as_str()),
            (1, Some(code)),
            "{request}: {answer}"
        );
    }
    assert_eq!(
        cli.ok(&["budget", "status", "--owner", "alice"])["spent"],
        "0.0135",
        "a refused adjustment changes nothing"
    );
}

/// `creds delete --system` removes the operator's key as `creds set --system` stored it; `--owner` and
/// `--system` together are a usage error.
#[test]
fn creds_delete_takes_system_keys_too() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let (code, _) = cli.run(
        &["creds", "set", "--system", "--provider", "anthropic"],
        Some("sk-ant-api03-system-key-11111111111111"),
    );
    assert_eq!(code, 0);
    assert_eq!(
        cli.ok(&["creds", "status", "--owner", "alice"])["providers"]["anthropic"]["system"],
        true
    );
    let deleted = cli.ok(&["creds", "delete", "--system", "--provider", "anthropic"]);
    assert_eq!(
        deleted,
        serde_json::json!({"owner": null, "scope": "system", "deleted": 1})
    );
    assert_eq!(
        cli.ok(&["creds", "status", "--owner", "alice"])["providers"]["anthropic"]["system"],
        false
    );
    let out = cli.run_with(&["creds", "delete", "--system", "--owner", "alice"], None);
    assert_eq!(out.status.code(), Some(2));
}
