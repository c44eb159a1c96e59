//! Steering a simulator from a test in the same process: faults, loads, nodes down, locks,
//! recorded requests and bulk containers.

use crate::{Fault, Load, Recorded, Sim, state};

impl Sim {
    /// Makes the next task of type `kind` end in error with `message`.
    pub fn lock_task_error(&self, kind: &str, message: &str) {
        self.lock().task_errors.push((kind.to_string(), message.to_string()));
    }

    /// Makes every SDN apply from now on fail on `node`: the task still ends OK (PVE only
    /// warns), and the node's zones show `error`.
    pub fn fail_sdn_on(&self, node: &str) {
        self.lock().sdn_failing.insert(node.to_string());
    }

    /// Drops every queued fault, task error and failing SDN node.
    pub fn clear_faults(&self) {
        let mut s = self.lock();
        s.faults.clear();
        s.task_errors.clear();
        s.sdn_failing.clear();
        s.exec_faults.clear();
        s.full_storages.clear();
    }

    /// Makes about `rate` of all API calls fail the ways PVE fails transiently, until the
    /// faults are cleared: a config lock timeout, a 596 (the node did not answer), and "got no
    /// worker upid", tried in turn, each at the share that makes `rate` together.
    pub fn fail_transiently(&self, rate: f64) {
        let each = 1.0 - (1.0 - rate.clamp(0.0, 1.0)).powf(1.0 / 3.0);
        for (status, message) in [
            (
                500,
                "can't lock file '/run/lock/lxc/pve-config-10000.lock' - got timeout",
            ),
            (596, "Connection timed out"),
            (500, "got no worker upid - start worker failed"),
        ] {
            self.inject(Fault {
                method: None,
                path: "/".into(),
                count: 1,
                status,
                message: message.into(),
                latency_ms: 0,
                rate: each,
            });
        }
    }

    /// Adds a fault (for tests in the same process).
    pub fn inject(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// Sets a container's measured load, as `/cluster/resources` will report it.
    pub fn set_load(&self, vmid: u32, load: Load) {
        let mut s = self.lock();
        s.loads.insert(vmid, load);
        s.touch();
    }

    /// Takes a node down (calls proxied to it answer 595) or brings it back.
    pub fn set_node_down(&self, node: &str, down: bool) {
        let mut s = self.lock();
        if down {
            s.down.insert(node.to_string());
        } else {
            s.down.remove(node);
        }
        s.touch();
    }

    /// Sets (or, with `None`, clears) a container's PVE lock, as a backup or migration would
    /// hold it. Returns whether the container exists.
    pub fn set_lock(&self, vmid: u32, lock: Option<&str>) -> bool {
        let mut s = self.lock();
        let Some(ct) = s.containers.get_mut(&vmid) else {
            return false;
        };
        match lock {
            Some(l) => ct.config.main_mut().set("lock", l),
            None => drop(ct.config.main_mut().remove("lock")),
        }
        s.touch();
        true
    }

    /// The API requests received so far (with `record_requests`).
    pub fn requests(&self) -> Vec<Recorded> {
        self.lock().requests.clone()
    }

    /// A container's config file text, if it exists.
    pub fn config_text(&self, vmid: u32) -> Option<String> {
        let mut s = self.lock();
        s.tick();
        s.containers.get(&vmid).map(|c| c.config.write())
    }

    /// Adds `count` running containers from `first` with the given load, spread over the
    /// nodes, without tasks: for load profiles and benchmarks.
    pub fn populate(&self, first: u32, count: u32, load: Load) {
        let mut s = self.lock();
        let nodes = s.config.nodes.clone();
        for i in 0..count {
            let vmid = first + i;
            let node = nodes[(i as usize) % nodes.len().max(1)].clone();
            let text = format!(
                "arch: amd64\ncores: 2\nhostname: ct{vmid}\nmemory: 2048\nnet0: name=eth0,bridge=vmbr0,hwaddr=BC:24:11:{:02X}:{:02X}:{:02X},ip=dhcp,type=veth\nostype: debian\nrootfs: local-lvm:vm-{vmid}-disk-0,size=8G\nswap: 512\ntags: fleet\nunprivileged: 1\n",
                (vmid >> 16) & 0xff,
                (vmid >> 8) & 0xff,
                vmid & 0xff
            );
            if let Ok(config) = pvefleet_proxmox::ConfigFile::parse(&text) {
                s.containers.insert(
                    vmid,
                    state::Ct {
                        node,
                        config,
                        running: true,
                        started: Some(std::time::Instant::now()),
                    },
                );
                s.loads.insert(vmid, load);
            }
        }
        s.touch();
    }

    /// Moves the simulated clock on, running the backup jobs due meanwhile (`/_sim/clock`).
    pub fn advance_clock(&self, secs: u64) {
        self.lock().advance_clock(secs);
    }

    /// Marks a backup corrupt: restoring it or reading its config fails. False when unknown.
    pub fn corrupt_backup(&self, volid: &str) -> bool {
        let mut s = self.lock();
        s.backups
            .iter_mut()
            .find(|b| b.volid == volid)
            .map(|b| b.corrupt = true)
            .is_some()
    }

    /// Makes backups to a storage fail for lack of space, or stop failing.
    pub fn set_storage_full(&self, storage: &str, full: bool) {
        let mut s = self.lock();
        if full {
            s.full_storages.insert(storage.to_string());
        } else {
            s.full_storages.remove(storage);
        }
    }

    /// Every backup volume.
    pub fn backups(&self) -> Vec<crate::BackupVolume> {
        self.lock().backups.clone()
    }

    /// The simulated time, seconds since the epoch.
    pub fn now(&self) -> i64 {
        self.lock().now_epoch()
    }
}
