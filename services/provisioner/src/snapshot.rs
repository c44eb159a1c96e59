//! `container.snapshot`: takes the named snapshot unless it exists.

use async_trait::async_trait;
use pvefleet_contracts::messages::{ContainerSnapshot, ContainerSnapshotted};
use pvefleet_core::bus::{Context, Handled, Handler};
use pvefleet_proxmox::client::Reason;

use crate::Provisioner;

#[async_trait]
impl Handler<ContainerSnapshot> for Provisioner {
    async fn handle(&self, cmd: ContainerSnapshot, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let _lock = me.lock(vmid).await?;
        let (node, _) = me.node_or_missing(vmid, cmd.node.as_deref()).await?;
        let snapshots = me.pve.lxc_snapshots(&node, vmid).await?;
        if !snapshots.iter().any(|s| s.name == cmd.name) {
            match me
                .pve
                .lxc_snapshot_create(&node, vmid, &cmd.name, cmd.description.as_deref())
                .await
            {
                Ok(_) => {}
                Err(e) if e.reason == Reason::AlreadyExists => {}
                Err(e) => return Err(e.into()),
            }
        }
        ctx.emit(&ContainerSnapshotted {
            site_id: cmd.site_id,
            vmid: cmd.vmid,
            name: cmd.name,
        })
        .await
    }
}
