//! A PostgreSQL cluster of a test's own, to stop and start under load (the shared server of
//! `KEYMETER_TEST_PG_URL` is not the test's to stop).

/// A PostgreSQL cluster of the test's own (as the `postgres` user, trusting loopback), to stop and start.
pub struct Postgres {
    dir: tempfile::TempDir,
    bin: std::path::PathBuf,
    port: u16,
}

impl Postgres {
    /// `None` where the server binaries or the `postgres` user are missing (CI installs them).
    pub fn start_new() -> Option<Postgres> {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
            .filter(|b| b.join("initdb").exists())
            .max()?;
        let dir = tempfile::tempdir().ok()?;
        let pg = Postgres {
            dir,
            bin,
            port: super::binary::free_port(),
        };
        let as_postgres = |cmd: &str, args: &[&str]| {
            std::process::Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(pg.bin.join(cmd))
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        std::fs::set_permissions(
            pg.dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .ok()?;
        let data = pg.data();
        let ok = as_postgres(
            "initdb",
            &["-D", &data, "-U", "postgres", "-A", "trust", "--no-locale"],
        );
        if !ok {
            return None;
        }
        pg.start();
        let created = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(pg.bin.join("createdb"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "postgres",
                "keymeter",
            ])
            .status()
            .is_ok_and(|s| s.success());
        created.then_some(pg)
    }

    pub fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/keymeter", self.port)
    }

    pub fn pg_ctl(&self, args: &[&str]) {
        let status = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data()])
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {args:?}");
    }

    pub fn start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c max_connections=100",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.pg_ctl(&["-l", &log, "-w", "-o", &options, "start"]);
    }

    /// Stops the server: `fast` (connections closed, a clean shutdown) or `immediate` (as in a crash).
    pub fn stop(&self, mode: &str) {
        self.pg_ctl(&["-m", mode, "-w", "stop"]);
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("pg_ctl"))
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
