//! `pvefleet net ...` and `pvefleet vnet ...`, with the interface options they share.

use clap::Subcommand;

use super::SiteTarget;

/// An interface's options; only those given are sent.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct IfaceArgs {
    /// The netN index (0 to 31); the lowest free one when absent.
    #[arg(long)]
    pub index: Option<u8>,
    /// The interface name inside the container (default eth<index>).
    #[arg(long)]
    pub name: Option<String>,
    /// A bridge on the container's node.
    #[arg(long)]
    pub bridge: Option<String>,
    /// An SDN VNet, as the bridge.
    #[arg(long)]
    pub vnet: Option<String>,
    /// The MAC address (generated with the cluster's prefix when absent).
    #[arg(long)]
    pub hwaddr: Option<String>,
    /// IPv4: a.b.c.d/nn, dhcp, manual, or pool.
    #[arg(long)]
    pub ip: Option<String>,
    /// IPv6: CIDR, auto, dhcp or manual.
    #[arg(long)]
    pub ip6: Option<String>,
    /// IPv4 gateway.
    #[arg(long)]
    pub gw: Option<String>,
    /// IPv6 gateway.
    #[arg(long)]
    pub gw6: Option<String>,
    /// VLAN tag (1 to 4094).
    #[arg(long)]
    pub tag: Option<u32>,
    /// VLAN trunks, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub trunks: Option<Vec<u32>>,
    /// The per-interface firewall (true or false).
    #[arg(long)]
    pub firewall: Option<bool>,
    /// Cable unplugged (true or false).
    #[arg(long)]
    pub link_down: Option<bool>,
    /// MTU (64 to 65535).
    #[arg(long)]
    pub mtu: Option<u32>,
    /// Rate limit, Mbit/s.
    #[arg(long)]
    pub rate: Option<f64>,
}

/// `pvefleet net ...`
#[derive(Debug, Subcommand)]
pub enum NetAction {
    /// Attach an interface to a container.
    Attach {
        /// The container.
        vmid: u32,
        /// The interface.
        #[command(flatten)]
        iface: IfaceArgs,
        /// Follow the operation to its end.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long, with exit 124 (the work goes on).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// Change options of an interface.
    Update {
        /// The container.
        vmid: u32,
        /// The interface (net1, or 1).
        interface: String,
        /// The options to change.
        #[command(flatten)]
        iface: IfaceArgs,
        /// Follow the operation to its end.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long, with exit 124 (the work goes on).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// Detach an interface, releasing its pooled address.
    Detach {
        /// The container.
        vmid: u32,
        /// The interface (net1, or 1).
        interface: String,
        /// Follow the operation to its end.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long, with exit 124 (the work goes on).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// A container's interfaces from PVE's config, with bindings, leases, drift and recent
    /// operations.
    List {
        /// The container.
        vmid: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// One operation; with --wait, follow it to its end.
    Operation {
        /// The operation id.
        id: String,
        /// Follow it to its end.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long, with exit 124 (the work goes on).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// Executions and successes per event type.
    Stats {
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
}

/// `pvefleet vnet ...`
#[derive(Debug, Subcommand)]
pub enum VnetAction {
    /// Attach a container's new interface on a VNet (applying SDN first when needed).
    Bind {
        /// The VNet.
        #[arg(id = "vnet_name", value_name = "VNET")]
        vnet: String,
        /// The container.
        #[arg(long)]
        vmid: u32,
        /// Create the VNet in this zone when missing, as a saga that removes it again if the
        /// binding fails.
        #[arg(long)]
        ensure_zone: Option<String>,
        /// The VLAN tag or VXLAN VNI of a VNet created with --ensure-zone.
        #[arg(long)]
        ensure_tag: Option<u32>,
        /// The interface's options (its bridge is the VNet).
        #[command(flatten)]
        iface: Box<IfaceArgs>,
        /// Follow the operation to its end.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long, with exit 124 (the work goes on).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// Detach a container's interface from a VNet.
    Unbind {
        /// The VNet.
        vnet: String,
        /// The container.
        #[arg(long)]
        vmid: u32,
        /// The interface (the one on the VNet when absent).
        #[arg(long)]
        interface: Option<String>,
        /// Follow the operation to its end.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up waiting after this long, with exit 124 (the work goes on).
        #[arg(long, default_value = "30m", value_parser = humantime::parse_duration)]
        deadline: std::time::Duration,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
    /// The containers on a VNet, from PVE's configs and the bindings, with drift.
    Containers {
        /// The VNet.
        vnet: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Where intake is.
        #[command(flatten)]
        target: SiteTarget,
    },
}
