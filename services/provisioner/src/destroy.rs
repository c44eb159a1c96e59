//! `container.destroy`: on hold first (so the watchdog leaves it), a clean shutdown (then a
//! stop), its snapshots, its HA resource, then the container with `purge`. Absence at any
//! point is success; a container that is not this site's is left alone.

use async_trait::async_trait;
use pvefleet_contracts::messages::{ContainerDestroy, ContainerDestroyed};
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError};
use pvefleet_proxmox::client::api::Resource;
use pvefleet_proxmox::client::{Class, Params, PveError, Reason};

use crate::{HOLD_TAG, Inner, Provisioner};

/// Success when PVE says the thing is not there.
fn absent_ok<T>(r: Result<T, PveError>) -> Result<(), HandlerError> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if e.reason == Reason::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[async_trait]
impl Handler<ContainerDestroy> for Provisioner {
    async fn handle(&self, cmd: ContainerDestroy, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let _lock = me.lock(vmid).await?;
        let done = ContainerDestroyed {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
        };
        let Some(found) = me.locate(vmid).await? else {
            return ctx.emit(&done).await;
        };
        let node = found.node.clone().unwrap_or_default();
        if !me.owned_by(&node, vmid, &cmd.site_id).await? {
            return Err(HandlerError::fail(
                "vmid.taken",
                format!("container {vmid} is not this site's; it is left alone"),
            ));
        }
        if !me.hold(&found, &node, vmid).await? {
            return ctx.emit(&done).await;
        }
        me.shut_down(&found, &node, vmid).await?;
        for s in me
            .pve
            .lxc_snapshots(&node, vmid)
            .await?
            .iter()
            .filter(|s| s.name != "current")
        {
            absent_ok(me.pve.lxc_snapshot_delete(&node, vmid, &s.name, false).await)?;
        }
        let sid = format!("ct:{vmid}");
        if me.pve.ha_resources().await?.iter().any(|r| r.sid == sid) {
            let pve9 = me.pve.version().await?.major() >= 9;
            absent_ok(me.pve.ha_resource_delete(&sid, pve9.then_some(true)).await)?;
        }
        absent_ok(me.pve.lxc_destroy(&node, vmid, cmd.purge, false).await)?;
        ctx.emit(&done).await
    }
}

impl Inner {
    /// Puts the container on hold, so the ha service's watchdog does not start it again while
    /// it goes. `false` when it has gone meanwhile.
    async fn hold(&self, found: &Resource, node: &str, vmid: u32) -> Result<bool, PveError> {
        let mut tags: Vec<String> = found.tag_list().iter().map(|t| t.to_string()).collect();
        if tags.iter().any(|t| t == HOLD_TAG) {
            return Ok(true);
        }
        tags.push(HOLD_TAG.to_string());
        match self
            .pve
            .lxc_set_config(node, vmid, Params::new().set("tags", tags.join(";")), None)
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if e.reason == Reason::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// A clean shutdown first; a container that does not stop in time is stopped.
    async fn shut_down(&self, found: &Resource, node: &str, vmid: u32) -> Result<(), PveError> {
        if found.status.as_deref() != Some("running") {
            return Ok(());
        }
        let timeout = self.settings.shutdown_timeout.as_secs().max(1);
        if let Err(e) = self.pve.lxc_shutdown(node, vmid, Some(timeout), false).await {
            if e.class == Class::Transient && e.reason == Reason::Locked {
                return Err(e);
            }
            tracing::warn!(vmid, error = %e, "Clean shutdown failed; stopping the container.");
            match self.pve.lxc_stop(node, vmid).await {
                Ok(_) => {}
                Err(e) if e.message.contains("not running") => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}
