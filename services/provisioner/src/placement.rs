//! Where a new container goes, when its request and the config name no node.
//!
//! Containers spread by what is allocated on each online node: the configured memory and
//! cores of its guests (running or not), from the same one `/cluster/resources` read. Memory
//! PVE reports as used does not move when a container is created, only once it has loaded, so
//! choosing by free memory piles every new container onto one node. Ties go to the earlier
//! node of `provisioner.preferred_nodes`, then to the one with the most memory free, then by
//! name. A node must have the container's memory free to be chosen, unless none has.
//!
//! Creates in flight in this process are counted as allocated on the node they were given
//! until their create returns (by then PVE lists the container), so concurrent creates reading
//! the same cluster state still spread.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use pvefleet_core::config::ProvisionerSettings;
use pvefleet_proxmox::client::api::Resource;

/// What a new container takes: memory in bytes, and cores.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Size {
    /// Memory, bytes.
    pub memory: u64,
    /// Cores.
    pub cores: f64,
}

impl Size {
    /// A container of `memory_mb` MiB and `cores` cores.
    pub fn of(memory_mb: u32, cores: u32) -> Self {
        Self {
            memory: u64::from(memory_mb) << 20,
            cores: f64::from(cores),
        }
    }

    fn add(&mut self, other: Size) {
        self.memory += other.memory;
        self.cores += other.cores;
    }
}

/// What each node has allocated: the configured sizes of its guests.
pub fn allocated(rows: &[Resource]) -> HashMap<String, Size> {
    let mut out: HashMap<String, Size> = HashMap::new();
    for g in rows
        .iter()
        .filter(|r| matches!(r.kind.as_str(), "lxc" | "qemu") && r.template != Some(true))
    {
        if let Some(node) = &g.node {
            out.entry(node.clone()).or_default().add(Size {
                memory: g.maxmem.unwrap_or(0),
                cores: g.maxcpu.unwrap_or(0.0),
            });
        }
    }
    out
}

/// The node for a container of `need`, from one cluster read (`rows`: nodes and guests) and
/// what `pending` creates have been given meanwhile. `None` when no node is online.
pub fn pick_node(
    rows: &[Resource],
    s: &ProvisionerSettings,
    need: Size,
    pending: &HashMap<String, Size>,
) -> Option<String> {
    if !s.node.is_empty() {
        return Some(s.node.clone());
    }
    let mut load = allocated(rows);
    for (node, size) in pending {
        load.entry(node.clone()).or_default().add(*size);
    }
    let online: Vec<&Resource> = rows
        .iter()
        .filter(|n| n.kind == "node" && n.status.as_deref() == Some("online") && n.node.is_some())
        .collect();
    let free = |n: &Resource| n.maxmem.unwrap_or(0).saturating_sub(n.mem.unwrap_or(0));
    let with_room: Vec<&Resource> = online.iter().copied().filter(|n| free(n) >= need.memory).collect();
    let candidates = if with_room.is_empty() { online } else { with_room };
    // The share of the node that would be allocated with this container on it, memory and
    // CPU weighed alike.
    let share = |n: &Resource| {
        let name = n.node.as_deref().unwrap_or_default();
        let mut after = load.get(name).copied().unwrap_or_default();
        after.add(need);
        let mem = after.memory as f64 / n.maxmem.unwrap_or(0).max(1) as f64;
        let cpu = after.cores / n.maxcpu.unwrap_or(0.0).max(1.0);
        mem + cpu
    };
    let preference = |n: &Resource| {
        s.preferred_nodes
            .iter()
            .position(|p| Some(p.as_str()) == n.node.as_deref())
            .unwrap_or(usize::MAX)
    };
    candidates
        .into_iter()
        .min_by(|a, b| {
            let (sa, sb) = (share(a), share(b));
            let by_share = if (sa - sb).abs() < 1e-9 {
                Ordering::Equal
            } else {
                sa.total_cmp(&sb)
            };
            by_share
                .then_with(|| preference(a).cmp(&preference(b)))
                .then_with(|| free(b).cmp(&free(a)))
                .then_with(|| a.node.cmp(&b.node))
        })
        .and_then(|n| n.node.clone())
}

/// Creates this process has placed and not yet seen finish, per node.
#[derive(Clone, Default)]
pub struct Pending {
    inner: Arc<Mutex<HashMap<String, Size>>>,
}

/// A place held on a node while its create runs; dropping it gives the place back.
pub struct Held {
    pending: Pending,
    node: String,
    size: Size,
}

impl Held {
    /// The node.
    pub fn node(&self) -> &str {
        &self.node
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut map) = self.pending.inner.lock()
            && let Some(s) = map.get_mut(&self.node)
        {
            s.memory = s.memory.saturating_sub(self.size.memory);
            s.cores = (s.cores - self.size.cores).max(0.0);
        }
    }
}

impl Pending {
    /// Chooses a node for `need` and holds the place, in one step, so two creates choosing at
    /// once see each other.
    pub fn place(&self, rows: &[Resource], s: &ProvisionerSettings, need: Size) -> Option<Held> {
        let mut map = self.inner.lock().ok()?;
        let node = pick_node(rows, s, need, &map)?;
        map.entry(node.clone()).or_default().add(need);
        Some(Held {
            pending: self.clone(),
            node,
            size: need,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn node(name: &str, status: &str, used_gib: u64, total_gib: u64) -> Resource {
        serde_json::from_value(serde_json::json!({
            "id": format!("node/{name}"), "type": "node", "node": name, "status": status,
            "mem": used_gib << 30, "maxmem": total_gib << 30, "maxcpu": 16,
        }))
        .unwrap()
    }

    fn guest(vmid: u32, node: &str, mem_gib: u64, cores: u32) -> Resource {
        serde_json::from_value(serde_json::json!({
            "id": format!("lxc/{vmid}"), "type": "lxc", "vmid": vmid, "node": node, "status": "stopped",
            "mem": 0, "maxmem": mem_gib << 30, "maxcpu": cores,
        }))
        .unwrap()
    }

    const SMALL: Size = Size {
        memory: 1 << 30,
        cores: 1.0,
    };

    #[test]
    fn the_least_allocated_node_is_chosen_whatever_memory_is_reported_used() {
        // Equal nodes, equally used as reported; pve1 and pve3 already hold containers that
        // have not loaded yet.
        let mut rows = vec![
            node("pve1", "online", 8, 64),
            node("pve2", "online", 8, 64),
            node("pve3", "online", 8, 64),
        ];
        rows.push(guest(100, "pve1", 4, 2));
        rows.push(guest(101, "pve3", 2, 1));
        let s = ProvisionerSettings::default();
        assert_eq!(pick_node(&rows, &s, SMALL, &HashMap::new()).as_deref(), Some("pve2"));
    }

    #[test]
    fn preferred_order_then_free_memory_break_ties() {
        let rows = vec![
            node("pve1", "online", 30, 64),
            node("pve2", "online", 8, 64),
            node("pve3", "online", 20, 64),
        ];
        let plain = ProvisionerSettings::default();
        assert_eq!(
            pick_node(&rows, &plain, SMALL, &HashMap::new()).as_deref(),
            Some("pve2")
        );
        let preferring = ProvisionerSettings {
            preferred_nodes: vec!["pve3".into(), "pve1".into()],
            ..ProvisionerSettings::default()
        };
        assert_eq!(
            pick_node(&rows, &preferring, SMALL, &HashMap::new()).as_deref(),
            Some("pve3")
        );
    }

    #[test]
    fn a_node_without_the_memory_free_is_passed_over_and_offline_nodes_never_chosen() {
        let rows = vec![
            node("pve1", "online", 63, 64), // least allocated, but 1 GiB free
            node("pve2", "online", 8, 64),
            node("pve3", "offline", 0, 128),
            guest(100, "pve2", 8, 4),
        ];
        let s = ProvisionerSettings::default();
        let big = Size::of(4096, 2);
        assert_eq!(pick_node(&rows, &s, big, &HashMap::new()).as_deref(), Some("pve2"));
        let none = vec![node("pve1", "offline", 0, 64)];
        assert_eq!(pick_node(&none, &s, SMALL, &HashMap::new()), None);
    }

    #[test]
    fn a_configured_node_wins() {
        let s = ProvisionerSettings {
            node: "pve1".into(),
            preferred_nodes: vec!["pve4".into()],
            ..ProvisionerSettings::default()
        };
        assert_eq!(pick_node(&[], &s, SMALL, &HashMap::new()).as_deref(), Some("pve1"));
    }

    #[test]
    fn concurrent_creates_on_one_read_spread_and_give_their_places_back() {
        let rows = vec![
            node("pve1", "online", 8, 64),
            node("pve2", "online", 8, 64),
            node("pve3", "online", 8, 64),
        ];
        let s = ProvisionerSettings::default();
        let pending = Pending::default();
        let held: Vec<Held> = (0..9).map(|_| pending.place(&rows, &s, SMALL).unwrap()).collect();
        let mut per_node: HashMap<&str, usize> = HashMap::new();
        for h in &held {
            *per_node.entry(h.node()).or_default() += 1;
        }
        assert_eq!(per_node.values().copied().collect::<Vec<_>>(), vec![3, 3, 3]);
        drop(held);
        let left = pending.inner.lock().unwrap();
        assert!(left.values().all(|s| s.memory == 0), "{:?}", *left);
    }
}
