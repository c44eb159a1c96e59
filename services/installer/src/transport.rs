//! How `pct` is run on a node: over ssh with the `openssh` crate (the default), or locally when
//! the worker runs on the PVE node itself. Either way every argument is passed as one argument:
//! over ssh, `openssh`'s `Command::arg` shell-escapes it for the remote shell; locally there is
//! no shell at all. A connection that cannot be made (refused, timed out, host key refused) is
//! a `Connect` error, told apart from a command that ran and failed.

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use pvefleet_core::config::InstallerSettings;
use tokio::io::AsyncWriteExt as _;

/// What a command did.
#[derive(Debug, Clone)]
pub struct Output {
    /// The exit code; `None` when it was killed by a signal.
    pub code: Option<i32>,
    /// Its standard output.
    pub stdout: Vec<u8>,
    /// Its standard error.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last `lines` lines of stderr (else stdout), for an error message.
    pub fn tail(&self, lines: usize) -> String {
        let text = if self.stderr.iter().any(|b| !b.is_ascii_whitespace()) {
            &self.stderr
        } else {
            &self.stdout
        };
        let text = String::from_utf8_lossy(text);
        let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        tail.chars()
            .rev()
            .take(2000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect()
    }
}

/// Why a command could not be run at all.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// No connection to the node (refused, timed out, host key refused, auth).
    #[error("cannot connect to {host}: {message}")]
    Connect { host: String, message: String },
    /// The connection broke, or the command could not be started or did not end in time.
    #[error("{0}")]
    Broken(String),
}

/// Runs a command on a node.
#[async_trait]
pub trait Runner: Send + Sync {
    /// Runs `argv` on `node` with `stdin`, waiting at most `timeout`.
    async fn run(&self, node: &str, argv: &[String], stdin: &[u8], timeout: Duration)
    -> Result<Output, TransportError>;
}

/// `ssh NODE argv...`, one session per call.
pub struct Ssh {
    settings: InstallerSettings,
    control_dir: PathBuf,
}

impl Ssh {
    /// From the installer settings.
    pub fn new(settings: &InstallerSettings) -> anyhow::Result<Self> {
        let control_dir = std::env::temp_dir().join(format!("pvefleet-installer-ssh-{}", std::process::id()));
        std::fs::create_dir_all(&control_dir)?;
        Ok(Self {
            settings: settings.clone(),
            control_dir,
        })
    }

    fn host_of<'a>(&'a self, node: &'a str) -> &'a str {
        self.settings.node_addresses.get(node).map_or(node, String::as_str)
    }
}

#[async_trait]
impl Runner for Ssh {
    async fn run(
        &self,
        node: &str,
        argv: &[String],
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Output, TransportError> {
        use openssh::{KnownHosts, SessionBuilder, Stdio};
        let s = &self.settings;
        let host = self.host_of(node).to_string();
        let mut b = SessionBuilder::default();
        b.user(s.ssh_user.clone())
            .port(s.ssh_port)
            .connect_timeout(s.connect_timeout)
            .control_directory(&self.control_dir)
            .known_hosts_check(if s.accept_new_host_keys {
                KnownHosts::Add
            } else {
                KnownHosts::Strict
            });
        if let Some(key) = &s.ssh_key {
            b.keyfile(key);
        }
        if let Some(kh) = &s.known_hosts {
            b.user_known_hosts_file(kh);
        }
        let session = b.connect(&host).await.map_err(|e| TransportError::Connect {
            host: host.clone(),
            message: e.to_string(),
        })?;
        let run = async {
            let Some((program, args)) = argv.split_first() else {
                return Err(TransportError::Broken("no command".into()));
            };
            let mut cmd = session.command(program);
            cmd.args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped());
            let mut child = cmd
                .spawn()
                .await
                .map_err(|e| TransportError::Broken(format!("cannot start the command on {host}: {e}")))?;
            if let Some(mut input) = child.stdin().take() {
                input
                    .write_all(stdin)
                    .await
                    .map_err(|e| TransportError::Broken(format!("cannot send the script to {host}: {e}")))?;
                drop(input);
            }
            let out = child
                .wait_with_output()
                .await
                .map_err(|e| TransportError::Broken(format!("the connection to {host} broke: {e}")))?;
            Ok(Output {
                code: out.status.code(),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        };
        let result = match tokio::time::timeout(timeout, run).await {
            Ok(r) => r,
            Err(_) => Err(TransportError::Broken(format!(
                "the command on {host} did not end within {timeout:?}"
            ))),
        };
        let _ = session.close().await;
        result
    }
}

/// `argv...` on this machine: the worker runs on the PVE node.
pub struct Local;

#[async_trait]
impl Runner for Local {
    async fn run(
        &self,
        _node: &str,
        argv: &[String],
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Output, TransportError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(TransportError::Broken("no command".into()));
        };
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| TransportError::Broken(format!("cannot start {program}: {e}")))?;
        if let Some(mut input) = child.stdin.take() {
            input
                .write_all(stdin)
                .await
                .map_err(|e| TransportError::Broken(format!("cannot send the script: {e}")))?;
        }
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| TransportError::Broken(format!("{program} did not end within {timeout:?}")))?
            .map_err(|e| TransportError::Broken(format!("{program}: {e}")))?;
        Ok(Output {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        })
    }
}

/// pvesim's simulated `pct exec` (`POST /_sim/exec` at `pve.url`): the test and demo
/// transport of `pvefleet dev`. Nothing runs anywhere; pvesim records the command and the
/// script and answers as it is set to. Never a production transport.
pub struct Simulated {
    http: reqwest::Client,
    url: String,
    auth: Option<String>,
}

impl Simulated {
    /// Against the pvesim at `pve.url`, with its API token when one is set.
    pub fn new(pve: &pvefleet_core::config::PveSettings) -> anyhow::Result<Self> {
        pvefleet_proxmox::client::tls::provider();
        let auth = match (&pve.token_id, &pve.token_secret) {
            (Some(id), Some(secret)) => Some(format!("PVEAPIToken={id}={}", secret.expose())),
            _ => None,
        };
        Ok(Self {
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()?,
            url: format!("{}/_sim/exec", pve.url.trim_end_matches('/')),
            auth,
        })
    }
}

#[async_trait]
impl Runner for Simulated {
    async fn run(
        &self,
        node: &str,
        argv: &[String],
        stdin: &[u8],
        timeout: Duration,
    ) -> Result<Output, TransportError> {
        use base64::Engine as _;
        let body = serde_json::json!({
            "node": node,
            "argv": argv,
            "stdin": base64::engine::general_purpose::STANDARD.encode(stdin),
        });
        let mut req = self.http.post(&self.url).timeout(timeout).json(&body);
        if let Some(auth) = &self.auth {
            req = req.header("authorization", auth);
        }
        let resp = req.send().await.map_err(|e| TransportError::Connect {
            host: format!("{node} (simulated by pvesim)"),
            message: e.to_string(),
        })?;
        let status = resp.status();
        let answer: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| TransportError::Broken(format!("pvesim's simulated pct exec answered badly: {e}")))?;
        if status.as_u16() == 595 {
            return Err(TransportError::Connect {
                host: format!("{node} (simulated by pvesim)"),
                message: answer["message"].as_str().unwrap_or("unreachable").trim().to_string(),
            });
        }
        if !status.is_success() {
            return Err(TransportError::Broken(format!(
                "pvesim's simulated pct exec answered {status}: {}",
                answer["message"].as_str().unwrap_or_default().trim()
            )));
        }
        let data = &answer["data"];
        let text = |k: &str| data[k].as_str().unwrap_or_default().as_bytes().to_vec();
        Ok(Output {
            code: data["code"].as_i64().and_then(|c| i32::try_from(c).ok()),
            stdout: text("stdout"),
            stderr: text("stderr"),
        })
    }
}
