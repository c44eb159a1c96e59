//! `container.create`: create first (on the happy path the cluster is not read at all); a
//! vmid already in use answers "already exists", and only then is the guest there inspected.

use async_trait::async_trait;
use pvefleet_contracts::messages::{ContainerCreate, ContainerCreated};
use pvefleet_core::bus::{Context, Handled, Handler, HandlerError};
use pvefleet_proxmox::client::{Params, Reason};
use pvefleet_proxmox::codec::error::CodecError;
use pvefleet_proxmox::codec::mount::MountPoint;
use pvefleet_proxmox::codec::net::NetConfig;

use crate::placement::{self, Size};
use crate::{FLEET_TAG, Inner, Provisioner, site_marker};

#[async_trait]
impl Handler<ContainerCreate> for Provisioner {
    async fn handle(&self, cmd: ContainerCreate, ctx: &Context<'_>) -> Handled {
        let me = &self.inner;
        let vmid = cmd.vmid.0;
        let _lock = me.lock(vmid).await?;
        // Twice at most: a guest that vanishes between the two is raced again.
        for _ in 0..2 {
            // The place stays held until this attempt's create has returned.
            let (node, _held) = if cmd.node.is_empty() {
                let held = me
                    .choose_node(&cmd)
                    .await?
                    .ok_or_else(|| HandlerError::transient("no node is online"))?;
                (held.node().to_string(), Some(held))
            } else {
                (cmd.node.clone(), None)
            };
            if !me.pve.template_exists(&node, &cmd.template).await? {
                return Err(HandlerError::fail(
                    "template.missing",
                    format!("template {} is not on node {node}", cmd.template),
                ));
            }
            let params = me
                .params(&cmd, ctx)
                .map_err(|e| HandlerError::fail("invalid", e.to_string()))?;
            match me.pve.lxc_create(&node, params).await {
                Ok(_) => {
                    return ctx
                        .emit(&ContainerCreated {
                            site_id: cmd.site_id,
                            vmid: cmd.vmid,
                            node,
                        })
                        .await;
                }
                Err(e) if e.reason == Reason::AlreadyExists => {
                    if let Some(handled) = me.existing(&cmd, ctx).await? {
                        return handled;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(HandlerError::transient(format!(
            "vmid {vmid} changed hands while it was being created"
        )))
    }
}

impl Inner {
    /// A create met an existing guest at `vmid`: success when it is this site's container,
    /// a failure when it is anything else's. `None` when it has gone meanwhile.
    async fn existing(&self, cmd: &ContainerCreate, ctx: &Context<'_>) -> Result<Option<Handled>, HandlerError> {
        let vmid = cmd.vmid.0;
        let Some(existing) = self.guest(vmid).await? else {
            return Ok(None);
        };
        let node = existing.node.clone().unwrap_or_default();
        if existing.kind != "lxc" {
            return Ok(Some(Err(HandlerError::fail(
                "vmid.taken",
                format!(
                    "vmid {vmid} is a {} on {node}, not this site's container",
                    existing.kind
                ),
            ))));
        }
        if !self.owned_by(&node, vmid, &cmd.site_id).await? {
            return Ok(Some(Err(HandlerError::fail(
                "vmid.taken",
                format!("vmid {vmid} is used by a container that is not this site's (on {node})"),
            ))));
        }
        if existing.lock.as_deref() == Some("create") {
            return Ok(Some(Err(HandlerError::transient(format!(
                "container {vmid} is still being created"
            )))));
        }
        Ok(Some(
            ctx.emit(&ContainerCreated {
                site_id: cmd.site_id,
                vmid: cmd.vmid,
                node,
            })
            .await,
        ))
    }

    /// Where a new container goes (see [`placement`]), from one cluster read; the place is
    /// held until the returned guard drops.
    async fn choose_node(&self, cmd: &ContainerCreate) -> Result<Option<placement::Held>, HandlerError> {
        let rows = self.pve.resources(None).await?;
        Ok(self
            .pending
            .place(&rows, &self.settings, Size::of(cmd.memory_mb, cmd.cores)))
    }

    /// The create's parameters. Every property string is built through the codec, which
    /// refuses a value that would add options of its own (a `,` in a bridge name, say).
    fn params(&self, cmd: &ContainerCreate, ctx: &Context<'_>) -> Result<Params, CodecError> {
        let s = &self.settings;
        let mut net0 = NetConfig::new("eth0");
        net0.bridge = Some(cmd.net.bridge.clone());
        net0.ip = Some(cmd.net.ip.clone());
        net0.gw = cmd.net.gw.clone();
        net0.hwaddr = cmd.net.hwaddr.clone();
        net0.tag = cmd.net.tag.map(u32::from);
        let net = net0.to_property_string("net0")?;
        let rootfs = MountPoint {
            volume: format!("{}:{}", cmd.storage, cmd.disk_gb),
            ..MountPoint::default()
        }
        .to_property_string("rootfs")?;
        let mut tags: Vec<String> = vec![FLEET_TAG.to_string()];
        tags.extend(cmd.tags.iter().filter(|t| t.as_str() != FLEET_TAG).cloned());
        let mut description = site_marker(&cmd.site_id);
        if let Some(saga) = ctx.correlation_id {
            description.push_str(&format!("\npvefleet-saga: {saga}"));
        }
        let mut p = Params::new()
            .set("vmid", cmd.vmid.0)
            .set("hostname", &cmd.hostname)
            .set("ostemplate", &cmd.template)
            .set("rootfs", rootfs)
            .set("cores", cmd.cores)
            .set("memory", cmd.memory_mb)
            .set("swap", cmd.swap_mb)
            .set("net0", net)
            .flag("unprivileged", cmd.unprivileged)
            .flag("onboot", s.onboot)
            .set("tags", tags.join(";"))
            .set("description", description);
        if s.nesting {
            p = p.set("features", "nesting=1");
        }
        if !s.nameserver.trim().is_empty() {
            p = p.set("nameserver", s.nameserver.trim());
        }
        if !s.searchdomain.trim().is_empty() {
            p = p.set("searchdomain", s.searchdomain.trim());
        }
        Ok(p)
    }
}
