//! The CLI for a person (no `--json`): tables with headers, money with its currency, prices per million tokens,
//! no colour or progress when the output is not a terminal, and `price update` against a loopback server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};

struct Cli {
    dir: tempfile::TempDir,
}

impl Cli {
    fn new() -> Self {
        Cli {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// `keymeter ARGS` in development on this directory's SQLite file, stdout and stderr piped (not terminals).
    fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keymeter"));
        cmd.current_dir(self.dir.path())
            .env("KEYMETER_ENV", "development")
            .env("TZ", "UTC")
            .env_remove("KEYMETER_PEPPER")
            .env_remove("KEYMETER_MASTER_KEYS")
            .env_remove("KEYMETER_CATALOG")
            .env_remove("NO_COLOR")
            .args(["--store", "sqlite://keys.db"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            let _ = pipe.write_all(input.as_bytes());
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    /// Stdout of a command that must succeed.
    fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{args:?}: {stderr}");
        assert_no_terminal_codes(&stderr);
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_no_terminal_codes(&stdout);
        stdout
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        serde_json::from_str(&self.ok(&all)).unwrap()
    }
}

/// Not a terminal: no colour, no cursor movement, no progress bar.
fn assert_no_terminal_codes(text: &str) {
    assert!(!text.contains('\u{1b}'), "escape codes in {text:?}");
    assert!(
        !text.contains('\r'),
        "carriage returns (progress) in {text:?}"
    );
}

/// The header row of a table: the first line, split on runs of spaces.
fn header(table: &str) -> Vec<String> {
    table
        .lines()
        .next()
        .unwrap()
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The row of a table whose first column is `first`, split into columns.
fn row(table: &str, first: &str) -> Vec<String> {
    let line = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first:?} in\n{table}"));
    line.split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn keys_are_a_table_with_created_last_used_and_status() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    assert!(cli.ok(&["keys", "list"]).contains("no keys yet"));
    let created = cli.json(&[
        "keys",
        "create",
        "--name",
        "ci-bot",
        "--owner",
        "alice",
        "--scopes",
        "read,write",
    ]);
    let id = created["id"].as_str().unwrap().to_owned();
    let other = cli.json(&[
        "keys", "create", "--name", "laptop", "--owner", "bob", "--org", "acme",
    ]);
    let other_id = other["id"].as_str().unwrap().to_owned();
    cli.ok(&["keys", "revoke", &other_id]);
    cli.ok_with(&["keys", "verify"], created["key"].as_str());

    let list = cli.ok(&["keys", "list"]);
    assert_eq!(
        header(&list),
        [
            "ID",
            "Name",
            "Owner",
            "Scopes",
            "Created",
            "Last used",
            "Status"
        ]
    );
    assert_eq!(
        row(&list, &id),
        [
            id.as_str(),
            "ci-bot",
            "alice",
            "read, write",
            "just now",
            "just now",
            "active"
        ]
    );
    assert_eq!(
        row(&list, &other_id),
        [
            other_id.as_str(),
            "laptop",
            "bob (acme)",
            "just now",
            "never",
            "revoked"
        ]
    );
    assert!(list.contains("2 key(s)"));

    let show = cli.ok(&["keys", "show", &id]);
    assert_eq!(header(&show), ["Field", "Value"]);
    assert_eq!(row(&show, "Status"), ["Status", "active"]);
    assert_eq!(row(&show, "Hash"), ["Hash", "hmac-sha256"]);
    assert!(row(&show, "Created")[1].ends_with("(just now)"));
    assert!(
        !show.contains(created["key"].as_str().unwrap()),
        "never the key"
    );

    let stats = cli.ok(&["keys", "stats", &id, "--days", "3"]);
    assert!(stats.contains("1 verifications in 3 days"), "{stats}");
    let today = chrono::Utc::now().date_naive().to_string();
    let today_row = row(&stats, &today);
    assert_eq!(today_row[..3], [today.as_str(), "1", "1"]);
    assert!(
        today_row[3].starts_with('█'),
        "a bar for the busiest day: {today_row:?}"
    );
    assert_eq!(row(&stats, "VALID"), ["VALID", "1"]);
}

#[test]
fn money_reads_with_its_currency_and_prices_per_million_tokens() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let cost = cli.ok(&[
        "price",
        "cost",
        "--model",
        "gpt-4o",
        "--input",
        "1200",
        "--output",
        "350",
        "--cache-read",
        "1000",
    ]);
    assert_eq!(
        header(&cost[cost.find('\n').unwrap() + 1..]),
        ["Line", "Count", "Price", "Cost"]
    );
    assert_eq!(
        row(&cost, "input"),
        ["input", "1,200", "$2.50 / 1M tokens", "$0.003"]
    );
    assert_eq!(
        row(&cost, "cache_read"),
        ["cache_read", "1,000", "$1.25 / 1M tokens", "$0.00125"]
    );
    assert_eq!(
        row(&cost, "output"),
        ["output", "350", "$10.00 / 1M tokens", "$0.0035"]
    );
    assert_eq!(row(&cost, "Total"), ["Total", "$0.00775"]);
    // The JSON keeps per-token rates, as DESIGN §9 says.
    let json = cli.json(&["price", "cost", "--model", "gpt-4o", "--input", "1200"]);
    assert_eq!(json["lines"][0]["rate"], "0.0000025");

    let show = cli.ok(&["price", "show", "gpt-4o"]);
    assert!(
        show.starts_with("gpt-4o (openai, chat, prices in USD)"),
        "{show}"
    );
    assert_eq!(
        header(&show[show.find(" Class").unwrap()..])[..3],
        ["Class", "Per", "standard"]
    );
    assert_eq!(row(&show, "input")[..3], ["input", "1M tokens", "$2.50"]);
    assert_eq!(row(&show, "output")[..3], ["output", "1M tokens", "$10.00"]);
    let list = cli.ok(&["price", "list", "--provider", "openai"]);
    assert_eq!(
        header(&list),
        ["Model", "Provider", "Mode", "Input / 1M", "Output / 1M"]
    );
    assert_eq!(row(&list, "gpt-4o")[3..], ["$2.50", "$10.00"]);

    cli.ok(&[
        "usage", "record", "--owner", "alice", "--model", "gpt-4o", "--input", "1000", "--output",
        "200",
    ]);
    cli.ok(&[
        "usage", "record", "--owner", "bob", "--model", "gpt-4o", "--input", "2000", "--output",
        "100",
    ]);
    let report = cli.ok(&["usage", "report", "--by", "owner"]);
    assert_eq!(
        header(&report),
        ["Owner", "Cost", "Requests", "Input tokens", "Output tokens"]
    );
    assert_eq!(
        row(&report, "alice"),
        ["alice", "$0.0045", "1", "1,000", "200"]
    );
    assert_eq!(
        row(&report, "Total"),
        ["Total", "$0.0105", "2", "3,000", "300"]
    );
    let by_day = cli.ok(&["usage", "report", "--by", "day", "--tz", "Europe/Berlin"]);
    assert_eq!(header(&by_day)[0], "Day (Europe/Berlin)");

    cli.ok(&[
        "budget", "set", "--owner", "alice", "--limit", "25", "--period", "monthly", "--soft", "20",
    ]);
    let status = cli.ok(&["budget", "status", "--owner", "alice"]);
    assert_eq!(row(&status, "Limit"), ["Limit", "$25.00"]);
    assert_eq!(row(&status, "Spent"), ["Spent", "$0.0045"]);
    assert_eq!(row(&status, "Remaining"), ["Remaining", "$24.9955"]);
    assert_eq!(row(&status, "Soft"), ["Soft limit", "$20.00 (not reached)"]);

    cli.ok(&[
        "limits",
        "set",
        "--owner",
        "alice",
        "--requests",
        "100/min",
        "--tokens",
        "50000/h",
    ]);
    let limits = cli.ok(&["limits", "show", "--owner", "alice"]);
    assert_eq!(row(&limits, "requests"), ["requests", "100", "minute"]);
    assert_eq!(row(&limits, "tokens"), ["tokens", "50,000", "hour"]);

    cli.ok_with(
        &["creds", "set", "--owner", "alice", "--provider", "openai"],
        Some("sk-abcdefghijklmnopqrstuvwx"),
    );
    let creds = cli.ok(&["creds", "status", "--owner", "alice"]);
    assert_eq!(row(&creds, "openai"), ["openai", "yes", "no", "own key"]);
    assert_eq!(
        row(&creds, "anthropic"),
        ["anthropic", "no", "no", "none: calls fail"]
    );
}

#[test]
fn long_work_draws_no_progress_when_stderr_is_not_a_terminal() {
    let cli = Cli::new();
    cli.ok(&["init"]);
    let mut lines = String::new();
    for i in 0..12_000 {
        lines.push_str(&format!(
            "{{\"event_id\":\"ev_{i:06}\",\"request_id\":\"r{i}\",\"at\":\"2026-11-01T00:00:00Z\",\"owner\":\"o{}\",\
             \"provider\":\"openai\",\"model\":\"gpt-4o\",\"usage\":{{\"input\":10}},\"cost\":\"0.000025\"}}\n",
            i % 7
        ));
    }
    let imported = cli.ok_with(&["usage", "import", "-"], Some(&lines));
    assert!(
        imported.contains("read 12000 events: 12000 recorded"),
        "{imported}"
    );
    let exported = cli.ok(&["usage", "export"]);
    assert_eq!(exported.lines().count(), 12_000);
    let pruned = cli.ok(&["usage", "prune", "--before", "2026-11-02"]);
    assert!(pruned.contains("pruned 12000 events"), "{pruned}");
    cli.ok(&["creds", "rewrap"]);
}

/// Whether a help text ends with examples of the command in use.
fn has_example(help: &str) -> bool {
    help.split("Examples:\n").nth(1).is_some_and(|ex| {
        ex.lines()
            .all(|l| l.starts_with("  ") && l.contains("keymeter "))
    })
}

#[test]
fn every_command_has_an_example_in_its_help() {
    let cli = Cli::new();
    let top = cli.ok(&["--help"]);
    let commands: Vec<String> = top
        .split("Commands:")
        .nth(1)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .take_while(|w| !w.starts_with("Options"))
        .filter(|w| *w != "help")
        .map(str::to_owned)
        .collect();
    assert!(commands.len() >= 9, "{commands:?}");
    for command in &commands {
        let help = cli.ok(&[command, "--help"]);
        assert!(has_example(&help), "{command} --help:\n{help}");
        if let Some(subs) = help.split("Commands:").nth(1) {
            for sub in subs.lines().filter_map(|l| l.split_whitespace().next()) {
                if sub == "help" || sub.ends_with(':') {
                    break;
                }
                let help = cli.ok(&[command, sub, "--help"]);
                assert!(has_example(&help), "{command} {sub} --help:\n{help}");
            }
        }
    }
}

#[test]
fn a_usage_error_says_what_to_do() {
    let cli = Cli::new();
    let out = cli.run(
        &[
            "budget", "set", "--owner", "a", "--limit", "abc", "--period", "monthly",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.lines().filter(|l| !l.contains("warning")).count(),
        1,
        "{stderr}"
    );
    assert!(
        stderr.contains("abc") && stderr.contains("keymeter budget set --help"),
        "{stderr}"
    );
}

/// A loopback HTTP server answering every request with `status` and `body`, for `answers` requests.
fn serve(status: &'static str, body: String, answers: usize) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!(
        "http://{}/model_prices_and_context_window.json",
        listener.local_addr().unwrap()
    );
    std::thread::spawn(move || {
        for stream in listener.incoming().take(answers) {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 2 {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

fn litellm(models: &[(&str, &str, &str)]) -> String {
    let entries: Vec<String> = models
        .iter()
        .map(|(id, input, output)| {
            format!(
                "\"{id}\": {{\"litellm_provider\": \"openai\", \"mode\": \"chat\", \"input_cost_per_token\": {input}, \
                 \"output_cost_per_token\": {output}}}"
            )
        })
        .collect();
    format!(
        "{{\"sample_spec\": {{\"note\": \"ignored\"}}, {}}}",
        entries.join(", ")
    )
}

fn read(path: &Path) -> String {
    let mut text = String::new();
    std::fs::File::open(path)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    text
}

#[test]
fn price_update_reports_what_changed_and_writes_a_catalog_the_cli_can_use() {
    let cli = Cli::new();
    let old = cli.dir.path().join("old.json");
    std::fs::write(
        &old,
        litellm(&[
            ("m-same", "1e-6", "2e-6"),
            ("m-dear", "2.5e-6", "1e-5"),
            ("m-gone", "1e-6", "1e-6"),
        ]),
    )
    .unwrap();
    let fresh = litellm(&[
        ("m-same", "0.000001", "0.000002"),
        ("m-dear", "2.5e-6", "1.2e-5"),
        ("m-new", "3e-6", "4e-6"),
    ]);
    let url = serve("200 OK", fresh.clone(), 2);
    let out = cli.dir.path().join("prices.json");
    let out_arg = out.display().to_string();
    let old_arg = old.display().to_string();

    let update = [
        "price",
        "update",
        "--from",
        &url,
        "--out",
        &out_arg,
        "--catalog",
        &old_arg,
    ];
    let diff = cli.json(&update);
    assert_eq!(diff["added"], serde_json::json!(["m-new"]));
    assert_eq!(diff["removed"], serde_json::json!(["m-gone"]));
    assert_eq!(diff["unchanged"], 1);
    assert_eq!(diff["models"], 3);
    assert_eq!(diff["changed"][0]["model"], "m-dear");
    assert_eq!(
        diff["changed"][0]["rates"],
        serde_json::json!([{"tier": "standard", "class": "output", "old": "0.00001", "new": "0.000012"}])
    );
    assert_eq!(diff["source"], url.as_str());

    let written = read(&out);
    assert!(written.contains("\"keymeter-catalog/"), "keymeter's format");
    let shown = cli.json(&["price", "show", "m-dear", "--catalog", &out_arg]);
    assert_eq!(shown["id"], "m-dear");
    let cost = cli.json(&[
        "price",
        "cost",
        "--model",
        "m-new",
        "--input",
        "1000",
        "--catalog",
        &out_arg,
    ]);
    assert_eq!(cost["total"], "0.003");

    // The same, for a person: a summary and a table of the changed rates.
    let human = cli.ok(&update);
    assert!(
        human.starts_with("3 models: 1 added, 1 removed, 1 with new prices, 1 unchanged"),
        "{human}"
    );
    assert!(
        human.contains("Added: m-new") && human.contains("Removed: m-gone"),
        "{human}"
    );
    assert_eq!(
        row(&human, "m-dear"),
        [
            "m-dear",
            "standard",
            "output",
            "$10.00 / 1M tokens",
            "$12.00 / 1M tokens"
        ]
    );
    assert!(human.contains(&format!("--catalog {out_arg}")), "{human}");
}

#[test]
fn a_failed_or_unreadable_download_leaves_the_old_catalog_untouched() {
    let cli = Cli::new();
    let out = cli.dir.path().join("prices.json");
    std::fs::write(&out, "the catalog in use").unwrap();
    let out_arg = out.display().to_string();
    for (status, body, says) in [
        ("404 Not Found", "no such file".to_owned(), "404"),
        (
            "200 OK",
            "{\"not\": \"a price map\"".to_owned(),
            "not a price map",
        ),
        ("200 OK", "{}".to_owned(), "prices no model"),
    ] {
        let url = serve(status, body, 1);
        let run = cli.run(
            &["price", "update", "--from", &url, "--out", &out_arg],
            None,
        );
        assert_eq!(run.status.code(), Some(2), "{status}");
        let stderr = String::from_utf8(run.stderr).unwrap();
        assert!(stderr.contains(says), "{stderr}");
        assert_eq!(read(&out), "the catalog in use");
    }
    let dead = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/prices.json", dead.local_addr().unwrap());
    drop(dead);
    let run = cli.run(
        &["price", "update", "--from", &url, "--out", &out_arg],
        None,
    );
    assert_eq!(run.status.code(), Some(2));
    assert!(
        String::from_utf8(run.stderr)
            .unwrap()
            .contains("cannot download prices")
    );
    assert_eq!(read(&out), "the catalog in use");
}
