//! The `keymeter` binary run as a user runs it: one process per command on a store of the test's own, in
//! development, printing one JSON object (`--json`). Shared by the CLI tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use serde_json::Value;

pub struct Cli {
    pub dir: tempfile::TempDir,
    pub env: Vec<(&'static str, String)>,
    /// The store URL when it is not the SQLite file in `dir`.
    pub store: Option<String>,
}

impl Cli {
    pub fn new() -> Self {
        Cli {
            dir: tempfile::tempdir().unwrap(),
            env: vec![("KEYMETER_ENV", "development".into())],
            store: None,
        }
    }

    /// A CLI on a fresh schema of the test PostgreSQL server; `None` (the reason printed) without one.
    pub fn postgres(test: &str) -> Option<Self> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let url = rt.block_on(super::common::pg_schema_url(test))?;
        Some(Cli {
            store: Some(url),
            ..Cli::new()
        })
    }

    pub fn store_url(&self) -> String {
        self.store
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", self.db().display()))
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("keys.db")
    }

    pub fn run_with(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keymeter"));
        cmd.current_dir(self.dir.path())
            .env_remove("KEYMETER_PEPPER")
            .env_remove("KEYMETER_MASTER_KEYS")
            .env_remove("KEYMETER_STORE")
            .env_remove("DEBUG")
            .env_remove("DEPLOY_ENV")
            .args(["--store", &self.store_url(), "--json"])
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut pipe = child.stdin.take().unwrap();
        if let Some(input) = stdin {
            // A command refused before it reads stdin (a configuration error) closes the pipe early.
            let _ = pipe.write_all(input.as_bytes());
        }
        drop(pipe);
        child.wait_with_output().unwrap()
    }

    /// A `keymeter` command on this store in development, for tests that need the process itself.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keymeter"));
        cmd.current_dir(self.dir.path())
            .env("KEYMETER_ENV", "development")
            .env_remove("KEYMETER_PEPPER")
            .env_remove("KEYMETER_MASTER_KEYS")
            .args(["--store", &self.store_url()])
            .args(args);
        cmd
    }

    /// Runs and returns (exit code, the one JSON object on stdout).
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> (i32, Value) {
        let out = self.run_with(args, stdin);
        let stdout = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            1,
            "one JSON line expected from {args:?}, got {stdout:?} / {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            out.status.code().unwrap(),
            serde_json::from_str(lines[0]).unwrap(),
        )
    }

    pub fn ok(&self, args: &[&str]) -> Value {
        let (code, json) = self.run(args, None);
        assert_eq!(code, 0, "{args:?}: {json}");
        json
    }
}
