//! The installer: `app.install` (DESIGN.md §5, edge-installer.md §4). It finds the node that
//! hosts the container at the time of the call (HA can move it), waits until the container
//! answers `pct exec VMID -- true`, streams the app's setup script into
//! `pct exec VMID -- bash -s -- SITE_URL TITLE ADMIN_EMAIL ADMIN_USER`, and verifies the result
//! (`wp core is-installed` for WordPress; the script's exit code for other apps).
//!
//! The site's credentials are made once, sealed in Postgres (`site_secrets`), and sent to the
//! script on stdin, ahead of it: never as arguments, never in messages or logs. A redelivered
//! install reads them back, and the script is safe to run again.
//!
//! Outcomes: a node that cannot be reached, or a container that is not ready yet, retries
//! through the wait tiers; a script that fails fails the step with the tail of its stderr.

pub mod transport;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use backon::{ExponentialBuilder, Retryable as _};
use pvefleet_contracts::messages::{AppCheck, AppChecked, AppInstall, AppInstalled};
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError, Router};
use pvefleet_core::config::InstallerSettings;
use pvefleet_proxmox::client::PveClient;
use pvefleet_proxmox::client::api::ResourceType;

pub use pvefleet_core::site_secrets::{self as secrets, Credentials, SecretBox};
pub use transport::{Local, Output, Runner, Simulated, Ssh, TransportError};

/// The WordPress setup script, built into the binary.
pub const WORDPRESS_SETUP: &str = include_str!("../../../deploy/scripts/wordpress-setup.sh");

/// The WordPress admin's login on every site.
pub const ADMIN_USER: &str = "admin";

/// The installer's handler.
#[derive(Clone)]
pub struct Installer {
    inner: Arc<Inner>,
}

struct Inner {
    pve: PveClient,
    runner: Box<dyn Runner>,
    settings: InstallerSettings,
    db: deadpool_postgres::Pool,
    sbox: Option<SecretBox>,
}

impl Installer {
    /// An installer reaching nodes through `runner`.
    pub fn new(
        pve: PveClient,
        runner: Box<dyn Runner>,
        settings: InstallerSettings,
        db: deadpool_postgres::Pool,
    ) -> anyhow::Result<Self> {
        let sbox = settings
            .secrets_key
            .as_ref()
            .map(|k| SecretBox::from_base64(k.expose()))
            .transpose()?;
        for (name, app) in &settings.apps {
            anyhow::ensure!(
                app.script.is_file(),
                "installer.apps.{name}.script: {} is not a file",
                app.script.display()
            );
        }
        Ok(Self {
            inner: Arc::new(Inner {
                pve,
                runner,
                settings,
                db,
                sbox,
            }),
        })
    }

    /// The router of the installer queue.
    pub fn router(&self) -> Router {
        Router::new()
            .command::<AppInstall, _>(self.clone())
            .command::<AppCheck, _>(self.clone())
    }
}

/// `pct exec VMID -- cmd...`, with the configured `pct` (which may be `sudo pct`).
fn pct_exec(settings: &InstallerSettings, vmid: u32, cmd: &[&str]) -> Vec<String> {
    let mut argv: Vec<String> = settings.pct.split_whitespace().map(str::to_string).collect();
    argv.extend(["exec".to_string(), vmid.to_string(), "--".to_string()]);
    argv.extend(cmd.iter().map(|s| (*s).to_string()));
    argv
}

fn fail(code: &str, message: impl Into<String>) -> Handled {
    Err(HandlerError::fail(code, message))
}

impl Inner {
    /// The node the container is on now.
    async fn node_of(&self, vmid: u32) -> Result<Option<String>, HandlerError> {
        let rows = self.pve.resources(Some(ResourceType::Vm)).await?;
        Ok(rows
            .into_iter()
            .find(|r| r.kind == "lxc" && r.vmid == Some(u64::from(vmid)))
            .and_then(|r| r.node))
    }

    /// `wp core is-installed` in the container: WordPress answers that it is set up.
    async fn wordpress_installed(&self, node: &str, vmid: u32) -> Handled {
        match wordpress_installed(&*self.runner, &self.settings, node, vmid).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => fail("app.not_installed", why),
            Err(e) => Err(HandlerError::retry(e)),
        }
    }

    /// Probes `pct exec VMID -- true` until it answers, a bounded number of times with
    /// backoff; a node that cannot be reached ends the wait at once.
    async fn wait_ready(&self, node: &str, vmid: u32) -> Result<(), HandlerError> {
        let argv = pct_exec(&self.settings, vmid, &["true"]);
        let probe = || async {
            match self.runner.run(node, &argv, b"", Duration::from_secs(60)).await {
                Ok(out) if out.success() => Ok(Ok(())),
                Ok(out) => Err(out.tail(3)),
                Err(e @ TransportError::Connect { .. }) => Ok(Err(e)),
                Err(e) => Err(e.to_string()),
            }
        };
        let backoff = ExponentialBuilder::default()
            .with_min_delay(self.settings.ready_delay)
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(self.settings.ready_attempts.saturating_sub(1) as usize);
        match probe.retry(backoff).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(HandlerError::retry(e)),
            Err(last) => Err(HandlerError::transient(format!(
                "container {vmid} on {node} is not ready after {} probes: {last}",
                self.settings.ready_attempts
            ))),
        }
    }
}

#[async_trait]
impl Handler<AppInstall> for Installer {
    async fn handle(&self, cmd: AppInstall, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let done = AppInstalled {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
            app: cmd.app.clone(),
        };
        let script: Vec<u8> = match cmd.app.as_str() {
            "none" => return ctx.emit(&done).await,
            "wordpress" => WORDPRESS_SETUP.as_bytes().to_vec(),
            other => match me.settings.apps.get(other) {
                Some(app) => match std::fs::read(&app.script) {
                    Ok(s) => s,
                    Err(e) => {
                        return Err(HandlerError::retry(
                            anyhow::Error::new(e).context(format!("cannot read the script of app {other}")),
                        ));
                    }
                },
                None => return fail("app.unknown", format!("no app named '{other}' (installer.apps)")),
            },
        };
        let Some(sbox) = &me.sbox else {
            return fail(
                "config.secrets_key",
                "installer.secrets_key is not set: the site's credentials cannot be stored",
            );
        };
        let Some(node) = me.node_of(vmid).await? else {
            return fail("container.missing", format!("container {vmid} does not exist"));
        };
        me.wait_ready(&node, vmid).await?;
        let creds = secrets::ensure(&me.db, sbox, cmd.site_id.as_uuid(), ADMIN_USER)
            .await
            .map_err(|e| HandlerError::from(e.context("cannot store the site's credentials")))?;
        // The secrets, then the script, on stdin.
        let mut stdin = format!(
            "export PVEFLEET_DB_PASSWORD='{}'\nexport PVEFLEET_ADMIN_PASSWORD='{}'\n",
            creds.db_password, creds.admin_password
        )
        .into_bytes();
        stdin.extend_from_slice(&script);
        let argv = pct_exec(
            &me.settings,
            vmid,
            &[
                "bash",
                "-s",
                "--",
                &cmd.site_url,
                &cmd.title,
                &cmd.admin_email,
                &creds.admin_user,
            ],
        );
        tracing::info!(vmid, node, app = %cmd.app, "Running the setup script.");
        let out = me
            .runner
            .run(&node, &argv, &stdin, me.settings.script_timeout)
            .await
            .map_err(HandlerError::retry)?;
        if !out.success() {
            let code = out.code.map_or("a signal".to_string(), |c| format!("exit {c}"));
            return fail(
                "app.script_failed",
                format!("the {} setup script failed ({code}):\n{}", cmd.app, out.tail(20)),
            );
        }
        if cmd.app == "wordpress" {
            me.wordpress_installed(&node, vmid).await?;
        }
        ctx.emit(&done).await
    }
}

/// `app.check`, after a restore: the container answers `pct exec` (waited for like an
/// install's), and for WordPress `wp core is-installed` succeeds. Nothing is installed or
/// changed; a site that does not answer fails the step, and its saga puts it back.
#[async_trait]
impl Handler<AppCheck> for Installer {
    async fn handle(&self, cmd: AppCheck, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let done = AppChecked {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
            app: cmd.app.clone(),
        };
        let Some(node) = me.node_of(vmid).await? else {
            return fail("container.missing", format!("container {vmid} does not exist"));
        };
        me.wait_ready(&node, vmid).await?;
        if cmd.app == "wordpress" {
            me.wordpress_installed(&node, vmid).await?;
        }
        tracing::info!(vmid, node, app = %cmd.app, "The app answers.");
        ctx.emit(&done).await
    }
}

/// Asks WordPress in container `vmid` on `node` whether it is installed (`wp core
/// is-installed` through `pct exec`): `Ok(Err(why))` when it says no, `Err` when the node or
/// the container could not be reached. The backup service's verification probes with it.
pub async fn wordpress_installed(
    runner: &dyn Runner,
    settings: &InstallerSettings,
    node: &str,
    vmid: u32,
) -> Result<Result<(), String>, TransportError> {
    let verify = pct_exec(
        settings,
        vmid,
        &["wp", "core", "is-installed", "--path=/var/www/html", "--allow-root"],
    );
    let out = runner.run(node, &verify, b"", Duration::from_secs(120)).await?;
    if out.success() {
        Ok(Ok(()))
    } else {
        Ok(Err(format!(
            "WordPress does not report itself installed:\n{}",
            out.tail(5)
        )))
    }
}

/// The transport `installer.transport` names: ssh to the nodes, local `pct`, or pvesim's
/// simulated `pct exec`.
pub fn runner(settings: &pvefleet_core::Settings) -> anyhow::Result<Box<dyn Runner>> {
    Ok(match settings.installer.transport.as_str() {
        "ssh" => Box::new(Ssh::new(&settings.installer)?),
        "local" => Box::new(Local),
        "pvesim" => {
            tracing::warn!(
                pve = %settings.pve.url,
                "installer.transport is pvesim: commands go to the simulated pct exec of pvesim, not to a node (a test and demo transport)."
            );
            Box::new(Simulated::new(&settings.pve)?)
        }
        other => anyhow::bail!("installer.transport '{other}' is not known (ssh, local, pvesim)"),
    })
}

/// Runs the installer until `shutdown`: consumes `pvefleet.installer`.
pub async fn run(
    settings: &pvefleet_core::Settings,
    db: deadpool_postgres::Pool,
    ready: Option<pvefleet_core::http::ReadyFlag>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let runner = runner(settings)?;
    let pve = pvefleet_core::pve::client(&settings.pve)?;
    let installer = Installer::new(pve, runner, settings.installer.clone(), db)?;
    pvefleet_core::bus::Worker::fleet("installer", settings)
        .ready(ready)
        .run(installer.router(), shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pct_exec_prefixes_the_configured_pct() {
        let mut s = InstallerSettings::default();
        assert_eq!(pct_exec(&s, 101, &["true"]), ["pct", "exec", "101", "--", "true"]);
        s.pct = "sudo pct".into();
        assert_eq!(
            pct_exec(&s, 101, &["true"]),
            ["sudo", "pct", "exec", "101", "--", "true"]
        );
    }

    #[test]
    fn the_wordpress_script_is_built_in() {
        assert!(WORDPRESS_SETUP.starts_with("#!/usr/bin/env bash"));
        assert!(WORDPRESS_SETUP.contains("wp core is-installed"));
    }
}
