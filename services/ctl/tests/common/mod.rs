//! A running `pvefleet dev` for the tests that watch it from outside (metrics, traces): its own
//! HOME (so its own profile), vhost and database, the settings a test adds, and the CLI run
//! with the same settings, as an operator runs it beside the fleet.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use pvefleet_testkit::{TestDb, TestVhost};

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `pvefleet dev`, stopped (SIGTERM, so it flushes what it holds) when dropped.
pub struct Dev {
    child: Option<Child>,
    /// Its HOME, where its profile is.
    pub home: PathBuf,
    /// Intake's address, `http://127.0.0.1:PORT`.
    pub api: String,
    /// pvesim's address, `http://127.0.0.1:PORT` (its control API under `/_sim`).
    pub sim: String,
    env: Vec<(String, String)>,
    _vhost: TestVhost,
    _db: TestDb,
}

impl Dev {
    /// Starts dev with the settings `env` (`PVEFLEET_*` variables) and waits until it is up.
    pub async fn start(env: &[(&str, &str)]) -> Dev {
        let vhost = TestVhost::new().unwrap();
        let db = TestDb::create().await.unwrap();
        let home = std::env::temp_dir().join(format!("pvefleet-dev-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&home).unwrap();
        let env: Vec<(String, String)> = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_pvefleet"))
            .args([
                "dev",
                "--listen",
                "127.0.0.1:0",
                "--pvesim-listen",
                "127.0.0.1:0",
                "--task-ms",
                "20",
            ])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("PVEFLEET_BUS__URL", vhost.url())
            .env("PVEFLEET_DB__URL", db.url())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut api, mut sim) = (None, None);
        for _ in 0..20 {
            let Some(Ok(line)) = lines.next() else { break };
            if let Some(rest) = line.trim().strip_prefix("intake") {
                api = rest.split_whitespace().next().map(str::to_string);
            }
            if let Some(rest) = line.trim().strip_prefix("pvesim") {
                sim = rest.split_whitespace().next().map(str::to_string);
            }
            if line.contains("Stop with ctrl-c") {
                break;
            }
        }
        Dev {
            child: Some(child),
            home,
            api: api.expect("dev prints the intake address"),
            sim: sim.expect("dev prints pvesim's address"),
            env,
            _vhost: vhost,
            _db: db,
        }
    }

    /// Runs `pvefleet ARGS` beside dev, with dev's settings, off the async runtime.
    pub async fn cli(&self, args: &[&str]) -> Output {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        let (home, env) = (self.home.clone(), self.env.clone());
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_pvefleet"))
                .args(&args)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("HOME", &home)
                .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }

    /// `pvefleet site create NAME --app none --wait`, which must succeed: the new site's id.
    pub async fn create_site(&self, name: &str) -> String {
        let out = self.cli(&["site", "create", name, "--app", "none", "--wait"]).await;
        assert!(out.status.success(), "{}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
            .lines()
            .find_map(|l| l.strip_prefix("site ").and_then(|r| r.split_whitespace().next()))
            .expect("site create prints the id")
            .to_string()
    }

    /// Stops dev and waits for it to end.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = tokio::task::spawn_blocking(move || child.wait()).await;
        }
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.home);
    }
}
