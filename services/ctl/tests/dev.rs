//! `pvefleet dev` as a newcomer uses it: every service runs, the profile it writes lets every
//! other command find it with no flags, and `--wait` never hangs silently. Each test runs dev
//! with its own HOME (so its own profile), vhost and database.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use pvefleet_testkit::{TestDb, TestVhost};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A running `pvefleet dev`, stopped when dropped.
struct Dev {
    child: Child,
    home: PathBuf,
    _vhost: TestVhost,
    _db: TestDb,
}

impl Dev {
    async fn start(extra: &[&str]) -> Dev {
        let vhost = TestVhost::new().unwrap();
        let db = TestDb::create().await.unwrap();
        let home = std::env::temp_dir().join(format!("pvefleet-dev-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&home).unwrap();
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
            .args(extra)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("PVEFLEET_BUS__URL", vhost.url())
            .env("PVEFLEET_DB__URL", db.url())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = String::new();
        loop {
            let Some(Ok(line)) = lines.next() else {
                panic!("dev ended before it was ready: {seen}")
            };
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("Stop with ctrl-c") {
                break;
            }
        }
        assert!(seen.contains("installer autoscaler") || !extra.is_empty(), "{seen}");
        assert!(
            seen.contains(".pvefleet/dev.toml"),
            "dev says where its profile is: {seen}"
        );
        Dev {
            child,
            home,
            _vhost: vhost,
            _db: db,
        }
    }

    /// `pvefleet ARGS` with nothing but PATH and HOME: no flags, no variables.
    async fn cli(&self, args: &[&str]) -> Output {
        let (home, args): (PathBuf, Vec<String>) = (self.home.clone(), args.iter().map(|a| a.to_string()).collect());
        tokio::task::spawn_blocking(move || {
            Command::new(env!("CARGO_BIN_EXE_pvefleet"))
                .args(&args)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("HOME", &home)
                .output()
                .unwrap()
        })
        .await
        .unwrap()
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_finds_dev_through_its_profile_and_a_wordpress_site_installs_or_compensates() {
    let dev = Dev::start(&[]).await;
    let profile = dev.home.join(".pvefleet/dev.toml");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&profile).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the profile holds tokens: its owner's only");
    }
    for args in [
        &["sim", "node", "pve2", "down"][..],
        &["pve", "check"],
        &["autoscale", "status"],
        &["sim", "node", "pve2", "up"],
        &["saga", "list"],
        &["dlq", "list"],
        &["site", "list"],
    ] {
        let out = dev.cli(args).await;
        assert!(
            out.status.success(),
            "`pvefleet {}` with no flags: {}{}",
            args.join(" "),
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    // The default app, WordPress, through the installer and pvesim's simulated pct exec.
    let out = dev.cli(&["site", "create", "blog", "--wait"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    for line in [
        "✓ container.create",
        "✓ container.start",
        "✓ app.install",
        "site blog is active",
    ] {
        assert!(stdout.contains(line), "'{line}' in {stdout}");
    }
    let execs = dev.cli(&["sim", "execs"]).await;
    let execs: serde_json::Value = serde_json::from_slice(&execs.stdout).unwrap();
    let script = execs
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["argv"].as_array().unwrap().iter().any(|a| a == "bash"))
        .expect("the setup script was run in the simulation");
    assert!(script["script"].as_str().unwrap().contains("wp core"), "{script}");
    // The site's real passwords were sent, and are masked in what pvesim shows.
    let site = stdout.split_whitespace().nth(1).unwrap().to_string();
    let creds = dev.cli(&["site", "credentials", &site]).await;
    assert!(creds.status.success(), "{}", text(&creds.stderr));
    let creds = text(&creds.stdout);
    let secret = |label: &str| {
        creds
            .lines()
            .find_map(|l| l.strip_prefix(label))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("{label} in {creds}"))
    };
    let shown = execs.to_string();
    for password in [secret("admin password"), secret("db password")] {
        assert!(password.len() >= 16, "{creds}");
        assert!(
            !shown.contains(&password),
            "a password reached pvesim's record unmasked"
        );
    }
    assert!(
        shown.contains("PVEFLEET_ADMIN_PASSWORD='***'") && shown.contains("PVEFLEET_DB_PASSWORD='***'"),
        "{shown}"
    );
    // The installer made to fail: its stderr, then the compensation, then exit 1.
    let out = dev
        .cli(&[
            "sim",
            "exec-fail",
            "--code",
            "3",
            "--stderr",
            "E: Unable to locate package php-fpm",
        ])
        .await;
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = dev.cli(&["site", "create", "shop", "--wait"]).await;
    let all = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{all}");
    assert!(all.contains("E: Unable to locate package php-fpm"), "{all}");
    assert!(all.contains("✓ container.destroy (compensating)"), "{all}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_on_a_step_no_service_consumes_says_so_within_ten_seconds_and_ends_at_its_deadline() {
    let dev = Dev::start(&["--without", "installer"]).await;
    let home = dev.home.clone();
    let started = Instant::now();
    let lines = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_pvefleet"))
            .args(["site", "create", "stuck", "--wait", "--deadline", "20s"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", &home)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut timed = Vec::new();
        for line in BufReader::new(child.stdout.take().unwrap()).lines() {
            timed.push((Instant::now(), line.unwrap()));
        }
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
        (timed, stderr, child.wait().unwrap())
    })
    .await
    .unwrap();
    let (timed, stderr, status) = lines;
    let shown: Vec<&str> = timed.iter().map(|(_, l)| l.as_str()).collect();
    let started_at = timed
        .iter()
        .find(|(_, l)| l.contains("✓ container.start"))
        .map(|(t, _)| *t)
        .unwrap_or_else(|| panic!("the container starts: {shown:?} {stderr}"));
    let (said_at, said) = timed
        .iter()
        .find(|(_, l)| l.contains("no service consumes pvefleet.installer"))
        .unwrap_or_else(|| panic!("it says no service consumes the installer's queue: {shown:?} {stderr}"));
    assert!(said.contains("waiting on app.install"), "{said}");
    assert!(
        said_at.duration_since(started_at) < Duration::from_secs(10),
        "said {:?} after the step was sent",
        said_at.duration_since(started_at)
    );
    assert_eq!(status.code(), Some(124), "the deadline ends it: {stderr}");
    assert!(
        stderr.contains("gave up after 20s") && stderr.contains("no service consumes pvefleet.installer"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(40));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_on_a_saga_no_coordinator_starts_says_so_and_ends_at_its_deadline() {
    let dev = Dev::start(&["--without", "saga"]).await;
    let out = dev
        .cli(&["site", "create", "early", "--wait", "--deadline", "8s"])
        .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(124), "{stdout}{stderr}");
    assert!(
        stdout.contains("No service consumes pvefleet.saga: is the saga coordinator running?"),
        "{stdout}"
    );
    assert!(stderr.contains("gave up after 8s"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_net_wait_no_service_takes_says_so_and_ends_at_its_deadline() {
    let dev = Dev::start(&["--without", "nethotplug"]).await;
    let out = dev.cli(&["site", "create", "web", "--app", "none", "--wait"]).await;
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let vmid = stdout
        .split("vmid ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("{stdout}"))
        .to_string();
    let out = dev
        .cli(&[
            "net",
            "attach",
            &vmid,
            "--bridge",
            "vmbr1",
            "--wait",
            "--deadline",
            "8s",
        ])
        .await;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(124), "{stdout}{stderr}");
    assert!(stdout.contains("no service consumes pvefleet.nethotplug"), "{stdout}");
    assert!(
        stderr.contains("(no service consumes pvefleet.nethotplug) after 8s"),
        "{stderr}"
    );
}
