//! The real `keymeter-gateway` binary as a child process: started on a free loopback port with the test
//! configuration, its log in a file, stopped by SIGTERM or killed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A running gateway process.
pub struct Process {
    pub child: Child,
    pub url: String,
    pub log: PathBuf,
}

/// Starts the binary with `vars` as its keymeter environment (nothing else of the test's `KEYMETER_*` or
/// `RUST_LOG` leaks in) and `args`, its standard error appended to `log`; waits until `/healthz` answers.
pub async fn start(vars: &HashMap<String, String>, args: &[&str], log: &Path) -> Process {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = Command::new(env!("CARGO_BIN_EXE_keymeter-gateway"));
    for (name, _) in std::env::vars() {
        if name.starts_with("KEYMETER_") || name == "RUST_LOG" {
            command.env_remove(name);
        }
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let child = command
        .envs(vars)
        .env("RUST_LOG", "info")
        .arg("--listen")
        .arg(&listen)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .expect("the gateway binary starts");
    let url = format!("http://{listen}");
    let client = keymeter::http::client(Duration::from_secs(5)).unwrap();
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{url}/healthz")).send().await
            && r.status() == 200
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the gateway did not come up; its log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Process {
        child,
        url,
        log: log.to_owned(),
    }
}

impl Process {
    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (at most `within`), returning its exit code.
    pub async fn exit_code(&mut self, within: Duration) -> Option<i32> {
        match tokio::time::timeout(within, self.child.wait()).await {
            Ok(status) => status.unwrap().code(),
            Err(_) => panic!(
                "the gateway did not exit within {within:?}; its log:\n{}",
                self.log()
            ),
        }
    }

    /// SIGTERM, then the clean exit (code 0) within 30 s that a graceful shutdown promises.
    pub async fn stop(&mut self) {
        self.terminate();
        let code = self.exit_code(Duration::from_secs(30)).await;
        assert_eq!(code, Some(0), "a clean exit; log:\n{}", self.log());
    }

    /// The log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
