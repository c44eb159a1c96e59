//! `container.start`: starts the container unless it runs, then waits until PVE says it runs.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use pvefleet_contracts::messages::{ContainerStart, ContainerStarted};
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError};

use crate::Provisioner;

#[async_trait]
impl Handler<ContainerStart> for Provisioner {
    async fn handle(&self, cmd: ContainerStart, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let _lock = me.lock(vmid).await?;
        let (node, status) = me.node_or_missing(vmid, cmd.node.as_deref()).await?;
        let status = match status {
            Some(s) => s,
            None => me.pve.lxc_status(&node, vmid).await?,
        };
        if status.status != "running" {
            match me.pve.lxc_start(&node, vmid).await {
                Ok(_) => {}
                // Started meanwhile (by HA, or a previous delivery): fine.
                Err(e) if e.message.contains("already running") => {}
                Err(e) => return Err(e.into()),
            }
        }
        let deadline = Instant::now() + me.settings.start_timeout;
        while me.pve.lxc_status(&node, vmid).await?.status != "running" {
            if Instant::now() >= deadline {
                return Err(HandlerError::transient(format!(
                    "container {vmid} is not running after its start task"
                )));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        ctx.emit(&ContainerStarted {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
            node,
        })
        .await
    }
}
