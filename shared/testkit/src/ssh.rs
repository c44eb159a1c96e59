//! A real OpenSSH server for tests, from Debian's openssh-server, on a free loopback port with
//! a temporary host key and authorized_keys (edge-installer.md §4.6), and a stand-in `pct` on
//! the sessions' PATH. The stand-in records every call (its arguments, and its stdin when it
//! runs a script), answers readiness from a state file, and runs nothing itself.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// The stand-in `pct`. `@STATE@` is replaced by the state directory.
const FAKE_PCT: &str = r#"#!/bin/bash
# A stand-in for Proxmox's pct: records each call, answers readiness from a state file.
state='@STATE@'
exec 9>"$state/lock"
flock 9
n=$(( $(cat "$state/count" 2>/dev/null || echo 0) + 1 ))
echo "$n" > "$state/count"
flock -u 9
printf '%s\0' "$@" > "$state/call-$n.argv"
if [ "${1:-}" != exec ]; then echo "pct: unknown command '${1:-}'" >&2; exit 255; fi
vmid=$2
if [ -f "$state/missing-$vmid" ]; then echo "Configuration file 'nodes/pve/lxc/$vmid.conf' does not exist" >&2; exit 255; fi
shift 3
case "${1:-}" in
  true)
    left=$(cat "$state/not-ready" 2>/dev/null || echo 0)
    if [ "$left" -gt 0 ]; then
      echo $((left - 1)) > "$state/not-ready"
      echo "container '$vmid' not running!" >&2
      exit 255
    fi
    exit 0 ;;
  bash)
    cat > "$state/call-$n.stdin"
    if [ -f "$state/fail-script" ]; then cat "$state/fail-script" >&2; exit 3; fi
    echo "==> Done"
    exit 0 ;;
  wp)
    if [ -f "$state/not-installed" ]; then exit 1; fi
    exit 0 ;;
  *) exit 0 ;;
esac
"#;

/// One recorded `pct` call.
#[derive(Debug, Clone)]
pub struct PctCall {
    /// Its arguments (after `pct`).
    pub argv: Vec<String>,
    /// What it read on stdin, for a script run.
    pub stdin: Option<Vec<u8>>,
}

/// An sshd on 127.0.0.1 that lets the test's key in as root, with the stand-in `pct`.
pub struct Sshd {
    child: Child,
    dir: PathBuf,
    /// Its port.
    pub port: u16,
    /// The client's private key.
    pub client_key: PathBuf,
    /// A known_hosts file with this server's host key.
    pub known_hosts: PathBuf,
    /// A known_hosts file with another key for this server: a connection must be refused.
    pub wrong_known_hosts: PathBuf,
    /// The stand-in `pct`'s state directory.
    pub state: PathBuf,
}

fn keygen(path: &Path) -> anyhow::Result<()> {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .stdout(Stdio::null())
        .status()
        .context("ssh-keygen")?
        .success();
    anyhow::ensure!(ok, "ssh-keygen failed");
    Ok(())
}

fn public_key(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path.with_extension("pub"))?;
    let mut parts = text.split_whitespace();
    Ok(format!(
        "{} {}",
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default()
    ))
}

impl Sshd {
    /// Starts `/usr/sbin/sshd` in the foreground on a free port.
    pub async fn start() -> anyhow::Result<Self> {
        anyhow::ensure!(
            Path::new("/usr/sbin/sshd").is_file(),
            "sshd is not installed: apt-get install -y openssh-server (scripts/test does)"
        );
        // The privilege separation directory sshd expects.
        std::fs::create_dir_all("/run/sshd")?;
        let dir = std::env::temp_dir().join(format!("pvefleet-sshd-{}", uuid::Uuid::new_v4().simple()));
        let (bin, state) = (dir.join("bin"), dir.join("pct-state"));
        std::fs::create_dir_all(&bin)?;
        std::fs::create_dir_all(&state)?;
        let (host_key, client_key, other_key) = (dir.join("hostkey"), dir.join("clientkey"), dir.join("otherkey"));
        for k in [&host_key, &client_key, &other_key] {
            keygen(k)?;
        }
        std::fs::write(dir.join("authorized_keys"), public_key(&client_key)? + "\n")?;
        let pct = bin.join("pct");
        std::fs::write(&pct, FAKE_PCT.replace("@STATE@", &state.display().to_string()))?;
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&pct, std::fs::Permissions::from_mode(0o755))?;
        let port = crate::edge::free_port()?;
        let config = format!(
            "ListenAddress 127.0.0.1\nPort {port}\nHostKey {hk}\nPidFile {dir}/sshd.pid\n\
             AuthorizedKeysFile {dir}/authorized_keys\nPermitRootLogin prohibit-password\n\
             PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
             SetEnv PATH={bin}:/usr/local/bin:/usr/bin:/bin\nMaxSessions 20\nLogLevel VERBOSE\n",
            hk = host_key.display(),
            dir = dir.display(),
            bin = bin.display(),
        );
        let config_path = dir.join("sshd_config");
        std::fs::write(&config_path, config)?;
        let known_hosts = dir.join("known_hosts");
        std::fs::write(&known_hosts, format!("[127.0.0.1]:{port} {}\n", public_key(&host_key)?))?;
        let wrong_known_hosts = dir.join("wrong_known_hosts");
        std::fs::write(
            &wrong_known_hosts,
            format!("[127.0.0.1]:{port} {}\n", public_key(&other_key)?),
        )?;
        let log = std::fs::File::create(dir.join("sshd.log"))?;
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config_path)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("sshd")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            if let Some(status) = child.try_wait()? {
                let log = std::fs::read_to_string(dir.join("sshd.log")).unwrap_or_default();
                anyhow::bail!("sshd exited with {status}: {log}");
            }
            anyhow::ensure!(Instant::now() < deadline, "sshd did not listen on {addr} within 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(Self {
            child,
            dir,
            port,
            client_key,
            known_hosts,
            wrong_known_hosts,
            state,
        })
    }

    /// The stand-in `pct`'s calls so far, in order.
    pub fn pct_calls(&self) -> Vec<PctCall> {
        let count: usize = std::fs::read_to_string(self.state.join("count"))
            .ok()
            .and_then(|c| c.trim().parse().ok())
            .unwrap_or(0);
        (1..=count)
            .filter_map(|n| {
                let argv = std::fs::read(self.state.join(format!("call-{n}.argv"))).ok()?;
                let argv = argv
                    .split(|b| *b == 0)
                    .filter(|a| !a.is_empty())
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect();
                let stdin = std::fs::read(self.state.join(format!("call-{n}.stdin"))).ok();
                Some(PctCall { argv, stdin })
            })
            .collect()
    }

    /// Makes the next `n` readiness probes answer "not running".
    pub fn not_ready_for(&self, n: u32) {
        let _ = std::fs::write(self.state.join("not-ready"), n.to_string());
    }

    /// Makes every script run fail with `stderr` and exit 3; `None` makes them succeed again.
    pub fn fail_scripts(&self, stderr: Option<&str>) {
        let path = self.state.join("fail-script");
        match stderr {
            Some(text) => {
                let _ = std::fs::write(path, text);
            }
            None => {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
